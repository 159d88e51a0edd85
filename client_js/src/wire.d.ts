// The objects balance-server answers with, as both entries type them: the browser's
// (session.d.ts) and the backend's (server.d.ts). No DOM types, so the server entry stays
// usable where there is no DOM.

export type TransactionKind = 'grant' | 'purchase' | 'usage' | 'refund' | 'reversal' | 'adjustment' | 'expiry' | 'allowance';

/** A ledger row, as GET .../transactions lists it. */
export interface Transaction {
  readonly id: number;
  readonly account_id: string;
  readonly kind: TransactionKind | (string & {});
  /** Signed: negative takes credits. */
  readonly amount: number;
  readonly balance_after: number;
  readonly version: number;
  readonly reason: string | null;
  readonly metadata: Record<string, unknown> | null;
  readonly hold_id: string | null;
  readonly created_at: string;
}

/** GET .../plan. */
export interface PlanState {
  readonly plan: string | null;
  readonly period_start: string | null;
  readonly period_end: string | null;
  readonly allowance: number;
  readonly allowance_remaining: number;
  /** past_due: the subscription's renewal failed; no allowance comes until it is paid. */
  readonly status?: 'active' | 'past_due' | null;
  /** The provider subscription the plan follows (null: the backend assigned it). */
  readonly subscription?: { provider: 'stripe' | 'dodo'; id: string; status: 'incomplete' | 'active' | 'past_due' | 'canceled'; cancel_at: string | null } | null;
  readonly limits: Record<string, { limit: number; used: number }>;
}

export interface CatalogPackage {
  readonly credits: number;
  /** Minor units per currency. */
  readonly price: Record<string, number>;
  readonly stripe_price?: string | null;
  readonly dodo_product?: string | null;
}

/** GET /v1/catalog. */
export interface Catalog {
  readonly prices: Record<string, number>;
  readonly packages: Record<string, CatalogPackage>;
  readonly pay_as_you_go: { credits_per_unit: Record<string, number>; min_amount: Record<string, number> } | null;
  readonly plans: Record<string, { allowance: number; period: 'month' | 'week' | 'day'; rollover: number; prices: Record<string, number>; limits: Record<string, number>; low_balance: number | null; stripe_price?: string | null; dodo_product?: string | null }>;
  readonly alerts: { low_balance: number | null };
}

/** A checkout opened: send the buyer to `url`. */
export interface CheckoutSession {
  readonly url: string;
  readonly provider: 'stripe' | 'dodo';
  readonly session_id: string;
  /** What the payment buys; a plan: the allowance of each paid period. */
  readonly credits: number;
  /** Null for a plan (the provider's price sets it). */
  readonly amount: number | null;
  readonly currency: string | null;
  readonly package?: string | null;
  readonly plan?: string | null;
}

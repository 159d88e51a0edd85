// balance-client/server: balance-server's backend API for the app's own backend (service
// key). No DOM types, nothing of the browser client: the wire objects both share are wire.d.ts.

import type { WebhookVerificationError } from 'standardwebhooks';
import type { Catalog, CheckoutSession as Checkout, PlanState, Transaction, TransactionKind } from './wire.js';

export { WebhookVerificationError };
export type { Catalog, PlanState, Transaction, TransactionKind };

// ---------------------------------------------------------------- wire objects

export interface Account {
  readonly account_id: string;
  readonly balance: number;
  readonly held: number;
  readonly available: number;
  readonly version: number;
  readonly purchased: number;
  readonly used: number;
  readonly updated_at: string | null;
  readonly plan: string | null;
  readonly period_end: string | null;
  readonly low: boolean;
}

export interface Hold {
  readonly id: string;
  readonly account_id: string;
  readonly amount: number;
  readonly status: 'active' | 'captured' | 'released' | 'expired';
  /** Credits the capture spent; null unless captured. */
  readonly captured: number | null;
  readonly reason: string | null;
  readonly metadata: Record<string, unknown> | null;
  /** A hold placed for a priced operation (null for a hold of an amount), and its quantity. */
  readonly operation: string | null;
  readonly quantity: number | null;
  readonly expires_at: string;
  readonly created_at: string;
}

/** Whether the answer was a replay of an earlier request with the same key (Idempotent-Replayed). */
export interface Replayable {
  readonly replayed: boolean;
}

export interface Movement extends Replayable {
  readonly transaction: Transaction;
  readonly account: Account;
}

export interface HoldPlaced extends Replayable {
  readonly hold: Hold;
  readonly account: Account;
}

export interface TransactionPage {
  readonly transactions: Transaction[];
  /** The cursor of the next older page, or null at the end. */
  readonly next: string | null;
}

export interface UsageGroup {
  readonly key: string;
  readonly amount: number;
  readonly count: number;
  /** groupBy 'day,reason': this day's group's reason. */
  readonly reason?: string;
}

export interface Grant {
  readonly id: number;
  readonly kind: string;
  readonly amount: number;
  readonly remaining: number;
  readonly priority: number;
  readonly expires_at: string | null;
  readonly created_at: string;
}

export type SpendPeriod = 'hour' | 'day' | 'month';

/** The account's spend cap and its current window (UTC): spent `used` and `held` count against `amount`. */
export interface SpendCap {
  readonly amount: number;
  readonly period: SpendPeriod;
  readonly used: number;
  readonly held: number;
  readonly resets_at: string;
}

/** An account's limits; `spend` is null without a spend cap. */
export interface Limits {
  readonly spend: SpendCap | null;
}

export interface CheckResult {
  readonly allowed: boolean;
  readonly cost: number;
  readonly available: number;
  /** When not allowed: the code a charge or debit would answer, with its details beside it. */
  readonly error?: string;
  readonly [detail: string]: unknown;
}

/** An app webhook and its delivery attempts, as GET /v1/events lists it. */
export interface EventRecord {
  readonly id: number;
  readonly type: string;
  readonly status: 'pending' | 'delivered' | 'failed';
  readonly [field: string]: unknown;
}

/** An account's auto top-up; money in minor units of `currency`. */
export interface AutoTopUp {
  readonly package: string;
  readonly threshold: number;
  /** Buys as many packages as bring available up to it; null: one package. */
  readonly target: number | null;
  readonly monthly_limit: number | null;
  readonly currency: string | null;
  readonly spent_this_month: number;
  /** Set while the monthly limit holds top-ups back: the next month's start. */
  readonly paused_until: string | null;
  readonly stripe_customer: string;
  readonly stripe_payment_method: string;
  readonly enabled: boolean;
}

/** A provider's payment, or (with `review`) a paid event under review. */
export interface Payment {
  readonly status: 'credited' | 'reversed' | 'disputed' | 'needs_review' | 'resolved';
  readonly provider: 'stripe' | 'dodo';
  readonly payment_id: string | null;
  readonly account_id: string | null;
  /** Credited; under review, what the catalog would credit (null: it cannot price it). */
  readonly credits: number | null;
  readonly amount_paid: number | null;
  readonly currency: string | null;
  readonly credits_reversed: number;
  readonly credits_disputed: number;
  readonly created_at: string;
  readonly review: {
    readonly id: number;
    readonly event_id: string;
    readonly event_type: string;
    readonly problem: string;
    readonly received_at: string;
    readonly resolution: {
      readonly action: 'credit' | 'dismiss' | 'fulfilled';
      readonly account_id: string | null;
      readonly credits: number | null;
      readonly note: string | null;
      readonly actor: string | null;
      readonly at: string;
      readonly transaction_id: number | null;
    } | null;
  } | null;
}

/** One operator action, written with the change it made. */
export interface AuditEntry {
  readonly id: number;
  readonly at: string;
  /** The service key's name; console:<name> from the console. */
  readonly actor: string;
  readonly action: 'adjust' | 'credit' | 'plan' | 'alerts' | 'limits' | 'auto_top_up' | 'event_retry' | 'review_resolve' | 'hold_release';
  readonly account_id: string | null;
  readonly subject: string;
  readonly transaction_id: number | null;
  readonly detail: Record<string, unknown>;
}

export interface EventPage {
  readonly events: EventRecord[];
  readonly next: string | number | null;
}

export interface CheckoutSession extends Checkout, Replayable {}

/** A verified app webhook. */
export interface WebhookEvent {
  /** The webhook-id header: the same on every redelivery, so the app can skip repeats. */
  readonly id: string;
  readonly type: string;
  readonly timestamp: string;
  readonly data: Record<string, unknown>;
}

// ---------------------------------------------------------------- errors

/** Any error answer of balance-server; `body` is its JSON as it came. */
export class BalanceError extends Error {
  constructor(status: number, code: string, message: string, body?: Record<string, any> | null, requestId?: string | null, options?: { cause?: unknown; key?: string | null });
  /** The HTTP status; 503 when no attempt got an answer (Unavailable, OutcomeUnknown). */
  readonly status: number;
  /** The contract's error code ('insufficient_credits', ...), or http_<status> for a body without one. */
  readonly code: string;
  readonly body: Record<string, any> | null;
  /** X-Request-Id of the answer, for the server's logs. */
  readonly requestId: string | null;
}
export class InsufficientCredits extends BalanceError {
  readonly required: number;
  readonly available: number;
}
export class LimitReached extends BalanceError {
  readonly limit: number;
  readonly used: number;
  readonly resetsAt: string;
  /** A plan's limit on this operation; undefined for the account's spend cap. */
  readonly operation: string | undefined;
  /** The spend cap's period; undefined for a plan's limit. */
  readonly period: SpendPeriod | undefined;
}
export class IdempotencyConflict extends BalanceError {}
export class HoldNotActive extends BalanceError {
  readonly holdStatus: 'captured' | 'released' | 'expired' | (string & {});
}
export class NotFound extends BalanceError {}
/** invalid_request, invalid_json or payload_too_large. */
export class InvalidRequest extends BalanceError {
  /** Which field and why (invalid_request). */
  readonly detail: string | undefined;
}
export class Unauthorized extends BalanceError {}
export class Forbidden extends BalanceError {
  readonly scope: string | undefined;
}
/** Not retried: the app decides whether to wait `retryAfter` seconds. */
export class RateLimited extends BalanceError {
  readonly retryAfter: number;
}
export class ProviderUnavailable extends BalanceError {}
/** Nothing was written: every attempt failed before reaching the database. */
export class Unavailable extends BalanceError {}
/** An attempt may have been committed: repeat the call with the same key to learn which. */
export class OutcomeUnknown extends BalanceError {
  /** The call's idempotency key (a capture or release: the hold id); null for a call without one. */
  readonly key: string | null;
}

/** The typed error for an error answer. */
export function errorFor(status: number, body: Record<string, any> | null, requestId?: string | null, options?: { cause?: unknown; key?: string | null }): BalanceError;

// ---------------------------------------------------------------- the client

export interface BalanceOptions {
  /** Where balance-server answers; default BALANCE_API_URL. */
  baseUrl?: string;
  /** A service key; default BALANCE_SERVICE_KEY. */
  serviceKey?: string;
  /** Bounds one attempt. Default 10000. */
  timeoutMs?: number;
  /** Bounds one call, every retry included. Default 30000. */
  deadlineMs?: number;
  /** Default the global fetch. */
  fetch?: typeof fetch;
  /** Full-jitter backoff between attempts; default base 100 ms, cap 2000 ms. */
  backoff?: { base?: number; cap?: number; random?: () => number };
  /** How to wait between attempts (tests); default setTimeout. */
  sleep?: (ms: number) => Promise<void>;
}

/** Your own idempotency key: a job, order or request id, the same on every retry of the same work. */
export interface Keyed {
  key: string;
}

/** An operator action's why, sent as X-Audit-Reason and kept in the server's audit log. */
export interface Audited {
  readonly auditReason?: string;
}

type Metadata = Record<string, unknown>;

/** A hold of a fixed amount, or of an operation's price (the plan's price when it has one). */
export type HoldOptions = Keyed & {
  /** Seconds until the server releases it on its own. Default 300, at most 86400. */
  ttlSeconds?: number;
  metadata?: Metadata;
} & (
  | { amount: number; reason: string; operation?: never; quantity?: never }
  | { operation: string; quantity?: number; reason?: string; amount?: never }
);

export interface Reservation {
  readonly hold: Hold;
  /** The hold was placed before under this key (the same job is running now, or ran and failed to settle). */
  readonly replayed: boolean;
  /** Capture `amount` (1 … the held amount) instead of all of it; the rest is released. */
  settle(amount: number): void;
}

export class Balance {
  constructor(options?: BalanceOptions);

  /** The account; an unknown one reads as new (nothing is created). */
  getAccount(account: string): Promise<Account>;
  /** Create the account now, with its welcome credits (the same account again changes nothing). */
  openAccount(account: string): Promise<Account>;
  /** Spend `amount` credits: InsufficientCredits unless available >= amount. */
  debit(account: string, options: Keyed & { amount: number; reason: string; metadata?: Metadata }): Promise<Movement>;
  /** Add credits (grant, purchase or refund), optionally expiring. */
  credit(account: string, options: Keyed & Audited & { amount: number; kind: 'grant' | 'purchase' | 'refund'; reason?: string; expiresAt?: Date | string; priority?: number; metadata?: Metadata }): Promise<Movement>;
  /** An operator's signed correction (never 0). */
  adjust(account: string, options: Keyed & { amount: number; reason: string; actor: string }): Promise<Movement>;
  /** Charge the catalog's price of `operation` times `quantity` (default 1). */
  charge(account: string, options: Keyed & { operation: string; quantity?: number; metadata?: Metadata }): Promise<Movement>;
  /** Reserve credits until captured, released or expired. */
  hold(account: string, options: HoldOptions): Promise<HoldPlaced>;
  /** Spend all of a hold, or `amount` of it (the rest is released). A repeat replays. */
  capture(holdId: string, options?: { amount?: number; metadata?: Metadata }): Promise<Movement>;
  /** Give a hold's credits back. A repeat replays. */
  release(holdId: string, options?: Audited): Promise<HoldPlaced>;
  /**
   * Pay for work that succeeded: hold, run `work`, capture on success (all, or what
   * `r.settle(n)` says), release when it throws (and rethrow). `work`'s value is returned
   * beside the capture's transaction and account. The same `key` while the first runs
   * shares its hold (one charge; if this attempt throws, it leaves the hold to the first or
   * to its expiry); once that hold was settled, HoldNotActive (`holdStatus`) before `work`
   * runs.
   */
  withHold<T>(account: string, options: HoldOptions, work: (r: Reservation) => Promise<T> | T): Promise<{ value: T; capture: Movement }>;

  /** One page of history, newest first. */
  transactionsPage(account: string, options?: { limit?: number; before?: string | null; kind?: TransactionKind }): Promise<TransactionPage>;
  /** Every transaction, newest first, a page at a time: `for await (const t of balance.transactions(id))`. */
  transactions(account: string, options?: { kind?: TransactionKind; pageSize?: number }): AsyncGenerator<Transaction, void, undefined>;
  /** Spending grouped by reason or day. */
  usage(account: string, options?: { groupBy?: 'reason' | 'day' | 'day,reason'; since?: Date | string; until?: Date | string }): Promise<{ groups: UsageGroup[] }>;
  /** Open grants, in spending order. */
  grants(account: string): Promise<{ grants: Grant[] }>;
  /** The account's active holds, soonest to expire first. */
  holds(account: string): Promise<{ holds: Hold[] }>;
  /** Assign a catalog plan, or null to remove it; periods start at `anchor` (default now). */
  setPlan(account: string, options: Keyed & Audited & { plan: string | null; anchor?: Date | string }): Promise<{ account: Account } & Replayable>;
  getPlan(account: string): Promise<PlanState>;
  /** What a charge (`operation`) or a debit (`amount`) would answer; writes nothing. */
  check(account: string, options: { operation: string; quantity?: number } | { amount: number }): Promise<CheckResult>;
  /** The account's own low_balance threshold, or null for its plan's or the catalog's. */
  setAlerts(account: string, options: Audited & { lowBalance: number | null }): Promise<{ account: Account }>;
  /** The account's spend cap per UTC hour, day or month, or null to remove it. */
  setLimits(account: string, options: Audited & { spend: { amount: number; period: SpendPeriod } | null }): Promise<{ limits: Limits }>;
  /** The account's spend cap and its current window's use. */
  limits(account: string): Promise<{ limits: Limits }>;
  /** The low-balance threshold in force (and the account's own, null: none), the auto top-up (null: off), the spend cap. */
  settings(account: string): Promise<{ low_balance: number | null; threshold: number | null; threshold_from: 'account' | 'plan' | 'catalog' | null; auto_top_up: AutoTopUp | null; limits: Limits }>;
  /** Buy `package` off session (Stripe) when available falls below `threshold`; null turns it off. */
  setAutoTopUp(account: string, config: { package: string; threshold: number; stripeCustomer?: string; stripePaymentMethod?: string; target?: number; monthlyLimit?: number } | null, options?: Audited): Promise<{ auto_top_up: AutoTopUp | null }>;
  /** One page of app webhooks with their attempts, newest first. */
  eventsPage(options?: { status?: 'pending' | 'delivered' | 'failed'; limit?: number; before?: string | number | null; account?: string }): Promise<EventPage>;
  /** Every app webhook (of `status`), newest first, a page at a time. */
  events(options?: { status?: 'pending' | 'delivered' | 'failed'; pageSize?: number }): AsyncGenerator<EventRecord, void, undefined>;
  /** Deliver an app webhook again now. */
  retryEvent(eventId: number | string, options?: Audited): Promise<{ id: number; webhook_id: string; status: 'pending' }>;
  /** Accounts whose id starts with `prefix`, the last changed first. */
  searchAccounts(prefix?: string, options?: { limit?: number; cursor?: string | null }): Promise<{ accounts: Account[]; next: string | null }>;
  /** One page of payments in `status`, newest first. */
  paymentsPage(status: Payment['status'], options?: { account?: string; limit?: number; cursor?: string | null }): Promise<{ payments: Payment[]; next: string | null }>;
  /** Credit a payment under review once (the review is the key; another resolution is IdempotencyConflict). */
  creditReview(reviewId: number, options: Audited & { note: string; credits?: number; account?: string }): Promise<{ payment: Payment; account: Account | null; transaction: Transaction | null } & Replayable>;
  /** Dismiss a payment under review once: nothing is credited. */
  dismissReview(reviewId: number, options: Audited & { note: string }): Promise<{ payment: Payment; account: null; transaction: null } & Replayable>;
  /** One page of the audit log, newest first. */
  auditPage(options?: { account?: string; limit?: number; before?: number | null }): Promise<{ entries: AuditEntry[]; next: number | null }>;
  /** Open a provider checkout: a package, amount + currency (pay-as-you-go), or a plan (its subscription). */
  checkout(account: string, options: Keyed & { provider: 'stripe' | 'dodo'; successUrl: string; cancelUrl?: string; customerEmail?: string; package?: string; plan?: string; amount?: number; currency?: string }): Promise<CheckoutSession>;
  /** A user token for the browser. */
  createToken(account: string, options?: { ttlSeconds?: number }): Promise<{ token: string; expires_at: string }>;
  /** The price list `{operation: cost}`. */
  prices(): Promise<Record<string, number>>;
  catalog(): Promise<Catalog>;
}

/**
 * Verify an app webhook (Standard Webhooks) against `secret` (whsec_...) and return its
 * event. `body` is the raw body as received (not re-serialized JSON). Throws
 * WebhookVerificationError for a forged, altered or stale (over 5 minutes) one.
 */
export function verifyWebhook(secret: string, body: string | Uint8Array | ArrayBuffer, headers: Headers | Record<string, string | string[] | undefined>): WebhookEvent;

export interface OperationSpec {
  readonly method: 'GET' | 'POST' | 'PUT';
  readonly path: string;
  /** The Balance method that calls it. */
  readonly call: string;
  /** The request body fields it can send. */
  readonly fields: readonly string[];
  readonly query: readonly string[];
  /** Needs the caller's idempotency key. */
  readonly keyed: boolean;
  /** Its result says `replayed`. */
  readonly replays: boolean;
}

/** Every backend operation, by OpenAPI operationId. */
export const OPERATIONS: Readonly<Record<string, OperationSpec>>;
/** The operationIds deliberately not covered, with the reason. */
export const LEFT_OUT: Readonly<Record<string, string>>;

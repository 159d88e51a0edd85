import type { BalanceClient, BalanceClientOptions, BalanceState, TokenSource } from './client.js';
import type { CatalogPackage, Catalog, CheckoutSession, PlanState, Transaction as WireTransaction } from './wire.js';

export interface CreditSessionOptions {
  /** Where balance-server answers HTTP; default the socket's host when wsUrl is given, else this page's origin. */
  apiUrl?: string;
  /** Its WebSocket; default ws(s)://<api host>/v1/ws. */
  wsUrl?: string;
  /** A user token, or a function returning a fresh one (called per (re)connect, before `exp`, and after a 401). */
  token: TokenSource;
  WebSocket?: BalanceClientOptions['WebSocket'];
  fetch?: typeof fetch;
  accounts?: BalanceClientOptions['accounts'];
  backoff?: BalanceClientOptions['backoff'];
  window?: BalanceClientOptions['window'];
  document?: BalanceClientOptions['document'];
}

export type { CatalogPackage, Catalog, CheckoutSession, PlanState };

/** A transaction as GET /v1/me/transactions lists it; a live row (from a pushed frame) has a
 * string id until the server's copy replaces it. */
export interface Transaction extends Omit<WireTransaction, 'id'> {
  readonly id: number | string;
  /** Set on a row built from a pushed frame (until the server's copy replaces it). */
  readonly live?: boolean;
}

export interface TransactionPage {
  transactions: Transaction[];
  /** The cursor of the next older page, or null at the end. */
  next: string | number | null;
}

export interface CheckoutOptions {
  provider?: 'stripe' | 'dodo';
  /** A catalog package id; or amount + currency for pay-as-you-go. */
  package?: string;
  /** A catalog plan with a provider product: the checkout starts its subscription. */
  plan?: string;
  /** Minor units. */
  amount?: number;
  currency?: string;
  /** Default this page; must start with one of the server's BALANCE_CHECKOUT_RETURN_URLS. */
  successUrl?: string;
  cancelUrl?: string;
  customerEmail?: string;
}

/** A browser API call that failed, with the server's error body. */
export class RequestError extends Error {
  constructor(status: number, body?: Record<string, unknown>, retryAfter?: number | null);
  /** 0 when the server could not be reached. */
  readonly status: number;
  /** The contract's error code ('rate_limited', 'provider_unavailable', ...), 'network' or 'http_error'. */
  readonly code: string;
  readonly body: Record<string, unknown>;
  /** Seconds to wait, for 429. */
  readonly retryAfter: number | null;
}

/** One user's link to balance-server: one socket and the browser API, shared by elements and hooks. */
export class CreditSession {
  constructor(options: CreditSessionOptions);
  readonly client: BalanceClient;
  /** The token's account: the first one the server pushed (null before). */
  readonly account: string | null;
  balance(accountId?: string): BalanceState | undefined;
  /** Start using it (connects the socket); returns the function that stops using it. */
  retain(): () => void;
  /** A user token for HTTP (cached until close to `exp`). */
  token(): Promise<string>;
  request<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  catalog(): Promise<Catalog>;
  plan(): Promise<PlanState>;
  transactions(options?: { limit?: number; before?: string | number; kind?: string }): Promise<TransactionPage>;
  checkout(options: CheckoutOptions): Promise<CheckoutSession>;
}

/** ws(s)://host/v1/ws for a balance-server at `base` (a URL or a page location). */
export function defaultSocketUrl(base: string | { href: string } | { protocol: string; host: string }): string;
/** A token function that POSTs (with credentials) to `tokenUrl`, which answers {"token": "..."}. */
export function tokenFromUrl(tokenUrl: string, fetchImpl?: typeof fetch): () => Promise<string>;
/** The page's shared session for a token endpoint: elements with the same token-url share one socket. */
export function sharedSession(options: { apiUrl?: string; wsUrl?: string; tokenUrl: string }): CreditSession;
/** Make `session` the one every element without its own session or token-url uses. */
export function setDefaultSession(session: CreditSession | null): void;
export function defaultSession(): CreditSession | null;
export function onDefaultSession(fn: () => void): () => void;

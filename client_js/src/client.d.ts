import type { BackoffOptions } from './backoff.js';

/** The absolute state of one account, as the server last pushed it. */
export interface BalanceState {
  readonly account_id: string;
  /** Credits owned. */
  readonly balance: number;
  /** Credits reserved by open holds. */
  readonly held: number;
  /** balance - held: what can be spent now. */
  readonly available: number;
  /** Per-account counter, +1 per committed change; only ever moves forward here. */
  readonly version: number;
  /** available is below the account's low_balance threshold (its own, its plan's or the
   * catalog's), or at 0 or less. */
  readonly low?: boolean;
}

/** What caused a pushed update; null on snapshots and sync answers. */
export interface BalanceChange {
  readonly kind: 'grant' | 'purchase' | 'usage' | 'refund' | 'reversal' | 'adjustment' | 'expiry' | 'hold' | 'capture' | 'release' | (string & {});
  /** Signed: negative takes credits. */
  readonly amount: number;
  readonly reason: string | null;
  readonly transaction_id: number | string | null;
  readonly hold_id: string | null;
}

export interface BalanceUpdate extends BalanceState {
  readonly change: BalanceChange | null;
}

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface BalanceError {
  /** A server error code ('unauthorized', 'bad_request', ...), a close-code name, or 'token_failed'. */
  readonly code: string;
  readonly message: string;
  /** Set when the error came from the socket closing. */
  readonly closeCode?: number;
  /** True when the client has stopped and will not reconnect (4401, 4403). */
  readonly fatal?: boolean;
  /** The exception thrown by the token function, for 'token_failed'. */
  readonly error?: unknown;
}

export interface BalanceEvents {
  /** Every accepted update, snapshots included. */
  balance: BalanceUpdate;
  /** Only updates caused by a change (for toasts, refreshing a ledger). */
  change: BalanceUpdate & { readonly change: BalanceChange };
  /** The connection state moved. */
  state: ConnectionState;
  /** A server error frame, a terminal close, or a failing token function. */
  error: BalanceError;
}

/** A fresh token; called on every (re)connect and shortly before the current one expires. */
export type TokenSource = string | (() => string | Promise<string>);

/** The subset of the WebSocket class the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export interface BalanceClientOptions {
  /** The balance-server WebSocket URL, e.g. "wss://credits.example.com/v1/ws". */
  url: string;
  token: TokenSource;
  /** Default globalThis.WebSocket; in Node < 22 pass the `ws` package's class. */
  WebSocket?: new (url: string) => WebSocketLike;
  /** Account states already known (server-rendered, or GET /v1/me): available at once and synced from. */
  accounts?: ReadonlyArray<BalanceState>;
  backoff?: BackoffOptions;
  /** Where `online` is listened for; default globalThis.window (absent in Node). */
  window?: Pick<EventTarget, 'addEventListener' | 'removeEventListener'>;
  /** Where `visibilitychange` is listened for; default globalThis.document (absent in Node). */
  document?: Pick<EventTarget, 'addEventListener' | 'removeEventListener'> & { readonly visibilityState: string };
}

export class BalanceClient {
  constructor(options: BalanceClientOptions);
  /** 'connecting' | 'open' | 'reconnecting' | 'closed' (also before connect()). */
  readonly state: ConnectionState;
  /** The last known state of an account, or undefined before the server has sent it. */
  balance(accountId: string): BalanceState | undefined;
  /** Subscribe; returns a function that unsubscribes. */
  on<K extends keyof BalanceEvents>(name: K, listener: (value: BalanceEvents[K]) => void): () => void;
  /** Start, or start again after a terminal close. */
  connect(): this;
  /** Stop for good: socket, timers and window/document listeners. */
  close(): void;
}

import type { BalanceChange, BalanceError, ConnectionState, TokenSource, WebSocketLike } from './client.js';

export interface UseBalanceOptions {
  /** The balance-server WebSocket URL; nothing connects while it is empty. */
  url: string | null | undefined;
  /** A token or a function returning one; nothing connects while it is empty. */
  token: TokenSource | null | undefined;
  /** Which account to report; default the first the server sends. */
  account?: string;
  WebSocket?: new (url: string) => WebSocketLike;
}

/** Numbers are null until the server has sent the account. */
export interface BalanceSnapshot {
  balance: number | null;
  held: number | null;
  available: number | null;
  version: number | null;
  state: ConnectionState;
  /** The change behind the latest pushed update, for toasts. */
  lastChange: BalanceChange | null;
  error: BalanceError | null;
}

export function useBalance(options: UseBalanceOptions): BalanceSnapshot;

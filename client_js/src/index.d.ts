export { BalanceClient } from './client.js';
export type { BalanceClientOptions, BalanceState, BalanceChange, BalanceUpdate, BalanceError, BalanceEvents, ConnectionState, TokenSource, WebSocketLike } from './client.js';
export { CLOSE_CODES, closeCode, shouldReconnect } from './codes.js';
export type { CloseCode } from './codes.js';
export { Backoff, backoffDelay } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { tokenExpiry } from './jwt.js';

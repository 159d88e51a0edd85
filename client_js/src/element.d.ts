import type { BalanceClient, BalanceError, BalanceState, BalanceUpdate, ConnectionState, TokenSource } from './client.js';
import type { CreditElement } from './base.js';

export { defaultSocketUrl, tokenFromUrl } from './session.js';

/** Whole credits with the locale's thousands separators. */
export function formatCredits(n: number, locale?: string): string;

export interface BalanceView {
  text: string;
  label: string;
  status: string;
  low: boolean;
  title: string;
}

/** What the element shows for an account state (undefined: not known yet) and a connection state. */
export function balanceView(account: BalanceState | undefined, state: ConnectionState, options?: { low?: number | null; locale?: string; label?: string }): BalanceView;

/**
 * `<credit-balance>`: attributes token-url, api-url, ws-url, account, low, label, locale;
 * reflected state, low-balance, flash; parts icon, balance, label, status.
 */
export class CreditBalance extends CreditElement {
  static observedAttributes: string[];
  /** A session of the element's own, in place of `session` or token-url. */
  token: TokenSource | null;
  /** The client behind the element; null while disconnected. */
  readonly client: BalanceClient | null;
  /** The `account` attribute, else the first account the server sent. */
  readonly account: string | null;
}

export interface CreditBalanceEventMap {
  'balance-update': CustomEvent<BalanceUpdate>;
  'balance-change': CustomEvent<BalanceUpdate>;
  'balance-state': CustomEvent<ConnectionState>;
  'balance-error': CustomEvent<BalanceError>;
}

declare global {
  interface HTMLElementTagNameMap {
    'credit-balance': CreditBalance;
  }
  interface HTMLElementEventMap extends CreditBalanceEventMap {}
}

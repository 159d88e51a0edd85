import type { CreditElement } from './base.js';
import type { Transaction } from './session.js';

export function rowView(t: Transaction, options?: { locale?: string; reasonLabel?: (reason: string, t: Transaction) => string }): { icon: string; title: string; meta: string; amount: string; after: string; tone: 'pos' | 'neg' };

/**
 * `<credit-ledger>`: attributes token-url, api-url, ws-url, page-size, locale. Parts list, day,
 * day-head, day-label, day-total, rows, row, row-icon, row-title, row-meta, row-amount,
 * row-after, more, empty.
 */
export class CreditLedger extends CreditElement {
  static observedAttributes: string[];
  /** Reason → words (a charge's reason is its operation id). */
  reasonLabel: (reason: string, t: Transaction) => string;
  /** Shown, newest first. */
  readonly transactions: readonly Transaction[];
  /** Load the next older page (scrolling to the end does it too). */
  loadMore(): Promise<void>;
}

export interface CreditLedgerEventMap {
  /** A row pushed live. */
  'credit-ledger-row': CustomEvent<Transaction>;
}

declare global {
  interface HTMLElementTagNameMap {
    'credit-ledger': CreditLedger;
  }
  interface HTMLElementEventMap extends CreditLedgerEventMap {}
}

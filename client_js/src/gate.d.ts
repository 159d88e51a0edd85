import type { CreditElement } from './base.js';

/** A 402 body: insufficient_credits {required, available} or limit_reached {limit, used, resets_at, and operation (a plan's) or period (the spend cap)}. */
export interface PaymentRequired {
  error: 'insufficient_credits' | 'limit_reached' | (string & {});
  message?: string;
  required?: number;
  available?: number;
  operation?: string;
  period?: 'hour' | 'day' | 'month';
  limit?: number;
  used?: number;
  resets_at?: string;
}

export function gateView(body: PaymentRequired, options?: { action?: string; available?: number; locale?: string }): { title: string; message: string; buy: boolean; need: number; enough: boolean };

export type GateOutcome = 'continue' | 'cancel';

/**
 * `<credit-gate>`: attributes token-url, api-url, ws-url, featured, provider, currency,
 * success-url, cancel-url, locale. Parts dialog, icon, title, message, purchase, status,
 * actions, cancel, continue, and purchase-* (the inner <credit-purchase>'s).
 */
export class CreditGate extends CreditElement {
  static observedAttributes: string[];
  readonly open: boolean;
  /** Show the dialog for a 402 body; 'continue' once the credits are there and the user goes on. */
  show(body: PaymentRequired, options?: { action?: string; opener?: HTMLElement | null }): Promise<GateOutcome>;
  close(outcome?: GateOutcome): void;
}

export interface CreditGateEventMap {
  'credit-gate-open': CustomEvent<{ body: PaymentRequired; action: string }>;
  'credit-gate-close': CustomEvent<{ outcome: GateOutcome }>;
}

declare global {
  interface HTMLElementTagNameMap {
    'credit-gate': CreditGate;
  }
  interface HTMLElementEventMap extends CreditGateEventMap {}
}

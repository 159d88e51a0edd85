import type { CreditElement } from './base.js';
import type { Catalog, CheckoutSession } from './session.js';

export interface PackageView {
  id: string;
  credits: number;
  creditsText: string;
  price: string;
  perCredit: string;
  featured: boolean;
  short: boolean;
}

export function packageViews(catalog: Catalog | null, options?: { currency?: string; only?: string[]; featured?: string | null; need?: number; locale?: string }): PackageView[];
export function pickCurrency(catalog: Catalog | null): string;
export function checkoutMessage(error: { status: number; retryAfter?: number | null; message: string }): string;

/**
 * `<credit-purchase>`: attributes token-url, api-url, ws-url, provider, currency, packages,
 * featured, need, pay-as-you-go, success-url, cancel-url, locale. Parts packages, package,
 * credits, badge, price, per-credit, payg, payg-label, payg-input, payg-credits, payg-buy, message.
 */
export class CreditPurchase extends CreditElement {
  static observedAttributes: string[];
  readonly currency: string;
  /** Start a checkout for a package id, as a click does. */
  buy(packageId: string): Promise<void>;
}

export interface CreditPurchaseEventMap {
  /** Cancelable: preventDefault() keeps the page from going to detail.url. */
  'credit-checkout': CustomEvent<CheckoutSession & { package: string | null }>;
  'credit-checkout-error': CustomEvent<{ code: string; status: number; message: string }>;
}

declare global {
  interface HTMLElementTagNameMap {
    'credit-purchase': CreditPurchase;
  }
  interface HTMLElementEventMap extends CreditPurchaseEventMap {}
}

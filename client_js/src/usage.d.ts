import type { CreditElement } from './base.js';
import type { PlanState } from './session.js';

/** "generate_video" → "Generate video". */
export function operationName(operation: string): string;

export interface UsageBar {
  share: number;
  percent: number;
  /** 'warn' from 80 % used, 'out' at 100 %. */
  level: 'ok' | 'warn' | 'out';
  text: string;
  valueText: string;
}

export function usageView(plan: PlanState | null, options?: { locale?: string; label?: (op: string) => string }): {
  known: boolean;
  plan: string | null;
  allowance?: UsageBar;
  limits?: Array<UsageBar & { op: string; label: string }>;
  resets?: string;
};

/**
 * `<credit-usage>`: attributes token-url, api-url, ws-url, locale; reflected plan, level.
 * Parts title, plan, allowance, allowance-label, allowance-text, bar, fill, limits, limit,
 * limit-label, limit-text, reset, empty.
 */
export class CreditUsage extends CreditElement {
  static observedAttributes: string[];
  operationLabel: (operation: string) => string;
  /** The last GET /v1/me/plan body. */
  readonly plan: PlanState | null;
}

export interface CreditUsageEventMap {
  'credit-usage-update': CustomEvent<PlanState>;
}

declare global {
  interface HTMLElementTagNameMap {
    'credit-usage': CreditUsage;
  }
  interface HTMLElementEventMap extends CreditUsageEventMap {}
}

// How credits, money and days read on screen: pure functions shared by the elements and
// the React hooks (and tested in Node without a DOM).

/** Whole credits with the locale's thousands separators. */
export function formatCredits(n, locale) {
  return new Intl.NumberFormat(locale || undefined, { maximumFractionDigits: 0 }).format(n);
}

/** "+1,200" / "−40": a real minus sign, and a plus so gains read as gains. */
export function signed(n, locale) {
  const abs = formatCredits(Math.abs(n), locale);
  return n > 0 ? `+${abs}` : n < 0 ? `−${abs}` : abs;
}

/** The ISO 4217 minor-unit exponent, as the locale data knows it: USD 2, JPY 0, KWD 3. */
export function currencyExponent(currency) {
  return new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits;
}

/** `minor` units of `currency` (the catalog's integers) as money: 2000 usd → "$20.00". */
export function formatMoney(minor, currency, locale) {
  const exp = currencyExponent(currency);
  return new Intl.NumberFormat(locale || undefined, { style: 'currency', currency }).format(minor / 10 ** exp);
}

/** What one credit costs, with enough digits to tell packages apart: 2000 usd / 500 → "$0.04". */
export function formatPerCredit(minor, credits, currency, locale) {
  const exp = currencyExponent(currency);
  const fmt = new Intl.NumberFormat(locale || undefined, { style: 'currency', currency, minimumFractionDigits: exp, maximumFractionDigits: exp + 2 });
  return fmt.format(minor / 10 ** exp / credits);
}

/** Pay-as-you-go credits for `minor` units paid: the server's rule, floor(paid × rate ÷ 10^exponent). */
export function paygCredits(minor, ratePerUnit, currency) {
  if (!Number.isSafeInteger(minor) || minor <= 0) return 0;
  return Math.floor((minor * ratePerUnit) / 10 ** currencyExponent(currency));
}

/** Minor units from what a person typed in major units ("12.50" usd → 1250), or null. */
export function parseMoney(text, currency) {
  const exp = currencyExponent(currency);
  const m = /^\s*(\d{1,12})(?:[.,](\d*))?\s*$/.exec(String(text));
  if (!m || (m[2] ?? '').length > exp) return null;
  return Number(m[1]) * 10 ** exp + Number((m[2] ?? '').padEnd(exp, '0') || 0);
}

/** Labels for transaction kinds (a row without a reason shows its kind's label). */
export const KINDS = Object.freeze({
  grant: { label: 'Credits granted', icon: '✦' },
  purchase: { label: 'Credits purchased', icon: '+' },
  usage: { label: 'Used', icon: '↯' },
  refund: { label: 'Refund', icon: '↺' },
  reversal: { label: 'Payment reversed', icon: '⤺' },
  adjustment: { label: 'Adjustment', icon: '±' },
  expiry: { label: 'Credits expired', icon: '⌛' },
  allowance: { label: 'Plan allowance', icon: '↻' },
});

const dayKey = (d) => `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;

/** [{key, label, total, items}] newest day first, in local days; `transactions` come newest first. */
export function groupByDay(transactions, { now = new Date(), locale } = {}) {
  const yesterday = new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1);
  const names = { [dayKey(now)]: 'Today', [dayKey(yesterday)]: 'Yesterday' };
  const fmt = new Intl.DateTimeFormat(locale || undefined, { weekday: 'short', month: 'short', day: 'numeric' });
  const groups = new Map();
  for (const t of transactions) {
    const at = new Date(t.created_at);
    const key = dayKey(at);
    if (!groups.has(key)) groups.set(key, { key, label: names[key] ?? fmt.format(at), total: 0, items: [] });
    const g = groups.get(key);
    g.total += t.amount;
    g.items.push(t);
  }
  return [...groups.values()];
}

/**
 * The usage dashboard's numbers from GET /v1/me/plan: the share used (0..1) and its level,
 * 'ok', 'warn' from 80 %, 'out' at 100 %. Rolled-over credits can leave more than one
 * allowance: that is 0 % used, never negative.
 */
export function usageLevel(used, total) {
  const share = total > 0 ? Math.min(1, Math.max(0, used / total)) : 0;
  return { share, percent: Math.round(share * 100), level: share >= 1 ? 'out' : share >= 0.8 ? 'warn' : 'ok' };
}

/** A date as "Dec 1" in the locale. */
export function shortDate(iso, locale) {
  return new Date(iso).toLocaleDateString(locale || undefined, { month: 'short', day: 'numeric' });
}

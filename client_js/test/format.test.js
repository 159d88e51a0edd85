// What the elements say: money, credits, days and bars (pure; the rendering is checked in
// Chromium by e2e/components.e2e.js and e2e/demo.e2e.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { currencyExponent, formatMoney, formatPerCredit, groupByDay, parseMoney, paygCredits, signed, usageLevel } from '../src/format.js';
import { checkoutMessage, packageViews, pickCurrency } from '../src/purchase.js';
import { usageView } from '../src/usage.js';
import { gateView } from '../src/gate.js';
import { rowView } from '../src/ledger.js';

const tx = (amount, at) => ({ id: String(Math.random()), kind: amount < 0 ? 'usage' : 'purchase', amount, created_at: at.toISOString() });

test('groups newest day first with a signed total per day', () => {
  const now = new Date(2026, 10, 21, 15, 0);
  const list = [
    tx(-5, new Date(2026, 10, 21, 14, 0)),
    tx(500, new Date(2026, 10, 21, 9, 0)),
    tx(-40, new Date(2026, 10, 20, 23, 59)),
    tx(100, new Date(2026, 10, 17, 8, 0)),
  ];
  const groups = groupByDay(list, { now, locale: 'en-US' });
  assert.deepEqual(groups.map((g) => [g.label, g.total, g.items.length]), [
    ['Today', 495, 2],
    ['Yesterday', -40, 1],
    ['Tue, Nov 17', 100, 1],
  ]);
});

test('signed amounts use a real minus and a plus', () => {
  assert.equal(signed(1200, 'en-US'), '+1,200');
  assert.equal(signed(-40, 'en-US'), '−40');
  assert.equal(signed(0, 'en-US'), '0');
});

test('money from the catalog\'s minor units, per ISO 4217 exponent', () => {
  assert.deepEqual(['usd', 'jpy', 'kwd'].map(currencyExponent), [2, 0, 3]);
  assert.equal(formatMoney(2000, 'usd', 'en-US'), '$20.00');
  assert.equal(formatMoney(500, 'jpy', 'en-US'), '¥500');
  assert.equal(formatPerCredit(2000, 500, 'usd', 'en-US'), '$0.04');
  assert.equal(formatPerCredit(6000, 2000, 'usd', 'en-US'), '$0.03');
  assert.equal(formatPerCredit(500, 3, 'usd', 'en-US'), '$1.6667');
});

test('pay-as-you-go: typed major units to minor, credits by the server\'s floor rule', () => {
  assert.equal(parseMoney('12.5', 'usd'), 1250);
  assert.equal(parseMoney(' 7 ', 'usd'), 700);
  assert.equal(parseMoney('7,25', 'usd'), 725);
  assert.equal(parseMoney('1.234', 'usd'), null, 'more decimals than the currency has');
  assert.equal(parseMoney('-3', 'usd'), null);
  assert.equal(parseMoney('1e3', 'usd'), null);
  assert.equal(parseMoney('500', 'jpy'), 500);
  assert.equal(paygCredits(1250, 100, 'usd'), 1250);
  assert.equal(paygCredits(199, 20, 'usd'), 39, 'floor(199 × 20 / 100)');
  assert.equal(paygCredits(0, 20, 'usd'), 0);
});

const CATALOG = {
  packages: {
    best_value: { credits: 2000, price: { usd: 6000 } },
    starter: { credits: 100, price: { usd: 500, eur: 450 } },
    popular: { credits: 500, price: { usd: 2000 } },
  },
  pay_as_you_go: { credits_per_unit: { usd: 100 }, min_amount: { usd: 100 } },
};

test('packages by size, priced in the currency, the featured one marked, too-small ones dimmed', () => {
  const views = packageViews(CATALOG, { featured: 'popular', need: 300, locale: 'en-US' });
  assert.deepEqual(views.map((v) => [v.id, v.price, v.perCredit, v.featured, v.short]), [
    ['starter', '$5.00', '$0.05 per credit', false, true],
    ['popular', '$20.00', '$0.04 per credit', true, false],
    ['best_value', '$60.00', '$0.03 per credit', false, false],
  ]);
  assert.deepEqual(packageViews(CATALOG, { currency: 'eur' }).map((v) => v.id), ['starter']);
  assert.deepEqual(packageViews(CATALOG, { only: ['best_value', 'nope', 'starter'] }).map((v) => v.id), ['best_value', 'starter']);
  assert.equal(pickCurrency(CATALOG), 'usd');
  assert.equal(pickCurrency({ packages: { a: { credits: 1, price: { eur: 1 } } } }), 'eur');
  // A pay-as-you-go rate in usd does not hide packages priced only in eur.
  assert.equal(pickCurrency({ packages: { a: { credits: 1, price: { eur: 1 } } }, pay_as_you_go: { credits_per_unit: { usd: 1 } } }), 'eur');
  assert.equal(pickCurrency({ packages: {}, pay_as_you_go: { credits_per_unit: { gbp: 1 } } }), 'gbp');
});

test('a failed checkout says what happened and that nothing was charged', () => {
  assert.match(checkoutMessage({ status: 429, retryAfter: 42 }), /Too many purchase attempts. Try again in 42 seconds/);
  assert.match(checkoutMessage({ status: 502 }), /payment provider did not answer. You were not charged/);
  assert.match(checkoutMessage({ status: 0 }), /Could not reach the server/);
  assert.match(checkoutMessage({ status: 422, message: 'success_url: not allowed' }), /success_url: not allowed\). You were not charged/);
});

test('usage bars: amber from 80 %, red at 100 %, rollover never below 0 %', () => {
  assert.deepEqual([0.79, 0.8, 0.99, 1, 1.5].map((x) => usageLevel(x * 100, 100).level), ['ok', 'warn', 'warn', 'out', 'out']);
  assert.equal(usageLevel(-50, 100).percent, 0);
  assert.equal(usageLevel(5, 0).level, 'ok');
  const plan = { plan: 'pro', period_start: '2026-11-01T00:00:00Z', period_end: '2026-12-01T00:00:00Z', allowance: 300, allowance_remaining: 50, limits: { generate_video: { limit: 5, used: 5 } } };
  const v = usageView(plan, { locale: 'en-US' });
  assert.deepEqual([v.allowance.level, v.allowance.percent, v.allowance.text], ['warn', 83, '50 of 300 left']);
  assert.deepEqual(v.limits.map((l) => [l.label, l.level, l.text]), [['Generate video', 'out', '5 of 5']]);
  assert.match(v.resets, /^Resets (Dec 1|Nov 30)$/);
  assert.deepEqual(usageView({ plan: null, limits: {} }), { known: true, plan: null });
  assert.deepEqual(usageView(null), { known: false, plan: null });
});

test('the 402 dialog: what is needed, what is there, and when credits arrive', () => {
  const body = { error: 'insufficient_credits', required: 40, available: 12 };
  const v = gateView(body, { action: 'Generate video', locale: 'en-US' });
  assert.equal(v.message, 'Generate video needs 40 credits and you have 12. Top up to go on.');
  assert.deepEqual([v.buy, v.need, v.enough], [true, 28, false]);
  const later = gateView(body, { action: 'Generate video', available: 2012, locale: 'en-US' });
  assert.deepEqual([later.title, later.need, later.enough], ['You have enough credits now', 0, true]);
  const limit = gateView({ error: 'limit_reached', limit: 5, used: 5, resets_at: '2026-12-01T12:00:00Z' }, { action: 'Generate video', locale: 'en-US' });
  assert.equal(limit.buy, false);
  assert.match(limit.message, /can run 5 times per period on your plan, and you have used 5. It resets on Dec 1/);
  const cap = gateView({ error: 'limit_reached', limit: 100, used: 98, period: 'day', resets_at: '2026-12-01T00:00:00Z' }, { action: 'Generate video', locale: 'en-US' });
  assert.deepEqual([cap.title, cap.buy], ['Spending limit reached', false]);
  assert.match(cap.message, /^Generate video would pass your limit of 100 credits per day: 98 are spent or reserved. It resets at /);
});

test('a ledger row names its reason, else its kind', () => {
  const t = { id: 1, kind: 'usage', amount: -5, balance_after: 1995, version: 3, reason: 'generate_image', created_at: new Date().toISOString() };
  const v = rowView(t, { locale: 'en-US', reasonLabel: (r) => r.replace('_', ' ') });
  assert.deepEqual([v.title, v.amount, v.after, v.tone], ['generate image', '−5', '1,995 left', 'neg']);
  assert.equal(rowView({ ...t, reason: null, kind: 'purchase', amount: 500 }).title, 'Credits purchased');
});

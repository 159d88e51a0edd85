// The demo's activity list grouping (pure; the rendering is checked in e2e/demo.e2e.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { groupByDay, signed } from '../demo/ledger.js';

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

// The elements stay small: each one's minified + gzipped cost on a page that already has
// <credit-balance> (what they share counted once), measured as `npm run size` does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { measure } from '../scripts/size.js';

const KiB = 1024;
// Budgets a little above today's figures (client_js/README.md, "Size"): a regression fails.
const ADDED_BUDGET = { 'purchase.js': 3.2 * KiB, 'ledger.js': 3.6 * KiB, 'usage.js': 2.6 * KiB, 'gate.js': 4.8 * KiB, 'elements.js': 9 * KiB };

test('<credit-balance> and each element added to it stay within their gzip budgets', async () => {
  const base = await measure(['element.js']);
  assert.ok(base.gzip < 7.2 * KiB, `<credit-balance> is ${base.gzip} B gzipped`);
  for (const [file, budget] of Object.entries(ADDED_BUDGET)) {
    const both = await measure(['element.js', file]);
    const added = both.gzip - base.gzip;
    assert.ok(added > 0 && added <= budget, `${file} adds ${added} B gzipped, budget ${budget} B`);
  }
});

test('the React entry never bundles React itself', async () => {
  const { min } = await measure(['react.js']);
  assert.ok(min < 20 * KiB, `react.js bundles to ${min} B: is React inside?`);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, backoffDelay } from '../src/backoff.js';

test('the ceiling doubles from 1 s and stops at the 30 s cap', () => {
  const top = (attempt) => backoffDelay(attempt, { random: () => 0.999999 });
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 50, 5000].map(top), [999, 1999, 3999, 7999, 15999, 29999, 29999, 29999, 29999]);
});

test('full jitter: the delay spans 0 up to the ceiling', () => {
  assert.equal(backoffDelay(3, { random: () => 0 }), 0);
  assert.equal(backoffDelay(3, { random: () => 0.5 }), 4000);
  for (let attempt = 0; attempt < 12; attempt++) {
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt);
      assert.ok(d >= 0 && d < Math.min(30000, 1000 * 2 ** attempt), `attempt ${attempt}: ${d}`);
    }
  }
});

test('real randomness spreads delays instead of moving in lockstep', () => {
  const delays = new Set(Array.from({ length: 50 }, () => backoffDelay(5)));
  assert.ok(delays.size > 40, `only ${delays.size} distinct delays of 50`);
});

test('Backoff advances per attempt and starts over after reset()', () => {
  const b = new Backoff({ base: 100, cap: 1000, random: () => 0.5 });
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next()], [50, 100, 200, 400, 500]);
  b.reset();
  assert.equal(b.next(), 50);
});

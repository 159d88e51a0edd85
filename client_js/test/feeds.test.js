// The live feeds (plan, ledger) against a fake socket and a fake browser API: ledger rows
// from frames with no request, a version gap read again, plan reads coalesced.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LedgerFeed, planFeed } from '../src/feeds.js';
import { balanceFrame, fakeFetch, fakeSession, serverOpens, settle, tx, wait } from './fakes.js';

const API = 'http://balance.test';
const usage = (id, amount, reason = 'generate_image') => ({ kind: 'usage', amount, reason, transaction_id: id, hold_id: null });

test('ledger: a pushed change becomes a row without a request', async (t) => {
  const { s, ws, http } = await fakeSession({ 'GET /v1/me/transactions': { transactions: [tx(11, 2, -5, 95), tx(10, 1, 100, 100)], next: 'c10' } });
  const feed = new LedgerFeed(s, { pageSize: 2 });
  const states = [];
  const off = feed.subscribe((st) => states.push(st));
  t.after(off);
  await serverOpens(ws, balanceFrame('u1', 2, 95));
  await settle();
  assert.deepEqual(feed.state.items.map((t) => t.id), [11, 10]);
  ws.last().push(balanceFrame('u1', 3, 55, usage(12, -40, 'generate_video')));
  const row = feed.state.items[0];
  assert.deepEqual([row.id, row.amount, row.balance_after, row.version, row.reason, row.live], [12, -40, 55, 3, 'generate_video', true]);
  // A hold writes no row but moves the version; its capture comes next, in order.
  ws.last().push({ ...balanceFrame('u1', 4, 55), held: 10, available: 45, change: { kind: 'hold', amount: -10, reason: 'job', transaction_id: null, hold_id: 'h1' } });
  ws.last().push(balanceFrame('u1', 5, 45, { ...usage(13, -10, 'job'), hold_id: 'h1' }));
  assert.deepEqual(feed.state.items.map((t) => t.id), [13, 12, 11, 10]);
  assert.equal(http.calls.length, 1, 'frames in order cost no request');
  // Older pages on the cursor.
  const more = fakeFetch({ 'GET /v1/me/transactions': (c) => (c.query.before === 'c10' ? { transactions: [tx(9, 0, 1, 0)], next: null } : { transactions: [], next: null }) });
  s.request = (m, p) => more.fetch(`${API}${p}`).then((r) => r.json());
  await feed.loadMore();
  assert.deepEqual(feed.state.items.map((t) => t.id), [13, 12, 11, 10, 9]);
  assert.equal(feed.state.done, true);
  off();
});

test('ledger: a gap in versions reads the first page again and merges it', async (t) => {
  let page = { transactions: [tx(10, 1, 100, 100)], next: null };
  const { s, ws, http } = await fakeSession({ 'GET /v1/me/transactions': () => page });
  const feed = new LedgerFeed(s);
  const off = feed.subscribe(() => {});
  t.after(off);
  await serverOpens(ws, balanceFrame('u1', 1, 100));
  await settle();
  // Versions 2 and 3 were never pushed to us one by one (a slow socket gets only the newest).
  page = { transactions: [tx(13, 4, -3, 92), tx(12, 3, -2, 95), tx(11, 2, -3, 97), tx(10, 1, 100, 100)], next: null };
  ws.last().push(balanceFrame('u1', 4, 92, usage(13, -3)));
  await wait(300);
  await settle();
  assert.deepEqual(feed.state.items.map((t) => t.id), [13, 12, 11, 10]);
  assert.equal(http.calls.length, 2);
  assert.equal(feed.state.items[0].live, undefined, "the server's copy replaces the frame's");
  off();
});

test('ledger: frames that arrive while the first page loads are not lost', async (t) => {
  let release;
  const gate = new Promise((r) => (release = r));
  const { s, ws } = await fakeSession({ 'GET /v1/me/transactions': async () => (await gate, { transactions: [tx(10, 1, 100, 100)], next: null }) });
  const feed = new LedgerFeed(s);
  const off = feed.subscribe(() => {});
  t.after(off);
  await serverOpens(ws, balanceFrame('u1', 1, 100));
  ws.last().push(balanceFrame('u1', 2, 95, usage(11, -5)));
  release();
  await wait(20);
  assert.deepEqual(feed.state.items.map((t) => t.id), [11, 10]);
  off();
});

test('plan: read on start and again after pushed changes, at most once a second', async (t) => {
  let reads = 0;
  const { s, ws } = await fakeSession({ 'GET /v1/me/plan': () => ({ plan: 'pro', allowance: 300, allowance_remaining: 300 - 10 * reads++, limits: {} }) });
  const feed = planFeed(s);
  assert.equal(planFeed(s), feed, 'one feed per session');
  const seen = [];
  const off = feed.subscribe((st) => st.plan && seen.push(st.plan.allowance_remaining));
  t.after(off);
  await serverOpens(ws, balanceFrame('u1', 1, 100));
  await settle();
  for (let v = 2; v <= 6; v++) ws.last().push(balanceFrame('u1', v, 100 - v, usage(v, -1)));
  await wait(1300);
  await settle();
  assert.equal(reads, 2, 'five changes in a burst: one more read');
  assert.deepEqual(seen, [300, 290]);
  ws.last().push(balanceFrame('u1', 6, 94)); // not newer: nothing to read
  await wait(50);
  assert.equal(reads, 2);
  off();
});

test('ledger: a failed re-read is tried again, and no row inside the gap is lost', async (t) => {
  let fail = 0;
  let page = { transactions: [tx(10, 1, 100, 100)], next: null };
  const { s, ws, http } = await fakeSession({ 'GET /v1/me/transactions': () => (fail-- > 0 ? [503, { error: 'unavailable', message: 'db down' }] : page) });
  const feed = new LedgerFeed(s);
  t.after(feed.subscribe(() => {}));
  await serverOpens(ws, balanceFrame('u1', 1, 100));
  await wait(20);
  fail = 1;
  page = { transactions: [tx(12, 3, -2, 95), tx(11, 2, -3, 97), tx(10, 1, 100, 100)], next: null };
  ws.last().push(balanceFrame('u1', 3, 95, usage(12, -2))); // version 2 was never pushed to us
  await wait(300);
  assert.match(feed.state.error?.message ?? '', /db down/);
  // In order after the gap, but the gap is not filled yet: it waits, it is not shown over a hole.
  ws.last().push(balanceFrame('u1', 4, 94, usage(13, -1)));
  assert.deepEqual(feed.state.items.map((x) => x.id), [10]);
  page = { transactions: [tx(13, 4, -1, 94), ...page.transactions], next: null };
  await wait(1300); // the retry, a second later
  assert.deepEqual(feed.state.items.map((x) => x.id), [13, 12, 11, 10]);
  assert.equal(feed.state.error, null);
  assert.equal(http.calls.length, 3);
});

test('plan: with the socket already open, the first change heard is read as one', async (t) => {
  let reads = 0;
  const { s, ws } = await fakeSession({ 'GET /v1/me/plan': () => ({ plan: 'pro', allowance: 300, allowance_remaining: 300 - 10 * reads++, limits: {} }) });
  t.after(s.retain()); // a header badge, say, has the socket and the snapshot already
  await serverOpens(ws, balanceFrame('u1', 7, 100));
  const feed = planFeed(s);
  t.after(feed.subscribe(() => {}));
  await wait(20);
  assert.equal(reads, 1);
  ws.last().push(balanceFrame('u1', 8, 99, usage(20, -1)));
  await wait(1100);
  assert.equal(reads, 2);
});

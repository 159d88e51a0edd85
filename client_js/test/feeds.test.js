// CreditSession and the live feeds (plan, ledger) against a fake socket and a fake
// browser API: one socket however many users, tokens renewed on 401, ledger rows from
// frames with no request, a version gap read again, plan reads coalesced.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CreditSession, RequestError } from '../src/session.js';
import { LedgerFeed, planFeed } from '../src/feeds.js';
import { balanceFrame, fakeFetch, fakeWebSocket, settle, tx } from './fakes.js';

const API = 'http://balance.test';
const wait = (ms) => new Promise((r) => setTimeout(r, ms));

function session(routes, { token = 'tok' } = {}) {
  const ws = fakeWebSocket();
  const http = fakeFetch(routes);
  const s = new CreditSession({ apiUrl: API, token, WebSocket: ws.FakeSocket, fetch: http.fetch });
  return { s, ws, http };
}

async function open(ws, frame) {
  await settle();
  ws.last().open();
  if (frame) ws.last().push(frame);
}

test('one socket for every user of a session, closed a moment after the last lets go', async () => {
  const { s, ws } = session({});
  const a = s.retain();
  const b = s.retain();
  await open(ws, balanceFrame('u1', 1, 100));
  assert.equal(ws.sockets.length, 1);
  assert.equal(s.account, 'u1');
  assert.equal(s.balance().available, 100);
  a();
  a(); // releasing twice counts once
  b();
  const c = s.retain(); // back within the linger: the same socket
  await wait(1100);
  assert.equal(ws.last().closedWith, null);
  c();
  await wait(1100);
  assert.deepEqual(ws.last().closedWith, { code: 1000, reason: 'client closed' });
  assert.equal(ws.sockets.length, 1);
});

test('the socket derives from apiUrl, and the API from a socket URL when only that is given', () => {
  const ws = fakeWebSocket();
  new CreditSession({ apiUrl: 'https://credits.example.com/', token: 't', WebSocket: ws.FakeSocket }).retain()();
  const http = fakeFetch({ 'GET /v1/catalog': {} });
  const s = new CreditSession({ wsUrl: 'wss://push.example.com/v1/ws', token: 't', WebSocket: ws.FakeSocket, fetch: http.fetch });
  return s.catalog().then(() => {
    assert.equal(http.calls[0].path, '/v1/catalog');
    assert.throws(() => new CreditSession({ token: 't', WebSocket: ws.FakeSocket }), /apiUrl/);
  });
});

test('a refused token is minted again once; the browser API gets the bearer token', async () => {
  let n = 0;
  const seen = [];
  const { s, http } = session(
    {
      'GET /v1/me/plan': (call) => {
        seen.push(call.auth);
        return call.auth === 'Bearer t1' ? [401, { error: 'unauthorized', message: 'expired' }] : { plan: null };
      },
    },
    { token: async () => `t${++n}` },
  );
  assert.deepEqual(await s.plan(), { plan: null });
  assert.deepEqual(seen, ['Bearer t1', 'Bearer t2']);
  await s.plan();
  assert.equal(n, 2, 'the renewed token is cached');
  assert.equal(http.calls.length, 3);
});

test('errors carry the contract\'s code and retry_after; an unreachable server is status 0', async () => {
  const { s } = session({ 'POST /v1/me/checkout': [429, { error: 'rate_limited', message: 'slow down', retry_after: 12 }] });
  const err = await s.checkout({ package: 'starter', successUrl: 'https://app.test/ok' }).catch((e) => e);
  assert.ok(err instanceof RequestError);
  assert.deepEqual([err.status, err.code, err.retryAfter], [429, 'rate_limited', 12]);
  const down = new CreditSession({ apiUrl: API, token: 't', WebSocket: fakeWebSocket().FakeSocket, fetch: async () => { throw new TypeError('fetch failed'); } });
  const e2 = await down.plan().catch((e) => e);
  assert.deepEqual([e2.status, e2.code], [0, 'network']);
});

test('checkout sends the package, the return URLs and a fresh idempotency key; never a price', async () => {
  const { s, http } = session({ 'POST /v1/me/checkout': [201, { url: 'https://pay.test/x', credits: 500 }] });
  await s.checkout({ package: 'popular', successUrl: 'https://app.test/ok', cancelUrl: 'https://app.test/no' });
  await s.checkout({ amount: 1250, currency: 'usd', successUrl: 'https://app.test/ok' });
  const [a, b] = http.calls.map((c) => c.body);
  assert.deepEqual({ ...a, idempotency_key: undefined }, { provider: 'stripe', package: 'popular', success_url: 'https://app.test/ok', cancel_url: 'https://app.test/no', idempotency_key: undefined });
  assert.deepEqual([b.amount, b.currency, 'package' in b, 'credits' in b], [1250, 'usd', false, false]);
  assert.notEqual(a.idempotency_key, b.idempotency_key);
});

test('the catalog is read once per session, and again after a failure', async () => {
  let fail = true;
  const { s, http } = session({ 'GET /v1/catalog': () => (fail ? [503, { error: 'unavailable', message: 'db' }] : { packages: {} }) });
  await assert.rejects(s.catalog(), /db/);
  fail = false;
  await s.catalog();
  await s.catalog();
  assert.equal(http.calls.length, 2);
});

const usage = (id, amount, reason = 'generate_image') => ({ kind: 'usage', amount, reason, transaction_id: id, hold_id: null });

test('ledger: a pushed change becomes a row without a request', async (t) => {
  const { s, ws, http } = session({ 'GET /v1/me/transactions': { transactions: [tx(11, 2, -5, 95), tx(10, 1, 100, 100)], next: 'c10' } });
  const feed = new LedgerFeed(s, { pageSize: 2 });
  const states = [];
  const off = feed.subscribe((st) => states.push(st));
  t.after(off);
  await open(ws, balanceFrame('u1', 2, 95));
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
  const { s, ws, http } = session({ 'GET /v1/me/transactions': () => page });
  const feed = new LedgerFeed(s);
  const off = feed.subscribe(() => {});
  t.after(off);
  await open(ws, balanceFrame('u1', 1, 100));
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
  const { s, ws } = session({ 'GET /v1/me/transactions': async () => (await gate, { transactions: [tx(10, 1, 100, 100)], next: null }) });
  const feed = new LedgerFeed(s);
  const off = feed.subscribe(() => {});
  t.after(off);
  await open(ws, balanceFrame('u1', 1, 100));
  ws.last().push(balanceFrame('u1', 2, 95, usage(11, -5)));
  release();
  await wait(20);
  assert.deepEqual(feed.state.items.map((t) => t.id), [11, 10]);
  off();
});

test('plan: read on start and again after pushed changes, at most once a second', async (t) => {
  let reads = 0;
  const { s, ws } = session({ 'GET /v1/me/plan': () => ({ plan: 'pro', allowance: 300, allowance_remaining: 300 - 10 * reads++, limits: {} }) });
  const feed = planFeed(s);
  assert.equal(planFeed(s), feed, 'one feed per session');
  const seen = [];
  const off = feed.subscribe((st) => st.plan && seen.push(st.plan.allowance_remaining));
  t.after(off);
  await open(ws, balanceFrame('u1', 1, 100));
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

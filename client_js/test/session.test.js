// CreditSession against a fake socket and a fake browser API: one socket however many
// users, tokens renewed on a 401, errors as the contract's data, checkout never carrying a
// price.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CreditSession, RequestError } from '../src/session.js';
import { balanceFrame, fakeFetch, fakeSession, fakeWebSocket, serverOpens, wait } from './fakes.js';

const API = 'http://balance.test';

test('one socket for every user of a session, closed a moment after the last lets go', async () => {
  const { s, ws } = await fakeSession({});
  const a = s.retain();
  const b = s.retain();
  await serverOpens(ws, balanceFrame('u1', 1, 100));
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
  const { s, http } = await fakeSession(
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
  const { s } = await fakeSession({ 'POST /v1/me/checkout': [429, { error: 'rate_limited', message: 'slow down', retry_after: 12 }] });
  const err = await s.checkout({ package: 'starter', successUrl: 'https://app.test/ok' }).catch((e) => e);
  assert.ok(err instanceof RequestError);
  assert.deepEqual([err.status, err.code, err.retryAfter], [429, 'rate_limited', 12]);
  const down = new CreditSession({ apiUrl: API, token: 't', WebSocket: fakeWebSocket().FakeSocket, fetch: async () => { throw new TypeError('fetch failed'); } });
  const e2 = await down.plan().catch((e) => e);
  assert.deepEqual([e2.status, e2.code], [0, 'network']);
});

test('checkout sends the package, the return URLs and a fresh idempotency key; never a price', async () => {
  const { s, http } = await fakeSession({ 'POST /v1/me/checkout': [201, { url: 'https://pay.test/x', credits: 500 }] });
  await s.checkout({ package: 'popular', successUrl: 'https://app.test/ok', cancelUrl: 'https://app.test/no' });
  await s.checkout({ amount: 1250, currency: 'usd', successUrl: 'https://app.test/ok' });
  const [a, b] = http.calls.map((c) => c.body);
  assert.deepEqual({ ...a, idempotency_key: undefined }, { provider: 'stripe', package: 'popular', success_url: 'https://app.test/ok', cancel_url: 'https://app.test/no', idempotency_key: undefined });
  assert.deepEqual([b.amount, b.currency, 'package' in b, 'credits' in b], [1250, 'usd', false, false]);
  assert.notEqual(a.idempotency_key, b.idempotency_key);
});

test('the catalog is read once per session, and again after a failure', async () => {
  let fail = true;
  const { s, http } = await fakeSession({ 'GET /v1/catalog': () => (fail ? [503, { error: 'unavailable', message: 'db' }] : { packages: {} }) });
  await assert.rejects(s.catalog(), /db/);
  fail = false;
  await s.catalog();
  await s.catalog();
  assert.equal(http.calls.length, 2);
});


test('a token function that throws at once fails that call only', async () => {
  let calls = 0;
  const { s } = await fakeSession({ 'GET /v1/me/plan': { plan: null } }, {
    token: () => {
      if (calls++ === 0) throw new Error('not signed in yet');
      return 'tok';
    },
  });
  await assert.rejects(s.plan(), /not signed in yet/);
  assert.deepEqual(await s.plan(), { plan: null });
});

test('a package is bought in the currency it was shown in', async () => {
  const { s, http } = await fakeSession({ 'POST /v1/me/checkout': [201, { url: 'https://pay.test/x' }] });
  await s.checkout({ package: 'starter', currency: 'eur', successUrl: 'https://app.test/ok' });
  assert.deepEqual([http.calls[0].body.package, http.calls[0].body.currency], ['starter', 'eur']);
});

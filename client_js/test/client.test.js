import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BalanceClient } from '../src/client.js';
import { tokenExpiry } from '../src/jwt.js';
import { balanceFrame, fakeBrowser, fakeWebSocket, jwt, settle } from './fakes.js';

const URL_ = 'ws://balance.test/v1/ws';
const NOW = 1_700_000_000_000;

/** A client on a fake socket with mocked timers; `events` records everything it emits. */
function setup(t, options = {}) {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: NOW });
  const ws = fakeWebSocket();
  const browser = fakeBrowser();
  const client = new BalanceClient({ url: URL_, token: 'tok', WebSocket: ws.FakeSocket, ...browser, backoff: { random: () => 0.5 }, ...options });
  const events = { balance: [], change: [], state: [], error: [] };
  for (const name of Object.keys(events)) client.on(name, (v) => events[name].push(v));
  t.after(() => client.close());
  return { client, ws, browser, events, tick: (ms) => t.mock.timers.tick(ms) };
}

async function connected(t, options) {
  const s = setup(t, options);
  s.client.connect();
  await settle();
  s.ws.last().open();
  return s;
}

test('sends the auth frame first, then reports open', async (t) => {
  const { ws, events } = await connected(t);
  assert.equal(ws.sockets.length, 1);
  assert.equal(ws.last().url, URL_);
  assert.deepEqual(ws.last().sent, [{ type: 'auth', token: 'tok' }]);
  assert.deepEqual(events.state, ['connecting', 'open']);
});

test('balance frames update the state; change events only for frames with a change', async (t) => {
  const { client, ws, events } = await connected(t);
  ws.last().push(balanceFrame('u1', 1, 100));
  const change = { kind: 'usage', amount: -5, reason: 'image', transaction_id: 7, hold_id: null };
  ws.last().push(balanceFrame('u1', 2, 95, change));
  assert.deepEqual(client.balance('u1'), { account_id: 'u1', balance: 95, held: 0, available: 95, version: 2, low: false });
  assert.deepEqual(events.balance.map((b) => b.balance), [100, 95]);
  assert.equal(events.change.length, 1);
  assert.deepEqual(events.change[0].change, change);
  assert.equal(client.balance('nobody'), undefined);
});

test('an older frame arriving after a newer one is ignored', async (t) => {
  const { client, ws, events } = await connected(t);
  ws.last().push(balanceFrame('u1', 5, 50));
  ws.last().push(balanceFrame('u1', 4, 60, { kind: 'usage', amount: -1, reason: null, transaction_id: 1, hold_id: null }));
  ws.last().push(balanceFrame('u1', 5, 70));
  assert.equal(client.balance('u1').balance, 50);
  assert.equal(events.balance.length, 1);
  assert.equal(events.change.length, 0);
  // Versions are per account: another account's lower version is news.
  ws.last().push(balanceFrame('team', 1, 9));
  assert.equal(client.balance('team').balance, 9);
});

test('error frames are reported without closing', async (t) => {
  const { client, ws, events } = await connected(t);
  ws.last().push({ type: 'error', code: 'bad_request', message: 'unknown frame' });
  ws.last().onmessage({ data: 'not json' });
  assert.deepEqual(events.error, [{ code: 'bad_request', message: 'unknown frame' }]);
  assert.equal(client.state, 'open');
});

for (const code of [4401, 4403]) {
  test(`close ${code} is terminal: error, state closed, no reconnect`, async (t) => {
    const { client, ws, browser, events, tick } = await connected(t);
    ws.last().drop(code, 'token expired');
    assert.equal(client.state, 'closed');
    assert.equal(events.error.length, 1);
    assert.equal(events.error[0].closeCode, code);
    assert.equal(events.error[0].fatal, true);
    assert.equal(events.error[0].message, 'token expired');
    tick(120_000);
    await settle();
    assert.equal(ws.sockets.length, 1);
    assert.equal(browser.window.count('online'), 0, 'window listeners removed');
  });
}

test('close 1000 from the server stops quietly', async (t) => {
  const { client, ws, events, tick } = await connected(t);
  ws.last().drop(1000);
  tick(60_000);
  await settle();
  assert.equal(client.state, 'closed');
  assert.equal(events.error.length, 0);
  assert.equal(ws.sockets.length, 1);
});

for (const code of [1001, 1006, 1012, 4400, 4408, 4429, 4500, 4509, 4999]) {
  test(`close ${code} reconnects after the backoff`, async (t) => {
    const { client, ws, events, tick } = await connected(t);
    ws.last().drop(code);
    assert.equal(client.state, 'reconnecting');
    tick(499); // random 0.5 of a 1 s ceiling: 500 ms
    await settle();
    assert.equal(ws.sockets.length, 1);
    tick(1);
    await settle();
    assert.equal(ws.sockets.length, 2);
    ws.last().open();
    assert.equal(client.state, 'open');
    assert.deepEqual(events.state, ['connecting', 'open', 'reconnecting', 'open']);
    assert.equal(events.error.length, 0);
  });
}

test('failed dials back off exponentially; a stable connection resets the backoff', async (t) => {
  const { ws, tick } = await connected(t);
  const dialsAfter = async (ms) => {
    const before = ws.sockets.length;
    tick(ms);
    await settle();
    return ws.sockets.length - before;
  };
  ws.last().drop(1006);
  assert.equal(await dialsAfter(500), 1); // ceiling 1 s
  ws.last().drop(1006);
  assert.equal(await dialsAfter(999), 0); // ceiling 2 s
  assert.equal(await dialsAfter(1), 1);
  ws.last().drop(1006);
  assert.equal(await dialsAfter(2000), 1); // ceiling 4 s
  ws.last().open();
  tick(10_000); // stable
  ws.last().drop(1006);
  assert.equal(await dialsAfter(500), 1, 'back to the 1 s ceiling');
});

test('a short-lived connection does not reset the backoff', async (t) => {
  const { ws, tick } = await connected(t);
  ws.last().drop(1006);
  tick(500);
  await settle();
  ws.last().open();
  tick(3_000);
  ws.last().drop(1006);
  tick(999); // still the 2 s ceiling
  await settle();
  assert.equal(ws.sockets.length, 2);
});

test('a reconnect sends sync with the known versions right after auth', async (t) => {
  const { ws, tick } = await connected(t);
  ws.last().push(balanceFrame('u1', 3, 30));
  ws.last().push(balanceFrame('team', 8, 80));
  ws.last().drop(1012);
  tick(500);
  await settle();
  ws.last().open();
  assert.deepEqual(ws.last().sent, [
    { type: 'auth', token: 'tok' },
    { type: 'sync', versions: { u1: 3, team: 8 } },
  ]);
});

test('sync every 30 s while open', async (t) => {
  const { ws, tick } = await connected(t);
  ws.last().push(balanceFrame('u1', 3, 30));
  tick(29_999);
  assert.equal(ws.last().sent.length, 1);
  tick(1);
  assert.deepEqual(ws.last().sent.at(-1), { type: 'sync', versions: { u1: 3 } });
  ws.last().push(balanceFrame('u1', 4, 20));
  tick(30_000);
  assert.deepEqual(ws.last().sent.at(-1), { type: 'sync', versions: { u1: 4 } });
});

test('accounts given up front are known at once and synced on the first connect', async (t) => {
  const seed = { account_id: 'u1', balance: 10, held: 0, available: 10, version: 6, purchased: 10, used: 0 };
  const { client, ws } = await connected(t, { accounts: [seed] });
  assert.deepEqual(ws.last().sent[1], { type: 'sync', versions: { u1: 6 } });
  assert.deepEqual(client.balance('u1'), { account_id: 'u1', balance: 10, held: 0, available: 10, version: 6, low: false });
});

test('a token function is called again on every reconnect', async (t) => {
  let n = 0;
  const { ws, tick } = await connected(t, { token: async () => `tok-${++n}` });
  assert.deepEqual(ws.last().sent[0], { type: 'auth', token: 'tok-1' });
  ws.last().drop(1006);
  tick(500);
  await settle();
  ws.last().open();
  assert.deepEqual(ws.last().sent[0], { type: 'auth', token: 'tok-2' });
});

test('a JWT is refreshed on the open socket before it expires', async (t) => {
  let exp = NOW / 1000 + 3600;
  const token = async () => jwt({ sub: 'u1', exp: (exp += 3600) - 3600 });
  const { ws, tick } = await connected(t, { token });
  const first = ws.last().sent[0].token;
  assert.equal(tokenExpiry(first), NOW + 3600_000);
  tick(3540_000 - 1); // renewed one minute before expiry
  await settle();
  assert.equal(ws.last().sent.length, 1);
  tick(1);
  await settle();
  const refresh = ws.last().sent.at(-1);
  assert.equal(refresh.type, 'auth');
  assert.equal(tokenExpiry(refresh.token), NOW + 7200_000);
  assert.equal(ws.sockets.length, 1, 'refreshed in place, no reconnect');
  tick(3600_000); // and again for the renewed token
  await settle();
  assert.equal(tokenExpiry(ws.last().sent.at(-1).token), NOW + 10800_000);
});

test('a short-lived token is renewed with a tenth of its life to spare', async (t) => {
  const token = async () => jwt({ exp: Date.now() / 1000 + 60 });
  const { ws, tick } = await connected(t, { token });
  tick(53_999);
  await settle();
  assert.equal(ws.last().sent.length, 1);
  tick(1);
  await settle();
  assert.equal(ws.last().sent.length, 2);
});

test('a refresh that yields the same expiry does not spin', async (t) => {
  const fixed = jwt({ exp: NOW / 1000 + 60 });
  let calls = 0;
  const { ws, tick } = await connected(t, { token: async () => (calls++, fixed) });
  tick(60_000);
  await settle();
  tick(60_000);
  await settle();
  assert.equal(calls, 2);
  assert.equal(ws.last().sent.filter((m) => m.type === 'auth').length, 2);
});

test('a string token is never refreshed', async (t) => {
  const { ws, tick } = await connected(t, { token: jwt({ exp: NOW / 1000 + 60 }) });
  tick(59_000);
  await settle();
  assert.equal(ws.last().sent.length, 1);
});

test('a failing token function is reported and retried with backoff', async (t) => {
  let fail = true;
  const { client, ws, events, tick } = setup(t, { token: async () => (fail ? Promise.reject(new Error('502 from /api/token')) : 'tok') });
  client.connect();
  await settle();
  assert.equal(ws.sockets.length, 0);
  assert.equal(events.error[0].code, 'token_failed');
  assert.equal(client.state, 'connecting');
  fail = false;
  tick(500);
  await settle();
  assert.equal(ws.sockets.length, 1);
});

test('coming back online reconnects at once, without waiting for the backoff', async (t) => {
  const { client, ws, browser } = await connected(t);
  ws.last().push(balanceFrame('u1', 2, 20));
  ws.last().drop(1006);
  ws.last(); // waiting out the backoff now
  browser.window.fire('online');
  await settle();
  assert.equal(ws.sockets.length, 2);
  ws.last().open();
  assert.deepEqual(ws.last().sent[1], { type: 'sync', versions: { u1: 2 } });
  // Online while open: the old socket may be half-open, so it is replaced.
  browser.window.fire('online');
  await settle();
  assert.deepEqual(ws.sockets[1].closedWith, { code: 1000, reason: 'network changed' });
  assert.equal(ws.sockets.length, 3);
  assert.notEqual(client.state, 'closed');
});

test('a tab becoming visible reconnects at once, or syncs if still open', async (t) => {
  const { ws, browser, tick } = await connected(t);
  ws.last().push(balanceFrame('u1', 2, 20));
  ws.last().drop(1006);
  tick(500);
  await settle();
  ws.last().drop(1006); // now a 2 s ceiling: 1 s wait
  browser.document.visibilityState = 'hidden';
  browser.document.fire('visibilitychange');
  await settle();
  assert.equal(ws.sockets.length, 2, 'hiding does nothing');
  browser.document.visibilityState = 'visible';
  browser.document.fire('visibilitychange');
  await settle();
  assert.equal(ws.sockets.length, 3);
  ws.last().open();
  browser.document.fire('visibilitychange');
  assert.deepEqual(ws.last().sent.at(-1), { type: 'sync', versions: { u1: 2 } });
  assert.equal(ws.sockets.length, 3);
});

test('works without window or document (Node)', async (t) => {
  const { client, ws } = await connected(t, { window: undefined, document: undefined });
  assert.equal(client.state, 'open');
  ws.last().drop(1006);
  assert.equal(client.state, 'reconnecting');
});

test('close() stops everything', async (t) => {
  const { client, ws, browser, events, tick } = await connected(t);
  ws.last().push(balanceFrame('u1', 1, 10));
  client.close();
  assert.equal(client.state, 'closed');
  assert.deepEqual(ws.last().closedWith, { code: 1000, reason: 'client closed' });
  assert.equal(browser.window.count('online'), 0);
  assert.equal(browser.document.count('visibilitychange'), 0);
  const sent = ws.last().sent.length;
  tick(600_000);
  await settle();
  assert.equal(ws.sockets.length, 1);
  assert.equal(ws.last().sent.length, sent);
  assert.equal(events.state.at(-1), 'closed');
});

test('close() while a reconnect is pending cancels it', async (t) => {
  const { client, ws, tick } = await connected(t);
  ws.last().drop(1006);
  client.close();
  tick(60_000);
  await settle();
  assert.equal(ws.sockets.length, 1);
});

test('close() while the token is being fetched opens no socket', async (t) => {
  let release;
  const { client, ws } = setup(t, { token: () => new Promise((r) => (release = r)) });
  client.connect();
  client.close();
  release('tok');
  await settle();
  assert.equal(ws.sockets.length, 0);
});

test('connect() after a terminal close starts again', async (t) => {
  const { client, ws } = await connected(t);
  ws.last().drop(4401);
  client.connect();
  await settle();
  assert.equal(ws.sockets.length, 2);
  assert.equal(client.state, 'reconnecting');
});

test('unsubscribe stops delivery; a throwing listener does not break the others', async (t) => {
  const { client, ws, events } = await connected(t);
  const seen = [];
  const off = client.on('balance', (b) => seen.push(b.version));
  const errors = [];
  globalThis.reportError = (err) => errors.push(err.message); // as in a browser
  t.after(() => delete globalThis.reportError);
  client.on('balance', () => {
    throw new Error('listener bug');
  });
  ws.last().push(balanceFrame('u1', 1, 1));
  off();
  ws.last().push(balanceFrame('u1', 2, 2));
  await settle();
  assert.deepEqual(seen, [1]);
  assert.equal(events.balance.length, 2);
  assert.deepEqual(errors, ['listener bug', 'listener bug']);
});

test('tokenExpiry reads exp from a JWT and nothing else', () => {
  assert.equal(tokenExpiry(jwt({ exp: 1700000000, name: 'Zoë' })), 1700000000_000);
  assert.equal(tokenExpiry(jwt({ sub: 'x' })), null);
  assert.equal(tokenExpiry('opaque-token'), null);
  assert.equal(tokenExpiry('a.%%%.c'), null);
});

test('constructor errors name what is missing', () => {
  assert.throws(() => new BalanceClient({ token: 't', WebSocket: class {} }), /`url` is required/);
  assert.throws(() => new BalanceClient({ url: 'ws://x', WebSocket: class {} }), /`token` is required/);
  assert.throws(() => new BalanceClient({ url: 'ws://x', token: 't', WebSocket: null }), /no WebSocket class/);
});

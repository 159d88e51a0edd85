// balance-client/server against the real balance-server (PostgreSQL + Redis through
// servers.js): money round trips, replays, typed refusals, withHold, pagination, app
// webhooks, a connection cut after the request was sent (a TCP proxy in between), and the
// SDK's coverage of /openapi.json. Skips itself (with the reason) where the Python server
// cannot run; in CI that fails instead.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect } from 'node:net';
import { once } from 'node:events';
import { Webhook } from 'standardwebhooks';
import {
  Balance, HoldNotActive, InsufficientCredits, LEFT_OUT, LimitReached, OPERATIONS, WebhookVerificationError, verifyWebhook,
} from '../../src/server.js';
import { databasesFor, freePort, missingServer, startServer } from './servers.js';

const SERVICE_KEY = `sk_e2e_${Math.random().toString(36).slice(2)}`;
const skip = missingServer();
if (skip && process.env.CI) throw new Error(`end-to-end prerequisites missing in CI: ${skip}`);

const unique = (prefix) => `${prefix}-${Math.random().toString(36).slice(2, 10)}`;

/**
 * A TCP proxy to `port`. After cutNext(), the next answer from the server is not forwarded:
 * the client's socket is destroyed instead, so the request was sent (and done) and the
 * client never hears how it went.
 */
async function cuttingProxy(port) {
  const state = { armed: false, cuts: 0, requests: 0 };
  const sockets = new Set();
  const server = createServer((client) => {
    const upstream = connect(port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.on('data', (chunk) => {
      state.requests += (chunk.toString('latin1').match(/^(GET|POST|PUT) /gm) ?? []).length;
      upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (state.armed) {
        state.armed = false;
        state.cuts++;
        client.destroy();
        upstream.destroy();
        return;
      }
      client.write(chunk);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    state,
    cutNext: () => (state.armed = true),
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

test('balance-client/server against the real balance-server', { skip: skip ?? false, timeout: 180_000 }, async (t) => {
  const dbs = await databasesFor(t);
  if (!dbs) return;
  const server = await startServer({
    port: await freePort(),
    env: { DATABASE_URL: dbs.databaseUrl, REDIS_URL: dbs.redisUrl, BALANCE_SERVICE_KEYS: SERVICE_KEY, BALANCE_WELCOME_CREDITS: '100' },
  });
  t.after(() => server.stop());
  const balance = new Balance({ baseUrl: server.base, serviceKey: SERVICE_KEY });

  await t.test('debit, credit, charge and hold round trip; a replay says replayed', async () => {
    const account = unique('rt');
    const opened = await balance.openAccount(account);
    assert.equal(opened.balance, 100);
    const credited = await balance.credit(account, { amount: 50, kind: 'grant', reason: 'promo', key: `${account}-promo` });
    assert.equal(credited.account.balance, 150);
    assert.equal(credited.replayed, false);
    const debited = await balance.debit(account, { amount: 10, reason: 'export', key: `${account}-export` });
    assert.equal(debited.transaction.amount, -10);
    assert.equal(debited.account.balance, 140);
    const charged = await balance.charge(account, { operation: 'generate_image', key: `${account}-job-1` });
    assert.equal(charged.transaction.amount, -5);
    assert.equal(charged.replayed, false);
    const again = await balance.charge(account, { operation: 'generate_image', key: `${account}-job-1` });
    assert.equal(again.replayed, true);
    assert.equal(again.transaction.id, charged.transaction.id);
    const { hold, account: holding } = await balance.hold(account, { amount: 7, reason: 'render', key: `${account}-render`, ttlSeconds: 60 });
    assert.equal(hold.status, 'active');
    assert.equal(holding.held, 7);
    const captured = await balance.capture(hold.id, { amount: 4 });
    assert.equal(captured.transaction.amount, -4);
    assert.equal(captured.account.held, 0);
    assert.equal(captured.account.balance, 131);
    assert.equal((await balance.getAccount(account)).balance, 131);
    const token = await balance.createToken(account, { ttlSeconds: 60 });
    assert.equal(token.token.split('.').length, 3);
    assert.deepEqual((await balance.prices()).generate_image, 5);
  });

  await t.test('a 402 is InsufficientCredits with required and available', async () => {
    const account = unique('poor');
    await balance.openAccount(account);
    await assert.rejects(balance.debit(account, { amount: 1000, reason: 'too much', key: `${account}-big` }), (err) => {
      assert.ok(err instanceof InsufficientCredits, err.stack);
      assert.equal(err.status, 402);
      assert.equal(err.required, 1000);
      assert.equal(err.available, 100);
      assert.ok(err.requestId);
      return true;
    });
  });

  await t.test('withHold: work that throws leaves the balance as it was; work that succeeds pays what settle() says', async () => {
    const account = unique('job');
    const before = await balance.openAccount(account);
    await assert.rejects(balance.withHold(account, { amount: 30, reason: 'video', key: `${account}-1` }, async (r) => {
      assert.equal((await balance.getAccount(account)).held, 30);
      assert.equal(r.hold.amount, 30);
      throw new Error('the model failed');
    }), /the model failed/);
    const after = await balance.getAccount(account);
    assert.deepEqual([after.balance, after.held, after.available], [before.balance, 0, before.available]);
    const { value, capture } = await balance.withHold(account, { amount: 30, reason: 'video', key: `${account}-2` }, async (r) => {
      r.settle(12);
      return 'video.mp4';
    });
    assert.equal(value, 'video.mp4');
    assert.equal(capture.transaction.amount, -12);
    assert.equal(capture.account.balance, before.balance - 12);
    assert.equal(capture.account.held, 0);
  });

  await t.test('a hold by operation is priced by the server; a capture sent again replays', async () => {
    const account = unique('op');
    await balance.openAccount(account);
    const { account: before } = await balance.credit(account, { amount: 20, kind: 'grant', key: `${account}-g` });
    const placed = await balance.hold(account, { operation: 'generate_image', quantity: 2, key: `${account}-1` });
    assert.equal(placed.hold.amount, 10);
    assert.equal(placed.hold.operation, 'generate_image');
    assert.deepEqual((await balance.holds(account)).holds.map((h) => h.id), [placed.hold.id]);
    const first = await balance.capture(placed.hold.id);
    assert.deepEqual((await balance.holds(account)).holds, []);
    assert.equal(first.replayed, false);
    const repeat = await balance.capture(placed.hold.id);
    assert.equal(repeat.replayed, true);
    assert.equal(repeat.transaction.id, first.transaction.id);
    assert.deepEqual(first.transaction.metadata, { operation: 'generate_image', quantity: 2, unit_cost: 5 });
    await assert.rejects(balance.release(placed.hold.id), HoldNotActive);
    // The same job again, after it was paid for: refused before the work runs.
    let ran = false;
    await assert.rejects(
      balance.withHold(account, { operation: 'generate_image', quantity: 2, key: `${account}-1` }, () => { ran = true; }),
      (err) => err instanceof HoldNotActive && err.holdStatus === 'captured');
    assert.equal(ran, false);
    assert.equal((await balance.getAccount(account)).balance, before.balance - 10);
  });

  await t.test('transactions() walks more than one page', async () => {
    const account = unique('pages');
    await balance.openAccount(account);
    for (let i = 0; i < 7; i++) await balance.debit(account, { amount: 1, reason: `step-${i}`, key: `${account}-${i}` });
    let pages = 0;
    const counting = new Balance({
      baseUrl: server.base, serviceKey: SERVICE_KEY,
      fetch: (url, init) => (String(url).includes('/transactions') && pages++, fetch(url, init)),
    });
    const seen = [];
    for await (const tx of counting.transactions(account, { pageSize: 3 })) seen.push(tx);
    assert.equal(seen.length, 8, 'the welcome grant and seven debits');
    assert.equal(pages, 3);
    assert.deepEqual(seen.slice(0, 7).map((tx) => tx.reason), [6, 5, 4, 3, 2, 1, 0].map((i) => `step-${i}`));
    assert.equal(seen.at(-1).kind, 'grant');
    assert.equal(new Set(seen.map((tx) => tx.id)).size, 8);
  });

  await t.test('the operator calls: search, the audit log of an adjustment, usage by day and operation, an account\'s events', async () => {
    const account = unique('ops');
    await balance.adjust(account, { amount: 40, reason: 'outage credit', actor: 'alice', key: `${account}-adj` });
    await balance.adjust(account, { amount: 40, reason: 'outage credit', actor: 'alice', key: `${account}-adj` });
    await balance.debit(account, { amount: 3, reason: 'render', key: `${account}-d` });
    const found = await balance.searchAccounts(account);
    const { balance: now } = await balance.getAccount(account);
    assert.deepEqual(found.accounts.map((a) => [a.account_id, a.balance]), [[account, now]]);
    assert.equal(found.next, null);
    const log = await balance.auditPage({ account });
    assert.deepEqual(log.entries.map((e) => [e.action, e.subject, e.detail.actor]), [['adjust', account, 'alice']]);
    const usage = await balance.usage(account, { groupBy: 'day,reason' });
    assert.deepEqual(usage.groups.map((g) => [g.reason, g.amount]), [['render', 3]]);
    const payments = await balance.paymentsPage('credited', { account });
    assert.deepEqual(payments, { payments: [], next: null });
    await balance.setAlerts(account, { lowBalance: 4, auditReason: 'quieter for Zoë, ticket 9' });
    const [latest] = (await balance.auditPage({ account, limit: 1 })).entries;
    assert.deepEqual([latest.action, latest.detail.reason], ['alerts', 'quieter for Zoë, ticket 9']);
    const settings = await balance.settings(account);
    assert.deepEqual([settings.low_balance, settings.threshold_from, settings.auto_top_up, settings.limits], [4, 'account', null, { spend: null }]);
    const capped = await balance.setLimits(account, { spend: { amount: 3, period: 'day' }, auditReason: 'trial' });
    assert.deepEqual([capped.limits.spend.amount, capped.limits.spend.used], [3, 3]);
    await assert.rejects(balance.debit(account, { amount: 1, reason: 'render', key: `${account}-d2` }), (err) => err instanceof LimitReached && err.period === 'day' && err.operation === undefined);
    assert.equal((await balance.limits(account)).limits.spend.period, 'day');
    await balance.setLimits(account, { spend: null });
    const events = await balance.eventsPage({ account });
    assert.ok(events.events.every((e) => e.account_id === account));
  });

  await t.test('an app webhook signed with the secret verifies; a forged or stale one is refused', () => {
    const secret = `whsec_${Buffer.from(unique('secret').padEnd(32, '!')).toString('base64')}`;
    const body = JSON.stringify({ type: 'balance.low', timestamp: new Date().toISOString(), data: { account_id: 'u1', available: 3 } });
    const headers = (at, key = secret, payload = body) => ({
      'webhook-id': 'msg_e2e', 'webhook-timestamp': String(Math.floor(at.getTime() / 1000)), 'webhook-signature': new Webhook(key).sign('msg_e2e', at, payload),
    });
    const event = verifyWebhook(secret, body, new Headers(headers(new Date())));
    assert.equal(event.id, 'msg_e2e');
    assert.equal(event.type, 'balance.low');
    assert.deepEqual(event.data, { account_id: 'u1', available: 3 });
    const forger = `whsec_${Buffer.from('not the secret, but 32 bytes long').toString('base64')}`;
    assert.throws(() => verifyWebhook(secret, body, headers(new Date(), forger)), WebhookVerificationError);
    assert.throws(() => verifyWebhook(secret, body, headers(new Date(Date.now() - 10 * 60_000))), WebhookVerificationError);
  });

  await t.test('a connection cut after the request was sent: retried with the same key, done once', async () => {
    const proxy = await cuttingProxy(Number(new URL(server.base).port));
    t.after(() => proxy.close());
    const account = unique('cut');
    await balance.openAccount(account);
    const attempts = [];
    const viaProxy = new Balance({
      baseUrl: proxy.url, serviceKey: SERVICE_KEY,
      fetch: (url, init) => fetch(url, init).then(
        (res) => (attempts.push(res.status), res),
        (err) => (attempts.push(`${err.message}: ${err.cause?.code ?? err.cause?.message}`), Promise.reject(err)),
      ),
    });
    const reason = unique('cut-debit');
    proxy.cutNext();
    const result = await viaProxy.debit(account, { amount: 9, reason, key: `${account}-once` });
    t.diagnostic(`attempts: ${JSON.stringify(attempts)}`);
    assert.equal(proxy.state.cuts, 1, 'the first answer was cut');
    assert.equal(attempts.length, 2);
    assert.equal(attempts[1], 200);
    assert.equal(proxy.state.requests, 2, 'the request reached the server twice');
    assert.equal(result.replayed, true, 'the retry was answered from the first, committed, debit');
    const mine = [];
    for await (const tx of balance.transactions(account)) if (tx.reason === reason) mine.push(tx);
    assert.equal(mine.length, 1, 'exactly one debit in the ledger');
    assert.equal(mine[0].id, result.transaction.id);
    assert.equal((await balance.getAccount(account)).balance, 91);
  });

  await t.test('coverage: every operation of /openapi.json is in OPERATIONS or LEFT_OUT, with every body field', async () => {
    const doc = await (await fetch(`${server.base}/openapi.json`)).json();
    const missing = [];
    const seen = new Set();
    for (const [path, methods] of Object.entries(doc.paths)) {
      for (const [method, operation] of Object.entries(methods)) {
        const id = operation.operationId;
        seen.add(id);
        if (id in LEFT_OUT) continue;
        const spec = OPERATIONS[id];
        if (!spec) {
          missing.push(`${id} (${method.toUpperCase()} ${path}): neither in OPERATIONS nor in LEFT_OUT`);
          continue;
        }
        if (spec.method !== method.toUpperCase() || spec.path !== path) missing.push(`${id}: the SDK calls ${spec.method} ${spec.path}, the server has ${method.toUpperCase()} ${path}`);
        const schema = operation.requestBody?.content?.['application/json']?.schema;
        const ref = schema?.$ref ?? schema?.anyOf?.find((s) => s.$ref)?.$ref;
        if (schema && !ref) missing.push(`${id}: a request body that is not a components schema`);
        const properties = ref ? Object.keys(doc.components.schemas[ref.split('/').at(-1)].properties ?? {}) : [];
        for (const field of properties) if (!spec.fields.includes(field)) missing.push(`${id}: body field ${field} is not sent by ${spec.call}`);
        for (const param of operation.parameters ?? []) {
          if (param.in === 'query' && !spec.query.includes(param.name)) missing.push(`${id}: query parameter ${param.name} is not sent by ${spec.call}`);
        }
      }
    }
    for (const id of Object.keys(OPERATIONS)) if (!seen.has(id)) missing.push(`${id}: in OPERATIONS, not in /openapi.json`);
    assert.deepEqual(missing, []);
    t.diagnostic(`${Object.keys(OPERATIONS).length} operations covered, ${Object.keys(LEFT_OUT).length} left out`);
  });
});

// The server SDK against an injected fetch: required keys, retries with the same bytes,
// backoff and the deadline, OutcomeUnknown vs Unavailable, error mapping, withHold,
// pagination and webhook verification. test/e2e/server-sdk.e2e.js runs it for real.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Webhook } from 'standardwebhooks';
import {
  Balance, BalanceError, HoldNotActive, InsufficientCredits, InvalidRequest, LEFT_OUT, LimitReached, OPERATIONS,
  OutcomeUnknown, RateLimited, Unavailable, WebhookVerificationError, verifyWebhook,
} from '../src/server.js';

const json = (status, body, headers = {}) => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
const netError = (code) => Object.assign(new TypeError('fetch failed'), { cause: Object.assign(new Error(code), { code }) });
const MOVEMENT = { transaction: { id: 1, amount: -5 }, account: { account_id: 'u1', balance: 95 } };

/** A fetch that answers from `script` (functions of the call, or values) in order, recording every call. */
function fakeFetch(...script) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, method: init.method, headers: init.headers, body: init.body, signal: init.signal });
    const step = script.length > 1 ? script.shift() : script[0];
    const out = typeof step === 'function' ? await step(url, init) : step;
    if (out instanceof Error) throw out;
    return out.clone ? out.clone() : out;
  };
  return { fetch, calls };
}

function client(fetch, options = {}) {
  const waits = [];
  const balance = new Balance({
    baseUrl: 'http://balance.test/', serviceKey: 'sk_test', fetch, deadlineMs: 300, timeoutMs: 100,
    backoff: { base: 5, cap: 20 },
    sleep: (ms) => (waits.push(ms), new Promise((r) => setTimeout(r, ms))),
    ...options,
  });
  return { balance, waits };
}

test('a mutation without a key is a TypeError, and nothing is sent', async () => {
  const { fetch, calls } = fakeFetch(json(200, MOVEMENT));
  const { balance } = client(fetch);
  await assert.rejects(balance.debit('u1', { amount: 5, reason: 'x' }), (err) => err instanceof TypeError && /key/.test(err.message));
  await assert.rejects(balance.charge('u1', { operation: 'generate_image', key: '' }), TypeError);
  await assert.rejects(balance.hold('u1', { amount: 5, reason: 'x' }), TypeError);
  await assert.rejects(balance.credit('u1', { amount: 5, kind: 'grant' }), TypeError);
  await assert.rejects(balance.adjust('u1', { amount: 5, reason: 'x', actor: 'ops' }), TypeError);
  await assert.rejects(balance.setPlan('u1', { plan: 'pro' }), TypeError);
  await assert.rejects(balance.checkout('u1', { provider: 'stripe', successUrl: 'https://a/' }), TypeError);
  await assert.rejects(balance.withHold('u1', { operation: 'generate_image' }, async () => 1), TypeError);
  assert.equal(calls.length, 0);
});

test('a debit sends the key as idempotency_key, with the service key, and says whether it replayed', async () => {
  const { fetch, calls } = fakeFetch(json(200, MOVEMENT), json(200, MOVEMENT, { 'idempotent-replayed': 'true' }));
  const { balance } = client(fetch);
  const first = await balance.debit('auth0|1', { amount: 5, reason: 'generate', key: 'job-1' });
  assert.equal(calls[0].url, 'http://balance.test/v1/accounts/auth0%7C1/debit');
  assert.equal(calls[0].method, 'POST');
  assert.equal(calls[0].headers.authorization, 'Bearer sk_test');
  assert.deepEqual(JSON.parse(calls[0].body), { amount: 5, reason: 'generate', idempotency_key: 'job-1' });
  assert.equal(first.replayed, false);
  assert.equal(first.transaction.amount, -5);
  const again = await balance.debit('auth0|1', { amount: 5, reason: 'generate', key: 'job-1' });
  assert.equal(again.replayed, true);
});

test('503 outcome_unknown and a cut connection are retried with the same bytes, under full-jitter backoff', async () => {
  const { fetch, calls } = fakeFetch(
    json(503, { error: 'outcome_unknown', message: 'may have committed' }),
    netError('ECONNRESET'),
    json(200, MOVEMENT, { 'idempotent-replayed': 'true' }),
  );
  const { balance, waits } = client(fetch, { backoff: { base: 5, cap: 20, random: () => 0.999 } });
  const result = await balance.charge('u1', { operation: 'generate_image', key: 'job-2' });
  assert.equal(result.replayed, true);
  assert.equal(calls.length, 3);
  assert.equal(new Set(calls.map((c) => c.body)).size, 1, 'every attempt sends the same bytes');
  assert.equal(JSON.parse(calls[2].body).idempotency_key, 'job-2');
  assert.deepEqual(waits, [4, 9], 'random(0, min(cap, base * 2^attempt))');
});

test('a 503 Retry-After is honoured', async () => {
  const { fetch } = fakeFetch(json(503, { error: 'unavailable', message: 'db down' }, { 'retry-after': '1' }), json(200, MOVEMENT));
  const { balance, waits } = client(fetch, { deadlineMs: 5000, sleep: async (ms) => void waits.push(ms) });
  await balance.debit('u1', { amount: 1, reason: 'r', key: 'k' });
  assert.deepEqual(waits, [1000]);
});

test('at the deadline: Unavailable when nothing can have been written', async () => {
  for (const step of [netError('ECONNREFUSED'), json(503, { error: 'unavailable', message: 'db down' })]) {
    const { fetch, calls } = fakeFetch(step);
    const { balance } = client(fetch);
    const started = Date.now();
    await assert.rejects(balance.debit('u1', { amount: 1, reason: 'r', key: 'k-1' }), (err) => {
      assert.ok(err instanceof Unavailable && !(err instanceof OutcomeUnknown), err.stack);
      assert.equal(err.code, 'unavailable');
      assert.equal(err.status, 503);
      return true;
    });
    assert.ok(calls.length > 2, `${calls.length} attempts`);
    assert.ok(Date.now() - started < 400, 'stops before the deadline passes');
  }
});

test('at the deadline: OutcomeUnknown, with the key, when an attempt may have reached the server', async () => {
  const aborted = [];
  const hang = (url, init) => new Promise((_, reject) => init.signal.addEventListener('abort', () => (aborted.push(Date.now()), reject(new DOMException('aborted', 'AbortError')))));
  for (const step of [netError('ECONNRESET'), json(503, { error: 'outcome_unknown', message: 'maybe' }), hang, new TypeError('Load failed')]) {
    const { fetch } = fakeFetch(netError('ECONNREFUSED'), step);
    const { balance } = client(fetch);
    await assert.rejects(balance.charge('u1', { operation: 'generate_image', key: 'job-9' }), (err) => {
      assert.ok(err instanceof OutcomeUnknown, err.stack);
      assert.equal(err.key, 'job-9');
      assert.match(err.message, /same key \(job-9\)/);
      return true;
    });
  }
  assert.ok(aborted.length >= 1, 'a hung attempt is aborted at timeoutMs');
});

test('a capture that may have happened carries the hold id as its key; a read that never answered is Unavailable', async () => {
  const { fetch } = fakeFetch(netError('ECONNRESET'));
  const { balance } = client(fetch);
  await assert.rejects(balance.capture('h_1'), (err) => err instanceof OutcomeUnknown && err.key === 'h_1');
  await assert.rejects(balance.getAccount('u1'), (err) => err instanceof Unavailable);
});

test('each attempt is bounded by timeoutMs, the call by deadlineMs', async () => {
  const { fetch, calls } = fakeFetch((url, init) => new Promise((_, reject) => init.signal.addEventListener('abort', () => reject(init.signal.reason))));
  const { balance } = client(fetch, { timeoutMs: 50, deadlineMs: 180 });
  const started = Date.now();
  await assert.rejects(balance.debit('u1', { amount: 1, reason: 'r', key: 'k' }), OutcomeUnknown);
  const took = Date.now() - started;
  assert.ok(calls.length >= 2 && calls.length <= 4, `${calls.length} attempts`);
  assert.ok(took < 260, `took ${took} ms`);
});

test('error answers become typed errors with the contract\'s details, and are not retried', async () => {
  const cases = [
    [json(402, { error: 'insufficient_credits', message: 'm', required: 5, available: 2 }, { 'x-request-id': 'req-1' }), InsufficientCredits, { required: 5, available: 2, requestId: 'req-1', status: 402 }],
    [json(402, { error: 'limit_reached', message: 'm', limit: 3, used: 3, resets_at: '2030-01-01T00:00:00Z', operation: 'generate_video' }), LimitReached, { limit: 3, used: 3, resetsAt: '2030-01-01T00:00:00Z', operation: 'generate_video' }],
    [json(402, { error: 'limit_reached', message: 'm', limit: 100, used: 98, resets_at: '2030-01-01T00:00:00Z', period: 'day' }), LimitReached, { limit: 100, used: 98, operation: undefined, period: 'day' }],
    [json(409, { error: 'hold_not_active', message: 'm', status: 'expired' }), HoldNotActive, { holdStatus: 'expired' }],
    [json(422, { error: 'invalid_request', message: 'm', detail: 'amount: too big' }), InvalidRequest, { detail: 'amount: too big' }],
    [json(413, { error: 'payload_too_large', message: 'm' }), InvalidRequest, { code: 'payload_too_large' }],
    [json(429, { error: 'rate_limited', message: 'm', retry_after: 7 }, { 'retry-after': '7' }), RateLimited, { retryAfter: 7 }],
    [json(500, { error: 'internal', message: 'boom' }), BalanceError, { code: 'internal', status: 500 }],
    [new Response('<html>bad gateway</html>', { status: 502 }), BalanceError, { code: 'http_502' }],
  ];
  for (const [response, Class, fields] of cases) {
    const { fetch, calls } = fakeFetch(response);
    const { balance } = client(fetch);
    await assert.rejects(balance.debit('u1', { amount: 5, reason: 'r', key: 'k' }), (err) => {
      assert.ok(err instanceof Class && err instanceof BalanceError, `${err.name} for ${fields.code ?? Class.name}`);
      for (const [name, value] of Object.entries(fields)) assert.equal(err[name], value, name);
      return true;
    });
    assert.equal(calls.length, 1);
  }
});

test('withHold: captures all on success, what settle() says, and releases (then rethrows) on failure', async () => {
  const hold = { id: 'h_1', account_id: 'u1', amount: 5, status: 'active', expires_at: '2030-01-01T00:00:00Z' };
  const placed = json(201, { hold, account: {} });
  const { fetch, calls } = fakeFetch(placed, json(200, MOVEMENT), placed, json(200, MOVEMENT), placed, json(200, { hold: { ...hold, status: 'released' }, account: {} }));
  const { balance } = client(fetch);

  const done = await balance.withHold('u1', { operation: 'generate_image', key: 'job-3', ttlSeconds: 60 }, async (r) => {
    assert.equal(r.hold.id, 'h_1');
    return 'image.png';
  });
  assert.equal(done.value, 'image.png');
  assert.equal(done.capture.transaction.amount, -5);
  assert.deepEqual(JSON.parse(calls[0].body), { operation: 'generate_image', reason: 'generate_image', idempotency_key: 'job-3', ttl_seconds: 60 });
  assert.equal(calls[1].url, 'http://balance.test/v1/holds/h_1/capture');
  assert.deepEqual(JSON.parse(calls[1].body), {});

  await balance.withHold('u1', { amount: 5, reason: 'video', key: 'job-4' }, async (r) => {
    assert.throws(() => r.settle(6), RangeError);
    r.settle(3);
  });
  assert.deepEqual(JSON.parse(calls[3].body), { amount: 3 });

  await assert.rejects(balance.withHold('u1', { amount: 5, reason: 'video', key: 'job-5' }, async () => {
    throw new Error('model failed');
  }), /model failed/);
  assert.equal(calls[5].url, 'http://balance.test/v1/holds/h_1/release');
  assert.equal(calls.length, 6);
});

test('withHold: a failed release still rethrows the work\'s error', async () => {
  const hold = { id: 'h_2', account_id: 'u1', amount: 5, status: 'active', expires_at: '2030-01-01T00:00:00Z' };
  const { fetch } = fakeFetch(json(201, { hold, account: {} }), json(409, { error: 'hold_not_active', message: 'm', status: 'expired' }));
  const { balance } = client(fetch);
  await assert.rejects(balance.withHold('u1', { amount: 5, reason: 'r', key: 'job-6' }, () => {
    throw new Error('work failed');
  }), /work failed/);
});

test('withHold: an attempt that shares an earlier attempt\'s hold leaves it when it fails; a settled one is refused before the work', async () => {
  const hold = { id: 'h_3', account_id: 'u1', amount: 5, status: 'active', expires_at: '2030-01-01T00:00:00Z' };
  const replayed = (h) => json(201, { hold: h, account: {} }, { 'idempotent-replayed': 'true' });
  const { fetch, calls } = fakeFetch(replayed(hold), replayed({ ...hold, status: 'captured', captured: 5 }));
  const { balance } = client(fetch);
  await assert.rejects(balance.withHold('u1', { amount: 5, reason: 'r', key: 'job-7' }, () => {
    throw new Error('work failed');
  }), /work failed/);
  assert.equal(calls.length, 1, 'no release of a hold the first attempt may still capture');
  let ran = false;
  await assert.rejects(balance.withHold('u1', { amount: 5, reason: 'r', key: 'job-7' }, () => { ran = true; }),
    (err) => err instanceof HoldNotActive && err.holdStatus === 'captured');
  assert.equal(ran, false);
  assert.equal(calls.length, 2);
});

test('transactions() walks every page through the next cursors', async () => {
  const page = (ids, next) => json(200, { transactions: ids.map((id) => ({ id })), next });
  const { fetch, calls } = fakeFetch(page([5, 4], '4'), page([3, 2], '2'), page([1], null));
  const { balance } = client(fetch);
  const ids = [];
  for await (const t of balance.transactions('u1', { kind: 'usage', pageSize: 2 })) ids.push(t.id);
  assert.deepEqual(ids, [5, 4, 3, 2, 1]);
  assert.deepEqual(calls.map((c) => new URL(c.url).search), ['?limit=2&kind=usage', '?limit=2&before=4&kind=usage', '?limit=2&before=2&kind=usage']);
  assert.equal(calls[0].body, undefined);
});

test('events() walks the pages of app webhooks', async () => {
  const { fetch, calls } = fakeFetch(json(200, { events: [{ id: 9 }], next: 9 }), json(200, { events: [{ id: 8 }], next: null }));
  const { balance } = client(fetch);
  const ids = [];
  for await (const e of balance.events({ status: 'failed' })) ids.push(e.id);
  assert.deepEqual(ids, [9, 8]);
  assert.equal(new URL(calls[1].url).search, '?status=failed&limit=50&before=9');
});

test('verifyWebhook accepts a signed event and refuses forged, altered and stale ones', () => {
  const secret = `whsec_${Buffer.from('a secret of thirty-two bytes!!!!').toString('base64')}`;
  const body = JSON.stringify({ type: 'balance.low', timestamp: new Date().toISOString(), data: { account_id: 'u1', available: 3 } });
  const sign = (at, payload = body, key = secret) => ({
    'webhook-id': 'msg_1', 'webhook-timestamp': String(Math.floor(at.getTime() / 1000)), 'webhook-signature': new Webhook(key).sign('msg_1', at, payload),
  });
  const event = verifyWebhook(secret, body, new Headers(sign(new Date())));
  assert.deepEqual(event, { id: 'msg_1', type: 'balance.low', timestamp: JSON.parse(body).timestamp, data: { account_id: 'u1', available: 3 } });
  assert.equal(verifyWebhook(secret, new TextEncoder().encode(body), sign(new Date())).type, 'balance.low');
  const other = `whsec_${Buffer.from('another secret, thirty-two bytes').toString('base64')}`;
  assert.throws(() => verifyWebhook(secret, body, sign(new Date(), body, other)), WebhookVerificationError);
  assert.throws(() => verifyWebhook(secret, body.replace('3', '300'), sign(new Date())), WebhookVerificationError);
  assert.throws(() => verifyWebhook(secret, body, sign(new Date(Date.now() - 6 * 60_000))), WebhookVerificationError);
  assert.throws(() => verifyWebhook(secret, body, {}), WebhookVerificationError);
});

test('setLimits sends the spend cap (or null), with the operator\'s reason; limits reads it', async () => {
  const spend = { amount: 100, period: 'day', used: 0, held: 0, resets_at: '2030-01-01T00:00:00.000000Z' };
  const { fetch, calls } = fakeFetch(json(200, { limits: { spend } }), json(200, { limits: { spend: null } }), json(200, { limits: { spend: null } }));
  const { balance } = client(fetch);
  assert.deepEqual(await balance.setLimits('u|1', { spend: { amount: 100, period: 'day' }, auditReason: 'trial' }), { limits: { spend } });
  assert.equal(calls[0].method, 'PUT');
  assert.equal(calls[0].url, 'http://balance.test/v1/accounts/u%7C1/limits');
  assert.deepEqual(JSON.parse(calls[0].body), { spend: { amount: 100, period: 'day' } });
  assert.equal(calls[0].headers['x-audit-reason'], 'trial');
  await balance.setLimits('u1', { spend: null });
  assert.deepEqual(JSON.parse(calls[1].body), { spend: null });
  assert.deepEqual(await balance.limits('u1'), { limits: { spend: null } });
  assert.equal(calls[2].method, 'GET');
  await assert.rejects(balance.setLimits('u1', {}), TypeError);
});

test('OPERATIONS names a Balance method for each operation; LEFT_OUT is apart from it', () => {
  for (const [id, spec] of Object.entries(OPERATIONS)) {
    assert.equal(typeof Balance.prototype[spec.call], 'function', `${id} -> ${spec.call}`);
    assert.ok(!(id in LEFT_OUT), id);
    if (spec.keyed) assert.ok(spec.fields.includes('idempotency_key'), id);
  }
});

test('the constructor reads BALANCE_API_URL and BALANCE_SERVICE_KEY when not given', async () => {
  const saved = { url: process.env.BALANCE_API_URL, key: process.env.BALANCE_SERVICE_KEY };
  process.env.BALANCE_API_URL = 'http://from-env.test';
  process.env.BALANCE_SERVICE_KEY = 'sk_env';
  try {
    const { fetch, calls } = fakeFetch(json(200, { generate_image: 5 }));
    assert.deepEqual(await new Balance({ fetch }).prices(), { generate_image: 5 });
    assert.equal(calls[0].url, 'http://from-env.test/v1/prices');
    assert.equal(calls[0].headers.authorization, 'Bearer sk_env');
  } finally {
    for (const [name, value] of [['BALANCE_API_URL', saved.url], ['BALANCE_SERVICE_KEY', saved.key]]) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
  delete process.env.BALANCE_SERVICE_KEY;
  assert.throws(() => new Balance({ baseUrl: 'http://x' }), TypeError);
  if (saved.key !== undefined) process.env.BALANCE_SERVICE_KEY = saved.key;
});

test('setAutoTopUp sends target and monthlyLimit as the API names them, and only when given', async () => {
  const { fetch, calls } = fakeFetch(json(200, { auto_top_up: null }));
  const { balance } = client(fetch);
  const config = { package: 'starter', threshold: 50, stripeCustomer: 'cus_1', stripePaymentMethod: 'pm_1' };
  await balance.setAutoTopUp('u1', { ...config, target: 1000, monthlyLimit: 5000 });
  await balance.setAutoTopUp('u1', config);
  assert.equal(calls[0].method, 'PUT');
  assert.deepEqual(JSON.parse(calls[0].body), {
    package: 'starter', threshold: 50, stripe_customer: 'cus_1', stripe_payment_method: 'pm_1', target: 1000, monthly_limit: 5000,
  });
  assert.deepEqual(Object.keys(JSON.parse(calls[1].body)), ['package', 'threshold', 'stripe_customer', 'stripe_payment_method']);
});

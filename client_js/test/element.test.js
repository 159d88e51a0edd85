// The element's pure parts, in Node (no DOM here: importing element.js defines nothing).
// Rendering in a real browser is covered by e2e/element.e2e.js and e2e/demo.e2e.js.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { balanceView, defaultSocketUrl, formatCredits, tokenFromUrl } from '../src/element.js';

const acct = (available, held = 0) => ({ account_id: 'u1', balance: available + held, held, available, version: 1 });

test('thousands separators follow the locale', () => {
  assert.equal(formatCredits(1234567, 'en-US'), '1,234,567');
  assert.equal(formatCredits(1234567, 'de-DE'), '1.234.567');
  assert.equal(formatCredits(-2500, 'en-US'), '-2,500');
  assert.equal(balanceView(acct(12500), 'open', { locale: 'en-US' }).text, '12,500');
});

test('a placeholder until the balance is known', () => {
  const v = balanceView(undefined, 'connecting');
  assert.equal(v.text, '—');
  assert.equal(v.status, '');
  assert.equal(v.low, false);
});

test('reconnecting and offline hints keep the last number', () => {
  assert.deepEqual([balanceView(acct(40), 'reconnecting').text, balanceView(acct(40), 'reconnecting').status], ['40', 'Reconnecting…']);
  assert.equal(balanceView(acct(40), 'closed').status, 'Offline');
});

test('low below the threshold, not at it', () => {
  assert.equal(balanceView(acct(19), 'open', { low: 20 }).low, true);
  assert.equal(balanceView(acct(20), 'open', { low: 20 }).low, false);
  // Without a `low` attribute, the server's own `low` decides (its thresholds).
  assert.equal(balanceView({ ...acct(500), low: true }, 'open').low, true);
  assert.equal(balanceView({ ...acct(5), low: false }, 'open').low, false);
  // An attribute, when given, is the page's own rule.
  assert.equal(balanceView({ ...acct(500), low: true }, 'open', { low: 20 }).low, false);
  assert.equal(balanceView(acct(0), 'open').low, false, 'no threshold, never low');
});

test('shows what can be spent, and what is on hold', () => {
  const v = balanceView(acct(960, 1040), 'open', { locale: 'en-US' });
  assert.equal(v.text, '960');
  assert.equal(v.status, '1,040 on hold');
  assert.equal(v.title, '2,000 credits, 1,040 on hold');
});

test('the socket URL follows the page scheme and host', () => {
  assert.equal(defaultSocketUrl({ protocol: 'https:', host: 'app.example.com' }), 'wss://app.example.com/v1/ws');
  assert.equal(defaultSocketUrl({ protocol: 'http:', host: '127.0.0.1:8000' }), 'ws://127.0.0.1:8000/v1/ws');
});

test('token-url is POSTed with credentials and its token returned', async () => {
  const calls = [];
  const fetchImpl = async (url, init) => (calls.push({ url, init }), { ok: true, json: async () => ({ token: 'abc' }) });
  assert.equal(await tokenFromUrl('/api/balance-token', fetchImpl)(), 'abc');
  assert.equal(calls[0].url, '/api/balance-token');
  assert.equal(calls[0].init.method, 'POST');
  assert.equal(calls[0].init.credentials, 'include');
  const failing = tokenFromUrl('/api/balance-token', async () => ({ ok: false, status: 401 }));
  await assert.rejects(failing(), /answered 401/);
});

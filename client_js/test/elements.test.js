// The credit elements in jsdom, on a fake socket and browser API: what they render, that
// they share the session's one socket, and that properties set before the element's module
// loaded (a page's script, React's effect) are taken over on upgrade. Layout-dependent
// behaviour (scrolling, the modal dialog, focus, colours) is tested in Chromium
// (e2e/demo.e2e.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import './dom.js';
import { balanceFrame, fakeFetch, fakeWebSocket, settle, tx } from './fakes.js';
import { CreditSession } from '../src/session.js';

const wait = (ms) => new Promise((r) => setTimeout(r, ms));
const PLAN = { plan: 'pro', period_start: '2026-11-01T00:00:00Z', period_end: '2026-12-01T00:00:00Z', allowance: 300, allowance_remaining: 60, limits: { generate_video: { limit: 5, used: 5 } } };
const CATALOG = {
  prices: {},
  plans: {},
  alerts: {},
  packages: { starter: { credits: 100, price: { usd: 500 } }, popular: { credits: 500, price: { usd: 2000 } } },
  pay_as_you_go: { credits_per_unit: { usd: 100 }, min_amount: { usd: 100 } },
};

function backend() {
  const ws = fakeWebSocket();
  const http = fakeFetch({
    'GET /v1/me/plan': PLAN,
    'GET /v1/catalog': CATALOG,
    'GET /v1/me/transactions': { transactions: [tx(10, 1, 100, 100, { kind: 'grant', reason: 'welcome' })], next: null },
    'POST /v1/me/checkout': [201, { url: 'https://pay.test/s1', session_id: 's1', credits: 500, amount: 2000, currency: 'usd', provider: 'stripe' }],
  });
  const session = new CreditSession({ apiUrl: 'http://balance.test', token: 'tok', WebSocket: ws.FakeSocket, fetch: http.fetch });
  return { ws, http, session };
}

const shadow = (el, sel) => el.shadowRoot.querySelector(sel);

/** `tag` on the page with the backend's session (after `setup(el)`), its socket open and sent `frame`. */
async function mounted(t, tag, { session, ws }, frame, setup = () => {}) {
  const el = document.createElement(tag);
  el.session = session;
  setup(el);
  document.body.append(el);
  t.after(() => el.remove());
  await settle();
  ws.last().open();
  ws.last().push(frame);
  await wait(20);
  return el;
}
const texts = (el, sel) => [...el.shadowRoot.querySelectorAll(sel)].map((n) => n.textContent);

test('a session and labels set before the element was defined are taken over on upgrade', async (t) => {
  const { ws, session } = backend();
  const el = document.createElement('credit-usage');
  el.session = session; // the class is not defined yet: a plain own property
  el.operationLabel = (op) => `op:${op}`;
  document.body.append(el);
  await import('../src/usage.js');
  t.after(() => el.remove());
  await settle();
  ws.last().open();
  ws.last().push(balanceFrame('u1', 1, 100));
  await wait(20);
  assert.equal(el.session, session);
  assert.equal(el.getAttribute('level'), 'warn');
  assert.deepEqual(texts(el, '[part=limit-label]'), ['op:generate_video']);
  assert.equal(shadow(el, '[part=limit]').dataset.level, 'out');
  assert.equal(shadow(el, '[part=allowance-text]').textContent, '60 of 300 left');
});

test('every element on a session shares its one socket', async (t) => {
  await import('../src/elements.js');
  const { ws, session } = backend();
  const els = ['credit-balance', 'credit-usage', 'credit-ledger', 'credit-purchase', 'credit-gate'].map((tag) => {
    const el = document.createElement(tag);
    el.session = session;
    document.body.append(el);
    return el;
  });
  t.after(() => els.forEach((el) => el.remove()));
  await settle();
  ws.last().open();
  ws.last().push(balanceFrame('u1', 1, 1234));
  await wait(20);
  assert.equal(ws.sockets.length, 1);
  assert.equal(shadow(els[0], '[part=balance]').textContent, '1,234');
  assert.equal(shadow(els[0], '.amount').getAttribute('aria-live'), 'polite');
});

test('<credit-ledger>: days with totals, a pushed row prepended and announced', async (t) => {
  const server = backend();
  const { ws, http } = server;
  const rows = [];
  const el = await mounted(t, 'credit-ledger', server, balanceFrame('u1', 1, 100), (ledger) => {
    ledger.reasonLabel = (r) => r.toUpperCase();
    ledger.addEventListener('credit-ledger-row', (e) => rows.push(e.detail.id));
  });
  assert.deepEqual(texts(el, '[part=row-title]'), ['WELCOME']);
  ws.last().push(balanceFrame('u1', 2, 60, { kind: 'usage', amount: -40, reason: 'video', transaction_id: 11, hold_id: null }));
  assert.deepEqual(texts(el, '[part=row-title]'), ['VIDEO', 'WELCOME']);
  assert.deepEqual(texts(el, '[part=day-label]'), ['Today']);
  assert.deepEqual(texts(el, '[part=day-total]'), ['+60']);
  assert.deepEqual(texts(el, '[part=row-amount]'), ['−40', '+100']);
  assert.match(el.shadowRoot.querySelector('[aria-live]').textContent, /−40 credits, VIDEO/);
  assert.deepEqual(rows, [11]);
  assert.equal(shadow(el, '[part=more]').hidden, true, 'nothing older to load');
  assert.equal(http.calls.filter((c) => c.path === '/v1/me/transactions').length, 1);
});

test('<credit-purchase>: prices per credit, the featured mark, pay-as-you-go, checkout', async (t) => {
  const { session, http } = backend();
  const el = document.createElement('credit-purchase');
  el.setAttribute('featured', 'popular');
  el.setAttribute('success-url', 'http://app.test/ok');
  el.session = session;
  const started = [];
  el.addEventListener('credit-checkout', (e) => {
    started.push(e.detail);
    e.preventDefault(); // stay here (jsdom cannot navigate)
  });
  document.body.append(el);
  t.after(() => el.remove());
  await wait(20);
  assert.deepEqual(texts(el, '[part=credits]'), ['100 credits', '500 credits']);
  assert.deepEqual(texts(el, '[part=per-credit]'), ['$0.05 per credit', '$0.04 per credit']);
  assert.deepEqual(texts(el, '[part=badge]'), ['Most popular']);
  assert.equal(shadow(el, '[data-package=popular]').getAttribute('aria-label'), '500 credits for $20.00, most popular');
  const input = shadow(el, '[part=payg-input]');
  input.value = '12.50';
  input.dispatchEvent(new Event('input'));
  assert.equal(shadow(el, '[part=payg-credits]').textContent, '= 1,250 credits');
  assert.equal(shadow(el, '[part=payg-buy]').textContent, 'Buy for $12.50');
  input.value = '0.50';
  input.dispatchEvent(new Event('input'));
  assert.equal(shadow(el, '[part=payg-buy]').disabled, true, 'below the catalog minimum');
  assert.equal(shadow(el, '[part=payg-credits]').textContent, 'From $1.00');
  shadow(el, '[data-package=popular]').click();
  await wait(20);
  const body = http.calls.find((c) => c.path === '/v1/me/checkout').body;
  assert.deepEqual([body.package, body.success_url, body.provider], ['popular', 'http://app.test/ok', 'stripe']);
  assert.equal(started[0].url, 'https://pay.test/s1');
});

test('<credit-purchase>: a 429 says when to try again and enables the buttons again', async (t) => {
  const { session } = backend();
  session.request = async () => {
    const { RequestError } = await import('../src/session.js');
    throw new RequestError(429, { error: 'rate_limited', message: 'slow down', retry_after: 42 });
  };
  session.catalog = async () => CATALOG;
  const el = document.createElement('credit-purchase');
  el.session = session;
  const failures = [];
  el.addEventListener('credit-checkout-error', (e) => failures.push(e.detail.code));
  document.body.append(el);
  t.after(() => el.remove());
  await wait(20);
  await el.buy('starter');
  assert.match(shadow(el, '[part=message]').textContent, /Try again in 42 seconds/);
  assert.deepEqual(failures, ['rate_limited']);
  assert.equal(shadow(el, '[data-package=starter]').disabled, false);
  assert.equal(el.hasAttribute('busy'), false);
});

// jsdom has no modal dialogs: the little of <dialog> the gate uses, as browsers behave.
function dialogsLikeABrowser() {
  const proto = window.HTMLDialogElement.prototype;
  proto.showModal ??= function showModal() {
    this.setAttribute('open', '');
  };
  proto.close ??= function close(value) {
    if (!this.hasAttribute('open')) return;
    if (value !== undefined) this.returnValue = value;
    this.removeAttribute('open');
    this.dispatchEvent(new Event('close'));
  };
  if (!('returnValue' in proto)) Object.defineProperty(proto, 'returnValue', { value: '', writable: true });
}
/** What Escape does to an open modal dialog: `cancel`, then a close with no value. */
const escape = (dialog) => {
  dialog.dispatchEvent(new Event('cancel'));
  dialog.close();
};

test('<credit-gate>: continue once credits arrive; Escape afterwards is a cancel; removal answers too', async (t) => {
  dialogsLikeABrowser();
  await import('../src/gate.js');
  const server = backend();
  const { ws } = server;
  const gate = await mounted(t, 'credit-gate', server, balanceFrame('u1', 1, 12));
  const dialog = shadow(gate, '[part=dialog]');
  const body = { error: 'insufficient_credits', required: 40, available: 12 };
  const first = gate.show(body, { action: 'Generate video' });
  assert.equal(gate.open, true);
  assert.equal(shadow(gate, '[part=continue]').hidden, true);
  ws.last().push(balanceFrame('u1', 2, 512, { kind: 'purchase', amount: 500, reason: null, transaction_id: 2, hold_id: null }));
  assert.equal(shadow(gate, '[part=title]').textContent, 'You have enough credits now');
  assert.equal(shadow(gate, '[part=continue]').hidden, false);
  assert.equal(shadow(gate, '[part=purchase]').hidden, true);
  shadow(gate, '[part=continue]').click();
  assert.equal(await first, 'continue');
  // The next time, Escape: the dialog's returnValue still says 'continue' from before.
  const second = gate.show(body, { action: 'Generate video' });
  escape(dialog);
  assert.equal(await second, 'cancel');
  // Taken out of the page while open: the caller hears 'cancel', not nothing.
  const third = gate.show({ error: 'limit_reached', limit: 5, used: 5, resets_at: '2026-12-01T00:00:00Z' }, { action: 'Generate video' });
  assert.match(shadow(gate, '[part=dialog] > [part=message]').textContent, /can run 5 times per period/);
  assert.equal(shadow(gate, '[part=purchase]').hidden, true, 'no packages for a plan limit');
  gate.remove();
  assert.equal(await third, 'cancel');
});

test('elements on the page default follow it when it is replaced (another user, sign-out)', async (t) => {
  await import('../src/elements.js');
  const { setDefaultSession } = await import('../src/session.js');
  const a = backend();
  const b = backend();
  setDefaultSession(a.session);
  const el = document.createElement('credit-balance');
  document.body.append(el);
  t.after(() => {
    el.remove();
    setDefaultSession(null);
  });
  await settle();
  a.ws.last().open();
  a.ws.last().push(balanceFrame('alice', 1, 70));
  await wait(10);
  assert.equal(shadow(el, '[part=balance]').textContent, '70');
  setDefaultSession(b.session);
  await settle();
  b.ws.last().open();
  b.ws.last().push(balanceFrame('bob', 1, 5));
  await wait(10);
  assert.equal(el.session, b.session);
  assert.equal(shadow(el, '[part=balance]').textContent, '5');
  await wait(1100);
  assert.deepEqual(a.ws.last().closedWith, { code: 1000, reason: 'client closed' }, "alice's socket is let go");
  setDefaultSession(null); // signed out
  assert.equal(shadow(el, '[part=balance]').textContent, '—', "nobody's balance, not bob's");
});

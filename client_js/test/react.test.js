// The React hooks and components with real React 19 (react + react-dom from npm), rendered
// into jsdom. The socket and the browser API are fakes (fakes.js); the same components run
// against the real server in Chromium in e2e/next.e2e.js (the Next.js example) and
// e2e/demo.e2e.js.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import './dom.js'; // first: React and the elements look for a browser's globals
import { balanceFrame, fakeFetch, fakeWebSocket, settle, tx } from './fakes.js';

globalThis.IS_REACT_ACT_ENVIRONMENT = true;

const { createElement: h, StrictMode, act, createRef } = await import('react');
const { createRoot } = await import('react-dom/client');
const { CreditProvider, useBalance, usePlan, useLedger, CreditUsage, CreditLedger, CreditGate, CreditPurchase } = await import('../src/react.js');
const { CreditSession } = await import('../src/session.js');
await import('../src/elements.js'); // the components load it themselves after the first render; here it is ready at once

const wait = (ms) => new Promise((r) => setTimeout(r, ms));

/** Render `element` into a fresh container; returns {container, unmount}. */
async function render(element) {
  const container = document.createElement('div');
  document.body.append(container);
  const root = createRoot(container);
  await act(async () => root.render(element));
  return {
    container,
    rerender: (el) => act(async () => root.render(el)),
    unmount: async () => {
      await act(async () => root.unmount());
      container.remove();
    },
  };
}

/** Run `fn` (socket pushes, timers) inside act so React applies the updates. */
const acting = (fn) => act(async () => {
  await fn();
  await settle();
});

const PLAN = { plan: 'pro', period_start: '2026-11-01T00:00:00Z', period_end: '2026-12-01T00:00:00Z', allowance: 300, allowance_remaining: 300, limits: { generate_video: { limit: 5, used: 1 } } };

function backend(overrides = {}) {
  const ws = fakeWebSocket();
  const state = { plan: { ...PLAN } };
  const http = fakeFetch({
    'GET /v1/me/plan': () => state.plan,
    'GET /v1/me/transactions': { transactions: [tx(10, 1, 1000, 1000, { kind: 'grant' })], next: null },
    'GET /v1/catalog': { packages: { starter: { credits: 100, price: { usd: 500 } } }, pay_as_you_go: null, prices: {}, plans: {}, alerts: {} },
    ...overrides,
  });
  const session = new CreditSession({ apiUrl: 'http://balance.test', token: 'tok', WebSocket: ws.FakeSocket, fetch: http.fetch });
  return { ws, http, session, state };
}

test('useBalance on its own (url + token): first account, state and last change', async () => {
  const ws = fakeWebSocket();
  let seen;
  function Badge(props) {
    seen = useBalance(props);
    return h('span', null, seen.available ?? '—');
  }
  const view = await render(h(Badge, { url: 'ws://balance.test/v1/ws', token: 'tok', WebSocket: ws.FakeSocket }));
  assert.equal(view.container.textContent, '—');
  assert.equal(seen.state, 'connecting');
  const change = { kind: 'usage', amount: -5, reason: 'image', transaction_id: 3, hold_id: null };
  await acting(async () => {
    await settle();
    ws.last().open();
    ws.last().push(balanceFrame('u1', 1, 1000));
    ws.last().push(balanceFrame('team', 1, 7));
    ws.last().push(balanceFrame('u1', 2, 995, change));
  });
  assert.equal(view.container.textContent, '995');
  assert.deepEqual(seen, { balance: 995, held: 0, available: 995, version: 2, low: false, state: 'open', lastChange: change, error: null });
  assert.deepEqual(ws.last().sent[0], { type: 'auth', token: 'tok' });
  await view.unmount();
  await wait(1100);
  assert.deepEqual(ws.last().closedWith, { code: 1000, reason: 'client closed' });
});

test('one provider, one socket: balance, plan and ledger hooks update live from frames', async () => {
  const { ws, http, session, state } = backend();
  const seen = {};
  function Dashboard() {
    seen.balance = useBalance();
    seen.plan = usePlan();
    seen.ledger = useLedger({ pageSize: 10 });
    return h('div', null,
      h('b', { id: 'available' }, String(seen.balance.available ?? '—')),
      h('i', { id: 'allowance' }, String(seen.plan.plan?.allowance_remaining ?? '…')),
      h('ol', null, seen.ledger.items.map((t) => h('li', { key: t.id }, `${t.amount} ${t.reason ?? t.kind}`))));
  }
  // StrictMode mounts, unmounts and mounts again: the socket must survive it.
  const view = await render(h(StrictMode, null, h(CreditProvider, { session }, h(Dashboard))));
  await acting(async () => {
    ws.last().open();
    ws.last().push(balanceFrame('u1', 1, 1000));
    await wait(20);
  });
  const text = (sel) => view.container.querySelector(sel).textContent;
  assert.equal(ws.sockets.length, 1, 'every hook shares the one socket');
  assert.equal(text('#available'), '1000');
  assert.equal(text('#allowance'), '300');
  assert.deepEqual([...view.container.querySelectorAll('li')].map((li) => li.textContent), ['1000 grant']);
  const ledgerReads = () => http.calls.filter((c) => c.path === '/v1/me/transactions').length;
  const readsBefore = ledgerReads();
  state.plan = { ...PLAN, allowance_remaining: 60 };
  await acting(async () => {
    ws.last().push(balanceFrame('u1', 2, 760, { kind: 'usage', amount: -240, reason: 'generate_video', transaction_id: 11, hold_id: null }));
    await wait(1200); // the plan is read again, at most once a second
  });
  assert.equal(text('#available'), '760');
  assert.equal(text('#allowance'), '60');
  assert.deepEqual([...view.container.querySelectorAll('li')].map((li) => li.textContent), ['-240 generate_video', '1000 grant']);
  assert.equal(ledgerReads(), readsBefore, 'the new row came from the frame, not a request');
  assert.equal(seen.balance.lastChange.transaction_id, 11);
  await view.unmount();
});

test('the components hand the provider\'s session to the elements, map props to attributes and events', async () => {
  const { ws, session, state } = backend();
  state.plan = { ...PLAN, allowance_remaining: 60 }; // 240 of 300 used: 80 %
  const gate = createRef();
  const rows = [];
  const view = await render(
    h(CreditProvider, { session },
      h(CreditUsage, { className: 'usage' }),
      h(CreditLedger, { pageSize: 5, onRow: (e) => rows.push(e.detail.id) }),
      h(CreditPurchase, { featured: 'starter', payAsYouGo: 'off', successUrl: 'http://app.test/ok' }),
      h(CreditGate, { ref: gate })),
  );
  await acting(async () => {
    ws.last().open();
    ws.last().push(balanceFrame('u1', 1, 1000));
    await wait(30);
  });
  const usage = view.container.querySelector('credit-usage');
  const ledger = view.container.querySelector('credit-ledger');
  const purchase = view.container.querySelector('credit-purchase');
  assert.equal(usage.session, session);
  assert.equal(usage.className, 'usage');
  assert.equal(usage.getAttribute('level'), 'warn', 'the allowance bar is amber at 80 %');
  assert.match(usage.shadowRoot.querySelector('[part=allowance-text]').textContent, /60 of 300 left/);
  assert.equal(usage.shadowRoot.querySelector('[part=bar]').getAttribute('aria-valuenow'), '80');
  assert.equal(ledger.getAttribute('page-size'), '5');
  assert.deepEqual([purchase.getAttribute('featured'), purchase.getAttribute('pay-as-you-go'), purchase.getAttribute('success-url')], ['starter', 'off', 'http://app.test/ok']);
  assert.match(purchase.shadowRoot.querySelector('[part=package].featured').textContent, /Most popular100 credits\$5\.00/);
  assert.equal(gate.current.tagName, 'CREDIT-GATE');
  assert.equal(typeof gate.current.show, 'function');
  await acting(async () => ws.last().push(balanceFrame('u1', 2, 995, { kind: 'usage', amount: -5, reason: 'x', transaction_id: 11, hold_id: null })));
  assert.deepEqual(rows, [11], 'onRow hears the element\'s credit-ledger-row');
  assert.equal(ledger.shadowRoot.querySelectorAll('[part=row]').length, 2);
  assert.equal(ws.sockets.length, 1);
  await view.unmount();
});

test('without a session the provider renders its children and connects nothing', async () => {
  const ws = fakeWebSocket();
  let seen;
  function Badge() {
    seen = useBalance();
    return null;
  }
  const view = await render(h(CreditProvider, { token: null, WebSocket: ws.FakeSocket }, h(Badge)));
  await acting(() => wait(10));
  assert.equal(ws.sockets.length, 0);
  assert.equal(seen.state, 'connecting');
  // A token arrives (the user signed in): now it connects, to this page's origin by default.
  const http = fakeFetch({});
  globalThis.fetch = http.fetch;
  await view.rerender(h(CreditProvider, { token: async () => 'late', WebSocket: ws.FakeSocket }, h(Badge)));
  await acting(() => wait(10));
  assert.equal(ws.sockets.length, 1);
  assert.equal(ws.last().url, 'ws://app.test/v1/ws');
  await view.unmount();
});

test('StrictMode with a provider-made session: one socket, one token call', async () => {
  const ws = fakeWebSocket();
  globalThis.fetch = fakeFetch({ 'GET /v1/me/plan': PLAN }).fetch;
  let minted = 0;
  const token = async () => `t${++minted}`;
  function Badge() {
    useBalance();
    return null;
  }
  const view = await render(h(StrictMode, null, h(CreditProvider, { apiUrl: 'http://balance.test', token, WebSocket: ws.FakeSocket }, h(Badge))));
  await acting(() => wait(20));
  assert.equal(ws.sockets.length, 1, 'the remount reuses the session');
  assert.equal(minted, 1);
  await view.unmount();
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { register } from 'node:module';
import { balanceFrame, fakeWebSocket, settle } from './fakes.js';

register('./react-loader.js', import.meta.url);
const { renderHook } = await import('./fake-react.js');
const { useBalance } = await import('../src/react.js');

const URL_ = 'ws://balance.test/v1/ws';

test('reports the first account the server sends, with state and last change', async () => {
  const ws = fakeWebSocket();
  const view = renderHook(useBalance, { url: URL_, token: 'tok', WebSocket: ws.FakeSocket });
  assert.equal(view.result.state, 'connecting');
  assert.equal(view.result.available, null);
  await settle();
  ws.last().open();
  ws.last().push(balanceFrame('u1', 1, 1000));
  ws.last().push(balanceFrame('team', 1, 7));
  const change = { kind: 'usage', amount: -5, reason: 'image', transaction_id: 3, hold_id: null };
  ws.last().push(balanceFrame('u1', 2, 995, change));
  view.flush();
  assert.deepEqual(view.result, { balance: 995, held: 0, available: 995, version: 2, state: 'open', lastChange: change, error: null });
  view.unmount();
  assert.deepEqual(ws.last().closedWith, { code: 1000, reason: 'client closed' });
});

test('`account` picks which account to report', async () => {
  const ws = fakeWebSocket();
  const view = renderHook(useBalance, { url: URL_, token: 'tok', account: 'team', WebSocket: ws.FakeSocket });
  await settle();
  ws.last().open();
  ws.last().push(balanceFrame('u1', 1, 1000));
  ws.last().push(balanceFrame('team', 4, 7));
  view.flush();
  assert.equal(view.result.balance, 7);
  view.unmount();
});

test('a new token function each render neither reconnects nor goes stale', async () => {
  const ws = fakeWebSocket();
  const view = renderHook(useBalance, { url: URL_, token: async () => 'tok-1', WebSocket: ws.FakeSocket });
  await settle();
  ws.last().open();
  view.rerender({ url: URL_, token: async () => 'tok-2', WebSocket: ws.FakeSocket });
  assert.equal(ws.sockets.length, 1);
  ws.last().drop(1006); // the reconnect asks the latest function
  await new Promise((r) => setTimeout(r, 1100));
  ws.last().open();
  assert.deepEqual(ws.last().sent[0], { type: 'auth', token: 'tok-2' });
  view.unmount();
});

test('waits for a token, and a new url means a new connection', async () => {
  const ws = fakeWebSocket();
  const view = renderHook(useBalance, { url: URL_, token: null, WebSocket: ws.FakeSocket });
  await settle();
  assert.equal(ws.sockets.length, 0);
  view.rerender({ url: URL_, token: 'tok', WebSocket: ws.FakeSocket });
  await settle();
  assert.equal(ws.sockets.length, 1);
  view.rerender({ url: 'ws://other.test/v1/ws', token: 'tok', WebSocket: ws.FakeSocket });
  await settle();
  assert.equal(ws.sockets.length, 2);
  assert.equal(ws.sockets[1].url, 'ws://other.test/v1/ws');
  assert.deepEqual(ws.sockets[0].closedWith, { code: 1000, reason: 'client closed' });
  view.unmount();
});

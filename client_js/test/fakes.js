// Test doubles: a WebSocket class the tests drive by hand, a window/document pair
// that can fire `online` and `visibilitychange`, and unsigned JWTs.

export function fakeWebSocket() {
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(JSON.parse(data));
    }
    close(code, reason) {
      this.readyState = 3;
      this.closedWith = { code, reason };
    }
    // Driven by the test, playing the server:
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    push(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    drop(code = 1006, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { FakeSocket, sockets, last: () => sockets.at(-1) };
}

export function fakeBrowser() {
  const target = () => {
    const fns = new Map();
    return {
      addEventListener: (name, fn) => fns.set(name, [...(fns.get(name) ?? []), fn]),
      removeEventListener: (name, fn) => fns.set(name, (fns.get(name) ?? []).filter((f) => f !== fn)),
      fire: (name) => (fns.get(name) ?? []).forEach((fn) => fn({ type: name })),
      count: (name) => (fns.get(name) ?? []).length,
    };
  };
  const window = target();
  const document = Object.assign(target(), { visibilityState: 'visible' });
  return { window, document };
}

/** An unsigned JWT with the given claims; the client never verifies, only reads `exp`. */
export function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.c2ln`;
}

/** Let pending promise callbacks (the token fetch) run. */
export const settle = () => new Promise((resolve) => setImmediate(resolve));

export function balanceFrame(account_id, version, balance, change = null) {
  return { type: 'balance', account_id, balance, held: 0, available: balance, version, change };
}

/**
 * A fetch that plays balance-server's browser API: `routes` maps "GET /v1/me/plan" (the path
 * without the query) to a body, a [status, body] pair, or a function of the request
 * returning either. Every call is recorded in `calls` ({method, path, query, auth, body}).
 */
export function fakeFetch(routes) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const u = new URL(url);
    const call = {
      method: init.method ?? 'GET',
      path: u.pathname,
      query: Object.fromEntries(u.searchParams),
      auth: init.headers?.authorization ?? null,
      body: init.body ? JSON.parse(init.body) : null,
    };
    calls.push(call);
    let answer = routes[`${call.method} ${call.path}`];
    if (typeof answer === 'function') answer = await answer(call);
    if (answer === undefined) answer = [404, { error: 'not_found', message: 'no such route' }];
    const [status, body, headers = {}] = Array.isArray(answer) ? answer : [200, answer];
    return {
      ok: status >= 200 && status < 300,
      status,
      headers: { get: (name) => headers[name.toLowerCase()] ?? null },
      json: async () => structuredClone(body),
    };
  };
  return { fetch, calls };
}

/** A transaction as the server lists it. */
export function tx(id, version, amount, balance_after, extra = {}) {
  return { id, account_id: 'u1', kind: amount < 0 ? 'usage' : 'purchase', amount, balance_after, version, reason: null, metadata: null, hold_id: null, created_at: new Date().toISOString(), ...extra };
}

export const wait = (ms) => new Promise((r) => setTimeout(r, ms));

/** A CreditSession on a fake socket and a fake browser API: {s, ws, http}. */
export async function fakeSession(routes, { token = 'tok' } = {}) {
  const { CreditSession } = await import('../src/session.js');
  const ws = fakeWebSocket();
  const http = fakeFetch(routes);
  const s = new CreditSession({ apiUrl: 'http://balance.test', token, WebSocket: ws.FakeSocket, fetch: http.fetch });
  return { s, ws, http };
}

/** Let the session dial, open its socket as the server would, and push `frame`. */
export async function serverOpens(ws, frame) {
  await settle();
  ws.last().open();
  if (frame) ws.last().push(frame);
}

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

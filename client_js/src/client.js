// BalanceClient: one WebSocket to balance-server, kept alive, with the last known
// state of every account the token can see. Protocol: the wire contract (API.md),
// section "WebSocket GET /v1/ws".

import { Backoff } from './backoff.js';
import { closeCode } from './codes.js';
import { tokenExpiry } from './jwt.js';

// States, reported by the `state` event:
//   connecting   - dialling for the first time; nothing known from the server yet
//   open         - socket open and authenticated; pushes flow
//   reconnecting - the connection was lost; waiting out the backoff or dialling again
//   closed       - close() was called, or the server refused us for good (terminal code)

const SYNC_EVERY_MS = 30_000; // a lost push heals within this, even if nothing else happens
const STABLE_AFTER_MS = 10_000; // a connection open this long resets the backoff
const REFRESH_RETRY_MS = 5_000;
const OPEN = 1; // WebSocket.OPEN, read as a number so any WebSocket class will do

export class BalanceClient {
  #url;
  #token;
  #WebSocket;
  #window;
  #document;
  #backoff;
  #listeners = new Map();
  #accounts = new Map();
  #state = 'closed';
  #ws = null;
  #gen = 0; // bumped per dial; callbacks from an older dial are ignored
  #everOpened = false;
  #openedAt = 0;
  #retryTimer = null;
  #syncTimer = null;
  #refreshTimer = null;

  constructor({ url, token, WebSocket = globalThis.WebSocket, accounts = [], backoff, window = globalThis.window, document = globalThis.document } = {}) {
    if (!url) throw new TypeError('BalanceClient: `url` is required (e.g. "wss://credits.example.com/v1/ws")');
    if (!token) throw new TypeError('BalanceClient: `token` is required (a string or an async function returning one)');
    if (!WebSocket) throw new TypeError('BalanceClient: no WebSocket class here; pass one as `WebSocket` (in Node < 22, the `ws` package)');
    this.#url = url;
    this.#token = token;
    this.#WebSocket = WebSocket;
    this.#window = window;
    this.#document = document;
    this.#backoff = new Backoff(backoff);
    for (const a of accounts) this.#accounts.set(a.account_id, pickState(a));
  }

  /** The connection state: 'connecting' | 'open' | 'reconnecting' | 'closed'. */
  get state() {
    return this.#state;
  }

  /** The last known state of an account, or undefined before the server has sent it. */
  balance(accountId) {
    return this.#accounts.get(accountId);
  }

  /** Listen to 'balance' | 'change' | 'state' | 'error'; returns a function that unsubscribes. */
  on(name, fn) {
    if (!this.#listeners.has(name)) this.#listeners.set(name, new Set());
    const set = this.#listeners.get(name);
    set.add(fn);
    return () => set.delete(fn);
  }

  /** Start (or restart after a terminal close); returns this. */
  connect() {
    if (this.#state !== 'closed') return this;
    this.#window?.addEventListener?.('online', this.#onOnline);
    this.#document?.addEventListener?.('visibilitychange', this.#onVisibility);
    this.#dial();
    return this;
  }

  /** Stop for good: no socket, no timers, no listeners on window or document. */
  close() {
    this.#gen++;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#dropSocket(1000, 'client closed');
    this.#stop();
  }

  #stop() {
    this.#window?.removeEventListener?.('online', this.#onOnline);
    this.#document?.removeEventListener?.('visibilitychange', this.#onVisibility);
    this.#setState('closed');
  }

  #dial() {
    const gen = ++this.#gen;
    this.#retryTimer = null;
    this.#setState(this.#everOpened ? 'reconnecting' : 'connecting');
    this.#fetchToken().then(
      (token) => {
        if (gen === this.#gen) this.#openSocket(token, gen);
      },
      (err) => {
        if (gen !== this.#gen) return;
        this.#emit('error', { code: 'token_failed', message: String(err?.message ?? err), error: err });
        this.#retryLater();
      },
    );
  }

  async #fetchToken() {
    const token = typeof this.#token === 'function' ? await this.#token() : this.#token;
    if (typeof token !== 'string' || !token) throw new Error('the token function returned no token');
    return token;
  }

  #openSocket(token, gen) {
    const ws = new this.#WebSocket(this.#url);
    this.#ws = ws;
    ws.onopen = () => {
      if (gen !== this.#gen) return;
      this.#everOpened = true;
      this.#openedAt = Date.now();
      this.#send({ type: 'auth', token });
      this.#sync();
      this.#syncTimer = setInterval(() => this.#sync(), SYNC_EVERY_MS);
      this.#scheduleRefresh(token);
      this.#setState('open');
    };
    ws.onmessage = (event) => {
      if (gen === this.#gen) this.#receive(event.data);
    };
    ws.onclose = (event) => {
      if (gen === this.#gen) this.#onClose(event.code, event.reason);
    };
    ws.onerror = () => {}; // a close event always follows and carries the code
  }

  #onClose(code, reason) {
    const stable = this.#openedAt > 0 && Date.now() - this.#openedAt >= STABLE_AFTER_MS;
    this.#dropSocket();
    const info = closeCode(code);
    if (!info.reconnect) {
      if (code !== 1000) this.#emit('error', { code: info.name, message: reason || info.meaning, closeCode: code, fatal: true });
      this.#stop();
      return;
    }
    if (stable) this.#backoff.reset();
    this.#retryLater();
  }

  #retryLater() {
    this.#setState(this.#everOpened ? 'reconnecting' : 'connecting');
    this.#retryTimer = setTimeout(() => this.#dial(), this.#backoff.next());
  }

  /** Forget the current socket (closing it if code is given) and its timers. */
  #dropSocket(code, reason) {
    const ws = this.#ws;
    this.#ws = null;
    this.#openedAt = 0;
    clearInterval(this.#syncTimer);
    clearTimeout(this.#refreshTimer);
    this.#syncTimer = this.#refreshTimer = null;
    if (ws && code) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(code, reason);
      } catch {
        // already closing; nothing to do
      }
    }
  }

  #receive(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return; // not ours to fix; the next sync restores any state it carried
    }
    if (msg.type === 'balance') this.#applyBalance(msg);
    else if (msg.type === 'error') this.#emit('error', { code: msg.code, message: msg.message ?? '' });
  }

  #applyBalance(frame) {
    const known = this.#accounts.get(frame.account_id);
    // Versions only move forward: a frame that crossed a newer one in flight is stale.
    if (known && frame.version <= known.version) return;
    const state = pickState(frame);
    this.#accounts.set(frame.account_id, state);
    const update = Object.freeze({ ...state, change: frame.change ?? null });
    this.#emit('balance', update);
    if (update.change) this.#emit('change', update);
  }

  #sync() {
    if (this.#accounts.size === 0) return;
    const versions = {};
    for (const [id, s] of this.#accounts) versions[id] = s.version;
    this.#send({ type: 'sync', versions });
  }

  #send(msg) {
    if (this.#ws?.readyState === OPEN) this.#ws.send(JSON.stringify(msg));
  }

  // Renew the token on the open socket before it expires, or the server closes it with 4401.
  #scheduleRefresh(token) {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    if (typeof this.#token !== 'function') return; // a fixed string cannot be renewed
    const expiry = tokenExpiry(token);
    const left = expiry === null ? 0 : expiry - Date.now();
    if (left <= 0) return;
    // Keep a margin of a tenth of the lifetime left, at most a minute:
    // a 1 h token is renewed at 59 min, a 60 s token at 54 s.
    const delay = left - Math.min(60_000, left / 10);
    this.#refreshTimer = setTimeout(() => this.#refresh(expiry), delay);
  }

  async #refresh(expiry) {
    const gen = this.#gen;
    let token;
    try {
      token = await this.#fetchToken();
    } catch (err) {
      if (gen !== this.#gen) return;
      this.#emit('error', { code: 'token_failed', message: String(err?.message ?? err), error: err });
      if (Date.now() + REFRESH_RETRY_MS < expiry) this.#refreshTimer = setTimeout(() => this.#refresh(expiry), REFRESH_RETRY_MS);
      return;
    }
    if (gen !== this.#gen || !this.#ws) return; // a newer dial fetched its own token
    this.#send({ type: 'auth', token });
    // The same expiry again would only make the timer spin down to zero.
    if ((tokenExpiry(token) ?? 0) > expiry) this.#scheduleRefresh(token);
  }

  // After `offline` -> `online` the old socket may be half-open with nobody noticing,
  // so dial afresh rather than trust it.
  #onOnline = () => {
    if (this.#state === 'closed') return;
    this.#dropSocket(1000, 'network changed');
    clearTimeout(this.#retryTimer);
    this.#dial();
  };

  // Hidden tabs have their timers throttled, so a backoff may have stretched to minutes.
  #onVisibility = () => {
    if (this.#document.visibilityState !== 'visible' || this.#state === 'closed') return;
    if (this.#state === 'open') this.#sync();
    else if (this.#retryTimer) {
      clearTimeout(this.#retryTimer);
      this.#dial();
    }
  };

  #setState(state) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit('state', state);
  }

  #emit(name, value) {
    for (const fn of [...(this.#listeners.get(name) ?? [])]) {
      try {
        fn(value);
      } catch (err) {
        // One broken listener must not stop the others or the client; report it like EventTarget does.
        reportError(err);
      }
    }
  }
}

// Browsers have reportError (console + window.onerror); Node 20 does not, so rethrow out of band.
function reportError(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else queueMicrotask(() => {
    throw err;
  });
}

function pickState({ account_id, balance, held, available, version, low }) {
  return Object.freeze({ account_id, balance, held, available, version, low: low === true });
}

// CreditSession: one signed-in user's link to balance-server, shared by every element and
// hook on the page: one BalanceClient (one WebSocket) for the pushed balance, and the
// browser API (/v1/me*, /v1/catalog) with the same user token.
//
//   const session = new CreditSession({ token: () => fetchTokenFromMyBackend() });
//   document.querySelector('credit-usage').session = session;
//
// The socket is opened while at least one element or hook uses the session (retain) and
// closed a moment after the last lets go, so moving an element in the DOM or React's
// strict-mode remount does not drop the connection.

import { BalanceClient } from './client.js';
import { tokenExpiry } from './jwt.js';

const TOKEN_MARGIN_MS = 15_000; // a cached token this close to `exp` is renewed before use
const LINGER_MS = 1_000; // how long an unused session keeps its socket

/** ws(s)://host/v1/ws for a balance-server at `base` (an http(s) URL, or a page location). */
export function defaultSocketUrl(base) {
  const url = new URL('/v1/ws', typeof base === 'string' ? base : base.href ?? `${base.protocol}//${base.host}`);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

/** http(s)://host of a ws(s):// URL. */
function httpBase(wsUrl) {
  const url = new URL(wsUrl, globalThis.location?.href);
  return `${url.protocol === 'wss:' ? 'https:' : 'http:'}//${url.host}`;
}

/** A token function that POSTs to the app's own endpoint, which mints tokens with its service key. */
export function tokenFromUrl(tokenUrl, fetchImpl = globalThis.fetch) {
  return async () => {
    const res = await fetchImpl(tokenUrl, { method: 'POST', credentials: 'include', headers: { accept: 'application/json' } });
    if (!res.ok) throw new Error(`${tokenUrl} answered ${res.status}`);
    const { token } = await res.json();
    return token;
  };
}

/** A browser API call that did not succeed: the server's error body, as the contract gives it. */
export class RequestError extends Error {
  constructor(status, body = {}, retryAfter = null) {
    super(body.message || `balance-server answered ${status}`);
    this.name = 'RequestError';
    this.status = status;
    /** The contract's error code ('rate_limited', 'provider_unavailable', ...), or 'network'. */
    this.code = body.error ?? (status === 0 ? 'network' : 'http_error');
    this.body = body;
    /** Seconds to wait, for 429. */
    this.retryAfter = body.retry_after ?? retryAfter;
  }
}

export class CreditSession {
  #apiUrl;
  #token;
  #fetch;
  #cached = null;
  #minting = null;
  #catalog = null;
  #users = 0;
  #lingerTimer = null;
  #account = null;
  /** The BalanceClient behind the session; connected while the session is retained. */
  client;

  /**
   * apiUrl: where balance-server answers HTTP (default: this page's origin).
   * wsUrl: its WebSocket (default: derived from apiUrl).
   * token: a user token, or a function returning one (called again when it expires or is refused).
   */
  constructor({ apiUrl, wsUrl, token, WebSocket, fetch: fetchImpl, accounts, backoff, window, document } = {}) {
    if (!token) throw new TypeError('CreditSession: `token` is required (a string or an async function returning one)');
    // Without apiUrl: the socket's host when wsUrl names one, else this page's origin.
    const base = apiUrl || (wsUrl ? httpBase(wsUrl) : globalThis.location?.origin);
    if (!base || base === 'null') throw new TypeError('CreditSession: `apiUrl` is required outside a browser page');
    this.#apiUrl = base.replace(/\/+$/, '');
    this.#token = token;
    this.#fetch = fetchImpl ?? ((...args) => globalThis.fetch(...args));
    this.client = new BalanceClient({
      url: wsUrl || defaultSocketUrl(this.#apiUrl),
      // Every (re)connect gets a fresh token: the one cached may be what the server just refused.
      token: () => this.#mint(),
      WebSocket,
      accounts,
      backoff,
      window,
      document,
    });
    this.client.on('balance', (u) => {
      this.#account ??= u.account_id;
    });
  }

  /** The account the token is for: the first one the server pushed (null before). */
  get account() {
    return this.#account;
  }

  /** The account's last pushed state (undefined before the server sent it). */
  balance(accountId = this.#account) {
    return accountId ? this.client.balance(accountId) : undefined;
  }

  /** Start using the session (connects the socket); returns the function that stops using it. */
  retain() {
    this.#users++;
    clearTimeout(this.#lingerTimer);
    this.#lingerTimer = null;
    if (this.client.state === 'closed') this.client.connect();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.#users > 0) return;
      this.#lingerTimer = setTimeout(() => {
        if (this.#users === 0) this.client.close();
      }, LINGER_MS);
    };
  }

  /** A user token for the browser API: the cached one while it is not about to expire. */
  async token() {
    if (typeof this.#token === 'string') return this.#token;
    const exp = this.#cached && tokenExpiry(this.#cached);
    if (this.#cached && (exp === null || exp - Date.now() > TOKEN_MARGIN_MS)) return this.#cached;
    return this.#mint();
  }

  #mint() {
    if (typeof this.#token === 'string') return Promise.resolve(this.#token);
    // Elements starting together share one call to the app's token endpoint.
    this.#minting ??= (async () => {
      // A microtask first: a token function that throws at once must still reach `finally`
      // after #minting is set, or the failed attempt would stay cached for good.
      await null;
      try {
        const token = await this.#token();
        if (typeof token !== 'string' || !token) throw new Error('the token function returned no token');
        this.#cached = token;
        return token;
      } finally {
        this.#minting = null;
      }
    })();
    return this.#minting;
  }

  /** One browser API call; resolves with the JSON body, rejects with a RequestError. */
  async request(method, path, body) {
    for (let attempt = 0; ; attempt++) {
      const token = attempt === 0 ? await this.token() : await this.#mint();
      let res;
      try {
        res = await this.#fetch(`${this.#apiUrl}${path}`, {
          method,
          headers: { authorization: `Bearer ${token}`, accept: 'application/json', ...(body ? { 'content-type': 'application/json' } : {}) },
          body: body ? JSON.stringify(body) : undefined,
        });
      } catch (err) {
        throw new RequestError(0, { message: `balance-server could not be reached (${err?.message ?? err})` });
      }
      // 401: the token expired, or the server now signs with another secret: mint once more.
      // Nothing was written, so repeating even a POST is safe.
      if (res.status === 401 && attempt === 0 && typeof this.#token === 'function') continue;
      const data = await res.json().catch(() => ({}));
      if (!res.ok) throw new RequestError(res.status, data, Number(res.headers.get('retry-after')) || null);
      return data;
    }
  }

  /** GET /v1/catalog, read once per session (it changes only when the server restarts). */
  catalog() {
    this.#catalog ??= this.request('GET', '/v1/catalog').catch((err) => {
      this.#catalog = null; // a failed read is tried again by the next caller
      throw err;
    });
    return this.#catalog;
  }

  /** GET /v1/me/plan: {plan, period_start, period_end, allowance, allowance_remaining, limits}. */
  plan() {
    return this.request('GET', '/v1/me/plan');
  }

  /** GET /v1/me/transactions, newest first: {transactions, next}. */
  transactions({ limit = 20, before, kind } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before != null) q.set('before', String(before));
    if (kind) q.set('kind', kind);
    return this.request('GET', `/v1/me/transactions?${q}`);
  }

  /**
   * POST /v1/me/checkout for a package or a pay-as-you-go amount; resolves with
   * {url, provider, session_id, credits, amount, currency}. The server prices it from the
   * catalog: nothing here sets what the credits cost.
   */
  checkout({ provider = 'stripe', package: pack, plan, amount, currency, successUrl, cancelUrl, customerEmail } = {}) {
    const here = globalThis.location?.href;
    const body = {
      provider,
      success_url: successUrl ?? here,
      cancel_url: cancelUrl ?? here,
      idempotency_key: `checkout-${randomId()}`,
      // The currency goes with a package too: the one its price was shown in is the one charged.
      // A plan's checkout starts its subscription: the provider's price, no amount of ours.
      ...(plan ? { plan } : pack ? { package: pack } : { amount }),
      ...(currency && !plan ? { currency } : {}),
      ...(customerEmail ? { customer_email: customerEmail } : {}),
    };
    return this.request('POST', '/v1/me/checkout', body);
  }
}

function randomId() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

// ---------------------------------------------------------------- sharing

const shared = new Map();
let pageDefault = null;
const waiting = new Set();

/** The page's session for these attributes: elements with the same token-url share one socket. */
export function sharedSession({ apiUrl = '', wsUrl = '', tokenUrl }) {
  const key = JSON.stringify([apiUrl, wsUrl, tokenUrl]);
  if (!shared.has(key)) shared.set(key, new CreditSession({ apiUrl: apiUrl || undefined, wsUrl: wsUrl || undefined, token: tokenFromUrl(tokenUrl) }));
  return shared.get(key);
}

/** Make `session` the one every element without its own session or token-url uses. */
export function setDefaultSession(session) {
  if (session === pageDefault) return;
  pageDefault = session;
  for (const fn of [...waiting]) fn();
}

/** The page's default session (null until setDefaultSession). */
export function defaultSession() {
  return pageDefault;
}

/** Call `fn` whenever the default session changes; returns the function that stops it. */
export function onDefaultSession(fn) {
  waiting.add(fn);
  return () => waiting.delete(fn);
}

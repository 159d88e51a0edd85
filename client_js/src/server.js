// The server SDK: balance-server's backend API (service key) for the app's own backend,
// on nothing but `fetch` and `AbortController` (Node 18+, Next.js route handlers, edge).
// The design: /sdk-design.md (issue 27), the twin of the Python `balance_client`.
//
// Safe by construction: a call that moves credits or creates something needs the caller's
// own key, sent as `idempotency_key`, and is retried with the same bytes on a network error,
// a timeout or a 503, so a retry can never charge twice. Nothing here invents a key.

import { Webhook, WebhookVerificationError } from 'standardwebhooks';
import { backoffDelay } from './backoff.js';

export { WebhookVerificationError };

// ---------------------------------------------------------------- the operations

/**
 * Every backend operation of /openapi.json, by operationId: how the SDK calls it and the
 * body fields it can send. `keyed`: needs the caller's idempotency key. `replays`: its
 * result says whether it was a replay.
 */
export const OPERATIONS = Object.freeze({
  get_account: op('GET', '/v1/accounts/{account_id}', 'getAccount'),
  open_account: op('POST', '/v1/accounts/{account_id}', 'openAccount'),
  debit: op('POST', '/v1/accounts/{account_id}/debit', 'debit', ['amount', 'reason', 'idempotency_key', 'metadata'], { keyed: true }),
  credit: op('POST', '/v1/accounts/{account_id}/credit', 'credit', ['amount', 'kind', 'idempotency_key', 'reason', 'expires_at', 'priority', 'metadata'], { keyed: true }),
  adjust: op('POST', '/v1/accounts/{account_id}/adjust', 'adjust', ['amount', 'reason', 'actor', 'idempotency_key'], { keyed: true }),
  charge: op('POST', '/v1/accounts/{account_id}/charge', 'charge', ['operation', 'quantity', 'idempotency_key', 'metadata'], { keyed: true }),
  place_hold: op('POST', '/v1/accounts/{account_id}/holds', 'hold', ['amount', 'operation', 'quantity', 'reason', 'idempotency_key', 'ttl_seconds', 'metadata'], { keyed: true }),
  capture_hold: op('POST', '/v1/holds/{hold_id}/capture', 'capture', ['amount', 'metadata'], { replays: true }),
  release_hold: op('POST', '/v1/holds/{hold_id}/release', 'release', [], { replays: true }),
  list_transactions: op('GET', '/v1/accounts/{account_id}/transactions', 'transactionsPage', [], { query: ['limit', 'before', 'kind'] }),
  usage: op('GET', '/v1/accounts/{account_id}/usage', 'usage', [], { query: ['group_by', 'since', 'until'] }),
  list_grants: op('GET', '/v1/accounts/{account_id}/grants', 'grants'),
  list_holds: op('GET', '/v1/accounts/{account_id}/holds', 'holds'),
  set_plan: op('PUT', '/v1/accounts/{account_id}/plan', 'setPlan', ['plan', 'idempotency_key', 'anchor'], { keyed: true }),
  get_plan: op('GET', '/v1/accounts/{account_id}/plan', 'getPlan'),
  check: op('POST', '/v1/accounts/{account_id}/check', 'check', ['operation', 'quantity', 'amount']),
  set_alerts: op('PUT', '/v1/accounts/{account_id}/alerts', 'setAlerts', ['low_balance', 'idempotency_key']),
  set_limits: op('PUT', '/v1/accounts/{account_id}/limits', 'setLimits', ['spend', 'idempotency_key']),
  get_limits: op('GET', '/v1/accounts/{account_id}/limits', 'limits'),
  get_settings: op('GET', '/v1/accounts/{account_id}/settings', 'settings'),
  set_auto_top_up: op('PUT', '/v1/accounts/{account_id}/auto-top-up', 'setAutoTopUp', ['package', 'threshold', 'stripe_customer', 'stripe_payment_method', 'target', 'monthly_limit', 'idempotency_key']),
  list_events: op('GET', '/v1/events', 'eventsPage', [], { query: ['status', 'limit', 'before', 'account_id'] }),
  retry_event: op('POST', '/v1/events/{event_id}/retry', 'retryEvent'),
  search_accounts: op('GET', '/v1/accounts', 'searchAccounts', [], { query: ['prefix', 'limit', 'cursor'] }),
  list_payments: op('GET', '/v1/payments', 'paymentsPage', [], { query: ['status', 'account_id', 'limit', 'cursor'] }),
  credit_review: op('POST', '/v1/payments/reviews/{review_id}/credit', 'creditReview', ['note', 'credits', 'account_id'], { replays: true }),
  dismiss_review: op('POST', '/v1/payments/reviews/{review_id}/dismiss', 'dismissReview', ['note'], { replays: true }),
  audit_log: op('GET', '/v1/audit', 'auditPage', [], { query: ['account_id', 'limit', 'before'] }),
  checkout: op('POST', '/v1/accounts/{account_id}/checkout', 'checkout', ['provider', 'success_url', 'idempotency_key', 'package', 'plan', 'amount', 'currency', 'cancel_url', 'customer_email'], { keyed: true }),
  mint_token: op('POST', '/v1/tokens', 'createToken', ['account_id', 'ttl_seconds']),
  prices: op('GET', '/v1/prices', 'prices'),
  catalog: op('GET', '/v1/catalog', 'catalog'),
});

/** The operationIds deliberately not covered, with the reason. */
export const LEFT_OUT = Object.freeze({
  me: 'a browser route (user token): the browser client has it',
  my_transactions: 'a browser route (user token): the browser client has it',
  my_plan: 'a browser route (user token): the browser client has it',
  my_checkout: 'a browser route (user token): the browser client has it',
  stripe_webhook: 'called by Stripe, signed with its secret; never by the app',
  dodo_webhook: 'called by Dodo Payments, signed with its secret; never by the app',
});

function op(method, path, call, fields = [], { keyed = false, replays = keyed, query = [] } = {}) {
  return Object.freeze({ method, path, call, fields: Object.freeze(fields), query: Object.freeze(query), keyed, replays });
}

// ---------------------------------------------------------------- errors

/** Any error answer of balance-server (or no answer at all: status 503, see Unavailable). */
export class BalanceError extends Error {
  constructor(status, code, message, body = null, requestId = null, options) {
    super(message, options);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.body = body;
    this.requestId = requestId;
  }
}

export class InsufficientCredits extends BalanceError {
  constructor(...args) {
    super(...args);
    this.required = this.body?.required;
    this.available = this.body?.available;
  }
}

export class LimitReached extends BalanceError {
  constructor(...args) {
    super(...args);
    this.limit = this.body?.limit;
    this.used = this.body?.used;
    this.resetsAt = this.body?.resets_at;
    // A plan's limit names its operation; the account's spend cap names its period instead.
    this.operation = this.body?.operation;
    this.period = this.body?.period;
  }
}

export class IdempotencyConflict extends BalanceError {}

export class HoldNotActive extends BalanceError {
  constructor(...args) {
    super(...args);
    // The server names it `status` in the body; `hold_status` is accepted too.
    this.holdStatus = this.body?.hold_status ?? this.body?.status;
  }
}

export class NotFound extends BalanceError {}

export class InvalidRequest extends BalanceError {
  constructor(...args) {
    super(...args);
    this.detail = this.body?.detail;
  }
}

export class Unauthorized extends BalanceError {}

export class Forbidden extends BalanceError {
  constructor(...args) {
    super(...args);
    this.scope = this.body?.scope;
  }
}

export class RateLimited extends BalanceError {
  constructor(...args) {
    super(...args);
    this.retryAfter = this.body?.retry_after;
  }
}

export class ProviderUnavailable extends BalanceError {}

/** Nothing was written: every attempt failed before reaching the database. Safe to try later. */
export class Unavailable extends BalanceError {}

/** An attempt may have been committed: repeat the call with the same `key` to learn which. */
export class OutcomeUnknown extends BalanceError {
  constructor(status, code, message, body, requestId, options) {
    super(status, code, message, body, requestId, options);
    this.key = options?.key ?? null;
  }
}

const CLASSES = {
  insufficient_credits: InsufficientCredits,
  limit_reached: LimitReached,
  idempotency_conflict: IdempotencyConflict,
  hold_not_active: HoldNotActive,
  not_found: NotFound,
  invalid_request: InvalidRequest,
  invalid_json: InvalidRequest,
  payload_too_large: InvalidRequest,
  unauthorized: Unauthorized,
  forbidden: Forbidden,
  rate_limited: RateLimited,
  provider_unavailable: ProviderUnavailable,
  unavailable: Unavailable,
  outcome_unknown: OutcomeUnknown,
};

/** The typed error for an error answer: one class per code, BalanceError for any other. */
export function errorFor(status, body, requestId = null, options) {
  const code = typeof body?.error === 'string' ? body.error : `http_${status}`;
  const message = typeof body?.message === 'string' ? body.message : `balance-server answered ${status}`;
  const Class = CLASSES[code] ?? BalanceError;
  return new Class(status, code, message, body, requestId, options);
}

// ---------------------------------------------------------------- the client

// Full jitter, base 0.1 s, cap 2 s: a fleet of app servers retrying after a database
// failover spreads out instead of arriving together.
const BACKOFF = { base: 100, cap: 2000 };
// Errors that mean the connection was never made: the request was not sent.
const CONNECT_ERRORS = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT_TIMEOUT']);

const env = (name) => globalThis.process?.env?.[name];

export class Balance {
  #base;
  #auth;
  #fetch;
  #timeoutMs;
  #deadlineMs;
  #backoff;
  #sleep;

  constructor({ baseUrl = env('BALANCE_API_URL'), serviceKey = env('BALANCE_SERVICE_KEY'), timeoutMs = 10_000, deadlineMs = 30_000, fetch = globalThis.fetch, backoff, sleep } = {}) {
    if (!baseUrl) throw new TypeError('Balance: `baseUrl` is required (or BALANCE_API_URL in the environment)');
    if (!serviceKey) throw new TypeError('Balance: `serviceKey` is required (or BALANCE_SERVICE_KEY in the environment)');
    if (typeof fetch !== 'function') throw new TypeError('Balance: no fetch here; pass one as `fetch`');
    this.#base = String(baseUrl).replace(/\/+$/, '');
    this.#auth = `Bearer ${serviceKey}`;
    this.#fetch = fetch;
    this.#timeoutMs = timeoutMs;
    this.#deadlineMs = deadlineMs;
    this.#backoff = { ...BACKOFF, ...backoff };
    this.#sleep = sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  }

  /** The account; an unknown one reads as new (nothing is created). */
  async getAccount(account) {
    return this.#call('get_account', { account_id: account });
  }

  /** Create the account now, with its welcome credits (the same account again changes nothing). */
  async openAccount(account) {
    return this.#call('open_account', { account_id: account });
  }

  /** Spend `amount` credits: InsufficientCredits unless available >= amount. */
  async debit(account, { amount, reason, key, metadata } = {}) {
    return this.#call('debit', { account_id: account }, { amount, reason, idempotency_key: required('debit', key), metadata });
  }

  /**
   * Add credits (grant, purchase or refund), optionally expiring. Every operator action takes
   * an `auditReason`: why, kept in the server's audit log.
   */
  async credit(account, { amount, kind, key, reason, expiresAt, priority, metadata, auditReason } = {}) {
    return this.#call('credit', { account_id: account }, { amount, kind, idempotency_key: required('credit', key), reason, expires_at: timestamp(expiresAt), priority, metadata }, undefined, undefined, auditReason);
  }

  /** An operator's signed correction. */
  async adjust(account, { amount, reason, actor, key } = {}) {
    return this.#call('adjust', { account_id: account }, { amount, reason, actor, idempotency_key: required('adjust', key) });
  }

  /** Charge the catalog's price of `operation` times `quantity` (the plan's price when it has one). */
  async charge(account, { operation, quantity, key, metadata } = {}) {
    return this.#call('charge', { account_id: account }, { operation, quantity, idempotency_key: required('charge', key), metadata });
  }

  /** Reserve `amount` credits, or the price of `operation` times `quantity`, for `ttlSeconds`. */
  async hold(account, { amount, operation, quantity, key, ttlSeconds, reason, metadata } = {}) {
    return this.#call('place_hold', { account_id: account }, {
      amount, operation, quantity, reason: reason ?? operation, idempotency_key: required('hold', key), ttl_seconds: ttlSeconds, metadata,
    });
  }

  /** Spend all of a hold, or `amount` of it (the rest is released). A repeat replays. */
  async capture(holdId, { amount, metadata } = {}) {
    return this.#call('capture_hold', { hold_id: holdId }, { amount, metadata }, holdId);
  }

  /** Give a hold's credits back. A repeat replays. */
  async release(holdId, { auditReason } = {}) {
    return this.#call('release_hold', { hold_id: holdId }, undefined, holdId, undefined, auditReason);
  }

  /**
   * Hold, run `work`, capture on success (all, or what `r.settle(n)` says), release when it
   * throws (and rethrow). A release that fails leaves the hold to expire at its TTL.
   */
  async withHold(account, options, work) {
    if (typeof work !== 'function') throw new TypeError('withHold: the third argument is the work, an async function');
    const placed = await this.hold(account, options);
    const { hold } = placed;
    if (hold.status !== 'active') {
      // This key's work was settled before (a retry after its capture, release or expiry):
      // doing it again would go unpaid. A new attempt of failed work takes a new key.
      const message = `the work keyed ${JSON.stringify(options.key)} was already settled: its hold ${hold.id} is ${hold.status}; a new attempt of the work needs a new key`;
      throw new HoldNotActive(409, 'hold_not_active', message, { error: 'hold_not_active', message, status: hold.status, hold: hold.id });
    }
    let settled;
    const reservation = {
      hold,
      replayed: placed.replayed,
      settle(amount) {
        if (!Number.isInteger(amount) || amount < 1 || amount > hold.amount) {
          throw new RangeError(`settle: a whole number of credits from 1 to the ${hold.amount} held, not ${amount}`);
        }
        settled = amount;
      },
    };
    let value;
    try {
      value = await work(reservation);
    } catch (err) {
      // A hold placed by an earlier attempt of this work (replayed) is left to that attempt,
      // which may still succeed and capture it, or to its expiry: releasing it here would
      // leave that attempt's work unpaid.
      if (placed.replayed) throw err;
      try {
        await this.release(hold.id);
      } catch {
        // The work's error is the one the caller needs; the hold expires at its TTL anyway.
      }
      throw err;
    }
    const capture = await this.capture(hold.id, settled === undefined ? {} : { amount: settled });
    return { value, capture };
  }

  /** One page of history, newest first: `{transactions, next}`. */
  async transactionsPage(account, { limit, before, kind } = {}) {
    return this.#call('list_transactions', { account_id: account }, undefined, undefined, { limit, before, kind });
  }

  /** Every transaction of the account, newest first, fetched a page at a time. */
  async *transactions(account, { kind, pageSize = 50 } = {}) {
    let before;
    do {
      const page = await this.transactionsPage(account, { limit: pageSize, before, kind });
      yield* page.transactions;
      before = page.next;
    } while (before != null);
  }

  /** Spending grouped by reason, day, or both (`'day,reason'`), over [since, until). */
  async usage(account, { groupBy, since, until } = {}) {
    return this.#call('usage', { account_id: account }, undefined, undefined, { group_by: groupBy, since: timestamp(since), until: timestamp(until) });
  }

  /** The account's open grants, in spending order. */
  async grants(account) {
    return this.#call('list_grants', { account_id: account });
  }

  /** The account's active holds, soonest to expire first: `{holds}`. */
  async holds(account) {
    return this.#call('list_holds', { account_id: account });
  }

  /** Assign a catalog plan (or null to remove it); periods start at `anchor` (default now). */
  async setPlan(account, { plan, key, anchor, auditReason } = {}) {
    if (plan === undefined) throw new TypeError('setPlan: `plan` is required (a catalog plan id, or null to remove it)');
    return this.#call('set_plan', { account_id: account }, { plan, idempotency_key: required('setPlan', key), anchor: timestamp(anchor) }, undefined, undefined, auditReason);
  }

  /** Plan, period, allowance left, limits used. */
  async getPlan(account) {
    return this.#call('get_plan', { account_id: account });
  }

  /** What a charge (`operation`, `quantity`) or a debit (`amount`) would answer, writing nothing. */
  async check(account, { operation, quantity, amount } = {}) {
    return this.#call('check', { account_id: account }, { operation, quantity, amount });
  }

  /** The account's own low_balance threshold, or null for its plan's or the catalog's. */
  async setAlerts(account, { lowBalance, auditReason } = {}) {
    return this.#call('set_alerts', { account_id: account }, { low_balance: lowBalance ?? null }, undefined, undefined, auditReason);
  }

  /**
   * The account's spend cap, `{ amount, period }` (period: hour, day or month, UTC), or null
   * to remove it: debits, charges and holds past it are refused with LimitReached (no
   * `operation`).
   */
  async setLimits(account, { spend, auditReason } = {}) {
    if (spend === undefined) throw new TypeError('setLimits: `spend` is required ({ amount, period }, or null to remove the cap)');
    const body = { spend: spend === null ? null : { amount: spend.amount, period: spend.period } };
    return this.#call('set_limits', { account_id: account }, body, undefined, undefined, auditReason);
  }

  /** The account's spend cap and its current window's use: `{limits: {spend}}`. */
  async limits(account) {
    return this.#call('get_limits', { account_id: account });
  }

  /** The low-balance threshold in force (and the account's own), the auto top-up, the spend cap. */
  async settings(account) {
    return this.#call('get_settings', { account_id: account });
  }

  /** Buy `package` off session when available falls below `threshold` (as many as reach
   * `target`, within `monthlyLimit` a UTC month); null turns it off. */
  async setAutoTopUp(account, config, { auditReason } = {}) {
    const body = config == null ? null : {
      package: config.package, threshold: config.threshold, stripe_customer: config.stripeCustomer, stripe_payment_method: config.stripePaymentMethod,
      ...(config.target != null && { target: config.target }),
      ...(config.monthlyLimit != null && { monthly_limit: config.monthlyLimit }),
    };
    return this.#call('set_auto_top_up', { account_id: account }, body, undefined, undefined, auditReason);
  }

  /** One page of app webhooks with their attempts, newest first: `{events, next}`. */
  async eventsPage({ status, limit, before, account } = {}) {
    return this.#call('list_events', {}, undefined, undefined, { status, limit, before, account_id: account });
  }

  /** Every app webhook (of `status`), newest first, fetched a page at a time. */
  async *events({ status, pageSize = 50 } = {}) {
    let before;
    do {
      const page = await this.eventsPage({ status, limit: pageSize, before });
      yield* page.events;
      before = page.next;
    } while (before != null);
  }

  /** Deliver an app webhook again now. */
  async retryEvent(eventId, { auditReason } = {}) {
    return this.#call('retry_event', { event_id: eventId }, undefined, undefined, undefined, auditReason);
  }

  /** Accounts whose id starts with `prefix`, the last changed first: `{accounts, next}`. */
  async searchAccounts(prefix = '', { limit, cursor } = {}) {
    return this.#call('search_accounts', {}, undefined, undefined, { prefix: prefix || undefined, limit, cursor });
  }

  /** One page of payments in `status`, newest first: `{payments, next}`. */
  async paymentsPage(status, { account, limit, cursor } = {}) {
    return this.#call('list_payments', {}, undefined, undefined, { status, account_id: account, limit, cursor });
  }

  /**
   * Credit a payment under review once (the catalog's credits, to the account its event
   * named, unless given), with a note. The review is the key: the same call again answers
   * the first one, replayed; any other resolution of it is IdempotencyConflict.
   */
  async creditReview(reviewId, { note, credits, account, auditReason } = {}) {
    return this.#call('credit_review', { review_id: reviewId }, { note, credits, account_id: account }, `review:${reviewId}`, undefined, auditReason);
  }

  /** Dismiss a payment under review once (nothing is credited), with a note. */
  async dismissReview(reviewId, { note, auditReason } = {}) {
    return this.#call('dismiss_review', { review_id: reviewId }, { note }, `review:${reviewId}`, undefined, auditReason);
  }

  /** One page of the audit log (what operators did), newest first: `{entries, next}`. */
  async auditPage({ account, limit, before } = {}) {
    return this.#call('audit_log', {}, undefined, undefined, { account_id: account, limit, before });
  }

  /** Open a provider checkout for a package, an amount (pay-as-you-go) or a plan's subscription: `{url, ...}`. */
  async checkout(account, { provider, package: pkg, plan, amount, currency, successUrl, cancelUrl, customerEmail, key } = {}) {
    return this.#call('checkout', { account_id: account }, {
      provider, success_url: successUrl, idempotency_key: required('checkout', key), package: pkg, plan, amount, currency, cancel_url: cancelUrl, customer_email: customerEmail,
    });
  }

  /** A user token for the browser: `{token, expires_at}`. */
  async createToken(account, { ttlSeconds } = {}) {
    return this.#call('mint_token', {}, { account_id: account, ttl_seconds: ttlSeconds });
  }

  /** The price list `{operation: cost}`. */
  async prices() {
    return this.#call('prices', {});
  }

  /** The catalog: prices, packages, plans. */
  async catalog() {
    return this.#call('catalog', {});
  }

  async #call(operationId, params, body, holdId, query, auditReason) {
    const spec = OPERATIONS[operationId];
    let url = this.#base + spec.path.replace(/\{(\w+)\}/g, (_, name) => {
      const value = params[name];
      if (value === undefined || value === null || value === '') throw new TypeError(`${spec.call}: \`${name === 'account_id' ? 'account' : name}\` is required`);
      return encodeURIComponent(String(value));
    });
    if (query) {
      const search = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) search.set(k, String(v));
      const qs = search.toString();
      if (qs) url += `?${qs}`;
    }
    const init = { method: spec.method, headers: { authorization: this.#auth } };
    if (auditReason) init.headers['x-audit-reason'] = encodeURIComponent(auditReason); // UTF-8, escaped
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body, (k, v) => (v === undefined ? undefined : v));
    }
    const { response, data } = await this.#send(url, init, spec, body?.idempotency_key ?? holdId ?? null);
    if (spec.replays && data && typeof data === 'object') data.replayed = response.headers.get('idempotent-replayed') === 'true';
    return data;
  }

  /** One call: attempts with the same bytes until an answer, or the deadline. */
  async #send(url, init, spec, key) {
    const deadline = Date.now() + this.#deadlineMs;
    const writes = spec.method !== 'GET';
    let reached = false; // whether any attempt may have reached the server
    let last; // the last failure: {status, body, requestId, message, cause}
    for (let attempt = 0; ; attempt++) {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), Math.max(1, Math.min(this.#timeoutMs, deadline - Date.now())));
      let retryAfterMs = 0;
      try {
        const response = await this.#fetch(url, { ...init, signal: controller.signal, cache: 'no-store' });
        const text = await response.text(); // under the same timeout: a cut body is a cut call
        const requestId = response.headers.get('x-request-id');
        const data = parse(text);
        if (response.ok) return { response, data };
        if (response.status !== 503) throw errorFor(response.status, data, requestId, { key });
        if (data?.error !== 'unavailable') reached = true;
        retryAfterMs = 1000 * (Number(response.headers.get('retry-after')) || 0);
        last = { status: 503, body: data, requestId, message: data?.message ?? 'balance-server answered 503' };
      } catch (err) {
        if (err instanceof BalanceError) throw err;
        const timedOut = controller.signal.aborted;
        if (timedOut || !connectError(err)) reached = true;
        last = { status: 503, body: null, requestId: null, message: timedOut ? `no answer within ${this.#timeoutMs} ms` : `network error: ${describe(err)}`, cause: err };
      } finally {
        clearTimeout(timer);
      }
      const wait = Math.max(retryAfterMs, backoffDelay(attempt, this.#backoff));
      if (Date.now() + wait >= deadline) {
        const [code, Class] = reached && writes ? ['outcome_unknown', OutcomeUnknown] : ['unavailable', Unavailable];
        const message = `${spec.call}: ${last.message} (${attempt + 1} attempts in ${this.#deadlineMs} ms)${Class === OutcomeUnknown ? `; it may have been done: repeat it with the same key${key ? ` (${key})` : ''}` : '; nothing was written'}`;
        throw new Class(last.status, code, message, last.body, last.requestId, { key, cause: last.cause });
      }
      await this.#sleep(wait);
    }
  }
}

/**
 * Verify an app webhook (Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature)
 * against `secret` (whsec_...), and return its event. Forged, altered or stale (over 5
 * minutes) ones throw WebhookVerificationError. `body` is the raw body, as received.
 */
export function verifyWebhook(secret, body, headers) {
  const plain = {};
  if (typeof headers?.forEach === 'function' && typeof headers.get === 'function') {
    headers.forEach((value, name) => (plain[name.toLowerCase()] = value));
  } else {
    for (const [name, value] of Object.entries(headers ?? {})) {
      if (value !== undefined) plain[name.toLowerCase()] = Array.isArray(value) ? value.join(' ') : String(value);
    }
  }
  const bytes = body instanceof ArrayBuffer ? new Uint8Array(body) : body;
  const event = new Webhook(secret).verify(bytes, plain);
  if (!event || typeof event !== 'object') throw new WebhookVerificationError('the body is not an event object');
  return { id: plain['webhook-id'], type: event.type, timestamp: event.timestamp, data: event.data };
}

function required(call, key) {
  if (typeof key !== 'string' || key === '') {
    throw new TypeError(`${call}: \`key\` is required: your own idempotency key for this ${call} (a job or order id), so that a retry cannot do it twice`);
  }
  return key;
}

function timestamp(value) {
  return value instanceof Date ? value.toISOString() : value;
}

function parse(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

function connectError(err) {
  const codes = [];
  for (let e = err; e && codes.length < 5; e = e.cause) {
    if (e.code) codes.push(e.code);
    for (const inner of e.errors ?? []) if (inner?.code) codes.push(inner.code);
  }
  return codes.length > 0 && codes.every((code) => CONNECT_ERRORS.has(code));
}

function describe(err) {
  const codes = [];
  for (let e = err; e; e = e.cause) codes.push(e.code ?? e.message);
  return codes.filter(Boolean).join(': ');
}

// Live views of the browser API, framework-free: the usage dashboard's plan and the
// ledger. The elements and the React hooks are both thin renderings of these.
//
// A feed starts when its first subscriber arrives (retaining the session's socket) and
// stops when the last leaves. Subscribers get the whole state, a frozen object, on every
// change, and once at once.

import { RequestError } from './session.js';

const PLAN_GAP_MS = 1_000; // at most one plan read a second, however fast usage is pushed

/** A PlanFeed's state before its first read (and after it stops). */
export const PLAN_START = Object.freeze({ plan: null, loading: true, error: null });
/** A LedgerFeed's state before its first page (and after it stops). */
export const LEDGER_START = Object.freeze({ items: [], next: null, loading: true, error: null, done: false });

class Feed {
  #subscribers = new Set();
  #stopFns = [];
  state;

  constructor(initial) {
    this.state = Object.freeze(initial);
  }

  /** Call `fn(state)` now and on every change; returns the function that unsubscribes. */
  subscribe(fn) {
    this.#subscribers.add(fn);
    if (this.#subscribers.size === 1) this.#stopFns = this.start() ?? [];
    fn(this.state);
    return () => {
      if (!this.#subscribers.delete(fn) || this.#subscribers.size) return;
      for (const stop of this.#stopFns) stop();
      this.#stopFns = [];
      this.stop?.();
    };
  }

  get active() {
    return this.#subscribers.size > 0;
  }

  set(patch) {
    this.state = Object.freeze({ ...this.state, ...patch });
    for (const fn of [...this.#subscribers]) fn(this.state);
  }
}

/**
 * `run()` now, or, when a run is under way or the last ended less than `gap` ms ago, once
 * more after that: a burst of pushes costs one read, not one each. A 429 waits its
 * `retry_after`.
 */
function throttled(load, gap) {
  let busy = false;
  let again = false;
  let timer = null;
  let last = 0;
  const run = async () => {
    if (busy || timer) {
      again = true;
      return;
    }
    const wait = last + gap - Date.now();
    if (wait > 0) {
      timer = setTimeout(() => {
        timer = null;
        run();
      }, wait);
      return;
    }
    busy = true;
    let delay = 0;
    try {
      await load();
    } catch (err) {
      if (err instanceof RequestError && err.status === 429) {
        delay = (err.retryAfter ?? 1) * 1000;
        again = true;
      }
    } finally {
      busy = false;
      last = Date.now() + delay;
      if (again) {
        again = false;
        run();
      }
    }
  };
  run.cancel = () => {
    clearTimeout(timer);
    timer = null;
    again = false;
  };
  return run;
}

/**
 * The account's plan (GET /v1/me/plan), read again after every pushed change of the account
 * (allowance and per-operation counts move with usage, renewals and plan changes), at most
 * once a second. State: {plan, loading, error}; `plan` is the endpoint's body.
 */
export class PlanFeed extends Feed {
  #session;
  #seen = null; // the highest account version heard of
  #read;

  constructor(session) {
    super(PLAN_START);
    this.#session = session;
    this.#read = throttled(async () => {
      try {
        this.set({ plan: await session.plan(), loading: false, error: null });
      } catch (err) {
        this.set({ loading: false, error: err });
        throw err;
      }
    }, PLAN_GAP_MS);
  }

  start() {
    const release = this.#session.retain();
    // The socket may already be open (a header badge got the snapshot): the next frame heard
    // is then a change, and must be read as one.
    this.#seen = this.#session.balance()?.version ?? null;
    const off = this.#session.client.on('balance', (u) => {
      if (u.account_id !== this.#session.account) return;
      // The first frame too: the plan read at start may have been answered before changes
      // this snapshot already counts (a second read is cheap; a stale bar is not).
      const moved = this.#seen === null || u.version > this.#seen;
      this.#seen = Math.max(this.#seen ?? 0, u.version);
      if (moved) this.#read();
    });
    this.#read();
    return [release, off, () => this.#read.cancel()];
  }

  stop() {
    this.#seen = null;
  }

  /** Read the plan now (after an action the app knows changed it). */
  refresh() {
    this.#read();
  }
}

const planFeeds = new WeakMap();

/** The session's one PlanFeed, shared by every dashboard and hook on the page. */
export function planFeed(session) {
  if (!planFeeds.has(session)) planFeeds.set(session, new PlanFeed(session));
  return planFeeds.get(session);
}

/**
 * The account's transactions, newest first, a page at a time (GET /v1/me/transactions on
 * its cursor), with every pushed change prepended from the frame itself: the frame carries
 * the transaction id, kind, amount, reason and the balance after it, so a live row costs no
 * request. Only a gap in the account's versions (a socket that was sent only the newest
 * frame, a reconnect) reads the first page again and merges it.
 * State: {items, next, loading, error, done}.
 */
export class LedgerFeed extends Feed {
  #session;
  #pageSize;
  #version = null; // the account version the items are complete up to (null: none read yet)
  #heard = 0; // the highest account version any frame has carried
  #reading = false; // the first page is wanted (start, or a gap): frames wait in #pending
  #pending = [];
  #failures = 0;
  #retryTimer = null;
  #more = null;
  #moreAfterHead = null;
  #resolveMore = null;
  #generation = 0; // bumped by stop(): a read still in flight then must not write
  #head;

  constructor(session, { pageSize = 20 } = {}) {
    super(LEDGER_START);
    this.#session = session;
    this.#pageSize = pageSize;
    this.#head = throttled(() => this.#readHead(), 250);
  }

  start() {
    const release = this.#session.retain();
    const off = this.#session.client.on('balance', (u) => this.#onBalance(u));
    this.#heard = this.#session.balance()?.version ?? 0;
    this.#readAgain();
    return [release, off, () => this.#head.cancel(), () => clearTimeout(this.#retryTimer)];
  }

  stop() {
    this.#generation++;
    this.#version = null;
    this.#heard = 0;
    this.#reading = false;
    this.#pending = [];
    this.#failures = 0;
    this.#resolveMore?.();
    this.#moreAfterHead = this.#resolveMore = null;
    this.set(LEDGER_START);
  }

  /** Load the next older page; resolves when it is in (or there is none). */
  loadMore() {
    if (this.#reading) {
      // The first page is being read (again): load on from it once it is in.
      this.#moreAfterHead ??= new Promise((resolve) => (this.#resolveMore = resolve));
      return this.#moreAfterHead;
    }
    if (this.state.done || this.state.next == null) return Promise.resolve();
    this.#more ??= (async () => {
      const cursor = this.state.next;
      const generation = this.#generation;
      this.set({ loading: true });
      try {
        const page = await this.#session.transactions({ limit: this.#pageSize, before: cursor });
        if (this.state.next !== cursor || generation !== this.#generation) return; // replaced or stopped meanwhile
        this.set({ items: merge(this.state.items, page.transactions), next: page.next, done: page.next == null, loading: false, error: null });
      } catch (err) {
        if (generation === this.#generation) this.set({ loading: false, error: err });
      } finally {
        this.#more = null;
      }
    })();
    return this.#more;
  }

  /** Read the first page (again); frames wait until it is in. */
  #readAgain() {
    this.#reading = true;
    this.#head();
  }

  async #readHead() {
    // Every change up to the newest frame heard so far committed before this read starts,
    // so the page holds each of their rows (or, past a page, starts the list over).
    const upTo = this.#heard;
    const generation = this.#generation;
    try {
      const page = await this.#session.transactions({ limit: this.#pageSize });
      if (generation !== this.#generation) return; // stopped meanwhile
      const fresh = page.transactions;
      // While reading, no live row was added: the items hold only rows the server listed,
      // or rows from frames in order before the gap. The page reaches them, or more changes
      // came than one page holds and the list starts over from it.
      const ids = new Set(this.state.items.map((t) => String(t.id)));
      const joins = ids.size === 0 || page.next == null || fresh.some((t) => ids.has(String(t.id)));
      const items = joins ? merge(this.state.items, fresh) : fresh;
      const next = joins && ids.size ? this.state.next : page.next;
      this.#version = Math.max(this.#version ?? 0, fresh[0]?.version ?? 0, upTo);
      this.#reading = false;
      this.#failures = 0;
      this.set({ items, next, done: next == null, loading: false, error: null });
      const pending = this.#pending.sort((a, b) => a.version - b.version);
      this.#pending = [];
      for (const u of pending) this.#onBalance(u);
    } catch (err) {
      if (generation !== this.#generation) return;
      this.set({ loading: false, error: err });
      if (err instanceof RequestError && err.status === 429) throw err; // throttled() waits its retry_after
      // Anything else: try again, further apart each time, while someone is listening.
      if (this.active) this.#retryTimer = setTimeout(() => this.#head(), Math.min(30_000, 1000 * 2 ** this.#failures++));
    } finally {
      const resolve = this.#resolveMore;
      this.#moreAfterHead = this.#resolveMore = null;
      if (resolve) resolve(this.#reading ? undefined : this.loadMore());
    }
  }

  #onBalance(u) {
    if (u.account_id !== this.#session.account) return;
    this.#heard = Math.max(this.#heard, u.version);
    if (this.#reading) {
      this.#pending.push(u);
      return;
    }
    if (u.version <= this.#version) return;
    if (u.version !== this.#version + 1 || !u.change) {
      this.#readAgain(); // a gap (or a snapshot after a reconnect): changes we were not told of one by one
      return;
    }
    this.#version = u.version;
    const tx = rowFromFrame(u);
    if (tx) this.set({ items: merge(this.state.items, [tx]), error: null });
  }
}

/** The ledger row a pushed change stands for, or null when it wrote none (holds, plan). */
export function rowFromFrame(u, now = new Date()) {
  const c = u.change;
  if (!c || c.transaction_id == null) return null;
  return Object.freeze({
    id: c.transaction_id,
    account_id: u.account_id,
    kind: c.kind,
    amount: c.amount,
    balance_after: u.balance,
    version: u.version,
    reason: c.reason,
    metadata: null,
    hold_id: c.hold_id,
    created_at: now.toISOString(),
    live: true,
  });
}

/** `a` and `b` as one list, newest first, each transaction once (the server's copy wins). */
function merge(a, b) {
  const byId = new Map();
  for (const t of [...a, ...b]) {
    const prev = byId.get(String(t.id));
    if (!prev || prev.live) byId.set(String(t.id), t);
  }
  return [...byId.values()].sort((x, y) => y.version - x.version || Number(y.id) - Number(x.id));
}

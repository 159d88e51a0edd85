'use client';
// React: the live balance, plan and ledger as hooks, and the credit elements as components.
// React is an optional peer dependency; only this file imports it, so the core and the
// elements never pull it in.
//
//   <CreditProvider token={fetchBalanceToken}>          // one session, one socket
//     <Header />                                         // useBalance()
//     <CreditUsage />  <CreditLedger pageSize={20} />    // the elements, fed by the provider
//   </CreditProvider>
//
// The session is made in an effect, so server rendering (Next.js) renders the placeholders
// and the browser connects after hydration.

import { createContext, createElement, forwardRef, useCallback, useContext, useEffect, useRef, useState } from 'react';
import { LEDGER_START, LedgerFeed, PLAN_START, planFeed } from './feeds.js';
import { CreditSession } from './session.js';

const SessionContext = createContext(null);

/** Hold one CreditSession for the children; pass `session`, or `token` (+ apiUrl, wsUrl). */
export function CreditProvider({ session, apiUrl, wsUrl, token, WebSocket, children }) {
  const own = useOwnSession(session ? {} : { apiUrl, wsUrl, token, WebSocket });
  return createElement(SessionContext.Provider, { value: session ?? own }, children);
}

/** The CreditSession in use: the provider's (null before it has connected, or outside one). */
export function useCreditSession() {
  return useContext(SessionContext);
}

// A session made and owned by one component, rebuilt when the URLs change. Token functions
// are usually inline arrows, new on every render: the latest is read through a ref instead
// of reconnecting whenever the parent renders.
function useOwnSession({ apiUrl, wsUrl, token, WebSocket }) {
  const [session, setSession] = useState(null);
  const tokenRef = useRef(token);
  tokenRef.current = token;
  const made = useRef(null); // {apiUrl, wsUrl, WebSocket, session}: reused by strict mode's second run
  const hasToken = Boolean(token);
  useEffect(() => {
    if (!hasToken || (!apiUrl && !wsUrl && !globalThis.location)) {
      made.current = null; // signed out: whoever signs in next gets a session of their own
      return undefined;
    }
    const last = made.current;
    const same = last && last.apiUrl === apiUrl && last.wsUrl === wsUrl && last.WebSocket === WebSocket;
    const s = same
      ? last.session
      : new CreditSession({
          apiUrl,
          wsUrl,
          WebSocket,
          token: () => (typeof tokenRef.current === 'function' ? tokenRef.current() : tokenRef.current),
        });
    made.current = { apiUrl, wsUrl, WebSocket, session: s };
    const release = s.retain();
    setSession(s);
    return () => {
      release();
      setSession(null);
    };
  }, [apiUrl, wsUrl, hasToken, WebSocket]);
  return session;
}

// Hooks take the provider's session, or, given `url` (the socket) and `token`, one of their
// own: useBalance({url, token}) works without a provider, as before.
function useSessionFor(options) {
  const fromContext = useContext(SessionContext);
  const own = useOwnSession(options.session || (!options.url && !options.apiUrl) ? {} : { apiUrl: options.apiUrl, wsUrl: options.url, token: options.token, WebSocket: options.WebSocket });
  return options.session ?? own ?? fromContext;
}

const EMPTY = Object.freeze({ balance: null, held: null, available: null, version: null, low: false, state: 'connecting', lastChange: null, error: null });

/** Live state of one account: {balance, held, available, version, low, state, lastChange, error}. */
export function useBalance(options = {}) {
  const session = useSessionFor(options);
  const { account } = options;
  const [snapshot, setSnapshot] = useState(EMPTY);
  useEffect(() => {
    if (!session) return undefined;
    const client = session.client;
    const pick = (u) => u.account_id === (account ?? session.account);
    const fields = ({ balance, held, available, version, low }) => ({ balance, held, available, version, low: low === true });
    const known = session.balance(account ?? session.account);
    setSnapshot({ ...EMPTY, ...(known ? fields(known) : {}), state: client.state === 'closed' ? 'connecting' : client.state });
    const offs = [
      session.retain(),
      client.on('balance', (u) => pick(u) && setSnapshot((s) => ({ ...s, ...fields(u), lastChange: u.change ?? s.lastChange }))),
      client.on('state', (state) => setSnapshot((s) => ({ ...s, state }))),
      client.on('error', (error) => setSnapshot((s) => ({ ...s, error }))),
    ];
    return () => {
      for (const off of offs) off();
      setSnapshot(EMPTY);
    };
  }, [session, account]);
  return snapshot;
}

/** The plan (GET /v1/me/plan body), live: {plan, loading, error, refresh}. */
export function usePlan(options = {}) {
  const session = useSessionFor(options);
  const [state, setState] = useState(PLAN_START);
  useEffect(() => {
    if (!session) return undefined;
    const off = planFeed(session).subscribe(setState);
    return () => {
      off();
      setState(PLAN_START);
    };
  }, [session]);
  const refresh = useCallback(() => session && planFeed(session).refresh(), [session]);
  return { ...state, refresh };
}

/** The transactions, newest first, live: {items, loading, error, done, loadMore}. */
export function useLedger(options = {}) {
  const session = useSessionFor(options);
  const { pageSize = 20 } = options;
  const [state, setState] = useState(LEDGER_START);
  const feedRef = useRef(null);
  useEffect(() => {
    if (!session) return undefined;
    const feed = new LedgerFeed(session, { pageSize });
    feedRef.current = feed;
    const off = feed.subscribe(setState);
    return () => {
      off();
      feedRef.current = null;
      setState(LEDGER_START);
    };
  }, [session, pageSize]);
  const loadMore = useCallback(() => feedRef.current?.loadMore() ?? Promise.resolve(), []);
  return { ...state, loadMore };
}

// ---------------------------------------------------------------- the elements as components

/** "pageSize" → "page-size": the elements' attributes are kebab-case. */
const kebab = (name) => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/**
 * A component for a custom element: the provider's session set as its `session` property,
 * `on…` props listened to as its DOM events, every other prop an attribute (so React 18,
 * which sets only attributes on custom elements, and React 19 behave the same). The element
 * definitions load in the browser only, after the first render.
 */
function wrap(tag, events, displayName) {
  const Component = forwardRef(function CreditComponent({ session, children, className, style, ...props }, ref) {
    const fromContext = useContext(SessionContext);
    const s = session ?? fromContext;
    const elRef = useRef(null);
    const handlers = useRef({});
    handlers.current = props;
    const setRef = useCallback(
      (el) => {
        elRef.current = el;
        if (typeof ref === 'function') ref(el);
        else if (ref) ref.current = el;
      },
      [ref],
    );
    useEffect(() => {
      import('./elements.js');
    }, []);
    const gave = useRef(false); // whether this component set the element's session
    useEffect(() => {
      const el = elRef.current;
      if (!el) return;
      // Set before the element is defined, it is taken over when the element upgrades.
      if (s) el.session = s;
      // The provider lost its session (signed out): take ours back, so no element keeps the
      // old one. One the app set itself (through the ref) is left alone.
      else if (gave.current) el.session = null;
      gave.current = Boolean(s);
    }, [s]);
    useEffect(() => {
      const el = elRef.current;
      const offs = Object.entries(events).map(([prop, type]) => {
        const fn = (ev) => handlers.current[prop]?.(ev);
        el.addEventListener(type, fn);
        return () => el.removeEventListener(type, fn);
      });
      return () => offs.forEach((off) => off());
    }, []);
    const attrs = {};
    for (const [k, v] of Object.entries(props)) {
      if (k in events || v == null || v === false || typeof v === 'function' || typeof v === 'object') continue;
      attrs[kebab(k)] = v === true ? '' : String(v);
    }
    return createElement(tag, { ref: setRef, className, style, ...attrs }, children);
  });
  Component.displayName = displayName;
  return Component;
}

export const CreditBalance = wrap('credit-balance', { onUpdate: 'balance-update', onChange: 'balance-change', onStateChange: 'balance-state', onError: 'balance-error' }, 'CreditBalance');
export const CreditPurchase = wrap('credit-purchase', { onCheckout: 'credit-checkout', onCheckoutError: 'credit-checkout-error' }, 'CreditPurchase');
export const CreditLedger = wrap('credit-ledger', { onRow: 'credit-ledger-row' }, 'CreditLedger');
export const CreditUsage = wrap('credit-usage', { onUpdate: 'credit-usage-update' }, 'CreditUsage');
export const CreditGate = wrap('credit-gate', { onOpen: 'credit-gate-open', onClose: 'credit-gate-close', onCheckout: 'credit-checkout' }, 'CreditGate');

// <credit-gate>: the out-of-credits dialog. Hand it a 402 body and it says what the action
// needs and what the user has, offers the packages (a <credit-purchase> on the same
// session) and, when credits arrive while it is open (a purchase in another tab, a plan
// renewal), offers to continue. A plan limit (`limit_reached`) gets its own message.
//
//   <credit-gate token-url="/api/balance-token" featured="popular"></credit-gate>
//
//   const res = await fetch('/api/generate-video', { method: 'POST' });
//   if (res.status === 402) {
//     const outcome = await gate.show(await res.json(), { action: 'Generate video' });
//     if (outcome === 'continue') retry();
//   }
//
// Attributes: token-url, api-url, ws-url (see base.js); featured, provider, currency,
// success-url, cancel-url (passed to the purchase inside); locale.
// Methods: show(body402, {action}) → Promise<'continue' | 'cancel'>; close(); property
// `open` (whether it shows).
// Parts: dialog, icon, title, message, purchase, status, actions, cancel, continue; the
// purchase's parts are exported with a `purchase-` prefix (purchase-package, ...).
// CSS: --credit-accent, --credit-warn, --credit-surface, --credit-radius, --credit-backdrop.
// Events: credit-gate-open, credit-gate-close (detail: {outcome}); the purchase's
// credit-checkout and credit-checkout-error bubble out of it.
// Keyboard: focus moves into the dialog and stays there (Tab wraps), Escape closes it,
// and focus returns to where it was.

import { CreditElement, deepActiveElement, define, h, trapFocus } from './base.js';
import { formatCredits, shortDate } from './format.js';
import './purchase.js';

const STYLE = `
:host { display: contents; }
[part=dialog] {
  width: min(34em, calc(100vw - 2em)); border: none; border-radius: calc(var(--_radius) * 1.4); padding: 1.5em;
  background: var(--_surface); color: inherit; box-shadow: 0 20px 60px rgb(0 0 0 / .3);
}
[part=dialog]::backdrop { background: var(--credit-backdrop, rgb(15 23 42 / .45)); }
[part=icon] {
  display: grid; place-items: center; width: 2.4em; height: 2.4em; border-radius: 50%; font-weight: 700;
  background: color-mix(in srgb, var(--_warn) 18%, transparent); color: var(--_warn);
}
[part=title] { margin: .6em 0 .3em; font-size: 1.25em; }
[part=message] { margin: 0 0 1.1em; color: var(--_muted); }
[part=status] { margin: .8em 0 0; font-weight: 600; color: var(--_accent); }
[part=status]:empty { display: none; }
[part=actions] { display: flex; justify-content: flex-end; gap: .6em; margin-top: 1.2em; }
`;

const PASSED = ['featured', 'provider', 'currency', 'success-url', 'cancel-url', 'locale'];
const PURCHASE_PARTS = ['packages', 'package', 'credits', 'badge', 'price', 'per-credit', 'payg', 'payg-label', 'payg-input', 'payg-credits', 'payg-buy', 'message'];

/** The dialog's words for a 402 body (insufficient_credits or limit_reached). */
export function gateView(body, { action, available, locale } = {}) {
  const what = action || 'This';
  if (body?.error === 'limit_reached' && body.period && !body.operation) {
    // The account's spend cap: credits per UTC hour, day or month, not a plan's count of runs.
    const resets = body.resets_at ? new Date(body.resets_at).toLocaleString(locale, { dateStyle: 'medium', timeStyle: 'short' }) : '';
    return {
      title: 'Spending limit reached',
      message: `${what} would pass your limit of ${formatCredits(body.limit, locale)} credits per ${body.period}: ${formatCredits(body.used, locale)} are spent or reserved.${resets ? ` It resets at ${resets}.` : ''}`,
      buy: false,
      need: 0,
      enough: false,
    };
  }
  if (body?.error === 'limit_reached') {
    return {
      title: 'Plan limit reached',
      message: `${what} can run ${formatCredits(body.limit, locale)} times per period on your plan, and you have used ${formatCredits(body.used, locale)}.${body.resets_at ? ` It resets on ${shortDate(body.resets_at, locale)}.` : ''}`,
      buy: false,
      need: 0,
      enough: false,
    };
  }
  const required = Number(body?.required) || 0;
  const have = available ?? (Number(body?.available) || 0);
  const enough = have >= required && required > 0;
  return {
    title: enough ? 'You have enough credits now' : 'Not enough credits',
    message: `${what} needs ${formatCredits(required, locale)} credits and you have ${formatCredits(have, locale)}.${enough ? '' : ' Top up to go on.'}`,
    buy: true,
    need: Math.max(0, required - have),
    enough,
  };
}

let ids = 0;

export class CreditGate extends CreditElement {
  static observedAttributes = [...CreditElement.sessionAttributes, ...PASSED];

  #body = null;
  #action = '';
  #available = null; // pushed while open; undefined before
  #settle = null;
  #returnFocus = null;
  #outcome = 'cancel'; // what close() was asked for; Escape leaves it at 'cancel'
  #els;

  constructor() {
    super(STYLE);
    const id = `g${++ids}`;
    const e = (this.#els = {
      dialog: h('dialog', { part: 'dialog', 'aria-labelledby': `${id}-t`, 'aria-describedby': `${id}-m` }),
      title: h('h2', { part: 'title', id: `${id}-t` }),
      message: h('p', { part: 'message', id: `${id}-m`, 'aria-live': 'polite' }),
      purchase: h('credit-purchase', { part: 'purchase', exportparts: PURCHASE_PARTS.map((p) => `${p}:purchase-${p}`).join(', ') }),
      status: h('p', { part: 'status', role: 'status' }),
      cancel: h('button', { part: 'cancel', className: 'btn', type: 'button', textContent: 'Not now' }),
      proceed: h('button', { part: 'continue', className: 'btn primary', type: 'button', textContent: 'Continue', hidden: true }),
    });
    e.dialog.append(
      h('div', { part: 'icon', 'aria-hidden': 'true', textContent: '!' }),
      e.title,
      e.message,
      e.purchase,
      e.status,
      h('div', { part: 'actions' }, e.cancel, e.proceed),
    );
    e.cancel.addEventListener('click', () => this.close('cancel'));
    e.proceed.addEventListener('click', () => this.close('continue'));
    e.dialog.addEventListener('close', () => this.#closed());
    trapFocus(e.dialog);
    this.shadowRoot.append(e.dialog);
  }

  /** Whether the dialog is showing. */
  get open() {
    return this.#els.dialog.open;
  }

  /**
   * Show the dialog for a 402 body ({error, required, available} or {error, limit, used,
   * resets_at}); `action` names what was refused; `opener` gets focus back on close (default
   * the element focused now). Resolves with 'continue' when the user
   * goes on once the credits are there, 'cancel' when they close it.
   */
  show(body, { action = '', opener } = {}) {
    this.#settle?.('cancel');
    this.#body = body;
    this.#action = action;
    this.#available = null;
    this.#outcome = 'cancel';
    this.#els.dialog.returnValue = ''; // Escape leaves the last value: it must not read as 'continue'
    // Shown again while open: focus is inside the dialog now, so keep the first opener.
    this.#returnFocus = opener ?? (this.#els.dialog.open ? this.#returnFocus : deepActiveElement());
    this.render();
    if (!this.#els.dialog.open) this.#els.dialog.showModal();
    this.emit('credit-gate-open', { body, action });
    return new Promise((resolve) => (this.#settle = resolve));
  }

  /** Close the dialog; the promise from show() resolves with `outcome`. */
  close(outcome = 'cancel') {
    this.#outcome = outcome;
    this.#els.dialog.close(outcome);
  }

  #closed() {
    if (!this.#settle) return; // already answered (closed, then removed before the event came)
    const outcome = this.#outcome;
    this.#outcome = 'cancel';
    this.#settle?.(outcome);
    this.#settle = null;
    this.#body = null;
    this.emit('credit-gate-close', { outcome });
    this.#returnFocus?.focus?.();
    this.#returnFocus = null;
  }

  disconnectedCallback() {
    super.disconnectedCallback();
    // A dialog taken out of the page (a route change, a React unmount) fires no `close`:
    // answer the waiting show() here, or its caller would wait for good.
    if (!this.#settle) return;
    this.#closed();
    this.#els.dialog.removeAttribute('open'); // no close(): its `close` event would come back here
  }

  started(session) {
    this.#els.purchase.session = session;
    return [
      session.retain(),
      session.client.on('balance', (u) => {
        if (u.account_id !== session.account || !this.#body) return;
        this.#available = u.available;
        this.render();
      }),
      () => (this.#els.purchase.session = null),
    ];
  }

  render() {
    if (!this.#els || !this.#body) return;
    const e = this.#els;
    const v = gateView(this.#body, { action: this.#action, available: this.#available ?? undefined, locale: this.locale });
    e.title.textContent = v.title;
    e.message.textContent = v.message;
    for (const name of PASSED) {
      const value = this.getAttribute(name);
      if (value === null) e.purchase.removeAttribute(name);
      else e.purchase.setAttribute(name, value);
    }
    e.purchase.setAttribute('need', String(v.need));
    e.purchase.hidden = !v.buy || v.enough;
    e.status.textContent = v.enough ? 'Your credits arrived. You can go on.' : '';
    e.proceed.hidden = !v.enough;
    e.cancel.textContent = v.enough ? 'Close' : 'Not now';
    // The packages just hid (focus may have been on one): "Continue" is what to press now.
    if (v.enough && e.dialog.open && this.shadowRoot.activeElement !== e.cancel) e.proceed.focus();
  }
}

define('credit-gate', CreditGate);

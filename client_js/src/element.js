// <credit-balance>: the live balance for an app header, in Shadow DOM.
//
//   <credit-balance token-url="/api/balance-token" low="20"></credit-balance>
//
// Attributes: token-url (POSTed with credentials, answers {"token": "..."}), api-url
// (default this origin), ws-url (default ws(s)://<api host>/v1/ws), account (default: the first one the server
// sends), low (below this many available credits the element turns `low-balance`;
// without it, the server's `low`: the account's own, plan's or catalog's threshold),
// label (default "credits"), locale (default the page's).
// Property `session` (a CreditSession) shares one connection with the page's other credit
// elements; elements with the same token-url share one by themselves. Property `token`
// (string or async function) gives the element a session of its own.
// Reflected on the host for styling: state="connecting|open|reconnecting|closed",
// low-balance, flash="up|down". Parts: icon, balance, label, status.
// DOM events (bubbling, composed, detail as in BalanceClient): balance-update,
// balance-change, balance-state, balance-error.

import { CreditElement, define } from './base.js';
import { formatCredits } from './format.js';
import { CreditSession } from './session.js';

export { formatCredits } from './format.js';
export { defaultSocketUrl, tokenFromUrl } from './session.js';

const FLASH_MS = 1200;

/** What the element shows, from the account state (or none yet) and the connection state. */
export function balanceView(account, state, { low = null, locale, label = 'credits' } = {}) {
  const known = account != null;
  let status = '';
  if (state === 'reconnecting') status = 'Reconnecting…';
  else if (state === 'closed' && known) status = 'Offline';
  else if (known && account.held > 0) status = `${formatCredits(account.held, locale)} on hold`;
  return {
    text: known ? formatCredits(account.available, locale) : '—',
    label,
    status,
    low: known && (low !== null ? account.available < low : account.low === true),
    title: known ? `${formatCredits(account.balance, locale)} ${label}${account.held ? `, ${formatCredits(account.held, locale)} on hold` : ''}` : '',
  };
}

const STYLE = `
:host {
  display: inline-flex; align-items: center; gap: .4em;
  font: inherit; font-variant-numeric: tabular-nums; line-height: 1; white-space: nowrap;
  color: var(--credit-balance-color, inherit);
  background: var(--credit-balance-background, transparent);
  border: var(--credit-balance-border, none);
  border-radius: var(--credit-balance-radius, 999px);
  padding: var(--credit-balance-padding, .35em .7em);
}
:host([hidden]) { display: none; }
.amount { display: inline-flex; align-items: baseline; gap: .4em; }
[part=icon] { display: inline-flex; color: var(--credit-balance-icon-color, #f5b301); }
[part=balance] { font-weight: var(--credit-balance-weight, 600); border-radius: .3em; transition: opacity .3s; }
[part=label] { opacity: .7; }
[part=status] { font-size: .8em; opacity: .75; }
[part=status]:empty { display: none; }
:host([state=reconnecting]) [part=balance], :host([state=connecting]) [part=balance] { opacity: .5; }
:host([state=reconnecting]) [part=status]::before {
  content: ''; display: inline-block; width: .5em; height: .5em; margin-right: .35em; border-radius: 50%;
  background: currentColor; animation: pulse 1s ease-in-out infinite alternate;
}
:host([low-balance]) [part=balance] { color: var(--credit-balance-low-color, #d97706); }
:host([flash=up]) [part=balance] { animation: flash-up ${FLASH_MS}ms ease-out; }
:host([flash=down]) [part=balance] { animation: flash-down ${FLASH_MS}ms ease-out; }
@keyframes flash-up { from { color: var(--credit-balance-up-color, #16a34a); background: var(--credit-balance-up-background, rgb(22 163 74 / .15)); } }
@keyframes flash-down { from { color: var(--credit-balance-down-color, #dc2626); background: var(--credit-balance-down-background, rgb(220 38 38 / .12)); } }
@keyframes pulse { from { opacity: .3; } }
@media (prefers-reduced-motion: reduce) { [part=balance], [part=status]::before { animation: none !important; } }
`;

const COIN = `<svg width="1.1em" height="1.1em" viewBox="0 0 24 24" aria-hidden="true"><circle cx="12" cy="12" r="10" fill="currentColor"/><circle cx="12" cy="12" r="6.5" fill="none" stroke="#fff" stroke-opacity=".55" stroke-width="1.5"/></svg>`;

export class CreditBalance extends CreditElement {
  static observedAttributes = [...CreditElement.sessionAttributes, 'account', 'low', 'label', 'locale'];

  #token = null;
  #shown = null; // the last available value rendered, to flash the direction of a change
  #flashTimer = null;
  #els;

  constructor() {
    super(STYLE, { theme: false }); // a badge in the app's header: nothing of the panels' look
    const root = this.shadowRoot;
    const parts = document.createElement('template');
    parts.innerHTML = `<span part="icon"><slot name="icon">${COIN}</slot></span><span class="amount" aria-live="polite" aria-atomic="true"><span part="balance"></span> <span part="label"></span></span><span part="status" role="status"></span>`;
    root.append(parts.content);
    this.#els = Object.fromEntries(['balance', 'label', 'status'].map((p) => [p, root.querySelector(`[part=${p}]`)]));
    // No render() here: a constructor may not add attributes (createElement would throw).
  }

  /** A token or token function: the element gets a session of its own (instead of token-url). */
  get token() {
    return this.#token;
  }

  set token(value) {
    this.#token = value;
    this.session = value ? new CreditSession({ apiUrl: this.getAttribute('api-url') || undefined, wsUrl: this.getAttribute('ws-url') || undefined, token: value }) : null;
  }

  /** The BalanceClient behind the element (null while disconnected). */
  get client() {
    return this.isConnected ? this.session?.client ?? null : null;
  }

  /** The account shown: the `account` attribute, else the first the server sent. */
  get account() {
    return this.getAttribute('account') || this.session?.account || null;
  }

  attributeChangedCallback(name, previous, value) {
    if (name === 'account' && previous !== value) this.#shown = null; // another account's number is not a change
    super.attributeChangedCallback(name, previous, value);
  }

  started(session) {
    const client = session.client;
    const mine = (u) => u.account_id === this.account;
    return [
      session.retain(),
      client.on('balance', (u) => {
        if (!mine(u)) return;
        this.render();
        this.emit('balance-update', u);
      }),
      client.on('change', (u) => mine(u) && this.emit('balance-change', u)),
      client.on('state', (state) => {
        this.render();
        this.emit('balance-state', state);
      }),
      client.on('error', (err) => this.emit('balance-error', err)),
    ];
  }

  render() {
    if (!this.#els) return;
    const client = this.client;
    const state = client?.state ?? 'connecting';
    const account = this.account ? client?.balance(this.account) : undefined;
    const low = this.getAttribute('low');
    const view = balanceView(account, state, {
      low: low === null || low === '' ? null : Number(low),
      locale: this.locale,
      label: this.getAttribute('label') ?? 'credits',
    });
    this.#els.balance.textContent = view.text;
    this.#els.label.textContent = view.label;
    this.#els.status.textContent = view.status;
    this.title = view.title;
    this.setAttribute('state', state);
    this.toggleAttribute('low-balance', view.low);
    if (account) this.#flash(account.available);
  }

  #flash(value) {
    const before = this.#shown;
    this.#shown = value;
    if (before === null || before === value) return;
    this.removeAttribute('flash');
    void this.offsetWidth; // restart the animation when changes come faster than it runs
    this.setAttribute('flash', value > before ? 'up' : 'down');
    clearTimeout(this.#flashTimer);
    this.#flashTimer = setTimeout(() => this.removeAttribute('flash'), FLASH_MS);
  }
}

define('credit-balance', CreditBalance);

// What every credit element shares: finding its session, starting and stopping with the
// DOM, DOM events, the common CSS custom properties, and building shadow DOM safely
// (text only through textContent: reasons and plan names are data).
//
// An element's session is, in order: its `session` property; a shared one for its
// `token-url` (with `api-url`, `ws-url`); the page's default (setDefaultSession).

import { defaultSession, onDefaultSession, sharedSession } from './session.js';

// Node has no HTMLElement: the modules still import there (for their pure parts and tests).
const Base = globalThis.HTMLElement ?? class {};

/** The look every element shares; each also reads its own --credit-* properties. */
export const THEME = `
:host {
  --_accent: var(--credit-accent, #0d9f6e);
  --_warn: var(--credit-warn, #d97706);
  --_danger: var(--credit-danger, #dc2626);
  --_muted: var(--credit-muted, color-mix(in srgb, currentColor 60%, transparent));
  --_border: var(--credit-border, color-mix(in srgb, currentColor 15%, transparent));
  --_surface: var(--credit-surface, Canvas);
  --_radius: var(--credit-radius, 10px);
  --_track: var(--credit-track, color-mix(in srgb, currentColor 10%, transparent));
  display: block; font: inherit; color: inherit; font-variant-numeric: tabular-nums;
}
:host([hidden]) { display: none; }
[hidden] { display: none !important; } /* parts that set their own display keep obeying it */
button { font: inherit; cursor: pointer; }
button:disabled { cursor: default; opacity: .6; }
:focus-visible { outline: 2px solid var(--_accent); outline-offset: 2px; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; }
.btn {
  border: 1px solid var(--_border); border-radius: calc(var(--_radius) * .8); padding: .5em 1em;
  background: transparent; color: inherit;
}
.btn.primary { background: var(--_accent); border-color: var(--_accent); color: var(--credit-on-accent, #fff); font-weight: 600; }
.error { color: var(--_danger); font-size: .9em; margin: .5em 0 0; }
.error:empty { display: none; }
@media (prefers-reduced-motion: reduce) { * { animation: none !important; transition: none !important; } }
`;

/** createElement with properties and children; strings become text nodes, never HTML. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === 'part' || k === 'exportparts' || k.startsWith('aria-') || k.startsWith('data-') || k === 'role' || k === 'for') el.setAttribute(k, v === true ? '' : String(v));
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el[k] = v;
  }
  el.append(...children.flat().filter((c) => c != null && c !== false));
  return el;
}

const PRESETTABLE = ['session', 'token', 'reasonLabel', 'operationLabel'];

export class CreditElement extends Base {
  static sessionAttributes = ['api-url', 'ws-url', 'token-url'];

  #session = null;
  #active = null; // the session in use while connected
  #stops = [];
  #unwait = null;

  #preset = null; // properties set on the element before its class was defined

  /** `style`: the element's own CSS; `theme`: whether it starts from THEME (panels do, the badge does not). */
  constructor(style, { theme = true } = {}) {
    super();
    this.attachShadow({ mode: 'open' }).innerHTML = `<style>${theme ? THEME : ''}${style}</style>`;
    // A page (or React) may set `session` and friends before this module has loaded: those
    // land as plain own properties that would hide the class's accessors and defaults. Take
    // them aside here, and apply them once the subclass's fields exist (connectedCallback).
    for (const name of PRESETTABLE) {
      if (!Object.hasOwn(this, name)) continue;
      this.#preset ??= {};
      this.#preset[name] = this[name];
      delete this[name];
    }
  }

  /** The CreditSession to use; set it to share one connection with the rest of the page. */
  get session() {
    return this.#active ?? this.#session;
  }

  set session(value) {
    this.#session = value;
    this.restart();
  }

  connectedCallback() {
    if (this.#preset) {
      const preset = this.#preset;
      this.#preset = null;
      Object.assign(this, preset);
    }
    this.render();
    // A microtask, so a `session` set right after insertion is used on the first start.
    queueMicrotask(() => this.#start());
  }

  disconnectedCallback() {
    this.#stop();
  }

  attributeChangedCallback(name, previous, value) {
    if (previous === value) return;
    if (CreditElement.sessionAttributes.includes(name)) this.restart();
    else this.render();
  }

  /** The session this element would use now, or null while it has none. */
  resolveSession() {
    if (this.#session) return this.#session;
    const tokenUrl = this.getAttribute('token-url');
    if (tokenUrl) return sharedSession({ apiUrl: this.getAttribute('api-url') ?? '', wsUrl: this.getAttribute('ws-url') ?? '', tokenUrl });
    return defaultSession();
  }

  #start() {
    if (!this.isConnected || this.#active) return;
    const session = this.resolveSession();
    // Waiting for the page's default, or using it: follow it when it is replaced (sign-out,
    // another user), so no element keeps showing the previous session.
    if (!session || session === defaultSession()) this.#unwait ??= onDefaultSession(() => this.restart());
    if (!session) {
      this.render(); // no session (signed out): draw the empty state, not the last user's data
      return;
    }
    this.#active = session;
    this.#stops = this.started(session) ?? [];
    this.render();
  }

  #stop() {
    this.#unwait?.();
    this.#unwait = null;
    for (const stop of this.#stops) stop();
    this.#stops = [];
    this.#active = null;
  }

  restart() {
    this.#stop();
    this.#start();
  }

  /** Subclasses subscribe here; return the functions that undo it. */
  started(_session) {
    return [];
  }

  /** Subclasses draw here, from their state; called often, so it must be cheap. */
  render() {}

  /** The locale of numbers and dates: the `locale` attribute, else the page's. */
  get locale() {
    return this.getAttribute('locale') || globalThis.document?.documentElement.lang || undefined;
  }

  /** Fire a bubbling, composed DOM event; returns false when a listener called preventDefault. */
  emit(type, detail, { cancelable = false } = {}) {
    return this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true, cancelable }));
  }
}

/** Define `name` once (a page may load two copies of the bundle). */
export function define(name, cls) {
  if (globalThis.customElements && !customElements.get(name)) customElements.define(name, cls);
}

const FOCUSABLE = 'button, [href], input, select, textarea, [tabindex]:not([tabindex="-1"])';

/** The focusable elements under `root`, in order, looking inside open shadow roots. */
export function focusables(root) {
  const found = [];
  const walk = (node) => {
    for (const el of node.children) {
      if (el.hidden || el.inert) continue;
      if (el.matches(FOCUSABLE) && !el.disabled && el.getClientRects().length) found.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
      walk(el);
    }
  };
  walk(root);
  return found;
}

/** The element that has focus, inside shadow roots too. */
export function deepActiveElement() {
  let el = document.activeElement;
  while (el?.shadowRoot?.activeElement) el = el.shadowRoot.activeElement;
  return el;
}

/**
 * Keep Tab and Shift+Tab inside `dialog` while it is open, through the shadow roots of the
 * elements in it (a modal <dialog> makes the page inert, but Tab would still leave for the
 * browser's own UI). Returns the function that stops it.
 */
export function trapFocus(dialog) {
  const onKey = (ev) => {
    if (ev.key !== 'Tab' || !dialog.open) return;
    const list = focusables(dialog);
    if (!list.length) return;
    const at = list.indexOf(deepActiveElement());
    const next = ev.shiftKey ? (at <= 0 ? list.length - 1 : at - 1) : at === -1 || at === list.length - 1 ? 0 : at + 1;
    ev.preventDefault();
    list[next].focus();
  };
  dialog.addEventListener('keydown', onKey);
  return () => dialog.removeEventListener('keydown', onKey);
}

// <credit-ledger>: the account's credits activity, grouped by day with a total per day,
// older pages loaded as the list scrolls into view, new rows prepended live from the
// pushed frames (no request per frame: feeds.js LedgerFeed).
//
//   <credit-ledger token-url="/api/balance-token" page-size="20"></credit-ledger>
//
// Attributes: token-url, api-url, ws-url (see base.js), page-size (default 20, max 200),
// locale. Give the host a height (e.g. `credit-ledger { max-height: 24rem }`) to scroll
// inside it; without one the page scrolls, and loading follows the page.
// Properties `session`; `reasonLabel` (reason, transaction → words; default the reason).
// Parts: list, day, day-head, day-label, day-total, rows, row, row-icon, row-title,
// row-meta, row-amount, row-after, more, empty. A row has class `pos`/`neg` and `live`
// while it came from a frame. CSS: --credit-accent, --credit-danger, --credit-muted,
// --credit-border, --credit-new-row (the flash of a new row).
// Events: credit-ledger-row (detail: the transaction) for each row pushed live.

import { CreditElement, define, h } from './base.js';
import { LedgerFeed } from './feeds.js';
import { KINDS, formatCredits, groupByDay, signed } from './format.js';

const STYLE = `
:host { overflow-y: auto; overscroll-behavior: contain; }
[part=list] { margin: 0; }
[part=day] + [part=day] { margin-top: 1em; }
[part=day-head] { display: flex; justify-content: space-between; align-items: baseline; margin: 0 0 .4em; font-size: .85em; color: var(--_muted); }
[part=day-label] { margin: 0; font: inherit; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; }
[part=rows] { list-style: none; margin: 0; padding: 0; }
[part=row] { display: grid; grid-template-columns: 1.8em 1fr auto; gap: .6em; align-items: center; padding: .5em .25em; border-bottom: 1px solid var(--_border); }
[part=row].live { animation: arrive 1.5s ease-out; }
@keyframes arrive { from { background: var(--credit-new-row, color-mix(in srgb, var(--_accent) 18%, transparent)); } }
[part=row-icon] { display: grid; place-items: center; width: 1.8em; height: 1.8em; border-radius: 50%; background: var(--_track); font-size: .9em; }
.text, .amounts { display: flex; flex-direction: column; min-width: 0; }
.amounts { align-items: flex-end; }
[part=row-title] { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
[part=row-meta], [part=row-after] { font-size: .8em; color: var(--_muted); }
[part=row-amount], [part=day-total] { font-weight: 600; }
.pos [part=row-amount], [part=day-total].pos { color: var(--_accent); }
[part=more] { display: block; margin: .75em auto 0; }
[part=empty] { color: var(--_muted); margin: 0; }
`;

const NEAR_END_PX = 200; // how close to the end of the list the next page starts loading

const isoTime = (t, locale) => new Intl.DateTimeFormat(locale || undefined, { hour: 'numeric', minute: '2-digit' }).format(new Date(t.created_at));

/** What one row says: title, meta line, amount and balance after. */
export function rowView(t, { locale, reasonLabel = (r) => r } = {}) {
  const kind = KINDS[t.kind] ?? { label: t.kind, icon: '•' };
  return {
    icon: kind.icon,
    title: (t.reason && reasonLabel(t.reason, t)) || kind.label,
    meta: `${isoTime(t, locale)} · ${kind.label}`,
    amount: signed(t.amount, locale),
    after: `${formatCredits(t.balance_after, locale)} left`,
    tone: t.amount < 0 ? 'neg' : 'pos',
  };
}

export class CreditLedger extends CreditElement {
  static observedAttributes = [...CreditElement.sessionAttributes, 'page-size', 'locale'];

  #reasonLabel = (reason) => reason;
  #feed = null;
  #state = null;
  #rows = new WeakMap(); // transaction object → its <li>, so a new row does not rebuild the rest
  #observer = null;
  #els;

  constructor() {
    super(STYLE);
    const e = (this.#els = {
      list: h('div', { part: 'list', role: 'list', 'aria-label': 'Credits activity' }),
      empty: h('p', { part: 'empty', textContent: 'Loading…' }),
      more: h('button', { part: 'more', className: 'btn', type: 'button', textContent: 'Show older', hidden: true }),
      announce: h('p', { className: 'visually-hidden', 'aria-live': 'polite' }),
      error: h('p', { className: 'error', role: 'alert' }),
    });
    e.more.addEventListener('click', () => this.loadMore());
    this.shadowRoot.append(e.list, e.empty, e.more, e.error, e.announce);
  }

  /** Reason → what people read (a charge's reason is its operation id); default as stored. */
  get reasonLabel() {
    return this.#reasonLabel;
  }

  set reasonLabel(fn) {
    this.#reasonLabel = fn;
    this.#rows = new WeakMap(); // every row says it anew
    this.render();
  }

  /** The transactions shown, newest first. */
  get transactions() {
    return this.#state?.items ?? [];
  }

  /** Load the next older page (scrolling to the end does it too). */
  loadMore() {
    return this.#feed?.loadMore() ?? Promise.resolve();
  }

  attributeChangedCallback(name, previous, value) {
    if (name === 'locale') this.#rows = new WeakMap(); // rows are drawn in the locale
    if (name === 'page-size' && previous !== value) this.restart();
    else super.attributeChangedCallback(name, previous, value);
  }

  started(session) {
    const size = Math.min(200, Math.max(1, Number(this.getAttribute('page-size')) || 20));
    const feed = (this.#feed = new LedgerFeed(session, { pageSize: size }));
    let known = null;
    const off = feed.subscribe((state) => {
      const previous = this.#state;
      this.#state = state;
      if (known && previous) {
        for (const t of state.items) if (t.live && !known.has(t)) this.#arrived(t);
      }
      known = new Set(state.items);
      this.render();
      // A page that left "Show older" still in view fires no new intersection: look again.
      if (previous?.loading && !state.loading && this.#observer) {
        this.#observer.unobserve(this.#els.more);
        this.#observer.observe(this.#els.more);
      }
    });
    // Older pages load when the "Show older" button nears the visible area: infinite scroll,
    // with the button itself as the keyboard and screen-reader way to the same thing.
    this.#observer = globalThis.IntersectionObserver
      ? new IntersectionObserver((entries) => entries.some((x) => x.isIntersecting) && this.loadMore(), { rootMargin: '200px' })
      : null;
    this.#observer?.observe(this.#els.more);
    // Scrolling inside the element (given a height) loads on near its end too, whether or
    // not that end is in the page's viewport.
    const onScroll = () => this.scrollTop + this.clientHeight >= this.scrollHeight - NEAR_END_PX && this.loadMore();
    this.addEventListener('scroll', onScroll, { passive: true });
    return [
      off,
      () => this.removeEventListener('scroll', onScroll),
      () => {
        this.#observer?.disconnect();
        this.#observer = null;
        this.#feed = null;
        this.#state = null;
      },
    ];
  }

  #arrived(t) {
    const v = rowView(t, { locale: this.locale, reasonLabel: this.reasonLabel });
    this.#els.announce.textContent = `${v.amount} credits, ${v.title}`;
    this.emit('credit-ledger-row', t);
  }

  render() {
    if (!this.#els) return;
    const e = this.#els;
    const s = this.#state;
    const items = s?.items ?? [];
    e.empty.textContent = !s || (s.loading && !items.length) ? 'Loading…' : items.length ? '' : 'No activity yet.';
    e.empty.hidden = !e.empty.textContent;
    e.more.hidden = !s || s.done || s.next == null;
    e.more.disabled = Boolean(s?.loading);
    e.error.textContent = s?.error ? `Activity could not be loaded (${s.error.message}).` : '';
    this.toggleAttribute('loading', Boolean(s?.loading));
    const opts = { locale: this.locale };
    e.list.replaceChildren(
      ...groupByDay(items, opts).map((g) =>
        h(
          'section',
          { part: 'day', role: 'listitem', 'aria-label': g.label },
          h('header', { part: 'day-head' }, h('h3', { part: 'day-label', textContent: g.label }), h('span', { part: 'day-total', className: g.total < 0 ? 'neg' : 'pos', textContent: signed(g.total, this.locale) })),
          h('ol', { part: 'rows' }, g.items.map((t) => this.#row(t))),
        ),
      ),
    );
  }

  #row(t) {
    let li = this.#rows.get(t);
    if (li) return li;
    const v = rowView(t, { locale: this.locale, reasonLabel: this.reasonLabel });
    li = h(
      'li',
      { part: 'row', className: `${v.tone} kind-${t.kind}${t.live ? ' live' : ''}`, 'data-id': t.id },
      h('span', { part: 'row-icon', 'aria-hidden': 'true', textContent: v.icon }),
      h('span', { className: 'text' }, h('span', { part: 'row-title', textContent: v.title }), h('span', { part: 'row-meta', textContent: v.meta })),
      h('span', { className: 'amounts' }, h('span', { part: 'row-amount', textContent: v.amount, 'aria-label': `${v.amount} credits` }), h('span', { part: 'row-after', textContent: v.after })),
    );
    this.#rows.set(t, li);
    return li;
  }
}

define('credit-ledger', CreditLedger);

// <credit-purchase>: buy credits. The catalog's packages, each with its price and price per
// credit, a "Most popular" marker, and a pay-as-you-go amount when the catalog has a rate.
// A choice opens a checkout session (POST /v1/me/checkout) and goes to the provider's page.
//
//   <credit-purchase token-url="/api/balance-token" featured="popular"></credit-purchase>
//
// Attributes: token-url, api-url, ws-url (see base.js); provider (stripe | dodo, default
// stripe); currency (default usd when the packages are priced in it, else the first one's);
// packages (comma list of package ids: which to show, in that order; default all, by
// size); featured (the package id marked "Most popular"); need (credits the buyer is
// short of: smaller packages are dimmed, the amount field starts at what covers it);
// pay-as-you-go ("off" hides the amount field); success-url, cancel-url (default this
// page; the server only accepts its BALANCE_CHECKOUT_RETURN_URLS); locale.
// The price is never the browser's to set: the server prices the package or amount from
// its catalog, and credits come from the money its webhook reports.
// Parts: packages, package, credits, badge, price, per-credit, payg, payg-label,
// payg-input, payg-credits, payg-buy, message. A package has class `featured`, `short`.
// CSS: --credit-accent, --credit-radius, --credit-border, --credit-surface.
// Events: credit-checkout (cancelable; detail: the checkout answer {url, session_id,
// credits, amount, currency} plus `package`): preventDefault() keeps the page here
// (e.g. to open the URL in a popup); credit-checkout-error (detail: {code, status,
// message}).

import { CreditElement, define, h } from './base.js';
import { currencyExponent, formatCredits, formatMoney, formatPerCredit, paygCredits, parseMoney } from './format.js';

const STYLE = `
[part=packages] { display: grid; grid-template-columns: repeat(auto-fit, minmax(9em, 1fr)); gap: .6em; }
[part=package] {
  position: relative; display: flex; flex-direction: column; align-items: flex-start; gap: .2em; text-align: left;
  padding: .9em 1em; border: 1px solid var(--_border); border-radius: var(--_radius); background: var(--_surface); color: inherit;
  transition: border-color .15s, transform .15s;
}
[part=package]:hover:not(:disabled) { border-color: var(--_accent); transform: translateY(-1px); }
[part=package].featured { border: 2px solid var(--_accent); }
[part=package].short { opacity: .55; }
[part=credits] { font-weight: 700; font-size: 1.05em; }
[part=badge] {
  position: absolute; top: -.7em; right: .8em; font-size: .72em; font-weight: 700; padding: .15em .55em;
  border-radius: 999px; background: var(--_accent); color: var(--credit-on-accent, #fff);
}
[part=price] { font-size: 1.2em; font-weight: 600; }
[part=per-credit] { font-size: .8em; color: var(--_muted); }
[part=payg] { display: flex; flex-wrap: wrap; align-items: end; gap: .6em; margin-top: .9em; }
[part=payg-label] { display: flex; flex-direction: column; gap: .25em; font-size: .9em; }
[part=payg-input] {
  font: inherit; width: 8em; padding: .45em .6em; border: 1px solid var(--_border); border-radius: calc(var(--_radius) * .8);
  background: var(--_surface); color: inherit;
}
[part=payg-credits] { font-size: .9em; color: var(--_muted); padding-bottom: .55em; min-width: 7em; }
[part=message] { margin: .6em 0 0; font-size: .9em; color: var(--_danger); }
[part=message]:empty { display: none; }
:host([busy]) [part=packages], :host([busy]) [part=payg] { cursor: progress; }
`;

/** The packages to show for a catalog: [{id, credits, price, perCredit, featured, short}]. */
export function packageViews(catalog, { currency, only, featured, need = 0, locale } = {}) {
  const cur = currency || pickCurrency(catalog);
  let entries = Object.entries(catalog?.packages ?? {}).filter(([, p]) => p.price?.[cur] != null);
  if (only?.length) entries = only.map((id) => [id, catalog.packages[id]]).filter(([, p]) => p?.price?.[cur] != null);
  else entries.sort(([, a], [, b]) => a.credits - b.credits);
  return entries.map(([id, p]) => ({
    id,
    credits: p.credits,
    creditsText: `${formatCredits(p.credits, locale)} credits`,
    price: formatMoney(p.price[cur], cur, locale),
    perCredit: `${formatPerCredit(p.price[cur], p.credits, cur, locale)} per credit`,
    featured: id === featured,
    short: need > 0 && p.credits < need,
  }));
}

/** The currency the element sells in: usd when the packages have it, else the first priced. */
export function pickCurrency(catalog) {
  const priced = Object.values(catalog?.packages ?? {}).flatMap((p) => Object.keys(p.price ?? {}));
  // The packages' currencies come first: a pay-as-you-go rate in usd must not hide every package priced in eur.
  const all = priced.length ? priced : Object.keys(catalog?.pay_as_you_go?.credits_per_unit ?? {});
  return all.includes('usd') ? 'usd' : all[0] ?? 'usd';
}

/** What a failed checkout tells the buyer; none of these charged anything. */
export function checkoutMessage(err) {
  if (err.status === 429) return `Too many purchase attempts. Try again in ${Math.max(1, Math.ceil(err.retryAfter ?? 60))} seconds.`;
  if (err.status === 502) return 'The payment provider did not answer. You were not charged; try again in a moment.';
  if (err.status === 0) return 'Could not reach the server. You were not charged; check your connection and try again.';
  if (err.status === 401) return 'Your session has expired. Sign in again to buy credits.';
  return `The purchase did not start (${err.message}). You were not charged.`;
}

export class CreditPurchase extends CreditElement {
  static observedAttributes = [...CreditElement.sessionAttributes, 'provider', 'currency', 'packages', 'featured', 'need', 'pay-as-you-go', 'locale'];

  #catalog = null;
  #busy = false;
  #drawn = ''; // the package views last drawn
  #els;

  constructor() {
    super(STYLE);
    const e = (this.#els = {
      packages: h('div', { part: 'packages', role: 'group', 'aria-label': 'Credit packages' }),
      payg: h('form', { part: 'payg', hidden: true }),
      input: h('input', { part: 'payg-input', type: 'text', inputMode: 'decimal', autocomplete: 'off', name: 'amount' }),
      paygLabel: h('span', { textContent: 'Or any amount' }),
      paygCredits: h('output', { part: 'payg-credits', 'aria-live': 'polite' }),
      paygBuy: h('button', { part: 'payg-buy', className: 'btn primary', type: 'submit', textContent: 'Buy' }),
      message: h('p', { part: 'message', role: 'alert' }),
    });
    e.payg.append(h('label', { part: 'payg-label' }, e.paygLabel, e.input), e.paygCredits, e.paygBuy);
    e.input.addEventListener('input', () => this.#renderPayg());
    e.payg.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const amount = parseMoney(e.input.value, this.currency);
      if (amount !== null) this.#buy({ amount, currency: this.currency }, e.paygBuy);
    });
    this.shadowRoot.append(e.packages, e.payg, e.message);
  }

  /** The currency prices are shown and sold in. */
  get currency() {
    return (this.getAttribute('currency') || pickCurrency(this.#catalog)).toLowerCase();
  }

  started(session) {
    let live = true;
    this.#els.message.textContent = '';
    session.catalog().then(
      (catalog) => {
        if (!live) return;
        this.#catalog = catalog;
        this.render();
      },
      (err) => live && (this.#els.message.textContent = `Prices could not be loaded (${err.message}).`),
    );
    return [() => (live = false)];
  }

  /** Start a checkout for a package id (what a click does); resolves once it has gone or failed. */
  buy(packageId) {
    // In the currency shown when the package has a price in it; else the server's default.
    const priced = this.#catalog?.packages?.[packageId]?.price?.[this.currency] != null;
    return this.#buy({ package: packageId, ...(priced ? { currency: this.currency } : {}) }, null);
  }

  async #buy(what, button) {
    const session = this.session;
    if (this.#busy || !session) return;
    this.#setBusy(true, button);
    this.#els.message.textContent = '';
    try {
      const answer = await session.checkout({
        provider: this.getAttribute('provider') || 'stripe',
        successUrl: this.getAttribute('success-url') || undefined,
        cancelUrl: this.getAttribute('cancel-url') || undefined,
        ...what,
      });
      if (this.emit('credit-checkout', { ...answer, package: what.package ?? null }, { cancelable: true })) location.assign(answer.url);
    } catch (err) {
      const message = checkoutMessage(err);
      this.#els.message.textContent = message;
      this.emit('credit-checkout-error', { code: err.code ?? 'error', status: err.status ?? 0, message });
    } finally {
      this.#setBusy(false, button);
    }
  }

  #setBusy(busy, button) {
    this.#busy = busy;
    this.toggleAttribute('busy', busy);
    for (const b of this.shadowRoot.querySelectorAll('button')) b.disabled = busy;
    if (button) button.setAttribute('aria-busy', String(busy));
    if (!busy) this.#renderPayg(); // the amount decides whether its button may be pressed
  }

  render() {
    if (!this.#els || !this.#catalog) return;
    const e = this.#els;
    const locale = this.locale;
    const only = (this.getAttribute('packages') || '').split(',').map((s) => s.trim()).filter(Boolean);
    const need = Number(this.getAttribute('need')) || 0;
    const views = packageViews(this.#catalog, { currency: this.currency, only, featured: this.getAttribute('featured'), need, locale });
    // Redraw the buttons only when what they say changed (a gate sets `need` on every pushed
    // balance), and give focus back to the same package when one had it.
    const drawn = JSON.stringify(views);
    if (drawn !== this.#drawn) this.#drawPackages(views, drawn);
    const rate = this.#catalog.pay_as_you_go?.credits_per_unit?.[this.currency];
    e.payg.hidden = !rate || this.getAttribute('pay-as-you-go') === 'off';
    if (!e.payg.hidden) {
      e.paygLabel.textContent = `Or any amount (${this.currency.toUpperCase()})`;
      if (!e.input.value) e.input.value = this.#startAmount(rate, need);
      this.#renderPayg();
    }
  }

  #drawPackages(views, drawn) {
    const e = this.#els;
    this.#drawn = drawn;
    const focused = this.shadowRoot.activeElement?.dataset?.package;
    e.packages.replaceChildren(
      ...views.map((v) =>
        h(
          'button',
          {
            part: 'package',
            type: 'button',
            className: `${v.featured ? 'featured' : ''}${v.short ? ' short' : ''}`,
            'data-package': v.id,
            'data-credits': v.credits,
            'aria-label': `${v.creditsText} for ${v.price}${v.featured ? ', most popular' : ''}${v.short ? ', not enough for this' : ''}`,
            disabled: this.#busy,
            onclick: (ev) => this.#buy({ package: v.id, currency: this.currency }, ev.currentTarget),
          },
          v.featured ? h('span', { part: 'badge', textContent: 'Most popular' }) : null,
          h('span', { part: 'credits', textContent: v.creditsText }),
          h('span', { part: 'price', textContent: v.price }),
          h('span', { part: 'per-credit', textContent: v.perCredit }),
        ),
      ),
    );
    if (focused) [...e.packages.children].find((b) => b.dataset.package === focused)?.focus();
  }

  /** What the amount field starts at: the minimum, or what covers `need` credits. */
  #startAmount(rate, need) {
    const cur = this.currency;
    const exp = currencyExponent(cur);
    const min = this.#catalog.pay_as_you_go.min_amount?.[cur] ?? 1;
    const cover = need > 0 ? Math.ceil((need * 10 ** exp) / rate) : 0;
    return (Math.max(min, cover) / 10 ** exp).toFixed(exp);
  }

  #renderPayg() {
    const e = this.#els;
    const cur = this.currency;
    const payg = this.#catalog?.pay_as_you_go;
    const rate = payg?.credits_per_unit?.[cur];
    if (!rate) return;
    const amount = parseMoney(e.input.value, cur);
    const min = payg.min_amount?.[cur] ?? 1;
    const credits = amount === null ? 0 : paygCredits(amount, rate, cur);
    const ok = amount !== null && amount >= min && credits >= 1;
    e.input.setAttribute('aria-invalid', String(!ok));
    e.paygCredits.textContent = ok ? `= ${formatCredits(credits, this.locale)} credits` : `From ${formatMoney(min, cur, this.locale)}`;
    e.paygBuy.disabled = !ok || this.#busy;
    e.paygBuy.textContent = ok ? `Buy for ${formatMoney(amount, cur, this.locale)}` : 'Buy';
  }
}

define('credit-purchase', CreditPurchase);

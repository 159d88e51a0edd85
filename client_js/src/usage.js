// <credit-usage>: the plan's usage dashboard, live: plan name, the allowance bar (amber
// from 80 % used, red at 100 %), a bar per operation the plan limits, and the reset date.
//
//   <credit-usage token-url="/api/balance-token"></credit-usage>
//
// Attributes: token-url, api-url, ws-url (see base.js), locale.
// Property `session`; property `operationLabel` (operation id → words; default
// "generate_video" → "Generate video").
// Reflected on the host: plan="<id>" (empty without one), level="ok|warn|out" (the
// allowance's). Parts: title, plan, allowance, allowance-label, allowance-text, bar, fill,
// limits, limit, limit-label, limit-text, reset, empty.
// CSS: --credit-accent, --credit-warn, --credit-danger, --credit-track, --credit-bar-height.
// Event: credit-usage-update (detail: the GET /v1/me/plan body) after every read.
// Data: GET /v1/me/plan, read again after each pushed change of the account, at most once
// a second (feeds.js PlanFeed), shared with every other dashboard and usePlan() on the page.

import { CreditElement, define, h } from './base.js';
import { planFeed } from './feeds.js';
import { formatCredits, shortDate, usageLevel } from './format.js';

const STYLE = `
:host { min-width: 14em; }
.head { display: flex; justify-content: space-between; align-items: baseline; gap: 1em; margin-bottom: .75em; }
[part=title] { font-weight: 600; }
[part=plan] {
  font-size: .85em; font-weight: 600; text-transform: capitalize; padding: .15em .6em; border-radius: 999px;
  background: color-mix(in srgb, var(--_accent) 15%, transparent); color: var(--_accent);
}
.row { display: flex; justify-content: space-between; gap: 1em; font-size: .9em; margin: .6em 0 .3em; }
.row :last-child { color: var(--_muted); }
[part=bar] { height: var(--credit-bar-height, 8px); border-radius: 999px; background: var(--_track); overflow: hidden; }
[part=fill] { display: block; height: 100%; width: var(--used, 0%); background: var(--_accent); border-radius: inherit; transition: width .4s ease, background-color .4s; }
[data-level=warn] [part=fill] { background: var(--_warn); }
[data-level=out] [part=fill] { background: var(--_danger); }
[part=limits] { list-style: none; margin: .75em 0 0; padding: 0; }
[part=limits]:empty { display: none; }
[part=reset], [part=empty] { font-size: .85em; color: var(--_muted); margin: .75em 0 0; }
`;

/** "generate_video" → "Generate video". */
export function operationName(op) {
  const words = String(op).replace(/[_.:-]+/g, ' ').trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** What the dashboard shows for a GET /v1/me/plan body (null: not read yet). */
export function usageView(plan, { locale, label = operationName } = {}) {
  if (!plan) return { known: false, plan: null };
  if (!plan.plan) return { known: true, plan: null };
  const used = plan.allowance - plan.allowance_remaining;
  const allowance = {
    ...usageLevel(used, plan.allowance),
    text: `${formatCredits(plan.allowance_remaining, locale)} of ${formatCredits(plan.allowance, locale)} left`,
    valueText: `${formatCredits(Math.max(0, used), locale)} of ${formatCredits(plan.allowance, locale)} credits used`,
  };
  const limits = Object.entries(plan.limits ?? {}).map(([op, { limit, used: n }]) => ({
    op,
    label: label(op),
    ...usageLevel(n, limit),
    text: `${formatCredits(n, locale)} of ${formatCredits(limit, locale)}`,
    valueText: `${formatCredits(n, locale)} of ${formatCredits(limit, locale)} used`,
  }));
  return { known: true, plan: plan.plan, allowance, limits, resets: plan.period_end ? `Resets ${shortDate(plan.period_end, locale)}` : '' };
}

let ids = 0;

export class CreditUsage extends CreditElement {
  static observedAttributes = [...CreditElement.sessionAttributes, 'locale'];

  #operationLabel = operationName;
  #plan = null;
  #els;

  constructor() {
    super(STYLE);
    const id = `u${++ids}`;
    const e = (this.#els = {
      plan: h('span', { part: 'plan' }),
      allowance: h('div', { part: 'allowance', hidden: true }),
      text: h('span', { part: 'allowance-text', 'aria-live': 'polite' }),
      bar: h('div', { part: 'bar', role: 'progressbar', 'aria-labelledby': `${id}-label`, 'aria-valuemin': 0, 'aria-valuemax': 100 }, h('span', { part: 'fill' })),
      limits: h('ul', { part: 'limits', 'aria-label': 'Limits this period' }),
      reset: h('p', { part: 'reset' }),
      empty: h('p', { part: 'empty', textContent: 'Loading…' }),
      error: h('p', { className: 'error', role: 'alert' }),
    });
    e.allowance.append(h('div', { className: 'row' }, h('span', { part: 'allowance-label', id: `${id}-label`, textContent: 'Plan allowance' }), e.text), e.bar);
    this.shadowRoot.append(h('div', { className: 'head' }, h('span', { part: 'title', textContent: 'Usage' }), e.plan), e.allowance, e.limits, e.reset, e.empty, e.error);
  }

  /** Operation id → what people read; replace it to name operations your way. */
  get operationLabel() {
    return this.#operationLabel;
  }

  set operationLabel(fn) {
    this.#operationLabel = fn;
    this.render();
  }

  /** The last GET /v1/me/plan body (null before the first read). */
  get plan() {
    return this.#plan;
  }

  started(session) {
    return [
      planFeed(session).subscribe(({ plan, error }) => {
        const changed = plan !== this.#plan;
        this.#plan = plan;
        this.#els.error.textContent = error && !plan ? `Usage could not be loaded (${error.message}).` : '';
        this.render();
        if (changed && plan) this.emit('credit-usage-update', plan);
      }),
      () => (this.#plan = null), // the next session (or none) starts from nothing
    ];
  }

  render() {
    if (!this.#els) return;
    const e = this.#els;
    const v = usageView(this.#plan, { locale: this.locale, label: this.operationLabel });
    this.setAttribute('plan', v.plan ?? '');
    e.plan.hidden = !v.plan;
    e.plan.textContent = v.plan ?? '';
    e.allowance.hidden = !v.plan;
    e.reset.textContent = v.plan ? v.resets : '';
    e.empty.textContent = !v.known ? 'Loading…' : v.plan ? '' : 'No plan. Credits are spent from your balance.';
    e.empty.hidden = !e.empty.textContent;
    if (!v.plan) {
      this.removeAttribute('level');
      e.limits.replaceChildren();
      return;
    }
    this.setAttribute('level', v.allowance.level);
    setBar(e.allowance, e.bar, v.allowance);
    e.text.textContent = v.allowance.text;
    e.limits.replaceChildren(
      ...v.limits.map((l, i) => {
        const labelId = `${e.bar.getAttribute('aria-labelledby')}-l${i}`;
        const bar = h('div', { part: 'bar', role: 'progressbar', 'aria-labelledby': labelId, 'aria-valuemin': 0, 'aria-valuemax': 100 }, h('span', { part: 'fill' }));
        const li = h('li', { part: 'limit', 'data-op': l.op }, h('div', { className: 'row' }, h('span', { part: 'limit-label', id: labelId, textContent: l.label }), h('span', { part: 'limit-text', textContent: l.text })), bar);
        setBar(li, bar, l);
        return li;
      }),
    );
  }
}

function setBar(box, bar, { level, percent, valueText }) {
  box.dataset.level = level;
  box.style.setProperty('--used', `${percent}%`);
  bar.setAttribute('aria-valuenow', String(percent));
  bar.setAttribute('aria-valuetext', valueText);
}

define('credit-usage', CreditUsage);

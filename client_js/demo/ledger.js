// The credits activity list: transactions grouped by local day, with a total per day.

const KINDS = {
  grant: { label: 'Welcome credits', icon: '✦' },
  purchase: { label: 'Credits purchased', icon: '+' },
  usage: { label: 'Used', icon: '↯' },
  refund: { label: 'Refund', icon: '↺' },
  reversal: { label: 'Payment reversed', icon: '⤺' },
  adjustment: { label: 'Adjustment', icon: '±' },
  expiry: { label: 'Credits expired', icon: '⌛' },
  allowance: { label: 'Plan allowance', icon: '↻' },
};

const dayKey = (d) => `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;

/** [{key, label, total, items}] newest day first; `transactions` come newest first. */
export function groupByDay(transactions, { now = new Date(), locale } = {}) {
  const yesterday = new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1);
  const names = { [dayKey(now)]: 'Today', [dayKey(yesterday)]: 'Yesterday' };
  const fmt = new Intl.DateTimeFormat(locale, { weekday: 'short', month: 'short', day: 'numeric' });
  const groups = new Map();
  for (const t of transactions) {
    const at = new Date(t.created_at);
    const key = dayKey(at);
    if (!groups.has(key)) groups.set(key, { key, label: names[key] ?? fmt.format(at), total: 0, items: [] });
    const g = groups.get(key);
    g.total += t.amount;
    g.items.push(t);
  }
  return [...groups.values()];
}

/** "+1,200" / "−40": a real minus sign, and a plus so gains read as gains. */
export function signed(n, locale) {
  const abs = new Intl.NumberFormat(locale).format(Math.abs(n));
  return n > 0 ? `+${abs}` : n < 0 ? `−${abs}` : abs;
}

function h(tag, props = {}, ...children) {
  const el = Object.assign(document.createElement(tag), props);
  el.append(...children.filter((c) => c != null));
  return el;
}

/** Replace the list in `container` (text only through textContent: reasons are user data).
 * `title(reason)` may name a reason for people (a charge's reason is its operation id). */
export function renderLedger(container, transactions, { locale, title = (reason) => reason } = {}) {
  const time = new Intl.DateTimeFormat(locale, { hour: 'numeric', minute: '2-digit' });
  const count = new Intl.NumberFormat(locale);
  if (!transactions.length) {
    container.replaceChildren(h('p', { className: 'empty', textContent: 'No activity yet.' }));
    return;
  }
  container.replaceChildren(
    ...groupByDay(transactions, { locale }).map((g) =>
      h(
        'section',
        { className: 'day' },
        h('header', { className: 'day-head' }, h('h3', { textContent: g.label }), h('span', { className: `day-total ${g.total < 0 ? 'neg' : 'pos'}`, textContent: signed(g.total, locale) })),
        h(
          'ol',
          { className: 'rows' },
          ...g.items.map((t) => {
            const kind = KINDS[t.kind] ?? { label: t.kind, icon: '•' };
            return h(
              'li',
              { className: `row kind-${t.kind}` },
              h('span', { className: 'row-icon', textContent: kind.icon, ariaHidden: 'true' }),
              h('span', { className: 'row-main' }, h('span', { className: 'row-title', textContent: (t.reason && title(t.reason)) || kind.label }), h('span', { className: 'row-meta', textContent: `${time.format(new Date(t.created_at))} · ${kind.label}` })),
              h('span', { className: 'row-amounts' }, h('span', { className: `row-amount ${t.amount < 0 ? 'neg' : 'pos'}`, textContent: signed(t.amount, locale) }), h('span', { className: 'row-after', textContent: `${count.format(t.balance_after)} left` })),
            );
          }),
        ),
      ),
    ),
  );
}

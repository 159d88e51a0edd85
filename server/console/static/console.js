// The operator console: sign in with a service key (sent once, never kept by the page),
// then the ordinary /v1 API with the session cookie and, for every mutation, the CSRF token
// the sign-in answered. No framework: DOM built by `h()`, a hash router, one <dialog>.

import { watchBalance } from './live.js';

const main = document.getElementById('main');
const dialog = document.getElementById('dialog');
const SCOPES = ['read', 'spend', 'admin'];
const fmt = new Intl.NumberFormat('en-US');
const PAGE = 25;

let session = null; // {name, scope, csrf, expires_at} from /console/session
let leave = () => {}; // what the current page stops when another one opens (its socket)
let catalog = null;

// ---------------------------------------------------------------- helpers

/** An element with attributes (on* as listeners) and children (strings become text). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'class') el.className = value;
    else if (name in el && typeof value !== 'string') el[name] = value;
    else el.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const credits = (n) => (n === null || n === undefined ? '—' : fmt.format(n));
const signed = (n) => (n > 0 ? `+${fmt.format(n)}` : n < 0 ? `−${fmt.format(-n)}` : '0');
const when = (iso) => (iso ? new Date(iso).toLocaleString('en-GB', { timeZone: 'UTC', dateStyle: 'medium', timeStyle: 'short' }) + ' UTC' : '—');
const enc = encodeURIComponent;

/** Whether the signed-in key's scope allows what `needed` does. */
const allows = (needed) => session && SCOPES.indexOf(session.scope) >= SCOPES.indexOf(needed);

class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error || 'http_error';
  }
}

/**
 * A call to the server with the session cookie; mutations carry the CSRF token, and an
 * operator's `reason` goes to the audit log (X-Audit-Reason, percent-encoded UTF-8).
 */
async function api(method, path, body, reason) {
  const headers = { accept: 'application/json' };
  if (method !== 'GET') headers['x-csrf-token'] = session?.csrf ?? '';
  if (reason) headers['x-audit-reason'] = encodeURIComponent(reason);
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    if (res.status === 401 && session && !path.startsWith('/console/session')) {
      session = null;
      showSignIn('Your session ended; sign in again.');
    }
    throw new ApiError(res.status, data);
  }
  return data;
}

/** An error as the operator should read it: the code, then the server's message. */
const errorText = (err) => (err instanceof ApiError ? `${err.code}: ${err.message}` : String(err?.message ?? err));
const errorBox = (err) => h('p', { class: 'error', role: 'alert' }, errorText(err));

function toast(text) {
  const el = document.getElementById('toast');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.hidden = true), 4000);
}

/** A section filled by `load()`, showing its error in place of its content. */
function section(title, load, { id, actions } = {}) {
  const body = h('div', { class: 'section-body' }, h('p', { class: 'muted' }, 'Loading…'));
  const el = h('section', { class: 'card', id }, h('header', {}, h('h2', {}, title), actions), body);
  el.reload = async () => {
    try {
      const content = await load();
      body.replaceChildren(...[content].flat());
    } catch (err) {
      body.replaceChildren(errorBox(err));
    }
  };
  el.reload();
  return el;
}

function table(columns, rows, empty = 'Nothing here.') {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h(
    'table',
    {},
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.num ? 'num' : null }, c.title)))),
    h('tbody', {}, rows.map((row) => h('tr', {}, columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.cell(row)))))),
  );
}

// ---------------------------------------------------------------- dialogs

/**
 * An action in the dialog: its form, then a confirm step saying what will happen, then
 * the call. The idempotency key is made once per opening, so a double click or a retry
 * after an error sends the same request.
 */
function action({ title, fields = [], summary, submit, danger = false }) {
  const key = crypto.randomUUID();
  // novalidate: the checks below say what is wrong in words, in the dialog itself.
  const form = h('form', { method: 'dialog', class: 'form', novalidate: true });
  const inputs = {};
  for (const f of fields) {
    const input =
      f.options !== undefined
        ? h('select', { name: f.name, required: f.required }, f.options.map(([value, label]) => h('option', { value, selected: value === f.value }, label)))
        : f.multiline
          ? h('textarea', { name: f.name, required: f.required, rows: 2, maxlength: 200, placeholder: f.placeholder })
          : h('input', { name: f.name, type: f.type ?? 'text', required: f.required, value: f.value ?? '', placeholder: f.placeholder, step: f.type === 'number' ? '1' : null, min: f.min });
    inputs[f.name] = input;
    form.append(h('label', {}, h('span', {}, f.label), input, f.hint ? h('small', { class: 'muted' }, f.hint) : null));
  }
  const error = h('div', {});
  const step = h('div', {});
  const cancel = h('button', { type: 'button', class: 'secondary', onclick: () => dialog.close() }, 'Cancel');
  const next = h('button', { type: 'submit', 'data-step': 'review' }, 'Review');
  const buttons = h('div', { class: 'buttons' }, cancel, next);
  form.append(step, error, buttons);

  const values = () => Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value.trim()]));
  let confirming = false;
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.replaceChildren();
    if (!confirming) {
      let text;
      try {
        text = summary(values());
      } catch (err) {
        error.replaceChildren(errorBox(err));
        return;
      }
      confirming = true;
      for (const el of Object.values(inputs)) el.disabled = true;
      step.replaceChildren(h('p', { class: danger ? 'confirm danger' : 'confirm' }, text));
      next.textContent = 'Confirm';
      next.dataset.step = 'confirm';
      next.focus();
      return;
    }
    next.disabled = true;
    next.textContent = 'Working…';
    try {
      const answer = await submit(values(), key);
      dialog.close();
      if (answer?.message) toast(answer.message);
      answer?.after?.();
    } catch (err) {
      error.replaceChildren(errorBox(err));
      next.textContent = 'Try again';
    } finally {
      next.disabled = false;
    }
  });
  dialog.replaceChildren(h('h2', {}, title), form);
  dialog.showModal();
  (Object.values(inputs)[0] ?? next).focus();
}

const mustBeReason = (v) => {
  if (!v.reason) throw new Error('Give a reason: it is kept with the change.');
  return v.reason;
};

const mustBeInt = (text, { positive = false } = {}) => {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n === 0 || (positive && n < 0)) throw new Error(positive ? 'The amount must be a whole number above 0.' : 'The amount must be a whole number other than 0 (negative takes credits).');
  return n;
};

// ---------------------------------------------------------------- sign-in

function showSignIn(message) {
  leave();
  document.getElementById('top').hidden = true;
  const keyInput = h('input', { type: 'password', name: 'key', autocomplete: 'off', required: true, placeholder: 'sk_…', 'aria-label': 'Operator key' });
  const error = h('div', {}, message ? h('p', { class: 'muted' }, message) : null);
  const form = h(
    'form',
    { class: 'card signin', id: 'signin' },
    h('h1', {}, 'balance-server console'),
    h('label', {}, h('span', {}, 'Operator key'), keyInput, h('small', { class: 'muted' }, 'Exchanged for a 30-minute session; this page does not keep it.')),
    error,
    h('div', { class: 'buttons' }, h('button', { type: 'submit' }, 'Sign in')),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = keyInput.value;
    keyInput.value = ''; // sent once, kept nowhere
    try {
      session = await api('POST', '/console/session', { key });
      start();
    } catch (err) {
      error.replaceChildren(errorBox(err));
    }
  });
  main.replaceChildren(form);
  keyInput.focus();
}

async function signOut() {
  try {
    await api('DELETE', '/console/session');
  } catch {
    // the cookie is gone or expired already
  }
  session = null;
  location.hash = '';
  showSignIn('Signed out.');
}

function start() {
  document.getElementById('top').hidden = false;
  document.getElementById('who-name').textContent = session.name;
  const scope = document.getElementById('who-scope');
  scope.textContent = session.scope;
  scope.dataset.scope = session.scope;
  if (!location.hash || location.hash === '#/') location.hash = '#/accounts';
  else route();
}

// ---------------------------------------------------------------- router

function route() {
  if (!session) return;
  leave();
  leave = () => {};
  const [path, query = ''] = location.hash.slice(1).split('?');
  const params = new URLSearchParams(query);
  const parts = path.split('/').filter(Boolean);
  for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === (parts[0] === 'account' ? 'accounts' : parts[0]));
  if (parts[0] === 'account' && parts[1]) accountPage(decodeURIComponent(parts[1]));
  else if (parts[0] === 'review') reviewPage();
  else accountsPage(params.get('q') ?? '');
}

// ---------------------------------------------------------------- accounts

function accountsPage(prefix) {
  const input = h('input', { type: 'search', name: 'q', value: prefix, placeholder: 'Account id or its beginning', 'aria-label': 'Account id prefix', autocomplete: 'off' });
  const results = h('div', {});
  const cursors = [null]; // the cursor of each page seen, to go back
  let page = 0;

  async function load() {
    results.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (input.value.trim()) q.set('prefix', input.value.trim());
    if (cursors[page]) q.set('cursor', cursors[page]);
    try {
      const data = await api('GET', `/v1/accounts?${q}`);
      cursors[page + 1] = data.next_cursor;
      const open = input.value.trim();
      results.replaceChildren(
        table(
          [
            { title: 'Account', cell: (a) => h('a', { href: `#/account/${enc(a.account_id)}` }, a.account_id) },
            { title: 'Balance', num: true, cell: (a) => credits(a.balance) },
            { title: 'Available', num: true, cell: (a) => credits(a.available) },
            { title: 'Plan', cell: (a) => a.plan ?? '—' },
            { title: 'Last change', cell: (a) => when(a.updated_at) },
          ],
          data.accounts,
          'No account matches.',
        ),
        h(
          'div',
          { class: 'pager' },
          h('button', { type: 'button', class: 'secondary', disabled: page === 0, onclick: () => (page--, load()) }, '← Newer'),
          h('span', { class: 'muted' }, `Page ${page + 1}`),
          h('button', { type: 'button', class: 'secondary', disabled: !data.next_cursor, onclick: () => (page++, load()) }, 'Older →'),
          open && !data.accounts.some((a) => a.account_id === open) ? h('a', { class: 'open-exact', href: `#/account/${enc(open)}` }, `Open “${open}”`) : null,
        ),
      );
    } catch (err) {
      results.replaceChildren(errorBox(err));
    }
  }

  const form = h('form', { class: 'search', role: 'search' }, input, h('button', { type: 'submit' }, 'Search'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    cursors.length = 1;
    page = 0;
    history.replaceState(null, '', `#/accounts?q=${enc(input.value.trim())}`);
    load();
  });
  main.replaceChildren(h('div', { class: 'page' }, h('h1', {}, 'Accounts'), form, h('section', { class: 'card' }, results)));
  load();
  input.focus();
}

// ---------------------------------------------------------------- one account

function accountPage(id) {
  const path = `/v1/accounts/${enc(id)}`;
  const live = {
    balance: h('strong', { id: 'live-balance' }, '…'),
    available: h('strong', { id: 'live-available' }, '…'),
    held: h('strong', { id: 'live-held' }, '…'),
    state: h('span', { class: 'live-state', id: 'live-state' }, 'connecting'),
    change: h('span', { class: 'muted', id: 'live-change' }),
  };
  const show = (a) => {
    live.balance.textContent = credits(a.balance);
    live.available.textContent = credits(a.available);
    live.held.textContent = credits(a.held);
    live.available.classList.toggle('low', Boolean(a.low));
  };
  const sections = {};
  const refresh = (...names) => names.forEach((n) => sections[n]?.reload());

  const buttons = [];
  if (allows('admin')) {
    buttons.push(
      h('button', { type: 'button', 'data-action': 'adjust', onclick: () => adjustDialog(id, refresh) }, 'Adjust'),
      h('button', { type: 'button', 'data-action': 'credit', onclick: () => creditDialog(id, refresh) }, 'Credit'),
      h('button', { type: 'button', 'data-action': 'plan', onclick: () => planDialog(id, refresh) }, 'Change plan'),
    );
  }

  const head = h(
    'section',
    { class: 'card balance' },
    h('div', { class: 'title' }, h('h1', {}, id), live.state),
    h('dl', {}, h('div', {}, h('dt', {}, 'Balance'), h('dd', {}, live.balance)), h('div', {}, h('dt', {}, 'Available'), h('dd', {}, live.available)), h('div', {}, h('dt', {}, 'Held'), h('dd', {}, live.held))),
    live.change,
    buttons.length ? h('div', { class: 'actions' }, buttons) : null,
  );

  sections.account = { reload: async () => show(await api('GET', path)) };
  sections.ledger = ledgerSection(path);
  sections.usage = section('Usage, last 30 days (UTC)', () => usageChart(path), { id: 'usage' });
  sections.plan = section('Plan and allowance', () => planView(path));
  sections.settings = section('Alerts and auto top-up', () => settingsView(path));
  sections.grants = section('Grants', async () => grantsView((await api('GET', `${path}/grants`)).grants), { id: 'grants' });
  sections.holds = section('Active holds', async () => holdsView((await api('GET', `${path}/holds`)).holds, refresh), { id: 'holds' });
  const openEvents = new Set(); // the events unfolded, kept unfolded when the list reloads
  sections.events = section('Events and deliveries', () => eventsView(id, refresh, openEvents), { id: 'events' });
  sections.audit = section('Operator actions', () => auditView(id), { id: 'audit' });

  main.replaceChildren(
    h(
      'div',
      { class: 'page account' },
      h('p', {}, h('a', { href: '#/accounts' }, '← Accounts')),
      head,
      h('div', { class: 'grid' }, sections.plan, sections.settings),
      sections.usage,
      sections.ledger,
      h('div', { class: 'grid' }, sections.grants, sections.holds),
      sections.events,
      sections.audit,
    ),
  );
  sections.account.reload().catch((err) => head.append(errorBox(err)));

  const stop = watchBalance(id, {
    token: async () => (await api('POST', '/console/token', { account_id: id })).token,
    onState: (state) => {
      live.state.textContent = state;
      live.state.dataset.state = state;
    },
    onFrame: (frame) => {
      show(frame);
      if (frame.change) {
        live.change.textContent = `Last change: ${signed(frame.change.amount)} ${frame.change.kind}${frame.change.reason ? ` (${frame.change.reason})` : ''}`;
        refresh('ledger', 'grants', 'holds', 'plan', 'usage', 'settings', 'events', 'audit');
      }
    },
  });
  leave = stop;
}

function ledgerSection(path) {
  let before = [null];
  let page = 0;
  const el = section('Ledger', async () => {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (before[page]) q.set('before', before[page]);
    const data = await api('GET', `${path}/transactions?${q}`);
    before[page + 1] = data.next;
    return [
      table(
        [
          { title: '#', num: true, cell: (t) => t.id },
          { title: 'When', cell: (t) => when(t.created_at) },
          { title: 'Kind', cell: (t) => t.kind },
          { title: 'Reason', cell: (t) => t.reason ?? '' },
          { title: 'Amount', num: true, cell: (t) => h('span', { class: t.amount < 0 ? 'neg' : 'pos' }, signed(t.amount)) },
          { title: 'Balance after', num: true, cell: (t) => credits(t.balance_after) },
        ],
        data.transactions,
        'No transactions yet.',
      ),
      h(
        'div',
        { class: 'pager' },
        h('button', { type: 'button', class: 'secondary', disabled: page === 0, onclick: () => (page--, el.reload()) }, '← Newer'),
        h('span', { class: 'muted' }, `Page ${page + 1}`),
        h('button', { type: 'button', class: 'secondary', disabled: !data.next, onclick: () => (page++, el.reload()) }, 'Older →'),
      ),
    ];
  }, { id: 'ledger' });
  // A live change starts over from the newest page, where it lands.
  const reload = el.reload;
  el.reload = () => {
    if (page !== 0) return Promise.resolve();
    before = [null];
    return reload();
  };
  return el;
}

async function planView(path) {
  const p = await api('GET', `${path}/plan`);
  if (!p.plan) return h('p', { class: 'muted' }, 'No plan.');
  const limits = Object.entries(p.limits);
  return [
    h(
      'dl',
      { class: 'facts' },
      h('dt', {}, 'Plan'), h('dd', {}, p.plan, p.status === 'past_due' ? [' ', h('span', { class: 'badge warn' }, 'past due')] : null),
      ...(p.subscription ? [
        h('dt', {}, 'Follows'),
        h('dd', {}, `${p.subscription.provider} subscription ${p.subscription.id}${p.subscription.cancel_at ? `, ends ${when(p.subscription.cancel_at)}` : ''}`),
      ] : []),
      h('dt', {}, 'Period'), h('dd', {}, `${p.period}: ${when(p.period_start)} → ${when(p.period_end)}`),
      h('dt', {}, 'Allowance left'), h('dd', {}, `${credits(p.allowance_remaining)} of ${credits(p.allowance)}`),
      h('dt', {}, 'Rollover'), h('dd', {}, credits(p.rollover)),
    ),
    limits.length ? table([{ title: 'Limited operation', cell: ([op]) => op }, { title: 'Used', num: true, cell: ([, l]) => `${l.used} / ${l.limit}` }], limits) : null,
  ];
}

async function settingsView(path) {
  const [account, settings] = await Promise.all([api('GET', path), api('GET', `${path}/settings`)]);
  const top = settings.auto_top_up;
  const facts = h(
    'dl',
    { class: 'facts' },
    h('dt', {}, 'Low now'), h('dd', {}, account.low ? h('span', { class: 'badge warn' }, 'low') : 'no'),
    h('dt', {}, 'Low below'), h('dd', {}, settings.threshold === null ? 'no alert' : `${credits(settings.threshold)} (${settings.threshold_from === 'account' ? 'its own' : settings.threshold_from})`),
    h('dt', {}, 'Auto top-up'), h('dd', {}, top ? `${top.package} when below ${credits(top.threshold)}${top.target === null ? '' : `, up to ${credits(top.target)}`}${top.enabled ? '' : ' (stopped after declines)'}` : 'off'),
    h('dt', {}, 'Spend cap'), h('dd', {}, settings.limits?.spend ? `${credits(settings.limits.spend.used + settings.limits.spend.held)} of ${credits(settings.limits.spend.amount)} a ${settings.limits.spend.period} (resets ${when(settings.limits.spend.resets_at)})` : 'none'),
    ...(top && top.monthly_limit !== null ? [
      h('dt', {}, 'This month'),
      h('dd', {}, `${money(top.spent_this_month, top.currency)} of ${money(top.monthly_limit, top.currency)}${top.paused_until ? ` (limit reached: paused until ${top.paused_until.slice(0, 10)})` : ''}`),
    ] : []),
  );
  let changes = [];
  try {
    const audit = await api('GET', `/v1/audit?account_id=${enc(account.account_id)}&limit=50`);
    changes = audit.entries.filter((e) => e.action === 'alerts' || e.action === 'auto_top_up').slice(0, 5);
  } catch {
    // an older server without the audit log: the facts above are all there is
  }
  return [
    facts,
    changes.length
      ? table([{ title: 'Set', cell: (e) => when(e.at) }, { title: 'What', cell: (e) => e.action }, { title: 'To', cell: (e) => JSON.stringify(e.detail ?? null) }, { title: 'By', cell: (e) => e.actor }], changes)
      : h('p', { class: 'muted' }, 'No change of these settings recorded.'),
  ];
}

function grantsView(grants) {
  return table(
    [
      { title: 'Kind', cell: (g) => g.kind },
      { title: 'Remaining', num: true, cell: (g) => `${credits(g.remaining)} / ${credits(g.amount)}` },
      { title: 'Priority', num: true, cell: (g) => g.priority },
      { title: 'Expires', cell: (g) => (g.expires_at ? when(g.expires_at) : 'never') },
    ],
    grants,
    'No open grants.',
  );
}

function holdsView(holds, refresh) {
  const columns = [
    { title: 'Amount', num: true, cell: (x) => credits(x.amount) },
    { title: 'For', cell: (x) => x.operation ? `${x.operation} × ${x.quantity}` : (x.reason ?? '') },
    { title: 'Expires', cell: (x) => when(x.expires_at) },
  ];
  if (allows('spend')) {
    columns.push({ title: '', cell: (x) => h('button', { type: 'button', class: 'small', 'data-action': 'release', onclick: () => releaseDialog(x, refresh) }, 'Release') });
  }
  return table(columns, holds, 'No active holds.');
}

async function eventsView(id, refresh, openEvents) {
  const data = await api('GET', `/v1/events?account_id=${enc(id)}&limit=20`);
  if (!data.events.length) return h('p', { class: 'muted' }, 'No events for this account.');
  return h('div', { class: 'events' }, data.events.map((e) => eventRow(e, refresh, openEvents)));
}

function eventRow(e, refresh, openEvents) {
  const attempts = e.attempt_log.map((a) =>
    h('li', {}, `#${a.attempt} ${when(a.at)} — `, a.status === null ? 'no answer' : `HTTP ${a.status}`, a.latency_ms !== null ? ` in ${a.latency_ms} ms` : '', a.error ? h('span', { class: 'error-text' }, ` ${a.error}`) : ''),
  );
  const retry =
    allows('admin') && e.status !== 'delivered'
      ? h('button', { type: 'button', class: 'small', 'data-action': 'retry', onclick: () => retryDialog(e, refresh) }, 'Retry')
      : null;
  return h(
    'details',
    { class: 'event', 'data-event': e.id, open: openEvents.has(e.id), ontoggle: (ev) => (ev.target.open ? openEvents.add(e.id) : openEvents.delete(e.id)) },
    h('summary', {}, h('span', { class: `badge ${e.status}` }, e.status), ` ${e.type} `, h('span', { class: 'muted' }, `#${e.id} · ${when(e.created_at)} · ${e.attempts} attempt${e.attempts === 1 ? '' : 's'}`), retry),
    attempts.length ? h('ol', { class: 'attempts' }, attempts) : h('p', { class: 'muted' }, 'Not attempted yet.'),
    h('pre', {}, JSON.stringify(e.data, null, 2)),
  );
}

async function auditView(id) {
  const data = await api('GET', `/v1/audit?account_id=${enc(id)}&limit=20`);
  return table(
    [
      { title: 'When', cell: (e) => when(e.at) },
      { title: 'Who', cell: (e) => e.actor },
      { title: 'Action', cell: (e) => e.action },
      { title: 'Detail', cell: (e) => (e.detail ? JSON.stringify(e.detail) : '') },
    ],
    data.entries,
    'No operator actions on this account.',
  );
}

// ---------------------------------------------------------------- usage chart

async function usageChart(path) {
  const until = new Date();
  const since = new Date(Date.UTC(until.getUTCFullYear(), until.getUTCMonth(), until.getUTCDate() - 29));
  const q = new URLSearchParams({ group_by: 'day,reason', since: since.toISOString() });
  let groups;
  try {
    ({ groups } = await api('GET', `${path}/usage?${q}`));
  } catch (err) {
    if (err.code !== 'invalid_request') throw err;
    // A server without group_by=day,reason: one series for every operation.
    q.set('group_by', 'day');
    groups = (await api('GET', `${path}/usage?${q}`)).groups.map((g) => ({ ...g, reason: 'all operations' }));
  }
  if (!groups.length) return h('p', { class: 'muted' }, 'No usage in the last 30 days.');
  const days = [];
  for (let d = since.getTime(); d <= until.getTime(); d += 86_400_000) days.push(d / 1000);
  const dayIndex = new Map(days.map((t, i) => [new Date(t * 1000).toISOString().slice(0, 10), i]));
  const byOp = new Map();
  for (const g of groups) {
    if (!byOp.has(g.reason)) byOp.set(g.reason, new Array(days.length).fill(0));
    const i = dayIndex.get(g.key);
    if (i !== undefined) byOp.get(g.reason)[i] += g.amount;
  }
  const ops = [...byOp.keys()].sort();
  // Stacked: each series draws the running total up to it, the tallest first so each
  // shorter one paints over it; the legend shows each operation's own amount.
  const own = ops.map((op) => byOp.get(op));
  const stacked = own.map((_, i) => days.map((__, d) => own.slice(i).reduce((sum, s) => sum + s[d], 0) || null));
  const palette = ['#3563e9', '#e9a23b', '#2f9e6e', '#c2410c', '#7c3aed', '#0891b2', '#be185d', '#65a30d'];
  const box = h('div', { class: 'chart', id: 'usage-chart' });
  const total = own.reduce((sum, s) => sum + s.reduce((a, b) => a + b, 0), 0);
  requestAnimationFrame(() => {
    const width = Math.max(320, box.clientWidth || 800);
    // eslint-disable-next-line no-undef
    new uPlot(
      {
        width,
        height: 240,
        // Half a day each side, so the first and last days' bars are drawn whole.
        scales: { x: { time: true, range: (u, min, max) => [min - 43_200, max + 43_200] } },
        axes: [{}, { label: 'credits', size: 60 }],
        series: [
          { label: 'day (UTC)', value: (u, t) => (t == null ? '—' : new Date(t * 1000).toISOString().slice(0, 10)) },
          ...ops.map((op, i) => ({
            label: op,
            stroke: palette[i % palette.length],
            fill: palette[i % palette.length] + 'cc',
            width: 1,
            points: { show: false },
            paths: uPlot.paths.bars({ size: [0.7, 40] }),
            value: (u, v, si, idx) => (idx == null ? '—' : fmt.format(own[si - 1][idx])),
          })),
        ],
      },
      [days, ...stacked],
      box,
    );
  });
  return [box, h('p', { class: 'muted' }, `${credits(total)} credits over ${ops.length} operation${ops.length === 1 ? '' : 's'}.`)];
}

// ---------------------------------------------------------------- actions

async function loadCatalog() {
  catalog ??= await api('GET', '/v1/catalog');
  return catalog;
}

const done = (message, after) => ({ message, after });

function adjustDialog(id, refresh) {
  action({
    title: `Adjust ${id}`,
    fields: [
      { name: 'amount', label: 'Credits (+ adds, − takes)', type: 'number', required: true, placeholder: 'e.g. 50 or -20' },
      { name: 'reason', label: 'Reason', multiline: true, required: true, placeholder: 'Why, for whoever reads the ledger later' },
    ],
    summary: (v) => `${signed(mustBeInt(v.amount))} credits to ${id}, because “${mustBeReason(v)}”.`,
    submit: async (v, key) => {
      const r = await api('POST', `/v1/accounts/${enc(id)}/adjust`, { amount: mustBeInt(v.amount), reason: v.reason, actor: `console:${session.name}`, idempotency_key: key });
      return done(`Adjusted: balance ${credits(r.account.balance)}`, () => refresh('ledger', 'audit'));
    },
  });
}

function creditDialog(id, refresh) {
  action({
    title: `Credit ${id}`,
    fields: [
      { name: 'amount', label: 'Credits', type: 'number', min: '1', required: true },
      { name: 'kind', label: 'Kind', options: [['grant', 'grant'], ['refund', 'refund'], ['purchase', 'purchase']], value: 'grant' },
      { name: 'reason', label: 'Reason', multiline: true, required: true },
    ],
    summary: (v) => `Credit ${credits(mustBeInt(v.amount, { positive: true }))} credits (${v.kind}) to ${id}, because “${mustBeReason(v)}”.`,
    submit: async (v, key) => {
      const r = await api('POST', `/v1/accounts/${enc(id)}/credit`, { amount: mustBeInt(v.amount, { positive: true }), kind: v.kind, reason: v.reason, idempotency_key: key });
      return done(`Credited: balance ${credits(r.account.balance)}`, () => refresh('ledger', 'audit'));
    },
  });
}

async function planDialog(id, refresh) {
  let cat;
  try {
    cat = await loadCatalog();
  } catch (err) {
    toast(errorText(err));
    return;
  }
  const plans = Object.keys(cat.plans ?? {});
  action({
    title: `Change the plan of ${id}`,
    fields: [
      { name: 'plan', label: 'Plan', options: [['', 'none (remove the plan)'], ...plans.map((p) => [p, `${p} (${credits(cat.plans[p].allowance)} a period)`])] },
      { name: 'reason', label: 'Reason', multiline: true, required: true },
    ],
    summary: (v) => `${v.plan ? `Put ${id} on the plan “${v.plan}”` : `Remove the plan of ${id}`}, because “${mustBeReason(v)}”.`,
    submit: async (v, key) => {
      await api('PUT', `/v1/accounts/${enc(id)}/plan`, { plan: v.plan || null, idempotency_key: key }, v.reason);
      return done(v.plan ? `Plan: ${v.plan}` : 'Plan removed', () => refresh('plan', 'settings', 'audit'));
    },
  });
}

function releaseDialog(hold, refresh) {
  action({
    title: 'Release a hold',
    fields: [{ name: 'reason', label: 'Reason', multiline: true, required: true }],
    summary: (v) => `Release the hold of ${credits(hold.amount)} credits (${hold.id}), giving them back to ${hold.account_id}, because “${mustBeReason(v)}”.`,
    danger: true,
    submit: async (v) => {
      await api('POST', `/v1/holds/${enc(hold.id)}/release`, undefined, v.reason);
      return done('Hold released', () => refresh('holds', 'audit'));
    },
  });
}

function retryDialog(event, refresh) {
  action({
    title: `Retry event #${event.id}`,
    fields: [{ name: 'reason', label: 'Reason', multiline: true, required: true }],
    summary: (v) => `Deliver ${event.type} (#${event.id}, ${event.attempts} attempts so far) to the app's webhook again now, because “${mustBeReason(v)}”.`,
    submit: async (v) => {
      await api('POST', `/v1/events/${event.id}/retry`, undefined, v.reason);
      // Delivery takes a moment: look again until it has had time to land.
      return done(`Event #${event.id} queued again`, () => {
        refresh('events', 'audit');
        for (const ms of [1000, 3000, 6000]) setTimeout(() => refresh('events'), ms);
      });
    },
  });
}

// ---------------------------------------------------------------- review queue

function reviewPage() {
  const reload = () => {
    open.reload();
    resolved.reload();
  };
  const open = section('Payments that need review', async () => {
    const data = await api('GET', '/v1/payments?status=needs_review&limit=50');
    if (!data.payments.length) return h('p', { class: 'muted' }, 'Nothing to review.');
    return h('div', { class: 'reviews' }, data.payments.map((p) => reviewCard(p, reload)));
  }, { id: 'reviews' });
  const resolved = section('Resolved lately', async () => {
    const data = await api('GET', '/v1/payments?status=resolved&limit=20');
    if (!data.payments.length) return h('p', { class: 'muted' }, 'None yet.');
    return h('div', { class: 'reviews' }, data.payments.map((p) => reviewCard(p, reload)));
  }, { id: 'resolved' });
  main.replaceChildren(h('div', { class: 'page' }, h('h1', {}, 'Review queue'), open, resolved));
}

function money(minor, currency) {
  if (minor === null || minor === undefined || !currency) return '—';
  try {
    const digits = new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits;
    return new Intl.NumberFormat('en-US', { style: 'currency', currency }).format(minor / 10 ** digits);
  } catch {
    return `${minor} ${currency}`;
  }
}

function reviewCard(p, reload) {
  const r = p.review;
  const resolution = r?.resolution;
  const buttons =
    allows('admin') && r && !resolution
      ? h(
          'div',
          { class: 'actions' },
          h('button', { type: 'button', 'data-action': 'resolve', onclick: () => resolveDialog(p, reload) }, 'Resolve (credit)'),
          h('button', { type: 'button', class: 'secondary', 'data-action': 'dismiss', onclick: () => dismissDialog(p, reload) }, 'Dismiss'),
        )
      : null;
  return h(
    'article',
    { class: 'review', 'data-review': r?.id ?? '' },
    h('h3', {}, `${p.provider} ${p.payment_id ?? '(no payment id)'}`, ' ', h('span', { class: 'badge warn' }, p.status)),
    h(
      'dl',
      { class: 'facts' },
      h('dt', {}, 'Problem'), h('dd', {}, r?.problem ?? '—'),
      h('dt', {}, 'Paid'), h('dd', {}, money(p.amount_paid, p.currency)),
      h('dt', {}, 'Account'), h('dd', {}, p.account_id ? h('a', { href: `#/account/${enc(p.account_id)}` }, p.account_id) : 'none named'),
      h('dt', {}, 'Catalog credits'), h('dd', {}, p.credits === null ? 'cannot be priced' : credits(p.credits)),
      h('dt', {}, 'Received'), h('dd', {}, when(r?.received_at ?? p.created_at)),
      resolution ? [h('dt', {}, 'Resolved'), h('dd', { class: 'resolution' }, `${resolution.action} by ${resolution.actor} ${when(resolution.at)}${resolution.credits ? `: ${credits(resolution.credits)} credits to ${resolution.account_id}` : ''} — “${resolution.note}”`)] : null,
    ),
    buttons,
  );
}

function resolveDialog(p, reload) {
  const fields = [];
  if (!p.account_id) fields.push({ name: 'account_id', label: 'Account to credit', required: true, hint: 'The payment names none.' });
  fields.push(
    { name: 'credits', label: 'Credits', type: 'number', min: '1', value: p.credits ?? '', required: p.credits === null, hint: p.credits === null ? 'The catalog cannot price this payment: say how many.' : 'The catalog’s amount; change it only with a reason.' },
    { name: 'note', label: 'Note', multiline: true, required: true },
  );
  action({
    title: `Resolve ${p.provider} ${p.payment_id ?? ''}`,
    fields,
    summary: (v) => {
      if (!v.note) throw new Error('Write a note: it is kept with the resolution.');
      const account = p.account_id ?? v.account_id;
      if (!account) throw new Error('Name the account to credit.');
      return `Credit ${credits(mustBeInt(v.credits, { positive: true }))} credits to ${account} for this payment: “${v.note}”.`;
    },
    submit: async (v) => {
      const body = { note: v.note, credits: mustBeInt(v.credits, { positive: true }) };
      if (!p.account_id) body.account_id = v.account_id;
      const r = await api('POST', `/v1/payments/reviews/${p.review.id}/credit`, body);
      return done(`Resolved: ${r.account ? `balance of ${r.account.account_id} ${credits(r.account.balance)}` : 'credited'}`, reload);
    },
  });
}

function dismissDialog(p, reload) {
  action({
    title: `Dismiss ${p.provider} ${p.payment_id ?? ''}`,
    fields: [{ name: 'note', label: 'Note', multiline: true, required: true }],
    danger: true,
    summary: (v) => {
      if (!v.note) throw new Error('Write a note: it is kept with the resolution.');
      return `Dismiss this payment without crediting anyone: “${v.note}”.`;
    },
    submit: async (v) => {
      await api('POST', `/v1/payments/reviews/${p.review.id}/dismiss`, { note: v.note });
      return done('Dismissed', reload);
    },
  });
}

// ---------------------------------------------------------------- start

document.getElementById('sign-out').addEventListener('click', signOut);
window.addEventListener('hashchange', route);
try {
  session = await api('GET', '/console/session');
  start();
} catch {
  showSignIn();
}

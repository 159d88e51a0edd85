// Pixelmint: a small AI-image app, to show <credit-balance> and the push in context.
// The balance in the header, the toasts and the activity list all follow the
// WebSocket push; nothing here polls.

import '../client/element.js';
import { devApi } from './api.js';
import { renderLedger, signed } from './ledger.js';

// The catalog's packages (balance-server dev's catalog): checkout sells them by name.
const PACKS = [
  { package: 'starter', credits: 100, price: '$5', note: 'Starter' },
  { package: 'popular', credits: 500, price: '$20', note: 'Most popular', featured: true },
  { package: 'best_value', credits: 2000, price: '$60', note: 'Best value' },
];
const RESUME = 'pixelmint:after-purchase'; // the tool to run once back from checkout

const $ = (selector) => document.querySelector(selector);
const count = new Intl.NumberFormat();
const accountId = new URLSearchParams(location.search).get('account') || 'demo-user';
const api = devApi(accountId);

let available = null; // as last pushed; only hints at costs, the server decides
let ledgerVersion = 0; // the account version the activity list was last fetched for
let pending = null; // the tool to run again once credits are bought from the dialog
const dialog = $('#insufficient');

// ---------------------------------------------------------------- header

const balance = $('#balance');
balance.setAttribute('account', accountId);
balance.token = api.token; // a fresh token on every (re)connect, so a restarted server is fine
$('#avatar').textContent = accountId.replace(/[^a-z0-9]/gi, '').slice(0, 2).toUpperCase() || '?';
$('#avatar').title = accountId;

balance.addEventListener('balance-update', ({ detail }) => {
  available = detail.available;
  // `low` is the server's: below the account's, its plan's or the catalog's threshold.
  $('#low-banner').hidden = !detail.low;
  markAffordable();
  // Pushed changes and post-reconnect syncs both move the version; either way the list is stale.
  if (detail.version > ledgerVersion) {
    ledgerVersion = detail.version;
    refreshLedger();
    refreshPlan();
  }
});
balance.addEventListener('balance-change', ({ detail }) => toastChange(detail));
balance.addEventListener('balance-state', ({ detail: state }) => {
  const live = $('#live');
  live.dataset.state = state;
  live.textContent = { open: 'Live', connecting: 'Connecting', reconnecting: 'Reconnecting', closed: 'Offline' }[state];
});
balance.addEventListener('balance-error', ({ detail }) => console.warn('balance:', detail.code, detail.message));

const buyToggle = $('#buy-toggle');
const buyMenu = $('#buy-menu');
const setMenu = (open) => {
  buyMenu.hidden = !open;
  buyToggle.setAttribute('aria-expanded', String(open));
};
buyToggle.addEventListener('click', () => setMenu(buyMenu.hidden));
$('#low-topup').addEventListener('click', (e) => {
  e.stopPropagation(); // the document's click handler would close the menu again
  setMenu(true);
  buyMenu.querySelector('.pack')?.focus();
});
document.addEventListener('click', (e) => {
  if (!e.target.closest('.buy')) setMenu(false);
});
document.addEventListener('keydown', (e) => e.key === 'Escape' && setMenu(false));

// ---------------------------------------------------------------- packs

for (const container of document.querySelectorAll('[data-packs]')) {
  for (const pack of PACKS) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = `pack${pack.featured ? ' featured' : ''}`;
    button.dataset.credits = pack.credits;
    button.innerHTML = `<span class="pack-credits">${count.format(pack.credits)} credits</span><span class="pack-note">${pack.note}</span><span class="pack-price">${pack.price}</span>`;
    button.addEventListener('click', () => buy(pack.package, button));
    container.append(button);
  }
}

// Buying is the real flow: a checkout session (POST /v1/me/checkout), the provider's page,
// its signed webhook credits the account, and the provider sends the buyer back here.
async function buy(pack, button) {
  button.disabled = true;
  $('#insufficient-error').textContent = '';
  try {
    const back = new URL(location.href);
    back.searchParams.set('bought', pack);
    const res = await api.checkout(pack, back.href, location.href);
    if (!res.ok) return failed(`The purchase did not start (${res.data.message ?? `error ${res.status}`}). You were not charged.`);
    if (dialog.open && pending) sessionStorage.setItem(RESUME, pending.dataset.action);
    location.assign(res.data.url);
  } catch {
    failed('Could not reach the payment page. Try again.');
  } finally {
    button.disabled = false;
  }
}

// Back from checkout: the credits were pushed before we returned; run what was waiting.
const bought = new URLSearchParams(location.search).get('bought');
if (bought) {
  const back = new URL(location.href);
  back.searchParams.delete('bought');
  history.replaceState(null, '', back.href);
  const waiting = sessionStorage.getItem(RESUME);
  sessionStorage.removeItem(RESUME);
  const tool = waiting && document.querySelector(`[data-action="${CSS.escape(waiting)}"]`);
  if (tool) run(tool);
}

// A modal dialog sits above the toasts, so while it is open the error goes inside it.
function failed(message) {
  if (dialog.open) $('#insufficient-error').textContent = message;
  else toast(message, 'error');
}

// ---------------------------------------------------------------- tools

for (const button of document.querySelectorAll('[data-action]')) button.addEventListener('click', () => run(button));

async function run(button) {
  button.disabled = true;
  button.classList.add('busy');
  try {
    const res = await api.charge(button.dataset.action);
    if (res.status === 402 && res.data.error === 'limit_reached') return limitReached(button, res.data);
    if (res.status === 402) return askToBuy(button, res.data);
    if (!res.ok) return toast(`Could not start: ${res.data.message ?? `error ${res.status}`}`, 'error');
    addCreation(button.dataset.action, button.dataset.reason);
  } catch {
    toast('Network error. Nothing was charged; try again.', 'error');
  } finally {
    button.disabled = false;
    button.classList.remove('busy');
  }
}

function askToBuy(button, { required, available: have }) {
  pending = button;
  $('#insufficient-error').textContent = '';
  $('#insufficient-text').textContent = `${button.dataset.reason} needs ${count.format(required)} credits and you have ${count.format(have)}. Top up and we will start it right away.`;
  dialog.showModal();
}
dialog.addEventListener('close', () => {
  if (dialog.returnValue === 'cancel') pending = null;
});

function limitReached(button, { limit, resets_at: resets }) {
  const when = new Date(resets).toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
  toast(`${button.dataset.reason}: your plan allows ${limit} per period`, 'error', `It resets on ${when}.`);
}

function markAffordable() {
  for (const button of document.querySelectorAll('[data-action]')) {
    const short = available !== null && available < Number(button.dataset.cost);
    button.closest('.tool').classList.toggle('short', short);
    button.title = short ? `You need ${count.format(Number(button.dataset.cost) - available)} more credits` : '';
  }
}

// ---------------------------------------------------------------- gallery

const BADGES = { generate_image: '1024 px', upscale: '4×', remove_background: 'PNG', generate_video: '▶ 0:04' };

function addCreation(action, reason) {
  const gallery = $('#gallery');
  gallery.querySelector('.empty')?.remove();
  const hue = Math.floor(Math.random() * 360);
  const tile = document.createElement('figure');
  tile.className = `creation ${action}`;
  tile.style.setProperty('--h1', hue);
  tile.style.setProperty('--h2', (hue + 40 + Math.random() * 80) % 360);
  const caption = document.createElement('figcaption');
  caption.textContent = $('#prompt').value.trim() || reason;
  const badge = document.createElement('span');
  badge.className = 'badge';
  badge.textContent = BADGES[action] ?? reason;
  tile.append(badge, caption);
  gallery.prepend(tile);
  while (gallery.children.length > 8) gallery.lastElementChild.remove();
}

// ---------------------------------------------------------------- activity

/** `load` run now, or (when a run is under way) once more after it: a burst of pushes
 * costs one more fetch, not one each. */
function coalesced(load, what) {
  let busy = false;
  let again = false;
  const run = async () => {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      await load();
    } catch (err) {
      console.warn(`${what}:`, err);
    } finally {
      busy = false;
      if (again) {
        again = false;
        run();
      }
    }
  };
  return run;
}

const refreshLedger = coalesced(async () => renderLedger($('#ledger'), await api.transactions(50), { title: toolName }), 'activity');

// ---------------------------------------------------------------- plan

// The catalog (prices, plans) is read once; the plan's state is read again whenever a pushed
// frame moves the version, like the activity list: renewals and charges both arrive so.
const catalog = api.catalog().catch(() => null);
const refreshPlan = coalesced(async () => renderPlan(await api.plan(), await catalog), 'plan');

function renderPlan(plan, cat) {
  const badge = $('#plan-badge');
  badge.dataset.plan = plan.plan ?? '';
  badge.textContent = plan.plan ?? 'No plan';
  const box = $('#allowance');
  box.hidden = !plan.plan;
  if (plan.plan) {
    // Rolled-over credits can make what is left exceed one allowance: that is 0 % used.
    const used = plan.allowance > 0 ? Math.min(1, Math.max(0, 1 - plan.allowance_remaining / plan.allowance)) : 0;
    box.dataset.level = used >= 1 ? 'out' : used >= 0.8 ? 'warn' : 'ok';
    box.style.setProperty('--used', `${Math.round(used * 100)}%`);
    box.querySelector('[role=progressbar]').setAttribute('aria-valuenow', String(Math.round(used * 100)));
    const renews = new Date(plan.period_end).toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
    $('#allowance-text').textContent = `${count.format(plan.allowance_remaining)} of ${count.format(plan.allowance)} allowance left · renews ${renews}`;
    $('#plan-limits').replaceChildren(...Object.entries(plan.limits).map(([op, { limit, used: n }]) => {
      const li = document.createElement('li');
      li.textContent = `${toolName(op)}: ${n} of ${limit} this period`;
      return li;
    }));
  }
  // Tiered pricing: a plan's own prices replace the catalog's on the tools.
  for (const button of document.querySelectorAll('[data-action]')) {
    const base = cat?.prices?.[button.dataset.action];
    if (base === undefined) continue;
    const price = cat.plans?.[plan.plan]?.prices?.[button.dataset.action] ?? base;
    button.dataset.cost = String(price);
    button.closest('.tool').querySelector('.cost').textContent = `${price} credits`;
  }
  markAffordable();
  const actions = $('#plan-actions');
  actions.replaceChildren(...Object.entries(cat?.plans ?? {}).filter(([name]) => name !== plan.plan).map(([name, p]) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'btn';
    button.dataset.plan = name;
    button.textContent = `${plan.plan ? 'Switch to' : 'Start'} ${name} · ${count.format(p.allowance)} / ${p.period}`;
    button.addEventListener('click', () => choosePlan(name, button));
    return button;
  }));
  if (plan.plan) {
    const cancel = document.createElement('button');
    cancel.type = 'button';
    cancel.className = 'btn';
    cancel.dataset.plan = '';
    cancel.textContent = 'Cancel plan';
    cancel.addEventListener('click', () => choosePlan(null, cancel));
    actions.append(cancel);
  }
}

async function choosePlan(name, button) {
  button.disabled = true;
  const res = await api.setPlan(name).catch(() => null);
  if (!res?.ok) {
    button.disabled = false;
    toast('The plan did not change. Try again.', 'error');
  }
  // On success the pushed frame refreshes the plan panel.
}

// ---------------------------------------------------------------- toasts

/** A charge's reason is its operation id: the tool's name reads better. */
function toolName(reason) {
  return document.querySelector(`[data-action="${CSS.escape(reason)}"]`)?.dataset.reason ?? reason;
}

function toastChange({ change, available: left }) {
  const amount = `${signed(change.amount)} credits`;
  const title = {
    usage: `${amount} · ${change.reason ? toolName(change.reason) : 'used'}`,
    purchase: `${amount} added`,
    grant: `${amount} welcome credits`,
    refund: `${amount} refunded`,
    expiry: `${amount} expired`,
    allowance: `${amount} plan allowance`,
    plan: 'Plan changed',
  }[change.kind] ?? `${amount} · ${change.reason ?? change.kind}`;
  toast(title, change.amount < 0 ? 'down' : 'up', `${count.format(left)} credits left`);
}

function toast(title, tone = 'info', detail = '') {
  const box = $('#toasts');
  const el = document.createElement('div');
  el.className = `toast ${tone}`;
  const strong = document.createElement('strong');
  strong.textContent = title;
  el.append(strong);
  if (detail) {
    const span = document.createElement('span');
    span.textContent = detail;
    el.append(span);
  }
  box.append(el);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => {
    el.classList.add('leaving');
    setTimeout(() => el.remove(), 300);
  }, 4000);
}

refreshLedger();
refreshPlan();

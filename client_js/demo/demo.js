// Pixelmint: a small AI-image app, to show the credit elements in context. The header
// balance, the purchase menu, the usage card, the activity list and the out-of-credits
// dialog are balance-client's elements on one shared session (one WebSocket); what is
// left here is the app: its tools, its gallery and its toasts. Nothing here polls.

import { CreditSession, setDefaultSession } from '../client/elements.js';
import { signed } from '../client/format.js';
import { devApi } from './api.js';

const RESUME = 'pixelmint:after-purchase'; // the tool to run once back from checkout

const $ = (selector) => document.querySelector(selector);
const count = new Intl.NumberFormat();
const accountId = new URLSearchParams(location.search).get('account') || 'demo-user';
const api = devApi(accountId);

// One session for every element on the page: a fresh token on every (re)connect, so a
// restarted server is fine.
const session = new CreditSession({ token: api.token });
setDefaultSession(session);

let available = null; // as last pushed; only hints at costs, the server decides
const gate = $('#gate');

// ---------------------------------------------------------------- header

const balance = $('#balance');
balance.setAttribute('account', accountId);
$('#avatar').textContent = accountId.replace(/[^a-z0-9]/gi, '').slice(0, 2).toUpperCase() || '?';
$('#avatar').title = accountId;

balance.addEventListener('balance-update', ({ detail }) => {
  available = detail.available;
  // `low` is the server's: below the account's, its plan's or the catalog's threshold.
  $('#low-banner').hidden = !detail.low;
  markAffordable();
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
  $('#buy-purchase').focus();
});
document.addEventListener('click', (e) => {
  if (!e.composedPath().some((el) => el.classList?.contains('buy'))) setMenu(false);
});
document.addEventListener('keydown', (e) => e.key === 'Escape' && setMenu(false));

// ---------------------------------------------------------------- buying

// Checkout sends the buyer back here with ?bought=1; the credits were pushed before that.
const back = new URL(location.href);
back.searchParams.set('bought', '1');
for (const el of document.querySelectorAll('credit-purchase, credit-gate')) {
  el.setAttribute('success-url', back.href);
  el.setAttribute('cancel-url', location.href);
}

// A purchase started from the out-of-credits dialog runs the refused tool once back.
let pending = null;
gate.addEventListener('credit-checkout', () => pending && sessionStorage.setItem(RESUME, pending.dataset.action));

if (new URLSearchParams(location.search).has('bought')) {
  const here = new URL(location.href);
  here.searchParams.delete('bought');
  history.replaceState(null, '', here.href);
  const waiting = sessionStorage.getItem(RESUME);
  sessionStorage.removeItem(RESUME);
  const tool = waiting && document.querySelector(`[data-action="${CSS.escape(waiting)}"]`);
  if (tool) run(tool);
}

// ---------------------------------------------------------------- tools

for (const button of document.querySelectorAll('[data-action]')) button.addEventListener('click', () => run(button));

async function run(button) {
  button.disabled = true;
  button.classList.add('busy');
  try {
    const res = await api.charge(button.dataset.action);
    if (res.status === 402) {
      // Out of credits, or the plan's cap on this tool: the dialog says which, and offers
      // to continue once credits arrive (bought here, in another tab, or a renewal).
      pending = button;
      button.disabled = false; // focus comes back to it when the dialog closes
      const outcome = await gate.show(res.data, { action: button.dataset.reason, opener: button });
      pending = null;
      if (outcome === 'continue') setTimeout(() => run(button)); // after this run's finally
      return;
    }
    if (!res.ok) return toast(`Could not start: ${res.data.message ?? `error ${res.status}`}`, 'error');
    addCreation(button.dataset.action, button.dataset.reason);
  } catch {
    toast('Network error. Nothing was charged; try again.', 'error');
  } finally {
    button.disabled = false;
    button.classList.remove('busy');
  }
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

// ---------------------------------------------------------------- usage, activity, plan

// A charge's reason is its operation id: the tool's name reads better.
$('#ledger').reasonLabel = toolName;
$('#usage').operationLabel = toolName;

// The usage card reads the plan after every pushed change; the tools follow its prices
// (tiered pricing: a plan's own prices replace the catalog's) and the plan buttons its name.
$('#usage').addEventListener('credit-usage-update', async ({ detail: plan }) => {
  const cat = await session.catalog().catch(() => null);
  for (const button of document.querySelectorAll('[data-action]')) {
    const base = cat?.prices?.[button.dataset.action];
    if (base === undefined) continue;
    const price = cat.plans?.[plan.plan]?.prices?.[button.dataset.action] ?? base;
    button.dataset.cost = String(price);
    button.closest('.tool').querySelector('.cost').textContent = `${price} credits`;
  }
  markAffordable();
  // What the app's backend would do on a subscription change (the dev server stands in).
  const choices = Object.entries(cat?.plans ?? {}).filter(([name]) => name !== plan.plan)
    .map(([name, p]) => [name, `${plan.plan ? 'Switch to' : 'Start'} ${name} · ${count.format(p.allowance)} / ${p.period}`]);
  if (plan.plan) choices.push(['', 'Cancel plan']);
  $('#plan-actions').replaceChildren(...choices.map(([name, label]) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'btn';
    button.dataset.plan = name;
    button.textContent = label;
    button.addEventListener('click', async () => {
      button.disabled = true;
      const res = await api.setPlan(name || null).catch(() => null);
      if (!res?.ok) {
        button.disabled = false;
        toast('The plan did not change. Try again.', 'error');
      } // on success the pushed frame has the usage card read the plan again
    });
    return button;
  }));
});

/** The tool's name for an operation id (or any other reason, as it is). */
function toolName(reason) {
  return document.querySelector(`[data-action="${CSS.escape(reason)}"]`)?.dataset.reason ?? reason;
}

// ---------------------------------------------------------------- toasts

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


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
  markAffordable();
  // Pushed changes and post-reconnect syncs both move the version; either way the list is stale.
  if (detail.version > ledgerVersion) {
    ledgerVersion = detail.version;
    refreshLedger();
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
  const cost = Number(button.dataset.cost);
  button.disabled = true;
  button.classList.add('busy');
  try {
    const res = await api.spend(cost, button.dataset.reason);
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

let ledgerBusy = false;
let ledgerAgain = false;

async function refreshLedger() {
  if (ledgerBusy) {
    ledgerAgain = true; // a burst of pushes costs one more fetch, not one each
    return;
  }
  ledgerBusy = true;
  try {
    renderLedger($('#ledger'), await api.transactions(50));
  } catch (err) {
    console.warn('activity:', err);
  } finally {
    ledgerBusy = false;
    if (ledgerAgain) {
      ledgerAgain = false;
      refreshLedger();
    }
  }
}

// ---------------------------------------------------------------- toasts

function toastChange({ change, available: left }) {
  const amount = `${signed(change.amount)} credits`;
  const title = {
    usage: `${amount} · ${change.reason ?? 'used'}`,
    purchase: `${amount} added`,
    grant: `${amount} welcome credits`,
    refund: `${amount} refunded`,
    expiry: `${amount} expired`,
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

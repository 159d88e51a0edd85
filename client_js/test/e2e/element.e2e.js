// <credit-balance> in real headless Chromium, with the WebSocket played by the test:
// no Python server needed, so this runs wherever Chromium does.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ARTIFACTS, CHROMIUM } from './servers.js';

const SRC = fileURLToPath(new URL('../../src/', import.meta.url));
const ORIGIN = 'http://element.test';
const BROWSER_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];

let playwright = null;
try {
  playwright = await import('playwright-core');
} catch {
  // reported as the skip reason below
}
const skip = !existsSync(CHROMIUM) ? `no Chromium at ${CHROMIUM}` : !playwright ? 'playwright-core is not installed' : false;
if (skip && process.env.CI) throw new Error(`end-to-end prerequisites missing in CI: ${skip}`);

const PAGE = `<!doctype html><html lang="en"><body style="font: 16px system-ui; padding: 24px">
<header style="display:flex; gap:12px; align-items:center">
  <b>Acme</b>
  <credit-balance id="plain" token-url="/token" low="20"></credit-balance>
  <credit-balance id="twin" token-url="/token" low="20"></credit-balance>
  <credit-balance id="styled" token-url="/token?team" account="team-1" label="team credits"
    style="--credit-balance-background:#111; --credit-balance-color:#fff"></credit-balance>
</header>
<script type="module" src="/src/element.js"></script></body></html>`;

// Replaces window.WebSocket before any page script runs; the test drives each socket.
function installFakeSocket() {
  window.sockets = [];
  window.WebSocket = class {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      window.sockets.push(this);
    }
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    close(code) {
      this.readyState = 3;
      this.closedWith = code;
    }
  };
  window.serverOpen = (i) => {
    const s = window.sockets[i];
    s.readyState = 1;
    s.onopen({});
  };
  window.serverPush = (i, frame) => window.sockets[i].onmessage({ data: JSON.stringify(frame) });
  window.serverDrop = (i, code) => {
    window.sockets[i].readyState = 3;
    window.sockets[i].onclose({ code, reason: '' });
  };
}

const frame = (account_id, version, available, held = 0, change = null) => ({ type: 'balance', account_id, balance: available + held, held, available, version, change });

test('<credit-balance> in Chromium', { skip, timeout: 60_000 }, async (t) => {
  mkdirSync(ARTIFACTS, { recursive: true });
  const browser = await playwright.chromium.launch({ executablePath: CHROMIUM, args: BROWSER_ARGS });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 720, height: 120 }, locale: 'en-US' });
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));
  const tokenCalls = [];
  await page.route(`${ORIGIN}/**`, (route) => {
    const { pathname } = new URL(route.request().url());
    if (pathname === '/') return route.fulfill({ contentType: 'text/html', body: PAGE });
    if (pathname === '/token') {
      tokenCalls.push(route.request().method());
      return route.fulfill({ contentType: 'application/json', body: JSON.stringify({ token: 'user-token' }) });
    }
    if (pathname.startsWith('/src/')) return route.fulfill({ contentType: 'text/javascript', body: readFileSync(SRC + pathname.slice(5)) });
    return route.fulfill({ status: 404 });
  });
  await page.addInitScript(installFakeSocket);
  await page.goto(`${ORIGIN}/`);
  await page.waitForFunction(() => window.sockets.length === 2);

  const part = (id, name) => page.locator(`#${id}`).evaluate((el, n) => el.shadowRoot.querySelector(`[part=${n}]`).textContent, name);
  const attr = (id, name) => page.locator(`#${id}`).getAttribute(name);

  await t.test('dials ws(s)://host/v1/ws with a token POSTed from token-url, one socket per token-url', async () => {
    assert.deepEqual(await page.evaluate(() => window.sockets.map((s) => s.url)), ['ws://element.test/v1/ws', 'ws://element.test/v1/ws']);
    assert.deepEqual(tokenCalls, ['POST', 'POST']);
    await page.evaluate(() => [0, 1].forEach(window.serverOpen));
    assert.deepEqual(await page.evaluate(() => window.sockets[0].sent[0]), { type: 'auth', token: 'user-token' });
    assert.equal(await part('plain', 'balance'), '—');
  });

  await t.test('thousands separators, and the account attribute picks the account', async () => {
    await page.evaluate((fs) => fs.forEach((f) => [0, 1].forEach((i) => window.serverPush(i, f))), [frame('u1', 3, 1234567), frame('team-1', 9, 48200)]);
    assert.equal(await part('plain', 'balance'), '1,234,567');
    assert.equal(await part('twin', 'balance'), '1,234,567', 'the twin shares the first socket');
    assert.equal(await part('plain', 'label'), 'credits');
    assert.equal(await part('styled', 'balance'), '48,200');
    assert.equal(await part('styled', 'label'), 'team credits');
    assert.equal(await attr('plain', 'state'), 'open');
    await page.screenshot({ path: `${ARTIFACTS}element-1-open.png` });
  });

  await t.test('a change flashes its direction and fires balance-change', async () => {
    await page.evaluate(() => {
      window.changes = [];
      document.querySelector('#plain').addEventListener('balance-change', (e) => window.changes.push(e.detail.change.amount));
    });
    const change = { kind: 'usage', amount: -567, reason: 'export', transaction_id: 4, hold_id: null };
    await page.evaluate((f) => window.serverPush(0, f), frame('u1', 4, 1234000, 0, change));
    assert.equal(await attr('plain', 'flash'), 'down');
    assert.deepEqual(await page.evaluate(() => window.changes), [-567]);
    await page.evaluate((f) => window.serverPush(0, f), frame('u1', 5, 1300000, 0, { ...change, kind: 'purchase', amount: 66000 }));
    assert.equal(await attr('plain', 'flash'), 'up');
    await page.waitForFunction(() => !document.querySelector('#plain').hasAttribute('flash'), null, { timeout: 3000 });
  });

  await t.test('below `low` the element turns low-balance; holds show in the status', async () => {
    await page.evaluate((f) => window.serverPush(0, f), frame('u1', 6, 12, 30));
    assert.equal(await attr('plain', 'low-balance'), '');
    assert.equal(await part('plain', 'balance'), '12');
    assert.equal(await part('plain', 'status'), '30 on hold');
    assert.equal(await attr('styled', 'low-balance'), null);
    await page.screenshot({ path: `${ARTIFACTS}element-2-low.png` });
  });

  await t.test('document.createElement works, with the token property instead of token-url', async () => {
    const before = await page.evaluate(() => window.sockets.length);
    await page.evaluate(() => {
      const el = document.createElement('credit-balance');
      el.id = 'scripted';
      el.setAttribute('low', '5');
      document.querySelector('header').append(el);
      el.token = async () => 'from-property'; // same task as append: used for the first dial
    });
    await page.waitForFunction((n) => window.sockets.length === n + 1, before);
    await page.evaluate(() => window.serverOpen(window.sockets.length - 1));
    assert.deepEqual(await page.evaluate(() => window.sockets.at(-1).sent[0]), { type: 'auth', token: 'from-property' });
    await page.evaluate((f) => window.serverPush(window.sockets.length - 1, f), frame('u2', 1, 3));
    assert.equal(await part('scripted', 'balance'), '3');
    assert.equal(await attr('scripted', 'low-balance'), '');
    await page.evaluate(() => document.querySelector('#scripted').remove());
  });

  await t.test('removing the last element of a socket closes it; a shared one stays', async () => {
    await page.evaluate(() => document.querySelector('#styled').remove());
    await page.evaluate(() => document.querySelector('#twin').remove());
    await page.waitForFunction(() => window.sockets[1].closedWith === 1000, null, { timeout: 3000 });
    await page.waitForTimeout(1200); // past the moment an unused session lingers
    assert.equal(await page.evaluate(() => window.sockets[0].closedWith), undefined, '#plain still uses it');
  });

  await t.test('a lost connection shows "Reconnecting…", then heals', async () => {
    await page.evaluate(() => window.serverDrop(0, 1006));
    assert.equal(await attr('plain', 'state'), 'reconnecting');
    assert.equal(await part('plain', 'status'), 'Reconnecting…');
    assert.equal(await part('plain', 'balance'), '12', 'keeps the last number');
    await page.screenshot({ path: `${ARTIFACTS}element-3-reconnecting.png` });
    await page.evaluate(() => window.dispatchEvent(new Event('online'))); // no waiting out the backoff
    await page.waitForFunction(() => window.sockets.length >= 3);
    // The backoff timer may have dialled first; `online` then replaced that socket. The last is live.
    await page.waitForFunction(() => window.sockets.at(-1).onopen && window.sockets.at(-1).readyState === 0);
    await page.evaluate(() => window.serverOpen(window.sockets.length - 1));
    assert.deepEqual(await page.evaluate(() => window.sockets.at(-1).sent[1]), { type: 'sync', versions: { u1: 6, 'team-1': 9 } });
    assert.equal(await attr('plain', 'state'), 'open');
  });

  await t.test('a refused token leaves it closed, marked Offline', async () => {
    await page.evaluate(() => window.serverDrop(window.sockets.length - 1, 4401));
    assert.equal(await attr('plain', 'state'), 'closed');
    assert.equal(await part('plain', 'status'), 'Offline');
  });

  assert.deepEqual(errors, []);
});

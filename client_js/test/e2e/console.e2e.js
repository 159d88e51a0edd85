// The operator console (/console) in real headless Chromium against the real server: sign
// in with an operator key, find an account, adjust it and watch the balance move live in
// the console and in a demo tab, retry an event the app's webhook refused, resolve a
// payment that needs review (the credits arrive once even when it is resolved twice), and
// a read (support) key that sees everything, has no buttons and is refused when it forces
// a change. No Content-Security-Policy violation anywhere.
// Screenshots land in <repo>/test-artifacts/console/ (not committed).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { ARTIFACTS, CHROMIUM, freePort, databasesFor, missingPrerequisite, startServer } from './servers.js';

const ADMIN_KEY = `sk_ops_${randomBytes(18).toString('base64url')}`;
const READ_KEY = `sk_support_${randomBytes(18).toString('base64url')}`;
const STRIPE_SECRET = `whsec_e2e_${randomBytes(16).toString('hex')}`;
const BROWSER_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];
const SHOTS = `${ARTIFACTS}console/`;
const fmt = new Intl.NumberFormat('en-US');

const skip = await missingPrerequisite();
// CI installs every prerequisite (make setup), so there a skip would hide a broken setup.
if (skip && process.env.CI) throw new Error(`end-to-end prerequisites missing in CI: ${skip}`);

/** The app's webhook endpoint: refuses (500) until `accept` is set; counts what it gets. */
async function startReceiver() {
  const state = { accept: false, received: [] };
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      state.received.push({ ok: state.accept, body: JSON.parse(body) });
      res.writeHead(state.accept ? 200 : 500).end();
    });
  }).listen(0, '127.0.0.1');
  await once(server, 'listening');
  state.url = `http://127.0.0.1:${server.address().port}/hook`;
  state.close = () => new Promise((r) => server.close(r));
  return state;
}

/** A Stripe `checkout.session.completed` for a paid checkout whose metadata names no account. */
function unclaimedCheckout() {
  const id = randomBytes(8).toString('hex');
  return JSON.stringify({
    id: `evt_${id}`, object: 'event', type: 'checkout.session.completed', created: Math.floor(Date.now() / 1000), livemode: false,
    data: { object: { id: `cs_test_${id}`, object: 'checkout.session', mode: 'payment', payment_status: 'paid', status: 'complete', payment_intent: `pi_${id}`, amount_total: 500, currency: 'usd', metadata: { package: 'starter', credits: '100' } } },
  });
}

test('console: sign in, search, live adjust in two tabs, hold release, event retry, review queue, plan change, read key, sign out', { skip: skip ?? false, timeout: 300_000 }, async (t) => {
  const { chromium } = await import('playwright-core');
  mkdirSync(SHOTS, { recursive: true });
  const shot = (page, name) => page.screenshot({ path: `${SHOTS}${name}.png`, fullPage: true });

  const dbs = await databasesFor(t);
  if (!dbs) return;
  const receiver = await startReceiver();
  t.after(() => receiver.close());

  const port = await freePort();
  const env = {
    DATABASE_URL: dbs.databaseUrl,
    REDIS_URL: dbs.redisUrl,
    BALANCE_SERVICE_KEYS: `ops:admin:${ADMIN_KEY},support:read:${READ_KEY}`,
    BALANCE_STRIPE_WEBHOOK_SECRET: STRIPE_SECRET,
    BALANCE_APP_WEBHOOK_URL: receiver.url,
    BALANCE_APP_WEBHOOK_SECRET: `whsec_${randomBytes(24).toString('base64')}`,
    BALANCE_APP_WEBHOOK_TIMEOUT: '2',
    BALANCE_APP_WEBHOOK_RETRY: '0.3', // one retry, then failed: the console retries a failed event
  };
  const server = await startServer({ port, env });
  t.after(() => server.stop());

  const call = async (method, path, body, key = ADMIN_KEY) => {
    const res = await fetch(`${server.base}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: body && JSON.stringify(body),
    });
    return { status: res.status, headers: res.headers, body: await res.json() };
  };
  const balanceOf = async (id) => (await call('GET', `/v1/accounts/${id}`)).body.balance;

  // An account with its welcome credits and some usage for the chart, made as an app would.
  const account = `cons-${randomBytes(4).toString('hex')}`;
  assert.equal((await call('POST', `/v1/accounts/${account}`)).status, 200);
  for (const operation of ['generate_image', 'generate_image', 'upscale', 'remove_background']) {
    const r = await fetch(`${server.base}/dev/charge`, { method: 'POST', body: JSON.stringify({ account_id: account, operation }) });
    assert.equal(r.status, 200, await r.text());
  }
  let balance = await balanceOf(account);

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: BROWSER_ARGS });
  t.after(() => browser.close());
  const pageErrors = [];
  const cspViolations = [];
  const watch = (page) => {
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (msg) => {
      if (/Content Security Policy|Refused to/i.test(msg.text())) cspViolations.push(msg.text());
    });
    return page;
  };
  const newContext = () => browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-US' });

  const admin = await newContext();
  const consolePage = watch(await admin.newPage());

  const signIn = async (page, key) => {
    await page.goto(`${server.base}/console`);
    await page.waitForSelector('#signin input[name=key]');
    await page.fill('#signin input[name=key]', key);
    await page.click('#signin button[type=submit]');
    await page.waitForSelector('#top:not([hidden])');
  };
  /** Wait until every section of the page has loaded (none says Loading… any more). */
  const settled = (page) => page.waitForFunction(() => !document.querySelector('main').textContent.includes('Loading…'), null, { timeout: 10_000 });
  const liveBalance = (page, text, timeout = 3000) => page.waitForFunction((want) => document.getElementById('live-balance')?.textContent === want, text, { timeout, polling: 'raf' });

  await t.test('sign in with the operator key: the page keeps no trace of it', async () => {
    await consolePage.goto(`${server.base}/console`);
    await consolePage.waitForSelector('#signin');
    await shot(consolePage, '1-sign-in');
    await consolePage.fill('#signin input[name=key]', 'sk_wrong_key_of_some_length');
    await consolePage.click('#signin button[type=submit]');
    await consolePage.waitForSelector('#signin .error >> text=unauthorized');
    await signIn(consolePage, ADMIN_KEY);
    assert.equal(await consolePage.textContent('#who-name'), 'ops');
    assert.equal(await consolePage.textContent('#who-scope'), 'admin');
    const traces = await consolePage.evaluate(() => JSON.stringify([document.cookie, { ...localStorage }, { ...sessionStorage }, document.body.innerHTML]));
    assert.ok(!traces.includes(ADMIN_KEY), 'the key is nowhere the page can read');
    const [cookie] = (await admin.cookies()).filter((c) => c.name === 'balance_console');
    assert.ok(cookie.httpOnly && cookie.sameSite === 'Strict', JSON.stringify(cookie));
  });

  await t.test('find the account by the beginning of its id', async () => {
    await consolePage.waitForSelector('input[name=q]');
    await consolePage.fill('input[name=q]', account.slice(0, 8));
    await consolePage.click('form.search button');
    const link = consolePage.locator(`table a >> text=${account}`);
    await link.waitFor();
    await settled(consolePage);
    await shot(consolePage, '2-search');
    await link.click();
    await consolePage.waitForSelector('#live-state[data-state=live]');
    await liveBalance(consolePage, fmt.format(balance));
    await consolePage.waitForSelector('#usage-chart canvas');
    await consolePage.waitForSelector('#ledger tbody tr');
    await settled(consolePage);
    await shot(consolePage, '3-account');
  });

  const demo = watch(await (await newContext()).newPage());
  await demo.goto(`${server.base}/?account=${account}`);
  const demoShows = (text, timeout = 3000) => demo.waitForFunction((want) => document.querySelector('credit-balance')?.shadowRoot.querySelector('[part=balance]').textContent === want, text, { timeout, polling: 'raf' });
  await demoShows(fmt.format(balance), 10_000);

  await t.test('adjust with a reason and a confirm step: both tabs follow live', async () => {
    // Down below the dev catalog's low_balance threshold (20): a balance.low event follows.
    const amount = -(balance - 10);
    await consolePage.click('[data-action=adjust]');
    await consolePage.fill('dialog input[name=amount]', String(amount));
    await consolePage.click('dialog button[data-step=review]');
    await consolePage.waitForSelector('dialog .error >> text=reason'); // no reason, no review
    await consolePage.fill('dialog textarea[name=reason]', 'e2e: goodwill correction');
    await consolePage.click('dialog button[data-step=review]');
    await consolePage.waitForSelector('dialog .confirm');
    const started = Date.now();
    // A double click on Confirm is still one adjustment (one idempotency key per dialog).
    await consolePage.dblclick('dialog button[data-step=confirm]');
    balance += amount;
    await Promise.all([liveBalance(consolePage, fmt.format(balance)), demoShows(fmt.format(balance))]);
    t.diagnostic(`confirm to both tabs: ${Date.now() - started} ms`);
    await consolePage.waitForSelector('#ledger tbody tr >> text=adjustment');
    await settled(consolePage);
    await shot(consolePage, '4-after-adjust');
    await shot(demo, '4-demo-after-adjust');
    assert.equal(await balanceOf(account), balance, 'adjusted once');
  });

  await t.test('a hold is released from the console', async () => {
    const placed = await call('POST', `/v1/accounts/${account}/holds`, { amount: 4, reason: 'stuck job', idempotency_key: `h-${account}` });
    assert.equal(placed.status, 201, JSON.stringify(placed.body));
    const row = consolePage.locator('#holds tr', { hasText: 'stuck job' });
    await row.waitFor(); // the hold's frame refreshed the list
    await consolePage.waitForFunction(() => document.getElementById('live-held').textContent === '4');
    await row.locator('[data-action=release]').click();
    await consolePage.fill('dialog textarea[name=reason]', 'e2e: the job is gone');
    await consolePage.click('dialog button[data-step=review]');
    await consolePage.click('dialog button[data-step=confirm]');
    await consolePage.waitForFunction(() => document.getElementById('live-held').textContent === '0');
    await consolePage.waitForSelector('#holds >> text=No active holds');
    assert.equal(await balanceOf(account), balance, 'a release moves no credits');
  });

  await t.test('an event the app refused until it failed is retried from the console and delivered', async () => {
    const low = () => receiver.received.filter((r) => r.body.type === 'balance.low' && r.body.data?.account_id === account);
    const failed = async () => (await call('GET', `/v1/events?status=failed&account_id=${account}`)).body.events.filter((e) => e.type === 'balance.low');
    const deadline = Date.now() + 15_000;
    while (!(await failed()).length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    assert.equal((await failed()).length, 1, 'the app webhook failed after its attempts');
    assert.equal(low().length, 2, 'attempted twice, refused twice');
    receiver.accept = true;
    await consolePage.reload();
    const event = consolePage.locator('#events details.event', { hasText: 'balance.low' }).first();
    await event.waitFor();
    await event.locator('.badge.failed').waitFor();
    await event.locator('summary').click();
    await event.locator('.attempts >> text=HTTP 500').first().waitFor();
    await event.locator('[data-action=retry]').click();
    await consolePage.fill('dialog textarea[name=reason]', 'e2e: receiver fixed');
    await consolePage.click('dialog button[data-step=review]');
    await consolePage.click('dialog button[data-step=confirm]');
    await consolePage.waitForSelector('#events details.event:has-text("balance.low") .badge.delivered', { timeout: 15_000 });
    assert.ok(low().some((r) => r.ok), 'delivered on the retry');
  });

  await t.test('a payment that needs review is resolved once, even when resolved twice', async () => {
    const payload = unclaimedCheckout();
    const ts = Math.floor(Date.now() / 1000);
    const sig = createHmac('sha256', STRIPE_SECRET).update(`${ts}.${payload}`).digest('hex');
    const hook = await fetch(`${server.base}/v1/webhooks/stripe`, { method: 'POST', body: payload, headers: { 'stripe-signature': `t=${ts},v1=${sig}`, 'content-type': 'application/json' } });
    assert.equal((await hook.json()).result, 'needs_review');

    await consolePage.click('a[data-nav=review]');
    const card = consolePage.locator('article.review', { hasText: 'account_id' }).first();
    await card.waitFor();
    await settled(consolePage);
    await shot(consolePage, '5-review-queue');
    await card.locator('[data-action=resolve]').click();
    await consolePage.fill('dialog input[name=account_id]', account);
    assert.equal(await consolePage.inputValue('dialog input[name=credits]'), '100', "the catalog's amount is offered");
    await consolePage.fill('dialog textarea[name=note]', 'e2e: the buyer wrote in with their account');
    await consolePage.click('dialog button[data-step=review]');
    await consolePage.click('dialog button[data-step=confirm]');
    balance += 100;
    await demoShows(fmt.format(balance), 5000);
    await consolePage.waitForSelector('.toast >> text=Resolved');
    await consolePage.waitForSelector(`#resolved .resolution >> text=${account}`);
    await settled(consolePage);
    await shot(consolePage, '6-review-resolved');

    // The same resolution again (a second operator, a retried request): the same answer, no credits.
    const listed = [];
    for (const status of ['needs_review', 'resolved']) listed.push(...(await call('GET', `/v1/payments?status=${status}&limit=50`)).body.payments);
    const review = listed.map((p) => p.review).find((r) => r?.resolution?.account_id === account);
    assert.ok(review, 'the resolved review is listed with its resolution');
    const again = await call('POST', `/v1/payments/reviews/${review.id}/credit`, { note: review.resolution.note, credits: 100, account_id: account });
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal(await balanceOf(account), balance, 'the credits arrived once');
  });

  await t.test('the plan is changed from the console', async () => {
    await consolePage.goto(`${server.base}/console#/account/${account}`);
    await consolePage.click('[data-action=plan]');
    await consolePage.selectOption('dialog select[name=plan]', 'pro');
    await consolePage.fill('dialog textarea[name=reason]', 'e2e: upgraded by support');
    await consolePage.click('dialog button[data-step=review]');
    await consolePage.waitForSelector('dialog .confirm >> text=pro');
    await consolePage.click('dialog button[data-step=confirm]');
    await consolePage.waitForSelector('.facts dd >> text=pro');
    balance = await balanceOf(account); // the plan's first allowance arrived with it
    await liveBalance(consolePage, fmt.format(balance));
    assert.equal((await call('GET', `/v1/accounts/${account}`)).body.plan, 'pro');
  });

  await t.test('the audit log has every console action, by the console session of its key, with its reason', async () => {
    const { entries } = (await call('GET', `/v1/audit?account_id=${account}`)).body;
    writeFileSync(`${SHOTS}audit.json`, `${JSON.stringify(entries, null, 2)}\n`); // the rows a run leaves
    const seen = entries.map((e) => [e.action, e.actor, e.detail.reason ?? e.detail.note]).reverse();
    assert.deepEqual(seen, [
      ['adjust', 'console:ops', 'e2e: goodwill correction'],
      ['hold_release', 'console:ops', 'e2e: the job is gone'],
      ['event_retry', 'console:ops', 'e2e: receiver fixed'],
      ['review_resolve', 'console:ops', 'e2e: the buyer wrote in with their account'],
      ['plan', 'console:ops', 'e2e: upgraded by support'],
    ]);
  });

  await t.test('a read key sees the account, has no buttons, and is refused when it forces a change', async () => {
    const support = watch(await (await newContext()).newPage());
    await signIn(support, READ_KEY);
    assert.equal(await support.textContent('#who-scope'), 'read');
    await support.goto(`${server.base}/console#/account/${account}`);
    await support.waitForSelector('#live-state[data-state=live]');
    await liveBalance(support, fmt.format(balance));
    await support.waitForSelector('#events details.event');
    await support.waitForSelector('#ledger tbody tr');
    assert.equal(await support.locator('[data-action]').count(), 0, 'no action buttons');
    await support.goto(`${server.base}/console#/review`);
    await support.waitForSelector('article.review');
    assert.equal(await support.locator('[data-action]').count(), 0, 'no review buttons');
    await support.goto(`${server.base}/console#/account/${account}`);
    await support.waitForSelector('#live-state[data-state=live]');
    await liveBalance(support, fmt.format(balance));
    await settled(support);
    await shot(support, '7-read-only');
    const forced = await support.evaluate(async (id) => {
      const { csrf } = await (await fetch('/console/session')).json();
      const res = await fetch(`/v1/accounts/${id}/adjust`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-csrf-token': csrf }, body: JSON.stringify({ amount: 1000, reason: 'forced', actor: 'support', idempotency_key: crypto.randomUUID() }) });
      return { status: res.status, body: await res.json() };
    }, account);
    assert.equal(forced.status, 403);
    assert.equal(forced.body.error, 'forbidden');
    assert.equal(await balanceOf(account), balance, 'nothing changed');
  });

  await t.test('sign out ends the session', async () => {
    await consolePage.click('#sign-out');
    await consolePage.waitForSelector('#signin');
    const status = await consolePage.evaluate(async () => (await fetch('/console/session')).status);
    assert.equal(status, 401);
  });

  assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
  assert.deepEqual(cspViolations, [], 'no Content-Security-Policy violations');
});

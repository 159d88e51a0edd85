// The Next.js example (examples/next) built with `npm run build`, started with `next start`
// and driven in Chromium against the real balance-server: real React 19 in a real browser,
// server-rendered and hydrated, the provider's one socket feeding useBalance, useLedger,
// usePlan and the element components, a 402 from the app's own API route opening the gate,
// and the browser API reached cross-origin (CORS on BALANCE_ALLOWED_ORIGINS).
// Skips itself (with the reason) where Chromium, the example's node_modules or the Python
// server are missing; in CI a missing prerequisite fails instead.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { ARTIFACTS, CHROMIUM, freePort, databasesFor, missingPrerequisite, startServer } from './servers.js';

const EXAMPLE = fileURLToPath(new URL('../../examples/next/', import.meta.url));
const NEXT_BIN = `${EXAMPLE}node_modules/next/dist/bin/next`;
const SERVICE_KEY = `sk_e2e_${Math.random().toString(36).slice(2)}`;
const BROWSER_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];

const skip = (await missingPrerequisite()) ?? (existsSync(NEXT_BIN) ? null : 'examples/next has no node_modules (npm install there)');
if (skip && process.env.CI) throw new Error(`end-to-end prerequisites missing in CI: ${skip}`);

const env = { ...process.env, NEXT_TELEMETRY_DISABLED: '1' };

test('examples/next: `npm run build` compiles, and the built app runs live in Chromium', { skip: skip ?? false, timeout: 300_000 }, async (t) => {
  await t.test('npm run build', () => {
    const started = Date.now();
    const build = spawnSync('npm', ['run', 'build'], { cwd: EXAMPLE, env, encoding: 'utf8', timeout: 240_000 });
    assert.equal(build.status, 0, `next build failed:\n${build.stdout}\n${build.stderr}`);
    assert.match(build.stdout, /Compiled successfully/);
    assert.match(build.stdout, /Finished TypeScript/, 'the app is type-checked against the package\'s .d.ts');
    t.diagnostic(`next build took ${Date.now() - started} ms`);
  });

  const { chromium } = await import('playwright-core');
  mkdirSync(ARTIFACTS, { recursive: true });
  const dbs = await databasesFor(t);
  if (!dbs) return;
  const [apiPort, appPort] = [await freePort(), await freePort()];
  const appOrigin = `http://127.0.0.1:${appPort}`;
  const server = await startServer({
    port: apiPort,
    env: { DATABASE_URL: dbs.databaseUrl, REDIS_URL: dbs.redisUrl, BALANCE_SERVICE_KEYS: SERVICE_KEY, BALANCE_ALLOWED_ORIGINS: appOrigin },
  });
  t.after(() => server.stop());

  const account = `next-${Math.random().toString(36).slice(2, 10)}`;
  const next = spawn(process.execPath, [NEXT_BIN, 'start', '-H', '127.0.0.1', '-p', String(appPort)], {
    cwd: EXAMPLE,
    env: { ...env, BALANCE_API_URL: server.base, BALANCE_SERVICE_KEY: SERVICE_KEY, EXAMPLE_ACCOUNT: account },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let nextLog = '';
  next.stdout.on('data', (d) => (nextLog += d));
  next.stderr.on('data', (d) => (nextLog += d));
  t.after(async () => {
    if (next.exitCode === null) {
      const exited = once(next, 'exit');
      next.kill('SIGTERM');
      await exited;
    }
  });
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      if ((await fetch(appOrigin)).ok) break;
    } catch {
      // not listening yet
    }
    assert.ok(Date.now() < deadline && next.exitCode === null, `next start did not answer:\n${nextLog}`);
    await new Promise((r) => setTimeout(r, 200));
  }

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: BROWSER_ARGS });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, locale: 'en-US' });
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));
  page.on('console', (msg) => msg.type() === 'error' && !/402/.test(msg.text()) && errors.push(msg.text()));
  page.on('response', (res) => res.status() === 404 && errors.push(`404 ${res.url()}`));
  let sockets = 0;
  page.on('websocket', () => sockets++);
  await page.goto(appOrigin);
  const shot = (name) => page.screenshot({ path: `${ARTIFACTS}next-${name}.png` });

  await t.test('hydrated: the provider\'s one socket feeds the hooks and the elements', async () => {
    // The dev server grants welcome credits; the header hook and the element both show them.
    await page.waitForSelector('header >> text=Live', { timeout: 15_000 });
    await page.waitForSelector('credit-balance[state=open]');
    // Open is the socket's state; the balance follows with the snapshot frame.
    await page.locator('credit-balance [part=balance]').filter({ hasText: /^\d[\d,]*$/ }).waitFor({ timeout: 5000 });
    await page.waitForSelector('credit-usage [part=empty] >> text=No plan');
    await page.waitForSelector('credit-ledger [part=row]');
    await page.waitForSelector('credit-purchase [part=package]');
    assert.equal(sockets, 1, 'one WebSocket for the whole app');
    await shot('1-hydrated');
  });

  await t.test('an action charged by the app\'s API route shows up from the pushed frame', async () => {
    const before = Number((await page.locator('credit-balance [part=balance]').textContent()).replace(/,/g, ''));
    await page.click('text=Generate image');
    await page.waitForSelector('text=Generated.');
    await page.waitForFunction(() => document.querySelector('credit-ledger').shadowRoot.querySelector('[part=row-title]')?.textContent === 'generate_image', null, { timeout: 3000 });
    await page.waitForSelector('text=/last change: -5 \\(generate_image\\)/', { timeout: 3000 }); // useLedger
    await page.waitForFunction((want) => document.querySelector('credit-balance').shadowRoot.querySelector('[part=balance]').textContent === want, new Intl.NumberFormat('en-US').format(before - 5));
    await shot('2-charged');
  });

  await t.test('a 402 from the app\'s route opens <CreditGate> with the packages', async () => {
    const acct = await (await fetch(`${server.base}/v1/accounts/${account}`, { headers: { authorization: `Bearer ${SERVICE_KEY}` } })).json();
    const drain = await fetch(`${server.base}/v1/accounts/${account}/debit`, {
      method: 'POST',
      headers: { authorization: `Bearer ${SERVICE_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ amount: acct.available - 2, reason: 'drain', idempotency_key: `drain-${account}` }),
    });
    assert.equal(drain.status, 200);
    await page.waitForFunction(() => document.querySelector('credit-balance').shadowRoot.querySelector('[part=balance]').textContent === '2');
    await page.click('text=Generate image');
    await page.locator('credit-gate [part=dialog]').waitFor({ state: 'visible', timeout: 5000 });
    assert.equal(await page.locator('credit-gate [part=dialog] > [part=message]').textContent(), 'Generate image needs 5 credits and you have 2. Top up to go on.');
    assert.ok((await page.locator('credit-gate [part=package]').count()) >= 1);
    await shot('3-gate');
    await page.keyboard.press('Escape');
    await page.locator('credit-gate [part=dialog]').waitFor({ state: 'hidden' });
  });

  assert.deepEqual(errors, [], 'no errors in the page');
});

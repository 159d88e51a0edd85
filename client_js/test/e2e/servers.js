// Starts the real thing for the end-to-end tests: PostgreSQL + Redis through
// `python -m server.dev.servers`, then `balance-server dev` (run as `python -m server.cli
// dev`, so no console script on PATH is needed) on a fixed port, which
// can be stopped and started again on the same port and data.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, createWriteStream, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';

export const REPO = fileURLToPath(new URL('../../../', import.meta.url));
export const ARTIFACTS = `${REPO}test-artifacts/`;
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const PYTHON = process.env.PYTHON || 'python3';

/** Why the end-to-end tests cannot run here, or null when they can. */
export async function missingPrerequisite() {
  if (!existsSync(CHROMIUM)) return `no Chromium at ${CHROMIUM} (set CHROMIUM_PATH)`;
  try {
    await import('playwright-core');
  } catch {
    return 'playwright-core is not installed (npm install in client_js/)';
  }
  return missingServer();
}

/** Why the Python server cannot run here, or null when it can. */
export function missingServer() {
  const py = spawnSync(PYTHON, ['-c', 'import server.dev.servers, server.cli, server.dev.routes'], { cwd: REPO, encoding: 'utf8' });
  if (py.status !== 0) return `the Python server does not import (${PYTHON}): ${(py.stderr || py.error?.message || '').trim().split('\n').at(-1)}`;
  return null;
}

export async function freePort() {
  const srv = createServer().listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  return port;
}

function logTo(child, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const log = createWriteStream(`${ARTIFACTS}${name}.log`, { flags: 'a' });
  child.stdout?.pipe(log);
  child.stderr?.pipe(log);
}

async function stop(child, ms = 15_000) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  await exited;
  clearTimeout(timer);
}

/** PostgreSQL + Redis until stop(); resolves with {databaseUrl, redisUrl}, or throws with the output. */
export async function startDatabases() {
  // stdin stays a pipe: devservers also stops on stdin EOF, so it dies with this process.
  const child = spawn(PYTHON, ['-m', 'server.dev.servers'], { cwd: REPO, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const line = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`devservers printed nothing in 90 s\n${err}`)), 90_000);
    child.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(out.slice(0, nl));
      }
    });
    child.on('exit', (code) => reject(new Error(`devservers exited with ${code}\n${err}`)));
  });
  logTo(child, 'e2e-devservers');
  const { database_url, redis_url } = JSON.parse(line);
  return { databaseUrl: database_url, redisUrl: redis_url, stop: () => stop(child) };
}

/** `balance-server dev` on `port`, resolved once GET /healthz answers 200. */
export async function startServer({ port, env }) {
  // --i-know: the throwaway databases come from `python -m server.dev.servers`, not from dev itself.
  const child = spawn(PYTHON, ['-m', 'server.cli', 'dev', '--i-know', '--host', '127.0.0.1', '--port', String(port)], {
    cwd: REPO,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  logTo(child, 'e2e-server');
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`balance-server dev exited with ${child.exitCode}; see test-artifacts/e2e-server.log`);
    try {
      if ((await fetch(`${base}/healthz`)).ok) return { base, stop: () => stop(child) };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  await stop(child);
  throw new Error('balance-server dev did not answer /healthz within 60 s');
}

/** PostgreSQL + Redis for the test `t`, stopped after it; null, with `t` skipped saying why, when they cannot start. */
export async function databasesFor(t) {
  try {
    const dbs = await startDatabases();
    t.after(() => dbs.stop());
    return dbs;
  } catch (err) {
    t.skip(`python -m server.dev.servers could not start PostgreSQL/Redis: ${err.message.split('\n')[0]}`);
    return null;
  }
}

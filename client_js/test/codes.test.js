import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { CLOSE_CODES, closeCode, shouldReconnect } from '../src/codes.js';

test('terminal codes stop the client; everything else is retried', () => {
  const terminal = CLOSE_CODES.filter((c) => !c.reconnect).map((c) => c.code);
  assert.deepEqual(terminal, [1000, 4401, 4403]);
  for (const code of [1001, 1006, 1012, 4400, 4408, 4429, 4500, 4509]) assert.equal(shouldReconnect(code), true, String(code));
});

test('an unknown code is retried, so a newer server cannot strand an older client', () => {
  assert.equal(shouldReconnect(4999), true);
  assert.equal(closeCode(4999).name, 'unknown');
});

const serverTable = new URL('../../server/errors.py', import.meta.url);

test('the table is the twin of server/errors.py', { skip: !existsSync(serverTable) && 'server/errors.py not found' }, () => {
  const rows = [...readFileSync(serverTable, 'utf8').matchAll(/CloseCode\((\d+), "(\w+)", (True|False)/g)];
  assert.ok(rows.length >= 10, 'could not read the close codes from server/errors.py');
  for (const [, code, name, reconnect] of rows) {
    assert.deepEqual({ name: closeCode(Number(code)).name, reconnect: shouldReconnect(Number(code)) }, { name, reconnect: reconnect === 'True' }, `close code ${code}`);
  }
  // 1006 is never sent by a server; the browser reports it for a lost connection.
  const clientOnly = CLOSE_CODES.filter((c) => !rows.some(([, code]) => Number(code) === c.code)).map((c) => c.code);
  assert.deepEqual(clientOnly, [1006]);
});

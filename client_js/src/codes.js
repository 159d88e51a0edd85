// WebSocket close codes, as data: the twin of CLOSE_CODES in server/errors.py.
// The client reads only `reconnect`: false means retrying with the same credentials
// cannot help, so it stops and reports the error instead.

/** @type {ReadonlyArray<{code: number, name: string, reconnect: boolean, meaning: string}>} */
export const CLOSE_CODES = Object.freeze([
  { code: 1000, name: 'normal', reconnect: false, meaning: 'closed by the client or after a terminal error' },
  { code: 1001, name: 'going_away', reconnect: true, meaning: 'server shutting down; reconnect' },
  { code: 1006, name: 'abnormal', reconnect: true, meaning: 'connection lost without a close frame' },
  { code: 1012, name: 'service_restart', reconnect: true, meaning: 'server draining; reconnect' },
  { code: 4400, name: 'bad_request', reconnect: true, meaning: 'protocol violation' },
  { code: 4401, name: 'unauthorized', reconnect: false, meaning: 'bad or expired token' },
  { code: 4403, name: 'forbidden', reconnect: false, meaning: 'origin not allowed' },
  { code: 4408, name: 'auth_timeout', reconnect: true, meaning: 'no auth frame within 10 s' },
  { code: 4429, name: 'too_many_connections', reconnect: true, meaning: 'too many sockets for account' },
  { code: 4509, name: 'too_slow', reconnect: true, meaning: 'socket could not keep up; resync' },
  { code: 4500, name: 'internal_error', reconnect: true, meaning: 'unexpected server error' },
].map(Object.freeze));

const byCode = new Map(CLOSE_CODES.map((c) => [c.code, c]));

/** The table entry for a close code; unknown codes are retryable, so a new server code never strands a client. */
export function closeCode(code) {
  return byCode.get(code) ?? { code, name: 'unknown', reconnect: true, meaning: 'unknown close code' };
}

/** Whether a socket closed with `code` should be retried. */
export function shouldReconnect(code) {
  return closeCode(code).reconnect;
}

// One account's live balance over the server's WebSocket (/v1/ws), the protocol the
// browser client speaks: an `auth` frame with a user token, then `balance` frames. The
// token is the console's own (POST /console/token): read-only, five minutes, renewed on
// the open socket before it runs out.

const RENEW_MS = 4 * 60_000;

/**
 * Watch `accountId`: `onFrame(frame)` for each newer balance frame, `onState(state)` with
 * 'connecting' | 'live' | 'offline'. `token()` resolves a fresh token. Returns stop().
 */
export function watchBalance(accountId, { token, onFrame, onState }) {
  let ws = null;
  let stopped = false;
  let version = -1;
  let retries = 0;
  let renewTimer = null;
  let retryTimer = null;
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`;

  async function dial() {
    onState('connecting');
    let first;
    try {
      first = await token();
    } catch {
      return later();
    }
    if (stopped) return;
    const socket = new WebSocket(url);
    ws = socket;
    socket.onopen = () => {
      socket.send(JSON.stringify({ type: 'auth', token: first }));
      retries = 0;
      onState('live');
      renewTimer = setInterval(renew, RENEW_MS);
    };
    socket.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      // Versions only move forward: a frame that crossed a newer one in flight is stale.
      if (frame.type === 'balance' && frame.account_id === accountId && frame.version > version) {
        version = frame.version;
        onFrame(frame);
      }
    };
    socket.onclose = () => {
      clearInterval(renewTimer);
      if (ws === socket) ws = null;
      if (!stopped) later();
    };
  }

  async function renew() {
    try {
      const fresh = await token();
      if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'auth', token: fresh }));
    } catch {
      // the socket closes with 4401 when the old token runs out; a redial asks again
    }
  }

  function later() {
    onState('offline');
    // Full jitter, capped at 15 s: a restarted server is not met by every console at once.
    const delay = Math.random() * Math.min(15_000, 500 * 2 ** retries++);
    retryTimer = setTimeout(dial, delay);
  }

  dial();
  return () => {
    stopped = true;
    clearTimeout(retryTimer);
    clearInterval(renewTimer);
    ws?.close(1000);
  };
}

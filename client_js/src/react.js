// useBalance: the live balance in a React component. React is an optional peer
// dependency; only this file imports it, so the core and the element never pull it in.
//
//   const { available, state } = useBalance({ url, token: fetchToken });

import { useEffect, useRef, useState } from 'react';
import { BalanceClient } from './client.js';

const EMPTY = Object.freeze({ balance: null, held: null, available: null, version: null, state: 'connecting', lastChange: null, error: null });

/** Live state of one account: {balance, held, available, version, state, lastChange, error}. */
export function useBalance({ url, token, account, WebSocket } = {}) {
  const [snapshot, setSnapshot] = useState(EMPTY);
  // Token functions are usually inline arrows, new on every render: read the latest
  // through a ref instead of reconnecting whenever the parent renders.
  const tokenRef = useRef(token);
  tokenRef.current = token;
  const hasToken = Boolean(token);

  useEffect(() => {
    if (!url || !hasToken) return undefined;
    let shown = account ?? null;
    const client = new BalanceClient({
      url,
      WebSocket,
      token: () => (typeof tokenRef.current === 'function' ? tokenRef.current() : tokenRef.current),
    });
    client.on('balance', (u) => {
      shown ??= u.account_id;
      if (u.account_id !== shown) return;
      const { balance, held, available, version, change } = u;
      setSnapshot((s) => ({ ...s, balance, held, available, version, lastChange: change ?? s.lastChange }));
    });
    client.on('state', (state) => setSnapshot((s) => ({ ...s, state })));
    client.on('error', (error) => setSnapshot((s) => ({ ...s, error })));
    client.connect();
    return () => {
      client.close();
      setSnapshot(EMPTY);
    };
  }, [url, account, hasToken, WebSocket]);

  return snapshot;
}

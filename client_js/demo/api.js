// The demo's stand-in for an app backend: the /dev routes of `balance-server dev`.
// In a real app these calls go to your own server, which holds the service key.

export function devApi(accountId) {
  let token = null;

  async function post(path, body) {
    const res = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const data = await res.json().catch(() => ({}));
    return { ok: res.ok, status: res.status, data };
  }

  /** A new user token; the socket asks for one on every (re)connect. */
  async function freshToken() {
    const res = await post('/dev/token', { account_id: accountId });
    if (!res.ok) throw new Error(`/dev/token answered ${res.status}`);
    token = res.data.token;
    return token;
  }

  /** Newest first, as GET /v1/me/transactions answers. */
  async function transactions(limit = 50) {
    for (const retry of [false, true]) {
      const bearer = token && !retry ? token : await freshToken();
      const res = await fetch(`/v1/me/transactions?limit=${limit}`, { headers: { authorization: `Bearer ${bearer}` } });
      // A 401 means the token expired or a restarted dev server signs with a new secret.
      if (res.status === 401 && !retry) continue;
      if (!res.ok) throw new Error(`/v1/me/transactions answered ${res.status}`);
      return (await res.json()).transactions;
    }
    return [];
  }

  /** A checkout session for a catalog package, as the browser may open one itself. */
  async function checkout(pack, successUrl, cancelUrl) {
    const bearer = token ?? (await freshToken());
    const res = await fetch('/v1/me/checkout', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${bearer}` },
      body: JSON.stringify({
        provider: 'stripe', package: pack, success_url: successUrl, cancel_url: cancelUrl,
        idempotency_key: `checkout-${Date.now()}-${Math.random().toString(36).slice(2)}`,
      }),
    });
    const data = await res.json().catch(() => ({}));
    return { ok: res.ok, status: res.status, data };
  }

  return {
    token: freshToken,
    transactions,
    checkout,
    spend: (amount, reason) => post('/dev/spend', { account_id: accountId, amount, reason }),
  };
}

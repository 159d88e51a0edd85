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

  /** GET a browser route with the user token, minting a new one once on a 401. */
  async function read(path) {
    for (const retry of [false, true]) {
      const bearer = token && !retry ? token : await freshToken();
      const res = await fetch(path, { headers: { authorization: `Bearer ${bearer}` } });
      // A 401 means the token expired or a restarted dev server signs with a new secret.
      if (res.status === 401 && !retry) continue;
      if (!res.ok) throw new Error(`${path} answered ${res.status}`);
      return res.json();
    }
    throw new Error(`${path}: unauthorized`);
  }

  /** Newest first, as GET /v1/me/transactions answers. */
  const transactions = async (limit = 50) => (await read(`/v1/me/transactions?limit=${limit}`)).transactions;

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
    plan: () => read('/v1/me/plan'),
    catalog: () => read('/v1/catalog'),
    spend: (amount, reason) => post('/dev/spend', { account_id: accountId, amount, reason }),
    // What the app's backend does: charge by operation (the plan may price or limit it)...
    charge: (operation) => post('/dev/charge', { account_id: accountId, operation }),
    // ...and put the account on a plan when its subscription changes.
    setPlan: (plan) => post('/dev/plan', { account_id: accountId, plan }),
  };
}

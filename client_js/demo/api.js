// The demo's stand-in for an app backend: the /dev routes of `balance-server dev`.
// In a real app these calls go to your own server, which holds the service key; the
// browser API (/v1/me*, checkout) is the credit elements' own business (CreditSession).

export function devApi(accountId) {
  async function post(path, body) {
    const res = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const data = await res.json().catch(() => ({}));
    return { ok: res.ok, status: res.status, data };
  }

  /** A new user token; the socket asks for one on every (re)connect. */
  async function token() {
    const res = await post('/dev/token', { account_id: accountId });
    if (!res.ok) throw new Error(`/dev/token answered ${res.status}`);
    return res.data.token;
  }

  return {
    token,
    // What the app's backend does: charge by operation (the plan may price or limit it)...
    charge: (operation) => post('/dev/charge', { account_id: accountId, operation }),
    // ...and put the account on a plan when its subscription changes.
    setPlan: (plan) => post('/dev/plan', { account_id: accountId, plan }),
  };
}

// POST /api/balance-token: a short-lived user token for the signed-in user, minted with the
// service key, which never leaves the server.
const API = process.env.BALANCE_API_URL ?? 'http://127.0.0.1:8000';

export async function POST(): Promise<Response> {
  // Your auth's user id (a session cookie, Clerk, Auth.js, ...); this example has one user.
  const accountId = process.env.EXAMPLE_ACCOUNT ?? 'demo-user';
  const auth = { authorization: `Bearer ${process.env.BALANCE_SERVICE_KEY ?? ''}` };
  // Create the account, with its welcome credits: your sign-up does this once (a read never
  // creates an account; the same account again changes nothing).
  const created = await fetch(`${API}/v1/accounts/${encodeURIComponent(accountId)}`, {
    method: 'POST', headers: auth, cache: 'no-store',
  });
  if (!created.ok) return Response.json({ error: 'account_failed' }, { status: 502 });
  const res = await fetch(`${API}/v1/tokens`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ account_id: accountId, ttl_seconds: 900 }),
    cache: 'no-store',
  });
  if (!res.ok) return Response.json({ error: 'token_failed' }, { status: 502 });
  const { token } = (await res.json()) as { token: string };
  return Response.json({ token }, { headers: { 'cache-control': 'no-store' } });
}

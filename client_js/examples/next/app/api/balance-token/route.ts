// POST /api/balance-token: a short-lived user token for the signed-in user, minted with the
// service key, which never leaves the server.
import { Balance } from 'balance-client/server';

export async function POST(): Promise<Response> {
  // BALANCE_API_URL and BALANCE_SERVICE_KEY, read when called (not when `next build` loads this).
  const balance = new Balance();
  // Your auth's user id (a session cookie, Clerk, Auth.js, ...); this example has one user.
  const accountId = process.env.EXAMPLE_ACCOUNT ?? 'demo-user';
  // Create the account, with its welcome credits: your sign-up does this once (a read never
  // creates an account; the same account again changes nothing).
  await balance.openAccount(accountId);
  const { token } = await balance.createToken(accountId, { ttlSeconds: 900 });
  return Response.json({ token }, { headers: { 'cache-control': 'no-store' } });
}

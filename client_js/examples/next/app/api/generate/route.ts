// POST /api/generate: the app's own action, charged by operation from the catalog's price
// list. A 402 body goes back to the browser as it is, for <credit-gate> to explain.
const API = process.env.BALANCE_API_URL ?? 'http://127.0.0.1:8000';

export async function POST(): Promise<Response> {
  const accountId = process.env.EXAMPLE_ACCOUNT ?? 'demo-user'; // your auth's user id
  const res = await fetch(`${API}/v1/accounts/${encodeURIComponent(accountId)}/charge`, {
    method: 'POST',
    headers: { authorization: `Bearer ${process.env.BALANCE_SERVICE_KEY ?? ''}`, 'content-type': 'application/json' },
    body: JSON.stringify({ operation: 'generate_image', idempotency_key: crypto.randomUUID() }),
    cache: 'no-store',
  });
  return new Response(res.body, { status: res.status, headers: { 'content-type': 'application/json' } });
}

// POST /api/generate {jobId}: the app's own action, paid only if it succeeds. The browser
// makes one job id per click and sends it again on a retry; the route reserves the credits
// under that id (a retry reuses the reservation: never charged twice), does the work, and
// captures them, or releases them when the work fails. What it costs comes from the
// server's catalog, never from the browser. A 402 body goes back to the browser as it is,
// for <credit-gate> to explain.
import { Balance, HoldNotActive, InsufficientCredits, LimitReached, OutcomeUnknown, Unavailable } from 'balance-client/server';

const OPERATION = 'generate_image';

export async function POST(request: Request): Promise<Response> {
  const accountId = process.env.EXAMPLE_ACCOUNT ?? 'demo-user'; // your auth's user id
  const { jobId } = (await request.json().catch(() => ({}))) as { jobId?: unknown };
  if (typeof jobId !== 'string' || !/^[\w-]{8,64}$/.test(jobId)) {
    return Response.json({ error: 'invalid_request', message: 'jobId: 8-64 of A-Za-z0-9_-' }, { status: 422 });
  }
  // BALANCE_API_URL and BALANCE_SERVICE_KEY, read when called (not when `next build` loads this).
  const balance = new Balance();
  try {
    // Held at the server's price for the operation (the account's plan price if it has one,
    // counted against the plan's limit), captured when generateImage succeeds.
    const { value } = await balance.withHold(accountId, { operation: OPERATION, key: `generate:${jobId}` }, () => generateImage());
    return Response.json({ image: value });
  } catch (err) {
    if (err instanceof InsufficientCredits || err instanceof LimitReached) return Response.json(err.body, { status: 402 });
    // This job was settled before (paid for, or failed and released): answer its stored
    // result in your app; a new attempt is a new job id.
    if (err instanceof HoldNotActive) return Response.json({ error: 'job_already_settled', status: err.holdStatus }, { status: 409 });
    // Nothing is known to be charged twice: the browser may send the same jobId again.
    if (err instanceof OutcomeUnknown || err instanceof Unavailable) return Response.json({ error: err.code }, { status: 503 });
    throw err;
  }
}

/** The work being paid for (simulated). */
async function generateImage(): Promise<string> {
  await new Promise((resolve) => setTimeout(resolve, 200));
  return `https://images.example/${crypto.randomUUID()}.png`;
}

// Type-checked by `tsc -p .` (never run): the server SDK's .d.ts makes a mutation without
// the caller's key a type error, and types what the calls return.
import { Balance, InsufficientCredits, OutcomeUnknown, verifyWebhook } from '../src/server.js';

export async function uses(balance: Balance, jobId: string): Promise<number> {
  // @ts-expect-error: a debit needs `key`
  await balance.debit('u1', { amount: 5, reason: 'x' });
  // @ts-expect-error: a charge needs `key`
  await balance.charge('u1', { operation: 'generate_image' });
  // @ts-expect-error: a hold is an amount or an operation, not both
  await balance.hold('u1', { amount: 5, operation: 'generate_image', reason: 'x', key: jobId });
  // @ts-expect-error: an amount hold says why
  await balance.hold('u1', { amount: 5, key: jobId });
  const charged = await balance.charge('u1', { operation: 'generate_image', key: jobId });
  const replayed: boolean = charged.replayed;
  const { value, capture } = await balance.withHold('u1', { operation: 'generate_image', key: jobId }, async (r) => {
    r.settle(Math.min(3, r.hold.amount));
    return 'image.png';
  });
  const url: string = value;
  for await (const t of balance.transactions('u1', { kind: 'usage' })) void t.balance_after;
  const event = verifyWebhook('whsec_x', '{}', new Headers());
  void [replayed, url, event.type];
  try {
    await balance.debit('u1', { amount: 5, reason: 'x', key: jobId });
  } catch (err) {
    if (err instanceof InsufficientCredits) return err.required - err.available;
    if (err instanceof OutcomeUnknown) return err.key?.length ?? 0;
  }
  return capture.account.available;
}

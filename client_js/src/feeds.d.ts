import type { BalanceUpdate } from './client.js';
import type { CreditSession, PlanState, RequestError, Transaction } from './session.js';

declare abstract class Feed<S> {
  readonly state: Readonly<S>;
  readonly active: boolean;
  /** Called now and on every change; returns the function that unsubscribes (the last one stops the feed). */
  subscribe(fn: (state: Readonly<S>) => void): () => void;
}

export interface PlanFeedState {
  plan: PlanState | null;
  loading: boolean;
  error: RequestError | Error | null;
}

/** GET /v1/me/plan, read again after each pushed change of the account (at most once a second). */
export class PlanFeed extends Feed<PlanFeedState> {
  constructor(session: CreditSession);
  refresh(): void;
}

/** The session's one PlanFeed. */
export function planFeed(session: CreditSession): PlanFeed;

/** A PlanFeed's state before its first read. */
export const PLAN_START: Readonly<PlanFeedState>;
/** A LedgerFeed's state before its first page. */
export const LEDGER_START: Readonly<LedgerFeedState>;

export interface LedgerFeedState {
  /** Newest first. */
  items: Transaction[];
  next: string | number | null;
  loading: boolean;
  error: RequestError | Error | null;
  done: boolean;
}

/** The transactions a page at a time, with pushed changes prepended from the frames. */
export class LedgerFeed extends Feed<LedgerFeedState> {
  constructor(session: CreditSession, options?: { pageSize?: number });
  loadMore(): Promise<void>;
}

/** The ledger row a pushed change stands for, or null when it wrote none (holds, plan changes). */
export function rowFromFrame(update: BalanceUpdate, now?: Date): Transaction | null;

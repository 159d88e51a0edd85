export interface BackoffOptions {
  /** First ceiling in ms. Default 1000. */
  base?: number;
  /** Largest ceiling in ms. Default 30000. */
  cap?: number;
  /** A number in [0, 1); injectable for tests. Default Math.random. */
  random?: () => number;
}

/** Full-jitter delay in ms before retry number `attempt` (0-based): random(0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt: number, options?: BackoffOptions): number;

/** Counts failed attempts; reset() once a connection has proven stable. */
export class Backoff {
  constructor(options?: BackoffOptions);
  attempt: number;
  /** The next delay in ms, advancing the attempt counter. */
  next(): number;
  reset(): void;
}

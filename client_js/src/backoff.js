// Full-jitter exponential backoff (the "Exponential Backoff And Jitter" scheme that
// centrifuge-js also uses): delay = random(0, min(cap, base * 2^attempt)). Spreading
// the whole range keeps a fleet of tabs from reconnecting in lockstep after a restart.

/** Delay in ms before retry number `attempt` (0-based). */
export function backoffDelay(attempt, { base = 1000, cap = 30000, random = Math.random } = {}) {
  // Clamp the exponent so 2^attempt never overflows to Infinity on a long outage.
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** Counts failed attempts; reset() once a connection has proven stable. */
export class Backoff {
  constructor({ base = 1000, cap = 30000, random = Math.random } = {}) {
    this.options = { base, cap, random };
    this.attempt = 0;
  }

  /** The next delay in ms, advancing the attempt counter. */
  next() {
    return backoffDelay(this.attempt++, this.options);
  }

  reset() {
    this.attempt = 0;
  }
}

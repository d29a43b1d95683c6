// The one backoff rule of the project: the browser client's reconnects, the gateway's Redis
// reconnects and resync retries, and the primary's worker restarts.

/** The exponential ceiling for the given attempt (0 = the first retry): min(max, min * 2^attempt). */
export function backoffCeiling(attempt: number, minMs: number, maxMs: number): number {
  return Math.min(maxMs, minMs * 2 ** Math.min(Math.max(0, attempt), 30))
}

/**
 * Delay for the given attempt: "full jitter", a uniformly random delay between 0 and the
 * ceiling, so a thousand clients dropped together do not come back together. Pure: `random`
 * is injectable for tests.
 */
export function backoff(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  return Math.floor(random() * backoffCeiling(attempt, minMs, maxMs))
}

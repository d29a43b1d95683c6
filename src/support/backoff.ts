/**
 * Reconnect delay for the given attempt (0 = the first retry): "full jitter", a uniformly random
 * delay between 0 and min(max, min * 2^attempt), so a thousand clients dropped together do not
 * come back together. Pure: `random` is injectable for tests.
 */
export function backoff(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(Math.max(0, attempt), 30))
  return Math.floor(random() * ceiling)
}

/** The delay a server advised in a close reason `retry-after-ms=N`, if any. */
export function advisedDelay(reason: string): number | undefined {
  const match = /retry-after-ms=(\d+)/.exec(reason)
  return match ? Number(match[1]) : undefined
}

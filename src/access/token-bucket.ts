// Token buckets: the connect rate per address (admission) and the message rate per socket.
//
// A bucket is one number, not an object: there is one per socket, and an object holding its
// token count and refill time cost ~96 bytes a socket (bench/heap.ts). The number is the time
// at which the bucket will be full again if nothing more is spent (the "theoretical arrival
// time" of GCRA, which is the same token bucket), in ms since this module loaded: a small
// integer for the first 24 days, so V8 keeps it in the field itself instead of boxing a double.
// The rate and capacity live once, in a TokenRate.

/** A full bucket, the state of every new one. */
export const FULL = 0

const EPOCH = Date.now()

/** Refills `rate` tokens per second up to `capacity`; a new bucket starts full. */
export class TokenRate {
  private readonly msPerToken: number
  /** How far ahead of now "full again" may be while one token is left. */
  private readonly slackMs: number

  constructor(readonly rate: number, readonly capacity: number) {
    this.msPerToken = 1000 / rate
    this.slackMs = (capacity - 1) * this.msPerToken
  }

  /** Spends one token of the bucket in `state`: its new state, or null when it has none. */
  take(state: number, now: number): number | null {
    const t = now - EPOCH
    const fullAt = state > t ? state : t
    return fullAt - t > this.slackMs ? null : smallInteger(fullAt + this.msPerToken)
  }

  /** take() for a bucket kept in an object's `bucket` field (a socket's): false when empty. */
  spend(holder: { bucket: number }, now: number): boolean {
    const next = this.take(holder.bucket, now)
    if (next === null) return false
    holder.bucket = next
    return true
  }

  /** Milliseconds until the bucket in `state` has a token. */
  waitMs(state: number, now: number): number {
    return Math.max(0, Math.ceil(state - (now - EPOCH) - this.slackMs))
  }

  full(state: number, now: number): boolean {
    return state <= now - EPOCH
  }
}

/** `x`, made a small integer when it is a whole number in range: arithmetic on Date.now() gives
 * a boxed double in unoptimized code even for whole results, and one such store turns the
 * field into a boxed double (16 bytes more) in every socket. */
export function smallInteger(x: number): number {
  return (x | 0) === x ? x | 0 : x
}

/** One bucket with its own rate, for the few kept per address (failed logins). */
export class TokenBucket {
  private readonly rate: TokenRate
  bucket = FULL

  /** A bucket starts full whenever it is made: `_now` only keeps the older signature. */
  constructor(rate: number, capacity: number, _now?: number) {
    this.rate = new TokenRate(rate, capacity)
  }

  take(now: number): boolean {
    return this.rate.spend(this, now)
  }

  /** Milliseconds until one token is available. */
  waitMs(now: number): number {
    return this.rate.waitMs(this.bucket, now)
  }

  full(now: number): boolean {
    return this.rate.full(this.bucket, now)
  }
}

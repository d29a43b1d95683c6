// A token bucket: the connect rate per address (admission) and the message rate per socket.

/** Refills `rate` tokens per second up to `capacity`; take() spends one. */
export class TokenBucket {
  private tokens: number
  private last: number

  constructor(private readonly rate: number, private readonly capacity: number, now: number) {
    this.tokens = capacity
    this.last = now
  }

  take(now: number): boolean {
    this.refill(now)
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }

  /** Milliseconds until one token is available. */
  waitMs(now: number): number {
    this.refill(now)
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) / this.rate) * 1000)
  }

  full(now: number): boolean {
    this.refill(now)
    return this.tokens >= this.capacity
  }

  private refill(now: number): void {
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.last) / 1000) * this.rate)
    this.last = now
  }
}

// Whether this gateway process should get traffic (/readyz, and the worker supervisor's wait):
// listening, not stopping, its broker ready and, in pattern mode, the PSUBSCRIBE live. One
// place holds the rule; whoever changes an input calls check().

import type { Broker } from '../broker/broker.js'
import type { SubscriptionMode } from '../support/config.js'
import type { WatchedJobs } from '../stream/watched-jobs.js'

export class Readiness {
  private listening = false
  private stopping = false
  private waiters: Array<() => void> = []

  constructor(
    private readonly broker: Broker,
    private readonly watched: WatchedJobs,
    private readonly mode: SubscriptionMode,
  ) {}

  get ready(): boolean {
    return this.listening && !this.stopping && this.broker.state === 'ready' &&
      (this.mode === 'per-job' || this.watched.patternLive)
  }

  get closing(): boolean {
    return this.stopping
  }

  setListening(listening: boolean): void {
    this.listening = listening
    this.check()
  }

  setStopping(): void {
    this.stopping = true
  }

  /** Resolves once ready holds. */
  whenReady(): Promise<void> {
    if (this.ready) return Promise.resolve()
    return new Promise((resolve) => this.waiters.push(resolve))
  }

  check(): void {
    if (!this.ready) return
    const waiters = this.waiters
    this.waiters = []
    for (const resolve of waiters) resolve()
  }
}

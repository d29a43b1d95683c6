// Whether this gateway process should get traffic (/readyz, and the worker supervisor's wait):
// listening, not stopping, in pattern mode the PSUBSCRIBE live, its broker answering, and
// (with workers) its primary answering. One place holds the rule; whoever changes an input
// calls check().
//
// "Answering" is measured, not assumed: a paused Redis keeps its connections open and its
// state 'ready' while nothing comes back, and a paused primary leaves every admission to time
// out. So both are asked a round trip every second.
//
// A broker outage does not make the node unready at once. Redis is shared by every node: when
// it stops answering, every node sees it in the same second, and a balancer that takes them
// all out answers every new client with its own 503, where the gateway would have held their
// subscribes (--outage-hold-ms) and served them when Redis returned. So readiness holds through
// a broker outage for --outage-hold-ms, and goes only after it: a node cut off alone from a
// Redis the others still reach is out after that long. The primary is the node's own: a primary
// that does not answer makes the node unready at once.

import type { Broker } from '../broker/broker.js'
import type { SubscriptionMode } from '../support/config.js'
import type { WatchedJobs } from '../stream/watched-jobs.js'

/** How often the broker and the primary are asked a round trip. */
export const PROBE_INTERVAL_MS = 1000
/** A broker or primary that has not answered for this long is not answering. */
export const UNANSWERED_MS = 3000

export interface ReadinessProbes {
  /** One round trip to the broker; rejects (or never settles) when it does not answer. */
  broker(): Promise<unknown>
  /** One round trip to the primary; only for workers. */
  primary?: () => Promise<unknown>
}

export class Readiness {
  private listening = false
  private stopping = false
  private waiters: Array<() => void> = []
  private brokerAnsweredAt = 0
  private primaryAnsweredAt = Date.now()
  /** Since when the broker has not been answering, after it once did; null while it does. */
  private outageSince: number | null = null
  private everAnswered = false
  private timer: NodeJS.Timeout | null = null
  /** The last broker round trip's duration, for the admin page's history. */
  lastBrokerRttMs: number | null = null

  constructor(
    private readonly broker: Broker,
    private readonly watched: WatchedJobs,
    private readonly mode: SubscriptionMode,
    private readonly outageHoldMs = 0,
    private readonly probes: ReadinessProbes | null = null,
  ) {}

  get ready(): boolean {
    return this.listening && !this.stopping && this.brokerServes() && this.primaryAnswers() &&
      (this.mode === 'per-job' || this.watched.patternLive)
  }

  /** Why not ready, for /readyz; null when ready. */
  get reason(): string | null {
    if (this.stopping) return 'shutting_down'
    if (!this.listening) return 'starting'
    if (!this.primaryAnswers()) return 'primary_not_answering'
    if (!this.brokerServes()) return this.everAnswered ? 'broker_not_answering' : 'broker_connecting'
    if (this.mode === 'pattern' && !this.watched.patternLive) return 'pattern_not_live'
    return null
  }

  get closing(): boolean {
    return this.stopping
  }

  setListening(listening: boolean): void {
    this.listening = listening
    if (listening && this.probes !== null && this.timer === null) {
      this.timer = setInterval(() => this.probe(), PROBE_INTERVAL_MS)
      this.timer.unref()
    }
    this.check()
  }

  setStopping(): void {
    this.stopping = true
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
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

  private brokerAnswering(now = Date.now()): boolean {
    if (this.broker.state !== 'ready') return false
    // Without probes (in-process tests, the embedded broker's callers) 'ready' is the answer.
    return this.probes === null || now - this.brokerAnsweredAt < UNANSWERED_MS || !this.everAnswered
  }

  private brokerServes(): boolean {
    const now = Date.now()
    if (this.brokerAnswering(now)) {
      this.outageSince = null
      this.everAnswered = true
      if (this.brokerAnsweredAt === 0) this.brokerAnsweredAt = now
      return true
    }
    if (!this.everAnswered) return false
    this.outageSince ??= now
    return now - this.outageSince < this.outageHoldMs
  }

  private primaryAnswers(): boolean {
    return this.probes?.primary === undefined || Date.now() - this.primaryAnsweredAt < UNANSWERED_MS
  }

  private probe(): void {
    const probes = this.probes!
    // Evaluated every tick, so an outage is dated from when it began, not from the next
    // /readyz request.
    this.brokerServes()
    if (this.broker.state === 'ready') {
      const sent = performance.now()
      probes.broker().then(() => {
        this.lastBrokerRttMs = performance.now() - sent
        this.brokerAnsweredAt = Date.now()
        this.check()
      }, () => undefined)
    }
    probes.primary?.().then(() => {
      this.primaryAnsweredAt = Date.now()
      this.check()
    }, () => undefined)
  }
}

// The last ten minutes of a gateway process, kept in memory so the admin page opened now
// sees the past too: one point every 10 s (connections, deliveries a second, event-loop delay
// p99, Redis round trip, refusals by reason in the interval). Points sit on 10 s boundaries of
// the wall clock, so a node's processes line up and their points add up (mergeHistories).

import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks'
import type { Metrics } from '../support/metrics.js'

export const HISTORY_STEP_MS = 10_000
export const HISTORY_POINTS = 60

export interface HistoryPoint {
  /** The interval's end, ms since the epoch, a multiple of HISTORY_STEP_MS. */
  readonly t: number
  readonly connections: number
  readonly deliveriesPerSec: number
  /** Event-loop delay p99 over the interval, ms (the worst process, once merged). */
  readonly loopP99Ms: number
  /** The latest round trip to the broker, ms; null when none answered (the worst, merged). */
  readonly brokerRttMs: number | null
  /** Refusals in the interval, by reason. */
  readonly refusals: Readonly<Record<string, number>>
}

export class History {
  private readonly points: HistoryPoint[] = []
  private readonly loop: IntervalHistogram = monitorEventLoopDelay({ resolution: 20 })
  private lastFrames: number
  private lastRefusals: Record<string, number>
  private timer: NodeJS.Timeout | null = null

  constructor(private readonly metrics: Metrics, private readonly brokerRttMs: () => number | null) {
    this.loop.enable()
    this.lastFrames = metrics.framesOut
    this.lastRefusals = refusalTotals(metrics)
    this.schedule()
  }

  /** The points kept, oldest first. */
  list(): HistoryPoint[] {
    return [...this.points]
  }

  stop(): void {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
    this.loop.disable()
  }

  /** Samples at the next 10 s boundary of the wall clock, and from then on at every one. */
  private schedule(): void {
    const now = Date.now()
    this.timer = setTimeout(() => this.sample(), HISTORY_STEP_MS - (now % HISTORY_STEP_MS))
    this.timer.unref()
  }

  private sample(): void {
    const t = Math.round(Date.now() / HISTORY_STEP_MS) * HISTORY_STEP_MS
    const m = this.metrics
    const refusals = refusalTotals(m)
    const delta: Record<string, number> = {}
    for (const [reason, total] of Object.entries(refusals)) {
      const d = total - (this.lastRefusals[reason] ?? 0)
      if (d > 0) delta[reason] = d
    }
    this.points.push({
      t,
      connections: m.connections + m.sseStreams,
      deliveriesPerSec: (m.framesOut - this.lastFrames) / (HISTORY_STEP_MS / 1000),
      loopP99Ms: this.loop.count > 0 ? this.loop.percentile(99) / 1e6 : 0,
      brokerRttMs: this.brokerRttMs(),
      refusals: delta,
    })
    if (this.points.length > HISTORY_POINTS) this.points.shift()
    this.lastFrames = m.framesOut
    this.lastRefusals = refusals
    this.loop.reset()
    this.schedule()
  }
}

/** Every refusal counter, by reason: upgrades refused, and requests refused on any transport. */
function refusalTotals(m: Metrics): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [reason, n] of Object.entries(m.rejectedUpgrades)) out[reason] = (out[reason] ?? 0) + n
  for (const [labels, n] of Object.entries(m.refusals)) {
    const reason = /reason="([^"]*)"/.exec(labels)?.[1] ?? labels
    out[reason] = (out[reason] ?? 0) + n
  }
  return out
}

/** A node's history from its processes': points of the same instant add up (connections,
 * deliveries, refusals) or take the worst (delays). */
export function mergeHistories(histories: ReadonlyArray<readonly HistoryPoint[]>): HistoryPoint[] {
  const byTime = new Map<number, HistoryPoint>()
  for (const points of histories) {
    for (const p of points) {
      const q = byTime.get(p.t)
      if (q === undefined) {
        byTime.set(p.t, { ...p, refusals: { ...p.refusals } })
        continue
      }
      const refusals: Record<string, number> = { ...q.refusals }
      for (const [reason, n] of Object.entries(p.refusals)) refusals[reason] = (refusals[reason] ?? 0) + n
      byTime.set(p.t, {
        t: p.t,
        connections: q.connections + p.connections,
        deliveriesPerSec: q.deliveriesPerSec + p.deliveriesPerSec,
        loopP99Ms: Math.max(q.loopP99Ms, p.loopP99Ms),
        brokerRttMs: q.brokerRttMs === null ? p.brokerRttMs : p.brokerRttMs === null ? q.brokerRttMs : Math.max(q.brokerRttMs, p.brokerRttMs),
        refusals,
      })
    }
  }
  return [...byTime.values()].sort((a, b) => a.t - b.t)
}

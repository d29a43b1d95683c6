// What each gateway process reports about itself for /metrics, so operators see what the bench
// sees: resident memory, V8 heap, and how late the event loop runs (a loop that is late
// delays every frame). Sampled by perf_hooks at 10 ms resolution.
//
// perf_hooks records the whole interval between two of its timer ticks, so an idle loop reads
// 10 ms: the resolution is subtracted from every figure, leaving how late the tick ran.

import { readdirSync } from 'node:fs'
import { openFilesLimit } from './file-limit.js'
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks'

const RESOLUTION_MS = 10
const RESOLUTION_NS = RESOLUTION_MS * 1e6

/** Upper bounds, in seconds, of the event-loop delay histogram. */
export const LOOP_DELAY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1] as const

export interface ProcessStats {
  /** Which process: 'main', or the worker's index. */
  readonly process: string
  readonly rssBytes: number
  readonly heapUsedBytes: number
  /** Memory V8 holds for its heap (used or not): RSS less this is what lives outside V8. */
  readonly heapCommittedBytes: number
  /** Event-loop delay since the previous scrape: cumulative counts per bucket (+Inf last). */
  readonly loopDelay: { readonly counts: number[]; readonly sum: number; readonly count: number }
  /** User + system CPU time since the process started. */
  readonly cpuSeconds: number
  /** Open file descriptors (sockets included), and the soft limit on them; -1 where unknown. */
  readonly openFds: number
  readonly maxFds: number
  /** When the process started, in seconds since the epoch. */
  readonly startTimeSeconds: number
}

const STARTED_AT_SECONDS = Date.now() / 1000 - process.uptime()

function openFdCount(): number {
  try {
    return readdirSync('/proc/self/fd').length
  } catch {
    return -1
  }
}

export class ProcessSampler {
  private readonly histogram: IntervalHistogram
  private readonly counts = new Array<number>(LOOP_DELAY_BUCKETS.length + 1).fill(0)
  private sum = 0
  private count = 0

  constructor(private readonly name: string) {
    this.histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS })
    this.histogram.enable()
  }

  /** Folds what the sampler recorded since the last call into the running histogram. */
  sample(): ProcessStats {
    const h = this.histogram
    if (h.count > 0) {
      const placed = foldLoopDelays(this.counts, h)
      this.sum += placed.sumSeconds
      this.count += placed.count
      h.reset()
    }
    const memory = process.memoryUsage()
    const cpu = process.cpuUsage()
    return {
      process: this.name, rssBytes: memory.rss, heapUsedBytes: memory.heapUsed, heapCommittedBytes: memory.heapTotal,
      loopDelay: { counts: [...this.counts], sum: this.sum, count: this.count },
      cpuSeconds: (cpu.user + cpu.system) / 1e6, openFds: openFdCount(), maxFds: openFilesLimit() ?? -1, startTimeSeconds: STARTED_AT_SECONDS,
    }
  }

  stop(): void {
    this.histogram.disable()
  }
}

/** What foldLoopDelays reads of a perf_hooks histogram (nanoseconds, sampling interval included). */
export interface DelayReading {
  readonly count: number
  readonly mean: number
  readonly percentiles: ReadonlyMap<number, number>
}

/** Adds a reading's samples to `counts` (one per LOOP_DELAY_BUCKETS bound, then +Inf), less the
 * sampling interval. perf_hooks keeps percentiles, not buckets: each percentile step goes to
 * its bucket, rounded cumulatively so the shares add up to exactly the reading's count. */
export function foldLoopDelays(counts: number[], h: DelayReading): { count: number; sumSeconds: number } {
  let placed = 0
  for (const [percentile, ns] of h.percentiles) {
    const share = Math.round((h.count * percentile) / 100) - placed
    if (share <= 0) continue
    placed += share
    const seconds = Math.max(0, ns - RESOLUTION_NS) / 1e9
    let i = 0
    while (i < LOOP_DELAY_BUCKETS.length && seconds > LOOP_DELAY_BUCKETS[i]!) i++
    counts[i]! += share
  }
  return { count: placed, sumSeconds: (Math.max(0, h.mean - RESOLUTION_NS) / 1e9) * placed }
}

// Gives memory back after a burst. A connect or subscribe storm grows V8's young generation to
// its cap and promotes short-lived objects (pending reads, upgrade closures) into the old one;
// V8 keeps both until its next full collection, which a gateway that then only holds idle
// sockets may not run for hours. Measured with bench/heap.ts (18,000 sockets, one process, both
// readings settled): 1.64 KB of RSS per connection, 1.24 KB after a full collection.
//
// So once the process has been quiet for two checks in a row (event-loop utilisation under
// QUIET_UTILISATION) and V8's heap has grown by at least `thresholdMb` since the last such
// collection (or since the start), this asks V8 for one full collection. It runs as a task of
// its own (execution: 'async'), not inside the check, and is one pause of tens of ms at tens
// of thousands of sockets: taken while the process is quiet, at most once per growth. V8
// shrinks its young generation only in a collection that follows about 5 s of low allocation
// (its throughput window), which is why it waits for 6 s of quiet. A busy gateway never gets
// here: V8's own heuristics collect it often enough.
//
// That collection frees the garbage but leaves the pages it sat on part-empty: V8 picks the
// pages to compact from the bytes its last sweep found on each, and that sweep ran during the
// burst, when they were full. So one quiet check later a second collection follows, with V8's
// --optimize-for-size set for its duration, under which V8 compacts pages by a much lower bar
// of free space than by default: as its own memory reducer does, but that one comes 20 to 40 s
// later (bench/heap.js --settle-ms 40000). Measured with bench/heap.ts (18,000 sockets, one
// process, settled 12 s), V8's committed heap per connection: 0.64 KB after the first
// collection alone, of which 0.32 KB in use; 0.41-0.43 KB with the follow-up. A plain second
// collection, without the flag, left the old space at 0.38-0.43 KB against 0.28-0.30 KB.

import { getHeapStatistics, setFlagsFromString } from 'node:v8'
import { performance, type EventLoopUtilization } from 'node:perf_hooks'
import { runInNewContext } from 'node:vm'
import type { Logger } from './log.js'

const CHECK_MS = 3000
const QUIET_UTILISATION = 0.05
const QUIET_CHECKS = 2
/** Set only while the compacting follow-up runs (see the top of this file). */
const COMPACTING = '--optimize-for-size'
const NOT_COMPACTING = '--no-optimize-for-size'

type Collect = (options: { type: 'major'; execution: 'async' }) => Promise<void>

/** V8's gc(), taken from a context made while --expose-gc was set, and the flag cleared
 * again, so that no other context or worker thread gets a global gc. */
function gcFunction(): Collect | null {
  try {
    setFlagsFromString('--expose-gc')
    return runInNewContext('gc') as Collect
  } catch {
    return null
  } finally {
    setFlagsFromString('--no-expose-gc')
  }
}

export interface IdleCollectorOptions {
  /** Collect when V8's heap grew by this many MB since the last collection (--idle-gc-mb);
   * 0: never. */
  readonly thresholdMb: number
  readonly log: Logger
  /** Counted for /metrics. */
  onCollect?(freedBytes: number): void
  /** How often to look (tests shorten it; below ~100 ms one callback reads as a busy loop). */
  readonly checkMs?: number
}

export class IdleCollector {
  private readonly timer: NodeJS.Timeout | null = null
  private readonly gc: Collect | null
  private elu: EventLoopUtilization = performance.eventLoopUtilization()
  private quietChecks = 0
  /** V8's heap right after the last collection. */
  private base = 0
  private collecting = false
  /** A collection ran and its compacting follow-up is still to come. */
  private compactNext = false
  private readonly thresholdBytes: number

  constructor(private readonly options: IdleCollectorOptions) {
    this.thresholdBytes = options.thresholdMb * 2 ** 20
    this.gc = options.thresholdMb > 0 ? gcFunction() : null
    if (options.thresholdMb > 0 && this.gc === null) options.log.warn('V8 gc() is not available; memory after bursts is given back only by V8 itself')
    if (this.gc === null) return
    this.base = committed()
    this.timer = setInterval(() => this.check(), options.checkMs ?? CHECK_MS)
    this.timer.unref()
  }

  private check(): void {
    const elu = performance.eventLoopUtilization(this.elu)
    this.elu = performance.eventLoopUtilization()
    this.quietChecks = elu.utilization < QUIET_UTILISATION ? this.quietChecks + 1 : 0
    if (this.collecting || this.quietChecks < QUIET_CHECKS) return
    const before = committed()
    // V8 may have given memory back on its own meanwhile.
    this.base = Math.min(this.base, before)
    if (this.compactNext) {
      this.compactNext = false
      this.collect(before, 'compacted the pages a collection left sparse', true)
    } else if (before - this.base >= this.thresholdBytes) {
      this.compactNext = true
      this.collect(before, 'collected garbage left by a burst')
    }
  }

  private collect(before: number, what: string, compacting = false): void {
    this.collecting = true
    const rssBefore = process.memoryUsage.rss()
    if (compacting) setFlagsFromString(COMPACTING)
    // A promise in Node 20; a runtime whose gc() ignores the options returns nothing, and a
    // throw here would be uncaught in a timer.
    new Promise<void>((resolve) => resolve(this.gc!({ type: 'major', execution: 'async' }))).finally(() => {
      if (compacting) setFlagsFromString(NOT_COMPACTING)
    }).then(() => {
      this.collecting = false
      this.base = committed()
      const freed = rssBefore - process.memoryUsage.rss()
      this.options.log.debug({ heapMb: mb(before), afterMb: mb(this.base), rssFreedMb: mb(freed) }, `idle: ${what}`)
      this.options.onCollect?.(freed)
    }, (err: Error) => {
      this.collecting = false
      this.compactNext = false
      this.options.log.warn({ err: err.message }, 'idle collection failed')
    })
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer)
  }
}

/** The memory V8 holds for its heap. */
function committed(): number {
  return getHeapStatistics().total_physical_size
}

const mb = (bytes: number) => Math.round(bytes / 2 ** 17) / 8

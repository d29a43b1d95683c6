// The node's counters as the primary reports them, kept monotonic across worker restarts and
// pauses. A node's /metrics sums what every worker answers; summed naively, a worker that died
// takes its counts with it (Prometheus reads the drop as a counter reset: SIGKILL of one
// worker took frames_out_total from 62,934 to 32,877), and a worker that does not answer in
// time leaves a partial sum. So the primary keeps each worker's last answer: a worker that does
// not answer is counted at its last known figures (and the scrape says how many were), and a
// worker that exits has its counters folded into a retired total the node keeps.

import { LATENCY_BUCKETS, mergeSnapshots, type MetricsSnapshot } from '../support/metrics.js'

function emptySnapshot(): MetricsSnapshot {
  return { counters: {}, labelled: {}, gauges: {}, latency: { counts: new Array<number>(LATENCY_BUCKETS.length + 1).fill(0), sum: 0, count: 0 }, processes: [] }
}

export class NodeMetrics {
  private readonly last = new Map<number, MetricsSnapshot>()
  /** Counters of workers that have exited: their totals stay in the node's. */
  private retired = emptySnapshot()
  private restarts = 0

  /** One scrape: `answers[i]` is worker `indexes[i]`'s answer, or null when it did not
   * answer in time. Returns what to sum for the node. */
  scrape(indexes: readonly number[], answers: ReadonlyArray<MetricsSnapshot | null>): MetricsSnapshot[] {
    const out: MetricsSnapshot[] = [this.retiredSnapshot()]
    let stale = 0
    indexes.forEach((index, i) => {
      const answer = answers[i] ?? null
      if (answer !== null) {
        this.last.set(index, answer)
        out.push(answer)
        return
      }
      const known = this.last.get(index)
      if (known === undefined) return
      stale++
      // Its counters as last known; its gauges and process series are not current, so left out.
      out.push({ ...emptySnapshot(), counters: known.counters, labelled: known.labelled, latency: known.latency })
    })
    out.push({ ...emptySnapshot(), counters: { worker_restarts_total: this.restarts }, gauges: { workers_stale: stale } })
    return out
  }

  /** A worker exited: what it last reported stays counted. */
  exited(index: number, restarting: boolean): void {
    const known = this.last.get(index)
    this.last.delete(index)
    if (restarting) this.restarts++
    if (known === undefined) return
    // Its counters only: its gauges and process series ended with it.
    this.retired = mergeSnapshots([this.retired, { ...emptySnapshot(), counters: known.counters, labelled: known.labelled, latency: known.latency }])
  }

  private retiredSnapshot(): MetricsSnapshot {
    return { ...emptySnapshot(), counters: { ...this.retired.counters }, labelled: structuredClone(this.retired.labelled), latency: structuredClone(this.retired.latency) }
  }
}

// Live metrics, hand-written rather than prom-client: the hot path bumps plain number fields
// (no label lookups, no method calls), and a snapshot is a plain object that worker processes
// send to the primary, which sums them and renders one Prometheus text page for the node.

import { LOOP_DELAY_BUCKETS, type ProcessStats } from './process-stats.js'

/** Upper bounds, in seconds, of the producer-to-send latency histogram. */
export const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5] as const

export class Metrics {
  // counters
  connectionsOpened = 0
  connectionsClosed = 0
  brokerMessages = 0
  unwatchedMessages = 0
  malformedPayloads = 0
  updatesPublished = 0
  framesOut = 0
  bytesOut = 0
  slowConsumerCloses = 0
  slowConsumersParked = 0
  slowConsumersCaughtUp = 0
  catchUpStatuses = 0
  snapshotReads = 0
  snapshotFailures = 0
  resyncs = 0
  seenRecords = 0
  /** Payloads without seq on jobs that have a stored state (a plain PUBLISH beside the script). */
  unsequencedPayloads = 0
  /** Final states sent by plain PUBLISH that the gateway stored through the producer script. */
  finalsRecorded = 0
  /** Jobs whose stored state went back within one epoch (Redis lost writes): stream/losses.ts. */
  historyLosses = 0
  /** The same, told by a client's `since` rather than seen by the gateway (rate-bound). */
  historyLossClaims = 0
  idleCollections = 0
  clientErrors: Record<string, number> = {}
  rejectedUpgrades: Record<string, number> = {}
  /** Requests refused on any transport, keyed `transport="…",reason="…"`. */
  refusals: Record<string, number> = {}
  // gauges
  connections = 0
  subscriptions = 0
  sseStreams = 0
  // histogram of (send time - producer ts), counts per LATENCY_BUCKETS plus +Inf
  latencyCounts: number[] = new Array<number>(LATENCY_BUCKETS.length + 1).fill(0)
  latencySum = 0
  latencyCount = 0

  /** HOT PATH: one delivery whose payload carried `ts` (ms since the epoch). */
  observeLatency(tsMs: number, nowMs: number): void {
    const seconds = Math.max(0, nowMs - tsMs) / 1000
    let i = 0
    while (i < LATENCY_BUCKETS.length && seconds > LATENCY_BUCKETS[i]!) i++
    this.latencyCounts[i]!++
    this.latencySum += seconds
    this.latencyCount++
  }

  countClientError(code: string): void {
    this.clientErrors[code] = (this.clientErrors[code] ?? 0) + 1
  }

  countRefusal(transport: string, reason: string): void {
    const key = `transport="${transport}",reason="${reason}"`
    this.refusals[key] = (this.refusals[key] ?? 0) + 1
  }

  countRejectedUpgrade(reason: string): void {
    this.rejectedUpgrades[reason] = (this.rejectedUpgrades[reason] ?? 0) + 1
  }
}

/** What a process reports: its counters plus the gauges the gateway reads at scrape time. */
export interface MetricsSnapshot {
  readonly counters: Record<string, number>
  readonly labelled: Record<string, Record<string, number>>
  readonly gauges: Record<string, number>
  readonly latency: { counts: number[]; sum: number; count: number }
  /** One entry per process (merging concatenates them). */
  readonly processes: ProcessStats[]
}

export interface LiveGauges {
  jobsWatched: number
  brokerUp: number
  brokerReconnects: number
  logLinesDropped: number
  process: ProcessStats
}

export function snapshotMetrics(m: Metrics, live: LiveGauges): MetricsSnapshot {
  return {
    counters: {
      connections_opened_total: m.connectionsOpened,
      connections_closed_total: m.connectionsClosed,
      broker_messages_total: m.brokerMessages,
      broker_messages_unwatched_total: m.unwatchedMessages,
      producer_malformed_total: m.malformedPayloads,
      updates_published_total: m.updatesPublished,
      frames_out_total: m.framesOut,
      bytes_out_total: m.bytesOut,
      slow_consumer_closes_total: m.slowConsumerCloses,
      slow_consumers_parked_total: m.slowConsumersParked,
      slow_consumers_caught_up_total: m.slowConsumersCaughtUp,
      catch_up_statuses_total: m.catchUpStatuses,
      snapshot_reads_total: m.snapshotReads,
      snapshot_failures_total: m.snapshotFailures,
      resyncs_total: m.resyncs,
      seen_records_total: m.seenRecords,
      producer_unsequenced_total: m.unsequencedPayloads,
      finals_recorded_total: m.finalsRecorded,
      history_losses_total: m.historyLosses,
      history_loss_claims_total: m.historyLossClaims,
      idle_collections_total: m.idleCollections,
      broker_reconnects_total: live.brokerReconnects,
      log_lines_dropped_total: live.logLinesDropped,
    },
    labelled: {
      client_errors_total: { ...m.clientErrors },
      upgrades_rejected_total: { ...m.rejectedUpgrades },
      requests_refused_total: { ...m.refusals },
    },
    gauges: {
      connections: m.connections,
      subscriptions: m.subscriptions,
      sse_streams: m.sseStreams,
      jobs_watched: live.jobsWatched,
      broker_up: live.brokerUp,
      workers: 1,
    },
    latency: { counts: [...m.latencyCounts], sum: m.latencySum, count: m.latencyCount },
    processes: [live.process],
  }
}

/** Sums snapshots from several processes (counters and gauges add up; broker_up is the
 * minimum, so the node reports down while any worker is cut off). */
export function mergeSnapshots(snapshots: readonly MetricsSnapshot[]): MetricsSnapshot {
  const out: MetricsSnapshot = {
    counters: {},
    labelled: {},
    gauges: {},
    latency: { counts: new Array<number>(LATENCY_BUCKETS.length + 1).fill(0), sum: 0, count: 0 },
    processes: [],
  }
  for (const s of snapshots) {
    out.processes.push(...s.processes)
    for (const [k, v] of Object.entries(s.counters)) out.counters[k] = (out.counters[k] ?? 0) + v
    for (const [k, v] of Object.entries(s.gauges)) {
      out.gauges[k] = k === 'broker_up' ? Math.min(out.gauges[k] ?? 1, v) : (out.gauges[k] ?? 0) + v
    }
    for (const [name, byLabel] of Object.entries(s.labelled)) {
      const target = (out.labelled[name] ??= {})
      for (const [label, v] of Object.entries(byLabel)) target[label] = (target[label] ?? 0) + v
    }
    s.latency.counts.forEach((c, i) => (out.latency.counts[i]! += c))
    out.latency.sum += s.latency.sum
    out.latency.count += s.latency.count
  }
  return out
}

const HELP: Record<string, string> = {
  connections_opened_total: 'WebSocket connections accepted',
  connections_closed_total: 'WebSocket connections closed',
  broker_messages_total: 'messages received from the broker',
  broker_messages_unwatched_total: 'broker messages for jobs nobody on this node watches',
  producer_malformed_total: 'producer payloads dropped: not a JSON object or msgpack map of JSON values, too deep, too large, or failed in the hot path',
  updates_published_total: 'job_update frames handed to uWS (one per encoding with subscribers)',
  frames_out_total: 'frames sent to sockets (publishes times subscribers, plus direct sends)',
  bytes_out_total: 'payload bytes of frames sent to sockets',
  slow_consumer_closes_total: 'slow sockets and SSE streams closed: past --max-backpressure-bytes, or congested SSE streams after 30 s',
  slow_consumers_parked_total: 'times a socket or SSE stream fell behind (past --catch-up-bytes) and stopped getting updates until it drained',
  slow_consumers_caught_up_total: 'times a parked socket or SSE stream drained and was sent the latest state of its jobs',
  catch_up_statuses_total: 'job_status frames sent to catch up parked sockets and streams',
  snapshot_reads_total: 'job snapshots read from the broker',
  snapshot_failures_total: 'job snapshot reads that failed or timed out',
  resyncs_total: 'times subscribers were resynchronised after the broker came back',
  seen_records_total: 'latest payloads of PUBLISH-only jobs written to Redis for the other workers and nodes (at most 4 per job per second, final states at once)',
  producer_unsequenced_total: 'payloads without seq (plain PUBLISH) on jobs that have a state stored by the producer script; not stored unless final',
  finals_recorded_total: 'final states sent by plain PUBLISH on jobs with a stored state, stored by this gateway through the producer script',
  history_losses_total: 'jobs whose stored state went back within one epoch (Redis lost writes), seen by this gateway; each begins a new epoch',
  history_loss_claims_total: "the same, told by a client's since ahead of the stored state (at most once per job a minute)",
  idle_collections_total: 'full garbage collections asked of V8 once the process went quiet after its heap grew (--idle-gc-mb): two per burst, the second compacting',
  broker_reconnects_total: 'times the broker connection came back after an outage',
  log_lines_dropped_total: 'log lines dropped because stdout did not take them (a stalled log reader)',
  client_errors_total: 'error replies sent to clients, by code',
  upgrades_rejected_total: 'WebSocket upgrades refused, by reason',
  requests_refused_total: 'requests refused (bad or missing token, missing role, forbidden job), by transport and reason',
  connections: 'open WebSocket connections',
  subscriptions: 'socket-to-job subscriptions',
  sse_streams: 'open Server-Sent Events streams',
  jobs_watched: 'jobs with at least one watcher on this node',
  broker_up: '1 when the broker connection is ready',
  workers: 'gateway processes reporting',
  workers_stale: 'workers that did not answer this scrape in time, counted at their last known figures',
  worker_restarts_total: 'workers the primary restarted after they exited',
}

export function renderPrometheus(s: MetricsSnapshot, prefix = 'jobwire_'): string {
  const lines: string[] = []
  const head = (name: string, type: string) => {
    lines.push(`# HELP ${prefix}${name} ${HELP[name] ?? name}`, `# TYPE ${prefix}${name} ${type}`)
  }
  for (const [name, value] of Object.entries(s.counters)) {
    head(name, 'counter')
    lines.push(`${prefix}${name} ${value}`)
  }
  for (const [name, byLabel] of Object.entries(s.labelled)) {
    head(name, 'counter')
    // requests_refused_total's keys are already label sets; the others name one label's value.
    const labels = (value: string) => name === 'requests_refused_total' ? value
      : `${name === 'client_errors_total' ? 'code' : 'reason'}="${value}"`
    for (const [value, count] of Object.entries(byLabel)) lines.push(`${prefix}${name}{${labels(value)}} ${count}`)
  }
  for (const [name, value] of Object.entries(s.gauges)) {
    head(name, 'gauge')
    lines.push(`${prefix}${name} ${value}`)
  }
  const h = 'producer_to_send_seconds'
  lines.push(`# HELP ${prefix}${h} time from the producer's ts to the gateway handing the frame to uWS`)
  lines.push(`# TYPE ${prefix}${h} histogram`)
  let cumulative = 0
  LATENCY_BUCKETS.forEach((le, i) => {
    cumulative += s.latency.counts[i]!
    lines.push(`${prefix}${h}_bucket{le="${le}"} ${cumulative}`)
  })
  cumulative += s.latency.counts[LATENCY_BUCKETS.length]!
  lines.push(`${prefix}${h}_bucket{le="+Inf"} ${cumulative}`)
  lines.push(`${prefix}${h}_sum ${s.latency.sum}`, `${prefix}${h}_count ${s.latency.count}`)
  renderProcesses(s.processes, prefix, lines)
  return lines.join('\n') + '\n'
}

/** `jobwire_build_info{version,node} 1`: which build answers, for dashboards and alerts on
 * mixed versions during a rollout. */
export function renderBuildInfo(version: string, prefix = 'jobwire_'): string {
  return `# HELP ${prefix}build_info the gateway's version and Node's\n# TYPE ${prefix}build_info gauge\n` +
    `${prefix}build_info{version="${version}",node="${process.version}"} 1\n`
}

function renderProcesses(processes: readonly ProcessStats[], prefix: string, lines: string[]): void {
  const series = (name: string, type: string, help: string, value: (p: ProcessStats) => number) => {
    lines.push(`# HELP ${prefix}${name} ${help}`, `# TYPE ${prefix}${name} ${type}`)
    for (const p of processes) lines.push(`${prefix}${name}{process="${p.process}"} ${value(p)}`)
  }
  series('process_cpu_seconds_total', 'counter', 'user and system CPU time of each gateway process', (p) => p.cpuSeconds)
  series('process_open_fds', 'gauge', 'open file descriptors of each gateway process (one per socket)', (p) => p.openFds)
  series('process_max_fds', 'gauge', 'the open-files limit of each gateway process (-1: unknown)', (p) => p.maxFds)
  series('process_start_time_seconds', 'gauge', 'when each gateway process started, in seconds since the epoch', (p) => p.startTimeSeconds)
  lines.push(`# HELP ${prefix}process_resident_memory_bytes resident memory (RSS) of each gateway process`, `# TYPE ${prefix}process_resident_memory_bytes gauge`)
  for (const p of processes) lines.push(`${prefix}process_resident_memory_bytes{process="${p.process}"} ${p.rssBytes}`)
  lines.push(`# HELP ${prefix}process_heap_used_bytes V8 heap in use of each gateway process`, `# TYPE ${prefix}process_heap_used_bytes gauge`)
  for (const p of processes) lines.push(`${prefix}process_heap_used_bytes{process="${p.process}"} ${p.heapUsedBytes}`)
  lines.push(`# HELP ${prefix}process_heap_committed_bytes memory V8 holds for the heap of each gateway process, used or not`, `# TYPE ${prefix}process_heap_committed_bytes gauge`)
  for (const p of processes) lines.push(`${prefix}process_heap_committed_bytes{process="${p.process}"} ${p.heapCommittedBytes}`)
  const h = 'event_loop_delay_seconds'
  lines.push(`# HELP ${prefix}${h} how late each gateway process's event loop ran (sampled every 10 ms)`, `# TYPE ${prefix}${h} histogram`)
  for (const p of processes) {
    let cumulative = 0
    LOOP_DELAY_BUCKETS.forEach((le, i) => {
      cumulative += p.loopDelay.counts[i]!
      lines.push(`${prefix}${h}_bucket{process="${p.process}",le="${le}"} ${cumulative}`)
    })
    cumulative += p.loopDelay.counts[LOOP_DELAY_BUCKETS.length]!
    lines.push(`${prefix}${h}_bucket{process="${p.process}",le="+Inf"} ${cumulative}`)
    lines.push(`${prefix}${h}_sum{process="${p.process}"} ${p.loopDelay.sum}`, `${prefix}${h}_count{process="${p.process}"} ${p.loopDelay.count}`)
  }
}

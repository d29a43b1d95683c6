// A fleet of load-generator processes holding one scenario's sockets, and one measurement
// window: reset counters, publish at a rate, wait for every delivery (or for them to stop
// coming), then account for every frame, every CPU microsecond and every byte of memory.
// The load generator and the publisher are small C programs (bench/native/), driven over
// stdin/stdout: on this 2-core machine they must cost as little CPU and add as little jitter
// as possible, so that what is measured is the gateway.

import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import * as hdr from 'hdr-histogram-js'
import { projectPath } from '../src/support/paths.js'
import { PROGRESS_SCRIPT_PATH } from '../src/producer/script.js'
import { track } from './children.js'
import { cpuMicros, cpuSplit, rssBytes, sum } from './procstat.js'
import type { Running } from './targets.js'

export interface LatencySummary {
  p50: number
  p90: number
  p99: number
  p999: number
  max: number
  samples: number
}

/** A histogram of microseconds as milliseconds' percentiles. */
export function latencySummary(h: hdr.Histogram): LatencySummary {
  const ms = (us: number) => Math.round(us) / 1000
  return {
    p50: ms(h.getValueAtPercentile(50)), p90: ms(h.getValueAtPercentile(90)), p99: ms(h.getValueAtPercentile(99)),
    p999: ms(h.getValueAtPercentile(99.9)), max: ms(h.maxValue), samples: h.totalCount,
  }
}

export interface WindowResult {
  ratePerSec: number
  durationMs: number
  published: number
  expected: number
  delivered: number
  lost: number
  otherFrames: number
  closedByServer: number
  deliveriesPerSec: number
  /** Milliseconds, end to end (publisher -> Redis -> gateway -> socket). */
  latencyMs: LatencySummary
  /** Percent of one core. */
  cpu: { gateway: number; generator: number; publisher: number; redis: number }
  /** Share of the gateway's CPU time spent in the kernel (its socket writes), in percent. */
  gatewayKernelShare: number
  gatewayUsPerDelivery: number
  /** CPU of every redis-server process (a cluster's replicas included) per update published,
   * in microseconds: what one update costs Redis, storing and publishing. Absent in reports
   * written before it was measured. */
  redisUsPerUpdate?: number
  publisherLagMs: number
  histogram: string
}

export interface LoadgenReport {
  updates: number
  otherFrames: number
  closedByServer: number
  open: number
  samples: number
  cpuMicros: number
  perJob: Record<string, number>
  /** CLOCK_MONOTONIC microseconds of the last job_update a probe (while recording: any
   * socket) received; 0 when none since the reset. */
  lastUpdateUs: number
  /** While recording: per job, the lowest seq any of its subscribed sockets holds. */
  held?: Record<string, number>
  histogram: Array<[number, number]>
}

/** What one load generator recorded between `record PATH` and `record stop`. */
export interface Recorded {
  /** The file of its probe sockets' frames (loadgen.c record_t). */
  readonly path: string
  readonly records: number
  /** Frames past loadgen.c's RECORDS_MAX, not written. */
  readonly dropped: number
  /** job_update frames whose seq could not be read. */
  readonly unparsed: number
  /** Every subscribed probe socket of this generator: [socket index, job index]. */
  readonly probes: Array<[number, number]>
  /** Every subscribed socket of this generator: [job index, the highest seq it received]. */
  readonly sockets: Array<[number, number]>
}

type Reply =
  | { type: 'connected'; ok: number; failed: number; ms: number; errors: string[]; subscribers: Record<string, number> }
  | { type: 'subscribed'; ms: number; subscribers: Record<string, number> }
  | { type: 'report'; report: LoadgenReport }
  | { type: 'reset' }
  | { type: 'closed' }
  | { type: 'recording' }
  | { type: 'recorded'; records: number; dropped: number; unparsed: number; probes: Array<[number, number]>; sockets: Array<[number, number]> }
  | { type: 'error'; error: string }
  | { type: 'done'; sent: number; failed: number; unanswered: number; logged: number; cpuMicros: number; lagMs: number; elapsedMs: number; error: string; perJob: Record<string, number> }

/** A native helper process speaking one command per line, one JSON reply per line. */
class Native {
  private waiting: Array<(reply: Reply) => void> = []
  constructor(readonly proc: ChildProcess) {
    createInterface({ input: proc.stdout! }).on('line', (line) => this.waiting.shift()?.(JSON.parse(line) as Reply))
  }
  request(line: string): Promise<Reply> {
    return new Promise((resolve, reject) => {
      if (this.proc.exitCode !== null) return reject(new Error(`${this.proc.spawnfile} exited`))
      this.waiting.push(resolve)
      this.proc.stdin!.write(`${line}\n`)
    })
  }
}

const NATIVE = (name: string) => projectPath('dist', 'bench', 'native', name)

export interface FleetPlan {
  readonly sockets: number
  readonly jobs: number
  readonly loadgens: number
  /** One socket in this many (spread over fan-out positions) decodes and timestamps. */
  readonly probeEvery: number
  readonly subscribe: boolean
  readonly jobPrefix: string
  /** The request path, query included (a ?token=); /ws/jobs when absent. At most 255 bytes. */
  readonly path?: string
  /** Every subscribe_job asks for at most this many updates a second (max_hz); 0 or absent: none. */
  readonly maxHz?: number
}

export function jobIds(plan: Pick<FleetPlan, 'jobs' | 'jobPrefix'>): string[] {
  return Array.from({ length: plan.jobs }, (_, j) => `${plan.jobPrefix}${j}`)
}

// Every fleet gets fresh source addresses, so ports left in TIME_WAIT by an earlier fleet of
// the same run are never reused: 127.0.0.10-249, then 127.0.1.10-249, and so on.
let sourceCursor = 0
function nextSourceAddress(): string {
  const n = sourceCursor++
  return `127.0.${Math.floor(n / 240)}.${10 + (n % 240)}`
}

export class Fleet {
  readonly subscribers: Record<string, number> = {}
  connected = 0
  failed = 0
  connectMs = 0
  errors: string[] = []
  private constructor(private readonly gens: Native[]) {}

  static async open(target: Running, plan: FleetPlan): Promise<Fleet> {
    const gens = Array.from({ length: plan.loadgens }, () =>
      new Native(track(spawn(NATIVE('loadgen'), [], { stdio: ['pipe', 'pipe', 'inherit'] }))))
    const fleet = new Fleet(gens)
    // Socket i of the scenario goes to generator i % loadgens (see loadgen.c for the plan).
    // 128 handshakes in flight per generator: more overflow the listen backlog (512 in uWS)
    // and the dropped SYNs wait a second for their retransmission.
    const replies = await Promise.all(gens.map((g, k) => {
      const count = Math.ceil((plan.sockets - k) / plan.loadgens)
      // Several nodes: generator k connects to node k % nodes (every node sees every job).
      const port = target.ports?.[k % target.ports.length] ?? target.port
      return g.request(`connect 127.0.0.1 ${port} ${plan.path ?? '/ws/jobs'} ${nextSourceAddress()} ${count} ${k} ${plan.loadgens} ` +
        `${plan.jobs} ${plan.jobPrefix} ${plan.probeEvery} ${plan.subscribe ? 1 : 0} 128 ${plan.maxHz ?? 0}`)
    }))
    for (const r of replies) {
      if (r.type !== 'connected') continue
      fleet.connected += r.ok
      fleet.failed += r.failed
      fleet.connectMs = Math.max(fleet.connectMs, r.ms)
      fleet.errors.push(...r.errors)
      for (const [job, n] of Object.entries(r.subscribers)) fleet.subscribers[job] = (fleet.subscribers[job] ?? 0) + n
    }
    return fleet
  }

  pids(): number[] {
    return this.gens.map((g) => g.proc.pid!)
  }

  /** Subscribes every socket opened without subscribing; resolves with the slowest lane's ms. */
  async subscribeAll(): Promise<number> {
    const replies = await Promise.all(this.gens.map((g) => g.request('subscribe')))
    let ms = 0
    for (const r of replies) {
      if (r.type !== 'subscribed') continue
      ms = Math.max(ms, r.ms)
      for (const [job, n] of Object.entries(r.subscribers)) this.subscribers[job] = n + (this.subscribers[job] ?? 0)
    }
    return ms
  }

  async reports(): Promise<LoadgenReport[]> {
    const replies = await Promise.all(this.gens.map((g) => g.request('report')))
    return replies.flatMap((r) => (r.type === 'report' ? [r.report] : []))
  }

  /** Zeroes the counters; from now on every socket keeps the highest seq it received and the
   * probes write every frame to `<dir>/probes-<k>.bin` (see loadgen.c). */
  async record(dir: string): Promise<void> {
    await Promise.all(this.gens.map((g) => g.request('reset')))
    const replies = await Promise.all(this.gens.map((g, k) => g.request(`record ${dir}/probes-${k}.bin`)))
    for (const r of replies) if (r.type !== 'recording') throw new Error(`loadgen did not start recording: ${JSON.stringify(r)}`)
  }

  /** Closes the generators' record files. */
  async stopRecording(dir: string): Promise<Recorded[]> {
    const replies = await Promise.all(this.gens.map((g) => g.request('record stop')))
    return replies.map((r, k) => {
      if (r.type !== 'recorded') throw new Error(`loadgen did not stop recording: ${JSON.stringify(r)}`)
      return { path: `${dir}/probes-${k}.bin`, records: r.records, dropped: r.dropped, unparsed: r.unparsed, probes: r.probes, sockets: r.sockets }
    })
  }

  async measure(target: Running, redis: Pick<Running, 'pids'>, publisher: Publisher, run: PublishRun): Promise<WindowResult> {
    await Promise.all(this.gens.map((g) => g.request('reset')))
    const gatewayPids = target.pids()
    const kernel0 = sum(gatewayPids, (pid) => cpuSplit(pid)[1])
    const cpu0 = { gw: sum(gatewayPids, cpuMicros), gen: sum(this.pids(), cpuMicros), pub: cpuMicros(publisher.proc.pid!), redis: sum(redis.pids(), cpuMicros) }
    const t0 = performance.now()
    const published = await publisher.run(run)
    let expected = 0
    for (const [job, n] of Object.entries(published.perJob)) expected += n * (this.subscribers[job] ?? 0)
    // Wait until everything arrived, or until nothing more arrives for a second.
    let last = -1
    let stableSince = performance.now()
    let reports = await this.reports()
    for (;;) {
      const delivered = reports.reduce((s, r) => s + r.updates, 0)
      if (delivered >= expected) break
      if (delivered !== last) {
        last = delivered
        stableSince = performance.now()
      } else if (performance.now() - stableSince > 1000) {
        break
      }
      await new Promise((r) => setTimeout(r, 100))
      reports = await this.reports()
    }
    const wallMs = performance.now() - t0
    const kernel1 = sum(gatewayPids, (pid) => cpuSplit(pid)[1])
    const cpu1 = { gw: sum(gatewayPids, cpuMicros), gen: sum(this.pids(), cpuMicros), pub: cpuMicros(publisher.proc.pid!), redis: sum(redis.pids(), cpuMicros) }
    const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 })
    for (const r of reports) for (const [value, count] of r.histogram) histogram.recordValueWithCount(value, count)
    const delivered = reports.reduce((s, r) => s + r.updates, 0)
    const pct = (micros: number) => (micros / (wallMs * 1000)) * 100
    return {
      ratePerSec: run.ratePerSec,
      durationMs: run.durationMs,
      published: published.sent,
      expected,
      delivered,
      lost: Math.max(0, expected - delivered),
      otherFrames: reports.reduce((s, r) => s + r.otherFrames, 0),
      closedByServer: reports.reduce((s, r) => s + r.closedByServer, 0),
      deliveriesPerSec: Math.round(delivered / (published.elapsedMs / 1000)),
      latencyMs: latencySummary(histogram),
      cpu: { gateway: pct(cpu1.gw - cpu0.gw), generator: pct(cpu1.gen - cpu0.gen), publisher: pct(cpu1.pub - cpu0.pub), redis: pct(cpu1.redis - cpu0.redis) },
      gatewayKernelShare: cpu1.gw > cpu0.gw ? ((kernel1 - kernel0) / (cpu1.gw - cpu0.gw)) * 100 : 0,
      gatewayUsPerDelivery: delivered > 0 ? (cpu1.gw - cpu0.gw) / delivered : 0,
      redisUsPerUpdate: published.sent > 0 ? (cpu1.redis - cpu0.redis) / published.sent : 0,
      publisherLagMs: published.lagMs,
      histogram: hdr.encodeIntoCompressedBase64(histogram),
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.gens.map(async (g) => {
      await g.request('close').catch(() => undefined)
      if (g.proc.exitCode === null) g.proc.kill()
    }))
  }
}

export interface PublishRun {
  readonly jobs: readonly string[]
  readonly jobPrefix: string
  readonly ratePerSec: number
  readonly durationMs: number
  readonly via: 'script' | 'publish'
  /** With 'publish': the payload carries the publisher's own per-job "seq" (publisher.c seq=1). */
  readonly ownSeq?: boolean
  /** Each job's last update of the run is terminal ("status":"completed"). */
  readonly lastTerminal?: boolean
  /** Where the publisher writes (job, seq, stamp) of every accepted update (publisher.c log=). */
  readonly log?: string
  /** The publisher wakes at most this often, sending what is due (publisher.c tick=). */
  readonly tickUs?: number
}

export interface PublishResult {
  sent: number
  failed: number
  logged: number
  perJob: Record<string, number>
  lagMs: number
  elapsedMs: number
}

export class Publisher {
  private readonly native: Native
  /** Redis Cluster: one port per master, and for a job's channel the index of its master. */
  constructor(redisPort: number | readonly number[], private readonly masterOf: ((channel: string) => number) | null = null) {
    const ports = typeof redisPort === 'number' ? [redisPort] : redisPort
    this.native = new Native(track(spawn(NATIVE('publisher'), ['127.0.0.1', ports.join(','), PROGRESS_SCRIPT_PATH], { stdio: ['pipe', 'pipe', 'inherit'] })))
  }
  get proc(): ChildProcess {
    return this.native.proc
  }
  async run(run: PublishRun): Promise<PublishResult> {
    // On a cluster: one letter per job naming its master ('a' = the first port).
    const route = this.masterOf === null ? '' : ` ${run.jobs.map((job) => String.fromCharCode(97 + this.masterOf!(`progress:${job}`))).join('')}`
    const options = `${run.ownSeq ? ' seq=1' : ''}${run.lastTerminal ? ' last=1' : ''}${run.log ? ` log=${run.log}` : ''}${run.tickUs ? ` tick=${run.tickUs}` : ''}`
    const reply = await this.native.request(`run ${run.ratePerSec} ${run.durationMs} ${run.via} ${run.jobs.length} ${run.jobPrefix} jobwire: progress:${route}${options}`)
    if (reply.type !== 'done') throw new Error(`publisher answered ${reply.type}`)
    if (reply.failed > 0 || reply.unanswered > 0) {
      process.stderr.write(`[bench] publisher: ${reply.failed} failed, ${reply.unanswered} unanswered: ${reply.error}\n`)
    }
    return reply
  }
}

export function gatewayRss(target: Running): number {
  return sum(target.pids(), rssBytes)
}

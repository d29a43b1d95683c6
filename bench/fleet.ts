// A fleet of load-generator processes holding one scenario's sockets, and one measurement
// window: reset counters, publish at a rate, wait for every delivery (or for them to stop
// coming), then account for every frame, every CPU microsecond and every byte of memory.

import { fork, type ChildProcess } from 'node:child_process'
import * as hdr from 'hdr-histogram-js'
import { projectPath } from '../src/paths.js'
import type { LoadgenCommand, LoadgenReply, LoadgenReport, SocketPlan } from './loadgen.js'
import { cpuMicros, rssBytes, sum } from './procstat.js'
import type { PublishResult, PublishRun } from './publisher.js'
import type { Running } from './targets.js'

export interface LatencySummary {
  p50: number
  p90: number
  p99: number
  p999: number
  max: number
  samples: number
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
  gatewayUsPerDelivery: number
  publisherLagMs: number
  histogram: string
}

class Child<Cmd, Reply> {
  private waiting: Array<(reply: Reply) => void> = []
  constructor(readonly proc: ChildProcess) {
    proc.on('message', (reply: Reply) => this.waiting.shift()?.(reply))
  }
  request(command: Cmd): Promise<Reply> {
    return new Promise((resolve, reject) => {
      this.waiting.push(resolve)
      this.proc.send(command as object, (err) => err && reject(err))
    })
  }
  send(command: Cmd): void {
    this.proc.send(command as object)
  }
}

export interface FleetPlan {
  readonly sockets: number
  readonly jobs: number
  readonly loadgens: number
  /** One socket in this many (spread over fan-out positions) decodes and timestamps. */
  readonly probeEvery: number
  readonly subscribe: boolean
  readonly jobPrefix: string
}

export function jobIds(plan: Pick<FleetPlan, 'jobs' | 'jobPrefix'>): string[] {
  return Array.from({ length: plan.jobs }, (_, j) => `${plan.jobPrefix}${j}`)
}

export class Fleet {
  readonly subscribers: Record<string, number> = {}
  connected = 0
  failed = 0
  connectMs = 0
  errors: string[] = []
  private constructor(private readonly gens: Array<Child<LoadgenCommand, LoadgenReply>>) {}

  static async open(target: Running, plan: FleetPlan): Promise<Fleet> {
    const gens = Array.from({ length: plan.loadgens }, () =>
      new Child<LoadgenCommand, LoadgenReply>(fork(projectPath('dist', 'bench', 'loadgen.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })))
    const fleet = new Fleet(gens)
    const ids = jobIds(plan)
    const plans: SocketPlan[][] = gens.map(() => [])
    for (let i = 0; i < plan.sockets; i++) {
      const job = i % plan.jobs
      const rank = Math.floor(i / plan.jobs)
      plans[i % plan.loadgens]!.push({ jobId: ids[job]!, probe: rank % plan.probeEvery === 0 })
    }
    const replies = await Promise.all(gens.map((g, k) => g.request({
      cmd: 'connect', host: '127.0.0.1', port: target.port, path: '/ws/jobs', localAddress: `127.0.0.${10 + k}`,
      sockets: plans[k]!, concurrency: 256, subscribe: plan.subscribe,
    })))
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

  async reports(): Promise<LoadgenReport[]> {
    const replies = await Promise.all(this.gens.map((g) => g.request({ cmd: 'report' })))
    return replies.flatMap((r) => (r.type === 'report' ? [r.report] : []))
  }

  async measure(target: Running, redis: Running, publisher: Child<PublishRun, PublishResult>, run: Omit<PublishRun, 'cmd'>): Promise<WindowResult> {
    for (const g of this.gens) g.send({ cmd: 'reset' })
    await this.reports() // the resets have been applied once the reports come back
    const gatewayPids = target.pids()
    const cpu0 = { gw: sum(gatewayPids, cpuMicros), gen: sum(this.pids(), cpuMicros), pub: cpuMicros(publisher.proc.pid!), redis: sum(redis.pids(), cpuMicros) }
    const t0 = performance.now()
    const published = await publisher.request({ cmd: 'run', ...run })
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
    const cpu1 = { gw: sum(gatewayPids, cpuMicros), gen: sum(this.pids(), cpuMicros), pub: cpuMicros(publisher.proc.pid!), redis: sum(redis.pids(), cpuMicros) }
    const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 })
    for (const r of reports) histogram.add(hdr.decodeFromCompressedBase64(r.histogram))
    const delivered = reports.reduce((s, r) => s + r.updates, 0)
    const pct = (micros: number) => (micros / (wallMs * 1000)) * 100
    const ms = (us: number) => Math.round(us) / 1000
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
      latencyMs: {
        p50: ms(histogram.getValueAtPercentile(50)),
        p90: ms(histogram.getValueAtPercentile(90)),
        p99: ms(histogram.getValueAtPercentile(99)),
        p999: ms(histogram.getValueAtPercentile(99.9)),
        max: ms(histogram.maxValue),
        samples: histogram.totalCount,
      },
      cpu: { gateway: pct(cpu1.gw - cpu0.gw), generator: pct(cpu1.gen - cpu0.gen), publisher: pct(cpu1.pub - cpu0.pub), redis: pct(cpu1.redis - cpu0.redis) },
      gatewayUsPerDelivery: delivered > 0 ? (cpu1.gw - cpu0.gw) / delivered : 0,
      publisherLagMs: published.lagMs,
      histogram: hdr.encodeIntoCompressedBase64(histogram),
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.gens.map(async (g) => {
      await g.request({ cmd: 'close' }).catch(() => undefined)
      if (g.proc.exitCode === null) g.proc.kill()
    }))
  }
}

export function startPublisher(): Child<PublishRun, PublishResult> {
  return new Child<PublishRun, PublishResult>(fork(projectPath('dist', 'bench', 'publisher.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }))
}

export type Publisher = ReturnType<typeof startPublisher>

export function gatewayRss(target: Running): number {
  return sum(target.pids(), rssBytes)
}

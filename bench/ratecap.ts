// The rate-cap scenario (issue 12, item 3): one load, watched at full rate and then with every
// subscription capped (subscribe_job max_hz), each run against a fresh jobwire. For each run:
// deliveries/s, gateway CPU, and "time until the client holds the latest state".
//
// That time is measured exactly, not sampled. The publisher writes (job, seq, stamp) of every
// update Redis accepted (publisher.c log=); every probe socket writes (seq, receive time) of
// every frame it gets (loadgen.c record); both stamps are CLOCK_MONOTONIC on this machine. For
// each update u and each probe socket s watching u's job, the time is from u's stamp until s
// first received a frame whose seq >= seq(u): a capped socket that never sees u waits for the
// newer frame that supersedes it. An update that nothing superseded by the end counts as not
// held. Each job's last update is terminal, which the cap sends at once, so every socket must
// end holding its job's last seq; whatever has not arrived when the drain bound runs out is the
// backlog, reported as such.
//
// The updates go out as plain PUBLISHes that carry the publisher's own seq, not through the
// producer script: 50 updates/s for each of 1,000 jobs is 50,000 scripts a second, more than
// Redis can run on this 2-core machine beside the gateway (60-110 us of Redis CPU per scripted
// update in the other scenarios: 3 to 5 cores). The gateway treats a payload seq alike from
// either producer.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as hdr from 'hdr-histogram-js'
import { Fleet, jobIds, latencySummary, type LatencySummary, type LoadgenReport, type Publisher, type PublishResult, type Recorded } from './fleet.js'
import { cpuMicros, cpuSplit, sum } from './procstat.js'
import type { RateCapScenario } from './scenarios.js'
import type { Running } from './targets.js'


/** Time until the client holds the latest state, over every (update, probe socket) pair. */
export interface HeldSummary extends LatencySummary {
  /** Pairs whose update no frame of the socket superseded before the window closed. */
  notHeld: number
  probes: number
  /** Frames whose stamp differs from the one published with their seq (must be 0: the join's
   * check that seqs are read right). */
  mismatched: number
}

export interface RateCapRun {
  /** The subscriptions' max_hz; 0 for full rate. */
  readonly maxHz: number
  readonly connected: number
  /** Updates Redis accepted, and per second over the publishing time. */
  readonly published: number
  readonly publishedPerSec: number
  readonly publisherLagMs: number
  /** job_update frames received, over every socket. */
  readonly delivered: number
  /** Every other frame received (job_status resyncs of conflated slow sockets, errors). */
  readonly otherFrames: number
  /** What full rate owes: every update to every socket of its job. */
  readonly offered: number
  /** Deliveries over the time from the first update published to the last frame received. */
  readonly deliveriesPerSec: number
  /** From the start of publishing until every socket held its job's last state, or the bound. */
  readonly wallMs: number
  /** Every socket held its job's last (terminal) state before the drain bound. */
  readonly drained: boolean
  /** After the publisher finished: until the last socket held its terminal state, or the bound. */
  readonly drainMs: number
  /** Sockets that did not hold their job's terminal state when the window closed. */
  readonly terminalMissing: number
  readonly closedByServer: number
  /** Percent of one core, over wallMs. */
  readonly cpu: { gateway: number; generator: number; publisher: number; redis: number }
  readonly gatewayKernelShare: number
  readonly gatewayUsPerDelivery: number
  /** Gateway CPU per update published, whatever its fan-out. */
  readonly gatewayUsPerUpdate: number
  readonly held: HeldSummary
  /** Publish -> receive of the frames themselves (job_update frames of probe sockets). */
  readonly frameMs: LatencySummary
  readonly records: number
  readonly recordsDropped: number
  readonly seqUnparsed: number
}

export interface RateCapResult {
  readonly scenario: RateCapScenario
  readonly target: { readonly name: string; readonly kind: 'jobwire'; readonly workers: number }
  /** Full rate first, then capped. */
  readonly runs: RateCapRun[]
}

// --- the join -------------------------------------------------------------------------------

/** One job's updates of a window, in seq order: seq[i] was stamped stamp[i] (microseconds). */
export interface JobUpdates {
  readonly seq: Uint32Array
  readonly stamp: Float64Array
}

/** The frames one probe socket received, in arrival order. */
export interface ProbeFrames {
  readonly job: number
  readonly seq: ArrayLike<number>
  readonly recvUs: ArrayLike<number>
  /** job_update frames: the stamp "t" they carried; NaN for job_status frames. */
  readonly stampUs: ArrayLike<number>
}

const PUB_RECORD = 16 // publisher.c pub_record_t
const PROBE_RECORD = 32 // loadgen.c record_t

/** Reads publisher.c's log into per-job updates, sorted by seq. */
export function readPublished(path: string, jobs: number): JobUpdates[] {
  const buf = readFileSync(path)
  const count = new Uint32Array(jobs)
  for (let off = 0; off + PUB_RECORD <= buf.length; off += PUB_RECORD) {
    const job = buf.readUInt32LE(off)
    if (job < jobs) count[job]!++
  }
  const out = Array.from(count, (n) => ({ seq: new Uint32Array(n), stamp: new Float64Array(n) }))
  const filled = new Uint32Array(jobs)
  for (let off = 0; off + PUB_RECORD <= buf.length; off += PUB_RECORD) {
    const job = buf.readUInt32LE(off)
    if (job >= jobs) continue
    const i = filled[job]!++
    out[job]!.seq[i] = buf.readUInt32LE(off + 4)
    out[job]!.stamp[i] = buf.readDoubleLE(off + 8)
  }
  // A job's replies come back in the order it was published, so its seqs rise; sort if not.
  return out.map((u) => {
    if (u.seq.every((seq, i) => i === 0 || seq > u.seq[i - 1]!)) return u
    const order = Array.from(u.seq.keys()).sort((a, b) => u.seq[a]! - u.seq[b]!)
    return { seq: Uint32Array.from(order, (i) => u.seq[i]!), stamp: Float64Array.from(order, (i) => u.stamp[i]!) }
  })
}

/** Reads loadgen.c's record files into one ProbeFrames per subscribed probe socket (those that
 * received nothing included). */
export function readProbes(recorded: readonly Recorded[]): ProbeFrames[] {
  const out: ProbeFrames[] = []
  for (const r of recorded) {
    const buf = readFileSync(r.path)
    const bySocket = new Map<number, { job: number; seq: number[]; recvUs: number[]; stampUs: number[] }>()
    for (const [sock, job] of r.probes) bySocket.set(sock, { job, seq: [], recvUs: [], stampUs: [] })
    for (let off = 0; off + PROBE_RECORD <= buf.length; off += PROBE_RECORD) {
      const probe = bySocket.get(buf.readUInt32LE(off + 4))
      if (probe === undefined) continue
      probe.seq.push(buf.readUInt32LE(off + 8))
      probe.recvUs.push(buf.readDoubleLE(off + 16))
      probe.stampUs.push(buf.readUInt32LE(off + 12) === 0 ? buf.readDoubleLE(off + 24) : NaN)
    }
    out.push(...bySocket.values())
  }
  return out
}

function histogram(): hdr.Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: 3 })
}

/** The join: for every update of a probe's job and every probe, the time from the update's
 * stamp to the probe's first frame of a seq at least as high. */
export function latestHeld(updates: readonly JobUpdates[], probes: readonly ProbeFrames[]): { held: HeldSummary; frameMs: LatencySummary } {
  const held = histogram()
  const frames = histogram()
  let notHeld = 0
  let mismatched = 0
  for (const p of probes) {
    const u = updates[p.job]
    if (u === undefined || u.seq.length === 0) continue
    const first = u.seq[0]!
    let next = 0 // the first update of the job this socket does not hold yet
    let holds = 0
    for (let f = 0; f < p.seq.length; f++) {
      const seq = p.seq[f]!
      const stamp = p.stampUs[f]!
      if (!Number.isNaN(stamp) && seq >= first) {
        // seqs of one window are consecutive (the publisher's own counter); search otherwise
        let i = seq - first
        if (u.seq[i] !== seq) i = u.seq.indexOf(seq)
        if (i < 0 || Math.abs(u.stamp[i]! - stamp) > 0.01) mismatched++
        else frames.recordValue(Math.max(1, Math.round(p.recvUs[f]! - stamp)))
      }
      if (seq <= holds) continue
      holds = seq
      while (next < u.seq.length && u.seq[next]! <= holds) {
        held.recordValue(Math.max(1, Math.round(p.recvUs[f]! - u.stamp[next]!)))
        next++
      }
    }
    notHeld += u.seq.length - next
  }
  return { held: { ...latencySummary(held), notHeld, probes: probes.length, mismatched }, frameMs: latencySummary(frames) }
}

// --- the runs -------------------------------------------------------------------------------

export interface RateCapDeps {
  /** A fresh gateway for one run. */
  start(): Promise<Running>
  redis: Pick<Running, 'pids'>
  publisher: Publisher
  loadgens: number
  log(message: string): void
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** The publisher sends what is due once a millisecond: waking for each of 50,000 updates a
 * second would cost it half a core of the two the gateway runs on. */
const PUBLISH_TICK_US = 1000

export async function runRateCap(scenario: RateCapScenario, target: RateCapResult['target'], deps: RateCapDeps): Promise<RateCapResult> {
  const runs: RateCapRun[] = []
  for (const maxHz of [0, scenario.maxHz]) {
    const run = await runOnce(scenario, maxHz, deps)
    deps.log(`${scenario.id} ${maxHz === 0 ? 'full rate' : `max_hz ${maxHz}`}: ${Math.round(run.deliveriesPerSec)} deliveries/s, gateway ${run.cpu.gateway.toFixed(0)}%, ` +
      `held p99 ${run.held.p99} ms, ${run.drained ? `drained in ${Math.round(run.drainMs)} ms` : `NOT drained after ${Math.round(run.drainMs)} ms`}, ` +
      `${run.terminalMissing} terminal states missing`)
    runs.push(run)
  }
  return { scenario, target, runs }
}

interface Window {
  published: PublishResult
  updates: JobUpdates[]
  reports: LoadgenReport[]
  recorded: Recorded[]
  wallMs: number
  drained: boolean
  drainMs: number
  cpuMicros: { gateway: number; generator: number; publisher: number; redis: number }
  kernelMicros: number
}

async function runOnce(scenario: RateCapScenario, maxHz: number, deps: RateCapDeps): Promise<RateCapRun> {
  const target = await deps.start()
  const dir = mkdtempSync(join(tmpdir(), 'jobwire-ratecap-'))
  try {
    const plan = { sockets: scenario.sockets, jobs: scenario.jobs, loadgens: deps.loadgens, probeEvery: scenario.probeEvery, subscribe: true,
      jobPrefix: `${scenario.id}-${maxHz === 0 ? 'full' : `${maxHz}hz`}-`, maxHz }
    const fleet = await Fleet.open(target, plan)
    try {
      if (fleet.failed > 0) deps.log(`${scenario.id}: ${fleet.failed} sockets failed to connect: ${fleet.errors.join('; ')}`)
      const run = { jobs: jobIds(plan), jobPrefix: plan.jobPrefix }
      const rate = scenario.perJobHz * scenario.jobs
      // Half a second at a tenth of the rate, drained, so the JIT has settled and no frame of
      // it is still on its way when the measured window starts.
      await measure(fleet, target, deps, { ...run, ratePerSec: rate / 10, durationMs: 500 }, scenario.drainMs, dir, 'warm-up')
      const w = await measure(fleet, target, deps, { ...run, ratePerSec: rate, durationMs: scenario.publishMs }, scenario.drainMs, dir, 'window')
      return summarise(w, maxHz, fleet)
    } finally {
      await fleet.close()
    }
  } finally {
    await target.stop()
    rmSync(dir, { recursive: true, force: true })
  }
}

async function measure(fleet: Fleet, target: Running, deps: RateCapDeps, run: { jobs: string[]; jobPrefix: string; ratePerSec: number; durationMs: number },
  drainMs: number, dir: string, name: string): Promise<Window> {
  await fleet.record(dir)
  const gatewayPids = target.pids()
  const cpu = () => ({ gateway: sum(gatewayPids, cpuMicros), generator: sum(fleet.pids(), cpuMicros), publisher: cpuMicros(deps.publisher.proc.pid!), redis: sum(deps.redis.pids(), cpuMicros) })
  const kernel0 = sum(gatewayPids, (pid) => cpuSplit(pid)[1])
  const cpu0 = cpu()
  const t0 = performance.now()
  const logPath = join(dir, `${name}-published.bin`)
  const published = await deps.publisher.run({ ...run, via: 'publish', ownSeq: true, lastTerminal: true, log: logPath, tickUs: PUBLISH_TICK_US })
  const published1 = performance.now()
  const updates = readPublished(logPath, run.jobs.length)
  const last = new Map(run.jobs.map((job, j) => [job, updates[j]!.seq.at(-1) ?? 0]))
  let reports: LoadgenReport[]
  let drained = false
  for (;;) {
    reports = await fleet.reports()
    drained = [...last].every(([job, seq]) => reports.every((r) => (r.held?.[job] ?? Infinity) >= seq))
    if (drained || performance.now() - published1 > drainMs) break
    await sleep(25)
  }
  const t1 = performance.now()
  const cpu1 = cpu()
  const kernel1 = sum(gatewayPids, (pid) => cpuSplit(pid)[1])
  const recorded = await fleet.stopRecording(dir)
  return {
    published, updates, reports, recorded, wallMs: t1 - t0, drained, drainMs: t1 - published1,
    cpuMicros: { gateway: cpu1.gateway - cpu0.gateway, generator: cpu1.generator - cpu0.generator, publisher: cpu1.publisher - cpu0.publisher, redis: cpu1.redis - cpu0.redis },
    kernelMicros: kernel1 - kernel0,
  }
}

function summarise(w: Window, maxHz: number, fleet: Fleet): RateCapRun {
  const { held, frameMs } = latestHeld(w.updates, readProbes(w.recorded))
  const delivered = w.reports.reduce((s, r) => s + r.updates, 0)
  const published = w.published.sent
  let offered = 0
  for (const [job, n] of Object.entries(w.published.perJob)) offered += n * (fleet.subscribers[job] ?? 0)
  let terminalMissing = 0
  for (const r of w.recorded) {
    for (const [job, holds] of r.sockets) if (holds < (w.updates[job]?.seq.at(-1) ?? 0)) terminalMissing++
  }
  let firstStamp = Infinity
  for (const u of w.updates) if (u.stamp.length > 0) firstStamp = Math.min(firstStamp, u.stamp[0]!)
  const lastUs = Math.max(...w.reports.map((r) => r.lastUpdateUs))
  const activeSec = Number.isFinite(firstStamp) && lastUs > firstStamp ? (lastUs - firstStamp) / 1e6 : 0
  const pct = (micros: number) => (micros / (w.wallMs * 1000)) * 100
  return {
    maxHz, connected: fleet.connected, published, publishedPerSec: published / (w.published.elapsedMs / 1000), publisherLagMs: w.published.lagMs,
    delivered, otherFrames: w.reports.reduce((s, r) => s + r.otherFrames, 0), offered,
    deliveriesPerSec: activeSec > 0 ? delivered / activeSec : 0,
    wallMs: w.wallMs, drained: w.drained, drainMs: w.drainMs, terminalMissing,
    closedByServer: w.reports.reduce((s, r) => s + r.closedByServer, 0),
    cpu: { gateway: pct(w.cpuMicros.gateway), generator: pct(w.cpuMicros.generator), publisher: pct(w.cpuMicros.publisher), redis: pct(w.cpuMicros.redis) },
    gatewayKernelShare: w.cpuMicros.gateway > 0 ? (w.kernelMicros / w.cpuMicros.gateway) * 100 : 0,
    gatewayUsPerDelivery: delivered > 0 ? w.cpuMicros.gateway / delivered : 0,
    gatewayUsPerUpdate: published > 0 ? w.cpuMicros.gateway / published : 0,
    held, frameMs,
    records: w.recorded.reduce((s, r) => s + r.records, 0),
    recordsDropped: w.recorded.reduce((s, r) => s + r.dropped, 0),
    seqUnparsed: w.recorded.reduce((s, r) => s + r.unparsed, 0),
  }
}

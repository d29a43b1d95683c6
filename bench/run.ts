// `make bench`: runs every scenario against jobwire (1 worker and one per core), the
// baseline and the floor (bench/native/floor.c), back to back on the same machine, then
// prints a table and writes bench/results/<stamp>.json, latest.json, latest.md and latest.svg.
//
//   node dist/bench/run.js [--size full|quick|tiny] [--only seed,edge] [--targets 'jobwire,jobwire 2w'] [--out DIR] [--profile]
//
// --targets runs only the targets so named ('jobwire', 'jobwire Nw', 'baseline (ws)', 'floor (C)',
// or a name ending in * for every one it begins), for a partial run; its report then lacks the
// comparisons with the others.

import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { availableParallelism, cpus, totalmem, release } from 'node:os'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { projectPath } from '../src/support/paths.js'
import { Fleet, gatewayRss, jobIds, Publisher, type WindowResult } from './fleet.js'
import { measurePolling, type PollingResult } from './polling.js'
import { printTable, renderMarkdown, renderSvg } from './report.js'
import { killTrackedOnExit } from './children.js'
import { commitLabel } from './commit-label.js'
import { benchPlan, type IdleScenario, type Scenario, type Size, type StreamScenario, type SweepScenario } from './scenarios.js'
import { runRateCap, type RateCapResult } from './ratecap.js'
import { commandStats, costBetween, seenRecords } from './redis-stats.js'
import { startBaseline, startFloor, startJobwire, startJobwireNodes, startRedis, type Running } from './targets.js'
import { startCluster } from './cluster.js'
import { keySlot } from '../src/broker/slots.js'

export interface TargetSpec {
  readonly name: string
  readonly kind: 'jobwire' | 'baseline' | 'floor'
  readonly workers: number
  /** Several single-process jobwire nodes on one Redis (see startJobwireNodes). */
  readonly nodes?: number
}

/** PUBLISH-only producers: what the nodes' recorder wrote in the window and what Redis spent on
 * it (every script call in such a window is the recorder's: record-seen.lua). */
export interface RecorderCost {
  /** Writes attempted by all nodes (each node watching a job attempts; one holds the lease). */
  readonly recordsPerSec: number
  readonly scriptCallsPerSec: number
  /** Redis CPU in the recorder's script per attempted write, microseconds. */
  readonly redisUsPerRecord: number
  /** The same spread over every update published, microseconds. */
  readonly redisUsPerUpdate: number
}

export interface StreamResult {
  readonly scenario: StreamScenario
  readonly target: TargetSpec
  readonly connected: number
  readonly connectMs: number
  readonly rssBytes: number
  readonly rssPerConnection: number
  readonly window: WindowResult
  readonly recorder?: RecorderCost
}

export interface SweepResult {
  readonly scenario: SweepScenario
  readonly target: TargetSpec
  readonly connected: number
  readonly steps: WindowResult[]
  /** The highest deliveries/s that kept p99 <= aim with nothing lost, and its window. */
  readonly best: WindowResult | null
}

export interface IdleResult {
  readonly scenario: IdleScenario
  readonly target: TargetSpec
  readonly connected: number
  readonly failed: number
  /** Batch A (connectProbe sockets) connected and upgraded, in ms. */
  readonly probeConnectMs: number
  /** Then batch A subscribed, one job each, all at once. */
  readonly subscribeMs: number
  /** The rest connected and subscribed. */
  readonly restConnectMs: number
  readonly rssBytes: number
  /** Gateway RSS growth over the empty gateway, per connection (fixed costs included). */
  readonly rssPerConnection: number
  /** RSS growth per connection of the second batch: the marginal cost of one more. */
  readonly marginalPerConnection: number
  readonly errors: string[]
}

export type ScenarioResult =
  | { kind: 'stream'; result: StreamResult }
  | { kind: 'sweep'; result: SweepResult }
  | { kind: 'idle'; result: IdleResult }
  | { kind: 'ratecap'; result: RateCapResult }

export interface BenchResults {
  readonly size: Size
  readonly date: string
  readonly command: string
  readonly commit: string
  readonly machine: { cpus: number; model: string; memoryGiB: number; node: string; kernel: string; fdLimit: number }
  readonly windowMs: number
  /** Absent in results written before it was recorded (then 6 s in full runs). */
  readonly warmupMs?: number
  readonly scenarios: ScenarioResult[]
  readonly polling: PollingResult | null
}

const FD_SAFE = 18_000 // per process; the hard limit here is 20,000 open files

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: 'full' },
    only: { type: 'string' },
    targets: { type: 'string' },
    out: { type: 'string' },
    profile: { type: 'boolean', default: false },
    render: { type: 'string' },
  },
})
const size = values.size as Size
if (!values.render && !['full', 'quick', 'tiny'].includes(size)) {
  console.error(`--size must be full, quick or tiny, not '${size}'`)
  process.exit(2)
}
const plan = benchPlan(size)
const only = values.only?.split(',')
const targetNames = values.targets?.split(',')
const outDir = values.out ?? projectPath('bench', 'results')
const cores = availableParallelism()

function log(message: string): void {
  process.stderr.write(`[bench] ${message}\n`)
}

/** Runs wherever the baseline runs: what jobwire's CPU per delivery and p99 are compared with. */
const FLOOR: TargetSpec = { name: 'floor (C)', kind: 'floor', workers: 1 }

function workerTarget(): TargetSpec[] {
  return plan.workerTargets && cores > 1 ? [{ name: `jobwire ${cores}w`, kind: 'jobwire', workers: cores }] : []
}

function targetsFor(scenario: Scenario): TargetSpec[] {
  // Rate caps are jobwire's (subscribe_job max_hz): the baseline and the floor have none.
  if (scenario.kind === 'ratecap') return [{ name: 'jobwire', kind: 'jobwire', workers: 1 }]
  if (scenario.kind === 'stream' && scenario.nodes !== undefined) {
    return [{ name: `jobwire ${scenario.nodes} nodes`, kind: 'jobwire', workers: 1, nodes: scenario.nodes }]
  }
  // The baseline and the floor speak to one Redis.
  if (scenario.kind === 'stream' && scenario.broker === 'cluster') {
    return [
      { name: 'jobwire', kind: 'jobwire', workers: 1 },
      ...workerTarget(),
    ]
  }
  if (scenario.kind === 'idle') {
    const workers = Math.max(cores, Math.ceil(scenario.sockets / FD_SAFE))
    return [
      { name: `jobwire ${workers}w`, kind: 'jobwire', workers },
      { name: 'jobwire', kind: 'jobwire', workers: 1 },
      { name: 'baseline (ws)', kind: 'baseline', workers: 1 },
      FLOOR,
    ]
  }
  return [
    { name: 'jobwire', kind: 'jobwire', workers: 1 },
    ...workerTarget(),
    { name: 'baseline (ws)', kind: 'baseline', workers: 1 },
    FLOOR,
  ]
}

/** Where a scenario's gateways get their messages: the bench's redis-server, or its Redis
 * Cluster (then `url` is empty and `gatewayArgs` names the cluster). */
interface Backend {
  readonly url: string
  readonly gatewayArgs?: readonly string[]
  /** Every redis-server process: their CPU is the Redis CPU of a window. */
  pids(): number[]
}

async function start(spec: TargetSpec, backend: Backend): Promise<Running> {
  if (spec.kind === 'baseline') return startBaseline(backend.url)
  if (spec.kind === 'floor') return startFloor(backend.url)
  if (spec.nodes !== undefined) return startJobwireNodes(backend.url, spec.nodes, [...(backend.gatewayArgs ?? [])])
  return startJobwire(backend.url, spec.workers, [...(backend.gatewayArgs ?? [])], values.profile)
}

/** The cluster scenarios' Redis Cluster (3 masters, 3 replicas) and a publisher with one
 * connection per master, routing each job to the master of its channel's slot. */
async function startClusterBackend(): Promise<{ backend: Backend; publisher: Publisher; stop(): Promise<void> }> {
  const cluster = await startCluster()
  const slots = await cluster.slots()
  const masters = [...new Set(slots.map(([, , port]) => port))]
  const masterOf = (channel: string) => {
    const slot = keySlot(channel)
    return masters.indexOf(slots.find(([from, to]) => slot >= from && slot <= to)![2])
  }
  const publisher = new Publisher(masters, masterOf)
  return {
    backend: { url: '', gatewayArgs: ['--redis-cluster', cluster.seeds], pids: () => cluster.pids() },
    publisher,
    async stop() {
      publisher.proc.kill()
      await cluster.stop()
    },
  }
}

function loadgensFor(sockets: number): number {
  return Math.max(2, Math.ceil(sockets / 15_000))
}

async function runStream(scenario: StreamScenario, spec: TargetSpec, redis: Backend, publisher: Publisher): Promise<StreamResult> {
  const target = await start(spec, redis)
  try {
    const rss0 = gatewayRss(target)
    const fleetPlan = { sockets: scenario.sockets, jobs: scenario.jobs, loadgens: Math.max(loadgensFor(scenario.sockets), scenario.nodes ?? 0), probeEvery: 10, subscribe: true, jobPrefix: `${scenario.id}-` }
    const via = scenario.via ?? 'script'
    const fleet = await Fleet.open(target, fleetPlan)
    try {
      if (fleet.failed > 0) log(`${spec.name}: ${fleet.failed} sockets failed to connect: ${fleet.errors.join('; ')}`)
      const rss = gatewayRss(target)
      // The warm-up lets V8 finish optimising the hot path first: its compiler threads take the
      // CPU from the gateway's main thread meanwhile, and after 1 s of the seed load they still
      // set the p99 (seed: 1.2-1.8 ms after 1 s, 0.44-0.62 ms after 6 s; README, Performance).
      await fleet.measure(target, redis, publisher, { jobs: jobIds(fleetPlan), jobPrefix: fleetPlan.jobPrefix, ratePerSec: scenario.ratePerSec, durationMs: plan.warmupMs, via })
      const recording = via === 'publish' && redis.url !== '' ? { commands: await commandStats(redis.url), records: await seenRecords(target.ports ?? [target.port]) } : null
      const window = await fleet.measure(target, redis, publisher, { jobs: jobIds(fleetPlan), jobPrefix: fleetPlan.jobPrefix, ratePerSec: scenario.ratePerSec, durationMs: plan.windowMs, via })
      let recorder: RecorderCost | undefined
      if (recording !== null) {
        const seconds = window.durationMs / 1000
        const records = (await seenRecords(target.ports ?? [target.port])) - recording.records
        const scripts = costBetween(recording.commands, await commandStats(redis.url), ['evalsha', 'eval'])
        recorder = {
          recordsPerSec: records / seconds,
          scriptCallsPerSec: scripts.calls / seconds,
          redisUsPerRecord: records > 0 ? scripts.usec / records : 0,
          redisUsPerUpdate: window.published > 0 ? scripts.usec / window.published : 0,
        }
        log(`${spec.name} ${scenario.id}: recorder ${recorder.recordsPerSec.toFixed(0)} write attempts/s in ${recorder.scriptCallsPerSec.toFixed(1)} script calls/s, ${recorder.redisUsPerRecord.toFixed(1)} us of Redis per attempt`)
      }
      return { scenario, target: spec, connected: fleet.connected, connectMs: fleet.connectMs, rssBytes: rss, rssPerConnection: (rss - rss0) / Math.max(1, fleet.connected), window, ...(recorder ? { recorder } : {}) }
    } finally {
      await fleet.close()
    }
  } finally {
    await target.stop()
  }
}

async function runSweep(scenario: SweepScenario, spec: TargetSpec, redis: Running & { url: string }, publisher: Publisher): Promise<SweepResult> {
  const target = await start(spec, redis)
  try {
    const fleetPlan = { sockets: scenario.sockets, jobs: scenario.jobs, loadgens: loadgensFor(scenario.sockets), probeEvery: 10, subscribe: true, jobPrefix: `${scenario.id}-` }
    const fleet = await Fleet.open(target, fleetPlan)
    try {
      const fanout = fleet.connected / scenario.jobs
      const steps: WindowResult[] = []
      let best: WindowResult | null = null
      const windowMs = Math.max(1000, Math.round(plan.windowMs / 2))
      await fleet.measure(target, redis, publisher, { jobs: jobIds(fleetPlan), jobPrefix: fleetPlan.jobPrefix, ratePerSec: Math.max(1, scenario.steps[0]! / fanout / 4), durationMs: 1000, via: 'script' })
      for (const deliveries of scenario.steps) {
        const ratePerSec = deliveries / fanout
        const window = await fleet.measure(target, redis, publisher, { jobs: jobIds(fleetPlan), jobPrefix: fleetPlan.jobPrefix, ratePerSec, durationMs: windowMs, via: 'script' })
        steps.push(window)
        const ok = window.lost === 0 && window.closedByServer === 0 && window.latencyMs.p99 <= scenario.aim.p99Ms
        log(`${spec.name} ${scenario.id}: ${deliveries}/s -> p99 ${window.latencyMs.p99} ms, lost ${window.lost}, gateway ${window.cpu.gateway.toFixed(0)}% ${ok ? 'ok' : 'STOP'}`)
        if (!ok) break
        best = window
      }
      return { scenario, target: spec, connected: fleet.connected, steps, best }
    } finally {
      await fleet.close()
    }
  } finally {
    await target.stop()
  }
}

async function runIdle(scenario: IdleScenario, spec: TargetSpec, redis: Running & { url: string }): Promise<IdleResult> {
  const target = await start(spec, redis)
  const sockets = Math.min(scenario.sockets, spec.workers * FD_SAFE)
  // V8 shrinks its heap (young generation included) by itself once allocation stops for a
  // while (its "memory reducer"); RSS read before that mostly measures garbage not yet returned.
  const settle = () => new Promise((r) => setTimeout(r, plan.size === 'tiny' ? 1000 : 12_000))
  const fleets: Fleet[] = []
  try {
    // The empty gateway's startup garbage is given back first too, so both readings are of a
    // settled heap.
    await settle()
    const rss0 = gatewayRss(target)
    const jobs = Math.max(1, Math.round(sockets / 50))
    // Batch A: connected (upgrade included) on their own, timed; then all subscribe at once.
    const a = await Fleet.open(target, { sockets: Math.min(scenario.connectProbe, sockets), jobs, loadgens: 2, probeEvery: 1000, subscribe: false, jobPrefix: 'idle-' })
    fleets.push(a)
    const subscribeMs = await a.subscribeAll()
    await settle()
    const rssA = gatewayRss(target)
    // Batch B: the rest, connected and subscribed. The RSS growth per B socket is the marginal
    // cost of a connection, without the fixed costs (heap reservations) that batch A paid.
    const restCount = sockets - a.connected - a.failed
    const started = performance.now()
    const b = restCount > 0
      ? await Fleet.open(target, { sockets: restCount, jobs, loadgens: loadgensFor(restCount), probeEvery: 1000, subscribe: true, jobPrefix: 'idle-' })
      : null
    if (b) fleets.push(b)
    const restMs = performance.now() - started
    await settle()
    const rss = gatewayRss(target)
    const connected = a.connected + (b?.connected ?? 0)
    return {
      scenario, target: spec, connected, failed: a.failed + (b?.failed ?? 0),
      probeConnectMs: a.connectMs, subscribeMs, restConnectMs: restMs, rssBytes: rss,
      rssPerConnection: (rss - rss0) / Math.max(1, connected),
      marginalPerConnection: b && b.connected > 0 ? (rss - rssA) / b.connected : (rssA - rss0) / Math.max(1, a.connected),
      errors: [...a.errors, ...(b?.errors ?? [])].slice(0, 5),
    }
  } finally {
    for (const f of fleets) await f.close()
    await target.stop()
  }
}

function machine(): BenchResults['machine'] {
  let fdLimit = 0
  try {
    fdLimit = Number(execFileSync('bash', ['-c', 'ulimit -n']).toString().trim())
  } catch {
    // unknown
  }
  return { cpus: cores, model: cpus()[0]?.model ?? 'unknown', memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version, kernel: release(), fdLimit }
}

async function main(): Promise<void> {
  const began = performance.now()
  const redis = await startRedis()
  const publisher = new Publisher(redis.port)
  const results: ScenarioResult[] = []
  let polling: PollingResult | null = null
  let cluster: Awaited<ReturnType<typeof startClusterBackend>> | null = null
  const cleanup = async () => {
    publisher.proc.kill()
    await redis.stop()
    await cluster?.stop()
  }
  killTrackedOnExit()
  try {
    for (const scenario of plan.scenarios) {
      if (only && !only.includes(scenario.id)) continue
      for (const spec of targetsFor(scenario)) {
        if (targetNames && !targetNames.some((name) => name.endsWith('*') ? spec.name.startsWith(name.slice(0, -1)) : spec.name === name)) continue
        log(`${scenario.title}: ${spec.name}`)
        if (scenario.kind === 'stream' && scenario.broker === 'cluster') {
          cluster ??= await startClusterBackend()
          results.push({ kind: 'stream', result: await runStream(scenario, spec, cluster.backend, cluster.publisher) })
        } else if (scenario.kind === 'stream') results.push({ kind: 'stream', result: await runStream(scenario, spec, redis, publisher) })
        else if (scenario.kind === 'sweep') results.push({ kind: 'sweep', result: await runSweep(scenario, spec, redis, publisher) })
        else if (scenario.kind === 'ratecap') {
          const target = { name: spec.name, kind: 'jobwire' as const, workers: spec.workers }
          results.push({ kind: 'ratecap', result: await runRateCap(scenario, target, { start: () => start(spec, redis), redis, publisher, loadgens: loadgensFor(scenario.sockets), log }) })
        } else results.push({ kind: 'idle', result: await runIdle(scenario, spec, redis) })
      }
    }
    if (!only || only.includes('polling')) {
      log('HTTP polling vs push')
      polling = await measurePolling(redis, plan.pollingSeconds)
    }
  } finally {
    await cleanup()
  }
  const bench: BenchResults = {
    size, date: new Date().toISOString(), command: `make ${size === 'full' ? 'bench' : size === 'quick' ? 'bench-quick' : 'bench-tiny'}`,
    commit: commitLabel(), machine: machine(), windowMs: plan.windowMs, warmupMs: plan.warmupMs, scenarios: results, polling,
  }
  mkdirSync(outDir, { recursive: true })
  const stamp = bench.date.replace(/[:.]/g, '-')
  const json = join(outDir, `${stamp}-${size}.json`)
  writeFileSync(json, JSON.stringify(bench, null, 2))
  copyFileSync(json, join(outDir, `latest-${size}.json`))
  writeFileSync(join(outDir, `latest-${size}.md`), renderMarkdown(bench, `latest-${size}.svg`))
  writeFileSync(join(outDir, `latest-${size}.svg`), renderSvg(bench))
  process.stdout.write(printTable(bench))
  log(`wrote ${json} and latest-${size}.{json,md,svg} in ${outDir}; ${((performance.now() - began) / 1000).toFixed(0)} s in all`)
}

/** --render FILE: print and write the report of an earlier run again, measuring nothing. */
function rerender(file: string): void {
  const bench = JSON.parse(readFileSync(file, 'utf8')) as BenchResults
  mkdirSync(outDir, { recursive: true })
  writeFileSync(join(outDir, `latest-${bench.size}.md`), renderMarkdown(bench, `latest-${bench.size}.svg`))
  writeFileSync(join(outDir, `latest-${bench.size}.svg`), renderSvg(bench))
  process.stdout.write(printTable(bench))
}

if (values.render) rerender(values.render)
else await main()
process.exit(0)

// `make chaos`: breaks a running jobwire deployment on purpose, one fault at a time, and checks
// that every browser tab ends up showing every job it watches exactly as Redis stores it.
//
// It runs its own redis-server (free loopback port, persistence off), gateway node 1 (two
// workers) and node 2 (one process) on that Redis, 5,000 simulated tabs over both nodes (the
// client library's rules: bench/chaos/sim-client.ts) watching 500 jobs, and producers driving
// every job through the producer script at a bounded rate. Then, in sequence, with time to
// converge after each: Redis restarted keeping its data, Redis restarted empty, Redis frozen
// for 10 s, a worker of node 1 killed, node 2 stopped and started, 5% of tabs not reading for
// 5 s, a burst of hostile producer messages. At the end every job is finished and every view
// must equal the job's final stored state. Prints a Markdown table per fault, writes it to
// bench/results/chaos-latest.md and exits 1 if any view was lost.
//
//   node dist/bench/chaos.js            CHAOS_SCALE=0.1 for a small dry run
//   env: CHAOS_SCALE (1), CHAOS_RATE (updates/s, 100 x scale), CHAOS_TIMEOUT_S (480),
//   CHAOS_SELF_TEST=1 (three tabs ignore one job's frames: the run must report lost views)

import { randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { projectPath } from '../src/support/paths.js'
import { compare, covers, equals, StoredStates, type Behind } from './chaos/oracle.js'
import { commitLabel } from './commit-label.js'
import { positiveEnv, sleep, startHarness } from './chaos/harness.js'
import { GatewayNode, killEverything, openFileLimit, RedisServer } from './chaos/procs.js'
import { ProducerLoop } from './chaos/producer-loop.js'
import { SimTab, type TabEvents } from './chaos/sim-client.js'

const SCALE = positiveEnv('CHAOS_SCALE', 1)
const TABS = Math.max(20, Math.round(5000 * SCALE))
const JOBS = Math.max(12, Math.round(500 * SCALE))
const JOBS_PER_TAB = 4
/** 100 updates/s over 500 jobs: each job moves every ~5 s, 40 watchers each, ~4,000 frames/s
 * to the tabs: steady work for the gateways without saturating two shared cores. */
const RATE = positiveEnv('CHAOS_RATE', Math.max(10, Math.round(100 * SCALE)))
const GLOBAL_TIMEOUT_MS = positiveEnv('CHAOS_TIMEOUT_S', 480) * 1000
/** A fault that has not converged this long after it was injected is given up on. */
const CONVERGE_MAX_MS = 45_000
/** Left after convergence before the next fault, so late effects land in this fault's row. */
const DWELL_MS = 3000
const STEADY_MS = 8000
/** A frame may still be on its way this long after the sample it is compared with. */
const LAG_MS = 300
const SAMPLE_EVERY_MS = 250
/** The end-of-window recheck waits this long for views that look behind. */
const RECHECK_MS = 10_000
const FINAL_MAX_MS = 60_000
const REDIS_PAUSE_MS = 10_000
const SLOW_READ_MS = 5000
const SLOW_SHARE = 0.05
const HOSTILE_MESSAGES = Math.max(300, Math.round(2000 * SCALE))
/** CHAOS_SELF_TEST=1: plant lost views on purpose; the run must report them and fail. */
const SELF_TEST = process.env.CHAOS_SELF_TEST === '1'


const { log, started, loadAtStart } = startHarness('chaos')

/** One row of the report: a fault, or the steady state and the end as controls. */
interface FaultWindow {
  readonly name: string
  how: string
  readonly t0: number
  injectedAt: number
  end: number
  convergedAt: number | null
  readonly closed: Set<number>
  readonly resynced: Set<number>
  statusFrames: number
  requestedStatuses: number
  updates: number
  foreign: number
  gaveUp: number
  readonly errors: Record<string, number>
  lost: number
  lostExamples: string[]
  /** The row was completed (a global timeout can cut the last one short). */
  done: boolean
  counters: Record<string, number>
  /** A gateway process restarted during the window: its counters started again from 0. */
  approximate: boolean
}

const COUNTERS = ['resyncs_total', 'broker_reconnects_total', 'producer_malformed_total', 'catch_up_statuses_total',
  'slow_consumer_closes_total', 'snapshot_failures_total']

const windows: FaultWindow[] = []
let current: FaultWindow | null = null
/** Views reported lost in an earlier row: not waited for or counted again until the end, so
 * one loss neither repeats in every row nor stalls every later fault for CONVERGE_MAX_MS. */
const writtenOff = new Set<string>()

function openWindow(name: string, how: string): FaultWindow {
  const w: FaultWindow = {
    name, how, t0: Date.now(), injectedAt: Date.now(), end: 0, convergedAt: null, closed: new Set(), resynced: new Set(),
    statusFrames: 0, requestedStatuses: 0, updates: 0, foreign: 0, gaveUp: 0, errors: {}, lost: 0, lostExamples: [], done: false, counters: {}, approximate: false,
  }
  windows.push(w)
  current = w
  return w
}

const events: TabEvents = {
  opened: () => undefined,
  closed: (tab) => current?.closed.add(tab.id),
  status: (tab, _jobId, requested) => {
    if (current === null) return
    current.statusFrames++
    if (requested) current.requestedStatuses++
    current.resynced.add(tab.id)
  },
  update: () => {
    if (current) current.updates++
  },
  error: (_tab, code) => {
    if (current) current.errors[code] = (current.errors[code] ?? 0) + 1
  },
  foreign: () => {
    if (current) current.foreign++
  },
  gaveUp: (tab, code, reason) => {
    log(`tab ${tab.id} gave up after close ${code} ${reason}`)
    if (current) current.gaveUp++
  },
}

// Everything the run started, for the finally and exit handlers.
let tmp = ''
let keepTmp = false
let redis: RedisServer | null = null
const nodes: GatewayNode[] = []
let tabs: SimTab[] = []
let producer: ProducerLoop | null = null
let oracle: StoredStates | null = null
let hostileConnection: Redis | null = null
let hostileKinds: string[] = []


async function main(): Promise<number> {
  const fdLimit = openFileLimit()
  if (TABS + 1000 > fdLimit) {
    throw new Error(`${TABS} sockets need more open files than this process may have (${fdLimit}); raise ulimit -n or lower CHAOS_SCALE`)
  }
  tmp = mkdtempSync(join(tmpdir(), 'jobwire-chaos-'))
  const timeout = setTimeout(() => {
    log(`global timeout (${GLOBAL_TIMEOUT_MS / 1000} s): writing what was measured and stopping`)
    finishReport('global timeout')
    killEverything()
    log(`gateway logs and Redis data kept in ${tmp}`)
    process.exit(3)
  }, GLOBAL_TIMEOUT_MS)
  timeout.unref()

  redis = await RedisServer.start(tmp)
  log(`redis-server on ${redis.port} (data dir ${tmp})`)
  const [node1, node2] = await Promise.all([
    GatewayNode.start({ name: 'node 1', redisUrl: redis.url, workers: 2, logPath: join(tmp, 'node1.log') }),
    GatewayNode.start({ name: 'node 2', redisUrl: redis.url, workers: 1, logPath: join(tmp, 'node2.log') }),
  ])
  nodes.push(node1!, node2!)
  log(`node 1 on ${node1!.port} (workers ${node1!.workerPids().join(', ')}), node 2 on ${node2!.port} (pid ${node2!.workerPids().join(', ')})`)

  const jobIds = Array.from({ length: JOBS }, (_, i) => `chaos-${String(i).padStart(4, '0')}`)
  producer = new ProducerLoop(redis.url, { ratePerSec: RATE, minIntervalMs: 500 })
  jobIds.forEach((id, i) => producer!.add(id, 0, i % 10 === 9 ? 'failed' : 'completed'))
  await producer.seed()
  log(`${JOBS} jobs queued through the producer script`)

  tabs = buildTabs(jobIds, [node1!, node2!])
  await connectAll(tabs)
  oracle = new StoredStates(redis.url, jobIds)
  oracle.start(SAMPLE_EVERY_MS)
  await waitAcknowledged(60_000)
  producer.start()
  log(`producers running at ${RATE} updates/s`)

  // The control row: no fault. Anything it shows is noise the faults' rows also carry.
  await runWindow('none (steady state)', `no fault; producers and tabs running for ${STEADY_MS / 1000} s`, async (w) => {
    if (!SELF_TEST) return
    // The harness checking itself: three tabs stop taking one job's frames, which must come
    // out as lost views in this row and the last, and a failed run.
    for (const tab of tabs.slice(0, 3)) tab.deafen([...tab.jobIds][0]!)
    w.how += '; SELF TEST: 3 tabs made deaf to one job each'
  }, STEADY_MS)

  // Jobs finish in groups, one group as each later fault starts, so terminal states are
  // written during Redis's freeze, a worker's death, node 2's restart, stalled readers and the
  // hostile burst; the last group at the end. None finishes before Redis restarts empty: a
  // finished job's producer is gone and would not write it again, so its state would be
  // lost for good, and that is not what this run measures.
  const groups = Array.from({ length: 6 }, (_, g) => jobIds.filter((_, i) => i % 6 === g))
  const finishGroup = (g: number) => producer!.finish(groups[g]!)

  await runWindow('Redis restarted keeping its data', '', async (w) => {
    const t = Date.now()
    const keys = await redis!.restartKeepingData()
    w.how = `SHUTDOWN SAVE, same port started again, ${keys} keys loaded from the RDB file; down ${Date.now() - t} ms`
  })
  await runWindow('Redis restarted empty', '', async (w) => {
    const t = Date.now()
    const keys = await redis!.restartEmpty()
    w.how = `SHUTDOWN NOSAVE, RDB file removed, started again empty (${keys} keys by the first DBSIZE: producers were already writing again); down ${Date.now() - t} ms; producers go on (seq 1, new epoch)`
  })
  await runWindow('Redis paused 10 s', '', async (w) => {
    finishGroup(0)
    redis!.pause()
    await sleep(REDIS_PAUSE_MS)
    redis!.resume()
    w.how = `SIGSTOP, ${REDIS_PAUSE_MS / 1000} s, SIGCONT; ${groups[0]!.length} jobs finishing`
  })
  await runWindow('node 1 worker killed', '', async (w) => {
    finishGroup(1)
    const workers = node1!.workerPids()
    const victim = workers[0]
    if (victim === undefined) throw new Error('node 1 has no worker to kill')
    const before = new Set(workers)
    process.kill(victim, 'SIGKILL')
    w.injectedAt = Date.now()
    const back = await waitFor(() => node1!.workerPids().some((pid) => !before.has(pid)), 20_000)
    w.how = `SIGKILL to worker pid ${victim} (a child of the primary); ${back ? `replaced by the primary after ${Date.now() - w.injectedAt} ms` : 'NOT replaced within 20 s'}; ${groups[1]!.length} jobs finishing`
    w.injectedAt = Date.now()
  })
  await runWindow('node 2 stopped and started', '', async (w) => {
    finishGroup(2)
    const t = Date.now()
    await node2!.stop()
    const stoppedMs = Date.now() - t
    await node2!.start()
    w.how = `SIGTERM (graceful: 1001 to its sockets), exited in ${stoppedMs} ms, started again on the same port; down ${Date.now() - t} ms`
  })
  await runWindow('5% of sockets stop reading 5 s', '', async (w) => {
    finishGroup(3)
    const chosen = pick(tabs.filter((t) => t.isOpen), Math.round(tabs.length * SLOW_SHARE))
    const paused = chosen.filter((t) => t.pauseReading())
    await sleep(SLOW_READ_MS)
    for (const t of paused) t.resumeReading()
    w.how = `${paused.length} tabs' TCP sockets paused (ws.pause(): no reads) for ${SLOW_READ_MS / 1000} s, then resumed`
  })
  await runWindow('hostile producer burst', '', async (w) => {
    finishGroup(4)
    const sent = await hostileBurst(redis!.url, jobIds)
    w.how = sent
  })

  const final = await finalWindow(jobIds, () => finishGroup(5))
  finishReport(null)
  clearTimeout(timeout)
  const lost = windows.reduce((n, w) => n + w.lost, 0)
  const gaveUp = windows.reduce((n, w) => n + w.gaveUp, 0)
  if (lost > 0 || gaveUp > 0 || !final) keepTmp = true
  return lost > 0 || gaveUp > 0 || !final ? 1 : 0
}

/** Tab i goes to node 1 when even, node 2 when odd, and watches jobs i, i+s, i+2s, i+3s (mod
 * JOBS) with an odd stride s, so every job has watchers of both parities: on both nodes. */
function buildTabs(jobIds: readonly string[], on: readonly GatewayNode[]): SimTab[] {
  let stride = Math.floor(jobIds.length / JOBS_PER_TAB)
  if (stride % 2 === 0) stride += 1
  const out: SimTab[] = []
  const perNode = jobIds.map(() => new Set<number>())
  for (let i = 0; i < TABS; i++) {
    const node = on[i % 2]!
    const mine = Array.from({ length: JOBS_PER_TAB }, (_, m) => (i + m * stride) % jobIds.length)
    for (const j of mine) perNode[j]!.add(i % 2)
    out.push(new SimTab(i, node.wsUrl, mine.map((j) => jobIds[j]!), events))
  }
  const oneSided = perNode.filter((s) => s.size < 2).length
  if (oneSided > 0) throw new Error(`${oneSided} jobs are watched on one node only; the layout is wrong`)
  return out
}

async function connectAll(all: readonly SimTab[]): Promise<void> {
  const t = Date.now()
  const batch = 100
  for (let i = 0; i < all.length; i += batch) {
    await Promise.all(all.slice(i, i + batch).map((tab) => tab.start(20_000)))
  }
  log(`${all.length} tabs connected in ${Date.now() - t} ms`)
}

async function waitAcknowledged(timeoutMs: number): Promise<void> {
  const ok = await waitFor(() => tabs.every((tab) => [...tab.jobIds].every((j) => tab.acknowledged(j))), timeoutMs)
  if (!ok) throw new Error('not every subscription was acknowledged with a job_status within 60 s')
  log(`${tabs.length * JOBS_PER_TAB} subscriptions acknowledged`)
}

async function waitFor(condition: () => boolean, timeoutMs: number, everyMs = 100): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (let i = 0; i < Math.ceil(timeoutMs / everyMs) + 1; i++) {
    if (condition()) return true
    if (Date.now() > deadline) return false
    await sleep(everyMs)
  }
  return condition()
}

/** Each node's counters, by node name; a node that cannot answer (down) is left out. */
async function counters(): Promise<Map<string, Record<string, number>>> {
  const out = new Map<string, Record<string, number>>()
  for (const node of nodes) {
    try {
      const m = await node.metrics()
      out.set(node.name, Object.fromEntries(COUNTERS.map((name) => [name, m.get(`jobwire_${name}`) ?? 0])))
    } catch {
      // a node down (its own fault) reports nothing
    }
  }
  return out
}

/** Counter growth over a window, summed over nodes. A process that restarted took its counts
 * with it (a node's sum went down): then what it counted since is used, marked approximate. */
function growth(w: FaultWindow, before: Map<string, Record<string, number>>, after: Map<string, Record<string, number>>): void {
  for (const name of COUNTERS) {
    let total = 0
    for (const [node, values] of after) {
      const was = before.get(node)?.[name]
      const now = values[name] ?? 0
      if (was === undefined || now < was) w.approximate = true
      total += was === undefined || now < was ? now : now - was
    }
    w.counters[name] = total
  }
}

/**
 * One fault: inject it, then poll until every view of every tab covers a stored-state sample
 * taken after the injection ended (or CONVERGE_MAX_MS), dwell, and count what is still behind
 * at the end as lost. Every view is checked, not only the affected ones: a view a fault
 * silently left behind is the worst kind of loss.
 */
async function runWindow(name: string, how: string, inject: (w: FaultWindow) => Promise<void>, holdMs = DWELL_MS): Promise<void> {
  log(`fault: ${name}`)
  const before = await counters()
  const w = openWindow(name, how)
  await inject(w)
  if (w.injectedAt === w.t0) w.injectedAt = Date.now()
  log(`  injected (${w.how}); waiting for every view to converge`)
  const deadline = w.injectedAt + CONVERGE_MAX_MS
  let last: Behind | null = null
  for (let i = 0; i < CONVERGE_MAX_MS / SAMPLE_EVERY_MS + 10 && Date.now() < deadline; i++) {
    const sample = oracle!.settled(w.injectedAt, LAG_MS)
    if (sample !== null) {
      last = compare(tabs, sample, covers, 12, writtenOff)
      if (last.behind === 0) {
        w.convergedAt = Date.now()
        break
      }
    }
    await sleep(SAMPLE_EVERY_MS)
  }
  if (w.convergedAt !== null) {
    log(`  converged ${((w.convergedAt - w.t0) / 1000).toFixed(1)} s after the fault`)
    await sleep(holdMs)
  } else {
    log(`  NOT converged within ${CONVERGE_MAX_MS / 1000} s: ${last ? `${last.behind} views behind, ${last.tabsClosed} tabs closed` : 'no stored-state sample'}`)
  }
  const end = await recheck(w.injectedAt)
  w.lost = end.behind
  w.lostExamples = end.examples
  for (const key of end.keys) writtenOff.add(key)
  if (end.behind > 0) log(`  ${end.behind} views still behind at the end of the window:\n    ${end.examples.join('\n    ')}`)
  growth(w, before, await counters())
  w.end = Date.now()
  w.done = true
}

/** What is behind now, given RECHECK_MS to catch up (a frame in flight is not a loss). */
async function recheck(since: number): Promise<Behind> {
  const deadline = Date.now() + RECHECK_MS
  let result: Behind = { views: 0, behind: Number.MAX_SAFE_INTEGER, tabsClosed: 0, unacknowledged: 0, tabsBehind: new Set(), keys: new Set(), examples: ['no stored-state sample could be read'] }
  for (let i = 0; i < RECHECK_MS / SAMPLE_EVERY_MS + 10 && Date.now() < deadline; i++) {
    const sample = oracle!.settled(since, LAG_MS)
    if (sample !== null) {
      result = compare(tabs, sample, covers, 12, writtenOff)
      if (result.behind === 0) return result
    }
    await sleep(SAMPLE_EVERY_MS)
  }
  if (result.behind === Number.MAX_SAFE_INTEGER) result.behind = tabs.length * JOBS_PER_TAB
  return result
}

/** The end: the last group finishes, producers stop, and every view must equal its job's
 * final stored state exactly. Returns false when the run could not even get there (jobs not
 * terminal in Redis). */
async function finalWindow(jobIds: readonly string[], finishLast: () => void): Promise<boolean> {
  log('end: finishing every remaining job')
  const before = await counters()
  const w = openWindow('end: every job finished', '')
  finishLast()
  const allDone = await waitFor(() => producer!.running() === 0, 60_000, 200)
  await producer!.stop()
  w.injectedAt = Date.now()
  w.how = allDone ? `last ${producer!.calls.toLocaleString('en-US')} producer calls done (${producer!.failures} failed and retried); exact equality required`
    : `producers did NOT finish: ${producer!.running()} jobs still running (${producer!.lastFailure})`
  const deadline = w.injectedAt + FINAL_MAX_MS
  let result: Behind | null = null
  let terminalInRedis = 0
  for (let i = 0; i < FINAL_MAX_MS / 500 + 10 && Date.now() < deadline; i++) {
    try {
      const sample = await oracle!.read()
      terminalInRedis = [...sample.states.values()].filter((s) => s !== null && ['completed', 'failed', 'cancelled'].includes(s.status ?? '')).length
      result = compare(tabs, sample, equals)
      if (result.behind === 0) {
        w.convergedAt = Date.now()
        break
      }
    } catch {
      // Redis unreadable: try again
    }
    await sleep(500)
  }
  w.lost = result?.behind ?? tabs.length * JOBS_PER_TAB
  w.lostExamples = result?.examples ?? ['final states could not be read']
  if (terminalInRedis < jobIds.length) {
    w.how += `; only ${terminalInRedis} of ${jobIds.length} jobs terminal in Redis`
    w.lostExamples.unshift(`${jobIds.length - terminalInRedis} jobs are not terminal in Redis`)
  }
  growth(w, before, await counters())
  w.end = Date.now()
  w.done = true
  log(w.lost === 0 ? `  every view equals its job's final state (${terminalInRedis} jobs terminal)` : `  ${w.lost} views differ from the final state:\n    ${w.lostExamples.join('\n    ')}`)
  return allDone && terminalInRedis === jobIds.length
}

/** PUBLISHes that bypass the producer script, as a buggy or hostile worker would send. */
async function hostileBurst(redisUrl: string, jobIds: readonly string[]): Promise<string> {
  const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex')
  const str = (s: string) => Buffer.concat([Buffer.from([0xa0 + s.length]), Buffer.from(s)])
  const kinds: Array<[string, () => Buffer]> = [
    ['msgpack map with an extension value (fixext1 type 0x42)', () => Buffer.concat([hex('82'), str('status'), str('completed'), str('n'), hex('d4 42 01')])],
    ['msgpack map with a timestamp extension', () => Buffer.concat([hex('81'), str('ts'), hex('d6 ff 00 00 00 01')])],
    ['msgpack map with ext8 posing as a newer state', () => Buffer.concat([hex('84'), str('status'), str('completed'), str('seq'), hex('ce 7f ff ff ff'), str('epoch'), hex('01'), str('x'), hex('c7 01 05 00')])],
    ['msgpack nested 6,000 deep', () => Buffer.concat([hex('81 a1 6e'), Buffer.alloc(6000, 0x91), hex('01')])],
    ['JSON arrays nested 6,000 deep', () => Buffer.from('{"n":' + '['.repeat(6000) + ']'.repeat(6000) + '}')],
    ['JSON objects nested 6,000 deep', () => Buffer.from('{"a":'.repeat(6000) + '1' + '}'.repeat(6000))],
    ['random bytes', () => randomBytes(64)],
    ['plain text', () => Buffer.from('not json at all')],
    ['truncated JSON', () => Buffer.from('{"status":"completed","progress":')],
    ['JSON with invalid UTF-8', () => Buffer.concat([Buffer.from('{"status":"completed","message":"'), hex('ff fe'), Buffer.from('"}')])],
    ['JSON array', () => Buffer.from('[1,2,3]')],
    ['JSON with NaN', () => Buffer.from('{"status":"completed","progress":NaN}')],
    ['empty message', () => Buffer.alloc(0)],
  ]
  hostileConnection = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
  hostileConnection.on('error', () => undefined)
  let sent = 0
  const chunk = 100
  // Bounded: HOSTILE_MESSAGES in chunks, each awaited, round-robin over jobs and kinds.
  for (let i = 0; i < HOSTILE_MESSAGES; i += chunk) {
    const pipeline = hostileConnection.pipeline()
    for (let k = i; k < Math.min(HOSTILE_MESSAGES, i + chunk); k++) {
      pipeline.publish(`progress:${jobIds[k % jobIds.length]!}`, kinds[k % kinds.length]![1]())
    }
    const replies = await pipeline.exec()
    sent += replies?.filter(([err]) => err === null).length ?? 0
  }
  hostileConnection.disconnect()
  hostileConnection = null
  hostileKinds = kinds.map(([k]) => k)
  return `${sent} plain PUBLISHes on watched jobs' channels, ${kinds.length} kinds in turn (listed below)`
}

/** n of them, chosen by a seeded shuffle: the same tabs each run, from both nodes (a regular
 * stride would take every other tab, all on one node). */
function pick<T>(from: readonly T[], n: number, seed = 0x5eed): T[] {
  const a = [...from]
  let state = seed >>> 0
  const random = () => {
    // mulberry32
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const count = Math.min(n, a.length)
  for (let i = 0; i < count; i++) {
    const j = i + Math.floor(random() * (a.length - i))
    ;[a[i], a[j]] = [a[j]!, a[i]!]
  }
  return a.slice(0, count)
}

// The report.

const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`
const int = (n: number) => n.toLocaleString('en-US')

let reported = false

function finishReport(abort: string | null): void {
  if (reported) return
  reported = true
  if (current && current.end === 0) current.end = Date.now()
  const cpu = process.cpuUsage()
  const elapsed = Date.now() - started
  const lines: string[] = []
  lines.push('# jobwire chaos run', '')
  lines.push(`${new Date().toISOString()}, commit ${commitLabel()}, \`make chaos\`${SCALE === 1 ? '' : ` with CHAOS_SCALE=${SCALE}`}.`)
  lines.push(`Own redis-server (loopback, persistence off), node 1: \`serve --workers 2\`, node 2: \`serve --workers 1\`, gateway defaults otherwise. ` +
    `${int(TABS)} WebSocket tabs (half per node) watching ${JOBS_PER_TAB} jobs each, ${int(JOBS)} jobs (${int((TABS * JOBS_PER_TAB) / JOBS)} watchers per job, on both nodes), ` +
    `producers at ${RATE} updates/s through the producer script. Harness CPU: ${((100 * (cpu.user + cpu.system)) / 1000 / elapsed).toFixed(0)}% of one core over ${secs(elapsed)}; ` +
    `load average ${loadAtStart.toFixed(1)} at the start, ${loadavg()[0]!.toFixed(1)} at the end (2 cores, shared with other work).`)
  if (abort) lines.push('', `**Run aborted: ${abort}.** Rows below are what was measured until then.`)
  lines.push('')
  lines.push('| fault | how it was injected | sockets affected (closed / resync only) | time to converge | frames caught up | lost |')
  lines.push('|---|---|---|---|---|---|')
  for (const w of windows) {
    const resyncOnly = [...w.resynced].filter((id) => !w.closed.has(id)).length
    const affected = new Set([...w.closed, ...w.resynced]).size
    const converge = w.convergedAt !== null ? secs(w.convergedAt - w.t0) : !w.done ? 'cut short' : `not within ${secs((w.name.startsWith('end') ? FINAL_MAX_MS : CONVERGE_MAX_MS) + w.injectedAt - w.t0)}`
    const lost = !w.done ? 'not measured (cut short)' : w.lost === 0 ? '0' : `**${int(w.lost)}**`
    lines.push(`| ${w.name} | ${w.how.replace(/\|/g, '/')} | ${int(affected)} (${int(w.closed.size)} / ${int(resyncOnly)}) | ${converge} | ${int(w.statusFrames)} | ${lost} |`)
  }
  lines.push('')
  lines.push('Details per fault: client side (tabs) and gateway counters (`GET /metrics`, growth over the window, both nodes summed; ~: a gateway process restarted in the window and took its counts with it, so only what it counted since is included).', '')
  lines.push('| fault | fault lasted | job_update applied | job_status asked after a gap | error replies | hostile frames delivered | resyncs | broker reconnects | malformed dropped | catch-up statuses | slow closes | snapshot failures |')
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|')
  for (const w of windows) {
    const errors = Object.entries(w.errors).map(([k, v]) => `${k} ${v}`).join(', ') || '0'
    const c = (k: string) => `${w.approximate ? '~' : ''}${int(w.counters[k] ?? 0)}`
    lines.push(`| ${w.name} | ${secs(w.injectedAt - w.t0)} | ${int(w.updates)} | ${int(w.requestedStatuses)} | ${errors} | ${w.foreign === 0 ? '0' : `**${int(w.foreign)}**`} | ` +
      `${c('resyncs_total')} | ${c('broker_reconnects_total')} | ${c('producer_malformed_total')} | ${c('catch_up_statuses_total')} | ${c('slow_consumer_closes_total')} | ${c('snapshot_failures_total')} |`)
  }
  const lostRows = windows.filter((w) => w.lost > 0)
  if (lostRows.length > 0) {
    lines.push('', '## Lost views', '')
    for (const w of lostRows) {
      lines.push(`- **${w.name}**: ${int(w.lost)} views behind at the end of the window. Examples:`)
      for (const e of w.lostExamples) lines.push(`  - ${e}`)
    }
  }
  lines.push('', '## How to read it', '')
  lines.push(
    '- **sockets affected**: tabs whose socket closed during the row\'s window (from the fault until the next one) or that received a `job_status` (a resync, a re-subscribe, or one they asked for after a seq gap). Closed tabs reconnect with the client library\'s backoff and subscribe again.',
    `- **time to converge**: from the fault until every view of every tab (not only the affected ones) shows its job's stored state or a newer one, every tab is connected and every subscription was answered on its current connection. The stored state is sampled from Redis every ${SAMPLE_EVERY_MS} ms; a view is compared with a sample at least ${LAG_MS} ms old, so frames in flight are not counted as behind, and the figure is late by up to ${SAMPLE_EVERY_MS + LAG_MS} ms. It includes the fault's own duration (10 s of a frozen Redis, 5 s of stalled readers). After a restart without data, a view converges once the producer has written the job again and the view shows that new epoch.`,
    '- **frames caught up**: `job_status` frames received by tabs during the window.',
    `- **lost**: views still behind at the end of the window (after up to ${CONVERGE_MAX_MS / 1000} s to converge and ${RECHECK_MS / 1000} s more), while producers kept writing every job every few seconds. A view lost in one row is left out of the later fault rows (so it neither counts twice nor holds up every later fault) and checked again in the last row, where every view must be exactly equal (status, seq, epoch) to its job's final terminal state in Redis within ${FINAL_MAX_MS / 1000} s of the last write. Must be 0.`,
    '- **hostile frames delivered**: `job_update` frames whose data lacked the integer `seq` and `epoch` and the numeric `ts` the producer script always writes: a producer message that did not come from the script reached a browser.',
    `- **hostile messages** (plain PUBLISH, not the producer script): ${hostileKinds.length > 0 ? hostileKinds.join('; ') : 'not sent'}.`,
    '- Terminal states are written during the faults: a sixth of the jobs finishes as each fault from the Redis freeze on starts, the rest at the end.',
  )
  const text = lines.join('\n') + '\n'
  process.stdout.write('\n' + text)
  try {
    mkdirSync(projectPath('bench', 'results'), { recursive: true })
    writeFileSync(projectPath('bench', 'results', 'chaos-latest.md'), text)
  } catch (err) {
    log(`could not write bench/results/chaos-latest.md: ${(err as Error).message}`)
  }
}

async function cleanup(): Promise<void> {
  for (const tab of tabs) tab.stop()
  oracle?.close()
  hostileConnection?.disconnect()
  await producer?.close().catch(() => undefined)
  await Promise.all(nodes.map((n) => n.stop().catch(() => undefined)))
  await redis?.stop().catch(() => undefined)
  killEverything()
  if (tmp !== '') {
    if (keepTmp) log(`gateway logs and Redis data kept in ${tmp}`)
    else rmSync(tmp, { recursive: true, force: true })
  }
}

let code = 2
try {
  code = await main()
} catch (err) {
  log(`harness error: ${(err as Error).stack ?? String(err)}`)
  for (const node of nodes) log(`${node.name} log tail:\n${node.logTail()}`)
  if (windows.length > 0) finishReport(`harness error: ${(err as Error).message}`)
  keepTmp = true
  code = 2
} finally {
  await cleanup()
}
process.exit(code)

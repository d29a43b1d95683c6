// `make soak`: runs one gateway node (two workers) under steady, churning load for
// SOAK_MINUTES (default 10) and fails when its memory keeps growing.
//
// Load: 2,000 simulated tabs (bench/chaos/sim-client.ts), each watching 3 of 200 running jobs;
// producers write 200 updates/s through the producer script; every job finishes after 30
// updates and is replaced by a new job id, which its watchers unsubscribe from and subscribe
// to in turn (job ids are never reused, so per-job state that is never freed shows); tabs are
// closed and reopened slowly (10 a second). Every second it reads each gateway process's RSS
// and CPU time from /proc, times GET /healthz and reads GET /metrics: each process's V8 heap in
// use, its event-loop delay histogram, and the connection and watched-job gauges.
//
// After a warm-up (the first 20% of the run: heaps, JIT code and buffers grow to their working
// size) it decides on two figures, and fails when either is above MAX_GROWTH_MB_PER_MIN:
// - the slope of a least-squares line through the floor of the summed V8 heap in use (its
//   running minimum over 15 s: what survives collections, where leaked objects show);
// - the slope of the same kind of line through the memory outside V8's heap: RSS less the
//   memory V8 holds for its heap, summed (buffers, uWS's sockets, malloc, code).
// RSS itself is shown but not fitted: V8 gives memory back to the system in steps of tens of
// MB and takes it again as the heap refills (a run fell by 66 MB at 150 s and grew back to the
// same plateau by the end), and a line through one such dip and refill reads as growth though
// the plateau never moved. Its two parts move smoothly, and a leak shows in one of them.
// Why 2 MB/min: it is 120 MB an hour, ~2.9 GB a day, enough to exhaust
// the container of a gateway that needs ~150 MB within a day, so any growth above it is a
// defect even if it were not a leak; and it is small against what one leaked object per event
// would cost here: 200 updates/s make 12,000 updates a minute, 6,000 frames/s make 360,000
// deliveries a minute, 600 reconnects and 400 new jobs a minute, so 2 MB/min is ~170 bytes
// per update, ~6 bytes per delivery, ~3 KB per reconnect or ~5 KB per job. Below it lies the
// noise of GC (a few MB of sawtooth), which a 10-minute fit averages out; with SOAK_MINUTES=1
// the fit covers 48 s and the verdict is indicative only.
//
//   node dist/bench/soak.js      env: SOAK_MINUTES (10), SOAK_SCALE (1)

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'
import { projectPath } from '../src/support/paths.js'
import { compare, equals, StoredStates } from './chaos/oracle.js'
import { commitLabel } from './commit-label.js'
import { positiveEnv, sleep, startHarness } from './chaos/harness.js'
import { GatewayNode, killEverything, openFileLimit, RedisServer } from './chaos/procs.js'
import { ProducerLoop } from './chaos/producer-loop.js'
import { SimTab, type TabEvents } from './chaos/sim-client.js'
import { cpuMicros, rssBytes } from './procstat.js'

const MINUTES = positiveEnv('SOAK_MINUTES', 10)
const SCALE = positiveEnv('SOAK_SCALE', 1)
const TABS = Math.max(20, Math.round(2000 * SCALE))
const SLOTS = Math.max(10, Math.round(200 * SCALE))
const JOBS_PER_TAB = 3
const RATE = Math.max(10, Math.round(200 * SCALE))
const STEPS_PER_JOB = 30
const CHURN_PER_SEC = Math.max(1, Math.round(10 * SCALE))
const MAX_GROWTH_MB_PER_MIN = 2
const WARMUP_SHARE = 0.2
/** Longer than the collection cycle seen at this load (~5-15 s). */
const FLOOR_WINDOW_MS = 15_000
const DURATION_MS = MINUTES * 60_000
/** A table row every 1/20 of the run, between 3 s and 30 s apart. */
const ROW_EVERY_MS = Math.min(30_000, Math.max(3000, Math.round(DURATION_MS / 20 / 1000) * 1000))
const GLOBAL_TIMEOUT_MS = DURATION_MS + 120_000


const { log, loadAtStart } = startHarness('soak')

interface Point {
  /** ms since the measured run began */
  readonly t: number
  readonly rss: number[]
  readonly total: number
  /** V8 heap in use, summed over the gateway's processes (NaN when /metrics did not answer) */
  readonly heap: number
  /** RSS less the memory V8 holds for its heap, summed (NaN when /metrics did not answer) */
  readonly outside: number
}

interface Row {
  readonly t: number
  readonly rssMb: number[]
  readonly totalMb: number
  readonly heapMb: number
  /** the worst process's event-loop delay p99 over the row, as a histogram bucket's bound */
  readonly loopP99Ms: string
  readonly cpuPercent: number
  readonly healthzMs: { median: number; max: number }
  readonly harnessLoopP99Ms: number
  readonly connections: number
  readonly jobsWatched: number
  readonly framesPerSec: number
}

let tmp = ''
let redis: RedisServer | null = null
let node = null as GatewayNode | null // widened: the top-level catch below reads it
let tabs: SimTab[] = []
let producer: ProducerLoop | null = null
let oracle: StoredStates | null = null
let frames = 0
let reconnects = 0


const events: TabEvents = {
  opened: (tab) => {
    if (tab.opens > 1) reconnects++
  },
  closed: () => undefined,
  status: () => frames++,
  update: () => frames++,
  error: () => undefined,
  foreign: () => undefined,
  gaveUp: (tab, code, reason) => log(`tab ${tab.id} gave up after close ${code} ${reason}`),
}

async function main(): Promise<number> {
  if (TABS + 1000 > openFileLimit()) throw new Error(`${TABS} sockets need more open files than ulimit -n allows (${openFileLimit()})`)
  tmp = mkdtempSync(join(tmpdir(), 'jobwire-soak-'))
  const timeout = setTimeout(() => {
    log(`global timeout (${GLOBAL_TIMEOUT_MS / 1000} s): stopping; gateway log kept in ${tmp}`)
    killEverything()
    process.exit(3)
  }, GLOBAL_TIMEOUT_MS)
  timeout.unref()

  redis = await RedisServer.start(tmp)
  node = await GatewayNode.start({ name: 'gateway', redisUrl: redis.url, workers: 2, logPath: join(tmp, 'gateway.log') })
  const pids = node.pids()
  log(`redis-server on ${redis.port}; gateway on ${node.port}: primary ${pids[0]}, workers ${pids.slice(1).join(', ')}`)

  // Slots of running jobs; each slot's job is replaced by a new id when it finishes.
  let generation = 0
  const slotJob: string[] = Array.from({ length: SLOTS }, (_, s) => `soak-${s}-${generation++}`)
  const slotOf = new Map<string, number>(slotJob.map((id, s) => [id, s]))
  const watchers: number[][] = Array.from({ length: SLOTS }, () => [])
  let stride = Math.floor(SLOTS / JOBS_PER_TAB)
  if (stride % 2 === 0) stride += 1
  const replaced: Array<{ slot: number; old: string; at: number }> = []
  producer = new ProducerLoop(redis.url, {
    ratePerSec: RATE,
    minIntervalMs: 300,
    // Watchers get 2 s to see the terminal state before the page moves on to the next job.
    onTerminal: (id) => {
      const slot = slotOf.get(id)
      if (slot !== undefined) replaced.push({ slot, old: id, at: Date.now() + 2000 })
    },
  })
  // Staggered starts, so jobs do not all finish (and get replaced) at the same moment.
  slotJob.forEach((id, s) => producer!.add(id, 1 + (s % STEPS_PER_JOB)))
  await producer.seed()

  tabs = Array.from({ length: TABS }, (_, i) => {
    const slots = Array.from({ length: JOBS_PER_TAB }, (_, m) => (i + m * stride) % SLOTS)
    for (const s of slots) watchers[s]!.push(i)
    return new SimTab(i, node!.wsUrl, slots.map((s) => slotJob[s]!), events)
  })
  for (let i = 0; i < tabs.length; i += 100) await Promise.all(tabs.slice(i, i + 100).map((t) => t.start(20_000)))
  log(`${TABS} tabs connected, ${TABS * JOBS_PER_TAB} subscriptions; producers at ${RATE} updates/s; measuring for ${MINUTES} min`)
  producer.start()

  const loop = monitorEventLoopDelay({ resolution: 10 })
  loop.enable()
  const t0 = Date.now()
  const points: Point[] = []
  const rows: Row[] = []
  const healthz: number[] = []
  const left = new Map<number, number>() // tab id -> when it comes back
  let churnCursor = 0
  let lastRowAt = t0
  let framesAtRow = 0
  let cpuAtRow = cpuTotal(node.pids())
  let loopAtRow = loopBuckets(await node.metrics().catch(() => new Map<string, number>()))
  const initialPids = node.pids().join(',')
  let processChange = ''

  // One iteration a second, bounded by the run's length.
  for (let second = 0; second < DURATION_MS / 1000 + 5 && Date.now() - t0 < DURATION_MS; second++) {
    const tickStart = Date.now()
    // Jobs that finished move their slot to a new job id.
    while (replaced.length > 0 && replaced[0]!.at <= tickStart) {
      const { slot, old } = replaced.shift()!
      const next = `soak-${slot}-${generation++}`
      slotJob[slot] = next
      slotOf.delete(old)
      slotOf.set(next, slot)
      producer.remove(old)
      producer.add(next, STEPS_PER_JOB)
      for (const i of watchers[slot]!) {
        tabs[i]!.unwatch(old)
        tabs[i]!.watch(next)
      }
    }
    // Tabs close and come back 1-3 s later: slow, steady connection churn.
    for (const [id, at] of left) {
      if (at <= tickStart) {
        tabs[id]!.rejoin()
        left.delete(id)
      }
    }
    for (let k = 0; k < CHURN_PER_SEC; k++) {
      const id = (churnCursor = (churnCursor + 7919) % TABS)
      if (left.has(id)) continue
      tabs[id]!.leave()
      left.set(id, tickStart + 1000 + ((id * 31) % 2000))
    }

    const current = node.pids()
    if (current.join(',') !== initialPids && processChange === '') {
      processChange = `gateway processes changed from [${initialPids}] to [${current.join(',')}] at ${((tickStart - t0) / 1000).toFixed(0)} s`
      log(processChange)
    }
    const rss = current.map(rssBytes)
    const gauges = await node.metrics().catch(() => new Map<string, number>())
    const total = rss.reduce((a, b) => a + b, 0)
    points.push({ t: tickStart - t0, rss, total, heap: summed(gauges, 'jobwire_process_heap_used_bytes'), outside: total - summed(gauges, 'jobwire_process_heap_committed_bytes') })
    healthz.push(await probeHealthz(node.httpUrl))

    if (tickStart - lastRowAt >= ROW_EVERY_MS - 50) {
      const cpuNow = cpuTotal(current)
      const loopNow = loopBuckets(gauges)
      const sorted = [...healthz].sort((a, b) => a - b)
      rows.push({
        t: tickStart - t0,
        rssMb: rss.map(mb),
        totalMb: mb(points.at(-1)!.total),
        heapMb: mb(points.at(-1)!.heap),
        loopP99Ms: loopP99(loopAtRow, loopNow),
        cpuPercent: (100 * (cpuNow - cpuAtRow)) / 1000 / (tickStart - lastRowAt),
        healthzMs: { median: sorted[Math.floor(sorted.length / 2)] ?? 0, max: sorted.at(-1) ?? 0 },
        harnessLoopP99Ms: loop.percentile(99) / 1e6,
        connections: gauges.get('jobwire_connections') ?? 0,
        jobsWatched: gauges.get('jobwire_jobs_watched') ?? 0,
        framesPerSec: ((frames - framesAtRow) * 1000) / (tickStart - lastRowAt),
      })
      const r = rows.at(-1)!
      log(`t=${(r.t / 1000).toFixed(0)}s rss ${r.rssMb.map((m) => m.toFixed(1)).join(' + ')} = ${r.totalMb.toFixed(1)} MB, heap ${r.heapMb.toFixed(1)} MB, loop p99 ${r.loopP99Ms} ms, cpu ${r.cpuPercent.toFixed(0)}%, ` +
        `healthz ${r.healthzMs.median.toFixed(1)}/${r.healthzMs.max.toFixed(1)} ms, ${r.connections} sockets, ${r.jobsWatched} jobs watched, ${r.framesPerSec.toFixed(0)} frames/s`)
      healthz.length = 0
      loop.reset()
      lastRowAt = tickStart
      framesAtRow = frames
      cpuAtRow = cpuNow
      loopAtRow = loopNow
    }
    await sleep(Math.max(0, 1000 - (Date.now() - tickStart)))
  }
  loop.disable()

  // The fits, after the warm-up: of the floor (what the gateway keeps between collections),
  // which decides, and of every sample, for comparison.
  const measured = points.filter((p) => p.t >= DURATION_MS * WARMUP_SHARE)
  const withHeap = measured.filter((p) => Number.isFinite(p.heap) && Number.isFinite(p.outside))
  const heap = fit(floorOf(withHeap, (p) => p.heap))
  const outside = fit(floorOf(withHeap, (p) => p.outside))
  const total = fit(floorOf(measured, (p) => p.total))
  const raw = fit(measured.map((p) => [p.t / 60_000, p.total / 2 ** 20]))
  const perProcess = (measured[0]?.rss ?? []).map((_, i) => fit(floorOf(measured, (p) => p.rss[i] ?? 0)))

  // Then quiet: no churn, producers stopped; every view must equal the stored state.
  for (const id of left.keys()) tabs[id]!.rejoin()
  await producer.stop()
  const settled = await settle()
  const heapSampled = withHeap.length >= measured.length * 0.9
  const verdictOk = heapSampled && heap.slope <= MAX_GROWTH_MB_PER_MIN && outside.slope <= MAX_GROWTH_MB_PER_MIN &&
    processChange === '' && settled.behind === 0
  writeReport({ rows, heap, outside, heapSamples: withHeap.length, total, raw, perProcess, measured: measured.length, settled, processChange, verdictOk, pids: node.pids() })
  clearTimeout(timeout)
  return verdictOk ? 0 : 1
}

async function settle(): Promise<{ views: number; behind: number; examples: string[] }> {
  const ids = [...new Set(tabs.flatMap((t) => [...t.jobIds]))]
  oracle = new StoredStates(redis!.url, ids)
  let last = { views: 0, behind: -1, examples: ['not compared'] }
  for (let i = 0; i < 30; i++) {
    await sleep(500)
    try {
      const r = compare(tabs, await oracle.read(), equals, 8)
      last = { views: r.views, behind: r.behind, examples: r.examples }
      if (r.behind === 0) break
    } catch {
      // Redis unreadable: try again
    }
  }
  return last
}

async function probeHealthz(url: string): Promise<number> {
  const t = performance.now()
  try {
    await (await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(2000) })).arrayBuffer()
  } catch {
    return 2000
  }
  return performance.now() - t
}

/** process -> cumulative counts per bucket of jobwire_event_loop_delay_seconds */
type LoopBuckets = Map<string, Array<[number, number]>>

/** A per-process gauge summed over the gateway's processes; NaN when /metrics had none. */
function summed(gauges: ReadonlyMap<string, number>, series: string): number {
  let sum = 0
  let seen = 0
  for (const [key, value] of gauges) {
    if (!key.startsWith(`${series}{`)) continue
    sum += value
    seen++
  }
  return seen === 0 ? Number.NaN : sum
}

function loopBuckets(gauges: ReadonlyMap<string, number>): LoopBuckets {
  const out: LoopBuckets = new Map()
  for (const [key, value] of gauges) {
    const m = /^jobwire_event_loop_delay_seconds_bucket\{process="([^"]+)",le="([^"]+)"\}$/.exec(key)
    if (m === null) continue
    const le = m[2] === '+Inf' ? Number.POSITIVE_INFINITY : Number(m[2])
    const list = out.get(m[1]!) ?? []
    list.push([le, value])
    out.set(m[1]!, list)
  }
  return out
}

/** The worst process's p99 between two scrapes: the bound of the bucket that holds it. */
function loopP99(before: LoopBuckets, after: LoopBuckets): string {
  let worst = -1
  for (const [process, buckets] of after) {
    const earlier = new Map(before.get(process) ?? [])
    const delta = buckets.map(([le, n]) => [le, n - (earlier.get(le) ?? 0)] as const)
    const count = delta.at(-1)?.[1] ?? 0
    if (count <= 0) continue
    const at = delta.find(([, n]) => n >= count * 0.99)?.[0] ?? Number.POSITIVE_INFINITY
    worst = Math.max(worst, at)
  }
  if (worst < 0) return 'n/a'
  return worst === Number.POSITIVE_INFINITY ? '> 1000' : `≤ ${worst * 1000}`
}

function cpuTotal(pids: readonly number[]): number {
  return pids.reduce((sum, pid) => sum + cpuMicros(pid), 0)
}

const mb = (bytes: number) => bytes / 2 ** 20

/**
 * The lower envelope of RSS: at each sample, the least value of the last FLOOR_WINDOW_MS
 * (within the measured part), as (minutes, MB). RSS saws up and down by 10-20 MB with V8's
 * collections, and a line through a few teeth tilts with where the run happened to start and
 * stop in the cycle; the floor is what survives collections, which is where a leak shows.
 */
function floorOf(points: readonly Point[], value: (p: Point) => number): Array<[number, number]> {
  const out: Array<[number, number]> = []
  let from = 0
  for (let i = 0; i < points.length; i++) {
    while (points[from]!.t < points[i]!.t - FLOOR_WINDOW_MS) from++
    let least = Number.POSITIVE_INFINITY
    for (let k = from; k <= i; k++) least = Math.min(least, value(points[k]!))
    out.push([points[i]!.t / 60_000, least / 2 ** 20])
  }
  return out
}

/** Least squares y = a + b x; b in MB per minute, r2 the share of variance the line explains. */
function fit(xy: ReadonlyArray<[number, number]>): { slope: number; r2: number; first: number; last: number } {
  const n = xy.length
  if (n < 2) return { slope: 0, r2: 0, first: xy[0]?.[1] ?? 0, last: xy[0]?.[1] ?? 0 }
  const mx = xy.reduce((s, [x]) => s + x, 0) / n
  const my = xy.reduce((s, [, y]) => s + y, 0) / n
  let sxy = 0
  let sxx = 0
  let syy = 0
  for (const [x, y] of xy) {
    sxy += (x - mx) * (y - my)
    sxx += (x - mx) ** 2
    syy += (y - my) ** 2
  }
  const slope = sxx === 0 ? 0 : sxy / sxx
  return { slope, r2: sxx === 0 || syy === 0 ? 0 : (sxy * sxy) / (sxx * syy), first: xy[0]![1], last: xy[n - 1]![1] }
}

interface Summary {
  rows: Row[]
  heap: ReturnType<typeof fit>
  heapSamples: number
  outside: ReturnType<typeof fit>
  total: ReturnType<typeof fit>
  raw: ReturnType<typeof fit>
  perProcess: Array<ReturnType<typeof fit>>
  measured: number
  settled: { views: number; behind: number; examples: string[] }
  processChange: string
  verdictOk: boolean
  pids: number[]
}

function writeReport(s: Summary): void {
  const f1 = (n: number) => n.toFixed(1)
  const f2 = (n: number) => n.toFixed(2)
  const names = ['primary', ...s.pids.slice(1).map((_, i) => `worker ${i + 1}`)]
  const lines: string[] = ['# jobwire soak run', '']
  lines.push(`${new Date().toISOString()}, commit ${commitLabel()}, \`make soak\` with SOAK_MINUTES=${MINUTES}${SCALE === 1 ? '' : `, SOAK_SCALE=${SCALE}`}.`)
  lines.push(`One gateway node (\`serve --workers 2\`, defaults otherwise) on its own redis-server. ${TABS.toLocaleString('en-US')} WebSocket tabs watching ${JOBS_PER_TAB} of ${SLOTS} running jobs each; ` +
    `producers at ${RATE} updates/s through the producer script; each job finishes after ${STEPS_PER_JOB} updates and is replaced by a new job id (its watchers unsubscribe and subscribe to the new one); ` +
    `${CHURN_PER_SEC} tabs a second close and reopen 1-3 s later. ${reconnects.toLocaleString('en-US')} reconnects in all. ` +
    `Load average ${loadAtStart.toFixed(1)} at the start, ${loadavg()[0]!.toFixed(1)} at the end (2 cores, shared with other work).`, '')
  const verdict = s.verdictOk ? 'PASS' : 'FAIL'
  lines.push(`**${verdict}** (threshold ${MAX_GROWTH_MB_PER_MIN} MB/min for both figures):`, '',
    `- V8 heap in use, summed over the gateway's processes: its floor grew **${f2(s.heap.slope)} MB/min** after the ${WARMUP_SHARE * 100}% warm-up ` +
    `(least squares over ${s.heapSamples} of ${s.measured} one-second samples of the ${FLOOR_WINDOW_MS / 1000} s running minimum, r² ${s.heap.r2.toFixed(2)}, ${f1(s.heap.first)} -> ${f1(s.heap.last)} MB).` +
    (s.heapSamples < s.measured * 0.9 ? ' **Too few /metrics samples answered for this figure to count.**' : ''),
    `- Memory outside V8's heap (RSS less the heap V8 holds), summed: its floor grew **${f2(s.outside.slope)} MB/min** (r² ${s.outside.r2.toFixed(2)}, ${f1(s.outside.first)} -> ${f1(s.outside.last)} MB).`,
    `- RSS, summed, for comparison (not decisive; see "How to read it"): a line through its ${FLOOR_WINDOW_MS / 1000} s floor has slope ${f1(s.total.slope)} MB/min (r² ${s.total.r2.toFixed(2)}, ${f1(s.total.first)} -> ${f1(s.total.last)} MB), through every raw sample ${f1(s.raw.slope)} MB/min.` +
    (s.processChange ? ` **A gateway process died or was replaced** (${s.processChange}): the figures are not valid.` : ''))
  lines.push('', `Per process: ${s.perProcess.map((p, i) => `${names[i] ?? `process ${i}`} ${f1(p.slope)} MB/min (${f1(p.first)} -> ${f1(p.last)} MB)`).join(', ')}.`)
  lines.push('', `After the run (churn and producers stopped): ${s.settled.behind === 0 ? `all ${s.settled.views.toLocaleString('en-US')} views equal their job's stored state` : `${s.settled.behind} of ${s.settled.views} views differ from the stored state (${s.settled.examples.join('; ')})`}.`)
  lines.push('', `| t | RSS ${names.join(' / ')} (MB) | RSS total (MB) | V8 heap in use, total (MB) | gateway event-loop delay p99 (ms) | gateway CPU (% of a core) | /healthz round trip median / max (ms) | harness loop delay p99 (ms) | sockets | jobs watched | frames/s to tabs |`)
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|')
  for (const r of s.rows) {
    lines.push(`| ${(r.t / 1000).toFixed(0)} s | ${r.rssMb.map(f1).join(' / ')} | ${f1(r.totalMb)} | ${f1(r.heapMb)} | ${r.loopP99Ms} | ${r.cpuPercent.toFixed(0)} | ${f1(r.healthzMs.median)} / ${f1(r.healthzMs.max)} | ${f1(r.harnessLoopP99Ms)} | ${r.connections.toLocaleString('en-US')} | ${r.jobsWatched} | ${r.framesPerSec.toFixed(0)} |`)
  }
  lines.push('', '## How to read it', '',
    `- V8 heap in use is \`jobwire_process_heap_used_bytes\` from \`GET /metrics\`, summed over the primary and the workers, every second. The verdict fits its floor: at each second the least value of the last ${FLOOR_WINDOW_MS / 1000} s, which is what survived the last collections; leaked JavaScript objects raise it.`,
    '- RSS is VmRSS from /proc/<pid>/status of the primary and each worker, every second. It is not what decides: V8 gives memory back to the system in steps of tens of MB and takes it again as the heap refills, so a line through one such dip and refill tilts upwards while the plateau stays put. Memory outside the heap is RSS less `jobwire_process_heap_committed_bytes` (what V8 holds for its heap, used or not); its floor is fitted like the heap\'s, and memory leaked in buffers, uWS or native code raises it.',
    '- Event-loop delay is `jobwire_event_loop_delay_seconds` of each process between two rows; the worst process\'s p99 is shown as the bound of the histogram bucket that holds it.',
    '- The threshold and why it is 2 MB/min are explained at the top of bench/soak.ts: ~2.9 GB a day would exhaust a gateway\'s container within a day, while one leaked object per update, delivery, reconnect or job here would grow faster than that.',
    '- The /healthz round trip includes the harness\'s own event loop (its delay is beside it): the harness and the gateway share two cores.',
    '- The run also fails when a gateway process dies or when, after the load stops, any tab\'s view differs from its job\'s stored state.',
    '- sockets and jobs watched are the gateway\'s gauges (jobs with a watcher, summed over workers; a job stays watched for --unsubscribe-delay-ms after its last watcher leaves). A count that grows row after row would be a leak in bookkeeping even if RSS did not show it yet.',
  )
  const text = lines.join('\n') + '\n'
  process.stdout.write('\n' + text)
  mkdirSync(projectPath('bench', 'results'), { recursive: true })
  writeFileSync(projectPath('bench', 'results', 'soak-latest.md'), text)
}

async function cleanup(): Promise<void> {
  for (const tab of tabs) tab.stop()
  oracle?.close()
  await producer?.close().catch(() => undefined)
  await node?.stop().catch(() => undefined)
  await redis?.stop().catch(() => undefined)
  killEverything()
  if (tmp !== '') rmSync(tmp, { recursive: true, force: true })
}

let code = 2
try {
  code = await main()
} catch (err) {
  log(`harness error: ${(err as Error).stack ?? String(err)}`)
  if (node) log(`gateway log tail:\n${node.logTail()}`)
  code = 2
} finally {
  await cleanup()
}
process.exit(code)

// `make bench` at tiny size, so the harness cannot rot: every scenario kind runs against
// jobwire, the baseline and the floor (the rate-cap scenario against jobwire alone), and the
// results account for every frame. No figure is asserted beyond "nothing was lost", and for the
// rate caps what a cap must do at any speed (far fewer deliveries, every terminal state, a
// median wait under one period): performance is shown by make bench, not by unit tests. The
// report and the rate-cap join are checked on made-up data.

import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { projectPath } from '../src/support/paths.js'
import { childPids } from '../bench/procstat.js'
import { until } from './fixtures/until.js'
import type { WindowResult } from '../bench/fleet.js'
import { latestHeld, type JobUpdates, type RateCapRun } from '../bench/ratecap.js'
import { floorComparisons, printTable, rateCapRatios, renderMarkdown } from '../bench/report.js'
import type { BenchResults, SweepResult, TargetSpec } from '../bench/run.js'
import type { RateCapScenario, StreamScenario, SweepScenario } from '../bench/scenarios.js'

const run = promisify(execFile)

t.test('bench harness at tiny size', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'jobwire-bench-'))
  t.teardown(() => rmSync(out, { recursive: true, force: true }))
  const { stdout } = await run('node', [projectPath('dist', 'bench', 'run.js'), '--size', 'tiny', '--out', out], { timeout: 110_000 })
  t.match(stdout, /scenario\s+target\s+sockets/)
  t.match(stdout, /jobwire vs baseline/)
  for (const f of ['latest-tiny.json', 'latest-tiny.md', 'latest-tiny.svg']) t.ok(existsSync(join(out, f)), f)
  const results = JSON.parse(readFileSync(join(out, 'latest-tiny.json'), 'utf8')) as BenchResults
  const targets = new Set(results.scenarios.map((s) => s.result.target.name))
  t.ok(targets.has('jobwire') && targets.has('baseline (ws)'), 'both gateways measured')
  const kinds = new Map<string, Set<string>>()
  for (const s of results.scenarios) kinds.set(s.result.scenario.id, (kinds.get(s.result.scenario.id) ?? new Set()).add(s.result.target.kind))
  for (const [id, k] of kinds) if (k.has('baseline')) t.ok(k.has('floor'), `${id}: the floor ran beside the baseline`)
  for (const s of results.scenarios) {
    if (s.kind === 'stream') {
      t.equal(s.result.window.lost, 0, `${s.result.scenario.id} ${s.result.target.name}: nothing lost`)
      t.equal(s.result.window.delivered, s.result.window.expected)
      t.ok(s.result.window.latencyMs.samples > 0, 'probes recorded latency')
    } else if (s.kind === 'sweep') {
      t.ok(s.result.steps.length > 0, `${s.result.scenario.id} ${s.result.target.name}: sweep ran`)
    } else if (s.kind === 'ratecap') {
      const { scenario, runs } = s.result
      t.same(runs.map((r) => r.maxHz), [0, scenario.maxHz], 'rate caps: a full-rate run, then a capped one')
      for (const r of runs) {
        const name = `rate caps, ${r.maxHz === 0 ? 'full rate' : `max_hz ${r.maxHz}`}`
        t.equal(r.connected, scenario.sockets, `${name}: every socket subscribed`)
        t.ok(r.drained, `${name}: every socket held its job's terminal state`)
        t.equal(r.terminalMissing, 0, `${name}: no terminal state missing`)
        t.equal(r.closedByServer, 0, `${name}: no socket closed`)
        t.equal(r.held.mismatched + r.seqUnparsed + r.recordsDropped, 0, `${name}: every probe frame read and matched to its update`)
        t.equal(r.held.notHeld, 0, `${name}: every update held by every probe in the end`)
        // every pair of an update and a probe of its job, counted once
        t.equal(r.held.samples, (r.published / scenario.jobs) * r.held.probes, `${name}: one time per update and probe`)
      }
      const [full, capped] = runs as [RateCapRun, RateCapRun]
      t.equal(full.delivered, full.offered, 'full rate: every update to every socket')
      t.ok(capped.delivered * 3 < full.delivered, `max_hz ${scenario.maxHz}: far fewer deliveries (${capped.delivered} against ${full.delivered})`)
      // A state waits for the next slot: half a period on average. Holding states back until
      // the terminal one would put the median near half the window (500 ms).
      t.ok(capped.held.p50 < 1000 / scenario.maxHz, `max_hz ${scenario.maxHz}: median time until held under one period (${capped.held.p50} ms)`)
    } else {
      t.equal(s.result.failed, 0, `${s.result.target.name}: every idle socket connected`)
    }
  }
  t.ok(results.scenarios.some((s) => s.kind === 'ratecap'), 'the rate-cap scenario ran')
  // Three nodes on PUBLISH-only producers: the stream checks above hold for them too, and every
  // node that watches a job tries to record its latest payload (issue 10, items 2 and 5).
  const nodes = results.scenarios.find((s) => s.kind === 'stream' && s.result.scenario.id === 'nodes-publish')
  t.equal(nodes?.result.target.name, 'jobwire 3 nodes', 'the three-node scenario ran on three nodes')
  const recorder = nodes?.kind === 'stream' ? nodes.result.recorder : undefined
  t.ok(recorder !== undefined && recorder.recordsPerSec > 0 && recorder.scriptCallsPerSec > 0, `the recorder's writes and their Redis cost measured (${JSON.stringify(recorder)})`)
  t.match(readFileSync(join(out, 'latest-tiny.md'), 'utf8'), /### Recording PUBLISH-only jobs[^]*\| jobwire 3 nodes \|/)
  t.match(readFileSync(join(out, 'latest-tiny.md'), 'utf8'), /## Rate caps \(max_hz\)[^]*\| full rate \|[^]*\| max_hz 5 \|/)
  t.ok(results.polling && results.polling.pushFrameBytes > 0 && results.polling.pollResponseBytes > 0, 'polling comparison measured')
  t.match(readFileSync(join(out, 'latest-tiny.svg'), 'utf8'), /^<svg/)
})

t.test('a bench run ended by SIGTERM leaves none of its processes behind', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'jobwire-bench-'))
  t.teardown(() => rmSync(out, { recursive: true, force: true }))
  const bench = spawn('node', [projectPath('dist', 'bench', 'run.js'), '--size', 'tiny', '--only', 'seed', '--out', out], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  bench.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<number | null>((resolve) => bench.once('exit', (code) => resolve(code)))
  // The first target runs: redis-server, publisher, gateway and load generators are up.
  await until(() => /seed claim \(tiny\): jobwire\n/.test(stderr) && descendants(bench.pid!).length >= 4, 'the first target to start', 60_000)
  const started = descendants(bench.pid!)
  bench.kill('SIGTERM')
  t.equal(await exited, 143, 'the run exits as terminated')
  await until(() => started.every((pid) => !running(pid)), `every process the run started to end (${started.join(', ')})`, 10_000)
  t.pass(`${started.length} processes ended with the run`)
})

/** Every process below `pid`, children first. */
function descendants(pid: number): number[] {
  const out: number[] = []
  for (const child of childPids(pid)) out.push(child, ...descendants(child))
  return out
}

function running(pid: number): boolean {
  try {
    // A zombie still answers signal 0; it has ended all the same.
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').startsWith('Z')
  } catch {
    return false
  }
}

// --- the report, on made-up results ---------------------------------------------------------

function win(deliveriesPerSec: number, usPerDelivery: number, p99: number, kernelShare = 80): WindowResult {
  return {
    ratePerSec: 1, durationMs: 10_000, published: 1, expected: deliveriesPerSec * 10, delivered: deliveriesPerSec * 10, lost: 0, otherFrames: 0,
    closedByServer: 0, deliveriesPerSec,
    latencyMs: { p50: p99 / 4, p90: p99 / 2, p99, p999: p99 * 1.5, max: p99 * 2, samples: 1000 },
    cpu: { gateway: (deliveriesPerSec * usPerDelivery) / 1e4, generator: 20, publisher: 1, redis: 1 },
    gatewayKernelShare: kernelShare, gatewayUsPerDelivery: usPerDelivery, publisherLagMs: 0, histogram: '',
  }
}

const JOBWIRE: TargetSpec = { name: 'jobwire', kind: 'jobwire', workers: 1 }
const BASELINE: TargetSpec = { name: 'baseline (ws)', kind: 'baseline', workers: 1 }
const FLOOR: TargetSpec = { name: 'floor (C)', kind: 'floor', workers: 1 }

// As in the full plan: the ids name the job count, so "sweep-10" is the fan-out 1,000 sweep.
const SWEEP_WIDE: SweepScenario = { kind: 'sweep', id: 'sweep-10', title: 'throughput sweep, fan-out 1,000', sockets: 10_000, jobs: 10, steps: [20_000, 40_000], aim: { p99Ms: 10, deliveriesPerCore: 100_000 } }
const SWEEP_NARROW: SweepScenario = { kind: 'sweep', id: 'sweep-1000', title: 'throughput sweep, fan-out 10', sockets: 10_000, jobs: 1000, steps: [20_000, 40_000, 60_000], aim: { p99Ms: 10, deliveriesPerCore: 100_000 } }
const BROADCAST: StreamScenario = { kind: 'stream', id: 'broadcast', title: 'broadcast', sockets: 10_000, jobs: 10, ratePerSec: 50, aim: { p99Ms: 10 } }
const SEED: StreamScenario = { kind: 'stream', id: 'seed', title: 'seed claim', sockets: 1000, jobs: 100, ratePerSec: 1000, aim: { p99Ms: 2 } }

function sweep(scenario: SweepScenario, target: TargetSpec, steps: WindowResult[], passed: number): { kind: 'sweep'; result: SweepResult } {
  return { kind: 'sweep', result: { scenario, target, connected: scenario.sockets, steps, best: passed > 0 ? steps[passed - 1]! : null } }
}

function stream(scenario: StreamScenario, target: TargetSpec, window: WindowResult): BenchResults['scenarios'][number] {
  return { kind: 'stream', result: { scenario, target, connected: scenario.sockets, connectMs: 100, rssBytes: 50 * 2 ** 20, rssPerConnection: 1000, window } }
}

const made: BenchResults = {
  size: 'full', date: '2026-01-01T00:00:00.000Z', command: 'make bench', commit: 'abc1234',
  machine: { cpus: 2, model: 'test', memoryGiB: 8, node: 'v20', kernel: '6', fdLimit: 20_000 }, windowMs: 10_000, polling: null,
  scenarios: [
    stream(SEED, JOBWIRE, win(10_000, 16, 1.5, 20)),
    stream(SEED, BASELINE, win(10_000, 20, 1, 20)),
    stream(SEED, FLOOR, win(10_000, 10, 0.5, 20)),
    stream(BROADCAST, JOBWIRE, win(50_000, 8.4, 13.5, 90)),
    stream(BROADCAST, BASELINE, win(50_000, 12, 27.6, 70)),
    stream(BROADCAST, FLOOR, win(50_000, 8, 9, 95)),
    // fan-out 1,000: no step passes; fan-out 10: 39,999/s passes, 59,998 does not.
    sweep(SWEEP_WIDE, JOBWIRE, [win(19_998, 9, 12.5)], 0),
    sweep(SWEEP_WIDE, BASELINE, [win(19_998, 12, 18.1)], 0),
    sweep(SWEEP_WIDE, FLOOR, [win(19_998, 6, 7.1), win(39_998, 6.2, 9.5)], 2),
    sweep(SWEEP_NARROW, JOBWIRE, [win(20_000, 15, 2.2), win(39_999, 15, 7.5), win(59_998, 16, 36.8)], 2),
    sweep(SWEEP_NARROW, BASELINE, [win(19_999, 18, 2.6), win(39_999, 18, 4.1), win(59_999, 18, 36)], 2),
    sweep(SWEEP_NARROW, FLOOR, [win(20_000, 11.5, 1.1), win(40_000, 11.5, 1.5), win(60_000, 12, 3)], 3),
  ],
}

t.test('the report names every sweep figure by its own fan-out', async (t) => {
  const md = renderMarkdown(made, 'x.svg')
  const table = printTable(made)
  const lines = [...md.split('\n'), ...table.split('\n')].filter((l) => l.includes('sustains'))
  t.equal(lines.length, 4, 'a sweep line per jobwire target, in the markdown and the console')
  for (const l of lines) {
    if (/fan-out 1,000\b/.test(l)) t.match(l, /sustains 0 deliveries/, `fan-out 1,000 passed no step: ${l}`)
    else t.match(l, /fan-out 10: jobwire sustains 39,999 deliveries\/s .* vs baseline 39,999\/s/, `fan-out 10 reached 39,999/s: ${l}`)
  }
  // The id that names the job count never stands next to a figure as if it were the fan-out.
  t.notMatch(md, /sweep-10\b/)
  t.notMatch(table, /sweep-10\b/)
  t.match(table, /fan-out 1,000 +jobwire +0 /)
  t.match(table, /fan-out 10 +jobwire +39,999 /)
})

t.test('the report shows jobwire as multiples of the floor, with the aims computed', async (t) => {
  const all = floorComparisons(made)
  const pick = (label: string, target: string) => all.find((c) => c.scenario.id === label && c.target.name === target)!
  const broadcast = pick('broadcast', 'jobwire')
  t.equal(broadcast.cpuRatio!.toFixed(2), '1.05', '8.4 us against 8')
  t.equal(broadcast.cpuMet, true, '1.05x meets <= 1.1x')
  t.equal(broadcast.p99Met, false, '13.5 ms against 9 ms misses <= 1.3x')
  const seed = pick('seed', 'jobwire')
  t.equal(seed.cpuMet, false, '16 us against 10 misses <= 1.3x at fan-out 10')
  t.equal(seed.p99Met, null, 'no p99 aim at fan-out 10')
  t.equal(pick('seed', 'baseline (ws)').aim, null, 'the aims are jobwire\'s')
  // Sweeps: the highest step both ran, the same offered load.
  const wide = pick('sweep-10', 'jobwire')
  t.equal(wide.window.deliveriesPerSec, 19_998)
  t.equal(wide.floor.deliveriesPerSec, 19_998)
  t.equal(wide.cpuRatio!.toFixed(2), '1.50')
  const narrow = pick('sweep-1000', 'jobwire')
  t.equal(narrow.floor.deliveriesPerSec, 60_000)

  const table = printTable(made)
  t.match(table, /CPU\/deliv vs floor/)
  t.match(table, /broadcast \(fan-out 1,000\) +jobwire +50,000 +8\.4 +8\.0 +1\.05x +met \(<= 1\.1x\) +13\.50 +9\.00 +1\.50x +MISSED \(<= 1\.3x\)/)
  const md = renderMarkdown(made, 'x.svg')
  t.match(md, /## Against the floor/)
  t.match(md, /\| seed \(fan-out 10\) \| jobwire \| 10,000 \| 16\.0 \| 10\.0 \| 1\.60x \| MISSED \(<= 1\.3x\) \|/)
  // Why: from the measurements, not canned.
  const why = md.slice(md.indexOf('## Why an aim was missed'))
  t.match(why, /seed \(fan-out 10\), jobwire: 16\.0 us of gateway CPU per delivery against the floor's 10\.0 us \(1\.60x, aim <= 1\.3x\)\. Per delivery, user space 12\.8 us against the floor's 8\.0 us \(\+4\.8 us/)
  t.match(why, /broadcast \(fan-out 1,000\), jobwire: p99 13\.50 ms against the floor's 9\.00 ms \(1\.50x, aim <= 1\.3x\)/)
  t.notMatch(why, /broadcast \(fan-out 1,000\), jobwire: 8\.4 us/, 'the CPU aim met there is not listed')
})

// --- the rate-cap join, on made-up frames -------------------------------------------------------

// One job, updates seq 11..15 published at 0, 10, 20, 30 and 40 ms.
const ms = (n: number) => n * 1000
const JOB: JobUpdates = { seq: Uint32Array.from([11, 12, 13, 14, 15]), stamp: Float64Array.from([0, 10, 20, 30, 40].map(ms)) }

t.test('time until held: a skipped update counts until the frame that supersedes it', async (t) => {
  // A capped socket: 12 at 25 ms (11 and 12 held), then 15 at 45 ms (13, 14, 15 held).
  const { held, frameMs } = latestHeld([JOB], [{ job: 0, seq: [12, 15], recvUs: [ms(25), ms(45)], stampUs: [ms(10), ms(40)] }])
  t.equal(held.samples, 5)
  t.equal(held.notHeld, 0)
  t.equal(held.max, 25, '11 waited from 0 to 25 ms, 13 from 20 to 45 ms')
  t.ok(Math.abs(held.p50 - 15) < 0.05, `p50 ${held.p50}: 12, 14 and 15 waited 15, 15 and 5 ms (to the histogram's 3 digits)`)
  t.equal(frameMs.max, 15, 'each frame itself was 15 ms old at worst')
  t.equal(held.mismatched, 0)
})

t.test('time until held: an update nothing superseded is not held; an older frame after a newer changes nothing', async (t) => {
  // 13 arrives, then a job_status of 12 (NaN stamp) that must not count as progress.
  const { held } = latestHeld([JOB], [{ job: 0, seq: [13, 12], recvUs: [ms(21), ms(50)], stampUs: [ms(20), NaN] }])
  t.equal(held.samples, 3, '11, 12, 13 held at 21 ms')
  t.equal(held.max, 21)
  t.equal(held.notHeld, 2, '14 and 15 never')
  const silent = latestHeld([JOB], [{ job: 0, seq: [], recvUs: [], stampUs: [] }])
  t.equal(silent.held.notHeld, 5, 'a probe that received nothing holds nothing')
})

t.test('time until held: a frame whose stamp is not its seq\'s is caught', async (t) => {
  const { held } = latestHeld([JOB], [{ job: 0, seq: [14], recvUs: [ms(35)], stampUs: [ms(20)] }])
  t.equal(held.mismatched, 1)
})

// --- the rate-cap report, on made-up results --------------------------------------------------------

const RATECAP: RateCapScenario = { kind: 'ratecap', id: 'ratecap', title: 'rate caps', sockets: 10_000, jobs: 1000, perJobHz: 50, maxHz: 5, publishMs: 4000, drainMs: 6000, probeEvery: 10 }

function capRun(maxHz: number, deliveriesPerSec: number, gatewayCpu: number, p99: number, drained: boolean): RateCapRun {
  const pct = { p50: p99 / 2, p90: p99 * 0.9, p99, p999: p99, max: p99 }
  return {
    maxHz, connected: 10_000, published: 200_000, publishedPerSec: 50_000, publisherLagMs: 0, delivered: deliveriesPerSec * 4, otherFrames: 0,
    offered: 2_000_000, deliveriesPerSec, wallMs: 4000, drained, drainMs: drained ? 20 : 6000, terminalMissing: drained ? 0 : 7000, closedByServer: 0,
    cpu: { gateway: gatewayCpu, generator: 10, publisher: 10, redis: 20 }, gatewayKernelShare: 50,
    gatewayUsPerDelivery: (gatewayCpu * 4e4) / (deliveriesPerSec * 4), gatewayUsPerUpdate: (gatewayCpu * 4e4) / 200_000,
    held: { ...pct, samples: 200_000, notHeld: drained ? 0 : 150_000, probes: 1000, mismatched: 0 }, frameMs: { ...pct, samples: 1 },
    records: 1, recordsDropped: 0, seqUnparsed: 0,
  }
}

t.test('the report sets the capped run against the full-rate one', async (t) => {
  const b: BenchResults = {
    ...made, scenarios: [{ kind: 'ratecap', result: { scenario: RATECAP, target: { name: 'jobwire', kind: 'jobwire', workers: 1 }, runs: [capRun(0, 80_000, 100, 3000, false), capRun(5, 50_000, 60, 210, true)] } }],
  }
  const ratios = rateCapRatios(b.scenarios[0]!.result as never)!
  t.equal(ratios.deliveries.toFixed(3), '0.625')
  t.equal(ratios.cpu.toFixed(2), '0.60')
  const md = renderMarkdown(b, 'x.svg')
  t.match(md, /## Rate caps \(max_hz\)/)
  t.match(md, /\| full rate \| 10,000 \| 50,000 \| 80,000 \| 1,680,000 \|[^\n]*\| 7,000 \| 0 \| NO \(bound 6,000 ms\) \|/)
  t.match(md, /\| max_hz 5 \| 10,000 \| 50,000 \| 50,000 \| - \|[^\n]*\| yes, 20 ms \|/)
  t.match(md, /max_hz 5 against full rate: deliveries\/s 50,000 vs 80,000 \(0\.63x\), gateway CPU 60\.0% vs 100\.0% of a core \(0\.60x\)/)
  t.match(md, /this scenario alone: `node dist\/bench\/run\.js --size full --only ratecap`/)
  t.match(printTable(b), /ratecap +max_hz 5 +10,000 +50,000 +50,000 +60\.0/)
})

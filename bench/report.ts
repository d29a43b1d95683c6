// Turns bench results into the printed table, the markdown report and the SVG latency chart.

import type { WindowResult } from './fleet.js'
import type { RateCapResult, RateCapRun } from './ratecap.js'
import type { BenchResults, IdleResult, StreamResult, SweepResult, TargetSpec } from './run.js'
import { fanout, floorAim, type FloorAim, type StreamScenario, type SweepScenario } from './scenarios.js'

const f1 = (n: number) => n.toFixed(1)
const f2 = (n: number) => n.toFixed(2)
const int = (n: number) => Math.round(n).toLocaleString('en-US')
const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(0)

function streams(b: BenchResults): StreamResult[] {
  return b.scenarios.flatMap((s) => (s.kind === 'stream' ? [s.result] : []))
}
function sweeps(b: BenchResults): SweepResult[] {
  return b.scenarios.flatMap((s) => (s.kind === 'sweep' ? [s.result] : []))
}
function idles(b: BenchResults): IdleResult[] {
  return b.scenarios.flatMap((s) => (s.kind === 'idle' ? [s.result] : []))
}
function rateCaps(b: BenchResults): RateCapResult[] {
  return b.scenarios.flatMap((s) => (s.kind === 'ratecap' ? [s.result] : []))
}

const runName = (r: RateCapRun) => (r.maxHz === 0 ? 'full rate' : `max_hz ${r.maxHz}`)

/** Capped against full rate: deliveries/s and gateway CPU as ratios; null without both runs. */
export function rateCapRatios(r: RateCapResult): { deliveries: number; cpu: number; cpuPerUpdate: number; full: RateCapRun; capped: RateCapRun } | null {
  const full = r.runs.find((x) => x.maxHz === 0)
  const capped = r.runs.find((x) => x.maxHz > 0)
  if (!full || !capped || full.deliveriesPerSec <= 0 || full.cpu.gateway <= 0 || full.gatewayUsPerUpdate <= 0) return null
  return { deliveries: capped.deliveriesPerSec / full.deliveriesPerSec, cpu: capped.cpu.gateway / full.cpu.gateway, cpuPerUpdate: capped.gatewayUsPerUpdate / full.gatewayUsPerUpdate, full, capped }
}

function rateCapLine(r: RateCapResult): string | null {
  const x = rateCapRatios(r)
  if (x === null) return null
  return `rate caps, ${x.capped.connected.toLocaleString('en-US')} sockets: max_hz ${x.capped.maxHz} against full rate: deliveries/s ${int(x.capped.deliveriesPerSec)} vs ${int(x.full.deliveriesPerSec)} ` +
    `(${f2(x.deliveries)}x), gateway CPU ${f1(x.capped.cpu.gateway)}% vs ${f1(x.full.cpu.gateway)}% of a core (${f2(x.cpu)}x), ` +
    `held p99 ${f1(x.capped.held.p99)} vs ${f1(x.full.held.p99)} ms`
}

/** "complete" or what was still missing when the drain bound ran out. */
function drainCell(r: RateCapRun): string {
  return r.drained ? `yes, ${int(r.drainMs)} ms` : `NO (bound ${int(r.drainMs)} ms)`
}

function streamVerdict(r: StreamResult): string {
  const w = r.window
  const ok = w.latencyMs.p99 < r.scenario.aim.p99Ms && w.lost === 0 && w.closedByServer === 0
  return `${ok ? 'met' : 'MISSED'} (p99 < ${r.scenario.aim.p99Ms} ms, 0 lost)`
}

function perCore(w: WindowLike): number {
  return w.cpu.gateway > 0 ? w.deliveriesPerSec / (w.cpu.gateway / 100) : 0
}
type WindowLike = StreamResult['window']

function sweepVerdict(r: SweepResult): string {
  if (r.best === null) return 'MISSED (no step passed)'
  const core = perCore(r.best)
  return `${core >= r.scenario.aim.deliveriesPerCore ? 'met' : 'MISSED'} (>= ${int(r.scenario.aim.deliveriesPerCore)}/s per gateway core at p99 <= ${r.scenario.aim.p99Ms} ms)`
}

function idleVerdict(r: IdleResult): string {
  const bytes = r.target.workers > 1 ? r.scenario.aim.bytesPerConnectionWorkers ?? r.scenario.aim.bytesPerConnection : r.scenario.aim.bytesPerConnection
  const ok = r.rssPerConnection <= bytes && r.probeConnectMs < r.scenario.aim.connectMs
  return `${ok ? 'met' : 'MISSED'} (<= ${bytes} B/conn, ${int(r.scenario.connectProbe)} in < ${r.scenario.aim.connectMs} ms)`
}

/** How lines and tables name a scenario: by its fan-out, computed from its sockets and jobs.
 * (Sweep ids name their job count: "sweep-10" is the fan-out 1,000 sweep, so an id next to a
 * figure reads as the wrong sweep.) */
export function scenarioLabel(s: StreamScenario | SweepScenario): string {
  return s.kind === 'sweep' ? `sweep at fan-out ${int(fanout(s))}` : `${s.id} (fan-out ${int(fanout(s))})`
}

/** "2.1x lower" when ours is below theirs, "1.3x higher" when above (lower is better). */
function compare(ours: number, theirs: number, better: string, worse: string): string {
  if (ours <= 0 || theirs <= 0) return 'n/a'
  return ours <= theirs ? `${f1(theirs / ours)}x ${better}` : `${f1(ours / theirs)}x ${worse}`
}

/** jobwire vs baseline, per scenario. */
function ratios(b: BenchResults): string[] {
  const lines: string[] = []
  const byScenario = new Map<string, StreamResult[]>()
  for (const r of streams(b)) byScenario.set(r.scenario.id, [...(byScenario.get(r.scenario.id) ?? []), r])
  for (const rs of byScenario.values()) {
    const base = rs.find((r) => r.target.kind === 'baseline')
    if (!base) continue
    for (const j of rs.filter((r) => r.target.kind === 'jobwire')) {
      lines.push(`${scenarioLabel(j.scenario)}: ${j.target.name} vs baseline: p99 ${f2(j.window.latencyMs.p99)} vs ${f2(base.window.latencyMs.p99)} ms (${compare(j.window.latencyMs.p99, base.window.latencyMs.p99, 'lower', 'higher')}), ` +
        `CPU per delivery ${f1(j.window.gatewayUsPerDelivery)} vs ${f1(base.window.gatewayUsPerDelivery)} us (${compare(j.window.gatewayUsPerDelivery, base.window.gatewayUsPerDelivery, 'less', 'more')})`)
    }
  }
  const sweepBy = new Map<string, SweepResult[]>()
  for (const r of sweeps(b)) sweepBy.set(r.scenario.id, [...(sweepBy.get(r.scenario.id) ?? []), r])
  for (const rs of sweepBy.values()) {
    const base = rs.find((r) => r.target.kind === 'baseline')
    for (const j of rs.filter((r) => r.target.kind === 'jobwire')) {
      const jb = j.best?.deliveriesPerSec ?? 0
      const bb = base?.best?.deliveriesPerSec ?? 0
      lines.push(`${scenarioLabel(j.scenario)}: ${j.target.name} sustains ${int(jb)} deliveries/s at p99 <= 10 ms vs baseline ${int(bb)}/s` + (bb > 0 ? ` (${f1(jb / bb)}x)` : ''))
    }
  }
  const idleBase = idles(b).find((r) => r.target.kind === 'baseline')
  for (const j of idles(b).filter((r) => r.target.kind === 'jobwire')) {
    if (idleBase) lines.push(`idle: ${j.target.name} ${int(j.rssPerConnection)} B per connection vs baseline ${int(idleBase.rssPerConnection)} B (${compare(j.rssPerConnection, idleBase.rssPerConnection, 'less', 'more')})`)
  }
  return lines
}

/** One target measured against the floor in the same scenario: at the same offered load
 * (a stream's window; for a sweep, the highest step both ran). */
export interface FloorComparison {
  readonly scenario: StreamScenario | SweepScenario
  readonly target: TargetSpec
  readonly window: WindowResult
  readonly floor: WindowResult
  /** Gateway CPU per delivery over the floor's; null when either measured no CPU. */
  readonly cpuRatio: number | null
  readonly p99Ratio: number | null
  /** The issue's aim for this fan-out; jobwire targets only. */
  readonly aim: FloorAim | null
  /** null: no aim, or nothing to compare. */
  readonly cpuMet: boolean | null
  readonly p99Met: boolean | null
}

const ratio = (ours: number, floor: number) => (ours > 0 && floor > 0 ? ours / floor : null)
const times = (x: number | null) => (x === null ? 'n/a' : `${f2(x)}x`)

export function floorComparisons(b: BenchResults): FloorComparison[] {
  const pairs: Array<{ scenario: StreamScenario | SweepScenario; target: TargetSpec; window: WindowResult; floor: WindowResult }> = []
  const streamBy = new Map<string, StreamResult[]>()
  for (const r of streams(b)) streamBy.set(r.scenario.id, [...(streamBy.get(r.scenario.id) ?? []), r])
  for (const rs of streamBy.values()) {
    const floor = rs.find((r) => r.target.kind === 'floor')
    if (!floor) continue
    for (const r of rs) if (r !== floor) pairs.push({ scenario: r.scenario, target: r.target, window: r.window, floor: floor.window })
  }
  const sweepBy = new Map<string, SweepResult[]>()
  for (const r of sweeps(b)) sweepBy.set(r.scenario.id, [...(sweepBy.get(r.scenario.id) ?? []), r])
  for (const rs of sweepBy.values()) {
    const floor = rs.find((r) => r.target.kind === 'floor')
    if (!floor) continue
    for (const r of rs) {
      if (r === floor) continue
      // The steps are the same offered rates in the same order: compare like with like.
      const i = Math.min(r.steps.length, floor.steps.length) - 1
      if (i >= 0) pairs.push({ scenario: r.scenario, target: r.target, window: r.steps[i]!, floor: floor.steps[i]! })
    }
  }
  return pairs.map((p) => {
    const cpuRatio = ratio(p.window.gatewayUsPerDelivery, p.floor.gatewayUsPerDelivery)
    const p99Ratio = ratio(p.window.latencyMs.p99, p.floor.latencyMs.p99)
    const aim = p.target.kind === 'jobwire' ? floorAim(fanout(p.scenario)) : null
    return {
      ...p, cpuRatio, p99Ratio, aim,
      cpuMet: aim && cpuRatio !== null ? cpuRatio <= aim.cpuPerDelivery : null,
      p99Met: aim?.p99 !== undefined && p99Ratio !== null ? p99Ratio <= aim.p99 : null,
    }
  })
}

function aimCell(met: boolean | null, limit: number | undefined): string {
  if (limit === undefined) return '-'
  return `${met === null ? 'n/a' : met ? 'met' : 'MISSED'} (<= ${limit}x)`
}

function floorRows(b: BenchResults): string[][] {
  return floorComparisons(b).map((c) => [
    c.scenario.kind === 'sweep' ? `${scenarioLabel(c.scenario)}, step ${int(c.window.deliveriesPerSec)}/s` : scenarioLabel(c.scenario),
    c.target.name, int(c.window.deliveriesPerSec),
    f1(c.window.gatewayUsPerDelivery), f1(c.floor.gatewayUsPerDelivery), times(c.cpuRatio), aimCell(c.cpuMet, c.aim?.cpuPerDelivery),
    f2(c.window.latencyMs.p99), f2(c.floor.latencyMs.p99), times(c.p99Ratio), aimCell(c.p99Met, c.aim?.p99),
  ])
}

const FLOOR_HEAD = ['against the floor', 'target', 'deliv/s', 'us/deliv', 'floor us', 'CPU/deliv vs floor', 'aim', 'p99 ms', 'floor p99', 'p99 vs floor', 'aim']

function pad(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  return rows.map((r) => r.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')).join('\n') + '\n'
}

/** Redis CPU per update (every redis-server process, a cluster's replicas included); '-' in
 * reports from before it was measured. */
function redisPerUpdate(w: WindowResult): string {
  return w.redisUsPerUpdate === undefined ? '-' : f1(w.redisUsPerUpdate)
}

export function printTable(b: BenchResults): string {
  let out = `\njobwire bench (${b.size}), ${b.machine.cpus} cores ${b.machine.model}, Node ${b.machine.node}, commit ${b.commit}\n\n`
  const s = streams(b)
  if (s.length > 0) {
    out += pad([
      ['scenario', 'target', 'sockets', 'deliv/s', 'p50 ms', 'p90', 'p99', 'p99.9', 'max', 'lost', 'gw CPU%', 'us/deliv', 'gen CPU%', 'redis us/upd', 'KB/conn', 'aim'],
      ...s.map((r) => [r.scenario.id, r.target.name, int(r.connected), int(r.window.deliveriesPerSec), f2(r.window.latencyMs.p50), f2(r.window.latencyMs.p90),
        f2(r.window.latencyMs.p99), f2(r.window.latencyMs.p999), f2(r.window.latencyMs.max), int(r.window.lost), f1(r.window.cpu.gateway),
        f1(r.window.gatewayUsPerDelivery), f1(r.window.cpu.generator), redisPerUpdate(r.window), f1(r.rssPerConnection / 1024), streamVerdict(r).split(' ')[0]!]),
    ]) + '\n'
  }
  const w = sweeps(b)
  if (w.length > 0) {
    out += pad([
      ['sweep', 'target', 'best deliv/s', 'p99 ms', 'lost', 'gw CPU%', 'per gw core/s', 'gen CPU%', 'aim'],
      ...w.map((r) => [`fan-out ${int(fanout(r.scenario))}`, r.target.name, int(r.best?.deliveriesPerSec ?? 0), r.best ? f2(r.best.latencyMs.p99) : '-', r.best ? int(r.best.lost) : '-',
        r.best ? f1(r.best.cpu.gateway) : '-', r.best ? int(perCore(r.best)) : '-', r.best ? f1(r.best.cpu.generator) : '-', sweepVerdict(r).split(' ')[0]!]),
    ]) + '\n'
  }
  const i = idles(b)
  if (i.length > 0) {
    out += pad([
      ['idle', 'target', 'sockets', 'connect ms', 'subscribe ms', 'RSS MB', 'B/conn', 'aim'],
      ...i.map((r) => [r.scenario.id, r.target.name, int(r.connected), `${int(r.probeConnectMs)} (${int(Math.min(r.scenario.connectProbe, r.connected))})`, int(r.subscribeMs), mb(r.rssBytes), int(r.rssPerConnection), idleVerdict(r).split(' ')[0]!]),
    ]) + '\n'
  }
  const rc = rateCaps(b)
  if (rc.length > 0) {
    out += pad([
      ['rate caps', 'run', 'sockets', 'upd/s', 'deliv/s', 'gw CPU%', 'us/deliv', 'us/upd', 'held p50', 'p99', 'max', 'not held', 'terminal missing', 'drained'],
      ...rc.flatMap((r) => r.runs.map((x) => [r.scenario.id, runName(x), int(x.connected), int(x.publishedPerSec), int(x.deliveriesPerSec), f1(x.cpu.gateway),
        f1(x.gatewayUsPerDelivery), f1(x.gatewayUsPerUpdate), f1(x.held.p50), f1(x.held.p99), f1(x.held.max), int(x.held.notHeld), int(x.terminalMissing), drainCell(x)])),
    ]) + '\n'
  }
  const fl = floorRows(b)
  if (fl.length > 0) out += pad([FLOOR_HEAD, ...fl]) + '\n'
  for (const line of ratios(b)) out += `${line}\n`
  for (const r of rc) {
    const line = rateCapLine(r)
    if (line !== null) out += `${line}\n`
  }
  if (b.polling) {
    const p = b.polling
    out += `\npush frame ${p.pushFrameBytes} B; one poll ${p.pollRequestBytes} B request + ${p.pollResponseBytes} B response, ${f1(p.gatewayUsPerPoll)} us gateway CPU, ${int(p.pollRequestsPerSec)} polls/s\n`
    for (const row of p.rows) {
      out += `job at ${row.updatesPerSec}/s: push ${int(row.push.bytesPerSec)} B/s; 5 s polling ${int(row.poll5s.bytesPerSec)} B/s (push/poll ${f2(row.push.bytesPerSec / row.poll5s.bytesPerSec)}); ` +
        `polling every ${1000 / row.updatesPerSec} ms ${int(row.pollSameRate.bytesPerSec)} B/s (push/poll ${f2(row.push.bytesPerSec / row.pollSameRate.bytesPerSec)})\n`
    }
  }
  return out
}

export function renderMarkdown(b: BenchResults, svgName: string): string {
  const m = b.machine
  let md = `# jobwire benchmark (${b.size})\n\n`
  md += `Command: \`${b.command}\`, ${b.date}, commit \`${b.commit}\`. Machine: ${m.cpus} cores (${m.model}), ${m.memoryGiB} GiB, ` +
    `Linux ${m.kernel}, Node ${m.node}, ${int(m.fdLimit)} open files per process. Everything on loopback: Redis, the gateway, the ` +
    `load generators (bench/native/loadgen.c: epoll, each process on its own 127.0.x.y source address, SCHED_BATCH) and the publisher ` +
    `(bench/native/publisher.c: EVALSHA of the producer script at the scheduled times) share the same ${m.cpus} cores. Latency is end to end: ` +
    `the publisher's CLOCK_MONOTONIC stamp, through the producer script in Redis and the gateway, to the probe socket's read. ` +
    `Measured windows: ${b.windowMs / 1000} s after a ${b.warmupMs !== undefined ? `${b.warmupMs / 1000} s ` : ''}warm-up${b.size === 'full' ? '' : ' (the full run warms up for 6 s: a shorter warm-up leaves V8 optimising during the window, which shows in the light-load p99)'}. The gateway's per-address connection and message caps are off (the load comes from a few loopback addresses).\n\n`
  md += `![latency](${svgName})\n\n`
  const s = streams(b)
  if (s.length > 0) {
    md += '## Streaming scenarios\n\n"Kernel %" is the share of the gateway\'s CPU time spent in the kernel (mostly its loopback socket writes, which on one machine include the receiving side\'s TCP work), from /proc\'s tick-based accounting (10 ms resolution: rough at low load). "Redis us CPU/update" is the CPU of every redis-server process divided by the updates published: storing and publishing one update, with replication on the cluster. The cluster scenarios run jobwire on a Redis Cluster of 3 masters and 3 replicas on the same machine (sharded pub/sub, the publisher routing each job to its master); the baseline and the floor speak to one Redis and do not run there.\n\n| scenario | target | sockets | deliveries/s | p50 ms | p90 | p99 | p99.9 | max | lost | gateway CPU % | kernel % | us CPU/delivery | generator CPU % | publisher CPU % | Redis CPU % | Redis us CPU/update | gateway RSS MB | KB/connection | aim |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
    for (const r of s) {
      const w = r.window
      md += `| ${r.scenario.title} (${int(r.scenario.jobs)} jobs, ${int(r.scenario.ratePerSec)} updates/s) | ${r.target.name} | ${int(r.connected)} | ${int(w.deliveriesPerSec)} | ${f2(w.latencyMs.p50)} | ${f2(w.latencyMs.p90)} | ${f2(w.latencyMs.p99)} | ${f2(w.latencyMs.p999)} | ${f2(w.latencyMs.max)} | ${int(w.lost)} of ${int(w.expected)} | ${f1(w.cpu.gateway)} | ${f1(w.gatewayKernelShare)} | ${f1(w.gatewayUsPerDelivery)} | ${f1(w.cpu.generator)} | ${f1(w.cpu.publisher)} | ${f1(w.cpu.redis)} | ${redisPerUpdate(w)} | ${mb(r.rssBytes)} | ${f1(r.rssPerConnection / 1024)} | ${streamVerdict(r)} |\n`
    }
    md += '\n'
    const recorded = s.filter((r) => r.recorder !== undefined)
    if (recorded.length > 0) {
      md += '### Recording PUBLISH-only jobs\n\nWith producers that only PUBLISH, jobs have no stored state; each node writes the latest payload of the jobs it watches to Redis (coalesced to at most 4 writes per job per second, one node per job by lease), so that late subscribers on any node get it. Measured in the window: the writes the nodes attempted (their `jobwire_seen_records_total`; the lease holder\'s go through, and a node refused the lease tries that job again after 2.5 s), and the Redis CPU of the recorder\'s script (`INFO commandstats`, EVALSHA; the producers run no script in these scenarios).\n\n| scenario | target | updates/s | write attempts/s (all nodes) | script calls/s | Redis us per attempt | Redis us per update |\n|---|---|---|---|---|---|---|\n'
      for (const r of recorded) {
        const c = r.recorder!
        md += `| ${r.scenario.title} | ${r.target.name} | ${int(r.window.published / (r.window.durationMs / 1000))} | ${int(c.recordsPerSec)} | ${f1(c.scriptCallsPerSec)} | ${f1(c.redisUsPerRecord)} | ${f1(c.redisUsPerUpdate)} |\n`
      }
      md += '\n'
    }
  }
  const w = sweeps(b)
  if (w.length > 0) {
    md += '## Throughput sweeps\n\nDeliveries/s are raised step by step until a step loses a frame or its p99 exceeds 10 ms. "Per gateway core" divides the best step\'s deliveries/s by the CPU the gateway processes used.\n\n| sweep | target | steps tried (deliveries/s: p99 ms) | best deliveries/s | gateway CPU % | kernel % | per gateway core | generator CPU % | aim |\n|---|---|---|---|---|---|---|---|---|\n'
    for (const r of w) {
      const tried = r.steps.map((st) => `${int(st.deliveriesPerSec)}: ${f1(st.latencyMs.p99)}${st.lost > 0 ? ` (${int(st.lost)} lost)` : ''}`).join(', ')
      md += `| ${r.scenario.title} | ${r.target.name} | ${tried} | ${int(r.best?.deliveriesPerSec ?? 0)} | ${r.best ? f1(r.best.cpu.gateway) : '-'} | ${r.best ? f1(r.best.gatewayKernelShare) : '-'} | ${r.best ? int(perCore(r.best)) : '-'} | ${r.best ? f1(r.best.cpu.generator) : '-'} | ${sweepVerdict(r)} |\n`
    }
    md += '\n'
  }
  const i = idles(b)
  if (i.length > 0) {
    md += '## Idle density\n\nBatch A (the first sockets) connects and upgrades, timed on its own, then subscribes all at once, one job per socket (50 sockets per job). Batch B (the rest) connects and subscribes. Every socket then stays idle. "Bytes per connection" is the growth of the gateway processes\' RSS over the empty gateway, divided by the sockets held, both read after V8 and glibc have had 12 s to give back what they no longer use (kernel socket buffers are not in RSS). It still moves by several hundred bytes between runs; with a forced GC, a subscribed jobwire connection retains about 1.1 KB (embedded broker) to 1.8 KB (Redis).\n\n| target | sockets held | batch A connected | batch A subscribed | batch B connected + subscribed | gateway RSS MB | bytes per connection | aim |\n|---|---|---|---|---|---|---|---|\n'
    for (const r of i) {
      md += `| ${r.target.name} | ${int(r.connected)}${r.failed ? ` (${int(r.failed)} failed)` : ''} | ${int(Math.min(r.scenario.connectProbe, r.connected))} in ${int(r.probeConnectMs)} ms | ${int(r.subscribeMs)} ms | ${int(r.connected - Math.min(r.scenario.connectProbe, r.connected))} in ${int(r.restConnectMs)} ms | ${mb(r.rssBytes)} | ${int(r.rssPerConnection)} | ${idleVerdict(r)} |\n`
    }
    md += '\nA single process holds at most ~18,000 sockets here (20,000 open files per process), so the 1-process targets stop there.\n\n'
  }
  const fl = floorRows(b)
  if (fl.length > 0) {
    md += '## Against the floor\n\nThe floor (bench/native/floor.c) is the least a Redis -> WebSocket fan-out can do: one C thread, one epoll loop, per-job SUBSCRIBE, ' +
      'each message made into one frame once and written with one write() per subscribed socket, no validation, no snapshots. It runs in every scenario the baseline ' +
      'runs in, on the same machine and load. Each target\'s gateway CPU per delivery and p99 are shown as multiples of the floor\'s, for a sweep at the highest step ' +
      'both ran. The aims (issue 12) are for jobwire: at most 1.1x the floor\'s CPU per delivery and 1.3x its p99 at fan-out 1,000, at most 1.3x its CPU per delivery ' +
      'at fan-out 10. CPU comes from /proc\'s 10 ms ticks, so ratios of short, light windows are rough.\n\n'
    md += `| ${FLOOR_HEAD.join(' | ')} |\n|${FLOOR_HEAD.map(() => '---').join('|')}|\n`
    for (const row of fl) md += `| ${row.join(' | ')} |\n`
    md += '\n'
  }
  for (const r of rateCaps(b)) md += rateCapSection(b, r)
  const lines = ratios(b)
  if (lines.length > 0) md += '## jobwire against the baseline\n\n' + lines.map((l) => `- ${l}`).join('\n') + '\n\n'
  const why = missedAims(b)
  if (why.length > 0) md += '## Why an aim was missed\n\n' + why.map((l) => `- ${l}`).join('\n') + '\n\n'
  if (b.polling) {
    const p = b.polling
    md += '## Push vs polling\n\n'
    md += `One \`job_update\` frame for \`${JSON.stringify(p.payload)}\` (with seq and ts) is ${p.pushFrameBytes} bytes on the wire. One poll of \`GET /jobs/<id>\` ` +
      `with a browser's usual headers is ${p.pollRequestBytes} bytes of request and ${p.pollResponseBytes} bytes of response (autocannon, ${int(p.pollRequestsPerSec)} polls/s, ` +
      `p99 ${f2(p.pollLatencyP99Ms)} ms) and costs the gateway ${f1(p.gatewayUsPerPoll)} us of CPU. TCP/IP headers (about 66 bytes per segment, one segment per push and two per poll) are not counted.\n\n`
    md += '| job updates | push B/s | 5 s polling B/s | push / 5 s polling | polling at the update rate B/s | push / same-rate polling | requests/s avoided vs same-rate |\n|---|---|---|---|---|---|---|\n'
    for (const row of p.rows) {
      md += `| ${row.updatesPerSec}/s | ${int(row.push.bytesPerSec)} | ${int(row.poll5s.bytesPerSec)} | ${f2(row.push.bytesPerSec / row.poll5s.bytesPerSec)} | ${int(row.pollSameRate.bytesPerSec)} | ${f2(row.push.bytesPerSec / row.pollSameRate.bytesPerSec)} | ${int(row.pollSameRate.requestsPerSec)} |\n`
    }
    md += '\n'
  }
  return md
}

function rateCapSection(b: BenchResults, r: RateCapResult): string {
  const sc = r.scenario
  const fanoutSockets = sc.sockets / sc.jobs
  let md = `## Rate caps (max_hz)\n\n${int(sc.jobs)} jobs at ${sc.perJobHz} updates/s each for ${f1(sc.publishMs / 1000)} s (each job's last update terminal), ` +
    `${int(sc.sockets)} sockets (${int(fanoutSockets)} per job), watched at full rate and then with every \`subscribe_job\` carrying \`max_hz: ${sc.maxHz}\`, ` +
    `each run against a fresh ${r.target.name} (${r.target.workers} process). jobwire only: the baseline and the floor have no rate caps. ` +
    'The updates are plain PUBLISHes carrying the publisher\'s own seq: the producer script at this rate would need more Redis CPU than the machine has.\n\n' +
    '"Held" is the time until the client holds the latest state, exact over every pair of an update and a probe socket watching its job ' +
    `(one socket in ${sc.probeEvery} by fan-out position): from the update's publication until the socket first received a frame whose seq is at least the ` +
    'update\'s; a capped socket that never sees an update waits for the newer frame that supersedes it. "Not held": pairs no frame superseded before the window closed. ' +
    `The window closes when every socket holds its job's terminal state, or ${f1(sc.drainMs / 1000)} s after the publisher is done, whichever comes first; ` +
    '"terminal missing" counts the sockets that did not hold it then, and "backlog" the full-rate deliveries still owed. "Frame" is the age of the state a ' +
    'frame carried when it arrived: a capped socket gets the newest state, young, while the states it skipped waited for it. Deliveries/s are over the time from ' +
    'the first update published to the last frame received; CPU is over the whole window (publishing and draining), in percent of one core, with the load ' +
    'generators, the publisher and Redis on the same cores.\n\n'
  md += '| run | sockets | updates/s published | deliveries/s | backlog | job_status frames | gateway CPU % | kernel % | us CPU/delivery | us CPU/update | generator / publisher / Redis CPU % | held p50 ms | p90 | p99 | p99.9 | max | frame p50 ms | frame p99 | not held | terminal missing | closed by server | drained |\n' +
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
  for (const x of r.runs) {
    const backlog = x.maxHz === 0 ? int(Math.max(0, x.offered - x.delivered)) : '-'
    md += `| ${runName(x)} | ${int(x.connected)} | ${int(x.publishedPerSec)} | ${int(x.deliveriesPerSec)} | ${backlog} | ${int(x.otherFrames)} | ${f1(x.cpu.gateway)} | ${f1(x.gatewayKernelShare)} | ` +
      `${f1(x.gatewayUsPerDelivery)} | ${f1(x.gatewayUsPerUpdate)} | ${f1(x.cpu.generator)} / ${f1(x.cpu.publisher)} / ${f1(x.cpu.redis)} | ${f1(x.held.p50)} | ${f1(x.held.p90)} | ${f1(x.held.p99)} | ${f1(x.held.p999)} | ${f1(x.held.max)} | ` +
      `${f2(x.frameMs.p50)} | ${f2(x.frameMs.p99)} | ${int(x.held.notHeld)} of ${int(x.held.samples + x.held.notHeld)} | ${int(x.terminalMissing)} | ${int(x.closedByServer)} | ${drainCell(x)} |\n`
  }
  const line = rateCapLine(r)
  if (line !== null) md += `\n${line}.\n`
  const checks = r.runs.filter((x) => x.held.mismatched > 0 || x.recordsDropped > 0 || x.seqUnparsed > 0)
  for (const x of checks) md += `\n${runName(x)}: ${int(x.held.mismatched)} frames whose stamp did not match their seq's, ${int(x.recordsDropped)} probe records dropped, ${int(x.seqUnparsed)} seqs unreadable: its figures are suspect.\n`
  md += `\nProduced by \`${b.command}\`; this scenario alone: \`node dist/bench/run.js --size ${b.size} --only ${sc.id}\`.\n\n`
  return md
}

/** For each missed jobwire aim, what the measurements themselves say about it. */
function missedAims(b: BenchResults): string[] {
  const out: string[] = []
  for (const r of streams(b)) {
    const w = r.window
    if (r.target.kind !== 'jobwire' || (w.latencyMs.p99 < r.scenario.aim.p99Ms && w.lost === 0)) continue
    const fanout = r.connected / r.scenario.jobs
    const perWorker = fanout / r.target.workers
    const lastMs = (perWorker * w.gatewayUsPerDelivery) / 1000
    out.push(`${r.scenario.title}, ${r.target.name}: p99 ${f2(w.latencyMs.p99)} ms against ${r.scenario.aim.p99Ms} ms. One update fans out to ${int(fanout)} sockets ` +
      `(${int(perWorker)} per worker), sent one after another at ${f1(w.gatewayUsPerDelivery)} us of gateway CPU each, ${f1(w.gatewayKernelShare)}% of it in the kernel's ` +
      `socket writes: the last socket of a fan-out waits about ${f1(lastMs)} ms for the gateway alone, before the load generator, which shares the same ` +
      `${b.machine.cpus} cores (${f1(w.cpu.generator)}% CPU), reads it. With several workers, the cores are shared with them too.`)
  }
  for (const r of sweeps(b)) {
    if (r.target.kind !== 'jobwire') continue
    const last = r.steps.at(-1)
    if (r.best !== null && perCore(r.best) >= r.scenario.aim.deliveriesPerCore) continue
    if (last === undefined) continue
    const fanout = r.connected / r.scenario.jobs
    out.push(`${r.scenario.title}, ${r.target.name}: ${r.best ? `best ${int(r.best.deliveriesPerSec)}/s (${int(perCore(r.best))} per gateway core)` : 'no step passed'}; the step that stopped it ran ` +
      `${int(last.deliveriesPerSec)}/s with p99 ${f1(last.latencyMs.p99)} ms, ${int(last.lost)} lost, gateway ${f1(last.cpu.gateway)}% CPU (${f1(last.gatewayKernelShare)}% kernel), ` +
      `generator ${f1(last.cpu.generator)}%, Redis ${f1(last.cpu.redis)}%. ` +
      (fanout >= 100 ? `At fan-out ${int(fanout)} the fan-out time alone (${f1((fanout / r.target.workers) * last.gatewayUsPerDelivery / 1000)} ms per update) eats the 10 ms budget.`
        : `Per delivery the gateway spends ${f1(last.gatewayUsPerDelivery)} us, most of it in the kernel.`))
  }
  for (const c of floorComparisons(b)) {
    if (c.aim === null || (c.cpuMet !== false && c.p99Met !== false)) continue
    const w = c.window
    const fl = c.floor
    const where = `${scenarioLabel(c.scenario)}, ${c.target.name}` + (c.scenario.kind === 'sweep' ? `, at the ${int(w.deliveriesPerSec)}/s step` : '')
    if (c.cpuMet === false) {
      const user = (x: WindowResult) => x.gatewayUsPerDelivery * (1 - x.gatewayKernelShare / 100)
      const kernel = (x: WindowResult) => x.gatewayUsPerDelivery * (x.gatewayKernelShare / 100)
      const signed = (n: number) => `${n >= 0 ? '+' : ''}${f1(n)}`
      out.push(`${where}: ${f1(w.gatewayUsPerDelivery)} us of gateway CPU per delivery against the floor's ${f1(fl.gatewayUsPerDelivery)} us ` +
        `(${times(c.cpuRatio)}, aim <= ${c.aim.cpuPerDelivery}x). Per delivery, user space ${f1(user(w))} us against the floor's ${f1(user(fl))} us ` +
        `(${signed(user(w) - user(fl))} us: JavaScript, V8 and uWS against the floor's whole program) and kernel ${f1(kernel(w))} us against ` +
        `${f1(kernel(fl))} us (${signed(kernel(w) - kernel(fl))} us: system calls and the loopback TCP work they carry).`)
    }
    if (c.p99Met === false) {
      const perProcess = fanout(c.scenario) / c.target.workers
      out.push(`${where}: p99 ${f2(w.latencyMs.p99)} ms against the floor's ${f2(fl.latencyMs.p99)} ms (${times(c.p99Ratio)}, aim <= ${c.aim.p99}x); ` +
        `p50 ${f2(w.latencyMs.p50)} against ${f2(fl.latencyMs.p50)} ms. One update goes to ${int(perProcess)} sockets per gateway process at ` +
        `${f1(w.gatewayUsPerDelivery)} us each, about ${f1((perProcess * w.gatewayUsPerDelivery) / 1000)} ms of gateway CPU per update, against ` +
        `${f1((fanout(c.scenario) * fl.gatewayUsPerDelivery) / 1000)} ms for the floor; the load generator used ${f1(w.cpu.generator)}% CPU ` +
        `(${f1(fl.cpu.generator)}% with the floor).`)
    }
  }
  return out
}

export function renderSvg(b: BenchResults): string {
  const groups: Array<{ label: string; sub: string; values: number[] }> = []
  for (const r of streams(b)) {
    const l = r.window.latencyMs
    groups.push({ label: r.scenario.id, sub: r.target.name, values: [l.p50, l.p90, l.p99, l.p999] })
  }
  for (const r of sweeps(b)) {
    if (!r.best) continue
    const l = r.best.latencyMs
    groups.push({ label: `fan-out ${int(fanout(r.scenario))} @${Math.round(r.best.deliveriesPerSec / 1000)}k/s`, sub: r.target.name, values: [l.p50, l.p90, l.p99, l.p999] })
  }
  const colors = ['#9ecae1', '#6baed6', '#2171b5', '#08306b']
  const names = ['p50', 'p90', 'p99', 'p99.9']
  const barW = 12
  const groupW = barW * 4 + 24
  const left = 60
  const top = 40
  const height = 260
  const width = left + Math.max(1, groups.length) * groupW + 20
  const lo = Math.log10(0.05)
  const hi = Math.log10(1000)
  const y = (ms: number) => top + height - ((Math.log10(Math.max(0.05, ms)) - lo) / (hi - lo)) * height
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${top + height + 90}" font-family="sans-serif" font-size="11">\n`
  svg += `<text x="${left}" y="18" font-size="14">End-to-end latency, ms (log scale): ${b.size} run, commit ${b.commit}</text>\n`
  for (const tick of [0.1, 1, 10, 100, 1000]) {
    svg += `<line x1="${left}" x2="${width - 10}" y1="${y(tick)}" y2="${y(tick)}" stroke="#ddd"/><text x="${left - 6}" y="${y(tick) + 4}" text-anchor="end">${tick}</text>\n`
  }
  groups.forEach((g, gi) => {
    const x0 = left + gi * groupW + 12
    g.values.forEach((v, vi) => {
      const yy = y(v)
      svg += `<rect x="${x0 + vi * barW}" y="${yy}" width="${barW - 2}" height="${top + height - yy}" fill="${colors[vi]}"><title>${g.label} ${g.sub} ${names[vi]} ${v} ms</title></rect>\n`
    })
    svg += `<text transform="translate(${x0 + 2 * barW},${top + height + 10}) rotate(40)" >${g.label}</text>\n`
    svg += `<text transform="translate(${x0 + 2 * barW - 10},${top + height + 10}) rotate(40)" fill="#666">${g.sub}</text>\n`
  })
  names.forEach((n, i) => {
    svg += `<rect x="${width - 240 + i * 56}" y="26" width="10" height="10" fill="${colors[i]}"/><text x="${width - 226 + i * 56}" y="35">${n}</text>\n`
  })
  return svg + '</svg>\n'
}

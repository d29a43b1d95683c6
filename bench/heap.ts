// Where a connection's bytes go. Starts its own redis-server and a gateway started as the
// bench starts it (bench/targets.ts), opens N subscribed sockets from the C load generator
// (as a stream scenario of bench/run.ts does), and reports:
//   - RSS growth per connection right after all sockets subscribed (the bench's own figure),
//     then after the heap has settled, then after a forced full GC;
//   - the same growth split into V8 spaces, external memory and the rest (native: uWS, malloc);
//   - with --snapshot, heap snapshots of the empty and the full gateway, subtracted and summed
//     by constructor / closure / string, per socket, plus the object graph only a
//     SocketConnection retains.
//
//   node dist/bench/heap.js [--sockets 10000] [--jobs 10] [--workers 1] [--snapshot [--mid-snapshot-ms N]] [--sample]
//     [--connect-only] [--jwt-secret S]
//     [--settle-ms 12000] [--settle-first] [--gc] [--node-arg FLAG]... [--out DIR] [-- extra serve flags]
//
// Snapshots stop the gateway for seconds and collect its garbage, so the RSS figures of a
// --snapshot run are not the bench's: take those from a run without it.

import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { SignJWT } from 'jose'
import { projectPath } from '../src/support/paths.js'
import { Fleet, gatewayRss } from './fleet.js'
import type { ProbeReport } from './heap-probe.js'
import { difference, profileSites, summarize, type Bucket, type HeapSummary } from './heap-summary.js'
import { startJobwire, startRedis, type Running } from './targets.js'
import { killTrackedOnExit } from './children.js'

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    sockets: { type: 'string', default: '10000' },
    jobs: { type: 'string', default: '10' },
    workers: { type: 'string', default: '1' },
    snapshot: { type: 'boolean', default: false },
    'connect-only': { type: 'boolean', default: false },
    'mid-snapshot-ms': { type: 'string', default: '0' },
    sample: { type: 'boolean', default: false },
    'jwt-secret': { type: 'string' },
    gc: { type: 'boolean', default: false },
    'settle-ms': { type: 'string', default: '12000' },
    // As the bench's idle scenario: the empty gateway settles too before its reading.
    'settle-first': { type: 'boolean', default: false },
    out: { type: 'string', default: '/tmp/jobwire-heap' },
    'node-arg': { type: 'string', multiple: true, default: [] },
  },
})
const sockets = Number(values.sockets)
const jobs = Number(values.jobs)
const workers = Number(values.workers)
const settleMs = Number(values['settle-ms'])
const outDir = values.out
const KB = 1024

function log(message: string): void {
  process.stderr.write(`[heap] ${message}\n`)
}

/** Asks every process of the target for a probe report (heap-probe.ts) and waits for them. */
class Probe {
  private readonly seq = new Map<number, number>()
  constructor(private readonly target: Running, private readonly dir: string) {}

  async ask(command: string): Promise<ProbeReport[]> {
    writeFileSync(join(this.dir, 'cmd'), command)
    const want: string[] = []
    for (const pid of this.target.pids()) {
      const n = (this.seq.get(pid) ?? 0) + 1
      this.seq.set(pid, n)
      want.push(join(this.dir, `${pid}-${n}.json`))
      process.kill(pid, 'SIGUSR2')
    }
    const deadline = Date.now() + 300_000
    while (!want.every((p) => existsSync(p))) {
      if (Date.now() > deadline) throw new Error(`no probe answer to '${command}'`)
      await new Promise((r) => setTimeout(r, 100))
    }
    return want.map((p) => JSON.parse(readFileSync(p, 'utf8')) as ProbeReport)
  }
}

interface Reading {
  readonly label: string
  readonly rss: number
  readonly reports: ProbeReport[]
}

function total(reports: readonly ProbeReport[], f: (r: ProbeReport) => number): number {
  return reports.reduce((s, r) => s + f(r), 0)
}

function space(r: ProbeReport, name: string): number {
  return r.spaces.find((s) => s.space_name === name)?.physical_space_size ?? 0
}

/** RSS growth per connection over `base`, split where it can be. */
function breakdown(base: Reading, now: Reading, connected: number): string[] {
  const per = (f: (r: ProbeReport) => number) => ((total(now.reports, f) - total(base.reports, f)) / connected / KB).toFixed(3)
  const rssPer = ((now.rss - base.rss) / connected / KB).toFixed(3)
  const heapPhysical = (r: ProbeReport) => r.spaces.reduce((s, x) => s + x.physical_space_size, 0)
  return [
    `| ${now.label} | ${rssPer} | ${per(heapPhysical)} | ${per((r) => space(r, 'new_space'))} | ${per((r) => space(r, 'old_space'))} | ` +
      `${per((r) => r.memory.heapUsed)} | ${per((r) => r.memory.external)} | ${per((r) => r.status.RssAnon! - heapPhysical(r))} |`,
  ]
}

function mergeSummaries(all: HeapSummary[]): HeapSummary {
  const byKind = new Map<string, Bucket>()
  const repeatedStrings = new Map<string, Bucket>()
  const owned: HeapSummary['owned'] = new Map()
  for (const s of all) {
    for (const [k, b] of s.byKind) {
      const o = byKind.get(k) ?? { count: 0, bytes: 0 }
      o.count += b.count
      o.bytes += b.bytes
      byKind.set(k, o)
    }
    for (const [k, b] of s.repeatedStrings) {
      const o = repeatedStrings.get(k) ?? { count: 0, bytes: 0 }
      o.count += b.count
      o.bytes += b.bytes
      repeatedStrings.set(k, o)
    }
    for (const [k, v] of s.owned) if (v.objects > (owned.get(k)?.objects ?? 0)) owned.set(k, v)
  }
  return { nodes: all.reduce((n, s) => n + s.nodes, 0), bytes: all.reduce((n, s) => n + s.bytes, 0), byKind, repeatedStrings, owned }
}

function snapshotSummary(reports: readonly ProbeReport[], owned: readonly string[]): HeapSummary {
  return mergeSummaries(reports.filter((r) => r.snapshot !== null).map((r) => summarize(r.snapshot!, owned, Math.max(100, Math.floor(sockets / (2 * workers))))))
}

async function main(): Promise<void> {
  killTrackedOnExit()
  rmSync(outDir, { recursive: true, force: true })
  mkdirSync(outDir, { recursive: true })
  const probeUrl = `${pathToFileURL(projectPath('dist', 'bench', 'heap-probe.js')).href}?dir=${encodeURIComponent(outDir)}`
  const redis = await startRedis()
  let target: Running | null = null
  let fleet: Fleet | null = null
  const lines: string[] = []
  const say = (line = '') => {
    lines.push(line)
    process.stdout.write(`${line}\n`)
  }
  try {
    // --jwt-secret: access control on, every socket with the same token (a user's tabs), which
    // may watch the bench's jobs.
    const secret = values['jwt-secret']
    const token = secret === undefined ? null : await new SignJWT({ jobs: ['heap-*'] }).setProtectedHeader({ alg: 'HS256' })
      .setSubject('bench').setExpirationTime('2h').sign(new TextEncoder().encode(secret))
    const serveFlags = secret === undefined ? positionals : ['--jwt-secret', secret, '--max-connections-per-user', '0', ...positionals]
    target = await startJobwire(redis.url, workers, serveFlags, false, ['--expose-gc', `--import=${probeUrl}`, ...values['node-arg']])
    const probe = new Probe(target, outDir)
    let emptySnap: ProbeReport[] | null = null
    if (values.snapshot) emptySnap = await probe.ask('snapshot')
    // As runStream: the empty gateway's RSS right after it is ready, then the fleet (as
    // runIdle with --settle-first: after it has settled).
    if (values['settle-first']) await new Promise((r) => setTimeout(r, settleMs))
    const rss0 = gatewayRss(target)
    const base: Reading = { label: 'empty', rss: rss0, reports: await probe.ask('stats') }
    if (values.sample) await probe.ask('sample-start')
    const plan = { sockets, jobs, loadgens: Math.max(2, Math.ceil(sockets / 15_000)), probeEvery: 10, subscribe: !values['connect-only'], jobPrefix: 'heap-', ...(token === null ? {} : { path: `/ws/jobs?token=${token}` }) }
    // --mid-snapshot-ms: what is alive while sockets connect and subscribe, in counts.
    const opening = Fleet.open(target, plan)
    const midMs = Number(values['mid-snapshot-ms'])
    const midSnap = midMs > 0 ? await new Promise((r) => setTimeout(r, midMs)).then(() => probe.ask('snapshot')) : null
    fleet = await opening
    if (fleet.failed > 0) log(`${fleet.failed} sockets failed: ${fleet.errors.join('; ')}`)
    const connected = fleet.connected
    const readings: Reading[] = [{ label: 'subscribed (bench figure)', rss: gatewayRss(target), reports: await probe.ask('stats') }]
    const sampled = values.sample ? await probe.ask('sample-stop') : null
    let fullSnap: ProbeReport[] | null = null
    if (values.snapshot) fullSnap = await probe.ask('snapshot')
    if (settleMs > 0) {
      await new Promise((r) => setTimeout(r, settleMs))
      readings.push({ label: `settled ${settleMs / 1000} s`, rss: gatewayRss(target), reports: await probe.ask('stats') })
    }
    if (values.gc) readings.push({ label: 'after a forced full GC', rss: 0, reports: await probe.ask('gc') })
    for (const r of readings) if (r.rss === 0) (r as { rss: number }).rss = gatewayRss(target)

    say(`## ${connected} sockets${values['connect-only'] ? ' (not subscribed)' : ''} over ${jobs} jobs, ${workers} worker(s), serve ${serveFlags.join(' ') || '(bench flags)'}`)
    say()
    say(`RSS of the empty gateway: ${(rss0 / 2 ** 20).toFixed(1)} MiB. Growth per connection in KB (V8 spaces are committed physical memory):`)
    say()
    say('| when | RSS | V8 heap | new space | old space | heap used | external | RssAnon - V8 heap |')
    say('|---|---|---|---|---|---|---|---|')
    for (const r of readings) for (const line of breakdown(base, r, connected)) say(line)

    if (sampled) {
      const sites = new Map<string, number>()
      for (const r of sampled) {
        if (r.profile === null) continue
        for (const [site, bytes] of profileSites(r.profile)) sites.set(site, (sites.get(site) ?? 0) + bytes)
      }
      const total = [...sites.values()].reduce((a, b) => a + b, 0)
      say()
      say(`Allocated while connecting and subscribing and not collected by a young-generation GC (live, or promoted and`)
      say(`collected by a full GC since): ${(total / connected).toFixed(0)} bytes per connection (sampled), by site:`)
      say()
      say('| allocated in <- by our code in | bytes per conn |')
      say('|---|---|')
      for (const [site, bytes] of [...sites].sort((x, y) => y[1] - x[1]).slice(0, 30)) say(`| ${site.replace(/\|/g, '\\|')} | ${(bytes / connected).toFixed(1)} |`)
    }
    if (emptySnap && fullSnap) {
      log('summarizing snapshots')
      const before = snapshotSummary(emptySnap, [])
      const after = snapshotSummary(fullSnap, ['SocketConnection'])
      say()
      say(`Heap snapshots (live objects only): ${((after.bytes - before.bytes) / connected).toFixed(0)} bytes per connection, ` +
        `${((after.nodes - before.nodes) / connected).toFixed(1)} objects per connection. Largest growth:`)
      say()
      say('| kind | objects per conn | bytes per conn |')
      say('|---|---|---|')
      for (const [kind, b] of difference(before, after).slice(0, 30)) {
        say(`| ${kind.replace(/\|/g, '\\|')} | ${(b.count / connected).toFixed(2)} | ${(b.bytes / connected).toFixed(1)} |`)
      }
      for (const [ctor, o] of after.owned) {
        say()
        say(`${o.objects} ${ctor} objects; each alone retains ${o.bytesEach.toFixed(0)} bytes:`)
        say()
        say('| part | objects each | bytes each |')
        say('|---|---|---|')
        for (const [kind, b] of [...o.parts].sort((x, y) => y[1].bytes - x[1].bytes).slice(0, 15)) {
          say(`| ${kind.replace(/\|/g, '\\|')} | ${(b.count / o.objects).toFixed(2)} | ${(b.bytes / o.objects).toFixed(1)} |`)
        }
      }
      if (midSnap) {
        const mid = snapshotSummary(midSnap, [])
        say()
        say(`${midMs} ms into connecting: objects alive then, over the empty gateway (absolute counts):`)
        say()
        say('| kind | objects | bytes |')
        say('|---|---|---|')
        for (const [kind, b] of difference(before, mid).slice(0, 40)) say(`| ${kind.replace(/\|/g, '\\|')} | ${b.count} | ${b.bytes} |`)
      }
      say()
      say('Strings repeated across connections (candidates for sharing):')
      say()
      say('| string | copies | bytes |')
      say('|---|---|---|')
      for (const [s, b] of [...after.repeatedStrings].sort((x, y) => y[1].bytes - x[1].bytes).slice(0, 15)) {
        say(`| ${JSON.stringify(s).replace(/\|/g, '\\|')} | ${b.count} | ${b.bytes} |`)
      }
    }
    writeFileSync(join(outDir, 'summary.md'), `${lines.join('\n')}\n`)
    log(`wrote ${join(outDir, 'summary.md')}`)
  } finally {
    await fleet?.close()
    await target?.stop()
    await redis.stop()
  }
}

await main()
process.exit(0)

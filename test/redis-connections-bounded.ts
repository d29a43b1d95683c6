// Bounded Redis connections (issue 18, item 2): the gateway talks to each Redis over a fixed
// number of connections, whatever the number of queues, jobs or users, and a refused subscribe
// costs none. The attack of the issue: 5 users x 20 sockets, each sending subscribe_job for
// bullmq:q<N>:1 round 200 queue names (and a few celery: ids) with tokens that have no right to
// them, just under --max-messages-per-sec. Redis's client count must stay at what the gateway
// needs when idle with one BullMQ and one Celery job watched legitimately (measured first), and
// another user keeps receiving every update. The victim's p99, quiet and under the attack, is
// reported (t.comment), not asserted: the suite runs two files at once on two cores, and timing
// is shown by measurement, not by asserts (the README quotes a quiet run of this file). Then the
// same 200 queues with tokens that may watch them (a bullmq:* claim): still no more
// connections, where one per queue used to be opened.
//
// The gateway runs as a process of its own (dist/src/cli.js serve), the attackers in another
// (fixtures/subscribe-flood.mjs), so that the victim's latency, measured here, is not the test
// process's event loop.

import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { Producer } from '../src/producer/producer.js'
import { projectPath } from '../src/support/paths.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET, token, type Claims } from './fixtures/tokens.js'
import { pause, until } from './fixtures/until.js'
import { connect } from './fixtures/ws-client.js'

const QUEUES = 200
/** Connections the gateway may open beyond its fixed set before this counts as growth. */
const SLACK = 3

const redis = await startRedis()
t.teardown(() => redis.stop())
const sampler = redis.client()

const port = await freePort()
const served = serveProcess([
  '--port', String(port), '--host', '127.0.0.1', '--workers', '1', '--redis', redis.url,
  '--jwt-secret', SECRET, '--bullmq-owner-field', 'userId', '--celery-owner-field', 'user_id',
  '--max-messages-per-sec', '20', '--connect-rate-per-ip', '0', '--max-connections-per-ip', '0',
  '--log-level', 'warn',
])
t.teardown(() => reap(served))
const http = `http://127.0.0.1:${port}`
const wsUrl = `ws://127.0.0.1:${port}/ws/jobs`
await until(async () => (await fetch(`${http}/readyz`).then((r) => r.status, () => 0)) === 200, 'the gateway to be ready', 20_000, 50)
  .catch((err: Error) => { throw new Error(`${err.message}:\n${served.lines.join('\n')}`) })

// ---- Redis's clients, sampled all along ----
interface Counts { clients: number; jobwire: number }
async function count(): Promise<Counts> {
  const info = await sampler.info('clients')
  const list = await sampler.client('LIST') as string
  return {
    clients: Number(/connected_clients:(\d+)/.exec(info)![1]),
    jobwire: list.split('\n').filter((l) => / name=jobwire-/.test(l)).length,
  }
}
let peak: Counts = { clients: 0, jobwire: 0 }
let sampling = false
const samplerTimer = setInterval(() => {
  if (sampling) return
  sampling = true
  count().then((c) => {
    peak = { clients: Math.max(peak.clients, c.clients), jobwire: Math.max(peak.jobwire, c.jobwire) }
  }, () => undefined).finally(() => (sampling = false))
}, 100)
t.teardown(() => clearInterval(samplerTimer))
/** The peak since the last call. */
function takePeak(): Counts {
  const p = peak
  peak = { clients: 0, jobwire: 0 }
  return p
}

// ---- The victim: another user's job, updated 20 times a second ----
const producer = new Producer({ redis: redis.url })
t.teardown(() => producer.close())
await producer.progress('victim-job', { status: 'queued' }, { owner: 'victim' })
const victim = await connect(`${wsUrl}?token=${encodeURIComponent(await token('victim'))}`)
t.teardown(() => victim.close())
await victim.subscribe('victim-job')
let latencies: number[] = []
victim.ws.on('message', (data: Buffer) => {
  const m = JSON.parse(data.toString()) as { type: string; data?: { sent?: number } }
  if (m.type === 'job_update' && typeof m.data?.sent === 'number') latencies.push(Date.now() - m.data.sent)
})
let n = 0
const victimTimer = setInterval(() => {
  producer.progress('victim-job', { status: 'processing', n: ++n, sent: Date.now() }).catch(() => undefined)
}, 50)
t.teardown(() => clearInterval(victimTimer))
const p99 = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.max(0, Math.ceil(sorted.length * 0.99) - 1)] ?? NaN
}
/** The latencies measured since the last call. */
function takeLatencies(): number[] {
  const l = latencies
  latencies = []
  return l
}

// ---- The fixed set: idle, plus one BullMQ and one Celery job watched by their owner ----
await sampler.hset('bull:legit:1', 'name', 'report', 'data', JSON.stringify({ userId: 'carol' }), 'timestamp', String(Date.now()))
await sampler.set('celery-task-meta-legit-1', JSON.stringify({ status: 'STARTED', result: null, task_id: 'legit-1', name: 'tasks.report', kwargs: { user_id: 'carol' } }))
const carol = await connect(`${wsUrl}?token=${encodeURIComponent(await token('carol'))}`)
t.teardown(() => carol.close())
let fixed: Counts = { clients: 0, jobwire: 0 }
let quietP99 = NaN

t.test('the fixed set, and the victim when all is quiet', async (t) => {
  t.match((await carol.subscribe('bullmq:legit:1')).data, { source: 'bullmq' }, 'carol watches her BullMQ job')
  t.match((await carol.subscribe('celery:legit-1')).data, { source: 'celery' }, 'and her Celery task')
  await pause(1000)
  takePeak()
  fixed = await count()
  takeLatencies()
  t.comment(`fixed set: ${fixed.clients} Redis clients (${fixed.jobwire} named jobwire-*, the rest this test's sampler and producer)`)
  await pause(5000)
  const quiet = takeLatencies()
  const quietPeak = takePeak()
  quietP99 = p99(quiet)
  t.comment(`quiet: victim p99 ${quietP99} ms over ${quiet.length} updates; Redis clients at most ${quietPeak.clients}`)
  t.ok(quiet.length >= 50, `the victim received its updates (${quiet.length})`)
})

interface FloodConfig {
  tokens: string[]
  sockets: number
  rate: number
  jobIds: string[]
  mode: 'cycle' | 'hold'
  durationMs?: number
  perSocket?: number
}
interface FloodReport { seconds: number; sent: number; statuses: number; errors: Record<string, number>; closes: Record<string, number> }

/** Runs a flood to its end; resolves with its report and a function that closes its sockets. */
async function flood(t: Test, config: FloodConfig): Promise<{ report: FloodReport; stop: () => Promise<void> }> {
  const proc = spawn('node', [projectPath('test', 'fixtures', 'subscribe-flood.mjs')], {
    env: { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0', FLOOD: JSON.stringify({ url: wsUrl, ...config }) },
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const exited = new Promise((resolve) => proc.once('exit', resolve))
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.stdin!.end()
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    }
  }
  t.teardown(stop)
  const lines = createInterface({ input: proc.stdout! })[Symbol.asyncIterator]()
  const ready = JSON.parse((await lines.next()).value as string) as { opened: number; of: number }
  t.equal(ready.opened, ready.of, `the flood opened its ${ready.of} sockets`)
  proc.stdin!.write('go\n')
  const report = JSON.parse((await lines.next()).value as string) as FloodReport
  return { report, stop }
}

const bullmqIds = Array.from({ length: QUEUES }, (_, q) => `bullmq:q${q}:1`)
const celeryIds = Array.from({ length: 20 }, (_, i) => `celery:attack-${i}`)
// Interleaved: one celery: id every tenth subscribe.
const attackIds = bullmqIds.flatMap((id, i) => (i % 10 === 9 ? [id, celeryIds[(i - 9) / 10]!] : [id]))

t.test('5 users x 20 sockets, subscribes they may not make, round 200 queues: no connection, and the victim unharmed', async (t) => {
  const tokens = await Promise.all(Array.from({ length: 5 }, (_, u) => token(`mallory-${u}`)))
  const { report, stop } = await flood(t, { tokens, sockets: 20, rate: 19, jobIds: attackIds, mode: 'cycle', durationMs: 10_000 })
  const attacked = takeLatencies()
  const attackPeak = takePeak()
  await stop()
  const attackP99 = p99(attacked)
  t.comment(`attack: ${report.sent} subscribes in ${report.seconds.toFixed(1)} s, answers ${JSON.stringify(report.errors)}, job_status ${report.statuses}, closes ${JSON.stringify(report.closes)}`)
  t.comment(`attack: Redis clients at most ${attackPeak.clients} (fixed set ${fixed.clients}); named jobwire-* at most ${attackPeak.jobwire} (fixed set ${fixed.jobwire})`)
  t.comment(`attack: victim p99 ${attackP99} ms over ${attacked.length} updates (quiet ${quietP99} ms)`)
  const stats = await sampler.info('stats')
  t.comment(`redis rejected_connections: ${/rejected_connections:(\d+)/.exec(stats)?.[1]}`)

  t.ok((report.errors.forbidden ?? 0) >= report.sent / 2, `the subscribes were refused as forbidden (${report.errors.forbidden ?? 0} of ${report.sent})`)
  t.ok(attackPeak.clients <= fixed.clients + SLACK,
    `Redis's client count stays at the fixed set: at most ${attackPeak.clients}, fixed ${fixed.clients} (+${SLACK} allowed)`)
  t.ok(attackPeak.jobwire <= fixed.jobwire + SLACK, `the gateway's named connections too: at most ${attackPeak.jobwire}, fixed ${fixed.jobwire}`)
  t.ok(attacked.length >= 100, `the victim kept receiving its updates (${attacked.length} in ~10 s)`)
  t.equal(served.proc.exitCode, null, 'the gateway is still running')
})

t.test('the same 200 queues with a bullmq:* claim: watched, on the same connections', async (t) => {
  // The refused attack's leftovers (if any) go first: this measures growth of its own.
  const settled = await until(async () => (await count()).clients <= fixed.clients + SLACK, 'the client count to settle', 15_000, 100).then(() => true, () => false)
  if (!settled) t.comment(`the client count had not come back to the fixed set 15 s after the attack: ${(await count()).clients}`)
  takePeak()
  takeLatencies()
  const claims: Claims = { jobs: ['bullmq:*'] }
  const tokens = await Promise.all(Array.from({ length: 5 }, (_, u) => token(`support-${u}`, claims)))
  // 20 sockets x 50 subscribes: every one of the 200 queues watched 5 times over.
  const { report, stop } = await flood(t, { tokens, sockets: 4, rate: 19, jobIds: bullmqIds, mode: 'hold', perSocket: 50 })
  await pause(1500) // the watches held a while
  const heldPeak = takePeak()
  const held = takeLatencies()
  const now = await count()
  await stop()
  t.comment(`granted: ${report.sent} subscribes, job_status ${report.statuses}, errors ${JSON.stringify(report.errors)}`)
  t.comment(`granted: Redis clients at most ${heldPeak.clients} (${now.clients} while held; fixed set ${fixed.clients}); jobwire-* at most ${heldPeak.jobwire}`)
  t.comment(`granted: victim p99 ${p99(held)} ms over ${held.length} updates`)
  t.equal(report.statuses, report.sent, 'every subscribe was accepted (job_status)')
  t.ok(Math.max(heldPeak.clients, now.clients) <= fixed.clients + SLACK,
    `200 watched queues need no connection of their own: at most ${Math.max(heldPeak.clients, now.clients)} clients, fixed ${fixed.clients} (+${SLACK})`)
  t.equal(served.proc.exitCode, null, 'the gateway is still running')
})

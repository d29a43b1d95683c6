// Three gateway nodes (`jobwire serve` processes on their own ports) behind no load balancer
// but the test's own spreading: sockets on all three, 200 jobs streaming to a terminal state
// (a quarter of them PUBLISH-only, as the seed's workers do), on one Redis and on a Redis
// Cluster. Every socket must end holding every watched job's terminal state.

import t, { type Test } from 'tap'
import { Producer } from '../src/producer/producer.js'
import { startCluster } from './fixtures/cluster.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess, type Served } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'
import { closeAll, connect, type Message, type TestClient } from './fixtures/ws-client.js'

const NODES = 3
const JOBS = 200
const SOCKETS = 60
/** Socket s watches the jobs j with j % GROUPS === s % GROUPS: 20 jobs each, every job by
 * SOCKETS / GROUPS = 6 sockets, which land on all three nodes. */
const GROUPS = 10
const UPDATES = 5

const jobId = (j: number) => `mn-${j}`
const plainOnly = (j: number) => j % 4 === 0
const terminal = (j: number) => (j % 7 === 0 ? 'failed' : 'completed')

async function startNodes(t: Test, brokerArgs: string[]): Promise<number[]> {
  const served: Served[] = []
  t.teardown(async () => {
    for (const s of served) s.kill('SIGTERM')
    await Promise.all(served.map(async (s) => {
      const timer = setTimeout(() => void reap(s), 5000)
      await s.exited
      clearTimeout(timer)
    }))
  })
  const ports: number[] = []
  for (let n = 0; n < NODES; n++) {
    const port = await freePort()
    ports.push(port)
    // The first node runs two workers under a primary, as production nodes do; the others one
    // process each. Its startup line is read at info, which the others need not log.
    served.push(serveProcess(['--port', String(port), '--workers', n === 0 ? '2' : '1', ...brokerArgs, '--log-level', n === 0 ? 'info' : 'warn',
      '--max-connections-per-ip', '0', '--connect-rate-per-ip', '0', '--max-messages-per-sec', '0'], { REDIS_URL: '', REDIS_CLUSTER: '' }))
  }
  await until(async () => {
    for (const port of ports) if ((await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => null))?.status !== 200) return false
    return true
  }, 'three ready nodes', 30_000, 100)
  const broker = brokerArgs.includes('--redis-cluster') ? 'cluster' : 'redis'
  await served[0]!.waitFor(new RegExp(`jobwire listening on .*broker: ${broker};.*workers: 2`), 10_000)
  t.pass(`the two-worker node's primary announces broker: ${broker}`)
  return ports
}

/** The state a client following the wire contract holds: job_status replaces it; a
 * job_update with a seq replaces it when newer (same epoch, higher seq, or another epoch);
 * one without (a plain PUBLISH) always does. */
function held(messages: readonly Message[], job: string): Record<string, unknown> | null {
  let state: Record<string, unknown> | null = null
  for (const m of messages) {
    if (m.job_id !== job) continue
    const data = m.data as Record<string, unknown> | null
    if (m.type === 'job_status') state = data
    else if (m.type === 'job_update' && data !== null) {
      const newer = typeof data.seq !== 'number' || state === null || typeof state.seq !== 'number' ||
        data.epoch !== state.epoch || data.seq > state.seq
      if (newer) state = data
    }
  }
  return state
}

async function streamJobs(t: Test, ports: number[], producer: Producer): Promise<void> {
  const sockets = new Set<TestClient>()
  t.teardown(() => closeAll(sockets))
  const watching: number[][] = []
  for (let s = 0; s < SOCKETS; s++) {
    const ws = await connect(`ws://127.0.0.1:${ports[s % NODES]}/ws/jobs`, undefined, {}, sockets)
    const jobs = Array.from({ length: JOBS }, (_, j) => j).filter((j) => j % GROUPS === s % GROUPS)
    for (const j of jobs) ws.send({ type: 'subscribe_job', job_id: jobId(j) })
    watching.push(jobs)
  }
  const clients = [...sockets]
  await until(() => clients.every((ws, s) => ws.all('job_status').length >= watching[s]!.length), 'every subscription acknowledged', 30_000, 50)

  const report = (j: number, payload: Record<string, unknown>) =>
    plainOnly(j) ? producer.publish(jobId(j), payload) : producer.progress(jobId(j), payload)
  for (let round = 1; round <= UPDATES; round++) {
    await Promise.all(Array.from({ length: JOBS }, (_, j) => report(j, { status: 'processing', progress: round * 15, step: round })))
  }
  await Promise.all(Array.from({ length: JOBS }, (_, j) => report(j, { status: terminal(j), progress: 100, step: 'end' })))

  const missing = () => {
    const out: string[] = []
    clients.forEach((ws, s) => {
      for (const j of watching[s]!) {
        const state = held(ws.messages, jobId(j))
        if (state?.status !== terminal(j) || state.step !== 'end') out.push(`socket ${s} (node ${s % NODES}) ${jobId(j)}: ${JSON.stringify(state)}`)
      }
    })
    return out
  }
  await until(() => missing().length === 0, 'every watched job\'s terminal state on every socket', 30_000, 100).catch(() => undefined)
  t.same(missing().slice(0, 10), [], `all ${SOCKETS} sockets on ${NODES} nodes hold the terminal state of each of their ${JOBS / GROUPS} jobs`)
  const updates = clients.reduce((n, ws) => n + ws.all('job_update').length, 0)
  t.ok(updates >= SOCKETS * (JOBS / GROUPS) * (UPDATES + 1) * 0.9, `updates streamed too, not only final snapshots (${updates})`)
}

t.test('three nodes on one Redis', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const ports = await startNodes(t, ['--redis', redis.url])
  const producer = new Producer({ redis: redis.url })
  t.teardown(() => producer.close())
  await streamJobs(t, ports, producer)
})

t.test('three nodes on a Redis Cluster', async (t) => {
  const cluster = await startCluster()
  t.teardown(() => cluster.stop())
  const ports = await startNodes(t, ['--redis-cluster', cluster.seeds])
  const producer = new Producer({ cluster: cluster.seeds })
  t.teardown(() => producer.close())
  await streamJobs(t, ports, producer)
})

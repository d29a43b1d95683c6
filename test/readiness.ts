// /readyz means "this node can serve a subscribe now", measured rather than assumed: a paused
// Redis (connections open, state 'ready', nothing answering) and a paused primary make the node
// unready; a broker outage is tolerated for --outage-hold-ms first, because every node sees a
// shared Redis fail at once and a balancer that took them all out would refuse every new client
// that the gateway would have held and served (docs/deploy.md, Health and readiness).

import t from 'tap'
import { readFileSync } from 'node:fs'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'

const readyz = async (base: string) => {
  const res = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(2_000) }).catch(() => null)
  return res === null ? { status: 0, body: {} as Record<string, unknown> } : { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

t.test('a paused Redis: ready through the hold, then not, then ready again once it answers', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url, 'outage-hold-ms': '2000' })
  t.teardown(() => gw.stop())
  t.equal((await readyz(gw.http)).status, 200)
  redis.pause()
  t.teardown(() => redis.resume())
  const pausedAt = Date.now()
  // Nothing answers, yet the broker's state stays 'ready' (its connections are open).
  await new Promise((resolve) => setTimeout(resolve, 1500))
  t.equal(gw.gateway.broker.state, 'ready', 'the broker does not know')
  t.equal((await readyz(gw.http)).status, 200, 'within the hold: still ready')
  await until(async () => (await readyz(gw.http)).status === 503, 'not ready', 15_000, 100)
  const after = Date.now() - pausedAt
  t.ok(after >= 2000, `not ready after the hold (${after} ms: 3 s unanswered + 2 s hold, give or take a probe)`)
  t.match((await readyz(gw.http)).body, { ready: false, reason: 'broker_not_answering' })
  redis.resume()
  await until(async () => (await readyz(gw.http)).status === 200, 'ready again', 10_000, 100)
  t.pass('ready again once Redis answers')
})

t.test('a paused primary makes its workers unready; the node stays up', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--workers', '2', '--redis', redis.url])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/, 20_000)
  const base = `http://127.0.0.1:${port}`
  // Both workers ready (each finds Redis on its own after it listens).
  await until(async () => (await readyz(base)).status === 200 && (await readyz(base)).status === 200 && (await readyz(base)).status === 200, 'the node ready', 10_000, 50)
  process.kill(served.proc.pid!, 'SIGSTOP')
  t.teardown(() => {
    try {
      process.kill(served.proc.pid!, 'SIGCONT')
    } catch {}
  })
  // Each worker notices on its own (within 3 s of its last answered ping): wait for both, as
  // the balancer sees them (connections spread over the workers).
  await until(async () => {
    for (let i = 0; i < 4; i++) if ((await readyz(base)).body.reason !== 'primary_not_answering') return false
    return true
  }, 'every worker unready: primary_not_answering', 15_000, 100)
  t.match((await readyz(base)).body, { ready: false, reason: 'primary_not_answering' })
  process.kill(served.proc.pid!, 'SIGCONT')
  await until(async () => (await readyz(base)).status === 200, 'ready again', 15_000, 100)
  t.pass('ready again once the primary answers')
  t.ok(readFileSync(`/proc/${served.proc.pid}/status`, 'utf8').includes('State:'), 'the primary lives on')
})

// PUBLISH-only jobs converge everywhere (issue 19, item 2, reader side). Two gateway processes
// share a Redis; a worker only PUBLISHes. A socket that subscribes on the process that was not
// watching the job, right after the updates, may be answered before the other process
// recorded the latest payload (data: null, or an older record). With nothing more published it
// must still end on the latest state: the gateway reads the job again a moment after answering
// (src/stream/rereads.ts) and sends a job_status (reason resync) when that is newer.

import t from 'tap'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'
import { connect, type TestClient } from './fixtures/ws-client.js'

const lastState = (c: TestClient, jobId: string) =>
  c.messages.filter((m) => (m.type === 'job_status' || m.type === 'job_update') && m.job_id === jobId).at(-1)

t.test('a socket on the other gateway, right after PUBLISH-only updates, ends on the latest state', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const ports = [await freePort(), await freePort()]
  const gateways = ports.map((port) => serveProcess(['--port', String(port), '--workers', '1', '--redis', redis.url]))
  t.teardown(() => Promise.all(gateways.map(reap)))
  await Promise.all(gateways.map((g) => g.waitFor(/jobwire listening/, 20_000)))
  const [a, b] = ports.map((port) => `ws://127.0.0.1:${port}/ws/jobs`)
  const publisher = redis.client()

  for (let round = 1; round <= 5; round++) {
    const jobId = `poc-${round}`
    // Only gateway A watches the job while it is published to.
    const watcher = await connect(a!)
    await watcher.subscribe(jobId)
    for (let step = 1; step <= 3; step++) await publisher.publish(`progress:${jobId}`, JSON.stringify({ status: 'processing', step }))
    // Right after the updates, a socket on gateway B.
    const late = await connect(b!)
    late.send({ type: 'subscribe_job', job_id: jobId })
    await late.nextOfType('job_status', jobId)
    await until(() => (lastState(late, jobId)?.data as { step?: number } | null)?.step === 3, `round ${round}: the late socket reaches step 3 with nothing more published`, 10_000)
    const resync = late.all('job_status', jobId).slice(1)
    for (const m of resync) t.equal(m.reason, 'resync', 'a later job_status says why')
    await until(async () => {
      const res = await fetch(`http://127.0.0.1:${ports[1]}/jobs/${jobId}`)
      return res.status === 200 && ((await res.json()) as { data: { step: number } }).data.step === 3
    }, 'GET /jobs on gateway B answers from what Redis holds', 10_000)
    await Promise.all([watcher.close(), late.close()])
  }
  t.pass('every round converged')
})

// Subscribing while a job streams fast: every subscriber sees its snapshot, then every later
// update, with no gap between them (the property section 2 of the contract promises).

import t from 'tap'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import type { TestClient } from './fixtures/ws-client.js'

for (const kind of ['redis', 'embedded'] as const) {
  t.test(`${kind}: clients joining mid-stream see snapshot + a gap-free tail`, async (t) => {
    const redis = kind === 'redis' ? await startRedis() : undefined
    if (redis) t.teardown(() => redis.stop())
    const gw = await startGateway(redis ? { redis: redis.url } : {})
    t.teardown(() => gw.stop())
    const total = 1500
    const clients: TestClient[] = []
    const joins: Promise<unknown>[] = []
    for (let i = 1; i <= total; i++) {
      await gw.gateway.broker.publishProgress('gap-1', Buffer.from(JSON.stringify({ i })))
      await new Promise((r) => setImmediate(r)) // let subscribes interleave with the stream
      if (i % 75 === 0) {
        joins.push(gw.connect().then((c) => {
          clients.push(c)
          return c.subscribe('gap-1')
        }))
      }
    }
    await Promise.all(joins)
    t.equal(clients.length, total / 75)
    const snapshotSeqs = clients.map((c) => (c.all('job_status', 'gap-1')[0]!.data as { seq: number }).seq)
    t.ok(snapshotSeqs.filter((s) => s < total).length >= clients.length / 2, 'most clients joined mid-stream')
    for (const c of clients) {
      const snapshot = c.all('job_status', 'gap-1')[0]!.data as { seq: number }
      if (snapshot.seq < total) await c.next((m) => m.type === 'job_update' && (m.data as { seq: number }).seq === total, 15_000)
      const tail = c.all('job_update', 'gap-1').map((m) => (m.data as { seq: number }).seq).filter((s) => s > snapshot.seq)
      const expected = Array.from({ length: total - snapshot.seq }, (_, k) => snapshot.seq + 1 + k)
      t.same(tail, expected, `snapshot seq ${snapshot.seq}, then ${expected.length} updates with no gap`)
    }
  })
}

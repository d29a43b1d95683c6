// The core stream behaviours, run against both brokers: snapshot then stream, ordering,
// fan-out, unsubscribe, msgpack, status requests, ping, and the HTTP polling endpoint.

import t from 'tap'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRedis, type TestRedis } from './fixtures/redis.js'

for (const kind of ['embedded', 'redis'] as const) {
  t.test(`${kind} broker`, async (t) => {
    let redis: TestRedis | undefined
    if (kind === 'redis') {
      redis = await startRedis()
      t.teardown(() => redis!.stop())
    }
    const gw: TestGateway = await startGateway(redis ? { redis: redis.url } : {})
    t.teardown(() => gw.stop())
    const broker = gw.gateway.broker
    const progress = (jobId: string, payload: object, owner?: string) =>
      broker.publishProgress(jobId, Buffer.from(JSON.stringify(payload)), owner ? { owner } : {})

    t.test('subscribe answers with the stored snapshot, then streams updates', async (t) => {
      await progress('snap-1', { status: 'processing', progress: 10 })
      const c = await gw.connect()
      const status = await c.subscribe('snap-1')
      t.match(status, { type: 'job_status', job_id: 'snap-1', data: { status: 'processing', progress: 10, seq: 1 } })
      t.type((status.data as { ts: unknown }).ts, 'number')
      await progress('snap-1', { status: 'processing', progress: 20 })
      t.match(await c.nextOfType('job_update', 'snap-1'), { data: { progress: 20, seq: 2 } })
      t.equal(c.messages[0]!.type, 'job_status', 'job_status is the first frame')
    })

    t.test('a job nobody produced yet has a null snapshot', async (t) => {
      const c = await gw.connect()
      t.same(await c.subscribe('never-seen'), { type: 'job_status', job_id: 'never-seen', data: null, reason: 'subscribed' })
    })

    t.test('1,000 updates arrive in order with no gaps', async (t) => {
      const c = await gw.connect()
      await c.subscribe('order-1')
      const sends: Promise<number>[] = []
      for (let i = 1; i <= 1000; i++) sends.push(progress('order-1', { progress: i / 10 }))
      await Promise.all(sends)
      const last = await c.next((m) => m.type === 'job_update' && (m.data as { seq: number }).seq === 1000, 20_000)
      t.ok(last)
      const seqs = c.all('job_update', 'order-1').map((m) => (m.data as { seq: number }).seq)
      t.equal(seqs.length, 1000)
      t.ok(seqs.every((s, i) => s === i + 1), 'seq 1..1000 in order')
    })

    t.test('two sockets on one job both receive every update', async (t) => {
      const a = await gw.connect()
      const b = await gw.connect()
      await a.subscribe('shared-1')
      await b.subscribe('shared-1')
      await progress('shared-1', { progress: 50 })
      t.match(await a.nextOfType('job_update', 'shared-1'), { data: { progress: 50 } })
      t.match(await b.nextOfType('job_update', 'shared-1'), { data: { progress: 50 } })
    })

    t.test('unsubscribe stops delivery to that socket only', async (t) => {
      const a = await gw.connect()
      const b = await gw.connect()
      await a.subscribe('unsub-1')
      await b.subscribe('unsub-1')
      a.send({ type: 'unsubscribe_job', job_id: 'unsub-1' })
      t.same(await a.nextOfType('unsubscribed'), { type: 'unsubscribed', job_id: 'unsub-1' })
      await progress('unsub-1', { progress: 1 })
      await b.nextOfType('job_update', 'unsub-1')
      // b got it, so the publish has been fanned out; a's frame, had it been sent then, comes
      // before the answer to a ping a sends now.
      await progress('unsub-1', { progress: 2 })
      await b.next((m) => m.type === 'job_update' && (m.data as { progress: number }).progress === 2)
      a.send({ type: 'ping', id: 'after-publish' })
      await a.next((m) => m.type === 'pong' && m.id === 'after-publish')
      t.equal(a.all('job_update').length, 0, 'no update after unsubscribed')
    })

    t.test('plain PUBLISH streams, and its snapshot is the last payload seen', async (t) => {
      const c = await gw.connect()
      await c.subscribe('plain-1')
      await broker.publish('progress:plain-1', '{"progress":5}')
      t.same(await c.nextOfType('job_update', 'plain-1'), { type: 'job_update', job_id: 'plain-1', data: { progress: 5 } })
      const d = await gw.connect()
      t.same(await d.subscribe('plain-1'), { type: 'job_status', job_id: 'plain-1', data: { progress: 5 }, reason: 'subscribed' })
      const res = await fetch(`${gw.http}/jobs/plain-1`)
      t.equal(res.status, 200)
      t.same(await res.json(), { job_id: 'plain-1', data: { progress: 5 } })
    })

    t.test('msgpack subprotocol: binary frames with the same objects', async (t) => {
      const c = await gw.connect(['jobwire.msgpack', 'jobwire.json'])
      t.equal(c.ws.protocol, 'jobwire.msgpack')
      await progress('mp-1', { status: 'queued' })
      t.match(await c.subscribe('mp-1'), { type: 'job_status', job_id: 'mp-1', data: { status: 'queued', seq: 1 } })
      await progress('mp-1', { status: 'processing', progress: 30, message: 'héllo' })
      t.match(await c.nextOfType('job_update', 'mp-1'), { data: { status: 'processing', progress: 30, message: 'héllo', seq: 2 } })
      const { pack } = await import('msgpackr')
      await broker.publish('progress:mp-1', pack({ progress: 31, nested: { a: [1, 2] } }))
      t.same(await c.nextOfType('job_update', 'mp-1'), { type: 'job_update', job_id: 'mp-1', data: { progress: 31, nested: { a: [1, 2] } } })
    })

    t.test('JSON and msgpack clients on one job each get their encoding', async (t) => {
      const j = await gw.connect()
      const m = await gw.connect('jobwire.msgpack')
      await j.subscribe('mixed-1')
      await m.subscribe('mixed-1')
      const { pack } = await import('msgpackr')
      await broker.publish('progress:mixed-1', pack({ progress: 7 }))
      await broker.publish('progress:mixed-1', '{"progress":8}')
      t.same((await j.nextOfType('job_update')).data, { progress: 7 })
      t.same((await j.nextOfType('job_update')).data, { progress: 8 })
      t.same((await m.nextOfType('job_update')).data, { progress: 7 })
      t.same((await m.nextOfType('job_update')).data, { progress: 8 })
    })

    t.test('job_status request answers without subscribing', async (t) => {
      await progress('status-1', { status: 'completed', result: { url: '/x' } })
      const c = await gw.connect()
      c.send({ type: 'job_status', job_id: 'status-1' })
      t.match(await c.nextOfType('job_status', 'status-1'), { data: { status: 'completed', result: { url: '/x' } } })
      // A subscriber on the same job: once it has the update, the publish has been fanned out,
      // and c's frame, had it been sent then, comes before the answer to a ping c sends now.
      const watcher = await gw.connect()
      await watcher.subscribe('status-1')
      await progress('status-1', { status: 'completed', note: 'again' })
      t.match(await watcher.nextOfType('job_update', 'status-1'), { data: { note: 'again' } })
      c.send({ type: 'ping', id: 'after-publish' })
      await c.next((m) => m.type === 'pong' && m.id === 'after-publish')
      t.equal(c.all('job_update').length, 0, 'no stream without subscribe')
    })

    t.test('ping is answered with pong, echoing id', async (t) => {
      const c = await gw.connect()
      c.send({ type: 'ping', id: 42 })
      t.same(await c.nextOfType('pong'), { type: 'pong', id: 42 })
      c.send({ type: 'ping' })
      t.same(await c.nextOfType('pong'), { type: 'pong' })
    })

    t.test('GET /jobs/<id>: 200 with state, 404 when unknown, 400 for a bad id', async (t) => {
      await progress('http-1', { progress: 99 })
      const ok = await fetch(`${gw.http}/jobs/http-1`)
      t.equal(ok.status, 200)
      t.match(await ok.json(), { job_id: 'http-1', data: { progress: 99, seq: 1 } })
      t.equal((await fetch(`${gw.http}/jobs/nope-1`)).status, 404)
      t.equal((await fetch(`${gw.http}/jobs/bad%20id`)).status, 400)
    })

    t.test('healthz and readyz', async (t) => {
      t.equal((await fetch(`${gw.http}/healthz`)).status, 200)
      const ready = await fetch(`${gw.http}/readyz`)
      t.equal(ready.status, 200)
      t.same(await ready.json(), { ready: true, broker: 'ready' })
    })
  })
}

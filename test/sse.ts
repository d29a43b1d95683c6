// GET /jobs/<id>/events: the SSE fallback carries the same messages as the WebSocket, under the
// same access rule and caps, and resynchronises after a broker outage.

import t from 'tap'
import { Producer } from '../src/producer/producer.js'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET, token } from './fixtures/tokens.js'

interface SseEvent {
  event: string
  id: string | undefined
  data: Record<string, unknown>
}

/** Opens an SSE stream and collects its events. */
async function openStream(url: string, headers: Record<string, string> = {}) {
  const controller = new AbortController()
  const res = await fetch(url, { headers, signal: controller.signal })
  const events: SseEvent[] = []
  let ended = false
  if (res.status === 200) {
    void (async () => {
      const decoder = new TextDecoder()
      let buffer = ''
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          buffer += decoder.decode(chunk, { stream: true })
          let cut
          while ((cut = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, cut)
            buffer = buffer.slice(cut + 2)
            const fields = Object.fromEntries(block.split('\n').filter((l) => !l.startsWith(':') && l.includes(':')).map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]))
            if (fields.data !== undefined) events.push({ event: fields.event ?? 'message', id: fields.id, data: JSON.parse(fields.data) })
          }
        }
      } catch {
        // aborted
      }
      ended = true
    })()
  }
  return {
    res,
    events,
    get ended() {
      return ended
    },
    async next(match: (e: SseEvent) => boolean, ms = 5000): Promise<SseEvent> {
      const deadline = Date.now() + ms
      for (;;) {
        const found = events.find(match)
        if (found) {
          events.splice(events.indexOf(found), 1)
          return found
        }
        if (Date.now() > deadline) throw new Error(`no matching SSE event; have ${JSON.stringify(events)}`)
        await new Promise((r) => setTimeout(r, 10))
      }
    },
    close: () => controller.abort(),
  }
}

t.test('SSE stream: snapshot, then updates with id = seq', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const produce = (payload: string) => gw.gateway.broker.publishProgress('sse-1', Buffer.from(payload))
  await produce('{"status":"processing","progress":10}')
  const s = await openStream(`${gw.http}/jobs/sse-1/events`)
  t.teardown(() => s.close())
  t.equal(s.res.status, 200)
  t.match(s.res.headers.get('content-type'), /text\/event-stream/)
  const first = await s.next(() => true)
  t.match(first, { event: 'job_status', id: '1', data: { type: 'job_status', job_id: 'sse-1', data: { progress: 10, seq: 1 } } })
  await produce('{\n  "progress": 20,\n  "message": "pretty-printed"\n}')
  t.match(await s.next((e) => e.event === 'job_update'), { id: '2', data: { type: 'job_update', job_id: 'sse-1', data: { progress: 20, message: 'pretty-printed', seq: 2 } } }, 'line breaks in a payload do not break the stream')
  await gw.gateway.broker.publish('progress:sse-1', '{"progress":21}')
  t.match(await s.next((e) => e.event === 'job_update'), { id: undefined, data: { data: { progress: 21 } } }, 'plain publishes have no id')
  t.equal(gw.gateway.metricsSnapshot().gauges.sse_streams, 1)
  s.close()
  await new Promise((r) => setTimeout(r, 100))
  t.equal(gw.gateway.metricsSnapshot().gauges.sse_streams, 0, 'a closed stream is released')
  t.equal((await fetch(`${gw.http}/jobs/bad%20id/events`)).status, 400)
})

t.test('SSE follows the access rule and the caps', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET, 'max-connections-per-user': '1' })
  t.teardown(() => gw.stop())
  await gw.gateway.broker.publishProgress('owned-1', Buffer.from('{"progress":1}'), { owner: 'alice' })
  t.equal((await openStream(`${gw.http}/jobs/owned-1/events`)).res.status, 401, 'no token')
  const bob = await openStream(`${gw.http}/jobs/owned-1/events?token=${await token('bob')}`)
  t.equal(bob.res.status, 403, 'not the owner')
  t.equal((await openStream(`${gw.http}/jobs/missing-1/events?token=${await token('bob')}`)).res.status, 403, 'missing looks the same')
  const alice = await openStream(`${gw.http}/jobs/owned-1/events?token=${await token('alice')}`)
  t.teardown(() => alice.close())
  t.equal(alice.res.status, 200)
  t.match((await alice.next(() => true)).data, { data: { progress: 1 } })
  const second = await openStream(`${gw.http}/jobs/owned-1/events`, { authorization: `Bearer ${await token('alice')}` })
  t.equal(second.res.status, 429, 'the per-user cap counts SSE streams')
  t.ok(Number(second.res.headers.get('retry-after')) >= 1)
})

t.test('an expiring token ends the stream with a token_expired event', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET })
  t.teardown(() => gw.stop())
  await gw.gateway.broker.publishProgress('exp-1', Buffer.from('{"progress":1}'), { owner: 'alice' })
  const s = await openStream(`${gw.http}/jobs/exp-1/events?token=${await token('alice', {}, 2)}`)
  t.match(await s.next((e) => e.event === 'jobwire_error', 6000), { data: { code: 'token_expired' } })
  for (let i = 0; i < 50 && !s.ended; i++) await new Promise((r) => setTimeout(r, 20))
  t.ok(s.ended, 'the stream ended')
})

t.test('after a Redis outage, SSE streams get a fresh job_status', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())
  const s = await openStream(`${gw.http}/jobs/sse-r/events`)
  t.teardown(() => s.close())
  await s.next((e) => e.event === 'job_status')
  await redis.kill()
  await new Promise((r) => setTimeout(r, 300))
  await redis.restart()
  const producer = new Producer({ redis: redis.url })
  t.teardown(() => producer.close())
  await producer.progress('sse-r', { progress: 55 })
  const resync = await s.next((e) => (e.event === 'job_status' || e.event === 'job_update') && (e.data.data as { progress?: number } | null)?.progress === 55, 15_000)
  t.ok(resync, 'converged on the state written during the outage')
  // The update can arrive as a job_update before the broker is back to ready (the subscriber
  // connection may return first), so the resync may not have started yet: wait for it.
  const resyncs = () => gw.gateway.metricsSnapshot().counters.resyncs_total ?? 0
  for (const deadline = Date.now() + 15_000; resyncs() < 1 && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 20))
  t.ok(resyncs() >= 1, 'a resync ran')
  const fresh = resync.event === 'job_status' ? resync : await s.next((e) => e.event === 'job_status', 15_000)
  t.equal(fresh.event, 'job_status', 'a fresh job_status after the outage')
})

t.test('shutdown ends SSE streams', async (t) => {
  const gw = await startGateway()
  const s = await openStream(`${gw.http}/jobs/sd-1/events`)
  await s.next(() => true)
  await gw.stop()
  for (let i = 0; i < 50 && !s.ended; i++) await new Promise((r) => setTimeout(r, 20))
  t.ok(s.ended)
})

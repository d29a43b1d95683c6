// Subscribes that arrive while the broker is down or hung wait it out: they are held and
// complete when it returns, or (past --outage-hold-ms) get `unavailable` with a retry hint.

import t from 'tap'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { pause, until } from './fixtures/until.js'

/** The first SSE event named `event` on a stream, as parsed JSON. */
async function firstSseEvent(url: string, event: string, timeoutMs: number): Promise<Record<string, unknown>> {
  const controller = new AbortController()
  const timer = setTimeout(() => controller.abort(), timeoutMs)
  try {
    const res = await fetch(url, { signal: controller.signal })
    if (res.status !== 200) throw new Error(`SSE answered ${res.status}`)
    const decoder = new TextDecoder()
    let text = ''
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      text += decoder.decode(chunk, { stream: true })
      const match = new RegExp(`event: ${event}\\n(?:id: \\d+\\n)?data: (.*)\\n\\n`).exec(text)
      if (match) return JSON.parse(match[1]!)
    }
    throw new Error('stream ended')
  } finally {
    clearTimeout(timer)
    controller.abort()
  }
}

t.test('a subscribe made while Redis is hung completes when it returns (WebSocket and SSE)', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  // One snapshot read may wait 500 ms; the outage lasts much longer than that.
  const gw = await startGateway({ redis: redis.url, 'broker-timeout-ms': '500' })
  t.teardown(() => gw.stop())
  await gw.gateway.broker.publishProgress('held-1', Buffer.from('{"status":"processing","progress":10}'))
  const c = await gw.connect()
  redis.pause()
  c.send({ type: 'subscribe_job', job_id: 'held-1' })
  const sse = firstSseEvent(`${gw.http}/jobs/held-1/events`, 'job_status', 20_000)
  const status = c.nextOfType('job_status', 'held-1', 20_000)
  // The hang lasts 2.5 s, five times the broker timeout.
  await pause(2500)
  // The marker: a read sent now gives up after the 500 ms broker timeout. Its error comes
  // after any error the held subscribe got in the meantime, and shows that Redis is hung.
  c.send({ type: 'job_status', job_id: 'probe-1' })
  t.match(await c.nextOfType('error', 'probe-1', 20_000), { code: 'unavailable' }, 'a plain read gives up meanwhile')
  t.same(c.all('error').filter((e) => e.job_id !== 'probe-1'), [], 'no error while held')
  redis.resume()
  t.match((await status).data, { seq: 1, progress: 10 }, 'the WebSocket got the state once Redis answered')
  t.match(((await sse).data as Record<string, unknown>), { seq: 1, progress: 10 }, 'so did the SSE stream')
  await gw.gateway.broker.publishProgress('held-1', Buffer.from('{"status":"completed","progress":100}'))
  t.match((await c.nextOfType('job_update', 'held-1')).data, { seq: 2, status: 'completed' }, 'and is subscribed')
})

t.test('a subscribe made while Redis is down completes when it comes back', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url, 'broker-timeout-ms': '500' })
  t.teardown(() => gw.stop())
  const c = await gw.connect()
  await redis.kill()
  await until(() => gw.gateway.broker.state !== 'ready', 'the gateway to see Redis go')
  c.send({ type: 'subscribe_job', job_id: 'down-1' })
  const status = c.nextOfType('job_status', 'down-1', 20_000)
  await until(() => gw.gateway.metricsSnapshot().gauges.jobs_watched === 1, 'the subscribe to be held')
  // The outage goes on for 1.5 s after the subscribe arrived, three times the broker timeout.
  await pause(1500)
  await redis.restart()
  t.same((await status).data, null, 'answered (an empty Redis has no state for it)')
  await gw.gateway.broker.publishProgress('down-1', Buffer.from('{"status":"completed"}'))
  t.match((await c.nextOfType('job_update', 'down-1')).data, { status: 'completed' }, 'and subscribed')
})

t.test('past --outage-hold-ms the answer is unavailable, with a retry hint; a retry then works', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url, 'broker-timeout-ms': '300', 'outage-hold-ms': '800' })
  t.teardown(() => gw.stop())
  const c = await gw.connect()
  redis.pause()
  c.send({ type: 'subscribe_job', job_id: 'held-2' })
  const error = await c.nextOfType('error', 'held-2', 10_000)
  t.match(error, { code: 'unavailable', retry_after_ms: Number })
  t.equal(gw.gateway.metricsSnapshot().labelled.requests_refused_total!['transport="websocket",reason="unavailable"'], 1, 'counted')
  redis.resume()
  t.match(await c.subscribe('held-2'), { type: 'job_status', data: null }, 'the retry succeeds')
})

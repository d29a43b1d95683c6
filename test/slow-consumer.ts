// Slow readers are caught up, not cut: a socket that stops reading while its job streams
// megabytes is parked (taken off the job's stream), and once it reads again it gets the job's
// latest state, terminal included, without ever being closed. A normal reader of the same job
// misses nothing. Only a socket past the hard cap is closed, and that is counted.

import t from 'tap'
import { startGateway } from './fixtures/gateway.js'
import type { TestClient } from './fixtures/ws-client.js'

function pauseReading(client: TestClient): { resume(): void } {
  const socket = (client.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket
  socket.pause() // the kernel buffers fill, then uWS's backpressure grows
  return { resume: () => socket.resume() }
}

const counter = (gw: Awaited<ReturnType<typeof startGateway>>, name: string) => gw.gateway.metricsSnapshot().counters[name]!

t.test('a reader that stalls through 10+ MB is parked, then caught up to the terminal state', async (t) => {
  const gw = await startGateway({ 'catch-up-bytes': '65536' })
  t.teardown(() => gw.stop())
  const normal = await gw.connect()
  const slow = await gw.connect()
  await normal.subscribe('big-1')
  await slow.subscribe('big-1')
  const stalled = pauseReading(slow)
  const blob = 'x'.repeat(64 * 1024)
  let last = 0
  for (let i = 1; i <= 200; i++) {
    last = await gw.gateway.broker.publishProgress('big-1', Buffer.from(JSON.stringify({ status: 'processing', progress: i / 2, blob })))
    if (i % 10 === 0) await new Promise((r) => setTimeout(r, 5))
  }
  t.ok(last * blob.length > 10 * 1024 * 1024, `streamed ${(last * blob.length / 1048576).toFixed(1)} MB`)
  const deadline = Date.now() + 10_000
  while (counter(gw, 'slow_consumers_parked_total') === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  t.ok(counter(gw, 'slow_consumers_parked_total') >= 1, 'the stalled socket was parked')
  last = await gw.gateway.broker.publishProgress('big-1', Buffer.from(JSON.stringify({ status: 'completed', progress: 100 })))

  await normal.next((m) => m.type === 'job_update' && (m.data as { seq: number }).seq === last, 15_000)
  const seqs = normal.all('job_update').map((m) => (m.data as { seq: number }).seq)
  t.same(seqs, Array.from({ length: last }, (_, i) => i + 1), 'the normal reader got every update, in order')

  stalled.resume()
  const isTerminal = (m: { type: string; data?: unknown }) =>
    (m.type === 'job_status' || m.type === 'job_update') && (m.data as { status?: string } | null)?.status === 'completed'
  const final = await slow.next(isTerminal, 20_000)
  t.equal((final.data as { seq: number }).seq, last, 'the slow reader ends on the terminal state')
  t.equal(slow.closeCode, undefined, 'and was never closed')
  t.ok(counter(gw, 'slow_consumers_caught_up_total') >= 1, 'caught up, counted')
  t.ok(counter(gw, 'catch_up_statuses_total') >= 1)
  t.equal(counter(gw, 'slow_consumer_closes_total'), 0, 'nobody was cut')
  // Still subscribed after catching up: a new update reaches it.
  await gw.gateway.broker.publishProgress('big-1', Buffer.from('{"status":"completed","note":"after"}'))
  t.match((await slow.next((m) => m.type === 'job_update' && (m.data as { note?: string }).note === 'after', 10_000)).data, { seq: last + 1 })
})

t.test('a socket past the hard cap is closed and counted; it resynchronises on reconnect', async (t) => {
  // Parking off: nothing saves it from the hard cap.
  const gw = await startGateway({ 'catch-up-bytes': '0', 'max-backpressure-bytes': '65536' })
  t.teardown(() => gw.stop())
  const slow = await gw.connect()
  await slow.subscribe('big-2')
  pauseReading(slow)
  const blob = 'x'.repeat(64 * 1024)
  let last = 0
  for (let i = 1; i <= 300 && counter(gw, 'slow_consumer_closes_total') === 0; i++) {
    last = await gw.gateway.broker.publishProgress('big-2', Buffer.from(JSON.stringify({ progress: i / 3, blob })))
    if (i % 10 === 0) await new Promise((r) => setTimeout(r, 5))
  }
  t.equal(counter(gw, 'slow_consumer_closes_total'), 1, 'cut and counted')
  const again = await gw.connect()
  t.equal(((await again.subscribe('big-2')).data as { seq: number }).seq, last, 'on reconnect, the latest state')
  slow.ws.terminate() // its reader is paused: a closing handshake would wait ws's 30 s timeout
})

t.test('an SSE stream that stops reading is caught up too, and counted', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const res = await fetch(`${gw.http}/jobs/big-3/events`)
  t.equal(res.status, 200)
  // Nothing reads the body for now: undici stops reading the socket once its buffer is full.
  const blob = 'x'.repeat(64 * 1024)
  for (let i = 1; i <= 200 && counter(gw, 'slow_consumers_parked_total') === 0; i++) {
    await gw.gateway.broker.publishProgress('big-3', Buffer.from(JSON.stringify({ status: 'processing', progress: i / 2, blob })))
    if (i % 10 === 0) await new Promise((r) => setTimeout(r, 5))
  }
  t.ok(counter(gw, 'slow_consumers_parked_total') >= 1, 'the stream fell behind and was parked')
  const last = await gw.gateway.broker.publishProgress('big-3', Buffer.from('{"status":"completed","progress":100}'))
  const decoder = new TextDecoder()
  let text = ''
  const terminal = new RegExp(`event: job_(status|update)\\nid: ${last}\\ndata: [^\\n]*"completed"`)
  const deadline = Date.now() + 20_000
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    text += decoder.decode(chunk, { stream: true })
    if (terminal.test(text) || Date.now() > deadline) break
    if (text.length > 1_000_000) text = text.slice(-200_000)
  }
  t.match(text, terminal, 'the stream ends on the terminal state')
  t.ok(counter(gw, 'slow_consumers_caught_up_total') >= 1, 'caught up, counted')
})

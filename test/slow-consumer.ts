// A socket that stops reading is cut once it is more than --max-backpressure-bytes behind,
// instead of having updates silently skipped; it is counted; the other sockets are not
// slowed; and when it reconnects its job_status carries the latest state.

import t from 'tap'
import { startGateway } from './fixtures/gateway.js'

t.test('slow consumers are cut, counted, and resynchronise on reconnect', async (t) => {
  const gw = await startGateway({ 'max-backpressure-bytes': '65536' })
  t.teardown(() => gw.stop())
  const fast = await gw.connect()
  const slow = await gw.connect()
  await fast.subscribe('big-1')
  await slow.subscribe('big-1')
  const socket = (slow.ws as unknown as { _socket: { pause(): void } })._socket
  socket.pause() // stops reading: the kernel buffers fill, then uWS's backpressure grows
  const blob = 'x'.repeat(64 * 1024)
  let last = 0
  for (let i = 1; i <= 300 && gw.gateway.metricsSnapshot().counters.slow_consumer_closes_total === 0; i++) {
    last = await gw.gateway.broker.publishProgress('big-1', Buffer.from(JSON.stringify({ progress: i / 3, blob })))
    if (i % 10 === 0) await new Promise((r) => setTimeout(r, 5))
  }
  t.equal(gw.gateway.metricsSnapshot().counters.slow_consumer_closes_total, 1, 'the slow socket was cut and counted')
  await fast.next((m) => m.type === 'job_update' && (m.data as { seq: number }).seq === last, 15_000)
  const seqs = fast.all('job_update').map((m) => (m.data as { seq: number }).seq)
  t.same(seqs, Array.from({ length: last }, (_, i) => i + 1), 'the fast socket got every update, in order')
  const again = await gw.connect()
  const status = await again.subscribe('big-1')
  t.equal((status.data as { seq: number }).seq, last, 'on reconnect, the latest state')
})

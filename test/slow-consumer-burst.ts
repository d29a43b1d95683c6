// Slow readers are caught up every time, whatever the stream's rate. A socket that stops
// reading while its job streams megabytes in bursts (several MB between two turns of the event
// loop, so no timed sample can run in between) must be parked before its queue reaches the
// hard cap (--max-backpressure-bytes, where uWS cuts it with 1006), then caught up to the final
// state. Ten runs, each must be caught up: a race the timed pass sometimes wins is not enough.

import t from 'tap'
import { startGateway } from './fixtures/gateway.js'
import type { TestClient } from './fixtures/ws-client.js'

function pauseReading(client: TestClient): { resume(): void } {
  const socket = (client.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket
  socket.pause()
  return { resume: () => socket.resume() }
}

const RUNS = 10
const FRAME = 128 * 1024
/** Frames published back to back before the event loop gets a turn (8 MiB, twice the hard cap). */
const BURST = 64
const BURSTS = 2

t.test(`a reader that stalls through bursts of ~${(BURST * FRAME / 1048576).toFixed(0)} MB is caught up, ${RUNS} runs out of ${RUNS}`, async (t) => {
  const gw = await startGateway({ 'catch-up-bytes': '262144', 'max-backpressure-bytes': '4194304' })
  t.teardown(() => gw.stop())
  const counter = (name: string) => gw.gateway.metricsSnapshot().counters[name]!
  const blob = 'x'.repeat(FRAME)
  const started = Date.now()
  let caughtUp = 0
  for (let run = 1; run <= RUNS; run++) {
    const jobId = `burst-${run}`
    const normal = await gw.connect()
    const slow = await gw.connect()
    await normal.subscribe(jobId)
    await slow.subscribe(jobId)
    const stalled = pauseReading(slow)
    const parkedBefore = counter('slow_consumers_parked_total')
    let last = 0
    for (let b = 0; b < BURSTS; b++) {
      // Published together: the embedded broker delivers each from its own setImmediate, all in
      // one check phase, so no timer (and no timed catch-up pass) runs within a burst.
      const seqs = Array.from({ length: BURST }, (_, i) =>
        gw.gateway.broker.publishProgress(jobId, Buffer.from(JSON.stringify({ status: 'processing', progress: (b * BURST + i) / 2, blob }))))
      last = Math.max(...await Promise.all(seqs))
      await new Promise((r) => setImmediate(r))
    }
    last = await gw.gateway.broker.publishProgress(jobId, Buffer.from(JSON.stringify({ status: 'completed', progress: 100 })))
    const isFinal = (m: { type: string; data?: unknown }) =>
      (m.type === 'job_status' || m.type === 'job_update') && (m.data as { status?: string } | null)?.status === 'completed'
    const finalSeq = async (client: TestClient) => {
      if (client.closeCode !== undefined) return undefined
      const closed = new Promise<never>((_, reject) => client.ws.once('close', () => reject(new Error('closed'))))
      try {
        return ((await Promise.race([client.next(isFinal, 10_000), closed])).data as { seq: number }).seq
      } catch {
        return undefined // closed (1006) or timed out: judged below
      }
    }
    // The "normal" reader shares this process's event loop with the gateway, so it cannot read
    // during a burst either: it may be parked too, and must end on the final state as well.
    const normalSeq = await finalSeq(normal)
    stalled.resume()
    const slowSeq = await finalSeq(slow)
    const ok = slowSeq === last && normalSeq === last && slow.closeCode === undefined && normal.closeCode === undefined &&
      counter('slow_consumers_parked_total') > parkedBefore
    t.ok(ok, `run ${run}: parked and caught up to seq ${last} (slow: seq ${slowSeq}, close ${slow.closeCode}; normal: seq ${normalSeq}, close ${normal.closeCode})`)
    if (ok) caughtUp++
    if (slow.closeCode === undefined) slow.ws.terminate()
    if (normal.closeCode === undefined) normal.ws.terminate()
  }
  t.equal(caughtUp, RUNS, `${caughtUp}/${RUNS} runs caught up`)
  t.equal(counter('slow_consumer_closes_total'), 0, 'nobody was cut')
  t.ok(Date.now() - started < 40_000, `bounded: ${Date.now() - started} ms`)
})

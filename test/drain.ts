// SIGTERM drains before it closes: /readyz answers 503 at once while the listener stays up,
// new WebSocket upgrades and SSE streams are refused with 503 shutting_down, connected sockets
// keep streaming for --drain-ms, then close with 1001 spread over a window rather than all in
// one instant. SIGINT (a person at a terminal) skips the drain.

import t from 'tap'
import WebSocket from 'ws'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { until } from './fixtures/until.js'

const SOCKETS = 300

t.test('SIGTERM: readiness off, newcomers refused, sockets keep streaming, then closed spread out', async (t) => {
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--drain-ms', '2500', '--connect-rate-per-ip', '0', '--max-connections-per-ip', '0', '--max-messages-per-sec', '0'])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/)
  const base = `http://127.0.0.1:${port}`
  const closes: Array<{ code: number; at: number }> = []
  const updates = new Map<number, number>()
  const sockets = await Promise.all(Array.from({ length: SOCKETS }, (_, i) => new Promise<WebSocket>((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/jobs`, 'jobwire.json')
    ws.on('open', () => {
      ws.send(JSON.stringify({ type: 'subscribe_job', job_id: 'drain-1' }))
      resolve(ws)
    })
    ws.on('message', (m: Buffer) => {
      const frame = JSON.parse(m.toString()) as { type: string; data?: { step?: number } }
      if (frame.type === 'job_update' && typeof frame.data?.step === 'number') updates.set(i, frame.data.step)
    })
    ws.on('close', (code) => closes.push({ code, at: Date.now() }))
    ws.on('error', reject)
  })))
  t.teardown(() => sockets.forEach((s) => s.terminate()))
  const publish = (step: number) => fetch(`${base}/jobs/drain-1/progress`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ status: 'processing', step }) })
  await until(async () => {
    await publish(0)
    return updates.size === SOCKETS
  }, 'every socket subscribed', 10_000, 100)
  t.equal((await fetch(`${base}/readyz`)).status, 200)

  served.kill('SIGTERM')
  await until(async () => (await fetch(`${base}/readyz`)).status === 503, '/readyz 503 while draining', 2_000, 20)
  t.pass('/readyz answers 503, from a listener still up')
  const refused = await new Promise<number>((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/jobs`, 'jobwire.json')
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
    ws.on('open', () => resolve(101))
    ws.on('error', () => resolve(-1))
  })
  t.equal(refused, 503, 'a new upgrade is refused with 503')
  const sse = await fetch(`${base}/jobs/drain-1/events`)
  t.equal(sse.status, 503, 'a new SSE stream too')
  t.equal(closes.length, 0, 'nobody closed yet')
  t.equal((await publish(1)).status, 200, 'producers still reach it')
  await until(() => [...updates.values()].every((s) => s === 1), 'the update reaches every connected socket while draining', 5_000)
  t.pass('connected sockets keep streaming')

  const exit = await served.exited
  t.equal(exit.code, 0, 'a clean exit')
  await until(() => closes.length === SOCKETS, 'every socket closed', 5_000)
  t.ok(closes.every((c) => c.code === 1001), 'every close is 1001 going away')
  const spread = Math.max(...closes.map((c) => c.at)) - Math.min(...closes.map((c) => c.at))
  t.ok(spread >= 50, `the closes are spread (${spread} ms from first to last), not one instant`)
  t.ok(served.lines.some((l) => /draining/.test(l)), 'the drain is logged')
  const closeLines = served.lines.filter((l) => l.includes('"access":"close"'))
  t.equal(closeLines.length, SOCKETS, `every close of the shutdown is logged (${closeLines.length}), not sampled at 20 a second`)
})

t.test('SIGINT stops at once, without a drain', async (t) => {
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--drain-ms', '60000'])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/)
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/jobs`, 'jobwire.json')
  await new Promise((resolve) => ws.on('open', resolve))
  const closed = new Promise<number>((resolve) => ws.on('close', resolve))
  served.kill('SIGINT')
  t.equal(await closed, 1001)
  t.equal((await served.exited).code, 0)
  t.notOk(served.lines.some((l) => /draining/.test(l)))
})

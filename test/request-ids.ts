// Request ids on the lines an incident review reads: an HTTP route's refusal, an SSE stream's,
// a WebSocket upgrade's refusal and its connect line carry the caller's X-Request-Id (a proxy's
// or an app's) or one the gateway made; HTTP answers carry it back.

import t from 'tap'
import WebSocket from 'ws'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { SECRET, token } from './fixtures/tokens.js'
import { until } from './fixtures/until.js'

interface Line { access?: string; request?: string; transport?: string; msg?: string }

t.test('request ids on access lines and answers', async (t) => {
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--log-format', 'json', '--connect-rate-per-ip', '0', '--max-connections-per-ip', '0'], { JOBWIRE_JWT_SECRET: SECRET })
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/)
  const lines = () => served.lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Line)
  const base = `http://127.0.0.1:${port}`

  const given = await fetch(`${base}/jobs/rid-1`, { headers: { 'x-request-id': 'trace-abc.123' } })
  t.equal(given.status, 401)
  t.equal(given.headers.get('x-request-id'), 'trace-abc.123', "the caller's id comes back")
  await until(() => lines().some((l) => l.access === 'refused' && l.request === 'trace-abc.123'), 'the refusal logged with it')
  t.pass("the refusal's line carries it")

  const made = await fetch(`${base}/jobs/rid-2`, { headers: { 'x-request-id': 'no spaces allowed' } })
  const id = made.headers.get('x-request-id') ?? ''
  t.match(id, /^[0-9a-f]{8}-[0-9a-z]+$/, 'an unusable id is replaced by one the gateway makes')
  await until(() => lines().some((l) => l.request === id), 'that id logged')

  const sse = await fetch(`${base}/jobs/rid-3/events`, { headers: { 'x-request-id': 'sse-1' } })
  t.equal(sse.headers.get('x-request-id'), 'sse-1')
  await until(() => lines().some((l) => l.transport === 'sse' && l.request === 'sse-1'), 'the SSE refusal logged with it')

  const refused = await new Promise<number>((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/jobs`, 'jobwire.json', { headers: { 'x-request-id': 'ws-refused' } })
    ws.on('unexpected-response', (req, res) => {
      req.destroy()
      resolve(res.statusCode ?? 0)
    })
    ws.on('error', () => resolve(-1))
  })
  t.equal(refused, 401)
  await until(() => lines().some((l) => l.transport === 'websocket' && l.access === 'refused' && l.request === 'ws-refused'), 'the upgrade refusal logged with it')

  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/jobs?token=${await token('rid-user')}`, 'jobwire.json', { headers: { 'x-request-id': 'ws-accepted' } })
  t.teardown(() => ws.terminate())
  await new Promise((resolve, reject) => {
    ws.on('open', resolve)
    ws.on('error', reject)
  })
  await until(() => lines().some((l) => l.access === 'connect' && l.request === 'ws-accepted'), 'the connect line logged with it')
  t.pass('an accepted upgrade\'s connect line carries its request id')
})

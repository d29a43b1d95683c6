// HEAD straight to the gateway, as a load balancer's health check sends it: the GET's status
// and headers, and not one byte of body on the connection (a body would be read as the start
// of the next response on a kept-alive connection). A HEAD on the SSE route releases its
// stream at once. And the choice of compressed client by Accept-Encoding.

import t from 'tap'
import { connect } from 'node:net'
import { pickEncoding } from '../src/http/static.js'
import { startGateway } from './fixtures/gateway.js'
import { until } from './fixtures/until.js'

/** Sends raw requests on one connection, each once the answer to the one before has gone
 * quiet (uWS 20.30 does not answer pipelined requests while one is answered asynchronously,
 * GET or HEAD alike), and returns every byte the gateway wrote back. */
function exchange(port: number, ...requests: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const pending = [...requests]
    const socket = connect(port, '127.0.0.1', () => socket.write(pending.shift()!))
    let got = ''
    let timer: NodeJS.Timeout | undefined
    const settle = (): void => {
      clearTimeout(timer)
      timer = setTimeout(() => {
        const next = pending.shift()
        if (next !== undefined) return socket.write(next)
        socket.destroy()
        resolve(got)
      }, 300)
    }
    socket.on('data', (chunk: Buffer) => {
      got += chunk.toString('latin1')
      settle()
    })
    socket.on('error', reject)
    settle()
  })
}

t.test('HEAD on a kept-alive connection: the head, no body, and the next response intact', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  for (const path of ['/healthz', '/readyz', '/client.js', '/jobs/head-none', '/', '/no/such/route']) {
    const answer = await exchange(gw.port, `HEAD ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`, 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
    const responses = answer.split(/(?=HTTP\/1\.1 )/)
    t.equal(responses.length, 2, `HEAD ${path}: two responses, nothing between them`)
    const [head, next] = responses as [string, string]
    const [headers, body] = head.split('\r\n\r\n') as [string, string]
    t.equal(body, '', `HEAD ${path}: no body`)
    const length = /content-length: (\d+)/i.exec(headers)?.[1]
    const get = await fetch(`${gw.http}${path}`, { headers: { 'accept-encoding': 'identity' } })
    const getBody = Buffer.from(await get.arrayBuffer())
    t.equal(Number(/^HTTP\/1\.1 (\d+)/.exec(headers)?.[1]), get.status, `HEAD ${path}: the GET's status`)
    t.equal(Number(length), getBody.length, `HEAD ${path}: the GET's length`)
    t.match(next, /^HTTP\/1\.1 200 OK[\s\S]*\r\n\r\n\{"status":"ok","version":"[^"]+"\}$/, `after HEAD ${path}: the next response whole`)
  }
})

t.test('HEAD on the SSE route sends its head and releases the stream', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const answer = await exchange(gw.port, 'HEAD /jobs/head-sse/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
  t.match(answer, /^HTTP\/1\.1 200 OK/)
  t.match(answer, /content-type: text\/event-stream/i)
  t.notMatch(answer, /\r\n\r\n./s, 'no event written')
  await until(() => gw.gateway.metrics.sseStreams === 0, 'the stream released', 2_000)
  t.equal(gw.gateway.metrics.sseStreams, 0)
})

t.test('which compressed client a request gets', async (t) => {
  const both = { brotli: true, gzip: true }
  t.equal(pickEncoding('gzip, deflate, br', both), 'br')
  t.equal(pickEncoding('gzip', both), 'gzip')
  t.equal(pickEncoding('br;q=0, gzip', both), 'gzip', 'q=0 refuses an encoding')
  t.equal(pickEncoding('gzip;q=0', both), null)
  t.equal(pickEncoding('', both), null, 'no header: identity')
  t.equal(pickEncoding('identity', both), null)
  t.equal(pickEncoding('*', both), 'br')
  t.equal(pickEncoding('br', { brotli: false, gzip: true }), null, 'only what the build wrote')
  t.equal(pickEncoding('GZIP;Q=0.5', both), 'gzip', 'names and parameters in any case')
})

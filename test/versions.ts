// The server says its version (every HTTP answer's x-jobwire-version, /healthz, the startup
// line, /metrics' build_info), and speaks a versioned subprotocol (jobwire.v1.json,
// jobwire.v1.msgpack) beside today's names, echoing the one the client offered.

import t from 'tap'
import { readFileSync } from 'node:fs'
import { projectPath } from '../src/support/paths.js'
import { chooseSubprotocolName } from '../src/ws/behavior.js'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'

const VERSION = (JSON.parse(readFileSync(projectPath('package.json'), 'utf8')) as { version: string }).version

t.test('subprotocol names: today\'s and the versioned ones, the first one offered wins', async (t) => {
  t.same(chooseSubprotocolName('jobwire.v1.msgpack, jobwire.json'), { name: 'jobwire.v1.msgpack', encoding: 'msgpack' })
  t.same(chooseSubprotocolName('jobwire.v2.json, jobwire.v1.json'), { name: 'jobwire.v1.json', encoding: 'json' }, 'an unknown version is passed over')
  t.same(chooseSubprotocolName('jobwire.json'), { name: 'jobwire.json', encoding: 'json' })
  t.equal(chooseSubprotocolName('mqtt'), null)
  t.equal(chooseSubprotocolName(''), null)
})

t.test('a gateway says its version and speaks jobwire.v1.*', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const health = await fetch(`${gw.http}/healthz`)
  t.equal(health.headers.get('x-jobwire-version'), VERSION, 'every answer carries the version')
  t.same(await health.json(), { status: 'ok', version: VERSION })
  t.equal((await fetch(`${gw.http}/no/such`)).headers.get('x-jobwire-version'), VERSION, 'a 404 too')
  t.match(await (await fetch(`${gw.http}/metrics`)).text(), `jobwire_build_info{version="${VERSION}"`)
  for (const [offered, encoding] of [['jobwire.v1.json', 'json'], ['jobwire.v1.msgpack', 'msgpack']] as const) {
    const c = await gw.connect([offered])
    t.equal(c.ws.protocol, offered, `${offered} echoed`)
    const status = await c.subscribe(`v1-${encoding}`)
    t.match(status, { type: 'job_status', job_id: `v1-${encoding}` }, `${offered} speaks the same messages`)
  }
})

t.test('the startup line names the version', async (t) => {
  const served = serveProcess(['--port', String(await freePort())])
  t.teardown(() => reap(served))
  const line = await served.waitFor(/jobwire listening/)
  t.match(line, `"version":"${VERSION}"`)
  t.match(line, `(version ${VERSION};`)
})

// uWS listens with SO_REUSEPORT: a second node on a served port would silently share it.
// It refuses unless asked to share; the workers of one node share it as designed.

import t from 'tap'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'

t.test('a second node on a served port refuses to start; --share-port lets it', async (t) => {
  const port = await freePort()
  const first = serveProcess(['--port', String(port)])
  t.teardown(() => reap(first))
  await first.waitFor(/jobwire listening/)
  const second = serveProcess(['--port', String(port)])
  t.teardown(() => reap(second))
  t.match(await second.waitFor(/failed to start/), /already served by another process.*--share-port/)
  t.equal((await second.exited).code, 1)
  const sharing = serveProcess(['--port', String(port), '--share-port'])
  t.teardown(() => reap(sharing))
  await sharing.waitFor(/jobwire listening/)
  t.equal(sharing.proc.exitCode, null, 'asked to share, it runs')
})

t.test('with workers: the node starts (its workers share the port), a second node refuses', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const port = await freePort()
  const node = serveProcess(['--port', String(port), '--workers', '2', '--redis', redis.url])
  t.teardown(() => reap(node))
  await node.waitFor(/jobwire listening/, 20_000)
  const other = serveProcess(['--port', String(port), '--workers', '2', '--redis', redis.url])
  t.teardown(() => reap(other))
  t.match(await other.waitFor(/failed to start/), /already served/)
  t.equal((await other.exited).code, 1)
})

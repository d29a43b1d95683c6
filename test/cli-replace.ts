// jobwire publish merges an update into the stored state; --replace stores it whole.

import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { startGateway } from './fixtures/gateway.js'
import { CLI } from './fixtures/process.js'

const run = promisify(execFile)

t.test('merge by default, --replace on request (through the gateway)', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const publish = (...args: string[]) => run('node', [CLI, 'publish', 'cr-1', '--gateway', gw.http, ...args], { env: { ...process.env, REDIS_URL: '' } })
  await publish('--status', 'processing', '--message', 'transcoding', '--progress', '10')
  await publish('--progress', '50')
  const state = async () => ((await (await fetch(`${gw.http}/jobs/cr-1`)).json()) as { data: Record<string, unknown> }).data
  t.match(await state(), { status: 'processing', message: 'transcoding', progress: 50, seq: 2 }, 'merged')
  await publish('--progress', '60', '--replace')
  const replaced = await state()
  t.match(replaced, { progress: 60, seq: 3 })
  t.equal(replaced.status, undefined, 'replaced: the other fields are gone')
  t.match((await run('node', [CLI, 'publish', '--help'])).stdout, /--replace/)
})

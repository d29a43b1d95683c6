// examples/express: its token logic (token.js, jose only) mints tokens a gateway with the same
// secret accepts, for that user; and when `npm install` can reach the npm registry, the Express
// server itself is installed into a scratch copy and its endpoint checked. Express stays the
// example's dependency, never jobwire's.

import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { cpSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { projectPath } from '../src/support/paths.js'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { SECRET } from './fixtures/tokens.js'
import { until } from './fixtures/until.js'

const run = promisify(execFile)

t.test('the Express example', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET })
  t.teardown(() => gw.stop())
  await gw.gateway.broker.publishProgress('ex-1', Buffer.from('{"status":"queued"}'), { owner: 'alice' })
  await gw.gateway.broker.publishProgress('ex-2', Buffer.from('{"status":"queued"}'), { owner: 'bob' })
  const checkToken = async (token: string) => {
    const socket = await gw.connectAs(token)
    t.match((await socket.subscribe('ex-1')).data, { status: 'queued' }, "the token watches alice's job")
    socket.send({ type: 'subscribe_job', job_id: 'ex-2' })
    t.match(await socket.nextOfType('error', 'ex-2'), { code: 'forbidden' }, "and not bob's")
    await socket.close()
  }

  t.test('token.js mints tokens the gateway accepts', async (t) => {
    const { mintJobwireToken } = await import(projectPath('examples', 'express', 'token.js')) as { mintJobwireToken: (user: string, secret: string, ttl?: number) => Promise<string> }
    await checkToken(await mintJobwireToken('alice', SECRET))
    await t.rejects(mintJobwireToken('alice', 'short'), /at least 32 bytes/)
    const expired = await mintJobwireToken('alice', SECRET, -10)
    await t.rejects(gw.connectAs(expired), /401/, 'an expired one is refused')
  })

  t.test('server.js, installed from the npm registry', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'jobwire-express-'))
    cpSync(projectPath('examples', 'express'), dir, { recursive: true })
    try {
      await run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: dir, timeout: 45_000 })
    } catch (err) {
      t.comment(`npm install failed (${(err as Error).message.split('\n')[0]}): only token.js was tested`)
      return
    }
    const port = await freePort()
    const server = spawn('node', ['server.js'], { cwd: dir, env: { ...process.env, JOBWIRE_JWT_SECRET: SECRET, PORT: String(port), _TAPJS_PROCESSINFO_COVERAGE_: '0' }, stdio: 'ignore' })
    t.teardown(() => { server.kill('SIGTERM') })
    const url = `http://127.0.0.1:${port}/api/jobwire-token`
    await until(async () => fetch(url).then(() => true, () => false), 'the Express server to listen', 15_000, 100)
    t.equal((await fetch(url)).status, 401, 'no user, no token')
    const res = await fetch(url, { headers: { 'x-demo-user': 'alice' } })
    t.equal(res.headers.get('cache-control'), 'no-store')
    await checkToken(await res.text())
  })
})

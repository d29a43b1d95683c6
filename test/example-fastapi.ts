// examples/fastapi runs: uvicorn serves its token endpoint and page (Debian's python3-fastapi
// and python3-uvicorn, which make deps installs); the token it mints opens a socket on a
// gateway with the same secret, for that user's jobs only; in Chromium the page lists the
// user's jobs and shows a new one's progress live.

import t from 'tap'
import { spawn } from 'node:child_process'
import { projectPath } from '../src/support/paths.js'
import { launchBrowser } from './fixtures/browser.js'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { SECRET } from './fixtures/tokens.js'
import { until } from './fixtures/until.js'

t.test('the FastAPI example', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET })
  t.teardown(() => gw.stop())
  const publish = (id: string, payload: object, owner?: string) => gw.gateway.broker.publishProgress(id, Buffer.from(JSON.stringify(payload)), owner ? { owner } : {})
  await publish('fa-1', { status: 'processing', progress: 30 }, 'alice')
  await publish('fb-1', { status: 'processing', progress: 30 }, 'bob')

  const port = await freePort()
  const app = spawn('/usr/bin/python3', ['-m', 'uvicorn', 'app:app', '--host', '127.0.0.1', '--port', String(port)], {
    cwd: projectPath('examples', 'fastapi'),
    env: { ...process.env, JOBWIRE_JWT_SECRET: SECRET, JOBWIRE_URL: gw.http },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  app.stdout.on('data', (d: Buffer) => (output += d.toString()))
  app.stderr.on('data', (d: Buffer) => (output += d.toString()))
  t.teardown(() => { app.kill('SIGTERM') })
  const base = `http://127.0.0.1:${port}`
  await until(async () => fetch(`${base}/login?user=x`, { redirect: 'manual' }).then(() => true, () => false), `uvicorn to listen (${output})`, 20_000, 100)

  t.equal((await fetch(`${base}/api/jobwire-token`)).status, 401, 'no login, no token')
  const token = await fetch(`${base}/api/jobwire-token`, { headers: { cookie: 'user=alice' } }).then((r) => r.text())
  const socket = await gw.connectAs(token)
  t.match((await socket.subscribe('fa-1')).data, { progress: 30 }, "the token watches alice's job")
  socket.send({ type: 'subscribe_job', job_id: 'fb-1' })
  t.match(await socket.nextOfType('error', 'fb-1'), { code: 'forbidden' }, "and not bob's")

  const browser = await launchBrowser()
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  page.on('pageerror', (err) => t.fail(`page error: ${err.message}`))
  await page.goto(`${base}/login?user=alice`)
  await page.locator('[data-job-id="fa-1"][data-status="processing"]').waitFor({ timeout: 10_000 })
  t.pass("the page lists alice's job")
  await publish('fa-2', { status: 'processing', progress: 60, message: 'rendering' }, 'alice')
  await page.locator('[data-job-id="fa-2"] .message', { hasText: 'rendering' }).waitFor({ timeout: 10_000 })
  t.equal(await page.locator('[data-job-id="fa-2"] progress').evaluate((p) => (p as HTMLProgressElement).value), 60, 'a new job appears with its progress')
  t.equal(await page.locator('[data-job-id="fb-1"]').count(), 0, "bob's job is not on alice's page")
})

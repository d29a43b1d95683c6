// What a person sees on a terminal from a node with workers: every line in the primary's
// readable format (workers write JSON to their pipe; the primary shows it as it shows its
// own), the access-control warning once per node rather than once per process, and a startup
// line that says whether access control is on and where the pages are. Run under `script`,
// so the primary's stdout is a real terminal.

import t from 'tap'
import { spawn } from 'node:child_process'
import { CLI } from './fixtures/process.js'
import { freePort } from './fixtures/ports.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'

t.test('a two-worker node on a terminal logs readable lines, the open warning once, and its pages', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const port = await freePort()
  const command = `exec node ${CLI} serve --open --drain-ms 0 --port ${port} --workers 2 --redis ${redis.url}`
  const child = spawn('script', ['-qfec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, JOBWIRE_LOG_FORMAT: 'auto' } })
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()))
  child.stderr.on('data', (chunk: Buffer) => (out += chunk.toString()))
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  await until(() => /jobwire listening/.test(out) && (out.match(/worker listening/g) ?? []).length === 2, 'the node listening', 20_000)
  child.kill('SIGTERM')
  await until(() => child.exitCode !== null || /all workers stopped/.test(out), 'the node stopped', 10_000)
  const lines = out.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '')
  t.ok(lines.length >= 6, `${lines.length} lines`)
  t.same(lines.filter((l) => l.startsWith('{')), [], 'no raw JSON line, workers included')
  t.ok(lines.some((l) => /^\d\d:\d\d:\d\d\.\d{3} INFO {2}\[w[01]\] worker listening/.test(l)), 'worker lines in the readable format, tagged with the worker')
  t.equal(lines.filter((l) => /access control is off/.test(l)).length, 1, 'the open warning once for the node')
  const listening = lines.find((l) => /jobwire listening/.test(l)) ?? ''
  t.match(listening, 'access control off (--open)')
  t.match(listening, `demo http://127.0.0.1:${port}/`)
  t.match(listening, `test page http://127.0.0.1:${port}/ws/jobs/test`)
  t.match(listening, `admin http://127.0.0.1:${port}/admin`)
})

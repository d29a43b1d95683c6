// Every code sample in the README runs, so none can rot. Each fenced block with a language is
// preceded by `<!-- sample: <how> -->`, which says how this test runs it (shell, node, python,
// browser page, browser script) or why it is not run. Untagged fences are diagrams. The
// samples' addresses (127.0.0.1:8080 for the gateway, :6379 for Redis, /path/to/jobwire) are
// pointed at the gateway and Redis this test starts, and each sample must have an effect: a
// producer sample makes a watcher of video-42 receive updates, the Node one exits by itself,
// a browser sample logs the job's snapshot and its next update.

import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { createServer } from 'node:http'
import { mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Producer } from '../src/producer/producer.js'
import { PROJECT_ROOT, projectPath } from '../src/support/paths.js'
import { launchBrowser } from './fixtures/browser.js'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'

const run = promisify(execFile)
const JOB = 'video-42'

interface Sample { readonly how: string; readonly lang: string; readonly code: string; readonly line: number }

export function readmeSamples(text: string): { samples: Sample[]; unmarked: number[] } {
  const lines = text.split('\n')
  const samples: Sample[] = []
  const unmarked: number[] = []
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\w+)\s*$/.exec(lines[i]!)
    if (open === null) {
      if (lines[i]!.startsWith('```')) i = lines.indexOf('```', i + 1) // a diagram: skip to its end
      continue
    }
    const end = lines.indexOf('```', i + 1)
    const marker = /^<!-- sample: (.+?) -->$/.exec(lines[i - 1] ?? '')
    if (marker === null) unmarked.push(i + 1)
    else samples.push({ how: marker[1]!, lang: open[1]!, code: lines.slice(i + 1, end).join('\n'), line: i + 1 })
    i = end
  }
  return { samples, unmarked }
}

const PYTHON_PRELUDE = `
# What the README's Celery sample takes from its surroundings: a Celery app, the task's id, a file.
class _Request: id = ${JSON.stringify(JOB)}
class _App:
    def task(self, **options):
        def register(fn):
            class _Task: request = _Request()
            return lambda *args, **kwargs: fn(_Task(), *args, **kwargs)
        return register
app, task_id, path = _App(), ${JSON.stringify(JOB)}, "/tmp/v-42.mp4"
`
const PYTHON_EPILOGUE = `
if "download_video" in globals():
    download_video("https://example.invalid/v-42")
`

t.test('README samples run', async (t) => {
  const { samples, unmarked } = readmeSamples(readFileSync(projectPath('README.md'), 'utf8'))
  t.same(unmarked, [], 'every code block in the README says how it is run (<!-- sample: ... -->)')
  t.ok(samples.length >= 8, `${samples.length} samples`)

  // The client's size, as the README states it, is what the command it shows measures.
  const stated = /\(([\d,]+) bytes: `gzip -9c dist\/client\/jobwire-client\.js \| wc -c`/.exec(readFileSync(projectPath('README.md'), 'utf8'))
  const measured = (await run('bash', ['-c', 'gzip -9c dist/client/jobwire-client.js | wc -c'], { cwd: PROJECT_ROOT })).stdout.trim()
  t.equal(stated?.[1]?.replaceAll(',', ''), measured, 'the README states the client size that its command measures (after make build; update both figures)')

  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())
  const watcher = await gw.connect()
  await watcher.subscribe(JOB)
  const updates = () => watcher.all('job_update', JOB).length
  const redisClient = redis.client()
  const resetJob = () => redisClient.del(`jobwire:job:${JOB}`)
  const localize = (code: string) => code
    .replaceAll('127.0.0.1:6379', `127.0.0.1:${redis.port}`)
    .replaceAll('127.0.0.1:8080', `127.0.0.1:${gw.port}`)
    .replaceAll('/path/to/jobwire', PROJECT_ROOT)
    .replace(/^redis-cli /gm, `redis-cli -p ${redis.port} `)
  const env = { ...process.env, REDIS_URL: '', JOBWIRE_GATEWAY: gw.http, _TAPJS_PROCESSINFO_COVERAGE_: '0' }
  let browser: Awaited<ReturnType<typeof launchBrowser>> | null = null
  t.teardown(() => browser?.close())

  for (const sample of samples) {
    const name = `README line ${sample.line}: ${sample.how} (${sample.lang})`
    if (sample.how.startsWith('not run')) {
      t.pass(`${name}`)
      continue
    }
    // Each sample starts from a job without state: a sample that completes video-42 would
    // otherwise make the next one's "processing" a refused update (a final state is final).
    await resetJob()
    await t.test(name, async (t) => {
      const code = localize(sample.code)
      const before = updates()
      switch (sample.how) {
        case 'shell': {
          const { stderr } = await run('bash', ['-e', '-o', 'pipefail', '-c', code], { cwd: PROJECT_ROOT, env, timeout: 30_000 })
          t.equal(stderr, '', 'no errors')
          break
        }
        case 'node': {
          // As the README has it: an app beside a clone called jobwire.
          const dir = mkdtempSync(join(tmpdir(), 'jobwire-readme-'))
          symlinkSync(PROJECT_ROOT, join(dir, 'jobwire'))
          writeFileSync(join(dir, 'sample.mjs'), code)
          const started = Date.now()
          const { stderr } = await run('node', ['sample.mjs'], { cwd: dir, env, timeout: 15_000 })
          t.equal(stderr, '', 'no errors')
          t.ok(Date.now() - started < 10_000, 'the process exits by itself (producer.close())')
          await until(() => updates() >= before + 3, 'the Node sample\'s updates')
          const state = await fetch(`${gw.http}/jobs/${JOB}`).then((r) => r.json()) as { data: Record<string, unknown> }
          t.match(state.data, { status: 'processing', message: 'transcoding', progress: 45 }, 'the partial update merged into the state')
          break
        }
        case 'python': {
          const child = spawn('/usr/bin/python3', ['-'], { env, stdio: ['pipe', 'pipe', 'pipe'] })
          let stderr = ''
          child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
          child.stdin.end(PYTHON_PRELUDE.replace('app, task_id', `import json, redis\nr = redis.Redis.from_url("${redis.url}")\napp, task_id`) + code + PYTHON_EPILOGUE)
          const exit = await new Promise<number | null>((resolve) => child.on('exit', resolve))
          t.equal(exit, 0, `python exits 0 ${stderr}`)
          break
        }
        case 'browser page':
        case 'browser script': {
          browser ??= await launchBrowser()
          const page = await browser.newPage()
          t.teardown(() => page.close())
          const logged: unknown[][] = []
          page.on('console', (msg) => void Promise.all(msg.args().map((a) => a.jsonValue().catch(() => String(a)))).then((args) => logged.push(args)))
          page.on('pageerror', (err) => t.fail(`page error: ${err.message}`))
          // Served by the app, on an origin of its own, as in real life; the token endpoint the
          // sample calls answers with no token (access control is off here).
          const html = `<!doctype html><meta charset="utf-8"><body>${sample.how === 'browser page' ? code : `<script type="module">\n${code}\n</script>`}</body>`
          const app = createServer((req, res) => {
            if (req.url === '/api/jobwire-token') return res.writeHead(200, { 'content-type': 'text/plain' }).end('')
            res.writeHead(200, { 'content-type': 'text/html' }).end(html)
          })
          await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve))
          t.teardown(() => new Promise<void>((resolve) => { app.closeAllConnections(); app.close(() => resolve()) }))
          await page.goto(`http://127.0.0.1:${(app.address() as { port: number }).port}/`)
          const said = (what: (args: unknown[]) => boolean) => logged.some(what)
          const isType = (type: string) => (args: unknown[]) => args.some((a) => typeof a === 'object' && a !== null && (a as { type?: unknown }).type === type) ||
            (args[0] === (type === 'job_status' ? 'now' : 'update'))
          await until(() => said(isType('job_status')), 'the snapshot logged', 10_000)
          const producer = new Producer({ redis: redis.url })
          t.teardown(() => producer.close())
          await producer.progress(JOB, { progress: 77 })
          await until(() => said(isType('job_update')), 'the update logged', 10_000)
          t.pass('the page logged the snapshot and the next update')
          return
        }
        default:
          t.fail(`unknown sample kind '${sample.how}'`)
          return
      }
      await until(() => updates() > before, `an update from the ${sample.how} sample`)
      t.pass(`${updates() - before} update(s) reached a watcher`)
    })
  }
})

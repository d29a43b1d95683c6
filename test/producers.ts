// Producers: atomicity under concurrency (Node), the shipped Lua script from Python, and the
// jobwire publish CLI.

import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { Producer } from '../src/producer/producer.js'
import { PROGRESS_SCRIPT_PATH } from '../src/producer/script.js'
import { projectPath } from '../src/support/paths.js'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'

const run = promisify(execFile)

t.test('producers against one gateway', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())

  t.test('concurrent producers: seq strictly increasing, each once, state = last', async (t) => {
    const watcher = await gw.connect()
    await watcher.subscribe('atom-1')
    const producers = Array.from({ length: 4 }, () => new Producer({ redis: redis.url }))
    t.teardown(() => Promise.all(producers.map((p) => p.close())))
    const returned = await Promise.all(producers.flatMap((p, w) =>
      Array.from({ length: 250 }, (_, i) => p.progress('atom-1', { worker: w, i }))))
    t.same([...returned].sort((a, b) => a - b), Array.from({ length: 1000 }, (_, i) => i + 1), 'every seq 1..1000 returned once')
    await watcher.next((m) => m.type === 'job_update' && (m.data as { seq: number }).seq === 1000, 20_000)
    const seqs = watcher.all('job_update', 'atom-1').map((m) => (m.data as { seq: number }).seq)
    t.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]!), 'delivered in strictly increasing seq order')
    t.equal(seqs.length, 1000)
    const state = await fetch(`${gw.http}/jobs/atom-1`).then((r) => r.json()) as { data: { seq: number } }
    t.equal(state.data.seq, 1000, 'stored state is the last update')
    const last = watcher.all('job_update', 'atom-1').at(-1)!
    t.same(state.data, last.data)
  })

  t.test('the Producer refuses bad job ids and bad payloads before touching Redis', async (t) => {
    const p = new Producer({ redis: redis.url })
    t.teardown(() => p.close())
    await t.rejects(p.progress('bad id', { progress: 1 }), /not a job id/)
    await t.rejects(p.progress('ok-1', [] as unknown as Record<string, unknown>), /must be an object/)
    await t.rejects(p.progress('ok-1', { seq: 3 }), /must not set seq/)
    t.equal(await p.progress('ok-1', { progress: 1 }, { owner: 'u1' }), 1)
    const mp = new Producer({ redis: redis.url, encoding: 'msgpack' })
    t.teardown(() => mp.close())
    const c = await gw.connect()
    await c.subscribe('ok-1')
    await mp.progress('ok-1', { progress: 2 })
    t.match((await c.nextOfType('job_update', 'ok-1')).data, { progress: 2, seq: 2 })
  })

  t.test('a Python worker (redis-py register_script + plain PUBLISH) streams to browsers', async (t) => {
    const c = await gw.connect()
    await c.subscribe('py-1')
    const { stdout } = await run('/usr/bin/python3', [projectPath('test', 'fixtures', 'python_producer.py'), redis.url, PROGRESS_SCRIPT_PATH, 'py-1'])
    t.match(stdout, /refused: jobwire: payload must not set seq/)
    t.same(JSON.parse(stdout.trim().split('\n').at(-1)!), { seqs: [1, 2, 3] })
    await c.next((m) => m.type === 'job_update' && (m.data as { message?: string }).message === 'plain publish')
    const updates = c.all('job_update', 'py-1').map((m) => m.data)
    t.match(updates, [
      { seq: 1, status: 'processing', progress: 10, message: 'stage 10' },
      { seq: 2, progress: 50 },
      { seq: 3, status: 'completed', progress: 100, result: { files: ['a.mp4'] } },
      { progress: 100, message: 'plain publish' },
    ])
    const ttl = await redis.client().ttl('jobwire:job:py-1')
    t.ok(ttl > 0 && ttl <= 3600, `terminal TTL applied (${ttl}s)`)
    t.equal(await redis.client().hget('jobwire:job:py-1', 'owner'), 'py-user')
  })

  t.test('jobwire publish CLI', async (t) => {
    const cli = projectPath('dist', 'src', 'cli.js')
    const c = await gw.connect()
    await c.subscribe('cli-1')
    const { stdout } = await run('node', [cli, 'publish', 'cli-1', '--progress', '40', '--status', 'processing', '--message', 'rendering', '--owner', 'u9', '--redis', redis.url])
    t.equal(stdout, `published cli-1 seq=1 to Redis at ${redis.url}\n`)
    t.match((await c.nextOfType('job_update', 'cli-1')).data, { seq: 1, progress: 40, status: 'processing', message: 'rendering' })
    await run('node', [cli, 'publish', 'cli-1', '--data', '{"result":{"n":1}}', '--plain'], { env: { ...process.env, REDIS_URL: redis.url } })
    t.same((await c.nextOfType('job_update', 'cli-1')).data, { result: { n: 1 } })
    for (const [args, message] of [
      [['publish', 'cli-1', '--progress', '140', '--redis', redis.url], /--progress must be a number from 0 to 100/],
      [['publish', 'cli-1', '--status', 'done', '--redis', redis.url], /--status must be one of/],
      [['publish', 'bad id!', '--redis', redis.url], /is not a job id/],
      [['publish', 'cli-1', '--data', '[1]', '--redis', redis.url], /--data must be a JSON object/],
      [['publish', 'cli-1', '--bogus'], /Unknown option '--bogus'/],
      [['publish', 'cli-1', '--plain', '--gateway', 'http://127.0.0.1:1'], /--plain needs Redis/],
    ] as const) {
      const err = await run('node', [cli, ...args], { env: { ...process.env, REDIS_URL: '' } }).then(() => null, (e: { code: number; stderr: string }) => e)
      t.ok(err, `${args.join(' ')} fails`)
      t.equal(err?.code, 2)
      t.match(err?.stderr, message)
    }
  })
})

// clients/python/jobwire.py, the one-file helper Python workers vendor: its embedded producer
// script is the shipped one, byte for byte, and with Debian's python3-redis against this
// test's own redis-server it reports progress that browsers see, returns each seq, merges
// partial updates and refuses what jobwire would drop.

import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { PROGRESS_SCRIPT_PATH } from '../src/producer/script.js'
import { projectPath } from '../src/support/paths.js'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'

const run = promisify(execFile)
const PYTHON = '/usr/bin/python3' // Debian's, with python3-redis (make deps installs it)
const HELPER_DIR = projectPath('clients', 'python')

/** Runs a Python snippet with the helper importable; returns its stdout. */
async function python(code: string, ...args: string[]): Promise<string> {
  const { stdout } = await run(PYTHON, ['-c', `import sys; sys.path.insert(0, ${JSON.stringify(HELPER_DIR)})\n${code}`, ...args], { timeout: 20_000 })
  return stdout
}

t.test('the embedded script is src/producer/progress.lua, byte for byte', async (t) => {
  const same = await python('import jobwire; print(jobwire.PROGRESS_SCRIPT == open(sys.argv[1], encoding="utf-8").read())', PROGRESS_SCRIPT_PATH)
  t.equal(same.trim(), 'True', 'out of date: run node clients/python/generate.mjs')
})

t.test('JobwireProducer(redis_client).publish streams to browsers and returns the seq', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())
  const watcher = await gw.connect()
  await watcher.subscribe('py-helper-1')

  const stdout = await python(`
import json, redis
from jobwire import JobwireProducer, JobwireError
producer = JobwireProducer(redis.Redis.from_url(sys.argv[1]))
seqs = [
    producer.publish("py-helper-1", {"status": "queued"}, owner="user-7"),
    producer.publish("py-helper-1", {"status": "processing", "progress": 40, "message": "transcoding"}),
    producer.publish("py-helper-1", {"progress": 55}),
    producer.publish("py-helper-1", {"status": "completed", "progress": 100, "result": {"url": "/v/1.mp4"}}),
]
refusals = []
for bad in ({"seq": 3}, {"progress": float("nan")}, ["not", "a", "dict"]):
    try:
        producer.publish("py-helper-1", bad)
        refusals.append("accepted %r" % (bad,))
    except JobwireError as e:
        refusals.append(str(e))
try:
    producer.publish("bad id!", {"progress": 1})
except JobwireError as e:
    refusals.append(str(e))
print(json.dumps({"seqs": seqs, "refusals": refusals}))
`, redis.url)
  const out = JSON.parse(stdout.trim().split('\n').at(-1)!) as { seqs: number[]; refusals: string[] }
  t.same(out.seqs, [1, 2, 3, 4], 'publish returns each new seq')
  t.match(out.refusals, [/must not set seq/, /not JSON/, /must be a dict/, /not a job id/])
  const updates = await watcher.next((m) => m.type === 'job_update' && (m.data as { seq: number }).seq === 4)
  t.match(updates.data, { seq: 4, status: 'completed', progress: 100, result: { url: '/v/1.mp4' } })
  const third = watcher.all('job_update', 'py-helper-1').find((m) => (m.data as { seq: number }).seq === 3)
  t.match(third?.data, { progress: 55, status: 'processing', message: 'transcoding' }, 'a partial update keeps the other fields')
  t.equal(await redis.client().hget('jobwire:job:py-helper-1', 'owner'), 'user-7')
  const ttl = await redis.client().ttl('jobwire:job:py-helper-1')
  t.ok(ttl > 0 && ttl <= 3600, `terminal TTL applied (${ttl}s)`)
})

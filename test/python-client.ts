// clients/python/jobwire.py, the one-file helper Python workers vendor: its embedded scripts
// are the shipped ones, byte for byte, and with Debian's python3-redis against this test's own
// redis-server it reports progress that browsers see, returns each seq, merges partial updates
// and refuses what jobwire would drop; given a RedisCluster client (against this test's own
// Redis Cluster) it uses the cluster layout and sharded pub/sub and keeps the owner's index.

import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { PROGRESS_SCRIPT_PATH } from '../src/producer/script.js'
import { projectPath } from '../src/support/paths.js'
import { startCluster } from './fixtures/cluster.js'
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

t.test('the embedded scripts are src/producer/progress.lua and owner-index.lua, byte for byte', async (t) => {
  const same = await python('import jobwire; print(jobwire.PROGRESS_SCRIPT == open(sys.argv[1], encoding="utf-8").read())', PROGRESS_SCRIPT_PATH)
  t.equal(same.trim(), 'True', 'out of date: run node clients/python/generate.mjs')
  const index = await python('import jobwire; print(jobwire.OWNER_INDEX_SCRIPT == open(sys.argv[1], encoding="utf-8").read())', projectPath('src', 'producer', 'owner-index.lua'))
  t.equal(index.trim(), 'True', 'out of date: run node clients/python/generate.mjs')
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

t.test('JobwireProducer(RedisCluster(...)) uses the cluster layout and sharded pub/sub, and lists jobs under their owners', async (t) => {
  const cluster = await startCluster()
  t.teardown(() => cluster.stop())
  const gw = await startGateway({ 'redis-cluster': cluster.seeds })
  t.teardown(() => gw.stop())
  const watcher = await gw.connect()
  await watcher.subscribe('py-cluster-1')
  watcher.send({ type: 'subscribe_user_jobs', user: 'user-7' })
  t.same((await watcher.nextOfType('user_jobs')).job_ids, [], 'nothing listed yet')

  const [host, port] = cluster.seeds.split(',')[0]!.split(':') as [string, string]
  const stdout = await python(`
import json
from redis.cluster import RedisCluster
from jobwire import JobwireProducer, OwnerIndexError
client = RedisCluster(host=sys.argv[1], port=int(sys.argv[2]))
producer = JobwireProducer(client)
seqs = [
    producer.publish("py-cluster-1", {"status": "queued"}, owner="user-7"),
    producer.publish("py-cluster-1", {"status": "processing", "progress": 40}),
    producer.publish("py-cluster-1", {"status": "completed", "progress": 100}),
]
producer.publish("py-cluster-2", {"status": "queued"}, owner="user-7")
producer.publish("py-cluster-2", {"progress": 1}, owner="user-8", replace_owner=True)
client.set("jobwire:owner:broken", "not a sorted set")
try:
    producer.publish("py-cluster-3", {"status": "queued"}, owner="broken")
    half = "accepted"
except OwnerIndexError as e:
    half = {"seq": e.seq, "owner": e.owner, "message": str(e)}
print(json.dumps({"cluster": producer._cluster, "seqs": seqs, "half": half}))
`, host, port)
  const out = JSON.parse(stdout.trim().split('\n').at(-1)!) as { cluster: boolean; seqs: number[]; half: unknown }
  t.equal(out.cluster, true, 'a RedisCluster client is taken for a cluster')
  t.same(out.seqs, [1, 2, 3], 'publish returns each new seq')
  t.same(await watcher.nextOfType('user_job'), { type: 'user_job', user: 'user-7', job_id: 'py-cluster-1' }, "the new job announced on its owner's channel")
  const last = await watcher.next((m) => m.type === 'job_update' && (m.data as { seq: number }).seq === 3)
  t.match(last.data, { seq: 3, status: 'completed', progress: 100 })
  t.same(watcher.all('job_update', 'py-cluster-1').map((m) => (m.data as { seq: number }).seq), [1, 2, 3], 'each update once (SPUBLISH only)')

  const store = cluster.client()
  t.equal(await store.hget('jobwire:job:{progress:py-cluster-1}', 'owner'), 'user-7', 'stored under the cluster key')
  t.equal(await store.exists('jobwire:job:py-cluster-1'), 0, 'not under the single-Redis key')
  const listed = await fetch(`${gw.http}/jobs?owner=user-7`).then((r) => r.json()) as { jobs: Array<{ job_id: string; data: unknown }> }
  t.same(listed.jobs.map((j) => j.job_id), ['py-cluster-1'], "GET /jobs?owner= lists the owner's job (py-cluster-2 was given away)")
  t.match(listed.jobs[0]!.data, { seq: 3, status: 'completed' })
  t.same(await store.zrevrange('jobwire:owner:user-7', 0, -1), ['py-cluster-1'], 'given away: gone from the old owner\'s set')
  t.same(await store.zrevrange('jobwire:owner:user-8', 0, -1), ['py-cluster-2'], "in the new owner's set")
  t.match(out.half, { seq: 1, owner: 'broken', message: /was updated \(seq 1\).*WRONGTYPE/ }, 'a failed second step raises OwnerIndexError with the seq')
  t.equal(await store.hget('jobwire:job:{progress:py-cluster-3}', 'owner'), 'broken', 'and the update stands')
})

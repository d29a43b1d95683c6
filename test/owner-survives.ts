// Ownership survives the loss of a job's state key (its TTL lapsed on a quiet job, or Redis
// lost it): the producer script keeps the owner in <key prefix>job-owner:<id> as well, for 7
// days from the last write, and a state created anew takes it from there; the Node and Python
// producers remember the owner they were given and send it with every update, so the owner
// is kept even when both keys are gone.

import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import type { BrokerListener } from '../src/broker/broker.js'
import { EmbeddedBroker } from '../src/broker/embedded.js'
import { RedisBroker } from '../src/broker/redis.js'
import { keySlot } from '../src/broker/slots.js'
import { OwnerConflict } from '../src/producer/merge.js'
import { Producer } from '../src/producer/producer.js'
import { ownerKey } from '../src/producer/script.js'
import { createLogger } from '../src/support/log.js'
import { projectPath } from '../src/support/paths.js'
import { stateKey } from '../src/wire/topics.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'

const names = { channelPrefix: 'progress:', keyPrefix: 'jobwire:', stateTtlSec: 100, terminalTtlSec: 10 }
const quiet: BrokerListener = { message() {}, state() {}, restored() {} }
const WEEK = 7 * 86_400

t.test('the script: the owner given on the first call only survives the state key', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const broker = new RedisBroker(redis.url, names, createLogger('silent'))
  t.teardown(() => broker.close())
  broker.start(quiet)
  const client = redis.client()
  await broker.publishProgress('own-1', Buffer.from('{"status":"processing","progress":10}'), { owner: 'alice' })
  t.equal(await client.get('jobwire:job-owner:own-1'), 'alice', 'the owner key holds the owner')
  t.ok((await client.ttl('jobwire:job-owner:own-1')) > WEEK - 60, 'for 7 days')
  await client.expire('jobwire:job-owner:own-1', 100)
  await broker.publishProgress('own-1', Buffer.from('{"progress":20}'))
  t.ok((await client.ttl('jobwire:job-owner:own-1')) > WEEK - 60, 'refreshed by every write, also without the owner given')

  await client.del('jobwire:job:own-1') // the state key lapsed
  await broker.publishProgress('own-1', Buffer.from('{"progress":30}'))
  t.equal(await client.hget('jobwire:job:own-1', 'owner'), 'alice', 'the state created anew has the owner')
  t.equal((await broker.readJobs(['own-1']))[0]!.owner, 'alice', 'and the gateway reads it from the state key')
  t.same(await client.zrange('jobwire:owner:alice', '0', '-1'), ['own-1'], "the job stays in its owner's list")

  await client.del('jobwire:job:own-1')
  await t.rejects(broker.publishProgress('own-1', Buffer.from('{"progress":40}'), { owner: 'mallory' }), OwnerConflict,
    'another owner is still refused after the state key is gone')
  t.equal(await client.exists('jobwire:job:own-1'), 0, 'and nothing was written')
  await broker.publishProgress('own-1', Buffer.from('{"progress":40}'), { owner: 'bob', replaceOwner: true })
  t.equal(await client.get('jobwire:job-owner:own-1'), 'bob', 'replacing the owner replaces the owner key too')

  await broker.publishProgress('own-2', Buffer.from('{"progress":1}'))
  t.equal(await client.exists('jobwire:job-owner:own-2'), 0, 'a job without an owner has no owner key')
})

t.test('on Redis Cluster the owner key shares the state key\'s slot', async (t) => {
  for (const id of ['a', 'job-42', 'x:y']) {
    const clusterNames = { ...names, cluster: true }
    t.equal(ownerKey(clusterNames, id), `jobwire:job-owner:{progress:${id}}`)
    t.equal(keySlot(ownerKey(clusterNames, id)), keySlot(stateKey(clusterNames, id)), `same slot for ${id}`)
  }
  t.equal(ownerKey(names, 'a'), 'jobwire:job-owner:a')
})

t.test('the embedded broker keeps the owner beyond the state, as the script does', async (t) => {
  const broker = new EmbeddedBroker(names)
  t.teardown(() => broker.close())
  broker.start(quiet)
  await broker.publishProgress('own-e', Buffer.from('{"status":"processing"}'), { owner: 'alice', ttlSec: 0.05 })
  await until(async () => (await broker.readJobs(['own-e']))[0]!.state === null, 'the state lapses')
  t.equal((await broker.readJobs(['own-e']))[0]!.owner, 'alice', 'the owner is still known')
  await broker.publishProgress('own-e', Buffer.from('{"progress":5}'))
  t.equal((await broker.readJobs(['own-e']))[0]!.owner, 'alice', 'and the state created anew has it')
  await t.rejects(broker.publishProgress('own-e', Buffer.from('{"progress":6}'), { owner: 'mallory' }), OwnerConflict)
})

t.test('the Node producer remembers the owner and sends it with every update', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const client = redis.client()
  const producer = new Producer({ redis: redis.url })
  t.teardown(() => producer.close())
  await producer.progress('own-n', { status: 'processing' }, { owner: 'alice' })
  await client.del('jobwire:job:own-n', 'jobwire:job-owner:own-n') // both keys lost
  await producer.progress('own-n', { progress: 50 })
  t.equal(await client.hget('jobwire:job:own-n', 'owner'), 'alice', 'the owner was sent again')

  // An admin gives the job to someone else: the remembered owner is out of date, and the
  // producer, which was not asked to set one, keeps working.
  const admin = new Producer({ redis: redis.url })
  t.teardown(() => admin.close())
  await admin.progress('own-n', { progress: 51 }, { owner: 'bob', replaceOwner: true })
  t.equal(await producer.progress('own-n', { progress: 60 }), 3, 'not refused')
  t.equal(await client.hget('jobwire:job:own-n', 'owner'), 'bob', 'and the new owner stays')
})

t.test('the Python producer remembers the owner too', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const client = redis.client()
  const run = promisify(execFile)
  const { stdout } = await run('/usr/bin/python3', ['-c', `
import sys, redis
sys.path.insert(0, ${JSON.stringify(projectPath('clients', 'python'))})
from jobwire import JobwireProducer
r = redis.Redis.from_url(sys.argv[1])
p = JobwireProducer(r)
p.publish("own-p", {"status": "processing"}, owner="alice")
print(r.get("jobwire:job-owner:own-p").decode())
r.delete("jobwire:job:own-p", "jobwire:job-owner:own-p")
p.publish("own-p", {"progress": 50})
print(r.hget("jobwire:job:own-p", "owner").decode())
`, redis.url], { timeout: 20_000 })
  t.same(stdout.trim().split('\n'), ['alice', 'alice'], 'the owner key is written, and the owner sent again after both keys are lost')
  t.equal(await client.hget('jobwire:job:own-p', 'owner'), 'alice')
})

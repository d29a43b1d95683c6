// The owner survives the state key (issue 19, item 4, reader side): the producer script keeps
// the owner in <key prefix>job-owner:<job id> as well, for longer, and the gateway's read
// (src/broker/read-jobs.lua) takes the owner from there when the state key has none. So a
// job whose state expired or was lost is still its owner's, and only its owner's.

import t from 'tap'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET, token } from './fixtures/tokens.js'

const redis = await startRedis()
t.teardown(() => redis.stop())
const gw = await startGateway({ redis: redis.url, 'jwt-secret': SECRET })
t.teardown(() => gw.stop())
const direct = redis.client()

t.test('readJobs: the state key\'s owner, else the owner key\'s', async (t) => {
  await direct.set('jobwire:job-owner:ro-1', 'alice')
  await direct.hset('jobwire:job:ro-2', 'state', '{"seq":1,"epoch":5,"status":"processing"}', 'seq', '1', 'epoch', '5')
  await direct.set('jobwire:job-owner:ro-2', 'alice')
  await direct.hset('jobwire:job:ro-3', 'state', '{"seq":1,"epoch":5}', 'owner', 'carol')
  await direct.set('jobwire:job-owner:ro-3', 'alice')
  await direct.set('jobwire:job-owner:ro-4', 'x')
  await direct.del('jobwire:job-owner:ro-4')
  await direct.lpush('jobwire:job-owner:ro-5', 'not a string') // another type reads as no owner
  const records = await gw.gateway.broker.readJobs(['ro-1', 'ro-2', 'ro-3', 'ro-4', 'ro-5'])
  t.same(records.map((r) => r.owner), ['alice', 'alice', 'carol', null, null])
  t.equal(records[0]!.state, null, 'no state: the job has none, but an owner')
})

t.test('a job whose state key is gone is still refused to others and shown to its owner', async (t) => {
  await direct.set('jobwire:job-owner:ro-6', 'alice')
  const alice = await gw.connectAs(await token('alice'))
  t.match(await alice.subscribe('ro-6'), { type: 'job_status', data: null })
  const bob = await gw.connectAs(await token('bob'))
  bob.send({ type: 'subscribe_job', job_id: 'ro-6' })
  t.match(await bob.nextOfType('error'), { code: 'forbidden', job_id: 'ro-6' })
  // The producer writes again: the same owner, and alice sees it.
  await gw.gateway.broker.publishProgress('ro-6', Buffer.from('{"status":"processing","progress":5}'))
  t.match(await alice.nextOfType('job_update', 'ro-6'), { data: { progress: 5 } })
})

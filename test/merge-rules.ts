// One table of merge-rule cases (docs/protocol.md, "Merge rules"), run against the producer
// script on a real redis-server and against the embedded broker, so the two cannot drift: each
// case must give the same stored state (key order and bytes included, but for epoch and ts)
// or the same refusal on both.

import t from 'tap'
import { pack, unpack } from 'msgpackr'
import type { Broker, BrokerListener, ProgressOptions } from '../src/broker/broker.js'
import { EmbeddedBroker } from '../src/broker/embedded.js'
import { RedisBroker } from '../src/broker/redis.js'
import '../src/producer/merge.js'
import { createLogger } from '../src/support/log.js'
import { startRedis } from './fixtures/redis.js'

const names = { channelPrefix: 'progress:', keyPrefix: 'jobwire:', stateTtlSec: 100, terminalTtlSec: 10 }

type Step = readonly [payload: Buffer | string, options?: ProgressOptions]
interface Case {
  readonly name: string
  readonly steps: readonly Step[]
  /** The state after the last step, less seq, epoch and ts; or the last step's refusal. */
  readonly expect: Record<string, unknown> | RegExp
  /** When the last step is refused: the state it must leave, less seq, epoch and ts. */
  readonly unchanged?: Record<string, unknown>
}

const json = (v: unknown) => JSON.stringify(v)

const CASES: readonly Case[] = [
  { name: 'fields merge at the top level; the others are kept', steps: [[json({ status: 'processing', progress: 5, message: 'a' })], [json({ progress: 6 })]], expect: { status: 'processing', progress: 6, message: 'a' } },
  { name: 'null deletes a field', steps: [[json({ status: 'processing', progress: 5, message: 'a' })], [json({ message: null })]], expect: { status: 'processing', progress: 5 } },
  { name: 'null deletes any field, status too', steps: [[json({ status: 'queued', x: 1 })], [json({ status: null, x: null, y: 2 })]], expect: { y: 2 } },
  { name: 'null on a first write leaves the field out', steps: [[json({ a: 1, b: null })]], expect: { a: 1 } },
  { name: 'msgpack nil deletes a field', steps: [[pack({ a: 1, b: 2 })], [pack({ a: null })]], expect: { b: 2 } },
  { name: 'a nested object replaces the stored one whole', steps: [[json({ result: { a: 1, b: 2 } })], [json({ result: { c: 3 } })]], expect: { result: { c: 3 } } },
  { name: 'a status change drops message, error and result', steps: [[json({ status: 'processing', progress: 40, message: 'm', error: 'e', result: { r: 1 }, other: 1 })], [json({ status: 'queued' })]], expect: { progress: 40, other: 1, status: 'queued' } },
  { name: 'a status change keeps what the update sets itself', steps: [[json({ status: 'processing', message: 'working', result: { partial: 1 } })], [json({ status: 'completed', message: 'done', result: { r: 2 } })]], expect: { status: 'completed', message: 'done', result: { r: 2 } } },
  { name: 'the same status again is no change: message kept', steps: [[json({ status: 'processing', message: 'working' })], [json({ status: 'processing', progress: 3 })]], expect: { message: 'working', status: 'processing', progress: 3 } },
  { name: 'a status set on a state without one is a change', steps: [[json({ message: 'old', progress: 1 })], [json({ status: 'processing' })]], expect: { progress: 1, status: 'processing' } },
  { name: 'across encodings: msgpack stored, JSON update, status change', steps: [[pack({ status: 'processing', message: 'm', n: 1 })], [json({ status: 'failed', error: 'boom' })]], expect: { n: 1, status: 'failed', error: 'boom' } },
  { name: 'a JSON key given twice is refused', steps: [[json({ a: 0 })], ['{"a":1,"b":2,"a":3}']], expect: /payload has the key "a" more than once/, unchanged: { a: 0 } },
  { name: 'a JSON key given twice, once escaped, is refused', steps: [['{"a":1,"\\u0061":2}']], expect: /payload has the key "a" more than once/ },
  { name: 'a msgpack key given twice is refused', steps: [[Buffer.from([0x82, 0xa1, 0x61, 0x01, 0xa1, 0x61, 0x02])]], expect: /payload has the key "a" more than once/ },
  { name: 'seq may not be set, not even to null', steps: [[pack({ seq: null, a: 1 })]], expect: /must not set seq/ },
  { name: 'ts null is refused: it is no time', steps: [[json({ ts: null })]], expect: /ts must be a number/ },
  { name: 'if_seq that matches writes', steps: [[json({ a: 1 })], [json({ a: 2 }), { ifSeq: 1 }]], expect: { a: 2 } },
  { name: 'if_seq 0 on a job without state writes', steps: [[json({ a: 1 }), { ifSeq: 0 }]], expect: { a: 1 } },
  { name: 'if_seq that does not match is refused, nothing written', steps: [[json({ a: 1 })], [json({ a: 2 }), { ifSeq: 5 }]], expect: /if_seq 5 does not match the job's seq 1/, unchanged: { a: 1 } },
  { name: 'processing after completed is refused, the result kept', steps: [[json({ status: 'completed', result: { r: 1 } })], [json({ status: 'processing', progress: 10 })]], expect: /job \S+ is completed: a final state is final; pass restart to start a new generation/, unchanged: { status: 'completed', result: { r: 1 } } },
  { name: 'deleting the status of a final state is refused', steps: [[json({ status: 'failed' })], [json({ status: null })]], expect: /is failed: a final state is final/ },
  { name: 'replace with a non-final state is refused too', steps: [[json({ status: 'cancelled' })], [json({ progress: 1 }), { replace: true }]], expect: /is cancelled: a final state is final/ },
  { name: 'adding to a final state is accepted', steps: [[json({ status: 'completed', message: 'done' })], [json({ result: { url: '/x' } })]], expect: { status: 'completed', message: 'done', result: { url: '/x' } } },
  { name: 'another final status is accepted, and clears the message', steps: [[json({ status: 'completed', message: 'done' })], [json({ status: 'failed' })]], expect: { status: 'failed' } },
  { name: 'restart begins anew: the state replaced', steps: [[json({ status: 'completed', result: { r: 1 } })], [json({ status: 'queued' }), { restart: true }]], expect: { status: 'queued' } },
]

function quiet(): BrokerListener {
  return { message() {}, state() {}, restored() {} }
}

/** The stored state as comparable text: epoch and ts masked, seq kept. */
function normalized(state: Buffer): string {
  const obj = state[0]! >= 0x80 ? (unpack(state) as Record<string, unknown>) : (JSON.parse(state.toString()) as Record<string, unknown>)
  return JSON.stringify({ ...obj, epoch: 'E', ...(obj.ts === undefined ? {} : { ts: 'T' }) })
}

function strip(state: Buffer): Record<string, unknown> {
  const obj = state[0]! >= 0x80 ? (unpack(state) as Record<string, unknown>) : (JSON.parse(state.toString()) as Record<string, unknown>)
  const { seq: _s, epoch: _e, ts: _t, ...rest } = obj
  return rest
}

async function run(broker: Broker, jobId: string, c: Case): Promise<{ state: Buffer | null; error: Error | null }> {
  let error: Error | null = null
  for (const [i, [payload, options]] of c.steps.entries()) {
    try {
      await broker.publishProgress(jobId, typeof payload === 'string' ? Buffer.from(payload) : payload, options)
    } catch (err) {
      if (i < c.steps.length - 1) throw err
      error = err as Error
    }
  }
  return { state: (await broker.readJobs([jobId]))[0]!.state, error }
}

t.test('merge rules: the script and the embedded broker agree, case by case', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const script = new RedisBroker(redis.url, names, createLogger('silent'))
  const embedded = new EmbeddedBroker(names)
  t.teardown(async () => {
    await script.close()
    await embedded.close()
  })
  script.start(quiet())
  embedded.start(quiet())
  await redis.client().ping()
  for (const [n, c] of CASES.entries()) {
    const jobId = `case-${n}`
    const results = { script: await run(script, jobId, c), embedded: await run(embedded, jobId, c) }
    for (const [kind, { state, error }] of Object.entries(results)) {
      if (c.expect instanceof RegExp) {
        t.match(error?.message, c.expect, `${c.name} (${kind}): refused`)
        if (c.unchanged) t.same(state && strip(state), c.unchanged, `${c.name} (${kind}): nothing written`)
      } else {
        t.equal(error, null, `${c.name} (${kind}): accepted`)
        t.strictSame(state && strip(state), c.expect, `${c.name} (${kind})`)
      }
    }
    const [a, b] = [results.script.state, results.embedded.state]
    t.equal(a && normalized(a), b && normalized(b), `${c.name}: the same state, key order included`)
    t.equal(results.script.error?.constructor.name, results.embedded.error?.constructor.name, `${c.name}: the same error class`)
  }
})

// The sources' vocabulary, without Redis: how Celery results and BullMQ hashes and events read
// as jobwire states, how job ids route, and how a source numbers what it delivers.

import t from 'tap'
import { compareStreamIds, parseBullmqJobId, translateBullmqEvent, translateBullmqHash } from '../src/sources/bullmq.js'
import { readCeleryResult, translateCelery } from '../src/sources/celery.js'
import { Sources, UnsupportedJob } from '../src/sources/router.js'
import { carryProgress, ownerAt, progressOf, SourceJobs } from '../src/sources/source.js'
import { createLogger } from '../src/support/log.js'

const celery = { tracebacks: false, ownerField: '' }
const meta = (status: string, result: unknown, extra: Record<string, unknown> = {}) =>
  ({ status, result, traceback: null, children: [], date_done: null, task_id: 't1', ...extra })

t.test('Celery states in jobwire\'s vocabulary', async (t) => {
  const status = (s: string, result: unknown = null) => translateCelery(meta(s, result), celery)!.state.status
  t.equal(status('PENDING'), 'queued')
  t.equal(status('RECEIVED'), 'queued')
  t.equal(status('STARTED', { pid: 1, hostname: 'h' }), 'processing')
  t.equal(status('RETRY', { exc_type: 'IOError', exc_message: ['later'] }), 'processing')
  t.equal(status('PROGRESS', { current: 1, total: 2 }), 'processing')
  t.equal(status('ANY_CUSTOM_STATE', {}), 'processing')
  t.equal(status('SUCCESS', 42), 'completed')
  t.equal(status('FAILURE', { exc_type: 'ValueError', exc_message: ['x'] }), 'failed')
  t.equal(status('REVOKED', { exc_type: 'TaskRevokedError', exc_message: ['revoked'] }), 'cancelled')
  t.equal(translateCelery({ result: 1 }, celery), null, 'no status: not a Celery result')
  t.equal(translateCelery('text', celery), null)
})

t.test('Celery: progress, meta, result, error, traceback, owner', async (t) => {
  t.same(translateCelery(meta('PROGRESS', { progress: 130, message: 'm', stall_after: 5 }), celery)!.state,
    { status: 'processing', source: 'celery', source_status: 'PROGRESS', progress: 100, message: 'm', stall_after: 5, meta: { progress: 130, message: 'm', stall_after: 5 } })
  t.equal(translateCelery(meta('PROGRESS', { current: 1, total: 4 }), celery)!.state.progress, 25)
  t.equal(translateCelery(meta('PROGRESS', { current: 1, total: 0 }), celery)!.state.progress, undefined, 'no division by zero')
  t.match(translateCelery(meta('SUCCESS', { url: '/a' }, { name: 'tasks.x' }), celery)!.state, { progress: 100, result: { url: '/a' }, task: 'tasks.x' })
  t.equal(translateCelery(meta('SUCCESS', null), celery)!.state.result, null, 'a task returning None')
  const failure = meta('FAILURE', { exc_type: 'KeyError', exc_message: ['k', 2] }, { traceback: 'Traceback...' })
  t.match(translateCelery(failure, celery)!.state, { error: 'KeyError: k, 2' })
  t.equal(translateCelery(failure, celery)!.state.traceback, undefined, 'no traceback by default')
  t.equal(translateCelery(failure, { ...celery, tracebacks: true })!.state.traceback, 'Traceback...')
  t.match(translateCelery(meta('RETRY', { exc_type: 'IOError', exc_message: 'later' }), celery)!.state, { message: 'retrying after IOError: later' })
  const started = translateCelery(meta('STARTED', { pid: 1, hostname: 'celery@box' }), celery)!.state
  t.notOk(JSON.stringify(started).includes('celery@box'), 'the worker\'s host stays on the server')
  const extended = meta('PROGRESS', {}, { kwargs: { user_id: 'alice', n: 3 }, args: ['secret'] })
  t.equal(translateCelery(extended, { ...celery, ownerField: 'user_id' })!.owner, 'alice')
  t.equal(translateCelery(extended, celery)!.owner, null, 'no owner field, no owner')
  t.notOk(JSON.stringify(translateCelery(extended, celery)!.state).includes('secret'), 'arguments stay on the server')
})

t.test('BullMQ hashes', async (t) => {
  t.equal(translateBullmqHash({}, ''), null, 'a missing job')
  t.match(translateBullmqHash({ name: 'n', data: '{"userId":"u1"}', timestamp: '1' }, 'userId'), { state: { status: 'queued', name: 'n' }, owner: 'u1' })
  t.match(translateBullmqHash({ processedOn: '2', ats: '1', progress: '{"percent":40,"x":1}' }, '')!.state,
    { status: 'processing', progress: 40, meta: { percent: 40, x: 1 } })
  t.match(translateBullmqHash({ processedOn: '2', ats: '1', atm: '1', failedReason: 'once' }, '')!.state, { status: 'queued' }, 'waiting for a retry')
  t.match(translateBullmqHash({ processedOn: '2', finishedOn: '3', returnvalue: 'null', progress: '7' }, '')!.state, { status: 'completed', progress: 100, result: null })
  t.match(translateBullmqHash({ processedOn: '2', finishedOn: '3', failedReason: 'boom', progress: '7' }, '')!.state, { status: 'failed', error: 'boom', progress: 7 })
  t.equal(translateBullmqHash({ data: '{"user":{"id":7}}' }, 'user.id')!.owner, '7', 'a path into the data')
})

t.test('BullMQ events merge onto the last state', async (t) => {
  const last = { status: 'processing', source: 'bullmq', name: 'n', progress: 40, meta: { percent: 40 } }
  t.match(translateBullmqEvent({ event: 'progress', jobId: '1', data: '55' }, last), { status: 'processing', progress: 55, name: 'n', meta: { percent: 40 } })
  t.match(translateBullmqEvent({ event: 'failed', jobId: '1', failedReason: 'x' }, last), { status: 'failed', error: 'x', progress: 40 })
  t.match(translateBullmqEvent({ event: 'completed', jobId: '1', returnvalue: '{"a":1}' }, last), { status: 'completed', progress: 100, result: { a: 1 } })
  t.match(translateBullmqEvent({ event: 'removed', jobId: '1' }, last), { status: 'cancelled' })
  t.equal(translateBullmqEvent({ event: 'removed', jobId: '1' }, { ...last, status: 'completed' }), null, 'removing a finished job does not unfinish it')
  t.match(translateBullmqEvent({ event: 'stalled', jobId: '1' }, last), { status: 'queued', stalled: true })
  t.equal(translateBullmqEvent({ event: 'active', jobId: '1' }, { ...last, stalled: true })!.stalled, undefined, 'the next event clears stalled')
  t.equal(translateBullmqEvent({ event: 'active', jobId: '1' }, { ...last, status: 'failed', error: 'x' })!.error, undefined, 'a retry forgets the last error')
  t.match(translateBullmqEvent({ event: 'added', jobId: '1', name: 'n2' }, null), { status: 'queued', name: 'n2' })
  t.equal(translateBullmqEvent({ event: 'drained' }, null), null)
  t.equal(translateBullmqEvent({ event: 'retries-exhausted', jobId: '1' }, last), null)
})

t.test('job ids, stream ids, owners, progress', async (t) => {
  t.same(parseBullmqJobId('bullmq:videos:42'), { queue: 'videos', id: '42' })
  t.same(parseBullmqJobId('bullmq:videos:a:b'), { queue: 'videos', id: 'a:b' })
  t.equal(parseBullmqJobId('bullmq:videos'), null)
  t.equal(parseBullmqJobId('bullmq::1'), null)
  t.equal(parseBullmqJobId('bullmq:videos:'), null)
  t.ok(compareStreamIds('10-1', '9-5') > 0)
  t.ok(compareStreamIds('10-10', '10-9') > 0, 'numbers, not text')
  t.equal(compareStreamIds('10-1', '10-1'), 0)
  t.equal(ownerAt({ a: { b: '' } }, 'a.b'), null, 'an empty owner is none')
  t.equal(ownerAt({ a: true }, 'a'), null)
  t.equal(progressOf(-5), 0)
  t.equal(progressOf(Number.NaN), undefined)
  t.equal(progressOf({ percent: 'x' }), undefined)
  t.same(carryProgress({ status: 'failed' }, { progress: 60 }), { status: 'failed', progress: 60 })
  t.same(carryProgress({ status: 'queued' }, { progress: 60 }), { status: 'queued' }, 'queued again starts over')
})

t.test('routing: source prefixes, and sources without a Redis', async (t) => {
  const base = { channelPrefix: 'progress:', celeryRedisUrl: '', celeryTracebacks: false, celeryOwnerField: '', bullmqRedisUrl: '', bullmqPrefix: 'bull', bullmqOwnerField: '' }
  const log = createLogger('silent')
  const embedded = new Sources({ ...base, redisUrl: '' }, log)
  t.equal(embedded.route('video-42'), null, 'jobwire\'s own jobs stay the broker\'s')
  t.ok(embedded.route('celery:abc') instanceof UnsupportedJob)
  t.match(embedded.route('celery:abc'), { source: 'celery', reason: /--celery-redis/ })
  t.match(embedded.route('bullmq:q:1'), { source: 'bullmq', reason: /--bullmq-redis/ })
  t.match(JSON.parse((embedded.route('celery:abc') as UnsupportedJob).state.toString()), { status: 'failed', source_status: 'unsupported' })
  const withRedis = new Sources({ ...base, redisUrl: 'redis://127.0.0.1:1' }, log)
  t.equal(withRedis.route('celery:abc')!.constructor.name, 'CelerySource', 'the gateway\'s Redis by default')
  t.equal(withRedis.route('bullmq:q:1')!.constructor.name, 'BullmqSource')
  t.match(withRedis.route('celery:'), { reason: /celery:<task id>/ })
  t.match(withRedis.route('bullmq:q'), { reason: /bullmq:<queue>:<job id>/ })
  await withRedis.close() // nothing was opened: connections are made on first use
})

t.test('a source numbers what it delivers: seq 1, 2, 3; snapshots carry the last; a new server renews the epoch', async (t) => {
  const jobs = new SourceJobs()
  const job = jobs.add('celery:a')
  t.equal(jobs.add('celery:a'), job, 'one record per job')
  const stored = (bytes: Buffer) => JSON.parse(bytes.toString()) as Record<string, unknown>
  t.match(stored(jobs.stored(job, { status: 'queued' }, null)), { seq: 0, epoch: job.epoch, status: 'queued' })
  t.match(stored(jobs.deliver(job, { status: 'processing' })), { seq: 1, epoch: job.epoch })
  t.match(stored(jobs.deliver(job, { status: 'processing', progress: 5 })), { seq: 2 })
  t.match(stored(jobs.stored(job, { status: 'processing' }, null)), { seq: 2 }, 'a snapshot is as new as the last payload delivered, no newer')
  const epoch = job.epoch
  jobs.renew()
  t.ok(job.epoch > epoch, 'a new generation')
  t.ok(stored(jobs.stored(undefined, {}, null)).epoch as number > job.epoch, 'a one-off read has its own generation')
  jobs.delete('celery:a')
  t.equal(jobs.size, 0)
})

t.test('a job id that names another owner is a new generation, without what the old job carried', async (t) => {
  const jobs = new SourceJobs()
  const job = jobs.add('celery:reused')
  const parsed = (bytes: Buffer) => JSON.parse(bytes.toString()) as Record<string, unknown>
  const first = parsed(jobs.stored(job, { status: 'processing', progress: 40 }, 'alice'))
  t.equal(parsed(jobs.deliver(job, { status: 'processing', progress: 50 }, 'alice')).epoch, first.epoch, 'the same owner: the same generation')
  t.equal(parsed(jobs.deliver(job, { status: 'processing' })).epoch, first.epoch, 'a message that names no owner changes nothing')
  const taken = parsed(jobs.deliver(job, { status: 'processing' }, 'bob'))
  t.ok((taken.epoch as number) > (first.epoch as number), 'another owner: a new epoch')
  t.equal(job.owner, 'bob')
  const read = parsed(jobs.stored(job, { status: 'completed' }, null))
  t.ok((read.epoch as number) > (taken.epoch as number), 'a read that finds no owner any more is another generation too')
  jobs.newGeneration(job)
  t.equal(job.last, null, 'a new generation forgets the old job\'s state')
})

t.test('a result that cannot be shown keeps its status and says why; nothing ends the process', async (t) => {
  const options = { tracebacks: false, ownerField: 'user_id' }
  const meta = (result: string) => Buffer.from(`{"status": "SUCCESS", "result": ${result}, "kwargs": {"user_id": "alice"}}`)
  const jobs = new SourceJobs()
  const job = jobs.add('celery:x')
  const sent = (record: ReturnType<typeof readCeleryResult>) => JSON.parse(jobs.deliver(job, record!.state).toString()) as Record<string, unknown>

  const deep = '['.repeat(6000) + ']'.repeat(6000)
  t.match(sent(readCeleryResult(meta(deep), options)), { status: 'completed', error: /not shown: .*deeper than 64/ }, '6,000-deep JSON')
  t.notOk('result' in sent(readCeleryResult(meta(deep), options)))
  const nan = readCeleryResult(meta('{"loss": NaN, "best": -Infinity, "note": "NaN stays in a string"}'), options)
  t.match(sent(nan), { status: 'completed', error: /not finite \(NaN or Infinity\)/ }, "Python's NaN")
  t.equal(nan!.owner, 'alice', 'the owner is still read')
  t.match(sent(readCeleryResult(meta(JSON.stringify('x'.repeat(300 * 1024))), options)), { status: 'completed', error: /larger than 262144 bytes/ }, 'over the payload limit')
  const huge = Buffer.concat([Buffer.from('{"status": "FAILURE", "result": "'), Buffer.alloc(5 * 1024 * 1024, 0x61), Buffer.from('"}')])
  t.match(sent(readCeleryResult(huge, options)), { status: 'failed', source_status: 'FAILURE', error: /more than the 4194304 bytes jobwire reads/ }, 'too large to parse')
  t.equal(readCeleryResult(Buffer.from([0xff, 0xfe, 0x00]), options), null, 'binary: not a result')
  t.equal(readCeleryResult(Buffer.from('{"status": 7}'), options), null, 'a status that is not a string: not a result')
  t.match(sent({ state: translateBullmqEvent({ event: 'completed', returnvalue: deep }, null)!, owner: null, ownerKnown: false }), { status: 'completed', error: /deeper/ }, 'BullMQ: the same guard')
  const failed = readCeleryResult(Buffer.from(`{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["bad", ${'['.repeat(20000)}${']'.repeat(20000)}]}}`), options)
  t.match(sent(failed), { status: 'failed', error: /^ValueError: bad, \(an argument not shown: .*deeper than 64/ }, "an exception's argument nested 20,000 deep")
})

t.test('WatchedJobs routes source jobs to their source: watch on the first holder, unwatch after the delay; broker outages do not touch them', async (t) => {
  const calls: string[] = []
  let release: () => void = () => undefined
  const source = {
    name: 'celery' as const,
    start: () => undefined,
    watch: (ids: readonly string[]) => {
      calls.push(`watch ${ids.join(',')}`)
      return new Promise<void>((resolve) => (release = resolve))
    },
    unwatch: (ids: readonly string[]) => void calls.push(`unwatch ${ids.join(',')}`),
    read: async () => [],
    close: async () => undefined,
  }
  const broker = { subscribe: async (channels: readonly string[]) => void calls.push(`subscribe ${channels.join(',')}`), unsubscribe: async () => undefined }
  const { WatchedJobs } = await import('../src/stream/watched-jobs.js')
  const unsupported = new UnsupportedJob('bullmq', 'no redis')
  const jobs = new WatchedJobs(broker as never, {
    mode: 'per-job', channelPrefix: 'p:', unsubscribeDelayMs: 20,
    sources: { route: (id: string) => (id.startsWith('celery:') ? source : id.startsWith('bullmq:') ? unsupported : null) },
  }, createLogger('silent'))
  const a = jobs.acquire('celery:a')
  jobs.acquire('celery:b')
  jobs.acquire('celery:a')
  jobs.acquire('plain')
  const live = jobs.whenLive(a)
  await new Promise((r) => setImmediate(r))
  t.same(calls, ['watch celery:a,celery:b', 'subscribe p:plain'], 'one watch for the turn\'s source jobs; the broker gets only its own')
  release()
  await live
  t.ok(jobs.isLive(a))
  jobs.markAllDown()
  t.ok(jobs.isLive(a), 'a broker outage is not the source\'s')
  jobs.sourceLive(['celery:a'], false)
  t.notOk(jobs.isLive(a), 'the source says when its jobs are down')
  jobs.sourceLive(['celery:a'], true)
  await jobs.whenLive(a)
  const refused = jobs.acquire('bullmq:q:1')
  await jobs.whenLive(refused)
  t.pass('a job no source can serve is live at once: its snapshot says why')
  jobs.release(a)
  jobs.release(a)
  await new Promise((r) => setTimeout(r, 60))
  t.ok(calls.includes('unwatch celery:a'), 'unwatched after the delay')
  t.notOk(calls.some((c) => c.includes('unwatch') && c.includes('celery:b')), 'a job still held stays watched')
  jobs.dispose()
})

t.test('SourceJobs: a finished job that reports progress again (run again under its id) is a new epoch: final is final within one', (t) => {
  const jobs = new SourceJobs()
  const job = jobs.add('celery:x')
  const read = (bytes: Buffer) => JSON.parse(bytes.toString()) as { seq: number; epoch: number; status: string }
  const first = read(jobs.deliver(job, { status: 'processing' }))
  const done = read(jobs.deliver(job, { status: 'completed' }))
  t.equal(done.epoch, first.epoch)
  const again = read(jobs.deliver(job, { status: 'processing' }))
  t.not(again.epoch, done.epoch, 'another epoch, not processing after completed in one')
  const failed = read(jobs.deliver(job, { status: 'failed' }))
  t.equal(failed.epoch, again.epoch)
  t.equal(read(jobs.deliver(job, { status: 'failed', error: 'x' })).epoch, again.epoch, 'terminal after terminal stays')
  t.end()
})

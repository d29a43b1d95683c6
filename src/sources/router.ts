// Which source a job id belongs to, by its prefix: `celery:<task_id>` and
// `bullmq:<queue>:<job_id>` are read from those queues; every other id is a jobwire job, as it
// always was. A source whose Redis is unknown (the embedded broker, and no --celery-redis or
// --bullmq-redis) answers its ids at once with a terminal state that says what to configure,
// rather than leaving a watcher waiting for messages that cannot come. It is a state, not a
// protocol error, so that every transport (WebSocket, SSE, polling) and every client already
// handles it: a watcher stops waiting on a terminal status and shows the error.

import type { Logger } from '../support/log.js'
import { BULLMQ_JOB_PREFIX, BullmqSource, parseBullmqJobId } from './bullmq.js'
import { CELERY_JOB_PREFIX, CelerySource } from './celery.js'
import type { JobPayload } from '../wire/protocol.js'
import type { JobSource, SourceHooks, SourceName } from './source.js'

/** Why a job id cannot be watched on this gateway. */
export class UnsupportedJob {
  /** The job's snapshot, the same on every read: `failed`, with the reason as its error. */
  readonly state: Buffer

  constructor(readonly source: SourceName, readonly reason: string) {
    const state: JobPayload = { status: 'failed', source, source_status: 'unsupported', error: reason }
    this.state = Buffer.from(JSON.stringify(state))
  }
}

/** What WatchedJobs, the snapshot reader and the watch flow need: `null` for jobwire's own jobs. */
export interface SourceRoutes {
  route(jobId: string): JobSource | UnsupportedJob | null
}

export interface SourcesConfig {
  readonly redisUrl: string
  readonly channelPrefix: string
  readonly celeryRedisUrl: string
  readonly celeryTracebacks: boolean
  readonly celeryOwnerField: string
  readonly bullmqRedisUrl: string
  readonly bullmqPrefix: string
  readonly bullmqOwnerField: string
}

const NO_CELERY = new UnsupportedJob('celery',
  'celery: job ids need the Redis of Celery\'s result backend: start the gateway with --celery-redis <url> (or --redis)')
const NO_BULLMQ = new UnsupportedJob('bullmq',
  'bullmq: job ids need the Redis of the BullMQ queues: start the gateway with --bullmq-redis <url> (or --redis)')
const BAD_CELERY = new UnsupportedJob('celery', 'a Celery job id is celery:<task id>')
const BAD_BULLMQ = new UnsupportedJob('bullmq', 'a BullMQ job id is bullmq:<queue>:<job id>')

export class Sources implements SourceRoutes {
  private readonly celery: CelerySource | null
  private readonly bullmq: BullmqSource | null

  constructor(config: SourcesConfig, log: Logger) {
    const celeryUrl = config.celeryRedisUrl || config.redisUrl
    const bullmqUrl = config.bullmqRedisUrl || config.redisUrl
    this.celery = celeryUrl === '' ? null : new CelerySource(celeryUrl, config.channelPrefix,
      { tracebacks: config.celeryTracebacks, ownerField: config.celeryOwnerField }, log.child({ source: 'celery' }))
    this.bullmq = bullmqUrl === '' ? null : new BullmqSource(bullmqUrl, config.channelPrefix,
      { prefix: config.bullmqPrefix, ownerField: config.bullmqOwnerField }, log.child({ source: 'bullmq' }))
  }

  route(jobId: string): JobSource | UnsupportedJob | null {
    if (jobId.startsWith(CELERY_JOB_PREFIX)) {
      if (jobId.length === CELERY_JOB_PREFIX.length) return BAD_CELERY
      return this.celery ?? NO_CELERY
    }
    if (jobId.startsWith(BULLMQ_JOB_PREFIX)) {
      if (parseBullmqJobId(jobId) === null) return BAD_BULLMQ
      return this.bullmq ?? NO_BULLMQ
    }
    return null
  }

  start(hooks: SourceHooks): void {
    this.celery?.start(hooks)
    this.bullmq?.start(hooks)
  }

  async close(): Promise<void> {
    await Promise.all([this.celery?.close(), this.bullmq?.close()])
  }
}

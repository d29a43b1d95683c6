// The Node producer: report a job's progress the way jobwire expects (stored state + seq +
// publish, atomically, through progress.lua). Workers in other languages run the same script.
//
//   const producer = new Producer({ redis: 'redis://127.0.0.1:6379' })
//   await producer.progress('job-42', { status: 'processing', progress: 40 }, { owner: 'user-7' })

import { pack } from 'msgpackr'
import { Redis } from 'ioredis'
import type { BrokerNames, ProgressOptions } from '../broker/broker.js'
import { isPlainObject } from '../wire/payload.js'
import { isValidJobId, JOB_ID_RULE, type JobPayload } from '../wire/protocol.js'
import { channelFor } from '../wire/topics.js'
import { ProducerError } from './merge.js'
import { runProgressScript } from './script.js'

export interface ProducerOptions {
  /** A Redis URL, or a connection to share (it is not closed by close()). */
  readonly redis: string | Redis
  readonly channelPrefix?: string
  readonly keyPrefix?: string
  readonly stateTtlSec?: number
  readonly terminalTtlSec?: number
  /** How payloads are encoded on the wire; msgpack is smaller for large results. */
  readonly encoding?: 'json' | 'msgpack'
}

export class Producer {
  private readonly redis: Redis
  private readonly ownsConnection: boolean
  private readonly names: BrokerNames
  private readonly encoding: 'json' | 'msgpack'

  constructor(options: ProducerOptions) {
    this.ownsConnection = typeof options.redis === 'string'
    if (typeof options.redis === 'string') {
      this.redis = new Redis(options.redis, { maxRetriesPerRequest: 3 })
      // Failures reach the caller as rejected progress() calls; the connection retries.
      this.redis.on('error', () => undefined)
    } else {
      this.redis = options.redis
    }
    this.names = {
      channelPrefix: options.channelPrefix ?? 'progress:',
      keyPrefix: options.keyPrefix ?? 'jobwire:',
      stateTtlSec: options.stateTtlSec ?? 86_400,
      terminalTtlSec: options.terminalTtlSec ?? 3_600,
    }
    this.encoding = options.encoding ?? 'json'
  }

  /** Stores `payload` as the job's state and publishes it; resolves to the job's new seq. */
  async progress(jobId: string, payload: JobPayload, options: ProgressOptions = {}): Promise<number> {
    return runProgressScript(this.redis, this.names, checkJobId(jobId), this.encode(payload), options)
  }

  /** A plain PUBLISH without stored state, as workers that predate jobwire do. Subscribers
   * still receive it; the snapshot is then whatever the gateway last saw. */
  async publish(jobId: string, payload: JobPayload): Promise<void> {
    await this.redis.publish(channelFor(this.names.channelPrefix, checkJobId(jobId)), this.encode(payload))
  }

  async close(): Promise<void> {
    if (!this.ownsConnection) return
    if (this.redis.status === 'ready') await this.redis.quit()
    else this.redis.disconnect()
  }

  private encode(payload: JobPayload): Buffer {
    if (!isPlainObject(payload)) throw new ProducerError('payload must be an object')
    return this.encoding === 'msgpack' ? pack(payload) : Buffer.from(JSON.stringify(payload))
  }
}

function checkJobId(jobId: string): string {
  if (!isValidJobId(jobId)) throw new ProducerError(`'${String(jobId).slice(0, 140)}' is not a job id (${JOB_ID_RULE})`)
  return jobId
}

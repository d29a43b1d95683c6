// The Node producer: report a job's progress the way jobwire expects (stored state + seq +
// publish, atomically, through progress.lua). Workers in other languages run the same script.
//
//   const producer = new Producer({ redis: 'redis://127.0.0.1:6379' })
//   await producer.progress('job-42', { status: 'processing', progress: 40 }, { owner: 'user-7' })
//   await producer.progress('job-42', { progress: 41 })     // merged: status stays 'processing'
//   await producer.progress('job-42', { status: 'queued' }, { restart: true })  // run it again
//   await producer.close()                                  // or the process keeps running
//   new Producer({ cluster: '10.0.0.1:7000,10.0.0.2:7000' })  // Redis Cluster: sharded pub/sub
//
// On Redis Cluster an update of a job with an owner takes two steps: the script stores and
// publishes it in the job's slot, then the job is listed under its owner in the owner's slot
// (owner-index.ts). Should only the second fail, progress() rejects with OwnerIndexError,
// whose `seq` is the update's: it was stored and published, and the job's next update lists
// it again.
//
// The owner given for a job is remembered (the last OWNERS_REMEMBERED jobs) and sent with each
// of its later updates, so the job keeps its owner even when its state key and the owner key
// beside it are both gone (docs/protocol.md, "Ownership").

import { pack } from 'msgpackr'
import { Redis, type Cluster } from 'ioredis'
import type { BrokerNames, ProgressOptions } from '../broker/broker.js'
import { clusterClient, parseClusterSeeds, publishInOrder } from '../broker/cluster-seeds.js'
import { isPlainObject } from '../wire/payload.js'
import { isValidJobId, JOB_ID_RULE, type JobPayload } from '../wire/protocol.js'
import { channelFor } from '../wire/topics.js'
import { OwnerConflict, ProducerError } from './merge.js'
import { runProgressScript } from './script.js'

export { OwnerIndexError } from './owner-index.js'
export { FinalState, OwnerConflict, ProducerError, SeqMismatch } from './merge.js'

/** How many jobs' owners a Producer remembers (least recently updated forgotten first). */
export const OWNERS_REMEMBERED = 10_000

export interface ProducerOptions {
  /** A Redis URL, or a connection to share (it is not closed by close()). */
  readonly redis?: string | Redis
  /** Instead of `redis`, a Redis Cluster: nodes to start from (host:port[,host:port...]), or a
   * cluster client to share (not closed by close()). The job's keys then carry its channel as
   * their hash tag, the script publishes with SPUBLISH, and the owner's job index is kept as a
   * second step (docs/protocol.md). */
  readonly cluster?: string | readonly string[] | Cluster
  readonly channelPrefix?: string
  readonly keyPrefix?: string
  readonly stateTtlSec?: number
  readonly terminalTtlSec?: number
  /** How payloads are encoded on the wire; msgpack is smaller for large results. */
  readonly encoding?: 'json' | 'msgpack'
}

export class Producer {
  private readonly redis: Redis | Cluster
  private readonly ownsConnection: boolean
  private readonly names: BrokerNames
  private readonly encoding: 'json' | 'msgpack'
  /** Job id -> the owner this producer was given for it; a Map's order serves as the LRU. */
  private readonly owners = new Map<string, string>()

  constructor(options: ProducerOptions) {
    if ((options.redis === undefined) === (options.cluster === undefined)) {
      throw new TypeError('Producer: give either redis (a single Redis) or cluster (a Redis Cluster)')
    }
    const cluster = options.cluster
    this.ownsConnection = typeof options.redis === 'string' || typeof cluster === 'string' || Array.isArray(cluster)
    if (typeof options.redis === 'string') {
      this.redis = new Redis(options.redis, { maxRetriesPerRequest: 3 })
    } else if (options.redis !== undefined) {
      this.redis = options.redis
    } else if (typeof cluster === 'string' || Array.isArray(cluster)) {
      this.redis = clusterClient(parseClusterSeeds(cluster as string | readonly string[]), { redisOptions: { maxRetriesPerRequest: 3 } })
    } else {
      this.redis = cluster as Cluster
    }
    // Failures reach the caller as rejected progress() calls; the connection retries.
    if (this.ownsConnection) this.redis.on('error', () => undefined)
    this.names = {
      cluster: cluster !== undefined,
      channelPrefix: options.channelPrefix ?? 'progress:',
      keyPrefix: options.keyPrefix ?? 'jobwire:',
      stateTtlSec: options.stateTtlSec ?? 86_400,
      terminalTtlSec: options.terminalTtlSec ?? 3_600,
    }
    this.encoding = options.encoding ?? 'json'
  }

  /** Merges `payload`'s fields into the job's stored state (or, with `replace`, stores it as
   * the whole state) and publishes the result; resolves to the job's new seq. Rejects with
   * ProducerError when the payload is refused (nothing written): FinalState when it would
   * take a completed, failed or cancelled job back to running (pass `restart`), SeqMismatch
   * when `ifSeq` does not match; and on a cluster with OwnerIndexError when the update went
   * through but its owner's job list was not updated. The owner given once is sent again with
   * every later update of the job. */
  async progress(jobId: string, payload: JobPayload, options: ProgressOptions = {}): Promise<number> {
    checkJobId(jobId)
    const bytes = this.encode(payload)
    const remembered = this.owners.get(jobId)
    const owner = options.owner || remembered
    if (owner) {
      this.owners.delete(jobId)
      this.owners.set(jobId, owner)
      if (this.owners.size > OWNERS_REMEMBERED) this.owners.delete(this.owners.keys().next().value!)
    }
    try {
      return await runProgressScript(this.redis, this.names, jobId, bytes, owner ? { ...options, owner } : options)
    } catch (err) {
      // An admin gave the job to someone else since: the remembered owner is out of date, and
      // no owner at all is what this call asked for.
      if (!(err instanceof OwnerConflict) || options.owner || remembered === undefined) throw err
      this.owners.delete(jobId)
      return runProgressScript(this.redis, this.names, jobId, bytes, options)
    }
  }

  /** A plain PUBLISH without stored state, as workers that predate jobwire do. Subscribers
   * still receive it; the snapshot is then whatever the gateway last saw. */
  async publish(jobId: string, payload: JobPayload): Promise<void> {
    const channel = channelFor(this.names.channelPrefix, checkJobId(jobId))
    if (this.names.cluster) await publishInOrder(this.redis as Cluster, channel, this.encode(payload))
    else await this.redis.publish(channel, this.encode(payload))
  }

  /** Closes the connection it opened (not one it was given), so the process can exit. */
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

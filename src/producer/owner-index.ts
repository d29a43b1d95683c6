// A user's jobs ("my jobs"): the producer script indexes every job that has an owner in a
// sorted set per owner, <key prefix>owner:<user> (member: job id, score: ms of its last
// update), and PUBLISHes a job's id on <key prefix>user-jobs:<user> when it enters that set.
// The gateway reads the set for GET /jobs?owner=me and subscribe_user_jobs, and subscribes to
// the channel while someone watches the user's jobs. Both names live under the key prefix,
// outside the channel prefix's namespace, so a pattern subscription to job channels never
// sees them and no job id can be mistaken for them.
//
// On Redis Cluster the set lives in another slot than the job, out of the producer script's
// reach: the producer keeps it as a second step (indexOwner, owner-index.lua), not atomic with
// the first, and the gateway reads it through the cluster broker's client.

import { readFileSync } from 'node:fs'
import { Redis, type Cluster } from 'ioredis'
import { projectPath } from '../support/paths.js'

/** Jobs an owner's index keeps at most (the most recently updated). */
export const MAX_OWNER_JOBS = 1000

export function ownerIndexKey(keyPrefix: string, owner: string): string {
  return `${keyPrefix}owner:${owner}`
}

export function userJobsChannel(keyPrefix: string, owner: string): string {
  return `${keyPrefix}user-jobs:${owner}`
}

export const OWNER_INDEX_SCRIPT = readFileSync(projectPath('src', 'producer', 'owner-index.lua'), 'utf8')

const COMMAND = 'jobwireOwnerIndex'
type IndexRunner = (index: string, jobId: string, channel: string, keepSec: number) => Promise<number>

/** The second step on Redis Cluster failed: the update itself was stored and published (its
 * seq is `seq`), but the job is missing from its owner's list, and was not announced, until
 * its next update indexes it again. Not a ProducerError: something was written. */
export class OwnerIndexError extends Error {
  override name = 'OwnerIndexError'
  constructor(readonly jobId: string, readonly seq: number, readonly owner: string, cause: Error) {
    super(`job ${jobId} was updated (seq ${seq}), but its owner's job list (${owner}) could not be: ${cause.message}`, { cause })
  }
}

/**
 * Lists the job under `owner` (announcing it when new there) and takes it off `previous`'s
 * list when an admin gave it away: what progress.lua does in its own step on a single Redis,
 * for Redis Cluster, where each owner's set lives in a slot of its own. `keepSec` is the
 * longest state TTL. Resolves to whether the job was new on the owner's list.
 */
export async function indexOwner(redis: Redis | Cluster, keyPrefix: string, jobId: string, owner: string, previous: string, keepSec: number): Promise<boolean> {
  if (!(COMMAND in redis)) redis.defineCommand(COMMAND, { numberOfKeys: 1, lua: OWNER_INDEX_SCRIPT })
  if (previous !== '' && previous !== owner) await redis.zrem(ownerIndexKey(keyPrefix, previous), jobId)
  if (owner === '') return false
  const run = (redis as unknown as Record<string, IndexRunner>)[COMMAND]!.bind(redis)
  return (await run(ownerIndexKey(keyPrefix, owner), jobId, userJobsChannel(keyPrefix, owner), keepSec)) === 1
}

/** The owner's job ids, most recently updated first, through any client that reaches the set. */
export function readOwnerJobs(redis: Redis | Cluster, keyPrefix: string, owner: string, limit: number): Promise<string[]> {
  return redis.zrevrange(ownerIndexKey(keyPrefix, owner), 0, Math.max(0, limit - 1))
}

export interface OwnerIndex {
  /** The owner's job ids, most recently updated first; jobs whose state has expired since may
   * still be among them (readers check each job's state and owner). */
  ownerJobs(owner: string, limit: number): Promise<string[]>
}

/** Reads the index in Redis over a connection of its own, opened on first use. (The broker's
 * command connection would do, once the Broker interface has a method for it.) */
export class RedisOwnerIndex implements OwnerIndex {
  private redis: Redis | null = null

  constructor(private readonly url: string, private readonly keyPrefix: string) {}

  async ownerJobs(owner: string, limit: number): Promise<string[]> {
    if (this.redis === null) {
      this.redis = new Redis(this.url, { maxRetriesPerRequest: 2, connectionName: `jobwire-index-${process.pid}` })
      // Failures reach callers as rejected reads; the connection keeps retrying.
      this.redis.on('error', () => undefined)
    }
    return readOwnerJobs(this.redis, this.keyPrefix, owner, limit)
  }

  async close(): Promise<void> {
    const redis = this.redis
    this.redis = null
    if (redis === null) return
    if (redis.status === 'ready') await redis.quit().catch(() => redis.disconnect())
    else redis.disconnect()
  }
}

/** The index a gateway reads: the embedded and Redis Cluster brokers read it themselves (the
 * cluster one through its cluster client); with Redis, a reader of its own; with none of
 * these (a test's broker, say), an empty one. `close` closes only what it opened. */
export function ownerIndexFor(broker: object, redisUrl: string, keyPrefix: string): { index: OwnerIndex; close(): Promise<void> } {
  if ('ownerJobs' in broker && typeof broker.ownerJobs === 'function') return { index: broker as OwnerIndex, close: async () => undefined }
  if (redisUrl !== '') {
    const reader = new RedisOwnerIndex(redisUrl, keyPrefix)
    return { index: reader, close: () => reader.close() }
  }
  return { index: { ownerJobs: async () => [] }, close: async () => undefined }
}

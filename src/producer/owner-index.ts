// A user's jobs ("my jobs"): the producer script indexes every job that has an owner in a
// sorted set per owner, <key prefix>owner:<user> (member: job id, score: ms of its last
// update), and PUBLISHes a job's id on <key prefix>user-jobs:<user> when it enters that set.
// The gateway reads the set for GET /jobs?owner=me and subscribe_user_jobs, and subscribes to
// the channel while someone watches the user's jobs. Both names live under the key prefix,
// outside the channel prefix's namespace, so a pattern subscription to job channels never
// sees them and no job id can be mistaken for them.

import { Redis } from 'ioredis'

/** Jobs an owner's index keeps at most (the most recently updated). */
export const MAX_OWNER_JOBS = 1000

export function ownerIndexKey(keyPrefix: string, owner: string): string {
  return `${keyPrefix}owner:${owner}`
}

export function userJobsChannel(keyPrefix: string, owner: string): string {
  return `${keyPrefix}user-jobs:${owner}`
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
    return this.redis.zrevrange(ownerIndexKey(this.keyPrefix, owner), 0, Math.max(0, limit - 1))
  }

  async close(): Promise<void> {
    const redis = this.redis
    this.redis = null
    if (redis === null) return
    if (redis.status === 'ready') await redis.quit().catch(() => redis.disconnect())
    else redis.disconnect()
  }
}

/** The index a gateway reads: the embedded broker keeps its own; with Redis, a reader of its
 * own; with neither (a test's broker, say), an empty one. `close` closes only what it opened. */
export function ownerIndexFor(broker: object, redisUrl: string, keyPrefix: string): { index: OwnerIndex; close(): Promise<void> } {
  if ('ownerJobs' in broker && typeof broker.ownerJobs === 'function') return { index: broker as OwnerIndex, close: async () => undefined }
  if (redisUrl !== '') {
    const reader = new RedisOwnerIndex(redisUrl, keyPrefix)
    return { index: reader, close: () => reader.close() }
  }
  return { index: { ownerJobs: async () => [] }, close: async () => undefined }
}

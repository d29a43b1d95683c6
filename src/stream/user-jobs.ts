// A user's jobs, for "my jobs" lists that survive a reload and show new jobs live: GET
// /jobs?owner=me lists them, subscribe_user_jobs lists them and then announces each new one.
// The list is the producer script's owner index (producer/owner-index.ts); the announcements
// come from the user's channel, which this process subscribes to only while a socket watches
// that user, with the same machinery (and the same ordering argument) as a job's channel:
// the channel is live before the index is read, and the socket joins the user's topic in the
// same step as it is sent the list, so no new job falls between list and stream.

import type { TemplatedApp } from 'uWebSockets.js'
import type { Principal } from '../access/auth.js'
import type { Transport } from '../access/access.js'
import type { Broker } from '../broker/broker.js'
import { userJobsChannel, type OwnerIndex } from '../producer/owner-index.js'
import { withDeadline } from '../support/deadline.js'
import type { Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import { encodeMessage } from '../wire/frames.js'
import { decodePayload, MalformedPayload } from '../wire/payload.js'
import { isValidJobId, type Encoding, type JobPayload, type ServerMessage } from '../wire/protocol.js'
import type { Refusal } from './watch.js'
import { WatchedJobs } from './watched-jobs.js'

/** With access control off nobody has a user id: `me` is this user, whom the demo records as
 * the owner of the jobs it starts. */
export const LOCAL_USER = 'local'
/** User ids as owners are recorded (the producer API's rule). */
export const USER_PATTERN = /^[^\s]{1,256}$/
/** Jobs a list holds at most. */
export const MAX_LISTED_JOBS = 200
/** Users one socket may watch at once (only admins watch others'). */
export const MAX_USERS_PER_SOCKET = 10

/** `me` (or nothing) is the caller. */
export function resolveUser(principal: Principal | null, requested: string | undefined): string {
  return requested === undefined || requested === '' || requested === 'me' ? principal?.userId ?? LOCAL_USER : requested
}

/** The access rule of jobs, for lists: your own; admins any; with access control off (no
 * identities, and every job readable by anyone) any. */
export function canListUser(principal: Principal | null, user: string): boolean {
  return principal === null || principal.admin || principal.userId === user
}

export interface UserJob {
  readonly job_id: string
  readonly data: JobPayload
}

/** Whoever receives a user's announcements and, after an outage, a fresh list. */
export interface UserJobsReceiver {
  readonly closed: boolean
  send(message: ServerMessage): void
}

export type OpenResult = { readonly ok: true } | { readonly ok: false; readonly refusal: Refusal }

const TOPIC_PREFIX: Record<Encoding, string> = { json: 'uj:', msgpack: 'um:' }

export function userTopic(encoding: Encoding, user: string): string {
  return TOPIC_PREFIX[encoding] + user
}

/** The user of a topic made by userTopic; undefined for any other topic. */
export function parseUserTopic(topic: string): string | undefined {
  return topic.startsWith('uj:') || topic.startsWith('um:') ? topic.slice(3) : undefined
}

export interface UserJobsOptions {
  readonly keyPrefix: string
  readonly unsubscribeDelayMs: number
  /** How long one read of the index and states may take. */
  readonly timeoutMs: number
  /** How long a watch made while the broker is down waits for it. */
  readonly holdMs: number
}

export class UserJobs {
  /** The users' channels this process receives, held by the sockets on their topics. */
  readonly channels: WatchedJobs
  private readonly channelPrefix: Buffer
  private readonly sockets = new Map<UserJobsReceiver, Map<string, 'pending' | 'subscribed'>>()

  constructor(
    private readonly broker: Broker,
    private readonly index: OwnerIndex,
    private readonly app: Pick<TemplatedApp, 'publish' | 'numSubscribers'>,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly options: UserJobsOptions,
  ) {
    const prefix = userJobsChannel(options.keyPrefix, '')
    this.channelPrefix = Buffer.from(prefix)
    // Always per channel: a pattern subscription covers job channels only.
    this.channels = new WatchedJobs(broker, { mode: 'per-job', channelPrefix: prefix, unsubscribeDelayMs: options.unsubscribeDelayMs }, log)
  }

  /** Whether a broker message is a user's announcement rather than a job's message. Costs
   * one comparison of the first byte while nobody watches a user. */
  isUserChannel(channel: Buffer): boolean {
    const prefix = this.channelPrefix
    return this.channels.size > 0 && channel.length > prefix.length && channel[0] === prefix[0] &&
      channel.compare(prefix, 0, prefix.length, 0, prefix.length) === 0
  }

  /** A job entered a user's index: tell the user's sockets. */
  deliver(channel: Buffer, payload: Buffer): void {
    const user = channel.toString('utf8', this.channelPrefix.length)
    const jobId = payload.toString('latin1')
    if (!isValidJobId(jobId)) return
    const message: ServerMessage = { type: 'user_job', user, job_id: jobId }
    for (const encoding of ['json', 'msgpack'] as const) {
      const topic = userTopic(encoding, user)
      const subscribers = this.app.numSubscribers(topic)
      if (subscribers === 0) continue
      this.app.publish(topic, encodeMessage(encoding, message), encoding === 'msgpack')
      this.metrics.framesOut += subscribers
    }
  }

  /** The user's jobs that still exist and still belong to them, most recently updated first. */
  async list(user: string, limit: number): Promise<UserJob[]> {
    const ids = await withDeadline(this.index.ownerJobs(user, Math.min(limit, MAX_LISTED_JOBS)), this.options.timeoutMs, 'owner index read')
    if (ids.length === 0) return []
    const records = await withDeadline(this.broker.readJobs(ids), this.options.timeoutMs, 'job states read')
    const jobs: UserJob[] = []
    records.forEach((record, i) => {
      // An admin may have given the job to someone else since; an expired state lists nothing.
      if (record.owner !== user || record.state === null) return
      const decoded = decodePayload(record.state)
      if (!(decoded instanceof MalformedPayload)) jobs.push({ job_id: ids[i]!, data: decoded.obj })
    })
    return jobs
  }

  /** This socket's watch of the user: pending while its list is read, then subscribed. */
  stateOf(receiver: UserJobsReceiver, user: string): 'pending' | 'subscribed' | undefined {
    return this.sockets.get(receiver)?.get(user)
  }

  watching(receiver: UserJobsReceiver): number {
    return this.sockets.get(receiver)?.size ?? 0
  }

  /**
   * Applies the access rule, waits until the user's channel is live on this node, reads the
   * list, then calls `attach` in the same synchronous step: the receiver joins the user's
   * topic and is sent the list before any later announcement can reach it. `attach` returns
   * false when the receiver has gone.
   */
  async open(receiver: UserJobsReceiver, principal: Principal | null, user: string, transport: Transport,
    attach: (jobIds: string[]) => boolean): Promise<OpenResult> {
    if (!canListUser(principal, user)) return this.refuse(transport, 'forbidden')
    this.set(receiver, user, 'pending')
    const hold = this.channels.acquire(user)
    try {
      await withDeadline(this.channels.whenLive(hold), this.options.holdMs, 'user channel subscription')
      const jobs = await this.list(user, MAX_LISTED_JOBS)
      if (this.stateOf(receiver, user) !== 'pending' || receiver.closed) return { ok: false, refusal: 'gone' }
      if (!attach(jobs.map((j) => j.job_id))) return { ok: false, refusal: 'gone' }
      this.set(receiver, user, 'subscribed')
      return { ok: true }
    } catch (err) {
      this.log.warn({ user, transport, err: (err as Error).message }, 'user jobs watch failed: list unavailable')
      return this.refuse(transport, 'unavailable')
    } finally {
      if (this.stateOf(receiver, user) === 'pending') this.forget(receiver, user)
      this.channels.release(hold)
    }
  }

  /** The receiver stopped watching the user (or, without a user, closed). */
  forget(receiver: UserJobsReceiver, user?: string): void {
    const users = this.sockets.get(receiver)
    if (users === undefined) return
    if (user === undefined) users.clear()
    else users.delete(user)
    if (users.size === 0) this.sockets.delete(receiver)
  }

  /** After a broker outage announcements may have been missed: every watcher gets a fresh
   * list. One attempt; a failure is logged and the next outage's resync tries again. */
  async resync(): Promise<void> {
    const byUser = new Map<string, UserJobsReceiver[]>()
    for (const [receiver, users] of this.sockets) {
      for (const [user, state] of users) if (state === 'subscribed') byUser.set(user, [...(byUser.get(user) ?? []), receiver])
    }
    for (const [user, receivers] of byUser) {
      try {
        const jobIds = (await this.list(user, MAX_LISTED_JOBS)).map((j) => j.job_id)
        for (const r of receivers) if (!r.closed) r.send({ type: 'user_jobs', user, job_ids: jobIds })
      } catch (err) {
        this.log.warn({ user, err: (err as Error).message }, 'user jobs resync failed')
      }
    }
  }

  dispose(): void {
    this.sockets.clear()
    this.channels.dispose()
  }

  private set(receiver: UserJobsReceiver, user: string, state: 'pending' | 'subscribed'): void {
    let users = this.sockets.get(receiver)
    if (users === undefined) {
      users = new Map()
      this.sockets.set(receiver, users)
    }
    users.set(user, state)
  }

  private refuse(transport: Transport, refusal: Refusal): OpenResult {
    this.metrics.countRefusal(transport, refusal)
    return { ok: false, refusal }
  }
}

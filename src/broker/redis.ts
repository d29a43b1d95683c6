// The Redis broker: one connection for commands, one in subscriber mode (a SubscriberSession,
// which replays the subscriptions itself after a reconnect, so we know the moment they are live
// again and can tell the gateway to resynchronise snapshots).
//
// The state ladder: connecting -> ready; either connection lost -> down; both back ->
// replaying until Redis has acknowledged every replayed SUBSCRIBE/PSUBSCRIBE -> ready, and only
// then restored(), once per outage. A loss during replaying is just another down. settle()
// derives the next state from the two connections and the replay; transition() applies it.

import { Redis, type RedisOptions } from 'ioredis'
import type { Logger } from '../support/log.js'
import { rateLimitedLog } from '../support/log.js'
import { backoff } from '../support/backoff.js'
import { redisConnectionProblem } from '../support/redis-problem.js'
import { readFileSync } from 'node:fs'
import { projectPath } from '../support/paths.js'
import { channelFor, jobKey, jobOwnerKey, recorderKey } from '../wire/topics.js'
import { runProgressScript, defineProgressScript } from '../producer/script.js'
import { closeConnection, ServerIdentity } from './redis-connection.js'
import { SubscriberSession } from './subscriber-session.js'
import { RECORDER_LEASE_MS, type Broker, type BrokerListener, type BrokerNames, type BrokerState, type JobRecord, type ProgressOptions, type SeenOutcome, type SeenPayload } from './broker.js'

export const RECORD_SEEN_SCRIPT = readFileSync(projectPath('src', 'broker', 'record-seen.lua'), 'utf8')

/** record-seen.lua's answer: 1 written, 3 already recorded so, 2 the job has a stored state,
 * else refused. */
export function seenOutcome(reply: unknown): SeenOutcome {
  return reply === 1 ? 'written' : reply === 3 ? 'recorded' : reply === 2 ? 'stored' : 'refused'
}
const READ_JOBS_SCRIPT = readFileSync(projectPath('src', 'broker', 'read-jobs.lua'), 'utf8')
export const NEW_EPOCH_SCRIPT = readFileSync(projectPath('src', 'broker', 'new-epoch.lua'), 'utf8')

const RETRY_MIN_MS = 50
const RETRY_MAX_MS = 2000

export class RedisBroker implements Broker {
  readonly kind = 'redis' as const
  reconnects = 0
  private readonly cmd: Redis
  private readonly sub: Redis
  private readonly subscriptions: SubscriberSession
  private listener: BrokerListener | null = null
  private current: BrokerState = 'connecting'
  private readonly warn: ReturnType<typeof rateLimitedLog>
  /** The server's run_id, checked for each command session. */
  private readonly identity = new ServerIdentity()
  private commandSession = 0
  private checkedSession = -1
  /** The server changed while we were away: told with the next restored(). */
  private dataLost = false

  constructor(url: string, private readonly names: BrokerNames, private readonly log: Logger) {
    const common: RedisOptions = {
      lazyConnect: true,
      // Jittered so a fleet of gateways dropped together does not come back in step; floored so
      // that no retry is immediate.
      retryStrategy: (times) => RETRY_MIN_MS + backoff(times - 1, RETRY_MIN_MS, RETRY_MAX_MS),
      connectionName: `jobwire-${process.pid}`,
    }
    // Commands give up after two reconnect attempts (callers have their own deadlines).
    this.cmd = new Redis(url, { ...common, maxRetriesPerRequest: 2 })
    // The subscriber keeps no hidden queue: a command is refused while the connection is away
    // and failed when it drops, never resent. Our replay is then the only way subscriptions
    // come back, so its acknowledgement alone says when they are live.
    this.sub = new Redis(url, { ...common, maxRetriesPerRequest: 0, enableOfflineQueue: false, autoResubscribe: false })
    this.subscriptions = new SubscriberSession(this.sub, 'redis subscriber', {
      live: (_dataLost, outage) => {
        if (outage) log.info({ channels: this.subscriptions.size }, 'redis subscriptions replayed')
        this.settle()
      },
      down: () => this.settle(),
    }, log, false)
    this.warn = rateLimitedLog(log, 5, 30_000)
  }

  get state(): BrokerState {
    return this.current
  }

  start(listener: BrokerListener): void {
    this.listener = listener
    defineProgressScript(this.cmd)
    this.sub.on('messageBuffer', listener.message)
    this.sub.on('pmessageBuffer', (_pattern: Buffer, channel: Buffer, payload: Buffer) => listener.message(channel, payload))
    this.cmd.on('ready', () => void this.checkRunId())
    this.cmd.on('close', () => {
      this.commandSession++
      this.settle()
    })
    // The subscriber's session calls settle() when its replay is acknowledged or it is lost.
    this.sub.on('ready', () => this.settle())
    this.sub.on('close', () => this.settle())
    for (const [name, conn] of [['commands', this.cmd], ['subscriber', this.sub]] as const) {
      conn.on('error', (err: Error) => this.warn({ connection: name, err: err.message }, redisConnectionProblem(conn.options, err, this.current === 'connecting')))
      conn.connect().catch(() => {
        // Logged by the 'error' handler; retryStrategy keeps trying.
      })
    }
  }

  /** The state the connections and the replay call for. ioredis reports events a tick after
   * its status changes, so the connections' status is read here rather than remembered. */
  private settle(): void {
    if (this.current === 'closed') return
    // The command connection counts as up once the server's run_id is known for it.
    const commandsUp = this.cmd.status === 'ready' && this.checkedSession === this.commandSession
    const subscriberUp = this.sub.status === 'ready'
    const subscribed = this.subscriptions.live
    if (commandsUp && subscribed) return this.transition('ready')
    if (this.current === 'connecting') return
    this.transition(commandsUp && subscriberUp ? 'replaying' : 'down')
  }

  private transition(next: BrokerState): void {
    const previous = this.current
    if (next === previous) return
    this.current = next
    this.log.info({ state: next, previous }, `redis ${next}`)
    if (next === 'closed') return
    this.listener?.state(next)
    // From down (only the command connection was lost) or replaying: the end of an outage.
    if (next === 'ready' && previous !== 'connecting') {
      this.reconnects++
      const dataLost = this.dataLost
      this.dataLost = false
      this.listener?.restored(dataLost)
    }
  }

  /** A Redis whose run_id changed is another server process: it restarted (empty, unless it
   * loaded a dump) or a replica took over, so what the gateway saw before may be gone. */
  private async checkRunId(): Promise<void> {
    const session = ++this.commandSession
    try {
      if (await this.identity.changed(this.cmd)) {
        this.dataLost = true
        this.log.warn('redis is another server process (restart or failover); stored state may be lost')
      }
    } catch (err) {
      this.warn({ err: (err as Error).message }, 'redis INFO failed; a restart of Redis will not be noticed')
    }
    if (session !== this.commandSession) return
    this.checkedSession = session
    this.settle()
  }

  /** A method, not a comparison, so the compiler does not carry a narrowing across an await. */
  private closed(): boolean {
    return this.current === 'closed'
  }

  subscribe(channels: readonly string[]): Promise<void> {
    if (this.closed()) return Promise.reject(new Error('broker closed'))
    return this.subscriptions.subscribe(channels)
  }

  unsubscribe(channels: readonly string[]): Promise<void> {
    return this.subscriptions.unsubscribe(channels)
  }

  psubscribe(pattern: string): Promise<void> {
    if (this.closed()) return Promise.reject(new Error('broker closed'))
    return this.subscriptions.psubscribe(pattern)
  }

  async readJobs(jobIds: readonly string[]): Promise<JobRecord[]> {
    if (!('jobwireReadJobsBuffer' in this.cmd)) this.cmd.defineCommand('jobwireReadJobs', { lua: READ_JOBS_SCRIPT })
    const keys = jobIds.flatMap((id) => [jobKey(this.names.keyPrefix, id), jobOwnerKey(this.names.keyPrefix, id)])
    const run = (this.cmd as unknown as Record<string, (...args: Array<string | number>) => Promise<Array<Buffer | null>>>).jobwireReadJobsBuffer!
    const fields = await run.call(this.cmd, keys.length, ...keys)
    const records: JobRecord[] = new Array(jobIds.length)
    for (let i = 0; i < jobIds.length; i++) {
      const owner = fields[3 * i + 1] ?? null
      records[i] = { state: fields[3 * i] ?? null, owner: owner === null ? null : owner.toString('utf8'), seen: fields[3 * i + 2] ?? null }
    }
    return records
  }

  async recordSeen(entries: readonly SeenPayload[], recorderId: string): Promise<SeenOutcome[]> {
    if (!('jobwireRecordSeen' in this.cmd)) this.cmd.defineCommand('jobwireRecordSeen', { numberOfKeys: 2, lua: RECORD_SEEN_SCRIPT })
    const pipeline = this.cmd.pipeline() as unknown as Record<string, (...args: Array<string | number>) => unknown> & { exec(): Promise<unknown> }
    for (const { jobId, json } of entries) {
      pipeline.jobwireRecordSeen!(recorderKey(this.names.keyPrefix, jobId), jobKey(this.names.keyPrefix, jobId), recorderId, json, RECORDER_LEASE_MS, this.names.stateTtlSec)
    }
    const results = (await pipeline.exec()) as Array<[Error | null, unknown]> | null
    return (results ?? []).map(([err, written]) => {
      if (err) throw err
      return seenOutcome(written)
    })
  }

  publishProgress(jobId: string, payload: Buffer, options?: ProgressOptions): Promise<number> {
    return runProgressScript(this.cmd, this.names, jobId, payload, options)
  }

  async newEpoch(jobId: string, epoch: number, seq: number): Promise<number | null> {
    if (!('jobwireNewEpoch' in this.cmd)) this.cmd.defineCommand('jobwireNewEpoch', { numberOfKeys: 1, lua: NEW_EPOCH_SCRIPT })
    const run = (this.cmd as unknown as Record<string, (...args: Array<string | number>) => Promise<number>>).jobwireNewEpoch!
    const result = await run.call(this.cmd, jobKey(this.names.keyPrefix, jobId), epoch, seq, channelFor(this.names.channelPrefix, jobId), '')
    return result === 0 ? null : result
  }

  async publish(channel: string, payload: Buffer | string): Promise<void> {
    await this.cmd.publish(channel, payload)
  }

  async close(): Promise<void> {
    if (this.current === 'closed') return
    this.transition('closed')
    this.subscriptions.close('broker closed')
    await Promise.all([this.cmd, this.sub].map(closeConnection))
  }
}

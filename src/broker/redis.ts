// The Redis broker: one connection for commands, one in subscriber mode. Subscriptions are
// tracked here and replayed by us (not by ioredis' autoResubscribe) after a reconnect, so we
// know the moment they are live again and can tell the gateway to resynchronise snapshots.

import { Redis, type RedisOptions } from 'ioredis'
import type { Logger } from '../support/log.js'
import { rateLimitedLog } from '../support/log.js'
import { jobKey } from '../wire/topics.js'
import { runProgressScript, defineProgressScript } from '../producer/script.js'
import type { Broker, BrokerListener, BrokerNames, BrokerState, JobRecord, ProgressOptions } from './broker.js'

/** Channels per SUBSCRIBE command when replaying thousands after a reconnect. */
const SUBSCRIBE_BATCH = 1000

export function redisRetryDelay(times: number): number {
  // Exponential from 50 ms to 2 s, plus jitter so a fleet of gateways does not reconnect in step.
  return Math.min(50 * 2 ** Math.min(times - 1, 10), 2000) + Math.floor(Math.random() * 100)
}

export class RedisBroker implements Broker {
  readonly kind = 'redis' as const
  reconnects = 0
  private readonly cmd: Redis
  private readonly sub: Redis
  private readonly channels = new Set<string>()
  private pattern: string | null = null
  private listener: BrokerListener | null = null
  private current: BrokerState = 'connecting'
  private subWasReady = false
  /** The subscriber connection was lost after having been ready; its next ready is a restore. */
  private subLost = false
  private closing = false
  private readonly warn: ReturnType<typeof rateLimitedLog>

  constructor(url: string, private readonly names: BrokerNames, private readonly log: Logger) {
    const common: RedisOptions = {
      lazyConnect: true,
      retryStrategy: redisRetryDelay,
      connectionName: `jobwire-${process.pid}`,
    }
    // Commands give up after two reconnect attempts (callers have their own deadlines); the
    // subscriber waits for as long as it takes.
    this.cmd = new Redis(url, { ...common, maxRetriesPerRequest: 2 })
    this.sub = new Redis(url, { ...common, maxRetriesPerRequest: null, autoResubscribe: false })
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
    for (const [name, conn] of [['commands', this.cmd], ['subscriber', this.sub]] as const) {
      conn.on('error', (err: Error) => this.warn({ connection: name, err: err.message }, 'redis connection error'))
      conn.on('ready', () => this.onReady(conn))
      conn.on('close', () => this.onLost(conn))
      conn.connect().catch(() => {
        // Logged by the 'error' handler; retryStrategy keeps trying.
      })
    }
  }

  private onReady(conn: Redis): void {
    if (conn === this.sub) this.subWasReady = true
    if (conn === this.sub && this.subLost) {
      this.subLost = false
      this.reconnects++
      void this.resubscribe()
      return
    }
    this.updateState()
  }

  private onLost(conn: Redis): void {
    if (this.closing) return
    // Only a connection that held subscriptions has anything to restore.
    if (conn === this.sub && this.subWasReady) this.subLost = true
    this.updateState()
  }

  private async resubscribe(): Promise<void> {
    const channels = [...this.channels]
    try {
      const pending: Promise<unknown>[] = []
      for (let i = 0; i < channels.length; i += SUBSCRIBE_BATCH) {
        pending.push(this.sub.subscribe(...channels.slice(i, i + SUBSCRIBE_BATCH)))
      }
      if (this.pattern !== null) pending.push(this.sub.psubscribe(this.pattern))
      await Promise.all(pending)
    } catch (err) {
      // The connection dropped again mid-replay; the next ready replays everything.
      this.log.warn({ err: (err as Error).message }, 'redis resubscribe interrupted')
      this.subLost = true
      return
    }
    this.log.info({ channels: channels.length, pattern: this.pattern }, 'redis subscriptions restored')
    this.updateState()
  }

  private updateState(): void {
    if (this.closing) return
    const ready = this.cmd.status === 'ready' && this.sub.status === 'ready' && !this.subLost
    const next: BrokerState = ready ? 'ready' : this.current === 'connecting' ? 'connecting' : 'down'
    if (next === this.current) return
    const previous = this.current
    this.current = next
    this.log.info({ state: next }, `redis ${next}`)
    this.listener?.state(next)
    // Back from any outage (either connection; subscriptions already replayed if the
    // subscriber was the one lost): the gateway re-marks its jobs live and resynchronises.
    if (previous === 'down' && next === 'ready') this.listener?.restored()
  }

  async subscribe(channels: readonly string[]): Promise<void> {
    for (const channel of channels) this.channels.add(channel)
    const pending: Promise<unknown>[] = []
    for (let i = 0; i < channels.length; i += SUBSCRIBE_BATCH) {
      pending.push(this.sub.subscribe(...channels.slice(i, i + SUBSCRIBE_BATCH)))
    }
    await Promise.all(pending)
  }

  async unsubscribe(channels: readonly string[]): Promise<void> {
    for (const channel of channels) this.channels.delete(channel)
    // A fresh connection after an outage holds none of them: nothing to undo there.
    if (this.sub.status !== 'ready') return
    // Every batch is written now, in order, so a SUBSCRIBE issued later cannot be overtaken.
    const pending: Promise<unknown>[] = []
    for (let i = 0; i < channels.length; i += SUBSCRIBE_BATCH) {
      pending.push(this.sub.unsubscribe(...channels.slice(i, i + SUBSCRIBE_BATCH)))
    }
    await Promise.all(pending)
  }

  async psubscribe(pattern: string): Promise<void> {
    this.pattern = pattern
    await this.sub.psubscribe(pattern)
  }

  async readJobs(jobIds: readonly string[]): Promise<JobRecord[]> {
    const pipeline = this.cmd.pipeline()
    for (const id of jobIds) pipeline.hmgetBuffer(jobKey(this.names.keyPrefix, id), 'state', 'owner')
    const results = (await pipeline.exec()) ?? []
    return results.map(([err, value]) => {
      if (err) throw err
      const [state, owner] = value as [Buffer | null, Buffer | null]
      return { state, owner: owner === null ? null : owner.toString('utf8') }
    })
  }

  publishProgress(jobId: string, payload: Buffer, options?: ProgressOptions): Promise<number> {
    return runProgressScript(this.cmd, this.names, jobId, payload, options)
  }

  async publish(channel: string, payload: Buffer | string): Promise<void> {
    await this.cmd.publish(channel, payload)
  }

  async close(): Promise<void> {
    if (this.closing) return
    this.closing = true
    this.current = 'closed'
    await Promise.all([this.cmd, this.sub].map(async (conn) => {
      if (conn.status === 'ready') {
        try {
          await conn.quit()
          return
        } catch {
          // fall through to a hard disconnect
        }
      }
      conn.disconnect()
    }))
  }
}

// One Redis connection in subscriber mode and the channels it must hold, kept alive through
// outages: the tracked set, its replay on every (re)connect, the callers waiting for it, and
// the "is it still the same server?" check. The Redis broker and the Celery source each own
// one; neither lets ioredis resubscribe on its own (autoResubscribe is off), because only our
// replay's acknowledgement says when every channel is live again, and a subscriber that was
// away has missed messages its owner must make up for.
//
// Sessions: `session` is bumped whenever the connection opens or closes, so an acknowledged
// replay counts only for the connection it was sent on; while `replayed === session` every
// tracked channel is live.

import type { Redis } from 'ioredis'
import type { Logger } from '../support/log.js'
import { rateLimitedLog } from '../support/log.js'
import { ServerIdentity } from './redis-connection.js'

/** Channels per SUBSCRIBE/UNSUBSCRIBE command when thousands are sent at once. */
const BATCH = 1000

export interface SessionEvents {
  /** Every tracked channel is live on a fresh connection. `dataLost`: the server is another
   * process than the last one seen (a restart or failover; only when the session checks).
   * `outage`: the connection had been live before and was lost, so messages were missed. */
  live(dataLost: boolean, outage: boolean): void
  /** The connection was lost after having been live: messages may be missed until live(). */
  down(): void
}

interface ReplayWaiter {
  /** The session when it started waiting: any later session's replay includes its channels,
   * since a replay reads the channel set the moment its session begins. */
  readonly since: number
  resolve(): void
  reject(err: Error): void
}

export class SubscriberSession {
  private readonly channels = new Set<string>()
  private pattern: string | null = null
  private session = 0
  private replayed = -1
  private awaitingReplay: ReplayWaiter[] = []
  private wasLive = false
  /** Why it was closed; null while open. */
  private closed: string | null = null
  private readonly identity: ServerIdentity | null
  private readonly warn: ReturnType<typeof rateLimitedLog>

  /** `checkServer`: compare the server's run_id on every connect (the broker checks it on its
   * command connection instead). */
  constructor(
    readonly conn: Redis,
    private readonly name: string,
    private readonly events: SessionEvents,
    private readonly log: Logger,
    checkServer: boolean,
  ) {
    this.identity = checkServer ? new ServerIdentity() : null
    this.warn = rateLimitedLog(log, 5, 30_000)
    conn.on('ready', () => void this.onReady())
    conn.on('close', () => this.onClose())
  }

  /** Every tracked channel is live on the current connection. */
  get live(): boolean {
    return this.replayed === this.session && this.conn.status === 'ready'
  }

  get size(): number {
    return this.channels.size
  }

  /** Resolves once messages on every channel are being received; while the connection is
   * away, that is once it is back (rejects only on a refusal or close()). */
  async subscribe(channels: readonly string[]): Promise<void> {
    for (const channel of channels) this.channels.add(channel)
    await this.sendOrAwaitReplay(() => this.send('subscribe', channels))
  }

  async psubscribe(pattern: string): Promise<void> {
    this.pattern = pattern
    await this.sendOrAwaitReplay(() => [this.conn.psubscribe(pattern)])
  }

  async unsubscribe(channels: readonly string[]): Promise<void> {
    for (const channel of channels) this.channels.delete(channel)
    // A fresh connection after an outage holds none of them: nothing to undo there.
    if (this.conn.status !== 'ready') return
    // Every batch is written now, in order, so a SUBSCRIBE issued later cannot be overtaken.
    try {
      await Promise.all(this.send('unsubscribe', channels))
    } catch (err) {
      // Lost mid-way: the same as above, the next connection never holds them.
      if (this.conn.status === 'ready') throw err
    }
  }

  /** Rejects whoever waits for a replay, and every later subscribe, with `reason`; the owner
   * closes the connection. */
  close(reason: string): void {
    this.closed = reason
    const waiting = this.awaitingReplay
    this.awaitingReplay = []
    for (const waiter of waiting) waiter.reject(new Error(reason))
  }

  private send(command: 'subscribe' | 'unsubscribe', channels: readonly string[]): Promise<unknown>[] {
    const pending: Promise<unknown>[] = []
    for (let i = 0; i < channels.length; i += BATCH) pending.push(this.conn[command](...channels.slice(i, i + BATCH)))
    return pending
  }

  /** Sends now if the connection is up, else (or if it drops before Redis answers) waits for
   * the replay that brings the channels back. */
  private async sendOrAwaitReplay(send: () => Promise<unknown>[]): Promise<void> {
    if (this.closed !== null) throw new Error(this.closed)
    if (this.conn.status === 'ready') {
      try {
        await Promise.all(send())
        return
      } catch (err) {
        // Still up: Redis itself refused. Otherwise the connection went, and the replay follows.
        if (this.conn.status === 'ready' || this.closed !== null) throw err
      }
    }
    const since = this.session
    await new Promise<void>((resolve, reject) => this.awaitingReplay.push({ since, resolve, reject }))
  }

  private async onReady(): Promise<void> {
    // The event trails the status by a tick: the connection may already be gone again.
    if (this.conn.status !== 'ready' || this.closed !== null) return
    const session = ++this.session
    let dataLost = false
    let failure: Error | null = null
    try {
      // Before any SUBSCRIBE: a connection in subscriber mode takes no other command.
      if (this.identity !== null) dataLost = await this.identity.changed(this.conn)
      // Read after the await: a subscribe or unsubscribe meanwhile went straight to this
      // connection, and the replay must not undo an UNSUBSCRIBE sent before it.
      const pending = this.send('subscribe', [...this.channels])
      if (this.pattern !== null) pending.push(this.conn.psubscribe(this.pattern))
      await Promise.all(pending)
    } catch (err) {
      failure = err as Error
    }
    if (session !== this.session || this.conn.status !== 'ready' || this.closed !== null) {
      // This connection is gone; the next one replays for itself, and for those waiting.
      if (failure !== null) this.warn({ connection: this.name, err: failure.message }, 'redis replay interrupted')
      return
    }
    if (failure !== null) {
      // Refused on a live connection: starting over lets the retry strategy pace the retries
      // instead of leaving us replaying forever.
      this.log.error({ connection: this.name, err: failure.message }, 'redis refused the replayed subscriptions; reconnecting')
      this.conn.disconnect(true)
      return
    }
    this.replayed = session
    const outage = this.wasLive
    this.wasLive = true
    const waiting = this.awaitingReplay
    this.awaitingReplay = waiting.filter((waiter) => waiter.since >= session)
    for (const waiter of waiting) if (waiter.since < session) waiter.resolve()
    this.events.live(dataLost, outage)
  }

  private onClose(): void {
    const wasLive = this.replayed === this.session
    this.session++
    if (wasLive && this.closed === null) this.events.down()
  }
}

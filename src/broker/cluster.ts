// The Redis Cluster broker. Commands (the producer script, snapshot reads, plain PUBLISH, the
// owners' job index) go through ioredis' Cluster client, which routes each by its key's slot.
// Subscriptions are ours, on connections of our own ("lanes"), so that we know when each one
// is live:
// - one sharded lane per master that owns a watched job's slot: SSUBSCRIBE <channel> there,
//   where the producer script SPUBLISHes (sharded pub/sub delivers only within a shard);
// - one classic lane, on any node: SUBSCRIBE <channel> for producers that plain-PUBLISH,
//   which a cluster broadcasts to every node.
// The two kinds never share a connection: ioredis takes a zero count in an unsubscribe reply
// of one kind for the end of subscriber mode, and would then misread the other kind's pushes.
// A message arrives once: the script only SPUBLISHes, a plain PUBLISH only reaches classic
// subscribers, and each channel holds one subscription of each kind. A user's channel
// (`<key prefix>user-jobs:<user>`) is subscribed like a job's; its announcements are plain
// PUBLISHes (owner-index.lua), so they arrive through the classic lane.
//
// A failover or a slot migration touches one shard's jobs only: their lane closes (a master
// died), or the server withdraws their subscriptions (a `sunsubscribe` push, or MOVED when we
// send SSUBSCRIBE again to check). We ask the cluster who owns the slot now, subscribe there,
// and once both subscriptions of a channel are acknowledged tell the gateway with
// channelsRestored(), which resynchronises the watchers. The broker as a whole stays ready
// meanwhile: one shard's failover must not take every gateway out of its load balancer.
//
// The whole-broker ladder follows the command client: down when no node answers; then
// replaying until every channel's subscriptions are acknowledged again; then ready and
// restored(), once per outage, as with a single Redis.

import { Redis, type Cluster } from 'ioredis'
import { backoff } from '../support/backoff.js'
import type { Logger } from '../support/log.js'
import { rateLimitedLog } from '../support/log.js'
import { redisConnectionProblem } from '../support/redis-problem.js'
import { channelFor, clusterRecorderKey, ownerKey, stateKey } from '../wire/topics.js'
import { defineProgressScript, runProgressScript } from '../producer/script.js'
import { OwnerIndexError, readOwnerJobs, type OwnerIndex } from '../producer/owner-index.js'
import { RECORDER_LEASE_MS, type Broker, type BrokerListener, type BrokerNames, type BrokerState, type JobRecord, type ProgressOptions, type SeenOutcome, type SeenPayload } from './broker.js'
import { clusterClient, nodeOptions, publishInOrder, type ClusterSeeds } from './cluster-seeds.js'
import { isWrongType } from './redis-connection.js'
import { NEW_EPOCH_SCRIPT, RECORD_SEEN_SCRIPT, seenOutcome } from './redis.js'
import { keySlot } from './slots.js'

/** Channels per SUBSCRIBE command on the classic lane. */
const SUBSCRIBE_BATCH = 1000
const RETRY_MIN_MS = 50
const RETRY_MAX_MS = 2000
/** How often the subscriptions are compared with the cluster's slot map, in case a
 * withdrawal went unnoticed (ioredis can mistake a `sunsubscribe` push for the answer to a
 * SUNSUBSCRIBE of ours that is in flight). */
const TOPOLOGY_CHECK_MS = 10_000
const MOVED = /^MOVED \d+ (\S+)/

interface Waiter {
  resolve(): void
  reject(err: Error): void
}

/** One subscriber connection to one node. It never reconnects: a lane that fails is dropped,
 * and the next one goes wherever the cluster says its channels live now. */
interface Lane {
  readonly kind: 'sharded' | 'classic'
  /** ioredis' node key, host:port. */
  readonly node: string
  readonly conn: Redis
  /** The server process behind it: another one for the same slots means a failover. */
  runId: string | null
  /** Connected and its run_id read: subscriptions may be sent. */
  up: boolean
  closed: boolean
  readonly channels: Set<Channel>
  verifying: boolean
  verifyAgain: boolean
}

class Channel {
  shard: Lane | null = null
  shardAcked = false
  classic: Lane | null = null
  classicAcked = false
  waiters: Waiter[] = []
  /** The gateway takes the channel as live: its subscribe resolved, or the broker said every
   * subscription was restored. */
  told = false
  /** Told, but a subscription was lost since: channelsRestored() is due once both are back. */
  owed = false
  /** The sharded lane died under it: if the slot's master is another process now (a
   * failover), it may lack the last writes. */
  crashedOn: { readonly node: string; readonly runId: string | null } | null = null

  constructor(readonly name: string, readonly slot: number) {}

  get live(): boolean {
    return this.shardAcked && this.classicAcked
  }
}

export class ClusterBroker implements Broker, OwnerIndex {
  readonly kind = 'cluster' as const
  reconnects = 0
  private readonly names: BrokerNames
  private readonly cmd: Cluster
  private readonly laneOptions: ReturnType<typeof nodeOptions>
  private readonly channels = new Map<string, Channel>()
  /** Channels missing a subscription that is neither sent nor acknowledged. */
  private readonly unplaced = new Set<Channel>()
  private readonly sharded = new Map<string, Lane>()
  private classic: Lane | null = null
  /** The node whose classic lane failed last, avoided for the next one when there is another. */
  private classicFailedOn: string | null = null
  /** Each slot's master as of the client's last slot map refresh. A copy: ioredis shares one
   * array among all the slots of a range and, on a MOVED for one slot, rewrites it for them
   * all until the next refresh. */
  private owners: Array<string | undefined> = []
  /** MOVED answers newer than the last refresh, by slot. */
  private readonly redirects = new Map<number, string>()
  private listener: BrokerListener | null = null
  private current: BrokerState = 'connecting'
  /** Between an outage and ready: the channels not yet live again. */
  private replay: Set<Channel> | null = null
  private replayDataLost = false
  private restoring: { lost: string[]; kept: string[] } = { lost: [], kept: [] }
  private restoreScheduled = false
  /** The last slot map refresh found no node answering (the pool's own status can stay
   * `ready` then: it keeps unused replicas' idle connections). */
  private unreachable = false
  private repairTimer: NodeJS.Timeout | null = null
  private repairAttempt = 0
  private checkTimer: NodeJS.Timeout | null = null
  private readonly warn: ReturnType<typeof rateLimitedLog>

  constructor(seeds: ClusterSeeds, names: BrokerNames, private readonly log: Logger) {
    this.names = { ...names, cluster: true }
    this.laneOptions = nodeOptions(seeds)
    this.cmd = clusterClient(seeds, {
      lazyConnect: true,
      clusterRetryStrategy: (times) => RETRY_MIN_MS + backoff(times - 1, RETRY_MIN_MS, RETRY_MAX_MS),
      // Commands give up after two reconnect attempts (callers have their own deadlines).
      redisOptions: { connectionName: `jobwire-${process.pid}`, maxRetriesPerRequest: 2 },
    })
    this.warn = rateLimitedLog(log, 5, 30_000)
  }

  get state(): BrokerState {
    return this.current
  }

  start(listener: BrokerListener): void {
    this.listener = listener
    defineProgressScript(this.cmd)
    this.cmd.on('refresh', () => {
      this.owners = this.cmd.slots.map((nodes) => nodes?.[0])
    })
    for (const event of ['ready', 'close', 'reconnecting', 'end']) this.cmd.on(event, () => this.settle())
    // Masters' connections leave the pool when they end: with none left, ask whether any node
    // still answers.
    this.cmd.on('-node', () => {
      if (this.cmd.nodes('master').length === 0) this.scheduleRepair()
    })
    this.cmd.on('error', (err: Error) => this.warn({ err: err.message }, `redis cluster: ${err.message}`))
    this.cmd.on('node error', (err: Error, node: string) => this.warn({ node, err: err.message }, `redis cluster node ${node}: ${err.message}`))
    this.cmd.connect().catch(() => {
      // Logged by the 'error' handler; clusterRetryStrategy keeps trying.
    })
    this.checkTimer = setInterval(() => this.checkTopology(), TOPOLOGY_CHECK_MS)
    this.checkTimer.unref()
  }

  async subscribe(channels: readonly string[]): Promise<void> {
    if (this.closed()) throw new Error('broker closed')
    const waits: Promise<void>[] = []
    for (const name of channels) {
      let channel = this.channels.get(name)
      if (channel === undefined) {
        channel = new Channel(name, keySlot(name))
        this.channels.set(name, channel)
        this.unplaced.add(channel)
      }
      const waiting = channel
      if (!waiting.live) waits.push(new Promise((resolve, reject) => waiting.waiters.push({ resolve, reject })))
    }
    this.place()
    await Promise.all(waits)
  }

  async unsubscribe(channels: readonly string[]): Promise<void> {
    const sharded = new Map<Lane, Map<number, string[]>>()
    const classic = new Map<Lane, string[]>()
    for (const name of channels) {
      const channel = this.channels.get(name)
      if (channel === undefined) continue
      this.channels.delete(name)
      this.unplaced.delete(channel)
      this.replay?.delete(channel)
      // Nobody waits any longer for a channel no longer watched.
      for (const waiter of channel.waiters) waiter.resolve()
      channel.waiters = []
      const { shard, classic: lane } = channel
      if (shard !== null) {
        shard.channels.delete(channel)
        if (shard.up) group(group(sharded, shard, () => new Map<number, string[]>()), channel.slot, () => []).push(name)
      }
      if (lane !== null) {
        lane.channels.delete(channel)
        if (lane.up) group(classic, lane, () => []).push(name)
      }
      channel.shard = channel.classic = null
    }
    const pending: Promise<unknown>[] = []
    // Written now, in order, so a subscribe issued later on the same lane cannot be overtaken.
    for (const [lane, slots] of sharded) for (const names of slots.values()) pending.push(this.quietly(lane, lane.conn.sunsubscribe(...names)))
    for (const [lane, names] of classic) {
      for (let i = 0; i < names.length; i += SUBSCRIBE_BATCH) pending.push(this.quietly(lane, lane.conn.unsubscribe(...names.slice(i, i + SUBSCRIBE_BATCH))))
    }
    await Promise.all(pending)
    if (this.replay !== null) this.settle()
  }

  /** Redis Cluster has no sharded pattern subscription: a PSUBSCRIBE would hear plain PUBLISHes
   * only, never the producer script. The configuration refuses pattern mode on a cluster. */
  async psubscribe(): Promise<void> {
    throw new Error('pattern subscriptions cannot work on Redis Cluster (there is no sharded PSUBSCRIBE); use per-job mode')
  }

  /** One pipeline per master for the keys it owns, as the slot map says. A read the master
   * refuses (the slot moved: MOVED, ASK) or cannot answer (it went) is sent again through the
   * cluster client, which follows redirections and waits out a failover. (ioredis' own
   * auto-pipelining fails whole batches while a slot moves.) */
  async readJobs(jobIds: readonly string[]): Promise<JobRecord[]> {
    const keys = jobIds.map((id) => stateKey(this.names, id))
    // The owner kept beside the state (same slot), for a state key that expired or was lost.
    const ownerKeys = jobIds.map((id) => ownerKey(this.names, id))
    const masters = new Map(this.cmd.nodes('master').map((node) => [`${node.options.host}:${node.options.port}`, node]))
    const byNode = new Map<Redis, number[]>()
    for (let i = 0; i < keys.length; i++) {
      const node = masters.get(this.ownerOf(keySlot(keys[i]!)) ?? '')
      if (node !== undefined) group(byNode, node, () => []).push(i)
    }
    // A key that is not a hash is no job: it reads as absent rather than failing the batch.
    const read = (i: number) => this.cmd.hmgetBuffer(keys[i]!, 'state', 'owner', 'seen').catch((err: Error) => {
      if (isWrongType(err)) return [null, null, null]
      throw err
    })
    const readOwner = (i: number) => this.cmd.getBuffer(ownerKeys[i]!).catch((err: Error) => {
      if (isWrongType(err)) return null
      throw err
    })
    const fields = new Array<Promise<Array<Buffer | null>> | undefined>(keys.length)
    const owners = new Array<Promise<Buffer | null> | undefined>(keys.length)
    for (const [node, indexes] of byNode) {
      const pipeline = node.pipeline()
      for (const i of indexes) pipeline.hmgetBuffer(keys[i]!, 'state', 'owner', 'seen').getBuffer(ownerKeys[i]!)
      const results = pipeline.exec().then((r) => r ?? [], () => [])
      indexes.forEach((i, k) => {
        fields[i] = results.then((r) => {
          const [err, value] = r[2 * k] ?? [new Error('no answer'), null]
          return err ? read(i) : (value as Array<Buffer | null>)
        })
        owners[i] = results.then((r) => {
          const [err, value] = r[2 * k + 1] ?? [new Error('no answer'), null]
          return err ? readOwner(i) : (value as Buffer | null)
        })
      })
    }
    return Promise.all(keys.map(async (_, i) => {
      // Both awaited together, so a failure of either is handled whichever comes first.
      const [fieldValues, kept] = await Promise.all([fields[i] ?? read(i), owners[i] ?? readOwner(i)])
      const [state, owner, seen] = fieldValues as [Buffer | null, Buffer | null, Buffer | null]
      const chosen = owner ?? kept
      return { state, owner: chosen === null ? null : chosen.toString('utf8'), seen }
    }))
  }

  async recordSeen(entries: readonly SeenPayload[], recorderId: string): Promise<SeenOutcome[]> {
    if (!('jobwireRecordSeen' in this.cmd)) this.cmd.defineCommand('jobwireRecordSeen', { numberOfKeys: 2, lua: RECORD_SEEN_SCRIPT })
    const run = (this.cmd as unknown as Record<string, (...args: Array<string | number>) => Promise<unknown>>).jobwireRecordSeen!.bind(this.cmd)
    const written = await Promise.all(entries.map(({ jobId, json }) => {
      const channel = channelFor(this.names.channelPrefix, jobId)
      return run(clusterRecorderKey(this.names.keyPrefix, channel), stateKey(this.names, jobId), recorderId, json, RECORDER_LEASE_MS, this.names.stateTtlSec)
    }))
    return written.map(seenOutcome)
  }

  /** The update is stored and published in the job's slot, then listed under its owner in the
   * owner's (producer/owner-index.ts). When only the listing fails, the update stands: its
   * seq is the answer, and the job is listed again by its next update. */
  async publishProgress(jobId: string, payload: Buffer, options?: ProgressOptions): Promise<number> {
    try {
      return await runProgressScript(this.cmd, this.names, jobId, payload, options)
    } catch (err) {
      if (!(err instanceof OwnerIndexError)) throw err
      this.warn({ job: jobId, owner: err.owner, err: (err.cause as Error).message }, `redis cluster: ${err.message}`)
      return err.seq
    }
  }

  /** The state key and the channel share the job's slot: the script SPUBLISHes there. */
  async newEpoch(jobId: string, epoch: number, seq: number): Promise<number | null> {
    if (!('jobwireNewEpoch' in this.cmd)) this.cmd.defineCommand('jobwireNewEpoch', { numberOfKeys: 1, lua: NEW_EPOCH_SCRIPT })
    const run = (this.cmd as unknown as Record<string, (...args: Array<string | number>) => Promise<number>>).jobwireNewEpoch!
    const result = await run.call(this.cmd, stateKey(this.names, jobId), epoch, seq, channelFor(this.names.channelPrefix, jobId), 'SPUBLISH')
    return result === 0 ? null : result
  }

  /** The owner's index lives in its own slot; the command client finds it. */
  async ownerJobs(owner: string, limit: number): Promise<string[]> {
    return readOwnerJobs(this.cmd, this.names.keyPrefix, owner, limit)
  }

  publish(channel: string, payload: Buffer | string): Promise<void> {
    return publishInOrder(this.cmd, channel, payload)
  }

  async close(): Promise<void> {
    if (this.current === 'closed') return
    this.transition('closed')
    if (this.repairTimer !== null) clearTimeout(this.repairTimer)
    if (this.checkTimer !== null) clearInterval(this.checkTimer)
    for (const channel of this.channels.values()) {
      for (const waiter of channel.waiters) waiter.reject(new Error('broker closed'))
      channel.waiters = []
    }
    const lanes = [...this.sharded.values(), ...(this.classic ? [this.classic] : [])]
    await Promise.all([
      ...lanes.map((lane) => lane.conn.status === 'ready' ? lane.conn.quit().catch(() => lane.conn.disconnect()) : lane.conn.disconnect()),
      this.cmd.status === 'ready' ? this.cmd.quit().catch(() => this.cmd.disconnect()) : this.cmd.disconnect(),
    ])
  }

  /** The state the command client and the replay call for. */
  private settle(): void {
    if (this.closed()) return
    if (this.cmd.status !== 'ready' || this.unreachable) {
      if (this.current !== 'connecting') this.transition('down')
      // Asks again, paced, until a node answers.
      if (this.unreachable) this.scheduleRepair()
      return
    }
    // Back from an outage (or up for the first time): what is not live now must be before ready.
    if (this.current === 'down' || (this.current === 'connecting' && this.replay === null)) {
      this.replay = new Set([...this.channels.values()].filter((c) => !c.live))
    }
    this.place()
    if (this.replay !== null && this.replay.size > 0) {
      if (this.current !== 'connecting') this.transition('replaying')
      return
    }
    this.replay = null
    this.transition('ready')
  }

  private transition(next: BrokerState): void {
    const previous = this.current
    if (next === previous) return
    this.current = next
    this.log.info({ state: next, previous }, `redis cluster ${next}`)
    if (next === 'closed') return
    this.listener?.state(next)
    if (next === 'ready') this.repairAttempt = 0
    if (next === 'ready' && previous !== 'connecting') {
      this.reconnects++
      const dataLost = this.replayDataLost
      this.replayDataLost = false
      // From here the gateway takes every channel as live: one subscribed during the outage
      // and not acknowledged yet is owed a restore of its own.
      for (const channel of this.channels.values()) {
        channel.told = true
        channel.owed = !channel.live
      }
      this.restoring = { lost: [], kept: [] }
      this.listener?.restored(dataLost)
    }
  }

  /** Sends every missing subscription that can be sent now. A channel whose master is not
   * reachable yet stays unplaced: the lane coming up, or the repair, places it. */
  private place(): void {
    if (this.closed() || this.cmd.status !== 'ready' || this.unreachable || this.unplaced.size === 0) return
    const sharded = new Map<Lane, Map<number, Channel[]>>()
    const classic: Channel[] = []
    let homeless = false
    for (const channel of this.unplaced) {
      let done = true
      if (channel.shard === null) {
        const node = this.ownerOf(channel.slot)
        const lane = node === undefined ? null : this.shardedLane(node)
        if (lane?.up) group(group(sharded, lane, () => new Map<number, Channel[]>()), channel.slot, () => []).push(channel)
        else done = false
        if (node === undefined) homeless = true
      }
      if (channel.classic === null) {
        const lane = this.classicLane()
        if (lane?.up) classic.push(channel)
        else done = false
      }
      if (done) this.unplaced.delete(channel)
    }
    for (const [lane, slots] of sharded) for (const [slot, channels] of slots) this.sendSharded(lane, slot, channels)
    if (classic.length > 0) {
      const lane = this.classic!
      for (let i = 0; i < classic.length; i += SUBSCRIBE_BATCH) this.sendClassic(lane, classic.slice(i, i + SUBSCRIBE_BATCH))
    }
    if (homeless) this.scheduleRepair()
  }

  private ownerOf(slot: number): string | undefined {
    return this.redirects.get(slot) ?? this.owners[slot]
  }

  private sendSharded(lane: Lane, slot: number, channels: Channel[]): void {
    for (const channel of channels) {
      channel.shard = lane
      channel.shardAcked = false
      lane.channels.add(channel)
    }
    lane.conn.ssubscribe(...channels.map((c) => c.name)).then(
      () => {
        for (const channel of channels) {
          if (channel.shard !== lane) continue
          channel.shardAcked = true
          if (channel.live) this.becameLive(channel)
        }
      },
      (err: Error) => {
        const mine = channels.filter((c) => c.shard === lane)
        for (const channel of mine) this.lose(channel, lane, false)
        if (lane.closed || lane.conn.status !== 'ready') return this.laneClosed(lane)
        const moved = MOVED.exec(err.message)
        if (moved !== null && moved[1] !== lane.node) {
          // The slot has a new home; the next place() goes there.
          this.redirects.set(slot, moved[1]!)
          this.place()
        } else {
          this.warn({ node: lane.node, err: err.message }, `redis cluster refused SSUBSCRIBE: ${err.message}; retrying`)
          this.scheduleRepair()
        }
      },
    )
  }

  private sendClassic(lane: Lane, channels: Channel[]): void {
    for (const channel of channels) {
      channel.classic = lane
      channel.classicAcked = false
      lane.channels.add(channel)
    }
    lane.conn.subscribe(...channels.map((c) => c.name)).then(
      () => {
        for (const channel of channels) {
          if (channel.classic !== lane) continue
          channel.classicAcked = true
          if (channel.live) this.becameLive(channel)
        }
      },
      (err: Error) => {
        for (const channel of channels.filter((c) => c.classic === lane)) this.lose(channel, lane, false)
        if (lane.closed || lane.conn.status !== 'ready') return this.laneClosed(lane)
        this.warn({ node: lane.node, err: err.message }, `redis cluster refused SUBSCRIBE: ${err.message}; retrying`)
        this.scheduleRepair()
      },
    )
  }

  /** A subscription of the channel is gone (or was refused) on `lane`. */
  private lose(channel: Channel, lane: Lane, crashed: boolean): void {
    lane.channels.delete(channel)
    if (channel.shard === lane) {
      if (crashed && channel.shardAcked) channel.crashedOn ??= { node: lane.node, runId: lane.runId }
      channel.shard = null
      channel.shardAcked = false
    }
    if (channel.classic === lane) {
      channel.classic = null
      channel.classicAcked = false
    }
    if (channel.told) channel.owed = true
    if (this.channels.get(channel.name) === channel) this.unplaced.add(channel)
  }

  private becameLive(channel: Channel): void {
    const crashedOn = channel.crashedOn
    const shard = channel.shard!
    // A crash and another process (or another node) serving the slot now: a failover, or a
    // restart, either of which may have lost the last writes.
    const dataLost = crashedOn !== null && (crashedOn.node !== shard.node || crashedOn.runId !== shard.runId)
    channel.crashedOn = null
    const wasTold = channel.told
    channel.told = true
    const waiters = channel.waiters
    channel.waiters = []
    for (const waiter of waiters) waiter.resolve()
    if (this.unplaced.size === 0) this.repairAttempt = 0
    if (this.current !== 'ready') {
      // The whole-broker restore that follows covers it.
      if (channel.owed || this.replay?.has(channel)) this.replayDataLost ||= dataLost
      if (this.replay?.delete(channel) && this.replay.size === 0) this.settle()
      return
    }
    if (!wasTold || !channel.owed) return
    channel.owed = false
    ;(dataLost ? this.restoring.lost : this.restoring.kept).push(channel.name)
    if (!this.restoreScheduled) {
      this.restoreScheduled = true
      setImmediate(() => this.flushRestores())
    }
  }

  /** One channelsRestored() per turn (two when some of the channels' shards lost data). */
  private flushRestores(): void {
    this.restoreScheduled = false
    const { lost, kept } = this.restoring
    this.restoring = { lost: [], kept: [] }
    if (this.current !== 'ready' || this.listener === null) return
    for (const [channels, dataLost] of [[lost, true], [kept, false]] as const) {
      if (channels.length === 0) continue
      this.reconnects++
      this.log.info({ channels: channels.length, dataLost }, 'redis cluster subscriptions restored on their shards')
      if (this.listener.channelsRestored) this.listener.channelsRestored(channels, dataLost)
      else this.listener.restored(dataLost)
    }
  }

  private shardedLane(node: string): Lane {
    return this.sharded.get(node) ?? this.openLane('sharded', node)
  }

  /** The classic lane, opened on another node when it has none. */
  private classicLane(): Lane | null {
    if (this.classic !== null) return this.classic
    const nodes = this.cmd.nodes('all').map((n) => `${n.options.host}:${n.options.port}`)
    const others = nodes.filter((n) => n !== this.classicFailedOn)
    const pick = others.length > 0 ? others : nodes
    if (pick.length === 0) return null
    return this.openLane('classic', pick[Math.floor(Math.random() * pick.length)]!)
  }

  private openLane(kind: Lane['kind'], node: string): Lane {
    const at = node.lastIndexOf(':')
    const conn = new Redis({
      host: node.slice(0, at),
      port: Number(node.slice(at + 1)),
      ...this.laneOptions,
      lazyConnect: true,
      retryStrategy: () => null,
      // Nothing queued, nothing resent by ioredis: our own sends are the only way
      // subscriptions are made, so their acknowledgement says when they are live.
      enableOfflineQueue: false,
      autoResubscribe: false,
      maxRetriesPerRequest: 0,
      connectTimeout: 5000,
      connectionName: `jobwire-${process.pid}-${kind}`,
    })
    const lane: Lane = { kind, node, conn, runId: null, up: false, closed: false, channels: new Set(), verifying: false, verifyAgain: false }
    if (kind === 'sharded') this.sharded.set(node, lane)
    else this.classic = lane
    const listener = this.listener!
    conn.on(kind === 'sharded' ? 'smessageBuffer' : 'messageBuffer', listener.message)
    // A `sunsubscribe` push (the slot moved away) or a MOVED answer to SSUBSCRIBE.
    if (kind === 'sharded') conn.on('moved', () => this.verify(lane))
    conn.on('error', (err: Error) => this.warn({ node, lane: kind, err: err.message }, redisConnectionProblem(conn.options, err, false)))
    conn.on('close', () => this.laneClosed(lane))
    conn.connect().then(() => this.laneUp(lane), () => this.laneClosed(lane))
    return lane
  }

  private async laneUp(lane: Lane): Promise<void> {
    try {
      lane.runId = /^run_id:(\w+)/m.exec(await lane.conn.info('server'))?.[1] ?? null
    } catch (err) {
      if (lane.conn.status !== 'ready') return this.laneClosed(lane)
      this.warn({ node: lane.node, err: (err as Error).message }, 'redis cluster INFO failed; a failover of this node will not count as data lost')
    }
    if (lane.closed || this.closed()) return
    lane.up = true
    this.place()
  }

  private laneClosed(lane: Lane): void {
    if (lane.closed) return
    lane.closed = true
    lane.up = false
    lane.conn.disconnect()
    if (lane.kind === 'sharded' && this.sharded.get(lane.node) === lane) this.sharded.delete(lane.node)
    if (lane.kind === 'classic' && this.classic === lane) {
      this.classic = null
      this.classicFailedOn = lane.node
    }
    if (this.closed()) return
    const held = lane.channels.size
    for (const channel of [...lane.channels]) this.lose(channel, lane, true)
    for (const [slot, node] of this.redirects) if (node === lane.node) this.redirects.delete(slot)
    if (held > 0) this.log.warn({ node: lane.node, lane: lane.kind, channels: held }, 'redis cluster subscriber connection lost; resubscribing where the slots live now')
    if (this.unplaced.size > 0) this.scheduleRepair()
  }

  /** Sends the lane's SSUBSCRIBEs again: those whose slot the node no longer serves answer
   * MOVED with the slot's new home, the others change nothing. */
  private verify(lane: Lane, only?: readonly Channel[]): void {
    if (!lane.up || lane.closed) return
    if (lane.verifying) {
      lane.verifyAgain = true
      return
    }
    lane.verifying = true
    const bySlot = new Map<number, Channel[]>()
    for (const channel of only ?? lane.channels) {
      if (channel.shard === lane && channel.shardAcked) group(bySlot, channel.slot, () => []).push(channel)
    }
    const checks = [...bySlot].map(([slot, channels]) => lane.conn.ssubscribe(...channels.map((c) => c.name)).then(
      () => undefined,
      (err: Error) => {
        if (lane.closed || lane.conn.status !== 'ready') return this.laneClosed(lane)
        const moved = MOVED.exec(err.message)
        if (moved === null) return this.warn({ node: lane.node, err: err.message }, `redis cluster: checking subscriptions failed: ${err.message}`)
        this.redirects.set(slot, moved[1]!)
        // Withdrawn by a live server (a migration, a manual failover): nothing was lost.
        for (const channel of channels) if (channel.shard === lane) this.lose(channel, lane, false)
      },
    ))
    void Promise.all(checks).then(() => {
      lane.verifying = false
      this.place()
      if (lane.verifyAgain) {
        lane.verifyAgain = false
        this.verify(lane)
      }
    })
  }

  /** Asks the cluster for its slot map again, then places what is unplaced; paced by the
   * backoff while masters cannot be reached (a failover takes the cluster's node timeout). */
  private scheduleRepair(): void {
    if (this.repairTimer !== null || this.closed()) return
    const delay = RETRY_MIN_MS + backoff(this.repairAttempt++, RETRY_MIN_MS, RETRY_MAX_MS)
    this.repairTimer = setTimeout(() => {
      this.repairTimer = null
      this.refreshSlots(() => {
        // On failure the slot map stays as it was, and the next repair asks again.
        // What stays unplaced waits for a lane that is connecting: its coming up places it,
        // its failing repairs again.
        this.dropAgreedRedirects()
        this.place()
      })
    }, delay)
    this.repairTimer.unref()
  }

  private checkTopology(): void {
    if (this.closed() || this.cmd.status !== 'ready') return
    this.refreshSlots(() => {
      if (this.closed() || this.unreachable) return
      this.dropAgreedRedirects()
      const owners = new Set<string>(this.redirects.values())
      for (const node of this.owners) if (node !== undefined) owners.add(node)
      for (const lane of [...this.sharded.values()]) {
        // A master that no longer owns a slot (its slots migrated, or it is a replica now).
        if (lane.channels.size === 0 && !owners.has(lane.node)) {
          this.laneClosed(lane)
          continue
        }
        const suspects = [...lane.channels].filter((c) => c.shard === lane && c.shardAcked && this.ownerOf(c.slot) !== lane.node)
        if (suspects.length > 0) this.verify(lane, suspects)
      }
      this.place()
    })
  }

  /** Refreshes the client's slot map; whether any node answered decides `unreachable`. */
  private refreshSlots(then: () => void): void {
    this.cmd.refreshSlotsCache((err) => {
      if (this.closed()) return
      const unreachable = err !== undefined && err !== null
      if (unreachable !== this.unreachable) {
        this.unreachable = unreachable
        if (unreachable) this.log.warn({ err: err!.message }, 'redis cluster: no node answers')
        this.settle()
      }
      then()
    })
  }

  private dropAgreedRedirects(): void {
    for (const [slot, node] of this.redirects) if (this.owners[slot] === node) this.redirects.delete(slot)
  }

  /** Unsubscribes still belong in order on their lane; a failure means the lane went or the
   * slot moved, and either way the server no longer holds the subscription. */
  private async quietly(lane: Lane, sent: Promise<unknown>): Promise<void> {
    try {
      await sent
    } catch (err) {
      if (lane.conn.status === 'ready' && !MOVED.test((err as Error).message)) {
        this.warn({ node: lane.node, err: (err as Error).message }, `redis cluster refused an unsubscribe: ${(err as Error).message}`)
      }
    }
  }

  /** A method, not a comparison, so the compiler does not carry a narrowing across an await. */
  private closed(): boolean {
    return this.current === 'closed'
  }
}

function group<K, V>(map: Map<K, V>, key: K, create: () => V): V {
  let value = map.get(key)
  if (value === undefined) {
    value = create()
    map.set(key, value)
  }
  return value
}

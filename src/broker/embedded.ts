// The embedded broker: the Redis broker's semantics inside the gateway process (stored state
// with seq, owner and TTL; the producer rules of progress.lua; channels and one pattern), so
// `make run` needs nothing but Node. Messages are delivered asynchronously and in order, as
// they would arrive from Redis.

import { pack } from 'msgpackr'
import { decodePayload, MalformedPayload } from '../wire/payload.js'
import { channelFor } from '../wire/topics.js'
import { buildState, checkFinal, nextEpoch, checkProducerPayload, isTerminalState, OwnerConflict, SeqMismatch, storedPayload } from '../producer/merge.js'
import { MAX_OWNER_JOBS, userJobsChannel, type OwnerIndex } from '../producer/owner-index.js'
import type { Broker, BrokerListener, BrokerNames, BrokerState, JobRecord, ProgressOptions, SeenOutcome, SeenPayload } from './broker.js'

interface StoredJob {
  seq: number
  /** The generation: new when the job is created, when its owner is replaced and on restart. */
  epoch: number
  state: Buffer | null
  owner: string | null
  expiresAt: number
}

/** An owner's jobs with the time of their last update, as progress.lua's sorted set. */
interface OwnerJobs {
  readonly jobs: Map<string, number>
  expiresAt: number
}

const SWEEP_INTERVAL_MS = 60_000
/** As progress.lua's owner key: a job's owner outlives its state by this long. */
const OWNER_TTL_MS = 7 * 86_400_000

interface JobOwner {
  readonly owner: string
  readonly expiresAt: number
}

export class EmbeddedBroker implements Broker, OwnerIndex {
  readonly kind = 'embedded' as const
  readonly reconnects = 0
  private readonly jobs = new Map<string, StoredJob>()
  private readonly owners = new Map<string, OwnerJobs>()
  /** Each job's owner, kept beyond its state (progress.lua's job-owner key). */
  private readonly jobOwners = new Map<string, JobOwner>()
  private readonly channels = new Set<string>()
  private pattern: string | null = null
  private listener: BrokerListener | null = null
  private current: BrokerState = 'connecting'
  private sweeper: NodeJS.Timeout | null = null

  constructor(private readonly names: BrokerNames) {}

  get state(): BrokerState {
    return this.current
  }

  start(listener: BrokerListener): void {
    this.listener = listener
    this.sweeper = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS).unref()
    this.current = 'ready'
    queueMicrotask(() => listener.state('ready'))
  }

  async subscribe(channels: readonly string[]): Promise<void> {
    for (const channel of channels) this.channels.add(channel)
    await tick()
  }

  async unsubscribe(channels: readonly string[]): Promise<void> {
    for (const channel of channels) this.channels.delete(channel)
    await tick()
  }

  async psubscribe(pattern: string): Promise<void> {
    if (!pattern.endsWith('*') || pattern.slice(0, -1).includes('*')) {
      throw new Error(`embedded broker supports only '<prefix>*' patterns, not '${pattern}'`)
    }
    this.pattern = pattern
    await tick()
  }

  async readJobs(jobIds: readonly string[]): Promise<JobRecord[]> {
    const now = Date.now()
    return jobIds.map((id) => {
      const job = this.live(id, now)
      return { state: job?.state ?? null, owner: job?.owner ?? this.liveJobOwner(id, now), seen: null }
    })
  }

  async publishProgress(jobId: string, payload: Buffer, options: ProgressOptions = {}): Promise<number> {
    const decoded = checkProducerPayload(payload)
    const now = Date.now()
    const job = this.live(jobId, now) ?? { seq: 0, epoch: 0, state: null, owner: this.liveJobOwner(jobId, now), expiresAt: 0 }
    const replacing = options.owner !== undefined && options.owner !== '' && job.owner !== null && job.owner !== options.owner
    if (replacing && !options.replaceOwner) throw new OwnerConflict()
    if (options.ifSeq !== undefined && options.ifSeq !== job.seq) {
      throw new SeqMismatch(`if_seq ${options.ifSeq} does not match the job's seq ${job.seq}`)
    }
    const stored = storedPayload(job.state)
    const newEpoch = job.epoch === 0 || replacing || options.restart === true
    const epoch = newEpoch ? nextEpoch(now, job.epoch) : job.epoch
    const merged = options.replace || newEpoch ? null : stored
    if (!newEpoch) checkFinal(jobId, decoded, stored, merged !== null)
    // Built before anything changes: a state too large to store is refused.
    const state = buildState(decoded, merged, job.seq + 1, epoch, now)
    const previousOwner = job.owner
    job.seq++
    job.epoch = epoch
    job.state = state
    if (options.owner) job.owner = options.owner
    const terminalTtlSec = options.terminalTtlSec ?? this.names.terminalTtlSec
    const ttlSec = options.ttlSec ?? this.names.stateTtlSec
    job.expiresAt = now + (isTerminalState(decoded, merged) ? terminalTtlSec : ttlSec) * 1000
    this.jobs.set(jobId, job)
    if (job.owner !== null) this.jobOwners.set(jobId, { owner: job.owner, expiresAt: now + OWNER_TTL_MS })
    this.deliver(channelFor(this.names.channelPrefix, jobId), state)
    if (job.owner !== null) {
      if (replacing && previousOwner !== null) this.owners.get(previousOwner)?.jobs.delete(jobId)
      if (this.index(job.owner, jobId, now, Math.max(ttlSec, terminalTtlSec))) {
        this.deliver(userJobsChannel(this.names.keyPrefix, job.owner), Buffer.from(jobId))
      }
    }
    return job.seq
  }

  async ownerJobs(owner: string, limit: number): Promise<string[]> {
    const index = this.liveOwner(owner, Date.now())
    if (index === undefined) return []
    return [...index.jobs].sort((a, b) => b[1] - a[1]).slice(0, limit).map(([id]) => id)
  }

  /** One process: every watcher of a job is in it and sees its channel itself, so there is
   * nothing to share, and nothing is refused. */
  async recordSeen(entries: readonly SeenPayload[]): Promise<SeenOutcome[]> {
    return entries.map(() => 'written')
  }

  /** As new-epoch.lua (a process's memory loses no writes, but the contract is the same). */
  async newEpoch(jobId: string, epoch: number, seq: number): Promise<number | null> {
    const job = this.live(jobId, Date.now())
    const decoded = job?.state ? decodePayload(job.state) : null
    if (job === undefined || job.epoch !== epoch || job.seq !== seq || decoded === null || decoded instanceof MalformedPayload) return null
    job.epoch = nextEpoch(Date.now(), epoch)
    const obj = { ...decoded.obj, epoch: job.epoch }
    job.state = decoded.format === 'json' ? Buffer.from(JSON.stringify(obj)) : pack(obj)
    this.deliver(channelFor(this.names.channelPrefix, jobId), job.state)
    return job.epoch
  }

  async publish(channel: string, payload: Buffer | string): Promise<void> {
    this.deliver(channel, typeof payload === 'string' ? Buffer.from(payload) : payload)
  }

  async close(): Promise<void> {
    this.current = 'closed'
    if (this.sweeper) clearInterval(this.sweeper)
    this.channels.clear()
    this.pattern = null
  }

  private deliver(channel: string, payload: Buffer): void {
    // As in Redis, whoever is subscribed at publish time receives it.
    const subscribed = this.channels.has(channel) ||
      (this.pattern !== null && channel.startsWith(this.pattern.slice(0, -1)))
    if (!subscribed) return
    const channelBytes = Buffer.from(channel)
    setImmediate(() => {
      if (this.current === 'ready' && this.listener !== null) this.listener.message(channelBytes, payload)
    })
  }

  private live(jobId: string, now: number): StoredJob | undefined {
    const job = this.jobs.get(jobId)
    if (job !== undefined && job.expiresAt <= now) {
      this.jobs.delete(jobId)
      return undefined
    }
    return job
  }

  /** Records the job's update in its owner's index, as progress.lua does; true when the job
   * is new there. */
  private index(owner: string, jobId: string, now: number, keepSec: number): boolean {
    let index = this.liveOwner(owner, now)
    if (index === undefined) {
      index = { jobs: new Map(), expiresAt: 0 }
      this.owners.set(owner, index)
    }
    const added = !index.jobs.has(jobId)
    // Re-inserted so the map's order stays the order of last updates, oldest first.
    index.jobs.delete(jobId)
    index.jobs.set(jobId, now)
    for (const [id, at] of index.jobs) {
      if (at >= now - keepSec * 1000 && index.jobs.size <= MAX_OWNER_JOBS) break
      index.jobs.delete(id)
    }
    index.expiresAt = Math.max(index.expiresAt, now + keepSec * 1000)
    return added
  }

  private liveJobOwner(jobId: string, now: number): string | null {
    const entry = this.jobOwners.get(jobId)
    if (entry !== undefined && entry.expiresAt <= now) this.jobOwners.delete(jobId)
    return entry !== undefined && entry.expiresAt > now ? entry.owner : null
  }

  private liveOwner(owner: string, now: number): OwnerJobs | undefined {
    const index = this.owners.get(owner)
    if (index !== undefined && index.expiresAt <= now) {
      this.owners.delete(owner)
      return undefined
    }
    return index
  }

  private sweep(): void {
    const now = Date.now()
    for (const [id, job] of this.jobs) if (job.expiresAt <= now) this.jobs.delete(id)
    for (const [owner, index] of this.owners) if (index.expiresAt <= now) this.owners.delete(owner)
    for (const [id, entry] of this.jobOwners) if (entry.expiresAt <= now) this.jobOwners.delete(id)
  }
}

function tick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}

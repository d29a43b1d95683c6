// The truth the tabs' views are held against: each job's state as stored in Redis by the
// producer script, read in one pipeline every few hundred ms. A view is compared with a
// sample taken a little earlier (lagMs) than the comparison, so a frame still on its way
// from Redis through a gateway is not mistaken for a view that is behind; a view newer than
// the sample (ordered by epoch, then seq) counts as caught up.

import { Redis } from 'ioredis'
import type { SimTab, View } from './sim-client.js'

export interface Stored {
  readonly seq: number
  readonly epoch: number
  readonly status: string | undefined
}

export interface Sample {
  /** When the reply arrived: every state in it was published before this. */
  readonly at: number
  readonly states: ReadonlyMap<string, Stored | null>
}

const KEEP_SAMPLES = 64

export class StoredStates {
  private readonly redis: Redis
  private readonly samples: Sample[] = []
  private timer: NodeJS.Timeout | null = null
  private reading = false
  failures = 0

  constructor(redisUrl: string, private jobIds: readonly string[], private readonly keyPrefix = 'jobwire:') {
    // Fails fast while Redis is down or frozen: no sample then, so nothing can be declared
    // converged against a Redis that cannot be read.
    this.redis = new Redis(redisUrl, { maxRetriesPerRequest: 0, commandTimeout: 2000, enableOfflineQueue: false, retryStrategy: () => 200 })
    this.redis.on('error', () => undefined)
  }

  setJobs(jobIds: readonly string[]): void {
    this.jobIds = jobIds
  }

  async read(): Promise<Sample> {
    const pipeline = this.redis.pipeline()
    for (const id of this.jobIds) pipeline.hmget(`${this.keyPrefix}job:${id}`, 'state', 'seq', 'epoch')
    const replies = await pipeline.exec()
    const at = Date.now()
    const states = new Map<string, Stored | null>()
    this.jobIds.forEach((id, i) => {
      const [err, value] = replies?.[i] ?? [new Error('no reply'), null]
      if (err) throw err
      states.set(id, parseStored(value as Array<string | null>))
    })
    return { at, states }
  }

  start(intervalMs: number): void {
    this.timer = setInterval(() => {
      if (this.reading) return
      this.reading = true
      this.read().then((sample) => {
        this.samples.push(sample)
        if (this.samples.length > KEEP_SAMPLES) this.samples.shift()
      }, () => this.failures++).finally(() => (this.reading = false))
    }, intervalMs)
  }

  /** The newest sample taken after `since` and at least lagMs before now. */
  settled(since: number, lagMs: number, now = Date.now()): Sample | null {
    for (let i = this.samples.length - 1; i >= 0; i--) {
      const s = this.samples[i]!
      if (s.at < since) return null
      if (s.at <= now - lagMs) return s
    }
    return null
  }

  close(): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    this.redis.disconnect()
  }
}

function parseStored([state, seq, epoch]: Array<string | null>): Stored | null {
  if (state === null || state === undefined) return null
  let status: string | undefined
  try {
    const parsed = JSON.parse(state) as { status?: unknown }
    status = typeof parsed.status === 'string' ? parsed.status : undefined
  } catch {
    status = undefined
  }
  return { seq: Number(seq), epoch: Number(epoch), status }
}

/** The view shows this stored state or a newer one. A stored null (no state: Redis lost it
 * and the producer has not written the job again) is matched only by a view that says null. */
export function covers(view: View | undefined, stored: Stored | null): boolean {
  if (view === undefined || !view.known) return false
  if (stored === null) return !view.hasData
  if (!view.hasData || view.seq === undefined || view.epoch === undefined) return false
  if (view.epoch !== stored.epoch) return view.epoch > stored.epoch
  if (view.seq !== stored.seq) return view.seq > stored.seq
  return view.status === stored.status
}

/** The view is exactly the stored state: the end-of-run rule. */
export function equals(view: View | undefined, stored: Stored | null): boolean {
  if (view === undefined || !view.known || stored === null) return false
  return view.hasData && view.epoch === stored.epoch && view.seq === stored.seq && view.status === stored.status
}

export interface Behind {
  /** Views compared. */
  views: number
  /** Views not caught up (their tab closed, not yet re-acknowledged, or older than stored). */
  behind: number
  tabsClosed: number
  unacknowledged: number
  tabsBehind: Set<number>
  /** `<tab id>:<job id>` of every view behind. */
  keys: Set<string>
  examples: string[]
}

export const viewKey = (tabId: number, jobId: string) => `${tabId}:${jobId}`

/** Compares every view of the given tabs with the sample, but those in `skip`. */
export function compare(tabs: readonly SimTab[], sample: Sample, rule: (view: View | undefined, stored: Stored | null) => boolean,
  maxExamples = 12, skip: ReadonlySet<string> = new Set()): Behind {
  const out: Behind = { views: 0, behind: 0, tabsClosed: 0, unacknowledged: 0, tabsBehind: new Set(), keys: new Set(), examples: [] }
  for (const tab of tabs) {
    if (!tab.isOpen) out.tabsClosed++
    for (const jobId of tab.jobIds) {
      if (skip.size > 0 && skip.has(viewKey(tab.id, jobId))) continue
      out.views++
      const stored = sample.states.get(jobId) ?? null
      const view = tab.view(jobId)
      let why: string | null = null
      if (!tab.isOpen) why = tab.gaveUp ? 'tab gave up (close policy: stop)' : 'tab not connected'
      else if (!tab.acknowledged(jobId)) {
        out.unacknowledged++
        why = 'subscription not acknowledged (no job_status on this connection)'
      } else if (!rule(view, stored)) why = `view ${describeView(view)} vs stored ${describeStored(stored)}`
      if (why === null) continue
      out.behind++
      out.tabsBehind.add(tab.id)
      out.keys.add(viewKey(tab.id, jobId))
      if (out.examples.length < maxExamples) out.examples.push(`tab ${tab.id} (${tab.url.replace(/^ws:\/\/127\.0\.0\.1:/, ':')}) job ${jobId}: ${why}`)
    }
  }
  return out
}

export function describeView(view: View | undefined): string {
  if (view === undefined || !view.known) return 'unknown'
  if (!view.hasData) return 'null'
  return `${view.status ?? '?'} epoch ${view.epoch ?? '?'} seq ${view.seq ?? '?'}`
}

export function describeStored(stored: Stored | null): string {
  return stored === null ? 'none' : `${stored.status ?? '?'} epoch ${stored.epoch} seq ${stored.seq}`
}

// Producers for the harnesses: every job is driven through the producer script (the Node
// Producer, EVALSHA of src/producer/progress.lua), one call at a time per job so that its
// writes reach Redis in order, at a bounded total rate, until it is told to finish (chaos) or
// has made its number of steps (soak). A failed call is retried later with the same step, as
// a worker retries a report it could not deliver.

import { Redis } from 'ioredis'
import { Producer } from '../../src/producer/producer.js'
import type { JobPayload } from '../../src/wire/protocol.js'

interface Job {
  readonly id: string
  step: number
  inFlight: boolean
  finishing: boolean
  done: boolean
  lastAt: number
  readonly outcome: 'completed' | 'failed'
  /** Steps after which the job finishes by itself (soak); 0: only when told to (chaos). */
  readonly autoFinishAfter: number
}

export interface LoopOptions {
  readonly ratePerSec: number
  /** No job is written more often than this. */
  readonly minIntervalMs: number
  /** Called once a job's terminal state is stored. */
  readonly onTerminal?: (jobId: string) => void
}

const TICK_MS = 20

export class ProducerLoop {
  private readonly redis: Redis
  private readonly producer: Producer
  private readonly jobs = new Map<string, Job>()
  private order: string[] = []
  private cursor = 0
  private tokens = 0
  private timer: NodeJS.Timeout | null = null
  private last = 0
  private readonly inFlightCalls = new Set<Promise<void>>()
  calls = 0
  failures = 0
  lastFailure = ''

  constructor(redisUrl: string, private options: LoopOptions) {
    // A rejected call must mean the script will never run later: in-flight commands are not
    // resent after a reconnect (a stale step replayed after a newer one would rewind the job),
    // and every close rejects what was queued (maxRetriesPerRequest 0). A frozen Redis keeps
    // calls pending instead, which is what a real worker sees.
    this.redis = new Redis(redisUrl, {
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      retryStrategy: (attempt) => Math.min(100 * attempt, 1000),
    })
    this.redis.on('error', () => undefined)
    this.producer = new Producer({ redis: this.redis })
  }

  get ratePerSec(): number {
    return this.options.ratePerSec
  }

  setRate(ratePerSec: number): void {
    this.options = { ...this.options, ratePerSec }
  }

  add(id: string, autoFinishAfter = 0, outcome: 'completed' | 'failed' = 'completed'): void {
    if (this.jobs.has(id)) return
    this.jobs.set(id, { id, step: 0, inFlight: false, finishing: false, done: false, lastAt: 0, outcome, autoFinishAfter })
    this.order.push(id)
  }

  /** The next write of each of these jobs is its terminal state. */
  finish(ids: Iterable<string>): void {
    for (const id of ids) {
      const job = this.jobs.get(id)
      if (job) job.finishing = true
    }
  }

  /** Jobs not yet terminal in Redis (as far as this producer knows). */
  running(): number {
    let n = 0
    for (const job of this.jobs.values()) if (!job.done) n++
    return n
  }

  isDone(id: string): boolean {
    return this.jobs.get(id)?.done === true
  }

  /** Forgets a finished job (soak: its id is not reused). */
  remove(id: string): void {
    if (!this.jobs.delete(id)) return
    this.order = this.order.filter((j) => j !== id)
    if (this.cursor >= this.order.length) this.cursor = 0
  }

  /** Writes step 0 (queued) of every job not yet written, concurrency-bounded, retrying
   * failures up to `attempts` rounds. */
  async seed(concurrency = 50, attempts = 5): Promise<void> {
    for (let round = 0; round < attempts; round++) {
      const pending = [...this.jobs.values()].filter((j) => j.step === 0 && !j.done)
      if (pending.length === 0) return
      for (let i = 0; i < pending.length; i += concurrency) {
        await Promise.all(pending.slice(i, i + concurrency).map((job) => this.write(job)))
      }
    }
    if ([...this.jobs.values()].some((j) => j.step === 0)) throw new Error(`could not seed every job: ${this.lastFailure}`)
  }

  start(): void {
    if (this.timer !== null) return
    this.last = Date.now()
    this.timer = setInterval(() => this.tick(), TICK_MS)
  }

  /** Stops issuing calls and waits (bounded) for those in flight. */
  async stop(waitMs = 5000): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    await Promise.race([Promise.all(this.inFlightCalls), new Promise((r) => setTimeout(r, waitMs))])
  }

  async close(): Promise<void> {
    await this.stop(1000)
    this.redis.disconnect()
  }

  private tick(): void {
    const now = Date.now()
    const rate = this.options.ratePerSec
    // At most a fifth of a second's worth in one go: after a stall the rate stays bounded.
    this.tokens = Math.min(this.tokens + (rate * (now - this.last)) / 1000, Math.max(1, rate / 5))
    this.last = now
    const n = this.order.length
    for (let checked = 0; checked < n && this.tokens >= 1; checked++) {
      const id = this.order[this.cursor]!
      this.cursor = (this.cursor + 1) % n
      const job = this.jobs.get(id)
      if (job === undefined || job.inFlight || job.done || now - job.lastAt < this.options.minIntervalMs) continue
      this.tokens -= 1
      this.track(this.write(job))
    }
  }

  private track(call: Promise<void>): void {
    this.inFlightCalls.add(call)
    void call.finally(() => this.inFlightCalls.delete(call))
  }

  private async write(job: Job): Promise<void> {
    job.inFlight = true
    job.lastAt = Date.now()
    const terminal = job.finishing || (job.autoFinishAfter > 0 && job.step >= job.autoFinishAfter)
    const payload: JobPayload = job.step === 0
      ? { status: 'queued', progress: 0, message: 'queued' }
      : terminal
        ? job.outcome === 'completed'
          ? { status: 'completed', progress: 100, message: 'done', result: { url: `/files/${job.id}` } }
          : { status: 'failed', message: 'gave up', error: { code: 'E_CHAOS', step: job.step } }
        : { status: 'processing', progress: Math.min(99, job.step), message: `step ${job.step}` }
    this.calls++
    try {
      await this.producer.progress(job.id, payload)
      if (terminal && job.step > 0) {
        job.done = true
        this.options.onTerminal?.(job.id)
      } else {
        job.step++
      }
    } catch (err) {
      this.failures++
      this.lastFailure = (err as Error).message
    } finally {
      job.inFlight = false
    }
  }
}

// HOT PATH (with bridge.ts): the one place a job's frames leave the gateway. An update or a
// status is encoded once per encoding that has receivers on this node, handed to one uWS
// publish per topic (uWS fans it out to the topic's sockets), and written once as SSE text
// for all of the job's streams.

import type { TemplatedApp } from 'uWebSockets.js'
import { sseEvent } from '../sse/event.js'
import type { Metrics } from '../support/metrics.js'
import { encodeMessage, frameBytes, jsonRateFrame, jsonUpdateFrame, msgpackRateFrame, msgpackUpdateFrame, statusMessage, type Frame } from '../wire/frames.js'
import type { DecodedPayload } from '../wire/payload.js'
import { isTerminalStatus, type JobPayload, type ServerMessage, type StatusReason } from '../wire/protocol.js'
import { topicFor } from '../wire/topics.js'
import type { RateState, WatchedJob } from './watched-jobs.js'

export type Publisher = Pick<TemplatedApp, 'publish' | 'numSubscribers'>

/** uWS does not send inside publish(): it writes the queued frames right after the current
 * callback returns, and cuts sockets over their backpressure limit there
 * (closeOnBackpressureLimit). The window is open from a publish until the next setImmediate,
 * which covers that pass: an abnormal close inside it is a socket that could not take its
 * frames (too slow, or gone). */
export class DeliveryWindow {
  private isOpen = false
  private closeScheduled = false
  private readonly close = (): void => {
    this.isOpen = false
    this.closeScheduled = false
  }

  get open(): boolean {
    return this.isOpen
  }

  mark(): void {
    this.isOpen = true
    if (!this.closeScheduled) {
      this.closeScheduled = true
      setImmediate(this.close)
    }
  }
}

/** What the fan-out tells of each publish (ws/catch-up.ts PublishedBytes): declared here so
 * the stream depends on no transport. */
export interface PublishCounter {
  /** A frame of `bytes` went to one of the job's topics. */
  add(job: WatchedJob, bytes: number): void
}

export class Fanout {
  readonly delivery = new DeliveryWindow()
  /** Counts the bytes each publish adds to a subscriber's queue, so catch-up can check the
   * job's sockets before a burst takes them past the hard cap (ws/catch-up.ts says why). */
  published: PublishCounter | null = null

  constructor(private readonly app: Publisher, private readonly metrics: Metrics) {}

  /** HOT PATH: one producer update to every watcher of the job on this node. */
  update(job: WatchedJob, update: DecodedPayload): void {
    const jsonSubscribers = this.app.numSubscribers(job.jsonTopic)
    const msgpackSubscribers = this.app.numSubscribers(job.msgpackTopic)
    if (jsonSubscribers > 0 || job.sinks.size > 0) {
      const frame = jsonUpdateFrame(job.id, job.heads, update)
      if (jsonSubscribers > 0) {
        this.publish(job, job.jsonTopic, frame, false, jsonSubscribers)
        this.metrics.updatesPublished++
      }
      if (job.sinks.size > 0) {
        const event = sseEvent('job_update', frame, update.seq)
        for (const sink of job.sinks) sink.send(event)
      }
    }
    if (msgpackSubscribers > 0) {
      this.publish(job, job.msgpackTopic, msgpackUpdateFrame(job.id, job.heads, update), true, msgpackSubscribers)
      this.metrics.updatesPublished++
    }
    if (job.rates !== null) for (const [hz, rate] of job.rates) this.throttled(job, hz, rate, update)
  }

  /** A rate class gets an update at once when its slot is free or the job just ended;
   * otherwise the update waits for the slot, replaced by any newer one (the trailing edge).
   * A frame that skips seqs the class received carries prev_seq (frames.ts), so clients do
   * not take the conflation for a loss and ask for a snapshot. */
  private throttled(job: WatchedJob, hz: number, rate: RateState, update: DecodedPayload): void {
    const seq = update.seq
    rate.unbroken &&= seq !== undefined && rate.seenSeq !== undefined && seq === rate.seenSeq + 1 && update.epoch === rate.seenEpoch
    rate.seenSeq = seq
    rate.seenEpoch = update.epoch
    // A new generation goes at once too: conflated behind a later update (a plain PUBLISH
    // carries no epoch) its clients would never learn that the job began again (a property
    // run caught a 2 Hz client kept on the old generation's final state).
    const newGeneration = update.epoch !== undefined && rate.lastEpoch !== undefined && update.epoch !== rate.lastEpoch
    if (update.epoch !== undefined) rate.lastEpoch = update.epoch
    const now = Date.now()
    if (isTerminalStatus(update.obj.status) || newGeneration || now - rate.lastSentAt >= 1000 / hz) {
      if (rate.timer !== null) clearTimeout(rate.timer)
      rate.timer = null
      rate.pending = null
      rate.lastSentAt = now
      const prevSeq = sent(rate, seq)
      this.publishRate(job, rate, () => jsonRateFrame(job.id, job.heads, update, prevSeq), () => msgpackRateFrame(job.id, job.heads, update, prevSeq))
      return
    }
    // The producer's bytes are only valid during this call: keep the decoded object.
    rate.pending = update.obj
    rate.pendingSeq = seq
    rate.timer ??= setTimeout(() => {
      rate.timer = null
      const data = rate.pending
      if (data === null) return
      rate.pending = null
      rate.lastSentAt = Date.now()
      const prevSeq = sent(rate, rate.pendingSeq)
      const message: ServerMessage = prevSeq === undefined
        ? { type: 'job_update', job_id: job.id, data }
        : { type: 'job_update', job_id: job.id, data, prev_seq: prevSeq }
      this.publishRate(job, rate, () => encodeMessage('json', message), () => encodeMessage('msgpack', message))
    }, rate.lastSentAt + 1000 / hz - now)
  }

  private publishRate(job: WatchedJob, rate: RateState, json: () => Frame, msgpack: () => Frame): void {
    const jsonSubscribers = this.app.numSubscribers(rate.jsonTopic)
    const msgpackSubscribers = this.app.numSubscribers(rate.msgpackTopic)
    if (jsonSubscribers > 0) this.publish(job, rate.jsonTopic, json(), false, jsonSubscribers)
    if (msgpackSubscribers > 0) this.publish(job, rate.msgpackTopic, msgpack(), true, msgpackSubscribers)
    if (jsonSubscribers + msgpackSubscribers > 0) this.metrics.updatesPublished++
  }

  /** A socket joined one of the rate class's topics (uWS's subscription handler). */
  joinRate(job: WatchedJob, hz: number): void {
    job.rates ??= new Map()
    let rate = job.rates.get(hz)
    if (rate === undefined) {
      rate = {
        jsonTopic: topicFor('json', job.id, hz), msgpackTopic: topicFor('msgpack', job.id, hz), members: 0, lastSentAt: 0,
        pending: null, pendingSeq: undefined, timer: null, sentSeq: undefined, seenSeq: undefined, seenEpoch: undefined, lastEpoch: undefined, unbroken: false,
      }
      job.rates.set(hz, rate)
    }
    rate.members++
  }

  leaveRate(job: WatchedJob, hz: number): void {
    const rate = job.rates?.get(hz)
    if (rate === undefined || --rate.members > 0) return
    if (rate.timer !== null) clearTimeout(rate.timer)
    job.rates!.delete(hz)
    if (job.rates!.size === 0) job.rates = null
  }

  /** The job's state as a job_status to every watcher on this node, saying why (a resync after
   * an outage or a late read, a new generation, a stall). */
  status(job: WatchedJob, data: JobPayload | null, reason: StatusReason, stalled = false): void {
    const message = statusMessage(job.id, data, reason, stalled ? { stalled } : undefined)
    const jsonSubscribers = this.app.numSubscribers(job.jsonTopic)
    const msgpackSubscribers = this.app.numSubscribers(job.msgpackTopic)
    if (jsonSubscribers > 0 || job.sinks.size > 0) {
      const frame = encodeMessage('json', message)
      if (jsonSubscribers > 0) this.publish(job, job.jsonTopic, frame, false, jsonSubscribers)
      if (job.sinks.size > 0) {
        const event = sseEvent('job_status', frame, typeof data?.seq === 'number' ? data.seq : undefined)
        for (const sink of [...job.sinks]) sink.resync(event)
      }
    }
    if (msgpackSubscribers > 0) this.publish(job, job.msgpackTopic, encodeMessage('msgpack', message), true, msgpackSubscribers)
    // Rate classes too: the status carries the latest state, so what they held back is moot.
    if (job.rates !== null) {
      for (const rate of job.rates.values()) {
        if (rate.timer !== null) clearTimeout(rate.timer)
        rate.timer = null
        rate.pending = null
        // The class's sockets now hold this state: later skips are counted from it.
        rate.sentSeq = rate.seenSeq = integer(data?.seq)
        rate.seenEpoch = integer(data?.epoch)
        rate.unbroken = true
        this.publishRate(job, rate, () => encodeMessage('json', message), () => encodeMessage('msgpack', message))
      }
    }
  }

  private publish(job: WatchedJob, topic: string, frame: Frame, binary: boolean, subscribers: number): void {
    this.app.publish(topic, frame, binary)
    const bytes = frameBytes(frame)
    this.metrics.framesOut += subscribers
    this.metrics.bytesOut += bytes * subscribers
    this.delivery.mark()
    // May check (and park) the job's sockets now: parking only unsubscribes, which the loops
    // over job.rates and job.sinks that may be running around this call tolerate.
    if (this.published !== null) this.published.add(job, bytes)
  }
}

/** A rate class delivers the update numbered `seq`: the prev_seq its frame carries (undefined:
 * none), and the class's count moves on. Marked only when the frame skips seqs and every one
 * skipped passed through the class (an update the gateway never received stays a gap). */
function sent(rate: RateState, seq: number | undefined): number | undefined {
  const prev = rate.sentSeq
  const prevSeq = rate.unbroken && prev !== undefined && seq !== undefined && seq > prev + 1 ? prev : undefined
  rate.sentSeq = seq
  rate.unbroken = true
  return prevSeq
}

function integer(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) ? value : undefined
}

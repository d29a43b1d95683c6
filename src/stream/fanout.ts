// HOT PATH (with bridge.ts): the one place a job's frames leave the gateway. An update or a
// status is encoded once per encoding that has receivers on this node, handed to one uWS
// publish per topic (uWS fans it out to the topic's sockets), and written once as SSE text
// for all of the job's streams.

import type { TemplatedApp } from 'uWebSockets.js'
import { sseEvent } from '../sse/event.js'
import type { Metrics } from '../support/metrics.js'
import { encodeMessage, frameBytes, jsonUpdateFrame, msgpackUpdateFrame, statusMessage, type Frame } from '../wire/frames.js'
import type { DecodedPayload } from '../wire/payload.js'
import type { JobPayload } from '../wire/protocol.js'
import type { WatchedJob } from './watched-jobs.js'

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

export class Fanout {
  readonly delivery = new DeliveryWindow()

  constructor(private readonly app: Publisher, private readonly metrics: Metrics) {}

  /** HOT PATH: one producer update to every watcher of the job on this node. */
  update(job: WatchedJob, update: DecodedPayload): void {
    const jsonSubscribers = this.app.numSubscribers(job.jsonTopic)
    const msgpackSubscribers = this.app.numSubscribers(job.msgpackTopic)
    if (jsonSubscribers > 0 || job.sinks.size > 0) {
      const frame = jsonUpdateFrame(job.id, job.heads, update)
      if (jsonSubscribers > 0) {
        this.publish(job.jsonTopic, frame, false, jsonSubscribers)
        this.metrics.updatesPublished++
      }
      if (job.sinks.size > 0) {
        const event = sseEvent('job_update', frame, update.seq)
        for (const sink of job.sinks) sink.send(event)
      }
    }
    if (msgpackSubscribers > 0) {
      this.publish(job.msgpackTopic, msgpackUpdateFrame(job.id, job.heads, update), true, msgpackSubscribers)
      this.metrics.updatesPublished++
    }
  }

  /** The job's state as a job_status to every watcher (the resync after an outage). */
  status(job: WatchedJob, data: JobPayload | null): void {
    const message = statusMessage(job.id, data)
    const jsonSubscribers = this.app.numSubscribers(job.jsonTopic)
    const msgpackSubscribers = this.app.numSubscribers(job.msgpackTopic)
    if (jsonSubscribers > 0 || job.sinks.size > 0) {
      const frame = encodeMessage('json', message)
      if (jsonSubscribers > 0) this.publish(job.jsonTopic, frame, false, jsonSubscribers)
      if (job.sinks.size > 0) {
        const event = sseEvent('job_status', frame, typeof data?.seq === 'number' ? data.seq : undefined)
        for (const sink of [...job.sinks]) sink.resync(event)
      }
    }
    if (msgpackSubscribers > 0) this.publish(job.msgpackTopic, encodeMessage('msgpack', message), true, msgpackSubscribers)
  }

  private publish(topic: string, frame: Frame, binary: boolean, subscribers: number): void {
    this.app.publish(topic, frame, binary)
    this.metrics.framesOut += subscribers
    this.metrics.bytesOut += frameBytes(frame) * subscribers
    this.delivery.mark()
  }
}

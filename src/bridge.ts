// HOT PATH: one broker message on `<prefix><job id>` becomes at most one job_update frame per
// encoding, each handed to one uWS topic publish; uWS fans it out to the subscribed sockets.
// Nothing is encoded for an encoding nobody on this node receives.

import type { TemplatedApp } from 'uWebSockets.js'
import { frameBytes, jsonUpdateFrame, msgpackUpdateFrame } from './frames.js'
import type { Metrics } from './metrics.js'
import { decodePayload, MalformedPayload } from './payload.js'
import type { WatchedJobs } from './watched-jobs.js'

/** Set while uWS runs a publish: a socket that closes during it was cut by uWS for exceeding
 * its backpressure limit (closeOnBackpressureLimit), the only way a close happens there. */
export const delivery = { publishing: false }

export function createBridge(
  app: TemplatedApp,
  watched: WatchedJobs,
  metrics: Metrics,
  channelPrefixLength: number,
  onMalformed: (jobId: string, reason: string) => void,
): (channel: Buffer, payload: Buffer) => void {
  return function onBrokerMessage(channel, payload) {
    metrics.brokerMessages++
    const job = watched.get(channel.toString('latin1', channelPrefixLength))
    if (job === undefined) {
      metrics.unwatchedMessages++
      return
    }
    const update = decodePayload(payload)
    if (update instanceof MalformedPayload) {
      metrics.malformedPayloads++
      onMalformed(job.id, update.reason)
      return
    }
    job.lastPayload = update.obj
    job.lastSeq = update.seq

    const jsonSubscribers = app.numSubscribers(job.jsonTopic)
    const jsonFrame = jsonSubscribers > 0 || job.sinks.size > 0 ? jsonUpdateFrame(job.id, job.heads, update) : null
    delivery.publishing = true
    try {
      if (jsonFrame !== null && jsonSubscribers > 0) {
        app.publish(job.jsonTopic, jsonFrame, false)
        metrics.updatesPublished++
        metrics.framesOut += jsonSubscribers
        metrics.bytesOut += frameBytes(jsonFrame) * jsonSubscribers
      }
      const msgpackSubscribers = app.numSubscribers(job.msgpackTopic)
      if (msgpackSubscribers > 0) {
        const frame = msgpackUpdateFrame(job.id, job.heads, update)
        app.publish(job.msgpackTopic, frame, true)
        metrics.updatesPublished++
        metrics.framesOut += msgpackSubscribers
        metrics.bytesOut += frame.length * msgpackSubscribers
      }
    } finally {
      delivery.publishing = false
    }
    if (jsonFrame !== null && job.sinks.size > 0) for (const sink of job.sinks) sink.update(jsonFrame, update.seq)

    const ts = update.obj.ts
    if (typeof ts === 'number') metrics.observeLatency(ts, Date.now())
  }
}

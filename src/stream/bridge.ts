// HOT PATH: one broker message on `<prefix><job id>` becomes at most one job_update frame per
// encoding, each handed to one uWS topic publish; uWS fans it out to the subscribed sockets.
// Nothing is encoded for an encoding nobody on this node receives.

import type { TemplatedApp } from 'uWebSockets.js'
import { frameBytes, jsonUpdateFrame, msgpackUpdateFrame } from '../wire/frames.js'
import type { Metrics } from '../support/metrics.js'
import { decodePayload, MalformedPayload } from '../wire/payload.js'
import type { WatchedJob, WatchedJobs } from './watched-jobs.js'

/** uWS does not send inside publish(): it writes the queued frames right after the current
 * callback returns, and cuts sockets over their backpressure limit there
 * (closeOnBackpressureLimit). `window` is open from a publish until the next setImmediate,
 * which covers that pass: an abnormal close inside it is a socket that could not take its
 * frames (too slow, or gone). */
export const delivery = { window: false }
let closeScheduled = false
function closeWindow(): void {
  delivery.window = false
  closeScheduled = false
}
function openWindow(): void {
  delivery.window = true
  if (!closeScheduled) {
    closeScheduled = true
    setImmediate(closeWindow)
  }
}

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
    // decodePayload refuses what the encoders below cannot write; this catch is the last line
    // so that nothing a producer sends can ever end the process.
    try {
      forward(job, payload)
    } catch (err) {
      metrics.malformedPayloads++
      onMalformed(job.id, `failed in the hot path: ${(err as Error).message}`)
    }
  }

  function forward(job: WatchedJob, payload: Buffer): void {
    const update = decodePayload(payload)
    if (update instanceof MalformedPayload) {
      metrics.malformedPayloads++
      onMalformed(job.id, update.reason)
      return
    }
    job.lastPayload = update.obj
    job.lastSeq = update.seq

    const jsonSubscribers = app.numSubscribers(job.jsonTopic)
    const msgpackSubscribers = app.numSubscribers(job.msgpackTopic)
    const jsonFrame = jsonSubscribers > 0 || job.sinks.size > 0 ? jsonUpdateFrame(job.id, job.heads, update) : null
    if (jsonFrame !== null && jsonSubscribers > 0) {
      app.publish(job.jsonTopic, jsonFrame, false)
      metrics.updatesPublished++
      metrics.framesOut += jsonSubscribers
      metrics.bytesOut += frameBytes(jsonFrame) * jsonSubscribers
    }
    if (msgpackSubscribers > 0) {
      const frame = msgpackUpdateFrame(job.id, job.heads, update)
      app.publish(job.msgpackTopic, frame, true)
      metrics.updatesPublished++
      metrics.framesOut += msgpackSubscribers
      metrics.bytesOut += frame.length * msgpackSubscribers
    }
    if (jsonSubscribers + msgpackSubscribers > 0) openWindow()
    if (jsonFrame !== null && job.sinks.size > 0) for (const sink of job.sinks) sink.update(jsonFrame, update.seq)

    const ts = update.obj.ts
    if (typeof ts === 'number') metrics.observeLatency(ts, Date.now())
  }
}

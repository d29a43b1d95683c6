// Every name built from a job id lives here: Redis channel, state key, uWS topics.
// A job has one uWS topic per encoding, so a frame is encoded once per encoding that has
// subscribers and uWS fans it out to each topic's sockets.

import type { Encoding } from './protocol.js'

export function channelFor(channelPrefix: string, jobId: string): string {
  return channelPrefix + jobId
}

export function jobKey(keyPrefix: string, jobId: string): string {
  return `${keyPrefix}job:${jobId}`
}

/** The lease of the gateway recording a PUBLISH-only job's latest payload. */
export function recorderKey(keyPrefix: string, jobId: string): string {
  return `${keyPrefix}rec:${jobId}`
}

const TOPIC_PREFIX: Record<Encoding, string> = { json: 'j:', msgpack: 'm:' }

export function topicFor(encoding: Encoding, jobId: string): string {
  return TOPIC_PREFIX[encoding] + jobId
}

/** Reads a topic made by topicFor; undefined for anything else. */
export function parseTopic(topic: string): { encoding: Encoding; jobId: string } | undefined {
  const encoding = topic.startsWith('j:') ? 'json' : topic.startsWith('m:') ? 'msgpack' : undefined
  return encoding === undefined ? undefined : { encoding, jobId: topic.slice(2) }
}

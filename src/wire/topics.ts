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

/** Where the producer script keeps a job's owner beside its state, for longer (issue 19): the
 * owner survives a state key that expired or was lost. */
export function jobOwnerKey(keyPrefix: string, jobId: string): string {
  return `${keyPrefix}job-owner:${jobId}`
}

/** The lease of the gateway recording a PUBLISH-only job's latest payload. */
export function recorderKey(keyPrefix: string, jobId: string): string {
  return `${keyPrefix}rec:${jobId}`
}

/** Redis Cluster: the job's channel is the hash tag of every key of the job
 * (`jobwire:job:{progress:<id>}`), so the keys and the sharded channel share one slot and the
 * producer script can store and SPUBLISH in one atomic step. */
export function clusterJobKey(keyPrefix: string, channel: string): string {
  return `${keyPrefix}job:{${channel}}`
}

export function clusterJobOwnerKey(keyPrefix: string, channel: string): string {
  return `${keyPrefix}job-owner:{${channel}}`
}

export function clusterRecorderKey(keyPrefix: string, channel: string): string {
  return `${keyPrefix}rec:{${channel}}`
}

/** The job's state key in the layout `names` describes. */
export function stateKey(names: { readonly keyPrefix: string; readonly channelPrefix: string; readonly cluster?: boolean }, jobId: string): string {
  return names.cluster ? clusterJobKey(names.keyPrefix, channelFor(names.channelPrefix, jobId)) : jobKey(names.keyPrefix, jobId)
}

/** The job's owner key in the layout `names` describes. */
export function ownerKey(names: { readonly keyPrefix: string; readonly channelPrefix: string; readonly cluster?: boolean }, jobId: string): string {
  return names.cluster ? clusterJobOwnerKey(names.keyPrefix, channelFor(names.channelPrefix, jobId)) : jobOwnerKey(names.keyPrefix, jobId)
}

const TOPIC_LETTER: Record<Encoding, string> = { json: 'j', msgpack: 'm' }

/** `j:<id>` / `m:<id>` at full rate; `j5:<id>` for the 5-updates-a-second rate class. */
export function topicFor(encoding: Encoding, jobId: string, hz = 0): string {
  return `${TOPIC_LETTER[encoding]}${hz === 0 ? '' : hz}:${jobId}`
}

const TOPIC = /^([jm])(\d*):/

/** Reads a topic made by topicFor; undefined for anything else. */
export function parseTopic(topic: string): { encoding: Encoding; jobId: string; hz: number } | undefined {
  const match = TOPIC.exec(topic)
  if (match === null) return undefined
  return { encoding: match[1] === 'j' ? 'json' : 'msgpack', jobId: topic.slice(match[0].length), hz: match[2] === '' ? 0 : Number(match[2]) }
}

/** The update rates a subscription can be capped to; a cap is rounded down to one of them, so
 * each job has at most this many extra topics however many rates clients ask for. */
export const RATE_CLASSES: readonly number[] = [1, 2, 5, 10, 20, 50]

/** The rate class of a subscription: 0 for full rate. `requested` is the client's max_hz, `cap`
 * the server's --max-update-hz (0: none). */
export function rateClass(requested: number | undefined, cap: number): number {
  const limit = Math.min(requested ?? Infinity, cap > 0 ? cap : Infinity)
  if (limit === Infinity || limit > RATE_CLASSES[RATE_CLASSES.length - 1]!) return 0
  let chosen = RATE_CLASSES[0]!
  for (const hz of RATE_CLASSES) if (hz <= limit) chosen = hz
  return chosen
}

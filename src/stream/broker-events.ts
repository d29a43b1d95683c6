// What the stream does when its inputs change state: the broker (and, for Celery and BullMQ
// jobs, a source) delivers a message, goes down, comes back, or lost data. The gateway hands
// these listeners to the broker and the sources; the behaviour lives here in one place.

import type { BrokerListener } from '../broker/broker.js'
import type { Readiness } from '../node/readiness.js'
import type { SourceHooks } from '../sources/source.js'
import type { Resync } from './resync.js'
import type { UserJobs } from './user-jobs.js'
import type { WatchedJobs } from './watched-jobs.js'

export interface StreamParts {
  readonly watched: WatchedJobs
  readonly userJobs: UserJobs
  readonly resync: Resync
  readonly readiness: Readiness
  readonly channelPrefix: string
}

export function brokerListener(parts: StreamParts, bridge: (channel: Buffer, payload: Buffer) => void): BrokerListener {
  const { watched, userJobs, resync, readiness } = parts
  return {
    // Users' announcements share the broker connection with job messages; while nobody
    // watches a user, telling them apart costs one size check per message.
    message: (channel, payload) => userJobs.isUserChannel(channel) ? userJobs.deliver(channel, payload) : bridge(channel, payload),
    state: (state) => {
      if (state !== 'ready') {
        watched.markAllDown()
        userJobs.channels.markAllDown()
      }
      readiness.check()
    },
    restored: (dataLost) => {
      if (dataLost) watched.forgetSeen()
      watched.markAllLive()
      userJobs.channels.markAllLive()
      readiness.check()
      void resync.start()
      void userJobs.resync()
    },
    // Redis Cluster: one shard failed over, or a slot moved; only its jobs missed messages.
    // The resync covers every job: more than needed, and failovers are rare.
    channelsRestored: (channels, dataLost) => {
      if (dataLost) {
        for (const channel of channels) if (channel.startsWith(parts.channelPrefix)) watched.get(channel.slice(parts.channelPrefix.length))?.forget()
      }
      void resync.start()
      void userJobs.resync()
    },
  }
}

/** Source jobs go through the same bridge: a source's payload is a producer's payload. */
export function sourceHooks(
  parts: StreamParts,
  bridge: (channel: Buffer, payload: Buffer) => void,
  malformed: (jobId: string, reason: string) => void,
): SourceHooks {
  return {
    message: bridge,
    malformed,
    live: (jobIds, live) => parts.watched.sourceLive(jobIds, live),
    restored: (jobIds, dataLost) => {
      if (dataLost) for (const jobId of jobIds) parts.watched.get(jobId)?.forget()
      void parts.resync.start()
    },
  }
}

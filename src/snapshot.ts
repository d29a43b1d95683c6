// A job's snapshot: what job_status, GET /jobs/<id> and SSE report as its current state.
// The stored state (written by the producer script) is read only after the job's channel is
// live, so nothing published later can be missing from snapshot + stream. Whatever the
// channel delivered since then is compared by seq, so a stored state read a moment before a
// newer message arrived does not win over it. Jobs whose producers only PUBLISH have no stored
// state: their snapshot is the last payload this node saw while watching them, or null.

import type { Broker } from './broker/broker.js'
import type { Logger } from './log.js'
import { decodePayload, MalformedPayload } from './payload.js'
import type { JobPayload } from './protocol.js'
import type { WatchedJobs } from './watched-jobs.js'

export interface Snapshot {
  readonly data: JobPayload | null
  readonly owner: string | null
}

export async function readSnapshots(
  broker: Broker,
  watched: WatchedJobs,
  jobIds: readonly string[],
  log: Logger,
): Promise<Snapshot[]> {
  const records = await broker.readJobs(jobIds)
  return records.map((record, i) => {
    const jobId = jobIds[i]!
    let stored: JobPayload | null = null
    let storedSeq: number | undefined
    if (record.state !== null) {
      const decoded = decodePayload(record.state)
      if (decoded instanceof MalformedPayload) {
        log.warn({ job: jobId, reason: decoded.reason }, 'stored job state is malformed; ignoring it')
      } else {
        stored = decoded.obj
        storedSeq = decoded.seq
      }
    }
    const job = watched.get(jobId)
    const seen = job?.lastPayload ?? null
    let data = stored ?? seen
    if (stored !== null && seen !== null && job!.lastSeq !== undefined && storedSeq !== undefined && job!.lastSeq > storedSeq) {
      data = seen
    }
    return { data, owner: record.owner }
  })
}

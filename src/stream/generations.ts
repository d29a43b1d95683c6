// When a job's generation changes (its state key was created again after it expired or Redis
// lost it, or an admin replaced its owner), the job may now belong to someone else: every
// watcher is checked against the owner read afresh before it sees anything of the new
// generation. Those who may no longer see it are told `forbidden` and stop receiving it; the
// rest get a job_status with the new state. Frames that arrive meanwhile are held back (the
// job_status supersedes them).

import { canWatch } from '../access/auth.js'
import type { Connections } from '../access/connections.js'
import type { Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import type { Fanout } from './fanout.js'
import type { SnapshotReader } from './snapshot.js'
import type { WatchedJob } from './watched-jobs.js'

export function createReauthorizer(
  connections: Connections,
  snapshots: SnapshotReader,
  fanout: Fanout,
  metrics: Metrics,
  log: Logger,
): (job: WatchedJob) => void {
  return (job) => {
    snapshots.read(job.id).then(
      (snapshot) => {
        revokeWhere(job, (c) => !canWatch(c.principal, job.id, snapshot.owner))
        job.reauthorizing = false
        fanout.status(job, snapshot.data)
      },
      (err: Error) => {
        // The owner cannot be read: only watchers who may see the job whoever owns it stay.
        log.warn({ job: job.id, err: err.message }, 'new job generation: owner unreadable; keeping only watchers that need no owner')
        revokeWhere(job, (c) => !canWatch(c.principal, job.id, null))
        job.reauthorizing = false
      },
    )
  }

  function revokeWhere(job: WatchedJob, refused: (c: { principal: Parameters<typeof canWatch>[0] }) => boolean): void {
    for (const c of connections.all()) {
      if (!c.watches(job.id) || !refused(c)) continue
      c.revoke(job.id)
      metrics.countRefusal(c.transport, 'forbidden')
    }
  }
}

// One flow for every transport: how a request to watch a job becomes a watcher, and how a
// one-off read answers. WebSocket subscribes and SSE streams open watches; job_status
// requests and GET /jobs/<id> read. The access rule, the ordering guarantee and the refusal
// counts live here once.

import { canWatch, type Principal } from '../access/auth.js'
import type { Transport } from '../access/access.js'
import type { Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import { relationOf, type JobPayload, type Since } from '../wire/protocol.js'
import type { Snapshot, SnapshotReader } from './snapshot.js'
import type { WatchedJob, WatchedJobs } from './watched-jobs.js'

/** Why a watch or read did not happen. `gone`: the receiver left while the snapshot was read. */
export type Refusal = 'forbidden' | 'unavailable' | 'gone'

export type ReadResult = { readonly ok: true; readonly data: JobPayload | null; readonly stalled?: boolean } | { readonly ok: false; readonly refusal: Refusal }

export class Watches {
  /** Told of every watch answered from a record of a PUBLISH-only job or from nothing: it
   * reads the job once more a moment later (rereads.ts). */
  unsettled: ((job: WatchedJob, data: JobPayload | null) => void) | null = null
  /** Told when the state read is behind the `since` a client gave (same epoch, lower seq):
   * the client saw a later state, so the record may have lost writes (losses.ts checks). */
  behind: ((jobId: string, since: Since) => void) | null = null

  constructor(
    private readonly watched: WatchedJobs,
    private readonly snapshots: SnapshotReader,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  /**
   * Access comes before anything a watch costs: a principal whom the job's owner does not
   * decide for (access off, an admin, a `jobs` claim covering it) goes on at once; anyone else
   * is checked against the owner read once (one coalesced read on the command connection),
   * so a refusal costs no SUBSCRIBE, no source connection and no stream read. Then the job
   * is held while its snapshot is read (only once its channel is live, so nothing
   * published later can be missing from snapshot + stream), applies the access rule, then
   * calls `attach` in the same synchronous step: the receiver joins the job's stream and
   * sends the snapshot before any later message can reach it. `attach` holds the job on its
   * own (a uWS topic subscription, or an SSE stream's acquire) and returns false when the
   * receiver has gone.
   */
  async open(
    principal: Principal | null,
    jobId: string,
    transport: Transport,
    attach: (job: WatchedJob, snapshot: Snapshot) => boolean,
    since?: Since,
  ): Promise<ReadResult> {
    // canWatch without an owner: whether the rule admits the principal whoever owns the job.
    if (!canWatch(principal, jobId, null)) {
      const refused = await this.checkOwner(principal, jobId, transport)
      if (refused !== null) return refused
    }
    const job = this.watched.acquire(jobId)
    try {
      const snapshot = await this.snapshots.readLive(job)
      if (!canWatch(principal, jobId, snapshot.owner)) return this.refuse(transport, 'forbidden')
      if (!attach(job, snapshot)) return { ok: false, refusal: 'gone' }
      const epoch = snapshot.data?.epoch
      if (job.generation === undefined && typeof epoch === 'number') job.generation = epoch
      this.watched.observeSnapshot(job, snapshot.data)
      if (snapshot.from === 'none' || snapshot.from === 'recorded') this.unsettled?.(job, snapshot.data)
      this.checkSince(jobId, since, snapshot.data)
      return { ok: true, data: snapshot.data }
    } catch (err) {
      this.log.warn({ job: jobId, transport, err: (err as Error).message }, 'watch failed: snapshot unavailable')
      return this.refuse(transport, 'unavailable')
    } finally {
      this.watched.release(job)
    }
  }

  /** The job's current state for whoever may see it (job_status requests, GET /jobs/<id>). */
  async read(principal: Principal | null, jobId: string, transport: Transport, since?: Since): Promise<ReadResult> {
    let snapshot: Snapshot
    try {
      snapshot = await this.snapshots.read(jobId)
    } catch (err) {
      this.log.warn({ job: jobId, transport, err: (err as Error).message }, 'read failed: snapshot unavailable')
      return this.refuse(transport, 'unavailable')
    }
    // The same answer whether or not the job exists.
    if (!canWatch(principal, jobId, snapshot.owner)) return this.refuse(transport, 'forbidden')
    this.checkSince(jobId, since, snapshot.data)
    return { ok: true, data: snapshot.data, stalled: snapshot.stalled }
  }

  private checkSince(jobId: string, since: Since | undefined, data: JobPayload | null): void {
    if (since !== undefined && data !== null && relationOf(since, data) === 'behind') this.behind?.(jobId, since)
  }

  /** The refusal of a principal the job's stored owner does not admit, or null to go on. */
  private async checkOwner(principal: Principal | null, jobId: string, transport: Transport): Promise<ReadResult | null> {
    let owner: string | null
    try {
      owner = (await this.snapshots.read(jobId)).owner
    } catch (err) {
      this.log.warn({ job: jobId, transport, err: (err as Error).message }, 'watch failed: owner unreadable')
      return this.refuse(transport, 'unavailable')
    }
    return canWatch(principal, jobId, owner) ? null : this.refuse(transport, 'forbidden')
  }

  private refuse(transport: Transport, refusal: Refusal): ReadResult {
    this.metrics.countRefusal(transport, refusal)
    return { ok: false, refusal }
  }
}

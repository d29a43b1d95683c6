// The broker: where producers' messages come from and where job state is stored.
// Implementations with the same semantics: Redis (production, several gateway processes),
// Redis Cluster (cluster.ts: sharded pub/sub, one shard's failover touches only its jobs) and
// an embedded in-process one (no dependencies; one process). test/broker-contract.ts runs the
// same suite against each.

export type BrokerKind = 'redis' | 'cluster' | 'embedded'
/**
 * Where the broker stands, from the gateway's point of view:
 * - `connecting`: has never been ready since start().
 * - `ready`: commands work and every subscription is live (on Redis Cluster: except those of
 *   a shard failing over or a slot moving, which come back with channelsRestored()).
 * - `down`: a connection was lost after having been ready (Redis Cluster: no node answers);
 *   messages may be missed.
 * - `replaying`: the connections are back; the subscriptions are being re-sent and are not
 *   all acknowledged yet, so messages may still be missed (embedded never is).
 * - `closed`: close() was called; the listener is not told (its owner asked for it).
 */
export type BrokerState = 'connecting' | 'ready' | 'down' | 'replaying' | 'closed'

/** A job's stored record, as the producer script left it. */
export interface JobRecord {
  /** The latest payload with seq and ts merged in, as published; null when none is stored. */
  readonly state: Buffer | null
  readonly owner: string | null
  /** For jobs whose producers only PUBLISH: the latest payload a gateway recorded, as JSON. */
  readonly seen: Buffer | null
}

/** A recorder that stops writing (it stopped watching, or died) hands over after this long.
 * Short, because until then no other gateway can record a payload the holder no longer sees:
 * with the recorder's retry (at most half of it), a PUBLISH-only job's record lands within
 * about 1.5 s whoever watches it. */
export const RECORDER_LEASE_MS = 1000

/** A PUBLISH-only job's latest payload, for recordSeen. */
export interface SeenPayload {
  readonly jobId: string
  readonly json: string
}

/** What became of one recordSeen entry: `written`; `recorded` (another gateway holds the
 * job's lease and has recorded this very payload: nothing left to do); `refused` (another
 * gateway holds the lease, and has recorded something else); `stored` (the job has a state
 * stored by the producer script, which a plain PUBLISH does not change; nothing written). */
export type SeenOutcome = 'written' | 'recorded' | 'refused' | 'stored'

export interface ProgressOptions {
  /** The user id to record as the job's owner, when it has none. */
  readonly owner?: string
  /** Replace an owner already recorded (admins only); otherwise a different owner is refused
   * with ProducerError and nothing is written. */
  readonly replaceOwner?: boolean
  readonly ttlSec?: number
  readonly terminalTtlSec?: number
}

export interface BrokerListener {
  /** HOT PATH: one message on a subscribed channel. Both buffers are only valid during the
   * call. */
  message(channel: Buffer, payload: Buffer): void
  /** Every change of state but to `closed`. */
  state(state: BrokerState): void
  /** Once per outage, right after the state is back to `ready`: every subscription is live
   * again, and stored state may have moved on while messages could not arrive. `dataLost`:
   * the broker is another server process than before (a restart or failover), so what was
   * seen before may describe state that no longer exists. */
  restored(dataLost: boolean): void
  /** Redis Cluster: one shard failed over, or a slot moved to another master, while the
   * broker as a whole stayed ready. These channels' subscriptions were gone for a while and
   * are live again on the shard that owns them now; messages published meanwhile were missed.
   * `dataLost`: their shard's master is another server process than before (a failover),
   * which may lack the last writes. A listener without this method is told
   * restored(dataLost) instead. */
  channelsRestored?(channels: readonly string[], dataLost: boolean): void
}

export interface Broker {
  readonly kind: BrokerKind
  readonly state: BrokerState
  /** Times the connection came back after an outage. */
  readonly reconnects: number
  /** Connects in the background; `state` reports progress. */
  start(listener: BrokerListener): void
  /** Resolves once messages on every channel are being received; while the broker is out of
   * reach, that is once it is back (rejects only on a refusal or close()). */
  subscribe(channels: readonly string[]): Promise<void>
  unsubscribe(channels: readonly string[]): Promise<void>
  /** Resolves once the pattern subscription is live. */
  psubscribe(pattern: string): Promise<void>
  readJobs(jobIds: readonly string[]): Promise<JobRecord[]>
  /** The producer path: atomically bumps seq, stores the payload as the job's state and
   * publishes it. Resolves to the new seq; rejects with ProducerError for a bad payload. */
  publishProgress(jobId: string, payload: Buffer, options?: ProgressOptions): Promise<number>
  /** Stores what this gateway saw of PUBLISH-only jobs, for the other workers and nodes
   * (stream/recorder.ts); a no-op where one process is all there is. Resolves to what became
   * of each entry (SeenOutcome). */
  recordSeen(entries: readonly SeenPayload[], recorderId: string): Promise<SeenOutcome[]>
  /** Redis lost writes to the job (its record went back within one epoch): begins a new epoch
   * on the stored record if it is still at (epoch, seq), and publishes the state with it
   * (src/broker/new-epoch.lua). Resolves to the new epoch, or null when the record has moved
   * on or is gone. */
  newEpoch(jobId: string, epoch: number, seq: number): Promise<number | null>
  /** A plain PUBLISH, as existing workers do; nothing is stored. */
  publish(channel: string, payload: Buffer | string): Promise<void>
  close(): Promise<void>
}

export interface BrokerNames {
  readonly channelPrefix: string
  readonly keyPrefix: string
  readonly stateTtlSec: number
  readonly terminalTtlSec: number
  /** Redis Cluster's layout: a job's keys carry its channel as their hash tag, and the
   * producer script publishes with SPUBLISH (see docs/protocol.md). */
  readonly cluster?: boolean
}

// The scenarios of `make bench` and the sizes of its smaller versions. The aims are the
// project's targets for this 2-core machine on loopback (issue 5).

export type Size = 'full' | 'quick' | 'tiny'

export interface StreamScenario {
  readonly kind: 'stream'
  readonly id: string
  readonly title: string
  readonly sockets: number
  readonly jobs: number
  readonly ratePerSec: number
  readonly aim: { p99Ms: number }
  /** Where the messages come from: the bench's redis-server (the default), or a Redis Cluster
   * of 3 masters and 3 replicas (sharded pub/sub; jobwire only: the baseline and the floor
   * speak to one Redis). */
  readonly broker?: 'redis' | 'cluster'
  /** Several jobwire nodes (one process each) on one Redis, the sockets spread over them
   * (issue 10, item 5); jobwire only. */
  readonly nodes?: number
  /** How producers report: the producer script (the default), or a plain PUBLISH whose jobs
   * have no stored state, so every node records the latest payload it sees (the cost of
   * issue 10, item 2, measured in Redis's commandstats and the nodes' seen_records_total). */
  readonly via?: 'script' | 'publish'
}

export interface SweepScenario {
  readonly kind: 'sweep'
  readonly id: string
  readonly title: string
  readonly sockets: number
  readonly jobs: number
  /** Deliveries per second to try, in order, until one misses p99 <= 10 ms or loses a frame. */
  readonly steps: readonly number[]
  readonly aim: { p99Ms: number; deliveriesPerCore: number }
}

export interface IdleScenario {
  readonly kind: 'idle'
  readonly id: string
  readonly title: string
  readonly sockets: number
  /** The connect-time figure is taken over this many sockets. */
  readonly connectProbe: number
  /** Issue 12: at most 1 KB per connection settled in one process, 1.5 KB over several
   * workers (their and the primary's fixed costs included; results from before it carry only
   * issue 5's 2 KB). */
  readonly aim: { bytesPerConnection: number; bytesPerConnectionWorkers?: number; connectMs: number }
}

/** Issue 12, item 3: the same load watched at full rate and with every subscription capped
 * (subscribe_job max_hz), jobwire only (the baseline and the floor have no caps). Each job
 * publishes at `perJobHz` for `publishMs`, its last update terminal. See bench/ratecap.ts. */
export interface RateCapScenario {
  readonly kind: 'ratecap'
  readonly id: string
  readonly title: string
  readonly sockets: number
  readonly jobs: number
  /** Updates per second of each job. */
  readonly perJobHz: number
  /** The capped run's max_hz. */
  readonly maxHz: number
  readonly publishMs: number
  /** After the publisher is done, how long to wait at most for every socket to hold its job's
   * terminal state; what has not arrived by then is the backlog. */
  readonly drainMs: number
  /** One socket in this many (by fan-out position) records every frame it receives. */
  readonly probeEvery: number
}

export type Scenario = StreamScenario | SweepScenario | IdleScenario | RateCapScenario

/** Sockets per job: how many sockets one update goes to (loadgen.c spreads socket i over job
 * i % jobs). Sweeps and reports are labelled by it, never by the job count in their id. */
export function fanout(s: StreamScenario | SweepScenario): number {
  return s.sockets / s.jobs
}

/** jobwire against the floor (bench/native/floor.c, issue 12): at most these multiples of the
 * floor's gateway CPU per delivery and p99, measured in the same scenario on the same machine. */
export interface FloorAim {
  readonly cpuPerDelivery: number
  readonly p99?: number
}

export function floorAim(fanoutSockets: number): FloorAim | null {
  if (Math.round(fanoutSockets) === 1000) return { cpuPerDelivery: 1.1, p99: 1.3 }
  if (Math.round(fanoutSockets) === 10) return { cpuPerDelivery: 1.3 }
  return null
}

export interface BenchPlan {
  readonly size: Size
  readonly windowMs: number
  /** Load before each stream window, while V8 optimises the fresh gateway's hot path (its
   * compiler threads take the core from the main thread meanwhile: README, Light-load p99). */
  readonly warmupMs: number
  /** Also run jobwire with one worker per core. Quick and tiny leave it to the full run, so
   * that bench-quick stays under a minute. */
  readonly workerTargets: boolean
  readonly scenarios: readonly Scenario[]
  readonly pollingSeconds: number
}

const sweepSteps = [20_000, 40_000, 60_000, 80_000, 100_000, 120_000, 150_000, 180_000, 220_000]

export function benchPlan(size: Size): BenchPlan {
  if (size === 'tiny') {
    return {
      size,
      windowMs: 1000,
      warmupMs: 1000,
      workerTargets: false,
      pollingSeconds: 1,
      scenarios: [
        { kind: 'stream', id: 'seed', title: 'seed claim (tiny)', sockets: 60, jobs: 6, ratePerSec: 100, aim: { p99Ms: 2 } },
        { kind: 'sweep', id: 'sweep-10', title: 'throughput sweep, 10 jobs (tiny)', sockets: 60, jobs: 10, steps: [600, 1200], aim: { p99Ms: 10, deliveriesPerCore: 100_000 } },
        { kind: 'idle', id: 'idle', title: 'idle density (tiny)', sockets: 200, connectProbe: 100, aim: { bytesPerConnection: 1024, bytesPerConnectionWorkers: 1536, connectMs: 1000 } },
        { kind: 'stream', id: 'nodes-publish', title: 'seed load over three nodes, PUBLISH-only (tiny)', sockets: 60, jobs: 6, ratePerSec: 100, aim: { p99Ms: 2 }, nodes: 3, via: 'publish' },
        { kind: 'ratecap', id: 'ratecap', title: 'rate caps (tiny)', sockets: 100, jobs: 10, perJobHz: 50, maxHz: 5, publishMs: 1000, drainMs: 3000, probeEvery: 2 },
      ],
    }
  }
  if (size === 'quick') {
    return {
      size,
      windowMs: 2000,
      warmupMs: 2000,
      workerTargets: false,
      pollingSeconds: 1,
      scenarios: [
        { kind: 'stream', id: 'seed', title: 'seed claim', sockets: 1000, jobs: 100, ratePerSec: 1000, aim: { p99Ms: 2 } },
        { kind: 'stream', id: 'broadcast', title: 'broadcast (quick: 2,000 sockets)', sockets: 2000, jobs: 2, ratePerSec: 10, aim: { p99Ms: 10 } },
        { kind: 'stream', id: 'cluster', title: 'seed claim on Redis Cluster', sockets: 1000, jobs: 100, ratePerSec: 1000, aim: { p99Ms: 2 }, broker: 'cluster' },
        { kind: 'ratecap', id: 'ratecap', title: 'rate caps (quick: 200 jobs, 2,000 sockets)', sockets: 2000, jobs: 200, perJobHz: 50, maxHz: 5, publishMs: 1000, drainMs: 2000, probeEvery: 5 },
      ],
    }
  }
  return {
    size,
    windowMs: 10_000,
    warmupMs: 6000,
    workerTargets: true,
    pollingSeconds: 5,
    scenarios: [
      { kind: 'stream', id: 'seed', title: 'seed claim', sockets: 1000, jobs: 100, ratePerSec: 1000, aim: { p99Ms: 2 } },
      { kind: 'stream', id: 'edge', title: 'edge node', sockets: 10_000, jobs: 1000, ratePerSec: 2000, aim: { p99Ms: 3 } },
      { kind: 'stream', id: 'broadcast', title: 'broadcast-heavy', sockets: 10_000, jobs: 10, ratePerSec: 50, aim: { p99Ms: 10 } },
      { kind: 'stream', id: 'cluster', title: 'seed claim on Redis Cluster', sockets: 1000, jobs: 100, ratePerSec: 1000, aim: { p99Ms: 2 }, broker: 'cluster' },
      { kind: 'stream', id: 'nodes', title: 'seed load over three nodes', sockets: 1000, jobs: 100, ratePerSec: 1000, aim: { p99Ms: 2 }, nodes: 3 },
      { kind: 'stream', id: 'nodes-publish', title: 'seed load over three nodes, PUBLISH-only producers', sockets: 1000, jobs: 100, ratePerSec: 1000, aim: { p99Ms: 2 }, nodes: 3, via: 'publish' },
      { kind: 'stream', id: 'cluster-edge', title: 'edge node on Redis Cluster', sockets: 10_000, jobs: 1000, ratePerSec: 2000, aim: { p99Ms: 3 }, broker: 'cluster' },
      { kind: 'sweep', id: 'sweep-10', title: 'throughput sweep, fan-out 1,000', sockets: 10_000, jobs: 10, steps: sweepSteps, aim: { p99Ms: 10, deliveriesPerCore: 100_000 } },
      { kind: 'sweep', id: 'sweep-1000', title: 'throughput sweep, fan-out 10', sockets: 10_000, jobs: 1000, steps: sweepSteps, aim: { p99Ms: 10, deliveriesPerCore: 100_000 } },
      { kind: 'idle', id: 'idle', title: 'idle density', sockets: 50_000, connectProbe: 10_000, aim: { bytesPerConnection: 1024, bytesPerConnectionWorkers: 1536, connectMs: 1000 } },
      { kind: 'ratecap', id: 'ratecap', title: 'rate caps', sockets: 10_000, jobs: 1000, perJobHz: 50, maxHz: 5, publishMs: 4000, drainMs: 6000, probeEvery: 5 },
    ],
  }
}

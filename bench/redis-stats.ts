// What Redis spent on each command (INFO commandstats), and what the gateway nodes recorded
// for PUBLISH-only jobs (jobwire_seen_records_total): the cost of the recorder (issue 10, item
// 2) in a window is the difference of two readings.

import { Redis } from 'ioredis'

export interface CommandCost {
  readonly calls: number
  /** Microseconds of Redis CPU. */
  readonly usec: number
}

/** Scripts (EVAL and EVALSHA together) and every other command, as Redis counts them. */
export async function commandStats(url: string): Promise<Map<string, CommandCost>> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 })
  redis.on('error', () => undefined)
  try {
    await redis.connect()
    const out = new Map<string, CommandCost>()
    for (const line of (await redis.info('commandstats')).split('\n')) {
      const m = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line.trim())
      if (m) out.set(m[1]!, { calls: Number(m[2]), usec: Number(m[3]) })
    }
    return out
  } finally {
    redis.disconnect()
  }
}

/** Calls and CPU between two readings, summed over `commands`. */
export function costBetween(before: ReadonlyMap<string, CommandCost>, after: ReadonlyMap<string, CommandCost>, commands: readonly string[]): CommandCost {
  let calls = 0
  let usec = 0
  for (const name of commands) {
    calls += (after.get(name)?.calls ?? 0) - (before.get(name)?.calls ?? 0)
    usec += (after.get(name)?.usec ?? 0) - (before.get(name)?.usec ?? 0)
  }
  return { calls, usec }
}

/** jobwire_seen_records_total summed over the nodes at these ports. */
export async function seenRecords(ports: readonly number[]): Promise<number> {
  let total = 0
  for (const port of ports) {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(3000) })).text()
    total += Number(/^jobwire_seen_records_total (\d+)$/m.exec(text)?.[1] ?? 0)
  }
  return total
}

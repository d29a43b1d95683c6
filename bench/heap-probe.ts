// Loaded into a gateway process by bench/heap.ts (`node --import <this>?dir=<dir>`): on SIGUSR2
// it reads <dir>/cmd and writes what was asked to <dir>/<pid>-<seq>.json (and a heap snapshot
// beside it), so the harness can see inside the gateway (and each worker) without an RPC of
// the gateway's own. Nothing here runs until the signal arrives.
//
// Commands (words in <dir>/cmd): stats; gc (a full GC first); snapshot (a heap snapshot);
// sample-start / sample-stop: V8's sampling heap profiler, keeping what a full GC collected
// but not what a young-generation GC did, so the profile shows where the garbage that was
// promoted to the old generation (and the live objects) were allocated.

import { Session } from 'node:inspector'
import { readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import v8 from 'node:v8'

export interface ProbeReport {
  readonly pid: number
  readonly command: string
  readonly memory: NodeJS.MemoryUsage
  readonly spaces: v8.HeapSpaceInfo[]
  /** VmRSS, RssAnon, RssFile from /proc/self/status, in bytes. */
  readonly status: Record<string, number>
  readonly snapshot: string | null
  /** A sampling heap profile (the inspector's HeapProfiler format), written by sample-stop. */
  readonly profile: string | null
}

function status(): Record<string, number> {
  const out: Record<string, number> = {}
  for (const line of readFileSync('/proc/self/status', 'utf8').split('\n')) {
    const m = /^(VmRSS|RssAnon|RssFile|VmData):\s+(\d+) kB/.exec(line)
    if (m) out[m[1]!] = Number(m[2]) * 1024
  }
  return out
}

const dir = new URL(import.meta.url).searchParams.get('dir')
let seq = 0
let session: Session | null = null

function post(method: string, params: object = {}): Promise<unknown> {
  if (session === null) {
    session = new Session()
    session.connect()
  }
  return new Promise((resolve, reject) => session!.post(method, params, (err, result) => (err ? reject(err) : resolve(result))))
}

if (dir !== null) {
  process.on('SIGUSR2', () => void (async () => {
    const command = readFileSync(join(dir, 'cmd'), 'utf8').trim()
    const n = ++seq
    const gc = (globalThis as { gc?: () => void }).gc
    if (command === 'sample-start') {
      await post('HeapProfiler.startSampling', { samplingInterval: 256, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: false })
    }
    let profile: string | null = null
    if (command === 'sample-stop') {
      gc?.() // what was promoted and has died is counted as collected by a full GC
      const result = (await post('HeapProfiler.stopSampling')) as { profile: unknown }
      profile = join(dir, `${process.pid}-${n}.heapprofile`)
      writeFileSync(profile, JSON.stringify(result.profile))
    }
    // A forced full GC first when asked: what is retained, not what is merely not yet collected.
    if (command.includes('gc') && gc) gc()
    const snapshot = command.includes('snapshot') ? v8.writeHeapSnapshot(join(dir, `${process.pid}-${n}.heapsnapshot`)) : null
    const report: ProbeReport = { pid: process.pid, command, memory: process.memoryUsage(), spaces: v8.getHeapSpaceStatistics(), status: status(), snapshot, profile }
    // Written then renamed, so the harness never reads half a file.
    const path = join(dir, `${process.pid}-${n}.json`)
    writeFileSync(`${path}.tmp`, JSON.stringify(report))
    renameSync(`${path}.tmp`, path)
  })())
}

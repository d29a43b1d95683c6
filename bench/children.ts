// Every process a bench run starts, so that however the run ends (an error, the SIGTERM of a
// test's timeout, Ctrl-C) none is left behind: one synchronous exit handler kills them all.
// A test that timed out on `make bench`'s tiny run once left its gateway and redis-server
// running on the machine.

import type { ChildProcess } from 'node:child_process'
import { rmSync } from 'node:fs'
import { childPids } from './procstat.js'

const started = new Set<ChildProcess>()
/** Scratch directories of those processes (a cluster's node files), removed with them. */
const scratch = new Set<string>()

export function alive(proc: ChildProcess): boolean {
  return proc.exitCode === null && proc.signalCode === null
}

export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig)
  } catch {
    // already gone
  }
}

export function removeOnExit(dir: string): void {
  scratch.add(dir)
}

export function track<T extends ChildProcess>(proc: T): T {
  started.add(proc)
  proc.once('exit', () => started.delete(proc))
  return proc
}

/** Kills every tracked process still running, at once and synchronously (it runs from an
 * 'exit' handler). A primary's workers are found as its children and killed by pid: killed
 * first, the primary could leave them behind. */
export function killTracked(): void {
  for (const proc of [...started]) {
    if (proc.pid === undefined || !alive(proc)) continue
    for (const child of childPids(proc.pid)) signal(child, 'SIGKILL')
    signal(proc.pid, 'SIGKILL')
  }
  started.clear()
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true })
  scratch.clear()
}

let installed = false

/** Kills what is tracked when this process exits, and makes SIGINT and SIGTERM an exit. */
export function killTrackedOnExit(): void {
  if (installed) return
  installed = true
  process.on('exit', killTracked)
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) process.on(sig, () => process.exit(code))
}

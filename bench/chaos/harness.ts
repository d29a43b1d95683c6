// What the long runs (make chaos, make soak) share besides their processes: settings read
// from the environment, a log stamped with the run's time, and the rule that whatever ends
// the run (its end, an error, Ctrl-C) kills every process it started.

import { loadavg } from 'node:os'
import { killEverything } from './procs.js'

/** A positive number from the environment, or `fallback` when unset; exits with a message
 * naming the variable when it is not one. */
export function positiveEnv(name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const n = Number(raw)
  if (!Number.isFinite(n) || n <= 0) {
    console.error(`${name} must be a positive number, not '${raw}'`)
    process.exit(2)
  }
  return n
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export interface Harness {
  readonly log: (message: string) => void
  /** When the run began (ms since the epoch). */
  readonly started: number
  /** The machine is shared: how busy it was is part of every figure. */
  readonly loadAtStart: number
}

/** Starts the run's clock and log (`[tag +12.3s] ...` on stderr) and kills every started
 * process on exit, SIGINT or SIGTERM. */
export function startHarness(tag: string): Harness {
  const started = Date.now()
  const log = (message: string) => process.stderr.write(`[${tag} +${((Date.now() - started) / 1000).toFixed(1)}s] ${message}\n`)
  process.on('exit', () => killEverything())
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      log(`${sig}: stopping everything`)
      killEverything()
      process.exit(130)
    })
  }
  return { log, started, loadAtStart: loadavg()[0]! }
}


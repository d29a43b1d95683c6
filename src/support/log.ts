// Structured logs (pino, JSON lines on stdout). Components take a child logger so every line
// says where it came from.
//
// Logging must never stall the gateway: stdout may be a pipe whose reader has stopped reading
// (a stuck log shipper). Lines go through one asynchronous writer per process (stdout is a
// process-wide resource), whose buffer is bounded: past it, lines are dropped and counted
// (jobwire_log_lines_dropped_total), never waited for. Nothing flushes synchronously at exit.

import { pino, type Logger } from 'pino'
// sonic-boom is CommonJS; its module object carries the class as a property.
import sonicBoom, { type SonicBoom } from 'sonic-boom'
import type { LogLevel } from './config.js'

export type { Logger }

let stdout: SonicBoom | null = null
let dropped = 0

/** `bufferBytes`: log bytes held while stdout does not take them; beyond this they are dropped.
 * The first logger created sets it (there is one stdout). */
function stdoutWriter(bufferBytes: number): SonicBoom {
  if (stdout === null) {
    const writer = new sonicBoom.SonicBoom({ fd: 1, sync: false, maxLength: bufferBytes })
    writer.on('drop', () => dropped++)
    // EPIPE (the reader is gone) and other write errors must not crash the process.
    writer.on('error', () => dropped++)
    stdout = writer
  }
  return stdout
}

export function createLogger(level: LogLevel, bindings: Record<string, unknown> = {}, bufferBytes = 1024 * 1024): Logger {
  const options = { level, base: { pid: process.pid, ...bindings } }
  return level === 'silent' ? pino(options) : pino(options, stdoutWriter(bufferBytes))
}

/** Log lines dropped because stdout did not take them in time. */
export function droppedLogLines(): number {
  return dropped
}

/** Gives buffered lines until `ms` to reach stdout (the writer's next 'drain'); resolves
 * either way. For the last lines before a deliberate exit. */
export function flushLogs(ms: number): Promise<void> {
  const writer = stdout
  if (writer === null) return Promise.resolve()
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer)
      writer.off('drain', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    writer.once('drain', done)
  })
}

/** Logs at most `perInterval` lines per interval for a noisy condition (a producer flooding
 * malformed payloads must not flood the log too); the rest are counted and summarised. */
export function rateLimitedLog(log: Logger, perInterval = 10, intervalMs = 10_000) {
  let windowStart = 0
  let logged = 0
  let suppressed = 0
  return (fields: Record<string, unknown>, msg: string): void => {
    const now = Date.now()
    if (now - windowStart >= intervalMs) {
      if (suppressed > 0) log.warn({ suppressed }, `${suppressed} similar log lines suppressed`)
      windowStart = now
      logged = 0
      suppressed = 0
    }
    if (logged < perInterval) {
      logged++
      log.warn(fields, msg)
    } else {
      suppressed++
    }
  }
}

// Structured logs (pino, JSON lines on stdout). Components take a child logger so every line
// says where it came from.
//
// Logging must never stall the gateway: stdout may be a pipe whose reader has stopped reading
// (a stuck log shipper). Lines go through one asynchronous writer per process (stdout is a
// process-wide resource), whose buffer is bounded: past it, lines are dropped and counted
// (jobwire_log_lines_dropped_total), never waited for. Nothing flushes synchronously at exit,
// and no write can hold a thread that exit would wait for.

import { hostname } from 'node:os'
import type { EventEmitter } from 'node:events'
import { fstatSync, type Stats } from 'node:fs'
import { Socket } from 'node:net'
import { isatty } from 'node:tty'
import { pino, type DestinationStream, type Logger } from 'pino'
// sonic-boom is CommonJS; its module object carries the class as a property.
import sonicBoom, { type SonicBoom } from 'sonic-boom'
import type { LogFormat, LogLevel } from './config.js'

export type { Logger }

/** Where log lines leave the process: write never blocks and never waits; past the buffer,
 * lines are dropped and counted. */
interface StdoutWriter extends DestinationStream {
  /** Resolves when what is buffered has been written, or after `ms`. */
  drained(ms: number): Promise<void>
}

let stdout: StdoutWriter | null = null
/** Whether this process's logger writes pretty lines (see createLogger). */
let prettyOutput = false
let dropped = 0

/**
 * A pipe or socket (a log shipper, `| cat`) goes through a non-blocking libuv stream: a reader
 * that stops reading fills our bounded buffer, nothing else. Writing it with fs.write, as
 * sonic-boom does, would leave a threadpool thread blocked in write(2), and process.exit waits
 * for every threadpool thread: the process could never exit. Files and terminals do not block
 * for long, and keep sonic-boom's file writer.
 */
function pipeWriter(bufferBytes: number): StdoutWriter {
  const socket = new Socket({ fd: 1, readable: false, writable: true })
  socket.on('error', () => dropped++) // EPIPE: the reader is gone
  return {
    write(line: string): boolean {
      if (socket.destroyed || socket.writableLength > bufferBytes) {
        dropped++
        return true
      }
      socket.write(line)
      return true
    },
    drained: (ms) => socket.writableLength === 0 || socket.destroyed ? Promise.resolve() : nextDrain(socket, ms),
  }
}

function fileWriter(bufferBytes: number): StdoutWriter {
  const boom: SonicBoom = new sonicBoom.SonicBoom({ fd: 1, sync: false, maxLength: bufferBytes })
  boom.on('drop', () => dropped++)
  boom.on('error', () => dropped++)
  return {
    write: (line: string) => boom.write(line),
    drained: (ms) => nextDrain(boom, ms),
  }
}

/** The emitter's next 'drain', or `ms`, whichever comes first. */
function nextDrain(emitter: EventEmitter, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms)
    function done(): void {
      clearTimeout(timer)
      emitter.off('drain', done)
      resolve()
    }
    emitter.once('drain', done)
  })
}

/** `bufferBytes`: log bytes held while stdout does not take them; beyond this they are dropped.
 * The first logger created sets it (there is one stdout). */
function stdoutWriter(bufferBytes: number): StdoutWriter {
  if (stdout === null) {
    let stat: Stats | null = null
    try {
      stat = fstatSync(1)
    } catch {
      // no stdout at all: the file writer reports errors as dropped lines
    }
    stdout = stat !== null && (stat.isFIFO() || stat.isSocket()) ? pipeWriter(bufferBytes) : fileWriter(bufferBytes)
  }
  return stdout
}

/**
 * Credentials never reach the log. Browsers cannot set headers on a WebSocket (nor on an
 * EventSource), so their token travels as `?token=` in the URL, which is legal on /ws/jobs and
 * the SSE route; any URL, query or header value that reaches a log line has these taken out:
 * `token=`, `access_token=` and `key=` query values, and `Bearer <credential>`.
 */
const SECRET_PARAM = /([?&;]|\b)(token|access_token|id_token|jwt|key|admin_key|producer_key)=[^&\s"';,]*/gi
const BEARER = /\b(Bearer)\s+[A-Za-z0-9._~+/=-]+/gi
export const REDACTED = '[redacted]'

/** `text` with credentials in query strings and Authorization values replaced by [redacted]. */
export function redactSecrets(text: string): string {
  if (!text.includes('=') && !/bearer/i.test(text)) return text
  return text.replace(SECRET_PARAM, `$1$2=${REDACTED}`).replace(BEARER, `$1 ${REDACTED}`)
}

/** A log call's fields with every string value redacted (a copy only when one changed); nested
 * plain objects and arrays one level down too (a list of URLs). */
export function redactFields(fields: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | null = null
  for (const [key, value] of Object.entries(fields)) {
    let clean: unknown = value
    if (typeof value === 'string') clean = redactSecrets(value)
    else if (Array.isArray(value)) {
      const mapped = value.map((v) => (typeof v === 'string' ? redactSecrets(v) : v))
      if (mapped.some((v, i) => v !== value[i])) clean = mapped
    } else if (value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
      clean = redactFields(value as Record<string, unknown>)
    }
    if (clean !== value) (out ??= { ...fields })[key] = clean
  }
  return out ?? fields
}

/** pino's logMethod hook: the message and the merged fields of every call are redacted. */
function redactingHook(this: Logger, args: Parameters<Logger['info']>, method: (...a: unknown[]) => void): void {
  const clean = (args as unknown[]).map((arg) => {
    if (typeof arg === 'string') return redactSecrets(arg)
    if (arg !== null && typeof arg === 'object' && !(arg instanceof Error)) return redactFields(arg as Record<string, unknown>)
    return arg
  })
  method.apply(this, clean)
}

/** `format`: json (one JSON object a line, for machines), pretty (one readable line for a
 * person at a terminal), or auto (pretty when stdout is a terminal, else json). */
export function createLogger(level: LogLevel, bindings: Record<string, unknown> = {}, bufferBytes = 1024 * 1024, format: LogFormat = 'json'): Logger {
  // The host name on every line (lines from a fleet meet in one place); levels as names
  // ("warn"), which a log search reads without a table of pino's numbers.
  const options = {
    level,
    base: { pid: process.pid, hostname: hostname(), ...bindings },
    formatters: { level: (label: string) => ({ level: label }) },
    hooks: { logMethod: redactingHook },
  }
  if (level === 'silent') return pino(options)
  const writer = stdoutWriter(bufferBytes)
  // isatty, not process.stdout.isTTY: creating process.stdout on a pipe puts the pipe in
  // blocking mode (Node makes stdio pipes synchronous on Linux), for every process sharing it.
  const pretty = format === 'pretty' || (format === 'auto' && isatty(1))
  prettyOutput = pretty
  return pino(options, pretty ? prettyDestination(writer) : writer)
}

const LEVEL_NAMES: Readonly<Record<string, string>> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' }
/** Bindings every line carries, or that the pretty line shows in its own place. */
const NOT_SHOWN_AS_FIELDS = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'component', 'worker'])

/** One JSON log line as `HH:MM:SS.mmm LEVEL [worker/component] message key=value ...`, in
 * local time. Pino hands a destination each line already serialised; formatting it here
 * (rather than with pino's formatters) keeps the JSON path untouched and needs no transport
 * thread, so the bounded, never-blocking stdout writer stays the only way out. */
export function prettyLine(json: string): string {
  let entry: Record<string, unknown>
  try {
    entry = JSON.parse(json) as Record<string, unknown>
  } catch {
    return json.endsWith('\n') ? json : `${json}\n`
  }
  const time = new Date(typeof entry.time === 'number' ? entry.time : Date.now())
  const clock = [time.getHours(), time.getMinutes(), time.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':') +
    `.${String(time.getMilliseconds()).padStart(3, '0')}`
  // A name ("info") from this version, a number (30) from lines an older worker wrote.
  const level = (LEVEL_NAMES[String(entry.level)] ?? String(entry.level).toUpperCase()).padEnd(5)
  const where = [entry.worker !== undefined ? `w${String(entry.worker)}` : '', typeof entry.component === 'string' ? entry.component : '']
    .filter((s) => s !== '').join('/')
  const fields = Object.entries(entry)
    .filter(([key]) => !NOT_SHOWN_AS_FIELDS.has(key))
    .map(([key, value]) => `${key}=${typeof value === 'string' && /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value)}`)
  return `${clock} ${level} ${where === '' ? '' : `[${where}] `}${String(entry.msg ?? '')}${fields.length > 0 ? `  ${fields.join(' ')}` : ''}\n`
}

function prettyDestination(writer: StdoutWriter): DestinationStream {
  return { write: (line: string) => writer.write(prettyLine(line)) }
}

/** Log lines dropped because stdout did not take them in time. */
/** Output of a worker process, passed on to this process's stdout under the same bound. */
export function forwardLog(chunk: Buffer): void {
  if (stdout === null) stdout = stdoutWriter(1024 * 1024)
  stdout.write(chunk.toString('utf8'))
}

/** A forwarder for one worker's output. Workers write to a pipe, so they log JSON; when this
 * process writes pretty lines (a terminal), their lines are shown the same way, whole lines
 * only (a pipe hands over chunks that may split one). Anything not JSON (a crash trace)
 * passes as it is. */
export function workerLogForwarder(): (chunk: Buffer) => void {
  if (!prettyOutput) return forwardLog
  let partial = ''
  return (chunk) => {
    if (stdout === null) stdout = stdoutWriter(1024 * 1024)
    const text = partial + chunk.toString('utf8')
    const end = text.lastIndexOf('\n')
    if (end < 0) {
      // Bounded: a line that never ends is passed on rather than held without limit.
      if (text.length > 64 * 1024) {
        stdout.write(`${text}\n`)
        partial = ''
      } else {
        partial = text
      }
      return
    }
    partial = text.slice(end + 1)
    for (const line of text.slice(0, end).split('\n')) if (line !== '') stdout.write(prettyLine(line))
  }
}

export function droppedLogLines(): number {
  return dropped
}

/** Gives buffered lines until `ms` to reach stdout (the writer's next 'drain'); resolves
 * either way. For the last lines before a deliberate exit. */
export function flushLogs(ms: number): Promise<void> {
  return stdout === null ? Promise.resolve() : stdout.drained(ms)
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

/** Access logs (connects, refusals, closes, rate limits) at info, sampled: at most
 * `perInterval` lines of each kind per interval, process-wide, so a reconnect storm or a
 * flood of refused clients costs a bounded number of lines. What was left out is counted and
 * told in one line when its interval ends. */
export class SampledLog {
  private readonly windows = new Map<string, { start: number; logged: number; suppressed: number; log: Logger; timer: NodeJS.Timeout | null }>()

  /** While set (a drain), every line is logged: the closes of a drain are what an incident
   * review reads, and there are as many as the node had sockets, once. */
  unsampled = false

  constructor(private readonly perInterval = 20, private readonly intervalMs = 1000) {}

  info(log: Logger, kind: string, fields: Record<string, unknown>, msg: string): void {
    if (this.unsampled) {
      log.info({ access: kind, ...redactFields(fields) }, redactSecrets(msg))
      return
    }
    const now = Date.now()
    let window = this.windows.get(kind)
    if (window === undefined || now - window.start >= this.intervalMs) {
      if (window !== undefined) this.summarise(kind)
      window = { start: now, logged: 0, suppressed: 0, log, timer: null }
      this.windows.set(kind, window)
    }
    if (window.logged < this.perInterval) {
      window.logged++
      // Whatever logger it is given: an access line never carries a credential (a URL with ?token=).
      log.info({ access: kind, ...redactFields(fields) }, redactSecrets(msg))
      return
    }
    window.suppressed++
    window.log = log
    if (window.timer === null) {
      window.timer = setTimeout(() => this.summarise(kind), Math.max(0, window.start + this.intervalMs - now))
      window.timer.unref()
    }
  }

  private summarise(kind: string): void {
    const window = this.windows.get(kind)
    if (window === undefined) return
    if (window.timer !== null) clearTimeout(window.timer)
    this.windows.delete(kind)
    if (window.suppressed > 0) {
      window.log.info({ access: kind, suppressed: window.suppressed },
        `${window.suppressed} more '${kind}' access log lines in the last ${this.intervalMs} ms were not logged (at most ${this.perInterval} per ${this.intervalMs} ms)`)
    }
  }
}

/** The process's access log: every transport shares its budget per kind. */
export const accessLog = new SampledLog()

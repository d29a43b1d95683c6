// Load generator process: holds thousands of WebSocket client connections on raw TCP sockets,
// bound to its own 127.0.0.x source address so ephemeral ports never run out. It does as little
// per frame as a client can: every socket parses frame headers and counts job_update frames
// (one byte compared, nothing decoded); only probe sockets read the publisher's monotonic
// timestamp out of the frame and record the latency in an HDR histogram.
//
// Driven by bench/run.ts over IPC (see LoadgenCommand / LoadgenReply).

import { connect, type Socket } from 'node:net'
import * as hdr from 'hdr-histogram-js'
import { monotonicMicros } from './clock.js'

export interface SocketPlan {
  readonly jobId: string
  readonly probe: boolean
}

export type LoadgenCommand =
  | { cmd: 'connect'; host: string; port: number; path: string; localAddress: string; sockets: SocketPlan[]; concurrency: number; subscribe: boolean }
  | { cmd: 'reset' }
  | { cmd: 'report' }
  | { cmd: 'close' }

export interface LoadgenReport {
  /** job_update frames received since the last reset, total and per job. */
  readonly updates: number
  readonly perJob: Record<string, number>
  readonly otherFrames: number
  readonly closedByServer: number
  readonly open: number
  /** Encoded HDR histogram of probe latencies in microseconds. */
  readonly histogram: string
  readonly samples: number
  readonly cpuMicros: number
}

export type LoadgenReply =
  | { type: 'connected'; ok: number; failed: number; errors: string[]; ms: number; subscribers: Record<string, number> }
  | { type: 'report'; report: LoadgenReport }
  | { type: 'closed' }

const UPGRADE_KEY = 'dGhlIHNhbXBsZSBub25jZQ=='
const UPDATE_MARKER = 0x75 // 'u' of {"type":"job_update" at offset 13; 's' for job_status
const PONG_EMPTY = Buffer.from([0x8a, 0x80, 0, 0, 0, 0])

class Client {
  handshaken = false
  acked = false
  closed = false
  head: Buffer | null = null
  partial: Buffer | null = null
  partialFilled = 0
  partialOpcode = 0
  constructor(readonly socket: Socket, readonly job: JobCounter, readonly probe: boolean) {}
}

interface JobCounter {
  readonly id: string
  updates: number
  subscribers: number
}

let histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 })
let updates = 0
let otherFrames = 0
let closedByServer = 0
let cpuAtReset = process.cpuUsage()
/** Set once we close our own sockets, so those closes are not counted as the server's. */
let closing = false
const clients: Client[] = []
const jobs = new Map<string, JobCounter>()

/** Masked client text frame (zero mask key: valid, and the payload stays as is). */
function clientFrame(text: string): Buffer {
  const payload = Buffer.from(text)
  if (payload.length > 125) throw new Error('control-size frames only')
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length, 0, 0, 0, 0]), payload])
}

function onFrame(c: Client, opcode: number, buf: Buffer, start: number, end: number): void {
  if (opcode === 0x1 || opcode === 0x2) {
    if (!c.acked) {
      c.acked = true
      ackWaiters.get(c)?.()
      return
    }
    if (end - start > 13 && buf[start + 13] === UPDATE_MARKER) {
      updates++
      c.job.updates++
      if (c.probe) recordLatency(buf, start, end)
    } else {
      otherFrames++
    }
  } else if (opcode === 0x9) {
    // uWS pings idle sockets; an unanswered ping would end the connection.
    c.socket.write(PONG_EMPTY)
  }
}

function recordLatency(buf: Buffer, start: number, end: number): void {
  // The publisher writes its timestamp as the payload's last field: ..."t":123.456}}
  const at = buf.lastIndexOf('"t":', end)
  if (at < start) return
  let stop = at + 4
  while (stop < end && buf[stop] !== 0x7d && buf[stop] !== 0x2c) stop++
  const sent = Number(buf.toString('latin1', at + 4, stop))
  const micros = monotonicMicros() - sent
  histogram.recordValue(Math.max(1, Math.round(micros)))
}

function onData(c: Client, chunk: Buffer): void {
  if (c.head !== null) {
    chunk = Buffer.concat([c.head, chunk])
    c.head = null
  }
  let off = 0
  if (!c.handshaken) {
    const endOfHead = chunk.indexOf('\r\n\r\n')
    if (endOfHead < 0) {
      c.head = chunk
      return
    }
    if (chunk.toString('latin1', 9, 12) !== '101') {
      handshakeWaiters.get(c)?.(new Error(`upgrade refused: ${chunk.toString('latin1', 0, Math.min(endOfHead, 60))}`))
      c.socket.destroy()
      return
    }
    c.handshaken = true
    handshakeWaiters.get(c)?.()
    off = endOfHead + 4
  }
  while (off < chunk.length) {
    if (c.partial !== null) {
      const n = Math.min(c.partial.length - c.partialFilled, chunk.length - off)
      chunk.copy(c.partial, c.partialFilled, off, off + n)
      c.partialFilled += n
      off += n
      if (c.partialFilled === c.partial.length) {
        const whole = c.partial
        c.partial = null
        onFrame(c, c.partialOpcode, whole, 0, whole.length)
      }
      continue
    }
    const available = chunk.length - off
    if (available < 2) {
      c.head = chunk.subarray(off)
      return
    }
    const opcode = chunk[off]! & 0x0f
    let length = chunk[off + 1]! & 0x7f
    let header = 2
    if (length === 126) {
      if (available < 4) {
        c.head = chunk.subarray(off)
        return
      }
      length = chunk.readUInt16BE(off + 2)
      header = 4
    } else if (length === 127) {
      if (available < 10) {
        c.head = chunk.subarray(off)
        return
      }
      length = chunk.readUInt32BE(off + 6)
      header = 10
    }
    off += header
    if (chunk.length - off >= length) {
      onFrame(c, opcode, chunk, off, off + length)
      off += length
    } else {
      c.partial = Buffer.allocUnsafe(length)
      c.partialOpcode = opcode
      c.partialFilled = chunk.copy(c.partial, 0, off)
      off = chunk.length
    }
  }
}

const handshakeWaiters = new Map<Client, (err?: Error) => void>()
const ackWaiters = new Map<Client, () => void>()

function open(host: string, port: number, path: string, localAddress: string, plan: SocketPlan, subscribe: boolean): Promise<void> {
  let job = jobs.get(plan.jobId)
  if (job === undefined) {
    job = { id: plan.jobId, updates: 0, subscribers: 0 }
    jobs.set(plan.jobId, job)
  }
  const socket = connect({ host, port, localAddress, noDelay: true })
  const c = new Client(socket, job, plan.probe)
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error('connect timeout')), 20_000)
    const fail = (err: Error) => {
      clearTimeout(timer)
      handshakeWaiters.delete(c)
      ackWaiters.delete(c)
      socket.destroy()
      reject(err)
    }
    socket.once('error', fail)
    socket.on('data', (chunk: Buffer) => onData(c, chunk))
    socket.on('close', () => {
      c.closed = true
      if (!closing) closedByServer++
    })
    socket.once('connect', () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${UPGRADE_KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: jobwire.json\r\n\r\n`)
    })
    handshakeWaiters.set(c, (err) => {
      handshakeWaiters.delete(c)
      if (err) return fail(err)
      if (!subscribe) {
        c.acked = true
        clearTimeout(timer)
        socket.removeListener('error', fail)
        socket.on('error', () => undefined)
        clients.push(c)
        return resolve()
      }
      ackWaiters.set(c, () => {
        ackWaiters.delete(c)
        clearTimeout(timer)
        socket.removeListener('error', fail)
        socket.on('error', () => undefined)
        clients.push(c)
        c.job.subscribers++
        resolve()
      })
      socket.write(clientFrame(JSON.stringify({ type: 'subscribe_job', job_id: plan.jobId })))
    })
  })
}

async function connectAll(command: Extract<LoadgenCommand, { cmd: 'connect' }>): Promise<LoadgenReply> {
  const started = process.hrtime.bigint()
  let next = 0
  let ok = 0
  let failed = 0
  const errors: string[] = []
  async function lane(): Promise<void> {
    while (next < command.sockets.length) {
      const plan = command.sockets[next++]!
      try {
        await open(command.host, command.port, command.path, command.localAddress, plan, command.subscribe)
        ok++
      } catch (err) {
        failed++
        if (errors.length < 5) errors.push((err as Error).message)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, command.concurrency) }, lane))
  const subscribers: Record<string, number> = {}
  for (const job of jobs.values()) subscribers[job.id] = job.subscribers
  return { type: 'connected', ok, failed, errors, ms: Number(process.hrtime.bigint() - started) / 1e6, subscribers }
}

function report(): LoadgenReport {
  const perJob: Record<string, number> = {}
  for (const job of jobs.values()) perJob[job.id] = job.updates
  const cpu = process.cpuUsage(cpuAtReset)
  return {
    updates,
    perJob,
    otherFrames,
    closedByServer,
    open: clients.filter((c) => !c.closed).length,
    histogram: hdr.encodeIntoCompressedBase64(histogram),
    samples: histogram.totalCount,
    cpuMicros: cpu.user + cpu.system,
  }
}

function reset(): void {
  histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 })
  updates = 0
  otherFrames = 0
  closedByServer = 0
  for (const job of jobs.values()) job.updates = 0
  cpuAtReset = process.cpuUsage()
}

function reply(message: LoadgenReply): void {
  process.send!(message)
}

process.on('message', (command: LoadgenCommand) => {
  switch (command.cmd) {
    case 'connect':
      void connectAll(command).then(reply)
      break
    case 'reset':
      reset()
      break
    case 'report':
      reply({ type: 'report', report: report() })
      break
    case 'close':
      closing = true
      for (const c of clients) c.socket.destroy()
      reply({ type: 'closed' })
      setTimeout(() => process.exit(0), 50)
      break
  }
})
process.on('disconnect', () => process.exit(0))

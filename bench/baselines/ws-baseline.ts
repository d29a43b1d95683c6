// The baseline: the same protocol written as a competent Node developer would, on the `ws`
// library and ioredis, with a Map<job, Set<socket>> fan-out. It subscribes a job's channel on
// its first watcher and unsubscribes on its last, reads the stored state for job_status,
// validates producer payloads, and builds each update frame once and sends that Buffer to every
// watcher. It is what `make bench` measures jobwire against.
//
//   node dist/bench/baselines/ws-baseline.js --port 8090 --redis redis://127.0.0.1:6379

import { createServer } from 'node:http'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import { WebSocketServer, type WebSocket } from 'ws'

const { values } = parseArgs({ options: { port: { type: 'string' }, redis: { type: 'string' }, host: { type: 'string' } } })
const port = Number(values.port ?? 8090)
const redisUrl = values.redis ?? 'redis://127.0.0.1:6379'
const JOB_ID = /^[A-Za-z0-9_.:-]{1,128}$/

const sub = new Redis(redisUrl)
const cmd = new Redis(redisUrl)
const watchers = new Map<string, Set<WebSocket>>()

sub.on('messageBuffer', (channel: Buffer, payload: Buffer) => {
  const jobId = channel.toString().slice('progress:'.length)
  const sockets = watchers.get(jobId)
  if (!sockets) return
  const text = payload.toString()
  try {
    const data: unknown = JSON.parse(text)
    if (typeof data !== 'object' || data === null || Array.isArray(data)) return
  } catch {
    return
  }
  const frame = Buffer.from(`{"type":"job_update","job_id":"${jobId}","data":${text}}`)
  for (const ws of sockets) ws.send(frame)
})

const server = createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}')
    return
  }
  res.writeHead(404).end()
})
const wss = new WebSocketServer({ server, path: '/ws/jobs', maxPayload: 4096, handleProtocols: () => 'jobwire.json' })

wss.on('connection', (ws) => {
  const mine = new Set<string>()
  ws.on('message', async (raw) => {
    let msg: { type?: unknown; job_id?: unknown; id?: unknown }
    try {
      msg = JSON.parse(raw.toString())
    } catch {
      ws.send(JSON.stringify({ type: 'error', code: 'bad_json', message: 'message is not valid JSON' }))
      return
    }
    const jobId = msg.job_id
    if (msg.type === 'ping') {
      ws.send(JSON.stringify(msg.id === undefined ? { type: 'pong' } : { type: 'pong', id: msg.id }))
      return
    }
    if (typeof jobId !== 'string' || !JOB_ID.test(jobId)) {
      ws.send(JSON.stringify({ type: 'error', code: 'bad_job_id', message: 'bad job id' }))
      return
    }
    if (msg.type === 'subscribe_job') {
      let sockets = watchers.get(jobId)
      if (!sockets) {
        sockets = new Set()
        watchers.set(jobId, sockets)
        await sub.subscribe(`progress:${jobId}`)
      }
      sockets.add(ws)
      mine.add(jobId)
      const state = await cmd.hget(`jobwire:job:${jobId}`, 'state')
      ws.send(`{"type":"job_status","job_id":"${jobId}","data":${state ?? 'null'}}`)
    } else if (msg.type === 'unsubscribe_job') {
      leave(ws, jobId)
      mine.delete(jobId)
      ws.send(JSON.stringify({ type: 'unsubscribed', job_id: jobId }))
    }
  })
  ws.on('close', () => {
    for (const jobId of mine) leave(ws, jobId)
  })
})

function leave(ws: WebSocket, jobId: string): void {
  const sockets = watchers.get(jobId)
  if (!sockets) return
  sockets.delete(ws)
  if (sockets.size === 0) {
    watchers.delete(jobId)
    sub.unsubscribe(`progress:${jobId}`).catch(() => undefined)
  }
}

server.listen(port, values.host ?? '127.0.0.1', () => console.log(JSON.stringify({ msg: 'baseline listening', port })))
const stop = () => {
  for (const ws of wss.clients) ws.close(1001)
  server.close()
  sub.disconnect()
  cmd.disconnect()
  setTimeout(() => process.exit(0), 100)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)

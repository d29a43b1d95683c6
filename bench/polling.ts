// Push vs polling, measured: autocannon drives GET /jobs/<id> (the polling fallback) to get
// the bytes and gateway CPU of one poll; one real job_update frame gives the bytes of one
// push. From those, the bandwidth and request rates for a job updating once and ten times a
// second, against polling every 5 s and polling as often as the job updates.

import autocannon from 'autocannon'
import WebSocket from 'ws'
import { Producer } from '../src/producer/producer.js'
import { cpuMicros, sum } from './procstat.js'
import { startJobwire, type Running } from './targets.js'

/** What a browser's fetch() sends besides the request line (Chrome on Linux, a session cookie). */
export const BROWSER_HEADERS: Record<string, string> = {
  'user-agent': 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36',
  accept: '*/*',
  'accept-language': 'en-US,en;q=0.9',
  'accept-encoding': 'gzip, deflate, br, zstd',
  referer: 'https://app.example.com/jobs',
  'sec-fetch-dest': 'empty',
  'sec-fetch-mode': 'cors',
  'sec-fetch-site': 'same-origin',
  cookie: 'session=4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f; theme=dark',
}

export interface PollingResult {
  readonly payload: Record<string, unknown>
  readonly pushFrameBytes: number
  readonly pollRequestBytes: number
  readonly pollResponseBytes: number
  readonly pollRequestsPerSec: number
  readonly pollLatencyP99Ms: number
  readonly gatewayUsPerPoll: number
  readonly rows: Array<{
    updatesPerSec: number
    push: { bytesPerSec: number; messagesPerSec: number }
    poll5s: { bytesPerSec: number; requestsPerSec: number; meanStalenessMs: number }
    pollSameRate: { bytesPerSec: number; requestsPerSec: number; meanStalenessMs: number }
  }>
}

const PAYLOAD = { status: 'processing', progress: 42.5, message: 'transcoding 1080p (stage 2 of 3)' }

async function pushFrameBytes(port: number, producer: Producer): Promise<number> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/jobs`, 'jobwire.json')
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject))
  const frames: Buffer[] = []
  ws.on('message', (data: Buffer) => frames.push(data))
  ws.send(JSON.stringify({ type: 'subscribe_job', job_id: 'poll-1' }))
  while (frames.length < 1) await new Promise((r) => setTimeout(r, 10))
  await producer.progress('poll-1', PAYLOAD)
  while (frames.length < 2) await new Promise((r) => setTimeout(r, 10))
  ws.close()
  const payload = frames[1]!.length
  return payload + (payload < 126 ? 2 : 4) // plus the server frame header (unmasked)
}

export async function measurePolling(redis: Running & { url: string }, seconds: number): Promise<PollingResult> {
  const gateway = await startJobwire(redis.url, 1)
  const producer = new Producer({ redis: redis.url })
  try {
    await producer.progress('poll-1', PAYLOAD)
    const frameBytes = await pushFrameBytes(gateway.port, producer)
    const requestHead = `GET /jobs/poll-1 HTTP/1.1\r\nhost: 127.0.0.1:${gateway.port}\r\n` +
      Object.entries(BROWSER_HEADERS).map(([k, v]) => `${k}: ${v}\r\n`).join('') + '\r\n'
    const cpu0 = sum(gateway.pids(), cpuMicros)
    const result = await autocannon({
      url: `http://127.0.0.1:${gateway.port}/jobs/poll-1`,
      connections: 20,
      duration: seconds,
      headers: BROWSER_HEADERS,
    })
    const cpu1 = sum(gateway.pids(), cpuMicros)
    const requests = result.requests.total
    const responseBytes = result.throughput.total / Math.max(1, requests)
    const pollBytes = Buffer.byteLength(requestHead) + responseBytes
    const rows = [1, 10].map((updatesPerSec) => ({
      updatesPerSec,
      push: { bytesPerSec: updatesPerSec * frameBytes, messagesPerSec: updatesPerSec },
      poll5s: { bytesPerSec: pollBytes / 5, requestsPerSec: 0.2, meanStalenessMs: 2500 },
      pollSameRate: { bytesPerSec: pollBytes * updatesPerSec, requestsPerSec: updatesPerSec, meanStalenessMs: 500 / updatesPerSec },
    }))
    return {
      payload: PAYLOAD,
      pushFrameBytes: frameBytes,
      pollRequestBytes: Buffer.byteLength(requestHead),
      pollResponseBytes: Math.round(responseBytes),
      pollRequestsPerSec: Math.round(result.requests.average),
      pollLatencyP99Ms: result.latency.p99,
      gatewayUsPerPoll: (cpu1 - cpu0) / Math.max(1, requests),
      rows,
    }
  } finally {
    await producer.close()
    await gateway.stop()
  }
}

// jobwire behind a real nginx (Debian's), configured with the very block docs/deploy.md ships:
// the test extracts it, points it at a gateway and a free port with a throwaway self-signed
// certificate, and checks through it the demo page, /client.js, a wss:// subscribe that sees
// an update, the SSE fallback, and the http:// redirect. Also a guard on why the block says
// proxy_http_version 1.1: uWS 20.30 still never answers an HTTP/1.0 request. And its access
// log, in the block's own format, never holds a browser's ?token=.

import t from 'tap'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { request as httpsRequest, type RequestOptions } from 'node:https'
import { request as httpRequest } from 'node:http'
import { connect as netConnect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { brotliDecompressSync, gunzipSync } from 'node:zlib'
import WebSocket from 'ws'
import { projectPath } from '../src/support/paths.js'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { until } from './fixtures/until.js'

const run = promisify(execFile)
const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p)) ?? 'nginx'

/** The first ```nginx block of docs/deploy.md. */
function shippedConfig(): string {
  const doc = readFileSync(projectPath('docs', 'deploy.md'), 'utf8')
  const block = /```nginx\n([\s\S]*?)```/.exec(doc)?.[1]
  if (block === undefined) throw new Error('docs/deploy.md has no ```nginx block')
  return block
}

/** The shipped block with only what a test must change: addresses, ports, certificate. Each
 * replacement must match, so a doc that drifts from what the test understands fails here. */
function localise(config: string, to: { upstream: number; http: number; https: number; cert: string; key: string; accessLog: string }): string {
  const edits: Array<[RegExp, string]> = [
    [/server 127\.0\.0\.1:8080 max_fails=0;/, `server 127.0.0.1:${to.upstream} max_fails=0;`],
    [/listen 80;/, `listen 127.0.0.1:${to.http};`],
    [/\n\s*listen \[::\]:80;/, ''],
    [/listen 443 ssl http2;/, `listen 127.0.0.1:${to.https} ssl http2;`],
    [/\n\s*listen \[::\]:443 ssl http2;/, ''],
    [/ssl_certificate\s+\S+;/, `ssl_certificate ${to.cert};`],
    [/ssl_certificate_key\s+\S+;/, `ssl_certificate_key ${to.key};`],
  ]
  for (const [pattern, replacement] of edits) {
    if (!pattern.test(config)) throw new Error(`the nginx block in docs/deploy.md no longer has ${pattern}; update test/nginx.ts with it`)
    config = config.replace(pattern, replacement)
  }
  // Every server's access log (the redirect's too), in the block's own format.
  const accessLog = '/var/log/nginx/jobwire.access.log'
  if (config.split(accessLog).length !== 3) throw new Error(`the nginx block in docs/deploy.md no longer names ${accessLog} in both servers; update test/nginx.ts`)
  return config.replaceAll(accessLog, to.accessLog)
}

function waitForPort(port: number, proc: ChildProcess, log: () => string): Promise<void> {
  return until(() => {
    if (proc.exitCode !== null) throw new Error(`nginx exited with ${proc.exitCode}:\n${log()}`)
    return new Promise<boolean>((resolve) => {
      const socket = netConnect(port, '127.0.0.1', () => {
        socket.destroy()
        resolve(true)
      })
      socket.on('error', () => resolve(false))
    })
  }, `nginx listening on ${port}`, 10_000, 50)
}

interface Answer {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: string
}

function get(options: RequestOptions, tls: boolean, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = (tls ? httpsRequest : httpRequest)(options, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => (text += chunk))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }))
    })
    req.on('error', reject)
    req.setTimeout(10_000, () => req.destroy(new Error(`no answer from ${options.path} within 10 s`)))
    req.end(body)
  })
}

interface BytesAnswer {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
}

/** One HTTPS request through nginx, the body as raw bytes (compressed ones stay compressed). */
function getBytes(options: RequestOptions): Promise<BytesAnswer> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(options, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }))
    })
    req.on('error', reject)
    req.setTimeout(10_000, () => req.destroy(new Error(`no answer from ${options.path} within 10 s`)))
    req.end()
  })
}

t.test('jobwire behind nginx with the config docs/deploy.md ships', async (t) => {
  const shipped = shippedConfig()
  t.match(shipped, /proxy_http_version 1\.1;/, 'the shipped config speaks HTTP/1.1 upstream')

  const dir = mkdtempSync(join(tmpdir(), 'jobwire-nginx-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // Workers run as an unprivileged user when nginx starts as root: they need to reach the dir.
  chmodSync(dir, 0o755)
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert])

  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const [httpPort, httpsPort] = [await freePort(), await freePort()]
  const accessLog = join(dir, 'jobwire.access.log')
  writeFileSync(join(dir, 'jobwire.conf'), localise(shipped, { upstream: gw.port, http: httpPort, https: httpsPort, cert, key, accessLog }))
  // A main config that keeps every file nginx writes in the temp dir, so it runs as any user.
  writeFileSync(join(dir, 'nginx.conf'), `daemon off;
master_process on;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 256; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  include ${dir}/jobwire.conf;
}
`)
  const errorLog = () => (existsSync(join(dir, 'error.log')) ? readFileSync(join(dir, 'error.log'), 'utf8') : '')
  let stderr = ''
  const nginx = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], { stdio: ['ignore', 'ignore', 'pipe'] })
  nginx.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<void>((resolve) => nginx.on('exit', () => resolve()))
  t.teardown(async () => {
    if (nginx.exitCode === null && nginx.signalCode === null) {
      nginx.kill('SIGTERM') // nginx's fast shutdown
      await exited
    }
  })
  await waitForPort(httpsPort, nginx, () => `${stderr}${errorLog()}`)

  const ca = readFileSync(cert)
  const tls = (path: string, extra: RequestOptions = {}): RequestOptions => ({ host: '127.0.0.1', port: httpsPort, path, ca, ...extra })

  t.test('the demo page', async (t) => {
    const page = await get(tls('/'), true)
    t.equal(page.status, 200)
    t.match(page.headers['content-type'], /text\/html/)
    t.match(page.body, /<html/i)
  })

  t.test('/client.js, readable by any origin', async (t) => {
    const client = await get(tls('/client.js'), true)
    t.equal(client.status, 200)
    t.match(client.headers['content-type'], /javascript/)
    t.equal(client.headers['access-control-allow-origin'], '*')
    t.match(client.body, /JobsClient/)
  })

  t.test('HEAD answers every GET route with its status and headers, and no body', async (t) => {
    for (const path of ['/healthz', '/readyz', '/client.js', '/metrics', '/jobs/nginx-head-none', '/']) {
      const full = await getBytes(tls(path, { headers: { 'accept-encoding': 'identity' } }))
      const head = await getBytes(tls(path, { method: 'HEAD', headers: { 'accept-encoding': 'identity' } }))
      t.equal(head.status, full.status, `HEAD ${path}: the GET's status`)
      t.equal(head.headers['content-type'], full.headers['content-type'], `HEAD ${path}: the GET's content-type`)
      t.equal(head.body.length, 0, `HEAD ${path}: no body`)
      // /metrics changes between two requests; everything else is the same bytes.
      if (path !== '/metrics') t.equal(Number(head.headers['content-length']), full.body.length, `HEAD ${path}: the GET's length`)
    }
  })

  t.test('/client.js passes through compressed, with a validator and a versioned URL cached for a year', async (t) => {
    const plain = await getBytes(tls('/client.js', { headers: { 'accept-encoding': 'identity' } }))
    t.equal(plain.headers['content-encoding'], undefined)
    for (const encoding of ['gzip', 'br'] as const) {
      const packed = await getBytes(tls('/client.js', { headers: { 'accept-encoding': encoding } }))
      t.equal(packed.headers['content-encoding'], encoding)
      t.ok(packed.body.length < plain.body.length / 2, `${encoding}: ${packed.body.length} of ${plain.body.length} bytes`)
      const expanded = encoding === 'gzip' ? gunzipSync(packed.body) : brotliDecompressSync(packed.body)
      t.ok(expanded.equals(plain.body), `${encoding}: the same client`)
      t.match(String(packed.headers.vary), /accept-encoding/i)
    }
    const etag = String(plain.headers.etag)
    t.match(etag, /^"[0-9a-f]{16}"$/)
    t.equal(plain.headers['cache-control'], 'no-cache')
    const again = await getBytes(tls('/client.js', { headers: { 'if-none-match': etag } }))
    t.equal(again.status, 304)
    t.equal(again.body.length, 0)
    const versioned = await getBytes(tls(`/client.js?v=${etag.slice(1, -1)}`, { headers: { 'accept-encoding': 'identity' } }))
    t.match(versioned.headers['cache-control'], /max-age=31536000.*immutable/)
    t.ok(versioned.body.equals(plain.body))
    const page = await get(tls('/'), true)
    t.match(page.body, `from '/client.js?v=${etag.slice(1, -1)}'`, 'the demo page imports the versioned client')
  })

  t.test('a wss:// subscribe sees a job update published through the producer API', async (t) => {
    const socket = new WebSocket(`wss://127.0.0.1:${httpsPort}/ws/jobs`, 'jobwire.json', { ca })
    t.teardown(() => socket.close())
    const messages: Array<{ type: string; job_id?: string; data?: Record<string, unknown> }> = []
    socket.on('message', (data: Buffer) => messages.push(JSON.parse(data.toString()) as (typeof messages)[number]))
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve())
      socket.once('error', reject)
    })
    t.equal(socket.protocol, 'jobwire.json')
    socket.send(JSON.stringify({ type: 'subscribe_job', job_id: 'nginx-ws' }))
    await until(() => messages.some((m) => m.type === 'job_status'), 'job_status through nginx')
    const posted = await get(tls('/jobs/nginx-ws/progress', { method: 'POST', headers: { 'content-type': 'application/json' } }), true,
      JSON.stringify({ status: 'processing', progress: 42 }))
    t.equal(posted.status, 200, posted.body)
    await until(() => messages.some((m) => m.type === 'job_update'), 'job_update through nginx')
    t.match(messages.find((m) => m.type === 'job_update'), { job_id: 'nginx-ws', data: { progress: 42, status: 'processing' } })
  })

  t.test('the SSE fallback streams each event through at once', async (t) => {
    let text = ''
    const req = httpsRequest(tls('/jobs/nginx-sse/events'))
    const response = new Promise<number>((resolve, reject) => {
      req.on('response', (res) => {
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => (text += chunk))
        resolve(res.statusCode ?? 0)
      })
      req.on('error', reject)
    })
    t.teardown(() => req.destroy())
    req.end()
    t.equal(await response, 200)
    await until(() => text.includes('event: job_status'), 'the SSE snapshot through nginx', 10_000)
    const posted = await get(tls('/jobs/nginx-sse/progress', { method: 'POST', headers: { 'content-type': 'application/json' } }), true,
      JSON.stringify({ progress: 7 }))
    t.equal(posted.status, 200, posted.body)
    // Unbuffered: the update arrives on its own, not when a buffer fills or the stream ends.
    await until(() => text.includes('event: job_update'), 'the SSE update through nginx', 5000)
    t.match(text, /"progress":7/)
  })

  t.test('http:// redirects to https://', async (t) => {
    const answer = await get({ host: '127.0.0.1', port: httpPort, path: '/client.js' }, false)
    t.equal(answer.status, 301)
    t.match(answer.headers.location, /^https:\/\/127\.0\.0\.1\/client\.js$/)
  })

  t.test("the access log holds no browser token (the block's jobwire_noquery format)", async (t) => {
    const secret = 'tok-do-not-log-4a7f'
    const socket = new WebSocket(`wss://127.0.0.1:${httpsPort}/ws/jobs?token=${secret}-ws`, 'jobwire.json', { ca })
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve())
      socket.once('error', reject)
    })
    socket.close()
    await get(tls(`/jobs/nginx-log?token=${secret}-poll`), true)
    await get({ host: '127.0.0.1', port: httpPort, path: `/ws/jobs?token=${secret}-redirect` }, false)
    // nginx writes a request's line when the request ends: the WebSocket's once it closed (the
    // subscribe test above left one upgrade line already).
    const text = () => (existsSync(accessLog) ? readFileSync(accessLog, 'utf8') : '')
    const count = (pattern: string) => text().split(pattern).length - 1
    await until(() => count('"GET /ws/jobs HTTP/1.1" 101 ') >= 2 && count('"GET /ws/jobs HTTP/1.1" 301 ') >= 1 && count('"GET /jobs/nginx-log HTTP/1.1"') >= 1,
      'the requests in the access log, by their paths', 10_000)
    t.notMatch(text(), secret, 'no token in the access log')
    t.notMatch(text(), /\?/, 'no query string at all')
  })

  t.test('why the config says proxy_http_version 1.1: an HTTP/1.0 request gets no answer from uWS 20.30', async (t) => {
    const reply = await new Promise<string>((resolve) => {
      let got = ''
      const socket = netConnect(gw.port, '127.0.0.1', () => socket.write('GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n'))
      socket.on('data', (chunk) => (got += chunk.toString()))
      socket.on('error', () => resolve(got))
      setTimeout(() => {
        socket.destroy()
        resolve(got)
      }, 1500)
    })
    // If this starts failing, uWS answers HTTP/1.0 now: docs/deploy.md can relax its warning.
    t.equal(reply, '', 'nothing within 1.5 s')
  })

})

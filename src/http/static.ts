// The browser side the gateway serves: the client bundle (built by `make build` into
// dist/client/, with .gz and .br copies compressed at build time) and the pages, read once
// at startup.
//
// Caching: /client.js carries an ETag (the bundle's hash) and must be revalidated, so a page
// never runs a client older than its gateway; /client.js?v=<that hash> may be cached for a
// year, since its URL changes with its content. The gateway's own pages import the versioned
// URL.

import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { brotliDecompressSync, gunzipSync } from 'node:zlib'
import type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js'
import { PUBLIC_CORS } from './cors.js'
import { respond, respondJson } from './respond.js'
import { projectPath } from '../support/paths.js'

interface Asset {
  readonly body: Buffer
  readonly type: string
  /** The same bytes compressed, when the build wrote them. */
  readonly gzip: Buffer | null
  readonly brotli: Buffer | null
  /** A strong validator: the first 16 hex digits of the body's SHA-256. */
  readonly version: string
}

function readIfPresent(path: string): Buffer | null {
  return existsSync(path) ? readFileSync(path) : null
}

function load(path: string, type: string, rewrite?: (text: string) => string): Asset | null {
  let body = readIfPresent(path)
  if (body === null) return null
  if (rewrite !== undefined) body = Buffer.from(rewrite(body.toString('utf8')))
  // A compressed copy is only served when it holds these very bytes (a partial rebuild may
  // leave an old one beside a new bundle); checking costs a few ms, once.
  const fresh = (copy: Buffer | null, expand: (b: Buffer) => Buffer): Buffer | null => {
    if (rewrite !== undefined || copy === null) return null
    try {
      return expand(copy).equals(body) ? copy : null
    } catch {
      return null
    }
  }
  return {
    body,
    type,
    gzip: fresh(readIfPresent(`${path}.gz`), gunzipSync),
    brotli: fresh(readIfPresent(`${path}.br`), brotliDecompressSync),
    version: createHash('sha256').update(body).digest('hex').slice(0, 16),
  }
}

/** The best encoding `accept` (an Accept-Encoding header) allows among those we have. */
export function pickEncoding(accept: string, have: { brotli: boolean; gzip: boolean }): 'br' | 'gzip' | null {
  const allowed = new Set<string>()
  for (const part of accept.toLowerCase().split(',')) {
    const [name, ...params] = part.trim().split(';')
    const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='))
    if (q !== undefined && !(Number(q.slice(2)) > 0)) continue
    if (name) allowed.add(name.trim())
  }
  if (have.brotli && (allowed.has('br') || allowed.has('*'))) return 'br'
  if (have.gzip && (allowed.has('gzip') || allowed.has('*'))) return 'gzip'
  return null
}

/** Whether an If-None-Match header names this entity tag (or is `*`). */
function matches(ifNoneMatch: string, etag: string): boolean {
  if (ifNoneMatch === '') return false
  return ifNoneMatch.split(',').some((tag) => {
    const t = tag.trim()
    return t === '*' || t === etag || t === `W/${etag}`
  })
}

const YEAR = 'public, max-age=31536000, immutable'

export function addStaticRoutes(app: TemplatedApp): void {
  const client = load(projectPath('dist', 'client', 'jobwire-client.js'), 'text/javascript; charset=utf-8')
  const clientMap = load(projectPath('dist', 'client', 'jobwire-client.js.map'), 'application/json')
  const clientUrl = client === null ? '/client.js' : `/client.js?v=${client.version}`
  const withClient = (text: string): string => text.replaceAll("from '/client.js'", `from '${clientUrl}'`)
  const demo = load(projectPath('src', 'pages', 'demo.html'), 'text/html; charset=utf-8', withClient)
  const testPage = load(projectPath('src', 'pages', 'test.html'), 'text/html; charset=utf-8', withClient)
  const serve = (asset: Asset | null, missing: string, headers: Record<string, string> = {}) => (res: HttpResponse, req: HttpRequest) => {
    if (asset === null) return respondJson(res, 503, { error: 'not_built', message: missing }, headers)
    const etag = `"${asset.version}"`
    const versioned = req.getQuery('v')
    const head: Record<string, string> = {
      etag,
      'cache-control': versioned === asset.version ? YEAR : 'no-cache',
      'x-content-type-options': 'nosniff',
      ...headers,
    }
    if (asset.gzip !== null || asset.brotli !== null) head.vary = 'Accept-Encoding'
    if (matches(req.getHeader('if-none-match'), etag)) {
      res.cork(() => {
        res.writeStatus('304 Not Modified')
        for (const [k, v] of Object.entries(head)) res.writeHeader(k, v)
        res.endWithoutBody() // no arguments: see http/head.ts
      })
      return
    }
    const encoding = pickEncoding(req.getHeader('accept-encoding'), { brotli: asset.brotli !== null, gzip: asset.gzip !== null })
    if (encoding === null) return respond(res, 200, asset.body, asset.type, head)
    respond(res, 200, encoding === 'br' ? asset.brotli! : asset.gzip!, asset.type, { ...head, 'content-encoding': encoding })
  }
  // The client is public and read-only: pages on any origin import it (a module script is
  // fetched in CORS mode, so without this header the import fails).
  app.get('/client.js', serve(client, 'the browser client is not built: run make build', PUBLIC_CORS))
  app.get('/client.js.map', serve(clientMap, 'the browser client is not built: run make build', PUBLIC_CORS))
  app.get('/', serve(demo, 'src/pages/demo.html is missing'))
  app.get('/ws/jobs/test', serve(testPage, 'src/pages/test.html is missing'))
}

// The browser side the gateway serves: the client bundle (built by `make build` into
// dist/client/) and the two pages, read once at startup.

import { existsSync, readFileSync } from 'node:fs'
import type { TemplatedApp } from 'uWebSockets.js'
import { PUBLIC_CORS } from './cors.js'
import { respond, respondJson } from './respond.js'
import { projectPath } from '../support/paths.js'

interface Asset {
  readonly body: Buffer
  readonly type: string
}

function load(path: string, type: string): Asset | null {
  return existsSync(path) ? { body: readFileSync(path), type } : null
}

export function addStaticRoutes(app: TemplatedApp): void {
  const client = load(projectPath('dist', 'client', 'jobwire-client.js'), 'text/javascript; charset=utf-8')
  const clientMap = load(projectPath('dist', 'client', 'jobwire-client.js.map'), 'application/json')
  const demo = load(projectPath('src', 'pages', 'demo.html'), 'text/html; charset=utf-8')
  const testPage = load(projectPath('src', 'pages', 'test.html'), 'text/html; charset=utf-8')
  const serve = (asset: Asset | null, missing: string, headers: Record<string, string> = {}) => (res: Parameters<Parameters<TemplatedApp['get']>[1]>[0]) => {
    if (asset === null) return respondJson(res, 503, { error: 'not_built', message: missing }, headers)
    respond(res, 200, asset.body, asset.type, { 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff', ...headers })
  }
  // The client is public and read-only: pages on any origin import it (a module script is
  // fetched in CORS mode, so without this header the import fails).
  app.get('/client.js', serve(client, 'the browser client is not built: run make build', PUBLIC_CORS))
  app.get('/client.js.map', serve(clientMap, 'the browser client is not built: run make build', PUBLIC_CORS))
  app.get('/', serve(demo, 'src/pages/demo.html is missing'))
  app.get('/ws/jobs/test', serve(testPage, 'src/pages/test.html is missing'))
}

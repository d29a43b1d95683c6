// Admin endpoints (admin credentials in the Authorization header, never in ?token=: the static
// admin key, or a token with the admin role; with access control off, loopback callers):
//   GET  /admin/connections[?user=U]       open connections with their subscriptions, node-wide
//   GET  /admin/jobs[?top=N]               connections and watched jobs per worker process, and
//                                          the node's most watched jobs
//   GET  /admin/history                    the node's last ten minutes, one point per 10 s
//   POST /admin/users/<user>/disconnect    closes every connection of that user (1008)
//   GET  /admin                            the admin page: a shell with no data of its own; it
//                                          asks for the admin key or token and sends it with
//                                          every request to the endpoints above

import type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js'
import { credentialsOf, type Access } from '../access/access.js'
import type { AddressRule } from '../access/client-address.js'
import { readFileSync } from 'node:fs'
import type { ConnectionInfo } from '../access/connections.js'
import { HISTORY_STEP_MS, type HistoryPoint } from '../node/history.js'
import type { WorkerJobs } from '../node/node-request.js'
import { projectPath } from '../support/paths.js'
import type { Logger } from '../support/log.js'
import { clientOf, respond, respondJson, respondThrottled, respondUnauthorized, safeDecode, trackAborted } from './respond.js'

export interface AdminContext {
  readonly access: Access
  readonly log: Logger
  readonly addressRule: AddressRule
  connections(user: string | undefined): Promise<ConnectionInfo[]>
  disconnectUser(user: string): Promise<number>
  /** Every worker process's connections and its `top` most watched jobs. */
  workers(top: number): Promise<WorkerJobs[]>
  /** The node's last ten minutes, one point per 10 s (node/history.ts). */
  history(): Promise<HistoryPoint[]>
}

const ADMIN_PAGE = readFileSync(projectPath('src', 'pages', 'admin.html'))
const MAX_TOP = 100

function guarded(ctx: AdminContext, handler: (res: HttpResponse, aborted: { aborted: boolean }, param: string, user: string) => Promise<void>) {
  return (res: HttpResponse, req: HttpRequest) => {
    const credentials = credentialsOf(req)
    const param = req.getParameter(0) ?? ''
    const user = req.getQuery('user') ?? ''
    // Failures are counted per limit key: an IPv6 client's /64, so rotating addresses in it
    // counts as one (the map of counts stays as small as the clients are few).
    const { ip, limitKey } = clientOf(res, req, ctx.addressRule)
    const aborted = trackAborted(res)
    void (async () => {
      // Valid admin credentials are answered even from an address that keeps failing (the
      // throttle counts and answers failures only: see Access).
      const admitted = await ctx.access.checkAdmin(credentials, limitKey ?? ip)
      if (admitted !== true) {
        if (aborted.aborted) return
        return admitted === 'throttled' ? respondThrottled(res) : respondUnauthorized(res, 'admin credentials required: Authorization: Bearer <admin key or admin token> (never ?token=)')
      }
      try {
        await handler(res, aborted, param, user)
      } catch (err) {
        ctx.log.error({ err: (err as Error).message }, 'admin request failed')
        if (!aborted.aborted) respondJson(res, 500, { error: 'internal', message: (err as Error).message })
      }
    })()
  }
}

export function addAdminRoutes(app: TemplatedApp, ctx: AdminContext): void {
  app.get('/admin/connections', guarded(ctx, async (res, aborted, _param, user) => {
    const connections = await ctx.connections(user === '' ? undefined : user)
    const users = new Map<string, ConnectionInfo[]>()
    for (const c of connections) {
      const key = c.user ?? '(anonymous)'
      users.set(key, [...(users.get(key) ?? []), c])
    }
    if (!aborted.aborted) {
      respondJson(res, 200, {
        connections: connections.length,
        users: [...users.entries()].map(([name, list]) => ({ user: name, connections: list })),
      })
    }
  }))

  app.get('/admin', (res) => {
    respond(res, 200, ADMIN_PAGE, 'text/html; charset=utf-8', { 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff', 'x-frame-options': 'DENY' })
  })

  app.get('/admin/jobs', (res, req) => {
    const top = Math.min(MAX_TOP, Math.max(1, Number(req.getQuery('top') || 20) || 20))
    guarded(ctx, async (res, aborted) => {
      const workers = await ctx.workers(top)
      // A job watched in several processes counts its watchers in all of them.
      const watchers = new Map<string, number>()
      for (const w of workers) for (const j of w.top) watchers.set(j.job_id, (watchers.get(j.job_id) ?? 0) + j.watchers)
      const jobs = [...watchers].map(([job_id, n]) => ({ job_id, watchers: n })).sort((a, b) => b.watchers - a.watchers).slice(0, top)
      if (!aborted.aborted) {
        respondJson(res, 200, {
          workers: workers.map((w) => ({ pid: w.pid, connections: w.connections, jobs_watched: w.jobsWatched })),
          top: jobs,
        })
      }
    })(res, req)
  })

  app.get('/admin/history', guarded(ctx, async (res, aborted) => {
    const points = await ctx.history()
    if (!aborted.aborted) respondJson(res, 200, { step_ms: HISTORY_STEP_MS, points })
  }))

  app.post('/admin/users/:user/disconnect', guarded(ctx, async (res, aborted, user) => {
    const name = safeDecode(user)
    if (name === undefined || name === '') {
      if (!aborted.aborted) respondJson(res, 400, { error: 'bad_user', message: 'the user id in the path is not a valid URL component' })
      return
    }
    const disconnected = await ctx.disconnectUser(name)
    ctx.log.info({ user: name, disconnected }, 'admin disconnected a user')
    if (!aborted.aborted) respondJson(res, 200, { user: name, disconnected })
  }))
}

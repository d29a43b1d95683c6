// Admin endpoints (admin credentials: the static admin key, or a token with the admin role;
// with access control off, loopback callers):
//   GET  /admin/connections[?user=U]       open connections with their subscriptions, node-wide
//   POST /admin/users/<user>/disconnect    closes every connection of that user (1008)

import type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js'
import { credentialsOf, type Access } from '../access/access.js'
import type { AddressRule } from '../access/client-address.js'
import type { ConnectionInfo } from '../access/connections.js'
import type { Logger } from '../support/log.js'
import { clientOf, respondJson, respondThrottled, respondUnauthorized, safeDecode, trackAborted } from './respond.js'

export interface AdminContext {
  readonly access: Access
  readonly log: Logger
  readonly addressRule: AddressRule
  connections(user: string | undefined): Promise<ConnectionInfo[]>
  disconnectUser(user: string): Promise<number>
}

function guarded(ctx: AdminContext, handler: (res: HttpResponse, aborted: { aborted: boolean }, param: string, user: string) => Promise<void>) {
  return (res: HttpResponse, req: HttpRequest) => {
    const credentials = credentialsOf(req)
    const param = req.getParameter(0) ?? ''
    const user = req.getQuery('user') ?? ''
    const { ip } = clientOf(res, req, ctx.addressRule)
    if (ctx.access.throttled(ip)) return respondThrottled(res)
    const aborted = trackAborted(res)
    void (async () => {
      if (!(await ctx.access.isAdmin(credentials, ip))) return aborted.aborted || respondUnauthorized(res, 'admin credentials required: Authorization: Bearer <admin key or admin token>')
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

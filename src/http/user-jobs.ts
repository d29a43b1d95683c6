// GET /jobs?owner=me[&limit=N]: a user's jobs with their states, most recently updated first
// (the demo's "my jobs", so a reload does not lose them). The access rule of jobs: your own
// (the token's user; `me` names it), any user's for admins, and with access control off any
// user's, `me` being `local`.

import type { TemplatedApp } from 'uWebSockets.js'
import { credentialsOf, type Access } from '../access/access.js'
import { AuthError } from '../access/auth.js'
import { canListUser, MAX_LISTED_JOBS, resolveUser, USER_PATTERN, type UserJobs } from '../stream/user-jobs.js'
import { jobRouteCors, refuseOrigin } from './cors.js'
import { addAnswerHeaders, respondJson, respondUnauthorized, trackAborted, authCode } from './respond.js'

const DEFAULT_LIMIT = 50

export interface UserJobsRouteContext {
  readonly access: Access
  readonly userJobs: UserJobs
  readonly allowedOrigins: readonly string[]
}

export function addUserJobsRoute(app: TemplatedApp, ctx: UserJobsRouteContext): void {
  app.get('/jobs', (res, req) => {
    const credentials = credentialsOf(req)
    const owner = req.getQuery('owner') ?? ''
    const limitText = req.getQuery('limit') ?? ''
    const origin = req.getHeader('origin')
    const cors = jobRouteCors(origin, req.getHeader('host'), ctx.allowedOrigins)
    if (cors === null) return refuseOrigin(res, origin)
    addAnswerHeaders(res, cors)
    if (owner === '' || !USER_PATTERN.test(owner)) {
      return respondJson(res, 400, { error: 'bad_owner', message: 'name whose jobs to list: ?owner=me (or a user id)' })
    }
    const limit = limitText === '' ? DEFAULT_LIMIT : Number(limitText)
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LISTED_JOBS) {
      return respondJson(res, 400, { error: 'bad_limit', message: `limit is 1..${MAX_LISTED_JOBS}` })
    }
    const state = trackAborted(res)
    void (async () => {
      const principal = await ctx.access.authenticate(credentials, 'http')
      if (principal instanceof AuthError) return state.aborted || respondUnauthorized(res, principal.message, false, authCode(principal))
      const user = resolveUser(principal, owner)
      if (!canListUser(principal, user)) {
        return state.aborted || respondJson(res, 403, { error: 'forbidden', message: "not allowed to list this user's jobs" })
      }
      try {
        const jobs = await ctx.userJobs.list(user, limit)
        if (!state.aborted) respondJson(res, 200, { owner: user, jobs })
      } catch {
        if (!state.aborted) respondJson(res, 503, { error: 'unavailable', message: 'the job list is unavailable right now' }, { 'retry-after': '1' })
      }
    })()
  })
}

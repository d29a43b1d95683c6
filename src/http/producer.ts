// POST /jobs/<id>/progress: the producer API for workers that speak HTTP rather than Redis.
// It runs the same atomic producer path as progress.lua (stored state, seq, owner, TTL,
// publish) and answers with the new seq. A bad body is refused with 400 and the reason, before
// anything is written.

import type { HttpResponse, TemplatedApp } from 'uWebSockets.js'
import type { Authenticator } from '../access/auth.js'
import { tokenFrom } from '../access/auth.js'
import type { Broker } from '../broker/broker.js'
import { BodyTooLarge, readBody, respondBadJobId, respondJson } from './respond.js'
import type { Logger } from '../support/log.js'
import { isMsgpackMapStart } from '../wire/payload.js'
import { checkProducerPayload, ProducerError } from '../producer/merge.js'
import { isValidJobId } from '../wire/protocol.js'

export const MAX_PRODUCER_BODY = 256 * 1024
const OWNER_PATTERN = /^[^\s]{1,256}$/

export interface ProducerRouteContext {
  readonly broker: Broker
  readonly auth: Authenticator
  readonly log: Logger
}

/** Producer credentials: the static producer key, or a token with the producer (or admin)
 * role. With access control off (loopback only) and no producer key set, anyone on the
 * machine may produce. */
async function mayProduce(auth: Authenticator, authorization: string, queryToken: string): Promise<boolean> {
  const token = tokenFrom(authorization, queryToken)
  if (auth.isProducerKey(token)) return true
  if (!auth.enabled) return !auth.hasProducerKey
  try {
    const principal = await auth.verify(token)
    return principal.producer || principal.admin
  } catch {
    return false
  }
}

export function addProducerRoute(app: TemplatedApp, ctx: ProducerRouteContext): void {
  app.post('/jobs/:id/progress', (res: HttpResponse, req) => {
    const jobId = req.getParameter(0)
    const contentType = req.getHeader('content-type').split(';')[0]!.trim().toLowerCase()
    const authorization = req.getHeader('authorization')
    const queryToken = req.getQuery('token') ?? ''
    const owner = req.getQuery('owner') || req.getHeader('x-jobwire-owner')
    if (!isValidJobId(jobId)) {
      return respondBadJobId(res)
    }
    if (owner !== '' && !OWNER_PATTERN.test(owner)) return respondJson(res, 400, { error: 'bad_owner', message: 'owner must be 1..256 characters without spaces' })
    const msgpack = contentType === 'application/msgpack' || contentType === 'application/x-msgpack'
    if (!msgpack && contentType !== 'application/json' && contentType !== '') {
      return respondJson(res, 415, { error: 'unsupported_media_type', message: 'send application/json or application/msgpack' })
    }
    const aborted = { aborted: false, abandoned: false }
    res.onAborted(() => {
      aborted.aborted = true
    })
    const body = readBody(res, MAX_PRODUCER_BODY, aborted)
    // Credentials first: an unauthenticated client must not make us buffer its upload.
    const authorized = mayProduce(ctx.auth, authorization, queryToken)
    void (async () => {
      if (!(await authorized)) {
        aborted.abandoned = true
        body.catch(() => undefined)
        if (!aborted.aborted) respondJson(res, 401, { error: 'unauthorized', message: 'producer credentials required: Authorization: Bearer <producer key or producer token>' }, { 'www-authenticate': 'Bearer' }, true)
        return
      }
      let payload: Buffer | null
      try {
        payload = await body
      } catch (err) {
        if (err instanceof BodyTooLarge && !aborted.aborted) respondJson(res, 413, { error: 'too_large', message: err.message }, {}, true)
        return
      }
      if (payload === null) return
      try {
        if (msgpack !== (payload.length > 0 && isMsgpackMapStart(payload[0]!))) {
          throw new ProducerError(msgpack ? 'content-type is msgpack but the body is not a msgpack map' : 'body is not a JSON object (for msgpack, say content-type: application/msgpack)')
        }
        checkProducerPayload(payload)
        const seq = await ctx.broker.publishProgress(jobId, payload, owner ? { owner } : {})
        if (!aborted.aborted) respondJson(res, 200, { job_id: jobId, seq })
      } catch (err) {
        if (aborted.aborted) return
        if (err instanceof ProducerError) return respondJson(res, 400, { error: 'bad_payload', message: err.message })
        ctx.log.warn({ job: jobId, err: (err as Error).message }, 'producer API publish failed')
        respondJson(res, 503, { error: 'unavailable', message: 'the broker is unavailable; retry' }, { 'retry-after': '1' })
      }
    })()
  })
}

// POST /jobs/<id>/progress: the producer API for workers that speak HTTP rather than Redis.
// It runs the same atomic producer path as progress.lua (stored state, seq, owner, TTL,
// publish) and answers with the new seq. A bad body is refused with 400 and the reason, before
// anything is written. Credentials come from the Authorization header only. The owner
// (?owner= or x-jobwire-owner) must be one the credential may record (ownerRefusal): a producer
// token's `owners` claim, else for a token scoped by `jobs` only its own sub; the static keys
// and admins may record anyone. Otherwise 403 with the reason, and nothing is written.

import type { HttpResponse, TemplatedApp } from 'uWebSockets.js'
import { credentialsOf, ownerRefusal, type Access } from '../access/access.js'
import type { AddressRule } from '../access/client-address.js'
import { claimCovers } from '../access/auth.js'
import type { Broker } from '../broker/broker.js'
import { checkProducerPayload, FinalState, OwnerConflict, ProducerError, SeqMismatch } from '../producer/merge.js'
import { accessLog, type Logger } from '../support/log.js'
import { isMsgpackMapStart, MAX_PAYLOAD_BYTES } from '../wire/payload.js'
import { isValidJobId } from '../wire/protocol.js'
import { jobRouteCors, refuseOrigin } from './cors.js'
import { addAnswerHeaders, BodyTooLarge, clientOf, readBody, respondBadJobId, respondJson, respondThrottled, respondUnauthorized, safeDecode } from './respond.js'
import { answerWithRequestId } from './request-id.js'

const OWNER_PATTERN = /^[^\s]{1,256}$/

export interface ProducerRouteContext {
  readonly broker: Broker
  readonly access: Access
  readonly log: Logger
  readonly addressRule: AddressRule
  /** --allowed-origins: which other origins' pages may call the API (see cors.ts). */
  readonly allowedOrigins: readonly string[]
}

export function addProducerRoute(app: TemplatedApp, ctx: ProducerRouteContext): void {
  app.post('/jobs/:id/progress', (res: HttpResponse, req) => {
    const jobId = safeDecode(req.getParameter(0))
    const contentType = req.getHeader('content-type').split(';')[0]!.trim().toLowerCase()
    const credentials = credentialsOf(req)
    const owner = req.getQuery('owner') || req.getHeader('x-jobwire-owner')
    const replaceOwner = (req.getQuery('replace_owner') ?? '') === '1'
    // Merging the body into the stored state is the default; ?replace=1 stores it alone.
    const replace = (req.getQuery('replace') ?? '') === '1'
    // ?restart=1: a new generation (new epoch, state replaced, owner kept); the only way back
    // from a final state. ?if_seq=<n>: write only if the job is at seq n (compare-and-set).
    const restart = (req.getQuery('restart') ?? '') === '1'
    const ifSeqText = req.getQuery('if_seq') ?? ''
    const { ip, limitKey } = clientOf(res, req, ctx.addressRule)
    const origin = req.getHeader('origin')
    const cors = jobRouteCors(origin, req.getHeader('host'), ctx.allowedOrigins)
    const request = answerWithRequestId(res, req)
    const refused = (kind: 'refused' | 'rate_limited', reason: string) =>
      accessLog.info(ctx.log, kind, { transport: 'producer-api', request, ip, job: jobId, reason }, `POST /jobs/<id>/progress refused: ${reason}`)
    if (cors === null) {
      refused('refused', 'origin')
      return refuseOrigin(res, origin, true)
    }
    addAnswerHeaders(res, cors)
    if (!isValidJobId(jobId)) return respondBadJobId(res)
    if (ifSeqText !== '' && !/^\d{1,15}$/.test(ifSeqText)) return respondJson(res, 400, { error: 'bad_if_seq', message: 'if_seq must be a whole number (the seq the job is expected to be at)' })
    const ifSeq = ifSeqText === '' ? undefined : Number(ifSeqText)
    if (owner !== '' && !OWNER_PATTERN.test(owner)) return respondJson(res, 400, { error: 'bad_owner', message: 'owner must be 1..256 characters without spaces' })
    const msgpack = contentType === 'application/msgpack' || contentType === 'application/x-msgpack'
    if (!msgpack && contentType !== 'application/json' && contentType !== '') {
      return respondJson(res, 415, { error: 'unsupported_media_type', message: 'send application/json or application/msgpack' })
    }
    const aborted = { aborted: false, abandoned: false }
    res.onAborted(() => {
      aborted.aborted = true
    })
    const body = readBody(res, MAX_PAYLOAD_BYTES, aborted)
    // Credentials first: an unauthenticated client must not make us buffer its upload.
    const granted = ctx.access.producerGrant(credentials, limitKey ?? ip) // failures per limit key, as admin.ts
    void (async () => {
      const grant = await granted
      const refusal = typeof grant === 'string' ? 'producer credentials required: Authorization: Bearer <producer key or producer token> (never ?token=)'
        : grant.jobs !== null && !claimCovers(grant.jobs, jobId) ? `this producer token may not write job ${jobId} (its jobs claim)`
          : replaceOwner && !grant.admin ? 'replace_owner=1 needs admin credentials'
            : owner !== '' ? ownerRefusal(grant, owner)
              : null
      if (refusal !== null) {
        aborted.abandoned = true
        body.catch(() => undefined)
        if (grant === 'throttled') refused('rate_limited', 'repeated bad credentials')
        else refused('refused', typeof grant === 'string' ? 'no producer credentials' : refusal)
        if (aborted.aborted) return
        if (grant === 'throttled') respondThrottled(res)
        else if (grant === 'unauthorized') respondUnauthorized(res, refusal, true)
        else respondJson(res, 403, { error: 'forbidden', message: refusal }, {}, true)
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
        const seq = await ctx.broker.publishProgress(jobId, payload, { ...(owner ? { owner } : {}), ...(replaceOwner ? { replaceOwner } : {}), ...(replace ? { replace } : {}), ...(restart ? { restart } : {}), ...(ifSeq !== undefined ? { ifSeq } : {}) })
        if (!aborted.aborted) respondJson(res, 200, { job_id: jobId, seq })
      } catch (err) {
        if (aborted.aborted) return
        if (err instanceof OwnerConflict) return respondJson(res, 409, { error: 'owner_conflict', message: err.message })
        if (err instanceof FinalState) return respondJson(res, 409, { error: 'final_state', message: err.message })
        if (err instanceof SeqMismatch) return respondJson(res, 409, { error: 'seq_mismatch', message: err.message })
        if (err instanceof ProducerError) return respondJson(res, 400, { error: 'bad_payload', message: err.message })
        ctx.log.warn({ job: jobId, err: (err as Error).message }, 'producer API publish failed')
        respondJson(res, 503, { error: 'unavailable', message: 'the broker is unavailable; retry' }, { 'retry-after': '1' })
      }
    })()
  })
}

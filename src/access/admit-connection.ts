// The way in for every long-lived connection (a WebSocket upgrade, an SSE stream), in the one
// order that keeps refusals cheap: the connection rate per address first, so a flood costs a
// bucket lookup and not a signature check; then the credentials; then the caps on open
// connections. What the connection may watch is decided after this, per job, by
// stream/watch.ts before anything touches Redis.

import type { Access, Credentials, Transport } from './access.js'
import type { Admission, AdmissionRequest, RefusalCause } from './admission.js'
import { AuthError, type Principal } from './auth.js'

export type AdmitResult<T extends AdmissionRequest> =
  | { readonly kind: 'admitted'; readonly principal: Principal | null; readonly ticket: T }
  /** Over the connection rate (`ticket` null: nobody was authenticated yet) or a cap. */
  | { readonly kind: 'limited'; readonly reason: string; readonly retryAfterMs: number; readonly cause: RefusalCause; readonly ticket: T | null }
  | { readonly kind: 'unauthenticated'; readonly error: AuthError }
  /** The client went away meanwhile; whatever was counted for it is released. */
  | { readonly kind: 'gone' }

export interface AdmitRequest<T extends AdmissionRequest> {
  readonly credentials: Credentials
  /** The per-address limit key (access/client-address.ts). */
  readonly limitKey: string | null
  readonly transport: Transport
  /** The object the caps count (released with admission.release when the connection ends). */
  ticketFor(principal: Principal | null): T
  /** True once the client has gone; checked after every await. */
  gone(): boolean
}

export async function admitConnection<T extends AdmissionRequest>(
  admission: Admission,
  access: Access,
  request: AdmitRequest<T>,
): Promise<AdmitResult<T>> {
  const charged = await admission.charge(request.limitKey)
  if (request.gone()) return { kind: 'gone' }
  if (!charged.ok) return { kind: 'limited', reason: charged.reason, retryAfterMs: charged.retryAfterMs, cause: charged.cause, ticket: null }
  const principal = await access.authenticate(request.credentials, request.transport)
  if (principal instanceof AuthError) return { kind: 'unauthenticated', error: principal }
  const ticket = request.ticketFor(principal)
  const admitted = await admission.admit(ticket)
  if (request.gone()) {
    if (admitted.ok) admission.release(ticket)
    return { kind: 'gone' }
  }
  if (!admitted.ok) return { kind: 'limited', reason: admitted.reason, retryAfterMs: admitted.retryAfterMs, cause: admitted.cause, ticket }
  return { kind: 'admitted', principal, ticket }
}

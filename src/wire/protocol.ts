// The wire contract (docs/protocol.md), as types and constants shared by the gateway and the
// browser client. No Node imports: the client bundle includes this file.

export const Subprotocol = {
  Json: 'jobwire.json',
  Msgpack: 'jobwire.msgpack',
  /** The same protocols under a versioned name: a client that offers one knows which version
   * of this contract it speaks, and a future jobwire.v2.* can be offered beside it. */
  JsonV1: 'jobwire.v1.json',
  MsgpackV1: 'jobwire.v1.msgpack',
} as const
export type Subprotocol = (typeof Subprotocol)[keyof typeof Subprotocol]
export type Encoding = 'json' | 'msgpack'

/** Job ids are 1..128 characters of `A-Z a-z 0-9 _ . : -`: safe in URLs, Redis keys and JSON
 * without escaping, which the hot path relies on when it splices ids into frames. */
export const JOB_ID_PATTERN = /^[A-Za-z0-9_.:-]{1,128}$/
export const MAX_JOB_ID_LENGTH = 128

/** How the rule reads in error messages. */
export const JOB_ID_RULE = 'job ids are 1..128 characters of A-Z a-z 0-9 _ . : -'

export function isValidJobId(value: unknown): value is string {
  return typeof value === 'string' && JOB_ID_PATTERN.test(value)
}

export const TERMINAL_STATUSES: readonly string[] = ['completed', 'failed', 'cancelled']
export type JobStatusName = 'queued' | 'processing' | 'completed' | 'failed' | 'cancelled'

export function isTerminalStatus(status: unknown): boolean {
  return typeof status === 'string' && TERMINAL_STATUSES.includes(status)
}

/** The wait a `forbidden` advises before asking again (`retry_ms`): the job may just not have
 * a state yet. */
export const FORBIDDEN_RETRY_MS = 2000

export const ErrorCode = {
  BadJson: 'bad_json',
  BadMessage: 'bad_message',
  BadJobId: 'bad_job_id',
  Forbidden: 'forbidden',
  TooManySubscriptions: 'too_many_subscriptions',
  RateLimited: 'rate_limited',
  Internal: 'internal',
  /** jobwire extension: the broker is down and did not return within --outage-hold-ms; retry
   * after retry_after_ms (the client library does, with backoff). */
  Unavailable: 'unavailable',
  /** jobwire extension: the connection's token expired; 1008 follows. */
  TokenExpired: 'token_expired',
} as const
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode]

/** Close codes. closeDecision below is the policy that goes with them. */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  Abnormal: 1006,
  PolicyViolation: 1008,
  MessageTooBig: 1009,
  TryAgainLater: 1013,
} as const
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode]

/** 1008 and 1009 are terminal: reconnecting would be refused again until the client changes
 * something (its credentials, its messages). */
export function isTerminalCloseCode(code: number): boolean {
  return code === CloseCode.PolicyViolation || code === CloseCode.MessageTooBig
}

/** The reason the gateway gives with the 1008 that follows `token_expired`, so that the close
 * alone tells a client to renew its token rather than give up. */
export const TOKEN_EXPIRED_REASON = 'token expired'

/** What a client does once its connection closed. */
export type CloseDecision = 'reconnect' | 'renew_token' | 'stop'

/**
 * The contract's close policy, the one place it is decided. Terminal codes stop, except the
 * 1008 of an expired token, which a fresh token answers (`renew_token`). Every other code
 * reconnects: 1001 and 1013 by definition (1013 after the delay the server advised), abnormal
 * closes such as 1006, the 4000-4999 codes a client uses for its own reasons, and 1000 too,
 * since the gateway never ends a watching client normally: whoever did, the jobs are still
 * wanted.
 */
export function closeDecision(code: number, reason: string, lastError?: ErrorCode): CloseDecision {
  if (!isTerminalCloseCode(code)) return 'reconnect'
  // A literal the ErrorCode type still checks: ErrorCode.TokenExpired would pull the whole
  // ErrorCode table into the browser bundle, which needs nothing else from it.
  const tokenExpired = lastError === 'token_expired' || reason === TOKEN_EXPIRED_REASON
  return code === CloseCode.PolicyViolation && tokenExpired ? 'renew_token' : 'stop'
}

/** A producer payload: any JSON object / msgpack map. `seq`, `epoch` and `ts` are set by
 * jobwire's producer script; plain PUBLISHes may lack them. */
export interface JobPayload {
  status?: JobStatusName | string
  progress?: number
  message?: string
  result?: unknown
  error?: unknown
  seq?: number
  /** jobwire extension: the job's history, set by the producer script with seq. Compared for
   * equality only: seq orders states of one epoch; another epoch is another history (the
   * state was lost and begun again, restarted, or the owner changed). */
  epoch?: number
  ts?: number
  [field: string]: unknown
}

/** jobwire extension: a request's own name, echoed by its reply and by any error about it: a
 * string of at most MAX_REQUEST_ID_LENGTH characters or a safe integer. */
export type RequestId = string | number
export const MAX_REQUEST_ID_LENGTH = 64

/** jobwire extension: the version of a job's state a client holds. Epochs are compared for
 * equality only; seq orders states within one epoch. */
export interface Since {
  epoch: number
  seq: number
}

/** Why a job_status was sent (docs/protocol.md, "State model"). */
export type StatusReason = 'subscribed' | 'requested' | 'resync' | 'caught_up' | 'new_generation' | 'stalled'

/** How the state a job_status carries relates to the `since` its request gave: `newer` and
 * `behind` only within one epoch; `none` when the server holds no state. */
export type Relation = 'newer' | 'same' | 'behind' | 'new_epoch' | 'none'

/** The relation of a state to a client's `since` (equal epochs only are ordered). */
export function relationOf(since: Since, data: JobPayload | null): Relation {
  if (data === null) return 'none'
  if (!Number.isSafeInteger(data.seq) || data.epoch !== since.epoch) return 'new_epoch'
  const seq = data.seq as number
  return seq > since.seq ? 'newer' : seq === since.seq ? 'same' : 'behind'
}

export type ClientMessage =
  /** max_hz (jobwire extension): at most this many updates a second for this subscription,
   * always the newest on the trailing edge, terminal states at once. `since` (jobwire): the
   * state the client holds; the job_status answering says how the server's relates to it. */
  | { type: 'subscribe_job'; job_id: string; max_hz?: number; since?: Since; id?: RequestId }
  | { type: 'unsubscribe_job'; job_id: string; id?: RequestId }
  | { type: 'job_status'; job_id: string; since?: Since; id?: RequestId }
  | { type: 'ping'; id?: string | number }
  /** jobwire extension: a user's jobs ("my jobs"); `user` defaults to the token's (`me`). */
  | { type: 'subscribe_user_jobs'; user?: string; id?: RequestId }
  | { type: 'unsubscribe_user_jobs'; user?: string; id?: RequestId }

/** A job's state as the gateway reports it. What the gateway adds travels beside `data`, never
 * inside it: `data` is the producer's state exactly. `reason` is absent only from gateways
 * older than it. */
export interface JobStatusMessage {
  type: 'job_status'
  job_id: string
  data: JobPayload | null
  reason?: StatusReason
  /** The job is processing and has been silent for longer than its stall time. */
  stalled?: true
  /** Present when the request carried `since`. */
  relation?: Relation
  id?: RequestId
}

export type ServerMessage =
  | JobStatusMessage
  /** prev_seq (jobwire extension): on a rate-capped subscription's update that skips seqs, the
   * seq of the update delivered before it; what lies between was conflated, not lost. */
  | { type: 'job_update'; job_id: string; data: JobPayload; prev_seq?: number }
  | { type: 'pong'; id?: string | number }
  | { type: 'unsubscribed'; job_id: string; id?: RequestId }
  /** jobwire extension: the answer to subscribe_user_jobs (and again after a resync): the
   * user's job ids, most recently updated first. */
  | { type: 'user_jobs'; user: string; job_ids: string[]; id?: RequestId }
  /** jobwire extension: a new job of a watched user. */
  | { type: 'user_job'; user: string; job_id: string }
  | { type: 'unsubscribed_user_jobs'; user: string; id?: RequestId }
  | ErrorMessage

export interface ErrorMessage {
  type: 'error'
  code: ErrorCode
  message: string
  job_id?: string
  /** jobwire extension: the user whose jobs a refused subscribe_user_jobs named. */
  user?: string
  /** jobwire extension: with rate_limited, how long to wait before trying again. */
  retry_after_ms?: number
  /** jobwire extension: with forbidden, the wait before asking again (the job may not have a
   * state yet: a forbidden is the same answer for "no such job" and "not yours"). */
  retry_ms?: number
  /** jobwire extension: the id of the request this error answers. */
  id?: RequestId
}

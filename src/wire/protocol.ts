// The wire contract (docs/protocol.md), as types and constants shared by the gateway and the
// browser client. No Node imports: the client bundle includes this file.

export const Subprotocol = {
  Json: 'jobwire.json',
  Msgpack: 'jobwire.msgpack',
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
  /** jobwire extension: the job's generation, set by the producer script with seq. States
   * are ordered by (epoch, seq); a different epoch is a new truth (the state was lost and
   * begun again, or the owner changed). */
  epoch?: number
  ts?: number
  [field: string]: unknown
}

export type ClientMessage =
  /** max_hz (jobwire extension): at most this many updates a second for this subscription,
   * always the newest on the trailing edge, terminal states at once. */
  | { type: 'subscribe_job'; job_id: string; max_hz?: number }
  | { type: 'unsubscribe_job'; job_id: string }
  | { type: 'job_status'; job_id: string }
  | { type: 'ping'; id?: string | number }
  /** jobwire extension: a user's jobs ("my jobs"); `user` defaults to the token's (`me`). */
  | { type: 'subscribe_user_jobs'; user?: string }
  | { type: 'unsubscribe_user_jobs'; user?: string }

export type ServerMessage =
  | { type: 'job_status'; job_id: string; data: JobPayload | null }
  /** prev_seq (jobwire extension): on a rate-capped subscription's update that skips seqs, the
   * seq of the update delivered before it; what lies between was conflated, not lost. */
  | { type: 'job_update'; job_id: string; data: JobPayload; prev_seq?: number }
  | { type: 'pong'; id?: string | number }
  | { type: 'unsubscribed'; job_id: string }
  /** jobwire extension: the answer to subscribe_user_jobs (and again after a resync): the
   * user's job ids, most recently updated first. */
  | { type: 'user_jobs'; user: string; job_ids: string[] }
  /** jobwire extension: a new job of a watched user. */
  | { type: 'user_job'; user: string; job_id: string }
  | { type: 'unsubscribed_user_jobs'; user: string }
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
}

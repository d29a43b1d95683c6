// Who is connecting, and what they may watch. Credentials are JWTs verified with jose: an HS256
// secret, an RS256/ES256 public key (PEM), or a JWKS file. Each verifier accepts only its own
// algorithms, so `alg: none` and algorithm-confusion tokens are refused by construction.
//
// Claims: `sub` (required) is the user id; `jobs` (optional) lists job ids, or prefixes
// ending in `*`, that the holder may watch besides its own; `role: "admin"` or
// `roles: ["admin"]` sees every job and the admin endpoints; `role`/`roles` containing
// "producer" may use the producer API; `owners` (optional, producer tokens) lists the user ids,
// or prefixes ending in `*`, that the holder may record as a job's owner (ownerRefusal, access.ts).
// `exp` is required and ends the connection when it passes.

import { createPublicKey, timingSafeEqual, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createLocalJWKSet, errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose'
import type { Config } from '../support/config.js'
import { ConfigError } from '../support/config.js'
import { MAX_JOB_ID_LENGTH } from '../wire/protocol.js'

export interface Principal {
  readonly userId: string
  readonly admin: boolean
  readonly producer: boolean
  /** Job ids and `prefix*` patterns granted by the token, besides the user's own jobs. */
  readonly jobs: readonly string[]
  /** The `owners` claim: user ids and `prefix*` patterns a producer token may record as a job's
   * owner; absent when the token has no such claim (ownerRefusal, access.ts). */
  readonly owners?: readonly string[]
  /** Expiry in ms since the epoch; null only where nothing was verified (access control off). */
  readonly expiresAt: number | null
}

export class AuthError extends Error {
  override name = 'AuthError'
  constructor(message: string, readonly code: 'missing' | 'invalid' | 'expired') {
    super(message)
  }
}

export interface Authenticator {
  /** False when no verification key is configured: access control is off (loopback only). */
  readonly enabled: boolean
  verify(token: string): Promise<Principal>
  /** A static producer or admin key, compared in constant time. */
  isProducerKey(key: string): boolean
  isAdminKey(key: string): boolean
  readonly hasProducerKey: boolean
  readonly hasAdminKey: boolean
}

const MAX_TOKEN_LENGTH = 8192
/** Entries a `jobs` or `owners` claim may list. */
const MAX_CLAIM_ENTRIES = 1000
/** A user id (a token's sub, a job's owner) is at most this long. */
export const MAX_OWNER_LENGTH = 256
/** The token text the principal cache may hold, in characters. */
const PRINCIPAL_CACHE_CHARS = 256 * 1024
/** A token without a `jobs` claim: one shared empty list, not an array per connection. */
const NO_JOBS: readonly string[] = Object.freeze([])

function keyMatcher(expected: string): (key: string) => boolean {
  if (expected === '') return () => false
  const want = Buffer.from(expected)
  return (key) => {
    const got = Buffer.from(key)
    return got.length === want.length && timingSafeEqual(got, want)
  }
}

function principalFrom(payload: JWTPayload): Principal {
  const sub = payload.sub
  if (typeof sub !== 'string' || sub.length === 0 || sub.length > 256) throw new AuthError('token has no usable sub (user id)', 'invalid')
  const roles = new Set<string>()
  if (typeof payload.role === 'string') roles.add(payload.role)
  if (Array.isArray(payload.roles)) for (const r of payload.roles) if (typeof r === 'string') roles.add(r)
  const jobs = patternClaim(payload.jobs, MAX_JOB_ID_LENGTH, 'jobs', 'job ids') ?? NO_JOBS
  const owners = patternClaim(payload.owners, MAX_OWNER_LENGTH, 'owners', 'user ids')
  return {
    userId: sub,
    admin: roles.has('admin'),
    producer: roles.has('producer'),
    jobs,
    ...(owners !== undefined ? { owners } : {}),
    expiresAt: typeof payload.exp === 'number' ? payload.exp * 1000 : null,
  }
}

/** A claim listing ids or `prefix*` patterns, strictly: a list of at most 1,000 non-empty
 * strings, each at most `maxLength` characters (one more for the `*`). Undefined when absent. */
function patternClaim(value: unknown, maxLength: number, name: string, what: string): readonly string[] | undefined {
  if (value === undefined) return undefined
  if (!Array.isArray(value) || value.length > MAX_CLAIM_ENTRIES ||
      !value.every((v) => typeof v === 'string' && v.length > 0 && v.length <= maxLength + 1)) {
    throw new AuthError(`token claim ${name} must be a list of ${what} or prefix* patterns`, 'invalid')
  }
  return value as string[]
}

type Verifier = { key: Uint8Array | KeyObject | JWTVerifyGetKey; algorithms: string[] }

/**
 * Principals of tokens verified lately, by the token's text, until the token stops being
 * valid: a token presented again (another tab, a reconnect) costs no signature check, and
 * every connection holding it shares one Principal instead of one each. Only the exact text
 * of a token that passed verification is ever found, and only while verifying it again would
 * pass: its `exp` and, with --jwt-max-age, its `iat` decide (nothing else in a verification
 * changes with time once `nbf` has passed; keys are loaded once at startup). Oldest first out
 * past PRINCIPAL_CACHE_CHARS of tokens.
 */
export class PrincipalCache {
  private readonly entries = new Map<string, { readonly principal: Principal; readonly validUntil: number }>()
  private chars = 0

  constructor(private readonly maxChars: number = PRINCIPAL_CACHE_CHARS) {}

  get(token: string, now: number): Principal | undefined {
    const entry = this.entries.get(token)
    if (entry === undefined) return undefined
    if (now < entry.validUntil) return entry.principal
    this.drop(token)
    return undefined
  }

  /** `validUntil`: ms since the epoch. */
  set(token: string, principal: Principal, validUntil: number, now: number): void {
    if (validUntil <= now || token.length > this.maxChars || this.entries.has(token)) return
    while (this.chars + token.length > this.maxChars) this.drop(this.entries.keys().next().value!)
    this.entries.set(token, { principal, validUntil })
    this.chars += token.length
  }

  get size(): number {
    return this.entries.size
  }

  private drop(token: string): void {
    if (this.entries.delete(token)) this.chars -= token.length
  }
}

/** Until when a verified token verifies again: its exp, and iat + maxAge when that is set. */
function validUntil(payload: JWTPayload, maxAgeSec: number): number {
  let until = typeof payload.exp === 'number' ? payload.exp * 1000 : 0
  if (maxAgeSec > 0) until = typeof payload.iat === 'number' ? Math.min(until, (payload.iat + maxAgeSec) * 1000) : 0
  return until
}

function loadVerifier(config: Config): Verifier | null {
  const sources = [config.jwtSecret !== '', config.jwtPublicKeyFile !== '', config.jwksFile !== ''].filter(Boolean).length
  if (sources > 1) throw new ConfigError('use one of --jwt-secret, --jwt-public-key and --jwks-file, not several')
  if (config.jwtSecret !== '') {
    if (Buffer.byteLength(config.jwtSecret) < 32) {
      throw new ConfigError('--jwt-secret must be at least 32 bytes (HS256 needs a key as long as its hash)')
    }
    return { key: new TextEncoder().encode(config.jwtSecret), algorithms: ['HS256'] }
  }
  if (config.jwtPublicKeyFile !== '') {
    let key: KeyObject
    try {
      key = createPublicKey(readFileSync(config.jwtPublicKeyFile))
    } catch (err) {
      throw new ConfigError(`--jwt-public-key ${config.jwtPublicKeyFile}: not a readable PEM public key (${(err as Error).message})`)
    }
    if (key.asymmetricKeyType === 'rsa') return { key, algorithms: ['RS256'] }
    if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return { key, algorithms: ['ES256'] }
    throw new ConfigError(`--jwt-public-key ${config.jwtPublicKeyFile}: use an RSA key (RS256) or a P-256 EC key (ES256)`)
  }
  if (config.jwksFile !== '') {
    let jwks: unknown
    try {
      jwks = JSON.parse(readFileSync(config.jwksFile, 'utf8'))
    } catch (err) {
      throw new ConfigError(`--jwks-file ${config.jwksFile}: not a readable JSON file (${(err as Error).message})`)
    }
    if (typeof jwks !== 'object' || jwks === null || !Array.isArray((jwks as { keys?: unknown }).keys)) {
      throw new ConfigError(`--jwks-file ${config.jwksFile}: expected {"keys":[...]}`)
    }
    return { key: createLocalJWKSet(jwks as Parameters<typeof createLocalJWKSet>[0]), algorithms: ['RS256', 'ES256'] }
  }
  return null
}

export function createAuthenticator(config: Config): Authenticator {
  const verifier = loadVerifier(config)
  const isProducerKey = keyMatcher(config.producerKey)
  const isAdminKey = keyMatcher(config.adminKey)
  const keys = { isProducerKey, isAdminKey, hasProducerKey: config.producerKey !== '', hasAdminKey: config.adminKey !== '' }
  if (verifier === null) {
    return {
      ...keys,
      enabled: false,
      verify: async () => {
        throw new AuthError('access control is off', 'invalid')
      },
    }
  }
  // Every token must expire: one without exp would be a credential for ever. --jwt-max-age
  // also bounds how long ago it may have been issued (it then needs iat).
  const options = {
    algorithms: verifier.algorithms,
    requiredClaims: ['exp'],
    ...(config.jwtMaxAgeSec > 0 ? { maxTokenAge: config.jwtMaxAgeSec } : {}),
    ...(config.jwtIssuer ? { issuer: config.jwtIssuer } : {}),
    ...(config.jwtAudience ? { audience: config.jwtAudience } : {}),
  }
  const cache = new PrincipalCache()
  return {
    ...keys,
    enabled: true,
    async verify(token) {
      if (token === '') throw new AuthError('no token: pass ?token= or Authorization: Bearer', 'missing')
      if (token.length > MAX_TOKEN_LENGTH) throw new AuthError('token too long', 'invalid')
      const known = cache.get(token, Date.now())
      if (known !== undefined) return known
      try {
        const { payload } = typeof verifier.key === 'function'
          ? await jwtVerify(token, verifier.key, options) // a JWKS: the key is picked by kid
          : await jwtVerify(token, verifier.key, options)
        const principal = principalFrom(payload)
        cache.set(token, principal, validUntil(payload, config.jwtMaxAgeSec), Date.now())
        return principal
      } catch (err) {
        if (err instanceof AuthError) throw err
        if (err instanceof joseErrors.JWTExpired) throw new AuthError('token expired', 'expired')
        throw new AuthError(`invalid token: ${(err as Error).message}`, 'invalid')
      }
    },
  }
}

/** The token from `Authorization: Bearer <t>`, else from `?token=`. */
export function tokenFrom(authorization: string, queryToken: string): string {
  const match = /^Bearer\s+(.+)$/i.exec(authorization.trim())
  return match ? match[1]!.trim() : queryToken
}

/** The request's principal: null with access control off; rejects AuthError without a valid
 * token. */
export async function principalFor(auth: Authenticator, token: string): Promise<Principal | null> {
  return auth.enabled ? auth.verify(token) : null
}

/** The refusal for a job the principal may not watch: the same whether or not it exists. */
export const FORBIDDEN_MESSAGE = 'not allowed to watch this job'

/** The access rule: a job is visible to its owner, to a token whose `jobs` claim covers it,
 * and to admins. `principal` null means access control is off. */
export function canWatch(principal: Principal | null, jobId: string, owner: string | null): boolean {
  if (principal === null || principal.admin) return true
  if (owner !== null && owner === principal.userId) return true
  return claimCovers(principal.jobs, jobId)
}

/** Whether a token's `jobs` claim (ids, or prefixes ending in `*`) covers the job. */
export function claimCovers(patterns: readonly string[], jobId: string): boolean {
  return patterns.some((pattern) => pattern.endsWith('*') ? jobId.startsWith(pattern.slice(0, -1)) : pattern === jobId)
}

export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host)
}

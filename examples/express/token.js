// The token jobwire's browser client fetches before it connects: HS256, signed with the
// gateway's --jwt-secret, `sub` = your user, `exp` required. Kept apart from the Express
// wiring so any Node framework can use it.

import { SignJWT } from 'jose'

/** A jobwire token for `user`, valid `ttlSeconds`. `claims` may add `jobs` (ids or prefix*
 * patterns the user may watch besides their own) or `role: 'admin'`. */
export async function mintJobwireToken(user, secret, ttlSeconds = 600, claims = {}) {
  if (Buffer.byteLength(secret) < 32) throw new Error('the secret must be at least 32 bytes, as the gateway requires')
  return new SignJWT({ ...claims })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(user)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
    .sign(new TextEncoder().encode(secret))
}

/** What withDeadline rejects with: the wait named in the message ran out. */
export class DeadlineError extends Error {
  override name = 'DeadlineError'
}

/** Rejects with DeadlineError if `promise` has not settled within `ms`; the message names what
 * was waited for. */
export function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlineError(`${what} not ready after ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

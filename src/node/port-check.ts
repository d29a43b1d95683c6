// uWS listens with SO_REUSEPORT, so a second jobwire started on a port another already serves
// would silently share it: the kernel would split new connections between two unrelated nodes
// (say, an old and a new version). A plain bind without SO_REUSEPORT fails on a port that any
// process listens on; that is the check, made once per node (workers of one node share the
// port on purpose, and skip it).

import { createServer } from 'node:net'

/** Resolves when nothing listens on host:port; rejects with a message saying what to do. */
export function ensurePortFree(host: string, port: number): Promise<void> {
  if (port === 0) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const probe = createServer()
    probe.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') {
        reject(new Error(`port ${port} on ${host} is already served by another process (another jobwire node?). ` +
          'Stop it, pick another --port, or pass --share-port to share it deliberately (e.g. a rolling restart on one machine)'))
      } else {
        // Not ours to judge (e.g. EACCES); uWS's own listen will report it.
        resolve()
      }
    })
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve()))
  })
}

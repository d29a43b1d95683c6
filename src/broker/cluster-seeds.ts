// The nodes a Redis Cluster client starts from (--redis-cluster), shared by the gateway, the
// CLI and the Node Producer. A few reachable nodes are enough: the client learns the rest of
// the cluster from any of them. Credentials, when a node is written as a URL, apply to every
// node, as a cluster's nodes share one ACL configuration.

import { Cluster, type ClusterOptions } from 'ioredis'
import { keySlot } from './slots.js'

export interface ClusterSeeds {
  readonly nodes: ReadonlyArray<{ readonly host: string; readonly port: number }>
  readonly username?: string
  readonly password?: string
  readonly tls: boolean
}

/** `host:port[,host:port...]`; an entry may also be `redis://[user:password@]host:port` (or
 * `rediss://` for TLS). Throws an Error naming the entry it cannot read. */
export function parseClusterSeeds(list: string | readonly string[]): ClusterSeeds {
  const entries = (typeof list === 'string' ? list.split(',') : list).map((e) => e.trim()).filter((e) => e !== '')
  if (entries.length === 0) throw new Error('no cluster node given; use host:port[,host:port...]')
  const nodes: Array<{ host: string; port: number }> = []
  let username: string | undefined
  let password: string | undefined
  let tls = false
  for (const entry of entries) {
    let host: string
    let port: string
    if (/^rediss?:\/\//.test(entry)) {
      let url: URL
      try {
        url = new URL(entry)
      } catch {
        throw new Error(`'${entry}' is not a URL; use host:port or redis://[user:password@]host:port`)
      }
      if (url.pathname !== '' && url.pathname !== '/') throw new Error(`'${entry}': a cluster has no databases; leave out the /db`)
      host = url.hostname.replace(/^\[(.*)\]$/, '$1')
      port = url.port || '6379'
      if (url.username !== '') username = decodeURIComponent(url.username)
      if (url.password !== '') password = decodeURIComponent(url.password)
      tls ||= url.protocol === 'rediss:'
    } else {
      const match = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(entry)
      if (match === null) throw new Error(`'${entry}' is not host:port (or redis://host:port)`)
      host = match[1]!.replace(/^\[(.*)\]$/, '$1')
      port = match[2]!
    }
    if (Number(port) < 1 || Number(port) > 65535) throw new Error(`'${entry}': the port must be from 1 to 65535`)
    nodes.push({ host, port: Number(port) })
  }
  return { nodes, ...(username !== undefined ? { username } : {}), ...(password !== undefined ? { password } : {}), tls }
}

/** The connection options every node of the cluster gets (credentials, TLS). */
export function nodeOptions(seeds: ClusterSeeds): { username?: string; password?: string; tls?: object } {
  return {
    ...(seeds.username !== undefined ? { username: seeds.username } : {}),
    ...(seeds.password !== undefined ? { password: seeds.password } : {}),
    ...(seeds.tls ? { tls: {} } : {}),
  }
}

/** A cluster client for commands (the producer path, snapshot reads). */
export function clusterClient(seeds: ClusterSeeds, options: ClusterOptions = {}): Cluster {
  return new Cluster(seeds.nodes.map((n) => ({ host: n.host, port: n.port })), {
    ...options,
    redisOptions: { ...nodeOptions(seeds), ...options.redisOptions },
  })
}

/** A plain PUBLISH on a cluster, always sent through the same node for a channel (a master
 * picked by the channel's slot). A cluster relays a message to the other nodes from the node
 * it was sent to, so messages sent to different nodes (ioredis picks one at random for a
 * command without a key) can overtake each other; one node per channel keeps a job's messages
 * in order. (Not the slot's owner from ioredis' slot map: a MOVED for one slot rewrites it for
 * the slot's whole range until the next refresh.) */
export async function publishInOrder(cluster: Cluster, channel: string, payload: Buffer | string): Promise<void> {
  const masters = cluster.nodes('master')
  const key = (node: { options: { host?: string; port?: number } }) => `${node.options.host}:${node.options.port}`
  masters.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0))
  const node = masters[keySlot(channel) % Math.max(1, masters.length)]
  await (node ?? cluster).publish(channel, payload)
}

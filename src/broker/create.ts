// Which broker a configuration asks for: Redis Cluster when nodes are given, Redis when a URL
// is, else the embedded one.

import type { Config } from '../support/config.js'
import type { Logger } from '../support/log.js'
import type { Broker } from './broker.js'
import { ClusterBroker } from './cluster.js'
import { parseClusterSeeds } from './cluster-seeds.js'
import { EmbeddedBroker } from './embedded.js'
import { RedisBroker } from './redis.js'

export function createBroker(config: Config, log: Logger): Broker {
  const names = { channelPrefix: config.channelPrefix, keyPrefix: config.keyPrefix, stateTtlSec: config.stateTtlSec, terminalTtlSec: config.terminalTtlSec }
  if (config.redisCluster !== '') return new ClusterBroker(parseClusterSeeds(config.redisCluster), names, log.child({ component: 'redis-cluster' }))
  return config.redisUrl === '' ? new EmbeddedBroker(names) : new RedisBroker(config.redisUrl, names, log.child({ component: 'redis' }))
}

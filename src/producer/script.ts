// Runs progress.lua from Node through ioredis (EVALSHA, falling back to EVAL once per
// connection). Shared by the Redis broker and the standalone Producer.

import { readFileSync } from 'node:fs'
import type { Cluster, Redis } from 'ioredis'
import { projectPath } from '../support/paths.js'
import { channelFor, stateKey } from '../wire/topics.js'
import type { BrokerNames, ProgressOptions } from '../broker/broker.js'
import { OWNER_CONFLICT, OwnerConflict, ProducerError } from './merge.js'

export const PROGRESS_SCRIPT_PATH = projectPath('src', 'producer', 'progress.lua')
export const PROGRESS_SCRIPT = readFileSync(PROGRESS_SCRIPT_PATH, 'utf8')

const COMMAND = 'jobwireProgress'
type ScriptRunner = (key: string, channel: string, payload: Buffer, owner: string, ttl: number, terminalTtl: number, replaceOwner: string, replaceState: string, keyPrefix: string, publishCommand: string) => Promise<number>

/** A single Redis, or a Redis Cluster client (with names.cluster: the cluster key layout). */
export function defineProgressScript(redis: Redis | Cluster): void {
  if (!(COMMAND in redis)) redis.defineCommand(COMMAND, { numberOfKeys: 1, lua: PROGRESS_SCRIPT })
}

export async function runProgressScript(
  redis: Redis | Cluster,
  names: BrokerNames,
  jobId: string,
  payload: Buffer,
  options: ProgressOptions = {},
): Promise<number> {
  defineProgressScript(redis)
  const run = (redis as unknown as Record<string, ScriptRunner>)[COMMAND]!.bind(redis)
  try {
    return await run(
      stateKey(names, jobId),
      channelFor(names.channelPrefix, jobId),
      payload,
      options.owner ?? '',
      options.ttlSec ?? names.stateTtlSec,
      options.terminalTtlSec ?? names.terminalTtlSec,
      options.replaceOwner ? '1' : '',
      options.replace ? '1' : '',
      names.keyPrefix,
      names.cluster ? 'SPUBLISH' : '',
    )
  } catch (err) {
    // The script refuses bad payloads with 'jobwire: <reason>'; nothing was written.
    const match = /jobwire: (.*)$/.exec((err as Error).message)
    if (match?.[1] === OWNER_CONFLICT) throw new OwnerConflict()
    if (match) throw new ProducerError(match[1]!)
    throw err
  }
}

// Runs progress.lua from Node through ioredis (EVALSHA, falling back to EVAL once per
// connection). Shared by the Redis and Redis Cluster brokers and the standalone Producer. On
// a cluster, the owner's job index is kept as a second step (owner-index.ts).

import { readFileSync } from 'node:fs'
import type { Cluster, Redis } from 'ioredis'
import { projectPath } from '../support/paths.js'
import { channelFor, stateKey } from '../wire/topics.js'
import type { BrokerNames, ProgressOptions } from '../broker/broker.js'
import { FinalState, OWNER_CONFLICT, OwnerConflict, ProducerError, SEQ_MISMATCH, SeqMismatch } from './merge.js'
import { indexOwner, OwnerIndexError } from './owner-index.js'

export const PROGRESS_SCRIPT_PATH = projectPath('src', 'producer', 'progress.lua')
export const PROGRESS_SCRIPT = readFileSync(PROGRESS_SCRIPT_PATH, 'utf8')

const COMMAND = 'jobwireProgress'
const FINAL = /^job .* is \w+: a final state is final; pass restart to start a new generation$/
type ScriptRunner = (key: string, ownerKey: string, channel: string, payload: Buffer, owner: string, ttl: number, terminalTtl: number, replaceOwner: string, replaceState: string, keyPrefix: string, publishCommand: string, returnOwners: string, restart: string, ifSeq: string) => Promise<number | [number, string, string]>

/** The key that keeps a job's owner beyond its state key (7 days from the last write), so a
 * state created anew after the state key lapsed keeps the owner: `<key prefix>job-owner:<id>`,
 * on Redis Cluster `<key prefix>job-owner:{<channel>}` (the state key's slot). */
export function ownerKey(names: BrokerNames, jobId: string): string {
  return names.cluster ? `${names.keyPrefix}job-owner:{${channelFor(names.channelPrefix, jobId)}}` : `${names.keyPrefix}job-owner:${jobId}`
}

/** A single Redis, or a Redis Cluster client (with names.cluster: the cluster key layout). */
export function defineProgressScript(redis: Redis | Cluster): void {
  if (!(COMMAND in redis)) redis.defineCommand(COMMAND, { numberOfKeys: 2, lua: PROGRESS_SCRIPT })
}

/** Resolves to the job's new seq. On a cluster (names.cluster) the update is stored and
 * published first, then listed under its owner; a failure of that second step rejects with
 * OwnerIndexError, which carries the seq of the update that did go through. */
export async function runProgressScript(
  redis: Redis | Cluster,
  names: BrokerNames,
  jobId: string,
  payload: Buffer,
  options: ProgressOptions = {},
): Promise<number> {
  defineProgressScript(redis)
  const run = (redis as unknown as Record<string, ScriptRunner>)[COMMAND]!.bind(redis)
  const ttl = options.ttlSec ?? names.stateTtlSec
  const terminalTtl = options.terminalTtlSec ?? names.terminalTtlSec
  let reply: number | [number, string, string]
  try {
    reply = await run(
      stateKey(names, jobId),
      ownerKey(names, jobId),
      channelFor(names.channelPrefix, jobId),
      payload,
      options.owner ?? '',
      ttl,
      terminalTtl,
      options.replaceOwner ? '1' : '',
      options.replace ? '1' : '',
      names.keyPrefix,
      names.cluster ? 'SPUBLISH' : '',
      // On a cluster the script cannot reach the owner's index: it tells us the owners.
      names.cluster ? '1' : '',
      options.restart ? '1' : '',
      options.ifSeq === undefined ? '' : String(options.ifSeq),
    )
  } catch (err) {
    // The script refuses bad payloads with 'jobwire: <reason>'; nothing was written.
    const match = /jobwire: (.*)$/.exec((err as Error).message)
    if (match?.[1] === OWNER_CONFLICT) throw new OwnerConflict()
    if (match && FINAL.test(match[1]!)) throw new FinalState(match[1]!)
    if (match && SEQ_MISMATCH.test(match[1]!)) throw new SeqMismatch(match[1]!)
    if (match) throw new ProducerError(match[1]!)
    throw err
  }
  if (typeof reply === 'number') return reply
  const [seq, owner, previous] = reply
  try {
    await indexOwner(redis, names.keyPrefix, jobId, owner, previous, Math.max(ttl, terminalTtl))
  } catch (err) {
    throw new OwnerIndexError(jobId, seq, owner, err as Error)
  }
  return seq
}

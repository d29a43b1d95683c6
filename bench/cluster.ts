// A private Redis Cluster for a test file or a bench run: 3 masters and 3 replicas of
// redis-server with `cluster-enabled yes`, on free loopback ports, in a temp dir, joined with
// `redis-cli --cluster create --cluster-replicas 1`. A node can be killed (its replica takes
// over) and a slot migrated while the cluster serves. stop() ends every process it started.
// Tests reach it through test/fixtures/cluster.ts.

import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Cluster, Redis } from 'ioredis'
import { removeOnExit, track } from './children.js'

/** Short enough that a failover takes a few seconds; long enough that a loaded test machine
 * does not fail nodes over by itself. */
const NODE_TIMEOUT_MS = 2000

export interface TestCluster {
  readonly ports: readonly number[]
  /** The nodes as --redis-cluster takes them: 127.0.0.1:port,... */
  readonly seeds: string
  /** Ports of the nodes running now. */
  livePorts(): number[]
  /** A connection straight to one node (closed by stop()). */
  node(port: number): Redis
  /** A cluster client (closed by stop()). */
  client(): Cluster
  /** The port of the master serving `slot`, as a live node sees it. */
  masterOf(slot: number): Promise<number>
  /** Ports of the current masters. */
  masters(): Promise<number[]>
  /** The slot map a live node holds: [first slot, last slot, master port] ranges. */
  slots(): Promise<Array<[number, number, number]>>
  /** SIGKILL the node. */
  kill(port: number): Promise<void>
  /** Starts a killed node again on its port, empty (no persistence), with its cluster
   * configuration: it rejoins (as a replica, if another node took over its slots). */
  restart(port: number): Promise<void>
  /** Until every live node says cluster_state:ok and agrees who serves `slot` (after a
   * failover). */
  waitForOk(slot?: number): Promise<void>
  /** Moves `slot` to the master on `toPort` as redis-cli --cluster reshard does: IMPORTING,
   * MIGRATING, MIGRATE of its keys, then SETSLOT NODE on every master. */
  migrateSlot(slot: number, toPort: number): Promise<void>
  /** Until every running replica's link to its master is up (a killed master has someone
   * to take over). */
  waitForReplicas(): Promise<void>
  /** Pids of the redis-server processes still running (bench: their CPU). */
  pids(): number[]
  stop(): Promise<void>
}

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/** Six ports p whose cluster bus port p+10000 is free too, below the kernel's ephemeral range
 * (from 32768), where other tests' port-0 listeners land. */
async function clusterPorts(count: number): Promise<number[]> {
  const ports: number[] = []
  for (let attempt = 0; ports.length < count && attempt < 500; attempt++) {
    const port = 11000 + Math.floor(Math.random() * 10000)
    if (ports.includes(port) || ports.includes(port + 10000) || ports.includes(port - 10000)) continue
    if (await canBind(port) && await canBind(port + 10000)) ports.push(port)
  }
  if (ports.length < count) throw new Error('no free ports for a cluster')
  return ports
}

function exited(proc: ChildProcess): Promise<number | null> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(proc.exitCode)
  return new Promise((resolve) => proc.once('exit', (code) => resolve(code)))
}

async function until(check: () => Promise<boolean>, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      if (await check()) return
    } catch {
      // a node not answering yet counts as not there
    }
    if (Date.now() > deadline) throw new Error(`cluster: timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

export async function startCluster(): Promise<TestCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'jobwire-cluster-'))
  removeOnExit(dir)
  const ports = await clusterPorts(6)
  const procs = new Map<number, ChildProcess>()
  const clients: Array<Redis | Cluster> = []
  const admin = new Map<number, Redis>()

  const adminOf = (port: number): Redis => {
    let conn = admin.get(port)
    if (conn === undefined) {
      conn = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: true })
      conn.on('error', () => undefined)
      conn.on('end', () => admin.delete(port))
      admin.set(port, conn)
    }
    return conn
  }
  const alive = (port: number) => {
    const proc = procs.get(port)
    return proc !== undefined && proc.exitCode === null && proc.signalCode === null
  }
  const live = () => ports.filter(alive)

  const stop = async () => {
    for (const c of [...clients, ...admin.values()]) c.disconnect()
    await Promise.all([...procs.values()].map((proc) => {
      const done = exited(proc)
      proc.kill('SIGKILL')
      return done
    }))
    rmSync(dir, { recursive: true, force: true })
  }

  const launch = (port: number) => procs.set(port, track(spawn('redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes',
    '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', String(NODE_TIMEOUT_MS),
    '--dir', dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--loglevel', 'warning',
  ], { stdio: 'ignore' })))

  try {
    for (const port of ports) launch(port)
    await until(async () => {
      for (const port of ports) if (!alive(port) || await adminOf(port).ping() !== 'PONG') return false
      return true
    }, 'every redis-server to answer', 10_000)
    const create = track(spawn('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '1', '--cluster-yes'],
      { stdio: ['ignore', 'pipe', 'pipe'] }))
    let output = ''
    create.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()))
    create.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()))
    const timer = setTimeout(() => create.kill('SIGKILL'), 30_000)
    const code = await exited(create)
    clearTimeout(timer)
    if (code !== 0) throw new Error(`redis-cli --cluster create failed (${code}):\n${output}`)
  } catch (err) {
    await stop()
    throw err
  }

  const slotsSeenBy = async (port: number): Promise<Array<[number, number, number]>> => {
    const slots = await adminOf(port).cluster('SLOTS')
    return slots.map(([from, to, master]) => [from, to, master![1]])
  }

  const cluster: TestCluster = {
    ports,
    seeds: ports.map((p) => `127.0.0.1:${p}`).join(','),
    livePorts: live,
    node(port) {
      const conn = new Redis({ port, host: '127.0.0.1' })
      conn.on('error', () => undefined)
      clients.push(conn)
      return conn
    },
    client() {
      const conn = new Cluster(ports.map((port) => ({ host: '127.0.0.1', port })))
      conn.on('error', () => undefined)
      clients.push(conn)
      return conn
    },
    async masterOf(slot) {
      for (const port of live()) {
        try {
          const range = (await slotsSeenBy(port)).find(([from, to]) => slot >= from && slot <= to)
          if (range) return range[2]
        } catch {
          // ask another node
        }
      }
      throw new Error(`cluster: no live node knows who serves slot ${slot}`)
    },
    async slots() {
      for (const port of live()) {
        try {
          return await slotsSeenBy(port)
        } catch {
          // ask another node
        }
      }
      throw new Error('cluster: no live node answers CLUSTER SLOTS')
    },
    async masters() {
      for (const port of live()) {
        try {
          return [...new Set((await slotsSeenBy(port)).map(([, , master]) => master))].sort()
        } catch {
          // ask another node
        }
      }
      throw new Error('cluster: no live node answers CLUSTER SLOTS')
    },
    async kill(port) {
      const proc = procs.get(port)
      if (proc === undefined || !alive(port)) return
      const done = exited(proc)
      proc.kill('SIGKILL')
      await done
      admin.get(port)?.disconnect()
    },
    async restart(port) {
      if (alive(port)) return
      launch(port)
      await until(async () => alive(port) && await adminOf(port).ping() === 'PONG', `redis-server on ${port} to answer again`, 10_000)
    },
    async waitForOk(slot) {
      await until(async () => {
        const owners = new Set<number>()
        for (const port of live()) {
          if (!/cluster_state:ok/.test(await adminOf(port).cluster('INFO') as string)) return false
          if (slot !== undefined) {
            const range = (await slotsSeenBy(port)).find(([from, to]) => slot >= from && slot <= to)
            if (range === undefined || !alive(range[2])) return false
            owners.add(range[2])
          }
        }
        return owners.size <= 1
      }, 'cluster_state:ok on every live node', 60_000)
    },
    async migrateSlot(slot, toPort) {
      const fromPort = await cluster.masterOf(slot)
      if (fromPort === toPort) return
      const source = adminOf(fromPort)
      const target = adminOf(toPort)
      const sourceId = (await source.cluster('MYID')) as string
      const targetId = (await target.cluster('MYID')) as string
      await target.cluster('SETSLOT', slot, 'IMPORTING', sourceId)
      await source.cluster('SETSLOT', slot, 'MIGRATING', targetId)
      for (let round = 0; round < 10_000; round++) {
        const keys = (await source.cluster('GETKEYSINSLOT', slot, 100)) as string[]
        if (keys.length === 0) break
        await source.migrate('127.0.0.1', toPort, '', 0, 5000, 'KEYS', ...keys)
      }
      // The target first, so the slot always has an owner that accepts it.
      await target.cluster('SETSLOT', slot, 'NODE', targetId)
      await source.cluster('SETSLOT', slot, 'NODE', targetId)
      for (const port of await cluster.masters()) {
        if (port !== fromPort && port !== toPort) await adminOf(port).cluster('SETSLOT', slot, 'NODE', targetId)
      }
      await cluster.waitForOk(slot)
    },
    async waitForReplicas() {
      await until(async () => {
        for (const port of live()) {
          const info = (await adminOf(port).info('replication')) as string
          if (/role:slave/.test(info) && !/master_link_status:up/.test(info)) return false
        }
        return true
      }, 'every replica to be in sync', 30_000)
    },
    pids: () => [...procs.values()].filter((p) => p.exitCode === null && p.signalCode === null).map((p) => p.pid!),
    stop,
  }
  try {
    await cluster.waitForOk()
    await cluster.waitForReplicas()
  } catch (err) {
    await stop()
    throw err
  }
  return cluster
}

// The compact per-connection state (issue 12, bytes per connection): the job table that keeps
// one job in fields and a Map only past one, token buckets kept as one number, the registry's
// expiry heap, the principal cache, and the shared address strings. Each behaves as the
// structure it replaced; these tests pin that down so a later change cannot regress silently.

import t, { type Test } from 'tap'
import type { Principal } from '../src/access/auth.js'
import { PrincipalCache } from '../src/access/auth.js'
import { Connections, type Connection } from '../src/access/connections.js'
import { LocalAdmission } from '../src/access/admission.js'
import { FULL, smallInteger, TokenBucket, TokenRate } from '../src/access/token-bucket.js'
import { JobTable, sharedAddress, type JobState } from '../src/ws/connection.js'

/** The table next to the Map it replaces, after every step. */
function mirror(t: Test, ops: Array<['set', string, JobState] | ['delete', string]>) {
  const table = new JobTable()
  const map = new Map<string, JobState>()
  for (const op of ops) {
    if (op[0] === 'set') {
      table.set(op[1], op[2])
      map.set(op[1], op[2])
    } else {
      t.equal(table.delete(op[1]), map.delete(op[1]), `delete ${op[1]} answers as Map`)
    }
    t.same(table.entries(), [...map], `after ${op.join(' ')}`)
    t.equal(table.size, map.size)
    for (const key of ['a', 'b', 'c', 'd']) {
      t.equal(table.get(key), map.get(key))
      t.equal(table.has(key), map.has(key))
    }
  }
  return table
}

t.test('a job table behaves as the Map it replaces, order included', (t) => {
  mirror(t, [['set', 'a', 'pending'], ['set', 'a', 'subscribed'], ['delete', 'a'], ['delete', 'a']])
  mirror(t, [['set', 'a', 'pending'], ['set', 'b', 'pending'], ['set', 'c', 'parked'], ['delete', 'a'], ['set', 'a', 'pending'],
    ['set', 'b', 'subscribed'], ['delete', 'c'], ['delete', 'b'], ['delete', 'x'], ['delete', 'a']])
  const table = mirror(t, [['set', 'a', 'pending'], ['set', 'b', 'parked'], ['set', 'c', 'subscribed']])
  t.same([...table], table.entries(), 'iterates its entries')
  t.same(table.values(), ['pending', 'parked', 'subscribed'])
  t.end()
})

t.test('a job table holds no Map for one job, and drops it when back to one', (t) => {
  const table = new JobTable()
  const others = () => (table as unknown as { otherJobs: Map<string, JobState> | null }).otherJobs
  table.set('a', 'pending').set('a', 'subscribed')
  t.equal(others(), null, 'one job: no Map')
  table.set('b', 'pending')
  t.ok(others() instanceof Map, 'a second job: a Map')
  table.delete('a')
  t.equal(others(), null, 'back to one: the Map goes')
  t.same(table.entries(), [['b', 'pending']], 'the second moved into the fields')
  t.end()
})

t.test('iterating a job table while changing it sees the entries as they were', (t) => {
  const table = new JobTable().set('a', 'subscribed').set('b', 'subscribed').set('c', 'subscribed')
  const seen: string[] = []
  for (const [job] of table) {
    seen.push(job)
    table.delete(job)
  }
  t.same(seen, ['a', 'b', 'c'])
  t.equal(table.size, 0)
  t.end()
})

/** The old TokenBucket's arithmetic (tokens and last refill), to compare against. */
class ReferenceBucket {
  private tokens: number
  private last: number
  constructor(private readonly rate: number, private readonly capacity: number, now: number) {
    this.tokens = capacity
    this.last = now
  }
  take(now: number): boolean {
    this.refill(now)
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }
  waitMs(now: number): number {
    this.refill(now)
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) / this.rate) * 1000)
  }
  full(now: number): boolean {
    this.refill(now)
    return this.tokens >= this.capacity
  }
  private refill(now: number): void {
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.last) / 1000) * this.rate)
    this.last = now
  }
}

t.test('a token bucket kept as one number answers as the object it replaced', (t) => {
  for (const [rate, capacity] of [[20, 140], [1, 2], [3, 6], [50, 100]] as const) {
    const start = Date.now()
    const reference = new ReferenceBucket(rate, capacity, start)
    const tokenRate = new TokenRate(rate, capacity)
    const holder = { bucket: FULL }
    // A burst, a pause, then requests at a steady clip faster than the rate. The clip is not a
    // whole number of ms, so no request lands exactly on a refill, where the two differ only by
    // floating-point rounding.
    let now = start
    for (let i = 0; i < 400; i++) {
      now += i < capacity + 5 ? 0 : i === capacity + 5 ? 1500 : 700 / rate + 0.37
      const wait = reference.waitMs(now)
      t.ok(Math.abs(tokenRate.waitMs(holder.bucket, now) - wait) <= 1, `rate ${rate}: wait ${wait} ms at step ${i}`)
      t.equal(tokenRate.full(holder.bucket, now), reference.full(now), `rate ${rate}: full at step ${i}`)
      t.equal(tokenRate.spend(holder, now), reference.take(now), `rate ${rate}: take at step ${i}`)
    }
  }
  t.end()
})

t.test('a token bucket allows its capacity at once, then its rate', (t) => {
  const bucket = new TokenBucket(10, 20)
  const now = Date.now()
  let taken = 0
  while (bucket.take(now)) taken++
  t.equal(taken, 20, 'starts full')
  t.equal(bucket.waitMs(now), 100, 'one token per 100 ms')
  t.notOk(bucket.take(now + 99))
  t.ok(bucket.take(now + 200), 'refilled')
  t.notOk(bucket.full(now + 200))
  t.ok(bucket.full(now + 3000))
  t.end()
})

t.test('a bucket state stays the number it is, whatever its size', (t) => {
  for (const x of [0, 50, -7, 2 ** 31 - 1, 2 ** 31, 2 ** 40, 12.5, -0.5]) t.equal(smallInteger(x), x)
  t.end()
})

t.test('admission counts per address and user only while their cap is on', (t) => {
  const open = new LocalAdmission({ maxConnectionsPerUser: 0, maxConnectionsPerIp: 0, connectRatePerIp: 0 })
  const counts = (a: LocalAdmission) => a as unknown as { perIp: Map<string, number>; perUser: Map<string, number> }
  for (let i = 0; i < 5; i++) t.ok(open.admit({ userId: 'u', address: '10.0.0.1' }).ok)
  t.equal(counts(open).perIp.size + counts(open).perUser.size, 0, 'no entries when uncapped')
  open.release({ userId: 'u', address: '10.0.0.1' })
  t.equal(counts(open).perIp.size, 0)

  const capped = new LocalAdmission({ maxConnectionsPerUser: 0, maxConnectionsPerIp: 2, connectRatePerIp: 2 })
  const a = { userId: 'u', address: '10.0.0.2' }
  t.ok(capped.admit(a).ok)
  t.ok(capped.admit(a).ok)
  t.notOk(capped.admit(a).ok, 'the third from one address is refused')
  capped.release(a)
  t.ok(capped.admit(a).ok, 'a release frees a place')
  t.ok(capped.charge('10.0.0.3').ok)
  for (let i = 0; i < 3; i++) capped.charge('10.0.0.3')
  const refused = capped.charge('10.0.0.3')
  t.notOk(refused.ok, 'the connect rate holds')
  if (!refused.ok) t.ok(refused.retryAfterMs >= 1000)
  t.end()
})

class FakeConnection implements Connection {
  readonly transport = 'websocket' as const
  readonly ip = '127.0.0.1'
  readonly encoding = 'json' as const
  readonly connectedAt = Date.now()
  constructor(readonly id: number, readonly principal: Principal | null) {}
  subscriptions(): string[] {
    return []
  }
  watches(): boolean {
    return false
  }
  revoke(): void {}
  expire(): void {}
  disconnect(): void {}
  shutdown(): void {}
}

const principal = (userId: string, expiresAt: number | null): Principal => ({ userId, admin: false, producer: false, jobs: [], expiresAt })

t.test('the registry takes connections as their tokens expire, in order, each once', (t) => {
  const registry = new Connections()
  const base = 1_800_000_000_000
  const conns = Array.from({ length: 3000 }, (_, i) => new FakeConnection(registry.nextId(), principal(`u${i % 7}`, base + ((i * 7919) % 3000) * 1000 + 1)))
  const open = new FakeConnection(registry.nextId(), null)
  for (const c of conns) registry.add(c)
  registry.add(open)
  // Half of them close before their token expires.
  for (const c of conns.filter((_, i) => i % 2 === 0)) registry.remove(c)
  const taken: FakeConnection[] = []
  for (let s = 0; s <= 3001; s++) {
    for (const c of registry.takeExpired(base + s * 1000)) {
      const expires = c.principal!.expiresAt!
      t.equal(Math.ceil(expires / 1000), base / 1000 + s, 'taken in the first whole second after its expiry')
      taken.push(c as FakeConnection)
    }
  }
  t.same(taken.map((c) => c.id).sort((a, b) => a - b), conns.filter((_, i) => i % 2 === 1).map((c) => c.id), 'each open one once, closed ones never')
  t.equal(registry.size, 1501, 'taken ones stay open until they close')
  t.same(registry.takeExpired(base + 10_000_000), [], 'nothing twice')
  t.end()
})

t.test('the registry finds a user’s connections and lists them without a per-user index', (t) => {
  const registry = new Connections()
  const a1 = new FakeConnection(registry.nextId(), principal('alice', null))
  const b1 = new FakeConnection(registry.nextId(), principal('bob', null))
  const a2 = new FakeConnection(registry.nextId(), principal('alice', null))
  for (const c of [a1, b1, a2]) registry.add(c)
  t.same(registry.ofUser('alice'), [a1, a2])
  t.same(registry.list('alice').map((c) => c.id), [a1.id, a2.id])
  t.same(registry.list(undefined, 2).map((c) => c.id), [a1.id, b1.id], 'the limit holds')
  registry.remove(a1)
  t.same(registry.ofUser('alice'), [a2])
  t.same([...registry.values()], [b1, a2])
  t.end()
})

t.test('closed connections do not pile up in the expiry heap', (t) => {
  const registry = new Connections()
  const far = Date.now() + 3_600_000
  for (let i = 0; i < 20_000; i++) {
    const c = new FakeConnection(registry.nextId(), principal('u', far + i))
    registry.add(c)
    registry.remove(c)
  }
  const heap = (registry as unknown as { expiring: Connection[] }).expiring
  t.ok(heap.length <= 2048, `at most ~2x the threshold left (${heap.length})`)
  t.end()
})

t.test('the principal cache returns one principal per token while it is valid', (t) => {
  const cache = new PrincipalCache(100)
  const now = 1_000_000
  const p = principal('u', now + 5000)
  cache.set('token-a', p, now + 5000, now)
  t.equal(cache.get('token-a', now + 4999), p, 'the same object while valid')
  t.equal(cache.get('token-a', now + 5000), undefined, 'not at its expiry')
  t.equal(cache.size, 0, 'an expired entry is dropped')
  cache.set('token-b', p, now - 1, now)
  t.equal(cache.get('token-b', now), undefined, 'an expired token is not kept')
  // Bounded by the characters of the tokens it holds, oldest out first.
  for (let i = 0; i < 20; i++) cache.set(`token-${String(i).padStart(4, '0')}`, p, now + 5000, now)
  t.equal(cache.size, 10, '100 characters hold ten 10-character tokens')
  t.equal(cache.get('token-0000', now), undefined, 'the oldest went')
  t.equal(cache.get('token-0019', now), p)
  t.end()
})

t.test('addresses are shared strings, within a bounded pool', (t) => {
  const a = sharedAddress(['10', '1', '2', '3'].join('.'))
  const b = sharedAddress(['10', '1', '2', '3'].join('.'))
  t.equal(a, b)
  for (let i = 0; i < 5000; i++) sharedAddress(`192.0.2.${i}`)
  t.equal(sharedAddress('10.1.2.3'), '10.1.2.3', 'still answers with the address itself once evicted')
  t.end()
})

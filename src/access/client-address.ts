// Who the client is, for per-address limits. Behind a proxy or load balancer the socket's peer
// is the proxy, so counting by peer throttles the whole fleet as one client; trusting any
// X-Forwarded-For lets a client choose its own address. The rule:
//
// - --trusted-proxies (CIDRs; default loopback) names the hops in front of the gateway.
// - With --trust-proxy, and only when the peer itself is a trusted proxy, the client is the
//   right-most X-Forwarded-For entry (all header lines joined, as RFC 7230 says repeated
//   headers mean) that is not a trusted proxy. Entries left of it were written by the client
//   and prove nothing. An entry that is not an IP address where a client address should be
//   makes the client unknown: all such requests through that proxy share one limit.
// - A client that is itself a trusted proxy (a local script on loopback, a health checker, a
//   proxy that added nothing) is never limited as if it were one client: it stands for many.
// - IPv6 clients are counted per /64, the block one host or home usually has.

import { BlockList, isIP } from 'node:net'

export interface ClientAddress {
  /** What the admin list and the logs show. */
  readonly ip: string
  /** The key per-address limits count by; null: not limited per address. */
  readonly limitKey: string | null
}

export interface AddressRule {
  readonly trustProxy: boolean
  readonly trustedProxies: BlockList
}

/** Parses `a.b.c.d/n, x::/n, a.b.c.d` into a BlockList; throws with the bad entry. */
export function parseCidrs(list: readonly string[]): BlockList {
  const blocks = new BlockList()
  for (const entry of list) {
    const [address, bits, extra] = entry.split('/')
    const family = isIP(address ?? '')
    const prefix = bits === undefined ? (family === 6 ? 128 : 32) : Number(bits)
    if (family === 0 || extra !== undefined || !Number.isInteger(prefix) || prefix < 0 || prefix > (family === 6 ? 128 : 32)) {
      throw new Error(`'${entry}' is not an IP address or CIDR block like 10.0.0.0/8 or fd00::/8`)
    }
    blocks.addSubnet(address!, prefix, family === 6 ? 'ipv6' : 'ipv4')
  }
  return blocks
}

function isTrusted(rule: AddressRule, ip: string): boolean {
  const family = isIP(ip)
  if (family === 0) return false
  // An IPv4 peer may arrive written as IPv4-mapped IPv6.
  const v4 = ip.startsWith('::ffff:') && isIP(ip.slice(7)) === 4 ? ip.slice(7) : null
  return rule.trustedProxies.check(v4 ?? ip, v4 !== null || family === 4 ? 'ipv4' : 'ipv6')
}

/** The /64 an IPv6 address belongs to; IPv4 addresses as they are. */
function limitKeyOf(ip: string): string {
  if (isIP(ip) !== 6) return ip
  const [head = '', tail] = ip.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? left : [...left, ...new Array<string>(8 - left.length - right.length).fill('0'), ...right]
  return groups.slice(0, 4).map((g) => parseInt(g, 16).toString(16)).join(':') + '::/64'
}

/** `forwardedFor`: every X-Forwarded-For header line, in order. */
export function resolveClient(rule: AddressRule, peer: string, forwardedFor: readonly string[]): ClientAddress {
  let ip = peer
  if (rule.trustProxy && isTrusted(rule, peer) && forwardedFor.length > 0) {
    const hops = forwardedFor.join(',').split(',').map((h) => h.trim()).filter((h) => h !== '')
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hops[i]!
      if (isIP(hop) === 0) return { ip: `unknown (via ${peer})`, limitKey: `unknown@${peer}` }
      ip = hop
      if (!isTrusted(rule, hop)) break
    }
  }
  return { ip, limitKey: isTrusted(rule, ip) ? null : limitKeyOf(ip) }
}

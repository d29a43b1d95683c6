// CPU time and memory of processes, from /proc (Linux): what each party of a benchmark spent.

import { readdirSync, readFileSync } from 'node:fs'

const TICKS_PER_SECOND = 100 // USER_HZ on Linux

/** utime + stime of a process, in microseconds; 0 when it is gone. */
export function cpuMicros(pid: number): number {
  const [user, kernel] = cpuSplit(pid)
  return user + kernel
}

/** [utime, stime] of a process in microseconds: time in user space and in the kernel. */
export function cpuSplit(pid: number): [number, number] {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return [(Number(fields[11]) * 1e6) / TICKS_PER_SECOND, (Number(fields[12]) * 1e6) / TICKS_PER_SECOND]
  } catch {
    return [0, 0]
  }
}

/** Resident set size in bytes; 0 when it is gone. */
export function rssBytes(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const match = /VmRSS:\s+(\d+) kB/.exec(status)
    return match ? Number(match[1]) * 1024 : 0
  } catch {
    return 0
  }
}

/** The direct children of a process (a gateway primary's workers). */
export function childPids(pid: number): number[] {
  const out: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid) out.push(Number(entry))
    } catch {
      // exited while we looked
    }
  }
  return out
}

export function sum(pids: readonly number[], f: (pid: number) => number): number {
  return pids.reduce((total, pid) => total + f(pid), 0)
}

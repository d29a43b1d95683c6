/** CLOCK_MONOTONIC in microseconds (process.hrtime): the same clock in every process on the
 * machine, so a timestamp written by the publisher can be subtracted in a load generator. */
export function monotonicMicros(): number {
  const [seconds, nanos] = process.hrtime()
  return seconds * 1e6 + nanos / 1e3
}

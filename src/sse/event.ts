// The text of one Server-Sent Event. The fan-out builds each job_update event once per broker
// message and hands the same string to every stream of the job.

import type { Frame } from '../wire/frames.js'

/** SSE data lines cannot hold raw line breaks; in valid JSON they are only whitespace. */
function oneLine(json: string): string {
  return json.includes('\n') || json.includes('\r') ? json.replace(/[\r\n]+/g, ' ') : json
}

/** `id:` is the payload's seq, so a reconnecting EventSource says where it was. */
export function sseEvent(event: string, json: Frame, seq: number | undefined): string {
  const data = oneLine(typeof json === 'string' ? json : json.toString('utf8'))
  return `event: ${event}\n${seq === undefined ? '' : `id: ${seq}\n`}data: ${data}\n\n`
}

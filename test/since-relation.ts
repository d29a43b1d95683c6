// Epochs are compared for equality only (issue 19, item 5): `since` on subscribe_job and
// job_status is validated, and the relation of a state to it is newer/same/behind within one
// epoch, new_epoch for any other epoch (larger or smaller), none for no state.

import t from 'tap'
import { validateClientMessage, RequestError } from '../src/wire/client-messages.js'
import { compareVersions } from '../src/wire/payload.js'
import { relationOf } from '../src/wire/protocol.js'
import { statusMessage } from '../src/wire/frames.js'

const E = 1_733_611_200_000

t.test('compareVersions orders seqs within one epoch and never across epochs', (t) => {
  t.ok(compareVersions(E, 5, E, 3)! > 0)
  t.ok(compareVersions(E, 3, E, 5)! < 0)
  t.equal(compareVersions(E, 5, E, 5), 0)
  t.equal(compareVersions(E + 1, 1, E, 50), null, 'a larger epoch is not newer')
  t.equal(compareVersions(E - 1, 99, E, 1), null, 'nor a smaller one older')
  t.equal(compareVersions(undefined, undefined, E, 1), -1, 'a plain PUBLISH is never newer than a stored state')
  t.end()
})

t.test('relationOf', (t) => {
  const since = { epoch: E, seq: 5 }
  t.equal(relationOf(since, { epoch: E, seq: 6 }), 'newer')
  t.equal(relationOf(since, { epoch: E, seq: 5 }), 'same')
  t.equal(relationOf(since, { epoch: E, seq: 4 }), 'behind')
  t.equal(relationOf(since, { epoch: E + 1, seq: 9 }), 'new_epoch')
  t.equal(relationOf(since, { epoch: E - 1, seq: 9 }), 'new_epoch')
  t.equal(relationOf(since, { progress: 3 }), 'new_epoch', 'a state without seq is no part of the held history')
  t.equal(relationOf(since, null), 'none')
  t.same(statusMessage('j', { epoch: E, seq: 4 }, 'requested', { since, id: 'q' }), { type: 'job_status', job_id: 'j', data: { epoch: E, seq: 4 }, reason: 'requested', relation: 'behind', id: 'q' })
  t.same(statusMessage('j', null, 'resync'), { type: 'job_status', job_id: 'j', data: null, reason: 'resync' }, 'no since: no relation')
  t.end()
})

t.test('since and id are validated', (t) => {
  t.same(validateClientMessage({ type: 'subscribe_job', job_id: 'a', since: { epoch: E, seq: 0 }, id: 7 }), { type: 'subscribe_job', job_id: 'a', since: { epoch: E, seq: 0 }, id: 7 })
  t.same(validateClientMessage({ type: 'job_status', job_id: 'a', since: { epoch: 0, seq: 3, extra: 1 } }), { type: 'job_status', job_id: 'a', since: { epoch: 0, seq: 3 } })
  for (const since of [null, 5, 'x', { epoch: E }, { seq: 1 }, { epoch: -1, seq: 1 }, { epoch: E, seq: 1.5 }, { epoch: 2 ** 53, seq: 1 }]) {
    const refused = validateClientMessage({ type: 'subscribe_job', job_id: 'a', since, id: 'r' })
    t.ok(refused instanceof RequestError && refused.code === 'bad_message' && refused.id === 'r', `since ${JSON.stringify(since)} refused, echoing the id`)
  }
  for (const id of ['', 'x'.repeat(64), 0, -5, Number.MAX_SAFE_INTEGER]) t.notOk(validateClientMessage({ type: 'unsubscribe_job', job_id: 'a', id }) instanceof RequestError, `id ${JSON.stringify(id)}`)
  for (const id of ['x'.repeat(65), 1.5, 2 ** 53, null, true, { a: 1 }]) {
    const refused = validateClientMessage({ type: 'unsubscribe_job', job_id: 'a', id })
    t.ok(refused instanceof RequestError && refused.id === undefined, `id ${JSON.stringify(id)} refused, not echoed`)
  }
  t.same(validateClientMessage({ type: 'ping', id: 1.5 }), { type: 'ping', id: 1.5 }, "ping's id keeps its own rule")
  t.end()
})

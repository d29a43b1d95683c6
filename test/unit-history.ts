// A node's history is its processes' histories added up point by point: counts add, delays
// take the worst, points of different instants stay apart.

import t from 'tap'
import { mergeHistories, type HistoryPoint } from '../src/node/history.js'

const point = (t: number, over: Partial<HistoryPoint> = {}): HistoryPoint =>
  ({ t, connections: 10, deliveriesPerSec: 100, loopP99Ms: 2, brokerRttMs: 1, refusals: {}, ...over })

t.test('points of one instant add up; delays take the worst', async (t) => {
  const merged = mergeHistories([
    [point(10_000, { refusals: { forbidden: 2 } }), point(20_000)],
    [point(10_000, { connections: 5, loopP99Ms: 9, brokerRttMs: null, refusals: { forbidden: 1, per_user: 3 } }), point(30_000)],
  ])
  t.same(merged.map((p) => p.t), [10_000, 20_000, 30_000], 'in time order')
  t.same(merged[0], { t: 10_000, connections: 15, deliveriesPerSec: 200, loopP99Ms: 9, brokerRttMs: 1, refusals: { forbidden: 3, per_user: 3 } })
  t.same(mergeHistories([]), [])
})

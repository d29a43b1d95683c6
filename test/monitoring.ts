// The alerting rules and the Grafana dashboard shipped in docs/monitoring/ name only metrics a
// node exposes: a renamed metric would otherwise leave an alert that never fires and a panel
// that stays empty, with nothing to say so. Checked against a real node with two workers (so
// the primary's series are there too). The rule file's shape is checked as well: every alert
// has an expression, a severity and a summary.

import t from 'tap'
import { readFileSync } from 'node:fs'
import { projectPath } from '../src/support/paths.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'

const rules = readFileSync(projectPath('docs', 'monitoring', 'jobwire-alerts.yml'), 'utf8')
const dashboard = JSON.parse(readFileSync(projectPath('docs', 'monitoring', 'jobwire-dashboard.json'), 'utf8')) as {
  panels: Array<{ title: string; targets: Array<{ expr: string }> }>
}

/** jobwire_* names in a PromQL expression, histogram suffixes folded to the family. */
function metricNames(expr: string): string[] {
  return [...expr.matchAll(/\bjobwire_[a-z0-9_]+/g)].map((m) => m[0])
}

t.test('the rule file: every alert has an expression, a severity and a summary', async (t) => {
  const alerts = rules.split(/\n\s*- alert: /).slice(1)
  t.ok(alerts.length >= 10, `${alerts.length} alerts`)
  for (const alert of alerts) {
    const name = alert.split('\n')[0]!.trim()
    t.match(alert, /\n\s+expr: \S/, `${name}: expr`)
    t.match(alert, /labels: \{severity: (page|ticket)\}/, `${name}: severity`)
    t.match(alert, /\n\s+summary: "/, `${name}: summary`)
  }
})

t.test('every metric the rules and the dashboard name exists on a running node', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--workers', '2', '--redis', redis.url])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/, 20_000)
  let text = ''
  await until(async () => {
    text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
    return /^jobwire_workers 2$/m.test(text)
  }, 'both workers reporting', 10_000)
  const exposed = new Set([...text.matchAll(/^# TYPE (jobwire_[a-z0-9_]+) /gm)].map((m) => m[1]!))
  const family = (name: string) => name.replace(/_(bucket|sum|count)$/, '')
  const named = new Map<string, string>()
  for (const expr of [...rules.matchAll(/\n\s+expr: (.+)/g)].map((m) => m[1]!)) for (const n of metricNames(expr)) named.set(n, 'rules')
  for (const panel of dashboard.panels) for (const target of panel.targets) for (const n of metricNames(target.expr)) named.set(n, `panel "${panel.title}"`)
  t.ok(named.size >= 15, `${named.size} metrics named`)
  for (const [name, where] of named) {
    t.ok(exposed.has(name) || exposed.has(family(name)), `${name} (${where}) is exposed`)
  }
  // Label values the rules rely on.
  t.match(rules, /reason="at_capacity"/)
  t.match(readFileSync(projectPath('src', 'ws', 'behavior.ts'), 'utf8'), /'at_capacity'/, 'the at_capacity reason the rules name is the one the gateway counts')
})

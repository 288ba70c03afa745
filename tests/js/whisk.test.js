// Drives a running `faas up` with the official `openwhisk` npm client, unmodified:
// the lecture's trigger/rules example, a sequence of three shell actions (with a failing
// middle component variant), and a Node.js code action given as a string. Run by faas/tests/whisk.rs with OW_APIHOST and OW_AUTH set.
'use strict'
const assert = require('node:assert/strict')
const openwhisk = require('openwhisk')

const ow = openwhisk({ apihost: process.env.OW_APIHOST, api_key: process.env.OW_AUTH, namespace: '_' })

const shell = (name, fprocess, params) => ow.actions.create({
  name,
  action: { exec: { kind: 'blackbox', image: 'faas-rs/shell' }, annotations: [{ key: 'fprocess', value: fprocess }], parameters: params || [] }
})

// Polls (bounded) until `f` answers a truthy value.
async function eventually (what, f) {
  const deadline = Date.now() + 60000
  for (;;) {
    const v = await f()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

const done = list => list.every(a => a.response && a.response.result && a.response.result.statusCode === undefined)

async function lecture () {
  await shell('welcome', 'cat', [{ key: 'greeting', value: 'hello' }])
  await shell('audit', 'cat')
  await ow.triggers.create({ name: 'new-user', trigger: { parameters: [{ key: 'source', value: 'signup' }, { key: 'from', value: 'trigger' }] } })
  await ow.rules.create({ name: 'r-welcome', action: 'welcome', trigger: 'new-user' })
  await ow.rules.create({ name: 'r-audit', action: 'audit', trigger: 'new-user' })

  const fired = await ow.triggers.invoke({ name: 'new-user', params: { user: 'ann', from: 'event' } })
  assert.ok(fired.activationId, 'firing answers the trigger activation id')
  for (const name of ['welcome', 'audit']) {
    const list = await eventually(`${name} activation`, async () => {
      const l = await ow.activations.list({ name, docs: true })
      return l.length >= 1 && done(l) && l
    })
    const result = list[0].response.result
    assert.equal(result.user, 'ann')
    assert.equal(result.source, 'signup')
    assert.equal(result.from, 'event')
    if (name === 'welcome') assert.equal(result.greeting, 'hello')
  }
  const trig = await ow.activations.get({ name: fired.activationId })
  assert.equal(trig.logs.length, 2, 'the trigger activation lists both rules')

  await ow.rules.disable({ name: 'r-audit' })
  const rule = await ow.rules.get({ name: 'r-audit' })
  assert.equal(rule.status, 'inactive')
  const again = await ow.triggers.invoke({ name: 'new-user', params: { user: 'bob' } })
  const trig2 = await ow.activations.get({ name: again.activationId })
  assert.equal(trig2.logs.length, 1, 'only the active rule fired')
  await eventually('welcome ran again', async () => {
    const l = await ow.activations.list({ name: 'welcome', docs: true })
    return l.length >= 2 && done(l) && l[0].response.result.user === 'bob'
  })
  const audits = await ow.activations.list({ name: 'audit' })
  assert.equal(audits.length, 1, 'the disabled rule\'s action did not run')
}

async function sequence () {
  await shell('upper', 'tr a-z A-Z')
  await shell('boom', "sh -c 'echo boom >&2; exit 1'")
  await ow.actions.create({ name: 'seq', action: { exec: { kind: 'sequence', components: ['/_/welcome', '/_/upper', '/_/audit'] } } })
  const result = await ow.actions.invoke({ name: 'seq', blocking: true, result: true, params: { word: 'abc' } })
  assert.deepEqual(result, { WORD: 'ABC', GREETING: 'HELLO' })
  const record = await ow.actions.invoke({ name: 'seq', blocking: true, params: { word: 'x' } })
  assert.equal(record.logs.length, 3)
  assert.ok(record.annotations.some(a => a.key === 'topmost' && a.value === true))
  for (const id of record.logs) {
    const c = await ow.activations.get({ name: id })
    assert.equal(c.cause, record.activationId)
    assert.ok(c.annotations.some(a => a.key === 'causedBy' && a.value === 'sequence'))
  }

  await ow.actions.create({ name: 'broken', action: { exec: { kind: 'sequence', components: ['/_/welcome', '/_/boom', '/_/audit'] } } })
  await assert.rejects(ow.actions.invoke({ name: 'broken', blocking: true, params: { word: 'x' } }), err => {
    assert.equal(err.statusCode, 502)
    assert.equal(err.error.response.success, false)
    assert.ok([1, 2].includes(err.error.response.statusCode))
    assert.equal(err.error.logs.length, 2, 'the chain stopped at the failing component')
    return true
  })
}

// A code action as the client sends a string (`exec.kind` `nodejs:default`): run by the
// manifest's nodejs:20 runtime.
async function code () {
  await ow.actions.create({ name: 'js-hello', action: 'function main (p) { return { hello: p.name, n: 40 + 2 } }' })
  const result = await ow.actions.invoke({ name: 'js-hello', blocking: true, result: true, params: { name: 'node' } })
  assert.deepEqual(result, { hello: 'node', n: 42 })
}

async function main () {
  await lecture()
  await sequence()
  await code()
  const actions = await ow.actions.list()
  assert.ok(actions.length >= 5)
  console.log('openwhisk client: all checks passed')
}

main().catch(err => {
  console.error(err)
  process.exit(1)
})

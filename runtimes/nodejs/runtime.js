#!/usr/bin/env node
// An OpenWhisk action runtime for Node.js code actions, standard library only.
//
// Written from the action runtime protocol (apache/openwhisk docs/actions-new.md):
// POST /init {"value": {"name", "main", "code", "binary", "env"}} loads the action once
// (source text defining the `main` function, or assigning it to module.exports / exports.main;
// base64 zips are not supported by this runtime and fail /init); POST /run {"value": params,
// "activation_id", ...} sets the __OW_* environment variables, calls main(params) (a promise
// is awaited) and answers its object, with the line XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX on
// stdout and stderr after each activation. Listens on the port in the environment variable
// `port` (what the faas-rs watchdog sets), else 8080.
'use strict';

const http = require('http');

const MARKER = 'XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX';
let action = null;

function answer(res, status, obj) {
  const body = Buffer.from(JSON.stringify(obj));
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': body.length });
  res.end(body);
}

function markers() {
  process.stdout.write(MARKER + '\n');
  process.stderr.write(MARKER + '\n');
}

function load(value) {
  const main = value.main || 'main';
  if (!/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(main)) {
    throw new Error(`main ${JSON.stringify(main)} is not an identifier`);
  }
  if (value.binary) {
    throw new Error('zip actions are not supported by this runtime');
  }
  for (const [k, v] of Object.entries(value.env || {})) {
    process.env[k] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  const module = { exports: {} };
  const body = `${value.code || ''}\n;return typeof ${main} === 'function' ? ${main} : ` +
    `(typeof module.exports === 'function' ? module.exports : module.exports[${JSON.stringify(main)}]);`;
  // eslint-disable-next-line no-new-func
  const fn = new Function('module', 'exports', 'require', body)(module, module.exports, require);
  if (typeof fn !== 'function') {
    throw new Error(`Action entrypoint '${main}' is not a function`);
  }
  return fn;
}

async function run(msg, res) {
  if (!action) {
    answer(res, 502, { error: 'Cannot invoke an uninitialized action.' });
    return;
  }
  for (const [k, v] of Object.entries(msg)) {
    if (k !== 'value') process.env['__OW_' + k.toUpperCase()] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  let result;
  try {
    result = await action(msg.value || {});
  } catch (e) {
    console.error(e && e.stack ? e.stack : String(e));
    markers();
    answer(res, 502, { error: `An error has occurred: ${e}` });
    return;
  }
  markers();
  if (result === null || typeof result !== 'object' || Array.isArray(result)) {
    answer(res, 502, { error: 'The action did not return a dictionary.' });
    return;
  }
  answer(res, 200, result);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let msg;
    try {
      const raw = Buffer.concat(chunks).toString() || '{}';
      msg = JSON.parse(raw);
    } catch (e) {
      answer(res, 400, { error: `Invalid JSON: ${e.message}` });
      return;
    }
    if (req.method === 'POST' && req.url === '/init') {
      if (action) {
        answer(res, 403, { error: 'Cannot initialize the action more than once.' });
        return;
      }
      try {
        action = load((msg && msg.value) || {});
      } catch (e) {
        console.error(e && e.stack ? e.stack : String(e));
        answer(res, 502, { error: `Initialization has failed due to: ${e.message}` });
        return;
      }
      answer(res, 200, { OK: true });
    } else if (req.method === 'POST' && req.url === '/run') {
      run(msg || {}, res);
    } else {
      answer(res, 404, { error: `Not found: ${req.url}` });
    }
  });
});

server.listen(Number(process.env.port || 8080), process.env.bind || '0.0.0.0');

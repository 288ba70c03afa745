// faas-rs portal: plain JS over the gateway's own API.
"use strict";

const $ = (id) => document.getElementById(id);

async function api(method, path, body, contentType) {
  const init = { method, headers: {} };
  if (typeof body === "string") {
    init.body = body;
    init.headers["Content-Type"] = contentType || "text/plain";
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  if (!resp.ok) throw new Error(resp.status + " " + text.trim());
  return text ? JSON.parse(text) : null;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

/** `s` with the characters that HTML gives a meaning escaped. */
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
}

async function refresh() {
  try {
    // The list, the sparklines and the queue in parallel; the table is built as one string
    // (a thousand rows in one parse) and each sparkline drawn only once its row comes near
    // the window (see BENCHMARKS.md).
    const [fns, spark, depth] = await Promise.all([api("GET", "/system/functions"), sparklines(), queueDepth()]);
    fns.sort((a, b) => a.name.localeCompare(b.name));
    showQueue(depth);
    const rows = $("fn-rows");
    if (fns.length === 0) {
      rows.innerHTML = '<tr><td colspan="7" class="muted">No functions yet: deploy one below.</td></tr>';
    } else {
      const html = [];
      const perFn = depth && depth.perFunction ? depth.functions : null;
      for (const f of fns) {
        const key = f.name + "." + f.namespace;
        const h = spark[key];
        const q = perFn ? perFn[key] || { waiting: 0, deadLetters: 0 } : null;
        const ready = f.availableReplicas + "/" + f.replicas;
        html.push('<tr data-name="' + esc(f.name) + '"><td><a href="#/fn/' + esc(encodeURIComponent(key)) + '">' +
          esc(f.name) + "</a></td><td>" + esc(f.namespace) + "</td><td>" + esc(f.image) + '</td><td class="' +
          (f.availableReplicas < f.replicas ? "replicas scaling" : "replicas") + '">' + esc(ready) + "</td><td>" +
          esc(f.invocationCount) + '</td><td class="queue' + (q && q.deadLetters ? " error" : "") + '"' +
          (q ? ' data-waiting="' + q.waiting + '" data-dead="' + q.deadLetters + '">' + q.waiting + " / " + q.deadLetters : ">–") +
          '</td><td class="spark" data-key="' + esc(key) + '"></td></tr>');
      }
      rows.innerHTML = html.join("");
      drawVisibleSparklines(spark);
    }
    const select = $("invoke-fn");
    const current = select.value;
    select.innerHTML = fns.map((f) => {
      const key = esc(f.name + "." + f.namespace);
      return '<option value="' + key + '">' + key + "</option>";
    }).join("");
    if (current) select.value = current;
  } catch (e) {
    $("fn-rows").replaceChildren();
    const tr = document.createElement("tr");
    const td = cell("Cannot list functions: " + e.message);
    td.colSpan = 7;
    td.className = "error";
    tr.append(td);
    $("fn-rows").append(tr);
  }
}

async function deploy(ev) {
  ev.preventDefault();
  const status = $("deploy-status");
  const envVars = {};
  for (const line of $("deploy-env").value.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) envVars[line.slice(0, i).trim()] = line.slice(i + 1);
  }
  const spec = { service: $("deploy-name").value.trim(), image: $("deploy-image").value.trim(), envVars };
  const fprocess = $("deploy-fprocess").value.trim();
  if (fprocess) spec.envProcess = fprocess;
  const ns = $("deploy-namespace").value.trim();
  if (ns) spec.namespace = ns;
  status.className = "";
  status.textContent = "Deploying " + spec.service + "…";
  try {
    await api("POST", "/system/functions", spec);
    status.className = "ok";
    status.textContent = "Deployed " + spec.service;
    await refresh();
    $("invoke-fn").value = spec.service + "." + (ns || "openfaas-fn");
  } catch (e) {
    status.className = "error";
    status.textContent = "Deploy failed: " + e.message;
  }
}

async function invoke(ev) {
  ev.preventDefault();
  const name = $("invoke-fn").value;
  if (!name) return;
  const method = $("invoke-method").value;
  const init = { method, headers: { "Content-Type": $("invoke-ctype").value } };
  if (method !== "GET") init.body = $("invoke-body").value;
  const t0 = performance.now();
  let resp, body;
  try {
    resp = await fetch("/function/" + encodeURIComponent(name).replace(/%2E/g, "."), init);
    body = await resp.text();
  } catch (e) {
    $("result").hidden = false;
    $("result-status").textContent = "network error";
    $("result-body").textContent = String(e);
    return;
  }
  const ms = performance.now() - t0;
  $("result").hidden = false;
  $("result-status").textContent = resp.status + " " + resp.statusText;
  $("result-status").className = resp.ok ? "ok" : "error";
  $("result-time").textContent = ms.toFixed(1) + " ms";
  const lines = [];
  resp.headers.forEach((v, k) => lines.push(k + ": " + v));
  $("result-headers").textContent = lines.sort().join("\n");
  $("result-body").textContent = body;
  refresh();
}

async function info() {
  try {
    const i = await api("GET", "/system/info");
    $("provider").textContent = i.provider.provider + " (" + i.provider.orchestration + ") " + i.version.release;
  } catch (e) {
    $("provider").textContent = "";
  }
}

// ---- Overview: the async queue ---------------------------------------------------------

/** The async queue's depth (`GET /system/queue`), or null without a queue. */
async function queueDepth() {
  try {
    return await api("GET", "/system/queue");
  } catch (e) {
    return null;
  }
}

function showQueue(d) {
  const el = $("queue-summary");
  if (!d) {
    el.textContent = "no async queue";
    el.className = "small muted";
    return;
  }
  el.textContent = "Async queue: " + d.waiting + " waiting" +
    (d.inFlight !== undefined ? ", " + d.inFlight + " running" : "") + ", " + d.deadLetters + " dead letters";
  el.className = "small " + (d.deadLetters > 0 ? "error" : "muted");
  el.dataset.waiting = d.waiting;
  el.dataset.dead = d.deadLetters;
}

// ---- Overview sparklines -------------------------------------------------------------

/** Every function's invocations and errors per slot (one request for the whole table). */
async function sparklines() {
  try {
    const v = await api("GET", "/system/history");
    return v.functions || {};
  } catch (e) {
    return {};
  }
}

let sparkObserver = null;

/**
 * Draws the sparkline of each row as it comes within 400 px of the window: with a thousand
 * functions only the rows on screen pay for their SVG.
 */
function drawVisibleSparklines(spark) {
  if (sparkObserver) sparkObserver.disconnect();
  sparkObserver = new IntersectionObserver((entries, observer) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      observer.unobserve(e.target);
      const h = spark[e.target.dataset.key];
      if (h) e.target.innerHTML = sparkline(h.invocations, h.errors);
    }
  }, { rootMargin: "400px 0px" });
  for (const td of $("fn-rows").querySelectorAll("td.spark")) sparkObserver.observe(td);
}

/**
 * A small inline SVG of invocations (blue) and errors (red) per slot over the 15 minutes
 * (60 slots, the newest at the right edge, marked with a dot). Built as one string: the
 * overview draws one per function, a thousand at a time.
 */
function sparkline(inv, errs) {
  const w = 120, h = 24, slots = 60;
  const max = Math.max(1, ...inv);
  const off = slots - inv.length;
  const px = (i) => (((off + i) / (slots - 1)) * (w - 3)).toFixed(1);
  const py = (v) => (h - 2 - (v / max) * (h - 4)).toFixed(1);
  const line = (vals) => vals.map((v, i) => px(i) + "," + py(v)).join(" ");
  const last = inv.length - 1;
  const total = inv.reduce((a, b) => a + b, 0), failed = errs.reduce((a, b) => a + b, 0);
  return '<svg class="sparkline" width="' + w + '" height="' + h + '" viewBox="0 0 ' + w + " " + h +
    '" role="img" aria-label="' + total + " invocations, " + failed + ' errors in 15 minutes">' +
    (inv.length > 1 ? '<polyline class="s1" points="' + line(inv) + '"/>' : "") +
    (failed > 0 && errs.length > 1 ? '<polyline class="s-err" points="' + line(errs) + '"/>' : "") +
    (last >= 0 ? '<circle class="s1" r="2" cx="' + px(last) + '" cy="' + py(inv[last]) + '"/>' : "") +
    "</svg>";
}

// ---- OpenWhisk entities ---------------------------------------------------------------
// Through `/system/whisk/...`, the OpenWhisk API as the gateway's admin: the same basic
// auth and cross-site checks as the rest of the portal, and no OpenWhisk key in the page.

const WSK = "/system/whisk/namespaces/_/";
const OUTCOMES = ["success", "application error", "developer error", "internal error"];

function message(tbody, cols, text, cls) {
  tbody.innerHTML = '<tr><td colspan="' + cols + '" class="' + cls + '">' + esc(text) + "</td></tr>";
}

function button(label, title, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

const pathName = (p) => (p && p.path !== undefined ? "/" + p.path + "/" + p.name : String(p));

async function loadWhisk() {
  let triggers, rules, actions;
  try {
    [triggers, rules, actions] = await Promise.all([api("GET", WSK + "triggers?limit=200"),
      api("GET", WSK + "rules?limit=200"), api("GET", WSK + "actions?limit=200")]);
  } catch (e) {
    for (const [id, cols] of [["wsk-triggers", 3], ["wsk-rules", 5], ["wsk-sequences", 3]]) {
      message($(id), cols, "Cannot read the OpenWhisk entities: " + e.message, "error");
    }
    return;
  }
  $("wsk-ns").textContent = "namespace " + ((triggers[0] || rules[0] || actions[0] || {}).namespace || "");
  showTriggers(triggers);
  showRules(rules);
  showSequences(actions.filter((a) => a.exec && a.exec.kind === "sequence"));
  loadWhiskActivations(null);
}

/** Fills the table body `id` with a row per item of `list` (`fill(tr, item)` adds the cells), or says `empty`. */
function fillRows(id, cols, list, empty, fill) {
  const body = $(id);
  if (list.length === 0) return message(body, cols, empty, "muted");
  body.replaceChildren(...list.map((item) => {
    const tr = document.createElement("tr");
    tr.dataset.name = item.name;
    fill(tr, item);
    return tr;
  }));
}

function showTriggers(list) {
  fillRows("wsk-triggers", 3, list, "No triggers (wsk trigger create NAME).", (tr, t) => {
    const params = (t.parameters || []).map((p) => p.key + "=" + JSON.stringify(p.value)).join(", ");
    const td = document.createElement("td");
    td.append(button("Fire", "Fire " + t.name + " with the parameters below", () => fireTrigger(t.name)));
    tr.append(cell(t.name), cell(params), td);
  });
}

async function fireTrigger(name) {
  const status = $("wsk-fire-status");
  let params;
  try {
    const text = $("wsk-fire-params").value.trim();
    params = text ? JSON.parse(text) : {};
    if (typeof params !== "object" || params === null || Array.isArray(params)) throw new Error("not a JSON object");
  } catch (e) {
    status.className = "error";
    status.textContent = "The parameters must be a JSON object: " + e.message;
    $("wsk-fire-params").focus();
    return;
  }
  status.className = "";
  status.textContent = "Firing " + name + "…";
  try {
    const r = await api("POST", WSK + "triggers/" + encodeURIComponent(name), params);
    status.className = "ok";
    status.textContent = r && r.activationId ? "Fired " + name + ": activation " + r.activationId
      : "Fired " + name + ": no active rule, nothing ran";
    status.dataset.activation = r && r.activationId ? r.activationId : "";
    loadWhiskActivations(null);
  } catch (e) {
    status.className = "error";
    status.textContent = "Firing " + name + " failed: " + e.message;
  }
}

function showRules(list) {
  fillRows("wsk-rules", 5, list, "No rules (wsk rule create NAME TRIGGER ACTION).", (tr, r) => {
    const active = r.status === "active";
    const st = cell(r.status);
    st.className = active ? "ok" : "muted";
    const td = document.createElement("td");
    td.append(button(active ? "Disable" : "Enable", (active ? "Disable " : "Enable ") + r.name,
      () => setRule(r.name, active ? "inactive" : "active")));
    tr.append(cell(r.name), cell(pathName(r.trigger)), cell(pathName(r.action)), st, td);
  });
}

async function setRule(name, status) {
  const out = $("wsk-rule-status");
  try {
    await api("POST", WSK + "rules/" + encodeURIComponent(name), { status });
    out.className = "ok";
    out.textContent = "Rule " + name + " is now " + status;
  } catch (e) {
    out.className = "error";
    out.textContent = "Changing rule " + name + " failed: " + e.message;
  }
  const rules = await api("GET", WSK + "rules?limit=200").catch(() => null);
  if (rules) showRules(rules);
  const again = document.querySelector('#wsk-rules tr[data-name="' + CSS.escape(name) + '"] button');
  if (again) again.focus();
}

function showSequences(list) {
  fillRows("wsk-sequences", 3, list, "No sequences (wsk action create NAME --sequence A,B).", (tr, a) => {
    const td = document.createElement("td");
    td.append(button("Activations", "Show the activations of " + a.name, () => loadWhiskActivations(a.name)));
    tr.append(cell(a.name), cell((a.exec.components || []).join(" → ")), td);
  });
}

/** The namespace's recent activations, or those of `name` only. */
async function loadWhiskActivations(name) {
  const body = $("wsk-activations");
  $("wsk-act-of").textContent = name ? "of " + name : "(triggers fired and sequences run, newest first)";
  let list;
  try {
    list = await api("GET", WSK + "activations?limit=30" + (name ? "&name=" + encodeURIComponent(name) : ""));
  } catch (e) {
    return message(body, 6, "Cannot list activations: " + e.message, "error");
  }
  fillRows("wsk-activations", 6, list, "No activations yet.", (tr, a) => {
    const code = a.statusCode !== undefined ? a.statusCode : (a.response || {}).statusCode;
    tr.className = "activation " + (code === 0 ? "ok" : "error");
    const caused = annotation(a, "causedBy") || "";
    const rec = document.createElement("td");
    const b = button(String(a.activationId).slice(0, 12), "Show the record of " + a.activationId, async () => {
      const pre = $("wsk-record");
      pre.hidden = false;
      try {
        pre.textContent = JSON.stringify(await api("GET", WSK + "activations/" + encodeURIComponent(a.activationId)), null, 2);
      } catch (e) {
        pre.textContent = "Cannot read the record: " + e.message;
      }
      pre.focus();
    });
    b.className = "link";
    rec.append(b);
    tr.append(cell(new Date(a.start).toLocaleTimeString()), cell(a.name), cell(OUTCOMES[code] || String(code)),
      cell(a.duration + " ms"), cell(caused), rec);
  });
}

// ---- Stack file deploy ----------------------------------------------------------------

async function deployStack(ev) {
  ev.preventDefault();
  const status = $("stack-status");
  status.className = "";
  status.textContent = "Deploying the stack…";
  try {
    const r = await api("POST", "/system/stack", $("stack-yaml").value, "application/yaml");
    status.className = "ok";
    status.textContent = "Deployed " + r.deployed.join(", ");
    await refresh();
  } catch (e) {
    status.className = "error";
    status.textContent = "Stack refused: " + e.message;
  }
}

$("stack-file").addEventListener("change", async () => {
  const f = $("stack-file").files[0];
  if (f) $("stack-yaml").value = await f.text();
});

// ---- Function page ------------------------------------------------------------------------

const SVG_NS = "http://www.w3.org/2000/svg";
const page = { key: null, name: null, ns: null, timer: null, logs: null };

function svg(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/**
 * Draws a line chart of one or two series into `el`: hand-made SVG, no library. `series`
 * is a list of arrays of numbers (or null where there is no value) of one length; each
 * point gets a circle with its value as a tooltip.
 */
function drawChart(el, times, series, unit) {
  const W = 340, H = 130, L = 40, R = 8, T = 8, B = 20;
  const values = series.flat().filter((v) => v !== null && v !== undefined);
  const max = Math.max(1e-9, ...values);
  const top = max <= 1 ? Math.ceil(max * 10) / 10 || 1 : niceCeil(max);
  const root = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img" });
  const n = times.length;
  const slotMs = n > 1 ? times[1] - times[0] : 15000;
  const t1 = n ? times[n - 1] : Date.now();
  const t0 = t1 - 59 * slotMs;
  const x = (t) => L + ((t - t0) / (t1 - t0 || 1)) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  for (const frac of [0, 0.5, 1]) {
    root.append(svg("line", { x1: L, x2: W - R, y1: y(top * frac), y2: y(top * frac), class: "grid" }));
    const lab = svg("text", { x: L - 4, y: y(top * frac) + 4, class: "axis", "text-anchor": "end" });
    lab.textContent = fmt(top * frac);
    root.append(lab);
  }
  for (const [label, t] of [["-15m", t0], ["now", t1]]) {
    const lab = svg("text", { x: x(t), y: H - 4, class: "axis", "text-anchor": t === t0 ? "start" : "end" });
    lab.textContent = label;
    root.append(lab);
  }
  let drawn = 0;
  series.forEach((vals, si) => {
    const pts = [];
    vals.forEach((v, i) => {
      if (v === null || v === undefined) return;
      pts.push(x(times[i]).toFixed(1) + "," + y(v).toFixed(1));
    });
    if (pts.length > 1) root.append(svg("polyline", { points: pts.join(" "), class: "s" + (si + 1) }));
    vals.forEach((v, i) => {
      if (v === null || v === undefined) return;
      const c = svg("circle", { cx: x(times[i]), cy: y(v), r: 2.2, class: "p s" + (si + 1) });
      const tip = svg("title");
      tip.textContent = new Date(times[i]).toLocaleTimeString() + ": " + fmt(v) + " " + unit;
      c.append(tip);
      root.append(c);
      drawn++;
    });
  });
  root.setAttribute("data-points", String(drawn));
  root.setAttribute("data-max", String(values.length ? Math.max(...values) : 0));
  root.setAttribute("aria-label", drawn + " points, highest " + fmt(values.length ? Math.max(...values) : 0) + " " + unit);
  el.replaceChildren(root);
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

async function loadHistory() {
  const path = "/system/function/" + encodeURIComponent(page.name) + "/history?namespace=" + encodeURIComponent(page.ns);
  let h;
  try {
    h = await api("GET", path);
  } catch (e) {
    $("fn-charts-note").textContent = e.message.startsWith("404") ? "no invocations yet" : e.message;
    for (const id of ["chart-rate", "chart-errors", "chart-latency", "chart-replicas"]) drawChart($(id), [], [[]], "");
    return;
  }
  const pts = h.points, s = h.slotSeconds;
  const times = pts.map((p) => p.t);
  $("fn-charts-note").textContent = "per " + s + " s, last point live";
  drawChart($("chart-rate"), times, [pts.map((p) => p.invocations / s)], "/s");
  drawChart($("chart-errors"), times, [pts.map((p) => p.errors / s)], "/s");
  drawChart($("chart-latency"), times, [pts.map((p) => p.p50Ms), pts.map((p) => p.p99Ms)], "ms");
  drawChart($("chart-replicas"), times, [pts.map((p) => p.replicas), pts.map((p) => p.readyReplicas)], "");
}

function annotation(a, key) {
  const found = (a.annotations || []).find((x) => x.key === key);
  return found ? found.value : undefined;
}

async function loadActivations() {
  const body = $("fn-activations");
  let list;
  try {
    list = await api("GET", "/system/function/" + encodeURIComponent(page.name) +
      "/activations?limit=30&namespace=" + encodeURIComponent(page.ns));
  } catch (e) {
    body.replaceChildren();
    const tr = document.createElement("tr");
    const td = cell("Cannot list activations: " + e.message);
    td.colSpan = 6;
    td.className = "error";
    tr.append(td);
    body.append(tr);
    return;
  }
  const frag = document.createDocumentFragment();
  if (list.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("No activation records (the gateway records OpenFaaS calls with record_every_invocation).");
    td.colSpan = 6;
    td.className = "muted";
    tr.append(td);
    frag.append(tr);
  }
  for (const a of list) {
    const tr = document.createElement("tr");
    tr.className = "activation " + (a.success ? "ok" : "error");
    const start = annotation(a, "start") || (annotation(a, "initTime") !== undefined ? "cold" : "–");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "link";
    btn.textContent = String(a.activationId).slice(0, 12);
    btn.title = "Show the record of " + a.activationId;
    btn.addEventListener("click", () => {
      const pre = $("fn-record");
      pre.hidden = false;
      pre.textContent = JSON.stringify(a, null, 2);
      pre.focus();
    });
    const rec = document.createElement("td");
    rec.append(btn);
    tr.append(cell(new Date(a.start).toLocaleTimeString()), cell(a.success ? "success" : a.status),
      cell(a.httpStatus !== undefined ? String(a.httpStatus) : (a.error || "")), cell(a.duration + " ms"), cell(String(start)), rec);
    frag.append(tr);
  }
  body.replaceChildren(frag);
}

async function loadStatus() {
  const dl = $("fn-spec");
  let st;
  try {
    st = await api("GET", "/system/function/" + encodeURIComponent(page.name) + "?namespace=" + encodeURIComponent(page.ns));
  } catch (e) {
    $("fn-state").textContent = e.message.startsWith("404") ? "not deployed" : "unknown";
    $("fn-state").className = "badge error";
    dl.replaceChildren();
    return;
  }
  const ready = st.availableReplicas > 0;
  const state = st.failure ? "failing" : ready ? "ready" : st.replicas === 0 ? "scaled to zero" : "starting";
  $("fn-state").textContent = state;
  $("fn-state").className = "badge " + (st.failure ? "error" : ready ? "ok" : "muted");
  const labels = st.labels || {};
  const scaling = Object.entries(labels).filter(([k]) => k.startsWith("com.openfaas.scale."))
    .map(([k, v]) => k.slice("com.openfaas.scale.".length) + "=" + v).join(", ");
  const res = (r) => r ? Object.entries(r).filter(([, v]) => v).map(([k, v]) => k + " " + v).join(", ") : "";
  const kv = (m) => Object.entries(m || {}).map(([k, v]) => k + "=" + v).join(", ");
  const rows = [
    ["Image", st.image], ["Namespace", st.namespace],
    ["Replicas", st.availableReplicas + " ready of " + st.replicas + " desired"],
    ["Invocations", String(st.invocationCount)], ["Process", st.envProcess || ""],
    ["Created", st.createdAt || ""], ["Labels", kv(labels)], ["Annotations", kv(st.annotations)],
    ["Constraints", (st.constraints || []).join(", ")], ["Secrets", (st.secrets || []).join(", ")],
    ["Limits", res(st.limits)], ["Requests", res(st.requests)],
    ["Scaling", scaling || "default (min 1)"],
  ];
  if (st.failure) rows.push(["Failure", st.failure.reason + " (" + st.failure.attempts + " attempts)"]);
  const frag = document.createDocumentFragment();
  for (const [k, v] of rows) {
    if (!v) continue;
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dd.dataset.field = k.toLowerCase();
    frag.append(dt, dd);
  }
  dl.replaceChildren(frag);
}

/** Streams the function's logs (NDJSON from /system/logs) into the logs panel. */
async function followLogs() {
  if (page.logs) page.logs.abort();
  const ctl = new AbortController();
  page.logs = ctl;
  const out = $("fn-logs");
  out.textContent = "";
  const params = new URLSearchParams({ name: page.name, namespace: page.ns, tail: "200",
    follow: $("fn-log-follow").checked ? "true" : "false" });
  const inst = $("fn-log-instance").value.trim();
  if (inst) params.set("instance", inst);
  let lines = [];
  const show = () => {
    if (lines.length > 1000) lines = lines.slice(-1000);
    const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.textContent = lines.join("\n");
    if (atEnd) out.scrollTop = out.scrollHeight;
  };
  try {
    const resp = await fetch("/system/logs?" + params, { signal: ctl.signal });
    if (!resp.ok) {
      out.textContent = "Cannot read logs: " + resp.status + " " + (await resp.text()).trim();
      return;
    }
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (!line.trim()) continue;
        try {
          const e = JSON.parse(line);
          lines.push((e.timestamp || "").replace("T", " ").slice(0, 23) + "  " + (e.instance || "") + "  " + e.text);
        } catch (err) {
          lines.push(line);
        }
      }
      show();
    }
  } catch (e) {
    if (e.name !== "AbortError") {
      lines.push("(log stream ended: " + e.message + ")");
      show();
    }
  }
}

function refreshPage() {
  loadStatus();
  loadHistory();
  loadActivations();
}

function leavePage() {
  if (page.timer) clearInterval(page.timer);
  if (page.logs) page.logs.abort();
  page.timer = null;
  page.logs = null;
  page.key = null;
}

function route() {
  const m = location.hash.match(/^#\/fn\/(.+)$/);
  if (!m) {
    leavePage();
    $("fn-page").hidden = true;
    $("home").hidden = false;
    refresh();
    loadWhisk();
    return;
  }
  const key = decodeURIComponent(m[1]);
  const dot = key.indexOf(".");
  leavePage();
  page.key = key;
  page.name = dot > 0 ? key.slice(0, dot) : key;
  page.ns = dot > 0 ? key.slice(dot + 1) : "";
  $("home").hidden = true;
  $("fn-page").hidden = false;
  $("fn-title").textContent = page.name + (page.ns ? "." + page.ns : "");
  $("fn-record").hidden = true;
  document.title = page.name + " · faas-rs portal";
  $("fn-back").focus();
  refreshPage();
  followLogs();
  page.timer = setInterval(() => { loadHistory(); loadActivations(); loadStatus(); }, 5000);
}

$("deploy-form").addEventListener("submit", deploy);
$("stack-form").addEventListener("submit", deployStack);
$("invoke-form").addEventListener("submit", invoke);
$("refresh-btn").addEventListener("click", refresh);
$("wsk-refresh").addEventListener("click", loadWhisk);
$("fn-refresh").addEventListener("click", refreshPage);
$("fn-log-follow").addEventListener("change", followLogs);
$("fn-log-instance").addEventListener("change", followLogs);
window.addEventListener("hashchange", route);
info();
route();

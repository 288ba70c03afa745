// faas-rs portal: plain JS over the gateway's own API.
"use strict";

const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
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

async function refresh() {
  try {
    const fns = await api("GET", "/system/functions");
    fns.sort((a, b) => a.name.localeCompare(b.name));
    const rows = $("fn-rows");
    rows.replaceChildren();
    if (fns.length === 0) {
      const tr = document.createElement("tr");
      const td = cell("No functions yet: deploy one below.");
      td.colSpan = 5;
      td.className = "muted";
      tr.append(td);
      rows.append(tr);
    }
    for (const f of fns) {
      const tr = document.createElement("tr");
      tr.dataset.name = f.name;
      tr.append(cell(f.name), cell(f.namespace), cell(f.image),
        cell(String(f.availableReplicas) + "/" + String(f.replicas)), cell(String(f.invocationCount)));
      rows.append(tr);
    }
    const select = $("invoke-fn");
    const current = select.value;
    select.replaceChildren();
    for (const f of fns) {
      const opt = document.createElement("option");
      opt.value = f.name + "." + f.namespace;
      opt.textContent = f.name + "." + f.namespace;
      select.append(opt);
    }
    if (current) select.value = current;
  } catch (e) {
    $("fn-rows").replaceChildren();
    const tr = document.createElement("tr");
    const td = cell("Cannot list functions: " + e.message);
    td.colSpan = 5;
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

$("deploy-form").addEventListener("submit", deploy);
$("invoke-form").addEventListener("submit", invoke);
$("refresh-btn").addEventListener("click", refresh);
info();
refresh();

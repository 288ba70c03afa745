//! Test harness without a cluster.
//!
//! - [`FakeApi`]: a stateful fake Kubernetes API server as a tower service, given to
//!   `kube::Client::new`. It records every request (verb, path and query, content type, JSON
//!   body), serves realistic objects and `Status` errors, plays the Deployment controller
//!   (replicas → status, pods), answers watches from a script, serves pod logs, and can be
//!   told to fail the next matching request with any status.
//! - [`FixtureServer`]: a loopback HTTP server standing in for the function pods: it serves
//!   the faas-core conformance fixtures at `/{namespace}/{name}/...`, with the environment,
//!   secrets and log sink the fake kubelet would give them, read from the objects the backend
//!   created in the [`FakeApi`].
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use faas_core::conformance::{fixtures, Behaviour};
use faas_core::{Body, BoxFunction, Context, LogSink};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower::ServiceExt;

/// One request the backend sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// `GET`, `POST`...
    pub method: String,
    /// Path and query, exactly as sent.
    pub uri: String,
    /// The `content-type` header.
    pub content_type: Option<String>,
    /// The JSON body, if any.
    pub body: Option<Value>,
}

impl Recorded {
    /// `"METHOD uri"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
}

/// What one watch request answers.
#[derive(Debug, Clone)]
pub enum WatchStep {
    /// The stream ends at once with no event (a broken watch).
    Break,
    /// An `ERROR` event with `410 Gone` (resource version too old), then the end.
    Gone,
    /// The watched Deployment becomes available (as many available replicas as desired) and a
    /// `MODIFIED` event carries it.
    BecomeReady,
}

type Key = (String, String, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    requests: Vec<Recorded>,
    rv: u64,
    auto_ready: bool,
    faults: Vec<(String, String, Value)>,
    watch_script: VecDeque<WatchStep>,
    logs: BTreeMap<(String, String), Vec<String>>,
}

/// The fake API server; clones share state.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

fn api_kind(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "deployments" => ("apps/v1", "Deployment"),
        "services" => ("v1", "Service"),
        "secrets" => ("v1", "Secret"),
        "pods" => ("v1", "Pod"),
        "namespaces" => ("v1", "Namespace"),
        "endpointslices" => ("discovery.k8s.io/v1", "EndpointSlice"),
        _ => ("v1", "Unknown"),
    }
}

/// A Kubernetes `Status` failure object.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim_end_matches('=')].as_str() == Some(v.trim_start_matches('='))
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k).is_none()
        } else {
            labels.get(term).is_some()
        }
    })
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn query_map(query: &str) -> HashMap<String, String> {
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

fn now_rfc3339() -> String {
    faas_core::spec::rfc3339::format(SystemTime::now()).replace(".000Z", "Z")
}

impl FakeApi {
    /// An empty fake; Deployments become available as soon as they have replicas.
    pub fn new() -> Self {
        let f = FakeApi::default();
        f.set_auto_ready(true);
        f
    }

    /// A `kube::Client` over this fake (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        let fake = self.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.handle(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether Deployments become available as soon as they have replicas (default true).
    pub fn set_auto_ready(&self, on: bool) {
        self.st().auto_ready = on;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.st().requests.clone()
    }

    /// Every request so far, clearing the record.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.st().requests)
    }

    /// `"METHOD uri"` of every request so far, clearing the record.
    pub fn take_lines(&self) -> Vec<String> {
        self.take_requests().iter().map(Recorded::line).collect()
    }

    /// The next request with `method` to exactly `path` answers `status` (a `Status` object).
    pub fn fail_next(&self, method: &str, path: &str, status: Value) {
        self.st().faults.push((method.to_string(), path.to_string(), status));
    }

    /// Scripts the answers of the next watch requests.
    pub fn script_watch(&self, steps: impl IntoIterator<Item = WatchStep>) {
        self.st().watch_script.extend(steps);
    }

    /// Stores an object as the API server would have it (resource version set).
    pub fn insert(&self, resource: &str, namespace: &str, mut obj: Value) {
        let mut st = self.st();
        st.rv += 1;
        let rv = st.rv.to_string();
        let (api_version, kind) = api_kind(resource);
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        obj["metadata"]["resourceVersion"] = json!(rv);
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        st.objects.insert((resource.to_string(), namespace.to_string(), name), obj);
    }

    /// A stored object.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.st()
            .objects
            .get(&(resource.to_string(), namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Sets a Deployment's available replicas.
    pub fn set_available(&self, namespace: &str, name: &str, n: i64) {
        let mut st = self.st();
        let key = ("deployments".to_string(), namespace.to_string(), name.to_string());
        if let Some(d) = st.objects.get_mut(&key) {
            d["status"]["availableReplicas"] = json!(n);
            d["status"]["readyReplicas"] = json!(n);
        }
    }

    /// Appends a log line (timestamped now) to a pod's container log.
    pub fn append_log(&self, namespace: &str, pod: &str, text: &str) {
        let ts = faas_core::spec::rfc3339::format(SystemTime::now());
        self.append_log_at(namespace, pod, &ts, text);
    }

    /// Appends a log line with a given RFC 3339 timestamp.
    pub fn append_log_at(&self, namespace: &str, pod: &str, ts: &str, text: &str) {
        self.st()
            .logs
            .entry((namespace.to_string(), pod.to_string()))
            .or_default()
            .push(format!("{ts} {text}"));
    }

    /// The Deployment controller and kubelet, simplified: status follows `spec.replicas`
    /// (available at once when auto-ready), and pods `NAME-pod-I` exist for the replicas.
    fn reconcile(st: &mut State, ns: &str, name: &str) {
        let key = ("deployments".to_string(), ns.to_string(), name.to_string());
        let Some(d) = st.objects.get_mut(&key) else {
            st.objects.retain(|(r, n, _), o| {
                !(r == "pods" && n == ns && o["metadata"]["labels"]["faas_function"] == json!(name))
            });
            return;
        };
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let available = if st.auto_ready {
            replicas
        } else {
            d["status"]["availableReplicas"].as_i64().unwrap_or(0).min(replicas)
        };
        d["status"] = json!({
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": available,
            "availableReplicas": available,
        });
        if available == 0 {
            d["status"].as_object_mut().expect("object").remove("availableReplicas");
            d["status"].as_object_mut().expect("object").remove("readyReplicas");
        }
        let ts = now_rfc3339();
        st.objects.retain(|(r, n, pod), o| {
            !(r == "pods"
                && n == ns
                && o["metadata"]["labels"]["faas_function"] == json!(name)
                && pod_index(pod) >= available)
        });
        for i in 0..available {
            let pod = format!("{name}-pod-{i}");
            let k = ("pods".to_string(), ns.to_string(), pod.clone());
            st.objects.entry(k).or_insert_with(|| {
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": ns, "resourceVersion": "1",
                                 "creationTimestamp": ts,
                                 "labels": {"faas_function": name}},
                    "spec": {"containers": [{"name": name}]},
                    "status": {"phase": "Running"}
                })
            });
        }
    }

    async fn handle(&self, req: http::Request<kube::client::Body>) -> http::Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let body: Option<Value> =
            if bytes.is_empty() { None } else { serde_json::from_slice(&bytes).ok() };
        let method = parts.method.as_str().to_string();
        let uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let content_type =
            parts.headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut st = self.st();
        st.requests.push(Recorded {
            method: method.clone(),
            uri: uri.clone(),
            content_type,
            body: body.clone(),
        });
        let path = parts.uri.path().to_string();
        if let Some(i) = st.faults.iter().position(|(m, p, _)| *m == method && *p == path) {
            let (_, _, s) = st.faults.remove(i);
            let code = s["code"].as_u64().unwrap_or(500) as u16;
            return respond(code, &s);
        }
        let query = query_map(parts.uri.query().unwrap_or(""));
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        // (resource, namespace, name, subresource)
        let route: Option<(&str, &str, Option<&str>, Option<&str>)> = match segs.as_slice() {
            ["api", "v1", "namespaces"] => Some(("namespaces", "", None, None)),
            ["api", "v1", "namespaces", ns, res, rest @ ..]
            | ["apis", _, _, "namespaces", ns, res, rest @ ..] => {
                Some((res, ns, rest.first().copied(), rest.get(1).copied()))
            }
            _ => None,
        };
        let Some((res, ns, name, sub)) = route else {
            return respond(
                404,
                &status(404, "NotFound", "the server could not find the requested resource"),
            );
        };
        let (api_version, kind) = api_kind(res);
        let key = |n: &str| (res.to_string(), ns.to_string(), n.to_string());
        let not_found = |n: &str| {
            let group_res = if api_version.contains('/') {
                format!("{res}.{}", api_version.split('/').next().unwrap_or(""))
            } else {
                res.to_string()
            };
            respond(404, &status(404, "NotFound", &format!("{group_res} \"{n}\" not found")))
        };
        match (method.as_str(), name, sub) {
            ("GET", None, None) if query.get("watch").map(String::as_str) == Some("true") => {
                let target = query
                    .get("fieldSelector")
                    .and_then(|f| f.strip_prefix("metadata.name="))
                    .unwrap_or_default()
                    .to_string();
                let step = st.watch_script.pop_front().unwrap_or(WatchStep::BecomeReady);
                let k = key(&target);
                let event = match step {
                    WatchStep::Break => String::new(),
                    WatchStep::Gone => {
                        let s = status(410, "Expired", "too old resource version");
                        format!("{}\n", json!({"type": "ERROR", "object": s}))
                    }
                    WatchStep::BecomeReady => {
                        st.rv += 1;
                        let rv = st.rv.to_string();
                        match st.objects.get_mut(&k) {
                            Some(d) => {
                                let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1).max(1);
                                d["status"]["availableReplicas"] = json!(replicas);
                                d["status"]["readyReplicas"] = json!(replicas);
                                d["metadata"]["resourceVersion"] = json!(rv);
                                let ev = json!({"type": "MODIFIED", "object": d.clone()});
                                format!("{ev}\n")
                            }
                            None => String::new(),
                        }
                    }
                };
                respond_raw(200, event.into_bytes())
            }
            ("GET", None, None) => {
                let selector = query.get("labelSelector").cloned().unwrap_or_default();
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((r, n, _), o)| {
                        r == res && (ns.is_empty() || n == ns) && labels_match(o, &selector)
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                let rv = st.rv.to_string();
                respond(
                    200,
                    &json!({
                        "apiVersion": api_version, "kind": format!("{kind}List"),
                        "metadata": {"resourceVersion": rv}, "items": items
                    }),
                )
            }
            ("POST", None, None) => {
                let Some(mut obj) = body else {
                    return respond(400, &status(400, "BadRequest", "no body"));
                };
                let n = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
                if st.objects.contains_key(&key(&n)) {
                    let group_res = if api_version.contains('/') {
                        format!("{res}.{}", api_version.split('/').next().unwrap_or(""))
                    } else {
                        res.to_string()
                    };
                    let mut s = status(
                        409,
                        "AlreadyExists",
                        &format!("{group_res} \"{n}\" already exists"),
                    );
                    s["details"] = json!({"name": n, "kind": res});
                    return respond(409, &s);
                }
                st.rv += 1;
                obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                obj["metadata"]["uid"] = json!(format!("uid-{}", st.rv));
                obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
                obj["metadata"]["generation"] = json!(1);
                st.objects.insert(key(&n), obj);
                if res == "deployments" {
                    Self::reconcile(&mut st, ns, &n);
                }
                let stored = st.objects.get(&key(&n)).cloned().unwrap_or_default();
                respond(201, &stored)
            }
            ("GET", Some(n), None) => match st.objects.get(&key(n)) {
                Some(o) => respond(200, o),
                None => not_found(n),
            },
            ("PUT", Some(n), None) => {
                let Some(mut obj) = body else {
                    return respond(400, &status(400, "BadRequest", "no body"));
                };
                let Some(existing) = st.objects.get(&key(n)).cloned() else {
                    return not_found(n);
                };
                let sent_rv = obj["metadata"]["resourceVersion"].as_str().map(str::to_string);
                if let Some(rv) = sent_rv {
                    if Some(rv.as_str()) != existing["metadata"]["resourceVersion"].as_str() {
                        return respond(409, &status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"));
                    }
                }
                st.rv += 1;
                obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                obj["metadata"]["uid"] = existing["metadata"]["uid"].clone();
                obj["metadata"]["creationTimestamp"] =
                    existing["metadata"]["creationTimestamp"].clone();
                if res == "deployments" {
                    obj["status"] = existing["status"].clone();
                }
                st.objects.insert(key(n), obj);
                if res == "deployments" {
                    Self::reconcile(&mut st, ns, n);
                }
                respond(200, &st.objects[&key(n)].clone())
            }
            ("PATCH", Some(n), None) => {
                let Some(patch) = body else {
                    return respond(400, &status(400, "BadRequest", "no body"));
                };
                let Some(obj) = st.objects.get_mut(&key(n)) else {
                    return not_found(n);
                };
                merge_patch(obj, &patch);
                st.rv += 1;
                let rv = st.rv.to_string();
                let obj = st.objects.get_mut(&key(n)).expect("present");
                obj["metadata"]["resourceVersion"] = json!(rv);
                let obj = obj.clone();
                respond(200, &obj)
            }
            ("PATCH", Some(n), Some("scale")) => {
                let Some(patch) = body else {
                    return respond(400, &status(400, "BadRequest", "no body"));
                };
                let Some(replicas) = patch["spec"]["replicas"].as_i64() else {
                    return respond(422, &status(422, "Invalid", "spec.replicas required"));
                };
                let Some(d) = st.objects.get_mut(&key(n)) else {
                    return not_found(n);
                };
                d["spec"]["replicas"] = json!(replicas);
                st.rv += 1;
                let rv = st.rv.to_string();
                st.objects.get_mut(&key(n)).expect("present")["metadata"]["resourceVersion"] =
                    json!(rv);
                Self::reconcile(&mut st, ns, n);
                let d = &st.objects[&key(n)];
                respond(
                    200,
                    &json!({
                        "apiVersion": "autoscaling/v1", "kind": "Scale",
                        "metadata": {"name": n, "namespace": ns, "resourceVersion": d["metadata"]["resourceVersion"]},
                        "spec": {"replicas": replicas},
                        "status": {"replicas": d["status"]["replicas"], "selector": format!("faas_function={n}")}
                    }),
                )
            }
            ("DELETE", Some(n), None) => match st.objects.remove(&key(n)) {
                Some(o) => {
                    if res == "deployments" {
                        Self::reconcile(&mut st, ns, n);
                    }
                    respond(200, &o)
                }
                None => not_found(n),
            },
            ("GET", Some(pod), Some("log")) if res == "pods" => {
                if !st.objects.contains_key(&key(pod)) {
                    return not_found(pod);
                }
                let mut lines =
                    st.logs.get(&(ns.to_string(), pod.to_string())).cloned().unwrap_or_default();
                if let Some(n) = query.get("tailLines").and_then(|v| v.parse::<usize>().ok()) {
                    let skip = lines.len().saturating_sub(n);
                    lines.drain(..skip);
                }
                if query.get("timestamps").map(String::as_str) != Some("true") {
                    for l in &mut lines {
                        if let Some((_, text)) = l.split_once(' ') {
                            *l = text.to_string();
                        }
                    }
                }
                let mut text = lines.join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                respond_raw(200, text.into_bytes())
            }
            _ => respond(405, &status(405, "MethodNotAllowed", &format!("{method} {path}"))),
        }
    }
}

fn pod_index(pod: &str) -> i64 {
    pod.rsplit('-').next().and_then(|i| i.parse().ok()).unwrap_or(i64::MAX)
}

fn respond(code: u16, body: &Value) -> http::Response<Full<Bytes>> {
    let mut r = respond_raw(code, serde_json::to_vec(body).expect("json"));
    r.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    r
}

fn respond_raw(code: u16, body: Vec<u8>) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = http::StatusCode::from_u16(code).expect("status");
    r
}

/// The loopback server standing in for function pods; see the module docs.
pub struct FixtureServer {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The behaviour of the conformance image `image` (`conformance/echo`...).
fn behaviour_of(image: &str) -> Option<Behaviour> {
    Some(match image {
        "conformance/echo" => Behaviour::Echo,
        "conformance/env" => Behaviour::Env,
        "conformance/sleep" => Behaviour::Sleep,
        "conformance/crash" => Behaviour::Crash,
        "conformance/log" => Behaviour::Log,
        _ => return None,
    })
}

fn plain(code: u16, text: &str) -> http::Response<Body> {
    let mut r = http::Response::new(Body::from(text.to_string()));
    *r.status_mut() = http::StatusCode::from_u16(code).expect("status");
    r
}

impl FixtureServer {
    /// Starts the server on 127.0.0.1 over `fake`'s objects.
    pub async fn start(fake: FakeApi) -> FixtureServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        let handlers: Arc<HashMap<&'static str, BoxFunction>> = Arc::new(
            [
                ("conformance/echo", fixtures::function(Behaviour::Echo)),
                ("conformance/env", fixtures::function(Behaviour::Env)),
                ("conformance/sleep", fixtures::function(Behaviour::Sleep)),
                ("conformance/crash", fixtures::function(Behaviour::Crash)),
                ("conformance/log", fixtures::function(Behaviour::Log)),
            ]
            .into_iter()
            .collect(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let fake = fake.clone();
                let handlers = handlers.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let fake = fake.clone();
                            let handlers = handlers.clone();
                            async move { Ok::<_, Infallible>(Self::serve(fake, handlers, req).await) }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        FixtureServer { addr, task }
    }

    /// The invoke base URL template pointing at this server.
    pub fn base_url(&self) -> String {
        format!("http://{}/{{namespace}}/{{name}}", self.addr)
    }

    async fn serve(
        fake: FakeApi,
        handlers: Arc<HashMap<&'static str, BoxFunction>>,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<Body> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let mut segs = path.trim_start_matches('/').splitn(3, '/');
        let (ns, name) =
            (segs.next().unwrap_or("").to_string(), segs.next().unwrap_or("").to_string());
        let rest = format!("/{}", segs.next().unwrap_or(""));
        let Some(d) = fake.get("deployments", &ns, &name) else {
            return plain(404, "no such deployment");
        };
        if d["status"]["availableReplicas"].as_i64().unwrap_or(0) < 1 {
            return plain(503, "no available replica");
        }
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        let image = c["image"].as_str().unwrap_or_default();
        let Some(handler) = behaviour_of(image).and_then(|_| handlers.get(image)).cloned() else {
            return plain(500, &format!("unknown image {image}"));
        };
        let env: BTreeMap<String, String> = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or("").to_string(),
                    e["value"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        // Secrets as the kubelet would project them: every key of every named Secret.
        let mut secrets = BTreeMap::new();
        for v in d["spec"]["template"]["spec"]["volumes"].as_array().into_iter().flatten() {
            for src in v["projected"]["sources"].as_array().into_iter().flatten() {
                let Some(sname) = src["secret"]["name"].as_str() else { continue };
                let Some(s) = fake.get("secrets", &ns, sname) else { continue };
                for (k, b64) in s["data"].as_object().into_iter().flatten() {
                    let bytes: k8s_openapi::ByteString =
                        serde_json::from_value(b64.clone()).expect("base64 secret data");
                    secrets.insert(k.clone(), Bytes::from(bytes.0));
                }
            }
        }
        let pod = format!("{name}-pod-0");
        let logger = {
            let (fake, ns, pod) = (fake.clone(), ns.clone(), pod.clone());
            LogSink::new(move |line| fake.append_log(&ns, &pod, line))
        };
        let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        parts.uri = format!("{rest}{query}").parse().expect("uri");
        parts.extensions.insert(Context {
            instance: Some(pod),
            env: Arc::new(env),
            secrets: Arc::new(secrets),
            logger,
            ..Default::default()
        });
        let req = http::Request::from_parts(parts, Body::new(body));
        match handler.oneshot(req).await {
            Ok(r) => r,
            Err(e) => plain(500, &e.to_string()),
        }
    }
}

/// Polls `check` every 20 ms until it is true, panicking after `bound`.
pub async fn eventually(what: &str, bound: Duration, mut check: impl FnMut() -> bool) {
    let r = tokio::time::timeout(bound, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "timed out after {bound:?} waiting for {what}");
}

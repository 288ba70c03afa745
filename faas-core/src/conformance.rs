//! The conformance suite every backend runs (feature `conformance`).
//!
//! Each case is an async function taking the backend under test and a [`Workload`], the
//! backend's way of supplying test functions that behave as the [`Behaviour`] protocol below
//! says. A backend's tests call each case (or [`run_all`]); a failing case panics with a
//! message saying what was expected.
//!
//! # The behaviour protocol
//!
//! Every backend's workload must implement these behaviours exactly, whatever runs them
//! (a Rust handler, a process behind the watchdog, a container):
//!
//! - [`Behaviour::Echo`]: answers 200; the body is the request body unchanged; headers
//!   `x-echo-method` (the method), `x-echo-path` (the path suffix, `/` when empty),
//!   `x-echo-query` (the raw query, empty when none), and for each request header whose name
//!   starts with `x-test-`, the same value under `x-echo-<name>` (e.g. `x-echo-x-test-a`).
//! - [`Behaviour::Env`]: `?env=NAME` answers 200 with the environment variable's value (404 if
//!   unset); `?secret=NAME` answers 200 with the secret's bytes (404 if absent).
//! - [`Behaviour::Sleep`]: sleeps `?ms=N` milliseconds (default 100), then answers 200
//!   `slept` with headers `x-instance` (an id unique to the instance) and `x-max-inflight`
//!   (the most requests this instance has had in flight at once, this one included).
//! - [`Behaviour::Crash`]: `?crash=1` makes the instance die mid-request (a panic in process,
//!   an abort of the process or container); without it, answers 200 `alive`.
//! - [`Behaviour::Log`]: writes the request body as one log line (stdout), answers 200
//!   `logged`.
//!
//! Header names are compared in lowercase.
//!
//! # Running the suite
//!
//! ```no_run
//! use faas_core::conformance::{self, MemoryWorkload};
//! use faas_core::MemoryInvoker;
//!
//! #[tokio::test]
//! async fn conformance() {
//!     let invoker = MemoryInvoker::new();
//!     let workload = MemoryWorkload::new(&invoker);
//!     conformance::run_all(&invoker, &workload).await;
//! }
//! ```
//!
//! Each case deploys functions named `<prefix>-<case>` ([`Workload::prefix`]), removes any
//! leftover of an earlier failed run first, and removes what it created at the end, so a
//! real backend is left clean. Waits are polls bounded by [`Workload::start_timeout`].

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::body::Body;
use crate::error::{DeveloperErrorKind, Error};
use crate::function::Response;
use crate::invocation::{FunctionRef, Invocation};
use crate::invoker::{Backend, Secret};
use crate::prelude::*;
use crate::spec::{labels, FunctionSpec};

/// A test function behaviour; see the module docs for the exact protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Behaviour {
    /// Echo method, path, query, `x-test-*` headers and body.
    Echo,
    /// Report environment variables and secrets.
    Env,
    /// Sleep, then report instance id and peak concurrency.
    Sleep,
    /// Crash on request.
    Crash,
    /// Write a log line.
    Log,
}

impl Behaviour {
    /// Every behaviour, in declaration order.
    pub const ALL: [Behaviour; 5] =
        [Behaviour::Echo, Behaviour::Env, Behaviour::Sleep, Behaviour::Crash, Behaviour::Log];

    /// The behaviour's lowercase name (`echo`, `env`, `sleep`, `crash`, `log`): what a fixture
    /// outside this crate is told to implement. A workload maps behaviours through this, never
    /// with a catch-all, so a behaviour added here cannot silently become another one.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Echo => "echo",
            Behaviour::Env => "env",
            Behaviour::Sleep => "sleep",
            Behaviour::Crash => "crash",
            Behaviour::Log => "log",
        }
    }
}

/// How a backend supplies test functions to the suite.
pub trait Workload: Send + Sync {
    /// A deployable spec for a function called `name` that behaves as `behaviour`.
    /// The suite adds env vars, secrets, timeouts, limits and scaling to it as each case needs.
    fn spec(&self, name: &str, behaviour: Behaviour) -> FunctionSpec;

    /// How long this backend may take to start an instance (bounds the suite's waits).
    fn start_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// The prefix of function and secret names the suite creates (default `conf`); a DNS-1123
    /// label of at most 30 characters.
    fn prefix(&self) -> &str {
        "conf"
    }
}

/// Handlers implementing every [`Behaviour`] exactly as the protocol says, as in-process
/// [`Function`](crate::Function)s. Gateway tests use them too.
pub mod fixtures {
    use std::borrow::Cow;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::body::Body;
    use crate::error::Error;
    use crate::function::{boxed, handler_fn, BoxFunction, Request, Response};
    use crate::invocation::Context;

    use super::Behaviour;

    /// Largest request body the fixtures read (64 MiB).
    pub const BODY_LIMIT: usize = 64 << 20;

    /// The first value of query parameter `key`, decoded as a form (`+` is a space, `%XX`
    /// escapes decoded), as the process backend's fixture decodes it.
    pub fn query_param<'a>(req: &'a Request, key: &str) -> Option<Cow<'a, str>> {
        form_urlencoded::parse(req.uri().query()?.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn text(status: u16, body: impl Into<Body>) -> Response {
        let mut resp = http::Response::new(body.into());
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
        resp
    }

    /// The handler for `behaviour`.
    pub fn function(behaviour: Behaviour) -> BoxFunction {
        match behaviour {
            Behaviour::Echo => echo(),
            Behaviour::Env => env(),
            Behaviour::Sleep => sleep(),
            Behaviour::Crash => crash(),
            Behaviour::Log => log(),
        }
    }

    /// [`Behaviour::Echo`].
    pub fn echo() -> BoxFunction {
        boxed(handler_fn(|req: Request, _ctx: Context| async move {
            let (parts, body) = req.into_parts();
            let body = body.collect_limited(BODY_LIMIT).await?;
            let mut resp = http::Response::new(Body::from(body));
            let h = resp.headers_mut();
            let val = |s: &str| {
                http::HeaderValue::from_str(s)
                    .map_err(|e| Error::invalid("request", format!("unechoable value: {e}")))
            };
            h.insert("x-echo-method", val(parts.method.as_str())?);
            let path = parts.uri.path();
            h.insert("x-echo-path", val(if path.is_empty() { "/" } else { path })?);
            h.insert("x-echo-query", val(parts.uri.query().unwrap_or(""))?);
            for (name, value) in &parts.headers {
                if name.as_str().starts_with("x-test-") {
                    let echoed = format!("x-echo-{}", name.as_str());
                    if let Ok(n) = http::HeaderName::from_bytes(echoed.as_bytes()) {
                        h.append(n, value.clone());
                    }
                }
            }
            Ok::<_, Error>(resp)
        }))
    }

    /// [`Behaviour::Env`].
    pub fn env() -> BoxFunction {
        boxed(handler_fn(|req: Request, ctx: Context| async move {
            if let Some(name) = query_param(&req, "env") {
                return Ok::<_, Error>(match ctx.env(&name) {
                    Some(v) => text(200, v.to_string()),
                    None => text(404, format!("env {name} is not set")),
                });
            }
            if let Some(name) = query_param(&req, "secret") {
                return Ok(match ctx.secret(&name) {
                    Some(v) => text(200, v.clone()),
                    None => text(404, format!("secret {name} is absent")),
                });
            }
            Ok(text(400, "ask ?env=NAME or ?secret=NAME"))
        }))
    }

    #[derive(Default)]
    struct Inflight {
        now: u32,
        peak: u32,
    }

    /// [`Behaviour::Sleep`]. Each call of this function makes a handler with its own
    /// per-instance counters (keyed by [`Context::instance`]).
    pub fn sleep() -> BoxFunction {
        let counters: Arc<Mutex<HashMap<String, Inflight>>> = Arc::default();
        boxed(handler_fn(move |req: Request, ctx: Context| {
            let counters = counters.clone();
            async move {
                let ms = query_param(&req, "ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(100);
                let instance = ctx.instance.clone().unwrap_or_default();
                let peak = {
                    let mut c = counters.lock().unwrap_or_else(|e| e.into_inner());
                    let e = c.entry(instance.clone()).or_default();
                    e.now += 1;
                    e.peak = e.peak.max(e.now);
                    e.peak
                };
                // Decrement even when the invocation is cancelled (timeout).
                struct Done(Arc<Mutex<HashMap<String, Inflight>>>, String);
                impl Drop for Done {
                    fn drop(&mut self) {
                        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(e) = c.get_mut(&self.1) {
                            e.now = e.now.saturating_sub(1);
                        }
                    }
                }
                let done = Done(counters.clone(), instance.clone());
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let peak = {
                    let c = counters.lock().unwrap_or_else(|e| e.into_inner());
                    c.get(&instance).map(|e| e.peak).unwrap_or(peak)
                };
                drop(done);
                let mut resp = text(200, "slept");
                let h = resp.headers_mut();
                if let Ok(v) = http::HeaderValue::from_str(&instance) {
                    h.insert("x-instance", v);
                }
                h.insert("x-max-inflight", http::HeaderValue::from(peak));
                Ok::<_, Error>(resp)
            }
        }))
    }

    /// [`Behaviour::Crash`]: `?crash=1` panics, which the in-memory backend reports as a
    /// crash and answers by replacing the instance.
    pub fn crash() -> BoxFunction {
        boxed(handler_fn(|req: Request, _ctx: Context| async move {
            if query_param(&req, "crash").as_deref() == Some("1") {
                panic!("crash requested by the conformance suite");
            }
            Ok::<_, Error>("alive")
        }))
    }

    /// [`Behaviour::Log`].
    pub fn log() -> BoxFunction {
        boxed(handler_fn(|req: Request, ctx: Context| async move {
            let body = req.into_body().collect_limited(BODY_LIMIT).await?;
            ctx.log(String::from_utf8_lossy(&body));
            Ok::<_, Error>("logged")
        }))
    }
}

/// The in-memory backend's [`Workload`]: the [`fixtures`] registered into a
/// [`MemoryInvoker`](crate::MemoryInvoker) under the images [`MemoryWorkload::image`] names.
#[derive(Debug, Clone)]
pub struct MemoryWorkload {
    start_timeout: Duration,
}

impl MemoryWorkload {
    /// Registers every fixture into `invoker`.
    pub fn new(invoker: &crate::MemoryInvoker) -> Self {
        for b in Behaviour::ALL {
            invoker.register(Self::image(b), fixtures::function(b));
        }
        MemoryWorkload { start_timeout: Duration::from_secs(10) }
    }

    /// The image a behaviour's fixture is registered under (`conformance/echo`...).
    pub fn image(behaviour: Behaviour) -> &'static str {
        match behaviour {
            Behaviour::Echo => "conformance/echo",
            Behaviour::Env => "conformance/env",
            Behaviour::Sleep => "conformance/sleep",
            Behaviour::Crash => "conformance/crash",
            Behaviour::Log => "conformance/log",
        }
    }
}

impl Workload for MemoryWorkload {
    fn spec(&self, name: &str, behaviour: Behaviour) -> FunctionSpec {
        FunctionSpec::new(name, Self::image(behaviour))
    }

    fn start_timeout(&self) -> Duration {
        self.start_timeout
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

fn case_name(w: &dyn Workload, case: &str) -> String {
    format!("{}-{case}", w.prefix())
}

/// Polls `check` every 50 ms until it gives `Some`, panicking after `bound`.
async fn poll<T, F, Fut>(what: &str, bound: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let result = tokio::time::timeout(bound, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    match result {
        Ok(v) => v,
        Err(_) => panic!("conformance: timed out after {bound:?} waiting for {what}"),
    }
}

/// Removes a function left by an earlier, failed run of a case (against a real backend), so
/// the case starts clean. Absent is the normal answer; a leftover is removed and reported on
/// stderr; any other answer fails the case, and so does a leftover that is still there after
/// its removal.
async fn remove_leftover(inv: &dyn Backend, f: &FunctionRef) {
    match inv.remove(f).await {
        Err(Error::NotFound { .. }) => return,
        Ok(()) => eprintln!("conformance: removed {f}, left behind by an earlier run"),
        Err(e) => panic!("conformance: removing a leftover {f} failed: {e}"),
    }
    expect_not_found(&format!("status of {f} after removing a leftover"), inv.status(f).await);
}

/// Removes a secret left by an earlier, failed run (see [`remove_leftover`]).
async fn remove_leftover_secret(inv: &dyn Backend, namespace: &str, name: &str) {
    match inv.remove_secret(namespace, name).await {
        Err(Error::NotFound { .. }) => {}
        Ok(()) => {
            eprintln!("conformance: removed secret {namespace}/{name}, left by an earlier run")
        }
        Err(e) => panic!("conformance: removing a leftover secret {namespace}/{name} failed: {e}"),
    }
}

/// Deploys `spec` after removing a leftover of the same name; panics on failure.
async fn fresh_deploy(inv: &dyn Backend, spec: FunctionSpec) -> FunctionRef {
    let f = spec.function_ref();
    remove_leftover(inv, &f).await;
    if let Err(e) = inv.deploy(spec).await {
        panic!("conformance: deploying {f} failed: {e}");
    }
    f
}

async fn wait_available(inv: &dyn Backend, w: &dyn Workload, f: &FunctionRef) {
    poll(&format!("{f} to have an available replica"), w.start_timeout(), || async {
        match inv.status(f).await {
            Ok(s) if s.available_replicas >= 1 => Some(()),
            _ => None,
        }
    })
    .await
}

async fn cleanup(inv: &dyn Backend, f: &FunctionRef) {
    if let Err(e) = inv.remove(f).await {
        panic!("conformance: removing {f} at the end of the case failed: {e}");
    }
}

async fn read_body(resp: Response) -> Bytes {
    match resp.into_body().collect_bytes().await {
        Ok(b) => b,
        Err(e) => panic!("conformance: reading a response body failed: {e}"),
    }
}

fn header<'a>(resp: &'a Response, name: &str) -> &'a str {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| {
        panic!("conformance: response lacks header {name}; headers: {:?}", resp.headers())
    })
}

fn request(
    f: &FunctionRef,
    method: http::Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Invocation {
    let mut req = http::Request::new(body.into());
    *req.method_mut() = method;
    *req.uri_mut() = uri.parse().expect("conformance: bad test URI");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(v).expect("header value"),
        );
    }
    Invocation::new(f.clone(), req)
}

async fn invoke_ok(inv: &dyn Backend, invocation: Invocation) -> Response {
    let f = invocation.function.clone();
    let uri = invocation.request.uri().clone();
    match inv.invoke(invocation).await {
        Ok(r) => r,
        Err(e) => panic!("conformance: invoking {f} {uri} failed: {e}"),
    }
}

/// Invokes `GET uri` and returns (status, body).
async fn get(inv: &dyn Backend, f: &FunctionRef, uri: &str) -> (u16, Bytes) {
    let resp = invoke_ok(inv, request(f, http::Method::GET, uri, &[], Body::empty())).await;
    let status = resp.status().as_u16();
    (status, read_body(resp).await)
}

fn expect_invalid<T: std::fmt::Debug>(what: &str, r: Result<T, Error>, field: &str) {
    match r {
        Err(Error::InvalidSpec { field: got, .. }) if got == field => {}
        other => {
            panic!("conformance: {what}: expected InvalidSpec naming {field:?}, got {other:?}")
        }
    }
}

fn expect_not_found<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::NotFound { .. }) => {}
        other => panic!("conformance: {what}: expected NotFound, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Cases

/// Deploy, list, status, update, invoke, remove; then the function is gone. Also checks
/// `info` and that the function's namespace is listed by `namespaces`.
pub async fn deploy_round_trip(inv: &dyn Backend, w: &dyn Workload) {
    let name = case_name(w, "round-trip");
    let spec = w
        .spec(&name, Behaviour::Echo)
        .env("CONF_A", "1")
        .label("conformance", "yes")
        .label("com.openfaas.scale.min", "1");
    let image = spec.image.clone();
    let f = fresh_deploy(inv, spec.clone()).await;
    assert!(!inv.info().provider.is_empty(), "conformance: info().provider is empty");
    let namespaces = inv.namespaces().await.expect("conformance: namespaces() failed");
    assert!(
        namespaces.contains(&f.namespace),
        "conformance: namespaces() {namespaces:?} lacks {}",
        f.namespace
    );

    let list = inv.list(&f.namespace).await.expect("conformance: list failed");
    let listed = list.iter().find(|s| s.name == name);
    let listed = listed.unwrap_or_else(|| panic!("conformance: list lacks {name}: {list:?}"));
    assert_eq!(listed.image, image, "conformance: listed image");
    assert_eq!(listed.namespace, f.namespace, "conformance: listed namespace");

    let st = inv.status(&f).await.expect("conformance: status failed");
    assert_eq!(st.name, name, "conformance: status name");
    assert_eq!(st.namespace, f.namespace, "conformance: status namespace");
    assert_eq!(st.env_vars.get("CONF_A").map(String::as_str), Some("1"), "conformance: envVars");
    assert_eq!(
        st.labels.get("conformance").map(String::as_str),
        Some("yes"),
        "conformance: labels"
    );
    assert!(st.created_at.is_some(), "conformance: status lacks createdAt");

    inv.update(spec.env("CONF_A", "2")).await.expect("conformance: update failed");
    let st = inv.status(&f).await.expect("conformance: status after update failed");
    assert_eq!(
        st.env_vars.get("CONF_A").map(String::as_str),
        Some("2"),
        "conformance: envVars after update"
    );
    let g = poll(&format!("{f} to answer after update"), w.start_timeout(), || async {
        inv.invoke(Invocation::post(f.clone(), "ping")).await.ok()
    })
    .await;
    assert_eq!(read_body(g).await, "ping", "conformance: echo after update");

    cleanup(inv, &f).await;
    expect_not_found("status after remove", inv.status(&f).await);
    let list = inv.list(&f.namespace).await.expect("conformance: list after remove failed");
    assert!(!list.iter().any(|s| s.name == name), "conformance: {name} still listed after remove");
    expect_not_found("remove twice", inv.remove(&f).await);
}

/// Invalid specs are rejected with [`Error::InvalidSpec`] naming the field, at deploy and at
/// update.
pub async fn invalid_specs_rejected(inv: &dyn Backend, w: &dyn Workload) {
    let name = case_name(w, "invalid");
    let base = w.spec(&name, Behaviour::Echo);
    remove_leftover(inv, &base.function_ref()).await;
    type Mutation = fn(&mut FunctionSpec, &str);
    let cases: Vec<(Mutation, &str)> = vec![
        (|s, _| s.name = "Bad_Name".into(), "service"),
        (|s, _| s.image = String::new(), "image"),
        (|s, _| s.namespace = Some("UPPER".into()), "namespace"),
        (
            |s, _| {
                s.limits = Some(crate::spec::Resources { memory: Some("12Q".into()), cpu: None })
            },
            "limits.memory",
        ),
        (|s, _| s.constraints = vec!["==".into()], "constraints[0]"),
        (
            |s, _| {
                s.labels.insert(labels::SCALE_MIN.into(), "many".into());
            },
            "labels.com.openfaas.scale.min",
        ),
        (|s, _| s.timeout = Some(Duration::ZERO), "timeout"),
        (|s, n| s.secrets = vec![format!("{n}-no-such-secret")], "secrets[0]"),
    ];
    let ns = base.namespace_or_default().to_string();
    for (mutate, field) in &cases {
        let mut spec = base.clone();
        mutate(&mut spec, &name);
        let refused = spec.name.clone();
        expect_invalid(&format!("deploy with bad {field}"), inv.deploy(spec).await, field);
        // A refused deploy leaves nothing behind: no function, listed or not.
        expect_not_found(
            &format!("status after the deploy with bad {field} was refused"),
            inv.status(&base.function_ref()).await,
        );
        let list = inv.list(&ns).await.expect("conformance: list failed");
        assert!(
            !list.iter().any(|s| s.name == name || s.name == refused),
            "conformance: the refused deploy with bad {field} left a function behind: {list:?}"
        );
    }
    let f = fresh_deploy(inv, base.clone()).await;
    let mut bad = base.clone();
    bad.constraints = vec!["==".into()];
    expect_invalid("update with bad constraints", inv.update(bad).await, "constraints[0]");
    let st = inv.status(&f).await.expect("conformance: status after rejected update");
    assert!(st.constraints.is_empty(), "conformance: a rejected update changed the function");
    let list = inv.list(&ns).await.expect("conformance: list failed");
    let copies = list.iter().filter(|s| s.name == name).count();
    assert_eq!(copies, 1, "conformance: {name} listed {copies} times after a rejected update");
    cleanup(inv, &f).await;
}

/// Deploying a function twice gives [`Error::AlreadyExists`].
pub async fn duplicate_deploy_rejected(inv: &dyn Backend, w: &dyn Workload) {
    let spec = w.spec(&case_name(w, "duplicate"), Behaviour::Echo);
    let f = fresh_deploy(inv, spec.clone()).await;
    match inv.deploy(spec).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("conformance: second deploy of {f}: expected AlreadyExists, got {other:?}"),
    }
    cleanup(inv, &f).await;
}

/// Invoke, status, remove, scale, update and logs of an unknown function give
/// [`Error::NotFound`].
pub async fn unknown_function_not_found(inv: &dyn Backend, w: &dyn Workload) {
    let spec = w.spec(&case_name(w, "never-deployed"), Behaviour::Echo);
    let f = spec.function_ref();
    remove_leftover(inv, &f).await;
    expect_not_found("invoke", inv.invoke(Invocation::post(f.clone(), "x")).await);
    expect_not_found("status", inv.status(&f).await);
    expect_not_found("remove", inv.remove(&f).await);
    expect_not_found("scale", inv.scale(&f, 1).await);
    expect_not_found("update", inv.update(spec).await);
    expect_not_found(
        "logs",
        inv.logs(crate::invoker::LogsRequest::for_function(f.clone())).await.map(|_| ()),
    );
}

/// Invoke passes method, path suffix, query, `x-test-*` headers and an 8 MiB binary body
/// through unchanged.
pub async fn invoke_preserves_request(inv: &dyn Backend, w: &dyn Workload) {
    let f = fresh_deploy(inv, w.spec(&case_name(w, "echo"), Behaviour::Echo)).await;
    wait_available(inv, w, &f).await;
    let mut x: u32 = 0x1234_5678;
    let payload: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    let payload = Bytes::from(payload);
    let resp = invoke_ok(
        inv,
        request(
            &f,
            http::Method::PUT,
            "/some/path/x?a=1&b=two%20words",
            &[("x-test-alpha", "one"), ("x-test-beta", "two"), ("x-other", "no")],
            payload.clone(),
        ),
    )
    .await;
    assert_eq!(resp.status(), 200, "conformance: echo status");
    assert_eq!(header(&resp, "x-echo-method"), "PUT", "conformance: method");
    assert_eq!(header(&resp, "x-echo-path"), "/some/path/x", "conformance: path suffix");
    assert_eq!(header(&resp, "x-echo-query"), "a=1&b=two%20words", "conformance: query");
    assert_eq!(header(&resp, "x-echo-x-test-alpha"), "one", "conformance: x-test-alpha");
    assert_eq!(header(&resp, "x-echo-x-test-beta"), "two", "conformance: x-test-beta");
    assert!(
        resp.headers().get("x-echo-x-other").is_none(),
        "conformance: a header not starting with x-test- was echoed"
    );
    let body = read_body(resp).await;
    assert!(
        body == payload,
        "conformance: 8 MiB body changed in transit (got {} bytes, sent {})",
        body.len(),
        payload.len()
    );

    let resp = invoke_ok(inv, request(&f, http::Method::GET, "/", &[], Body::empty())).await;
    assert_eq!(header(&resp, "x-echo-method"), "GET", "conformance: method");
    assert_eq!(header(&resp, "x-echo-path"), "/", "conformance: empty path suffix");
    assert_eq!(header(&resp, "x-echo-query"), "", "conformance: empty query");
    assert!(read_body(resp).await.is_empty(), "conformance: empty body echoed as non-empty");
    cleanup(inv, &f).await;
}

/// Env vars and secrets named by the spec reach the function; updates change them.
pub async fn env_and_secrets(inv: &dyn Backend, w: &dyn Workload) {
    let name = case_name(w, "env");
    let secret_name = format!("{name}-key");
    let spec = w.spec(&name, Behaviour::Env).env("CONF_GREETING", "hello").secret(&secret_name);
    let ns = spec.namespace_or_default().to_string();
    remove_leftover(inv, &spec.function_ref()).await;
    remove_leftover_secret(inv, &ns, &secret_name).await;
    let secret = Secret {
        name: secret_name.clone(),
        namespace: ns.clone(),
        value: Bytes::from_static(b"s3cr3t-value"),
    };
    inv.create_secret(secret.clone()).await.expect("conformance: create_secret failed");
    let f = fresh_deploy(inv, spec.clone()).await;
    wait_available(inv, w, &f).await;

    assert_eq!(get(inv, &f, "/?env=CONF_GREETING").await, (200, Bytes::from("hello")));
    assert_eq!(get(inv, &f, "/?env=CONF_MISSING").await.0, 404, "conformance: unset env");
    assert_eq!(
        get(inv, &f, &format!("/?secret={secret_name}")).await,
        (200, Bytes::from("s3cr3t-value")),
        "conformance: secret value"
    );
    assert_eq!(get(inv, &f, "/?secret=conf-absent").await.0, 404, "conformance: absent secret");

    inv.update(spec.env("CONF_GREETING", "bonjour")).await.expect("conformance: update failed");
    poll("the updated env var to reach the function", w.start_timeout(), || async {
        match inv.invoke(Invocation::get(f.clone(), "/?env=CONF_GREETING")).await {
            Ok(r) => (read_body(r).await == "bonjour").then_some(()),
            Err(_) => None,
        }
    })
    .await;
    cleanup(inv, &f).await;
    inv.remove_secret(&ns, &secret_name).await.expect("conformance: remove_secret failed");
}

/// Secrets: create, list, duplicate, update, remove, and invalid names.
pub async fn secrets_round_trip(inv: &dyn Backend, w: &dyn Workload) {
    let name = case_name(w, "secret");
    let ns = w.spec(&name, Behaviour::Echo).namespace_or_default().to_string();
    remove_leftover_secret(inv, &ns, &name).await;
    let secret = Secret { name: name.clone(), namespace: ns.clone(), value: "v1".into() };
    inv.create_secret(secret.clone()).await.expect("conformance: create_secret failed");
    match inv.create_secret(secret.clone()).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("conformance: duplicate secret: expected AlreadyExists, got {other:?}"),
    }
    let list = inv.list_secrets(&ns).await.expect("conformance: list_secrets failed");
    assert!(list.iter().any(|s| s.name == name), "conformance: {name} not listed: {list:?}");
    inv.update_secret(Secret { value: "v2".into(), ..secret.clone() })
        .await
        .expect("conformance: update_secret failed");
    expect_not_found(
        "update of an absent secret",
        inv.update_secret(Secret { name: format!("{name}-absent"), ..secret.clone() }).await,
    );
    expect_invalid(
        "secret with an invalid name",
        inv.create_secret(Secret { name: "Not Valid!".into(), ..secret.clone() }).await,
        "name",
    );
    inv.remove_secret(&ns, &name).await.expect("conformance: remove_secret failed");
    expect_not_found("remove_secret twice", inv.remove_secret(&ns, &name).await);
    let list = inv.list_secrets(&ns).await.expect("conformance: list_secrets failed");
    assert!(!list.iter().any(|s| s.name == name), "conformance: {name} listed after removal");
}

/// A function exceeding its timeout gives a developer error of kind timeout.
pub async fn timeout_is_developer_error(inv: &dyn Backend, w: &dyn Workload) {
    let spec = w.spec(&case_name(w, "timeout"), Behaviour::Sleep).timeout(Duration::from_secs(1));
    let f = fresh_deploy(inv, spec).await;
    wait_available(inv, w, &f).await;
    let (status, _) = get(inv, &f, "/?ms=10").await;
    assert_eq!(status, 200, "conformance: a short sleep within the timeout");
    match inv.invoke(Invocation::get(f.clone(), "/?ms=5000")).await {
        Err(e @ Error::Developer { kind: DeveloperErrorKind::Timeout, .. }) => {
            assert!(e.to_string().contains("timeout"), "conformance: message {e} names no timeout")
        }
        Err(other) => panic!("conformance: expected a developer timeout error, got {other}"),
        Ok(r) => panic!("conformance: expected a timeout, got status {}", r.status()),
    }
    cleanup(inv, &f).await;
}

/// A crash gives a developer error of kind crash (not a timeout, a protocol violation or a
/// platform error), and the function answers again afterwards. The function's timeout is far
/// longer than the case may take, so a backend that noticed the crash only when the timeout
/// fired would fail this case's bound too.
pub async fn crash_is_developer_error(inv: &dyn Backend, w: &dyn Workload) {
    let spec = w.spec(&case_name(w, "crash"), Behaviour::Crash).timeout(w.start_timeout() * 4);
    let f = fresh_deploy(inv, spec).await;
    wait_available(inv, w, &f).await;
    assert_eq!(get(inv, &f, "/").await, (200, Bytes::from("alive")));
    let crashed = tokio::time::timeout(
        w.start_timeout(),
        inv.invoke(Invocation::get(f.clone(), "/?crash=1")),
    )
    .await
    .unwrap_or_else(|_| panic!("conformance: a crash of {f} was not reported in time"));
    match crashed {
        Err(Error::Developer { kind: DeveloperErrorKind::Crash, .. }) => {}
        Err(other @ Error::Developer { .. }) => {
            panic!("conformance: a crash should be a developer error of kind crash, got {other}")
        }
        Err(other) => panic!("conformance: a crash should be a developer error, got {other}"),
        Ok(r) => panic!("conformance: a crash should fail, got status {}", r.status()),
    }
    poll(&format!("{f} to answer after a crash"), w.start_timeout(), || async {
        match inv.invoke(Invocation::get(f.clone(), "/")).await {
            Ok(r) if r.status() == 200 => Some(()),
            _ => None,
        }
    })
    .await;
    cleanup(inv, &f).await;
}

/// With `max_concurrency = 2` and one replica at most (`scale.min = scale.max = 1`), the
/// function never has more than 2 invocations in flight: every answer comes from the one
/// instance (`x-instance`), which never had more than 2 in flight (`x-max-inflight`), and the
/// function still has one replica afterwards. So a backend that ignores the cap, on one
/// instance or by starting more instances than `scale.max`, fails. Invocations beyond the cap
/// wait or fail with [`Error::Overloaded`], never anything else.
pub async fn concurrency_cap_holds(inv: &dyn Backend, w: &dyn Workload) {
    let spec = w
        .spec(&case_name(w, "concurrency"), Behaviour::Sleep)
        .max_concurrency(2)
        .label(labels::SCALE_MIN, "1")
        .label(labels::SCALE_MAX, "1");
    let f = fresh_deploy(inv, spec).await;
    wait_available(inv, w, &f).await;
    let calls = (0..8).map(|_| inv.invoke(Invocation::get(f.clone(), "/?ms=300")));
    let results = tokio::time::timeout(w.start_timeout() * 2, futures::future::join_all(calls))
        .await
        .expect("conformance: concurrent sleeps did not finish in time");
    let mut ok = 0;
    let mut instances = std::collections::BTreeSet::new();
    for r in results {
        match r {
            Ok(resp) => {
                assert_eq!(resp.status(), 200, "conformance: sleep status");
                let peak: u32 = header(&resp, "x-max-inflight").parse().expect("x-max-inflight");
                assert!(
                    peak <= 2,
                    "conformance: an instance had {peak} invocations in flight, cap 2"
                );
                instances.insert(header(&resp, "x-instance").to_string());
                ok += 1;
            }
            Err(Error::Overloaded { .. }) => {}
            Err(other) => {
                panic!("conformance: beyond the cap expected success or Overloaded, got {other}")
            }
        }
    }
    assert!(ok >= 2, "conformance: only {ok} of 8 invocations succeeded under a cap of 2");
    assert_eq!(
        instances.len(),
        1,
        "conformance: scale.max is 1, but {} instances answered ({instances:?}): the cap of 2 \
         per function was exceeded by starting more instances",
        instances.len()
    );
    let st = inv.status(&f).await.expect("conformance: status failed");
    assert!(st.replicas <= 1, "conformance: {} replicas with scale.max 1", st.replicas);
    cleanup(inv, &f).await;
}

/// Scale to 3 replicas (all available), then to 0.
pub async fn scale_up_and_to_zero(inv: &dyn Backend, w: &dyn Workload) {
    let spec = w.spec(&case_name(w, "scale"), Behaviour::Echo).label(labels::SCALE_ZERO, "true");
    let f = fresh_deploy(inv, spec).await;
    wait_available(inv, w, &f).await;
    inv.scale(&f, 3).await.expect("conformance: scale to 3 failed");
    poll(&format!("{f} to have 3 available replicas"), w.start_timeout(), || async {
        let s = inv.status(&f).await.ok()?;
        (s.replicas == 3 && s.available_replicas == 3).then_some(())
    })
    .await;
    inv.scale(&f, 0).await.expect("conformance: scale to 0 failed");
    poll(&format!("{f} to have 0 replicas"), w.start_timeout(), || async {
        let s = inv.status(&f).await.ok()?;
        (s.replicas == 0 && s.available_replicas == 0).then_some(())
    })
    .await;
    cleanup(inv, &f).await;
}

/// Invoking a function at zero replicas scales it from zero and answers.
pub async fn scale_from_zero(inv: &dyn Backend, w: &dyn Workload) {
    let spec =
        w.spec(&case_name(w, "from-zero"), Behaviour::Echo).label(labels::SCALE_ZERO, "true");
    let f = fresh_deploy(inv, spec).await;
    wait_available(inv, w, &f).await;
    inv.scale(&f, 0).await.expect("conformance: scale to 0 failed");
    poll(&format!("{f} to reach 0 available replicas"), w.start_timeout(), || async {
        let s = inv.status(&f).await.ok()?;
        (s.available_replicas == 0).then_some(())
    })
    .await;
    let invoke = inv.invoke(Invocation::post(f.clone(), "wake up"));
    let resp = tokio::time::timeout(w.start_timeout(), invoke)
        .await
        .unwrap_or_else(|_| panic!("conformance: invoking {f} at zero did not answer in time"))
        .unwrap_or_else(|e| panic!("conformance: invoking {f} at zero failed: {e}"));
    assert_eq!(resp.status(), 200, "conformance: status after scale from zero");
    assert_eq!(read_body(resp).await, "wake up", "conformance: body after scale from zero");
    let s = inv.status(&f).await.expect("conformance: status failed");
    assert!(s.replicas >= 1, "conformance: replicas still 0 after scale from zero");
    cleanup(inv, &f).await;
}

/// A line a function logs is readable through `logs` (polled with a bound).
pub async fn logs_readable(inv: &dyn Backend, w: &dyn Workload) {
    let name = case_name(w, "logs");
    let f = fresh_deploy(inv, w.spec(&name, Behaviour::Log)).await;
    wait_available(inv, w, &f).await;
    let marker = format!("conformance log line from {name}");
    let resp = invoke_ok(inv, Invocation::post(f.clone(), marker.clone())).await;
    assert_eq!(read_body(resp).await, "logged", "conformance: log fixture answer");
    let entry = poll(&format!("{f}'s log line"), w.start_timeout(), || async {
        let entries = inv.read_logs(&f).await.ok()?;
        entries.into_iter().find(|e| e.text.contains(&marker))
    })
    .await;
    assert_eq!(entry.name, f.name, "conformance: log entry name");
    assert_eq!(entry.namespace, f.namespace, "conformance: log entry namespace");
    assert!(!entry.instance.is_empty(), "conformance: log entry has no instance");
    cleanup(inv, &f).await;
}

/// The log lines a replica wrote stay readable through `logs` once the function is scaled to
/// zero and that replica is gone: with their instance, selected by the `instance` filter and
/// by `tail`, and merged in time order with a later replica's lines after a scale from zero.
/// A function removed and deployed again starts with no lines. Waits are bounded polls.
pub async fn logs_survive_scale_to_zero(inv: &dyn Backend, w: &dyn Workload) {
    use crate::invoker::LogsRequest;
    let name = case_name(w, "logs-zero");
    let spec = w.spec(&name, Behaviour::Log).label(labels::SCALE_ZERO, "true");
    let f = fresh_deploy(inv, spec.clone()).await;
    wait_available(inv, w, &f).await;
    let first = format!("{name}: logged before scale to zero");
    let resp = invoke_ok(inv, Invocation::post(f.clone(), first.clone())).await;
    assert_eq!(read_body(resp).await, "logged", "conformance: log fixture answer");
    let entry = poll(&format!("{f}'s first log line"), w.start_timeout(), || async {
        inv.read_logs(&f).await.ok()?.into_iter().find(|e| e.text.contains(&first))
    })
    .await;
    let old = entry.instance.clone();
    assert!(!old.is_empty(), "conformance: log entry has no instance");

    inv.scale(&f, 0).await.expect("conformance: scale to 0 failed");
    poll(&format!("{f} to have 0 replicas"), w.start_timeout(), || async {
        let s = inv.status(&f).await.ok()?;
        (s.replicas == 0 && s.available_replicas == 0).then_some(())
    })
    .await;
    let logs = inv.read_logs(&f).await.expect("conformance: logs at zero replicas failed");
    let kept = logs.iter().find(|e| e.text.contains(&first)).unwrap_or_else(|| {
        panic!("conformance: the line of a replica scaled away is gone; logs: {logs:?}")
    });
    assert_eq!(kept.instance, old, "conformance: instance of a line kept after scale to zero");
    assert_eq!(kept.name, f.name, "conformance: name of a line kept after scale to zero");

    // Scale from zero: a new replica logs a second line; both are listed, in time order.
    let second = format!("{name}: logged after scale from zero");
    let resp = tokio::time::timeout(
        w.start_timeout(),
        inv.invoke(Invocation::post(f.clone(), second.clone())),
    )
    .await
    .unwrap_or_else(|_| panic!("conformance: invoking {f} at zero did not answer in time"))
    .unwrap_or_else(|e| panic!("conformance: invoking {f} at zero failed: {e}"));
    assert_eq!(read_body(resp).await, "logged", "conformance: log fixture answer");
    let logs = poll(&format!("{f}'s second log line"), w.start_timeout(), || async {
        let logs = inv.read_logs(&f).await.ok()?;
        logs.iter().any(|e| e.text.contains(&second)).then_some(logs)
    })
    .await;
    let at = |marker: &str| logs.iter().position(|e| e.text.contains(marker));
    let (Some(i), Some(j)) = (at(&first), at(&second)) else {
        panic!("conformance: expected both lines after scale from zero; logs: {logs:?}")
    };
    assert!(i < j, "conformance: the older replica's line comes first; logs: {logs:?}");
    assert_eq!(logs[i].instance, old, "conformance: instance of the older line");
    assert!(
        logs.windows(2).all(|p| p[0].timestamp <= p[1].timestamp),
        "conformance: logs not in time order: {logs:?}"
    );

    // Filters apply to the kept lines as to live ones.
    let only_old =
        LogsRequest { instance: Some(old.clone()), ..LogsRequest::for_function(f.clone()) };
    let only_old: Vec<_> = collect_logs(inv, only_old).await;
    assert!(
        only_old.iter().any(|e| e.text.contains(&first)),
        "conformance: instance={old} lacks its line: {only_old:?}"
    );
    assert!(
        only_old.iter().all(|e| e.instance == old),
        "conformance: instance={old} gave other instances' lines: {only_old:?}"
    );
    let last =
        collect_logs(inv, LogsRequest { tail: Some(1), ..LogsRequest::for_function(f.clone()) })
            .await;
    assert_eq!(last.len(), 1, "conformance: tail=1 gave {last:?}");
    let t = logs[j].timestamp;
    let since =
        collect_logs(inv, LogsRequest { since: Some(t), ..LogsRequest::for_function(f.clone()) })
            .await;
    assert!(
        since.iter().all(|e| e.timestamp >= t) && since.iter().any(|e| e.text.contains(&second)),
        "conformance: since={t:?} gave {since:?}"
    );

    // Removing the function drops its lines: a new function of the same name has none.
    cleanup(inv, &f).await;
    let f = fresh_deploy(inv, spec).await;
    let logs = inv.read_logs(&f).await.expect("conformance: logs of a redeployed function");
    assert!(
        !logs.iter().any(|e| e.text.contains(&first) || e.text.contains(&second)),
        "conformance: a removed function's lines outlived it: {logs:?}"
    );
    cleanup(inv, &f).await;
}

async fn collect_logs(
    inv: &dyn Backend,
    request: crate::invoker::LogsRequest,
) -> Vec<crate::invoker::LogEntry> {
    use futures::TryStreamExt;
    let what = format!("{request:?}");
    match inv.logs(request).await {
        Ok(s) => s
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("conformance: reading logs {what} failed: {e}")),
        Err(e) => panic!("conformance: logs {what} failed: {e}"),
    }
}

/// 1000 concurrent invocations are all answered, each with its own body.
pub async fn many_concurrent_invocations(inv: &dyn Backend, w: &dyn Workload) {
    let f = fresh_deploy(inv, w.spec(&case_name(w, "many"), Behaviour::Echo)).await;
    wait_available(inv, w, &f).await;
    let calls = (0..1000).map(|i| {
        let f = f.clone();
        async move {
            let body = format!("request {i}");
            let r = inv.invoke(Invocation::post(f, body.clone())).await;
            (body, r)
        }
    });
    let results = tokio::time::timeout(w.start_timeout() * 4, futures::future::join_all(calls))
        .await
        .expect("conformance: 1000 concurrent invocations did not finish in time");
    for (sent, r) in results {
        let resp = r.unwrap_or_else(|e| panic!("conformance: invocation {sent:?} failed: {e}"));
        assert_eq!(resp.status(), 200, "conformance: status of {sent:?}");
        assert_eq!(read_body(resp).await, sent.as_bytes(), "conformance: answer to {sent:?}");
    }
    cleanup(inv, &f).await;
}

/// Runs every case in turn.
pub async fn run_all(inv: &dyn Backend, w: &dyn Workload) {
    deploy_round_trip(inv, w).await;
    invalid_specs_rejected(inv, w).await;
    duplicate_deploy_rejected(inv, w).await;
    unknown_function_not_found(inv, w).await;
    invoke_preserves_request(inv, w).await;
    env_and_secrets(inv, w).await;
    secrets_round_trip(inv, w).await;
    timeout_is_developer_error(inv, w).await;
    crash_is_developer_error(inv, w).await;
    concurrency_cap_holds(inv, w).await;
    scale_up_and_to_zero(inv, w).await;
    scale_from_zero(inv, w).await;
    logs_readable(inv, w).await;
    logs_survive_scale_to_zero(inv, w).await;
    many_concurrent_invocations(inv, w).await;
}

/// Calls macro `$case!(name)` once for every conformance case, so a backend's test file
/// gets one test per case, and a case added to the suite reaches every backend:
///
/// ```ignore
/// macro_rules! case {
///     ($name:ident) => {
///         #[tokio::test]
///         async fn $name() { faas_core::conformance::$name(&backend(), &workload()).await }
///     };
/// }
/// faas_core::for_each_conformance_case!(case);
/// ```
///
/// A backend that cannot run a case excludes it explicitly, by name, with the reason, in a
/// rule of its `case!` macro placed before the general one:
///
/// ```ignore
/// macro_rules! case {
///     // Excluded: the fake pods do not enforce max_inflight (runs on the process backend).
///     (concurrency_cap_holds) => {};
///     ($name:ident) => { /* one test, as above */ };
/// }
/// ```
#[macro_export]
macro_rules! for_each_conformance_case {
    ($case:ident) => {
        $case!(deploy_round_trip);
        $case!(invalid_specs_rejected);
        $case!(duplicate_deploy_rejected);
        $case!(unknown_function_not_found);
        $case!(invoke_preserves_request);
        $case!(env_and_secrets);
        $case!(secrets_round_trip);
        $case!(timeout_is_developer_error);
        $case!(crash_is_developer_error);
        $case!(concurrency_cap_holds);
        $case!(scale_up_and_to_zero);
        $case!(scale_from_zero);
        $case!(logs_readable);
        $case!(logs_survive_scale_to_zero);
        $case!(many_concurrent_invocations);
    };
}

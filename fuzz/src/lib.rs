//! Shared harness of the fuzz targets: a whole [`Gateway`] (auth, cross-site protection,
//! body limit, router, async queue and worker) over an in-memory backend, built afresh for
//! each input on a current-thread tokio runtime whose clock is paused (timeouts and backoffs
//! pass at once, so a run is fast and repeatable).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use faas_core::spec::ReplicaLimits;
use faas_core::{
    handler_fn, Backend, Body, Context, Deploy, Error, FunctionSpec, MemoryInvoker, Request,
    Secret, Secrets,
};
use faas_http::{BasicAuth, Gateway, GatewayConfig};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The user and password of the gateway when a target turns auth on.
pub const USER: &str = "admin";
/// See [`USER`].
pub const PASSWORD: &str = "secret";

/// How long (virtual time) one request may take before the harness gives up on it: long
/// enough for every timeout of the gateway (upstream 60 s, scale from zero 30 s) to fire.
const REQUEST_BUDGET: Duration = Duration::from_secs(600);

/// Set (to anything), the harness prints each request line and its answer to stderr: run a
/// target on one input with it to see what the gateway made of it.
pub const TRACE_ENV: &str = "FAAS_FUZZ_TRACE";

/// The largest response body read back.
const RESPONSE_LIMIT: usize = 1 << 20;

/// One answer, as the harness read it back.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: http::StatusCode,
    /// The body (up to 1 MiB), or `None` if it failed or did not end within the budget.
    pub body: Option<Bytes>,
}

/// Builds a fresh gateway (auth on with [`USER`]/[`PASSWORD`] if `auth`) over an in-memory
/// backend holding a function `echo` (image `echo`, answers its body) and a secret `s1`
/// (namespace `openfaas-fn`), and runs `f` with a sender of requests, on a runtime of its own.
pub fn with_gateway<F, Fut>(auth: bool, f: F)
where
    F: FnOnce(Sender) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    rt.block_on(async move {
        let invoker = MemoryInvoker::builder()
            .replica_limits(ReplicaLimits::new(4, 16))
            .activation_limit(16)
            .log_limit(64)
            .build();
        invoker.register(
            "echo",
            handler_fn(|req: Request, _ctx: Context| async move {
                let body = req.into_body().collect_limited(RESPONSE_LIMIT).await?;
                Ok::<_, Error>(body)
            }),
        );
        if let Err(e) = invoker.deploy(FunctionSpec::new("echo", "echo")).await {
            panic!("deploying the echo function: {e}");
        }
        let secret = Secret {
            name: "s1".into(),
            namespace: faas_core::spec::DEFAULT_NAMESPACE.into(),
            value: Bytes::from_static(b"v"),
        };
        if let Err(e) = invoker.create_secret(secret).await {
            panic!("creating the secret s1: {e}");
        }
        let config = GatewayConfig {
            auth: auth.then(|| BasicAuth::new(USER, PASSWORD)),
            max_body_bytes: 64 * 1024,
            ..Default::default()
        };
        let backend: Arc<dyn Backend> = Arc::new(invoker);
        let gateway = Gateway::builder(backend).config(config).build();
        f(Sender { gateway }).await;
    });
}

/// Sends requests to the gateway of [`with_gateway`].
pub struct Sender {
    gateway: Gateway,
}

impl Sender {
    /// Sends `req` through the whole gateway stack and reads the answer back. `Host:
    /// localhost` is added when the request has no `Host` (as every HTTP/1.1 client sends
    /// one).
    pub async fn send(&self, mut req: http::Request<Body>) -> Answer {
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut()
                .insert(http::header::HOST, http::HeaderValue::from_static("localhost"));
        }
        let line = format!("{} {}", req.method(), req.uri());
        let call = self.gateway.service().oneshot(req);
        let resp = match tokio::time::timeout(REQUEST_BUDGET, call).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(never)) => match never {},
            Err(_) => panic!("the gateway did not answer within {REQUEST_BUDGET:?}"),
        };
        let status = resp.status();
        // A streamed body (`/system/logs?follow=true`) may go on for ever: `None` then.
        let body: Option<Bytes> =
            tokio::time::timeout(REQUEST_BUDGET, read_limited(resp.into_body()))
                .await
                .unwrap_or_default();
        if std::env::var_os(TRACE_ENV).is_some() {
            let text = body.as_deref().map(String::from_utf8_lossy);
            eprintln!("{line} -> {status} {text:?}");
        }
        Answer { status, body }
    }

    /// A request with `method`, `uri` and `body`, with basic auth when `auth`.
    pub fn request(method: &str, uri: &str, body: Bytes, auth: bool) -> http::Request<Body> {
        let mut b = http::Request::builder().method(method).uri(uri);
        if auth {
            b = b
                .header(http::header::AUTHORIZATION, BasicAuth::new(USER, PASSWORD).header_value());
        }
        b.body(Body::from(body)).expect("a request from fixed parts")
    }
}

/// Reads a body up to [`RESPONSE_LIMIT`] bytes; `None` if it fails.
async fn read_limited(mut body: Body) -> Option<Bytes> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > RESPONSE_LIMIT {
                return Some(Bytes::from(out));
            }
            out.extend_from_slice(&data);
        }
    }
    Some(Bytes::from(out))
}

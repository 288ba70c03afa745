//! The tower layers the default gateway is assembled from. Each wraps any
//! `Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>`, so a
//! host application can stack them around its own router, or the [`crate::Router`] with
//! its own layers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use faas_core::{Body, BoxError, CallerFault, Error, Request, Response};
use futures::future::BoxFuture;
use http::Method;
use http_body::Frame;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::{BasicAuth, LoginThrottle, LoginThrottleConfig};
use crate::config::CrossSiteConfig;
use crate::response;

/// Requires basic auth on paths for which `protect` answers true (by default `/system/*`
/// and `/ui/*`); answers 401 with `WWW-Authenticate` otherwise. Failed logins are logged
/// with the client's address and, with a [`LoginThrottle`] (on by default), a client that
/// has failed too often is answered 429 with `Retry-After` before its credentials are
/// checked.
#[derive(Clone)]
pub struct BasicAuthLayer {
    creds: Arc<BasicAuth>,
    protect: fn(&str) -> bool,
    throttle: Option<Arc<LoginThrottle>>,
}

/// The default set of protected paths: `/system/*` and the portal `/ui/*`.
pub fn protected_by_default(path: &str) -> bool {
    path.starts_with("/system/") || path == "/system" || path.starts_with("/ui")
}

impl BasicAuthLayer {
    /// Protects the default paths with `creds`, throttling failed logins with the default
    /// [`LoginThrottleConfig`].
    pub fn new(creds: BasicAuth) -> Self {
        BasicAuthLayer {
            creds: Arc::new(creds),
            protect: protected_by_default,
            throttle: Some(Arc::new(LoginThrottle::new(LoginThrottleConfig::default()))),
        }
    }

    /// Chooses which paths are protected.
    pub fn protecting(mut self, protect: fn(&str) -> bool) -> Self {
        self.protect = protect;
        self
    }

    /// Throttles failed logins with `config`, or not at all with `None`.
    pub fn throttle(mut self, config: Option<LoginThrottleConfig>) -> Self {
        self.throttle = config.map(|c| Arc::new(LoginThrottle::new(c)));
        self
    }

    /// The answer to a request for a protected path: `None` to let it through.
    fn refuse(&self, req: &Request) -> Option<Response> {
        // No credentials sent: no guess made, nothing to count.
        let Some(value) = req.headers().get(http::header::AUTHORIZATION) else {
            return Some(response::unauthorized());
        };
        let client = crate::server::client_addr(req);
        let ip = client.map(|a| a.ip());
        let now = Instant::now();
        if let Some(wait) = self.throttle.as_ref().and_then(|t| t.retry_after(ip, now)) {
            return Some(too_many_failed_logins(wait));
        }
        if self.creds.check_header(value.as_bytes()) {
            return None;
        }
        let client = client.map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let path = req.uri().path();
        tracing::warn!(%client, %path, "failed login: wrong basic auth credentials");
        if let Some(wait) = self.throttle.as_ref().and_then(|t| t.record_failure(ip, now)) {
            tracing::warn!(
                %client,
                retry_after_s = wait.as_secs_f64().ceil(),
                "too many failed logins: refusing this client's logins for now"
            );
        }
        Some(response::unauthorized())
    }
}

/// 429 for a client that must wait `wait` before logging in again.
fn too_many_failed_logins(wait: std::time::Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response::error(&Error::Overloaded {
        message: format!("too many failed logins from this address; retry in {secs} s"),
        retry_after: Some(std::time::Duration::from_secs(secs.max(1))),
    })
}

impl Screen for BasicAuthLayer {
    fn screen(&self, req: &Request) -> Option<Response> {
        if (self.protect)(req.uri().path()) {
            self.refuse(req)
        } else {
            None
        }
    }
}

impl<S> Layer<S> for BasicAuthLayer {
    type Service = BasicAuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Screened { inner, screen: self.clone() }
    }
}

/// The service of [`BasicAuthLayer`].
pub type BasicAuthService<S> = Screened<S, BasicAuthLayer>;

/// Decides, from a request alone, whether a [`Screened`] service answers it itself.
pub trait Screen {
    /// The answer to `req` when it is refused; `None` lets it through to the inner service.
    fn screen(&self, req: &Request) -> Option<Response>;
}

/// A service that answers the requests its [`Screen`] refuses and passes the others on:
/// the service of [`BasicAuthLayer`] and of [`CrossSiteLayer`].
#[derive(Clone)]
pub struct Screened<S, G> {
    inner: S,
    screen: G,
}

impl<S, G> Service<Request> for Screened<S, G>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
    G: Screen,
{
    type Response = Response;
    type Error = Infallible;
    type Future =
        futures::future::Either<S::Future, futures::future::Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.screen.screen(&req) {
            Some(r) => futures::future::Either::Right(futures::future::ready(Ok(r))),
            None => futures::future::Either::Left(self.inner.call(req)),
        }
    }
}

/// Refuses requests for the paths `protect` names (by default `/system/*` and `/ui/*`)
/// that come from web pages elsewhere, with 403 and a message saying why; see
/// [`CrossSiteConfig`] for the rules. Stops a page on another site from deploying a
/// function through the visitor's browser (a `text/plain` POST needs no CORS preflight),
/// and a DNS rebinding attack from reaching the management API under its own host name.
#[derive(Clone, Debug)]
pub struct CrossSiteLayer {
    config: Arc<CrossSiteConfig>,
    protect: fn(&str) -> bool,
}

impl CrossSiteLayer {
    /// Applies `config` to the default paths.
    pub fn new(config: CrossSiteConfig) -> Self {
        CrossSiteLayer { config: Arc::new(config), protect: protected_by_default }
    }

    /// Chooses which paths are checked.
    pub fn protecting(mut self, protect: fn(&str) -> bool) -> Self {
        self.protect = protect;
        self
    }

    /// Why `req` is refused, if it is.
    pub fn check(&self, req: &Request) -> Result<(), Refused> {
        let c = &*self.config;
        if !c.enabled || !(self.protect)(req.uri().path()) {
            return Ok(());
        }
        let headers = req.headers();
        let host = headers
            .get(http::header::HOST)
            .map(|v| {
                v.to_str().ok().and_then(|s| s.parse::<http::uri::Authority>().ok()).ok_or_else(
                    || Refused {
                        status: http::StatusCode::BAD_REQUEST,
                        reason: "invalid Host header: not a host name or address".into(),
                    },
                )
            })
            .transpose()?
            .or_else(|| req.uri().authority().cloned());
        if let Some(h) = &host {
            if !host_allowed(c, h.host()) {
                return Err(Refused::forbidden(format!(
                    "Host {:?} is not one of this gateway's allowed hosts (IP addresses, \
                     localhost and those configured: faas up --allowed-host, \
                     GatewayConfig::cross_site.allowed_hosts); refused to protect against \
                     DNS rebinding",
                    h.host()
                )));
            }
        }
        if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE) {
            return Ok(());
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            let site = site.as_bytes();
            if site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site") {
                return Err(Refused::forbidden(format!(
                    "cross-site request refused: {} {} was sent by a page of another site \
                     (Sec-Fetch-Site: {})",
                    req.method(),
                    req.uri().path(),
                    String::from_utf8_lossy(site)
                )));
            }
        }
        if let Some(origin) = headers.get(http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("").trim();
            if !origin_allowed(c, origin, host.as_ref()) {
                return Err(Refused::forbidden(format!(
                    "cross-site request refused: Origin {origin:?} is not this gateway's own \
                     ({}) nor an allowed origin (faas up --allowed-origin, \
                     GatewayConfig::cross_site.allowed_origins)",
                    host.as_ref().map_or("no Host header", |h| h.as_str())
                )));
            }
        }
        Ok(())
    }
}

/// Why [`CrossSiteLayer`] refuses a request: 403 for a request from elsewhere, 400 for a
/// malformed `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The status answered.
    pub status: http::StatusCode,
    /// Why, as answered in the body.
    pub reason: String,
}

impl Refused {
    fn forbidden(reason: String) -> Refused {
        Refused { status: http::StatusCode::FORBIDDEN, reason }
    }
}

/// Whether `host` (from `Host`, without port) may address the protected paths.
fn host_allowed(c: &CrossSiteConfig, host: &str) -> bool {
    let name = host.trim_end_matches('.');
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let lower = name.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    c.allowed_hosts.iter().any(|a| a == "*" || a.trim_end_matches('.').eq_ignore_ascii_case(name))
}

fn default_port(scheme: Option<&str>) -> Option<u16> {
    match scheme {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    }
}

/// Whether a state-changing request with `Origin: origin` may go on: the origin is one of
/// the allowed ones, or the gateway's own (same host as `Host`, and same port, a missing
/// port being the origin scheme's default).
fn origin_allowed(c: &CrossSiteConfig, origin: &str, host: Option<&http::uri::Authority>) -> bool {
    let trimmed = origin.trim_end_matches('/');
    if c.allowed_origins.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(trimmed)) {
        return true;
    }
    // `null` (sandboxed frames, local files) and anything unparsable are not ours.
    let Ok(uri) = trimmed.parse::<http::Uri>() else { return false };
    let (Some(o), Some(h)) = (uri.authority(), host) else { return false };
    let default = default_port(uri.scheme_str());
    o.host().eq_ignore_ascii_case(h.host())
        && o.port_u16().or(default).is_some()
        && o.port_u16().or(default) == h.port_u16().or(default)
}

impl Screen for CrossSiteLayer {
    fn screen(&self, req: &Request) -> Option<Response> {
        let Refused { status, reason } = self.check(req).err()?;
        let path = req.uri().path();
        let client = crate::server::client_addr(req)
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        tracing::warn!(%client, %path, %reason, "request refused");
        let word = if status == http::StatusCode::FORBIDDEN { "forbidden" } else { "bad request" };
        Some(response::text(status, format!("{word}: {reason}\n")))
    }
}

impl<S> Layer<S> for CrossSiteLayer {
    type Service = CrossSiteService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Screened { inner, screen: self.clone() }
    }
}

/// The service of [`CrossSiteLayer`].
pub type CrossSiteService<S> = Screened<S, CrossSiteLayer>;

/// The configured limit, in the request's extensions, for handlers that buffer.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// Limits request bodies to `limit` bytes without buffering them: a `Content-Length` over
/// the limit is answered 413 at once; a streamed body fails when it passes the limit and
/// the request is answered 413.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimitLayer {
    limit: usize,
}

impl BodyLimitLayer {
    /// A limit of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        BodyLimitLayer { limit }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyLimitService { inner, limit: self.limit }
    }
}

/// The service of [`BodyLimitLayer`].
#[derive(Clone)]
pub struct BodyLimitService<S> {
    inner: S,
    limit: usize,
}

pin_project_lite::pin_project! {
    struct LimitedBody {
        #[pin]
        inner: Body,
        seen: usize,
        limit: usize,
        fault: CallerFault,
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.seen += d.len();
                    if *this.seen > *this.limit {
                        this.fault.too_large();
                        let e: BoxError =
                            Box::new(Error::PayloadTooLarge { limit: *this.limit as u64 });
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fault.broken();
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S> Service<Request> for BodyLimitService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future =
        futures::future::Either<S::Future, futures::future::Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let too_large = || {
            futures::future::Either::Right(futures::future::ready(Ok(response::error(
                &Error::PayloadTooLarge { limit: self.limit as u64 },
            ))))
        };
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limit as u64) {
            return too_large();
        }
        // Already in memory (a GET's empty body, say): checked here, nothing to enforce
        // downstream, and the request is passed on as it is.
        if let Some(b) = req.body().as_bytes() {
            if b.len() > self.limit {
                return too_large();
            }
            return futures::future::Either::Left(self.inner.call(req));
        }
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(BodyLimit(self.limit));
        let fault = CallerFault::new(self.limit as u64);
        let limited = LimitedBody { inner: body, seen: 0, limit: self.limit, fault: fault.clone() };
        parts.extensions.insert(fault);
        let body = Body::new(limited);
        futures::future::Either::Left(self.inner.call(Request::from_parts(parts, body)))
    }
}

/// Runs each request in a `tracing` span `request` (level DEBUG) with `method`, `path`, and
/// records `status` and `took_ms` when answered. DEBUG, as tower-http's spans are: a span
/// per request costs a gateway at the usual `info` level about a tenth of its CPU per call
/// (BENCHMARKS.md), so it is paid only when asked for (`RUST_LOG=debug`).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestSpanLayer;

impl<S> Layer<S> for RequestSpanLayer {
    type Service = RequestSpan<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestSpan { inner }
    }
}

/// The service of [`RequestSpanLayer`].
#[derive(Clone)]
pub struct RequestSpan<S> {
    inner: S,
}

impl<S> Service<Request> for RequestSpan<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future =
        futures::future::Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let span = tracing::debug_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            status = tracing::field::Empty,
            took_ms = tracing::field::Empty,
        );
        if span.is_disabled() {
            // No subscriber wants it: no timing, no boxing.
            return futures::future::Either::Left(self.inner.call(req));
        }
        let t0 = Instant::now();
        let fut = {
            let _g = span.enter();
            self.inner.call(req)
        };
        let span2 = span.clone();
        futures::future::Either::Right(Box::pin(
            async move {
                let resp = fut.await;
                if let Ok(r) = &resp {
                    span2.record("status", r.status().as_u16());
                    span2.record("took_ms", t0.elapsed().as_secs_f64() * 1000.0);
                    tracing::debug!("answered");
                }
                resp
            }
            .instrument(span),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tower::ServiceExt;

    /// A subscriber that enables what `max` allows and notes each span it is given.
    struct Levels {
        max: tracing::Level,
        spans: Arc<Mutex<Vec<(String, tracing::Level)>>>,
    }

    impl tracing::Subscriber for Levels {
        fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
            *m.level() <= self.max
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            let mut spans = self.spans.lock().unwrap();
            spans.push((span.metadata().name().to_string(), *span.metadata().level()));
            tracing::span::Id::from_u64(spans.len() as u64)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// The request span is DEBUG: a subscriber at `info` (the gateway's usual level) gets
    /// none, one at `debug` gets one per request.
    #[tokio::test]
    async fn the_request_span_is_made_only_at_debug_level() {
        for (max, expected) in [(tracing::Level::INFO, 0), (tracing::Level::DEBUG, 1)] {
            let spans = Arc::new(Mutex::new(Vec::new()));
            let subscriber = Levels { max, spans: spans.clone() };
            let _guard = tracing::subscriber::set_default(subscriber);
            let svc = RequestSpanLayer.layer(tower::service_fn(|_req: Request| async {
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }));
            let req = http::Request::builder().uri("/function/f").body(Body::empty()).unwrap();
            let resp = svc.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), http::StatusCode::OK);
            let spans = spans.lock().unwrap();
            assert_eq!(spans.len(), expected, "at {max}: {spans:?}");
            if let Some((name, level)) = spans.first() {
                assert_eq!((name.as_str(), *level), ("request", tracing::Level::DEBUG));
            }
        }
    }
}

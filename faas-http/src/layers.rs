//! The tower layers the default gateway is assembled from. Each wraps any
//! `Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>`, so a
//! host application can stack them around its own router, or the [`crate::Router`] with
//! its own layers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use faas_core::{Body, BoxError, Error, Request, Response};
use futures::future::BoxFuture;
use http_body::Frame;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::BasicAuth;
use crate::response;

/// Requires basic auth on paths for which `protect` answers true (by default `/system/*`
/// and `/ui/*`); answers 401 with `WWW-Authenticate` otherwise.
#[derive(Clone)]
pub struct BasicAuthLayer {
    creds: Arc<BasicAuth>,
    protect: fn(&str) -> bool,
}

/// The default set of protected paths: `/system/*` and the portal `/ui/*`.
pub fn protected_by_default(path: &str) -> bool {
    path.starts_with("/system/") || path == "/system" || path.starts_with("/ui")
}

impl BasicAuthLayer {
    /// Protects the default paths with `creds`.
    pub fn new(creds: BasicAuth) -> Self {
        BasicAuthLayer { creds: Arc::new(creds), protect: protected_by_default }
    }

    /// Chooses which paths are protected.
    pub fn protecting(mut self, protect: fn(&str) -> bool) -> Self {
        self.protect = protect;
        self
    }
}

impl<S> Layer<S> for BasicAuthLayer {
    type Service = BasicAuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BasicAuthService { inner, layer: self.clone() }
    }
}

/// The service of [`BasicAuthLayer`].
#[derive(Clone)]
pub struct BasicAuthService<S> {
    inner: S,
    layer: BasicAuthLayer,
}

impl<S> Service<Request> for BasicAuthService<S>
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
        if (self.layer.protect)(req.uri().path()) {
            let ok = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| self.layer.creds.check_header(v.as_bytes()))
                .unwrap_or(false);
            if !ok {
                return futures::future::Either::Right(futures::future::ready(Ok(
                    response::unauthorized(),
                )));
            }
        }
        futures::future::Either::Left(self.inner.call(req))
    }
}

/// Marks a request whose body went past the limit while streaming (the router turns the
/// resulting failure into 413). Found in the request's extensions.
#[derive(Clone, Debug, Default)]
pub struct BodyLimitHit(pub Arc<AtomicBool>);

impl BodyLimitHit {
    /// Whether the limit was exceeded.
    pub fn hit(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

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
        hit: Arc<AtomicBool>,
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
                        this.hit.store(true, Ordering::Relaxed);
                        let e: BoxError =
                            Box::new(Error::PayloadTooLarge { limit: *this.limit as u64 });
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
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
        let hit = BodyLimitHit::default();
        let limited = LimitedBody { inner: body, seen: 0, limit: self.limit, hit: hit.0.clone() };
        parts.extensions.insert(hit);
        let body = Body::new(limited);
        futures::future::Either::Left(self.inner.call(Request::from_parts(parts, body)))
    }
}

/// Runs each request in a `tracing` span `request` with `method`, `path`, and records
/// `status` and `took_ms` when answered.
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
        let span = tracing::info_span!(
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

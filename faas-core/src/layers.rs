//! Tower layers for invokers and functions.
//!
//! Every layer here works over two kinds of service:
//!
//! - an invoker seen as a service of [`Invocation`]s ([`InvokeService`]), which is how a
//!   gateway stacks timeouts, limits, retries, metrics and tracing in front of a backend;
//! - a [`Function`](crate::Function) (a service of `http::Request<Body>`), which is how a
//!   handler gets the same treatment in-process.
//!
//! [`InvocationRequest`] is what the layers need from either request type. Errors are
//! faas-core [`Error`]s throughout, so a timeout reads as a developer error naming the
//! timeout that fired, and a full limiter as [`Error::Overloaded`] (HTTP 429).
//!
//! [`ActivatorLayer`] (invocations only) holds an invocation of a function with no ready
//! replica while the [`Activator`] scales it from zero. A gateway's default stack is
//! `TraceLayer` → `MetricsLayer` → `ConcurrencyLimitLayer` → `ActivatorLayer` →
//! `TimeoutLayer` over the backend; a caller that routes many invocations of one function
//! passes the layers' per-function state along as [`FunctionHandles`].
//!
//! A layered invoker stack is a [`Backend`] again through [`Layered`]: `invoke` goes through
//! the stack, every other method goes straight to the inner backend.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use faas_core::layers::{
//!     ConcurrencyLimitLayer, InvokeService, Layered, MetricsLayer, RetryLayer, TimeoutLayer,
//!     TraceLayer,
//! };
//! use faas_core::prelude::*;
//! use faas_core::{handler_fn, Context, Error, FunctionSpec, MemoryInvoker, Request};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let memory = MemoryInvoker::new();
//! memory.register("echo", handler_fn(|req: Request, _: Context| async move {
//!     Ok::<_, Error>(req.into_body())
//! }));
//! let backend: Arc<dyn Backend> = Arc::new(memory);
//! let stack = ServiceBuilder::new()
//!     .layer(TraceLayer::new())
//!     .layer(MetricsLayer::new())
//!     .layer(RetryLayer::new(3))
//!     .layer(ConcurrencyLimitLayer::new(100, 1000))
//!     .layer(TimeoutLayer::new(Duration::from_secs(30)).named("gateway"))
//!     .service(InvokeService::new(backend.clone()));
//! let invoker = Layered::new(backend, stack);
//! invoker.deploy(FunctionSpec::new("echo", "echo")).await?;
//! assert_eq!(invoker.call("echo", "hi").await?, "hi");
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tower::{Layer, Service, ServiceExt};

use crate::body::{Body, CallerFault};
use crate::error::{Error, Result};
use crate::function::Response;
use crate::invocation::{Context, FunctionRef, Invocation, InvocationId};
use crate::invoker::{
    Backend, Deploy, Invoke, LogStream, Logs, LogsRequest, ProviderInfo, Secret, SecretInfo,
    Secrets,
};
use crate::spec::{FunctionSpec, FunctionStatus};
use crate::util::Backoff;

pub use crate::activator::{Activation, Activator, Readiness};
pub use crate::metrics::{FunctionMetrics, InvocationMetrics};

/// What the layers need to know about a request, for [`Invocation`] and for a function's
/// `http::Request<Body>` (whose [`Context`] extension carries the function and id).
pub trait InvocationRequest: Send + Sized + 'static {
    /// The function invoked, if known.
    fn function(&self) -> Option<&FunctionRef>;
    /// The invocation id, if known.
    fn invocation_id(&self) -> Option<&InvocationId>;
    /// A copy for a retry, if the body is in memory.
    fn try_clone_request(&self) -> Option<Self>;
    /// The request's extensions (where a caller passes [`FunctionHandles`]).
    fn extensions(&self) -> &http::Extensions;
}

impl InvocationRequest for Invocation {
    fn function(&self) -> Option<&FunctionRef> {
        Some(&self.function)
    }
    fn invocation_id(&self) -> Option<&InvocationId> {
        Some(&self.id)
    }
    fn try_clone_request(&self) -> Option<Self> {
        self.try_clone()
    }
    fn extensions(&self) -> &http::Extensions {
        self.request.extensions()
    }
}

impl InvocationRequest for http::Request<Body> {
    fn function(&self) -> Option<&FunctionRef> {
        self.extensions().get::<Context>().and_then(|c| c.function.as_ref())
    }
    fn invocation_id(&self) -> Option<&InvocationId> {
        self.extensions().get::<Context>().and_then(|c| c.id.as_ref())
    }
    fn try_clone_request(&self) -> Option<Self> {
        let body = self.body().try_clone()?;
        let mut req = http::Request::new(body);
        *req.method_mut() = self.method().clone();
        *req.uri_mut() = self.uri().clone();
        *req.version_mut() = self.version();
        *req.headers_mut() = self.headers().clone();
        *req.extensions_mut() = self.extensions().clone();
        Some(req)
    }
    fn extensions(&self) -> &http::Extensions {
        http::Request::extensions(self)
    }
}

/// Takes the service that was polled ready, leaving a clone in its place (tower's usual
/// pattern for services whose futures outlive `call`).
fn take_ready<S: Clone>(s: &mut S) -> S {
    let clone = s.clone();
    std::mem::replace(s, clone)
}

// ---------------------------------------------------------------------------------------
// Layered

pub use crate::invoker::InvokeService;

/// An invoker whose `invoke` goes through a service stack (usually layers over an
/// [`InvokeService`]) while every other method goes to the inner invoker.
#[derive(Clone)]
pub struct Layered<S> {
    service: S,
    invoker: Arc<dyn Backend>,
}

impl<S> std::fmt::Debug for Layered<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layered").field("provider", &self.invoker.info().provider).finish()
    }
}

impl<S> Layered<S> {
    /// `invoker` with invocations going through `service`.
    pub fn new(invoker: Arc<dyn Backend>, service: S) -> Self {
        Layered { service, invoker }
    }

    /// The service stack.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// The inner invoker.
    pub fn invoker(&self) -> &Arc<dyn Backend> {
        &self.invoker
    }
}

impl Layered<()> {
    /// `invoker` with `layer` applied to its [`InvokeService`]; for several layers pass a
    /// `tower::ServiceBuilder` (it is a layer).
    pub fn with_layer<L>(invoker: Arc<dyn Backend>, layer: L) -> Layered<L::Service>
    where
        L: Layer<InvokeService>,
    {
        let service = layer.layer(InvokeService::new(invoker.clone() as Arc<dyn Invoke>));
        Layered { service, invoker }
    }
}

#[async_trait]
impl<S> Invoke for Layered<S>
where
    S: Service<Invocation, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    async fn invoke(&self, invocation: Invocation) -> Result<Response> {
        self.service.clone().oneshot(invocation).await
    }
}

#[async_trait]
impl<S> Deploy for Layered<S>
where
    S: Service<Invocation, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    async fn deploy(&self, spec: FunctionSpec) -> Result<()> {
        self.invoker.deploy(spec).await
    }
    async fn update(&self, spec: FunctionSpec) -> Result<()> {
        self.invoker.update(spec).await
    }
    async fn remove(&self, function: &FunctionRef) -> Result<()> {
        self.invoker.remove(function).await
    }
    async fn list(&self, namespace: &str) -> Result<Vec<FunctionStatus>> {
        self.invoker.list(namespace).await
    }
    async fn status(&self, function: &FunctionRef) -> Result<FunctionStatus> {
        self.invoker.status(function).await
    }
    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<()> {
        self.invoker.scale(function, replicas).await
    }
    async fn namespaces(&self) -> Result<Vec<String>> {
        self.invoker.namespaces().await
    }
    fn info(&self) -> ProviderInfo {
        self.invoker.info()
    }
    async fn wait_ready(&self, function: &FunctionRef, timeout: Duration) -> Result<bool> {
        self.invoker.wait_ready(function, timeout).await
    }
}

#[async_trait]
impl<S> Secrets for Layered<S>
where
    S: Service<Invocation, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        self.invoker.list_secrets(namespace).await
    }
    async fn create_secret(&self, secret: Secret) -> Result<()> {
        self.invoker.create_secret(secret).await
    }
    async fn update_secret(&self, secret: Secret) -> Result<()> {
        self.invoker.update_secret(secret).await
    }
    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()> {
        self.invoker.remove_secret(namespace, name).await
    }
}

#[async_trait]
impl<S> Logs for Layered<S>
where
    S: Service<Invocation, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    async fn logs(&self, request: LogsRequest) -> Result<LogStream> {
        self.invoker.logs(request).await
    }
}

// ---------------------------------------------------------------------------------------
// Timeout

/// Fails an invocation that takes longer than a duration with a developer error of kind
/// timeout naming this timeout (`"gateway timeout of 30s exceeded"`, HTTP 504).
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    timeout: Duration,
    name: Arc<str>,
}

impl TimeoutLayer {
    /// A timeout of `timeout`, named `request` in errors.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout, name: Arc::from("request") }
    }

    /// Names the timeout in error messages (`gateway`, `upstream`...), so users can tell
    /// which layer's timeout fired.
    pub fn named(mut self, name: impl AsRef<str>) -> Self {
        self.name = Arc::from(name.as_ref());
        self
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner, timeout: self.timeout, name: self.name.clone() }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
    name: Arc<str>,
}

impl<S, R> Service<R> for Timeout<S>
where
    S: Service<R, Error = Error>,
    R: InvocationRequest,
{
    type Response = S::Response;
    type Error = Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        TimeoutFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(self.timeout),
            timeout: self.timeout,
            name: self.name.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Timeout`].
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: tokio::time::Sleep,
        timeout: Duration,
        name: Arc<str>,
    }
}

impl<F, T> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T>>,
{
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Error::timeout(&**this.name, *this.timeout))),
            Poll::Pending => Poll::Pending,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Concurrency limit

#[derive(Debug)]
struct Limiter {
    semaphore: Arc<tokio::sync::Semaphore>,
    max_in_flight: usize,
    max_queued: usize,
    queued: AtomicUsize,
}

/// Limits invocations in flight; beyond the limit up to `max_queued` invocations wait (in
/// arrival order) and the rest fail at once with [`Error::Overloaded`].
///
/// The limit is shared by every service this layer makes (all clones of the stack).
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    limiter: Arc<Limiter>,
}

impl ConcurrencyLimitLayer {
    /// At most `max_in_flight` invocations at once, at most `max_queued` waiting (0: reject
    /// as soon as the limit is reached).
    pub fn new(max_in_flight: usize, max_queued: usize) -> Self {
        ConcurrencyLimitLayer {
            limiter: Arc::new(Limiter {
                semaphore: Arc::new(tokio::sync::Semaphore::new(max_in_flight)),
                max_in_flight,
                max_queued,
                queued: AtomicUsize::new(0),
            }),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit { inner, limiter: self.limiter.clone() }
    }
}

/// The service of [`ConcurrencyLimitLayer`].
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, R> Service<R> for ConcurrencyLimit<S>
where
    S: Service<R, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    R: InvocationRequest,
{
    type Response = S::Response;
    type Error = Error;
    type Future = LimitFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let limiter = &self.limiter;
        if let Ok(permit) = limiter.semaphore.clone().try_acquire_owned() {
            // Under the limit: the inner call runs at once, holding the permit.
            let state = LimitState::Running { inner: self.inner.call(req), permit: Some(permit) };
            return LimitFuture { state };
        }
        if limiter.queued.fetch_add(1, Ordering::AcqRel) >= limiter.max_queued {
            limiter.queued.fetch_sub(1, Ordering::AcqRel);
            let err = Error::Overloaded {
                message: format!(
                    "{} invocations in flight and {} queued (the limits)",
                    limiter.max_in_flight, limiter.max_queued
                ),
                retry_after: None,
            };
            return LimitFuture { state: LimitState::Rejected { error: Some(err) } };
        }
        let inner = take_ready(&mut self.inner);
        let limiter = limiter.clone();
        let queued = Box::pin(async move {
            let permit = {
                let _slot = QueueSlot(&limiter.queued);
                limiter
                    .semaphore
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::internal("concurrency limiter closed"))?
            };
            let r = inner.oneshot(req).await;
            drop(permit);
            r
        });
        LimitFuture { state: LimitState::Queued { inner: queued } }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`ConcurrencyLimit`].
    pub struct LimitFuture<F, T> {
        #[pin]
        state: LimitState<F, T>,
    }
}

pin_project_lite::pin_project! {
    #[project = LimitProj]
    enum LimitState<F, T> {
        // Holding a permit: the inner call.
        Running { #[pin] inner: F, permit: Option<tokio::sync::OwnedSemaphorePermit> },
        // Over the limit with no room to wait.
        Rejected { error: Option<Error> },
        // Waiting for a permit, then the inner call.
        Queued { inner: BoxFuture<'static, Result<T>> },
    }
}

impl<F, T> Future for LimitFuture<F, T>
where
    F: Future<Output = Result<T>>,
{
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            LimitProj::Running { inner, permit } => {
                let r = std::task::ready!(inner.poll(cx));
                drop(permit.take());
                Poll::Ready(r)
            }
            LimitProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| Error::internal("concurrency limit future polled again")))),
            LimitProj::Queued { inner } => inner.as_mut().poll(cx),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Retry

#[derive(Debug, Clone)]
struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
}

impl RetryPolicy {
    /// The [`Backoff`] after `attempt` failed attempts, but at least the server's
    /// `Retry-After` hint (also capped).
    fn delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        let hint = hint.unwrap_or(Duration::ZERO).min(self.backoff.max);
        self.backoff.delay(attempt).max(hint)
    }
}

/// Retries invocations that failed with a retryable error ([`Error::is_retryable`]:
/// overload, unavailability), with exponential backoff and jitter ([`Backoff`]), honouring an
/// [`Error::Overloaded`] `retry_after` hint. Only requests whose body is in memory are
/// retried (streams cannot be replayed).
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
}

impl RetryLayer {
    /// At most `max_attempts` attempts in all (1 = no retry); backoff from 10 ms up to 1 s.
    pub fn new(max_attempts: u32) -> Self {
        RetryLayer {
            policy: Arc::new(RetryPolicy {
                max_attempts: max_attempts.max(1),
                backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(1)),
            }),
        }
    }

    /// The backoff before the first retry (doubling after each attempt).
    pub fn base_delay(mut self, d: Duration) -> Self {
        Arc::make_mut(&mut self.policy).backoff.initial = d;
        self
    }

    /// The longest backoff.
    pub fn max_delay(mut self, d: Duration) -> Self {
        Arc::make_mut(&mut self.policy).backoff.max = d;
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry { inner, policy: self.policy.clone() }
    }
}

/// The service of [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
}

impl<S, R> Service<R> for Retry<S>
where
    S: Service<R, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    R: InvocationRequest,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<'static, Result<S::Response>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let policy = self.policy.clone();
        let copy = if policy.max_attempts > 1 { req.try_clone_request() } else { None };
        let first = inner.call(req);
        Box::pin(async move {
            let mut result = first.await;
            let mut attempt = 1;
            loop {
                let hint = match &result {
                    Err(e) if e.is_retryable() && attempt < policy.max_attempts => match e {
                        Error::Overloaded { retry_after, .. } => *retry_after,
                        _ => None,
                    },
                    _ => return result,
                };
                let Some(next) = copy.as_ref().and_then(|c| c.try_clone_request()) else {
                    return result;
                };
                tokio::time::sleep(policy.delay(attempt, hint)).await;
                attempt += 1;
                result = match inner.ready().await {
                    Ok(svc) => svc.call(next).await,
                    Err(e) => Err(e),
                };
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Metrics

/// Counts and times invocations under the names OpenFaaS dashboards use, into an
/// [`InvocationMetrics`] registry (sharded per thread; see [`crate::metrics`]):
/// `gateway_function_invocation_started{function_name}` (at the start),
/// `gateway_function_invocation_total{function_name,code}` and
/// `gateway_functions_seconds{function_name,code}`. `function_name` is `name.namespace`;
/// `code` is the HTTP status (for errors, [`Error::http_status`]).
#[derive(Debug, Clone, Default)]
pub struct MetricsLayer {
    registry: InvocationMetrics,
}

impl MetricsLayer {
    /// The metrics layer, counting into a registry of its own ([`MetricsLayer::registry`]).
    pub fn new() -> Self {
        MetricsLayer::default()
    }

    /// The metrics layer, counting into `registry` (which a gateway renders at `/metrics`).
    pub fn with_registry(registry: InvocationMetrics) -> Self {
        MetricsLayer { registry }
    }

    /// The registry counted into.
    pub fn registry(&self) -> &InvocationMetrics {
        &self.registry
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics { inner, registry: self.registry.clone() }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
    registry: InvocationMetrics,
}

/// Metric names (OpenFaaS's).
pub use crate::metrics::names as metric_names;

/// A function's metric handles, from the caller's [`FunctionHandles`] or the registry.
enum Counted {
    Handles(Arc<FunctionHandles>),
    Metrics(FunctionMetrics),
}

impl Counted {
    fn of<R: InvocationRequest>(req: &R, registry: &InvocationMetrics) -> Counted {
        if let Some(h) = req.extensions().get::<Arc<FunctionHandles>>() {
            return Counted::Handles(h.clone());
        }
        let unknown;
        let f = match req.function() {
            Some(f) => f,
            None => {
                unknown = FunctionRef::new("unknown", "");
                &unknown
            }
        };
        Counted::Metrics(registry.function(f))
    }

    fn get(&self) -> &FunctionMetrics {
        match self {
            Counted::Handles(h) => &h.metrics,
            Counted::Metrics(m) => m,
        }
    }
}

impl<S, R, B> Service<R> for Metrics<S>
where
    S: Service<R, Response = http::Response<B>, Error = Error>,
    R: InvocationRequest,
{
    type Response = http::Response<B>;
    type Error = Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let counted = Counted::of(&req, &self.registry);
        counted.get().started();
        let fault = req.extensions().get::<CallerFault>().cloned();
        MetricsFuture {
            inner: self.inner.call(req),
            start: std::time::Instant::now(),
            counted: Some(counted),
            fault,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Metrics`].
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        start: std::time::Instant,
        counted: Option<Counted>,
        fault: Option<CallerFault>,
    }
}

impl<F, B> Future for MetricsFuture<F>
where
    F: Future<Output = Result<http::Response<B>>>,
{
    type Output = Result<http::Response<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let r = match this.inner.poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => return Poll::Pending,
        };
        if let Some(counted) = this.counted.take() {
            // A failure caused by the caller's body counts as the caller's (413 or 400).
            let caller = || this.fault.as_ref().and_then(CallerFault::error);
            let code = match &r {
                Ok(resp) => resp.status(),
                Err(e) => caller().map_or_else(|| e.http_status(), |c| c.http_status()),
            };
            counted.get().finished(code.as_u16(), this.start.elapsed());
        }
        Poll::Ready(r)
    }
}

// ---------------------------------------------------------------------------------------
// Activator

/// What the layers here keep per function, for a caller that routes many invocations of one
/// function (a gateway's router): looked up once, then passed along in each invocation's
/// extensions as an `Arc<FunctionHandles>`, so that [`MetricsLayer`] and [`ActivatorLayer`]
/// find their state without a lookup. Without it they look the function up themselves.
#[derive(Debug, Clone)]
pub struct FunctionHandles {
    /// The function's invocation metrics.
    pub metrics: FunctionMetrics,
    /// The function's readiness, as the activator knows it.
    pub readiness: Arc<Readiness>,
}

impl FunctionHandles {
    /// The handles of `function` in `metrics` and `activator`.
    pub fn new(metrics: &InvocationMetrics, activator: &Activator, function: &FunctionRef) -> Self {
        FunctionHandles {
            metrics: metrics.function(function),
            readiness: activator.readiness(function),
        }
    }
}

/// Holds each invocation of a function that has no ready replica while the
/// [`Activator`] scales it from zero, then lets it through (503 naming the timeout when no
/// replica is ready in time). A function found ready passes at once, without a call to the
/// backend, for the activator's `ready_ttl`; a 404 from below makes it ask again.
#[derive(Clone)]
pub struct ActivatorLayer {
    activator: Activator,
    backend: Arc<dyn Deploy>,
}

impl std::fmt::Debug for ActivatorLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivatorLayer").field("activator", &self.activator).finish()
    }
}

impl ActivatorLayer {
    /// Scales functions of `backend` from zero with `activator`.
    pub fn new(backend: Arc<dyn Deploy>, activator: Activator) -> Self {
        ActivatorLayer { activator, backend }
    }

    /// The activator (to [`Activator::forget`] a function after managing it).
    pub fn activator(&self) -> &Activator {
        &self.activator
    }
}

impl<S> Layer<S> for ActivatorLayer {
    type Service = Activate<S>;
    fn layer(&self, inner: S) -> Activate<S> {
        Activate { inner, layer: self.clone() }
    }
}

/// The service of [`ActivatorLayer`].
#[derive(Clone)]
pub struct Activate<S> {
    inner: S,
    layer: ActivatorLayer,
}

impl<S> std::fmt::Debug for Activate<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activate").finish_non_exhaustive()
    }
}

/// The readiness an [`Activate`] future resets on a 404.
enum ReadyHint {
    Handles(Arc<FunctionHandles>),
    Readiness(Arc<Readiness>),
}

impl ReadyHint {
    fn get(&self) -> &Arc<Readiness> {
        match self {
            ReadyHint::Handles(h) => &h.readiness,
            ReadyHint::Readiness(r) => r,
        }
    }
}

impl<S> Service<Invocation> for Activate<S>
where
    S: Service<Invocation, Response = Response, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Error;
    type Future = ActivateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Invocation) -> Self::Future {
        let activator = &self.layer.activator;
        let hint = match req.request.extensions().get::<Arc<FunctionHandles>>() {
            Some(h) => ReadyHint::Handles(h.clone()),
            None => ReadyHint::Readiness(activator.readiness(&req.function)),
        };
        if activator.is_ready(hint.get()) {
            let state = ActivateState::Ready { inner: self.inner.call(req), hint: Some(hint) };
            return ActivateFuture { state };
        }
        let inner = take_ready(&mut self.inner);
        let layer = self.layer.clone();
        let state = ActivateState::Activating {
            inner: Box::pin(async move {
                let activator = &layer.activator;
                let f = req.function.clone();
                activator.activate_with(&*layer.backend, &f, hint.get()).await?;
                let r = inner.oneshot(req).await;
                if matches!(r, Err(Error::NotFound { .. })) {
                    activator.forget(&f);
                }
                r
            }),
        };
        ActivateFuture { state }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Activate`].
    pub struct ActivateFuture<F> {
        #[pin]
        state: ActivateState<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = ActivateProj]
    enum ActivateState<F> {
        // The function is known ready: the inner call.
        Ready { #[pin] inner: F, hint: Option<ReadyHint> },
        // Waiting for the function to scale from zero, then the inner call.
        Activating { inner: BoxFuture<'static, Result<Response>> },
    }
}

impl<F> Future for ActivateFuture<F>
where
    F: Future<Output = Result<Response>>,
{
    type Output = Result<Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ActivateProj::Ready { inner, hint } => {
                let r = std::task::ready!(inner.poll(cx));
                if let (Err(Error::NotFound { .. }), Some(hint)) = (&r, hint.take()) {
                    hint.get().forget();
                }
                Poll::Ready(r)
            }
            ActivateProj::Activating { inner } => inner.as_mut().poll(cx),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Trace

/// Runs each invocation in a `tracing` span `invocation` (level DEBUG, as tower-http's
/// spans are, so that a subscriber at the usual `info` level pays nothing for it) with fields
/// `function` (`name.namespace`), `invocation_id`, and, once done, `status` (the HTTP status
/// code) or `error`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer {
    _priv: (),
}

impl TraceLayer {
    /// The trace layer.
    pub fn new() -> Self {
        TraceLayer { _priv: () }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

/// The service of [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S, R, B> Service<R> for Trace<S>
where
    S: Service<R, Response = http::Response<B>, Error = Error>,
    R: InvocationRequest,
{
    type Response = http::Response<B>;
    type Error = Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let span = tracing::debug_span!(
            "invocation",
            function = tracing::field::Empty,
            invocation_id = tracing::field::Empty,
            status = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        if !span.is_disabled() {
            if let Some(f) = req.function() {
                span.record("function", tracing::field::display(f));
            }
            if let Some(id) = req.invocation_id() {
                span.record("invocation_id", tracing::field::display(id));
            }
        }
        let inner = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        TraceFuture { inner, span }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Trace`].
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
    }
}

impl<F, B> Future for TraceFuture<F>
where
    F: Future<Output = Result<http::Response<B>>>,
{
    type Output = Result<http::Response<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _enter = this.span.enter();
        let r = match this.inner.poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => return Poll::Pending,
        };
        if !this.span.is_disabled() {
            match &r {
                Ok(resp) => {
                    this.span.record("status", resp.status().as_u16());
                }
                Err(e) => {
                    this.span.record("status", e.http_status().as_u16());
                    this.span.record("error", tracing::field::display(e));
                }
            }
        }
        Poll::Ready(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_an_exponential_cap_and_honours_hints() {
        let p = RetryPolicy {
            max_attempts: 10,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(100)),
        };
        for _ in 0..200 {
            assert!(p.delay(1, None) <= Duration::from_millis(10));
            assert!(p.delay(2, None) <= Duration::from_millis(20));
            assert!(p.delay(9, None) <= Duration::from_millis(100));
            assert!(p.delay(40, None) <= Duration::from_millis(100), "no overflow");
            assert!(p.delay(1, Some(Duration::from_millis(50))) >= Duration::from_millis(50));
            assert_eq!(p.delay(1, Some(Duration::from_secs(60))), Duration::from_millis(100));
        }
        let spread: std::collections::BTreeSet<_> = (0..50).map(|_| p.delay(4, None)).collect();
        assert!(spread.len() > 1, "jitter varies the delay");
    }

    #[test]
    fn function_requests_expose_their_context() {
        let mut req = http::Request::new(Body::from("x"));
        assert!(req.function().is_none() && req.invocation_id().is_none());
        let id = InvocationId::new();
        req.extensions_mut().insert(Context {
            id: Some(id.clone()),
            function: Some(FunctionRef::new("f", "ns")),
            ..Default::default()
        });
        *req.uri_mut() = "/p?q=1".parse().unwrap();
        assert_eq!(req.function(), Some(&FunctionRef::new("f", "ns")));
        assert_eq!(req.invocation_id(), Some(&id));
        let copy = req.try_clone_request().unwrap();
        assert_eq!(copy.uri(), "/p?q=1");
        assert_eq!(copy.invocation_id(), Some(&id));
        assert_eq!(copy.body().as_bytes(), Some(&b"x"[..]));
        let streamed = http::Request::new(Body::from_stream(futures::stream::empty()));
        assert!(streamed.try_clone_request().is_none());
    }
}

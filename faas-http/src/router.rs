//! The routes: [`Router`], a tower `Service`, and [`Gateway`], the default stack of layers
//! around it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use faas_core::invocation::WaitBudget;
use faas_core::layers::{
    Activate, Activator, ActivatorLayer, ConcurrencyLimit, ConcurrencyLimitLayer, FunctionHandles,
    InvocationMetrics, Metrics, MetricsLayer, Timeout, TimeoutLayer, Trace, TraceLayer,
};
use faas_core::prelude::*;
use faas_core::spec::{validate_secret_name, DEFAULT_NAMESPACE};
use faas_core::state::{MemoryStateStore, StateStore};
use faas_core::util::{format_duration, FastBuildHasher};
use faas_core::whisk::record::Record;
use faas_core::whisk::{ActivationLayer, ActivationLog, EntityStore, Whisk, WhiskConfig};
use faas_core::{
    Backend, Body, BoxError, CallerFault, Error, FunctionRef, FunctionSpec, Invocation,
    InvocationId, LogsRequest, QueuePublisher, QueuedInvocation, Request, Response, Result, Secret,
};
use faas_core::{InvokeService, ServiceInvoke};
use futures::future::BoxFuture;
use futures::StreamExt;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use tower::{Layer, Service, ServiceBuilder};

use crate::config::GatewayConfig;
use crate::history::{MetricsHistory, SLOT as HISTORY_SLOT};
use crate::layers::{
    BasicAuthLayer, BasicAuthService, BodyLimit, BodyLimitLayer, BodyLimitService, CrossSiteLayer,
    CrossSiteService, RequestSpan, RequestSpanLayer,
};
use crate::metrics::GatewayMetrics;
use crate::util::{parse_query, query_get, read_json, valid_route_name};
use crate::whisk::{WhiskApi, WhiskKey};
use crate::{portal, response};
use faas_core::queue::ActivationStore;

/// `X-Call-Id`.
pub const X_CALL_ID: &str = "x-call-id";
/// `X-Start-Time` (Unix time in nanoseconds when the gateway received the request).
pub const X_START_TIME: &str = "x-start-time";
/// `X-Duration-Seconds` (time until the function's response headers).
pub const X_DURATION_SECONDS: &str = "x-duration-seconds";
/// `X-Callback-Url`.
pub const X_CALLBACK_URL: &str = "x-callback-url";

struct Inner {
    invoker: Arc<dyn Backend>,
    /// The core's layers over the backend (see [`InvokeStack`]): what `/function/*` and the
    /// async worker invoke through.
    stack: InvokeStack,
    /// The stack's activator (forgotten functions after deploys, scales and removals).
    activator: Activator,
    config: GatewayConfig,
    metrics: GatewayMetrics,
    /// The last 15 minutes of each function's metrics, for the portal.
    history: MetricsHistory,
    /// The activation records (what `/system/function/{name}/activations` lists).
    log: ActivationLog,
    queue: Option<Arc<dyn QueuePublisher>>,
    activations: Option<Arc<dyn ActivationStore>>,
    _worker: Option<faas_queue::WorkerHandle>,
    /// The OpenWhisk API (`/api/v1`).
    whisk: WhiskApi,
    /// Functions routed to, by the name they were addressed with (only valid names are
    /// inserted, so a fast hasher is safe).
    routes: RwLock<HashMap<Box<str>, Arc<Routed>, FastBuildHasher>>,
}

/// The default invocation stack of a gateway, outermost first: trace, metrics (OpenFaaS's
/// names), a gateway-wide concurrency limit, the activation record of every call admitted
/// ([`ActivationLayer`]), the activator (scale from zero), the upstream
/// timeout, then the backend (or the layers given to [`GatewayBuilder::invoke_layer`] over
/// it). Every layer is always ready.
pub type InvokeStack = Trace<Metrics<ConcurrencyLimit<Record<Activate<Timeout<InvokeService>>>>>>;

/// What the gateway keeps of a function it has routed to: the parsed reference and the
/// layers' handles on it.
struct Routed {
    fref: FunctionRef,
    handles: FunctionHandles,
}

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The most functions whose routing the gateway remembers (the cache starts over beyond).
const MAX_ROUTES: usize = 10_000;

/// The gateway's routes (the OpenFaaS gateway API that `faas-cli` calls) over an `Arc<dyn Backend>`, as a tower
/// `Service`. No auth or body limit of its own: [`Gateway::service`] adds those layers.
///
/// Each clone keeps a small cache of its own of the functions it routed to (`serve` gives
/// every connection its own clone), so that the warm path writes no lock or reference count
/// that copies on other threads write too.
pub struct Router {
    inner: Arc<Inner>,
    local: Arc<Local>,
    /// This copy's clone of the invocation stack.
    stack: InvokeStack,
}

impl Clone for Router {
    fn clone(&self) -> Self {
        Router::over(self.inner.clone())
    }
}

/// What one copy of the router keeps to itself.
struct Local {
    inner: Arc<Inner>,
    /// The same entries as [`Inner::routes`], as this copy met them, each behind a handle
    /// of this copy's own.
    routes: Mutex<HashMap<Box<str>, Arc<LocalRoute>, FastBuildHasher>>,
}

/// This router copy's handles on a shared [`Routed`] entry (cloned per request instead of
/// the shared entry).
struct LocalRoute {
    routed: Arc<Routed>,
    /// Passed along with each invocation, for the layers.
    handles: Arc<FunctionHandles>,
}

impl Local {
    /// The routing of `name`: this copy's, else the gateway's, else a new one.
    fn route(&self, name: &str) -> Result<Arc<LocalRoute>> {
        if let Some(r) = self.routes.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(r);
        }
        let routed = self.inner.routed(name)?;
        let local = Arc::new(LocalRoute { handles: Arc::new(routed.handles.clone()), routed });
        if let Ok(mut m) = self.routes.lock() {
            if m.len() >= MAX_ROUTES && !m.contains_key(name) {
                m.clear();
            }
            m.insert(name.into(), local.clone());
        }
        Ok(local)
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("provider", &self.inner.invoker.info()).finish()
    }
}

/// The whole default stack of a [`Gateway`] as one service (what [`Gateway::service`]
/// returns): concrete types all the way down, so a request is not boxed at every layer.
/// Cheap to clone; always ready.
#[derive(Clone)]
pub struct GatewayService {
    stack: Stack,
}

type OpenStack = RequestSpan<CrossSiteService<BodyLimitService<Router>>>;
type AuthStack = RequestSpan<CrossSiteService<BasicAuthService<BodyLimitService<Router>>>>;

#[derive(Clone)]
enum Stack {
    Open(OpenStack),
    Auth(AuthStack),
}

impl std::fmt::Debug for GatewayService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = matches!(self.stack, Stack::Auth(_));
        f.debug_struct("GatewayService").field("basic_auth", &auth).finish_non_exhaustive()
    }
}

impl Service<Request> for GatewayService {
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::Either<
        <OpenStack as Service<Request>>::Future,
        <AuthStack as Service<Request>>::Future,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<std::result::Result<(), Infallible>> {
        // Every layer of the stack is always ready (the router answers overload itself).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match &mut self.stack {
            Stack::Open(s) => futures::future::Either::Left(s.call(req)),
            Stack::Auth(s) => futures::future::Either::Right(s.call(req)),
        }
    }
}

/// A gateway's invocation stack ([`InvokeStack`]) with the state its layers share: the
/// metrics registry `/metrics` renders and the activator that management routes tell about
/// changes. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct GatewayStack {
    service: InvokeStack,
    registry: InvocationMetrics,
    activator: Activator,
}

impl std::fmt::Debug for GatewayStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayStack").field("activator", &self.activator).finish_non_exhaustive()
    }
}

impl GatewayStack {
    fn new(
        invoker: &Arc<dyn Backend>,
        invoke: Arc<dyn Invoke>,
        config: &GatewayConfig,
        log: &ActivationLog,
    ) -> Self {
        let registry = InvocationMetrics::new();
        let activator = Activator::new()
            .timeout(config.scale_from_zero_timeout)
            .ready_ttl(config.ready_cache_ttl);
        let service = ServiceBuilder::new()
            .layer(TraceLayer::new())
            .layer(MetricsLayer::with_registry(registry.clone()))
            .layer(ConcurrencyLimitLayer::new(config.max_in_flight, 0))
            .layer(
                ActivationLayer::new(log.clone()).every_invocation(config.record_every_invocation),
            )
            .layer(ActivatorLayer::new(invoker.clone(), activator.clone()))
            .layer(TimeoutLayer::new(config.upstream_timeout).named("gateway upstream"))
            .service(InvokeService::new(invoke));
        GatewayStack { service, registry, activator }
    }

    /// The stack as a tower service.
    pub fn service(&self) -> InvokeStack {
        self.service.clone()
    }

    /// The stack as an [`Invoke`]: what a queue worker invokes through, so that async calls
    /// take the sync path's layers (metrics, activator, limits, timeout).
    pub fn invoke(&self) -> Arc<dyn Invoke> {
        Arc::new(ServiceInvoke::new(self.service.clone()))
    }
}

/// Builds a [`Gateway`].
pub struct GatewayBuilder {
    invoker: Arc<dyn Backend>,
    invoke: Arc<dyn Invoke>,
    stack: Option<GatewayStack>,
    config: GatewayConfig,
    queue: Option<Arc<dyn QueuePublisher>>,
    activations: Option<Arc<dyn ActivationStore>>,
    log: ActivationLog,
    whisk_store: Option<Arc<dyn StateStore>>,
    whisk_keys: Vec<WhiskKey>,
    whisk_config: WhiskConfig,
    feed_providers: Vec<(String, String, Arc<dyn faas_core::whisk::feeds::FeedProvider>)>,
}

impl GatewayBuilder {
    /// Where the activation record of every invocation goes (what `/api/v1/.../activations`
    /// lists). Default: a log in memory with the default retention.
    pub fn activation_log(mut self, log: ActivationLog) -> Self {
        self.log = log;
        self.stack = None;
        self
    }

    /// Where the OpenWhisk API keeps its entities (actions, packages, triggers, rules).
    /// Default: in memory.
    pub fn whisk_store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.whisk_store = Some(store);
        self
    }

    /// Allows an OpenWhisk key (`uuid:key` as basic auth) to call `/api/v1` in its
    /// namespace. With none given, the API needs no credentials and every caller is in
    /// namespace `guest`.
    pub fn whisk_key(mut self, key: WhiskKey) -> Self {
        self.whisk_keys.push(key);
        self
    }

    /// The OpenWhisk API's settings (blocking wait, payload limit).
    pub fn whisk_config(mut self, config: WhiskConfig) -> Self {
        self.whisk_config = config;
        self
    }

    /// Offers `provider` as the OpenWhisk feed action `/whisk.system/{package}/{action}`
    /// (as the `faas` binary built with `kafka` offers `messaging/kafkaFeed`); the feeds
    /// kept in the store of such an action start again when the gateway is built.
    pub fn feed_provider(
        mut self,
        package: &str,
        action: &str,
        provider: Arc<dyn faas_core::whisk::feeds::FeedProvider>,
    ) -> Self {
        self.feed_providers.push((package.to_string(), action.to_string(), provider));
        self
    }

    /// Sets the configuration.
    pub fn config(mut self, config: GatewayConfig) -> Self {
        self.config = config;
        self.stack = None;
        self
    }

    /// The invocation stack the gateway will use, built from the configuration and the
    /// layers given so far (call it after [`GatewayBuilder::config`] and
    /// [`GatewayBuilder::invoke_layer`], which start it over): give
    /// [`GatewayStack::invoke`] to the worker of a queue set up outside the gateway
    /// ([`crate::queue::AsyncQueue`]) so that its calls take the same path.
    pub fn stack(&mut self) -> GatewayStack {
        let stack = self.stack.take().unwrap_or_else(|| {
            GatewayStack::new(&self.invoker, self.invoke.clone(), &self.config, &self.log)
        });
        self.stack = Some(stack.clone());
        stack
    }

    /// Invokes functions (sync and async) through `layer` over the backend: any tower layer,
    /// or a `tower::ServiceBuilder` of several, over an [`InvokeService`], such as the
    /// layers of [`faas_core::layers`] (concurrency limits, retries, timeouts, metrics,
    /// tracing) or a user's own. Called again, the new layer wraps the earlier ones.
    /// Management routes (`/system/*`) go to the backend directly.
    pub fn invoke_layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<InvokeService>,
        L::Service:
            Service<Invocation, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
        <L::Service as Service<Invocation>>::Future: Send + 'static,
    {
        self.invoke = Arc::new(ServiceInvoke::new(layer.layer(InvokeService::new(self.invoke))));
        self.stack = None;
        self
    }

    /// Publishes async invocations to `queue`. Default (when built inside a tokio runtime):
    /// `faas-queue`'s in-memory queue with an in-process worker and activation store.
    pub fn queue(mut self, queue: Arc<dyn QueuePublisher>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Where `GET /system/activations/{id}` looks records up.
    pub fn activations(mut self, lookup: Arc<dyn ActivationStore>) -> Self {
        self.activations = Some(lookup);
        self
    }

    /// Builds the gateway.
    pub fn build(mut self) -> Gateway {
        let GatewayStack { service: stack, registry, activator } = self.stack();
        let invoke: Arc<dyn Invoke> = Arc::new(ServiceInvoke::new(stack.clone()));
        let (mut queue, mut activations, mut worker) = (self.queue, self.activations, None);
        if queue.is_none() && tokio::runtime::Handle::try_current().is_ok() {
            let q = faas_queue::MemoryQueue::with_limits(self.config.async_queue);
            let store: Arc<dyn ActivationStore> = match &activations {
                Some(s) => s.clone(),
                None => Arc::new(faas_queue::MemoryActivationStore::default()),
            };
            let config = faas_queue::WorkerConfig {
                max_payload_bytes: self.config.max_body_bytes,
                max_response_bytes: self.config.max_async_result_bytes,
                ..Default::default()
            };
            worker = Some(
                faas_queue::Worker::new(
                    invoke.clone(),
                    Arc::new(q.consumer()),
                    store.clone(),
                    config,
                )
                .with_dead_letters(Arc::new(q.dead_letters()))
                .spawn(),
            );
            queue = Some(Arc::new(faas_queue::TrackedPublisher::new(
                Arc::new(q.publisher()),
                store.clone(),
            )));
            activations = Some(store);
        }
        let whisk_store: Arc<dyn StateStore> =
            self.whisk_store.unwrap_or_else(|| Arc::new(MemoryStateStore::default()));
        let whisk = Whisk::new(
            EntityStore::new(whisk_store),
            self.log.clone(),
            invoke.clone(),
            self.invoker.clone(),
            self.whisk_config,
        );
        for (package, action, provider) in self.feed_providers {
            whisk.feeds().register(&package, &action, provider);
        }
        self.log.spawn_flusher(Duration::from_millis(200));
        if tokio::runtime::Handle::try_current().is_ok() {
            match whisk.restore_feeds() {
                Ok(0) => {}
                Ok(n) => tracing::info!("{n} feeds started again"),
                Err(e) => tracing::warn!("the kept feeds could not be read: {e}"),
            }
        }
        let router = Router::over(Arc::new(Inner {
            whisk: WhiskApi::new(whisk, self.whisk_keys),
            invoker: self.invoker,
            stack,
            activator,
            config: self.config,
            history: MetricsHistory::new(registry.clone()),
            log: self.log.clone(),
            metrics: GatewayMetrics::new(registry),
            queue,
            activations,
            _worker: worker,
            routes: RwLock::new(HashMap::default()),
        }));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // Histogram samples are kept until folded into buckets: fold them regularly,
            // for as long as the gateway lives.
            let weak = Arc::downgrade(&router.inner);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(METRICS_UPKEEP);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(inner) => inner.metrics.run_upkeep(),
                        None => return,
                    }
                }
            });
            // The history's samples: one per slot, with the replicas the backend lists.
            let weak = Arc::downgrade(&router.inner);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(HISTORY_SLOT);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let replicas: Vec<(FunctionRef, u64, u64)> = list_all(&inner)
                        .await
                        .into_iter()
                        .map(|st| {
                            let (d, r) = (st.replicas, st.available_replicas);
                            (FunctionRef::new(st.name, st.namespace), d, r)
                        })
                        .collect();
                    inner.history.sample(SystemTime::now(), &replicas);
                }
            });
        }
        let service = router.clone().layered();
        Gateway { router, service }
    }
}

/// The default gateway: [`Router`] inside [`RequestSpanLayer`], [`CrossSiteLayer`],
/// [`BasicAuthLayer`] (when configured) and [`BodyLimitLayer`]. Itself a tower `Service`.
#[derive(Clone)]
pub struct Gateway {
    router: Router,
    service: GatewayService,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("router", &self.router).finish()
    }
}

impl Gateway {
    /// Starts building a gateway over `invoker`.
    pub fn builder(invoker: Arc<dyn Backend>) -> GatewayBuilder {
        let invoke: Arc<dyn Invoke> = invoker.clone();
        GatewayBuilder {
            invoker,
            invoke,
            stack: None,
            config: GatewayConfig::default(),
            queue: None,
            activations: None,
            log: ActivationLog::default(),
            whisk_store: None,
            whisk_keys: Vec::new(),
            feed_providers: Vec::new(),
            whisk_config: WhiskConfig::default(),
        }
    }

    /// A gateway with the default configuration.
    pub fn new(invoker: Arc<dyn Backend>) -> Gateway {
        Gateway::builder(invoker).build()
    }

    /// The whole stack as a boxed service (what [`crate::serve`] runs).
    pub fn service(&self) -> GatewayService {
        self.service.clone()
    }

    /// The bare router, to stack other layers around.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.router.inner.metrics
    }
}

impl Service<Request> for Gateway {
    type Response = Response;
    type Error = Infallible;
    type Future = <GatewayService as Service<Request>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::result::Result<(), Infallible>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.service.call(req)
    }
}

impl Router {
    fn over(inner: Arc<Inner>) -> Router {
        let local = Arc::new(Local { inner: inner.clone(), routes: Mutex::default() });
        let stack = inner.stack.clone();
        Router { inner, local, stack }
    }

    fn layered(self) -> GatewayService {
        let config = &self.inner.config;
        let limit = BodyLimitLayer::new(config.max_body_bytes);
        let cross_site = CrossSiteLayer::new(config.cross_site.clone());
        let stack = match config.auth.clone() {
            Some(creds) => {
                let auth = BasicAuthLayer::new(creds).throttle(config.login_throttle);
                Stack::Auth(RequestSpanLayer.layer(cross_site.layer(auth.layer(limit.layer(self)))))
            }
            None => Stack::Open(RequestSpanLayer.layer(cross_site.layer(limit.layer(self)))),
        };
        GatewayService { stack }
    }
}

impl Service<Request> for Router {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, std::result::Result<Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<std::result::Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // A clone of the URI shares its bytes: the path stays borrowable while `req` moves.
        let uri = req.uri().clone();
        if let Some(rest) = uri.path().strip_prefix("/function/") {
            // The hot path: the request becomes an invocation that goes down this copy's
            // invocation stack, in a small future of its own (cheap to box and move: the
            // allocator's fast path is for blocks under 1 KiB). Only this copy's own
            // handles are cloned.
            let (name, suffix) = split_name(rest);
            let t0 = Instant::now();
            let route = match self.local.route(name) {
                Ok(r) => r,
                Err(e) => {
                    let stamp = Stamp::new(&call_id(req.headers()), t0);
                    return Box::pin(std::future::ready(Ok(stamp.error(&e))));
                }
            };
            let wait = self.inner.config.upstream_timeout / 2;
            let (inv, stamp, fault) = match prepare(&route, req, suffix, t0, wait) {
                Ok(p) => p,
                Err(resp) => return Box::pin(std::future::ready(Ok(*resp))),
            };
            // The stack is always ready (see `InvokeStack`).
            let call = self.stack.call(inv);
            return Box::pin(async move { Ok(finish(&stamp, fault, call.await)) });
        }
        let inner = self.inner.clone();
        Box::pin(async move { Ok(route(inner, req).await) })
    }
}

fn body_limit(req: &Request, inner: &Inner) -> usize {
    req.extensions().get::<BodyLimit>().map(|l| l.0).unwrap_or(inner.config.max_body_bytes)
}

async fn route(inner: Arc<Inner>, req: Request) -> Response {
    // A clone of the URI shares its bytes: the path stays borrowable while `req` moves on.
    let uri = req.uri().clone();
    let path = uri.path();
    let method = req.method().clone();
    // `/function/*` never gets here: `Router::call` takes it first.
    if let Some(rest) = path.strip_prefix("/async-function/") {
        let (name, suffix) = split_name(rest);
        return invoke_async(&inner, req, name, suffix).await;
    }
    if crate::whisk::is_whisk_path(path) {
        return inner.whisk.handle(req).await;
    }
    let result: Result<Response> = match (path, &method) {
        ("/healthz", &Method::GET | &Method::HEAD) => Ok(healthz(&inner)),
        ("/healthz", _) => Ok(response::method_not_allowed("GET")),
        ("/metrics", &Method::GET) => Ok(metrics(&inner).await),
        ("/metrics", _) => Ok(response::method_not_allowed("GET")),
        ("/system/info", &Method::GET) => Ok(info(&inner)),
        ("/system/info", _) => Ok(response::method_not_allowed("GET")),
        ("/system/functions", _) => functions(&inner, req).await,
        ("/system/secrets", _) => secrets(&inner, req).await,
        ("/system/history", &Method::GET) => {
            Ok(response::json(StatusCode::OK, &inner.history.overview(SystemTime::now())))
        }
        ("/system/history", _) => Ok(response::method_not_allowed("GET")),
        ("/system/queue", &Method::GET) => queue_depth(&inner).await,
        ("/system/queue", _) => Ok(response::method_not_allowed("GET")),
        (p, _) if p.starts_with("/system/whisk/") => Ok(inner.whisk.handle_portal(req).await),
        ("/system/stack", &Method::POST) => deploy_stack(&inner, req).await,
        ("/system/stack", _) => Ok(response::method_not_allowed("POST")),
        ("/system/logs", &Method::GET) => logs(&inner, req).await,
        ("/system/logs", _) => Ok(response::method_not_allowed("GET")),
        ("/system/namespaces", &Method::GET) => {
            inner.invoker.namespaces().await.map(|ns| response::json(StatusCode::OK, &ns))
        }
        ("/system/namespaces", _) => Ok(response::method_not_allowed("GET")),
        ("/", &Method::GET) | ("/ui", &Method::GET) => Ok(redirect("/ui/")),
        (p, m) if p.starts_with("/system/function/") => {
            if m == Method::GET {
                let rest = &p["/system/function/".len()..];
                match split_name(rest) {
                    (name, "/history") => function_history(&inner, req, name).await,
                    (name, "/activations") => function_activations(&inner, req, name),
                    (name, "") => function_status(&inner, req, name).await,
                    _ => Ok(response::text(StatusCode::NOT_FOUND, format!("no route for {p}\n"))),
                }
            } else {
                Ok(response::method_not_allowed("GET"))
            }
        }
        (p, m) if p.starts_with("/system/scale-function/") => {
            if m == Method::POST {
                let name = p["/system/scale-function/".len()..].to_string();
                scale(&inner, req, &name).await
            } else {
                Ok(response::method_not_allowed("POST"))
            }
        }
        (p, m) if p.starts_with("/system/activations/") => {
            if m == Method::GET {
                activation(&inner, &p["/system/activations/".len()..]).await
            } else {
                Ok(response::method_not_allowed("GET"))
            }
        }
        (p, &Method::GET) if p.starts_with("/ui/") => Ok(portal::asset(&p["/ui/".len()..])
            .unwrap_or_else(|| response::text(StatusCode::NOT_FOUND, "not found\n"))),
        _ => Ok(response::text(StatusCode::NOT_FOUND, format!("no route for {path}\n"))),
    };
    result.unwrap_or_else(|e| response::error(&e))
}

/// `GET /system/queue`: the async queue's depth and dead letters, in all and per
/// function ([`faas_core::queue::QueueDepth`]).
async fn queue_depth(inner: &Inner) -> Result<Response> {
    let Some(queue) = inner.queue.clone() else {
        return Err(Error::unavailable("no async queue is configured on this gateway"));
    };
    Ok(response::json(StatusCode::OK, &queue.depth().await?))
}

fn redirect(to: &'static str) -> Response {
    let mut r = response::empty(StatusCode::MOVED_PERMANENTLY);
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

fn split_name(rest: &str) -> (&str, &str) {
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}

impl Inner {
    fn fref(&self, name: &str) -> Result<FunctionRef> {
        if !valid_route_name(name) {
            return Err(Error::invalid(
                "function name",
                format!("{name:?} must match [-a-zA-Z_0-9.]+"),
            ));
        }
        Ok(FunctionRef::parse(name, &self.config.default_namespace))
    }

    fn namespace(&self, ns: Option<&str>) -> Result<String> {
        match ns.filter(|s| !s.is_empty()) {
            Some(ns) => {
                faas_core::util::validate_dns1123_label(ns)
                    .map_err(|r| Error::invalid("namespace", r))?;
                Ok(ns.to_string())
            }
            None => Ok(self.config.default_namespace.clone()),
        }
    }

    /// The routing of `name` (`name` or `name.namespace`), shared by the router copies.
    fn routed(&self, name: &str) -> Result<Arc<Routed>> {
        if let Some(r) = self.routes.read().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(r);
        }
        let fref = self.fref(name)?;
        let registry = self.metrics.invocations();
        let handles = FunctionHandles::new(registry, &self.activator, &fref);
        let r = Arc::new(Routed { fref, handles });
        if let Ok(mut m) = self.routes.write() {
            if m.len() >= MAX_ROUTES && !m.contains_key(name) {
                m.clear();
            }
            return Ok(m.entry(name.into()).or_insert(r).clone());
        }
        Ok(r)
    }

    /// Forgets that `f` was ready (after a deploy, update, scale or removal).
    fn forget(&self, f: &FunctionRef) {
        self.activator.forget(f);
    }
}

fn call_id(headers: &HeaderMap) -> InvocationId {
    headers
        .get(X_CALL_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(InvocationId::from_string)
        .unwrap_or_default()
}

fn epoch_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn set_header(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// `X-Duration-Seconds`: seconds with microsecond precision (`0.000124`).
/// Writes `n` in decimal at the end of `buf` (which must hold its digits: 39 for any
/// `u128`); returns where the digits start.
fn decimal_into(buf: &mut [u8], mut n: u128) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return i;
        }
    }
}

fn duration_value(d: Duration) -> HeaderValue {
    let us = d.as_micros();
    let (secs, micros) = (us / 1_000_000, us % 1_000_000);
    // Written by hand into a stack buffer (this runs on every request): digits of the
    // seconds, a dot, six digits of microseconds.
    let mut buf = [0u8; 48];
    let mut i = buf.len();
    let mut m = micros;
    for _ in 0..6 {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
    }
    i -= 1;
    buf[i] = b'.';
    i = decimal_into(&mut buf[..i], secs);
    HeaderValue::from_bytes(&buf[i..]).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Removes the hop-by-hop headers (the one list, `faas_core::instance`) and `Host`;
/// returns the `Host` value.
fn strip_hop_by_hop(h: &mut HeaderMap) -> Option<HeaderValue> {
    let host = h.remove(header::HOST);
    faas_core::instance::strip_hop_by_hop(h);
    host
}

/// Removes the headers a function's response must not pass on (hyper frames the body).
fn strip_response_framing(h: &mut HeaderMap) {
    const FRAMING: [HeaderName; 3] =
        [header::CONNECTION, HeaderName::from_static("keep-alive"), header::TRANSFER_ENCODING];
    if h.keys().any(|k| FRAMING.contains(k)) {
        for n in &FRAMING {
            h.remove(n);
        }
    }
}

/// The headers every synchronous invocation's response gets (and the function sees).
struct Stamp {
    id: Option<HeaderValue>,
    start: HeaderValue,
    t0: Instant,
}

impl Stamp {
    /// The stamp of a request that arrived at `t0`.
    fn new(id: &InvocationId, t0: Instant) -> Stamp {
        let received = SystemTime::now();
        let nanos = u64::try_from(epoch_nanos(received)).unwrap_or(0);
        // Both values in one buffer that the header values share (and their copies in the
        // request and the response).
        let id = id.as_str().as_bytes();
        let mut buf = Vec::with_capacity(id.len() + 20);
        buf.extend_from_slice(id);
        let mut digits = [0u8; 40];
        let at = decimal_into(&mut digits, u128::from(nanos));
        buf.extend_from_slice(&digits[at..]);
        let buf = Bytes::from(buf);
        Stamp {
            id: HeaderValue::from_maybe_shared(buf.slice(..id.len())).ok(),
            start: HeaderValue::from_maybe_shared(buf.slice(id.len()..))
                .unwrap_or_else(|_| HeaderValue::from_static("0")),
            t0,
        }
    }

    fn apply(&self, mut r: Response, took: Duration) -> Response {
        let h = r.headers_mut();
        if let Some(v) = &self.id {
            h.insert(HeaderName::from_static(X_CALL_ID), v.clone());
        }
        h.insert(HeaderName::from_static(X_START_TIME), self.start.clone());
        h.insert(HeaderName::from_static(X_DURATION_SECONDS), duration_value(took));
        r
    }

    fn error(&self, e: &Error) -> Response {
        self.apply(response::error(e), self.t0.elapsed())
    }
}

/// The request as the function receives it: the path suffix and query, the headers less
/// hop-by-hop ones, plus `X-Forwarded-Host`, `X-Call-Id` and `X-Start-Time`.
fn forwarded(req: Request, suffix: &str, stamp: &Stamp) -> Result<Request> {
    let (parts, body) = req.into_parts();
    let path = if suffix.is_empty() { "/" } else { suffix };
    let uri = match parts.uri.query() {
        None if suffix.is_empty() => Ok(http::Uri::from_static("/")),
        None => path.parse::<http::Uri>(),
        Some(q) => format!("{path}?{q}").parse::<http::Uri>(),
    }
    .map_err(|e| Error::invalid("path", e.to_string()))?;
    let mut fwd = http::Request::new(body);
    *fwd.method_mut() = parts.method;
    *fwd.uri_mut() = uri;
    let mut headers = parts.headers;
    let host = strip_hop_by_hop(&mut headers);
    let forwarded_host =
        host.or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    if let Some(host) = forwarded_host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    if let Some(v) = &stamp.id {
        headers.insert(HeaderName::from_static(X_CALL_ID), v.clone());
    }
    headers.insert(HeaderName::from_static(X_START_TIME), stamp.start.clone());
    *fwd.headers_mut() = headers;
    Ok(fwd)
}

/// Builds the invocation of a function: call id, the forwarded request, and the layers'
/// handles on the function. `wait` bounds how long the backend may hold it waiting for a
/// busy instance ([`WaitBudget`]): less than the upstream timeout, so that wait ends in a
/// 429, not a 504.
fn prepare(
    route: &LocalRoute,
    req: Request,
    suffix: &str,
    t0: Instant,
    wait: Duration,
) -> std::result::Result<(Invocation, Stamp, Option<CallerFault>), Box<Response>> {
    let id = call_id(req.headers());
    let stamp = Stamp::new(&id, t0);
    let fault = req.extensions().get::<CallerFault>().cloned();
    let mut request = match forwarded(req, suffix, &stamp) {
        Ok(r) => r,
        Err(e) => return Err(Box::new(stamp.error(&e))),
    };
    let ext = request.extensions_mut();
    ext.insert(WaitBudget(wait));
    ext.insert(route.handles.clone());
    if let Some(f) = &fault {
        ext.insert(f.clone());
    }
    Ok((Invocation { id, function: route.routed.fref.clone(), request }, stamp, fault))
}

/// The response to a finished invocation, with the stamp headers.
fn finish(stamp: &Stamp, fault: Option<CallerFault>, outcome: Result<Response>) -> Response {
    let resp = match outcome {
        Ok(mut r) => {
            strip_response_framing(r.headers_mut());
            r
        }
        Err(e) => {
            // A failure caused by the caller's body is answered as the caller's.
            match fault.as_ref().and_then(CallerFault::error) {
                Some(caller) => response::error(&caller),
                None => {
                    tracing::debug!(error = %e, "invocation failed");
                    response::error(&e)
                }
            }
        }
    };
    stamp.apply(resp, stamp.t0.elapsed())
}

fn validate_callback(url: &str) -> Result<()> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| Error::invalid("X-Callback-Url", e.to_string()))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(()),
        (Some("https"), Some(_)) => Err(Error::invalid(
            "X-Callback-Url",
            "https callbacks are not supported by this gateway; use http",
        )),
        _ => Err(Error::invalid("X-Callback-Url", format!("{url:?} is not an absolute http URL"))),
    }
}

/// The header that carries a caller's `X-Call-Id` on to the function and back on the
/// callback when an async call is stored under another id: a reused `X-Call-Id` (one that
/// names a call already) gets a new id, so the earlier call's record is never overwritten.
pub const X_CALLER_CALL_ID: &str = "x-caller-call-id";

/// The id an async call is stored under: the caller's `X-Call-Id` when it names no record
/// yet, else a new one, with the caller's then carried on as `X-Caller-Call-Id`.
///
/// OpenFaaS callers set `X-Call-Id` themselves to trace a call through their systems, and
/// reuse it (a retry, one trace id for several calls). Refusing a reused id with a 409
/// would break those callers; storing the new call under it would overwrite the older
/// call's record (and after a restart a settled record under that id would make the
/// durable queue skip the new call as already done). So the record, the 202's `X-Call-Id`
/// and what the function and the callback see as `X-Call-Id` are the new, unique id, and
/// the caller's value is not lost. Two calls racing with the same new id are caught by
/// the durable queue itself (409 naming `X-Call-Id` for the second).
async fn async_call_id(inner: &Inner, headers: &HeaderMap) -> (InvocationId, Option<String>) {
    let id = call_id(headers);
    let Some(store) = &inner.activations else { return (id, None) };
    if headers.get(X_CALL_ID).is_none() {
        return (id, None);
    }
    match store.get(&id).await {
        Ok(None) => (id, None),
        // Taken (or unknown because the store failed: a fresh id is safe either way).
        _ => (InvocationId::new(), Some(id.as_str().to_string())),
    }
}

async fn invoke_async(inner: &Inner, req: Request, name: &str, suffix: &str) -> Response {
    let (id, caller_id) = async_call_id(inner, req.headers()).await;
    let with_id = |mut r: Response| {
        set_header(r.headers_mut(), X_CALL_ID, id.as_str());
        r
    };
    let result: Result<()> = async {
        let f = inner.fref(name)?;
        let Some(queue) = inner.queue.clone() else {
            return Err(Error::unavailable("no async queue is configured on this gateway"));
        };
        // The function must exist; a ready one is known without its whole status.
        if !inner.activator.ready_now(&*inner.invoker, &f).await? {
            inner.invoker.status(&f).await?;
        }
        let limit = body_limit(&req, inner);
        let (parts, body) = req.into_parts();
        let callback_url = match parts.headers.get(X_CALLBACK_URL) {
            Some(v) => {
                let s = v
                    .to_str()
                    .map_err(|_| Error::invalid("X-Callback-Url", "must be visible ASCII"))?;
                validate_callback(s)?;
                Some(s.to_string())
            }
            None => None,
        };
        let body = body.collect_limited(limit).await?;
        let headers = parts
            .headers
            .iter()
            .filter(|(k, _)| {
                !faas_core::instance::is_hop_by_hop(k)
                    && *k != header::HOST
                    && k.as_str() != X_CALLBACK_URL
            })
            .filter(|(k, _)| k.as_str() != X_CALLER_CALL_ID)
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_string(), v.to_string())))
            .chain(caller_id.map(|c| (X_CALLER_CALL_ID.to_string(), c)))
            .chain(std::iter::once((X_CALL_ID.to_string(), id.to_string())))
            .collect::<Vec<_>>();
        let item = QueuedInvocation {
            call_id: id.clone(),
            function: f.name.clone(),
            namespace: f.namespace.clone(),
            method: parts.method.to_string(),
            path: if suffix.is_empty() { "/".into() } else { suffix.to_string() },
            query: parts.uri.query().unwrap_or("").to_string(),
            headers: dedup_call_id(headers),
            body,
            callback_url,
            attempt: 0,
            queued_at: faas_core::activation::epoch_millis(SystemTime::now()),
        };
        queue.publish(item).await
    }
    .await;
    match result {
        Ok(()) => with_id(response::empty(StatusCode::ACCEPTED)),
        Err(e) => with_id(response::error(&e)),
    }
}

fn dedup_call_id(mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
    // Keep only the last X-Call-Id (the one the gateway assigned).
    if let Some(last) = headers.iter().rposition(|(k, _)| k == X_CALL_ID) {
        let keep = headers.remove(last);
        headers.retain(|(k, _)| k != X_CALL_ID);
        headers.push(keep);
    }
    headers
}

/// Every function of every namespace the backend lists within 2 s (those listed by then).
async fn list_all(inner: &Inner) -> Vec<faas_core::FunctionStatus> {
    let mut all = Vec::new();
    let collect = async {
        if let Ok(namespaces) = inner.invoker.namespaces().await {
            for ns in namespaces {
                if let Ok(list) = inner.invoker.list(&ns).await {
                    all.extend(list);
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), collect).await;
    all
}

async fn metrics(inner: &Inner) -> Response {
    for st in list_all(inner).await {
        inner.metrics.service_count(&format!("{}.{}", st.name, st.namespace), st.replicas);
    }
    if let Some(q) = &inner.queue {
        inner.metrics.queue_healthy(q.health().is_ok());
    }
    let mut r = response::text(StatusCode::OK, inner.metrics.render());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn info(inner: &Inner) -> Response {
    let p = inner.invoker.info();
    // The commit this gateway (and the backends linked with it) was built from (build.rs).
    let sha = option_env!("FAAS_GIT_SHA").unwrap_or("unknown");
    let v = serde_json::json!({
        "provider": {
            "provider": p.provider,
            "orchestration": p.orchestration,
            "version": { "sha": sha, "release": p.version },
        },
        "version": {
            "sha": sha,
            "release": env!("CARGO_PKG_VERSION"),
            "commit_message": "",
        },
        "arch": std::env::consts::ARCH,
    });
    response::json(StatusCode::OK, &v)
}

/// `/healthz`: 200 `OK`, or 503 naming why the async queue cannot take calls now.
fn healthz(inner: &Inner) -> Response {
    match inner.queue.as_ref().map_or(Ok(()), |q| q.health()) {
        Ok(()) => response::text(StatusCode::OK, "OK\n"),
        Err(e) => response::text(StatusCode::SERVICE_UNAVAILABLE, format!("async queue: {e}\n")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteFunction {
    function_name: String,
    #[serde(default)]
    namespace: Option<String>,
}

async fn functions(inner: &Inner, req: Request) -> Result<Response> {
    let q = parse_query(req.uri().query());
    let limit = body_limit(&req, inner);
    match req.method().clone() {
        Method::GET => {
            let ns = inner.namespace(query_get(&q, "namespace"))?;
            let list = inner.invoker.list(&ns).await?;
            for st in &list {
                inner.metrics.service_count(&format!("{}.{}", st.name, st.namespace), st.replicas);
            }
            Ok(response::json(StatusCode::OK, &list))
        }
        m @ (Method::POST | Method::PUT) => {
            let mut spec: FunctionSpec = read_json(req.into_body(), limit).await?;
            let spec = checked_spec(inner, &mut spec, query_get(&q, "namespace")).map(|()| spec)?;
            let f = spec.function_ref();
            if m == Method::POST {
                tracing::info!(function = %f, image = %spec.image, "deploying");
                inner.invoker.deploy(spec).await?;
            } else {
                tracing::info!(function = %f, image = %spec.image, "updating");
                inner.invoker.update(spec).await?;
            }
            inner.forget(&f);
            Ok(response::empty(StatusCode::ACCEPTED))
        }
        Method::DELETE => {
            let d: DeleteFunction = read_json(req.into_body(), limit).await?;
            if d.function_name.is_empty() {
                return Err(Error::invalid("functionName", "must not be empty"));
            }
            let ns = inner.namespace(d.namespace.as_deref().or(query_get(&q, "namespace")))?;
            let f = FunctionRef::new(d.function_name, ns);
            inner.invoker.remove(&f).await?;
            inner.forget(&f);
            tracing::info!(function = %f, "removed");
            Ok(response::empty(StatusCode::ACCEPTED))
        }
        _ => Ok(response::method_not_allowed("GET, POST, PUT, DELETE")),
    }
}

/// Completes and checks a spec to deploy: the namespace from the query (or the gateway's
/// default), the spec's own validation, and a timeout within the gateway's.
fn checked_spec(inner: &Inner, spec: &mut FunctionSpec, query_ns: Option<&str>) -> Result<()> {
    if spec.namespace.as_deref().is_none_or(str::is_empty) {
        spec.namespace = match query_ns {
            Some(ns) if !ns.is_empty() => Some(ns.to_string()),
            _ if inner.config.default_namespace != DEFAULT_NAMESPACE => {
                Some(inner.config.default_namespace.clone())
            }
            _ => None,
        };
    }
    spec.validate()?;
    if let Some(t) = spec.timeout {
        let g = inner.config.upstream_timeout;
        if t > g {
            return Err(Error::invalid(
                "timeout",
                format!(
                    "the function timeout {} exceeds the gateway's upstream timeout {}; \
                     lower it or raise the gateway's upstream_timeout so they agree",
                    format_duration(t),
                    format_duration(g)
                ),
            ));
        }
    }
    Ok(())
}

/// `POST /system/stack` (our extension, what the portal's stack form sends): deploys, or
/// updates, every function of the stack file in the body (YAML), after checking them all
/// first, so that one bad function deploys none. Errors name the field as `faas deploy -f`
/// does (`functions.NAME.FIELD`). Answers 202 with `{"deployed": [names]}`.
async fn deploy_stack(inner: &Inner, req: Request) -> Result<Response> {
    let q = parse_query(req.uri().query());
    let limit = body_limit(&req, inner);
    let body = req.into_body().collect_limited(limit).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Error::invalid("stack", "the stack file is not UTF-8 text"))?;
    let stack = crate::stack::Stack::parse(text)?;
    if stack.functions.is_empty() {
        return Err(Error::invalid("functions", "the stack file has no functions"));
    }
    if let Some((name, _)) = stack.functions.iter().find(|(_, f)| !f.environment_file.is_empty()) {
        return Err(Error::invalid(
            format!("functions.{name}.environment_file"),
            "a pasted stack file cannot name other files: put the variables under environment",
        ));
    }
    let mut specs = stack.specs()?;
    for spec in &mut specs {
        let name = spec.name.clone();
        checked_spec(inner, spec, query_get(&q, "namespace")).map_err(|e| match e {
            Error::InvalidSpec { field, reason } => {
                Error::invalid(format!("functions.{name}.{field}"), reason)
            }
            other => other,
        })?;
    }
    let mut deployed = Vec::new();
    for spec in specs {
        let f = spec.function_ref();
        tracing::info!(function = %f, image = %spec.image, "deploying from a stack file");
        match inner.invoker.deploy(spec.clone()).await {
            Ok(()) => {}
            Err(Error::AlreadyExists { .. }) => inner.invoker.update(spec).await?,
            Err(e) => return Err(e),
        }
        inner.forget(&f);
        deployed.push(f.name);
    }
    Ok(response::json(StatusCode::ACCEPTED, &serde_json::json!({ "deployed": deployed })))
}

fn fref_with_ns(inner: &Inner, name: &str, ns: Option<&str>) -> Result<FunctionRef> {
    let mut f = inner.fref(name)?;
    if !name.contains('.') {
        f.namespace = inner.namespace(ns)?;
    }
    Ok(f)
}

async fn function_status(inner: &Inner, req: Request, name: &str) -> Result<Response> {
    let q = parse_query(req.uri().query());
    let f = fref_with_ns(inner, name, query_get(&q, "namespace"))?;
    let st = inner.invoker.status(&f).await?;
    Ok(response::json(StatusCode::OK, &st))
}

/// `GET /system/function/{name}/history` (our extension): the function's last 15 minutes
/// ([`crate::history::Series`]), the open slot's replicas as the backend tells them now;
/// 404 if the function is unknown and was never invoked.
async fn function_history(inner: &Inner, req: Request, name: &str) -> Result<Response> {
    let q = parse_query(req.uri().query());
    let f = fref_with_ns(inner, name, query_get(&q, "namespace"))?;
    // The replicas of the open slot as the backend tells them now; a function the backend
    // does not know keeps its history (it may have been removed minutes ago).
    if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(2), inner.invoker.status(&f)).await
    {
        inner.history.note_replicas(&f, SystemTime::now(), st.replicas, st.available_replicas);
    }
    match inner.history.series(&f, SystemTime::now()) {
        Some(s) => Ok(response::json(StatusCode::OK, &s)),
        None => Err(Error::NotFound { kind: "function history", name: f.to_string() }),
    }
}

/// `GET /system/function/{name}/activations?limit=N` (our extension): the function's most
/// recent activation records, newest first, as OpenWhisk summarises them (`activationId`,
/// `start`, `end`, `duration`, `statusCode`, `annotations`) plus `status`, `success`, and
/// `httpStatus` (the answer's status) or `error` (the first 200 characters of the error).
/// Only the invocations the gateway records are there (all of them with
/// `record_every_invocation`).
fn function_activations(inner: &Inner, req: Request, name: &str) -> Result<Response> {
    let q = parse_query(req.uri().query());
    let f = fref_with_ns(inner, name, query_get(&q, "namespace"))?;
    let limit = match query_get(&q, "limit").filter(|s| !s.is_empty()) {
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=faas_core::whisk::record::MAX_LIST_LIMIT).contains(&n) => n,
            _ => {
                return Err(Error::invalid(
                    "limit",
                    format!(
                        "{l:?} is not a number from 1 to {}",
                        faas_core::whisk::record::MAX_LIST_LIMIT
                    ),
                ))
            }
        },
        None => 30,
    };
    let found = inner.log.list(&faas_core::whisk::record::ActivationQuery {
        namespace: Some(f.namespace.clone()),
        name: Some(f.name.clone()),
        limit,
        ..Default::default()
    });
    let list: Vec<serde_json::Value> = found
        .iter()
        .map(|a| {
            let mut v = faas_core::whisk::record::summary(a);
            v["status"] = a.response.status.clone().into();
            v["success"] = a.response.success.into();
            // The HTTP status of an OpenFaaS call's answer, or the error of a failed call.
            if let Some(code) = a.response.result.get("statusCode").filter(|c| c.is_u64()) {
                v["httpStatus"] = code.clone();
            }
            if let Some(e) = a.response.result.get("error").and_then(|e| e.as_str()) {
                v["error"] = e.chars().take(200).collect::<String>().into();
            }
            v
        })
        .collect();
    Ok(response::json(StatusCode::OK, &list))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScaleRequest {
    #[serde(default)]
    service_name: Option<String>,
    replicas: u64,
    #[serde(default)]
    namespace: Option<String>,
}

async fn scale(inner: &Inner, req: Request, name: &str) -> Result<Response> {
    let q = parse_query(req.uri().query());
    let limit = body_limit(&req, inner);
    let s: ScaleRequest = read_json(req.into_body(), limit).await?;
    if let Some(sn) = s.service_name.as_deref().filter(|s| !s.is_empty()) {
        let path_name = name.split('.').next().unwrap_or(name);
        if sn != path_name && sn != name {
            return Err(Error::invalid(
                "serviceName",
                format!("{sn:?} does not match the function in the path, {name:?}"),
            ));
        }
    }
    let replicas = u32::try_from(s.replicas)
        .map_err(|_| Error::invalid("replicas", format!("{} is too large", s.replicas)))?;
    let f = fref_with_ns(inner, name, s.namespace.as_deref().or(query_get(&q, "namespace")))?;
    tracing::info!(function = %f, replicas, "scaling");
    inner.invoker.scale(&f, replicas).await?;
    inner.forget(&f);
    Ok(response::empty(StatusCode::ACCEPTED))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretRequest {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    raw_value: Option<String>,
}

impl SecretRequest {
    fn into_secret(self, inner: &Inner) -> Result<Secret> {
        validate_secret_name(&self.name).map_err(|r| Error::invalid("name", r))?;
        let namespace = inner.namespace(self.namespace.as_deref())?;
        let value = match (self.value, self.raw_value) {
            (Some(v), _) if !v.is_empty() => Bytes::from(v),
            (_, Some(raw)) => Bytes::from(
                faas_core::queue::base64_decode(raw.trim())
                    .map_err(|e| Error::invalid("rawValue", e))?,
            ),
            (Some(v), None) => Bytes::from(v),
            (None, None) => {
                return Err(Error::invalid("value", "one of value or rawValue is required"))
            }
        };
        Ok(Secret { name: self.name, namespace, value })
    }
}

#[derive(Deserialize)]
struct DeleteSecret {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

async fn secrets(inner: &Inner, req: Request) -> Result<Response> {
    let q = parse_query(req.uri().query());
    let limit = body_limit(&req, inner);
    match req.method().clone() {
        Method::GET => {
            let ns = inner.namespace(query_get(&q, "namespace"))?;
            let list = inner.invoker.list_secrets(&ns).await?;
            Ok(response::json(StatusCode::OK, &list))
        }
        Method::POST => {
            let s: SecretRequest = read_json(req.into_body(), limit).await?;
            inner.invoker.create_secret(s.into_secret(inner)?).await?;
            Ok(response::empty(StatusCode::CREATED))
        }
        Method::PUT => {
            let s: SecretRequest = read_json(req.into_body(), limit).await?;
            inner.invoker.update_secret(s.into_secret(inner)?).await?;
            Ok(response::empty(StatusCode::ACCEPTED))
        }
        Method::DELETE => {
            let d: DeleteSecret = read_json(req.into_body(), limit).await?;
            validate_secret_name(&d.name).map_err(|r| Error::invalid("name", r))?;
            let ns = inner.namespace(d.namespace.as_deref().or(query_get(&q, "namespace")))?;
            inner.invoker.remove_secret(&ns, &d.name).await?;
            Ok(response::empty(StatusCode::ACCEPTED))
        }
        _ => Ok(response::method_not_allowed("GET, POST, PUT, DELETE")),
    }
}

/// A log stream made `Sync` (hyper bodies must be) by exclusive access.
struct SyncStream<S>(std::sync::Mutex<S>);

impl<S: futures::Stream + Unpin> futures::Stream for SyncStream<S> {
    type Item = S::Item;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<S::Item>> {
        let inner = match self.get_mut().0.get_mut() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        std::pin::Pin::new(inner).poll_next(cx)
    }
}

async fn logs(inner: &Inner, req: Request) -> Result<Response> {
    let q = parse_query(req.uri().query());
    let name = query_get(&q, "name")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::invalid("name", "the function name is required"))?;
    let f = fref_with_ns(inner, name, query_get(&q, "namespace"))?;
    let since = match query_get(&q, "since").filter(|s| !s.is_empty()) {
        Some(s) => {
            Some(faas_core::spec::rfc3339::parse(s).map_err(|r| Error::invalid("since", r))?)
        }
        None => None,
    };
    let tail = match query_get(&q, "tail").filter(|s| !s.is_empty()) {
        Some(t) => match t.parse::<i64>() {
            Ok(n) if n < 0 => None,
            Ok(n) => Some(n as usize),
            Err(_) => return Err(Error::invalid("tail", format!("{t:?} is not a number"))),
        },
        None => None,
    };
    let follow = match query_get(&q, "follow") {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(o) => return Err(Error::invalid("follow", format!("{o:?} is not true or false"))),
    };
    let instance = query_get(&q, "instance").filter(|s| !s.is_empty()).map(String::from);
    let stream = inner
        .invoker
        .logs(LogsRequest { function: Some(f), instance, since, tail, follow })
        .await?;
    let lines = stream.map(|r| -> std::result::Result<Bytes, BoxError> {
        let entry = r.map_err(|e| -> BoxError { Box::new(e) })?;
        let mut v = serde_json::to_vec(&entry).map_err(|e| -> BoxError { Box::new(e) })?;
        v.push(b'\n');
        Ok(Bytes::from(v))
    });
    let mut r = http::Response::new(Body::from_stream(SyncStream(std::sync::Mutex::new(lines))));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

async fn activation(inner: &Inner, id: &str) -> Result<Response> {
    if id.is_empty()
        || id.len() > 128
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::invalid("id", "a call id is 1 to 128 letters, digits or '-'"));
    }
    let Some(lookup) = &inner.activations else {
        return Err(Error::NotSupported { operation: "activation records".into() });
    };
    match lookup.get(&InvocationId::from_string(id)).await? {
        Some(a) => Ok(response::json(StatusCode::OK, &a)),
        None => Err(Error::NotFound { kind: "activation", name: id.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_header_has_microsecond_precision() {
        let v = |d| duration_value(d).to_str().unwrap().to_string();
        assert_eq!(v(Duration::ZERO), "0.000000");
        assert_eq!(v(Duration::from_micros(124)), "0.000124");
        assert_eq!(v(Duration::from_millis(1500)), "1.500000");
        assert_eq!(v(Duration::from_secs(3600) + Duration::from_nanos(999)), "3600.000000");
    }

    #[test]
    fn stamp_values_are_the_id_and_the_start_time() {
        let id = InvocationId::from_string("abc-123");
        let before = epoch_nanos(SystemTime::now());
        let s = Stamp::new(&id, Instant::now());
        let after = epoch_nanos(SystemTime::now());
        assert_eq!(s.id.unwrap().to_str().unwrap(), "abc-123");
        let start: u128 = s.start.to_str().unwrap().parse().unwrap();
        assert!(before <= start && start <= after, "{before} <= {start} <= {after}");
    }
}

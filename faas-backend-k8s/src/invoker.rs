//! [`KubernetesInvoker`]: the [`Backend`] over the Kubernetes API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret as K8sSecret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};

use faas_core::instance::{
    self, AcquireLimits, CallTimeout, InstanceClient, InstanceLease, InstanceSet,
};
use faas_core::invocation::InvocationMeta;
use faas_core::prelude::*;
use faas_core::spec::{rfc3339, validate_secret_name, ScalingPolicy};
use faas_core::util::{lock, validate_dns1123_label};
use faas_core::{
    Error, FunctionRef, FunctionSpec, FunctionStatus, InstanceView, Invocation, LogEntry,
    LogStream, LogsRequest, ProviderInfo, ReplicaLimits, Response, Result, Scheduler, Secret,
    SecretInfo, StartKind,
};

use crate::error::{map_kube_error, Target};
use crate::manifests::{self, FUNCTION_LABEL, SECRET_MANAGED_BY_LABEL, SECRET_MANAGED_BY_VALUE};

/// The default invoke base URL: the function's Service through cluster DNS.
pub const DEFAULT_BASE_URL: &str = "http://{name}.{namespace}.svc.cluster.local:8080";
/// The default label selector of the namespaces functions may use (as faas-netes).
pub const DEFAULT_NAMESPACE_SELECTOR: &str = "openfaas=1";

/// A function runner on Kubernetes: each function is a Deployment plus a Service (see
/// [`crate::manifests`] for the exact objects), scaled through the Deployment's `scale`
/// subresource and invoked over HTTP through its Service (or its ready pod endpoints, chosen by
/// a [`Scheduler`]).
///
/// Cheap to clone; clones share the client and caches.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use faas_backend_k8s::KubernetesInvoker;
/// let client = kube::Client::try_default().await?;
/// let invoker = KubernetesInvoker::builder(client)
///     .namespace("openfaas-fn")
///     // through `kubectl proxy` instead of cluster DNS:
///     .base_url("http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/{name}:8080/proxy")
///     .build();
/// # let _ = invoker; Ok(()) }
/// ```
#[derive(Clone)]
pub struct KubernetesInvoker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KubernetesInvoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesInvoker")
            .field("namespace", &self.inner.namespace)
            .field("namespace_selector", &self.inner.namespace_selector)
            .field("base_url", &self.inner.base_url)
            .field("endpoint_routing", &self.inner.scheduler.is_some())
            .finish()
    }
}

struct Inner {
    client: kube::Client,
    namespace: String,
    namespace_selector: String,
    base_url: String,
    scheduler: Option<Arc<dyn Scheduler>>,
    /// Forwards invocations to the function's Service or pods.
    http: InstanceClient,
    ready_timeout: Duration,
    invoke_timeout: Option<Duration>,
    cache_ttl: Duration,
    /// How invocations wait behind busy pods (with a scheduler).
    queue: AcquireLimits,
    /// Functions recently seen with an available replica.
    ready: Mutex<HashMap<FunctionRef, ReadyEntry>>,
    /// Each routed function's pod endpoints (`ip:port`) with their in-flight counts, for the
    /// scheduler: the instance runtime every backend shares, reconciled with the endpoints
    /// Kubernetes reports.
    instances: Mutex<HashMap<FunctionRef, Arc<InstanceSet<String>>>>,
    /// One scale-from-zero at a time per function; later callers wait for it.
    waking: Mutex<HashMap<FunctionRef, Arc<tokio::sync::Mutex<()>>>>,
    /// The cap on replicas per function (scaling labels and scale requests over it are
    /// refused).
    limits: ReplicaLimits,
}

/// Builds a [`KubernetesInvoker`]; see [`KubernetesInvoker::builder`].
pub struct KubernetesInvokerBuilder {
    client: kube::Client,
    namespace: String,
    namespace_selector: String,
    base_url: String,
    scheduler: Option<Arc<dyn Scheduler>>,
    ready_timeout: Duration,
    invoke_timeout: Option<Duration>,
    cache_ttl: Duration,
    queue: AcquireLimits,
    limits: Option<ReplicaLimits>,
}

impl std::fmt::Debug for KubernetesInvokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesInvokerBuilder")
            .field("namespace", &self.namespace)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl KubernetesInvokerBuilder {
    /// The namespace functions land in when their spec names none (default `openfaas-fn`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The label selector of the namespaces [`Deploy::namespaces`] lists (default
    /// `openfaas=1`); the default function namespace is always listed.
    pub fn namespace_selector(mut self, selector: impl Into<String>) -> Self {
        self.namespace_selector = selector.into();
        self
    }

    /// The URL invocations are sent to, with `{name}` and `{namespace}` replaced; the
    /// invocation's path and query are appended. Default
    /// `http://{name}.{namespace}.svc.cluster.local:8080` (a gateway inside the cluster); for
    /// a gateway outside it, e.g. through `kubectl proxy`:
    /// `http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/{name}:8080/proxy`.
    /// Only `http` is supported.
    pub fn base_url(mut self, template: impl Into<String>) -> Self {
        self.base_url = template.into();
        self
    }

    /// Routes invocations to ready pod endpoints (from the Service's EndpointSlices) chosen
    /// by `scheduler`, instead of through the Service. Pod IPs must be reachable from the
    /// caller (a gateway inside the cluster).
    pub fn scheduler(mut self, scheduler: Arc<dyn Scheduler>) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// How long an invocation of a function at zero replicas waits for a replica to become
    /// available (default 2 minutes); past it the invocation fails with
    /// [`Error::Unavailable`].
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// With a scheduler: how many invocations may wait while every ready pod is at its
    /// concurrency limit (default 1024; 0 refuses at once with [`Error::Overloaded`]), and how
    /// long each waits (default 30 s, or the invocation's own wait budget when shorter).
    pub fn queue(mut self, limit: usize, timeout: Duration) -> Self {
        self.queue =
            AcquireLimits { queue_limit: limit, busy_timeout: timeout, start_timeout: timeout };
        self
    }

    /// Upper bound on one invocation's HTTP exchange (until response headers), default none
    /// (the watchdog's own `exec_timeout` applies).
    pub fn invoke_timeout(mut self, timeout: Duration) -> Self {
        self.invoke_timeout = Some(timeout);
        self
    }

    /// How long "this function has an available replica" is trusted before the Deployment is
    /// read again on invoke (default 2 s). Zero reads it on every invocation.
    pub fn status_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// The cap on replicas per function (default: the per-function cap of
    /// [`ReplicaLimits::detect`], as the process backend's). A `com.openfaas.scale.min` or
    /// `max` label (or `scaling.min`/`max`) over it is refused at deploy and update, and a
    /// scale request over it, with [`Error::InvalidSpec`] naming the field and the cap
    /// (400), before anything is sent to the cluster. The node cap is not applied here:
    /// the cluster's scheduler places pods (and a `ResourceQuota` bounds a namespace).
    pub fn replica_limits(mut self, limits: ReplicaLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Builds the invoker.
    pub fn build(self) -> KubernetesInvoker {
        let limits = self.limits.unwrap_or_else(|| {
            ReplicaLimits::new(ReplicaLimits::detect().per_function(), u32::MAX)
        });
        let http = InstanceClient::builder().connect_timeout(Some(Duration::from_secs(10))).build();
        KubernetesInvoker {
            inner: Arc::new(Inner {
                client: self.client,
                namespace: self.namespace,
                namespace_selector: self.namespace_selector,
                base_url: self.base_url,
                scheduler: self.scheduler,
                http,
                ready_timeout: self.ready_timeout,
                queue: self.queue,
                invoke_timeout: self.invoke_timeout,
                cache_ttl: self.cache_ttl,
                ready: Mutex::new(HashMap::new()),
                instances: Mutex::new(HashMap::new()),
                waking: Mutex::new(HashMap::new()),
                limits,
            }),
        }
    }
}

/// What invocations need to know of a function, read from its Deployment.
#[derive(Debug, Clone, Copy, Default)]
struct FnInfo {
    /// The watchdog's `exec_timeout`.
    timeout: Option<Duration>,
    /// The watchdog's `max_inflight` (per instance).
    max_inflight: Option<u32>,
}

/// A function seen with an available replica.
#[derive(Debug, Clone, Copy)]
struct ReadyEntry {
    at: Instant,
    info: FnInfo,
}

/// A client of the cluster the usual way: `KUBECONFIG` (or `~/.kube/config`) and its current
/// context, else the in-cluster service account of a pod. No cluster configured, or a
/// configuration that cannot be read, is [`Error::InvalidSpec`] naming `kubeconfig` and
/// what to do. Nothing is sent to the cluster yet.
pub async fn connect() -> Result<kube::Client> {
    let config = kube::Config::infer().await.map_err(|e| {
        Error::invalid(
            "kubeconfig",
            format!(
                "no Kubernetes cluster configured ({e}): set KUBECONFIG to a kubeconfig file, \
                 or run in a pod with a service account"
            ),
        )
    })?;
    kube::Client::try_from(config)
        .map_err(|e| Error::invalid("kubeconfig", format!("cannot build a client from it: {e}")))
}

impl KubernetesInvoker {
    /// A builder over `client` (build one with [`connect`] from the
    /// kubeconfig or in-cluster service account, or `kube::Client::new` over any tower
    /// service).
    pub fn builder(client: kube::Client) -> KubernetesInvokerBuilder {
        KubernetesInvokerBuilder {
            client,
            namespace: faas_core::spec::DEFAULT_NAMESPACE.to_string(),
            namespace_selector: DEFAULT_NAMESPACE_SELECTOR.to_string(),
            base_url: DEFAULT_BASE_URL.to_string(),
            scheduler: None,
            ready_timeout: Duration::from_secs(120),
            queue: AcquireLimits::default(),
            invoke_timeout: None,
            cache_ttl: Duration::from_secs(2),
            limits: None,
        }
    }

    /// An invoker with the defaults over `client`.
    pub fn new(client: kube::Client) -> Self {
        Self::builder(client).build()
    }

    /// The default function namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    fn ns<'a>(&'a self, ns: &'a str) -> &'a str {
        if ns.is_empty() {
            &self.inner.namespace
        } else {
            ns
        }
    }

    fn deployments(&self, ns: &str) -> Api<Deployment> {
        Api::namespaced(self.inner.client.clone(), ns)
    }

    fn services(&self, ns: &str) -> Api<Service> {
        Api::namespaced(self.inner.client.clone(), ns)
    }

    fn secrets(&self, ns: &str) -> Api<K8sSecret> {
        Api::namespaced(self.inner.client.clone(), ns)
    }

    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.inner.client.clone(), ns)
    }

    fn forget(&self, f: &FunctionRef) {
        lock(&self.inner.ready).remove(f);
    }

    /// The instance set of `f`, made on first use.
    fn instance_set(&self, f: &FunctionRef) -> Arc<InstanceSet<String>> {
        lock(&self.inner.instances)
            .entry(f.clone())
            .or_insert_with(|| Arc::new(InstanceSet::new(f.clone())))
            .clone()
    }

    /// The spec with its namespace resolved and checked.
    fn resolve(&self, mut spec: FunctionSpec) -> Result<FunctionSpec> {
        if spec.namespace.as_deref().is_none_or(str::is_empty) {
            spec.namespace = Some(self.inner.namespace.clone());
        }
        spec.validate()?;
        spec.scaling_policy_within(&self.inner.limits)?;
        Ok(spec)
    }

    async fn check_secrets_exist(&self, spec: &FunctionSpec) -> Result<()> {
        let ns = spec.namespace_or_default();
        let api = self.secrets(ns);
        for (i, name) in spec.secrets.iter().enumerate() {
            let t = Target { kind: "secret", name, namespace: ns, action: "get secrets" };
            match api.get_metadata_opt(name).await.map_err(|e| map_kube_error(e, t))? {
                Some(_) => {}
                None => {
                    return Err(Error::invalid(
                        format!("secrets[{i}]"),
                        format!(
                            "secret {name:?} does not exist in namespace {ns:?}; create it first"
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    async fn get_deployment(&self, f: &FunctionRef) -> Result<Deployment> {
        let t = Target {
            kind: "function",
            name: &f.name,
            namespace: &f.namespace,
            action: "get deployments",
        };
        let d =
            self.deployments(&f.namespace).get(&f.name).await.map_err(|e| map_kube_error(e, t))?;
        let ours = d.metadata.labels.as_ref().is_some_and(|l| l.contains_key(FUNCTION_LABEL));
        if !ours {
            return Err(Error::function_not_found(f.name.clone()));
        }
        Ok(d)
    }

    /// Makes sure `f` has an available replica, scaling it from zero if needed. Returns how
    /// the instance was obtained and what invocations need to know of the function.
    async fn ensure_ready(&self, f: &FunctionRef) -> Result<(StartKind, FnInfo)> {
        if let Some(warm) = self.cached_ready(f, self.inner.cache_ttl) {
            return Ok(warm);
        }
        let d = self.get_deployment(f).await?;
        let info = fn_info(&d);
        if available(&d) > 0 {
            lock(&self.inner.ready).insert(f.clone(), ReadyEntry { at: Instant::now(), info });
            return Ok((StartKind::Warm, info));
        }
        // Not available: one caller scales and waits; the others wait for it, then see the
        // cache it filled.
        let gate = lock(&self.inner.waking).entry(f.clone()).or_default().clone();
        let (_one, d) = match gate.clone().try_lock_owned() {
            Ok(g) => (g, d),
            Err(_) => {
                let g = gate.lock_owned().await;
                let fresh = self.inner.cache_ttl.max(Duration::from_secs(1));
                if let Some((_, info)) = self.cached_ready(f, fresh) {
                    return Ok((StartKind::Cold, info));
                }
                (g, self.get_deployment(f).await?)
            }
        };
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        if desired == 0 {
            let labels = d.metadata.labels.clone().unwrap_or_default();
            let min = ScalingPolicy::default().apply_labels(&labels).map(|p| p.min).unwrap_or(1);
            let target = min.max(1);
            tracing::debug!(function = %f, replicas = target, "scaling from zero");
            self.scale_deployment(f, target).await?;
        }
        let deadline = Instant::now() + self.inner.ready_timeout;
        match tokio::time::timeout(self.inner.ready_timeout, self.wait_available(f, deadline)).await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "no replica of {f} became available within {}",
                    faas_core::util::format_duration(self.inner.ready_timeout)
                )))
            }
        }
        lock(&self.inner.ready).insert(f.clone(), ReadyEntry { at: Instant::now(), info });
        Ok((StartKind::Cold, info))
    }

    /// The cached "available" answer for `f`, if still fresh.
    fn cached_ready(&self, f: &FunctionRef, ttl: Duration) -> Option<(StartKind, FnInfo)> {
        let e = *lock(&self.inner.ready).get(f)?;
        (e.at.elapsed() < ttl).then_some((StartKind::Warm, e.info))
    }

    /// Waits until the Deployment reports an available replica: reads it, then watches it
    /// from that resource version; a watch that ends or breaks (including `410 Gone`) is
    /// re-established from a fresh read.
    async fn wait_available(&self, f: &FunctionRef, deadline: Instant) -> Result<()> {
        let api = self.deployments(&f.namespace);
        // Re-establishing pauses, so a failing API is not hammered: 100 ms doubling to 2 s.
        let backoff =
            faas_core::util::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut retries = 0;
        loop {
            let d = self.get_deployment(f).await?;
            if available(&d) > 0 {
                return Ok(());
            }
            let rv = d.metadata.resource_version.clone().unwrap_or_else(|| "0".into());
            let remaining = deadline.saturating_duration_since(Instant::now()).as_secs();
            let wp = WatchParams::default()
                .fields(&format!("metadata.name={}", f.name))
                .timeout(remaining.clamp(1, 290) as u32);
            let t = Target {
                kind: "function",
                name: &f.name,
                namespace: &f.namespace,
                action: "watch deployments",
            };
            match api.watch(&wp, &rv).await {
                Ok(stream) => {
                    let mut stream = std::pin::pin!(stream);
                    while let Some(ev) = stream.next().await {
                        match ev {
                            Ok(WatchEvent::Added(d)) | Ok(WatchEvent::Modified(d)) => {
                                if available(&d) > 0 {
                                    return Ok(());
                                }
                            }
                            Ok(WatchEvent::Deleted(_)) => {
                                return Err(Error::function_not_found(f.name.clone()))
                            }
                            Ok(WatchEvent::Bookmark(_)) => {}
                            Ok(WatchEvent::Error(status)) => {
                                tracing::debug!(function = %f, code = status.code, "watch error, re-establishing");
                                break;
                            }
                            Err(e) => {
                                tracing::debug!(function = %f, error = %e, "watch broke, re-establishing");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    let err = map_kube_error(e, t);
                    if !err.is_retryable() {
                        return Err(err);
                    }
                }
            }
            retries += 1;
            tokio::time::sleep(backoff.delay(retries)).await;
        }
    }

    async fn scale_deployment(&self, f: &FunctionRef, replicas: u32) -> Result<()> {
        let t = Target {
            kind: "function",
            name: &f.name,
            namespace: &f.namespace,
            action: "patch deployments/scale",
        };
        let replicas = i32::try_from(replicas)
            .map_err(|_| Error::invalid("replicas", "must be at most 2147483647"))?;
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        self.deployments(&f.namespace)
            .patch_scale(&f.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| map_kube_error(e, t))?;
        Ok(())
    }

    /// The ready endpoints of `f`'s Service as (address `ip:port`, instance name).
    async fn ready_endpoints(&self, f: &FunctionRef) -> Result<Vec<(String, String)>> {
        let api: Api<EndpointSlice> = Api::namespaced(self.inner.client.clone(), &f.namespace);
        let t = Target {
            kind: "function",
            name: &f.name,
            namespace: &f.namespace,
            action: "list endpointslices",
        };
        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={}", f.name));
        let slices = api.list(&lp).await.map_err(|e| map_kube_error(e, t))?;
        let mut out = Vec::new();
        for slice in slices.items {
            let port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().is_none_or(|n| n == "http" || n.is_empty()))
                .and_then(|p| p.port)
                .unwrap_or(manifests::WATCHDOG_PORT);
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                let Some(addr) = ep.addresses.first() else { continue };
                let host = if addr.contains(':') { format!("[{addr}]") } else { addr.clone() };
                let instance = ep
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_else(|| addr.clone());
                out.push((format!("{host}:{port}"), instance));
            }
        }
        Ok(out)
    }

    fn base_for(&self, f: &FunctionRef) -> String {
        self.inner.base_url.replace("{name}", &f.name).replace("{namespace}", &f.namespace)
    }

    async fn forward(
        &self,
        invocation: Invocation,
        base: String,
        instance: String,
        (start, timeout): (StartKind, Option<Duration>),
        started: Instant,
        lease: Option<InstanceLease<String>>,
    ) -> Result<Response> {
        let base = base.trim_end_matches('/');
        if !base.starts_with("http://") {
            return Err(Error::internal(format!(
                "invoke URL {base:?}: only http:// base URLs are supported"
            )));
        }
        let function = invocation.function.clone();
        let wait_time = started.elapsed();
        // The function's own timeout (the watchdog's exec_timeout) bounds the exchange too, so
        // a hung instance is reported as a timeout even if the watchdog does not answer.
        let bound = match (timeout, self.inner.invoke_timeout) {
            (Some(a), Some(b)) if b < a => Some(("invoke", b)),
            (Some(a), _) => Some(("exec", a)),
            (None, Some(b)) => Some(("invoke", b)),
            (None, None) => None,
        };
        let target = instance::Target {
            base,
            function: &function,
            instance: &instance,
            timeout: bound.map(|(name, after)| CallTimeout { name, after, grace: Duration::ZERO }),
        };
        let resp = self.inner.http.forward(invocation, &target, lease).await.map_err(|e| {
            if e.is_connect() {
                self.forget(&function);
            }
            Error::from(e)
        })?;
        let (mut parts, body) = resp.into_parts();
        parts.extensions.insert(InvocationMeta { instance, start, wait_time, init_time: None });
        Ok(http::Response::from_parts(parts, body))
    }
}

/// The watchdog's `exec_timeout` and `max_inflight` from the Deployment's container
/// environment.
fn fn_info(d: &Deployment) -> FnInfo {
    let env = |key: &str| -> Option<String> {
        let c = d.spec.as_ref()?.template.spec.as_ref()?.containers.first()?;
        c.env.iter().flatten().find(|e| e.name == key)?.value.clone()
    };
    FnInfo {
        timeout: env("exec_timeout")
            .and_then(|v| faas_core::util::parse_duration(&v).ok())
            .filter(|t| !t.is_zero()),
        max_inflight: env("max_inflight")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|n| *n > 0),
    }
}

fn available(d: &Deployment) -> i32 {
    d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

/// Parses a log line written with `timestamps=true`: `2026-11-23T09:08:25.123456789Z text`.
fn parse_log_line(line: &str) -> (SystemTime, String) {
    if let Some((ts, text)) = line.split_once(' ') {
        if let Ok(t) = rfc3339::parse(ts) {
            return (t, text.to_string());
        }
    }
    (SystemTime::now(), line.to_string())
}

#[async_trait]
impl Invoke for KubernetesInvoker {
    async fn invoke(&self, mut invocation: Invocation) -> Result<Response> {
        let started = Instant::now();
        let f = FunctionRef::new(
            invocation.function.name.clone(),
            self.ns(&invocation.function.namespace),
        );
        validate_dns1123_label(&f.name).map_err(|r| Error::invalid("service", r))?;
        invocation.function = f.clone();
        let (start, info) = self.ensure_ready(&f).await?;
        match &self.inner.scheduler {
            None => {
                let base = self.base_for(&f);
                let meta = (start, info.timeout);
                self.forward(invocation, base, f.name.clone(), meta, started, None).await
            }
            Some(scheduler) => {
                let endpoints = self.ready_endpoints(&f).await?;
                if endpoints.is_empty() {
                    self.forget(&f);
                    return Err(Error::unavailable(format!("{f} has no ready endpoint")));
                }
                let set = self.instance_set(&f);
                set.reconcile(endpoints.into_iter().map(|(addr, instance)| {
                    let view = InstanceView {
                        id: instance,
                        node: None,
                        in_flight: 0,
                        max_concurrency: info.max_inflight,
                        ready: true,
                    };
                    (view, addr)
                }));
                let budget = faas_core::invocation::WaitBudget::of(&invocation.request);
                let q = self.inner.queue;
                let limits = AcquireLimits {
                    busy_timeout: budget.map_or(q.busy_timeout, |b| b.min(q.busy_timeout)),
                    start_timeout: budget.map_or(q.start_timeout, |b| b.min(q.start_timeout)),
                    ..q
                };
                let lease = set.acquire(&**scheduler, &limits, started.into(), |_| {}).await?;
                let base = format!("http://{}", lease.handle());
                let instance = lease.instance().to_string();
                let meta = (start, info.timeout);
                self.forward(invocation, base, instance, meta, started, Some(lease)).await
            }
        }
    }
}

#[async_trait]
impl Deploy for KubernetesInvoker {
    async fn deploy(&self, spec: FunctionSpec) -> Result<()> {
        let spec = self.resolve(spec)?;
        let ns = spec.namespace_or_default().to_string();
        let deployment = manifests::deployment(&spec)?;
        let service = manifests::service(&spec);
        self.check_secrets_exist(&spec).await?;
        let t = Target {
            kind: "function",
            name: &spec.name,
            namespace: &ns,
            action: "create deployments",
        };
        self.deployments(&ns)
            .create(&PostParams::default(), &deployment)
            .await
            .map_err(|e| map_kube_error(e, t))?;
        let t = Target { action: "create services", ..t };
        match self.services(&ns).create(&PostParams::default(), &service).await {
            Ok(_) => {}
            // A Service left from an earlier deployment selects the same pods: keep it.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                let err = map_kube_error(e, t);
                let _ = self.deployments(&ns).delete(&spec.name, &DeleteParams::background()).await;
                return Err(err);
            }
        }
        self.forget(&spec.function_ref());
        Ok(())
    }

    async fn update(&self, spec: FunctionSpec) -> Result<()> {
        let spec = self.resolve(spec)?;
        let f = spec.function_ref();
        let ns = f.namespace.clone();
        let mut desired = manifests::deployment(&spec)?;
        self.check_secrets_exist(&spec).await?;
        let t = Target {
            kind: "function",
            name: &spec.name,
            namespace: &ns,
            action: "update deployments",
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let existing = self.get_deployment(&f).await?;
            // Keep the current replica count: an update must not undo the autoscaler.
            if let (Some(d), Some(e)) = (desired.spec.as_mut(), existing.spec.as_ref()) {
                d.replicas = e.replicas;
            }
            desired.metadata.resource_version = existing.metadata.resource_version.clone();
            match self.deployments(&ns).replace(&spec.name, &PostParams::default(), &desired).await
            {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 && attempts < 3 => continue,
                Err(e) => return Err(map_kube_error(e, t)),
            }
        }
        let service = manifests::service(&spec);
        let t = Target { action: "patch services", ..t };
        match self
            .services(&ns)
            .patch(&spec.name, &PatchParams::default(), &Patch::Merge(&service))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let t = Target { action: "create services", ..t };
                self.services(&ns)
                    .create(&PostParams::default(), &service)
                    .await
                    .map_err(|e| map_kube_error(e, t))?;
            }
            Err(e) => return Err(map_kube_error(e, t)),
        }
        self.forget(&f);
        Ok(())
    }

    async fn remove(&self, function: &FunctionRef) -> Result<()> {
        let ns = self.ns(&function.namespace).to_string();
        let f = FunctionRef::new(function.name.clone(), ns.clone());
        self.forget(&f);
        if let Some(set) = lock(&self.inner.instances).remove(&f) {
            set.close();
        }
        let t = Target {
            kind: "function",
            name: &f.name,
            namespace: &ns,
            action: "delete deployments",
        };
        self.deployments(&ns)
            .delete(&f.name, &DeleteParams::background())
            .await
            .map_err(|e| map_kube_error(e, t))?;
        let t = Target { action: "delete services", ..t };
        match self.services(&ns).delete(&f.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(map_kube_error(e, t)),
        }
    }

    async fn list(&self, namespace: &str) -> Result<Vec<FunctionStatus>> {
        let ns = self.ns(namespace);
        validate_dns1123_label(ns).map_err(|r| Error::invalid("namespace", r))?;
        let t = Target { kind: "namespace", name: ns, namespace: ns, action: "list deployments" };
        let list = self
            .deployments(ns)
            .list(&ListParams::default().labels(FUNCTION_LABEL))
            .await
            .map_err(|e| map_kube_error(e, t))?;
        let mut out =
            list.items.iter().map(manifests::status_from_deployment).collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn status(&self, function: &FunctionRef) -> Result<FunctionStatus> {
        let f = FunctionRef::new(function.name.clone(), self.ns(&function.namespace));
        let d = self.get_deployment(&f).await?;
        manifests::status_from_deployment(&d)
    }

    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<()> {
        self.inner.limits.check_scale(replicas)?;
        let f = FunctionRef::new(function.name.clone(), self.ns(&function.namespace));
        self.forget(&f);
        self.scale_deployment(&f, replicas).await
    }

    async fn namespaces(&self) -> Result<Vec<String>> {
        let api: Api<Namespace> = Api::all(self.inner.client.clone());
        let lp = ListParams::default().labels(&self.inner.namespace_selector);
        let mut out = vec![self.inner.namespace.clone()];
        match api.list(&lp).await {
            Ok(list) => out.extend(list.items.into_iter().filter_map(|n| n.metadata.name)),
            // Without a ClusterRole to list namespaces, only the function namespace is usable
            // (as faas-netes does).
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            Err(e) => {
                let ns = &self.inner.namespace;
                let t = Target {
                    kind: "namespace",
                    name: ns,
                    namespace: ns,
                    action: "list namespaces",
                };
                return Err(map_kube_error(e, t));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: "faas-rs-kubernetes".to_string(),
            orchestration: "kubernetes".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

#[async_trait]
impl Secrets for KubernetesInvoker {
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        let ns = self.ns(namespace);
        validate_dns1123_label(ns).map_err(|r| Error::invalid("namespace", r))?;
        let t = Target { kind: "namespace", name: ns, namespace: ns, action: "list secrets" };
        let lp = ListParams::default()
            .labels(&format!("{SECRET_MANAGED_BY_LABEL}={SECRET_MANAGED_BY_VALUE}"));
        let list = self.secrets(ns).list(&lp).await.map_err(|e| map_kube_error(e, t))?;
        let mut out: Vec<SecretInfo> = list
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .map(|name| SecretInfo { name, namespace: ns.to_string() })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create_secret(&self, mut secret: Secret) -> Result<()> {
        secret.namespace = self.ns(&secret.namespace).to_string();
        check_secret(&secret)?;
        let t = Target {
            kind: "secret",
            name: &secret.name,
            namespace: &secret.namespace,
            action: "create secrets",
        };
        self.secrets(&secret.namespace)
            .create(&PostParams::default(), &manifests::secret(&secret))
            .await
            .map_err(|e| map_kube_error(e, t))?;
        Ok(())
    }

    async fn update_secret(&self, mut secret: Secret) -> Result<()> {
        secret.namespace = self.ns(&secret.namespace).to_string();
        check_secret(&secret)?;
        let t = Target {
            kind: "secret",
            name: &secret.name,
            namespace: &secret.namespace,
            action: "update secrets",
        };
        self.secrets(&secret.namespace)
            .replace(&secret.name, &PostParams::default(), &manifests::secret(&secret))
            .await
            .map_err(|e| map_kube_error(e, t))?;
        Ok(())
    }

    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()> {
        let ns = self.ns(namespace);
        validate_secret_name(name).map_err(|r| Error::invalid("name", r))?;
        let t = Target { kind: "secret", name, namespace: ns, action: "delete secrets" };
        self.secrets(ns)
            .delete(name, &DeleteParams::default())
            .await
            .map_err(|e| map_kube_error(e, t))?;
        Ok(())
    }
}

#[async_trait]
impl Logs for KubernetesInvoker {
    async fn logs(&self, request: LogsRequest) -> Result<LogStream> {
        let Some(function) = request.function.clone() else {
            return Err(Error::invalid("name", "the function whose logs to read is required"));
        };
        let f = FunctionRef::new(function.name.clone(), self.ns(&function.namespace));
        validate_dns1123_label(&f.name).map_err(|r| Error::invalid("name", r))?;
        // NotFound for a function that does not exist (rather than no logs).
        self.get_deployment(&f).await?;
        let pods = self.pods(&f.namespace);
        let t = Target {
            kind: "function",
            name: &f.name,
            namespace: &f.namespace,
            action: "list pods",
        };
        let list = pods
            .list(&ListParams::default().labels(&format!("{FUNCTION_LABEL}={}", f.name)))
            .await
            .map_err(|e| map_kube_error(e, t))?;
        let mut names: Vec<String> =
            list.items.iter().filter_map(|p| p.metadata.name.clone()).collect();
        if let Some(instance) = &request.instance {
            names.retain(|n| n == instance);
        }
        names.sort();
        let since_seconds = request.since.map(|s| {
            let ago = SystemTime::now().duration_since(s).unwrap_or_default();
            ago.as_secs().max(1).min(i64::MAX as u64) as i64
        });
        let lp = LogParams {
            container: Some(f.name.clone()),
            follow: request.follow,
            tail_lines: request.tail.map(|n| n.min(i64::MAX as usize) as i64),
            since_seconds,
            timestamps: true,
            ..Default::default()
        };
        let t = Target { action: "get pods/log", ..t };
        let mut streams = Vec::with_capacity(names.len());
        for pod in names {
            let reader = pods.log_stream(&pod, &lp).await.map_err(|e| map_kube_error(e, t))?;
            let (name, namespace, since) = (f.name.clone(), f.namespace.clone(), request.since);
            let lines = reader
                .lines()
                .map_err(|e| Error::unavailable(format!("reading pod logs: {e}")))
                .try_filter_map(move |line| {
                    let (timestamp, text) = parse_log_line(&line);
                    let keep = since.is_none_or(|s| timestamp >= s);
                    let entry = LogEntry {
                        name: name.clone(),
                        namespace: namespace.clone(),
                        instance: pod.clone(),
                        timestamp,
                        text,
                    };
                    futures::future::ready(Ok(keep.then_some(entry)))
                });
            streams.push(lines.boxed());
        }
        if request.follow {
            return Ok(futures::stream::select_all(streams).boxed());
        }
        // Not following: every pod's lines, merged in time order, then the overall tail.
        let mut all = Vec::new();
        for s in streams {
            all.extend(s.try_collect::<Vec<_>>().await?);
        }
        all.sort_by_key(|e| e.timestamp);
        if let Some(n) = request.tail {
            let skip = all.len().saturating_sub(n);
            all.drain(..skip);
        }
        Ok(futures::stream::iter(all.into_iter().map(Ok)).boxed())
    }
}

fn check_secret(secret: &Secret) -> Result<()> {
    validate_secret_name(&secret.name).map_err(|r| Error::invalid("name", r))?;
    validate_dns1123_label(&secret.namespace).map_err(|r| Error::invalid("namespace", r))?;
    Ok(())
}

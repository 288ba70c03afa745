//! # faas-backend-docker
//!
//! A [`faas_core::Backend`] on a real Docker engine: functions are images, instances are
//! containers, warm containers are paused and resumed.
//!
//! ```no_run
//! # async fn demo() -> faas_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use faas_backend_docker::DockerInvoker;
//! use faas_core::prelude::*;
//! use faas_core::{FunctionSpec, LeastLoaded};
//!
//! let docker = DockerInvoker::builder()
//!     .scheduler(Arc::new(LeastLoaded::new()))
//!     .pause_after(Duration::from_secs(10))
//!     .prewarm("faas-rs/fixture:latest", 2)
//!     .start_timeout(Duration::from_secs(30))
//!     .build()
//!     .await?;
//! docker.deploy(FunctionSpec::new("echo", "faas-rs/fixture:latest")).await?;
//! let out = docker.call("echo", "hi").await?;
//! # let _ = out; Ok(()) }
//! ```
//!
//! ## How it maps
//!
//! - **Images** follow the OpenFaaS convention: a watchdog listening on port 8080 runs the
//!   function process (`fprocess`, from the spec's `envProcess` or the image's environment).
//!   An image the engine lacks is pulled from its registry at deploy (progress in the log);
//!   the registry's error fails the deploy naming the image.
//! - **Replicas** are containers labelled `com.faas-rs.function`, `com.faas-rs.namespace`,
//!   `com.faas-rs.spec-hash`, `com.faas-rs.role=replica` and OpenFaaS's `faas_function`,
//!   named `faas-rs.<namespace>.<name>.<suffix>`. Port 8080 is published on 127.0.0.1 only,
//!   on an ephemeral host port. Env vars, memory and CPU limits and a read-only root
//!   filesystem come from the spec; secrets are files under the backend's secrets directory,
//!   bind-mounted read-only at `/var/openfaas/secrets/<name>`.
//! - **Definitions**: each function also has one created-but-never-started container
//!   (`faas-rs-def.<instance>.<namespace>.<name>`, role `definition`) whose labels hold the
//!   spec, so a restarted backend adopts its functions, even those at zero replicas.
//! - **Sharing an engine**: every container carries the backend's instance id in the label
//!   `com.faas-rs.instance` ([`DockerInvokerBuilder::instance`], or kept in
//!   [`DockerInvokerBuilder::state_dir`]). A backend lists, adopts, replaces and removes only
//!   containers with its own id, so several gateways (or a gateway and other tools) share one
//!   engine without touching each other's functions; a restarted gateway with the same id
//!   adopts its own. Containers without the label are never touched.
//! - **Engine refusals**: what the engine would refuse and can be known up front is refused
//!   at deploy and update naming the field (`limits.memory` under the engine's 6 MiB
//!   minimum, `limits.cpu` under 0.01 or over the host's CPUs, an image not in the engine).
//!   A start that fails later (the image untagged since, the process exits before it is
//!   ready) puts the function in a failed state: [`faas_core::FunctionStatus::failure`]
//!   names the reason, invocations fail at once with it (503, or the developer error of the
//!   start), and the maintenance loop retries with [`faas_core::util::Backoff`] (from
//!   [`DockerInvokerBuilder::health_interval`] doubling to 5 minutes) until a start
//!   succeeds, an update or a scale request asks again.
//! - **Readiness** is the watchdog's `GET /_/health` answering 200 (a TCP connect to a
//!   published port succeeds before anything listens, so it proves nothing).
//! - **Routing** goes through a [`faas_core::Scheduler`]: the builder's (default
//!   [`faas_core::LeastLoaded`]), or the strategy a function chooses with the label
//!   `com.faas-rs.scheduler` ([`faas_core::scheduler::SCHEDULER_LABEL`], e.g. `hash` for
//!   sticky routing; a bad value is rejected at deploy and update naming the label).
//!   A function's ready replicas are the instances of its
//!   [`faas_core::instance::InstanceSet`], the instance runtime the process, Swarm and
//!   Kubernetes backends share: it routes (replicas in a stable order, by name), queues
//!   invocations first come first served while every replica is busy or none has started,
//!   and asks this backend for a start when the function has none (scale from zero).
//!   Invocations are forwarded over HTTP/1.1 to `127.0.0.1:<port>` by the shared
//!   [`faas_core::instance::InstanceClient`].
//! - **Warm paths** (OpenWhisk's container pool): a replica idle for
//!   [`DockerInvokerBuilder::pause_after`] is paused and unpaused on the next request, before
//!   forwarding; a prewarm pool of generic containers per image
//!   ([`DockerInvokerBuilder::prewarm`]), refilled in the background, serves cold starts of
//!   functions whose container configuration equals the pool's; OpenWhisk actions also take
//!   stem cells of their kind ([`DockerInvokerBuilder::stem_cells`]: the same pools, of
//!   runtimes started but not initialised, specialised by `/init` on first use). Every
//!   response carries a
//!   [`faas_core::InvocationMeta`] extension saying whether the start was cold, prewarmed,
//!   resumed or warm.
//! - **Faults**: a maintenance loop (every [`DockerInvokerBuilder::health_interval`]) replaces
//!   replicas killed from outside and restores replica counts. An unreachable engine gives
//!   [`faas_core::Error::Unavailable`] with the reason; the backend carries on when the engine
//!   returns.
//! - **Logs** are the containers' `docker logs` (with timestamps), one stream per replica,
//!   merged by timestamp. Before a replica's container is removed (scale down, scale to zero,
//!   update, crash replacement) its last lines are copied into a per-function in-memory ring,
//!   bounded by [`DockerInvokerBuilder::log_retention`] (default 10 000 lines and 8 MiB per
//!   function), so [`faas_core::Logs::logs`] keeps returning them, with their instance
//!   names, until the function is removed (or the backend restarts).

mod engine;
mod inner;
mod logs;
mod placement;
mod proxy;
mod pull;
mod secrets;
mod state;
pub mod swarm;
pub mod swarm_testing;
pub mod testing;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bollard::query_parameters::StatsOptions;
use faas_core::prelude::*;
use faas_core::scheduler::Schedulers;
use faas_core::util::lock;
use faas_core::{
    Error, FunctionRef, FunctionSpec, FunctionStatus, Invocation, LeastLoaded, LogStream,
    LogsRequest, ProviderInfo, ReplicaLimits, Response, Result, Scheduler, Secret, SecretInfo,
    Usage,
};
use futures::StreamExt;

use crate::inner::{Inner, Settings};
pub use crate::logs::{LogRetention, DEFAULT_RETAINED_LOG_BYTES, DEFAULT_RETAINED_LOG_LINES};
use crate::state::{FunctionState, Pool, Replica, Template};

/// The most stem cells of one kind ([`DockerInvokerBuilder::stem_cells`]).
const MAX_STEM_CELLS: usize = 64;

/// The default namespace list when none is configured.
const DEFAULT_NAMESPACES: &[&str] = &[faas_core::spec::DEFAULT_NAMESPACE];

/// Builds a [`DockerInvoker`]; see [`DockerInvoker::builder`].
pub struct DockerInvokerBuilder {
    socket: Option<String>,
    scheduler: Option<Arc<dyn Scheduler>>,
    pause_after: Option<Duration>,
    prewarm: Vec<(Template, usize)>,
    /// (kind, image if not the manifest's, count).
    stem_cells: Vec<(String, Option<String>, usize)>,
    start_timeout: Duration,
    health_interval: Duration,
    secrets_dir: Option<PathBuf>,
    namespaces: Option<BTreeSet<String>>,
    owner: String,
    log_retention: LogRetention,
    limits: Option<ReplicaLimits>,
    start_concurrency: usize,
    instance: Option<String>,
    state_dir: Option<PathBuf>,
}

impl std::fmt::Debug for DockerInvokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerInvokerBuilder")
            .field("socket", &self.socket)
            .field("pause_after", &self.pause_after)
            .field("start_timeout", &self.start_timeout)
            .field("namespaces", &self.namespaces)
            .field("owner", &self.owner)
            .field("log_retention", &self.log_retention)
            .field("limits", &self.limits)
            .field("start_concurrency", &self.start_concurrency)
            .field("instance", &self.instance)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl Default for DockerInvokerBuilder {
    fn default() -> Self {
        DockerInvokerBuilder {
            socket: None,
            scheduler: None,
            pause_after: None,
            prewarm: Vec::new(),
            stem_cells: Vec::new(),
            start_timeout: Duration::from_secs(30),
            health_interval: Duration::from_secs(1),
            secrets_dir: None,
            namespaces: None,
            owner: "faas-rs".to_string(),
            log_retention: LogRetention::default(),
            limits: None,
            start_concurrency: 4,
            instance: None,
            state_dir: None,
        }
    }
}

impl DockerInvokerBuilder {
    /// The engine's unix socket (default: `DOCKER_HOST` or `/var/run/docker.sock`).
    pub fn socket(mut self, path: impl Into<String>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// The scheduler routing invocations over ready replicas (default
    /// [`faas_core::LeastLoaded`]) of functions without the label
    /// [`faas_core::scheduler::SCHEDULER_LABEL`]; functions with it use that strategy.
    pub fn scheduler(mut self, scheduler: Arc<dyn Scheduler>) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// Pause replicas idle for this long; unpause on the next request (default: never).
    pub fn pause_after(mut self, idle: Duration) -> Self {
        self.pause_after = Some(idle);
        self
    }

    /// Keep `count` generic running containers of `image` (with the image's own
    /// configuration) ready for cold starts of functions that add no env vars, process,
    /// secrets or limits of their own.
    pub fn prewarm(mut self, image: impl Into<String>, count: usize) -> Self {
        self.prewarm.push((Template::image(image), count));
        self
    }

    /// Keep `count` containers prewarmed for functions whose container configuration (image,
    /// `envProcess`, `envVars`, limits, read-only root filesystem) equals `template`'s. Its
    /// name, namespace, labels and secrets are ignored.
    pub fn prewarm_spec(mut self, template: &FunctionSpec, count: usize) -> Self {
        let limits = template.limits.clone().unwrap_or_default();
        let t = Template {
            image: template.image.clone(),
            env_process: template.env_process.clone(),
            env: template.env_vars.clone(),
            binds: Vec::new(),
            memory: limits.memory_bytes(),
            nano_cpus: limits.cpu_millis().map(|m| m.saturating_mul(1_000_000)),
            read_only: template.read_only_root_filesystem,
        };
        self.prewarm.push((t, count));
        self
    }

    /// Keeps `count` stem cells of the OpenWhisk `kind` (`python:3`, `nodejs:20`: one whose
    /// [`faas_core::runtimes`] manifest entry names an image): running containers of the
    /// kind's image whose watchdog has started the runtime but not initialised it
    /// (`ow_stem=true`). A new replica of an action of that kind takes one when it finds no
    /// prewarmed container of its own, and makes it the action's instance by
    /// [`faas_watchdog::openwhisk::SPECIALISE_PATH`] (`/init` with the action's code; its
    /// `envVars` reach the runtime through `/init`'s `env`) instead of creating a container;
    /// a taken stem cell is replaced in the background. Warm replicas of the action are
    /// reused before any of this, paused after [`pause_after`](Self::pause_after), and
    /// removed when the function scales down (to zero after its scaling policy's idle
    /// time). Actions with secrets, limits or a read-only root filesystem take stem cells
    /// only of a pool with the same (none here), and actions that set their own
    /// `envProcess` or a watchdog variable
    /// ([`faas_watchdog::openwhisk::STEM_FIXED_VARS`]) always start cold. At most 64 per
    /// kind; stem cells are not counted under the replica cap.
    pub fn stem_cells(mut self, kind: &str, count: usize) -> Self {
        self.stem_cells.push((kind.trim().to_string(), None, count));
        self
    }

    /// [`stem_cells`](Self::stem_cells) of `kind` in `image` rather than the manifest's
    /// image: the way to keep stem cells of a `blackbox` runtime image (which serves actions
    /// of kind `blackbox` deployed with that image), or of a kind's own build of the image.
    pub fn stem_cells_image(mut self, kind: &str, image: impl Into<String>, count: usize) -> Self {
        self.stem_cells.push((kind.trim().to_string(), Some(image.into()), count));
        self
    }

    /// How long a replica may take to become ready (and an invocation may wait for one).
    /// Default 30 s.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How often the maintenance loop checks replicas, pauses idle ones and refills pools.
    /// Default 1 s.
    pub fn health_interval(mut self, interval: Duration) -> Self {
        self.health_interval = interval;
        self
    }

    /// Where secrets are stored as files (default: `<tmp>/faas-rs-docker/secrets`). Must be
    /// on the engine's host: they are bind-mounted.
    pub fn secrets_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.secrets_dir = Some(dir.into());
        self
    }

    /// Restricts this backend to these namespaces (default: any). It only adopts, lists and
    /// manages functions of these namespaces, so several backends can share an engine.
    pub fn namespaces<I, S>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.namespaces = Some(namespaces.into_iter().map(Into::into).collect());
        self
    }

    /// The owner name of this backend's prewarm containers (default `faas-rs`); stale
    /// prewarm containers of the same owner are removed at start.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// How much of its removed replicas' logs each function keeps (default
    /// [`DEFAULT_RETAINED_LOG_LINES`] lines and [`DEFAULT_RETAINED_LOG_BYTES`] bytes per
    /// function; see [`LogRetention`]). A replica removed by a scale down, a scale to zero,
    /// an update or a crash replacement has its last lines (at most `lines`) copied before
    /// its container goes, and [`Logs::logs`] keeps returning them, merged by timestamp
    /// with the live replicas' lines, until the function is removed. A zero bound disables
    /// it (removed replicas' logs then go with their containers).
    pub fn log_retention(mut self, retention: LogRetention) -> Self {
        self.log_retention = retention;
        self
    }

    /// Caps on replicas per function and on the Docker host over all functions (default:
    /// [`ReplicaLimits::for_machine`] of the host's CPUs and memory as the engine reports
    /// them, else of this machine). Scaling labels or a scale request over the per-function
    /// cap are refused naming the field and the cap; past the host's cap no container starts
    /// until another is gone.
    pub fn replica_limits(mut self, limits: ReplicaLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// How many containers one deploy, scale or update starts at once (default 4).
    pub fn start_concurrency(mut self, n: usize) -> Self {
        self.start_concurrency = n.max(1);
        self
    }

    /// This backend's instance id (letters, digits, `-` and `_`, at most 64; other
    /// characters become `-`): the value of the label `com.faas-rs.instance` on every
    /// container it creates, and the only containers it lists, adopts, replaces or removes.
    /// Give each gateway on an engine its own, and a restarted gateway the same. Default: the
    /// one kept in [`DockerInvokerBuilder::state_dir`], else `default`.
    pub fn instance(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }

    /// Where the instance id is kept (the file `docker-instance` in `dir`, created with a
    /// random id on the first start, read on the later ones) when
    /// [`DockerInvokerBuilder::instance`] gives none: one id per state directory, so a
    /// gateway restarted on the same directory adopts its own containers and one on another
    /// directory leaves them alone.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Connects to the engine (negotiating the API version), adopts the functions and
    /// replicas found there, starts the maintenance loop and fills the prewarm pools.
    /// [`Error::Unavailable`] when the engine cannot be reached.
    pub async fn build(self) -> Result<DockerInvoker> {
        let docker_limits = self.limits;
        let owner: String = self
            .owner
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
            .collect();
        if owner.is_empty() {
            return Err(Error::invalid("owner", "must not be empty"));
        }
        for ns in self.namespaces.iter().flatten() {
            faas_core::util::validate_dns1123_label(ns)
                .map_err(|r| Error::invalid("namespaces", r))?;
        }
        let instance = match (&self.instance, &self.state_dir) {
            (Some(id), _) => instance_id(id)?,
            (None, Some(dir)) => kept_instance_id(dir)?,
            (None, None) => DEFAULT_INSTANCE.to_string(),
        };
        let mut pools = std::collections::HashMap::new();
        for (t, n) in self.prewarm {
            pools.entry(t).or_insert_with(Pool::default).target += n;
        }
        for (kind, image, n) in self.stem_cells {
            let Some(k) = faas_core::runtimes::lookup(&kind) else {
                return Err(Error::invalid(
                    "stem_cells",
                    format!("{kind:?} is not an OpenWhisk runtime kind here"),
                ));
            };
            let Some(image) = image.or_else(|| k.image.map(str::to_string)) else {
                return Err(Error::invalid(
                    "stem_cells",
                    format!("{kind:?} has no image of its own: give one (stem_cells_image)"),
                ));
            };
            if n > MAX_STEM_CELLS {
                return Err(Error::invalid(
                    "stem_cells",
                    format!("{n} is over {MAX_STEM_CELLS} for {kind}"),
                ));
            }
            pools.entry(Template::stem(image, k.kind)).or_insert_with(Pool::default).target += n;
        }
        let docker = engine::connect(self.socket.as_deref()).await?;
        let (host_limits, host_cpus) = host_limits(&docker).await;
        let limits = docker_limits.unwrap_or(host_limits);
        let secrets_dir = self
            .secrets_dir
            .unwrap_or_else(|| std::env::temp_dir().join("faas-rs-docker").join("secrets"));
        let inner = Arc::new(Inner {
            docker,
            schedulers: Schedulers::new(
                self.scheduler.unwrap_or_else(|| Arc::new(LeastLoaded::new())),
            ),
            settings: Settings {
                pause_after: self.pause_after,
                start_timeout: self.start_timeout,
                health_interval: self.health_interval,
                secrets_dir,
                namespaces: self.namespaces,
                owner,
                log_retention: self.log_retention,
                limits,
                start_concurrency: self.start_concurrency.max(1),
                instance,
                host_cpus,
                start_backoff: faas_core::util::Backoff::new(
                    self.health_interval.max(Duration::from_millis(10)),
                    MAX_START_BACKOFF,
                ),
            },
            client: faas_core::instance::InstanceClient::new(),
            functions: Mutex::new(Default::default()),
            pools: Mutex::new(pools),
            closed: Default::default(),
            engine_down: Default::default(),
            node_slots: Arc::new(tokio::sync::Semaphore::new(limits.per_node() as usize)),
            pulls: Mutex::new(Default::default()),
        });
        inner.adopt().await?;
        let templates: Vec<Template> = lock(&inner.pools).keys().cloned().collect();
        for t in templates {
            inner.refill_pool(t);
        }
        let weak = Arc::downgrade(&inner);
        let interval = inner.settings.health_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { break };
                if inner.closed.load(Ordering::SeqCst) {
                    break;
                }
                inner.tick().await;
            }
        });
        Ok(DockerInvoker { inner })
    }
}

/// The instance id when neither [`DockerInvokerBuilder::instance`] nor
/// [`DockerInvokerBuilder::state_dir`] gives one.
pub const DEFAULT_INSTANCE: &str = "default";

/// The file in the state directory that keeps the instance id.
const INSTANCE_FILE: &str = "docker-instance";

/// The longest wait between two attempts to start a function that keeps failing.
const MAX_START_BACKOFF: Duration = Duration::from_secs(300);

/// `id` as an instance id: letters, digits, `-` and `_` (anything else becomes `-`),
/// 1 to 64 of them.
fn instance_id(id: &str) -> Result<String> {
    let id: String = id
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    if id.is_empty() || id.len() > 64 {
        return Err(Error::invalid("instance", "must be 1 to 64 letters, digits, '-' or '_'"));
    }
    Ok(id)
}

/// The instance id kept in `dir`, created (random) on first use.
fn kept_instance_id(dir: &std::path::Path) -> Result<String> {
    let path = dir.join(INSTANCE_FILE);
    let io = |e: std::io::Error| Error::internal(format!("{}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(s) => instance_id(&s).map_err(|e| {
            Error::invalid("state-dir", format!("{} holds no instance id: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io)?;
            let id = format!("gw-{}", &faas_core::InvocationId::new().as_str()[..12]);
            // Written aside and renamed, so a crash never leaves a half-written id.
            let tmp = dir.join(format!("{INSTANCE_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id}\n")).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            instance_id(&id)
        }
        Err(e) => Err(io(e)),
    }
}

/// The default replica caps of the engine's host (its CPUs and memory), else of this
/// machine, and the host's CPUs if the engine says.
async fn host_limits(docker: &bollard::Docker) -> (ReplicaLimits, Option<u64>) {
    match docker.info().await {
        Ok(info) => match (info.ncpu, info.mem_total) {
            (Some(cpus), Some(mem)) if cpus > 0 && mem > 0 => {
                (ReplicaLimits::for_machine(cpus as u64, mem as u64), Some(cpus as u64))
            }
            _ => (ReplicaLimits::detect(), None),
        },
        Err(_) => (ReplicaLimits::detect(), None),
    }
}

/// One replica as [`DockerInvoker::instances`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceInfo {
    /// The container name (the instance id in logs and activation records).
    pub name: String,
    /// The container id.
    pub container_id: String,
    /// The published port on 127.0.0.1.
    pub port: u16,
    /// Whether it is paused.
    pub paused: bool,
    /// Invocations in flight on it.
    pub in_flight: u32,
    /// Whether it is being drained (by a scale down or an update).
    pub draining: bool,
    /// Hash of the spec it runs.
    pub spec_hash: String,
}

/// The Docker backend. Cheap to clone; see the crate docs.
#[derive(Clone)]
pub struct DockerInvoker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DockerInvoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerInvoker")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl DockerInvoker {
    /// A builder with the defaults: local engine, least-loaded routing, no pausing, no
    /// prewarm pool, 30 s start timeout.
    pub fn builder() -> DockerInvokerBuilder {
        DockerInvokerBuilder::default()
    }

    /// A backend with the defaults on the local engine.
    pub async fn connect() -> Result<DockerInvoker> {
        Self::builder().build().await
    }

    /// The replicas of a function.
    pub fn instances(&self, function: &FunctionRef) -> Result<Vec<InstanceInfo>> {
        let f = self.inner.function(function)?;
        Ok(f.snapshot()
            .iter()
            .filter(|r| !r.dead.load(Ordering::SeqCst))
            .map(|r| InstanceInfo {
                name: r.name.clone(),
                container_id: r.id.clone(),
                port: r.port,
                paused: r.paused.load(Ordering::SeqCst),
                in_flight: f.in_flight(r),
                draining: r.draining.load(Ordering::SeqCst),
                spec_hash: r.spec_hash.clone(),
            })
            .collect())
    }

    /// How many prewarmed containers are ready now, over all pools.
    pub fn prewarmed(&self) -> usize {
        lock(&self.inner.pools).values().map(|p| p.ready.len()).sum()
    }

    /// The container ids of the ready stem cells of the OpenWhisk `kind` in `image` (the
    /// kind's manifest image when `None`); see [`DockerInvokerBuilder::stem_cells`].
    pub fn stem_cells(&self, kind: &str, image: Option<&str>) -> Vec<String> {
        let Some(k) = faas_core::runtimes::lookup(kind) else { return Vec::new() };
        let Some(image) = image.or(k.image) else { return Vec::new() };
        lock(&self.inner.pools)
            .get(&Template::stem(image, k.kind))
            .map(|p| p.ready.iter().map(|c| c.id.clone()).collect())
            .unwrap_or_default()
    }

    /// Stops the maintenance loop and removes this backend's prewarm containers. Function
    /// replicas keep running, so a new backend adopts them; remove functions to stop them.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.drain_pools().await;
        // Pool refills in flight remove their container when they see `closed`; wait for
        // them so nothing is left behind.
        let deadline = tokio::time::Instant::now() + self.inner.settings.start_timeout;
        while tokio::time::Instant::now() < deadline
            && lock(&self.inner.pools).values().any(|p| p.starting > 0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.inner.drain_pools().await;
    }

    /// This backend's instance id (the label `com.faas-rs.instance` of its containers).
    pub fn instance_id(&self) -> &str {
        &self.inner.settings.instance
    }

    fn status_of(&self, f: &FunctionState) -> FunctionStatus {
        let info = f.spec();
        let mut st = FunctionStatus::from_spec(&info.spec);
        st.failure = f.failure();
        st.invocation_count = f.invocations.load(Ordering::Relaxed);
        st.replicas = u64::from(f.desired.load(Ordering::SeqCst));
        st.available_replicas = f.live().len() as u64;
        st.created_at = Some(f.created_at);
        st
    }

    async fn usage(&self, replicas: &[Arc<Replica>]) -> Usage {
        let stats = futures::future::join_all(replicas.iter().map(|r| async move {
            let opts = StatsOptions { stream: false, one_shot: true };
            let mut s = self.inner.docker.stats(&r.id, Some(opts));
            let first = tokio::time::timeout(Duration::from_secs(3), s.next()).await;
            (r, first)
        }))
        .await;
        let mut usage = Usage::default();
        for (r, s) in stats {
            let Ok(Some(Ok(s))) = s else { continue };
            if let Some(m) = &s.memory_stats {
                let inactive = m
                    .stats
                    .as_ref()
                    .and_then(|st| {
                        st.get("inactive_file").or_else(|| st.get("total_inactive_file")).copied()
                    })
                    .unwrap_or(0);
                usage.total_memory_bytes += m.usage.unwrap_or(0).saturating_sub(inactive) as f64;
            }
            if let Some(c) = &s.cpu_stats {
                let total = c.cpu_usage.as_ref().and_then(|u| u.total_usage).unwrap_or(0);
                let system = c.system_cpu_usage.unwrap_or(0);
                let cpus = f64::from(c.online_cpus.unwrap_or(1).max(1));
                let mut prev = lock(&r.cpu_sample);
                if let Some((pt, ps)) = *prev {
                    if system > ps && total >= pt {
                        usage.cpu += (total - pt) as f64 / (system - ps) as f64 * cpus;
                    }
                }
                *prev = Some((total, system));
            }
        }
        usage
    }
}

#[async_trait]
impl Invoke for DockerInvoker {
    async fn invoke(&self, invocation: Invocation) -> Result<Response> {
        self.inner.invoke(invocation).await
    }
}

#[async_trait]
impl Deploy for DockerInvoker {
    async fn deploy(&self, spec: FunctionSpec) -> Result<()> {
        spec.validate()?;
        let inner = &self.inner;
        spec.scaling_policy_within(&inner.settings.limits)?;
        let fref = spec.function_ref();
        inner.check_namespace(&fref.namespace)?;
        let scheduler = inner.scheduler_for(&spec)?;
        let info = inner.spec_info(spec, scheduler)?;
        inner.check_engine_limits(&info.template)?;
        if lock(&inner.functions).contains_key(&fref) {
            return Err(Error::AlreadyExists { kind: "function", name: fref.to_string() });
        }
        inner.check_image(&info.spec).await?;
        placement::check_local(&inner.docker, &info.spec).await?;
        let created = SystemTime::now();
        let desired = info.min_replicas;
        let def = inner.create_definition(&info, created).await?;
        let f = Arc::new(FunctionState::new(
            fref.clone(),
            info,
            desired,
            created,
            inner.settings.log_retention,
        ));
        *lock(&f.definition_id) = def.clone();
        let inserted = {
            let mut fs = lock(&inner.functions);
            if fs.contains_key(&fref) {
                false
            } else {
                fs.insert(fref.clone(), Arc::clone(&f));
                true
            }
        };
        if !inserted {
            let _ = inner.remove_container(&def).await;
            return Err(Error::AlreadyExists { kind: "function", name: fref.to_string() });
        }
        if desired > 0 {
            inner.spawn_reconcile(f);
        }
        Ok(())
    }

    async fn update(&self, spec: FunctionSpec) -> Result<()> {
        spec.validate()?;
        let inner = &self.inner;
        spec.scaling_policy_within(&inner.settings.limits)?;
        let fref = spec.function_ref();
        inner.check_namespace(&fref.namespace)?;
        let f = inner.function(&fref)?;
        let scheduler = inner.scheduler_for(&spec)?;
        let info = inner.spec_info(spec, scheduler)?;
        inner.check_engine_limits(&info.template)?;
        inner.check_image(&info.spec).await?;
        placement::check_local(&inner.docker, &info.spec).await?;
        let _g = f.reconcile_lock.lock().await;
        // A new spec is a new chance: the old spec's start failures no longer count.
        f.clear_failure();
        let old_def = lock(&f.definition_id).clone();
        // Replace the definition first: it reserves the name and fails early on a bad image.
        inner.remove_container(&old_def).await?;
        let def = inner.create_definition(&info, f.created_at).await?;
        *lock(&f.definition_id) = def;
        let n = f.live().len().max(f.desired.load(Ordering::SeqCst) as usize);
        // Start the new replicas before draining the old ones: in-flight requests finish on
        // the old replicas, new ones go to the new.
        // Within the node cap: replicas the cap leaves no room for now are started by the
        // maintenance loop once the old ones are gone.
        let fresh = inner.start_replicas(&f, &info, inner.node_slots(n)).await;
        let mut started = Vec::new();
        let mut failure = None;
        for r in fresh {
            match r {
                Ok(r) => started.push(r),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            for r in started {
                let _ = inner.remove_container(&r.id).await;
            }
            return Err(e);
        }
        let old = f.live();
        f.set_spec(info);
        // The new replicas serve before the old ones leave routing.
        for r in started {
            if !f.push(Arc::clone(&r)) {
                let _ = inner.remove_container(&r.id).await;
            }
        }
        let old = old
            .into_iter()
            .map(|r| {
                let drain = f.retire(&r);
                (r, drain)
            })
            .collect();
        inner.spawn_drain(Arc::clone(&f), old);
        Ok(())
    }

    async fn remove(&self, function: &FunctionRef) -> Result<()> {
        let inner = &self.inner;
        let f = lock(&inner.functions)
            .remove(function)
            .ok_or_else(|| Error::function_not_found(function.to_string()))?;
        f.mark_removed();
        let _g = f.reconcile_lock.lock().await;
        let replicas = f.snapshot();
        for r in &replicas {
            f.kill(r);
        }
        let results =
            futures::future::join_all(replicas.iter().map(|r| inner.remove_container(&r.id))).await;
        let def = lock(&f.definition_id).clone();
        inner.remove_container(&def).await?;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        // Replicas being replaced or renamed in the background are caught by name.
        inner.remove_all_named(function).await
    }

    async fn list(&self, namespace: &str) -> Result<Vec<FunctionStatus>> {
        self.inner.check_namespace(namespace)?;
        let fs: Vec<Arc<FunctionState>> = lock(&self.inner.functions)
            .values()
            .filter(|f| f.fref.namespace == namespace)
            .cloned()
            .collect();
        let mut out: Vec<FunctionStatus> = fs.iter().map(|f| self.status_of(f)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The function's status; while a deploy or update of it pulls its image, with the
    /// pull's progress (a function being deployed is reported from its spec, with no
    /// replica, until the pull ends).
    async fn status(&self, function: &FunctionRef) -> Result<FunctionStatus> {
        let pulling = self.inner.pulling(function);
        let f = match self.inner.function(function) {
            Ok(f) => f,
            Err(e) => {
                let Some((spec, progress)) = pulling else { return Err(e) };
                let mut st = FunctionStatus::from_spec(&spec);
                st.pull = Some(progress);
                return Ok(st);
            }
        };
        let mut st = self.status_of(&f);
        st.usage = Some(self.usage(&f.live()).await);
        st.pull = pulling.map(|(_, p)| p);
        Ok(st)
    }

    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<()> {
        self.inner.settings.limits.check_scale(replicas)?;
        let f = self.inner.function(function)?;
        f.desired.store(replicas, Ordering::SeqCst);
        if replicas == 0 {
            // Nothing left to start: no failed state to report.
            f.clear_failure();
        }
        let mut r = self.inner.reconcile(&f).await;
        // A concurrent reconcile may have held the lock with an older target.
        if f.live().len() != replicas as usize && r.is_ok() {
            r = self.inner.reconcile(&f).await;
        }
        // The request was valid: a start the engine refused is the function's failed
        // state (503 naming the reason), not the caller's 400.
        r.map_err(|e| f.failure_error().unwrap_or_else(|| f.start_failed(&e, None)))
    }

    async fn namespaces(&self) -> Result<Vec<String>> {
        let set: BTreeSet<String> = match &self.inner.settings.namespaces {
            Some(s) => s.clone(),
            None => DEFAULT_NAMESPACES
                .iter()
                .map(|s| s.to_string())
                .chain(lock(&self.inner.functions).keys().map(|f| f.namespace.clone()))
                .collect(),
        };
        Ok(set.into_iter().collect())
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: "faas-rs-docker".to_string(),
            orchestration: "docker".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Woken when a replica joins the function (or a start fails, or the function is
    /// removed); no engine call. A function in a failed state with no replica ends the wait
    /// at once with the reason (503, or the start's developer error).
    async fn wait_ready(&self, function: &FunctionRef, timeout: Duration) -> Result<bool> {
        let f = self.inner.function(function)?;
        faas_core::invoker::wait_notified(&f.changed, timeout, || {
            if f.removed.load(Ordering::SeqCst) {
                return Err(Error::function_not_found(function.to_string()));
            }
            if !f.instances.is_empty() {
                return Ok(true);
            }
            match f.failure_error() {
                Some(e) => Err(e),
                None => Ok(false),
            }
        })
        .await
    }
}

#[async_trait]
impl Secrets for DockerInvoker {
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        self.inner.list_secrets(namespace)
    }

    async fn create_secret(&self, secret: Secret) -> Result<()> {
        self.inner.create_secret(&secret)
    }

    async fn update_secret(&self, secret: Secret) -> Result<()> {
        self.inner.update_secret(&secret)
    }

    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()> {
        self.inner.remove_secret(namespace, name)
    }
}

#[async_trait]
impl Logs for DockerInvoker {
    async fn logs(&self, request: LogsRequest) -> Result<LogStream> {
        self.inner.logs(request).await
    }
}

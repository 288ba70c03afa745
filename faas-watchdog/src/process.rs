//! The process backend: each function replica is a `faas-watchdog` process on its own
//! `127.0.0.1` port, running the spec's `envProcess` (`fprocess`). No Docker needed.
//! An `http`-mode replica is by default the function's process alone, listening on that port,
//! and the backend does the watchdog's part for it (see
//! [`ProcessInvokerBuilder::http_watchdog`]); a `lambda`-mode replica is by default its
//! Lambda runtimes alone, started by the backend, which serves their Runtime API and hands
//! them the invocations itself (see [`ProcessInvokerBuilder::lambda_watchdog`]).
//!
//! - **Deploy** validates the spec (`envProcess` is required, except for an OpenWhisk action
//!   whose kind has a local runtime in [`faas_core::runtimes`]: then that runtime is the
//!   command; `image` is recorded but not run), places it on the single local node through
//!   the [`Scheduler`] (so constraints or platforms this machine cannot meet give the
//!   scheduler's clear error), and starts
//!   `com.openfaas.scale.min` replicas in the background. An instance is ready once its
//!   watchdog answers `/_/health` with 200 (an `http`-mode process without a watchdog: once
//!   it accepts connections).
//! - **Invoke** routes to a ready replica with free capacity through
//!   [`Scheduler::route`]: the builder's scheduler (default [`LeastLoaded`]), or the
//!   strategy the function chooses with the label `com.faas-rs.scheduler`
//!   ([`faas_core::scheduler::SCHEDULER_LABEL`], e.g. `hash` for sticky routing; a bad value
//!   is rejected at deploy and update naming the label, before anything starts). Replicas are
//!   offered to the scheduler sorted by id. When every replica is busy
//!   (`spec.max_concurrency` per replica; a `lambda`-mode replica also takes one invocation
//!   per execution environment into its watchdog's line, see
//!   [`crate::lambda::replica_capacity`]) the invocation waits in line (first come, first
//!   served; at most [`ProcessInvokerBuilder::queue_limit`] waiting), bounded by
//!   [`ProcessInvokerBuilder::queue_timeout`] and by the caller's
//!   [`faas_core::invocation::WaitBudget`] (the gateway's is half its upstream timeout), then
//!   gets [`Error::Overloaded`] (429 with `Retry-After`). A function at zero replicas is
//!   scaled from zero and the invocation waits for the first replica (bounded by
//!   [`ProcessInvokerBuilder::start_timeout`]).
//! - **Mode and variables**: `spec.env_vars` reach the watchdog and the function process, so
//!   `mode`, `upstream_url`, `exec_timeout`, `max_inflight`... work as for the watchdog. The
//!   backend sets `port` and `bind_address=127.0.0.1`; in `http` mode it gives each replica
//!   its own upstream port (the function must listen on the environment variable `port`,
//!   which the watchdog sets, or the backend for a replica without a watchdog).
//!   `spec.timeout` becomes the watchdog's `exec_timeout` (unset: no limit; without a
//!   watchdog the backend answers a call over it with a timeout error); in `lambda` mode
//!   its memory limit becomes `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (in MiB) and its
//!   `maxConcurrency` the watchdog's `lambda_concurrency` (execution environments per
//!   replica), unless set. By default `prefix_logs=false` and
//!   `healthcheck_interval=0s` (the backend stops routing to a replica before it stops it).
//! - **Secrets** are files `<state>/secrets/<namespace>/<name>`; each function gets a copy of
//!   the secrets its spec names in its own directory, whose path is in the environment
//!   variable [`SECRETS_DIR_ENV`] (`OPENFAAS_SECRETS_DIR`). Updating a secret rewrites the
//!   copies, so functions see the new value on their next read.
//! - **Logs**: every line a replica writes (stdout and stderr, the watchdog's and the
//!   function's) is kept in memory per function, tagged with its instance, and appended to
//!   `<state>/logs/<namespace>/<name>/<instance>.log`. The lines of replicas stopped by a
//!   scale down, a scale to zero, an update or a crash stay listed (instance filter
//!   included) until the function is removed, within
//!   [`ProcessInvokerBuilder::log_limit`] lines and [`ProcessInvokerBuilder::log_bytes_limit`]
//!   bytes per function (default 10 000 lines and 8 MiB; the oldest lines go first).
//! - **Replica caps**: [`ProcessInvokerBuilder::replica_limits`] (default
//!   [`ReplicaLimits::detect`]: per node, memory / 64 MiB; per function, 8 x CPUs and at
//!   least 20). Scaling labels or a scale request over the per-function cap are refused with
//!   [`Error::InvalidSpec`] naming the field and the cap; the node never runs more than its
//!   cap of replicas over all functions (a function asking for more waits for free slots).
//! - **Starting replicas** happens off the request path: deploy, update and scale record the
//!   desired count and wake the function's reconciler, which starts replicas in the
//!   background, at most [`ProcessInvokerBuilder::start_concurrency`] at once on the node.
//! - **Crashes**: a replica whose watchdog exits is replaced by a new one (with backoff when
//!   it keeps failing); in `http` mode the watchdog itself restarts a dead function process,
//!   and a replica that is the function's process alone is replaced as a whole.
//! - **Stopping** an `http`-mode replica without a watchdog (scale down, update) first takes
//!   it out of routing and lets the calls already sent to it answer (bounded by
//!   [`ProcessInvokerBuilder::stop_grace`]), as a watchdog drains before stopping its process.
//! - **Scale to zero**: with `com.openfaas.scale.zero=true`, a function idle for its
//!   `com.openfaas.scale.zero-duration` goes to zero replicas.
//! - **Removal** stops every replica (SIGTERM, then SIGKILL of its process group after
//!   [`ProcessInvokerBuilder::stop_grace`]) and returns once they have exited. Processes are
//!   also told to die with their parent, so a crashed backend leaves none behind.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::OsString;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use faas_core::instance::{
    AcquireLimits, CallTimeout, InstanceClient, InstanceKey, InstanceSet, Target,
};
use faas_core::logbook::LogBook;
use faas_core::prelude::*;
use faas_core::scheduler::{Capacity as NodeResources, Schedulers};
use faas_core::spec::{validate_secret_name, ReplicaLimits, ScalingPolicy, DEFAULT_NAMESPACE};
use faas_core::util::lock;
use faas_core::{
    Error, FunctionRef, FunctionSpec, FunctionStatus, InstanceView, Invocation, InvocationMeta,
    LeastLoaded, LogStream, LogsRequest, Node, PlacementRequest, ProviderInfo, Response, Result,
    Scheduler, Secret, SecretInfo, StartKind,
};
use tokio::io::AsyncRead;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::sys;

/// The environment variable holding the path of the function's secrets directory.
pub const SECRETS_DIR_ENV: &str = "OPENFAAS_SECRETS_DIR";

/// The provider name in [`ProviderInfo`].
pub const PROVIDER: &str = "faas-rs-process";

/// The default of [`ProcessInvokerBuilder::log_bytes_limit`]: 8 MiB of log lines per function.
pub use faas_core::logbook::DEFAULT_LOG_BYTES_LIMIT;

/// The pause before replacing a replica that crashed within 10 s of its start: 200 ms
/// doubling to 5 s, without jitter (one function's restarts need no spreading).
const RESTART_BACKOFF: faas_core::util::Backoff = faas_core::util::Backoff {
    initial: Duration::from_millis(200),
    max: Duration::from_secs(5),
    multiplier: 2.0,
    jitter: false,
};

/// Environment variables passed from the backend's own environment to every replica.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// The watchdog settings an `http`-mode function can only have from a watchdog process:
/// set in `envVars`, its replicas run behind one (see [`ProcessInvokerBuilder::http_watchdog`]).
pub const WATCHDOG_ONLY_VARS: &[&str] = &[
    "max_inflight",
    "read_timeout",
    "write_timeout",
    "exec_timeout",
    "healthcheck_interval",
    "prefix_logs",
    "combine_output",
    "watchdog_threads",
    "upstream_keepalive",
];

/// Whether the replicas of `spec` are its `http`-mode process alone, relayed to by the
/// backend (see [`ProcessInvokerBuilder::http_watchdog`]).
fn relays_directly(spec: &FunctionSpec, cfg: &ProcessInvokerBuilder) -> bool {
    let vars = &spec.env_vars;
    !cfg.http_watchdog
        && vars.get("mode").is_some_and(|m| m.trim() == "http")
        && !WATCHDOG_ONLY_VARS.iter().any(|k| vars.contains_key(*k))
        && vars.get("upstream_url").is_none_or(|u| {
            u.parse::<http::Uri>().is_ok_and(|u| u.path().trim_end_matches('/').is_empty())
        })
}

/// Whether the backend runs the execution environments of `spec`'s replicas itself (see
/// [`ProcessInvokerBuilder::lambda_watchdog`]).
fn hosts_lambda(spec: &FunctionSpec, cfg: &ProcessInvokerBuilder) -> bool {
    const NEEDS_WATCHDOG: &[&str] = &[
        "max_inflight",
        "read_timeout",
        "healthcheck_interval",
        "combine_output",
        "watchdog_threads",
    ];
    let vars = &spec.env_vars;
    !cfg.lambda_watchdog
        && vars.get("mode").is_some_and(|m| m.trim() == "lambda")
        && !NEEDS_WATCHDOG.iter().any(|k| vars.contains_key(*k))
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::internal(format!("{what}: {e}"))
}

/// Configures a [`ProcessInvoker`]; see [`ProcessInvoker::builder`].
#[derive(Clone)]
pub struct ProcessInvokerBuilder {
    watchdog: Vec<OsString>,
    state_dir: Option<PathBuf>,
    scheduler: Arc<dyn Scheduler>,
    start_timeout: Duration,
    queue_timeout: Duration,
    stop_grace: Duration,
    log_limit: usize,
    log_bytes_limit: usize,
    node_labels: BTreeMap<String, String>,
    limits: ReplicaLimits,
    start_concurrency: usize,
    queue_limit: usize,
    stem_cells: BTreeMap<String, usize>,
    http_watchdog: bool,
    lambda_watchdog: bool,
}

impl std::fmt::Debug for ProcessInvokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessInvokerBuilder")
            .field("watchdog", &self.watchdog)
            .field("state_dir", &self.state_dir)
            .field("start_timeout", &self.start_timeout)
            .field("queue_timeout", &self.queue_timeout)
            .field("stop_grace", &self.stop_grace)
            .field("log_limit", &self.log_limit)
            .field("log_bytes_limit", &self.log_bytes_limit)
            .field("node_labels", &self.node_labels)
            .field("limits", &self.limits)
            .field("start_concurrency", &self.start_concurrency)
            .field("queue_limit", &self.queue_limit)
            .field("http_watchdog", &self.http_watchdog)
            .field("lambda_watchdog", &self.lambda_watchdog)
            .finish_non_exhaustive()
    }
}

impl Default for ProcessInvokerBuilder {
    fn default() -> Self {
        ProcessInvokerBuilder {
            watchdog: vec![default_watchdog()],
            state_dir: None,
            scheduler: Arc::new(LeastLoaded::new()),
            start_timeout: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            log_limit: 10_000,
            log_bytes_limit: DEFAULT_LOG_BYTES_LIMIT,
            node_labels: BTreeMap::new(),
            limits: ReplicaLimits::detect(),
            start_concurrency: default_start_concurrency(),
            queue_limit: 1024,
            stem_cells: BTreeMap::new(),
            http_watchdog: false,
            lambda_watchdog: false,
        }
    }
}

/// The default of [`ProcessInvokerBuilder::start_concurrency`]: the CPUs, at least 2.
fn default_start_concurrency() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(2)
}

/// `faas-watchdog` next to the running executable if there is one, else `faas-watchdog`
/// (found on `PATH`).
fn default_watchdog() -> OsString {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("faas-watchdog")))
        .filter(|p| p.is_file())
        .map(PathBuf::into_os_string)
        .unwrap_or_else(|| "faas-watchdog".into())
}

impl ProcessInvokerBuilder {
    /// The watchdog command: a program and its leading arguments (default: `faas-watchdog`
    /// next to the running executable, else on `PATH`). The `faas` binary passes its own path and `watchdog`; tests pass
    /// `env!("CARGO_BIN_EXE_faas-watchdog")`.
    pub fn watchdog_command<I, A>(mut self, program: impl Into<OsString>, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.watchdog =
            std::iter::once(program.into()).chain(args.into_iter().map(Into::into)).collect();
        self
    }

    /// Whether `http`-mode replicas run behind a watchdog process (default `false`).
    ///
    /// By default an `http`-mode replica is the function's process alone: the backend starts
    /// it with `port` set, takes it as ready once it accepts connections on that port, and
    /// relays invocations to it itself, with the spec's timeout, `maxConcurrency` and one log
    /// line per call (`log_requests`) as the watchdog would apply them. That is one process
    /// per replica instead of two, and one relay hop less per call (see BENCHMARKS.md, many
    /// distinct functions). A function whose `envVars` set one of [`WATCHDOG_ONLY_VARS`], or
    /// an `upstream_url` with a path, still gets a watchdog; `true` gives every `http`-mode
    /// replica one, as OpenFaaS runs them.
    pub fn http_watchdog(mut self, yes: bool) -> Self {
        self.http_watchdog = yes;
        self
    }

    /// Whether `lambda`-mode replicas run behind a watchdog process (default `false`).
    ///
    /// By default the backend runs a `lambda`-mode replica's execution environments itself:
    /// it starts the function's runtime processes (`lambda_concurrency` of them) with
    /// `AWS_LAMBDA_RUNTIME_API` pointing at a Runtime API endpoint it serves on `127.0.0.1`,
    /// hands each invocation to a runtime's waiting `/next` and answers the call from its
    /// `/response` or `/error`, exactly as the watchdog's `lambda` mode does (see
    /// [`crate::lambda`]: the same code, in this process): the same environment, deadlines
    /// (`spec.timeout`, or the variables `exec_timeout`/`write_timeout`), errors, restarts
    /// and log lines (one per call, `log_requests`). That is one process less per replica
    /// and one relay hop less per invocation (see BENCHMARKS.md, Lambda mode). A function
    /// whose `envVars` set `max_inflight`, `read_timeout`, `healthcheck_interval`,
    /// `combine_output` or `watchdog_threads` still gets a watchdog; `true` gives every
    /// `lambda`-mode replica one.
    pub fn lambda_watchdog(mut self, yes: bool) -> Self {
        self.lambda_watchdog = yes;
        self
    }

    /// The state directory: secrets, per-function secret copies and logs (default a fresh
    /// `faas-rs-process-<pid>` directory under the system temp directory).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The scheduler placing replicas and routing invocations (default [`LeastLoaded`]) of
    /// functions without the label [`faas_core::scheduler::SCHEDULER_LABEL`]; functions with
    /// it use that strategy.
    pub fn scheduler(mut self, s: Arc<dyn Scheduler>) -> Self {
        self.scheduler = s;
        self
    }

    /// How long a replica may take to become ready, and how long an invocation waits for one
    /// when none is (default 30 s).
    pub fn start_timeout(mut self, d: Duration) -> Self {
        self.start_timeout = d;
        self
    }

    /// How long an invocation waits for a busy replica (default 60 s); then
    /// [`Error::Overloaded`].
    pub fn queue_timeout(mut self, d: Duration) -> Self {
        self.queue_timeout = d;
        self
    }

    /// How long a stopping replica may drain before its process group is killed (default
    /// 10 s).
    pub fn stop_grace(mut self, d: Duration) -> Self {
        self.stop_grace = d;
        self
    }

    /// How many log lines to keep in memory per function (default 10 000; 0 keeps none).
    pub fn log_limit(mut self, n: usize) -> Self {
        self.log_limit = n;
        self
    }

    /// How many bytes of log lines to keep in memory per function (default
    /// [`DEFAULT_LOG_BYTES_LIMIT`], 8 MiB; 0 keeps none). A line counts its text, its
    /// function, namespace and instance names and the entry's fixed size; the oldest lines
    /// go first. Holds together with [`ProcessInvokerBuilder::log_limit`].
    pub fn log_bytes_limit(mut self, bytes: usize) -> Self {
        self.log_bytes_limit = bytes;
        self
    }

    /// Adds a label to the local node, for constraints (`hostname`, `arch` and `os` are set
    /// already).
    pub fn node_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_labels.insert(key.into(), value.into());
        self
    }

    /// Caps on replicas per function and on this machine over all functions (default
    /// [`ReplicaLimits::detect`]: from the CPUs and memory, see [`ReplicaLimits`]).
    pub fn replica_limits(mut self, limits: ReplicaLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How many invocations of one function may wait for a replica (default 1024); beyond it
    /// invocations fail at once with [`Error::Overloaded`].
    pub fn queue_limit(mut self, n: usize) -> Self {
        self.queue_limit = n;
        self
    }

    /// How many replicas may be starting (spawned, not yet healthy) at once on the node
    /// (default the number of CPUs, at least 2; 0 is taken as 1).
    pub fn start_concurrency(mut self, n: usize) -> Self {
        self.start_concurrency = n.max(1);
        self
    }

    /// Keeps `n` stem cells of the OpenWhisk `kind` (one with a local runtime in
    /// [`faas_core::runtimes`], such as `python:3`): watchdogs in `openwhisk` mode whose
    /// runtime is started but not initialised (`ow_stem=true`). A replica of an action of that
    /// kind takes one when there is one (instead of starting a watchdog and a runtime), and it
    /// becomes the action's by [`crate::openwhisk::SPECIALISE_PATH`] (`/init` with the action's
    /// code; the spec's `envVars`, its secrets directory and names reach the runtime through
    /// `/init`'s `env`); a background task starts new ones as they are taken or die. Actions
    /// that set their own `envProcess` or watchdog variables (`max_inflight`,
    /// `upstream_url`...) start cold. Stem cells are not counted under the node's replica cap;
    /// at most 64 per kind. They need a tokio runtime when [`build`](Self::build) is called.
    pub fn stem_cells(mut self, kind: &str, n: usize) -> Self {
        self.stem_cells.insert(kind.trim().to_string(), n);
        self
    }

    /// Creates the state directory and the backend.
    pub fn build(self) -> Result<ProcessInvoker> {
        if self.watchdog.is_empty() || self.watchdog[0].is_empty() {
            return Err(Error::invalid("watchdog", "the watchdog command is empty"));
        }
        for (kind, n) in &self.stem_cells {
            let local = faas_core::runtimes::lookup(kind).and_then(|k| k.process);
            if local.is_none() {
                return Err(Error::invalid(
                    "stem_cells",
                    format!("{kind:?} is no OpenWhisk kind with a local runtime"),
                ));
            }
            if *n > 64 {
                return Err(Error::invalid("stem_cells", format!("{n} is over 64 for {kind}")));
            }
        }
        let keep_stems = !self.stem_cells.is_empty();
        if keep_stems && tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::invalid("stem_cells", "need a tokio runtime at build"));
        }
        let state = match &self.state_dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("faas-rs-process-{}", std::process::id())),
        };
        for sub in ["secrets", "functions", "logs"] {
            std::fs::create_dir_all(state.join(sub))
                .map_err(|e| io_err(format!("creating {}", state.join(sub).display()), e))?;
        }
        let node = local_node(&self.node_labels, self.limits.per_node());
        let schedulers = Schedulers::new(self.scheduler.clone());
        let client = InstanceClient::new();
        let node_slots = Arc::new(Semaphore::new(self.limits.per_node() as usize));
        let starts = Arc::new(Semaphore::new(self.start_concurrency));
        let stems = self
            .stem_cells
            .iter()
            .map(|(k, n)| (k.clone(), StemPool { want: *n, ..Default::default() }))
            .collect();
        let inv = ProcessInvoker {
            inner: Arc::new(Shared {
                stems: Mutex::new(stems),
                stem_wake: Arc::new(Notify::new()),
                node_slots,
                starts,
                cfg: self,
                schedulers,
                state,
                node,
                client,
                functions: RwLock::new(HashMap::new()),
                secrets_lock: tokio::sync::Mutex::new(()),
            }),
        };
        if keep_stems {
            let wake = inv.inner.stem_wake.clone();
            tokio::spawn(stem_keeper(Arc::downgrade(&inv.inner), wake));
        }
        Ok(inv)
    }
}

/// The node label values of this machine: `hostname`, `arch` (Go/Docker spelling such as
/// `amd64`, `arm64`) and `os`; `slots` is the node's replica cap.
fn local_node(extra: &BTreeMap<String, String>, slots: u32) -> Node {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                let rest = l.strip_prefix("MemTotal:")?;
                rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
            })
        })
        .unwrap_or(u64::MAX / 2);
    let mut node = Node::new(
        hostname.clone(),
        arch,
        NodeResources { cpu_millis: cpus * 1000, memory_bytes: memory, slots },
    )
    .label("hostname", hostname.clone())
    .label("kubernetes.io/hostname", hostname)
    .label("arch", arch)
    .label("kubernetes.io/arch", arch)
    .label("os", std::env::consts::OS)
    .label("kubernetes.io/os", std::env::consts::OS);
    for (k, v) in extra {
        node = node.label(k.clone(), v.clone());
    }
    node
}

/// The process backend; see the [module docs](self).
#[derive(Clone)]
pub struct ProcessInvoker {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for ProcessInvoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessInvoker").field("state", &self.inner.state).finish_non_exhaustive()
    }
}

struct Shared {
    cfg: ProcessInvokerBuilder,
    /// Stem cells per OpenWhisk kind.
    stems: Mutex<HashMap<String, StemPool>>,
    /// Wakes the task that refills the stem cells.
    stem_wake: Arc<Notify>,
    /// One permit per running replica, [`ReplicaLimits::per_node`] in all; a replica's task
    /// holds its permit until the process has exited.
    node_slots: Arc<Semaphore>,
    /// One permit per replica being started (spawned, not yet healthy).
    starts: Arc<Semaphore>,
    /// The builder's scheduler as the default, and the strategies functions choose with the
    /// label `com.faas-rs.scheduler`.
    schedulers: Schedulers,
    state: PathBuf,
    node: Node,
    client: InstanceClient,
    functions: RwLock<HashMap<FunctionRef, Arc<Func>>>,
    secrets_lock: tokio::sync::Mutex<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Best effort: no replica outlives the backend.
        let functions = self.functions.get_mut().unwrap_or_else(|e| e.into_inner());
        for f in functions.values() {
            let st = lock(&f.state);
            for r in &st.replicas {
                r.kill_now();
            }
        }
    }
}

/// One deployed function.
struct Func {
    fref: FunctionRef,
    created: SystemTime,
    dir: PathBuf,
    logs: Arc<FuncLogs>,
    /// Wakes `wait_ready` callers when a replica turns ready.
    notify: Notify,
    /// The replicas that can serve (not stopping), as the scheduler routes over them, and
    /// the invocations waiting for one.
    instances: Arc<InstanceSet<Arc<Replica>>>,
    /// Wakes the reconciler.
    wake: Notify,
    state: Mutex<FState>,
}

struct FState {
    spec: FunctionSpec,
    policy: ScalingPolicy,
    /// Places and routes this function: the strategy its `com.faas-rs.scheduler` label
    /// chose, else the backend's.
    scheduler: Arc<dyn Scheduler>,
    generation: u64,
    desired: u32,
    /// Every replica not yet exited, stopping ones included.
    replicas: Vec<Arc<Replica>>,
    removed: bool,
    failures: u32,
    next_start: Instant,
    /// Whether the node cap's refusal was logged since this function last started a replica.
    node_full_logged: bool,
}

/// One replica: a watchdog process, or an `http`-mode function's process alone.
struct Replica {
    /// Its key in the function's instance set.
    key: InstanceKey,
    id: Arc<str>,
    port: u16,
    /// `http://127.0.0.1:PORT`, what invocations are forwarded to.
    base: Box<str>,
    generation: u64,
    pid: AtomicU32,
    ready: AtomicBool,
    stopping: AtomicBool,
    exited: AtomicBool,
    stop: watch::Sender<bool>,
    done: watch::Sender<bool>,
    started: Instant,
    /// The function's `http`-mode process alone: the backend relays to it, applies the
    /// timeout, writes the request log lines and drains calls before stopping it.
    direct: Option<Direct>,
}

/// What the backend does for a replica without a watchdog.
struct Direct {
    /// A `lambda`-mode replica's execution environments, run by the backend: set once they
    /// are set up, before the replica is ready.
    lambda: Option<std::sync::OnceLock<Hosted>>,
    /// One log line per call (`log_requests`, default on).
    log_requests: bool,
    /// The replica's log file for those lines, opened at the first.
    log_file: Mutex<Option<std::fs::File>>,
    /// Resolves once the calls routed to the replica before its stop have answered.
    drain: Mutex<Option<faas_core::instance::InstanceDrain>>,
}

impl Replica {
    /// Kills the watchdog, its process group, and every descendant's process group (the
    /// watchdog starts each function process in a group of its own).
    fn kill_now(&self) {
        if let Some(h) = self.direct.as_ref().and_then(|d| d.lambda.as_ref()?.get()) {
            h.stop.send_replace(true);
            h.runtime.kill_all();
        }
        let pid = self.pid.load(Ordering::SeqCst);
        if pid != 0 {
            kill_tree(pid);
        }
    }

    fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
        self.stop.send_replace(true);
    }

    async fn wait_done(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// A `lambda`-mode replica run by the backend (see [`ProcessInvokerBuilder::lambda_watchdog`]).
struct Hosted {
    runtime: Arc<crate::lambda::LambdaRuntime>,
    /// Stops the environments' supervisor (each runtime gets SIGTERM, then SIGKILL).
    stop: watch::Sender<bool>,
    /// The per-invocation deadline, with the variable it comes from.
    deadline: Option<(Duration, &'static str)>,
}

// ---------------------------------------------------------------------------------------
// Logs

/// A function's kept log lines and the directory its replicas' log files are in.
struct FuncLogs {
    book: LogBook,
    dir: PathBuf,
}

impl std::ops::Deref for FuncLogs {
    type Target = LogBook;

    fn deref(&self) -> &LogBook {
        &self.book
    }
}

impl FuncLogs {
    /// Keeps the line (see [`LogBook::push`]) and appends it, stamped, to `file` if given.
    fn push(&self, instance: &str, text: String, file: &mut Option<std::fs::File>) {
        let line = self.book.push_with(instance, text, |entry| {
            file.is_some().then(|| {
                let stamp = faas_core::spec::rfc3339::format(entry.timestamp);
                let mut line = String::with_capacity(stamp.len() + entry.text.len() + 2);
                line.push_str(&stamp);
                line.push(' ');
                line.push_str(&entry.text);
                line.push('\n');
                line
            })
        });
        if let (Some(f), Some(line)) = (file, line) {
            // One `write` per line: `writeln!` on a `File` writes each piece on its own.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

async fn pump_logs<R: AsyncRead + Unpin>(r: R, book: Arc<FuncLogs>, instance: Arc<str>) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(book.dir.join(format!("{instance}.log")))
        .ok();
    crate::watchdog::for_each_line(r, |line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        book.push(&instance, String::from_utf8_lossy(line).into_owned(), &mut file);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Replicas

/// The descendants of `pid` (children, grandchildren...), from one scan of `/proc`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
            // Fields after the parenthesised name: state, ppid, ...
            let Some((_, rest)) = stat.rsplit_once(')') else { continue };
            let mut fields = rest.split_whitespace();
            let _state = fields.next();
            if let Some(ppid) = fields.next().and_then(|x| x.parse::<u32>().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, _) in parent_of.iter().filter(|(_, pp)| *pp == p) {
            if !out.contains(child) {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}

/// SIGKILLs `pid`'s descendants' process groups and its own.
fn kill_tree(pid: u32) {
    for d in descendants(pid) {
        sys::kill_group(d, sys::SIGKILL);
        sys::kill_pid(d, sys::SIGKILL);
    }
    sys::kill_group(pid, sys::SIGKILL);
}

/// A port on 127.0.0.1 for a replica's watchdog or its upstream to listen on, free when
/// this returns.
///
/// Taken from outside the kernel's ephemeral range ([`listen_ports`]) when there is room:
/// the port is free until the child binds it, and a port from the ephemeral range is not,
/// since any outgoing connection (the gateway's to its replicas, a client's) may be given it
/// as its local port meanwhile, and a readiness probe may even connect to itself on it.
/// Measured with 1,000 functions: a restarted replica's upstream found its port taken, and
/// its watchdog's probe answered as if the upstream were up. Ports are handed out in turn
/// from a random start, each checked by binding it, so a port is not handed out again
/// until the whole range has been gone through.
fn free_port() -> Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);
    if let Some((lo, hi)) = listen_ports() {
        let n = u32::from(hi - lo) + 1;
        let _ = NEXT.compare_exchange(
            u32::MAX,
            rand::random::<u32>() % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        for _ in 0..n.min(1024) {
            let i = NEXT.fetch_add(1, Ordering::Relaxed) % n;
            let port = lo + u16::try_from(i).unwrap_or(0);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| io_err("finding a free port on 127.0.0.1", e))?;
    l.local_addr().map(|a| a.port()).map_err(|e| io_err("finding a free port", e))
}

/// The ports [`free_port`] hands out: below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, 32768-60999 by default) down to 10000, or
/// above it; `None` when neither side has 1,000 ports.
fn listen_ports() -> Option<(u16, u16)> {
    static RANGE: std::sync::OnceLock<Option<(u16, u16)>> = std::sync::OnceLock::new();
    *RANGE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
        let mut it = text.as_deref().unwrap_or("32768 60999").split_whitespace();
        let lo: u16 = it.next()?.parse().ok()?;
        let hi: u16 = it.next()?.parse().ok()?;
        if lo >= 11_000 {
            Some((10_000, lo - 1))
        } else if hi <= 64_535 {
            Some((hi + 1, 65_535))
        } else {
            None
        }
    })
}

fn new_instance_id(name: &str) -> Arc<str> {
    format!("{name}-{:08x}", rand::random::<u32>()).into()
}

impl Shared {
    fn function(&self, f: &FunctionRef) -> Result<Arc<Func>> {
        let functions = self.functions.read().unwrap_or_else(|e| e.into_inner());
        functions.get(f).cloned().ok_or_else(|| Error::function_not_found(f.to_string()))
    }

    fn function_dir(&self, f: &FunctionRef) -> PathBuf {
        self.state.join("functions").join(&f.namespace).join(&f.name)
    }

    fn secret_path(&self, ns: &str, name: &str) -> PathBuf {
        self.state.join("secrets").join(ns).join(name)
    }

    /// Validates a spec, resolves its scheduler (label `com.faas-rs.scheduler`) and checks
    /// that it can be placed on this machine.
    fn check(&self, spec: &FunctionSpec) -> Result<(ScalingPolicy, Arc<dyn Scheduler>)> {
        spec.validate()?;
        let scheduler = self.schedulers.for_spec(spec)?;
        let fprocess = crate::openwhisk::process_command(spec, &self.state)?;
        crate::watchdog::split_command(&fprocess).map_err(|r| Error::invalid("envProcess", r))?;
        // The watchdog's own configuration, as the replicas will see it.
        let mut vars: Vec<(String, String)> =
            spec.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.push(("fprocess".into(), fprocess));
        if spec.env_vars.get("mode").is_some_and(|m| m.trim() == "http")
            && !spec.env_vars.contains_key("upstream_url")
        {
            vars.push(("upstream_url".into(), "http://127.0.0.1:1".into()));
        }
        crate::watchdog::Config::from_vars(vars).map_err(|e| match e {
            Error::InvalidSpec { field, reason } => {
                Error::invalid(format!("envVars.{field}"), reason)
            }
            other => other,
        })?;
        let constraints = spec.parsed_constraints()?;
        let req = spec.requests.as_ref().or(spec.limits.as_ref());
        let need = NodeResources {
            cpu_millis: req.and_then(|r| r.cpu_millis()).unwrap_or(0),
            memory_bytes: req.and_then(|r| r.memory_bytes()).unwrap_or(0),
            slots: 1,
        };
        let fref = spec.function_ref();
        let placement = PlacementRequest {
            function: &fref,
            constraints: &constraints,
            platforms: &spec.platforms,
            need,
        };
        let nodes = std::slice::from_ref(&self.node);
        // The standard field-named errors first, whatever the scheduler answers.
        faas_core::scheduler::check_placement(spec, nodes)?;
        scheduler.place(&placement, nodes)?;
        Ok((spec.scaling_policy_within(&self.cfg.limits)?, scheduler))
    }

    /// Writes the function's copies of its secrets (missing secret: `secrets[i]`).
    async fn write_function_secrets(&self, spec: &FunctionSpec) -> Result<PathBuf> {
        let _g = self.secrets_lock.lock().await;
        let ns = spec.namespace_or_default();
        let mut values = Vec::new();
        for (i, name) in spec.secrets.iter().enumerate() {
            match tokio::fs::read(self.secret_path(ns, name)).await {
                Ok(v) => values.push((name.clone(), v)),
                Err(_) => {
                    return Err(Error::invalid(
                        format!("secrets[{i}]"),
                        format!("secret {name:?} does not exist in namespace {ns:?}"),
                    ))
                }
            }
        }
        let dir = self.function_dir(&spec.function_ref()).join("secrets");
        tokio::fs::create_dir_all(&dir).await.map_err(|e| io_err("creating the secrets dir", e))?;
        set_private(&dir, 0o700);
        // Remove copies of secrets the spec no longer names.
        if let Ok(mut rd) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let name = e.file_name().to_string_lossy().into_owned();
                if !spec.secrets.contains(&name) {
                    let _ = tokio::fs::remove_file(e.path()).await;
                }
            }
        }
        for (name, v) in values {
            write_atomic(&dir.join(&name), &v).await?;
        }
        Ok(dir)
    }

    fn log_dir(&self, f: &FunctionRef) -> PathBuf {
        self.state.join("logs").join(&f.namespace).join(&f.name)
    }
}

fn set_private(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

async fn write_atomic(path: &Path, value: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{:08x}", rand::random::<u32>()));
    tokio::fs::write(&tmp, value).await.map_err(|e| io_err("writing a secret", e))?;
    set_private(&tmp, 0o600);
    tokio::fs::rename(&tmp, path).await.map_err(|e| io_err("writing a secret", e))
}

/// What a replica process needs, resolved under the state lock.
struct Launch {
    spec: FunctionSpec,
    secrets_dir: PathBuf,
    /// A stem cell to specialise instead of starting a watchdog.
    stem: Option<StemCell>,
}

impl Func {
    /// Starts one replica of the current generation (caller holds the state lock). False
    /// when it could not: the node is at its replica cap, or no port was free.
    fn start_replica(self: &Arc<Self>, shared: &Arc<Shared>, st: &mut FState) -> bool {
        let Ok(slot) = shared.node_slots.clone().try_acquire_owned() else {
            if !st.node_full_logged {
                st.node_full_logged = true;
                let mut none = None;
                self.logs.push(
                    "backend",
                    format!(
                        "the node is at its cap of {} replicas; waiting for a free slot",
                        shared.cfg.limits.per_node()
                    ),
                    &mut none,
                );
            }
            return false;
        };
        let stem = stem_kind(&st.spec).and_then(|k| shared.take_stem(k));
        let port = match (&stem, free_port()) {
            (Some(cell), _) => cell.port,
            (None, Ok(p)) => p,
            (None, Err(e)) => {
                let mut none = None;
                self.logs.push("backend", format!("cannot start a replica: {e}"), &mut none);
                return false;
            }
        };
        st.node_full_logged = false;
        let (stop, _) = watch::channel(false);
        let (done, _) = watch::channel(false);
        let id = new_instance_id(&self.fref.name);
        let view = InstanceView {
            id: id.to_string(),
            node: Some(shared.node.id.clone()),
            in_flight: 0,
            max_concurrency: crate::lambda::replica_capacity(&st.spec),
            ready: false,
        };
        let hosted = hosts_lambda(&st.spec, &shared.cfg);
        let r = self.instances.insert_with(view, |key| {
            Arc::new(Replica {
                key,
                id,
                port,
                base: format!("http://127.0.0.1:{port}").into(),
                generation: st.generation,
                pid: AtomicU32::new(0),
                ready: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                exited: AtomicBool::new(false),
                stop,
                done,
                started: Instant::now(),
                direct: (hosted || relays_directly(&st.spec, &shared.cfg)).then(|| Direct {
                    lambda: hosted.then(std::sync::OnceLock::new),
                    log_requests: st.spec.env_vars.get("log_requests").is_none_or(|v| {
                        crate::watchdog::parse_bool("log_requests", v).unwrap_or(true)
                    }),
                    log_file: Mutex::new(None),
                    drain: Mutex::new(None),
                }),
            })
        });
        st.replicas.push(r.clone());
        let launch = Launch { spec: st.spec.clone(), secrets_dir: self.dir.join("secrets"), stem };
        let f = Arc::downgrade(self);
        let shared = Arc::downgrade(shared);
        tokio::spawn(run_replica(shared, f, r, launch, slot));
        true
    }

    /// Brings the replicas in line with the desired count and the current generation.
    fn reconcile(self: &Arc<Self>, shared: &Arc<Shared>) {
        let mut st = lock(&self.state);
        if st.removed {
            return;
        }
        let now = Instant::now();
        // Drop exited replicas; an unexpected exit counts as a failure (backoff).
        let before = st.replicas.len();
        let mut crashed_early = false;
        st.replicas.retain(|r| {
            let gone = r.exited.load(Ordering::SeqCst);
            if gone {
                self.instances.remove(r.key);
            }
            if gone
                && !r.stopping.load(Ordering::SeqCst)
                && r.started.elapsed() < Duration::from_secs(10)
            {
                crashed_early = true;
            }
            !gone
        });
        if crashed_early {
            st.failures = st.failures.saturating_add(1);
            st.next_start = now + RESTART_BACKOFF.delay(st.failures);
        } else if st.replicas.len() != before {
            st.failures = 0;
        }
        // Scale to zero after the idle time.
        if st.policy.allow_zero
            && st.desired > 0
            && self.instances.idle_deadline(st.policy.idle_timeout()).is_some_and(|at| at <= now)
        {
            let mut none = None;
            self.logs.push(
                "backend",
                format!(
                    "idle for {}: scaling to zero",
                    faas_core::util::format_duration(st.policy.idle_timeout())
                ),
                &mut none,
            );
            st.desired = 0;
        }
        // Replace replicas of an older generation (after an update).
        let generation = st.generation;
        for r in &st.replicas {
            if r.generation != generation && !r.stopping.load(Ordering::SeqCst) {
                self.stop_replica(r);
            }
        }
        let live: Vec<Arc<Replica>> = st
            .replicas
            .iter()
            .filter(|r| !r.stopping.load(Ordering::SeqCst) && r.generation == generation)
            .cloned()
            .collect();
        let desired = st.desired as usize;
        if live.len() > desired {
            // Stop the extra ones: not-ready first, then the least busy.
            let mut order = live.clone();
            order.sort_by_key(|r| {
                (r.ready.load(Ordering::SeqCst), self.instances.in_flight_of(r.key).unwrap_or(0))
            });
            for r in order.iter().take(live.len() - desired) {
                self.stop_replica(r);
            }
        } else if live.len() < desired && now >= st.next_start {
            // A few at a time: the reconciler comes back as each becomes ready (or fails).
            let starting = live.iter().filter(|r| !r.ready.load(Ordering::SeqCst)).count();
            let room = shared.cfg.start_concurrency.saturating_sub(starting);
            for _ in 0..(desired - live.len()).min(room) {
                if !self.start_replica(shared, &mut st) {
                    break;
                }
            }
        }
        drop(st);
        self.notify.notify_waiters();
    }

    /// Marks replica `r` ready: routed to, the callers waiting for one woken, and the
    /// reconciler told (it may start the next replicas).
    fn replica_ready(&self, r: &Replica) {
        r.ready.store(true, Ordering::SeqCst);
        self.instances.set_ready(r.key, true);
        self.notify.notify_waiters();
        self.wake.notify_one();
    }

    /// Stops a replica: it takes no new invocation from now on.
    fn stop_replica(&self, r: &Replica) {
        match &r.direct {
            // Without a watchdog to drain them, the backend lets the calls already routed
            // to the replica answer before it stops the process.
            Some(d) => {
                if let Some((_, drain)) = self.instances.retire(r.key) {
                    *lock(&d.drain) = Some(drain);
                }
            }
            None => {
                self.instances.remove(r.key);
            }
        }
        r.request_stop();
    }

    /// Scales from zero for an invocation that found no replica: the reconciler starts the
    /// policy's minimum (at least one).
    fn scale_from_zero(&self) {
        {
            let mut st = lock(&self.state);
            if st.removed || st.desired > 0 {
                return;
            }
            st.desired = st.policy.min.max(1).min(st.policy.max);
            st.next_start = Instant::now();
        }
        self.wake.notify_one();
    }
}

/// Sets up a hosted Lambda replica's execution environments from `cmd`, the watchdog
/// command the replica would otherwise run (its environment is the watchdog's).
fn host_lambda(func: &Arc<Func>, r: &Replica, cmd: &std::process::Command) -> Result<Hosted> {
    let env: Vec<(OsString, OsString)> =
        cmd.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))).collect();
    let vars = env.iter().filter_map(|(k, v)| Some((k.to_str()?, v.to_str()?)));
    let config = crate::watchdog::Config::from_vars(vars)?;
    let lambda = config.lambda.clone().ok_or_else(|| Error::internal("not in lambda mode"))?;
    let (program, args) = config
        .fprocess
        .split_first()
        .map(|(p, rest)| (OsString::from(p), rest.to_vec()))
        .ok_or_else(|| Error::invalid("fprocess", "is empty"))?;
    let logs = func.logs.clone();
    let id = r.id.clone();
    let file = Mutex::new(None::<std::fs::File>);
    let opened = AtomicBool::new(false);
    let output = crate::lambda::Output::Lines(Arc::new(move |line: &[u8]| {
        let mut f = lock(&file);
        if !opened.swap(true, Ordering::Relaxed) {
            *f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(logs.dir.join(format!("{id}.log")))
                .ok();
        }
        logs.push(&id, String::from_utf8_lossy(line).into_owned(), &mut f);
    }));
    Ok(Hosted {
        runtime: crate::lambda::LambdaRuntime::new(lambda, program, args, output, Some(env)),
        stop: watch::channel(false).0,
        deadline: config.deadline(),
    })
}

/// The life of a hosted Lambda replica: its execution environments supervised until the
/// replica stops; ready once the first start has initialised (or failed: then every
/// invocation gets the function's init error, as from a watchdog).
async fn run_hosted(
    func: Arc<Func>,
    r: &Replica,
    slot: &std::sync::OnceLock<Hosted>,
    setup: Result<Hosted>,
    start_permit: OwnedSemaphorePermit,
    start_timeout: Duration,
    grace: Duration,
) {
    let finish = |func: &Func| {
        func.instances.remove(r.key);
        r.ready.store(false, Ordering::SeqCst);
        r.exited.store(true, Ordering::SeqCst);
        r.done.send_replace(true);
        func.wake.notify_one();
        func.notify.notify_waiters();
    };
    let (runtime, stop_envs) = match setup {
        Ok(h) => {
            let h = slot.get_or_init(|| h);
            (h.runtime.clone(), h.stop.clone())
        }
        Err(e) => {
            let mut none = None;
            func.logs.push(&r.id, format!("cannot start: {e}"), &mut none);
            finish(&func);
            return;
        }
    };
    let supervisor = tokio::spawn(crate::lambda::supervise(runtime.clone(), stop_envs.subscribe()));
    let mut stop = r.stop.subscribe();
    let mut stopped = false;
    tokio::select! {
        settled = tokio::time::timeout(start_timeout, runtime.wait_settled()) => {
            if settled.is_ok() {
                func.replica_ready(r);
            } else {
                let mut none = None;
                func.logs.push(
                    &r.id,
                    format!(
                        "the Lambda runtime did not initialise within the start timeout of {}; \
                         stopping it",
                        faas_core::util::format_duration(start_timeout)
                    ),
                    &mut none,
                );
                stopped = true;
            }
        }
        _ = stop.wait_for(|s| *s) => stopped = true,
    }
    drop(start_permit);
    if !stopped {
        let _ = stop.wait_for(|s| *s).await;
    }
    r.ready.store(false, Ordering::SeqCst);
    let drain = r.direct.as_ref().and_then(|d| lock(&d.drain).take());
    if let Some(drain) = drain {
        let _ = tokio::time::timeout(grace, drain.wait()).await;
    }
    // Each environment's runtime gets SIGTERM, then SIGKILL (see `crate::lambda`).
    stop_envs.send_replace(true);
    let _ = supervisor.await;
    finish(&func);
}

/// The life of one replica: spawn the watchdog, wait for health, wait for exit or stop.
///
/// `slot` is the replica's place under the node cap, held until the process has exited.
async fn run_replica(
    shared: Weak<Shared>,
    f: Weak<Func>,
    r: Arc<Replica>,
    mut launch: Launch,
    slot: OwnedSemaphorePermit,
) {
    let _slot = slot;
    let (Some(sh), Some(func)) = (shared.upgrade(), f.upgrade()) else {
        r.exited.store(true, Ordering::SeqCst);
        r.done.send_replace(true);
        return;
    };
    let spec = &launch.spec;
    let fprocess = crate::openwhisk::process_command(spec, &sh.state).unwrap_or_default();
    let hosted = r.direct.as_ref().and_then(|d| d.lambda.as_ref());
    // A hosted Lambda replica's environment is built as a watchdog's would be: its runtimes
    // get what they would inherit from one.
    let watchdog_env = r.direct.is_none() || hosted.is_some();
    let mut cmd = match &r.direct {
        None => {
            let mut cmd = tokio::process::Command::new(&sh.cfg.watchdog[0]);
            cmd.args(&sh.cfg.watchdog[1..]);
            cmd
        }
        Some(_) if hosted.is_some() => tokio::process::Command::new(&sh.cfg.watchdog[0]),
        // Checked at deploy: the command splits and is not empty.
        Some(_) => match crate::watchdog::split_command(&fprocess).ok().filter(|a| !a.is_empty()) {
            Some(argv) => {
                let mut cmd = tokio::process::Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
            None => {
                let mut none = None;
                func.logs.push(
                    &r.id,
                    format!("cannot start: no command in {fprocess:?}"),
                    &mut none,
                );
                r.exited.store(true, Ordering::SeqCst);
                r.done.send_replace(true);
                func.wake.notify_one();
                return;
            }
        },
    };
    cmd.env_clear();
    for k in INHERITED_ENV {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    // A log line per request, as OpenFaaS's watchdogs write (`faas logs` shows the calls);
    // the spec's envVars, applied below, may turn it off.
    if watchdog_env {
        cmd.env("prefix_logs", "false")
            .env("healthcheck_interval", "0s")
            .env("log_requests", "true");
        if spec.timeout.is_none() {
            cmd.env("exec_timeout", "0s").env("write_timeout", "0s");
        }
    }
    for (k, v) in &spec.env_vars {
        cmd.env(k, v);
    }
    // An action's code can be over what one environment variable may hold: given as a file.
    if let Some(code) = spec.env_vars.get("ow_code").filter(|c| c.len() > 16 * 1024) {
        let path = sh.function_dir(&func.fref).join(format!("ow_code-{}", r.generation));
        if let Err(e) = write_atomic(&path, code.as_bytes()).await {
            let mut none = None;
            func.logs.push(&r.id, format!("cannot write the action's code: {e}"), &mut none);
        }
        cmd.env_remove("ow_code").env("ow_code_file", &path);
    }
    if let Some(t) = spec.timeout.filter(|_| watchdog_env) {
        cmd.env("exec_timeout", faas_core::util::format_duration(t));
        cmd.env("write_timeout", faas_core::util::format_duration(t + Duration::from_secs(5)));
    }
    // A Lambda function's memory size is its memory limit, unless set outright.
    let mode = spec.env_vars.get("mode").map(|m| m.trim());
    if mode == Some("lambda") && !spec.env_vars.contains_key("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") {
        if let Some(b) = spec.limits.as_ref().and_then(|l| l.memory_bytes()) {
            cmd.env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", (b >> 20).max(1).to_string());
        }
    }
    // As many execution environments as invocations the replica may take at once.
    if mode == Some("lambda") && !spec.env_vars.contains_key("lambda_concurrency") {
        if let Some(n) = spec.max_concurrency {
            let n = (n as usize).clamp(1, crate::lambda::MAX_ENVIRONMENTS);
            cmd.env("lambda_concurrency", n.to_string());
        }
    }
    let is_http = mode == Some("http");
    // An http-mode watchdog only relays to its upstream, and the backend adds replicas (each
    // its own watchdog) for more parallelism: one serving thread each, not one per CPU,
    // keeps an idle replica small. The spec's `watchdog_threads`, applied above, wins.
    if is_http && r.direct.is_none() && !spec.env_vars.contains_key("watchdog_threads") {
        cmd.env("watchdog_threads", "1");
    }
    // An OpenWhisk action's runtime gets its own port as an http-mode upstream does (a
    // replica without a watchdog is its process alone, on the replica's port).
    if r.direct.is_some() && hosted.is_none() {
        cmd.env_remove("upstream_url");
    } else if is_http || faas_core::runtimes::is_action(spec) {
        let path = spec
            .env_vars
            .get("upstream_url")
            .and_then(|u| u.parse::<http::Uri>().ok())
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        match free_port() {
            Ok(up) => {
                cmd.env("upstream_url", format!("http://127.0.0.1:{up}{path}"));
            }
            Err(e) => {
                let mut none = None;
                func.logs.push(&r.id, format!("cannot start: {e}"), &mut none);
                r.exited.store(true, Ordering::SeqCst);
                r.done.send_replace(true);
                func.wake.notify_one();
                return;
            }
        }
    }
    cmd.env("fprocess", &fprocess)
        .env("port", r.port.to_string())
        .env("bind_address", "127.0.0.1")
        .env(SECRETS_DIR_ENV, &launch.secrets_dir)
        .env("OPENFAAS_FUNCTION_NAME", &func.fref.name)
        .env("OPENFAAS_NAMESPACE", &func.fref.namespace)
        .env("OPENFAAS_INSTANCE", &*r.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    sys::die_with_parent(&mut cmd, sys::SIGKILL);
    let log_dir = sh.log_dir(&func.fref);
    let _ = std::fs::create_dir_all(&log_dir);
    let client = sh.client.clone();
    let start_timeout = sh.cfg.start_timeout;
    let grace = sh.cfg.stop_grace;
    let starts = sh.starts.clone();
    drop(sh);
    // At most `start_concurrency` replicas between spawn and health on the node.
    let Ok(start_permit) = starts.acquire_owned().await else {
        r.exited.store(true, Ordering::SeqCst);
        r.done.send_replace(true);
        return;
    };
    if r.stopping.load(Ordering::SeqCst) {
        r.exited.store(true, Ordering::SeqCst);
        r.done.send_replace(true);
        func.wake.notify_one();
        return;
    }
    if let Some(slot) = hosted {
        let setup = host_lambda(&func, &r, cmd.as_std());
        run_hosted(func, &r, slot, setup, start_permit, start_timeout, grace).await;
        return;
    }
    let adopted = match launch.stem.take() {
        Some(cell) => adopt(cell, &launch.spec, &launch.secrets_dir, &r.id).await,
        None => None,
    };
    let spawned = match adopted {
        Some(c) => Ok(c),
        None => cmd.spawn(),
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let mut none = None;
            let what = if r.direct.is_some() { "the function's process" } else { "the watchdog" };
            func.logs.push(&r.id, format!("cannot start {what}: {e}"), &mut none);
            r.exited.store(true, Ordering::SeqCst);
            r.done.send_replace(true);
            func.wake.notify_one();
            return;
        }
    };
    let pid = child.id().unwrap_or(0);
    r.pid.store(pid, Ordering::SeqCst);
    if let Some(o) = child.stdout.take() {
        tokio::spawn(pump_logs(o, func.logs.clone(), r.id.clone()));
    }
    if let Some(e) = child.stderr.take() {
        tokio::spawn(pump_logs(e, func.logs.clone(), r.id.clone()));
    }
    let mut stop = r.stop.subscribe();
    // A watchdog answers its health check a few ms after the spawn: the one backoff (1 ms
    // doubling to 50 ms) keeps a scale from zero from being held by the probe. A function's
    // process alone is ready once it accepts connections (as a watchdog judges its upstream;
    // replica ports are outside the ephemeral range, so the probe cannot meet itself).
    let port = r.port;
    let direct = r.direct.is_some();
    let probe = async {
        faas_core::invoker::poll_with_backoff(start_timeout, || async {
            if direct {
                return Ok(tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                    .await
                    .is_ok());
            }
            Ok(client.healthy(&r.base, Duration::from_secs(2)).await)
        })
        .await
        .unwrap_or(false)
    };
    let mut status = None;
    let mut stopped = false;
    tokio::select! {
        st = child.wait() => status = Some(st),
        ok = probe => {
            if ok {
                func.replica_ready(&r);
            } else {
                let mut none = None;
                func.logs.push(
                    &r.id,
                    format!(
                        "not healthy within the start timeout of {}; stopping it",
                        faas_core::util::format_duration(start_timeout)
                    ),
                    &mut none,
                );
                stopped = true;
            }
        }
        _ = stop.wait_for(|s| *s) => stopped = true,
    }
    drop(start_permit);
    if status.is_none() && !stopped {
        tokio::select! {
            st = child.wait() => status = Some(st),
            _ = stop.wait_for(|s| *s) => stopped = true,
        }
    }
    r.ready.store(false, Ordering::SeqCst);
    if stopped {
        let drain = r.direct.as_ref().and_then(|d| lock(&d.drain).take());
        if let Some(drain) = drain {
            let _ = tokio::time::timeout(grace, drain.wait()).await;
        }
        sys::kill_pid(pid, sys::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            kill_tree(pid);
            let _ = child.wait().await;
        }
    } else if let Some(st) = status {
        let how = match st {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        let mut none = None;
        func.logs.push(
            &r.id,
            format!("replica exited unexpectedly ({how}); replacing it"),
            &mut none,
        );
    }
    // Nothing of the replica's process group survives it.
    sys::kill_group(pid, sys::SIGKILL);
    func.instances.remove(r.key);
    r.exited.store(true, Ordering::SeqCst);
    r.done.send_replace(true);
    func.wake.notify_one();
    func.notify.notify_waiters();
}

// ---------------------------------------------------------------------------------------
// Stem cells

/// The stem cells of one kind.
#[derive(Default)]
struct StemPool {
    want: usize,
    ready: VecDeque<StemCell>,
    starting: usize,
}

/// A watchdog whose runtime is started but not initialised; killed when dropped unless its
/// process was adopted.
struct StemCell {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl StemCell {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for StemCell {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            kill_tree(pid);
        }
    }
}

/// The kind whose stem cell a replica of `spec` may take.
fn stem_kind(spec: &FunctionSpec) -> Option<&'static str> {
    if spec.env_process.as_deref().is_some_and(|p| !p.trim().is_empty()) {
        return None;
    }
    let kind = faas_core::runtimes::kind_of(spec).ok()??;
    kind.process?;
    if spec.env_vars.keys().any(|k| crate::openwhisk::STEM_FIXED_VARS.contains(&k.as_str())) {
        return None;
    }
    Some(kind.kind)
}

impl Shared {
    /// A live stem cell of `kind`, if there is one (the keeper is told to refill).
    fn take_stem(&self, kind: &str) -> Option<StemCell> {
        let cell = {
            let mut pools = lock(&self.stems);
            let pool = pools.get_mut(kind)?;
            let mut found = None;
            while let Some(mut c) = pool.ready.pop_front() {
                if c.alive() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        self.stem_wake.notify_one();
        cell
    }

    /// Starts a stem cell of `kind` and waits until its watchdog is healthy (its runtime
    /// listens).
    async fn spawn_stem(&self, kind: &str) -> Result<StemCell> {
        let spec = FunctionSpec::new("stem-cell", "")
            .env("mode", faas_core::runtimes::OPENWHISK_MODE)
            .env(faas_core::runtimes::KIND_VAR, kind);
        let fprocess = crate::openwhisk::process_command(&spec, &self.state)?;
        let port = free_port()?;
        let upstream = free_port()?;
        let mut cmd = tokio::process::Command::new(&self.cfg.watchdog[0]);
        cmd.args(&self.cfg.watchdog[1..]).env_clear();
        for k in INHERITED_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        cmd.env("prefix_logs", "false")
            .env("healthcheck_interval", "0s")
            .env("log_requests", "true")
            .env("exec_timeout", "0s")
            .env("write_timeout", "0s")
            .env("mode", faas_core::runtimes::OPENWHISK_MODE)
            .env("ow_stem", "true")
            .env("fprocess", fprocess)
            .env("port", port.to_string())
            .env("bind_address", "127.0.0.1")
            .env("upstream_url", format!("http://127.0.0.1:{upstream}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        sys::die_with_parent(&mut cmd, sys::SIGKILL);
        let child = cmd.spawn().map_err(|e| io_err("starting a stem cell", e))?;
        let cell = StemCell { port, child: Some(child) };
        let base = format!("http://127.0.0.1:{port}");
        let healthy = faas_core::invoker::poll_with_backoff(self.cfg.start_timeout, || async {
            Ok(self.client.healthy(&base, Duration::from_secs(2)).await)
        })
        .await
        .unwrap_or(false);
        if !healthy {
            return Err(Error::unavailable(format!("the {kind} stem cell did not become healthy")));
        }
        Ok(cell)
    }
}

/// Keeps every kind's stem cells at their count, until the backend is dropped.
async fn stem_keeper(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        {
            let Some(sh) = shared.upgrade() else { return };
            let mut pools = lock(&sh.stems);
            for (kind, pool) in pools.iter_mut() {
                pool.ready.retain_mut(StemCell::alive);
                while pool.ready.len() + pool.starting < pool.want {
                    pool.starting += 1;
                    tokio::spawn(start_stem(Arc::downgrade(&sh), kind.clone()));
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn start_stem(shared: Weak<Shared>, kind: String) {
    let Some(sh) = shared.upgrade() else { return };
    let cell = sh.spawn_stem(&kind).await;
    if cell.is_err() {
        // Not at once again: a kind whose runtime cannot start would spin.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some(pool) = lock(&sh.stems).get_mut(&kind) {
        pool.starting = pool.starting.saturating_sub(1);
        if let Ok(c) = cell {
            // Said once the cell can be taken (an operator, and tests, can tell from the log
            // that the next replica of this kind starts in it).
            tracing::info!(kind = %kind, pid = ?c.pid(), port = c.port, "stem cell ready");
            pool.ready.push_back(c);
        }
    }
    sh.stem_wake.notify_one();
}

/// Makes `cell` an instance of `spec` ([`crate::openwhisk::SPECIALISE_PATH`]): its watchdog
/// process, or `None` (the cell killed) when the specialisation was not taken.
async fn adopt(
    mut cell: StemCell,
    spec: &FunctionSpec,
    secrets_dir: &Path,
    instance: &str,
) -> Option<tokio::process::Child> {
    let fref = spec.function_ref();
    let extra = [
        (SECRETS_DIR_ENV, secrets_dir.display().to_string()),
        ("OPENFAAS_FUNCTION_NAME", fref.name.clone()),
        ("OPENFAAS_NAMESPACE", fref.namespace.clone()),
        ("OPENFAAS_INSTANCE", instance.to_string()),
    ];
    let body = serde_json::to_vec(&crate::openwhisk::specialisation(spec, &extra).ok()?).ok()?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], cell.port));
    let path = crate::openwhisk::SPECIALISE_PATH;
    match crate::openwhisk::post(addr, path, body, 64 * 1024).await {
        // 502/504: the action's init failed; the instance reports it to its first activation.
        Ok((status, _)) if matches!(status.as_u16(), 200 | 502 | 504) => cell.child.take(),
        _ => None,
    }
}

/// Reconciles a function every 200 ms and whenever woken, until it is removed.
async fn reconciler(shared: Weak<Shared>, f: Weak<Func>) {
    loop {
        let Some(func) = f.upgrade() else { return };
        {
            let Some(sh) = shared.upgrade() else { return };
            if lock(&func.state).removed {
                return;
            }
            func.reconcile(&sh);
        }
        let wake = func.wake.notified();
        tokio::select! {
            _ = wake => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Invocation

impl ProcessInvoker {
    /// A builder.
    pub fn builder() -> ProcessInvokerBuilder {
        ProcessInvokerBuilder::default()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state
    }

    /// The local node replicas are placed on.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// The watchdog process ids of the ready stem cells of `kind` (see
    /// [`ProcessInvokerBuilder::stem_cells`]).
    pub fn stem_cell_pids(&self, kind: &str) -> Vec<u32> {
        let pools = lock(&self.inner.stems);
        pools
            .get(kind)
            .map(|p| p.ready.iter().filter_map(StemCell::pid).collect())
            .unwrap_or_default()
    }

    /// The process ids of a function's running replicas: their watchdog processes (each leads
    /// a process group holding its function processes), an `http`-mode function's process
    /// where it runs without a watchdog, or the Lambda runtimes the backend runs itself (one
    /// per execution environment that is running).
    pub fn instance_pids(&self, function: &FunctionRef) -> Result<Vec<(String, u32)>> {
        let f = self.inner.function(function)?;
        let st = lock(&f.state);
        let mut out = Vec::new();
        for r in st.replicas.iter().filter(|r| !r.exited.load(Ordering::SeqCst)) {
            let pid = r.pid.load(Ordering::SeqCst);
            if pid != 0 {
                out.push((r.id.to_string(), pid));
            }
            if let Some(h) = r.direct.as_ref().and_then(|d| d.lambda.as_ref()?.get()) {
                out.extend(h.runtime.pids().into_iter().map(|p| (r.id.to_string(), p)));
            }
        }
        Ok(out)
    }

    /// A function's instances as the router sees them.
    pub fn instances(&self, function: &FunctionRef) -> Result<Vec<InstanceView>> {
        Ok(self.inner.function(function)?.instances.views())
    }
}

fn status_of(f: &Func) -> FunctionStatus {
    let st = lock(&f.state);
    let mut s = FunctionStatus::from_spec(&st.spec);
    s.invocation_count = f.instances.served();
    s.replicas = u64::from(st.desired);
    s.available_replicas = st
        .replicas
        .iter()
        .filter(|r| r.ready.load(Ordering::SeqCst) && !r.stopping.load(Ordering::SeqCst))
        .count() as u64;
    s.created_at = Some(f.created);
    s
}

fn validate_namespace(ns: &str) -> Result<()> {
    faas_core::util::validate_dns1123_label(ns).map_err(|r| Error::invalid("namespace", r))
}

#[async_trait]
impl Invoke for ProcessInvoker {
    async fn invoke(&self, invocation: Invocation) -> Result<Response> {
        let sh = &self.inner;
        let func = sh.function(&invocation.function)?;
        let arrived = Instant::now();
        let budget = faas_core::invocation::WaitBudget::of(&invocation.request);
        let queue_timeout = budget.map_or(sh.cfg.queue_timeout, |b| b.min(sh.cfg.queue_timeout));
        let (scheduler, timeout) = {
            let st = lock(&func.state);
            if st.removed {
                return Err(Error::function_not_found(func.fref.to_string()));
            }
            (st.scheduler.clone(), st.spec.timeout)
        };
        let limits = AcquireLimits {
            queue_limit: sh.cfg.queue_limit,
            busy_timeout: queue_timeout,
            start_timeout: sh.cfg.start_timeout,
        };
        let lease = func
            .instances
            .acquire(&*scheduler, &limits, arrived, |_| func.scale_from_zero())
            .await?;
        let cold = lease.cold();
        let replica = lease.handle().clone();
        let wait_time = arrived.elapsed();
        let target = Target {
            base: &replica.base,
            function: &func.fref,
            instance: &replica.id,
            // A watchdog enforces the timeout (and kills the process); this is the backstop.
            // Without one, this is the timeout.
            timeout: timeout.map(|after| CallTimeout {
                name: "exec",
                after,
                grace: if replica.direct.is_some() {
                    Duration::ZERO
                } else {
                    Duration::from_secs(10)
                },
            }),
        };
        let log_line = replica
            .direct
            .as_ref()
            .filter(|d| d.log_requests)
            .map(|_| (invocation.request.method().clone(), invocation.request.uri().clone()));
        let called = Instant::now();
        let hosted = replica.direct.as_ref().and_then(|d| d.lambda.as_ref()?.get());
        let forwarded = match hosted {
            Some(h) => Ok(call_hosted(h, invocation).await),
            None => sh.client.forward(invocation, &target, ()).await,
        };
        let resp = match forwarded {
            Ok(r) => r,
            Err(e) => {
                let exited = e.is_transport()
                    && (replica.exited.load(Ordering::SeqCst)
                        || replica.stopping.load(Ordering::SeqCst));
                if e.is_transport() {
                    func.wake.notify_one();
                }
                return Err(e.into_error(exited));
            }
        };
        if let (Some((method, uri)), Some(d)) = (log_line, &replica.direct) {
            let len = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .or_else(|| http_body::Body::size_hint(resp.body()).exact());
            let line =
                crate::watchdog::request_line(&method, &uri, resp.status(), len, called.elapsed());
            let mut file = lock(&d.log_file);
            if file.is_none() {
                *file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(func.logs.dir.join(format!("{}.log", replica.id)))
                    .ok();
            }
            func.logs.push(&replica.id, line, &mut file);
        }
        // A hosted runtime's error answers are a watchdog's, mapped as the client maps them.
        let resp = match hosted {
            Some(_) => {
                faas_core::instance::check_watchdog_error(resp, &func.fref, &replica.id).await?
            }
            None => resp,
        };
        let (mut parts, body) = resp.into_parts();
        parts.extensions.insert(InvocationMeta {
            instance: replica.id.to_string(),
            start: if cold { StartKind::Cold } else { StartKind::Warm },
            wait_time,
            init_time: cold.then_some(wait_time),
        });
        // The slot is free once the function has answered (as the in-memory backend does):
        // a caller may hold an unread body as long as it likes.
        drop(lease);
        Ok(Response::from_parts(parts, body))
    }
}

/// Hands `invocation` to a hosted Lambda replica's runtimes, the request as a watchdog
/// would get it (hop-by-hop headers dropped, `X-Call-Id` set); the answer is as a
/// watchdog's, error answers included.
async fn call_hosted(h: &Hosted, invocation: Invocation) -> Response {
    let Invocation { id, function: _, request } = invocation;
    let (mut parts, body) = request.into_parts();
    faas_core::instance::strip_hop_by_hop(&mut parts.headers);
    let call_id = faas_core::instance::X_CALL_ID;
    if parts.headers.get(&call_id).map(http::HeaderValue::as_bytes) != Some(id.as_str().as_bytes())
    {
        match http::HeaderValue::from_str(id.as_str()) {
            Ok(v) => parts.headers.insert(call_id, v),
            Err(_) => parts.headers.remove(call_id),
        };
    }
    h.runtime.invoke(http::Request::from_parts(parts, body), h.deadline).await
}

#[async_trait]
impl Deploy for ProcessInvoker {
    async fn deploy(&self, spec: FunctionSpec) -> Result<()> {
        let sh = &self.inner;
        let (policy, scheduler) = sh.check(&spec)?;
        let fref = spec.function_ref();
        if sh.functions.read().unwrap_or_else(|e| e.into_inner()).contains_key(&fref) {
            return Err(Error::AlreadyExists { kind: "function", name: fref.to_string() });
        }
        sh.write_function_secrets(&spec).await?;
        let log_dir = sh.log_dir(&fref);
        std::fs::create_dir_all(&log_dir).map_err(|e| io_err("creating the log dir", e))?;
        let desired = policy.min.min(policy.max);
        let func = Arc::new(Func {
            fref: fref.clone(),
            created: SystemTime::now(),
            dir: sh.function_dir(&fref),
            logs: Arc::new(FuncLogs {
                book: LogBook::new(
                    Arc::new(fref.clone()),
                    sh.cfg.log_limit,
                    sh.cfg.log_bytes_limit,
                ),
                dir: log_dir,
            }),
            notify: Notify::new(),
            instances: Arc::new(InstanceSet::new(fref.clone())),
            wake: Notify::new(),
            state: Mutex::new(FState {
                spec,
                policy,
                scheduler,
                generation: 1,
                desired,
                replicas: Vec::new(),
                removed: false,
                failures: 0,
                next_start: Instant::now(),
                node_full_logged: false,
            }),
        });
        {
            let mut functions = sh.functions.write().unwrap_or_else(|e| e.into_inner());
            if functions.contains_key(&fref) {
                return Err(Error::AlreadyExists { kind: "function", name: fref.to_string() });
            }
            functions.insert(fref, func.clone());
        }
        // The reconciler starts the replicas, off the request path.
        tokio::spawn(reconciler(Arc::downgrade(sh), Arc::downgrade(&func)));
        Ok(())
    }

    async fn update(&self, spec: FunctionSpec) -> Result<()> {
        let sh = &self.inner;
        let func = sh.function(&spec.function_ref())?;
        let (policy, scheduler) = sh.check(&spec)?;
        sh.write_function_secrets(&spec).await?;
        {
            let mut st = lock(&func.state);
            if st.removed {
                return Err(Error::function_not_found(func.fref.to_string()));
            }
            st.desired = st.desired.min(policy.max);
            st.spec = spec;
            st.policy = policy;
            st.scheduler = scheduler;
            st.generation += 1;
            st.failures = 0;
            st.next_start = Instant::now();
        }
        func.instances.touch();
        func.wake.notify_one();
        Ok(())
    }

    async fn remove(&self, function: &FunctionRef) -> Result<()> {
        let sh = &self.inner;
        let func = {
            let mut functions = sh.functions.write().unwrap_or_else(|e| e.into_inner());
            functions
                .remove(function)
                .ok_or_else(|| Error::function_not_found(function.to_string()))?
        };
        let replicas = {
            let mut st = lock(&func.state);
            st.removed = true;
            st.desired = 0;
            std::mem::take(&mut st.replicas)
        };
        func.instances.close();
        func.instances.clear();
        for r in &replicas {
            r.request_stop();
        }
        func.notify.notify_waiters();
        func.wake.notify_one();
        let bound = sh.cfg.stop_grace + Duration::from_secs(5);
        for r in &replicas {
            if tokio::time::timeout(bound, r.wait_done()).await.is_err() {
                r.kill_now();
            }
        }
        func.logs.close();
        let _ = tokio::fs::remove_dir_all(sh.function_dir(function)).await;
        Ok(())
    }

    async fn list(&self, namespace: &str) -> Result<Vec<FunctionStatus>> {
        validate_namespace(namespace)?;
        let funcs: Vec<Arc<Func>> = {
            let functions = self.inner.functions.read().unwrap_or_else(|e| e.into_inner());
            functions.values().filter(|f| f.fref.namespace == namespace).cloned().collect()
        };
        let mut out: Vec<FunctionStatus> = funcs.iter().map(|f| status_of(f)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn status(&self, function: &FunctionRef) -> Result<FunctionStatus> {
        let f = self.inner.function(function)?;
        Ok(status_of(&f))
    }

    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<()> {
        self.inner.cfg.limits.check_scale(replicas)?;
        let func = self.inner.function(function)?;
        {
            let mut st = lock(&func.state);
            st.desired = replicas.min(st.policy.max);
            st.next_start = Instant::now();
        }
        func.instances.touch();
        // The reconciler starts or stops replicas, off the request path.
        func.wake.notify_one();
        Ok(())
    }

    async fn namespaces(&self) -> Result<Vec<String>> {
        let mut set = BTreeSet::new();
        set.insert(DEFAULT_NAMESPACE.to_string());
        {
            let functions = self.inner.functions.read().unwrap_or_else(|e| e.into_inner());
            for f in functions.keys() {
                set.insert(f.namespace.clone());
            }
        }
        if let Ok(mut rd) = tokio::fs::read_dir(self.inner.state.join("secrets")).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let ns = e.file_name().to_string_lossy().into_owned();
                if validate_namespace(&ns).is_ok() {
                    set.insert(ns);
                }
            }
        }
        Ok(set.into_iter().collect())
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: PROVIDER.into(),
            orchestration: "process".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Woken by the replica that turns ready (no polling).
    async fn wait_ready(&self, function: &FunctionRef, timeout: Duration) -> Result<bool> {
        let func = self.inner.function(function)?;
        faas_core::invoker::wait_notified(&func.notify, timeout, || {
            let st = lock(&func.state);
            if st.removed {
                return Err(Error::function_not_found(function.to_string()));
            }
            Ok(st
                .replicas
                .iter()
                .any(|r| r.ready.load(Ordering::SeqCst) && !r.stopping.load(Ordering::SeqCst)))
        })
        .await
    }
}

#[async_trait]
impl Secrets for ProcessInvoker {
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        validate_namespace(namespace)?;
        let dir = self.inner.state.join("secrets").join(namespace);
        let mut out = Vec::new();
        if let Ok(mut rd) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let name = e.file_name().to_string_lossy().into_owned();
                if validate_secret_name(&name).is_ok() {
                    out.push(SecretInfo { name, namespace: namespace.to_string() });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create_secret(&self, secret: Secret) -> Result<()> {
        validate_secret_name(&secret.name).map_err(|r| Error::invalid("name", r))?;
        validate_namespace(&secret.namespace)?;
        let _g = self.inner.secrets_lock.lock().await;
        let path = self.inner.secret_path(&secret.namespace, &secret.name);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Err(Error::AlreadyExists { kind: "secret", name: secret.name });
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_err("creating the secrets dir", e))?;
            set_private(parent, 0o700);
        }
        write_atomic(&path, &secret.value).await
    }

    async fn update_secret(&self, secret: Secret) -> Result<()> {
        validate_secret_name(&secret.name).map_err(|r| Error::invalid("name", r))?;
        validate_namespace(&secret.namespace)?;
        let _g = self.inner.secrets_lock.lock().await;
        let path = self.inner.secret_path(&secret.namespace, &secret.name);
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Err(Error::NotFound { kind: "secret", name: secret.name });
        }
        write_atomic(&path, &secret.value).await?;
        // Functions using it see the new value from their next read on.
        let funcs: Vec<Arc<Func>> = {
            let functions = self.inner.functions.read().unwrap_or_else(|e| e.into_inner());
            functions.values().filter(|f| f.fref.namespace == secret.namespace).cloned().collect()
        };
        for f in funcs {
            let uses = lock(&f.state).spec.secrets.contains(&secret.name);
            if uses {
                write_atomic(&f.dir.join("secrets").join(&secret.name), &secret.value).await?;
            }
        }
        Ok(())
    }

    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()> {
        validate_namespace(namespace)?;
        if validate_secret_name(name).is_err() {
            return Err(Error::NotFound { kind: "secret", name: name.to_string() });
        }
        let _g = self.inner.secrets_lock.lock().await;
        match tokio::fs::remove_file(self.inner.secret_path(namespace, name)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NotFound { kind: "secret", name: name.to_string() })
            }
            Err(e) => Err(io_err("removing a secret", e)),
        }
    }
}

#[async_trait]
impl Logs for ProcessInvoker {
    async fn logs(&self, request: LogsRequest) -> Result<LogStream> {
        let function = request
            .function
            .as_ref()
            .ok_or_else(|| Error::invalid("name", "a function name is required"))?;
        Ok(self.inner.function(function)?.logs.read(&request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ports_come_from_outside_the_ephemeral_range_and_do_not_repeat() {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let eph: Vec<u16> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
        let (lo, hi) = listen_ports().expect("room beside the ephemeral range on this machine");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let p = free_port().unwrap();
            assert!((lo..=hi).contains(&p), "{p} is outside {lo}-{hi}");
            assert!(p < eph[0] || p > eph[1], "{p} is in the ephemeral range {eph:?}");
            assert!(seen.insert(p), "{p} handed out twice");
        }
    }
}

//! In-memory view of functions, replicas and prewarm pools. A function's serving replicas
//! are the instances of its [`InstanceSet`] (the shared instance runtime routes, counts and
//! queues invocations over them); this module keeps what only containers have.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use faas_core::instance::{InstanceDrain, InstanceKey, InstanceSet};
use faas_core::util::lock;
use faas_core::{Error, FunctionRef, FunctionSpec, InstanceView, Scheduler, StartKind};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::engine::fnv_hex;
use crate::logs::{LogRetention, RetainedLogs};

/// Everything that goes into a container's configuration except the function's identity:
/// two functions with equal templates can share a prewarmed container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct Template {
    pub image: String,
    pub env_process: Option<String>,
    pub env: BTreeMap<String, String>,
    /// `host:container:ro` bind mounts of secrets.
    pub binds: Vec<String>,
    pub memory: Option<u64>,
    pub nano_cpus: Option<u64>,
    pub read_only: bool,
}

impl Template {
    /// A template for plain `image` with its own configuration.
    pub fn image(image: impl Into<String>) -> Self {
        Template { image: image.into(), ..Default::default() }
    }

    /// The template of a stem cell of the OpenWhisk `kind` in `image`: the watchdog in
    /// `openwhisk` mode with its runtime started but not initialised (`ow_stem=true`), and
    /// no watchdog time limits (a specialisation brings the action's own).
    pub fn stem(image: impl Into<String>, kind: &str) -> Self {
        let env = [
            ("mode", faas_core::runtimes::OPENWHISK_MODE),
            (faas_core::runtimes::KIND_VAR, kind),
            ("ow_stem", "true"),
            ("exec_timeout", "0s"),
            ("write_timeout", "0s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Template { image: image.into(), env, ..Default::default() }
    }

    /// The environment as `KEY=VALUE` strings, `fprocess` included.
    pub fn env_list(&self) -> Vec<String> {
        let mut v: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(p) = &self.env_process {
            v.push(format!("fprocess={p}"));
        }
        v
    }

    /// A short stable hash.
    pub fn hash(&self) -> String {
        let env = self.env_list().join("\n");
        let binds = self.binds.join("\n");
        let mem = format!("{:?}/{:?}/{}", self.memory, self.nano_cpus, self.read_only);
        fnv_hex(&[self.image.as_bytes(), env.as_bytes(), binds.as_bytes(), mem.as_bytes()])
    }
}

/// A deployed spec and what is derived from it.
#[derive(Debug)]
pub(crate) struct SpecInfo {
    pub spec: FunctionSpec,
    pub hash: String,
    pub template: Template,
    pub min_replicas: u32,
    /// Routes its invocations: the one its `com.faas-rs.scheduler` label chose, else the
    /// backend's.
    pub scheduler: Arc<dyn Scheduler>,
}

impl SpecInfo {
    /// The template of the stem cells that can become a replica of this OpenWhisk action:
    /// its kind's stem cell in its image, with its secrets, limits and read-only root (set at
    /// container creation). `None` for a spec that is no action, or one that sets what a
    /// started watchdog cannot take (its own `envProcess`, a watchdog variable such as
    /// `max_inflight`): those start cold.
    pub fn stem_template(&self) -> Option<Template> {
        let kind = faas_core::runtimes::kind_of(&self.spec).ok()??;
        if self.spec.env_process.as_deref().is_some_and(|p| !p.trim().is_empty()) {
            return None;
        }
        let fixed = faas_watchdog::openwhisk::STEM_FIXED_VARS;
        if self.spec.env_vars.keys().any(|k| fixed.contains(&k.as_str())) {
            return None;
        }
        let base = &self.template;
        Some(Template {
            binds: base.binds.clone(),
            memory: base.memory,
            nano_cpus: base.nano_cpus,
            read_only: base.read_only,
            ..Template::stem(base.image.clone(), kind.kind)
        })
    }
}

/// Whether a replica's container is running or paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunState {
    Running,
    Paused,
}

/// One container serving a function.
#[derive(Debug)]
pub(crate) struct Replica {
    /// Container id.
    pub id: String,
    /// Container name; the instance id users see.
    pub name: String,
    /// Published host port (on 127.0.0.1).
    pub port: u16,
    /// How it came to be: cold-created, taken from the prewarm pool, or adopted (warm).
    pub origin: StartKind,
    /// Time from the start request to ready.
    pub init_time: Duration,
    /// Hash of the spec it runs.
    pub spec_hash: String,
    /// Its key in the function's [`InstanceSet`], once it has joined it.
    pub key: OnceLock<InstanceKey>,
    /// Invocations using it, from their routing until their response body is dropped (it
    /// must not be paused or removed meanwhile).
    pub users: AtomicU32,
    /// Signalled when the last invocation using it ends.
    pub went_idle: Notify,
    pub draining: AtomicBool,
    pub dead: AtomicBool,
    /// Serialises pause and unpause with invocations.
    pub state: tokio::sync::Mutex<RunState>,
    pub paused: AtomicBool,
    pub last_used: Mutex<Instant>,
    /// Last CPU sample: (container total ns, system total ns).
    pub cpu_sample: Mutex<Option<(u64, u64)>>,
    /// Its place under the node's replica cap, released when the replica is dropped.
    pub slot: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Replica {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        name: String,
        port: u16,
        origin: StartKind,
        init_time: Duration,
        spec_hash: String,
        paused: bool,
    ) -> Self {
        let st = if paused { RunState::Paused } else { RunState::Running };
        Replica {
            id,
            name,
            port,
            origin,
            init_time,
            spec_hash,
            key: OnceLock::new(),
            users: AtomicU32::new(0),
            went_idle: Notify::new(),
            draining: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            state: tokio::sync::Mutex::new(st),
            paused: AtomicBool::new(paused),
            last_used: Mutex::new(Instant::now()),
            cpu_sample: Mutex::new(None),
            slot: Mutex::new(None),
        }
    }

    /// Gives the replica its place under the node's replica cap.
    pub fn hold_slot(&self, slot: OwnedSemaphorePermit) {
        *lock(&self.slot) = Some(slot);
    }

    /// Serving or able to serve: not dead and not draining.
    pub fn live(&self) -> bool {
        !self.dead.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    /// No invocation using it.
    pub fn idle(&self) -> bool {
        self.users.load(Ordering::SeqCst) == 0
    }

    pub fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    pub fn idle_for(&self) -> Duration {
        lock(&self.last_used).elapsed()
    }
}

/// One deployed function.
#[derive(Debug)]
pub(crate) struct FunctionState {
    pub fref: FunctionRef,
    pub spec: RwLock<Arc<SpecInfo>>,
    /// Every replica not yet removed, draining ones included.
    pub replicas: Mutex<Vec<Arc<Replica>>>,
    /// The replicas that serve (not draining, not dead), routed by the shared runtime.
    pub instances: Arc<InstanceSet<Arc<Replica>>>,
    pub desired: AtomicU32,
    /// Replicas being started now.
    pub starting: AtomicU32,
    pub invocations: AtomicU64,
    pub created_at: SystemTime,
    /// Signalled when replicas appear or fail to start, and when the function is removed
    /// (`wait_ready` waits on it).
    pub changed: Notify,
    /// Serialises reconcile, scale and update.
    pub reconcile_lock: tokio::sync::Mutex<()>,
    pub removed: AtomicBool,
    /// Id of the definition container holding the spec.
    pub definition_id: Mutex<String>,
    /// The last lines of its removed replicas (bounded; dropped with the function).
    pub retained: Mutex<RetainedLogs>,
    /// Set while its starts keep failing (cleared by a start that succeeds or an update).
    pub failure: Mutex<Option<StartFailure>>,
}

/// Starts of a function failing in a row, and when to try again.
#[derive(Debug, Clone)]
pub(crate) struct StartFailure {
    /// The last start's error.
    pub error: Error,
    pub attempts: u32,
    pub since: SystemTime,
    /// The wait after the last failure, and when it ends.
    pub retry_in: Duration,
    pub retry_at: Instant,
}

impl FunctionState {
    pub fn new(
        fref: FunctionRef,
        info: SpecInfo,
        desired: u32,
        created_at: SystemTime,
        retention: LogRetention,
    ) -> Self {
        let instances = Arc::new(InstanceSet::new(fref.clone()));
        FunctionState {
            fref,
            spec: RwLock::new(Arc::new(info)),
            replicas: Mutex::new(Vec::new()),
            instances,
            desired: AtomicU32::new(desired),
            starting: AtomicU32::new(0),
            invocations: AtomicU64::new(0),
            created_at,
            changed: Notify::new(),
            reconcile_lock: tokio::sync::Mutex::new(()),
            removed: AtomicBool::new(false),
            definition_id: Mutex::new(String::new()),
            retained: Mutex::new(RetainedLogs::new(retention)),
            failure: Mutex::new(None),
        }
    }

    /// Counts a failed start (an engine refusal or an instance that never became ready),
    /// to be retried after `backoff`'s wait for that many failures in a row.
    pub fn fail_start(&self, error: Error, backoff: &faas_core::util::Backoff) -> StartFailure {
        let mut g = lock(&self.failure);
        let (attempts, since) = match g.as_ref() {
            Some(f) => (f.attempts.saturating_add(1), f.since),
            None => (1, SystemTime::now()),
        };
        let retry_in = backoff.delay(attempts);
        let f =
            StartFailure { error, attempts, since, retry_in, retry_at: Instant::now() + retry_in };
        *g = Some(f.clone());
        f
    }

    /// Forgets the failed starts (a start succeeded, or a new spec or scale asks again).
    pub fn clear_failure(&self) {
        *lock(&self.failure) = None;
    }

    /// Whether the maintenance loop may try to start replicas now: no failure, or its
    /// wait is over.
    pub fn start_due(&self) -> bool {
        lock(&self.failure).as_ref().is_none_or(|f| Instant::now() >= f.retry_at)
    }

    /// The failure as [`faas_core::FunctionStatus::failure`] reports it.
    pub fn failure(&self) -> Option<faas_core::FunctionFailure> {
        lock(&self.failure).as_ref().map(|f| {
            faas_core::FunctionFailure::new(f.error.to_string(), f.attempts, f.since, f.retry_in)
        })
    }

    /// What an invocation of the function gets while it is in a failed state: the start's
    /// developer error (the function's own fault: 502) as it is, anything else (an engine
    /// refusal) as 503 naming it.
    pub fn failure_error(&self) -> Option<Error> {
        let g = lock(&self.failure);
        let f = g.as_ref()?;
        Some(self.start_failed(&f.error, Some(f.retry_at)))
    }

    /// A start error as the invocation waiting for it gets it (see
    /// [`FunctionState::failure_error`]).
    pub fn start_failed(&self, e: &Error, retry_at: Option<Instant>) -> Error {
        match e {
            Error::Developer { .. } | Error::Unavailable { .. } => e.clone(),
            other => {
                let next = retry_at
                    .map(|t| {
                        let wait = t.saturating_duration_since(Instant::now());
                        format!("; next attempt in {}", faas_core::util::format_duration(wait))
                    })
                    .unwrap_or_default();
                Error::unavailable(format!("function {} cannot start: {other}{next}", self.fref))
            }
        }
    }

    pub fn spec(&self) -> Arc<SpecInfo> {
        self.spec.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_spec(&self, info: SpecInfo) {
        *self.spec.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(info);
    }

    /// Every replica not yet removed, draining ones included.
    pub fn snapshot(&self) -> Vec<Arc<Replica>> {
        lock(&self.replicas).clone()
    }

    /// The replicas that serve: those in the instance set.
    pub fn live(&self) -> Vec<Arc<Replica>> {
        self.instances.handles().into_iter().map(|(_, r)| r).collect()
    }

    /// Adds a ready replica to the function and its instance set; false (and the replica is
    /// not added: the caller removes its container) once the function is being removed.
    #[must_use]
    pub fn push(&self, r: Arc<Replica>) -> bool {
        let mut reps = lock(&self.replicas);
        // Checked under the lock `remove` sets it under: a replica is either refused here
        // or in the snapshot `remove` takes afterwards.
        if self.removed.load(Ordering::SeqCst) {
            return false;
        }
        reps.push(Arc::clone(&r));
        let view = InstanceView {
            id: r.name.clone(),
            node: None,
            in_flight: 0,
            max_concurrency: faas_watchdog::lambda::replica_capacity(&self.spec().spec),
            ready: true,
        };
        let key = self.instances.insert(view, Arc::clone(&r));
        let _ = r.key.set(key);
        drop(reps);
        self.changed.notify_waiters();
        true
    }

    /// Marks the function removed (see [`FunctionState::push`]): its waiting and later
    /// invocations fail with function-not-found.
    pub fn mark_removed(&self) {
        {
            let _reps = lock(&self.replicas);
            self.removed.store(true, Ordering::SeqCst);
        }
        self.instances.close();
        self.changed.notify_waiters();
    }

    /// Takes a replica out of routing (a scale down or an update drains it); resolves once
    /// the invocations routed to it have been answered.
    pub fn retire(&self, r: &Replica) -> Option<InstanceDrain> {
        r.draining.store(true, Ordering::SeqCst);
        self.instances.retire(*r.key.get()?).map(|(_, d)| d)
    }

    /// Marks a replica dead and takes it out of routing; false if it was dead already.
    pub fn kill(&self, r: &Replica) -> bool {
        if r.dead.swap(true, Ordering::SeqCst) {
            return false;
        }
        if let Some(k) = r.key.get() {
            self.instances.remove(*k);
        }
        true
    }

    /// Forgets a removed replica.
    pub fn forget(&self, r: &Arc<Replica>) {
        lock(&self.replicas).retain(|x| !Arc::ptr_eq(x, r));
        if let Some(k) = r.key.get() {
            self.instances.remove(*k);
        }
    }

    /// Invocations in flight on a replica (routed, not yet answered).
    pub fn in_flight(&self, r: &Replica) -> u32 {
        r.key.get().and_then(|k| self.instances.in_flight_of(*k)).unwrap_or(0)
    }

    /// A start failed: the invocations waiting for a start fail with the error (as
    /// [`FunctionState::start_failed`] words it), and `wait_ready` callers look again.
    pub fn record_start_error(&self, e: &Error) {
        self.instances.start_failed(self.start_failed(e, None));
        self.changed.notify_waiters();
    }
}

/// A running prewarmed container waiting to be taken.
#[derive(Debug, Clone)]
pub(crate) struct Pooled {
    pub id: String,
    pub port: u16,
    pub suffix: String,
}

/// The prewarm pool of one template.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    pub target: usize,
    pub ready: Vec<Pooled>,
    pub starting: usize,
}

//! The in-memory backend: Rust handlers deployed in-process.
//!
//! [`MemoryInvoker`] implements the whole [`Backend`] contract without sockets, processes or
//! containers: it is how you unit-test handlers, and the reference backend the conformance
//! suite is written against.
//!
//! - Handlers are registered under an *image* name ([`MemoryInvoker::register`]); deploying a
//!   [`FunctionSpec`] instantiates the handler registered under `spec.image`.
//! - Each replica is an *instance*: a clone of the registered handler with an id of its own,
//!   serving at most `spec.max_concurrency` invocations at once (unlimited when unset).
//!   Invocations are routed to instances by the [`Scheduler`] (default [`LeastLoaded`]).
//! - When every instance is busy an invocation **waits** in a per-function queue, bounded in
//!   length ([`MemoryInvokerBuilder::queue_limit`]) and in time
//!   ([`MemoryInvokerBuilder::queue_timeout`]); past either bound it fails with
//!   [`Error::Overloaded`].
//! - `spec.timeout` bounds each invocation (unset: no limit): past it the handler is dropped
//!   and the caller gets a developer error of kind [`DeveloperErrorKind::Timeout`] naming the
//!   timeout. A panicking handler gives a developer error of kind
//!   [`DeveloperErrorKind::Crash`] and its instance is replaced by a fresh one (a new
//!   instance id, started with the simulated cold start).
//! - Scaling: [`Deploy::scale`] sets the replica count (clamped to the policy's `max`).
//!   Replicas are capped ([`MemoryInvokerBuilder::replica_limits`], default
//!   [`ReplicaLimits::detect`]): scaling labels or a scale request over the per-function cap
//!   are refused with [`Error::InvalidSpec`] naming the field and the cap, and no more than
//!   the node cap of instances exist over all functions (a function held below its count
//!   gets the missing instances as others free them, at its next scale or busy invocation).
//!   When the scaling policy allows zero (`com.openfaas.scale.zero=true`), a function with no
//!   invocation for its idle time (`com.openfaas.scale.zero-duration`) goes to zero replicas;
//!   the next invocation scales it back to `max(1, min)` replicas and waits for the
//!   simulated cold start ([`MemoryInvokerBuilder::cold_start`]). Everything runs on tokio
//!   time, so tests can use `#[tokio::test(start_paused = true)]`.
//! - Log lines a handler writes with [`Context::log`] are kept per function and instance in
//!   a [`LogBook`] (bounded in lines and bytes: [`MemoryInvokerBuilder::log_limit`],
//!   [`MemoryInvokerBuilder::log_bytes_limit`]), and survive scale to zero; [`Logs::logs`]
//!   reads them, `follow` included.
//! - Every completed invocation leaves an OpenWhisk [`Activation`] record in a bounded store
//!   ([`MemoryInvoker::activation`], [`MemoryInvoker::activations`]); the response carries an
//!   [`InvocationMeta`] in its extensions.
//! - Env vars and secrets named by the spec reach the handler through its [`Context`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use faas_core::prelude::*;
//! use faas_core::{
//!     handler_fn, Context, Error, FunctionSpec, Invocation, InvocationMeta, MemoryInvoker,
//!     Request, Secret, StartKind,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let invoker = MemoryInvoker::builder().cold_start(Duration::from_millis(5)).build();
//! invoker.register("greeter:1", handler_fn(|req: Request, ctx: Context| async move {
//!     let name = req.into_body().collect_limited(1024).await?;
//!     let greeting = ctx.env("GREETING").unwrap_or("Hello");
//!     let key = ctx.secret("api-key").map(|k| k.len()).unwrap_or(0);
//!     ctx.log(format!("greeting with a {key}-byte key"));
//!     Ok::<_, Error>(format!("{greeting}, {}!", String::from_utf8_lossy(&name)))
//! }));
//!
//! invoker
//!     .create_secret(Secret {
//!         name: "api-key".into(),
//!         namespace: "openfaas-fn".into(),
//!         value: "s3cr3t".into(),
//!     })
//!     .await?;
//! invoker
//!     .deploy(FunctionSpec::new("hello", "greeter:1").env("GREETING", "Hi").secret("api-key"))
//!     .await?;
//!
//! // The simple way: POST a body, get the response body.
//! assert_eq!(invoker.call("hello", "Ann").await?, "Hi, Ann!");
//!
//! // The full way: an HTTP request in, an HTTP response out, with facts about the call.
//! let inv = Invocation::post("hello", "Bob");
//! let id = inv.id.clone();
//! let resp = invoker.invoke(inv).await?;
//! let meta = resp.extensions().get::<InvocationMeta>().unwrap().clone();
//! assert_eq!(meta.start, StartKind::Warm);
//! assert_eq!(resp.into_body().collect_bytes().await?, "Hi, Bob!");
//!
//! // The activation record and the logs.
//! let activation = invoker.activation(&id).unwrap();
//! assert!(activation.response.success);
//! assert_eq!(activation.logs, ["greeting with a 6-byte key"]);
//! let logs = invoker.read_logs(&"hello".into()).await?;
//! assert_eq!(logs.len(), 2);
//! assert_eq!(logs[0].instance, meta.instance);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::activation::{Activation, ActivationResponse};
use crate::error::{DeveloperErrorKind, Error, Result, StatusCode};
use crate::function::{boxed, BoxFunction, Function, Request, Response};
use crate::invocation::StartKind;
use crate::invocation::{Context, FunctionRef, Invocation, InvocationId, InvocationMeta, LogSink};
use crate::invoker::{LogStream, LogsRequest, ProviderInfo, Secret, SecretInfo};
use crate::logbook::{LogBook, DEFAULT_LOG_BYTES_LIMIT};
use crate::prelude::*;
use crate::scheduler::{InstanceView, LeastLoaded, Scheduler};
use crate::spec::{
    validate_secret_name, FunctionSpec, FunctionStatus, ReplicaLimits, ScalingPolicy,
    DEFAULT_NAMESPACE,
};
use crate::util::{self, lock};

/// The provider name [`MemoryInvoker`] reports in [`ProviderInfo`].
pub const PROVIDER: &str = "faas-rs-memory";

/// Serial numbers of instances, unique in the process.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// Configures a [`MemoryInvoker`]; see [`MemoryInvoker::builder`].
#[derive(Clone)]
pub struct MemoryInvokerBuilder {
    cold_start: Duration,
    activation_limit: usize,
    scheduler: Arc<dyn Scheduler>,
    queue_limit: usize,
    queue_timeout: Duration,
    log_limit: usize,
    log_bytes_limit: usize,
    limits: ReplicaLimits,
}

impl std::fmt::Debug for MemoryInvokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryInvokerBuilder")
            .field("cold_start", &self.cold_start)
            .field("activation_limit", &self.activation_limit)
            .field("queue_limit", &self.queue_limit)
            .field("queue_timeout", &self.queue_timeout)
            .field("log_limit", &self.log_limit)
            .field("log_bytes_limit", &self.log_bytes_limit)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryInvokerBuilder {
    fn default() -> Self {
        MemoryInvokerBuilder {
            cold_start: Duration::ZERO,
            activation_limit: 1_000,
            scheduler: Arc::new(LeastLoaded::new()),
            queue_limit: 1024,
            queue_timeout: Duration::from_secs(60),
            log_limit: 10_000,
            log_bytes_limit: DEFAULT_LOG_BYTES_LIMIT,
            limits: ReplicaLimits::detect(),
        }
    }
}

impl MemoryInvokerBuilder {
    /// Simulated start-up time of a new instance (default zero): instances started by deploy,
    /// scale, scale from zero or a crash become ready only after it, and invocations that
    /// waited for it are reported as cold starts with this `initTime`.
    pub fn cold_start(mut self, d: Duration) -> Self {
        self.cold_start = d;
        self
    }

    /// How many activation records to keep, oldest dropped first (default 1 000; 0 keeps
    /// none). The store has a shard per thread that records (up to one per CPU), each
    /// keeping this many, so a single-threaded runtime keeps exactly the latest `n`. The
    /// default keeps a shard (128 bytes a record) within a CPU's cache: every invocation
    /// writes one record and evicts the oldest, and with 10 000 per shard that alone cost
    /// about a tenth of the gateway benchmark's throughput (BENCHMARKS.md).
    pub fn activation_limit(mut self, n: usize) -> Self {
        self.activation_limit = n;
        self
    }

    /// The scheduler routing invocations to instances (default [`LeastLoaded`]).
    pub fn scheduler(mut self, s: Arc<dyn Scheduler>) -> Self {
        self.scheduler = s;
        self
    }

    /// How many invocations of one function may wait for a busy instance (default 1024);
    /// beyond it invocations fail at once with [`Error::Overloaded`].
    pub fn queue_limit(mut self, n: usize) -> Self {
        self.queue_limit = n;
        self
    }

    /// How long an invocation may wait for a free or starting instance (default 60 s);
    /// past it the invocation fails with [`Error::Overloaded`] (every instance busy) or
    /// [`Error::Unavailable`] (no instance became ready).
    pub fn queue_timeout(mut self, d: Duration) -> Self {
        self.queue_timeout = d;
        self
    }

    /// How many log lines to keep per function, oldest dropped first (default 10 000).
    pub fn log_limit(mut self, n: usize) -> Self {
        self.log_limit = n;
        self
    }

    /// How many bytes of log lines to keep per function, oldest dropped first (default
    /// [`DEFAULT_LOG_BYTES_LIMIT`]; see [`LogBook::new`] for what a line counts).
    pub fn log_bytes_limit(mut self, bytes: usize) -> Self {
        self.log_bytes_limit = bytes;
        self
    }

    /// Caps on replicas per function and over all functions (default
    /// [`ReplicaLimits::detect`], from this machine's CPUs and memory).
    pub fn replica_limits(mut self, limits: ReplicaLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Builds the invoker.
    pub fn build(self) -> MemoryInvoker {
        let node_slots = Arc::new(Semaphore::new(self.limits.per_node() as usize));
        MemoryInvoker {
            inner: Arc::new(Shared {
                node_slots,
                cfg: self,
                handlers: RwLock::new(HashMap::new()),
                functions: RwLock::new(HashMap::default()),
                secrets: Mutex::new(BTreeMap::new()),
                activations: Activations::new(),
            }),
        }
    }
}

/// The in-memory backend; see the [module docs](self) for its behaviour and an example.
///
/// Cheap to clone: clones share the same functions, secrets, logs and activations.
#[derive(Clone)]
pub struct MemoryInvoker {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for MemoryInvoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.functions.read().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("MemoryInvoker").field("functions", &n).finish_non_exhaustive()
    }
}

impl Default for MemoryInvoker {
    fn default() -> Self {
        Self::new()
    }
}

struct Shared {
    cfg: MemoryInvokerBuilder,
    /// One permit per instance, [`ReplicaLimits::per_node`] in all: an instance holds its
    /// permit until it is dropped.
    node_slots: Arc<Semaphore>,
    handlers: RwLock<HashMap<String, BoxFunction>>,
    /// Looked up on every invocation; only deploys insert (so a fast hasher is safe).
    functions: RwLock<HashMap<FunctionRef, Arc<Deployed>, util::FastBuildHasher>>,
    /// (namespace, name) -> value.
    secrets: Mutex<BTreeMap<(String, String), Bytes>>,
    activations: Activations,
}

/// The activation records, in one shard per recording thread (up to the number of CPUs), so
/// invocations finishing on different threads don't contend for one lock. Each shard keeps
/// the latest `activation_limit` records it was given.
struct Activations {
    shards: Box<[Mutex<VecDeque<Record>>]>,
}

impl Activations {
    fn new() -> Self {
        let n = crate::runtime::shard_count();
        Activations { shards: (0..n).map(|_| Mutex::new(VecDeque::new())).collect() }
    }

    /// The calling thread's shard.
    fn local(&self) -> &Mutex<VecDeque<Record>> {
        &self.shards[crate::runtime::thread_index() % self.shards.len()]
    }

    /// Visits every shard's records.
    fn each(&self, mut f: impl FnMut(&VecDeque<Record>)) {
        for s in self.shards.iter() {
            f(&lock(s));
        }
    }
}

/// What a running instance sees of its function's configuration.
struct RunConfig {
    env: Arc<BTreeMap<String, String>>,
    secrets: Arc<BTreeMap<String, Bytes>>,
    timeout: Option<Duration>,
}

struct Deployed {
    fref: Arc<FunctionRef>,
    node_slots: Arc<Semaphore>,
    created: SystemTime,
    cold_start: Duration,
    state: Mutex<State>,
    notify: Notify,
    logs: Arc<LogBook>,
}

struct State {
    spec: FunctionSpec,
    policy: ScalingPolicy,
    prototype: BoxFunction,
    run: Arc<RunConfig>,
    desired: u32,
    /// Parallel to `views` (the scheduler's input).
    instances: Vec<Instance>,
    views: Vec<InstanceView>,
    /// Invocations waiting because every instance is busy (bounded by `queue_limit`).
    queued: usize,
    /// Invocations waiting on `notify` for any reason.
    sleepers: usize,
    invocation_count: u64,
    last_activity: Instant,
    removed: bool,
    reaper: bool,
}

struct Instance {
    serial: u64,
    id: Arc<str>,
    handler: BoxFunction,
    logger: LogSink,
    served: bool,
    /// This instance's place under the node cap.
    _slot: OwnedSemaphorePermit,
}

impl Deployed {
    /// Starts one instance (ready at once without a cold start, else after it). False when
    /// the node is at its cap of instances.
    fn start_instance(self: &Arc<Self>, st: &mut State) -> bool {
        let Ok(slot) = self.node_slots.clone().try_acquire_owned() else {
            return false;
        };
        let serial = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        let id: Arc<str> = format!("{}-{serial}", self.fref.name).into();
        let delayed = !self.cold_start.is_zero() && tokio::runtime::Handle::try_current().is_ok();
        st.views.push(InstanceView {
            id: id.to_string(),
            node: None,
            in_flight: 0,
            max_concurrency: st.spec.max_concurrency,
            ready: !delayed,
        });
        st.instances.push(Instance {
            serial,
            id: id.clone(),
            handler: st.prototype.clone(),
            logger: self.logs.sink(id),
            served: false,
            _slot: slot,
        });
        if delayed {
            let weak = Arc::downgrade(self);
            let after = self.cold_start;
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if let Some(d) = weak.upgrade() {
                    let mut st = lock(&d.state);
                    if let Some(i) = st.instances.iter().position(|x| x.serial == serial) {
                        st.views[i].ready = true;
                    }
                    drop(st);
                    d.notify.notify_waiters();
                }
            });
        }
        true
    }

    /// Sets the instance count to `n`, removing idle or starting instances first. Returns
    /// whether waiters should be woken.
    fn set_instances(self: &Arc<Self>, st: &mut State, n: u32) -> bool {
        let n = n as usize;
        let grew = st.instances.len() < n;
        while st.instances.len() < n {
            if !self.start_instance(st) {
                break;
            }
        }
        while st.instances.len() > n {
            let victim = st
                .views
                .iter()
                .rposition(|v| !v.ready)
                .or_else(|| st.views.iter().rposition(|v| v.in_flight == 0))
                .unwrap_or(st.views.len() - 1);
            st.instances.remove(victim);
            st.views.remove(victim);
        }
        grew
    }

    /// Replaces every instance by a fresh one (after an update).
    fn restart_all(self: &Arc<Self>, st: &mut State) {
        st.instances.clear();
        st.views.clear();
        let n = st.desired;
        self.set_instances(st, n);
    }

    fn ensure_reaper(self: &Arc<Self>, st: &mut State) {
        if st.reaper || st.removed || !st.policy.allow_zero || st.desired == 0 {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        st.reaper = true;
        rt.spawn(reap(Arc::downgrade(self)));
    }
}

/// Scales an idle function to zero once its policy's idle time has passed.
async fn reap(weak: Weak<Deployed>) {
    loop {
        let wake = {
            let Some(d) = weak.upgrade() else { return };
            let mut st = lock(&d.state);
            if st.removed || !st.policy.allow_zero || st.desired == 0 {
                st.reaper = false;
                return;
            }
            let idle = st.policy.idle_timeout();
            let busy = st.sleepers > 0 || st.views.iter().any(|v| v.in_flight > 0);
            let now = Instant::now();
            if busy {
                now + idle
            } else if now >= st.last_activity + idle {
                st.desired = 0;
                st.instances.clear();
                st.views.clear();
                st.reaper = false;
                return;
            } else {
                st.last_activity + idle
            }
        };
        tokio::time::sleep_until(wake).await;
    }
}

/// An instance slot taken by one invocation; released (even on cancellation) when dropped.
struct Lease {
    d: Arc<Deployed>,
    serial: u64,
    crashed: bool,
    /// When the invocation ended, if the holder read the clock already.
    ended: Option<Instant>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = lock(&self.d.state);
        st.last_activity = self.ended.unwrap_or_else(Instant::now);
        let mut wake_all = false;
        if let Some(i) = st.instances.iter().position(|x| x.serial == self.serial) {
            if self.crashed {
                st.instances.remove(i);
                st.views.remove(i);
                if !st.removed && st.instances.len() < st.desired as usize {
                    self.d.start_instance(&mut st);
                    wake_all = true;
                }
            } else {
                let v = &mut st.views[i];
                v.in_flight = v.in_flight.saturating_sub(1);
            }
        }
        let wake = st.sleepers > 0;
        drop(st);
        if wake_all {
            self.d.notify.notify_waiters();
        } else if wake {
            self.d.notify.notify_one();
        }
    }
}

/// Accounts for an invocation waiting on a function's `notify`.
struct Waiter {
    d: Arc<Deployed>,
    queued: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut st = lock(&self.d.state);
        st.sleepers = st.sleepers.saturating_sub(1);
        if self.queued {
            st.queued = st.queued.saturating_sub(1);
        }
        let others = st.sleepers > 0;
        drop(st);
        // A wake-up this waiter may have consumed without using goes to the next one.
        if others {
            self.d.notify.notify_one();
        }
    }
}

struct Claim {
    lease: Lease,
    slot: Slot,
}

/// What an invocation takes from the instance it was given (besides the lease).
struct Slot {
    serial: u64,
    instance: Arc<str>,
    handler: BoxFunction,
    logger: LogSink,
    env: Arc<BTreeMap<String, String>>,
    secrets: Arc<BTreeMap<String, Bytes>>,
    timeout: Option<Duration>,
    start: StartKind,
}

impl Slot {
    /// The claim of this slot, holding `d` (the handle of the slot's function).
    fn leased(self, d: Arc<Deployed>) -> Claim {
        Claim { lease: Lease { d, serial: self.serial, crashed: false, ended: None }, slot: self }
    }
}

/// Takes a slot on the instance the scheduler picks, if any has capacity.
fn try_claim(
    d: &Deployed,
    st: &mut State,
    scheduler: &dyn Scheduler,
    cold: bool,
    now: Instant,
) -> Option<Slot> {
    let i = scheduler.route(&d.fref, &st.views)?;
    if !st.views.get(i)?.has_capacity() {
        return None;
    }
    st.views[i].in_flight += 1;
    st.invocation_count += 1;
    st.last_activity = now;
    let inst = &mut st.instances[i];
    let first = !inst.served;
    inst.served = true;
    Some(Slot {
        serial: inst.serial,
        instance: inst.id.clone(),
        handler: inst.handler.clone(),
        logger: inst.logger.clone(),
        env: st.run.env.clone(),
        secrets: st.run.secrets.clone(),
        timeout: st.run.timeout,
        start: if cold && first { StartKind::Cold } else { StartKind::Warm },
    })
}

/// Waits until an instance of `d` can take an invocation that arrived at `arrived`: scales
/// from zero, queues behind busy instances (bounded by `queue_limit` and `queue_timeout`).
/// The slow path of [`MemoryInvoker::invoke`], boxed there so its state stays out of the
/// common path's future.
async fn wait_for_claim(
    d: &Arc<Deployed>,
    cfg: &MemoryInvokerBuilder,
    arrived: Instant,
    budget: Option<Duration>,
) -> Result<Claim> {
    let bound = budget.map_or(cfg.queue_timeout, |b| b.min(cfg.queue_timeout));
    let mut waiter: Option<Waiter> = None;
    let mut cold = false;
    let claim = loop {
        let notified = d.notify.notified();
        tokio::pin!(notified);
        let waiting_for_start = {
            let mut st = lock(&d.state);
            if st.removed {
                return Err(Error::function_not_found(d.fref.to_string()));
            }
            if let Some(c) = try_claim(d, &mut st, &*cfg.scheduler, cold, Instant::now()) {
                break c.leased(d.clone());
            }
            if st.instances.is_empty() {
                // Scale from zero.
                cold = true;
                let n = st.policy.min.max(1).min(st.policy.max);
                st.desired = n;
                d.set_instances(&mut st, n);
                d.ensure_reaper(&mut st);
                if let Some(c) = try_claim(d, &mut st, &*cfg.scheduler, cold, Instant::now()) {
                    break c.leased(d.clone());
                }
            } else if st.instances.len() < st.desired as usize {
                // Held below its count by the node cap: take the slots freed since.
                let n = st.desired;
                if d.set_instances(&mut st, n) {
                    if let Some(c) = try_claim(d, &mut st, &*cfg.scheduler, cold, Instant::now()) {
                        break c.leased(d.clone());
                    }
                }
            }
            let starting = st.views.iter().any(|v| !v.ready);
            cold |= starting;
            let w = match &mut waiter {
                Some(w) => w,
                None => {
                    st.sleepers += 1;
                    waiter.insert(Waiter { d: d.clone(), queued: false })
                }
            };
            if !starting && !w.queued {
                if st.queued >= cfg.queue_limit {
                    return Err(Error::Overloaded {
                        message: format!(
                            "every instance of {} is busy and {} invocations are queued",
                            d.fref, st.queued
                        ),
                        retry_after: Some(Duration::from_secs(1)),
                    });
                }
                st.queued += 1;
                w.queued = true;
            }
            notified.as_mut().enable();
            starting
        };
        if tokio::time::timeout_at(arrived + bound, notified).await.is_err() {
            let after = util::format_duration(bound);
            return Err(if waiting_for_start {
                Error::unavailable(format!("no instance of {} became ready in {after}", d.fref))
            } else {
                Error::Overloaded {
                    message: format!("every instance of {} stayed busy for {after}", d.fref),
                    retry_after: Some(Duration::from_secs(1)),
                }
            });
        }
    };
    drop(waiter);
    Ok(claim)
}

pin_project_lite::pin_project! {
    /// An invocation an instance has taken: the handler's call, its exec timeout, and what
    /// the activation record needs once it ends.
    struct Running<'a> {
        shared: &'a Shared,
        // Holds the lease (and through it the function): `None` once completed.
        meta: Option<RunMeta>,
        #[pin]
        call: futures::future::CatchUnwind<AssertUnwindSafe<tower::util::Oneshot<BoxFunction, Request>>>,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
    }
}

/// What [`Running`] keeps for the activation record.
struct RunMeta {
    lease: Lease,
    instance: Arc<str>,
    id: InvocationId,
    start: StartKind,
    wait_time: Duration,
    init_time: Option<Duration>,
    timeout: Option<Duration>,
    seq0: u64,
    /// When it started, by the wall clock and by the monotonic one.
    started: SystemTime,
    began: Instant,
}

impl<'a> Running<'a> {
    fn start(
        shared: &'a Shared,
        claim: Claim,
        arrived: Instant,
        wait_time: Duration,
        invocation: Invocation,
    ) -> Running<'a> {
        let Claim { lease, slot } = claim;
        let Slot { instance, handler, logger, env, secrets, timeout, start, .. } = slot;
        let d = &lease.d;
        // The exec timeout counts from when the instance took the invocation.
        let began = arrived + wait_time;
        let init_time = (start == StartKind::Cold).then_some(d.cold_start);
        let Invocation { id, function, mut request } = invocation;
        request.extensions_mut().insert(Context {
            id: Some(id.clone()),
            function: Some(function),
            instance: Some(instance.to_string()),
            env,
            secrets,
            deadline: timeout.map(|t| began.into_std() + t),
            logger,
        });
        let seq0 = d.logs.seq();
        let started = SystemTime::now();
        let call = AssertUnwindSafe(handler.oneshot(request)).catch_unwind();
        let deadline = timeout.map(|t| tokio::time::sleep_until(began + t));
        let meta = RunMeta {
            lease,
            instance,
            id,
            start,
            wait_time,
            init_time,
            timeout,
            seq0,
            started,
            began,
        };
        Running { shared, meta: Some(meta), call, deadline }
    }
}

impl std::future::Future for Running<'_> {
    type Output = Result<Response>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = match this.call.poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                let Some(deadline) = this.deadline.as_pin_mut() else { return Poll::Pending };
                if deadline.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Ok(Err(match this.meta.as_ref() {
                    Some(m) => Error::timeout(
                        format_args!("function {} exec", m.lease.d.fref),
                        m.timeout.unwrap_or_default(),
                    ),
                    None => Error::internal("invocation polled after it completed"),
                }))
            }
        };
        // Polled again after completion (a contract violation): answer, never panic.
        let Some(meta) = this.meta.take() else {
            return Poll::Ready(Err(Error::internal("invocation polled after it completed")));
        };
        let RunMeta {
            mut lease,
            instance,
            id,
            start,
            wait_time,
            init_time,
            seq0,
            started,
            began,
            ..
        } = meta;
        let d = &*lease.d;
        let result = match outcome {
            Ok(r) => r,
            Err(panic) => {
                lease.crashed = true;
                Err(Error::developer(
                    DeveloperErrorKind::Crash,
                    format!(
                        "function {} crashed (instance {instance} panicked: {}); \
                         the instance was replaced",
                        d.fref,
                        panic_message(&*panic)
                    ),
                ))
            }
        };
        // One clock read for the end: the wall-clock end follows from the start.
        let done = Instant::now();
        let ended = started + done.saturating_duration_since(began);
        lease.ended = Some(done);
        let (logs, seq1) = (d.logs.clone(), d.logs.seq());
        // The slot is free for the next invocation before the record is written.
        drop(lease);
        let instance_name = result.is_ok().then(|| instance.to_string());
        this.shared.record(Record {
            id,
            start: Nanos::of_time(started),
            end: Nanos::of_time(ended),
            outcome: match &result {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) => Err(Box::new(e.clone())),
            },
            instance,
            kind: start,
            wait_time: Nanos::of(wait_time),
            init_time: init_time.map_or(Nanos::NONE, Nanos::of),
            logs,
            seq: (seq0, seq1),
        });
        Poll::Ready(result.map(|mut resp| {
            resp.extensions_mut().insert(InvocationMeta {
                instance: instance_name.unwrap_or_default(),
                start,
                wait_time,
                init_time,
            });
            resp
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Activations

/// One finished invocation, kept small (two cache lines): the store is a ring written on
/// every invocation.
#[repr(align(64))]
struct Record {
    id: InvocationId,
    /// Since the Unix epoch.
    start: Nanos,
    end: Nanos,
    outcome: std::result::Result<u16, Box<Error>>,
    instance: Arc<str>,
    kind: StartKind,
    wait_time: Nanos,
    init_time: Nanos,
    /// The function's logs (and through them the function's reference).
    logs: Arc<LogBook>,
    seq: (u64, u64),
}

/// A duration (or a time since the Unix epoch) in nanoseconds, in 8 bytes; [`Nanos::NONE`]
/// for none.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Nanos(u64);

impl Nanos {
    const NONE: Nanos = Nanos(u64::MAX);

    fn of(d: Duration) -> Nanos {
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1))
    }

    fn of_time(t: SystemTime) -> Nanos {
        Nanos::of(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
    }

    fn duration(self) -> Option<Duration> {
        (self != Nanos::NONE).then(|| Duration::from_nanos(self.0))
    }

    fn time(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + self.duration().unwrap_or_default()
    }
}

impl Record {
    fn to_activation(&self) -> Activation {
        let response = match &self.outcome {
            Ok(status) if *status >= 500 => ActivationResponse {
                status: StatusCode::ApplicationError.as_str().into(),
                status_code: StatusCode::ApplicationError,
                success: false,
                result: serde_json::json!({ "statusCode": status }),
            },
            Ok(status) => ActivationResponse::success(serde_json::json!({ "statusCode": status })),
            Err(e) => ActivationResponse::error(e),
        };
        let (start, end) = (self.start.time(), self.end.time());
        let mut a = Activation::new(self.id.clone(), self.logs.function(), start, end, response);
        a.annotate_meta(&InvocationMeta {
            instance: self.instance.to_string(),
            start: self.kind,
            wait_time: self.wait_time.duration().unwrap_or_default(),
            init_time: self.init_time.duration(),
        });
        a.annotate("kind", serde_json::json!("rust:memory"));
        a.logs = self.logs.lines(&self.instance, self.seq.0, self.seq.1);
        a
    }
}

// ---------------------------------------------------------------------------------------
// The invoker

impl MemoryInvoker {
    /// An invoker with default settings (no cold start, least-loaded routing).
    pub fn new() -> Self {
        MemoryInvokerBuilder::default().build()
    }

    /// A builder for custom settings.
    pub fn builder() -> MemoryInvokerBuilder {
        MemoryInvokerBuilder::default()
    }

    /// Registers handler `f` under `image`; specs whose `image` is this name deploy it.
    /// Registering an image again replaces its handler for later deploys and updates.
    pub fn register(&self, image: impl Into<String>, f: impl Function) -> &Self {
        let mut handlers = self.inner.handlers.write().unwrap_or_else(|e| e.into_inner());
        handlers.insert(image.into(), boxed(f));
        self
    }

    /// The activation record of an invocation, while it is in the bounded store.
    pub fn activation(&self, id: &InvocationId) -> Option<Activation> {
        let mut found = None;
        self.inner.activations.each(|store| {
            if found.is_none() {
                found = store.iter().rev().find(|r| &r.id == id).map(Record::to_activation);
            }
        });
        found
    }

    /// The latest `limit` activation records of `function`, newest first.
    pub fn activations(&self, function: &FunctionRef, limit: usize) -> Vec<Activation> {
        // Newest first across shards: each shard's `limit` latest by end time (a shard is
        // in the order its records were written, which a wall clock set back between two
        // invocations' starts can make differ from their ends' order), merged by end time.
        let mut latest: Vec<(Nanos, Activation)> = Vec::new();
        self.inner.activations.each(|store| {
            let mut own: Vec<&Record> =
                store.iter().filter(|r| **r.logs.function() == *function).collect();
            if own.len() > limit {
                own.select_nth_unstable_by_key(limit, |r| std::cmp::Reverse(r.end));
                own.truncate(limit);
            }
            latest.extend(own.into_iter().map(|r| (r.end, r.to_activation())));
        });
        latest.sort_by_key(|a| std::cmp::Reverse(a.0));
        latest.into_iter().take(limit).map(|(_, a)| a).collect()
    }

    /// The instances of `function` as the scheduler sees them (id, in-flight count,
    /// concurrency limit, readiness).
    pub fn instances(&self, function: &FunctionRef) -> Result<Vec<InstanceView>> {
        let d = self.inner.function(function)?;
        let st = lock(&d.state);
        Ok(st.views.clone())
    }
}

impl Shared {
    fn function(&self, f: &FunctionRef) -> Result<Arc<Deployed>> {
        let functions = self.functions.read().unwrap_or_else(|e| e.into_inner());
        functions.get(f).cloned().ok_or_else(|| Error::function_not_found(f.to_string()))
    }

    fn prototype(&self, image: &str) -> Result<BoxFunction> {
        let handlers = self.handlers.read().unwrap_or_else(|e| e.into_inner());
        handlers.get(image).cloned().ok_or_else(|| {
            Error::invalid(
                "image",
                format!(
                    "no handler is registered under image {image:?}; \
                     call MemoryInvoker::register({image:?}, handler) first"
                ),
            )
        })
    }

    fn resolve_secrets(&self, ns: &str, names: &[String]) -> Result<BTreeMap<String, Bytes>> {
        let secrets = lock(&self.secrets);
        let mut out = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            let key = (ns.to_string(), name.clone());
            let v = secrets.get(&key).ok_or_else(|| {
                Error::invalid(
                    format!("secrets[{i}]"),
                    format!("secret {name:?} does not exist in namespace {ns:?}"),
                )
            })?;
            out.insert(name.clone(), v.clone());
        }
        Ok(out)
    }

    /// Validates `spec` and resolves what an instance needs.
    fn prepare(&self, spec: &FunctionSpec) -> Result<(ScalingPolicy, BoxFunction, RunConfig)> {
        spec.validate()?;
        let policy = spec.scaling_policy_within(&self.cfg.limits)?;
        let prototype = self.prototype(&spec.image)?;
        let secrets = self.resolve_secrets(spec.namespace_or_default(), &spec.secrets)?;
        let run = RunConfig {
            env: Arc::new(spec.env_vars.clone()),
            secrets: Arc::new(secrets),
            timeout: spec.timeout,
        };
        Ok((policy, prototype, run))
    }

    fn record(&self, r: Record) {
        let limit = self.cfg.activation_limit;
        if limit == 0 {
            return;
        }
        let mut store = lock(self.activations.local());
        while store.len() >= limit {
            store.pop_front();
        }
        store.push_back(r);
    }

    fn deployed(&self) -> Vec<Arc<Deployed>> {
        let functions = self.functions.read().unwrap_or_else(|e| e.into_inner());
        functions.values().cloned().collect()
    }
}

fn validate_namespace(ns: &str) -> Result<()> {
    util::validate_dns1123_label(ns).map_err(|r| Error::invalid("namespace", r))
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

fn status_of(d: &Deployed) -> FunctionStatus {
    let st = lock(&d.state);
    let mut s = FunctionStatus::from_spec(&st.spec);
    s.invocation_count = st.invocation_count;
    s.replicas = u64::from(st.desired);
    s.available_replicas = st.views.iter().filter(|v| v.ready).count() as u64;
    s.created_at = Some(d.created);
    s
}

#[async_trait]
impl Invoke for MemoryInvoker {
    // Written out rather than `async fn`: an invocation that an instance can take at once
    // (the common case) runs as the small hand-written `Running` future; only one that has
    // to wait (scale from zero, busy instances) gets the larger general future.
    fn invoke<'life0, 'async_trait>(
        &'life0 self,
        invocation: Invocation,
    ) -> crate::invoker::InvokeFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let shared = &*self.inner;
        let d = match shared.function(&invocation.function) {
            Ok(d) => d,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let arrived = Instant::now();
        let slot = {
            let mut st = lock(&d.state);
            if st.removed {
                let e = Error::function_not_found(d.fref.to_string());
                return Box::pin(std::future::ready(Err(e)));
            }
            try_claim(&d, &mut st, &*shared.cfg.scheduler, false, arrived)
        };
        match slot {
            // Claimed at once: it did not wait, and the lease takes this handle.
            Some(slot) => {
                let claim = slot.leased(d);
                Box::pin(Running::start(shared, claim, arrived, Duration::ZERO, invocation))
            }
            None => Box::pin(async move {
                let budget = crate::invocation::WaitBudget::of(&invocation.request);
                let claim = wait_for_claim(&d, &shared.cfg, arrived, budget).await?;
                Running::start(shared, claim, arrived, arrived.elapsed(), invocation).await
            }),
        }
    }
}

#[async_trait]
impl Deploy for MemoryInvoker {
    async fn deploy(&self, spec: FunctionSpec) -> Result<()> {
        let (policy, prototype, run) = self.inner.prepare(&spec)?;
        let fref = Arc::new(spec.function_ref());
        let mut functions = self.inner.functions.write().unwrap_or_else(|e| e.into_inner());
        if functions.contains_key(&*fref) {
            return Err(Error::AlreadyExists { kind: "function", name: fref.to_string() });
        }
        let desired = policy.min;
        let d = Arc::new(Deployed {
            fref: fref.clone(),
            node_slots: self.inner.node_slots.clone(),
            created: SystemTime::now(),
            cold_start: self.inner.cfg.cold_start,
            logs: Arc::new(LogBook::new(
                fref.clone(),
                self.inner.cfg.log_limit,
                self.inner.cfg.log_bytes_limit,
            )),
            notify: Notify::new(),
            state: Mutex::new(State {
                spec,
                policy,
                prototype,
                run: Arc::new(run),
                desired,
                instances: Vec::new(),
                views: Vec::new(),
                queued: 0,
                sleepers: 0,
                invocation_count: 0,
                last_activity: Instant::now(),
                removed: false,
                reaper: false,
            }),
        });
        {
            let mut st = lock(&d.state);
            d.set_instances(&mut st, desired);
            d.ensure_reaper(&mut st);
        }
        functions.insert((*fref).clone(), d);
        Ok(())
    }

    async fn update(&self, spec: FunctionSpec) -> Result<()> {
        let d = self.inner.function(&spec.function_ref())?;
        let (policy, prototype, run) = self.inner.prepare(&spec)?;
        {
            let mut st = lock(&d.state);
            if st.removed {
                return Err(Error::function_not_found(d.fref.to_string()));
            }
            st.desired = st.desired.min(policy.max);
            st.spec = spec;
            st.policy = policy;
            st.prototype = prototype;
            st.run = Arc::new(run);
            st.last_activity = Instant::now();
            d.restart_all(&mut st);
            d.ensure_reaper(&mut st);
        }
        d.notify.notify_waiters();
        Ok(())
    }

    async fn remove(&self, function: &FunctionRef) -> Result<()> {
        let d = {
            let mut functions = self.inner.functions.write().unwrap_or_else(|e| e.into_inner());
            functions
                .remove(function)
                .ok_or_else(|| Error::function_not_found(function.to_string()))?
        };
        {
            let mut st = lock(&d.state);
            st.removed = true;
            st.desired = 0;
            st.instances.clear();
            st.views.clear();
        }
        d.logs.close();
        d.notify.notify_waiters();
        Ok(())
    }

    async fn list(&self, namespace: &str) -> Result<Vec<FunctionStatus>> {
        validate_namespace(namespace)?;
        let mut out: Vec<FunctionStatus> = self
            .inner
            .deployed()
            .iter()
            .filter(|d| d.fref.namespace == namespace)
            .map(|d| status_of(d))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn status(&self, function: &FunctionRef) -> Result<FunctionStatus> {
        let d = self.inner.function(function)?;
        Ok(status_of(&d))
    }

    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<()> {
        self.inner.cfg.limits.check_scale(replicas)?;
        let d = self.inner.function(function)?;
        let wake = {
            let mut st = lock(&d.state);
            if st.removed {
                return Err(Error::function_not_found(d.fref.to_string()));
            }
            let n = replicas.min(st.policy.max);
            st.desired = n;
            st.last_activity = Instant::now();
            let grew = d.set_instances(&mut st, n);
            d.ensure_reaper(&mut st);
            grew
        };
        if wake {
            d.notify.notify_waiters();
        }
        Ok(())
    }

    async fn namespaces(&self) -> Result<Vec<String>> {
        let mut set = BTreeSet::new();
        set.insert(DEFAULT_NAMESPACE.to_string());
        for d in self.inner.deployed() {
            set.insert(d.fref.namespace.clone());
        }
        for (ns, _) in lock(&self.inner.secrets).keys() {
            set.insert(ns.clone());
        }
        Ok(set.into_iter().collect())
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: PROVIDER.into(),
            orchestration: "memory".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Woken by the instance that turns ready (no polling).
    async fn wait_ready(&self, function: &FunctionRef, timeout: Duration) -> Result<bool> {
        let d = self.inner.function(function)?;
        crate::invoker::wait_notified(&d.notify, timeout, || {
            let st = lock(&d.state);
            if st.removed {
                return Err(Error::function_not_found(function.to_string()));
            }
            Ok(st.views.iter().any(|v| v.ready))
        })
        .await
    }
}

#[async_trait]
impl Secrets for MemoryInvoker {
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        validate_namespace(namespace)?;
        let secrets = lock(&self.inner.secrets);
        Ok(secrets
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(ns, name)| SecretInfo { name: name.clone(), namespace: ns.clone() })
            .collect())
    }

    async fn create_secret(&self, secret: Secret) -> Result<()> {
        validate_secret_name(&secret.name).map_err(|r| Error::invalid("name", r))?;
        validate_namespace(&secret.namespace)?;
        let mut secrets = lock(&self.inner.secrets);
        let key = (secret.namespace, secret.name);
        if secrets.contains_key(&key) {
            return Err(Error::AlreadyExists { kind: "secret", name: key.1 });
        }
        secrets.insert(key, secret.value);
        Ok(())
    }

    async fn update_secret(&self, secret: Secret) -> Result<()> {
        {
            let mut secrets = lock(&self.inner.secrets);
            let key = (secret.namespace.clone(), secret.name.clone());
            match secrets.get_mut(&key) {
                Some(v) => *v = secret.value.clone(),
                None => return Err(Error::NotFound { kind: "secret", name: secret.name }),
            }
        }
        // Functions using it see the new value from their next invocation on.
        for d in self.inner.deployed() {
            if d.fref.namespace != secret.namespace {
                continue;
            }
            let mut st = lock(&d.state);
            if st.spec.secrets.contains(&secret.name) {
                let mut values = (*st.run.secrets).clone();
                values.insert(secret.name.clone(), secret.value.clone());
                st.run = Arc::new(RunConfig {
                    env: st.run.env.clone(),
                    secrets: Arc::new(values),
                    timeout: st.run.timeout,
                });
            }
        }
        Ok(())
    }

    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()> {
        let mut secrets = lock(&self.inner.secrets);
        secrets
            .remove(&(namespace.to_string(), name.to_string()))
            .map(|_| ())
            .ok_or_else(|| Error::NotFound { kind: "secret", name: name.to_string() })
    }
}

#[async_trait]
impl Logs for MemoryInvoker {
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
    use crate::function::{handler_fn, Request};
    use crate::invoker::InvokeExt;
    use crate::scheduler::{Node, PlacementRequest};

    /// Always picks instance 0, full or not.
    struct Stubborn;

    impl Scheduler for Stubborn {
        fn place(&self, _: &PlacementRequest<'_>, _: &[Node]) -> Result<usize> {
            Ok(0)
        }
        fn route(&self, _: &FunctionRef, instances: &[InstanceView]) -> Option<usize> {
            (!instances.is_empty()).then_some(0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_scheduler_cannot_overfill_an_instance() {
        let inv = MemoryInvoker::builder().scheduler(Arc::new(Stubborn)).build();
        let peak = Arc::new(AtomicU64::new(0));
        let now = Arc::new(AtomicU64::new(0));
        let (p, n) = (peak.clone(), now.clone());
        inv.register(
            "count",
            handler_fn(move |_: Request, _: Context| {
                let (p, n) = (p.clone(), n.clone());
                async move {
                    let v = n.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(v, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Error>("ok")
                }
            }),
        );
        inv.deploy(FunctionSpec::new("c", "count").max_concurrency(2)).await.unwrap();
        let calls = (0..6).map(|_| inv.call("c", "x"));
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.unwrap(), "ok");
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn kept_log_lines_are_bounded_in_bytes() {
        let inv = MemoryInvoker::builder().log_bytes_limit(64 << 10).build();
        inv.register(
            "chatty",
            handler_fn(|_: Request, cx: Context| async move {
                // 8 lines of 4 KiB per call.
                for i in 0..8 {
                    cx.log(format!("{i}{}", "x".repeat(4095)));
                }
                Ok::<_, Error>("ok")
            }),
        );
        inv.deploy(FunctionSpec::new("c", "chatty")).await.unwrap();
        for _ in 0..10 {
            assert_eq!(inv.call("c", "").await.unwrap(), "ok");
        }
        let kept = inv.read_logs(&"c".into()).await.unwrap();
        let bytes: usize = kept.iter().map(|e| e.text.len()).sum();
        assert!(!kept.is_empty() && bytes <= 64 << 10, "{} lines, {bytes} bytes kept", kept.len());
        assert!(kept.len() >= 12, "only {} lines of 4 KiB kept within 64 KiB", kept.len());
        assert!(kept.last().is_some_and(|e| e.text.starts_with('7')), "the newest line is kept");
    }

    #[tokio::test]
    async fn activations_are_the_latest_by_end_time_whatever_order_they_were_written_in() {
        let inv = MemoryInvoker::new();
        inv.register("ok", handler_fn(|_: Request, _: Context| async { Ok::<_, Error>("ok") }));
        inv.deploy(FunctionSpec::new("f", "ok")).await.unwrap();
        let logs = inv.inner.function(&"f".into()).unwrap().logs.clone();
        let record = |id: &str, end_s: u64| Record {
            id: InvocationId::from_string(id),
            start: Nanos::of(Duration::from_secs(end_s - 1)),
            end: Nanos::of(Duration::from_secs(end_s)),
            outcome: Ok(200),
            instance: "f-1".into(),
            kind: StartKind::Warm,
            wait_time: Nanos::NONE,
            init_time: Nanos::NONE,
            logs: logs.clone(),
            seq: (0, 0),
        };
        // Written on one thread (one shard), the newest first: as after the wall clock was
        // set back between the invocations' starts.
        for (id, end) in [("c", 30), ("b", 20), ("a", 10)] {
            inv.inner.record(record(id, end));
        }
        let ids =
            |n| inv.activations(&"f".into(), n).into_iter().map(|a| a.activation_id.to_string());
        assert_eq!(ids(1).collect::<Vec<_>>(), ["c"]);
        assert_eq!(ids(2).collect::<Vec<_>>(), ["c", "b"]);
        assert_eq!(ids(5).collect::<Vec<_>>(), ["c", "b", "a"]);
        assert!(ids(0).next().is_none());
    }

    #[test]
    fn panic_messages() {
        let a: Box<dyn std::any::Any + Send> = Box::new("static");
        let b: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        let c: Box<dyn std::any::Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(&*a), "static");
        assert_eq!(panic_message(&*b), "owned");
        assert_eq!(panic_message(&*c), "(non-string panic payload)");
    }

    #[test]
    fn works_without_a_tokio_runtime_for_management() {
        let inv = MemoryInvoker::builder().cold_start(Duration::from_secs(1)).build();
        inv.register("h", handler_fn(|_: Request, _: Context| async { Ok::<_, Error>("x") }));
        inv.deploy(FunctionSpec::new("h", "h")).now_or_never().unwrap().unwrap();
        let st = inv.status(&FunctionRef::default_ns("h")).now_or_never().unwrap().unwrap();
        // Outside a runtime there is nothing to simulate the start with: ready at once.
        assert_eq!(st.available_replicas, 1);
        assert_eq!(inv.info().provider, PROVIDER);
    }
}

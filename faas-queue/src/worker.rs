//! The queue worker: takes queued invocations from a [`QueueConsumer`], invokes them through
//! any [`Invoke`], retries, dead-letters, posts callbacks and keeps an activation record per
//! call id.
//!
//! For each delivery the worker:
//!
//! 1. skips it (acknowledging) if its record says it is finished already (a duplicate
//!    delivery);
//! 2. checks the input: payload size, callback URL, method, path and headers; bad input ends
//!    in a `failed` record (and a callback, if the URL is usable), never in a stuck message;
//! 3. invokes it, at most [`WorkerConfig::function_concurrency`] at once per function,
//!    recording `running` and the attempt number as soon as the attempt has to wait (an
//!    attempt that finishes without waiting, as an in-process function may, goes straight
//!    to its final record: no reader could have seen it running); an answer with one of
//!    [`WorkerConfig::retry_statuses`] (or an error mapping to one) is retried after an
//!    exponential backoff with jitter, or after the `Retry-After` the function asked for,
//!    until [`WorkerConfig::max_attempts`];
//! 4. records the outcome (`succeeded`, `failed`, or `dead-lettered` with the last error,
//!    also sent to the [`DeadLetterSink`]);
//! 5. POSTs the result to the callback URL with `X-Call-Id`, `X-Function-Status`,
//!    `X-Function-Name` and `X-Duration-Seconds`, retrying the callback too, and records
//!    what happened;
//! 6. acknowledges the delivery. A worker stopped before that (crash, abort) leaves the item
//!    to be delivered again; the attempts already made are counted from the record, so a
//!    message that keeps killing workers while it runs is dead-lettered after
//!    `max_attempts`.
//!
//! The worker runs one loop per runtime thread, each a task of its own (so they run in
//! parallel; aborting the worker aborts them, and [`WorkerHandle::abort`] returns once they
//! are gone); together they take up to
//! [`WorkerConfig::max_in_flight`] deliveries at a time (several per wake-up when the
//! consumer has them ready, see [`QueueConsumer::next_batch`]). Each delivery is first
//! processed in its loop; only one that has to wait (for its function's concurrency limit,
//! a slow function, a retry's backoff, a callback) goes on in a task of its own, so
//! in-process functions that answer at once cost no task each.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use faas_core::activation::epoch_millis;
use faas_core::queue::{
    parse_callback_url, ActivationStore, AsyncActivation, AsyncState, CallbackOutcome, DeadLetter,
    DeadLetterSink, FinalAttempt, Progress, QueueConsumer, QueuedInvocation, RecordUpdate,
};
use faas_core::{Delivery, Error, InvocationId, InvocationMeta, Invoke};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::callback::{CallbackRequest, CallbackSender, HttpCallbackClient};

pub use faas_core::util::Backoff;

/// How callbacks are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackPolicy {
    /// POSTs at most (at least 1).
    pub max_attempts: u32,
    /// Waits between them.
    pub backoff: Backoff,
}

impl Default for CallbackPolicy {
    fn default() -> Self {
        CallbackPolicy { max_attempts: 5, backoff: Backoff::default() }
    }
}

/// Deliveries taken from the consumer at most per wake-up of the worker loop.
const DELIVERIES_PER_WAKEUP: usize = 64;
/// Worker loops at most (one per runtime thread).
const MAX_LANES: usize = 16;
/// Per-function limits kept at most before the idle ones are forgotten (every function
/// name ever queued would otherwise keep one).
const MAX_LIMITS: usize = 4096;
/// How long [`WorkerHandle::abort`] waits for the worker's lanes to be dropped.
const ABORT_WAIT: Duration = Duration::from_secs(5);
/// Deliveries processed in the worker loop between two yields to the runtime.
const DELIVERIES_PER_YIELD: usize = 1024;

/// The HTTP statuses retried by default: 408, 429, 500, 502, 503, 504.
pub const DEFAULT_RETRY_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

/// What a [`Worker`] does: retries, limits, timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Answers (and errors mapping to these HTTP statuses) that are retried.
    pub retry_statuses: Vec<u16>,
    /// Invocation attempts at most, first one included (at least 1).
    pub max_attempts: u32,
    /// Waits between attempts.
    pub backoff: Backoff,
    /// The longest `Retry-After` honoured (longer ones are cut to this).
    pub max_retry_after: Duration,
    /// Invocations of one function running at once.
    pub function_concurrency: usize,
    /// Deliveries being processed at once, all functions together. The worker runs one
    /// loop per runtime thread (at most this many), each with its share of them.
    pub max_in_flight: usize,
    /// Larger request bodies fail (413) without being invoked.
    pub max_payload_bytes: usize,
    /// Larger responses fail the invocation (not retried).
    pub max_response_bytes: usize,
    /// A time limit for one attempt, on top of the backend's own timeouts.
    pub invoke_timeout: Option<Duration>,
    /// How callbacks are retried.
    pub callback: CallbackPolicy,
    /// How much of a text response body is kept in the activation record's `result.body`.
    pub record_body_limit: usize,
    /// On graceful shutdown, how long in-flight invocations may take to finish before they
    /// are abandoned (and delivered again later).
    pub drain_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            retry_statuses: DEFAULT_RETRY_STATUSES.to_vec(),
            max_attempts: 5,
            backoff: Backoff::default(),
            max_retry_after: Duration::from_secs(300),
            function_concurrency: 16,
            max_in_flight: 256,
            max_payload_bytes: 1 << 20,
            max_response_bytes: 1 << 20,
            invoke_timeout: None,
            callback: CallbackPolicy::default(),
            record_body_limit: 4096,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of a worker (and of every worker sharing them).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Deliveries received.
    pub received: AtomicU64,
    /// Invocations finished with `succeeded`.
    pub succeeded: AtomicU64,
    /// Invocations finished with `failed`.
    pub failed: AtomicU64,
    /// Invocations finished with `dead-lettered`.
    pub dead_lettered: AtomicU64,
    /// Retries (attempts after the first).
    pub retries: AtomicU64,
    /// Deliveries skipped because their call had finished already.
    pub duplicates: AtomicU64,
    /// Callbacks delivered (2xx).
    pub callbacks_delivered: AtomicU64,
    /// Callbacks given up.
    pub callbacks_failed: AtomicU64,
    /// Deliveries given back unfinished (shutdown during a backoff, store failures).
    pub nacked: AtomicU64,
    finished_notify: Notify,
    /// The lowest count a [`WorkerStats::wait_finished`] caller waits for (`u64::MAX`, or
    /// 0 before the first finish, when none): finishing below it wakes no one, so a waiter
    /// is woken once when its count is reached rather than on every finish.
    wake_at: AtomicU64,
}

impl WorkerStats {
    /// Invocations finished (succeeded, failed or dead-lettered).
    pub fn finished(&self) -> u64 {
        // SeqCst pairs with `wake_at` (see `finish` and `wait_finished`).
        self.succeeded.load(Ordering::SeqCst)
            + self.failed.load(Ordering::SeqCst)
            + self.dead_lettered.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` invocations have finished.
    pub async fn wait_finished(&self, n: u64) {
        loop {
            let notified = self.finished_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Registered after `enable`: a finisher that misses this target (overwriting
            // it) notifies after that, so this waiter still wakes and registers again.
            self.wake_at.fetch_min(n, Ordering::SeqCst);
            if self.finished() >= n {
                return;
            }
            notified.await;
        }
    }

    fn finish(&self, state: AsyncState) {
        let c = match state {
            AsyncState::Succeeded => &self.succeeded,
            AsyncState::DeadLettered => &self.dead_lettered,
            _ => &self.failed,
        };
        c.fetch_add(1, Ordering::SeqCst);
        if self.finished() >= self.wake_at.load(Ordering::SeqCst) {
            self.wake_at.store(u64::MAX, Ordering::SeqCst);
            self.finished_notify.notify_waiters();
        }
    }
}

/// The queue worker; see the [module docs](self). Build it with [`Worker::new`], then
/// [`Worker::spawn`] it (or await [`Worker::run`]).
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("config", &self.inner.config).finish()
    }
}

struct Inner {
    invoker: Arc<dyn Invoke>,
    consumer: Arc<dyn QueueConsumer>,
    store: Arc<dyn ActivationStore>,
    dead_letters: Option<Arc<dyn DeadLetterSink>>,
    callbacks: Arc<dyn CallbackSender>,
    config: WorkerConfig,
    /// Per-function limits by namespace, then function name (looked up without allocating).
    limits: Mutex<HashMap<String, HashMap<String, Arc<Semaphore>>>>,
    stats: Arc<WorkerStats>,
    /// Set by [`WorkerHandle::abort`] before it aborts the lanes: a lane woken meanwhile
    /// (by deliveries an aborted lane handed back) and polled after it is set stops rather
    /// than take any.
    aborted: AtomicBool,
}

/// A worker loop's copies of the per-function limits it used last: most deliveries are of
/// a few functions, found here without the shared map's lock.
#[derive(Default)]
struct LimitCache {
    entries: Vec<(String, String, Arc<Semaphore>)>,
    /// The entry replaced next when full.
    next: usize,
}

impl LimitCache {
    const SIZE: usize = 8;

    fn get(&mut self, inner: &Inner, item: &QueuedInvocation) -> Arc<Semaphore> {
        let hit =
            self.entries.iter().find(|(ns, f, _)| *f == item.function && *ns == item.namespace);
        if let Some((_, _, limit)) = hit {
            return limit.clone();
        }
        let limit = inner.function_limit(item);
        let entry = (item.namespace.clone(), item.function.clone(), limit.clone());
        if self.entries.len() < Self::SIZE {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % Self::SIZE;
        }
        limit
    }
}

enum Settle {
    Ack,
    Nack,
}

/// One attempt's future.
type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Attempt> + Send + 'a>>;

/// Where [`Inner::fast`] goes on after the first attempt.
enum Outcome<'a> {
    /// The call is settled already.
    Duplicate,
    /// Not the common case: [`Inner::handle`] it.
    Fallback,
    /// The final record of the one attempt, written (to an immediate store).
    Written(AsyncState),
    /// The final record of the one attempt, being written.
    Write(AsyncState, Pin<Box<dyn Future<Output = faas_core::Result<()>> + Send + 'a>>),
    /// The rest of the attempts.
    Attempts(Pin<Box<dyn Future<Output = Settle> + Send + 'a>>),
}

/// Allocated per delivery: [`Inner::fast`]'s state is kept below glibc's small-allocation
/// limit (about 1 KiB), past which every allocation costs a slow path.
#[cfg(test)]
const FAST_STATE_BOUND: usize = 1000;

/// How [`Inner::run_attempts`] starts.
// Passed by value once per delivery that needs it; boxing the invocation would cost more.
#[allow(clippy::large_enum_variant)]
enum First<'a> {
    /// With this invocation (built while validating).
    Fresh(faas_core::Invocation),
    /// With the first attempt started by the caller and waiting.
    InFlight(AttemptFuture<'a>),
    /// With the first attempt made by the caller, and retryable.
    Done(Attempt),
}

/// One attempt's outcome.
struct Attempt {
    status: u16,
    content_type: Option<http::HeaderValue>,
    body: Bytes,
    error: Option<Error>,
    retryable: bool,
    retry_after: Option<Duration>,
    meta: Option<InvocationMeta>,
    start: SystemTime,
    end: SystemTime,
    elapsed: Duration,
}

impl Worker {
    /// A worker invoking through `invoker` what `consumer` delivers, recording each call in
    /// `store`. Dead letters go to the record only until [`Worker::with_dead_letters`];
    /// callbacks use [`HttpCallbackClient`] until [`Worker::with_callback_sender`].
    pub fn new(
        invoker: Arc<dyn Invoke>,
        consumer: Arc<dyn QueueConsumer>,
        store: Arc<dyn ActivationStore>,
        config: WorkerConfig,
    ) -> Self {
        Worker {
            inner: Arc::new(Inner {
                invoker,
                consumer,
                store,
                dead_letters: None,
                callbacks: Arc::new(HttpCallbackClient::default()),
                config,
                limits: Mutex::new(HashMap::new()),
                stats: Arc::new(WorkerStats::default()),
                aborted: AtomicBool::new(false),
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        // Only called while building, before the Arc is shared.
        Arc::get_mut(&mut self.inner).expect("a worker is configured before it runs")
    }

    /// Sends invocations that ran out of attempts to `sink` as well.
    pub fn with_dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.inner_mut().dead_letters = Some(sink);
        self
    }

    /// Posts callbacks with `sender`.
    pub fn with_callback_sender(mut self, sender: Arc<dyn CallbackSender>) -> Self {
        self.inner_mut().callbacks = sender;
        self
    }

    /// Counts into `stats` (to share counters between workers).
    pub fn with_stats(mut self, stats: Arc<WorkerStats>) -> Self {
        self.inner_mut().stats = stats;
        self
    }

    /// The worker's counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.inner.stats.clone()
    }

    /// Runs until the consumer is closed (then finishes in-flight invocations).
    pub async fn run(self) -> faas_core::Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `shutdown` completes or the consumer is closed, then stops taking
    /// deliveries, lets in-flight invocations finish (at most
    /// [`WorkerConfig::drain_timeout`]; ones waiting for a retry are given back at once)
    /// and closes the consumer.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> faas_core::Result<()> {
        let inner = self.inner;
        let (stop_tx, stop_rx) = watch::channel(false);
        // One lane per runtime thread, each with its share of `max_in_flight`; the
        // deliveries that have to wait go on in tasks of their own, spread over the threads.
        let max_in_flight = inner.config.max_in_flight.max(1);
        let threads =
            tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
        let lanes = threads.clamp(1, MAX_LANES).min(max_in_flight);
        // The lanes are tasks of their own, so that they run on every runtime thread. They
        // are held in a `JoinSet`: aborting the worker (a crash) drops this future, which
        // aborts them; `WorkerHandle::abort` waits until every lane is gone.
        let mut running = JoinSet::new();
        for _ in 0..lanes {
            running.spawn(inner.clone().lane(max_in_flight / lanes, stop_rx.clone()));
        }
        tokio::pin!(shutdown);
        tokio::select! {
            // A lane ends by itself when the consumer is closed.
            _ = running.join_next() => {}
            _ = &mut shutdown => {}
        }
        // The others stop taking deliveries and drain.
        let _ = stop_tx.send(true);
        while running.join_next().await.is_some() {}
        inner.consumer.close().await
    }

    /// Runs the worker on the tokio runtime; stop it with [`WorkerHandle::shutdown`]
    /// (graceful) or [`WorkerHandle::abort`] (abrupt, as a crash).
    pub fn spawn(self) -> WorkerHandle {
        let stats = self.stats();
        let alive = Arc::downgrade(&self.inner);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(self.run_until(async move {
            let _ = rx.await;
        }));
        WorkerHandle { stop: Some(tx), join, stats, alive }
    }
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<faas_core::Result<()>>,
    stats: Arc<WorkerStats>,
    /// Gone once every lane and delivery task (each holds the worker) is dropped.
    alive: std::sync::Weak<Inner>,
}

impl WorkerHandle {
    /// The worker's counters.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    /// Stops taking deliveries, finishes in-flight invocations (see
    /// [`Worker::run_until`]) and closes the consumer.
    pub async fn shutdown(mut self) -> faas_core::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match (&mut self.join).await {
            Ok(r) => r,
            Err(e) => Err(Error::internal(format!("queue worker task failed: {e}"))),
        }
    }

    /// Stops at once, as a crash would: in-flight invocations are abandoned unsettled (the
    /// queue delivers them again; a delivery may be counted as redelivered more than once)
    /// and the consumer is not closed.
    pub async fn abort(self) {
        // Lanes are aborted one after the other: one dropped first hands its deliveries
        // back, which wakes another not aborted yet; the flag makes that one stop rather
        // than take them when it is polled after this (one already in the middle of a
        // poll may still take them: they come back once more, counted twice).
        if let Some(inner) = self.alive.upgrade() {
            inner.aborted.store(true, Ordering::SeqCst);
        }
        self.join.abort();
        let _ = self.join.await;
        // Aborting the worker's task aborted its lanes; a lane running on another thread
        // is dropped when it next yields. Wait for that (bounded), so that on return no
        // handle on the consumer is left (another worker can take its share over).
        let deadline = Instant::now() + ABORT_WAIT;
        while self.alive.strong_count() > 0 && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        if self.alive.strong_count() > 0 {
            tracing::warn!("queue worker: lanes still running after the abort");
        }
    }

    /// Whether the worker has stopped (its consumer closed or failed).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

impl Inner {
    /// One worker loop: takes deliveries (at most `max_in_flight` in progress) until the
    /// consumer is closed or `stop` turns true, then lets the ones in progress finish (at
    /// most [`WorkerConfig::drain_timeout`]; ones waiting for a retry are given back).
    async fn lane(self: Arc<Self>, max_in_flight: usize, mut stop: watch::Receiver<bool>) {
        let max_in_flight = max_in_flight.max(1);
        // Deliveries whose processing had to wait (for the function, a slot, a retry, a
        // callback...) go on in tasks of their own; the others finished in this loop.
        let mut tasks = JoinSet::new();
        let mut since_yield = 0usize;
        let mut limits = LimitCache::default();
        'run: loop {
            while tasks.try_join_next().is_some() {}
            if tasks.len() >= max_in_flight {
                tokio::select! {
                    _ = tasks.join_next() => continue,
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            let room = max_in_flight - tasks.len();
            let aborted = std::future::poll_fn(|_| {
                if self.aborted.load(Ordering::SeqCst) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            let next = tokio::select! {
                // Looked at first on every poll (nothing wakes it: the abort that sets it
                // also cancels this task, or a handed-back delivery wakes it).
                biased;
                () = aborted => return,
                n = self.consumer.next_batch(room.min(DELIVERIES_PER_WAKEUP)) => n,
                _ = stop.wait_for(|s| *s) => break,
            };
            match next {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => {
                    self.stats.received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    since_yield += batch.len();
                    for delivery in batch {
                        let limit = limits.get(&self, delivery.item());
                        let mut handling =
                            Box::pin(self.clone().fast(delivery, limit, stop.clone()));
                        // Most invocations of in-process functions finish without waiting:
                        // those are done here, without a task. The first poll is not held to
                        // this loop's cooperative budget (the loop yields now and then).
                        let first = tokio::task::unconstrained(std::future::poll_fn(|cx| {
                            Poll::Ready(handling.as_mut().poll(cx))
                        }))
                        .await;
                        if first.is_pending() {
                            tasks.spawn(handling);
                        }
                    }
                    if since_yield >= DELIVERIES_PER_YIELD {
                        // Let other tasks on this thread run now and then.
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "queue consumer failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = stop.wait_for(|s| *s) => break 'run,
                    }
                }
            }
        }
        // Drain: invocations in progress finish; ones waiting for a retry are given back.
        let drained = tokio::time::timeout(self.config.drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = tasks.len(),
                "drain timeout: abandoning in-flight invocations (they will be delivered again)"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Processes one delivery and settles it.
    async fn handle(
        self: Arc<Self>,
        delivery: Delivery<QueuedInvocation>,
        stop: watch::Receiver<bool>,
    ) {
        let settle = self.process(delivery.item(), stop).await;
        self.settle(settle, delivery).await
    }

    fn function_limit(&self, item: &QueuedInvocation) -> Arc<Semaphore> {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = limits.get(&item.namespace).and_then(|m| m.get(&item.function)) {
            return s.clone();
        }
        if limits.values().map(HashMap::len).sum::<usize>() >= MAX_LIMITS {
            // Forget the limits nothing holds (no permit out, no one waiting, no cache): one
            // made again later starts with every permit free, as they have.
            for functions in limits.values_mut() {
                functions.retain(|_, s| Arc::strong_count(s) > 1);
            }
            limits.retain(|_, functions| !functions.is_empty());
        }
        limits
            .entry(item.namespace.clone())
            .or_default()
            .entry(item.function.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.function_concurrency.max(1))))
            .clone()
    }

    async fn put(&self, rec: &mut AsyncActivation) -> bool {
        rec.updated_at = epoch_millis(SystemTime::now());
        match self.store.put(rec.clone()).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(call_id = %rec.call_id.as_str(), error = %e, "activation store write failed");
                false
            }
        }
    }

    /// [`Inner::put`] of a record not needed afterwards (no clone).
    async fn put_owned(&self, mut rec: AsyncActivation) -> bool {
        rec.updated_at = epoch_millis(SystemTime::now());
        let call_id = rec.call_id.clone();
        match self.store.put(rec).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(call_id = %call_id.as_str(), error = %e, "activation store write failed");
                false
            }
        }
    }

    /// Checks `item` and builds its first attempt's invocation.
    fn validate(&self, item: &QueuedInvocation) -> Result<faas_core::Invocation, Error> {
        if item.body.len() > self.config.max_payload_bytes {
            return Err(Error::PayloadTooLarge { limit: self.config.max_payload_bytes as u64 });
        }
        if let Some(url) = &item.callback_url {
            parse_callback_url(url)?;
        }
        if item.function.is_empty() {
            return Err(Error::invalid("function", "must not be empty"));
        }
        item.to_invocation()
    }

    /// What a delivery's record says before it runs: `None` if it is settled already (a
    /// duplicate), else the record to go on with and the attempts made so far.
    fn begin(
        &self,
        item: &QueuedInvocation,
        existing: Option<AsyncActivation>,
    ) -> Option<(AsyncActivation, u32)> {
        if existing.as_ref().is_some_and(AsyncActivation::is_settled) {
            return None;
        }
        let prior = match &existing {
            Some(r) if !r.state.is_terminal() => r.attempts.max(item.attempt),
            _ => item.attempt,
        };
        let mut rec = match existing {
            // The `queued` record of this very item (the usual case): go on from it.
            Some(e)
                if e.state == AsyncState::Queued
                    && e.function == item.function
                    && e.namespace == item.namespace
                    && e.callback_url == item.callback_url =>
            {
                e
            }
            Some(e) => AsyncActivation { queued_at: e.queued_at, ..AsyncActivation::queued(item) },
            None => AsyncActivation::queued(item),
        };
        rec.attempts = prior;
        Some((rec, prior))
    }

    fn read_progress<'a>(
        &'a self,
        call_id: &'a InvocationId,
    ) -> impl Future<Output = Option<Progress>> + Send + 'a {
        logged_read(self.store.progress(call_id))
    }

    fn read_record<'a>(
        &'a self,
        call_id: &'a InvocationId,
    ) -> impl Future<Output = Option<AsyncActivation>> + Send + 'a {
        logged_read(self.store.get(call_id))
    }

    /// The common case in few bytes of future state (it is allocated per delivery): a
    /// valid invocation without callback, with attempts left, whose function has room. It
    /// does what [`Inner::process`] does for it; anything else (and anything that turns
    /// out to need retries) is handed to [`Inner::process`] or [`Inner::run_attempts`].
    // Not an `async fn`: see the comment on the block.
    #[allow(clippy::manual_async_fn)]
    fn fast(
        self: Arc<Self>,
        delivery: Delivery<QueuedInvocation>,
        limit: Arc<Semaphore>,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send {
        // An async block rather than an `async fn`: its captures are not copied into
        // locals, which keeps the state small.
        async move {
            if delivery.item().callback_url.is_some() {
                return Box::pin(self.handle(delivery, stop)).await;
            }
            let Ok(permit) = limit.try_acquire_owned() else {
                return Box::pin(self.handle(delivery, stop)).await;
            };
            // Released once the function is done with the call: the final record's write
            // (a broker's acknowledgement, for Kafka) does not hold the function's slot.
            let mut permit = Some(permit);
            // Only the record's state and attempts: no copy of it.
            let progress = match self.store.immediate() {
                Some(store) => store.progress_now(&delivery.item().call_id),
                None => self.read_progress(&delivery.item().call_id).await,
            };
            // The records and the invocation stay inside this block, so that the awaits
            // after it keep none of them (the state stays small).
            let settle = {
                let outcome = 'fast: {
                    let prior = match progress {
                        Some(p) if p.settled => break 'fast Outcome::Duplicate,
                        // Finished with its callback pending, or a record with a callback:
                        // not the common case.
                        Some(p) if p.state.is_terminal() || p.has_callback => {
                            break 'fast Outcome::Fallback
                        }
                        Some(p) => p.attempts.max(delivery.item().attempt),
                        None => delivery.item().attempt,
                    };
                    let max = self.config.max_attempts.max(1);
                    let inv = match self.validate(delivery.item()) {
                        Ok(inv) if prior < max => inv,
                        // Bad input or no attempt left: nothing was written, start over there.
                        _ => break 'fast Outcome::Fallback,
                    };
                    if prior > 0 {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut call: AttemptFuture<'_> = Box::pin(self.attempt(inv));
                    let first = match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx)))
                        .await
                    {
                        Poll::Ready(at) if !at.retryable => {
                            // The final record, written onto the `queued` one in place.
                            let (state, update) = self.final_update(prior + 1, at);
                            if let Some(store) = self.store.immediate() {
                                store.put_update_now(delivery.item(), update);
                                break 'fast Outcome::Written(state);
                            }
                            break 'fast Outcome::Write(
                                state,
                                self.store.put_update(delivery.item(), update),
                            );
                        }
                        Poll::Ready(at) => First::Done(at),
                        Poll::Pending => First::InFlight(call),
                    };
                    // What `begin` makes of the record (no callback on either side).
                    let rec = AsyncActivation {
                        state: AsyncState::Running,
                        attempts: prior + 1,
                        queued_at: progress.map_or(delivery.item().queued_at, |p| p.queued_at),
                        ..AsyncActivation::queued(delivery.item())
                    };
                    let item = delivery.item();
                    Outcome::Attempts(Box::pin(self.run_attempts(
                        item,
                        rec,
                        prior,
                        first,
                        stop.clone(),
                        permit.take(),
                    )))
                };
                match outcome {
                    duplicate @ Outcome::Duplicate => {
                        drop(duplicate);
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        Settle::Ack
                    }
                    fallback @ Outcome::Fallback => {
                        drop((fallback, permit));
                        return Box::pin(self.handle(delivery, stop)).await;
                    }
                    Outcome::Written(state) => {
                        self.stats.finish(state);
                        Settle::Ack
                    }
                    Outcome::Write(state, put) => {
                        drop(permit.take());
                        match put.await {
                            Ok(()) => {
                                self.stats.finish(state);
                                Settle::Ack
                            }
                            Err(e) => {
                                tracing::warn!(call_id = %delivery.item().call_id.as_str(), error = %e, "activation store write failed");
                                Settle::Nack
                            }
                        }
                    }
                    Outcome::Attempts(attempts) => attempts.await,
                }
            };
            drop(permit);
            self.settle(settle, delivery).await
        }
    }

    /// The final record of a last attempt (number `attempts`) that was not retryable, as an
    /// update of the call's record.
    fn final_update(&self, attempts: u32, mut at: Attempt) -> (AsyncState, RecordUpdate) {
        let success = at.is_success();
        let state = if success { AsyncState::Succeeded } else { AsyncState::Failed };
        let meta = at.meta.take();
        let update = RecordUpdate {
            state,
            attempts,
            status: Some(at.status),
            error: if success { None } else { Some(at.error_text()) },
            outcome: Some(self.final_attempt(attempts, &at, meta)),
            // Written right after the attempt ended: no clock read of its own.
            updated_at: epoch_millis(at.end),
        };
        (state, update)
    }

    /// Acknowledges or gives back a delivery.
    fn settle(
        &self,
        settle: Settle,
        delivery: Delivery<QueuedInvocation>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let fut = match settle {
            Settle::Ack => delivery.ack(),
            Settle::Nack => {
                self.stats.nacked.fetch_add(1, Ordering::Relaxed);
                delivery.nack()
            }
        };
        async move {
            if let Err(e) = fut.await {
                tracing::warn!(error = %e, "settling a queue delivery failed");
            }
        }
    }

    async fn process(&self, item: &QueuedInvocation, stop: watch::Receiver<bool>) -> Settle {
        // Held until the function is done with the call (through retries); the final
        // record is written after.
        let permit = self.function_limit(item).acquire_owned().await.ok();
        let existing = self.read_record(&item.call_id).await;
        let Some((rec, prior)) = self.begin(item, existing) else {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Settle::Ack;
        };
        // The first attempt uses the invocation built while validating; retries rebuild it.
        match self.validate(item) {
            Ok(inv) => self.run_attempts(item, rec, prior, First::Fresh(inv), stop, permit).await,
            Err(e) => {
                drop(permit);
                let at = Attempt::from_error(e, false, SystemTime::now(), Instant::now());
                self.finish(item, rec, AsyncState::Failed, at).await
            }
        }
    }

    /// Attempts until success, a final failure or the last attempt, after `prior`
    /// attempts made earlier, starting with `first`. `permit` (the function's slot) is
    /// held through the attempts and released before the final record is written.
    async fn run_attempts(
        &self,
        item: &QueuedInvocation,
        mut rec: AsyncActivation,
        prior: u32,
        first: First<'_>,
        mut stop: watch::Receiver<bool>,
        mut permit: Option<OwnedSemaphorePermit>,
    ) -> Settle {
        let max = self.config.max_attempts.max(1);
        let mut attempt = prior;
        let mut last: Option<Attempt> = None;
        let mut first = Some(first);
        loop {
            attempt += 1;
            let at = match first.take() {
                // Started by the caller, which set `rec` to running.
                Some(First::Done(at)) => at,
                // Started and waiting: make `running`, with the attempt number, visible
                // while it does. A failed write is logged; the final record decides
                // whether the delivery is settled.
                Some(First::InFlight(call)) => {
                    self.running_while(&mut rec, call, &mut permit, attempt >= max).await
                }
                fresh => {
                    if attempt > max {
                        let at = last.unwrap_or_else(|| {
                            Attempt::from_error(
                                Error::internal(format!(
                                    "gave up after {prior} attempts (the worker stopped during earlier ones)"
                                )),
                                true,
                                SystemTime::now(),
                                Instant::now(),
                            )
                        });
                        drop(permit.take());
                        return self.finish(item, rec, AsyncState::DeadLettered, at).await;
                    }
                    rec.state = AsyncState::Running;
                    rec.attempts = attempt;
                    if attempt > 1 {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    let inv = match fresh {
                        Some(First::Fresh(inv)) => Ok(inv),
                        _ => item.to_invocation(),
                    };
                    match inv {
                        Ok(inv) => {
                            let mut call = std::pin::pin!(self.attempt(inv));
                            match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx)))
                                .await
                            {
                                // Finished without waiting: no reader could have seen it
                                // running, so the final record is the next write.
                                Poll::Ready(at) => at,
                                Poll::Pending => {
                                    let last = attempt >= max;
                                    self.running_while(&mut rec, call, &mut permit, last).await
                                }
                            }
                        }
                        Err(e) => Attempt::from_error(e, false, SystemTime::now(), Instant::now()),
                    }
                }
            };
            if !at.retryable {
                let state =
                    if at.is_success() { AsyncState::Succeeded } else { AsyncState::Failed };
                drop(permit.take());
                return self.finish(item, rec, state, at).await;
            }
            if attempt >= max {
                drop(permit.take());
                return self.finish(item, rec, AsyncState::DeadLettered, at).await;
            }
            let mut delay = self.config.backoff.delay(attempt);
            if let Some(ra) = at.retry_after {
                delay = delay.max(ra.min(self.config.max_retry_after));
            }
            rec.status = Some(at.status);
            rec.error = Some(at.error_text());
            self.put(&mut rec).await;
            tracing::debug!(call_id = %item.call_id.as_str(), attempt, ?delay, status = at.status, "retrying");
            last = Some(at);
            if *stop.borrow() {
                return Settle::Nack;
            }
            let stopped = Box::pin(async {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => false,
                    _ = stop.wait_for(|s| *s) => true,
                }
            });
            if stopped.await {
                return Settle::Nack;
            }
        }
    }

    /// Writes `rec` (`running`) while `call`, an attempt in flight, goes on, and waits for
    /// both. The function's slot (`permit`) goes as soon as the attempt ends if it is
    /// `last` or will not be retried: the record's write (a broker's acknowledgement, for
    /// Kafka) does not hold the slot, so the function's next call need not wait for it.
    async fn running_while(
        &self,
        rec: &mut AsyncActivation,
        call: impl Future<Output = Attempt>,
        permit: &mut Option<OwnedSemaphorePermit>,
        last: bool,
    ) -> Attempt {
        let call = async {
            let at = call.await;
            if last || !at.retryable {
                drop(permit.take());
            }
            at
        };
        tokio::join!(self.put(rec), call).1
    }

    /// One attempt. The invocation moves into the invoker's future at once, so that the
    /// returned future stays small.
    fn attempt(&self, inv: faas_core::Invocation) -> impl Future<Output = Attempt> + Send + '_ {
        let start = SystemTime::now();
        let t0 = Instant::now();
        let fut = self.invoker.invoke(inv);
        async move {
            let res = match self.config.invoke_timeout {
                Some(t) => tokio::time::timeout(t, fut)
                    .await
                    .unwrap_or_else(|_| Err(Error::timeout("async invocation", t))),
                None => fut.await,
            };
            self.outcome(res, start, t0).await
        }
    }

    async fn outcome(
        &self,
        res: faas_core::Result<faas_core::Response>,
        start: SystemTime,
        t0: Instant,
    ) -> Attempt {
        match res {
            Err(e) => {
                let retryable = self.config.retry_statuses.contains(&e.http_status().as_u16());
                Attempt::from_error(e, retryable, start, t0)
            }
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                let meta = parts.extensions.remove::<InvocationMeta>();
                let limit = self.config.max_response_bytes;
                match body.collect_limited(limit).await {
                    Ok(body) => {
                        let status = parts.status.as_u16();
                        let elapsed = t0.elapsed();
                        let end = start + elapsed;
                        let retry_after = if parts.headers.contains_key(http::header::RETRY_AFTER) {
                            parse_retry_after(&parts.headers, end)
                        } else {
                            None
                        };
                        Attempt {
                            status,
                            content_type: parts.headers.remove(http::header::CONTENT_TYPE),
                            body,
                            error: None,
                            retryable: self.config.retry_statuses.contains(&status),
                            retry_after,
                            meta,
                            start,
                            end,
                            elapsed,
                        }
                    }
                    Err(Error::PayloadTooLarge { limit }) => Attempt::from_error(
                        Error::developer(
                            faas_core::DeveloperErrorKind::Protocol,
                            format!("the response is larger than the limit of {limit} bytes"),
                        ),
                        false,
                        start,
                        t0,
                    ),
                    Err(e) => {
                        let retryable =
                            self.config.retry_statuses.contains(&e.http_status().as_u16());
                        Attempt::from_error(e, retryable, start, t0)
                    }
                }
            }
        }
    }

    /// Fills in the outcome of the last attempt: status, error, activation record.
    fn final_record(&self, item: &QueuedInvocation, rec: &mut AsyncActivation, at: &Attempt) {
        rec.status = Some(at.status);
        rec.error = if at.is_success() { None } else { Some(at.error_text()) };
        let fa = self.final_attempt(rec.attempts, at, at.meta.clone());
        rec.activation =
            Some(Box::new(fa.activation(&item.call_id, &item.function, &item.namespace)));
    }

    async fn finish(
        &self,
        item: &QueuedInvocation,
        mut rec: AsyncActivation,
        state: AsyncState,
        at: Attempt,
    ) -> Settle {
        self.final_record(item, &mut rec, &at);
        if state == AsyncState::DeadLettered || item.callback_url.is_some() {
            // Boxed: keeps the common path's future (held per delivery) small.
            return Box::pin(self.finish_slow(item, rec, state, at)).await;
        }
        rec.state = state;
        // Nothing more is written to this record: hand it over without a copy.
        if !self.put_owned(rec).await {
            return Settle::Nack;
        }
        self.stats.finish(state);
        Settle::Ack
    }

    /// [`Inner::finish`] of a dead-lettered invocation or one with a callback.
    async fn finish_slow(
        &self,
        item: &QueuedInvocation,
        mut rec: AsyncActivation,
        state: AsyncState,
        at: Attempt,
    ) -> Settle {
        if state == AsyncState::DeadLettered {
            if let Some(sink) = &self.dead_letters {
                let letter = DeadLetter {
                    item: QueuedInvocation { attempt: rec.attempts, ..item.clone() },
                    error: at.error_text(),
                    status: Some(at.status),
                    dead_lettered_at: epoch_millis(SystemTime::now()),
                };
                if let Err(e) = sink.dead_letter(letter).await {
                    tracing::warn!(error = %e, "dead-letter sink failed; the item will be retried");
                    rec.error = Some(format!("{} (dead-lettering failed: {e})", at.error_text()));
                    self.put(&mut rec).await;
                    return Settle::Nack;
                }
            }
        }
        rec.state = state;
        if item.callback_url.is_none() {
            if !self.put_owned(rec).await {
                return Settle::Nack;
            }
            self.stats.finish(state);
            return Settle::Ack;
        }
        if !self.put(&mut rec).await {
            return Settle::Nack;
        }
        self.stats.finish(state);
        if let Some(url) = &item.callback_url {
            if let Ok(uri) = parse_callback_url(url) {
                let outcome = self.callback(item, uri, &at).await;
                rec.callback = Some(outcome);
                self.put(&mut rec).await;
            } else {
                rec.callback = Some(CallbackOutcome {
                    delivered: false,
                    attempts: 0,
                    status: None,
                    error: Some("the callback URL is malformed".into()),
                });
                self.put(&mut rec).await;
            }
        }
        Settle::Ack
    }

    /// What the activation record of a call finished by `at` (attempt number `attempts`)
    /// is made of. `meta` is the attempt's (moved out by the caller when it has no more use
    /// of `at`).
    fn final_attempt(
        &self,
        attempts: u32,
        at: &Attempt,
        meta: Option<InvocationMeta>,
    ) -> FinalAttempt {
        let body = (at.error.is_none()
            && at.body.len() <= self.config.record_body_limit
            && std::str::from_utf8(&at.body).is_ok())
        // A copy: the body may be a slice of a much larger buffer (a connection's), which
        // the record would keep alive.
        .then(|| Bytes::copy_from_slice(&at.body));
        FinalAttempt {
            status: at.status,
            error: at.error.as_ref().map(|e| (e.status_code(), e.to_string())),
            body,
            start: epoch_millis(at.start),
            end: epoch_millis(at.end),
            meta,
            attempts,
        }
    }

    async fn callback(
        &self,
        item: &QueuedInvocation,
        url: http::Uri,
        at: &Attempt,
    ) -> CallbackOutcome {
        let mut headers = http::HeaderMap::new();
        let name = if item.namespace == faas_core::spec::DEFAULT_NAMESPACE {
            item.function.clone()
        } else {
            format!("{}.{}", item.function, item.namespace)
        };
        let pairs = [
            ("x-call-id", item.call_id.as_str().to_string()),
            ("x-function-status", at.status.to_string()),
            ("x-function-name", name),
            ("x-duration-seconds", format!("{:.6}", at.elapsed.as_secs_f64())),
        ];
        for (k, v) in pairs {
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                headers.insert(http::HeaderName::from_static(k), v);
            }
        }
        // A caller's reused `X-Call-Id` (stored under a new id by the gateway) comes back
        // with the result, so the caller's tracing finds it.
        if let Some((_, v)) = item.headers.iter().find(|(k, _)| k == "x-caller-call-id") {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                headers.insert(http::HeaderName::from_static("x-caller-call-id"), v);
            }
        }
        if let Some(ct) = &at.content_type {
            headers.insert(http::header::CONTENT_TYPE, ct.clone());
        }
        let body = match &at.error {
            Some(e) if at.body.is_empty() => Bytes::from(e.to_string()),
            _ => at.body.clone(),
        };
        let policy = &self.config.callback;
        let mut outcome =
            CallbackOutcome { delivered: false, attempts: 0, status: None, error: None };
        loop {
            outcome.attempts += 1;
            let req =
                CallbackRequest { url: url.clone(), headers: headers.clone(), body: body.clone() };
            let retry = match self.callbacks.send(req).await {
                Ok(s) if (200..300).contains(&s) => {
                    outcome.status = Some(s);
                    outcome.delivered = true;
                    outcome.error = None;
                    self.stats.callbacks_delivered.fetch_add(1, Ordering::Relaxed);
                    return outcome;
                }
                Ok(s) => {
                    outcome.status = Some(s);
                    outcome.error = Some(format!("the callback URL answered {s}"));
                    self.config.retry_statuses.contains(&s)
                }
                Err(e) => {
                    let retry = !matches!(e, Error::InvalidSpec { .. });
                    outcome.error = Some(e.to_string());
                    retry
                }
            };
            if !retry || outcome.attempts >= policy.max_attempts.max(1) {
                self.stats.callbacks_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(call_id = %item.call_id.as_str(), error = ?outcome.error, "callback failed");
                return outcome;
            }
            tokio::time::sleep(policy.backoff.delay(outcome.attempts)).await;
        }
    }
}

impl Attempt {
    fn from_error(e: Error, retryable: bool, start: SystemTime, t0: Instant) -> Attempt {
        let retry_after = match &e {
            Error::Overloaded { retry_after, .. } => *retry_after,
            _ => None,
        };
        Attempt {
            status: e.http_status().as_u16(),
            content_type: None,
            body: Bytes::new(),
            error: Some(e),
            retryable,
            retry_after,
            meta: None,
            start,
            end: SystemTime::now(),
            elapsed: t0.elapsed(),
        }
    }

    fn is_success(&self) -> bool {
        self.error.is_none() && (200..300).contains(&self.status)
    }

    fn error_text(&self) -> String {
        match &self.error {
            Some(e) => e.to_string(),
            None => {
                let body = String::from_utf8_lossy(&self.body[..self.body.len().min(512)]);
                format!("status {}: {}", self.status, body)
            }
        }
    }
}

/// Parses `Retry-After`: delay seconds, or an HTTP date relative to `now` (any of the three
/// formats RFC 9110 has recipients accept: IMF-fixdate, RFC 850, asctime). A date whose
/// weekday does not match it, or which is not a real date, is ignored like any other
/// unparseable value.
pub fn parse_retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&h, SystemTime::now()), Some(Duration::from_secs(7)));
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 - 3);
        assert_eq!(parse_retry_after(&h, t), Some(Duration::from_secs(3)));
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h, SystemTime::now()), None);
    }

    #[test]
    fn retry_after_date_formats_and_edge_cases() {
        let at = |v: &'static str, now: SystemTime| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static(v));
            parse_retry_after(&h, now)
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 - 3);
        // RFC 850 and asctime, which RFC 9110 has recipients accept too.
        assert_eq!(at("Sunday, 06-Nov-94 08:49:37 GMT", t), Some(Duration::from_secs(3)));
        assert_eq!(at("Sun Nov  6 08:49:37 1994", t), Some(Duration::from_secs(3)));
        assert_eq!(at("  Sun, 06 Nov 1994 08:49:37 GMT  ", t), Some(Duration::from_secs(3)));
        // A date in the past is no wait at all.
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT", SystemTime::now()), Some(Duration::ZERO));
        assert_eq!(
            at("Thu, 29 Feb 2024 00:00:00 GMT", t),
            Some(Duration::from_secs(1_709_164_800 - 784_111_774))
        );
        for bad in [
            "Mon, 06 Nov 1994 08:49:37 GMT", // wrong weekday
            "Fri, 30 Feb 2024 00:00:00 GMT", // no such day
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "-1",
            "",
        ] {
            assert_eq!(at(bad, t), None, "{bad}");
        }
    }
}

#[cfg(test)]
/// A worker on an empty in-memory invoker, queue and store, for unit tests of its parts.
fn test_worker(q: &crate::memory::MemoryQueue) -> Worker {
    let inv = Arc::new(faas_core::MemoryInvoker::builder().build());
    let store = Arc::new(crate::store::MemoryActivationStore::default());
    Worker::new(inv, Arc::new(q.consumer()), store, WorkerConfig::default())
}

#[cfg(test)]
mod limits {
    use super::*;

    /// The per-function limits stay bounded however many function names are queued; one
    /// in use is kept.
    #[test]
    fn idle_limits_are_forgotten() {
        let q = crate::memory::MemoryQueue::new(10);
        let w = test_worker(&q);
        let named = |f: String| QueuedInvocation { function: f, ..crate::memory::example_item() };
        let held = w.inner.function_limit(&named("held".into()));
        for i in 0..3 * MAX_LIMITS {
            drop(w.inner.function_limit(&named(format!("f{i}"))));
        }
        let kept = w.inner.limits.lock().unwrap().values().map(HashMap::len).sum::<usize>();
        assert!(kept <= MAX_LIMITS, "{kept} limits kept");
        assert!(Arc::ptr_eq(&held, &w.inner.function_limit(&named("held".into()))));
    }
}

#[cfg(test)]
mod state_size {
    use super::*;

    /// The common path's future is allocated per delivery: it stays small.
    #[test]
    fn fast_state_is_small() {
        let q = crate::memory::MemoryQueue::new(10);
        let w = test_worker(&q);
        q.publisher().try_publish(crate::memory::example_item()).unwrap();
        let delivery = q.consumer().try_next().unwrap();
        let (_tx, stop) = watch::channel(false);
        let limit = w.inner.function_limit(delivery.item());
        let fast = w.inner.clone().fast(delivery, limit, stop);
        let size = std::mem::size_of_val(&fast);
        assert!(size <= FAST_STATE_BOUND, "{size} bytes");
    }
}

/// Awaits an activation-store read; a failure is logged and read as "no record" (the
/// caller then proceeds as for a first delivery, which at-least-once allows).
async fn logged_read<T>(get: impl Future<Output = faas_core::Result<Option<T>>>) -> Option<T> {
    match get.await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "activation store read failed");
            None
        }
    }
}

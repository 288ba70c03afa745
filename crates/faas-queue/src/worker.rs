//! The queue worker: takes queued invocations from a [`QueueConsumer`], invokes them through
//! any [`Invoker`], retries, dead-letters, posts callbacks and keeps an activation record per
//! call id.
//!
//! For each delivery the worker:
//!
//! 1. skips it (acknowledging) if its record says it is finished already (a duplicate
//!    delivery);
//! 2. checks the input: payload size, callback URL, method, path and headers; bad input ends
//!    in a `failed` record (and a callback, if the URL is usable), never in a stuck message;
//! 3. invokes it, at most [`WorkerConfig::function_concurrency`] at once per function,
//!    recording `running` and the attempt number first; an answer with one of
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
//!    message that keeps killing workers is dead-lettered after `max_attempts`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use faas_core::activation::{epoch_millis, Activation, ActivationResponse};
use faas_core::queue::{
    parse_callback_url, ActivationStore, AsyncActivation, AsyncState, CallbackOutcome, DeadLetter,
    DeadLetterSink, QueueConsumer, QueuedInvocation,
};
use faas_core::{Error, InvocationMeta, Invoker, StatusCode};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::callback::{CallbackRequest, CallbackSender, HttpCallbackClient};

/// Exponential backoff with jitter: the `n`th retry waits `initial * multiplier^(n-1)`,
/// capped at `max`; with jitter, a uniformly random time between half of that and all of
/// it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The wait before the first retry.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Growth per retry (at least 1).
    pub multiplier: f64,
    /// Randomise each wait (between 50% and 100% of it) so that retries spread out.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self.multiplier.max(1.0).powi(retry.saturating_sub(1).min(64) as i32);
        let secs = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let secs = if self.jitter { secs * (0.5 + rand::random::<f64>() * 0.5) } else { secs };
        Duration::try_from_secs_f64(secs).unwrap_or(self.max)
    }
}

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
    /// Deliveries being processed at once, all functions together.
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
    invoker: Arc<dyn Invoker>,
    consumer: Arc<dyn QueueConsumer>,
    store: Arc<dyn ActivationStore>,
    dead_letters: Option<Arc<dyn DeadLetterSink>>,
    callbacks: Arc<dyn CallbackSender>,
    config: WorkerConfig,
    /// Per-function limits by namespace, then function name (looked up without allocating).
    limits: Mutex<HashMap<String, HashMap<String, Arc<Semaphore>>>>,
    stats: Arc<WorkerStats>,
}

enum Settle {
    Ack,
    Nack,
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
        invoker: Arc<dyn Invoker>,
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
        let global = Arc::new(Semaphore::new(inner.config.max_in_flight.max(1)));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = global.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            let next = tokio::select! {
                n = inner.consumer.next() => n,
                _ = &mut shutdown => break,
            };
            match next {
                Ok(Some(delivery)) => {
                    inner.stats.received.fetch_add(1, Ordering::Relaxed);
                    let inner = inner.clone();
                    let stop = stop_rx.clone();
                    tasks.spawn(async move {
                        let (item, acker) = delivery.into_parts();
                        let settle = inner.process(item, stop).await;
                        let r = match settle {
                            Settle::Ack => acker.ack().await,
                            Settle::Nack => {
                                inner.stats.nacked.fetch_add(1, Ordering::Relaxed);
                                acker.nack().await
                            }
                        };
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "settling a queue delivery failed");
                        }
                        drop(permit);
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "queue consumer failed; retrying");
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = &mut shutdown => break,
                    }
                }
            }
        }
        // Drain: invocations in progress finish; ones waiting for a retry are given back.
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(inner.config.drain_timeout, async {
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
        inner.consumer.close().await
    }

    /// Runs the worker on the tokio runtime; stop it with [`WorkerHandle::shutdown`]
    /// (graceful) or [`WorkerHandle::abort`] (abrupt, as a crash).
    pub fn spawn(self) -> WorkerHandle {
        let stats = self.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(self.run_until(async move {
            let _ = rx.await;
        }));
        WorkerHandle { stop: Some(tx), join, stats }
    }
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<faas_core::Result<()>>,
    stats: Arc<WorkerStats>,
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
    /// queue delivers them again) and the consumer is not closed.
    pub async fn abort(self) {
        self.join.abort();
        let _ = self.join.await;
    }

    /// Whether the worker has stopped (its consumer closed or failed).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

impl Inner {
    fn function_limit(&self, item: &QueuedInvocation) -> Arc<Semaphore> {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = limits.get(&item.namespace).and_then(|m| m.get(&item.function)) {
            return s.clone();
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

    async fn process(&self, item: QueuedInvocation, mut stop: watch::Receiver<bool>) -> Settle {
        // Held until the invocation is finished (through retries).
        let _permit = self.function_limit(&item).acquire_owned().await;
        let existing = match self.store.get(&item.call_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "activation store read failed");
                None
            }
        };
        if existing.as_ref().is_some_and(AsyncActivation::is_settled) {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Settle::Ack;
        }
        let prior = match &existing {
            Some(r) if !r.state.is_terminal() => r.attempts.max(item.attempt),
            _ => item.attempt,
        };
        let mut rec = AsyncActivation::queued(&item);
        if let Some(e) = &existing {
            rec.queued_at = e.queued_at;
        }
        rec.attempts = prior;

        // The first attempt uses the invocation built while validating; retries rebuild it.
        let mut first = match self.validate(&item) {
            Ok(inv) => Some(inv),
            Err(e) => {
                let at = Attempt::from_error(e, false, SystemTime::now(), Instant::now());
                return self.finish(item, rec, AsyncState::Failed, at).await;
            }
        };
        let max = self.config.max_attempts.max(1);
        let mut attempt = prior;
        let mut last: Option<Attempt> = None;
        loop {
            attempt += 1;
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
                return self.finish(item, rec, AsyncState::DeadLettered, at).await;
            }
            rec.state = AsyncState::Running;
            rec.attempts = attempt;
            if attempt > 1 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            if !self.put(&mut rec).await && attempt == prior + 1 {
                // Without a record the call would be invisible: try again later.
                return Settle::Nack;
            }
            let inv = match first.take() {
                Some(inv) => Ok(inv),
                None => item.to_invocation(),
            };
            let at = match inv {
                Ok(inv) => self.attempt(inv).await,
                Err(e) => Attempt::from_error(e, false, SystemTime::now(), Instant::now()),
            };
            if !at.retryable {
                let state =
                    if at.is_success() { AsyncState::Succeeded } else { AsyncState::Failed };
                return self.finish(item, rec, state, at).await;
            }
            if attempt >= max {
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
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return Settle::Nack,
            }
        }
    }

    async fn attempt(&self, inv: faas_core::Invocation) -> Attempt {
        let start = SystemTime::now();
        let t0 = Instant::now();
        let fut = self.invoker.invoke(inv);
        let res = match self.config.invoke_timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .unwrap_or_else(|_| Err(Error::timeout("async invocation", t))),
            None => fut.await,
        };
        match res {
            Err(e) => {
                let retryable = self.config.retry_statuses.contains(&e.http_status().as_u16());
                Attempt::from_error(e, retryable, start, t0)
            }
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let meta = parts.extensions.get::<InvocationMeta>().cloned();
                let limit = self.config.max_response_bytes;
                match body.collect_limited(limit).await {
                    Ok(body) => {
                        let status = parts.status.as_u16();
                        Attempt {
                            status,
                            content_type: parts.headers.get(http::header::CONTENT_TYPE).cloned(),
                            body,
                            error: None,
                            retryable: self.config.retry_statuses.contains(&status),
                            retry_after: parse_retry_after(&parts.headers, SystemTime::now()),
                            meta,
                            start,
                            end: SystemTime::now(),
                            elapsed: t0.elapsed(),
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

    async fn finish(
        &self,
        item: QueuedInvocation,
        mut rec: AsyncActivation,
        state: AsyncState,
        at: Attempt,
    ) -> Settle {
        rec.status = Some(at.status);
        rec.error = if at.is_success() { None } else { Some(at.error_text()) };
        rec.activation = Some(self.activation(&item, &rec, &at));
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
            // Nothing more is written to this record: hand it over without a copy.
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
                let outcome = self.callback(&item, uri, &at).await;
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

    fn activation(
        &self,
        item: &QueuedInvocation,
        rec: &AsyncActivation,
        at: &Attempt,
    ) -> Activation {
        let mut result = serde_json::Map::new();
        result.insert("statusCode".into(), at.status.into());
        if at.body.len() <= self.config.record_body_limit {
            if let Ok(text) = std::str::from_utf8(&at.body) {
                result.insert("body".into(), text.into());
            }
        }
        let response = match &at.error {
            Some(e) => {
                let mut r = ActivationResponse::error(e);
                if let serde_json::Value::Object(m) = &mut r.result {
                    m.insert("statusCode".into(), at.status.into());
                }
                r
            }
            None if at.is_success() => ActivationResponse::success(result.into()),
            None => ActivationResponse {
                status: StatusCode::ApplicationError.as_str().into(),
                status_code: StatusCode::ApplicationError,
                success: false,
                result: result.into(),
            },
        };
        let mut a =
            Activation::new(item.call_id.clone(), &item.function_ref(), at.start, at.end, response);
        if let Some(meta) = &at.meta {
            a.annotate_meta(meta);
        }
        a.annotate("attempts", rec.attempts.into());
        a.annotate("kind", "async".into());
        a
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

/// Parses `Retry-After`: delay seconds, or an HTTP date (IMF-fixdate) relative to `now`.
pub fn parse_retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let rest = s.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + sec;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: false,
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(400));
        assert_eq!(b.delay(10), Duration::from_secs(1));
        let j = Backoff { jitter: true, ..b };
        for _ in 0..100 {
            let d = j.delay(2);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200), "{d:?}");
        }
    }

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
}

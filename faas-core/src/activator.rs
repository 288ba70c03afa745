//! Scale from zero, in one place: [`Activator`] holds an invocation of a function that has no
//! ready replica while it scales the function up, and lets it through once a replica is
//! ready. [`crate::layers::ActivatorLayer`] puts it in a layer stack (the gateway's, or a
//! user's); [`crate::Autoscaled`] calls it for the functions it manages.
//!
//! Activating a function:
//!
//! 1. ready now? Asked through [`Deploy::wait_ready`] with a zero timeout, which backends
//!    answer from their own state (no engine call);
//! 2. one caller per function at a time reads [`Deploy::status`] and, if the function has no
//!    replica, scales it to its minimum (`com.openfaas.scale.min`, at least 1);
//! 3. every caller waits in [`Deploy::wait_ready`] (woken by the backend's notification
//!    where it has one), bounded by the activation timeout: beyond it, 503 naming it.
//!
//! A function found ready is trusted for a short time (`ready_ttl`) without asking the
//! backend again; [`Activator::forget`] ends that early (after a deploy, scale, removal or a
//! 404 from the backend).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::invocation::FunctionRef;
use crate::invoker::Deploy;
use crate::spec::ScalingPolicy;
use crate::util::{format_duration, FastBuildHasher};

/// The most functions whose readiness an activator remembers (it starts over beyond).
const MAX_FUNCTIONS: usize = 10_000;

/// Scales functions from zero for the invocations that need them (see the module docs).
/// Clones share their state.
#[derive(Clone)]
pub struct Activator {
    shared: Arc<Shared>,
}

struct Shared {
    timeout: Duration,
    ready_ttl: Duration,
    epoch: Instant,
    functions: RwLock<HashMap<FunctionRef, Arc<Readiness>, FastBuildHasher>>,
}

/// What an activator knows of one function: until when it is trusted to be ready, and the
/// lock that lets one caller at a time scale it. A caller that routes many invocations of
/// the function keeps this handle (see [`crate::layers::FunctionHandles`]) so that the
/// activator need not look it up.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Nanoseconds after the activator's epoch; 0 when not known ready.
    ready_until: AtomicU64,
    scaling: tokio::sync::Mutex<()>,
}

impl Readiness {
    /// Forgets that the function was ready: the next invocation asks the backend again.
    pub fn forget(&self) {
        self.ready_until.store(0, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Activator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activator")
            .field("timeout", &self.shared.timeout)
            .field("ready_ttl", &self.shared.ready_ttl)
            .finish_non_exhaustive()
    }
}

impl Default for Activator {
    fn default() -> Self {
        Activator::new()
    }
}

/// What [`Activator::activate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation {
    /// A replica was ready (or became ready without this call scaling the function).
    Ready,
    /// This call scaled the function from zero to the given replicas, and one is ready.
    Scaled(u32),
}

impl Activator {
    /// An activator waiting up to 30 s for a function to scale from zero and trusting a
    /// ready function for 2 s.
    pub fn new() -> Self {
        Activator {
            shared: Arc::new(Shared {
                timeout: Duration::from_secs(30),
                ready_ttl: Duration::from_secs(2),
                epoch: Instant::now(),
                functions: RwLock::default(),
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Arc::try_unwrap(self.shared).unwrap_or_else(|s| Shared {
            timeout: s.timeout,
            ready_ttl: s.ready_ttl,
            epoch: s.epoch,
            functions: RwLock::default(),
        });
        f(&mut shared);
        Activator { shared: Arc::new(shared) }
    }

    /// How long an invocation may wait for its function to scale from zero (then 503).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.timeout = timeout)
    }

    /// How long a function found ready is trusted without asking the backend (zero: ask
    /// every time).
    pub fn ready_ttl(self, ttl: Duration) -> Self {
        self.with(|s| s.ready_ttl = ttl)
    }

    /// The activation timeout.
    pub fn activation_timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// The readiness handle of `function`.
    pub fn readiness(&self, function: &FunctionRef) -> Arc<Readiness> {
        let fns = &self.shared.functions;
        if let Some(r) = fns.read().ok().and_then(|m| m.get(function).cloned()) {
            return r;
        }
        let mut m = fns.write().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_FUNCTIONS && !m.contains_key(function) {
            // Forgotten first: callers may still hold these handles.
            for r in m.values() {
                r.ready_until.store(0, Ordering::Relaxed);
            }
            m.clear();
        }
        m.entry(function.clone()).or_default().clone()
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(self.shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether `readiness` is trusted to be ready now (no call to the backend).
    pub fn is_ready(&self, readiness: &Readiness) -> bool {
        self.now_nanos() < readiness.ready_until.load(Ordering::Relaxed)
    }

    /// Whether `function` is trusted to be ready now, without remembering it if unknown.
    pub fn is_known_ready(&self, function: &FunctionRef) -> bool {
        let fns = &self.shared.functions;
        fns.read().ok().and_then(|m| m.get(function).cloned()).is_some_and(|r| self.is_ready(&r))
    }

    /// Whether `function` has a ready replica now: known ready, or asked of `backend`
    /// without waiting ([`Deploy::wait_ready`] with a zero timeout, a cheap check on the
    /// backends that learn of readiness as it happens) and then remembered as ready. Never
    /// scales; [`Error::NotFound`](crate::Error) for a function the backend does not have.
    /// What accepting an async call asks before it needs the function's whole status.
    pub async fn ready_now(&self, backend: &dyn Deploy, function: &FunctionRef) -> Result<bool> {
        if self.is_known_ready(function) {
            return Ok(true);
        }
        if backend.wait_ready(function, Duration::ZERO).await? {
            self.mark_ready(&self.readiness(function));
            return Ok(true);
        }
        Ok(false)
    }

    fn mark_ready(&self, readiness: &Readiness) {
        let ttl = u64::try_from(self.shared.ready_ttl.as_nanos()).unwrap_or(u64::MAX);
        readiness.ready_until.store(self.now_nanos().saturating_add(ttl), Ordering::Relaxed);
    }

    /// Forgets that `function` was ready: the next invocation asks the backend again.
    pub fn forget(&self, function: &FunctionRef) {
        if let Some(r) = self.shared.functions.read().ok().and_then(|m| m.get(function).cloned()) {
            r.forget();
        }
    }

    /// Makes sure `function` has a ready replica on `backend`, scaling it from zero if need
    /// be; [`Error::Unavailable`](crate::Error) naming the timeout when none is ready in
    /// time, and the backend's error (404 for an unknown function) otherwise.
    pub async fn activate(
        &self,
        backend: &dyn Deploy,
        function: &FunctionRef,
    ) -> Result<Activation> {
        let readiness = self.readiness(function);
        self.activate_with(backend, function, &readiness).await
    }

    /// [`Activator::activate`] with the function's readiness handle at hand.
    pub async fn activate_with(
        &self,
        backend: &dyn Deploy,
        function: &FunctionRef,
        readiness: &Readiness,
    ) -> Result<Activation> {
        if self.is_ready(readiness) {
            return Ok(Activation::Ready);
        }
        if backend.wait_ready(function, Duration::ZERO).await? {
            self.mark_ready(readiness);
            return Ok(Activation::Ready);
        }
        let t0 = Instant::now();
        let scaled = {
            // One caller at a time decides to scale; the others find it done.
            let _one = readiness.scaling.lock().await;
            if self.is_ready(readiness) {
                return Ok(Activation::Ready);
            }
            let st = backend.status(function).await?;
            if st.available_replicas > 0 {
                self.mark_ready(readiness);
                return Ok(Activation::Ready);
            }
            if st.replicas == 0 {
                let min =
                    ScalingPolicy::default().apply_labels(&st.labels).map(|p| p.min).unwrap_or(1);
                let target = min.max(1);
                tracing::info!(function = %function, replicas = target, "scaling from zero");
                backend.scale(function, target).await?;
                Some(target)
            } else {
                None
            }
        };
        let limit = self.shared.timeout;
        if backend.wait_ready(function, limit).await? {
            let took_ms = t0.elapsed().as_millis() as u64;
            tracing::info!(function = %function, took_ms, "function ready");
            self.mark_ready(readiness);
            return Ok(scaled.map_or(Activation::Ready, Activation::Scaled));
        }
        let replicas = backend.status(function).await.map(|s| s.replicas).unwrap_or_default();
        Err(Error::unavailable(format!(
            "function {function} did not become ready within the scale-from-zero timeout of {} \
             (replicas {replicas}, available 0)",
            format_duration(limit),
        )))
    }
}

//! Invoking a function: routing to a replica with capacity (or scaling from zero), resuming
//! it if paused, and forwarding through the shared [`faas_core::instance::InstanceClient`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_core::instance::{CallTimeout, Target};
use faas_core::{Error, Invocation, InvocationMeta, Response, Result, StartKind};

use crate::inner::{Inner, DEFAULT_TIMEOUT};
use crate::state::{FunctionState, Replica};

/// Counts one invocation in flight on a replica until dropped (when the response body is
/// done with), then wakes waiters for capacity.
pub(crate) struct InFlight {
    replica: Arc<Replica>,
    function: Arc<FunctionState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.replica.touch();
        self.replica.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.function.changed.notify_waiters();
    }
}

/// Counts a response body streaming from a replica until dropped: the replica is not paused
/// or removed meanwhile (its routing slot is already free).
struct Streaming {
    replica: Arc<Replica>,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.replica.touch();
        self.replica.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inner {
    /// Waits for a replica with capacity, scaling from zero when there is none; returns it
    /// counted in flight, and whether this invocation had to wait for a start. A wait for a
    /// start ends at `deadline`, a wait behind busy replicas at `busy_deadline` if sooner.
    async fn acquire(
        self: &Arc<Self>,
        f: &Arc<FunctionState>,
        deadline: Instant,
        busy_deadline: Instant,
    ) -> Result<(Arc<Replica>, bool)> {
        let seq = f.start_error_seq();
        let mut waited = false;
        loop {
            let notified = f.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if f.removed.load(Ordering::SeqCst) {
                return Err(Error::function_not_found(f.fref.to_string()));
            }
            let info = f.spec();
            if let Some(r) = f.route(&*info.scheduler, info.spec.max_concurrency) {
                return Ok((r, waited));
            }
            let live = f.live().len();
            if live == 0 {
                // A function whose starts keep failing answers at once with the reason,
                // rather than waiting for a start the backoff has not scheduled.
                if let Some(e) = f.failure_error() {
                    return Err(e);
                }
                waited = true;
                let _ = f.desired.compare_exchange(
                    0,
                    info.min_replicas.max(1),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                if let Some(r) = self.take_prewarm(f, &info) {
                    f.push(Arc::clone(&r));
                    // A removal that began after the check above may have taken its
                    // snapshot of the replicas already, without this container.
                    if f.removed.load(Ordering::SeqCst) {
                        r.dead.store(true, Ordering::SeqCst);
                        let _ = self.remove_container(&r.id).await;
                    }
                    continue;
                }
                if f.starting.load(Ordering::SeqCst) == 0 {
                    self.spawn_reconcile(Arc::clone(f));
                }
            }
            if let Some(e) = f.start_error_since(seq) {
                return Err(f.start_failed(&e, None));
            }
            let until = if live > 0 { deadline.min(busy_deadline) } else { deadline };
            if tokio::time::timeout_at(until.into(), notified).await.is_err() {
                return Err(if live > 0 {
                    Error::Overloaded {
                        message: format!(
                            "every instance of {} is at its concurrency limit",
                            f.fref
                        ),
                        retry_after: Some(Duration::from_secs(1)),
                    }
                } else {
                    Error::unavailable(format!(
                        "no instance of {} became ready within {}",
                        f.fref,
                        faas_core::util::format_duration(self.settings.start_timeout)
                    ))
                });
            }
        }
    }

    /// Invokes a function: route (or scale from zero), resume if paused, forward.
    pub(crate) async fn invoke(self: &Arc<Self>, inv: Invocation) -> Result<Response> {
        let t0 = Instant::now();
        let f = self.function(&inv.function)?;
        f.invocations.fetch_add(1, Ordering::Relaxed);
        let deadline = t0 + self.settings.start_timeout + Duration::from_secs(5);
        // The caller's wait budget bounds a wait behind busy replicas (a 429, not the
        // caller's own timeout).
        let busy_deadline =
            faas_core::invocation::WaitBudget::of(&inv.request).map_or(deadline, |b| t0 + b);
        let (replica, waited) = self.acquire(&f, deadline, busy_deadline).await?;
        let guard = InFlight { replica: Arc::clone(&replica), function: Arc::clone(&f) };
        // A paused container's port accepts and then hangs: unpause before forwarding.
        let resumed = self.ensure_running(&replica).await?;
        let (start, init_time) = if waited && replica.origin != StartKind::Warm {
            (replica.origin, Some(replica.init_time))
        } else if resumed {
            (StartKind::Resumed, None)
        } else {
            (StartKind::Warm, None)
        };
        let wait_time = t0.elapsed();
        let timeout = f.spec().spec.timeout.unwrap_or(DEFAULT_TIMEOUT);
        // An OpenWhisk action's or Lambda function's watchdog answers its time limit itself
        // (and restarts the runtime): ours is the backstop then.
        let grace = if crate::inner::watchdog_times_out(&f.spec().spec) {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        };
        let base = format!("http://127.0.0.1:{}", replica.port);
        let target = Target {
            base: &base,
            function: &f.fref,
            instance: &replica.name,
            timeout: Some(CallTimeout { name: "exec", after: timeout, grace }),
        };
        // Counted from before the call: the body keeps the replica from being paused or
        // removed while it streams, after its routing slot is freed.
        replica.streams.fetch_add(1, Ordering::SeqCst);
        let streaming = Streaming { replica: Arc::clone(&replica) };
        let mut resp = match self.client.forward(inv, &target, streaming).await {
            Ok(resp) => resp,
            Err(e) => {
                drop(guard);
                let exited = e.is_transport() && self.check_replica(&f, &replica).await;
                return Err(e.into_error(exited));
            }
        };
        // The function has answered: its routing slot is free (as in the other backends).
        drop(guard);
        resp.extensions_mut().insert(InvocationMeta {
            instance: replica.name.clone(),
            start,
            wait_time,
            init_time,
        });
        Ok(resp)
    }
}

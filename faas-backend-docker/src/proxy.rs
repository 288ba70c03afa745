//! Invoking a function: the shared instance runtime ([`faas_core::instance::InstanceSet`])
//! routes to a replica with capacity (asking here for a start when the function has none),
//! then the replica is resumed if paused and the invocation forwarded through the shared
//! [`faas_core::instance::InstanceClient`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_core::instance::{AcquireLimits, CallTimeout, Target};
use faas_core::{Invocation, InvocationMeta, Response, Result, StartKind};

use crate::inner::{Inner, DEFAULT_TIMEOUT};
use crate::state::{FunctionState, Replica, SpecInfo};

/// Counts an invocation using a replica, from its routing until its response body is
/// dropped: the replica is not paused or removed meanwhile.
struct InUse {
    replica: Arc<Replica>,
}

impl InUse {
    fn new(replica: Arc<Replica>) -> Self {
        replica.users.fetch_add(1, Ordering::SeqCst);
        InUse { replica }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.replica.touch();
        if self.replica.users.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.replica.went_idle.notify_waiters();
        }
    }
}

impl Inner {
    /// The instance set's shortage hook: the function has no replica, so scale it from zero
    /// (to its minimum, at least one), from the prewarm pool at once when it has a container
    /// that fits, else by a reconcile.
    fn scale_from_zero(self: &Arc<Self>, f: &Arc<FunctionState>, info: &SpecInfo) {
        let _ = f.desired.compare_exchange(
            0,
            info.min_replicas.max(1),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        if let Some(r) = self.take_prewarm(f, info) {
            if !f.push(Arc::clone(&r)) {
                let inner = Arc::clone(self);
                tokio::spawn(async move {
                    let _ = inner.remove_container(&r.id).await;
                });
            }
            return;
        }
        if f.starting.load(Ordering::SeqCst) == 0 {
            self.spawn_reconcile(Arc::clone(f));
        }
    }

    /// Invokes a function: route (or scale from zero), resume if paused, forward.
    pub(crate) async fn invoke(self: &Arc<Self>, inv: Invocation) -> Result<Response> {
        let t0 = Instant::now();
        let f = self.function(&inv.function)?;
        f.invocations.fetch_add(1, Ordering::Relaxed);
        // A function whose starts keep failing answers at once with the reason, rather than
        // waiting for a start the backoff has not scheduled.
        if f.instances.is_empty() {
            if let Some(e) = f.failure_error() {
                return Err(e);
            }
        }
        let info = f.spec();
        let start_timeout = self.settings.start_timeout + Duration::from_secs(5);
        // The caller's wait budget bounds a wait behind busy replicas (a 429, not the
        // caller's own timeout).
        let budget = faas_core::invocation::WaitBudget::of(&inv.request);
        let limits = AcquireLimits {
            start_timeout,
            busy_timeout: budget.unwrap_or(start_timeout),
            ..AcquireLimits::default()
        };
        let lease = f
            .instances
            .acquire(&*info.scheduler, &limits, t0.into(), |_| self.scale_from_zero(&f, &info))
            .await?;
        let replica = Arc::clone(lease.handle());
        let in_use = InUse::new(Arc::clone(&replica));
        // A paused container's port accepts and then hangs: unpause before forwarding.
        let resumed = self.ensure_running(&replica).await?;
        let (start, init_time) = if lease.cold() && replica.origin != StartKind::Warm {
            (replica.origin, Some(replica.init_time))
        } else if resumed {
            (StartKind::Resumed, None)
        } else {
            (StartKind::Warm, None)
        };
        let wait_time = t0.elapsed();
        let timeout = info.spec.timeout.unwrap_or(DEFAULT_TIMEOUT);
        // An OpenWhisk action's or Lambda function's watchdog answers its time limit itself
        // (and restarts the runtime): ours is the backstop then.
        let grace = if crate::inner::watchdog_times_out(&info.spec) {
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
        let mut resp = match self.client.forward(inv, &target, in_use).await {
            Ok(resp) => resp,
            Err(e) => {
                drop(lease);
                let exited = e.is_transport() && self.check_replica(&f, &replica).await;
                return Err(e.into_error(exited));
            }
        };
        // The function has answered: its routing slot is free (as in the other backends).
        drop(lease);
        resp.extensions_mut().insert(InvocationMeta {
            instance: replica.name.clone(),
            start,
            wait_time,
            init_time,
        });
        Ok(resp)
    }
}

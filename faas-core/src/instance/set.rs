//! The instances of one function as every backend keeps them: routing through the
//! [`Scheduler`], in-flight counting, first-come-first-served waiting for a free or ready
//! instance (bounded in number and time), and the idle clock that scale-to-zero reads.
//!
//! A backend owns the instances themselves (processes, containers, pods: the `T` handle) and
//! starts, stops, health-checks and addresses them; [`InstanceSet`] decides which one serves
//! an invocation and holds the invocation while none can:
//!
//! - [`InstanceSet::insert`], [`InstanceSet::set_ready`], [`InstanceSet::remove`] and
//!   [`InstanceSet::reconcile`] tell it what the backend has; each change wakes the first
//!   waiter. Instances are kept in id order, so hashing strategies stay sticky.
//! - [`InstanceSet::acquire`] routes with the scheduler and returns an [`InstanceLease`]
//!   (the instance's in-flight count is held until the lease drops, cancellation included).
//!   While no instance can serve, the invocation queues behind earlier ones; the backend's
//!   `on_shortage` hook hears once that the set is empty, so it can scale from zero. Waiting
//!   for a start is bounded by [`AcquireLimits::start_timeout`] (then unavailable), waiting
//!   behind busy instances by [`AcquireLimits::busy_timeout`] (then overloaded, with
//!   `Retry-After`), and the queue by [`AcquireLimits::queue_limit`].
//! - [`InstanceSet::start_failed`]: a start the backend made failed; the invocations waiting
//!   for a start (the set has no ready instance) fail with its error rather than time out.
//! - [`InstanceSet::retire`]: takes an instance out of routing (a scale down, an update) and
//!   hands back an [`InstanceDrain`] that resolves once the leases routed to it have ended,
//!   so the backend stops it only then.
//! - [`InstanceSet::idle_deadline`] and [`InstanceSet::until_idle`]: when the function has
//!   had nothing in flight and nobody waiting for its idle time.
//!
//! Each waiter has its own wake-up, handed from the front of the line to the next, so a
//! release wakes one task, not every waiter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::invocation::FunctionRef;
use crate::scheduler::{InstanceView, Scheduler};
use crate::util::{self, lock};

/// Identifies an instance within its [`InstanceSet`] (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey(u64);

/// How long and how many invocations may wait in [`InstanceSet::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquireLimits {
    /// Invocations that may wait at once; the next one is refused as overloaded.
    pub queue_limit: usize,
    /// How long an invocation waits behind busy instances.
    pub busy_timeout: Duration,
    /// How long an invocation waits for an instance to start (or become ready).
    pub start_timeout: Duration,
}

impl Default for AcquireLimits {
    fn default() -> Self {
        AcquireLimits {
            queue_limit: 1024,
            busy_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// Why [`InstanceSet::acquire`] could not route at once, as its `on_shortage` hook hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// The set has no instance at all: start one (scale from zero).
    Empty,
}

struct Slot<T> {
    key: InstanceKey,
    handle: T,
}

struct SetState<T> {
    /// Parallel to `views`, the scheduler's input.
    slots: Vec<Slot<T>>,
    views: Vec<InstanceView>,
    /// Invocations waiting, first come first served: their tickets and wake-ups.
    waiting: VecDeque<(u64, Arc<Notify>)>,
    next_ticket: u64,
    next_key: u64,
    in_flight: u32,
    served: u64,
    last_activity: Instant,
    closed: bool,
    /// Starts that failed since the set was made, and the last one's error.
    start_failures: u64,
    start_error: Option<Error>,
    /// Instances out of routing with leases still on them: their keys, those leases, and
    /// the count their [`InstanceDrain`]s watch.
    retired: Vec<(InstanceKey, u32, watch::Sender<u32>)>,
}

impl<T> SetState<T> {
    fn position(&self, key: InstanceKey) -> Option<usize> {
        self.slots.iter().position(|s| s.key == key)
    }

    /// Wakes the first waiter, if any.
    fn wake_front(&self) {
        if let Some((_, n)) = self.waiting.front() {
            n.notify_one();
        }
    }

    /// Inserts in id order: the scheduler sees instances in a stable order, so hashing
    /// strategies stay sticky whatever order instances started in.
    fn insert_sorted(&mut self, slot: Slot<T>, view: InstanceView) {
        let at = self.views.partition_point(|v| v.id < view.id);
        self.slots.insert(at, slot);
        self.views.insert(at, view);
    }

    fn remove_at(&mut self, i: usize) -> T {
        self.views.remove(i);
        self.slots.remove(i).handle
    }
}

/// The instances of one function and the invocations waiting for one (see the module docs).
pub struct InstanceSet<T> {
    function: FunctionRef,
    state: Mutex<SetState<T>>,
}

impl<T> std::fmt::Debug for InstanceSet<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.state);
        f.debug_struct("InstanceSet")
            .field("function", &self.function)
            .field("instances", &st.views)
            .field("waiting", &st.waiting.len())
            .field("in_flight", &st.in_flight)
            .finish()
    }
}

impl<T: Clone> InstanceSet<T> {
    /// An empty set for `function`.
    pub fn new(function: FunctionRef) -> Self {
        InstanceSet {
            function,
            state: Mutex::new(SetState {
                slots: Vec::new(),
                views: Vec::new(),
                waiting: VecDeque::new(),
                next_ticket: 0,
                next_key: 0,
                in_flight: 0,
                served: 0,
                last_activity: Instant::now(),
                closed: false,
                start_failures: 0,
                start_error: None,
                retired: Vec::new(),
            }),
        }
    }

    /// The function these instances serve.
    pub fn function(&self) -> &FunctionRef {
        &self.function
    }

    /// Adds an instance as `view` describes it (its `in_flight` is taken as given, normally
    /// 0) and wakes the first waiter.
    pub fn insert(&self, view: InstanceView, handle: T) -> InstanceKey {
        let mut st = lock(&self.state);
        let key = InstanceKey(st.next_key);
        st.next_key += 1;
        st.insert_sorted(Slot { key, handle }, view);
        st.wake_front();
        key
    }

    /// Adds an instance whose handle needs its own key (built by `make`), as
    /// [`InstanceSet::insert`] does; the handle.
    pub fn insert_with(&self, view: InstanceView, make: impl FnOnce(InstanceKey) -> T) -> T {
        let mut st = lock(&self.state);
        let key = InstanceKey(st.next_key);
        st.next_key += 1;
        let handle = make(key);
        st.insert_sorted(Slot { key, handle: handle.clone() }, view);
        st.wake_front();
        handle
    }

    /// Marks an instance ready (or not); false when it is not in the set.
    pub fn set_ready(&self, key: InstanceKey, ready: bool) -> bool {
        let mut st = lock(&self.state);
        let Some(i) = st.position(key) else { return false };
        st.views[i].ready = ready;
        if ready {
            st.wake_front();
        }
        true
    }

    /// Removes an instance (leases on it stay valid and simply end); its handle, if it was
    /// in the set.
    pub fn remove(&self, key: InstanceKey) -> Option<T> {
        let mut st = lock(&self.state);
        let i = st.position(key)?;
        let h = st.remove_at(i);
        st.wake_front();
        Some(h)
    }

    /// Takes an instance out of routing, as [`InstanceSet::remove`] does; its handle, and an
    /// [`InstanceDrain`] that resolves once the leases already routed to it have dropped.
    pub fn retire(&self, key: InstanceKey) -> Option<(T, InstanceDrain)> {
        let mut st = lock(&self.state);
        let i = st.position(key)?;
        let in_flight = st.views[i].in_flight;
        let h = st.remove_at(i);
        let (tx, rx) = watch::channel(in_flight);
        if in_flight > 0 {
            st.retired.push((key, in_flight, tx));
        }
        st.wake_front();
        Some((h, InstanceDrain { rx }))
    }

    /// A start of an instance failed with `error`: the invocations waiting now while the set
    /// has no ready instance fail with it (those arriving later wait for the next start).
    pub fn start_failed(&self, error: Error) {
        let mut st = lock(&self.state);
        st.start_failures += 1;
        st.start_error = Some(error);
        for (_, n) in &st.waiting {
            n.notify_one();
        }
    }

    /// Removes every instance; their handles.
    pub fn clear(&self) -> Vec<T> {
        let mut st = lock(&self.state);
        st.views.clear();
        st.slots.drain(..).map(|s| s.handle).collect()
    }

    /// Makes the set hold exactly `instances`, matched by [`InstanceView::id`]: an instance
    /// already known keeps its key and in-flight count (its readiness and concurrency limit
    /// are updated), new ones are added, missing ones removed. For backends that learn their
    /// instances from an engine's list (Kubernetes endpoints).
    pub fn reconcile(&self, instances: impl IntoIterator<Item = (InstanceView, T)>) {
        let mut st = lock(&self.state);
        let mut next: Vec<(InstanceView, Slot<T>)> = Vec::new();
        for (view, handle) in instances {
            let known = st.views.iter().position(|v| v.id == view.id);
            let (key, in_flight) = match known {
                Some(i) => (st.slots[i].key, st.views[i].in_flight),
                None => {
                    let key = InstanceKey(st.next_key);
                    st.next_key += 1;
                    (key, view.in_flight)
                }
            };
            next.push((InstanceView { in_flight, ..view }, Slot { key, handle }));
        }
        next.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        (st.views, st.slots) = next.into_iter().unzip();
        st.wake_front();
    }

    /// The instance to stop first when scaling down: one not ready, else an idle one, else
    /// the newest.
    pub fn victim(&self) -> Option<(InstanceKey, T)> {
        let st = lock(&self.state);
        let i = st
            .views
            .iter()
            .rposition(|v| !v.ready)
            .or_else(|| st.views.iter().rposition(|v| v.in_flight == 0))
            .or_else(|| st.views.len().checked_sub(1))?;
        Some((st.slots[i].key, st.slots[i].handle.clone()))
    }

    /// The instances as the scheduler sees them.
    pub fn views(&self) -> Vec<InstanceView> {
        lock(&self.state).views.clone()
    }

    /// The instances' keys and handles.
    pub fn handles(&self) -> Vec<(InstanceKey, T)> {
        lock(&self.state).slots.iter().map(|s| (s.key, s.handle.clone())).collect()
    }

    /// How many instances the set has.
    pub fn len(&self) -> usize {
        lock(&self.state).slots.len()
    }

    /// Whether the set has no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many instances are ready.
    pub fn ready(&self) -> usize {
        lock(&self.state).views.iter().filter(|v| v.ready).count()
    }

    /// Invocations in flight on the set's instances now.
    pub fn in_flight(&self) -> u32 {
        lock(&self.state).in_flight
    }

    /// Invocations in flight on one instance, if it is in the set or retired with leases
    /// still on it ([`InstanceSet::retire`]).
    pub fn in_flight_of(&self, key: InstanceKey) -> Option<u32> {
        let st = lock(&self.state);
        match st.position(key) {
            Some(i) => Some(st.views[i].in_flight),
            None => st.retired.iter().find(|(k, ..)| *k == key).map(|(_, n, _)| *n),
        }
    }

    /// Restarts the idle clock (a scale or an update is activity too).
    pub fn touch(&self) {
        lock(&self.state).last_activity = Instant::now();
    }

    /// Invocations waiting for an instance now.
    pub fn waiting(&self) -> usize {
        lock(&self.state).waiting.len()
    }

    /// Invocations that have been given an instance since the set was made.
    pub fn served(&self) -> u64 {
        lock(&self.state).served
    }

    /// Marks the function removed: waiters and later [`InstanceSet::acquire`] calls fail
    /// with function-not-found.
    pub fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        for (_, n) in &st.waiting {
            n.notify_one();
        }
    }

    /// When the function will have been idle (nothing in flight, nobody waiting) for `idle`,
    /// or `None` while it is busy.
    pub fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        let st = lock(&self.state);
        (st.in_flight == 0 && st.waiting.is_empty()).then_some(st.last_activity + idle)
    }

    /// Resolves once the function has been idle for `idle` (checked again after each wait, so
    /// activity in between restarts the clock).
    pub async fn until_idle(&self, idle: Duration) {
        loop {
            let wake = match self.idle_deadline(idle) {
                Some(at) if at <= Instant::now() => return,
                Some(at) => at,
                None => Instant::now() + idle,
            };
            tokio::time::sleep_until(wake).await;
        }
    }

    /// Routes one invocation now, if no one is waiting and an instance has capacity.
    pub fn try_acquire(self: &Arc<Self>, scheduler: &dyn Scheduler) -> Option<InstanceLease<T>> {
        let mut st = lock(&self.state);
        if !st.waiting.is_empty() || st.closed {
            return None;
        }
        self.route(&mut st, scheduler, false)
    }

    fn route(
        self: &Arc<Self>,
        st: &mut SetState<T>,
        scheduler: &dyn Scheduler,
        cold: bool,
    ) -> Option<InstanceLease<T>> {
        let i = scheduler.route(&self.function, &st.views)?;
        if !st.views.get(i)?.has_capacity() {
            return None;
        }
        st.views[i].in_flight += 1;
        st.in_flight += 1;
        st.served += 1;
        st.last_activity = Instant::now();
        Some(InstanceLease {
            set: Arc::clone(self),
            key: st.slots[i].key,
            handle: st.slots[i].handle.clone(),
            instance: st.views[i].id.clone(),
            cold,
            crashed: false,
        })
    }

    /// Routes one invocation that arrived at `arrived`, waiting in line while no instance can
    /// serve it (see the module docs for the bounds). `on_shortage` hears
    /// [`Shortage::Empty`] once, without the set's lock held, when the set has no instance.
    pub async fn acquire(
        self: &Arc<Self>,
        scheduler: &dyn Scheduler,
        limits: &AcquireLimits,
        arrived: Instant,
        mut on_shortage: impl FnMut(Shortage),
    ) -> Result<InstanceLease<T>> {
        if let Some(l) = self.try_acquire(scheduler) {
            return Ok(l);
        }
        let mut ticket: Option<Ticket<'_, T>> = None;
        let mut told_empty = false;
        let mut cold = false;
        // The start failures counted when this invocation began to wait: only later ones end
        // its wait.
        let mut failures_before = None;
        loop {
            let (wake, starting, empty) = {
                let mut st = lock(&self.state);
                if st.closed {
                    return Err(Error::function_not_found(self.function.to_string()));
                }
                let before = *failures_before.get_or_insert(st.start_failures);
                let my_turn = match &ticket {
                    None => st.waiting.is_empty(),
                    Some(t) => st.waiting.front().is_some_and(|(id, _)| *id == t.id),
                };
                let starting = st.views.iter().any(|v| !v.ready) || st.views.is_empty();
                cold |= starting;
                if st.start_failures > before && !st.views.iter().any(|v| v.ready) {
                    if let Some(e) = &st.start_error {
                        return Err(e.clone());
                    }
                }
                if my_turn {
                    if let Some(lease) = self.route(&mut st, scheduler, cold) {
                        if let Some(mut t) = ticket.take() {
                            t.leave(&mut st);
                        }
                        return Ok(lease);
                    }
                }
                let wake = match &ticket {
                    Some(t) => t.wake.clone(),
                    None => {
                        if st.waiting.len() >= limits.queue_limit {
                            return Err(Error::Overloaded {
                                message: format!(
                                    "{} invocations of {} are waiting for an instance already",
                                    st.waiting.len(),
                                    self.function
                                ),
                                retry_after: Some(Duration::from_secs(1)),
                            });
                        }
                        let id = st.next_ticket;
                        st.next_ticket += 1;
                        let wake = Arc::new(Notify::new());
                        st.waiting.push_back((id, wake.clone()));
                        ticket = Some(Ticket { set: self, id, wake: wake.clone(), left: false });
                        wake
                    }
                };
                (wake, starting, st.views.is_empty())
            };
            if empty && !told_empty {
                told_empty = true;
                on_shortage(Shortage::Empty);
                // The hook may have added instances: look again before sleeping.
                continue;
            }
            let bound = if starting { limits.start_timeout } else { limits.busy_timeout };
            if tokio::time::timeout_at(arrived + bound, wake.notified()).await.is_err() {
                let after = util::format_duration(bound);
                return Err(if starting {
                    Error::unavailable(format!(
                        "no instance of {} became ready in {after}",
                        self.function
                    ))
                } else {
                    Error::Overloaded {
                        message: format!(
                            "every instance of {} stayed busy for {after}",
                            self.function
                        ),
                        retry_after: Some(Duration::from_secs(1)),
                    }
                });
            }
        }
    }
}

/// A waiter's place in line; leaving it (served, timed out or cancelled) hands a pending
/// wake-up to the next in line.
struct Ticket<'a, T> {
    set: &'a InstanceSet<T>,
    id: u64,
    wake: Arc<Notify>,
    left: bool,
}

impl<T> Ticket<'_, T> {
    fn leave(&mut self, st: &mut SetState<T>) {
        if self.left {
            return;
        }
        self.left = true;
        let was_front = st.waiting.front().is_some_and(|(id, _)| *id == self.id);
        st.waiting.retain(|(id, _)| *id != self.id);
        if was_front {
            st.wake_front();
        }
    }
}

impl<T> Drop for Ticket<'_, T> {
    fn drop(&mut self) {
        if !self.left {
            let mut st = lock(&self.set.state);
            self.leave(&mut st);
        }
    }
}

/// One invocation's hold on an instance: its in-flight count is released when the lease
/// drops (cancellation included), which wakes the first waiter.
pub struct InstanceLease<T: Clone> {
    set: Arc<InstanceSet<T>>,
    key: InstanceKey,
    handle: T,
    instance: String,
    cold: bool,
    crashed: bool,
}

impl<T: Clone> std::fmt::Debug for InstanceLease<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceLease")
            .field("function", &self.set.function)
            .field("instance", &self.instance)
            .field("cold", &self.cold)
            .finish()
    }
}

impl<T: Clone> InstanceLease<T> {
    /// The backend's handle on the instance.
    pub fn handle(&self) -> &T {
        &self.handle
    }

    /// The instance's key in its set.
    pub fn key(&self) -> InstanceKey {
        self.key
    }

    /// The instance's id (its [`InstanceView::id`]).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether the invocation had to wait for an instance to start.
    pub fn cold(&self) -> bool {
        self.cold
    }

    /// Marks the instance crashed: it leaves the set when the lease drops.
    pub fn crashed(&mut self) {
        self.crashed = true;
    }
}

impl<T: Clone> Drop for InstanceLease<T> {
    fn drop(&mut self) {
        let mut st = lock(&self.set.state);
        st.in_flight = st.in_flight.saturating_sub(1);
        st.last_activity = Instant::now();
        if let Some(i) = st.position(self.key) {
            if self.crashed {
                st.remove_at(i);
            } else {
                let v = &mut st.views[i];
                v.in_flight = v.in_flight.saturating_sub(1);
            }
        } else if let Some(i) = st.retired.iter().position(|(k, ..)| *k == self.key) {
            let (_, n, tx) = &mut st.retired[i];
            *n = n.saturating_sub(1);
            tx.send_replace(*n);
            if *n == 0 {
                st.retired.swap_remove(i);
            }
        }
        st.wake_front();
    }
}

/// Resolves once the leases on a retired instance have all dropped ([`InstanceSet::retire`]).
#[derive(Debug)]
pub struct InstanceDrain {
    rx: watch::Receiver<u32>,
}

impl InstanceDrain {
    /// Leases still on the instance.
    pub fn in_flight(&self) -> u32 {
        *self.rx.borrow()
    }

    /// Waits until no lease is left on the instance (or its set is gone).
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::LeastLoaded;

    fn view(id: &str, ready: bool, max: Option<u32>) -> InstanceView {
        InstanceView { id: id.into(), node: None, in_flight: 0, max_concurrency: max, ready }
    }

    fn set() -> Arc<InstanceSet<u32>> {
        Arc::new(InstanceSet::new(FunctionRef::new("f", "ns")))
    }

    fn limits(queue: usize) -> AcquireLimits {
        AcquireLimits {
            queue_limit: queue,
            busy_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(10),
        }
    }

    /// Spawns an acquire and returns once it waits in line.
    async fn waiting_acquire(
        s: &Arc<InstanceSet<u32>>,
    ) -> tokio::task::JoinHandle<Result<InstanceLease<u32>>> {
        let before = s.waiting();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move {
            s2.acquire(&LeastLoaded::new(), &limits(10), Instant::now(), |_| {}).await
        });
        while s.waiting() <= before {
            tokio::task::yield_now().await;
        }
        waiter
    }

    #[tokio::test(start_paused = true)]
    async fn routes_counts_and_releases() {
        let s = set();
        let sched = LeastLoaded::new();
        s.insert(view("a", true, Some(1)), 1);
        s.insert(view("b", true, Some(1)), 2);
        let l1 = s.try_acquire(&sched).expect("a free instance");
        let l2 = s.try_acquire(&sched).expect("the other free instance");
        assert_ne!(l1.handle(), l2.handle());
        assert_eq!(s.in_flight(), 2);
        assert!(s.try_acquire(&sched).is_none(), "both at their limit");
        drop(l1);
        assert_eq!(s.in_flight(), 1);
        assert!(s.try_acquire(&sched).is_some());
        assert_eq!(s.served(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_order_of_arrival() {
        let s = set();
        let sched = Arc::new(LeastLoaded::new());
        s.insert(view("a", true, Some(1)), 1);
        let held = s.try_acquire(&*sched).expect("free");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for n in 0..5 {
            let (s2, sched, order) = (s.clone(), sched.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let l =
                    s2.acquire(&*sched, &limits(10), Instant::now(), |_| {}).await.expect("served");
                lock(&order).push(n);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(l);
            }));
            // Each task joins the line before the next one starts.
            while s.waiting() < n + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(*lock(&order), vec![0, 1, 2, 3, 4]);
        assert_eq!(s.waiting(), 0);
        assert_eq!(s.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_and_busy_waits_time_out_as_overload() {
        let s = set();
        let sched = Arc::new(LeastLoaded::new());
        s.insert(view("a", true, Some(1)), 1);
        let _held = s.try_acquire(&*sched).expect("free");
        let s2 = s.clone();
        let sched2 = sched.clone();
        let waiter =
            tokio::spawn(
                async move { s2.acquire(&*sched2, &limits(1), Instant::now(), |_| {}).await },
            );
        while s.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let refused = s.acquire(&*sched, &limits(1), Instant::now(), |_| {}).await;
        assert!(matches!(refused, Err(Error::Overloaded { .. })), "{refused:?}");
        let timed_out = waiter.await.expect("task");
        match timed_out {
            Err(Error::Overloaded { message, .. }) => {
                assert!(message.contains("stayed busy for 5s"), "{message}")
            }
            other => panic!("expected overload, got {other:?}"),
        }
        assert_eq!(s.waiting(), 0, "a timed-out waiter leaves the line");
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_set_asks_for_a_start_once_and_serves_when_ready() {
        let s = set();
        let sched = Arc::new(LeastLoaded::new());
        let asked = Arc::new(Mutex::new(0));
        let (s2, sched2, asked2) = (s.clone(), sched.clone(), asked.clone());
        let waiter = tokio::spawn(async move {
            let starter = s2.clone();
            s2.acquire(&*sched2, &limits(10), Instant::now(), move |why| {
                assert_eq!(why, Shortage::Empty);
                *lock(&asked2) += 1;
                starter.insert(view("a", false, None), 7);
            })
            .await
        });
        while s.is_empty() {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (key, _) = s.handles()[0];
        assert!(s.set_ready(key, true));
        let lease = waiter.await.expect("task").expect("served once ready");
        assert!(lease.cold());
        assert_eq!(*lease.handle(), 7);
        assert_eq!(*lock(&asked), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_that_never_becomes_ready_is_unavailable() {
        let s = set();
        s.insert(view("a", false, None), 1);
        let r = s.acquire(&LeastLoaded::new(), &limits(10), Instant::now(), |_| {}).await;
        match r {
            Err(Error::Unavailable { reason, .. }) => {
                assert!(reason.contains("became ready in 10s"), "{reason}")
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closing_fails_waiters_with_not_found() {
        let s = set();
        let waiter = waiting_acquire(&s).await;
        s.close();
        let r = waiter.await.expect("task");
        assert!(matches!(r, Err(Error::NotFound { kind: "function", .. })), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_lease_removes_its_instance() {
        let s = set();
        s.insert(view("a", true, None), 1);
        let mut l = s.try_acquire(&LeastLoaded::new()).expect("free");
        l.crashed();
        drop(l);
        assert!(s.is_empty());
        assert_eq!(s.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_keeps_known_instances_counts() {
        let s = set();
        s.insert(view("a", true, None), 1);
        let _l = s.try_acquire(&LeastLoaded::new()).expect("free");
        s.reconcile([(view("b", true, None), 2), (view("a", true, None), 1)]);
        let vs = s.views();
        assert_eq!(vs.len(), 2);
        let a = vs.iter().find(|v| v.id == "a").expect("a kept");
        assert_eq!(a.in_flight, 1, "the lease on a still counts");
        s.reconcile([(view("b", true, None), 2)]);
        assert_eq!(s.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_clock_restarts_with_activity() {
        let s = set();
        s.insert(view("a", true, None), 1);
        let idle = Duration::from_secs(60);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let l = s.try_acquire(&LeastLoaded::new()).expect("free");
        assert_eq!(s.idle_deadline(idle), None, "busy while in flight");
        drop(l);
        s.until_idle(idle).await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn victims_are_unready_then_idle_instances() {
        let s = set();
        s.insert(view("busy", true, None), 1);
        let _l = s.try_acquire(&LeastLoaded::new()).expect("free");
        s.insert(view("idle", true, None), 2);
        s.insert(view("starting", false, None), 3);
        let (k, h) = s.victim().expect("one");
        assert_eq!(h, 3, "the one not ready goes first");
        s.remove(k);
        assert_eq!(s.victim().map(|(_, h)| h), Some(2), "then an idle one");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_instance_drains_its_leases() {
        let s = set();
        let sched = LeastLoaded::new();
        let key = s.insert(view("a", true, None), 1);
        s.insert(view("b", true, None), 2);
        let l1 = s.try_acquire(&sched).expect("free");
        let l2 = s.try_acquire(&sched).expect("free");
        let (on_a, on_b) = if *l1.handle() == 1 { (l1, l2) } else { (l2, l1) };
        drop(on_b);
        let (h, drain) = s.retire(key).expect("in the set");
        assert_eq!(h, 1);
        assert_eq!(drain.in_flight(), 1);
        assert_eq!(s.in_flight_of(key), Some(1), "counted while it drains");
        assert!(s.views().iter().all(|v| v.id != "a"), "out of routing");
        let waiting = tokio::spawn(drain.wait());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a lease is still on it");
        drop(on_a);
        waiting.await.expect("drained");
        assert_eq!(s.in_flight_of(key), None);
        let (_, idle) = s.retire(s.handles()[0].0).expect("b");
        assert_eq!(idle.in_flight(), 0);
        idle.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_start_ends_the_waits_for_a_start() {
        let s = set();
        let waiter = waiting_acquire(&s).await;
        s.start_failed(Error::unavailable("the image is gone"));
        let r = waiter.await.expect("task");
        assert!(
            matches!(&r, Err(Error::Unavailable { reason, .. }) if reason.contains("image is gone")),
            "{r:?}"
        );
        // A later invocation waits for the next start rather than failing with the old error.
        s.insert(view("a", false, None), 1);
        let later = waiting_acquire(&s).await;
        s.set_ready(s.handles()[0].0, true);
        assert!(later.await.expect("task").is_ok());
    }
}

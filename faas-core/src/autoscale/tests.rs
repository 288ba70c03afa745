//! Autoscaler tests: the pure core on a synthetic clock, and the [`Autoscaled`] wrapper on
//! paused tokio time over a recording backend (every `scale` call is logged with its time).

use super::*;
use crate::invoker::InvokeExt;
use crate::spec::labels;
use std::collections::BTreeMap;

// ---- the pure core ----

fn obs(concurrency: f64, ready: u32) -> Observation {
    Observation { concurrency, ready, ..Observation::default() }
}

#[test]
fn kpa_desired_is_ceil_of_demand_over_target_times_utilisation() {
    let mut kpa = Kpa::new(KpaConfig { max: 100, ..KpaConfig::default() });
    let t0 = Instant::now();
    // 350 in flight, 5 ready: 350 / 70 = 5 exactly, not panicking (350/70/5 = 1 < 2).
    assert_eq!(kpa.decide(t0, obs(350.0, 5)), 5);
    assert!(!kpa.in_panic());
    // Slightly more: 6.
    let mut kpa = Kpa::new(KpaConfig { max: 100, ..KpaConfig::default() });
    assert_eq!(kpa.decide(t0, obs(351.0, 5)), 6);
    // Rps metric uses the request rate.
    let mut kpa = Kpa::new(KpaConfig {
        metric: ScalingMetric::Rps,
        target: 10.0,
        max: 100,
        ..KpaConfig::default()
    });
    let o = Observation { concurrency: 1.0, rps: 70.0, ready: 10, cpu: None };
    assert_eq!(kpa.decide(t0, o), 10);
}

#[test]
fn kpa_scale_down_at_most_halves_per_tick_and_respects_min() {
    let cfg = KpaConfig { target: 10.0, min: 2, max: 40, ..KpaConfig::default() };
    let mut kpa = Kpa::new(cfg);
    let t0 = Instant::now();
    let tick = Duration::from_secs(2);
    // A long steady 224 in flight on 32 replicas: 32, no panic.
    let mut t = t0;
    for _ in 0..40 {
        assert_eq!(kpa.decide(t, obs(224.0, 32)), 32);
        t += tick;
    }
    assert!(!kpa.in_panic());
    // Load vanishes; follow the replicas the decisions ask for.
    let mut ready = 32;
    let mut curve = vec![];
    for _ in 0..40 {
        ready = kpa.decide(t, obs(0.0, ready));
        curve.push(ready);
        t += tick;
    }
    // The stable average decays over the 60 s window; each step at most halves.
    let mut prev = 32;
    for &r in &curve {
        assert!(r <= prev && r >= prev / 2, "{curve:?}");
        prev = r;
    }
    assert_eq!(*curve.last().unwrap(), 2, "ends at min: {curve:?}");
    assert!(curve.iter().filter(|&&r| r > 2).count() >= 10, "gradual: {curve:?}");
}

#[test]
fn kpa_panics_on_bursts_and_holds_for_a_stable_window() {
    let cfg = KpaConfig { target: 10.0, max: 50, ..KpaConfig::default() };
    let mut kpa = Kpa::new(cfg);
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    assert_eq!(kpa.decide(s(0), obs(7.0, 1)), 1);
    // Burst: 140 in flight on 1 replica. The panic window (6 s) averages 7 and 140: 73.5,
    // over 200% of capacity: panic, straight to ceil(73.5 / 7) = 11.
    assert_eq!(kpa.decide(s(2), obs(140.0, 1)), 11);
    assert!(kpa.in_panic());
    // Burst over; panic never scales down.
    for n in (4..62).step_by(2) {
        assert_eq!(kpa.decide(s(n), obs(7.0, 11)), 11, "t={n}");
        assert!(kpa.in_panic());
    }
    // 60 s after the last over-threshold tick panic ends and the scale-down is rate limited.
    let d = kpa.decide(s(62), obs(7.0, 11));
    assert!(!kpa.in_panic());
    assert_eq!(d, 5, "halved, not back to 1");
}

#[test]
fn kpa_scales_to_zero_only_after_grace() {
    let cfg = KpaConfig {
        target: 10.0,
        allow_zero: true,
        min: 3,
        scale_to_zero_grace: Duration::from_secs(30),
        ..KpaConfig::default()
    };
    let mut kpa = Kpa::new(cfg);
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    assert_eq!(kpa.decide(s(0), obs(1.0, 3)), 3, "min while in use");
    for n in (2..30).step_by(2) {
        assert_eq!(kpa.decide(s(n), obs(0.0, 3)), 3, "t={n}");
    }
    assert_eq!(kpa.decide(s(30), obs(0.0, 3)), 0);
    kpa.note_activity(s(40));
    assert_eq!(kpa.decide(s(42), obs(0.0, 0)), 3, "woken: back to min");
    // Without allow_zero it never goes below max(min, 1).
    let mut kpa = Kpa::new(KpaConfig { min: 0, ..KpaConfig::default() });
    assert_eq!(kpa.decide(s(1000), obs(0.0, 1)), 1);
}

#[test]
fn config_from_labels_names_bad_labels() {
    let spec = FunctionSpec::new("f", "img")
        .label(labels::SCALE_MIN, "2")
        .label(labels::SCALE_MAX, "8")
        .label(labels::SCALE_TARGET, "5")
        .label(labels::SCALE_TYPE, "rps")
        .label(labels::SCALE_ZERO, "true")
        .label(labels::SCALE_ZERO_DURATION, "45s")
        .label(TARGET_PROPORTION_LABEL, "0.9");
    let c = KpaConfig::default().with_spec(&spec).unwrap();
    assert_eq!((c.min, c.max, c.target, c.metric), (2, 8, 5.0, ScalingMetric::Rps));
    assert!(c.allow_zero);
    assert_eq!(c.scale_to_zero_grace, Duration::from_secs(45));
    assert_eq!(c.target_utilization, 0.9);
    c.validate().unwrap();
    let bad = FunctionSpec::new("f", "img").label(TARGET_PROPORTION_LABEL, "2");
    match KpaConfig::default().with_spec(&bad) {
        Err(Error::InvalidSpec { field, .. }) => {
            assert_eq!(field, "labels.com.openfaas.scale.target-proportion")
        }
        other => panic!("{other:?}"),
    }
    let bad = FunctionSpec::new("f", "img").label(labels::SCALE_MAX, "many");
    assert!(matches!(KpaConfig::default().with_spec(&bad), Err(Error::InvalidSpec { .. })));
}

// ---- the wrapper, on paused time ----

/// A backend that records every `scale` call with its (virtual) time. Replicas become ready
/// `start_delay` after a scale-up; an invocation with no ready replica fails, so the tests
/// prove the activator never forwards to zero replicas.
struct Recorder {
    start: tokio::time::Instant,
    start_delay: Duration,
    work: Duration,
    state: Arc<Mutex<RecState>>,
    /// Woken when replicas turn ready, for `wait_ready`.
    became_ready: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct RecState {
    labels: BTreeMap<String, String>,
    desired: u32,
    ready: u32,
    deployed: bool,
    log: Vec<(u64, u32)>,
    served: u64,
    failed_no_replica: u64,
    /// CPU use over all replicas in cores, reported in `status` when set.
    cpu: Option<f64>,
}

impl Recorder {
    fn new(start_delay: Duration, work: Duration) -> Self {
        Recorder {
            start: tokio::time::Instant::now(),
            start_delay,
            work,
            state: Arc::new(Mutex::new(RecState::default())),
            became_ready: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn log(&self) -> Vec<(u64, u32)> {
        lock(&self.state).log.clone()
    }
}

#[async_trait]
impl Invoke for Recorder {
    async fn invoke(&self, inv: Invocation) -> Result<Response> {
        if !lock(&self.state).deployed {
            return Err(Error::function_not_found(inv.function.to_string()));
        }
        if lock(&self.state).ready == 0 {
            lock(&self.state).failed_no_replica += 1;
            return Err(Error::unavailable(format!("{} has no replica", inv.function)));
        }
        tokio::time::sleep(self.work).await;
        lock(&self.state).served += 1;
        Ok(http::Response::new(crate::body::Body::from("ok")))
    }
}

#[async_trait]
impl Deploy for Recorder {
    async fn deploy(&self, spec: FunctionSpec) -> Result<()> {
        let p = spec.scaling_policy()?;
        let mut s = lock(&self.state);
        s.labels = spec.labels.clone();
        s.desired = p.min.max(1);
        s.ready = s.desired;
        s.deployed = true;
        Ok(())
    }
    async fn update(&self, _spec: FunctionSpec) -> Result<()> {
        Err(Error::NotSupported { operation: "update".into() })
    }
    async fn remove(&self, _f: &FunctionRef) -> Result<()> {
        lock(&self.state).deployed = false;
        Ok(())
    }
    async fn list(&self, _ns: &str) -> Result<Vec<FunctionStatus>> {
        Ok(vec![])
    }
    async fn status(&self, f: &FunctionRef) -> Result<FunctionStatus> {
        let s = lock(&self.state);
        if !s.deployed {
            return Err(Error::function_not_found(f.to_string()));
        }
        Ok(FunctionStatus {
            name: f.name.clone(),
            labels: s.labels.clone(),
            replicas: u64::from(s.desired),
            available_replicas: u64::from(s.ready),
            usage: s.cpu.map(|cpu| crate::spec::Usage { cpu, total_memory_bytes: 0.0 }),
            ..Default::default()
        })
    }
    async fn scale(&self, _f: &FunctionRef, replicas: u32) -> Result<()> {
        let t = self.start.elapsed().as_secs();
        let up = {
            let mut s = lock(&self.state);
            s.log.push((t, replicas));
            s.desired = replicas;
            if replicas <= s.ready || self.start_delay.is_zero() {
                s.ready = replicas;
                false
            } else {
                true
            }
        };
        if up {
            let state = self.state.clone();
            let delay = self.start_delay;
            let became_ready = self.became_ready.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                {
                    let mut s = lock(&state);
                    s.ready = s.desired;
                }
                became_ready.notify_waiters();
            });
        }
        Ok(())
    }
    async fn namespaces(&self) -> Result<Vec<String>> {
        Ok(vec![])
    }
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: "recorder".into(),
            orchestration: "test".into(),
            version: "0".into(),
        }
    }
    /// Woken as replicas turn ready, so activation ends exactly at the cold start.
    async fn wait_ready(&self, f: &FunctionRef, timeout: Duration) -> Result<bool> {
        crate::invoker::wait_notified(&self.became_ready, timeout, || {
            let s = lock(&self.state);
            if !s.deployed {
                return Err(Error::function_not_found(f.to_string()));
            }
            Ok(s.ready > 0)
        })
        .await
    }
}

#[async_trait]
impl Secrets for Recorder {
    async fn list_secrets(&self, _ns: &str) -> Result<Vec<SecretInfo>> {
        Ok(vec![])
    }
    async fn create_secret(&self, _s: Secret) -> Result<()> {
        Ok(())
    }
    async fn update_secret(&self, _s: Secret) -> Result<()> {
        Ok(())
    }
    async fn remove_secret(&self, _ns: &str, _n: &str) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Logs for Recorder {
    async fn logs(&self, _r: LogsRequest) -> Result<LogStream> {
        Err(Error::NotSupported { operation: "logs".into() })
    }
}

type Auto = Arc<Autoscaled<Recorder>>;

/// The labels of a KPA on in-flight requests with a target of 10 (7 per replica at 70%),
/// then `extra`.
fn in_flight_target_10(
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let mut l = vec![(labels::SCALE_TYPE, "capacity"), (labels::SCALE_TARGET, "10")];
    l.extend_from_slice(extra);
    l
}

async fn setup(labels: &[(&str, &str)], start_delay: Duration) -> Auto {
    let rec = Recorder::new(start_delay, Duration::from_secs(1));
    let auto = Arc::new(Autoscaled::new(rec));
    let mut spec = FunctionSpec::new("f", "img");
    for (k, v) in labels {
        spec = spec.label(*k, *v);
    }
    auto.deploy(spec).await.unwrap();
    auto
}

/// Keeps `n` invocations in flight (each takes 1 s of virtual time) until `until` seconds
/// after the recorder started.
fn load(auto: &Auto, n: u32, from: u64, until: u64) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..n)
        .map(|_| {
            let auto = auto.clone();
            tokio::spawn(async move {
                let start = auto.inner().start;
                tokio::time::sleep_until(start + Duration::from_secs(from)).await;
                let mut ok = 0;
                while start.elapsed() < Duration::from_secs(until) {
                    auto.call("f", "x").await.expect("never dropped");
                    ok += 1;
                }
                ok
            })
        })
        .collect()
}

async fn run_until(auto: &Auto, secs: u64) {
    tokio::time::sleep_until(auto.inner().start + Duration::from_secs(secs)).await;
}

fn assert_gradual(log: &[(u64, u32)], from: usize) {
    for w in log[from..].windows(2) {
        let ((_, a), (_, b)) = (w[0], w[1]);
        if b < a {
            assert!(b >= a / 2, "scale-down faster than 2x per tick: {log:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn load_step_scales_straight_to_demand_without_overshoot() {
    // target 10 x 0.7 = 7 per replica; 70 in flight = 10 replicas.
    let auto = setup(&in_flight_target_10(&[(labels::SCALE_MAX, "20")]), Duration::ZERO).await;
    let workers = load(&auto, 70, 10, 100);
    run_until(&auto, 99).await;
    // Load starts at t=10. The 6 s panic window averages it in over three ticks; it reaches
    // the 10 replicas demand needs at t=16 and stays there, with no overshoot.
    assert_eq!(auto.inner().log(), vec![(12, 4), (14, 7), (16, 10)]);
    assert_eq!(auto.replicas(&"f".into()), Some(10));
    for w in workers {
        assert!(w.await.unwrap() >= 80);
    }
    run_until(&auto, 300).await;
    let log = auto.inner().log();
    // Load ends at t=100; the 60 s stable window lets replicas follow it down one by one.
    assert_eq!(
        log,
        [(12, 4), (14, 7), (16, 10), (106, 9), (112, 8), (118, 7), (124, 6), (130, 5)]
            .into_iter()
            .chain([(136, 4), (142, 3), (148, 2), (154, 1)])
            .collect::<Vec<_>>()
    );
    assert_eq!(log.last().map(|x| x.1), Some(1), "back to min: {log:?}");
    assert!(log.iter().all(|&(_, r)| r <= 10), "no overshoot: {log:?}");
    assert_gradual(&log, 0);
    assert_eq!(lock(&auto.inner().state).failed_no_replica, 0);
}

#[tokio::test(start_paused = true)]
async fn burst_panics_to_max_then_steps_down_gradually() {
    let auto = setup(&in_flight_target_10(&[(labels::SCALE_MAX, "15")]), Duration::ZERO).await;
    let base = load(&auto, 7, 0, 400);
    let burst = load(&auto, 140, 20, 24);
    run_until(&auto, 400).await;
    for w in burst.into_iter().chain(base) {
        w.await.unwrap();
    }
    let log = auto.inner().log();
    // Panic at the first tick of the burst (t=22), at the max (15, capped) by the next.
    assert_eq!(log[..2], [(22, 8), (24, 15)], "{log:?}");
    // Held for a stable window (60 s) after the last over-threshold tick (t=22).
    assert!(log[2].0 >= 22 + 60, "no scale-down while panicking: {log:?}");
    // Then down, at most halving per tick, back to the 1 replica the base load needs.
    assert_gradual(&log, 0);
    assert!(log.iter().all(|&(_, r)| r <= 15));
    assert_eq!(log.last().unwrap().1, 1, "{log:?}");
    assert!(log.len() >= 4, "several steps, not max-to-min: {log:?}");
    assert_eq!(log, [(22, 8), (24, 15), (82, 7), (84, 3), (86, 1)]);
}

#[tokio::test(start_paused = true)]
async fn slow_ramp_down_follows_demand_monotonically() {
    let auto = setup(&in_flight_target_10(&[(labels::SCALE_MAX, "20")]), Duration::ZERO).await;
    // 140 in flight, then 10 fewer every 10 s: workers stop one group at a time.
    let mut workers = vec![];
    for k in 0..14u64 {
        workers.extend(load(&auto, 10, 0, 60 + 10 * k));
    }
    run_until(&auto, 400).await;
    for w in workers {
        w.await.unwrap();
    }
    let log = auto.inner().log();
    assert_eq!(log[0], (2, 20), "{log:?}");
    let peak = log.iter().position(|&(_, r)| r == 20).unwrap();
    let after: Vec<u32> = log[peak..].iter().map(|x| x.1).collect();
    assert!(after.windows(2).all(|w| w[1] <= w[0]), "monotone down: {log:?}");
    assert_gradual(&log, peak);
    assert_eq!(*after.last().unwrap(), 1, "{log:?}");
    assert!(after.len() >= 6, "follows the ramp in steps: {log:?}");
    // The whole curve: 20 while the stable window still holds the peak, then one replica
    // about every 7 s, as the load falls by 10 in flight (1.4 replicas) every 10 s.
    let expected = [
        (2, 20),
        (84, 19),
        (96, 18),
        (106, 17),
        (114, 16),
        (120, 15),
        (128, 14),
        (134, 13),
        (142, 12),
        (148, 11),
        (156, 10),
        (162, 9),
        (170, 8),
        (176, 7),
        (184, 6),
        (190, 5),
        (198, 4),
        (206, 3),
        (214, 2),
        (226, 1),
    ];
    assert_eq!(log, expected);
}

#[tokio::test(start_paused = true)]
async fn idle_to_zero_after_grace_and_activation_serves_waiting_requests() {
    let auto = setup(
        &in_flight_target_10(&[
            (labels::SCALE_MIN, "2"),
            (labels::SCALE_ZERO, "true"),
            (labels::SCALE_ZERO_DURATION, "30s"),
        ]),
        Duration::from_secs(3),
    )
    .await;
    for w in load(&auto, 14, 0, 20) {
        w.await.unwrap();
    }
    // Last traffic ended at t=20; the grace period is 30 s: zero at the first tick >= 50.
    run_until(&auto, 60).await;
    let log = auto.inner().log();
    assert_eq!(log, vec![(50, 0)], "{log:?}");
    assert_eq!(auto.replicas(&"f".into()), Some(0));
    // Ten requests arrive at zero: each waits for the cold start (3 s) and is served.
    let t0 = tokio::time::Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let auto = auto.clone();
            tokio::spawn(async move { auto.call("f", "x").await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), "ok");
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(6), "{took:?}");
    let log = auto.inner().log();
    assert_eq!(log, vec![(50, 0), (60, 2)], "one scale to max(1, min): {log:?}");
    assert_eq!(lock(&auto.inner().state).failed_no_replica, 0);
    // And it goes back to zero after another grace period.
    run_until(&auto, 120).await;
    assert_eq!(auto.inner().log().last(), Some(&(94, 0)));
}

#[tokio::test(start_paused = true)]
async fn activation_gives_up_with_unavailable_when_no_replica_comes() {
    let rec = Recorder::new(Duration::from_secs(3600), Duration::from_secs(1));
    let cfg = AutoscaleConfig::default().activation_timeout(Duration::from_secs(5));
    let auto = Autoscaled::with_config(rec, cfg);
    auto.deploy(FunctionSpec::new("f", "img").label(labels::SCALE_ZERO, "true")).await.unwrap();
    auto.scale(&"f".into(), 0).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let err = auto.call("f", "x").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("f.openfaas-fn"), "{err}");
    assert!(t0.elapsed() >= Duration::from_secs(5));
    // Unknown functions are the backend's NotFound.
    auto.remove(&"f".into()).await.unwrap();
    assert!(matches!(auto.call("f", "x").await, Err(Error::NotFound { .. })));
}

#[tokio::test(start_paused = true)]
async fn drives_the_memory_backend() {
    use crate::{handler_fn, Context, MemoryInvoker, Request};
    let mem = MemoryInvoker::builder().cold_start(Duration::from_millis(500)).build();
    mem.register(
        "slow:1",
        handler_fn(|_r: Request, _c: Context| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Error>("done")
        }),
    );
    let auto = Arc::new(Autoscaled::new(mem));
    auto.deploy(
        FunctionSpec::new("slow", "slow:1")
            .max_concurrency(10)
            .label(labels::SCALE_TYPE, "capacity")
            .label(labels::SCALE_TARGET, "10")
            .label(labels::SCALE_MAX, "8"),
    )
    .await
    .unwrap();
    let f = FunctionRef::default_ns("slow");
    let start = tokio::time::Instant::now();
    let workers: Vec<_> = (0..35)
        .map(|_| {
            let auto = auto.clone();
            tokio::spawn(async move {
                while start.elapsed() < Duration::from_secs(30) {
                    assert_eq!(auto.call("slow", "").await.unwrap(), "done");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    // 35 in flight / (10 x 0.7) = 5 replicas.
    assert_eq!(auto.inner().status(&f).await.unwrap().replicas, 5);
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(auto.inner().status(&f).await.unwrap().replicas, 1);
}

#[tokio::test(start_paused = true)]
async fn never_asks_past_the_replica_cap() {
    // Demand for 10 replicas (70 in flight, 7 per replica), no scale.max label, a cap of 6.
    let rec = Recorder::new(Duration::ZERO, Duration::from_secs(1));
    let auto = Arc::new(Autoscaled::with_config(rec, AutoscaleConfig::default().max_replicas(6)));
    let spec = FunctionSpec::new("f", "img")
        .label(labels::SCALE_TYPE, "capacity")
        .label(labels::SCALE_TARGET, "10");
    auto.deploy(spec).await.unwrap();
    let workers = load(&auto, 70, 10, 60);
    run_until(&auto, 59).await;
    let log = auto.inner().log();
    assert!(log.iter().all(|&(_, r)| r <= 6), "past the cap: {log:?}");
    assert_eq!(log.last().map(|x| x.1), Some(6), "up to the cap: {log:?}");
    for w in workers {
        w.await.unwrap();
    }
}

// ---- OpenFaaS CE's rate rule, the default for functions that name no scale type ----

/// A recorder whose calls take 20 ms: short calls, as in OpenFaaS's certifier.
async fn setup_short(labels: &[(&str, &str)], config: AutoscaleConfig) -> Auto {
    let rec = Recorder::new(Duration::ZERO, Duration::from_millis(20));
    let auto = Arc::new(Autoscaled::with_config(rec, config));
    let mut spec = FunctionSpec::new("f", "img");
    for (k, v) in labels {
        spec = spec.label(*k, *v);
    }
    auto.deploy(spec).await.unwrap();
    auto
}

/// Open-loop load: `rps` calls per second from `from` to `until` seconds after the recorder
/// started (offset by 50 ms so no call lands on a tick), each its own task. Answers how many
/// calls were answered "ok".
fn rate_load(auto: &Auto, rps: u32, from: u64, until: u64) -> tokio::task::JoinHandle<u64> {
    let auto = auto.clone();
    tokio::spawn(async move {
        let start = auto.inner().start + Duration::from_millis(50);
        let period = Duration::from_secs(1) / rps;
        let mut tick = tokio::time::interval_at(start + Duration::from_secs(from), period);
        let mut calls = Vec::new();
        for _ in 0..u64::from(rps) * (until - from) {
            tick.tick().await;
            let auto = auto.clone();
            calls.push(tokio::spawn(async move { auto.call("f", "x").await }));
        }
        let mut ok = 0;
        for c in calls {
            if c.await.expect("call task").expect("never dropped") == "ok" {
                ok += 1;
            }
        }
        ok
    })
}

#[test]
fn the_labels_choose_the_rule() {
    let cfg = AutoscaleConfig::default().max_replicas(6);
    let rule = |spec: FunctionSpec| cfg.rule_for(spec.scaling.as_ref(), &spec.labels);
    let only_bounds = FunctionSpec::new("f", "img")
        .label(labels::SCALE_MIN, "2")
        .label(labels::SCALE_MAX, "10")
        .label(labels::SCALE_FACTOR, "50")
        .label(labels::SCALE_ZERO, "true")
        .label(labels::SCALE_ZERO_DURATION, "90s");
    match rule(only_bounds).unwrap() {
        RuleConfig::Rate(c, p) => {
            // max held to the cap of 6; 50% of 6 is a step of 3.
            let rule = RateRule::new(c.clone(), p.clone());
            assert_eq!((p.min, p.max, p.factor, rule.step()), (2, 6, 50, 3));
            assert!(p.allow_zero);
            assert_eq!(p.idle_timeout(), Duration::from_secs(90));
            assert_eq!((c.window, c.threshold), (Duration::from_secs(10), 5.0));
        }
        other => panic!("min/max only is the rate rule: {other:?}"),
    }
    // A target with no type: the KPA on requests per second (OpenFaaS Pro's default).
    match rule(FunctionSpec::new("f", "img").label(labels::SCALE_TARGET, "5")).unwrap() {
        RuleConfig::Kpa(c) => assert_eq!((c.metric, c.target), (ScalingMetric::Rps, 5.0)),
        other => panic!("{other:?}"),
    }
    for (ty, metric) in [
        ("rps", ScalingMetric::Rps),
        ("capacity", ScalingMetric::Capacity),
        ("cpu", ScalingMetric::Cpu),
    ] {
        match rule(FunctionSpec::new("f", "img").label(labels::SCALE_TYPE, ty)).unwrap() {
            RuleConfig::Kpa(c) => assert_eq!((c.metric, c.target), (metric, 50.0)),
            other => panic!("{ty}: {other:?}"),
        }
    }
    match rule(FunctionSpec::new("f", "img").label(TARGET_PROPORTION_LABEL, "0.9")).unwrap() {
        RuleConfig::Kpa(c) => {
            assert_eq!((c.metric, c.target_utilization), (ScalingMetric::Rps, 0.9))
        }
        other => panic!("{other:?}"),
    }
    // Our explicit `scaling` policy keeps its own metric (capacity by default).
    let explicit = FunctionSpec::new("f", "img").scaling(ScalingPolicy::default());
    match rule(explicit).unwrap() {
        RuleConfig::Kpa(c) => assert_eq!(c.metric, ScalingMetric::Capacity),
        other => panic!("{other:?}"),
    }
    // Bad values name the label, whichever rule it is.
    for (k, v) in
        [(labels::SCALE_FACTOR, "101"), (labels::SCALE_FACTOR, "x"), (labels::SCALE_TYPE, "mem")]
    {
        match rule(FunctionSpec::new("f", "img").label(k, v)) {
            Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, format!("labels.{k}")),
            other => panic!("{k}={v}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn ten_rps_of_short_calls_reach_max_and_return_to_min_with_only_min_and_max_set() {
    let auto = setup_short(
        &[(labels::SCALE_MIN, "1"), (labels::SCALE_MAX, "2")],
        AutoscaleConfig::default(),
    )
    .await;
    let load = rate_load(&auto, 10, 10, 40);
    run_until(&auto, 100).await;
    // 20 ms calls at 10 per second: 0.2 in flight, which the KPA's capacity target never
    // scales for. The rate over the 10 s window passes 5 per second at the third tick of the
    // load (t=16: samples 0, 0, 10, 10, 10): one step of 20% of 2, rounded up, to max.
    // The load stops at t=40; at t=46 the window's rate is 4: resolved, back to min.
    assert_eq!(auto.inner().log(), vec![(16, 2), (46, 1)]);
    assert_eq!(load.await.unwrap(), 300, "every call answered");
    assert_eq!(lock(&auto.inner().state).failed_no_replica, 0);
    assert!(!auto.in_panic(&"f".into()));
}

#[tokio::test(start_paused = true)]
async fn the_rate_rule_steps_by_factor_percent_of_max_every_step_interval() {
    let auto = setup_short(&[(labels::SCALE_MAX, "10")], AutoscaleConfig::default()).await;
    let load = rate_load(&auto, 20, 0, 60);
    run_until(&auto, 30).await;
    assert!(auto.in_panic(&"f".into()), "firing under load");
    run_until(&auto, 100).await;
    // 20 per second: over 5 from the first tick (t=2), then +2 (20% of 10) every 10 s up to
    // max; the load stops at t=60 and the rate falls under 5 at t=68: straight to min, as
    // OpenFaaS CE does when its alert resolves.
    assert_eq!(auto.inner().log(), vec![(2, 3), (12, 5), (22, 7), (32, 9), (42, 10), (68, 1)]);
    assert_eq!(load.await.unwrap(), 1200);
}

#[tokio::test(start_paused = true)]
async fn the_rate_rule_leaves_a_function_under_the_threshold_or_with_factor_zero_at_min() {
    // 4 per second never passes the threshold of 5.
    let auto = setup_short(&[(labels::SCALE_MAX, "5")], AutoscaleConfig::default()).await;
    let load = rate_load(&auto, 4, 0, 60);
    run_until(&auto, 80).await;
    assert_eq!(auto.inner().log(), vec![]);
    assert_eq!(load.await.unwrap(), 240);
    // `com.openfaas.scale.factor=0` turns the rule off, whatever the rate.
    let auto = setup_short(
        &[(labels::SCALE_MAX, "5"), (labels::SCALE_FACTOR, "0")],
        AutoscaleConfig::default(),
    )
    .await;
    let load = rate_load(&auto, 50, 0, 30);
    run_until(&auto, 40).await;
    assert_eq!(auto.inner().log(), vec![]);
    assert_eq!(load.await.unwrap(), 1500);
}

#[tokio::test(start_paused = true)]
async fn the_rate_rule_honours_a_short_window_and_scales_to_zero_after_zero_duration() {
    // Windows shortened as a test would: a 1 s tick, a 2 s window, a step every second.
    let config = AutoscaleConfig::default().tick(Duration::from_secs(1)).rate_rule(
        Duration::from_secs(2),
        5.0,
        Duration::from_secs(1),
    );
    let auto = setup_short(
        &[
            (labels::SCALE_MAX, "2"),
            (labels::SCALE_ZERO, "true"),
            (labels::SCALE_ZERO_DURATION, "5s"),
        ],
        config,
    )
    .await;
    let load = rate_load(&auto, 10, 3, 10);
    run_until(&auto, 30).await;
    // The load runs from t=3.05 to t=10. Up at its second tick (t=5: the window's two
    // samples are 10 and 10; at t=4 the quiet second before it halves the rate to 5, not
    // above 5); back to min as soon as the window's rate is 5 again (t=11: 10 and 0); zero
    // 5 s after the last tick with traffic (t=10 + 5).
    assert_eq!(auto.inner().log(), vec![(5, 2), (11, 1), (15, 0)]);
    assert_eq!(load.await.unwrap(), 70);
    // The next call scales it from zero and is served.
    assert_eq!(auto.call("f", "x").await.unwrap(), "ok");
    assert_eq!(auto.inner().log().last(), Some(&(30, 1)));
    assert_eq!(lock(&auto.inner().state).failed_no_replica, 0);
}

#[tokio::test(start_paused = true)]
async fn cpu_type_scales_on_the_cpu_use_the_backend_reports() {
    // target 500 millicores x 0.7 = 350 per replica.
    let cpu_labels =
        [(labels::SCALE_TYPE, "cpu"), (labels::SCALE_TARGET, "500"), (labels::SCALE_MAX, "10")];
    let auto = setup(&cpu_labels, Duration::ZERO).await;
    // 1.4 cores over the replicas, with nothing in flight: 4 replicas, at the first tick
    // (1400 / 350 on 1 replica is a panic).
    lock(&auto.inner().state).cpu = Some(1.4);
    run_until(&auto, 10).await;
    assert_eq!(auto.inner().log(), vec![(2, 4)]);
    // The use falls to 0.3 cores at t=10: held at 4 for a stable window after the panic
    // (t=2 + 60), then halved, then the 1 replica 300 millicores need.
    lock(&auto.inner().state).cpu = Some(0.3);
    run_until(&auto, 200).await;
    assert_eq!(auto.inner().log(), vec![(2, 4), (62, 2), (66, 1)]);

    // A backend that reports no CPU use: in flight stands in (none here, so no scaling).
    let auto = setup(&cpu_labels, Duration::ZERO).await;
    run_until(&auto, 30).await;
    assert_eq!(auto.inner().log(), vec![]);

    // Scale to zero waits for no traffic, not for no CPU use: an idle replica's background
    // use does not keep it up.
    let zero = [(labels::SCALE_ZERO, "true"), (labels::SCALE_ZERO_DURATION, "10s")];
    let auto = setup(&[&cpu_labels[..], &zero[..]].concat(), Duration::ZERO).await;
    lock(&auto.inner().state).cpu = Some(0.02);
    run_until(&auto, 30).await;
    assert_eq!(auto.inner().log(), vec![(12, 0)]);
}

/// The operator's idle time ([`AutoscaleConfig::idle_timeout`], as faas-idler's
/// `inactivity_duration`) applies to a function that allows zero but names no
/// zero-duration; a function's own `com.openfaas.scale.zero-duration` wins over it.
#[tokio::test(start_paused = true)]
async fn the_operator_s_idle_time_applies_unless_the_function_names_its_own() {
    let config = || {
        AutoscaleConfig::default()
            .tick(Duration::from_secs(1))
            .rate_rule(Duration::from_secs(2), 5.0, Duration::from_secs(1))
            .idle_timeout(Duration::from_secs(5))
    };
    // As OpenFaaS's certifier deploys for Test_ScaleToZero: max and zero only.
    let auto =
        setup_short(&[(labels::SCALE_MAX, "2"), (labels::SCALE_ZERO, "true")], config()).await;
    let load = rate_load(&auto, 10, 3, 10);
    run_until(&auto, 30).await;
    // Zero 5 s after the last tick with traffic (t=10 + 5), not the 15 minutes of the default.
    assert_eq!(auto.inner().log(), vec![(5, 2), (11, 1), (15, 0)]);
    assert_eq!(load.await.unwrap(), 70);

    let own = setup_short(
        &[
            (labels::SCALE_MAX, "2"),
            (labels::SCALE_ZERO, "true"),
            (labels::SCALE_ZERO_DURATION, "8s"),
        ],
        config(),
    )
    .await;
    let load = rate_load(&own, 10, 3, 10);
    run_until(&own, 30).await;
    assert_eq!(own.inner().log(), vec![(5, 2), (11, 1), (18, 0)]);
    assert_eq!(load.await.unwrap(), 70);
}

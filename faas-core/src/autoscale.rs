//! Autoscaling for any backend: OpenFaaS CE's request-rate rule and Knative's KPA decision
//! model, chosen and tuned by OpenFaaS's scaling labels, wrapped around any [`Backend`].
//!
//! Two parts:
//!
//! - [`RateRule`] and [`Kpa`]: the pure decision cores. Each tick one takes an
//!   [`Observation`] (average concurrency and request rate over the tick, ready replicas,
//!   CPU use where the backend reports it) and answers the desired replica count. Cheap
//!   (amortised O(1) per function per tick) and deterministic, so they are unit tested on
//!   synthetic clocks and benchmarked alone.
//! - [`Autoscaled`]: an [`Backend`] wrapper. It sits in the `invoke` path, measures in-flight
//!   invocations and the request rate of every function itself, runs a tick loop (a tokio
//!   task, every 2 s by default) that calls the inner backend's [`Deploy::scale`], and
//!   activates: an invocation of a function at zero replicas goes through the
//!   [`crate::activator::Activator`] (the one scale-from-zero path, shared with the
//!   gateway's layer stack), which scales it to `max(1, min)` and waits (bounded by
//!   [`AutoscaleConfig::activation_timeout`]) until a replica is ready, then is served. It
//!   is never dropped; past the bound the caller gets [`Error::Unavailable`] naming the
//!   function.
//!
//! # Which rule decides
//!
//! - **OpenFaaS CE's rate rule** ([`RateRule`]), for a function whose labels name no
//!   `com.openfaas.scale.type`, `.target` or `.target-proportion` (and whose spec carries
//!   no explicit `scaling` policy): what OpenFaaS CE does with its one alert,
//!   `sum(rate(gateway_function_invocation_total[10s])) by (function_name) > 5`. While the
//!   function's request rate over the last [`RateRuleConfig::window`] (10 s) is above
//!   [`RateRuleConfig::threshold`] (5 requests per second, the whole function's), it adds
//!   `com.openfaas.scale.factor` percent of max replicas (rounded up; 20% by default) at once
//!   and again every [`RateRuleConfig::step_interval`] (10 s) while the rate stays high, up
//!   to max; when the rate falls back to the threshold or below (the alert resolves) it
//!   returns to min. So with only min=1 and max=2 set, about 10 requests per second of
//!   short calls reach 2 replicas within a few seconds, and 1 again about 10 s after the
//!   load stops. `com.openfaas.scale.factor=0` turns the rule off (the function stays at
//!   min), as in OpenFaaS.
//! - **Knative's KPA** ([`Kpa`]) on the metric of `com.openfaas.scale.type` (OpenFaaS Pro's
//!   modes), for a function that names a type, a target or a target proportion. With a
//!   target but no type the metric is `rps` (OpenFaaS Pro's default).
//!
//! Both scale an idle function allowed to (`com.openfaas.scale.zero=true`) to zero once it
//! has had no traffic for `com.openfaas.scale.zero-duration`.
//!
//! # The KPA model (Knative's, as its autoscaler documentation describes it)
//!
//! `desired = ceil(observed / (target x utilisation))`, where `observed` is the average
//! concurrency (or requests per second) over the *stable window* (60 s). Over the *panic
//! window* (10% of it, 6 s) the same is computed; when the panic-window demand reaches 200%
//! of the ready capacity the autoscaler *panics*: it scales to the panic-window figure at
//! once and never scales down until the demand has stayed below the threshold for a whole
//! stable window. Per tick, replicas grow at most 1000x and shrink at most 2x, so scaling
//! down is gradual, never a fall from max to min. After a grace period with no traffic, a
//! function allowed to scale to zero goes to zero.
//!
//! # Labels
//!
//! Users set it with OpenFaaS's labels ([`crate::spec::labels`]), read through
//! [`FunctionSpec::scaling_policy`]:
//!
//! | label | meaning | default |
//! |---|---|---|
//! | `com.openfaas.scale.min` | replicas while in use | 1 |
//! | `com.openfaas.scale.max` | maximum replicas | 20 |
//! | `com.openfaas.scale.factor` | the rate rule's step, percent of max (0 turns it off) | 20 |
//! | `com.openfaas.scale.zero` | allow scale to zero | false |
//! | `com.openfaas.scale.zero-duration` | idle time before zero (the grace period) | 15m |
//! | `com.openfaas.scale.type` | the KPA's metric: `rps`, `capacity` (in flight), `cpu` (millicores, from the backend's reported usage; in flight where it reports none) | none: the rate rule; with a target, `rps` |
//! | `com.openfaas.scale.target` | the KPA's target per replica (requests per second, in flight, or millicores) | 50 |
//! | `com.openfaas.scale.target-proportion` | the KPA's target utilisation, `0 < p <= 1` ([`TARGET_PROPORTION_LABEL`]) | 0.7 |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use faas_core::autoscale::{AutoscaleConfig, Autoscaled};
//! use faas_core::prelude::*;
//! use faas_core::{handler_fn, Context, Error, FunctionSpec, MemoryInvoker, Request};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let backend = MemoryInvoker::new();
//! backend.register("echo:1", handler_fn(|_req: Request, _ctx: Context| async { Ok::<_, Error>("hi") }));
//! let invoker = Autoscaled::with_config(backend, AutoscaleConfig::default().tick(Duration::from_secs(1)));
//! invoker
//!     .deploy(FunctionSpec::new("echo", "echo:1").label("com.openfaas.scale.max", "5"))
//!     .await?;
//! assert_eq!(invoker.call("echo", "").await?, "hi");
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::activator::{Activation, Activator};
use crate::error::{Error, Result};
use crate::function::Response;
use crate::invocation::{FunctionRef, Invocation};
use crate::invoker::{Backend, LogStream, LogsRequest, ProviderInfo, Secret, SecretInfo};
use crate::prelude::*;
use crate::spec::{labels as label, FunctionSpec, FunctionStatus, ScalingMetric, ScalingPolicy};
use crate::util::lock;

type Labels = std::collections::BTreeMap<String, String>;

/// Label for the target utilisation (OpenFaaS Pro's name): the fraction of `target` each
/// replica should run at, `0 < p <= 1`. Default 0.7 (Knative's 70%).
pub const TARGET_PROPORTION_LABEL: &str = "com.openfaas.scale.target-proportion";

/// The default tick (Knative's 2 s).
pub const DEFAULT_TICK: Duration = Duration::from_secs(2);

/// KPA parameters of one function.
#[derive(Debug, Clone, PartialEq)]
pub struct KpaConfig {
    /// What is measured: in-flight requests (`Capacity`), requests per second (`Rps`) or
    /// CPU use in millicores (`Cpu`; in-flight requests where the backend reports no CPU
    /// use).
    pub metric: ScalingMetric,
    /// Target value of the metric per replica (Knative default 100).
    pub target: f64,
    /// Fraction of `target` each replica should run at (Knative default 0.7).
    pub target_utilization: f64,
    /// The stable window (60 s).
    pub stable_window: Duration,
    /// The panic window as a percentage of the stable window (10).
    pub panic_window_percentage: f64,
    /// Panic when panic-window demand reaches this multiple of ready capacity (2.0 = 200%).
    pub panic_threshold: f64,
    /// Maximum growth factor per tick (1000).
    pub max_scale_up_rate: f64,
    /// Maximum shrink factor per tick (2: at most halve).
    pub max_scale_down_rate: f64,
    /// Replicas while in use (at least 1).
    pub min: u32,
    /// Maximum replicas.
    pub max: u32,
    /// Whether an idle function goes to zero.
    pub allow_zero: bool,
    /// Time without traffic before scaling to zero.
    pub scale_to_zero_grace: Duration,
}

impl Default for KpaConfig {
    fn default() -> Self {
        KpaConfig {
            metric: ScalingMetric::Capacity,
            target: 100.0,
            target_utilization: 0.7,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            min: 1,
            max: 20,
            allow_zero: false,
            scale_to_zero_grace: Duration::from_secs(30),
        }
    }
}

impl KpaConfig {
    /// These window and rate settings with a function's policy applied (min, max, zero,
    /// zero-duration, metric, target).
    pub fn with_policy(mut self, p: &ScalingPolicy) -> Self {
        self.metric = p.metric;
        self.target = f64::from(p.target.max(1));
        self.min = p.min;
        self.max = p.max.max(1);
        self.allow_zero = p.allow_zero;
        self.scale_to_zero_grace = p.idle_timeout();
        self
    }

    /// These settings with a spec's scaling policy and labels applied (including
    /// [`TARGET_PROPORTION_LABEL`]). With neither a `scaling` policy nor a
    /// `com.openfaas.scale.type` label the metric is `rps` (OpenFaaS Pro's default). Bad label
    /// values give [`Error::InvalidSpec`] naming the label.
    pub fn with_spec(self, spec: &FunctionSpec) -> Result<Self> {
        self.with_labels(spec.scaling.as_ref(), &spec.labels)
    }

    fn with_labels(self, scaling: Option<&ScalingPolicy>, labels: &Labels) -> Result<Self> {
        let base = scaling.cloned().unwrap_or_else(|| ScalingPolicy {
            metric: ScalingMetric::Rps,
            ..ScalingPolicy::default()
        });
        let p = base.apply_labels(labels)?;
        p.validate()?;
        let mut c = self.with_policy(&p);
        if let Some(v) = labels.get(TARGET_PROPORTION_LABEL) {
            let field = format!("labels.{TARGET_PROPORTION_LABEL}");
            let x: f64 = v
                .trim()
                .parse()
                .map_err(|_| Error::invalid(field.clone(), format!("{v:?} is not a number")))?;
            if !(x > 0.0 && x <= 1.0) {
                return Err(Error::invalid(field, "must be more than 0 and at most 1"));
            }
            c.target_utilization = x;
        }
        Ok(c)
    }

    /// The panic window.
    pub fn panic_window(&self) -> Duration {
        self.stable_window.mul_f64((self.panic_window_percentage / 100.0).clamp(0.0, 1.0))
    }

    /// Checks the values: positive target and windows, rates above 1, `min <= max`.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, r: &str| Err(Error::invalid(format!("autoscale.{f}"), r));
        if !(self.target > 0.0 && self.target.is_finite()) {
            return bad("target", "must be a positive number");
        }
        if !(self.target_utilization > 0.0 && self.target_utilization <= 1.0) {
            return bad("targetUtilization", "must be more than 0 and at most 1");
        }
        if self.stable_window.is_zero() {
            return bad("stableWindow", "must be more than 0");
        }
        if !(self.max_scale_up_rate >= 1.0 && self.max_scale_down_rate >= 1.0) {
            return bad("maxScaleRate", "scale rates must be at least 1");
        }
        if self.panic_threshold.is_nan() || self.panic_threshold <= 0.0 {
            return bad("panicThreshold", "must be more than 0");
        }
        if self.max == 0 || self.min > self.max {
            return bad("max", "max must be at least 1 and at least min");
        }
        Ok(())
    }
}

/// What was measured for one function over the last tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observation {
    /// Average number of invocations in flight (time-weighted), including those waiting for
    /// a replica.
    pub concurrency: f64,
    /// Requests per second that arrived.
    pub rps: f64,
    /// Replicas ready to serve now.
    pub ready: u32,
    /// CPU use over all replicas in millicores, where the backend reports it
    /// ([`FunctionStatus::usage`]; the Docker backend does).
    pub cpu: Option<f64>,
}

impl Observation {
    /// No traffic: nothing in flight and no request arrived (what scale to zero waits for,
    /// whatever the metric).
    fn is_quiet(&self) -> bool {
        self.concurrency <= 0.0 && self.rps <= 0.0
    }
}

/// The KPA decision core for one function: windows of past observations and the panic state.
///
/// ```
/// use std::time::{Duration, Instant};
/// use faas_core::autoscale::{Kpa, KpaConfig, Observation};
///
/// let mut kpa = Kpa::new(KpaConfig { target: 10.0, ..KpaConfig::default() });
/// let t0 = Instant::now();
/// // 35 in flight on 1 replica, target 10 x 70%: 5 replicas, at once (panic).
/// let d = kpa.decide(t0, Observation { concurrency: 35.0, ready: 1, ..Observation::default() });
/// assert_eq!(d, 5);
/// assert!(kpa.in_panic());
/// ```
#[derive(Debug, Clone)]
pub struct Kpa {
    config: KpaConfig,
    samples: VecDeque<(Instant, f64)>,
    stable_sum: f64,
    panic_since: Option<Instant>,
    max_panic: u32,
    last_active: Option<Instant>,
    desired: Option<u32>,
}

impl Kpa {
    /// A decision core with `config` and no history.
    pub fn new(config: KpaConfig) -> Self {
        Kpa {
            config,
            samples: VecDeque::new(),
            stable_sum: 0.0,
            panic_since: None,
            max_panic: 0,
            last_active: None,
            desired: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &KpaConfig {
        &self.config
    }

    /// Replaces the configuration (a function was updated), keeping the history.
    pub fn set_config(&mut self, config: KpaConfig) {
        self.config = config;
    }

    /// Whether it is panicking (scaling for a burst; no scale down).
    pub fn in_panic(&self) -> bool {
        self.panic_since.is_some()
    }

    /// The last decision.
    pub fn desired(&self) -> Option<u32> {
        self.desired
    }

    /// Records traffic at `now` outside an observation (the activator woke the function), so
    /// the grace period before scale to zero starts again.
    pub fn note_activity(&mut self, now: Instant) {
        self.last_active = Some(self.last_active.map_or(now, |t| t.max(now)));
    }

    /// One tick: adds `obs` to the windows and answers the desired replica count.
    pub fn decide(&mut self, now: Instant, obs: Observation) -> u32 {
        let c = self.config.clone();
        let value = match c.metric {
            ScalingMetric::Rps => obs.rps,
            ScalingMetric::Capacity => obs.concurrency,
            // Where the backend reports no CPU use, in flight stands in for it.
            ScalingMetric::Cpu => obs.cpu.unwrap_or(obs.concurrency),
        };
        let value = if value.is_finite() { value.max(0.0) } else { 0.0 };
        if !obs.is_quiet() || self.last_active.is_none() {
            // The first observation starts the grace period.
            self.note_activity(now);
        }
        self.samples.push_back((now, value));
        self.stable_sum += value;
        while let Some(&(t, v)) = self.samples.front() {
            if now.saturating_duration_since(t) >= c.stable_window {
                self.samples.pop_front();
                self.stable_sum -= v;
            } else {
                break;
            }
        }
        if self.samples.len() == 1 {
            self.stable_sum = value; // no drift from float cancellation
        }
        let stable = (self.stable_sum / self.samples.len() as f64).max(0.0);
        let panic_window = c.panic_window();
        let (mut psum, mut pn) = (0.0, 0u32);
        for &(t, v) in self.samples.iter().rev() {
            if now.saturating_duration_since(t) >= panic_window && pn > 0 {
                break;
            }
            psum += v;
            pn += 1;
        }
        let panic_avg = psum / f64::from(pn.max(1));

        let per_replica = (c.target * c.target_utilization).max(f64::MIN_POSITIVE);
        let ready = f64::from(obs.ready.max(1));
        let max_up = (c.max_scale_up_rate * ready).ceil();
        let max_down = (ready / c.max_scale_down_rate).floor();
        let clamp = |d: f64| d.max(max_down).min(max_up);
        let want_stable = clamp((stable / per_replica).ceil());
        let want_panic = clamp((panic_avg / per_replica).ceil());

        let over = panic_avg / per_replica / ready >= c.panic_threshold;
        if over {
            self.panic_since = Some(now);
        } else if self
            .panic_since
            .is_some_and(|t| now.saturating_duration_since(t) >= c.stable_window)
        {
            self.panic_since = None;
            self.max_panic = 0;
        }
        let mut desired = if self.panic_since.is_some() {
            let p = to_u32(want_panic).max(self.max_panic);
            self.max_panic = p;
            p
        } else {
            to_u32(want_stable)
        };

        if c.allow_zero
            && idle_since(self.last_active, now, c.scale_to_zero_grace)
            && obs.is_quiet()
        {
            desired = 0;
            self.panic_since = None;
            self.max_panic = 0;
        } else {
            desired = desired.clamp(c.min.max(1), c.max.max(1));
        }
        self.desired = Some(desired);
        desired
    }
}

fn to_u32(x: f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        x as u32
    }
}

/// Settings of OpenFaaS CE's rate rule that are the same for every function: the alert's
/// window and threshold, and how often it steps. Each function's [`ScalingPolicy`] (min, max,
/// factor, zero, zero-duration) gives the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct RateRuleConfig {
    /// The window the request rate is averaged over (CE's `rate(...[10s])`): 10 s.
    pub window: Duration,
    /// The rate, in requests per second to the whole function, above which the rule scales
    /// up (CE's `> 5`): 5.
    pub threshold: f64,
    /// How often it adds another step while the rate stays above the threshold: 10 s.
    pub step_interval: Duration,
}

impl Default for RateRuleConfig {
    fn default() -> Self {
        RateRuleConfig {
            window: Duration::from_secs(10),
            threshold: 5.0,
            step_interval: Duration::from_secs(10),
        }
    }
}

impl RateRuleConfig {
    /// Checks the values: positive window and step interval, a threshold of at least 0.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, r: &str| Err(Error::invalid(format!("autoscale.rateRule.{f}"), r));
        if self.window.is_zero() {
            return bad("window", "must be more than 0");
        }
        if self.step_interval.is_zero() {
            return bad("stepInterval", "must be more than 0");
        }
        if !(self.threshold >= 0.0 && self.threshold.is_finite()) {
            return bad("threshold", "must be a number of at least 0");
        }
        Ok(())
    }
}

/// Whether a function last active at `last_active` has been idle for `grace` at `now`.
fn idle_since(last_active: Option<Instant>, now: Instant, grace: Duration) -> bool {
    last_active.is_some_and(|t| now.saturating_duration_since(t) >= grace)
}

/// OpenFaaS CE's rate rule for one function (see the [module docs](self)): while the request
/// rate over the window is above the threshold, step up by `factor` percent of max every
/// step interval; when it falls back, return to min.
///
/// ```
/// use std::time::{Duration, Instant};
/// use faas_core::autoscale::{Observation, RateRule, RateRuleConfig};
/// use faas_core::spec::ScalingPolicy;
///
/// let policy = ScalingPolicy { min: 1, max: 2, ..ScalingPolicy::default() };
/// let mut rule = RateRule::new(RateRuleConfig::default(), policy);
/// assert_eq!(rule.step(), 1); // 20% of 2, rounded up
/// let t0 = Instant::now();
/// let at = |rps: f64| Observation { concurrency: 0.1, rps, ready: 1, cpu: None };
/// // 10 requests per second for a whole window: above 5, one step, to max.
/// for s in 0..5 {
///     rule.decide(t0 + Duration::from_secs(2 * s), at(10.0));
/// }
/// assert!(rule.firing());
/// assert_eq!(rule.desired(), Some(2));
/// // The load stops: once the window's rate is 5 or less, back to min.
/// let mut d = 2;
/// for s in 5..10 {
///     d = rule.decide(t0 + Duration::from_secs(2 * s), at(0.0));
/// }
/// assert_eq!(d, 1);
/// ```
#[derive(Debug, Clone)]
pub struct RateRule {
    config: RateRuleConfig,
    policy: ScalingPolicy,
    samples: VecDeque<(Instant, f64)>,
    last_step: Option<Instant>,
    last_active: Option<Instant>,
    desired: Option<u32>,
}

impl RateRule {
    /// A rule with `config`, the function's `policy` and no history.
    pub fn new(config: RateRuleConfig, policy: ScalingPolicy) -> Self {
        RateRule {
            config,
            policy,
            samples: VecDeque::new(),
            last_step: None,
            last_active: None,
            desired: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RateRuleConfig {
        &self.config
    }

    /// The function's policy.
    pub fn policy(&self) -> &ScalingPolicy {
        &self.policy
    }

    /// Replaces the configuration and policy (a function was updated), keeping the history.
    pub fn set_config(&mut self, config: RateRuleConfig, policy: ScalingPolicy) {
        self.config = config;
        self.policy = policy;
    }

    /// Replicas added per step: `factor` percent of max, rounded up (0 when `factor` is 0).
    pub fn step(&self) -> u32 {
        let p = &self.policy;
        let step = (u64::from(p.max.max(1)) * u64::from(p.factor.min(100))).div_ceil(100);
        u32::try_from(step).unwrap_or(u32::MAX)
    }

    /// Whether the rate is above the threshold (CE's alert is firing).
    pub fn firing(&self) -> bool {
        self.last_step.is_some()
    }

    /// The last decision.
    pub fn desired(&self) -> Option<u32> {
        self.desired
    }

    /// Records traffic at `now` outside an observation, so the grace period before scale to
    /// zero starts again.
    pub fn note_activity(&mut self, now: Instant) {
        self.last_active = Some(self.last_active.map_or(now, |t| t.max(now)));
    }

    /// The average request rate over the window ending at the last observation.
    pub fn rate(&self) -> f64 {
        let n = self.samples.len();
        if n == 0 {
            return 0.0;
        }
        self.samples.iter().map(|&(_, v)| v).sum::<f64>() / n as f64
    }

    /// One tick: adds `obs` to the window and answers the desired replica count.
    pub fn decide(&mut self, now: Instant, obs: Observation) -> u32 {
        let (c, p) = (self.config.clone(), self.policy.clone());
        let rps = if obs.rps.is_finite() { obs.rps.max(0.0) } else { 0.0 };
        if !obs.is_quiet() || self.last_active.is_none() {
            // The first observation starts the grace period.
            self.note_activity(now);
        }
        self.samples.push_back((now, rps));
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) >= c.window)
        {
            self.samples.pop_front();
        }
        let (min, max) = (p.min.clamp(1, p.max.max(1)), p.max.max(1));
        let current = self.desired.unwrap_or(0).max(obs.ready).clamp(min, max);
        let step = self.step();
        let mut desired = if self.rate() > c.threshold && step > 0 {
            let due =
                self.last_step.is_none_or(|t| now.saturating_duration_since(t) >= c.step_interval);
            if due {
                self.last_step = Some(now);
                current.saturating_add(step).min(max)
            } else {
                current
            }
        } else {
            // Resolved (or never fired): back to min.
            self.last_step = None;
            min
        };
        if p.allow_zero && idle_since(self.last_active, now, p.idle_timeout()) && obs.is_quiet() {
            desired = 0;
            self.last_step = None;
        }
        self.desired = Some(desired);
        desired
    }
}

/// Settings of an [`Autoscaled`] invoker.
#[derive(Debug, Clone)]
pub struct AutoscaleConfig {
    /// How often decisions are made (2 s).
    pub tick: Duration,
    /// How long an invocation of a function at zero waits for a replica before
    /// [`Error::Unavailable`] (60 s). The wait is the backend's [`Deploy::wait_ready`]
    /// (woken as a replica becomes ready where the backend can).
    pub activation_timeout: Duration,
    /// The KPA's window and rate settings; each function's labels apply over them.
    pub kpa: KpaConfig,
    /// The rate rule's window, threshold and step interval; each function's labels apply
    /// over them.
    pub rate_rule: RateRuleConfig,
    /// The most replicas asked for any function, whatever its policy says (no bound by
    /// default). Set it to the backend's per-function replica cap
    /// ([`crate::ReplicaLimits::per_function`]), so a function without a
    /// `com.openfaas.scale.max` scales up to the cap rather than asking past it in vain.
    pub max_replicas: u32,
    /// The idle time before scale to zero of a function that allows it
    /// (`com.openfaas.scale.zero=true`) but sets no `com.openfaas.scale.zero-duration`: the
    /// operator's setting, as faas-idler's `inactivity_duration` is in OpenFaaS. `None`
    /// (the default): [`ScalingPolicy::DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Option<Duration>,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            tick: DEFAULT_TICK,
            activation_timeout: Duration::from_secs(60),
            kpa: KpaConfig::default(),
            rate_rule: RateRuleConfig::default(),
            max_replicas: u32::MAX,
            idle_timeout: None,
        }
    }
}

impl AutoscaleConfig {
    /// Sets the tick.
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Sets the activation timeout.
    pub fn activation_timeout(mut self, d: Duration) -> Self {
        self.activation_timeout = d;
        self
    }

    /// Sets the rate rule's window, threshold and step interval
    /// ([`AutoscaleConfig::rate_rule`]); tests shorten them.
    pub fn rate_rule(mut self, window: Duration, threshold: f64, step_interval: Duration) -> Self {
        self.rate_rule.window = window;
        self.rate_rule.threshold = threshold;
        self.rate_rule.step_interval = step_interval;
        self
    }

    /// The rule for a function with this `scaling` policy and these labels (see the
    /// [module docs](self)). Bad label values give [`Error::InvalidSpec`] naming the label.
    fn rule_for(&self, scaling: Option<&ScalingPolicy>, labels: &Labels) -> Result<RuleConfig> {
        let names_kpa = [label::SCALE_TYPE, label::SCALE_TARGET, TARGET_PROPORTION_LABEL]
            .iter()
            .any(|k| labels.contains_key(*k));
        let rule = if scaling.is_some() || names_kpa {
            RuleConfig::Kpa(self.kpa.clone().with_labels(scaling, labels)?)
        } else {
            let p = ScalingPolicy::default().apply_labels(labels)?;
            p.validate()?;
            RuleConfig::Rate(self.rate_rule.clone(), p)
        };
        let idle_set = labels.contains_key(label::SCALE_ZERO_DURATION)
            || scaling.is_some_and(|s| s.idle_timeout.is_some());
        Ok(self.capped(if idle_set { rule } else { self.idle_defaulted(rule) }))
    }

    /// `rule` with [`AutoscaleConfig::idle_timeout`] as its idle time before zero (for a
    /// function that names none).
    fn idle_defaulted(&self, mut rule: RuleConfig) -> RuleConfig {
        if let Some(idle) = self.idle_timeout {
            match &mut rule {
                RuleConfig::Kpa(c) => c.scale_to_zero_grace = idle,
                RuleConfig::Rate(_, p) => p.idle_timeout = Some(idle),
            }
        }
        rule
    }

    /// `rule` held to [`AutoscaleConfig::max_replicas`], whatever the function's policy says.
    fn capped(&self, mut rule: RuleConfig) -> RuleConfig {
        let (min, max) = match &mut rule {
            RuleConfig::Kpa(c) => (&mut c.min, &mut c.max),
            RuleConfig::Rate(_, p) => (&mut p.min, &mut p.max),
        };
        *max = (*max).min(self.max_replicas).max(1);
        *min = (*min).min(*max);
        rule
    }

    /// Sets [`AutoscaleConfig::max_replicas`] (at least 1).
    pub fn max_replicas(mut self, n: u32) -> Self {
        self.max_replicas = n.max(1);
        self
    }

    /// Sets [`AutoscaleConfig::idle_timeout`].
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }
}

#[derive(Debug)]
struct Stats {
    in_flight: u32,
    area: f64,
    last_change: tokio::time::Instant,
    window_start: tokio::time::Instant,
    requests: u64,
}

impl Stats {
    fn advance(&mut self, now: tokio::time::Instant) {
        let dt = now.saturating_duration_since(self.last_change).as_secs_f64();
        self.area += f64::from(self.in_flight) * dt;
        self.last_change = now;
    }

    fn take(&mut self, now: tokio::time::Instant) -> (f64, f64) {
        self.advance(now);
        let span = now.saturating_duration_since(self.window_start).as_secs_f64();
        let (conc, rps) = if span > 0.0 {
            (self.area / span, self.requests as f64 / span)
        } else {
            (f64::from(self.in_flight), 0.0)
        };
        self.area = 0.0;
        self.requests = 0;
        self.window_start = now;
        (conc, rps)
    }
}

#[derive(Debug)]
struct FnState {
    stats: Mutex<Stats>,
    rule: Mutex<Rule>,
    /// The replica count last set (by us or through us); `u32::MAX` = unknown.
    replicas: AtomicU32,
    /// Set while the function is at zero or waking from it: invocations go through the
    /// activator until a replica is seen ready.
    cold: AtomicBool,
}

const UNKNOWN: u32 = u32::MAX;

/// The settings of the rule that decides one function's replicas.
#[derive(Debug, Clone)]
enum RuleConfig {
    Rate(RateRuleConfig, ScalingPolicy),
    Kpa(KpaConfig),
}

/// The rule that decides one function's replicas, with its history.
#[derive(Debug, Clone)]
enum Rule {
    Rate(RateRule),
    Kpa(Kpa),
}

impl Rule {
    fn new(config: RuleConfig) -> Self {
        match config {
            RuleConfig::Rate(c, p) => Rule::Rate(RateRule::new(c, p)),
            RuleConfig::Kpa(c) => Rule::Kpa(Kpa::new(c)),
        }
    }

    /// Takes the settings of an update, keeping the history while the rule stays the same.
    fn reconfigure(&mut self, config: RuleConfig) {
        match (self, config) {
            (Rule::Rate(r), RuleConfig::Rate(c, p)) => r.set_config(c, p),
            (Rule::Kpa(k), RuleConfig::Kpa(c)) => k.set_config(c),
            (rule, config) => *rule = Rule::new(config),
        }
    }

    fn decide(&mut self, now: Instant, obs: Observation) -> u32 {
        match self {
            Rule::Rate(r) => r.decide(now, obs),
            Rule::Kpa(k) => k.decide(now, obs),
        }
    }

    fn note_activity(&mut self, now: Instant) {
        match self {
            Rule::Rate(r) => r.note_activity(now),
            Rule::Kpa(k) => k.note_activity(now),
        }
    }
}

impl FnState {
    fn new(config: RuleConfig, replicas: u32) -> Self {
        let now = tokio::time::Instant::now();
        FnState {
            stats: Mutex::new(Stats {
                in_flight: 0,
                area: 0.0,
                last_change: now,
                window_start: now,
                requests: 0,
            }),
            rule: Mutex::new(Rule::new(config)),
            replicas: AtomicU32::new(replicas),
            cold: AtomicBool::new(replicas == 0),
        }
    }

    fn set_replicas(&self, n: u32) {
        if n == 0 {
            self.cold.store(true, Ordering::Release);
        }
        self.replicas.store(n, Ordering::Release);
    }
}

struct InFlight<'a>(&'a FnState);

impl<'a> InFlight<'a> {
    fn begin(st: &'a FnState) -> Self {
        let mut s = lock(&st.stats);
        s.advance(tokio::time::Instant::now());
        s.in_flight += 1;
        s.requests += 1;
        InFlight(st)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.0.stats);
        s.advance(tokio::time::Instant::now());
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

struct Shared<I> {
    inner: I,
    activator: Activator,
    config: AutoscaleConfig,
    functions: Mutex<HashMap<FunctionRef, Arc<FnState>>>,
}

/// An [`Backend`] that autoscales every function of the invoker it wraps (see the
/// [module docs](self)).
///
/// Functions deployed or invoked through it are managed; their policy comes from the spec
/// (on deploy and update) or from the labels of [`Deploy::status`] (for functions deployed
/// before). The tick loop is a tokio task started on first use and stopped when the
/// `Autoscaled` is dropped.
pub struct Autoscaled<I> {
    shared: Arc<Shared<I>>,
    ticker: Mutex<Option<tokio::task::AbortHandle>>,
}

impl<I> std::fmt::Debug for Autoscaled<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscaled")
            .field("config", &self.shared.config)
            .field("functions", &lock(&self.shared.functions).len())
            .finish()
    }
}

impl<I> Drop for Autoscaled<I> {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.ticker).take() {
            h.abort();
        }
    }
}

impl<I: Backend> Autoscaled<I> {
    /// Wraps `inner` with the default settings (2 s tick).
    pub fn new(inner: I) -> Self {
        Self::with_config(inner, AutoscaleConfig::default())
    }

    /// Wraps `inner` with `config`.
    pub fn with_config(inner: I, config: AutoscaleConfig) -> Self {
        Autoscaled {
            shared: Arc::new(Shared {
                inner,
                // Trusted for no time: `cold` says when to ask.
                activator: Activator::new()
                    .timeout(config.activation_timeout)
                    .ready_ttl(Duration::ZERO),
                config,
                functions: Mutex::new(HashMap::new()),
            }),
            ticker: Mutex::new(None),
        }
    }

    /// The wrapped invoker.
    pub fn inner(&self) -> &I {
        &self.shared.inner
    }

    /// The replica count last set for `function` (by a decision, the activator or a manual
    /// scale through this wrapper), if it is managed and known.
    pub fn replicas(&self, function: &FunctionRef) -> Option<u32> {
        let st = lock(&self.shared.functions).get(function).cloned()?;
        let r = st.replicas.load(Ordering::Acquire);
        (r != UNKNOWN).then_some(r)
    }

    /// Whether `function` is panicking (the KPA scaling for a burst) or its rate rule is
    /// firing (its request rate is above the threshold).
    pub fn in_panic(&self, function: &FunctionRef) -> bool {
        lock(&self.shared.functions).get(function).is_some_and(|st| match &*lock(&st.rule) {
            Rule::Kpa(k) => k.in_panic(),
            Rule::Rate(r) => r.firing(),
        })
    }

    /// Runs one decision round for every managed function now (the tick loop calls this).
    pub async fn tick(&self) {
        self.shared.tick().await
    }

    fn ensure_ticker(&self) {
        let mut t = lock(&self.ticker);
        if t.is_some() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Shared<I>> = Arc::downgrade(&self.shared);
        let period = self.shared.config.tick.max(Duration::from_millis(1));
        let task = handle.spawn(async move {
            let start = tokio::time::Instant::now() + period;
            let mut interval = tokio::time::interval_at(start, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                shared.tick().await;
            }
        });
        *t = Some(task.abort_handle());
    }

    async fn state_for(&self, f: &FunctionRef) -> Option<Arc<FnState>> {
        if let Some(st) = lock(&self.shared.functions).get(f) {
            return Some(st.clone());
        }
        // Deployed before we wrapped the backend: adopt it with the policy of its labels.
        let status = self.shared.inner.status(f).await.ok()?;
        let config = self.shared.config.rule_for(None, &status.labels).unwrap_or_else(|_| {
            let rate_rule = self.shared.config.rate_rule.clone();
            self.shared.config.capped(RuleConfig::Rate(rate_rule, ScalingPolicy::default()))
        });
        Some(self.shared.register(f, config, clamp_u32(status.replicas)))
    }

    /// Scales `f` from zero through the shared [`Activator`] (one place for scale from
    /// zero), then records the replicas it asked for.
    async fn activate(&self, f: &FunctionRef, st: &FnState) -> Result<()> {
        let shared = &self.shared;
        if let Activation::Scaled(n) = shared.activator.activate(&shared.inner, f).await? {
            st.set_replicas(n);
            lock(&st.rule).note_activity(tokio::time::Instant::now().into_std());
        }
        if st.replicas.load(Ordering::Acquire) != 0 {
            st.cold.store(false, Ordering::Release);
        }
        Ok(())
    }
}

fn clamp_u32(x: u64) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX - 1)
}

impl<I: Backend> Shared<I> {
    fn register(&self, f: &FunctionRef, config: RuleConfig, replicas: u32) -> Arc<FnState> {
        let mut fns = lock(&self.functions);
        if let Some(st) = fns.get(f) {
            lock(&st.rule).reconfigure(config);
            return st.clone();
        }
        let st = Arc::new(FnState::new(config, replicas));
        fns.insert(f.clone(), st.clone());
        st
    }

    async fn tick(&self) {
        let fns: Vec<(FunctionRef, Arc<FnState>)> =
            lock(&self.functions).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (f, st) in fns {
            let status = match self.inner.status(&f).await {
                Ok(s) => s,
                Err(Error::NotFound { .. }) => {
                    lock(&self.functions).remove(&f);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(function = %f, error = %e, "autoscaler cannot read status");
                    continue;
                }
            };
            let now = tokio::time::Instant::now();
            let (concurrency, rps) = lock(&st.stats).take(now);
            let obs = Observation {
                concurrency,
                rps,
                ready: clamp_u32(status.available_replicas),
                cpu: status.usage.as_ref().map(|u| u.cpu * 1000.0),
            };
            let desired = lock(&st.rule).decide(now.into_std(), obs);
            let current = clamp_u32(status.replicas);
            // Never scale to zero under an invocation in flight (or waiting to activate).
            if desired == 0 && lock(&st.stats).in_flight > 0 {
                continue;
            }
            if desired != current {
                tracing::debug!(function = %f, from = current, to = desired, ?obs, "autoscaling");
                if let Err(e) = self.inner.scale(&f, desired).await {
                    tracing::warn!(function = %f, error = %e, "autoscaler cannot scale");
                    continue;
                }
            }
            st.set_replicas(desired);
        }
    }
}

#[async_trait]
impl<I: Backend> Invoke for Autoscaled<I> {
    async fn invoke(&self, invocation: Invocation) -> Result<Response> {
        self.ensure_ticker();
        let f = invocation.function.clone();
        let Some(st) = self.state_for(&f).await else {
            // Unknown to the backend too: let it answer (NotFound).
            return self.shared.inner.invoke(invocation).await;
        };
        let _in_flight = InFlight::begin(&st);
        if st.cold.load(Ordering::Acquire) {
            self.activate(&f, &st).await?;
        }
        self.shared.inner.invoke(invocation).await
    }
}

#[async_trait]
impl<I: Backend> Deploy for Autoscaled<I> {
    async fn deploy(&self, spec: FunctionSpec) -> Result<()> {
        self.ensure_ticker();
        let config = self.shared.config.rule_for(spec.scaling.as_ref(), &spec.labels)?;
        let f = spec.function_ref();
        self.shared.inner.deploy(spec).await?;
        let replicas =
            self.shared.inner.status(&f).await.map(|s| clamp_u32(s.replicas)).unwrap_or(UNKNOWN);
        self.shared.register(&f, config, replicas);
        Ok(())
    }

    async fn update(&self, spec: FunctionSpec) -> Result<()> {
        self.ensure_ticker();
        let config = self.shared.config.rule_for(spec.scaling.as_ref(), &spec.labels)?;
        let f = spec.function_ref();
        self.shared.inner.update(spec).await?;
        let st = self.shared.register(&f, config, UNKNOWN);
        if let Ok(s) = self.shared.inner.status(&f).await {
            st.set_replicas(clamp_u32(s.replicas));
        }
        Ok(())
    }

    async fn remove(&self, function: &FunctionRef) -> Result<()> {
        self.shared.inner.remove(function).await?;
        lock(&self.shared.functions).remove(function);
        Ok(())
    }

    async fn list(&self, namespace: &str) -> Result<Vec<FunctionStatus>> {
        self.shared.inner.list(namespace).await
    }

    async fn status(&self, function: &FunctionRef) -> Result<FunctionStatus> {
        self.shared.inner.status(function).await
    }

    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<()> {
        self.shared.inner.scale(function, replicas).await?;
        if let Some(st) = lock(&self.shared.functions).get(function) {
            st.set_replicas(replicas);
        }
        Ok(())
    }

    async fn namespaces(&self) -> Result<Vec<String>> {
        self.shared.inner.namespaces().await
    }

    fn info(&self) -> ProviderInfo {
        self.shared.inner.info()
    }

    async fn wait_ready(&self, function: &FunctionRef, timeout: Duration) -> Result<bool> {
        self.shared.inner.wait_ready(function, timeout).await
    }
}

#[async_trait]
impl<I: Backend> Secrets for Autoscaled<I> {
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        self.shared.inner.list_secrets(namespace).await
    }

    async fn create_secret(&self, secret: Secret) -> Result<()> {
        self.shared.inner.create_secret(secret).await
    }

    async fn update_secret(&self, secret: Secret) -> Result<()> {
        self.shared.inner.update_secret(secret).await
    }

    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()> {
        self.shared.inner.remove_secret(namespace, name).await
    }
}

#[async_trait]
impl<I: Backend> Logs for Autoscaled<I> {
    async fn logs(&self, request: LogsRequest) -> Result<LogStream> {
        self.shared.inner.logs(request).await
    }
}

#[cfg(test)]
mod tests;

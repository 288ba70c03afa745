//! A deterministic simulator of invocation traces over a cluster, to compare scheduling
//! strategies ([`crate::scheduler::Strategy`]) on cold starts, waiting time, node
//! utilisation and rejected placements.
//!
//! The model is OpenWhisk's container pool over a mixed cloud / Raspberry Pi cluster:
//!
//! - A [`Trace`] is generated from a seed: many functions with Zipf popularity, log-normal
//!   (heavy-tailed) durations, memory needs of 128 to 512 MiB, image platforms (most
//!   multi-arch, some amd64-only, some arm-only) and a few placement constraints (some
//!   unsatisfiable); Poisson arrivals plus bursts on random functions.
//! - Each invocation is first *routed* ([`Scheduler::route`]) to an idle warm instance of its
//!   function (one invocation at a time per instance, OpenWhisk's default); if none, a new
//!   instance is *placed* ([`Scheduler::place`]) and pays a cold start (2x on a Pi 4, 4x on
//!   a Pi 3; the function also runs 2x or 4x slower there). The scheduler sees a node's
//!   *busy* instances as its allocation: idle warm instances on the chosen node are evicted,
//!   least recently used first, to make room (OpenWhisk's invoker behaviour). When no
//!   eligible node has room for one more busy instance, the invocation waits in a queue
//!   until an instance finishes (served in order, skipping those that still cannot run). Idle instances are reclaimed after a keep-alive. Placements
//!   no node can ever satisfy (constraints, image platforms) are rejected and not served.
//! - Time is virtual (microseconds), the random source is seeded: the same config and
//!   strategy always give the same [`SimReport`].
//!
//! `cargo run -p faas-examples --example simulate` prints the comparison table.

/// A criterion harness for any scheduler (feature `bench`).
#[cfg(feature = "bench")]
pub mod bench;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;

use crate::error::Error;
use crate::invocation::FunctionRef;
use crate::scheduler::{Capacity, Constraint, InstanceView, Node, PlacementRequest, Scheduler};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A small seeded generator (SplitMix64), so traces do not depend on `rand`'s versions.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.f64().max(f64::MIN_POSITIVE);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed of everything random.
    pub seed: u64,
    /// Distinct functions.
    pub functions: usize,
    /// Invocations in the trace (bursts included).
    pub invocations: usize,
    /// Mean arrivals per second (outside bursts).
    pub rate: f64,
    /// Zipf exponent of function popularity (about 1 in public traces).
    pub zipf: f64,
    /// Median duration of the median function, in milliseconds.
    pub median_duration_ms: f64,
    /// Spread (log-normal sigma) of function median durations: larger is heavier-tailed.
    pub duration_sigma: f64,
    /// Number of bursts.
    pub bursts: usize,
    /// Invocations per burst, arriving within one second.
    pub burst_size: usize,
    /// Cold start on an amd64 node, ms (arm64 nodes take 2x, arm/v7 4x).
    pub cold_start_ms: f64,
    /// Idle time before an instance is reclaimed, seconds.
    pub keep_alive_s: f64,
    /// The cluster.
    pub nodes: Vec<Node>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            functions: 400,
            invocations: 100_000,
            rate: 100.0,
            zipf: 1.0,
            median_duration_ms: 100.0,
            duration_sigma: 1.2,
            bursts: 20,
            burst_size: 400,
            cold_start_ms: 250.0,
            keep_alive_s: 60.0,
            nodes: mixed_cluster(8, 12, 6),
        }
    }
}

/// A mixed cluster: `cloud` amd64 VMs (8 cores, 16 GiB, 64 slots, label `type=cloud`),
/// `pi4` arm64 Raspberry Pi 4s (4 cores, 4 GiB, 16 slots, `type=rpi`) and `pi3` arm/v7
/// Raspberry Pi 3s (4 cores, 1 GiB, 8 slots, `type=rpi`), spread over zones `a` and `b`.
/// The last Pi 3 is unhealthy.
pub fn mixed_cluster(cloud: usize, pi4: usize, pi3: usize) -> Vec<Node> {
    let mut nodes = Vec::with_capacity(cloud + pi4 + pi3);
    let zone = |i: usize| if i % 2 == 0 { "a" } else { "b" };
    for i in 0..cloud {
        nodes.push(
            Node::new(format!("cloud-{i}"), "amd64", Capacity::new(8000, 16 * GIB, 64))
                .label("type", "cloud")
                .label("zone", zone(i)),
        );
    }
    for i in 0..pi4 {
        nodes.push(
            Node::new(format!("pi4-{i}"), "arm64", Capacity::new(4000, 4 * GIB, 16))
                .label("type", "rpi")
                .label("zone", zone(i)),
        );
    }
    for i in 0..pi3 {
        let mut n = Node::new(format!("pi3-{i}"), "arm/v7", Capacity::new(4000, GIB, 8))
            .label("type", "rpi")
            .label("zone", zone(i));
        n.healthy = i + 1 < pi3;
        nodes.push(n);
    }
    nodes
}

/// One function of a trace.
#[derive(Debug, Clone)]
pub struct SimFunction {
    /// Its reference.
    pub function: FunctionRef,
    /// What one instance needs.
    pub need: Capacity,
    /// Platforms its image supports.
    pub platforms: Vec<String>,
    /// Its placement constraints.
    pub constraints: Vec<Constraint>,
    /// Median duration, microseconds.
    pub median_us: f64,
}

/// One invocation of a trace.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Arrival time, microseconds.
    pub at_us: u64,
    /// Index into [`Trace::functions`].
    pub function: usize,
    /// Duration on an amd64 node, microseconds.
    pub duration_us: u64,
}

/// A synthetic invocation trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The functions.
    pub functions: Vec<SimFunction>,
    /// The invocations, by arrival time.
    pub arrivals: Vec<Arrival>,
}

impl Trace {
    /// Generates the trace of `config` (deterministic in `config.seed`).
    pub fn generate(config: &SimConfig) -> Trace {
        let mut rng = SimRng::new(config.seed);
        let all = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let functions: Vec<SimFunction> = (0..config.functions.max(1))
            .map(|i| {
                let memory = [128, 128, 256, 256, 512][rng.below(5)] * MIB;
                let cpu = [50, 100, 200][rng.below(3)];
                let p = rng.f64();
                let platforms = if p < 0.7 {
                    all(&["linux/amd64", "linux/arm64", "linux/arm/v7"])
                } else if p < 0.9 {
                    all(&["linux/amd64"])
                } else {
                    all(&["linux/arm64", "linux/arm/v7"])
                };
                let c = rng.f64();
                let constraints: Vec<Constraint> = if c < 0.05 {
                    vec![Constraint::Eq { key: "type".into(), value: "rpi".into() }]
                } else if c < 0.10 {
                    vec![Constraint::Ne { key: "type".into(), value: "rpi".into() }]
                } else if c < 0.11 {
                    vec![Constraint::Eq { key: "gpu".into(), value: "yes".into() }]
                } else {
                    vec![]
                };
                let median_us = config.median_duration_ms
                    * 1000.0
                    * (config.duration_sigma * rng.normal()).exp();
                SimFunction {
                    function: FunctionRef::new(format!("fn-{i}"), "sim"),
                    need: Capacity::new(cpu, memory, 1),
                    platforms,
                    constraints,
                    median_us: median_us.clamp(1000.0, 10e6),
                }
            })
            .collect();
        // Zipf CDF over a random permutation (popularity independent of index).
        let n = functions.len();
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let weights: Vec<f64> = (1..=n).map(|r| 1.0 / (r as f64).powf(config.zipf)).collect();
        let total: f64 = weights.iter().sum();
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for w in &weights {
            acc += w / total;
            cdf.push(acc);
        }
        let duration = |rng: &mut SimRng, f: usize| -> u64 {
            (functions[f].median_us * (0.5 * rng.normal()).exp()).clamp(500.0, 300e6) as u64
        };
        let burst_total = config.bursts * config.burst_size;
        let base = config.invocations.saturating_sub(burst_total);
        let mut arrivals = Vec::with_capacity(config.invocations);
        let mut t = 0f64;
        for _ in 0..base {
            t += rng.exp(1e6 / config.rate.max(1e-6));
            let u = rng.f64();
            let rank = cdf.partition_point(|&c| c < u).min(n - 1);
            let f = order[rank];
            let d = duration(&mut rng, f);
            arrivals.push(Arrival { at_us: t as u64, function: f, duration_us: d });
        }
        let span = t.max(1e6);
        for _ in 0..config.bursts {
            let start = rng.f64() * span;
            let f = rng.below(n);
            for _ in 0..config.burst_size {
                let at = start + rng.f64() * 1e6;
                let d = duration(&mut rng, f);
                arrivals.push(Arrival { at_us: at as u64, function: f, duration_us: d });
            }
        }
        arrivals.sort_by_key(|a| a.at_us);
        Trace { functions, arrivals }
    }
}

/// What one simulation measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// The scheduler's name.
    pub strategy: String,
    /// Invocations in the trace.
    pub invocations: u64,
    /// Invocations served.
    pub served: u64,
    /// Invocations that needed a new instance.
    pub cold_starts: u64,
    /// Median waiting time (queueing plus cold start), ms.
    pub wait_p50_ms: f64,
    /// 99th percentile waiting time, ms.
    pub wait_p99_ms: f64,
    /// Mean waiting time, ms.
    pub wait_mean_ms: f64,
    /// Mean over time and healthy nodes of the node's utilisation by busy instances
    /// ([`Node::utilisation`]: the largest of the CPU, memory and slot fractions).
    pub util_mean: f64,
    /// The most loaded node's mean utilisation over time (imbalance shows here).
    pub util_max: f64,
    /// Idle instances evicted to make room.
    pub evictions: u64,
    /// Invocations that waited in the queue because no node had room.
    pub queued: u64,
    /// Placements rejected because no node can ever take the function (constraints,
    /// platforms): those invocations are not served.
    pub rejected: u64,
    /// Simulated time, seconds.
    pub sim_seconds: f64,
}

impl SimReport {
    /// Cold starts as a percentage of served invocations.
    pub fn cold_start_pct(&self) -> f64 {
        100.0 * self.cold_starts as f64 / self.served.max(1) as f64
    }

    /// A text table of reports, one row each.
    pub fn table(reports: &[SimReport]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| strategy | served | cold starts | cold % | wait p50 ms | wait p99 ms | wait mean ms | util mean | util max | evictions | queued | rejected |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in reports {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}% | {:.1}% | {} | {} | {} |",
                r.strategy,
                r.served,
                r.cold_starts,
                r.cold_start_pct(),
                r.wait_p50_ms,
                r.wait_p99_ms,
                r.wait_mean_ms,
                100.0 * r.util_mean,
                100.0 * r.util_max,
                r.evictions,
                r.queued,
                r.rejected
            );
        }
        s
    }
}

#[derive(Debug, Clone)]
struct Inst {
    function: usize,
    node: usize,
    busy: bool,
    last_used: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Finish(usize),
    Sweep,
}

struct Sim<'a> {
    trace: &'a Trace,
    cfg: &'a SimConfig,
    sched: &'a dyn Scheduler,
    /// The scheduler's view: `allocated` counts busy instances only (idle warm ones can be
    /// evicted on demand, as OpenWhisk's invokers do).
    nodes: Vec<Node>,
    /// What is really allocated per node (busy and idle instances).
    real: Vec<Capacity>,
    on_node: Vec<Vec<usize>>,
    insts: Vec<Option<Inst>>,
    free_slots: Vec<usize>,
    ids: Vec<String>,
    by_fn: Vec<Vec<usize>>,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    pending: VecDeque<usize>,
    waits: Vec<u64>,
    node_area: Vec<f64>,
    node_last: Vec<u64>,
    cold: u64,
    evictions: u64,
    queued: u64,
    rejected: u64,
    served: u64,
    views: Vec<InstanceView>,
}

fn slowdown(arch: &str) -> f64 {
    match crate::scheduler::normalize_arch(arch) {
        "amd64" => 1.0,
        "arm64" => 2.0,
        _ => 4.0,
    }
}

impl Sim<'_> {
    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, ev)));
    }

    fn account(&mut self, node: usize, now: u64) {
        let dt = now.saturating_sub(self.node_last[node]) as f64;
        self.node_area[node] += self.nodes[node].utilisation() * dt;
        self.node_last[node] = now;
    }

    fn remove_instance(&mut self, i: usize, now: u64) {
        if let Some(inst) = self.insts[i].take() {
            let need = self.trace.functions[inst.function].need;
            if inst.busy {
                self.account(inst.node, now);
                self.nodes[inst.node].release(&need);
            }
            self.real[inst.node] = self.real[inst.node].saturating_sub(need);
            self.by_fn[inst.function].retain(|&x| x != i);
            self.on_node[inst.node].retain(|&x| x != i);
            self.free_slots.push(i);
        }
    }

    fn set_busy(&mut self, i: usize, busy: bool, now: u64) {
        let Some(inst) = self.insts[i].as_mut() else { return };
        if inst.busy == busy {
            return;
        }
        inst.busy = busy;
        inst.last_used = now;
        let (node, f) = (inst.node, inst.function);
        let need = self.trace.functions[f].need;
        self.account(node, now);
        if busy {
            self.nodes[node].allocate(&need);
        } else {
            self.nodes[node].release(&need);
        }
    }

    fn start(&mut self, i: usize, now: u64, arrival: &Arrival, cold: bool) {
        self.set_busy(i, true, now);
        let Some(inst) = self.insts[i].as_ref() else { return };
        let node = inst.node;
        let factor = slowdown(&self.nodes[node].arch);
        let cold_us = if cold { (self.cfg.cold_start_ms * 1000.0 * factor) as u64 } else { 0 };
        let run = (arrival.duration_us as f64 * factor) as u64;
        self.waits.push(now - arrival.at_us + cold_us);
        self.served += 1;
        self.push(now + cold_us + run, Ev::Finish(i));
    }

    /// Tries to serve `a` now: true if it started (or was rejected for good).
    fn dispatch(&mut self, a: &Arrival, now: u64) -> bool {
        let trace = self.trace;
        let f = &trace.functions[a.function];
        self.views.clear();
        for &i in &self.by_fn[a.function] {
            if let Some(inst) = &self.insts[i] {
                self.views.push(InstanceView {
                    id: self.ids[i].clone(),
                    node: None,
                    in_flight: u32::from(inst.busy),
                    max_concurrency: Some(1),
                    ready: true,
                });
            }
        }
        if let Some(k) = self.sched.route(&f.function, &self.views) {
            let i = self.by_fn[a.function][k];
            self.start(i, now, a, false);
            return true;
        }
        let req = PlacementRequest::new(&f.function, f.need)
            .with_constraints(&f.constraints)
            .with_platforms(&f.platforms);
        match self.sched.place(&req, &self.nodes) {
            Ok(n) => {
                // Make room on that node: evict its least recently used idle instances.
                let cap = self.nodes[n].capacity;
                while !cap.covers(&self.real[n].saturating_add(f.need)) {
                    let victim = self.on_node[n]
                        .iter()
                        .copied()
                        .filter(|&i| self.insts[i].as_ref().is_some_and(|x| !x.busy))
                        .min_by_key(|&i| self.insts[i].as_ref().map_or(0, |x| x.last_used));
                    match victim {
                        Some(v) => {
                            self.evictions += 1;
                            self.remove_instance(v, now);
                        }
                        None => return false,
                    }
                }
                self.real[n] = self.real[n].saturating_add(f.need);
                let inst = Inst { function: a.function, node: n, busy: false, last_used: now };
                let i = match self.free_slots.pop() {
                    Some(i) => {
                        self.insts[i] = Some(inst);
                        i
                    }
                    None => {
                        self.insts.push(Some(inst));
                        self.ids.push(format!("i{}", self.ids.len()));
                        self.insts.len() - 1
                    }
                };
                self.by_fn[a.function].push(i);
                self.on_node[n].push(i);
                self.cold += 1;
                self.start(i, now, a, true);
                true
            }
            Err(Error::Unavailable { .. }) => false,
            Err(_) => {
                self.rejected += 1;
                true
            }
        }
    }

    fn finish(&mut self, i: usize, now: u64) {
        self.set_busy(i, false, now);
        // Serve waiting invocations in order, skipping (up to 32) that still cannot run, so a
        // function waiting for a Pi does not block one that fits in the cloud.
        let mut blocked = Vec::new();
        while let Some(p) = self.pending.pop_front() {
            let a = self.trace.arrivals[p];
            if !self.dispatch(&a, now) {
                blocked.push(p);
                if blocked.len() >= 32 {
                    break;
                }
            }
        }
        for p in blocked.into_iter().rev() {
            self.pending.push_front(p);
        }
    }

    fn sweep(&mut self, now: u64) {
        let keep = (self.cfg.keep_alive_s * 1e6) as u64;
        let expired: Vec<usize> = self
            .insts
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.as_ref().map(|x| (i, x)))
            .filter(|(_, x)| !x.busy && now.saturating_sub(x.last_used) >= keep)
            .map(|(i, _)| i)
            .collect();
        for i in expired {
            self.remove_instance(i, now);
        }
    }
}

/// Replays `trace` over `config.nodes` with `scheduler`.
pub fn simulate(config: &SimConfig, trace: &Trace, scheduler: &dyn Scheduler) -> SimReport {
    let n = config.nodes.len();
    let mut sim = Sim {
        trace,
        cfg: config,
        sched: scheduler,
        nodes: config.nodes.clone(),
        real: config.nodes.iter().map(|n| n.allocated).collect(),
        on_node: vec![Vec::new(); n],
        insts: Vec::new(),
        free_slots: Vec::new(),
        ids: Vec::new(),
        by_fn: vec![Vec::new(); trace.functions.len()],
        events: BinaryHeap::new(),
        seq: 0,
        pending: VecDeque::new(),
        waits: Vec::with_capacity(trace.arrivals.len()),
        node_area: vec![0.0; n],
        node_last: vec![0; n],
        cold: 0,
        evictions: 0,
        queued: 0,
        rejected: 0,
        served: 0,
        views: Vec::new(),
    };
    sim.push(1_000_000, Ev::Sweep);
    let last_arrival = trace.arrivals.last().map_or(0, |a| a.at_us);
    let mut now = 0u64;
    let mut next = 0usize;
    loop {
        let ev_at = sim.events.peek().map(|Reverse((t, _, _))| *t);
        let arr_at = trace.arrivals.get(next).map(|a| a.at_us);
        match (ev_at, arr_at) {
            (Some(t), a) if a.is_none_or(|a| t <= a) => {
                let Some(Reverse((t, _, ev))) = sim.events.pop() else { break };
                now = t;
                match ev {
                    Ev::Finish(i) => sim.finish(i, now),
                    Ev::Sweep => {
                        sim.sweep(now);
                        if now < last_arrival || !sim.pending.is_empty() {
                            sim.push(now + 1_000_000, Ev::Sweep);
                        }
                    }
                }
            }
            (_, Some(a)) => {
                now = a;
                let arrival = trace.arrivals[next];
                if !sim.dispatch(&arrival, now) {
                    sim.queued += 1;
                    sim.pending.push_back(next);
                }
                next += 1;
            }
            (None, None) => break,
            (Some(_), None) => unreachable!("covered by the first arm"),
        }
    }
    for i in 0..n {
        sim.account(i, now);
    }
    sim.waits.sort_unstable();
    let pct = |p: f64| -> f64 {
        if sim.waits.is_empty() {
            return 0.0;
        }
        let k = ((sim.waits.len() as f64 - 1.0) * p).round() as usize;
        sim.waits[k.min(sim.waits.len() - 1)] as f64 / 1000.0
    };
    let span = now.max(1) as f64;
    let healthy: Vec<usize> = (0..n).filter(|&i| config.nodes[i].healthy).collect();
    let utils: Vec<f64> = healthy.iter().map(|&i| sim.node_area[i] / span).collect();
    SimReport {
        strategy: scheduler.name().to_string(),
        invocations: trace.arrivals.len() as u64,
        served: sim.served,
        cold_starts: sim.cold,
        wait_p50_ms: pct(0.5),
        wait_p99_ms: pct(0.99),
        wait_mean_ms: sim.waits.iter().sum::<u64>() as f64 / sim.waits.len().max(1) as f64 / 1000.0,
        util_mean: utils.iter().sum::<f64>() / utils.len().max(1) as f64,
        util_max: utils.iter().copied().fold(0.0, f64::max),
        evictions: sim.evictions,
        queued: sim.queued,
        rejected: sim.rejected,
        sim_seconds: now as f64 / 1e6,
    }
}

/// Generates the trace of `config` once and simulates it with each strategy (randomised ones
/// seeded with `config.seed`).
pub fn compare(config: &SimConfig, strategies: &[crate::scheduler::Strategy]) -> Vec<SimReport> {
    let trace = Trace::generate(config);
    strategies.iter().map(|s| simulate(config, &trace, &*s.build_seeded(config.seed))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Strategy;

    fn small() -> SimConfig {
        SimConfig {
            functions: 60,
            invocations: 6000,
            rate: 100.0,
            bursts: 3,
            burst_size: 200,
            nodes: mixed_cluster(2, 3, 2),
            ..SimConfig::default()
        }
    }

    /// `cargo test -p faas-core --release --lib sim::tests::print -- --ignored --nocapture`
    #[test]
    #[ignore = "prints the default comparison; slow in debug builds"]
    fn print_default_comparison() {
        let c = SimConfig::default();
        let t = std::time::Instant::now();
        println!("{}", SimReport::table(&compare(&c, &Strategy::ALL)));
        println!("{:?}", t.elapsed());
    }

    #[test]
    fn deterministic_for_a_seed() {
        let c = small();
        let a = compare(&c, &Strategy::ALL);
        let b = compare(&c, &Strategy::ALL);
        assert_eq!(a, b);
        let other = compare(&SimConfig { seed: 7, ..small() }, &[Strategy::Hash]);
        assert_ne!(other[0], a[0], "a different seed, a different trace");
    }

    #[test]
    fn reports_are_consistent() {
        let c = small();
        let trace = Trace::generate(&c);
        assert_eq!(trace.arrivals.len(), 6000);
        assert!(trace.arrivals.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        // Heavy-tailed popularity: the most popular function gets far more than average.
        let mut counts = vec![0u32; c.functions];
        trace.arrivals.iter().for_each(|a| counts[a.function] += 1);
        let max = *counts.iter().max().unwrap();
        assert!(max as usize > 5 * 6000 / c.functions, "max {max}");
        // Functions no node can ever take (a gpu label, amd64-only on Pis...) are rejected.
        let never: u64 = trace
            .arrivals
            .iter()
            .filter(|a| {
                let f = &trace.functions[a.function];
                PlacementRequest::new(&f.function, f.need)
                    .with_constraints(&f.constraints)
                    .with_platforms(&f.platforms)
                    .satisfiable(&c.nodes)
                    .is_err()
            })
            .count() as u64;
        assert!(never > 0);
        for s in Strategy::ALL {
            let r = simulate(&c, &trace, &*s.build_seeded(1));
            assert_eq!(r.served + r.rejected, r.invocations, "{r:?}");
            assert_eq!(r.rejected, never, "{r:?}");
            assert!(r.cold_starts > 0 && r.cold_starts < r.served, "{r:?}");
            assert!(r.wait_p50_ms <= r.wait_p99_ms);
            assert!(r.util_mean > 0.0 && r.util_mean <= r.util_max && r.util_max <= 1.0, "{r:?}");
        }
        let table = SimReport::table(&compare(&c, &[Strategy::Hash, Strategy::BestFit]));
        assert!(table.contains("| hash |") && table.contains("| best-fit |"), "{table}");
    }
}

//! The scheduling strategies, and how a backend or a function chooses one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::{utilisation_of, InstanceView, LeastLoaded, Node, PlacementRequest, Scheduler};
use crate::error::{Error, Result};
use crate::invocation::FunctionRef;
use crate::spec::FunctionSpec;

/// The label that selects a function's scheduling strategy, e.g.
/// `com.faas-rs.scheduler: two-choices`. Values: see [`Strategy::parse`].
pub const SCHEDULER_LABEL: &str = "com.faas-rs.scheduler";

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

/// A stable 64-bit hash of a function (namespace and name), the same in every process and
/// every run (FNV-1a with a final mix), so that every gateway replica picks the same home
/// node for a function.
#[inline]
pub fn fn_hash(f: &FunctionRef) -> u64 {
    mix(fnv(fnv(fnv(FNV_OFFSET, f.namespace.as_bytes()), b"/"), f.name.as_bytes()))
}

#[inline]
fn str_hash(s: &str) -> u64 {
    mix(fnv(FNV_OFFSET, s.as_bytes()))
}

/// Maps a uniform 64-bit value onto `0..n` (Lemire's multiply-shift, no division).
#[inline]
fn reduce(x: u64, n: usize) -> usize {
    ((u128::from(x) * n as u128) >> 64) as usize
}

#[inline]
fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A step size in `1..n` coprime with `n`, chosen by `h`: probing `home, home+step, ...`
/// modulo `n` then visits every index exactly once.
#[inline]
fn coprime_step(h: u64, n: usize) -> usize {
    if n <= 2 {
        return 1;
    }
    let mut s = 1 + reduce(h, n - 1);
    while gcd(s, n) != 1 {
        s += 1;
        if s >= n {
            s = 1;
        }
    }
    s
}

/// OpenWhisk's probe: start at the home index, step by a coprime stride, first `ok` wins.
#[inline]
fn probe(h: u64, n: usize, mut ok: impl FnMut(usize) -> bool) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let mut i = reduce(h, n);
    let step = coprime_step(mix(h ^ GOLDEN), n);
    for _ in 0..n {
        if ok(i) {
            return Some(i);
        }
        i += step;
        if i >= n {
            i -= n;
        }
    }
    None
}

/// A lock-free pseudo random generator (SplitMix64 over an atomic counter): cheap, shared by
/// threads, deterministic for a given seed when used from one thread.
#[derive(Debug)]
struct Rng(AtomicU64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(AtomicU64::new(seed))
    }

    #[inline]
    fn next(&self) -> u64 {
        mix(self.0.fetch_add(GOLDEN, Ordering::Relaxed).wrapping_add(GOLDEN))
    }
}

fn least_utilised(request: &PlacementRequest<'_>, nodes: &[Node]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, n) in nodes.iter().enumerate() {
        if request.admits(n) {
            let u = n.utilisation();
            if best.is_none_or(|(_, b)| u < b) {
                best = Some((i, u));
            }
        }
    }
    best.map(|(i, _)| i)
}

/// OpenWhisk's sharding load balancer: a function hashes to a home node; the others are
/// probed by a step size coprime with the node count, and the first eligible node with room
/// wins. Consistent per function (warm images and containers stay on a few nodes), O(1)
/// expected per decision while the cluster is not full.
///
/// Routing does the same over instances, so pass instances in a stable order (for example
/// sorted by id). Unlike OpenWhisk, when every node or instance is full this does not pick a
/// random overloaded one: placement fails with [`Error::Unavailable`] and routing answers
/// `None`, so the caller can queue or scale.
#[derive(Debug, Default, Clone, Copy)]
pub struct HashSharding;

impl HashSharding {
    /// The hash-sharding strategy.
    pub fn new() -> Self {
        HashSharding
    }
}

impl Scheduler for HashSharding {
    fn place(&self, request: &PlacementRequest<'_>, nodes: &[Node]) -> Result<usize> {
        probe(fn_hash(request.function), nodes.len(), |i| request.admits(&nodes[i]))
            .ok_or_else(|| request.unplaceable(nodes))
    }

    fn route(&self, function: &FunctionRef, instances: &[InstanceView]) -> Option<usize> {
        probe(fn_hash(function), instances.len(), |i| instances[i].has_capacity())
    }

    fn name(&self) -> &str {
        "hash"
    }
}

/// Power of two choices: sample two random eligible nodes (instances) and take the less
/// utilised (fewer in flight). Nearly as balanced as least-loaded at O(1) per decision; falls
/// back to a full scan when random samples keep missing (tight constraints, a full cluster).
#[derive(Debug)]
pub struct TwoChoices {
    rng: Rng,
}

impl Default for TwoChoices {
    fn default() -> Self {
        Self::new()
    }
}

impl TwoChoices {
    /// Random samples tried before falling back to a scan.
    const SAMPLES: usize = 16;

    /// Seeded randomly.
    pub fn new() -> Self {
        Self::with_seed(rand::random())
    }

    /// Seeded, for reproducible simulations and tests.
    pub fn with_seed(seed: u64) -> Self {
        TwoChoices { rng: Rng::new(seed) }
    }
}

impl Scheduler for TwoChoices {
    fn place(&self, request: &PlacementRequest<'_>, nodes: &[Node]) -> Result<usize> {
        let n = nodes.len();
        let mut best: Option<(usize, f64)> = None;
        let mut found = 0;
        if n > 0 {
            for _ in 0..Self::SAMPLES {
                let i = reduce(self.rng.next(), n);
                let node = &nodes[i];
                if request.admits(node) {
                    let u = node.utilisation();
                    if best.is_none_or(|(_, b)| u < b) {
                        best = Some((i, u));
                    }
                    found += 1;
                    if found == 2 {
                        break;
                    }
                }
            }
        }
        best.map(|(i, _)| i)
            .or_else(|| least_utilised(request, nodes))
            .ok_or_else(|| request.unplaceable(nodes))
    }

    fn route(&self, _function: &FunctionRef, instances: &[InstanceView]) -> Option<usize> {
        let n = instances.len();
        if n == 0 {
            return None;
        }
        let mut best: Option<(usize, u32)> = None;
        let mut found = 0;
        for _ in 0..Self::SAMPLES {
            let i = reduce(self.rng.next(), n);
            let inst = &instances[i];
            if inst.has_capacity() {
                if best.is_none_or(|(_, b)| inst.in_flight < b) {
                    best = Some((i, inst.in_flight));
                }
                found += 1;
                if found == 2 {
                    break;
                }
            }
        }
        best.map(|(i, _)| i).or_else(|| {
            instances
                .iter()
                .enumerate()
                .filter(|(_, x)| x.has_capacity())
                .min_by_key(|(_, x)| x.in_flight)
                .map(|(i, _)| i)
        })
    }

    fn name(&self) -> &str {
        "two-choices"
    }
}

/// Best-fit bin packing: place on the eligible node that is left with the least free room
/// (summed over slots, CPU and memory as fractions of capacity), so that large instances
/// still find empty nodes and idle nodes can be drained. Routes to the busiest instance that
/// still has room, so the others go idle and can be scaled down.
#[derive(Debug, Default, Clone, Copy)]
pub struct BestFit;

impl BestFit {
    /// The best-fit strategy.
    pub fn new() -> Self {
        BestFit
    }
}

fn leftover(node: &Node, need: &super::Capacity) -> f64 {
    let c = &node.capacity;
    let a = node.allocated.saturating_add(*need);
    let mut s = 0f64;
    if c.slots > 0 {
        s += f64::from(c.slots.saturating_sub(a.slots)) / f64::from(c.slots);
    }
    if c.cpu_millis > 0 {
        s += c.cpu_millis.saturating_sub(a.cpu_millis) as f64 / c.cpu_millis as f64;
    }
    if c.memory_bytes > 0 {
        s += c.memory_bytes.saturating_sub(a.memory_bytes) as f64 / c.memory_bytes as f64;
    }
    s
}

impl Scheduler for BestFit {
    fn place(&self, request: &PlacementRequest<'_>, nodes: &[Node]) -> Result<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, n) in nodes.iter().enumerate() {
            if request.admits(n) {
                let l = leftover(n, &request.need);
                if best.is_none_or(|(_, b)| l < b) {
                    best = Some((i, l));
                }
            }
        }
        best.map(|(i, _)| i).ok_or_else(|| request.unplaceable(nodes))
    }

    fn route(&self, _function: &FunctionRef, instances: &[InstanceView]) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for (i, x) in instances.iter().enumerate() {
            if x.has_capacity() && best.is_none_or(|(_, b)| x.in_flight > b) {
                best = Some((i, x.in_flight));
            }
        }
        best.map(|(i, _)| i)
    }

    fn name(&self) -> &str {
        "best-fit"
    }
}

/// Spread: place on the eligible node with the lowest utilisation ratio after placement
/// (so a Raspberry Pi and a cloud VM fill up proportionally, not by absolute free room),
/// ties broken from a per-function offset so the replicas of one function land on different
/// nodes. [`Spread::across`] first balances across the values of a label (a zone, a rack).
/// Routes round robin over the instances with room.
#[derive(Debug, Default)]
pub struct Spread {
    by: Option<String>,
    next: AtomicUsize,
}

impl Spread {
    /// Spread across nodes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spread across the values of the node label `key` first (nodes without it form one
    /// group), then across nodes within the chosen group.
    pub fn across(key: impl Into<String>) -> Self {
        Spread { by: Some(key.into()), next: AtomicUsize::new(0) }
    }
}

/// Per label value: allocated slots, capacity slots, best node and its utilisation after.
type Group = (u64, u64, Option<(usize, f64)>);

impl Scheduler for Spread {
    fn place(&self, request: &PlacementRequest<'_>, nodes: &[Node]) -> Result<usize> {
        let n = nodes.len();
        if n == 0 {
            return Err(request.unplaceable(nodes));
        }
        let offset = reduce(fn_hash(request.function), n);
        let need = request.need;
        let after =
            |node: &Node| utilisation_of(&node.allocated.saturating_add(need), &node.capacity);
        let Some(key) = &self.by else {
            let mut best: Option<(usize, f64)> = None;
            for k in 0..n {
                let i = if offset + k >= n { offset + k - n } else { offset + k };
                let node = &nodes[i];
                if request.admits(node) {
                    let u = after(node);
                    if best.is_none_or(|(_, b)| u < b) {
                        best = Some((i, u));
                    }
                }
            }
            return best.map(|(i, _)| i).ok_or_else(|| request.unplaceable(nodes));
        };
        // Per group: (allocated slots, capacity slots, best node, its utilisation after).
        let mut groups: HashMap<&str, Group> = HashMap::new();
        for k in 0..n {
            let i = if offset + k >= n { offset + k - n } else { offset + k };
            let node = &nodes[i];
            if !request.eligible(node) {
                continue;
            }
            let g = groups.entry(node.label_value(key).unwrap_or("")).or_default();
            g.0 += u64::from(node.allocated.slots);
            g.1 += u64::from(node.capacity.slots);
            if node.fits(&need) {
                let u = after(node);
                if g.2.is_none_or(|(_, b)| u < b) {
                    g.2 = Some((i, u));
                }
            }
        }
        groups
            .into_iter()
            .filter_map(|(name, (a, c, best))| {
                best.map(|(i, _)| (a as f64 / (c.max(1)) as f64, name, i))
            })
            .min_by(|x, y| x.0.total_cmp(&y.0).then_with(|| x.1.cmp(y.1)))
            .map(|(_, _, i)| i)
            .ok_or_else(|| request.unplaceable(nodes))
    }

    fn route(&self, _function: &FunctionRef, instances: &[InstanceView]) -> Option<usize> {
        let n = instances.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|k| (start + k) % n).find(|&i| instances[i].has_capacity())
    }

    fn name(&self) -> &str {
        "spread"
    }
}

/// Warm-instance affinity: route each function to a sticky instance chosen by rendezvous
/// hashing of the function and the instance ids (stable as instances come and go), with
/// bounded load: an instance is skipped while it has more than 1.25 times its fair share of
/// the function's in-flight invocations. Invocations keep hitting warm instances (caches,
/// JIT, connections), and surplus instances go idle so the autoscaler can remove them.
/// Placement uses the hash home node, like [`HashSharding`], so images stay cached on a few
/// nodes.
#[derive(Debug, Default, Clone, Copy)]
pub struct WarmAffinity;

impl WarmAffinity {
    /// The warm-affinity strategy.
    pub fn new() -> Self {
        WarmAffinity
    }
}

impl Scheduler for WarmAffinity {
    fn place(&self, request: &PlacementRequest<'_>, nodes: &[Node]) -> Result<usize> {
        HashSharding.place(request, nodes)
    }

    fn route(&self, function: &FunctionRef, instances: &[InstanceView]) -> Option<usize> {
        let (mut k, mut total) = (0u64, 1u64);
        for x in instances.iter().filter(|x| x.has_capacity()) {
            k += 1;
            total += u64::from(x.in_flight);
        }
        if k == 0 {
            return None;
        }
        // ceil(1.25 * total / k)
        let bound = (5 * total).div_ceil(4 * k);
        let fh = fn_hash(function);
        let mut best: Option<(usize, u64)> = None;
        for (i, x) in instances.iter().enumerate() {
            if x.has_capacity() && u64::from(x.in_flight) < bound {
                let score = mix(fh ^ str_hash(&x.id));
                if best.is_none_or(|(_, b)| score > b) {
                    best = Some((i, score));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    fn name(&self) -> &str {
        "warm-affinity"
    }
}

/// The built-in strategies, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Strategy {
    /// [`HashSharding`] (`hash`, also `openwhisk`, `sharding`).
    Hash,
    /// [`LeastLoaded`] (`least-loaded`), the default.
    #[default]
    LeastLoaded,
    /// [`TwoChoices`] (`two-choices`, also `p2c`, `power-of-two`).
    TwoChoices,
    /// [`BestFit`] (`best-fit`, also `binpack`, `bin-packing`).
    BestFit,
    /// [`Spread`] (`spread`).
    Spread,
    /// [`WarmAffinity`] (`warm-affinity`, also `affinity`).
    WarmAffinity,
}

impl Strategy {
    /// Every built-in strategy.
    pub const ALL: [Strategy; 6] = [
        Strategy::Hash,
        Strategy::LeastLoaded,
        Strategy::TwoChoices,
        Strategy::BestFit,
        Strategy::Spread,
        Strategy::WarmAffinity,
    ];

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Hash => "hash",
            Strategy::LeastLoaded => "least-loaded",
            Strategy::TwoChoices => "two-choices",
            Strategy::BestFit => "best-fit",
            Strategy::Spread => "spread",
            Strategy::WarmAffinity => "warm-affinity",
        }
    }

    /// Parses a name (case-insensitive; `_` and `-` alike): `hash` (`openwhisk`,
    /// `sharding`), `least-loaded`, `two-choices` (`p2c`, `power-of-two`), `best-fit`
    /// (`binpack`, `bin-packing`), `spread`, `warm-affinity` (`affinity`). The error is an
    /// [`Error::InvalidSpec`] for field `scheduler` listing the valid names.
    pub fn parse(name: &str) -> Result<Strategy> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match n.as_str() {
            "hash" | "openwhisk" | "sharding" | "hash-sharding" => Strategy::Hash,
            "least-loaded" | "leastloaded" => Strategy::LeastLoaded,
            "two-choices" | "p2c" | "power-of-two" | "power-of-two-choices" => Strategy::TwoChoices,
            "best-fit" | "bestfit" | "binpack" | "bin-packing" => Strategy::BestFit,
            "spread" => Strategy::Spread,
            "warm-affinity" | "affinity" | "warm" => Strategy::WarmAffinity,
            _ => {
                return Err(Error::invalid(
                    "scheduler",
                    format!(
                        "{name:?} is not a scheduling strategy; use one of hash, least-loaded, \
                         two-choices, best-fit, spread, warm-affinity"
                    ),
                ))
            }
        })
    }

    /// A new scheduler of this strategy (randomised strategies seeded randomly).
    pub fn build(self) -> Arc<dyn Scheduler> {
        match self {
            Strategy::Hash => Arc::new(HashSharding),
            Strategy::LeastLoaded => Arc::new(LeastLoaded::new()),
            Strategy::TwoChoices => Arc::new(TwoChoices::new()),
            Strategy::BestFit => Arc::new(BestFit),
            Strategy::Spread => Arc::new(Spread::new()),
            Strategy::WarmAffinity => Arc::new(WarmAffinity),
        }
    }

    /// A new scheduler of this strategy; randomised strategies use `seed` (reproducible).
    pub fn build_seeded(self, seed: u64) -> Arc<dyn Scheduler> {
        match self {
            Strategy::TwoChoices => Arc::new(TwoChoices::with_seed(seed)),
            other => other.build(),
        }
    }

    /// The strategy a function's labels select with [`SCHEDULER_LABEL`], if any. A bad value
    /// gives [`Error::InvalidSpec`] for field `labels.com.faas-rs.scheduler`.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<Option<Strategy>> {
        labels
            .get(SCHEDULER_LABEL)
            .map(|v| {
                Strategy::parse(v).map_err(|e| match e {
                    Error::InvalidSpec { reason, .. } => {
                        Error::invalid(format!("labels.{SCHEDULER_LABEL}"), reason)
                    }
                    other => other,
                })
            })
            .transpose()
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Strategy> {
        Strategy::parse(s)
    }
}

/// A scheduler by strategy name (see [`Strategy::parse`]).
pub fn scheduler_for(name: &str) -> Result<Arc<dyn Scheduler>> {
    Ok(Strategy::parse(name)?.build())
}

/// A backend's schedulers: a default for every function, and one shared instance of each
/// built-in strategy for functions that choose their own with the label [`SCHEDULER_LABEL`].
///
/// ```
/// use std::sync::Arc;
/// use faas_core::scheduler::{Schedulers, Strategy, SCHEDULER_LABEL};
/// use faas_core::FunctionSpec;
///
/// let schedulers = Schedulers::new(Strategy::Hash.build());
/// let spec = FunctionSpec::new("f", "img").label(SCHEDULER_LABEL, "two-choices");
/// assert_eq!(schedulers.for_spec(&spec).unwrap().name(), "two-choices");
/// assert_eq!(schedulers.for_spec(&FunctionSpec::new("g", "img")).unwrap().name(), "hash");
/// ```
#[derive(Clone)]
pub struct Schedulers {
    default: Arc<dyn Scheduler>,
    builtin: Arc<[Arc<dyn Scheduler>]>,
}

impl Default for Schedulers {
    fn default() -> Self {
        Schedulers::new(Arc::new(LeastLoaded::new()))
    }
}

impl fmt::Debug for Schedulers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedulers").field("default", &self.default.name()).finish()
    }
}

impl Schedulers {
    /// `default` for functions without the label.
    pub fn new(default: Arc<dyn Scheduler>) -> Self {
        Schedulers { default, builtin: Strategy::ALL.iter().map(|s| s.build()).collect() }
    }

    /// The default scheduler.
    pub fn default_scheduler(&self) -> &Arc<dyn Scheduler> {
        &self.default
    }

    /// The shared scheduler of a strategy.
    pub fn get(&self, strategy: Strategy) -> Arc<dyn Scheduler> {
        let i = Strategy::ALL.iter().position(|s| *s == strategy).unwrap_or(1);
        self.builtin[i].clone()
    }

    /// The scheduler labels select, or the default. A bad label value gives
    /// [`Error::InvalidSpec`] naming the label (call at deploy time to reject it).
    pub fn for_labels(&self, labels: &BTreeMap<String, String>) -> Result<Arc<dyn Scheduler>> {
        Ok(match Strategy::from_labels(labels)? {
            Some(s) => self.get(s),
            None => self.default.clone(),
        })
    }

    /// The scheduler for a function spec ([`Self::for_labels`] of its labels).
    pub fn for_spec(&self, spec: &FunctionSpec) -> Result<Arc<dyn Scheduler>> {
        self.for_labels(&spec.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{check_placement, Capacity, Constraint};
    use super::*;

    const GB: u64 = 1 << 30;
    const MB: u64 = 1 << 20;

    fn node(id: &str, arch: &str, slots: u32) -> Node {
        Node::new(id, arch, Capacity::new(4000, 8 * GB, slots))
    }

    fn inst(id: &str, in_flight: u32) -> InstanceView {
        InstanceView { id: id.into(), node: None, in_flight, max_concurrency: Some(4), ready: true }
    }

    fn cluster(n: usize) -> Vec<Node> {
        (0..n).map(|i| node(&format!("n{i}"), "amd64", 8)).collect()
    }

    #[test]
    fn coprime_probe_visits_every_index_once() {
        for n in [1usize, 2, 3, 4, 6, 10, 12, 97, 100, 1000] {
            for h in [0u64, 1, 42, u64::MAX, 0xdead_beef] {
                let mut seen = vec![0u32; n];
                let r = probe(h, n, |i| {
                    seen[i] += 1;
                    false
                });
                assert_eq!(r, None);
                assert!(seen.iter().all(|&c| c == 1), "n={n} h={h}: {seen:?}");
            }
        }
    }

    #[test]
    fn hash_is_sticky_and_skips_full_nodes() {
        let s = HashSharding::new();
        let f = FunctionRef::default_ns("resize");
        let need = Capacity::new(100, 128 * MB, 1);
        let req = PlacementRequest::new(&f, need);
        let mut nodes = cluster(10);
        let home = s.place(&req, &nodes).unwrap();
        assert_eq!(s.place(&req, &nodes).unwrap(), home, "same function, same home");
        // Different functions spread over several homes.
        let homes: std::collections::BTreeSet<usize> = (0..50)
            .map(|i| {
                let g = FunctionRef::default_ns(format!("fn-{i}"));
                s.place(&PlacementRequest::new(&g, need), &nodes).unwrap()
            })
            .collect();
        assert!(homes.len() >= 5, "{homes:?}");
        // A full home node sends it to the next probe, deterministically.
        nodes[home].allocated.slots = 8;
        let second = s.place(&req, &nodes).unwrap();
        assert_ne!(second, home);
        assert_eq!(s.place(&req, &nodes).unwrap(), second);
        // All full: unavailable, not invalid.
        for n in &mut nodes {
            n.allocated.slots = 8;
        }
        assert!(matches!(s.place(&req, &nodes), Err(Error::Unavailable { .. })));
        // Routing: home instance until it is full.
        let insts: Vec<_> = (0..5).map(|i| inst(&format!("i{i}"), 0)).collect();
        let r = s.route(&f, &insts).unwrap();
        let mut insts2 = insts.clone();
        insts2[r].in_flight = 4;
        let r2 = s.route(&f, &insts2).unwrap();
        assert_ne!(r2, r);
        assert_eq!(s.route(&f, &insts).unwrap(), r);
        assert_eq!(s.route(&f, &[]), None);
    }

    #[test]
    fn two_choices_prefers_less_utilised_and_respects_constraints() {
        let s = TwoChoices::with_seed(7);
        let f = FunctionRef::default_ns("f");
        let need = Capacity::new(0, 0, 1);
        let mut nodes = cluster(2);
        nodes[0].allocated.slots = 6;
        let req = PlacementRequest::new(&f, need);
        // With two nodes both are almost always sampled; the emptier one wins.
        let picks: Vec<usize> = (0..100).map(|_| s.place(&req, &nodes).unwrap()).collect();
        assert!(picks.iter().filter(|&&i| i == 1).count() >= 70, "{picks:?}");
        // One eligible node out of many: found by sampling or the fallback scan.
        let mut big = cluster(1000);
        big[777] = big[777].clone().label("type", "rpi");
        let rpi = [Constraint::parse("type=rpi").unwrap()];
        let req = PlacementRequest::new(&f, need).with_constraints(&rpi);
        for _ in 0..20 {
            assert_eq!(s.place(&req, &big).unwrap(), 777);
        }
        let gpu = [Constraint::parse("node.labels.gpu == yes").unwrap()];
        let err = s.place(&PlacementRequest::new(&f, need).with_constraints(&gpu), &big);
        assert!(matches!(err, Err(Error::InvalidSpec { ref field, .. }) if field == "constraints"));
        // Routing: the less busy of two.
        let insts = vec![inst("a", 3), inst("b", 0)];
        let picks: Vec<_> = (0..100).map(|_| s.route(&f, &insts).unwrap()).collect();
        assert!(picks.iter().filter(|&&i| i == 1).count() >= 70);
        let full = vec![inst("a", 4), inst("b", 4)];
        assert_eq!(s.route(&f, &full), None);
        // Same seed, same decisions.
        let (a, b) = (TwoChoices::with_seed(3), TwoChoices::with_seed(3));
        let nodes = cluster(100);
        let req = PlacementRequest::new(&f, need);
        for _ in 0..50 {
            assert_eq!(a.place(&req, &nodes).unwrap(), b.place(&req, &nodes).unwrap());
        }
    }

    #[test]
    fn best_fit_packs() {
        let s = BestFit::new();
        let f = FunctionRef::default_ns("f");
        let need = Capacity::new(500, 512 * MB, 1);
        let nodes = vec![
            node("empty", "amd64", 8),
            node("half", "amd64", 8).with_allocated(Capacity::new(2000, 4 * GB, 4)),
            node("nearly", "amd64", 8).with_allocated(Capacity::new(3500, 7 * GB, 7)),
            node("full", "amd64", 8).with_allocated(Capacity::new(3900, 8 * GB, 8)),
        ];
        let req = PlacementRequest::new(&f, need);
        assert_eq!(s.place(&req, &nodes).unwrap(), 2, "the tightest node that fits");
        let big = Capacity::new(1000, 2 * GB, 1);
        assert_eq!(s.place(&PlacementRequest::new(&f, big), &nodes).unwrap(), 1);
        let insts = vec![inst("a", 1), inst("b", 3), inst("c", 4), inst("d", 0)];
        assert_eq!(s.route(&f, &insts), Some(1), "busiest with room");
    }

    #[test]
    fn spread_balances_utilisation_and_zones() {
        let f = FunctionRef::default_ns("f");
        let need = Capacity::new(0, 0, 1);
        // A Pi with 4 slots, one used (25%), and a VM with 32 slots, 16 used (50%):
        // least-loaded picks the VM (more free slots), spread the Pi (lower ratio).
        let nodes = vec![
            node("pi", "arm64", 4).with_allocated(Capacity::new(0, 0, 1)),
            node("vm", "amd64", 32).with_allocated(Capacity::new(0, 0, 16)),
        ];
        let req = PlacementRequest::new(&f, need);
        assert_eq!(Spread::new().place(&req, &nodes).unwrap(), 0);
        assert_eq!(LeastLoaded::new().place(&req, &nodes).unwrap(), 1);
        // Zones: a busy zone with an empty node loses to a lighter zone.
        let nodes = vec![
            node("a1", "amd64", 8).label("zone", "a").with_allocated(Capacity::new(0, 0, 7)),
            node("a2", "amd64", 8).label("zone", "a"),
            node("b1", "amd64", 8).label("zone", "b").with_allocated(Capacity::new(0, 0, 3)),
        ];
        assert_eq!(Spread::new().place(&req, &nodes).unwrap(), 1);
        assert_eq!(Spread::across("zone").place(&req, &nodes).unwrap(), 2);
        // Placing one by one fills nodes evenly.
        let mut nodes = cluster(4);
        let s = Spread::new();
        for _ in 0..8 {
            let i = s.place(&req, &nodes).unwrap();
            nodes[i].allocate(&need);
        }
        assert!(nodes.iter().all(|n| n.allocated.slots == 2), "{nodes:?}");
        // Round robin routing.
        let insts = vec![inst("a", 0), inst("b", 0), inst("c", 4)];
        let picks: Vec<_> = (0..4).map(|_| s.route(&f, &insts).unwrap()).collect();
        assert!(picks.contains(&0) && picks.contains(&1) && !picks.contains(&2), "{picks:?}");
    }

    #[test]
    fn warm_affinity_is_sticky_with_bounded_load() {
        let s = WarmAffinity::new();
        let f = FunctionRef::default_ns("thumbnail");
        let mut insts: Vec<_> = (0..4).map(|i| inst(&format!("i{i}"), 0)).collect();
        insts.iter_mut().for_each(|i| i.max_concurrency = None);
        let home = s.route(&f, &insts).unwrap();
        // Stable when unrelated instances come and go, whatever their order.
        let mut shuffled = insts.clone();
        shuffled.reverse();
        shuffled.push(InstanceView { id: "new".into(), ..insts[0].clone() });
        let again = s.route(&f, &shuffled).unwrap();
        assert!(shuffled[again].id == insts[home].id || shuffled[again].id == "new");
        // Load: simulate 40 concurrent invocations, no instance exceeds 1.25x fair share.
        for _ in 0..40 {
            let i = s.route(&f, &insts).unwrap();
            insts[i].in_flight += 1;
        }
        assert!(insts.iter().all(|i| i.in_flight <= 13), "{insts:?}");
        // Sticky at low load: sequential calls (in flight back to 0) go to one instance.
        let idle: Vec<_> = (0..4).map(|i| inst(&format!("i{i}"), 0)).collect();
        let first = s.route(&f, &idle).unwrap();
        assert!((0..10).all(|_| s.route(&f, &idle) == Some(first)));
    }

    #[test]
    fn strategy_names_labels_and_registry() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.name()).unwrap(), s);
            assert_eq!(s.build().name(), s.name());
            assert_eq!(scheduler_for(&s.to_string()).unwrap().name(), s.name());
        }
        assert_eq!("P2C".parse::<Strategy>().unwrap(), Strategy::TwoChoices);
        assert_eq!(Strategy::parse("openwhisk").unwrap(), Strategy::Hash);
        assert_eq!(Strategy::parse("bin_packing").unwrap(), Strategy::BestFit);
        let err = scheduler_for("random").err().unwrap().to_string();
        assert!(err.contains("two-choices"), "{err}");
        let reg = Schedulers::default();
        assert_eq!(reg.default_scheduler().name(), "least-loaded");
        let spec = FunctionSpec::new("f", "img").label(SCHEDULER_LABEL, "best-fit");
        assert_eq!(reg.for_spec(&spec).unwrap().name(), "best-fit");
        let bad = FunctionSpec::new("f", "img").label(SCHEDULER_LABEL, "fastest");
        match reg.for_spec(&bad) {
            Err(Error::InvalidSpec { field, .. }) => {
                assert_eq!(field, "labels.com.faas-rs.scheduler")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arch_and_constraints_on_a_mixed_cluster() {
        let nodes = vec![
            node("cloud-1", "x86_64", 16).label("type", "cloud"),
            node("pi4", "aarch64", 4).label("type", "rpi"),
            node("pi3", "armv7l", 4).label("type", "rpi"),
            node("pi-dead", "arm64", 4).label("type", "rpi").label("gpu", "yes").unhealthy(),
        ];
        let f = FunctionRef::default_ns("f");
        let need = Capacity::new(100, 64 * MB, 1);
        let arm7 = vec!["linux/arm/v7".to_string()];
        for s in Strategy::ALL {
            let sched = s.build_seeded(1);
            let req = PlacementRequest::new(&f, need).with_platforms(&arm7);
            assert_eq!(sched.place(&req, &nodes).unwrap(), 2, "{s}");
            let c = [Constraint::parse("node.platform.arch == arm64").unwrap()];
            let req = PlacementRequest::new(&f, need).with_constraints(&c);
            assert_eq!(sched.place(&req, &nodes).unwrap(), 1, "{s}");
            let c = [Constraint::parse("node.labels.type != rpi").unwrap()];
            let req = PlacementRequest::new(&f, need).with_constraints(&c);
            assert_eq!(sched.place(&req, &nodes).unwrap(), 0, "{s}");
            let c = [Constraint::parse("node.hostname == pi4").unwrap()];
            let req = PlacementRequest::new(&f, need).with_constraints(&c);
            assert_eq!(sched.place(&req, &nodes).unwrap(), 1, "{s}");
        }
        // Deploy-time rejection names what no node meets.
        let reject = |spec: FunctionSpec| match check_placement(&spec, &nodes) {
            Err(Error::InvalidSpec { field, reason }) => (field, reason),
            other => panic!("{other:?}"),
        };
        let (field, reason) = reject(
            FunctionSpec::new("f", "img")
                .label("x", "y")
                .with_constraints(&["type=rpi", "node.labels.gpu == yes"]),
        );
        assert_eq!(field, "constraints");
        assert!(reason.contains("node.labels.gpu == yes"), "{reason}");
        let (field, reason) =
            reject(FunctionSpec::new("f", "img").with_constraints(&["type=cloud", "arch=arm64"]));
        assert_eq!(field, "constraints");
        assert!(reason.contains("together"), "{reason}");
        let mut riscv = FunctionSpec::new("f", "img");
        riscv.platforms = vec!["linux/riscv64".into()];
        assert_eq!(reject(riscv).0, "platforms");
        let mut huge = FunctionSpec::new("f", "img").with_constraints(&["type=rpi"]);
        huge.requests = Some(crate::spec::Resources { memory: Some("64Gi".into()), cpu: None });
        assert_eq!(reject(huge).0, "requests");
        let (field, _) = reject(FunctionSpec::new("f", "img").with_constraints(&["nonsense"]));
        assert_eq!(field, "constraints[0]");
        let mut ok = FunctionSpec::new("f", "img").with_constraints(&["type=rpi"]);
        ok.platforms = vec!["linux/arm64".into(), "linux/arm/v7".into()];
        check_placement(&ok, &nodes).unwrap();
    }

    trait WithConstraints {
        fn with_constraints(self, c: &[&str]) -> Self;
    }
    impl WithConstraints for FunctionSpec {
        fn with_constraints(mut self, c: &[&str]) -> Self {
            self.constraints = c.iter().map(|s| s.to_string()).collect();
            self
        }
    }
}

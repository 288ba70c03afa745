//! Placement and routing decisions: pure, synchronous, no I/O, so they can be tested and
//! benchmarked alone.
//!
//! A [`Scheduler`] answers two questions: on which node should a new instance of a function
//! start ([`Scheduler::place`]), and which running instance should serve an invocation
//! ([`Scheduler::route`]).
//!
//! # The cluster model
//!
//! A [`Node`] has labels, an architecture (`amd64`, `arm64`, `arm/v7`; spellings such as
//! `x86_64`, `aarch64` or `armhf` are normalised by [`normalize_arch`]), a capacity and an
//! allocation (CPU millicores, memory bytes, instance slots: [`Capacity`]) and a health flag.
//! A function's image declares the platforms it supports ([`crate::FunctionSpec::platforms`]).
//!
//! # Constraints
//!
//! Both syntaxes users write are accepted ([`Constraint::parse`]): Swarm style
//! `node.labels.type == rpi`, `node.labels.type != rpi`, and nodeSelector style `type=rpi`.
//! `node.platform.arch` / `arch` / `kubernetes.io/arch` match the node's architecture and
//! `node.hostname` / `node.id` / `kubernetes.io/hostname` its id, even without such a label
//! ([`Node::label_value`]). A node is eligible when it is healthy, meets every constraint and
//! its architecture is one the image supports; it must also have room for the instance.
//! [`check_placement`] rejects an unsatisfiable spec at deploy time with an
//! [`Error::InvalidSpec`] naming the constraint no node meets.
//!
//! # Strategies
//!
//! Every strategy implements [`Scheduler`]; pick one by name with [`scheduler_for`] or
//! [`Strategy`], per backend (a backend builder takes an `Arc<dyn Scheduler>`) or per function
//! with the label [`SCHEDULER_LABEL`] (`com.faas-rs.scheduler`), resolved by [`Schedulers`]:
//!
//! | name | placement | routing |
//! |---|---|---|
//! | `hash` ([`HashSharding`]) | OpenWhisk: hash to a home node, probe by a coprime step, first with room | the same over instances |
//! | `least-loaded` ([`LeastLoaded`]) | most free slots | fewest in flight |
//! | `two-choices` ([`TwoChoices`]) | two random eligible nodes, the less utilised | two random instances, fewer in flight |
//! | `best-fit` ([`BestFit`]) | tightest fit (bin packing) | busiest instance with room (packing) |
//! | `spread` ([`Spread`]) | lowest utilisation ratio, optionally balanced across a label (zone) | round robin |
//! | `warm-affinity` ([`WarmAffinity`]) | hash home node (image caches stay warm) | rendezvous hash to a sticky warm instance |

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::invocation::FunctionRef;
use crate::spec::FunctionSpec;

mod strategies;

pub use strategies::{
    fn_hash, scheduler_for, BestFit, HashSharding, Schedulers, Spread, Strategy, TwoChoices,
    WarmAffinity, SCHEDULER_LABEL,
};

/// A placement constraint as users write them: `node.labels.type == rpi`,
/// `node.labels.type != rpi`, or nodeSelector style `type=rpi`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Constraint {
    /// The node label `key` must equal `value`.
    Eq {
        /// Label key.
        key: String,
        /// Required value.
        value: String,
    },
    /// The node label `key` must be absent or differ from `value`.
    Ne {
        /// Label key.
        key: String,
        /// Excluded value.
        value: String,
    },
}

impl Constraint {
    /// Parses either syntax. Swarm's `node.labels.` prefix is optional; `node.platform.arch`
    /// and `node.platform.os` are matched against the node's `kubernetes.io/arch`-style
    /// labels by the scheduler (`arch` / `os`).
    pub fn parse(s: &str) -> std::result::Result<Constraint, String> {
        let t = s.trim();
        let (k, v, eq) = if let Some((k, v)) = t.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = t.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = t.split_once('=') {
            (k, v, true)
        } else {
            return Err(format!(
                "{s:?} is not a constraint; write `node.labels.KEY == VALUE`, `!=`, or `KEY=VALUE`"
            ));
        };
        let key = k.trim();
        let key = key.strip_prefix("node.labels.").unwrap_or(key);
        let key = match key {
            "node.platform.arch" => "arch",
            "node.platform.os" => "os",
            other => other,
        };
        let value = v.trim().trim_matches('"');
        if key.is_empty() || value.is_empty() {
            return Err(format!("{s:?} needs both a label key and a value"));
        }
        if key.chars().any(char::is_whitespace) || value.chars().any(char::is_whitespace) {
            return Err(format!("{s:?}: keys and values cannot contain spaces"));
        }
        Ok(if eq {
            Constraint::Eq { key: key.to_string(), value: value.to_string() }
        } else {
            Constraint::Ne { key: key.to_string(), value: value.to_string() }
        })
    }

    /// Whether a node with `labels` satisfies this constraint.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Constraint::Eq { key, value } => labels.get(key) == Some(value),
            Constraint::Ne { key, value } => labels.get(key) != Some(value),
        }
    }

    /// Whether `node` satisfies this constraint, looking keys up with [`Node::label_value`]
    /// (so `arch` and `node.hostname` work without such labels). Architecture values are
    /// compared normalised (`aarch64` equals `arm64`).
    pub fn matches_node(&self, node: &Node) -> bool {
        let (key, value, eq) = match self {
            Constraint::Eq { key, value } => (key, value, true),
            Constraint::Ne { key, value } => (key, value, false),
        };
        let found = match node.label_value(key) {
            Some(v) if is_arch_key(key) => normalize_arch(v) == normalize_arch(value),
            Some(v) => v == value,
            None => false,
        };
        found == eq
    }

    /// The label key.
    pub fn key(&self) -> &str {
        match self {
            Constraint::Eq { key, .. } | Constraint::Ne { key, .. } => key,
        }
    }
}

fn is_arch_key(key: &str) -> bool {
    matches!(key, "arch" | "kubernetes.io/arch" | "beta.kubernetes.io/arch")
}

/// Normalises an architecture name: `x86_64` and `amd64` give `amd64`; `aarch64`, `arm64`
/// and `arm64/v8` give `arm64`; `arm`, `armv7`, `armv7l`, `armhf` and `arm/v7` give `arm/v7`;
/// `armv6`, `armv6l` and `arm/v6` give `arm/v6`. Anything else is returned as it is. A
/// `linux/` prefix is ignored.
pub fn normalize_arch(arch: &str) -> &str {
    let a = arch.strip_prefix("linux/").unwrap_or(arch);
    match a {
        "amd64" | "x86_64" | "x86-64" | "x64" => "amd64",
        "arm64" | "aarch64" | "arm64/v8" | "armv8" | "arm64v8" => "arm64",
        "arm" | "arm/v7" | "armv7" | "armv7l" | "armhf" | "arm32v7" => "arm/v7",
        "arm/v6" | "armv6" | "armv6l" | "armel" | "arm32v6" => "arm/v6",
        "386" | "i386" | "i686" | "x86" => "386",
        other => other,
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Constraint::Eq { key, value } => write!(f, "node.labels.{key} == {value}"),
            Constraint::Ne { key, value } => write!(f, "node.labels.{key} != {value}"),
        }
    }
}

/// Capacity of a node: CPU in millicores, memory in bytes, and instance slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Instance slots.
    pub slots: u32,
}

impl Capacity {
    /// CPU, memory and slots.
    pub const fn new(cpu_millis: u64, memory_bytes: u64, slots: u32) -> Self {
        Capacity { cpu_millis, memory_bytes, slots }
    }

    /// What one instance of `spec` needs: its `requests` (else its `limits`) for CPU and
    /// memory, and one slot. Unset or unparsable quantities count as zero (validate the spec
    /// first for a field-named error).
    pub fn for_spec(spec: &FunctionSpec) -> Self {
        let pick = |f: &dyn Fn(&crate::spec::Resources) -> Option<u64>| {
            spec.requests.as_ref().and_then(f).or_else(|| spec.limits.as_ref().and_then(f))
        };
        Capacity {
            cpu_millis: pick(&|r| r.cpu_millis()).unwrap_or(0),
            memory_bytes: pick(&|r| r.memory_bytes()).unwrap_or(0),
            slots: 1,
        }
    }

    /// Whether every dimension of `need` is at most this one's.
    pub fn covers(&self, need: &Capacity) -> bool {
        need.slots <= self.slots
            && need.cpu_millis <= self.cpu_millis
            && need.memory_bytes <= self.memory_bytes
    }

    /// Component-wise saturating addition.
    pub fn saturating_add(self, o: Capacity) -> Capacity {
        Capacity {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            slots: self.slots.saturating_add(o.slots),
        }
    }

    /// Component-wise saturating subtraction.
    pub fn saturating_sub(self, o: Capacity) -> Capacity {
        Capacity {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            slots: self.slots.saturating_sub(o.slots),
        }
    }
}

/// A node instances can be placed on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Unique id.
    pub id: String,
    /// Labels constraints are matched against.
    pub labels: BTreeMap<String, String>,
    /// Architecture: `amd64`, `arm64`, `arm/v7`...
    pub arch: String,
    /// What the node has.
    pub capacity: Capacity,
    /// What is already allocated on it.
    pub allocated: Capacity,
    /// Whether it accepts new instances.
    pub healthy: bool,
}

impl Node {
    /// A healthy node of `arch` with the given capacity and nothing allocated.
    pub fn new(id: impl Into<String>, arch: impl Into<String>, capacity: Capacity) -> Self {
        Node {
            id: id.into(),
            labels: BTreeMap::new(),
            arch: arch.into(),
            capacity,
            allocated: Capacity::default(),
            healthy: true,
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Free instance slots.
    pub fn free_slots(&self) -> u32 {
        self.capacity.slots.saturating_sub(self.allocated.slots)
    }

    /// Whether `need` fits in what is free.
    pub fn fits(&self, need: &Capacity) -> bool {
        self.allocated.slots.saturating_add(need.slots) <= self.capacity.slots
            && self.allocated.cpu_millis.saturating_add(need.cpu_millis) <= self.capacity.cpu_millis
            && self.allocated.memory_bytes.saturating_add(need.memory_bytes)
                <= self.capacity.memory_bytes
    }

    /// Marks the node unhealthy (builder style).
    pub fn unhealthy(mut self) -> Self {
        self.healthy = false;
        self
    }

    /// Sets what is already allocated (builder style).
    pub fn with_allocated(mut self, allocated: Capacity) -> Self {
        self.allocated = allocated;
        self
    }

    /// Adds `need` to the allocation (an instance started here).
    pub fn allocate(&mut self, need: &Capacity) {
        self.allocated = self.allocated.saturating_add(*need);
    }

    /// Removes `need` from the allocation (an instance stopped here).
    pub fn release(&mut self, need: &Capacity) {
        self.allocated = self.allocated.saturating_sub(*need);
    }

    /// The value of a label, with built-in keys: `arch`, `kubernetes.io/arch` and
    /// `beta.kubernetes.io/arch` give the architecture, `os` and `kubernetes.io/os` give
    /// `linux`, `node.hostname`, `node.id`, `hostname` and `kubernetes.io/hostname` the id,
    /// unless a label of that name is set.
    pub fn label_value(&self, key: &str) -> Option<&str> {
        if let Some(v) = self.labels.get(key) {
            return Some(v);
        }
        match key {
            k if is_arch_key(k) => Some(&self.arch),
            "os" | "kubernetes.io/os" | "beta.kubernetes.io/os" => Some("linux"),
            "node.hostname" | "node.id" | "hostname" | "kubernetes.io/hostname" => Some(&self.id),
            _ => None,
        }
    }

    /// The fraction of the node in use: the largest of allocated/capacity over slots, CPU and
    /// memory (dimensions with zero capacity are ignored). `0.0` empty, `1.0` full.
    pub fn utilisation(&self) -> f64 {
        utilisation_of(&self.allocated, &self.capacity)
    }
}

pub(crate) fn utilisation_of(alloc: &Capacity, cap: &Capacity) -> f64 {
    let mut u = 0f64;
    if cap.slots > 0 {
        u = u.max(alloc.slots as f64 / cap.slots as f64);
    }
    if cap.cpu_millis > 0 {
        u = u.max(alloc.cpu_millis as f64 / cap.cpu_millis as f64);
    }
    if cap.memory_bytes > 0 {
        u = u.max(alloc.memory_bytes as f64 / cap.memory_bytes as f64);
    }
    u
}

/// What a new instance needs.
#[derive(Debug, Clone)]
pub struct PlacementRequest<'a> {
    /// The function.
    pub function: &'a FunctionRef,
    /// Its constraints.
    pub constraints: &'a [Constraint],
    /// Platforms its image supports (`linux/amd64`, `arm64`...); empty = any.
    pub platforms: &'a [String],
    /// Capacity one instance needs.
    pub need: Capacity,
}

impl<'a> PlacementRequest<'a> {
    /// A request for one instance of `function` needing `need`, with no constraints and any
    /// platform.
    pub fn new(function: &'a FunctionRef, need: Capacity) -> Self {
        PlacementRequest { function, constraints: &[], platforms: &[], need }
    }

    /// Sets the constraints.
    pub fn with_constraints(mut self, constraints: &'a [Constraint]) -> Self {
        self.constraints = constraints;
        self
    }

    /// Sets the platforms the image supports.
    pub fn with_platforms(mut self, platforms: &'a [String]) -> Self {
        self.platforms = platforms;
        self
    }
}

impl PlacementRequest<'_> {
    /// Whether `node` is eligible: healthy, constraints met, architecture supported.
    /// Resource fit is checked separately ([`Node::fits`]).
    #[inline]
    pub fn eligible(&self, node: &Node) -> bool {
        node.healthy
            && self.constraints.iter().all(|c| c.matches_node(node))
            && arch_supported(self.platforms, &node.arch)
    }

    /// Whether `node` is eligible and has room for the instance now.
    #[inline]
    pub fn admits(&self, node: &Node) -> bool {
        node.fits(&self.need) && self.eligible(node)
    }

    /// The error when no node can take the instance: an [`Error::InvalidSpec`] naming the
    /// first constraint no healthy node meets (field `constraints`), the platforms no node
    /// has (field `platforms`), constraints no single node meets together, or a need larger
    /// than any eligible node (field `requests`); otherwise [`Error::Unavailable`]: capacity
    /// is exhausted for now.
    pub fn unplaceable(&self, nodes: &[Node]) -> Error {
        match self.satisfiable(nodes) {
            Err(e) => e,
            Ok(()) => Error::Unavailable {
                reason: format!(
                    "no eligible node has free capacity for {} right now",
                    self.function
                ),
            },
        }
    }

    /// Whether some healthy node could ever take the instance (ignoring what is allocated
    /// now). The deploy-time check; see [`Self::unplaceable`] for the errors.
    pub fn satisfiable(&self, nodes: &[Node]) -> Result<()> {
        if nodes.iter().any(|n| self.eligible(n) && n.capacity.covers(&self.need)) {
            return Ok(());
        }
        if !nodes.iter().any(|n| n.healthy) {
            return Err(Error::Unavailable { reason: "the cluster has no healthy node".into() });
        }
        for c in self.constraints {
            if !nodes.iter().any(|n| n.healthy && c.matches_node(n)) {
                return Err(Error::invalid(
                    "constraints",
                    format!("no healthy node satisfies the constraint `{c}`"),
                ));
            }
        }
        if !nodes.iter().any(|n| n.healthy && arch_supported(self.platforms, &n.arch)) {
            return Err(Error::invalid(
                "platforms",
                format!(
                    "no healthy node has an architecture the image supports ({})",
                    self.platforms.join(", ")
                ),
            ));
        }
        if !nodes.iter().any(|n| self.eligible(n)) {
            let all: Vec<String> = self.constraints.iter().map(|c| format!("`{c}`")).collect();
            let plat = if self.platforms.is_empty() {
                String::new()
            } else {
                format!(" on an architecture in [{}]", self.platforms.join(", "))
            };
            return Err(Error::invalid(
                "constraints",
                format!("no healthy node satisfies {} together{plat}", all.join(" and ")),
            ));
        }
        Err(Error::invalid(
            "requests",
            format!(
                "no eligible node is large enough for one instance (needs {} millicores, {} bytes \
                 of memory)",
                self.need.cpu_millis, self.need.memory_bytes
            ),
        ))
    }
}

/// Deploy-time check of `spec` against a cluster: parses its constraints and rejects it with
/// [`Error::InvalidSpec`] (naming the constraint, the platforms or the requests no node
/// meets) if no healthy node could ever run one instance of it.
pub fn check_placement(spec: &FunctionSpec, nodes: &[Node]) -> Result<()> {
    let constraints = spec.parsed_constraints()?;
    let f = spec.function_ref();
    PlacementRequest::new(&f, Capacity::for_spec(spec))
        .with_constraints(&constraints)
        .with_platforms(&spec.platforms)
        .satisfiable(nodes)
}

/// Whether a node architecture is in a list of platforms (`linux/arm64`, `arm64`, `arm/v7`).
/// Spellings are normalised with [`normalize_arch`]; an empty list means any.
#[inline]
pub fn arch_supported(platforms: &[String], arch: &str) -> bool {
    platforms.is_empty() || {
        let a = normalize_arch(arch);
        platforms.iter().any(|p| normalize_arch(p) == a)
    }
}

/// A running instance as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    /// Instance id.
    pub id: String,
    /// The node it runs on, if the backend has nodes.
    pub node: Option<String>,
    /// Invocations in flight on it now.
    pub in_flight: u32,
    /// Its concurrency limit, if any.
    pub max_concurrency: Option<u32>,
    /// Ready to serve (started and healthy).
    pub ready: bool,
}

impl InstanceView {
    /// Whether it can take one more invocation.
    pub fn has_capacity(&self) -> bool {
        self.ready && self.max_concurrency.is_none_or(|m| self.in_flight < m)
    }
}

/// Placement and routing decisions. Pure and synchronous: no I/O, no awaiting.
pub trait Scheduler: Send + Sync + 'static {
    /// Chooses the node (an index into `nodes`) for a new instance.
    fn place(&self, request: &PlacementRequest<'_>, nodes: &[Node]) -> Result<usize>;

    /// Chooses the instance (an index into `instances`) to serve an invocation of `function`;
    /// `None` when no instance has capacity.
    fn route(&self, function: &FunctionRef, instances: &[InstanceView]) -> Option<usize>;

    /// A short name for reports and logs (`least-loaded`, `hash`...).
    fn name(&self) -> &str {
        "custom"
    }
}

impl std::fmt::Debug for dyn Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("name", &self.name()).finish()
    }
}

/// The default scheduler: least-loaded. Places on the eligible node with the most free slots;
/// routes to the ready instance with the fewest in-flight invocations, breaking ties in
/// rotation so equal instances share the load.
#[derive(Debug, Default)]
pub struct LeastLoaded {
    next: AtomicUsize,
}

impl LeastLoaded {
    /// A new least-loaded scheduler.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Scheduler for LeastLoaded {
    fn place(&self, request: &PlacementRequest<'_>, nodes: &[Node]) -> Result<usize> {
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| request.admits(n))
            .max_by_key(|(i, n)| (n.free_slots(), std::cmp::Reverse(*i)))
            .map(|(i, _)| i)
            .ok_or_else(|| request.unplaceable(nodes))
    }

    fn route(&self, _function: &FunctionRef, instances: &[InstanceView]) -> Option<usize> {
        let n = instances.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u32)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let inst = &instances[i];
            if !inst.has_capacity() {
                continue;
            }
            if best.is_none_or(|(_, load)| inst.in_flight < load) {
                best = Some((i, inst.in_flight));
                if inst.in_flight == 0 {
                    break;
                }
            }
        }
        best.map(|(i, _)| i)
    }

    fn name(&self) -> &str {
        "least-loaded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_syntaxes() {
        assert_eq!(
            Constraint::parse("node.labels.type == rpi").unwrap(),
            Constraint::Eq { key: "type".into(), value: "rpi".into() }
        );
        assert_eq!(
            Constraint::parse("type=rpi").unwrap(),
            Constraint::Eq { key: "type".into(), value: "rpi".into() }
        );
        assert_eq!(
            Constraint::parse("node.labels.type != rpi").unwrap(),
            Constraint::Ne { key: "type".into(), value: "rpi".into() }
        );
        assert!(Constraint::parse("rpi").is_err());
        assert!(Constraint::parse("a == ").is_err());
    }

    fn node(id: &str, arch: &str, slots: u32) -> Node {
        Node::new(id, arch, Capacity { cpu_millis: 4000, memory_bytes: 8 << 30, slots })
    }

    #[test]
    fn least_loaded_place_and_route() {
        let f = FunctionRef::default_ns("f");
        let nodes = vec![node("a", "amd64", 2).label("type", "rpi"), node("b", "arm64", 4)];
        let s = LeastLoaded::new();
        let need = Capacity { cpu_millis: 100, memory_bytes: 1 << 20, slots: 1 };
        let any = PlacementRequest { function: &f, constraints: &[], platforms: &[], need };
        assert_eq!(s.place(&any, &nodes).unwrap(), 1);
        let rpi = [Constraint::parse("type=rpi").unwrap()];
        let req = PlacementRequest { constraints: &rpi, ..any.clone() };
        assert_eq!(s.place(&req, &nodes).unwrap(), 0);
        let gpu = [Constraint::parse("node.labels.gpu == yes").unwrap()];
        let req = PlacementRequest { constraints: &gpu, ..any.clone() };
        let err = s.place(&req, &nodes).unwrap_err().to_string();
        assert!(err.contains("node.labels.gpu == yes"), "{err}");
        let arm = ["linux/arm/v7".to_string()];
        let req = PlacementRequest { platforms: &arm, ..any.clone() };
        assert!(matches!(s.place(&req, &nodes), Err(Error::InvalidSpec { .. })));

        let inst = |id: &str, in_flight, ready| InstanceView {
            id: id.into(),
            node: None,
            in_flight,
            max_concurrency: Some(2),
            ready,
        };
        let insts = vec![inst("x", 2, true), inst("y", 1, true), inst("z", 0, false)];
        assert_eq!(s.route(&f, &insts), Some(1));
        let full = vec![inst("x", 2, true)];
        assert_eq!(s.route(&f, &full), None);
    }
}

//! Placement and routing decisions: pure, synchronous, no I/O, so they can be tested and
//! benchmarked alone.
//!
//! A [`Scheduler`] answers two questions: on which node should a new instance of a function
//! start ([`Scheduler::place`]), and which running instance should serve an invocation
//! ([`Scheduler::route`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::invocation::FunctionRef;

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
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Constraint::Eq { key, value } => write!(f, "node.labels.{key} == {value}"),
            Constraint::Ne { key, value } => write!(f, "node.labels.{key} != {value}"),
        }
    }
}

/// Resources of a node: CPU in millicores, memory in bytes, and instance slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Instance slots.
    pub slots: u32,
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
    pub capacity: Resources,
    /// What is already allocated on it.
    pub allocated: Resources,
    /// Whether it accepts new instances.
    pub healthy: bool,
}

impl Node {
    /// A healthy node of `arch` with the given capacity and nothing allocated.
    pub fn new(id: impl Into<String>, arch: impl Into<String>, capacity: Resources) -> Self {
        Node {
            id: id.into(),
            labels: BTreeMap::new(),
            arch: arch.into(),
            capacity,
            allocated: Resources::default(),
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
    pub fn fits(&self, need: &Resources) -> bool {
        self.allocated.slots.saturating_add(need.slots) <= self.capacity.slots
            && self.allocated.cpu_millis.saturating_add(need.cpu_millis) <= self.capacity.cpu_millis
            && self.allocated.memory_bytes.saturating_add(need.memory_bytes)
                <= self.capacity.memory_bytes
    }
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
    /// Resources one instance needs.
    pub need: Resources,
}

impl PlacementRequest<'_> {
    /// Whether `node` is eligible: healthy, constraints met, architecture supported.
    /// Resource fit is checked separately ([`Node::fits`]).
    pub fn eligible(&self, node: &Node) -> bool {
        node.healthy
            && self.constraints.iter().all(|c| {
                c.matches(&node.labels)
                    || matches!(c, Constraint::Eq { key, value } if key == "arch" && *value == node.arch)
            })
            && arch_supported(self.platforms, &node.arch)
    }

    /// The error when no node can take the instance: names the first constraint no node
    /// meets, or says that capacity is exhausted.
    pub fn unplaceable(&self, nodes: &[Node]) -> Error {
        for c in self.constraints {
            let one = PlacementRequest { constraints: std::slice::from_ref(c), ..self.clone() };
            if !nodes.iter().any(|n| n.healthy && one.eligible(n)) {
                return Error::invalid(
                    "constraints",
                    format!("no healthy node satisfies the constraint `{c}`"),
                );
            }
        }
        if !nodes.iter().any(|n| n.healthy && arch_supported(self.platforms, &n.arch)) {
            return Error::invalid(
                "platforms",
                format!("no healthy node has an architecture in {:?}", self.platforms),
            );
        }
        Error::Unavailable {
            reason: format!("no eligible node has free capacity for {}", self.function),
        }
    }
}

/// Whether a node architecture is in a list of platforms (`linux/arm64`, `arm64`, `arm/v7`).
pub fn arch_supported(platforms: &[String], arch: &str) -> bool {
    platforms.is_empty()
        || platforms.iter().any(|p| {
            let p = p.strip_prefix("linux/").unwrap_or(p);
            p == arch
        })
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
            .filter(|(_, n)| request.eligible(n) && n.fits(&request.need))
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
        Node::new(id, arch, Resources { cpu_millis: 4000, memory_bytes: 8 << 30, slots })
    }

    #[test]
    fn least_loaded_place_and_route() {
        let f = FunctionRef::default_ns("f");
        let nodes = vec![node("a", "amd64", 2).label("type", "rpi"), node("b", "arm64", 4)];
        let s = LeastLoaded::new();
        let need = Resources { cpu_millis: 100, memory_bytes: 1 << 20, slots: 1 };
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

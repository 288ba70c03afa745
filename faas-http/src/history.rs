//! A small in-memory history of each function's last 15 minutes, for the portal's charts:
//! per 15 s slot, invocations, errors, p50 and p99 latency, and replicas (desired and
//! ready). Served as JSON at `GET /system/function/{name}/history` (our extension).
//!
//! It is not a second metrics system: the counts are those of the gateway's
//! [`InvocationMetrics`] (what the `MetricsLayer` on the invocation path counts and
//! `/metrics` renders), sampled. A slot holds the difference between two samples of the
//! counters, so the request path does no extra work; the quantiles come from the same
//! histogram buckets as Prometheus's `histogram_quantile` (no finer than OpenFaaS's
//! buckets). Replicas are what the backend lists when a sample is taken.
//!
//! Cost: a function's history is [`FunctionHistory`], 60 slots of 20 bytes plus the last
//! sample, 1 344 bytes in all (checked by a test, and noted in BENCHMARKS.md); with the
//! key of the map, under 1.5 KiB per function. At most [`MAX_FUNCTIONS`] are kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faas_core::metrics::{Counts, InvocationMetrics};
use faas_core::FunctionRef;
use serde::Serialize;

/// The length of a slot.
pub const SLOT: Duration = Duration::from_secs(15);

/// How many slots are kept: 15 minutes.
pub const SLOTS: usize = 60;

/// The most functions a history is kept for (as many as the metrics registry keeps).
pub const MAX_FUNCTIONS: usize = 10_000;

/// One slot's figures, packed (20 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    invocations: u32,
    errors: u32,
    /// Microseconds (saturating at about 71 minutes, far above any timeout).
    p50_us: u32,
    p99_us: u32,
    /// Replicas wanted and ready, as last seen during the slot (saturating).
    desired: u16,
    ready: u16,
}

/// One function's history: a ring of [`SLOTS`] slots, the open one included.
#[derive(Debug, Clone)]
pub struct FunctionHistory {
    slots: [Slot; SLOTS],
    /// The counters when the open slot began.
    base: Counts,
    /// The number (time since the epoch over [`SLOT`]) of the open slot.
    current: u64,
    /// The first slot this function was seen in (older slots have no data).
    first: u64,
}

/// The figures of one slot, as served.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// When the slot began, epoch milliseconds.
    pub t: u64,
    /// Invocations finished in the slot.
    pub invocations: u64,
    /// Of those, answered 500 or above.
    pub errors: u64,
    /// Median duration in milliseconds, if there were invocations.
    pub p50_ms: Option<f64>,
    /// 99th percentile duration in milliseconds, if there were invocations.
    pub p99_ms: Option<f64>,
    /// Desired replicas.
    pub replicas: u64,
    /// Ready replicas.
    pub ready_replicas: u64,
}

/// A function's history, as served: oldest slot first, the last one still open.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    /// The function's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The slot length in seconds.
    pub slot_seconds: u64,
    /// The slots since the function was first seen, at most [`SLOTS`].
    pub points: Vec<Point>,
}

/// Every function's recent invocations and errors: `GET /system/history`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// The slot length in seconds.
    pub slot_seconds: u64,
    /// By `name.namespace`.
    pub functions: std::collections::BTreeMap<String, Sparkline>,
}

/// One function's invocations and errors per slot, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sparkline {
    /// Invocations finished per slot.
    pub invocations: Vec<u64>,
    /// Of those, answered 500 or above.
    pub errors: Vec<u64>,
}

fn slot_of(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() / SLOT.as_secs()).unwrap_or(0)
}

fn micros(d: Option<Duration>) -> u32 {
    d.map_or(0, |d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX))
}

fn sat32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn sat16(n: u64) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl FunctionHistory {
    /// A history whose first slot is `slot`, counting from `base`.
    fn new(slot: u64, base: Counts) -> Self {
        FunctionHistory { slots: [Slot::default(); SLOTS], base, current: slot, first: slot }
    }

    fn at(&mut self, slot: u64) -> &mut Slot {
        &mut self.slots[(slot % SLOTS as u64) as usize]
    }

    /// Moves to `slot` given the counters `now`: what happened since the open slot began
    /// goes into it, and the slots skipped in between are emptied.
    fn advance(&mut self, slot: u64, now: &Counts) {
        if slot <= self.current {
            return;
        }
        let d = now.since(&self.base);
        let current = self.current;
        let s = self.at(current);
        s.invocations = sat32(d.finished);
        s.errors = sat32(d.errors);
        s.p50_us = micros(d.quantile(0.5));
        s.p99_us = micros(d.quantile(0.99));
        // Replicas carry over into the new slot until the next sample says otherwise.
        let (desired, ready) = (s.desired, s.ready);
        let skipped = (slot - current).min(SLOTS as u64);
        for k in 1..=skipped {
            *self.at(slot - skipped + k) = Slot { desired, ready, ..Slot::default() };
        }
        self.base = *now;
        self.current = slot;
    }

    fn replicas(&mut self, desired: u64, ready: u64) {
        let current = self.current;
        let s = self.at(current);
        s.desired = sat16(desired);
        s.ready = sat16(ready);
    }

    /// The points from the oldest kept slot to the open one, whose figures are what the
    /// counters `now` add to its start.
    fn points(&self, now: &Counts) -> Vec<Point> {
        let oldest = self.first.max((self.current + 1).saturating_sub(SLOTS as u64));
        let slot_ms = SLOT.as_millis() as u64;
        (oldest..=self.current)
            .map(|n| {
                let s = self.slots[(n % SLOTS as u64) as usize];
                let (invocations, errors, p50, p99) = if n == self.current {
                    let d = now.since(&self.base);
                    (d.finished, d.errors, micros(d.quantile(0.5)), micros(d.quantile(0.99)))
                } else {
                    (s.invocations.into(), s.errors.into(), s.p50_us, s.p99_us)
                };
                let ms = |us: u32| (invocations > 0).then_some(f64::from(us) / 1000.0);
                Point {
                    t: n * slot_ms,
                    invocations,
                    errors,
                    p50_ms: ms(p50),
                    p99_ms: ms(p99),
                    replicas: s.desired.into(),
                    ready_replicas: s.ready.into(),
                }
            })
            .collect()
    }
}

/// The histories of a gateway's functions, fed from its [`InvocationMetrics`].
#[derive(Debug)]
pub struct MetricsHistory {
    registry: InvocationMetrics,
    functions: Mutex<HashMap<FunctionRef, FunctionHistory>>,
}

impl MetricsHistory {
    /// An empty history over `registry`.
    pub fn new(registry: InvocationMetrics) -> Self {
        MetricsHistory { registry, functions: Mutex::default() }
    }

    /// Takes a sample at `now`: every function the registry counts moves to the slot of
    /// `now`, and those in `replicas` (desired and ready) note them in it. A gateway calls
    /// this every [`SLOT`].
    pub fn sample(&self, now: SystemTime, replicas: &[(FunctionRef, u64, u64)]) {
        let slot = slot_of(now);
        let snapshot = self.registry.snapshot();
        let mut map = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        for (f, counts) in snapshot {
            if let Some(h) = map.get_mut(&f) {
                h.advance(slot, &counts);
            } else if map.len() < MAX_FUNCTIONS {
                // Counted before its first sample: what it did so far falls in this slot.
                map.insert(f, FunctionHistory::new(slot, Counts::default()));
            }
        }
        for (f, desired, ready) in replicas {
            if let Some(h) = map.get_mut(f) {
                h.replicas(*desired, *ready);
            } else if map.len() < MAX_FUNCTIONS {
                let base = self.registry.counts(f).unwrap_or_default();
                let mut h = FunctionHistory::new(slot, base);
                h.replicas(*desired, *ready);
                map.insert(f.clone(), h);
            }
        }
    }

    /// Notes the replicas of `function` now (desired and ready) in its open slot, as a
    /// sample does (a reader that just asked the backend passes them on, so that a function
    /// deployed since the last sample does not show none).
    pub fn note_replicas(&self, function: &FunctionRef, now: SystemTime, desired: u64, ready: u64) {
        let slot = slot_of(now);
        let counts = self.registry.counts(function);
        let mut map = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get_mut(function) {
            h.advance(slot, &counts.unwrap_or_default());
            h.replicas(desired, ready);
        } else if map.len() < MAX_FUNCTIONS {
            // Whatever it did before counts in this slot, as in a first sample.
            let mut h = FunctionHistory::new(slot, Counts::default());
            h.replicas(desired, ready);
            map.insert(function.clone(), h);
        }
    }

    /// The history of `function` at `now`, if it was ever invoked or sampled.
    pub fn series(&self, function: &FunctionRef, now: SystemTime) -> Option<Series> {
        let counts = self.registry.counts(function);
        let mut map = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let points = match (map.get_mut(function), counts) {
            (Some(h), counts) => {
                let counts = counts.unwrap_or_default();
                h.advance(slot_of(now), &counts);
                h.points(&counts)
            }
            (None, Some(counts)) => {
                FunctionHistory::new(slot_of(now), Counts::default()).points(&counts)
            }
            (None, None) => return None,
        };
        Some(Series {
            name: function.name.clone(),
            namespace: function.namespace.clone(),
            slot_seconds: SLOT.as_secs(),
            points,
        })
    }

    /// Every function's invocations and errors per slot at `now`, oldest first, the open
    /// slot last (what the portal's overview draws sparklines from), keyed `name.namespace`.
    pub fn overview(&self, now: SystemTime) -> Overview {
        let slot = slot_of(now);
        let snapshot = self.registry.snapshot();
        let mut map = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let mut functions = std::collections::BTreeMap::new();
        for (f, counts) in snapshot {
            let points = match map.get_mut(&f) {
                Some(h) => {
                    h.advance(slot, &counts);
                    h.points(&counts)
                }
                None => FunctionHistory::new(slot, Counts::default()).points(&counts),
            };
            let spark = Sparkline {
                invocations: points.iter().map(|p| p.invocations).collect(),
                errors: points.iter().map(|p| p.errors).collect(),
            };
            functions.insert(format!("{}.{}", f.name, f.namespace), spark);
        }
        Overview { slot_seconds: SLOT.as_secs(), functions }
    }

    /// How many functions have a history.
    pub fn len(&self) -> usize {
        self.functions.lock().map(|m| m.len()).unwrap_or_default()
    }

    /// Whether no function has a history yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_function_history_is_under_two_kib() {
        // The figure stated in the module docs and BENCHMARKS.md.
        assert_eq!(std::mem::size_of::<Slot>(), 20);
        assert_eq!(std::mem::size_of::<FunctionHistory>(), 1344);
        // With the map's key (two strings) and a typical name, still under 2 KiB.
        let key =
            std::mem::size_of::<FunctionRef>() + "a-function-name".len() + "openfaas-fn".len();
        assert!(std::mem::size_of::<FunctionHistory>() + key < 1536);
    }

    #[test]
    fn slots_hold_what_happened_in_them() {
        let reg = InvocationMetrics::new();
        let h = MetricsHistory::new(reg.clone());
        let fr = FunctionRef::new("f", "ns");
        let f = reg.function(&fr);
        let t0 = 1_000_000 * SLOT.as_secs();
        h.sample(at(t0), &[(fr.clone(), 1, 0)]);
        for _ in 0..9 {
            f.finished(200, Duration::from_millis(3));
        }
        f.finished(503, Duration::from_millis(300));
        // Slot 0 is still open: the reader sees it live.
        let s = h.series(&fr, at(t0 + 1)).unwrap();
        assert_eq!(s.points.len(), 1);
        assert_eq!((s.points[0].invocations, s.points[0].errors), (10, 1));
        assert_eq!(s.points[0].replicas, 1);
        // The next sample closes it; a quiet slot follows, then traffic again.
        h.sample(at(t0 + 15), &[(fr.clone(), 2, 2)]);
        h.sample(at(t0 + 30), &[(fr.clone(), 2, 2)]);
        f.finished(200, Duration::from_millis(70));
        let s = h.series(&fr, at(t0 + 31)).unwrap();
        let got: Vec<(u64, u64, u64)> =
            s.points.iter().map(|p| (p.invocations, p.errors, p.ready_replicas)).collect();
        assert_eq!(got, vec![(10, 1, 0), (0, 0, 2), (1, 0, 2)]);
        assert_eq!(s.points[0].t, t0 * 1000);
        assert_eq!(s.points[1].t - s.points[0].t, 15_000);
        let p50 = s.points[0].p50_ms.unwrap();
        assert!(p50 > 0.0 && p50 <= 5.0, "{p50}");
        let p99 = s.points[0].p99_ms.unwrap();
        assert!(p99 > 250.0 && p99 <= 500.0, "{p99}");
        assert_eq!(s.points[1].p50_ms, None);
        assert!(s.points[2].p50_ms.unwrap() > 50.0);
        assert!(h.series(&FunctionRef::new("g", "ns"), at(t0)).is_none());
    }

    #[test]
    fn the_overview_has_every_counted_function() {
        let reg = InvocationMetrics::new();
        let h = MetricsHistory::new(reg.clone());
        let t0 = 1_000_000 * SLOT.as_secs();
        reg.function(&FunctionRef::new("a", "ns")).finished(200, Duration::from_millis(1));
        h.sample(at(t0), &[]);
        reg.function(&FunctionRef::new("b", "ns")).finished(500, Duration::from_millis(1));
        let o = h.overview(at(t0 + 15));
        assert_eq!(o.functions["a.ns"].invocations, vec![1, 0]);
        assert_eq!(o.functions["b.ns"].invocations, vec![1]);
        assert_eq!(o.functions["b.ns"].errors, vec![1]);
    }

    #[test]
    fn only_the_last_fifteen_minutes_are_kept() {
        let reg = InvocationMetrics::new();
        let h = MetricsHistory::new(reg.clone());
        let fr = FunctionRef::new("f", "ns");
        let f = reg.function(&fr);
        let t0 = 1_000_000 * SLOT.as_secs();
        for i in 0..100 {
            f.finished(200, Duration::from_millis(1));
            h.sample(at(t0 + i * 15), &[(fr.clone(), 1, 1)]);
        }
        let s = h.series(&fr, at(t0 + 99 * 15)).unwrap();
        assert_eq!(s.points.len(), SLOTS);
        assert_eq!(s.points.last().unwrap().t, (t0 + 99 * 15) * 1000);
        // One invocation per closed slot (each made before the sample that closed it).
        assert!(s.points[..SLOTS - 1].iter().all(|p| p.invocations == 1), "{:?}", s.points);
        // An hour of silence leaves empty slots, not stale ones.
        let s = h.series(&fr, at(t0 + 99 * 15 + 3600)).unwrap();
        assert_eq!(s.points.len(), SLOTS);
        assert!(s.points.iter().all(|p| p.invocations == 0 && p.replicas == 1));
    }
}

//! Invocation metrics under the names OpenFaaS dashboards use, counted in per-thread shards
//! and rendered in the Prometheus text format.
//!
//! - `gateway_function_invocation_started{function_name}` (counter)
//! - `gateway_function_invocation_total{function_name,code}` (counter)
//! - `gateway_functions_seconds{function_name,code}` (histogram, OpenFaaS's buckets)
//!
//! `function_name` is `name.namespace`; `code` the HTTP status of the answer. A registry
//! ([`InvocationMetrics`]) belongs to whoever made it (no global state: several gateways can
//! live in one process). [`crate::layers::MetricsLayer`] counts into one; a gateway renders it
//! at `/metrics`.
//!
//! The request path writes no cache line that another thread writes: each function's counts
//! are kept per thread and summed only when rendered.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::invocation::FunctionRef;
use crate::runtime::{shard_count, thread_index};
use crate::util::FastBuildHasher;

/// The metric names (OpenFaaS's).
pub mod names {
    /// Counter of invocations started.
    pub const STARTED: &str = "gateway_function_invocation_started";
    /// Counter of invocations completed, by status code.
    pub const TOTAL: &str = "gateway_function_invocation_total";
    /// Histogram of invocation durations in seconds, by status code.
    pub const SECONDS: &str = "gateway_functions_seconds";
    /// Gauge of a function's replicas (kept by a gateway, not by the invocation layers).
    pub const SERVICE_COUNT: &str = "gateway_service_count";
}

/// OpenFaaS's buckets for `gateway_functions_seconds`, in seconds.
pub const SECONDS_BUCKETS: [f64; 13] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The most functions whose metrics a registry keeps (beyond, counting still works for the
/// caller but is not rendered).
const MAX_FUNCTIONS: usize = 10_000;

/// Per shard, the most status codes kept apart; any further code counts as the last one.
const MAX_CODES: usize = 64;

/// A registry of per-function invocation metrics. Clones share it.
#[derive(Clone, Default)]
pub struct InvocationMetrics {
    functions: Arc<RwLock<HashMap<FunctionRef, FunctionMetrics, FastBuildHasher>>>,
}

impl std::fmt::Debug for InvocationMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.functions.read().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("InvocationMetrics").field("functions", &n).finish()
    }
}

impl InvocationMetrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handles of `function`: [`FunctionMetrics::started`] and
    /// [`FunctionMetrics::finished`] then take no lock and build no key. A caller that
    /// routes many invocations of one function keeps the handle (see
    /// [`crate::layers::FunctionHandles`]).
    pub fn function(&self, function: &FunctionRef) -> FunctionMetrics {
        if let Some(m) = self.functions.read().ok().and_then(|m| m.get(function).cloned()) {
            return m;
        }
        let mut map = self.functions.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_FUNCTIONS && !map.contains_key(function) {
            return FunctionMetrics::new(function);
        }
        map.entry(function.clone()).or_insert_with(|| FunctionMetrics::new(function)).clone()
    }

    /// Appends the three metric families in the Prometheus text format, functions in name
    /// order.
    pub fn render_into(&self, out: &mut String) {
        let mut functions: Vec<FunctionMetrics> = {
            let map = self.functions.read().unwrap_or_else(|e| e.into_inner());
            map.values().cloned().collect()
        };
        functions.sort_by(|a, b| a.inner.name.cmp(&b.inner.name));
        let totals: Vec<(String, Totals)> =
            functions.iter().map(|f| (label_value(&f.inner.name), f.inner.totals())).collect();
        let (started, total, seconds) = (names::STARTED, names::TOTAL, names::SECONDS);
        let _ = writeln!(out, "# TYPE {started} counter");
        for (name, t) in &totals {
            let _ = writeln!(out, "{started}{{function_name=\"{name}\"}} {}", t.started);
        }
        let _ = writeln!(out, "\n# TYPE {total} counter");
        for (name, t) in &totals {
            for (code, h) in &t.codes {
                let _ = writeln!(
                    out,
                    "{total}{{function_name=\"{name}\",code=\"{code}\"}} {}",
                    h.count
                );
            }
        }
        let _ = writeln!(out, "\n# TYPE {seconds} histogram");
        for (name, t) in &totals {
            for (code, h) in &t.codes {
                let labels = format!("function_name=\"{name}\",code=\"{code}\"");
                let mut cumulative = 0;
                for (le, n) in SECONDS_BUCKETS.iter().zip(h.buckets.iter()) {
                    cumulative += n;
                    let _ = writeln!(out, "{seconds}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                }
                let _ = writeln!(out, "{seconds}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
                let sum = h.sum_nanos as f64 / 1e9;
                let _ = writeln!(out, "{seconds}_sum{{{labels}}} {sum}");
                let _ = writeln!(out, "{seconds}_count{{{labels}}} {}", h.count);
            }
        }
    }

    /// Every function's counts so far, all status codes summed (what a gateway's history
    /// of recent minutes samples; see `faas_http::history`).
    pub fn snapshot(&self) -> Vec<(FunctionRef, Counts)> {
        let functions: Vec<(FunctionRef, FunctionMetrics)> = {
            let map = self.functions.read().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(f, m)| (f.clone(), m.clone())).collect()
        };
        functions.into_iter().map(|(f, m)| (f, m.inner.totals().counts())).collect()
    }

    /// The counts of `function` so far, if it was ever counted.
    pub fn counts(&self, function: &FunctionRef) -> Option<Counts> {
        let m = self.functions.read().ok()?.get(function).cloned()?;
        Some(m.inner.totals().counts())
    }

    /// The three metric families in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }
}

/// `v` escaped for a label value of the text exposition (`\`, `"` and newlines).
pub fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One function's invocations so far, all status codes summed: what
/// [`InvocationMetrics::snapshot`] answers. Counters only grow, so two snapshots subtract.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Invocations finished.
    pub finished: u64,
    /// Of those, the ones answered with a status of 500 or above (the function's or the
    /// gateway's failures; a caller's 4xx is not an error here).
    pub errors: u64,
    /// Finished invocations per bucket of [`SECONDS_BUCKETS`] (not cumulative); the last
    /// entry counts those slower than the largest bucket.
    pub buckets: [u64; SECONDS_BUCKETS.len() + 1],
}

impl Counts {
    /// What happened between `earlier` and `self` (a counter that went back, as after a
    /// registry starts over, counts from zero).
    pub fn since(&self, earlier: &Counts) -> Counts {
        let d = |a: u64, b: u64| a.checked_sub(b).unwrap_or(a);
        let mut buckets = [0; SECONDS_BUCKETS.len() + 1];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = d(self.buckets[i], earlier.buckets[i]);
        }
        Counts {
            finished: d(self.finished, earlier.finished),
            errors: d(self.errors, earlier.errors),
            buckets,
        }
    }

    /// The `q` quantile (0 to 1) of the durations, interpolated linearly inside the bucket
    /// it falls in as Prometheus's `histogram_quantile` does (so no finer than the
    /// buckets); `None` without invocations. Above the largest bucket, its bound (60 s).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            let upto = below + n;
            if *n > 0 && upto as f64 >= rank {
                let Some(hi) = SECONDS_BUCKETS.get(i) else { break };
                let lo = if i == 0 { 0.0 } else { SECONDS_BUCKETS[i - 1] };
                let secs = lo + (hi - lo) * ((rank - below as f64) / *n as f64).clamp(0.0, 1.0);
                return Some(Duration::from_secs_f64(secs));
            }
            below = upto;
        }
        Some(Duration::from_secs_f64(SECONDS_BUCKETS[SECONDS_BUCKETS.len() - 1]))
    }
}

impl Totals {
    fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for (code, h) in &self.codes {
            c.finished += h.count;
            if *code >= 500 {
                c.errors += h.count;
            }
            let mut within = 0;
            for (i, n) in h.buckets.iter().enumerate() {
                c.buckets[i] += n;
                within += n;
            }
            c.buckets[SECONDS_BUCKETS.len()] += h.count.saturating_sub(within);
        }
        c
    }
}

/// One function's invocation metrics (see [`InvocationMetrics::function`]); clones share
/// them.
#[derive(Clone)]
pub struct FunctionMetrics {
    inner: Arc<FunctionStats>,
}

struct FunctionStats {
    /// `name.namespace`.
    name: Box<str>,
    shards: Box<[Shard]>,
}

/// One thread's counts, on cache lines of their own.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    started: AtomicU64,
    /// A handful of status codes per function: a short list beats a map.
    codes: RwLock<Vec<(u16, Histogram)>>,
}

/// Counts of one status code: per bucket (not cumulative), in all, and the summed time.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; SECONDS_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A function's counts summed over the shards.
struct Totals {
    started: u64,
    codes: Vec<(u16, HistogramTotals)>,
}

#[derive(Default)]
struct HistogramTotals {
    buckets: [u64; SECONDS_BUCKETS.len()],
    count: u64,
    sum_nanos: u64,
}

impl FunctionStats {
    fn totals(&self) -> Totals {
        let mut started = 0;
        let mut codes: Vec<(u16, HistogramTotals)> = Vec::new();
        for s in self.shards.iter() {
            started += s.started.load(Ordering::Relaxed);
            for (code, h) in s.codes.read().unwrap_or_else(|e| e.into_inner()).iter() {
                let i = match codes.binary_search_by_key(code, |(c, _)| *c) {
                    Ok(i) => i,
                    Err(i) => {
                        codes.insert(i, (*code, HistogramTotals::default()));
                        i
                    }
                };
                let t = &mut codes[i].1;
                for (a, b) in t.buckets.iter_mut().zip(h.buckets.iter()) {
                    *a += b.load(Ordering::Relaxed);
                }
                t.count += h.count.load(Ordering::Relaxed);
                t.sum_nanos += h.sum_nanos.load(Ordering::Relaxed);
            }
        }
        Totals { started, codes }
    }
}

impl std::fmt::Debug for FunctionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionMetrics").field("function", &self.inner.name).finish()
    }
}

impl FunctionMetrics {
    fn new(function: &FunctionRef) -> Self {
        let shards = (0..shard_count()).map(|_| Shard::default()).collect();
        let name = match function.namespace.as_str() {
            "" => function.name.clone().into_boxed_str(),
            ns => format!("{}.{ns}", function.name).into_boxed_str(),
        };
        FunctionMetrics { inner: Arc::new(FunctionStats { name, shards }) }
    }

    fn shard(&self) -> &Shard {
        let shards = &self.inner.shards;
        &shards[thread_index() % shards.len()]
    }

    /// Counts a started invocation.
    pub fn started(&self) {
        self.shard().started.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished invocation with its HTTP status code and duration.
    pub fn finished(&self, code: u16, took: Duration) {
        let shard = self.shard();
        if let Ok(v) = shard.codes.read() {
            if let Some((_, h)) = v.iter().find(|(k, _)| *k == code) {
                h.record(took);
                return;
            }
        }
        let mut v = shard.codes.write().unwrap_or_else(|e| e.into_inner());
        if !v.iter().any(|(k, _)| *k == code) && v.len() < MAX_CODES {
            v.push((code, Histogram::default()));
        }
        let i = v.iter().position(|(k, _)| *k == code).unwrap_or(v.len().saturating_sub(1));
        if let Some((_, h)) = v.get(i) {
            h.record(took);
        }
    }
}

impl Histogram {
    fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = SECONDS_BUCKETS.iter().position(|le| secs <= *le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_are_summed_when_rendered() {
        let m = InvocationMetrics::new();
        let f = FunctionRef::new("f", "ns");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                let f = f.clone();
                std::thread::spawn(move || {
                    let f = m.function(&f);
                    for i in 0..100 {
                        f.started();
                        let code = if i % 10 == 0 { 500 } else { 200 };
                        // 0.5 ms on thread 0, 20 ms elsewhere.
                        let took = Duration::from_micros(if t == 0 { 500 } else { 20_000 });
                        f.finished(code, took);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render();
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        has(r#"gateway_function_invocation_started{function_name="f.ns"} 400"#);
        has(r#"gateway_function_invocation_total{function_name="f.ns",code="200"} 360"#);
        has(r#"gateway_function_invocation_total{function_name="f.ns",code="500"} 40"#);
        // Cumulative buckets: thread 0's 90 fast 200s by 5 ms, everything by 25 ms.
        has(r#"gateway_functions_seconds_bucket{function_name="f.ns",code="200",le="0.005"} 90"#);
        has(r#"gateway_functions_seconds_bucket{function_name="f.ns",code="200",le="0.01"} 90"#);
        has(r#"gateway_functions_seconds_bucket{function_name="f.ns",code="200",le="0.025"} 360"#);
        has(r#"gateway_functions_seconds_bucket{function_name="f.ns",code="200",le="+Inf"} 360"#);
        has(r#"gateway_functions_seconds_count{function_name="f.ns",code="500"} 40"#);
        // 90 x 0.5 ms + 270 x 20 ms = 5.445 s.
        has(r#"gateway_functions_seconds_sum{function_name="f.ns",code="200"} 5.445"#);
        // Label values are escaped.
        m.function(&FunctionRef::new("odd\"name\\\n", "ns")).started();
        let text = m.render();
        assert!(text.contains(r#"{function_name="odd\"name\\\n.ns"} 1"#), "{text}");
        // One TYPE line per metric.
        assert_eq!(text.matches("# TYPE gateway_functions_seconds histogram").count(), 1);
    }

    #[test]
    fn snapshots_sum_codes_and_subtract() {
        let m = InvocationMetrics::new();
        let fr = FunctionRef::new("f", "ns");
        let f = m.function(&fr);
        for _ in 0..98 {
            f.finished(200, Duration::from_millis(3));
        }
        f.finished(404, Duration::from_millis(30));
        f.finished(502, Duration::from_secs(90));
        let a = m.counts(&fr).unwrap();
        assert_eq!((a.finished, a.errors), (100, 1));
        assert_eq!(a.buckets[0], 98);
        assert_eq!(a.buckets[SECONDS_BUCKETS.len()], 1, "beyond 60 s");
        // 50th of 100 falls in the first bucket (0 to 5 ms), interpolated.
        let p50 = a.quantile(0.5).unwrap();
        assert!(p50 > Duration::from_millis(2) && p50 < Duration::from_millis(3), "{p50:?}");
        assert_eq!(a.quantile(1.0), Some(Duration::from_secs(60)));
        f.finished(200, Duration::from_millis(7));
        let b = m.snapshot().into_iter().find(|(r, _)| *r == fr).unwrap().1;
        let d = b.since(&a);
        assert_eq!((d.finished, d.errors, d.buckets[1]), (1, 0, 1));
        assert_eq!(d.quantile(0.99).map(|q| q > Duration::from_millis(5)), Some(true));
        assert_eq!(Counts::default().quantile(0.5), None);
        assert_eq!(m.counts(&FunctionRef::new("g", "ns")), None);
    }

    #[test]
    fn one_handle_per_function() {
        let m = InvocationMetrics::new();
        let f = FunctionRef::new("f", "ns");
        m.function(&f).started();
        m.function(&f).started();
        m.function(&FunctionRef::new("g", "ns")).finished(200, Duration::ZERO);
        let text = m.render();
        assert!(text.contains(r#"gateway_function_invocation_started{function_name="f.ns"} 2"#));
        assert!(text.contains(r#"gateway_function_invocation_started{function_name="g.ns"} 0"#));
        let (f_at, g_at) = (text.find("\"f.ns\"").unwrap(), text.find("\"g.ns\"").unwrap());
        assert!(f_at < g_at, "functions rendered in name order");
    }
}

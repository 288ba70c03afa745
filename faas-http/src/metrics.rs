//! Prometheus metrics with the OpenFaaS names, kept in a recorder owned by the gateway (no
//! global state, so several gateways can live in one process).
//!
//! - `gateway_function_invocation_started{function_name}` (counter)
//! - `gateway_function_invocation_total{function_name,code}` (counter)
//! - `gateway_functions_seconds{function_name,code}` (histogram)
//! - `gateway_service_count{function_name}` (gauge: replicas)
//!
//! `function_name` is `name.namespace`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use faas_core::runtime::{shard_count, thread_index};
use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// `gateway_function_invocation_started`.
pub const INVOCATION_STARTED: &str = "gateway_function_invocation_started";
/// `gateway_function_invocation_total`.
pub const INVOCATION_TOTAL: &str = "gateway_function_invocation_total";
/// `gateway_functions_seconds`.
pub const FUNCTION_SECONDS: &str = "gateway_functions_seconds";
/// `gateway_service_count`.
pub const SERVICE_COUNT: &str = "gateway_service_count";

/// OpenFaaS's buckets for `gateway_functions_seconds`, in seconds.
pub const FUNCTION_SECONDS_BUCKETS: [f64; 13] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

static METADATA: Metadata<'static> =
    Metadata::new("faas_http::gateway", Level::INFO, Some(module_path!()));

/// The gateway's metrics. The per-function invocation metrics are counted in per-thread
/// shards (no cache line is written by two threads on the request path) and summed when
/// rendered; the replica gauges live in a Prometheus recorder.
pub struct GatewayMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// By `name.namespace`.
    functions: RwLock<BTreeMap<String, FunctionMetrics>>,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayMetrics")
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The most functions whose invocation metrics are kept.
const MAX_FUNCTIONS: usize = 10_000;

impl GatewayMetrics {
    /// A fresh set of metrics.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        GatewayMetrics { recorder, handle, functions: RwLock::default() }
    }

    fn fname(name: &str) -> Vec<Label> {
        vec![Label::new("function_name", name.to_string())]
    }

    /// The handles of `function` (`name.namespace`), for a caller that counts many
    /// invocations of it: [`FunctionMetrics::started`] and [`FunctionMetrics::finished`]
    /// take no lock and build no key.
    pub fn function(&self, function: &str) -> FunctionMetrics {
        if let Some(m) = self.functions.read().ok().and_then(|m| m.get(function).cloned()) {
            return m;
        }
        let mut map = self.functions.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_FUNCTIONS && !map.contains_key(function) {
            // Not kept (so not rendered): counting still works for the caller.
            return FunctionMetrics::new(function);
        }
        map.entry(function.to_string()).or_insert_with(|| FunctionMetrics::new(function)).clone()
    }

    /// Counts a started invocation of `function` (`name.namespace`).
    pub fn started(&self, function: &str) {
        self.function(function).started();
    }

    /// Counts a finished invocation with its HTTP status code and duration.
    pub fn finished(&self, function: &str, code: u16, took: Duration) {
        self.function(function).finished(code, took);
    }

    /// Sets the replica gauge of `function`.
    pub fn service_count(&self, function: &str, replicas: u64) {
        let key = Key::from_parts(SERVICE_COUNT, Self::fname(function));
        self.recorder.register_gauge(&key, &METADATA).set(replicas as f64);
    }

    /// Housekeeping for the recorder (a [`crate::Gateway`] built inside a tokio runtime runs
    /// it every 5 s).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let functions: Vec<FunctionMetrics> = {
            let map = self.functions.read().unwrap_or_else(|e| e.into_inner());
            map.values().cloned().collect()
        };
        let totals: Vec<(String, Totals)> =
            functions.iter().map(|f| (label_value(&f.inner.name), f.inner.totals())).collect();
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE {INVOCATION_STARTED} counter");
        for (name, t) in &totals {
            let _ = writeln!(out, "{INVOCATION_STARTED}{{function_name=\"{name}\"}} {}", t.started);
        }
        let _ = writeln!(out, "\n# TYPE {INVOCATION_TOTAL} counter");
        for (name, t) in &totals {
            for (code, h) in &t.codes {
                let _ = writeln!(
                    out,
                    "{INVOCATION_TOTAL}{{function_name=\"{name}\",code=\"{code}\"}} {}",
                    h.count
                );
            }
        }
        let _ = writeln!(out, "\n# TYPE {FUNCTION_SECONDS} histogram");
        for (name, t) in &totals {
            for (code, h) in &t.codes {
                let labels = format!("function_name=\"{name}\",code=\"{code}\"");
                let mut cumulative = 0;
                for (le, n) in FUNCTION_SECONDS_BUCKETS.iter().zip(h.buckets.iter()) {
                    cumulative += n;
                    let _ = writeln!(
                        out,
                        "{FUNCTION_SECONDS}_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    );
                }
                let _ =
                    writeln!(out, "{FUNCTION_SECONDS}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
                let sum = h.sum_nanos as f64 / 1e9;
                let _ = writeln!(out, "{FUNCTION_SECONDS}_sum{{{labels}}} {sum}");
                let _ = writeln!(out, "{FUNCTION_SECONDS}_count{{{labels}}} {}", h.count);
            }
        }
        out.push('\n');
        out.push_str(&self.handle.render());
        out
    }
}

/// `v` escaped for a label value of the text exposition (`\`, `"` and newlines).
fn label_value(v: &str) -> String {
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

/// One function's invocation metrics (see [`GatewayMetrics::function`]); clones share them.
#[derive(Clone)]
pub struct FunctionMetrics {
    inner: Arc<FunctionStats>,
}

struct FunctionStats {
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
    buckets: [AtomicU64; FUNCTION_SECONDS_BUCKETS.len()],
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
    buckets: [u64; FUNCTION_SECONDS_BUCKETS.len()],
    count: u64,
    sum_nanos: u64,
}

/// Per shard, the most status codes kept apart; any further code counts as the last one.
const MAX_CODES: usize = 64;

impl FunctionStats {
    fn totals(&self) -> Totals {
        let mut started = 0;
        let mut codes: BTreeMap<u16, HistogramTotals> = BTreeMap::new();
        for s in self.shards.iter() {
            started += s.started.load(Ordering::Relaxed);
            for (code, h) in s.codes.read().unwrap_or_else(|e| e.into_inner()).iter() {
                let t = codes.entry(*code).or_default();
                for (a, b) in t.buckets.iter_mut().zip(h.buckets.iter()) {
                    *a += b.load(Ordering::Relaxed);
                }
                t.count += h.count.load(Ordering::Relaxed);
                t.sum_nanos += h.sum_nanos.load(Ordering::Relaxed);
            }
        }
        Totals { started, codes: codes.into_iter().collect() }
    }
}

impl std::fmt::Debug for FunctionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionMetrics").field("function", &self.inner.name).finish()
    }
}

impl FunctionMetrics {
    fn new(function: &str) -> Self {
        let shards = (0..shard_count()).map(|_| Shard::default()).collect();
        FunctionMetrics { inner: Arc::new(FunctionStats { name: function.into(), shards }) }
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
        if let Some(i) = FUNCTION_SECONDS_BUCKETS.iter().position(|le| secs <= *le) {
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
        let m = Arc::new(GatewayMetrics::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    let f = m.function("f.ns");
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
        m.function("odd\"name\\\n").started();
        let text = m.render();
        assert!(text.contains(r#"{function_name="odd\"name\\\n"} 1"#), "{text}");
        // One TYPE line per metric.
        assert_eq!(text.matches("# TYPE gateway_functions_seconds histogram").count(), 1);
    }
}

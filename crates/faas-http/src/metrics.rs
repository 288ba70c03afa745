//! Prometheus metrics with the OpenFaaS names, kept in a recorder owned by the gateway (no
//! global state, so several gateways can live in one process).
//!
//! - `gateway_function_invocation_started{function_name}` (counter)
//! - `gateway_function_invocation_total{function_name,code}` (counter)
//! - `gateway_functions_seconds{function_name,code}` (histogram)
//! - `gateway_service_count{function_name}` (gauge: replicas)
//!
//! `function_name` is `name.namespace`.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// `gateway_function_invocation_started`.
pub const INVOCATION_STARTED: &str = "gateway_function_invocation_started";
/// `gateway_function_invocation_total`.
pub const INVOCATION_TOTAL: &str = "gateway_function_invocation_total";
/// `gateway_functions_seconds`.
pub const FUNCTION_SECONDS: &str = "gateway_functions_seconds";
/// `gateway_service_count`.
pub const SERVICE_COUNT: &str = "gateway_service_count";

static METADATA: Metadata<'static> =
    Metadata::new("faas_http::gateway", Level::INFO, Some(module_path!()));

/// The gateway's metrics.
pub struct GatewayMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    // Registered handles, so the hot path does not build keys.
    started: RwLock<HashMap<String, Counter>>,
    finished: RwLock<HashMap<(String, u16), (Counter, Histogram)>>,
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

impl GatewayMetrics {
    /// A fresh recorder with OpenFaaS's histogram buckets for `gateway_functions_seconds`.
    pub fn new() -> Self {
        let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(FUNCTION_SECONDS.to_string()), &buckets)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        GatewayMetrics { recorder, handle, started: RwLock::default(), finished: RwLock::default() }
    }

    fn fname(name: &str) -> Vec<Label> {
        vec![Label::new("function_name", name.to_string())]
    }

    /// The registered handles of `function` (`name.namespace`), for a caller that counts
    /// many invocations of it: [`FunctionMetrics::started`] and [`FunctionMetrics::finished`]
    /// build no keys and take no gateway-wide lock.
    pub fn function(&self, function: &str) -> FunctionMetrics {
        let key = Key::from_parts(INVOCATION_STARTED, Self::fname(function));
        FunctionMetrics {
            name: function.into(),
            started: self.recorder.register_counter(&key, &METADATA),
            by_code: RwLock::new(Vec::new()),
        }
    }

    fn register_finished(&self, function: &str, code: u16) -> (Counter, Histogram) {
        let mut labels = Self::fname(function);
        labels.push(Label::new("code", code.to_string()));
        let key = Key::from_parts(INVOCATION_TOTAL, labels.clone());
        let c = self.recorder.register_counter(&key, &METADATA);
        let key = Key::from_parts(FUNCTION_SECONDS, labels);
        (c, self.recorder.register_histogram(&key, &METADATA))
    }

    /// Counts a started invocation of `function` (`name.namespace`).
    pub fn started(&self, function: &str) {
        if let Some(c) = self.started.read().ok().and_then(|m| m.get(function).cloned()) {
            c.increment(1);
            return;
        }
        let key = Key::from_parts(INVOCATION_STARTED, Self::fname(function));
        let c = self.recorder.register_counter(&key, &METADATA);
        c.increment(1);
        if let Ok(mut m) = self.started.write() {
            if m.len() < 10_000 {
                m.insert(function.to_string(), c);
            }
        }
    }

    /// Counts a finished invocation with its HTTP status code and duration.
    pub fn finished(&self, function: &str, code: u16, took: Duration) {
        let cached =
            self.finished.read().ok().and_then(|m| m.get(&(function.to_string(), code)).cloned());
        let (c, h) = match cached {
            Some(v) => v,
            None => {
                let (c, h) = self.register_finished(function, code);
                if let Ok(mut m) = self.finished.write() {
                    if m.len() < 10_000 {
                        m.insert((function.to_string(), code), (c.clone(), h.clone()));
                    }
                }
                (c, h)
            }
        };
        c.increment(1);
        h.record(took.as_secs_f64());
    }

    /// Sets the replica gauge of `function`.
    pub fn service_count(&self, function: &str, replicas: u64) {
        let key = Key::from_parts(SERVICE_COUNT, Self::fname(function));
        self.recorder.register_gauge(&key, &METADATA).set(replicas as f64);
    }

    /// Folds recorded histogram samples into their buckets. Without it samples pile up in
    /// memory between scrapes; a [`crate::Gateway`] built inside a tokio runtime runs it every
    /// 5 s.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// One function's metric handles (see [`GatewayMetrics::function`]).
pub struct FunctionMetrics {
    name: Box<str>,
    started: Counter,
    // A handful of status codes per function: a short list beats a map.
    by_code: RwLock<Vec<(u16, Counter, Histogram)>>,
}

impl std::fmt::Debug for FunctionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionMetrics").field("function", &self.name).finish()
    }
}

impl FunctionMetrics {
    /// Counts a started invocation.
    pub fn started(&self) {
        self.started.increment(1);
    }

    /// Counts a finished invocation with its HTTP status code and duration; `metrics` is the
    /// recorder these handles came from.
    pub fn finished(&self, metrics: &GatewayMetrics, code: u16, took: Duration) {
        let secs = took.as_secs_f64();
        if let Ok(v) = self.by_code.read() {
            if let Some((_, c, h)) = v.iter().find(|(k, _, _)| *k == code) {
                c.increment(1);
                h.record(secs);
                return;
            }
        }
        let (c, h) = metrics.register_finished(&self.name, code);
        if let Ok(mut v) = self.by_code.write() {
            if v.len() < 64 && !v.iter().any(|(k, _, _)| *k == code) {
                v.push((code, c.clone(), h.clone()));
            }
        }
        c.increment(1);
        h.record(secs);
    }
}

//! The gateway's `/metrics`: the invocation metrics that the core's
//! [`MetricsLayer`](faas_core::layers::MetricsLayer) counts (OpenFaaS's names, one sharded
//! implementation in [`faas_core::metrics`]), plus the replica gauge
//! `gateway_service_count{function_name}`, in a Prometheus recorder owned by the gateway (no
//! global state, so several gateways can live in one process).

use faas_core::metrics::InvocationMetrics;
use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub use faas_core::metrics::names::{
    SECONDS as FUNCTION_SECONDS, SERVICE_COUNT, STARTED as INVOCATION_STARTED,
    TOTAL as INVOCATION_TOTAL,
};
pub use faas_core::metrics::SECONDS_BUCKETS as FUNCTION_SECONDS_BUCKETS;

/// The async queue's health gauge (1 healthy, 0 not), set when `/metrics` is read.
pub const QUEUE_HEALTHY: &str = "gateway_queue_healthy";

static METADATA: Metadata<'static> =
    Metadata::new("faas_http::gateway", Level::INFO, Some(module_path!()));

/// The gateway's metrics: the invocation registry its layer stack counts into, and the
/// replica gauges.
pub struct GatewayMetrics {
    invocations: InvocationMetrics,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").field("invocations", &self.invocations).finish()
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new(InvocationMetrics::new())
    }
}

impl GatewayMetrics {
    /// The gateway's metrics over `invocations`, the registry its `MetricsLayer` counts into.
    pub fn new(invocations: InvocationMetrics) -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        GatewayMetrics { invocations, recorder, handle }
    }

    /// The invocation metrics registry.
    pub fn invocations(&self) -> &InvocationMetrics {
        &self.invocations
    }

    /// Sets the replica gauge of `function` (`name.namespace`).
    pub fn service_count(&self, function: &str, replicas: u64) {
        let labels = vec![Label::new("function_name", function.to_string())];
        let key = Key::from_parts(SERVICE_COUNT, labels);
        self.recorder.register_gauge(&key, &METADATA).set(replicas as f64);
    }

    /// Sets the gauge `gateway_queue_healthy` (1 while the async queue can take calls, 0
    /// while its publisher reports it cannot: see `QueuePublisher::health`).
    pub fn queue_healthy(&self, healthy: bool) {
        let key = Key::from_name(QUEUE_HEALTHY);
        self.recorder.register_gauge(&key, &METADATA).set(if healthy { 1.0 } else { 0.0 });
    }

    /// Housekeeping for the recorder (a [`crate::Gateway`] built inside a tokio runtime runs
    /// it every 5 s).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.invocations.render_into(&mut out);
        out.push('\n');
        out.push_str(&self.handle.render());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faas_core::FunctionRef;
    use std::time::Duration;

    #[test]
    fn invocations_and_replica_gauges_render_together() {
        let m = GatewayMetrics::default();
        let f = m.invocations().function(&FunctionRef::new("f", "ns"));
        f.started();
        f.finished(200, Duration::from_millis(3));
        m.service_count("f.ns", 2);
        let text = m.render();
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        has(r#"gateway_function_invocation_started{function_name="f.ns"} 1"#);
        has(r#"gateway_function_invocation_total{function_name="f.ns",code="200"} 1"#);
        has(r#"gateway_functions_seconds_bucket{function_name="f.ns",code="200",le="0.005"} 1"#);
        has(r#"gateway_service_count{function_name="f.ns"} 2"#);
    }
}

//! The faas-core conformance suite against the Kubernetes backend, over the fake API server
//! ([`support::FakeApi`], which also plays the Deployment controller) and a loopback fixture
//! server standing in for the pods ([`support::FixtureServer`], which gives each fixture the
//! environment, secrets and log sink the kubelet would, read from the objects the backend
//! created). No cluster: this checks the backend's API usage and invocation path, not
//! Kubernetes itself (see the README for what has run against a live cluster).

mod support;

use std::time::Duration;

use faas_backend_k8s::KubernetesInvoker;
use faas_core::conformance::{self as conf, Behaviour, MemoryWorkload, Workload};
use faas_core::FunctionSpec;
use support::{FakeApi, FixtureServer};

struct K8sWorkload;

impl Workload for K8sWorkload {
    fn spec(&self, name: &str, behaviour: Behaviour) -> FunctionSpec {
        // The fixture server serves the fixture named by the image.
        FunctionSpec::new(name, MemoryWorkload::image(behaviour))
    }

    fn start_timeout(&self) -> Duration {
        Duration::from_secs(20)
    }
}

async fn setup() -> (KubernetesInvoker, FakeApi, FixtureServer) {
    let fake = FakeApi::new();
    let server = FixtureServer::start(fake.clone()).await;
    let inv = KubernetesInvoker::builder(fake.client())
        .base_url(server.base_url())
        // Read the Deployment on every invocation, so scaling is seen at once.
        .status_cache_ttl(Duration::ZERO)
        .build();
    (inv, fake, server)
}

/// One test per case of [`faas_core::for_each_conformance_case!`], the one list every
/// backend takes its cases from, so a case added to the suite runs here too unless it is
/// excluded below, by name and with the reason.
macro_rules! case {
    // Excluded: `concurrency_cap_holds` needs the watchdog's `max_inflight` in a real pod (the
    // backend sets it; the fixture server standing in for the pods does not enforce it). It
    // runs against the process and Docker backends, which run that watchdog.
    (concurrency_cap_holds) => {};
    // Excluded: `logs_survive_scale_to_zero`. The Kubernetes backend reads logs from the
    // function's pods (`pods/log`), so a pod deleted by a scale down takes its lines with it,
    // as with `kubectl logs`; keeping them needs a cluster log collector, outside this
    // backend. (The fake also reuses pod names `NAME-pod-I`, so an instance filter could not
    // tell an old pod from its successor.)
    (logs_survive_scale_to_zero) => {};
    ($name:ident) => {
        #[tokio::test]
        async fn $name() {
            let (inv, _fake, _server) = setup().await;
            tokio::time::timeout(Duration::from_secs(120), conf::$name(&inv, &K8sWorkload))
                .await
                .expect("conformance case finished in time");
        }
    };
}

faas_core::for_each_conformance_case!(case);

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

macro_rules! case {
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

case!(deploy_round_trip);
case!(invalid_specs_rejected);
case!(duplicate_deploy_rejected);
case!(unknown_function_not_found);
case!(invoke_preserves_request);
case!(env_and_secrets);
case!(secrets_round_trip);
case!(timeout_is_developer_error);
case!(crash_is_developer_error);
case!(scale_up_and_to_zero);
case!(scale_from_zero);
case!(logs_readable);
case!(many_concurrent_invocations);
// Not run here: `concurrency_cap_holds` needs the watchdog's `max_inflight` in a real pod
// (the backend sets it; the fixture server does not enforce it).
// Not run here: `logs_survive_scale_to_zero`. The Kubernetes backend reads logs from the
// function's pods (`pods/log`), so a pod deleted by a scale down takes its lines with it, as
// with `kubectl logs`; keeping them needs a cluster log collector, outside this backend.
// (The fake also reuses pod names `NAME-pod-I`, so an instance filter could not tell an old
// pod from its successor.)

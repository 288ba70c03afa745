//! Tests against a live Kubernetes cluster. They are `#[ignore]`d, so an ordinary test run
//! lists them as ignored (never as passed); run them with `--ignored`, and then they fail if
//! no cluster can be reached. They have NOT been run by the authors; see the crate README for
//! how to run them and what they need:
//!
//! - a kubeconfig (or in-cluster service account) that
//!   `kube::Client::try_default()` finds, allowed to manage deployments, deployments/scale,
//!   services, secrets, pods, pods/log and endpointslices in the namespace;
//! - `FAAS_K8S_NAMESPACE` (default `openfaas-fn`), which must exist;
//! - `FAAS_K8S_BASE_URL`: how this process reaches a function, e.g. through `kubectl proxy`
//!   (`http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/{name}:8080/proxy`);
//!   default: cluster DNS, which works only inside the cluster;
//! - `FAAS_K8S_IMAGE` (default `ghcr.io/openfaas/alpine:latest`): an image running the
//!   OpenFaaS watchdog; it is deployed with `fprocess=cat`, so it echoes the request body.
//!
//! Run: `cargo test -p faas-backend-k8s --test live -- --ignored --test-threads=1`.

use std::time::Duration;

use faas_backend_k8s::KubernetesInvoker;
use faas_core::conformance::{self as conf, Behaviour, Workload};
use faas_core::prelude::*;
use faas_core::{FunctionSpec, Invocation, InvokeExt, Secret};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

async fn live() -> KubernetesInvoker {
    let client = kube::Client::try_default().await.expect(
        "a live Kubernetes test needs a kubeconfig or in-cluster config (see tests/live.rs)",
    );
    let mut b = KubernetesInvoker::builder(client)
        .namespace(env_or("FAAS_K8S_NAMESPACE", "openfaas-fn"))
        .ready_timeout(Duration::from_secs(180));
    if let Ok(url) = std::env::var("FAAS_K8S_BASE_URL") {
        b = b.base_url(url);
    }
    b.build()
}

struct LiveWorkload {
    namespace: String,
}

impl Workload for LiveWorkload {
    fn spec(&self, name: &str, behaviour: Behaviour) -> FunctionSpec {
        // `cat` behind the watchdog echoes the body: the echo behaviour without its headers,
        // enough for the cases run below. Any other behaviour is not there to run.
        assert_eq!(
            behaviour,
            Behaviour::Echo,
            "the live image (`cat`) implements only the echo behaviour; exclude the case"
        );
        FunctionSpec::new(name, env_or("FAAS_K8S_IMAGE", "ghcr.io/openfaas/alpine:latest"))
            .namespace(self.namespace.clone())
            .process("cat")
    }

    fn start_timeout(&self) -> Duration {
        Duration::from_secs(180)
    }

    fn prefix(&self) -> &str {
        "faas-rs-live"
    }
}

async fn poll_status(
    inv: &KubernetesInvoker,
    f: &faas_core::FunctionRef,
    what: &str,
    ok: impl Fn(&faas_core::FunctionStatus) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            if let Ok(s) = inv.status(f).await {
                if ok(&s) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test]
#[ignore = "needs a live Kubernetes cluster: cargo test -p faas-backend-k8s --test live -- --ignored"]
async fn live_lifecycle_with_scale_to_and_from_zero() {
    let inv = live().await;
    let ns = inv.namespace().to_string();
    let w = LiveWorkload { namespace: ns.clone() };
    let secret =
        Secret { name: "faas-rs-live-key".into(), namespace: ns.clone(), value: "v1".into() };
    let _ = inv.remove_secret(&ns, &secret.name).await;
    inv.create_secret(secret.clone()).await.expect("create secret");
    let spec = w
        .spec("faas-rs-live-echo", Behaviour::Echo)
        .secret(&secret.name)
        .label("com.openfaas.scale.zero", "true");
    let f = spec.function_ref();
    let _ = inv.remove(&f).await;
    inv.deploy(spec).await.expect("deploy");
    poll_status(&inv, &f, "an available replica", |s| s.available_replicas >= 1).await;
    assert_eq!(inv.call(&f.to_string(), "hello").await.expect("invoke"), "hello");
    let _ = inv.read_logs(&f).await.expect("logs");

    inv.scale(&f, 0).await.expect("scale to zero");
    poll_status(&inv, &f, "zero replicas", |s| s.available_replicas == 0).await;
    let resp = inv.invoke(Invocation::post(f.clone(), "again")).await.expect("scale from zero");
    assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "again");
    assert!(inv.status(&f).await.unwrap().replicas >= 1);

    inv.remove(&f).await.expect("remove");
    inv.remove_secret(&ns, &secret.name).await.expect("remove secret");
}

/// The conformance cases on the live cluster, one ignored test each
/// (`conformance::deploy_round_trip`...), from the one list every backend takes its cases
/// from. Excluded by name: the cases needing a behaviour the `cat` image does not have.
mod conformance {
    use super::*;

    macro_rules! case {
        // Excluded: need the echo headers (`x-echo-*`), env and secrets, sleep, crash or log
        // fixtures; `cat` echoes the body only. (A fixture image in a registry the cluster
        // can pull from would run them; the Docker backend's tests build one locally.)
        (invoke_preserves_request) => {};
        (env_and_secrets) => {};
        (timeout_is_developer_error) => {};
        (crash_is_developer_error) => {};
        (concurrency_cap_holds) => {};
        (logs_readable) => {};
        // Excluded: pod logs go with a pod scaled away (see tests/conformance.rs).
        (logs_survive_scale_to_zero) => {};
        ($name:ident) => {
            #[tokio::test]
            #[ignore = "needs a live Kubernetes cluster: cargo test -p faas-backend-k8s --test live -- --ignored"]
            async fn $name() {
                let inv = live().await;
                let w = LiveWorkload { namespace: inv.namespace().to_string() };
                conf::$name(&inv, &w).await;
            }
        };
    }

    faas_core::for_each_conformance_case!(case);
}

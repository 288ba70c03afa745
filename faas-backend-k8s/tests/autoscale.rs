//! Scale to and from zero through the core autoscaler (`faas_core::autoscale::Autoscaled`),
//! the same way as every other backend: the autoscaler drives `scale` (the Deployment's
//! scale subresource) and reads `status` (the Deployment's replicas and available replicas).

mod support;

use std::time::Duration;

use faas_backend_k8s::KubernetesInvoker;
use faas_core::autoscale::{AutoscaleConfig, Autoscaled};
use faas_core::prelude::*;
use faas_core::{FunctionRef, FunctionSpec, Invocation};
use serde_json::json;
use support::{FakeApi, FixtureServer};

#[tokio::test]
async fn the_autoscaler_scales_a_deployment_to_zero_and_back() {
    let fake = FakeApi::new();
    let server = FixtureServer::start(fake.clone()).await;
    let k8s = KubernetesInvoker::builder(fake.client()).base_url(server.base_url()).build();
    let config = AutoscaleConfig::default().tick(Duration::from_secs(3600));
    let inv = Autoscaled::with_config(k8s, config);
    let spec = FunctionSpec::new("idle", "conformance/echo")
        .label("com.openfaas.scale.zero", "true")
        .label("com.openfaas.scale.zero-duration", "1s");
    inv.deploy(spec).await.unwrap();
    let f = FunctionRef::new("idle", "openfaas-fn");
    let resp = inv.invoke(Invocation::post(f.clone(), "one")).await.unwrap();
    assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "one");
    fake.take_requests();

    // Idle: ticks (driven here instead of by the timer) take it to zero.
    let replicas = |fake: &FakeApi| {
        fake.get("deployments", "openfaas-fn", "idle").unwrap()["spec"]["replicas"].as_i64()
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        while replicas(&fake) != Some(0) {
            inv.tick().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("scaled to zero within 30 s of idleness");
    let to_zero = fake.take_requests();
    let scales: Vec<_> = to_zero.iter().filter(|r| r.uri.ends_with("/scale?")).collect();
    assert_eq!(scales.last().unwrap().body, Some(json!({"spec": {"replicas": 0}})));
    assert_eq!(inv.status(&f).await.unwrap().available_replicas, 0);

    // An invocation at zero: the activator scales to max(1, min) and waits for it.
    let resp = inv.invoke(Invocation::post(f.clone(), "two")).await.unwrap();
    assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "two");
    let back = fake.take_requests();
    let scale = back.iter().find(|r| r.uri.ends_with("/scale?")).expect("a scale request");
    assert_eq!(scale.line(), "PATCH /apis/apps/v1/namespaces/openfaas-fn/deployments/idle/scale?");
    assert_eq!(scale.body, Some(json!({"spec": {"replicas": 1}})));
    assert_eq!(replicas(&fake), Some(1));
}

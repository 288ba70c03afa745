//! Request-level tests: the exact requests the backend sends to the Kubernetes API for every
//! `Invoker` operation, against a stateful fake API server (no cluster needed).

mod support;

use std::time::Duration;

use faas_backend_k8s::KubernetesInvoker;
use faas_core::{FunctionRef, FunctionSpec, Invoker, Secret};
use support::FakeApi;

#[tokio::test]
async fn probe() {
    let fake = FakeApi::new();
    let inv = KubernetesInvoker::builder(fake.client()).build();
    fake.insert("secrets", "openfaas-fn", serde_json::json!({"metadata": {"name": "api-key", "namespace": "openfaas-fn"}}));
    inv.deploy(FunctionSpec::new("f", "img").secret("api-key")).await.unwrap();
    inv.update(FunctionSpec::new("f", "img2")).await.unwrap();
    inv.scale(&FunctionRef::default_ns("f"), 3).await.unwrap();
    inv.status(&FunctionRef::default_ns("f")).await.unwrap();
    inv.list("openfaas-fn").await.unwrap();
    inv.create_secret(Secret { name: "s".into(), namespace: "openfaas-fn".into(), value: "v".into() }).await.unwrap();
    inv.update_secret(Secret { name: "s".into(), namespace: "openfaas-fn".into(), value: "v".into() }).await.unwrap();
    inv.list_secrets("openfaas-fn").await.unwrap();
    inv.remove_secret("openfaas-fn", "s").await.unwrap();
    inv.namespaces().await.unwrap();
    let _ = inv.logs(faas_core::LogsRequest { tail: Some(3), since: Some(std::time::SystemTime::now() - Duration::from_secs(60)), ..faas_core::LogsRequest::for_function(FunctionRef::default_ns("f")) }).await.unwrap();
    inv.remove(&FunctionRef::default_ns("f")).await.unwrap();
    for r in fake.take_requests() {
        println!("{} {:?} {}", r.line(), r.content_type, r.body.map(|b| b.to_string()).unwrap_or_default().chars().take(200).collect::<String>());
    }
}

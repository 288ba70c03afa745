//! Engine refusals through the gateway over the Docker backend, over TCP on 127.0.0.1: what
//! the engine would refuse up front is a 400 naming the field; a function whose replicas the
//! engine refuses later is in a failed state that `GET /system/function/NAME` shows, and its
//! invocations get a 503 naming the engine's reason from the activator at once, not its
//! scale-from-zero timeout's. And OpenFaaS's certifier's scaling tests over the Docker
//! backend with the autoscaler's default settings: a function with only min and max set
//! scales up and down from its request rate, and one allowed to scale to zero goes there and
//! comes back on the next call.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use faas_backend_docker::{testing, DockerInvoker};
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{Autoscaled, FunctionSpec};
use faas_e2e::{scale_to_two_under_load, serve_gateway, wait_status};
use faas_http::client::GatewayClient;
use faas_http::{Gateway, GatewayConfig};
use http::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_refusals_reach_the_gateway_api() {
    testing::require_docker("engine_refusals_reach_the_gateway_api").await;
    let fixture = testing::fixture_image().await.unwrap();
    let (ns, instance, tag) =
        (testing::unique("t"), testing::unique("ig"), testing::unique("gone"));
    let image = format!("faas-rs/refused:{tag}");
    let _c =
        testing::InstanceGuard { instances: vec![instance.clone()], images: vec![image.clone()] };
    let docker = DockerInvoker::builder()
        .instance(instance.clone())
        .namespaces([ns.clone()])
        .owner(instance.clone())
        .start_timeout(Duration::from_secs(60))
        .health_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    // Waiting for a scale from zero would take up to this long: the 503 must not.
    let config = GatewayConfig {
        scale_from_zero_timeout: Duration::from_secs(120),
        ..GatewayConfig::default()
    };
    let shared: Arc<dyn Backend> = Arc::new(docker.clone());
    let gateway = Gateway::builder(shared).config(config).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = rx.await;
    }));
    let client = GatewayClient::new(&base).unwrap().with_timeout(Duration::from_secs(300));
    let json = [("content-type".to_string(), "application/json".to_string())];

    // Under the engine's 6 MiB minimum: a 400 naming the field, nothing deployed.
    let tiny = serde_json::json!({
        "service": "tiny", "image": fixture, "namespace": ns, "limits": {"memory": "5Mi"},
    });
    let r = client
        .send(Method::POST, "/system/functions", &json, Bytes::from(tiny.to_string()))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("limits.memory") && r.text().contains("6 MiB"), "{}", r.text());
    assert!(client.list(Some(&ns)).await.unwrap().is_empty());

    // The image's name is taken away after the deploy: the engine refuses the replica.
    testing::tag_image(&fixture, "faas-rs/refused", &tag).await.unwrap();
    let spec = FunctionSpec::new("gone", image.clone())
        .namespace(ns.clone())
        .env("FIXTURE_BEHAVIOUR", "echo")
        .label(labels::SCALE_MIN, "0")
        .label(labels::SCALE_MAX, "1");
    client.deploy(&spec).await.unwrap();
    testing::untag_image(&image).await.unwrap();
    let name = format!("gone.{ns}");
    // The first invocation scales it from zero; the start fails with the engine's reason.
    let r = client.invoke(&name, Method::POST, &[], Bytes::from("x"), false).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains(&image), "the 503 names the reason: {}", r.text());
    // The failed state, in the function's status.
    let r = client
        .send(Method::GET, &format!("/system/function/gone?namespace={ns}"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let st: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let reason = st["failure"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&image), "{st}");
    assert!(st["failure"]["attempts"].as_u64().unwrap() >= 1, "{st}");
    // Later invocations are answered from the failed state: the reason, not the
    // scale-from-zero timeout.
    for _ in 0..3 {
        let r = client.invoke(&name, Method::POST, &[], Bytes::from("x"), false).await.unwrap();
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().contains(&image), "{}", r.text());
        assert!(!r.text().contains("scale-from-zero timeout"), "{}", r.text());
    }
    client.remove("gone", Some(&ns)).await.unwrap();
    docker.shutdown().await;
    assert_eq!(testing::instance_containers(&instance).await.unwrap(), Vec::<String>::new());
}

/// A Docker backend of its own (instance and namespace), autoscaled with the default
/// settings (as `faas up` runs it), behind a gateway on 127.0.0.1.
struct Autoscaling {
    client: GatewayClient,
    docker: DockerInvoker,
    ns: String,
    fixture: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _guard: testing::InstanceGuard,
}

async fn autoscaling(test: &str) -> Autoscaling {
    testing::require_docker(test).await;
    let fixture = testing::fixture_image().await.unwrap();
    let (ns, instance) = (testing::unique("t"), testing::unique("as"));
    let guard = testing::InstanceGuard { instances: vec![instance.clone()], images: vec![] };
    let docker = DockerInvoker::builder()
        .instance(instance.clone())
        .namespaces([ns.clone()])
        .owner(instance)
        .start_timeout(Duration::from_secs(60))
        .health_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let backend = Arc::new(Autoscaled::new(docker.clone()));
    let (client, stop) = serve_gateway(backend, GatewayConfig::default()).await;
    Autoscaling { client, docker, ns, fixture, _stop: stop, _guard: guard }
}

/// OpenFaaS's certifier's `Test_ScaleUpAndDownFromThroughPut` on Docker: min 1, max 2, about
/// 10 calls a second of a short function: 2 replicas within 30 s, 1 again after the load
/// stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_scales_up_and_down_from_throughput() {
    let env = autoscaling("docker_scales_up_and_down_from_throughput").await;
    let (client, ns) = (&env.client, Some(env.ns.as_str()));
    // The fixture echoes by default: no env vars, so the JSON shapes below omit them.
    let spec = FunctionSpec::new("throughput", env.fixture.clone())
        .namespace(env.ns.clone())
        .label(labels::SCALE_MIN, "1")
        .label(labels::SCALE_MAX, "2");
    client.deploy(&spec).await.unwrap();
    wait_status(client, "throughput", ns, Duration::from_secs(60), "ready", |s| {
        s.available_replicas >= 1
    })
    .await;

    // The JSON shapes OpenFaaS's certifier compares, on this backend.
    faas_e2e::assert_openfaas_json_shapes(client, "throughput", ns).await;

    let name = format!("throughput.{}", env.ns);
    scale_to_two_under_load(client, "throughput", ns, &name, 2).await;
    let st = wait_status(client, "throughput", ns, Duration::from_secs(60), "back to min", |s| {
        s.replicas == 1
    })
    .await;
    assert!(st.available_replicas >= 1, "min stays up: {st:?}");

    client.remove("throughput", ns).await.unwrap();
    env.docker.shutdown().await;
}

/// OpenFaaS's certifier's `Test_ScaleToZero` on Docker, with a short zero-duration: max 2
/// and `com.openfaas.scale.zero=true`; load takes it to max, idleness to zero, and the next
/// call scales it from zero and answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_scales_to_zero_and_back() {
    let env = autoscaling("docker_scales_to_zero_and_back").await;
    let (client, ns) = (&env.client, Some(env.ns.as_str()));
    let spec = FunctionSpec::new("idler", env.fixture.clone())
        .namespace(env.ns.clone())
        .env("FIXTURE_BEHAVIOUR", "echo")
        .label(labels::SCALE_MAX, "2")
        .label(labels::SCALE_ZERO, "true")
        .label(labels::SCALE_ZERO_DURATION, "3s");
    client.deploy(&spec).await.unwrap();
    let name = format!("idler.{}", env.ns);

    scale_to_two_under_load(client, "idler", ns, &name, 0).await;
    wait_status(client, "idler", ns, Duration::from_secs(60), "zero after idling", |s| {
        s.replicas == 0 && s.available_replicas == 0
    })
    .await;

    let r = client.invoke(&name, Method::POST, &[], Bytes::from("again"), false).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "again"));
    let st = client.describe("idler", ns).await.unwrap();
    assert!(st.replicas >= 1 && st.available_replicas >= 1, "{st:?}");

    client.remove("idler", ns).await.unwrap();
    env.docker.shutdown().await;
}

//! The process backend routed by a non-default strategy and scaled by the KPA autoscaler:
//! a load step scales it out, idleness scales it to zero, and a request at zero is held and
//! served (activator). Then OpenFaaS's certifier's scaling tests through the gateway over
//! TCP, with the autoscaler's default settings: a function with only min and max set scales
//! up and down from its request rate, and one allowed to scale to zero goes there and comes
//! back on the next call. Real watchdog processes on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{
    scheduler_for, AutoscaleConfig, Autoscaled, Backend, FunctionRef, FunctionSpec, InvokeExt,
};
use faas_e2e::{scale_to_two_under_load, serve_gateway, wait_status};
use faas_http::client::GatewayClient;
use faas_http::GatewayConfig;

fn backend(tag: &str) -> (faas_watchdog::process::ProcessInvoker, std::path::PathBuf) {
    let state = std::env::temp_dir().join(format!("faas-e2e-as-{tag}-{}", std::process::id()));
    let invoker = faas_watchdog::process::ProcessInvoker::builder()
        .watchdog_command(env!("CARGO_BIN_EXE_faas-e2e-watchdog"), std::iter::empty::<&str>())
        .state_dir(&state)
        .scheduler(scheduler_for("two-choices").expect("known strategy"))
        .build()
        .expect("process backend");
    (invoker, state)
}

async fn replicas(inv: &dyn Backend, f: &FunctionRef) -> u64 {
    inv.status(f).await.expect("status").replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_scales_process_functions_out_to_zero_and_back() {
    let (raw, state) = backend("kpa");
    let inv = Arc::new(Autoscaled::with_config(
        raw,
        AutoscaleConfig::default().tick(Duration::from_millis(250)),
    ));
    let spec = FunctionSpec::new("slowcat", "x/slowcat")
        .process("sh -c 'sleep 0.5; cat'")
        .label("com.openfaas.scale.min", "1")
        .label("com.openfaas.scale.max", "4")
        .label("com.openfaas.scale.type", "capacity")
        .label("com.openfaas.scale.target", "1")
        .label("com.openfaas.scale.zero", "true")
        .label("com.openfaas.scale.zero-duration", "3s");
    let f = spec.function_ref();
    inv.deploy(spec).await.expect("deploy");
    assert_eq!(inv.call("slowcat", "warm").await.expect("first call"), "warm");

    // Load step: 6 concurrent clients against a target of 1 in flight per replica.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (inv, stop) = (inv.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut served = 0u32;
            loop {
                let body = format!("c{i}");
                let out = inv.call("slowcat", body.clone()).await.expect("call under load");
                assert_eq!(out, body.as_bytes());
                served += 1;
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return served;
                }
            }
        }));
    }
    let scaled_out = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let r = replicas(&*inv, &f).await;
            if r >= 2 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the autoscaler scaled out under load within 60 s");
    assert!(scaled_out <= 4, "never above max: {scaled_out}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        assert!(c.await.expect("client task") >= 1, "every request under load was answered");
    }

    // Idle: to zero after the 3 s zero-duration (bounded poll).
    tokio::time::timeout(Duration::from_secs(90), async {
        while replicas(&*inv, &f).await != 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("scaled to zero after idling");

    // A request at zero is held while an instance starts, then served.
    assert_eq!(inv.call("slowcat", "again").await.expect("call at zero"), "again");
    assert!(replicas(&*inv, &f).await >= 1);

    inv.remove(&f).await.expect("remove");
    let _ = std::fs::remove_dir_all(&state);
}

/// The gateway over the autoscaled process backend (the autoscaler's default settings, as
/// `faas up` runs it), on 127.0.0.1. Stops serving when the sender drops.
async fn gateway(
    tag: &str,
) -> (GatewayClient, tokio::sync::oneshot::Sender<()>, std::path::PathBuf) {
    gateway_with(tag, faas_core::AutoscaleConfig::default()).await
}

/// [`gateway`] with the autoscaler's `config`.
async fn gateway_with(
    tag: &str,
    config: faas_core::AutoscaleConfig,
) -> (GatewayClient, tokio::sync::oneshot::Sender<()>, std::path::PathBuf) {
    let (raw, state) = backend(tag);
    let (client, stop) =
        serve_gateway(Arc::new(Autoscaled::with_config(raw, config)), GatewayConfig::default())
            .await;
    (client, stop, state)
}

/// OpenFaaS's certifier's `Test_ScaleUpAndDownFromThroughPut`: min 1, max 2, about 10 calls
/// a second of a short function: 2 replicas within 30 s, 1 again after the load stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_up_and_down_from_throughput_through_the_gateway() {
    let (client, _stop, state) = gateway("rps").await;
    let spec = FunctionSpec::new("throughput", "x/throughput")
        .process("sha512sum")
        .label(labels::SCALE_MIN, "1")
        .label(labels::SCALE_MAX, "2");
    client.deploy(&spec).await.expect("deploy");
    wait_status(&client, "throughput", None, Duration::from_secs(30), "ready", |s| {
        s.available_replicas >= 1
    })
    .await;

    scale_to_two_under_load(&client, "throughput", None, "throughput", 2).await;
    let st =
        wait_status(&client, "throughput", None, Duration::from_secs(60), "back to min", |s| {
            s.replicas == 1
        })
        .await;
    assert!(st.available_replicas >= 1, "min stays up: {st:?}");

    client.remove("throughput", None).await.expect("remove");
    let _ = std::fs::remove_dir_all(&state);
}

/// OpenFaaS's certifier's `Test_ScaleToZero`, with a short idle time set by the operator:
/// max 2 and `com.openfaas.scale.zero=true`; load takes it to max, idleness to zero, and the next call
/// scales it from zero and answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_to_zero_and_back_through_the_gateway() {
    // As the certifier runs it: the function sets max and zero only; the idle time is the
    // operator's (`faas up --scale-to-zero-after 3s`, faas-idler's inactivity_duration).
    let idle = faas_core::AutoscaleConfig::default().idle_timeout(Duration::from_secs(3));
    let (client, _stop, state) = gateway_with("zero", idle).await;
    let spec = FunctionSpec::new("idler", "x/idler")
        .process("sha512sum")
        .label(labels::SCALE_MAX, "2")
        .label(labels::SCALE_ZERO, "true");
    client.deploy(&spec).await.expect("deploy");

    scale_to_two_under_load(&client, "idler", None, "idler", 0).await;
    wait_status(&client, "idler", None, Duration::from_secs(60), "zero after idling", |s| {
        s.replicas == 0 && s.available_replicas == 0
    })
    .await;

    let r =
        client.invoke("idler", Method::POST, &[], Bytes::from("again"), false).await.expect("call");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().split_whitespace().count(), 2, "sha512sum's answer: {}", r.text());
    let st = client.describe("idler", None).await.expect("describe");
    assert!(st.replicas >= 1 && st.available_replicas >= 1, "{st:?}");

    client.remove("idler", None).await.expect("remove");
    let _ = std::fs::remove_dir_all(&state);
}

//! The process backend routed by a non-default strategy and scaled by the KPA autoscaler:
//! a load step scales it out, idleness scales it to zero, and a request at zero is held and
//! served (activator). Real watchdog processes on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use faas_core::prelude::*;
use faas_core::{
    scheduler_for, AutoscaleConfig, Autoscaled, Backend, FunctionRef, FunctionSpec, InvokeExt,
};

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

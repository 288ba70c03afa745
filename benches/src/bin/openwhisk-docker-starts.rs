//! OpenWhisk action start benchmark on the Docker backend: scale from zero to the first
//! activation's answer of one native code action (our busybox-sh runtime,
//! `runtimes/blackbox/runtime.sh`, in the image of `faas_backend_docker::testing::
//! openwhisk_image`), from a stem cell (a container whose runtime is started, specialised by
//! `/init`, then `/run`) against a cold start (a new container, its watchdog and runtime,
//! `/init`, `/run`), plus warm activations of the same action as the baseline.
//!
//! Usage: `cargo run --release -p faas-benches --bin openwhisk-docker-starts -- [RUNS]`
//! (default 20). Needs a Docker engine and busybox-static (`scripts/ensure-docker.sh`);
//! prints a markdown table of p50/p99 in milliseconds.

use std::time::{Duration, Instant};

use faas_backend_docker::{testing, DockerInvoker};
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{FunctionRef, FunctionSpec, Invocation, InvocationMeta, StartKind};

/// The action: answers its parameters.
const CODE: &str = "#!/bin/sh\necho \"{\\\"hello\\\": $1}\"\n";

/// One activation; its time in ms and how its instance started.
async fn activate(d: &DockerInvoker, f: &FunctionRef) -> (f64, StartKind) {
    let t0 = Instant::now();
    let r = d.invoke(Invocation::post(f.clone(), r#"{"name":"bench"}"#)).await.expect("activation");
    let kind = r.extensions().get::<InvocationMeta>().expect("meta").start;
    let body = r.into_body().collect_bytes().await.expect("body");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON answer");
    assert_eq!(v["hello"]["name"], "bench", "{v}");
    (t0.elapsed().as_secs_f64() * 1e3, kind)
}

/// Scales the action to zero and times the first activation after it, `runs` times; each
/// start must be `kind`. `ready` is waited for (untimed) before each start.
async fn starts(
    d: &DockerInvoker,
    f: &FunctionRef,
    runs: usize,
    kind: StartKind,
    ready: impl Fn() -> bool,
) -> Vec<f64> {
    let mut v = Vec::new();
    for _ in 0..runs {
        d.scale(f, 0).await.expect("scale 0");
        faas_benches::wait_for("scale to zero", || {
            d.instances(f).map(|i| i.is_empty()).unwrap_or(false)
        })
        .await;
        faas_benches::wait_for("a stem cell", &ready).await;
        let (ms, k) = activate(d, f).await;
        assert_eq!(k, kind);
        v.push(ms);
    }
    v
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    testing::require_docker("openwhisk-docker-starts").await;
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let (ns, owner) = (testing::unique("bench"), testing::unique("bench"));
    let image = testing::openwhisk_image().await.expect("OpenWhisk image");
    let backend = |stems: usize| {
        DockerInvoker::builder()
            .namespaces([ns.clone()])
            .owner(owner.clone())
            .health_interval(Duration::from_millis(50))
            .stem_cells_image("blackbox", &image, stems)
            .build()
    };
    let spec = |name: &str| {
        FunctionSpec::new(name, image.clone())
            .namespace(ns.clone())
            .env("mode", "openwhisk")
            .env("ow_kind", "blackbox")
            .env("ow_code", CODE)
            .label(labels::SCALE_MIN, "0")
    };

    let cold_d = backend(0).await.expect("backend");
    cold_d.deploy(spec("cold")).await.expect("deploy");
    let cold_f = FunctionRef::new("cold", ns.clone());
    let mut cold = starts(&cold_d, &cold_f, runs, StartKind::Cold, || true).await;
    let mut warm = Vec::new();
    for _ in 0..runs.max(100) {
        let (ms, k) = activate(&cold_d, &cold_f).await;
        assert_eq!(k, StartKind::Warm);
        warm.push(ms);
    }
    cold_d.remove(&cold_f).await.expect("remove");
    cold_d.shutdown().await;

    let stem_d = backend(1).await.expect("backend");
    stem_d.deploy(spec("stem")).await.expect("deploy");
    let stem_f = FunctionRef::new("stem", ns.clone());
    let ready = || !stem_d.stem_cells("blackbox", Some(&image)).is_empty();
    let mut stem = starts(&stem_d, &stem_f, runs, StartKind::Prewarmed, ready).await;
    stem_d.remove(&stem_f).await.expect("remove");
    stem_d.shutdown().await;
    let _ = testing::cleanup(&ns, &owner).await;

    faas_benches::print_p50_p99(&mut [
        ("cold start: scale from zero to first answer (container, /init, /run)", &mut cold),
        ("stem cell: scale from zero to first answer (specialise: /init; /run)", &mut stem),
        ("warm activation", &mut warm),
    ]);
}

//! Docker backend start-path benchmark: `docker run --rm IMAGE true` (CLI baseline), cold
//! scale-from-zero to first response, prewarmed start, resume from pause, warm invocation.
//!
//! Usage: `cargo run --release -p faas-benches --bin docker-starts -- [RUNS]` (default 20).
//! Needs a Docker engine and busybox-static (see `scripts/ensure-docker.sh`); prints a
//! markdown table of p50/p95 in milliseconds.

use std::time::{Duration, Instant};

use faas_backend_docker::{testing, DockerInvoker};
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{FunctionRef, FunctionSpec, Invocation, InvocationMeta, StartKind};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn timed_call(d: &DockerInvoker, f: &FunctionRef) -> (f64, StartKind) {
    let t0 = Instant::now();
    let r = d.invoke(Invocation::post(f.clone(), "x")).await.expect("invoke");
    let kind = r.extensions().get::<InvocationMeta>().expect("meta").start;
    let _ = r.into_body().collect_bytes().await.expect("body");
    (t0.elapsed().as_secs_f64() * 1e3, kind)
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    testing::require_docker("docker-starts").await;
    let image = testing::fixture_image().await.expect("fixture image");
    let ns = testing::unique("bench");
    let owner = testing::unique("bench");
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();

    // Baseline: the docker CLI creating, starting, waiting for and removing a container.
    let mut base = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let st = std::process::Command::new("docker")
            .args(["run", "--rm", &image, "true"])
            .status()
            .expect("docker run");
        assert!(st.success());
        base.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    rows.push(("`docker run --rm IMAGE true` (CLI baseline)", base));

    let template = FunctionSpec::new("template", image.clone())
        .namespace(ns.clone())
        .env("FIXTURE_BEHAVIOUR", "echo");
    let d = DockerInvoker::builder()
        .namespaces([ns.clone()])
        .owner(owner.clone())
        .pause_after(Duration::from_millis(200))
        .health_interval(Duration::from_millis(50))
        .prewarm_spec(&template, 1)
        .build()
        .await
        .expect("backend");

    // Cold: a function whose configuration the pool does not match.
    let cold = FunctionSpec::new("cold", image.clone())
        .namespace(ns.clone())
        .env("FIXTURE_BEHAVIOUR", "echo")
        .env("COLD", "1")
        .label(labels::SCALE_MIN, "0");
    d.deploy(cold).await.expect("deploy");
    let fc = FunctionRef::new("cold", ns.clone());
    let mut v = Vec::new();
    for _ in 0..runs {
        d.scale(&fc, 0).await.expect("scale 0");
        wait_for("cold scale to zero", || d.instances(&fc).map(|i| i.is_empty()).unwrap_or(false))
            .await;
        let (ms, kind) = timed_call(&d, &fc).await;
        assert_eq!(kind, StartKind::Cold);
        v.push(ms);
    }
    rows.push(("scale from zero, cold (create+start+ready+response)", v));

    // Prewarmed: same configuration as the pool's template.
    d.deploy(template.clone().label(labels::SCALE_MIN, "0")).await.expect("deploy");
    let fp = FunctionRef::new("template", ns.clone());
    let mut v = Vec::new();
    for _ in 0..runs {
        d.scale(&fp, 0).await.expect("scale 0");
        wait_for("prewarm refill", || d.prewarmed() >= 1).await;
        let (ms, kind) = timed_call(&d, &fp).await;
        assert_eq!(kind, StartKind::Prewarmed);
        v.push(ms);
    }
    rows.push(("scale from zero, prewarmed container", v));

    // Resume from pause, then warm.
    let mut v = Vec::new();
    for _ in 0..runs {
        wait_for("replica paused", || {
            d.instances(&fc).map(|i| i.iter().all(|r| r.paused)).unwrap_or(false)
        })
        .await;
        let (ms, kind) = timed_call(&d, &fc).await;
        assert_eq!(kind, StartKind::Resumed);
        v.push(ms);
    }
    rows.push(("resume a paused replica (unpause+response)", v));
    let mut v = Vec::new();
    for _ in 0..runs.max(200) {
        let (ms, kind) = timed_call(&d, &fc).await;
        if kind == StartKind::Warm {
            v.push(ms);
        }
    }
    rows.push(("warm invocation", v));

    d.remove(&fc).await.expect("remove");
    d.remove(&fp).await.expect("remove");
    d.shutdown().await;
    let _ = testing::cleanup(&ns, &owner).await;

    println!("| path | runs | p50 ms | p95 ms |\n|---|---|---|---|");
    for (name, mut v) in rows {
        let n = v.len();
        println!("| {name} | {n} | {:.1} | {:.1} |", pct(&mut v, 0.5), pct(&mut v, 0.95));
    }
}

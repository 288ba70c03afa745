//! The Swarm backend's invoke path against the Docker backend's, in the same run: N
//! sequential warm calls of one echo function on each (p50, p99, max and the calls over
//! 100 ms: the invoke path must make no engine call), the same on the Docker backend through
//! the default gateway over HTTP (what a user's loop of calls sees), and how long a call of a function the
//! engine cannot place takes to fail with its 503 (it must not wait for the start timeout).
//!
//! Usage: `cargo run -p faas-benches --bin swarm-invoke -- [CALLS]` (default 1000). Needs a
//! Docker engine that is a swarm manager (`docker swarm init --advertise-addr 127.0.0.1`) and
//! busybox-static; prints a markdown table in milliseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_backend_docker::swarm::{Placement, SwarmInvoker};
use faas_backend_docker::{testing, DockerInvoker};
use faas_core::prelude::*;
use faas_core::{Backend, FunctionRef, FunctionSpec, Invocation};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// `calls` sequential echo calls, each timed to its whole body.
async fn sequential(b: &dyn Backend, f: &FunctionRef, calls: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(calls);
    for i in 0..calls {
        let t0 = Instant::now();
        let r = b.invoke(Invocation::post(f.clone(), format!("call {i}"))).await.expect("invoke");
        let body = r.into_body().collect_bytes().await.expect("body");
        assert_eq!(body, format!("call {i}"));
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    out
}

/// `calls` sequential echo calls of `/function/{name}` through a gateway, each timed to its
/// whole body.
async fn sequential_http(
    client: &faas_http::client::GatewayClient,
    name: &str,
    calls: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(calls);
    for i in 0..calls {
        let t0 = Instant::now();
        let body = bytes::Bytes::from(format!("call {i}"));
        let r = client
            .invoke(name, http::Method::POST, &[], body.clone(), false)
            .await
            .expect("invoke over HTTP");
        assert_eq!((r.status.as_u16(), &r.body), (200, &body));
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    out
}

/// The default gateway over `backend` on 127.0.0.1, and a client of it.
async fn gateway(
    backend: Arc<dyn Backend>,
) -> (faas_http::client::GatewayClient, tokio::sync::oneshot::Sender<()>) {
    let gateway = faas_http::Gateway::builder(backend).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
    let base = format!("http://{}", listener.local_addr().expect("local address"));
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = rx.await;
    }));
    (faas_http::client::GatewayClient::new(&base).expect("client"), stop)
}

async fn ready(b: &dyn Backend, f: &FunctionRef) {
    assert!(b.wait_ready(f, Duration::from_secs(60)).await.expect("wait_ready"), "{f} not ready");
    // The first call also opens the pooled connection.
    let _ = b.invoke(Invocation::post(f.clone(), "warm")).await.expect("warm call");
}

fn row(name: &str, v: &mut [f64]) -> String {
    let over = v.iter().filter(|x| **x > 100.0).count();
    let n = v.len();
    format!(
        "| {name} | {n} | {:.2} | {:.2} | {:.2} | {over} |",
        pct(v, 0.5),
        pct(v, 0.99),
        pct(v, 1.0)
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    testing::require_docker("swarm-invoke").await;
    let image = testing::fixture_image().await.expect("fixture image");
    let ns = testing::unique("bench");
    let spec = |name: &str| {
        FunctionSpec::new(name, image.clone())
            .namespace(ns.clone())
            .env("FIXTURE_BEHAVIOUR", "echo")
    };
    let mut rows = Vec::new();

    let docker =
        Arc::new(DockerInvoker::builder().namespaces([ns.clone()]).build().await.expect("docker"));
    docker.deploy(spec("plain")).await.expect("deploy on docker");
    let f = FunctionRef::new("plain", ns.clone());
    ready(docker.as_ref(), &f).await;
    rows.push(row("Docker backend, warm echo", &mut sequential(docker.as_ref(), &f, calls).await));
    let (client, stop) = gateway(docker.clone()).await;
    let name = format!("plain.{ns}");
    let _ = sequential_http(&client, &name, 1).await;
    rows.push(row(
        "Docker backend through the gateway over HTTP, warm echo",
        &mut sequential_http(&client, &name, calls).await,
    ));
    drop(stop);
    docker.remove(&f).await.expect("remove");
    docker.shutdown().await;

    let swarm = SwarmInvoker::builder().namespaces([ns.clone()]).build().await.expect("swarm");
    swarm.deploy(spec("svc")).await.expect("deploy on swarm");
    let f = FunctionRef::new("svc", ns.clone());
    ready(&swarm, &f).await;
    rows.push(row("Swarm backend, warm echo", &mut sequential(&swarm, &f, calls).await));
    swarm.remove(&f).await.expect("remove");

    // A function constrained to a label no node has: each call fails with the 503.
    let mut pending = spec("pending");
    pending.constraints = vec![format!("node.labels.{ns} == none")];
    swarm.deploy(pending).await.expect("deploy pending");
    let p = FunctionRef::new("pending", ns.clone());
    let t0 = Instant::now();
    while !matches!(swarm.placement(&p).expect("placement"), Placement::Pending(_)) {
        assert!(t0.elapsed() < Duration::from_secs(60), "never pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fails = Vec::new();
    for _ in 0..100 {
        let t0 = Instant::now();
        let e = swarm.invoke(Invocation::post(p.clone(), "x")).await.expect_err("pending");
        assert_eq!(e.http_status(), 503);
        fails.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    rows.push(row("Swarm backend, call of a pending function (503)", &mut fails));
    swarm.remove(&p).await.expect("remove");
    swarm.shutdown();

    println!("| path | calls | p50 ms | p99 ms | max ms | over 100 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
}

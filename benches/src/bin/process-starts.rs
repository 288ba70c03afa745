//! Process backend start-path benchmark, through the gateway over HTTP on 127.0.0.1: scale
//! from zero to the first response (the request waits while a replica starts), a warm call
//! of the same function, and the machine's own baseline of spawning the watchdog binary and
//! waiting for its health answer outside the backend. Three functions: `upper` (fork mode,
//! `tr a-z A-Z` behind a watchdog), `web` (`faas-fixture` in http mode, the process alone)
//! and `web-watchdog` (the same behind a watchdog: its spec sets `watchdog_threads`). With
//! `FAAS_LAMBDA_RUNTIME` set to a Lambda function's `bootstrap` (`faas-lambda-fns`'s
//! `lambda-echo`, on the unmodified `lambda_runtime` crate) two more: `lambda` (its runtime
//! run by the backend itself) and `lambda-watchdog` (behind a watchdog).
//!
//! Usage: `cargo build --release -p faas-watchdog --bins -p faas-lambda-fns --bin
//! lambda-echo && FAAS_LAMBDA_RUNTIME=target/release/lambda-echo cargo run --release -p
//! faas-benches --bin process-starts -- [RUNS]` (default 20). The watchdog is
//! `target/release/faas-watchdog` (override with `FAAS_WATCHDOG_BIN`), `faas-fixture` the one
//! beside it. Prints a markdown table of p50/p99 in milliseconds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{FunctionRef, FunctionSpec};
use faas_http::client::GatewayClient;
use faas_http::{Gateway, GatewayConfig};
use faas_watchdog::process::ProcessInvoker;
use http::Method;

/// Calls `name` with `hello`, checks its answer holds `expect`; the milliseconds it took.
async fn call(client: &GatewayClient, name: &str, expect: &str) -> f64 {
    let t0 = Instant::now();
    let r = client
        .invoke(name, Method::POST, &[], Bytes::from_static(b"hello"), false)
        .await
        .expect("invoke");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(expect), "{name}: {}", r.text());
    t0.elapsed().as_secs_f64() * 1e3
}

/// Spawns the watchdog by hand and polls its health every millisecond: the floor for any
/// backend that starts a fresh process per replica.
async fn bare_start(bin: &PathBuf) -> f64 {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .env("fprocess", "tr a-z A-Z")
        .env("port", port.to_string())
        .env("bind_address", "127.0.0.1")
        .env("healthcheck_interval", "0s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn watchdog");
    let client = GatewayClient::new(&format!("http://127.0.0.1:{port}")).unwrap();
    loop {
        if let Ok(r) = client.send(Method::GET, "/_/health", &[], Bytes::new()).await {
            if r.status == 200 {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "watchdog never healthy");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = t0.elapsed().as_secs_f64() * 1e3;
    let _ = child.kill().await;
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let bin = faas_benches::watchdog_bin();
    assert!(bin.exists(), "no watchdog at {}: build it first (see the usage)", bin.display());
    let state = std::env::temp_dir().join(format!("faas-process-starts-{}", std::process::id()));
    let backend = Arc::new(
        ProcessInvoker::builder()
            .watchdog_command(&bin, std::iter::empty::<&str>())
            .state_dir(&state)
            .build()
            .expect("process backend"),
    );
    let gateway = Gateway::builder(backend.clone()).config(GatewayConfig::default()).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(faas_http::serve(listener, gateway.service(), std::future::pending()));
    let client = GatewayClient::new(&format!("http://{addr}")).unwrap();
    let fixture = bin.with_file_name("faas-fixture").display().to_string();
    let mut specs = vec![
        ("upper", "HELLO", FunctionSpec::new("upper", "local").process("tr a-z A-Z")),
        ("web", "hello", FunctionSpec::new("web", "local").process(&fixture).env("mode", "http")),
        (
            "web-watchdog",
            "hello",
            FunctionSpec::new("web-watchdog", "local")
                .process(&fixture)
                .env("mode", "http")
                .env("watchdog_threads", "1"),
        ),
    ];
    if let Ok(runtime) = std::env::var("FAAS_LAMBDA_RUNTIME") {
        // The event is an HTTP API event whose body is `hello`; the function answers with it.
        let lambda = |name: &str| {
            FunctionSpec::new(name, "local").process(format!("'{runtime}'")).env("mode", "lambda")
        };
        specs.push(("lambda", r#""body":"hello""#, lambda("lambda")));
        let behind = lambda("lambda-watchdog").env("watchdog_threads", "1");
        specs.push(("lambda-watchdog", r#""body":"hello""#, behind));
    }
    let mut rows = Vec::new();
    for (name, expect, spec) in specs {
        let spec = spec.label(labels::SCALE_MIN, "0").label(labels::SCALE_ZERO, "true");
        backend.deploy(spec).await.expect("deploy");
        let f = FunctionRef::default_ns(name);
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            backend.scale(&f, 0).await.unwrap();
            let t0 = Instant::now();
            while backend.status(&f).await.unwrap().available_replicas > 0 {
                assert!(t0.elapsed() < Duration::from_secs(10), "replica never stopped");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cold.push(call(&client, name, expect).await);
            for _ in 0..5 {
                warm.push(call(&client, name, expect).await);
            }
        }
        backend.remove(&f).await.unwrap();
        rows.push((
            format!("{name}: scale from zero to first response, through the gateway"),
            cold,
        ));
        rows.push((format!("{name}: warm call, through the gateway"), warm));
    }
    let mut bare = Vec::new();
    for _ in 0..runs {
        bare.push(bare_start(&bin).await);
    }
    rows.push(("baseline: spawn the watchdog by hand until /_/health answers".into(), bare));
    let _ = std::fs::remove_dir_all(&state);
    println!("| what | runs | p50 ms | p99 ms |\n|---|---:|---:|---:|");
    for (what, v) in &mut rows {
        println!(
            "| {what} | {} | {:.1} | {:.1} |",
            v.len(),
            faas_benches::pct(v, 0.5),
            faas_benches::pct(v, 0.99)
        );
    }
}

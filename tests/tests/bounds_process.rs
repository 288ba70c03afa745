//! Replica caps on the process backend behind the gateway, over TCP on 127.0.0.1: hostile
//! scaling labels are refused, a function never runs more replicas than its cap, the node
//! cap holds across functions, and the gateway keeps answering while replicas start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{FunctionRef, FunctionSpec, ReplicaLimits};
use faas_http::client::GatewayClient;
use faas_http::{Gateway, GatewayConfig};
use faas_watchdog::process::ProcessInvoker;
use http::Method;

struct Env {
    client: GatewayClient,
    invoker: ProcessInvoker,
    state: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

async fn start(tag: &str, limits: ReplicaLimits) -> Env {
    start_with(tag, limits, GatewayConfig::default()).await
}

async fn start_with(tag: &str, limits: ReplicaLimits, config: GatewayConfig) -> Env {
    let state = std::env::temp_dir().join(format!("faas-bounds-{tag}-{}", std::process::id()));
    let invoker = ProcessInvoker::builder()
        .watchdog_command(env!("CARGO_BIN_EXE_faas-e2e-watchdog"), std::iter::empty::<&str>())
        .state_dir(&state)
        .replica_limits(limits)
        .start_concurrency(2)
        .build()
        .unwrap();
    let shared: Arc<dyn Backend> = Arc::new(invoker.clone());
    let gateway = Gateway::builder(shared).config(config).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = rx.await;
    }));
    let client = GatewayClient::new(&base).unwrap().with_timeout(Duration::from_secs(30));
    Env { client, invoker, state, _stop: tx }
}

fn json() -> [(String, String); 1] {
    [("content-type".to_string(), "application/json".to_string())]
}

fn capped(name: &str, min: u32, max: u32) -> FunctionSpec {
    FunctionSpec::new(name, "x/cat")
        .process("cat")
        .label(labels::SCALE_MIN, min.to_string())
        .label(labels::SCALE_MAX, max.to_string())
}

/// Running watchdog processes of `f` (started and not yet exited).
fn running(env: &Env, f: &str) -> usize {
    env.invoker.instance_pids(&FunctionRef::new(f, "openfaas-fn")).map(|p| p.len()).unwrap_or(0)
}

/// Ready replicas of `f` as the backend reports them.
async fn available(env: &Env, f: &str) -> u64 {
    env.invoker
        .status(&FunctionRef::new(f, "openfaas-fn"))
        .await
        .map(|s| s.available_replicas)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_deploy_is_refused_naming_the_cap() {
    let env = start("bomb", ReplicaLimits::new(4, 6)).await;
    let bomb = serde_json::json!({
        "service": "bomb",
        "image": "x/bomb",
        "envProcess": "cat",
        "labels": {
            "com.openfaas.scale.min": "1000000000",
            "com.openfaas.scale.max": "1000000000",
        },
    });
    let r = env
        .client
        .send(Method::POST, "/system/functions", &json(), Bytes::from(bomb.to_string()))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("labels.com.openfaas.scale.min")
            && r.text().contains("cap of 4 replicas per function"),
        "the message names the field and the cap: {}",
        r.text()
    );
    // Refused before anything started: the backend never knew the function, so no replica
    // of it was ever spawned (the fork bomb started them inside the request).
    assert!(
        matches!(
            env.invoker.instance_pids(&FunctionRef::new("bomb", "openfaas-fn")),
            Err(faas_core::Error::NotFound { .. })
        ),
        "the refused function has no replicas"
    );
    assert!(env.client.list(None).await.unwrap().is_empty(), "nothing was deployed");

    // The same over an update, and over a scale request.
    env.client.deploy(&capped("small", 1, 2)).await.unwrap();
    let mut over = capped("small", 1, 5);
    over.labels.remove(labels::SCALE_MIN);
    let r = env
        .client
        .send(
            Method::PUT,
            "/system/functions",
            &json(),
            Bytes::from(serde_json::to_vec(&over).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("labels.com.openfaas.scale.max"), "{}", r.text());
    let scale = serde_json::json!({ "serviceName": "small", "replicas": 1_000_000_000u64 });
    let r = env
        .client
        .send(Method::POST, "/system/scale-function/small", &json(), Bytes::from(scale.to_string()))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("replicas") && r.text().contains("cap of 4 replicas per function"),
        "{}",
        r.text()
    );
    assert!(running(&env, "small") <= 2);
    env.client.remove("small", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_deployed_at_its_cap_reaches_it_and_never_more() {
    let env = start("atcap", ReplicaLimits::new(5, 8)).await;
    env.client.deploy(&capped("full", 5, 5)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut samples = 0;
    let mut reached_at = None;
    // Sample throughout the scale-up and for a while after it: never above the cap.
    loop {
        let n = running(&env, "full");
        assert!(n <= 5, "{n} replicas running, over the cap of 5");
        let ready = available(&env, "full").await;
        assert!(ready <= 5, "{ready} replicas ready, over the cap of 5");
        samples += 1;
        if ready == 5 && reached_at.is_none() {
            reached_at = Some(samples);
        }
        if reached_at.is_some_and(|at| samples >= at + 50) {
            break;
        }
        assert!(Instant::now() < deadline, "5 replicas not ready in 60 s (ready: {ready})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running(&env, "full"), 5);
    assert_eq!(env.client.describe("full", None).await.unwrap().available_replicas, 5);
    env.client.remove("full", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cap_holds_across_functions() {
    let env = start("node", ReplicaLimits::new(3, 4)).await;
    env.client.deploy(&capped("a", 3, 3)).await.unwrap();
    env.client.deploy(&capped("b", 3, 3)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut full_for = 0;
    loop {
        let total = running(&env, "a") + running(&env, "b");
        assert!(total <= 4, "{total} replicas running, over the node cap of 4");
        let ready = available(&env, "a").await + available(&env, "b").await;
        assert!(ready <= 4, "{ready} replicas ready, over the node cap of 4");
        if ready == 4 {
            full_for += 1;
            if full_for >= 50 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the node did not fill to 4 in 60 s ({ready})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Slots freed by one function go to the other.
    env.client.remove("a", None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while available(&env, "b").await < 3 {
        assert!(running(&env, "b") <= 3);
        assert!(Instant::now() < deadline, "b did not reach 3 replicas once a was gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running(&env, "b"), 3);
    env.client.remove("b", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_healthz_while_a_function_scales_to_its_cap() {
    let env = start("healthz", ReplicaLimits::new(8, 8)).await;
    env.client.deploy(&capped("wide", 1, 8)).await.unwrap();
    let t0 = Instant::now();
    env.client.scale("wide", None, 8).await.unwrap();
    let answered = t0.elapsed();
    assert!(answered < Duration::from_secs(1), "the scale request took {answered:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut slowest = Duration::ZERO;
    let mut polls = 0;
    while available(&env, "wide").await < 8 {
        let t = Instant::now();
        let r = env.client.send(Method::GET, "/healthz", &[], Bytes::new()).await.unwrap();
        let took = t.elapsed();
        assert_eq!(r.status, 200);
        slowest = slowest.max(took);
        polls += 1;
        assert!(Instant::now() < deadline, "8 replicas not ready in 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(polls > 0, "the scale-up finished before the first poll");
    assert!(
        slowest < Duration::from_millis(100),
        "/healthz took {slowest:?} at worst over {polls} polls during the scale-up"
    );
    assert_eq!(running(&env, "wide"), 8);
    env.client.remove("wide", None).await.unwrap();
}

/// A call waiting behind `maxConcurrency` gets a 429 with `Retry-After` before the gateway's
/// upstream timeout, not that timeout's 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_behind_max_concurrency_gets_429_before_the_upstream_timeout() {
    let cfg = GatewayConfig { upstream_timeout: Duration::from_secs(4), ..Default::default() };
    let env = start_with("busy", ReplicaLimits::new(4, 8), cfg).await;
    let spec = FunctionSpec::new("busy", "x/busy")
        .process("sleep 6")
        .max_concurrency(1)
        .label(labels::SCALE_MIN, "1")
        .label(labels::SCALE_MAX, "1");
    env.client.deploy(&spec).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while available(&env, "busy").await < 1 {
        assert!(Instant::now() < deadline, "no replica in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let occupant = {
        let client = env.client.clone();
        tokio::spawn(
            async move { client.invoke("busy", Method::POST, &[], Bytes::new(), false).await },
        )
    };
    // The occupant is in once the replica reports it in flight.
    let f = FunctionRef::new("busy", "openfaas-fn");
    while env.invoker.instances(&f).unwrap().iter().all(|i| i.in_flight == 0) {
        assert!(Instant::now() < deadline, "the first call never reached the replica");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = env.client.invoke("busy", Method::POST, &[], Bytes::new(), false).await.unwrap();
    // A 429 (the upstream timeout would have given a 504), while the occupant still runs:
    // the wait ended on its own budget, not when the slot freed up (no clock is read).
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    assert!(!occupant.is_finished(), "answered only after the occupant had finished");
    let _ = occupant.await;
    env.client.remove("busy", None).await.unwrap();
}

/// A header too large to become a fork-mode function's environment variable is 431 through
/// the gateway, naming the header (was a 502 "Argument list too long").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_kb_header_to_a_fork_mode_function_is_431() {
    let env = start("header", ReplicaLimits::new(4, 8)).await;
    env.client.deploy(&capped("fork", 1, 1)).await.unwrap();
    let big = "x".repeat(300 * 1024);
    let r = env
        .client
        .invoke("fork", Method::POST, &[("x-big".to_string(), big)], Bytes::from("hi"), false)
        .await
        .unwrap();
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(r.text().contains("X-Big"), "{}", r.text());
    let r = env.client.invoke("fork", Method::POST, &[], Bytes::from("hi"), false).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hi"));
    env.client.remove("fork", None).await.unwrap();
}

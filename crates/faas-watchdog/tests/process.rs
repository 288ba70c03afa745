//! Process-backend behaviour beyond the conformance suite: no process left behind, crashed
//! replicas restarted, fork-mode functions, secrets directory, constraints, idle scale to zero.

mod common;

use std::time::Duration;

use common::{process_gone, temp_dir, wait_gone, FIXTURE, WATCHDOG};
use faas_core::spec::labels;
use faas_core::{Error, FunctionRef, FunctionSpec, Invocation, Invoker, InvokerExt, Secret};
use faas_watchdog::process::ProcessInvoker;

fn invoker(tag: &str) -> ProcessInvoker {
    ProcessInvoker::builder()
        .watchdog_command(WATCHDOG, Vec::<String>::new())
        .state_dir(temp_dir(tag))
        .stop_grace(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn wait_available(inv: &ProcessInvoker, f: &FunctionRef, n: u64) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if inv.status(f).await.map(|s| s.available_replicas == n).unwrap_or(false) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{f} never had {n} available replicas"));
}

/// All descendants of `pid` (from /proc).
fn descendants(pid: u32) -> Vec<u32> {
    let mut pairs = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let ppid: u32 = rest.split_whitespace().nth(1).unwrap().parse().unwrap();
        pairs.push((p, ppid));
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (c, _) in pairs.iter().filter(|(_, pp)| *pp == p) {
            out.push(*c);
            todo.push(*c);
        }
    }
    out
}

fn with_constraint(mut s: FunctionSpec, c: &str) -> FunctionSpec {
    s.constraints.push(c.to_string());
    s
}

fn fixture_spec(name: &str, behaviour: &str) -> FunctionSpec {
    FunctionSpec::new(name, "faas-fixture")
        .process(FIXTURE)
        .env("mode", "http")
        .env("FIXTURE_BEHAVIOUR", behaviour)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_leaves_no_process_behind() {
    let inv = invoker("remove");
    // Two http-mode replicas (watchdog + fixture each)...
    inv.deploy(fixture_spec("web", "echo").label(labels::SCALE_MIN, "2")).await.unwrap();
    // ...and a fork-mode function with a request still running when it is removed.
    inv.deploy(FunctionSpec::new("slow", "none").process("sh -c 'sleep 120'")).await.unwrap();
    let web = FunctionRef::default_ns("web");
    let slow = FunctionRef::default_ns("slow");
    wait_available(&inv, &web, 2).await;
    wait_available(&inv, &slow, 1).await;
    assert_eq!(inv.call("web", "hi").await.unwrap(), "hi");
    let inv2 = inv.clone();
    let pending = tokio::spawn(async move { inv2.invoke(Invocation::post("slow", "")).await });

    let mut pids = Vec::new();
    for f in [&web, &slow] {
        for (_, pid) in inv.instance_pids(f).unwrap() {
            pids.push(pid);
            pids.extend(descendants(pid));
        }
    }
    // The watchdogs, the two fixtures, and the sleeping fork-mode process (with its shell).
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let slow_pid = inv.instance_pids(&slow).unwrap()[0].1;
            if !descendants(slow_pid).is_empty() {
                pids.extend(descendants(slow_pid));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slow request never started its process");
    pids.sort();
    pids.dedup();
    assert!(pids.len() >= 6, "expected at least 6 processes, found {pids:?}");

    inv.remove(&web).await.unwrap();
    inv.remove(&slow).await.unwrap();
    for pid in &pids {
        assert!(wait_gone(*pid, Duration::from_secs(10)).await, "process {pid} survived removal");
    }
    let r = tokio::time::timeout(Duration::from_secs(30), pending).await.unwrap().unwrap();
    assert!(r.is_err(), "the request in flight at removal cannot succeed");
    assert!(matches!(inv.status(&web).await, Err(Error::NotFound { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_replica_is_replaced() {
    let inv = invoker("crash");
    inv.deploy(FunctionSpec::new("cat", "none").process("cat")).await.unwrap();
    let f = FunctionRef::default_ns("cat");
    wait_available(&inv, &f, 1).await;
    let before = inv.instance_pids(&f).unwrap();
    assert_eq!(before.len(), 1);
    let (old_id, old_pid) = before[0].clone();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &old_pid.to_string()])
        .status()
        .unwrap()
        .success());
    assert!(wait_gone(old_pid, Duration::from_secs(10)).await);
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let now = inv.instance_pids(&f).unwrap();
            let st = inv.status(&f).await.unwrap();
            if st.available_replicas == 1 && now.len() == 1 && now[0].0 != old_id {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the crashed replica was not replaced");
    assert_eq!(inv.call("cat", "back again").await.unwrap(), "back again");
    let logs = inv.read_logs(&f).await.unwrap();
    assert!(
        logs.iter().any(|e| e.instance == old_id && e.text.contains("exited unexpectedly")),
        "{logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_mode_functions_get_env_and_a_secrets_directory() {
    let inv = invoker("fork-env");
    inv.create_secret(Secret {
        name: "api-key".into(),
        namespace: "openfaas-fn".into(),
        value: "k1".into(),
    })
    .await
    .unwrap();
    inv.deploy(
        FunctionSpec::new("show", "none")
            .process(r#"sh -c 'echo "$GREETING"; cat "$OPENFAAS_SECRETS_DIR/api-key"; echo; echo "$Http_X_Test_A"'"#)
            .env("GREETING", "hello")
            .env("mode", "serializing")
            .secret("api-key"),
    )
    .await
    .unwrap();
    let mut req = http::Request::new(faas_core::Body::from("x"));
    *req.method_mut() = http::Method::POST;
    req.headers_mut().insert("x-test-a", "header-value".parse().unwrap());
    let resp = inv.invoke(Invocation::new("show", req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect_bytes().await.unwrap();
    assert_eq!(body, "hello\nk1\nheader-value\n");
    // An updated secret is visible on the next read.
    inv.update_secret(Secret {
        name: "api-key".into(),
        namespace: "openfaas-fn".into(),
        value: "k2".into(),
    })
    .await
    .unwrap();
    let body = inv.call("show", "").await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("k2"), "{body:?}");
    // A non-zero exit is a developer error (crash) carrying the watchdog's message.
    inv.deploy(FunctionSpec::new("fails", "none").process("sh -c 'exit 4'")).await.unwrap();
    match inv.invoke(Invocation::post("fails", "")).await {
        Err(Error::Developer { message, .. }) => {
            assert!(message.contains("exit code 4"), "{message}")
        }
        other => panic!("expected a developer error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsatisfiable_placement_gives_a_clear_error() {
    let inv = invoker("constraints");
    let spec = || FunctionSpec::new("placed", "none").process("cat");
    match inv.deploy(with_constraint(spec(), "node.labels.gpu == yes")).await {
        Err(Error::InvalidSpec { field, reason }) => {
            assert_eq!(field, "constraints");
            assert!(reason.contains("node.labels.gpu == yes"), "{reason}");
        }
        other => panic!("expected InvalidSpec(constraints), got {other:?}"),
    }
    let arch = inv.node().arch.clone();
    inv.deploy(with_constraint(spec(), &format!("node.platform.arch == {arch}"))).await.unwrap();
    inv.remove(&FunctionRef::default_ns("placed")).await.unwrap();
    let mut too_big = spec();
    too_big.requests = Some(faas_core::Resources { memory: Some("1000Ti".into()), cpu: None });
    match inv.deploy(too_big).await {
        // The scheduler names the request no node can hold.
        Err(Error::InvalidSpec { field, reason }) => {
            assert_eq!(field, "requests");
            assert!(reason.contains("memory"), "{reason}");
        }
        Err(e @ Error::Unavailable { .. }) => assert!(e.to_string().contains("capacity"), "{e}"),
        other => panic!("expected a placement error, got {other:?}"),
    }
    match inv.deploy(FunctionSpec::new("noproc", "img")).await {
        Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, "envProcess"),
        other => panic!("expected InvalidSpec(envProcess), got {other:?}"),
    }
    match inv.deploy(spec().env("exec_timeout", "soon")).await {
        Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, "envVars.exec_timeout"),
        other => panic!("expected InvalidSpec(envVars.exec_timeout), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_functions_scale_to_zero_and_back() {
    let inv = invoker("idle");
    inv.deploy(
        fixture_spec("idle", "echo")
            .label(labels::SCALE_ZERO, "true")
            .label(labels::SCALE_ZERO_DURATION, "1s"),
    )
    .await
    .unwrap();
    let f = FunctionRef::default_ns("idle");
    wait_available(&inv, &f, 1).await;
    let pids = inv.instance_pids(&f).unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = inv.status(&f).await.unwrap();
            if s.replicas == 0 && s.available_replicas == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("never scaled to zero");
    for (_, pid) in pids {
        assert!(wait_gone(pid, Duration::from_secs(10)).await);
    }
    assert_eq!(inv.call("idle", "again").await.unwrap(), "again");
    assert!(inv.status(&f).await.unwrap().replicas >= 1);
    assert!(!process_gone(inv.instance_pids(&f).unwrap()[0].1));
}

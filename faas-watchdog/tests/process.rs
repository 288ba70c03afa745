//! Process-backend behaviour beyond the conformance suite: no process left behind, crashed
//! replicas restarted, fork-mode functions, secrets directory, constraints, idle scale to zero,
//! logs kept after scale to zero and bounded in bytes.

mod common;

use std::time::Duration;

use common::{eventually, process_gone, temp_dir, wait_gone, FIXTURE, WATCHDOG};
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{Error, FunctionRef, FunctionSpec, Invocation, InvokeExt, Secret};
use faas_watchdog::process::ProcessInvoker;

fn invoker(tag: &str) -> ProcessInvoker {
    common::invoker_builder(tag).build().unwrap()
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

/// Sequential invocations of `f`: the instance each landed on, as the backend reports it
/// ([`faas_core::InvocationMeta`]) and as the fixture process does (`x-instance`).
async fn sequential_instances(inv: &ProcessInvoker, f: &FunctionRef, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut fixtures = std::collections::BTreeMap::new();
    for _ in 0..n {
        let resp = tokio::time::timeout(
            Duration::from_secs(60),
            inv.invoke(Invocation::get(f.clone(), "/?ms=1")),
        )
        .await
        .expect("invocation timed out")
        .unwrap();
        assert_eq!(resp.status(), 200);
        let meta = resp.extensions().get::<faas_core::InvocationMeta>().cloned().unwrap();
        let fixture = resp.headers()["x-instance"].to_str().unwrap().to_string();
        // One fixture process per backend instance, and the other way round.
        assert_eq!(fixtures.entry(meta.instance.clone()).or_insert(fixture.clone()), &fixture);
        out.push(meta.instance);
    }
    let distinct: std::collections::BTreeSet<&String> = fixtures.values().collect();
    assert_eq!(distinct.len(), fixtures.len(), "fixture ids per instance: {fixtures:?}");
    out
}

/// Starts `n` concurrent `?ms=ms` invocations of `f`, waits until all are in flight, and
/// returns the in-flight count per instance then, and the join handles.
async fn concurrent_in_flight(
    inv: &ProcessInvoker,
    f: &FunctionRef,
    n: u32,
    ms: u64,
) -> (Vec<u32>, Vec<tokio::task::JoinHandle<String>>) {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (inv, f) = (inv.clone(), f.clone());
            tokio::spawn(async move {
                let resp = inv.invoke(Invocation::get(f, &format!("/?ms={ms}"))).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.headers()["x-instance"].to_str().unwrap().to_string()
            })
        })
        .collect();
    let loads = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let loads: Vec<u32> = inv.instances(f).unwrap().iter().map(|v| v.in_flight).collect();
            if loads.iter().sum::<u32>() == n {
                return loads;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the concurrent invocations were never all in flight");
    (loads, handles)
}

async fn fixture_ids(handles: Vec<tokio::task::JoinHandle<String>>) -> Vec<String> {
    let mut ids = Vec::new();
    for h in handles {
        ids.push(tokio::time::timeout(Duration::from_secs(60), h).await.unwrap().unwrap());
    }
    ids.sort();
    ids.dedup();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_label_picks_hash_routing_per_function() {
    use faas_core::scheduler::{HashSharding, SCHEDULER_LABEL};
    use faas_core::Scheduler as _;

    let inv = invoker("sched-label");
    let three = |name: &str| fixture_spec(name, "sleep").label(labels::SCALE_MIN, "3");
    inv.deploy(three("sticky").label(SCHEDULER_LABEL, "hash")).await.unwrap();
    inv.deploy(three("spread")).await.unwrap();
    let sticky = FunctionRef::default_ns("sticky");
    let spread = FunctionRef::default_ns("spread");
    wait_available(&inv, &sticky, 3).await;
    wait_available(&inv, &spread, 3).await;

    // Hash routing is sticky: every sequential call lands on the function's home instance,
    // the one hashing picks over the instances in id order.
    let views = inv.instances(&sticky).unwrap();
    assert!(views.windows(2).all(|w| w[0].id < w[1].id), "instances sorted by id: {views:?}");
    let home = &views[HashSharding::new().route(&sticky, &views).unwrap()].id;
    let landed = sequential_instances(&inv, &sticky, 12).await;
    assert!(landed.iter().all(|i| i == home), "hash routing to {home}, got {landed:?}");
    // The backend's default (least-loaded) spreads the same sequence over every replica.
    let landed: std::collections::BTreeSet<String> =
        sequential_instances(&inv, &spread, 12).await.into_iter().collect();
    assert_eq!(landed.len(), 3, "least-loaded used every replica: {landed:?}");

    // Concurrent calls: least-loaded gives each its own replica, hash keeps them home.
    let (loads, handles) = concurrent_in_flight(&inv, &spread, 3, 3000).await;
    assert_eq!(loads, vec![1, 1, 1], "least-loaded spread the concurrent calls");
    assert_eq!(fixture_ids(handles).await.len(), 3);
    let (loads, handles) = concurrent_in_flight(&inv, &sticky, 3, 3000).await;
    let at_home: Vec<u32> = inv
        .instances(&sticky)
        .unwrap()
        .iter()
        .zip(&loads)
        .filter(|(v, _)| &v.id == home)
        .map(|(_, l)| *l)
        .collect();
    assert_eq!(at_home, vec![3], "hash kept the concurrent calls home: {loads:?}");
    assert_eq!(fixture_ids(handles).await.len(), 1);

    // An update stores the function's new choice: least-loaded spreads it again.
    inv.update(three("sticky").label(SCHEDULER_LABEL, "least-loaded")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let views = inv.instances(&sticky).unwrap();
            if views.len() == 3 && views.iter().all(|v| v.ready && &v.id != home) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the update never rolled to three new ready replicas");
    let landed: std::collections::BTreeSet<String> =
        sequential_instances(&inv, &sticky, 12).await.into_iter().collect();
    assert_eq!(landed.len(), 3, "after the update, least-loaded: {landed:?}");

    inv.remove(&sticky).await.unwrap();
    inv.remove(&spread).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_scheduler_label_is_rejected_before_anything_starts() {
    use faas_core::scheduler::SCHEDULER_LABEL;

    let inv = invoker("sched-bad");
    let field = format!("labels.{SCHEDULER_LABEL}");
    let spec = fixture_spec("badsched", "sleep").label(labels::SCALE_MIN, "2");
    match inv.deploy(spec.label(SCHEDULER_LABEL, "fastest")).await {
        Err(Error::InvalidSpec { field: f, reason }) => {
            assert_eq!(f, field);
            assert!(reason.contains("fastest") && reason.contains("hash"), "{reason}");
        }
        other => panic!("expected InvalidSpec({field}), got {other:?}"),
    }
    let f = FunctionRef::default_ns("badsched");
    assert!(matches!(inv.status(&f).await, Err(Error::NotFound { .. })));
    assert!(inv.instance_pids(&f).is_err(), "no replica of a rejected function");
    let state = inv.state_dir();
    for dir in ["functions/default/badsched", "logs/default/badsched"] {
        assert!(!state.join(dir).exists(), "{dir} created for a rejected function");
    }

    // An update with a bad label changes nothing: the same replica keeps serving.
    let cat = FunctionRef::default_ns("cat");
    inv.deploy(FunctionSpec::new("cat", "none").process("cat")).await.unwrap();
    wait_available(&inv, &cat, 1).await;
    let pids = inv.instance_pids(&cat).unwrap();
    let bad = FunctionSpec::new("cat", "none").process("cat").label(SCHEDULER_LABEL, "");
    match inv.update(bad).await {
        Err(Error::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected InvalidSpec({field}), got {other:?}"),
    }
    assert_eq!(inv.call("cat", "still here").await.unwrap(), "still here");
    assert_eq!(inv.instance_pids(&cat).unwrap(), pids);
    inv.remove(&cat).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_replicas_scaled_to_zero_stay_listed_within_the_bounds() {
    use faas_core::LogsRequest;
    use futures::TryStreamExt;
    let inv = invoker("logs-zero");
    inv.deploy(fixture_spec("lz", "log").label(labels::SCALE_ZERO, "true")).await.unwrap();
    let f = FunctionRef::default_ns("lz");
    wait_available(&inv, &f, 1).await;
    let pids = inv.instance_pids(&f).unwrap();
    assert_eq!(inv.call("lz", "before-zero-line").await.unwrap(), "logged");
    let line = eventually(Duration::from_secs(30), "the logged line", || async {
        inv.read_logs(&f).await.ok()?.into_iter().find(|e| e.text == "before-zero-line")
    })
    .await;
    assert_eq!(line.instance, pids[0].0, "the line carries its instance");

    inv.scale(&f, 0).await.unwrap();
    // The replica's processes are gone for good: what is listed now comes from the backend.
    for (_, pid) in &pids {
        assert!(wait_gone(*pid, Duration::from_secs(30)).await, "replica {pid} still runs");
    }
    eventually(Duration::from_secs(30), "no replica left", || async {
        inv.instance_pids(&f).ok()?.is_empty().then_some(())
    })
    .await;
    assert_eq!(inv.status(&f).await.unwrap().available_replicas, 0);
    let logs = inv.read_logs(&f).await.unwrap();
    let kept = logs.iter().find(|e| e.text == "before-zero-line").expect("line kept at zero");
    assert_eq!(kept.instance, line.instance);
    let req = LogsRequest {
        instance: Some(line.instance.clone()),
        ..LogsRequest::for_function(f.clone())
    };
    let only: Vec<_> = inv.logs(req).await.unwrap().try_collect().await.unwrap();
    assert!(only.iter().any(|e| e.text == "before-zero-line"), "{only:#?}");
    assert!(only.iter().all(|e| e.instance == line.instance), "{only:#?}");
    inv.remove(&f).await.unwrap();
}

/// The next followed line whose text is `text`, within 30 s.
async fn next_line(stream: &mut faas_core::LogStream, text: &str) -> faas_core::LogEntry {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.next().await {
                Some(Ok(e)) if e.text == text => return e,
                Some(_) => {}
                None => panic!("the stream ended before {text:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{text:?} not followed within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_get_new_lines_until_the_function_is_removed() {
    use faas_core::LogsRequest;
    use futures::StreamExt;
    let inv = invoker("logs-follow");
    inv.deploy(fixture_spec("lf", "log")).await.unwrap();
    let f = FunctionRef::default_ns("lf");
    wait_available(&inv, &f, 1).await;
    let follow = || LogsRequest { follow: true, ..LogsRequest::for_function(f.clone()) };
    let mut a = inv.logs(follow()).await.unwrap();
    let mut b = inv.logs(follow()).await.unwrap();
    assert_eq!(inv.call("lf", "to-both").await.unwrap(), "logged");
    next_line(&mut a, "to-both").await;
    next_line(&mut b, "to-both").await;
    drop(a);
    assert_eq!(inv.call("lf", "to-one").await.unwrap(), "logged");
    next_line(&mut b, "to-one").await;
    // Nobody follows; a line is kept all the same, and a new follower gets later lines.
    drop(b);
    assert_eq!(inv.call("lf", "unfollowed").await.unwrap(), "logged");
    eventually(Duration::from_secs(30), "the unfollowed line kept", || async {
        inv.read_logs(&f).await.ok()?.into_iter().find(|e| e.text == "unfollowed")
    })
    .await;
    let mut c = inv.logs(follow()).await.unwrap();
    assert_eq!(inv.call("lf", "followed-again").await.unwrap(), "logged");
    next_line(&mut c, "followed-again").await;
    // Removing the function ends the stream.
    inv.remove(&f).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = c.next().await {
            e.unwrap();
        }
    })
    .await;
    assert!(ended.is_ok(), "the followed stream did not end after removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_log_lines_are_bounded_in_bytes() {
    let inv = ProcessInvoker::builder()
        .watchdog_command(WATCHDOG, Vec::<String>::new())
        .state_dir(temp_dir("logs-bytes"))
        .stop_grace(Duration::from_secs(2))
        .log_bytes_limit(16 << 10)
        .build()
        .unwrap();
    inv.deploy(fixture_spec("lb", "log")).await.unwrap();
    let f = FunctionRef::default_ns("lb");
    wait_available(&inv, &f, 1).await;
    // 40 lines of 1 KiB each: far over the 16 KiB bound.
    for i in 0..40 {
        let body = format!("big-{i:02}-{}", "x".repeat(1024));
        assert_eq!(inv.call("lb", body).await.unwrap(), "logged");
    }
    let logs = eventually(Duration::from_secs(30), "the last big line", || async {
        let logs = inv.read_logs(&f).await.ok()?;
        logs.iter().any(|e| e.text.starts_with("big-39-")).then_some(logs)
    })
    .await;
    let bytes: usize = logs
        .iter()
        .map(|e| {
            std::mem::size_of::<faas_core::LogEntry>()
                + e.name.len()
                + e.namespace.len()
                + e.instance.len()
                + e.text.len()
        })
        .sum();
    assert!(bytes <= 16 << 10, "kept {bytes} bytes over a 16 KiB bound");
    let big = logs.iter().filter(|e| e.text.starts_with("big-")).count();
    assert!((5..40).contains(&big), "kept {big} of 40 big lines");
    assert!(!logs.iter().any(|e| e.text.starts_with("big-00-")), "the oldest line went first");
    inv.remove(&f).await.unwrap();
}

/// Invocations waiting behind `maxConcurrency` are served in arrival order: one arriving
/// just as a replica frees up goes behind those already waiting.
#[tokio::test]
async fn waiters_are_served_in_arrival_order() {
    use futures::stream::{FuturesUnordered, StreamExt};
    let inv = invoker("fifo");
    let spec = FunctionSpec::new("one", "x/one")
        .process("sh -c 'sleep 0.2; cat'")
        .max_concurrency(1)
        .label(labels::SCALE_MIN, "1")
        .label(labels::SCALE_MAX, "1");
    inv.deploy(spec).await.unwrap();
    let f = FunctionRef::default_ns("one");
    wait_available(&inv, &f, 1).await;
    let call = |body: &str| inv.invoke(Invocation::post(f.clone(), body.to_string()));
    // The first call takes the only slot; five more wait, in this order (each first poll
    // puts it in line).
    let mut first = call("first");
    assert!(futures::poll!(&mut first).is_pending());
    let mut waiting: Vec<_> = (0..5).map(|i| call(&format!("w{i}"))).collect();
    for w in &mut waiting {
        assert!(futures::poll!(w).is_pending());
    }
    // The slot frees up; before any waiter runs, a newcomer arrives.
    let r = first.await.unwrap();
    assert_eq!(r.into_body().collect_bytes().await.unwrap(), "first");
    let mut late = call("late");
    let _ = futures::poll!(&mut late);
    let mut all: FuturesUnordered<_> = waiting.into_iter().chain(std::iter::once(late)).collect();
    let mut order = Vec::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(30), all.next()).await.unwrap() {
        let body = r.unwrap().into_body().collect_bytes().await.unwrap();
        order.push(String::from_utf8(body.to_vec()).unwrap());
    }
    assert_eq!(order, ["w0", "w1", "w2", "w3", "w4", "late"]);
    inv.remove(&f).await.unwrap();
}

/// The line of invocations waiting for a replica is bounded: past `queue_limit` a call is
/// refused at once with a retry hint.
#[tokio::test]
async fn waiters_past_the_queue_limit_are_refused_at_once() {
    let inv = ProcessInvoker::builder()
        .watchdog_command(WATCHDOG, Vec::<String>::new())
        .state_dir(temp_dir("qlimit"))
        .stop_grace(Duration::from_secs(2))
        .queue_limit(2)
        .build()
        .unwrap();
    let spec = FunctionSpec::new("one", "x/one")
        .process("sh -c 'sleep 0.2; cat'")
        .max_concurrency(1)
        .label(labels::SCALE_MIN, "1")
        .label(labels::SCALE_MAX, "1");
    inv.deploy(spec).await.unwrap();
    let f = FunctionRef::default_ns("one");
    wait_available(&inv, &f, 1).await;
    let call = |body: &str| inv.invoke(Invocation::post(f.clone(), body.to_string()));
    let mut first = call("first");
    assert!(futures::poll!(&mut first).is_pending());
    let mut waiting: Vec<_> = (0..2).map(|i| call(&format!("w{i}"))).collect();
    for w in &mut waiting {
        assert!(futures::poll!(w).is_pending());
    }
    match futures::poll!(call("third")) {
        std::task::Poll::Ready(Err(Error::Overloaded { message, retry_after: Some(_) })) => {
            assert!(message.contains("2 invocations"), "{message}")
        }
        other => panic!("expected an immediate Overloaded, got {other:?}"),
    }
    first.await.unwrap();
    for w in waiting {
        w.await.unwrap();
    }
    inv.remove(&f).await.unwrap();
}

/// Every call leaves a line in the function's logs, in the format OpenFaaS's watchdog writes
/// (`faas logs` and `faas-cli logs` show calls, not only start and stop lines); a function
/// can turn it off with `log_requests=false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_is_logged_as_openfaas_watchdogs_log_it() {
    let inv = invoker("request-lines");
    inv.deploy(FunctionSpec::new("up", "local").process("tr a-z A-Z")).await.unwrap();
    let mut quiet = FunctionSpec::new("quiet", "local").process("cat");
    quiet.env_vars.insert("log_requests".into(), "false".into());
    inv.deploy(quiet).await.unwrap();
    // The quiet call first: by the time the other's line is in, its line would be too.
    assert_eq!(inv.call("quiet", "abc").await.unwrap(), "abc");
    assert_eq!(inv.call("up", "abc").await.unwrap(), "ABC");
    let up = FunctionRef::new("up", "openfaas-fn");
    let line = eventually(Duration::from_secs(10), "the call's log line", || async {
        let logs = inv.read_logs(&up).await.ok()?;
        logs.into_iter().find(|e| e.text.contains("POST / - 200 OK - ContentLength: "))
    })
    .await;
    assert!(line.text.ends_with("s)"), "{}", line.text);
    let quiet_logs = inv.read_logs(&FunctionRef::new("quiet", "openfaas-fn")).await.unwrap();
    assert!(!quiet_logs.iter().any(|e| e.text.contains("POST /")), "{quiet_logs:#?}");
    inv.remove(&up).await.unwrap();
}

/// The threads of process `pid` (from /proc).
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_mode_watchdog_serves_on_one_thread_unless_the_spec_asks_for_more() {
    let inv = common::invoker_builder("threads").http_watchdog(true).build().unwrap();
    inv.deploy(fixture_spec("one", "echo")).await.unwrap();
    inv.deploy(fixture_spec("three", "echo").env("watchdog_threads", "3")).await.unwrap();
    for (name, want) in [("one", 1), ("three", 3)] {
        let f = FunctionRef::default_ns(name);
        wait_available(&inv, &f, 1).await;
        assert_eq!(inv.call(name, "hi").await.unwrap(), "hi");
        let pid = inv.instance_pids(&f).unwrap()[0].1;
        // The serving threads start before the watchdog answers its health check.
        assert_eq!(threads(pid), want, "{name}: watchdog {pid}");
    }
    inv.remove(&FunctionRef::default_ns("one")).await.unwrap();
    inv.remove(&FunctionRef::default_ns("three")).await.unwrap();
}

/// A minimal Lambda runtime (Python, standard library only): each raw event
/// `{"sleep": S, ...}` is answered with itself after S seconds.
const SLEEPY_RUNTIME: &str = r#"
import json, os, time, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(api + "next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = r.read()
    time.sleep(float(json.loads(event).get("sleep", 0)))
    answer = urllib.request.Request(api + rid + "/response", data=event, method="POST")
    urllib.request.urlopen(answer).read()
"#;

/// A `lambda`-mode replica whose execution environments are all busy takes one more
/// invocation per environment into its watchdog's line (`lambda_prefetch`, default 1), so
/// the runtime finds its next event waiting; the rest wait at the backend. With
/// `lambda_prefetch=0` the replica takes only what its environments run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_lambda_replica_takes_one_invocation_per_environment_into_its_line() {
    let inv = invoker("lambda-prefetch");
    let script = temp_dir("lambda-prefetch-runtime").join("runtime.py");
    std::fs::write(&script, SLEEPY_RUNTIME).unwrap();
    let spec = |name: &str| {
        FunctionSpec::new(name, "x/lambda")
            .process(format!("python3 {}", script.display()))
            .env("mode", "lambda")
            .env("lambda_event", "raw")
            .max_concurrency(1)
            .label(labels::SCALE_MIN, "1")
            .label(labels::SCALE_MAX, "1")
    };
    inv.deploy(spec("fed")).await.unwrap();
    inv.deploy(spec("unfed").env("lambda_prefetch", "0")).await.unwrap();
    for (name, capacity) in [("fed", 2), ("unfed", 1)] {
        let f = FunctionRef::default_ns(name);
        wait_available(&inv, &f, 1).await;
        assert_eq!(inv.instances(&f).unwrap()[0].max_concurrency, Some(capacity), "{name}");
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let (inv, f) = (inv.clone(), f.clone());
                tokio::spawn(async move {
                    let body = format!(r#"{{"sleep":0.3,"n":{i}}}"#);
                    let r = inv.invoke(Invocation::post(f, body.clone())).await.unwrap();
                    assert_eq!(r.status(), 200);
                    assert_eq!(r.into_body().collect_bytes().await.unwrap(), body.as_bytes());
                })
            })
            .collect();
        // The replica's in-flight count reaches its capacity (one running, one in its line)
        // and never goes beyond it, while the third call waits at the backend.
        let mut most = 0;
        tokio::time::timeout(Duration::from_secs(60), async {
            while !calls.iter().all(|c| c.is_finished()) {
                most = most.max(inv.instances(&f).unwrap()[0].in_flight);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the invocations never finished");
        for c in calls {
            c.await.unwrap();
        }
        assert_eq!(most, capacity, "{name}");
        inv.remove(&f).await.unwrap();
    }
}

/// The command line of process `pid`, its arguments joined by spaces.
fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// An `http`-mode replica is the function's process alone, unless the spec sets a setting
/// only a watchdog applies (`max_inflight`) or the backend is built to keep watchdogs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_mode_replica_is_the_functions_process_alone_unless_a_watchdog_is_asked_for() {
    let inv = invoker("alone");
    let kept = common::invoker_builder("alone-kept").http_watchdog(true).build().unwrap();
    inv.deploy(fixture_spec("alone", "echo")).await.unwrap();
    inv.deploy(fixture_spec("guarded", "echo").env("max_inflight", "4")).await.unwrap();
    kept.deploy(fixture_spec("kept", "echo")).await.unwrap();
    for (inv, name, watchdog) in
        [(&inv, "alone", false), (&inv, "guarded", true), (&kept, "kept", true)]
    {
        let f = FunctionRef::default_ns(name);
        wait_available(inv, &f, 1).await;
        assert_eq!(inv.call(name, "hi").await.unwrap(), "hi", "{name}");
        let pid = inv.instance_pids(&f).unwrap()[0].1;
        let (cmd, children) = (cmdline(pid), descendants(pid));
        if watchdog {
            assert!(cmd.contains(WATCHDOG), "{name}: {pid} is {cmd:?}");
            assert!(children.iter().any(|c| cmdline(*c).contains(FIXTURE)), "{name}: {children:?}");
            // The watchdog logs the call (its own HTTP/1 server side serves this request).
            eventually(Duration::from_secs(10), "the call's log line", || async {
                let logs = inv.read_logs(&f).await.ok()?;
                logs.into_iter().find(|e| e.text.contains("POST / - 200 OK - ContentLength: 2B ("))
            })
            .await;
        } else {
            assert!(cmd.contains(FIXTURE), "{name}: {pid} is {cmd:?}");
            assert!(children.is_empty(), "{name}: {pid} has children {children:?}");
        }
        inv.remove(&f).await.unwrap();
        assert!(wait_gone(pid, Duration::from_secs(10)).await, "{name}: {pid} survived removal");
    }
}

/// Without a watchdog the backend writes the watchdog's line per call (unless
/// `log_requests=false`) and enforces the spec's timeout itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_mode_process_alone_gets_its_call_lines_and_its_timeout() {
    let inv = invoker("alone-lines");
    inv.deploy(fixture_spec("web", "sleep").timeout(Duration::from_millis(500))).await.unwrap();
    inv.deploy(fixture_spec("quiet", "echo").env("log_requests", "false")).await.unwrap();
    let (web, quiet) = (FunctionRef::default_ns("web"), FunctionRef::default_ns("quiet"));
    assert_eq!(inv.call("quiet", "abc").await.unwrap(), "abc");
    let r = inv.invoke(Invocation::get(web.clone(), "/sleep?ms=1")).await.unwrap();
    assert_eq!(r.status(), 200);
    let instance = inv.instance_pids(&web).unwrap()[0].0.clone();
    let line = eventually(Duration::from_secs(10), "the call's log line", || async {
        let logs = inv.read_logs(&web).await.ok()?;
        logs.into_iter().find(|e| e.text.contains("GET /sleep?ms=1 - 200 OK - ContentLength: 5B ("))
    })
    .await;
    assert_eq!(line.instance, instance);
    assert!(line.text.ends_with("s)"), "{}", line.text);
    let file = inv.state_dir().join(format!("logs/openfaas-fn/web/{instance}.log"));
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains("GET /sleep?ms=1 - 200 OK"), "{written}");
    let quiet_logs = inv.read_logs(&quiet).await.unwrap();
    assert!(!quiet_logs.iter().any(|e| e.text.contains("POST /")), "{quiet_logs:#?}");

    // Over the timeout: a timeout error naming it, and the replica serves the next call.
    let err = inv.invoke(Invocation::get(web.clone(), "/?ms=5000")).await.unwrap_err();
    match &err {
        Error::Developer { kind, message } => {
            assert_eq!(*kind, faas_core::error::DeveloperErrorKind::Timeout, "{err:?}");
            assert!(message.contains("exec timeout of 500ms exceeded"), "{message}");
        }
        other => panic!("not a timeout: {other:?}"),
    }
    let r = inv.invoke(Invocation::get(web.clone(), "/?ms=1")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(inv.instance_pids(&web).unwrap()[0].0, instance, "the replica was replaced");
    inv.remove(&web).await.unwrap();
    inv.remove(&quiet).await.unwrap();
}

/// A scale down lets the calls already routed to an `http`-mode process alone answer before
/// the backend stops it (the fixture exits at SIGTERM, dropping what it serves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_lets_the_calls_in_flight_on_a_process_alone_answer() {
    let inv = invoker("alone-drain");
    inv.deploy(fixture_spec("slow", "sleep")).await.unwrap();
    let f = FunctionRef::default_ns("slow");
    wait_available(&inv, &f, 1).await;
    let pid = inv.instance_pids(&f).unwrap()[0].1;
    let (loads, handles) = concurrent_in_flight(&inv, &f, 2, 1500).await;
    assert_eq!(loads, [2]);
    inv.scale(&f, 0).await.unwrap();
    // Out of routing; the process stays until both calls have answered.
    eventually(Duration::from_secs(10), "no replica available", || async {
        (inv.status(&f).await.ok()?.available_replicas == 0).then_some(())
    })
    .await;
    assert!(!process_gone(pid), "{pid} stopped with calls in flight");
    assert_eq!(fixture_ids(handles).await.len(), 1);
    assert!(wait_gone(pid, Duration::from_secs(10)).await, "{pid} was not stopped");
    inv.remove(&f).await.unwrap();
}

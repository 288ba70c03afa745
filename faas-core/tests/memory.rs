//! Behaviour of the in-memory backend beyond the conformance suite: cold starts, activation
//! records, queueing, crashes, idle scale to zero, logs, context. Paused tokio time wherever
//! timing matters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use faas_core::conformance::fixtures;
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{
    handler_fn, Context, DeveloperErrorKind, Error, FunctionRef, FunctionSpec, InstanceView,
    Invocation, InvocationMeta, InvokeExt, LogsRequest, MemoryInvoker, Request, Scheduler, Secret,
    StartKind,
};
use futures::StreamExt;

fn f(name: &str) -> FunctionRef {
    FunctionRef::default_ns(name)
}

fn meta(resp: &faas_core::Response) -> InvocationMeta {
    resp.extensions().get::<InvocationMeta>().expect("InvocationMeta in extensions").clone()
}

async fn body(resp: faas_core::Response) -> Bytes {
    resp.into_body().collect_bytes().await.unwrap()
}

#[tokio::test]
async fn unknown_image_is_an_invalid_spec() {
    let inv = MemoryInvoker::new();
    match inv.deploy(FunctionSpec::new("x", "nothing-registered")).await {
        Err(Error::InvalidSpec { field, reason }) => {
            assert_eq!(field, "image");
            assert!(reason.contains("nothing-registered"), "{reason}");
        }
        other => panic!("expected InvalidSpec(image), got {other:?}"),
    }
    inv.register("echo", fixtures::echo());
    inv.deploy(FunctionSpec::new("x", "echo")).await.unwrap();
    let mut spec = FunctionSpec::new("x", "gone");
    spec.env_vars.insert("A".into(), "1".into());
    assert!(
        matches!(inv.update(spec).await, Err(Error::InvalidSpec { field, .. }) if field == "image")
    );
}

#[tokio::test(start_paused = true)]
async fn cold_start_then_warm_with_activation_records() {
    let inv = MemoryInvoker::builder().cold_start(Duration::from_millis(100)).build();
    inv.register("echo", fixtures::echo());
    inv.deploy(FunctionSpec::new("echo", "echo")).await.unwrap();
    // Right after deploy the instance is still starting.
    assert_eq!(inv.status(&f("echo")).await.unwrap().available_replicas, 0);

    let first = Invocation::post("echo", "one");
    let id1 = first.id.clone();
    let resp = inv.invoke(first).await.unwrap();
    let m1 = meta(&resp);
    assert_eq!(m1.start, StartKind::Cold);
    assert_eq!(m1.init_time, Some(Duration::from_millis(100)));
    assert!(m1.wait_time >= Duration::from_millis(100), "{:?}", m1.wait_time);
    assert_eq!(body(resp).await, "one");

    let second = Invocation::post("echo", "two");
    let id2 = second.id.clone();
    let resp = inv.invoke(second).await.unwrap();
    let m2 = meta(&resp);
    assert_eq!(m2.start, StartKind::Warm);
    assert_eq!(m2.init_time, None);
    assert_eq!(m2.instance, m1.instance);

    let a1 = inv.activation(&id1).expect("activation 1");
    assert_eq!(a1.name, "echo");
    assert_eq!(a1.namespace, "openfaas-fn");
    assert!(a1.response.success);
    assert_eq!(a1.response.result["statusCode"], 200);
    assert_eq!(a1.init_time(), Some(Duration::from_millis(100)));
    assert_eq!(a1.annotation("start").unwrap(), "cold");
    assert!(a1.wait_time().unwrap() >= Duration::from_millis(100));
    let a2 = inv.activation(&id2).expect("activation 2");
    assert_eq!(a2.init_time(), None, "initTime only on a cold start");
    assert_eq!(a2.annotation("start").unwrap(), "warm");

    let listed = inv.activations(&f("echo"), 10);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].activation_id, id2, "newest first");
    assert_eq!(inv.status(&f("echo")).await.unwrap().invocation_count, 2);
}

#[tokio::test]
async fn activation_store_is_bounded() {
    let inv = MemoryInvoker::builder().activation_limit(3).build();
    inv.register("echo", fixtures::echo());
    inv.deploy(FunctionSpec::new("echo", "echo")).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let call = Invocation::post("echo", format!("{i}"));
        ids.push(call.id.clone());
        inv.invoke(call).await.unwrap();
    }
    assert!(inv.activation(&ids[0]).is_none());
    assert!(inv.activation(&ids[1]).is_none());
    for id in &ids[2..] {
        assert!(inv.activation(id).is_some());
    }
    let listed: Vec<_> =
        inv.activations(&f("echo"), 10).into_iter().map(|a| a.activation_id).collect();
    assert_eq!(listed, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]);
    assert_eq!(inv.activations(&f("echo"), 1).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn timeout_names_the_timeout_and_is_recorded() {
    let inv = MemoryInvoker::new();
    inv.register("sleep", fixtures::sleep());
    inv.deploy(FunctionSpec::new("slow", "sleep").timeout(Duration::from_secs(2))).await.unwrap();
    let call = Invocation::get("slow", "/?ms=5000");
    let id = call.id.clone();
    let err = inv.invoke(call).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("exec timeout of 2s") && msg.contains("slow.openfaas-fn"), "{msg}");
    let a = inv.activation(&id).unwrap();
    assert_eq!(a.response.status_code.as_u8(), 2);
    assert!(!a.response.success);
    // The slot was released: the next call runs at once.
    let resp = inv.invoke(Invocation::get("slow", "/?ms=10")).await.unwrap();
    assert_eq!(resp.headers()["x-max-inflight"], "1");
}

#[tokio::test(start_paused = true)]
async fn crash_replaces_the_instance() {
    let inv = MemoryInvoker::builder().cold_start(Duration::from_millis(20)).build();
    inv.register("crash", fixtures::crash());
    inv.deploy(FunctionSpec::new("c", "crash")).await.unwrap();
    let resp = inv.invoke(Invocation::get("c", "/")).await.unwrap();
    let before = meta(&resp).instance;
    let call = Invocation::get("c", "/?crash=1");
    let id = call.id.clone();
    match inv.invoke(call).await {
        Err(Error::Developer { kind: DeveloperErrorKind::Crash, message }) => {
            assert!(message.contains("crash requested"), "{message}");
            assert!(message.contains(&before), "names the instance: {message}");
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    assert_eq!(inv.activation(&id).unwrap().response.status_code.as_u8(), 2);
    let views = inv.instances(&f("c")).unwrap();
    assert_eq!(views.len(), 1);
    assert_ne!(views[0].id, before, "a fresh instance replaced the crashed one");
    // The next call waits for the new instance's cold start and works.
    let resp = inv.invoke(Invocation::get("c", "/")).await.unwrap();
    let m = meta(&resp);
    assert_ne!(m.instance, before);
    assert_eq!(m.start, StartKind::Cold);
    assert_eq!(body(resp).await, "alive");
}

#[tokio::test(start_paused = true)]
async fn busy_instances_queue_with_a_bound() {
    let inv = MemoryInvoker::builder().queue_limit(2).queue_timeout(Duration::from_secs(5)).build();
    inv.register("sleep", fixtures::sleep());
    let spec = FunctionSpec::new("s", "sleep").max_concurrency(1).label(labels::SCALE_MAX, "1");
    inv.deploy(spec).await.unwrap();
    let calls = (0..4).map(|_| inv.invoke(Invocation::get("s", "/?ms=1000")));
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let overloaded = results.iter().filter(|r| matches!(r, Err(Error::Overloaded { .. }))).count();
    // One runs, two wait in the queue, the fourth is refused at once.
    assert_eq!((ok, overloaded), (3, 1), "{results:?}");
    for r in results.into_iter().flatten() {
        assert_eq!(r.headers()["x-max-inflight"], "1");
    }

    // A queued call gives up after the queue timeout.
    let long = inv.invoke(Invocation::get("s", "/?ms=60000"));
    let waiting = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        inv.invoke(Invocation::get("s", "/?ms=1")).await
    };
    let (_, queued) = tokio::join!(tokio::time::timeout(Duration::from_secs(30), long), waiting);
    match queued {
        Err(Error::Overloaded { message, .. }) => assert!(message.contains("5s"), "{message}"),
        other => panic!("expected Overloaded after the queue timeout, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn cancelled_invocation_releases_its_slot() {
    let inv = MemoryInvoker::new();
    inv.register("sleep", fixtures::sleep());
    inv.deploy(FunctionSpec::new("s", "sleep").max_concurrency(1)).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_millis(50),
        inv.invoke(Invocation::get("s", "/?ms=10000")),
    )
    .await;
    assert!(r.is_err(), "the outer timeout cancelled the call");
    let views = inv.instances(&f("s")).unwrap();
    assert_eq!(views[0].in_flight, 0);
    let resp =
        tokio::time::timeout(Duration::from_secs(1), inv.invoke(Invocation::get("s", "/?ms=1")))
            .await
            .expect("not blocked by the cancelled call")
            .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn idle_function_scales_to_zero_and_back() {
    let inv = MemoryInvoker::builder().cold_start(Duration::from_millis(30)).build();
    inv.register("echo", fixtures::echo());
    let spec = FunctionSpec::new("z", "echo")
        .label(labels::SCALE_ZERO, "true")
        .label(labels::SCALE_ZERO_DURATION, "1m");
    inv.deploy(spec).await.unwrap();
    inv.invoke(Invocation::post("z", "x")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(inv.status(&f("z")).await.unwrap().replicas, 1, "not idle long enough yet");
    inv.invoke(Invocation::post("z", "x")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert_eq!(inv.status(&f("z")).await.unwrap().replicas, 1, "the idle clock restarted");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let st = inv.status(&f("z")).await.unwrap();
    assert_eq!((st.replicas, st.available_replicas), (0, 0));

    let resp = inv.invoke(Invocation::post("z", "again")).await.unwrap();
    let m = meta(&resp);
    assert_eq!(m.start, StartKind::Cold);
    assert!(m.wait_time >= Duration::from_millis(30));
    assert_eq!(body(resp).await, "again");
    assert_eq!(inv.status(&f("z")).await.unwrap().replicas, 1);
    // It goes idle again later.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(inv.status(&f("z")).await.unwrap().replicas, 0);
}

#[tokio::test(start_paused = true)]
async fn without_allow_zero_it_stays_up() {
    let inv = MemoryInvoker::new();
    inv.register("echo", fixtures::echo());
    inv.deploy(FunctionSpec::new("up", "echo").label(labels::SCALE_ZERO_DURATION, "1m"))
        .await
        .unwrap();
    inv.invoke(Invocation::post("up", "x")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(inv.status(&f("up")).await.unwrap().replicas, 1);
}

#[tokio::test(start_paused = true)]
async fn scale_clamps_to_max_and_min_replicas_start_at_deploy() {
    let inv = MemoryInvoker::new();
    inv.register("echo", fixtures::echo());
    let spec =
        FunctionSpec::new("m", "echo").label(labels::SCALE_MIN, "2").label(labels::SCALE_MAX, "4");
    inv.deploy(spec).await.unwrap();
    assert_eq!(inv.status(&f("m")).await.unwrap().replicas, 2);
    inv.scale(&f("m"), 10).await.unwrap();
    let st = inv.status(&f("m")).await.unwrap();
    assert_eq!((st.replicas, st.available_replicas), (4, 4));
    let ids: std::collections::BTreeSet<_> =
        inv.instances(&f("m")).unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(ids.len(), 4, "distinct instance ids");
}

#[tokio::test]
async fn context_carries_id_function_instance_env_secrets_deadline() {
    let seen: Arc<Mutex<Option<Context>>> = Arc::default();
    let inv = MemoryInvoker::new();
    let s = seen.clone();
    inv.register(
        "ctx",
        handler_fn(move |_req: Request, ctx: Context| {
            let s = s.clone();
            async move {
                *s.lock().unwrap() = Some(ctx);
                Ok::<_, Error>("ok")
            }
        }),
    );
    let secret = Secret { name: "db".into(), namespace: "team".into(), value: "pw".into() };
    // Secrets must exist at deploy time, in the function's namespace.
    let spec = FunctionSpec::new("c", "ctx")
        .namespace("team")
        .env("MODE", "test")
        .secret("db")
        .timeout(Duration::from_secs(5));
    assert!(
        matches!(inv.deploy(spec.clone()).await, Err(Error::InvalidSpec { field, .. }) if field == "secrets[0]")
    );
    inv.create_secret(secret.clone()).await.unwrap();
    inv.deploy(spec.clone()).await.unwrap();

    let call = Invocation::post(FunctionRef::new("c", "team"), "x");
    let id = call.id.clone();
    let resp = inv.invoke(call).await.unwrap();
    let m = meta(&resp);
    let ctx = seen.lock().unwrap().take().unwrap();
    assert_eq!(ctx.id, Some(id));
    assert_eq!(ctx.function, Some(FunctionRef::new("c", "team")));
    assert_eq!(ctx.instance.as_deref(), Some(m.instance.as_str()));
    assert_eq!(ctx.env("MODE"), Some("test"));
    assert_eq!(ctx.secret("db").map(|b| &b[..]), Some(&b"pw"[..]));
    assert!(ctx.deadline.is_some());

    // A secret update reaches the function; an update naming a missing secret is refused.
    inv.update_secret(Secret { value: "new".into(), ..secret }).await.unwrap();
    inv.invoke(Invocation::post(FunctionRef::new("c", "team"), "x")).await.unwrap();
    let ctx = seen.lock().unwrap().take().unwrap();
    assert_eq!(ctx.secret("db").map(|b| &b[..]), Some(&b"new"[..]));
    let bad = spec.secret("missing");
    assert!(
        matches!(inv.update(bad).await, Err(Error::InvalidSpec { field, .. }) if field == "secrets[1]")
    );
    assert_eq!(
        inv.namespaces().await.unwrap(),
        vec!["openfaas-fn".to_string(), "team".to_string()]
    );
    assert_eq!(inv.list("team").await.unwrap().len(), 1);
    assert!(inv.list("openfaas-fn").await.unwrap().is_empty());
    assert!(
        matches!(inv.list("Bad NS").await, Err(Error::InvalidSpec { field, .. }) if field == "namespace")
    );
}

#[tokio::test(start_paused = true)]
async fn logs_filter_tail_follow_and_survive_scale_to_zero() {
    let inv = MemoryInvoker::new();
    inv.register("log", fixtures::log());
    inv.deploy(FunctionSpec::new("l", "log").label(labels::SCALE_ZERO, "true")).await.unwrap();
    inv.scale(&f("l"), 2).await.unwrap();
    let mut instances = Vec::new();
    for i in 0..4 {
        let resp = inv.invoke(Invocation::post("l", format!("line {i}"))).await.unwrap();
        instances.push(meta(&resp).instance);
    }
    let all = inv.read_logs(&f("l")).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
        ["line 0", "line 1", "line 2", "line 3"]
    );
    for (e, inst) in all.iter().zip(&instances) {
        assert_eq!(&e.instance, inst);
        assert_eq!(e.name, "l");
    }
    let tail: Vec<_> = inv
        .logs(LogsRequest { tail: Some(2), ..LogsRequest::for_function(f("l")) })
        .await
        .unwrap()
        .map(|e| e.unwrap().text)
        .collect()
        .await;
    assert_eq!(tail, ["line 2", "line 3"]);
    let one = instances[0].clone();
    let only: Vec<_> = inv
        .logs(LogsRequest { instance: Some(one.clone()), ..LogsRequest::for_function(f("l")) })
        .await
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert!(!only.is_empty() && only.iter().all(|e| e.instance == one));
    let future = std::time::SystemTime::now() + Duration::from_secs(3600);
    let none: Vec<_> = inv
        .logs(LogsRequest { since: Some(future), ..LogsRequest::for_function(f("l")) })
        .await
        .unwrap()
        .collect()
        .await;
    assert!(none.is_empty());

    // Follow: the tail, then new lines as they come; the stream ends when the function goes.
    let mut follow = inv
        .logs(LogsRequest { tail: Some(1), follow: true, ..LogsRequest::for_function(f("l")) })
        .await
        .unwrap();
    assert_eq!(follow.next().await.unwrap().unwrap().text, "line 3");
    inv.invoke(Invocation::post("l", "live")).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), follow.next()).await.unwrap();
    assert_eq!(next.unwrap().unwrap().text, "live");

    // Logs survive scale to zero.
    inv.scale(&f("l"), 0).await.unwrap();
    assert_eq!(inv.read_logs(&f("l")).await.unwrap().len(), 5);

    inv.remove(&f("l")).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), follow.next()).await.unwrap();
    assert!(end.is_none(), "follow ends when the function is removed");
    assert!(matches!(inv.read_logs(&f("l")).await, Err(Error::NotFound { .. })));
    assert!(matches!(
        inv.logs(LogsRequest::default()).await.map(|_| ()),
        Err(Error::InvalidSpec { field, .. }) if field == "name"
    ));
}

#[tokio::test(start_paused = true)]
async fn activation_logs_hold_the_lines_of_that_invocation() {
    let inv = MemoryInvoker::new();
    inv.register("log", fixtures::log());
    inv.deploy(FunctionSpec::new("l", "log")).await.unwrap();
    let a = Invocation::post("l", "first");
    let b = Invocation::post("l", "second");
    let (ida, idb) = (a.id.clone(), b.id.clone());
    inv.invoke(a).await.unwrap();
    inv.invoke(b).await.unwrap();
    assert_eq!(inv.activation(&ida).unwrap().logs, ["first"]);
    assert_eq!(inv.activation(&idb).unwrap().logs, ["second"]);
}

#[tokio::test(start_paused = true)]
async fn remove_fails_waiting_invocations_with_not_found() {
    let inv = MemoryInvoker::builder().cold_start(Duration::from_secs(10)).build();
    inv.register("echo", fixtures::echo());
    inv.deploy(FunctionSpec::new("r", "echo")).await.unwrap();
    let waiting = inv.invoke(Invocation::post("r", "x"));
    let remover = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        inv.remove(&f("r")).await.unwrap();
    };
    let (r, ()) = tokio::join!(waiting, remover);
    assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn update_restarts_instances_with_the_new_spec() {
    let inv = MemoryInvoker::new();
    inv.register("env", fixtures::env());
    inv.deploy(FunctionSpec::new("u", "env").env("V", "1")).await.unwrap();
    let before = inv.instances(&f("u")).unwrap();
    inv.update(FunctionSpec::new("u", "env").env("V", "2")).await.unwrap();
    let after = inv.instances(&f("u")).unwrap();
    assert_ne!(before[0].id, after[0].id);
    let resp = inv.invoke(Invocation::get("u", "/?env=V")).await.unwrap();
    assert_eq!(body(resp).await, "2");
}

/// A scheduler that always routes to the last instance with capacity, counting its calls.
#[derive(Default)]
struct LastOne {
    calls: AtomicUsize,
}

impl Scheduler for LastOne {
    fn place(
        &self,
        _request: &faas_core::PlacementRequest<'_>,
        _nodes: &[faas_core::Node],
    ) -> faas_core::Result<usize> {
        Ok(0)
    }
    fn route(&self, _function: &FunctionRef, instances: &[InstanceView]) -> Option<usize> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        instances.iter().rposition(|i| i.has_capacity())
    }
}

#[tokio::test]
async fn invocations_are_routed_by_the_scheduler() {
    let sched = Arc::new(LastOne::default());
    let inv = MemoryInvoker::builder().scheduler(sched.clone()).build();
    inv.register("echo", fixtures::echo());
    inv.deploy(FunctionSpec::new("e", "echo")).await.unwrap();
    inv.scale(&f("e"), 3).await.unwrap();
    let last = inv.instances(&f("e")).unwrap()[2].id.clone();
    for _ in 0..5 {
        let resp = inv.invoke(Invocation::post("e", "x")).await.unwrap();
        assert_eq!(meta(&resp).instance, last);
    }
    assert_eq!(sched.calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn least_loaded_spreads_concurrent_calls() {
    let inv = MemoryInvoker::new();
    inv.register("sleep", fixtures::sleep());
    inv.deploy(FunctionSpec::new("s", "sleep").max_concurrency(1)).await.unwrap();
    inv.scale(&f("s"), 3).await.unwrap();
    let calls = (0..3).map(|_| inv.invoke(Invocation::get("s", "/?ms=50")));
    let results = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
        .await
        .unwrap();
    let instances: std::collections::BTreeSet<_> =
        results.into_iter().map(|r| meta(&r.unwrap()).instance).collect();
    assert_eq!(instances.len(), 3, "each call on its own instance");
}

#[tokio::test]
async fn a_five_hundred_is_an_application_error_activation() {
    let inv = MemoryInvoker::new();
    inv.register("env", fixtures::env());
    inv.deploy(FunctionSpec::new("e", "env")).await.unwrap();
    let ok = Invocation::get("e", "/?env=NOPE");
    let id = ok.id.clone();
    assert_eq!(inv.invoke(ok).await.unwrap().status(), 404);
    assert!(
        inv.activation(&id).unwrap().response.success,
        "a 4xx answer is still a successful run"
    );
    inv.register(
        "fail",
        handler_fn(|_r: Request, _c: Context| async move {
            let mut resp = http::Response::new(faas_core::Body::from("boom"));
            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            Ok::<_, Error>(resp)
        }),
    );
    inv.deploy(FunctionSpec::new("f", "fail")).await.unwrap();
    let call = Invocation::post("f", "x");
    let id = call.id.clone();
    assert_eq!(inv.invoke(call).await.unwrap().status(), 500);
    let a = inv.activation(&id).unwrap();
    assert_eq!(a.response.status_code.as_u8(), 1);
    assert!(inv.call("f", "x").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activations_recorded_on_many_threads_are_all_found_newest_first() {
    let inv = MemoryInvoker::new();
    inv.register("echo", fixtures::echo());
    inv.deploy(FunctionSpec::new("echo", "echo")).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let inv = inv.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..25 {
                    let call = Invocation::post("echo", format!("{t}-{i}"));
                    ids.push(call.id.clone());
                    inv.invoke(call).await.unwrap();
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    for id in &ids {
        assert!(inv.activation(id).is_some(), "no record of {id}");
    }
    let listed = inv.activations(&f("echo"), 1000);
    assert_eq!(listed.len(), 200);
    assert!(listed.windows(2).all(|w| w[0].end >= w[1].end), "not newest first");
    assert_eq!(inv.activations(&f("echo"), 7).len(), 7);
}

/// `wait_ready` wakes when the instance turns ready (one cold start after the scale), and a
/// function that never turns ready within the bound gives `false`; an unknown one NotFound.
#[tokio::test(start_paused = true)]
async fn wait_ready_wakes_at_readiness() {
    let cold = Duration::from_millis(37);
    let inv = MemoryInvoker::builder().cold_start(cold).build();
    inv.register("echo", fixtures::echo());
    inv.deploy(FunctionSpec::new("z", "echo").label(labels::SCALE_MIN, "0")).await.unwrap();
    inv.scale(&f("z"), 0).await.unwrap();
    assert!(!inv.wait_ready(&f("z"), Duration::from_secs(5)).await.unwrap(), "nothing to wait for");
    inv.scale(&f("z"), 1).await.unwrap();
    let t0 = tokio::time::Instant::now();
    assert!(inv.wait_ready(&f("z"), Duration::from_secs(5)).await.unwrap());
    assert_eq!(tokio::time::Instant::now() - t0, cold);
    let e = inv.wait_ready(&f("nope"), Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
}

/// The default `wait_ready` (for backends without a notification) polls `status` at growing
/// intervals: it sees readiness within 50 ms of it, and gives `false` at the bound.
#[tokio::test(start_paused = true)]
async fn default_wait_ready_polls_status() {
    /// Forwards `status` only, so `wait_ready` is the trait's default.
    struct StatusOnly(MemoryInvoker);
    #[async_trait::async_trait]
    impl Deploy for StatusOnly {
        async fn deploy(&self, spec: FunctionSpec) -> faas_core::Result<()> {
            self.0.deploy(spec).await
        }
        async fn update(&self, spec: FunctionSpec) -> faas_core::Result<()> {
            self.0.update(spec).await
        }
        async fn remove(&self, function: &FunctionRef) -> faas_core::Result<()> {
            self.0.remove(function).await
        }
        async fn list(&self, ns: &str) -> faas_core::Result<Vec<faas_core::FunctionStatus>> {
            self.0.list(ns).await
        }
        async fn status(
            &self,
            function: &FunctionRef,
        ) -> faas_core::Result<faas_core::FunctionStatus> {
            self.0.status(function).await
        }
        async fn scale(&self, function: &FunctionRef, n: u32) -> faas_core::Result<()> {
            self.0.scale(function, n).await
        }
        async fn namespaces(&self) -> faas_core::Result<Vec<String>> {
            self.0.namespaces().await
        }
        fn info(&self) -> faas_core::ProviderInfo {
            self.0.info()
        }
    }
    let cold = Duration::from_millis(300);
    let inv = MemoryInvoker::builder().cold_start(cold).build();
    inv.register("echo", fixtures::echo());
    let b = StatusOnly(inv);
    b.deploy(FunctionSpec::new("z", "echo").label(labels::SCALE_MIN, "0")).await.unwrap();
    b.scale(&f("z"), 0).await.unwrap();
    let t0 = tokio::time::Instant::now();
    assert!(!b.wait_ready(&f("z"), Duration::from_millis(120)).await.unwrap());
    assert_eq!(
        tokio::time::Instant::now() - t0,
        Duration::from_millis(120),
        "gives up at the bound"
    );
    b.scale(&f("z"), 1).await.unwrap();
    let t0 = tokio::time::Instant::now();
    assert!(b.wait_ready(&f("z"), Duration::from_secs(5)).await.unwrap());
    let took = tokio::time::Instant::now() - t0;
    assert!(took >= cold && took <= cold + Duration::from_millis(50), "{took:?}");
    let e = b.wait_ready(&f("nope"), Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
}

#[tokio::test]
async fn replica_caps_refuse_hostile_scaling_and_hold_across_functions() {
    let inv = MemoryInvoker::builder().replica_limits(faas_core::ReplicaLimits::new(3, 4)).build();
    inv.register("echo", fixtures::echo());
    let bomb = FunctionSpec::new("bomb", "echo")
        .label(labels::SCALE_MIN, "1000000000")
        .label(labels::SCALE_MAX, "1000000000");
    match inv.deploy(bomb).await {
        Err(Error::InvalidSpec { field, reason }) => {
            assert_eq!(field, "labels.com.openfaas.scale.min");
            assert!(reason.contains("cap of 3 replicas per function"), "{reason}");
        }
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    let at_cap = |name: &str| {
        FunctionSpec::new(name, "echo").label(labels::SCALE_MIN, "3").label(labels::SCALE_MAX, "3")
    };
    inv.deploy(at_cap("a")).await.unwrap();
    inv.deploy(at_cap("b")).await.unwrap();
    let count = |name: &str| inv.instances(&f(name)).unwrap().len();
    assert_eq!((count("a"), count("b")), (3, 1), "the node cap of 4 holds across functions");
    match inv.scale(&f("a"), 4).await {
        Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, "replicas"),
        other => panic!("expected InvalidSpec(replicas), got {other:?}"),
    }
    // Freed slots go to the function held below its count at its next scale.
    inv.scale(&f("a"), 1).await.unwrap();
    inv.scale(&f("b"), 3).await.unwrap();
    assert_eq!((count("a"), count("b")), (1, 3));
    assert_eq!(inv.call("b", "hi").await.unwrap(), "hi");
}

//! The OpenWhisk API's overheads, in process, through the gateway's invocation stack (with
//! its activation layer) over the in-memory backend: a blocking action invocation vs a
//! direct invoke of its function; a sequence of 10 no-op actions vs 10 direct invokes; a
//! trigger firing until its rule's action has its result; an activation listing of 100 from
//! a log of 100 000 records.
//!
//! Run: `cargo bench -p faas-benches --bench whisk -- --warm-up-time 1 --measurement-time 3`.
//! Figures: `BENCHMARKS.md`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use faas_core::layers::{
    Activator, ActivatorLayer, ConcurrencyLimitLayer, InvocationMetrics, InvokeService,
    MetricsLayer, TimeoutLayer, TraceLayer,
};
use faas_core::prelude::*;
use faas_core::state::MemoryStateStore;
use faas_core::whisk::{
    ActionPut, ActivationLayer, ActivationLog, ActivationQuery, EntityPath, EntityStore, Exec,
    Invoked, Retention, RulePut, TriggerPut, Whisk,
};
use faas_core::{
    handler_fn, Activation, ActivationResponse, Backend, Context, Error, FunctionRef, Invocation,
    InvocationId, MemoryInvoker, Request, ServiceInvoke,
};
use serde_json::Map;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let memory = MemoryInvoker::new();
    memory.register("noop", handler_fn(|_r: Request, _c: Context| async { Ok::<_, Error>("{}") }));
    let backend: Arc<dyn Backend> = Arc::new(memory);
    let log = ActivationLog::default();
    let stack = tower::ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(MetricsLayer::with_registry(InvocationMetrics::new()))
        .layer(ConcurrencyLimitLayer::new(10_000, 0))
        .layer(ActivationLayer::new(log.clone()).every_invocation(true))
        .layer(ActivatorLayer::new(backend.clone(), Activator::new()))
        .layer(TimeoutLayer::new(Duration::from_secs(60)).named("gateway upstream"))
        .service(InvokeService::new(backend.clone() as Arc<dyn Invoke>));
    let invoke: Arc<dyn Invoke> = Arc::new(ServiceInvoke::new(stack));
    let whisk = Whisk::new(
        EntityStore::new(Arc::new(MemoryStateStore::default())),
        log.clone(),
        invoke.clone(),
        backend.clone(),
        Default::default(),
    );
    let path = |n: &str| EntityPath::new("guest", None, n);
    rt.block_on(async {
        let exec =
            Exec { kind: "blackbox".into(), image: Some("noop".into()), ..Default::default() };
        let put = ActionPut { exec: Some(exec), ..Default::default() };
        whisk.put_action(&path("noop"), put, false).await.unwrap();
        let seq = Exec {
            kind: "sequence".into(),
            components: Some(vec!["/guest/noop".to_string(); 10]),
            ..Default::default()
        };
        let put = ActionPut { exec: Some(seq), ..Default::default() };
        whisk.put_action(&path("seq10"), put, false).await.unwrap();
        whisk.put_trigger(&path("tick"), TriggerPut::default(), false).await.unwrap();
        let rule = RulePut {
            trigger: Some("/guest/tick".into()),
            action: Some("/guest/noop".into()),
            ..Default::default()
        };
        whisk.put_rule(&path("on-tick"), rule, false).await.unwrap();
    });
    let fref = FunctionRef::new("noop", "guest");
    let direct = || {
        let invoke = invoke.clone();
        let fref = fref.clone();
        async move {
            let r = invoke.invoke(Invocation::post(fref, "{}")).await.unwrap();
            r.into_body().collect_bytes().await.unwrap()
        }
    };

    let mut g = c.benchmark_group("whisk");
    g.bench_function("direct_invoke", |b| b.to_async(&rt).iter(direct));
    g.bench_function("action_invoke_blocking", |b| {
        b.to_async(&rt).iter(|| async {
            match whisk.invoke("guest", &path("noop"), Map::new(), true).await.unwrap() {
                Invoked::Done(a) => assert!(a.response.success),
                Invoked::Accepted(_) => panic!("not finished"),
            }
        })
    });
    g.bench_function("direct_invoke_x10", |b| {
        b.to_async(&rt).iter(|| async {
            for _ in 0..10 {
                direct().await;
            }
        })
    });
    g.bench_function("sequence_of_10", |b| {
        b.to_async(&rt).iter(|| async {
            match whisk.invoke("guest", &path("seq10"), Map::new(), true).await.unwrap() {
                Invoked::Done(a) => assert_eq!(a.logs.len(), 10),
                Invoked::Accepted(_) => panic!("not finished"),
            }
        })
    });
    g.bench_function("trigger_fire_to_action_result", |b| {
        b.to_async(&rt).iter(|| async {
            let id = whisk.fire("guest", &path("tick"), Map::new()).await.unwrap().unwrap();
            let trigger = whisk.log().get(&id).unwrap();
            let entry: serde_json::Value = serde_json::from_str(&trigger.logs[0]).unwrap();
            let action = InvocationId::from_string(entry["activationId"].as_str().unwrap());
            // The action runs on a task of its own: wait for its record's result.
            loop {
                if let Some(a) = whisk.log().get(&action) {
                    if a.response.result.get("statusCode").is_none() {
                        break;
                    }
                }
                tokio::task::yield_now().await;
            }
        })
    });
    g.finish();

    // Listing 100 from a full log (100 000 records, the default retention).
    let full = ActivationLog::in_memory(Retention::default());
    let now = SystemTime::now();
    for i in 0..100_000u32 {
        let f = FunctionRef::new(if i % 2 == 0 { "even" } else { "odd" }, "guest");
        let ok = ActivationResponse::success(serde_json::json!({}));
        full.insert(Activation::new(InvocationId::new(), &f, now, now, ok));
    }
    let mut g = c.benchmark_group("whisk_activations");
    g.bench_function("list_100_of_100k_by_name", |b| {
        let q = ActivationQuery { name: Some("odd".into()), limit: 100, ..Default::default() };
        b.iter(|| assert_eq!(full.list(&q).len(), 100))
    });
    g.bench_function("list_100_of_100k_skip_10k", |b| {
        let q = ActivationQuery { skip: 10_000, limit: 100, ..Default::default() };
        b.iter(|| assert_eq!(full.list(&q).len(), 100))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! faas-core hot path: a direct handler call, an in-memory invoke, an in-memory invoke
//! through the full layer stack (trace + metrics + retry + concurrency limit + timeout), and
//! through the gateway's default stack (trace + metrics + concurrency limit + activator +
//! timeout, with the router's per-function handles).
//!
//! Run: `cargo bench -p faas-benches --bench core -- --warm-up-time 1 --measurement-time 3`.
//! Figures: `BENCHMARKS.md`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use faas_core::layers::{
    Activator, ActivatorLayer, ConcurrencyLimitLayer, FunctionHandles, InvocationMetrics,
    InvokeService, Layered, MetricsLayer, RetryLayer, TimeoutLayer, TraceLayer,
};
use faas_core::prelude::*;
use faas_core::{
    boxed, handler_fn, Backend, Body, Context, Error, FunctionRef, FunctionSpec, Invocation,
    MemoryInvoker, Request,
};
use tower::{ServiceBuilder, ServiceExt};

fn hello() -> faas_core::BoxFunction {
    boxed(handler_fn(|_req: Request, _ctx: Context| async move { Ok::<_, Error>("hello") }))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let memory = MemoryInvoker::new();
    memory.register("hello", hello());
    rt.block_on(memory.deploy(FunctionSpec::new("hello", "hello"))).unwrap();
    let fref = FunctionRef::default_ns("hello");

    let backend: Arc<dyn Backend> = Arc::new(memory.clone());
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(MetricsLayer::new())
        .layer(RetryLayer::new(3))
        .layer(ConcurrencyLimitLayer::new(1024, 1024))
        .layer(TimeoutLayer::new(Duration::from_secs(30)).named("gateway"));
    let layered = Layered::with_layer(backend.clone(), stack);

    let registry = InvocationMetrics::new();
    let activator = Activator::new();
    let gateway_stack = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(MetricsLayer::with_registry(registry.clone()))
        .layer(ConcurrencyLimitLayer::new(10_000, 0))
        .layer(ActivatorLayer::new(backend.clone(), activator.clone()))
        .layer(TimeoutLayer::new(Duration::from_secs(60)).named("gateway upstream"))
        .service(InvokeService::new(backend.clone() as Arc<dyn Invoke>));
    let handles = Arc::new(FunctionHandles::new(&registry, &activator, &fref));
    // The gateway's stack as `faas-http` builds it now: with the activation record layer
    // (records indexed in batches; the log bounded at its default 100 000 records).
    let log = faas_core::whisk::ActivationLog::default();
    let recorded_stack = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(MetricsLayer::with_registry(registry.clone()))
        .layer(ConcurrencyLimitLayer::new(10_000, 0))
        .layer(faas_core::whisk::ActivationLayer::new(log.clone()).every_invocation(true))
        .layer(ActivatorLayer::new(backend.clone(), activator.clone()))
        .layer(TimeoutLayer::new(Duration::from_secs(60)).named("gateway upstream"))
        .service(InvokeService::new(backend.clone() as Arc<dyn Invoke>));

    let mut g = c.benchmark_group("core");
    let handler = hello();
    g.bench_function("handler_direct", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = handler.clone().oneshot(http::Request::new(Body::from("hi"))).await;
            resp.unwrap()
        })
    });
    g.bench_function("memory_invoke", |b| {
        b.to_async(&rt)
            .iter(|| async { memory.invoke(Invocation::post(fref.clone(), "hi")).await.unwrap() })
    });
    g.bench_function("memory_invoke_full_stack", |b| {
        b.to_async(&rt)
            .iter(|| async { layered.invoke(Invocation::post(fref.clone(), "hi")).await.unwrap() })
    });
    g.bench_function("memory_invoke_gateway_stack", |b| {
        b.to_async(&rt).iter(|| async {
            let mut inv = Invocation::post(fref.clone(), "hi");
            inv.request.extensions_mut().insert(handles.clone());
            gateway_stack.clone().oneshot(inv).await.unwrap()
        })
    });
    g.bench_function("memory_invoke_gateway_stack_recorded", |b| {
        b.to_async(&rt).iter(|| async {
            let mut inv = Invocation::post(fref.clone(), "hi");
            inv.request.extensions_mut().insert(handles.clone());
            recorded_stack.clone().oneshot(inv).await.unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

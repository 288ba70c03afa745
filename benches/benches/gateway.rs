//! The gateway's own cost per request, without sockets: the default `Gateway` service (span,
//! body limit, routing, ready cache, metrics, call-id headers) called with `oneshot` for
//! `GET /function/hello` on an in-memory function, against `MemoryInvoker::invoke` of the
//! same function (the baseline measured in the same run).
//!
//! Run: `cargo bench -p faas-benches --bench gateway -- --warm-up-time 1 --measurement-time 3`.
//! Figures: `BENCHMARKS.md`; the over-the-socket comparison is `benches/wrk/gateway.sh`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use faas_core::prelude::*;
use faas_core::{Backend, Body, FunctionRef, Invocation};
use faas_http::{Gateway, GatewayConfig};
use tower::ServiceExt;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let memory = rt.block_on(faas_benches::memory_ok("hello")).unwrap();
    let fref = FunctionRef::default_ns("hello");
    let gateway = rt.block_on(async {
        Gateway::builder(Arc::new(memory.clone()) as Arc<dyn Backend>)
            .config(GatewayConfig::default())
            .build()
    });
    let service = gateway.service();

    let mut g = c.benchmark_group("gateway");
    g.bench_function("memory_invoke", |b| {
        b.to_async(&rt).iter(|| async {
            let inv = Invocation {
                id: Default::default(),
                function: fref.clone(),
                request: http::Request::new(Body::empty()),
            };
            memory.invoke(inv).await.unwrap()
        })
    });
    g.bench_function("oneshot_get_function", |b| {
        b.to_async(&rt).iter(|| async {
            let req = http::Request::get("/function/hello")
                .header("host", "127.0.0.1:8080")
                .body(Body::empty())
                .unwrap();
            let resp = service.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

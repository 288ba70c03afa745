//! The OpenWhisk API's overheads, in process, through the gateway's invocation stack (with
//! its activation layer) over the in-memory backend (`faas_benches::whisk::Fixture`): a
//! blocking action invocation vs a direct invoke of its function; a sequence of 10 no-op
//! actions vs 10 direct invokes; a trigger firing until its rule's action has its result;
//! activation listings of 100 from a log of 1 000 000 records.
//!
//! Run: `cargo bench -p faas-benches --bench whisk -- --warm-up-time 1 --measurement-time 3`.
//! Percentiles (p50/p99) of the same calls: `bench-whisk-latency`. Figures: `BENCHMARKS.md`.

use criterion::{criterion_group, criterion_main, Criterion};
use faas_benches::whisk::{full_log, list_queries, Fixture};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let fx = rt.block_on(Fixture::new()).unwrap();

    let mut g = c.benchmark_group("whisk");
    g.bench_function("direct_invoke", |b| {
        b.to_async(&rt).iter(|| async { fx.direct().await.unwrap() })
    });
    g.bench_function("action_invoke_blocking", |b| {
        b.to_async(&rt).iter(|| async { assert_eq!(fx.action("noop").await.unwrap(), 0) })
    });
    g.bench_function("direct_invoke_x10", |b| {
        b.to_async(&rt).iter(|| async {
            for _ in 0..10 {
                fx.direct().await.unwrap();
            }
        })
    });
    g.bench_function("sequence_of_10", |b| {
        b.to_async(&rt).iter(|| async { assert_eq!(fx.action("seq10").await.unwrap(), 10) })
    });
    g.bench_function("trigger_fire_to_action_result", |b| {
        b.to_async(&rt).iter(|| async { fx.fire_to_result().await.unwrap() })
    });
    g.finish();

    // Listing 100 from a log of 1 000 000 records.
    let full = full_log(1_000_000);
    let mut g = c.benchmark_group("whisk_activations");
    for (name, q) in list_queries() {
        g.bench_function(format!("list_100_of_1m_{name}"), |b| {
            b.iter(|| assert_eq!(full.list(&q).len(), 100))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

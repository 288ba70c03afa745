//! Scheduling benchmarks: placement decisions per second for every strategy at 10, 1,000
//! and 100,000 nodes; routing over instances; the autoscaler's decision cost per function per
//! tick.
//!
//! ```text
//! cargo bench -p faas-benches --bench scheduling -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Baselines measured in the same run: `place/scan-fits` walks every node once checking
//! resource fit only (the floor for any strategy that looks at every node), and
//! `autoscale/baseline-average` averages a 30-sample window naively.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use faas_core::autoscale::{Kpa, KpaConfig, Observation};
use faas_core::scheduler::{Scheduler, Strategy};

/// Every built-in strategy through the public harness (`faas_core::sim::bench`), which
/// takes a user's own `Scheduler` the same way (`examples/benches/custom_scheduler.rs`).
fn placement_and_routing(c: &mut Criterion) {
    let built: Vec<(String, std::sync::Arc<dyn Scheduler>)> =
        Strategy::ALL.iter().map(|s| (s.to_string(), s.build_seeded(7))).collect();
    let schedulers: Vec<(&str, &dyn Scheduler)> =
        built.iter().map(|(n, s)| (n.as_str(), &**s)).collect();
    faas_core::sim::bench::schedulers(c, &schedulers);
}

fn autoscaler(c: &mut Criterion) {
    let mut g = c.benchmark_group("autoscale");
    g.throughput(Throughput::Elements(1));
    let tick = Duration::from_secs(2);
    g.bench_function("kpa-decide-per-function-tick", |b| {
        let mut kpa = Kpa::new(KpaConfig { target: 10.0, max: 1000, ..KpaConfig::default() });
        let mut now = Instant::now();
        let mut k = 0u64;
        // Fill the 60 s window first, as in steady state.
        for _ in 0..40 {
            now += tick;
            kpa.decide(now, Observation { concurrency: 50.0, ready: 8, ..Observation::default() });
        }
        b.iter(|| {
            now += tick;
            k += 1;
            let obs = Observation {
                concurrency: (k % 97) as f64,
                rps: (k % 13) as f64,
                ready: 8,
                cpu: None,
            };
            black_box(kpa.decide(now, black_box(obs)))
        })
    });
    g.bench_function("baseline-average", |b| {
        let window: Vec<f64> = (0..30).map(|i| i as f64).collect();
        b.iter(|| black_box(black_box(&window).iter().sum::<f64>() / 30.0))
    });
    g.finish();
}

criterion_group!(benches, placement_and_routing, autoscaler);
criterion_main!(benches);

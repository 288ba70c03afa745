//! A user-written `Scheduler` measured beside the built-in strategies with the public
//! criterion harness (`faas_core::sim::bench`, feature `bench`):
//!
//! ```text
//! cargo bench -p faas-examples --bench custom_scheduler -- --warm-up-time 1 --measurement-time 3
//! ```

use criterion::{criterion_group, criterion_main, Criterion};
use faas_core::scheduler::{Scheduler, Strategy};
use faas_examples::CloudFirst;

fn bench(c: &mut Criterion) {
    let least_loaded = Strategy::LeastLoaded.build();
    let best_fit = Strategy::BestFit.build();
    let schedulers: [(&str, &dyn Scheduler); 3] =
        [("cloud-first", &CloudFirst), ("least-loaded", &*least_loaded), ("best-fit", &*best_fit)];
    faas_core::sim::bench::schedulers(c, &schedulers);
}

criterion_group!(benches, bench);
criterion_main!(benches);

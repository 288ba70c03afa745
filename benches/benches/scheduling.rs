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

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use faas_core::autoscale::{Kpa, KpaConfig, Observation};
use faas_core::scheduler::{InstanceView, Node, PlacementRequest, Resources, Strategy};
use faas_core::FunctionRef;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A mixed cluster: every fourth node a Raspberry Pi (arm64, 4 GiB), the others amd64 VMs
/// (16 GiB); about half full, pseudo-randomly.
fn cluster(n: usize) -> Vec<Node> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (arch, mem, slots, kind) = if i % 4 == 3 {
                ("arm64", 4 * GIB, 16, "rpi")
            } else {
                ("amd64", 16 * GIB, 64, "cloud")
            };
            let used = (x % u64::from(slots)) as u32;
            Node::new(format!("node-{i}"), arch, Resources::new(8000, mem, slots))
                .label("type", kind)
                .label("zone", if i % 2 == 0 { "a" } else { "b" })
                .with_allocated(Resources::new(
                    u64::from(used) * 100,
                    u64::from(used) * 128 * MIB,
                    used,
                ))
        })
        .collect()
}

fn functions() -> Vec<FunctionRef> {
    (0..1024).map(|i| FunctionRef::new(format!("fn-{i}"), "openfaas-fn")).collect()
}

fn placement(c: &mut Criterion) {
    let fns = functions();
    let platforms = vec!["linux/amd64".to_string(), "linux/arm64".to_string()];
    let need = Resources::new(100, 128 * MIB, 1);
    for n in [10usize, 1_000, 100_000] {
        let nodes = cluster(n);
        let mut g = c.benchmark_group(format!("place/{n}-nodes"));
        g.throughput(Throughput::Elements(1));
        if n >= 100_000 {
            g.sample_size(10);
        }
        g.bench_function("scan-fits", |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = i.wrapping_add(1);
                let _ = &fns[i & 1023];
                black_box(nodes.iter().position(|x| x.fits(&need) && x.free_slots() > 1_000_000))
            })
        });
        for s in Strategy::ALL {
            let sched = s.build_seeded(7);
            g.bench_with_input(BenchmarkId::from_parameter(s), &nodes, |b, nodes| {
                let mut i = 0usize;
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let req =
                        PlacementRequest::new(&fns[i & 1023], need).with_platforms(&platforms);
                    black_box(sched.place(&req, nodes).ok())
                })
            });
        }
        g.finish();
    }
}

fn routing(c: &mut Criterion) {
    let fns = functions();
    for k in [10usize, 1_000] {
        let instances: Vec<InstanceView> = (0..k)
            .map(|i| InstanceView {
                id: format!("instance-{i}"),
                node: None,
                in_flight: (i % 5) as u32,
                max_concurrency: Some(4),
                ready: true,
            })
            .collect();
        let mut g = c.benchmark_group(format!("route/{k}-instances"));
        g.throughput(Throughput::Elements(1));
        for s in Strategy::ALL {
            let sched = s.build_seeded(7);
            g.bench_with_input(BenchmarkId::from_parameter(s), &instances, |b, inst| {
                let mut i = 0usize;
                b.iter(|| {
                    i = i.wrapping_add(1);
                    black_box(sched.route(&fns[i & 1023], inst))
                })
            });
        }
        g.finish();
    }
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
            kpa.decide(now, Observation { concurrency: 50.0, rps: 0.0, ready: 8 });
        }
        b.iter(|| {
            now += tick;
            k += 1;
            let obs = Observation { concurrency: (k % 97) as f64, rps: (k % 13) as f64, ready: 8 };
            black_box(kpa.decide(now, black_box(obs)))
        })
    });
    g.bench_function("baseline-average", |b| {
        let window: Vec<f64> = (0..30).map(|i| i as f64).collect();
        b.iter(|| black_box(black_box(&window).iter().sum::<f64>() / 30.0))
    });
    g.finish();
}

criterion_group!(benches, placement, routing, autoscaler);
criterion_main!(benches);

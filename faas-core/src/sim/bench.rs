//! A criterion harness for any [`Scheduler`] (feature `bench`): the same clusters, requests
//! and instances for every scheduler given, so a user's own scheduler is measured beside the
//! built-in strategies in one run.
//!
//! ```no_run
//! # use faas_core::scheduler::Strategy;
//! # fn bench(c: &mut criterion::Criterion) {
//! let least_loaded = Strategy::LeastLoaded.build();
//! faas_core::sim::bench::schedulers(c, &[("least-loaded", &*least_loaded)]);
//! # }
//! ```

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};

use crate::invocation::FunctionRef;
use crate::scheduler::{Capacity, InstanceView, Node, PlacementRequest, Scheduler};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A mixed cluster of `n` nodes: every fourth a Raspberry Pi (arm64, 4 GiB, 16 slots,
/// label `type=rpi`), the others amd64 VMs (16 GiB, 64 slots, `type=cloud`), zones `a` and
/// `b` alternating, each about half full (pseudo-randomly, the same every time).
pub fn cluster(n: usize) -> Vec<Node> {
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
            Node::new(format!("node-{i}"), arch, Capacity::new(8000, mem, slots))
                .label("type", kind)
                .label("zone", if i % 2 == 0 { "a" } else { "b" })
                .with_allocated(Capacity::new(
                    u64::from(used) * 100,
                    u64::from(used) * 128 * MIB,
                    used,
                ))
        })
        .collect()
}

/// 1,024 functions, `fn-0` to `fn-1023`.
pub fn functions() -> Vec<FunctionRef> {
    (0..1024).map(|i| FunctionRef::new(format!("fn-{i}"), "openfaas-fn")).collect()
}

/// Benchmarks every scheduler given, in the same groups:
///
/// - `place/{n}-nodes` for 10, 1,000 and 100,000 nodes ([`cluster`]): one placement of a
///   100 m / 128 MiB instance for amd64 or arm64, with the baseline `scan-fits` (one pass
///   over the nodes checking resource fit only, the floor for any scheduler that looks at
///   every node);
/// - `route/{k}-instances` for 10 and 1,000 ready instances with 0-4 in flight of 4.
pub fn schedulers(c: &mut Criterion, schedulers: &[(&str, &dyn Scheduler)]) {
    let fns = functions();
    let platforms = vec!["linux/amd64".to_string(), "linux/arm64".to_string()];
    let need = Capacity::new(100, 128 * MIB, 1);
    for n in [10usize, 1_000, 100_000] {
        let nodes = cluster(n);
        let mut g = c.benchmark_group(format!("place/{n}-nodes"));
        g.throughput(Throughput::Elements(1));
        if n >= 100_000 {
            g.sample_size(10);
        }
        g.bench_function("scan-fits", |b| {
            b.iter(|| {
                black_box(nodes.iter().position(|x| x.fits(&need) && x.free_slots() > 1_000_000))
            })
        });
        for (name, sched) in schedulers {
            g.bench_with_input(BenchmarkId::from_parameter(name), &nodes, |b, nodes| {
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
        for (name, sched) in schedulers {
            g.bench_with_input(BenchmarkId::from_parameter(name), &instances, |b, inst| {
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

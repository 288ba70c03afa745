//! Write your own `Scheduler` and compare it with the built-in strategies on the public
//! simulator, before giving it to a backend.
//!
//! ```text
//! cargo run --release -p faas-examples --example custom_scheduler -- [SEED] [INVOCATIONS]
//! ```
//!
//! `CloudFirst` places new instances on the amd64 node with the most free slots and falls
//! back to the Raspberry Pis (arm64) only when no cloud node has room; it routes to the ready
//! instance with the fewest invocations in flight. `faas_core::sim::simulate` replays one
//! synthetic trace (the same for every scheduler, deterministic for a seed) against it and
//! against `least-loaded` and `best-fit`, and prints one table.
//!
//! The same scheduler plugs into a backend unchanged, e.g.
//! `ProcessInvoker::builder().scheduler(Arc::new(CloudFirst))`. The example exits non-zero if
//! the simulation served nothing, so CI runs it.

use faas_core::scheduler::{InstanceView, Node, PlacementRequest, Scheduler, Strategy};
use faas_core::sim::{simulate, SimConfig, SimReport, Trace};
use faas_core::FunctionRef;

/// Cloud (amd64) nodes first, then the rest; the least busy instance serves.
struct CloudFirst;

impl Scheduler for CloudFirst {
    fn place(&self, request: &PlacementRequest<'_>, nodes: &[Node]) -> faas_core::Result<usize> {
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| request.admits(n))
            .max_by_key(|(_, n)| (n.arch == "amd64", n.free_slots()))
            .map(|(i, _)| i)
            // "No room now" (Unavailable: wait) or "never" (a constraint or platform no node
            // meets: refuse), as every scheduler must tell them apart.
            .ok_or_else(|| request.unplaceable(nodes))
    }

    fn route(&self, _function: &FunctionRef, instances: &[InstanceView]) -> Option<usize> {
        instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.has_capacity())
            .min_by_key(|(_, i)| i.in_flight)
            .map(|(i, _)| i)
    }

    fn name(&self) -> &str {
        "cloud-first"
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut config = SimConfig::default();
    let parse = |what: &str, v: String| -> u64 {
        v.parse().unwrap_or_else(|_| {
            eprintln!("usage: custom_scheduler [SEED] [INVOCATIONS]  ({what} must be a number)");
            std::process::exit(2);
        })
    };
    if let Some(seed) = args.next() {
        config.seed = parse("SEED", seed);
    }
    config.invocations = args.next().map(|n| parse("INVOCATIONS", n) as usize).unwrap_or(5_000);
    let trace = Trace::generate(&config);
    let mut reports = vec![simulate(&config, &trace, &CloudFirst)];
    for strategy in [Strategy::LeastLoaded, Strategy::BestFit] {
        reports.push(simulate(&config, &trace, &*strategy.build()));
    }
    println!("{}", SimReport::table(&reports));
    if reports[0].served == 0 {
        eprintln!("custom_scheduler: the simulation served nothing");
        std::process::exit(1);
    }
}

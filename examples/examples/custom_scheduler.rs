//! Write your own `Scheduler` and compare it with the built-in strategies on the public
//! simulator, before giving it to a backend.
//!
//! ```text
//! cargo run --release -p faas-examples --example custom_scheduler -- [SEED] [INVOCATIONS]
//! ```
//!
//! `CloudFirst` (in `examples/src/lib.rs`, shared with the criterion bench
//! `cargo bench -p faas-examples --bench custom_scheduler`) places new instances on the amd64 node with the most free slots and falls
//! back to the Raspberry Pis (arm64) only when no cloud node has room; it routes to the ready
//! instance with the fewest invocations in flight. `faas_core::sim::simulate` replays one
//! synthetic trace (the same for every scheduler, deterministic for a seed) against it and
//! against `least-loaded` and `best-fit`, and prints one table.
//!
//! The same scheduler plugs into a backend unchanged, e.g.
//! `ProcessInvoker::builder().scheduler(Arc::new(CloudFirst))`. The example exits non-zero if
//! the simulation served nothing, so CI runs it.

use faas_core::scheduler::Strategy;
use faas_core::sim::{simulate, SimConfig, SimReport, Trace};
use faas_examples::CloudFirst;

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

//! Compares the scheduling strategies on a simulated mixed cloud / Raspberry Pi cluster.
//!
//! ```text
//! cargo run --release -p faas-examples --example simulate -- [SEED] [INVOCATIONS]
//! ```
//!
//! Replays one synthetic trace (heavy-tailed popularity and durations, bursts, some
//! unsatisfiable constraints) per strategy and prints cold starts, waiting time percentiles,
//! node utilisation and rejected placements. Deterministic for a seed. It checks its own
//! result (every strategy accounts for every invocation of the trace, served or rejected)
//! and exits non-zero if not, so CI runs it (with a small trace: `-- 1 500`).

use faas_core::scheduler::Strategy;
use faas_core::sim::{compare, SimConfig, SimReport};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut config = SimConfig::default();
    if let Some(seed) = args.next() {
        match seed.parse() {
            Ok(s) => config.seed = s,
            Err(_) => {
                eprintln!("usage: simulate [SEED] [INVOCATIONS]  (SEED must be a number)");
                std::process::exit(2);
            }
        }
    }
    if let Some(n) = args.next() {
        match n.parse() {
            Ok(n) => config.invocations = n,
            Err(_) => {
                eprintln!("usage: simulate [SEED] [INVOCATIONS]  (INVOCATIONS must be a number)");
                std::process::exit(2);
            }
        }
    }
    let healthy = config.nodes.iter().filter(|n| n.healthy).count();
    println!(
        "seed {}: {} invocations of {} functions at {}/s plus {} bursts of {}, over {} nodes \
         ({} healthy), keep-alive {} s\n",
        config.seed,
        config.invocations,
        config.functions,
        config.rate,
        config.bursts,
        config.burst_size,
        config.nodes.len(),
        healthy,
        config.keep_alive_s
    );
    let started = std::time::Instant::now();
    let reports = compare(&config, &Strategy::ALL);
    print!("{}", SimReport::table(&reports));
    let mut wrong = Vec::new();
    for r in &reports {
        // The trace is at least the steady invocations (bursts come on top).
        if r.served + r.rejected != r.invocations || r.invocations < config.invocations as u64 {
            wrong.push(format!(
                "{}: {} served + {} rejected of {} invocations ({} asked)",
                r.strategy, r.served, r.rejected, r.invocations, config.invocations
            ));
        }
    }
    if !wrong.is_empty() {
        eprintln!("simulate: {}", wrong.join("; "));
        std::process::exit(1);
    }
    println!(
        "\nsimulated {:.0} s of traffic per strategy in {:.1} s of wall time",
        reports.first().map_or(0.0, |r| r.sim_seconds),
        started.elapsed().as_secs_f64()
    );
}

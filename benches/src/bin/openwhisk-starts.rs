//! OpenWhisk action start benchmark on the process backend: the time from deploying a
//! `python:3` action to its first activation's answer, from a stem cell (a watchdog and runtime
//! started ahead, specialised by `/init`) against a cold start (a new watchdog and runtime),
//! plus a warm activation of the same action as the baseline.
//!
//! Usage: `cargo build --release -p faas-watchdog --bins && cargo run --release -p
//! faas-benches --bin openwhisk-starts -- [RUNS]` (default 20). The watchdog is
//! `target/release/faas-watchdog` (override with `FAAS_WATCHDOG_BIN`); `python3` must be on
//! `PATH`. Prints a markdown table of p50/p99 in milliseconds.

use std::time::{Duration, Instant};

use faas_core::prelude::*;
use faas_core::{FunctionRef, FunctionSpec};
use faas_watchdog::process::ProcessInvoker;

const CODE: &str = "def main(p):\n    return {'hello': p.get('name', 'x')}\n";

fn invoker(tag: &str, stems: usize) -> ProcessInvoker {
    let dir = std::env::temp_dir().join(format!("faas-rs-ow-bench-{tag}-{}", std::process::id()));
    let mut b = ProcessInvoker::builder()
        .watchdog_command(faas_benches::watchdog_bin(), Vec::<String>::new())
        .state_dir(dir)
        .stop_grace(Duration::from_secs(2));
    if stems > 0 {
        b = b.stem_cells("python:3", stems);
    }
    b.build().expect("process backend")
}

/// One activation; its time in ms.
async fn activate(inv: &ProcessInvoker, name: &str) -> f64 {
    let t0 = Instant::now();
    let body = inv.call(name, r#"{"name": "bench"}"#).await.expect("activation");
    assert_eq!(&body[..], br#"{"hello":"bench"}"#);
    t0.elapsed().as_secs_f64() * 1e3
}

/// Deploys a fresh action and times deploy to first answer; then `warm` warm activations.
async fn start(inv: &ProcessInvoker, name: &str, warm: &mut Vec<f64>) -> f64 {
    let spec = FunctionSpec::new(name, "")
        .env("mode", "openwhisk")
        .env("ow_kind", "python:3")
        .env("ow_code", CODE);
    let t0 = Instant::now();
    inv.deploy(spec).await.expect("deploy");
    activate(inv, name).await;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    for _ in 0..5 {
        warm.push(activate(inv, name).await);
    }
    inv.remove(&FunctionRef::default_ns(name)).await.expect("remove");
    ms
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let mut warm = Vec::new();
    let cold_inv = invoker("cold", 0);
    let mut cold = Vec::new();
    for i in 0..runs {
        cold.push(start(&cold_inv, &format!("cold-{i}"), &mut warm).await);
    }
    let stem_inv = invoker("stem", 1);
    let mut stem = Vec::new();
    for i in 0..runs {
        // Not timed: the pool is refilled between runs.
        let bound = Instant::now() + Duration::from_secs(60);
        while stem_inv.stem_cell_pids("python:3").is_empty() {
            assert!(Instant::now() < bound, "no stem cell within 60 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stem.push(start(&stem_inv, &format!("stem-{i}"), &mut warm).await);
    }
    faas_benches::print_p50_p99(&mut [
        ("cold start: deploy to first answer (new watchdog + runtime, /init, /run)", &mut cold),
        ("stem cell: deploy to first answer (specialise, /init, /run)", &mut stem),
        ("warm activation", &mut warm),
    ]);
}

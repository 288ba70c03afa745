//! Latency percentiles of the OpenWhisk API in process (`faas_benches::whisk::Fixture`: the
//! gateway's layer stack over the in-memory backend), each against a baseline measured in
//! the same run, in alternating rounds:
//!
//! - a trigger fired until its rule's action has its result, vs a direct invoke of the
//!   action's function down the same stack;
//! - a blocking action invocation, vs the same direct invoke;
//! - a sequence of 10 no-op actions, vs 10 direct invokes one after the other;
//! - a listing of 100 activations from a log of 1 000 000 records (newest; by a name in 1 %
//!   of them; in a namespace with 1 % of them; after skipping 10 000).
//!
//! `bench-whisk-latency [CALLS_PER_ROUND] [ROUNDS] [--no-list]` (default 2000 and 5;
//! `--no-list` leaves out the listings, whose log takes seconds to build).

use std::future::Future;
use std::time::Instant;

use faas_benches::pct;
use faas_benches::whisk::{full_log, list_queries, Fixture};

/// Microseconds of each of `n` sequential calls of `f`, appended to `out`.
async fn time<F, Fut>(n: usize, out: &mut Vec<f64>, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
}

fn report(name: &str, v: &mut [f64]) -> (f64, f64) {
    let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
    println!("{name:<34} n={:>6}  p50 {p50:>9.2} µs  p99 {p99:>9.2} µs", v.len());
    (p50, p99)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let lists = args.next().as_deref() != Some("--no-list");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let fx = Fixture::new().await.unwrap();
        let (mut direct, mut fire, mut action, mut seq, mut x10) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Warm-up.
        time(n, &mut Vec::new(), || async { fx.direct().await.unwrap() }).await;
        time(n, &mut Vec::new(), || async { fx.fire_to_result().await.unwrap() }).await;
        for _ in 0..rounds {
            time(n, &mut direct, || async { fx.direct().await.unwrap() }).await;
            time(n, &mut fire, || async { fx.fire_to_result().await.unwrap() }).await;
            time(n, &mut action, || async {
                fx.action("noop").await.unwrap();
            })
            .await;
            time(n / 10, &mut x10, || async {
                for _ in 0..10 {
                    fx.direct().await.unwrap();
                }
            })
            .await;
            time(n / 10, &mut seq, || async {
                fx.action("seq10").await.unwrap();
            })
            .await;
        }
        let d = report("direct invoke", &mut direct);
        let f = report("trigger fire -> action result", &mut fire);
        let a = report("blocking action invoke", &mut action);
        println!(
            "  fire overhead: p50 +{:.2} µs, p99 +{:.2} µs; action overhead: p50 +{:.2} µs",
            f.0 - d.0,
            f.1 - d.1,
            a.0 - d.0
        );
        let x = report("10 direct invokes", &mut x10);
        let s = report("sequence of 10", &mut seq);
        println!("  sequence / 10 direct: p50 {:.2}x, p99 {:.2}x", s.0 / x.0, s.1 / x.1);
    });

    if !lists {
        return;
    }
    let t = Instant::now();
    let log = full_log(1_000_000);
    println!("log of 1 000 000 records built in {:.1} s", t.elapsed().as_secs_f64());
    for (name, q) in list_queries() {
        let mut v = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            assert_eq!(log.list(&q).len(), 100);
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        report(&format!("list 100 of 1M: {name}"), &mut v);
    }
}

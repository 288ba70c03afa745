//! faas-benches: shared helpers for the benchmarks.

use faas_core::prelude::*;
use faas_core::{handler_fn, Context, Error, FunctionSpec, MemoryInvoker, Request};

/// An in-memory invoker (default settings) with function `name` deployed: a handler that
/// answers `ok` to everything, registered under image `name`.
pub async fn memory_ok(name: &str) -> Result<MemoryInvoker, Error> {
    let invoker = MemoryInvoker::new();
    invoker.register(name, handler_fn(|_r: Request, _c: Context| async { Ok::<_, Error>("ok") }));
    invoker.deploy(FunctionSpec::new(name, name)).await?;
    Ok(invoker)
}

/// Queued invocation number `i` of function `function` in the default namespace, as the
/// gateway's `/async-function/NAME` makes one: a POST with a `content-type` header and a
/// small text body, a fresh call id.
pub fn queued(function: &str, i: usize) -> faas_core::queue::QueuedInvocation {
    faas_core::queue::QueuedInvocation {
        call_id: faas_core::InvocationId::new(),
        function: function.into(),
        namespace: faas_core::spec::DEFAULT_NAMESPACE.into(),
        method: "POST".into(),
        path: String::new(),
        query: String::new(),
        headers: vec![("content-type".into(), "text/plain".into())],
        body: bytes::Bytes::from(format!("payload {i}")),
        callback_url: None,
        attempt: 0,
        queued_at: 0,
    }
}

/// The `p` quantile (0 to 1) of `v`, nearest rank; sorts `v`.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The watchdog binary for the process-backend benches: `FAAS_WATCHDOG_BIN`, else
/// `faas-watchdog` beside the running executable (`target/release/`).
pub fn watchdog_bin() -> std::path::PathBuf {
    std::env::var_os("FAAS_WATCHDOG_BIN").map(std::path::PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current exe");
        exe.parent().expect("exe dir").join("faas-watchdog")
    })
}

/// Polls `ready` every 5 ms until it holds; panics naming `what` after 60 s.
pub async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !ready() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Prints a markdown table of p50 and p99 (ms) of each row of samples (ms).
pub fn print_p50_p99(rows: &mut [(&str, &mut Vec<f64>)]) {
    println!("| what | runs | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    for (what, v) in rows.iter_mut() {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!("| {what} | {} | {p50:.1} | {p99:.1} |", v.len());
    }
}

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

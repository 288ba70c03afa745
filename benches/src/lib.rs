//! faas-benches: shared helpers for the benchmarks.

use faas_core::{handler_fn, Context, Error, FunctionSpec, Invoker, MemoryInvoker, Request};

/// An in-memory invoker (default settings) with function `name` deployed: a handler that
/// answers `ok` to everything, registered under image `name`.
pub async fn memory_ok(name: &str) -> Result<MemoryInvoker, Error> {
    let invoker = MemoryInvoker::new();
    invoker.register(name, handler_fn(|_r: Request, _c: Context| async { Ok::<_, Error>("ok") }));
    invoker.deploy(FunctionSpec::new(name, name)).await?;
    Ok(invoker)
}

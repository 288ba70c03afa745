//! The gateway benchmark's subject: the full default gateway (tracing span, body limit,
//! routing, metrics, call-id headers) invoking an in-memory function `ok` that answers `ok`.
//!
//! `bench-gateway-memory [ADDR]` (default `127.0.0.1:18082`); the function is at
//! `/function/ok`. Served with `faas_http::serve_with` and `ServeConfig::threads` set to the
//! number of CPUs, from a single-threaded runtime: one runtime per CPU. See
//! `benches/wrk/gateway.sh`.

use std::sync::Arc;

use faas_core::Invoker;
use faas_http::{Gateway, GatewayConfig};

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18082".into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    rt.block_on(async move {
        let invoker = faas_benches::memory_ok("ok")
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let gateway = Gateway::builder(Arc::new(invoker) as Arc<dyn Invoker>)
            .config(GatewayConfig::default())
            .build();
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("gateway on memory listening on http://{addr}/function/ok");
        let config = faas_http::ServeConfig::default().threads(cpus);
        faas_http::serve_with(listener, gateway.service(), std::future::pending(), config).await
    })
}

//! Intermediate point of the gateway benchmark: `faas_http::serve` (the gateway's connection
//! handling) running a trivial tower service answering `ok`, no router, no backend, served
//! like the gateway bench (one runtime per CPU).
//!
//! `bench-serve-ok [ADDR]` (default `127.0.0.1:18083`). See `benches/wrk/gateway.sh`.

use std::convert::Infallible;

use faas_core::{Body, Request, Response};

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18083".into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("faas_http::serve listening on http://{addr}");
        let svc = tower::service_fn(|_req: Request| async {
            Ok::<Response, Infallible>(http::Response::new(Body::from("ok")))
        });
        let config = faas_http::ServeConfig::default().threads(cpus);
        faas_http::serve_with(listener, svc, std::future::pending(), config).await
    })
}

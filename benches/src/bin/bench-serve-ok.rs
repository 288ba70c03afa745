//! Intermediate point of the gateway benchmark: `faas_http::serve` (the gateway's connection
//! handling) running a trivial tower service answering `ok`, no router, no backend.
//!
//! `bench-serve-ok [ADDR]` (default `127.0.0.1:18083`). See `benches/wrk/gateway.sh`.

use std::convert::Infallible;

use faas_core::{Body, Request, Response};

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18083".into());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("faas_http::serve listening on http://{addr}");
        let svc = tower::service_fn(|_req: Request| async {
            Ok::<Response, Infallible>(http::Response::new(Body::from("ok")))
        });
        faas_http::serve(listener, svc, std::future::pending()).await
    })
}

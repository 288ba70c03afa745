//! Embed the faas-rs gateway in your own program: an in-memory function behind the
//! OpenFaaS-compatible gateway, served on 127.0.0.1:8080.
//!
//! ```text
//! cargo run -p faas-examples --example gateway
//! curl -d 'hello' http://127.0.0.1:8080/function/upper
//! ```

use std::sync::Arc;

use faas_core::prelude::*;
use faas_core::{handler_fn, Backend, Context, Error, FunctionSpec, MemoryInvoker, Request};
use faas_http::{Gateway, GatewayConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let invoker = MemoryInvoker::new();
    invoker.register(
        "example/upper",
        handler_fn(|req: Request, _ctx: Context| async move {
            let body = req.into_body().collect_limited(1 << 20).await?;
            Ok::<_, Error>(String::from_utf8_lossy(&body).to_uppercase())
        }),
    );
    invoker.deploy(FunctionSpec::new("upper", "example/upper")).await?;
    let gateway = Gateway::builder(Arc::new(invoker) as Arc<dyn Backend>)
        .config(GatewayConfig::from_env()?)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("gateway on http://127.0.0.1:8080 (portal: /ui/, function: /function/upper)");
    faas_http::serve(listener, gateway.service(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

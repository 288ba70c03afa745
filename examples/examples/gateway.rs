//! Embed the faas-rs gateway in your own program: an in-memory function behind the
//! OpenFaaS-compatible gateway, served on 127.0.0.1:8080.
//!
//! ```text
//! cargo run -p faas-examples --example gateway
//! curl -d 'hello' http://127.0.0.1:8080/function/upper
//! cargo run -p faas-examples --example gateway -- --check   # self-check, then exit
//! ```
//!
//! With `--check` it serves on a free port of 127.0.0.1 instead, invokes `upper` once over
//! the socket, and exits non-zero unless the answer is `200 HELLO`, so CI runs it.

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
    let check = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => false,
        [flag] if flag == "--check" => true,
        _ => {
            eprintln!("usage: gateway [--check]");
            std::process::exit(2);
        }
    };
    if !check {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
        println!("gateway on http://127.0.0.1:8080 (portal: /ui/, function: /function/upper)");
        faas_http::serve(listener, gateway.service(), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = stopped.await;
    }));
    let client = faas_http::client::GatewayClient::new(&format!("http://{addr}"))?;
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        client.invoke("upper", http::Method::POST, &[], bytes::Bytes::from_static(b"hello"), false),
    )
    .await??;
    println!("upper: {} {}", answer.status, answer.text());
    if answer.status != 200 || answer.text() != "HELLO" {
        eprintln!("gateway: expected 200 HELLO");
        std::process::exit(1);
    }
    println!("gateway: ok");
    let _ = stop.send(());
    server.await??;
    Ok(())
}

//! Assemble your own gateway from the core's tower layers over a backend of your choice.
//!
//! ```text
//! cargo run -p faas-examples --example custom_gateway                  # self-check, then exit
//! cargo run -p faas-examples --example custom_gateway -- --serve 127.0.0.1:8080
//! ```
//!
//! The gateway's `/function/*` and `/async-function/*` invocations go through the stack given
//! to `GatewayBuilder::invoke_layer`: here a trace span, a concurrency limit with a bounded
//! queue, retries, and a timeout named `custom` (so a 504 says which timeout fired). The
//! backend is anything that implements `faas_core::Backend`: the in-memory backend below, or
//! `faas_watchdog::process::ProcessInvoker`, `faas_backend_docker::DockerInvoker`,
//! `faas_backend_k8s::KubernetesInvoker` in its place, with the same stack.
//!
//! Without `--serve` it checks its own result over a real socket on 127.0.0.1 (a greeting
//! answered 200, a slow call cut by the `custom` timeout with 504) and exits non-zero if
//! either is wrong, so CI runs it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use faas_core::layers::{ConcurrencyLimitLayer, RetryLayer, TimeoutLayer, TraceLayer};
use faas_core::prelude::*;
use faas_core::{handler_fn, Context, Error, FunctionSpec, MemoryInvoker, Request};
use faas_http::client::GatewayClient;
use faas_http::Gateway;
use http::Method;
use tower::ServiceBuilder;

/// The backend: swap in any other `Backend` here.
async fn backend() -> Result<Arc<dyn Backend>, Error> {
    let memory = MemoryInvoker::new();
    memory.register(
        "example/greeter",
        handler_fn(|req: Request, _ctx: Context| async move {
            let name = req.into_body().collect_limited(1 << 20).await?;
            Ok::<_, Error>(format!("Hello, {}!", String::from_utf8_lossy(&name)))
        }),
    );
    memory.register(
        "example/slow",
        handler_fn(|_req: Request, _ctx: Context| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Error>("too late")
        }),
    );
    memory.deploy(FunctionSpec::new("greeter", "example/greeter")).await?;
    memory.deploy(FunctionSpec::new("slow", "example/slow")).await?;
    Ok(Arc::new(memory))
}

/// The gateway: the OpenFaaS routes over the backend, invoking through our own stack.
fn gateway(backend: Arc<dyn Backend>) -> Gateway {
    Gateway::builder(backend)
        .invoke_layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new())
                .layer(ConcurrencyLimitLayer::new(64, 256))
                .layer(RetryLayer::new(2))
                .layer(TimeoutLayer::new(Duration::from_millis(300)).named("custom")),
        )
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve_at = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => None,
        [flag, addr] if flag == "--serve" => Some(addr.clone()),
        _ => {
            eprintln!("usage: custom_gateway [--serve ADDR]");
            std::process::exit(2);
        }
    };
    let gateway = gateway(backend().await?);
    let listener =
        tokio::net::TcpListener::bind(serve_at.as_deref().unwrap_or("127.0.0.1:0")).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = stopped.await;
    }));
    if serve_at.is_some() {
        println!(
            "custom gateway on http://{addr} (try: curl -d Ann http://{addr}/function/greeter)"
        );
        tokio::signal::ctrl_c().await?;
    } else {
        let client = GatewayClient::new(&format!("http://{addr}"))?;
        let hello =
            client.invoke("greeter", Method::POST, &[], Bytes::from_static(b"Ann"), false).await?;
        println!("greeter: {} {}", hello.status, hello.text());
        let slow = client.invoke("slow", Method::POST, &[], Bytes::new(), false).await?;
        println!("slow: {} {}", slow.status, slow.text());
        let ok = hello.status == 200
            && hello.text() == "Hello, Ann!"
            && slow.status == 504
            && slow.text().contains("custom timeout");
        if !ok {
            eprintln!("custom_gateway: unexpected answers (see above)");
            std::process::exit(1);
        }
        println!("custom_gateway: ok");
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}

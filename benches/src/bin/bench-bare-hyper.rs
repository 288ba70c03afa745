//! Baseline for the gateway benchmark: a bare hyper 1 server answering `ok` to every request.
//!
//! `bench-bare-hyper [ADDR] [per-core]` (default `127.0.0.1:18081`). By default it is the
//! canonical hyper server: a multi-threaded runtime, a task per connection, hyper's default
//! settings. With `per-core` it is served the way `faas_http::serve_with` serves the gateway
//! in its bench: one single-threaded runtime per CPU (`ServeConfig::threads`), accepted
//! connections handed out round-robin, and each response written from one buffer
//! (`writev(false)`). See `benches/wrk/gateway.sh`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

async fn serve_conn(stream: tokio::net::TcpStream, tuned: bool) {
    let svc = hyper::service::service_fn(|_req| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    if tuned {
        // As `faas_http::serve_with` writes: one buffer per response.
        http.writev(false);
    }
    let _ = http.serve_connection(TokioIo::new(stream), svc).await;
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18081".into());
    let per_core = std::env::args().nth(2).as_deref() == Some("per-core");
    let rt = if per_core {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?
    };
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let extra = if per_core { cpus - 1 } else { 0 };
        let threads = faas_core::runtime::RuntimeThreads::start(extra, "bare")?;
        eprintln!("bare hyper listening on http://{addr} ({} serving threads)", extra + 1);
        let mut next = 0usize;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            next = (next + 1) % (extra + 1);
            match next.checked_sub(1) {
                None => {
                    tokio::spawn(serve_conn(stream, per_core));
                }
                Some(i) => {
                    let std = stream.into_std()?;
                    threads.handle(i).spawn(async move {
                        if let Ok(stream) = tokio::net::TcpStream::from_std(std) {
                            serve_conn(stream, per_core).await;
                        }
                    });
                }
            }
        }
    })
}

//! `faas_http::serve_with` over real TCP on 127.0.0.1: quiet connections (idle keep-alive,
//! slowly sent headers) are closed, while slow responses and keep-alive use are not cut.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use faas_core::{Body, Request, Response};
use faas_http::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `/slow` streams five chunks 100 ms apart; anything else answers `ok`.
async fn handler(req: Request) -> Result<Response, Infallible> {
    if req.uri().path() == "/slow" {
        let chunks = futures::stream::unfold(0u8, |i| async move {
            if i == 5 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, faas_core::BoxError>(Bytes::from(format!("chunk{i};"))), i + 1))
        });
        return Ok(http::Response::new(Body::from_stream(chunks)));
    }
    Ok(http::Response::new(Body::from("ok")))
}

async fn start(idle: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = tower::service_fn(handler);
    let config = ServeConfig::default().idle_timeout(idle);
    tokio::spawn(faas_http::serve_with(listener, svc, std::future::pending(), config));
    addr
}

/// Reads until the peer closes, at most `limit`; returns what was read and whether it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let addr = start(Duration::from_millis(200)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let t0 = Instant::now();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "the server kept a connection with unfinished headers open");
    assert_eq!(got, "", "nothing is answered to an unfinished request");
    // Closed after one or two quiet periods, not at once.
    assert!(t0.elapsed() >= Duration::from_millis(200), "closed after {:?}", t0.elapsed());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_request() {
    let addr = start(Duration::from_millis(200)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(got.ends_with("ok"), "{got}");
    assert!(closed, "an idle keep-alive connection stayed open");
}

#[tokio::test]
async fn a_response_streaming_longer_than_the_idle_timeout_is_not_cut() {
    let addr = start(Duration::from_millis(100)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed);
    for i in 0..5 {
        assert!(got.contains(&format!("chunk{i};")), "chunk {i} missing from {got:?}");
    }
}

#[tokio::test]
async fn a_busy_keep_alive_connection_stays_open() {
    let addr = start(Duration::from_millis(100)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Twelve requests paced 20 ms apart span more than two quiet periods (the pacing makes
    // the span at least 240 ms, however loaded the machine): the connection serves them all.
    // A count, not a deadline: a slow machine only makes the span longer.
    let t0 = Instant::now();
    for n in 0..12 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while !got.ends_with(b"ok") {
            let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(k > 0, "closed while busy, after {n} requests");
            got.extend_from_slice(&buf[..k]);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(240),
        "the requests spanned several quiet periods"
    );
}

/// Sends `GET /` on its own connection and returns the body.
async fn get_body(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed && got.starts_with("HTTP/1.1 200 OK"), "{got}");
    got.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

#[tokio::test]
async fn with_threads_connections_are_spread_over_their_runtimes_and_shutdown_stops_them() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers with the name of the thread serving the connection.
    let svc = tower::service_fn(|_req: Request| async {
        let name = std::thread::current().name().unwrap_or("unnamed").to_string();
        Ok::<Response, Infallible>(http::Response::new(Body::from(name)))
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServeConfig::default().threads(3).shutdown_grace(Duration::from_secs(5));
    let server = tokio::spawn(faas_http::serve_with(
        listener,
        svc,
        async {
            let _ = stopped.await;
        },
        config,
    ));
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(get_body(addr).await);
    }
    // Round-robin, one connection at a time (each closed before the next opens, so the order
    // is the accept order, whatever the timing): the two started threads, then the calling
    // runtime's thread, twice over.
    let caller = &names[2];
    assert!(!caller.starts_with("faas-http-"), "{names:?}");
    let expected = ["faas-http-1", "faas-http-2", caller, "faas-http-1", "faas-http-2", caller];
    assert_eq!(names, expected, "connections in turn");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve_with returned after shutdown")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
}

/// The client's address is known while its request is handled, on every serving thread:
/// what the login throttle counts failures against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_is_known_on_every_serving_thread() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = tower::service_fn(|req: Request| async move {
        // Read in `call`, as the auth layer does, and reported in the body.
        let peer = faas_http::server::client_addr(&req);
        Ok::<Response, Infallible>(http::Response::new(Body::from(format!("{peer:?}"))))
    });
    let config = ServeConfig::default().threads(3);
    tokio::spawn(faas_http::serve_with(listener, svc, std::future::pending(), config));
    // Outside any connection there is none.
    assert_eq!(faas_http::server::peer_addr(), None);
    for _ in 0..6 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let me = s.local_addr().unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let (got, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(got.ends_with(&format!("Some({me})")), "{got}");
    }
}

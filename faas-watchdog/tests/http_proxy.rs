//! The `http` mode's forwarding path against a hand-written upstream, so that every framing
//! case is exercised: request bodies buffered, streamed with a length and chunked; responses
//! with a length, chunked, close-delimited and to HEAD; keep-alive reuse of the upstream
//! connection, and an upstream that closes its idle connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use faas_watchdog::watchdog::{serve, Config};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Reads one request (head and body) from `s`; None at end of stream.
async fn read_request(s: &mut TcpStream, buf: &mut BytesMut) -> Option<(String, String, Vec<u8>)> {
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let method = req.method.unwrap().to_string();
            let path = req.path.unwrap().to_string();
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let len = header("content-length").map(|v| v.parse::<usize>().unwrap());
            let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
            let framing = match (len, chunked) {
                (Some(_), true) => panic!("both content-length and chunked"),
                (Some(_), false) => "length",
                (None, true) => "chunked",
                (None, false) => "none",
            };
            let _ = buf.split_to(n);
            let mut body = Vec::new();
            if let Some(len) = len {
                while buf.len() < len {
                    assert!(s.read_buf(buf).await.unwrap() > 0, "eof in body");
                }
                body = buf.split_to(len).to_vec();
            } else if chunked {
                loop {
                    let pos = loop {
                        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                            break p;
                        }
                        assert!(s.read_buf(buf).await.unwrap() > 0, "eof in chunk size");
                    };
                    let size = usize::from_str_radix(
                        std::str::from_utf8(&buf[..pos]).unwrap().split(';').next().unwrap(),
                        16,
                    )
                    .unwrap();
                    let _ = buf.split_to(pos + 2);
                    while buf.len() < size + 2 {
                        assert!(s.read_buf(buf).await.unwrap() > 0, "eof in chunk");
                    }
                    body.extend_from_slice(&buf[..size]);
                    let _ = buf.split_to(size + 2);
                    if size == 0 {
                        break;
                    }
                }
            }
            return Some((method, format!("{path} {framing}"), body));
        }
        if s.read_buf(buf).await.unwrap_or(0) == 0 {
            return None;
        }
    }
}

/// The upstream: answers by path; counts the connections it accepted; `closed` is notified
/// when it closed a connection after `/bye`.
async fn upstream(listener: TcpListener, conns: Arc<AtomicUsize>, closed: Arc<Notify>) {
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        conns.fetch_add(1, Ordering::SeqCst);
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            while let Some((method, what, body)) = read_request(&mut s, &mut buf).await {
                let path = what.split(' ').next().unwrap().to_string();
                let summary = format!("{method} {what} {}", body.len());
                let out = match path.as_str() {
                    "/chunked" => format!(
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-summary: {summary}\r\n\r\n\
                         5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n"
                    )
                    .into_bytes(),
                    "/close" => {
                        let r = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end";
                        let _ = s.write_all(r.as_bytes()).await;
                        return;
                    }
                    "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n".to_vec(),
                    "/continue" => "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n\
                         content-length: 4\r\n\r\nmade"
                        .as_bytes()
                        .to_vec(),
                    "/bye" => {
                        // Answers, then closes the kept connection as an idle timeout would.
                        let r = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nbye";
                        let _ = s.write_all(r.as_bytes()).await;
                        drop(s);
                        closed.notify_one();
                        return;
                    }
                    _ => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-summary: {summary}\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                };
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One keep-alive client connection to the watchdog.
struct Conn(
    hyper::client::conn::http1::SendRequest<
        http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
    >,
);

impl Conn {
    async fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        Conn(send)
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        self.0.ready().await.unwrap();
        let req =
            Request::builder().method(method).uri(path).header("host", "wd").body(body).unwrap();
        let fut = async {
            let resp = self.0.send_request(req).await.unwrap();
            let (p, b) = resp.into_parts();
            (p.status, p.headers, b.collect().await.unwrap().to_bytes())
        };
        tokio::time::timeout(Duration::from_secs(30), fut).await.expect("request timed out")
    }
}

fn full(b: impl Into<Bytes>) -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A body of unknown length (sent chunked) made of `parts`.
fn chunks(parts: Vec<Bytes>) -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    let s = futures::stream::iter(parts.into_iter().map(|b| Ok(Frame::data(b))));
    StreamBody::new(s).boxed()
}

#[tokio::test]
async fn http_mode_forwards_every_framing_and_keeps_upstream_connections() {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = up.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(Notify::new());
    tokio::spawn(upstream(up, conns.clone(), closed.clone()));
    let cfg = Config::from_vars([
        ("mode", "http"),
        ("fprocess", "sleep 600"),
        ("upstream_url", &format!("http://127.0.0.1:{up_port}")),
        ("healthcheck_interval", "0s"),
        ("watchdog_threads", "2"),
    ])
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(cfg, listener, async move {
        let _ = rx.await;
    }));

    let mut c = Conn::open(port).await;
    // Small body: buffered, one write, content-length kept.
    let (st, h, b) = c.send(Method::POST, "/echo?q=1", full("hello")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(&b[..], b"hello");
    assert_eq!(h["x-summary"], "POST /echo?q=1 length 5");
    // The upstream may have seen a probe connection from the readiness check: count from here.
    let base = conns.load(Ordering::SeqCst);
    // Large body of known length: streamed after the head.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (st, h, b) = c.send(Method::PUT, "/echo", full(big.clone())).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(h["x-summary"], "PUT /echo length 300000");
    assert!(b[..] == big[..], "large body altered");
    // Body of unknown length: forwarded chunked.
    let parts = vec![Bytes::from_static(b"ab"), Bytes::from(vec![b'c'; 70_000])];
    let (st, h, b) = c.send(Method::POST, "/echo", chunks(parts)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(h["x-summary"], "POST /echo chunked 70002");
    assert_eq!(b.len(), 70_002);
    // Chunked response (with an extension and a trailer): decoded and re-framed.
    let (st, h, b) = c.send(Method::GET, "/chunked", full("")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(&b[..], b"hello, world");
    assert_eq!(h["x-summary"], "GET /chunked none 0");
    // HEAD: a length but no body.
    let (st, h, b) = c.send(Method::HEAD, "/head", full("")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(h["content-length"], "11");
    assert!(b.is_empty());
    // An interim 100 response is skipped.
    let (st, _, b) = c.send(Method::POST, "/continue", full("x")).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(&b[..], b"made");
    // All of that over one upstream connection.
    assert_eq!(conns.load(Ordering::SeqCst), base, "the upstream connection was not kept");

    // A close-delimited response ends the upstream connection; the next request opens one.
    let (st, _, b) = c.send(Method::GET, "/close", full("")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(&b[..], b"until the end");
    let (st, _, b) = c.send(Method::POST, "/echo", full("again")).await;
    assert_eq!((st, &b[..]), (StatusCode::OK, &b"again"[..]));
    assert_eq!(conns.load(Ordering::SeqCst), base + 1);

    // The upstream closes a kept connection after answering: the next request (even a POST)
    // notices before sending and uses a fresh connection.
    for i in 0..5 {
        let (st, _, b) = c.send(Method::GET, "/bye", full("")).await;
        assert_eq!((st, &b[..]), (StatusCode::OK, &b"bye"[..]), "round {i}");
        // Once the upstream has closed it (as an idle timeout would between requests).
        closed.notified().await;
        let (st, _, b) = c.send(Method::POST, "/echo", full(format!("n{i}"))).await;
        assert_eq!(st, StatusCode::OK, "round {i}: {}", String::from_utf8_lossy(&b));
        assert_eq!(b, format!("n{i}"), "round {i}");
    }

    // Other client connections get their own upstream connections, on both threads.
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(Conn::open(port).await);
    }
    for (i, o) in others.iter_mut().enumerate() {
        let (st, _, b) = o.send(Method::POST, "/echo", full(format!("c{i}"))).await;
        assert_eq!((st, b), (StatusCode::OK, Bytes::from(format!("c{i}"))));
    }

    drop((c, others));
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn http_mode_answers_502_for_a_malformed_upstream_response() {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = up.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = up.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                if read_request(&mut s, &mut buf).await.is_some() {
                    let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
                }
            });
        }
    });
    let cfg = Config::from_vars([
        ("mode", "http"),
        ("fprocess", "sleep 600"),
        ("upstream_url", &format!("http://127.0.0.1:{up_port}")),
        ("healthcheck_interval", "0s"),
    ])
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(cfg, listener, async move {
        let _ = rx.await;
    }));
    let mut c = Conn::open(port).await;
    let (st, h, b) = c.send(Method::GET, "/", full("")).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["x-watchdog-error"], "upstream");
    drop(c);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server).await.unwrap().unwrap().unwrap();
}

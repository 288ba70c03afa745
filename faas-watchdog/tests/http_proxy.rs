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

/// What the upstream read of one request.
struct Got {
    method: String,
    /// The path and how the body was framed (`length`, `chunked` or `none`).
    what: String,
    body: Vec<u8>,
    /// The header names as received, lowercased, with `host`'s value: `host=wd,x-a`.
    names: String,
}

/// Reads one request (head and body) from `s`; None at end of stream.
async fn read_request(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Got> {
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
            let names = req
                .headers
                .iter()
                .map(|h| match h.name.to_ascii_lowercase().as_str() {
                    "host" => format!("host={}", String::from_utf8_lossy(h.value)),
                    n => n.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",");
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
                body = read_chunked(s, buf).await;
            }
            return Some(Got { method, what: format!("{path} {framing}"), body, names });
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
            while let Some(Got { method, what, body, names }) = read_request(&mut s, &mut buf).await
            {
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
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-summary: {summary}\r\n\
                             x-names: {names}\r\n\r\n",
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

/// Waits (at most 10 s) until a connection to `up_port` on 127.0.0.1 is in CLOSE_WAIT: the
/// upstream's FIN has reached the watchdog's socket, so the watchdog's reactor sees the close
/// no later than the next request (on a loaded machine the FIN can otherwise arrive after
/// it, and a POST on the closed connection cannot be sent again).
async fn fin_reached(up_port: u16) {
    let want = format!("0100007F:{up_port:04X}");
    for _ in 0..2000 {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let found = table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == want && f[3] == "08"
        });
        if found {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no connection to port {up_port} reached CLOSE_WAIT within 10 s");
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
        // Connections are reused below however slow the machine is between two requests.
        ("upstream_keepalive", "10m"),
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
    // The watchdog reads these plain requests itself (`h1`).
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
    // These two it hands to hyper, with the connection and its upstream connection.
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
        // Once the upstream has closed it (as an idle timeout would between requests), and
        // the FIN has reached the watchdog's end.
        closed.notified().await;
        fin_reached(up_port).await;
        let (st, _, b) = c.send(Method::POST, "/echo", full(format!("n{i}"))).await;
        assert_eq!(st, StatusCode::OK, "round {i}: {}", String::from_utf8_lossy(&b));
        assert_eq!(b, format!("n{i}"), "round {i}");
    }

    // The same on a connection the watchdog serves itself from start to end (`c` is
    // hyper's by now): a close-delimited response, and a kept upstream connection closed
    // between two requests.
    let mut own = Conn::open(port).await;
    let (st, h, b) = own.send(Method::GET, "/close", full("")).await;
    assert_eq!((st, &b[..]), (StatusCode::OK, &b"until the end"[..]));
    assert_eq!(h["transfer-encoding"], "chunked", "a body of unknown length is sent chunked");
    for i in 0..3 {
        let (st, _, b) = own.send(Method::GET, "/bye", full("")).await;
        assert_eq!((st, &b[..]), (StatusCode::OK, &b"bye"[..]), "round {i}");
        closed.notified().await;
        fin_reached(up_port).await;
        let (st, _, b) = own.send(Method::POST, "/echo", full(format!("m{i}"))).await;
        assert_eq!(st, StatusCode::OK, "round {i}: {}", String::from_utf8_lossy(&b));
        assert_eq!(b, format!("m{i}"), "round {i}");
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

    drop((c, own, others));
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

/// A watchdog in http mode in front of [`upstream`], served until dropped or stopped.
struct Watchdog {
    port: u16,
    up_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), faas_core::Error>>,
}

impl Watchdog {
    async fn start(extra: &[(&str, &str)]) -> Watchdog {
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_port = up.local_addr().unwrap().port();
        tokio::spawn(upstream(up, Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new())));
        Watchdog::start_with(up_port, extra).await
    }

    async fn start_with(up_port: u16, extra: &[(&str, &str)]) -> Watchdog {
        let url = format!("http://127.0.0.1:{up_port}");
        let mut vars = vec![
            ("mode", "http"),
            ("fprocess", "sleep 600"),
            ("upstream_url", url.as_str()),
            ("healthcheck_interval", "0s"),
        ];
        vars.extend_from_slice(extra);
        let cfg = Config::from_vars(vars).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(cfg, listener, async move {
            let _ = rx.await;
        }));
        Watchdog { port, up_port, stop: Some(tx), server }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).await.unwrap()
    }

    /// Opens a connection and writes `bytes` on it; the connection and its read buffer.
    async fn send_raw(&self, bytes: &[u8]) -> (TcpStream, BytesMut) {
        let mut s = self.connect().await;
        s.write_all(bytes).await.unwrap();
        (s, BytesMut::new())
    }

    /// Starts the shutdown; completes once the listener is closed (the connections have
    /// been told to finish by then).
    async fn begin_stop(&mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        for _ in 0..1000 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the listener is still open 10 s after the shutdown began");
    }

    async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.server)
            .await
            .expect("the watchdog did not stop")
            .unwrap()
            .unwrap();
    }
}

/// A response as read off the wire.
#[derive(Debug)]
struct Wire {
    status: u16,
    /// Lowercased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads a chunked body from `buf` and `s`.
async fn read_chunked(s: &mut TcpStream, buf: &mut BytesMut) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let pos = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            assert!(s.read_buf(buf).await.unwrap() > 0, "eof in chunk size");
        };
        let line = std::str::from_utf8(&buf[..pos]).unwrap();
        let size = usize::from_str_radix(line.split(';').next().unwrap(), 16).unwrap();
        let _ = buf.split_to(pos + 2);
        while buf.len() < size + 2 {
            assert!(s.read_buf(buf).await.unwrap() > 0, "eof in chunk");
        }
        body.extend_from_slice(&buf[..size]);
        let _ = buf.split_to(size + 2);
        if size == 0 {
            return body;
        }
    }
}

/// Reads one response from `s` (within 10 s); None at the end of the stream.
async fn read_response(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Wire> {
    let read = async {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = resp.parse(buf).expect("malformed response") {
                let status = resp.code.unwrap();
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        let v = String::from_utf8(h.value.to_vec()).unwrap();
                        (h.name.to_ascii_lowercase(), v)
                    })
                    .collect();
                let _ = buf.split_to(n);
                let mut wire = Wire { status, headers, body: Vec::new() };
                if (100..200).contains(&status) || status == 204 {
                    return Some(wire);
                }
                if let Some(len) = wire.header("content-length") {
                    let len: usize = len.parse().unwrap();
                    while buf.len() < len {
                        assert!(s.read_buf(buf).await.unwrap() > 0, "eof in body");
                    }
                    wire.body = buf.split_to(len).to_vec();
                } else if wire.header("transfer-encoding") == Some("chunked") {
                    wire.body = read_chunked(s, buf).await;
                } else {
                    while s.read_buf(buf).await.unwrap() > 0 {}
                    wire.body = buf.split().to_vec();
                }
                return Some(wire);
            }
            match s.read_buf(buf).await {
                Ok(0) | Err(_) if buf.is_empty() => return None,
                Ok(0) => panic!("eof in a response head: {:?}", String::from_utf8_lossy(buf)),
                Err(e) => panic!("reading a response: {e}"),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("no response within 10 s")
}

/// Reads a response that must be there.
async fn response(s: &mut TcpStream, buf: &mut BytesMut) -> Wire {
    read_response(s, buf).await.expect("the connection closed instead of answering")
}

/// Asserts that the watchdog closes the connection (within 10 s) with nothing more to read.
async fn assert_closed(s: &mut TcpStream, buf: &mut BytesMut) {
    let r = read_response(s, buf).await;
    assert!(r.is_none(), "expected the connection to close, got {r:?}");
}

#[tokio::test]
async fn plain_requests_are_answered_in_order_and_the_rest_handed_to_hyper_mid_connection() {
    let wd = Watchdog::start(&[]).await;
    let mut s = wd.connect().await;
    let mut buf = BytesMut::new();
    // Four plain requests in one write: hop-by-hop headers are not forwarded, a missing
    // Host is supplied, the health endpoint is the watchdog's.
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: wd\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nX-A: 1\r\n\r\nhello\
          GET /echo?x=1 HTTP/1.1\r\nhost: wd\r\n\r\n\
          DELETE /echo HTTP/1.1\r\n\r\n\
          GET /_/health HTTP/1.1\r\nHost: wd\r\n\r\n",
    )
    .await
    .unwrap();
    let r = response(&mut s, &mut buf).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    assert_eq!(r.header("x-summary"), Some("POST /echo length 5"));
    assert_eq!(r.header("x-names"), Some("host=wd,content-length,x-a"));
    assert_eq!(r.header("content-length"), Some("5"));
    let date = r.header("date").expect("a date header");
    httpdate::parse_http_date(date).expect("an HTTP date");
    assert_eq!(r.header("connection"), None);
    let r = response(&mut s, &mut buf).await;
    assert_eq!(r.header("x-summary"), Some("GET /echo?x=1 none 0"));
    assert_eq!(r.header("x-names"), Some("host=wd"));
    let r = response(&mut s, &mut buf).await;
    assert_eq!(r.header("x-summary"), Some("DELETE /echo none 0"));
    let host = format!("host=127.0.0.1:{}", wd.up_port);
    assert_eq!(r.header("x-names"), Some(host.as_str()));
    let r = response(&mut s, &mut buf).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"OK"[..]));
    assert_eq!(r.header("x-summary"), None, "the health endpoint reached the upstream");

    // A chunked request goes to hyper together with the plain one written after it: both
    // answered, in order, and the connection stays hyper's.
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: wd\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: wd\r\nContent-Length: 2\r\n\r\nzz",
    )
    .await
    .unwrap();
    let r = response(&mut s, &mut buf).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"abc"[..]));
    assert_eq!(r.header("x-summary"), Some("POST /echo chunked 3"));
    let r = response(&mut s, &mut buf).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"zz"[..]));
    assert_eq!(r.header("x-summary"), Some("POST /echo length 2"));

    // `Connection: close` is answered with it, then the connection closes.
    let (mut s, mut buf) =
        wd.send_raw(b"GET /echo HTTP/1.1\r\nHost: wd\r\nConnection: close\r\n\r\n").await;
    let r = response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert_closed(&mut s, &mut buf).await;

    // A malformed request is hyper's to answer: 400.
    let (mut s, mut buf) =
        wd.send_raw(b"GET /echo HTTP/1.1\r\nHost: wd\r\nno colon here\r\n\r\n").await;
    let r = response(&mut s, &mut buf).await;
    assert_eq!(r.status, 400);

    // So are `Expect: 100-continue` (the interim answer comes before the body is sent)...
    let (mut s, mut buf) = wd
        .send_raw(
            b"POST /echo HTTP/1.1\r\nHost: wd\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .await;
    let r = response(&mut s, &mut buf).await;
    assert_eq!(r.status, 100);
    s.write_all(b"data").await.unwrap();
    let r = response(&mut s, &mut buf).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"data"[..]));
    assert_eq!(r.header("x-summary"), Some("POST /echo length 4"));

    // ...and HTTP/1.0, whose connection closes after the answer.
    let (mut s, mut buf) =
        wd.send_raw(b"POST /echo HTTP/1.0\r\nHost: wd\r\nContent-Length: 3\r\n\r\nold").await;
    let r = response(&mut s, &mut buf).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"old"[..]));
    assert_closed(&mut s, &mut buf).await;
    wd.finish().await;
}

#[tokio::test]
async fn slow_request_heads_and_bodies_time_out_and_idle_connections_close() {
    let wd = Watchdog::start(&[("read_timeout", "300ms"), ("exec_timeout", "300ms")]).await;
    // A head that does not finish within read_timeout: 408, then the connection closes.
    let (mut s, mut buf) = wd.send_raw(b"GET /echo HTTP/1.1\r\nHo").await;
    let r = response(&mut s, &mut buf).await;
    assert_eq!(r.status, 408);
    assert_closed(&mut s, &mut buf).await;

    // A kept connection with no next request within read_timeout is closed.
    let (mut s, mut buf) = wd.send_raw(b"GET /echo HTTP/1.1\r\nHost: wd\r\n\r\n").await;
    assert_eq!(response(&mut s, &mut buf).await.status, 200);
    assert_closed(&mut s, &mut buf).await;

    // A body that does not arrive within exec_timeout: 504 naming it, then the connection
    // closes (the rest of the body would be read as the next request).
    let (mut s, mut buf) =
        wd.send_raw(b"POST /echo HTTP/1.1\r\nHost: wd\r\nContent-Length: 10\r\n\r\nabc").await;
    let r = response(&mut s, &mut buf).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-watchdog-error"), Some("exec_timeout"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_closed(&mut s, &mut buf).await;
    wd.finish().await;
}

#[tokio::test]
async fn draining_answers_the_request_in_flight_and_closes_idle_connections() {
    // An upstream that holds `/slow` until told to answer.
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = up.local_addr().unwrap().port();
    let (got, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (g, r) = (got.clone(), go.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = up.accept().await.unwrap();
            let (got, go) = (g.clone(), r.clone());
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while let Some(req) = read_request(&mut s, &mut buf).await {
                    if req.what.starts_with("/slow") {
                        got.notify_one();
                        go.notified().await;
                    }
                    let out = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone";
                    if s.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut wd = Watchdog::start_with(up_port, &[]).await;
    let mut idle = wd.connect().await;
    let mut idle_buf = BytesMut::new();
    idle.write_all(b"GET /x HTTP/1.1\r\nHost: wd\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut idle, &mut idle_buf).await.status, 200);
    let mut busy = wd.connect().await;
    let mut busy_buf = BytesMut::new();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: wd\r\n\r\n").await.unwrap();
    got.notified().await;

    wd.begin_stop().await;
    // The idle connection is closed; the busy one gets its answer, marked as the last.
    assert_closed(&mut idle, &mut idle_buf).await;
    go.notify_one();
    let r = response(&mut busy, &mut busy_buf).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"done"[..]));
    assert_eq!(r.header("connection"), Some("close"));
    assert_closed(&mut busy, &mut busy_buf).await;
    wd.finish().await;
}

/// Piece sizes for writing a stream in pieces: all ones, or a pseudo-random sequence
/// (xorshift) from a seed, 1 to `max` bytes each.
struct Pieces {
    seq: Option<u32>,
    max: u32,
}

impl Pieces {
    fn ones() -> Pieces {
        Pieces { seq: None, max: 1 }
    }

    fn seeded(seed: u32, max: u32) -> Pieces {
        Pieces { seq: Some(seed | 1), max }
    }

    fn next_size(&mut self) -> usize {
        let Some(x) = self.seq.as_mut() else { return 1 };
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        1 + (*x % self.max) as usize
    }
}

/// Writes `bytes` in pieces, yielding after each so that a reader on this thread takes
/// each piece before the next is written.
async fn write_in_pieces(
    s: &mut TcpStream,
    bytes: &[u8],
    pieces: &mut Pieces,
) -> std::io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + pieces.next_size()).min(bytes.len());
        s.write_all(&bytes[at..end]).await?;
        at = end;
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// A pipelined stream of requests, written in pieces of every size from one byte up, is
/// answered exactly as when written whole: the http mode's own parser resumes correctly
/// wherever a read ends (inside the request line, a header, the empty line, a body, and
/// where the connection is handed to hyper).
#[tokio::test]
async fn pipelined_requests_split_anywhere_are_answered_the_same() {
    // One serving thread, this test's: each piece is read before the next is written.
    let wd = Watchdog::start(&[("watchdog_threads", "1")]).await;
    let big: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut stream = Vec::new();
    stream.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nHost: wd\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\
          X-A: 1\r\n\r\nhello\
          GET /echo?x=1 HTTP/1.1\r\nhost: wd\r\n\r\n",
    );
    stream.extend_from_slice(b"PUT /echo HTTP/1.1\r\nHost: wd\r\nContent-Length: 3000\r\n\r\n");
    stream.extend_from_slice(&big);
    stream.extend_from_slice(
        b"GET /_/health HTTP/1.1\r\nHost: wd\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: wd\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: wd\r\nContent-Length: 2\r\n\r\nzz",
    );
    let expected: [(&str, &[u8]); 6] = [
        ("POST /echo length 5", b"hello"),
        ("GET /echo?x=1 none 0", b""),
        ("PUT /echo length 3000", &big),
        ("", b"OK"),
        ("POST /echo chunked 3", b"abc"),
        ("POST /echo length 2", b"zz"),
    ];
    for round in 0..24u32 {
        let mut s = wd.connect().await;
        s.set_nodelay(true).unwrap();
        // Pieces of one byte, then of 1 to 97 bytes, differently each round.
        let mut pieces = if round == 0 {
            Pieces::ones()
        } else {
            Pieces::seeded(round.wrapping_mul(0x9e37_79b9), 97)
        };
        write_in_pieces(&mut s, &stream, &mut pieces).await.unwrap();
        let mut buf = BytesMut::new();
        for (i, (summary, body)) in expected.iter().enumerate() {
            let r = response(&mut s, &mut buf).await;
            let what = format!("round {round}, response {i}");
            assert_eq!(r.status, 200, "{what}");
            assert_eq!(r.header("x-summary").unwrap_or(""), *summary, "{what}");
            assert!(r.body == *body, "{what}: body of {} bytes", r.body.len());
        }
    }
    wd.finish().await;
}

/// The upstream's answers, written in pieces of every size from one byte up, reach the
/// client as when written whole: a body of known length, a chunked body with an extension
/// and a trailer, an interim 100 before the answer, a 204, and a close-delimited body.
#[tokio::test]
async fn upstream_answers_split_anywhere_are_forwarded_the_same() {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = up.local_addr().unwrap().port();
    let long: Vec<u8> = (0..1500u32).map(|i| b'A' + (i % 26) as u8).collect();
    let long_up = long.clone();
    tokio::spawn(async move {
        for conn in 0u32.. {
            let (mut s, _) = up.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            // Pieces of one byte on the first connection, then of 1 to 61 bytes.
            let mut pieces = if conn == 0 {
                Pieces::ones()
            } else {
                Pieces::seeded(conn.wrapping_mul(0x2545_f491), 61)
            };
            let long = long_up.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while let Some(req) = read_request(&mut s, &mut buf).await {
                    let path = req.what.split(' ').next().unwrap().to_string();
                    let mut out = match path.as_str() {
                        "/len" => {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 1500\r\nx-k: v\r\n\r\n".to_vec()
                        }
                        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                            5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n"
                            .to_vec(),
                        "/continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n\
                            content-length: 4\r\n\r\nmade"
                            .to_vec(),
                        "/empty" => b"HTTP/1.1 204 No Content\r\nx-k: v\r\n\r\n".to_vec(),
                        _ => b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end".to_vec(),
                    };
                    if path == "/len" {
                        out.extend_from_slice(&long);
                    }
                    if write_in_pieces(&mut s, &out, &mut pieces).await.is_err() {
                        return;
                    }
                    if path == "/close" {
                        return;
                    }
                }
            });
        }
    });
    // One serving thread, this test's, so that the pieces are read one at a time.
    let wd = Watchdog::start_with(up_port, &[("watchdog_threads", "1")]).await;
    for round in 0..16 {
        let mut s = wd.connect().await;
        let mut buf = BytesMut::new();
        let what = |path: &str| format!("round {round}, {path}");
        for path in ["/len", "/chunked", "/continue", "/empty", "/len", "/close"] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: wd\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let r = response(&mut s, &mut buf).await;
            match path {
                "/len" => {
                    assert_eq!(r.status, 200, "{}", what(path));
                    assert_eq!(r.header("x-k"), Some("v"), "{}", what(path));
                    assert!(r.body == long, "{}: {} bytes", what(path), r.body.len());
                }
                "/chunked" => assert_eq!((r.status, &r.body[..]), (200, &b"hello, world"[..])),
                "/continue" => assert_eq!((r.status, &r.body[..]), (201, &b"made"[..])),
                "/empty" => {
                    assert_eq!(r.status, 204, "{}", what(path));
                    assert_eq!(r.header("x-k"), Some("v"), "{}", what(path));
                }
                _ => assert_eq!((r.status, &r.body[..]), (200, &b"until the end"[..])),
            }
        }
    }
    wd.finish().await;
}

/// A kept upstream connection is reused only while it has been idle for less than
/// `upstream_keepalive`: after that a request opens a new one (so a request never goes out on
/// a connection the upstream's own idle timeout is closing), and `0` opens one per request.
#[tokio::test]
async fn idle_upstream_connections_are_reused_only_within_upstream_keepalive() {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = up.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    tokio::spawn(upstream(up, conns.clone(), Arc::new(Notify::new())));
    for (keepalive, idle, expect_new) in [("1s", None, false), ("1s", Some(1200), true)] {
        let wd = Watchdog::start_with(up_port, &[("upstream_keepalive", keepalive)]).await;
        let mut s = wd.connect().await;
        let mut buf = BytesMut::new();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: wd\r\nContent-Length: 1\r\n\r\na")
            .await
            .unwrap();
        assert_eq!(response(&mut s, &mut buf).await.status, 200);
        let before = conns.load(Ordering::SeqCst);
        if let Some(ms) = idle {
            // The connection's idle time is what is under test.
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: wd\r\nContent-Length: 1\r\n\r\nb")
            .await
            .unwrap();
        let r = response(&mut s, &mut buf).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"b"[..]));
        let opened = conns.load(Ordering::SeqCst) - before;
        assert_eq!(opened, usize::from(expect_new), "keepalive {keepalive}, idle {idle:?} ms");
        wd.finish().await;
    }
    // Zero: a new connection for every request.
    let wd = Watchdog::start_with(up_port, &[("upstream_keepalive", "0")]).await;
    let mut s = wd.connect().await;
    let mut buf = BytesMut::new();
    // Counted from the first answer on (the readiness check connects to the upstream too).
    let mut before = 0;
    for i in 0..4 {
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: wd\r\n\r\n").await.unwrap();
        assert_eq!(response(&mut s, &mut buf).await.status, 200, "request {i}");
        if i == 0 {
            before = conns.load(Ordering::SeqCst);
        }
    }
    assert_eq!(conns.load(Ordering::SeqCst) - before, 3);
    wd.finish().await;
}

#[test]
fn a_malformed_upstream_keepalive_is_refused_naming_it() {
    let e = Config::from_vars([
        ("mode", "http"),
        ("fprocess", "sleep 600"),
        ("upstream_url", "http://127.0.0.1:8081"),
        ("upstream_keepalive", "soon"),
    ])
    .expect_err("a malformed upstream_keepalive is refused");
    assert!(e.to_string().contains("upstream_keepalive"), "{e}");
}

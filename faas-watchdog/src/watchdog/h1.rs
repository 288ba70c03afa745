//! http mode's own HTTP/1.1 server side, for the plain requests that make up its hot path.
//!
//! A request that is HTTP/1.1, in origin form, with no body or a `Content-Length` body of at
//! most [`BUFFER_BODY_UP_TO`] bytes, and without `Transfer-Encoding`, `Expect` or an upgrade
//! is read here with `httparse`; its upstream request is written straight from the bytes
//! received (hop-by-hop headers dropped, as [`up_request`] does), and the answer goes back in
//! one write when it is complete. The first request on a connection that is anything else
//! (malformed, HTTP/1.0, chunked or large bodies, `Expect: 100-continue`, an upgrade, more
//! than [`MAX_HEADERS`] headers) hands the connection, with the bytes already read, to hyper
//! for the rest of its life, so hyper still answers every case this module does not.
//!
//! Written by hand rather than left to hyper because of a benchmark: on this hot path hyper's
//! server side cost 8-10 % of the watchdog's CPU per request and about 6 % of its throughput
//! (`benches/wrk/watchdog-ab.sh`, BENCHMARKS.md "the watchdog's own HTTP/1 server side").

use super::*;

/// The most request headers read here (a request with more goes to hyper, which takes 100).
const MAX_HEADERS: usize = 64;

/// The largest request head read here (a larger one goes to hyper).
const MAX_HEAD: usize = 16 * 1024;

/// How much the connection's buffer reads at a time.
const READ_CHUNK: usize = 8 * 1024;

/// Response bytes gathered before they are written (a body chunk this large or larger is
/// written as it is, not copied).
const WRITE_CHUNK: usize = 64 * 1024;

/// Serves an http-mode connection: plain requests here, the rest of the connection by
/// hyper from the first request that is not plain.
pub(super) async fn serve(
    shared: Arc<Shared>,
    http: hyper::server::conn::http1::Builder,
    stop: watch::Receiver<bool>,
    mut io: tokio::net::TcpStream,
) {
    let slot = ConnSlot::default();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::new();
    // One timer per connection, reset for each request head.
    let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));
    // One wait for the drain per connection, polled while the connection is idle (a new
    // wait per request would register with the channel each time).
    let mut drain_rx = stop.clone();
    let drain = async move { drained(&mut drain_rx).await };
    tokio::pin!(drain);
    loop {
        let next = next_request(&shared, &mut io, &mut buf, drain.as_mut(), &mut timer).await;
        let plain = match next {
            Next::Plain(p) => p,
            Next::Close => return,
            Next::Hyper => break,
        };
        match answer(&shared, &slot, &mut io, &mut buf, &mut out, plain, &stop).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
    let io = Prefixed { pre: buf.freeze(), io };
    serve_hyper(shared, http, stop, io, slot).await
}

/// What a connection does next.
enum Next {
    /// Answer this request here.
    Plain(Plain),
    /// Hand the connection to hyper.
    Hyper,
    /// Close it.
    Close,
}

/// A plain request whose head is at the start of the connection's buffer.
pub(super) struct Plain {
    /// Bytes of the head.
    pub(super) head_len: usize,
    /// Bytes of the body after it.
    pub(super) body_len: usize,
    method: Method,
    /// Whether it asks for a health endpoint (`Some(ready)`) rather than the function.
    pub(super) health: Option<bool>,
    /// The client asked for the connection to close after this request.
    pub(super) close: bool,
    /// The upstream request: its request line and headers, without the empty line.
    pub(super) up_head: BytesMut,
    /// The request's URI, when requests are logged.
    uri: Option<http::Uri>,
}

/// What [`parse`] made of the buffer.
pub(super) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// Not a plain request.
    Hyper,
    /// A plain request.
    Plain(Plain),
}

/// Whether `name` is one of the hop-by-hop headers, in any case.
fn is_hop_by_hop_name(name: &[u8]) -> bool {
    faas_core::instance::HOP_BY_HOP.iter().any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// A `Content-Length` value: digits only (optional whitespace around them).
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Reads a request head from the start of `buf`, deciding whether it is plain; the URI is
/// kept when requests are logged.
pub(super) fn parse(log_requests: bool, up: &Upstream, buf: &[u8]) -> Parsed {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parsed::Partial,
        _ => return Parsed::Hyper,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Hyper;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::Hyper };
    if method == Method::CONNECT
        || !path.starts_with('/')
        || http::uri::PathAndQuery::try_from(path).is_err()
    {
        return Parsed::Hyper;
    }
    let health = health_route(path.split('?').next().unwrap_or(path));
    let mut up_head = BytesMut::with_capacity(head_len + up.prefix.len() + 64);
    push_request_line(&mut up_head, up, method.as_str(), path);
    let (mut length, mut close, mut host) = (None, false, false);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match parse_length(h.value) {
                Some(n) if length.is_none() && n <= BUFFER_BODY_UP_TO => length = Some(n),
                _ => return Parsed::Hyper,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in h.value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Hyper;
                }
            }
            continue;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::Hyper;
        } else if is_hop_by_hop_name(name) {
            continue;
        } else if name.eq_ignore_ascii_case(b"host") {
            host = true;
        }
        push_header(&mut up_head, name, h.value);
    }
    if !host {
        push_header(&mut up_head, b"host", up.authority.as_bytes());
    }
    let uri = if log_requests { http::Uri::try_from(path).ok() } else { None };
    Parsed::Plain(Plain {
        head_len,
        // At most BUFFER_BODY_UP_TO.
        body_len: length.unwrap_or(0) as usize,
        method,
        health,
        close,
        up_head,
        uri,
    })
}

/// Waits for the next request head on the connection (at most `read_timeout` from now),
/// closing an idle connection when the watchdog drains.
async fn next_request(
    shared: &Shared,
    io: &mut tokio::net::TcpStream,
    buf: &mut BytesMut,
    mut drain: Pin<&mut impl Future<Output = ()>>,
    timer: &mut Pin<Box<tokio::time::Sleep>>,
) -> Next {
    let Some(up) = shared.upstream.as_ref() else { return Next::Hyper };
    let limit = shared.cfg.read_timeout;
    if !limit.is_zero() {
        timer.as_mut().reset(Instant::now() + limit);
    }
    loop {
        if !buf.is_empty() {
            match parse(shared.cfg.log_requests, up, buf) {
                Parsed::Partial => {}
                Parsed::Hyper => return Next::Hyper,
                Parsed::Plain(p) => return Next::Plain(p),
            }
        }
        let idle = buf.is_empty();
        buf.reserve(READ_CHUNK);
        let read = tokio::select! {
            biased;
            r = io.read_buf(buf) => r,
            // Once complete it is not polled again: the connection closes.
            _ = drain.as_mut(), if idle => return Next::Close,
            _ = timer.as_mut(), if !limit.is_zero() => {
                if !idle {
                    // What hyper answers a head that took too long.
                    let _ = io
                        .write_all(
                            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\
                              connection: close\r\n\r\n",
                        )
                        .await;
                }
                return Next::Close;
            }
        };
        match read {
            Ok(0) | Err(_) => return Next::Close,
            Ok(_) => {}
        }
    }
}

/// Reads the body of `p`, answers it and writes the answer; whether the connection can
/// serve another request.
async fn answer(
    shared: &Arc<Shared>,
    slot: &ConnSlot,
    io: &mut tokio::net::TcpStream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    p: Plain,
    stop: &watch::Receiver<bool>,
) -> std::io::Result<bool> {
    let Plain { head_len, body_len, method, health, close, mut up_head, uri } = p;
    let started = uri.is_some().then(Instant::now);
    let deadline = request_deadline(shared);
    let need = head_len + body_len;
    if buf.len() < need {
        buf.reserve(need - buf.len());
        let fill = async {
            while buf.len() < need {
                if io.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Ok::<_, std::io::Error>(())
        };
        let filled = match deadline {
            Some((at, _, _)) => tokio::time::timeout_at(at, fill).await.ok(),
            None => Some(fill.await),
        };
        match filled {
            Some(r) => r?,
            None => {
                let (_, d, name) = deadline.expect("timed out, so set");
                let resp = timeout_response(name, d);
                write_response(io, out, resp, false, false).await?;
                return Ok(false);
            }
        }
    }
    let request = buf.split_to(need);
    let head_request = method == Method::HEAD;
    let mut _guard = None;
    let resp = match health {
        Some(ready) => super::health(shared, ready),
        None => match admit(shared) {
            Err(too_many) => *too_many,
            Ok(guard) => {
                _guard = Some(guard);
                up_head.extend_from_slice(b"\r\n");
                up_head.extend_from_slice(&request[head_len..]);
                drop(request);
                let req = UpRequest {
                    head: up_head,
                    stream: None,
                    idempotent: is_idempotent(&method),
                    head_request,
                };
                let resp = proxy_at(shared, Outgoing::Ready(req), slot, deadline).await;
                if let (Some(uri), Some(t0)) = (&uri, started) {
                    let len = http_body::Body::size_hint(resp.body()).exact();
                    log(request_line(&method, uri, resp.status(), len, t0.elapsed()));
                }
                resp
            }
        },
    };
    let keep = !close && !*stop.borrow();
    write_response(io, out, resp, head_request, keep).await?;
    Ok(keep)
}

/// Appends a `date` header with the current time, formatted at most once a second per
/// thread.
fn push_date(out: &mut BytesMut) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        push_header(out, b"date", d.1.as_bytes());
    });
}

/// Writes a response: the head, then the body as it comes (with its length when known,
/// chunked otherwise), gathering what is ready into as few writes as it can. `keep` false
/// adds `connection: close`.
async fn write_response(
    io: &mut tokio::net::TcpStream,
    out: &mut BytesMut,
    resp: Response<Body>,
    head_request: bool,
    keep: bool,
) -> std::io::Result<()> {
    use futures::FutureExt as _;
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // A response to HEAD, and a 304, keep the length the upstream gave; 1xx and 204 have
    // none.
    let as_given = head_request || status == StatusCode::NOT_MODIFIED;
    let no_body = as_given || status.is_informational() || status == StatusCode::NO_CONTENT;
    let mut dated = false;
    for (name, value) in &parts.headers {
        if *name == header::TRANSFER_ENCODING || (*name == header::CONTENT_LENGTH && !as_given) {
            continue;
        }
        dated |= *name == header::DATE;
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        push_date(out);
    }
    let chunked = match http_body::Body::size_hint(&body).exact() {
        _ if no_body => false,
        Some(n) => {
            use std::fmt::Write as _;
            let _ = write!(out, "content-length: {n}\r\n");
            false
        }
        None => {
            push_header(out, b"transfer-encoding", b"chunked");
            true
        }
    };
    if !keep {
        push_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !no_body {
        loop {
            // The frames that are ready now go into the same write as the head.
            let frame = match body.frame().now_or_never() {
                Some(f) => f,
                None => {
                    io.write_all(out).await?;
                    out.clear();
                    body.frame().await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) if !d.is_empty() => d,
                    _ => continue,
                },
            };
            if chunked {
                use std::fmt::Write as _;
                let _ = write!(out, "{:x}\r\n", data.len());
            }
            if data.len() >= WRITE_CHUNK {
                io.write_all(out).await?;
                out.clear();
                io.write_all(&data).await?;
            } else {
                out.extend_from_slice(&data);
            }
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
            if out.len() >= WRITE_CHUNK {
                io.write_all(out).await?;
                out.clear();
            }
        }
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// A connection handed to hyper: the bytes already read come first.
struct Prefixed {
    pre: Bytes,
    io: tokio::net::TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pre.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.pre.len().min(buf.remaining());
        buf.put_slice(&self.pre.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

//! [`InstanceClient`]: the pooled HTTP/1.1 client every backend forwards invocations with.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{check_watchdog_error, transport_error, upstream_request, HEALTH_PATH};
use crate::body::Body;
use crate::error::{Error, Result};
use crate::function::Response;
use crate::invocation::{FunctionRef, Invocation};

/// Where one call goes: an instance's base URL, and the names its errors give.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Scheme, authority and an optional path prefix (`http://127.0.0.1:8080`); the
    /// invocation's path and query are appended (see [`super::upstream_request`]).
    pub base: &'a str,
    /// The function, for error messages.
    pub function: &'a FunctionRef,
    /// The instance, for error messages.
    pub instance: &'a str,
    /// How long to wait for the response head; `None`: no limit of the client's own.
    pub timeout: Option<CallTimeout<'a>>,
}

/// A call's timeout: after `after` plus `grace`, the call fails with a timeout error
/// ([`Error::timeout`]) reading `function NAME.NAMESPACE {name} timeout of {after} exceeded`.
/// The grace lets a watchdog that enforces `after` itself
/// answer first with its own, more precise error.
#[derive(Debug, Clone, Copy)]
pub struct CallTimeout<'a> {
    /// Which timeout it is, in the error: `exec` (the function's own), `invoke` (the
    /// backend's)...
    pub name: &'a str,
    /// The timeout.
    pub after: Duration,
    /// Extra time granted before the client gives up.
    pub grace: Duration,
}

/// A failed call: the mapped [`Error`], or a transport failure that the backend may first
/// check against the instance's liveness ([`CallError::into_error`]).
#[derive(Debug)]
pub struct CallError {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Mapped(Error),
    Transport { error: Error, connect: bool, crashed: Error },
}

impl CallError {
    /// Whether the connection failed (refused, reset, closed mid-answer): the backend may
    /// check whether the instance exited.
    pub fn is_transport(&self) -> bool {
        matches!(self.kind, Kind::Transport { .. })
    }

    /// Whether nothing was sent because the connection could not be made.
    pub fn is_connect(&self) -> bool {
        matches!(self.kind, Kind::Transport { connect: true, .. })
    }

    /// The error, given whether the instance is known to have `exited` during the call
    /// (see [`super::transport_error`]).
    pub fn into_error(self, exited: bool) -> Error {
        match self.kind {
            Kind::Mapped(e) => e,
            Kind::Transport { crashed, .. } if exited => crashed,
            Kind::Transport { error, .. } => error,
        }
    }
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        CallError { kind: Kind::Mapped(e) }
    }
}

impl From<CallError> for Error {
    /// The error for an instance not known to have exited.
    fn from(e: CallError) -> Self {
        e.into_error(false)
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Mapped(e) | Kind::Transport { error: e, .. } => e.fmt(f),
        }
    }
}

impl std::error::Error for CallError {}

/// How long an idle keep-alive connection to an instance is reused by default: 1 s, below the
/// idle timeouts of the servers at the other end (our watchdog closes an idle connection after
/// its `read_timeout`, 10 s by default; gunicorn after 2 s, Node.js and uvicorn after 5 s), so
/// that no call goes out on a connection its server is closing at that moment, where a call
/// that was already sent cannot be sent again. A busy function's connections are never idle
/// that long; a function called less often than once a second opens a connection per call.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Configures an [`InstanceClient`].
#[derive(Debug, Clone)]
pub struct InstanceClientBuilder {
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    connect_timeout: Option<Duration>,
}

impl Default for InstanceClientBuilder {
    fn default() -> Self {
        InstanceClientBuilder {
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle_per_host: 256,
            connect_timeout: None,
        }
    }
}

impl InstanceClientBuilder {
    /// How long an idle keep-alive connection stays in the pool (default
    /// [`DEFAULT_POOL_IDLE_TIMEOUT`]).
    pub fn pool_idle_timeout(mut self, d: Duration) -> Self {
        self.pool_idle_timeout = d;
        self
    }

    /// How many idle connections to one instance the pool keeps (default 256).
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    /// A bound on making a connection (default none: the call's timeout bounds it).
    pub fn connect_timeout(mut self, d: Option<Duration>) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The client.
    pub fn build(self) -> InstanceClient {
        let mut connector = HttpConnector::new();
        // Requests and answers are small and latency-bound.
        connector.set_nodelay(true);
        connector.set_connect_timeout(self.connect_timeout);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .build(connector);
        InstanceClient { http }
    }
}

/// A pooled keep-alive HTTP/1.1 client to function instances (and gateways): builds the
/// upstream request from an [`Invocation`], bounds the call, and maps a watchdog's error
/// answers and transport failures to [`Error`]s, as the [module docs](super) say. Cheap to
/// clone; clones share the pool.
#[derive(Clone, Debug)]
pub struct InstanceClient {
    http: Client<HttpConnector, Body>,
}

impl Default for InstanceClient {
    fn default() -> Self {
        InstanceClient::builder().build()
    }
}

impl InstanceClient {
    /// A client with the defaults of [`InstanceClientBuilder`].
    pub fn new() -> Self {
        InstanceClient::default()
    }

    /// A builder.
    pub fn builder() -> InstanceClientBuilder {
        InstanceClientBuilder::default()
    }

    /// Forwards `invocation` to `target`. The answer's body streams from the instance and
    /// keeps `hold` alive until it is consumed or dropped (a backend's count of streaming
    /// answers; `()` for none).
    pub async fn forward<G>(
        &self,
        invocation: Invocation,
        target: &Target<'_>,
        hold: G,
    ) -> Result<Response, CallError>
    where
        G: Send + Sync + 'static,
    {
        let req = upstream_request(invocation, target.base)?;
        let fut = self.http.request(req);
        let result = match target.timeout {
            Some(t) => match tokio::time::timeout(t.after + t.grace, fut).await {
                Ok(r) => r,
                Err(_) => {
                    let which = format_args!("function {} {}", target.function, t.name);
                    return Err(Error::timeout(which, t.after).into());
                }
            },
            None => fut.await,
        };
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                let connect = e.is_connect();
                let (function, instance) = (target.function, target.instance);
                return Err(CallError {
                    kind: Kind::Transport {
                        error: transport_error(&e, connect, false, function, instance),
                        crashed: transport_error(&e, connect, true, function, instance),
                        connect,
                    },
                });
            }
        };
        let (parts, incoming) = resp.into_parts();
        let body = Body::new(incoming.map_frame(move |frame| {
            // Moved in, so it lives as long as the body.
            let _ = &hold;
            frame
        }));
        let resp = Response::from_parts(parts, body);
        Ok(check_watchdog_error(resp, target.function, target.instance).await?)
    }

    /// Whether the watchdog at `base` answers `GET /_/health` with 200 within `timeout`.
    pub async fn healthy(&self, base: &str, timeout: Duration) -> bool {
        let Ok(uri) = format!("{}{HEALTH_PATH}", base.trim_end_matches('/')).parse::<http::Uri>()
        else {
            return false;
        };
        let mut req = http::Request::new(Body::empty());
        *req.uri_mut() = uri;
        match tokio::time::timeout(timeout, self.http.request(req)).await {
            Ok(Ok(resp)) => {
                let ok = resp.status() == http::StatusCode::OK;
                // Read to the end, so the connection goes back to the pool.
                let _ = tokio::time::timeout(timeout, resp.into_body().collect()).await;
                ok
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::error::DeveloperErrorKind;
    use crate::instance::{WatchdogError, WATCHDOG_ERROR_HEADER};

    /// An HTTP/1.1 server on a real socket that answers each request with `answer(request
    /// head)`; `None` closes the connection unanswered.
    async fn serve(answer: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> String {
        serve_counting(answer).await.0
    }

    /// [`serve`], and the number of connections it accepted.
    async fn serve_counting(
        answer: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(answer);
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = sock.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        match answer(&head) {
                            Some(resp) => {
                                if sock.write_all(resp.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            None => return,
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), conns)
    }

    fn ok(body: &str, extra: &str) -> String {
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra}\r\n{body}", body.len())
    }

    fn target<'a>(base: &'a str, f: &'a FunctionRef) -> Target<'a> {
        Target { base, function: f, instance: "f-1", timeout: None }
    }

    async fn text(resp: Response) -> String {
        let b = resp.into_body().collect_limited(1 << 20).await.unwrap();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[tokio::test]
    async fn forwards_headers_once_over_a_kept_alive_connection() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let base = serve(move |head| {
            s.lock().unwrap().push(head.to_ascii_lowercase());
            Some(ok("hi", ""))
        })
        .await;
        let client = InstanceClient::new();
        let f = FunctionRef::default_ns("f");
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut inv = Invocation::get("f", "/p?q=1");
            let h = inv.request.headers_mut();
            h.insert("connection", "x-secret".parse().unwrap());
            h.insert("x-secret", "1".parse().unwrap());
            h.insert("te", "trailers".parse().unwrap());
            h.insert("host", "gw.example".parse().unwrap());
            h.insert("x-call-id", "stale".parse().unwrap());
            ids.push(inv.id.to_string());
            let resp = client.forward(inv, &target(&base, &f), ()).await.unwrap();
            assert_eq!(text(resp).await, "hi");
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "both calls served by one connection");
        for (head, id) in seen.iter().zip(&ids) {
            assert!(head.starts_with("get /p?q=1 http/1.1\r\n"), "{head}");
            assert!(head.contains(&format!("x-call-id: {id}")), "{head}");
            assert!(head.contains("x-forwarded-host: gw.example"), "{head}");
            assert!(!head.contains("x-secret") && !head.contains("\r\nte:"), "{head}");
            assert!(!head.contains("stale"), "{head}");
        }
    }

    #[tokio::test]
    async fn idle_connections_are_reused_only_within_the_pool_idle_timeout() {
        let (base, conns) = serve_counting(|_| Some(ok("hi", ""))).await;
        let f = FunctionRef::default_ns("f");
        let client =
            InstanceClient::builder().pool_idle_timeout(Duration::from_millis(500)).build();
        let call = || async {
            let resp = client.forward(Invocation::get("f", "/"), &target(&base, &f), ()).await;
            assert_eq!(text(resp.unwrap()).await, "hi");
        };
        call().await;
        call().await;
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1, "reused at once");
        // The connection's idle time is what is under test.
        tokio::time::sleep(Duration::from_millis(700)).await;
        call().await;
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2, "not reused when idle");
    }

    #[tokio::test]
    async fn watchdog_error_answers_become_errors() {
        let base = serve(|head| {
            let reason = if head.contains("/slow") { "exec_timeout" } else { "inflight" };
            Some(ok("too slow", &format!("{WATCHDOG_ERROR_HEADER}: {reason}\r\n")))
        })
        .await;
        let client = InstanceClient::new();
        let f = FunctionRef::default_ns("f");
        let e: Error = client
            .forward(Invocation::get("f", "/slow"), &target(&base, &f), ())
            .await
            .unwrap_err()
            .into();
        assert!(e.is_timeout(), "{e}");
        assert!(e.to_string().contains("too slow"), "{e}");
        let e: Error = client
            .forward(Invocation::get("f", "/"), &target(&base, &f), ())
            .await
            .unwrap_err()
            .into();
        assert!(matches!(e, Error::Overloaded { .. }), "{e} ({})", WatchdogError::Inflight);
    }

    #[tokio::test]
    async fn transport_failures() {
        let f = FunctionRef::default_ns("f");
        let client = InstanceClient::new();
        // Nothing listens: a refused connection.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = format!("http://{}", free.local_addr().unwrap());
        drop(free);
        let e =
            client.forward(Invocation::get("f", "/"), &target(&closed, &f), ()).await.unwrap_err();
        assert!(e.is_transport() && e.is_connect());
        assert!(matches!(e.into_error(false), Error::Unavailable { .. }));
        // The connection closes after the request: a crash, whether or not the backend saw
        // the instance exit.
        let base = serve(|_| None).await;
        let e =
            client.forward(Invocation::get("f", "/"), &target(&base, &f), ()).await.unwrap_err();
        assert!(e.is_transport() && !e.is_connect());
        let msg = e.to_string();
        assert!(msg.contains("broke the connection"), "{msg}");
        let e = e.into_error(true);
        assert!(matches!(e, Error::Developer { kind: DeveloperErrorKind::Crash, .. }), "{e}");
        assert!(e.to_string().contains("exited during the invocation"), "{e}");
    }

    #[tokio::test]
    async fn timeout_names_the_timeout() {
        // Accepts and reads, never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            while sock.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let f = FunctionRef::default_ns("f");
        let mut t = target(&base, &f);
        t.timeout = Some(CallTimeout {
            name: "exec",
            after: Duration::from_millis(50),
            grace: Duration::from_millis(10),
        });
        let started = std::time::Instant::now();
        let e: Error = InstanceClient::new()
            .forward(Invocation::get("f", "/"), &t, ())
            .await
            .unwrap_err()
            .into();
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert!(e.is_timeout(), "{e}");
        assert!(e.to_string().contains(&format!("function {f} exec timeout of 50ms")), "{e}");
    }

    #[tokio::test]
    async fn hold_lives_as_long_as_the_body() {
        struct Count(Arc<AtomicUsize>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let base = serve(|_| Some(ok("body", ""))).await;
        let f = FunctionRef::default_ns("f");
        let dropped = Arc::new(AtomicUsize::new(0));
        let resp = InstanceClient::new()
            .forward(
                Invocation::post("f", Bytes::from_static(b"x")),
                &target(&base, &f),
                Count(dropped.clone()),
            )
            .await
            .unwrap();
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        assert_eq!(text(resp).await, "body");
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn health() {
        let base = serve(|head| {
            Some(if head.starts_with("GET /_/health ") {
                ok("ok", "")
            } else {
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".into()
            })
        })
        .await;
        let client = InstanceClient::new();
        assert!(client.healthy(&base, Duration::from_secs(5)).await);
        assert!(!client.healthy(&format!("{base}/other"), Duration::from_secs(5)).await);
        assert!(!client.healthy("not a url", Duration::from_secs(5)).await);
    }
}

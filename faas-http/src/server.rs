//! Serving a gateway service with hyper 1 over TCP.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faas_core::body::Guarded;
use faas_core::runtime::RuntimeThreads;
use faas_core::{Body, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

tokio::task_local! {
    /// The client address of the connection the current task serves.
    static PEER: SocketAddr;
}

/// The address of the client a request came from, for services that want it (failed
/// logins are throttled and logged by it). A host application serving the gateway its
/// own way puts it in the request's extensions; [`serve`] and [`serve_with`] instead make
/// it available through [`peer_addr`], which costs nothing per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// While a request served by [`serve`] or [`serve_with`] is being handled on its
/// connection's task (in a service's `call` and the futures the connection polls), the
/// client's address; `None` elsewhere.
pub fn peer_addr() -> Option<SocketAddr> {
    PEER.try_with(|a| *a).ok()
}

/// The client address of `req`: its [`ClientAddr`] extension, else [`peer_addr`].
pub fn client_addr(req: &Request) -> Option<SocketAddr> {
    req.extensions().get::<ClientAddr>().map(|c| c.0).or_else(peer_addr)
}

/// How [`serve_with`] treats connections.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeConfig {
    /// A connection that has had no request in flight and started no new one for this long
    /// is closed: an idle keep-alive connection, or a client sending its headers too slowly
    /// (slowloris). Checked once per period per connection, so such a connection is closed
    /// between one and two periods after it went quiet. Default 30 s (hyper's header read
    /// timeout, which this replaces without a timer per request).
    pub idle_timeout: Duration,
    /// How long open connections may take to finish after shutdown starts. Default 10 s.
    pub shutdown_grace: Duration,
    /// How many threads serve connections. Default 1: every connection is served on the
    /// runtime `serve_with` runs on. With more, `threads - 1` threads are started, each with
    /// its own single-threaded runtime ([`faas_core::runtime::RuntimeThreads`]), and accepted
    /// connections are handed out round-robin to them and the calling runtime; a connection
    /// stays on its thread. Run `serve_with` itself on a single-threaded runtime and set this
    /// to the number of CPUs for one runtime per CPU with no work stealing between them.
    pub threads: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            threads: 1,
        }
    }
}

impl ServeConfig {
    /// Sets [`ServeConfig::idle_timeout`].
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Sets [`ServeConfig::shutdown_grace`].
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// Sets [`ServeConfig::threads`] (0 counts as 1).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }
}

/// Serves `service` on `listener` (HTTP/1.1, keep-alive) until `shutdown` completes; then
/// stops accepting and lets open connections finish their current request. Same as
/// [`serve_with`] with the default [`ServeConfig`].
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    serve_with(listener, service, shutdown, ServeConfig::default()).await
}

/// Per connection: requests started, and requests whose response is not fully sent yet.
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicU64,
}

/// Marks one response as in flight until its body is sent (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the connection has been quiet (no request started, none in flight) for a
/// whole period of `idle`.
async fn quiet(activity: &Activity, idle: Duration) {
    let mut seen = activity.started.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(idle).await;
        let now = activity.started.load(Ordering::Relaxed);
        if now == seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
            return;
        }
        seen = now;
    }
}

/// [`serve`] with the given connection settings.
pub async fn serve_with<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
    config: ServeConfig,
) -> std::io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let workers = RuntimeThreads::start(config.threads.saturating_sub(1), "faas-http")?;
    let mut next = 0usize;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (svc, watcher, idle) = (service.clone(), graceful.watcher(), config.idle_timeout);
        next = (next + 1) % (workers.len() + 1);
        match next.checked_sub(1) {
            None => {
                tokio::spawn(PEER.scope(peer, serve_conn(stream, svc, watcher, idle)));
            }
            // Moved to that thread's runtime: deregistered here, registered there.
            Some(i) => match stream.into_std() {
                Ok(std) => {
                    workers.handle(i).spawn(async move {
                        match tokio::net::TcpStream::from_std(std) {
                            Ok(stream) => {
                                PEER.scope(peer, serve_conn(stream, svc, watcher, idle)).await
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot move a connection"),
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot move a connection"),
            },
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(config.shutdown_grace, graceful.shutdown()).await;
    workers.stop().await;
    Ok(())
}

/// One connection, from its first request until it closes or goes quiet, on the runtime it
/// was spawned on.
async fn serve_conn<S>(
    stream: tokio::net::TcpStream,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
    idle: Duration,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let conn_activity = activity.clone();
    let hyper_svc = ConnService { service: RefCell::new(service), activity };
    // No hyper timer: the quiet-connection check below replaces its per-request header read
    // timeout with one timer per connection.
    // One buffer per response rather than a vectored write of head and body: a single
    // small copy, and one iovec for the kernel.
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .writev(false)
        .serve_connection(TokioIo::new(stream), hyper_svc);
    tokio::select! {
        r = watcher.watch(conn) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection closed with error");
            }
        }
        _ = quiet(&conn_activity, idle) => {
            tracing::debug!("closing a quiet connection");
        }
    }
}

/// The hyper side of one connection: calls the connection's own copy of the service (no
/// clone per request while it is ready) and marks each response in flight until sent.
struct ConnService<S> {
    /// Borrowed only inside `call`, which hyper never calls reentrantly.
    service: RefCell<S>,
    activity: Arc<Activity>,
}

impl<S> hyper::service::Service<http::Request<Incoming>> for ConnService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Guarded<Option<InFlight>>>;
    type Error = Infallible;
    type Future = Answer<futures::future::Either<S::Future, tower::util::Oneshot<S, Request>>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        self.activity.started.fetch_add(1, Ordering::Relaxed);
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let mark = InFlight(self.activity.clone());
        // A request without a body (a GET, say) needs no boxed stream.
        let req =
            req.map(
                |b| {
                    if http_body::Body::is_end_stream(&b) {
                        Body::empty()
                    } else {
                        Body::new(b)
                    }
                },
            );
        let mut service = self.service.borrow_mut();
        // Ready now (the gateway's services always are): call this copy. Otherwise a clone
        // waits for readiness with the task's real waker.
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        let fut = match service.poll_ready(&mut cx) {
            std::task::Poll::Ready(Ok(())) => futures::future::Either::Left(service.call(req)),
            std::task::Poll::Ready(Err(never)) => match never {},
            std::task::Poll::Pending => {
                futures::future::Either::Right(service.clone().oneshot(req))
            }
        };
        Answer { fut, mark: Some(mark) }
    }
}

pin_project_lite::pin_project! {
    /// A response future whose body, once answered, keeps the in-flight mark until sent.
    struct Answer<F> {
        #[pin]
        fut: F,
        mark: Option<InFlight>,
    }
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<http::Response<Guarded<Option<InFlight>>>, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.fut.poll(cx))?;
        let mark = this.mark.take();
        std::task::Poll::Ready(Ok(resp.map(|body| Guarded::new(body, mark))))
    }
}

//! Serving a gateway service with hyper 1 over TCP.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faas_core::body::Guarded;
use faas_core::{Body, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

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
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
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
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
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
        let svc = service.clone();
        let activity = Arc::new(Activity::default());
        let conn_activity = activity.clone();
        let hyper_svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let svc = svc.clone();
            activity.started.fetch_add(1, Ordering::Relaxed);
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
            let mark = InFlight(activity.clone());
            async move {
                // A request without a body (a GET, say) needs no boxed stream.
                let req = req.map(|b| {
                    if http_body::Body::is_end_stream(&b) {
                        Body::empty()
                    } else {
                        Body::new(b)
                    }
                });
                let resp = svc.oneshot(req).await?;
                Ok::<_, Infallible>(resp.map(|body| Guarded::new(body, mark)))
            }
        });
        // No hyper timer: the quiet-connection check below replaces its per-request header
        // read timeout with one timer per connection.
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), hyper_svc);
        let conn = graceful.watch(conn);
        let idle = config.idle_timeout;
        tokio::spawn(async move {
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection closed with error");
                    }
                }
                _ = quiet(&conn_activity, idle) => {
                    tracing::debug!("closing a quiet connection");
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(config.shutdown_grace, graceful.shutdown()).await;
    Ok(())
}

//! Forwarding an invocation to a replica's watchdog over HTTP/1.1.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use faas_core::{
    Body, DeveloperErrorKind, Error, Invocation, InvocationMeta, Response, Result, StartKind,
};
use http_body::{Frame, SizeHint};

use crate::inner::{Inner, DEFAULT_TIMEOUT};
use crate::state::{FunctionState, Replica};

/// Counts one invocation in flight on a replica until dropped (when the response body is
/// done with), then wakes waiters for capacity.
pub(crate) struct InFlight {
    replica: Arc<Replica>,
    function: Arc<FunctionState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.replica.touch();
        self.replica.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.function.changed.notify_waiters();
    }
}

/// Counts a response body streaming from a replica until dropped: the replica is not paused
/// or removed meanwhile (its routing slot is already free).
struct Streaming {
    replica: Arc<Replica>,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.replica.touch();
        self.replica.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps the replica marked as streaming until consumed or dropped.
struct Guarded {
    inner: hyper::body::Incoming,
    _guard: Streaming,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The header the faas-rs watchdog sets on answers it produces itself (not the function).
const WATCHDOG_ERROR: &str = "x-watchdog-error";

/// Maps a watchdog's own error answer to the error taxonomy (as the process backend does):
/// timeouts and crashes are developer errors, `inflight` is overload.
async fn watchdog_error(
    reason: &str,
    resp: Response,
    f: &FunctionState,
    instance: &str,
) -> Result<Response> {
    let kind = match reason {
        "exec_timeout" | "write_timeout" => DeveloperErrorKind::Timeout,
        "upstream" | "exit" | "wait" => DeveloperErrorKind::Crash,
        "spawn" => DeveloperErrorKind::Init,
        "inflight" => {
            return Err(Error::Overloaded {
                message: format!("instance {instance} of {} is at its max_inflight", f.fref),
                retry_after: Some(Duration::from_secs(1)),
            })
        }
        _ => return Ok(resp),
    };
    let body = resp.into_body().collect_limited(64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let fref = &f.fref;
    Err(Error::developer(
        kind,
        match kind {
            DeveloperErrorKind::Timeout => format!("function {fref} exec timeout: {text}"),
            DeveloperErrorKind::Crash => {
                format!("function {fref} crashed (instance {instance}): {text}")
            }
            _ => format!("function {fref} could not start (instance {instance}): {text}"),
        },
    ))
}

impl Inner {
    /// Waits for a replica with capacity, scaling from zero when there is none; returns it
    /// counted in flight, and whether this invocation had to wait for a start. A wait for a
    /// start ends at `deadline`, a wait behind busy replicas at `busy_deadline` if sooner.
    async fn acquire(
        self: &Arc<Self>,
        f: &Arc<FunctionState>,
        deadline: Instant,
        busy_deadline: Instant,
    ) -> Result<(Arc<Replica>, bool)> {
        let seq = f.start_error_seq();
        let mut waited = false;
        loop {
            let notified = f.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if f.removed.load(Ordering::SeqCst) {
                return Err(Error::function_not_found(f.fref.to_string()));
            }
            let info = f.spec();
            if let Some(r) = f.route(&*info.scheduler, info.spec.max_concurrency) {
                return Ok((r, waited));
            }
            let live = f.live().len();
            if live == 0 {
                waited = true;
                let _ = f.desired.compare_exchange(
                    0,
                    info.min_replicas.max(1),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                if let Some(r) = self.take_prewarm(f, &info) {
                    f.push(r);
                    continue;
                }
                if f.starting.load(Ordering::SeqCst) == 0 {
                    self.spawn_reconcile(Arc::clone(f));
                }
            }
            if let Some(e) = f.start_error_since(seq) {
                return Err(e);
            }
            let until = if live > 0 { deadline.min(busy_deadline) } else { deadline };
            if tokio::time::timeout_at(until.into(), notified).await.is_err() {
                return Err(if live > 0 {
                    Error::Overloaded {
                        message: format!(
                            "every instance of {} is at its concurrency limit",
                            f.fref
                        ),
                        retry_after: Some(Duration::from_secs(1)),
                    }
                } else {
                    Error::unavailable(format!(
                        "no instance of {} became ready within {}",
                        f.fref,
                        faas_core::util::format_duration(self.settings.start_timeout)
                    ))
                });
            }
        }
    }

    /// Invokes a function: route (or scale from zero), resume if paused, forward.
    pub(crate) async fn invoke(self: &Arc<Self>, inv: Invocation) -> Result<Response> {
        let t0 = Instant::now();
        let f = self.function(&inv.function)?;
        f.invocations.fetch_add(1, Ordering::Relaxed);
        let deadline = t0 + self.settings.start_timeout + Duration::from_secs(5);
        // The caller's wait budget bounds a wait behind busy replicas (a 429, not the
        // caller's own timeout).
        let busy_deadline =
            faas_core::invocation::WaitBudget::of(&inv.request).map_or(deadline, |b| t0 + b);
        let (replica, waited) = self.acquire(&f, deadline, busy_deadline).await?;
        let guard = InFlight { replica: Arc::clone(&replica), function: Arc::clone(&f) };
        // A paused container's port accepts and then hangs: unpause before forwarding.
        let resumed = self.ensure_running(&replica).await?;
        let (start, init_time) = if waited && replica.origin != StartKind::Warm {
            (replica.origin, Some(replica.init_time))
        } else if resumed {
            (StartKind::Resumed, None)
        } else {
            (StartKind::Warm, None)
        };
        let wait_time = t0.elapsed();
        let timeout = f.spec().spec.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let id = inv.id.clone();
        let (mut parts, body) = inv.request.into_parts();
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let pq = if pq.starts_with('/') { pq } else { "/" };
        parts.uri = format!("http://127.0.0.1:{}{pq}", replica.port)
            .parse()
            .map_err(|e| Error::invalid("path", format!("{e}")))?;
        parts.version = http::Version::HTTP_11;
        parts.headers.remove(http::header::HOST);
        parts.headers.remove(http::header::CONNECTION);
        if !parts.headers.contains_key("x-call-id") {
            if let Ok(v) = http::HeaderValue::from_str(id.as_str()) {
                parts.headers.insert("x-call-id", v);
            }
        }
        let req = http::Request::from_parts(parts, body);
        let resp = match tokio::time::timeout(timeout, self.http.request(req)).await {
            Err(_) => return Err(Error::timeout("function", timeout)),
            Ok(Err(e)) => {
                drop(guard);
                let died = self.check_replica(&f, &replica).await;
                let what = if died { "died during the request" } else { "broke the connection" };
                return Err(Error::developer(
                    DeveloperErrorKind::Crash,
                    format!("instance {} of {} {what}: {e}", replica.name, f.fref),
                ));
            }
            Ok(Ok(resp)) => resp,
        };
        // The function has answered: its routing slot is free (as in the other backends);
        // the body keeps the replica from being paused or removed while it streams.
        replica.streams.fetch_add(1, Ordering::SeqCst);
        drop(guard);
        let streaming = Streaming { replica: Arc::clone(&replica) };
        let (parts, incoming) = resp.into_parts();
        let mut resp = http::Response::from_parts(
            parts,
            Body::new(Guarded { inner: incoming, _guard: streaming }),
        );
        if let Some(reason) = resp.headers().get(WATCHDOG_ERROR).and_then(|v| v.to_str().ok()) {
            let reason = reason.to_string();
            resp = watchdog_error(&reason, resp, &f, &replica.name).await?;
        }
        resp.extensions_mut().insert(InvocationMeta {
            instance: replica.name.clone(),
            start,
            wait_time,
            init_time,
        });
        Ok(resp)
    }
}

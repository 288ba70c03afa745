//! Talking to a function instance over HTTP, written once for every backend that runs
//! instances behind a watchdog (process, Docker, Kubernetes) and for the queue's gateway
//! client.
//!
//! - **The upstream request** ([`upstream_request`]): the invocation's method, its path and
//!   query appended to the instance's base URL, its headers less the hop-by-hop ones
//!   ([`HOP_BY_HOP`], plus any a `Connection` header names), `Host` sent on as
//!   `X-Forwarded-Host`, and `X-Call-Id` set to the invocation's id (the one rule: the id the
//!   caller gave the [`Invocation`] is the id the instance sees).
//! - **The watchdog error protocol** ([`WatchdogError`], [`check_watchdog_error`]): a
//!   watchdog marks the answers it produces itself (not the function's) with the header
//!   [`WATCHDOG_ERROR_HEADER`] naming the reason; each reason maps to one [`Error`] of the
//!   OpenWhisk taxonomy (a timeout or crash is a developer error, `inflight` is overload).
//! - **Transport failures** ([`transport_error`]): an instance that exited during the call
//!   crashed, one that refused the connection is unavailable, one that broke the connection
//!   after the request was sent crashed.
//! - **The instances of a function** ([`InstanceSet`]): routing through the scheduler,
//!   in-flight leases, first-come-first-served waiting for a free or ready instance, and the
//!   idle clock, shared by the backends that run instances.
//! - **The client** (feature `instance-client`): `InstanceClient`, a pooled keep-alive
//!   hyper client applying all of the above with a per-call timeout.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::body::Body;
use crate::error::{DeveloperErrorKind, Error, Result};
use crate::function::Response;
use crate::invocation::{FunctionRef, Invocation};

mod set;
pub use set::{AcquireLimits, InstanceDrain, InstanceKey, InstanceLease, InstanceSet, Shortage};

#[cfg(feature = "instance-client")]
mod client;
#[cfg(feature = "instance-client")]
pub use client::{
    CallError, CallTimeout, InstanceClient, InstanceClientBuilder, Target,
    DEFAULT_POOL_IDLE_TIMEOUT,
};

/// The response header on answers a watchdog produced itself; the value names the reason
/// (see [`WatchdogError`]).
pub const WATCHDOG_ERROR_HEADER: &str = "x-watchdog-error";

/// The path a watchdog answers its health check on (200 once it can serve).
pub const HEALTH_PATH: &str = "/_/health";

/// `X-Call-Id`: the invocation id, as the instance sees it.
pub const X_CALL_ID: HeaderName = HeaderName::from_static("x-call-id");

/// `X-Forwarded-Host`: the `Host` the caller addressed.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The hop-by-hop headers (RFC 9110 section 7.6.1, plus the legacy `Keep-Alive` and
/// `Proxy-Connection`): they concern one connection and are not forwarded. `Host` is not in
/// the list: [`upstream_request`] sends it on as `X-Forwarded-Host`.
pub const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is one of the [`HOP_BY_HOP`] headers.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes the [`HOP_BY_HOP`] headers, and those a `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The common case (a request the gateway has stripped already) costs one scan.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(n);
    }
}

/// Builds the request an instance receives for `invocation`: the URI is `base` (scheme,
/// authority and an optional path prefix, such as `http://127.0.0.1:8080` or
/// `http://gw:8080/function/echo.dev`) followed by the invocation's path and query (a bare
/// `/` is dropped after a path prefix); the headers are those of the module docs; the
/// version is HTTP/1.1.
pub fn upstream_request(invocation: Invocation, base: &str) -> Result<http::Request<Body>> {
    let Invocation { id, function: _, request } = invocation;
    let (mut parts, body) = request.into_parts();
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let base = base.trim_end_matches('/');
    let has_prefix = base.split_once("://").is_some_and(|(_, rest)| rest.contains('/'));
    let url = match pq {
        "/" if has_prefix => base.to_string(),
        pq if pq.starts_with('/') => format!("{base}{pq}"),
        pq => format!("{base}/{pq}"),
    };
    parts.uri = url.parse().map_err(|e| Error::invalid("path", format!("{url:?}: {e}")))?;
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if let Some(host) = headers.remove(header::HOST) {
        if !headers.contains_key(X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
    // The invocation's id is the call id; the gateway has usually set the header to it
    // already, and then nothing is allocated.
    if headers.get(X_CALL_ID).map(HeaderValue::as_bytes) != Some(id.as_str().as_bytes()) {
        match HeaderValue::from_str(id.as_str()) {
            Ok(v) => {
                headers.insert(X_CALL_ID, v);
            }
            Err(_) => {
                headers.remove(X_CALL_ID);
            }
        }
    }
    Ok(http::Request::from_parts(parts, body))
}

/// Why a watchdog answered for the function: the values of [`WATCHDOG_ERROR_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WatchdogError {
    /// `exec_timeout`: the function ran past its exec timeout (developer error, timeout).
    ExecTimeout,
    /// `write_timeout`: the response took longer than the write timeout (developer error,
    /// timeout).
    WriteTimeout,
    /// `upstream`: the function's HTTP server failed or is not there (developer error,
    /// crash).
    Upstream,
    /// `exit`: the function process exited without answering (developer error, crash).
    Exit,
    /// `wait`: waiting for the function process failed (developer error, crash).
    Wait,
    /// `spawn`: the function process could not start (developer error, init).
    Spawn,
    /// `inflight`: the watchdog is at its `max_inflight` (overload, retry after 1 s).
    Inflight,
    /// `action_init`: an OpenWhisk action failed its `/init` (developer error, init); the
    /// text is OpenWhisk's message, used as the error's message unchanged.
    ActionInit,
    /// `action_result`: an OpenWhisk action's `/run` answered an error or no JSON object
    /// (developer error, protocol); the text is OpenWhisk's message, unchanged.
    ActionResult,
    /// `action_crash`: an OpenWhisk runtime exited or broke the connection during an
    /// activation (developer error, crash); the text is OpenWhisk's message, unchanged.
    ActionCrash,
    /// `action_timeout`: an OpenWhisk action ran past its time limit (developer error,
    /// timeout); the text is OpenWhisk's message, unchanged.
    ActionTimeout,
}

impl WatchdogError {
    /// Every reason, for tests and documentation.
    pub const ALL: [WatchdogError; 11] = [
        WatchdogError::ExecTimeout,
        WatchdogError::WriteTimeout,
        WatchdogError::Upstream,
        WatchdogError::Exit,
        WatchdogError::Wait,
        WatchdogError::Spawn,
        WatchdogError::Inflight,
        WatchdogError::ActionInit,
        WatchdogError::ActionResult,
        WatchdogError::ActionCrash,
        WatchdogError::ActionTimeout,
    ];

    /// The reason as the header spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchdogError::ExecTimeout => "exec_timeout",
            WatchdogError::WriteTimeout => "write_timeout",
            WatchdogError::Upstream => "upstream",
            WatchdogError::Exit => "exit",
            WatchdogError::Wait => "wait",
            WatchdogError::Spawn => "spawn",
            WatchdogError::Inflight => "inflight",
            WatchdogError::ActionInit => "action_init",
            WatchdogError::ActionResult => "action_result",
            WatchdogError::ActionCrash => "action_crash",
            WatchdogError::ActionTimeout => "action_timeout",
        }
    }

    /// The reason a header value names, if it is one.
    pub fn parse(value: &str) -> Option<WatchdogError> {
        WatchdogError::ALL.into_iter().find(|r| r.as_str() == value.trim())
    }

    /// The error this reason stands for, with the watchdog's message `text`.
    pub fn into_error(self, text: &str, function: &FunctionRef, instance: &str) -> Error {
        let kind = match self {
            WatchdogError::ExecTimeout | WatchdogError::WriteTimeout => DeveloperErrorKind::Timeout,
            WatchdogError::Upstream | WatchdogError::Exit | WatchdogError::Wait => {
                DeveloperErrorKind::Crash
            }
            WatchdogError::Spawn => DeveloperErrorKind::Init,
            WatchdogError::Inflight => {
                return Error::Overloaded {
                    message: format!("instance {instance} of {function} is at its max_inflight"),
                    retry_after: Some(Duration::from_secs(1)),
                }
            }
            // OpenWhisk's own messages are the activation's error result: kept verbatim.
            WatchdogError::ActionInit => return Error::developer(DeveloperErrorKind::Init, text),
            WatchdogError::ActionResult => {
                return Error::developer(DeveloperErrorKind::Protocol, text)
            }
            WatchdogError::ActionCrash => return Error::developer(DeveloperErrorKind::Crash, text),
            WatchdogError::ActionTimeout => {
                return Error::developer(DeveloperErrorKind::Timeout, text)
            }
        };
        let message = match kind {
            DeveloperErrorKind::Timeout => format!("function {function} exec timeout: {text}"),
            DeveloperErrorKind::Crash => {
                format!("function {function} crashed (instance {instance}): {text}")
            }
            _ => format!("function {function} could not start (instance {instance}): {text}"),
        };
        Error::developer(kind, message)
    }
}

impl std::fmt::Display for WatchdogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of a watchdog's error answer is read into the error message.
const ERROR_TEXT_LIMIT: usize = 64 * 1024;

/// Passes `resp` through, unless the watchdog marked it as its own error answer (see
/// [`WatchdogError`]): then its text becomes the matching [`Error`]. An unknown reason is
/// passed through as the function's answer.
pub async fn check_watchdog_error(
    resp: Response,
    function: &FunctionRef,
    instance: &str,
) -> Result<Response> {
    let Some(reason) = resp
        .headers()
        .get(WATCHDOG_ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(WatchdogError::parse)
    else {
        return Ok(resp);
    };
    let body = resp.into_body().collect_limited(ERROR_TEXT_LIMIT).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    Err(reason.into_error(text.trim(), function, instance))
}

/// The error for a call to an instance that failed below HTTP: the instance `exited` during
/// the call (its backend knows), it refused the `connect`ion (nothing was sent), or it broke
/// the connection after the request was sent.
pub fn transport_error(
    cause: &dyn std::fmt::Display,
    connect: bool,
    exited: bool,
    function: &FunctionRef,
    instance: &str,
) -> Error {
    if exited {
        Error::developer(
            DeveloperErrorKind::Crash,
            format!("instance {instance} of {function} exited during the invocation: {cause}"),
        )
    } else if connect {
        Error::unavailable(format!("cannot connect to instance {instance} of {function}: {cause}"))
    } else {
        Error::developer(
            DeveloperErrorKind::Crash,
            format!("instance {instance} of {function} broke the connection: {cause}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(headers: &[(&str, &str)], pq: &str) -> Invocation {
        let mut inv = Invocation::get("f", pq);
        for (k, v) in headers {
            inv.request.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        inv
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let inv = invocation(
            &[
                ("connection", "keep-alive, x-private"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"),
                ("proxy-authorization", "Basic x"),
                ("proxy-connection", "keep-alive"),
                ("trailer", "x-sum"),
                ("x-private", "1"),
                ("x-kept", "2"),
                ("host", "gw.example"),
            ],
            "/a?b=1",
        );
        let req = upstream_request(inv, "http://127.0.0.1:9").unwrap();
        let names: Vec<&str> = req.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(req.headers()["x-kept"], "2");
        assert_eq!(req.headers()[X_FORWARDED_HOST], "gw.example");
        assert!(req.headers().contains_key(X_CALL_ID));
        assert_eq!(req.uri(), "http://127.0.0.1:9/a?b=1");
        assert_eq!(req.version(), http::Version::HTTP_11);
    }

    #[test]
    fn call_id_is_the_invocations() {
        let inv = invocation(&[("x-call-id", "other")], "/");
        let id = inv.id.clone();
        let req = upstream_request(inv, "http://127.0.0.1:9").unwrap();
        assert_eq!(req.headers()[X_CALL_ID], id.as_str());
        assert_eq!(req.headers().get_all(X_CALL_ID).iter().count(), 1);
        // An id that is no header value leaves no header rather than a stale one.
        let mut inv = invocation(&[("x-call-id", "other")], "/");
        inv.id = crate::InvocationId::from_string("bad\nid");
        let req = upstream_request(inv, "http://127.0.0.1:9").unwrap();
        assert!(!req.headers().contains_key(X_CALL_ID));
    }

    #[test]
    fn paths_after_a_prefix() {
        let uri = |base: &str, pq: &str| {
            upstream_request(invocation(&[], pq), base).unwrap().uri().to_string()
        };
        assert_eq!(uri("http://gw:8080/function/f.ns", "/"), "http://gw:8080/function/f.ns");
        assert_eq!(
            uri("http://gw:8080/function/f.ns/", "/x?y"),
            "http://gw:8080/function/f.ns/x?y"
        );
        assert_eq!(uri("http://h:1", "/"), "http://h:1/");
        assert!(upstream_request(invocation(&[], "/"), "not a url").is_err());
    }

    #[tokio::test]
    async fn watchdog_errors_map_to_the_taxonomy() {
        let f = FunctionRef::default_ns("f");
        for reason in WatchdogError::ALL {
            assert_eq!(WatchdogError::parse(reason.as_str()), Some(reason));
            let mut resp = Response::new(Body::from("it broke\n"));
            resp.headers_mut()
                .insert(WATCHDOG_ERROR_HEADER, HeaderValue::from_static(reason.as_str()));
            let e = check_watchdog_error(resp, &f, "f-1").await.unwrap_err();
            let want = match reason {
                WatchdogError::ExecTimeout | WatchdogError::WriteTimeout => {
                    Some(DeveloperErrorKind::Timeout)
                }
                WatchdogError::Spawn | WatchdogError::ActionInit => Some(DeveloperErrorKind::Init),
                WatchdogError::ActionResult => Some(DeveloperErrorKind::Protocol),
                WatchdogError::ActionTimeout => Some(DeveloperErrorKind::Timeout),
                WatchdogError::Inflight => None,
                _ => Some(DeveloperErrorKind::Crash),
            };
            match (want, &e) {
                (Some(k), Error::Developer { kind, message }) => {
                    assert_eq!(*kind, k);
                    assert!(message.ends_with("it broke"), "{message}");
                }
                (None, Error::Overloaded { retry_after, .. }) => assert!(retry_after.is_some()),
                _ => panic!("{reason}: {e:?}"),
            }
        }
        // OpenWhisk's messages are the error's message, unchanged.
        let mut resp = Response::new(Body::from("The action did not return a dictionary.\n"));
        resp.headers_mut().insert(WATCHDOG_ERROR_HEADER, HeaderValue::from_static("action_result"));
        let e = check_watchdog_error(resp, &f, "f-1").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "developer error (protocol violation): The action did not return a dictionary."
        );
        let mut resp = Response::new(Body::from("mine"));
        resp.headers_mut().insert(WATCHDOG_ERROR_HEADER, HeaderValue::from_static("novel"));
        assert!(check_watchdog_error(resp, &f, "f-1").await.is_ok());
    }

    #[test]
    fn transport_errors() {
        let f = FunctionRef::default_ns("f");
        assert!(matches!(transport_error(&"x", true, false, &f, "i"), Error::Unavailable { .. }));
        for (connect, exited) in [(false, false), (true, true), (false, true)] {
            let e = transport_error(&"x", connect, exited, &f, "i");
            assert!(matches!(e, Error::Developer { kind: DeveloperErrorKind::Crash, .. }), "{e}");
        }
    }
}

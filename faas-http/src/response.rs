//! Building gateway responses, and the mapping of [`faas_core::Error`] to HTTP.
//!
//! Errors are answered as plain text (as OpenFaaS does) with the status of
//! [`faas_core::Error::http_status`]: invalid input 400 naming the field, unknown function
//! 404, conflict 409, too large 413, overloaded 429 (with `Retry-After` when known),
//! application and developer errors 502, timeouts 504 naming which timeout fired, backend
//! unavailable 503 with the reason, internal 500.

use bytes::Bytes;
use faas_core::{Body, Error, Response};
use http::{header, HeaderValue, StatusCode};

/// A plain text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = http::Response::new(Body::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A JSON response.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(v) => {
            let mut r = http::Response::new(Body::from(v));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => error(&Error::internal(format!("encoding JSON: {e}"))),
    }
}

/// An empty response with a status.
pub fn empty(status: StatusCode) -> Response {
    let mut r = http::Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// The response for an error: its HTTP status and its message as plain text.
pub fn error(err: &Error) -> Response {
    let mut r = text(err.http_status(), format!("{err}\n"));
    if let Error::Overloaded { retry_after: Some(d), .. } = err {
        let secs = d.as_secs().max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

/// 401 with `WWW-Authenticate: Basic realm="Restricted"`.
pub fn unauthorized() -> Response {
    let mut r =
        text(StatusCode::UNAUTHORIZED, "unauthorized: valid basic auth credentials required\n");
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Restricted\""));
    r
}

/// 405 with an `Allow` header.
pub fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, format!("method not allowed; use {allow}\n"));
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A static asset of the portal. Other sites may not frame it (so a page cannot trick a
/// visitor into clicking its buttons), and its type is not sniffed.
pub fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = http::Response::new(Body::from(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

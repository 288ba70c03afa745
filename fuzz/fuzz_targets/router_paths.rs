//! The router's path and query handling (and the layers before it: cross-site and host
//! checks, auth, body limit) with whatever request line and headers a client sends.
//!
//! Input: byte 0 picks the method (low 4 bits) and turns auth on (bit 4), then text: the
//! request target on the first line, header lines `name: value` up to an empty line, the body
//! after it. Request targets and headers that `http` itself refuses (as hyper would) are
//! skipped. The gateway never answers 500.
#![no_main]

use bytes::Bytes;
use faas_fuzz::with_gateway;
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 12] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "GET", "POST",
    "PROPFIND",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let method = METHODS[usize::from(sel & 15) % METHODS.len()];
    let auth = sel & 16 != 0;
    let mut lines = rest.split(|&b| b == b'\n');
    let Some(target) = lines.next() else { return };
    let Ok(uri) = http::Uri::try_from(target) else { return };
    let mut builder = http::Request::builder().method(method).uri(uri);
    let mut consumed = target.len() + 1;
    for line in lines.by_ref() {
        consumed += line.len() + 1;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { return };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value))
        else {
            return;
        };
        builder = builder.header(name, value);
    }
    let body = Bytes::copy_from_slice(rest.get(consumed..).unwrap_or_default());
    let Ok(mut req) = builder.body(faas_core::Body::from(body)) else { return };
    if auth && !req.headers().contains_key(http::header::AUTHORIZATION) {
        let v = faas_http::BasicAuth::new(faas_fuzz::USER, faas_fuzz::PASSWORD).header_value();
        let Ok(v) = http::HeaderValue::try_from(v) else { return };
        req.headers_mut().insert(http::header::AUTHORIZATION, v);
    }
    let line = format!("{method} {}", req.uri());
    with_gateway(auth, |g| async move {
        let a = g.send(req).await;
        assert_ne!(
            a.status,
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "{line}: {:?}",
            a.body.as_deref().map(String::from_utf8_lossy)
        );
    });
});

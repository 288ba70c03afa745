//! The asynchronous invocation queue contract. Implementations live in `faas-queue`
//! (in-memory and Kafka).

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::error::{Error, Result};
use crate::event::Delivery;
use crate::invocation::{FunctionRef, Invocation, InvocationId};

/// An invocation waiting in a queue: everything needed to replay the HTTP request later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedInvocation {
    /// The call id (`X-Call-Id`).
    pub call_id: InvocationId,
    /// The function.
    pub function: String,
    /// Its namespace.
    pub namespace: String,
    /// HTTP method.
    pub method: String,
    /// Path suffix after `/async-function/NAME`.
    pub path: String,
    /// Query string without `?` (empty if none).
    pub query: String,
    /// Headers as (name, value) pairs; non-UTF-8 values are dropped.
    pub headers: Vec<(String, String)>,
    /// Request body.
    #[serde(with = "bytes_b64")]
    pub body: Bytes,
    /// Where to POST the result (`X-Callback-Url`).
    pub callback_url: Option<String>,
    /// Delivery attempts so far (0 before the first).
    pub attempt: u32,
    /// When it was queued (milliseconds since the Unix epoch).
    pub queued_at: u64,
}

mod bytes_b64 {
    //! Bytes as a JSON array of numbers would be bulky; use a compact base64.
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Standard base64 with padding.
    pub fn encode(input: &[u8]) -> String {
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Decodes standard base64.
    pub fn decode(input: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(input.len() / 4 * 3);
        let mut buf = 0u32;
        let mut bits = 0;
        for c in input.bytes() {
            if c == b'=' {
                break;
            }
            let v = ALPHABET.iter().position(|&a| a == c).ok_or("invalid base64")? as u32;
            buf = (buf << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
                buf &= (1 << bits) - 1;
            }
        }
        Ok(out)
    }

    pub fn serialize<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).map(Bytes::from).map_err(serde::de::Error::custom)
    }
}

pub use bytes_b64::{decode as base64_decode, encode as base64_encode};

impl QueuedInvocation {
    /// The function reference.
    pub fn function_ref(&self) -> FunctionRef {
        FunctionRef::new(self.function.clone(), self.namespace.clone())
    }

    /// Rebuilds the invocation to run. A malformed method, path or header gives
    /// [`Error::InvalidSpec`] naming the field.
    pub fn to_invocation(&self) -> Result<Invocation> {
        let method = http::Method::from_bytes(self.method.as_bytes())
            .map_err(|e| Error::invalid("method", e.to_string()))?;
        let pq = if self.query.is_empty() {
            if self.path.is_empty() {
                "/".to_string()
            } else {
                self.path.clone()
            }
        } else {
            format!("{}?{}", if self.path.is_empty() { "/" } else { &self.path }, self.query)
        };
        let uri: http::Uri =
            pq.parse().map_err(|e: http::uri::InvalidUri| Error::invalid("path", e.to_string()))?;
        let mut req = http::Request::new(Body::from(self.body.clone()));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        for (k, v) in &self.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| Error::invalid(format!("headers.{k}"), e.to_string()))?;
            let value = http::HeaderValue::from_str(v)
                .map_err(|e| Error::invalid(format!("headers.{k}"), e.to_string()))?;
            req.headers_mut().append(name, value);
        }
        Ok(Invocation { id: self.call_id.clone(), function: self.function_ref(), request: req })
    }
}

/// Publishes queued invocations. A full queue answers [`Error::Overloaded`]; it never drops
/// an accepted item.
#[async_trait]
pub trait QueuePublisher: Send + Sync + 'static {
    /// Enqueues one invocation. `Ok` means it is durably accepted (as durable as the
    /// backend is).
    async fn publish(&self, item: QueuedInvocation) -> Result<()>;
}

/// Consumes queued invocations with explicit acknowledgement (at least once).
#[async_trait]
pub trait QueueConsumer: Send + Sync + 'static {
    /// The next item; `Ok(None)` when the queue is closed.
    async fn next(&self) -> Result<Option<Delivery<QueuedInvocation>>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_invocation() {
        for n in 0..10 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&data)).unwrap(), data);
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        let q = QueuedInvocation {
            call_id: InvocationId::from_string("c1"),
            function: "echo".into(),
            namespace: "openfaas-fn".into(),
            method: "PUT".into(),
            path: "/a/b".into(),
            query: "x=1".into(),
            headers: vec![("x-test".into(), "v".into())],
            body: Bytes::from_static(b"\x00\x01binary"),
            callback_url: None,
            attempt: 0,
            queued_at: 0,
        };
        let json = serde_json::to_string(&q).unwrap();
        let back: QueuedInvocation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, q);
        let inv = q.to_invocation().unwrap();
        assert_eq!(inv.request.method(), http::Method::PUT);
        assert_eq!(inv.request.uri().path(), "/a/b");
        assert_eq!(inv.request.uri().query(), Some("x=1"));
        assert_eq!(inv.request.headers()["x-test"], "v");
        let bad = QueuedInvocation { method: "BAD METHOD".into(), ..q };
        assert!(
            matches!(bad.to_invocation(), Err(Error::InvalidSpec { field, .. }) if field == "method")
        );
    }
}

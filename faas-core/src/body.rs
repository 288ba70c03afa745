//! The request and response body type: bytes in memory, or any boxed streaming body.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt};

use crate::error::Error;

/// A boxed error, as streaming bodies produce them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that is either fully in memory (cheap to clone, which retries need) or a stream.
///
/// Implements [`http_body::Body`], so hyper can send it as it is and any hyper body can be
/// wrapped with [`Body::new`].
pub struct Body {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(BoxBody<Bytes, BoxError>),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Body { kind: Kind::Full(None) }
    }

    /// Wraps any streaming body.
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        Body { kind: Kind::Stream(body.map_err(Into::into).boxed()) }
    }

    /// A body of a stream of byte chunks.
    pub fn from_stream<S>(stream: S) -> Self
    where
        S: futures::Stream<Item = Result<Bytes, BoxError>> + Send + Sync + 'static,
    {
        use futures::StreamExt;
        Body::new(http_body_util::StreamBody::new(stream.map(|r| r.map(Frame::data))))
    }

    /// The bytes, if the body is held in memory (not a stream).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::Full(Some(b)) => Some(b),
            Kind::Full(None) => Some(&[]),
            Kind::Stream(_) => None,
        }
    }

    /// A copy of the body if it is held in memory; `None` for a stream.
    pub fn try_clone(&self) -> Option<Body> {
        match &self.kind {
            Kind::Full(b) => Some(Body { kind: Kind::Full(b.clone()) }),
            Kind::Stream(_) => None,
        }
    }

    /// Reads the whole body, failing with [`Error::PayloadTooLarge`] past `limit` bytes.
    pub async fn collect_limited(self, limit: usize) -> Result<Bytes, Error> {
        match self.kind {
            Kind::Full(b) => {
                let b = b.unwrap_or_default();
                if b.len() > limit {
                    return Err(Error::PayloadTooLarge { limit: limit as u64 });
                }
                Ok(b)
            }
            Kind::Stream(mut s) => {
                let mut buf = bytes::BytesMut::new();
                while let Some(frame) = s.frame().await {
                    // A limit enforced further up (the gateway's body limit) stays a 413.
                    let frame = frame.map_err(|e| match e.downcast::<Error>() {
                        Ok(e) if matches!(*e, Error::PayloadTooLarge { .. }) => *e,
                        Ok(e) => Error::invalid("body", format!("reading body: {e}")),
                        Err(e) => Error::invalid("body", format!("reading body: {e}")),
                    })?;
                    if let Ok(data) = frame.into_data() {
                        if buf.len() + data.len() > limit {
                            return Err(Error::PayloadTooLarge { limit: limit as u64 });
                        }
                        buf.extend_from_slice(&data);
                    }
                }
                Ok(buf.freeze())
            }
        }
    }

    /// Reads the whole body with no limit. Prefer [`Body::collect_limited`] on input paths.
    pub async fn collect_bytes(self) -> Result<Bytes, Error> {
        self.collect_limited(usize::MAX).await
    }

    /// Turns the body into a buffered one (so it can be cloned), up to `limit` bytes.
    pub async fn buffer(self, limit: usize) -> Result<Body, Error> {
        Ok(Body::from(self.collect_limited(limit).await?))
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full(b) => f
                .debug_struct("Body")
                .field("len", &b.as_ref().map(|b| b.len()).unwrap_or(0))
                .finish(),
            Kind::Stream(_) => f.write_str("Body(stream)"),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        if b.is_empty() {
            Body::empty()
        } else {
            Body { kind: Kind::Full(Some(b)) }
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::from(Bytes::from(v))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::from(Bytes::from(s))
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::from(Bytes::from_static(s.as_bytes()))
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Self {
        Body::from(Bytes::from_static(s))
    }
}

impl From<()> for Body {
    fn from(_: ()) -> Self {
        Body::empty()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map(|b| b.len() as u64).unwrap_or(0)),
            Kind::Stream(s) => s.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that keeps a value alive until the body is fully sent or dropped: an
    /// in-flight mark released only once the response is out, say. The body itself passes
    /// through unchanged.
    pub struct Guarded<G> {
        #[pin]
        body: Body,
        guard: G,
    }
}

impl<G> Guarded<G> {
    /// Wraps `body`, keeping `guard` until it is done.
    pub fn new(body: Body, guard: G) -> Self {
        Guarded { body, guard }
    }
}

impl<G> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_and_stream() {
        let b = Body::from("hello");
        assert_eq!(b.as_bytes(), Some(&b"hello"[..]));
        let c = b.try_clone().unwrap();
        assert_eq!(c.collect_bytes().await.unwrap(), "hello");
        let s = Body::from_stream(futures::stream::iter(vec![
            Ok(Bytes::from("ab")),
            Ok(Bytes::from("cd")),
        ]));
        assert!(s.try_clone().is_none());
        assert_eq!(s.collect_bytes().await.unwrap(), "abcd");
        let s = Body::from_stream(futures::stream::iter(vec![Ok(Bytes::from("abcdef"))]));
        assert!(matches!(s.collect_limited(3).await, Err(Error::PayloadTooLarge { limit: 3 })));
    }
}

/// Marks an invocation whose request body failed on the caller's side: it went past the
/// size limit while streaming, or broke off before its end (a malformed chunk, a closed
/// connection). Whoever streams the caller's body puts it in the request's extensions and
/// records the fault; the failure that reaches the function is then answered, and counted,
/// as the caller's (413 or 400), not the function's.
#[derive(Clone, Debug)]
pub struct CallerFault {
    state: Arc<AtomicU8>,
    limit: u64,
}

const FAULT_NONE: u8 = 0;
const FAULT_TOO_LARGE: u8 = 1;
const FAULT_BROKEN: u8 = 2;

impl CallerFault {
    /// No fault yet, for a body limited to `limit` bytes.
    pub fn new(limit: u64) -> Self {
        CallerFault { state: Arc::new(AtomicU8::new(FAULT_NONE)), limit }
    }

    /// Records that the body went past its limit.
    pub fn too_large(&self) {
        self.state.store(FAULT_TOO_LARGE, Ordering::Relaxed);
    }

    /// Records that the body broke off (unless it was already too large).
    pub fn broken(&self) {
        let _ = self.state.compare_exchange(
            FAULT_NONE,
            FAULT_BROKEN,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The caller's error, if the body failed: 413 naming the limit, or 400 naming the body.
    pub fn error(&self) -> Option<Error> {
        match self.state.load(Ordering::Relaxed) {
            FAULT_TOO_LARGE => Some(Error::PayloadTooLarge { limit: self.limit }),
            FAULT_BROKEN => Some(Error::invalid(
                "body",
                "the request body broke off before its end (a malformed chunk or a closed \
                 connection)",
            )),
            _ => None,
        }
    }
}

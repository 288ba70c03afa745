//! Handlers: a [`Function`] is any tower `Service` from an HTTP request to an HTTP response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use tower::Service;

use crate::body::Body;
use crate::error::Error;
use crate::invocation::Context;

/// The request a function receives. Its [`Context`] is in the extensions.
pub type Request = http::Request<Body>;
/// The response a function returns.
pub type Response = http::Response<Body>;

/// A function handler: any cloneable tower `Service<Request>` answering a [`Response`] or an
/// [`Error`]. Implemented for every such service; build one from an async fn with
/// [`handler_fn`].
pub trait Function:
    Service<Request, Response = Response, Error = Error, Future = Self::Fut>
    + Clone
    + Send
    + Sync
    + 'static
{
    /// The service's future (named so that it can be required to be `Send`).
    type Fut: Future<Output = Result<Response, Error>> + Send + 'static;
}

impl<S> Function for S
where
    S: Service<Request, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Fut = S::Future;
}

/// A type-erased function.
pub type BoxFunction = tower::util::BoxCloneSyncService<Request, Response, Error>;

/// Boxes any function.
pub fn boxed<F: Function>(f: F) -> BoxFunction {
    BoxFunction::new(f)
}

/// What a handler may return: a full response, or a body answered with status 200.
pub trait IntoResponse {
    /// Converts into a response.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

macro_rules! body_response {
    ($($t:ty),*) => {$(
        impl IntoResponse for $t {
            fn into_response(self) -> Response {
                http::Response::new(Body::from(self))
            }
        }
    )*};
}
body_response!(Body, String, &'static str, Bytes, Vec<u8>, ());

/// A function made from an async fn; see [`handler_fn`].
#[derive(Clone, Copy)]
pub struct HandlerFn<F> {
    f: F,
}

/// Turns `async fn(Request, Context) -> Result<impl IntoResponse, Error>` into a [`Function`].
///
/// The [`Context`] is taken out of the request's extensions (no copy is made) and passed as
/// the second argument; a request without one gets an empty context.
///
/// ```
/// use faas_core::{handler_fn, Body, Context, Error, Request};
/// let upper = handler_fn(|req: Request, _ctx: Context| async move {
///     let body = req.into_body().collect_limited(1 << 20).await?;
///     Ok::<_, Error>(String::from_utf8_lossy(&body).to_uppercase())
/// });
/// # let _ = upper;
/// ```
pub fn handler_fn<F, Fut, R>(f: F) -> HandlerFn<F>
where
    F: Fn(Request, Context) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Error>> + Send + 'static,
    R: IntoResponse,
{
    HandlerFn { f }
}

impl<F, Fut, R> Service<Request> for HandlerFn<F>
where
    F: Fn(Request, Context) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Error>> + Send + 'static,
    R: IntoResponse,
{
    type Response = Response;
    type Error = Error;
    type Future = HandlerFuture<Fut>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let ctx = req.extensions_mut().remove::<Context>().unwrap_or_default();
        HandlerFuture { inner: (self.f)(req, ctx) }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`HandlerFn`].
    pub struct HandlerFuture<Fut> {
        #[pin]
        inner: Fut,
    }
}

impl<Fut, R> Future for HandlerFuture<Fut>
where
    Fut: Future<Output = Result<R, Error>>,
    R: IntoResponse,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(|r| r.map(IntoResponse::into_response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn handler_sees_context() {
        let f = handler_fn(|req: Request, ctx: Context| async move {
            let b = req.into_body().collect_bytes().await?;
            Ok(format!("{}:{}", ctx.env("GREETING").unwrap_or("none"), String::from_utf8_lossy(&b)))
        });
        let mut req = http::Request::new(Body::from("x"));
        let mut env = std::collections::BTreeMap::new();
        env.insert("GREETING".to_string(), "hi".to_string());
        req.extensions_mut().insert(Context { env: env.into(), ..Default::default() });
        let resp = boxed(f).oneshot(req).await.unwrap();
        assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "hi:x");
    }
}

//! Posting results to callback URLs (`X-Callback-Url`).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use faas_core::{Error, Result};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One callback POST: where, which headers, which body.
#[derive(Debug, Clone)]
pub struct CallbackRequest {
    /// The callback URL.
    pub url: http::Uri,
    /// Headers (`X-Call-Id`, `X-Function-Status`, `X-Function-Name`, `X-Duration-Seconds`,
    /// and the function's `Content-Type`).
    pub headers: http::HeaderMap,
    /// The function's response body (or the error message).
    pub body: Bytes,
}

/// Sends callback POSTs. The worker retries what this reports as failed.
#[async_trait]
pub trait CallbackSender: Send + Sync + 'static {
    /// POSTs once and returns the HTTP status the callback URL answered. A connection
    /// failure or timeout is an [`Error::Unavailable`] (retried); an [`Error::InvalidSpec`]
    /// means the URL can never work (not retried).
    async fn send(&self, request: CallbackRequest) -> Result<u16>;
}

/// The default callback sender: a pooled hyper HTTP/1 client, `http://` URLs only (put a
/// TLS-capable [`CallbackSender`] in front for `https://`).
#[derive(Clone)]
pub struct HttpCallbackClient {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpCallbackClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCallbackClient").field("timeout", &self.timeout).finish()
    }
}

impl Default for HttpCallbackClient {
    fn default() -> Self {
        HttpCallbackClient::new(Duration::from_secs(10))
    }
}

impl HttpCallbackClient {
    /// A client giving up on one POST (connect, send, read the answer) after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpCallbackClient { client, timeout }
    }
}

#[async_trait]
impl CallbackSender for HttpCallbackClient {
    async fn send(&self, request: CallbackRequest) -> Result<u16> {
        if request.url.scheme_str() != Some("http") {
            return Err(Error::invalid(
                "callback_url",
                "the built-in callback client speaks http:// only",
            ));
        }
        let mut req = http::Request::new(Full::new(request.body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = request.url;
        *req.headers_mut() = request.headers;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| Error::unavailable(format!("callback POST failed: {e}")))?;
            let status = resp.status().as_u16();
            // Read the answer so the connection goes back to the pool.
            let _ = resp.into_body().collect().await;
            Ok(status)
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::unavailable(format!(
                "callback POST timed out after {}",
                faas_core::util::format_duration(self.timeout)
            ))),
        }
    }
}

//! [`GatewayInvoker`]: an [`Invoke`] that invokes functions through an OpenFaaS-compatible
//! gateway's `/function/NAME.NAMESPACE` route, for a queue worker running as its own process
//! (the way OpenFaaS's queue-worker calls the gateway).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use faas_core::{Body, Error, Invocation, Invoke, Response, Result};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Invokes through a gateway over HTTP/1 (`http://` only). It implements [`Invoke`] only:
/// the queue worker needs nothing else.
#[derive(Clone)]
pub struct GatewayInvoker {
    base: String,
    client: Client<HttpConnector, Body>,
    timeout: Duration,
}

impl std::fmt::Debug for GatewayInvoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayInvoker").field("base", &self.base).finish()
    }
}

impl GatewayInvoker {
    /// Invokes through the gateway at `base_url` (e.g. `http://127.0.0.1:8080`), giving up
    /// on one invocation after `timeout` (a developer error of kind timeout).
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self> {
        let uri: http::Uri = base_url
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::invalid("gateway", e.to_string()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(Error::invalid("gateway", "must be an http:// URL with a host"));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(GatewayInvoker { base: base_url.trim_end_matches('/').to_string(), client, timeout })
    }
}

#[async_trait]
impl Invoke for GatewayInvoker {
    async fn invoke(&self, invocation: Invocation) -> Result<Response> {
        let (mut parts, body) = invocation.request.into_parts();
        let f = &invocation.function;
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let pq = if pq == "/" { "" } else { pq };
        let url = format!("{}/function/{}.{}{}", self.base, f.name, f.namespace, pq);
        parts.uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::invalid("path", e.to_string()))?;
        parts.headers.remove(http::header::HOST);
        let req = http::Request::from_parts(parts, body);
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| Error::unavailable(format!("gateway {}: {e}", self.base)))?;
            let (parts, body) = resp.into_parts();
            let bytes: Bytes = body
                .collect()
                .await
                .map_err(|e| {
                    Error::unavailable(format!("gateway {}: reading the answer: {e}", self.base))
                })?
                .to_bytes();
            Ok(http::Response::from_parts(parts, Body::from(bytes)))
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout("queue worker invocation", self.timeout)),
        }
    }
}

//! [`GatewayInvoker`]: an [`Invoke`] that invokes functions through an OpenFaaS-compatible
//! gateway's `/function/NAME.NAMESPACE` route, for a queue worker running as its own process
//! (the way OpenFaaS's queue-worker calls the gateway).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use faas_core::instance::{InstanceClient, Target};
use faas_core::{Body, Error, Invocation, Invoke, Response, Result};
use http_body_util::BodyExt;

/// Invokes through a gateway over HTTP/1 (`http://` only), with the instance client every
/// backend forwards with (the same headers, `X-Call-Id` and error mapping). It implements
/// [`Invoke`] only: the queue worker needs nothing else.
#[derive(Clone)]
pub struct GatewayInvoker {
    base: String,
    client: InstanceClient,
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
        Ok(GatewayInvoker {
            base: base_url.trim_end_matches('/').to_string(),
            client: InstanceClient::new(),
            timeout,
        })
    }
}

#[async_trait]
impl Invoke for GatewayInvoker {
    async fn invoke(&self, invocation: Invocation) -> Result<Response> {
        let f = invocation.function.clone();
        let base = format!("{}/function/{}.{}", self.base, f.name, f.namespace);
        // The timeout covers reading the answer too: the worker records it whole.
        let target = Target { base: &base, function: &f, instance: &self.base, timeout: None };
        let fut = async {
            let resp = self.client.forward(invocation, &target, ()).await?;
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

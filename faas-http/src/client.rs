//! A client for any OpenFaaS-compatible gateway (ours or upstream), used by the `faas`
//! binary's subcommands.

use std::time::Duration;

use bytes::Bytes;
use faas_core::{Error, FunctionSpec, FunctionStatus, LogEntry, Result, SecretInfo};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::auth::BasicAuth;

/// A gateway's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn ok(self) -> Result<Reply> {
        if self.status.is_success() {
            return Ok(self);
        }
        let msg = self.text().trim().to_string();
        Err(match self.status {
            StatusCode::NOT_FOUND => Error::NotFound { kind: "resource", name: msg },
            StatusCode::BAD_REQUEST => Error::invalid("request", msg),
            StatusCode::CONFLICT => Error::AlreadyExists { kind: "resource", name: msg },
            StatusCode::UNAUTHORIZED => Error::invalid(
                "credentials",
                format!(
                    "{msg} (log in with `faas login --password-stdin`, or set \
                     OPENFAAS_USER/OPENFAAS_PASSWORD or --user/--password)"
                ),
            ),
            StatusCode::FORBIDDEN => Error::invalid("request", msg),
            StatusCode::TOO_MANY_REQUESTS => Error::Overloaded {
                message: msg,
                retry_after: self
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok())
                    .map(Duration::from_secs),
            },
            StatusCode::SERVICE_UNAVAILABLE => Error::unavailable(msg),
            s => Error::internal(format!("gateway answered {s}: {msg}")),
        })
    }
}

/// A gateway client.
#[derive(Clone)]
pub struct GatewayClient {
    base: String,
    auth: Option<BasicAuth>,
    http: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient").field("base", &self.base).finish()
    }
}

fn ns_query(ns: Option<&str>) -> String {
    match ns {
        Some(n) if !n.is_empty() => format!("?namespace={n}"),
        _ => String::new(),
    }
}

impl GatewayClient {
    /// A client of the gateway at `url` (`http://127.0.0.1:8080`).
    pub fn new(url: &str) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::invalid("gateway", e.to_string()))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(Error::invalid("gateway", format!("{url:?} must be an http:// URL")));
        }
        Ok(GatewayClient {
            base,
            auth: None,
            http: Client::builder(TokioExecutor::new()).build_http(),
            timeout: Duration::from_secs(120),
        })
    }

    /// The credentials sent, if any.
    pub fn auth(&self) -> Option<&BasicAuth> {
        self.auth.as_ref()
    }

    /// Sends basic auth credentials.
    pub fn with_auth(mut self, auth: Option<BasicAuth>) -> Self {
        self.auth = auth;
        self
    }

    /// Sets the per-request timeout (default 120 s).
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The gateway URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request; returns the reply whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Reply> {
        let resp = self.send_streaming(method, path, headers, body).await?;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(self.timeout, body.collect())
            .await
            .map_err(|_| Error::unavailable("timed out reading the gateway's answer"))?
            .map_err(|e| Error::unavailable(format!("reading the gateway's answer: {e}")))?
            .to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    /// Sends one request; returns the response with its body unread (for streams).
    pub async fn send_streaming(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let mut req = http::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(a) = &self.auth {
            req = req.header(http::header::AUTHORIZATION, a.header_value());
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req =
            req.body(Full::new(body)).map_err(|e| Error::invalid("request", e.to_string()))?;
        tokio::time::timeout(self.timeout, self.http.request(req))
            .await
            .map_err(|_| Error::unavailable(format!("no answer from {} in time", self.base)))?
            .map_err(|e| {
                Error::unavailable(format!("cannot reach the gateway at {}: {e}", self.base))
            })
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.send(Method::GET, path, &[], Bytes::new()).await?.ok()?;
        serde_json::from_slice(&r.body).map_err(|e| {
            Error::internal(format!("the gateway's answer to {path} is not valid: {e}"))
        })
    }

    async fn send_json<T: serde::Serialize>(
        &self,
        method: Method,
        path: &str,
        v: &T,
    ) -> Result<Reply> {
        let body = serde_json::to_vec(v).map_err(|e| Error::internal(e.to_string()))?;
        let h = [("content-type".to_string(), "application/json".to_string())];
        self.send(method, path, &h, Bytes::from(body)).await?.ok()
    }

    /// `GET /system/functions`.
    pub async fn list(&self, namespace: Option<&str>) -> Result<Vec<FunctionStatus>> {
        self.json(&format!("/system/functions{}", ns_query(namespace))).await
    }

    /// `GET /system/function/{name}`.
    pub async fn describe(&self, name: &str, namespace: Option<&str>) -> Result<FunctionStatus> {
        self.json(&format!("/system/function/{name}{}", ns_query(namespace))).await
    }

    /// Deploys like `faas-cli deploy`: `PUT` (update), then `POST` if the function is new.
    /// Returns true when it was an update.
    pub async fn deploy(&self, spec: &FunctionSpec) -> Result<bool> {
        let body = serde_json::to_vec(spec).map_err(|e| Error::internal(e.to_string()))?;
        let h = [("content-type".to_string(), "application/json".to_string())];
        let r = self.send(Method::PUT, "/system/functions", &h, Bytes::from(body.clone())).await?;
        if r.status == StatusCode::NOT_FOUND {
            self.send(Method::POST, "/system/functions", &h, Bytes::from(body)).await?.ok()?;
            return Ok(false);
        }
        r.ok()?;
        Ok(true)
    }

    /// `DELETE /system/functions`.
    pub async fn remove(&self, name: &str, namespace: Option<&str>) -> Result<()> {
        let mut v = serde_json::json!({ "functionName": name });
        if let Some(ns) = namespace {
            v["namespace"] = ns.into();
        }
        self.send_json(Method::DELETE, "/system/functions", &v).await.map(drop)
    }

    /// `POST /system/scale-function/{name}`.
    pub async fn scale(&self, name: &str, namespace: Option<&str>, replicas: u32) -> Result<()> {
        let mut v = serde_json::json!({ "serviceName": name, "replicas": replicas });
        if let Some(ns) = namespace {
            v["namespace"] = ns.into();
        }
        self.send_json(Method::POST, &format!("/system/scale-function/{name}"), &v).await.map(drop)
    }

    /// Invokes `/function/{name}` (or `/async-function/{name}` when `async_`), whatever the
    /// answer's status.
    pub async fn invoke(
        &self,
        name: &str,
        method: Method,
        headers: &[(String, String)],
        body: Bytes,
        async_: bool,
    ) -> Result<Reply> {
        let prefix = if async_ { "async-function" } else { "function" };
        self.send(method, &format!("/{prefix}/{name}"), headers, body).await
    }

    /// `GET /system/secrets`.
    pub async fn list_secrets(&self, namespace: Option<&str>) -> Result<Vec<SecretInfo>> {
        self.json(&format!("/system/secrets{}", ns_query(namespace))).await
    }

    /// `POST /system/secrets` (or `PUT` when `update`).
    pub async fn create_secret(
        &self,
        name: &str,
        namespace: Option<&str>,
        value: &[u8],
        update: bool,
    ) -> Result<()> {
        let mut v = serde_json::json!({ "name": name });
        match std::str::from_utf8(value) {
            Ok(s) => v["value"] = s.into(),
            Err(_) => v["rawValue"] = faas_core::queue::base64_encode(value).into(),
        }
        if let Some(ns) = namespace {
            v["namespace"] = ns.into();
        }
        let m = if update { Method::PUT } else { Method::POST };
        self.send_json(m, "/system/secrets", &v).await.map(drop)
    }

    /// `DELETE /system/secrets`.
    pub async fn remove_secret(&self, name: &str, namespace: Option<&str>) -> Result<()> {
        let mut v = serde_json::json!({ "name": name });
        if let Some(ns) = namespace {
            v["namespace"] = ns.into();
        }
        self.send_json(Method::DELETE, "/system/secrets", &v).await.map(drop)
    }

    /// `GET /system/logs`, calling `each` for every entry until the stream ends.
    pub async fn logs(
        &self,
        name: &str,
        namespace: Option<&str>,
        tail: Option<usize>,
        follow: bool,
        mut each: impl FnMut(LogEntry),
    ) -> Result<()> {
        let mut path = format!("/system/logs?name={name}&follow={follow}");
        if let Some(ns) = namespace {
            path.push_str(&format!("&namespace={ns}"));
        }
        if let Some(t) = tail {
            path.push_str(&format!("&tail={t}"));
        }
        let resp = self.send_streaming(Method::GET, &path, &[], Bytes::new()).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            return Reply { status, headers: Default::default(), body }.ok().map(drop);
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::unavailable(format!("log stream: {e}")))?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    if let Ok(e) = serde_json::from_slice::<LogEntry>(&line) {
                        each(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// `GET /system/info`.
    pub async fn info(&self) -> Result<serde_json::Value> {
        self.json("/system/info").await
    }
}

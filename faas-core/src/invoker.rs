//! The backend contract: [`Invoker`].

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::error::{Error, Result};
use crate::function::Response;
use crate::invocation::{FunctionRef, Invocation};
use crate::spec::{FunctionSpec, FunctionStatus};

/// A secret: a name, a namespace and a value (OpenFaaS `Secret`: `value` is text, `rawValue`
/// base64 bytes on the wire; here the bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The secret name (a DNS-1123 subdomain).
    pub name: String,
    /// The namespace.
    pub namespace: String,
    /// The value.
    pub value: Bytes,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("value", &format_args!("<{} bytes redacted>", self.value.len()))
            .finish()
    }
}

/// A secret's listing entry (no value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
}

/// Which logs to read (OpenFaaS `/system/logs` query).
#[derive(Debug, Clone, Default)]
pub struct LogsRequest {
    /// The function.
    pub function: Option<FunctionRef>,
    /// Only this instance.
    pub instance: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<SystemTime>,
    /// Only the last `tail` entries (before following).
    pub tail: Option<usize>,
    /// Keep the stream open and deliver new entries as they come.
    pub follow: bool,
}

impl LogsRequest {
    /// All logs of `function`, not following.
    pub fn for_function(function: FunctionRef) -> Self {
        LogsRequest { function: Some(function), ..Default::default() }
    }
}

/// One log line (OpenFaaS log message JSON: `name`, `namespace`, `instance`, `timestamp`,
/// `text`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Function name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Instance id.
    pub instance: String,
    /// When the line was written.
    #[serde(with = "crate::spec::rfc3339_ser")]
    pub timestamp: SystemTime,
    /// The line, without its newline.
    pub text: String,
}

/// A stream of log entries.
pub type LogStream = BoxStream<'static, Result<LogEntry>>;

/// What a backend says about itself (`/system/info`'s `provider`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    /// Provider name, e.g. `faas-rs-memory`.
    pub provider: String,
    /// What orchestrates instances: `memory`, `process`, `docker`, `kubernetes`.
    pub orchestration: String,
    /// Version.
    pub version: String,
}

/// A backend that runs functions: deploy, update, remove, list, status, scale, invoke, logs,
/// secrets, namespaces.
///
/// Object safe: gateways hold an `Arc<dyn Invoker>`. Every backend passes the conformance
/// suite (`faas_core::conformance`, feature `conformance`).
#[async_trait]
pub trait Invoker: Send + Sync + 'static {
    /// Deploys a new function. [`Error::AlreadyExists`] if it exists, [`Error::InvalidSpec`]
    /// if the spec is invalid.
    async fn deploy(&self, spec: FunctionSpec) -> Result<()>;

    /// Replaces an existing function's spec. [`Error::NotFound`] if it does not exist.
    async fn update(&self, spec: FunctionSpec) -> Result<()>;

    /// Removes a function and all its instances.
    async fn remove(&self, function: &FunctionRef) -> Result<()>;

    /// Lists the functions of a namespace.
    async fn list(&self, namespace: &str) -> Result<Vec<FunctionStatus>>;

    /// One function's status.
    async fn status(&self, function: &FunctionRef) -> Result<FunctionStatus>;

    /// Sets the desired replica count (0 allowed).
    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<()>;

    /// Invokes a function. A function at zero replicas is scaled from zero first.
    async fn invoke(&self, invocation: Invocation) -> Result<Response>;

    /// Reads logs.
    async fn logs(&self, request: LogsRequest) -> Result<LogStream>;

    /// Lists secrets of a namespace (names only).
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>>;

    /// Creates a secret ([`Error::AlreadyExists`] if present).
    async fn create_secret(&self, secret: Secret) -> Result<()>;

    /// Replaces a secret's value ([`Error::NotFound`] if absent).
    async fn update_secret(&self, secret: Secret) -> Result<()>;

    /// Removes a secret.
    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()>;

    /// The namespaces functions may be deployed to.
    async fn namespaces(&self) -> Result<Vec<String>>;

    /// What this backend is.
    fn info(&self) -> ProviderInfo;
}

/// Conveniences over any [`Invoker`].
#[async_trait]
pub trait InvokerExt: Invoker {
    /// POSTs `body` to `function` and returns the response body; a non-2xx status gives
    /// [`Error::Application`] with the body as message.
    async fn call(&self, function: &str, body: impl Into<Body> + Send) -> Result<Bytes> {
        let resp = self.invoke(Invocation::post(function, body)).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect_bytes().await?;
        if !status.is_success() {
            return Err(Error::application(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        Ok(bytes)
    }

    /// Reads all current log entries of a function (not following).
    async fn read_logs(&self, function: &FunctionRef) -> Result<Vec<LogEntry>> {
        use futures::TryStreamExt;
        self.logs(LogsRequest::for_function(function.clone())).await?.try_collect().await
    }
}

impl<T: Invoker + ?Sized> InvokerExt for T {}

/// The future [`Invoker::invoke`] returns, for implementations that write the method out
/// rather than as an `async fn` (to hand on a future they already have, say).
pub type InvokeFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response>> + Send + 'a>>;

/// Forwards every method, so an `Arc<dyn Invoker>` is an invoker too.
#[async_trait]
impl<T: Invoker + ?Sized> Invoker for Arc<T> {
    async fn deploy(&self, spec: FunctionSpec) -> Result<()> {
        (**self).deploy(spec).await
    }
    async fn update(&self, spec: FunctionSpec) -> Result<()> {
        (**self).update(spec).await
    }
    async fn remove(&self, function: &FunctionRef) -> Result<()> {
        (**self).remove(function).await
    }
    async fn list(&self, namespace: &str) -> Result<Vec<FunctionStatus>> {
        (**self).list(namespace).await
    }
    async fn status(&self, function: &FunctionRef) -> Result<FunctionStatus> {
        (**self).status(function).await
    }
    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<()> {
        (**self).scale(function, replicas).await
    }
    // Written out (not `async fn`) so the inner invoker's boxed future is handed on as it is:
    // an `Arc<dyn Invoker>` on the hot path then costs one boxed future, not two.
    fn invoke<'life0, 'async_trait>(
        &'life0 self,
        invocation: Invocation,
    ) -> InvokeFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        (**self).invoke(invocation)
    }
    async fn logs(&self, request: LogsRequest) -> Result<LogStream> {
        (**self).logs(request).await
    }
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        (**self).list_secrets(namespace).await
    }
    async fn create_secret(&self, secret: Secret) -> Result<()> {
        (**self).create_secret(secret).await
    }
    async fn update_secret(&self, secret: Secret) -> Result<()> {
        (**self).update_secret(secret).await
    }
    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()> {
        (**self).remove_secret(namespace, name).await
    }
    async fn namespaces(&self) -> Result<Vec<String>> {
        (**self).namespaces().await
    }
    fn info(&self) -> ProviderInfo {
        (**self).info()
    }
}

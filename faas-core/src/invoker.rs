//! The backend contracts, split by capability as a backend can offer them: [`Invoke`] (the
//! one every backend has), [`Deploy`], [`Secrets`] and [`Logs`]; [`Backend`] is all four, as a
//! gateway needs them. Conveniences live in the extension traits [`InvokeExt`] and
//! [`LogsExt`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

    /// Whether `entry` passes the `instance` and `since` filters.
    pub fn wants(&self, entry: &LogEntry) -> bool {
        self.instance.as_deref().is_none_or(|i| entry.instance == i)
            && self.since.is_none_or(|s| entry.timestamp >= s)
    }

    /// The entries of `kept` (oldest first) this request reads before following: those
    /// that pass the filters, the last `tail` of them.
    pub fn select<'a>(&self, kept: impl Iterator<Item = &'a LogEntry>) -> Vec<LogEntry> {
        let mut selected: Vec<LogEntry> = kept.filter(|e| self.wants(e)).cloned().collect();
        if let Some(t) = self.tail {
            let skip = selected.len().saturating_sub(t);
            selected.drain(..skip);
        }
        selected
    }

    /// The answer of a backend that keeps logs in memory: `selected` (from
    /// [`LogsRequest::select`]), then, when `follow` is given (subscribed while the entries
    /// were selected, so that none falls in between), each new entry that passes the
    /// filters; a reader that lags behind skips what it missed, and the stream ends when the
    /// sender goes.
    pub fn stream(
        &self,
        selected: Vec<LogEntry>,
        follow: Option<tokio::sync::broadcast::Receiver<LogEntry>>,
    ) -> LogStream {
        use futures::StreamExt;
        use tokio::sync::broadcast::error::RecvError;
        let head = futures::stream::iter(selected.into_iter().map(Ok));
        let Some(rx) = follow else {
            return head.boxed();
        };
        let filter = LogsRequest { function: None, tail: None, follow: true, ..self.clone() };
        let tail = futures::stream::unfold((rx, filter), |(mut rx, filter)| async move {
            loop {
                match rx.recv().await {
                    Ok(e) if filter.wants(&e) => return Some((Ok(e), (rx, filter))),
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        });
        head.chain(tail).boxed()
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

/// Invoking a function: the one capability every backend has, and all that a caller which
/// only invokes (a queue worker, a trigger, a sequence) depends on.
///
/// Object safe (`Arc<dyn Invoke>`). As a tower service it is [`InvokeService`]: wrap it in
/// the layers of [`crate::layers`]; any cloneable `Service<Invocation>` is an `Invoke` again
/// through [`ServiceInvoke`].
#[async_trait]
pub trait Invoke: Send + Sync + 'static {
    /// Invokes a function. A function at zero replicas is scaled from zero first.
    async fn invoke(&self, invocation: Invocation) -> Result<Response>;
}

/// Managing functions: deploy, update, remove, list, status, scale, and what the backend is.
#[async_trait]
pub trait Deploy: Send + Sync + 'static {
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

    /// The namespaces functions may be deployed to.
    async fn namespaces(&self) -> Result<Vec<String>>;

    /// What this backend is.
    fn info(&self) -> ProviderInfo;

    /// Waits until `function` has a ready replica: `Ok(true)` once it has, `Ok(false)` if
    /// `timeout` passed first, [`Error::NotFound`] if there is no such function. This is how
    /// a scale from zero waits.
    ///
    /// The default asks [`Deploy::status`] at growing intervals (1 ms, doubling up to
    /// 50 ms). A backend that learns of readiness as it happens overrides it to wake the
    /// waiter at once (the in-memory and process backends do), and a wrapper forwards it.
    async fn wait_ready(&self, function: &FunctionRef, timeout: Duration) -> Result<bool> {
        poll_ready(self, function, timeout).await
    }
}

/// [`Deploy::wait_ready`] for a backend that wakes `notify` whenever an instance's readiness
/// may have changed: `ready` is asked before each wait (an error ends the wait with it), and
/// the wait gives `Ok(false)` once `timeout` has passed.
pub async fn wait_notified(
    notify: &tokio::sync::Notify,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so a wake between the check and the wait is kept.
        notified.as_mut().enable();
        if ready()? {
            return Ok(true);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(false);
        }
    }
}

/// [`Deploy::wait_ready`] by asking [`Deploy::status`] at intervals growing from 1 ms to
/// 50 ms, for backends that have no notification of their own.
pub async fn poll_ready<D: Deploy + ?Sized>(
    backend: &D,
    function: &FunctionRef,
    timeout: Duration,
) -> Result<bool> {
    poll_with_backoff(timeout, || async {
        match backend.status(function).await {
            Ok(s) => Ok(s.available_replicas > 0),
            Err(e @ Error::NotFound { .. }) => Err(e),
            // A passing failure to read the status is not the end of the wait.
            Err(e) => {
                tracing::debug!(function = %function, error = %e, "status while waiting");
                Ok(false)
            }
        }
    })
    .await
}

/// Asks `ready` at intervals growing from 1 ms to 50 ms until it says `true` (`Ok(true)`),
/// fails (its error), or `timeout` has passed (`Ok(false)`; it is asked at least once).
pub async fn poll_with_backoff<F, Fut>(timeout: Duration, mut ready: F) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let backoff = crate::util::Backoff::new(Duration::from_millis(1), Duration::from_millis(50));
    let backoff = backoff.exact();
    let mut tries = 0;
    loop {
        if ready().await? {
            return Ok(true);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tries += 1;
        tokio::time::sleep_until((now + backoff.delay(tries)).min(deadline)).await;
    }
}

/// Secrets functions can read (OpenFaaS `/system/secrets`).
#[async_trait]
pub trait Secrets: Send + Sync + 'static {
    /// Lists secrets of a namespace (names only).
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>>;

    /// Creates a secret ([`Error::AlreadyExists`] if present).
    async fn create_secret(&self, secret: Secret) -> Result<()>;

    /// Replaces a secret's value ([`Error::NotFound`] if absent).
    async fn update_secret(&self, secret: Secret) -> Result<()>;

    /// Removes a secret.
    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()>;
}

/// Functions' logs (OpenFaaS `/system/logs`).
#[async_trait]
pub trait Logs: Send + Sync + 'static {
    /// Reads logs.
    async fn logs(&self, request: LogsRequest) -> Result<LogStream>;
}

/// A backend with every capability a gateway serves: [`Invoke`], [`Deploy`], [`Secrets`] and
/// [`Logs`]. Implemented for every type that has the four; gateways hold an
/// `Arc<dyn Backend>`. Every backend passes the conformance suite (`faas_core::conformance`,
/// feature `conformance`).
pub trait Backend: Invoke + Deploy + Secrets + Logs {}

impl<T: Invoke + Deploy + Secrets + Logs + ?Sized> Backend for T {}

/// Conveniences over any [`Invoke`].
#[async_trait]
pub trait InvokeExt: Invoke {
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
}

impl<T: Invoke + ?Sized> InvokeExt for T {}

/// Conveniences over any [`Logs`].
#[async_trait]
pub trait LogsExt: Logs {
    /// Reads all current log entries of a function (not following).
    async fn read_logs(&self, function: &FunctionRef) -> Result<Vec<LogEntry>> {
        use futures::TryStreamExt;
        self.logs(LogsRequest::for_function(function.clone())).await?.try_collect().await
    }
}

impl<T: Logs + ?Sized> LogsExt for T {}

/// The future [`Invoke::invoke`] returns, for implementations that write the method out
/// rather than as an `async fn` (to hand on a future they already have, say).
pub type InvokeFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response>> + Send + 'a>>;

/// Forwards to the shared value, so an `Arc<dyn Invoke>` invokes too.
#[async_trait]
impl<T: Invoke + ?Sized> Invoke for Arc<T> {
    // Written out (not `async fn`) so the inner invoker's boxed future is handed on as it is:
    // an `Arc<dyn Backend>` on the hot path then costs one boxed future, not two.
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
}

/// Forwards every method to the shared value.
#[async_trait]
impl<T: Deploy + ?Sized> Deploy for Arc<T> {
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
    async fn namespaces(&self) -> Result<Vec<String>> {
        (**self).namespaces().await
    }
    fn info(&self) -> ProviderInfo {
        (**self).info()
    }
    async fn wait_ready(&self, function: &FunctionRef, timeout: Duration) -> Result<bool> {
        (**self).wait_ready(function, timeout).await
    }
}

/// Forwards every method to the shared value.
#[async_trait]
impl<T: Secrets + ?Sized> Secrets for Arc<T> {
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
}

/// Forwards to the shared value.
#[async_trait]
impl<T: Logs + ?Sized> Logs for Arc<T> {
    async fn logs(&self, request: LogsRequest) -> Result<LogStream> {
        (**self).logs(request).await
    }
}

/// Any [`Invoke`] as a `tower::Service<Invocation>`: the bottom of a layer stack. Cloning it
/// clones an `Arc`; it is always ready.
pub struct InvokeService<I: ?Sized = dyn Invoke> {
    invoker: Arc<I>,
}

impl<I: ?Sized> Clone for InvokeService<I> {
    fn clone(&self) -> Self {
        InvokeService { invoker: self.invoker.clone() }
    }
}

impl<I: ?Sized> std::fmt::Debug for InvokeService<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvokeService").finish_non_exhaustive()
    }
}

impl<I: Invoke + ?Sized> InvokeService<I> {
    /// Wraps a shared invoker.
    pub fn new(invoker: Arc<I>) -> Self {
        InvokeService { invoker }
    }

    /// The wrapped invoker.
    pub fn invoker(&self) -> &Arc<I> {
        &self.invoker
    }
}

impl<I: Invoke + ?Sized> tower::Service<Invocation> for InvokeService<I> {
    type Response = Response;
    type Error = Error;
    type Future = InvokeFuture<'static>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, inv: Invocation) -> Self::Future {
        let invoker = self.invoker.clone();
        Box::pin(async move { invoker.invoke(inv).await })
    }
}

/// A boxed, cloneable invoke service: what a layer stack over an [`InvokeService`] can be
/// erased to.
pub type BoxInvokeService = tower::util::BoxCloneSyncService<Invocation, Response, Error>;

/// A cloneable `tower::Service<Invocation>` (a layer stack, say) as an [`Invoke`]: each
/// invocation goes through a clone of the service, polled ready first.
#[derive(Clone, Debug)]
pub struct ServiceInvoke<S> {
    service: S,
}

impl<S> ServiceInvoke<S> {
    /// Invokes through `service`.
    pub fn new(service: S) -> Self {
        ServiceInvoke { service }
    }

    /// The service.
    pub fn service(&self) -> &S {
        &self.service
    }
}

#[async_trait]
impl<S> Invoke for ServiceInvoke<S>
where
    S: tower::Service<Invocation, Response = Response, Error = Error>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    async fn invoke(&self, invocation: Invocation) -> Result<Response> {
        use tower::ServiceExt;
        self.service.clone().oneshot(invocation).await
    }
}

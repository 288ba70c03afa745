//! Invocations: which function, the HTTP request it receives, and the context a handler sees.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::body::Body;
use crate::spec::DEFAULT_NAMESPACE;

/// A function's name and namespace. Parses and prints as `name.namespace`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FunctionRef {
    /// The function name.
    pub name: String,
    /// The namespace.
    pub namespace: String,
}

impl FunctionRef {
    /// A reference to `name` in `namespace`.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        FunctionRef { name: name.into(), namespace: namespace.into() }
    }

    /// Parses `name` or `name.namespace`; a bare name gets `default_namespace`.
    pub fn parse(s: &str, default_namespace: &str) -> Self {
        match s.split_once('.') {
            Some((n, ns)) if !ns.is_empty() => FunctionRef::new(n, ns),
            _ => FunctionRef::new(s.trim_end_matches('.'), default_namespace),
        }
    }

    /// `name` in [`DEFAULT_NAMESPACE`].
    pub fn default_ns(name: impl Into<String>) -> Self {
        FunctionRef::new(name, DEFAULT_NAMESPACE)
    }
}

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

impl From<&str> for FunctionRef {
    fn from(s: &str) -> Self {
        FunctionRef::parse(s, DEFAULT_NAMESPACE)
    }
}

/// A unique invocation (call, activation) id: 32 lowercase hex characters.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct InvocationId(Arc<str>);

impl InvocationId {
    /// A new random id.
    pub fn new() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let v: u128 = rand::random();
        let mut buf = [0u8; 32];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((v >> (124 - 4 * i)) & 0xf) as usize];
        }
        // Only ASCII hex digits were written.
        InvocationId(std::str::from_utf8(&buf).unwrap_or_default().into())
    }

    /// Uses a given id (for example an `X-Call-Id` header a caller sent).
    pub fn from_string(s: impl Into<String>) -> Self {
        InvocationId(s.into().into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for InvocationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request to invoke a function: the target, an id, and the HTTP request it receives.
///
/// The request's URI carries the path suffix (after `/function/NAME`) and the query.
#[derive(Debug)]
pub struct Invocation {
    /// The invocation id (`X-Call-Id`).
    pub id: InvocationId,
    /// The function.
    pub function: FunctionRef,
    /// The HTTP request as the function sees it.
    pub request: http::Request<Body>,
}

impl Invocation {
    /// An invocation of `function` with `request`, under a new id.
    pub fn new(function: impl Into<FunctionRef>, request: http::Request<Body>) -> Self {
        Invocation { id: InvocationId::new(), function: function.into(), request }
    }

    /// A `POST /` with `body`.
    pub fn post(function: impl Into<FunctionRef>, body: impl Into<Body>) -> Self {
        let mut req = http::Request::new(body.into());
        *req.method_mut() = http::Method::POST;
        Invocation::new(function, req)
    }

    /// A `GET` of `path_and_query` (for example `/items?limit=3`) with an empty body.
    /// An unparsable path gives `/`.
    pub fn get(function: impl Into<FunctionRef>, path_and_query: &str) -> Self {
        let mut req = http::Request::new(Body::empty());
        *req.uri_mut() = path_and_query.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        Invocation::new(function, req)
    }

    /// A copy, if the body is in memory (retries use it).
    pub fn try_clone(&self) -> Option<Invocation> {
        let body = self.request.body().try_clone()?;
        let mut req = http::Request::new(body);
        *req.method_mut() = self.request.method().clone();
        *req.uri_mut() = self.request.uri().clone();
        *req.version_mut() = self.request.version();
        *req.headers_mut() = self.request.headers().clone();
        Some(Invocation { id: self.id.clone(), function: self.function.clone(), request: req })
    }
}

/// How the instance that served an invocation was obtained (reported in activation
/// annotations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    /// An instance that was running and idle.
    Warm,
    /// A paused instance that was resumed.
    Resumed,
    /// A prewarmed generic instance that was initialised for this function.
    Prewarmed,
    /// A new instance was created.
    Cold,
}

/// How long a backend may hold an invocation waiting for a busy instance, put in the
/// request's extensions by the caller. The gateway gives half its upstream timeout, so a
/// caller kept waiting behind `maxConcurrency` gets a prompt 429 with `Retry-After` from the
/// backend rather than the gateway's 504 for a request that never started. Backends wait the
/// shorter of this and their own queue timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitBudget(pub std::time::Duration);

impl WaitBudget {
    /// The budget in `request`'s extensions, if any.
    pub fn of<B>(request: &http::Request<B>) -> Option<std::time::Duration> {
        request.extensions().get::<WaitBudget>().map(|b| b.0)
    }
}

/// Facts about how an invocation was served; backends insert it into the response's
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationMeta {
    /// The instance that served it.
    pub instance: String,
    /// How that instance was obtained.
    pub start: StartKind,
    /// Time spent waiting before the function ran (queueing, scale from zero).
    pub wait_time: Duration,
    /// Initialisation time on a cold or prewarmed start.
    pub init_time: Option<Duration>,
}

/// A log sink a handler writes to; lines end up in the instance's logs.
#[derive(Clone, Default)]
pub struct LogSink(Option<LogFn>);

/// The function behind a [`LogSink`].
type LogFn = Arc<dyn Fn(&str) + Send + Sync>;

impl LogSink {
    /// A sink calling `f` for each line.
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        LogSink(Some(Arc::new(f)))
    }

    /// Writes one line.
    pub fn log(&self, line: &str) {
        if let Some(f) = &self.0 {
            f(line)
        }
    }
}

impl fmt::Debug for LogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogSink")
    }
}

/// What a handler knows about the invocation it serves: found in the request's extensions
/// (see [`Context::of`]).
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The invocation id.
    pub id: Option<InvocationId>,
    /// The function.
    pub function: Option<FunctionRef>,
    /// The instance serving it.
    pub instance: Option<String>,
    /// Environment variables from the spec.
    pub env: Arc<BTreeMap<String, String>>,
    /// Secrets the spec names, by name.
    pub secrets: Arc<BTreeMap<String, Bytes>>,
    /// When the invocation must be finished.
    pub deadline: Option<Instant>,
    /// Where log lines go.
    pub logger: LogSink,
}

impl Context {
    /// The context in a request's extensions, or an empty one.
    pub fn of<B>(req: &http::Request<B>) -> Context {
        req.extensions().get::<Context>().cloned().unwrap_or_default()
    }

    /// An environment variable.
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str)
    }

    /// A secret's value.
    pub fn secret(&self, name: &str) -> Option<&Bytes> {
        self.secrets.get(name)
    }

    /// Writes a line to the instance's logs.
    pub fn log(&self, line: impl AsRef<str>) {
        self.logger.log(line.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        let r = FunctionRef::parse("echo.dev", "openfaas-fn");
        assert_eq!(r, FunctionRef::new("echo", "dev"));
        assert_eq!(r.to_string(), "echo.dev");
        assert_eq!(FunctionRef::parse("echo", "x").namespace, "x");
        let id = InvocationId::new();
        assert_eq!(id.as_str().len(), 32);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(id, InvocationId::new());
    }

    #[test]
    fn clone_buffered_invocation() {
        let inv = Invocation::post("f", "body");
        let c = inv.try_clone().unwrap();
        assert_eq!(c.id, inv.id);
        assert_eq!(c.request.method(), http::Method::POST);
    }
}

//! The asynchronous invocation queue contract. Implementations live in `faas-queue`
//! (in-memory and Kafka).

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::activation::{epoch_millis, Activation, ActivationResponse};
use crate::body::Body;
use crate::error::{Error, Result, StatusCode};
use crate::event::Delivery;
use crate::invocation::{FunctionRef, Invocation, InvocationId, InvocationMeta};

/// The request header that asks for ordering: asynchronous calls of one function with the
/// same value are delivered in the order they were accepted (see [`QueuedInvocation::key`]);
/// calls without it are spread over the queue's partitions.
pub const QUEUE_KEY_HEADER: &str = "x-queue-key";

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
    use base64::alphabet;
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::{DecodePaddingMode, Engine};
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Standard alphabet (`+`, `/`); encodes with `=` padding, decodes with or without it
    /// and ignores nonzero bits after the last byte, as lenient as the clients (Basic auth,
    /// `rawValue` secrets) that send it.
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_encode_padding(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );

    /// Standard base64 with padding.
    pub fn encode(input: &[u8]) -> String {
        ENGINE.encode(input)
    }

    /// Decodes standard base64, padded or not.
    pub fn decode(input: &str) -> Result<Vec<u8>, String> {
        ENGINE.decode(input).map_err(|e| format!("invalid base64: {e}"))
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
        let uri = if self.query.is_empty() && (self.path.is_empty() || self.path == "/") {
            http::Uri::from_static("/")
        } else {
            let pq = if self.query.is_empty() {
                self.path.clone()
            } else {
                format!("{}?{}", if self.path.is_empty() { "/" } else { &self.path }, self.query)
            };
            http::Uri::try_from(pq)
                .map_err(|e: http::uri::InvalidUri| Error::invalid("path", e.to_string()))?
        };
        let mut req = http::Request::new(Body::from(self.body.clone()));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        req.headers_mut().reserve(self.headers.len());
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

/// The header that carries the callback URL on `/async-function` requests.
pub const CALLBACK_URL_HEADER: &str = "x-callback-url";

impl QueuedInvocation {
    /// Builds a queued invocation from an incoming request's parts: method, query and headers
    /// come from `parts`, `path` is the suffix after `/async-function/NAME` (empty for none),
    /// and the callback URL from the `X-Callback-Url` header (which is not forwarded to the
    /// function). Header values that are not UTF-8 are dropped. `queued_at` is now.
    pub fn from_parts(
        call_id: InvocationId,
        function: &FunctionRef,
        parts: &http::request::Parts,
        path: &str,
        body: Bytes,
    ) -> Self {
        let mut callback_url = None;
        let mut headers = Vec::with_capacity(parts.headers.len());
        for (k, v) in &parts.headers {
            let Ok(v) = v.to_str() else { continue };
            if k.as_str() == CALLBACK_URL_HEADER {
                callback_url = Some(v.to_string());
            } else {
                headers.push((k.as_str().to_string(), v.to_string()));
            }
        }
        QueuedInvocation {
            call_id,
            function: function.name.clone(),
            namespace: function.namespace.clone(),
            method: parts.method.as_str().to_string(),
            path: path.to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            headers,
            body,
            callback_url,
            attempt: 0,
            queued_at: epoch_millis(std::time::SystemTime::now()),
        }
    }

    /// The partition key. By default the call id, so a backend that partitions by key
    /// (Kafka) spreads even one function's calls over every partition and every worker;
    /// calls that carry the header [`QUEUE_KEY_HEADER`] share the key
    /// `namespace/function/value`, so such a backend delivers the calls with one value in
    /// publish order.
    pub fn key(&self) -> String {
        match self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(QUEUE_KEY_HEADER)) {
            Some((_, v)) => format!("{}/{}/{}", self.namespace, self.function, v),
            None => self.call_id.as_str().to_string(),
        }
    }
}

/// Checks a callback URL: an absolute `http://` or `https://` URL with a host. Gives
/// [`Error::InvalidSpec`] naming `callback_url` otherwise, so a gateway can answer 400.
pub fn parse_callback_url(url: &str) -> Result<http::Uri> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| Error::invalid("callback_url", e.to_string()))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(Error::invalid(
                "callback_url",
                format!("scheme must be http or https, got {other:?}"),
            ))
        }
        None => return Err(Error::invalid("callback_url", "must be an absolute URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(Error::invalid("callback_url", "has no host"));
    }
    Ok(uri)
}

/// How deep an async queue is: what waits and what was dead-lettered, in all and per
/// function. Answered by [`QueuePublisher::depth`] (the gateway's `GET /system/queue` and
/// the portal's overview).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueDepth {
    /// Invocations accepted and not yet delivered to a worker.
    pub waiting: u64,
    /// Invocations delivered to a worker and not yet settled (running or retrying), where
    /// the queue knows it (`None` for a queue whose consumers run elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
    /// Invocations that ran out of attempts and went to the dead letters (since the queue
    /// started, or as the dead-letter topic holds them).
    pub dead_letters: u64,
    /// Whether [`QueueDepth::functions`] is complete: `false` for a queue that only knows
    /// its totals (Kafka counts offsets, not functions).
    pub per_function: bool,
    /// Per function, keyed `name.namespace`; a function with nothing waiting and no dead
    /// letter is left out.
    pub functions: std::collections::BTreeMap<String, FunctionQueueDepth>,
}

/// One function's share of a [`QueueDepth`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionQueueDepth {
    /// Its invocations waiting.
    pub waiting: u64,
    /// Its invocations dead-lettered.
    pub dead_letters: u64,
}

impl QueueDepth {
    /// The entry of function `name` in `namespace`, created empty when missing.
    pub fn function_mut(&mut self, name: &str, namespace: &str) -> &mut FunctionQueueDepth {
        self.functions.entry(format!("{name}.{namespace}")).or_default()
    }
}

/// Publishes queued invocations. A full queue answers [`Error::Overloaded`]; it never drops
/// an accepted item.
#[async_trait]
pub trait QueuePublisher: Send + Sync + 'static {
    /// Enqueues one invocation. `Ok` means it is durably accepted (as durable as the
    /// backend is).
    async fn publish(&self, item: QueuedInvocation) -> Result<()>;

    /// Enqueues several invocations, one result per item in order. Backends that pipeline
    /// (Kafka) override it to have them all in flight at once; the default publishes one
    /// after the other.
    async fn publish_batch(&self, items: Vec<QueuedInvocation>) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.publish(item).await);
        }
        out
    }

    /// Whether the queue can take calls now, as far as the publisher knows: `Err` names
    /// why not (a gateway answers `/healthz` with 503 and the reason). Wrappers forward
    /// it; the default is healthy.
    fn health(&self) -> Result<()> {
        Ok(())
    }

    /// How deep the queue is now ([`QueueDepth`]). Wrappers forward it; the default is
    /// [`Error::NotSupported`], for a publisher that cannot tell.
    async fn depth(&self) -> Result<QueueDepth> {
        Err(Error::NotSupported { operation: "queue depth".into() })
    }
}

/// Consumes queued invocations with explicit acknowledgement (at least once).
///
/// Acknowledge a delivery only once its invocation has finished (succeeded, failed for good
/// or dead-lettered); a delivery dropped unsettled, or a consumer that stops without
/// acknowledging, leaves the item to be delivered again.
#[async_trait]
pub trait QueueConsumer: Send + Sync + 'static {
    /// The next item; `Ok(None)` when the queue is closed.
    async fn next(&self) -> Result<Option<Delivery<QueuedInvocation>>>;

    /// Waits for at least one item, then also takes whatever else is ready, up to `max`
    /// items in all (at least 1); an empty vector when the queue is closed. Each delivery
    /// is settled on its own, as one from [`QueueConsumer::next`]. Backends that can hand
    /// out several items per wake-up (the in-memory queue) override it; the default is one
    /// [`QueueConsumer::next`].
    async fn next_batch(&self, max: usize) -> Result<Vec<Delivery<QueuedInvocation>>> {
        let _ = max;
        Ok(self.next().await?.into_iter().collect())
    }

    /// Stops consuming and releases the consumer's share of the queue (for Kafka: commits
    /// what was acknowledged and leaves the group, so other consumers take over). Items not
    /// yet acknowledged are delivered again later. The default does nothing.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// An invocation that ran out of attempts, with its last error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The invocation as it was queued (with `attempt` set to the attempts made).
    pub item: QueuedInvocation,
    /// The last error (an error message or `status 503: <body>`).
    pub error: String,
    /// The HTTP status of the last attempt, if the function answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// When it was dead-lettered (milliseconds since the Unix epoch).
    pub dead_lettered_at: u64,
}

/// Where invocations that ran out of attempts go (a dead-letter queue or topic).
#[async_trait]
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Stores one dead letter durably.
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()>;
}

/// Where an asynchronous invocation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AsyncState {
    /// Accepted and waiting in the queue.
    Queued,
    /// A worker is invoking it (possibly retrying).
    Running,
    /// The function answered 2xx.
    Succeeded,
    /// Finished for good without success: a non-retryable status or error, or bad input
    /// (unknown function, oversized payload, malformed request or callback URL).
    Failed,
    /// Retryable failures until the maximum attempts; sent to the dead letters.
    DeadLettered,
}

impl AsyncState {
    /// Whether the invocation is finished (succeeded, failed or dead-lettered).
    pub fn is_terminal(self) -> bool {
        matches!(self, AsyncState::Succeeded | AsyncState::Failed | AsyncState::DeadLettered)
    }

    /// Whether a call in `state` has nothing left to do: finished, and its callback (if it
    /// has one, `has_callback`) attempted (`callback_attempted`).
    pub fn settled(state: AsyncState, has_callback: bool, callback_attempted: bool) -> bool {
        state.is_terminal() && (!has_callback || callback_attempted)
    }

    /// `queued`, `running`, `succeeded`, `failed` or `dead-lettered`.
    pub fn as_str(self) -> &'static str {
        match self {
            AsyncState::Queued => "queued",
            AsyncState::Running => "running",
            AsyncState::Succeeded => "succeeded",
            AsyncState::Failed => "failed",
            AsyncState::DeadLettered => "dead-lettered",
        }
    }
}

impl std::fmt::Display for AsyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to the callback POST of an asynchronous invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackOutcome {
    /// Whether the callback URL answered 2xx.
    pub delivered: bool,
    /// POSTs made.
    pub attempts: u32,
    /// The last HTTP status the callback URL answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The last error, if not delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The record of one asynchronous invocation, found by its call id (JSON in camelCase:
/// `callId`, `state`, `attempts`, ..., and `activation`, the OpenWhisk activation record
/// once it finished).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncActivation {
    /// The call id (`X-Call-Id`).
    pub call_id: InvocationId,
    /// Function name.
    pub function: String,
    /// Namespace.
    pub namespace: String,
    /// Where it is.
    pub state: AsyncState,
    /// Invocation attempts started so far.
    pub attempts: u32,
    /// When it was queued (milliseconds since the Unix epoch).
    pub queued_at: u64,
    /// When this record was last written (milliseconds since the Unix epoch).
    pub updated_at: u64,
    /// The HTTP status of the last attempt (the function's, or the error's mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The callback URL, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// What happened to the callback, once attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackOutcome>,
    /// The activation record (start, end, duration, response), once finished (boxed: a
    /// record carries none until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Box<Activation>>,
}

impl AsyncActivation {
    /// The `queued` record of an item just accepted.
    pub fn queued(item: &QueuedInvocation) -> Self {
        AsyncActivation {
            call_id: item.call_id.clone(),
            function: item.function.clone(),
            namespace: item.namespace.clone(),
            state: AsyncState::Queued,
            attempts: item.attempt,
            queued_at: item.queued_at,
            updated_at: epoch_millis(std::time::SystemTime::now()),
            status: None,
            error: None,
            callback_url: item.callback_url.clone(),
            callback: None,
            activation: None,
        }
    }

    /// Whether nothing remains to be done: finished, and the callback (if any) attempted.
    pub fn is_settled(&self) -> bool {
        AsyncState::settled(self.state, self.callback_url.is_some(), self.callback.is_some())
    }
}

/// How far a call has got, as [`ActivationStore::progress`] answers it: what a worker needs
/// to know of a record before it runs a delivery, without a copy of the whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Where it is.
    pub state: AsyncState,
    /// Invocation attempts started so far.
    pub attempts: u32,
    /// When it was queued (milliseconds since the Unix epoch).
    pub queued_at: u64,
    /// Whether nothing remains to be done (see [`AsyncActivation::is_settled`]).
    pub settled: bool,
    /// Whether the record has a callback URL.
    pub has_callback: bool,
}

impl Progress {
    /// The progress a record shows.
    pub fn of(record: &AsyncActivation) -> Self {
        Progress {
            state: record.state,
            attempts: record.attempts,
            queued_at: record.queued_at,
            settled: record.is_settled(),
            has_callback: record.callback_url.is_some(),
        }
    }
}

/// The outcome of an attempt of a queued invocation, written onto its record by
/// [`ActivationStore::put_update`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordUpdate {
    /// The new state.
    pub state: AsyncState,
    /// Invocation attempts started so far.
    pub attempts: u32,
    /// The HTTP status of the last attempt.
    pub status: Option<u16>,
    /// The last error.
    pub error: Option<String>,
    /// The last attempt, once finished: the record's activation is made of it
    /// ([`FinalAttempt::activation`]), by the store when it is read if the store can keep it
    /// compact.
    pub outcome: Option<FinalAttempt>,
    /// When the record is written (milliseconds since the Unix epoch).
    pub updated_at: u64,
}

/// The last attempt of a finished asynchronous invocation: what its OpenWhisk activation
/// record is made of, kept compact, so that a store can build that record only when it is
/// read ([`FinalAttempt::activation`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FinalAttempt {
    /// The HTTP status: the function's, or the error's mapping.
    pub status: u16,
    /// For an attempt that ended in an error rather than an answer: the error's OpenWhisk
    /// status code and its message.
    pub error: Option<(StatusCode, String)>,
    /// The response body kept in the record's `result.body`, if any: UTF-8 text (a body
    /// that is not UTF-8 is not kept).
    pub body: Option<Bytes>,
    /// When the attempt started (milliseconds since the Unix epoch).
    pub start: u64,
    /// When it ended (milliseconds since the Unix epoch).
    pub end: u64,
    /// What the backend reported of the attempt (instance, start kind, wait and init times).
    pub meta: Option<InvocationMeta>,
    /// Invocation attempts made, this one included.
    pub attempts: u32,
}

impl FinalAttempt {
    /// Whether the attempt succeeded (no error, a 2xx status).
    pub fn is_success(&self) -> bool {
        self.error.is_none() && (200..300).contains(&self.status)
    }

    /// The OpenWhisk activation record of the call `call_id` of `function` in `namespace`
    /// that this attempt finished: `response.result` holds `statusCode` and the kept
    /// `body` (or `error` and `statusCode` for an error), and the annotations the backend's
    /// report (`waitTime`, `initTime`, `start`), `attempts` and `kind: async`.
    pub fn activation(
        &self,
        call_id: &InvocationId,
        function: &str,
        namespace: &str,
    ) -> Activation {
        let response = match &self.error {
            Some((code, message)) => {
                let mut result = serde_json::Map::new();
                result.insert("error".into(), message.as_str().into());
                result.insert("statusCode".into(), self.status.into());
                ActivationResponse {
                    status: code.as_str().into(),
                    status_code: *code,
                    success: false,
                    result: result.into(),
                }
            }
            None => {
                let mut result = serde_json::Map::new();
                result.insert("statusCode".into(), self.status.into());
                if let Some(text) = self.body.as_ref().and_then(|b| std::str::from_utf8(b).ok()) {
                    result.insert("body".into(), text.into());
                }
                if self.is_success() {
                    ActivationResponse::success(result.into())
                } else {
                    ActivationResponse {
                        status: StatusCode::ApplicationError.as_str().into(),
                        status_code: StatusCode::ApplicationError,
                        success: false,
                        result: result.into(),
                    }
                }
            }
        };
        let mut a = Activation {
            activation_id: call_id.clone(),
            namespace: namespace.to_string(),
            name: function.to_string(),
            subject: namespace.to_string(),
            version: crate::activation::DEFAULT_VERSION.to_string(),
            publish: false,
            cause: None,
            start: self.start,
            end: self.end.max(self.start),
            duration: self.end.saturating_sub(self.start),
            logs: Vec::new(),
            annotations: Vec::with_capacity(5),
            response,
        };
        if let Some(meta) = &self.meta {
            a.annotate_meta(meta);
        }
        a.annotate("attempts", self.attempts.into());
        a.annotate("kind", "async".into());
        a
    }
}

impl RecordUpdate {
    /// The record `update` makes of `item`'s call, given the record it has now: that of
    /// [`AsyncActivation::queued`] of `item`, with the existing record's `queued_at`, and
    /// the update's fields.
    pub fn apply_to(
        self,
        item: &QueuedInvocation,
        existing: Option<&AsyncActivation>,
    ) -> AsyncActivation {
        let queued_at = existing.map_or(item.queued_at, |e| e.queued_at);
        AsyncActivation {
            state: self.state,
            attempts: self.attempts,
            queued_at,
            updated_at: self.updated_at,
            status: self.status,
            error: self.error,
            activation: self
                .outcome
                .map(|o| Box::new(o.activation(&item.call_id, &item.function, &item.namespace))),
            ..AsyncActivation::queued(item)
        }
    }
}

/// Stores [`AsyncActivation`] records by call id, so a gateway can tell a caller what
/// happened to an asynchronous invocation.
#[async_trait]
pub trait ActivationStore: Send + Sync + 'static {
    /// Writes a record. A [`AsyncState::Queued`] record is written only if none exists for
    /// its call id (a worker may have got there first); any other record replaces the
    /// existing one.
    async fn put(&self, record: AsyncActivation) -> Result<()>;

    /// The record of a call id, if known.
    async fn get(&self, call_id: &InvocationId) -> Result<Option<AsyncActivation>>;

    /// Writes several records (each by the rules of [`ActivationStore::put`], in order),
    /// one result per record. Stores that can write many at once (the in-memory store,
    /// which takes each of its locks once per batch) override it; the default puts them
    /// one after the other.
    async fn put_batch(&self, records: Vec<AsyncActivation>) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            out.push(self.put(record).await);
        }
        out
    }

    /// How far the call has got, if its record is known: a [`ActivationStore::get`] that
    /// answers only what a worker checks before running a delivery. Stores that can answer
    /// without copying the record (the in-memory store) override it; the default is a
    /// `get`.
    async fn progress(&self, call_id: &InvocationId) -> Result<Option<Progress>> {
        Ok(self.get(call_id).await?.as_ref().map(Progress::of))
    }

    /// Writes the outcome of an attempt of `item` (not [`AsyncState::Queued`]): the record
    /// becomes [`RecordUpdate::apply_to`] of the one there is. Stores that can update a
    /// record in place (the in-memory store) override it; the default is a `get`, then a
    /// `put`.
    async fn put_update(&self, item: &QueuedInvocation, update: RecordUpdate) -> Result<()> {
        let existing = self.get(&item.call_id).await?;
        self.put(update.apply_to(item, existing.as_ref())).await
    }

    /// Writes the `queued` records of `items` (each [`AsyncActivation::queued`], by the
    /// rules of [`ActivationStore::put`]: never over an existing record), one result per
    /// item. Stores that can make a record straight from an item (the in-memory store)
    /// override it; the default is a [`ActivationStore::put_batch`].
    async fn put_queued(&self, items: &[QueuedInvocation]) -> Vec<Result<()>> {
        self.put_batch(items.iter().map(AsyncActivation::queued).collect()).await
    }

    /// The store's operations that never wait, if it has them (the in-memory store does):
    /// a worker then reads and writes records without a future per operation. `None` by
    /// default.
    fn immediate(&self) -> Option<&dyn ImmediateActivationStore> {
        None
    }
}

/// An [`ActivationStore`] whose reads and writes never wait (it keeps the records in
/// memory): the same operations, answered at once. They follow the rules of the
/// [`ActivationStore`] methods of the same names.
pub trait ImmediateActivationStore: Send + Sync {
    /// [`ActivationStore::progress`], at once.
    fn progress_now(&self, call_id: &InvocationId) -> Option<Progress>;

    /// [`ActivationStore::put_update`], at once.
    fn put_update_now(&self, item: &QueuedInvocation, update: RecordUpdate);
}

#[async_trait]
impl<T: ActivationStore + ?Sized> ActivationStore for std::sync::Arc<T> {
    async fn put(&self, record: AsyncActivation) -> Result<()> {
        (**self).put(record).await
    }
    async fn get(&self, call_id: &InvocationId) -> Result<Option<AsyncActivation>> {
        (**self).get(call_id).await
    }
    async fn put_batch(&self, records: Vec<AsyncActivation>) -> Vec<Result<()>> {
        (**self).put_batch(records).await
    }
    async fn progress(&self, call_id: &InvocationId) -> Result<Option<Progress>> {
        (**self).progress(call_id).await
    }
    async fn put_update(&self, item: &QueuedInvocation, update: RecordUpdate) -> Result<()> {
        (**self).put_update(item, update).await
    }
    async fn put_queued(&self, items: &[QueuedInvocation]) -> Vec<Result<()>> {
        (**self).put_queued(items).await
    }
    fn immediate(&self) -> Option<&dyn ImmediateActivationStore> {
        (**self).immediate()
    }
}

#[async_trait]
impl<T: QueuePublisher + ?Sized> QueuePublisher for std::sync::Arc<T> {
    async fn publish(&self, item: QueuedInvocation) -> Result<()> {
        (**self).publish(item).await
    }
    async fn publish_batch(&self, items: Vec<QueuedInvocation>) -> Vec<Result<()>> {
        (**self).publish_batch(items).await
    }
    fn health(&self) -> Result<()> {
        (**self).health()
    }
    async fn depth(&self) -> Result<QueueDepth> {
        (**self).depth().await
    }
}

#[async_trait]
impl<T: QueueConsumer + ?Sized> QueueConsumer for std::sync::Arc<T> {
    async fn next(&self) -> Result<Option<Delivery<QueuedInvocation>>> {
        (**self).next().await
    }
    async fn next_batch(&self, max: usize) -> Result<Vec<Delivery<QueuedInvocation>>> {
        (**self).next_batch(max).await
    }
    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_calls_unless_the_caller_asks_for_an_order() {
        let call = |id: &str, headers: Vec<(String, String)>| QueuedInvocation {
            call_id: InvocationId::from_string(id),
            function: "hot".into(),
            namespace: "openfaas-fn".into(),
            method: "POST".into(),
            path: String::new(),
            query: String::new(),
            headers,
            body: Bytes::new(),
            callback_url: None,
            attempt: 0,
            queued_at: 0,
        };
        assert_eq!(call("c1", vec![]).key(), "c1");
        assert_ne!(call("c1", vec![]).key(), call("c2", vec![]).key());
        let ordered = |id| call(id, vec![("X-Queue-Key".into(), "user-7".into())]);
        assert_eq!(ordered("c1").key(), "openfaas-fn/hot/user-7");
        assert_eq!(ordered("c1").key(), ordered("c2").key());
    }

    #[test]
    fn base64_alphabet_padding_and_leniency() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"h"), "aA==");
        assert_eq!(base64_encode(b"he"), "aGU=");
        assert_eq!(base64_encode(b"hel"), "aGVs");
        assert_eq!(base64_encode(&[0xfb, 0xff, 0xbf]), "+/+/");
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aA").unwrap(), b"h");
        assert_eq!(base64_decode("aB==").unwrap(), b"h", "nonzero trailing bits are ignored");
        assert_eq!(base64_decode("").unwrap(), b"");
        for bad in ["aGVs bG8=", "aGVsbG8-", "aGVsbG8_", "a", "aGVsbG8=aGk=", "aGk==="] {
            assert!(base64_decode(bad).is_err(), "{bad}");
        }
    }

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

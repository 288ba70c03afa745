//! The queue test suite shared by the in-memory and the Kafka queue, plus test helpers: a
//! small `Backend`, a callback listener on 127.0.0.1.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use faas_core::prelude::*;
use faas_core::queue::{
    ActivationStore, AsyncState, QueueConsumer, QueuePublisher, QueuedInvocation,
};
use faas_core::{Body, Error, Invocation, InvocationId, Response, Result};
use faas_queue::memory::MemoryDeadLetters;
use faas_queue::store::MemoryActivationStore;
use faas_queue::worker::{Backoff, CallbackPolicy, Worker, WorkerConfig};
use futures::future::BoxFuture;
use futures::FutureExt;

/// The shared queue and worker suite as tests of module `suite`, each over a new
/// `$harness` (an expression making a [`QueueHarness`]).
#[macro_export]
macro_rules! queue_suite {
    ($harness:expr) => {
        mod suite {
            use super::*;

            #[tokio::test]
            async fn round_trip() {
                common::round_trip(&$harness).await;
            }

            #[tokio::test]
            async fn per_function_order() {
                common::per_function_order(&$harness).await;
            }

            #[tokio::test]
            async fn nack_and_drop_redeliver() {
                common::nack_and_drop_redeliver(&$harness).await;
            }

            #[tokio::test]
            async fn unsettled_go_to_next_consumer() {
                common::unsettled_go_to_next_consumer(&$harness).await;
            }

            #[tokio::test]
            async fn worker_success_and_callback() {
                common::worker_success_and_callback(&$harness).await;
            }

            #[tokio::test]
            async fn worker_retries_and_dead_letters() {
                common::worker_retries_and_dead_letters(&$harness).await;
            }

            #[tokio::test]
            async fn worker_bad_input() {
                common::worker_bad_input(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn crash_loses_nothing() {
                common::crash_loses_nothing(&$harness, 400).await;
            }
        }
    };
}

/// Fails a test that takes longer than this.
pub const BOUND: Duration = Duration::from_secs(90);

/// Runs `f` with a time bound.
pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {BOUND:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// A test invoker.

type Handler =
    Arc<dyn Fn(faas_core::Request) -> BoxFuture<'static, Result<Response>> + Send + Sync>;

/// An invoker with handlers registered by function name; everything but `invoke` is
/// unsupported.
#[derive(Default)]
pub struct TestInvoker {
    handlers: Mutex<HashMap<String, Handler>>,
    pub calls: AtomicU64,
}

impl TestInvoker {
    pub fn new() -> Arc<Self> {
        Arc::new(TestInvoker::default())
    }

    pub fn register<F, Fut>(&self, name: &str, f: F)
    where
        F: Fn(faas_core::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response>> + Send + 'static,
    {
        self.handlers.lock().unwrap().insert(name.to_string(), Arc::new(move |r| f(r).boxed()));
    }
}

#[async_trait]
impl Invoke for TestInvoker {
    async fn invoke(&self, invocation: Invocation) -> Result<Response> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let h = self.handlers.lock().unwrap().get(&invocation.function.name).cloned();
        match h {
            Some(h) => h(invocation.request).await,
            None => Err(Error::function_not_found(invocation.function.name)),
        }
    }
}

pub fn response(status: u16, body: impl Into<Bytes>) -> Response {
    let mut r = http::Response::new(Body::from(body.into()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r
}

// ---------------------------------------------------------------------------------------
// A callback listener on 127.0.0.1.

/// One callback POST received.
#[derive(Debug, Clone)]
pub struct Received {
    pub uri: http::Uri,
    pub method: http::Method,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Listens on 127.0.0.1; answers the statuses in `script` first, then 200.
pub struct CallbackServer {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    notify: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CallbackServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CallbackServer {
    pub async fn start(script: Vec<u16>) -> CallbackServer {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/cb", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(tokio::sync::Notify::new());
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let (r2, n2) = (received.clone(), notify.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (r, n, s) = (r2.clone(), n2.clone(), script.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (r, n, s) = (r.clone(), n.clone(), s.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let (parts, body) = req.into_parts();
                            let body =
                                body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let status = s.lock().unwrap().pop_front().unwrap_or(200);
                            if status == 200 {
                                r.lock().unwrap().push(Received {
                                    uri: parts.uri,
                                    method: parts.method,
                                    headers: parts.headers,
                                    body,
                                });
                                n.notify_waiters();
                            }
                            let mut resp =
                                http::Response::new(http_body_util::Full::new(Bytes::new()));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        CallbackServer { url, received, notify, task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `n` callbacks were received.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        bounded("waiting for callbacks", async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let got = self.received();
                if got.len() >= n {
                    return got;
                }
                notified.await;
            }
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// Items and polling.

pub fn item(function: &str, body: impl Into<Bytes>) -> QueuedInvocation {
    QueuedInvocation {
        call_id: InvocationId::new(),
        function: function.into(),
        namespace: faas_core::spec::DEFAULT_NAMESPACE.into(),
        method: "POST".into(),
        path: "/sub/path".into(),
        query: "a=1&b=two".into(),
        headers: vec![
            ("content-type".into(), "text/plain".into()),
            ("x-custom".into(), "v".into()),
        ],
        body: body.into(),
        callback_url: None,
        attempt: 0,
        queued_at: faas_core::activation::epoch_millis(std::time::SystemTime::now()),
    }
}

/// Polls the store (bounded) until `id` reaches a settled state, and returns the record.
pub async fn wait_settled(
    store: &MemoryActivationStore,
    id: &InvocationId,
) -> faas_core::queue::AsyncActivation {
    bounded("waiting for an activation to settle", async {
        loop {
            if let Some(r) = store.get(id).await.unwrap() {
                if r.is_settled() {
                    return r;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A config with fast retries for tests.
pub fn fast_config() -> WorkerConfig {
    let fast = Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
        multiplier: 2.0,
        jitter: true,
    };
    WorkerConfig {
        max_attempts: 3,
        backoff: fast.clone(),
        callback: CallbackPolicy { max_attempts: 4, backoff: fast },
        drain_timeout: Duration::from_secs(10),
        ..WorkerConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// The shared queue suite.

/// What the suite needs from a queue backend.
#[async_trait]
pub trait QueueHarness: Send + Sync + 'static {
    /// A publisher.
    fn publisher(&self) -> Arc<dyn QueuePublisher>;
    /// A new consumer (for Kafka: a new member of the one consumer group).
    async fn consumer(&self) -> Arc<dyn QueueConsumer>;
    /// Stops a consumer the way a crashed process does: `unsettled` deliveries are never
    /// settled, and its share of the queue goes to other consumers.
    async fn crash(
        &self,
        consumer: Arc<dyn QueueConsumer>,
        unsettled: Vec<faas_core::Delivery<QueuedInvocation>>,
    );
}

/// A harness for a queue living in this process (the in-memory queue, the durable queue):
/// a publisher, and a way to make consumers; a crashed consumer's deliveries are dropped,
/// which puts them back.
pub struct InProcess {
    pub publisher: Arc<dyn QueuePublisher>,
    pub consumer: Box<dyn Fn() -> Arc<dyn QueueConsumer> + Send + Sync>,
}

#[async_trait]
impl QueueHarness for InProcess {
    fn publisher(&self) -> Arc<dyn QueuePublisher> {
        self.publisher.clone()
    }
    async fn consumer(&self) -> Arc<dyn QueueConsumer> {
        (self.consumer)()
    }
    async fn crash(
        &self,
        _consumer: Arc<dyn QueueConsumer>,
        unsettled: Vec<faas_core::Delivery<QueuedInvocation>>,
    ) {
        drop(unsettled);
    }
}

async fn next(c: &dyn QueueConsumer) -> faas_core::Delivery<QueuedInvocation> {
    bounded("waiting for a delivery", c.next()).await.expect("next").expect("an item, not end")
}

/// Published items arrive intact, and acknowledged ones are not delivered again.
pub async fn round_trip(h: &dyn QueueHarness) {
    let p = h.publisher();
    let c = h.consumer().await;
    let mut sent =
        vec![item("a", "one"), item("b", Bytes::from_static(b"\x00\xffbin")), item("c", "")];
    sent[0].callback_url = Some("http://127.0.0.1:9/cb".into());
    sent[1].attempt = 2;
    for i in &sent {
        p.publish(i.clone()).await.unwrap();
    }
    let mut got = HashMap::new();
    for _ in 0..sent.len() {
        let d = next(&*c).await;
        assert_eq!(d.redeliveries, 0);
        got.insert(d.item().call_id.clone(), d.item().clone());
        d.ack().await.unwrap();
    }
    for i in &sent {
        assert_eq!(got.get(&i.call_id), Some(i), "item {} arrived intact", i.call_id.as_str());
    }
    // Nothing comes back: the next delivery is a new marker.
    let marker = item("marker", "m");
    p.publish(marker.clone()).await.unwrap();
    let d = next(&*c).await;
    assert_eq!(d.item().call_id, marker.call_id, "an acknowledged item was delivered again");
    d.ack().await.unwrap();
    c.close().await.unwrap();
}

/// Invocations of one function that ask for an order (the same `X-Queue-Key`) arrive in
/// publish order.
pub async fn per_function_order(h: &dyn QueueHarness) {
    let p = h.publisher();
    let c = h.consumer().await;
    let n = 30;
    let ordered = |f: &str, i: u32| {
        let mut it = item(f, format!("{i}"));
        it.headers.push((faas_core::queue::QUEUE_KEY_HEADER.into(), "one-order".into()));
        it
    };
    let items: Vec<_> = (0..n).flat_map(|i| [ordered("f", i), ordered("g", i)]).collect();
    let results = p.publish_batch(items).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
    for _ in 0..2 * n {
        let d = next(&*c).await;
        let v: u32 = std::str::from_utf8(&d.item().body).unwrap().parse().unwrap();
        seen.entry(d.item().function.clone()).or_default().push(v);
        d.ack().await.unwrap();
    }
    for f in ["f", "g"] {
        assert_eq!(seen[f], (0..n).collect::<Vec<_>>(), "order of {f}");
    }
    c.close().await.unwrap();
}

/// A nacked delivery, and one dropped unsettled, come back.
pub async fn nack_and_drop_redeliver(h: &dyn QueueHarness) {
    let p = h.publisher();
    let c = h.consumer().await;
    let a = item("a", "nacked");
    p.publish(a.clone()).await.unwrap();
    let d = next(&*c).await;
    assert_eq!(d.item().call_id, a.call_id);
    d.nack().await.unwrap();
    let d = next(&*c).await;
    assert_eq!(*d.item(), a);
    assert!(d.redeliveries >= 1, "redelivery counted");
    drop(d);
    let d = next(&*c).await;
    assert_eq!(*d.item(), a);
    assert!(d.redeliveries >= 2, "redelivery counted");
    d.ack().await.unwrap();
    c.close().await.unwrap();
}

/// Items a consumer received but never settled (it crashed) go to the next consumer.
pub async fn unsettled_go_to_next_consumer(h: &dyn QueueHarness) {
    let p = h.publisher();
    let c1 = h.consumer().await;
    // One order (one partition on Kafka), so the acknowledged two precede the held three.
    let items: Vec<_> = (0..5)
        .map(|i| {
            let mut it = item("f", format!("{i}"));
            it.headers.push((faas_core::queue::QUEUE_KEY_HEADER.into(), "one-order".into()));
            it
        })
        .collect();
    for i in &items {
        p.publish(i.clone()).await.unwrap();
    }
    // c1 receives all five, acknowledges the first two (after receiving the others, so an
    // implementation committing "everything received" would lose them) and is stopped
    // holding the other three.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next(&*c1).await);
    }
    for d in held.drain(..2) {
        d.ack().await.unwrap();
    }
    h.crash(c1, held).await;
    let c2 = h.consumer().await;
    let want: HashSet<_> = items[2..].iter().map(|i| i.call_id.clone()).collect();
    let mut got = HashSet::new();
    while got.len() < want.len() {
        let d = next(&*c2).await;
        assert!(
            want.contains(&d.item().call_id),
            "acknowledged item {:?} came back",
            d.item().body
        );
        got.insert(d.item().call_id.clone());
        d.ack().await.unwrap();
    }
    c2.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The worker suite.

pub struct Rig {
    pub invoker: Arc<TestInvoker>,
    pub store: Arc<MemoryActivationStore>,
    pub dead: MemoryDeadLetters,
}

impl Rig {
    pub fn new() -> Rig {
        let invoker = TestInvoker::new();
        invoker.register("echo", |req: faas_core::Request| async move {
            let (parts, body) = req.into_parts();
            let body = body.collect_limited(1 << 20).await?;
            let mut r = response(
                200,
                format!("{} {} {}", parts.method, parts.uri, String::from_utf8_lossy(&body)),
            );
            r.headers_mut().insert("content-type", http::HeaderValue::from_static("text/x-echo"));
            Ok(r)
        });
        Rig {
            invoker,
            store: Arc::new(MemoryActivationStore::default()),
            dead: MemoryDeadLetters::default(),
        }
    }

    pub fn worker(&self, consumer: Arc<dyn QueueConsumer>, config: WorkerConfig) -> Worker {
        Worker::new(self.invoker.clone(), consumer, self.store.clone(), config)
            .with_dead_letters(Arc::new(self.dead.clone()))
    }
}

/// Success with a callback carrying the response and the OpenFaaS headers; the record says
/// what happened.
pub async fn worker_success_and_callback(h: &dyn QueueHarness) {
    let rig = Rig::new();
    let cb = CallbackServer::start(vec![503]).await; // the first callback POST fails
    let worker = rig.worker(h.consumer().await, fast_config()).spawn();
    let mut it = item("echo", "hi");
    it.callback_url = Some(cb.url.clone());
    let publisher = faas_queue::TrackedPublisher::new(h.publisher(), rig.store.clone());
    publisher.publish(it.clone()).await.unwrap();
    let got = cb.wait_for(1).await;
    let r = &got[0];
    assert_eq!(r.headers["x-call-id"], it.call_id.as_str());
    assert_eq!(r.headers["x-function-status"], "200");
    assert_eq!(r.headers["x-function-name"], "echo");
    assert_eq!(r.headers["content-type"], "text/x-echo");
    let secs: f64 = r.headers["x-duration-seconds"].to_str().unwrap().parse().unwrap();
    assert_eq!(&r.body[..], b"POST /sub/path?a=1&b=two hi");
    let rec = wait_settled(&rig.store, &it.call_id).await;
    assert_eq!(rec.state, AsyncState::Succeeded);
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.status, Some(200));
    let cbo = rec.callback.unwrap();
    assert!(cbo.delivered);
    assert_eq!(cbo.attempts, 2, "the callback was retried after a 503");
    let act = rec.activation.unwrap();
    assert!(act.response.success);
    assert_eq!(act.response.result["body"], "POST /sub/path?a=1&b=two hi");
    // The callback's duration is the attempt's, as the activation record gives it (ms).
    assert!(
        (secs * 1000.0 - act.duration as f64).abs() <= 1.0,
        "x-duration-seconds {secs} vs the activation's {} ms",
        act.duration
    );
    let json = serde_json::to_value(rig.store.get_now(&it.call_id).unwrap()).unwrap();
    assert_eq!(json["state"], "succeeded");
    assert_eq!(json["callId"], it.call_id.as_str());
    worker.shutdown().await.unwrap();
}

/// Retryable statuses are retried (honouring Retry-After) and then succeed, or end in the
/// dead letters with the last error after the maximum attempts; other failures are not
/// retried.
pub async fn worker_retries_and_dead_letters(h: &dyn QueueHarness) {
    let rig = Rig::new();
    let flaky_calls = Arc::new(AtomicU64::new(0));
    let fc = flaky_calls.clone();
    rig.invoker.register("flaky", move |_req| {
        let n = fc.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                let mut r = response(503, "busy");
                r.headers_mut().insert("retry-after", http::HeaderValue::from_static("1"));
                Ok(r)
            } else {
                Ok(response(200, "ok"))
            }
        }
    });
    rig.invoker.register("down", |_req| async { Ok(response(502, "bad gateway")) });
    rig.invoker.register("overloaded", |_req| async { Err(Error::overloaded("too busy")) });
    rig.invoker.register("teapot", |_req| async { Ok(response(418, "no")) });
    let config = WorkerConfig { max_attempts: 3, ..fast_config() };
    let worker = rig.worker(h.consumer().await, config).spawn();
    let p = h.publisher();
    let (flaky, down, over, teapot) =
        (item("flaky", "x"), item("down", "x"), item("overloaded", "x"), item("teapot", "x"));
    let t0 = std::time::Instant::now();
    for i in [&flaky, &down, &over, &teapot] {
        p.publish(i.clone()).await.unwrap();
    }
    let rec = wait_settled(&rig.store, &flaky.call_id).await;
    assert_eq!(rec.state, AsyncState::Succeeded);
    assert_eq!(rec.attempts, 3);
    assert!(t0.elapsed() >= Duration::from_secs(2), "Retry-After: 1 was honoured twice");

    let rec = wait_settled(&rig.store, &down.call_id).await;
    assert_eq!(rec.state, AsyncState::DeadLettered);
    assert_eq!(rec.attempts, 3);
    assert_eq!(rec.status, Some(502));
    assert!(rec.error.as_deref().unwrap().contains("bad gateway"), "{:?}", rec.error);

    let rec = wait_settled(&rig.store, &over.call_id).await;
    assert_eq!(rec.state, AsyncState::DeadLettered);
    assert_eq!(rec.status, Some(429));
    assert!(rec.error.as_deref().unwrap().contains("too busy"));

    let rec = wait_settled(&rig.store, &teapot.call_id).await;
    assert_eq!(rec.state, AsyncState::Failed);
    assert_eq!(rec.attempts, 1, "418 is not retried");
    assert_eq!(rec.activation.unwrap().response.status_code.as_u8(), 1);

    let letters = rig.dead.letters();
    let ids: HashSet<_> = letters.iter().map(|l| l.item.call_id.clone()).collect();
    assert_eq!(ids, HashSet::from([down.call_id.clone(), over.call_id.clone()]));
    let l = letters.iter().find(|l| l.item.call_id == down.call_id).unwrap();
    assert_eq!(l.item.attempt, 3);
    assert_eq!(l.status, Some(502));
    assert!(l.error.contains("bad gateway"));
    worker.shutdown().await.unwrap();
}

/// Bad input ends in a visible failed activation, never a stuck message: unknown function,
/// oversized payload, malformed callback URL, malformed method and header.
pub async fn worker_bad_input(h: &dyn QueueHarness) {
    let rig = Rig::new();
    let cb = CallbackServer::start(vec![]).await;
    let config = WorkerConfig { max_payload_bytes: 1024, ..fast_config() };
    let worker = rig.worker(h.consumer().await, config).spawn();
    let p = h.publisher();
    let mut unknown = item("no-such-function", "x");
    unknown.callback_url = Some(cb.url.clone());
    let big = item("echo", vec![b'x'; 4096]);
    let mut bad_cb = item("echo", "x");
    bad_cb.callback_url = Some("not a url".into());
    let mut ftp_cb = item("echo", "x");
    ftp_cb.callback_url = Some("ftp://127.0.0.1/x".into());
    let mut bad_method = item("echo", "x");
    bad_method.method = "GET POST".into();
    let mut bad_header = item("echo", "x");
    bad_header.headers.push(("bad header".into(), "v".into()));
    let good = item("echo", "fine");
    let all = [&unknown, &big, &bad_cb, &ftp_cb, &bad_method, &bad_header, &good];
    for i in all {
        p.publish(i.clone()).await.unwrap();
    }
    let rec = wait_settled(&rig.store, &unknown.call_id).await;
    assert_eq!(rec.state, AsyncState::Failed);
    assert_eq!(rec.status, Some(404));
    assert_eq!(rec.attempts, 1);
    assert!(rec.error.unwrap().contains("no-such-function"));
    let got = cb.wait_for(1).await;
    assert_eq!(got[0].headers["x-function-status"], "404");

    let rec = wait_settled(&rig.store, &big.call_id).await;
    assert_eq!(rec.state, AsyncState::Failed);
    assert_eq!(rec.status, Some(413));
    assert_eq!(rec.attempts, 0, "never invoked");

    for (i, field) in [
        (&bad_cb, "callback_url"),
        (&ftp_cb, "callback_url"),
        (&bad_method, "method"),
        (&bad_header, "headers.bad header"),
    ] {
        let rec = wait_settled(&rig.store, &i.call_id).await;
        assert_eq!(rec.state, AsyncState::Failed, "{field}");
        assert_eq!(rec.status, Some(400), "{field}");
        assert!(rec.error.as_deref().unwrap().contains(field), "{field}: {:?}", rec.error);
        assert_eq!(rec.attempts, 0);
    }
    let rec = wait_settled(&rig.store, &good.call_id).await;
    assert_eq!(rec.state, AsyncState::Succeeded);
    let stats = worker.stats().clone();
    assert_eq!(stats.failed.load(Ordering::SeqCst), 6);
    assert_eq!(stats.succeeded.load(Ordering::SeqCst), 1);
    worker.shutdown().await.unwrap();
    // Every invocation was acknowledged: nothing is left for another consumer.
    let c = h.consumer().await;
    let marker = item("marker", "m");
    p.publish(marker.clone()).await.unwrap();
    let d = next(&*c).await;
    assert_eq!(d.item().call_id, marker.call_id, "a bad-input message was left in the queue");
    d.ack().await.unwrap();
    c.close().await.unwrap();
}

/// How many of `items` have no completion in `completions` (keyed by body).
pub fn not_completed(items: &[QueuedInvocation], completions: &HashMap<String, u32>) -> usize {
    items.iter().filter(|i| !completions.contains_key(&*String::from_utf8_lossy(&i.body))).count()
}

/// A worker stopped abruptly mid-invocation; another takes over; every one of `n` accepted
/// invocations completes (duplicates allowed, losses not).
pub async fn crash_loses_nothing(h: &dyn QueueHarness, n: usize) {
    let completions: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let store = Arc::new(MemoryActivationStore::default());

    // Worker A completes `n / 4` invocations, then hangs in every later one.
    let inv_a = TestInvoker::new();
    let done_a = Arc::new(AtomicU64::new(0));
    let hanging = Arc::new(AtomicU64::new(0));
    {
        let (c, d, hg) = (completions.clone(), done_a.clone(), hanging.clone());
        let quota = (n / 4) as u64;
        inv_a.register("work", move |req| {
            let (c, d, hg) = (c.clone(), d.clone(), hg.clone());
            async move {
                let body = req.into_body().collect_bytes().await?;
                if d.load(Ordering::SeqCst) >= quota {
                    hg.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                d.fetch_add(1, Ordering::SeqCst);
                *c.lock()
                    .unwrap()
                    .entry(String::from_utf8_lossy(&body).into_owned())
                    .or_default() += 1;
                Ok(response(200, "a"))
            }
        });
    }
    let inv_b = TestInvoker::new();
    {
        let c = completions.clone();
        inv_b.register("work", move |req| {
            let c = c.clone();
            async move {
                let body = req.into_body().collect_bytes().await?;
                *c.lock()
                    .unwrap()
                    .entry(String::from_utf8_lossy(&body).into_owned())
                    .or_default() += 1;
                Ok(response(200, "b"))
            }
        });
    }
    let config = WorkerConfig { function_concurrency: 8, max_in_flight: 16, ..fast_config() };
    let consumer_a = h.consumer().await;
    let worker_a =
        Worker::new(inv_a.clone(), consumer_a.clone(), store.clone(), config.clone()).spawn();

    let p = faas_queue::TrackedPublisher::new(h.publisher(), store.clone());
    let items: Vec<_> = (0..n).map(|i| item("work", format!("job-{i}"))).collect();
    let accepted: Vec<_> = p.publish_batch(items.clone()).await;
    assert!(accepted.iter().all(Result::is_ok));

    // Wait until A is mid-invocation, then stop it abruptly.
    bounded("worker A to get stuck", async {
        while hanging.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let done_before = done_a.load(Ordering::SeqCst);
    worker_a.abort().await;
    h.crash(consumer_a, Vec::new()).await;
    assert!(done_before < n as u64);

    let worker_b = Worker::new(inv_b, h.consumer().await, store.clone(), config).spawn();
    let stats_b = worker_b.stats().clone();
    bounded("worker B to finish every invocation", async {
        let started = std::time::Instant::now();
        let mut next_report = Duration::from_secs(15);
        loop {
            let missing = not_completed(&items, &completions.lock().unwrap());
            if missing == 0 {
                break;
            }
            if started.elapsed() >= next_report {
                // Only printed when slow: what a failure would need to be understood.
                eprintln!(
                    "crash test after {:?}: {missing} of {n} not completed; worker B received {}, finished {}, duplicates {}, nacked {}",
                    started.elapsed(),
                    stats_b.received.load(Ordering::SeqCst),
                    stats_b.finished(),
                    stats_b.duplicates.load(Ordering::SeqCst),
                    stats_b.nacked.load(Ordering::SeqCst),
                );
                next_report += Duration::from_secs(15);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let c = completions.lock().unwrap().clone();
    assert_eq!(c.len(), n, "every accepted invocation completed");
    let total: u32 = c.values().sum();
    assert!(total as usize >= n);
    for i in &items {
        let rec = wait_settled(&store, &i.call_id).await;
        assert_eq!(rec.state, AsyncState::Succeeded);
    }
    eprintln!(
        "crash test: {n} accepted, {done_before} done by A before the crash, {total} completions ({} duplicates)",
        total as usize - n
    );
    worker_b.shutdown().await.unwrap();
}

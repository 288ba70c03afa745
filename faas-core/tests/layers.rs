//! The tower layers, each against a `tower-test` mock service on paused time, then stacked
//! over the in-memory backend and over a function.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faas_core::conformance::fixtures;
use faas_core::layers::{
    ConcurrencyLimitLayer, InvocationMetrics, InvokeService, Layered, MetricsLayer, RetryLayer,
    TimeoutLayer, TraceLayer,
};
use faas_core::prelude::*;
use faas_core::{
    handler_fn, Backend, Body, BoxError, Context, Error, FunctionRef, FunctionSpec, Invocation,
    InvokeExt, MemoryInvoker, Request, Response,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::mock;

type Handle = mock::Handle<Invocation, Response>;

/// Mock errors come boxed; give our `Error` back.
fn unbox(e: BoxError) -> Error {
    match e.downcast::<Error>() {
        Ok(e) => *e,
        Err(e) => Error::internal(e.to_string()),
    }
}

/// `layer` over a mock service; the handle sees what reaches the mock.
fn over_mock<L>(
    layer: L,
) -> (
    impl Service<Invocation, Response = Response, Error = Error, Future: Send> + Clone + Send,
    Handle,
)
where
    L: Layer<tower::util::MapErr<mock::Mock<Invocation, Response>, fn(BoxError) -> Error>>,
    L::Service: Service<Invocation, Response = Response, Error = Error> + Clone + Send,
    <L::Service as Service<Invocation>>::Future: Send,
{
    let (svc, handle) = mock::pair::<Invocation, Response>();
    let svc = tower::util::MapErr::new(svc, unbox as fn(BoxError) -> Error);
    (layer.layer(svc), handle)
}

fn ok(body: &'static str) -> Response {
    http::Response::new(Body::from(body))
}

async fn next(handle: &mut Handle) -> (Invocation, mock::SendResponse<Response>) {
    tokio::time::timeout(Duration::from_secs(60), handle.next_request())
        .await
        .expect("a request reached the mock in time")
        .expect("mock open")
}

async fn text(r: Response) -> String {
    String::from_utf8(r.into_body().collect_bytes().await.unwrap().to_vec()).unwrap()
}

// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn timeout_fires_and_names_itself() {
    let (svc, mut handle) = over_mock(TimeoutLayer::new(Duration::from_secs(2)).named("gateway"));
    let started = Instant::now();
    let call = tokio::spawn(svc.clone().oneshot(Invocation::post("f", "x")));
    let (_req, _pending) = next(&mut handle).await; // never answered
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(err.to_string(), "developer error (timeout): gateway timeout of 2s exceeded");
    assert_eq!(err.http_status(), 504);
    assert_eq!(started.elapsed(), Duration::from_secs(2));

    // In time: the answer passes through untouched.
    let call = tokio::spawn(svc.oneshot(Invocation::post("f", "x")));
    let (_req, reply) = next(&mut handle).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reply.send_response(ok("fine"));
    assert_eq!(text(call.await.unwrap().unwrap()).await, "fine");
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_queues_then_rejects() {
    let (svc, mut handle) = over_mock(ConcurrencyLimitLayer::new(1, 1));
    let a = tokio::spawn(svc.clone().oneshot(Invocation::post("f", "a")));
    let (req_a, reply_a) = next(&mut handle).await;
    assert_eq!(req_a.request.body().as_bytes(), Some(&b"a"[..]));
    let b = tokio::spawn(svc.clone().oneshot(Invocation::post("f", "b")));
    tokio::task::yield_now().await;
    // b waits in the queue: it has not reached the mock.
    assert!(tokio::time::timeout(Duration::from_secs(1), handle.next_request()).await.is_err());
    // c finds the queue full.
    match svc.clone().oneshot(Invocation::post("f", "c")).await {
        Err(Error::Overloaded { message, .. }) => {
            assert!(message.contains("1 queued"), "{message}")
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    reply_a.send_response(ok("a"));
    assert_eq!(text(a.await.unwrap().unwrap()).await, "a");
    let (req_b, reply_b) = next(&mut handle).await;
    assert_eq!(req_b.request.body().as_bytes(), Some(&b"b"[..]));
    reply_b.send_response(ok("b"));
    assert_eq!(text(b.await.unwrap().unwrap()).await, "b");

    // With no queue, the second concurrent call is refused at once.
    let (svc, mut handle) = over_mock(ConcurrencyLimitLayer::new(1, 0));
    let a = tokio::spawn(svc.clone().oneshot(Invocation::post("f", "a")));
    let (_req, reply) = next(&mut handle).await;
    assert!(matches!(
        svc.clone().oneshot(Invocation::post("f", "b")).await,
        Err(Error::Overloaded { .. })
    ));
    reply.send_response(ok("a"));
    a.await.unwrap().unwrap();
    // The permit came back.
    let c = tokio::spawn(svc.oneshot(Invocation::post("f", "c")));
    next(&mut handle).await.1.send_response(ok("c"));
    assert_eq!(text(c.await.unwrap().unwrap()).await, "c");
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_cancelled_waiter_frees_its_queue_slot() {
    let (svc, mut handle) = over_mock(ConcurrencyLimitLayer::new(1, 1));
    let _a = tokio::spawn(svc.clone().oneshot(Invocation::post("f", "a")));
    let (_req, _reply) = next(&mut handle).await;
    let b = tokio::time::timeout(
        Duration::from_millis(10),
        svc.clone().oneshot(Invocation::post("f", "b")),
    );
    assert!(b.await.is_err(), "b waited and was cancelled");
    // The queue slot b held is free again: c waits instead of being refused.
    let c =
        tokio::time::timeout(Duration::from_millis(10), svc.oneshot(Invocation::post("f", "c")));
    assert!(c.await.is_err(), "c queued rather than being refused");
}

#[tokio::test(start_paused = true)]
async fn retry_backs_off_on_retryable_errors_only() {
    let layer = RetryLayer::new(3)
        .base_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(10));
    let (svc, mut handle) = over_mock(layer.clone());

    // Overloaded, then success.
    let call = tokio::spawn(svc.clone().oneshot(Invocation::post("f", "payload")));
    let (first, reply) = next(&mut handle).await;
    reply.send_error(Error::overloaded("busy"));
    let (second, reply) = next(&mut handle).await;
    assert_eq!(second.id, first.id, "the same invocation is retried");
    assert_eq!(second.request.body().as_bytes(), Some(&b"payload"[..]));
    reply.send_response(ok("done"));
    assert_eq!(text(call.await.unwrap().unwrap()).await, "done");

    // Retryable every time: gives up after 3 attempts with the last error.
    let call = tokio::spawn(svc.clone().oneshot(Invocation::post("f", "x")));
    for _ in 0..3 {
        next(&mut handle).await.1.send_error(Error::unavailable("down"));
    }
    assert!(matches!(call.await.unwrap(), Err(Error::Unavailable { .. })));
    assert!(tokio::time::timeout(Duration::from_secs(30), handle.next_request()).await.is_err());

    // Not retryable: returned at once.
    let call = tokio::spawn(svc.clone().oneshot(Invocation::post("f", "x")));
    next(&mut handle).await.1.send_error(Error::application("no"));
    assert!(matches!(call.await.unwrap(), Err(Error::Application { .. })));
    assert!(tokio::time::timeout(Duration::from_secs(30), handle.next_request()).await.is_err());

    // A streaming body cannot be replayed: no retry.
    let stream = Body::from_stream(futures::stream::iter(vec![Ok(bytes::Bytes::from("s"))]));
    let call = tokio::spawn(svc.clone().oneshot(Invocation::post("f", stream)));
    next(&mut handle).await.1.send_error(Error::overloaded("busy"));
    assert!(matches!(call.await.unwrap(), Err(Error::Overloaded { .. })));
    assert!(tokio::time::timeout(Duration::from_secs(30), handle.next_request()).await.is_err());

    // Retry-After is honoured.
    let call = tokio::spawn(svc.oneshot(Invocation::post("f", "x")));
    let (_, reply) = next(&mut handle).await;
    let t0 = Instant::now();
    reply.send_error(Error::Overloaded {
        message: "later".into(),
        retry_after: Some(Duration::from_secs(5)),
    });
    let (_, reply) = next(&mut handle).await;
    assert!(t0.elapsed() >= Duration::from_secs(5), "retried after {:?}", t0.elapsed());
    reply.send_response(ok("ok"));
    call.await.unwrap().unwrap();
}

/// The gap before retry `n` is uniform in `[cap/2, cap]` with `cap = min(base * 2^(n-1), max)`
/// ([`faas_core::util::Backoff`]'s jitter). Over 200 calls of 6 attempts each (paused time,
/// so the gaps are exact), every gap lies in its range (a lower bound as well as an upper
/// one), the mean gap before each retry is three quarters of its cap (within 10% of the cap:
/// ~8 standard errors), so the means grow 75, 150, 300 ms and then stay at 300 ms, and the
/// gaps spread over the range. No delay at all, a constant delay or an uncapped one fails.
#[tokio::test(start_paused = true)]
async fn retry_backoff_grows_and_is_capped() {
    const CALLS: usize = 200;
    let layer = RetryLayer::new(6)
        .base_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(400));
    let (svc, mut handle) = over_mock(layer);
    let caps = [100u64, 200, 400, 400, 400];
    let mut gaps: Vec<Vec<Duration>> = vec![Vec::new(); caps.len()];
    for _ in 0..CALLS {
        let call = tokio::spawn(svc.clone().oneshot(Invocation::post("f", "x")));
        let mut last = Instant::now();
        for i in 0..6 {
            let (_, reply) = next(&mut handle).await;
            if i > 0 {
                gaps[i - 1].push(last.elapsed());
            }
            last = Instant::now();
            if i < 5 {
                reply.send_error(Error::overloaded("busy"));
            } else {
                reply.send_response(ok("ok"));
            }
        }
        call.await.unwrap().unwrap();
    }
    let mut means = Vec::new();
    for (retry, (gaps, cap)) in gaps.iter().zip(caps).enumerate() {
        let cap = Duration::from_millis(cap);
        let retry = retry + 1;
        for gap in gaps {
            assert!(*gap <= cap, "retry {retry}: gap {gap:?} above the cap {cap:?}");
            assert!(*gap >= cap / 2, "retry {retry}: gap {gap:?} below half the cap {cap:?}");
        }
        let mean = gaps.iter().sum::<Duration>() / CALLS as u32;
        assert!(
            mean >= cap.mul_f64(0.65) && mean <= cap.mul_f64(0.85),
            "retry {retry}: mean gap {mean:?}, expected about 3/4 of {cap:?}"
        );
        let longest = gaps.iter().max().copied().unwrap_or_default();
        let shortest = gaps.iter().min().copied().unwrap_or_default();
        assert!(longest >= cap.mul_f64(0.95), "retry {retry}: longest gap {longest:?} of {cap:?}");
        assert!(shortest <= cap.mul_f64(0.55), "retry {retry}: shortest {shortest:?} of {cap:?}");
        means.push(mean);
    }
    // Growth: each mean is above the one before until the cap (means ~75, 150, 300 ms).
    assert!(means[0] < means[1] && means[1] < means[2], "backoff does not grow: {means:?}");
}

// ---------------------------------------------------------------------------------------
// Metrics

/// The value of one series in the registry's Prometheus text (0 when absent).
fn series(reg: &InvocationMetrics, series: &str) -> u64 {
    let text = reg.render();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn metrics_use_openfaas_names() {
    let layer = MetricsLayer::new();
    let rec = layer.registry().clone();
    let (svc, mut handle) = over_mock(layer);

    let fref = FunctionRef::new("echo", "dev");
    let call = svc.clone().oneshot(Invocation::post(fref.clone(), "x"));
    let answer = async {
        let (_, reply) = next(&mut handle).await;
        assert_eq!(
            series(&rec, r#"gateway_function_invocation_started{function_name="echo.dev"}"#),
            1
        );
        assert_eq!(
            series(
                &rec,
                r#"gateway_function_invocation_total{function_name="echo.dev",code="200"}"#
            ),
            0
        );
        reply.send_response(ok("x"));
    };
    let (r, ()) = tokio::join!(call, answer);
    r.unwrap();
    assert_eq!(
        series(&rec, r#"gateway_function_invocation_total{function_name="echo.dev",code="200"}"#),
        1
    );
    assert_eq!(
        series(&rec, r#"gateway_functions_seconds_count{function_name="echo.dev",code="200"}"#),
        1
    );

    // An error counts under its HTTP status.
    let call = svc.oneshot(Invocation::post(fref, "x"));
    let answer = async {
        next(&mut handle).await.1.send_error(Error::timeout("exec", Duration::from_secs(1)))
    };
    let (r, ()) = tokio::join!(call, answer);
    assert!(r.is_err());
    assert_eq!(series(&rec, r#"gateway_function_invocation_started{function_name="echo.dev"}"#), 2);
    assert_eq!(
        series(&rec, r#"gateway_function_invocation_total{function_name="echo.dev",code="504"}"#),
        1
    );
    assert_eq!(
        series(&rec, r#"gateway_functions_seconds_count{function_name="echo.dev",code="504"}"#),
        1
    );
}

// ---------------------------------------------------------------------------------------
// Trace

/// A subscriber recording each span's name and fields (and its level, as field `level`).
type SpanLog = Vec<(String, HashMap<String, String>)>;

#[derive(Default, Clone)]
struct Spans(Arc<Mutex<SpanLog>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl tracing::Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = HashMap::new();
        span.record(&mut Fields(&mut fields));
        fields.insert("level".into(), span.metadata().level().to_string());
        let mut spans = self.0.lock().unwrap();
        spans.push((span.metadata().name().to_string(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.0.lock().unwrap();
        let idx = span.into_u64() as usize - 1;
        values.record(&mut Fields(&mut spans[idx].1));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn trace_span_carries_function_id_and_status() {
    let spans = Spans::default();
    let _guard = tracing::subscriber::set_default(spans.clone());
    let (svc, mut handle) = over_mock(TraceLayer::new());
    let inv = Invocation::post(FunctionRef::new("echo", "dev"), "x");
    let id = inv.id.to_string();
    let (r, ()) = tokio::join!(svc.clone().oneshot(inv), async {
        next(&mut handle).await.1.send_response(ok("x"))
    });
    r.unwrap();
    let inv = Invocation::post(FunctionRef::new("echo", "dev"), "x");
    let (r, ()) = tokio::join!(svc.oneshot(inv), async {
        next(&mut handle).await.1.send_error(Error::application("bad"))
    });
    assert!(r.is_err());
    let spans = spans.0.lock().unwrap();
    assert_eq!(spans.len(), 2);
    let (name, fields) = &spans[0];
    assert_eq!(name, "invocation");
    // DEBUG: a subscriber at the usual `info` level pays nothing per invocation for it.
    assert_eq!(fields["level"], "DEBUG");
    assert_eq!(fields["function"], "echo.dev");
    assert_eq!(fields["invocation_id"], id);
    assert_eq!(fields["status"], "200");
    assert_eq!(spans[1].1["status"], "502");
    assert!(spans[1].1["error"].contains("bad"));
}

// ---------------------------------------------------------------------------------------
// Stacks

#[tokio::test(start_paused = true)]
async fn layered_invoker_goes_through_the_stack() {
    let memory = MemoryInvoker::new();
    memory.register("sleep", fixtures::sleep());
    let backend: Arc<dyn Backend> = Arc::new(memory.clone());
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(MetricsLayer::new())
        .layer(RetryLayer::new(3))
        .layer(ConcurrencyLimitLayer::new(10, 10))
        .layer(TimeoutLayer::new(Duration::from_secs(1)).named("gateway"));
    let layered = Layered::with_layer(backend, stack);
    // Management calls go straight to the backend.
    layered.deploy(FunctionSpec::new("s", "sleep")).await.unwrap();
    assert_eq!(layered.status(&FunctionRef::default_ns("s")).await.unwrap().name, "s");
    assert_eq!(layered.info().provider, "faas-rs-memory");
    // Invocations go through the layers: the gateway timeout fires before the handler ends.
    let err = layered.invoke(Invocation::get("s", "/?ms=5000")).await.unwrap_err();
    assert!(err.to_string().contains("gateway timeout of 1s"), "{err}");
    let resp = layered.invoke(Invocation::get("s", "/?ms=10")).await.unwrap();
    assert_eq!(resp.status(), 200);
    // And the plain service form works too.
    let svc = InvokeService::new(Arc::new(memory));
    let resp = svc.oneshot(Invocation::get("s", "/?ms=1")).await.unwrap();
    assert_eq!(text(resp).await, "slept");
}

#[tokio::test(start_paused = true)]
async fn layers_wrap_a_function_too() {
    let metrics = MetricsLayer::new();
    let rec = metrics.registry().clone();
    let slow = handler_fn(|req: Request, _ctx: Context| async move {
        let ms: u64 = fixtures::query_param(&req, "ms").and_then(|v| v.parse().ok()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, Error>("done")
    });
    let function = ServiceBuilder::new()
        .layer(metrics)
        .layer(TraceLayer::new())
        .layer(RetryLayer::new(2))
        .layer(ConcurrencyLimitLayer::new(4, 4))
        .layer(TimeoutLayer::new(Duration::from_millis(500)).named("handler"))
        .service(slow);
    // The layered handler is a Function: deploy it.
    let memory = MemoryInvoker::new();
    memory.register("slow", function);
    memory.deploy(FunctionSpec::new("slow", "slow")).await.unwrap();
    assert_eq!(memory.call("slow", "").await.unwrap(), "done");
    let err = memory.invoke(Invocation::get("slow", "/?ms=2000")).await.unwrap_err();
    assert!(err.to_string().contains("handler timeout of 500ms"), "{err}");
    // Inside the backend the request's Context names the function for the metrics.
    assert_eq!(
        series(
            &rec,
            r#"gateway_function_invocation_total{function_name="slow.openfaas-fn",code="200"}"#
        ),
        1
    );
    assert_eq!(
        series(
            &rec,
            r#"gateway_function_invocation_total{function_name="slow.openfaas-fn",code="504"}"#
        ),
        1
    );
}

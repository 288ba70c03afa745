//! Scale from zero in one place: the `Activator` and its layer over the in-memory backend, on
//! paused time.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use faas_core::conformance::fixtures;
use faas_core::layers::{
    Activation, Activator, ActivatorLayer, FunctionHandles, InvocationMetrics, InvokeService,
    MetricsLayer,
};
use faas_core::prelude::*;
use faas_core::{
    Error, FunctionRef, FunctionSpec, FunctionStatus, Invocation, MemoryInvoker, ProviderInfo,
};
use tower::{ServiceBuilder, ServiceExt};

async fn memory_with(name: &str, min: &str) -> (MemoryInvoker, FunctionRef) {
    let memory = MemoryInvoker::builder().cold_start(Duration::from_millis(200)).build();
    memory.register("echo", fixtures::echo());
    let spec = FunctionSpec::new(name, "echo")
        .label("com.openfaas.scale.min", min)
        .label("com.openfaas.scale.zero", "true");
    memory.deploy(spec).await.unwrap();
    let f = FunctionRef::default_ns(name);
    assert!(memory.wait_ready(&f, Duration::from_secs(5)).await.unwrap());
    memory.scale(&f, 0).await.unwrap();
    (memory, f)
}

#[tokio::test(start_paused = true)]
async fn scales_to_the_minimum_once_for_many_waiters() {
    let (memory, f) = memory_with("wake", "2").await;
    let activator = Activator::new().timeout(Duration::from_secs(5));
    // Ten invocations arrive at zero together: one scales, all wait for the same replicas.
    let runs = (0..10).map(|_| activator.activate(&memory, &f));
    let outcomes: Vec<_> = futures::future::join_all(runs).await;
    let scaled: Vec<_> =
        outcomes.iter().filter(|o| matches!(o, Ok(Activation::Scaled(_)))).collect();
    assert_eq!(scaled.len(), 1, "{outcomes:?}");
    assert!(matches!(scaled[0], Ok(Activation::Scaled(2))), "scaled to the minimum label");
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
    let st = memory.status(&f).await.unwrap();
    assert_eq!((st.replicas, st.available_replicas), (2, 2));
    // Known ready now: answered without the backend.
    assert_eq!(activator.activate(&memory, &f).await.unwrap(), Activation::Ready);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_function_is_not_found() {
    let memory = MemoryInvoker::new();
    let err = Activator::new().activate(&memory, &FunctionRef::default_ns("nope")).await;
    assert!(matches!(err, Err(Error::NotFound { .. })), "{err:?}");
}

/// A backend whose replicas never become ready.
struct NeverReady(MemoryInvoker);

#[async_trait]
impl Deploy for NeverReady {
    async fn deploy(&self, spec: FunctionSpec) -> faas_core::Result<()> {
        self.0.deploy(spec).await
    }
    async fn update(&self, spec: FunctionSpec) -> faas_core::Result<()> {
        self.0.update(spec).await
    }
    async fn remove(&self, f: &FunctionRef) -> faas_core::Result<()> {
        self.0.remove(f).await
    }
    async fn list(&self, ns: &str) -> faas_core::Result<Vec<FunctionStatus>> {
        self.0.list(ns).await
    }
    async fn status(&self, f: &FunctionRef) -> faas_core::Result<FunctionStatus> {
        let mut st = self.0.status(f).await?;
        st.available_replicas = 0;
        Ok(st)
    }
    async fn scale(&self, f: &FunctionRef, n: u32) -> faas_core::Result<()> {
        self.0.scale(f, n).await
    }
    async fn namespaces(&self) -> faas_core::Result<Vec<String>> {
        self.0.namespaces().await
    }
    fn info(&self) -> ProviderInfo {
        self.0.info()
    }
    async fn wait_ready(&self, f: &FunctionRef, timeout: Duration) -> faas_core::Result<bool> {
        self.status(f).await?;
        tokio::time::sleep(timeout).await;
        Ok(false)
    }
}

#[tokio::test(start_paused = true)]
async fn gives_up_with_a_503_naming_the_timeout() {
    let (memory, f) = memory_with("stuck", "1").await;
    let backend = NeverReady(memory);
    let t0 = tokio::time::Instant::now();
    let err = Activator::new().timeout(Duration::from_secs(3)).activate(&backend, &f).await;
    let Err(e) = err else { panic!("activated a function that never became ready") };
    assert_eq!(e.http_status(), 503);
    assert!(e.to_string().contains("scale-from-zero timeout of 3s"), "{e}");
    assert_eq!(t0.elapsed(), Duration::from_secs(3), "waited exactly the timeout");
}

#[tokio::test(start_paused = true)]
async fn the_layer_holds_an_invocation_until_a_replica_is_ready() {
    let (memory, f) = memory_with("held", "1").await;
    let memory = Arc::new(memory);
    let registry = InvocationMetrics::new();
    let activator = Activator::new().ready_ttl(Duration::from_secs(2));
    let stack = ServiceBuilder::new()
        .layer(MetricsLayer::with_registry(registry.clone()))
        .layer(ActivatorLayer::new(memory.clone(), activator.clone()))
        .service(InvokeService::new(memory.clone() as Arc<dyn Invoke>));

    let t0 = tokio::time::Instant::now();
    let resp = stack.clone().oneshot(Invocation::post(f.clone(), "hi")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(t0.elapsed(), Duration::from_millis(200), "held for the cold start");
    assert_eq!(memory.status(&f).await.unwrap().replicas, 1);

    // With the caller's handles, a warm function passes at once and is counted once.
    let handles = Arc::new(FunctionHandles::new(&registry, &activator, &f));
    assert!(activator.is_ready(&handles.readiness));
    let mut inv = Invocation::post(f.clone(), "again");
    inv.request.extensions_mut().insert(handles.clone());
    assert_eq!(stack.clone().oneshot(inv).await.unwrap().status(), 200);
    let text = registry.render();
    assert!(
        text.contains(r#"gateway_function_invocation_started{function_name="held.openfaas-fn"} 2"#),
        "{text}"
    );

    // A 404 from below makes the activator ask the backend again.
    memory.remove(&f).await.unwrap();
    let err = stack.clone().oneshot(Invocation::post(f.clone(), "gone")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(!activator.is_ready(&handles.readiness), "forgotten after the 404");
}

/// What accepting an async call asks: whether the function is ready now, without waiting and
/// without scaling it; a ready one is remembered, an unknown one is a 404.
#[tokio::test(start_paused = true)]
async fn ready_now_neither_waits_nor_scales_and_remembers_a_ready_function() {
    let (memory, f) = memory_with("now", "1").await;
    let activator = Activator::new().ready_ttl(Duration::from_secs(2));
    let t0 = tokio::time::Instant::now();
    assert!(!activator.ready_now(&memory, &f).await.unwrap(), "at zero: not ready");
    assert_eq!(t0.elapsed(), Duration::ZERO, "did not wait");
    assert_eq!(memory.status(&f).await.unwrap().replicas, 0, "did not scale");
    assert!(!activator.is_known_ready(&f));

    memory.scale(&f, 1).await.unwrap();
    assert!(memory.wait_ready(&f, Duration::from_secs(5)).await.unwrap());
    assert!(activator.ready_now(&memory, &f).await.unwrap());
    assert!(activator.is_known_ready(&f), "remembered as ready");
    // Within the TTL the backend is not asked: removed there, still known ready here.
    memory.remove(&f).await.unwrap();
    assert!(activator.ready_now(&memory, &f).await.unwrap());
    activator.forget(&f);
    let err = activator.ready_now(&memory, &f).await;
    assert!(matches!(err, Err(Error::NotFound { .. })), "{err:?}");
}

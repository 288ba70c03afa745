//! faas-benches: shared helpers for the benchmarks.

use faas_core::prelude::*;
use faas_core::{handler_fn, Context, Error, FunctionSpec, MemoryInvoker, Request};

/// An in-memory invoker (default settings) with function `name` deployed: a handler that
/// answers `ok` to everything, registered under image `name`.
pub async fn memory_ok(name: &str) -> Result<MemoryInvoker, Error> {
    let invoker = MemoryInvoker::new();
    invoker.register(name, handler_fn(|_r: Request, _c: Context| async { Ok::<_, Error>("ok") }));
    invoker.deploy(FunctionSpec::new(name, name)).await?;
    Ok(invoker)
}

/// Queued invocation number `i` of function `function` in the default namespace, as the
/// gateway's `/async-function/NAME` makes one: a POST with a `content-type` header and a
/// small text body, a fresh call id.
pub fn queued(function: &str, i: usize) -> faas_core::queue::QueuedInvocation {
    faas_core::queue::QueuedInvocation {
        call_id: faas_core::InvocationId::new(),
        function: function.into(),
        namespace: faas_core::spec::DEFAULT_NAMESPACE.into(),
        method: "POST".into(),
        path: String::new(),
        query: String::new(),
        headers: vec![("content-type".into(), "text/plain".into())],
        body: bytes::Bytes::from(format!("payload {i}")),
        callback_url: None,
        attempt: 0,
        queued_at: 0,
    }
}

/// The `p` quantile (0 to 1) of `v`, nearest rank; sorts `v`.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The watchdog binary for the process-backend benches: `FAAS_WATCHDOG_BIN`, else
/// `faas-watchdog` beside the running executable (`target/release/`).
pub fn watchdog_bin() -> std::path::PathBuf {
    std::env::var_os("FAAS_WATCHDOG_BIN").map(std::path::PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current exe");
        exe.parent().expect("exe dir").join("faas-watchdog")
    })
}

/// The OpenWhisk API in process, as the whisk benches measure it: the gateway's layer
/// stack (trace, metrics, concurrency limit, activation record of every invocation with
/// the gateway's 200 ms flusher, activator, timeout) over an in-memory backend with a no-op handler (image `noop`, answers
/// `{}`), and in namespace `guest`: action `noop`, sequence `seq10` (ten `noop`s), trigger
/// `tick` with rule `on-tick` to `noop`.
pub mod whisk {
    use std::sync::Arc;
    use std::time::Duration;

    use faas_core::layers::{
        Activator, ActivatorLayer, ConcurrencyLimitLayer, InvocationMetrics, InvokeService,
        MetricsLayer, TimeoutLayer, TraceLayer,
    };
    use faas_core::prelude::*;
    use faas_core::state::MemoryStateStore;
    use faas_core::whisk::{
        ActionPut, ActivationLayer, ActivationLog, EntityPath, EntityStore, Exec, Invoked, RulePut,
        TriggerPut, Whisk,
    };
    use faas_core::{
        handler_fn, Context, Error, FunctionRef, Invocation, InvocationId, MemoryInvoker, Request,
        ServiceInvoke,
    };
    use serde_json::Map;

    /// The fixture: the API, and the stack it invokes through (for direct invokes of the
    /// action's function, `guest/noop`).
    pub struct Fixture {
        /// The API's operations.
        pub whisk: Whisk,
        /// The gateway's stack, as an `Invoke`.
        pub invoke: Arc<dyn Invoke>,
    }

    /// `guest/name`.
    pub fn path(name: &str) -> EntityPath {
        EntityPath::new("guest", None, name)
    }

    impl Fixture {
        /// Builds the stack and creates the entities (in a tokio runtime).
        pub async fn new() -> Result<Fixture, Error> {
            let memory = MemoryInvoker::new();
            memory.register(
                "noop",
                handler_fn(|_r: Request, _c: Context| async { Ok::<_, Error>("{}") }),
            );
            let backend: Arc<dyn Backend> = Arc::new(memory);
            let log = ActivationLog::default();
            // As the gateway does: pending records are indexed off the request path.
            log.spawn_flusher(Duration::from_millis(200));
            let stack = tower::ServiceBuilder::new()
                .layer(TraceLayer::new())
                .layer(MetricsLayer::with_registry(InvocationMetrics::new()))
                .layer(ConcurrencyLimitLayer::new(10_000, 0))
                .layer(ActivationLayer::new(log.clone()).every_invocation(true))
                .layer(ActivatorLayer::new(backend.clone(), Activator::new()))
                .layer(TimeoutLayer::new(Duration::from_secs(60)).named("gateway upstream"))
                .service(InvokeService::new(backend.clone() as Arc<dyn Invoke>));
            let invoke: Arc<dyn Invoke> = Arc::new(ServiceInvoke::new(stack));
            let whisk = Whisk::new(
                EntityStore::new(Arc::new(MemoryStateStore::default())),
                log,
                invoke.clone(),
                backend,
                Default::default(),
            );
            let exec =
                Exec { kind: "blackbox".into(), image: Some("noop".into()), ..Default::default() };
            let put = ActionPut { exec: Some(exec), ..Default::default() };
            whisk.put_action(&path("noop"), put, false).await?;
            let seq = Exec {
                kind: "sequence".into(),
                components: Some(vec!["/guest/noop".to_string(); 10]),
                ..Default::default()
            };
            let put = ActionPut { exec: Some(seq), ..Default::default() };
            whisk.put_action(&path("seq10"), put, false).await?;
            whisk.put_trigger(&path("tick"), TriggerPut::default(), false).await?;
            let rule = RulePut {
                trigger: Some("/guest/tick".into()),
                action: Some("/guest/noop".into()),
                ..Default::default()
            };
            whisk.put_rule(&path("on-tick"), rule, false).await?;
            Ok(Fixture { whisk, invoke })
        }

        /// One call of `guest/noop` straight down the stack, its body read.
        pub async fn direct(&self) -> Result<(), Error> {
            let f = FunctionRef::new("noop", "guest");
            let r = self.invoke.invoke(Invocation::post(f, "{}")).await?;
            r.into_body().collect_bytes().await?;
            Ok(())
        }

        /// A blocking invocation of `name` through the API; answers how many component
        /// activations its record lists (0 for a plain action).
        pub async fn action(&self, name: &str) -> Result<usize, Error> {
            match self.whisk.invoke("guest", &path(name), Map::new(), true).await? {
                Invoked::Done(a) if a.response.success => Ok(a.logs.len()),
                Invoked::Done(a) => Err(Error::internal(format!("failed: {:?}", a.response))),
                Invoked::Accepted(_) => Err(Error::internal("not finished")),
            }
        }

        /// Fires `tick` and waits until its rule's action has its result (the action runs
        /// on a task of its own: this yields until the record has it).
        pub async fn fire_to_result(&self) -> Result<(), Error> {
            let log = self.whisk.log();
            let id = self
                .whisk
                .fire("guest", &path("tick"), Map::new())
                .await?
                .ok_or_else(|| Error::internal("no rule fired"))?;
            let trigger = log.get(&id).ok_or_else(|| Error::internal("no trigger record"))?;
            let entry: serde_json::Value = serde_json::from_str(&trigger.logs[0])
                .map_err(|e| Error::internal(e.to_string()))?;
            let action = InvocationId::from_string(
                entry["activationId"].as_str().ok_or_else(|| Error::internal("no action id"))?,
            );
            // Until the API has written the action's result over the layer's status.
            loop {
                if log.get(&action).is_some_and(|a| a.response.result.get("statusCode").is_none()) {
                    return Ok(());
                }
                tokio::task::yield_now().await;
            }
        }
    }

    /// The listings measured on [`full_log`]: the newest 100; 100 by a name in 1 % of the
    /// records; 100 in a namespace with 1 % of them; 100 after skipping 10 000.
    pub fn list_queries() -> Vec<(&'static str, faas_core::whisk::ActivationQuery)> {
        use faas_core::whisk::ActivationQuery;
        vec![
            ("newest", ActivationQuery { limit: 100, ..Default::default() }),
            (
                "by_rare_name",
                ActivationQuery { name: Some("rare".into()), limit: 100, ..Default::default() },
            ),
            (
                "in_rare_namespace",
                ActivationQuery {
                    namespace: Some("guest".into()),
                    limit: 100,
                    ..Default::default()
                },
            ),
            ("skip_10k", ActivationQuery { skip: 10_000, limit: 100, ..Default::default() }),
        ]
    }

    /// A log of `n` records (retention `n`): names `rare` (one in 100) and `common`, in
    /// namespaces `guest` (one in 100) and `openfaas-fn`.
    pub fn full_log(n: usize) -> ActivationLog {
        use faas_core::whisk::Retention;
        use faas_core::{Activation, ActivationResponse};
        let log = ActivationLog::in_memory(Retention { max_records: n, ..Default::default() });
        let now = std::time::SystemTime::now();
        for i in 0..n {
            let name = if i % 100 == 0 { "rare" } else { "common" };
            let ns = if i % 100 == 50 { "guest" } else { "openfaas-fn" };
            let ok = ActivationResponse::success(serde_json::json!({}));
            let f = FunctionRef::new(name, ns);
            log.insert(Activation::new(InvocationId::new(), &f, now, now, ok));
        }
        log
    }
}

/// Polls `ready` every 5 ms until it holds; panics naming `what` after 60 s.
pub async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !ready() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Prints a markdown table of p50 and p99 (ms) of each row of samples (ms).
pub fn print_p50_p99(rows: &mut [(&str, &mut Vec<f64>)]) {
    println!("| what | runs | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    for (what, v) in rows.iter_mut() {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!("| {what} | {} | {p50:.1} | {p99:.1} |", v.len());
    }
}

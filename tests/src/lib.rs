//! Helpers the end-to-end tests share: steady load through a gateway over TCP, and bounded
//! polls of a function's status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use faas_core::FunctionStatus;
use faas_http::client::GatewayClient;
use http::Method;

/// Open-loop load at a steady rate: one `POST /function/NAME` every `1 / rps` seconds, each
/// its own task, whether or not earlier calls have answered (as `hey -q` does).
#[derive(Debug)]
pub struct RateLoad {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl RateLoad {
    /// Starts calling `name` (`name` or `name.namespace`) through `client` at `rps` calls per
    /// second.
    pub fn start(client: &GatewayClient, name: &str, rps: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (client, name, flag) = (client.clone(), name.to_string(), stop.clone());
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1) / rps.max(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut calls = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                every.tick().await;
                let (client, name) = (client.clone(), name.clone());
                calls.push(tokio::spawn(async move {
                    match client.invoke(&name, Method::POST, &[], Bytes::from("x"), false).await {
                        Ok(r) if r.status == 200 => None,
                        Ok(r) => Some(format!("{}: {}", r.status, r.text())),
                        Err(e) => Some(e.to_string()),
                    }
                }));
            }
            let mut failures = Vec::new();
            for c in calls {
                match c.await {
                    Ok(None) => {}
                    Ok(Some(f)) => failures.push(f),
                    Err(e) => failures.push(format!("call task: {e}")),
                }
            }
            failures
        });
        RateLoad { stop, task }
    }

    /// Stops the load, waits for the calls in flight, and answers every call that did not
    /// answer 200 (its status and body, or the client's error).
    pub async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_else(|e| vec![format!("load task: {e}")])
    }
}

/// Polls `GET /system/function/NAME` every 100 ms until `done` holds, for at most `within`;
/// panics naming `what` and the last status seen when it does not.
pub async fn wait_status(
    client: &GatewayClient,
    name: &str,
    namespace: Option<&str>,
    within: Duration,
    what: &str,
    done: impl Fn(&FunctionStatus) -> bool,
) -> FunctionStatus {
    let mut last = None;
    let polled = tokio::time::timeout(within, async {
        loop {
            if let Ok(st) = client.describe(name, namespace).await {
                if done(&st) {
                    return st;
                }
                last = Some((st.replicas, st.available_replicas));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    match polled {
        Ok(st) => st,
        Err(_) => panic!("{what}: not within {within:?}; last (replicas, available): {last:?}"),
    }
}

/// Serves a gateway over `backend` with `config` on 127.0.0.1; answers a client of it (60 s
/// per request) and the sender that stops it when dropped.
pub async fn serve_gateway(
    backend: std::sync::Arc<dyn faas_core::Backend>,
    config: faas_http::GatewayConfig,
) -> (GatewayClient, tokio::sync::oneshot::Sender<()>) {
    let gateway = faas_http::Gateway::builder(backend).config(config).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
    let base = format!("http://{}", listener.local_addr().expect("local address"));
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = rx.await;
    }));
    let client = GatewayClient::new(&base).expect("client").with_timeout(Duration::from_secs(60));
    (client, stop)
}

/// OpenFaaS's certifier's load step: about 10 calls a second to `invoke_as` (`name` or
/// `name.namespace`) until the function `name` has 2 replicas asked for and `available`
/// of them ready (within 30 s), then the load stops; every call must have answered 200.
pub async fn scale_to_two_under_load(
    client: &GatewayClient,
    name: &str,
    namespace: Option<&str>,
    invoke_as: &str,
    available: u64,
) {
    let load = RateLoad::start(client, invoke_as, 10);
    wait_status(client, name, namespace, Duration::from_secs(30), "max replicas under load", |s| {
        s.replicas == 2 && s.available_replicas >= available
    })
    .await;
    let failures = load.stop().await;
    assert!(failures.is_empty(), "every call under load answers 200: {failures:?}");
}

/// The JSON shapes OpenFaaS's certifier compares, through `client`, for a function `name`
/// deployed with no env vars, constraints, secrets or annotations: those fields omitted from
/// `GET /system/functions` and `GET /system/function/NAME` (Go's `omitempty`), the
/// `faas_function` label on it, and a provider sha from the build in `GET /system/info`.
pub async fn assert_openfaas_json_shapes(
    client: &GatewayClient,
    name: &str,
    namespace: Option<&str>,
) {
    let query = namespace.map(|n| format!("?namespace={n}")).unwrap_or_default();
    let get = |path: String| async move {
        let r = client.send(Method::GET, &path, &[], Bytes::new()).await.expect("GET");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        serde_json::from_slice::<serde_json::Value>(&r.body).expect("JSON")
    };
    let list = get(format!("/system/functions{query}")).await;
    let listed = list.as_array().and_then(|l| l.iter().find(|f| f["name"] == name));
    let one = get(format!("/system/function/{name}{query}")).await;
    for f in [listed.expect("the function is listed"), &one] {
        for field in ["envVars", "constraints", "secrets", "annotations"] {
            assert!(f.get(field).is_none(), "{field} should be omitted when empty: {f}");
        }
        assert_eq!(f["labels"]["faas_function"], name, "{f}");
    }
    let info = get("/system/info".to_string()).await;
    let sha = info["provider"]["version"]["sha"].as_str().unwrap_or_default();
    assert!(
        sha.len() == 12 && sha.chars().all(|c| c.is_ascii_hexdigit()),
        "provider sha from the build: {info}"
    );
}

//! The gateway over the process backend and the faas-queue async path, end to end over TCP on
//! 127.0.0.1: real watchdog processes, a real callback listener.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use faas_core::{Backend, FunctionSpec};
use faas_http::client::GatewayClient;
use faas_http::{Gateway, GatewayConfig};
use http::Method;
use http_body_util::BodyExt;

struct Env {
    client: GatewayClient,
    invoker: Arc<dyn Backend>,
    state: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

async fn start(tag: &str, config: GatewayConfig) -> Env {
    let state = std::env::temp_dir().join(format!("faas-e2e-{tag}-{}", std::process::id()));
    let invoker = faas_watchdog::process::ProcessInvoker::builder()
        .watchdog_command(env!("CARGO_BIN_EXE_faas-e2e-watchdog"), std::iter::empty::<&str>())
        .state_dir(&state)
        .build()
        .unwrap();
    let invoker: Arc<dyn Backend> = Arc::new(invoker);
    let gateway = Gateway::builder(invoker.clone()).config(config).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = rx.await;
    }));
    let client = GatewayClient::new(&base).unwrap().with_timeout(Duration::from_secs(60));
    Env { client, invoker, state, _stop: tx }
}

async fn deploy(env: &Env, spec: FunctionSpec) {
    env.client.deploy(&spec).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_functions_behind_the_gateway() {
    let cfg = GatewayConfig { upstream_timeout: Duration::from_secs(20), ..Default::default() };
    let env = start("sync", cfg).await;
    deploy(&env, FunctionSpec::new("upper", "x/upper").process("tr a-z A-Z")).await;
    deploy(
        &env,
        FunctionSpec::new("failing", "x/failing").process("sh -c 'echo oops >&2; exit 3'"),
    )
    .await;
    deploy(
        &env,
        FunctionSpec::new("slow", "x/slow").process("sleep 5").timeout(Duration::from_millis(500)),
    )
    .await;
    let r =
        env.client.invoke("upper", Method::POST, &[], Bytes::from("hello"), false).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "HELLO"));
    assert!(r.headers.contains_key("x-call-id") && r.headers.contains_key("x-duration-seconds"));
    let r = env.client.invoke("failing", Method::POST, &[], Bytes::new(), false).await.unwrap();
    assert!(r.status == 500 || r.status == 502, "a failing process: {} {}", r.status, r.text());
    let r = env.client.invoke("slow", Method::POST, &[], Bytes::new(), false).await.unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    let r = env.client.invoke("ghost", Method::POST, &[], Bytes::new(), false).await.unwrap();
    assert_eq!(r.status, 404);

    // Scale to zero, then the next request is held while a replica starts.
    env.client.scale("upper", None, 0).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while env.client.describe("upper", None).await.unwrap().available_replicas > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("scaled to zero");
    let r =
        env.client.invoke("upper", Method::POST, &[], Bytes::from("again"), false).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "AGAIN"));
    assert!(env.client.describe("upper", None).await.unwrap().available_replicas >= 1);

    // Logs of the process, as JSON lines.
    let mut lines = Vec::new();
    env.client.logs("failing", None, None, false, |e| lines.push(e.text)).await.unwrap();
    assert!(lines.iter().any(|l| l.contains("oops")), "{lines:?}");

    // The JSON shapes OpenFaaS's certifier compares, on this backend.
    faas_e2e::assert_openfaas_json_shapes(&env.client, "upper", None).await;

    for f in ["upper", "failing", "slow"] {
        env.client.remove(f, None).await.unwrap();
    }
    let _ = &env.invoker;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_over_the_process_backend_calls_back() {
    let env = start("async", GatewayConfig::default()).await;
    deploy(&env, FunctionSpec::new("upper", "x/upper").process("tr a-z A-Z")).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cb = format!("http://{}/cb", listener.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(s),
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let _ = tx.send((parts.headers, body));
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::new()),
                        ))
                    }
                }),
            ));
        }
    });
    let headers = vec![("x-callback-url".to_string(), cb)];
    let r = env
        .client
        .invoke("upper", Method::POST, &headers, Bytes::from("queued"), true)
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.headers["x-call-id"].to_str().unwrap().to_string();
    let (h, body) =
        tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap();
    assert_eq!(body, "QUEUED");
    assert_eq!(h["x-call-id"], id.as_str());
    assert_eq!(h["x-function-status"], "200");
    assert_eq!(h["x-function-name"], "upper");
    assert!(h.contains_key("x-duration-seconds"));
    let rec = env
        .client
        .send(Method::GET, &format!("/system/activations/{id}"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(rec.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&rec.body).unwrap();
    assert_eq!(v["callId"], id.as_str());
    env.client.remove("upper", None).await.unwrap();
}

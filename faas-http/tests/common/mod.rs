//! Shared harness: a gateway over a MemoryInvoker, served on 127.0.0.1 with a real socket.
#![allow(dead_code, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use faas_core::conformance::MemoryWorkload;
use faas_core::{handler_fn, Backend, Context, Error, FunctionSpec, MemoryInvoker, Request};
use faas_http::client::{GatewayClient, Reply};
use faas_http::{Gateway, GatewayConfig};
use http::Method;

pub struct TestGateway {
    pub base: String,
    pub invoker: Arc<MemoryInvoker>,
    pub client: GatewayClient,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn memory_invoker() -> Arc<MemoryInvoker> {
    let invoker = MemoryInvoker::builder().cold_start(Duration::from_millis(20)).build();
    MemoryWorkload::new(&invoker);
    invoker.register(
        "test/fail",
        handler_fn(|_req: Request, _ctx: Context| async move {
            Err::<String, _>(Error::application("the input was rejected by the function"))
        }),
    );
    invoker.register(
        "test/forwarded",
        handler_fn(|req: Request, _ctx: Context| async move {
            // Reports what the gateway forwarded of the request's routing headers.
            let h = req.headers();
            let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
            Ok::<_, Error>(format!(
                "x-forwarded-host={} host={} connection={} x-call-id={}",
                get("x-forwarded-host"),
                get("host"),
                get("connection"),
                get("x-call-id").len()
            ))
        }),
    );
    invoker.register(
        "test/count",
        handler_fn(|req: Request, _ctx: Context| async move {
            // Reads a streamed body chunk by chunk and answers its length.
            use http_body_util::BodyExt;
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(f) = body.frame().await {
                let f = f.map_err(|e| Error::invalid("body", e.to_string()))?;
                if let Ok(d) = f.into_data() {
                    n += d.len();
                }
            }
            Ok::<_, Error>(n.to_string())
        }),
    );
    invoker.register(
        "test/relay",
        handler_fn(|req: Request, _ctx: Context| async move {
            // Reads the body as a forwarding backend does: a body that breaks fails the call
            // as the instance's 503, whoever broke it.
            let body = req.into_body().collect_bytes().await;
            let body = body.map_err(|e| Error::unavailable(format!("relaying the body: {e}")))?;
            Ok::<_, Error>(body.len().to_string())
        }),
    );
    invoker
        .register("test/ok", handler_fn(|_r: Request, _c: Context| async { Ok::<_, Error>("ok") }));
    Arc::new(invoker)
}

pub async fn start(config: GatewayConfig) -> TestGateway {
    start_with(memory_invoker(), config).await
}

pub async fn start_with(invoker: Arc<MemoryInvoker>, config: GatewayConfig) -> TestGateway {
    let auth = config.auth.clone();
    let gateway = Gateway::builder(invoker.clone() as Arc<dyn Backend>).config(config).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = rx.await;
    }));
    let base = format!("http://{addr}");
    let client =
        GatewayClient::new(&base).unwrap().with_auth(auth).with_timeout(Duration::from_secs(60));
    TestGateway { base, invoker, client, shutdown: Some(tx) }
}

impl TestGateway {
    pub async fn req(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Reply {
        self.client.send(method, path, &[], body.into()).await.unwrap()
    }

    pub async fn req_h(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let h: Vec<(String, String)> =
            headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.client.send(method, path, &h, body.into()).await.unwrap()
    }

    pub async fn deploy(&self, spec: FunctionSpec) {
        let r =
            self.req(Method::POST, "/system/functions", serde_json::to_vec(&spec).unwrap()).await;
        assert_eq!(r.status, 202, "deploy {}: {}", spec.name, r.text());
    }
}

/// Polls `f` until it returns Some, at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("condition not reached in time")
}

//! Benchmarks of the Kubernetes backend without a cluster:
//!
//! - `invoke/warm_k8s_backend`: a warm invocation through `KubernetesInvoker` (status cached,
//!   forwarded over HTTP/1.1 to a loopback server), against `invoke/direct_hyper_baseline`: the
//!   same request sent with a bare hyper client to the same server. The difference is the
//!   backend's own overhead per invocation.
//! - `manifests/render_50_yaml` and `manifests/render_50_json`: `render_manifests` for a
//!   50-function stack.
//!
//! Run: `cargo bench -p faas-backend-k8s --bench k8s -- --warm-up-time 1 --measurement-time 3`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use faas_backend_k8s::{render_manifests, KubernetesInvoker, ManifestFormat, ManifestOptions};
use faas_core::prelude::*;
use faas_core::{FunctionSpec, Invocation, Resources};
use http_body_util::{BodyExt, Full};

async fn echo_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(http::Response::new(Full::new(body)))
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    addr
}

/// A kube client whose API answers every request with an available `echo` Deployment.
fn fake_client() -> kube::Client {
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "echo", "namespace": "openfaas-fn", "resourceVersion": "1",
                     "labels": {"faas_function": "echo"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"faas_function": "echo"}},
                 "template": {"spec": {"containers": [{"name": "echo", "image": "img"}]}}},
        "status": {"replicas": 1, "availableReplicas": 1}
    });
    let body = Bytes::from(serde_json::to_vec(&deployment).unwrap());
    let svc = tower::service_fn(move |_req: http::Request<kube::client::Body>| {
        let body = body.clone();
        async move { Ok::<_, Infallible>(http::Response::new(Full::new(body))) }
    });
    kube::Client::new(svc, "default")
}

fn stack(n: usize) -> Vec<FunctionSpec> {
    (0..n)
        .map(|i| {
            let mut s = FunctionSpec::new(format!("fn-{i}"), "ghcr.io/example/fn:1.0")
                .process("node index.js")
                .env("MODE", "production")
                .label("com.openfaas.scale.min", "1")
                .secret("api-key")
                .timeout(Duration::from_secs(30));
            s.constraints = vec!["node.labels.type == worker".into()];
            s.limits = Some(Resources { memory: Some("128Mi".into()), cpu: Some("500m".into()) });
            s
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let addr = rt.block_on(echo_server());
    let inv = rt.block_on(async {
        KubernetesInvoker::builder(fake_client())
            .base_url(format!("http://{addr}/{{name}}"))
            .status_cache_ttl(Duration::from_secs(3600))
            .build()
    });
    let direct: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let url: http::Uri = format!("http://{addr}/echo/").parse().unwrap();

    let mut g = c.benchmark_group("invoke");
    g.bench_function("warm_k8s_backend", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = inv.invoke(Invocation::post("echo", "payload")).await.unwrap();
            let body = resp.into_body().collect_bytes().await.unwrap();
            assert_eq!(body.len(), 7);
        })
    });
    g.bench_function("direct_hyper_baseline", |b| {
        b.to_async(&rt).iter(|| async {
            let req = http::Request::post(url.clone())
                .body(Full::new(Bytes::from_static(b"payload")))
                .unwrap();
            let resp = direct.request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 7);
        })
    });
    g.finish();

    let specs = stack(50);
    let mut g = c.benchmark_group("manifests");
    g.bench_function("render_50_yaml", |b| {
        b.iter(|| render_manifests(&specs, &ManifestOptions::new()).unwrap().len())
    });
    let json = ManifestOptions::new().format(ManifestFormat::JsonList);
    g.bench_function("render_50_json", |b| {
        b.iter(|| render_manifests(&specs, &json).unwrap().len())
    });
    g.finish();
}

criterion_group!(k8s, benches);
criterion_main!(k8s);

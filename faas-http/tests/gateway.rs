//! End-to-end tests of the gateway over real TCP on 127.0.0.1, with the in-memory backend.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{eventually, memory_invoker, start, start_with};
use faas_core::conformance::Behaviour;
use faas_core::conformance::MemoryWorkload;
use faas_core::{FunctionSpec, FunctionStatus};
use faas_http::{BasicAuth, GatewayConfig};
use http::Method;

fn echo(name: &str) -> FunctionSpec {
    FunctionSpec::new(name, MemoryWorkload::image(Behaviour::Echo))
}

#[tokio::test]
async fn health_info_namespaces_and_unknown_routes() {
    let g = start(GatewayConfig::default()).await;
    let r = g.req(Method::GET, "/healthz", "").await;
    assert_eq!(r.status, 200);
    let r = g.req(Method::GET, "/system/info", "").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["provider"]["provider"], "faas-rs-memory");
    assert!(v["provider"]["orchestration"].is_string());
    assert!(v["provider"]["version"]["release"].is_string());
    assert!(v["provider"]["version"]["sha"].is_string());
    assert!(v["version"]["release"].is_string());
    assert!(v["arch"].is_string());
    let r = g.req(Method::GET, "/system/namespaces", "").await;
    assert_eq!(r.status, 200);
    let ns: Vec<String> = serde_json::from_slice(&r.body).unwrap();
    assert!(ns.contains(&"openfaas-fn".to_string()), "{ns:?}");
    let r = g.req(Method::GET, "/nope", "").await;
    assert_eq!(r.status, 404);
    let r = g.req(Method::POST, "/healthz", "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET");
    let r = g.req(Method::DELETE, "/system/function/x", "").await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn deploy_list_status_update_remove() {
    let g = start(GatewayConfig::default()).await;
    let body = serde_json::json!({
        "service": "echo1",
        "image": MemoryWorkload::image(Behaviour::Echo),
        "envProcess": "cat",
        "envVars": {"A": "1"},
        "labels": {"team": "x"},
        "annotations": {"note": "y"},
        "limits": {"memory": "128Mi", "cpu": "0.5"},
        "requests": {"memory": "64Mi"},
        "constraints": ["type=test"],
        "secrets": null,
        "readOnlyRootFilesystem": true
    });
    let r = g.req(Method::POST, "/system/functions", serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(r.status, 202, "{}", r.text());
    // Deploying again conflicts.
    let r = g.req(Method::POST, "/system/functions", serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(r.status, 409, "{}", r.text());

    let r = g.req(Method::GET, "/system/functions", "").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let f = &v.as_array().unwrap().iter().find(|f| f["name"] == "echo1").unwrap();
    for field in [
        "name",
        "image",
        "namespace",
        "envProcess",
        "envVars",
        "labels",
        "annotations",
        "limits",
        "requests",
        "constraints",
        "invocationCount",
        "replicas",
        "availableReplicas",
        "createdAt",
        "readOnlyRootFilesystem",
    ] {
        assert!(f.get(field).is_some(), "missing {field} in {f}");
    }
    assert_eq!(f["namespace"], "openfaas-fn");
    assert_eq!(f["envVars"]["A"], "1");
    assert_eq!(f["limits"]["memory"], "128Mi");

    let r = g.req(Method::GET, "/system/function/echo1", "").await;
    assert_eq!(r.status, 200);
    let st: FunctionStatus = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(st.replicas, 1);
    // name.namespace and ?namespace= address the same function.
    assert_eq!(g.req(Method::GET, "/system/function/echo1.openfaas-fn", "").await.status, 200);
    assert_eq!(
        g.req(Method::GET, "/system/function/echo1?namespace=openfaas-fn", "").await.status,
        200
    );
    assert_eq!(g.req(Method::GET, "/system/function/nope", "").await.status, 404);

    // Update: PUT replaces the spec; PUT of an unknown function is 404 (faas-cli then POSTs).
    let mut upd = body.clone();
    upd["envVars"] = serde_json::json!({"A": "2"});
    let r = g.req(Method::PUT, "/system/functions", serde_json::to_vec(&upd).unwrap()).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let st: FunctionStatus =
        serde_json::from_slice(&g.req(Method::GET, "/system/function/echo1", "").await.body)
            .unwrap();
    assert_eq!(st.env_vars["A"], "2");
    let mut other = body.clone();
    other["service"] = "ghost".into();
    let r = g.req(Method::PUT, "/system/functions", serde_json::to_vec(&other).unwrap()).await;
    assert_eq!(r.status, 404);

    // The client's deploy does PUT then POST.
    assert!(!g.client.deploy(&echo("echo2")).await.unwrap());
    assert!(g.client.deploy(&echo("echo2")).await.unwrap());

    let r = g.req(Method::DELETE, "/system/functions", r#"{"functionName":"echo1"}"#).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(g.req(Method::GET, "/system/function/echo1", "").await.status, 404);
    let r = g.req(Method::DELETE, "/system/functions", r#"{"functionName":"echo1"}"#).await;
    assert_eq!(r.status, 404);
    assert_eq!(g.req(Method::POST, "/function/echo1", "x").await.status, 404);
}

#[tokio::test]
async fn malformed_requests_are_400_naming_the_field() {
    let g = start(GatewayConfig::default()).await;
    let cases: &[(Method, &str, &str, &str)] = &[
        (Method::POST, "/system/functions", r#"{"image":"x"}"#, "service"),
        (Method::POST, "/system/functions", r#"{"service":5,"image":"x"}"#, "service"),
        (
            Method::POST,
            "/system/functions",
            r#"{"service":"a","image":"x","envVars":[1]}"#,
            "envVars",
        ),
        (Method::POST, "/system/functions", r#"{"service":"Bad_Name","image":"x"}"#, "service"),
        (
            Method::POST,
            "/system/functions",
            r#"{"service":"a","image":"x","limits":{"memory":"lots"}}"#,
            "limits.memory",
        ),
        (
            Method::POST,
            "/system/functions",
            r#"{"service":"a","image":"x","labels":{"com.openfaas.scale.min":"two"}}"#,
            "com.openfaas.scale.min",
        ),
        (Method::POST, "/system/functions", "{not json", "body"),
        (Method::POST, "/system/functions", "", "body"),
        (Method::DELETE, "/system/functions", r#"{"name":"x"}"#, "functionName"),
        (Method::POST, "/system/scale-function/a", r#"{"replicas":"many"}"#, "replicas"),
        (Method::POST, "/system/scale-function/a", r#"{"replicas":99999999999}"#, "replicas"),
        (Method::POST, "/system/secrets", r#"{"name":"Bad!","value":"v"}"#, "name"),
        (Method::POST, "/system/secrets", r#"{"name":"ok"}"#, "value"),
        (Method::POST, "/system/secrets", r#"{"name":"ok","rawValue":"%%%"}"#, "rawValue"),
        (Method::GET, "/system/logs", "", "name"),
        (Method::GET, "/system/logs?name=a&tail=x", "", "tail"),
        (Method::GET, "/system/logs?name=a&since=yesterday", "", "since"),
        (Method::GET, "/system/functions?namespace=Bad_NS", "", "namespace"),
        (Method::POST, "/function/bad%20name", "", "function name"),
    ];
    for (m, path, body, field) in cases {
        let r = g.req(m.clone(), path, body.to_string()).await;
        assert_eq!(r.status, 400, "{m} {path} {body}: {}", r.text());
        assert!(
            r.text().contains(field),
            "{m} {path} {body}: {:?} does not name {field}",
            r.text()
        );
    }
}

#[tokio::test]
async fn invoke_passes_everything_through() {
    let g = start(GatewayConfig::default()).await;
    g.deploy(echo("echo")).await;
    let r = g
        .req_h(
            Method::PUT,
            "/function/echo/some/path?x=1&y=two",
            &[("x-test-a", "alpha"), ("content-type", "text/plain"), ("x-call-id", "my-call-1")],
            "hello body",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello body");
    assert_eq!(r.headers["x-echo-method"], "PUT");
    assert_eq!(r.headers["x-echo-path"], "/some/path");
    assert_eq!(r.headers["x-echo-query"], "x=1&y=two");
    assert_eq!(r.headers["x-echo-x-test-a"], "alpha");
    assert_eq!(r.headers["x-call-id"], "my-call-1");
    let start: u128 = r.headers["x-start-time"].to_str().unwrap().parse().unwrap();
    assert!(start > 1_600_000_000_000_000_000, "nanoseconds since the epoch: {start}");
    let d: f64 = r.headers["x-duration-seconds"].to_str().unwrap().parse().unwrap();
    assert!((0.0..60.0).contains(&d));

    // Host is sent on as X-Forwarded-Host; hop-by-hop headers are not passed.
    g.deploy(FunctionSpec::new("fwd", "test/forwarded")).await;
    let r = g
        .req_h(
            Method::GET,
            "/function/fwd",
            &[("host", "gw.example:8080"), ("connection", "keep-alive")],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "x-forwarded-host=gw.example:8080 host=- connection=- x-call-id=32");

    // Without a suffix the function sees "/", and a call id is generated.
    let r = g.req(Method::GET, "/function/echo", "").await;
    assert_eq!(r.headers["x-echo-path"], "/");
    assert_eq!(r.headers["x-call-id"].len(), 32);
    // name.namespace.
    let r = g.req(Method::POST, "/function/echo.openfaas-fn/p", "ns").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ns"));
    // Unknown function and unknown namespace: 404.
    assert_eq!(g.req(Method::POST, "/function/ghost", "").await.status, 404);
    assert_eq!(g.req(Method::POST, "/function/echo.elsewhere", "").await.status, 404);
}

#[tokio::test]
async fn request_and_response_bodies_stream() {
    let g = start(GatewayConfig::default()).await;
    g.deploy(FunctionSpec::new("count", "test/count")).await;
    // A chunked request body, sent while the function reads it.
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> =
        (0..64).map(|_| Ok(hyper::body::Frame::data(Bytes::from(vec![b'x'; 16 * 1024])))).collect();
    let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::StreamBody<_>>();
    let req = http::Request::post(format!("{}/function/count", g.base)).body(body).unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(b, (64 * 16 * 1024).to_string());
}

#[tokio::test]
async fn body_limit_is_413_declared_or_streamed() {
    let cfg = GatewayConfig { max_body_bytes: 1000, ..Default::default() };
    let g = start(cfg).await;
    g.deploy(FunctionSpec::new("count", "test/count")).await;
    let r = g.req(Method::POST, "/function/count", vec![b'a'; 1001]).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("1000"), "{}", r.text());
    let r = g.req(Method::POST, "/function/count", vec![b'a'; 1000]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "1000"));
    // Chunked, no Content-Length: cut while streaming.
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> =
        (0..10).map(|_| Ok(hyper::body::Frame::data(Bytes::from(vec![b'x'; 300])))).collect();
    let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::StreamBody<_>>();
    let req = http::Request::post(format!("{}/function/count", g.base)).body(body).unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    // A system route buffers its JSON body under the same limit.
    let big = format!(r#"{{"service":"a","image":"{}"}}"#, "x".repeat(2000));
    assert_eq!(g.req(Method::POST, "/system/functions", big).await.status, 413);
}

#[tokio::test]
async fn function_errors_map_to_statuses() {
    let cfg = GatewayConfig { upstream_timeout: Duration::from_millis(800), ..Default::default() };
    let g = start(cfg).await;
    g.deploy(FunctionSpec::new("fail", "test/fail")).await;
    g.deploy(FunctionSpec::new("crash", MemoryWorkload::image(Behaviour::Crash))).await;
    g.deploy(
        FunctionSpec::new("slowfn", MemoryWorkload::image(Behaviour::Sleep))
            .timeout(Duration::from_millis(200)),
    )
    .await;
    g.deploy(FunctionSpec::new("slowgw", MemoryWorkload::image(Behaviour::Sleep))).await;

    let r = g.req(Method::POST, "/function/fail", "").await;
    assert_eq!(r.status, 502, "application error: {}", r.text());
    assert!(r.text().contains("rejected by the function"), "{}", r.text());
    let r = g.req(Method::POST, "/function/crash?crash=1", "").await;
    assert_eq!(r.status, 502, "developer error: {}", r.text());
    let r = g.req(Method::POST, "/function/slowfn?ms=3000", "").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.text().contains("function") && r.text().contains("200ms"),
        "names the function timeout: {}",
        r.text()
    );
    let r = g.req(Method::POST, "/function/slowgw?ms=3000", "").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.text().contains("gateway upstream timeout of 800ms"),
        "names the gateway timeout: {}",
        r.text()
    );
    // A function timeout longer than the gateway's is refused at deploy, so they agree.
    let spec = FunctionSpec::new("toolong", "test/ok").timeout(Duration::from_secs(5));
    let r = g.req(Method::POST, "/system/functions", serde_json::to_vec(&spec).unwrap()).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("timeout") && r.text().contains("800ms"), "{}", r.text());
}

#[tokio::test]
async fn scale_and_scale_from_zero() {
    let g = start(GatewayConfig::default()).await;
    g.deploy(echo("zero")).await;
    let r = g
        .req(Method::POST, "/system/scale-function/zero", r#"{"serviceName":"zero","replicas":0}"#)
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let st = g.client.describe("zero", None).await.unwrap();
    assert_eq!((st.replicas, st.available_replicas), (0, 0));
    // The request is held while the function scales up, then served.
    let r = g.req(Method::POST, "/function/zero", "back").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "back"));
    let st = g.client.describe("zero", None).await.unwrap();
    assert!(st.replicas >= 1 && st.available_replicas >= 1, "{st:?}");
    g.client.scale("zero", None, 3).await.unwrap();
    assert_eq!(g.client.describe("zero", None).await.unwrap().replicas, 3);
    assert_eq!(
        g.req(Method::POST, "/system/scale-function/ghost", r#"{"replicas":1}"#).await.status,
        404
    );
    let r = g
        .req(Method::POST, "/system/scale-function/zero", r#"{"serviceName":"other","replicas":1}"#)
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn scale_from_zero_timeout_is_503_with_a_message() {
    // An instance that takes an hour to start: only the 300 ms scale-from-zero timeout can
    // end the wait (no wall-time bound to race on a loaded machine), and it cannot end it
    // before 300 ms.
    let invoker = faas_core::MemoryInvoker::builder().cold_start(Duration::from_secs(3600)).build();
    MemoryWorkload::new(&invoker);
    let cfg =
        GatewayConfig { scale_from_zero_timeout: Duration::from_millis(300), ..Default::default() };
    let g = start_with(std::sync::Arc::new(invoker), cfg).await;
    g.deploy(echo("sleepy").label("com.openfaas.scale.min", "0")).await;
    g.client.scale("sleepy", None, 0).await.unwrap();
    let t0 = std::time::Instant::now();
    let r =
        tokio::time::timeout(Duration::from_secs(60), g.req(Method::POST, "/function/sleepy", "x"))
            .await
            .expect("the wait for a scale from zero is bounded by its timeout");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("scale-from-zero timeout of 300ms"), "{}", r.text());
    assert!(t0.elapsed() >= Duration::from_millis(300), "gave up early: {:?}", t0.elapsed());
}

#[tokio::test]
async fn secrets_lifecycle() {
    let g = start(GatewayConfig::default()).await;
    let r = g.req(Method::POST, "/system/secrets", r#"{"name":"api-key","value":"s3cr3t"}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        g.req(Method::POST, "/system/secrets", r#"{"name":"api-key","value":"x"}"#).await.status,
        409
    );
    let raw = faas_core::queue::base64_encode(b"\x00\x01raw");
    let r = g
        .req(
            Method::POST,
            "/system/secrets",
            format!(r#"{{"name":"raw","rawValue":"{raw}","namespace":"openfaas-fn"}}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let list = g.client.list_secrets(None).await.unwrap();
    let names: Vec<_> = list.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"api-key") && names.contains(&"raw"), "{names:?}");
    assert!(!String::from_utf8_lossy(&g.req(Method::GET, "/system/secrets", "").await.body)
        .contains("s3cr3t"));
    // The function sees the secret.
    g.deploy(FunctionSpec::new("env", MemoryWorkload::image(Behaviour::Env)).secret("api-key"))
        .await;
    let r = g.req(Method::GET, "/function/env?secret=api-key", "").await;
    assert_eq!(r.text(), "s3cr3t");
    let r = g.req(Method::PUT, "/system/secrets", r#"{"name":"api-key","value":"n3w"}"#).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        g.req(Method::PUT, "/system/secrets", r#"{"name":"ghost","value":"n"}"#).await.status,
        404
    );
    let r = g.req(Method::DELETE, "/system/secrets", r#"{"name":"raw"}"#).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(g.req(Method::DELETE, "/system/secrets", r#"{"name":"raw"}"#).await.status, 404);
}

#[tokio::test]
async fn logs_as_json_lines_and_follow() {
    let g = start(GatewayConfig::default()).await;
    g.deploy(FunctionSpec::new("logger", MemoryWorkload::image(Behaviour::Log))).await;
    assert_eq!(g.req(Method::POST, "/function/logger", "first line").await.status, 200);
    let r = g.req(Method::GET, "/system/logs?name=logger", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    let lines: Vec<serde_json::Value> =
        r.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = lines.iter().find(|l| l["text"] == "first line").expect("the logged line");
    for k in ["name", "namespace", "instance", "timestamp", "text"] {
        assert!(first.get(k).is_some(), "missing {k}: {first}");
    }
    assert_eq!(first["name"], "logger");

    // follow=true keeps the stream open and delivers new lines.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = g.client.clone();
    let follower = tokio::spawn(async move {
        client
            .logs("logger", None, Some(0), true, |e| {
                let _ = tx.send(e.text);
            })
            .await
    });
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            // Keep writing until the follower sees a line written after it connected.
            assert_eq!(g.req(Method::POST, "/function/logger", "followed line").await.status, 200);
            match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
                Ok(Some(t)) if t == "followed line" => return t,
                Ok(Some(_)) | Err(_) => continue,
                Ok(None) => panic!("stream ended"),
            }
        }
    })
    .await
    .expect("a followed line");
    assert_eq!(line, "followed line");
    follower.abort();
    assert_eq!(g.req(Method::GET, "/system/logs?name=ghost", "").await.status, 404);
}

#[tokio::test]
async fn metrics_use_openfaas_names() {
    let g = start(GatewayConfig::default()).await;
    g.deploy(echo("metered")).await;
    for _ in 0..3 {
        assert_eq!(g.req(Method::POST, "/function/metered", "x").await.status, 200);
    }
    g.deploy(FunctionSpec::new("failing", "test/fail")).await;
    assert_eq!(g.req(Method::POST, "/function/failing", "x").await.status, 502);
    let r = g.req(Method::GET, "/metrics", "").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let m = r.text();
    assert!(
        m.contains(
            r#"gateway_function_invocation_total{function_name="metered.openfaas-fn",code="200"} 3"#
        ),
        "{m}"
    );
    assert!(
        m.contains(
            r#"gateway_function_invocation_total{function_name="failing.openfaas-fn",code="502"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"gateway_function_invocation_started{function_name="metered.openfaas-fn"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(
            r#"gateway_functions_seconds_bucket{function_name="metered.openfaas-fn",code="200",le="#
        ),
        "{m}"
    );
    assert!(
        m.contains(
            r#"gateway_functions_seconds_count{function_name="metered.openfaas-fn",code="200"} 3"#
        ),
        "{m}"
    );
    assert!(m.contains(r#"gateway_service_count{function_name="metered.openfaas-fn"} 1"#), "{m}");
}

#[tokio::test]
async fn basic_auth_protects_system_routes() {
    let dir = std::env::temp_dir().join(format!("faas-gw-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("basic-auth-user"), "admin\n").unwrap();
    std::fs::write(dir.join("basic-auth-password"), "hunter2\n").unwrap();
    let creds = BasicAuth::from_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let g = start(GatewayConfig { auth: Some(creds.clone()), ..Default::default() }).await;
    g.deploy(echo("open")).await; // the harness client sends the credentials
    let anon = faas_http::client::GatewayClient::new(&g.base).unwrap();
    let wrong = faas_http::client::GatewayClient::new(&g.base)
        .unwrap()
        .with_auth(Some(BasicAuth::new("admin", "hunter3")));
    for path in ["/system/functions", "/system/info", "/system/secrets", "/ui/"] {
        for c in [&anon, &wrong] {
            let r = c.send(Method::GET, path, &[], Bytes::new()).await.unwrap();
            assert_eq!(r.status, 401, "{path}");
            assert_eq!(r.headers["www-authenticate"], "Basic realm=\"Restricted\"");
        }
        assert_eq!(g.req(Method::GET, path, "").await.status, 200, "{path} with credentials");
    }
    // Functions, health and metrics stay open.
    let r = anon.send(Method::POST, "/function/open", &[], Bytes::from("hi")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(anon.send(Method::GET, "/healthz", &[], Bytes::new()).await.unwrap().status, 200);
}

/// A `text/plain` POST from a page elsewhere needs no CORS preflight; with auth off it
/// would deploy a function. Refused by its `Origin` or `Sec-Fetch-Site`, while the
/// gateway's own portal (same origin) and tools sending neither header go on.
#[tokio::test]
async fn cross_site_requests_to_system_routes_are_refused() {
    let g = start(GatewayConfig::default()).await;
    let host = g.base.trim_start_matches("http://").to_string();
    let spec = serde_json::to_vec(&echo("planted")).unwrap();
    let text = ("content-type", "text/plain");
    for headers in [
        vec![text, ("origin", "http://evil.example")],
        vec![text, ("origin", "null")],
        vec![text, ("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")],
        vec![text, ("sec-fetch-site", "same-site")],
        // Same host, another port: another origin.
        vec![text, ("origin", "http://127.0.0.1:1")],
    ] {
        let r = g.req_h(Method::POST, "/system/functions", &headers, spec.clone()).await;
        assert_eq!(r.status, 403, "{headers:?}: {}", r.text());
        assert!(r.text().contains("cross-site request refused"), "{}", r.text());
    }
    let r = g.req_h(Method::DELETE, "/system/secrets", &[("origin", "http://evil.example")], "");
    assert_eq!(r.await.status, 403);
    // Nothing was deployed.
    assert_eq!(g.req(Method::GET, "/system/function/planted", "").await.status, 404);
    // Reads and function calls are not state changes of the gateway: not refused.
    let r = g.req_h(Method::GET, "/system/functions", &[("origin", "http://evil.example")], "");
    assert_eq!(r.await.status, 200);
    // The portal's own request: same origin.
    let origin = format!("http://{host}");
    let own = [("origin", origin.as_str()), ("sec-fetch-site", "same-origin")];
    let r = g.req_h(Method::POST, "/system/functions", &own, spec.clone()).await;
    assert_eq!(r.status, 202, "{}", r.text());
    // curl and faas-cli send neither header.
    let r = g.req(Method::POST, "/system/functions", serde_json::to_vec(&echo("cli")).unwrap());
    assert_eq!(r.await.status, 202);
    // The portal may not be framed by another site.
    let r = g.req(Method::GET, "/ui/", "").await;
    assert_eq!(r.headers["x-frame-options"], "DENY");
    assert_eq!(r.headers["content-security-policy"], "frame-ancestors 'none'");
}

/// DNS rebinding: a name of the attacker's resolving to 127.0.0.1 makes the browser send
/// `Host: evil.example`. Refused on `/system/*` and `/ui/*`; IP addresses, `localhost`
/// and configured names are served; the check can be configured and turned off.
#[tokio::test]
async fn host_allow_list_refuses_rebound_names() {
    let g = start(GatewayConfig::default()).await;
    for host in ["evil.example", "evil.example:8080", "localhost.evil.example"] {
        for path in ["/system/functions", "/ui/", "/system/info"] {
            let r = g.req_h(Method::GET, path, &[("host", host)], "").await;
            assert_eq!(r.status, 403, "{host} {path}");
            assert!(r.text().contains("allowed hosts"), "{}", r.text());
            assert!(r.text().contains("evil.example"), "{}", r.text());
        }
    }
    // A Host that is no host at all is bad input.
    let r = g.req_h(Method::GET, "/system/functions", &[("host", "a b")], "").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("invalid Host header"), "{}", r.text());
    for host in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "app.localhost", "[::1]:80"] {
        let r = g.req_h(Method::GET, "/system/functions", &[("host", host)], "").await;
        assert_eq!(r.status, 200, "{host}");
    }
    // Functions and health stay reachable under any name, as in OpenFaaS.
    g.deploy(echo("open")).await;
    let r = g.req_h(Method::POST, "/function/open", &[("host", "evil.example")], "hi").await;
    assert_eq!(r.status, 200);
    let r = g.req_h(Method::GET, "/healthz", &[("host", "evil.example")], "").await;
    assert_eq!(r.status, 200);

    let mut config = GatewayConfig::default();
    config.cross_site.allowed_hosts = vec!["faas.example.com".into()];
    config.cross_site.allowed_origins = vec!["https://faas.example.com".into()];
    let g = start(config).await;
    let r = g.req_h(Method::GET, "/system/functions", &[("host", "FAAS.example.com")], "").await;
    assert_eq!(r.status, 200);
    let r = g.req_h(Method::GET, "/system/functions", &[("host", "evil.example")], "").await;
    assert_eq!(r.status, 403);
    // Behind a TLS proxy that keeps Host: the https origin on the default port.
    let spec = serde_json::to_vec(&echo("proxied")).unwrap();
    let proxied = [("host", "faas.example.com"), ("origin", "https://faas.example.com")];
    let r = g.req_h(Method::POST, "/system/functions", &proxied, spec).await;
    assert_eq!(r.status, 202, "{}", r.text());

    let g = start(GatewayConfig {
        cross_site: faas_http::CrossSiteConfig::disabled(),
        ..Default::default()
    })
    .await;
    let r = g.req_h(Method::GET, "/system/functions", &[("host", "evil.example")], "").await;
    assert_eq!(r.status, 200);
}

/// Failed logins are counted per client address: after `burst` failures the next attempt
/// is answered 429 with `Retry-After`, even with the right password (so guessing on tells
/// nothing), while requests without credentials and functions are unaffected.
#[tokio::test]
async fn failed_logins_are_throttled_per_client() {
    let creds = BasicAuth::new("admin", "correct horse");
    let g = start(GatewayConfig {
        auth: Some(creds.clone()),
        login_throttle: Some(faas_http::LoginThrottleConfig {
            burst: 3,
            refill: Duration::from_secs(600),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    g.deploy(echo("open")).await;
    let wrong = faas_http::client::GatewayClient::new(&g.base)
        .unwrap()
        .with_auth(Some(BasicAuth::new("admin", "battery staple")));
    for i in 0..3 {
        let r = wrong.send(Method::GET, "/system/functions", &[], Bytes::new()).await.unwrap();
        assert_eq!(r.status, 401, "failure {i}");
    }
    let r = wrong.send(Method::GET, "/system/functions", &[], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((590..=600).contains(&secs), "{secs}");
    assert!(r.text().contains("too many failed logins"), "{}", r.text());
    // The right password from the same address waits too.
    assert_eq!(g.req(Method::GET, "/system/functions", "").await.status, 429);
    // No credentials: a plain 401, as before.
    let anon = faas_http::client::GatewayClient::new(&g.base).unwrap();
    let r = anon.send(Method::GET, "/system/functions", &[], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 401);
    let r = anon.send(Method::POST, "/function/open", &[], Bytes::from("hi")).await.unwrap();
    assert_eq!(r.status, 200);
    // The client surfaces it as overloaded with the wait.
    let e = wrong.list(None).await.unwrap_err();
    assert!(matches!(&e, faas_core::Error::Overloaded { retry_after: Some(_), .. }), "{e:?}");
}

/// A callback listener on 127.0.0.1: its URL (`/done`) and the requests it receives.
async fn callback_listener(
) -> (String, tokio::sync::mpsc::UnboundedReceiver<(http::request::Parts, Bytes)>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cb = format!("http://{}/done", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(s),
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let _ = tx.send((parts, body));
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::new()),
                        ))
                    }
                }),
            ));
        }
    });
    (cb, rx)
}

/// A reused `X-Call-Id` does not overwrite the earlier call's record: the second call is
/// stored under a new id (the 202 says which), and the caller's id comes back with its
/// callback as `X-Caller-Call-Id`.
#[tokio::test]
async fn a_reused_call_id_gets_a_new_id_and_keeps_the_first_record() {
    let g = start(GatewayConfig::default()).await;
    g.deploy(echo("traced")).await;
    let (cb, mut rx) = callback_listener().await;
    let send = |body: &'static str| {
        let (g, cb) = (&g, cb.clone());
        async move {
            let h = [("x-call-id", "trace-1"), ("x-callback-url", cb.as_str())];
            let r = g.req_h(Method::POST, "/async-function/traced", &h, body).await;
            assert_eq!(r.status, 202, "{}", r.text());
            r.headers["x-call-id"].to_str().unwrap().to_string()
        }
    };
    let first = send("first").await;
    assert_eq!(first, "trace-1", "an unused id is kept");
    let mut callbacks = std::collections::HashMap::new();
    let (parts, body) =
        tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap();
    callbacks.insert(body, parts.headers);
    let second = send("second").await;
    assert_ne!(second, "trace-1", "a reused id is not stored over the first call's");
    let (parts, body) =
        tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap();
    callbacks.insert(body, parts.headers);
    assert_eq!(callbacks[&Bytes::from("first")]["x-call-id"], "trace-1");
    assert!(!callbacks[&Bytes::from("first")].contains_key("x-caller-call-id"));
    assert_eq!(callbacks[&Bytes::from("second")]["x-call-id"], second.as_str());
    assert_eq!(callbacks[&Bytes::from("second")]["x-caller-call-id"], "trace-1");
    // Both records are there, each under its own id.
    for id in [first.as_str(), second.as_str()] {
        let r = g.req(Method::GET, &format!("/system/activations/{id}"), "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["callId"], id);
    }
}

#[tokio::test]
async fn async_invocation_posts_the_result_to_the_callback() {
    let g = start(GatewayConfig::default()).await;
    g.deploy(echo("later")).await;
    // A real callback listener on 127.0.0.1.
    let (cb, mut rx) = callback_listener().await;
    let r = g
        .req_h(
            Method::POST,
            "/async-function/later/sub?q=1",
            &[("x-callback-url", &cb), ("x-test-k", "v")],
            "async body",
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let call_id = r.headers["x-call-id"].to_str().unwrap().to_string();
    let (parts, body) =
        tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap();
    assert_eq!(parts.method, Method::POST);
    assert_eq!(parts.uri.path(), "/done");
    assert_eq!(body, "async body");
    assert_eq!(parts.headers["x-call-id"], call_id.as_str());
    assert_eq!(parts.headers["x-function-status"], "200");
    assert_eq!(parts.headers["x-function-name"], "later");
    let d: f64 = parts.headers["x-duration-seconds"].to_str().unwrap().parse().unwrap();
    // The activation record, by call id (our extension).
    let gw = &g;
    let id = call_id.clone();
    let v: serde_json::Value = eventually(20, || {
        let id = id.clone();
        async move {
            let r = gw.req(Method::GET, &format!("/system/activations/{id}"), "").await;
            assert_eq!(r.status, 200, "a published call id is known at once: {}", r.text());
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            (v["state"] == "succeeded" && v.get("callback").is_some()).then_some(v)
        }
    })
    .await;
    assert_eq!(v["callId"], call_id.as_str());
    assert_eq!(v["function"], "later");
    assert_eq!(v["status"], 200);
    assert_eq!(v["activation"]["activationId"], call_id.as_str());
    assert_eq!(v["activation"]["response"]["success"], true);
    // The callback's duration is the call's, as the activation record gives it (ms).
    let ms = v["activation"]["duration"].as_f64().expect("activation duration");
    assert!((d * 1000.0 - ms).abs() <= 1.0, "x-duration-seconds {d} vs the activation's {ms} ms");
    assert_eq!(g.req(Method::GET, "/system/activations/unknown", "").await.status, 404);
    // Errors: unknown function, bad callback.
    assert_eq!(g.req(Method::POST, "/async-function/ghost", "").await.status, 404);
    let r = g
        .req_h(Method::POST, "/async-function/later", &[("x-callback-url", "not a url")], "")
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("X-Callback-Url"), "{}", r.text());
}

#[tokio::test]
async fn portal_assets_are_served() {
    let g = start(GatewayConfig::default()).await;
    let r = g.req(Method::GET, "/ui/", "").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.text().contains("app.js"));
    assert_eq!(g.req(Method::GET, "/ui/app.js", "").await.status, 200);
    assert_eq!(g.req(Method::GET, "/ui/style.css", "").await.status, 200);
    assert_eq!(g.req(Method::GET, "/ui/missing.js", "").await.status, 404);
    let r = g.req(Method::GET, "/ui", "").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "/ui/");
}

#[tokio::test]
async fn garbage_input_never_breaks_the_gateway() {
    let g = start(GatewayConfig { max_body_bytes: 4096, ..Default::default() }).await;
    g.deploy(echo("e")).await;
    let paths = [
        "/function/",
        "/function/.",
        "/function/..",
        "/function/e.",
        "/function/.e",
        "/async-function/",
        "/system/function/",
        "/system/scale-function/",
        "/system/activations/",
        "/system/logs?name=%",
        "/system/logs?name=e&follow=maybe",
        "/system/functions?namespace=",
        "/function/e/%ff%00?%%",
        "/ui/../../etc/passwd",
        "/system/activations/../x",
        "/function/e?x=%zz",
    ];
    let bodies: [&[u8]; 5] = [b"", b"{", b"\xff\xfe\x00", b"[]", b"{\"service\":{}}"];
    for p in paths {
        for m in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            for b in bodies {
                let r = g.client.send(m.clone(), p, &[], Bytes::from_static(b)).await.unwrap();
                assert!(r.status.as_u16() < 600 && r.status != 500, "{m} {p}: {}", r.status);
            }
        }
    }
    for b in bodies {
        for p in ["/system/functions", "/system/secrets", "/system/scale-function/e"] {
            for m in [Method::POST, Method::PUT, Method::DELETE] {
                let r = g.client.send(m.clone(), p, &[], Bytes::from_static(b)).await.unwrap();
                assert!(r.status.is_client_error(), "{m} {p} {b:?}: {} {}", r.status, r.text());
            }
        }
    }
    assert_eq!(g.req(Method::GET, "/healthz", "").await.status, 200);
    let _ = memory_invoker;
}

/// Scale from zero is woken by the backend as the replica turns ready: on paused time the
/// request completes exactly one cold start after it arrived, not on a fixed poll's tick
/// (the router polled status every 100 ms).
#[tokio::test(start_paused = true)]
async fn scale_from_zero_is_woken_when_the_replica_is_ready() {
    use faas_core::prelude::*;
    use tower::ServiceExt;

    let cold = Duration::from_millis(37);
    let invoker = std::sync::Arc::new(faas_core::MemoryInvoker::builder().cold_start(cold).build());
    MemoryWorkload::new(&invoker);
    invoker.deploy(echo("sleepy").label("com.openfaas.scale.min", "0")).await.unwrap();
    let f = faas_core::FunctionRef::new("sleepy", faas_core::spec::DEFAULT_NAMESPACE);
    invoker.scale(&f, 0).await.unwrap();
    let router = faas_http::Gateway::new(invoker.clone()).router();
    let t0 = tokio::time::Instant::now();
    let req = http::Request::post("/function/sleepy").body(faas_core::Body::from("x")).unwrap();
    let resp = router.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(tokio::time::Instant::now() - t0, cold, "woken at readiness, not on a poll tick");
}

#[tokio::test]
async fn oversized_streamed_bodies_are_413_on_async_and_system_routes() {
    let cfg = GatewayConfig { max_body_bytes: 1000, ..Default::default() };
    let g = start(cfg).await;
    g.deploy(echo("e")).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::StreamBody<_>>();
    for (method, path) in [
        (Method::POST, "/async-function/e"),
        (Method::POST, "/system/functions"),
        (Method::PUT, "/system/functions"),
        (Method::POST, "/system/secrets"),
        (Method::POST, "/system/scale-function/e"),
    ] {
        // Chunked, no Content-Length: over the limit only while streaming.
        let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> =
            (0..10).map(|_| Ok(hyper::body::Frame::data(Bytes::from(vec![b' '; 300])))).collect();
        let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
        let req = http::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", g.base))
            .body(body)
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        use http_body_util::BodyExt;
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 413, "{method} {path}: {}", String::from_utf8_lossy(&text));
        assert!(
            String::from_utf8_lossy(&text).contains("1000"),
            "{method} {path}: names the limit"
        );
    }
}

#[tokio::test]
async fn async_queue_is_bounded_in_bytes_with_a_share_per_function() {
    // 200 kB in all, 100 kB per function: a flood of 10 kB calls to one slow function is
    // refused with 429 long before memory grows, and another function still gets in.
    let cfg = GatewayConfig {
        async_queue: faas_queue::QueueLimits::new(100_000, 200_000).function_percent(50),
        ..Default::default()
    };
    let g = start(cfg).await;
    g.deploy(FunctionSpec::new("slow", MemoryWorkload::image(Behaviour::Sleep))).await;
    g.deploy(echo("other")).await;
    let body = vec![b'x'; 10_000];
    let mut accepted = 0;
    let refused = loop {
        let r = g.req(Method::POST, "/async-function/slow?ms=60000", body.clone()).await;
        if r.status != 202 {
            break r;
        }
        accepted += 1;
        assert!(accepted <= 10, "more than 100 kB of one function's calls were queued");
    };
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(
        refused.text().contains("slow") && refused.text().contains("share"),
        "{}",
        refused.text()
    );
    assert!(accepted >= 5, "only {accepted} calls of 10 kB fit in a 100 kB share");
    let r = g.req(Method::POST, "/async-function/other", body.clone()).await;
    assert_eq!(r.status, 202, "another function is not starved: {}", r.text());
}

/// The JSON shapes the OpenFaaS certifier compares: empty collections omitted (Go's
/// `omitempty`), the `faas_function` label on every function, and a provider sha from the
/// build in `/system/info`.
#[tokio::test]
async fn openfaas_json_shapes_omit_empty_fields_and_carry_the_function_label_and_sha() {
    let g = start(GatewayConfig::default()).await;
    g.deploy(echo("plain")).await;
    let r = g.req(Method::GET, "/system/functions", "").await;
    assert_eq!(r.status, 200);
    let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let f = list.as_array().unwrap().iter().find(|f| f["name"] == "plain").unwrap();
    for field in ["envVars", "constraints", "secrets", "annotations"] {
        assert!(f.get(field).is_none(), "{field} should be omitted when empty: {f}");
    }
    assert_eq!(f["labels"]["faas_function"], "plain", "{f}");
    let r = g.req(Method::GET, "/system/function/plain", "").await;
    let one: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(one["labels"]["faas_function"], "plain", "{one}");
    assert!(one.get("envVars").is_none(), "{one}");

    let r = g.req(Method::GET, "/system/info", "").await;
    let info: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let sha = info["provider"]["version"]["sha"].as_str().unwrap_or_default();
    assert_eq!(info["version"]["sha"], sha, "{info}");
    // Built from a git checkout (as here and in CI): the commit, not a placeholder.
    assert!(
        sha.len() == 12 && sha.chars().all(|c| c.is_ascii_hexdigit()),
        "provider sha {sha:?}: {info}"
    );
}

/// A ready function is invoked without asking the backend for its full `status`, even with
/// no readiness cache: `status` may call the engine (the Docker backend reads container
/// stats, about a second), and calls stalled every time the cache expired.
#[tokio::test]
async fn a_ready_function_is_invoked_without_a_status_call() {
    use faas_core::prelude::*;
    use faas_core::{FunctionRef, LogStream, LogsRequest, ProviderInfo, Secret, SecretInfo};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// The in-memory backend, counting `status` calls.
    struct Counting(Arc<faas_core::MemoryInvoker>, AtomicUsize);
    #[async_trait::async_trait]
    impl Invoke for Counting {
        async fn invoke(
            &self,
            inv: faas_core::Invocation,
        ) -> faas_core::Result<faas_core::Response> {
            self.0.invoke(inv).await
        }
    }
    #[async_trait::async_trait]
    impl Deploy for Counting {
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
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.status(f).await
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
        async fn wait_ready(&self, f: &FunctionRef, t: Duration) -> faas_core::Result<bool> {
            self.0.wait_ready(f, t).await
        }
    }
    #[async_trait::async_trait]
    impl Secrets for Counting {
        async fn list_secrets(&self, ns: &str) -> faas_core::Result<Vec<SecretInfo>> {
            self.0.list_secrets(ns).await
        }
        async fn create_secret(&self, s: Secret) -> faas_core::Result<()> {
            self.0.create_secret(s).await
        }
        async fn update_secret(&self, s: Secret) -> faas_core::Result<()> {
            self.0.update_secret(s).await
        }
        async fn remove_secret(&self, ns: &str, name: &str) -> faas_core::Result<()> {
            self.0.remove_secret(ns, name).await
        }
    }
    #[async_trait::async_trait]
    impl Logs for Counting {
        async fn logs(&self, r: LogsRequest) -> faas_core::Result<LogStream> {
            self.0.logs(r).await
        }
    }

    let memory = memory_invoker();
    memory.deploy(echo("hot")).await.unwrap();
    let f = FunctionRef::new("hot", faas_core::spec::DEFAULT_NAMESPACE);
    assert!(memory.wait_ready(&f, Duration::from_secs(5)).await.unwrap());
    let backend = Arc::new(Counting(memory, AtomicUsize::new(0)));
    let cfg = GatewayConfig { ready_cache_ttl: Duration::ZERO, ..Default::default() };
    let gateway = faas_http::Gateway::builder(backend.clone()).config(cfg).build();
    for _ in 0..5 {
        use tower::ServiceExt;
        let req = http::Request::post("/function/hot").body(faas_core::Body::from("x")).unwrap();
        let resp = gateway.router().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(backend.1.load(Ordering::SeqCst), 0, "status asked on the invoke path");
}

/// A request body that breaks off (a malformed chunk) is the caller's fault: answered and
/// counted 400, never as the function's 503.
#[tokio::test]
async fn a_broken_request_body_counts_as_the_callers_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = start(GatewayConfig::default()).await;
    g.deploy(FunctionSpec::new("relay", "test/relay")).await;
    let addr = g.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = "POST /function/relay HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
               5\r\nhello\r\nnot-a-size\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    let series =
        r#"gateway_function_invocation_total{function_name="relay.openfaas-fn",code="400"} 1"#;
    let text = eventually(10, || async {
        let r = g.req(Method::GET, "/metrics", "").await;
        let text = r.text();
        text.contains(series).then_some(text)
    })
    .await;
    assert!(!text.contains(r#"function_name="relay.openfaas-fn",code="503""#), "{text}");
}

/// The gateway's concurrency limit: with `max_in_flight` invocations running, one more is
/// answered 429 at once naming the limit; once they finish, calls get in again.
#[tokio::test]
async fn invocations_over_max_in_flight_get_429() {
    let g = start(GatewayConfig { max_in_flight: 2, ..Default::default() }).await;
    g.deploy(FunctionSpec::new("slow", MemoryWorkload::image(Behaviour::Sleep))).await;
    let busy = |ms: u64| {
        let c = g.client.clone();
        let path = format!("/function/slow?ms={ms}");
        async move { c.send(Method::POST, &path, &[], Bytes::new()).await }
    };
    let (a, b) = (tokio::spawn(busy(3000)), tokio::spawn(busy(3000)));
    // Both have started (counted by the metrics layer, outside the limit) ...
    let started = r#"gateway_function_invocation_started{function_name="slow.openfaas-fn"} 2"#;
    eventually(10, || async {
        g.req(Method::GET, "/metrics", "").await.text().contains(started).then_some(())
    })
    .await;
    // ... so a third, while they sleep, is refused at once.
    let r = g.req(Method::POST, "/function/slow?ms=1", "").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("2 invocations in flight"), "{}", r.text());
    assert_eq!(a.await.unwrap().unwrap().status, 200);
    assert_eq!(b.await.unwrap().unwrap().status, 200);
    let r = g.req(Method::POST, "/function/slow?ms=1", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The portal's function page reads a function's last 15 minutes and its recent activation
/// records from `/system/function/{name}/history` and `/activations`, behind the same auth
/// as the rest of `/system`.
#[tokio::test]
async fn function_history_and_activations_behind_auth() {
    let creds = BasicAuth::new("admin", "history pass");
    let g = start(GatewayConfig {
        auth: Some(creds),
        record_every_invocation: true,
        ..Default::default()
    })
    .await;
    g.deploy(echo("hist")).await;
    g.deploy(FunctionSpec::new("histfail", "test/fail")).await;
    for i in 0..3 {
        let r = g.req(Method::POST, "/function/hist", format!("call {i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = g.req(Method::POST, "/function/histfail", "x").await;
    assert!(r.status.as_u16() >= 500, "{}", r.status);

    let r = g.req(Method::GET, "/system/function/hist/history", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["name"], "hist");
    assert_eq!(v["namespace"], "openfaas-fn");
    assert_eq!(v["slotSeconds"], 15);
    let points = v["points"].as_array().unwrap();
    let total: u64 = points.iter().map(|p| p["invocations"].as_u64().unwrap()).sum();
    assert_eq!(total, 3, "{v}");
    assert!(points.iter().all(|p| p["errors"] == 0), "{v}");
    assert!(points.iter().any(|p| p["p50Ms"].as_f64().is_some_and(|x| x > 0.0)), "{v}");
    let r = g.req(Method::GET, "/system/function/histfail.openfaas-fn/history", "").await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let errors: u64 =
        v["points"].as_array().unwrap().iter().map(|p| p["errors"].as_u64().unwrap()).sum();
    assert_eq!(errors, 1, "{v}");

    let r = g.req(Method::GET, "/system/function/hist/activations?limit=2", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(list.len(), 2, "newest two of three: {list:?}");
    assert!(list.iter().all(|a| a["success"] == true && a["name"] == "hist"), "{list:?}");
    assert!(list.iter().all(|a| a["duration"].is_u64() && a["activationId"].is_string()));
    let r = g.req(Method::GET, "/system/function/histfail/activations", "").await;
    let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["success"], false);
    assert_ne!(list[0]["status"], "success");

    // Bad input names the field; unknown functions and sub-routes are 404.
    let r = g.req(Method::GET, "/system/function/hist/activations?limit=0", "").await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("limit"), "{}", r.text());
    let r = g.req(Method::GET, "/system/function/nobody/history", "").await;
    assert_eq!(r.status, 404, "{}", r.text());
    // A function deployed but never invoked has a history with the backend's replicas.
    g.deploy(echo("quiet")).await;
    let r = g.req(Method::GET, "/system/function/quiet", "").await;
    let st: FunctionStatus = serde_json::from_slice(&r.body).unwrap();
    let r = g.req(Method::GET, "/system/function/quiet/history", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let last = v["points"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["invocations"], 0);
    assert_eq!(last["replicas"], st.replicas, "{v}");
    assert_eq!(last["p50Ms"], serde_json::Value::Null);
    // The overview has every invoked function's counts per slot.
    let r = g.req(Method::GET, "/system/history", "").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let inv = v["functions"]["hist.openfaas-fn"]["invocations"].as_array().unwrap();
    assert_eq!(inv.iter().map(|n| n.as_u64().unwrap()).sum::<u64>(), 3, "{v}");
    let errs = v["functions"]["histfail.openfaas-fn"]["errors"].as_array().unwrap();
    assert_eq!(errs.iter().map(|n| n.as_u64().unwrap()).sum::<u64>(), 1, "{v}");
    let r = g.req(Method::GET, "/system/function/hist/nothing", "").await;
    assert_eq!(r.status, 404);
    let r = g.req(Method::POST, "/system/function/hist/history", "").await;
    assert_eq!(r.status, 405);

    // Without credentials: 401, like the rest of /system.
    let anon = faas_http::client::GatewayClient::new(&g.base).unwrap();
    for path in ["/system/function/hist/history", "/system/function/hist/activations"] {
        let r = anon.send(Method::GET, path, &[], Bytes::new()).await.unwrap();
        assert_eq!(r.status, 401, "{path}");
    }
}

/// `POST /system/stack` deploys every function of a pasted stack.yml, or none when one is
/// wrong, with the messages `faas deploy -f` gives (`functions.NAME.FIELD`).
#[tokio::test]
async fn stack_files_deploy_with_the_apis_validation() {
    let g = start(GatewayConfig::default()).await;
    let image = MemoryWorkload::image(Behaviour::Echo);
    let bad = format!(
        "functions:\n  good:\n    image: {image}\n  worse:\n    image: {image}\n    limits: {{memory: lots}}\n"
    );
    let r = g.req(Method::POST, "/system/stack", bad).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("functions.worse.limits.memory"), "{}", r.text());
    let r = g.req(Method::POST, "/system/stack", "functions:\n  a:\n    imagee: x\n").await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("imagee"), "{}", r.text());
    let r = g
        .req(Method::POST, "/system/stack", "functions:\n  a:\n    environment_file: [x.yml]\n")
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("functions.a.environment_file"), "{}", r.text());
    let r = g.req(Method::POST, "/system/stack", "version: 1.0\n").await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("functions"), "{}", r.text());
    // Nothing of the refused files was deployed.
    let r = g.req(Method::GET, "/system/function/good", "").await;
    assert_eq!(r.status, 404);

    let ok = format!(
        "version: 1.0\nprovider: {{name: openfaas}}\nfunctions:\n  good:\n    image: {image}\n    labels: {{team: portal}}\n  other:\n    image: {image}\n"
    );
    let r = g.req(Method::POST, "/system/stack", ok.clone()).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["deployed"], serde_json::json!(["good", "other"]));
    let r = g.req(Method::GET, "/system/function/good", "").await;
    let st: FunctionStatus = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(st.labels["team"], "portal");
    // Again: the functions are updated, not refused.
    let r = g.req(Method::POST, "/system/stack", ok.replace("team: portal", "team: again")).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let r = g.req(Method::GET, "/system/function/good", "").await;
    let st: FunctionStatus = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(st.labels["team"], "again");
    let r = g.req(Method::GET, "/system/stack", "").await;
    assert_eq!(r.status, 405);
}

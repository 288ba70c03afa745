//! Request-level tests: the exact requests (verbs, paths and queries, content types, JSON
//! bodies) the backend sends to the Kubernetes API for every `Backend` operation, against a
//! stateful fake API server that answers as the real one does (no cluster needed).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use faas_backend_k8s::{manifests, KubernetesInvoker};
use faas_core::invocation::InvocationMeta;
use faas_core::prelude::*;
use faas_core::{
    Error, FunctionRef, FunctionSpec, InstanceView, Invocation, InvokeExt, LeastLoaded,
    LogsRequest, PlacementRequest, Scheduler, Secret, StartKind,
};
use futures::StreamExt;
use serde_json::json;
use support::{status, FakeApi, FixtureServer, WatchStep};

const NS: &str = "openfaas-fn";

fn f(name: &str) -> FunctionRef {
    FunctionRef::new(name, NS)
}

fn invoker(fake: &FakeApi) -> KubernetesInvoker {
    KubernetesInvoker::builder(fake.client()).build()
}

fn secret_obj(name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": NS,
                        "labels": {"app.kubernetes.io/managed-by": "openfaas"}},
           "type": "Opaque", "data": {name: "czNjcjN0"}})
}

#[tokio::test]
async fn deploy_sends_a_deployment_then_a_service() {
    let fake = FakeApi::new();
    fake.insert("secrets", NS, secret_obj("api-key"));
    let inv = invoker(&fake);
    let spec = FunctionSpec::new("nodeinfo", "ghcr.io/openfaas/nodeinfo:latest")
        .process("node index.js")
        .env("A", "1")
        .secret("api-key");
    inv.deploy(spec.clone()).await.unwrap();

    let reqs = fake.take_requests();
    let lines: Vec<String> = reqs.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "GET /api/v1/namespaces/openfaas-fn/secrets/api-key",
            "POST /apis/apps/v1/namespaces/openfaas-fn/deployments?",
            "POST /api/v1/namespaces/openfaas-fn/services?",
        ]
    );
    assert_eq!(reqs[1].content_type.as_deref(), Some("application/json"));
    let d = reqs[1].body.clone().unwrap();
    let expected = manifests::deployment(&spec.clone().namespace(NS)).unwrap();
    assert_eq!(d, serde_json::to_value(&expected).unwrap());
    assert_eq!(d["apiVersion"], "apps/v1");
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["metadata"]["labels"], json!({"faas_function": "nodeinfo"}));
    assert_eq!(d["spec"]["replicas"], 1);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["env"],
        json!([{"name": "fprocess", "value": "node index.js"}, {"name": "A", "value": "1"}])
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/_/health", "port": 8080, "scheme": "HTTP"})
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "projected-secrets",
                "projected": {"sources": [{"secret": {"name": "api-key"}}]}}])
    );
    assert_eq!(
        reqs[2].body.clone().unwrap(),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "nodeinfo", "namespace": "openfaas-fn",
                         "labels": {"faas_function": "nodeinfo"}},
            "spec": {"type": "ClusterIP", "selector": {"faas_function": "nodeinfo"},
                     "ports": [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]}
        })
    );

    // A second deploy: the API's 409 AlreadyExists becomes the core error.
    match inv.deploy(spec).await {
        Err(Error::AlreadyExists { kind: "function", name }) => assert_eq!(name, "nodeinfo"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn deploy_in_the_spec_namespace_or_the_configured_default() {
    let fake = FakeApi::new();
    let inv = KubernetesInvoker::builder(fake.client()).namespace("team-a").build();
    inv.deploy(FunctionSpec::new("a", "img")).await.unwrap();
    inv.deploy(FunctionSpec::new("b", "img").namespace("team-b")).await.unwrap();
    assert_eq!(
        fake.take_lines(),
        [
            "POST /apis/apps/v1/namespaces/team-a/deployments?",
            "POST /api/v1/namespaces/team-a/services?",
            "POST /apis/apps/v1/namespaces/team-b/deployments?",
            "POST /api/v1/namespaces/team-b/services?",
        ]
    );
    assert_eq!(inv.status(&FunctionRef::new("a", "")).await.unwrap().namespace, "team-a");
}

#[tokio::test]
async fn deploy_rejects_invalid_specs_and_missing_secrets_before_creating_anything() {
    let fake = FakeApi::new();
    let inv = invoker(&fake);
    let mut bad = FunctionSpec::new("f", "img");
    bad.constraints = vec!["==".into()];
    match inv.deploy(bad).await {
        Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, "constraints[0]"),
        other => panic!("{other:?}"),
    }
    assert!(fake.take_lines().is_empty(), "an invalid spec reached the API");

    match inv.deploy(FunctionSpec::new("f", "img").secret("nope")).await {
        Err(Error::InvalidSpec { field, reason }) => {
            assert_eq!(field, "secrets[0]");
            assert!(reason.contains("\"nope\"") && reason.contains("openfaas-fn"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.take_lines(), ["GET /api/v1/namespaces/openfaas-fn/secrets/nope"]);
}

#[tokio::test]
async fn deploy_removes_the_deployment_when_the_service_cannot_be_created() {
    let fake = FakeApi::new();
    let inv = invoker(&fake);
    fake.fail_next(
        "POST",
        "/api/v1/namespaces/openfaas-fn/services",
        status(403, "Forbidden", "services is forbidden: User \"system:serviceaccount:openfaas:faas\" cannot create resource \"services\""),
    );
    let err = inv.deploy(FunctionSpec::new("f", "img")).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Internal { .. }), "{err:?}");
    assert!(msg.contains("RBAC") && msg.contains("create services"), "{msg}");
    assert_eq!(
        fake.take_lines(),
        [
            "POST /apis/apps/v1/namespaces/openfaas-fn/deployments?",
            "POST /api/v1/namespaces/openfaas-fn/services?",
            "DELETE /apis/apps/v1/namespaces/openfaas-fn/deployments/f?",
        ]
    );
    assert!(fake.get("deployments", NS, "f").is_none());
}

#[tokio::test]
async fn update_replaces_the_deployment_keeping_replicas_and_patches_the_service() {
    let fake = FakeApi::new();
    let inv = invoker(&fake);
    inv.deploy(FunctionSpec::new("f", "img:1")).await.unwrap();
    inv.scale(&f("f"), 4).await.unwrap();
    fake.take_requests();
    let rv = fake.get("deployments", NS, "f").unwrap()["metadata"]["resourceVersion"].clone();

    inv.update(FunctionSpec::new("f", "img:2").env("B", "2")).await.unwrap();
    let reqs = fake.take_requests();
    let lines: Vec<String> = reqs.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "GET /apis/apps/v1/namespaces/openfaas-fn/deployments/f",
            "PUT /apis/apps/v1/namespaces/openfaas-fn/deployments/f?",
            "PATCH /api/v1/namespaces/openfaas-fn/services/f?",
        ]
    );
    let put = reqs[1].body.clone().unwrap();
    assert_eq!(put["metadata"]["resourceVersion"], rv, "optimistic concurrency");
    assert_eq!(put["spec"]["replicas"], 4, "an update keeps the current replicas");
    assert_eq!(put["spec"]["template"]["spec"]["containers"][0]["image"], "img:2");
    assert_eq!(reqs[2].content_type.as_deref(), Some("application/merge-patch+json"));
    assert_eq!(reqs[2].body.as_ref().unwrap()["spec"]["selector"], json!({"faas_function": "f"}));
    let st = inv.status(&f("f")).await.unwrap();
    assert_eq!((st.image.as_str(), st.replicas), ("img:2", 4));
    assert_eq!(st.env_vars.get("B").map(String::as_str), Some("2"));
}

#[tokio::test]
async fn update_retries_on_a_conflict_and_reports_unknown_functions() {
    let fake = FakeApi::new();
    let inv = invoker(&fake);
    inv.deploy(FunctionSpec::new("f", "img:1")).await.unwrap();
    fake.take_requests();
    fake.fail_next(
        "PUT",
        "/apis/apps/v1/namespaces/openfaas-fn/deployments/f",
        status(409, "Conflict", "the object has been modified"),
    );
    inv.update(FunctionSpec::new("f", "img:2")).await.unwrap();
    assert_eq!(
        fake.take_lines(),
        [
            "GET /apis/apps/v1/namespaces/openfaas-fn/deployments/f",
            "PUT /apis/apps/v1/namespaces/openfaas-fn/deployments/f?",
            "GET /apis/apps/v1/namespaces/openfaas-fn/deployments/f",
            "PUT /apis/apps/v1/namespaces/openfaas-fn/deployments/f?",
            "PATCH /api/v1/namespaces/openfaas-fn/services/f?",
        ]
    );
    match inv.update(FunctionSpec::new("ghost", "img")).await {
        Err(Error::NotFound { kind: "function", name }) => assert_eq!(name, "ghost"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn scale_patches_the_scale_subresource() {
    let fake = FakeApi::new();
    let inv = invoker(&fake);
    inv.deploy(FunctionSpec::new("f", "img")).await.unwrap();
    fake.take_requests();
    inv.scale(&f("f"), 3).await.unwrap();
    inv.scale(&f("f"), 0).await.unwrap();
    let reqs = fake.take_requests();
    assert_eq!(reqs.len(), 2);
    for (r, n) in reqs.iter().zip([3, 0]) {
        assert_eq!(r.line(), "PATCH /apis/apps/v1/namespaces/openfaas-fn/deployments/f/scale?");
        assert_eq!(r.content_type.as_deref(), Some("application/merge-patch+json"));
        assert_eq!(r.body, Some(json!({"spec": {"replicas": n}})));
    }
    let st = inv.status(&f("f")).await.unwrap();
    assert_eq!((st.replicas, st.available_replicas), (0, 0));
    assert!(matches!(inv.scale(&f("ghost"), 1).await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn remove_deletes_the_deployment_and_the_service_in_the_background() {
    let fake = FakeApi::new();
    let inv = invoker(&fake);
    inv.deploy(FunctionSpec::new("f", "img")).await.unwrap();
    fake.take_requests();
    inv.remove(&f("f")).await.unwrap();
    let reqs = fake.take_requests();
    let lines: Vec<String> = reqs.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "DELETE /apis/apps/v1/namespaces/openfaas-fn/deployments/f?",
            "DELETE /api/v1/namespaces/openfaas-fn/services/f?",
        ]
    );
    for r in &reqs {
        assert_eq!(r.body, Some(json!({"propagationPolicy": "Background"})));
    }
    assert!(fake.get("services", NS, "f").is_none());
    match inv.remove(&f("f")).await {
        Err(Error::NotFound { kind: "function", .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn status_and_list_come_from_deployments() {
    let fake = FakeApi::new();
    fake.set_auto_ready(false);
    let inv = invoker(&fake);
    let spec = FunctionSpec::new("b", "img")
        .label("team", "x")
        .label("com.openfaas.scale.min", "3")
        .timeout(Duration::from_secs(5));
    inv.deploy(spec.clone()).await.unwrap();
    inv.deploy(FunctionSpec::new("a", "img")).await.unwrap();
    // A Deployment that is not a function is not listed.
    fake.insert(
        "deployments",
        NS,
        json!({"metadata": {"name": "other", "labels": {"app": "x"}}, "spec": {}}),
    );
    fake.set_available(NS, "b", 2);
    fake.take_requests();

    let st = inv.status(&f("b")).await.unwrap();
    assert_eq!(fake.take_lines(), ["GET /apis/apps/v1/namespaces/openfaas-fn/deployments/b"]);
    let mut want = faas_core::FunctionStatus::from_spec(&spec.clone().namespace(NS));
    want.replicas = 3;
    want.available_replicas = 2;
    want.created_at = st.created_at;
    assert!(st.created_at.is_some());
    assert_eq!(st, want, "exec_timeout and friends are not reported as user env vars");

    let list = inv.list(NS).await.unwrap();
    assert_eq!(
        fake.take_lines(),
        ["GET /apis/apps/v1/namespaces/openfaas-fn/deployments?&labelSelector=faas_function"]
    );
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(matches!(inv.status(&f("other")).await, Err(Error::NotFound { .. })));
    assert!(matches!(inv.status(&f("ghost")).await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn logs_read_each_pods_log_endpoint_merged_in_time_order() {
    let fake = FakeApi::new();
    let inv = invoker(&fake);
    inv.deploy(FunctionSpec::new("f", "img")).await.unwrap();
    inv.scale(&f("f"), 2).await.unwrap();
    fake.append_log_at(NS, "f-pod-0", "2026-11-23T09:00:01.000000000Z", "first");
    fake.append_log_at(NS, "f-pod-1", "2026-11-23T09:00:02.500000000Z", "second");
    fake.append_log_at(NS, "f-pod-0", "2026-11-23T09:00:03.000000000Z", "third");
    fake.take_requests();

    let req = LogsRequest { tail: Some(2), ..LogsRequest::for_function(f("f")) };
    let entries: Vec<_> = inv.logs(req).await.unwrap().map(|e| e.unwrap()).collect().await;
    assert_eq!(
        fake.take_lines(),
        [
            "GET /apis/apps/v1/namespaces/openfaas-fn/deployments/f",
            "GET /api/v1/namespaces/openfaas-fn/pods?&labelSelector=faas_function%3Df",
            "GET /api/v1/namespaces/openfaas-fn/pods/f-pod-0/log?&container=f&tailLines=2&timestamps=true",
            "GET /api/v1/namespaces/openfaas-fn/pods/f-pod-1/log?&container=f&tailLines=2&timestamps=true",
        ]
    );
    let got: Vec<(&str, &str)> =
        entries.iter().map(|e| (e.instance.as_str(), e.text.as_str())).collect();
    assert_eq!(got, [("f-pod-1", "second"), ("f-pod-0", "third")]);
    assert_eq!(entries[0].name, "f");
    assert_eq!(entries[0].namespace, NS);
    assert_eq!(faas_core::spec::rfc3339::format(entries[0].timestamp), "2026-11-23T09:00:02.500Z");

    // One instance, following, with a since bound.
    let req = LogsRequest {
        instance: Some("f-pod-0".into()),
        follow: true,
        since: Some(SystemTime::now() - Duration::from_secs(30)),
        ..LogsRequest::for_function(f("f"))
    };
    let _ = inv.logs(req).await.unwrap().collect::<Vec<_>>().await;
    let lines = fake.take_lines();
    assert_eq!(
        lines[2],
        "GET /api/v1/namespaces/openfaas-fn/pods/f-pod-0/log?&container=f&follow=true&sinceSeconds=30&timestamps=true"
    );
    assert_eq!(lines.len(), 3);

    assert!(matches!(
        inv.logs(LogsRequest::for_function(f("ghost"))).await.map(|_| ()),
        Err(Error::NotFound { .. })
    ));
    match inv.logs(LogsRequest::default()).await.map(|_| ()) {
        Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, "name"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn secrets_are_kubernetes_secrets() {
    let fake = FakeApi::new();
    let inv = invoker(&fake);
    let s = Secret {
        name: "api-key".into(),
        namespace: NS.into(),
        value: Bytes::from_static(b"s3cr3t"),
    };
    inv.create_secret(s.clone()).await.unwrap();
    inv.update_secret(Secret { value: Bytes::from_static(b"n3w"), ..s.clone() }).await.unwrap();
    // A Secret this backend does not manage is not listed.
    fake.insert(
        "secrets",
        NS,
        json!({"metadata": {"name": "tls", "namespace": NS}, "type": "kubernetes.io/tls"}),
    );
    let listed = inv.list_secrets(NS).await.unwrap();
    inv.remove_secret(NS, "api-key").await.unwrap();
    let reqs = fake.take_requests();
    let lines: Vec<String> = reqs.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "POST /api/v1/namespaces/openfaas-fn/secrets?",
            "PUT /api/v1/namespaces/openfaas-fn/secrets/api-key?",
            "GET /api/v1/namespaces/openfaas-fn/secrets?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dopenfaas",
            "DELETE /api/v1/namespaces/openfaas-fn/secrets/api-key?",
        ]
    );
    let body = |value: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "api-key", "namespace": "openfaas-fn",
                            "labels": {"app.kubernetes.io/managed-by": "openfaas"}},
               "data": {"api-key": value}})
    };
    assert_eq!(reqs[0].body, Some(body("czNjcjN0")));
    assert_eq!(reqs[1].body, Some(body("bjN3")));
    assert_eq!(listed, [faas_core::SecretInfo { name: "api-key".into(), namespace: NS.into() }]);

    assert!(matches!(inv.create_secret(s.clone()).await, Ok(())));
    assert!(matches!(
        inv.create_secret(s.clone()).await,
        Err(Error::AlreadyExists { kind: "secret", .. })
    ));
    let absent = Secret { name: "absent".into(), ..s.clone() };
    assert!(matches!(inv.update_secret(absent).await, Err(Error::NotFound { kind: "secret", .. })));
    assert!(matches!(
        inv.remove_secret(NS, "absent").await,
        Err(Error::NotFound { kind: "secret", .. })
    ));
    match inv.create_secret(Secret { name: "Not Valid!".into(), ..s }).await {
        Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, "name"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn namespaces_are_the_labelled_ones_plus_the_function_namespace() {
    let fake = FakeApi::new();
    fake.insert(
        "namespaces",
        "",
        json!({"metadata": {"name": "staging", "labels": {"openfaas": "1"}}}),
    );
    fake.insert("namespaces", "", json!({"metadata": {"name": "kube-system"}}));
    let inv = invoker(&fake);
    assert_eq!(inv.namespaces().await.unwrap(), ["openfaas-fn", "staging"]);
    assert_eq!(fake.take_lines(), ["GET /api/v1/namespaces?&labelSelector=openfaas%3D1"]);

    let custom = KubernetesInvoker::builder(fake.client()).namespace_selector("team=a").build();
    fake.insert("namespaces", "", json!({"metadata": {"name": "a1", "labels": {"team": "a"}}}));
    assert_eq!(custom.namespaces().await.unwrap(), ["a1", "openfaas-fn"]);

    // Without a ClusterRole to list namespaces: only the function namespace, as faas-netes.
    fake.fail_next(
        "GET",
        "/api/v1/namespaces",
        status(403, "Forbidden", "namespaces is forbidden"),
    );
    assert_eq!(inv.namespaces().await.unwrap(), ["openfaas-fn"]);
}

#[tokio::test]
async fn api_errors_map_to_core_errors() {
    let fake = FakeApi::new();
    let inv = invoker(&fake);
    let mut invalid = status(422, "Invalid", "Deployment.apps \"f\" is invalid");
    invalid["details"] = json!({"name": "f", "group": "apps", "kind": "Deployment", "causes": [
        {"reason": "FieldValueInvalid", "message": "Invalid value: \"1Q\": must be a quantity",
         "field": "spec.template.spec.containers[0].resources.limits[memory]"}]});
    fake.fail_next("POST", "/apis/apps/v1/namespaces/openfaas-fn/deployments", invalid);
    match inv.deploy(FunctionSpec::new("f", "img")).await {
        Err(Error::InvalidSpec { field, reason }) => {
            assert_eq!(field, "spec.template.spec.containers[0].resources.limits[memory]");
            assert!(reason.contains("must be a quantity"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    fake.fail_next(
        "GET",
        "/apis/apps/v1/namespaces/openfaas-fn/deployments",
        status(
            403,
            "Forbidden",
            "deployments.apps is forbidden: User \"system:anonymous\" cannot list resource",
        ),
    );
    let err = inv.list(NS).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("RBAC") && msg.contains("list deployments") && msg.contains("\"openfaas-fn\""),
        "{msg}"
    );
    assert!(msg.contains("system:anonymous"), "the API's message is kept: {msg}");
    fake.fail_next(
        "GET",
        "/api/v1/namespaces/openfaas-fn/secrets",
        status(503, "ServiceUnavailable", "etcd"),
    );
    assert!(inv.list_secrets(NS).await.unwrap_err().is_retryable());
    fake.fail_next(
        "GET",
        "/api/v1/namespaces/openfaas-fn/secrets",
        status(429, "TooManyRequests", "slow down"),
    );
    assert!(matches!(inv.list_secrets(NS).await, Err(Error::Overloaded { .. })));
}

#[tokio::test]
async fn invoke_goes_to_the_base_url_with_method_path_query_headers_and_body() {
    let fake = FakeApi::new();
    let server = FixtureServer::start(fake.clone()).await;
    let inv = KubernetesInvoker::builder(fake.client()).base_url(server.base_url()).build();
    inv.deploy(FunctionSpec::new("echo", "conformance/echo")).await.unwrap();
    fake.take_requests();

    let mut req = http::Request::new(faas_core::Body::from("hello"));
    *req.method_mut() = http::Method::PUT;
    *req.uri_mut() = "/a/b?x=1&y=two".parse().unwrap();
    req.headers_mut().insert("x-test-k", http::HeaderValue::from_static("v"));
    let resp = inv.invoke(Invocation::new(f("echo"), req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-method"], "PUT");
    assert_eq!(resp.headers()["x-echo-path"], "/a/b");
    assert_eq!(resp.headers()["x-echo-query"], "x=1&y=two");
    assert_eq!(resp.headers()["x-echo-x-test-k"], "v");
    let meta = resp.extensions().get::<InvocationMeta>().cloned().unwrap();
    assert_eq!(meta.start, StartKind::Warm);
    assert_eq!(meta.instance, "echo");
    assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "hello");
    // One read of the Deployment, then the status cache answers.
    assert_eq!(fake.take_lines(), ["GET /apis/apps/v1/namespaces/openfaas-fn/deployments/echo"]);
    assert_eq!(inv.call("echo", "again").await.unwrap(), "again");
    assert!(fake.take_lines().is_empty(), "a warm invocation read the API");

    assert!(matches!(
        inv.invoke(Invocation::post(f("ghost"), "x")).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn invoke_at_zero_scales_up_and_reestablishes_a_broken_watch() {
    let fake = FakeApi::new();
    fake.set_auto_ready(false);
    let server = FixtureServer::start(fake.clone()).await;
    let inv = KubernetesInvoker::builder(fake.client())
        .base_url(server.base_url())
        .ready_timeout(Duration::from_secs(30))
        .build();
    let spec = FunctionSpec::new("sleepy", "conformance/echo")
        .label("com.openfaas.scale.zero", "true")
        .label("com.openfaas.scale.min", "2");
    inv.deploy(spec).await.unwrap();
    inv.scale(&f("sleepy"), 0).await.unwrap();
    fake.take_requests();
    // First watch breaks, the second expires (410 Gone), the third sees the replica.
    fake.script_watch([WatchStep::Break, WatchStep::Gone, WatchStep::BecomeReady]);

    let resp = inv.invoke(Invocation::post(f("sleepy"), "wake up")).await.unwrap();
    let meta = resp.extensions().get::<InvocationMeta>().cloned().unwrap();
    assert_eq!(meta.start, StartKind::Cold);
    assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "wake up");

    let reqs = fake.take_requests();
    // The watch timeout is the time left of the ready timeout (29 or 30 s here).
    let lines: Vec<String> = reqs
        .iter()
        .map(|r| {
            let l = r.line();
            match l.split_once("timeoutSeconds=") {
                Some((a, b)) => {
                    let secs: String = b.chars().take_while(char::is_ascii_digit).collect();
                    let n: u64 = secs.parse().unwrap();
                    assert!((25..=30).contains(&n), "{l}");
                    format!("{a}timeoutSeconds=N{}", &b[secs.len()..])
                }
                None => l,
            }
        })
        .collect();
    let get = "GET /apis/apps/v1/namespaces/openfaas-fn/deployments/sleepy";
    let watch = "GET /apis/apps/v1/namespaces/openfaas-fn/deployments?&watch=true&timeoutSeconds=N&fieldSelector=metadata.name%3Dsleepy&allowWatchBookmarks=true&resourceVersion=4";
    assert_eq!(
        lines,
        [
            get,
            "PATCH /apis/apps/v1/namespaces/openfaas-fn/deployments/sleepy/scale?",
            get,
            watch,
            get,
            watch,
            get,
            watch,
        ],
        "read, scale to max(1, min), then read + watch, re-established twice"
    );
    assert_eq!(reqs[1].body, Some(json!({"spec": {"replicas": 2}})), "max(1, min)");
    assert_eq!(inv.status(&f("sleepy")).await.unwrap().replicas, 2);
}

#[tokio::test]
async fn concurrent_invocations_at_zero_scale_once() {
    let fake = FakeApi::new();
    fake.set_auto_ready(false);
    let server = FixtureServer::start(fake.clone()).await;
    let inv = KubernetesInvoker::builder(fake.client()).base_url(server.base_url()).build();
    inv.deploy(FunctionSpec::new("burst", "conformance/echo").label("com.openfaas.scale.min", "0"))
        .await
        .unwrap();
    assert_eq!(inv.status(&f("burst")).await.unwrap().replicas, 0, "min 0 deploys at zero");
    fake.take_requests();
    let calls = (0..20).map(|i| {
        let inv = inv.clone();
        async move { inv.call("burst", format!("call {i}")).await }
    });
    let results = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(calls))
        .await
        .expect("answered in time");
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), format!("call {i}"));
    }
    let scales: Vec<_> =
        fake.take_requests().into_iter().filter(|r| r.uri.ends_with("/scale?")).collect();
    assert_eq!(scales.len(), 1, "one scale-from-zero for the whole burst");
    assert_eq!(scales[0].body, Some(json!({"spec": {"replicas": 1}})));
}

#[tokio::test]
async fn scale_from_zero_gives_up_with_unavailable_after_the_ready_timeout() {
    let fake = FakeApi::new();
    fake.set_auto_ready(false);
    let inv =
        KubernetesInvoker::builder(fake.client()).ready_timeout(Duration::from_millis(800)).build();
    inv.deploy(FunctionSpec::new("stuck", "img")).await.unwrap();
    fake.script_watch(std::iter::repeat_n(WatchStep::Break, 1000));
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        inv.invoke(Invocation::post(f("stuck"), "x")),
    )
    .await
    .expect("bounded by the ready timeout")
    .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("stuck.openfaas-fn"), "{err}");
}

#[tokio::test]
async fn invoke_reports_an_unreachable_service_as_unavailable() {
    let fake = FakeApi::new();
    // A port nothing listens on: bind, note, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let inv = KubernetesInvoker::builder(fake.client())
        .base_url(format!("http://127.0.0.1:{port}/{{name}}"))
        .build();
    inv.deploy(FunctionSpec::new("f", "img")).await.unwrap();
    let err = inv.invoke(Invocation::post(f("f"), "x")).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

/// A scheduler that records what it was offered and delegates to least-loaded.
#[derive(Default)]
struct Recording {
    seen: Mutex<Vec<Vec<String>>>,
    inner: LeastLoaded,
}

impl Scheduler for Recording {
    fn place(
        &self,
        r: &PlacementRequest<'_>,
        nodes: &[faas_core::Node],
    ) -> faas_core::Result<usize> {
        self.inner.place(r, nodes)
    }
    fn route(&self, f: &FunctionRef, instances: &[InstanceView]) -> Option<usize> {
        self.seen.lock().unwrap().push(instances.iter().map(|i| i.id.clone()).collect());
        self.inner.route(f, instances)
    }
}

async fn instance_server(
    name: &'static str,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_string();
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(format!("{name} {path}"))),
                        ))
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn with_a_scheduler_invoke_routes_to_ready_pod_endpoints() {
    let fake = FakeApi::new();
    let (a, ta) = instance_server("pod-a").await;
    let (b, tb) = instance_server("pod-b").await;
    let sched = Arc::new(Recording::default());
    let inv = KubernetesInvoker::builder(fake.client()).scheduler(sched.clone()).build();
    inv.deploy(FunctionSpec::new("f", "img")).await.unwrap();
    let ep = |addr: std::net::SocketAddr, pod: &str, ready: bool| {
        json!({"addresses": [addr.ip().to_string()], "conditions": {"ready": ready},
               "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}})
    };
    // Each slice has one port, as EndpointSlices group endpoints by port.
    for (i, (addr, pod)) in [(a, "pod-a"), (b, "pod-b")].into_iter().enumerate() {
        fake.insert(
            "endpointslices",
            NS,
            json!({
                "metadata": {"name": format!("f-{i}"), "namespace": NS,
                             "labels": {"kubernetes.io/service-name": "f"}},
                "addressType": "IPv4",
                "endpoints": [ep(addr, pod, true), ep(addr, "pod-not-ready", false)],
                "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}]
            }),
        );
    }
    fake.take_requests();
    let mut served = Vec::new();
    for i in 0..4 {
        let body = inv.invoke(Invocation::get(f("f"), &format!("/p{i}"))).await.unwrap();
        served.push(
            String::from_utf8(body.into_body().collect_bytes().await.unwrap().to_vec()).unwrap(),
        );
    }
    assert!(
        served.contains(&"pod-a /p0".to_string()) || served.contains(&"pod-b /p0".to_string()),
        "{served:?}"
    );
    assert!(
        served.iter().any(|s| s.starts_with("pod-a"))
            && served.iter().any(|s| s.starts_with("pod-b")),
        "load is spread: {served:?}"
    );
    for offered in sched.seen.lock().unwrap().iter() {
        assert_eq!(offered, &["pod-a", "pod-b"], "only ready endpoints are offered");
    }
    let lines = fake.take_lines();
    assert!(lines.contains(&"GET /apis/discovery.k8s.io/v1/namespaces/openfaas-fn/endpointslices?&labelSelector=kubernetes.io%2Fservice-name%3Df".to_string()), "{lines:#?}");
    ta.abort();
    tb.abort();
}

#[tokio::test]
async fn a_kube_client_from_an_https_config_builds_without_a_crypto_provider_panic() {
    // Only ring is compiled in; building the TLS stack must pick it without panicking.
    let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
    let client = kube::Client::try_from(config).expect("client");
    let inv = KubernetesInvoker::new(client);
    assert_eq!(inv.info().orchestration, "kubernetes");
    assert_eq!(inv.namespace(), "openfaas-fn");
}

#[tokio::test]
async fn with_a_scheduler_max_inflight_is_respected_per_endpoint() {
    let fake = FakeApi::new();
    let (a, task) = instance_server("pod-a").await;
    let inv = KubernetesInvoker::builder(fake.client())
        .scheduler(Arc::new(LeastLoaded::new()))
        .queue(0, Duration::from_secs(30))
        .build();
    inv.deploy(FunctionSpec::new("f", "img").max_concurrency(1)).await.unwrap();
    fake.insert("endpointslices", NS, one_endpoint("pod-a", a.port()));
    // The first response is held (its body unread): its instance counts as busy, and with
    // no queue the second is refused at once.
    let held = inv.invoke(Invocation::post(f("f"), "1")).await.unwrap();
    match inv.invoke(Invocation::post(f("f"), "2")).await {
        Err(Error::Overloaded { message, .. }) => assert!(message.contains("f.openfaas-fn")),
        other => panic!("expected Overloaded, got {:?}", other.map(|r| r.status())),
    }
    assert_eq!(held.into_body().collect_bytes().await.unwrap(), "pod-a /");
    let again = inv.invoke(Invocation::post(f("f"), "3")).await.unwrap();
    assert_eq!(again.into_body().collect_bytes().await.unwrap(), "pod-a /");
    task.abort();
}

#[tokio::test]
async fn with_a_scheduler_invocations_wait_in_line_for_a_busy_endpoint() {
    let fake = FakeApi::new();
    let (a, task) = instance_server("pod-a").await;
    let inv = Arc::new(
        KubernetesInvoker::builder(fake.client()).scheduler(Arc::new(LeastLoaded::new())).build(),
    );
    inv.deploy(FunctionSpec::new("f", "img").max_concurrency(1)).await.unwrap();
    fake.insert("endpointslices", NS, one_endpoint("pod-a", a.port()));
    let held = inv.invoke(Invocation::post(f("f"), "1")).await.unwrap();
    let waiting = {
        let inv = inv.clone();
        tokio::spawn(async move { inv.invoke(Invocation::post(f("f"), "2")).await })
    };
    // Releasing the first call's hold on the pod lets the waiting one through.
    assert_eq!(held.into_body().collect_bytes().await.unwrap(), "pod-a /");
    let second = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting call is served once the pod is free")
        .unwrap()
        .unwrap();
    assert_eq!(second.into_body().collect_bytes().await.unwrap(), "pod-a /");
    task.abort();
}

fn one_endpoint(pod: &str, port: u16) -> serde_json::Value {
    json!({
        "metadata": {"name": "f-0", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "f"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": pod}}],
        "ports": [{"name": "http", "port": port}]
    })
}

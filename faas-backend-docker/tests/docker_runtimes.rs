//! The `python:3` and `nodejs:20` kinds on the Docker backend: their images
//! (`faas-rs/action-python:3`, `faas-rs/action-nodejs:20`) built from this machine's own
//! `python3` and `node` by `runtimes/build-images.sh`, a code action of each deployed with no
//! image of its own (the kind's image from the runtime manifest), activated, and its
//! result and logs read; a second activation is warm.

mod common;

use faas_backend_docker::testing;
use faas_core::prelude::*;
use faas_core::{FunctionSpec, Invocation};
use serde_json::{json, Value};

const PY_ACTION: &str = r#"
import sys, platform
def main(params):
    print('python got', params.get('name'))
    return {'greeting': 'hello ' + params.get('name', 'stranger'),
            'python': sys.version_info[0], 'impl': platform.python_implementation()}
"#;

const JS_ACTION: &str = r#"
function main(params) {
  console.log('node got ' + params.name);
  return { greeting: 'hello ' + (params.name || 'stranger'), node: process.versions.node };
}
"#;

/// An API activation of `f` with `params` asking for its logs: (result, logs, init time).
async fn activate(
    docker: &faas_backend_docker::DockerInvoker,
    f: &faas_core::FunctionRef,
    id: &str,
    params: Value,
) -> (Value, Vec<String>, bool) {
    let mut req = http::Request::new(faas_core::Body::from(params.to_string()));
    *req.method_mut() = http::Method::POST;
    req.headers_mut().insert("x-openwhisk-activation-id", id.parse().unwrap());
    req.headers_mut().insert("x-openwhisk-logs", "true".parse().unwrap());
    let resp = docker.invoke(Invocation::new(f.clone(), req)).await.unwrap();
    let status = resp.status();
    let logs = resp
        .headers()
        .get("x-openwhisk-logs")
        .map(|v| serde_json::from_str(v.to_str().unwrap()).unwrap())
        .unwrap_or_default();
    let init = resp.headers().contains_key("x-openwhisk-init-time");
    let body = resp.into_body().collect_bytes().await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    (serde_json::from_slice(&body).unwrap(), logs, init)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_nodejs_code_actions_run_in_their_kinds_images() {
    let env = common::setup("python_and_nodejs_code_actions_run_in_their_kinds_images").await;
    let _g = env.guard();
    testing::runtime_images().await.expect("building the runtime images");
    let docker = env.builder().build().await.unwrap();
    let action = |name: &str, kind: &str, code: &str| {
        // No image: the kind's, from the runtime manifest.
        FunctionSpec::new(name, "")
            .namespace(env.ns.clone())
            .env("mode", "openwhisk")
            .env("ow_kind", kind)
            .env("ow_code", code)
    };

    docker.deploy(action("py", "python:3", PY_ACTION)).await.unwrap();
    let py = env.fref("py");
    let status = docker.status(&py).await.unwrap();
    assert_eq!(status.image, faas_core::runtimes::PYTHON_IMAGE);
    let (r, logs, init) = activate(&docker, &py, "py-1", json!({"name": "Ann"})).await;
    assert_eq!(r, json!({"greeting": "hello Ann", "python": 3, "impl": "CPython"}));
    assert!(init, "the first activation initialised the runtime");
    assert!(logs.iter().any(|l| l.ends_with("stdout: python got Ann")), "{logs:?}");
    let (r, _, init) = activate(&docker, &py, "py-2", json!({})).await;
    assert_eq!((r["greeting"].as_str(), init), (Some("hello stranger"), false));

    docker.deploy(action("js", "nodejs:20", JS_ACTION)).await.unwrap();
    let js = env.fref("js");
    assert_eq!(docker.status(&js).await.unwrap().image, faas_core::runtimes::NODEJS_IMAGE);
    let (r, logs, init) = activate(&docker, &js, "js-1", json!({"name": "Bo"})).await;
    assert_eq!(r["greeting"], "hello Bo");
    assert!(r["node"].as_str().is_some_and(|v| v.starts_with("20.")), "{r}");
    assert!(init);
    assert!(logs.iter().any(|l| l.ends_with("stdout: node got Bo")), "{logs:?}");
    let (r, _, init) = activate(&docker, &js, "js-2", json!({"name": "Cy"})).await;
    assert_eq!((r["greeting"].as_str(), init), (Some("hello Cy"), false));

    for f in [&py, &js] {
        docker.remove(f).await.unwrap();
    }
}

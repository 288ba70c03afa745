//! OpenWhisk actions on the Docker backend: an image of the static watchdog in `openwhisk`
//! mode with our busybox-sh runtime (`runtimes/blackbox/runtime.sh`) runs a blackbox action
//! (the image's built-in `/action/exec`) and native code actions (`ow_code`); a result that is
//! no dictionary, a crash mid-activation and a timeout give OpenWhisk's developer errors, and
//! a new runtime (a fresh `/init`) serves the next activation. Stem cells of that runtime
//! are taken, specialised by `/init` and refilled; a container killed mid-activation gives a
//! developer error and a new instance, from a stem cell.

mod common;

use faas_backend_docker::testing;
use faas_core::prelude::*;
use faas_core::{DeveloperErrorKind, Error, FunctionSpec, Invocation};
use serde_json::{json, Value};

const ACTIVATION_ID: &str = "x-openwhisk-activation-id";
const LOGS: &str = "x-openwhisk-logs";
const INIT_TIME: &str = "x-openwhisk-init-time";

/// An API activation with `params`, asking for its logs: (result, logs, init time).
async fn activate(
    docker: &faas_backend_docker::DockerInvoker,
    f: &faas_core::FunctionRef,
    id: &str,
    params: Value,
) -> faas_core::Result<(Value, Vec<String>, bool)> {
    let mut req = http::Request::new(faas_core::Body::from(params.to_string()));
    *req.method_mut() = http::Method::POST;
    req.headers_mut().insert(ACTIVATION_ID, id.parse().unwrap());
    req.headers_mut().insert(LOGS, "true".parse().unwrap());
    let resp = docker.invoke(Invocation::new(f.clone(), req)).await?;
    assert_eq!(resp.status(), 200);
    let logs = resp
        .headers()
        .get(LOGS)
        .map(|v| serde_json::from_str(v.to_str().unwrap()).unwrap())
        .unwrap_or_default();
    let init = resp.headers().contains_key(INIT_TIME);
    let body = resp.into_body().collect_bytes().await.unwrap();
    Ok((serde_json::from_slice(&body).unwrap(), logs, init))
}

fn developer(e: Error, kind: DeveloperErrorKind, message: &str) {
    assert_eq!((e.status_code().as_u8(), e.http_status().as_u16()), (2, 502), "{e}");
    match e {
        Error::Developer { kind: k, message: m } => assert_eq!((k, m.as_str()), (kind, message)),
        other => panic!("expected a developer error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackbox_and_native_code_actions_run_in_containers() {
    let env = common::setup("blackbox_and_native_code_actions_run_in_containers").await;
    let _g = env.guard();
    let image = testing::openwhisk_image().await.expect("building the OpenWhisk image");
    let docker = env.builder().build().await.unwrap();
    let spec = |name: &str| {
        FunctionSpec::new(name, image.clone())
            .namespace(env.ns.clone())
            .env("mode", "openwhisk")
            .env("ow_kind", "blackbox")
    };

    // The image's own action.
    docker.deploy(spec("bb")).await.unwrap();
    let bb = env.fref("bb");
    let (r, logs, init) = activate(&docker, &bb, "d-1", json!({"k": "v"})).await.unwrap();
    assert_eq!(r, json!({"builtin": {"k": "v"}, "id": "d-1"}));
    assert!(init);
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs.iter().any(|l| l.ends_with("stdout: built-in got {\"k\":\"v\"}")), "{logs:?}");
    assert!(logs.iter().any(|l| l.ends_with("stderr: built-in stderr")), "{logs:?}");
    let (_, logs, init) = activate(&docker, &bb, "d-2", json!({"n": 2})).await.unwrap();
    assert!(!init, "a warm activation");
    assert!(logs.iter().all(|l| !l.contains("\"k\"")), "only this activation's lines: {logs:?}");

    // Native code actions: a script as the code.
    let code = "#!/bin/sh\n\
        case \"$1\" in\n\
        *crash*) busybox killall -9 busybox; kill -9 $PPID ;;\n\
        *list*) echo '[1, 2]' ;;\n\
        *sleep*) sleep 30 ;;\n\
        *) echo \"{\\\"native\\\": $1}\" ;;\n\
        esac\n";
    docker.deploy(spec("native").env("ow_code", code)).await.unwrap();
    let native = env.fref("native");
    let (r, _, _) = activate(&docker, &native, "n-1", json!({"a": 1})).await.unwrap();
    assert_eq!(r, json!({"native": {"a": 1}}));
    let e = activate(&docker, &native, "n-2", json!({"list": 1})).await.unwrap_err();
    developer(e, DeveloperErrorKind::Protocol, "The action did not return a dictionary.");

    // A crash mid-activation (the runtime is killed), then a new runtime, freshly initialised.
    let e = activate(&docker, &native, "n-3", json!({"crash": 1})).await.unwrap_err();
    developer(
        e,
        DeveloperErrorKind::Crash,
        "The action did not produce a valid response and exited unexpectedly.",
    );
    let (r, _, init) = activate(&docker, &native, "n-4", json!({"b": 2})).await.unwrap();
    assert_eq!(r, json!({"native": {"b": 2}}));
    assert!(init, "the replacement runtime was initialised");

    // A timeout: OpenWhisk's message (the watchdog's limit is the spec's timeout), then a
    // new runtime.
    docker
        .deploy(spec("slow").env("ow_code", code).timeout(std::time::Duration::from_secs(2)))
        .await
        .unwrap();
    let slow = env.fref("slow");
    let e = activate(&docker, &slow, "t-1", json!({"sleep": 1})).await.unwrap_err();
    assert_eq!((e.status_code().as_u8(), e.http_status().as_u16()), (2, 504), "{e}");
    match e {
        Error::Developer { kind: DeveloperErrorKind::Timeout, message } => {
            assert_eq!(message, "The action exceeded its time limits of 2000 milliseconds.")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let (r, _, init) = activate(&docker, &slow, "t-2", json!({"c": 3})).await.unwrap();
    assert_eq!((r, init), (json!({"native": {"c": 3}}), true));

    // An init failure: the runtime's message.
    docker.deploy(spec("badcode").env("ow_code", "no shebang")).await.unwrap();
    let e = activate(&docker, &env.fref("badcode"), "b-1", json!({})).await.unwrap_err();
    match &e {
        Error::Developer { kind: DeveloperErrorKind::Init, message } => {
            assert!(message.contains("must be an executable script"), "{message}")
        }
        other => panic!("expected an init error, got {other:?}"),
    }
    for f in ["bb", "native", "slow", "badcode"] {
        docker.remove(&env.fref(f)).await.unwrap();
    }
    docker.shutdown().await;
}

/// The container ids of `f`'s replicas.
fn containers(
    docker: &faas_backend_docker::DockerInvoker,
    f: &faas_core::FunctionRef,
) -> Vec<String> {
    docker.instances(f).unwrap().into_iter().map(|i| i.container_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stem_cell_is_taken_initialised_and_refilled() {
    use common::eventually;
    use std::time::Duration;
    let env = common::setup("a_stem_cell_is_taken_initialised_and_refilled").await;
    let _g = env.guard();
    let image = testing::openwhisk_image().await.expect("building the OpenWhisk image");
    let docker = env.builder().stem_cells_image("blackbox", &image, 1).build().await.unwrap();
    let bound = Duration::from_secs(60);
    let stem_cell = |not: Vec<String>| {
        let (docker, image) = (&docker, &image);
        eventually(bound, "a new stem cell", move || {
            let not = not.clone();
            async move {
                docker.stem_cells("blackbox", Some(image)).into_iter().find(|c| !not.contains(c))
            }
        })
    };
    let spec = |name: &str| {
        FunctionSpec::new(name, image.clone())
            .namespace(env.ns.clone())
            .env("mode", "openwhisk")
            .env("ow_kind", "blackbox")
    };

    // The image's own action, from the stem cell: its /init comes with the first use.
    let first = stem_cell(vec![]).await;
    docker.deploy(spec("bb")).await.unwrap();
    let bb = env.fref("bb");
    let (r, logs, init) = activate(&docker, &bb, "s-1", json!({"k": 1})).await.unwrap();
    assert_eq!(r, json!({"builtin": {"k": 1}, "id": "s-1"}));
    assert!(init, "the stem cell was initialised for the action");
    assert!(logs.iter().any(|l| l.ends_with("stdout: built-in got {\"k\":1}")), "{logs:?}");
    assert_eq!(containers(&docker, &bb), vec![first.clone()], "the replica is the stem cell");
    let (_, _, init) = activate(&docker, &bb, "s-2", json!({})).await.unwrap();
    assert!(!init, "the same warm instance again");

    // Refilled; the new one becomes a code action, its envVars reaching it through /init.
    let second = stem_cell(vec![first.clone()]).await;
    let code = "#!/bin/sh\n\
        case \"$1\" in\n\
        *sleep*) echo started; sleep 30 ;;\n\
        *) echo \"{\\\"greeting\\\": \\\"$GREETING\\\", \\\"p\\\": $1}\" ;;\n\
        esac\n";
    // A quote the runtime must keep through its sh quoting.
    let greeting = "it's a stem cell";
    docker.deploy(spec("code").env("ow_code", code).env("GREETING", greeting)).await.unwrap();
    let code_f = env.fref("code");
    let (r, _, init) = activate(&docker, &code_f, "c-1", json!({"a": 1})).await.unwrap();
    assert_eq!((r, init), (json!({"greeting": greeting, "p": {"a": 1}}), true));
    assert_eq!(containers(&docker, &code_f), vec![second.clone()]);

    // The container killed mid-activation: a developer error (status code 2), and a new
    // instance, the refilled stem cell specialised for the action, serves the next one.
    let third = stem_cell(vec![first.clone(), second.clone()]).await;
    let call = {
        let (docker, f) = (docker.clone(), code_f.clone());
        tokio::spawn(async move { activate(&docker, &f, "c-2", json!({"sleep": 1})).await })
    };
    eventually(bound, "the activation running", || async {
        docker.instances(&code_f).unwrap().iter().any(|i| i.in_flight == 1).then_some(())
    })
    .await;
    testing::kill_container(&second).await.unwrap();
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(e.status_code().as_u8(), 2, "{e}");
    assert!(matches!(e, Error::Developer { kind: DeveloperErrorKind::Crash, .. }), "{e}");
    // The maintenance loop notices the dead container (an inspect right after the kill may
    // still see it running) and replaces it.
    eventually(bound, "the dead instance replaced", || async {
        (containers(&docker, &code_f) == vec![third.clone()]).then_some(())
    })
    .await;
    let (r, _, init) = activate(&docker, &code_f, "c-3", json!({"b": 2})).await.unwrap();
    assert_eq!((r, init), (json!({"greeting": greeting, "p": {"b": 2}}), true));
    eventually(bound, "the dead container removed", || async {
        (testing::container_state(&second).await.unwrap() == "missing").then_some(())
    })
    .await;

    // An init failure in a stem cell: the runtime's message, for each activation.
    let fourth = stem_cell(vec![first.clone(), second.clone(), third.clone()]).await;
    docker.deploy(spec("badcode").env("ow_code", "no shebang")).await.unwrap();
    let bad = env.fref("badcode");
    for id in ["b-1", "b-2"] {
        match activate(&docker, &bad, id, json!({})).await.unwrap_err() {
            Error::Developer { kind: DeveloperErrorKind::Init, message } => {
                assert!(message.contains("must be an executable script"), "{message}")
            }
            other => panic!("expected an init error, got {other:?}"),
        }
    }
    assert_eq!(containers(&docker, &bad), vec![fourth]);

    for f in ["bb", "code", "badcode"] {
        docker.remove(&env.fref(f)).await.unwrap();
    }
    docker.shutdown().await;
    assert!(env.leftovers().await.is_empty(), "{:?}", env.leftovers().await);
}

#[tokio::test]
async fn stem_cells_of_an_unknown_kind_or_without_an_image_are_refused() {
    use faas_backend_docker::DockerInvoker;
    let builders = [
        DockerInvoker::builder().stem_cells("cobol:1", 1),
        // A blackbox runtime has no image of its own.
        DockerInvoker::builder().stem_cells("blackbox", 1),
        DockerInvoker::builder().stem_cells("python:3", 65),
    ];
    for b in builders {
        // Refused before any engine is asked.
        let e = b.socket("/nonexistent/docker.sock").build().await.unwrap_err();
        assert!(matches!(&e, Error::InvalidSpec { field, .. } if field == "stem_cells"), "{e}");
    }
}

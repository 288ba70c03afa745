//! OpenWhisk actions on the process backend: a Python code action (source and zip), a Node
//! code action and a blackbox action run by our runtimes (`runtimes/`) through the watchdog's
//! `openwhisk` mode; an init failure, a non-dictionary result, a timeout and a crash each give
//! OpenWhisk's developer error (status code 2, the gateway's 502/504) and a new runtime after;
//! the log markers split the logs per activation.

mod common;

use std::time::Duration;

use common::{eventually, temp_dir};
use faas_core::prelude::*;
use faas_core::{DeveloperErrorKind, Error, FunctionRef, FunctionSpec, Invocation};
use faas_watchdog::openwhisk::{ACTIVATION_ID_HEADER, INIT_TIME_HEADER, LOGS_HEADER};
use faas_watchdog::process::ProcessInvoker;
use serde_json::{json, Value};

fn invoker(tag: &str) -> ProcessInvoker {
    common::invoker_builder(tag).build().unwrap()
}

const PY_ACTION: &str = r#"
import os, sys, time
def main(p):
    print("hello", p.get("name"))
    print("to stderr", p.get("name"), file=sys.stderr)
    if p.get("crash"):
        sys.stdout.flush()
        os._exit(3)
    if p.get("list"):
        return [1, 2]
    if p.get("apperror"):
        return {"error": "bad input"}
    if p.get("sleep"):
        time.sleep(float(p["sleep"]))
    return {"greeting": "hi " + str(p.get("name")), "pid": os.getpid(),
            "activation": os.environ.get("__OW_ACTIVATION_ID"),
            "action": os.environ.get("__OW_ACTION_NAME"), "params": p}
"#;

fn action(name: &str, kind: &str, code: &str) -> FunctionSpec {
    FunctionSpec::new(name, "").env("mode", "openwhisk").env("ow_kind", kind).env("ow_code", code)
}

/// An API activation of `name` with `params`, asking for its logs.
async fn activate(
    inv: &ProcessInvoker,
    name: &str,
    id: &str,
    params: Value,
) -> faas_core::Result<(Value, Vec<String>, Option<u64>)> {
    let mut req = http::Request::new(faas_core::Body::from(params.to_string()));
    *req.method_mut() = http::Method::POST;
    req.headers_mut().insert(ACTIVATION_ID_HEADER, id.parse().unwrap());
    req.headers_mut().insert(LOGS_HEADER, "true".parse().unwrap());
    let resp = inv.invoke(Invocation::new(name, req)).await?;
    assert_eq!(resp.status(), 200);
    let logs: Vec<String> = resp
        .headers()
        .get(LOGS_HEADER)
        .map(|v| serde_json::from_str(v.to_str().unwrap()).unwrap())
        .unwrap_or_default();
    let init = resp.headers().get(INIT_TIME_HEADER).map(|v| v.to_str().unwrap().parse().unwrap());
    let body = resp.into_body().collect_bytes().await.unwrap();
    Ok((serde_json::from_slice(&body).unwrap(), logs, init))
}

fn developer(e: Error, kind: DeveloperErrorKind, message: &str) {
    assert_eq!(e.status_code().as_u8(), 2, "{e}");
    match &e {
        Error::Developer { kind: k, message: m } => {
            assert_eq!(*k, kind, "{e}");
            assert_eq!(m, message);
        }
        other => panic!("expected a developer error, got {other:?}"),
    }
    let want = if kind == DeveloperErrorKind::Timeout { 504 } else { 502 };
    assert_eq!(e.http_status(), want, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_code_action_runs_with_its_params_and_logs_per_activation() {
    let inv = invoker("ow-python");
    inv.deploy(action("greet", "python:3", PY_ACTION)).await.unwrap();
    let (r, logs, init) = activate(&inv, "greet", "act-1", json!({"name": "ann"})).await.unwrap();
    assert_eq!(r["greeting"], "hi ann");
    assert_eq!(r["activation"], "act-1");
    assert_eq!(r["action"], "/openfaas-fn/greet");
    assert_eq!(r["params"], json!({"name": "ann"}));
    assert!(init.is_some(), "the first activation reports the init time");
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs.iter().any(|l| l.ends_with(" stdout: hello ann")), "{logs:?}");
    assert!(logs.iter().any(|l| l.ends_with(" stderr: to stderr ann")), "{logs:?}");
    // The next activation has only its own lines, and no init time (a warm start).
    let (r2, logs, init) = activate(&inv, "greet", "act-2", json!({"name": "bob"})).await.unwrap();
    assert_eq!(r2["pid"], r["pid"], "the same runtime serves the warm activation");
    assert_eq!(init, None);
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs.iter().all(|l| l.ends_with("bob")), "{logs:?}");
    // A result with an `error` field is an application error: 502 with the object, no
    // developer error.
    let mut req = http::Request::new(faas_core::Body::from(r#"{"apperror": true}"#));
    *req.method_mut() = http::Method::POST;
    req.headers_mut().insert(ACTIVATION_ID_HEADER, "act-e".parse().unwrap());
    let resp = inv.invoke(Invocation::new("greet", req)).await.unwrap();
    assert_eq!(resp.status(), 502);
    let body = resp.into_body().collect_bytes().await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({"error": "bad input"}));
    // The logs capability has every line, without the markers.
    let all = inv.read_logs(&FunctionRef::default_ns("greet")).await.unwrap();
    assert!(all.iter().any(|e| e.text.contains("hello ann")), "{all:#?}");
    assert!(!all.iter().any(|e| e.text.contains("XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX")));

    // A web request: query and JSON body merged, OpenWhisk's __ow_* fields.
    let mut req = http::Request::new(faas_core::Body::from(r#"{"name": "cy"}"#));
    *req.method_mut() = http::Method::PUT;
    *req.uri_mut() = "/some/path?x=1&name=q".parse().unwrap();
    req.headers_mut().insert("x-test", "t".parse().unwrap());
    let resp = inv.invoke(Invocation::new("greet", req)).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let r: Value =
        serde_json::from_slice(&resp.into_body().collect_bytes().await.unwrap()).unwrap();
    let p = &r["params"];
    assert_eq!((&p["name"], &p["x"]), (&json!("cy"), &json!("1")), "{p}");
    assert_eq!(p["__ow_method"], "put");
    assert_eq!(p["__ow_path"], "/some/path");
    assert_eq!(p["__ow_headers"]["x-test"], "t");
    inv.remove(&FunctionRef::default_ns("greet")).await.unwrap();
}

/// A zip holding `files`, base64, made by Python's zipfile.
fn zip_base64(files: &[(&str, &str)]) -> String {
    let script = r#"
import base64, io, json, sys, zipfile
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w") as z:
    for name, text in json.loads(sys.argv[1]):
        z.writestr(name, text)
print(base64.b64encode(buf.getvalue()).decode())
"#;
    let files = serde_json::to_string(files).unwrap();
    let out = std::process::Command::new("python3").args(["-c", script, &files]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_action_its_main_and_big_code() {
    let inv = invoker("ow-zip");
    let zip = zip_base64(&[
        (
            "__main__.py",
            "from helper import twice\ndef entry(p):\n    return {'n': twice(p['n'])}\n",
        ),
        ("helper.py", "def twice(n):\n    return 2 * n\n"),
    ]);
    inv.deploy(action("zipped", "python:3", &zip).env("ow_binary", "true").env("ow_main", "entry"))
        .await
        .unwrap();
    let (r, _, _) = activate(&inv, "zipped", "z-1", json!({"n": 21})).await.unwrap();
    assert_eq!(r, json!({"n": 42}));
    // Code over what one environment variable holds (128 KiB) reaches the runtime too.
    let big = format!("{PY_ACTION}\n# {}\n", "x".repeat(200 * 1024));
    inv.deploy(action("big", "python:3", &big)).await.unwrap();
    let (r, _, _) = activate(&inv, "big", "z-2", json!({"name": "big"})).await.unwrap();
    assert_eq!(r["greeting"], "hi big");
    inv.remove(&FunctionRef::default_ns("big")).await.unwrap();
    inv.remove(&FunctionRef::default_ns("zipped")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_code_action_runs() {
    let inv = invoker("ow-node");
    let code = "function main(p) { console.log('node says', p.name); \
                return Promise.resolve({hello: p.name, id: process.env.__OW_ACTIVATION_ID}); }";
    inv.deploy(action("nd", "nodejs:20", code)).await.unwrap();
    let (r, logs, _) = activate(&inv, "nd", "n-1", json!({"name": "dee"})).await.unwrap();
    assert_eq!(r, json!({"hello": "dee", "id": "n-1"}));
    assert!(logs.iter().any(|l| l.ends_with("stdout: node says dee")), "{logs:?}");
    inv.remove(&FunctionRef::default_ns("nd")).await.unwrap();
}

/// The blackbox runtime (`runtimes/blackbox/runtime.sh`, busybox sh) with a built-in action.
fn blackbox_runtime() -> String {
    format!("busybox sh {}/../runtimes/blackbox/runtime.sh", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackbox_action_and_a_native_code_action_run() {
    let inv = invoker("ow-blackbox");
    let dir = temp_dir("ow-blackbox-exec");
    let exe = dir.join("exec");
    std::fs::write(
        &exe,
        "#!/bin/sh\necho \"built-in got $1\"\necho \"{\\\"builtin\\\": $1, \\\"id\\\": \\\"$__OW_ACTIVATION_ID\\\"}\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    inv.deploy(
        FunctionSpec::new("bb", "local/bb")
            .process(blackbox_runtime())
            .env("mode", "openwhisk")
            .env("ow_kind", "blackbox")
            .env("OW_ACTION_EXEC", exe.to_str().unwrap()),
    )
    .await
    .unwrap();
    let (r, logs, _) = activate(&inv, "bb", "b-1", json!({"k": "v"})).await.unwrap();
    assert_eq!(r, json!({"builtin": {"k": "v"}, "id": "b-1"}));
    assert!(logs.iter().any(|l| l.contains("stdout: built-in got {\"k\":\"v\"}")), "{logs:?}");
    // A blackbox runtime given code (OpenWhisk's "native" actions): a script as source.
    inv.deploy(
        FunctionSpec::new("native", "local/native")
            .process(blackbox_runtime())
            .env("mode", "openwhisk")
            .env("ow_code", "#!/bin/sh\necho '{\"native\": true}'"),
    )
    .await
    .unwrap();
    let (r, _, _) = activate(&inv, "native", "b-2", json!({})).await.unwrap();
    assert_eq!(r, json!({"native": true}));
    for f in ["bb", "native"] {
        inv.remove(&FunctionRef::default_ns(f)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn developer_errors_have_openwhisks_messages_and_a_new_runtime_follows() {
    let inv = invoker("ow-errors");
    inv.deploy(action("act", "python:3", PY_ACTION).timeout(Duration::from_secs(2))).await.unwrap();
    let (first, _, _) = activate(&inv, "act", "e-0", json!({"name": "a"})).await.unwrap();

    // A result that is no dictionary: the runtime's message; the runtime stays.
    let e = activate(&inv, "act", "e-1", json!({"list": true})).await.unwrap_err();
    developer(e, DeveloperErrorKind::Protocol, "The action did not return a dictionary.");
    let (r, _, init) = activate(&inv, "act", "e-2", json!({})).await.unwrap();
    assert_eq!((r["pid"].clone(), init), (first["pid"].clone(), None));

    // A crash mid-activation, then a new runtime with a fresh /init: the activation right
    // after the crash waits for it rather than reaching the dead one (three times over).
    let mut after_crash = first.clone();
    for round in 0..3 {
        let e = activate(&inv, "act", &format!("e-3-{round}"), json!({"crash": true}))
            .await
            .unwrap_err();
        developer(
            e,
            DeveloperErrorKind::Crash,
            "The action did not produce a valid response and exited unexpectedly.",
        );
        let (r, _, init) = activate(&inv, "act", &format!("e-4-{round}"), json!({})).await.unwrap();
        assert_ne!(r["pid"], after_crash["pid"], "round {round}");
        assert!(init.is_some(), "round {round}: the new runtime was initialised");
        after_crash = r;
    }

    // A timeout: the runtime is replaced too.
    let e = activate(&inv, "act", "e-5", json!({"sleep": 30})).await.unwrap_err();
    developer(
        e,
        DeveloperErrorKind::Timeout,
        "The action exceeded its time limits of 2000 milliseconds.",
    );
    let (after_timeout, _, init) = activate(&inv, "act", "e-6", json!({})).await.unwrap();
    assert_ne!(after_timeout["pid"], after_crash["pid"]);
    assert!(init.is_some());
    // The line the watchdog logs for the timed-out activation reaches the function's logs
    // through its log pump: polled, with a bound.
    let missing = "The action did not initialize or run as expected. Log data might be missing.";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = inv.read_logs(&FunctionRef::default_ns("act")).await.unwrap();
        if logs.iter().any(|e| e.text.contains(missing)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{logs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An init failure: the runtime's message, on every activation (each gets a new runtime).
    inv.deploy(action("broken", "python:3", "def main(p):\n  return {'x': }\n")).await.unwrap();
    for id in ["i-1", "i-2"] {
        let e = activate(&inv, "broken", id, json!({})).await.unwrap_err();
        match &e {
            Error::Developer { kind: DeveloperErrorKind::Init, message } => {
                assert!(message.starts_with("Initialization has failed due to: "), "{message}");
                assert!(message.contains("__main__.py"), "{message}");
            }
            other => panic!("expected an init error, got {other:?}"),
        }
        assert_eq!((e.status_code().as_u8(), e.http_status().as_u16()), (2, 502));
    }
    // A runtime that exits before it listens.
    inv.deploy(
        FunctionSpec::new("gone", "local/gone").process("sh -c 'exit 7'").env("mode", "openwhisk"),
    )
    .await
    .unwrap();
    let e = activate(&inv, "gone", "g-1", json!({})).await.unwrap_err();
    developer(
        e,
        DeveloperErrorKind::Init,
        "The action did not initialize and exited unexpectedly.",
    );
    for f in ["act", "broken", "gone"] {
        inv.remove(&FunctionRef::default_ns(f)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_action_settings_are_refused_naming_the_field() {
    let inv = invoker("ow-bad");
    for (spec, field) in [
        (action("k", "cobol:1", "x"), "envVars.ow_kind"),
        (action("c", "python:3", "x").env("ow_concurrency", "0"), "envVars.ow_concurrency"),
        (action("b", "python:3", "%%%").env("ow_binary", "true"), "envVars.ow_code"),
        (FunctionSpec::new("n", "local/n").env("mode", "openwhisk"), "envProcess"),
    ] {
        match inv.deploy(spec).await {
            Err(Error::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stem_cell_is_taken_initialised_and_refilled() {
    let inv = common::invoker_builder("ow-stem").stem_cells("python:3", 1).build().unwrap();
    let stem = eventually(Duration::from_secs(60), "a stem cell", || async {
        inv.stem_cell_pids("python:3").first().copied()
    })
    .await;
    inv.deploy(
        action("st", "python:3", PY_ACTION)
            .env("GREETING", "from the spec")
            .timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let (r, logs, init) = activate(&inv, "st", "s-1", json!({"name": "stem"})).await.unwrap();
    assert_eq!(r["greeting"], "hi stem");
    assert!(init.is_some(), "the stem cell was initialised for the action");
    assert!(logs.iter().any(|l| l.ends_with("stdout: hello stem")), "{logs:?}");
    // The replica is the stem cell's watchdog.
    let f = FunctionRef::default_ns("st");
    let pids: Vec<u32> = inv.instance_pids(&f).unwrap().into_iter().map(|(_, p)| p).collect();
    assert_eq!(pids, vec![stem]);
    // The spec's envVars reach the runtime through /init, and so do the platform's names.
    let code = "import os\ndef main(p):\n    return {k: os.environ.get(k) for k in \
                ['GREETING', 'OPENFAAS_FUNCTION_NAME', 'OPENFAAS_SECRETS_DIR']}\n";
    let fresh = eventually(Duration::from_secs(60), "a new stem cell", || async {
        inv.stem_cell_pids("python:3").first().copied().filter(|p| *p != stem)
    })
    .await;
    inv.deploy(action("env", "python:3", code).env("GREETING", "hello")).await.unwrap();
    let (r, _, _) = activate(&inv, "env", "s-2", json!({})).await.unwrap();
    assert_eq!((&r["GREETING"], &r["OPENFAAS_FUNCTION_NAME"]), (&json!("hello"), &json!("env")));
    assert!(r["OPENFAAS_SECRETS_DIR"].as_str().unwrap().ends_with("secrets"), "{r}");
    let env_pids: Vec<u32> = inv
        .instance_pids(&FunctionRef::default_ns("env"))
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(env_pids, vec![fresh], "the refilled stem cell was taken in turn");
    // A crash of a specialised instance: a new runtime with the action's code, in place.
    let e = activate(&inv, "st", "s-3", json!({"crash": true})).await.unwrap_err();
    assert!(matches!(e, Error::Developer { kind: DeveloperErrorKind::Crash, .. }), "{e}");
    let (r, _, init) = activate(&inv, "st", "s-4", json!({"name": "again"})).await.unwrap();
    assert_eq!((r["greeting"].as_str(), init.is_some()), (Some("hi again"), true));
    // Refilled again.
    eventually(Duration::from_secs(60), "the pool refilled", || async {
        inv.stem_cell_pids("python:3").first().copied().filter(|p| *p != fresh)
    })
    .await;
    for f in ["st", "env"] {
        inv.remove(&FunctionRef::default_ns(f)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stem_cells_of_a_kind_without_a_local_runtime_are_refused() {
    for kind in ["blackbox", "cobol:1"] {
        let e = common::invoker_builder("ow-stem-bad").stem_cells(kind, 1).build().unwrap_err();
        assert!(matches!(&e, Error::InvalidSpec { field, .. } if field == "stem_cells"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_activation_at_a_time_unless_the_action_allows_more() {
    let inv = invoker("ow-concurrency");
    let code =
        "import time\ndef main(p):\n    t0 = time.time()\n    time.sleep(float(p['s']))\n    \
                return {'start': t0, 'end': time.time()}\n";
    inv.deploy(action("one", "python:3", code)).await.unwrap();
    inv.deploy(action("two", "python:3", code).env("ow_concurrency", "2")).await.unwrap();
    // Warm both first, so that the timed activations find their runtimes ready.
    for f in ["one", "two"] {
        activate(&inv, f, "warm", json!({"s": 0})).await.unwrap();
    }
    let pair = |f: &'static str, s: f64| {
        let (a, b) = (inv.clone(), inv.clone());
        async move {
            let (x, y) = tokio::join!(
                activate(&a, f, "p-1", json!({ "s": s })),
                activate(&b, f, "p-2", json!({ "s": s }))
            );
            let (x, y) = (x.unwrap().0, y.unwrap().0);
            let span = |r: &Value| (r["start"].as_f64().unwrap(), r["end"].as_f64().unwrap());
            let (mut p, mut q) = (span(&x), span(&y));
            if q.0 < p.0 {
                std::mem::swap(&mut p, &mut q);
            }
            q.0 < p.1 // the second started before the first ended
        }
    };
    assert!(!pair("one", 0.3).await, "ow_concurrency 1 runs one /run at a time");
    assert!(pair("two", 3.0).await, "ow_concurrency 2 runs two at once");
    for f in ["one", "two"] {
        inv.remove(&FunctionRef::default_ns(f)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_action_answers_with_its_status_headers_and_body() {
    let inv = invoker("ow-web");
    let code = r#"
import base64
def main(p):
    kind = p.get("kind")
    if kind == "text":
        return {"statusCode": 201, "headers": {"x-made": "yes", "content-type": "text/plain"},
                "body": "made " + p["__ow_path"]}
    if kind == "binary":
        return {"headers": {"content-type": "application/octet-stream"},
                "body": base64.b64encode(b"\x00\x01").decode()}
    if kind == "empty":
        return {}
    return {"body": {"method": p["__ow_method"]}}
"#;
    inv.deploy(action("web", "python:3", code).env("ow_web", "true")).await.unwrap();
    let web = |uri: &str| {
        let mut req = http::Request::new(faas_core::Body::empty());
        *req.uri_mut() = uri.parse().unwrap();
        Invocation::new("web", req)
    };
    let resp = inv.invoke(web("/p?kind=text")).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        (&resp.headers()["x-made"], &resp.headers()["content-type"]),
        (
            &"yes".parse::<http::HeaderValue>().unwrap(),
            &"text/plain".parse::<http::HeaderValue>().unwrap()
        )
    );
    assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "made /p");
    let resp = inv.invoke(web("/?kind=binary")).await.unwrap();
    assert_eq!(resp.into_body().collect_bytes().await.unwrap(), &[0u8, 1][..]);
    let resp = inv.invoke(web("/?kind=empty")).await.unwrap();
    assert_eq!(resp.status(), 204);
    let resp = inv.invoke(web("/")).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = resp.into_body().collect_bytes().await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({"method": "get"}));
    // An API activation of the same action gets the result itself.
    let (r, _, _) = activate(&inv, "web", "w-1", json!({"kind": "empty"})).await.unwrap();
    assert_eq!(r, json!({}));
    inv.remove(&FunctionRef::default_ns("web")).await.unwrap();
}

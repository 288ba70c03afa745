//! `faas up --stem-cells KIND=N` on the process backend: a stem cell of `python:3` (a
//! watchdog and our Python runtime, started before any action exists) is taken by the first
//! instance of a `python:3` code action, which runs in it; a new one is started in its place;
//! bad values of the flag are refused with an error naming it.

mod common;

use std::time::Duration;

use common::{eventually, Sandbox};
use faas_core::FunctionSpec;
use faas_http::client::GatewayClient;
use http::Method;
use serde_json::Value;

const STACK: &str = "functions: {}\n";

/// The script of the `python:3` runtime, as its command line ends.
const PY_RUNTIME: &str = "python/runtime.py";

/// The action answers the process id of its runtime's parent: the watchdog it runs under.
const ACTION: &str = "import os\ndef main(params):\n    return {\"watchdog\": os.getppid(), \
                      \"name\": params.get(\"name\", \"stranger\")}\n";

/// The `faas watchdog` children of `parent` whose environment has `ow_stem=true` and whose
/// runtime (`fprocess`) runs the script `runtime`: its stem cells of that kind, with the
/// port each watchdog serves on.
fn stem_cells(parent: u32, runtime: &str) -> Vec<(u32, u16)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The fields after the command's closing parenthesis: state, then the parent's pid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        let var = |name: &str| {
            vars.iter().find_map(|v| {
                std::str::from_utf8(v.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?).ok()
            })
        };
        let port = var("port").and_then(|p| p.parse::<u16>().ok());
        // The runtime's command ends in its script (`python3 '<state>/runtimes/python/runtime.py'`).
        let stem = var("ow_stem") == Some("true")
            && var("fprocess").is_some_and(|f| f.trim_end_matches('\'').ends_with(runtime));
        if let (true, Some(port)) = (stem, port) {
            out.push((pid, port));
        }
    }
    out.sort_unstable();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_action_runs_in_a_stem_cell_of_its_kind() {
    let sb = Sandbox::new("stem", STACK, "python");
    let up = sb.up_with(&["--no-auth", "--stem-cells", "python:3=2"]);
    let pid = up.child.as_ref().unwrap().id();
    // Both stem cells started and healthy (their runtimes listen), before any action exists,
    // and the backend has them ready to be taken (its log says so).
    let stems: Vec<u32> = eventually(60, "two healthy python:3 stem cells", || async {
        let cells = stem_cells(pid, PY_RUNTIME);
        let ready = up.log().lines().filter(|l| l.contains("stem cell ready")).count();
        if cells.len() < 2 || ready < 2 {
            return None;
        }
        for (_, port) in &cells {
            let c = GatewayClient::new(&format!("http://127.0.0.1:{port}")).ok()?;
            let r = c.send(Method::GET, "/_/health", &[], bytes::Bytes::new()).await.ok()?;
            if r.status != 200 {
                return None;
            }
        }
        Some(cells.into_iter().map(|(p, _)| p).collect())
    })
    .await;

    let client = GatewayClient::new(&up.base).unwrap().with_timeout(Duration::from_secs(30));
    eventually(60, "faas up serves", || async { client.list(None).await.ok() }).await;
    let spec = FunctionSpec::new("hello", "faas-rs/action-python:3")
        .env("mode", "openwhisk")
        .env("ow_kind", "python:3")
        .env("ow_code", ACTION);
    client.deploy(&spec).await.unwrap_or_else(|e| panic!("deploy: {e}; log:\n{}", up.log()));
    let r = client
        .send(
            Method::POST,
            "/function/hello",
            &[("content-type".into(), "application/json".into())],
            bytes::Bytes::from_static(br#"{"name":"Ann"}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}; log:\n{}", r.text(), up.log());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["name"], "Ann", "{v}");
    let watchdog = v["watchdog"].as_u64().and_then(|w| u32::try_from(w).ok());
    assert!(
        watchdog.is_some_and(|w| stems.contains(&w)),
        "the action runs under a stem cell's watchdog, started before it existed ({stems:?}): {v}"
    );
    // The stem cell is the action's now; a new one takes its place.
    eventually(60, "a new stem cell", || async {
        stem_cells(pid, PY_RUNTIME).into_iter().find(|(p, _)| !stems.contains(p))
    })
    .await;
    up.stop();
}

#[test]
fn bad_stem_cell_values_are_refused_naming_the_flag() {
    let sb = Sandbox::new("stem", STACK, "bad");
    for (value, extra) in [
        ("python:3", &[][..]),
        ("cobol:1=1", &[][..]),
        ("blackbox=1", &[][..]),
        ("python:3=65", &[][..]),
        ("python:3=many", &[][..]),
        ("python:3=1", &["--backend", "kubernetes"][..]),
    ] {
        let mut args = vec!["--no-auth", "--stem-cells", value];
        args.extend_from_slice(extra);
        let mut up = sb.up_with(&args);
        let st = up.wait_exit(Duration::from_secs(30));
        assert!(!st.success(), "{value}: {st:?}");
        let log = up.log();
        assert!(log.contains("invalid --stem-cells"), "{value}: {log}");
    }
}

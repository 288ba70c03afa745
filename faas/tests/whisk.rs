//! The OpenWhisk API of `faas up` (process backend) as its users reach it: driven by the
//! official `openwhisk` npm client (tests/js/whisk.test.js: the lecture's trigger and
//! rules example, a sequence of three shell actions and its failing variant), then
//! entities and activation records read again after a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, Sandbox, Up};
use faas_http::client::GatewayClient;
use http::Method;
use serde_json::Value;

const STACK: &str = "functions: {}\n";

/// The OpenWhisk key `faas up` generated in its state directory.
fn key(state: &Path) -> String {
    std::fs::read_to_string(state.join(faas_http::whisk::WHISK_AUTH_FILE))
        .unwrap()
        .trim()
        .to_string()
}

/// GET of `path` under the caller's namespace, with the key; waits until `faas up` serves.
async fn get(up: &Up, auth: &str, path: &str) -> (u16, Value) {
    let client = GatewayClient::new(&up.base).unwrap().with_timeout(Duration::from_secs(30));
    let header = format!("Basic {}", faas_core::queue::base64_encode(auth.as_bytes()));
    eventually(60, "faas up answers /api/v1", || async {
        let h = [("authorization".to_string(), header.clone())];
        let r = client
            .send(Method::GET, &format!("/api/v1/namespaces/_/{path}"), &h, Bytes::new())
            .await
            .ok()?;
        Some((r.status.as_u16(), serde_json::from_slice(&r.body).unwrap_or(Value::Null)))
    })
    .await
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/js")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openwhisk_client_drives_the_api_and_state_survives_a_restart() {
    let js = js_dir();
    assert!(
        js.join("node_modules/openwhisk").is_dir(),
        "the openwhisk npm client is missing: run `npm ci` in {} (scripts/test.sh does)",
        js.display()
    );
    let sb = Sandbox::new("whisk", STACK, "client");
    let up = sb.up();
    // Serving (the key file exists once it does).
    let auth = eventually(60, "the OpenWhisk key", || async {
        std::fs::read_to_string(sb.state_dir().join(faas_http::whisk::WHISK_AUTH_FILE)).ok()
    })
    .await;
    let auth = auth.trim().to_string();
    let (s, _) = get(&up, &auth, "actions").await;
    assert_eq!(s, 200, "log:\n{}", up.log());

    let out = tokio::task::spawn_blocking({
        let (js, base, auth) = (js.clone(), up.base.clone(), auth.clone());
        move || {
            Command::new("node")
                .arg("whisk.test.js")
                .current_dir(js)
                .env("OW_APIHOST", base)
                .env("OW_AUTH", auth)
                .output()
                .expect("run node")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "node: {}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        up.log()
    );

    let (_, before) = get(&up, &auth, "activations?docs=true&limit=200").await;
    let before = before.as_array().unwrap().len();
    assert!(before >= 10, "{before} activations");
    up.stop();

    let again = sb.up();
    assert_eq!(key(&sb.state_dir()), auth, "the key is kept");
    let (s, actions) = get(&again, &auth, "actions").await;
    assert_eq!(s, 200);
    let mut names: Vec<&str> =
        actions.as_array().unwrap().iter().filter_map(|a| a["name"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["audit", "boom", "broken", "seq", "upper", "welcome"]);
    let (_, rules) = get(&again, &auth, "rules").await;
    assert_eq!(rules.as_array().unwrap().len(), 2);
    let (_, rule) = get(&again, &auth, "rules/r-audit").await;
    assert_eq!(rule["status"], "inactive");
    let (_, trigger) = get(&again, &auth, "triggers/new-user").await;
    assert_eq!(trigger["parameters"].as_array().unwrap().len(), 2);
    let (_, after) = get(&again, &auth, "activations?docs=true&limit=200").await;
    assert_eq!(after.as_array().unwrap().len(), before, "activations kept across the restart");
    // The restored actions still run (the process backend redeploys their functions).
    let client = GatewayClient::new(&again.base).unwrap().with_timeout(Duration::from_secs(30));
    let header = format!("Basic {}", faas_core::queue::base64_encode(auth.as_bytes()));
    let r = client
        .send(
            Method::POST,
            "/api/v1/namespaces/_/actions/upper?blocking=true&result=true",
            &[("authorization".into(), header), ("content-type".into(), "application/json".into())],
            Bytes::from_static(br#"{"a":"b"}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}; log:\n{}", r.text(), again.log());
    assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), serde_json::json!({"A": "B"}));
    again.stop();
}

//! The OpenWhisk API of `faas up` (process backend) as its users reach it: driven by the
//! official `openwhisk` npm client (tests/js/whisk.test.js: the lecture's trigger and
//! rules example, a sequence of three shell actions and its failing variant, a Node.js
//! code action), then
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
    assert_eq!(names, ["audit", "boom", "broken", "js-hello", "seq", "upper", "welcome"]);
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
    // So does the Node.js code action (its code kept with the function).
    let r = client
        .send(
            Method::POST,
            "/api/v1/namespaces/_/actions/js-hello?blocking=true&result=true",
            &[
                (
                    "authorization".into(),
                    format!("Basic {}", faas_core::queue::base64_encode(auth.as_bytes())),
                ),
                ("content-type".into(), "application/json".into()),
            ],
            Bytes::from_static(br#"{"name":"again"}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}; log:\n{}", r.text(), again.log());
    let hello: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(hello, serde_json::json!({"hello": "again", "n": 42}));
    again.stop();
}

/// Runs `faas ARGS` against `up` with its OpenWhisk key; answers (success, stdout).
fn faas(up: &Up, state: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(args)
        .args(["--apihost", &up.base, "--auth-file"])
        .arg(state.join(faas_http::whisk::WHISK_AUTH_FILE))
        .env_remove("WHISK_AUTH")
        .env_remove("WHISK_APIHOST")
        .output()
        .expect("run faas");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
}

/// [`faas`] that must succeed (the assertion shows its output and `up`'s log); answers
/// its output.
fn run_ok(up: &Up, state: &Path, args: &[&str]) -> String {
    let (ok, out) = faas(up, state, args);
    assert!(ok, "faas {args:?}: {out}\nlog:\n{}", up.log());
    out
}

/// `faas up` in `sb`, once it serves the OpenWhisk API; and its key.
async fn serving(sb: &Sandbox) -> (Up, String) {
    let up = sb.up();
    let auth = eventually(60, "the OpenWhisk key", || async {
        std::fs::read_to_string(sb.state_dir().join(faas_http::whisk::WHISK_AUTH_FILE)).ok()
    })
    .await;
    let auth = auth.trim().to_string();
    get(&up, &auth, "actions").await;
    (up, auth)
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The `wsk`-style verbs of `faas`: actions (a shell command on the process backend),
/// parameters, a trigger with a rule, firing, activations, rules disabled, packages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsk_verbs_drive_the_api() {
    let sb = Sandbox::new("whisk", STACK, "cli");
    let state = sb.state_dir();
    let (up, _) = serving(&sb).await;
    let run = |args: &[&str]| run_ok(&up, &state, args);

    run(&["action", "create", "hello", "--fprocess", "cat", "-p", "greeting", "hi"]);
    let out = run(&["action", "invoke", "hello", "-p", "name", "ann", "--result"]);
    assert_eq!(json_of(&out), serde_json::json!({"greeting": "hi", "name": "ann"}));
    let (ok, out) = faas(&up, &state, &["action", "create", "hello", "--fprocess", "cat"]);
    assert!(!ok && out.contains("already exists"), "{out}");
    run(&["action", "update", "hello", "-t", "5000"]);
    assert_eq!(json_of(&run(&["action", "get", "hello"]))["limits"]["timeout"], 5000);
    let (ok, out) = faas(&up, &state, &["action", "update", "hello", "-m", "4096"]);
    assert!(!ok && out.contains("limits.memory"), "{out}");

    // A code action from a file, as `wsk action create NAME FILE`: the kind from the
    // extension (`python:default`), run by the python:3 runtime of the manifest.
    let code = state.join("greet.py");
    std::fs::write(&code, "def main(p):\n    return {'hello': p.get('name', 'world')}\n").unwrap();
    run(&["action", "create", "greet", code.to_str().unwrap()]);
    let out = run(&["action", "invoke", "greet", "-p", "name", "bo", "--result"]);
    assert_eq!(json_of(&out), serde_json::json!({"hello": "bo"}));
    let (ok, out) = faas(
        &up,
        &state,
        &["action", "create", "cobol", code.to_str().unwrap(), "--kind", "cobol:1"],
    );
    assert!(!ok && out.contains("exec.kind"), "{out}");

    run(&["trigger", "create", "ping", "-p", "source", "cli"]);
    run(&["rule", "create", "on-ping", "ping", "hello"]);
    let fired = json_of(&run(&["trigger", "fire", "ping", "-p", "n", "1"]));
    assert!(fired["activationId"].is_string(), "{fired}");
    let list = eventually(30, "the rule's action ran", || async {
        let l = json_of(&faas(&up, &state, &["activation", "list", "hello", "--full"]).1);
        let done = l.as_array()?.iter().any(|a| a["response"]["result"]["source"] == "cli");
        done.then_some(l)
    })
    .await;
    let id = list[0]["activationId"].as_str().unwrap().to_string();
    let result = json_of(&run(&["activation", "result", &id]));
    assert_eq!(result["result"]["n"], 1);
    run(&["rule", "disable", "on-ping"]);
    assert_eq!(json_of(&run(&["rule", "get", "on-ping"]))["status"], "inactive");
    assert!(run(&["trigger", "fire", "ping"]).contains("nothing fired"));

    run(&["package", "create", "tools", "-p", "who", "package"]);
    run(&["action", "create", "tools/echo", "--fprocess", "cat"]);
    run(&["package", "bind", "tools", "mytools", "-p", "who", "binding"]);
    let out = run(&["action", "invoke", "mytools/echo", "--result"]);
    assert_eq!(json_of(&out), serde_json::json!({"who": "binding"}));
    assert_eq!(json_of(&run(&["package", "get", "tools"]))["actions"][0]["name"], "echo");
    run(&["action", "delete", "tools/echo"]);
    run(&["package", "delete", "mytools"]);
    run(&["package", "delete", "tools"]);
    assert_eq!(json_of(&run(&["package", "list"])), serde_json::json!([]));
    up.stop();
}

/// Packages (with a binding), actions in them, triggers, rules and activation records are
/// there after a restart of `faas up` (driven by the `faas` verbs, no node needed): after
/// a clean stop everything, and after `kill -9` every entity the API had accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_and_activations_survive_restarts() {
    let sb = Sandbox::new("whisk", STACK, "restart");
    let state = sb.state_dir();
    let (up, auth) = serving(&sb).await;
    let run = |up: &Up, args: &[&str]| run_ok(up, &state, args);
    run(&up, &["package", "create", "tools", "-p", "who", "package"]);
    run(&up, &["action", "create", "tools/echo", "--fprocess", "cat", "-p", "tool", "echo"]);
    run(&up, &["package", "bind", "tools", "mytools", "-p", "who", "binding"]);
    run(&up, &["trigger", "create", "ping", "-p", "source", "restart"]);
    run(&up, &["rule", "create", "on-ping", "ping", "tools/echo"]);
    run(&up, &["rule", "disable", "on-ping"]);
    let invoked = json_of(&run(&up, &["action", "invoke", "mytools/echo", "--blocking"]));
    let id = invoked["activationId"].as_str().expect("an activation id").to_string();
    up.stop();

    let up = sb.up();
    let (s, pkg) = get(&up, &auth, "packages/tools").await;
    assert_eq!(s, 200, "{pkg}; log:\n{}", up.log());
    assert_eq!(pkg["parameters"], serde_json::json!([{"key": "who", "value": "package"}]));
    let (_, binding) = get(&up, &auth, "packages/mytools").await;
    assert_eq!(binding["binding"]["name"], "tools", "{binding}");
    let (_, trigger) = get(&up, &auth, "triggers/ping").await;
    assert_eq!(trigger["parameters"], serde_json::json!([{"key": "source", "value": "restart"}]));
    let (_, rule) = get(&up, &auth, "rules/on-ping").await;
    assert_eq!(rule["status"], "inactive", "{rule}");
    let (s, record) = get(&up, &auth, &format!("activations/{id}")).await;
    assert_eq!(s, 200, "the activation record is kept: {record}");
    assert_eq!(record["response"]["result"], serde_json::json!({"who": "binding", "tool": "echo"}));
    // The package's action still runs through the binding (its function redeployed).
    let out = run(&up, &["action", "invoke", "mytools/echo", "--result"]);
    assert_eq!(json_of(&out), serde_json::json!({"who": "binding", "tool": "echo"}));

    // Killed outright: what the API accepted is on disk already.
    run(&up, &["trigger", "create", "late", "-p", "after", "kill"]);
    run(&up, &["rule", "enable", "on-ping"]);
    up.signal("KILL");
    let mut up = up;
    up.wait_exit(Duration::from_secs(30));
    let up = sb.up();
    let (s, late) = get(&up, &auth, "triggers/late").await;
    assert_eq!(s, 200, "{late}; log:\n{}", up.log());
    let (_, rule) = get(&up, &auth, "rules/on-ping").await;
    assert_eq!(rule["status"], "active", "{rule}");
    up.stop();
}

/// POSTs a lifecycle event of the Kafka feed action for trigger `trigger`; answers the
/// status and the activation record.
async fn kafka_feed_event(up: &Up, auth: &str, trigger: &str, event: &str) -> (u16, Value) {
    let client = GatewayClient::new(&up.base).unwrap().with_timeout(Duration::from_secs(30));
    let header = format!("Basic {}", faas_core::queue::base64_encode(auth.as_bytes()));
    let body = serde_json::json!({"lifecycleEvent": event, "triggerName": format!("/_/{trigger}")});
    let h =
        [("authorization".to_string(), header), ("content-type".into(), "application/json".into())];
    let path = "/api/v1/namespaces/whisk.system/actions/messaging/kafkaFeed?blocking=true";
    let r = client.send(Method::POST, path, &h, Bytes::from(body.to_string())).await.unwrap();
    (r.status.as_u16(), serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

/// `faas trigger create T --feed /whisk.system/messaging/kafkaFeed` on a `faas up` built
/// with `kafka`, against librdkafka's mock cluster: the topic's messages reach the rule's
/// action batched as OpenWhisk's messaging feed sends them; deleting the trigger stops its
/// feed (messages produced meanwhile wait in the topic, none consumed by the stopped feed,
/// and reach the trigger's feed created again); the feed starts again after a restart.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_feed_fires_a_trigger_with_batched_messages() {
    use std::collections::BTreeMap;
    let kafka = faas_queue::kafka::MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("orders", 1).unwrap();
    let brokers = kafka.bootstrap_servers();
    let sb = Sandbox::new("whisk", STACK, "kafka-feed");
    let state = sb.state_dir();
    let (up, auth) = serving(&sb).await;
    let run = |up: &Up, args: &[&str]| run_ok(up, &state, args);
    let create_feed = |up: &Up| {
        let feed = "/whisk.system/messaging/kafkaFeed";
        let args = ["trigger", "create", "orders-in", "--feed", feed, "-p", "brokers"];
        let mut args: Vec<&str> = args.to_vec();
        args.extend([brokers.as_str(), "-p", "topic", "orders", "-p", "isJSONData", "true"]);
        run(up, &args);
    };
    // The messages the action got, by offset (how many times each).
    let delivered = |up: &Up| -> BTreeMap<i64, (usize, Value)> {
        let l = json_of(&faas(up, &state, &["activation", "list", "echo", "--full"]).1);
        let mut seen: BTreeMap<i64, (usize, Value)> = BTreeMap::new();
        for a in l.as_array().into_iter().flatten() {
            for m in a["response"]["result"]["messages"].as_array().into_iter().flatten() {
                let e = seen.entry(m["offset"].as_i64().unwrap()).or_insert((0, m.clone()));
                e.0 += 1;
            }
        }
        seen
    };
    let produce = |range: std::ops::Range<i64>| {
        let kafka = &kafka;
        async move {
            for i in range {
                let value = serde_json::json!({ "n": i }).to_string();
                let offset = kafka.produce("orders", 0, Some(&format!("k{i}")), &value).await;
                assert_eq!(offset.unwrap(), i);
            }
        }
    };

    run(&up, &["action", "create", "echo", "--fprocess", "cat"]);
    // A bad parameter is refused naming it, and the trigger is taken back.
    let (ok, out) = faas(
        &up,
        &state,
        &[
            "trigger",
            "create",
            "bad",
            "--feed",
            "/whisk.system/messaging/kafkaFeed",
            "-p",
            "topic",
            "t",
        ],
    );
    assert!(!ok && out.contains("brokers"), "{out}");
    let (s, _) = get(&up, &auth, "triggers/bad").await;
    assert_eq!(s, 404);

    create_feed(&up);
    run(&up, &["rule", "create", "on-orders", "orders-in", "echo"]);
    let (s, read) = kafka_feed_event(&up, &auth, "orders-in", "READ").await;
    assert_eq!(s, 200, "{read}");
    assert_eq!(read["response"]["result"]["config"]["topic"], "orders", "{read}");
    produce(0..3).await;
    let seen = eventually(60, "the three messages reached the action", || async {
        let seen = delivered(&up);
        (seen.len() == 3).then_some(seen)
    })
    .await;
    for (offset, (_, m)) in &seen {
        let want = serde_json::json!({
            "topic": "orders", "partition": 0, "offset": offset,
            "key": format!("k{offset}"), "value": { "n": offset },
        });
        assert_eq!(m, &want);
    }

    // Deleted: the feed stops (its record is gone, and it consumes nothing more).
    run(&up, &["trigger", "delete", "orders-in"]);
    let (s, _) = kafka_feed_event(&up, &auth, "orders-in", "READ").await;
    assert_eq!(s, 404);
    produce(3..5).await;
    // Created again: its consumer group goes on from what was committed, so the messages
    // produced while it was gone arrive (a stopped feed still running would have taken
    // them: its trigger gone, acknowledged and lost).
    create_feed(&up);
    eventually(60, "the messages produced while the trigger was gone", || async {
        let seen = delivered(&up);
        (seen.len() == 5).then_some(())
    })
    .await;

    // Kept: after a restart the feed runs again.
    up.stop();
    let up = sb.up();
    get(&up, &auth, "actions").await;
    produce(5..6).await;
    eventually(60, "a message after the restart", || async {
        delivered(&up).contains_key(&5).then_some(())
    })
    .await;
    up.stop();
    drop(kafka);
}

/// Without the `kafka` feature the Kafka feed is refused with an error naming the
/// feature, and the trigger is taken back.
#[cfg(not(feature = "kafka"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_feed_without_the_feature_names_the_feature() {
    let sb = Sandbox::new("whisk", STACK, "no-kafka-feed");
    let state = sb.state_dir();
    let (up, auth) = serving(&sb).await;
    let feed = "/whisk.system/messaging/kafkaFeed";
    let args = [
        "trigger",
        "create",
        "t",
        "--feed",
        feed,
        "-p",
        "brokers",
        "127.0.0.1:9092",
        "-p",
        "topic",
        "t",
    ];
    let (ok, out) = faas(&up, &state, &args);
    assert!(!ok, "{out}");
    assert!(out.contains("`kafka` feature") && out.contains("--features kafka"), "{out}");
    let (s, _) = get(&up, &auth, "triggers/t").await;
    assert_eq!(s, 404);
    // The feed action itself answers 501 naming the feature.
    run_ok(&up, &state, &["trigger", "create", "t"]);
    let (s, v) = kafka_feed_event(&up, &auth, "t", "CREATE").await;
    assert_eq!(s, 501, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("`kafka` feature")), "{v}");
    up.stop();
}

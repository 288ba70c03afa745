//! The OpenWhisk REST API (`/api/v1`) end to end over real TCP, with in-memory actions:
//! the lecture's trigger and rules example, sequences, parameter merging with `final`,
//! limits, errors, credentials, and the activation record of every invocation.

use std::sync::Arc;
use std::time::Duration;

use faas_core::{handler_fn, Backend, Context, Error, MemoryInvoker, Request};
use faas_http::client::{GatewayClient, Reply};
use faas_http::{Gateway, WhiskKey};
use http::Method;
use serde_json::{json, Value};

const UUID: &str = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502";
const KEY: &str = "123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";

fn json_handler(
    f: impl Fn(serde_json::Map<String, Value>) -> Result<Value, Error> + Send + Sync + Clone + 'static,
) -> impl faas_core::Function {
    handler_fn(move |req: Request, _ctx: Context| {
        let f = f.clone();
        async move {
            let body = req.into_body().collect_bytes().await?;
            let params: serde_json::Map<String, Value> = serde_json::from_slice(&body)
                .map_err(|e| Error::application(format!("not JSON: {e}")))?;
            Ok::<_, Error>(serde_json::to_vec(&f(params)?).unwrap_or_default())
        }
    })
}

fn backend() -> Arc<MemoryInvoker> {
    let m = MemoryInvoker::new();
    m.register("whisk/echo", json_handler(|p| Ok(Value::Object(p))));
    m.register(
        "whisk/split",
        json_handler(|p| {
            let text = p.get("text").and_then(Value::as_str).unwrap_or_default();
            Ok(json!({ "words": text.split_whitespace().collect::<Vec<_>>() }))
        }),
    );
    m.register(
        "whisk/count",
        json_handler(|p| {
            Ok(json!({ "count": p.get("words").and_then(Value::as_array).map_or(0, Vec::len) }))
        }),
    );
    m.register("whisk/refuse", json_handler(|_| Err(Error::application("refused by the action"))));
    Arc::new(m)
}

/// A gateway over `backend` with `config` and the test's OpenWhisk key, on a loopback port:
/// its URL, and the sender that stops it (when dropped).
async fn serve_whisk(
    backend: Arc<MemoryInvoker>,
    config: faas_http::GatewayConfig,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let gateway = Gateway::builder(backend as Arc<dyn Backend>)
        .config(config)
        .whisk_key(WhiskKey::new(UUID, KEY, "guest"))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = rx.await;
    }));
    (base, tx)
}

struct Whisk {
    client: GatewayClient,
    auth: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Whisk {
    async fn start() -> Whisk {
        let config = faas_http::GatewayConfig {
            record_every_invocation: true,
            ..faas_http::GatewayConfig::default()
        };
        let (base, tx) = serve_whisk(backend(), config).await;
        let client = GatewayClient::new(&base).unwrap().with_timeout(Duration::from_secs(30));
        let auth = format!(
            "Basic {}",
            faas_core::queue::base64_encode(format!("{UUID}:{KEY}").as_bytes())
        );
        Whisk { client, auth, _shutdown: tx }
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        let r = self.raw(method, path, body, true).await;
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status.as_u16(), v)
    }

    async fn raw(&self, method: Method, path: &str, body: Value, auth: bool) -> Reply {
        let mut h = vec![("content-type".to_string(), "application/json".to_string())];
        if auth {
            h.push(("authorization".to_string(), self.auth.clone()));
        }
        let body = if body.is_null() { Vec::new() } else { serde_json::to_vec(&body).unwrap() };
        self.client
            .send(method, &format!("/api/v1/namespaces/_/{path}"), &h, body.into())
            .await
            .unwrap()
    }

    async fn action(&self, name: &str, image: &str, params: Value) {
        let body =
            json!({ "exec": { "kind": "blackbox", "image": image }, "parameters": kv(params) });
        let (s, v) = self.call(Method::PUT, &format!("actions/{name}"), body).await;
        assert_eq!(s, 200, "{v}");
    }

    /// Activations of `name` until `n` are listed (polled, bounded).
    async fn activations_of(&self, name: &str, n: usize) -> Vec<Value> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let (s, v) = self
                    .call(Method::GET, &format!("activations?name={name}&docs=true"), Value::Null)
                    .await;
                assert_eq!(s, 200);
                let list = v.as_array().cloned().unwrap_or_default();
                // An action's record shows its result once the API has read it.
                if list.len() >= n
                    && list.iter().all(|a| a["response"]["result"].get("statusCode").is_none())
                {
                    return list;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("activations listed in time")
    }
}

fn kv(v: Value) -> Value {
    Value::Array(
        v.as_object()
            .map(|m| m.iter().map(|(k, v)| json!({"key": k, "value": v})).collect())
            .unwrap_or_default(),
    )
}

fn annotation<'a>(a: &'a Value, key: &str) -> Option<&'a Value> {
    a["annotations"].as_array()?.iter().find(|kv| kv["key"] == key).map(|kv| &kv["value"])
}

/// The lecture's example: a trigger with default parameters, two rules to two actions,
/// a firing with an event, both actions' activations with the merged parameters; a
/// disabled rule's action no longer runs.
#[tokio::test]
async fn trigger_with_two_rules_fires_both_actions_with_merged_parameters() {
    let w = Whisk::start().await;
    w.action("welcome", "whisk/echo", json!({"greeting": "hello", "from": "action"})).await;
    w.action("audit", "whisk/echo", json!({})).await;
    let (s, v) = w
        .call(
            Method::PUT,
            "triggers/new-user",
            json!({"parameters": kv(json!({"source": "signup", "from": "trigger"}))}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for (rule, action) in [("r-welcome", "welcome"), ("r-audit", "audit")] {
        let (s, v) = w
            .call(
                Method::PUT,
                &format!("rules/{rule}"),
                json!({"trigger": "/_/new-user", "action": format!("/_/{action}")}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "active");
    }

    let (s, fired) =
        w.call(Method::POST, "triggers/new-user", json!({"user": "ann", "from": "event"})).await;
    assert_eq!(s, 202, "{fired}");
    let trigger_id = fired["activationId"].as_str().unwrap().to_string();

    for action in ["welcome", "audit"] {
        let list = w.activations_of(action, 1).await;
        let a = &list[0];
        assert_eq!(a["response"]["success"], true, "{a}");
        let result = &a["response"]["result"];
        assert_eq!(result["user"], "ann");
        assert_eq!(result["source"], "signup");
        // Event over trigger over action.
        assert_eq!(result["from"], "event");
        assert_eq!(a["cause"], trigger_id.as_str());
        assert_eq!(a["namespace"], "guest");
    }
    let welcome = &w.activations_of("welcome", 1).await[0];
    assert_eq!(welcome["response"]["result"]["greeting"], "hello");

    // The trigger's activation lists the rules it fired and their actions' activations.
    let (s, t) = w.call(Method::GET, &format!("activations/{trigger_id}"), Value::Null).await;
    assert_eq!(s, 200);
    let logs: Vec<Value> = t["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(logs.len(), 2);
    let mut rules: Vec<&str> = logs.iter().map(|l| l["rule"].as_str().unwrap()).collect();
    rules.sort();
    assert_eq!(rules, ["guest/r-audit", "guest/r-welcome"]);
    assert!(logs.iter().all(|l| l["activationId"].is_string() && l["success"] == true));

    // Disable one rule: only the other action runs on the next firing.
    let (s, v) = w.call(Method::POST, "rules/r-audit", json!({"status": "inactive"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "inactive");
    let (s, fired) = w.call(Method::POST, "triggers/new-user", json!({"user": "bob"})).await;
    assert_eq!(s, 202);
    let (_, t) = w
        .call(
            Method::GET,
            &format!("activations/{}", fired["activationId"].as_str().unwrap()),
            Value::Null,
        )
        .await;
    assert_eq!(t["logs"].as_array().unwrap().len(), 1);
    let welcome = w.activations_of("welcome", 2).await;
    assert_eq!(welcome[0]["response"]["result"]["user"], "bob");
    let audit = w.activations_of("audit", 1).await;
    assert_eq!(audit.len(), 1, "the disabled rule's action ran");

    // With both rules off, firing answers 204.
    w.call(Method::POST, "rules/r-welcome", json!({"status": "inactive"})).await;
    let r = w.raw(Method::POST, "triggers/new-user", json!({}), true).await;
    assert_eq!(r.status, 204);
}

/// A sequence of three actions composes their results; each component has its own
/// activation, caused by the sequence's, which lists them; a failing middle component
/// stops the chain with its error.
#[tokio::test]
async fn sequences_compose_and_stop_at_a_failure() {
    let w = Whisk::start().await;
    w.action("split", "whisk/split", json!({})).await;
    w.action("count", "whisk/count", json!({})).await;
    w.action("echo", "whisk/echo", json!({"tag": "echoed"})).await;
    w.action("refuse", "whisk/refuse", json!({})).await;
    let seq = |components: &[&str]| json!({"exec": {"kind": "sequence", "components": components.iter().map(|c| format!("/guest/{c}")).collect::<Vec<_>>()}});
    let (s, v) = w.call(Method::PUT, "actions/wc", seq(&["split", "count", "echo"])).await;
    assert_eq!(s, 200, "{v}");
    let (s, a) = w.call(Method::POST, "actions/wc?blocking=true", json!({"text": "a b c d"})).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["response"]["result"], json!({"count": 4, "tag": "echoed"}));
    assert_eq!(annotation(&a, "topmost"), Some(&json!(true)));
    assert_eq!(annotation(&a, "kind"), Some(&json!("sequence")));
    let ids = a["logs"].as_array().unwrap();
    assert_eq!(ids.len(), 3);
    let mut results = Vec::new();
    for id in ids {
        let (s, c) = w
            .call(Method::GET, &format!("activations/{}", id.as_str().unwrap()), Value::Null)
            .await;
        assert_eq!(s, 200);
        assert_eq!(annotation(&c, "causedBy"), Some(&json!("sequence")));
        assert_eq!(c["cause"], a["activationId"]);
        assert!(annotation(&c, "topmost").is_none());
        // Each component's record has its own answer as its result.
        assert_eq!(c["response"]["success"], true, "{c}");
        results.push(c["response"]["result"].clone());
    }
    assert_eq!(results[2], a["response"]["result"]);
    assert_eq!(results[1]["count"], 4, "{results:?}");
    assert!(results[0].get("count").is_none() && results[0] != results[1], "{results:?}");

    // result=true answers only the result.
    let (s, r) =
        w.call(Method::POST, "actions/wc?blocking=true&result=true", json!({"text": "x y"})).await;
    assert_eq!((s, r), (200, json!({"count": 2, "tag": "echoed"})));

    // A component changed, or gone, is seen by the next run.
    let body = json!({ "exec": { "kind": "blackbox", "image": "whisk/echo" },
                       "parameters": kv(json!({"tag": "changed"})) });
    let (s, v) = w.call(Method::PUT, "actions/echo?overwrite=true", body).await;
    assert_eq!(s, 200, "{v}");
    let (_, r) =
        w.call(Method::POST, "actions/wc?blocking=true&result=true", json!({"text": "x"})).await;
    assert_eq!(r, json!({"count": 1, "tag": "changed"}));
    let (s, _) = w.call(Method::DELETE, "actions/count", Value::Null).await;
    assert_eq!(s, 200);
    let (_, a) = w.call(Method::POST, "actions/wc?blocking=true", json!({"text": "x"})).await;
    assert_eq!(a["response"]["success"], false, "{a}");
    assert!(a["response"]["result"]["error"].as_str().unwrap().contains("does not exist"), "{a}");
    assert_eq!(a["logs"].as_array().unwrap().len(), 1, "{a}");
    w.action("count", "whisk/count", json!({})).await;

    // A failing middle component: the chain stops, its error is the sequence's.
    w.call(Method::PUT, "actions/broken", seq(&["split", "refuse", "count"])).await;
    let (s, a) = w.call(Method::POST, "actions/broken?blocking=true", json!({"text": "a"})).await;
    assert_eq!(s, 502, "{a}");
    assert_eq!(a["response"]["statusCode"], 1);
    assert_eq!(a["response"]["success"], false);
    assert!(a["response"]["result"]["error"].as_str().unwrap().contains("refused"));
    assert_eq!(a["logs"].as_array().unwrap().len(), 2);

    // Sequences are bounded and their components must exist.
    let (s, e) = w.call(Method::PUT, "actions/long", seq(&["echo"; 51])).await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = w.call(Method::PUT, "actions/ghost", seq(&["nope"])).await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("does not exist"));
}

/// Package defaults, then action's, then the caller's; a `final` action refuses callers'
/// values for its bound parameters; package bindings override their package's.
#[tokio::test]
async fn parameters_merge_through_packages_and_final_is_enforced() {
    let w = Whisk::start().await;
    let (s, v) = w
        .call(
            Method::PUT,
            "packages/utils",
            json!({"parameters": kv(json!({"a": "package", "b": "package", "c": "package"}))}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let body = json!({"exec": {"kind": "blackbox", "image": "whisk/echo"}, "parameters": kv(json!({"b": "action", "c": "action"}))});
    let (s, v) = w.call(Method::PUT, "actions/utils/echo", body).await;
    assert_eq!(s, 200, "{v}");
    let (s, r) = w
        .call(Method::POST, "actions/utils/echo?blocking=true&result=true", json!({"c": "caller"}))
        .await;
    assert_eq!((s, r), (200, json!({"a": "package", "b": "action", "c": "caller"})));

    // A binding's parameters come over its package's.
    let (s, v) = w.call(Method::PUT, "packages/mine", json!({"binding": {"namespace": "guest", "name": "utils"}, "parameters": kv(json!({"a": "binding"}))})).await;
    assert_eq!(s, 200, "{v}");
    let (s, r) =
        w.call(Method::POST, "actions/mine/echo?blocking=true&result=true", json!({})).await;
    assert_eq!((s, r), (200, json!({"a": "binding", "b": "action", "c": "action"})));

    // final: the caller may add parameters but not change bound ones.
    let body = json!({"exec": {"kind": "blackbox", "image": "whisk/echo"}, "parameters": kv(json!({"token": "bound"})), "annotations": kv(json!({"final": true}))});
    w.call(Method::PUT, "actions/locked", body).await;
    let (s, e) =
        w.call(Method::POST, "actions/locked?blocking=true", json!({"token": "mine"})).await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(
        e["error"],
        "Request defines parameters that are not allowed (e.g., reserved properties)."
    );
    assert!(e["code"].is_string());
    let (s, r) =
        w.call(Method::POST, "actions/locked?blocking=true&result=true", json!({"x": 1})).await;
    assert_eq!((s, r), (200, json!({"token": "bound", "x": 1})));
}

/// PUT without overwrite is 409 on an existing entity; limits are validated with 400s
/// naming the field; bodies over 1 MB are 413; errors are OpenWhisk's JSON; credentials
/// are required; GET, list, DELETE and the API description answer as OpenWhisk's.
#[tokio::test]
async fn crud_limits_errors_and_credentials() {
    let w = Whisk::start().await;
    w.action("echo", "whisk/echo", json!({})).await;
    let body = json!({"exec": {"kind": "blackbox", "image": "whisk/echo"}});
    let (s, e) = w.call(Method::PUT, "actions/echo", body.clone()).await;
    assert_eq!(s, 409, "{e}");
    assert!(e["error"].is_string() && e["code"].is_string());
    let (s, a) = w
        .call(Method::PUT, "actions/echo?overwrite=true", json!({"limits": {"timeout": 1000}}))
        .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["version"], "0.0.2");
    assert_eq!(a["limits"]["timeout"], 1000);
    assert_eq!(a["exec"]["image"], "whisk/echo");

    for (limits, field) in [
        (json!({"timeout": 50}), "limits.timeout"),
        (json!({"timeout": 300_001}), "limits.timeout"),
        (json!({"memory": 64}), "limits.memory"),
        (json!({"memory": 1024}), "limits.memory"),
        (json!({"logs": 11}), "limits.logs"),
    ] {
        let (s, e) = w
            .call(Method::PUT, "actions/bad", json!({"exec": body["exec"], "limits": limits}))
            .await;
        assert_eq!(s, 400, "{limits}: {e}");
        assert!(e["error"].as_str().unwrap().contains(field), "{e}");
    }
    let (s, e) = w.call(Method::PUT, "actions/noexec", json!({})).await;
    assert_eq!(s, 400, "{e}");

    let big = json!({"blob": "x".repeat(1024 * 1024 + 1)});
    let r = w.raw(Method::POST, "actions/echo?blocking=true", big, true).await;
    assert_eq!(r.status, 413, "{}", r.text());

    let (s, list) = w.call(Method::GET, "actions", Value::Null).await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (s, got) = w.call(Method::GET, "actions/echo", Value::Null).await;
    assert_eq!(
        (s, got["name"].clone(), got["namespace"].clone()),
        (200, json!("echo"), json!("guest"))
    );
    let (s, e) = w.call(Method::GET, "actions/nope", Value::Null).await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = w.call(Method::GET, "activations?limit=201", Value::Null).await;
    assert_eq!(s, 400, "{e}");

    // Non-blocking: 202 with the id; the record is readable once it ran.
    let (s, v) = w.call(Method::POST, "actions/echo", json!({"n": 1})).await;
    assert_eq!(s, 202, "{v}");
    let id = v["activationId"].as_str().unwrap().to_string();
    let rec = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (s, r) =
                w.call(Method::GET, &format!("activations/{id}/result"), Value::Null).await;
            if s == 200 && r["result"].get("n").is_some() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(rec["result"], json!({"n": 1}));
    assert_eq!(rec["statusCode"], 0);
    let (s, l) = w.call(Method::GET, &format!("activations/{id}/logs"), Value::Null).await;
    assert_eq!((s, l["logs"].is_array()), (200, true));
    let (_, full) = w.call(Method::GET, &format!("activations/{id}"), Value::Null).await;
    for field in [
        "activationId",
        "namespace",
        "name",
        "subject",
        "version",
        "start",
        "end",
        "duration",
        "logs",
        "annotations",
        "response",
    ] {
        assert!(full.get(field).is_some(), "{field} missing from {full}");
    }
    for key in ["path", "waitTime", "kind", "limits"] {
        assert!(annotation(&full, key).is_some(), "{key} missing from {full}");
    }
    assert_eq!(annotation(&full, "limits").unwrap()["timeout"], 1000);

    let (s, d) = w.call(Method::DELETE, "actions/echo", Value::Null).await;
    assert_eq!((s, d["name"].clone()), (200, json!("echo")));
    let (s, _) = w.call(Method::GET, "actions/echo", Value::Null).await;
    assert_eq!(s, 404);

    // Credentials.
    let r = w.raw(Method::GET, "actions", Value::Null, false).await;
    assert_eq!(r.status, 401);
    let r = w
        .client
        .send(
            Method::GET,
            "/api/v1/namespaces/other/actions",
            &[("authorization".into(), w.auth.clone())],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let r = w
        .client
        .send(
            Method::GET,
            "/api/v1/namespaces",
            &[("authorization".into(), w.auth.clone())],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), json!(["guest"]));
    let r = w.client.send(Method::GET, "/api/v1", &[], bytes::Bytes::new()).await.unwrap();
    let info: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(info["api_paths"], json!(["/api/v1"]));
    assert_eq!(info["limits"]["sequence_length"], 50);
}

/// With `record_every_invocation`, a call through the OpenFaaS route gets an activation
/// record too.
#[tokio::test]
async fn openfaas_invocations_are_recorded() {
    let w = Whisk::start().await;
    w.action("echo", "whisk/echo", json!({})).await;
    let r = w
        .client
        .send(Method::POST, "/function/echo.guest", &[], bytes::Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let call_id = r.headers.get("x-call-id").unwrap().to_str().unwrap().to_string();
    let rec = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (s, v) = w.call(Method::GET, &format!("activations/{call_id}"), Value::Null).await;
            if s == 200 {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(rec["name"], "echo");
    assert_eq!(rec["response"]["statusCode"], 0);
    assert_eq!(annotation(&rec, "path"), Some(&json!("guest/echo")));
}

/// An alarm feed (`/whisk.system/alarms/alarm`, as the clients' `feeds.create` invokes it)
/// fires its trigger on its cron schedule with its payload; paused or deleted, it stops.
#[tokio::test]
async fn alarm_feed_fires_its_trigger_until_deleted() {
    let w = Whisk::start().await;
    w.action("echo", "whisk/echo", json!({})).await;
    w.call(Method::PUT, "triggers/tick", json!({})).await;
    w.call(Method::PUT, "rules/on-tick", json!({"trigger": "tick", "action": "echo"})).await;
    let feed = |event: &str, extra: Value| {
        let mut body = json!({"lifecycleEvent": event, "triggerName": "/_/tick", "authKey": format!("{UUID}:{KEY}")});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let feed_path = "/api/v1/namespaces/whisk.system/actions/alarms/alarm?blocking=true";
    let send = |body: Value| {
        let h = vec![
            ("authorization".to_string(), w.auth.clone()),
            ("content-type".into(), "application/json".into()),
        ];
        let c = w.client.clone();
        async move {
            let r = c
                .send(Method::POST, feed_path, &h, serde_json::to_vec(&body).unwrap().into())
                .await
                .unwrap();
            (r.status.as_u16(), serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null))
        }
    };
    let (s, v) = send(feed("CREATE", json!({"cron": "nonsense"}))).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) =
        send(feed("CREATE", json!({"cron": "* * * * * *", "trigger_payload": {"from": "alarm"}})))
            .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["response"]["success"], true);
    let list = w.activations_of("echo", 2).await;
    assert!(list.iter().all(|a| a["response"]["result"]["from"] == "alarm"), "{list:?}");
    let (s, v) = send(feed("READ", json!({}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["response"]["result"]["config"]["cron"], "* * * * * *");

    // Deleting the trigger stops its alarm.
    let (s, _) = w.call(Method::DELETE, "triggers/tick", Value::Null).await;
    assert_eq!(s, 200);
    let (s, _) = send(feed("READ", json!({}))).await;
    assert_eq!(s, 404);
}

/// Firing a trigger is the webhook: a POST with the namespace's key fires it; without
/// the key, or with a wrong one, it is refused and nothing runs.
#[tokio::test]
async fn webhook_fires_with_auth_and_is_refused_without() {
    let w = Whisk::start().await;
    w.action("echo", "whisk/echo", json!({})).await;
    w.call(Method::PUT, "triggers/hook", json!({})).await;
    w.call(Method::PUT, "rules/on-hook", json!({"trigger": "hook", "action": "echo"})).await;
    let r = w.raw(Method::POST, "triggers/hook", json!({"n": 1}), false).await;
    assert_eq!(r.status, 401);
    let wrong =
        format!("Basic {}", faas_core::queue::base64_encode(format!("{UUID}:wrong").as_bytes()));
    let r = w
        .client
        .send(
            Method::POST,
            "/api/v1/namespaces/_/triggers/hook",
            &[("authorization".into(), wrong)],
            bytes::Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let (s, v) = w.call(Method::POST, "triggers/hook", json!({"n": 2})).await;
    assert_eq!(s, 202, "{v}");
    let list = w.activations_of("echo", 1).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["response"]["result"]["n"], 2);
}

/// The portal's routes with auth on: `/system/whisk/...` is the OpenWhisk API acting in the
/// key's namespace for the gateway's admin only (401 without the admin's credentials, the
/// OpenWhisk key is not enough), state changes from another site are refused, and a rule
/// disabled there stops its action; `/system/queue` shows a function's dead letters after
/// its async calls ran out of attempts.
#[tokio::test]
async fn portal_routes_reach_whisk_as_the_admin_and_show_the_queue() {
    use faas_http::BasicAuth;
    let m = backend();
    m.register(
        "down",
        handler_fn(|_req: Request, _ctx: Context| async move {
            Err::<Vec<u8>, _>(Error::unavailable("down for the test"))
        }),
    );
    let admin = BasicAuth::new("admin", "portal-admin-secret");
    let config = faas_http::GatewayConfig {
        auth: Some(admin.clone()),
        record_every_invocation: true,
        ..faas_http::GatewayConfig::default()
    };
    let (base, _tx) = serve_whisk(m, config).await;
    let c = GatewayClient::new(&base).unwrap().with_timeout(Duration::from_secs(30));
    let whisk_auth =
        format!("Basic {}", faas_core::queue::base64_encode(format!("{UUID}:{KEY}").as_bytes()));
    let json = ("content-type".to_string(), "application/json".to_string());
    let with = |h: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut v = vec![json.clone()];
        v.extend(h.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        v
    };
    let admin_h = admin.header_value();
    let send = |method: Method, path: String, headers: Vec<(String, String)>, body: Value| {
        let c = c.clone();
        async move {
            let body = if body.is_null() { Vec::new() } else { serde_json::to_vec(&body).unwrap() };
            let r = c.send(method, &path, &headers, body.into()).await.unwrap();
            (r.status.as_u16(), serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null))
        }
    };
    let api = |p: &str| format!("/api/v1/namespaces/_/{p}");
    let portal = |p: &str| format!("/system/whisk/namespaces/_/{p}");

    // Entities made with the OpenWhisk key.
    let key_h = with(&[("authorization", &whisk_auth)]);
    let put = |p: &str, body: Value| send(Method::PUT, api(p), key_h.clone(), body);
    assert_eq!(
        put("actions/hello", json!({"exec": {"kind": "blackbox", "image": "whisk/echo"}})).await.0,
        200
    );
    assert_eq!(put("triggers/ping", json!({})).await.0, 200);
    let rule = json!({"trigger": "/_/ping", "action": "/_/hello"});
    assert_eq!(put("rules/ping-hello", rule).await.0, 200);

    // The portal's route: not without the admin, not with the OpenWhisk key.
    for h in [with(&[]), key_h.clone()] {
        let (s, _) = send(Method::GET, portal("triggers"), h, Value::Null).await;
        assert_eq!(s, 401);
    }
    let admin_only = with(&[("authorization", &admin_h)]);
    let (s, list) = send(Method::GET, portal("rules"), admin_only.clone(), Value::Null).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list[0]["name"], "ping-hello");
    assert_eq!(list[0]["namespace"], "guest");
    assert_eq!(list[0]["status"], "active");

    // A page elsewhere cannot disable the rule through the admin's browser.
    let evil = with(&[("authorization", &admin_h), ("origin", "http://evil.example")]);
    let off = json!({"status": "inactive"});
    let (s, _) = send(Method::POST, portal("rules/ping-hello"), evil, off.clone()).await;
    assert_eq!(s, 403);
    // The portal itself (same origin) fires the trigger, then disables the rule.
    let own =
        with(&[("authorization", &admin_h), ("origin", &base), ("sec-fetch-site", "same-origin")]);
    let (s, fired) =
        send(Method::POST, portal("triggers/ping"), own.clone(), json!({"n": 1})).await;
    assert_eq!(s, 202, "{fired}");
    assert!(fired["activationId"].is_string());
    let (s, r) = send(Method::POST, portal("rules/ping-hello"), own.clone(), off).await;
    assert_eq!((s, &r["status"]), (200, &json!("inactive")), "{r}");
    let (s, _) = send(Method::POST, portal("triggers/ping"), own.clone(), json!({})).await;
    assert_eq!(s, 204, "no active rule: nothing fired");
    let (s, acts) =
        send(Method::GET, portal("activations?name=ping"), admin_only.clone(), Value::Null).await;
    assert_eq!(s, 200);
    assert_eq!(acts.as_array().map(Vec::len), Some(1), "{acts}");

    // The queue: async calls of a function that is down end in the dead letters.
    let spec = json!({"service": "down", "image": "down"});
    let (s, v) = send(Method::POST, "/system/functions".into(), admin_only.clone(), spec).await;
    assert!(s == 200 || s == 202, "{s} {v}");
    for _ in 0..2 {
        let r = c.send(Method::POST, "/async-function/down", &[], "x".into()).await.unwrap();
        assert_eq!(r.status, 202);
    }
    let (s, _) = send(Method::GET, "/system/queue".into(), with(&[]), Value::Null).await;
    assert_eq!(s, 401, "the queue's depth is the admin's");
    let depth = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (s, d) =
                send(Method::GET, "/system/queue".into(), admin_only.clone(), Value::Null).await;
            assert_eq!(s, 200, "{d}");
            if d["deadLetters"] == 2 {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("two dead letters within the retries");
    assert_eq!(depth["functions"]["down.openfaas-fn"]["deadLetters"], 2, "{depth}");
    assert_eq!(depth["waiting"], 0);
    assert_eq!(depth["perFunction"], true);
}

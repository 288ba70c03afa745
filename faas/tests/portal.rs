//! The portal in headless Chromium, driven over chromedriver's W3C WebDriver HTTP API:
//! deploy a function from the form, invoke it, see the status, headers, body and time; with
//! auth on, deploy a stack file, then open a function's page after traffic and see its
//! charts, activations and logs (a screenshot of the page is saved under `target/`).
//!
//! Needs the Debian packages `chromium` and `chromium-driver`. Without them the test fails
//! (it never skips); `scripts/test.sh` installs them.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use faas_core::prelude::*;
use faas_core::Backend;
use faas_http::{Gateway, GatewayConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

struct WebDriver {
    base: String,
    session: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl WebDriver {
    async fn call(
        http: &Client<HttpConnector, Full<Bytes>>,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> Value {
        let req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(60), http.request(req))
            .await
            .expect("webdriver answers in time")
            .expect("webdriver reachable");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let v = Self::call(&self.http, method, &url, body).await;
        if let Some(err) = v["value"].get("error") {
            panic!("webdriver {method} {path}: {err} {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})))
            .await;
        v[ELEMENT].as_str().expect("element id").to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd("POST", &format!("/element/{el}/clear"), Some(json!({}))).await;
        self.cmd("POST", &format!("/element/{el}/value"), Some(json!({"text": text}))).await;
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.cmd("POST", &format!("/element/{el}/click"), Some(json!({}))).await;
    }

    async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        self.cmd("GET", &format!("/element/{el}/text"), None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Makes the browser send `Authorization: value` with every request, as it does once
    /// its login prompt was answered.
    async fn send_authorization(&self, value: &str) {
        self.cmd("POST", "/goog/cdp/execute", Some(json!({"cmd": "Network.enable", "params": {}})))
            .await;
        let headers = json!({"headers": {"Authorization": value}});
        let params = json!({"cmd": "Network.setExtraHTTPHeaders", "params": headers});
        self.cmd("POST", "/goog/cdp/execute", Some(params)).await;
    }

    /// Runs `script` (a function body) in the page and answers what it returns.
    async fn script(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    /// Polls until `script` returns true, at most 30 s.
    async fn wait_script(&self, script: &str) {
        let r = tokio::time::timeout(Duration::from_secs(30), async {
            while self.script(script).await != Value::Bool(true) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(r.is_ok(), "never true: {script}");
    }

    /// Polls until `css`'s text satisfies `ok`, at most 30 s.
    async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let r = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let t = self.text(css).await;
                if ok(&t) {
                    return t;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        match r {
            Ok(t) => t,
            Err(_) => {
                panic!("{css} never showed the expected text; now {:?}", self.text(css).await)
            }
        }
    }
}

/// A gateway on the process backend (with `faas watchdog` as the watchdog) served on a
/// loopback port, and a headless Chromium session driven by chromedriver.
struct Harness {
    wd: WebDriver,
    gw_url: String,
    invoker: Arc<dyn Backend>,
    state: std::path::PathBuf,
    driver_proc: tokio::process::Child,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Harness {
    async fn start(tag: &str, config: GatewayConfig) -> Harness {
        Self::start_with(tag, config, None).await
    }

    /// As [`Harness::start`], the OpenWhisk API accepting only `whisk_key` when given.
    async fn start_with(
        tag: &str,
        config: GatewayConfig,
        whisk_key: Option<faas_http::WhiskKey>,
    ) -> Harness {
        // A missing browser is a failure, never a skip: scripts/test.sh installs both.
        let (Some(chromium), Some(driver)) = (
            find_program(&["chromium", "chromium-browser", "google-chrome"]),
            find_program(&["chromedriver"]),
        ) else {
            panic!(
                "chromium or chromedriver is missing: apt-get install -y chromium \
                 chromium-driver (scripts/test.sh installs them)"
            );
        };
        let state = std::env::temp_dir().join(format!("faas-portal-{tag}-{}", std::process::id()));
        let invoker = faas_watchdog::process::ProcessInvoker::builder()
            .watchdog_command(env!("CARGO_BIN_EXE_faas"), ["watchdog"])
            .state_dir(&state)
            .build()
            .unwrap();
        let invoker: Arc<dyn Backend> = Arc::new(invoker);
        let mut builder = Gateway::builder(invoker.clone()).config(config);
        if let Some(key) = whisk_key {
            builder = builder.whisk_key(key);
        }
        let gateway = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw_url = format!("http://{}", listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
            let _ = stop_rx.await;
        }));

        // chromedriver on a free loopback port.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver_proc = tokio::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http: Client<HttpConnector, Full<Bytes>> =
            Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let req = http::Request::get(format!("{base}/status"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                if let Ok(r) = http.request(req).await {
                    if r.status() == 200 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("chromedriver ready");

        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--disable-dev-shm-usage",
                         "--window-size=1200,900"]
            }
        }}});
        let v = WebDriver::call(&http, "POST", &format!("{base}/session"), Some(caps)).await;
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        let wd = WebDriver { base, session, http };
        Harness { wd, gw_url, invoker, state, driver_proc, stop_tx: Some(stop_tx) }
    }

    async fn stop(mut self, functions: &[&str]) {
        let url = format!("{}/session/{}", self.wd.base, self.wd.session);
        let _ = WebDriver::call(&self.wd.http, "DELETE", &url, None).await;
        let _ = self.driver_proc.kill().await;
        for f in functions {
            let _ = self.invoker.remove(&(*f).into()).await;
        }
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

impl Drop for Harness {
    /// A test that panicked never reached [`Harness::stop`]: end the browser session anyway
    /// (chromedriver is killed on drop, but the Chromium it started would outlive it), with
    /// one blocking request since no runtime can be awaited here.
    fn drop(&mut self) {
        if self.stop_tx.is_none() {
            return;
        }
        use std::io::{Read, Write};
        let Some(addr) = self.wd.base.strip_prefix("http://") else { return };
        if let Ok(mut conn) = std::net::TcpStream::connect(addr) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n",
                self.wd.session
            );
            if conn.write_all(req.as_bytes()).is_ok() {
                let _ = conn.read_to_end(&mut Vec::new());
            }
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_deploys_and_invokes_in_chromium() {
    let h = Harness::start("deploy", GatewayConfig::default()).await;
    let (wd, gw_url) = (&h.wd, &h.gw_url);
    wd.cmd("POST", "/url", Some(json!({"url": format!("{gw_url}/ui/")}))).await;
    wd.wait_text("#fn-rows", |t| t.contains("No functions yet")).await;

    // Deploy from the form.
    wd.type_into("#deploy-name", "shout").await;
    wd.type_into("#deploy-image", "faas-rs/shout:latest").await;
    wd.type_into("#deploy-fprocess", "tr a-z A-Z").await;
    wd.click("#deploy-btn").await;
    wd.wait_text("#deploy-status", |t| t.contains("Deployed shout")).await;
    let rows = wd.wait_text("#fn-rows", |t| t.contains("shout")).await;
    assert!(rows.contains("faas-rs/shout:latest"), "{rows}");

    // Invoke it with a body and see status, headers, body and time.
    wd.type_into("#invoke-body", "hello portal").await;
    wd.click("#invoke-btn").await;
    let body = wd.wait_text("#result-body", |t| !t.is_empty()).await;
    assert_eq!(body.trim(), "HELLO PORTAL");
    assert!(wd.text("#result-status").await.starts_with("200"));
    assert!(wd.text("#result-headers").await.contains("x-call-id"));
    assert!(wd.text("#result-time").await.ends_with("ms"));
    // The table shows the invocation count.
    wd.click("#refresh-btn").await;
    wd.wait_script(
        "const c = document.querySelector('#fn-rows tr[data-name=\"shout\"] td:nth-child(5)'); \
         return !!c && c.textContent === '1'",
    )
    .await;

    h.stop(&["shout"]).await;
}

/// Where a screenshot for people to look at goes: the target directory.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// With auth on: a stack file pasted into the portal deploys (a bad one is refused with the
/// API's message); after traffic, the function page shows points in every chart, the calls
/// in the activations list with their outcomes, and a line the function wrote in the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_page_shows_charts_activations_and_logs_with_auth() {
    let creds = faas_http::BasicAuth::new("admin", "portal secret");
    let config = GatewayConfig {
        auth: Some(creds.clone()),
        record_every_invocation: true,
        ..Default::default()
    };
    let h = Harness::start("page", config).await;
    let (wd, gw_url) = (&h.wd, &h.gw_url);

    // The portal is behind the gateway's basic auth; the browser sends the credentials
    // with every request, as after answering its login prompt.
    let http: Client<HttpConnector, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let get = |path: &str| {
        http::Request::get(format!("{gw_url}{path}")).body(Full::new(Bytes::new())).unwrap()
    };
    assert_eq!(http.request(get("/ui/")).await.unwrap().status(), 401);
    wd.send_authorization(&creds.header_value()).await;
    wd.cmd("POST", "/url", Some(json!({"url": format!("{gw_url}/ui/")}))).await;
    wd.wait_text("#fn-rows", |t| t.contains("No functions yet")).await;

    // A stack file with a mistake is refused with the field the API names.
    let bad = "functions:\n  talker:\n    image: faas-rs/talker:latest\n    limits:\n      memory: lots\n";
    wd.type_into("#stack-yaml", bad).await;
    wd.click("#stack-btn").await;
    let status = wd.wait_text("#stack-status", |t| t.contains("refused")).await;
    assert!(status.contains("functions.talker.limits.memory"), "{status}");
    // The function logs each body on stderr and fails (exit 3) on "fail".
    let good = "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  talker:\n    \
                image: faas-rs/talker:latest\n    fprocess: sh -c 'read -r x; echo \"portal log \
                line $x\" >&2; [ \"$x\" != fail ] || exit 3; echo \"$x\" | tr a-z A-Z'\n    \
                labels:\n      com.openfaas.scale.min: 1\n      team: portal\n    \
                limits:\n      memory: 128Mi\n";
    wd.type_into("#stack-yaml", good).await;
    wd.click("#stack-btn").await;
    wd.wait_text("#stack-status", |t| t.contains("Deployed talker")).await;

    // Traffic: three good calls and a failing one.
    let call = |body: &str| {
        http::Request::post(format!("{gw_url}/function/talker"))
            .body(Full::new(Bytes::from(format!("{body}\n"))))
            .unwrap()
    };
    for body in ["one", "two", "hello"] {
        let r = http.request(call(body)).await.unwrap();
        assert_eq!(r.status(), 200, "{body}");
    }
    let r = http.request(call("fail")).await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());

    // The overview links to the function page (and draws a sparkline of the traffic).
    wd.click("#refresh-btn").await;
    wd.wait_text("#fn-rows", |t| t.contains("talker")).await;
    wd.wait_script("return document.querySelectorAll('#fn-rows svg.sparkline').length === 1").await;
    wd.click("#fn-rows a[href='#/fn/talker.openfaas-fn']").await;
    wd.wait_text("#fn-title", |t| t == "talker.openfaas-fn").await;
    let spec = wd.wait_text("#fn-spec", |t| t.contains("faas-rs/talker:latest")).await;
    assert!(spec.contains("team=portal"), "{spec}");
    assert!(spec.contains("min=1"), "{spec}");
    assert!(spec.contains("memory 128Mi"), "{spec}");

    // Every chart has points; rate, errors and latency show the traffic.
    for chart in ["rate", "errors", "latency", "replicas"] {
        wd.wait_script(&format!(
            "const s = document.querySelector('#chart-{chart} svg'); \
             return !!s && Number(s.dataset.points) > 0 && s.querySelectorAll('circle').length > 0"
        ))
        .await;
    }
    for chart in ["rate", "errors", "latency", "replicas"] {
        wd.wait_script(&format!(
            "const s = document.querySelector('#chart-{chart} svg'); \
             return !!s && Number(s.dataset.max) > 0"
        ))
        .await;
    }

    // The activations list shows the four calls with their outcomes.
    let acts = wd
        .wait_text("#fn-activations", |t| {
            t.lines().filter(|l| l.contains("success") && l.contains(" 200 ")).count() == 3
                && t.contains("exit code 3")
        })
        .await;
    assert_eq!(acts.lines().count(), 4, "{acts}");
    // The failed call: the process exited with 3, which OpenWhisk calls a developer error.
    assert!(acts.lines().any(|l| l.contains("developer error") && l.contains("exit code 3")));
    // A record opens from the keyboard.
    let first = wd.find("#fn-activations button").await;
    wd.cmd("POST", &format!("/element/{first}/value"), Some(json!({"text": "\u{E007}"}))).await;
    wd.wait_text("#fn-record", |t| t.contains("activationId")).await;

    // The logs panel follows the function's log.
    wd.wait_text("#fn-logs", |t| t.contains("portal log line hello")).await;

    // The whole page, not only the window.
    wd.script("window.scrollTo(0, 0); document.getElementById('fn-record').hidden = true;").await;
    let params = json!({"format": "png", "captureBeyondViewport": true});
    let shot = wd
        .cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Page.captureScreenshot", "params": params})),
        )
        .await;
    let png = faas_core::queue::base64_decode(shot["data"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = target_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("portal-function-page.png"), png).unwrap();

    h.stop(&["talker"]).await;
}

/// With auth on and an OpenWhisk key the page never sees: after traffic, the overview shows
/// the async queue's dead letters (in all and on the function's row) and the replicas
/// ready of desired; the OpenWhisk section lists the trigger, rule and sequence, fires the
/// trigger from the keyboard (its rule's action runs), disables the rule (a second firing
/// runs nothing) and shows a sequence's activations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_shows_the_queue_and_openwhisk_entities_with_auth() {
    const UUID: &str = "7c1b7f3e-2f36-4d0e-9f43-3b8e8c1b2a10";
    const KEY: &str = "portalKey0123456789portalKey0123456789portalKey0123456789abcdef";
    let creds = faas_http::BasicAuth::new("admin", "portal secret");
    let config = GatewayConfig { auth: Some(creds.clone()), ..Default::default() };
    let key = faas_http::WhiskKey::new(UUID, KEY, "guest");
    let h = Harness::start_with("whisk", config, Some(key)).await;
    let (wd, gw_url) = (&h.wd, &h.gw_url);

    let http: Client<HttpConnector, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let send = |method: &str, path: &str, auth: String, body: Value| {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{gw_url}{path}"))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(if body.is_null() {
                String::new()
            } else {
                body.to_string()
            })))
            .unwrap();
        let http = http.clone();
        async move {
            let r = http.request(req).await.unwrap();
            let status = r.status().as_u16();
            let bytes = r.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    let whisk =
        format!("Basic {}", faas_core::queue::base64_encode(format!("{UUID}:{KEY}").as_bytes()));
    let admin = creds.header_value();

    // OpenWhisk entities, made with the key: an action echoing its parameters, a sequence
    // of it twice, a trigger and a rule from the trigger to the action; the sequence runs once.
    let ws = |p: &str| format!("/api/v1/namespaces/_/{p}");
    let echo = json!({"exec": {"kind": "blackbox", "image": "faas-rs/greet"},
                      "annotations": [{"key": "fprocess", "value": "cat"}]});
    for (path, body) in [
        ("actions/greet", echo),
        (
            "actions/greet-twice",
            json!({"exec": {"kind": "sequence", "components": ["/_/greet", "/_/greet"]}}),
        ),
        ("triggers/ping", json!({"parameters": [{"key": "source", "value": "portal"}]})),
        ("rules/ping-greet", json!({"trigger": "/_/ping", "action": "/_/greet"})),
    ] {
        let (s, b) = send("PUT", &ws(path), whisk.clone(), body).await;
        assert_eq!(s, 200, "{path}: {b}");
    }
    let (s, b) =
        send("POST", &ws("actions/greet-twice?blocking=true"), whisk.clone(), json!({"n": 1}))
            .await;
    assert_eq!(s, 200, "{b}");

    // An OpenFaaS function that always fails, called async twice: both calls end in the
    // dead letters after the worker's retries.
    let spec = json!({"service": "flaky", "image": "faas-rs/flaky:latest", "envProcess": "sh -c 'exit 1'"});
    let (s, b) = send("POST", "/system/functions", admin.clone(), spec).await;
    assert!(s == 200 || s == 202, "{s} {b}");
    for _ in 0..2 {
        let (s, b) = send("POST", "/async-function/flaky", String::new(), json!("x")).await;
        assert_eq!(s, 202, "{b}");
    }

    // The browser has the admin's credentials (as after its login prompt) and nothing else.
    wd.send_authorization(&admin).await;
    wd.cmd("POST", "/url", Some(json!({"url": format!("{gw_url}/ui/")}))).await;
    wd.wait_text("#fn-rows", |t| t.contains("flaky")).await;

    // The queue: its dead letters in the summary and on the function's row (the page
    // refreshes the overview while polled).
    wd.wait_script(
        "refresh(); const s = document.getElementById('queue-summary'); \
         const q = document.querySelector('#fn-rows tr[data-name=\"flaky\"] td.queue'); \
         return s.dataset.dead === '2' && !!q && q.dataset.dead === '2' && q.dataset.waiting === '0'",
    )
    .await;
    let summary = wd.text("#queue-summary").await;
    assert!(summary.contains("0 waiting") && summary.contains("2 dead letters"), "{summary}");
    let row = wd.text("#fn-rows tr[data-name=\"flaky\"]").await;
    assert!(row.contains("0 / 2"), "queued / dead: {row}");
    // Desired vs ready replicas: the function scaled to one, ready.
    wd.wait_script(
        "refresh(); const r = document.querySelector('#fn-rows tr[data-name=\"flaky\"] td.replicas'); \
         return !!r && r.textContent === '1/1'",
    )
    .await;

    // The OpenWhisk section lists the entities of the key's namespace.
    wd.wait_text("#wsk-triggers", |t| t.contains("ping") && t.contains("source=\"portal\"")).await;
    wd.wait_text("#wsk-rules", |t| t.contains("ping-greet") && t.contains("active")).await;
    let seq = wd.wait_text("#wsk-sequences", |t| t.contains("greet-twice")).await;
    assert!(seq.contains("/guest/greet → /guest/greet") || seq.contains("greet → "), "{seq}");

    // Fire the trigger from the keyboard with parameters.
    wd.type_into("#wsk-fire-params", "{\"who\": \"keyboard\"}").await;
    let fire = wd.find("#wsk-triggers tr[data-name=\"ping\"] button").await;
    wd.cmd("POST", &format!("/element/{fire}/value"), Some(json!({"text": "\u{E007}"}))).await;
    let fired = wd.wait_text("#wsk-fire-status", |t| t.contains("Fired ping: activation")).await;
    let trigger_id = fired.rsplit(' ').next().unwrap().to_string();
    // The rule's action ran with the trigger's and the firing's parameters.
    let greet = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (s, b) = send(
                "GET",
                &ws("activations?name=greet&docs=true&limit=50"),
                whisk.clone(),
                Value::Null,
            )
            .await;
            assert_eq!(s, 200, "{b}");
            let list: Vec<Value> = serde_json::from_str(&b).unwrap();
            if let Some(a) = list.into_iter().find(|a| a["cause"] == trigger_id.as_str()) {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the rule's action ran");
    assert_eq!(greet["response"]["result"]["who"], "keyboard", "{greet}");
    assert_eq!(greet["response"]["result"]["source"], "portal", "{greet}");
    // The activations list shows the firing.
    wd.wait_script(&format!(
        "loadWhiskActivations(null); return [...document.querySelectorAll('#wsk-activations button')]\
         .some((b) => '{trigger_id}'.startsWith(b.textContent))"
    ))
    .await;

    // Disable the rule from the page: the table says so, and a firing runs nothing.
    wd.click("#wsk-rules tr[data-name=\"ping-greet\"] button").await;
    wd.wait_text("#wsk-rule-status", |t| t.contains("ping-greet is now inactive")).await;
    let rules = wd.wait_text("#wsk-rules", |t| t.contains("inactive")).await;
    assert!(rules.contains("Enable"), "{rules}");
    let (_, rule) = send("GET", &ws("rules/ping-greet"), whisk.clone(), Value::Null).await;
    assert!(rule.contains("\"inactive\""), "{rule}");
    wd.click("#wsk-triggers tr[data-name=\"ping\"] button").await;
    wd.wait_text("#wsk-fire-status", |t| t.contains("no active rule")).await;

    // A sequence's activations, with their outcome; a record opens.
    wd.click("#wsk-sequences tr[data-name=\"greet-twice\"] button").await;
    wd.wait_text("#wsk-act-of", |t| t == "of greet-twice").await;
    let acts = wd.wait_text("#wsk-activations", |t| t.contains("greet-twice")).await;
    assert!(acts.lines().all(|l| l.contains("greet-twice") && l.contains("success")), "{acts}");
    wd.click("#wsk-activations button").await;
    wd.wait_text("#wsk-record", |t| t.contains("\"components\"") || t.contains("greet-twice"))
        .await;

    h.stop(&["flaky"]).await;
}

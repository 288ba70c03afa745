//! The portal in headless Chromium, driven over chromedriver's W3C WebDriver HTTP API:
//! deploy a function from the form, invoke it, see the status, headers, body and time.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_deploys_and_invokes_in_chromium() {
    // A missing browser is a failure, never a skip: scripts/test.sh installs both.
    let (Some(chromium), Some(driver)) = (
        find_program(&["chromium", "chromium-browser", "google-chrome"]),
        find_program(&["chromedriver"]),
    ) else {
        panic!(
            "chromium or chromedriver is missing: apt-get install -y chromium chromium-driver \
             (scripts/test.sh installs them)"
        );
    };

    // The gateway on the process backend, with `faas watchdog` as the watchdog.
    let state = std::env::temp_dir().join(format!("faas-portal-test-{}", std::process::id()));
    let invoker = faas_watchdog::process::ProcessInvoker::builder()
        .watchdog_command(env!("CARGO_BIN_EXE_faas"), ["watchdog"])
        .state_dir(&state)
        .build()
        .unwrap();
    let invoker: Arc<dyn Backend> = Arc::new(invoker);
    let gateway = Gateway::builder(invoker.clone()).config(GatewayConfig::default()).build();
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
    let mut driver_proc = tokio::process::Command::new(&driver)
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
            let req =
                http::Request::get(format!("{base}/status")).body(Full::new(Bytes::new())).unwrap();
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
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-dev-shm-usage", "--window-size=1200,900"]
        }
    }}});
    let v = WebDriver::call(&http, "POST", &format!("{base}/session"), Some(caps)).await;
    let session =
        v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
    let wd = WebDriver { base: base.clone(), session, http: http.clone() };

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
    wd.wait_text("#fn-rows", |t| {
        t.lines().any(|l| l.contains("shout") && l.trim_end().ends_with('1'))
    })
    .await;

    let _ = WebDriver::call(&http, "DELETE", &format!("{base}/session/{}", wd.session), None).await;
    let _ = driver_proc.kill().await;
    let _ = invoker.remove(&"shout".into()).await;
    let _ = stop_tx.send(());
    let _ = std::fs::remove_dir_all(&state);
}

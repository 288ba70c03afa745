//! How long the portal's overview takes to render N functions (default 1,000) in headless
//! Chromium: a benchmark, not a test (it prints figures and judges nothing).
//!
//! `portal-render [N] [ROUNDS]`: a gateway on the in-memory backend with N functions, each
//! invoked once (so each row has a sparkline), served on a loopback port; chromedriver and
//! Chromium (Debian's `chromium` and `chromium-driver`) open `/ui/`. Printed: the time from
//! navigation until the table has its N rows and the rows in the window their sparklines
//! (the page draws a row's sparkline as the row comes near the window), and for ROUNDS
//! (default 10) further runs of the page's own `refresh()` (list, history and queue,
//! rebuild the table, then frames until the first row's sparkline is drawn, so that layout
//! and paint are in), the median and the slowest, and the median of the two API calls
//! alone (`/system/functions` and `/system/history`). See BENCHMARKS.md.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use faas_core::prelude::*;
use faas_core::{handler_fn, Backend, Context, Error, FunctionSpec, MemoryInvoker, Request};
use faas_http::{Gateway, GatewayConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde_json::{json, Value};

type Http = Client<HttpConnector, Full<Bytes>>;

async fn send(http: &Http, method: &str, url: &str, body: Option<Value>) -> Value {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
        .expect("request");
    let resp = http.request(req).await.expect("chromedriver answers");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn program(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(n, rounds))
}

async fn run(n: usize, rounds: usize) -> std::io::Result<()> {
    let (Some(chromium), Some(driver)) =
        (program(&["chromium", "chromium-browser", "google-chrome"]), program(&["chromedriver"]))
    else {
        return Err(std::io::Error::other("needs chromium and chromedriver on PATH"));
    };
    // Room for a replica of each function (the default node cap is 8 per CPU).
    let limits = faas_core::spec::ReplicaLimits::new(1, u32::try_from(n).unwrap_or(u32::MAX));
    let invoker = MemoryInvoker::builder().replica_limits(limits).build();
    invoker.register("ok", handler_fn(|_r: Request, _c: Context| async { Ok::<_, Error>("ok") }));
    for i in 0..n {
        let spec = FunctionSpec::new(format!("fn-{i:04}"), "ok");
        invoker.deploy(spec).await.map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    let invoker: Arc<dyn Backend> = Arc::new(invoker);
    let gateway = Gateway::builder(invoker).config(GatewayConfig::default()).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gw = format!("http://{}", listener.local_addr()?);
    tokio::spawn(faas_http::serve(listener, gateway.service(), std::future::pending()));
    let http: Http = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    for i in 0..n {
        let req = http::Request::post(format!("{gw}/function/fn-{i:04}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let r = http.request(req).await.map_err(std::io::Error::other)?;
        let _ = r.into_body().collect().await;
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut chromedriver = tokio::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut session = Value::Null;
    for _ in 0..300 {
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": chromium.to_string_lossy(),
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,900"]}}}});
        let req = http::Request::post(format!("{base}/session"))
            .body(Full::new(Bytes::from(caps.to_string())))
            .expect("request");
        if let Ok(resp) = http.request(req).await {
            let bytes = resp.into_body().collect().await.map_err(std::io::Error::other)?;
            session = serde_json::from_slice(&bytes.to_bytes()).unwrap_or(Value::Null);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = session["value"]["sessionId"]
        .as_str()
        .ok_or_else(|| std::io::Error::other(format!("no session: {session}")))?
        .to_string();
    let s = format!("{base}/session/{id}");
    send(&http, "POST", &format!("{s}/timeouts"), Some(json!({"script": 120_000}))).await;
    send(&http, "POST", &format!("{s}/url"), Some(json!({"url": format!("{gw}/ui/")}))).await;
    let first = send(
        &http,
        "POST",
        &format!("{s}/execute/async"),
        Some(json!({"args": [n], "script": "
            const [n, done] = arguments;
            // Every row in, and the sparklines of the rows in the window drawn.
            const onScreen = () => {
                const rows = document.querySelectorAll('#fn-rows tr');
                if (rows.length < n) return false;
                const top = rows[0].getBoundingClientRect().top;
                const h = rows[0].getBoundingClientRect().height || 1;
                const first = Math.max(0, Math.floor(-top / h));
                const last = Math.min(n - 1, Math.ceil((innerHeight - top) / h));
                for (let i = first; i <= last; i++) {
                    if (!rows[i].querySelector('svg.sparkline')) return false;
                }
                return true;
            };
            const check = () => onScreen()
                ? requestAnimationFrame(() => done(performance.now()))
                : setTimeout(check, 5);
            check();"})),
    )
    .await;
    let rounds_ms = send(
        &http,
        "POST",
        &format!("{s}/execute/async"),
        Some(json!({"args": [rounds], "script": "
            const [rounds, done] = arguments;
            (async () => {
                const times = [], fetches = [];
                for (let i = 0; i < rounds; i++) {
                    let t = performance.now();
                    await refresh();
                    document.body.offsetHeight;
                    while (!document.querySelector('#fn-rows tr:first-child svg.sparkline')) {
                        await new Promise((r) => requestAnimationFrame(() => r()));
                    }
                    await new Promise((r) => requestAnimationFrame(() => r()));
                    times.push(performance.now() - t);
                    t = performance.now();
                    await api('GET', '/system/functions');
                    await sparklines();
                    fetches.push(performance.now() - t);
                }
                done({times, fetches});
            })();"})),
    )
    .await;
    send(&http, "DELETE", &s, None).await;
    let _ = chromedriver.kill().await;

    let series = |key: &str| -> Vec<f64> {
        rounds_ms["value"][key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let (mut times, mut fetches) = (series("times"), series("fetches"));
    if times.is_empty() || fetches.is_empty() {
        return Err(std::io::Error::other(format!("no timings: {rounds_ms}")));
    }
    let median = faas_benches::pct(&mut times, 0.5);
    let slowest = faas_benches::pct(&mut times, 1.0);
    let fetch = faas_benches::pct(&mut fetches, 0.5);
    println!("functions: {n}");
    println!(
        "first render (navigation to {n} rows with sparklines, painted): {:.0} ms",
        first["value"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "refresh (list + history + table + frame), {rounds} rounds: median {median:.0} ms, \
         slowest {slowest:.0} ms; of which the two API calls alone: median {fetch:.0} ms"
    );
    Ok(())
}

//! Helpers for the watchdog's tests: spawn the binary on a free 127.0.0.1 port, capture its
//! output, and make HTTP requests over real sockets.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const WATCHDOG: &str = env!("CARGO_BIN_EXE_faas-watchdog");
pub const FIXTURE: &str = env!("CARGO_BIN_EXE_faas-fixture");

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// One request, bounded by 60 s.
pub async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body.into())).unwrap();
    let fut = async {
        let resp = client().request(req).await.expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("reading body").to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    };
    tokio::time::timeout(Duration::from_secs(60), fut).await.expect("request timed out")
}

pub async fn get(url: &str) -> Reply {
    request(Method::GET, url, &[], Bytes::new()).await
}

pub async fn post(url: &str, body: impl Into<Bytes>) -> Reply {
    request(Method::POST, url, &[], body).await
}

/// A running `faas-watchdog` binary with captured output.
pub struct Running {
    pub child: Child,
    pub port: u16,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Waits (bounded) until a captured output line satisfies `pred`.
    pub async fn wait_for_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let r = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                    return l.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match r {
            Ok(l) => l,
            Err(_) => panic!("no log line {what}; got {:#?}", self.lines.lock().unwrap()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }
}

/// Spawns the watchdog with `vars` (plus a free `port` and `bind_address=127.0.0.1`) and
/// waits until `/_/health` answers `expect_health` (200 usually).
pub async fn spawn_watchdog(vars: &[(&str, &str)]) -> Running {
    spawn_watchdog_expect(vars, Some(StatusCode::OK)).await
}

pub async fn spawn_watchdog_expect(vars: &[(&str, &str)], health: Option<StatusCode>) -> Running {
    let port = free_port();
    let mut cmd = Command::new(WATCHDOG);
    cmd.env("port", port.to_string())
        .env("bind_address", "127.0.0.1")
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn faas-watchdog");
    let lines = Arc::new(Mutex::new(Vec::new()));
    for r in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(r).lines();
            while let Ok(Some(l)) = r.next_line().await {
                lines.lock().unwrap().push(l);
            }
        });
    }
    let running = Running { child, port, lines };
    if let Some(want) = health {
        let url = running.url("/_/health");
        let ok = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                if let Ok(r) = client().request(req).await {
                    if r.status() == want {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if ok.is_err() {
            panic!("watchdog never became healthy; output: {:#?}", running.lines.lock().unwrap());
        }
    }
    running
}

/// Whether a process is gone (no /proc entry, or a zombie waiting to be reaped).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => {
            // The state follows the parenthesised command name.
            let state = s.rsplit_once(')').map(|(_, r)| r.trim_start()).unwrap_or("");
            state.starts_with('Z') || state.starts_with('X')
        }
    }
}

/// Waits (bounded) until `pid` is gone.
pub async fn wait_gone(pid: u32, bound: Duration) -> bool {
    tokio::time::timeout(bound, async {
        while !process_gone(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}

/// A fresh temporary directory under the system temp dir.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "faas-watchdog-test-{tag}-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64,
    );
    h.finish()
}

/// A POST whose response may fail mid-body: `Err` with the error text in that case.
pub async fn try_post(url: &str, body: impl Into<Bytes>) -> Result<Reply, String> {
    let req = Request::post(url).body(Full::new(body.into())).unwrap();
    let fut = async {
        let resp = client().request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    };
    tokio::time::timeout(Duration::from_secs(60), fut).await.expect("request timed out")
}

/// Polls `f` every 20 ms until it gives `Some`, failing after `bound`.
pub async fn eventually<T, F, Fut>(bound: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(bound, async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {bound:?} waiting for {what}"))
}

/// A process backend running this crate's watchdog, its state in a fresh directory named
/// after `tag`, stopping replicas within 2 s.
pub fn invoker_builder(tag: &str) -> faas_watchdog::process::ProcessInvokerBuilder {
    faas_watchdog::process::ProcessInvoker::builder()
        .watchdog_command(WATCHDOG, Vec::<String>::new())
        .state_dir(temp_dir(tag))
        .stop_grace(Duration::from_secs(2))
}

//! Nothing accepted is lost across a restart of `faas up` (real processes, real sockets):
//!
//! - 1,000 async calls with `X-Callback-Url` to a callback server of the test, `kill -9` of
//!   `faas up` once about half the callbacks arrived, a restart on the same state
//!   directory: every call's callback arrives (duplicates allowed, counted and printed);
//! - the same with SIGTERM: every callback exactly once;
//! - a function and a secret deployed through the API are there after a restart.
//! - `--queue memory` still serves async calls.
//! - `kill -9` of `faas up` while a fork-mode call runs leaves no function process running.
//!
//! Every wait is a bounded poll. Each test runs with its own HOME and state directory.

use std::collections::HashMap;
use std::convert::Infallible;
mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, Sandbox, Up};
use faas_core::FunctionSpec;
use faas_http::client::GatewayClient;
use faas_http::BasicAuth;
use http::Method;
use http_body_util::{BodyExt, Full};

/// `work` takes 20 ms a call, so that a run of 1,000 is still going when it is cut short.
const STACK: &str = r#"
functions:
  work:
    image: faas-rs/work
    fprocess: sh -c "sleep 0.02; cat"
"#;

const CALLS: usize = 1000;

/// Waits (bounded) until `up` serves `work`, and answers a client with its credentials.
async fn serving(up: &Up, state: &Path) -> GatewayClient {
    eventually(60, "faas up serves work", || async {
        let creds = BasicAuth::from_dir(state).ok()?;
        let c = GatewayClient::new(&up.base)
            .unwrap()
            .with_timeout(Duration::from_secs(30))
            .with_auth(Some(creds));
        let list = c.list(None).await.ok()?;
        list.iter().any(|f| f.name == "work" && f.available_replicas > 0).then_some(c)
    })
    .await
}

/// Waits (bounded) for `up` to exit, without holding up the runtime's other tasks (the
/// callback server).
fn wait_exit(up: &mut Up) -> std::process::ExitStatus {
    tokio::task::block_in_place(|| up.wait_exit(Duration::from_secs(60)))
}

/// A callback server on 127.0.0.1 counting the callbacks per body (`job-N`).
struct Callbacks {
    url: String,
    seen: Arc<Mutex<HashMap<String, u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Callbacks {
    async fn start() -> Callbacks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/done", listener.local_addr().unwrap());
        let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let counts = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let counts = counts.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<_>| {
                        let counts = counts.clone();
                        async move {
                            let body: hyper::body::Incoming = req.into_body();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            let body = body.unwrap_or_default();
                            let key = String::from_utf8_lossy(&body).trim().to_string();
                            *counts.lock().unwrap().entry(key).or_insert(0) += 1;
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Callbacks { url, seen, task }
    }

    /// Calls with at least one callback.
    fn distinct(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// (missing job numbers, duplicate callbacks) for jobs `0..n`.
    fn tally(&self, n: usize) -> (Vec<usize>, u32) {
        let seen = self.seen.lock().unwrap();
        let missing = (0..n).filter(|i| !seen.contains_key(&format!("job-{i}"))).collect();
        let duplicates = seen.values().map(|c| c - 1).sum();
        (missing, duplicates)
    }
}

impl Drop for Callbacks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes `CALLS` async calls of `work` (32 at a time), each with the callback URL;
/// every one must be accepted (202).
async fn publish_all(client: &GatewayClient, callback: &str) {
    let client = Arc::new(client.clone());
    let jobs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, jobs) = (client.clone(), jobs.clone());
        let h = vec![("x-callback-url".to_string(), callback.to_string())];
        tasks.push(tokio::spawn(async move {
            loop {
                let i = jobs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= CALLS {
                    return;
                }
                let body = Bytes::from(format!("job-{i}"));
                let r = client.invoke("work", Method::POST, &h, body, true).await.unwrap();
                assert_eq!(r.status, 202, "job-{i}: {}", r.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Runs the crash scenario with `signal` (`KILL` or `TERM`): publishes every call, stops
/// `faas up` with the signal once about half the callbacks arrived, restarts it, and waits
/// for every callback. Answers the duplicates.
async fn cut_short_and_restart(name: &str, signal: &str) -> u32 {
    let sb = Sandbox::new("durable", STACK, name);
    let callbacks = Callbacks::start().await;
    let mut up = sb.up();
    let client = serving(&up, &sb.state_dir()).await;
    publish_all(&client, &callbacks.url).await;
    eventually(120, "half the callbacks", || async {
        (callbacks.distinct() >= CALLS / 2).then_some(())
    })
    .await;
    let at_signal = callbacks.distinct();
    up.signal(signal);
    let status = wait_exit(&mut up);
    if signal == "TERM" {
        assert!(status.success(), "{status:?}; log:\n{}", up.log());
    }
    let at_exit = callbacks.distinct();
    assert!(at_exit < CALLS, "every call had run before the {signal}: nothing was tested");

    let again = sb.up();
    serving(&again, &sb.state_dir()).await;
    assert!(
        again.log().contains("calls carried over"),
        "the restart says what it carried over; log:\n{}",
        again.log()
    );
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        while callbacks.distinct() < CALLS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (missing, duplicates) = callbacks.tally(CALLS);
    println!(
        "SIG{signal}: {CALLS} accepted; {at_signal} callbacks at the signal, {at_exit} at exit; \
         after the restart: {} lost, {duplicates} duplicate callbacks",
        missing.len()
    );
    assert!(
        finished.is_ok() && missing.is_empty(),
        "{} calls lost (e.g. {:?}); log after the restart:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        again.log()
    );
    drop(again);
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_halfway_loses_no_accepted_call() {
    cut_short_and_restart("kill", "KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_halfway_loses_none_and_runs_none_twice() {
    let duplicates = cut_short_and_restart("term", "TERM").await;
    assert_eq!(duplicates, 0, "a clean shutdown runs no call twice");
}

/// A function and a secret deployed through the API (process backend) are there after a
/// restart, the function serving; the state file is private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_deployed_function_and_secret_survive_a_restart() {
    let sb = Sandbox::new("durable", STACK, "api");
    let mut up = sb.up();
    let client = serving(&up, &sb.state_dir()).await;
    client.create_secret("token", None, b"s3cret", false).await.unwrap();
    let mut spec = FunctionSpec::new("reader", "faas-rs/reader");
    spec.env_process = Some(r#"sh -c 'cat "$OPENFAAS_SECRETS_DIR/token"'"#.into());
    spec.secrets = vec!["token".into()];
    client.deploy(&spec).await.unwrap();
    let read = |client: GatewayClient| async move {
        eventually(60, "reader answers", || async {
            let r = client.invoke("reader", Method::POST, &[], Bytes::new(), false).await.ok()?;
            (r.status == 200).then(|| r.text())
        })
        .await
    };
    assert_eq!(read(client.clone()).await, "s3cret");
    // Replica counts set by `scale`, of an API-deployed function and of the stack's.
    client.scale("reader", None, 2).await.unwrap();
    client.scale("work", None, 3).await.unwrap();
    up.signal("TERM");
    assert!(wait_exit(&mut up).success(), "log:\n{}", up.log());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file = sb.state_dir().join("state.redb");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }

    let again = sb.up();
    let client = serving(&again, &sb.state_dir()).await;
    let names: Vec<String> = client.list(None).await.unwrap().into_iter().map(|f| f.name).collect();
    assert!(names.contains(&"reader".to_string()), "{names:?}; log:\n{}", again.log());
    let secrets: Vec<String> =
        client.list_secrets(None).await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(secrets, ["token"]);
    assert_eq!(read(client.clone()).await, "s3cret");
    for (name, replicas) in [("reader", 2), ("work", 3)] {
        let st = client.describe(name, None).await.unwrap();
        assert_eq!(st.replicas, replicas, "{name}'s scale survives; log:\n{}", again.log());
    }
    drop(again);
}

/// `--queue memory` is still there: async calls run (and nothing is kept for a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_queue_is_still_available() {
    let sb = Sandbox::new("durable", STACK, "memory");
    let callbacks = Callbacks::start().await;
    let up = sb.up_with(&["--queue", "memory"]);
    let client = serving(&up, &sb.state_dir()).await;
    let h = vec![("x-callback-url".to_string(), callbacks.url.clone())];
    let r = client.invoke("work", Method::POST, &h, Bytes::from("job-0"), true).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    eventually(60, "the callback", || async { (callbacks.distinct() == 1).then_some(()) }).await;
    assert!(up.log().contains("in-memory queue"), "log:\n{}", up.log());
}

/// Whether a process is gone (no /proc entry, or a zombie).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, r)| {
            let state = r.trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }),
    }
}

/// `kill -9` of `faas up` while a fork-mode call runs: the replica's watchdog dies with it
/// (a parent-death signal), and the watchdog's reaper then kills the function's process,
/// which runs in a process group of its own: nothing is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_faas_up_leaves_no_fork_mode_process_running() {
    let sb = Sandbox::new("durable", STACK, "orphans");
    let pid_file = sb.state_dir().with_file_name("hang.pid");
    let mut up = sb.up();
    let client = serving(&up, &sb.state_dir()).await;
    let mut spec = FunctionSpec::new("hang", "faas-rs/hang");
    spec.env_process = Some(format!("sh -c 'echo $$ > {}; exec sleep 100'", pid_file.display()));
    client.deploy(&spec).await.unwrap();
    eventually(60, "hang is available", || async {
        let list = client.list(None).await.ok()?;
        list.iter().any(|f| f.name == "hang" && f.available_replicas > 0).then_some(())
    })
    .await;
    let caller = client.clone();
    let call = tokio::spawn(async move {
        caller.invoke("hang", Method::POST, &[], Bytes::new(), false).await.map(|r| r.status)
    });
    let pid: u32 = eventually(60, "the function process started", || async {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .await;
    assert!(!process_gone(pid), "the function process {pid} runs");
    up.signal("KILL");
    let _ = wait_exit(&mut up);
    eventually(10, "the function process is gone", || async { process_gone(pid).then_some(()) })
        .await;
    call.abort();
}

//! The watchdog binary over real sockets, one test per mode and environment variable.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn streaming_mode_with_cat_echoes_small_and_large_bodies() {
    let w = spawn_watchdog(&[("fprocess", "cat"), ("mode", "streaming")]).await;
    let r = post(&w.url("/"), "hello watchdog").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "hello watchdog");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    // Larger than any pipe buffer: only works if stdin and stdout stream concurrently.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = post(&w.url("/"), big.clone()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big, "the body came back altered");
}

#[tokio::test]
async fn fork_mode_exposes_headers_method_path_and_query_as_env() {
    let w = spawn_watchdog(&[("function_process", "env")]).await;
    let r = request(
        Method::PUT,
        &w.url("/some/path?a=1&b=two"),
        &[("x-test-a", "alpha"), ("content-type", "text/plain")],
        "x",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let env = r.text();
    for want in [
        "Http_X_Test_A=alpha",
        "Http_Content_Type=text/plain",
        "Http_Method=PUT",
        "Http_Path=/some/path",
        "Http_Query=a=1&b=two",
        "Http_ContentLength=1",
    ] {
        assert!(env.lines().any(|l| l == want), "missing {want} in:\n{env}");
    }
    // The request's content type is mirrored when content_type is not set.
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let r = get(&w.url("/")).await;
    assert!(!r.text().contains("Http_Query="), "no query, no Http_Query");
}

#[tokio::test]
async fn serializing_mode_buffers_and_sets_content_type() {
    let w = spawn_watchdog(&[
        ("fprocess", "cat"),
        ("mode", "serializing"),
        ("content_type", "application/json"),
    ])
    .await;
    let r = post(&w.url("/"), r#"{"a":1}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), r#"{"a":1}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("content-length"), Some("7"));
}

#[tokio::test]
async fn non_zero_exit_is_500_with_stderr_logged_in_both_fork_modes() {
    for mode in ["streaming", "serializing"] {
        let w = spawn_watchdog(&[
            ("fprocess", "sh -c 'echo partial-out; echo oops-on-stderr >&2; exit 3'"),
            ("mode", mode),
            ("prefix_logs", "true"),
        ])
        .await;
        let r = try_post(&w.url("/"), "").await;
        if mode == "streaming" {
            // The output had started (200), so the failure aborts the response body.
            assert!(r.is_err(), "a failure after output must abort the response");
        } else {
            let r = r.unwrap();
            assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{mode}");
            assert!(r.text().contains("exit code 3"), "{mode}: {}", r.text());
            assert_eq!(r.header("x-watchdog-error"), Some("exit"));
            assert!(!r.text().contains("oops"), "stderr stays out of the body");
        }
        w.wait_for_line("with the prefixed stderr", |l| l.contains("stderr: oops-on-stderr")).await;
        w.wait_for_line("reporting the exit code", |l| l.contains("exit code 3")).await;
    }
    // Failing before any output: 500 in streaming mode too.
    let w =
        spawn_watchdog(&[("fprocess", "sh -c 'echo bad >&2; exit 7'"), ("prefix_logs", "false")])
            .await;
    let r = post(&w.url("/"), "").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.text().contains("exit code 7"), "{}", r.text());
    // prefix_logs=false: the line is copied as it is.
    w.wait_for_line("unprefixed", |l| l == "bad").await;
}

#[tokio::test]
async fn combine_output_puts_stderr_in_the_body() {
    let w = spawn_watchdog(&[
        ("fprocess", "sh -c 'echo out; echo err >&2'"),
        ("mode", "serializing"),
        ("combine_output", "true"),
    ])
    .await;
    let r = post(&w.url("/"), "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "out\nerr\n");
    let w =
        spawn_watchdog(&[("fprocess", "sh -c 'echo err >&2'"), ("combine_output", "true")]).await;
    let r = post(&w.url("/"), "").await;
    assert_eq!(r.text(), "err\n");
}

#[tokio::test]
async fn exec_timeout_answers_504_and_kills_the_process_group() {
    for mode in ["streaming", "serializing"] {
        let dir = temp_dir("exec-timeout");
        let pidfile = dir.join("bg.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let fprocess = format!("sh -c '{script}'");
        let w = spawn_watchdog(&[
            ("fprocess", &fprocess),
            ("mode", mode),
            ("exec_timeout", "1s"),
            ("write_timeout", "30s"),
        ])
        .await;
        let r = post(&w.url("/"), "").await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{mode}");
        assert_eq!(r.text().trim(), "exec_timeout of 1s exceeded", "{mode}");
        assert_eq!(r.header("x-watchdog-error"), Some("exec_timeout"));
        let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(
            wait_gone(pid, Duration::from_secs(10)).await,
            "{mode}: the background child {pid} of the function survived the timeout"
        );
    }
}

#[tokio::test]
async fn write_timeout_bounds_the_response_too() {
    let w =
        spawn_watchdog(&[("fprocess", "sleep 30"), ("exec_timeout", "0"), ("write_timeout", "1s")])
            .await;
    let r = post(&w.url("/"), "").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.text().trim(), "write_timeout of 1s exceeded");
}

#[tokio::test]
async fn max_inflight_gives_429_and_ready_reports_capacity() {
    let dir = temp_dir("inflight");
    let gate = dir.join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done; echo done", gate.display());
    let fprocess = format!("sh -c '{script}'");
    let w = spawn_watchdog(&[("fprocess", &fprocess), ("max_inflight", "1")]).await;
    assert_eq!(get(&w.url("/_/ready")).await.status, StatusCode::OK);
    let url = w.url("/");
    let first = tokio::spawn(async move { post(&url, "").await });
    // Wait until the first request holds the only slot.
    tokio::time::timeout(Duration::from_secs(30), async {
        while get(&w.url("/_/ready")).await.status != StatusCode::TOO_MANY_REQUESTS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("ready never reported 429 at capacity");
    assert_eq!(get(&w.url("/_/health")).await.status, StatusCode::OK, "health ignores load");
    let second = post(&w.url("/"), "").await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.header("x-watchdog-error"), Some("inflight"));
    std::fs::write(&gate, "").unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "done\n");
    tokio::time::timeout(Duration::from_secs(10), async {
        while get(&w.url("/_/ready")).await.status != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("ready never recovered");
    assert_eq!(post(&w.url("/"), "").await.status, StatusCode::OK);
}

#[tokio::test]
async fn http_mode_proxies_and_restarts_a_dead_upstream() {
    let up = free_port();
    let upstream_url = format!("http://127.0.0.1:{up}");
    let w = spawn_watchdog(&[
        ("fprocess", FIXTURE),
        ("mode", "http"),
        ("upstream_url", &upstream_url),
        ("FIXTURE_BEHAVIOUR", "echo"),
    ])
    .await;
    let r = request(Method::PATCH, &w.url("/a/b?x=1"), &[("x-test-k", "v")], "payload").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "payload");
    assert_eq!(r.header("x-echo-method"), Some("PATCH"));
    assert_eq!(r.header("x-echo-path"), Some("/a/b"));
    assert_eq!(r.header("x-echo-query"), Some("x=1"));
    assert_eq!(r.header("x-echo-x-test-k"), Some("v"));
    // Many requests over the pooled connections.
    for i in 0..50 {
        let r = post(&w.url("/"), format!("n{i}")).await;
        assert_eq!(r.text(), format!("n{i}"));
    }

    let w = spawn_watchdog(&[
        ("fprocess", FIXTURE),
        ("mode", "http"),
        ("upstream_url", &format!("http://127.0.0.1:{}", free_port())),
        ("FIXTURE_BEHAVIOUR", "crash"),
    ])
    .await;
    assert_eq!(get(&w.url("/")).await.text(), "alive");
    let r = get(&w.url("/?crash=1")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.header("x-watchdog-error"), Some("upstream"));
    w.wait_for_line("about the restart", |l| l.contains("restarting")).await;
    // Requests wait for the restarted upstream (within exec_timeout).
    let r = get(&w.url("/")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "alive");
    assert_eq!(get(&w.url("/_/health")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn http_mode_health_waits_for_the_upstream() {
    // An upstream that never listens: health stays 503, requests time out with a message.
    let w = spawn_watchdog_expect(
        &[
            ("fprocess", "sleep 60"),
            ("mode", "http"),
            ("upstream_url", &format!("http://127.0.0.1:{}", free_port())),
            ("exec_timeout", "500ms"),
        ],
        Some(StatusCode::SERVICE_UNAVAILABLE),
    )
    .await;
    let r = get(&w.url("/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().contains("not ready"), "{}", r.text());
}

#[tokio::test]
async fn static_mode_serves_files_safely() {
    let dir = temp_dir("static");
    std::fs::write(dir.join("index.html"), "<h1>hi</h1>").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/a b.txt"), "text").unwrap();
    let w = spawn_watchdog(&[("mode", "static"), ("static_path", dir.to_str().unwrap())]).await;
    let r = get(&w.url("/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "<h1>hi</h1>");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let r = get(&w.url("/sub/a%20b.txt")).await;
    assert_eq!(r.text(), "text");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(get(&w.url("/missing")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&w.url("/sub/%2e%2e/%2e%2e/etc/passwd")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(post(&w.url("/"), "").await.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn read_timeout_closes_slow_header_writers() {
    let w = spawn_watchdog(&[("fprocess", "cat"), ("read_timeout", "500ms")]).await;
    // The watchdog's clock for this connection starts at accept, after this instant: the
    // connection must stay open at least read_timeout from here (a lower bound, which a
    // loaded machine cannot break), and close well before 15 s.
    let t0 = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", w.port)).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    let open = t0.elapsed();
    assert!(r.is_ok(), "the connection stayed open past read_timeout");
    assert!(
        open >= Duration::from_millis(500),
        "the connection closed after {open:?}, before read_timeout (500 ms)"
    );
}

#[tokio::test]
async fn log_requests_writes_one_line_per_request() {
    let w = spawn_watchdog(&[("fprocess", "cat"), ("log_requests", "true")]).await;
    post(&w.url("/logged-path"), "x").await;
    w.wait_for_line("for the request", |l| {
        // A streamed response's length is not known when its head is sent: `-`.
        l.contains("POST /logged-path - 200 OK - ContentLength: - (")
    })
    .await;
}

#[tokio::test]
async fn invalid_configuration_exits_with_a_message_naming_the_variable() {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(WATCHDOG)
            .env("fprocess", "cat")
            .env("exec_timeout", "ten seconds")
            .env("port", free_port().to_string())
            .env("bind_address", "127.0.0.1")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exec_timeout"), "{err}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let dir = temp_dir("sigterm");
    let marker = dir.join("started");
    let fprocess = format!("sh -c 'touch {}; sleep 3; echo finished'", marker.display());
    let mut w = spawn_watchdog(&[("fprocess", &fprocess), ("healthcheck_interval", "2s")]).await;
    let url = w.url("/");
    let slow = tokio::spawn(async move { post(&url, "").await });
    tokio::time::timeout(Duration::from_secs(30), async {
        while !marker.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slow request never started its process");
    let pid = w.pid();
    assert!(std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
    w.wait_for_line("announcing the shutdown", |l| l.contains("shutting down")).await;
    let h = get(&w.url("/_/health")).await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.text(), "finished\n");
    let status = tokio::time::timeout(Duration::from_secs(30), w.child.wait())
        .await
        .expect("the watchdog did not exit after draining")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", w.port)).await.is_err());
}

#[tokio::test]
async fn in_process_serve_stops_on_the_shutdown_future() {
    use faas_watchdog::watchdog::{serve, Config};
    let cfg = Config::from_vars([
        ("fprocess", "cat"),
        ("healthcheck_interval", "0s"),
        ("bind_address", "127.0.0.1"),
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(cfg, listener, async move {
        let _ = rx.await;
    }));
    let r = post(&format!("http://127.0.0.1:{port}/"), Bytes::from_static(b"in-process")).await;
    assert_eq!(r.text(), "in-process");
    // Fork mode runs a reaper (a child of this process); a stopped watchdog has reaped it.
    let me = std::process::id();
    let reapers = || -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| stat_of(p).is_some_and(|(ppid, _, n)| ppid == me && n == REAPER))
            .collect()
    };
    assert_eq!(reapers().len(), 1, "one reaper while serving");
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server).await.unwrap().unwrap().unwrap();
    assert_eq!(
        reapers(),
        Vec::<u32>::new(),
        "the reaper is reaped (not even a zombie) once stopped"
    );
}

/// Headers become environment variables in the fork modes; one too large for an
/// environment variable is refused with 431 naming the header, before anything starts.
#[tokio::test]
async fn a_header_too_large_for_the_environment_is_431() {
    for mode in ["streaming", "serializing"] {
        let w = spawn_watchdog(&[("fprocess", "cat"), ("mode", mode)]).await;
        let big = "x".repeat(300 * 1024);
        let r = request(Method::POST, &w.url("/"), &[("x-big", big.as_str())], "hi").await;
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{mode}: {}", r.text());
        assert!(r.text().contains("X-Big") && r.text().contains("131071"), "{mode}: {}", r.text());
        // Headers each under the per-variable limit but over 256 KiB together: 431 as well.
        let part = "y".repeat(100 * 1024);
        let names: Vec<String> = (0..3).map(|i| format!("x-part-{i}")).collect();
        let headers: Vec<(&str, &str)> =
            names.iter().map(|n| (n.as_str(), part.as_str())).collect();
        let r = request(Method::POST, &w.url("/"), &headers, "hi").await;
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{mode}: {}", r.text());
        // A header within the limit still reaches the function.
        let fine = "z".repeat(64 * 1024);
        let r = request(Method::POST, &w.url("/"), &[("x-fine", fine.as_str())], "hi").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "hi"), "{mode}");
    }
}

/// The children of `pid` (from /proc), but for a fork-mode watchdog's reaper (see
/// [`reaper_of`]).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat_of(p).is_some_and(|(ppid, _, name)| ppid == pid && name != REAPER))
        .collect()
}

/// The process name of a fork-mode watchdog's reaper.
const REAPER: &str = "faas-reaper";

/// A fork-mode child runs in a process group of its own (so a timeout can kill its whole
/// tree), which a kill of the watchdog's group does not reach: when the watchdog is killed
/// outright (SIGKILL, no drain), the child must die with it rather than run on, orphaned.
#[tokio::test]
async fn a_fork_child_dies_with_a_killed_watchdog() {
    let mut wd = spawn_watchdog(&[("fprocess", "sleep 100"), ("exec_timeout", "0s")]).await;
    let url = wd.url("/");
    let call = tokio::spawn(async move { common::try_post(&url, "x").await });
    let pid = wd.pid();
    let t0 = std::time::Instant::now();
    let child = loop {
        if let Some(c) = children_of(pid).into_iter().next() {
            break c;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the watchdog never forked its child");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    wd.child.start_kill().expect("SIGKILL the watchdog");
    let _ = wd.child.wait().await;
    assert!(
        wait_gone(child, Duration::from_secs(10)).await,
        "fork child {child} outlived its watchdog"
    );
    assert!(call.await.unwrap().is_err(), "the call had no answer to get");
}

/// The pipe inodes (`pipe:[N]`) among a process's open descriptors.
fn pipes_of(pid: u32) -> std::collections::HashSet<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Default::default() };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("pipe:"))
        .collect()
}

/// From /proc/PID/stat: the parent's pid, the process group and the process name.
fn stat_of(pid: u32) -> Option<(u32, u32, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = s.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let mut f = rest.split_whitespace().skip(1);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?, name))
}

/// A fork-mode watchdog's reaper: the process named `faas-reaper` holding the other end of
/// one of the watchdog's pipes.
fn reaper_of(watchdog: u32) -> Option<u32> {
    let mine = pipes_of(watchdog);
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| p != watchdog)
        .find(|&p| {
            stat_of(p).is_some_and(|(_, _, name)| name == REAPER) && !pipes_of(p).is_disjoint(&mine)
        })
}

/// Polls (bounded) for the children of `pid` until there are at least `n`.
async fn wait_children(pid: u32, n: usize) -> Vec<u32> {
    let t0 = std::time::Instant::now();
    loop {
        let c = children_of(pid);
        if c.len() >= n {
            return c;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{pid} has {} of {n} children", c.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fork mode's children are not tied to the watchdog by a parent-death signal (which would
/// make each spawn a fork of the whole watchdog) but registered with its reaper, a process
/// of its own: when the watchdog is SIGKILLed the reaper kills the function's whole process
/// group (a grandchild included, which a parent-death signal never reached), then exits.
#[tokio::test]
async fn a_killed_watchdogs_reaper_ends_the_fork_childs_whole_tree_then_itself() {
    let mut wd = spawn_watchdog(&[
        ("fprocess", "sh -c 'sleep 101 & sleep 102'"),
        ("mode", "streaming"),
        ("exec_timeout", "0s"),
    ])
    .await;
    let pid = wd.pid();
    let reaper = reaper_of(pid).expect("the fork-mode watchdog has a reaper");
    let (ppid, pgid, _) = stat_of(reaper).expect("the reaper's stat");
    assert_eq!(ppid, pid, "the reaper is the watchdog's child");
    assert_eq!(pgid, reaper, "the reaper is in a process group of its own");
    let url = wd.url("/");
    let call = tokio::spawn(async move { common::try_post(&url, "x").await });
    let sh = wait_children(pid, 1).await[0];
    let sleeps = wait_children(sh, 2).await;
    wd.child.start_kill().expect("SIGKILL the watchdog");
    let _ = wd.child.wait().await;
    for p in std::iter::once(sh).chain(sleeps) {
        assert!(wait_gone(p, Duration::from_secs(10)).await, "{p} outlived its watchdog");
    }
    assert!(wait_gone(reaper, Duration::from_secs(10)).await, "the reaper outlived its watchdog");
    assert!(call.await.unwrap().is_err(), "the call had no answer to get");
}

/// The process backend stops a replica by signalling the watchdog's process group: a
/// SIGKILL of that group does not reach the reaper (a group of its own), which then kills the
/// fork child's group.
#[tokio::test]
async fn a_fork_child_dies_when_the_watchdogs_process_group_is_killed() {
    let port = free_port();
    let mut cmd = tokio::process::Command::new(WATCHDOG);
    cmd.env("port", port.to_string())
        .env("bind_address", "127.0.0.1")
        .env("fprocess", "sleep 100")
        .env("exec_timeout", "0s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut wd = cmd.spawn().expect("spawn faas-watchdog");
    let pid = wd.id().expect("the watchdog's pid");
    let url = format!("http://127.0.0.1:{port}/");
    let call = tokio::spawn(async move {
        let t0 = std::time::Instant::now();
        loop {
            // Refused until the watchdog listens; then the call hangs until it is killed.
            match common::try_post(&url, "x").await {
                Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                r => return r,
            }
        }
    });
    let child = wait_children(pid, 1).await[0];
    let reaper = reaper_of(pid).expect("the fork-mode watchdog has a reaper");
    let st = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -KILL -{pid}: {st}");
    let _ = wd.wait().await;
    assert!(
        wait_gone(child, Duration::from_secs(10)).await,
        "fork child {child} outlived its group"
    );
    assert!(wait_gone(reaper, Duration::from_secs(10)).await, "the reaper outlived its watchdog");
    call.abort();
}

/// A fork-mode process gets the watchdog's own environment as it was at start (read once),
/// with the request's variables replacing any of the same name.
#[tokio::test]
async fn fork_mode_passes_the_watchdogs_environment_under_the_requests_variables() {
    for mode in ["streaming", "serializing"] {
        let w = spawn_watchdog(&[
            ("fprocess", "env"),
            ("mode", mode),
            ("FROM_THE_WATCHDOG", "kept"),
            ("Http_Method", "stale"),
            ("Http_X_Stale", "kept too"),
        ])
        .await;
        let headers = [("x-a", "1"), ("method", "spoofed"), ("x-dup", "one"), ("x-dup", "two")];
        let r = request(Method::POST, &w.url("/p"), &headers, "x").await;
        assert_eq!(r.status, StatusCode::OK, "{mode}");
        let env = r.text();
        for want in [
            "FROM_THE_WATCHDOG=kept",
            "Http_X_Stale=kept too",
            "Http_Method=POST",
            "Http_X_A=1",
            "Http_Path=/p",
        ] {
            assert!(env.lines().any(|l| l == want), "{mode}: missing {want} in:\n{env}");
        }
        assert!(!env.contains("Http_Method=stale"), "{mode}: the request's variable wins:\n{env}");
        // One variable per name, the last value set: the method over a `Method` header, the
        // last of a repeated header.
        for (name, want) in [("Http_Method=", "POST"), ("Http_X_Dup=", "two")] {
            let got: Vec<&str> = env.lines().filter_map(|l| l.strip_prefix(name)).collect();
            assert_eq!(got, [want], "{mode}: {name} in:\n{env}");
        }
    }
}

/// Bodies around the sizes where the watchdog changes how it feeds stdin (written before the
/// start up to a pipe's atomic write, inline up to 16 KiB, by a task beyond) come back whole.
#[tokio::test]
async fn fork_mode_bodies_around_the_pipe_sizes_come_back_whole() {
    for mode in ["streaming", "serializing"] {
        let w = spawn_watchdog(&[("fprocess", "cat"), ("mode", mode)]).await;
        for n in [0usize, 1, 4095, 4096, 4097, 16 * 1024, 16 * 1024 + 1, 70_000] {
            let body: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
            let r = post(&w.url("/"), body.clone()).await;
            assert_eq!(r.status, StatusCode::OK, "{mode}, {n} bytes");
            assert!(r.body == body, "{mode}, {n} bytes: the body came back altered");
        }
        assert!(children_of(w.pid()).is_empty(), "{mode}: a process was left unreaped");
    }
}

/// A program that cannot be started is a 500 naming the spawn, in both fork modes.
#[tokio::test]
async fn fork_mode_answers_500_when_the_program_cannot_start() {
    for mode in ["streaming", "serializing"] {
        let w = spawn_watchdog(&[("fprocess", "/nonexistent/program"), ("mode", mode)]).await;
        let r = post(&w.url("/"), "x").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{mode}");
        assert_eq!(r.header("x-watchdog-error"), Some("spawn"), "{mode}");
    }
}

/// A client that goes away mid-stream: the process group is killed and the process reaped
/// (no zombie left behind).
#[tokio::test]
async fn a_streaming_process_is_killed_and_reaped_when_the_client_goes_away() {
    let w = spawn_watchdog(&[
        ("fprocess", "sh -c 'echo first; exec sleep 100'"),
        ("mode", "streaming"),
        ("exec_timeout", "0s"),
    ])
    .await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", w.port)).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("first") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the first chunk in time")
            .unwrap();
        assert!(n > 0, "closed before the first chunk: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let child = children_of(w.pid()).into_iter().next().expect("the streaming process runs");
    drop(s);
    assert!(wait_gone(child, Duration::from_secs(10)).await, "{child} outlived its client");
    let t0 = std::time::Instant::now();
    while !children_of(w.pid()).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the killed process was not reaped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Streaming mode logs the process's stderr line by line, also what a background process
/// writes to it after the response has ended, and a last line without its newline.
#[tokio::test]
async fn streaming_mode_logs_stderr_written_after_the_response() {
    let w = spawn_watchdog(&[
        (
            "fprocess",
            "sh -c 'echo out; echo early >&2; (sleep 0.3; printf late-no-newline >&2) >/dev/null &'",
        ),
        ("mode", "streaming"),
        ("prefix_logs", "true"),
    ])
    .await;
    let r = post(&w.url("/"), "").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "out\n"));
    w.wait_for_line("with the early stderr line", |l| l.ends_with("stderr: early")).await;
    w.wait_for_line("with the late stderr line", |l| l.ends_with("stderr: late-no-newline")).await;
}

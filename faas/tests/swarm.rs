//! `faas up --backend swarm` end to end on a live one-node swarm (initialised on 127.0.0.1 by
//! the test when the engine is in none): a stack function constrained to a node label no node
//! has answers `POST /function/NAME` with a 503 at once, naming the engine's reason, through
//! the gateway's whole stack (the activator asks the backend's readiness, which fails fast);
//! after `docker node update --label-add` it serves; SIGTERM leaves the function's service to
//! the engine, and the test removes it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use faas_backend_docker::{swarm_testing, testing};

/// `(status, body)` of a POST over a fresh connection; `None` while nothing listens.
async fn post(base: &str, path: &str, body: &'static str) -> Option<(u16, String)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("{base}{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = client.request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faas_up_on_swarm_answers_503_naming_the_pending_reason_then_serves() {
    testing::require_docker("swarm::faas_up").await;
    let image = testing::fixture_image().await.expect("the fixture image");
    let guard = swarm_testing::join().await;
    let ns = testing::unique("t");
    let key = format!("faas-rs-test-{ns}");
    let _cleanup = swarm_testing::SwarmCleanup {
        namespace: ns.clone(),
        node: guard.node.clone(),
        label: Some(key.clone()),
    };
    let dir = std::env::temp_dir().join(format!("faas-swarm-up-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let stack = dir.join("stack.yml");
    std::fs::write(
        &stack,
        format!(
            "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  pi:\n    image: {image}\n    \
             namespace: {ns}\n    environment:\n      FIXTURE_BEHAVIOUR: echo\n    \
             constraints:\n      - node.labels.{key} == rpi\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.join("up.log");
    let child = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(["up", "--backend", "swarm", "--no-auth", "--queue", "memory", "-f"])
        .arg(&stack)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting faas up");
    let up = common::Up { child: Some(child), base: base.clone(), log };
    let path = format!("/function/pi.{ns}");

    // Pending: a 503 naming the engine's reason, at once (the start timeout is 60 s).
    let (status, body) =
        common::eventually(60, "faas up to answer for the pending function", || {
            let (base, path) = (base.clone(), path.clone());
            async move {
                let t0 = Instant::now();
                let client = tokio::time::timeout(Duration::from_secs(10), post(&base, &path, "x"));
                let Ok(answer) = client.await else {
                    panic!("a call of a pending function waited {:?}", t0.elapsed())
                };
                let (status, body) = answer?;
                (status == 503 && body.contains("no suitable node")).then_some((status, body))
            }
        })
        .await;
    assert_eq!(status, 503, "{body}");

    swarm_testing::node_label(&guard.node, &key, Some("rpi"));
    let body = common::eventually(60, "the function to serve once the node is labelled", || {
        let (base, path) = (base.clone(), path.clone());
        async move {
            let (status, body) = post(&base, &path, "placed on rpi").await?;
            (status == 200).then_some(body)
        }
    })
    .await;
    assert_eq!(body, "placed on rpi");
    up.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

//! `faas up --backend kubernetes` finds its cluster the usual way (`KUBECONFIG`, its
//! current context and credentials), and says what to do when there is none. No cluster
//! is reachable here: the kubeconfig points at a listener of the test on 127.0.0.1, which
//! reads the first request the backend sends (the request-level tests of every call are in
//! `faas-backend-k8s/tests/requests.rs`; live tests there are gated).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faas-k8s-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/stack.yml")
}

/// `faas up --backend kubernetes` with `home` as HOME and `kubeconfig` as KUBECONFIG, and
/// not in a pod.
fn up(home: &Path, kubeconfig: &Path) -> Command {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = Command::new(env!("CARGO_BIN_EXE_faas"));
    c.args(["up", "--backend", "kubernetes", "-f"])
        .arg(stack())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(home.join("state"))
        .env("HOME", home)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdin(Stdio::null());
    c
}

#[test]
fn without_a_cluster_up_on_kubernetes_says_how_to_give_one() {
    let home = temp("none");
    let mut child =
        up(&home, &home.join("no-such-kubeconfig")).stderr(Stdio::piped()).spawn().unwrap();
    // It gives up at once; the bound only keeps a hang from stalling the suite.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("faas up --backend kubernetes without a cluster did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("kubeconfig") && err.contains("KUBECONFIG"), "{err}");
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn up_on_kubernetes_sends_its_requests_to_the_kubeconfig_s_cluster() {
    let home = temp("fake");
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kubeconfig = home.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: tester\n  user:\n    token: t0ken-of-the-test\n\
             contexts:\n- name: test\n  context:\n    cluster: fake\n    user: tester\n",
            api.local_addr().unwrap()
        ),
    )
    .unwrap();
    let mut child =
        up(&home, &kubeconfig).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let accepted = tokio::time::timeout(Duration::from_secs(60), api.accept()).await;
    let (mut conn, _) = accepted.expect("no request reached the kubeconfig's cluster").unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf))
            .await
            .expect("the request head")
            .unwrap();
        assert!(n > 0, "connection closed before a request head");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let _ = conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
    let _ = child.kill();
    let _ = child.wait();
    // The stack's functions go to the default function namespace, with the context's user.
    assert!(head.contains("/namespaces/openfaas-fn/"), "{head}");
    assert!(head.contains("authorization: bearer t0ken-of-the-test"), "{head}");
    let _ = std::fs::remove_dir_all(&home);
}

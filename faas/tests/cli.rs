//! The `faas` binary end to end: `faas up -f examples/stack.yml` on the embedded process
//! backend, then `faas login` and the client subcommands against it, over real TCP on
//! 127.0.0.1. HOME and the XDG directories point into a temporary directory, so
//! `faas login` never touches the user's own.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use faas_http::client::GatewayClient;
use faas_http::BasicAuth;
use http::Method;

/// The directory the test's processes take as HOME (and XDG directories under it).
fn home() -> PathBuf {
    std::env::temp_dir().join(format!("faas-cli-test-home-{}", std::process::id()))
}

/// `faas` with HOME and the XDG directories in [`home`], and no credentials from the
/// environment.
fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_faas"));
    c.env("HOME", home())
        .env("XDG_STATE_HOME", home().join("state"))
        .env("XDG_CONFIG_HOME", home().join("config"))
        .env_remove("OPENFAAS_USER")
        .env_remove("OPENFAAS_PASSWORD");
    c
}

fn faas(gateway: &str, args: &[&str]) -> Output {
    command()
        .args(args)
        .env("OPENFAAS_URL", gateway)
        .stdin(Stdio::null())
        .output()
        .expect("run faas")
}

/// `faas login --password-stdin` with `password` on stdin.
fn login(gateway: &str, password: &str) -> Output {
    use std::io::Write;
    let mut child = command()
        .args(["login", "--gateway", gateway, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run faas login");
    child.stdin.take().unwrap().write_all(password.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(gateway: &str, args: &[&str]) -> String {
    let out = faas(gateway, args);
    assert!(
        out.status.success(),
        "faas {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        // SIGINT first (what Ctrl-C sends), so `up` removes its functions; then kill.
        let _ = Command::new("kill").arg("-INT").arg(self.0.id().to_string()).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faas_up_serves_the_example_stack_and_the_cli_drives_it() {
    let stack = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/stack.yml");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = format!("http://127.0.0.1:{port}");
    let state = std::env::temp_dir().join(format!("faas-cli-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(home());
    let _ = std::fs::remove_dir_all(&state);
    let child = command()
        .args(["up", "-f"])
        .arg(&stack)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(&state)
        .env_remove("basic_auth")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start faas up");
    let _up = Up(child);

    // Auth is on: the password is generated into the state directory on start.
    let client = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(creds) = BasicAuth::from_dir(&state) {
                break GatewayClient::new(&gw)
                    .unwrap()
                    .with_timeout(Duration::from_secs(30))
                    .with_auth(Some(creds));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("faas up writes its password");
    // Ready once every example function is listed with an available replica.
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(list) = client.list(None).await {
                if list.len() == 4 && list.iter().all(|f| f.available_replicas > 0) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("faas up serves the example functions");

    let call = |name: &'static str, body: &'static str| {
        let client = client.clone();
        async move {
            let r = client.invoke(name, Method::POST, &[], Bytes::from(body), false).await.unwrap();
            assert_eq!(r.status, 200, "{name}: {}", r.text());
            r
        }
    };
    assert_eq!(call("uppercase", "hello world").await.text(), "HELLO WORLD");
    assert_eq!(call("wordcount", "one two three").await.text().trim(), "3");
    assert_eq!(
        call("sha256", "abc").await.text().trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let r = call("echo-json", r#"{"a":1}"#).await;
    assert_eq!(r.text(), r#"{"a":1}"#);
    assert_eq!(r.headers["content-type"], "application/json");

    // The client subcommands need credentials: this gateway's password is in --state-dir,
    // not the default state directory, so they log in first.
    let out = faas(&gw, &["list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("faas login"));
    let out = login(&gw, "wrong\n");
    assert!(!out.status.success(), "a wrong password is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    let saved = home().join("config/faas-rs/credentials.json");
    assert!(!saved.exists(), "a wrong password is not saved");
    let password = client.auth().unwrap().password().to_string();
    let out = login(&gw, &format!("{password}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let list = ok(&gw, &["list"]);
    for f in ["uppercase", "wordcount", "sha256", "echo-json"] {
        assert!(list.contains(f), "{list}");
    }
    let d = ok(&gw, &["describe", "sha256"]);
    assert!(d.contains("Status:             Ready") && d.contains("sha256sum"), "{d}");
    assert_eq!(ok(&gw, &["invoke", "uppercase", "-d", "cli"]), "CLI");
    let out = faas(&gw, &["invoke", "uppercase", "--async", "-d", "later"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("202"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --gateway overrides OPENFAAS_URL.
    let out = command()
        .args(["list", "--gateway", &gw])
        .env("OPENFAAS_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    ok(&gw, &["deploy", "--name", "rev", "--image", "faas-rs/rev", "--fprocess", "rev"]);
    assert_eq!(ok(&gw, &["invoke", "rev", "-d", "abc"]).trim(), "cba");
    ok(&gw, &["scale", "rev", "--replicas", "2"]);
    let st = client.describe("rev", None).await.unwrap();
    assert_eq!(st.replicas, 2);
    ok(&gw, &["secret", "create", "api-key", "--from-literal", "s3cr3t"]);
    assert!(ok(&gw, &["secret", "list"]).contains("api-key"));
    ok(&gw, &["secret", "remove", "api-key"]);
    assert!(!ok(&gw, &["secret", "list"]).contains("api-key"));
    let logs = ok(&gw, &["logs", "rev"]);
    assert!(logs.contains("rev"), "{logs}");
    ok(&gw, &["remove", "rev"]);
    let out = faas(&gw, &["invoke", "rev", "-d", "x"]);
    assert!(!out.status.success(), "invoking a removed function fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    // A bad stack file is a clear error naming the field.
    let bad = state.join("bad.yml");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(&bad, "functions:\n  Bad_Name:\n    fprocess: cat\n").unwrap();
    let out = command().args(["deploy", "-f"]).arg(&bad).env("OPENFAAS_URL", &gw).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("functions.Bad_Name.name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // After `faas logout` the subcommands have no credentials again.
    ok(&gw, &["logout"]);
    assert!(!faas(&gw, &["list"]).status.success());
    let _ = std::fs::remove_dir_all(home());
}

#[test]
fn faas_up_refuses_a_watchdog_program_that_is_not_a_file() {
    let stack = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/stack.yml");
    let state = home().join("bad-watchdog-state");
    let missing = home().join("no-such-watchdog");
    let out = command()
        .args(["up", "--no-auth", "--listen", "127.0.0.1:0", "-f"])
        .arg(&stack)
        .arg("--state-dir")
        .arg(&state)
        .arg("--watchdog")
        .arg(&missing)
        .stdin(Stdio::null())
        .output()
        .expect("run faas up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "faas up started with a missing watchdog: {err}");
    assert!(err.contains("--watchdog") && err.contains("no-such-watchdog"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faas_up_without_a_stack_file_starts_with_no_functions() {
    let dir = home().join("no-stack");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let up_in_dir = |args: &[&str]| {
        let mut c = command();
        c.current_dir(&dir).args(["up", "--no-auth", "--listen"]).args(args);
        c
    };
    // A stack file given but missing, or a filter with no stack file: an error naming it.
    for (args, named) in [
        (vec!["127.0.0.1:0", "-f", "missing.yml"], "missing.yml"),
        (vec!["127.0.0.1:0", "--filter", "hello"], "filter"),
    ] {
        let out = up_in_dir(&args).stdin(Stdio::null()).output().expect("run faas up");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "faas up {args:?} started: {err}");
        assert!(err.contains(named), "faas up {args:?}: {err}");
    }

    // No stack.yml where it runs: a gateway with no functions, which takes deployments.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = format!("http://127.0.0.1:{port}");
    let log = dir.join("up.log");
    let child = up_in_dir(&[&format!("127.0.0.1:{port}"), "--state-dir", "state"])
        .env_remove("basic_auth")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start faas up");
    let _up = Up(child);
    let client = GatewayClient::new(&gw).unwrap().with_timeout(Duration::from_secs(30));
    let listed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(list) = client.list(None).await {
                break list;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("faas up answers within 60 s");
    assert!(listed.is_empty(), "{listed:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("no stack.yml here: starting with no functions"), "{text}");

    ok(&gw, &["deploy", "--name", "echo", "--fprocess", "cat", "--wait"]);
    let r =
        client.invoke("echo", Method::POST, &[], Bytes::from_static(b"hi"), false).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hi");
    let _ = std::fs::remove_dir_all(home());
}

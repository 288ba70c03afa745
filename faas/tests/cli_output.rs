//! The `faas` client's output modes, over real TCP against a gateway on the in-memory
//! backend: `--json` on the read commands (what the gateway answers, parseable), a spinner
//! on a terminal and plain lines otherwise (`deploy --wait`), and shell completions.

use std::sync::Arc;

use faas_core::conformance::{Behaviour, MemoryWorkload};
use faas_core::{Backend, MemoryInvoker};
use faas_http::{BasicAuth, Gateway, GatewayConfig};
use serde_json::Value;

/// A gateway with basic auth on, served on a loopback port until the sender drops.
async fn gateway(creds: &BasicAuth) -> (String, tokio::sync::oneshot::Sender<()>) {
    let invoker = MemoryInvoker::builder().build();
    MemoryWorkload::new(&invoker);
    let invoker: Arc<dyn Backend> = Arc::new(invoker);
    let config = GatewayConfig { auth: Some(creds.clone()), ..Default::default() };
    let gateway = Gateway::builder(invoker).config(config).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = rx.await;
    }));
    (url, tx)
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `faas ARGS` against `gateway` with the password in the environment, stdin empty and
/// stdout/stderr piped (so not terminals).
async fn faas(gateway: &str, password: &str, args: &[&str]) -> Run {
    let home = std::env::temp_dir().join(format!("faas-cli-output-{}", std::process::id()));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(args)
        .env("HOME", &home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("OPENFAAS_URL", gateway)
        .env("OPENFAAS_PASSWORD", password)
        .env_remove("OPENFAAS_USER")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run faas");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn ok(gateway: &str, password: &str, args: &[&str]) -> Run {
    let r = faas(gateway, password, args).await;
    assert!(r.ok, "faas {args:?} failed:\n{}\n{}", r.stdout, r.stderr);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_print_json_and_waits_spin_only_on_a_terminal() {
    let creds = BasicAuth::new("admin", "cli output pass");
    let (gw, _stop) = gateway(&creds).await;
    let pw = creds.password();
    let echo = MemoryWorkload::image(Behaviour::Echo);
    let log = MemoryWorkload::image(Behaviour::Log);

    // Deploy and wait: one plain line per function, no escape sequences or spinner frames.
    let r =
        ok(&gw, pw, &["deploy", "--name", "echo1", "--image", echo, "-l", "team=cli", "--wait"])
            .await;
    assert!(r.stderr.contains("Waiting for echo1 ... ready in "), "{}", r.stderr);
    assert_eq!(r.stderr.lines().filter(|l| l.contains("echo1")).count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains('\x1b') && !r.stderr.contains('\r'), "{:?}", r.stderr);
    ok(&gw, pw, &["deploy", "--name", "log1", "--image", log]).await;

    // On a terminal (a pseudo-terminal from util-linux's `script`), the same wait is an
    // indicatif spinner that ends as one line with the outcome.
    let cmd = format!("{} deploy --name echo2 --image {echo} --wait", env!("CARGO_BIN_EXE_faas"));
    let home = std::env::temp_dir().join(format!("faas-cli-output-{}", std::process::id()));
    let out = tokio::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("HOME", &home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("OPENFAAS_URL", &gw)
        .env("OPENFAAS_PASSWORD", pw)
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run script (util-linux)");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(tty.contains("Waiting for echo2 ready in "), "{tty:?}");
    assert!(!tty.contains("Waiting for echo2 ..."), "no plain line on a terminal: {tty:?}");

    // list --json: the gateway's array of statuses.
    let r = ok(&gw, pw, &["list", "--json"]).await;
    let list: Value = serde_json::from_str(&r.stdout).expect("list --json is JSON");
    let names: Vec<&str> =
        list.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"echo1") && names.contains(&"log1"), "{names:?}");
    let e = list.as_array().unwrap().iter().find(|f| f["name"] == "echo1").unwrap();
    assert_eq!(e["image"], echo);
    assert!(e["availableReplicas"].as_u64().unwrap() >= 1, "{e}");
    // The table stays the default.
    let r = ok(&gw, pw, &["list"]).await;
    assert!(r.stdout.starts_with("Function"), "{}", r.stdout);
    assert!(serde_json::from_str::<Value>(&r.stdout).is_err());
    let r = faas(&gw, pw, &["list", "--json", "--verbose"]).await;
    assert!(!r.ok && r.stderr.contains("cannot be used with"), "{}", r.stderr);

    // describe --json: one status object.
    let r = ok(&gw, pw, &["describe", "echo1", "--json"]).await;
    let d: Value = serde_json::from_str(&r.stdout).expect("describe --json is JSON");
    assert_eq!(d["name"], "echo1");
    assert_eq!(d["namespace"], "openfaas-fn");
    assert_eq!(d["labels"]["team"], "cli");
    let r = faas(&gw, pw, &["describe", "nobody", "--json"]).await;
    assert!(!r.ok && r.stdout.is_empty(), "an error prints no JSON: {}", r.stdout);

    // secret list --json.
    ok(&gw, pw, &["secret", "create", "api-key", "--from-literal", "v"]).await;
    let r = ok(&gw, pw, &["secret", "list", "--json"]).await;
    let secrets: Value = serde_json::from_str(&r.stdout).expect("secret list --json is JSON");
    assert!(secrets.as_array().unwrap().iter().any(|s| s["name"] == "api-key"), "{secrets}");

    // logs --json: one object per line.
    ok(&gw, pw, &["invoke", "log1", "-d", "a line for the json logs"]).await;
    let r = ok(&gw, pw, &["logs", "log1", "--json"]).await;
    let entries: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(
        entries.iter().any(|e| e["name"] == "log1"
            && e["text"].as_str().is_some_and(|t| t.contains("a line for the json logs"))
            && e["timestamp"].is_string()
            && e["instance"].is_string()),
        "{entries:?}"
    );
}

#[tokio::test]
async fn completions_for_every_shell() {
    let gen = |shell: &'static str| async move {
        faas("http://127.0.0.1:1", "", &["completion", shell]).await
    };
    let bash = gen("bash").await;
    assert!(bash.ok, "{}", bash.stderr);
    assert!(bash.stdout.contains("_faas()") && bash.stdout.contains("complete -F _faas"));
    for word in ["describe", "--json", "--wait", "completion"] {
        assert!(bash.stdout.contains(word), "bash completes {word}");
    }
    let zsh = gen("zsh").await;
    assert!(zsh.ok && zsh.stdout.starts_with("#compdef faas"), "{}", zsh.stdout);
    let fish = gen("fish").await;
    assert!(fish.ok && fish.stdout.contains("complete -c faas"), "{}", fish.stdout);
    for shell in ["elvish", "powershell"] {
        let r = gen(shell).await;
        assert!(r.ok && r.stdout.contains("faas"), "{shell}");
    }
    let r = gen("tcsh").await;
    assert!(!r.ok, "an unknown shell is an error");
    assert!(r.stderr.contains("possible values"), "{}", r.stderr);
    // The bash script is valid bash.
    let check = tokio::process::Command::new("bash")
        .args(["-n", "-c", &bash.stdout])
        .output()
        .await
        .expect("run bash -n");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

//! `faas up` safe by default, end to end over real sockets: basic auth on with a generated
//! password kept 0600 and reused, the client subcommands finding it, `--no-auth` as the
//! explicit way out, cross-site and DNS rebinding requests refused, failed logins
//! throttled, and SIGTERM/SIGINT draining in-flight calls before exiting 0.
//!
//! Every process runs with its own HOME, XDG_STATE_HOME and XDG_CONFIG_HOME under a temporary
//! directory, so nothing is read from or written to the user's own.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{eventually, Up};

use bytes::Bytes;
use faas_http::client::GatewayClient;
use faas_http::BasicAuth;
use http::Method;

/// A stack of two fork-mode functions: `echo` (cat) and `slow` (answers after 3 s).
const STACK: &str = r#"
functions:
  echo:
    image: faas-rs/echo
    fprocess: cat
  slow:
    image: faas-rs/slow
    fprocess: sh -c "cat >/dev/null; sleep 3; echo finished"
"#;

/// A temporary home for one test: the stack file, and the user directories.
struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let root = std::env::temp_dir().join(format!("faas-access-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("stack.yml"), STACK).unwrap();
        Sandbox { root }
    }

    /// The default state directory of `faas up` under this sandbox.
    fn state_dir(&self) -> PathBuf {
        self.root.join("state").join("faas-rs")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_faas"));
        c.env("HOME", self.root.join("home"))
            .env("XDG_STATE_HOME", self.root.join("state"))
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("RUST_LOG", "info")
            .env_remove("OPENFAAS_URL")
            .env_remove("OPENFAAS_USER")
            .env_remove("OPENFAAS_PASSWORD")
            .env_remove("FAAS_ALLOWED_HOSTS")
            .env_remove("FAAS_ALLOWED_ORIGINS")
            .env_remove("basic_auth");
        c
    }

    /// Starts `faas up` on a free port with `args`; its stderr goes to `up-N.log`.
    fn up(&self, args: &[&str]) -> Up {
        self.up_stack(&self.root.join("stack.yml"), args)
    }

    /// [`Sandbox::up`] with another stack file.
    fn up_stack(&self, stack: &Path, args: &[&str]) -> Up {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let n = std::fs::read_dir(&self.root).unwrap().count();
        let log = self.root.join(format!("up-{n}.log"));
        let child = self
            .command()
            .args(["up", "-f"])
            .arg(stack)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start faas up");
        Up { child: Some(child), base: format!("http://127.0.0.1:{port}"), log }
    }

    /// Runs a client subcommand against `gateway` with `stdin` as its input.
    fn faas(&self, gateway: &str, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .env("OPENFAAS_URL", gateway)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run faas");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Waits until the gateway answers `/healthz` (it listens once the stack is deployed).
async fn serving(up: &Up) -> GatewayClient {
    let client = GatewayClient::new(&up.base).unwrap().with_timeout(Duration::from_secs(30));
    eventually(60, "faas up serves", || async {
        let r = client.send(Method::GET, "/healthz", &[], Bytes::new()).await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;
    client
}

async fn get(client: &GatewayClient, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let h: Vec<(String, String)> =
        headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let r = client.send(Method::GET, path, &h, Bytes::new()).await.unwrap();
    (r.status.as_u16(), r.text())
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_up_generates_a_password_that_the_cli_finds_and_restarts_reuse() {
    let sb = Sandbox::new("fresh");
    let up = sb.up(&[]);
    let anon = serving(&up).await;
    let (status, body) = get(&anon, "/system/functions", &[]).await;
    assert_eq!(status, 401, "{body}");
    // Functions and health stay open, as in OpenFaaS (the README's curl).
    let r = anon.invoke("echo", Method::POST, &[], Bytes::from("hello world"), false).await;
    let r = r.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello world"));

    let password_file = sb.state_dir().join("basic-auth-password");
    #[cfg(unix)]
    {
        assert_eq!(mode(&password_file), 0o600);
        assert_eq!(mode(&sb.state_dir()), 0o700);
    }
    assert_eq!(std::fs::read_to_string(sb.state_dir().join("basic-auth-user")).unwrap(), "admin\n");
    let creds = BasicAuth::from_dir(&sb.state_dir()).unwrap();
    assert!(creds.password().len() >= 32);
    let admin = anon.clone().with_auth(Some(creds.clone()));
    let list = admin.list(None).await.unwrap();
    assert_eq!(list.len(), 2);
    // What faas up printed: where the password is and how to log in.
    let log = up.log();
    assert!(log.contains(&password_file.display().to_string()), "{log}");
    assert!(log.contains("faas login"), "{log}");

    // `faas list` with no flags (the gateway's URL as OPENFAAS_URL) finds the password.
    let out = sb.faas(&up.base, &["list"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("echo"));

    // A restart keeps the password.
    up.stop();
    let up = sb.up(&[]);
    let anon = serving(&up).await;
    assert_eq!(BasicAuth::from_dir(&sb.state_dir()).unwrap(), creds);
    assert_eq!(get(&anon, "/system/functions", &[]).await.0, 401);
    assert_eq!(anon.with_auth(Some(creds)).list(None).await.unwrap().len(), 2);
    assert!(up.log().contains("password kept"), "{}", up.log());
    up.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_opens_system_routes_but_cross_site_and_rebinding_stay_refused() {
    let sb = Sandbox::new("noauth");
    let up = sb.up(&["--no-auth", "--allowed-host", "faas.test"]);
    let anon = serving(&up).await;
    assert!(up.log().contains("--no-auth"), "{}", up.log());
    assert!(up.log().contains("WARN"), "{}", up.log());
    assert!(!sb.state_dir().join("basic-auth-password").exists());
    let (status, body) = get(&anon, "/system/functions", &[]).await;
    assert_eq!(status, 200, "{body}");

    // A web page elsewhere POSTing text/plain (no CORS preflight) to deploy a command.
    let spec = r#"{"service":"pwned","image":"x","envProcess":"sh -c id"}"#;
    let h = [
        ("content-type".to_string(), "text/plain".to_string()),
        ("origin".to_string(), "http://evil.example".to_string()),
    ];
    let r = anon.send(Method::POST, "/system/functions", &h, Bytes::from(spec)).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("cross-site"), "{}", r.text());
    assert_eq!(get(&anon, "/system/function/pwned", &[]).await.0, 404);

    // DNS rebinding: the attacker's name for 127.0.0.1.
    let (status, body) = get(&anon, "/system/functions", &[("host", "evil.example:8080")]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("evil.example"), "{body}");
    assert_eq!(get(&anon, "/ui/", &[("host", "evil.example")]).await.0, 403);
    // --allowed-host names are served.
    assert_eq!(get(&anon, "/system/functions", &[("host", "faas.test:8080")]).await.0, 200);
    up.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_passwords_get_429() {
    let sb = Sandbox::new("throttle");
    let up = sb.up(&[]);
    let anon = serving(&up).await;
    let wrong = anon.clone().with_auth(Some(BasicAuth::new("admin", "guess")));
    // The default allows 10 failures in a row.
    for i in 0..10 {
        let r = wrong.send(Method::GET, "/system/functions", &[], Bytes::new()).await.unwrap();
        assert_eq!(r.status, 401, "attempt {}: {}", i + 1, r.text());
    }
    let r = wrong.send(Method::GET, "/system/functions", &[], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 1, "{secs}");
    // Failed logins are logged with the client's address.
    let log = up.log();
    assert!(log.contains("failed login") && log.contains("client=127.0.0.1:"), "{log}");
    up.stop();
}

/// SIGTERM (or SIGINT) while a 3 s call is in flight: the gateway stops accepting
/// connections, the call still gets its 200, and the process exits 0.
async fn signal_drains_in_flight_calls(signal: &str) {
    let sb = Sandbox::new(&format!("drain-{signal}"));
    let up = sb.up(&["--shutdown-grace", "20s"]);
    let client = serving(&up).await;
    // Written before the gateway listens.
    let client = client.with_auth(Some(BasicAuth::from_dir(&sb.state_dir()).unwrap()));
    eventually(30, "slow is ready", || async {
        let f = client.describe("slow", None).await.ok()?;
        (f.available_replicas > 0).then_some(())
    })
    .await;
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client.invoke("slow", Method::POST, &[], Bytes::from("x"), false).await
        })
    };
    // In flight once the gateway counted it as started.
    eventually(30, "the slow call starts", || async {
        let (_, m) = get(&client, "/metrics", &[]).await;
        m.contains(r#"gateway_function_invocation_started{function_name="slow.openfaas-fn"} 1"#)
            .then_some(())
    })
    .await;
    up.signal(signal);
    let addr = up.base.trim_start_matches("http://").to_string();
    eventually(10, "the listener is closed", || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(&addr).await.is_err().then_some(()) }
    })
    .await;
    let r = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call is answered")
        .unwrap()
        .expect("the call is answered, not cut");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "finished");
    let mut up = up;
    let st = up.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "log:\n{}", up.log());
    assert!(up.log().contains(&format!("SIG{signal}: stopping")), "{}", up.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_and_exits_0() {
    signal_drains_in_flight_calls("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_in_flight_calls_and_exits_0() {
    signal_drains_in_flight_calls("INT").await;
}

/// A signal while `faas up` is still waiting for a function to become ready (up to 30 s)
/// cuts the start-up short: the function is removed and the process exits 0 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_stops_at_once_and_exits_0() {
    let sb = Sandbox::new("start");
    // An http-mode function whose process never listens: never ready.
    let stack = sb.root.join("never.yml");
    std::fs::write(
        &stack,
        "functions:\n  never:\n    image: faas-rs/never\n    fprocess: sleep 60\n    \
         environment:\n      mode: http\n",
    )
    .unwrap();
    let mut up = sb.up_stack(&stack, &["--no-auth"]);
    eventually(30, "faas up deploys", || async {
        up.log().contains("deploying never").then_some(())
    })
    .await;
    up.signal("TERM");
    let st = up.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "log:\n{}", up.log());
    assert!(up.log().contains("SIGTERM while starting"), "{}", up.log());
}

/// `faas up --scheduler NAME` reaches the process backend: with `hash` (OpenWhisk's home
/// invoker) every call of a function goes to its one home replica, where the default
/// (least-loaded, ties in rotation) spreads sequential calls over both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_routes_with_the_scheduler_it_is_given() {
    const WHO: &str = r#"
functions:
  who:
    image: faas-rs/who
    fprocess: printenv OPENFAAS_INSTANCE
    labels:
      com.openfaas.scale.min: "2"
      com.openfaas.scale.max: "2"
"#;
    let sandbox = Sandbox::new("scheduler");
    let stack = sandbox.root.join("who.yml");
    std::fs::write(&stack, WHO).unwrap();
    for (scheduler, distinct) in [("hash", 1), ("least-loaded", 2)] {
        let up = sandbox.up_stack(&stack, &["--no-auth", "--scheduler", scheduler]);
        let client = GatewayClient::new(&up.base).unwrap();
        eventually(30, "two ready replicas", || async {
            let st = client.describe("who", None).await.ok()?;
            (st.available_replicas == 2).then_some(())
        })
        .await;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let r = client.invoke("who", Method::POST, &[], Bytes::new(), false).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            seen.insert(r.text().trim().to_string());
        }
        assert_eq!(seen.len(), distinct, "{scheduler}: {seen:?}; log:\n{}", up.log());
        up.stop();
    }
}

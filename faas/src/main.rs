//! `faas`: run an OpenFaaS stack locally (`faas up -f stack.yml`) and talk to any
//! OpenFaaS-compatible gateway (`login`, `list`, `describe`, `deploy`, `invoke`, `remove`,
//! `logs`, `secret`, `scale`).

/// The binary's allocator (feature `mimalloc`, on by default): see `Cargo.toml`.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod credentials;
mod feeds;
mod progress;
mod whisk_cli;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use faas_core::prelude::*;
use faas_core::{Backend, Error, FunctionSpec, Result};
use faas_http::client::GatewayClient;
use faas_http::stack::Stack;
use faas_http::{BasicAuth, Gateway, GatewayConfig};
use http::Method;

/// The gateway the client subcommands talk to by default.
const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

#[derive(Parser)]
#[command(
    name = "faas",
    version,
    about = "faas-rs: run functions locally, talk to OpenFaaS-compatible gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct GatewayOpts {
    /// Gateway URL (env OPENFAAS_URL).
    #[arg(short = 'g', long, env = "OPENFAAS_URL", default_value = DEFAULT_GATEWAY)]
    gateway: String,
    /// Basic auth user (env OPENFAAS_USER; default admin when a password is given).
    #[arg(long, env = "OPENFAAS_USER")]
    user: Option<String>,
    /// Basic auth password (env OPENFAAS_PASSWORD). Without it: what `faas login` saved
    /// for the gateway, else, for a gateway on this machine, the password `faas up` keeps
    /// in its default state directory.
    #[arg(long, env = "OPENFAAS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Namespace (default: the gateway's).
    #[arg(short = 'n', long, env = "OPENFAAS_NAMESPACE")]
    namespace: Option<String>,
}

impl GatewayOpts {
    fn client(&self) -> Result<GatewayClient> {
        let auth =
            credentials::resolve(&self.gateway, self.user.as_deref(), self.password.as_deref())?;
        Ok(GatewayClient::new(&self.gateway)?.with_auth(auth))
    }
    fn ns(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendKind {
    /// Local processes behind the embedded watchdog (no Docker needed).
    Process,
    /// Docker containers.
    Docker,
    /// Docker Swarm services (the engine must be a swarm manager): placement constraints,
    /// replicas and rolling updates by the engine.
    Swarm,
    /// Kubernetes Deployments and Services in the cluster of `KUBECONFIG` (or
    /// `~/.kube/config`, or the pod's service account); invocations go to the pods'
    /// endpoints, so the gateway must run where pod IPs are reachable (in the cluster).
    Kubernetes,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the functions of a stack file on a local gateway.
    Up {
        /// The stack file [default: stack.yml, when there is one; without it the gateway
        /// starts with no functions, to deploy with `faas deploy`, `faas-cli` or `faas action
        /// create`].
        #[arg(short = 'f', long = "yaml")]
        file: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, env = "FAAS_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// The backend that runs the functions.
        #[arg(long, value_enum, default_value = "process")]
        backend: BackendKind,
        /// Directory of the gateway's credentials (`basic-auth-user`,
        /// `basic-auth-password`), its state store (`state.redb`: the durable queue's calls
        /// and records, and on the process backend the functions and secrets deployed
        /// through the API), of the process backend's files (secrets, logs) and of the
        /// Docker backend's instance id (`docker-instance`: the label that marks this
        /// gateway's containers, so a restart adopts them and other gateways' stay alone).
        /// Default: credentials, store and id in ~/.local/state/faas-rs, where `faas list` and
        /// the other client subcommands on this machine find them, and the process
        /// backend's files in a fresh temporary directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Serve without basic auth: anyone who can reach the gateway can deploy functions
        /// and so run commands as this user. Without it, `/system/*` and `/ui/` need the
        /// password generated on first start (or the OpenFaaS `basic_auth` variables).
        #[arg(long)]
        no_auth: bool,
        /// A host name (without port) clients may use for `/system/*` and `/ui/` besides IP
        /// addresses and localhost, e.g. the name of this machine (repeatable, comma
        /// separated; `*` for any). Other names are refused (DNS rebinding protection).
        #[arg(long = "allowed-host", env = "FAAS_ALLOWED_HOSTS", value_delimiter = ',')]
        allowed_hosts: Vec<String>,
        /// An origin (`https://faas.example.com`) whose pages may change state through
        /// `/system/*` besides the gateway's own, e.g. the public address of a proxy in
        /// front of it that rewrites Host (repeatable, comma separated).
        #[arg(long = "allowed-origin", env = "FAAS_ALLOWED_ORIGINS", value_delimiter = ',')]
        allowed_origins: Vec<String>,
        /// On SIGTERM or SIGINT, how long in-flight requests may take to finish before the
        /// gateway stops (`30s`, `1m`).
        #[arg(long, default_value = "30s", value_parser = parse_grace)]
        shutdown_grace: Duration,
        /// Only these functions (comma separated).
        #[arg(long, value_delimiter = ',')]
        filter: Vec<String>,
        /// Routing/placement strategy: least-loaded, hash, two-choices, best-fit, spread,
        /// warm-affinity.
        #[arg(long, default_value = "least-loaded")]
        scheduler: String,
        /// Do not run the autoscaler (driven by the `com.openfaas.scale.*` labels: OpenFaaS
        /// CE's request-rate rule, or Knative's KPA when a scale type or target is set).
        #[arg(long)]
        no_autoscale: bool,
        /// How long a function that allows scale to zero (`com.openfaas.scale.zero=true`)
        /// but sets no `com.openfaas.scale.zero-duration` stays idle before it goes to zero
        /// (`30s`, `5m`; faas-idler's `inactivity_duration` in OpenFaaS). Default 15m.
        #[arg(long, value_parser = parse_grace)]
        scale_to_zero_after: Option<Duration>,
        /// Where `/async-function` queues calls: `durable` (in-process queue and worker,
        /// every accepted call on disk in the state directory before its 202, run after a
        /// restart if it had not finished), `memory` (the same, lost on a restart) or
        /// `kafka://HOST:PORT[,HOST:PORT...][/TOPIC]` (TOPIC default `faas-async`; needs a
        /// faas built with `--features kafka`). With Kafka, activation records go to the
        /// compacted topic `TOPIC-activations`, shared with `faas-queue-worker`.
        #[arg(long, env = "FAAS_QUEUE", default_value = "durable", value_name = "URL")]
        queue: faas_http::queue::QueueUrl,
        /// The Kafka topic of activation records (default `TOPIC-activations`; same
        /// variable as faas-queue-worker's).
        #[arg(long, env = "FAAS_QUEUE_ACTIVATIONS_TOPIC", value_name = "TOPIC")]
        activations_topic: Option<String>,
        /// With a Kafka queue, run no worker in this process: an external
        /// `faas-queue-worker` consumes the topic.
        #[arg(long)]
        no_worker: bool,
        /// A librdkafka property KEY=VALUE for the Kafka queue (repeatable).
        #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
        kafka_properties: Vec<String>,
        /// With a Kafka queue, do not create its missing topics (by default the calls' and
        /// the records' topics are created with 8 partitions, the records' compacted, and
        /// the dead letters' with 1, at start and again when the cluster comes back without
        /// them; existing topics are left as they are).
        #[arg(long)]
        no_create_topics: bool,
        /// The most replicas one function may ask for (default 8 x CPUs, at least 20, at
        /// most the node cap); scaling labels or scale requests over it are refused (400).
        #[arg(long, env = "FAAS_MAX_REPLICAS_PER_FUNCTION", value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..))]
        max_replicas_per_function: Option<u32>,
        /// The most replicas running on the node over all functions (default total memory
        /// / 64 MiB).
        #[arg(long, env = "FAAS_MAX_REPLICAS_PER_NODE", value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..))]
        max_replicas_per_node: Option<u32>,
        /// The most activation records kept (the OpenWhisk API's `/activations`; the
        /// oldest go first; kept in the state store across restarts).
        #[arg(long, env = "FAAS_MAX_ACTIVATIONS", value_name = "N", default_value_t = 100_000,
              value_parser = clap::value_parser!(u64).range(1..))]
        max_activations: u64,
        /// Give every invocation an activation record (OpenFaaS routes and async calls
        /// too), not only the OpenWhisk API's calls; costs the invocation path some work.
        #[arg(long, env = "FAAS_RECORD_EVERY_INVOCATION")]
        record_every_invocation: bool,
        /// Keep N stem cells of the OpenWhisk kind KIND (`python:3`, `nodejs:20`): runtimes
        /// started but not yet initialised, which the first instance of an action of that
        /// kind takes (`/init` with its code) instead of starting cold; refilled in the
        /// background. Repeatable, one kind each; N from 0 to 64. Process backend (the kind's
        /// local interpreter) and Docker backend (the kind's image, `runtimes/build-images.sh`).
        #[arg(long = "stem-cells", value_name = "KIND=N")]
        stem_cells: Vec<String>,
        /// The watchdog program the process backend starts for each replica (default: this
        /// executable's `watchdog` subcommand). The standalone `faas-watchdog` built from the
        /// same source keeps about 0.6 MiB less private memory per replica (BENCHMARKS.md).
        #[arg(long, env = "FAAS_WATCHDOG", value_name = "PROGRAM")]
        watchdog: Option<PathBuf>,
        /// Run every `http`-mode replica of the process backend behind a watchdog process, as
        /// OpenFaaS does. By default such a replica is the function's process alone and the
        /// gateway relays to it, applying the timeout, `maxConcurrency` and the request log
        /// line itself (a function setting a watchdog-only variable such as `max_inflight`
        /// still gets one).
        #[arg(long)]
        http_watchdog: bool,
        /// Run every `lambda`-mode replica of the process backend behind a watchdog process.
        /// By default the gateway runs such a replica's Lambda runtimes itself and serves
        /// their Runtime API (a function setting a watchdog-only variable such as
        /// `max_inflight` still gets one).
        #[arg(long)]
        lambda_watchdog: bool,
    },
    /// Check credentials against a gateway and save them (mode 0600) for the other
    /// subcommands.
    Login {
        /// Gateway URL (env OPENFAAS_URL).
        #[arg(short = 'g', long, env = "OPENFAAS_URL", default_value = DEFAULT_GATEWAY)]
        gateway: String,
        /// User name.
        #[arg(short = 'u', long, alias = "user", default_value = faas_http::auth::DEFAULT_USER)]
        username: String,
        /// The password (visible to other users in the process list: prefer
        /// --password-stdin).
        #[arg(short = 'p', long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from stdin (`faas login --password-stdin < basic-auth-password`).
        #[arg(short = 's', long)]
        password_stdin: bool,
    },
    /// Forget the credentials `faas login` saved for a gateway.
    Logout {
        /// Gateway URL (env OPENFAAS_URL).
        #[arg(short = 'g', long, env = "OPENFAAS_URL", default_value = DEFAULT_GATEWAY)]
        gateway: String,
    },
    /// List functions.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        gw: GatewayOpts,
        /// Also show image and availability.
        #[arg(short, long)]
        verbose: bool,
        /// Print the gateway's JSON (an array of function statuses) instead of a table.
        #[arg(long, conflicts_with = "verbose")]
        json: bool,
    },
    /// Show one function.
    Describe {
        /// Function name.
        name: String,
        #[command(flatten)]
        gw: GatewayOpts,
        /// Print the gateway's JSON (the function's status) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Deploy the functions of a stack file, or one function from flags.
    Deploy {
        #[command(flatten)]
        gw: GatewayOpts,
        /// Stack file.
        #[arg(short = 'f', long = "yaml")]
        file: Option<PathBuf>,
        /// Only these functions of the stack file (comma separated).
        #[arg(long, value_delimiter = ',')]
        filter: Vec<String>,
        /// Function name (without a stack file).
        #[arg(long)]
        name: Option<String>,
        /// Image.
        #[arg(long)]
        image: Option<String>,
        /// The process to run (fprocess).
        #[arg(long)]
        fprocess: Option<String>,
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Label KEY=VALUE (repeatable).
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        /// Annotation KEY=VALUE (repeatable).
        #[arg(long = "annotation")]
        annotations: Vec<String>,
        /// Secret name (repeatable).
        #[arg(long = "secret")]
        secrets: Vec<String>,
        /// Constraint (repeatable).
        #[arg(long = "constraint")]
        constraints: Vec<String>,
        /// Wait until each function has a ready replica (a spinner on a terminal, a line
        /// per function otherwise); fail if one is not ready within --timeout.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits for each function.
        #[arg(long, default_value = "60s", value_parser = parse_grace, requires = "wait")]
        timeout: Duration,
    },
    /// Invoke a function with stdin as the body.
    Invoke {
        /// Function name (`name` or `name.namespace`).
        name: String,
        #[command(flatten)]
        gw: GatewayOpts,
        /// Queue the call (202 and an X-Call-Id) instead of waiting.
        #[arg(short = 'a', long = "async")]
        async_: bool,
        /// Where the gateway POSTs the async result.
        #[arg(long)]
        callback_url: Option<String>,
        /// HTTP method.
        #[arg(short = 'm', long, default_value = "POST")]
        method: String,
        /// Header KEY=VALUE (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Content-Type.
        #[arg(long, default_value = "text/plain")]
        content_type: String,
        /// Body (instead of stdin).
        #[arg(short = 'd', long)]
        data: Option<String>,
        /// Print the status and headers too.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Remove functions (by name, or every function of a stack file).
    #[command(alias = "rm", alias = "delete")]
    Remove {
        /// Function names.
        names: Vec<String>,
        #[command(flatten)]
        gw: GatewayOpts,
        /// Stack file.
        #[arg(short = 'f', long = "yaml")]
        file: Option<PathBuf>,
    },
    /// Print a function's logs.
    Logs {
        /// Function name.
        name: String,
        #[command(flatten)]
        gw: GatewayOpts,
        /// Keep streaming new lines.
        #[arg(long, default_value_t = false)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// One JSON object per line (`name`, `namespace`, `instance`, `timestamp`, `text`).
        #[arg(long)]
        json: bool,
    },
    /// Manage secrets.
    Secret {
        #[command(subcommand)]
        action: SecretCmd,
    },
    /// Set a function's replica count.
    Scale {
        /// Function name.
        name: String,
        #[command(flatten)]
        gw: GatewayOpts,
        /// Replicas.
        #[arg(short = 'r', long)]
        replicas: u32,
    },
    /// Print the Kubernetes manifests (Deployment + Service per function) of a stack file,
    /// for review or `kubectl apply -f -`.
    Generate {
        /// The stack file.
        #[arg(short = 'f', long = "yaml", default_value = "stack.yml")]
        file: PathBuf,
        /// Namespace for functions that name none.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "yaml")]
        format: ManifestFormatArg,
        /// Only these functions (comma separated).
        #[arg(long, value_delimiter = ',')]
        filter: Vec<String>,
    },
    /// OpenWhisk actions (the gateway's /api/v1), as `wsk action`.
    Action {
        #[command(flatten)]
        ow: whisk_cli::WhiskOpts,
        #[command(subcommand)]
        cmd: whisk_cli::ActionCmd,
    },
    /// OpenWhisk triggers, as `wsk trigger`.
    Trigger {
        #[command(flatten)]
        ow: whisk_cli::WhiskOpts,
        #[command(subcommand)]
        cmd: whisk_cli::TriggerCmd,
    },
    /// OpenWhisk rules, as `wsk rule`.
    Rule {
        #[command(flatten)]
        ow: whisk_cli::WhiskOpts,
        #[command(subcommand)]
        cmd: whisk_cli::RuleCmd,
    },
    /// OpenWhisk activation records (of every invocation), as `wsk activation`.
    Activation {
        #[command(flatten)]
        ow: whisk_cli::WhiskOpts,
        #[command(subcommand)]
        cmd: whisk_cli::ActivationCmd,
    },
    /// OpenWhisk packages, as `wsk package`.
    Package {
        #[command(flatten)]
        ow: whisk_cli::WhiskOpts,
        #[command(subcommand)]
        cmd: whisk_cli::PackageCmd,
    },
    /// Print a shell completion script, e.g. `faas completion bash >
    /// ~/.local/share/bash-completion/completions/faas`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Run the watchdog (used by the process backend; reads the OpenFaaS watchdog env vars).
    #[command(hide = true)]
    Watchdog,
}

#[derive(Clone, Copy, ValueEnum)]
enum ManifestFormatArg {
    /// Multi-document YAML.
    Yaml,
    /// One JSON `v1` `List`.
    Json,
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Create a secret (value from --from-literal, --from-file or stdin).
    Create {
        /// Secret name.
        name: String,
        #[command(flatten)]
        gw: GatewayOpts,
        /// The value.
        #[arg(long)]
        from_literal: Option<String>,
        /// Read the value from a file.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Replace a secret's value.
    Update {
        /// Secret name.
        name: String,
        #[command(flatten)]
        gw: GatewayOpts,
        /// The value.
        #[arg(long)]
        from_literal: Option<String>,
        /// Read the value from a file.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// List secrets.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        gw: GatewayOpts,
        /// Print the gateway's JSON (an array of `{"name","namespace"}`).
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret.
    #[command(alias = "rm")]
    Remove {
        /// Secret name.
        name: String,
        #[command(flatten)]
        gw: GatewayOpts,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Watchdog = cli.command {
        return faas_watchdog::watchdog::main_from_env();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `value` as pretty JSON on stdout (what `--json` gives: the gateway's own fields).
fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::internal(format!("encoding JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Waits, at most `timeout`, until the gateway lists a ready replica of `spec`'s function,
/// showing progress; the error says what to look at next.
async fn wait_ready(client: &GatewayClient, spec: &FunctionSpec, timeout: Duration) -> Result<()> {
    let step = progress::Step::start(format!("Waiting for {}", spec.name));
    let t0 = Instant::now();
    let backoff = faas_core::util::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut retry = 0u32;
    loop {
        retry = retry.saturating_add(1);
        let st = client.describe(&spec.name, spec.namespace.as_deref()).await;
        match st {
            Ok(st) if st.available_replicas > 0 => {
                step.finish(&format!("ready in {} ms", t0.elapsed().as_millis()));
                return Ok(());
            }
            Ok(st) if st.pull.is_some() => {
                if let Some(p) = &st.pull {
                    step.note(&format!(
                        "pulling {}: {} of {} bytes",
                        p.image, p.downloaded_bytes, p.total_bytes
                    ));
                }
            }
            Ok(st) => {
                if let Some(f) = &st.failure {
                    step.finish("failing");
                    return Err(Error::unavailable(format!(
                        "{} cannot start: {} (see `faas logs {}`)",
                        spec.name, f.reason, spec.name
                    )));
                }
                step.note(&format!("{} of {} replicas ready", st.available_replicas, st.replicas));
            }
            Err(Error::NotFound { .. }) => step.note("not listed yet"),
            Err(e) => {
                step.finish("failed");
                return Err(e);
            }
        }
        if t0.elapsed() >= timeout {
            step.finish("not ready");
            return Err(Error::unavailable(format!(
                "{} has no ready replica after {} ms; it keeps starting: see `faas describe {}` \
                 and `faas logs {}`, or wait longer with --timeout",
                spec.name,
                t0.elapsed().as_millis(),
                spec.name,
                spec.name
            )));
        }
        let left = timeout.saturating_sub(t0.elapsed());
        tokio::time::sleep(backoff.delay(retry).min(left)).await;
    }
}

fn parse_grace(s: &str) -> std::result::Result<Duration, String> {
    faas_core::util::parse_duration(s)
}

fn kv(items: &[String], what: &str) -> Result<std::collections::BTreeMap<String, String>> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Error::invalid(what, format!("{s:?} is not KEY=VALUE")))
        })
        .collect()
}

/// The most stem cells of one kind (the backends' own cap).
const MAX_STEM_CELLS: usize = 64;

/// `--stem-cells KIND=N` values: a kind of the runtime manifest with a runtime of its own
/// (not `blackbox`), given once, and N from 0 to [`MAX_STEM_CELLS`]; only on the process and
/// Docker backends. Errors name the flag.
fn parse_stem_cells(items: &[String], backend: BackendKind) -> Result<Vec<(String, usize)>> {
    const FLAG: &str = "--stem-cells";
    if !items.is_empty() && !matches!(backend, BackendKind::Process | BackendKind::Docker) {
        return Err(Error::invalid(FLAG, "stem cells are kept on the process and Docker backends"));
    }
    let mut out: Vec<(String, usize)> = Vec::new();
    for item in items {
        let (kind, n) = item
            .split_once('=')
            .map(|(k, n)| (k.trim(), n.trim()))
            .ok_or_else(|| Error::invalid(FLAG, format!("{item:?} is not KIND=N")))?;
        let known = faas_core::runtimes::lookup(kind).filter(|k| k.process.is_some());
        if known.is_none() {
            let kinds: Vec<&str> = faas_core::runtimes::MANIFEST
                .iter()
                .filter(|k| k.process.is_some())
                .map(|k| k.kind)
                .collect();
            return Err(Error::invalid(
                FLAG,
                format!(
                    "{kind:?} is not an OpenWhisk kind with a runtime of its own ({})",
                    kinds.join(", ")
                ),
            ));
        }
        let n = n.parse::<usize>().ok().filter(|n| *n <= MAX_STEM_CELLS).ok_or_else(|| {
            Error::invalid(
                FLAG,
                format!("{n:?} in {item:?} is not a number from 0 to {MAX_STEM_CELLS}"),
            )
        })?;
        if out.iter().any(|(k, _)| k == kind) {
            return Err(Error::invalid(FLAG, format!("{kind} is given twice")));
        }
        out.push((kind.to_string(), n));
    }
    Ok(out)
}

/// A backend's `stem_cells` error, named as the flag that set it.
fn stem_cells_flag(e: Error) -> Error {
    match e {
        Error::InvalidSpec { field, reason } if field == "stem_cells" => {
            Error::invalid("--stem-cells", reason)
        }
        e => e,
    }
}

fn stack_specs(file: &std::path::Path, filter: &[String]) -> Result<Vec<FunctionSpec>> {
    let stack = Stack::load(file)?;
    let mut specs = stack.specs()?;
    if !filter.is_empty() {
        specs.retain(|s| filter.contains(&s.name));
        if specs.is_empty() {
            return Err(Error::invalid(
                "filter",
                format!("no function of {} matches {filter:?}", file.display()),
            ));
        }
    }
    Ok(specs)
}

fn secret_value(from_literal: Option<String>, from_file: Option<PathBuf>) -> Result<Vec<u8>> {
    if let Some(v) = from_literal {
        return Ok(v.into_bytes());
    }
    if let Some(p) = from_file {
        return std::fs::read(&p)
            .map_err(|e| Error::invalid("from-file", format!("{}: {e}", p.display())));
    }
    if std::io::stdin().is_terminal() {
        eprintln!("Reading the secret value from stdin (end with Ctrl-D)...");
    }
    let mut buf = Vec::new();
    std::io::stdin().read_to_end(&mut buf).map_err(|e| Error::invalid("stdin", e.to_string()))?;
    Ok(buf)
}

/// Runs an OpenWhisk verb: exit 1 when an invoked action failed.
async fn whisk(ow: &whisk_cli::WhiskOpts, cmd: whisk_cli::WhiskCmd) -> Result<ExitCode> {
    Ok(if whisk_cli::run(ow, cmd).await? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Up {
            file,
            listen,
            backend,
            state_dir,
            filter,
            scheduler,
            no_autoscale,
            scale_to_zero_after,
            queue,
            activations_topic,
            no_worker,
            kafka_properties,
            no_create_topics,
            no_auth,
            allowed_hosts,
            allowed_origins,
            shutdown_grace,
            max_replicas_per_function,
            max_replicas_per_node,
            max_activations,
            record_every_invocation,
            stem_cells,
            watchdog,
            http_watchdog,
            lambda_watchdog,
        } => {
            // Before anything starts: a Kafka queue needs the `kafka` feature.
            queue.check()?;
            let scheduler = faas_core::scheduler_for(&scheduler)?;
            let access = UpAccess {
                state_dir: state_dir.clone(),
                no_auth,
                allowed_hosts,
                allowed_origins,
                shutdown_grace,
                max_activations: usize::try_from(max_activations).unwrap_or(usize::MAX),
                record_every_invocation,
            };
            let limits = replica_limits(max_replicas_per_function, max_replicas_per_node);
            let stem_cells = parse_stem_cells(&stem_cells, backend)?;
            let backend = UpBackend {
                kind: backend,
                stem_cells,
                watchdog: ProcessWatchdog {
                    program: watchdog,
                    http: http_watchdog,
                    lambda: lambda_watchdog,
                },
                state_dir,
                scheduler,
                autoscale: !no_autoscale,
                idle_timeout: scale_to_zero_after,
                limits,
            };
            let queue = UpQueue {
                url: queue,
                options: faas_http::queue::QueueOptions {
                    activations_topic,
                    run_worker: !no_worker,
                    kafka_properties: kv(&kafka_properties, "kafka-property")?
                        .into_iter()
                        .collect(),
                    create_topics: !no_create_topics,
                },
            };
            up(file, listen, backend, filter, queue, access).await?;
        }
        Command::Action { ow, cmd } => return whisk(&ow, whisk_cli::WhiskCmd::Action(cmd)).await,
        Command::Trigger { ow, cmd } => return whisk(&ow, whisk_cli::WhiskCmd::Trigger(cmd)).await,
        Command::Rule { ow, cmd } => return whisk(&ow, whisk_cli::WhiskCmd::Rule(cmd)).await,
        Command::Activation { ow, cmd } => {
            return whisk(&ow, whisk_cli::WhiskCmd::Activation(cmd)).await
        }
        Command::Package { ow, cmd } => return whisk(&ow, whisk_cli::WhiskCmd::Package(cmd)).await,
        Command::Login { gateway, username, password, password_stdin } => {
            let password = match (password, password_stdin) {
                (Some(p), _) => {
                    eprintln!(
                        "warning: --password is visible to other users of this machine; \
                         prefer --password-stdin"
                    );
                    p
                }
                (None, true) => {
                    if std::io::stdin().is_terminal() {
                        eprintln!("Reading the password from stdin (end with Ctrl-D)...");
                    }
                    let mut buf = String::new();
                    std::io::stdin()
                        .read_to_string(&mut buf)
                        .map_err(|e| Error::invalid("password-stdin", e.to_string()))?;
                    buf.trim().to_string()
                }
                (None, false) => {
                    return Err(Error::invalid(
                        "password",
                        "give --password-stdin (the password on stdin) or --password",
                    ))
                }
            };
            if password.is_empty() {
                return Err(Error::invalid("password", "the password is empty"));
            }
            let auth = BasicAuth::new(username, password);
            let client = GatewayClient::new(&gateway)?.with_auth(Some(auth.clone()));
            // Checked before saving, as faas-cli does: a wrong password is never kept.
            client.list(None).await.map_err(|e| match e {
                Error::InvalidSpec { field, .. } if field == "credentials" => Error::invalid(
                    "credentials",
                    format!("{gateway} refused user {:?} with this password", auth.user()),
                ),
                e => e,
            })?;
            let path = credentials::save(&gateway, &auth)?;
            println!(
                "Logged in to {gateway} as {}; credentials saved in {}",
                auth.user(),
                path.display()
            );
        }
        Command::Logout { gateway } => {
            if credentials::forget(&gateway)? {
                println!("Forgot the credentials saved for {gateway}");
            } else {
                println!("No credentials were saved for {gateway}");
            }
        }
        Command::List { gw, verbose, json } => {
            let list = gw.client()?.list(gw.ns()).await?;
            if json {
                print_json(&list)?;
            } else if verbose {
                println!(
                    "{:<28} {:<36} {:>12} {:>9} {:>9}",
                    "Function", "Image", "Invocations", "Replicas", "Available"
                );
                for f in list {
                    println!(
                        "{:<28} {:<36} {:>12} {:>9} {:>9}",
                        f.name, f.image, f.invocation_count, f.replicas, f.available_replicas
                    );
                }
            } else {
                println!("{:<28} {:>12} {:>9}", "Function", "Invocations", "Replicas");
                for f in list {
                    println!("{:<28} {:>12} {:>9}", f.name, f.invocation_count, f.replicas);
                }
            }
        }
        Command::Describe { name, gw, json } => {
            let f = gw.client()?.describe(&name, gw.ns()).await?;
            if json {
                print_json(&f)?;
                return Ok(ExitCode::SUCCESS);
            }
            let status = if f.available_replicas > 0 { "Ready" } else { "Not Ready" };
            println!("Name:               {}", f.name);
            println!("Namespace:          {}", f.namespace);
            println!("Status:             {status}");
            println!("Replicas:           {}", f.replicas);
            println!("Available replicas: {}", f.available_replicas);
            println!("Invocations:        {}", f.invocation_count);
            println!("Image:              {}", f.image);
            println!("Process:            {}", f.env_process.as_deref().unwrap_or(""));
            println!(
                "URL:                {}/function/{}.{}",
                gw.gateway.trim_end_matches('/'),
                f.name,
                f.namespace
            );
            if !f.labels.is_empty() {
                println!("Labels:             {:?}", f.labels);
            }
            if !f.annotations.is_empty() {
                println!("Annotations:        {:?}", f.annotations);
            }
            if !f.env_vars.is_empty() {
                println!("Environment:        {:?}", f.env_vars);
            }
            if !f.secrets.is_empty() {
                println!("Secrets:            {}", f.secrets.join(", "));
            }
        }
        Command::Deploy {
            gw,
            file,
            filter,
            name,
            image,
            fprocess,
            env,
            labels,
            annotations,
            secrets,
            constraints,
            wait,
            timeout,
        } => {
            let client = gw.client()?;
            let mut specs = match (&file, &name) {
                (Some(f), _) => stack_specs(f, &filter)?,
                (None, Some(n)) => {
                    let mut s =
                        FunctionSpec::new(n.clone(), image.clone().unwrap_or_else(|| n.clone()));
                    s.env_process = fprocess.clone();
                    s.env_vars = kv(&env, "env")?;
                    s.labels = kv(&labels, "label")?;
                    s.annotations = kv(&annotations, "annotation")?;
                    s.secrets = secrets.clone();
                    s.constraints = constraints.clone();
                    s.validate()?;
                    vec![s]
                }
                (None, None) => {
                    return Err(Error::invalid(
                        "yaml",
                        "give a stack file with -f or a function with --name",
                    ))
                }
            };
            for s in &mut specs {
                if s.namespace.is_none() {
                    s.namespace = gw.namespace.clone();
                }
                print!("Deploying: {} ... ", s.name);
                let _ = std::io::stdout().flush();
                let t0 = Instant::now();
                // A backend that pulls the image reports the pull in the function's status
                // while the deploy waits for it (the Docker backend): shown as it goes.
                let mut pull = None;
                let label = format!("Pulling the image of {}", s.name);
                let (name, ns) = (s.name.clone(), s.namespace.clone());
                let deployed =
                    progress::showing_pull(&mut pull, &label, client.deploy(s), || {
                        let (client, name, ns) = (&client, &name, &ns);
                        async move {
                            client.describe(name, ns.as_deref()).await.ok().and_then(|st| st.pull)
                        }
                    })
                    .await;
                if let Some(step) = pull {
                    step.finish(if deployed.is_ok() { "done" } else { "failed" });
                }
                let updated = deployed?;
                println!(
                    "{} in {} ms",
                    if updated { "updated" } else { "deployed" },
                    t0.elapsed().as_millis()
                );
                println!("URL: {}/function/{}", client.base(), s.name);
            }
            if wait {
                for s in &specs {
                    wait_ready(&client, s, timeout).await?;
                }
            }
        }
        Command::Invoke {
            name,
            gw,
            async_,
            callback_url,
            method,
            headers,
            content_type,
            data,
            verbose,
        } => {
            let client = gw.client()?;
            let method = Method::from_bytes(method.as_bytes())
                .map_err(|e| Error::invalid("method", e.to_string()))?;
            let mut h: Vec<(String, String)> = kv(&headers, "header")?.into_iter().collect();
            h.push(("content-type".into(), content_type));
            if let Some(cb) = callback_url {
                h.push(("x-callback-url".into(), cb));
            }
            let body = match data {
                Some(d) => Bytes::from(d),
                None if method == Method::GET => Bytes::new(),
                None => {
                    if std::io::stdin().is_terminal() {
                        eprintln!("Reading the request body from stdin (end with Ctrl-D)...");
                    }
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .map_err(|e| Error::invalid("stdin", e.to_string()))?;
                    Bytes::from(buf)
                }
            };
            let name = match gw.ns() {
                Some(ns) if !name.contains('.') => format!("{name}.{ns}"),
                _ => name,
            };
            let r = client.invoke(&name, method, &h, body, async_).await?;
            if verbose || async_ {
                eprintln!("{}", r.status);
                let mut keys: Vec<_> = r.headers.iter().collect();
                keys.sort_by_key(|(k, _)| k.as_str());
                for (k, v) in keys {
                    if verbose || k.as_str() == "x-call-id" {
                        eprintln!("{k}: {}", v.to_str().unwrap_or("<binary>"));
                    }
                }
            }
            std::io::stdout().write_all(&r.body).map_err(|e| Error::internal(e.to_string()))?;
            if !r.status.is_success() {
                eprintln!("Server returned unexpected status code: {}", r.status.as_u16());
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Remove { names, gw, file } => {
            let client = gw.client()?;
            let mut all = names;
            if let Some(f) = file {
                all.extend(stack_specs(&f, &[])?.into_iter().map(|s| s.name));
            }
            if all.is_empty() {
                return Err(Error::invalid("name", "give function names or a stack file with -f"));
            }
            for n in all {
                print!("Deleting: {n} ... ");
                let _ = std::io::stdout().flush();
                match client.remove(&n, gw.ns()).await {
                    Ok(()) => println!("removed"),
                    Err(Error::NotFound { .. }) => println!("not found"),
                    Err(e) => return Err(e),
                }
            }
        }
        Command::Logs { name, gw, follow, tail, json } => {
            let client = gw.client()?.with_timeout(if follow {
                Duration::from_secs(365 * 24 * 3600)
            } else {
                Duration::from_secs(120)
            });
            let mut out = std::io::stdout();
            client
                .logs(&name, gw.ns(), tail, follow, |e| {
                    if json {
                        if let Ok(line) = serde_json::to_string(&e) {
                            let _ = writeln!(out, "{line}");
                        }
                        return;
                    }
                    let _ = writeln!(
                        out,
                        "{} {} ({}) {}",
                        faas_core::spec::rfc3339::format(e.timestamp),
                        e.name,
                        e.instance,
                        e.text
                    );
                })
                .await?;
        }
        Command::Secret { action } => match action {
            SecretCmd::Create { name, gw, from_literal, from_file } => {
                let v = secret_value(from_literal, from_file)?;
                gw.client()?.create_secret(&name, gw.ns(), &v, false).await?;
                println!("Created: {name}");
            }
            SecretCmd::Update { name, gw, from_literal, from_file } => {
                let v = secret_value(from_literal, from_file)?;
                gw.client()?.create_secret(&name, gw.ns(), &v, true).await?;
                println!("Updated: {name}");
            }
            SecretCmd::List { gw, json } if json => {
                print_json(&gw.client()?.list_secrets(gw.ns()).await?)?;
            }
            SecretCmd::List { gw, .. } => {
                println!("NAME");
                for s in gw.client()?.list_secrets(gw.ns()).await? {
                    println!("{}", s.name);
                }
            }
            SecretCmd::Remove { name, gw } => {
                gw.client()?.remove_secret(&name, gw.ns()).await?;
                println!("Removed: {name}");
            }
        },
        Command::Scale { name, gw, replicas } => {
            gw.client()?.scale(&name, gw.ns(), replicas).await?;
            println!("Scaled {name} to {replicas} replica(s)");
        }
        Command::Generate { file, namespace, format, filter } => {
            let specs = stack_specs(&file, &filter)?;
            let mut opts = faas_backend_k8s::ManifestOptions::new().format(match format {
                ManifestFormatArg::Yaml => faas_backend_k8s::ManifestFormat::Yaml,
                ManifestFormatArg::Json => faas_backend_k8s::ManifestFormat::JsonList,
            });
            if let Some(ns) = namespace {
                opts = opts.namespace(ns);
            }
            print!("{}", faas_backend_k8s::render_manifests(&specs, &opts)?);
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "faas", &mut std::io::stdout());
        }
        Command::Watchdog => unreachable!("handled before the runtime starts"),
    }
    Ok(ExitCode::SUCCESS)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Who `faas up` lets in, and how it stops.
struct UpAccess {
    state_dir: Option<PathBuf>,
    no_auth: bool,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    shutdown_grace: Duration,
    /// The most activation records kept.
    max_activations: usize,
    /// Whether every invocation gets an activation record.
    record_every_invocation: bool,
}

/// What `faas up` prints about access: a summary after the gateway's URL, and lines below.
struct AccessNote {
    summary: String,
    details: Vec<String>,
}

/// `s` as one shell word: unchanged when it is made of safe characters, else in single
/// quotes.
fn shell_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:@,=~".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How `faas up` protects `/system/*` and `/ui/`, and what it prints about it.
fn up_access(config: &mut GatewayConfig, access: &UpAccess, base: &str) -> Result<AccessNote> {
    config.cross_site.allowed_hosts.extend(access.allowed_hosts.iter().cloned());
    config.cross_site.allowed_origins.extend(access.allowed_origins.iter().cloned());
    config.record_every_invocation = access.record_every_invocation;
    if access.no_auth {
        config.auth = None;
        tracing::warn!(
            "basic auth is off (--no-auth): anyone who can reach {base} can deploy functions \
             and so run commands as this user"
        );
        return Ok(AccessNote { summary: "basic auth OFF (--no-auth)".into(), details: vec![] });
    }
    if config.auth.is_some() {
        // OpenFaaS's `basic_auth=true` with its user and password variables or files.
        return Ok(AccessNote {
            summary: "basic auth on, credentials from the basic_auth variables".into(),
            details: vec![],
        });
    }
    let default_dir = credentials::default_state_dir();
    let dir = access.state_dir.clone().or(default_dir.clone()).ok_or_else(|| {
        Error::invalid(
            "state-dir",
            "no state directory for the gateway's password (is HOME set?): give --state-dir",
        )
    })?;
    let stored = faas_http::BasicAuth::load_or_create(&dir)?;
    let file = stored.password_file.display().to_string();
    let summary = format!(
        "basic auth on: user {}, password {} in {file}",
        stored.auth.user(),
        if stored.created { "generated" } else { "kept" }
    );
    let mut details = vec![
        format!("Log in:  faas login -g {base} --password-stdin < {}", shell_word(&file)),
        "         (faas-cli login takes the same flags)".to_string(),
    ];
    if default_dir.as_deref() == Some(dir.as_path()) {
        details.push(
            "         faas list and the other subcommands on this machine find it themselves"
                .into(),
        );
    }
    config.auth = Some(stored.auth);
    Ok(AccessNote { summary, details })
}

/// The OpenWhisk key `faas up` accepts (kept in the state directory, generated on first
/// start), or none with `--no-auth`.
fn whisk_access(access: &UpAccess) -> Result<Option<(faas_http::WhiskKey, PathBuf)>> {
    if access.no_auth {
        return Ok(None);
    }
    let dir =
        access.state_dir.clone().or_else(credentials::default_state_dir).ok_or_else(|| {
            Error::invalid(
                "state-dir",
                "no state directory for the OpenWhisk key (is HOME set?): give --state-dir",
            )
        })?;
    faas_http::WhiskKey::load_or_create(&dir).map(Some)
}

/// Resolves on the first SIGTERM (what Docker, Kubernetes and systemd send) or SIGINT
/// (Ctrl-C), naming it. Handlers are installed by this call, before anything awaits.
fn stop_signal() -> Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handler = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| Error::internal(format!("cannot handle {name}: {e}")))
        };
        let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
        let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}

/// How `faas up` queues async calls.
struct UpQueue {
    url: faas_http::queue::QueueUrl,
    options: faas_http::queue::QueueOptions,
}

/// The state store in `dir` (the redb file of `faas-queue`'s `durable` feature).
#[cfg(feature = "durable")]
fn open_state_store(dir: &std::path::Path) -> Result<Arc<dyn faas_core::state::StateStore>> {
    Ok(Arc::new(faas_queue::redb_store::RedbStore::open_dir(dir)?))
}

/// Without the `durable` feature there is no state store.
#[cfg(not(feature = "durable"))]
fn open_state_store(_dir: &std::path::Path) -> Result<Arc<dyn faas_core::state::StateStore>> {
    Err(Error::NotSupported {
        operation: "the state store (--queue durable, functions kept across restarts): this \
                    faas was built without the `durable` feature; use --queue memory"
            .into(),
    })
}

/// The state store `faas up` keeps its queue, functions and secrets in: needed by the
/// durable queue and by a backend that forgets its functions when it stops (the process
/// backend), in the state directory (`--state-dir`, else the default one).
fn up_state_store(
    access: &UpAccess,
    queue: &faas_http::queue::QueueUrl,
    persist: bool,
) -> Result<Option<(Arc<dyn faas_core::state::StateStore>, PathBuf)>> {
    let durable = *queue == faas_http::queue::QueueUrl::Durable;
    if !durable && !persist {
        return Ok(None);
    }
    let Some(dir) = access.state_dir.clone().or_else(credentials::default_state_dir) else {
        let e = Error::invalid(
            "state-dir",
            "no state directory for the durable queue and the deployed functions (is HOME \
             set?): give --state-dir",
        );
        if durable {
            return Err(e);
        }
        tracing::warn!("functions deployed through the API are not kept: {e}");
        return Ok(None);
    };
    match open_state_store(&dir) {
        Ok(store) => Ok(Some((store, dir))),
        Err(e @ Error::NotSupported { .. }) if !durable => {
            tracing::warn!("functions deployed through the API are not kept: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The store of `faas up`'s durable queue: an append-only log in `queue/` of the state
/// directory (`faas_queue::log_store`), made for items written once and deleted soon; the
/// items and records an earlier version kept in the state file `state` move there.
#[cfg(feature = "durable")]
async fn open_queue_store(
    state_dir: &std::path::Path,
    state: &Arc<dyn faas_core::state::StateStore>,
) -> Result<Arc<dyn faas_core::state::StateStore>> {
    let log: Arc<dyn faas_core::state::StateStore> =
        Arc::new(faas_queue::log_store::LogStore::open(&state_dir.join("queue"))?);
    let moved = faas_queue::stored::move_tables(state.as_ref(), log.as_ref()).await?;
    if moved > 0 {
        tracing::info!(entries = moved, "moved the async queue from the state file to its log");
    }
    Ok(log)
}

/// Without the `durable` feature there is no durable queue (`up_state_store` refused it).
#[cfg(not(feature = "durable"))]
async fn open_queue_store(
    _state_dir: &std::path::Path,
    state: &Arc<dyn faas_core::state::StateStore>,
) -> Result<Arc<dyn faas_core::state::StateStore>> {
    Ok(state.clone())
}

/// How `faas up` runs functions.
struct UpBackend {
    kind: BackendKind,
    /// `--stem-cells`: how many stem cells of each OpenWhisk kind.
    stem_cells: Vec<(String, usize)>,
    /// `--watchdog`, `--http-watchdog` and `--lambda-watchdog`.
    watchdog: ProcessWatchdog,
    state_dir: Option<PathBuf>,
    scheduler: Arc<dyn faas_core::Scheduler>,
    autoscale: bool,
    /// The autoscaler's idle time before zero for functions that name none.
    idle_timeout: Option<Duration>,
    /// The replica caps the flags set; `None` for the backend's defaults.
    limits: Option<faas_core::ReplicaLimits>,
}

/// The process backend's watchdog.
struct ProcessWatchdog {
    /// `--watchdog`: the program instead of `faas watchdog`.
    program: Option<PathBuf>,
    /// `--http-watchdog`: `http`-mode replicas behind a watchdog too.
    http: bool,
    /// `--lambda-watchdog`: `lambda`-mode replicas behind a watchdog too.
    lambda: bool,
}

/// The replica caps of `--max-replicas-per-function`/`--max-replicas-per-node`, over this
/// machine's defaults; `None` when neither flag is given (the backend then derives its own,
/// the Docker backend from the engine's host).
fn replica_limits(
    per_function: Option<u32>,
    per_node: Option<u32>,
) -> Option<faas_core::ReplicaLimits> {
    if per_function.is_none() && per_node.is_none() {
        return None;
    }
    let mut limits = faas_core::ReplicaLimits::detect();
    if let Some(n) = per_node {
        limits = limits.with_per_node(n);
    }
    if let Some(n) = per_function {
        limits = limits.with_per_function(n);
    }
    Some(limits)
}

async fn backend(up: UpBackend) -> Result<Arc<dyn Backend>> {
    let inner =
        raw_backend(up.kind, up.state_dir, up.scheduler, up.limits, up.stem_cells, up.watchdog)
            .await?;
    if up.autoscale {
        // The autoscaler asks no function for more replicas than the backend's cap.
        let mut config = faas_core::AutoscaleConfig::default();
        if let Some(l) = up.limits {
            config = config.max_replicas(l.per_function());
        }
        if let Some(idle) = up.idle_timeout {
            config = config.idle_timeout(idle);
        }
        Ok(Arc::new(faas_core::Autoscaled::with_config(inner, config)))
    } else {
        Ok(inner)
    }
}

async fn raw_backend(
    kind: BackendKind,
    state_dir: Option<PathBuf>,
    scheduler: Arc<dyn faas_core::Scheduler>,
    limits: Option<faas_core::ReplicaLimits>,
    stem_cells: Vec<(String, usize)>,
    watchdog: ProcessWatchdog,
) -> Result<Arc<dyn Backend>> {
    match kind {
        BackendKind::Process => {
            let b = faas_watchdog::process::ProcessInvoker::builder()
                .http_watchdog(watchdog.http)
                .lambda_watchdog(watchdog.lambda);
            let b = match watchdog.program {
                Some(program) if !program.is_file() => {
                    return Err(Error::invalid(
                        "--watchdog",
                        format!("{} is not a file", program.display()),
                    ));
                }
                Some(program) => b.watchdog_command(program, std::iter::empty::<&str>()),
                None => {
                    let exe = std::env::current_exe().map_err(|e| {
                        Error::internal(format!("cannot find the faas executable: {e}"))
                    })?;
                    b.watchdog_command(exe, ["watchdog"])
                }
            };
            let mut b = b.scheduler(scheduler);
            if let Some(d) = state_dir {
                b = b.state_dir(d);
            }
            if let Some(l) = limits {
                b = b.replica_limits(l);
            }
            for (kind, n) in &stem_cells {
                b = b.stem_cells(kind, *n);
            }
            Ok(Arc::new(b.build().map_err(stem_cells_flag)?))
        }
        BackendKind::Docker => {
            eprintln!("Connecting to the Docker engine...");
            let mut b = faas_backend_docker::DockerInvoker::builder().scheduler(scheduler);
            // The gateway's instance id (the label on its containers) is kept in its state
            // directory: a restart adopts its own containers, another gateway's stay alone.
            if let Some(d) = state_dir.or_else(credentials::default_state_dir) {
                b = b.state_dir(d);
            }
            if let Some(l) = limits {
                b = b.replica_limits(l);
            }
            for (kind, n) in &stem_cells {
                b = b.stem_cells(kind, *n);
            }
            Ok(Arc::new(b.build().await.map_err(stem_cells_flag)?))
        }
        BackendKind::Kubernetes => {
            eprintln!(
                "Connecting to Kubernetes (KUBECONFIG, ~/.kube/config or the service account)..."
            );
            let client = faas_backend_k8s::connect().await?;
            let mut b = faas_backend_k8s::KubernetesInvoker::builder(client).scheduler(scheduler);
            if let Some(l) = limits {
                b = b.replica_limits(l);
            }
            Ok(Arc::new(b.build()))
        }
        BackendKind::Swarm => {
            eprintln!("Connecting to the Docker Swarm manager...");
            let mut b = faas_backend_docker::swarm::SwarmInvoker::builder().scheduler(scheduler);
            if let Some(l) = limits {
                b = b.replica_limits(l);
            }
            Ok(Arc::new(b.build().await?))
        }
    }
}

/// The functions `faas up` starts with and the stack file they come from: the file given,
/// else `stack.yml` when there is one, else none (the filter then has nothing to choose
/// from).
fn up_specs(
    file: Option<PathBuf>,
    filter: &[String],
) -> Result<(Vec<FunctionSpec>, Option<PathBuf>)> {
    let default = PathBuf::from("stack.yml");
    let file = match file {
        Some(f) => f,
        None if default.exists() => default,
        None if filter.is_empty() => return Ok((Vec::new(), None)),
        None => {
            return Err(Error::invalid(
                "filter",
                "there is no stack file to choose functions from (no stack.yml here; give -f)",
            ))
        }
    };
    Ok((stack_specs(&file, filter)?, Some(file)))
}

async fn up(
    file: Option<PathBuf>,
    listen: String,
    up_backend: UpBackend,
    filter: Vec<String>,
    up_queue: UpQueue,
    access: UpAccess,
) -> Result<()> {
    init_tracing();
    // The first SIGTERM or SIGINT, from now on: it cuts the start-up short too.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(None::<&'static str>);
    let stop = stop_signal()?;
    tokio::spawn(async move {
        let _ = stop_tx.send(Some(stop.await));
    });
    let (specs, file) = up_specs(file, &filter)?;
    let mut config = GatewayConfig::from_env()?;
    let addr: std::net::SocketAddr =
        listen.parse().map_err(|e| Error::invalid("listen", format!("{listen:?}: {e}")))?;
    let base = format!("http://{addr}");
    let access_note = up_access(&mut config, &access, &base)?;
    // Docker and Kubernetes keep deployed functions in the engine; the process backend
    // forgets them when it stops, so they are kept in the state store.
    let persist = matches!(up_backend.kind, BackendKind::Process);
    // The OpenWhisk API's entities and activation records are kept there on every backend.
    let (store, state_dir) = match up_state_store(&access, &up_queue.url, true)? {
        Some((store, dir)) => (Some(store), Some(dir)),
        None => (None, None),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::unavailable(format!("cannot listen on {addr}: {e}")))?;
    let invoker = backend(up_backend).await?;
    // What the API deploys goes through `api` (kept in the store); the stack's functions,
    // deployed from the file at every start, through `invoker`.
    let persisted = match store.as_ref().filter(|_| persist) {
        Some(store) => {
            let persisted = faas_core::persisted::Persisted::new(invoker.clone(), store.clone());
            let restored = persisted.restore().await?;
            if restored.functions + restored.secrets > 0 || !restored.failures.is_empty() {
                eprintln!(
                    "Restored {} functions and {} secrets deployed through the API ({} failed)",
                    restored.functions,
                    restored.secrets,
                    restored.failures.len()
                );
            }
            Some(Arc::new(persisted))
        }
        None => None,
    };
    let api: Arc<dyn Backend> = match &persisted {
        Some(p) => p.clone(),
        None => invoker.clone(),
    };
    let info = invoker.info();
    let source = match &file {
        Some(f) => format!("{} functions from {}", specs.len(), f.display()),
        None => "no stack.yml here: starting with no functions".to_string(),
    };
    eprintln!(
        "faas-rs {}: {source} on the {} backend",
        env!("CARGO_PKG_VERSION"),
        info.orchestration
    );
    let start_timeout = config.scale_from_zero_timeout;
    for spec in &specs {
        if stop_rx.borrow().is_some() {
            break;
        }
        let f = spec.function_ref();
        let mut step = Some(progress::Step::start(format!("  deploying {:<20}", spec.name)));
        let t0 = Instant::now();
        let work = async {
            match invoker.deploy(spec.clone()).await {
                Err(Error::AlreadyExists { .. }) => invoker.update(spec.clone()).await,
                other => other,
            }
        };
        // The backend's image pull (Docker) shows on the step as it goes.
        let deployed = progress::showing_pull(&mut step, "", work, || async {
            invoker.status(&f).await.ok().and_then(|st| st.pull)
        })
        .await;
        let Some(step) = step else {
            return Err(Error::internal("the deploy's progress step went missing"));
        };
        if let Err(e) = deployed {
            step.finish("failed");
            return Err(e);
        }
        // Wait (bounded) for the first replica, showing progress.
        let min = spec.scaling_policy().map(|p| p.min).unwrap_or(1);
        if min == 0 {
            step.finish("deployed (scaled to zero; starts on the first request)");
            continue;
        }
        step.note("waiting for a ready replica");
        let mut ready = false;
        // A function the backend cannot place now (a swarm constraint no node meets) is
        // reported and served as pending (its calls answer 503 naming why), not waited for.
        let mut pending = None;
        while t0.elapsed() < start_timeout && stop_rx.borrow().is_none() {
            match invoker.wait_ready(&f, Duration::from_millis(100)).await {
                Ok(true) => {
                    ready = true;
                    break;
                }
                Ok(false) => {}
                Err(Error::Unavailable { reason }) => {
                    pending = Some(reason);
                    break;
                }
                Err(e) => {
                    step.finish("failed");
                    return Err(e);
                }
            }
        }
        if ready {
            step.finish(&format!("ready in {} ms", t0.elapsed().as_millis()));
        } else if let Some(reason) = pending {
            step.finish(&format!("pending: {reason}"));
        } else if stop_rx.borrow().is_some() {
            step.finish("stopped before it was ready");
        } else {
            step.finish(&format!(
                "not ready after {} ms (it will keep starting; see `faas logs {}`)",
                t0.elapsed().as_millis(),
                spec.name
            ));
        }
    }
    let stopped_early = *stop_rx.borrow();
    if let Some(name) = stopped_early {
        eprintln!("{name} while starting: removing the functions");
        for spec in &specs {
            let _ =
                tokio::time::timeout(Duration::from_secs(15), invoker.remove(&spec.function_ref()))
                    .await;
        }
        return Ok(());
    }
    // The replica counts `scale` requests had set on the stack's functions (those of the
    // API's were set again by `restore`).
    if let Some(p) = &persisted {
        let r = p.restore_replicas().await?;
        if r.replicas > 0 || !r.failures.is_empty() {
            eprintln!(
                "Restored the replica counts of {} functions ({} failed)",
                r.replicas,
                r.failures.len()
            );
        }
    }
    // The queue's worker invokes through the gateway's own stack (metrics, activator,
    // limits, timeout), as the sync path does.
    let mut builder = Gateway::builder(api.clone()).config(config.clone());
    let retention =
        faas_core::whisk::Retention { max_records: access.max_activations, ..Default::default() };
    let activation_log = match &store {
        Some(store) => {
            builder = builder.whisk_store(store.clone());
            faas_core::whisk::ActivationLog::open(store.clone(), retention)?
        }
        None => faas_core::whisk::ActivationLog::in_memory(retention),
    };
    builder = builder.activation_log(activation_log.clone());
    let whisk_note = match whisk_access(&access) {
        Ok(Some((key, file))) => {
            let note = format!(
                "OpenWhisk: {base}/api/v1   (namespace {}, key in {}: wsk property set \
                 --apihost {base} --auth \"$(cat {})\")",
                key.namespace(),
                file.display(),
                shell_word(&file.display().to_string())
            );
            builder = builder.whisk_key(key);
            note
        }
        Ok(None) => format!("OpenWhisk: {base}/api/v1   (no credentials: --no-auth)"),
        Err(e) => return Err(e),
    };
    let invoke = builder.stack().invoke();
    let mut queue_store = None;
    let queue = match (&up_queue.url, &store, &state_dir) {
        (faas_http::queue::QueueUrl::Durable, Some(store), Some(dir)) => {
            let log = open_queue_store(dir, store).await?;
            queue_store = Some(log.clone());
            Some(faas_http::queue::AsyncQueue::durable(log, invoke, &config)?)
        }
        _ => {
            faas_http::queue::AsyncQueue::start(&up_queue.url, &up_queue.options, invoke, &config)
                .await?
        }
    };
    if let Some(q) = &queue {
        builder = q.apply(builder);
    }
    // OpenWhisk's Kafka feed (a clear error in a build without the `kafka` feature).
    let kafka_feed = feeds::kafka_feed(up_queue.options.kafka_properties.clone());
    builder = builder.feed_provider(feeds::PACKAGE, feeds::ACTION, kafka_feed);
    let gateway = builder.build();
    eprintln!();
    eprintln!("Gateway: {base}   ({})", access_note.summary);
    for line in &access_note.details {
        eprintln!("{line}");
    }
    eprintln!(
        "Async:   {}",
        queue.as_ref().map_or("in-memory queue, worker in process", |q| q.description())
    );
    eprintln!("{whisk_note}");
    eprintln!("Portal:  {base}/ui/");
    for spec in &specs {
        eprintln!("  {base}/function/{}", spec.name);
    }
    eprintln!("Press Ctrl-C to stop.");
    let grace = access.shutdown_grace;
    let shutdown = async move {
        let name = match stop_rx.wait_for(Option::is_some).await {
            Ok(name) => name.unwrap_or("signal"),
            Err(_) => "signal",
        };
        eprintln!(
            "{name}: stopping; no new connections, in-flight requests get up to {} to finish",
            faas_core::util::format_duration(grace)
        );
    };
    let serve_config = faas_http::ServeConfig::default().shutdown_grace(grace);
    faas_http::serve_with(listener, gateway.service(), shutdown, serve_config)
        .await
        .map_err(|e| Error::internal(format!("server: {e}")))?;
    if let Some(q) = queue {
        eprintln!("Stopping: the async worker...");
        if let Err(e) = q.shutdown().await {
            eprintln!("  {e}");
        }
    }
    eprintln!("Stopping: removing functions...");
    for spec in &specs {
        let _ = tokio::time::timeout(Duration::from_secs(15), invoker.remove(&spec.function_ref()))
            .await;
    }
    if let Err(e) = activation_log.flush().await {
        eprintln!("  writing the last activation records: {e}");
    }
    // What the worker acknowledged last reaches the disk before the exit.
    for store in queue_store.into_iter().chain(store) {
        if let Err(e) = store.close().await {
            eprintln!("  {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn paths_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(
            shell_word("/home/ann/.local/state/faas-rs/x"),
            "/home/ann/.local/state/faas-rs/x"
        );
        assert_eq!(shell_word("/home/ann/my state/x"), "'/home/ann/my state/x'");
        assert_eq!(shell_word("/tmp/it's"), r"'/tmp/it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}

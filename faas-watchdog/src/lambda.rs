//! The `lambda` mode: AWS Lambda functions, unmodified, behind the watchdog.
//!
//! The watchdog starts the function's `bootstrap` (or handler command, `fprocess`) once, as
//! Lambda starts a runtime, with `AWS_LAMBDA_RUNTIME_API` pointing at a Runtime API endpoint
//! the watchdog serves itself on `127.0.0.1` (a fresh port for each start of the runtime),
//! and the Lambda environment (below). The runtime asks for work with
//! `GET /2018-06-01/runtime/invocation/next` and answers each invocation with
//! `POST .../invocation/{id}/response` or `.../invocation/{id}/error`; a start-up failure is
//! reported with `POST /2018-06-01/runtime/init/error`. Any runtime interface client speaks
//! this: the `lambda_runtime` and `lambda_http` crates, `awslambdaric` for Python, the
//! `provided.al2023` custom runtimes.
//!
//! The process backend runs this same code in its own process for a `lambda`-mode replica
//! (see [`crate::process::ProcessInvokerBuilder::lambda_watchdog`]): the replica is then its
//! runtimes alone, everything below holds as written with "the backend" for "the watchdog",
//! the runtimes' output and the messages about them go to the function's log (the messages
//! prefixed `lambda:`), and the runtimes' environment is the one the backend would have
//! given the watchdog.
//!
//! # From a request to an invocation
//!
//! Each request to the watchdog becomes one invocation. A runtime gets one invocation at
//! a time (Lambda's semantics); requests that arrive while it is busy wait in line, at most
//! `lambda_queue` of them (beyond: 429, reason `inflight`).
//!
//! `lambda_concurrency=N` (1 to [`MAX_ENVIRONMENTS`], default 1) runs N execution
//! environments in the one watchdog, as Lambda runs N environments for N concurrent
//! invocations: N runtime processes, each with a Runtime API endpoint of its own (its own
//! `AWS_LAMBDA_RUNTIME_API` port), each taking one invocation at a time from the one line.
//! Each environment starts again on its own when its runtime exits or times out. The
//! process and Docker backends set it from the function's `maxConcurrency` (its in-flight
//! cap per replica) unless the spec sets it. The watchdog is healthy once one environment
//! has initialised; an init failure fails the invocations only once every environment
//! has failed. The process and Docker backends send a replica whose environments are all
//! busy `lambda_prefetch` more invocations per environment (default 1, 0 to
//! [`MAX_PREFETCH`]; see [`replica_capacity`]): they wait in the line, so an environment's
//! runtime gets its next invocation as soon as it asks for it. Unless `watchdog_threads`
//! says otherwise, the watchdog serves with no more threads than environments (one by
//! default), so a caller's connection and the Runtime API's share a thread and an
//! invocation's hand-offs never wake another one.
//!
//! - `lambda_event=http` (the default): the request becomes an API Gateway HTTP API event,
//!   payload format 2.0, as a Function URL sends it (`version`, `routeKey` `$default`,
//!   `rawPath`, `rawQueryString`, `cookies`, `headers`, `queryStringParameters`,
//!   `requestContext.http.{method,path,protocol,sourceIp,userAgent}`, `body` and
//!   `isBase64Encoded`; a body is base64 unless its `Content-Type` is text, JSON, XML or a
//!   form, or it has none and is UTF-8). The function's answer is an HTTP response:
//!   `{"statusCode", "headers", "multiValueHeaders", "cookies", "body", "isBase64Encoded"}`;
//!   any other JSON value is, as API Gateway infers it, a 200 with `Content-Type:
//!   application/json` whose body is that JSON (a JSON string: its text). So `lambda_http`
//!   functions serve HTTP.
//! - `lambda_event=raw`, or a `POST` to the Lambda Invoke API's path
//!   `/2015-03-31/functions/{name}/invocations` (what `aws lambda invoke --endpoint-url` and
//!   the Runtime Interface Emulator's users call, whatever `lambda_event` says): the request
//!   body is the event, unchanged, and the function's answer is the response body (200,
//!   `application/json`). `X-Amz-Client-Context` (base64 JSON, as the Invoke API takes it)
//!   becomes `Lambda-Runtime-Client-Context`.
//!
//! The runtime sees `Lambda-Runtime-Aws-Request-Id` (a fresh UUID), `Lambda-Runtime-Deadline-Ms`,
//! `Lambda-Runtime-Invoked-Function-Arn`, `Lambda-Runtime-Trace-Id` (the request's
//! `X-Amzn-Trace-Id`, else a new X-Ray id) and, where the request has them,
//! `Lambda-Runtime-Client-Context` and `Lambda-Runtime-Cognito-Identity` (from
//! `X-Amz-Cognito-Identity`).
//!
//! # Deadlines and errors
//!
//! - The deadline is the watchdog's per-request deadline (`exec_timeout`, which the process
//!   backend sets from the function's timeout), counted from the request's arrival. A
//!   runtime still working on the invocation then is killed and started again, and the
//!   answer is the watchdog's `exec_timeout` error (504 through the gateway). A request
//!   still waiting in line then gets 429 (`inflight`), or `exec_timeout` while the runtime
//!   is still initialising.
//! - A function error (`/error`) is a 502 with the runtime's JSON error
//!   (`{"errorType", "errorMessage", "stackTrace"}`) and `X-Amz-Function-Error: Unhandled`.
//! - A response over [`MAX_PAYLOAD_BYTES`] gets the runtime a 413 and the caller a 502 with
//!   `errorType` `Function.ResponseSizeTooLarge`.
//! - An init failure (`/init/error`, or the runtime exiting before it first asks for an
//!   invocation) fails the instance with the function's own message: every invocation gets
//!   the watchdog's `spawn` error (a developer init error through the gateway) with the
//!   error type and message the runtime reported (or its exit status and last lines of
//!   stderr), until a new start (after a backoff from 50 ms to 5 s) initialises.
//! - A runtime that exits during an invocation answers it with the watchdog's `exit` error,
//!   and is started again (with the same backoff while it keeps exiting within 10 s of its
//!   start); the invocations waiting in line go to the new start.
//!
//! `/_/health` answers 503 until the first start has initialised or failed. Each
//! environment's Runtime API serves at most [`MAX_API_CONNECTIONS`] connections at once.
//!
//! # The Runtime API's own answers
//!
//! As Lambda's (and its Runtime Interface Emulator's): 202 `{"status":"OK"}` for an accepted
//! response or error; 400 `InvalidRequestID` for a request id that is not the invocation in
//! progress; 403 `InvalidStateTransition` for a response with no invocation in progress (a
//! second response to the same invocation included), an `/init/error` after
//! initialisation, or a `/next` while an invocation is in progress; 413
//! `RequestEntityTooLarge`; 404 for other paths.
//!
//! # Environment of the runtime
//!
//! | variable | value |
//! |---|---|
//! | `AWS_LAMBDA_RUNTIME_API` | `127.0.0.1:PORT` |
//! | `AWS_LAMBDA_FUNCTION_NAME` | as set, else the function's name (`OPENFAAS_FUNCTION_NAME`), else `function` |
//! | `AWS_LAMBDA_FUNCTION_VERSION` | as set, else `$LATEST` |
//! | `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` | as set (the process backend sets the function's memory limit in MiB), else `128` |
//! | `AWS_LAMBDA_LOG_GROUP_NAME`, `AWS_LAMBDA_LOG_STREAM_NAME` | `/aws/lambda/NAME`, `YYYY/MM/DD/[VERSION]INSTANCE` |
//! | `AWS_REGION`, `AWS_DEFAULT_REGION` | as set, else `us-east-1` |
//! | `_HANDLER` | the variable `handler` (or `_HANDLER`), when set |
//! | `LAMBDA_TASK_ROOT` | as set (the runtime then starts in that directory), else the watchdog's directory |
//! | `AWS_LAMBDA_INITIALIZATION_TYPE` | `on-demand` |

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use faas_core::{Body, Error};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::sys;
use crate::watchdog::{
    exit_message, for_each_line, log, pump_lines, read_body_bounded, stop_child, text,
    timeout_response, BodyRead,
};

/// The Runtime API's path prefix (API version 2018-06-01).
pub const RUNTIME_API_PREFIX: &str = "/2018-06-01/runtime";

/// The largest event and response, in bytes: Lambda's 6 MB for synchronous invocations,
/// counted as its Runtime Interface Emulator counts it.
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024 + 100;

/// The default of `lambda_queue`: how many invocations may wait for a busy runtime.
pub const DEFAULT_QUEUE: usize = 64;

/// The most execution environments (`lambda_concurrency`) one watchdog runs.
pub const MAX_ENVIRONMENTS: usize = 64;

/// The Lambda Invoke API's path prefix: a `POST` to `/2015-03-31/functions/{name}/invocations`
/// is always a raw invocation.
const INVOKE_API_PREFIX: &str = "/2015-03-31/functions/";

/// How much of the runtime's last stderr an init failure quotes.
const STDERR_TAIL_BYTES: usize = 2048;

/// How long a runtime that reported `/init/error` has to exit before it is killed.
const INIT_ERROR_EXIT_GRACE: Duration = Duration::from_secs(2);

/// The default of `lambda_prefetch`: invocations a backend sends one replica beyond its
/// execution environments, per environment.
pub const DEFAULT_PREFETCH: usize = 1;

/// The most invocations per execution environment `lambda_prefetch` may ask for.
pub const MAX_PREFETCH: usize = 8;

/// How many invocations a backend's router may have in flight on one replica of `spec`.
///
/// For a `lambda`-mode function with a `maxConcurrency` of N: the N that its execution
/// environments run, plus `lambda_prefetch` (default [`DEFAULT_PREFETCH`]) per environment
/// waiting in the watchdog's line (never more than `lambda_queue`). So when a runtime
/// answers an invocation and asks for the next one, the next event is already in the
/// watchdog and goes out at once: under load the runtime never idles for a round trip to
/// the gateway between invocations (an idle wake-up costs the `lambda_http` client about
/// twice its CPU per invocation). The router still sends to a replica with an idle
/// environment first (it routes to the least loaded), so invocations wait in a line only
/// when every environment is busy. `lambda_prefetch=0` turns this off (an invocation then
/// never waits behind a long one while another replica frees up).
///
/// Any other function: its `maxConcurrency`. Values that do not parse count as unset (the
/// watchdog refuses them when the replica starts).
pub fn replica_capacity(spec: &faas_core::FunctionSpec) -> Option<u32> {
    let n = spec.max_concurrency?;
    let var = |k: &str| spec.env_vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if !var("mode").is_some_and(|m| m.eq_ignore_ascii_case("lambda")) {
        return Some(n);
    }
    let num = |k: &str| var(k).and_then(|v| v.parse::<usize>().ok());
    let envs = num("lambda_concurrency").unwrap_or(n as usize).clamp(1, MAX_ENVIRONMENTS);
    let per_env = num("lambda_prefetch").unwrap_or(DEFAULT_PREFETCH).min(MAX_PREFETCH);
    let queue = num("lambda_queue").unwrap_or(DEFAULT_QUEUE);
    let waiting = u32::try_from((envs * per_env).min(queue)).unwrap_or(0);
    Some(n.saturating_add(waiting))
}

/// How a request to a Lambda function becomes its event (the variable `lambda_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventFormat {
    /// An API Gateway HTTP API (payload format 2.0) / Function URL event; the function's
    /// answer is an HTTP response.
    #[default]
    Http,
    /// The request body is the event and the function's answer the response body.
    Raw,
}

/// The `lambda` mode's settings, read with the rest of [`crate::watchdog::Config`].
#[derive(Debug, Clone, Default)]
pub struct LambdaConfig {
    /// `lambda_event`: `http` (default) or `raw`.
    pub event: EventFormat,
    /// `lambda_queue`: how many invocations may wait while the runtime is busy.
    pub queue: usize,
    /// `lambda_concurrency`: how many execution environments (runtime processes, each
    /// taking one invocation at a time) the watchdog runs; default 1.
    pub environments: usize,
    /// The ARN the runtime is told it was invoked as.
    pub function_arn: String,
    /// The Lambda environment of the runtime (see the [module docs](self)), less
    /// `AWS_LAMBDA_RUNTIME_API`.
    pub env: Vec<(String, String)>,
    /// `LAMBDA_TASK_ROOT` when set: the runtime's working directory.
    pub task_root: Option<PathBuf>,
}

impl LambdaConfig {
    /// Reads the settings from the watchdog's variables; a bad value is an
    /// [`Error::InvalidSpec`] naming the variable.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<LambdaConfig, Error> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let event = match get("lambda_event").map(str::to_ascii_lowercase).as_deref() {
            None | Some("http") => EventFormat::Http,
            Some("raw") => EventFormat::Raw,
            Some(other) => {
                return Err(Error::invalid("lambda_event", format!("{other:?} is not http or raw")))
            }
        };
        let queue = match get("lambda_queue") {
            None => DEFAULT_QUEUE,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=100_000).contains(&n) => n,
                _ => {
                    return Err(Error::invalid(
                        "lambda_queue",
                        format!("{v:?} is not a whole number from 1 to 100000"),
                    ))
                }
            },
        };
        let environments = match get("lambda_concurrency") {
            None => 1,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_ENVIRONMENTS).contains(&n) => n,
                _ => {
                    return Err(Error::invalid(
                        "lambda_concurrency",
                        format!("{v:?} is not a whole number from 1 to {MAX_ENVIRONMENTS}"),
                    ))
                }
            },
        };
        // Read by the backends (see `replica_capacity`); checked here so a bad value fails
        // the replica with the variable's name rather than being ignored.
        if let Some(v) = get("lambda_prefetch") {
            if !v.parse::<usize>().is_ok_and(|n| n <= MAX_PREFETCH) {
                return Err(Error::invalid(
                    "lambda_prefetch",
                    format!("{v:?} is not a whole number from 0 to {MAX_PREFETCH}"),
                ));
            }
        }
        let name = get("AWS_LAMBDA_FUNCTION_NAME")
            .or_else(|| get("OPENFAAS_FUNCTION_NAME"))
            .unwrap_or("function");
        let version = get("AWS_LAMBDA_FUNCTION_VERSION").unwrap_or("$LATEST");
        let memory = get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").unwrap_or("128");
        if !memory.parse::<u32>().is_ok_and(|m| m > 0) {
            return Err(Error::invalid(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                format!("{memory:?} is not a number of megabytes"),
            ));
        }
        let region = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")).unwrap_or("us-east-1");
        let default_region = get("AWS_DEFAULT_REGION").unwrap_or(region);
        let task_root = get("LAMBDA_TASK_ROOT").map(PathBuf::from);
        let root = task_root
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| ".".into());
        let instance = get("OPENFAAS_INSTANCE")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let stamp = faas_core::spec::rfc3339::format(SystemTime::now());
        let day = stamp.get(..10).unwrap_or("1970-01-01").replace('-', "/");
        let mut env: Vec<(String, String)> = vec![
            ("AWS_LAMBDA_FUNCTION_NAME".into(), name.into()),
            ("AWS_LAMBDA_FUNCTION_VERSION".into(), version.into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), memory.into()),
            ("AWS_LAMBDA_LOG_GROUP_NAME".into(), format!("/aws/lambda/{name}")),
            ("AWS_LAMBDA_LOG_STREAM_NAME".into(), format!("{day}/[{version}]{instance}")),
            ("AWS_REGION".into(), region.into()),
            ("AWS_DEFAULT_REGION".into(), default_region.into()),
            ("LAMBDA_TASK_ROOT".into(), root),
            ("AWS_LAMBDA_INITIALIZATION_TYPE".into(), "on-demand".into()),
        ];
        if let Some(h) = get("handler").or_else(|| get("_HANDLER")) {
            env.push(("_HANDLER".into(), h.into()));
        }
        Ok(LambdaConfig {
            event,
            queue,
            environments,
            function_arn: format!("arn:aws:lambda:{region}:000000000000:function:{name}"),
            env,
            task_root,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The runtime's state

/// One invocation, from the request that made it to the runtime that answers it.
struct Job {
    id: String,
    event: Bytes,
    deadline_ms: u64,
    trace_id: String,
    client_context: Option<String>,
    cognito_identity: Option<String>,
    reply: oneshot::Sender<Outcome>,
}

/// How an invocation ended.
enum Outcome {
    /// `/response`: the payload.
    Response(Bytes),
    /// `/error`: the error type header and the body.
    FunctionError(Option<String>, Bytes),
    /// `/response` over [`MAX_PAYLOAD_BYTES`] (its size so far).
    TooLarge(usize),
    /// The runtime exited during the invocation.
    Crashed(String),
    /// The runtime failed to initialise.
    InitFailed(String),
}

/// The invocation the runtime is working on.
struct Current {
    id: String,
    reply: oneshot::Sender<Outcome>,
    /// The start of the runtime that took it.
    gen: u64,
}

/// Where the runtime is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Started, not yet asking for invocations.
    Starting,
    /// Has asked for an invocation at least once.
    Ready,
    /// Its last start failed with this message.
    Failed(Arc<str>),
}

/// One execution environment: a runtime process, started again when it exits, with a
/// Runtime API endpoint of its own, taking one invocation at a time.
struct Env {
    current: Mutex<Option<Current>>,
    /// Where this environment's runtime is.
    phase: Mutex<Phase>,
    /// The start (generation, counted from 1) to kill: an invocation of it timed out.
    kill: watch::Sender<u64>,
    /// The start (generation) that reported `/init/error`, and its message.
    init_error: watch::Sender<(u64, Option<Arc<str>>)>,
    /// The process group of the running runtime (0: none).
    pgid: std::sync::atomic::AtomicU32,
}

impl Env {
    fn new() -> Env {
        Env {
            current: Mutex::new(None),
            phase: Mutex::new(Phase::Starting),
            kill: watch::channel(0).0,
            init_error: watch::channel((0, None)).0,
            pgid: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Takes the invocation in progress if it is `id`.
    fn take(&self, id: &str) -> Option<Current> {
        let mut cur = lock(&self.current);
        if cur.as_ref().is_some_and(|c| c.id == id) {
            cur.take()
        } else {
            None
        }
    }
}

/// The `lambda` mode of one watchdog: its execution environments (runtime processes and
/// their Runtime API endpoints) and the one line of invocations waiting for them, which
/// every environment's `/next` takes from in turn.
pub(crate) struct LambdaRuntime {
    cfg: LambdaConfig,
    program: OsString,
    args: Vec<String>,
    output: Output,
    /// When set, the runtime's whole environment (before the Lambda variables); otherwise
    /// it inherits this process's.
    base_env: Option<Vec<(OsString, OsString)>>,
    jobs_tx: mpsc::Sender<Job>,
    jobs_rx: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    envs: Vec<Env>,
    /// The phase of the whole: `Ready` when an environment is, `Failed` when all are.
    phase: watch::Sender<Phase>,
    /// Set once the first start has initialised or failed (health answers 200 from then).
    settled: AtomicBool,
    /// `Lambda-Runtime-Invoked-Function-Arn`, built once for every `/next`.
    arn_header: Option<HeaderValue>,
}

/// Where the runtimes' output and the host's own messages about them go.
#[derive(Clone)]
pub(crate) enum Output {
    /// The watchdog's stdout and stderr (its messages on stderr), each line of the runtime's
    /// prefixed with its stream when `prefix` (`prefix_logs`).
    Watchdog {
        /// `prefix_logs`.
        prefix: bool,
    },
    /// Each line (without its newline), to a function's log: the process backend hosting
    /// the execution environments itself.
    Lines(LineSink),
}

/// Takes one line of output (without its newline).
pub(crate) type LineSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LambdaRuntime {
    /// The mode's state for `cfg`, running `program` with `args`, its output and the
    /// messages about it to `output`, in `base_env` (else this process's environment) plus
    /// the Lambda variables; [`supervise`] starts the runtimes.
    pub(crate) fn new(
        cfg: LambdaConfig,
        program: OsString,
        args: Vec<String>,
        output: Output,
        base_env: Option<Vec<(OsString, OsString)>>,
    ) -> Arc<Self> {
        let (jobs_tx, jobs_rx) = mpsc::channel(cfg.queue.max(1));
        Arc::new(LambdaRuntime {
            program,
            args,
            output,
            base_env,
            jobs_tx,
            jobs_rx: tokio::sync::Mutex::new(jobs_rx),
            envs: (0..cfg.environments.max(1)).map(|_| Env::new()).collect(),
            phase: watch::channel(Phase::Starting).0,
            settled: AtomicBool::new(false),
            arn_header: HeaderValue::from_str(&cfg.function_arn).ok(),
            cfg,
        })
    }

    /// A message about the runtimes, where their output goes.
    fn note(&self, msg: String) {
        match &self.output {
            Output::Watchdog { .. } => log(msg),
            Output::Lines(f) => f(format!("lambda: {msg}").as_bytes()),
        }
    }

    /// Kills every running runtime's process group at once (for a host going away without
    /// the time to stop them in order; [`supervise`] starts them again unless stopped).
    pub(crate) fn kill_all(&self) {
        for e in &self.envs {
            let p = e.pgid.swap(0, Ordering::SeqCst);
            if p != 0 {
                sys::kill_group(p, sys::SIGKILL);
            }
        }
    }

    /// The process ids of the running runtimes (each leads a process group of its own).
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.envs.iter().map(|e| e.pgid.load(Ordering::SeqCst)).filter(|p| *p != 0).collect()
    }

    /// Resolves once the first start of an environment has initialised or every one has
    /// failed: from then on invocations are answered (by the function or with its init
    /// failure).
    pub(crate) async fn wait_settled(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p != Phase::Starting).await;
    }

    /// Sets environment `env`'s phase, and the phase of the whole from all of them.
    fn set_phase(&self, env: usize, p: Phase) {
        *lock(&self.envs[env].phase) = p;
        let phases: Vec<Phase> = self.envs.iter().map(|e| lock(&e.phase).clone()).collect();
        let whole = if phases.contains(&Phase::Ready) {
            Phase::Ready
        } else {
            match phases.iter().find_map(|p| match p {
                Phase::Failed(m) => Some(m.clone()),
                _ => None,
            }) {
                Some(m) if phases.iter().all(|p| matches!(p, Phase::Failed(_))) => Phase::Failed(m),
                _ => Phase::Starting,
            }
        };
        if whole != Phase::Starting {
            self.settled.store(true, Ordering::Release);
        }
        self.phase.send_if_modified(|p| {
            let changed = *p != whole;
            *p = whole;
            changed
        });
    }

    /// Whether an environment is working on invocation `id`.
    fn in_progress(&self, id: &str) -> bool {
        self.envs.iter().any(|e| lock(&e.current).as_ref().is_some_and(|c| c.id == id))
    }

    /// Whether health should answer 200: the first start has initialised or failed.
    pub(crate) fn settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Takes the invocation in progress if it is `id`, with its environment's index.
    fn take_current(&self, id: &str) -> Option<(usize, Current)> {
        self.envs.iter().enumerate().find_map(|(i, e)| e.take(id).map(|c| (i, c)))
    }

    /// Serves one request to the function: builds the event, waits for the runtime's answer
    /// within `deadline` (the watchdog's per-request deadline, with its variable's name),
    /// and turns the answer into the response.
    pub(crate) async fn invoke<B>(
        self: &Arc<Self>,
        req: Request<B>,
        deadline: Option<(Duration, &'static str)>,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let arrived = Instant::now();
        let now = SystemTime::now();
        let raw = self.cfg.event == EventFormat::Raw || is_invoke_api(&req);
        let (parts, body) = req.into_parts();
        let too_large = || {
            api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!(
                    "the request body is over Lambda's payload limit of {MAX_PAYLOAD_BYTES} bytes"
                ),
            )
        };
        // A declared length over the limit is refused before anything is read.
        if http_body::Body::size_hint(&body).lower() > MAX_PAYLOAD_BYTES as u64 {
            return too_large();
        }
        let limit = deadline.map(|(d, _)| d).unwrap_or(Duration::from_secs(900));
        // Reading the body counts against the deadline too.
        let body = match read_body_bounded(body, MAX_PAYLOAD_BYTES, arrived + limit).await {
            Ok(b) => b,
            Err(BodyRead::TooLarge) => return too_large(),
            Err(BodyRead::Broken(e)) => {
                return text(StatusCode::BAD_REQUEST, "body", format!("reading the request: {e}"))
            }
            Err(BodyRead::TimedOut) => {
                return text(
                    StatusCode::REQUEST_TIMEOUT,
                    "read_timeout",
                    "the request body did not arrive within the function's deadline",
                )
            }
        };
        let id = uuid_v4();
        let event = if raw {
            body
        } else {
            match http_event(&parts, &body, now) {
                Ok(e) => e,
                Err(m) => return api_error(StatusCode::BAD_REQUEST, "InvalidRequest", &m),
            }
        };
        let deadline_ms = epoch_ms(now) + limit.as_millis() as u64;
        let header = |name: &str| {
            parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).map(str::to_string)
        };
        let client_context = match header("x-amz-client-context") {
            None => None,
            Some(c) => match base64::engine::general_purpose::STANDARD
                .decode(c.as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            {
                Some(c) => Some(c),
                None => {
                    return api_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequestContentException",
                        "X-Amz-Client-Context must be base64-encoded JSON",
                    )
                }
            },
        };
        let (reply, mut answer) = oneshot::channel();
        let job = Job {
            id: id.clone(),
            event,
            deadline_ms,
            trace_id: header("x-amzn-trace-id").unwrap_or_else(|| trace_id(now)),
            client_context,
            cognito_identity: header("x-amz-cognito-identity"),
            reply,
        };
        if let Phase::Failed(m) = &*self.phase.borrow() {
            return text(StatusCode::BAD_GATEWAY, "spawn", m.to_string());
        }
        if let Err(e) = self.jobs_tx.try_send(job) {
            let m = match e {
                mpsc::error::TrySendError::Full(_) => format!(
                    "{} invocations are already waiting for the function's Lambda runtime \
                     (lambda_queue={})",
                    self.cfg.queue, self.cfg.queue
                ),
                mpsc::error::TrySendError::Closed(_) => "the Lambda runtime has stopped".into(),
            };
            return text(StatusCode::TOO_MANY_REQUESTS, "inflight", m);
        }
        let mut phase = self.phase.subscribe();
        let sleep = tokio::time::sleep_until(arrived + limit);
        tokio::pin!(sleep);
        let outcome = loop {
            tokio::select! {
                o = &mut answer => break o.ok(),
                _ = &mut sleep, if deadline.is_some() => break None,
                changed = phase.changed() => {
                    // A start that fails answers the invocations still in line.
                    let failed = match &*phase.borrow_and_update() {
                        Phase::Failed(m) if changed.is_ok() => Some(m.clone()),
                        _ => None,
                    };
                    if let Some(m) = failed {
                        if !self.in_progress(&id) {
                            break Some(Outcome::InitFailed(m.to_string()));
                        }
                    }
                }
            }
        };
        match outcome {
            Some(o) => self.respond(o, raw),
            None => self.timed_out(&id, deadline.unwrap_or((limit, "exec_timeout"))),
        }
    }

    /// The answer to an invocation whose deadline passed.
    fn timed_out(&self, id: &str, (d, name): (Duration, &'static str)) -> Response<Body> {
        if let Some((env, cur)) = self.take_current(id) {
            // The runtime is still working on it: Lambda stops the runtime; the next start
            // serves the next invocation.
            self.envs[env].kill.send_replace(cur.gen);
            self.note(format!(
                "{name} exceeded by Lambda invocation {id}; stopping the runtime to start it again"
            ));
            return timeout_response(name, d);
        }
        if *self.phase.borrow() == Phase::Starting {
            return text(
                StatusCode::GATEWAY_TIMEOUT,
                name,
                format!(
                    "{name} of {} exceeded while the Lambda runtime was still initialising",
                    faas_core::util::format_duration(d)
                ),
            );
        }
        text(
            StatusCode::TOO_MANY_REQUESTS,
            "inflight",
            format!(
                "waited {} for the function's Lambda runtime, busy with earlier invocations",
                faas_core::util::format_duration(d)
            ),
        )
    }

    fn respond(&self, o: Outcome, raw: bool) -> Response<Body> {
        match o {
            Outcome::Response(payload) if raw => json_response(StatusCode::OK, payload),
            Outcome::Response(payload) => http_response(&payload),
            Outcome::FunctionError(kind, body) => function_error(kind, body),
            Outcome::TooLarge(n) => {
                let mut r = api_error(
                    StatusCode::BAD_GATEWAY,
                    "Function.ResponseSizeTooLarge",
                    &format!(
                        "Response payload size ({n} bytes) exceeded maximum allowed payload \
                         size ({MAX_PAYLOAD_BYTES} bytes)."
                    ),
                );
                r.headers_mut()
                    .insert("x-amz-function-error", HeaderValue::from_static("Unhandled"));
                r
            }
            Outcome::Crashed(m) => text(StatusCode::BAD_GATEWAY, "exit", m),
            Outcome::InitFailed(m) => text(StatusCode::BAD_GATEWAY, "spawn", m),
        }
    }
}

fn is_invoke_api<B>(req: &Request<B>) -> bool {
    req.method() == Method::POST
        && req
            .uri()
            .path()
            .strip_prefix(INVOKE_API_PREFIX)
            .and_then(|rest| rest.strip_suffix("/invocations"))
            .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

// ---------------------------------------------------------------------------------------
// Supervising the runtime

/// Runs every execution environment (see [`supervise_env`]) until `stop` turns true.
pub(crate) async fn supervise(rt: Arc<LambdaRuntime>, stop: watch::Receiver<bool>) {
    let mut envs = tokio::task::JoinSet::new();
    for env in 0..rt.envs.len() {
        envs.spawn(supervise_env(rt.clone(), env, stop.clone()));
    }
    while envs.join_next().await.is_some() {}
}

/// Starts environment `env`'s runtime, starts it again when it exits or times out (with
/// backoff after failures), and stops it when `stop` turns true.
async fn supervise_env(rt: Arc<LambdaRuntime>, env: usize, mut stop: watch::Receiver<bool>) {
    let e = &rt.envs[env];
    let backoff = faas_core::util::Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let backoff = backoff.exact();
    let mut failures = 0u32;
    let mut gen = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        gen += 1;
        // A timeout's kill request and an /init/error are for the start they happened in.
        e.kill.send_replace(0);
        e.init_error.send_replace((0, None));
        let bound = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
            Ok(l) => l.local_addr().map(|a| (l, a)),
            Err(e) => Err(e),
        };
        let (listener, addr) = match bound {
            Ok(x) => x,
            Err(e) => {
                rt.note(format!("cannot listen for the Lambda Runtime API: {e}"));
                failures += 1;
                tokio::time::sleep(backoff.delay(failures)).await;
                continue;
            }
        };
        let api = tokio::spawn(serve_api(rt.clone(), env, listener, gen));
        if *lock(&e.phase) != Phase::Starting {
            rt.set_phase(env, Phase::Starting);
        }
        let started = Instant::now();
        let (status, tail) = run_once(&rt, env, addr, gen, &mut stop).await;
        // Its Runtime API goes with it (a long poll for /next included).
        api.abort();
        let _ = api.await;
        let Some(status) = status else { return };
        let was_ready = *lock(&e.phase) == Phase::Ready;
        let timed_out = *e.kill.borrow() == gen;
        let how = match &status {
            Ok(s) => exit_message(s),
            Err(e) => e.to_string(),
        };
        let crashed = lock(&e.current).take();
        if let Some(cur) = crashed {
            let msg =
                format!("Runtime.ExitError: Runtime exited with error: {how}{}", tail_note(&tail));
            rt.note(format!("the Lambda runtime exited during invocation {} ({how})", cur.id));
            let _ = cur.reply.send(Outcome::Crashed(msg));
        }
        if timed_out {
            failures = 0;
        } else if was_ready {
            // A runtime that ran for a while starts the backoff over; one that keeps exiting
            // soon after its start is started again ever more slowly.
            failures = if started.elapsed() > Duration::from_secs(10) { 1 } else { failures + 1 };
            rt.note(format!("the Lambda runtime exited ({how}); starting it again"));
        } else {
            failures += 1;
            let reported = e.init_error.borrow().1.clone();
            let msg: Arc<str> = match reported {
                Some(m) => m,
                None => format!(
                    "Runtime.ExitError: Runtime exited with error: {how} before asking for an \
                     invocation{}",
                    tail_note(&tail)
                )
                .into(),
            };
            rt.note(format!("the Lambda runtime failed to initialise: {msg}"));
            rt.set_phase(env, Phase::Failed(msg.clone()));
            // Once every environment has failed, the invocations waiting get the failure.
            let all_failed = matches!(*rt.phase.borrow(), Phase::Failed(_));
            if all_failed {
                let mut rx = rt.jobs_rx.lock().await;
                while let Ok(job) = rx.try_recv() {
                    let _ = job.reply.send(Outcome::InitFailed(msg.to_string()));
                }
            }
        }
        if failures > 0 {
            tokio::select! {
                _ = tokio::time::sleep(backoff.delay(failures)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Runs one start of the runtime until it exits, is killed, or the watchdog stops (then
/// `None`). Returns how it ended and the tail of its stderr.
async fn run_once(
    rt: &Arc<LambdaRuntime>,
    env: usize,
    addr: SocketAddr,
    gen: u64,
    stop: &mut watch::Receiver<bool>,
) -> (Option<std::io::Result<std::process::ExitStatus>>, String) {
    let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut cmd = Command::new(&rt.program);
    cmd.args(&rt.args);
    if let Some(base) = &rt.base_env {
        cmd.env_clear().envs(base.iter().map(|(k, v)| (k, v)));
    }
    for (k, v) in &rt.cfg.env {
        cmd.env(k, v);
    }
    if let Some(dir) = &rt.cfg.task_root {
        cmd.current_dir(dir);
    }
    cmd.env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    sys::die_with_parent(&mut cmd, sys::SIGKILL);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("Runtime.InvalidEntrypoint: cannot start {:?}: {e}", rt.program);
            rt.envs[env].init_error.send_replace((gen, Some(msg.into())));
            return (Some(Err(e)), String::new());
        }
    };
    let pgid = child.id();
    rt.envs[env].pgid.store(pgid.unwrap_or(0), Ordering::SeqCst);
    if let Some(o) = child.stdout.take() {
        tokio::spawn(pump(rt.output.clone(), o, "stdout"));
    }
    let stderr = child.stderr.take().map(|e| {
        tokio::spawn(pump(rt.output.clone(), TailReader { inner: e, tail: tail.clone() }, "stderr"))
    });
    let mut kill = rt.envs[env].kill.subscribe();
    let mut init_error = rt.envs[env].init_error.subscribe();
    let status = tokio::select! {
        st = child.wait() => Some(st),
        _ = async { kill.wait_for(|k| *k == gen).await.is_ok() } => {
            if let Some(p) = pgid {
                sys::kill_group(p, sys::SIGKILL);
            }
            Some(child.wait().await)
        }
        _ = async { init_error.wait_for(|(g, m)| *g == gen && m.is_some()).await.is_ok() } => {
            // The runtime should exit after reporting; it gets a moment to.
            match tokio::time::timeout(INIT_ERROR_EXIT_GRACE, child.wait()).await {
                Ok(st) => Some(st),
                Err(_) => {
                    if let Some(p) = pgid {
                        sys::kill_group(p, sys::SIGKILL);
                    }
                    Some(child.wait().await)
                }
            }
        }
        _ = stop.changed() => {
            stop_child(&mut child, pgid).await;
            None
        }
    };
    rt.envs[env].pgid.store(0, Ordering::SeqCst);
    if let Some(p) = pgid {
        sys::kill_group(p, sys::SIGKILL);
    }
    // The last lines it wrote, once its stderr has been read to the end (bounded: a process
    // that escaped the group may still hold the pipe).
    if let Some(h) = stderr {
        let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
    }
    let tail = String::from_utf8_lossy(&lock(&tail)).trim().to_string();
    (status, tail)
}

/// Reads one of a runtime's output pipes to its end, line by line, to `output`.
async fn pump<R: AsyncRead + Unpin>(output: Output, r: R, stream: &'static str) {
    match output {
        Output::Watchdog { prefix } => pump_lines(r, stream, prefix).await,
        Output::Lines(f) => {
            for_each_line(r, |line| f(line.strip_suffix(b"\r").unwrap_or(line))).await
        }
    }
}

fn tail_note(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; its last output: {}", tail.lines().collect::<Vec<_>>().join(" | "))
    }
}

/// The runtime's stderr, passed through, its last [`STDERR_TAIL_BYTES`] kept for an init
/// failure's message.
struct TailReader<R> {
    inner: R,
    tail: Arc<Mutex<Vec<u8>>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for TailReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            let mut t = lock(&self.tail);
            t.extend_from_slice(new);
            if t.len() > STDERR_TAIL_BYTES {
                let cut = t.len() - STDERR_TAIL_BYTES;
                t.drain(..cut);
            }
        }
        r
    }
}

// ---------------------------------------------------------------------------------------
// The Runtime API

/// The most connections one Runtime API endpoint serves at once: a runtime uses one or two;
/// a connection over it is closed at once, so a local process cannot pile them up in the
/// process serving the API (the gateway's, on the process backend).
pub const MAX_API_CONNECTIONS: usize = 16;

/// Serves the Runtime API of start `gen` of environment `env` on `listener` until aborted
/// (which closes its connections), at most [`MAX_API_CONNECTIONS`] at once.
async fn serve_api(rt: Arc<LambdaRuntime>, env: usize, listener: TcpListener, gen: u64) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                rt.note(format!("Lambda Runtime API accept: {e}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Finished connections are reaped as new ones come.
        while conns.try_join_next().is_some() {}
        if conns.len() >= MAX_API_CONNECTIONS {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let rt = rt.clone();
        let svc = hyper::service::service_fn(move |req| {
            let rt = rt.clone();
            async move { Ok::<_, Infallible>(api(&rt, env, gen, req).await) }
        });
        conns.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// One Runtime API request.
async fn api(
    rt: &Arc<LambdaRuntime>,
    env: usize,
    gen: u64,
    req: Request<Incoming>,
) -> Response<Body> {
    // (A `Uri` clone shares its bytes: no copy of the path per call.)
    let uri = req.uri().clone();
    let path = uri.path();
    let Some(rest) = path.strip_prefix(RUNTIME_API_PREFIX) else {
        return not_found(path);
    };
    match (req.method(), rest) {
        (&Method::GET, "/invocation/next") => next(rt, env, gen).await,
        (&Method::POST, "/init/error") => init_error(&rt.envs[env], gen, req).await,
        (_, "/invocation/next") => method_not_allowed("GET"),
        (_, "/init/error") => method_not_allowed("POST"),
        (m, r) if r.starts_with("/invocation/") => {
            let r = &r["/invocation/".len()..];
            let (id, what) = match r.rsplit_once('/') {
                Some((id, w @ ("response" | "error"))) if !id.is_empty() && !id.contains('/') => {
                    (id.to_string(), w)
                }
                _ => return not_found(path),
            };
            if m != Method::POST {
                return method_not_allowed("POST");
            }
            answer(&rt.envs[env], req, &id, what == "error").await
        }
        _ => not_found(path),
    }
}

/// `GET /invocation/next`: the long poll for the next invocation.
async fn next(rt: &Arc<LambdaRuntime>, env: usize, gen: u64) -> Response<Body> {
    let e = &rt.envs[env];
    if lock(&e.current).is_some() {
        return invalid_transition("Running", "Ready");
    }
    let ready = *lock(&e.phase) == Phase::Ready;
    if !ready {
        rt.set_phase(env, Phase::Ready);
    }
    let mut rx = rt.jobs_rx.lock().await;
    if lock(&e.current).is_some() {
        return invalid_transition("Running", "Ready");
    }
    loop {
        let Some(job) = rx.recv().await else {
            return api_error(StatusCode::INTERNAL_SERVER_ERROR, "ServiceException", "stopped");
        };
        if job.reply.is_closed() {
            continue; // its caller gave up while it waited
        }
        let mut r = Response::new(Body::from(job.event));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut set = |name: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(HeaderName::from_static(name), v);
            }
        };
        set("lambda-runtime-aws-request-id", &job.id);
        set("lambda-runtime-trace-id", &job.trace_id);
        if let Some(c) = &job.client_context {
            set("lambda-runtime-client-context", c);
        }
        if let Some(c) = &job.cognito_identity {
            set("lambda-runtime-cognito-identity", c);
        }
        h.insert(
            HeaderName::from_static("lambda-runtime-deadline-ms"),
            HeaderValue::from(job.deadline_ms),
        );
        if let Some(arn) = &rt.arn_header {
            h.insert(HeaderName::from_static("lambda-runtime-invoked-function-arn"), arn.clone());
        }
        *lock(&e.current) = Some(Current { id: job.id, reply: job.reply, gen });
        return r;
    }
}

/// `POST /invocation/{id}/response` and `.../error`.
async fn answer(rt: &Env, req: Request<Incoming>, id: &str, error: bool) -> Response<Body> {
    let to = if error { "InvocationErrorResponse" } else { "InvocationResponse" };
    match lock(&rt.current).as_ref() {
        None => return invalid_transition("Ready", to),
        Some(c) if c.id != id => {
            return api_error(StatusCode::BAD_REQUEST, "InvalidRequestID", "Invalid request ID")
        }
        Some(_) => {}
    }
    let kind = error_type(&req);
    let streaming = req
        .headers()
        .get("lambda-runtime-function-response-mode")
        .is_some_and(|m| m.as_bytes().eq_ignore_ascii_case(b"streaming"));
    if streaming && !error {
        // Response streaming is not served: the invocation fails with a clear error rather
        // than passing on the stream's framing as a body.
        if let Some(cur) = rt.take(id) {
            let m = "the watchdog's lambda mode does not support Lambda response streaming; \
                     answer with a buffered response";
            let body = json!({ "errorType": "Function.StreamingNotSupported", "errorMessage": m });
            let _ = cur.reply.send(Outcome::FunctionError(None, Bytes::from(body.to_string())));
        }
        return api_error(
            StatusCode::BAD_REQUEST,
            "InvalidFunctionResponseMode",
            "Invalid function response mode",
        );
    }
    let (body, too_large) = read_limited(req.into_body()).await;
    // The invocation may have timed out while the body arrived.
    let Some(cur) = rt.take(id) else {
        return api_error(StatusCode::BAD_REQUEST, "InvalidRequestID", "Invalid request ID");
    };
    if let Some(n) = too_large {
        let _ = cur.reply.send(Outcome::TooLarge(n));
        return api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!("Exceeded maximum allowed payload size ({MAX_PAYLOAD_BYTES} bytes)."),
        );
    }
    let outcome = if error { Outcome::FunctionError(kind, body) } else { Outcome::Response(body) };
    let _ = cur.reply.send(outcome);
    // The caller's answer goes out before the runtime's 202: the invocation's task, woken
    // by the send, runs first.
    tokio::task::yield_now().await;
    accepted()
}

/// The `Lambda-Runtime-Function-Error-Type` of an error report.
fn error_type(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get("lambda-runtime-function-error-type")?;
    v.to_str().ok().map(str::to_string)
}

/// Reads a body up to [`MAX_PAYLOAD_BYTES`]; over it, the size read so far.
async fn read_limited(mut body: Incoming) -> (Bytes, Option<usize>) {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(d) = frame.into_data() {
            if buf.len() + d.len() > MAX_PAYLOAD_BYTES {
                return (Bytes::new(), Some(buf.len() + d.len()));
            }
            buf.extend_from_slice(&d);
        }
    }
    (buf.freeze(), None)
}

/// `POST /init/error`.
async fn init_error(e: &Env, gen: u64, req: Request<Incoming>) -> Response<Body> {
    if *lock(&e.phase) != Phase::Starting {
        return invalid_transition("Ready", "InitError");
    }
    let kind = error_type(&req);
    let (body, _) = read_limited(req.into_body()).await;
    let msg = error_summary(kind.as_deref(), &body, "Runtime.InitError");
    e.init_error.send_replace((gen, Some(msg.into())));
    accepted()
}

/// `errorType: errorMessage` from a runtime's error report (JSON, else its text).
fn error_summary(kind: Option<&str>, body: &[u8], default_kind: &str) -> String {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let field = |k: &str| {
        parsed.as_ref().and_then(|v| v.get(k)).and_then(Value::as_str).map(str::to_string)
    };
    let kind = field("errorType").or(kind.map(str::to_string)).unwrap_or(default_kind.into());
    let message = field("errorMessage")
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().chars().take(4096).collect());
    if message.is_empty() {
        kind
    } else {
        format!("{kind}: {message}")
    }
}

fn api_error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = json!({ "errorMessage": message, "errorType": kind }).to_string();
    json_response(status, Bytes::from(body))
}

fn invalid_transition(from: &str, to: &str) -> Response<Body> {
    api_error(
        StatusCode::FORBIDDEN,
        "InvalidStateTransition",
        &format!(
            "State transition from {from} to {to} failed for runtime. Error: State transition is \
             not allowed"
        ),
    )
}

fn accepted() -> Response<Body> {
    json_response(StatusCode::ACCEPTED, Bytes::from_static(br#"{"status":"OK"}"#))
}

fn not_found(path: &str) -> Response<Body> {
    api_error(StatusCode::NOT_FOUND, "NotFound", &format!("no Runtime API resource at {path}"))
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = api_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "method not allowed");
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

// ---------------------------------------------------------------------------------------
// Events and answers

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A function error: 502 with the runtime's JSON error (or one made of its text).
fn function_error(kind: Option<String>, body: Bytes) -> Response<Body> {
    let is_error_object = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.as_object().map(|o| o.contains_key("errorMessage") || o.contains_key("errorType"))
        })
        .unwrap_or(false);
    let body = if is_error_object {
        body
    } else {
        let kind = kind.unwrap_or_else(|| "Unhandled".into());
        let message = String::from_utf8_lossy(&body).into_owned();
        Bytes::from(json!({ "errorType": kind, "errorMessage": message }).to_string())
    };
    let mut r = json_response(StatusCode::BAD_GATEWAY, body);
    r.headers_mut().insert("x-amz-function-error", HeaderValue::from_static("Unhandled"));
    r
}

/// Milliseconds since the Unix epoch.
fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A random (version 4) UUID, as Lambda's request ids are.
fn uuid_v4() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    // One allocation: this runs for every invocation.
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(HEX[usize::from(x >> 4)]));
        s.push(char::from(HEX[usize::from(x & 0x0f)]));
    }
    s
}

/// A new X-Ray trace header.
fn trace_id(now: SystemTime) -> String {
    let secs = epoch_ms(now) / 1000;
    let r: u128 = rand::random();
    format!("Root=1-{secs:08x}-{:024x};Parent={:016x};Sampled=0", r >> 32, rand::random::<u64>())
}

/// `05/Dec/2026:15:03:32 +0000`, API Gateway's `requestContext.time`; formatted once per
/// second per thread (every event carries it).
fn clf_time(t: SystemTime) -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = epoch_ms(t) / 1000;
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            *last = (secs, format_clf_time(t));
        }
        last.1.clone()
    })
}

fn format_clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let s = faas_core::spec::rfc3339::format(t);
    let month = s.get(5..7).and_then(|m| m.parse::<usize>().ok()).unwrap_or(1);
    format!(
        "{}/{}/{}:{} +0000",
        s.get(8..10).unwrap_or("01"),
        MONTHS[month.clamp(1, 12) - 1],
        s.get(..4).unwrap_or("1970"),
        s.get(11..19).unwrap_or("00:00:00")
    )
}

/// Whether a body of this `Content-Type` is sent as text (else base64), as Function URLs
/// decide.
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
        || matches!(
            ct.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "application/graphql"
                | "application/yaml"
        )
}

/// An API Gateway HTTP API (payload format 2.0) event, serialised straight from the
/// request's parts (no intermediate JSON tree: this runs for every invocation).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpEvent<'a> {
    version: &'static str,
    route_key: &'static str,
    raw_path: &'a str,
    raw_query_string: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cookies: Vec<&'a str>,
    headers: BTreeMap<&'a str, Cow<'a, str>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    query_string_parameters: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    request_context: RequestContext<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Cow<'a, str>>,
    is_base64_encoded: bool,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    account_id: &'static str,
    api_id: &'a str,
    domain_name: &'a str,
    domain_prefix: &'a str,
    http: HttpContext<'a>,
    request_id: Cow<'a, str>,
    route_key: &'static str,
    stage: &'static str,
    time: String,
    time_epoch: u64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpContext<'a> {
    method: &'a str,
    path: &'a str,
    protocol: &'static str,
    source_ip: &'a str,
    user_agent: &'a str,
}

/// The API Gateway HTTP API (payload format 2.0) event for a request.
fn http_event(parts: &http::request::Parts, body: &[u8], now: SystemTime) -> Result<Bytes, String> {
    let capacity = 1024 + body.len() / 3 * 4 + 4;
    let mut headers: BTreeMap<&str, Cow<'_, str>> = BTreeMap::new();
    let mut cookies = Vec::new();
    for name in parts.headers.keys() {
        let mut values = parts.headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
        if name == header::COOKIE {
            for v in values {
                cookies.extend(v.split(';').map(str::trim).filter(|c| !c.is_empty()));
            }
            continue;
        }
        let first = values.next().unwrap_or("");
        let value = match values.next() {
            None => Cow::Borrowed(first),
            Some(second) => {
                let mut joined = format!("{first},{second}");
                for v in values {
                    joined.push(',');
                    joined.push_str(v);
                }
                Cow::Owned(joined)
            }
        };
        headers.insert(name.as_str(), value);
    }
    let raw_query = parts.uri.query().unwrap_or("");
    let mut query: BTreeMap<Cow<'_, str>, Cow<'_, str>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(raw_query.as_bytes()) {
        match query.get_mut(&k) {
            Some(s) => {
                let s = s.to_mut();
                s.push(',');
                s.push_str(&v);
            }
            None => {
                query.insert(k, v);
            }
        }
    }
    let first = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let source_ip = first("x-forwarded-for")
        .and_then(|v| v.split(',').next().map(str::trim))
        .or_else(|| first("x-real-ip"))
        .unwrap_or("127.0.0.1");
    let domain = first("x-forwarded-host").or_else(|| first("host")).unwrap_or("localhost");
    let request_id = first("x-call-id").map(Cow::Borrowed).unwrap_or_else(|| uuid_v4().into());
    let prefix = domain.split('.').next().unwrap_or("");
    let path = parts.uri.path();
    let (body, is_base64_encoded) = if body.is_empty() {
        (None, false)
    } else {
        let ct = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        match std::str::from_utf8(body) {
            Ok(s) if is_text(ct) => (Some(Cow::Borrowed(s)), false),
            _ => (Some(base64::engine::general_purpose::STANDARD.encode(body).into()), true),
        }
    };
    let event = HttpEvent {
        version: "2.0",
        route_key: "$default",
        raw_path: path,
        raw_query_string: raw_query,
        cookies,
        headers,
        query_string_parameters: query,
        request_context: RequestContext {
            account_id: "anonymous",
            api_id: prefix,
            domain_name: domain,
            domain_prefix: prefix,
            http: HttpContext {
                method: parts.method.as_str(),
                path,
                protocol: protocol(parts.version),
                source_ip,
                user_agent: first("user-agent").unwrap_or(""),
            },
            request_id,
            route_key: "$default",
            stage: "$default",
            time: clf_time(now),
            time_epoch: epoch_ms(now),
        },
        body,
        is_base64_encoded,
    };
    // Sized for the event's fixed part and the body (base64 at most 4/3 of it): written
    // without growing.
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut out, &event).map_err(|e| format!("building the event: {e}"))?;
    Ok(Bytes::from(out))
}

/// `HTTP/1.1`, as `requestContext.http.protocol` names the version.
fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The HTTP response for a function's answer to an HTTP event (see the [module docs](self)).
fn http_response(payload: &[u8]) -> Response<Body> {
    if let Some(r) = plain_response(payload) {
        return r;
    }
    let value = match serde_json::from_slice::<Value>(payload) {
        Ok(v) => v,
        // Not JSON: passed on as the body, as API Gateway would not (it answers 502), but
        // nothing is lost.
        Err(_) => return json_response(StatusCode::OK, Bytes::copy_from_slice(payload)),
    };
    let obj = match value {
        Value::Object(o) if o.contains_key("statusCode") => o,
        Value::String(s) => return json_response(StatusCode::OK, Bytes::from(s)),
        _ => return json_response(StatusCode::OK, Bytes::copy_from_slice(payload)),
    };
    match structured_response(&obj) {
        Ok(r) => r,
        Err(m) => api_error(StatusCode::BAD_GATEWAY, "Function.InvalidResponse", &m),
    }
}

/// The usual shape of a function's HTTP answer (what `lambda_http` sends), read without
/// building a JSON tree: this runs for every invocation. Anything it does not cover (no
/// `statusCode` number, a header value that is an object, a body that is not a string...)
/// fails to read and takes the general path, [`structured_response`].
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlainAnswer<'a> {
    status_code: Option<u16>,
    #[serde(borrow, default)]
    headers: Option<BTreeMap<Name<'a>, PlainValue<'a>>>,
    #[serde(borrow, default)]
    multi_value_headers: Option<BTreeMap<Name<'a>, PlainValue<'a>>>,
    #[serde(borrow, default)]
    cookies: Option<Vec<PlainValue<'a>>>,
    #[serde(borrow, default)]
    body: Option<Cow<'a, str>>,
    #[serde(default)]
    is_base64_encoded: Option<bool>,
}

/// A header name in a function's answer, borrowed from it unless escaped.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Name<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Name<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match <PlainValue<'a> as serde::Deserialize<'de>>::deserialize(d)? {
            PlainValue::Text(t) => Ok(Name(t)),
            _ => Err(serde::de::Error::custom("not a header name")),
        }
    }
}

/// A header value in a function's answer: a scalar (as [`structured_response`] takes it:
/// text, a number or a boolean as their JSON text, `null` for none) or a list of them.
enum PlainValue<'a> {
    Text(Cow<'a, str>),
    Null,
    List(Vec<PlainValue<'a>>),
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for PlainValue<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PlainValue<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a header value or a list of them")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(PlainValue::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PlainValue::Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(PlainValue::Text(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(PlainValue::Text(Cow::Borrowed(if v { "true" } else { "false" })))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(PlainValue::Text(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(PlainValue::Text(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                // Written as serde_json writes the number, as the general path does.
                let n = serde_json::Number::from_f64(v)
                    .ok_or_else(|| E::custom("not a JSON number"))?;
                Ok(PlainValue::Text(Cow::Owned(n.to_string())))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(PlainValue::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(PlainValue::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut all = Vec::new();
                while let Some(v) = seq.next_element()? {
                    all.push(v);
                }
                Ok(PlainValue::List(all))
            }
        }
        d.deserialize_any(V)
    }
}

/// The response for an answer of the usual shape ([`PlainAnswer`]); `None` for any other
/// answer, or any that would be an error (the general path then says which).
fn plain_response(payload: &[u8]) -> Option<Response<Body>> {
    let a: PlainAnswer<'_> = serde_json::from_slice(payload).ok()?;
    let status = StatusCode::from_u16(a.status_code?).ok()?;
    let mut headers = HeaderMap::new();
    let mut add = |name: &str, v: &PlainValue<'_>| -> Option<()> {
        match v {
            PlainValue::Text(t) => push_header(&mut headers, name, t).ok(),
            PlainValue::Null => Some(()),
            PlainValue::List(_) => None,
        }
    };
    let multi = a.multi_value_headers.as_ref();
    if let Some(m) = multi {
        for (Name(k), vs) in m {
            match vs {
                PlainValue::List(vs) => {
                    for v in vs {
                        add(k, v)?;
                    }
                }
                v => add(k, v)?,
            }
        }
    }
    if let Some(m) = &a.headers {
        for (k, v) in m {
            // A header in both maps keeps the multi-value one.
            if !multi.is_some_and(|mv| mv.contains_key(k)) {
                add(&k.0, v)?;
            }
        }
    }
    for c in a.cookies.iter().flatten() {
        add("set-cookie", c)?;
    }
    let body = match a.body {
        None => Bytes::new(),
        Some(b) if a.is_base64_encoded.unwrap_or(false) => {
            Bytes::from(base64::engine::general_purpose::STANDARD.decode(b.as_bytes()).ok()?)
        }
        Some(Cow::Borrowed(b)) => Bytes::copy_from_slice(b.as_bytes()),
        Some(Cow::Owned(b)) => Bytes::from(b),
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Some(r)
}

/// Appends header `name: v` of a function's answer (hop-by-hop headers and
/// `Content-Length` left out: the response is framed here).
fn push_header(headers: &mut HeaderMap, name: &str, v: &str) -> Result<(), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    let v = HeaderValue::from_str(v)
        .map_err(|_| format!("header {name}: {v:?} is not a header value"))?;
    if !faas_core::instance::is_hop_by_hop(&n) && n != header::CONTENT_LENGTH {
        headers.append(n, v);
    }
    Ok(())
}

fn structured_response(obj: &Map<String, Value>) -> Result<Response<Body>, String> {
    let status = obj
        .get("statusCode")
        .and_then(|s| s.as_u64().or_else(|| s.as_str().and_then(|s| s.trim().parse().ok())))
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            format!("the function's statusCode {} is not an HTTP status", obj["statusCode"])
        })?;
    let mut headers = HeaderMap::new();
    let mut add = |name: &str, v: &Value| -> Result<(), String> {
        let v = match v {
            Value::String(s) => Cow::Borrowed(s.as_str()),
            Value::Number(n) => Cow::Owned(n.to_string()),
            Value::Bool(b) => Cow::Owned(b.to_string()),
            Value::Null => return Ok(()),
            other => return Err(format!("header {name}: {other} is not a header value")),
        };
        push_header(&mut headers, name, &v)
    };
    if let Some(Value::Object(m)) = obj.get("multiValueHeaders") {
        for (k, vs) in m {
            for v in vs.as_array().map(|a| a.as_slice()).unwrap_or(std::slice::from_ref(vs)) {
                add(k, v)?;
            }
        }
    }
    if let Some(Value::Object(m)) = obj.get("headers") {
        for (k, v) in m {
            // A header in both maps keeps the multi-value one.
            if obj.get("multiValueHeaders").and_then(|mv| mv.get(k.as_str())).is_none() {
                add(k, v)?;
            }
        }
    }
    if let Some(Value::Array(cs)) = obj.get("cookies") {
        for c in cs {
            add("set-cookie", c)?;
        }
    }
    let body = match obj.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) => {
            if obj.get("isBase64Encoded").and_then(Value::as_bool).unwrap_or(false) {
                base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map(Bytes::from)
                    .map_err(|e| format!("the function's base64 body does not decode: {e}"))?
            } else {
                Bytes::from(s.clone())
            }
        }
        Some(other) => Bytes::from(other.to_string()),
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::builder().method("POST").uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn requests_become_http_api_events() {
        let p = parts(
            "/a/b?x=1&y=2&x=3",
            &[
                ("cookie", "a=1; b=2"),
                ("content-type", "text/plain"),
                ("x-forwarded-for", "10.0.0.9, 1.1.1.1"),
            ],
        );
        let e: Value = serde_json::from_slice(&http_event(&p, b"hi", UNIX_EPOCH).unwrap()).unwrap();
        assert_eq!(e["version"], "2.0");
        assert_eq!(e["routeKey"], "$default");
        assert_eq!(e["rawPath"], "/a/b");
        assert_eq!(e["rawQueryString"], "x=1&y=2&x=3");
        assert_eq!(e["queryStringParameters"]["x"], "1,3");
        assert_eq!(e["cookies"], json!(["a=1", "b=2"]));
        assert!(e["headers"].get("cookie").is_none());
        assert_eq!(e["requestContext"]["http"]["method"], "POST");
        assert_eq!(e["requestContext"]["http"]["sourceIp"], "10.0.0.9");
        assert_eq!(e["requestContext"]["time"], "01/Jan/1970:00:00:00 +0000");
        assert_eq!((e["body"].as_str(), e["isBase64Encoded"].as_bool()), (Some("hi"), Some(false)));
        let p = parts("/", &[("content-type", "application/octet-stream")]);
        let e: Value =
            serde_json::from_slice(&http_event(&p, &[0, 255], UNIX_EPOCH).unwrap()).unwrap();
        assert_eq!(
            (e["body"].as_str(), e["isBase64Encoded"].as_bool()),
            (Some("AP8="), Some(true))
        );
    }

    #[tokio::test]
    async fn answers_become_http_responses() {
        let body = |r: Response<Body>| async move {
            let (p, b) = r.into_parts();
            (p, b.collect().await.unwrap().to_bytes())
        };
        let r = http_response(
            br#"{"statusCode":201,"headers":{"x-a":"1"},"cookies":["c=1","d=2"],"body":"aGk=","isBase64Encoded":true}"#,
        );
        let (p, b) = body(r).await;
        assert_eq!(p.status, 201);
        assert_eq!(p.headers["x-a"], "1");
        assert_eq!(p.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(&b[..], b"hi");
        let (p, b) = body(http_response(br#"{"hello":1}"#)).await;
        assert_eq!((p.status.as_u16(), &b[..]), (200, &br#"{"hello":1}"#[..]));
        assert_eq!(p.headers["content-type"], "application/json");
        let (_, b) = body(http_response(br#""plain""#)).await;
        assert_eq!(&b[..], b"plain");
        let (p, b) = body(http_response(br#"{"statusCode":99999}"#)).await;
        assert_eq!(p.status, 502);
        assert!(String::from_utf8_lossy(&b).contains("Function.InvalidResponse"));
    }

    /// The fast path for the usual answers gives what the general path gives, and leaves
    /// every other answer to it.
    #[tokio::test]
    async fn plain_answers_read_as_the_general_path_reads_them() {
        async fn parts(r: Response<Body>) -> (StatusCode, HeaderMap, Bytes) {
            let (p, b) = r.into_parts();
            (p.status, p.headers, b.collect().await.unwrap().to_bytes())
        }
        let general = |p: &[u8]| match serde_json::from_slice::<Value>(p).unwrap() {
            Value::Object(o) => structured_response(&o).unwrap(),
            other => panic!("{other}"),
        };
        let plain: &[&str] = &[
            // What lambda_http 1.x sends.
            r#"{"statusCode":200,"headers":{"content-type":"text/plain"},"multiValueHeaders":{"content-type":["text/plain"]},"body":"hello, world","isBase64Encoded":false,"cookies":[]}"#,
            r#"{"statusCode":201,"headers":{"x-a":"1","x-n":5,"x-b":true,"x-f":1.5,"x-z":null},"cookies":["c=1","d=2"],"body":"aGk=","isBase64Encoded":true}"#,
            r#"{"statusCode":204,"multiValueHeaders":{"x-m":["1","2"],"x-s":"3"},"headers":{"x-m":"0","connection":"close"}}"#,
            r#"{"statusCode":200,"body":"caf\u00e9 \"q\"","extra":{"ignored":[1,2]},"headers":{"x-\u0061":"\u00e9"}}"#,
            r#"{"statusCode":200,"body":null,"cookies":null,"headers":null}"#,
        ];
        for p in plain {
            let fast = plain_response(p.as_bytes()).unwrap_or_else(|| panic!("not plain: {p}"));
            assert_eq!(parts(fast).await, parts(general(p.as_bytes())).await, "{p}");
        }
        let other: &[&str] = &[
            r#"{"statusCode":"200","body":"x"}"#,
            r#"{"statusCode":null}"#,
            r#"{"statusCode":99999}"#,
            r#"{"statusCode":200,"body":{"json":true}}"#,
            r#"{"statusCode":200,"headers":{"x-a":["1"]}}"#,
            r#"{"statusCode":200,"headers":{"x-a":{"o":1}}}"#,
            r#"{"statusCode":200,"multiValueHeaders":{"x-a":[["1"]]}}"#,
            r#"{"statusCode":200,"headers":{"bad name":"1"}}"#,
            r#"{"statusCode":200,"body":"!!","isBase64Encoded":true}"#,
            r#"{"statusCode":200,"isBase64Encoded":"yes","body":"x"}"#,
            r#"{"statusCode":200,"cookies":"c=1"}"#,
            r#"{"hello":1}"#,
            r#""plain""#,
            "not json",
        ];
        for p in other {
            assert!(plain_response(p.as_bytes()).is_none(), "{p}");
        }
    }

    #[test]
    fn a_lambda_replica_takes_one_more_invocation_per_environment() {
        let spec = |n: Option<u32>, vars: &[(&str, &str)]| {
            let mut s = faas_core::FunctionSpec::new("f", "img");
            s.max_concurrency = n;
            for (k, v) in vars {
                s = s.env(*k, *v);
            }
            replica_capacity(&s)
        };
        let lambda = ("mode", "lambda");
        assert_eq!(spec(Some(3), &[("mode", "http")]), Some(3));
        assert_eq!(spec(None, &[lambda]), None);
        assert_eq!(spec(Some(1), &[lambda]), Some(2));
        assert_eq!(spec(Some(4), &[lambda]), Some(8));
        assert_eq!(spec(Some(4), &[lambda, ("lambda_concurrency", "2")]), Some(6));
        assert_eq!(spec(Some(4), &[lambda, ("lambda_prefetch", "0")]), Some(4));
        assert_eq!(spec(Some(2), &[lambda, ("lambda_prefetch", "3")]), Some(8));
        assert_eq!(
            spec(Some(2), &[lambda, ("lambda_prefetch", "3"), ("lambda_queue", "5")]),
            Some(7)
        );
    }

    #[test]
    fn config_reads_the_lambda_variables() {
        let vars = |v: &[(&str, &str)]| -> HashMap<String, String> {
            v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let c = LambdaConfig::from_vars(&vars(&[
            ("OPENFAAS_FUNCTION_NAME", "echo"),
            ("handler", "app.main"),
            ("lambda_event", "RAW"),
        ]))
        .unwrap();
        assert_eq!(c.event, EventFormat::Raw);
        assert_eq!(c.function_arn, "arn:aws:lambda:us-east-1:000000000000:function:echo");
        let env: HashMap<_, _> = c.env.into_iter().collect();
        assert_eq!(env["_HANDLER"], "app.main");
        assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
        assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/echo");
        for (k, v) in [
            ("lambda_event", "soap"),
            ("lambda_queue", "0"),
            ("lambda_concurrency", "0"),
            ("lambda_concurrency", "65"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "lots"),
            ("lambda_prefetch", "9"),
            ("lambda_prefetch", "-1"),
        ] {
            match LambdaConfig::from_vars(&vars(&[(k, v)])) {
                Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, k),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
        let id = uuid_v4();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(id.as_bytes()[14], b'4', "version 4: {id}");
        assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "variant: {id}");
    }
}

//! The watchdog's `openwhisk` mode: the invoker side of the OpenWhisk action runtime
//! protocol, so that an action written for OpenWhisk runs unmodified on every backend.
//!
//! # The runtime
//!
//! The watchdog starts `fprocess` (the action's runtime: `runtimes/python/runtime.py` for
//! `python:3`, a blackbox image's own proxy...; see [`faas_core::runtimes`]) with the
//! environment variables `port` and `bind` set to the port and address of `upstream_url`
//! (default `http://127.0.0.1:8081`), waits until it accepts connections, then calls
//! `POST /init` once with `{"value": {"name", "main", "code", "binary", "env"}}`. For each
//! request it calls `POST /run` with `{"value": params, "activation_id", "action_name",
//! "deadline", "api_key", "namespace", "transaction_id"}` and answers with the JSON object the
//! runtime returns (200, `application/json`). A result with an `error` field is an
//! application error (OpenWhisk status code 1): answered with 502 and the object.
//!
//! A runtime that crashes (exits, or breaks the connection during `/run`) or runs past its
//! time limit is killed and started again with a fresh `/init`; a runtime whose `/init` failed
//! answers that failure to the activation that finds it, and the next activation gets a new
//! runtime (as OpenWhisk gives a new container).
//!
//! # Errors
//!
//! The watchdog answers these itself, with [`faas_core::instance::WATCHDOG_ERROR_HEADER`]
//! naming the reason and OpenWhisk's message as the body (the gateway makes them developer
//! errors, status code 2, with the message unchanged), and logs OpenWhisk's
//! [`messages::LOG_WARNING_DEVELOPER_ERROR`] line:
//!
//! | what | reason | message |
//! |---|---|---|
//! | `/init` answered an error | `action_init` | the runtime's `error`, else [`messages::invalid_init`] |
//! | the runtime exited before or during `/init` | `action_init` | [`messages::ABNORMAL_INIT`] |
//! | `/init` ran past the time limit | `action_timeout` | [`messages::timed_out`] "... during initialization." |
//! | `/run` answered an error or no JSON object | `action_result` | the runtime's `error` (e.g. "The action did not return a dictionary."), else [`messages::invalid_run`] |
//! | the runtime crashed during `/run` | `action_crash` | [`messages::ABNORMAL_RUN`] |
//! | `/run` ran past the time limit (`exec_timeout`) | `action_timeout` | [`messages::timed_out`] |
//!
//! # Requests and parameters
//!
//! - A request carrying [`ACTIVATION_ID_HEADER`] is an API activation (what an OpenWhisk REST
//!   layer sends): its body, a JSON object, is the parameters as they are (empty: `{}`);
//!   anything else is refused with 400.
//! - Any other request is a web request: the parameters are the query string's fields, then
//!   the fields of a JSON object body over them (a body that is no JSON object is passed as
//!   the string `__ow_body`, base64 when it is not UTF-8), plus OpenWhisk's web-action fields
//!   `__ow_method` (lower case), `__ow_headers` (lower-case names) and `__ow_path` (the path
//!   after the function's name, `""` for none).
//!
//! The activation's `activation_id`, `namespace`, `api_key` and `transaction_id` come from the
//! headers [`ACTIVATION_ID_HEADER`], [`NAMESPACE_HEADER`], [`API_KEY_HEADER`] and
//! [`TRANSACTION_ID_HEADER`] when present, else from the call id (`X-Call-Id`), `ow_namespace`
//! and `ow_api_key`. The `deadline` is now plus `exec_timeout` in epoch milliseconds.
//!
//! # Logs of an activation
//!
//! Everything the runtime writes is logged as in `http` mode (so the backend's logs show it).
//! The runtime ends each activation's output with the line
//! `XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX` ([`LOG_MARKER`]) on stdout and on stderr; the
//! markers are not logged. When the request asks with `X-OpenWhisk-Logs: true`
//! ([`LOGS_HEADER`]) and the action runs one activation at a time, the answer carries the
//! activation's lines in the same header, as a JSON array of strings
//! `"<RFC 3339 time> <stdout|stderr>: <text>"` (ASCII, at most [`MAX_LOGS_HEADER_BYTES`],
//! then a truncation line) on success and on the errors above. The first activation after an
//! `/init` also carries [`INIT_TIME_HEADER`] (the `/init` time in ms: OpenWhisk's `initTime`
//! annotation of a cold start).
//!
//! # Variables
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ow_action_name` | `OPENFAAS_FUNCTION_NAME`, else `action` | the action's name |
//! | `ow_namespace` | `OPENFAAS_NAMESPACE`, else `_` | its namespace |
//! | `ow_main` | `main` | the entry point |
//! | `ow_code` / `ow_code_file` | (none: a blackbox with its code built in) | the code: source text, or a base64 zip with `ow_binary=true` |
//! | `ow_binary` | `false` | the code is a base64 zip |
//! | `ow_env` | `{}` | a JSON object passed as `/init`'s `env` |
//! | `ow_concurrency` | `1` | activations one runtime runs at once (1 to [`MAX_CONCURRENCY`]); more wait in line |
//! | `ow_api_key` | `""` | the `api_key` of activations that bring none |
//! | `ow_web` | `false` | a web action: the result of a web request is its HTTP answer (`statusCode`, `headers`, `body`; see `web_response`), as OpenWhisk's `web-export` actions |

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use faas_core::instance::WatchdogError;
use faas_core::{Body, Error};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::io::AsyncRead;
use tokio::process::Command;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

use crate::sys;
use crate::watchdog::{
    emit_line, exit_message, for_each_line, log, now_stamp, parse_bool, read_body_bounded,
    stop_child, text, BodyRead,
};

/// Where the runtime serves when `upstream_url` is not set.
pub const DEFAULT_RUNTIME_URL: &str = "http://127.0.0.1:8081";

/// The line a runtime writes on stdout and on stderr at the end of each activation.
pub const LOG_MARKER: &str = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX";

/// Request: `true` asks for the activation's log lines; response: those lines, a JSON array
/// of strings.
pub const LOGS_HEADER: &str = "x-openwhisk-logs";

/// Response: the `/init` time in milliseconds, on the first activation of a runtime.
pub const INIT_TIME_HEADER: &str = "x-openwhisk-init-time";

/// Request: the activation id (marks an API activation; see the module docs).
pub const ACTIVATION_ID_HEADER: &str = "x-openwhisk-activation-id";
/// Request: the activation's namespace.
pub const NAMESPACE_HEADER: &str = "x-openwhisk-namespace";
/// Request: the activation's API key.
pub const API_KEY_HEADER: &str = "x-openwhisk-api-key";
/// Request: the activation's transaction id.
pub const TRANSACTION_ID_HEADER: &str = "x-openwhisk-transaction-id";

/// The most activations one runtime may run at once (`ow_concurrency`).
pub const MAX_CONCURRENCY: usize = 500;

/// The largest parameters (request body) an activation takes: OpenWhisk's 1 MB payload
/// limit, with room for the JSON around it.
pub const MAX_PAYLOAD_BYTES: usize = 5 << 20;

/// The largest `/run` answer read: OpenWhisk's 1 MB result limit.
pub const MAX_RESULT_BYTES: usize = 1 << 20;

/// The most bytes of log lines in [`LOGS_HEADER`].
pub const MAX_LOGS_HEADER_BYTES: usize = 64 * 1024;

/// The time limit of `/init` when `exec_timeout` is 0 (OpenWhisk's default action timeout).
const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an activation's answer waits for both log markers.
const MARKER_WAIT: Duration = Duration::from_secs(1);

/// Lines and bytes kept per stream and activation (beyond them, lines are still logged but
/// not collected; with `ow_concurrency` over 1, where activations are not told apart, the
/// same bounds hold until the runtime's next activation starts).
const MAX_COLLECTED_LINES: usize = 10_000;
const MAX_COLLECTED_BYTES: usize = 1 << 20;

/// OpenWhisk's messages (`Messages.scala` of apache/openwhisk), word for word.
pub mod messages {
    /// The runtime exited before `/init` answered.
    pub const ABNORMAL_INIT: &str = "The action did not initialize and exited unexpectedly.";
    /// The runtime exited (or broke the connection) before `/run` answered.
    pub const ABNORMAL_RUN: &str =
        "The action did not produce a valid response and exited unexpectedly.";
    /// The log line added after a developer error.
    pub const LOG_WARNING_DEVELOPER_ERROR: &str =
        "The action did not initialize or run as expected. Log data might be missing.";

    /// The action ran past its time limit (`init`: during `/init`).
    pub fn timed_out(limit_ms: u128, init: bool) -> String {
        let end = if init { " during initialization." } else { "." };
        format!("The action exceeded its time limits of {limit_ms} milliseconds{end}")
    }

    /// `/init` answered something other than success or `{"error": ...}`.
    pub fn invalid_init(body: &str) -> String {
        if body.is_empty() {
            "The action failed during initialization.".into()
        } else {
            format!("The action failed during initialization: {body}")
        }
    }

    /// `/run` answered something other than a JSON object or `{"error": ...}`.
    pub fn invalid_run(body: &str) -> String {
        if body.is_empty() {
            "The action did not produce a valid JSON response.".into()
        } else {
            format!("The action did not produce a valid JSON response: {body}")
        }
    }

    /// `/run` answered more than the result limit.
    pub fn truncated(limit: usize) -> String {
        format!(
            "The action produced a response that exceeded the allowed length: more than {limit} bytes."
        )
    }

    /// Logs over the size limit of the logs header.
    pub fn truncated_logs(limit: usize) -> String {
        format!(
            "Logs were truncated because the total bytes size exceeds the limit of {limit} bytes."
        )
    }
}

/// The `openwhisk` mode's settings (the `ow_*` variables of the module docs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct OwConfig {
    /// `ow_action_name`.
    pub action_name: String,
    /// `ow_namespace`.
    pub namespace: String,
    /// `ow_main`.
    pub main: String,
    /// `ow_code` or the contents of `ow_code_file` (empty: none).
    pub code: String,
    /// `ow_binary`.
    pub binary: bool,
    /// `ow_env`.
    pub env: Map<String, Value>,
    /// `ow_concurrency`.
    pub concurrency: usize,
    /// `ow_api_key`.
    pub api_key: String,
    /// `ow_web`: a web action (its result is the HTTP answer of web requests).
    pub web: bool,
    /// `ow_stem`: start the runtime but wait for [`SPECIALISE_PATH`] before `/init` (a stem
    /// cell).
    #[serde(skip)]
    pub stem: bool,
}

impl Default for OwConfig {
    fn default() -> Self {
        OwConfig {
            action_name: "action".into(),
            namespace: "_".into(),
            main: "main".into(),
            code: String::new(),
            binary: false,
            env: Map::new(),
            concurrency: 1,
            api_key: String::new(),
            web: false,
            stem: false,
        }
    }
}

/// `POST` here (JSON [`Specialisation`]) turns a stem cell (`ow_stem=true`) into an instance
/// of one action: the watchdog calls `/init` with it and answers once that is done (200
/// `{"initTime": ms}`, or the init failure as the watchdog's error answer, which the first
/// activation gets too). Refused (409) on a watchdog that is no stem cell or was specialised
/// already.
pub const SPECIALISE_PATH: &str = "/_/openwhisk/specialise";

/// The watchdog variables a stem cell cannot take after it started: a backend starts an
/// action that sets one cold, not from a stem cell.
pub const STEM_FIXED_VARS: &[&str] = &[
    "fprocess",
    "function_process",
    "upstream_url",
    "port",
    "bind_address",
    "read_timeout",
    "write_timeout",
    "exec_timeout",
    "max_inflight",
    "healthcheck_interval",
    "prefix_logs",
    "combine_output",
    "content_type",
    "static_path",
    "log_requests",
    "watchdog_threads",
    "ow_stem",
];

/// What specialises a stem cell: the action and its time limit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Specialisation {
    /// The action (`ow_*` settings).
    #[serde(flatten)]
    pub action: OwConfig,
    /// The time limit of `/init` and of each `/run`, in ms (0: none).
    #[serde(default)]
    pub exec_timeout_ms: u64,
}

impl OwConfig {
    /// Reads the `ow_*` variables through `get` (which answers `None` for unset or empty
    /// ones); a bad value gives [`Error::InvalidSpec`] naming the variable.
    pub fn from_vars<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<OwConfig, Error> {
        let code = match (get("ow_code"), get("ow_code_file")) {
            (Some(c), _) => c.to_string(),
            (None, Some(path)) => std::fs::read_to_string(path.trim())
                .map_err(|e| Error::invalid("ow_code_file", format!("{path:?}: {e}")))?,
            (None, None) => String::new(),
        };
        let binary =
            get("ow_binary").map(|v| parse_bool("ow_binary", v)).transpose()?.unwrap_or(false);
        if binary {
            base64::engine::general_purpose::STANDARD.decode(code.trim()).map_err(|e| {
                Error::invalid("ow_code", format!("ow_binary=true needs base64 (a zip): {e}"))
            })?;
        }
        let env = match get("ow_env") {
            None => Map::new(),
            Some(v) => match serde_json::from_str::<Value>(v) {
                Ok(Value::Object(m)) => m,
                _ => return Err(Error::invalid("ow_env", "must be a JSON object")),
            },
        };
        let concurrency = match get("ow_concurrency") {
            None => 1,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => n,
                _ => {
                    return Err(Error::invalid(
                        "ow_concurrency",
                        format!("{v:?} is not a whole number from 1 to {MAX_CONCURRENCY}"),
                    ))
                }
            },
        };
        let main = get("ow_main").unwrap_or("main").trim().to_string();
        let stem = get("ow_stem").map(|v| parse_bool("ow_stem", v)).transpose()?.unwrap_or(false);
        let web = get("ow_web").map(|v| parse_bool("ow_web", v)).transpose()?.unwrap_or(false);
        Ok(OwConfig {
            stem,
            web,
            action_name: get("ow_action_name")
                .or_else(|| get("OPENFAAS_FUNCTION_NAME"))
                .unwrap_or("action")
                .to_string(),
            namespace: get("ow_namespace")
                .or_else(|| get("OPENFAAS_NAMESPACE"))
                .unwrap_or("_")
                .to_string(),
            main,
            code,
            binary,
            env,
            concurrency,
            api_key: get("ow_api_key").unwrap_or("").to_string(),
        })
    }
}

/// Where a runtime is in its life.
#[derive(Debug, Clone)]
enum State {
    /// Being started or initialised.
    Starting,
    /// Initialised: `/run` may be called.
    Ready {
        gen: u64,
        init_ms: u64,
        /// Not yet used by an activation (it reports the init time).
        fresh: Arc<AtomicBool>,
    },
    /// Failed to start or initialise; the next activation gets this failure.
    Failed { gen: u64, reason: WatchdogError, message: String },
    /// A stem cell: listening, waiting to be specialised.
    Stem,
}

/// One activation's log lines, split by the markers.
#[derive(Default)]
struct LogState {
    /// Lines since the last marker, per stream (stdout, stderr).
    pending: [Vec<String>; 2],
    /// Lines up to the last marker, per stream.
    done: [Vec<String>; 2],
    /// Markers seen, per stream.
    markers: [u64; 2],
    /// Bytes of `pending` and `done`, per stream.
    bytes: [usize; 2],
}

#[derive(Default)]
struct LogSink {
    st: Mutex<LogState>,
    marker: Notify,
}

impl LogSink {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn line(&self, stream: usize, line: &[u8], prefix: bool) {
        let name = if stream == 0 { "stdout" } else { "stderr" };
        let text = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        if text.trim_end() == LOG_MARKER {
            let mut st = self.lock();
            let lines = std::mem::take(&mut st.pending[stream]);
            st.done[stream].extend(lines);
            st.markers[stream] += 1;
            drop(st);
            self.marker.notify_waiters();
            return;
        }
        emit_line(name, prefix, text.as_bytes());
        let mut st = self.lock();
        let n = st.pending[stream].len() + st.done[stream].len();
        if n < MAX_COLLECTED_LINES && st.bytes[stream] + text.len() <= MAX_COLLECTED_BYTES {
            st.bytes[stream] += text.len();
            st.pending[stream].push(format!("{} {name}: {text}", now_stamp()));
        }
    }

    /// Starts an activation: forgets what earlier ones left and returns the marker counts.
    fn begin(&self) -> [u64; 2] {
        let mut st = self.lock();
        st.pending = Default::default();
        st.done = Default::default();
        st.bytes = [0; 2];
        st.markers
    }

    /// The activation's lines: once both streams have passed a marker since `begin` (waiting
    /// at most `wait`), in time order.
    async fn finish(&self, since: [u64; 2], wait: Duration) -> Vec<String> {
        let until = Instant::now() + wait;
        loop {
            let notified = self.marker.notified();
            {
                let st = self.lock();
                if st.markers[0] > since[0] && st.markers[1] > since[1] {
                    break;
                }
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                break;
            }
        }
        let mut st = self.lock();
        let [o, e] = std::mem::take(&mut st.done);
        // Lines of a stream whose marker never came are the activation's too.
        let [po, pe] = std::mem::take(&mut st.pending);
        st.bytes = [0; 2];
        let mut lines: Vec<String> = o.into_iter().chain(po).chain(e).chain(pe).collect();
        // RFC 3339 stamps of one clock sort as text; the sort is stable within a stream.
        lines.sort_by(|a, b| a.split(' ').next().cmp(&b.split(' ').next()));
        lines
    }
}

async fn pump<R: AsyncRead + Unpin>(r: R, stream: usize, sink: Arc<LogSink>, prefix: bool) {
    for_each_line(r, |line| sink.line(stream, line, prefix)).await
}

/// The runtime of an `openwhisk`-mode watchdog: its process, its state and its slots.
pub(crate) struct OwRuntime {
    /// The action; replaced once when a stem cell is specialised.
    cfg: Mutex<Arc<OwConfig>>,
    /// `exec_timeout` in ms (0: none).
    exec_ms: std::sync::atomic::AtomicU64,
    stem: bool,
    specialised: watch::Sender<bool>,
    program: OsString,
    args: Vec<String>,
    addr: SocketAddr,
    /// `upstream_url`'s path, before `/init` and `/run`.
    prefix: String,
    read_timeout: Duration,
    prefix_logs: bool,
    state: watch::Sender<State>,
    /// The highest generation asked to be replaced.
    restart: watch::Sender<u64>,
    slots: Semaphore,
    logs: Arc<LogSink>,
}

/// POSTs the JSON `body` to `path` at `addr` on a fresh connection, reading at most `limit`
/// bytes back.
pub(crate) async fn post(
    addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
    limit: usize,
) -> Result<(StatusCode, Bytes), CallFail> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|_| CallFail::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| CallFail::Connect)?;
    let conn = tokio::spawn(conn);
    let req = Request::post(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .map_err(|_| CallFail::Broken)?;
    let resp = send.send_request(req).await.map_err(|_| CallFail::Broken)?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), limit).collect().await;
    conn.abort();
    match body {
        Ok(b) => Ok((status, b.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(CallFail::TooLarge),
        Err(_) => Err(CallFail::Broken),
    }
}

/// How a call to the runtime failed below HTTP.
#[derive(Debug)]
pub(crate) enum CallFail {
    /// Nothing was sent: the runtime does not listen.
    Connect,
    /// The connection broke (the runtime crashed).
    Broken,
    /// The answer was over the limit.
    TooLarge,
}

impl OwRuntime {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: OwConfig,
        program: OsString,
        args: Vec<String>,
        addr: SocketAddr,
        prefix: String,
        exec_timeout: Duration,
        read_timeout: Duration,
        prefix_logs: bool,
    ) -> OwRuntime {
        let slots = Semaphore::new(cfg.concurrency);
        OwRuntime {
            stem: cfg.stem,
            specialised: watch::channel(!cfg.stem).0,
            cfg: Mutex::new(Arc::new(cfg)),
            exec_ms: (exec_timeout.as_millis() as u64).into(),
            program,
            args,
            addr,
            prefix,
            read_timeout,
            prefix_logs,
            state: watch::channel(State::Starting).0,
            restart: watch::channel(0).0,
            slots,
            logs: Arc::default(),
        }
    }

    /// Whether `/init` has been tried (the watchdog's health check answers 200 from then on:
    /// an init failure is reported to the activation that finds it).
    pub(crate) fn started(&self) -> bool {
        !matches!(*self.state.borrow(), State::Starting)
    }

    fn cfg(&self) -> Arc<OwConfig> {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn exec_timeout(&self) -> Duration {
        Duration::from_millis(self.exec_ms.load(Ordering::Acquire))
    }

    fn init_timeout(&self) -> Duration {
        match self.exec_timeout() {
            d if d.is_zero() => DEFAULT_INIT_TIMEOUT,
            d => d,
        }
    }

    /// The state once `/init` has been tried (ready or failed), waiting until `until`; after
    /// that the init timeout's answer.
    async fn settled(&self, until: Instant) -> Result<State, Response<Body>> {
        let mut rx = self.state.subscribe();
        let settled = rx.wait_for(|s| matches!(s, State::Ready { .. } | State::Failed { .. }));
        let state = match tokio::time::timeout_at(until, settled).await {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        };
        state.ok_or_else(|| {
            developer_error(
                WatchdogError::ActionTimeout,
                messages::timed_out(self.init_timeout().as_millis(), true),
                None,
            )
        })
    }

    /// Asks the supervisor for a new runtime in place of generation `gen`. A ready `gen`
    /// stops being ready at once, so that the next activation waits for the new runtime
    /// instead of reaching the one being replaced (which may have crashed already).
    fn request_restart(&self, gen: u64) {
        self.state.send_if_modified(|s| match s {
            State::Ready { gen: g, .. } if *g == gen => {
                *s = State::Starting;
                true
            }
            _ => false,
        });
        self.restart.send_if_modified(|g| {
            let newer = *g < gen;
            if newer {
                *g = gen;
            }
            newer
        });
    }

    /// POSTs `body` to `path` on a fresh connection, reading at most `limit` bytes back.
    async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), CallFail> {
        post(self.addr, &format!("{}{path}", self.prefix), body, limit).await
    }

    /// Waits until the runtime accepts connections (`None`) or exits (its status).
    async fn listening(&self, child: &mut tokio::process::Child) -> Option<String> {
        let probe = async {
            let mut delay = Duration::from_millis(1);
            while tokio::net::TcpStream::connect(self.addr).await.is_err() {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(20));
            }
        };
        tokio::select! {
            st = child.wait() => Some(match st {
                Ok(s) => exit_message(&s),
                Err(e) => e.to_string(),
            }),
            _ = probe => None,
        }
    }

    /// Starts the runtime and initialises it: the state it is in afterwards.
    async fn start(&self, gen: u64, child: &mut tokio::process::Child) -> State {
        let mut limit = self.init_timeout();
        let mut t0 = Instant::now();
        let fail = |reason, message: String| State::Failed { gen, reason, message };
        let timed_out = |limit: Duration| {
            fail(WatchdogError::ActionTimeout, messages::timed_out(limit.as_millis(), true))
        };
        match tokio::time::timeout(limit, self.listening(child)).await {
            Err(_) => return timed_out(limit),
            Ok(Some(how)) => {
                log(format!("the action runtime exited before listening ({how})"));
                return fail(WatchdogError::ActionInit, messages::ABNORMAL_INIT.into());
            }
            Ok(None) => {}
        }
        if !*self.specialised.borrow() {
            // A stem cell: /init waits for the action (the runtime may exit meanwhile).
            self.state.send_replace(State::Stem);
            let mut specialised = self.specialised.subscribe();
            tokio::select! {
                _ = async { let _ = specialised.wait_for(|s| *s).await; } => {}
                st = child.wait() => {
                    log(format!("the stem cell's runtime exited ({})", match st {
                        Ok(s) => exit_message(&s),
                        Err(e) => e.to_string(),
                    }));
                    return fail(WatchdogError::ActionInit, messages::ABNORMAL_INIT.into());
                }
            }
            limit = self.init_timeout();
            t0 = Instant::now();
        }
        let cfg = self.cfg();
        let init = json!({"value": {
            "name": cfg.action_name,
            "main": cfg.main,
            "code": cfg.code,
            "binary": cfg.binary,
            "env": cfg.env,
        }});
        let body = serde_json::to_vec(&init).unwrap_or_default();
        let left = limit.saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, self.post("/init", body, MAX_RESULT_BYTES)).await {
            Err(_) => timed_out(limit),
            Ok(Err(CallFail::TooLarge)) => {
                fail(WatchdogError::ActionInit, messages::invalid_init(""))
            }
            Ok(Err(_)) => fail(WatchdogError::ActionInit, messages::ABNORMAL_INIT.into()),
            Ok(Ok((status, body))) if status.is_success() => {
                let _ = body;
                State::Ready {
                    gen,
                    init_ms: t0.elapsed().as_millis() as u64,
                    fresh: Arc::new(AtomicBool::new(true)),
                }
            }
            Ok(Ok((_, body))) => {
                let message = error_field(&body).unwrap_or_else(|| {
                    messages::invalid_init(String::from_utf8_lossy(&body).trim())
                });
                fail(WatchdogError::ActionInit, message)
            }
        }
    }
}

/// The `error` of a JSON object answer, as text.
fn error_field(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(m) => match m.get("error")? {
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        },
        _ => None,
    }
}

/// Runs the runtime until `stop`: starts and initialises it, replaces it when it exits or an
/// activation asks (a crash, a timeout, a failed init), with backoff when it keeps failing.
pub(crate) async fn supervise(rt: Arc<OwRuntime>, mut stop: watch::Receiver<bool>) {
    let backoff =
        faas_core::util::Backoff::new(Duration::from_millis(20), Duration::from_secs(5)).exact();
    let mut restarts = 0u32;
    let mut gen = 0u64;
    let mut restart = rt.restart.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        gen += 1;
        rt.state.send_replace(State::Starting);
        let started = Instant::now();
        let mut cmd = Command::new(&rt.program);
        cmd.args(&rt.args)
            .env("port", rt.addr.port().to_string())
            // Our runtimes listen on this address (only the watchdog calls them).
            .env("bind", rt.addr.ip().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        sys::die_with_parent(&mut cmd, sys::SIGKILL);
        let mut child = match cmd.spawn() {
            Ok(c) => Some(c),
            Err(e) => {
                log(format!("cannot start the action runtime {:?}: {e}", rt.program));
                rt.state.send_replace(State::Failed {
                    gen,
                    reason: WatchdogError::ActionInit,
                    message: messages::ABNORMAL_INIT.into(),
                });
                None
            }
        };
        let pgid = child.as_ref().and_then(|c| c.id());
        if let Some(c) = child.as_mut() {
            if let Some(o) = c.stdout.take() {
                tokio::spawn(pump(o, 0, rt.logs.clone(), rt.prefix_logs));
            }
            if let Some(e) = c.stderr.take() {
                tokio::spawn(pump(e, 1, rt.logs.clone(), rt.prefix_logs));
            }
            let st = tokio::select! {
                st = rt.start(gen, c) => st,
                _ = stop.changed() => {
                    stop_child(c, pgid).await;
                    return;
                }
            };
            if let State::Failed { message, .. } = &st {
                log(format!("the action did not initialise: {message}"));
            }
            rt.state.send_replace(st);
        }
        let failed = matches!(*rt.state.borrow(), State::Failed { .. });
        // Until it exits, an activation asks for a new one, or the watchdog stops.
        let exited = tokio::select! {
            st = async {
                match child.as_mut() {
                    Some(c) => c.wait().await.map(|s| exit_message(&s)).unwrap_or_else(|e| e.to_string()),
                    None => std::future::pending().await,
                }
            } => Some(st),
            _ = async { let _ = restart.wait_for(|g| *g >= gen).await; } => None,
            _ = stop.changed() => {
                if let Some(c) = child.as_mut() {
                    stop_child(c, pgid).await;
                }
                return;
            }
        };
        if !failed {
            rt.state.send_replace(State::Starting);
        }
        match &exited {
            Some(how) => log(format!("the action runtime exited ({how}); starting a new one")),
            None => log("replacing the action runtime"),
        }
        if let Some(p) = pgid {
            sys::kill_group(p, sys::SIGKILL);
        }
        if let Some(c) = child.as_mut() {
            let _ = c.wait().await;
        }
        // A stem cell's runtime that died before any action was given is simply replaced.
        if failed && exited.is_some() && *rt.specialised.borrow() {
            // The failure stays visible until an activation has been given it.
            tokio::select! {
                _ = async { let _ = restart.wait_for(|g| *g >= gen).await; } => {}
                _ = stop.changed() => return,
            }
        }
        restarts = if started.elapsed() > Duration::from_secs(10) { 1 } else { restarts + 1 };
        if restarts > 1 {
            tokio::select! {
                _ = tokio::time::sleep(backoff.delay(restarts - 1)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// The runtimes of [`faas_core::runtimes::MANIFEST`] that run as local processes, as
/// `(script path under <state>/runtimes/, contents)`: the files of `runtimes/` in the
/// repository, built into the binary.
pub const RUNTIME_SCRIPTS: &[(&str, &str)] = &[
    ("python/runtime.py", include_str!("../../runtimes/python/runtime.py")),
    ("nodejs/runtime.js", include_str!("../../runtimes/nodejs/runtime.js")),
];

/// The command the process backend runs for `spec`: its `envProcess`, else, for an OpenWhisk
/// action whose kind has a local runtime, that runtime (its script written under
/// `<state>/runtimes/` when missing or different). Neither is [`Error::InvalidSpec`] naming
/// `envProcess`.
pub fn process_command(
    spec: &faas_core::FunctionSpec,
    state: &std::path::Path,
) -> Result<String, Error> {
    if let Some(p) = spec.env_process.as_deref().filter(|p| !p.trim().is_empty()) {
        return Ok(p.to_string());
    }
    let local = faas_core::runtimes::kind_of(spec)?.and_then(|k| k.process);
    let Some(rt) = local else {
        return Err(Error::invalid(
            "envProcess",
            "the process backend runs envProcess (fprocess); it must be set (an OpenWhisk \
             action of a kind with a local runtime, envVars.ow_kind, may leave it out)",
        ));
    };
    let contents = RUNTIME_SCRIPTS
        .iter()
        .find(|(p, _)| *p == rt.script)
        .map(|(_, c)| *c)
        .ok_or_else(|| Error::internal(format!("no built-in runtime script {}", rt.script)))?;
    let path = state.join("runtimes").join(rt.script);
    if std::fs::read(&path).ok().as_deref() != Some(contents.as_bytes()) {
        let io = |e: std::io::Error| Error::internal(format!("writing {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Written aside and renamed: a runtime starting now reads the old file or the new.
        let tmp = path.with_extension(format!("tmp-{:08x}", rand::random::<u32>()));
        std::fs::write(&tmp, contents).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
    }
    let path = path.to_string_lossy();
    if path.contains('\'') {
        return Err(Error::internal(format!("the state directory {path:?} contains a quote")));
    }
    Ok(format!("{} '{path}'", rt.program))
}

/// The [`Specialisation`] that makes a stem cell an instance of `spec`: its `ow_*` settings
/// (names defaulted from the spec), `extra_env` and the spec's other `envVars` as `/init`'s
/// `env` (the runtime was started before the action was known), and its timeout.
pub fn specialisation(
    spec: &faas_core::FunctionSpec,
    extra_env: &[(&str, String)],
) -> Result<Specialisation, Error> {
    let fref = spec.function_ref();
    let get = |k: &str| match k {
        "OPENFAAS_FUNCTION_NAME" => Some(fref.name.as_str()),
        "OPENFAAS_NAMESPACE" => Some(fref.namespace.as_str()),
        k => spec.env_vars.get(k).map(String::as_str).filter(|v| !v.trim().is_empty()),
    };
    let mut action = OwConfig::from_vars(get)?;
    for (k, v) in &spec.env_vars {
        if !k.starts_with("ow_") && k != "mode" {
            action.env.entry(k.clone()).or_insert_with(|| Value::String(v.clone()));
        }
    }
    for (k, v) in extra_env {
        action.env.insert((*k).to_string(), Value::String(v.clone()));
    }
    let exec_timeout_ms = spec.timeout.map_or(0, |t| t.as_millis() as u64);
    Ok(Specialisation { action, exec_timeout_ms })
}

/// The header value of `lines`: a JSON array in ASCII, within [`MAX_LOGS_HEADER_BYTES`].
fn logs_header(lines: &[String]) -> HeaderValue {
    let mut kept: Vec<&str> = Vec::new();
    let mut size = 2;
    let truncated = messages::truncated_logs(MAX_LOGS_HEADER_BYTES);
    let mut over = false;
    for l in lines {
        size += l.len() * 6 / 5 + 4;
        if size + truncated.len() + 4 > MAX_LOGS_HEADER_BYTES {
            over = true;
            break;
        }
        kept.push(l);
    }
    if over {
        kept.push(&truncated);
    }
    let json = serde_json::to_string(&kept).unwrap_or_else(|_| "[]".into());
    let mut ascii = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    HeaderValue::from_str(&ascii).unwrap_or_else(|_| HeaderValue::from_static("[]"))
}

fn header_str<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// The activation's parameters (see the module docs).
fn params(parts: &http::request::Parts, body: &Bytes) -> Result<Map<String, Value>, String> {
    if parts.headers.contains_key(ACTIVATION_ID_HEADER) {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Ok(m),
            _ => {
                Err("the body of an OpenWhisk activation must be a JSON object of parameters"
                    .into())
            }
        };
    }
    let mut m = Map::new();
    if let Some(q) = parts.uri.query() {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            m.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => m.extend(o),
            _ => {
                let b = match std::str::from_utf8(body) {
                    Ok(s) => s.to_string(),
                    Err(_) => base64::engine::general_purpose::STANDARD.encode(body),
                };
                m.insert("__ow_body".into(), Value::String(b));
            }
        }
    }
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        // The platform's own headers are not the web request's.
        if name.as_str().starts_with("x-openwhisk-") {
            continue;
        }
        let Ok(v) = value.to_str() else { continue };
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(v);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(v.to_string()));
            }
        }
    }
    m.insert("__ow_method".into(), Value::String(parts.method.as_str().to_ascii_lowercase()));
    m.insert("__ow_headers".into(), Value::Object(headers));
    let path = parts.uri.path();
    m.insert("__ow_path".into(), Value::String(if path == "/" { "" } else { path }.into()));
    Ok(m)
}

fn epoch_ms(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// Answers one request by an activation of the action (see the module docs).
pub(crate) async fn handle(rt: &Arc<OwRuntime>, req: Request<Incoming>) -> Response<Body> {
    let t0 = Instant::now();
    let (parts, body) = req.into_parts();
    let read_for =
        if rt.read_timeout.is_zero() { Duration::from_secs(3600) } else { rt.read_timeout };
    let body = match read_body_bounded(body, MAX_PAYLOAD_BYTES, t0 + read_for).await {
        Ok(b) => b,
        Err(BodyRead::TooLarge) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body",
                format!("the parameters are over the limit of {MAX_PAYLOAD_BYTES} bytes"),
            )
        }
        Err(BodyRead::Broken(e)) => {
            return text(StatusCode::BAD_REQUEST, "body", format!("reading the request body: {e}"))
        }
        Err(BodyRead::TimedOut) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "read_timeout",
                "read_timeout exceeded while reading the request body",
            )
        }
    };
    let params = match params(&parts, &body) {
        Ok(p) => p,
        Err(m) => return text(StatusCode::BAD_REQUEST, "body", m),
    };
    let api = parts.headers.contains_key(ACTIVATION_ID_HEADER);
    let wants_logs =
        header_str(&parts, LOGS_HEADER).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let cfg = rt.cfg();
    let limit = rt.exec_timeout();
    let wait_until =
        t0 + if limit.is_zero() { Duration::from_secs(86400) } else { limit } + rt.init_timeout();

    // One of the action's slots.
    let Ok(Ok(_slot)) = tokio::time::timeout_at(wait_until, rt.slots.acquire()).await else {
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            WatchdogError::Inflight.as_str(),
            format!(
                "the action runs {} activation(s) at once and none became free in time",
                cfg.concurrency
            ),
        );
    };
    // An initialised runtime (or the failure to get one).
    let st = match rt.settled(wait_until).await {
        Ok(s) => s,
        Err(timed_out) => return timed_out,
    };
    let (gen, init_ms, fresh) = match st {
        State::Failed { gen, reason, message } => {
            rt.request_restart(gen);
            return developer_error(reason, message, None);
        }
        State::Ready { gen, init_ms, fresh } => (gen, init_ms, fresh),
        State::Starting | State::Stem => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "upstream",
                "the runtime is not settled",
            )
        }
    };
    let collect_logs = cfg.concurrency == 1;
    let since = collect_logs.then(|| rt.logs.begin());
    let call_id = header_str(&parts, "x-call-id").unwrap_or("").to_string();
    let activation_id =
        header_str(&parts, ACTIVATION_ID_HEADER).map(str::to_string).unwrap_or_else(|| {
            if call_id.is_empty() {
                format!("{:032x}", rand::random::<u128>())
            } else {
                call_id.clone()
            }
        });
    let namespace = header_str(&parts, NAMESPACE_HEADER).unwrap_or(&cfg.namespace).to_string();
    let run_limit = if limit.is_zero() { Duration::from_secs(86400 * 365) } else { limit };
    let run = json!({
        "value": params,
        "activation_id": activation_id,
        "action_name": format!("/{namespace}/{}", cfg.action_name),
        "deadline": (epoch_ms(SystemTime::now()) + run_limit.as_millis()).to_string(),
        "api_key": header_str(&parts, API_KEY_HEADER).unwrap_or(&cfg.api_key),
        "namespace": namespace,
        "transaction_id": header_str(&parts, TRANSACTION_ID_HEADER).unwrap_or(&call_id),
    });
    let body = serde_json::to_vec(&run).unwrap_or_default();
    let outcome =
        match tokio::time::timeout(run_limit, rt.post("/run", body, MAX_RESULT_BYTES)).await {
            Err(_) => {
                rt.request_restart(gen);
                Err((WatchdogError::ActionTimeout, messages::timed_out(limit.as_millis(), false)))
            }
            Ok(Err(CallFail::TooLarge)) => {
                Err((WatchdogError::ActionResult, messages::truncated(MAX_RESULT_BYTES)))
            }
            Ok(Err(CallFail::Connect | CallFail::Broken)) => {
                rt.request_restart(gen);
                Err((WatchdogError::ActionCrash, messages::ABNORMAL_RUN.to_string()))
            }
            Ok(Ok((status, body))) => match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(m)) if status == StatusCode::OK => Ok(m),
                _ if status != StatusCode::OK && error_field(&body).is_some() => {
                    Err((WatchdogError::ActionResult, error_field(&body).unwrap_or_default()))
                }
                _ => Err((
                    WatchdogError::ActionResult,
                    messages::invalid_run(String::from_utf8_lossy(&body).trim()),
                )),
            },
        };
    // The runtime's output up to its markers (none to wait for when it crashed or hung).
    let logs = match since {
        Some(since) => {
            let wait = match &outcome {
                Ok(_) | Err((WatchdogError::ActionResult, _)) => MARKER_WAIT,
                Err(_) => Duration::ZERO,
            };
            Some(rt.logs.finish(since, wait).await)
        }
        None => None,
    };
    let logs = logs.filter(|_| wants_logs);
    let mut resp = match outcome {
        Ok(result) => {
            let web = cfg.web && !api && !result.contains_key("error");
            let mut r = if web {
                web_response(result)
            } else {
                let status = if result.contains_key("error") {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::OK
                };
                let body = serde_json::to_vec(&result).unwrap_or_default();
                let mut r = Response::new(Body::from(body));
                *r.status_mut() = status;
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            };
            if let Some(l) = &logs {
                r.headers_mut().insert(LOGS_HEADER, logs_header(l));
            }
            r
        }
        Err((reason, message)) => developer_error(reason, message, logs),
    };
    if fresh.swap(false, Ordering::AcqRel) {
        resp.headers_mut().insert(INIT_TIME_HEADER, HeaderValue::from(init_ms));
    }
    resp
}

/// Answers [`SPECIALISE_PATH`]: specialises a stem cell and waits for its `/init`.
pub(crate) async fn specialise(rt: &Arc<OwRuntime>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != http::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method", "POST a specialisation");
    }
    if !rt.stem || *rt.specialised.borrow() {
        return text(
            StatusCode::CONFLICT,
            "specialise",
            "this instance is no stem cell waiting for an action",
        );
    }
    let body =
        match http_body_util::Limited::new(req.into_body(), MAX_PAYLOAD_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "body",
                    format!("reading the specialisation: {e}"),
                )
            }
        };
    let spec: Specialisation = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return text(StatusCode::BAD_REQUEST, "body", format!("not a specialisation: {e}"))
        }
    };
    if !(1..=MAX_CONCURRENCY).contains(&spec.action.concurrency) {
        return text(
            StatusCode::BAD_REQUEST,
            "body",
            format!("concurrency must be from 1 to {MAX_CONCURRENCY}"),
        );
    }
    {
        // Under the lock: of two concurrent specialisations only the first counts.
        let mut cfg = rt.cfg.lock().unwrap_or_else(|e| e.into_inner());
        if *rt.specialised.borrow() {
            return text(StatusCode::CONFLICT, "specialise", "specialised already");
        }
        rt.slots.add_permits(spec.action.concurrency - 1);
        rt.exec_ms.store(spec.exec_timeout_ms, Ordering::Release);
        *cfg = Arc::new(spec.action);
        rt.specialised.send_replace(true);
    }
    let st = match rt.settled(Instant::now() + rt.init_timeout() + Duration::from_secs(5)).await {
        Ok(s) => s,
        Err(timed_out) => return timed_out,
    };
    match st {
        State::Ready { init_ms, .. } => {
            let mut r = Response::new(Body::from(json!({"initTime": init_ms}).to_string()));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        State::Failed { reason, message, .. } => developer_error(reason, message, None),
        State::Starting | State::Stem => {
            text(StatusCode::INTERNAL_SERVER_ERROR, "upstream", "the runtime is not settled")
        }
    }
}

/// A web action's HTTP answer from its result (OpenWhisk's `docs/webactions.md`):
/// `statusCode` (default 200, 204 without a body), `headers` (string values), and `body`: a
/// string (base64-decoded when the `Content-Type` is neither text nor JSON nor XML; default
/// type `text/html`), or any other JSON value (`application/json`).
fn web_response(result: Map<String, Value>) -> Response<Body> {
    let mut headers = http::HeaderMap::new();
    if let Some(Value::Object(h)) = result.get("headers") {
        for (k, v) in h {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let (Ok(n), Ok(v)) =
                (http::HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v))
            {
                headers.insert(n, v);
            }
        }
    }
    let body: Bytes = match result.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) => {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let textual = ct.is_none_or(|ct| {
                let ct = ct.to_ascii_lowercase();
                ct.starts_with("text/") || ct.contains("json") || ct.contains("xml")
            });
            if ct.is_none() {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            }
            match textual {
                true => Bytes::from(s.clone()),
                false => base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map(Bytes::from)
                    .unwrap_or_else(|_| Bytes::from(s.clone())),
            }
        }
        Some(other) => {
            headers
                .entry(header::CONTENT_TYPE)
                .or_insert(HeaderValue::from_static("application/json"));
            Bytes::from(serde_json::to_vec(other).unwrap_or_default())
        }
    };
    let default = if body.is_empty() { StatusCode::NO_CONTENT } else { StatusCode::OK };
    let status = result
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(default);
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// The watchdog's answer for a developer error, logged with OpenWhisk's warning line.
fn developer_error(
    reason: WatchdogError,
    message: String,
    logs: Option<Vec<String>>,
) -> Response<Body> {
    log(messages::LOG_WARNING_DEVELOPER_ERROR);
    let status = match reason {
        WatchdogError::ActionTimeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let mut r = text(status, reason.as_str(), message);
    if let Some(mut l) = logs {
        l.push(format!("{} stderr: {}", now_stamp(), messages::LOG_WARNING_DEVELOPER_ERROR));
        r.headers_mut().insert(LOGS_HEADER, logs_header(&l));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::post(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn web_params_merge_query_body_and_ow_fields() {
        let p = parts("/sub/path?a=1&b=2", &[("x-test", "y")]);
        let m = params(&p, &Bytes::from_static(br#"{"b": 3}"#)).unwrap();
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], 3);
        assert_eq!(m["__ow_method"], "post");
        assert_eq!(m["__ow_path"], "/sub/path");
        assert_eq!(m["__ow_headers"]["x-test"], "y");
        let m = params(&parts("/", &[]), &Bytes::from_static(b"plain")).unwrap();
        assert_eq!(m["__ow_body"], "plain");
        assert_eq!(m["__ow_path"], "");
        let m = params(&parts("/", &[]), &Bytes::from_static(&[0xff, 0xfe])).unwrap();
        assert_eq!(m["__ow_body"], "//4=");
    }

    #[tokio::test]
    async fn a_runtime_asked_to_be_replaced_is_no_longer_ready_at_once() {
        let cfg = OwConfig::from_vars(|k| (k == "OPENFAAS_FUNCTION_NAME").then_some("f")).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let d = Duration::from_secs(1);
        let rt = OwRuntime::new(cfg, "x".into(), vec![], addr, String::new(), d, d, false);
        let ready = |gen| State::Ready { gen, init_ms: 1, fresh: Arc::default() };
        rt.state.send_replace(ready(2));
        // An older generation's failure leaves the current runtime alone.
        rt.request_restart(1);
        assert!(matches!(*rt.state.borrow(), State::Ready { gen: 2, .. }));
        // Replacing the current one: the next activation waits (in `settled`) for the new
        // runtime instead of being sent to the one that crashed or timed out.
        rt.request_restart(2);
        assert!(matches!(*rt.state.borrow(), State::Starting));
        assert_eq!(*rt.restart.borrow(), 2);
        let waited = rt.settled(Instant::now() + Duration::from_millis(20)).await;
        assert!(waited.is_err(), "an activation found the replaced runtime ready");
    }

    #[test]
    fn api_params_are_the_body() {
        let p = parts("/?a=1", &[(ACTIVATION_ID_HEADER, "abc")]);
        let m = params(&p, &Bytes::from_static(br#"{"x": [1]}"#)).unwrap();
        assert_eq!(Value::Object(m), json!({"x": [1]}));
        assert!(params(&p, &Bytes::new()).unwrap().is_empty());
        assert!(params(&p, &Bytes::from_static(b"[1]")).unwrap_err().contains("JSON object"));
    }

    #[test]
    fn config_errors_name_the_variable() {
        let vars = |kv: &'static [(&'static str, &'static str)]| {
            move |k: &str| kv.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
        };
        let c = OwConfig::from_vars(vars(&[("OPENFAAS_FUNCTION_NAME", "f")])).unwrap();
        assert_eq!((c.action_name.as_str(), c.main.as_str(), c.concurrency), ("f", "main", 1));
        for (bad, field) in [
            (&[("ow_concurrency", "0")][..], "ow_concurrency"),
            (&[("ow_concurrency", "501")][..], "ow_concurrency"),
            (&[("ow_binary", "maybe")][..], "ow_binary"),
            (&[("ow_binary", "true"), ("ow_code", "not base64!")][..], "ow_code"),
            (&[("ow_env", "[1]")][..], "ow_env"),
            (&[("ow_code_file", "/nonexistent/faas-rs")][..], "ow_code_file"),
        ] {
            let bad: &'static [(&'static str, &'static str)] = bad;
            match OwConfig::from_vars(vars(bad)) {
                Err(Error::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn logs_header_is_ascii_json_and_bounded() {
        let v = logs_header(&["t stdout: héllo \"q\"".to_string()]);
        let back: Vec<String> = serde_json::from_str(v.to_str().unwrap()).unwrap();
        assert_eq!(back, vec!["t stdout: héllo \"q\"".to_string()]);
        let many: Vec<String> = (0..10_000).map(|i| format!("t stdout: line {i}")).collect();
        let v = logs_header(&many);
        assert!(v.len() <= MAX_LOGS_HEADER_BYTES, "{}", v.len());
        let back: Vec<String> = serde_json::from_str(v.to_str().unwrap()).unwrap();
        assert!(back.last().unwrap().starts_with("Logs were truncated"));
    }

    #[test]
    fn messages_are_openwhisks() {
        assert_eq!(
            messages::timed_out(100, false),
            "The action exceeded its time limits of 100 milliseconds."
        );
        assert_eq!(
            messages::timed_out(100, true),
            "The action exceeded its time limits of 100 milliseconds during initialization."
        );
        assert_eq!(
            messages::invalid_run("[1]"),
            "The action did not produce a valid JSON response: [1]"
        );
    }
}

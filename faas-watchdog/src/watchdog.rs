//! The watchdog: an HTTP server that turns any process into a function, compatible with the
//! OpenFaaS watchdogs (the classic and of-watchdog modes: fork, http, static).
//!
//! # Modes (`mode`)
//!
//! - `streaming` (default): for each request start `fprocess` (split on whitespace, simple
//!   `'`/`"` quoting allowed; no shell), stream the request body to its stdin and its stdout
//!   back as the response body as it is produced. If the process exits non-zero before
//!   writing anything the answer is 500; after the response has started, a failure aborts
//!   the response.
//! - `serializing`: the same, but the request body is read whole first and the response is
//!   sent once the process has exited: 200 with its stdout, or 500 on a non-zero exit.
//! - `http`: start `fprocess` once; it serves HTTP at `upstream_url` and the watchdog proxies
//!   every request to it over keep-alive connections (each client connection gets its own
//!   upstream connection, reused for its requests). The process sees the environment
//!   variable `port` set to the upstream port. If it dies it is restarted (with backoff),
//!   and requests wait (within their timeout) until it is back. Plain HTTP/1.1 requests
//!   (no body or a small one of known length) are read and answered by the watchdog's own
//!   HTTP/1 code, everything else by hyper.
//! - `static`: serve the files under `static_path` (default `/home/app/public`).
//! - `openwhisk`: start `fprocess` once as an OpenWhisk action runtime serving `/init` and
//!   `/run` at `upstream_url` (default `http://127.0.0.1:8081`), initialise it once, and run
//!   an activation per request: see [`crate::openwhisk`] for the protocol, the parameters, the
//!   errors, the logs and the `ow_*` variables.
//! - `lambda`: start `fprocess` once as an AWS Lambda runtime (its `bootstrap`, or a runtime
//!   interface client such as `python3 -m awslambdaric app.handler`) and serve it the Lambda
//!   Runtime API; each request is one invocation. See [`crate::lambda`].
//!
//! In the fork modes the process receives every request header as an environment variable
//! `Http_<Header_Name>` (`X-Test-A` becomes `Http_X_Test_A`) plus `Http_Method`, `Http_Path`,
//! `Http_Query` (when there is a query) and `Http_ContentLength` (when known). Its stderr is
//! logged (one line per line, on the watchdog's stderr).
//!
//! # Environment variables
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `fprocess` / `function_process` | (required but in `static`) | the command |
//! | `mode` | `streaming` | `streaming`, `serializing`, `http`, `static`, `openwhisk`, `lambda` |
//! | `upstream_url` | (required in `http`) | where the process serves, e.g. `http://127.0.0.1:8081` |
//! | `port` | `8080` | the port the watchdog listens on |
//! | `bind_address` | `0.0.0.0` | (ours) the address it listens on |
//! | `read_timeout` | `10s` | reading a request's headers (and its whole body in `serializing` mode) |
//! | `write_timeout` | `10s` | producing a response; 504 when exceeded |
//! | `exec_timeout` | `10s` | a request's run time; on expiry the process group is killed (fork modes) and the answer is 504 saying which timeout fired; `0` disables it |
//! | `max_inflight` | `0` (unlimited) | concurrent requests; beyond it 429 |
//! | `healthcheck_interval` | `write_timeout` | after SIGTERM, how long health answers 503 while requests are still served, before the listener closes |
//! | `prefix_logs` | `true` | prefix the function's log lines with a timestamp and the stream name |
//! | `combine_output` | `false` | also send the process's stderr in the response body |
//! | `content_type` | | response `Content-Type` in the fork and static modes (default: the request's, else `application/octet-stream`) |
//! | `static_path` | `/home/app/public` | the directory of `static` mode |
//! | `handler`, `lambda_event`, `lambda_queue`, `lambda_concurrency`, `lambda_prefetch` | | the `lambda` mode's `_HANDLER`, event format (`http` or `raw`), line length, execution environments (default 1) and invocations a backend sends beyond them (per environment, default 1); see [`crate::lambda`] |
//! | `log_requests` | `false` | (ours) one log line per request, in of-watchdog's format (`POST / - 200 OK - ContentLength: 5B (0.0012s)`); the process backend turns it on |
//! | `upstream_keepalive` | `1s` | (ours) in `http` mode, how long an idle connection to the upstream is kept for the next request (`0`: a new connection for every request); shorter than common servers' own idle timeouts (gunicorn 2 s, Node.js and uvicorn 5 s), so a request is never sent on a kept connection at the moment the upstream closes it, which would fail it with a 502 |
//! | `watchdog_threads` | the number of CPUs (in `lambda` mode at most `lambda_concurrency`) | (ours) threads serving connections, each with its own single-threaded runtime |
//!
//! Durations are Go-style (`10s`, `500ms`, `1m`) or plain seconds.
//!
//! # Endpoints and signals
//!
//! `/_/health` answers 200 when the watchdog can serve (in `http` mode: once the upstream
//! accepts connections), 503 otherwise. `/_/ready` answers the same, but 429 while
//! `max_inflight` requests are in flight. On SIGTERM (or SIGINT) health answers 503 at once;
//! requests are still served for `healthcheck_interval` (so load balancers notice), then the
//! listener closes, in-flight requests drain (bounded by the timeouts), the `http` mode's
//! process is stopped and the watchdog exits 0.
//!
//! Answers the watchdog produces itself (not the function) carry the header
//! [`ERROR_HEADER`], naming the reason (`exec_timeout`, `write_timeout`, `exit`, `inflight`,
//! `upstream`, `spawn`...), so callers can tell a function's 500 from a watchdog's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::OsString;
use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use faas_core::runtime::RuntimeThreads;
use faas_core::{Body, BoxError, Error};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::os::fd::OwnedFd;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::sys;

mod h1;
// The one hop-by-hop list: the proxy does not forward these (it frames bodies itself).
use faas_core::instance::is_hop_by_hop;

/// The response header on answers the watchdog produced itself; the value names the reason
/// (the protocol is [`faas_core::instance::WatchdogError`], defined with the client that reads
/// it).
pub const ERROR_HEADER: &str = faas_core::instance::WATCHDOG_ERROR_HEADER;

/// How the watchdog runs the function process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Fork per request, stream stdin and stdout.
    #[default]
    Streaming,
    /// Fork per request, buffer the request and the response.
    Serializing,
    /// Start once, proxy HTTP to it.
    Http,
    /// Serve static files.
    Static,
    /// Run an OpenWhisk action runtime (`/init` once, `/run` per request): see
    /// [`crate::openwhisk`].
    OpenWhisk,
    /// Start once as an AWS Lambda runtime and serve it the Runtime API.
    Lambda,
}

impl Mode {
    /// Parses a mode name as OpenFaaS writes them.
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "streaming" | "stream" => Ok(Mode::Streaming),
            "serializing" | "serialize" | "afterburn" => Ok(Mode::Serializing),
            "http" => Ok(Mode::Http),
            "static" => Ok(Mode::Static),
            "openwhisk" => Ok(Mode::OpenWhisk),
            "lambda" => Ok(Mode::Lambda),
            other => Err(format!(
                "{other:?} is not a mode; use streaming, serializing, http, static, openwhisk or lambda"
            )),
        }
    }

    /// The mode's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Streaming => "streaming",
            Mode::Serializing => "serializing",
            Mode::Http => "http",
            Mode::Static => "static",
            Mode::OpenWhisk => "openwhisk",
            Mode::Lambda => "lambda",
        }
    }
}

/// The watchdog's configuration; see the [module docs](self) for each variable.
#[derive(Debug, Clone)]
pub struct Config {
    /// `mode`.
    pub mode: Mode,
    /// `fprocess` (or `function_process`), split into program and arguments.
    pub fprocess: Vec<String>,
    /// `upstream_url` (required in `http` mode).
    pub upstream_url: Option<http::Uri>,
    /// `port`.
    pub port: u16,
    /// `bind_address`.
    pub bind_address: IpAddr,
    /// `read_timeout` (zero: none).
    pub read_timeout: Duration,
    /// `write_timeout` (zero: none).
    pub write_timeout: Duration,
    /// `exec_timeout` (zero: none).
    pub exec_timeout: Duration,
    /// `max_inflight` (zero: unlimited).
    pub max_inflight: usize,
    /// `healthcheck_interval`.
    pub healthcheck_interval: Duration,
    /// `prefix_logs`.
    pub prefix_logs: bool,
    /// `combine_output`.
    pub combine_output: bool,
    /// `content_type`.
    pub content_type: Option<String>,
    /// `static_path`.
    pub static_path: PathBuf,
    /// `log_requests`.
    pub log_requests: bool,
    /// `upstream_keepalive`: how long an idle connection to the `http` mode's upstream is
    /// kept for the next request (zero: a new connection for every request).
    pub upstream_keepalive: Duration,
    /// `watchdog_threads`: how many threads serve connections (at least 1). Each accepted
    /// connection is handed to one of them round-robin and stays there, together with
    /// everything its requests do (the fork-mode process's pipes, the `http` mode's upstream
    /// connection), so a request never wakes another thread. Connections handed to the
    /// first "thread" run on the runtime that called [`serve`].
    pub threads: usize,
    /// The `ow_*` settings of `openwhisk` mode (set in that mode only).
    pub openwhisk: Option<crate::openwhisk::OwConfig>,
    /// The `lambda` mode's settings (in that mode).
    pub lambda: Option<crate::lambda::LambdaConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Streaming,
            fprocess: Vec::new(),
            upstream_url: None,
            port: 8080,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            upstream_keepalive: Duration::from_secs(1),
            exec_timeout: Duration::from_secs(10),
            max_inflight: 0,
            healthcheck_interval: Duration::from_secs(10),
            prefix_logs: true,
            combine_output: false,
            content_type: None,
            static_path: PathBuf::from("/home/app/public"),
            log_requests: false,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            openwhisk: None,
            lambda: None,
        }
    }
}

pub(crate) fn parse_bool(key: &str, v: &str) -> Result<bool, Error> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        other => Err(Error::invalid(key, format!("{other:?} is not true or false"))),
    }
}

/// Splits a command line on whitespace, honouring `'...'`, `"..."` and `\` escapes (no other
/// shell syntax: no variables, globs, pipes or redirections).
pub fn split_command(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated ' in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => return Err(format!("unterminated \" in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated \" in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, Error> {
        Config::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Reads the configuration from variables (name, value); unknown names are ignored.
    /// A bad value gives [`Error::InvalidSpec`] naming the variable.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, Error>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        let get = |k: &str| vars.get(k).map(String::as_str).filter(|v| !v.trim().is_empty());
        let dur = |k: &str, default: Duration| -> Result<Duration, Error> {
            match get(k) {
                None => Ok(default),
                Some(v) => faas_core::util::parse_duration(v).map_err(|r| Error::invalid(k, r)),
            }
        };
        let mut c = Config::default();
        if let Some(m) = get("mode") {
            c.mode = Mode::parse(m).map_err(|r| Error::invalid("mode", r))?;
        }
        let (fkey, fproc) = match (get("fprocess"), get("function_process")) {
            (Some(p), _) => ("fprocess", Some(p)),
            (None, Some(p)) => ("function_process", Some(p)),
            (None, None) => ("fprocess", None),
        };
        if let Some(p) = fproc {
            c.fprocess = split_command(p).map_err(|r| Error::invalid(fkey, r))?;
        }
        if c.fprocess.is_empty() && c.mode != Mode::Static {
            return Err(Error::invalid(
                "fprocess",
                format!("the command to run is required in {} mode", c.mode.as_str()),
            ));
        }
        if let Some(u) = get("upstream_url") {
            let uri: http::Uri = u
                .trim()
                .parse()
                .map_err(|e| Error::invalid("upstream_url", format!("{u:?}: {e}")))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(Error::invalid(
                    "upstream_url",
                    format!("{u:?} must be an http:// URL with a host and port"),
                ));
            }
            c.upstream_url = Some(uri);
        }
        if c.mode == Mode::Http && c.upstream_url.is_none() {
            return Err(Error::invalid("upstream_url", "is required in http mode"));
        }
        if c.mode == Mode::OpenWhisk {
            if c.upstream_url.is_none() {
                c.upstream_url =
                    Some(http::Uri::from_static(crate::openwhisk::DEFAULT_RUNTIME_URL));
            }
            c.openwhisk = Some(crate::openwhisk::OwConfig::from_vars(get)?);
        }
        if let Some(p) = get("port") {
            c.port = p
                .trim()
                .parse()
                .map_err(|_| Error::invalid("port", format!("{p:?} is not a port")))?;
        }
        if let Some(a) = get("bind_address") {
            c.bind_address = a.trim().parse().map_err(|_| {
                Error::invalid("bind_address", format!("{a:?} is not an IP address"))
            })?;
        }
        c.read_timeout = dur("read_timeout", c.read_timeout)?;
        c.write_timeout = dur("write_timeout", c.write_timeout)?;
        c.exec_timeout = dur("exec_timeout", c.exec_timeout)?;
        c.upstream_keepalive = dur("upstream_keepalive", c.upstream_keepalive)?;
        c.healthcheck_interval = dur("healthcheck_interval", c.write_timeout)?;
        if let Some(m) = get("max_inflight") {
            c.max_inflight = m.trim().parse().map_err(|_| {
                Error::invalid("max_inflight", format!("{m:?} is not a whole number"))
            })?;
        }
        if let Some(v) = get("prefix_logs") {
            c.prefix_logs = parse_bool("prefix_logs", v)?;
        }
        if let Some(v) = get("combine_output") {
            c.combine_output = parse_bool("combine_output", v)?;
        }
        if let Some(v) = get("log_requests") {
            c.log_requests = parse_bool("log_requests", v)?;
        }
        if let Some(v) = get("watchdog_threads") {
            c.threads = match v.trim().parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => n,
                _ => {
                    return Err(Error::invalid(
                        "watchdog_threads",
                        format!("{v:?} is not a whole number from 1 to 256"),
                    ))
                }
            };
        }
        if let Some(v) = get("content_type") {
            HeaderValue::from_str(v.trim()).map_err(|_| {
                Error::invalid("content_type", format!("{v:?} is not a header value"))
            })?;
            c.content_type = Some(v.trim().to_string());
        }
        if let Some(v) = get("static_path") {
            c.static_path = PathBuf::from(v);
        }
        if c.mode == Mode::Lambda {
            let l = crate::lambda::LambdaConfig::from_vars(&vars)?;
            // Each execution environment takes one invocation at a time, so more threads
            // than environments only add cross-thread wake-ups between a caller's
            // connection and the Runtime API's (see `crate::lambda`).
            if get("watchdog_threads").is_none() {
                c.threads = c.threads.min(l.environments).max(1);
            }
            c.lambda = Some(l);
        }
        Ok(c)
    }

    /// The address to listen on (`bind_address`:`port`).
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_address, self.port)
    }

    /// The per-request deadline: the smaller of the non-zero `exec_timeout` and
    /// `write_timeout`, with the variable's name.
    pub(crate) fn deadline(&self) -> Option<(Duration, &'static str)> {
        let e = (!self.exec_timeout.is_zero()).then_some((self.exec_timeout, "exec_timeout"));
        let w = (!self.write_timeout.is_zero()).then_some((self.write_timeout, "write_timeout"));
        match (e, w) {
            (Some(e), Some(w)) => Some(if w.0 < e.0 { w } else { e }),
            (e, w) => e.or(w),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Logging

pub(crate) fn now_stamp() -> String {
    faas_core::spec::rfc3339::format(std::time::SystemTime::now())
}

/// One line of the watchdog's own log (stderr).
pub(crate) fn log(msg: impl std::fmt::Display) {
    write_line(&mut std::io::stderr().lock(), format_args!("{} watchdog: {msg}", now_stamp()));
}

/// Writes `line` and a newline to `w` in one `write`: stderr is unbuffered, and `writeln!`
/// writes each formatted piece on its own, which a reader of the pipe (the process backend
/// reads every replica's output) would be woken for piece by piece.
fn write_line(w: &mut impl std::io::Write, line: std::fmt::Arguments<'_>) {
    let mut buf = String::with_capacity(128);
    let _ = std::fmt::Write::write_fmt(&mut buf, line);
    buf.push('\n');
    let _ = w.write_all(buf.as_bytes());
}

/// Copies a child's output to ours line by line (prefixed when `prefix_logs`).
pub(crate) async fn pump_lines<R: AsyncRead + Unpin>(r: R, stream: &'static str, prefix: bool) {
    for_each_line(r, |line| emit_line(stream, prefix, line)).await
}

/// Calls `f` with each line `r` gives (without its `\n`; a line over 64 KiB in parts), until
/// the end or an error.
pub(crate) async fn for_each_line<R: AsyncRead + Unpin>(r: R, f: impl FnMut(&[u8])) {
    for_each_line_after(r, BytesMut::with_capacity(4096), f).await
}

/// [`for_each_line`] when `buf` holds the start of a line read before.
async fn for_each_line_after<R: AsyncRead + Unpin>(
    mut r: R,
    mut buf: BytesMut,
    mut f: impl FnMut(&[u8]),
) {
    loop {
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => take_lines(&mut buf, &mut f),
        }
    }
    if !buf.is_empty() {
        f(&buf);
    }
}

/// Calls `f` with each whole line in `buf` (and with the start of a line over 64 KiB), and
/// leaves the rest in `buf`.
fn take_lines(buf: &mut BytesMut, mut f: impl FnMut(&[u8])) {
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let line = buf.split_to(pos + 1);
        f(&line[..pos]);
    }
    if buf.len() > 64 * 1024 {
        let line = buf.split();
        f(&line);
    }
}

pub(crate) fn emit_line(stream: &'static str, prefix: bool, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    if stream == "stdout" {
        let mut o = std::io::stdout().lock();
        let _ = if prefix {
            writeln!(o, "{} stdout: {text}", now_stamp())
        } else {
            writeln!(o, "{text}")
        };
        let _ = o.flush();
    } else {
        let mut o = std::io::stderr().lock();
        if prefix {
            write_line(&mut o, format_args!("{} stderr: {text}", now_stamp()));
        } else {
            write_line(&mut o, format_args!("{text}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server

struct Shared {
    cfg: Config,
    /// argv[0] resolved against PATH once, then the arguments.
    program: OsString,
    args: Vec<String>,
    deadline: Option<(Duration, &'static str)>,
    inflight: AtomicUsize,
    draining: AtomicBool,
    upstream: Option<Upstream>,
    groups: Groups,
    /// Starts the fork modes' processes.
    spawner: Option<sys::Spawner>,
    openwhisk: Option<Arc<crate::openwhisk::OwRuntime>>,
    lambda: Option<Arc<crate::lambda::LambdaRuntime>>,
}

/// Why [`read_body_bounded`] gave up.
#[derive(Debug)]
pub(crate) enum BodyRead {
    /// Over the limit.
    TooLarge,
    /// The body broke off (the message).
    Broken(String),
    /// Not all there by the deadline.
    TimedOut,
}

/// Reads a request body of at most `limit` bytes, all of it by `deadline`.
pub(crate) async fn read_body_bounded<B>(
    body: B,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, BodyRead>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyRead::TooLarge),
        Ok(Err(e)) => Err(BodyRead::Broken(e.to_string())),
        Err(_) => Err(BodyRead::TimedOut),
    }
}

pub(crate) fn text(
    status: StatusCode,
    reason: &'static str,
    msg: impl Into<String>,
) -> Response<Body> {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    let mut r = Response::new(Body::from(msg));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert(ERROR_HEADER, HeaderValue::from_static(reason));
    r
}

pub(crate) fn timeout_response(which: &str, d: Duration) -> Response<Body> {
    let reason = if which == "exec_timeout" { "exec_timeout" } else { "write_timeout" };
    text(
        StatusCode::GATEWAY_TIMEOUT,
        reason,
        format!("{which} of {} exceeded", faas_core::util::format_duration(d)),
    )
}

/// Finds `program` on `PATH` when it has no slash, so that spawning skips the search.
fn resolve_program(program: &str) -> OsString {
    if program.contains('/') {
        return program.into();
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(program);
            if let Ok(m) = std::fs::metadata(&p) {
                use std::os::unix::fs::PermissionsExt;
                if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                    return p.into_os_string();
                }
            }
        }
    }
    program.into()
}

/// Runs the watchdog on `listener` until `shutdown` completes, then drains and returns.
///
/// `shutdown` plays the role of SIGTERM: health answers 503 at once, requests are served for
/// `healthcheck_interval` more, then the listener closes and in-flight requests drain.
pub async fn serve<F>(config: Config, listener: TcpListener, shutdown: F) -> Result<(), Error>
where
    F: Future<Output = ()> + Send,
{
    let deadline = config.deadline();
    let (program, args) = match config.fprocess.split_first() {
        Some((p, rest)) => (resolve_program(p), rest.to_vec()),
        None => (OsString::new(), Vec::new()),
    };
    let upstream = match (config.mode, &config.upstream_url) {
        (Mode::Http, Some(u)) => Some(Upstream::new(u, config.upstream_keepalive).await?),
        (Mode::Http, None) => {
            return Err(Error::invalid("upstream_url", "is required in http mode"))
        }
        _ => None,
    };
    let openwhisk = match (&config.openwhisk, &config.upstream_url) {
        (Some(ow), Some(u)) if config.mode == Mode::OpenWhisk => {
            let up = Upstream::new(u, config.upstream_keepalive).await?;
            Some(Arc::new(crate::openwhisk::OwRuntime::new(
                ow.clone(),
                program.clone(),
                args.clone(),
                up.addr,
                up.prefix,
                config.exec_timeout,
                config.read_timeout,
                config.prefix_logs,
            )))
        }
        _ => None,
    };
    let lambda = config.lambda.clone().filter(|_| config.mode == Mode::Lambda).map(|l| {
        crate::lambda::LambdaRuntime::new(
            l,
            program.clone(),
            args.clone(),
            crate::lambda::Output::Watchdog { prefix: config.prefix_logs },
            None,
        )
    });
    // Fork mode's children are spawned with posix_spawn (`sys::Spawner`, no parent-death
    // signal) and left to the reaper if the watchdog is killed; see `sys::Reaper`.
    let reaper = match config.mode {
        Mode::Streaming | Mode::Serializing => match sys::Reaper::start() {
            Ok(r) => Some(r),
            Err(e) => {
                log(format!(
                    "cannot start the reaper ({e}): each function process will be started \
                     with a parent-death signal instead (slower)"
                ));
                None
            }
        },
        _ => None,
    };
    let spawner = match config.mode {
        Mode::Streaming | Mode::Serializing => Some(
            sys::Spawner::new(&program, &args)
                .map_err(|e| Error::invalid("fprocess", format!("cannot be started: {e}")))?,
        ),
        _ => None,
    };
    let shared = Arc::new(Shared {
        spawner,
        cfg: config,
        program,
        args,
        deadline,
        inflight: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        upstream,
        groups: Arc::new(GroupSet { running: Default::default(), reaper }),
        openwhisk,
        lambda,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let ow_supervisor = shared
        .openwhisk
        .clone()
        .map(|rt| tokio::spawn(crate::openwhisk::supervise(rt, stop_rx.clone())));
    let supervisor = if let Some(l) = shared.lambda.clone() {
        Some(tokio::spawn(crate::lambda::supervise(l, stop_rx)))
    } else {
        shared.upstream.is_some().then(|| {
            let s = shared.clone();
            tokio::spawn(async move { supervise_upstream(s, stop_rx).await })
        })
    };

    let drain = Drain::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new());
    if !shared.cfg.read_timeout.is_zero() {
        http.header_read_timeout(shared.cfg.read_timeout);
    }
    let workers = match RuntimeThreads::start(shared.cfg.threads.saturating_sub(1), "watchdog") {
        Ok(w) => w,
        Err(e) => return Err(Error::unavailable(format!("cannot start the worker threads: {e}"))),
    };
    let mut next = 0usize;
    tokio::pin!(shutdown);
    let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown, if grace.is_none() => {
                shared.draining.store(true, Ordering::SeqCst);
                log(format!(
                    "shutting down: health answers 503, closing the listener in {}",
                    faas_core::util::format_duration(shared.cfg.healthcheck_interval)
                ));
                grace = Some(Box::pin(tokio::time::sleep(shared.cfg.healthcheck_interval)));
            }
            _ = async { grace.as_mut().expect("guarded").await }, if grace.is_some() => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        log(format!("accept: {e}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (s, http, watcher) = (shared.clone(), http.clone(), drain.watcher());
                next = (next + 1) % (workers.len() + 1);
                match next.checked_sub(1) {
                    None => {
                        tokio::spawn(serve_conn(s, http, watcher, stream));
                    }
                    Some(i) => {
                        // Moved to the worker's runtime: deregistered here, registered there.
                        match stream.into_std() {
                            Ok(std) => {
                                workers.handle(i).spawn(async move {
                                    if let Ok(stream) = tokio::net::TcpStream::from_std(std) {
                                        serve_conn(s, http, watcher, stream).await;
                                    }
                                });
                            }
                            Err(e) => log(format!("accept: {e}")),
                        }
                    }
                }
            }
        }
    }
    drop(listener);
    let inflight = shared.inflight.load(Ordering::SeqCst);
    log(format!("listener closed; draining {inflight} in-flight request(s)"));
    let drain_bound =
        shared.deadline.map(|(d, _)| d.max(shared.cfg.write_timeout) + Duration::from_secs(1));
    match drain_bound {
        Some(b) => {
            if tokio::time::timeout(b, drain.shutdown()).await.is_err() {
                log("drain bound reached; closing remaining connections");
            }
        }
        None => drain.shutdown().await,
    }
    workers.stop().await;
    let left: Vec<u32> = groups_lock(&shared.groups).drain().collect();
    for pgid in left {
        sys::kill_group(pgid, sys::SIGKILL);
        if let Some(r) = &shared.groups.reaper {
            r.forget(pgid);
        }
    }
    let _ = stop_tx.send(true);
    if let Some(h) = supervisor {
        let _ = h.await;
    }
    if let Some(h) = ow_supervisor {
        let _ = h.await;
    }
    log("stopped");
    Ok(())
}

/// Tells the connections to finish (their request in progress, then close) and waits for
/// them to.
struct Drain(watch::Sender<bool>);

impl Drain {
    fn new() -> Drain {
        Drain(watch::channel(false).0)
    }

    /// What a connection watches: it turns true when the connection should finish.
    fn watcher(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }

    /// Tells every connection to finish; completes once all of them have.
    async fn shutdown(&self) {
        self.0.send_replace(true);
        self.0.closed().await;
    }
}

/// Completes when a connection should finish (its [`Drain`] shut down or gone).
async fn drained(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One connection, from its first request to its close, on the runtime it was spawned on.
async fn serve_conn(
    shared: Arc<Shared>,
    http: hyper::server::conn::http1::Builder,
    stop: watch::Receiver<bool>,
    stream: tokio::net::TcpStream,
) {
    if shared.cfg.mode == Mode::Http && shared.upstream.is_some() {
        h1::serve(shared, http, stop, stream).await
    } else {
        serve_hyper(shared, http, stop, stream, ConnSlot::default()).await
    }
}

/// Serves a connection with hyper; `slot` is the connection's upstream connection in http
/// mode (kept from [`h1::serve`] when that hands a connection over).
async fn serve_hyper<I>(
    shared: Arc<Shared>,
    http: hyper::server::conn::http1::Builder,
    mut stop: watch::Receiver<bool>,
    io: I,
    slot: ConnSlot,
) where
    I: AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let (s, slot) = (shared.clone(), slot.clone());
        async move { Ok::<_, Infallible>(handle(s, req, &slot).await) }
    });
    let conn = http.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = drained(&mut stop) => {}
    }
    // hyper finishes the request in progress (answering it with `connection: close`), or
    // closes an idle connection at once.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Reads [`Config::from_env`], listens on its address and serves until SIGTERM or SIGINT.
pub async fn run_from_env() -> Result<(), Error> {
    let config = Config::from_env()?;
    let addr = config.listen_addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::unavailable(format!("cannot listen on {addr}: {e}")))?;
    log(format!(
        "listening on {addr}, mode {}, fprocess {:?}",
        config.mode.as_str(),
        config.fprocess.join(" ")
    ));
    serve(config, listener, termination()).await
}

/// Completes on SIGTERM or SIGINT (a watchdog running as PID 1 gets no default handling, so
/// this is what makes `docker stop` work).
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The whole watchdog program: builds a runtime, runs [`run_from_env`], and returns the exit
/// code (1 with a message on stderr when the configuration is invalid). Another binary can
/// call it from a subcommand (the `faas` binary's `faas watchdog`).
pub fn main_from_env() -> std::process::ExitCode {
    // Single-threaded: `serve` starts `watchdog_threads - 1` more threads, each with its own
    // single-threaded runtime, and spreads the connections over them and this one.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log(format!("cannot start the runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_from_env()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log(format!("error: {e}"));
            std::process::ExitCode::FAILURE
        }
    }
}

struct InflightGuard(Arc<Shared>);

/// Counts a request in flight for as long as the guard lives; over `max_inflight`, the 429
/// to answer instead.
fn admit(shared: &Arc<Shared>) -> Result<InflightGuard, Box<Response<Body>>> {
    let n = shared.inflight.fetch_add(1, Ordering::AcqRel) + 1;
    let guard = InflightGuard(shared.clone());
    let max = shared.cfg.max_inflight;
    if max > 0 && n > max {
        return Err(Box::new(text(
            StatusCode::TOO_MANY_REQUESTS,
            "inflight",
            format!("concurrent request limit (max_inflight={max}) exceeded"),
        )));
    }
    Ok(guard)
}

/// The watchdog's readiness endpoint (its liveness one is [`faas_core::instance::HEALTH_PATH`]).
const READY_PATH: &str = "/_/ready";

/// Whether `path` (without its query) is one of the watchdog's health endpoints, and then
/// whether it is the readiness one.
fn health_route(path: &str) -> Option<bool> {
    match path {
        faas_core::instance::HEALTH_PATH => Some(false),
        READY_PATH => Some(true),
        _ => None,
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// OpenFaaS's of-watchdog line for a call:
/// `POST /path - 200 OK - ContentLength: 5B (0.0012s)` (`-` for a length not known).
pub(crate) fn request_line(
    method: &Method,
    uri: &http::Uri,
    status: StatusCode,
    len: Option<u64>,
    took: Duration,
) -> String {
    let len = len.map_or_else(|| "-".to_string(), |n| format!("{n}B"));
    format!(
        "{method} {uri} - {} {} - ContentLength: {len} ({:.4}s)",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        took.as_secs_f64()
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>, slot: &ConnSlot) -> Response<Body> {
    match req.uri().path() {
        p if health_route(p).is_some() => return health(&shared, p == READY_PATH),
        crate::openwhisk::SPECIALISE_PATH => {
            if let Some(rt) = &shared.openwhisk {
                return crate::openwhisk::specialise(rt, req).await;
            }
        }
        _ => {}
    }
    let guard = match admit(&shared) {
        Ok(g) => g,
        Err(too_many) => return *too_many,
    };
    let log_req =
        shared.cfg.log_requests.then(|| (req.method().clone(), req.uri().clone(), Instant::now()));
    let resp = match shared.cfg.mode {
        Mode::Streaming => fork(&shared, req, true).await,
        Mode::Serializing => fork(&shared, req, false).await,
        Mode::Http => proxy(&shared, req, slot).await,
        Mode::Static => serve_static(&shared, req).await,
        Mode::OpenWhisk => match &shared.openwhisk {
            Some(rt) => crate::openwhisk::handle(rt, req).await,
            None => text(StatusCode::INTERNAL_SERVER_ERROR, "upstream", "no action runtime"),
        },
        Mode::Lambda => match &shared.lambda {
            Some(l) => l.invoke(req, shared.deadline).await,
            None => text(StatusCode::INTERNAL_SERVER_ERROR, "spawn", "lambda mode is not set up"),
        },
    };
    if let Some((m, u, t0)) = log_req {
        let len = http_body::Body::size_hint(resp.body()).exact();
        log(request_line(&m, &u, resp.status(), len, t0.elapsed()));
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Body::new(faas_core::body::Guarded::new(body, guard)))
}

fn health(shared: &Shared, ready: bool) -> Response<Body> {
    if shared.draining.load(Ordering::SeqCst) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutdown", "shutting down");
    }
    if let Some(up) = &shared.upstream {
        if !*up.ready.borrow() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "upstream", "upstream not ready");
        }
    }
    if let Some(rt) = &shared.openwhisk {
        if !rt.started() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "upstream", "the action is starting");
        }
    }
    if shared.lambda.as_ref().is_some_and(|l| !l.settled()) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "upstream", "the Lambda runtime is starting");
    }
    let max = shared.cfg.max_inflight;
    if ready && max > 0 && shared.inflight.load(Ordering::Acquire) >= max {
        return text(StatusCode::TOO_MANY_REQUESTS, "inflight", "at max_inflight");
    }
    let mut r = Response::new(Body::from("OK"));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

// ---------------------------------------------------------------------------------------
// Fork modes

/// The longest environment string (`NAME=value` and its NUL) Linux passes to a new process
/// (`MAX_ARG_STRLEN`, 32 pages), less the NUL.
pub const MAX_ENV_VAR_BYTES: usize = 128 * 1024 - 1;

/// The most bytes of `Http_*` variables the fork modes pass to one process, well within the
/// usual `ARG_MAX` (2 MiB) that the environment and arguments share.
pub const MAX_HEADER_ENV_BYTES: usize = 256 * 1024;

/// Checks that the headers fit in the environment of a fork-mode process: each as its
/// `Http_*` variable within [`MAX_ENV_VAR_BYTES`], all together within
/// [`MAX_HEADER_ENV_BYTES`]. The error names the header and the limit.
fn check_header_env(headers: &http::HeaderMap) -> Result<(), String> {
    let mut total = 0usize;
    for (name, value) in headers {
        let var = header_env_name(name.as_str());
        let len = var.len() + 1 + value.len();
        if len > MAX_ENV_VAR_BYTES {
            return Err(format!(
                "header {} ({} bytes) is too large for a fork-mode function, which gets it as \
                 the environment variable {var}: the limit is {MAX_ENV_VAR_BYTES} bytes",
                &var["Http_".len()..].replace('_', "-"),
                value.len()
            ));
        }
        total += len + 1;
    }
    if total > MAX_HEADER_ENV_BYTES {
        return Err(format!(
            "the request headers ({total} bytes as Http_* environment variables) are too \
             large for a fork-mode function: the limit is {MAX_HEADER_ENV_BYTES} bytes"
        ));
    }
    Ok(())
}

/// `x-test-a` -> `Http_X_Test_A` (Go's canonical header form, `-` as `_`).
fn header_env_name(name: &str) -> String {
    let mut out = String::with_capacity(5 + name.len());
    out.push_str("Http_");
    let mut upper = true;
    for c in name.chars() {
        if c == '-' {
            out.push('_');
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The process groups of the fork-mode processes running now: killed when the watchdog
/// stops, and by the [`sys::Reaper`] if it is killed outright.
#[derive(Default)]
struct GroupSet {
    running: std::sync::Mutex<std::collections::HashSet<u32>>,
    /// `None` outside the fork modes, or if the reaper could not be started: then each child
    /// is started with [`sys::die_with_parent`] instead (fork + exec, slower).
    reaper: Option<sys::Reaper>,
}

type Groups = Arc<GroupSet>;

fn groups_lock(g: &Groups) -> std::sync::MutexGuard<'_, std::collections::HashSet<u32>> {
    g.running.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills the child's process group when dropped before being disarmed (timeout, client gone).
struct GroupKill {
    pgid: Option<u32>,
    groups: Groups,
}

impl GroupKill {
    fn new(pgid: Option<u32>, groups: &Groups) -> Self {
        if let Some(p) = pgid {
            groups_lock(groups).insert(p);
            if let Some(r) = &groups.reaper {
                r.watch(p);
            }
        }
        GroupKill { pgid, groups: groups.clone() }
    }

    /// Forgets the group (its process exited; what it left running is its own).
    fn disarm(&mut self) {
        if let Some(p) = self.pgid.take() {
            self.forget(p);
        }
    }

    /// Kills the group now (a timeout).
    fn fire(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            sys::kill_group(pgid, sys::SIGKILL);
            self.forget(pgid);
        }
    }

    fn forget(&self, pgid: u32) {
        groups_lock(&self.groups).remove(&pgid);
        if let Some(r) = &self.groups.reaper {
            r.forget(pgid);
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.fire();
    }
}

pub(crate) fn exit_message(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}

fn response_content_type(shared: &Shared, req_ct: Option<&HeaderValue>) -> HeaderValue {
    if let Some(ct) = &shared.cfg.content_type {
        if let Ok(v) = HeaderValue::from_str(ct) {
            return v;
        }
    }
    req_ct.cloned().unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"))
}

enum Event {
    Data(Bytes),
    Exit(ExitStatus),
    Failed(String),
    TimedOut,
}

enum Input {
    Full(Bytes),
    Stream(Incoming),
}

type Deadline = Option<(Instant, Duration, &'static str)>;

/// The most bytes one write to an empty pipe takes without blocking (`PIPE_BUF`: a pipe
/// holds at least a page).
const PIPE_BUF: usize = 4096;

async fn fork(shared: &Arc<Shared>, req: Request<Incoming>, streaming: bool) -> Response<Body> {
    let deadline: Deadline = shared.deadline.map(|(d, name)| (Instant::now() + d, d, name));
    let (parts, body) = req.into_parts();
    let ct = response_content_type(shared, parts.headers.get(header::CONTENT_TYPE));

    // A small body of known length is read before spawning even in streaming mode (it has
    // usually arrived with the headers): one task fewer per request.
    let small = http_body::Body::size_hint(&body).exact().is_some_and(|n| n <= 16 * 1024);
    let input = if streaming && !small {
        Input::Stream(body)
    } else {
        // Serializing mode reads the whole body first, bounded by read_timeout.
        let collect = body.collect();
        let r = if shared.cfg.read_timeout.is_zero() {
            Ok(collect.await)
        } else {
            tokio::time::timeout(shared.cfg.read_timeout, collect).await
        };
        match r {
            Ok(Ok(b)) => Input::Full(b.to_bytes()),
            Ok(Err(e)) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "body",
                    format!("reading the request body: {e}"),
                )
            }
            Err(_) => {
                return text(
                    StatusCode::REQUEST_TIMEOUT,
                    "read_timeout",
                    format!(
                        "read_timeout of {} exceeded while reading the request body",
                        faas_core::util::format_duration(shared.cfg.read_timeout)
                    ),
                )
            }
        }
    };

    if let Err(msg) = check_header_env(&parts.headers) {
        return text(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers", msg);
    }
    let Some(spawner) = &shared.spawner else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "spawn", "fork mode is not set up");
    };
    let mut env = sys::EnvBlock::with_capacity(512, parts.headers.len() + 4);
    for (name, value) in &parts.headers {
        env.push_header(name.as_str(), value.as_bytes());
    }
    env.push("Http_Method", parts.method.as_str().as_bytes());
    env.push("Http_Path", parts.uri.path().as_bytes());
    if let Some(q) = parts.uri.query() {
        env.push("Http_Query", q.as_bytes());
    }
    let len = match &input {
        Input::Full(b) => Some(b.len() as u64),
        Input::Stream(b) => http_body::Body::size_hint(b).exact(),
    };
    if let Some(n) = len {
        env.push("Http_ContentLength", n.to_string().as_bytes());
    }
    let combine = shared.cfg.combine_output;
    let pipe_stderr = combine || shared.cfg.prefix_logs;
    let sp = match spawn_fork(shared, spawner, &env, input, pipe_stderr) {
        Ok(sp) => sp,
        Err(e) if e.kind() == std::io::ErrorKind::ArgumentListTooLong => {
            // The environment (headers included) was over the system's limit after all.
            return text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers",
                format!("the request headers are too large to pass to the function: {e}"),
            );
        }
        Err(e) => {
            log(format!("cannot start {:?}: {e}", shared.program));
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "spawn",
                format!("cannot start the function process: {e}"),
            );
        }
    };
    // From here on a return kills the process group (`kill`) and reaps the process (`child`).
    let mut kill = GroupKill::new(Some(sp.pid), &shared.groups);
    let mut child = ForkChild::new(sp.pid);
    let reader = |fd: OwnedFd| {
        sys::set_nonblocking(&fd).and_then(|()| pipe::Receiver::from_owned_fd_unchecked(fd))
    };
    let (mut stdout, stderr) = match (reader(sp.stdout), sp.stderr.map(reader).transpose()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "spawn",
                format!("cannot read the function process's output: {e}"),
            )
        }
    };
    // The stderr to log: in streaming mode read with the output (no task of its own),
    // in serializing mode by a task.
    let (mut stderr, log_stderr) = match stderr {
        Some(e) if !combine && streaming => (None, Some(e)),
        Some(e) if !combine => {
            tokio::spawn(pump_lines(e, "stderr", shared.cfg.prefix_logs));
            (None, None)
        }
        e => (e, None),
    };
    if let Some((w, input)) = sp.stdin {
        let mut stdin = match sys::set_nonblocking(&w)
            .and_then(|()| pipe::Sender::from_owned_fd_unchecked(w))
        {
            Ok(s) => s,
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "spawn",
                    format!("cannot write to the function process: {e}"),
                )
            }
        };
        match input {
            Input::Full(b) if b.len() <= 16 * 1024 => {
                // Fits in the pipe buffer: no task needed.
                let _ = stdin.write_all(&b).await;
            }
            Input::Full(b) => {
                tokio::spawn(async move {
                    let _ = stdin.write_all(&b).await;
                });
            }
            Input::Stream(mut body) => {
                tokio::spawn(async move {
                    while let Some(frame) = body.frame().await {
                        match frame {
                            Ok(f) => {
                                if let Ok(d) = f.into_data() {
                                    if stdin.write_all(&d).await.is_err() {
                                        break;
                                    }
                                }
                            }
                            Err(_) => break,
                        }
                    }
                });
            }
        }
    }

    if !streaming {
        let fut = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let read_out = async {
                let _ = stdout.read_to_end(&mut out).await;
            };
            let read_err = async {
                if let Some(e) = stderr.as_mut() {
                    let _ = e.read_to_end(&mut err).await;
                }
            };
            tokio::join!(read_out, read_err);
            let status = child.wait().await;
            (out, err, status)
        };
        let r = match deadline {
            Some((at, _, _)) => tokio::time::timeout_at(at, fut).await,
            None => Ok(fut.await),
        };
        return match r {
            Err(_) => {
                kill.fire();
                let _ = child.wait().await;
                let (_, d, name) =
                    deadline.unwrap_or((Instant::now(), Duration::ZERO, "exec_timeout"));
                log(format!("{name} exceeded; killed the function process group"));
                timeout_response(name, d)
            }
            Ok((_, _, Err(e))) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "wait",
                format!("waiting for the function process: {e}"),
            ),
            Ok((mut out, err, Ok(status))) => {
                kill.disarm();
                if combine {
                    out.extend_from_slice(&err);
                }
                if status.success() {
                    let mut r = Response::new(Body::from(out));
                    r.headers_mut().insert(header::CONTENT_TYPE, ct);
                    r
                } else {
                    let m = exit_message(&status);
                    log(format!("function process failed with {m} (its stderr is logged above)"));
                    let mut msg = format!("function process exited with {m}\n");
                    if combine {
                        msg.push_str(&String::from_utf8_lossy(&out));
                    }
                    text(StatusCode::INTERNAL_SERVER_ERROR, "exit", msg)
                }
            }
        };
    }

    let mut running = Running {
        kill,
        child,
        stdout: Some(stdout),
        stderr,
        obuf: BytesMut::new(),
        ebuf: BytesMut::new(),
        log: log_stderr,
        lbuf: BytesMut::new(),
        prefix: shared.cfg.prefix_logs,
        deadline,
        sleep: deadline.map(|(at, _, _)| Box::pin(tokio::time::sleep_until(at))),
        timed_out: false,
        done: false,
    };
    match std::future::poll_fn(|cx| running.poll_event(cx)).await {
        Some(Event::Data(first)) => {
            let mut r = Response::new(Body::new(ForkBody { first: Some(first), running }));
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
            r
        }
        Some(Event::Exit(status)) if status.success() => {
            let mut r = Response::new(Body::empty());
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
            r
        }
        Some(Event::Exit(status)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exit",
            format!("function process exited with {}", exit_message(&status)),
        ),
        Some(Event::TimedOut) => {
            let (_, d, name) = deadline.unwrap_or((Instant::now(), Duration::ZERO, "exec_timeout"));
            timeout_response(name, d)
        }
        Some(Event::Failed(m)) => text(StatusCode::INTERNAL_SERVER_ERROR, "wait", m),
        None => text(StatusCode::INTERNAL_SERVER_ERROR, "wait", "the function process vanished"),
    }
}

/// A started fork-mode process and our ends of its pipes.
struct Spawned {
    pid: u32,
    /// The write end of its stdin and what is left to write, unless the whole body was
    /// written before the start.
    stdin: Option<(OwnedFd, Input)>,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
}

/// Creates the pipes and starts the process (see [`sys::Spawner`]).
fn spawn_fork(
    shared: &Shared,
    spawner: &sys::Spawner,
    env: &sys::EnvBlock,
    input: Input,
    pipe_stderr: bool,
) -> std::io::Result<Spawned> {
    let (in_r, in_w) = sys::pipe()?;
    let (out_r, out_w) = sys::pipe()?;
    let (err_r, err_w) = match pipe_stderr {
        true => sys::pipe().map(|(r, w)| (Some(r), Some(w)))?,
        false => (None, None),
    };
    // A body that fits in the empty pipe is written (and its end closed) before the process
    // starts: no non-blocking mode, no registration with the runtime, no task.
    let stdin = match input {
        Input::Full(b) if b.len() <= PIPE_BUF => {
            if !b.is_empty() {
                std::io::Write::write_all(&mut std::fs::File::from(in_w), &b)?;
            }
            None
        }
        input => Some((in_w, input)),
    };
    let pid = spawner.spawn(env, in_r, out_w, err_w, shared.groups.reaper.is_none())?;
    Ok(Spawned { pid, stdin, stdout: out_r, stderr: err_r })
}

/// A fork-mode process until it is reaped ([`ForkChild::wait`]). Dropped before, it is
/// reaped in the background once it exits (the [`GroupKill`] dropped beside it has killed
/// it by then, unless it was disarmed because the process had exited).
struct ForkChild {
    pid: u32,
    reaped: bool,
    /// Readable once the process has exited; opened by the first wait that finds it running.
    pidfd: Option<AsyncFd<OwnedFd>>,
    /// Without pidfds (Linux before 5.3): the next look, with its backoff.
    poll: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
    /// Reaped by a task already: if that is dropped too, a thread reaps it.
    background: bool,
}

impl ForkChild {
    fn new(pid: u32) -> Self {
        ForkChild { pid, reaped: false, pidfd: None, poll: None, background: false }
    }

    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<ExitStatus>> {
        loop {
            match sys::try_wait(self.pid) {
                Ok(None) => {}
                r => {
                    self.reaped = true;
                    return Poll::Ready(r.map(|s| s.unwrap_or_default()));
                }
            }
            if self.pidfd.is_none() && self.poll.is_none() {
                match sys::async_pidfd(self.pid) {
                    Ok(fd) => self.pidfd = Some(fd),
                    Err(_) => {
                        let d = Duration::from_millis(1);
                        self.poll = Some((Box::pin(tokio::time::sleep(d)), d));
                    }
                }
            }
            if let Some(fd) = &self.pidfd {
                match fd.poll_read_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(mut g)) => g.clear_ready(),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            } else if let Some((sleep, d)) = &mut self.poll {
                std::task::ready!(sleep.as_mut().poll(cx));
                *d = (*d * 2).min(Duration::from_millis(50));
                sleep.as_mut().reset(Instant::now() + *d);
            }
        }
    }

    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        std::future::poll_fn(|cx| self.poll_wait(cx)).await
    }
}

impl Drop for ForkChild {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let pid = self.pid;
        match tokio::runtime::Handle::try_current() {
            Ok(h) if !self.background => {
                h.spawn(async move {
                    let mut c = ForkChild::new(pid);
                    c.background = true;
                    let _ = c.wait().await;
                });
            }
            _ => {
                let _ = std::thread::Builder::new()
                    .name("fork-reap".into())
                    .spawn(move || sys::wait_blocking(pid));
            }
        }
    }
}

/// A streaming fork-mode process: its output as [`Event`]s, data (stdout, and stderr with
/// `combine_output`) and then one last event. Polled by the request until the first event,
/// then by the response body ([`ForkBody`]); dropped before the end (the client went away),
/// it kills the process group.
///
/// Without `combine_output` it also logs the process's stderr as it comes, line by line;
/// what is still open once it is done (a background process holding stderr) goes on being
/// logged by a task.
struct Running {
    kill: GroupKill,
    child: ForkChild,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    obuf: BytesMut,
    ebuf: BytesMut,
    /// The stderr to log, the start of its next line, and `prefix_logs`.
    log: Option<pipe::Receiver>,
    lbuf: BytesMut,
    prefix: bool,
    deadline: Deadline,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: bool,
    done: bool,
}

impl Running {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if self.done {
            return Poll::Ready(None);
        }
        let ev = self.poll_next(cx);
        if self.done {
            self.release_log();
        }
        ev
    }

    /// Logs the stderr lines there are now; Ready at its end.
    fn poll_log(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(rx) = &self.log else { return Poll::Ready(()) };
        let prefix = self.prefix;
        loop {
            match poll_read_pipe(rx, &mut self.lbuf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(0) => {
                    if !self.lbuf.is_empty() {
                        emit_line("stderr", prefix, &self.lbuf.split());
                    }
                    self.log = None;
                    return Poll::Ready(());
                }
                Poll::Ready(_) => take_lines(&mut self.lbuf, |l| emit_line("stderr", prefix, l)),
            }
        }
    }

    /// Once done: reads what stderr still holds, and hands it to a task if still open.
    fn release_log(&mut self) {
        let waker = futures::task::noop_waker();
        if self.poll_log(&mut Context::from_waker(&waker)).is_ready() {
            return;
        }
        if let (Some(rx), Ok(h)) = (self.log.take(), tokio::runtime::Handle::try_current()) {
            let (buf, prefix) = (self.lbuf.split(), self.prefix);
            h.spawn(for_each_line_after(rx, buf, move |l| emit_line("stderr", prefix, l)));
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let _ = self.poll_log(cx);
        if !self.timed_out {
            if let Some(s) = &mut self.sleep {
                if s.as_mut().poll(cx).is_ready() {
                    self.kill.fire();
                    self.timed_out = true;
                }
            }
        }
        if self.timed_out {
            let _ = std::task::ready!(self.child.poll_wait(cx));
            let name = self.deadline.map_or("exec_timeout", |d| d.2);
            log(format!("{name} exceeded; killed the function process group"));
            self.done = true;
            return Poll::Ready(Some(Event::TimedOut));
        }
        for (r, buf) in [(&mut self.stdout, &mut self.obuf), (&mut self.stderr, &mut self.ebuf)] {
            if let Some(rx) = r {
                match poll_read_pipe(rx, buf, cx) {
                    Poll::Ready(0) => *r = None,
                    Poll::Ready(_) => return Poll::Ready(Some(Event::Data(buf.split().freeze()))),
                    Poll::Pending => {}
                }
            }
        }
        if self.stdout.is_some() || self.stderr.is_some() {
            return Poll::Pending;
        }
        let st = std::task::ready!(self.child.poll_wait(cx));
        self.done = true;
        self.kill.disarm();
        Poll::Ready(Some(match st {
            Ok(s) => {
                if !s.success() {
                    log(format!(
                        "function process failed with {} (its stderr is logged above)",
                        exit_message(&s)
                    ));
                }
                Event::Exit(s)
            }
            Err(e) => Event::Failed(format!("waiting for the function process: {e}")),
        }))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.release_log();
    }
}

/// Reads what the pipe holds into `buf`: the number of bytes, 0 at its end (or on an error).
fn poll_read_pipe(rx: &pipe::Receiver, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<usize> {
    buf.reserve(16 * 1024);
    loop {
        match rx.try_read_buf(buf) {
            Ok(n) => return Poll::Ready(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => match rx.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(0),
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Poll::Ready(0),
        }
    }
}

/// The streaming response body: the process's output as it comes; an error frame (which
/// aborts the response) if it then fails or times out.
struct ForkBody {
    first: Option<Bytes>,
    running: Running,
}

impl http_body::Body for ForkBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(b) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        Poll::Ready(match std::task::ready!(this.running.poll_event(cx)) {
            None => None,
            Some(Event::Data(b)) => Some(Ok(Frame::data(b))),
            Some(Event::Exit(s)) if s.success() => None,
            Some(Event::Exit(s)) => {
                Some(Err(format!("function process exited with {}", exit_message(&s)).into()))
            }
            Some(Event::TimedOut) => Some(Err("the function process timed out".into())),
            Some(Event::Failed(m)) => Some(Err(m.into())),
        })
    }
}

// ---------------------------------------------------------------------------------------
// HTTP mode

struct Upstream {
    authority: String,
    prefix: String,
    addr: SocketAddr,
    ready: watch::Sender<bool>,
    /// How long an idle connection is kept for the next request.
    keepalive: Duration,
}

impl Upstream {
    async fn new(uri: &http::Uri, keepalive: Duration) -> Result<Upstream, Error> {
        let authority = uri
            .authority()
            .ok_or_else(|| Error::invalid("upstream_url", "needs a host and port"))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        // Literal addresses and localhost need no resolver (a static binary in a scratch
        // image has no NSS configuration).
        let addr = if let Ok(ip) = host.parse::<IpAddr>() {
            SocketAddr::new(ip, port)
        } else if host.eq_ignore_ascii_case("localhost") {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
        } else {
            tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| {
                    Error::invalid("upstream_url", format!("cannot resolve {authority}: {e}"))
                })?
                .next()
                .ok_or_else(|| {
                    Error::invalid("upstream_url", format!("{authority} has no address"))
                })?
        };
        Ok(Upstream {
            authority: authority.to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
            addr,
            ready: watch::channel(false).0,
            keepalive,
        })
    }
}

pub(crate) async fn stop_child(child: &mut tokio::process::Child, pgid: Option<u32>) {
    if let Some(p) = pgid {
        sys::kill_group(p, sys::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(3), child.wait()).await.is_err() {
        if let Some(p) = pgid {
            sys::kill_group(p, sys::SIGKILL);
        }
        let _ = child.wait().await;
    }
    if let Some(p) = pgid {
        sys::kill_group(p, sys::SIGKILL);
    }
}

async fn supervise_upstream(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(up) = shared.upstream.as_ref() else { return };
    let backoff = faas_core::util::Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let backoff = backoff.exact();
    let mut restarts = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut cmd = Command::new(&shared.program);
        cmd.args(&shared.args)
            .env("port", up.addr.port().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        sys::die_with_parent(&mut cmd, sys::SIGKILL);
        let started = Instant::now();
        match cmd.spawn() {
            Err(e) => log(format!("cannot start {:?}: {e}", shared.program)),
            Ok(mut child) => {
                let pgid = child.id();
                if let Some(o) = child.stdout.take() {
                    tokio::spawn(pump_lines(o, "stdout", shared.cfg.prefix_logs));
                }
                if let Some(e) = child.stderr.take() {
                    tokio::spawn(pump_lines(e, "stderr", shared.cfg.prefix_logs));
                }
                let addr = up.addr;
                // A server binds a few ms after its start: the first tries come soon (1 ms,
                // doubling to 10 ms), so a replica's first call is not held by the probe.
                let probe = async move {
                    let mut pause = Duration::from_millis(1);
                    loop {
                        if tokio::net::TcpStream::connect(addr).await.is_ok() {
                            break;
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(10));
                    }
                };
                let early = tokio::select! {
                    st = child.wait() => Some(st),
                    _ = probe => None,
                    _ = stop.changed() => {
                        stop_child(&mut child, pgid).await;
                        return;
                    }
                };
                let status = match early {
                    Some(st) => st,
                    None => {
                        up.ready.send_replace(true);
                        log(format!("upstream ready at {}", up.addr));
                        tokio::select! {
                            st = child.wait() => st,
                            _ = stop.changed() => {
                                up.ready.send_replace(false);
                                stop_child(&mut child, pgid).await;
                                return;
                            }
                        }
                    }
                };
                up.ready.send_replace(false);
                if let Some(p) = pgid {
                    sys::kill_group(p, sys::SIGKILL);
                }
                let how = match &status {
                    Ok(s) => exit_message(s),
                    Err(e) => e.to_string(),
                };
                log(format!("function process exited ({how}); restarting it"));
            }
        }
        // A process that ran for a while starts the backoff over.
        restarts = if started.elapsed() > Duration::from_secs(10) { 1 } else { restarts + 1 };
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay(restarts)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn proxy(shared: &Arc<Shared>, req: Request<Incoming>, slot: &ConnSlot) -> Response<Body> {
    let deadline = request_deadline(shared);
    proxy_at(shared, Outgoing::Parsed(req), slot, deadline).await
}

/// When a request that starts now must be answered by (`exec_timeout`), if at all.
fn request_deadline(shared: &Shared) -> Deadline {
    shared.deadline.map(|(d, name)| (Instant::now() + d, d, name))
}

/// A request for the upstream, as the proxy gets it.
enum Outgoing {
    /// From hyper, still to be turned into an [`UpRequest`].
    Parsed(Request<Incoming>),
    /// Already in wire form (the plain requests `h1` reads itself).
    Ready(UpRequest),
}

/// Proxies one request to the upstream, waiting for the upstream to be ready, all by
/// `deadline`; the upstream's response, or the watchdog's 502, 503 or 504.
async fn proxy_at(
    shared: &Arc<Shared>,
    req: Outgoing,
    slot: &ConnSlot,
    deadline: Deadline,
) -> Response<Body> {
    let Some(up) = shared.upstream.as_ref() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "upstream", "no upstream configured");
    };
    if !*up.ready.borrow() {
        let mut rx = up.ready.subscribe();
        let wait = async move { rx.wait_for(|r| *r).await.is_ok() };
        let ok = match deadline {
            Some((at, _, _)) => tokio::time::timeout_at(at, wait).await.unwrap_or(false),
            None => wait.await,
        };
        if !ok {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream",
                "the function process is not ready (it is starting or restarting)",
            );
        }
    }
    let fut = async {
        let req = match req {
            Outgoing::Parsed(req) => up_request(up, req).await?,
            Outgoing::Ready(req) => req,
        };
        send(up, req, slot).await
    };
    let r = match deadline {
        Some((at, d, name)) => match tokio::time::timeout_at(at, fut).await {
            Ok(r) => r,
            Err(_) => return timeout_response(name, d),
        },
        None => fut.await,
    };
    match r {
        Ok(resp) => resp,
        Err(e) => {
            text(StatusCode::BAD_GATEWAY, "upstream", format!("upstream request failed: {e}"))
        }
    }
}

/// A keep-alive HTTP/1.1 connection to the upstream and the bytes read from it but not yet
/// used.
struct UpConn {
    io: tokio::net::TcpStream,
    buf: BytesMut,
    /// When it was last given back.
    idle_since: Instant,
}

/// The upstream connection of one downstream connection, kept between its requests (which
/// hyper serves one at a time). Requests on different downstream connections never share
/// an upstream connection, so there is no pool to lock and no connection task to wake: the
/// request's own task writes the request and reads the response.
#[derive(Clone, Default)]
struct ConnSlot(Arc<std::sync::Mutex<Option<UpConn>>>);

impl ConnSlot {
    /// The kept connection, unless it has been idle for `keepalive` or longer (then the
    /// upstream may be closing it right now) or the upstream closed it (or sent something
    /// unasked) while it was idle.
    fn take_live(&self, keepalive: Duration) -> Option<UpConn> {
        let c = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        if c.idle_since.elapsed() >= keepalive {
            return None;
        }
        let mut probe = [0u8; 1];
        match c.io.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(c),
            _ => None,
        }
    }

    fn put(&self, mut c: UpConn) {
        c.idle_since = Instant::now();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }
}

/// A request body up to this size (of known length) is read before forwarding, so that head
/// and body go out in one write and the request can be retried on a fresh connection.
const BUFFER_BODY_UP_TO: u64 = 64 * 1024;

/// How the upstream's response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes remain.
    Length(u64),
    /// Chunked transfer coding, in this state.
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line.
    Trailer,
}

/// A request in the form the proxy sends it upstream.
struct UpRequest {
    /// The request line and headers up to the empty line, then the body when it is
    /// buffered.
    head: BytesMut,
    /// The body to stream after the head (chunked when its length is unknown), when it is
    /// not in `head`; then the request cannot be sent again.
    stream: Option<(Incoming, bool)>,
    /// Whether the request may be sent again on a fresh connection.
    idempotent: bool,
    /// A `HEAD` request (its response has no body).
    head_request: bool,
}

/// Whether a request with this method may be sent again after the upstream closed a kept
/// connection without answering.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Starts an upstream request head: `METHOD <prefix><path> HTTP/1.1`.
fn push_request_line(head: &mut BytesMut, up: &Upstream, method: &str, path: &str) {
    head.extend_from_slice(method.as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(up.prefix.as_bytes());
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Appends one `name: value` header line.
fn push_header(head: &mut BytesMut, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Turns a request hyper parsed into the upstream request: hop-by-hop headers dropped, a
/// body of known length up to [`BUFFER_BODY_UP_TO`] read into the head.
async fn up_request(up: &Upstream, req: Request<Incoming>) -> Result<UpRequest, String> {
    let (parts, body) = req.into_parts();
    let exact = http_body::Body::size_hint(&body).exact();
    let mut head = BytesMut::with_capacity(512);
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    push_request_line(&mut head, up, parts.method.as_str(), path);
    for (name, value) in &parts.headers {
        if is_hop_by_hop(name) || (name == header::CONTENT_LENGTH && exact.is_none()) {
            continue;
        }
        push_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::HOST) {
        push_header(&mut head, b"host", up.authority.as_bytes());
    }
    let has_cl = parts.headers.contains_key(header::CONTENT_LENGTH);
    let stream = match exact {
        Some(n) if n <= BUFFER_BODY_UP_TO => {
            let b = body
                .collect()
                .await
                .map_err(|e| format!("reading the request body: {e}"))?
                .to_bytes();
            if !has_cl && !b.is_empty() {
                head.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head.extend_from_slice(&b);
            None
        }
        Some(n) => {
            if !has_cl {
                head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            Some((body, false))
        }
        None => {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            Some((body, true))
        }
    };
    Ok(UpRequest {
        head,
        stream,
        idempotent: is_idempotent(&parts.method),
        head_request: parts.method == Method::HEAD,
    })
}

/// Sends one request over the connection's upstream connection (opening one if needed) and
/// reads the response head; the body follows as the response's body.
async fn send(up: &Upstream, req: UpRequest, slot: &ConnSlot) -> Result<Response<Body>, String> {
    let UpRequest { head, stream: mut stream_body, idempotent, head_request: no_body } = req;
    let mut retried = false;
    loop {
        let (mut conn, reused) = match slot.take_live(up.keepalive) {
            Some(c) => (c, true),
            None => (connect_upstream(up.addr).await?, false),
        };
        // A kept connection the upstream closed just now fails before any byte of a
        // response: then a buffered request is sent again on a fresh connection.
        let may_retry = reused && !retried && stream_body.is_none();
        let written = conn.io.write_all(&head).await;
        if let Err(e) = written {
            if may_retry {
                retried = true;
                continue;
            }
            return Err(format!("writing to the upstream: {e}"));
        }
        let mut body_done = stream_body.is_none();
        let got = if let Some((body, chunked)) = stream_body.as_mut() {
            let (mut rh, mut wh) = conn.io.split();
            let write = async {
                let r = write_body(&mut wh, body, *chunked).await;
                // The response is not complete before the request is: wait for the read.
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::pin!(write);
            let read = read_head(&mut rh, &mut conn.buf, no_body);
            tokio::pin!(read);
            loop {
                tokio::select! {
                    r = &mut read => break r,
                    _ = &mut write, if !body_done => body_done = true,
                }
            }
        } else {
            read_head(&mut conn.io, &mut conn.buf, no_body).await
        };
        let (resp, framing, keep) = match got {
            Ok(x) => x,
            Err(HeadError::Closed(e)) if may_retry && idempotent => {
                let _ = e;
                retried = true;
                continue;
            }
            Err(HeadError::Closed(e)) | Err(HeadError::Bad(e)) => return Err(e),
        };
        let keep = keep && body_done;
        let (mut p, ()) = resp.into_parts();
        let body = match framing {
            Framing::Length(n) if (conn.buf.len() as u64) >= n => {
                let b = conn.buf.split_to(n as usize).freeze();
                if keep && conn.buf.is_empty() {
                    slot.put(conn);
                }
                if b.is_empty() {
                    Body::empty()
                } else {
                    Body::from(b)
                }
            }
            framing => {
                if framing == Framing::Eof {
                    p.headers.remove(header::CONTENT_LENGTH);
                }
                Body::new(UpBody { conn: Some(conn), slot: slot.clone(), framing, keep })
            }
        };
        return Ok(Response::from_parts(p, body));
    }
}

async fn connect_upstream(addr: SocketAddr) -> Result<UpConn, String> {
    let io = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = io.set_nodelay(true);
    Ok(UpConn { io, buf: BytesMut::with_capacity(8 * 1024), idle_since: Instant::now() })
}

/// Streams a request body after its head (chunked when its length is unknown).
async fn write_body<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    body: &mut Incoming,
    chunked: bool,
) -> Result<(), ()> {
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| ())?.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if chunked {
            w.write_all(format!("{:x}\r\n", data.len()).as_bytes()).await.map_err(|_| ())?;
            w.write_all(&data).await.map_err(|_| ())?;
            w.write_all(b"\r\n").await.map_err(|_| ())?;
        } else {
            w.write_all(&data).await.map_err(|_| ())?;
        }
    }
    if chunked {
        w.write_all(b"0\r\n\r\n").await.map_err(|_| ())?;
    }
    w.flush().await.map_err(|_| ())
}

enum HeadError {
    /// The connection ended (or failed) before any byte of a response.
    Closed(String),
    /// Anything else.
    Bad(String),
}

/// The largest response head accepted from the upstream.
const MAX_HEAD: usize = 64 * 1024;

/// Reads a response head (skipping 1xx interim responses). Returns the response without
/// body, how its body is framed and whether the connection can be kept afterwards.
async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<(Response<()>, Framing, bool), HeadError> {
    let mut got_any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            let mut hs = [httparse::EMPTY_HEADER; 100];
            let mut parsed = httparse::Response::new(&mut hs);
            match parsed.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let code = parsed.code.unwrap_or(0);
                    if (100..200).contains(&code) {
                        if code == 101 {
                            return Err(HeadError::Bad(
                                "the upstream switched protocols, which the proxy does not support"
                                    .into(),
                            ));
                        }
                        let _ = buf.split_to(n);
                        continue;
                    }
                    let status = StatusCode::from_u16(code)
                        .map_err(|_| HeadError::Bad(format!("bad status {code}")))?;
                    let mut keep = parsed.version == Some(1);
                    let mut chunked = false;
                    let mut length: Option<u64> = None;
                    let mut headers = http::HeaderMap::with_capacity(parsed.headers.len());
                    for h in parsed.headers.iter() {
                        let name = header::HeaderName::from_bytes(h.name.as_bytes())
                            .map_err(|_| HeadError::Bad(format!("bad header name {:?}", h.name)))?;
                        if name == header::CONNECTION {
                            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                            if v.split(',').any(|t| t.trim() == "close") {
                                keep = false;
                            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                                keep = true;
                            }
                            continue;
                        }
                        if name == header::TRANSFER_ENCODING {
                            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                            chunked = v.rsplit(',').next().is_some_and(|t| t.trim() == "chunked");
                            continue;
                        }
                        if is_hop_by_hop(&name) {
                            continue;
                        }
                        if name == header::CONTENT_LENGTH {
                            let v = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok())
                                .ok_or_else(|| HeadError::Bad("bad content-length".into()))?;
                            if length.is_some_and(|l| l != v) {
                                return Err(HeadError::Bad("conflicting content-length".into()));
                            }
                            length = Some(v);
                        }
                        let value = HeaderValue::from_bytes(h.value)
                            .map_err(|_| HeadError::Bad(format!("bad value of {name}")))?;
                        headers.append(name, value);
                    }
                    let _ = buf.split_to(n);
                    let framing = if head_request
                        || status == StatusCode::NO_CONTENT
                        || status == StatusCode::NOT_MODIFIED
                    {
                        Framing::Length(0)
                    } else if chunked {
                        headers.remove(header::CONTENT_LENGTH);
                        Framing::Chunked(Chunk::Size)
                    } else if let Some(l) = length {
                        Framing::Length(l)
                    } else {
                        keep = false;
                        Framing::Eof
                    };
                    let mut resp = Response::new(());
                    *resp.status_mut() = status;
                    *resp.headers_mut() = headers;
                    return Ok((resp, framing, keep));
                }
                Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(HeadError::Bad("the response head is too large".into()))
                }
                Err(e) => return Err(HeadError::Bad(format!("malformed response: {e}"))),
            }
        }
        buf.reserve(8 * 1024);
        match r.read_buf(buf).await {
            Ok(0) if got_any => {
                return Err(HeadError::Bad("connection closed in the middle of a response".into()))
            }
            Ok(0) => return Err(HeadError::Closed("connection closed before a response".into())),
            Ok(_) => got_any = true,
            Err(e) if got_any => return Err(HeadError::Bad(format!("reading: {e}"))),
            Err(e) => return Err(HeadError::Closed(format!("reading: {e}"))),
        }
    }
}

/// How a response body is delimited, as [`parse_response_head`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A response head as the `http` mode reads it from its upstream.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status and headers, hop-by-hop headers removed.
    pub response: Response<()>,
    /// How the body that follows is delimited.
    pub framing: BodyFraming,
    /// Whether the connection can serve another request after this response.
    pub keep_alive: bool,
    /// The bytes of the input after the head (and any 1xx responses before it).
    pub rest: Bytes,
}

/// Parses a response head from `bytes` exactly as the `http` mode's proxy parses what its
/// upstream sends (1xx responses skipped, the same limits and checks); `head_request` says
/// whether the request was a `HEAD`. For fuzzing and tests: the input is all there is, so a
/// head that is not complete within it is an error. Never panics, whatever the input.
pub fn parse_response_head(bytes: &[u8], head_request: bool) -> Result<ResponseHead, String> {
    use futures::FutureExt as _;
    let mut buf = BytesMut::from(bytes);
    let mut nothing_more: &[u8] = &[];
    let parsed = read_head(&mut nothing_more, &mut buf, head_request)
        .now_or_never()
        .ok_or_else(|| "reading the head did not finish".to_string())?;
    let (response, framing, keep_alive) = parsed.map_err(|e| match e {
        HeadError::Closed(m) | HeadError::Bad(m) => m,
    })?;
    let framing = match framing {
        Framing::Length(n) => BodyFraming::Length(n),
        Framing::Chunked(_) => BodyFraming::Chunked,
        Framing::Eof => BodyFraming::UntilClose,
    };
    Ok(ResponseHead { response, framing, keep_alive, rest: buf.freeze() })
}

/// What the `http` mode makes of a request head, as [`parse_request_head`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHead {
    /// Not a whole head yet (more bytes may make it one).
    Partial,
    /// Not a plain request: hyper serves it, and the rest of its connection.
    Hyper,
    /// A plain request, read and answered by the watchdog's own HTTP/1 code.
    Plain {
        /// Bytes of the head in the input.
        head_len: usize,
        /// Bytes of its body after the head (at most 64 KiB).
        body_len: usize,
        /// `Some(ready)` for the health endpoints (`/_/ready`, `/_/health`), which the
        /// watchdog answers itself.
        health: Option<bool>,
        /// The client asked for the connection to close after this request.
        close: bool,
        /// The request line and headers sent upstream, without the empty line that ends
        /// them, for an upstream at `http://127.0.0.1:8081/base`.
        upstream_head: Bytes,
    },
}

/// Reads a request head from the start of `bytes` exactly as the `http` mode does on its
/// connections, for an upstream at `http://127.0.0.1:8081/base`: whether the request is
/// plain (and then what goes upstream) or is left to hyper. For fuzzing and tests. Never
/// panics, whatever the input.
pub fn parse_request_head(bytes: &[u8]) -> RequestHead {
    let up = Upstream {
        authority: "127.0.0.1:8081".into(),
        prefix: "/base".into(),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8081),
        ready: watch::channel(false).0,
        keepalive: Duration::ZERO,
    };
    match h1::parse(false, &up, bytes) {
        h1::Parsed::Partial => RequestHead::Partial,
        h1::Parsed::Hyper => RequestHead::Hyper,
        h1::Parsed::Plain(p) => RequestHead::Plain {
            head_len: p.head_len,
            body_len: p.body_len,
            health: p.health,
            close: p.close,
            upstream_head: p.up_head.freeze(),
        },
    }
}

/// A response body still arriving from the upstream. When it is complete the connection
/// goes back to its slot for the next request; dropped before that, it is closed.
struct UpBody {
    conn: Option<UpConn>,
    slot: ConnSlot,
    framing: Framing,
    keep: bool,
}

impl UpBody {
    /// Reads more from the upstream into the buffer; Ok(false) at end of stream.
    fn poll_fill(conn: &mut UpConn, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        loop {
            conn.buf.reserve(16 * 1024);
            match conn.io.try_read_buf(&mut conn.buf) {
                Ok(0) => return Poll::Ready(Ok(false)),
                Ok(_) => return Poll::Ready(Ok(true)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Err(e) = std::task::ready!(conn.io.poll_read_ready(cx)) {
                        return Poll::Ready(Err(e));
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The body is complete: give the connection back if it can serve another request.
    fn finish(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(c) = self.conn.take() {
            if self.keep && c.buf.is_empty() {
                self.slot.put(c);
            }
        }
        Poll::Ready(None)
    }
}

/// The position of the first CRLF in `b`.
fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

impl http_body::Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match this.framing {
                Framing::Length(0) => return this.finish(),
                Framing::Length(n) => {
                    if !conn.buf.is_empty() {
                        let take = (conn.buf.len() as u64).min(n) as usize;
                        this.framing = Framing::Length(n - take as u64);
                        let data = conn.buf.split_to(take).freeze();
                        if this.framing == Framing::Length(0) {
                            // hyper stops polling once is_end_stream says so.
                            let _ = this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Eof => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                    }
                }
                Framing::Chunked(Chunk::Data(0)) => {
                    this.framing = Framing::Chunked(Chunk::DataEnd);
                    continue;
                }
                Framing::Chunked(Chunk::Data(n)) => {
                    if !conn.buf.is_empty() {
                        let take = (conn.buf.len() as u64).min(n) as usize;
                        this.framing = Framing::Chunked(Chunk::Data(n - take as u64));
                        return Poll::Ready(Some(Ok(Frame::data(
                            conn.buf.split_to(take).freeze(),
                        ))));
                    }
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if conn.buf.len() >= 2 {
                        if &conn.buf[..2] != b"\r\n" {
                            this.conn = None;
                            return Poll::Ready(Some(Err("bad chunked encoding".into())));
                        }
                        let _ = conn.buf.split_to(2);
                        this.framing = Framing::Chunked(Chunk::Size);
                        continue;
                    }
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&conn.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = conn.buf.split_to(used);
                        this.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailer
                        } else {
                            Chunk::Data(size)
                        });
                        continue;
                    }
                    Ok(httparse::Status::Partial) if conn.buf.len() < 1024 => {}
                    _ => {
                        this.conn = None;
                        return Poll::Ready(Some(Err("bad chunked encoding".into())));
                    }
                },
                Framing::Chunked(Chunk::Trailer) => {
                    // Trailers are dropped; an empty line ends the body.
                    if let Some(i) = find_crlf(&conn.buf) {
                        let _ = conn.buf.split_to(i + 2);
                        if i == 0 {
                            return this.finish();
                        }
                        continue;
                    }
                    if conn.buf.len() > MAX_HEAD {
                        this.conn = None;
                        return Poll::Ready(Some(Err("the trailers are too large".into())));
                    }
                }
            }
            match std::task::ready!(Self::poll_fill(conn, cx)) {
                Ok(true) => {}
                Ok(false) if this.framing == Framing::Eof => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(false) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(
                        "the upstream closed the connection in the middle of the body".into(),
                    )));
                }
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(
                        Err(format!("reading from the upstream: {e}").into()),
                    ));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.framing {
            Framing::Length(n) => http_body::SizeHint::with_exact(n),
            _ => http_body::SizeHint::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Static mode

/// Decodes the `%XX` escapes of a URL path into bytes (which need not be UTF-8; `+` is a
/// plus in a path). `None` if a `%` is not followed by two hex digits: a malformed path is
/// refused rather than served under a guessed name.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let hex_at = |i: usize| b.get(i).is_some_and(u8::is_ascii_hexdigit);
    // The crate keeps a malformed escape as it is; check for one first.
    let malformed =
        b.iter().enumerate().any(|(i, &c)| c == b'%' && !(hex_at(i + 1) && hex_at(i + 2)));
    (!malformed).then(|| percent_encoding::percent_decode(b).collect())
}

fn guess_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("xml") => "application/xml",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

async fn serve_static(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    use std::os::unix::ffi::OsStrExt;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r =
            text(StatusCode::METHOD_NOT_ALLOWED, "method", "static mode serves GET and HEAD");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let Some(decoded) = percent_decode(req.uri().path()) else {
        return text(StatusCode::BAD_REQUEST, "path", "malformed percent-encoding in the path");
    };
    let mut path = shared.cfg.static_path.clone();
    for seg in decoded.split(|b| *b == b'/') {
        if seg.is_empty() || seg == b"." {
            continue;
        }
        if seg == b".." || seg.contains(&0) {
            return text(StatusCode::NOT_FOUND, "path", "not found");
        }
        path.push(std::ffi::OsStr::from_bytes(seg));
    }
    if tokio::fs::metadata(&path).await.map(|m| m.is_dir()).unwrap_or(false) {
        path.push("index.html");
    }
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let ct = match &shared.cfg.content_type {
                Some(c) => HeaderValue::from_str(c)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream")),
                None => HeaderValue::from_static(guess_type(&path)),
            };
            let len = bytes.len();
            let mut r = if req.method() == Method::HEAD {
                Response::new(Body::empty())
            } else {
                Response::new(Body::from(bytes))
            };
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            r
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            text(StatusCode::NOT_FOUND, "path", "not found")
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            text(StatusCode::FORBIDDEN, "path", "forbidden")
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "io", format!("reading the file: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_paths_decode_strictly() {
        assert_eq!(percent_decode("/a%20b/c+d").as_deref(), Some(&b"/a b/c+d"[..]));
        assert_eq!(percent_decode("/%2e%2E/%2f").as_deref(), Some(&b"/..//"[..]));
        assert_eq!(percent_decode("/%FF%00").as_deref(), Some(&[b'/', 0xFF, 0][..]));
        assert_eq!(percent_decode("/plain").as_deref(), Some(&b"/plain"[..]));
        for bad in ["/%", "/%4", "/a%zz", "/%+1", "/%%41", "/%4%41"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_names_and_commands() {
        assert_eq!(header_env_name("x-test-a"), "Http_X_Test_A");
        assert_eq!(header_env_name("content-type"), "Http_Content_Type");
        assert_eq!(split_command("cat").unwrap(), vec!["cat"]);
        assert_eq!(
            split_command("sh -c 'echo hi >&2; exit 3'").unwrap(),
            vec!["sh", "-c", "echo hi >&2; exit 3"]
        );
        assert_eq!(split_command(r#"a "b c" d\ e"#).unwrap(), vec!["a", "b c", "d e"]);
        assert!(split_command("a 'b").is_err());
    }

    #[test]
    fn config_errors_name_the_variable() {
        let field = |vars: &[(&str, &str)]| match Config::from_vars(vars.iter().copied()) {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(field(&[]), "fprocess");
        assert_eq!(field(&[("fprocess", "cat"), ("mode", "fast")]), "mode");
        assert_eq!(field(&[("fprocess", "cat"), ("mode", "http")]), "upstream_url");
        assert_eq!(field(&[("fprocess", "cat"), ("exec_timeout", "soon")]), "exec_timeout");
        assert_eq!(field(&[("fprocess", "cat"), ("max_inflight", "-1")]), "max_inflight");
        assert_eq!(field(&[("fprocess", "cat"), ("port", "99999")]), "port");
        assert_eq!(field(&[("fprocess", "cat"), ("prefix_logs", "maybe")]), "prefix_logs");
        assert_eq!(field(&[("fprocess", "cat"), ("watchdog_threads", "0")]), "watchdog_threads");
        assert_eq!(field(&[("fprocess", "cat"), ("watchdog_threads", "x")]), "watchdog_threads");
        let c = Config::from_vars([("fprocess", "cat"), ("watchdog_threads", "3")]).unwrap();
        assert_eq!(c.threads, 3);
        // Lambda mode: no more threads than execution environments, unless set.
        let lambda = |v: &[(&str, &str)]| {
            let mut all = vec![("fprocess", "cat"), ("mode", "lambda")];
            all.extend_from_slice(v);
            Config::from_vars(all).unwrap().threads
        };
        assert_eq!(lambda(&[]), 1);
        assert_eq!(lambda(&[("watchdog_threads", "3")]), 3);
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert_eq!(lambda(&[("lambda_concurrency", "64")]), cpus);
        let c =
            Config::from_vars([("function_process", "cat -"), ("write_timeout", "3s")]).unwrap();
        assert_eq!(c.fprocess, vec!["cat", "-"]);
        assert_eq!(c.healthcheck_interval, Duration::from_secs(3));
        assert_eq!(c.deadline(), Some((Duration::from_secs(3), "write_timeout")));
        let c = Config::from_vars([("mode", "static")]).unwrap();
        assert_eq!(c.mode, Mode::Static);
    }
}

//! `faas-fixture`: the conformance test function, an HTTP server implementing every
//! `faas_core::conformance::Behaviour` exactly. It runs behind the watchdog in `http` mode.
//!
//! Usage: `faas-fixture [--port N] [--bind ADDR] [--behaviour echo|env|sleep|crash|log]`.
//! The port defaults to the environment variable `port` (which the watchdog sets to the
//! upstream port in `http` mode), then 8080; the behaviour to `FIXTURE_BEHAVIOUR`, then
//! `echo`; the address to 127.0.0.1.
//!
//! Secrets are read from `$OPENFAAS_SECRETS_DIR/<name>`, else `/var/openfaas/secrets/<name>`.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Echo,
    Env,
    Sleep,
    Crash,
    Log,
}

fn parse_behaviour(s: &str) -> Option<Behaviour> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "echo" => Behaviour::Echo,
        "env" => Behaviour::Env,
        "sleep" => Behaviour::Sleep,
        "crash" => Behaviour::Crash,
        "log" => Behaviour::Log,
        _ => return None,
    })
}

struct State {
    behaviour: Behaviour,
    instance: String,
    in_flight: AtomicU32,
    peak: AtomicU32,
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == name {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            return Some(v.to_string());
        }
    }
    None
}

fn fail(msg: String) -> std::process::ExitCode {
    eprintln!("faas-fixture: {msg}");
    std::process::ExitCode::from(2)
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = arg_value(&args, "--port")
        .or_else(|| std::env::var("port").ok())
        .unwrap_or_else(|| "8080".into());
    let Ok(port) = port.trim().parse::<u16>() else {
        return fail(format!("--port/port: {port:?} is not a port"));
    };
    let bind = arg_value(&args, "--bind").unwrap_or_else(|| "127.0.0.1".into());
    let Ok(ip) = bind.parse::<std::net::IpAddr>() else {
        return fail(format!("--bind: {bind:?} is not an IP address"));
    };
    let b = arg_value(&args, "--behaviour")
        .or_else(|| std::env::var("FIXTURE_BEHAVIOUR").ok())
        .unwrap_or_else(|| "echo".into());
    let Some(behaviour) = parse_behaviour(&b) else {
        return fail(format!(
            "--behaviour/FIXTURE_BEHAVIOUR: {b:?} is not echo, env, sleep, crash or log"
        ));
    };
    let state = Arc::new(State {
        behaviour,
        instance: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
        in_flight: AtomicU32::new(0),
        peak: AtomicU32::new(0),
    });
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("runtime: {e}")),
    };
    match rt.block_on(serve(SocketAddr::new(ip, port), state)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(format!("{e}")),
    }
}

async fn serve(addr: SocketAddr, state: Arc<State>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = term.recv() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let s = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let s = s.clone();
                async move { Ok::<_, Infallible>(handle(s, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn resp(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// The first value of `key` in a query string, decoded as a form (`+` is a space).
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Resp {
    let query = req.uri().query().map(str::to_string);
    match state.behaviour {
        Behaviour::Echo => {
            let method = req.method().to_string();
            let path = match req.uri().path() {
                "" => "/".to_string(),
                p => p.to_string(),
            };
            let mut echoed = Vec::new();
            for (name, value) in req.headers() {
                if name.as_str().starts_with("x-test-") {
                    if let Ok(n) =
                        HeaderName::from_bytes(format!("x-echo-{}", name.as_str()).as_bytes())
                    {
                        echoed.push((n, value.clone()));
                    }
                }
            }
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return resp(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
            };
            let mut r = resp(StatusCode::OK, body);
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&method) {
                h.insert("x-echo-method", v);
            }
            if let Ok(v) = HeaderValue::from_str(&path) {
                h.insert("x-echo-path", v);
            }
            if let Ok(v) = HeaderValue::from_str(query.as_deref().unwrap_or("")) {
                h.insert("x-echo-query", v);
            }
            for (n, v) in echoed {
                h.append(n, v);
            }
            r
        }
        Behaviour::Env => {
            if let Some(name) = query_param(query.as_deref(), "env") {
                return match std::env::var_os(&name) {
                    Some(v) => {
                        use std::os::unix::ffi::OsStrExt;
                        resp(StatusCode::OK, Bytes::copy_from_slice(v.as_bytes()))
                    }
                    None => resp(StatusCode::NOT_FOUND, format!("env {name} is not set")),
                };
            }
            if let Some(name) = query_param(query.as_deref(), "secret") {
                if name.is_empty() || name.contains('/') || name.starts_with('.') {
                    return resp(StatusCode::BAD_REQUEST, "bad secret name");
                }
                let mut dirs = Vec::new();
                if let Some(d) = std::env::var_os("OPENFAAS_SECRETS_DIR") {
                    dirs.push(std::path::PathBuf::from(d));
                }
                dirs.push("/var/openfaas/secrets".into());
                for d in dirs {
                    if let Ok(v) = tokio::fs::read(d.join(&name)).await {
                        return resp(StatusCode::OK, v);
                    }
                }
                return resp(StatusCode::NOT_FOUND, format!("secret {name} not found"));
            }
            resp(StatusCode::BAD_REQUEST, "use ?env=NAME or ?secret=NAME")
        }
        Behaviour::Sleep => {
            let n = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            let _g = InFlight(&state);
            state.peak.fetch_max(n, Ordering::SeqCst);
            let ms = query_param(query.as_deref(), "ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let mut r = resp(StatusCode::OK, "slept");
            if let Ok(v) = HeaderValue::from_str(&state.instance) {
                r.headers_mut().insert("x-instance", v);
            }
            r.headers_mut()
                .insert("x-max-inflight", HeaderValue::from(state.peak.load(Ordering::SeqCst)));
            r
        }
        Behaviour::Crash => {
            if query_param(query.as_deref(), "crash").is_some_and(|v| v == "1") {
                eprintln!("faas-fixture: crashing on request");
                std::process::abort();
            }
            resp(StatusCode::OK, "alive")
        }
        Behaviour::Log => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return resp(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
            };
            let line = String::from_utf8_lossy(&body).replace('\n', " ");
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            resp(StatusCode::OK, "logged")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_decode_leniently() {
        assert_eq!(query_param(Some("v=a+b%2Bc%41"), "v").as_deref(), Some("a b+cA"));
        assert_eq!(query_param(Some("v=%zz%4"), "v").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(Some("v=%FF"), "v").as_deref(), Some("\u{FFFD}"));
        assert_eq!(query_param(Some("m%73=5&ms=6"), "ms").as_deref(), Some("5"));
        assert_eq!(query_param(Some("ms=10&env=MY%5FVAR"), "env").as_deref(), Some("MY_VAR"));
        assert_eq!(query_param(Some("crash"), "crash").as_deref(), Some(""));
        assert_eq!(query_param(Some("a=1"), "b"), None);
        assert_eq!(query_param(None, "a"), None);
    }
}

//! Unit-test a function's handler in memory: register it with the in-memory backend, deploy
//! it, invoke it, assert on the answer. No process, socket or container; paused tokio time
//! makes its timeout testable in no real time.
//!
//! ```text
//! cargo test -p faas-examples --example handler_tests    # the tests below
//! cargo run -p faas-examples --example handler_tests     # the same checks, then exit
//! ```

use std::time::Duration;

use faas_core::prelude::*;
use faas_core::{handler_fn, Context, Error, FunctionSpec, Invocation, MemoryInvoker, Request};

/// The handler under test: greets the name in the body (`hello, NAME`), answers 400 to an
/// empty body, and takes `?sleep=MS` milliseconds first.
fn greet() -> faas_core::BoxFunction {
    faas_core::boxed(handler_fn(|req: Request, _ctx: Context| async move {
        let sleep = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("sleep="))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(sleep)).await;
        let body = req.into_body().collect_bytes().await?;
        let name = String::from_utf8_lossy(&body).trim().to_string();
        let mut resp = http::Response::new(faas_core::Body::from(format!("hello, {name}")));
        if name.is_empty() {
            *resp.status_mut() = http::StatusCode::BAD_REQUEST;
            *resp.body_mut() = "a name, please".into();
        }
        Ok::<_, Error>(resp)
    }))
}

/// An in-memory backend with `greet` deployed under a 1 s timeout.
async fn backend() -> Result<MemoryInvoker, Error> {
    let memory = MemoryInvoker::new();
    memory.register("greet", greet());
    let spec = FunctionSpec::new("greet", "greet").timeout(Duration::from_secs(1));
    memory.deploy(spec).await?;
    Ok(memory)
}

/// Every check of this example: `Err` names the first that failed.
async fn checks() -> Result<(), String> {
    let memory = backend().await.map_err(|e| e.to_string())?;
    let body = memory.call("greet", "Ada").await.map_err(|e| e.to_string())?;
    if body != "hello, Ada" {
        return Err(format!("greeting: got {body:?}"));
    }
    let resp = memory.invoke(Invocation::post("greet", "")).await.map_err(|e| e.to_string())?;
    if resp.status() != 400 {
        return Err(format!("empty body: status {}", resp.status()));
    }
    match memory.invoke(Invocation::post("greet", "x")).await {
        Ok(r) if r.status() == 200 => Ok(()),
        other => Err(format!("a second call: {other:?}")),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let outcome = match rt {
        Ok(rt) => rt.block_on(checks()),
        Err(e) => Err(e.to_string()),
    };
    match outcome {
        Ok(()) => println!("handler_tests: all checks passed"),
        Err(e) => {
            eprintln!("handler_tests: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_example_checks_pass() {
        checks().await.unwrap();
    }

    #[tokio::test]
    async fn greets_by_name() {
        let memory = backend().await.unwrap();
        assert_eq!(memory.call("greet", "Grace\n").await.unwrap(), "hello, Grace");
    }

    #[tokio::test]
    async fn an_empty_body_is_a_400_naming_what_is_missing() {
        let memory = backend().await.unwrap();
        let resp = memory.invoke(Invocation::post("greet", "")).await.unwrap();
        assert_eq!(resp.status(), 400);
        let body = resp.into_body().collect_bytes().await.unwrap();
        assert_eq!(body, "a name, please");
    }

    /// The function's 1 s timeout, on paused time: a 5 s handler is cut at exactly 1 s
    /// with a developer error (HTTP 504).
    #[tokio::test(start_paused = true)]
    async fn a_slow_call_times_out_at_the_function_timeout() {
        let memory = backend().await.unwrap();
        let t0 = tokio::time::Instant::now();
        let err = memory.invoke(Invocation::get("greet", "/?sleep=5000")).await.unwrap_err();
        assert_eq!(err.http_status(), 504, "{err}");
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
    }
}

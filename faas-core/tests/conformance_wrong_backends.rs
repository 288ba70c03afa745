//! The conformance cases can fail: each tightened case is run against a deliberately wrong
//! backend (the in-memory backend with one fault added) and must panic, for the reason the
//! case checks. A case that passed against these backends would pin nothing down.
//!
//! - [`Fault::IgnoresCap`] honours `max_concurrency` per instance but starts four instances
//!   where `scale.max` allows one, so the function as a whole has 8 invocations in flight
//!   under a cap of 2: `concurrency_cap_holds` must fail.
//! - [`Fault::LeavesRefused`] creates a function before finding its spec invalid, and leaves
//!   it there while reporting the refusal: `invalid_specs_rejected` must fail.
//! - [`Fault::SwapsTimeoutAndCrash`] reports a timeout as a crash and a crash as a timeout:
//!   `timeout_is_developer_error` and `crash_is_developer_error` must both fail.
//!
//! Each runs on paused time, and each wrong backend also shows the fault is the only reason:
//! the same case passes against the in-memory backend without it (`Fault::None`).

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use async_trait::async_trait;
use faas_core::conformance::{self, MemoryWorkload};
use faas_core::invoker::{LogStream, LogsRequest, ProviderInfo, Secret, SecretInfo};
use faas_core::spec::labels;
use faas_core::{
    Deploy, DeveloperErrorKind, Error, FunctionRef, FunctionSpec, FunctionStatus, Invocation,
    Invoke, Logs, MemoryInvoker, Response, Result, Secrets,
};
use futures::FutureExt;

/// The one thing a [`Wrong`] backend gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// None: the in-memory backend as it is.
    None,
    /// A function with a `max_concurrency` gets four instances, whatever `scale.max` says.
    IgnoresCap,
    /// A refused deploy first creates the function (without the refused fields).
    LeavesRefused,
    /// Developer errors of kind timeout are reported as crashes, and crashes as timeouts.
    SwapsTimeoutAndCrash,
}

/// The in-memory backend with `fault` added; everything else is forwarded.
struct Wrong {
    inner: MemoryInvoker,
    fault: Fault,
}

impl Wrong {
    fn new(fault: Fault) -> (Wrong, MemoryWorkload) {
        let inner = MemoryInvoker::builder().cold_start(Duration::from_millis(50)).build();
        let workload = MemoryWorkload::new(&inner);
        (Wrong { inner, fault }, workload)
    }
}

#[async_trait]
impl Invoke for Wrong {
    async fn invoke(&self, invocation: Invocation) -> Result<Response> {
        let r = self.inner.invoke(invocation).await;
        match (self.fault, r) {
            (Fault::SwapsTimeoutAndCrash, Err(Error::Developer { kind, message })) => {
                let kind = match kind {
                    DeveloperErrorKind::Timeout => DeveloperErrorKind::Crash,
                    DeveloperErrorKind::Crash => DeveloperErrorKind::Timeout,
                    other => other,
                };
                Err(Error::Developer { kind, message })
            }
            (_, r) => r,
        }
    }
}

#[async_trait]
impl Deploy for Wrong {
    async fn deploy(&self, spec: FunctionSpec) -> Result<()> {
        match self.fault {
            Fault::IgnoresCap if spec.max_concurrency.is_some() => {
                let spec = spec.label(labels::SCALE_MIN, "4").label(labels::SCALE_MAX, "4");
                self.inner.deploy(spec).await
            }
            Fault::LeavesRefused => match self.inner.deploy(spec.clone()).await {
                Err(refusal @ Error::InvalidSpec { .. }) => {
                    // What was valid of it is created before the refusal is noticed.
                    let mut partial = spec;
                    partial.limits = None;
                    partial.constraints.clear();
                    partial.timeout = None;
                    partial.secrets.clear();
                    partial.labels.remove(labels::SCALE_MIN);
                    let _created = self.inner.deploy(partial).await;
                    Err(refusal)
                }
                r => r,
            },
            _ => self.inner.deploy(spec).await,
        }
    }
    async fn update(&self, spec: FunctionSpec) -> Result<()> {
        self.inner.update(spec).await
    }
    async fn remove(&self, function: &FunctionRef) -> Result<()> {
        self.inner.remove(function).await
    }
    async fn list(&self, namespace: &str) -> Result<Vec<FunctionStatus>> {
        self.inner.list(namespace).await
    }
    async fn status(&self, function: &FunctionRef) -> Result<FunctionStatus> {
        self.inner.status(function).await
    }
    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<()> {
        self.inner.scale(function, replicas).await
    }
    async fn namespaces(&self) -> Result<Vec<String>> {
        self.inner.namespaces().await
    }
    fn info(&self) -> ProviderInfo {
        self.inner.info()
    }
    async fn wait_ready(&self, function: &FunctionRef, timeout: Duration) -> Result<bool> {
        self.inner.wait_ready(function, timeout).await
    }
}

#[async_trait]
impl Secrets for Wrong {
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        self.inner.list_secrets(namespace).await
    }
    async fn create_secret(&self, secret: Secret) -> Result<()> {
        self.inner.create_secret(secret).await
    }
    async fn update_secret(&self, secret: Secret) -> Result<()> {
        self.inner.update_secret(secret).await
    }
    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()> {
        self.inner.remove_secret(namespace, name).await
    }
}

#[async_trait]
impl Logs for Wrong {
    async fn logs(&self, request: LogsRequest) -> Result<LogStream> {
        self.inner.logs(request).await
    }
}

/// Runs `case` against a backend with `fault`; the panic message if it failed, `None` if it
/// passed.
async fn run<F>(fault: Fault, case: F) -> Option<String>
where
    F: for<'a> FnOnce(&'a Wrong, &'a MemoryWorkload) -> futures::future::BoxFuture<'a, ()>,
{
    let (backend, workload) = Wrong::new(fault);
    let outcome = AssertUnwindSafe(case(&backend, &workload)).catch_unwind().await;
    outcome.err().map(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(a panic without a message)".into())
    })
}

/// One test per tightened case: `$test` asserts that `$case` passes without the fault and
/// fails with `$fault`, naming `$reason`.
macro_rules! fails_against {
    ($($test:ident: $case:ident, $fault:expr, $reason:expr;)*) => {$(
        #[tokio::test(start_paused = true)]
        async fn $test() {
            let passed = run(Fault::None, |b, w| conformance::$case(b, w).boxed()).await;
            assert_eq!(passed, None, "{} fails against the right backend", stringify!($case));
            let failure = run($fault, |b, w| conformance::$case(b, w).boxed()).await;
            let message = failure.unwrap_or_else(|| {
                panic!("{} passed against a backend with {:?}", stringify!($case), $fault)
            });
            assert!(
                message.contains($reason),
                "{} failed against {:?}, but not for {:?}: {message}",
                stringify!($case),
                $fault,
                $reason
            );
        }
    )*};
}

fails_against! {
    concurrency_cap_fails_against_a_backend_starting_more_instances:
        concurrency_cap_holds, Fault::IgnoresCap, "instances answered";
    invalid_specs_fails_against_a_backend_leaving_a_refused_function:
        invalid_specs_rejected, Fault::LeavesRefused, "was refused";
    timeout_case_fails_against_a_backend_reporting_a_timeout_as_a_crash:
        timeout_is_developer_error, Fault::SwapsTimeoutAndCrash, "expected a developer timeout";
    crash_case_fails_against_a_backend_reporting_a_crash_as_a_timeout:
        crash_is_developer_error, Fault::SwapsTimeoutAndCrash, "of kind crash";
}

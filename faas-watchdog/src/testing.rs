//! The conformance workload of the process backend (feature `testing`).
//!
//! [`FixtureWorkload`] deploys the `faas-fixture` binary of this crate behind the watchdog in
//! `http` mode; the fixture implements every [`Behaviour`] of the conformance suite.
//!
//! ```ignore
//! let workload = FixtureWorkload::new(env!("CARGO_BIN_EXE_faas-fixture"));
//! faas_core::conformance::run_all(&invoker, &workload).await;
//! ```

use std::path::PathBuf;
use std::time::Duration;

use faas_core::conformance::{Behaviour, Workload};
use faas_core::FunctionSpec;

/// The environment variable that tells `faas-fixture` which behaviour to implement.
pub const BEHAVIOUR_ENV: &str = "FIXTURE_BEHAVIOUR";

/// Test functions for the process backend: `faas-fixture` in watchdog `http` mode.
#[derive(Debug, Clone)]
pub struct FixtureWorkload {
    fixture: PathBuf,
    start_timeout: Duration,
}

impl FixtureWorkload {
    /// A workload running the `faas-fixture` binary at `fixture` (in tests:
    /// `env!("CARGO_BIN_EXE_faas-fixture")`).
    pub fn new(fixture: impl Into<PathBuf>) -> Self {
        FixtureWorkload { fixture: fixture.into(), start_timeout: Duration::from_secs(30) }
    }

    /// How long an instance may take to start (default 30 s).
    pub fn start_timeout(mut self, d: Duration) -> Self {
        self.start_timeout = d;
        self
    }
}

/// The fixture's name for a behaviour (`echo`, `env`, `sleep`, `crash`, `log`).
pub fn behaviour_name(b: Behaviour) -> String {
    b.name().to_string()
}

impl Workload for FixtureWorkload {
    fn spec(&self, name: &str, behaviour: Behaviour) -> FunctionSpec {
        let path = self.fixture.display().to_string().replace('\'', "'\\''");
        FunctionSpec::new(name, "faas-fixture")
            .process(format!("'{path}'"))
            .env("mode", "http")
            .env(BEHAVIOUR_ENV, behaviour_name(behaviour))
    }

    fn start_timeout(&self) -> Duration {
        self.start_timeout
    }
}

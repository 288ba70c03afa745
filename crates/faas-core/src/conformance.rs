//! The conformance suite every backend runs (feature `conformance`).
//!
//! Each case is an async function taking the backend under test and a [`Workload`], the
//! backend's way of supplying test functions that behave as the [`Behaviour`] protocol below
//! says. A backend's tests call each case (or [`run_all`]); a failing case panics with a
//! message saying what was expected.
//!
//! # The behaviour protocol
//!
//! Every backend's workload must implement these behaviours exactly, whatever runs them
//! (a Rust handler, a process behind the watchdog, a container):
//!
//! - [`Behaviour::Echo`]: answers 200; the body is the request body unchanged; headers
//!   `x-echo-method` (the method), `x-echo-path` (the path suffix, `/` when empty),
//!   `x-echo-query` (the raw query, empty when none), and for each request header whose name
//!   starts with `x-test-`, the same value under `x-echo-<name>` (e.g. `x-echo-x-test-a`).
//! - [`Behaviour::Env`]: `?env=NAME` answers 200 with the environment variable's value (404 if
//!   unset); `?secret=NAME` answers 200 with the secret's bytes (404 if absent).
//! - [`Behaviour::Sleep`]: sleeps `?ms=N` milliseconds (default 100), then answers 200
//!   `slept` with headers `x-instance` (an id unique to the instance) and `x-max-inflight`
//!   (the most requests this instance has had in flight at once, this one included).
//! - [`Behaviour::Crash`]: `?crash=1` makes the instance die mid-request (a panic in process,
//!   an abort of the process or container); without it, answers 200 `alive`.
//! - [`Behaviour::Log`]: writes the request body as one log line (stdout), answers 200
//!   `logged`.
//!
//! Header names are compared in lowercase.

use std::time::Duration;

use crate::spec::FunctionSpec;

/// A test function behaviour; see the module docs for the exact protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Behaviour {
    /// Echo method, path, query, `x-test-*` headers and body.
    Echo,
    /// Report environment variables and secrets.
    Env,
    /// Sleep, then report instance id and peak concurrency.
    Sleep,
    /// Crash on request.
    Crash,
    /// Write a log line.
    Log,
}

/// How a backend supplies test functions to the suite.
pub trait Workload: Send + Sync {
    /// A deployable spec for a function called `name` that behaves as `behaviour`.
    /// The suite adds env vars, secrets, timeouts, limits and scaling to it as each case needs.
    fn spec(&self, name: &str, behaviour: Behaviour) -> FunctionSpec;

    /// How long this backend may take to start an instance (bounds the suite's waits).
    fn start_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

//! # faas-watchdog
//!
//! "Any process can become a serverless function through the watchdog."
//!
//! - [`watchdog`]: an OpenFaaS-compatible watchdog (the `faas-watchdog` binary). It is a small
//!   HTTP server in front of a process, in one of four modes: `streaming` and `serializing`
//!   (fork the process per request: body on stdin, stdout as response), `http` (start the
//!   process once and proxy to it) and `static` (serve files). It reads the same environment
//!   variables as the OpenFaaS watchdogs (`fprocess`, `mode`, `upstream_url`, `port`,
//!   `exec_timeout`, `max_inflight`...). See [`watchdog::Config`].
//! - [`openwhisk`]: the watchdog's fifth mode, `openwhisk`: an OpenWhisk action runtime
//!   (`/init` once, `/run` per request) behind the watchdog, so OpenWhisk actions run
//!   unmodified on every backend.
//! - [`process`]: the process backend, [`process::ProcessInvoker`], a
//!   [`faas_core::Backend`] that runs each function replica as a watchdog-managed local
//!   process on its own `127.0.0.1` port. It needs no Docker.
//! - `testing` (feature `testing`): the conformance workload for the process backend, built on
//!   the `faas-fixture` binary of this crate.
//!
//! ## Secrets
//!
//! The process backend keeps secrets as files `<state>/secrets/<namespace>/<name>` and gives
//! every function a directory holding the secrets its spec names, one file per secret; the
//! function finds that directory's path in the environment variable `OPENFAAS_SECRETS_DIR`
//! ([`process::SECRETS_DIR_ENV`]). (In containers the Docker and Kubernetes backends mount the
//! same files at `/var/openfaas/secrets/<name>`.)

pub mod openwhisk;
pub mod process;
mod sys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watchdog;

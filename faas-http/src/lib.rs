//! # faas-http
//!
//! An OpenFaaS-compatible HTTP gateway over any [`faas_core::Backend`], built from tower
//! layers. It depends on no backend: the `faas` binary (crate `faas`) is where the process,
//! Docker and Kubernetes backends are linked in.
//!
//! - [`Router`]: the routes of the OpenFaaS gateway and provider API (`/system/*`,
//!   `/function/*`, `/async-function/*`, `/healthz`, `/metrics`, `/ui/`), a tower `Service`
//!   that tests call with `oneshot`, no socket needed.
//! - [`layers`]: the tower layers the default gateway is assembled from (cross-site and DNS
//!   rebinding protection, basic auth with failed logins throttled, body limit, a tracing
//!   span per request); a host application stacks its own variant.
//! - [`Gateway`]: the default stack, and [`serve`] runs any such service with hyper 1.
//! - [`stack`]: the OpenFaaS stack file (`stack.yml`); [`client`]: a gateway client.
//!
//! ```no_run
//! # async fn run(invoker: std::sync::Arc<dyn faas_core::Backend>) -> std::io::Result<()> {
//! use faas_http::{Gateway, GatewayConfig};
//! let gateway = Gateway::builder(invoker).config(GatewayConfig::default()).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! faas_http::serve(listener, gateway.service(), std::future::pending()).await
//! # }
//! ```
//!
//! Async invocations go to a [`faas_core::QueuePublisher`]; by default the gateway wires
//! `faas-queue`'s in-memory queue and an in-process worker (retries, dead letters,
//! callbacks).
//!
//! Our extensions to the OpenFaaS API, documented as such: `GET /system/activations/{id}`
//! returns the record of an async invocation by its `X-Call-Id` (`state`, `attempts`,
//! `status`, `callback`, and the OpenWhisk-style `activation` once finished).
//!
//! The OpenWhisk REST API is served under `/api/v1` ([`whisk`]); every invocation, from
//! any route, gets an OpenWhisk activation record there.

pub mod auth;
pub mod client;
pub mod config;
pub mod history;
pub mod layers;
pub mod metrics;
mod portal;
pub mod queue;
pub mod response;
pub mod router;
pub mod server;
pub mod stack;
mod util;
pub mod whisk;

pub use auth::{BasicAuth, LoginThrottleConfig};
pub use config::{CrossSiteConfig, GatewayConfig};
pub use router::{Gateway, GatewayBuilder, GatewayService, GatewayStack, InvokeStack, Router};
pub use server::{serve, serve_with, ServeConfig};
pub use whisk::{WhiskApi, WhiskKey};

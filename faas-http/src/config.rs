//! Gateway configuration.

use std::time::Duration;

use faas_core::spec::DEFAULT_NAMESPACE;

use crate::auth::{BasicAuth, LoginThrottleConfig};

/// How the gateway behaves. `Default` gives OpenFaaS-like settings with auth off (set
/// [`GatewayConfig::auth`] to turn it on), cross-site protection on and failed logins
/// throttled.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Namespace of functions addressed without one (`name` rather than `name.namespace`).
    pub default_namespace: String,
    /// Largest request body accepted, in bytes (413 beyond it). Default 32 MiB.
    pub max_body_bytes: usize,
    /// The gateway's upstream timeout: how long it waits for a function's response headers
    /// (504 naming the gateway timeout beyond it). Function timeouts must not exceed it; a
    /// deploy with a longer `timeout` is refused with 400 so the two always agree.
    pub upstream_timeout: Duration,
    /// How long a request may wait for a function to scale from zero (503 beyond it).
    pub scale_from_zero_timeout: Duration,
    /// How long a function that answered is trusted to be ready without asking the backend.
    pub ready_cache_ttl: Duration,
    /// The most invocations in flight through the gateway at once, sync and async together
    /// (429 beyond it). Default 10 000.
    pub max_in_flight: usize,
    /// Basic auth for `/system/*` and `/ui/*`; `None` disables it.
    pub auth: Option<BasicAuth>,
    /// Failed logins allowed per client address before it is answered 429 (when `auth` is
    /// set); `None` does not throttle.
    pub login_throttle: Option<LoginThrottleConfig>,
    /// Protection of `/system/*` and `/ui/*` against cross-site requests and DNS
    /// rebinding, whether or not `auth` is set.
    pub cross_site: CrossSiteConfig,
    /// Largest response body kept by the built-in async queue for callbacks and activation
    /// records.
    pub max_async_result_bytes: usize,
    /// Bounds of the built-in in-memory async queue: items, bytes, and one function's share
    /// of each (default 100 000 items, 256 MiB, a function at most 25 %). A call refused by
    /// them answers 429.
    pub async_queue: faas_queue::QueueLimits,
    /// Whether every invocation gets an OpenWhisk activation record (`GET
    /// /api/v1/namespaces/_/activations`), OpenFaaS routes and async calls included; the
    /// OpenWhisk API's own calls (actions, triggers, sequences) always do. Off by default:
    /// each record costs the invocation path (BENCHMARKS.md).
    pub record_every_invocation: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            default_namespace: DEFAULT_NAMESPACE.to_string(),
            max_body_bytes: 32 * 1024 * 1024,
            upstream_timeout: Duration::from_secs(60),
            scale_from_zero_timeout: Duration::from_secs(30),
            ready_cache_ttl: Duration::from_secs(2),
            max_in_flight: 10_000,
            auth: None,
            login_throttle: Some(LoginThrottleConfig::default()),
            cross_site: CrossSiteConfig::default(),
            max_async_result_bytes: 8 * 1024 * 1024,
            async_queue: faas_queue::QueueLimits::default(),
            record_every_invocation: false,
        }
    }
}

/// How the gateway tells its own clients from web pages elsewhere, for `/system/*` and the
/// portal `/ui/*` (see [`crate::layers::CrossSiteLayer`]).
///
/// - `Host` must name an allowed host, whatever the method: an IP address (a page can
///   only make a browser send one when it was itself loaded from that address), `localhost`
///   or a `*.localhost` name, or one of [`CrossSiteConfig::allowed_hosts`]. A DNS name of
///   an attacker's that resolves to the gateway (DNS rebinding) is refused.
/// - A state-changing request (any method but GET, HEAD, OPTIONS, TRACE) is refused when it
///   has `Sec-Fetch-Site: cross-site` or `same-site`, or an `Origin` that is neither the
///   gateway's own (the host and port of its `Host`) nor one of
///   [`CrossSiteConfig::allowed_origins`].
///
/// Clients that send neither `Origin` nor `Sec-Fetch-Site` (`curl`, `faas-cli`, `faas`)
/// are not affected by the second rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossSiteConfig {
    /// Whether the checks run (default true).
    pub enabled: bool,
    /// Host names accepted in `Host` besides IP addresses and `localhost` names, without
    /// port (`faas.example.com`); `*` accepts any.
    pub allowed_hosts: Vec<String>,
    /// Origins accepted for state-changing requests besides the gateway's own, as a
    /// browser sends them (`https://faas.example.com`, no trailing slash): the public
    /// address of a gateway behind a proxy that rewrites `Host`, say.
    pub allowed_origins: Vec<String>,
}

impl Default for CrossSiteConfig {
    fn default() -> Self {
        CrossSiteConfig { enabled: true, allowed_hosts: Vec::new(), allowed_origins: Vec::new() }
    }
}

impl CrossSiteConfig {
    /// No checks at all.
    pub fn disabled() -> Self {
        CrossSiteConfig { enabled: false, ..Default::default() }
    }
}

impl GatewayConfig {
    /// Reads the OpenFaaS environment variables over the defaults: `basic_auth`
    /// and `secret_mount_path` (see [`BasicAuth::from_env`]), `upstream_timeout`
    /// (e.g. `60s`), `max_body_bytes`, `scale_from_zero_timeout`, `default_namespace`, and
    /// ours for the in-memory async queue: `async_queue_bytes`, `async_queue_items` and
    /// `async_queue_function_percent` (one function's share of each, 1 to 100).
    /// A malformed value gives [`faas_core::Error::InvalidSpec`] naming the variable.
    pub fn from_env() -> faas_core::Result<Self> {
        let mut c = GatewayConfig::default();
        let dur = |key: &str| -> faas_core::Result<Option<Duration>> {
            match std::env::var(key) {
                Ok(v) => faas_core::util::parse_duration(&v)
                    .map(Some)
                    .map_err(|r| faas_core::Error::invalid(key, r)),
                Err(_) => Ok(None),
            }
        };
        if let Some(d) = dur("upstream_timeout")? {
            c.upstream_timeout = d;
        }
        if let Some(d) = dur("scale_from_zero_timeout")? {
            c.scale_from_zero_timeout = d;
        }
        if let Ok(v) = std::env::var("max_body_bytes") {
            c.max_body_bytes = v.trim().parse().map_err(|_| {
                faas_core::Error::invalid("max_body_bytes", format!("{v:?} is not a number"))
            })?;
        }
        if let Ok(v) = std::env::var("default_namespace") {
            faas_core::util::validate_dns1123_label(&v)
                .map_err(|r| faas_core::Error::invalid("default_namespace", r))?;
            c.default_namespace = v;
        }
        let num = |key: &str| -> faas_core::Result<Option<usize>> {
            match std::env::var(key) {
                Ok(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    faas_core::Error::invalid(key, format!("{v:?} is not a whole number"))
                }),
                Err(_) => Ok(None),
            }
        };
        let (items, bytes, percent) = (
            num("async_queue_items")?,
            num("async_queue_bytes")?,
            num("async_queue_function_percent")?,
        );
        if items.is_some() || bytes.is_some() || percent.is_some() {
            let percent = match percent {
                Some(p @ 1..=100) => p as u8,
                Some(p) => {
                    return Err(faas_core::Error::invalid(
                        "async_queue_function_percent",
                        format!("{p} is not within 1..=100"),
                    ))
                }
                None => faas_queue::QueueLimits::DEFAULT_FUNCTION_PERCENT,
            };
            c.async_queue = faas_queue::QueueLimits::new(
                items.unwrap_or(faas_queue::QueueLimits::DEFAULT_ITEMS),
                bytes.unwrap_or(faas_queue::QueueLimits::DEFAULT_BYTES),
            )
            .function_percent(percent);
        }
        c.auth = BasicAuth::from_env()?;
        Ok(c)
    }
}

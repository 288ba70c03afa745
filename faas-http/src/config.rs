//! Gateway configuration.

use std::time::Duration;

use faas_core::spec::DEFAULT_NAMESPACE;

use crate::auth::BasicAuth;

/// How the gateway behaves. `Default` gives OpenFaaS-like settings with auth off.
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
    /// Basic auth for `/system/*` and `/ui/*`; `None` disables it.
    pub auth: Option<BasicAuth>,
    /// Largest response body kept by the built-in async queue for callbacks and activation
    /// records.
    pub max_async_result_bytes: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            default_namespace: DEFAULT_NAMESPACE.to_string(),
            max_body_bytes: 32 * 1024 * 1024,
            upstream_timeout: Duration::from_secs(60),
            scale_from_zero_timeout: Duration::from_secs(30),
            ready_cache_ttl: Duration::from_secs(2),
            auth: None,
            max_async_result_bytes: 8 * 1024 * 1024,
        }
    }
}

impl GatewayConfig {
    /// Reads the OpenFaaS environment variables over the defaults: `basic_auth`
    /// and `secret_mount_path` (see [`BasicAuth::from_env`]), `upstream_timeout`
    /// (e.g. `60s`), `max_body_bytes`, `scale_from_zero_timeout`, `default_namespace`.
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
        c.auth = BasicAuth::from_env()?;
        Ok(c)
    }
}

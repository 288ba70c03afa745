//! A thin wrapper over the bollard client that speaks faas-core errors.

use std::collections::HashMap;

use bollard::errors::Error as DockerError;
use bollard::Docker;
use faas_core::{Error, Result};

/// Label keys every container we create carries.
pub(crate) mod label {
    /// Function name.
    pub const FUNCTION: &str = "com.faas-rs.function";
    /// Namespace.
    pub const NAMESPACE: &str = "com.faas-rs.namespace";
    /// Hash of the spec the container was created from.
    pub const SPEC_HASH: &str = "com.faas-rs.spec-hash";
    /// `replica`, `prewarm` or `definition`.
    pub const ROLE: &str = "com.faas-rs.role";
    /// The full spec as JSON (definition containers only).
    pub const SPEC: &str = "com.faas-rs.spec";
    /// Creation time of the function (definition containers), ms since the epoch.
    pub const CREATED: &str = "com.faas-rs.created";
    /// The pool owner (prewarm containers).
    pub const OWNER: &str = "com.faas-rs.owner";
    /// Marks everything we manage.
    pub const MANAGED: &str = "com.faas-rs.managed";
    /// The backend instance (gateway) that owns the container: a backend lists, adopts,
    /// replaces and removes only containers with its own.
    pub const INSTANCE: &str = "com.faas-rs.instance";
    /// OpenFaaS's own function label.
    pub const OPENFAAS_FUNCTION: &str = "faas_function";
}

pub(crate) const ROLE_REPLICA: &str = "replica";
pub(crate) const ROLE_PREWARM: &str = "prewarm";
pub(crate) const ROLE_DEFINITION: &str = "definition";

/// Whether a bollard error means the engine could not be reached (as opposed to an answer).
pub(crate) fn is_unreachable(e: &DockerError) -> bool {
    !matches!(
        e,
        DockerError::DockerResponseServerError { .. }
            | DockerError::JsonDataError { .. }
            | DockerError::JsonSerdeError { .. }
            | DockerError::DockerStreamError { .. }
            | DockerError::DockerContainerWaitError { .. }
    )
}

/// The HTTP status of an engine answer, if it was one.
pub(crate) fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Maps an engine error to ours: unreachable engine is `Unavailable` with the reason,
/// anything else `Internal` naming the operation.
pub(crate) fn map_err(op: &str, e: DockerError) -> Error {
    if is_unreachable(&e) {
        Error::unavailable(format!("docker engine unreachable during {op}: {e}"))
    } else {
        Error::internal(format!("docker {op} failed: {e}"))
    }
}

/// Connects to the engine at `socket` (or the local default) and negotiates the API
/// version (Debian's engine 20.10 speaks API 1.41; bollard defaults to a newer one).
pub(crate) async fn connect(socket: Option<&str>) -> Result<Docker> {
    let docker = match socket {
        Some(path) => Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION),
        None => Docker::connect_with_local_defaults(),
    }
    .map_err(|e| Error::unavailable(format!("cannot connect to the docker engine: {e}")))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| Error::unavailable(format!("docker engine unreachable: {e}")))
}

/// A `label=...` filter for list calls.
pub(crate) fn label_filter(labels: &[String]) -> HashMap<String, Vec<String>> {
    let mut m = HashMap::new();
    m.insert("label".to_string(), labels.to_vec());
    m
}

/// FNV-1a, 64 bits, as 16 hex characters: stable across Rust versions, for content hashes.
pub(crate) fn fnv_hex(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // separator so that ("ab","c") != ("a","bc")
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

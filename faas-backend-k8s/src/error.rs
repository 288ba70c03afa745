//! Kubernetes API errors mapped to [`faas_core::Error`].

use faas_core::Error;

/// What a request was about, for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// `function`, `secret`, `namespace`...
    pub kind: &'static str,
    /// The object's name.
    pub name: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// What was being done, e.g. `create deployments`.
    pub action: &'a str,
}

/// Maps a kube error to the core error type:
///
/// - 404 → [`Error::NotFound`], 409 `AlreadyExists` → [`Error::AlreadyExists`] (other 409s,
///   optimistic-concurrency conflicts, → [`Error::Unavailable`], retryable);
/// - 422 and 400 → [`Error::InvalidSpec`] with the field the API server named;
/// - 403 → [`Error::Internal`] explaining which RBAC permission is missing;
/// - 401 → [`Error::Internal`] about credentials;
/// - 429 → [`Error::Overloaded`]; other 5xx and connection failures →
///   [`Error::Unavailable`].
pub(crate) fn map_kube_error(err: kube::Error, t: Target<'_>) -> Error {
    match err {
        kube::Error::Api(status) => {
            let message = if status.message.is_empty() {
                status.reason.clone()
            } else {
                status.message.clone()
            };
            match status.code {
                404 => Error::NotFound { kind: t.kind, name: t.name.to_string() },
                409 if status.reason == "AlreadyExists" || t.action.starts_with("create") => {
                    Error::AlreadyExists { kind: t.kind, name: t.name.to_string() }
                }
                409 => Error::unavailable(format!(
                    "conflicting change to {} {}.{} while trying to {}, retry: {message}",
                    t.kind, t.name, t.namespace, t.action
                )),
                400 | 422 => {
                    let cause = status
                        .details
                        .as_ref()
                        .and_then(|d| d.causes.iter().find(|c| !c.field.is_empty()));
                    match cause {
                        Some(c) => Error::invalid(
                            c.field.clone(),
                            format!("rejected by the Kubernetes API: {}", c.message),
                        ),
                        None => Error::invalid(
                            t.kind,
                            format!("rejected by the Kubernetes API: {message}"),
                        ),
                    }
                }
                403 => Error::internal(format!(
                    "forbidden by Kubernetes RBAC: the service account or user faas-rs runs as \
                     may not {action} in namespace {ns:?} ({message}). Grant it a Role in that \
                     namespace with get, list, watch, create, update, patch and delete on \
                     deployments, deployments/scale, services, secrets, pods, pods/log and \
                     endpointslices (and a ClusterRole to list namespaces), then retry",
                    action = t.action,
                    ns = t.namespace,
                )),
                401 => Error::internal(format!(
                    "unauthorized: the Kubernetes API rejected faas-rs's credentials while \
                     trying to {}: {message}",
                    t.action
                )),
                429 => Error::Overloaded {
                    message: format!("the Kubernetes API is throttling requests: {message}"),
                    retry_after: status
                        .details
                        .as_ref()
                        .filter(|d| d.retry_after_seconds > 0)
                        .map(|d| std::time::Duration::from_secs(d.retry_after_seconds.into())),
                },
                code if code >= 500 => Error::unavailable(format!(
                    "the Kubernetes API failed to {} ({code}): {message}",
                    t.action
                )),
                code => Error::internal(format!(
                    "the Kubernetes API answered {code} to {} {}.{}: {message}",
                    t.action, t.name, t.namespace
                )),
            }
        }
        kube::Error::HyperError(e) => {
            Error::unavailable(format!("cannot reach the Kubernetes API to {}: {e}", t.action))
        }
        kube::Error::Service(e) => {
            Error::unavailable(format!("cannot reach the Kubernetes API to {}: {e}", t.action))
        }
        other => Error::internal(format!("Kubernetes API call to {} failed: {other}", t.action)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::{StatusCause, StatusDetails};
    use kube::core::Status;

    fn t() -> Target<'static> {
        Target { kind: "function", name: "f", namespace: "ns", action: "create deployments" }
    }

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("boom", reason).with_code(code).boxed())
    }

    #[test]
    fn maps_codes() {
        assert!(matches!(
            map_kube_error(api(404, "NotFound"), t()),
            Error::NotFound { kind: "function", .. }
        ));
        assert!(matches!(
            map_kube_error(api(409, "AlreadyExists"), t()),
            Error::AlreadyExists { kind: "function", .. }
        ));
        let upd = Target { action: "update deployments", ..t() };
        assert!(map_kube_error(api(409, "Conflict"), upd).is_retryable());
        let e = map_kube_error(api(403, "Forbidden"), t()).to_string();
        assert!(
            e.contains("RBAC") && e.contains("create deployments") && e.contains("\"ns\""),
            "{e}"
        );
        assert!(matches!(
            map_kube_error(api(429, "TooManyRequests"), t()),
            Error::Overloaded { .. }
        ));
        assert!(matches!(
            map_kube_error(api(503, "ServiceUnavailable"), t()),
            Error::Unavailable { .. }
        ));
        let invalid = Status::failure("Deployment.apps \"f\" is invalid", "Invalid")
            .with_code(422)
            .with_details(StatusDetails {
                causes: vec![StatusCause {
                    reason: "FieldValueInvalid".into(),
                    message: "Invalid value: \"x\"".into(),
                    field: "spec.template.spec.containers[0].image".into(),
                }],
                name: "f".into(),
                group: "apps".into(),
                kind: "deployments".into(),
                uid: String::new(),
                retry_after_seconds: 0,
            });
        match map_kube_error(kube::Error::Api(invalid.boxed()), t()) {
            Error::InvalidSpec { field, reason } => {
                assert_eq!(field, "spec.template.spec.containers[0].image");
                assert!(reason.contains("Invalid value"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}

//! The one error type of faas-rs, carrying OpenWhisk's 0-3 status taxonomy.

use std::time::Duration;

/// OpenWhisk activation status code (`response.statusCode` of an activation record).
///
/// `0` success, `1` application error, `2` developer error, `3` internal (platform) error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum StatusCode {
    /// The function ran and succeeded.
    Success = 0,
    /// The function ran and returned an error of its own.
    ApplicationError = 1,
    /// The function misbehaved: crash, timeout, init failure, protocol violation.
    DeveloperError = 2,
    /// The platform failed.
    InternalError = 3,
}

impl StatusCode {
    /// The numeric code, 0 to 3.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// OpenWhisk's `response.status` string for this code.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Success => "success",
            StatusCode::ApplicationError => "application error",
            StatusCode::DeveloperError => "action developer error",
            StatusCode::InternalError => "whisk internal error",
        }
    }
}

impl From<StatusCode> for u8 {
    fn from(c: StatusCode) -> u8 {
        c as u8
    }
}

impl TryFrom<u8> for StatusCode {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        Ok(match v {
            0 => StatusCode::Success,
            1 => StatusCode::ApplicationError,
            2 => StatusCode::DeveloperError,
            3 => StatusCode::InternalError,
            other => return Err(format!("activation status code must be 0..=3, got {other}")),
        })
    }
}

/// What kind of developer error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeveloperErrorKind {
    /// The function did not answer within its timeout.
    Timeout,
    /// The function crashed (panic, non-zero exit, killed instance).
    Crash,
    /// The function answered something the protocol does not allow.
    Protocol,
    /// The function failed to initialise.
    Init,
}

impl std::fmt::Display for DeveloperErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeveloperErrorKind::Timeout => "timeout",
            DeveloperErrorKind::Crash => "crash",
            DeveloperErrorKind::Protocol => "protocol violation",
            DeveloperErrorKind::Init => "initialisation failure",
        })
    }
}

/// The error type shared by every faas-rs crate.
///
/// Each variant maps to an OpenWhisk status code ([`Error::status_code`]) and an HTTP status
/// ([`Error::http_status`]), so every layer reports failures the same way.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The function ran and reported an error of its own (OpenWhisk code 1).
    #[error("application error: {message}")]
    Application {
        /// What the function said.
        message: String,
    },
    /// The function misbehaved (OpenWhisk code 2).
    #[error("developer error ({kind}): {message}")]
    Developer {
        /// Timeout, crash, protocol violation or init failure.
        kind: DeveloperErrorKind,
        /// A human readable explanation (for a timeout, which timeout fired).
        message: String,
    },
    /// The platform failed (OpenWhisk code 3).
    #[error("internal error: {message}")]
    Internal {
        /// What went wrong.
        message: String,
    },
    /// The named function, secret or namespace does not exist.
    #[error("{kind} not found: {name}")]
    NotFound {
        /// What was looked for: `function`, `secret`, `namespace`, `activation`...
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The function or secret exists already.
    #[error("{kind} already exists: {name}")]
    AlreadyExists {
        /// What: `function`, `secret`...
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A spec or request field is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidSpec {
        /// The field, in the JSON spelling users write (`service`, `limits.memory`...).
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A payload exceeded a size limit.
    #[error("payload too large: limit is {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Too much work at once; try again later.
    #[error("overloaded: {message}")]
    Overloaded {
        /// What is full.
        message: String,
        /// When to try again, if known.
        retry_after: Option<Duration>,
    },
    /// A backend or dependency cannot be reached, or no instance became ready in time.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The backend does not support this operation.
    #[error("not supported: {operation}")]
    NotSupported {
        /// The operation.
        operation: String,
    },
}

/// Result alias using [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An application error (code 1).
    pub fn application(message: impl Into<String>) -> Self {
        Error::Application { message: message.into() }
    }

    /// A developer error (code 2) of the given kind.
    pub fn developer(kind: DeveloperErrorKind, message: impl Into<String>) -> Self {
        Error::Developer { kind, message: message.into() }
    }

    /// A timeout, reported as a developer error naming the timeout that fired.
    pub fn timeout(which: impl std::fmt::Display, after: Duration) -> Self {
        Error::developer(
            DeveloperErrorKind::Timeout,
            format!("{which} timeout of {} exceeded", crate::util::format_duration(after)),
        )
    }

    /// An internal (platform) error (code 3).
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal { message: message.into() }
    }

    /// A function that does not exist.
    pub fn function_not_found(name: impl Into<String>) -> Self {
        Error::NotFound { kind: "function", name: name.into() }
    }

    /// An invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidSpec { field: field.into(), reason: reason.into() }
    }

    /// Overloaded with no retry hint.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Error::Overloaded { message: message.into(), retry_after: None }
    }

    /// Unavailable with a reason.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Error::Unavailable { reason: reason.into() }
    }

    /// The OpenWhisk status code this error corresponds to.
    ///
    /// Errors the caller made (not found, invalid spec, too large) and load shedding are not
    /// the function's fault; they map to `InternalError` only for the purpose of an activation
    /// record, which is rarely created for them.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Error::Application { .. } => StatusCode::ApplicationError,
            Error::Developer { .. } => StatusCode::DeveloperError,
            _ => StatusCode::InternalError,
        }
    }

    /// The HTTP status a gateway answers with for this error.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Error::Application { .. } => S::BAD_GATEWAY,
            Error::Developer { kind: DeveloperErrorKind::Timeout, .. } => S::GATEWAY_TIMEOUT,
            Error::Developer { .. } => S::BAD_GATEWAY,
            Error::Internal { .. } => S::INTERNAL_SERVER_ERROR,
            Error::NotFound { .. } => S::NOT_FOUND,
            Error::AlreadyExists { .. } => S::CONFLICT,
            Error::InvalidSpec { .. } => S::BAD_REQUEST,
            Error::PayloadTooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            Error::Overloaded { .. } => S::TOO_MANY_REQUESTS,
            Error::Unavailable { .. } => S::SERVICE_UNAVAILABLE,
            Error::NotSupported { .. } => S::NOT_IMPLEMENTED,
        }
    }

    /// Whether retrying the same request later may succeed (overload, unavailability).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Overloaded { .. } | Error::Unavailable { .. })
    }

    /// Whether this is a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Developer { kind: DeveloperErrorKind::Timeout, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taxonomy_and_http_mapping() {
        assert_eq!(Error::application("x").status_code().as_u8(), 1);
        assert_eq!(Error::developer(DeveloperErrorKind::Crash, "x").status_code().as_u8(), 2);
        assert_eq!(Error::internal("x").status_code().as_u8(), 3);
        assert_eq!(Error::application("x").http_status(), 502);
        assert_eq!(Error::internal("x").http_status(), 500);
        assert_eq!(Error::timeout("exec", Duration::from_secs(2)).http_status(), 504);
        assert_eq!(Error::function_not_found("f").http_status(), 404);
        let e = Error::invalid("limits.memory", "bad quantity");
        assert_eq!(e.to_string(), "invalid limits.memory: bad quantity");
        assert!(Error::overloaded("full").is_retryable());
        assert!(!Error::application("x").is_retryable());
    }

    #[test]
    fn status_code_serde() {
        assert_eq!(serde_json::to_string(&StatusCode::DeveloperError).unwrap(), "2");
        let c: StatusCode = serde_json::from_str("1").unwrap();
        assert_eq!(c, StatusCode::ApplicationError);
        assert!(serde_json::from_str::<StatusCode>("7").is_err());
    }
}

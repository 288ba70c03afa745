//! Activation records (OpenWhisk): what happened when a function ran.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, StatusCode};
use crate::invocation::{FunctionRef, InvocationId, InvocationMeta, StartKind};

/// OpenWhisk's `response` object of an activation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationResponse {
    /// `success`, `application error`, `action developer error`, `whisk internal error`.
    pub status: String,
    /// 0 to 3.
    pub status_code: StatusCode,
    /// `status_code == 0`.
    pub success: bool,
    /// The result (for HTTP functions: `{"statusCode": .., "body": ..}` or `{"error": ..}`).
    pub result: serde_json::Value,
}

impl ActivationResponse {
    /// A successful response with `result`.
    pub fn success(result: serde_json::Value) -> Self {
        ActivationResponse {
            status: StatusCode::Success.as_str().into(),
            status_code: StatusCode::Success,
            success: true,
            result,
        }
    }

    /// The response for an error: `{"error": "<message>"}` with the error's status code.
    pub fn error(err: &Error) -> Self {
        let code = err.status_code();
        ActivationResponse {
            status: code.as_str().into(),
            status_code: code,
            success: false,
            result: serde_json::json!({ "error": err.to_string() }),
        }
    }
}

/// One key/value annotation, as OpenWhisk writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// Key: `waitTime`, `initTime`, `kind`, `limits`, `causedBy`, `topmost`, `start`...
    pub key: String,
    /// Value.
    pub value: serde_json::Value,
}

/// An activation record with OpenWhisk's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activation {
    /// The invocation id.
    pub activation_id: InvocationId,
    /// Namespace.
    pub namespace: String,
    /// Function name.
    pub name: String,
    /// Who ran it (the namespace, for OpenWhisk's `subject`).
    #[serde(default)]
    pub subject: String,
    /// The version of the action that ran.
    #[serde(default = "default_version")]
    pub version: String,
    /// Whether the action is shared.
    #[serde(default)]
    pub publish: bool,
    /// The activation that caused this one (a sequence's, for its components).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<InvocationId>,
    /// Start, in milliseconds since the Unix epoch.
    pub start: u64,
    /// End, in milliseconds since the Unix epoch.
    pub end: u64,
    /// `end - start` in milliseconds.
    pub duration: u64,
    /// Log lines written during the activation.
    #[serde(default)]
    pub logs: Vec<String>,
    /// Annotations (`waitTime`, `initTime` on a cold start, `kind`, `start`).
    #[serde(default)]
    pub annotations: Vec<Annotation>,
    /// The outcome.
    pub response: ActivationResponse,
}

fn default_version() -> String {
    DEFAULT_VERSION.to_string()
}

/// The version of an activation of a function that has none (an OpenFaaS function).
pub const DEFAULT_VERSION: &str = "0.0.1";

/// Milliseconds since the Unix epoch.
pub fn epoch_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Activation {
    /// A record for an invocation of `function` that ran from `start` to `end`.
    pub fn new(
        id: InvocationId,
        function: &FunctionRef,
        start: SystemTime,
        end: SystemTime,
        response: ActivationResponse,
    ) -> Self {
        let (s, e) = (epoch_millis(start), epoch_millis(end));
        Activation {
            activation_id: id,
            namespace: function.namespace.clone(),
            name: function.name.clone(),
            subject: function.namespace.clone(),
            version: default_version(),
            publish: false,
            cause: None,
            start: s,
            end: e.max(s),
            duration: e.saturating_sub(s),
            logs: Vec::new(),
            annotations: Vec::new(),
            response,
        }
    }

    /// Adds the annotations describing how the instance was obtained: `waitTime` (ms),
    /// `initTime` (ms, only on cold or prewarmed starts), `start` (warm, resumed, prewarmed,
    /// cold).
    pub fn annotate_meta(&mut self, meta: &InvocationMeta) {
        self.annotate("waitTime", serde_json::json!(meta.wait_time.as_millis() as u64));
        if let Some(init) = meta.init_time {
            if matches!(meta.start, StartKind::Cold | StartKind::Prewarmed) {
                self.annotate("initTime", serde_json::json!(init.as_millis() as u64));
            }
        }
        self.annotate("start", serde_json::json!(meta.start));
    }

    /// Adds one annotation.
    pub fn annotate(&mut self, key: &str, value: serde_json::Value) {
        self.annotations.push(Annotation { key: key.into(), value });
    }

    /// Looks up an annotation.
    pub fn annotation(&self, key: &str) -> Option<&serde_json::Value> {
        self.annotations.iter().find(|a| a.key == key).map(|a| &a.value)
    }

    /// The `waitTime` annotation.
    pub fn wait_time(&self) -> Option<Duration> {
        self.annotation("waitTime").and_then(|v| v.as_u64()).map(Duration::from_millis)
    }

    /// The `initTime` annotation (present only on a cold start).
    pub fn init_time(&self) -> Option<Duration> {
        self.annotation("initTime").and_then(|v| v.as_u64()).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openwhisk_shape() {
        let t0 = UNIX_EPOCH + Duration::from_millis(1000);
        let t1 = UNIX_EPOCH + Duration::from_millis(1033);
        let mut a = Activation::new(
            InvocationId::from_string("abc"),
            &FunctionRef::new("hello", "guest"),
            t0,
            t1,
            ActivationResponse::error(&Error::timeout("exec", Duration::from_secs(1))),
        );
        a.annotate_meta(&InvocationMeta {
            instance: "i1".into(),
            start: StartKind::Cold,
            wait_time: Duration::from_millis(5),
            init_time: Some(Duration::from_millis(20)),
        });
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["activationId"], "abc");
        assert_eq!(v["duration"], 33);
        assert_eq!(v["response"]["statusCode"], 2);
        assert_eq!(v["response"]["success"], false);
        assert_eq!(a.init_time(), Some(Duration::from_millis(20)));
        assert_eq!(a.wait_time(), Some(Duration::from_millis(5)));
        let back: Activation = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
    }
}

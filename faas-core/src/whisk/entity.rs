//! OpenWhisk's entities as its REST API writes them: [`Action`], [`Package`], [`Trigger`],
//! [`Rule`], their parameters and annotations (arrays of [`KeyValue`]), [`Exec`] and
//! [`Limits`], and fully qualified names ([`EntityPath`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The most components a sequence may have (OpenWhisk's `sequence_length`).
pub const MAX_SEQUENCE_LENGTH: usize = 50;

/// One parameter or annotation: `{"key": .., "value": ..}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (any JSON).
    pub value: Value,
}

/// Parameters or annotations, in OpenWhisk's array form.
pub type KeyValues = Vec<KeyValue>;

/// The value of `key` in `kvs`.
pub fn lookup<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    kvs.iter().rev().find(|kv| kv.key == key).map(|kv| &kv.value)
}

/// `kvs` as a JSON object (a later key wins).
pub fn to_map(kvs: &[KeyValue]) -> Map<String, Value> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect()
}

/// Whether an annotation is set to a truthy value (not absent, `false`, `0`, `null`, `""`).
pub fn truthy(kvs: &[KeyValue], key: &str) -> bool {
    match lookup(kvs, key) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// An action's limits (`timeout` ms, `memory` MB, `logs` MB, `concurrency`), with
/// OpenWhisk's defaults and ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Milliseconds, 100 to 300000 (default 60000).
    pub timeout: u64,
    /// Megabytes, 128 to 512 (default 256).
    pub memory: u64,
    /// Megabytes of logs, 0 to 10 (default 10).
    pub logs: u64,
    /// Activations one instance runs at once, 1 to 500 (default 1).
    pub concurrency: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { timeout: 60_000, memory: 256, logs: 10, concurrency: 1 }
    }
}

impl Limits {
    /// Checks every limit against OpenWhisk's range; the error names the field
    /// (`limits.timeout`...).
    pub fn validate(&self) -> Result<()> {
        let check = |field: &str, v: u64, min: u64, max: u64, unit: &str| {
            if v < min || v > max {
                return Err(Error::invalid(
                    format!("limits.{field}"),
                    format!("{v} {unit} is outside the allowed range {min} to {max} {unit}"),
                ));
            }
            Ok(())
        };
        check("timeout", self.timeout, 100, 300_000, "ms")?;
        check("memory", self.memory, 128, 512, "MB")?;
        check("logs", self.logs, 0, 10, "MB")?;
        check("concurrency", self.concurrency, 1, 500, "")
    }
}

/// What an action runs: `kind` `blackbox` with an `image`, `sequence` with `components`,
/// or a code kind (`nodejs:20`, `python:3`...) with `code` and optional `main`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Exec {
    /// `blackbox`, `sequence`, or a runtime kind.
    pub kind: String,
    /// The source (or base64 zip with `binary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The container image (`blackbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The entry point's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<String>,
    /// Whether `code` is base64.
    #[serde(default)]
    pub binary: bool,
    /// The fully qualified names of a sequence's actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<String>>,
}

impl Exec {
    /// Whether this is a sequence.
    pub fn is_sequence(&self) -> bool {
        self.kind == "sequence"
    }

    /// Checks the fields the kind needs (errors name `exec.FIELD`).
    pub fn validate(&self) -> Result<()> {
        match self.kind.as_str() {
            "" => Err(Error::invalid("exec.kind", "the kind is missing")),
            "sequence" => {
                let n = self.components.as_ref().map_or(0, Vec::len);
                if n == 0 {
                    return Err(Error::invalid("exec.components", "a sequence needs components"));
                }
                if n > MAX_SEQUENCE_LENGTH {
                    return Err(Error::invalid(
                        "exec.components",
                        format!(
                            "too many actions in the sequence: {n} (at most {MAX_SEQUENCE_LENGTH})"
                        ),
                    ));
                }
                Ok(())
            }
            "blackbox" => match self.image.as_deref() {
                Some(i) if !i.is_empty() => Ok(()),
                _ => Err(Error::invalid("exec.image", "a blackbox action needs an image")),
            },
            kind => {
                if crate::runtimes::lookup(kind).is_none_or(|k| k.image.is_none()) {
                    let kinds: Vec<&str> =
                        crate::runtimes::MANIFEST.iter().map(|k| k.kind).collect();
                    return Err(Error::invalid(
                        "exec.kind",
                        format!(
                            "{kind:?} is not a runtime kind here; use one of {}, or sequence",
                            kinds.join(", ")
                        ),
                    ));
                }
                match self.code.as_deref() {
                    Some(c) if !c.is_empty() => Ok(()),
                    _ => Err(Error::invalid("exec.code", format!("a {kind} action needs code"))),
                }
            }
        }
    }
}

/// A reference to another entity as rules and bindings write it: `{"path", "name"}` on
/// reads (`path` is the namespace, or `namespace/package`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathName {
    /// `namespace` or `namespace/package`.
    pub path: String,
    /// The entity's name.
    pub name: String,
}

/// An action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Namespace (with the package: `ns/pkg`).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `major.minor.patch`, bumped on each update.
    pub version: String,
    /// Whether it is shared.
    #[serde(default)]
    pub publish: bool,
    /// What it runs.
    pub exec: Exec,
    /// Default parameters.
    #[serde(default)]
    pub parameters: KeyValues,
    /// Annotations (`final`, `exec`...).
    #[serde(default)]
    pub annotations: KeyValues,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Last change, milliseconds since the Unix epoch.
    #[serde(default)]
    pub updated: u64,
}

/// A package: a namespace of actions with default parameters, or a binding of another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Whether it is shared.
    #[serde(default)]
    pub publish: bool,
    /// The package this one binds (`{}` when it is not a binding).
    #[serde(default, with = "binding_ser")]
    pub binding: Option<Binding>,
    /// Default parameters of its actions.
    #[serde(default)]
    pub parameters: KeyValues,
    /// Annotations.
    #[serde(default)]
    pub annotations: KeyValues,
    /// Last change, milliseconds since the Unix epoch.
    #[serde(default)]
    pub updated: u64,
}

/// What a package binding points to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The bound package's namespace.
    pub namespace: String,
    /// The bound package's name.
    pub name: String,
}

mod binding_ser {
    use super::Binding;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(b: &Option<Binding>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => b.serialize(s),
            None => serde_json::Map::new().serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Binding>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::Object(m) if m.is_empty() => Ok(None),
            serde_json::Value::Null => Ok(None),
            other => Binding::deserialize(other).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// A trigger: a named event channel with default parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Whether it is shared.
    #[serde(default)]
    pub publish: bool,
    /// Default parameters of its firings.
    #[serde(default)]
    pub parameters: KeyValues,
    /// Annotations (`feed`...).
    #[serde(default)]
    pub annotations: KeyValues,
    /// Limits (none are defined for triggers).
    #[serde(default)]
    pub limits: Map<String, Value>,
    /// Last change, milliseconds since the Unix epoch.
    #[serde(default)]
    pub updated: u64,
}

/// `active` or `inactive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleStatus {
    /// The rule fires.
    Active,
    /// The rule does not fire.
    Inactive,
}

/// A rule: when its trigger fires, its action runs (if it is active).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Whether it is shared.
    #[serde(default)]
    pub publish: bool,
    /// The trigger.
    pub trigger: PathName,
    /// The action.
    pub action: PathName,
    /// Whether it fires.
    pub status: RuleStatus,
    /// Annotations.
    #[serde(default)]
    pub annotations: KeyValues,
    /// Last change, milliseconds since the Unix epoch.
    #[serde(default)]
    pub updated: u64,
}

/// An entity's fully qualified name: namespace, optional package, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityPath {
    /// The namespace (never `_`: resolved against the caller's).
    pub namespace: String,
    /// The package, if any.
    pub package: Option<String>,
    /// The name.
    pub name: String,
}

/// Whether `s` is a valid OpenWhisk entity name: 1 to 256 characters, starting with a
/// letter, digit or `_`, then letters, digits, `_`, `@`, `.`, `-` or spaces (not last).
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_@.- ".contains(c))
        && !s.ends_with(' ')
}

/// Checks a name, naming `field` in the error.
pub fn check_name(field: &str, s: &str) -> Result<()> {
    if valid_name(s) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{s:?} is not a valid name (letters, digits, '_', '@', '.', '-' and spaces)"),
        ))
    }
}

impl EntityPath {
    /// `namespace/[package/]name`.
    pub fn new(namespace: &str, package: Option<&str>, name: &str) -> Self {
        EntityPath {
            namespace: namespace.to_string(),
            package: package.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// Parses `/ns/name`, `/ns/pkg/name`, `ns/pkg/name`, `pkg/name` or `name` (OpenWhisk's
    /// forms); a missing namespace or `_` is `caller`.
    pub fn parse(field: &str, s: &str, caller: &str) -> Result<Self> {
        let bad = || Error::invalid(field, format!("{s:?} is not a fully qualified name"));
        let parts: Vec<&str> = s.trim_start_matches('/').split('/').collect();
        let absolute = s.starts_with('/');
        let (ns, pkg, name) = match (absolute, parts.as_slice()) {
            (_, [ns, pkg, name]) => (*ns, Some(*pkg), *name),
            (true, [ns, name]) => (*ns, None, *name),
            (false, [pkg, name]) => ("_", Some(*pkg), *name),
            (false, [name]) => ("_", None, *name),
            _ => return Err(bad()),
        };
        let ns = if ns == "_" { caller } else { ns };
        for p in [Some(ns), pkg, Some(name)].into_iter().flatten() {
            if !valid_name(p) {
                return Err(bad());
            }
        }
        Ok(EntityPath::new(ns, pkg, name))
    }

    /// `namespace` or `namespace/package`: OpenWhisk's `path` of the entity.
    pub fn path(&self) -> String {
        match &self.package {
            Some(p) => format!("{}/{p}", self.namespace),
            None => self.namespace.clone(),
        }
    }

    /// `/namespace[/package]/name`.
    pub fn fqn(&self) -> String {
        format!("/{}/{}", self.path(), self.name)
    }

    /// The store key: `namespace/[package/]name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.path(), self.name)
    }
}

impl std::fmt::Display for EntityPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.fqn())
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> u64 {
    crate::activation::epoch_millis(std::time::SystemTime::now())
}

/// The next version after `v` (`0.0.1` → `0.0.2`).
pub fn bump_version(v: &str) -> String {
    let mut parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    parts.resize(3, 0);
    parts[2] += 1;
    format!("{}.{}.{}", parts[0], parts[1], parts[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_openwhisk_forms() {
        let p = EntityPath::parse("action", "/guest/hello", "me").unwrap();
        assert_eq!(
            (p.namespace.as_str(), p.package.as_deref(), p.name.as_str()),
            ("guest", None, "hello")
        );
        let p = EntityPath::parse("action", "utils/cat", "me").unwrap();
        assert_eq!(p.fqn(), "/me/utils/cat");
        let p = EntityPath::parse("action", "/_/hello", "me").unwrap();
        assert_eq!(p.fqn(), "/me/hello");
        let p = EntityPath::parse("action", "ns/pkg/a", "me").unwrap();
        assert_eq!(p.key(), "ns/pkg/a");
        assert!(EntityPath::parse("action", "/a/b/c/d", "me").is_err());
        assert!(EntityPath::parse("action", "/guest/", "me").is_err());
        assert!(EntityPath::parse("action", "bad$name", "me").is_err());
    }

    #[test]
    fn limits_are_checked_against_openwhisk_ranges() {
        assert!(Limits::default().validate().is_ok());
        let e = Limits { timeout: 50, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("limits.timeout"), "{e}");
        let e = Limits { memory: 1024, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("limits.memory"), "{e}");
        assert!(Limits { timeout: 300_001, ..Default::default() }.validate().is_err());
    }

    #[test]
    fn sequences_are_bounded() {
        let seq = |n: usize| Exec {
            kind: "sequence".into(),
            components: Some(vec!["/guest/a".into(); n]),
            ..Default::default()
        };
        assert!(seq(50).validate().is_ok());
        assert!(seq(51).validate().unwrap_err().to_string().contains("exec.components"));
        assert!(seq(0).validate().is_err());
        let bb = Exec { kind: "blackbox".into(), ..Default::default() };
        assert!(bb.validate().unwrap_err().to_string().contains("exec.image"));
    }

    #[test]
    fn package_binding_reads_and_writes_as_openwhisk() {
        let v = serde_json::json!({"namespace":"guest","name":"p","version":"0.0.1","binding":{}});
        let p: Package = serde_json::from_value(v).unwrap();
        assert_eq!(p.binding, None);
        assert_eq!(serde_json::to_value(&p).unwrap()["binding"], serde_json::json!({}));
        assert_eq!(bump_version("0.0.9"), "0.0.10");
    }
}

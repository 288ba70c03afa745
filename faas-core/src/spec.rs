//! Function deployment specs (OpenFaaS `FunctionDeployment`) and status (`FunctionStatus`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::invocation::FunctionRef;
use crate::scheduler::Constraint;
use crate::util::{self, opt_duration};

/// The namespace a function lands in when its spec names none (OpenFaaS's default).
pub const DEFAULT_NAMESPACE: &str = "openfaas-fn";

/// Upper bound on a function's timeout (OpenWhisk allows 300 s; we allow up to one hour).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Memory and CPU quantities, as OpenFaaS and Kubernetes write them (`"128Mi"`, `"0.5"`,
/// `"500m"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory, e.g. `128Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPU, e.g. `0.5` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

impl Resources {
    /// Memory in bytes, if set and valid.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory.as_deref().and_then(|m| util::parse_memory(m).ok())
    }

    /// CPU in millicores, if set and valid.
    pub fn cpu_millis(&self) -> Option<u64> {
        self.cpu.as_deref().and_then(|c| util::parse_cpu(c).ok())
    }

    fn validate(&self, prefix: &str) -> Result<()> {
        if let Some(m) = &self.memory {
            util::parse_memory(m).map_err(|r| Error::invalid(format!("{prefix}.memory"), r))?;
        }
        if let Some(c) = &self.cpu {
            util::parse_cpu(c).map_err(|r| Error::invalid(format!("{prefix}.cpu"), r))?;
        }
        Ok(())
    }
}

/// What the autoscaler measures for a function (`com.openfaas.scale.type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalingMetric {
    /// Requests per second per replica.
    Rps,
    /// In-flight requests per replica (Knative's concurrency).
    #[default]
    Capacity,
    /// CPU use per replica, in millicores.
    Cpu,
}

/// Scaling knobs of one function. OpenFaaS users set them with the `com.openfaas.scale.*`
/// labels ([`ScalingPolicy::apply_labels`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScalingPolicy {
    /// Minimum replicas while the function is in use (`com.openfaas.scale.min`, default 1).
    pub min: u32,
    /// Maximum replicas (`com.openfaas.scale.max`, default 20).
    pub max: u32,
    /// Step as a percentage of max for step-based scalers (`com.openfaas.scale.factor`,
    /// default 20).
    pub factor: u32,
    /// Whether idle functions go to zero replicas (`com.openfaas.scale.zero`).
    pub allow_zero: bool,
    /// Idle time before scaling to zero (`com.openfaas.scale.zero-duration`, default 15m).
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// The metric (`com.openfaas.scale.type`).
    pub metric: ScalingMetric,
    /// Target value of the metric per replica (`com.openfaas.scale.target`, default 50).
    pub target: u32,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        ScalingPolicy {
            min: 1,
            max: 20,
            factor: 20,
            allow_zero: false,
            idle_timeout: None,
            metric: ScalingMetric::Capacity,
            target: 50,
        }
    }
}

/// The OpenFaaS scaling label names.
pub mod labels {
    /// Minimum replicas.
    pub const SCALE_MIN: &str = "com.openfaas.scale.min";
    /// Maximum replicas.
    pub const SCALE_MAX: &str = "com.openfaas.scale.max";
    /// Scaling factor in percent.
    pub const SCALE_FACTOR: &str = "com.openfaas.scale.factor";
    /// `true` to allow scale to zero.
    pub const SCALE_ZERO: &str = "com.openfaas.scale.zero";
    /// Idle duration before scale to zero.
    pub const SCALE_ZERO_DURATION: &str = "com.openfaas.scale.zero-duration";
    /// `rps`, `capacity` or `cpu`.
    pub const SCALE_TYPE: &str = "com.openfaas.scale.type";
    /// Target per replica.
    pub const SCALE_TARGET: &str = "com.openfaas.scale.target";
}

impl ScalingPolicy {
    /// Default idle time before scale to zero when none is given.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

    /// The idle time before scale to zero, defaulted.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(Self::DEFAULT_IDLE_TIMEOUT)
    }

    /// Applies the `com.openfaas.scale.*` labels over `self`. A malformed label value gives
    /// [`Error::InvalidSpec`] naming the label.
    pub fn apply_labels(mut self, labels: &BTreeMap<String, String>) -> Result<Self> {
        fn field(key: &str) -> String {
            format!("labels.{key}")
        }
        fn num(labels: &BTreeMap<String, String>, key: &str) -> Result<Option<u32>> {
            labels
                .get(key)
                .map(|v| {
                    v.trim().parse::<u32>().map_err(|_| {
                        Error::invalid(field(key), format!("{v:?} is not a whole number"))
                    })
                })
                .transpose()
        }
        if let Some(v) = num(labels, labels::SCALE_MIN)? {
            self.min = v;
        }
        if let Some(v) = num(labels, labels::SCALE_MAX)? {
            self.max = v;
        }
        if let Some(v) = num(labels, labels::SCALE_FACTOR)? {
            if v > 100 {
                return Err(Error::invalid(field(labels::SCALE_FACTOR), "must be 0..=100"));
            }
            self.factor = v;
        }
        if let Some(v) = num(labels, labels::SCALE_TARGET)? {
            self.target = v;
        }
        if let Some(v) = labels.get(labels::SCALE_ZERO) {
            self.allow_zero = match v.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(Error::invalid(
                        field(labels::SCALE_ZERO),
                        format!("{other:?} is not true or false"),
                    ))
                }
            };
        }
        if let Some(v) = labels.get(labels::SCALE_ZERO_DURATION) {
            let d = util::parse_duration(v)
                .map_err(|r| Error::invalid(field(labels::SCALE_ZERO_DURATION), r))?;
            self.idle_timeout = Some(d);
        }
        if let Some(v) = labels.get(labels::SCALE_TYPE) {
            self.metric = match v.trim() {
                "rps" => ScalingMetric::Rps,
                "capacity" => ScalingMetric::Capacity,
                "cpu" => ScalingMetric::Cpu,
                other => {
                    return Err(Error::invalid(
                        field(labels::SCALE_TYPE),
                        format!("{other:?} is not rps, capacity or cpu"),
                    ))
                }
            };
        }
        Ok(self)
    }

    /// Checks the policy's internal consistency.
    pub fn validate(&self) -> Result<()> {
        if self.max == 0 {
            return Err(Error::invalid("scaling.max", "must be at least 1"));
        }
        if self.min > self.max {
            return Err(Error::invalid(
                "scaling.min",
                format!("min {} is greater than max {}", self.min, self.max),
            ));
        }
        if self.target == 0 {
            return Err(Error::invalid("scaling.target", "must be at least 1"));
        }
        Ok(())
    }
}

/// Caps on how many replicas a backend runs: per function, and on the node (the machine, or
/// the Docker host) over all functions together.
///
/// A deploy or update whose `com.openfaas.scale.min`/`max` (or `scaling.min`/`max`) exceed
/// [`ReplicaLimits::per_function`] is refused with [`Error::InvalidSpec`] naming the field
/// and the cap ([`FunctionSpec::scaling_policy_within`]), and so is a scale request over it
/// ([`ReplicaLimits::check_scale`]). The node cap is held when replicas start: a backend never
/// runs more than [`ReplicaLimits::per_node`] replicas at once, whatever the functions ask
/// for together.
///
/// The defaults come from the machine ([`ReplicaLimits::for_machine`]):
///
/// - per node: total memory / [`ReplicaLimits::MEMORY_PER_REPLICA`] (64 MiB), at least 1;
/// - per function: [`ReplicaLimits::REPLICAS_PER_CPU`] (8) x CPUs, at least the default
///   `com.openfaas.scale.max` (20), and never above the node cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLimits {
    per_function: u32,
    per_node: u32,
}

impl ReplicaLimits {
    /// The memory each replica is allowed in the default node cap: 64 MiB.
    pub const MEMORY_PER_REPLICA: u64 = 64 << 20;
    /// Replicas per CPU in the default per-function cap.
    pub const REPLICAS_PER_CPU: u32 = 8;

    /// Caps of `per_function` and `per_node` replicas (each at least 1; the per-function cap
    /// never above the node's).
    pub fn new(per_function: u32, per_node: u32) -> Self {
        let per_node = per_node.max(1);
        ReplicaLimits { per_function: per_function.clamp(1, per_node), per_node }
    }

    /// The default caps of a machine with `cpus` CPUs and `memory_bytes` of memory (see the
    /// type's docs for the formula).
    pub fn for_machine(cpus: u64, memory_bytes: u64) -> Self {
        let per_node = (memory_bytes / Self::MEMORY_PER_REPLICA).clamp(1, u64::from(u32::MAX));
        let per_function = cpus
            .saturating_mul(u64::from(Self::REPLICAS_PER_CPU))
            .max(u64::from(ScalingPolicy::default().max))
            .min(u64::from(u32::MAX));
        Self::new(per_function as u32, per_node as u32)
    }

    /// The default caps of this machine: its available CPUs and its total memory (Linux
    /// `/proc/meminfo`; elsewhere 4 GiB is assumed).
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
        Self::for_machine(cpus, machine_memory_bytes().unwrap_or(4 << 30))
    }

    /// The same caps with the per-function one replaced (clamped to the node's).
    pub fn with_per_function(self, n: u32) -> Self {
        Self::new(n, self.per_node)
    }

    /// The same caps with the node's replaced (the per-function cap clamped to it).
    pub fn with_per_node(self, n: u32) -> Self {
        Self::new(self.per_function, n)
    }

    /// The most replicas one function may ask for.
    pub fn per_function(&self) -> u32 {
        self.per_function
    }

    /// The most replicas the node runs over all functions.
    pub fn per_node(&self) -> u32 {
        self.per_node
    }

    /// Refuses a scale request over the per-function cap, naming the field `replicas`.
    pub fn check_scale(&self, replicas: u32) -> Result<()> {
        if replicas > self.per_function {
            return Err(Error::invalid("replicas", self.over(replicas)));
        }
        Ok(())
    }

    fn over(&self, n: u32) -> String {
        format!("{n} is over this backend's cap of {} replicas per function", self.per_function)
    }
}

impl Default for ReplicaLimits {
    /// [`ReplicaLimits::detect`].
    fn default() -> Self {
        Self::detect()
    }
}

/// Total memory of this machine from `/proc/meminfo` (`MemTotal`), if readable.
fn machine_memory_bytes() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    m.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
    })
}

/// A function deployment: OpenFaaS's `FunctionDeployment` plus typed knobs.
///
/// Serialises with OpenFaaS's JSON field names (`service`, `envProcess`, `envVars`...), so the
/// gateway can take `faas-cli`'s requests as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    /// The function name (`service`), a DNS-1123 label.
    #[serde(rename = "service", alias = "name")]
    pub name: String,
    /// The image (for the in-memory backend: the registered handler's name).
    #[serde(default)]
    pub image: String,
    /// Namespace; `None` means [`DEFAULT_NAMESPACE`] (or the backend's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The process the watchdog runs (`fprocess`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    /// Environment variables.
    #[serde(default, deserialize_with = "null_as_default")]
    pub env_vars: BTreeMap<String, String>,
    /// Placement constraints: `node.labels.type == rpi`, `!=`, or `type=rpi`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub constraints: Vec<String>,
    /// Names of secrets made visible to the function.
    #[serde(default, deserialize_with = "null_as_default")]
    pub secrets: Vec<String>,
    /// Labels (including the `com.openfaas.scale.*` scaling labels).
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Resources>,
    /// Resource requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Resources>,
    /// Mount the root filesystem read-only.
    #[serde(default)]
    pub read_only_root_filesystem: bool,
    /// Per-invocation timeout (our extension; `"10s"`).
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Maximum concurrent invocations per instance (our extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Explicit scaling policy (our extension); the scaling labels apply over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingPolicy>,
    /// Platforms the image supports, e.g. `linux/amd64`, `linux/arm64` (our extension; empty
    /// means any).
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
}

impl FunctionSpec {
    /// A spec with a name and an image; everything else default.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        FunctionSpec { name: name.into(), image: image.into(), ..Default::default() }
    }

    /// Sets the namespace.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env_vars.insert(key.into(), value.into());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds a secret reference.
    pub fn secret(mut self, name: impl Into<String>) -> Self {
        self.secrets.push(name.into());
        self
    }

    /// Sets the per-invocation timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Sets the per-instance concurrency limit.
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// Sets the explicit scaling policy.
    pub fn scaling(mut self, policy: ScalingPolicy) -> Self {
        self.scaling = Some(policy);
        self
    }

    /// Sets the process (`fprocess`).
    pub fn process(mut self, p: impl Into<String>) -> Self {
        self.env_process = Some(p.into());
        self
    }

    /// The namespace, defaulted to [`DEFAULT_NAMESPACE`].
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The reference (name + namespace) of this function.
    pub fn function_ref(&self) -> FunctionRef {
        FunctionRef::new(self.name.clone(), self.namespace_or_default())
    }

    /// The effective scaling policy: [`Self::scaling`] (or the default) with the scaling
    /// labels applied.
    pub fn scaling_policy(&self) -> Result<ScalingPolicy> {
        self.scaling.clone().unwrap_or_default().apply_labels(&self.labels)
    }

    /// The effective scaling policy held to `limits`: a `com.openfaas.scale.min`/`max` label
    /// (or `scaling.min`/`max`) over [`ReplicaLimits::per_function`] is refused with
    /// [`Error::InvalidSpec`] naming that field and the cap; a default max over it is lowered
    /// to the cap.
    pub fn scaling_policy_within(&self, limits: &ReplicaLimits) -> Result<ScalingPolicy> {
        let mut policy = self.scaling_policy()?;
        let cap = limits.per_function();
        let explicit = self.scaling.as_ref();
        for (label, value, from_scaling, field) in [
            (labels::SCALE_MIN, policy.min, explicit.map(|p| p.min), "scaling.min"),
            (labels::SCALE_MAX, policy.max, explicit.map(|p| p.max), "scaling.max"),
        ] {
            if value <= cap {
                continue;
            }
            if self.labels.contains_key(label) {
                return Err(Error::invalid(format!("labels.{label}"), limits.over(value)));
            }
            if from_scaling == Some(value) {
                return Err(Error::invalid(field, limits.over(value)));
            }
        }
        policy.max = policy.max.min(cap);
        policy.min = policy.min.min(policy.max);
        Ok(policy)
    }

    /// Validates every field; the error names the first bad field in OpenFaaS's JSON spelling.
    pub fn validate(&self) -> Result<()> {
        util::validate_dns1123_label(&self.name).map_err(|r| Error::invalid("service", r))?;
        if let Some(ns) = &self.namespace {
            util::validate_dns1123_label(ns).map_err(|r| Error::invalid("namespace", r))?;
        }
        // An OpenWhisk code action's kind must be in the runtime manifest, and its image may
        // be left out (the kind's is used).
        let kind_image = crate::runtimes::kind_of(self)?.and_then(|k| k.image);
        if self.image.trim().is_empty() && kind_image.is_none() {
            return Err(Error::invalid("image", "must not be empty"));
        }
        for key in self.env_vars.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(Error::invalid(
                    format!("envVars.{key}"),
                    "environment variable names must be non-empty without '=' or NUL",
                ));
            }
        }
        for (i, s) in self.secrets.iter().enumerate() {
            validate_secret_name(s).map_err(|r| Error::invalid(format!("secrets[{i}]"), r))?;
        }
        for (i, c) in self.constraints.iter().enumerate() {
            Constraint::parse(c).map_err(|r| Error::invalid(format!("constraints[{i}]"), r))?;
        }
        if let Some(l) = &self.limits {
            l.validate("limits")?;
        }
        if let Some(r) = &self.requests {
            r.validate("requests")?;
        }
        if let Some(t) = self.timeout {
            if t.is_zero() || t > MAX_TIMEOUT {
                return Err(Error::invalid("timeout", "must be more than 0 and at most 1h"));
            }
        }
        if self.max_concurrency == Some(0) {
            return Err(Error::invalid("maxConcurrency", "must be at least 1"));
        }
        self.scaling_policy()?.validate()?;
        Ok(())
    }

    /// The parsed constraints. Call [`Self::validate`] first for a field-named error.
    pub fn parsed_constraints(&self) -> Result<Vec<Constraint>> {
        self.constraints
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Constraint::parse(c).map_err(|r| Error::invalid(format!("constraints[{i}]"), r))
            })
            .collect()
    }
}

/// Checks a secret name: a DNS-1123 subdomain (lowercase letters, digits, `-` and `.`).
pub fn validate_secret_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("secret names must be 1 to 253 characters".into());
    }
    for part in name.split('.') {
        util::validate_dns1123_label(part)?;
    }
    Ok(())
}

/// Resource usage of a function (OpenFaaS `usage`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU use in cores (e.g. `0.25`).
    #[serde(default)]
    pub cpu: f64,
    /// Memory in bytes over all replicas.
    #[serde(default)]
    pub total_memory_bytes: f64,
}

/// A deployed function's state (OpenFaaS `FunctionStatus`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// Function name.
    pub name: String,
    /// Image.
    #[serde(default)]
    pub image: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// Process (`fprocess`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    /// Environment variables.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env_vars: BTreeMap<String, String>,
    /// Constraints.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Secret names.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Labels.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Resources>,
    /// Requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Resources>,
    /// Read-only root filesystem.
    #[serde(default)]
    pub read_only_root_filesystem: bool,
    /// Invocations served since deployment.
    #[serde(default)]
    pub invocation_count: u64,
    /// Desired replicas.
    #[serde(default)]
    pub replicas: u64,
    /// Replicas ready to serve.
    #[serde(default)]
    pub available_replicas: u64,
    /// When the function was deployed (RFC 3339).
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<SystemTime>,
    /// Resource usage, if the backend measures it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Why the backend cannot start the function's replicas, while it cannot (absent once
    /// a replica starts). Not in OpenFaaS's `FunctionStatus`; its clients ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FunctionFailure>,
    /// The image pull under way for this function's deploy or update, while the backend
    /// pulls (absent otherwise, and from backends that do not pull). Not in OpenFaaS's
    /// `FunctionStatus`; its clients ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullProgress>,
}

/// How far an image pull has got: what [`FunctionStatus::pull`] reports. Bytes are those
/// of the layers the registry has announced so far (a layer's size is known once its
/// download starts), so the total can grow while the pull goes on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PullProgress {
    /// The image being pulled.
    pub image: String,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
    /// Bytes of the layers known so far.
    pub total_bytes: u64,
    /// Layers the pull needs (those already present included).
    pub layers: u32,
    /// Layers downloaded and extracted, or already present.
    pub layers_done: u32,
}

impl PullProgress {
    /// A pull of `image` that has not started.
    pub fn new(image: impl Into<String>) -> Self {
        PullProgress { image: image.into(), ..Default::default() }
    }
}

/// A function the backend keeps failing to start (an engine refusal, a missing image, a
/// process that exits before it is ready): what [`FunctionStatus::failure`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct FunctionFailure {
    /// The last start's error, as the engine or the instance gave it.
    pub reason: String,
    /// Failed starts in a row.
    pub attempts: u32,
    /// When the first of them failed (RFC 3339).
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub since: Option<SystemTime>,
    /// How long the backend waits after the last failed start before it tries again
    /// (milliseconds; it grows with each failure, up to the backend's maximum).
    #[serde(default)]
    pub retry_in_ms: u64,
}

impl FunctionFailure {
    /// A failure with `reason` after `attempts` failed starts since `since`, retried in
    /// `retry_in`.
    pub fn new(
        reason: impl Into<String>,
        attempts: u32,
        since: SystemTime,
        retry_in: Duration,
    ) -> Self {
        FunctionFailure {
            reason: reason.into(),
            attempts,
            since: Some(since),
            retry_in_ms: u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The label OpenFaaS puts on every function, with the function's name as its value.
pub const FUNCTION_LABEL: &str = "faas_function";

impl FunctionStatus {
    /// A status for `spec` with zero counters. Its labels carry `faas_function` = the name,
    /// as OpenFaaS's providers put on every function.
    pub fn from_spec(spec: &FunctionSpec) -> Self {
        let mut labels = spec.labels.clone();
        labels.entry(FUNCTION_LABEL.to_string()).or_insert_with(|| spec.name.clone());
        FunctionStatus {
            name: spec.name.clone(),
            image: spec.image.clone(),
            namespace: spec.namespace_or_default().to_string(),
            env_process: spec.env_process.clone(),
            env_vars: spec.env_vars.clone(),
            constraints: spec.constraints.clone(),
            secrets: spec.secrets.clone(),
            labels,
            annotations: spec.annotations.clone(),
            limits: spec.limits.clone(),
            requests: spec.requests.clone(),
            read_only_root_filesystem: spec.read_only_root_filesystem,
            ..Default::default()
        }
    }
}

/// RFC 3339 timestamps (UTC, `2026-11-23T09:08:25.123Z`) for `SystemTime`, through `jiff`.
pub mod rfc3339 {
    use std::time::SystemTime;

    /// Formats a time as RFC 3339 in UTC with millisecond precision.
    pub fn format(t: SystemTime) -> String {
        match jiff::Timestamp::try_from(t) {
            Ok(ts) => format!("{ts:.3}"),
            Err(_) => "1970-01-01T00:00:00.000Z".to_string(),
        }
    }

    /// Parses an RFC 3339 timestamp with an offset (`Z` or `+hh:mm`).
    pub fn parse(s: &str) -> Result<SystemTime, String> {
        s.parse::<jiff::Timestamp>()
            .map(SystemTime::from)
            .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp: {e}"))
    }
}

/// Serde adapter: `Option<SystemTime>` as an RFC 3339 string.
pub mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    /// Serialises as RFC 3339 or `null`.
    pub fn serialize<S: Serializer>(v: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&super::rfc3339::format(*t)),
            None => s.serialize_none(),
        }
    }

    /// Reads RFC 3339 or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::rfc3339::parse(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openfaas_json_round_trip() {
        let json = r#"{"service":"nodeinfo","image":"functions/nodeinfo:latest",
            "namespace":"openfaas-fn","envProcess":"node index.js","envVars":{"A":"1"},
            "constraints":["node.labels.type == rpi"],"secrets":["api-key"],
            "labels":{"com.openfaas.scale.min":"2","com.openfaas.scale.zero":"true",
            "com.openfaas.scale.zero-duration":"5m"},
            "annotations":null,"limits":{"memory":"128Mi","cpu":"0.5"},
            "readOnlyRootFilesystem":true}"#;
        let spec: FunctionSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.name, "nodeinfo");
        assert_eq!(spec.env_process.as_deref(), Some("node index.js"));
        assert!(spec.read_only_root_filesystem);
        spec.validate().unwrap();
        let p = spec.scaling_policy().unwrap();
        assert_eq!(p.min, 2);
        assert!(p.allow_zero);
        assert_eq!(p.idle_timeout(), Duration::from_secs(300));
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["service"], "nodeinfo");
        assert_eq!(back["envVars"]["A"], "1");
        assert_eq!(back["limits"]["memory"], "128Mi");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |f: &dyn Fn(&mut FunctionSpec), field: &str| {
            let mut s = FunctionSpec::new("ok", "img");
            f(&mut s);
            match s.validate() {
                Err(Error::InvalidSpec { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected InvalidSpec({field}), got {other:?}"),
            }
        };
        bad(&|s| s.name = "Bad_Name".into(), "service");
        bad(&|s| s.image = "".into(), "image");
        bad(&|s| s.namespace = Some("UPPER".into()), "namespace");
        bad(
            &|s| s.limits = Some(Resources { memory: Some("12Q".into()), cpu: None }),
            "limits.memory",
        );
        bad(
            &|s| s.requests = Some(Resources { memory: None, cpu: Some("x".into()) }),
            "requests.cpu",
        );
        bad(&|s| s.secrets = vec!["Nope!".into()], "secrets[0]");
        bad(&|s| s.constraints = vec!["==".into()], "constraints[0]");
        bad(
            &|s| {
                s.labels.insert(labels::SCALE_MIN.into(), "x".into());
            },
            "labels.com.openfaas.scale.min",
        );
        bad(
            &|s| {
                s.labels.insert(labels::SCALE_MIN.into(), "5".into());
                s.labels.insert(labels::SCALE_MAX.into(), "2".into());
            },
            "scaling.min",
        );
        bad(&|s| s.max_concurrency = Some(0), "maxConcurrency");
        bad(&|s| s.timeout = Some(Duration::ZERO), "timeout");
        bad(
            &|s| {
                s.env_vars.insert("A=B".into(), "x".into());
            },
            "envVars.A=B",
        );
    }

    #[test]
    fn replica_caps_refuse_the_labels_and_the_scale_naming_the_cap() {
        let limits = ReplicaLimits::new(16, 100);
        let bomb = FunctionSpec::new("bomb", "img")
            .label(labels::SCALE_MIN, "1000000000")
            .label(labels::SCALE_MAX, "1000000000");
        bomb.validate().unwrap();
        match bomb.scaling_policy_within(&limits) {
            Err(Error::InvalidSpec { field, reason }) => {
                assert_eq!(field, "labels.com.openfaas.scale.min");
                assert!(reason.contains("cap of 16 replicas per function"), "{reason}");
            }
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
        let max_only = FunctionSpec::new("f", "img").label(labels::SCALE_MAX, "17");
        match max_only.scaling_policy_within(&limits) {
            Err(Error::InvalidSpec { field, .. }) => {
                assert_eq!(field, "labels.com.openfaas.scale.max")
            }
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
        let explicit = FunctionSpec::new("f", "img").scaling(ScalingPolicy {
            min: 1,
            max: 40,
            ..Default::default()
        });
        match explicit.scaling_policy_within(&limits) {
            Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, "scaling.max"),
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
        // At the cap is fine; a default max over a small cap is lowered to it.
        let at = FunctionSpec::new("f", "img")
            .label(labels::SCALE_MIN, "16")
            .label(labels::SCALE_MAX, "16");
        assert_eq!(at.scaling_policy_within(&limits).unwrap().max, 16);
        let small = ReplicaLimits::new(5, 5);
        let p = FunctionSpec::new("f", "img").scaling_policy_within(&small).unwrap();
        assert_eq!((p.min, p.max), (1, 5));
        assert!(limits.check_scale(16).is_ok());
        match limits.check_scale(17) {
            Err(Error::InvalidSpec { field, reason }) => {
                assert_eq!(field, "replicas");
                assert!(reason.contains("16"), "{reason}");
            }
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn replica_caps_follow_the_machine() {
        // 2 CPUs, 8 GiB: 128 per node, max(16, 20) = 20 per function.
        let l = ReplicaLimits::for_machine(2, 8 << 30);
        assert_eq!((l.per_function(), l.per_node()), (20, 128));
        // 64 CPUs, 2 GiB: the function cap never exceeds the node's 32.
        let l = ReplicaLimits::for_machine(64, 2 << 30);
        assert_eq!((l.per_function(), l.per_node()), (32, 32));
        let l = ReplicaLimits::for_machine(1, 0);
        assert_eq!((l.per_function(), l.per_node()), (1, 1));
        assert_eq!(ReplicaLimits::new(50, 10).per_function(), 10);
        let d = ReplicaLimits::detect();
        assert!(d.per_function() >= 1 && d.per_function() <= d.per_node());
    }

    #[test]
    fn timestamps() {
        let t = rfc3339::parse("2026-11-23T09:08:25.123Z").unwrap();
        assert_eq!(rfc3339::format(t), "2026-11-23T09:08:25.123Z");
        let t2 = rfc3339::parse("2026-11-23T10:08:25.123+01:00").unwrap();
        assert_eq!(t, t2);
        assert!(rfc3339::parse("yesterday").is_err());
        assert_eq!(rfc3339::format(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // Docker's nanosecond timestamps; milliseconds are always written.
        let t3 = rfc3339::parse("2026-11-23T09:08:25.123456789Z").unwrap();
        assert_eq!(rfc3339::format(t3), "2026-11-23T09:08:25.123Z");
        let t4 = rfc3339::parse("2026-11-23T09:08:25Z").unwrap();
        assert_eq!(rfc3339::format(t4), "2026-11-23T09:08:25.000Z");
    }
}

/// Serde adapter: `SystemTime` as an RFC 3339 string.
pub mod rfc3339_ser {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    /// Serialises as RFC 3339.
    pub fn serialize<S: Serializer>(v: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339::format(*v))
    }

    /// Reads RFC 3339.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        super::rfc3339::parse(&s).map_err(serde::de::Error::custom)
    }
}

//! The pure mapping between faas-rs specs and Kubernetes objects, with no I/O.
//!
//! A function is a `Deployment` plus a `Service` of the same name in the function namespace,
//! both labelled `faas_function=<name>` as OpenFaaS's faas-netes labels them:
//!
//! - the container listens on port 8080 (the watchdog), with readiness and liveness probes on
//!   `GET /_/health`;
//! - `envProcess` becomes the `fprocess` environment variable, `envVars` the others; a spec
//!   `timeout` becomes the watchdog's `exec_timeout`, `read_timeout` and `write_timeout`,
//!   `maxConcurrency` its `max_inflight` (these added variables are listed in the
//!   [`MANAGED_ENV_ANNOTATION`] annotation and left out of the status);
//! - secrets are mounted from Kubernetes Secrets as files `/var/openfaas/secrets/<name>`
//!   (a projected volume; each Secret holds its value under the key `<name>`);
//! - `limits` and `requests` become the container's resources;
//! - `readOnlyRootFilesystem` sets the container's security context and mounts a writable
//!   `emptyDir` on `/tmp`;
//! - `==` / `KEY=VALUE` constraints become a `nodeSelector`, `!=` constraints a required node
//!   affinity with `NotIn`, `platforms` a required node affinity on `kubernetes.io/arch`
//!   (the constraint keys `arch` and `os`, which is what `node.platform.arch` and
//!   `node.platform.os` parse to, select `kubernetes.io/arch` and `kubernetes.io/os`);
//! - the initial replica count is the scaling policy's minimum (`com.openfaas.scale.min`,
//!   default 1).
//!
//! [`render_manifests`] prints the objects for a list of specs (what `faas generate -f
//! stack.yml` prints) as multi-document YAML or as a JSON `List`, both of which
//! `kubectl apply -f -` accepts.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, Secret as K8sSecret, SecretProjection,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use faas_core::scheduler::Constraint;
use faas_core::spec::{rfc3339, DEFAULT_NAMESPACE};
use faas_core::util::format_duration;
use faas_core::{Error, FunctionSpec, FunctionStatus, Resources, Result, Secret};

/// The label every function object carries: `faas_function=<name>` (as faas-netes).
pub use faas_core::spec::FUNCTION_LABEL;
/// The label on Secrets this backend manages (as faas-netes:
/// `app.kubernetes.io/managed-by=openfaas`).
pub const SECRET_MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`SECRET_MANAGED_BY_LABEL`].
pub const SECRET_MANAGED_BY_VALUE: &str = "openfaas";
/// Annotation holding the constraints as the user wrote them (a JSON array), so that status
/// reports them verbatim.
pub const CONSTRAINTS_ANNOTATION: &str = "faas-rs/constraints";
/// Annotation listing (comma separated) the environment variables this backend added to the
/// container (`exec_timeout`, `max_inflight`...), left out of the status's `envVars`.
pub const MANAGED_ENV_ANNOTATION: &str = "faas-rs/managed-env";
/// The port the watchdog listens on in every function container.
pub const WATCHDOG_PORT: i32 = 8080;
/// The watchdog health endpoint the probes use.
pub const HEALTH_PATH: &str = "/_/health";
/// Where secrets are mounted in the container.
pub const SECRETS_MOUNT_PATH: &str = "/var/openfaas/secrets";
/// The name of the projected secrets volume.
const SECRETS_VOLUME: &str = "projected-secrets";
/// The name of the `/tmp` volume for read-only root filesystems.
const TMP_VOLUME: &str = "temp";

/// How [`render_manifests`] prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestFormat {
    /// Multi-document YAML (`---` between objects).
    #[default]
    Yaml,
    /// One JSON `v1` `List` holding every object.
    JsonList,
}

/// Options of [`render_manifests`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManifestOptions {
    /// Namespace for specs that name none (default `openfaas-fn`).
    pub default_namespace: Option<String>,
    /// Output format.
    pub format: ManifestFormat,
}

impl ManifestOptions {
    /// Default options: YAML, namespace `openfaas-fn` for specs without one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the namespace for specs that name none.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.default_namespace = Some(ns.into());
        self
    }

    /// Sets the output format.
    pub fn format(mut self, format: ManifestFormat) -> Self {
        self.format = format;
        self
    }
}

/// Prints the Kubernetes objects (a Deployment and a Service per function) for `specs`, ready
/// for `kubectl apply -f -`.
///
/// Each spec is validated first; an invalid one gives [`Error::InvalidSpec`] naming the field,
/// with the function's name in the reason. Secrets are referenced, not created (their values
/// are not in a stack file): create them with `faas secret create` or `kubectl create secret
/// generic NAME --from-literal=NAME=VALUE -n NAMESPACE`.
pub fn render_manifests(specs: &[FunctionSpec], opts: &ManifestOptions) -> Result<String> {
    let mut objects: Vec<serde_json::Value> = Vec::with_capacity(specs.len() * 2);
    for spec in specs {
        let mut spec = spec.clone();
        if spec.namespace.is_none() {
            spec.namespace = opts.default_namespace.clone();
        }
        let name = spec.name.clone();
        let in_function = |e: Error| match e {
            Error::InvalidSpec { field, reason } => {
                Error::invalid(field, format!("function {name:?}: {reason}"))
            }
            other => other,
        };
        let d = deployment(&spec).map_err(in_function)?;
        let s = service(&spec);
        objects.push(to_value(&d)?);
        objects.push(to_value(&s)?);
    }
    match opts.format {
        ManifestFormat::JsonList => {
            let list = serde_json::json!({
                "apiVersion": "v1",
                "kind": "List",
                "metadata": {},
                "items": objects,
            });
            let mut out = serde_json::to_string_pretty(&list)
                .map_err(|e| Error::internal(format!("serialising manifests: {e}")))?;
            out.push('\n');
            Ok(out)
        }
        ManifestFormat::Yaml => {
            let mut out = String::new();
            for obj in &objects {
                out.push_str("---\n");
                let doc = serde_saphyr::to_string(obj)
                    .map_err(|e| Error::internal(format!("serialising manifests as YAML: {e}")))?;
                out.push_str(&doc);
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
            Ok(out)
        }
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::internal(format!("serialising manifest: {e}")))
}

/// The labels of a function's objects: the user's labels plus `faas_function=<name>`.
pub fn function_labels(spec: &FunctionSpec) -> BTreeMap<String, String> {
    let mut labels = spec.labels.clone();
    labels.insert(FUNCTION_LABEL.to_string(), spec.name.clone());
    labels
}

fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(FUNCTION_LABEL.to_string(), name.to_string())])
}

/// The Kubernetes node label a constraint key selects (`arch` and `os` are the well-known
/// `kubernetes.io/` labels).
fn node_label_key(key: &str) -> String {
    match key {
        "arch" => "kubernetes.io/arch".to_string(),
        "os" => "kubernetes.io/os".to_string(),
        other => other.to_string(),
    }
}

/// The environment variables this backend adds for the watchdog from typed spec fields.
fn managed_env(spec: &FunctionSpec) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(t) = spec.timeout {
        let t = format_duration(t);
        for key in ["exec_timeout", "read_timeout", "write_timeout"] {
            if !spec.env_vars.contains_key(key) {
                env.push((key.to_string(), t.clone()));
            }
        }
    }
    if let Some(n) = spec.max_concurrency {
        if !spec.env_vars.contains_key("max_inflight") {
            env.push(("max_inflight".to_string(), n.to_string()));
        }
    }
    env
}

fn quantities(r: &Resources) -> Option<BTreeMap<String, Quantity>> {
    let mut m = BTreeMap::new();
    if let Some(mem) = &r.memory {
        m.insert("memory".to_string(), Quantity(mem.trim().to_string()));
    }
    if let Some(cpu) = &r.cpu {
        m.insert("cpu".to_string(), Quantity(cpu.trim().to_string()));
    }
    (!m.is_empty()).then_some(m)
}

fn health_probe(period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(HEALTH_PATH.to_string()),
            port: IntOrString::Int(WATCHDOG_PORT),
            scheme: Some("HTTP".to_string()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(2),
        period_seconds: Some(period),
        timeout_seconds: Some(1),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// The Deployment of a function, in `spec.namespace` (default `openfaas-fn`).
///
/// Validates the spec first ([`Error::InvalidSpec`] naming the field).
pub fn deployment(spec: &FunctionSpec) -> Result<Deployment> {
    spec.validate()?;
    // An OpenWhisk action without an image runs its kind's (`faas_core::runtimes`).
    let spec = &faas_core::runtimes::apply_image(spec.clone())?;
    let namespace = spec.namespace_or_default().to_string();
    let policy = spec.scaling_policy()?;
    let labels = function_labels(spec);

    let mut annotations = spec.annotations.clone();
    if !spec.constraints.is_empty() {
        let json = serde_json::to_string(&spec.constraints)
            .map_err(|e| Error::internal(format!("serialising constraints: {e}")))?;
        annotations.insert(CONSTRAINTS_ANNOTATION.to_string(), json);
    }
    let managed = managed_env(spec);
    if !managed.is_empty() {
        let keys: Vec<&str> = managed.iter().map(|(k, _)| k.as_str()).collect();
        annotations.insert(MANAGED_ENV_ANNOTATION.to_string(), keys.join(","));
    }

    // Environment: fprocess first, then the user's variables, then the managed ones.
    let mut env = Vec::new();
    if let Some(p) = &spec.env_process {
        env.push(EnvVar { name: "fprocess".into(), value: Some(p.clone()), ..Default::default() });
    }
    for (k, v) in &spec.env_vars {
        if k == "fprocess" && spec.env_process.is_some() {
            continue;
        }
        env.push(EnvVar { name: k.clone(), value: Some(v.clone()), ..Default::default() });
    }
    for (k, v) in managed {
        env.push(EnvVar { name: k, value: Some(v), ..Default::default() });
    }

    let resources = {
        let limits = spec.limits.as_ref().and_then(quantities);
        let requests = spec.requests.as_ref().and_then(quantities);
        (limits.is_some() || requests.is_some()).then(|| ResourceRequirements {
            limits,
            requests,
            ..Default::default()
        })
    };

    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if !spec.secrets.is_empty() {
        let mut names: Vec<&String> = spec.secrets.iter().collect();
        names.dedup();
        volumes.push(Volume {
            name: SECRETS_VOLUME.to_string(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(
                    names
                        .into_iter()
                        .map(|s| VolumeProjection {
                            secret: Some(SecretProjection {
                                name: s.clone(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: SECRETS_VOLUME.to_string(),
            mount_path: SECRETS_MOUNT_PATH.to_string(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if spec.read_only_root_filesystem {
        volumes.push(Volume {
            name: TMP_VOLUME.to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: TMP_VOLUME.to_string(),
            mount_path: "/tmp".to_string(),
            ..Default::default()
        });
    }

    // Placement.
    let mut node_selector = BTreeMap::new();
    let mut match_expressions = Vec::new();
    for c in spec.parsed_constraints()? {
        match c {
            Constraint::Eq { key, value } => {
                node_selector.insert(node_label_key(&key), value);
            }
            Constraint::Ne { key, value } => match_expressions.push(NodeSelectorRequirement {
                key: node_label_key(&key),
                operator: "NotIn".to_string(),
                values: Some(vec![value]),
            }),
        }
    }
    if !spec.platforms.is_empty() {
        let mut archs: Vec<String> = spec
            .platforms
            .iter()
            .map(|p| {
                let p = p.strip_prefix("linux/").unwrap_or(p);
                p.split('/').next().unwrap_or(p).to_string()
            })
            .collect();
        archs.sort();
        archs.dedup();
        match_expressions.push(NodeSelectorRequirement {
            key: "kubernetes.io/arch".to_string(),
            operator: "In".to_string(),
            values: Some(archs),
        });
    }
    let affinity = (!match_expressions.is_empty()).then(|| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(match_expressions),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });

    let container = Container {
        name: spec.name.clone(),
        image: Some(spec.image.trim().to_string()),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_string()),
            container_port: WATCHDOG_PORT,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        resources,
        readiness_probe: Some(health_probe(2)),
        liveness_probe: Some(health_probe(10)),
        security_context: spec.read_only_root_filesystem.then(|| SecurityContext {
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    };

    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(namespace),
            labels: Some(labels.clone()),
            annotations: (!annotations.is_empty()).then(|| annotations.clone()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(policy.min.min(i32::MAX as u32) as i32),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&spec.name)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    node_selector: (!node_selector.is_empty()).then_some(node_selector),
                    affinity,
                    enable_service_links: Some(false),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The ClusterIP Service of a function: port 8080 to the pods labelled `faas_function=<name>`.
pub fn service(spec: &FunctionSpec) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(spec.namespace_or_default().to_string()),
            labels: Some(selector_labels(&spec.name)),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(&spec.name)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port: WATCHDOG_PORT,
                target_port: Some(IntOrString::Int(WATCHDOG_PORT)),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The Kubernetes Secret for a faas secret: type `Opaque`, labelled
/// `app.kubernetes.io/managed-by=openfaas`, the value under the key `<name>` (so it is mounted
/// as `/var/openfaas/secrets/<name>`).
pub fn secret(secret: &Secret) -> K8sSecret {
    K8sSecret {
        metadata: ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(secret.namespace.clone()),
            labels: Some(BTreeMap::from([(
                SECRET_MANAGED_BY_LABEL.to_string(),
                SECRET_MANAGED_BY_VALUE.to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(secret.name.clone(), ByteString(secret.value.to_vec()))])),
        ..Default::default()
    }
}

fn parse_quantities(m: Option<&BTreeMap<String, Quantity>>) -> Option<Resources> {
    let m = m?;
    let r = Resources {
        memory: m.get("memory").map(|q| q.0.clone()),
        cpu: m.get("cpu").map(|q| q.0.clone()),
    };
    (r.memory.is_some() || r.cpu.is_some()).then_some(r)
}

/// Reads a function's status back from its Deployment: the spec fields from the pod template,
/// `replicas` (desired) and `availableReplicas` from the Deployment's spec and status,
/// `createdAt` from its creation timestamp.
pub fn status_from_deployment(d: &Deployment) -> Result<FunctionStatus> {
    let meta = &d.metadata;
    let name = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(FUNCTION_LABEL))
        .or(meta.name.as_ref())
        .cloned()
        .ok_or_else(|| Error::internal("a Deployment without a name"))?;
    let namespace = meta.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let mut status = FunctionStatus { name, namespace, ..Default::default() };

    let mut annotations = meta.annotations.clone().unwrap_or_default();
    let constraints_json = annotations.remove(CONSTRAINTS_ANNOTATION);
    let managed: Vec<String> = annotations
        .remove(MANAGED_ENV_ANNOTATION)
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    annotations.retain(|k, _| !k.starts_with("deployment.kubernetes.io/"));
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    status.annotations = annotations;
    // The user's labels plus `faas_function`, as OpenFaaS reports them.
    status.labels = meta.labels.clone().unwrap_or_default();
    status.created_at = meta.creation_timestamp.as_ref().and_then(|t| {
        let v = serde_json::to_value(t).ok()?;
        rfc3339::parse(v.as_str()?).ok()
    });

    let spec = d.spec.as_ref();
    status.replicas = spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as u64;
    status.available_replicas =
        d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0).max(0) as u64;

    let pod = spec.and_then(|s| s.template.spec.as_ref());
    if let Some(c) = pod.and_then(|p| p.containers.first()) {
        status.image = c.image.clone().unwrap_or_default();
        for e in c.env.iter().flatten() {
            let value = e.value.clone().unwrap_or_default();
            if e.name == "fprocess" {
                status.env_process = Some(value);
            } else if !managed.contains(&e.name) {
                status.env_vars.insert(e.name.clone(), value);
            }
        }
        if let Some(r) = &c.resources {
            status.limits = parse_quantities(r.limits.as_ref());
            status.requests = parse_quantities(r.requests.as_ref());
        }
        status.read_only_root_filesystem =
            c.security_context.as_ref().and_then(|s| s.read_only_root_filesystem).unwrap_or(false);
    }
    if let Some(p) = pod {
        for v in p.volumes.iter().flatten() {
            if v.name != SECRETS_VOLUME {
                continue;
            }
            for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(s) = &src.secret {
                    status.secrets.push(s.name.clone());
                }
            }
        }
    }
    status.constraints = match constraints_json.and_then(|j| serde_json::from_str(&j).ok()) {
        Some(c) => c,
        None => constraints_from_pod(pod),
    };
    Ok(status)
}

/// Constraints reconstructed from a pod's nodeSelector and `NotIn` node affinity (for
/// Deployments created by other tools).
fn constraints_from_pod(pod: Option<&PodSpec>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(pod) = pod else { return out };
    let short = |k: &str| match k {
        "kubernetes.io/arch" => "node.platform.arch".to_string(),
        "kubernetes.io/os" => "node.platform.os".to_string(),
        other => format!("node.labels.{other}"),
    };
    for (k, v) in pod.node_selector.iter().flatten() {
        out.push(format!("{} == {v}", short(k)));
    }
    let terms = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|s| s.node_selector_terms.as_slice())
        .unwrap_or_default();
    for t in terms {
        for r in t.match_expressions.iter().flatten() {
            if r.operator == "NotIn" {
                for v in r.values.iter().flatten() {
                    out.push(format!("{} != {v}", short(&r.key)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn full_spec() -> FunctionSpec {
        let mut s = FunctionSpec::new("nodeinfo", "ghcr.io/openfaas/nodeinfo:latest")
            .namespace("dev")
            .process("node index.js")
            .env("A", "1")
            .label("team", "x")
            .label("com.openfaas.scale.min", "2")
            .secret("api-key")
            .timeout(Duration::from_secs(10))
            .max_concurrency(4);
        s.annotations.insert("topic".into(), "orders".into());
        s.constraints = vec!["node.labels.type == rpi".into(), "zone != a".into()];
        s.limits = Some(Resources { memory: Some("128Mi".into()), cpu: Some("0.5".into()) });
        s.requests = Some(Resources { memory: Some("64Mi".into()), cpu: None });
        s.read_only_root_filesystem = true;
        s.platforms = vec!["linux/arm64".into(), "linux/amd64".into()];
        s
    }

    #[test]
    fn deployment_maps_every_field() {
        let d = deployment(&full_spec()).unwrap();
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["metadata"]["name"], "nodeinfo");
        assert_eq!(v["metadata"]["namespace"], "dev");
        assert_eq!(v["metadata"]["labels"]["faas_function"], "nodeinfo");
        assert_eq!(v["metadata"]["labels"]["team"], "x");
        assert_eq!(v["metadata"]["annotations"]["topic"], "orders");
        assert_eq!(v["spec"]["replicas"], 2);
        assert_eq!(
            v["spec"]["selector"]["matchLabels"],
            serde_json::json!({"faas_function": "nodeinfo"})
        );
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(v["spec"]["template"]["metadata"]["labels"]["faas_function"], "nodeinfo");
        let c = &pod["containers"][0];
        assert_eq!(c["name"], "nodeinfo");
        assert_eq!(c["image"], "ghcr.io/openfaas/nodeinfo:latest");
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        assert_eq!(
            c["env"],
            serde_json::json!([
                {"name": "fprocess", "value": "node index.js"},
                {"name": "A", "value": "1"},
                {"name": "exec_timeout", "value": "10s"},
                {"name": "read_timeout", "value": "10s"},
                {"name": "write_timeout", "value": "10s"},
                {"name": "max_inflight", "value": "4"},
            ])
        );
        assert_eq!(c["resources"]["limits"], serde_json::json!({"cpu": "0.5", "memory": "128Mi"}));
        assert_eq!(c["resources"]["requests"], serde_json::json!({"memory": "64Mi"}));
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/_/health");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8080);
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/_/health");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            c["volumeMounts"],
            serde_json::json!([
                {"name": "projected-secrets", "mountPath": "/var/openfaas/secrets", "readOnly": true},
                {"name": "temp", "mountPath": "/tmp"},
            ])
        );
        assert_eq!(pod["volumes"][0]["projected"]["sources"][0]["secret"]["name"], "api-key");
        assert_eq!(pod["nodeSelector"], serde_json::json!({"type": "rpi"}));
        assert_eq!(
            pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchExpressions"],
            serde_json::json!([
                {"key": "zone", "operator": "NotIn", "values": ["a"]},
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]},
            ])
        );
        assert_eq!(pod["enableServiceLinks"], false);
    }

    #[test]
    fn an_openwhisk_code_action_runs_its_kinds_image() {
        let spec = FunctionSpec::new("hello", "")
            .env("mode", "openwhisk")
            .env("ow_kind", "python:3")
            .env("ow_code", "def main(p):\n    return p\n");
        let v = serde_json::to_value(deployment(&spec).unwrap()).unwrap();
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], faas_core::runtimes::PYTHON_IMAGE);
        let blackbox = FunctionSpec::new("bb", "").env("mode", "openwhisk");
        assert!(deployment(&blackbox).is_err(), "a blackbox names its image");
    }

    #[test]
    fn status_round_trips_the_spec() {
        let spec = full_spec();
        let mut d = deployment(&spec).unwrap();
        d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            available_replicas: Some(1),
            ..Default::default()
        });
        let st = status_from_deployment(&d).unwrap();
        let mut want = FunctionStatus::from_spec(&spec);
        want.replicas = 2;
        want.available_replicas = 1;
        assert_eq!(st, want);
    }

    #[test]
    fn constraints_from_foreign_deployment() {
        let mut spec = FunctionSpec::new("f", "img");
        spec.constraints = vec!["node.platform.arch == arm64".into(), "zone != a".into()];
        let mut d = deployment(&spec).unwrap();
        d.metadata.annotations = None;
        let st = status_from_deployment(&d).unwrap();
        assert_eq!(st.constraints, vec!["node.platform.arch == arm64", "node.labels.zone != a"]);
    }

    #[test]
    fn invalid_spec_names_the_field() {
        let mut s = FunctionSpec::new("f", "img");
        s.limits = Some(Resources { memory: Some("lots".into()), cpu: None });
        match deployment(&s) {
            Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, "limits.memory"),
            other => panic!("{other:?}"),
        }
        match render_manifests(&[s], &ManifestOptions::new()) {
            Err(Error::InvalidSpec { field, reason }) => {
                assert_eq!(field, "limits.memory");
                assert!(reason.contains("\"f\""), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn service_and_secret() {
        let s = serde_json::to_value(service(&FunctionSpec::new("echo", "img"))).unwrap();
        assert_eq!(
            s,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "echo", "namespace": "openfaas-fn",
                             "labels": {"faas_function": "echo"}},
                "spec": {"type": "ClusterIP", "selector": {"faas_function": "echo"},
                         "ports": [{"name": "http", "port": 8080, "targetPort": 8080,
                                    "protocol": "TCP"}]}
            })
        );
        let sec = Secret {
            name: "api-key".into(),
            namespace: "openfaas-fn".into(),
            value: bytes::Bytes::from_static(b"s3cr3t"),
        };
        let v = serde_json::to_value(secret(&sec)).unwrap();
        assert_eq!(v["data"]["api-key"], "czNjcjN0");
        assert_eq!(v["type"], "Opaque");
        assert_eq!(v["metadata"]["labels"]["app.kubernetes.io/managed-by"], "openfaas");
    }
}

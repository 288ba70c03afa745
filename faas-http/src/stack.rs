//! The OpenFaaS stack file (`stack.yml`): provider and functions, turned into
//! [`FunctionSpec`]s.
//!
//! ```yaml
//! version: 1.0
//! provider:
//!   name: openfaas
//!   gateway: http://127.0.0.1:8080
//! functions:
//!   uppercase:
//!     lang: dockerfile
//!     handler: ./uppercase
//!     image: uppercase:latest
//!     fprocess: tr a-z A-Z
//!     environment: { write_timeout: 10s }
//!     labels: { com.openfaas.scale.min: "1" }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use faas_core::{Error, FunctionSpec, Resources, Result};
use serde::Deserialize;

/// A parsed stack file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Stack {
    /// `version`.
    #[serde(default)]
    pub version: Option<serde_norway::Value>,
    /// `provider`.
    #[serde(default)]
    pub provider: Provider,
    /// `functions`, by name (in file order is not kept; sorted by name).
    #[serde(default)]
    pub functions: BTreeMap<String, StackFunction>,
}

/// The `provider` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Provider {
    /// `name` (`openfaas`).
    #[serde(default)]
    pub name: Option<String>,
    /// `gateway` URL.
    #[serde(default)]
    pub gateway: Option<String>,
}

/// Memory and CPU as the stack file writes them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StackResources {
    /// `memory`.
    #[serde(default)]
    pub memory: Option<Scalar>,
    /// `cpu`.
    #[serde(default)]
    pub cpu: Option<Scalar>,
}

/// A YAML scalar read as text (`10`, `true`, `"10s"` all become strings).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl Scalar {
    /// The value as text.
    pub fn text(&self) -> String {
        match self {
            Scalar::Str(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

fn texts(m: &BTreeMap<String, Scalar>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.text())).collect()
}

/// One function of the stack file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackFunction {
    /// `lang` (template name; informational here).
    #[serde(default)]
    pub lang: Option<String>,
    /// `handler` folder (informational here).
    #[serde(default)]
    pub handler: Option<String>,
    /// `image`.
    #[serde(default)]
    pub image: Option<String>,
    /// `fprocess`: the process the watchdog runs.
    #[serde(default)]
    pub fprocess: Option<String>,
    /// `namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `environment`.
    #[serde(default)]
    pub environment: BTreeMap<String, Scalar>,
    /// `environment_file`: YAML files with an `environment:` map, relative to the stack file.
    #[serde(default)]
    pub environment_file: Vec<String>,
    /// `labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, Scalar>,
    /// `annotations`.
    #[serde(default)]
    pub annotations: BTreeMap<String, Scalar>,
    /// `constraints`.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// `secrets`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// `limits`.
    #[serde(default)]
    pub limits: Option<StackResources>,
    /// `requests`.
    #[serde(default)]
    pub requests: Option<StackResources>,
    /// `readonly_root_filesystem`.
    #[serde(default)]
    pub readonly_root_filesystem: bool,
    /// `build_args`, `build_options`, `skip_build`, `platforms`: accepted, unused here.
    #[serde(default)]
    pub build_args: Option<serde_norway::Value>,
    /// See `build_args`.
    #[serde(default)]
    pub build_options: Option<serde_norway::Value>,
    /// See `build_args`.
    #[serde(default)]
    pub skip_build: Option<bool>,
    /// Platforms the image supports (`linux/amd64,linux/arm64`).
    #[serde(default)]
    pub platforms: Option<String>,
}

fn resources(r: &Option<StackResources>) -> Option<Resources> {
    r.as_ref().map(|r| Resources {
        memory: r.memory.as_ref().map(Scalar::text),
        cpu: r.cpu.as_ref().map(Scalar::text),
    })
}

impl Stack {
    /// Parses stack YAML. Errors name the offending field (`functions.NAME.FIELD`).
    pub fn parse(yaml: &str) -> Result<Stack> {
        let de = serde_norway::Deserializer::from_str(yaml);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let msg = e.into_inner().to_string();
            let field = if path == "." || path.is_empty() { "stack".to_string() } else { path };
            Error::invalid(field, msg)
        })
    }

    /// Reads and parses a stack file; `environment_file` entries are resolved beside it.
    pub fn load(path: &Path) -> Result<Stack> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("file", format!("reading {}: {e}", path.display())))?;
        let mut stack = Stack::parse(&text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for (name, f) in stack.functions.iter_mut() {
            for file in f.environment_file.clone() {
                #[derive(Deserialize)]
                struct EnvFile {
                    #[serde(default)]
                    environment: BTreeMap<String, Scalar>,
                }
                let p = dir.join(&file);
                let field = format!("functions.{name}.environment_file");
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| Error::invalid(&field, format!("reading {}: {e}", p.display())))?;
                let env: EnvFile = serde_norway::from_str(&text)
                    .map_err(|e| Error::invalid(&field, format!("{}: {e}", p.display())))?;
                for (k, v) in env.environment {
                    f.environment.entry(k).or_insert(v);
                }
            }
        }
        Ok(stack)
    }

    /// The functions as deployable specs, validated (errors name `functions.NAME.FIELD`).
    pub fn specs(&self) -> Result<Vec<FunctionSpec>> {
        self.functions.iter().map(|(name, f)| f.to_spec(name)).collect()
    }
}

impl StackFunction {
    /// The spec of this function under `name`. The image defaults to the name (for an
    /// OpenWhisk code action, `mode: openwhisk` with an `ow_kind` that has an image, to the
    /// kind's image); the `timeout` environment variable (or `exec_timeout`) sets the
    /// per-invocation timeout.
    pub fn to_spec(&self, name: &str) -> Result<FunctionSpec> {
        let field = |f: &str| format!("functions.{name}.{f}");
        let env = texts(&self.environment);
        let code_action = env.get("mode").is_some_and(|m| m.trim() == "openwhisk")
            && env.get("ow_kind").and_then(|k| faas_core::runtimes::lookup(k)?.image).is_some();
        let mut spec = FunctionSpec {
            name: name.to_string(),
            image: self.image.clone().unwrap_or_else(|| {
                if code_action {
                    String::new()
                } else {
                    name.to_string()
                }
            }),
            namespace: self.namespace.clone().filter(|s| !s.is_empty()),
            env_process: self.fprocess.clone(),
            env_vars: env.clone(),
            constraints: self.constraints.clone(),
            secrets: self.secrets.clone(),
            labels: texts(&self.labels),
            annotations: texts(&self.annotations),
            limits: resources(&self.limits),
            requests: resources(&self.requests),
            read_only_root_filesystem: self.readonly_root_filesystem,
            platforms: self
                .platforms
                .as_deref()
                .map(|p| {
                    p.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
                })
                .unwrap_or_default(),
            ..Default::default()
        };
        if let Some(t) = env.get("exec_timeout") {
            let d = faas_core::util::parse_duration(t)
                .map_err(|r| Error::invalid(field("environment.exec_timeout"), r))?;
            if !d.is_zero() {
                spec.timeout = Some(d);
            }
        }
        spec.validate().map_err(|e| match e {
            Error::InvalidSpec { field: f, reason } => {
                let f = if f == "service" { "name".to_string() } else { f };
                Error::invalid(field(&f), reason)
            }
            other => other,
        })?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openfaas_stack() {
        let s = Stack::parse(
            r#"
version: 1.0
provider:
  name: openfaas
  gateway: http://127.0.0.1:8080
functions:
  wc:
    lang: dockerfile
    handler: ./wc
    image: ghcr.io/x/wc:latest
    fprocess: wc -w
    environment:
      exec_timeout: 5s
      answer: 42
      debug: true
    labels:
      com.openfaas.scale.min: 2
    annotations:
      topic: words
    constraints: ["node.labels.type == rpi"]
    secrets: [api-key]
    limits: { memory: 128Mi, cpu: 0.5 }
    requests: { memory: 64Mi }
    readonly_root_filesystem: true
"#,
        )
        .unwrap();
        assert_eq!(s.provider.name.as_deref(), Some("openfaas"));
        let specs = s.specs().unwrap();
        let w = &specs[0];
        assert_eq!(w.name, "wc");
        assert_eq!(w.env_process.as_deref(), Some("wc -w"));
        assert_eq!(w.env_vars["answer"], "42");
        assert_eq!(w.env_vars["debug"], "true");
        assert_eq!(w.labels["com.openfaas.scale.min"], "2");
        assert_eq!(w.timeout, Some(std::time::Duration::from_secs(5)));
        assert_eq!(w.limits.as_ref().unwrap().cpu.as_deref(), Some("0.5"));
        assert_eq!(w.secrets, vec!["api-key"]);
        assert!(w.read_only_root_filesystem);
        assert_eq!(w.scaling_policy().unwrap().min, 2);
    }

    #[test]
    fn openwhisk_code_actions_default_to_their_kinds_image() {
        // The README's example.
        let s = Stack::parse(
            r#"
functions:
  hello:
    environment:
      mode: openwhisk
      ow_kind: "python:3"
      ow_main: main
      ow_code: |
        def main(params):
            return {"greeting": "Hello " + params.get("name", "stranger")}
  legacy:
    image: ghcr.io/me/legacy-action:1
    environment: { mode: openwhisk, ow_kind: blackbox }
"#,
        )
        .unwrap();
        let specs = s.specs().unwrap();
        let hello = specs.iter().find(|s| s.name == "hello").unwrap();
        assert_eq!(hello.image, "");
        assert!(hello.env_vars["ow_code"].starts_with("def main(params):\n"));
        let hello = faas_core::runtimes::apply_image(hello.clone()).unwrap();
        assert_eq!(hello.image, faas_core::runtimes::PYTHON_IMAGE);
        let legacy = specs.iter().find(|s| s.name == "legacy").unwrap();
        assert_eq!(legacy.image, "ghcr.io/me/legacy-action:1");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Stack::parse("functions:\n  a:\n    fprocess: [1, 2]\n").unwrap_err();
        assert!(e.to_string().contains("functions.a.fprocess"), "{e}");
        let e = Stack::parse("functions:\n  a:\n    imagee: x\n").unwrap_err();
        assert!(e.to_string().contains("imagee"), "{e}");
        let s = Stack::parse("functions:\n  Bad_Name:\n    fprocess: cat\n").unwrap();
        let e = s.specs().unwrap_err();
        assert!(e.to_string().contains("functions.Bad_Name.name"), "{e}");
        let s = Stack::parse("functions:\n  a:\n    limits: {memory: lots}\n").unwrap();
        let e = s.specs().unwrap_err();
        assert!(e.to_string().contains("functions.a.limits.memory"), "{e}");
    }
}

//! `render_manifests`: the printed objects are the ones written by hand from the Kubernetes
//! API reference in `tests/expected/` (not the implementation's own output), and they parse
//! back as k8s-openapi types, unchanged.

use std::time::Duration;

use faas_backend_k8s::manifests::{ManifestFormat, ManifestOptions};
use faas_core::{FunctionSpec, Resources};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;

/// `nodeinfo` (every field the manifests carry) and `echo` (a bare spec in another
/// namespace): what `tests/expected/{nodeinfo,echo}.yaml` describe.
fn plain_stack() -> Vec<FunctionSpec> {
    let mut a = FunctionSpec::new("nodeinfo", "ghcr.io/openfaas/nodeinfo:latest")
        .process("node index.js")
        .env("MESSAGE", "hello: \"world\"\nsecond line")
        .label("com.openfaas.scale.min", "0")
        .label("com.openfaas.scale.zero", "true")
        .secret("api-key")
        .timeout(Duration::from_secs(30));
    a.constraints = vec!["node.labels.type == rpi".into(), "zone != a".into()];
    a.limits = Some(Resources { memory: Some("128Mi".into()), cpu: Some("500m".into()) });
    a.read_only_root_filesystem = true;
    a.annotations.insert("yes".into(), "true".into());
    let b = FunctionSpec::new("echo", "ghcr.io/example/echo:1.0").namespace("staging");
    vec![a, b]
}

/// [`plain_stack`] with env values YAML 1.1 would misread if printed bare.
fn stack() -> Vec<FunctionSpec> {
    let mut specs = plain_stack();
    for (i, v) in YAML11_TRAPS.iter().enumerate() {
        specs[0].env_vars.insert(format!("TRAP_{i}"), v.to_string());
    }
    specs
}

/// The expected objects: `tests/expected/nodeinfo.yaml` then `echo.yaml`.
fn expected() -> Vec<serde_json::Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expected");
    ["nodeinfo.yaml", "echo.yaml"]
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(dir.join(f)).expect("expected manifest");
            serde_saphyr::from_multiple::<serde_json::Value>(&text).expect("expected YAML")
        })
        .collect()
}

#[test]
fn yaml_manifests_are_the_ones_written_from_the_api_reference() {
    let yaml = faas_backend_k8s::render_manifests(&plain_stack(), &ManifestOptions::new()).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).expect("valid YAML");
    let expected = expected();
    assert_eq!(docs.len(), expected.len(), "{yaml}");
    for (got, want) in docs.iter().zip(&expected) {
        assert_eq!(got, want, "rendered (left) differs from tests/expected (right):\n{yaml}");
    }
}

#[test]
fn json_list_manifests_are_the_ones_written_from_the_api_reference() {
    let opts = ManifestOptions::new().format(ManifestFormat::JsonList);
    let json = faas_backend_k8s::render_manifests(&plain_stack(), &opts).unwrap();
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["items"], serde_json::Value::Array(expected()), "{json}");
}

/// Values go-yaml (YAML 1.1, what kubectl uses) would read as something other than a string
/// if printed bare.
const YAML11_TRAPS: &[&str] = &[
    "on",
    "off",
    "yes",
    "no",
    "y",
    "n",
    "NO",
    "True",
    "~",
    "null",
    "0x1F",
    "0o17",
    "017",
    "1e3",
    "1_000",
    ".inf",
    "12:30",
    "2026-01-01",
    "",
    " lead",
    "a: b",
    "#x",
];

/// Checks that `doc` is exactly the typed object `T` serialised (no unknown or misspelled
/// field, every value of the right type), and returns it.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &serde_json::Value) -> T {
    let t: T = serde_json::from_value(doc.clone()).expect("parses as the k8s-openapi type");
    assert_eq!(&serde_json::to_value(&t).unwrap(), doc, "round trip through the typed object");
    t
}

fn check(docs: &[serde_json::Value]) {
    assert_eq!(docs.len(), 4, "a Deployment and a Service per function");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Deployment", "Service", "Deployment", "Service"]);
    let d: Deployment = typed(&docs[0]);
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(0));
    let env =
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    assert!(env.iter().any(
        |e| e.name == "MESSAGE" && e.value.as_deref() == Some("hello: \"world\"\nsecond line")
    ));
    let s: Service = typed(&docs[1]);
    assert_eq!(s.metadata.namespace.as_deref(), Some("openfaas-fn"));
    let d2: Deployment = typed(&docs[2]);
    assert_eq!(d2.metadata.namespace.as_deref(), Some("staging"));
    assert_eq!(d2.spec.unwrap().replicas, Some(1));
    let s2: Service = typed(&docs[3]);
    assert_eq!(s2.metadata.name.as_deref(), Some("echo"));
}

#[test]
fn yaml_manifests_validate_as_k8s_openapi_types() {
    let yaml = faas_backend_k8s::render_manifests(&stack(), &ManifestOptions::new()).unwrap();
    assert!(yaml.starts_with("---\n"), "{yaml}");
    assert_eq!(yaml.matches("\n---\n").count() + 1, 4, "{yaml}");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).expect("valid YAML");
    check(&docs);
}

#[test]
fn json_list_manifests_validate_as_k8s_openapi_types() {
    let opts = ManifestOptions::new().format(ManifestFormat::JsonList);
    let json = faas_backend_k8s::render_manifests(&stack(), &opts).unwrap();
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["kind"], "List");
    check(list["items"].as_array().unwrap());
}

#[test]
fn default_namespace_option_applies_to_specs_without_one() {
    let opts = ManifestOptions::new().namespace("team-a").format(ManifestFormat::JsonList);
    let json = faas_backend_k8s::render_manifests(&stack(), &opts).unwrap();
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ns: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["team-a", "team-a", "staging", "staging"]);
}

#[test]
fn yaml_quotes_values_yaml_1_1_would_misread() {
    let yaml = faas_backend_k8s::render_manifests(&stack(), &ManifestOptions::new()).unwrap();
    let values: Vec<&str> =
        yaml.lines().filter_map(|l| l.trim_start().strip_prefix("value: ")).collect();
    assert!(values.len() > YAML11_TRAPS.len(), "every env value printed:\n{yaml}");
    let bare_traps: Vec<&&str> = values
        .iter()
        .filter(|v| !(v.starts_with('"') || v.starts_with('\'') || v.starts_with('|')))
        .filter(|v| YAML11_TRAPS.contains(v))
        .collect();
    assert_eq!(bare_traps, Vec::<&&str>::new(), "printed bare:\n{yaml}");
    // And each reads back as the string it was.
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).expect("valid YAML");
    let env = docs[0]["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    for (i, trap) in YAML11_TRAPS.iter().enumerate() {
        let name = format!("TRAP_{i}");
        let got = env.iter().find(|e| e["name"] == name.as_str()).map(|e| &e["value"]);
        assert_eq!(got, Some(&serde_json::Value::from(*trap)), "{name}");
    }
}

//! OpenWhisk action kinds and how an instance of each starts on each backend: the
//! counterpart of OpenWhisk's `runtimes.json`.
//!
//! An OpenWhisk action is a function in the watchdog's `openwhisk` mode (`envVars.mode`)
//! whose `envVars.ow_kind` names its kind:
//!
//! | kind | process backend | Docker, Kubernetes |
//! |---|---|---|
//! | `python:3` | `python3 <state>/runtimes/python/runtime.py` (our stdlib runtime, `runtimes/python/`) | image [`PYTHON_IMAGE`] |
//! | `nodejs:20` | `node <state>/runtimes/nodejs/runtime.js` (our runtime, `runtimes/nodejs/`) | image [`NODEJS_IMAGE`] |
//! | `blackbox` | the spec's `envProcess` (the image's own runtime, run locally) | the spec's `image` |
//!
//! A spec's own `envProcess` (process backend) or `image` (containers) always wins; the
//! manifest fills in what the spec leaves empty ([`apply_image`], and the process backend's
//! command). Code actions (`python:3`, `nodejs:20`, and a blackbox that takes code) give
//! their code in `envVars.ow_code` (source text, or a base64 zip with `ow_binary=true`) or
//! `ow_code_file`, and the entry point in `ow_main` (default `main`).
//!
//! ```
//! use faas_core::runtimes;
//! let k = runtimes::lookup("python:3").unwrap();
//! assert_eq!(k.process.map(|p| p.program), Some("python3"));
//! assert!(runtimes::lookup("cobol:1").is_none());
//! ```

use crate::error::{Error, Result};
use crate::spec::FunctionSpec;

/// The `envVars` key naming an action's kind.
pub const KIND_VAR: &str = "ow_kind";

/// The `envVars.mode` value of OpenWhisk actions.
pub const OPENWHISK_MODE: &str = "openwhisk";

/// The image of `python:3` on container backends: the watchdog and `runtimes/python` on a
/// Python base (`runtimes/python/Dockerfile`).
pub const PYTHON_IMAGE: &str = "faas-rs/action-python:3";

/// The image of `nodejs:20` on container backends (`runtimes/nodejs/Dockerfile`).
pub const NODEJS_IMAGE: &str = "faas-rs/action-nodejs:20";

/// How the process backend starts a kind's runtime: `program` with the runtime script,
/// written under the backend's state directory at `script` (a path relative to
/// `<state>/runtimes/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessRuntime {
    /// The interpreter, found on `PATH`.
    pub program: &'static str,
    /// The runtime script, relative to `<state>/runtimes/`.
    pub script: &'static str,
}

/// One kind of the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeKind {
    /// The kind, as OpenWhisk spells it (`python:3`).
    pub kind: &'static str,
    /// The image on Docker and Kubernetes (`None`: the spec's own, a blackbox).
    pub image: Option<&'static str>,
    /// The command on the process backend (`None`: the spec's `envProcess`).
    pub process: Option<ProcessRuntime>,
}

/// Every kind this platform runs.
pub const MANIFEST: &[RuntimeKind] = &[
    RuntimeKind {
        kind: "python:3",
        image: Some(PYTHON_IMAGE),
        process: Some(ProcessRuntime { program: "python3", script: "python/runtime.py" }),
    },
    RuntimeKind {
        kind: "nodejs:20",
        image: Some(NODEJS_IMAGE),
        process: Some(ProcessRuntime { program: "node", script: "nodejs/runtime.js" }),
    },
    RuntimeKind { kind: "blackbox", image: None, process: None },
];

/// The kind named `kind`, if the manifest has it. `LANG:default` (what `wsk` and the
/// `openwhisk` npm client send when no kind is given) is the manifest's kind of `LANG`, as
/// the `default` entry of OpenWhisk's `runtimes.json` makes it.
pub fn lookup(kind: &str) -> Option<&'static RuntimeKind> {
    let kind = kind.trim();
    match kind.strip_suffix(":default") {
        Some(lang) => {
            MANIFEST.iter().find(|k| k.kind.split_once(':').is_some_and(|(l, _)| l == lang))
        }
        None => MANIFEST.iter().find(|k| k.kind == kind),
    }
}

/// Whether `spec` is an OpenWhisk action (`envVars.mode=openwhisk`).
pub fn is_action(spec: &FunctionSpec) -> bool {
    spec.env_vars.get("mode").is_some_and(|m| m.trim().eq_ignore_ascii_case(OPENWHISK_MODE))
}

/// The kind of an action spec: `envVars.ow_kind` (default `blackbox`). An unknown kind is
/// [`Error::InvalidSpec`] naming `envVars.ow_kind` and the kinds there are; a spec that is
/// no action has none.
pub fn kind_of(spec: &FunctionSpec) -> Result<Option<&'static RuntimeKind>> {
    if !is_action(spec) {
        return Ok(None);
    }
    let name = spec.env_vars.get(KIND_VAR).map(|k| k.trim()).unwrap_or("blackbox");
    match lookup(name) {
        Some(k) => Ok(Some(k)),
        None => {
            let kinds: Vec<&str> = MANIFEST.iter().map(|k| k.kind).collect();
            Err(Error::invalid(
                format!("envVars.{KIND_VAR}"),
                format!("{name:?} is not a runtime kind here; use one of {}", kinds.join(", ")),
            ))
        }
    }
}

/// For container backends: an action whose spec names no image gets its kind's image. A
/// blackbox without an image is refused naming `image`.
pub fn apply_image(mut spec: FunctionSpec) -> Result<FunctionSpec> {
    if let Some(k) = kind_of(&spec)? {
        if spec.image.trim().is_empty() {
            match k.image {
                Some(image) => spec.image = image.to_string(),
                None => {
                    return Err(Error::invalid("image", "a blackbox action needs its image"));
                }
            }
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_images() {
        let action =
            |kind: &str| FunctionSpec::new("a", "").env("mode", "openwhisk").env(KIND_VAR, kind);
        assert_eq!(apply_image(action("python:3")).unwrap().image, PYTHON_IMAGE);
        assert_eq!(apply_image(action("nodejs:20")).unwrap().image, NODEJS_IMAGE);
        assert_eq!(lookup("nodejs:default").map(|k| k.kind), Some("nodejs:20"));
        assert_eq!(lookup("python:default").map(|k| k.kind), Some("python:3"));
        assert!(lookup("java:default").is_none());
        let own = FunctionSpec::new("a", "mine:1").env("mode", "openwhisk");
        assert_eq!(apply_image(own).unwrap().image, "mine:1");
        match apply_image(action("blackbox")) {
            Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, "image"),
            other => panic!("{other:?}"),
        }
        match kind_of(&action("cobol:1")) {
            Err(Error::InvalidSpec { field, reason }) => {
                assert_eq!(field, "envVars.ow_kind");
                assert!(reason.contains("python:3"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Not an action: nothing to resolve.
        assert!(kind_of(&FunctionSpec::new("f", "i").env(KIND_VAR, "x")).unwrap().is_none());
    }
}

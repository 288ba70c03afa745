//! Records the commit the gateway is built from, for `GET /system/info` (OpenFaaS's
//! `provider.version.sha`, which `faas-cli version` shows and the OpenFaaS certifier checks).
//! `FAAS_GIT_SHA` in the build environment wins; otherwise `git rev-parse` of the source tree;
//! without either (a build from a crate archive) the sha is `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=FAAS_GIT_SHA");
    if std::env::var_os("FAAS_GIT_SHA").is_some() {
        return;
    }
    let Some(sha) = git(&["rev-parse", "--short=12", "HEAD"]) else { return };
    println!("cargo:rustc-env=FAAS_GIT_SHA={sha}");
    // Built again when HEAD moves: a new commit rewrites the branch's ref (or packed-refs),
    // a checkout rewrites HEAD.
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}

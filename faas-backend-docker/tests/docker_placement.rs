//! Placement on the plain Docker backend is real or refused: a function whose constraints the
//! engine's node does not meet, or whose platforms (declared, or read from its image) are not
//! the engine's architecture, is refused at deploy and update with a 400 naming what cannot be
//! satisfied, and nothing is started; one whose constraints hold is deployed and serves.

mod common;

use std::process::Command;

use faas_core::prelude::*;
use faas_core::{Error, Invocation};
use sha2::{Digest, Sha256};

/// Loads (once) an image whose config says `linux/<arch>`, made of busybox, as `docker load`
/// takes it: a layer, a config naming the architecture and the layer's digest, a manifest.
fn foreign_image(arch: &str) -> String {
    let tag = format!("faas-rs-test/foreign-{arch}:1");
    let present = Command::new("docker").args(["image", "inspect", &tag]).output().unwrap();
    if present.status.success() {
        return tag;
    }
    let dir = std::env::temp_dir().join(format!("faas-rs-foreign-{arch}-{}", std::process::id()));
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(faas_backend_docker::testing::BUSYBOX, root.join("bin/busybox")).unwrap();
    let img = dir.join("img");
    std::fs::create_dir_all(img.join("layer")).unwrap();
    let layer = img.join("layer/layer.tar");
    let ok = Command::new("tar").arg("-cf").arg(&layer).arg("-C").arg(&root).arg("bin").status();
    assert!(ok.unwrap().success(), "tar of the layer");
    let digest = Sha256::digest(std::fs::read(&layer).unwrap());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let diff = format!("sha256:{hex}");
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "httpd", "-f", "-p", "8080"]},
        "rootfs": {"type": "layers", "diff_ids": [diff]},
    });
    std::fs::write(img.join("config.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([
        {"Config": "config.json", "RepoTags": [tag], "Layers": ["layer/layer.tar"]}
    ]);
    std::fs::write(img.join("manifest.json"), manifest.to_string()).unwrap();
    let archive = dir.join("image.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&img)
        .args(["manifest.json", "config.json", "layer"])
        .status();
    assert!(ok.unwrap().success(), "tar of the image");
    let out = Command::new("docker").arg("load").arg("-i").arg(&archive).output().unwrap();
    assert!(out.status.success(), "docker load: {}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    tag
}

fn refused(r: faas_core::Result<()>, field: &str, names: &str) {
    match r {
        Err(e @ Error::InvalidSpec { .. }) => {
            assert_eq!(e.http_status(), 400, "{e}");
            let Error::InvalidSpec { field: got, .. } = &e else { unreachable!() };
            assert_eq!(got, field, "{e}");
            assert!(e.to_string().contains(names), "{e} should name {names}");
        }
        other => panic!("expected a refusal naming {field} ({names}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsatisfiable_constraints_and_platforms_are_refused_and_satisfiable_ones_serve() {
    let env = common::setup("docker_placement::refused").await;
    let _cleanup = env.guard();
    let docker = env.builder().build().await.unwrap();
    let host_arch = faas_core::scheduler::normalize_arch(std::env::consts::ARCH);
    let other_arch = if host_arch == "arm64" { "amd64" } else { "arm64" };

    // The case: a Raspberry Pi constraint and arm64 on this host.
    let mut pi = env.spec("pi", "echo");
    pi.constraints = vec!["type=rsbpi-01".into()];
    pi.platforms = vec![format!("linux/{other_arch}")];
    refused(docker.deploy(pi).await, "constraints", "type == rsbpi-01");
    let mut swarm_style = env.spec("pi", "echo");
    swarm_style.constraints = vec!["node.labels.type == rsbpi-01".into()];
    refused(docker.deploy(swarm_style).await, "constraints", "type == rsbpi-01");
    let mut arm = env.spec("pi", "echo");
    arm.platforms = vec![format!("linux/{other_arch}")];
    refused(docker.deploy(arm).await, "platforms", other_arch);
    // Platforms read from the image when the spec declares none.
    let foreign = foreign_image(other_arch);
    let by_image = faas_core::FunctionSpec::new("foreign", foreign).namespace(env.ns.clone());
    refused(docker.deploy(by_image).await, "platforms", other_arch);
    assert!(docker.list(&env.ns).await.unwrap().is_empty(), "a refused deploy left a function");
    assert_eq!(env.leftovers().await, Vec::<String>::new(), "a refused deploy left containers");

    // Constraints the node meets (its architecture, in both syntaxes) are deployed and serve.
    let mut ok = env.spec("here", "echo");
    ok.constraints =
        vec![format!("node.platform.arch == {host_arch}"), format!("arch={host_arch}")];
    ok.platforms = vec![format!("linux/{host_arch}"), format!("linux/{other_arch}")];
    docker.deploy(ok.clone()).await.unwrap();
    let resp = docker.invoke(Invocation::post(env.fref("here"), "placed")).await.unwrap();
    assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "placed");
    // An update to an unsatisfiable constraint is refused and changes nothing.
    let mut bad = ok.clone();
    bad.constraints = vec!["type=rsbpi-01".into()];
    refused(docker.update(bad).await, "constraints", "type == rsbpi-01");
    let st = docker.status(&env.fref("here")).await.unwrap();
    assert_eq!(st.constraints, ok.constraints);
    docker.remove(&env.fref("here")).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

//! Placement facts read from the engine: the nodes (the local engine as one node, or a
//! swarm's nodes) with their labels, architecture and resources, and the platforms an image
//! supports (from its config), so that a spec's `constraints` and `platforms` are honoured or
//! refused naming what cannot be satisfied.

use std::collections::BTreeMap;

use bollard::Docker;
use faas_core::scheduler::normalize_arch;
use faas_core::scheduler::Capacity;
use faas_core::{Node, Result};

use crate::engine::{map_err, status_of};

/// The local engine as one [`Node`]: its hostname (`node.hostname`), architecture, OS, CPUs
/// and memory, and the engine's labels (`dockerd --label key=value`) as node labels.
pub(crate) async fn local_node(docker: &Docker) -> Result<Node> {
    let info = docker.info().await.map_err(|e| map_err("info", e))?;
    let hostname = info.name.clone().unwrap_or_else(|| "localhost".to_string());
    let arch = normalize_arch(info.architecture.as_deref().unwrap_or("amd64")).to_string();
    let cpus = info.ncpu.unwrap_or(1).max(1) as u64;
    let memory = info.mem_total.unwrap_or(i64::MAX / 2).max(0) as u64;
    let mut node = Node::new(hostname.clone(), arch, Capacity::new(cpus * 1000, memory, u32::MAX))
        .label("node.hostname", hostname);
    for l in info.labels.iter().flatten() {
        if let Some((k, v)) = l.split_once('=') {
            node = node.label(k.trim(), v.trim());
        }
    }
    Ok(node)
}

/// A swarm node as a [`Node`]: id, hostname, role, `Spec.Labels`, the platform's
/// architecture and the resources its engine reports; healthy when ready and active.
pub(crate) fn swarm_node(n: &bollard::models::Node) -> Node {
    let desc = n.description.as_ref();
    let spec = n.spec.as_ref();
    let arch = desc
        .and_then(|d| d.platform.as_ref())
        .and_then(|p| p.architecture.as_deref())
        .map(normalize_arch)
        .unwrap_or("amd64")
        .to_string();
    let res = desc.and_then(|d| d.resources.as_ref());
    let cpu_millis = res.and_then(|r| r.nano_cpus).unwrap_or(0).max(0) as u64 / 1_000_000;
    let memory = res.and_then(|r| r.memory_bytes).unwrap_or(0).max(0) as u64;
    let mut node = Node::new(
        n.id.clone().unwrap_or_default(),
        arch,
        Capacity::new(cpu_millis, memory, u32::MAX),
    );
    let labels: BTreeMap<String, String> =
        spec.and_then(|s| s.labels.clone()).unwrap_or_default().into_iter().collect();
    node.labels = labels;
    if let Some(h) = desc.and_then(|d| d.hostname.clone()) {
        node = node.label("node.hostname", h);
    }
    if let Some(role) = spec.and_then(|s| s.role) {
        node = node.label("node.role", role.to_string());
    }
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.state)
        .is_some_and(|s| s == bollard::models::NodeState::READY);
    let active = spec
        .and_then(|s| s.availability)
        .is_none_or(|a| a == bollard::models::NodeSpecAvailabilityEnum::ACTIVE);
    node.healthy = ready && active;
    node
}

/// The platforms (`linux/amd64`, `linux/arm/v7`...) of an image present in the engine, read
/// from its config (`Os`, `Architecture`, `Variant`); `None` when the image is absent (a
/// swarm node pulls it itself).
pub(crate) async fn image_platforms(docker: &Docker, image: &str) -> Result<Option<Vec<String>>> {
    match docker.inspect_image(image).await {
        Ok(img) => {
            let os = img.os.unwrap_or_else(|| "linux".to_string());
            let Some(arch) = img.architecture.filter(|a| !a.is_empty()) else {
                return Ok(None);
            };
            let platform = match img.variant.filter(|v| !v.is_empty()) {
                Some(v) if !normalize_arch(&arch).contains('/') => format!("{os}/{arch}/{v}"),
                _ => format!("{os}/{arch}"),
            };
            Ok(Some(vec![platform]))
        }
        Err(e) if status_of(&e) == Some(404) => Ok(None),
        Err(e) => Err(map_err("image inspect", e)),
    }
}

/// The platforms of an image as its registry serves it, asked through the engine
/// (`/distribution/{image}/json`): every platform of a manifest list, or the one of a single
/// manifest. An image the registry does not have, or a registry that cannot be reached, is an
/// [`faas_core::Error::InvalidSpec`] of `image` with the engine's words.
pub(crate) async fn registry_platforms(docker: &Docker, image: &str) -> Result<Vec<String>> {
    match docker.inspect_registry_image(image, None).await {
        Ok(d) => Ok(d
            .platforms
            .iter()
            .filter_map(|p| {
                let arch = p.architecture.as_deref().filter(|a| !a.is_empty())?;
                let os = p.os.as_deref().unwrap_or("linux");
                Some(match p.variant.as_deref().filter(|v| !v.is_empty()) {
                    Some(v) if !normalize_arch(arch).contains('/') => format!("{os}/{arch}/{v}"),
                    _ => format!("{os}/{arch}"),
                })
            })
            .collect()),
        Err(e) if crate::engine::is_unreachable(&e) => Err(map_err("registry image inspect", e)),
        Err(e) => Err(faas_core::Error::invalid(
            "image",
            format!("image {image:?} is not in the engine and its registry does not serve it: {e}"),
        )),
    }
}

/// The spec's platforms, else the image's (when it is present), for placement checks.
pub(crate) async fn platforms_of(
    docker: &Docker,
    spec: &faas_core::FunctionSpec,
) -> Result<Vec<String>> {
    if !spec.platforms.is_empty() {
        return Ok(spec.platforms.clone());
    }
    Ok(image_platforms(docker, &spec.image).await?.unwrap_or_default())
}

/// Refuses `spec` unless the local engine can run it: every constraint met by the engine's
/// node (its labels, hostname, architecture) and an architecture the image supports (its
/// declared platforms, else the image's own). An [`faas_core::Error::InvalidSpec`] names
/// the constraint or the platforms.
pub(crate) async fn check_local(docker: &Docker, spec: &faas_core::FunctionSpec) -> Result<()> {
    if spec.constraints.is_empty() && spec.platforms.is_empty() {
        // The image's platform alone: an image of another architecture cannot run here.
        let Some(platforms) = image_platforms(docker, &spec.image).await? else {
            return Ok(());
        };
        let node = local_node(docker).await?;
        let mut with = spec.clone();
        with.platforms = platforms;
        return faas_core::check_placement(&with, std::slice::from_ref(&node));
    }
    let node = local_node(docker).await?;
    let mut with = spec.clone();
    with.platforms = platforms_of(docker, spec).await?;
    faas_core::check_placement(&with, std::slice::from_ref(&node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_nodes_carry_labels_arch_role_and_health() {
        let n: bollard::models::Node = serde_json::from_value(serde_json::json!({
            "ID": "abc",
            "Spec": {"Labels": {"type": "rpi"}, "Role": "manager", "Availability": "active"},
            "Description": {"Hostname": "pi", "Platform": {"Architecture": "aarch64", "OS": "linux"},
                            "Resources": {"NanoCPUs": 4000000000i64, "MemoryBytes": 1073741824i64}},
            "Status": {"State": "ready", "Addr": "127.0.0.1"}
        }))
        .unwrap();
        let node = swarm_node(&n);
        assert_eq!(node.id, "abc");
        assert_eq!(node.arch, "arm64");
        assert_eq!(node.labels["type"], "rpi");
        assert_eq!(node.labels["node.role"], "manager");
        assert_eq!(node.labels["node.hostname"], "pi");
        assert_eq!(node.capacity.cpu_millis, 4000);
        assert!(node.healthy);
        let drained: bollard::models::Node = serde_json::from_value(serde_json::json!({
            "ID": "d", "Spec": {"Availability": "drain"}, "Status": {"State": "ready"}
        }))
        .unwrap();
        assert!(!swarm_node(&drained).healthy);
    }
}

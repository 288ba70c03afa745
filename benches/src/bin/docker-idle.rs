//! Memory per idle function on the Docker backend: N functions of the fixture image (our
//! static watchdog in http mode in front of `faas-fixture`, on busybox), one replica each,
//! each called once and then left idle; then, per function:
//!
//! - the container's memory as the engine charges it (its memory cgroup's usage: the
//!   processes' own memory plus the page cache of what they read),
//! - the proportional set size (PSS) of the container's processes (shared pages split
//!   between the processes that map them: what the function takes from the machine),
//! - the PSS of the container's `containerd-shim` (the engine's process per container),
//! - what the backend itself holds for it (this process's resident memory after the deploys
//!   less before, over N),
//! - the machine's (`MemTotal` less `MemAvailable` after the deploys less before, over N:
//!   everything above plus the engine's and the kernel's share; other activity on the
//!   machine shows here too).
//!
//! Usage: `cargo run --release -p faas-benches --bin docker-idle -- [N]` (default 50). Needs
//! a Docker engine (cgroup v1 or v2) and busybox-static (see `scripts/ensure-docker.sh`).
//! The functions are removed at the end, and no container of them may be left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use faas_backend_docker::{testing, DockerInvoker};
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{FunctionRef, FunctionSpec, Invocation};

/// A number from a `/proc` or cgroup file's line `NAME: <kB> kB` (or a lone number).
fn read_kib(path: &Path, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
}

/// The memory cgroup directory of container `id` (cgroup v1 with the cgroupfs or systemd
/// driver, or cgroup v2).
fn cgroup_dir(id: &str) -> Option<PathBuf> {
    [
        format!("/sys/fs/cgroup/memory/docker/{id}"),
        format!("/sys/fs/cgroup/memory/system.slice/docker-{id}.scope"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope"),
        format!("/sys/fs/cgroup/docker/{id}"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_dir())
}

/// The container's memory usage in bytes as its cgroup counts it.
fn cgroup_bytes(dir: &Path) -> Option<u64> {
    ["memory.usage_in_bytes", "memory.current"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The PSS (KiB) of the processes in the cgroup.
fn cgroup_pss_kib(dir: &Path) -> u64 {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    procs
        .lines()
        .filter_map(|pid| read_kib(&PathBuf::from(format!("/proc/{pid}/smaps_rollup")), "Pss:"))
        .sum()
}

/// The PSS (KiB) of the engine's shim process of container `id` (its command line names
/// the id), 0 when none is found.
fn shim_pss_kib(id: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("containerd-shim") && cmd.contains(id)
        })
        .filter_map(|e| read_kib(&e.path().join("smaps_rollup"), "Pss:"))
        .sum()
}

/// `MemTotal` less `MemAvailable`, KiB.
fn machine_used_kib() -> u64 {
    let meminfo = Path::new("/proc/meminfo");
    read_kib(meminfo, "MemTotal:")
        .unwrap_or(0)
        .saturating_sub(read_kib(meminfo, "MemAvailable:").unwrap_or(0))
}

fn own_rss_kib() -> u64 {
    read_kib(Path::new("/proc/self/status"), "VmRSS:").unwrap_or(0)
}

fn containers(ns: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-q", "--no-trunc", "--filter"])
        .arg(format!("label=com.faas-rs.namespace={ns}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    testing::require_docker("docker-idle").await;
    let image = testing::fixture_image().await.expect("fixture image");
    let ns = testing::unique("idle");
    let d = DockerInvoker::builder()
        .namespaces([ns.clone()])
        .owner(testing::unique("idle"))
        .health_interval(Duration::from_millis(50))
        .build()
        .await
        .expect("backend");
    let rss0 = own_rss_kib();
    let used0 = machine_used_kib();
    let t0 = Instant::now();
    let fns: Vec<FunctionRef> = (0..n).map(|i| FunctionRef::new(format!("f{i}"), &ns)).collect();
    for f in &fns {
        let spec = FunctionSpec::new(f.name.clone(), image.clone())
            .namespace(ns.clone())
            .env("FIXTURE_BEHAVIOUR", "echo")
            .label(labels::SCALE_MIN, "1");
        d.deploy(spec).await.expect("deploy");
    }
    for f in &fns {
        assert!(d.wait_ready(f, Duration::from_secs(120)).await.expect("wait"), "{f} not ready");
        let r = d.invoke(Invocation::post(f.clone(), "x")).await.expect("invoke");
        assert_eq!(r.status(), 200);
        let _ = r.into_body().collect_bytes().await.expect("body");
    }
    let deployed_in = t0.elapsed();
    // Idle for a while: what the functions hold when nothing calls them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss1 = own_rss_kib();
    let used1 = machine_used_kib();
    let ids = containers(&ns);
    assert_eq!(ids.len(), n, "one container per function");
    let mut cg = Vec::new();
    let mut pss = Vec::new();
    let mut shim = Vec::new();
    for id in &ids {
        shim.push(shim_pss_kib(id) as f64);
        let dir = cgroup_dir(id).unwrap_or_else(|| panic!("no memory cgroup found for {id}"));
        cg.push(cgroup_bytes(&dir).expect("cgroup memory usage") as f64 / 1024.0);
        pss.push(cgroup_pss_kib(&dir) as f64);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "{n} idle functions on the Docker backend (deployed and called once in {deployed_in:.1?})"
    );
    println!("| per idle function | mean | max |");
    println!("|---|---|---|");
    println!("| container memory (cgroup usage) | {:.0} KiB | {:.0} KiB |", mean(&cg), max(&cg));
    println!("| PSS of the container's processes | {:.0} KiB | {:.0} KiB |", mean(&pss), max(&pss));
    println!("| PSS of the container's shim | {:.0} KiB | {:.0} KiB |", mean(&shim), max(&shim));
    println!(
        "| the backend's own memory (RSS after less before, / N) | {:.1} KiB | |",
        (rss1.saturating_sub(rss0)) as f64 / n as f64
    );
    println!(
        "| the machine's (MemTotal - MemAvailable after less before, / N) | {:.0} KiB | |",
        (used1.saturating_sub(used0)) as f64 / n as f64
    );
    for f in &fns {
        d.remove(f).await.expect("remove");
    }
    let t1 = Instant::now();
    while !containers(&ns).is_empty() {
        assert!(t1.elapsed() < Duration::from_secs(60), "containers left after the removals");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

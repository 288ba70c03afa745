//! Test support for Docker tests (this crate's, the benches', other crates' end-to-end
//! tests): a check that Docker is usable, locally built images, cleanup and leak listing.
//!
//! No registry is reachable, so images are assembled here: a root filesystem tar of
//! busybox-static (`/bin/busybox`) plus, for the fixture image, the static `faas-watchdog`
//! and `faas-fixture` binaries, imported with the engine's image-create-from-source call and
//! tagged by content hash (so a second run reuses it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::query_parameters::{
    CreateImageOptions, KillContainerOptions, ListContainersOptions, ListNetworksOptions,
    ListVolumesOptions,
};
use bollard::Docker;
use faas_core::{Error, Result};
use futures::StreamExt;

use crate::engine::{self, fnv_hex, label, map_err};

/// Where `busybox-static` installs busybox on Debian.
pub const BUSYBOX: &str = "/bin/busybox";

/// The port `faas-fixture` listens on inside the fixture image (the watchdog is on 8080).
pub const FIXTURE_UPSTREAM_PORT: u16 = 8081;

/// Panics unless a Docker test can run: the engine answers a ping and busybox-static is
/// installed. A missing engine is a test failure, never a skip, whatever the environment says
/// (`CI` or not), so a green run means the Docker tests ran. `scripts/test.sh` installs and
/// starts what is needed; by hand, run `scripts/ensure-docker.sh` first.
pub async fn require_docker(test: &str) {
    let problem = match engine::connect(None).await {
        Ok(d) => match d.ping().await {
            Ok(_) if Path::new(BUSYBOX).is_file() => None,
            Ok(_) => Some(format!("{BUSYBOX} is missing (apt-get install busybox-static)")),
            Err(e) => Some(format!("docker ping failed: {e}")),
        },
        Err(e) => Some(e.to_string()),
    };
    if let Some(p) = problem {
        panic!(
            "{test}: Docker is not usable: {p}. Run scripts/ensure-docker.sh first.{}",
            engine_diagnosis()
        );
    }
}

/// What `scripts/ensure-docker.sh` recorded (its status file) and the last lines of the
/// dockerd log it started, so that a CI log says why the engine was missing.
fn engine_diagnosis() -> String {
    let tail = |var: &str, default: &str, lines: usize| {
        let path = std::env::var(var).unwrap_or_else(|_| default.to_string());
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                let from = all.len().saturating_sub(lines);
                format!("\n--- last lines of {path}:\n{}", all[from..].join("\n"))
            }
            Err(e) => format!("\n--- {path}: {e}"),
        }
    };
    tail("ENSURE_DOCKER_STATUS", "/tmp/faas-rs-ensure-docker.status", 20)
        + &tail("DOCKERD_LOG", "/tmp/faas-rs-dockerd.log", 15)
}

/// A short unique name with a prefix, usable as a namespace or function name
/// (`t-1a2b3c4d5e`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &faas_core::InvocationId::new().as_str()[..10])
}

async fn docker() -> Result<Docker> {
    engine::connect(None).await
}

/// A minimal ustar writer: enough for a root filesystem.
#[derive(Default)]
struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8, link: &str) {
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, len: usize, s: &[u8]| {
            let n = s.len().min(len);
            h[at..at + n].copy_from_slice(&s[..n]);
        };
        put(&mut h, 0, 100, path.as_bytes());
        put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
        put(&mut h, 108, 8, b"0000000\0");
        put(&mut h, 116, 8, b"0000000\0");
        put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
        put(&mut h, 136, 12, b"00000000000\0");
        put(&mut h, 148, 8, b"        ");
        h[156] = kind;
        put(&mut h, 157, 100, link.as_bytes());
        put(&mut h, 257, 6, b"ustar\0");
        put(&mut h, 263, 2, b"00");
        put(&mut h, 265, 32, b"root");
        put(&mut h, 297, 32, b"root");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
        self.buf.extend_from_slice(&h);
    }

    fn dir(&mut self, path: &str, mode: u32) {
        self.header(&format!("{}/", path.trim_end_matches('/')), mode, 0, b'5', "");
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.header(path, mode, data.len() as u64, b'0', "");
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.header(path, 0o777, 0, b'2', target);
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

/// A root filesystem with busybox, `/etc/passwd`, the secrets directory and `extra` files
/// (path, mode, contents).
fn rootfs(busybox: &[u8], extra: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut t = Tar::default();
    for d in ["bin", "usr", "usr/bin", "etc", "proc", "sys", "dev", "var", "var/openfaas"] {
        t.dir(d, 0o755);
    }
    t.dir("var/openfaas/secrets", 0o755);
    t.dir("tmp", 0o1777);
    t.file("bin/busybox", 0o755, busybox);
    for applet in ["sh", "cat", "ls", "sleep", "echo", "env", "wget", "httpd", "true", "kill"] {
        t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    );
    t.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    for (path, mode, data) in extra {
        if let Some((parent, _)) = path.rsplit_once('/') {
            let mut acc = String::new();
            for part in parent.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(part);
                if !["bin", "usr", "usr/bin", "etc", "var", "var/openfaas"].contains(&acc.as_str())
                {
                    t.dir(&acc, 0o755);
                }
            }
        }
        t.file(path, *mode, data);
    }
    t.finish()
}

/// Imports a root filesystem tar as `repo:tag` with the given Dockerfile-style `changes`
/// (`CMD [...]`, `ENV k=v`, `EXPOSE 8080`), unless an image with that tag exists.
pub async fn import_rootfs(
    repo: &str,
    tag: &str,
    tar: Vec<u8>,
    changes: Vec<String>,
) -> Result<String> {
    let d = docker().await?;
    let image = format!("{repo}:{tag}");
    if d.inspect_image(&image).await.is_ok() {
        return Ok(image);
    }
    let opts = CreateImageOptions {
        from_src: Some("-".to_string()),
        repo: Some(repo.to_string()),
        tag: Some(tag.to_string()),
        changes,
        ..Default::default()
    };
    let mut s = d.create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
    while let Some(r) = s.next().await {
        r.map_err(|e| map_err("image import", e))?;
    }
    d.inspect_image(&image).await.map_err(|e| map_err("image inspect after import", e))?;
    Ok(image)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::internal(format!("reading {}: {e}", path.display())))
}

/// An image whose "watchdog" is busybox `httpd` on port 8080 serving `/_/health`: a stand-in
/// that needs nothing but busybox-static (static files only, no function protocol).
pub async fn stand_in_image() -> Result<String> {
    let busybox = read(Path::new(BUSYBOX))?;
    let tar = rootfs(
        &busybox,
        &[("www/_/health", 0o644, b"OK\n"), ("www/index.html", 0o644, b"stand-in\n")],
    );
    let tag = fnv_hex(&[&tar]);
    let changes = vec![
        r#"CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]"#.to_string(),
        "ENV PATH=/usr/bin:/bin".to_string(),
        "EXPOSE 8080".to_string(),
    ];
    import_rootfs("faas-rs/stand-in", &tag, tar, changes).await
}

/// The workspace root (one level above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

static BUILD: tokio::sync::Mutex<Option<(PathBuf, PathBuf)>> = tokio::sync::Mutex::const_new(None);

/// Paths of static `faas-watchdog` and `faas-fixture` binaries: `FAAS_WATCHDOG_BIN` and
/// `FAAS_FIXTURE_BIN` if set, else built by [`static_build`] (`-p faas-watchdog --bins`).
pub async fn static_binaries() -> Result<(PathBuf, PathBuf)> {
    let mut cached = BUILD.lock().await;
    if let Some(p) = cached.as_ref() {
        return Ok(p.clone());
    }
    if let (Ok(w), Ok(f)) = (std::env::var("FAAS_WATCHDOG_BIN"), std::env::var("FAAS_FIXTURE_BIN"))
    {
        let p = (PathBuf::from(w), PathBuf::from(f));
        *cached = Some(p.clone());
        return Ok(p);
    }
    let dir = static_build(&["-p", "faas-watchdog", "--bins"]).await?;
    let p = (dir.join("faas-watchdog"), dir.join("faas-fixture"));
    *cached = Some(p.clone());
    Ok(p)
}

/// Builds statically linked binaries (`RUSTFLAGS="-C target-feature=+crt-static" cargo build
/// ARGS --target x86_64-unknown-linux-gnu`, debug profile) into `FAAS_STATIC_TARGET_DIR`
/// (default `<workspace>/target/static`, a target directory of its own so it does not wait
/// on the outer cargo's lock); returns the directory of the binaries.
pub async fn static_build(args: &[&str]) -> Result<PathBuf> {
    let target_dir = std::env::var_os("FAAS_STATIC_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("static"));
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = tokio::process::Command::new(cargo)
        .arg("build")
        .args(args)
        .args(["--target", triple])
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .output()
        .await
        .map_err(|e| Error::internal(format!("running cargo for a static build: {e}")))?;
    succeeded(&out, &format!("the static build of {args:?}"))?;
    Ok(target_dir.join(triple).join("debug"))
}

/// An image of busybox with `files` (path in the image, mode, contents) and the
/// Dockerfile-style `changes` (`CMD [...]`, `ENV k=v`), tagged `repo:<content hash>`.
pub async fn busybox_image(
    repo: &str,
    files: &[(&str, u32, &[u8])],
    changes: Vec<String>,
) -> Result<String> {
    let busybox = read(Path::new(BUSYBOX))?;
    let tar = rootfs(&busybox, files);
    let tag = fnv_hex(&[&tar, changes.join("\n").as_bytes()]);
    import_rootfs(repo, &tag, tar, changes).await
}

/// The conformance fixture image: the static `faas-watchdog` as its command (port 8080,
/// `mode=http`) running `faas-fixture --port 8081` (`fprocess` from the image), on busybox.
/// Tagged `faas-rs/fixture:<content hash>`.
pub async fn fixture_image() -> Result<String> {
    let (watchdog, fixture) = static_binaries().await?;
    let busybox = read(Path::new(BUSYBOX))?;
    let (w, f) = (read(&watchdog)?, read(&fixture)?);
    let tar = rootfs(
        &busybox,
        &[("usr/bin/faas-watchdog", 0o755, &w), ("usr/bin/faas-fixture", 0o755, &f)],
    );
    let tag = fnv_hex(&[&tar]);
    let p = FIXTURE_UPSTREAM_PORT;
    let changes = vec![
        r#"CMD ["/usr/bin/faas-watchdog"]"#.to_string(),
        "ENV PATH=/usr/bin:/bin".to_string(),
        "ENV mode=http".to_string(),
        format!("ENV upstream_url=http://127.0.0.1:{p}"),
        format!("ENV fprocess=\"faas-fixture --port {p}\""),
        "EXPOSE 8080".to_string(),
    ];
    import_rootfs("faas-rs/fixture", &tag, tar, changes).await
}

/// The built-in action of [`openwhisk_image`] (`/action/exec`): answers its parameters and
/// activation id, logging a line on stdout and one on stderr.
pub const OPENWHISK_BUILTIN_ACTION: &str = "#!/bin/sh\n\
echo \"built-in got $1\"\n\
echo \"built-in stderr\" >&2\n\
echo \"{\\\"builtin\\\": $1, \\\"id\\\": \\\"$__OW_ACTIVATION_ID\\\"}\"\n";

/// An OpenWhisk action image: the static `faas-watchdog` in `mode=openwhisk` running our
/// busybox-sh runtime (`runtimes/blackbox/runtime.sh`, at `/runtime/runtime.sh`) on
/// 127.0.0.1:8081, with a built-in action ([`OPENWHISK_BUILTIN_ACTION`]) at `/action/exec`:
/// a blackbox action as it is, a native code action when the spec gives `ow_code`. Tagged
/// `faas-rs/openwhisk-fixture:<content hash>`.
pub async fn openwhisk_image() -> Result<String> {
    let (watchdog, _) = static_binaries().await?;
    let busybox = read(Path::new(BUSYBOX))?;
    let w = read(&watchdog)?;
    let runtime = include_bytes!("../../runtimes/blackbox/runtime.sh");
    let tar = rootfs(
        &busybox,
        &[
            ("usr/bin/faas-watchdog", 0o755, &w),
            ("runtime/runtime.sh", 0o755, runtime),
            ("action/exec", 0o755, OPENWHISK_BUILTIN_ACTION.as_bytes()),
        ],
    );
    let tag = fnv_hex(&[&tar]);
    let changes = vec![
        r#"CMD ["/usr/bin/faas-watchdog"]"#.to_string(),
        "ENV PATH=/usr/bin:/bin".to_string(),
        "ENV mode=openwhisk".to_string(),
        "ENV upstream_url=http://127.0.0.1:8081".to_string(),
        "ENV fprocess=\"sh /runtime/runtime.sh\"".to_string(),
        "EXPOSE 8080".to_string(),
    ];
    import_rootfs("faas-rs/openwhisk-fixture", &tag, tar, changes).await
}

/// Builds the images of the `python:3` and `nodejs:20` kinds
/// ([`faas_core::runtimes::PYTHON_IMAGE`], [`faas_core::runtimes::NODEJS_IMAGE`]) from this
/// machine's `python3` and `node` with `runtimes/build-images.sh` and the static
/// `faas-watchdog` of [`static_binaries`]; an image already built from the same files is
/// kept. Serialised: tests that call it at once build once.
pub async fn runtime_images() -> Result<()> {
    static IMAGES: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut built = IMAGES.lock().await;
    if *built {
        return Ok(());
    }
    let (watchdog, _) = static_binaries().await?;
    let out = tokio::process::Command::new("bash")
        .arg(workspace_root().join("runtimes/build-images.sh"))
        .arg(&watchdog)
        .output()
        .await
        .map_err(|e| Error::internal(format!("running runtimes/build-images.sh: {e}")))?;
    succeeded(&out, "runtimes/build-images.sh")?;
    *built = true;
    Ok(())
}

/// An error quoting `what`'s output unless it exited 0.
fn succeeded(out: &std::process::Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(Error::internal(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

/// Containers, networks and volumes carrying our labels that belong to `namespace` or to
/// prewarm `owner` (by label or by name), as `kind name` strings.
pub async fn leftovers(namespace: &str, owner: &str) -> Result<Vec<String>> {
    let d = docker().await?;
    let mut out = Vec::new();
    let opts = ListContainersOptions {
        all: true,
        filters: Some(engine::label_filter(&[format!("{}=true", label::MANAGED)])),
        ..Default::default()
    };
    for c in d.list_containers(Some(opts)).await.map_err(|e| map_err("container list", e))? {
        let labels = c.labels.unwrap_or_default();
        let name = c.names.and_then(|n| n.into_iter().next()).unwrap_or_default();
        let ours = labels.get(label::NAMESPACE).map(String::as_str) == Some(namespace)
            || labels.get(label::OWNER).map(String::as_str) == Some(owner)
            || name.contains(&format!("faas-rs.{namespace}."))
            || name.contains(&format!("faas-rs-prewarm.{owner}."));
        if ours {
            out.push(format!("container {name}"));
        }
    }
    let mut filters = HashMap::new();
    filters.insert("label".to_string(), vec![label::MANAGED.to_string()]);
    let nets = d
        .list_networks(Some(ListNetworksOptions { filters: Some(filters.clone()) }))
        .await
        .map_err(|e| map_err("network list", e))?;
    out.extend(nets.into_iter().map(|n| format!("network {}", n.name.unwrap_or_default())));
    let vols = d
        .list_volumes(Some(ListVolumesOptions { filters: Some(filters) }))
        .await
        .map_err(|e| map_err("volume list", e))?;
    out.extend(vols.volumes.unwrap_or_default().into_iter().map(|v| format!("volume {}", v.name)));
    Ok(out)
}

/// Force-removes every container of `namespace` or prewarm `owner` (test cleanup).
pub async fn cleanup(namespace: &str, owner: &str) -> Result<()> {
    let d = docker().await?;
    let opts = ListContainersOptions {
        all: true,
        filters: Some(engine::label_filter(&[format!("{}=true", label::MANAGED)])),
        ..Default::default()
    };
    for c in d.list_containers(Some(opts)).await.map_err(|e| map_err("container list", e))? {
        let labels = c.labels.unwrap_or_default();
        let name = c.names.and_then(|n| n.into_iter().next()).unwrap_or_default();
        let ours = labels.get(label::NAMESPACE).map(String::as_str) == Some(namespace)
            || labels.get(label::OWNER).map(String::as_str) == Some(owner)
            || name.contains(&format!("faas-rs.{namespace}."));
        if let (true, Some(id)) = (ours, c.id) {
            force_remove(&d, &id).await;
        }
    }
    Ok(())
}

/// Force-removes a container and its anonymous volumes, whatever the answer.
async fn force_remove(d: &Docker, id: &str) {
    let opts =
        bollard::query_parameters::RemoveContainerOptions { force: true, v: true, link: false };
    let _ = d.remove_container(id, Some(opts)).await;
}

/// The engine's state of a container (`running`, `paused`, `exited`...), or `missing`.
pub async fn container_state(id: &str) -> Result<String> {
    let d = docker().await?;
    match d.inspect_container(id, None).await {
        Ok(i) => Ok(i.state.and_then(|s| s.status).map(|s| s.to_string()).unwrap_or_default()),
        Err(e) if engine::status_of(&e) == Some(404) => Ok("missing".to_string()),
        Err(e) => Err(map_err("container inspect", e)),
    }
}

/// Kills a container from outside (SIGKILL), as a crash or an operator would.
pub async fn kill_container(id: &str) -> Result<()> {
    let d = docker().await?;
    d.kill_container(id, Some(KillContainerOptions { signal: "KILL".to_string() }))
        .await
        .map_err(|e| map_err("container kill", e))
}

/// The name of a container (without the leading `/`).
pub async fn container_name(id: &str) -> Result<String> {
    let d = docker().await?;
    let i = d.inspect_container(id, None).await.map_err(|e| map_err("container inspect", e))?;
    Ok(i.name.unwrap_or_default().trim_start_matches('/').to_string())
}

/// The labels of a container.
pub async fn container_labels(id: &str) -> Result<HashMap<String, String>> {
    let d = docker().await?;
    let i = d.inspect_container(id, None).await.map_err(|e| map_err("container inspect", e))?;
    Ok(i.config.and_then(|c| c.labels).unwrap_or_default())
}

/// The host configuration facts tests check: (memory bytes, nano CPUs, read-only rootfs,
/// port bindings as `ip:port`, mounts as `source:target:ro|rw`).
pub async fn container_host_facts(id: &str) -> Result<(i64, i64, bool, Vec<String>, Vec<String>)> {
    let d = docker().await?;
    let i = d.inspect_container(id, None).await.map_err(|e| map_err("container inspect", e))?;
    let hc = i.host_config.unwrap_or_default();
    let ports = i
        .network_settings
        .and_then(|n| n.ports)
        .unwrap_or_default()
        .into_values()
        .flatten()
        .flatten()
        .map(|b| format!("{}:{}", b.host_ip.unwrap_or_default(), b.host_port.unwrap_or_default()))
        .collect();
    let mounts = i
        .mounts
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            format!(
                "{}:{}:{}",
                m.source.unwrap_or_default(),
                m.destination.unwrap_or_default(),
                if m.rw.unwrap_or(true) { "rw" } else { "ro" }
            )
        })
        .collect();
    Ok((
        hc.memory.unwrap_or(0),
        hc.nano_cpus.unwrap_or(0),
        hc.readonly_rootfs.unwrap_or(false),
        ports,
        mounts,
    ))
}

/// The containers (any state) of backend instance `instance` (the label
/// `com.faas-rs.instance`).
async fn of_instance(d: &Docker, instance: &str) -> Result<Vec<bollard::models::ContainerSummary>> {
    let opts = ListContainersOptions {
        all: true,
        filters: Some(engine::label_filter(&[format!("{}={instance}", label::INSTANCE)])),
        ..Default::default()
    };
    d.list_containers(Some(opts)).await.map_err(|e| map_err("container list", e))
}

/// Names of the containers (any state) of backend instance `instance` (the label
/// `com.faas-rs.instance`), sorted.
pub async fn instance_containers(instance: &str) -> Result<Vec<String>> {
    let d = docker().await?;
    let mut names: Vec<String> = of_instance(&d, instance)
        .await?
        .into_iter()
        .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
        .map(|n| n.trim_start_matches('/').to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// Force-removes the containers of backend instance `instance` (test cleanup).
pub async fn cleanup_instance(instance: &str) -> Result<()> {
    let d = docker().await?;
    for id in of_instance(&d, instance).await?.into_iter().filter_map(|c| c.id) {
        force_remove(&d, &id).await;
    }
    Ok(())
}

/// A test's backend instances and image names, removed when dropped (even when the test
/// panics): the containers with those instance ids, and the names with [`untag_image`].
/// Only what the test made is touched, so tests sharing an engine stay apart.
#[derive(Debug, Default)]
pub struct InstanceGuard {
    /// Instance ids whose containers go.
    pub instances: Vec<String>,
    /// Image names (`repo:tag`) that go.
    pub images: Vec<String>,
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        let (instances, images) = (self.instances.clone(), self.images.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async {
                    for id in &instances {
                        let _ = cleanup_instance(id).await;
                    }
                    for image in &images {
                        let _ = untag_image(image).await;
                    }
                });
            }
        })
        .join();
    }
}

/// Tags `image` as `repo:tag` too (a name a test can take away again with
/// [`untag_image`] without removing the image).
pub async fn tag_image(image: &str, repo: &str, tag: &str) -> Result<String> {
    let d = docker().await?;
    let opts = bollard::query_parameters::TagImageOptions {
        repo: Some(repo.to_string()),
        tag: Some(tag.to_string()),
    };
    d.tag_image(image, Some(opts)).await.map_err(|e| map_err("image tag", e))?;
    Ok(format!("{repo}:{tag}"))
}

/// Removes the name `image` (`repo:tag`) only: the image stays under its other names.
pub async fn untag_image(image: &str) -> Result<()> {
    let d = docker().await?;
    let opts = bollard::query_parameters::RemoveImageOptions {
        force: false,
        noprune: true,
        ..Default::default()
    };
    match d.remove_image(image, Some(opts), None).await {
        Ok(_) => Ok(()),
        Err(e) if engine::status_of(&e) == Some(404) => Ok(()),
        Err(e) => Err(map_err("image untag", e)),
    }
}

//! Test support for the Swarm tests (this crate's and the `faas` binary's): a one-node swarm,
//! joined (initialised on 127.0.0.1) when the engine is not in a swarm yet, and left again by
//! the last test process using it, only when a test initialised it. Plain containers of other tests are not affected by either.
//!
//! Test processes run at once (nextest), so each holds a shared lock on a file while it uses
//! the swarm; a process that finds no other holder (an exclusive lock succeeds) and the mark
//! of a test-made swarm leaves it.
// The std file locks are newer than the workspace's MSRV; only tests use this module.
#![allow(clippy::incompatible_msrv)]

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;

use bollard::models::{LocalNodeState, SwarmInitRequest};

fn lock_path() -> PathBuf {
    std::env::temp_dir().join("faas-rs-swarm-tests.lock")
}

/// Present while the swarm was made by a test (and so is left by the last one).
fn mark_path() -> PathBuf {
    std::env::temp_dir().join("faas-rs-swarm-tests.made")
}

/// The swarm held for one test; leaves it on drop when this was the last user of a swarm a
/// test made.
pub struct SwarmGuard {
    lock: Option<File>,
    /// The manager's node id.
    pub node: String,
}

async fn docker() -> bollard::Docker {
    crate::engine::connect(None).await.expect("docker engine answers")
}

/// Makes sure the engine is a swarm manager, initialising a one-node swarm on 127.0.0.1 when
/// it is in none. Panics when the engine is in a swarm as a worker.
pub async fn join() -> SwarmGuard {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path())
        .expect("opening the swarm lock file");
    let file = tokio::task::spawn_blocking(move || {
        file.lock_shared().expect("locking the swarm lock file");
        file
    })
    .await
    .expect("lock task");
    let d = docker().await;
    let state = |info: bollard::models::SystemInfo| {
        let s = info.swarm.unwrap_or_default();
        (s.local_node_state, s.control_available.unwrap_or(false), s.node_id.unwrap_or_default())
    };
    let (st, manager, _) = state(d.info().await.expect("docker info"));
    if st != Some(LocalNodeState::ACTIVE) {
        let req = SwarmInitRequest {
            listen_addr: Some("127.0.0.1:2377".into()),
            advertise_addr: Some("127.0.0.1".into()),
            ..Default::default()
        };
        match d.init_swarm(req).await {
            Ok(_) => {
                std::fs::write(mark_path(), b"made by the faas-rs swarm tests\n")
                    .expect("writing the swarm mark");
            }
            // Another test process initialised it meanwhile.
            Err(e) if e.to_string().contains("already part of a swarm") => {}
            Err(e) => panic!("docker swarm init --advertise-addr 127.0.0.1 failed: {e}"),
        }
    } else {
        assert!(manager, "the engine is in a swarm but not a manager: the Swarm tests need one");
    }
    let (st, manager, node) = state(d.info().await.expect("docker info"));
    assert!(st == Some(LocalNodeState::ACTIVE) && manager, "no swarm manager after init");
    SwarmGuard { lock: Some(file), node }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        let Some(file) = self.lock.take() else { return };
        let _ = file.unlock();
        if file.try_lock().is_ok() {
            if mark_path().exists() {
                let out = Command::new("docker").args(["swarm", "leave", "--force"]).output();
                if matches!(out, Ok(ref o) if o.status.success()) {
                    let _ = std::fs::remove_file(mark_path());
                }
            }
            let _ = file.unlock();
        }
    }
}

/// `docker node update --label-add key=value <node>` (or `--label-rm key` when `value` is
/// `None`), as a user would.
pub fn node_label(node: &str, key: &str, value: Option<&str>) {
    let arg = match value {
        Some(v) => vec!["--label-add".to_string(), format!("{key}={v}")],
        None => vec!["--label-rm".to_string(), key.to_string()],
    };
    let out = Command::new("docker")
        .args(["node", "update"])
        .args(&arg)
        .arg(node)
        .output()
        .expect("running docker node update");
    assert!(out.status.success(), "docker node update: {}", String::from_utf8_lossy(&out.stderr));
}

/// The names of the services of functions in `namespace`.
pub async fn services(namespace: &str) -> Vec<String> {
    let mut filters = std::collections::HashMap::new();
    filters.insert("label".to_string(), vec![format!("com.faas-rs.namespace={namespace}")]);
    let opts =
        bollard::query_parameters::ListServicesOptions { filters: Some(filters), status: None };
    docker()
        .await
        .list_services(Some(opts))
        .await
        .expect("listing services")
        .into_iter()
        .filter_map(|s| s.spec?.name)
        .collect()
}

/// Removes the services and secrets of `namespace` (a failed test's), and a node label, when
/// dropped.
pub struct SwarmCleanup {
    /// The test's namespace.
    pub namespace: String,
    /// The node the label is on.
    pub node: String,
    /// The node label the test added, if any.
    pub label: Option<String>,
}

impl Drop for SwarmCleanup {
    fn drop(&mut self) {
        if let Some(l) = &self.label {
            let _ = Command::new("docker")
                .args(["node", "update", "--label-rm", l, &self.node])
                .output();
        }
        let ns = self.namespace.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                let d = docker().await;
                for s in services(&ns).await {
                    let _ = d.delete_service(&s).await;
                }
                let mut filters = std::collections::HashMap::new();
                filters.insert("label".to_string(), vec![format!("com.faas-rs.namespace={ns}")]);
                let opts = bollard::query_parameters::ListSecretsOptions { filters: Some(filters) };
                for s in d.list_secrets(Some(opts)).await.unwrap_or_default() {
                    if let Some(id) = s.id {
                        let _ = d.delete_secret(&id).await;
                    }
                }
            });
        })
        .join();
    }
}

/// One Swarm test's hold on the swarm: the swarm joined, a backend scoped to `namespace`
/// (refreshing every 100 ms), and the cleanup of the namespace's services and secrets and of
/// a node label when dropped (the cleanup before the swarm is left).
pub struct SwarmTest {
    /// The backend.
    pub swarm: crate::swarm::SwarmInvoker,
    /// Removes what the test left, first.
    pub cleanup: SwarmCleanup,
    /// Leaves the swarm if this is the last test and a test made it, last.
    pub guard: SwarmGuard,
}

/// Joins the swarm ([`join`]) and builds a backend scoped to `namespace`; `label` is a node
/// label the test will add, removed again at the end.
pub async fn setup(namespace: &str, label: Option<&str>) -> SwarmTest {
    let guard = join().await;
    let cleanup = SwarmCleanup {
        namespace: namespace.to_string(),
        node: guard.node.clone(),
        label: label.map(str::to_string),
    };
    let swarm = crate::swarm::SwarmInvoker::builder()
        .namespaces([namespace.to_string()])
        .refresh_interval(std::time::Duration::from_millis(100))
        .build()
        .await
        .expect("building the swarm backend");
    SwarmTest { swarm, cleanup, guard }
}

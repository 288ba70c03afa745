//! Shared helpers of the Docker tests: fail when Docker is missing, a unique namespace and prewarm owner
//! per test, a backend builder scoped to them, and cleanup that runs even when a test panics.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use faas_backend_docker::{testing, DockerInvoker, DockerInvokerBuilder};
use faas_core::conformance::{Behaviour, Workload};
use faas_core::FunctionSpec;

/// One test's private slice of the engine.
pub struct Env {
    pub ns: String,
    pub owner: String,
    pub secrets_dir: PathBuf,
    pub image: String,
}

/// A fresh namespace, owner and fixture image for `test`. Panics when Docker is unusable:
/// a missing engine fails the test, it never skips.
pub async fn setup(test: &str) -> Env {
    testing::require_docker(test).await;
    let ns = testing::unique("t");
    let owner = testing::unique("o");
    let secrets_dir = std::env::temp_dir().join("faas-rs-docker-tests").join(&ns);
    let image = testing::fixture_image().await.expect("building the fixture image");
    let env = Env { ns, owner, secrets_dir, image };
    assert_eq!(env.leftovers().await, Vec::<String>::new(), "fresh namespace has containers");
    env
}

impl Env {
    /// A builder scoped to this test's namespace and owner.
    pub fn builder(&self) -> DockerInvokerBuilder {
        DockerInvoker::builder()
            .namespaces([self.ns.clone()])
            .owner(self.owner.clone())
            .secrets_dir(self.secrets_dir.clone())
            .start_timeout(Duration::from_secs(60))
            .health_interval(Duration::from_millis(200))
    }

    /// A spec of the fixture image in this test's namespace.
    pub fn spec(&self, name: &str, behaviour: &str) -> FunctionSpec {
        FunctionSpec::new(name, self.image.clone())
            .namespace(self.ns.clone())
            .env("FIXTURE_BEHAVIOUR", behaviour)
    }

    pub fn fref(&self, name: &str) -> faas_core::FunctionRef {
        faas_core::FunctionRef::new(name, self.ns.clone())
    }

    /// What carries our labels and belongs to this test.
    pub async fn leftovers(&self) -> Vec<String> {
        testing::leftovers(&self.ns, &self.owner).await.expect("listing leftovers")
    }

    /// A guard that force-removes this test's containers when dropped (even on panic).
    pub fn guard(&self) -> Cleanup {
        Cleanup { ns: self.ns.clone(), owner: self.owner.clone(), dir: self.secrets_dir.clone() }
    }
}

pub struct Cleanup {
    ns: String,
    owner: String,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (ns, owner) = (self.ns.clone(), self.owner.clone());
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _ = rt.block_on(testing::cleanup(&ns, &owner));
            }
        })
        .join();
    }
}

/// The conformance workload on Docker: the fixture image (watchdog on 8080 in `http` mode,
/// `faas-fixture --port 8081` as `fprocess`) with the behaviour chosen by
/// `FIXTURE_BEHAVIOUR`, in the test's namespace.
pub struct DockerWorkload {
    pub image: String,
    pub namespace: String,
}

impl Workload for DockerWorkload {
    fn spec(&self, name: &str, behaviour: Behaviour) -> FunctionSpec {
        // No catch-all: the fixture refuses a name it does not know, so a new behaviour fails
        // loudly instead of running as another one.
        let b = behaviour.name();
        FunctionSpec::new(name, self.image.clone())
            .namespace(self.namespace.clone())
            .env("FIXTURE_BEHAVIOUR", b)
    }

    fn start_timeout(&self) -> Duration {
        Duration::from_secs(60)
    }
}

/// Polls `f` until it returns `Some`, at most `bound`.
pub async fn eventually<T, F, Fut>(bound: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t0.elapsed() < bound, "timed out after {bound:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! The faas-core conformance suite against the Docker backend, one test per case. Each test
//! has its own namespace and prewarm owner, and removes what it created, even on failure.

mod common;

use faas_core::conformance;

/// Runs one conformance case on a fresh backend scoped to a fresh namespace, then checks that
/// nothing carrying our labels is left. Every case of the one list runs: no exclusions.
macro_rules! case {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let env = common::setup(concat!("conformance_docker::", stringify!($name))).await;
            let _cleanup = env.guard();
            let docker = env.builder().build().await.expect("building the docker backend");
            let w = common::DockerWorkload { image: env.image.clone(), namespace: env.ns.clone() };
            conformance::$name(&docker, &w).await;
            docker.shutdown().await;
            assert_eq!(env.leftovers().await, Vec::<String>::new(), "containers left behind");
        }
    };
}

faas_core::for_each_conformance_case!(case);

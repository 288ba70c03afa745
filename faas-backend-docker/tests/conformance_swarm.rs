//! The faas-core conformance suite against the Swarm backend on a live one-node swarm (see
//! `swarm_live.rs`), one test per case, each in its own namespace; every case of the one list
//! runs: no exclusions.

mod common;

use faas_backend_docker::swarm_testing as swarm_common;
use faas_core::conformance;

macro_rules! case {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let env = common::setup(concat!("conformance_swarm::", stringify!($name))).await;
            let t = swarm_common::setup(&env.ns, None).await;
            let w = common::DockerWorkload { image: env.image.clone(), namespace: env.ns.clone() };
            conformance::$name(&t.swarm, &w).await;
            t.swarm.shutdown();
            assert_eq!(
                swarm_common::services(&env.ns).await,
                Vec::<String>::new(),
                "services left"
            );
        }
    };
}

faas_core::for_each_conformance_case!(case);

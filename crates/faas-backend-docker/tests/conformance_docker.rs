//! The faas-core conformance suite against the Docker backend, one test per case. Each test
//! has its own namespace and prewarm owner, and removes what it created, even on failure.

mod common;

use faas_core::conformance;

/// Runs one conformance case on a fresh backend scoped to a fresh namespace, then checks that
/// nothing carrying our labels is left.
macro_rules! case {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(env) = common::setup(concat!("conformance_docker::", stringify!($name))).await
            else {
                return;
            };
            let _cleanup = env.guard();
            let docker = env.builder().build().await.expect("building the docker backend");
            let w = common::DockerWorkload { image: env.image.clone(), namespace: env.ns.clone() };
            conformance::$name(&docker, &w).await;
            docker.shutdown().await;
            assert_eq!(env.leftovers().await, Vec::<String>::new(), "containers left behind");
        }
    };
}

case!(deploy_round_trip);
case!(invalid_specs_rejected);
case!(duplicate_deploy_rejected);
case!(unknown_function_not_found);
case!(invoke_preserves_request);
case!(env_and_secrets);
case!(secrets_round_trip);
case!(timeout_is_developer_error);
case!(crash_is_developer_error);
case!(concurrency_cap_holds);
case!(scale_up_and_to_zero);
case!(scale_from_zero);
case!(logs_readable);
case!(many_concurrent_invocations);

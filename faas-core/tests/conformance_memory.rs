//! The in-memory backend against the conformance suite, one test per case, on paused time.

use faas_core::conformance::{self, MemoryWorkload};
use faas_core::MemoryInvoker;

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(start_paused = true)]
        async fn $case() {
            let invoker = MemoryInvoker::builder()
                .cold_start(std::time::Duration::from_millis(50))
                .build();
            let workload = MemoryWorkload::new(&invoker);
            conformance::$case(&invoker, &workload).await;
            let left = faas_core::Deploy::list(&invoker, "openfaas-fn").await.unwrap();
            assert!(left.is_empty(), "case left functions behind: {left:?}");
        }
    )*};
}

cases!(
    deploy_round_trip,
    invalid_specs_rejected,
    duplicate_deploy_rejected,
    unknown_function_not_found,
    invoke_preserves_request,
    env_and_secrets,
    secrets_round_trip,
    timeout_is_developer_error,
    crash_is_developer_error,
    concurrency_cap_holds,
    scale_up_and_to_zero,
    scale_from_zero,
    logs_readable,
    logs_survive_scale_to_zero,
    many_concurrent_invocations,
);

/// The whole suite on one invoker, in real time with no cold start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_real_time() {
    let invoker = MemoryInvoker::new();
    let workload = MemoryWorkload::new(&invoker);
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        conformance::run_all(&invoker, &workload),
    )
    .await
    .expect("the suite finished in time");
}

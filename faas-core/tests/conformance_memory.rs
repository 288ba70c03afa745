//! The in-memory backend against the conformance suite, one test per case, on paused time.

use faas_core::conformance::{self, MemoryWorkload};
use faas_core::MemoryInvoker;

/// One test per case of [`faas_core::for_each_conformance_case!`], the one list every
/// backend takes its cases from. The in-memory backend runs them all: no exclusions.
macro_rules! case {
    ($case:ident) => {
        #[tokio::test(start_paused = true)]
        async fn $case() {
            let invoker =
                MemoryInvoker::builder().cold_start(std::time::Duration::from_millis(50)).build();
            let workload = MemoryWorkload::new(&invoker);
            conformance::$case(&invoker, &workload).await;
            let left = faas_core::Deploy::list(&invoker, "openfaas-fn").await.unwrap();
            assert!(left.is_empty(), "case left functions behind: {left:?}");
        }
    };
}

faas_core::for_each_conformance_case!(case);

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

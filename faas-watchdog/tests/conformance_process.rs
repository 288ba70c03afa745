//! The process backend passes the whole conformance suite, one test per case.

mod common;

use std::time::Duration;

use common::{temp_dir, FIXTURE, WATCHDOG};
use faas_core::conformance;
use faas_watchdog::process::ProcessInvoker;
use faas_watchdog::testing::FixtureWorkload;

fn invoker(tag: &str) -> ProcessInvoker {
    ProcessInvoker::builder()
        .watchdog_command(WATCHDOG, Vec::<String>::new())
        .state_dir(temp_dir(tag))
        .stop_grace(Duration::from_secs(5))
        .build()
        .expect("building the process backend")
}

fn workload() -> FixtureWorkload {
    FixtureWorkload::new(FIXTURE)
}

/// One test per case of the one list; every case runs: no exclusions.
macro_rules! case {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let inv = invoker(stringify!($name));
            let w = workload();
            tokio::time::timeout(Duration::from_secs(300), conformance::$name(&inv, &w))
                .await
                .expect("the case did not finish in 300 s");
        }
    };
}

faas_core::for_each_conformance_case!(case);

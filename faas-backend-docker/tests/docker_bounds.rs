//! Replica caps against a real engine: scaling labels and scale requests over the
//! per-function cap are refused naming the cap, and the host cap holds across functions.

mod common;

use std::time::Duration;

use common::eventually;
use faas_core::spec::labels;
use faas_core::{Error, Invoker, ReplicaLimits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_caps_refuse_hostile_scaling_and_hold_across_functions() {
    let Some(env) =
        common::setup("replica_caps_refuse_hostile_scaling_and_hold_across_functions").await
    else {
        return;
    };
    let _g = env.guard();
    let docker = env.builder().replica_limits(ReplicaLimits::new(2, 3)).build().await.unwrap();
    let bomb = env
        .spec("bomb", "echo")
        .label(labels::SCALE_MIN, "1000000000")
        .label(labels::SCALE_MAX, "1000000000");
    match docker.deploy(bomb).await {
        Err(Error::InvalidSpec { field, reason }) => {
            assert_eq!(field, "labels.com.openfaas.scale.min");
            assert!(reason.contains("cap of 2 replicas per function"), "{reason}");
        }
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    let at_cap = |name: &str| {
        env.spec(name, "echo").label(labels::SCALE_MIN, "2").label(labels::SCALE_MAX, "2")
    };
    docker.deploy(at_cap("a")).await.unwrap();
    match docker.scale(&env.fref("a"), 3).await {
        Err(Error::InvalidSpec { field, .. }) => assert_eq!(field, "replicas"),
        other => panic!("expected InvalidSpec(replicas), got {other:?}"),
    }
    eventually(Duration::from_secs(60), "a at 2 replicas", || async {
        (docker.instances(&env.fref("a")).ok()?.len() == 2).then_some(())
    })
    .await;
    docker.deploy(at_cap("b")).await.unwrap();
    let count = |n: &str| docker.instances(&env.fref(n)).map(|i| i.len()).unwrap_or(0);
    eventually(Duration::from_secs(60), "b at 1 replica", || async {
        (count("b") == 1).then_some(())
    })
    .await;
    // Several maintenance passes later the host cap of 3 still holds.
    for _ in 0..10 {
        assert!(count("a") + count("b") <= 3, "over the host cap of 3");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!((count("a"), count("b")), (2, 1));
    // Freed slots go to the function still short.
    docker.remove(&env.fref("a")).await.unwrap();
    eventually(Duration::from_secs(60), "b at 2 replicas", || async {
        (count("b") == 2).then_some(())
    })
    .await;
    docker.remove(&env.fref("b")).await.unwrap();
    docker.shutdown().await;
}

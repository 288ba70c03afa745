//! Replica caps against a real engine: scaling labels and scale requests over the
//! per-function cap are refused naming the cap, and the host cap holds across functions.

mod common;

use std::time::Duration;

use common::eventually;
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{Error, ReplicaLimits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_caps_refuse_hostile_scaling_and_hold_across_functions() {
    let env = common::setup("replica_caps_refuse_hostile_scaling_and_hold_across_functions").await;
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

/// A call waiting behind `maxConcurrency` gets a 429 (`Overloaded` with a retry hint) once
/// its caller's wait budget runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_behind_max_concurrency_is_overloaded_within_its_wait_budget() {
    let env =
        common::setup("a_waiter_behind_max_concurrency_is_overloaded_within_its_wait_budget").await;
    let _g = env.guard();
    let docker = std::sync::Arc::new(env.builder().build().await.unwrap());
    docker.deploy(env.spec("busy", "sleep").max_concurrency(1)).await.unwrap();
    let f = env.fref("busy");
    // Warm it first, so the wait below is behind a busy replica, not for a start.
    docker.invoke(faas_core::Invocation::get(f.clone(), "/?ms=1")).await.unwrap();
    // The occupant holds the only slot far longer than the waiter's budget.
    let occupant = {
        let (d, f) = (docker.clone(), f.clone());
        tokio::spawn(async move { d.invoke(faas_core::Invocation::get(f, "/?ms=60000")).await })
    };
    eventually(Duration::from_secs(30), "the first call in flight", || async {
        docker.instances(&f).ok()?.iter().any(|i| i.in_flight > 0).then_some(())
    })
    .await;
    let mut waiter = faas_core::Invocation::get(f.clone(), "/?ms=1");
    waiter
        .request
        .extensions_mut()
        .insert(faas_core::invocation::WaitBudget(Duration::from_secs(1)));
    match docker.invoke(waiter).await {
        Err(e @ Error::Overloaded { .. }) => {
            assert_eq!(e.http_status(), 429);
            assert!(matches!(e, Error::Overloaded { retry_after: Some(_), .. }));
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    // Refused while the occupant still holds the slot: the waiter's own budget ended the
    // wait, not the slot freeing up (no clock is read).
    assert!(!occupant.is_finished(), "the waiter was answered only after the occupant");
    assert!(docker.instances(&f).unwrap().iter().any(|i| i.in_flight > 0));
    occupant.abort();
    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
}

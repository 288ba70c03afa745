//! Warm paths against a real engine: pause after idle and resume, the prewarm pool,
//! start kinds in every response, balancing over replicas, rolling updates.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::eventually;
use faas_backend_docker::testing;
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{Invocation, InvocationMeta, StartKind};

fn meta(resp: &faas_core::Response) -> InvocationMeta {
    resp.extensions().get::<InvocationMeta>().cloned().expect("InvocationMeta in the response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_replica_is_paused_and_resumed_on_the_next_request() {
    let env = common::setup("idle_replica_is_paused_and_resumed_on_the_next_request").await;
    let _g = env.guard();
    let docker = env
        .builder()
        .pause_after(Duration::from_millis(300))
        .health_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    docker.deploy(env.spec("p", "echo")).await.unwrap();
    let f = env.fref("p");
    let r = docker.invoke(Invocation::post(f.clone(), "one")).await.unwrap();
    assert_eq!(meta(&r).start, StartKind::Cold);
    assert_eq!(r.into_body().collect_bytes().await.unwrap(), "one");

    let id = docker.instances(&f).unwrap()[0].container_id.clone();
    eventually(Duration::from_secs(30), "the idle replica to be paused", || async {
        (docker.instances(&f).unwrap()[0].paused).then_some(())
    })
    .await;
    assert_eq!(testing::container_state(&id).await.unwrap(), "paused", "paused in the engine");

    let r = tokio::time::timeout(
        Duration::from_secs(30),
        docker.invoke(Invocation::post(f.clone(), "two")),
    )
    .await
    .expect("a paused replica must be resumed, not hang")
    .unwrap();
    let m = meta(&r);
    assert_eq!(m.start, StartKind::Resumed);
    assert_eq!(m.instance, docker.instances(&f).unwrap()[0].name);
    assert_eq!(r.into_body().collect_bytes().await.unwrap(), "two");
    assert_eq!(testing::container_state(&id).await.unwrap(), "running");
    let r = docker.invoke(Invocation::post(f.clone(), "three")).await.unwrap();
    assert_eq!(meta(&r).start, StartKind::Warm);
    assert_eq!(docker.instances(&f).unwrap()[0].container_id, id, "same container throughout");

    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_pool_serves_cold_starts_and_refills() {
    let env = common::setup("prewarm_pool_serves_cold_starts_and_refills").await;
    let _g = env.guard();
    let template = env.spec("template", "echo");
    let docker = env
        .builder()
        .prewarm_spec(&template, 2)
        .health_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "2 prewarmed containers", || async {
        (docker.prewarmed() == 2).then_some(())
    })
    .await;

    // Same container configuration as the template, deployed at zero replicas.
    let spec = env.spec("warm", "echo").label(labels::SCALE_MIN, "0");
    docker.deploy(spec).await.unwrap();
    let f = env.fref("warm");
    assert!(docker.instances(&f).unwrap().is_empty());
    let r = docker.invoke(Invocation::post(f.clone(), "hi")).await.unwrap();
    let m = meta(&r);
    assert_eq!(m.start, StartKind::Prewarmed);
    assert!(m.init_time.is_some());
    assert_eq!(r.into_body().collect_bytes().await.unwrap(), "hi");
    let inst = docker.instances(&f).unwrap();
    assert_eq!(inst.len(), 1);
    // The taken container is renamed after the function (so a restart adopts it).
    let id = inst[0].container_id.clone();
    eventually(Duration::from_secs(10), "the taken container to be renamed", || async {
        let n = testing::container_name(&id).await.ok()?;
        n.contains(&format!("faas-rs.{}.warm.", env.ns)).then_some(())
    })
    .await;
    eventually(Duration::from_secs(60), "the pool to refill", || async {
        (docker.prewarmed() == 2).then_some(())
    })
    .await;

    // A different configuration cannot use the pool: cold.
    docker.deploy(env.spec("other", "sleep").label(labels::SCALE_MIN, "0")).await.unwrap();
    let r = docker.invoke(Invocation::get(env.fref("other"), "/?ms=1")).await.unwrap();
    assert_eq!(meta(&r).start, StartKind::Cold);
    assert_eq!(docker.prewarmed(), 2);

    docker.remove(&f).await.unwrap();
    docker.remove(&env.fref("other")).await.unwrap();
    docker.shutdown().await;
    assert_eq!(docker.prewarmed(), 0);
    assert_eq!(env.leftovers().await, Vec::<String>::new(), "pool containers removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_are_balanced_over_ready_replicas() {
    let env = common::setup("invocations_are_balanced_over_ready_replicas").await;
    let _g = env.guard();
    let docker = env.builder().build().await.unwrap();
    docker.deploy(env.spec("bal", "sleep")).await.unwrap();
    let f = env.fref("bal");
    docker.scale(&f, 3).await.unwrap();
    assert_eq!(docker.instances(&f).unwrap().len(), 3);
    let mut seen = BTreeSet::new();
    let mut fixture_ids = BTreeSet::new();
    for _ in 0..30 {
        let r = docker.invoke(Invocation::get(f.clone(), "/?ms=1")).await.unwrap();
        assert_eq!(r.status(), 200);
        seen.insert(meta(&r).instance);
        fixture_ids.insert(r.headers()["x-instance"].to_str().unwrap().to_string());
    }
    let names: BTreeSet<String> =
        docker.instances(&f).unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(seen, names, "every replica served");
    assert_eq!(fixture_ids.len(), 3, "three distinct processes answered");
    let st = docker.status(&f).await.unwrap();
    assert_eq!((st.replicas, st.available_replicas), (3, 3));
    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_rolls_replicas_without_dropping_in_flight_requests() {
    let env = common::setup("update_rolls_replicas_without_dropping_in_flight_requests").await;
    let _g = env.guard();
    let docker = env.builder().build().await.unwrap();
    let spec = env.spec("roll", "sleep").env("VERSION", "1");
    docker.deploy(spec.clone()).await.unwrap();
    let f = env.fref("roll");
    docker.scale(&f, 2).await.unwrap();
    let old: BTreeSet<String> =
        docker.instances(&f).unwrap().into_iter().map(|i| i.container_id).collect();
    let old_hash = docker.instances(&f).unwrap()[0].spec_hash.clone();

    // Two long requests in flight on the old replicas while the update rolls.
    let slow = |d: faas_backend_docker::DockerInvoker, f: faas_core::FunctionRef| async move {
        let r = d.invoke(Invocation::get(f, "/?ms=4000")).await?;
        let status = r.status();
        let body = r.into_body().collect_bytes().await?;
        Ok::<_, faas_core::Error>((status, body))
    };
    let a = tokio::spawn(slow(docker.clone(), f.clone()));
    let b = tokio::spawn(slow(docker.clone(), f.clone()));
    eventually(Duration::from_secs(10), "both requests in flight", || async {
        let n: u32 = docker.instances(&f).unwrap().iter().map(|i| i.in_flight).sum();
        (n == 2).then_some(())
    })
    .await;
    docker.update(spec.env("VERSION", "2")).await.unwrap();
    let new = docker.instances(&f).unwrap();
    let fresh: Vec<_> = new.iter().filter(|i| !i.draining).collect();
    assert_eq!(fresh.len(), 2, "two new replicas: {new:?}");
    assert!(fresh.iter().all(|i| i.spec_hash != old_hash && !old.contains(&i.container_id)));
    // New requests go to the new replicas while the old ones drain.
    let r = docker.invoke(Invocation::get(f.clone(), "/?ms=1")).await.unwrap();
    assert!(fresh.iter().any(|i| i.name == meta(&r).instance));

    for h in [a, b] {
        let (status, body) = h.await.unwrap().expect("in-flight request survived the update");
        assert_eq!((status.as_u16(), &body[..]), (200, &b"slept"[..]));
    }
    eventually(Duration::from_secs(30), "old replicas removed", || async {
        for id in &old {
            if testing::container_state(id).await.ok()? != "missing" {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert_eq!(docker.instances(&f).unwrap().len(), 2);
    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// Sequential invocations of `f`: the replica each landed on ([`InvocationMeta`]), checking
/// that each replica is one fixture process (`x-instance`) and the other way round.
async fn sequential_instances(
    docker: &faas_backend_docker::DockerInvoker,
    f: &faas_core::FunctionRef,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut fixtures = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            docker.invoke(Invocation::get(f.clone(), "/?ms=1")),
        )
        .await
        .expect("invocation timed out")
        .unwrap();
        assert_eq!(r.status(), 200);
        let fixture = r.headers()["x-instance"].to_str().unwrap().to_string();
        let m = meta(&r);
        assert_eq!(fixtures.entry(m.instance.clone()).or_insert(fixture.clone()), &fixture);
        out.push(m.instance);
    }
    let distinct: BTreeSet<&String> = fixtures.values().collect();
    assert_eq!(distinct.len(), fixtures.len(), "fixture ids per replica: {fixtures:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_label_picks_hash_routing_per_function() {
    use faas_core::scheduler::{HashSharding, SCHEDULER_LABEL};
    use faas_core::{InstanceView, Scheduler as _};

    let env = common::setup("the_scheduler_label_picks_hash_routing_per_function").await;
    let _g = env.guard();
    let docker = env.builder().build().await.unwrap();
    let spec = env.spec("sticky", "sleep").label(SCHEDULER_LABEL, "hash");
    docker.deploy(spec.clone()).await.unwrap();
    let f = env.fref("sticky");
    docker.scale(&f, 3).await.unwrap();
    let mut names: Vec<String> =
        docker.instances(&f).unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names.len(), 3);

    // Hash routing is sticky: every sequential call lands on the home replica, the one
    // hashing picks over the replicas in name order.
    names.sort();
    let views: Vec<InstanceView> = names
        .iter()
        .map(|n| InstanceView {
            id: n.clone(),
            node: None,
            in_flight: 0,
            max_concurrency: None,
            ready: true,
        })
        .collect();
    let home = names[HashSharding::new().route(&f, &views).unwrap()].clone();
    let landed = sequential_instances(&docker, &f, 12).await;
    assert!(landed.iter().all(|i| *i == home), "hash routing to {home}, got {landed:?}");

    // Concurrent calls stay home too.
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (d, f) = (docker.clone(), f.clone());
            tokio::spawn(async move {
                let r = d.invoke(Invocation::get(f, "/?ms=3000")).await.unwrap();
                assert_eq!(r.status(), 200);
                meta(&r).instance
            })
        })
        .collect();
    let loads = eventually(Duration::from_secs(30), "three calls in flight", || async {
        let loads: Vec<(String, u32)> =
            docker.instances(&f).unwrap().into_iter().map(|i| (i.name, i.in_flight)).collect();
        (loads.iter().map(|(_, n)| n).sum::<u32>() == 3).then_some(loads)
    })
    .await;
    assert!(loads.contains(&(home.clone(), 3)), "all three at home: {loads:?}");
    for c in calls {
        let at = tokio::time::timeout(Duration::from_secs(60), c).await.unwrap().unwrap();
        assert_eq!(at, home);
    }

    // An update stores the new choice: least-loaded spreads sequential calls again.
    docker.update(spec.label(SCHEDULER_LABEL, "least-loaded")).await.unwrap();
    let fresh: BTreeSet<String> =
        docker.instances(&f).unwrap().into_iter().filter(|i| !i.draining).map(|i| i.name).collect();
    assert_eq!(fresh.len(), 3, "three new replicas");
    let landed: BTreeSet<String> =
        sequential_instances(&docker, &f, 12).await.into_iter().collect();
    assert_eq!(landed, fresh, "least-loaded used every new replica");

    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

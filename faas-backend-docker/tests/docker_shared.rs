//! One engine, several gateways, and a hostile engine: each backend instance owns its
//! containers through the label `com.faas-rs.instance` and touches no other; what the
//! engine refuses reaches the API (a 400 up front, else a failed state with the reason,
//! retried with a backoff, and a fast 503); no container outlives a delete.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use faas_backend_docker::testing;
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{Error, FunctionRef, Invocation, Resources};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_engine_list_adopt_and_remove_only_their_own() {
    let env =
        common::setup("two_instances_on_one_engine_list_adopt_and_remove_only_their_own").await;
    let _g = env.guard();
    let (ia, ib) = (testing::unique("ia"), testing::unique("ib"));
    let _i = testing::InstanceGuard { instances: vec![ia.clone(), ib.clone()], images: vec![] };
    // Both in the same namespace: only the instance label tells their containers apart.
    let a = env.builder().instance(ia.clone()).build().await.unwrap();
    let b = env.builder().instance(ib.clone()).build().await.unwrap();
    assert_eq!((a.instance_id(), b.instance_id()), (ia.as_str(), ib.as_str()));
    // The same function name on both, and one of each's own.
    a.deploy(env.spec("same", "echo")).await.unwrap();
    b.deploy(env.spec("same", "echo")).await.unwrap();
    a.deploy(env.spec("only-a", "echo")).await.unwrap();
    b.deploy(env.spec("only-b", "echo")).await.unwrap();
    let same = env.fref("same");
    assert_eq!(a.call(&same.to_string(), "to a").await.unwrap(), "to a");
    assert_eq!(b.call(&same.to_string(), "to b").await.unwrap(), "to b");
    let names = |v: Vec<faas_core::FunctionStatus>| v.into_iter().map(|s| s.name).collect();
    let listed_b: Vec<String> = names(b.list(&env.ns).await.unwrap());
    assert_eq!(listed_b, vec!["only-b".to_string(), "same".to_string()]);
    let a_containers = testing::instance_containers(&ia).await.unwrap();
    assert!(
        a_containers.iter().any(|n| n.starts_with(&format!("faas-rs.{}.same.", env.ns))),
        "{a_containers:?}"
    );

    // b restarts (a new backend with b's id): it adopts b's functions and nothing of a's.
    b.shutdown().await;
    drop(b);
    let b2 = env.builder().instance(ib.clone()).build().await.unwrap();
    let listed_b2: Vec<String> = names(b2.list(&env.ns).await.unwrap());
    assert_eq!(listed_b2, vec!["only-b".to_string(), "same".to_string()]);
    assert_eq!(b2.call(&same.to_string(), "b again").await.unwrap(), "b again");
    // Removing b's `same` removes b's containers only: a's keep running and serving.
    b2.remove(&same).await.unwrap();
    b2.remove(&env.fref("only-b")).await.unwrap();
    // a's containers are all there: the same definitions and a replica of each function (a's
    // own maintenance may have replaced a replica it found unhealthy on a loaded machine,
    // which gives it a new suffix).
    let per_function = |names: Vec<String>| -> Vec<String> {
        names
            .into_iter()
            .map(|n| match n.strip_prefix("faas-rs.") {
                Some(rest) => rest.rsplit_once('.').map_or(n.clone(), |(f, _)| f.to_string()),
                None => n,
            })
            .collect()
    };
    assert_eq!(
        per_function(testing::instance_containers(&ia).await.unwrap()),
        per_function(a_containers.clone())
    );
    let b_left: Vec<String> = testing::instance_containers(&ib)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| !n.starts_with("faas-rs-prewarm."))
        .collect();
    assert_eq!(b_left, Vec::<String>::new());
    for id in a.instances(&same).unwrap().iter().map(|i| i.container_id.clone()) {
        assert_eq!(testing::container_state(&id).await.unwrap(), "running");
    }
    assert_eq!(a.call(&same.to_string(), "still a").await.unwrap(), "still a");
    b2.shutdown().await;

    for f in ["same", "only-a"] {
        a.remove(&env.fref(f)).await.unwrap();
    }
    a.shutdown().await;
    assert_eq!(testing::instance_containers(&ia).await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_id_is_kept_in_the_state_dir_so_a_restart_adopts_its_own() {
    let env =
        common::setup("the_instance_id_is_kept_in_the_state_dir_so_a_restart_adopts_its_own").await;
    let _g = env.guard();
    let dir = env.secrets_dir.join("state");
    let first = env.builder().state_dir(&dir).build().await.unwrap();
    let id = first.instance_id().to_string();
    let _i = testing::InstanceGuard { instances: vec![id.clone()], images: vec![] };
    assert_ne!(id, faas_backend_docker::DEFAULT_INSTANCE);
    assert_eq!(std::fs::read_to_string(dir.join("docker-instance")).unwrap().trim(), id);
    first.deploy(env.spec("kept", "echo")).await.unwrap();
    let f = env.fref("kept");
    assert_eq!(first.call(&f.to_string(), "1").await.unwrap(), "1");
    let before: Vec<String> =
        first.instances(&f).unwrap().into_iter().map(|i| i.container_id).collect();
    first.shutdown().await;
    drop(first);

    // Another state directory is another gateway: it sees none of the first one's.
    let other = env.builder().state_dir(env.secrets_dir.join("other")).build().await.unwrap();
    let other_id = other.instance_id().to_string();
    let _j = testing::InstanceGuard { instances: vec![other_id.clone()], images: vec![] };
    assert_ne!(other_id, id);
    assert!(other.list(&env.ns).await.unwrap().is_empty());
    other.shutdown().await;
    drop(other);

    let again = env.builder().state_dir(&dir).build().await.unwrap();
    assert_eq!(again.instance_id(), id);
    let after: Vec<String> =
        again.instances(&f).unwrap().into_iter().map(|i| i.container_id).collect();
    assert_eq!(after, before, "the same containers, adopted");
    again.remove(&f).await.unwrap();
    again.shutdown().await;
    assert_eq!(testing::instance_containers(&id).await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_refusals_reach_the_api() {
    let env = common::setup("engine_refusals_reach_the_api").await;
    let _g = env.guard();
    let inst = testing::unique("ir");
    let tag = testing::unique("gone");
    let image = format!("faas-rs/refused:{tag}");
    let _i = testing::InstanceGuard { instances: vec![inst.clone()], images: vec![image.clone()] };
    let docker = env.builder().instance(inst.clone()).build().await.unwrap();

    // Known up front: a memory limit under the engine's 6 MiB minimum is a 400 naming it.
    let mut tiny = env.spec("tiny", "echo");
    tiny.limits = Some(Resources { memory: Some("5Mi".into()), ..Default::default() });
    match docker.deploy(tiny.clone()).await {
        Err(e @ Error::InvalidSpec { .. }) => {
            assert_eq!(e.http_status(), 400);
            let Error::InvalidSpec { field, reason } = e else { unreachable!() };
            assert_eq!(field, "limits.memory");
            assert!(reason.contains("6 MiB"), "{reason}");
        }
        other => panic!("expected InvalidSpec(limits.memory), got {other:?}"),
    }
    assert!(docker.status(&env.fref("tiny")).await.is_err(), "nothing deployed");
    let mut slow = env.spec("slow", "echo");
    slow.limits = Some(Resources { cpu: Some("1m".into()), ..Default::default() });
    assert!(matches!(
        docker.deploy(slow).await,
        Err(Error::InvalidSpec { field, .. }) if field == "limits.cpu"
    ));

    // Known only when a replica starts: the image's name is gone from the engine since the
    // deploy. The function goes to a failed state with the engine's reason.
    testing::tag_image(&env.image, "faas-rs/refused", &tag).await.unwrap();
    let spec = faas_core::FunctionSpec::new("gone", image.clone())
        .namespace(env.ns.clone())
        .env("FIXTURE_BEHAVIOUR", "echo")
        .label(labels::SCALE_MIN, "0");
    docker.deploy(spec).await.unwrap();
    testing::untag_image(&image).await.unwrap();
    let f = env.fref("gone");
    // The scale request was valid: the engine's refusal is a 503 naming the image, not
    // the caller's 400.
    let err = docker.scale(&f, 1).await.unwrap_err();
    assert_eq!(err.http_status(), 503, "{err}");
    assert!(err.to_string().contains(&image), "the scale names the image: {err}");
    let failure = docker.status(&f).await.unwrap().failure.expect("a failed state");
    assert!(failure.reason.contains(&image), "{failure:?}");
    assert!(failure.attempts >= 1);

    // Invocations answer 503 at once, naming the reason (not after the 60 s start timeout
    // this backend has): they are answered while the function still has no replica.
    let r = docker.invoke(Invocation::post(f.clone(), "x")).await;
    match r {
        Err(e @ Error::Unavailable { .. }) => {
            assert_eq!(e.http_status(), 503);
            assert!(e.to_string().contains(&image), "{e}");
        }
        other => panic!("expected Unavailable naming the image, got {other:?}"),
    }
    assert!(matches!(
        docker.wait_ready(&f, Duration::from_secs(60)).await,
        Err(Error::Unavailable { .. })
    ));

    // Retried with a growing backoff, not at every pass of the maintenance loop (200 ms).
    let third = eventually(Duration::from_secs(60), "three failed starts", || async {
        docker.status(&f).await.ok()?.failure.filter(|x| x.attempts >= 3)
    })
    .await;
    assert!(
        third.retry_in_ms >= 400,
        "the wait after 3 failures grows past the 200 ms health interval: {third:?}"
    );
    let json = serde_json::to_value(docker.status(&f).await.unwrap()).unwrap();
    assert!(json["failure"]["reason"].as_str().unwrap().contains(&image), "{json}");

    // The image comes back: the next attempt starts a replica and the failure is gone.
    testing::tag_image(&env.image, "faas-rs/refused", &tag).await.unwrap();
    eventually(Duration::from_secs(120), "a replica once the image is back", || async {
        let st = docker.status(&f).await.ok()?;
        (st.available_replicas == 1 && st.failure.is_none()).then_some(())
    })
    .await;
    assert_eq!(docker.call(&f.to_string(), "back").await.unwrap(), "back");
    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
    testing::untag_image(&image).await.unwrap();
}

/// Deploys, scales, kills replicas (so they are replaced) and invokes while deleting, in a
/// loop; after each delete none of the function's containers is left, and at the end no
/// container of the instance at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_container_outlives_a_delete_racing_replacements() {
    let env = common::setup("no_container_outlives_a_delete_racing_replacements").await;
    let _g = env.guard();
    let inst = testing::unique("id");
    let _i = testing::InstanceGuard { instances: vec![inst.clone()], images: vec![] };
    let docker = Arc::new(
        env.builder()
            .instance(inst.clone())
            .health_interval(Duration::from_millis(100))
            // Functions of this configuration take prewarmed containers (renamed in the
            // background): one more way for a container to appear during a delete.
            .prewarm_spec(&env.spec("template", "echo"), 2)
            .build()
            .await
            .unwrap(),
    );
    let of = |f: &FunctionRef| {
        let (replica, definition) = (
            format!("faas-rs.{}.{}.", f.namespace, f.name),
            format!(".{}.{}", f.namespace, f.name),
        );
        move |names: Vec<String>| -> Vec<String> {
            names
                .into_iter()
                .filter(|n| n.starts_with(&replica) || n.ends_with(&definition))
                .collect()
        }
    };
    for round in 0..4u32 {
        let f = env.fref(&format!("race{round}"));
        docker.deploy(env.spec(&f.name, "echo")).await.unwrap();
        eventually(Duration::from_secs(60), "a first replica", || async {
            (!docker.instances(&f).ok()?.is_empty()).then_some(())
        })
        .await;
        let victim = docker.instances(&f).unwrap()[0].container_id.clone();
        let scale = {
            let (d, f) = (docker.clone(), f.clone());
            tokio::spawn(async move { d.scale(&f, 3).await })
        };
        let calls = {
            let (d, f) = (docker.clone(), f.clone());
            tokio::spawn(async move {
                for _ in 0..5 {
                    let _ = d.invoke(Invocation::post(f.clone(), "x")).await;
                }
            })
        };
        testing::kill_container(&victim).await.unwrap();
        // The kill is seen and a replacement started by the maintenance loop while the
        // scale-up runs; the delete comes in the middle of it (later in later rounds).
        for _ in 0..round {
            tokio::task::yield_now().await;
            let _ = docker.instances(&f);
        }
        docker.remove(&f).await.unwrap();
        let _ = scale.await.unwrap();
        calls.await.unwrap();
        let left = of(&f);
        eventually(Duration::from_secs(30), "no container of the deleted function", || async {
            left(testing::instance_containers(&inst).await.ok()?).is_empty().then_some(())
        })
        .await;
        // ...and none appears afterwards: several maintenance passes later there is still
        // none (a replacement started late would show up here).
        let settled = docker.prewarmed();
        eventually(Duration::from_secs(30), "the prewarm pool refilled", || async {
            (docker.prewarmed() >= settled.min(2)).then_some(())
        })
        .await;
        let left = of(&f);
        assert_eq!(left(testing::instance_containers(&inst).await.unwrap()), Vec::<String>::new());
    }
    // At zero replicas an invocation takes a prewarmed container outside the reconcile
    // lock; deletes racing those.
    for round in 0..6u32 {
        let f = env.fref(&format!("cold{round}"));
        docker.deploy(env.spec(&f.name, "echo").label(labels::SCALE_MIN, "0")).await.unwrap();
        eventually(Duration::from_secs(60), "a full prewarm pool", || async {
            (docker.prewarmed() >= 2).then_some(())
        })
        .await;
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let (d, f) = (docker.clone(), f.clone());
                tokio::spawn(async move { d.invoke(Invocation::post(f, "x")).await })
            })
            .collect();
        for _ in 0..round {
            tokio::task::yield_now().await;
        }
        docker.remove(&f).await.unwrap();
        for c in calls {
            let _ = c.await.unwrap();
        }
        let left = of(&f);
        eventually(Duration::from_secs(30), "no container of the deleted function", || async {
            left(testing::instance_containers(&inst).await.ok()?).is_empty().then_some(())
        })
        .await;
        // Taken prewarm containers are renamed in the background: count what is neither
        // the pool's nor a function's of this test that still lives.
        let pool_and_live = || async {
            let names = testing::instance_containers(&inst).await.unwrap();
            names.len() - names.iter().filter(|n| n.starts_with("faas-rs-prewarm.")).count()
        };
        eventually(Duration::from_secs(30), "only the pool left", || async {
            (pool_and_live().await == 0).then_some(())
        })
        .await;
    }
    docker.shutdown().await;
    assert_eq!(testing::instance_containers(&inst).await.unwrap(), Vec::<String>::new());
}

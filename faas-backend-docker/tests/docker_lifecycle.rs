//! Deploy, invoke, inspect and remove against a real Docker engine.

mod common;

use std::time::Duration;

use faas_backend_docker::testing;
use faas_core::prelude::*;
use faas_core::{Invocation, InvocationMeta, InvokeExt, Resources, StartKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_configures_containers_and_remove_leaves_nothing() {
    let env = common::setup("deploy_configures_containers_and_remove_leaves_nothing").await;
    let _g = env.guard();
    let docker = env.builder().build().await.unwrap();
    let mut spec = env.spec("echo", "echo").env("GREETING", "hello");
    spec.labels.insert("team".into(), "blue".into());
    spec.limits = Some(Resources { memory: Some("64Mi".into()), cpu: Some("500m".into()) });
    spec.read_only_root_filesystem = true;
    docker.deploy(spec).await.unwrap();
    let f = env.fref("echo");

    let resp = docker.invoke(Invocation::post(f.clone(), "ping")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let meta = resp.extensions().get::<InvocationMeta>().cloned().unwrap();
    assert_eq!(meta.start, StartKind::Cold, "first call after deploy waits for the start");
    assert!(meta.init_time.is_some());
    assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "ping");

    let inst = docker.instances(&f).unwrap();
    assert_eq!(inst.len(), 1);
    let id = &inst[0].container_id;
    let labels = testing::container_labels(id).await.unwrap();
    assert_eq!(labels["com.faas-rs.function"], "echo");
    assert_eq!(labels["com.faas-rs.namespace"], env.ns);
    assert_eq!(labels["com.faas-rs.role"], "replica");
    assert_eq!(labels["faas_function"], "echo");
    assert_eq!(labels["team"], "blue");
    assert_eq!(labels["com.faas-rs.spec-hash"], inst[0].spec_hash);
    let (mem, cpu, ro, ports, _) = testing::container_host_facts(id).await.unwrap();
    assert_eq!(mem, 64 << 20);
    assert_eq!(cpu, 500_000_000);
    assert!(ro, "read-only root filesystem");
    assert!(!ports.is_empty());
    for p in &ports {
        assert!(p.starts_with("127.0.0.1:"), "published on loopback only: {p}");
        assert_ne!(p, "127.0.0.1:8080", "ephemeral host port expected");
    }

    let st = docker.status(&f).await.unwrap();
    assert_eq!((st.replicas, st.available_replicas), (1, 1));
    assert_eq!(st.invocation_count, 1);
    assert_eq!(st.env_vars["GREETING"], "hello");
    let usage = st.usage.unwrap();
    assert!(usage.total_memory_bytes > 0.0, "memory usage from stats: {usage:?}");
    let listed = docker.list(&env.ns).await.unwrap();
    assert_eq!(listed.len(), 1);

    assert!(!env.leftovers().await.is_empty());
    docker.remove(&f).await.unwrap();
    assert!(matches!(
        docker.invoke(Invocation::post(f.clone(), "x")).await,
        Err(faas_core::Error::NotFound { .. })
    ));
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new(), "remove leaves nothing behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_and_images_are_named() {
    let env = common::setup("bad_specs_and_images_are_named").await;
    let _g = env.guard();
    let docker = env.builder().build().await.unwrap();
    let err = docker
        .deploy(
            // A registry on loopback where nothing listens: the pull fails at once, offline.
            faas_core::FunctionSpec::new("nope", "127.0.0.1:9/faas-rs/does-not-exist:1")
                .namespace(env.ns.clone()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, faas_core::Error::InvalidSpec { field, .. } if field == "image"),
        "{err}"
    );
    let err = docker.deploy(env.spec("x", "echo").secret("missing")).await.unwrap_err();
    assert!(
        matches!(&err, faas_core::Error::InvalidSpec { field, .. } if field == "secrets[0]"),
        "{err}"
    );
    let err = docker
        .deploy(faas_core::FunctionSpec::new("x", env.image.clone()).namespace("other-ns"))
        .await
        .unwrap_err();
    assert!(matches!(err, faas_core::Error::NotFound { kind: "namespace", .. }), "{err}");
    docker.deploy(env.spec("dup", "echo")).await.unwrap();
    let err = docker.deploy(env.spec("dup", "echo")).await.unwrap_err();
    assert!(matches!(err, faas_core::Error::AlreadyExists { .. }), "{err}");
    docker.remove(&env.fref("dup")).await.unwrap();
    docker.shutdown().await;
    drop(docker);
    // A process that never becomes healthy: the start fails as a developer error naming
    // it, not a hang. (One backend per namespace at a time: they would fight over it.)
    let quick = env.builder().start_timeout(Duration::from_secs(5)).build().await.unwrap();
    let bad = env.spec("crashy", "echo").process("/bin/false");
    quick.deploy(bad).await.unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(90),
        quick.call(&format!("crashy.{}", env.ns), "x"),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, faas_core::Error::Developer { .. }), "{err}");
    quick.remove(&env.fref("crashy")).await.unwrap();
    quick.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_scheduler_label_is_rejected_before_anything_is_created() {
    use faas_core::scheduler::SCHEDULER_LABEL;

    let env = common::setup("a_bad_scheduler_label_is_rejected_before_anything_is_created").await;
    let _g = env.guard();
    let docker = env.builder().build().await.unwrap();
    let field = format!("labels.{SCHEDULER_LABEL}");
    let err = docker
        .deploy(env.spec("badsched", "echo").label(SCHEDULER_LABEL, "fastest"))
        .await
        .unwrap_err();
    match &err {
        faas_core::Error::InvalidSpec { field: f, reason } => {
            assert_eq!(f, &field);
            assert!(reason.contains("fastest") && reason.contains("hash"), "{reason}");
        }
        other => panic!("expected InvalidSpec({field}), got {other:?}"),
    }
    assert!(matches!(
        docker.status(&env.fref("badsched")).await,
        Err(faas_core::Error::NotFound { .. })
    ));
    assert_eq!(env.leftovers().await, Vec::<String>::new(), "no container for a rejected spec");

    // An update with a bad label changes nothing: same containers, same replica serving.
    docker.deploy(env.spec("ok", "echo")).await.unwrap();
    let f = env.fref("ok");
    assert_eq!(docker.call(&format!("ok.{}", env.ns), "a").await.unwrap(), "a");
    let before = env.leftovers().await;
    let replicas = docker.instances(&f).unwrap();
    let err = docker.update(env.spec("ok", "echo").label(SCHEDULER_LABEL, "")).await.unwrap_err();
    assert!(matches!(&err, faas_core::Error::InvalidSpec { field: f, .. } if *f == field), "{err}");
    assert_eq!(env.leftovers().await, before);
    assert_eq!(docker.instances(&f).unwrap(), replicas);
    assert_eq!(docker.call(&format!("ok.{}", env.ns), "b").await.unwrap(), "b");
    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

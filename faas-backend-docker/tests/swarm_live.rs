//! The Swarm backend on a live one-node swarm (initialised on 127.0.0.1 when the engine is in
//! none): placement constraints in both syntaxes keep a function pending with the engine's
//! reason, invocations fail fast naming it, a node label lets the engine place it, it serves,
//! scales to 3 and is removed without leaving a service.

mod common;

use std::time::Duration;

use faas_backend_docker::swarm::{Placement, SwarmInvoker};
use faas_backend_docker::swarm_testing as swarm_common;
use faas_core::prelude::*;
use faas_core::{Error, FunctionRef, Invocation};

use common::eventually;

const BOUND: Duration = Duration::from_secs(60);

async fn placement_of(swarm: &SwarmInvoker, f: &FunctionRef) -> Placement {
    swarm.placement(f).expect("placement of a deployed function")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_function_pends_with_the_reason_then_serves_once_a_node_is_labelled() {
    let env = common::setup("swarm_live::constrained").await;
    // A label key of this test alone: other tests share the node.
    let key = format!("faas-rs-test-{}", env.ns);
    let t = swarm_common::setup(&env.ns, Some(&key)).await;
    let (swarm, guard) = (&t.swarm, &t.guard);

    // The thesis's syntax and OpenFaaS's nodeSelector syntax.
    let mut thesis = env.spec("rpi", "echo");
    thesis.constraints = vec![format!("node.labels.{key} == rpi")];
    let mut selector = env.spec("rpi-selector", "echo");
    // With the node's architecture in the Kubernetes spelling, which the engine knows as
    // `node.platform.arch` in its own (`x86_64`).
    let arch = faas_core::scheduler::normalize_arch(std::env::consts::ARCH);
    selector.constraints = vec![format!("{key}=rpi"), format!("kubernetes.io/arch={arch}")];
    swarm.deploy(thesis).await.expect("deploy with the thesis's constraint");
    swarm.deploy(selector).await.expect("deploy with a nodeSelector constraint");
    let (f, g) = (env.fref("rpi"), env.fref("rpi-selector"));
    for fr in [&f, &g] {
        let reason = eventually(BOUND, "the engine's pending reason", || async {
            match placement_of(swarm, fr).await {
                Placement::Pending(r) => Some(r),
                _ => None,
            }
        })
        .await;
        assert!(reason.contains("no suitable node"), "reason: {reason}");
    }
    let service = swarm.service_name(&f).unwrap();
    let svc = bollard::Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
        .inspect_service(&service, None)
        .await
        .expect("the function's service");
    let constraints = svc.spec.unwrap().task_template.unwrap().placement.unwrap().constraints;
    assert_eq!(constraints, Some(vec![format!("node.labels.{key} == rpi")]));

    // Invocations fail at once (not after the 60 s start timeout) with a 503 naming it, and so
    // does the activator's readiness question.
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        swarm.invoke(Invocation::post(f.clone(), "x")),
    )
    .await
    .expect("an invocation of a pending function answers at once")
    .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(err.http_status(), 503);
    assert!(err.to_string().contains("no suitable node"), "{err}");
    let ready = swarm.wait_ready(&f, Duration::ZERO).await;
    assert!(matches!(ready, Err(ref e) if e.to_string().contains("no suitable node")), "{ready:?}");
    let st = swarm.status(&f).await.unwrap();
    assert_eq!((st.replicas, st.available_replicas), (1, 0));

    // `docker node update --label-add KEY=rpi <node>`: the engine places both.
    swarm_common::node_label(&guard.node, &key, Some("rpi"));
    for fr in [&f, &g] {
        eventually(BOUND, "the function to become ready", || async {
            matches!(placement_of(swarm, fr).await, Placement::Ready(1)).then_some(())
        })
        .await;
        let resp = swarm.invoke(Invocation::post(fr.clone(), "hello swarm")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "hello swarm");
    }
    assert!(swarm.wait_ready(&f, Duration::ZERO).await.unwrap());

    // Scale to 3: three tasks, each serving.
    swarm.scale(&f, 3).await.unwrap();
    eventually(BOUND, "3 ready tasks", || async {
        let st = swarm.status(&f).await.ok()?;
        (st.replicas == 3 && st.available_replicas == 3).then_some(())
    })
    .await;
    let mut instances = std::collections::BTreeSet::new();
    for i in 0..30 {
        let resp = swarm.invoke(Invocation::post(f.clone(), format!("call {i}"))).await.unwrap();
        let meta = resp.extensions().get::<faas_core::InvocationMeta>().cloned().unwrap();
        instances.insert(meta.instance);
        assert_eq!(resp.into_body().collect_bytes().await.unwrap(), format!("call {i}"));
    }
    assert_eq!(instances.len(), 3, "calls spread over the 3 tasks: {instances:?}");

    // A scale past the per-function cap (from the swarm's CPUs and memory) is refused.
    let cap = swarm.replica_limits().per_function();
    let over = swarm.scale(&f, cap + 1).await;
    assert!(
        matches!(over, Err(Error::InvalidSpec { ref field, .. }) if field == "replicas"),
        "{over:?}"
    );

    // Remove: no service is left, and the function is gone.
    swarm.remove(&f).await.unwrap();
    swarm.remove(&g).await.unwrap();
    assert_eq!(swarm_common::services(&env.ns).await, Vec::<String>::new());
    assert!(matches!(swarm.status(&f).await, Err(Error::NotFound { .. })));
    swarm.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_report_labels_architecture_and_reservations_and_an_unreachable_registry_is_refused()
{
    let env = common::setup("swarm_live::nodes").await;
    let t = swarm_common::setup(&env.ns, None).await;
    let (swarm, guard) = (&t.swarm, &t.guard);
    let nodes = swarm.nodes().await.unwrap();
    let me = nodes.iter().find(|n| n.id == guard.node).expect("the manager is a node");
    assert!(me.healthy);
    assert_eq!(me.arch, faas_core::scheduler::normalize_arch(std::env::consts::ARCH));
    assert!(me.capacity.cpu_millis >= 1000 && me.capacity.memory_bytes > 0, "{me:?}");
    assert_eq!(me.labels.get("node.role").map(String::as_str), Some("manager"));

    // Free resources: a task's reservations (the spec's requests) count as allocated on its
    // node while it is meant to run.
    let mut reserving = env.spec("reserving", "echo");
    reserving.requests =
        Some(faas_core::Resources { memory: Some("64Mi".into()), cpu: Some("100m".into()) });
    swarm.deploy(reserving).await.unwrap();
    let me = eventually(BOUND, "the task's reservation on the node", || async {
        let nodes = swarm.nodes().await.ok()?;
        let me = nodes.into_iter().find(|n| n.id == guard.node)?;
        (me.allocated.memory_bytes >= 64 << 20).then_some(me)
    })
    .await;
    assert!(me.allocated.cpu_millis >= 100 && me.allocated.slots >= 1, "{me:?}");
    swarm.remove(&env.fref("reserving")).await.unwrap();

    // An image neither the engine has nor any registry serves is refused at deploy, naming
    // the image, instead of a service retrying forever.
    let image = "127.0.0.1:9/faas-rs/absent:1";
    let spec = faas_core::FunctionSpec::new("ghost", image).namespace(env.ns.clone());
    match swarm.deploy(spec).await {
        Err(e @ Error::InvalidSpec { .. }) => assert!(e.to_string().contains(image), "{e}"),
        other => panic!("expected a refusal naming the image, got {other:?}"),
    }
    assert_eq!(swarm_common::services(&env.ns).await, Vec::<String>::new());
    swarm.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_secret_reaches_the_function_through_a_new_swarm_secret_version() {
    let env = common::setup("swarm_live::secrets").await;
    let t = swarm_common::setup(&env.ns, None).await;
    let swarm = &t.swarm;
    let secret = |v: &'static str| faas_core::Secret {
        name: "api-key".into(),
        namespace: env.ns.clone(),
        value: bytes::Bytes::from_static(v.as_bytes()),
    };
    swarm.create_secret(secret("v1")).await.unwrap();
    swarm.deploy(env.spec("reader", "env").secret("api-key")).await.unwrap();
    let f = env.fref("reader");
    let read = || async {
        let r = swarm.invoke(Invocation::get(f.clone(), "/?secret=api-key")).await.ok()?;
        r.into_body().collect_bytes().await.ok()
    };
    eventually(BOUND, "the secret's first value", || async {
        (read().await? == "v1").then_some(())
    })
    .await;
    // Swarm secrets cannot change: the update is a new version the service rolls over to.
    swarm.update_secret(secret("v2")).await.unwrap();
    eventually(BOUND, "the secret's new value", || async { (read().await? == "v2").then_some(()) })
        .await;
    let listed = swarm.list_secrets(&env.ns).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["api-key"]);
    swarm.remove(&f).await.unwrap();
    swarm.remove_secret(&env.ns, "api-key").await.unwrap();
    assert!(swarm.list_secrets(&env.ns).await.unwrap().is_empty());
    swarm.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_s_scheduler_places_a_function_that_asks_for_it_by_arch_and_free_resources() {
    use faas_backend_docker::swarm::PLACEMENT_LABEL;
    let env = common::setup("swarm_live::scheduler_placement").await;
    let t = swarm_common::setup(&env.ns, None).await;
    let (swarm, guard) = (&t.swarm, &t.guard);
    let host = faas_core::scheduler::normalize_arch(std::env::consts::ARCH);
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let placed = |name: &str| {
        let mut s = env.spec(name, "echo").label(PLACEMENT_LABEL, "scheduler");
        s.requests = Some(faas_core::Resources { memory: Some("32Mi".into()), cpu: None });
        s
    };

    // Picked by the scheduler: the one node that fits, pinned by its id.
    swarm.deploy(placed("placed")).await.unwrap();
    let f = env.fref("placed");
    let svc = bollard::Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
        .inspect_service(&swarm.service_name(&f).unwrap(), None)
        .await
        .unwrap();
    let constraints = svc.spec.unwrap().task_template.unwrap().placement.unwrap().constraints;
    assert_eq!(constraints, Some(vec![format!("node.id == {}", guard.node)]));
    eventually(BOUND, "the placed function to be ready", || async {
        matches!(swarm.placement(&f).ok()?, Placement::Ready(_)).then_some(())
    })
    .await;
    let resp = swarm.invoke(Invocation::post(f.clone(), "placed")).await.unwrap();
    assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "placed");

    // No node of the image's architecture, no node meeting the constraint, more memory than
    // any node has: refused at deploy naming why (the engine would leave it pending).
    let expect = |r: faas_core::Result<()>, field: &str| match r {
        Err(Error::InvalidSpec { field: got, .. }) if got == field => {}
        other => panic!("expected a refusal naming {field}, got {other:?}"),
    };
    let mut arm = placed("arm");
    arm.platforms = vec![format!("linux/{other}")];
    expect(swarm.deploy(arm).await, "platforms");
    let mut nowhere = placed("nowhere");
    nowhere.constraints = vec![format!("type=none-{}", env.ns)];
    expect(swarm.deploy(nowhere).await, "constraints");
    let mut huge = placed("huge");
    huge.requests = Some(faas_core::Resources { memory: Some("100Ti".into()), cpu: None });
    expect(swarm.deploy(huge).await, "requests");
    let bad = env.spec("bad", "echo").label(PLACEMENT_LABEL, "anywhere");
    expect(swarm.deploy(bad).await, &format!("labels.{PLACEMENT_LABEL}"));
    assert_eq!(swarm_common::services(&env.ns).await, vec![swarm.service_name(&f).unwrap()]);

    swarm.remove(&f).await.unwrap();
    swarm.shutdown();
}

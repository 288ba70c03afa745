//! Image pulls from a real registry on loopback (Debian's `docker-registry`): a function whose
//! image the engine lacks is pulled and serves, on the Docker and on the Swarm backend; an
//! image the registry does not have is refused at deploy naming the image and the registry's
//! words; on Swarm, an image that cannot be pulled once tasks start (the registry gone) fails
//! the function with the engine's reason after a few rejections, instead of retrying forever.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::time::Duration;

use faas_backend_docker::swarm::Placement;
use faas_backend_docker::swarm_testing as swarm_common;
use faas_core::prelude::*;
use faas_core::{Error, FunctionSpec, Invocation};

use common::eventually;

const BOUND: Duration = Duration::from_secs(60);

fn refused_naming_image(r: faas_core::Result<()>, image: &str) {
    match r {
        Err(ref e @ Error::InvalidSpec { ref field, .. }) if field == "image" => {
            let text = e.to_string();
            assert!(text.contains(image), "{text} should name {image}");
            assert_eq!(e.http_status(), 400);
        }
        other => panic!("expected a refusal of the image {image}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pulls_an_absent_image_from_the_registry_and_refuses_one_it_lacks() {
    let env = common::setup("image_pull::docker").await;
    let _cleanup = env.guard();
    let mut reg = registry::start();
    let image = reg.push(&env.image, &format!("faas-rs/pulled:{}", env.ns));
    assert!(!registry::present(&image), "the pushed reference is not in the engine before");
    let docker = env.builder().build().await.unwrap();

    let spec = FunctionSpec::new("pulled", image.clone())
        .namespace(env.ns.clone())
        .env("FIXTURE_BEHAVIOUR", "echo");
    // While the deploy pulls, the function's status reports the pull (from its spec, with
    // no replica yet).
    let mut seen: Option<faas_core::FunctionStatus> = None;
    {
        let fref = env.fref("pulled");
        let deploy = docker.deploy(spec);
        tokio::pin!(deploy);
        loop {
            tokio::select! {
                biased;
                r = &mut deploy => { r.expect("deploy pulls the image"); break; }
                st = docker.status(&fref) => {
                    if let Ok(st) = st {
                        if st.pull.is_some() && seen.is_none() {
                            seen = Some(st);
                        }
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    let st = seen.expect("the status reported the pull while the deploy pulled");
    let pull = st.pull.as_ref().unwrap();
    assert_eq!(pull.image, image);
    assert!(pull.downloaded_bytes <= pull.total_bytes, "{pull:?}");
    assert_eq!((st.image.as_str(), st.available_replicas), (image.as_str(), 0));
    assert!(registry::present(&image), "the image was pulled");
    let after = docker.status(&env.fref("pulled")).await.unwrap();
    assert_eq!(after.pull, None, "no pull once deployed");
    let resp = docker.invoke(Invocation::post(env.fref("pulled"), "from the registry")).await;
    assert_eq!(resp.unwrap().into_body().collect_bytes().await.unwrap(), "from the registry");

    let absent = reg.reference("faas-rs/absent:1");
    let spec = FunctionSpec::new("absent", absent.clone()).namespace(env.ns.clone());
    refused_naming_image(docker.deploy(spec).await, &absent);
    assert!(
        docker.list(&env.ns).await.unwrap().iter().all(|f| f.name != "absent"),
        "a refused deploy left a function"
    );
    docker.remove(&env.fref("pulled")).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_nodes_pull_from_the_registry_and_an_unpullable_image_fails_the_function() {
    let env = common::setup("image_pull::swarm").await;
    let key = format!("faas-rs-test-{}", env.ns);
    let t = swarm_common::setup(&env.ns, Some(&key)).await;
    let (swarm, guard) = (&t.swarm, &t.guard);
    let mut reg = registry::start();
    let image = reg.push(&env.image, &format!("faas-rs/swarm-pulled:{}", env.ns));

    // The node pulls the image when it starts the task.
    let spec = FunctionSpec::new("pulled", image.clone())
        .namespace(env.ns.clone())
        .env("FIXTURE_BEHAVIOUR", "echo");
    swarm.deploy(spec).await.unwrap();
    let f = env.fref("pulled");
    eventually(BOUND, "the pulled function to be ready", || async {
        matches!(swarm.placement(&f).ok()?, Placement::Ready(_)).then_some(())
    })
    .await;
    let resp = swarm.invoke(Invocation::post(f.clone(), "pulled by the node")).await.unwrap();
    assert_eq!(resp.into_body().collect_bytes().await.unwrap(), "pulled by the node");
    assert!(registry::present(&image));

    // An image the registry lacks is refused at deploy, through the registry's answer.
    let absent = reg.reference("faas-rs/absent:1");
    refused_naming_image(
        swarm.deploy(FunctionSpec::new("absent", absent.clone()).namespace(env.ns.clone())).await,
        &absent,
    );

    // Deployed while the registry had it, placed only after the registry is gone: the tasks
    // are rejected, and after a few the function is failed with the engine's reason, scaled
    // to zero (no endless retries), and invocations answer 503 naming it.
    let later = reg.push(&env.image, &format!("faas-rs/vanishing:{}", env.ns));
    let mut spec = FunctionSpec::new("vanishing", later.clone())
        .namespace(env.ns.clone())
        .env("FIXTURE_BEHAVIOUR", "echo");
    spec.constraints = vec![format!("node.labels.{key} == rpi")];
    swarm.deploy(spec).await.unwrap();
    let v = env.fref("vanishing");
    eventually(BOUND, "the constrained function to pend", || async {
        matches!(swarm.placement(&v).ok()?, Placement::Pending(_)).then_some(())
    })
    .await;
    reg.stop();
    swarm_common::node_label(&guard.node, &key, Some("rpi"));
    let reason = eventually(BOUND, "the function to fail", || async {
        match swarm.placement(&v).ok()? {
            Placement::Failed(r) => Some(r),
            _ => None,
        }
    })
    .await;
    assert!(reason.contains("vanishing"), "the engine's reason names the image: {reason}");
    eventually(BOUND, "the failed function's service at zero replicas", || async {
        (swarm.status(&v).await.ok()?.replicas == 0).then_some(())
    })
    .await;
    let err = swarm.invoke(Invocation::post(v.clone(), "x")).await.unwrap_err();
    assert_eq!(err.http_status(), 503, "{err}");
    assert!(err.to_string().contains("vanishing"), "{err}");

    swarm.remove(&f).await.unwrap();
    swarm.remove(&v).await.unwrap();
    assert_eq!(swarm_common::services(&env.ns).await, Vec::<String>::new());
    swarm.shutdown();
}

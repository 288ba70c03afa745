//! State and faults against a real engine: a killed replica is replaced, a restarted backend
//! adopts running (and paused) replicas, an unreachable engine gives `Unavailable` and the
//! backend recovers, logs per instance and followed.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use faas_backend_docker::testing;
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{Error, Invocation, InvocationMeta, InvokeExt, LogsRequest, StartKind};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_from_outside_is_detected_and_replaced() {
    let env = common::setup("replica_killed_from_outside_is_detected_and_replaced").await;
    let _g = env.guard();
    let docker = env.builder().build().await.unwrap();
    docker.deploy(env.spec("k", "echo")).await.unwrap();
    let f = env.fref("k");
    assert_eq!(docker.call(&f.to_string(), "a").await.unwrap(), "a");
    let victim = docker.instances(&f).unwrap()[0].container_id.clone();
    testing::kill_container(&victim).await.unwrap();
    let replacement = eventually(Duration::from_secs(60), "a replacement replica", || async {
        let inst = docker.instances(&f).ok()?;
        (inst.len() == 1 && inst[0].container_id != victim).then(|| inst[0].container_id.clone())
    })
    .await;
    assert_eq!(testing::container_state(&replacement).await.unwrap(), "running");
    assert_eq!(testing::container_state(&victim).await.unwrap(), "missing", "dead one removed");
    assert_eq!(docker.call(&f.to_string(), "b").await.unwrap(), "b");
    assert_eq!(docker.status(&f).await.unwrap().available_replicas, 1);
    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_backend_adopts_functions_from_labels() {
    let env = common::setup("restarted_backend_adopts_functions_from_labels").await;
    let _g = env.guard();
    let first = env
        .builder()
        .pause_after(Duration::from_millis(300))
        .health_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    first.deploy(env.spec("run", "echo").env("K", "v")).await.unwrap();
    first.deploy(env.spec("idle", "echo").label(labels::SCALE_MIN, "0")).await.unwrap();
    let run = env.fref("run");
    first.scale(&run, 2).await.unwrap();
    for i in 0..4 {
        first.call(&run.to_string(), format!("x{i}")).await.unwrap();
    }
    let before: Vec<String> =
        first.instances(&run).unwrap().into_iter().map(|i| i.container_id).collect();
    eventually(Duration::from_secs(30), "both replicas paused", || async {
        first.instances(&run).unwrap().iter().all(|i| i.paused).then_some(())
    })
    .await;
    // The gateway goes away without removing anything.
    first.shutdown().await;
    drop(first);

    let second = env.builder().build().await.unwrap();
    let listed: Vec<String> =
        second.list(&env.ns).await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(listed, vec!["idle".to_string(), "run".to_string()]);
    let st = second.status(&run).await.unwrap();
    assert_eq!(st.env_vars["K"], "v", "spec restored from the labels");
    assert_eq!((st.replicas, st.available_replicas), (2, 2));
    let mut after: Vec<String> =
        second.instances(&run).unwrap().into_iter().map(|i| i.container_id).collect();
    let mut b = before.clone();
    b.sort();
    after.sort();
    assert_eq!(after, b, "the same containers, adopted");
    assert!(second.instances(&run).unwrap().iter().all(|i| i.paused));
    let r = second.invoke(Invocation::post(run.clone(), "back")).await.unwrap();
    assert_eq!(r.extensions().get::<InvocationMeta>().unwrap().start, StartKind::Resumed);
    assert_eq!(r.into_body().collect_bytes().await.unwrap(), "back");
    assert_eq!(second.status(&env.fref("idle")).await.unwrap().replicas, 0);
    assert_eq!(second.call(&env.fref("idle").to_string(), "wake").await.unwrap(), "wake");

    second.remove(&run).await.unwrap();
    second.remove(&env.fref("idle")).await.unwrap();
    second.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// A unix-socket proxy to the real engine that can be switched off (connections refused
/// and open ones cut), to play an unreachable engine without touching the shared dockerd.
struct EngineProxy {
    path: PathBuf,
    down: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl EngineProxy {
    async fn start() -> EngineProxy {
        let dir = std::env::temp_dir().join("faas-rs-docker-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.sock", testing::unique("engine")));
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (d, c) = (down.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut engine) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut engine) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        EngineProxy { path, down, cut }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_engine_is_unavailable_and_the_backend_recovers() {
    let env = common::setup("unreachable_engine_is_unavailable_and_the_backend_recovers").await;
    let _g = env.guard();
    let proxy = EngineProxy::start().await;
    let docker =
        env.builder().socket(proxy.path.to_string_lossy().to_string()).build().await.unwrap();
    docker.deploy(env.spec("up", "echo")).await.unwrap();
    let f = env.fref("up");
    assert_eq!(docker.call(&f.to_string(), "1").await.unwrap(), "1");

    proxy.set_down(true);
    match docker.deploy(env.spec("later", "echo")).await {
        Err(Error::Unavailable { reason }) => assert!(reason.contains("docker"), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match docker.scale(&f, 2).await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable from scale, got {other:?}"),
    }
    // A running replica still serves without the engine.
    assert_eq!(docker.call(&f.to_string(), "2").await.unwrap(), "2");
    // Building a backend against the dead engine fails cleanly too.
    match env.builder().socket(proxy.path.to_string_lossy().to_string()).build().await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable from build, got {other:?}"),
    }

    proxy.set_down(false);
    docker.scale(&f, 1).await.unwrap();
    docker.deploy(env.spec("later", "echo")).await.unwrap();
    assert_eq!(docker.call(&env.fref("later").to_string(), "3").await.unwrap(), "3");
    docker.remove(&f).await.unwrap();
    docker.remove(&env.fref("later")).await.unwrap();
    docker.shutdown().await;
    let _ = std::fs::remove_file(&proxy.path);
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_come_per_instance_and_can_be_followed() {
    let env = common::setup("logs_come_per_instance_and_can_be_followed").await;
    let _g = env.guard();
    let docker = env.builder().build().await.unwrap();
    docker.deploy(env.spec("lg", "log")).await.unwrap();
    let f = env.fref("lg");
    docker.scale(&f, 2).await.unwrap();
    for i in 0..6 {
        docker.call(&f.to_string(), format!("line-{i}")).await.unwrap();
    }
    let all = eventually(Duration::from_secs(30), "6 log lines", || async {
        let e = docker.read_logs(&f).await.ok()?;
        (e.iter().filter(|e| e.text.contains("line-")).count() == 6).then_some(e)
    })
    .await;
    let instances: std::collections::BTreeSet<String> =
        all.iter().filter(|e| e.text.contains("line-")).map(|e| e.instance.clone()).collect();
    assert_eq!(instances.len(), 2, "lines from both instances");
    let one = instances.iter().next().unwrap().clone();
    let req = LogsRequest { instance: Some(one.clone()), ..LogsRequest::for_function(f.clone()) };
    let only: Vec<_> = docker.logs(req).await.unwrap().collect().await;
    assert!(!only.is_empty());
    assert!(only.iter().all(|e| e.as_ref().unwrap().instance == one));
    let req = LogsRequest { tail: Some(1), ..LogsRequest::for_function(f.clone()) };
    assert_eq!(docker.logs(req).await.unwrap().collect::<Vec<_>>().await.len(), 1);

    let req = LogsRequest { follow: true, tail: Some(0), ..LogsRequest::for_function(f.clone()) };
    let mut stream = docker.logs(req).await.unwrap();
    // The stream may connect after the first call: keep calling until a line arrives.
    let caller = {
        let (docker, f) = (docker.clone(), f.to_string());
        tokio::spawn(async move {
            for i in 0..100 {
                let _ = docker.call(&f, format!("followed-line-{i}")).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = stream.next().await {
            let e = e.unwrap();
            if e.text.contains("followed-line") {
                return e;
            }
        }
        panic!("log stream ended")
    })
    .await
    .expect("the followed line arrives");
    caller.abort();
    assert_eq!(got.name, "lg");
    drop(stream);
    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

//! Logs that outlive their containers, against a real engine: the lines of replicas removed
//! by a scale down, a scale to zero or a replacement of a killed one stay listed (with their instance,
//! filters applied, merged in time order, followed along with live replicas) until the
//! function is removed; with retention disabled they go with the containers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::eventually;
use faas_backend_docker::{testing, DockerInvoker, LogRetention};
use faas_core::prelude::*;
use faas_core::spec::labels;
use faas_core::{FunctionRef, Invocation, InvokeExt, LogEntry, LogsRequest};
use futures::{StreamExt, TryStreamExt};

const BOUND: Duration = Duration::from_secs(60);

async fn logs(docker: &DockerInvoker, req: LogsRequest) -> Vec<LogEntry> {
    docker.logs(req).await.unwrap().try_collect().await.unwrap()
}

/// Waits until the engine no longer has the container.
async fn wait_missing(id: &str) {
    eventually(BOUND, &format!("container {id} to be removed"), || async {
        (testing::container_state(id).await.ok()? == "missing").then_some(())
    })
    .await
}

/// The live (not draining) replicas as (name, container id).
fn live(docker: &DockerInvoker, f: &FunctionRef) -> Vec<(String, String)> {
    docker
        .instances(f)
        .unwrap()
        .into_iter()
        .filter(|i| !i.draining)
        .map(|i| (i.name, i.container_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_replicas_scaled_down_and_to_zero_stay_listed() {
    let env = common::setup("logs_of_replicas_scaled_down_and_to_zero_stay_listed").await;
    let _g = env.guard();
    let docker = env.builder().build().await.unwrap();
    docker.deploy(env.spec("lz", "log").label(labels::SCALE_ZERO, "true")).await.unwrap();
    let f = env.fref("lz");
    docker.scale(&f, 2).await.unwrap();
    let replicas = eventually(BOUND, "2 live replicas", || async {
        let l = live(&docker, &f);
        (l.len() == 2).then_some(l)
    })
    .await;
    for i in 0..6 {
        docker.call(&f.to_string(), format!("kept-line-{i}")).await.unwrap();
    }
    let before = eventually(BOUND, "6 log lines", || async {
        let e = docker.read_logs(&f).await.ok()?;
        (e.iter().filter(|e| e.text.contains("kept-line-")).count() == 6).then_some(e)
    })
    .await;
    let by_line: BTreeMap<String, String> = before
        .iter()
        .filter(|e| e.text.contains("kept-line-"))
        .map(|e| (e.text.clone(), e.instance.clone()))
        .collect();
    let kept = |now: &[LogEntry]| -> BTreeMap<String, String> {
        now.iter()
            .filter(|e| e.text.contains("kept-line-"))
            .map(|e| (e.text.clone(), e.instance.clone()))
            .collect()
    };

    // Scale down to 1: one container goes, its lines stay.
    docker.scale(&f, 1).await.unwrap();
    let survivor = eventually(BOUND, "1 live replica", || async {
        let l = live(&docker, &f);
        (l.len() == 1).then(|| l[0].clone())
    })
    .await;
    let victim = replicas.iter().find(|r| r.0 != survivor.0).unwrap().clone();
    wait_missing(&victim.1).await;
    assert_eq!(kept(&docker.read_logs(&f).await.unwrap()), by_line, "after the scale down");

    // Scale to zero: the last container goes too.
    docker.scale(&f, 0).await.unwrap();
    wait_missing(&survivor.1).await;
    eventually(BOUND, "no replica listed", || async {
        docker.instances(&f).ok()?.is_empty().then_some(())
    })
    .await;
    let at_zero = docker.read_logs(&f).await.unwrap();
    assert_eq!(kept(&at_zero), by_line, "at zero: every line with its instance");
    assert!(at_zero.windows(2).all(|p| p[0].timestamp <= p[1].timestamp), "time order");
    for (name, id) in [&victim, &survivor] {
        let mine: Vec<&String> =
            by_line.iter().filter(|(_, inst)| *inst == name).map(|(l, _)| l).collect();
        for filter in [name.clone(), id[..12].to_string()] {
            let req = LogsRequest {
                instance: Some(filter.clone()),
                ..LogsRequest::for_function(f.clone())
            };
            let only = logs(&docker, req).await;
            assert!(only.iter().all(|e| &e.instance == name), "instance={filter}: {only:#?}");
            let texts: Vec<&String> = only.iter().map(|e| &e.text).collect();
            assert!(mine.iter().all(|l| texts.contains(l)), "instance={filter}: {only:#?}");
        }
    }
    let req = LogsRequest { tail: Some(2), ..LogsRequest::for_function(f.clone()) };
    assert_eq!(logs(&docker, req).await, at_zero[at_zero.len() - 2..].to_vec(), "tail=2");
    let t = at_zero.iter().find(|e| e.text.contains("kept-line-3")).unwrap().timestamp;
    let req = LogsRequest { since: Some(t), ..LogsRequest::for_function(f.clone()) };
    let since = logs(&docker, req).await;
    assert!(since.iter().all(|e| e.timestamp >= t), "since: {since:#?}");
    assert!(since.iter().any(|e| e.text.contains("kept-line-5")), "since: {since:#?}");

    // Scale from zero; following gives the kept lines, then a live replica's new ones.
    assert_eq!(docker.call(&f.to_string(), "after-zero").await.unwrap(), "logged");
    let req = LogsRequest { follow: true, ..LogsRequest::for_function(f.clone()) };
    let mut stream = docker.logs(req).await.unwrap();
    let caller = {
        let (docker, f) = (docker.clone(), f.to_string());
        tokio::spawn(async move {
            for i in 0..200 {
                let _ = docker.call(&f, format!("followed-line-{i}")).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let seen = tokio::time::timeout(BOUND, async {
        let mut seen = Vec::new();
        while let Some(e) = stream.next().await {
            let e = e.unwrap();
            let done = e.text.contains("followed-line");
            seen.push(e);
            if done {
                return seen;
            }
        }
        panic!("log stream ended: {seen:#?}")
    })
    .await
    .expect("a followed line arrives");
    caller.abort();
    drop(stream);
    assert_eq!(kept(&seen), by_line, "following starts with the kept lines: {seen:#?}");
    let followed = seen.last().unwrap();
    assert!(
        !by_line.values().any(|i| *i == followed.instance),
        "the followed line comes from the new replica: {followed:?}"
    );

    // Removing the function drops its lines: deployed again under the same name, it has none.
    docker.remove(&f).await.unwrap();
    docker.deploy(env.spec("lz", "log").label(labels::SCALE_MIN, "0")).await.unwrap();
    let again = docker.read_logs(&f).await.unwrap();
    assert!(kept(&again).is_empty(), "a removed function's lines outlived it: {again:#?}");
    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_keeps_its_last_lines() {
    let env = common::setup("a_killed_replica_keeps_its_last_lines").await;
    let _g = env.guard();
    let docker = env.builder().build().await.unwrap();
    docker.deploy(env.spec("cr", "crash")).await.unwrap();
    let f = env.fref("cr");
    assert_eq!(docker.call(&f.to_string(), "x").await.unwrap(), "alive");
    let (name, id) = live(&docker, &f)[0].clone();
    // The function process dies (the watchdog restarts it), leaving a last word in the log;
    // then the container itself is killed from outside and the backend replaces it.
    let crashed = docker.invoke(Invocation::get(f.clone(), "/?crash=1")).await;
    assert!(crashed.is_err(), "a crash fails the invocation");
    eventually(BOUND, "the crash line", || async {
        let e = docker.read_logs(&f).await.ok()?;
        e.iter().any(|e| e.text.contains("crashing on request")).then_some(())
    })
    .await;
    testing::kill_container(&id).await.unwrap();
    eventually(BOUND, "a replacement replica", || async {
        let l = live(&docker, &f);
        (l.len() == 1 && l[0].1 != id).then_some(())
    })
    .await;
    wait_missing(&id).await;
    let entries = docker.read_logs(&f).await.unwrap();
    assert!(
        entries.iter().any(|e| e.instance == name && e.text.contains("crashing on request")),
        "the killed replica's last lines are kept: {entries:#?}"
    );
    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retention_the_lines_go_with_the_container() {
    let env = common::setup("without_retention_the_lines_go_with_the_container").await;
    let _g = env.guard();
    let docker =
        env.builder().log_retention(LogRetention { lines: 0, bytes: 0 }).build().await.unwrap();
    docker.deploy(env.spec("nr", "log").label(labels::SCALE_ZERO, "true")).await.unwrap();
    let f = env.fref("nr");
    assert_eq!(docker.call(&f.to_string(), "doomed-line").await.unwrap(), "logged");
    eventually(BOUND, "the logged line", || async {
        let e = docker.read_logs(&f).await.ok()?;
        e.iter().any(|e| e.text.contains("doomed-line")).then_some(())
    })
    .await;
    let (_, id) = live(&docker, &f)[0].clone();
    docker.scale(&f, 0).await.unwrap();
    wait_missing(&id).await;
    eventually(BOUND, "no replica listed", || async {
        docker.instances(&f).ok()?.is_empty().then_some(())
    })
    .await;
    let entries = docker.read_logs(&f).await.unwrap();
    assert!(entries.is_empty(), "nothing retained: {entries:#?}");
    docker.remove(&f).await.unwrap();
    docker.shutdown().await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

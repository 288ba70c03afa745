//! The in-memory queue against the shared queue suite, plus its own backpressure tests.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use faas_core::queue::{QueueConsumer, QueuePublisher, QueuedInvocation};
use faas_core::{Delivery, Error};
use faas_queue::memory::MemoryQueue;

struct Memory(MemoryQueue);

#[async_trait]
impl QueueHarness for Memory {
    fn publisher(&self) -> Arc<dyn QueuePublisher> {
        Arc::new(self.0.publisher())
    }
    async fn consumer(&self) -> Arc<dyn QueueConsumer> {
        Arc::new(self.0.consumer())
    }
    async fn crash(
        &self,
        _consumer: Arc<dyn QueueConsumer>,
        unsettled: Vec<Delivery<QueuedInvocation>>,
    ) {
        // In one process a stopped consumer's deliveries are dropped, which puts them back.
        drop(unsettled);
    }
}

fn harness() -> Memory {
    Memory(MemoryQueue::new(10_000))
}

#[tokio::test]
async fn memory_round_trip() {
    round_trip(&harness()).await;
}

#[tokio::test]
async fn memory_per_function_order() {
    per_function_order(&harness()).await;
}

#[tokio::test]
async fn memory_nack_and_drop_redeliver() {
    nack_and_drop_redeliver(&harness()).await;
}

#[tokio::test]
async fn memory_unsettled_go_to_next_consumer() {
    unsettled_go_to_next_consumer(&harness()).await;
}

#[tokio::test]
async fn memory_worker_success_and_callback() {
    worker_success_and_callback(&harness()).await;
}

#[tokio::test]
async fn memory_worker_retries_and_dead_letters() {
    worker_retries_and_dead_letters(&harness()).await;
}

#[tokio::test]
async fn memory_worker_bad_input() {
    worker_bad_input(&harness()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_crash_loses_nothing() {
    crash_loses_nothing(&harness(), 400).await;
}

/// A full queue answers Overloaded (nothing is dropped silently); room frees as items are
/// consumed; a closed queue refuses new items and ends consumers once drained.
#[tokio::test]
async fn memory_backpressure_and_close() {
    let q = MemoryQueue::new(3);
    let p = q.publisher();
    for i in 0..3 {
        p.publish(item("f", format!("{i}"))).await.unwrap();
    }
    let err = p.publish(item("f", "overflow")).await.unwrap_err();
    assert!(matches!(err, Error::Overloaded { .. }), "{err:?}");
    assert_eq!(err.http_status(), 429);
    assert_eq!(q.len(), 3);
    let c = q.consumer();
    let d = c.next().await.unwrap().unwrap();
    assert_eq!(&d.item.body[..], b"0");
    // In-flight items do not count against the capacity.
    p.publish(item("f", "3")).await.unwrap();
    assert_eq!(q.in_flight(), 1);
    d.ack().await.unwrap();
    q.close();
    assert!(matches!(p.publish(item("f", "late")).await, Err(Error::Unavailable { .. })));
    let mut bodies = Vec::new();
    while let Some(d) = bounded("drain", c.next()).await.unwrap() {
        bodies.push(String::from_utf8(d.item.body.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(bodies, ["1", "2", "3"]);
}

/// A worker whose queue closes drains and stops by itself.
#[tokio::test]
async fn memory_worker_stops_when_queue_closes() {
    let rig = Rig::new();
    let q = MemoryQueue::new(100);
    let handle = rig.worker(Arc::new(q.consumer()), fast_config()).spawn();
    let it = item("echo", "x");
    q.publisher().publish(it.clone()).await.unwrap();
    q.close();
    bounded("worker to stop", async {
        while !handle.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let rec = rig.store.get_now(&it.call_id).unwrap();
    assert_eq!(rec.state, faas_core::queue::AsyncState::Succeeded);
    handle.shutdown().await.unwrap();
}

/// The gateway invoker (used by the `faas-queue-worker` binary) forwards method, path,
/// query, headers and body to `/function/NAME.NAMESPACE` and returns the answer.
#[tokio::test]
async fn gateway_invoker_forwards_to_the_function_route() {
    use faas_core::Invoker;
    let gw = CallbackServer::start(vec![]).await;
    let base = gw.url.trim_end_matches("/cb").to_string();
    let invoker =
        faas_queue::gateway::GatewayInvoker::new(&base, std::time::Duration::from_secs(30))
            .unwrap();
    let inv = item("echo", "payload").to_invocation().unwrap();
    let resp = bounded("invoke", invoker.invoke(inv)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = gw.wait_for(1).await;
    assert_eq!(got[0].uri.to_string(), "/function/echo.openfaas-fn/sub/path?a=1&b=two");
    assert_eq!(got[0].method, http::Method::POST);
    assert_eq!(got[0].headers["x-custom"], "v");
    assert_eq!(&got[0].body[..], b"payload");
    assert!(matches!(
        faas_queue::gateway::GatewayInvoker::new("ftp://x", std::time::Duration::from_secs(1)),
        Err(Error::InvalidSpec { field, .. }) if field == "gateway"
    ));
}

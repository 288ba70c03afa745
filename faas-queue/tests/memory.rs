//! The in-memory queue against the shared queue suite, plus its own backpressure tests.

mod common;

use std::sync::Arc;

use common::*;
use faas_core::prelude::*;
use faas_core::queue::{QueueConsumer, QueuePublisher};
use faas_core::Error;
use faas_queue::memory::MemoryQueue;

fn harness() -> InProcess {
    let q = MemoryQueue::new(10_000);
    InProcess {
        publisher: Arc::new(q.publisher()),
        consumer: Box::new(move || Arc::new(q.consumer())),
    }
}

queue_suite!(harness());

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
    assert_eq!(&d.item().body[..], b"0");
    // In-flight items do not count against the capacity.
    p.publish(item("f", "3")).await.unwrap();
    assert_eq!(q.in_flight(), 1);
    d.ack().await.unwrap();
    q.close();
    assert!(matches!(p.publish(item("f", "late")).await, Err(Error::Unavailable { .. })));
    let mut bodies = Vec::new();
    while let Some(d) = bounded("drain", c.next()).await.unwrap() {
        bodies.push(String::from_utf8(d.item().body.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(bodies, ["1", "2", "3"]);
}

#[tokio::test]
async fn memory_bounded_in_bytes_held_until_acknowledged() {
    use faas_queue::memory::{item_bytes, QueueLimits};
    let one = item_bytes(&item("f", vec![b'x'; 10_000]));
    // Room for three such items in bytes, far more in items.
    let q = MemoryQueue::with_limits(QueueLimits::new(1000, 3 * one + one / 2));
    let p = q.publisher();
    for _ in 0..3 {
        p.publish(item("f", vec![b'x'; 10_000])).await.unwrap();
    }
    assert_eq!(q.bytes(), 3 * one);
    let err = p.publish(item("f", vec![b'x'; 10_000])).await.unwrap_err();
    assert_eq!(err.http_status(), 429, "{err:?}");
    assert!(err.to_string().contains("bytes"), "{err}");
    // A delivered item still holds its bytes until it is acknowledged.
    let c = q.consumer();
    let d = c.next().await.unwrap().unwrap();
    assert_eq!(p.publish(item("f", vec![b'x'; 10_000])).await.unwrap_err().http_status(), 429);
    d.ack().await.unwrap();
    assert_eq!(q.bytes(), 2 * one);
    p.publish(item("f", vec![b'x'; 10_000])).await.unwrap();
    // A redelivered (dropped) item keeps its bytes counted, and nothing leaks at the end.
    let d = c.next().await.unwrap().unwrap();
    drop(d);
    assert_eq!(q.bytes(), 3 * one);
    while let Some(d) = c.try_next() {
        d.ack().await.unwrap();
    }
    assert_eq!((q.bytes(), q.len(), q.in_flight()), (0, 0, 0));
    // An item over a function's whole byte share can never fit: 413.
    let err = p.publish(item("f", vec![b'x'; 4 * one])).await.unwrap_err();
    assert_eq!(err.http_status(), 413, "{err:?}");
}

#[tokio::test]
async fn memory_one_function_cannot_starve_the_others() {
    use faas_queue::memory::QueueLimits;
    let q = MemoryQueue::with_limits(QueueLimits::new(100, 1 << 20).function_percent(25));
    let p = q.publisher();
    for i in 0..25 {
        p.publish(item("flood", format!("{i}"))).await.unwrap();
    }
    let err = p.publish(item("flood", "more")).await.unwrap_err();
    assert_eq!(err.http_status(), 429, "{err:?}");
    assert!(err.to_string().contains("flood") && err.to_string().contains("share"), "{err}");
    // Another function still gets in; so does the flood once its items are taken.
    p.publish(item("quiet", "hello")).await.unwrap();
    let c = q.consumer();
    let d = c.next().await.unwrap().unwrap();
    assert_eq!(d.item().function, "flood");
    p.publish(item("flood", "again")).await.unwrap();
    assert_eq!(p.publish(item("flood", "more")).await.unwrap_err().http_status(), 429);
    d.ack().await.unwrap();
    // Batches are held to the same shares.
    let results = p.publish_batch((0..3).map(|i| item("flood", format!("b{i}"))).collect()).await;
    assert!(results.iter().all(|r| r.as_ref().is_err_and(|e| e.http_status() == 429)));
    let defaults = QueueLimits::default();
    assert_eq!((defaults.items, defaults.bytes), (100_000, 256 << 20));
    assert_eq!((defaults.function_items, defaults.function_bytes), (25_000, 64 << 20));
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

/// `next_batch` hands out what is ready (up to its limit) under one wake-up; each delivery
/// is still settled on its own, and a closed queue ends batches once drained.
#[tokio::test]
async fn memory_next_batch() {
    let q = MemoryQueue::new(100);
    let p = q.publisher();
    let c = q.consumer();
    let items: Vec<_> = (0..5).map(|i| item("f", format!("{i}"))).collect();
    assert!(p.publish_batch(items.clone()).await.iter().all(Result::is_ok));
    let first = bounded("batch", c.next_batch(3)).await.unwrap();
    assert_eq!(
        first.iter().map(|d| d.item().call_id.clone()).collect::<Vec<_>>(),
        [items[0].call_id.clone(), items[1].call_id.clone(), items[2].call_id.clone()]
    );
    let rest = bounded("batch", c.next_batch(10)).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(q.in_flight(), 5);
    // Nacked and dropped deliveries come back, first.
    let mut first = first.into_iter();
    first.next().unwrap().nack().await.unwrap();
    drop(first.next());
    let again = bounded("batch", c.next_batch(10)).await.unwrap();
    assert_eq!(again.len(), 2);
    for d in again.into_iter().chain(first).chain(rest) {
        d.ack().await.unwrap();
    }
    assert_eq!(q.in_flight(), 0);
    // A waiting batch is woken by a publish.
    let waiting = tokio::spawn({
        let c = c.clone();
        async move { c.next_batch(10).await.unwrap().len() }
    });
    tokio::task::yield_now().await;
    p.publish(item("f", "late")).await.unwrap();
    let n = bounded("woken batch", waiting).await.unwrap();
    assert_eq!(n, 1);
    q.close();
    // The delivery of "late" was dropped with the task's vector: it is back, then the end.
    let last = bounded("batch", c.next_batch(10)).await.unwrap();
    assert_eq!(last.len(), 1);
    drop(last);
    let last = bounded("batch", c.next_batch(10)).await.unwrap();
    for d in last {
        d.ack().await.unwrap();
    }
    assert!(bounded("end", c.next_batch(10)).await.unwrap().is_empty());
}

/// A function that waits until released, counting how many run at once.
struct Gate {
    running: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
    started: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    fn register(rig: &Rig, name: &str) -> Gate {
        let gate = Gate {
            running: Arc::default(),
            most: Arc::default(),
            started: Arc::default(),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        let (running, most, started, release) =
            (gate.running.clone(), gate.most.clone(), gate.started.clone(), gate.release.clone());
        rig.invoker.register(name, move |_req| {
            let (running, most, started, release) =
                (running.clone(), most.clone(), started.clone(), release.clone());
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                let now = running.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                started.notify_waiters();
                release.acquire().await.unwrap().forget();
                running.fetch_sub(1, SeqCst);
                Ok(response(200, "done"))
            }
        });
        gate
    }

    /// Waits (bounded) until `n` invocations are running at once.
    async fn wait_running(&self, n: usize) {
        bounded("invocations to start", async {
            loop {
                let started = self.started.notified();
                tokio::pin!(started);
                started.as_mut().enable();
                if self.running.load(std::sync::atomic::Ordering::SeqCst) >= n {
                    return;
                }
                started.await;
            }
        })
        .await
    }
}

/// The record of an accepted invocation is there at once (`queued`, or further along);
/// while a long invocation runs, readers see `running` with its attempt; then `succeeded`.
#[tokio::test]
async fn memory_records_visible_while_queued_and_running() {
    use faas_core::queue::AsyncState;
    let rig = Rig::new();
    let gate = Gate::register(&rig, "long");
    let q = MemoryQueue::new(100);
    let worker = rig.worker(Arc::new(q.consumer()), fast_config()).spawn();
    let publisher = faas_queue::TrackedPublisher::new(Arc::new(q.publisher()), rig.store.clone());
    let it = item("long", "x");
    publisher.publish(it.clone()).await.unwrap();
    let rec = rig.store.get_now(&it.call_id).expect("a record right after publishing");
    assert!(matches!(rec.state, AsyncState::Queued | AsyncState::Running), "{:?}", rec.state);
    // Also for a batch.
    let batch: Vec<_> = (0..3).map(|i| item("echo", format!("{i}"))).collect();
    assert!(publisher.publish_batch(batch.clone()).await.iter().all(Result::is_ok));
    for b in &batch {
        assert!(rig.store.get_now(&b.call_id).is_some(), "a record right after publishing");
    }
    gate.wait_running(1).await;
    let rec = bounded("the running record", async {
        loop {
            match rig.store.get_now(&it.call_id) {
                Some(r) if r.state == AsyncState::Running => return r,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert_eq!(rec.attempts, 1);
    gate.release.add_permits(1);
    let rec = wait_settled(&rig.store, &it.call_id).await;
    assert_eq!(rec.state, AsyncState::Succeeded);
    assert_eq!(rec.attempts, 1);
    for b in &batch {
        assert_eq!(wait_settled(&rig.store, &b.call_id).await.state, AsyncState::Succeeded);
    }
    worker.shutdown().await.unwrap();
}

/// No more than `function_concurrency` invocations of one function run at once (others
/// wait their turn, on one or several worker loops); other functions are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_function_concurrency_bound() {
    use faas_core::queue::AsyncState;
    let rig = Rig::new();
    let gate = Gate::register(&rig, "bounded");
    let q = MemoryQueue::new(100);
    let config = faas_queue::WorkerConfig { function_concurrency: 2, ..fast_config() };
    let worker = rig.worker(Arc::new(q.consumer()), config).spawn();
    let publisher = faas_queue::TrackedPublisher::new(Arc::new(q.publisher()), rig.store.clone());
    let bounded_items: Vec<_> = (0..6).map(|i| item("bounded", format!("{i}"))).collect();
    assert!(publisher.publish_batch(bounded_items.clone()).await.iter().all(Result::is_ok));
    gate.wait_running(2).await;
    // Meanwhile another function goes through.
    let other = item("echo", "other");
    publisher.publish(other.clone()).await.unwrap();
    assert_eq!(wait_settled(&rig.store, &other.call_id).await.state, AsyncState::Succeeded);
    assert_eq!(gate.running.load(std::sync::atomic::Ordering::SeqCst), 2);
    gate.release.add_permits(6);
    for i in &bounded_items {
        assert_eq!(wait_settled(&rig.store, &i.call_id).await.state, AsyncState::Succeeded);
    }
    assert_eq!(gate.most.load(std::sync::atomic::Ordering::SeqCst), 2, "at most 2 at once");
    worker.shutdown().await.unwrap();
}

/// An aborted worker (a crash) leaves nothing in flight once `abort` returns: its lanes run
/// on several runtime threads, and every delivery they held, whether its invocation was
/// running or waiting for the function, is back in the queue, whole, for the next worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_abort_hands_every_delivery_back() {
    let rig = Rig::new();
    let gate = Gate::register(&rig, "stuck");
    let q = MemoryQueue::new(100);
    let config = faas_queue::WorkerConfig { function_concurrency: 3, ..fast_config() };
    let worker = rig.worker(Arc::new(q.consumer()), config).spawn();
    let items: Vec<_> = (0..10).map(|i| item("stuck", format!("{i}"))).collect();
    assert!(q.publisher().publish_batch(items.clone()).await.iter().all(Result::is_ok));
    gate.wait_running(3).await;
    bounded("every item delivered", async {
        while worker.stats().received.load(std::sync::atomic::Ordering::SeqCst) < 10 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(q.in_flight(), 10);
    worker.abort().await;
    assert_eq!(q.in_flight(), 0, "a delivery outlived the aborted worker");
    assert_eq!(q.len(), 10);
    let consumer = q.consumer();
    let mut back = Vec::new();
    while let Some(d) = consumer.try_next() {
        // Handed back at least once (a lane not yet aborted may take some that another
        // lane handed back, and hand them back again: counted twice).
        assert!(d.redeliveries >= 1, "{d:?}");
        back.push(d.item().clone());
        d.ack().await.unwrap();
    }
    back.sort_by(|a, b| a.body.cmp(&b.body));
    assert_eq!(back, items, "the items came back as they were published");
}

/// Through a `TrackedPublisher`, every call id has a record from the moment it is
/// published: `queued` when accepted, `failed` with the refusal when the queue is full,
/// one by one and in a batch.
#[tokio::test]
async fn memory_tracked_refusals_are_recorded_failed() {
    use faas_core::queue::AsyncState;
    let q = MemoryQueue::new(2);
    let store = Arc::new(faas_queue::MemoryActivationStore::new(100));
    let p = faas_queue::TrackedPublisher::new(Arc::new(q.publisher()), store.clone());
    let first = item("f", "0");
    p.publish(first.clone()).await.unwrap();
    assert_eq!(store.get_now(&first.call_id).unwrap().state, AsyncState::Queued);
    let batch: Vec<_> = (1..4).map(|i| item("f", format!("{i}"))).collect();
    let results = p.publish_batch(batch.clone()).await;
    assert!(results[0].is_ok());
    for (b, r) in batch.iter().zip(&results).skip(1) {
        assert!(matches!(r, Err(Error::Overloaded { .. })), "{r:?}");
        let rec = store.get_now(&b.call_id).expect("a refused call's record");
        assert_eq!(rec.state, AsyncState::Failed);
        assert_eq!(rec.status, Some(429));
        assert!(rec.error.as_deref().unwrap_or("").contains("refused by the queue"), "{rec:?}");
    }
    assert_eq!(store.get_now(&batch[0].call_id).unwrap().state, AsyncState::Queued);
    let one = item("f", "4");
    assert!(p.publish(one.clone()).await.is_err());
    assert_eq!(store.get_now(&one.call_id).unwrap().state, AsyncState::Failed);
    assert_eq!(q.len(), 2);
}

/// A batch larger than a `TrackedPublisher`'s chunk: one result per item, in order, and
/// every item recorded by what happened to it.
#[tokio::test]
async fn memory_tracked_large_batch_results_in_order() {
    use faas_core::queue::AsyncState;
    let n = 2 * faas_queue::TRACKED_CHUNK + 88;
    let room = faas_queue::TRACKED_CHUNK + 10;
    let q = MemoryQueue::new(room);
    let store = Arc::new(faas_queue::MemoryActivationStore::new(10_000));
    let p = faas_queue::TrackedPublisher::new(Arc::new(q.publisher()), store.clone());
    let batch: Vec<_> = (0..n).map(|i| item("f", format!("{i}"))).collect();
    let results = p.publish_batch(batch.clone()).await;
    assert_eq!(results.len(), n);
    for (i, (b, r)) in batch.iter().zip(&results).enumerate() {
        let state = store.get_now(&b.call_id).expect("a record").state;
        if i < room {
            assert!(r.is_ok(), "{i}: {r:?}");
            assert_eq!(state, AsyncState::Queued, "{i}");
        } else {
            assert!(matches!(r, Err(Error::Overloaded { .. })), "{i}: {r:?}");
            assert_eq!(state, AsyncState::Failed, "{i}");
        }
    }
    let c = q.consumer();
    for b in batch.iter().take(room) {
        let d = c.try_next().expect("the accepted items, in order");
        assert_eq!(d.item().call_id, b.call_id);
        d.ack().await.unwrap();
    }
    assert!(c.try_next().is_none());
}

/// The queue's depth: what waits per function, what a worker holds, and the dead letters of
/// the sink the queue made, per function and in all, through the publisher's contract
/// method (and a `TrackedPublisher` around it).
#[tokio::test]
async fn memory_depth_per_function_and_dead_letters() {
    use faas_core::queue::{AsyncState, FunctionQueueDepth};
    let q = MemoryQueue::new(100);
    let rig = Rig::new();
    rig.invoker.register("down", |_req| async { Ok(response(503, "down")) });
    let p: Arc<dyn QueuePublisher> =
        Arc::new(faas_queue::TrackedPublisher::new(Arc::new(q.publisher()), rig.store.clone()));
    let empty = p.depth().await.unwrap();
    assert_eq!((empty.waiting, empty.dead_letters, empty.in_flight), (0, 0, Some(0)));
    assert!(empty.per_function && empty.functions.is_empty());

    for f in ["a", "a", "b"] {
        p.publish(item(f, "x")).await.unwrap();
    }
    let d = p.depth().await.unwrap();
    assert_eq!(d.waiting, 3);
    let ns = faas_core::spec::DEFAULT_NAMESPACE;
    assert_eq!(d.functions[&format!("a.{ns}")], FunctionQueueDepth { waiting: 2, dead_letters: 0 });
    assert_eq!(d.functions[&format!("b.{ns}")].waiting, 1);
    let delivery = q.consumer().next().await.unwrap().unwrap();
    let d = p.depth().await.unwrap();
    assert_eq!((d.waiting, d.in_flight), (2, Some(1)));
    assert_eq!(d.functions[&format!("a.{ns}")].waiting, 1);
    delivery.ack().await.unwrap();

    let config = faas_queue::WorkerConfig { max_attempts: 2, ..fast_config() };
    let worker = faas_queue::Worker::new(
        rig.invoker.clone(),
        Arc::new(q.consumer()),
        rig.store.clone(),
        config,
    )
    .with_dead_letters(Arc::new(q.dead_letters()))
    .spawn();
    let (d1, d2) = (item("down", "1"), item("down", "2"));
    p.publish(d1.clone()).await.unwrap();
    p.publish(d2.clone()).await.unwrap();
    for id in [&d1.call_id, &d2.call_id] {
        assert_eq!(wait_settled(&rig.store, id).await.state, AsyncState::DeadLettered);
    }
    let d = bounded("the queue drained", async {
        loop {
            let d = p.depth().await.unwrap();
            if d.waiting == 0 && d.in_flight == Some(0) {
                return d;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(d.dead_letters, 2);
    assert_eq!(
        d.functions[&format!("down.{ns}")],
        FunctionQueueDepth { waiting: 0, dead_letters: 2 }
    );
    assert!(!d.functions.contains_key(&format!("a.{ns}")), "{d:?}");
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["deadLetters"], 2);
    assert_eq!(json["functions"][format!("down.{ns}")]["deadLetters"], 2);
    worker.shutdown().await.unwrap();
}

/// What a test store holds its writes for.
enum Hold {
    /// `queued` records wait at the barrier (which the publisher also waits at).
    Queued(Arc<tokio::sync::Barrier>),
    /// Final records wait until the counter reaches the number (a store slow to
    /// acknowledge, as a broker is).
    Finals(Arc<std::sync::atomic::AtomicU64>, u64),
    /// `running` records wait until the counter reaches the number.
    Running(Arc<std::sync::atomic::AtomicU64>, u64),
}

/// A store that holds some writes (see [`Hold`]), or fails them; and a publisher whose
/// publishes wait at a barrier.
struct Gated<T, H> {
    inner: T,
    hold: H,
    fail: bool,
}

#[async_trait::async_trait]
impl faas_core::queue::ActivationStore for Gated<Arc<faas_queue::MemoryActivationStore>, Hold> {
    async fn put(&self, record: faas_core::queue::AsyncActivation) -> faas_core::Result<()> {
        match &self.hold {
            // Only the `queued` record meets the publish (a refusal's `failed` one comes
            // after).
            Hold::Queued(b) if record.state == faas_core::queue::AsyncState::Queued => {
                b.wait().await;
            }
            Hold::Finals(n, until) | Hold::Running(n, until)
                if matches!(&self.hold, Hold::Finals(..)) && record.state.is_terminal()
                    || matches!(&self.hold, Hold::Running(..))
                        && record.state == faas_core::queue::AsyncState::Running =>
            {
                while n.load(std::sync::atomic::Ordering::SeqCst) < *until {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
            _ => {}
        }
        if self.fail {
            return Err(Error::unavailable("the store is down"));
        }
        self.inner.put(record).await
    }
    async fn get(
        &self,
        call_id: &faas_core::InvocationId,
    ) -> faas_core::Result<Option<faas_core::queue::AsyncActivation>> {
        self.inner.get(call_id).await
    }
}

#[async_trait::async_trait]
impl QueuePublisher for Gated<faas_queue::MemoryPublisher, Arc<tokio::sync::Barrier>> {
    async fn publish(&self, item: faas_core::queue::QueuedInvocation) -> faas_core::Result<()> {
        self.hold.wait().await;
        self.inner.publish(item).await
    }
}

/// An overlapped `TrackedPublisher` writes the `queued` record while it publishes the item
/// (a store and a queue that each wait for one another pass; one after the other they would
/// not), answers the publish's outcome when the record fails, and records a refusal as
/// `failed` as the sequential one does.
#[tokio::test]
async fn memory_overlapped_tracking_writes_the_record_while_publishing() {
    use faas_core::queue::AsyncState;
    let within = std::time::Duration::from_secs(10);
    let q = MemoryQueue::new(1);
    let records = Arc::new(faas_queue::MemoryActivationStore::new(100));
    let rig = |fail: bool| {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        faas_queue::TrackedPublisher::overlapped(
            Arc::new(Gated { inner: q.publisher(), hold: barrier.clone(), fail: false }),
            Arc::new(Gated { inner: records.clone(), hold: Hold::Queued(barrier), fail }),
        )
    };
    let first = item("f", "0");
    let published = tokio::time::timeout(within, rig(false).publish(first.clone())).await;
    assert!(matches!(published, Ok(Ok(()))), "record and publish at once: {published:?}");
    assert_eq!(records.get_now(&first.call_id).unwrap().state, AsyncState::Queued);

    // The queue is full now: refused, and its record says so.
    let second = item("f", "1");
    let refused = tokio::time::timeout(within, rig(false).publish(second.clone())).await;
    assert!(matches!(refused, Ok(Err(Error::Overloaded { .. }))), "{refused:?}");
    let rec = records.get_now(&second.call_id).expect("a refused call's record");
    assert_eq!(rec.state, AsyncState::Failed);
    assert!(rec.error.as_deref().unwrap_or("").contains("refused by the queue"), "{rec:?}");

    // A record that cannot be written does not refuse a call the queue took.
    let c = q.consumer();
    c.try_next().expect("the first call").ack().await.unwrap();
    let third = item("f", "2");
    let accepted = tokio::time::timeout(within, rig(true).publish(third.clone())).await;
    assert!(matches!(accepted, Ok(Ok(()))), "{accepted:?}");
    assert!(records.get_now(&third.call_id).is_none());
    assert_eq!(c.try_next().expect("the third call").item().call_id, third.call_id);
}

/// The function's slot (`function_concurrency`) is held while the function runs, not while
/// the call's records are written: with one slot, the second call runs while the first
/// one's final record still waits for the store (which waits for that second call), both
/// for a function that answers at once and for one that has to be waited for; and while the
/// `running` record of a call the worker waited for waits so (as a broker's acknowledgement
/// takes longer than a quick function).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_the_function_slot_is_free_while_the_records_are_written() {
    use faas_core::queue::AsyncState;
    let invoker = TestInvoker::new();
    let invoked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = invoked.clone();
    invoker.register("quick", move |_req| {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok(response(200, "quick")) }
    });
    let n = invoked.clone();
    invoker.register("waits", move |_req| {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            tokio::task::yield_now().await;
            Ok(response(200, "waits"))
        }
    });
    let records = Arc::new(faas_queue::MemoryActivationStore::default());
    let holds = [
        ("quick", Hold::Finals(invoked.clone(), 2)),
        ("waits", Hold::Finals(invoked.clone(), 4)),
        ("waits", Hold::Running(invoked.clone(), 6)),
    ];
    for (function, hold) in holds {
        let q = MemoryQueue::new(10);
        let store = Arc::new(Gated { inner: records.clone(), hold, fail: false });
        let config = faas_queue::WorkerConfig { function_concurrency: 1, ..fast_config() };
        let worker =
            faas_queue::Worker::new(invoker.clone(), Arc::new(q.consumer()), store, config).spawn();
        let calls = [item(function, "1"), item(function, "2")];
        for c in &calls {
            q.publisher().publish(c.clone()).await.unwrap();
        }
        for c in &calls {
            let rec = wait_settled(&records, &c.call_id).await;
            assert_eq!((rec.state, rec.attempts), (AsyncState::Succeeded, 1));
        }
        worker.shutdown().await.unwrap();
    }
}

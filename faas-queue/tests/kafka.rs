//! The Kafka queue against the shared queue suite, on librdkafka's mock cluster (the real
//! Kafka protocol over loopback), plus Kafka-specific tests: rebalancing across workers in
//! one group, malformed messages, the dead-letter topic.
#![cfg(feature = "kafka")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use faas_core::queue::{QueueConsumer, QueuePublisher, QueuedInvocation};
use faas_core::Delivery;
use faas_queue::kafka::{KafkaConfig, KafkaConsumer, KafkaPublisher};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

const PARTITIONS: i32 = 4;

struct Kafka {
    config: KafkaConfig,
    publisher: Arc<KafkaPublisher>,
    consumers: Mutex<Vec<Arc<KafkaConsumer>>>,
}

/// The mock cluster (not `Send`: it stays in the test's own future). Drop it after
/// [`Kafka::finish`]: consumers must leave their group while the cluster is up.
type Cluster = MockCluster<'static, DefaultProducerContext>;

impl Kafka {
    fn new(nack_on_drop: bool) -> (Cluster, Kafka) {
        let cluster = MockCluster::new(1).expect("mock cluster");
        let mut config = KafkaConfig::new(cluster.bootstrap_servers())
            .property("session.timeout.ms", "2500")
            .property("heartbeat.interval.ms", "250")
            .property("topic.metadata.refresh.interval.ms", "500");
        config.nack_on_drop = nack_on_drop;
        config.commit_interval = Duration::from_millis(100);
        config.close_timeout = Duration::from_secs(20);
        cluster.create_topic(&config.topic, PARTITIONS, 1).expect("topic");
        cluster.create_topic(&config.dead_letter_topic, 1, 1).expect("dead-letter topic");
        let publisher = Arc::new(KafkaPublisher::new(&config).expect("publisher"));
        (cluster, Kafka { config, publisher, consumers: Mutex::new(Vec::new()) })
    }

    fn new_consumer(&self) -> Arc<KafkaConsumer> {
        self.keep(KafkaConsumer::new(&self.config).expect("consumer"))
    }

    /// A consumer republishing and dead-lettering with the publisher's producer, as
    /// `faas up`'s is.
    fn new_sharing_consumer(&self) -> Arc<KafkaConsumer> {
        self.keep(KafkaConsumer::sharing(&self.publisher, &self.config).expect("consumer"))
    }

    fn keep(&self, c: KafkaConsumer) -> Arc<KafkaConsumer> {
        let c = Arc::new(c);
        self.consumers.lock().unwrap().push(c.clone());
        c
    }

    /// Closes every consumer (bounded) before the cluster goes.
    async fn finish(self) {
        let consumers = std::mem::take(&mut *self.consumers.lock().unwrap());
        for c in consumers {
            bounded("closing a consumer", c.close()).await.expect("consumer closed");
        }
        drop(self);
    }

    /// Reads the dead-letter topic until `n` letters are in (bounded).
    async fn dead_letters(&self, n: usize) -> Vec<(Vec<u8>, Option<String>)> {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::message::{Headers, Message};
        use rdkafka::ClientConfig;
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .set("group.id", "dead-letter-reader")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&[&self.config.dead_letter_topic]).unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            let m = bounded("reading dead letters", c.recv()).await.unwrap();
            let err = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == faas_queue::kafka::ERROR_HEADER))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            out.push((m.payload().unwrap_or_default().to_vec(), err));
        }
        // Leave the group off the async thread (see faas_queue::kafka's docs on closing).
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            drop(c);
            let _ = tx.send(());
        });
        bounded("closing the dead-letter reader", rx).await.unwrap();
        out
    }
}

#[async_trait]
impl QueueHarness for Kafka {
    fn publisher(&self) -> Arc<dyn QueuePublisher> {
        self.publisher.clone()
    }
    async fn consumer(&self) -> Arc<dyn QueueConsumer> {
        self.new_consumer()
    }
    async fn crash(
        &self,
        consumer: Arc<dyn QueueConsumer>,
        unsettled: Vec<Delivery<QueuedInvocation>>,
    ) {
        // An aborted worker settles nothing; its group membership ends by leaving (which
        // commits only what was acknowledged). A crash, which leaves no group, is tested with
        // a killed worker process in worker_bin.rs.
        for d in unsettled {
            // A crash runs no destructor: a dropped delivery would nack (settle) itself.
            #[allow(clippy::mem_forget)]
            std::mem::forget(d);
        }
        bounded("closing the crashed consumer", consumer.close()).await.expect("closed");
    }
}

/// Waits (bounded) until every one of `items` has a `succeeded` record in `store`.
async fn all_succeeded(store: &faas_queue::MemoryActivationStore, items: &[QueuedInvocation]) {
    use faas_core::queue::AsyncState;
    bounded("every call to succeed", async {
        while !items
            .iter()
            .all(|i| store.get_now(&i.call_id).is_some_and(|r| r.state == AsyncState::Succeeded))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_round_trip() {
    let (cluster, k) = Kafka::new(true);
    round_trip(&k).await;
    k.finish().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_per_function_order() {
    let (cluster, k) = Kafka::new(true);
    per_function_order(&k).await;
    k.finish().await;
    drop(cluster);
}

/// Without `X-Queue-Key`, one function's calls are spread over every partition (so every
/// worker of the group shares a hot function).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_one_functions_calls_spread_over_every_partition() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (cluster, k) = Kafka::new(true);
    let items: Vec<_> = (0..64).map(|i| common::item("hot", format!("{i}"))).collect();
    let results = k.publisher.publish_batch(items).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &k.config.brokers)
        .create()
        .expect("reader");
    let topic = k.config.topic.clone();
    let counts = tokio::task::spawn_blocking(move || {
        (0..PARTITIONS)
            .map(|p| {
                let (low, high) = reader
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .expect("watermarks");
                high - low
            })
            .collect::<Vec<i64>>()
    })
    .await
    .expect("reading watermarks");
    assert_eq!(counts.iter().sum::<i64>(), 64, "{counts:?}");
    assert!(counts.iter().all(|n| *n > 0), "every partition has some of them: {counts:?}");
    k.finish().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_nack_and_drop_redeliver() {
    let (cluster, k) = Kafka::new(true);
    nack_and_drop_redeliver(&k).await;
    k.finish().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unsettled_go_to_next_consumer() {
    let (cluster, k) = Kafka::new(false);
    unsettled_go_to_next_consumer(&k).await;
    k.finish().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_worker_success_and_callback() {
    let (cluster, k) = Kafka::new(true);
    worker_success_and_callback(&k).await;
    k.finish().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_worker_retries_and_dead_letters() {
    let (cluster, k) = Kafka::new(true);
    worker_retries_and_dead_letters(&k).await;
    k.finish().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_worker_bad_input() {
    let (cluster, k) = Kafka::new(true);
    worker_bad_input(&k).await;
    k.finish().await;
    drop(cluster);
}

/// Worker A is aborted mid-invocation (its deliveries are never settled, not even nacked:
/// only the uncommitted offsets bring them back); its consumer then leaves the group
/// cleanly; worker B in the same group takes the partitions over; every accepted invocation
/// completes. This is an abort, not a crash: a crashed process leaves no group, and the real
/// crash (SIGKILL of a worker process, its session timing out) is `worker_bin.rs`'s
/// `a_killed_worker_loses_nothing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_aborted_worker_loses_nothing() {
    let (cluster, k) = Kafka::new(false);
    crash_loses_nothing(&k, 400).await;
    k.finish().await;
    drop(cluster);
}

/// Several workers in one group share the partitions; members joining and leaving
/// rebalance them; every invocation completes, and each worker gets its share: the third,
/// joining late, runs part of what is published after it joined, the one that left none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_rebalance_across_workers() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    let (cluster, k) = Kafka::new(true);
    let store = Arc::new(faas_queue::MemoryActivationStore::default());
    let per_worker: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let done: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let make_worker = |i: usize, consumer: Arc<KafkaConsumer>| {
        let inv = TestInvoker::new();
        for f in 0..16 {
            let (count, done) = (per_worker[i].clone(), done.clone());
            inv.register(&format!("f{f}"), move |req| {
                let (count, done) = (count.clone(), done.clone());
                async move {
                    let body = req.into_body().collect_bytes().await?;
                    count.fetch_add(1, Ordering::SeqCst);
                    *done
                        .lock()
                        .unwrap()
                        .entry(String::from_utf8_lossy(&body).into_owned())
                        .or_default() += 1;
                    Ok(response(200, "ok"))
                }
            });
        }
        faas_queue::Worker::new(inv, consumer, store.clone(), fast_config()).spawn()
    };
    let c0 = k.new_consumer();
    let c1 = k.new_consumer();
    let w0 = make_worker(0, c0.clone());
    let w1 = make_worker(1, c1.clone());
    bounded("both workers to get partitions", async {
        while c0.assignment().is_empty() || c1.assignment().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut a0 = c0.assignment();
    a0.extend(c1.assignment());
    a0.sort();
    assert_eq!(a0, (0..PARTITIONS).collect::<Vec<_>>(), "the partitions are split between them");

    let items: Vec<_> =
        (0..600).map(|i| item(&format!("f{}", i % 16), format!("job-{i}"))).collect();
    let p = faas_queue::TrackedPublisher::new(k.publisher.clone(), store.clone());
    assert!(p.publish_batch(items[..300].to_vec()).await.iter().all(Result::is_ok));
    bounded("both workers to invoke", async {
        while per_worker[0].load(Ordering::SeqCst) == 0 || per_worker[1].load(Ordering::SeqCst) == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // A third worker joins while work is going on, then the first leaves.
    let c2 = k.new_consumer();
    let w2 = make_worker(2, c2.clone());
    bounded("the third worker to get partitions", async {
        while c2.assignment().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    bounded("worker 0 to shut down", w0.shutdown()).await.unwrap();
    // Once the group has settled on workers 1 and 2 (each some partitions, all covered,
    // none twice), the second half goes to them alone.
    bounded("workers 1 and 2 to share every partition", async {
        loop {
            let (a1, a2) = (c1.assignment(), c2.assignment());
            let mut all: Vec<_> = a1.iter().chain(&a2).copied().collect();
            all.sort();
            if !a1.is_empty() && !a2.is_empty() && all == (0..PARTITIONS).collect::<Vec<_>>() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let before: Vec<u64> = per_worker.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert!(p.publish_batch(items[300..].to_vec()).await.iter().all(Result::is_ok));
    all_succeeded(&store, &items).await;
    let done = done.lock().unwrap().clone();
    assert_eq!(done.len(), items.len());
    let counts: Vec<u64> = per_worker.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let second: Vec<u64> = counts.iter().zip(&before).map(|(c, b)| c - b).collect();
    eprintln!("rebalance: invocations per worker {counts:?}, of the second half {second:?}");
    // Each worker's share: 0 and 1 both worked on the first half; of the second half, the
    // departed worker 0 ran none, and workers 1 and 2 each ran some, together all of it
    // (more only if a rebalance redelivered some).
    assert!(before[0] > 0 && before[1] > 0, "first half per worker: {before:?}");
    assert_eq!(second[0], 0, "worker 0 ran invocations after it left: {second:?}");
    assert!(second[1] > 0, "worker 1 ran none of the second half: {second:?}");
    assert!(second[2] > 0, "the third worker ran none of the second half: {second:?}");
    assert!(second[1] + second[2] >= 300, "second half not all run: {second:?}");
    bounded("worker 1 to shut down", w1.shutdown()).await.unwrap();
    bounded("worker 2 to shut down", w2.shutdown()).await.unwrap();
    k.finish().await;
    drop(cluster);
}

/// A message that is not a queued invocation goes to the dead-letter topic (with the
/// parse error) instead of blocking its partition; an invocation out of attempts goes
/// there as a `DeadLetter` with its last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_dead_letter_topic() {
    use faas_core::queue::{AsyncState, DeadLetter};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let (cluster, k) = Kafka::new(true);
    let raw: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &k.config.brokers).create().unwrap();
    let key = "openfaas-fn/echo"; // the partition of the valid item below: it must not block it
    raw.send(
        FutureRecord::to(&k.config.topic).key(key).payload("{not json"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();

    // The malformed message waits (the workers' group has committed nothing yet).
    let before = k.publisher.depth().await.unwrap();
    assert_eq!((before.waiting, before.dead_letters), (1, 0), "{before:?}");
    assert!(!before.per_function && before.in_flight.is_none());

    let rig = Rig::new();
    rig.invoker.register("down", |_req| async { Ok(response(503, "still down")) });
    // The consumer (malformed messages) and the worker (exhausted calls) dead-letter with
    // the publisher's producer, as in `faas up`.
    let worker = faas_queue::Worker::new(
        rig.invoker.clone(),
        k.new_sharing_consumer(),
        rig.store.clone(),
        faas_queue::WorkerConfig { max_attempts: 2, ..fast_config() },
    )
    .with_dead_letters(Arc::new(faas_queue::kafka::KafkaDeadLetters::sharing(
        &k.publisher,
        &k.config,
    )))
    .spawn();
    let good = item("echo", "fine");
    let down = item("down", "x");
    k.publisher.publish(good.clone()).await.unwrap();
    k.publisher.publish(down.clone()).await.unwrap();
    assert_eq!(wait_settled(&rig.store, &good.call_id).await.state, AsyncState::Succeeded);
    assert_eq!(wait_settled(&rig.store, &down.call_id).await.state, AsyncState::DeadLettered);

    let letters = k.dead_letters(2).await;
    let malformed = letters.iter().find(|(p, _)| p == b"{not json").expect("the malformed message");
    assert!(
        malformed.1.as_deref().unwrap().contains("not a queued invocation"),
        "{:?}",
        malformed.1
    );
    let letter: DeadLetter =
        letters.iter().find_map(|(p, _)| serde_json::from_slice(p).ok()).expect("a dead letter");
    assert_eq!(letter.item.call_id, down.call_id);
    assert_eq!(letter.item.attempt, 2);
    assert_eq!(letter.status, Some(503));
    assert!(letter.error.contains("still down"), "{}", letter.error);
    // The depth: nothing waits once the workers' offsets are committed, two dead letters.
    let after = bounded("the queue's offsets committed", async {
        loop {
            let d = k.publisher.depth().await.unwrap();
            if d.waiting == 0 {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(after.dead_letters, 2, "{after:?}");
    bounded("worker shutdown", worker.shutdown()).await.unwrap();
    drop(raw);
    k.finish().await;
    drop(cluster);
}

/// A producer librdkafka declares fatally failed (here: the broker answers a sequence error
/// to a gapless idempotent producer, as a broker that lost its state does) is replaced, the
/// call goes through with the new one, and the publisher's health says what happened until
/// then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatally_failed_producer_is_replaced_and_the_call_goes_through() {
    use faas_core::queue::QueuePublisher as _;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let cluster = MockCluster::new(1).expect("mock cluster");
    let config =
        KafkaConfig::new(cluster.bootstrap_servers()).property("enable.gapless.guarantee", "true");
    cluster.create_topic(&config.topic, 1, 1).expect("topic");
    let publisher = KafkaPublisher::new(&config).expect("publisher");
    publisher.publish(common::item("f", "before")).await.expect("a first call");
    assert!(publisher.health().is_ok());
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let r = bounded("publishing through a fatal error", publisher.publish(common::item("f", "x")))
        .await;
    assert_eq!(publisher.rebuilds(), 1, "the producer was replaced ({r:?})");
    r.expect("the call went through with the new producer");
    assert!(publisher.health().is_ok(), "{:?}", publisher.health());
    drop(cluster);
}

/// Makes the cluster answer `UNKNOWN_PRODUCER_ID` to every produce request, as a broker
/// that lost its state does, until the errors are cleared.
fn lose_producer_ids(cluster: &Cluster) {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let lost = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID; 100_000];
    cluster.request_errors(RDKafkaApiKey::Produce, &lost);
}

/// Starts a call with `body` and waits (bounded) until the publisher has replaced its
/// producer; the call's task is returned unfinished.
async fn publish_until_replaced(
    publisher: &KafkaPublisher,
    body: &'static str,
) -> tokio::task::JoinHandle<faas_core::Result<()>> {
    use faas_core::queue::QueuePublisher as _;
    let call = tokio::spawn({
        let publisher = publisher.clone();
        async move { publisher.publish(common::item("f", body)).await }
    });
    bounded("the producer to be replaced", async {
        while publisher.rebuilds() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    call
}

/// A broker that lost its state answers `UNKNOWN_PRODUCER_ID` to the producer's every
/// retry (tansu does, after a restart without its data), which librdkafka would retry until
/// the message timeout, call after call: with a broker reachable and no acknowledgement
/// within `stuck_after`, the producer is replaced and the call goes through with the new
/// one, long before the message timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_stuck_on_a_broker_that_lost_its_state_is_replaced() {
    use faas_core::queue::QueuePublisher as _;
    use rdkafka::types::RDKafkaApiKey;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let config = KafkaConfig {
        stuck_after: Duration::from_secs(3),
        ..KafkaConfig::new(cluster.bootstrap_servers())
    };
    cluster.create_topic(&config.topic, 1, 1).expect("topic");
    let publisher = KafkaPublisher::new(&config).expect("publisher");
    publisher.publish(common::item("f", "before")).await.expect("a first call");
    lose_producer_ids(&cluster);
    let call = publish_until_replaced(&publisher, "x").await;
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let r = bounded("the call with the new producer", call).await.expect("the call's task");
    r.expect("the call went through with the new producer");
    publisher.publish(common::item("f", "after")).await.expect("a call after");
    assert!(publisher.health().is_ok(), "{:?}", publisher.health());
    drop(cluster);
}

/// A producer that has delivered nothing (a gateway that took no call before the broker
/// lost its state) and gets no acknowledgement from a reachable broker is replaced too,
/// once it is older than `first_delivery_within`, and the call goes through with the new
/// one, long before the message timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_never_delivered_is_replaced_once_past_its_first_delivery_time() {
    use faas_core::queue::QueuePublisher as _;
    use rdkafka::types::RDKafkaApiKey;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let config = KafkaConfig {
        stuck_after: Duration::from_secs(1),
        first_delivery_within: Duration::from_secs(3),
        ..KafkaConfig::new(cluster.bootstrap_servers())
    };
    cluster.create_topic(&config.topic, 1, 1).expect("topic");
    lose_producer_ids(&cluster);
    let built = std::time::Instant::now();
    let publisher = KafkaPublisher::new(&config).expect("publisher");
    let call = publish_until_replaced(&publisher, "first").await;
    let replaced_after = built.elapsed();
    assert!(
        replaced_after >= config.first_delivery_within,
        "replaced after {replaced_after:?}, within its first delivery time"
    );
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let r = bounded("the call with the new producer", call).await.expect("the call's task");
    r.expect("the call went through with the new producer");
    assert!(publisher.health().is_ok(), "{:?}", publisher.health());
    drop(cluster);
}

/// A broker slow to answer (here every request takes 1 s) delays a new producer's first
/// acknowledgement past `stuck_after` while it connects and registers: that is not a stuck
/// producer. The call goes through with the producer it started with, none replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_connection_is_not_taken_for_a_stuck_producer() {
    use faas_core::queue::QueuePublisher as _;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let config = KafkaConfig {
        stuck_after: Duration::from_millis(500),
        ..KafkaConfig::new(cluster.bootstrap_servers())
    };
    cluster.create_topic(&config.topic, 1, 1).expect("topic");
    cluster.broker_round_trip_time(1, Duration::from_secs(1)).expect("round trip time");
    let publisher = KafkaPublisher::new(&config).expect("publisher");
    let t0 = std::time::Instant::now();
    let r = bounded("the first call", publisher.publish(common::item("f", "first"))).await;
    let took = t0.elapsed();
    r.expect("the first call went through");
    assert!(took > config.stuck_after, "the broker was not slow: {took:?}");
    assert_eq!(publisher.rebuilds(), 0, "a connecting producer was taken for stuck");
    assert!(publisher.health().is_ok(), "{:?}", publisher.health());
    drop(cluster);
}

/// A backlog behind a slow broker (here one message per request, one request at a time,
/// each taking 100 ms) makes the last calls wait past `stuck_after` while the producer
/// keeps getting acknowledgements: that is progress, not a stuck producer. Every call goes
/// through with the producer it started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_on_a_slow_broker_is_not_taken_for_a_stuck_producer() {
    use faas_core::queue::QueuePublisher as _;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let config = KafkaConfig {
        stuck_after: Duration::from_millis(500),
        ..KafkaConfig::new(cluster.bootstrap_servers())
            .property("batch.num.messages", "1")
            .property("max.in.flight.requests.per.connection", "1")
    };
    cluster.create_topic(&config.topic, 1, 1).expect("topic");
    let publisher = KafkaPublisher::new(&config).expect("publisher");
    publisher.publish(common::item("f", "first")).await.expect("a first call");
    cluster.broker_round_trip_time(1, Duration::from_millis(100)).expect("round trip time");
    let t0 = std::time::Instant::now();
    let calls = (0..20).map(|i| publisher.publish(common::item("f", format!("call {i}"))));
    let results = bounded("the backlog", futures::future::join_all(calls)).await;
    let took = t0.elapsed();
    assert!(took > config.stuck_after * 2, "no backlog formed: {took:?}");
    assert_eq!(publisher.rebuilds(), 0, "a producer making progress was taken for stuck");
    for r in results {
        r.expect("every call went through");
    }
    drop(cluster);
}

/// A broker that goes away makes the publisher unhealthy, naming why, without a call
/// having to time out first; once it is back, the health is good again without any call,
/// and the topics are checked (`keep_topics`: a cluster back without its data gets them
/// again; the mock cluster keeps its topics, so none is created here; tansu, which loses
/// them, in `benches/kafka/tansu-restart.sh` with `TOPICS=gateway`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_follows_the_broker_going_away_and_coming_back() {
    use faas_core::queue::QueuePublisher as _;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let config = KafkaConfig::new(cluster.bootstrap_servers());
    cluster.create_topic(&config.topic, 1, 1).expect("topic");
    cluster.create_topic(&config.dead_letter_topic, 1, 1).expect("topic");
    let publisher = KafkaPublisher::new(&config).expect("publisher");
    publisher.keep_topics(None, 1).expect("in a runtime");
    publisher.publish(common::item("f", "before")).await.expect("a first call");
    assert!(publisher.health().is_ok());
    assert_eq!(publisher.topic_checks(), (0, 0), "no check while the broker answers");
    cluster.broker_down(1).expect("broker down");
    let why = bounded("the health to report the broker down", async {
        loop {
            if let Err(e) = publisher.health() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(why.to_string().contains("no broker reachable"), "{why}");
    cluster.broker_up(1).expect("broker up");
    bounded("the health to recover", async {
        while publisher.health().is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    bounded("the topics to be checked once the broker is back", async {
        while publisher.topic_checks().0 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    publisher.publish(common::item("f", "after")).await.expect("a call after");
    assert_eq!(publisher.topic_checks(), (1, 0), "every topic was there");
    drop(cluster);
}

/// Two workers in one group and one hot function (no `X-Queue-Key`): its calls, keyed by
/// call id, spread over every partition, so both workers run a fair share of them (each at
/// least 35 %; with 4 partitions split 2 and 2, a worker below that is six standard
/// deviations off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_hot_function() {
    use std::sync::atomic::{AtomicU64, Ordering};
    const N: usize = 400;

    let (cluster, k) = Kafka::new(true);
    let store = Arc::new(faas_queue::MemoryActivationStore::default());
    let per_worker: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let consumers = [k.new_consumer(), k.new_consumer()];
    let workers: Vec<_> = consumers
        .iter()
        .zip(&per_worker)
        .map(|(consumer, count)| {
            let inv = TestInvoker::new();
            let count = count.clone();
            inv.register("hot", move |_req| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok(response(200, "ok"))
                }
            });
            faas_queue::Worker::new(inv, consumer.clone(), store.clone(), fast_config()).spawn()
        })
        .collect();
    bounded("both workers to get partitions", async {
        while consumers.iter().any(|c| c.assignment().is_empty()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let items: Vec<_> = (0..N).map(|i| item("hot", format!("call-{i}"))).collect();
    let p = faas_queue::TrackedPublisher::new(k.publisher.clone(), store.clone());
    assert!(p.publish_batch(items.clone()).await.iter().all(Result::is_ok));
    all_succeeded(&store, &items).await;
    let counts: Vec<u64> = per_worker.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let assignments: Vec<Vec<i32>> = consumers.iter().map(|c| c.assignment()).collect();
    eprintln!(
        "one hot function, two workers: calls per worker {counts:?}, partitions {assignments:?}"
    );
    assert!(counts.iter().sum::<u64>() >= N as u64, "{counts:?}");
    for (i, c) in counts.iter().enumerate() {
        assert!(
            *c * 100 >= 35 * N as u64,
            "worker {i} ran {c} of {N} calls of the hot function (under 35 %): {counts:?}, partitions {assignments:?}"
        );
    }
    for w in workers {
        bounded("worker shutdown", w.shutdown()).await.unwrap();
    }
    k.finish().await;
    drop(cluster);
}

/// Records per call = state changes, end to end: a gateway's store (through
/// `TrackedPublisher`) and a worker's store (another instance, as in another process) on one
/// activations topic, calls run by a worker; half the calls finish at once (`queued`, then
/// the final record), half have to wait (`queued`, `running`, final). Every record on the
/// topic is a state change of its call: no call has a state twice, none goes backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_on_the_topic_per_call_are_its_state_changes() {
    use faas_core::queue::{ActivationStore, AsyncActivation, AsyncState};
    use faas_queue::kafka_store::{default_activations_topic, KafkaActivationStore};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use std::collections::HashMap;
    const N: usize = 40;

    let (cluster, k) = Kafka::new(true);
    let topic = default_activations_topic(&k.config.topic);
    cluster.create_topic(&topic, 3, 1).expect("activations topic");
    let gateway_store = KafkaActivationStore::new(&k.config, &topic).expect("store");
    let worker_store = KafkaActivationStore::new(&k.config, &topic).expect("store");
    for s in [&gateway_store, &worker_store] {
        s.wait_caught_up(BOUND).await.expect("caught up");
    }
    let inv = TestInvoker::new();
    inv.register("at-once", |_req| async { Ok(response(200, "now")) });
    inv.register("waits", |_req| async {
        // Pending once: the worker records `running` before the answer.
        tokio::task::yield_now().await;
        Ok(response(200, "later"))
    });
    let worker = faas_queue::Worker::new(
        inv,
        k.new_consumer(),
        Arc::new(worker_store.clone()),
        fast_config(),
    )
    .spawn();
    let p = faas_queue::TrackedPublisher::new(k.publisher.clone(), Arc::new(gateway_store.clone()));
    let items: Vec<_> = (0..N)
        .map(|i| item(if i % 2 == 0 { "at-once" } else { "waits" }, format!("call-{i}")))
        .collect();
    assert!(p.publish_batch(items.clone()).await.iter().all(Result::is_ok));
    bounded("the gateway's store to see every call succeed", async {
        while !items.iter().all(|i| {
            gateway_store.get_now(&i.call_id).is_some_and(|r| r.state == AsyncState::Succeeded)
        }) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Barriers: a record from each store read by the other, so that both have read every
    // record before them (and sent any repair they were going to).
    for (from, to) in [(&gateway_store, &worker_store), (&worker_store, &gateway_store)] {
        let barrier = AsyncActivation::queued(&item("barrier", ""));
        from.put(barrier.clone()).await.expect("barrier");
        bounded("the barrier read back", async {
            while to.get_now(&barrier.call_id).is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    bounded("worker shutdown", worker.shutdown()).await.unwrap();

    // Every record on the topic, in order per call (a call's records share a partition).
    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &k.config.brokers)
        .set("group.id", "records-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let records = tokio::task::spawn_blocking(move || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut ends = HashMap::new();
        for p in 0..3 {
            let (_, high) =
                reader.fetch_watermarks(&topic, p, Duration::from_secs(10)).expect("watermarks");
            ends.insert(p, high);
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning).unwrap();
        }
        reader.assign(&tpl).expect("assign");
        let total: i64 = ends.values().sum();
        let mut out: Vec<AsyncActivation> = Vec::new();
        let deadline = std::time::Instant::now() + BOUND;
        while (out.len() as i64) < total && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
                out.push(serde_json::from_slice(m.payload().unwrap_or_default()).expect("record"));
            }
        }
        out
    })
    .await
    .expect("reading the topic");
    let mut per_call: HashMap<String, Vec<AsyncState>> = HashMap::new();
    for r in &records {
        per_call.entry(r.call_id.as_str().to_string()).or_default().push(r.state);
    }
    let mut total = 0;
    for (i, it) in items.iter().enumerate() {
        let states = per_call.get(it.call_id.as_str()).cloned().unwrap_or_default();
        let expected: &[AsyncState] = if i % 2 == 0 {
            &[AsyncState::Queued, AsyncState::Succeeded]
        } else {
            &[AsyncState::Queued, AsyncState::Running, AsyncState::Succeeded]
        };
        assert_eq!(states, expected, "the records of call {i} on the topic");
        total += states.len();
    }
    eprintln!("{total} records on the topic for {N} calls (plus 2 barriers)");
    assert_eq!(records.len(), total + 2, "no record but the calls' state changes and the barriers");
    for s in [&gateway_store, &worker_store] {
        assert_eq!(s.stats().republished.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
    for s in [gateway_store, worker_store] {
        bounded("closing a store", s.close()).await.expect("closed");
    }
    k.finish().await;
    drop(cluster);
}

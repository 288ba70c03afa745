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
        let c = Arc::new(KafkaConsumer::new(&self.config).expect("consumer"));
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
    async fn crash(&self, consumer: Arc<dyn QueueConsumer>, unsettled: Vec<Delivery<QueuedInvocation>>) {
        // A crashed process settles nothing; its group membership ends (here by leaving,
        // which commits only what was acknowledged).
        for d in unsettled {
            std::mem::forget(d);
        }
        bounded("closing the crashed consumer", consumer.close()).await.expect("closed");
    }
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

/// Worker A is stopped abruptly mid-invocation (its deliveries are never settled, not even
/// nacked: only the uncommitted offsets bring them back); worker B in the same group takes
/// the partitions over; every accepted invocation completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_crash_loses_nothing() {
    let (cluster, k) = Kafka::new(false);
    crash_loses_nothing(&k, 400).await;
    k.finish().await;
    drop(cluster);
}

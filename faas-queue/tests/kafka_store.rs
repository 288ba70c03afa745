//! The Kafka activation store on librdkafka's mock cluster (the real Kafka protocol over
//! loopback): records written by one store instance are read by another through the topic,
//! and older states arriving late never replace newer ones.
#![cfg(feature = "kafka")]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::bounded;
use faas_core::queue::{ActivationStore, AsyncActivation, AsyncState, CallbackOutcome};
use faas_core::InvocationId;
use faas_queue::kafka::KafkaConfig;
use faas_queue::kafka_store::{default_activations_topic, KafkaActivationStore};
use faas_queue::memory::example_item;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

type Cluster = MockCluster<'static, DefaultProducerContext>;

fn cluster(partitions: i32) -> (Cluster, KafkaConfig, String) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    config.close_timeout = Duration::from_secs(20);
    let topic = default_activations_topic(&config.topic);
    cluster.create_topic(&topic, partitions, 1).expect("topic");
    (cluster, config, topic)
}

async fn store(config: &KafkaConfig, topic: &str) -> KafkaActivationStore {
    let s = KafkaActivationStore::new(config, topic).expect("store");
    s.wait_caught_up(common::BOUND).await.expect("caught up");
    s
}

/// Polls (bounded) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    bounded(what, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn record(state: AsyncState, attempts: u32) -> AsyncActivation {
    let mut r = AsyncActivation::queued(&example_item());
    r.state = state;
    r.attempts = attempts;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_by_one_store_are_read_by_another() {
    let (cluster, config, topic) = cluster(3);
    assert_eq!(topic, "faas-async-activations");
    let writer = store(&config, &topic).await;
    let reader = store(&config, &topic).await;

    let mut ids = Vec::new();
    for i in 0..30u32 {
        let mut r = record(AsyncState::Queued, 0);
        ids.push(r.call_id.clone());
        writer.put(r.clone()).await.expect("queued");
        // The writer's own write is visible at once, before it went through the topic.
        assert_eq!(writer.get(&r.call_id).await.unwrap().unwrap().state, AsyncState::Queued);
        r.state = AsyncState::Running;
        r.attempts = 1;
        writer.put(r.clone()).await.expect("running");
        if i % 3 != 0 {
            r.state = if i % 3 == 1 { AsyncState::Succeeded } else { AsyncState::Failed };
            r.status = Some(if i % 3 == 1 { 200 } else { 400 });
            writer.put(r).await.expect("final");
        }
    }
    let expected = |i: usize| match i % 3 {
        0 => AsyncState::Running,
        1 => AsyncState::Succeeded,
        _ => AsyncState::Failed,
    };
    until("the reader to see every record", || {
        ids.iter()
            .enumerate()
            .all(|(i, id)| reader.get_now(id).is_some_and(|r| r.state == expected(i)))
    })
    .await;
    let r = reader.get(&ids[1]).await.unwrap().unwrap();
    assert_eq!(r.status, Some(200));
    assert_eq!(r.function, "echo");

    // A store started later reads the topic from the beginning: once caught up it knows
    // every record written before it started.
    let late = store(&config, &topic).await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(late.get_now(id).map(|r| r.state), Some(expected(i)), "record {i}");
    }
    assert_eq!(late.len(), ids.len());
    assert!(writer.stats().written.load(Ordering::Relaxed) >= 80);

    for s in [writer, reader, late] {
        bounded("closing a store", s.close()).await.expect("closed");
    }
    drop(cluster);
}

/// One record per state change: a store reading its own earlier states back (queued, then
/// running, behind the final one it already holds) publishes nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_on_the_topic_are_one_per_state_change() {
    let (cluster, config, topic) = cluster(3);
    let s = store(&config, &topic).await;
    let n = 30u64;
    for _ in 0..n {
        let mut r = record(AsyncState::Queued, 0);
        s.put(r.clone()).await.expect("queued");
        r.state = AsyncState::Running;
        r.attempts = 1;
        s.put(r.clone()).await.expect("running");
        r.state = AsyncState::Succeeded;
        r.status = Some(200);
        s.put(r).await.expect("succeeded");
    }
    let stats = s.stats().clone();
    until("the store read its own records back", || stats.read.load(Ordering::Relaxed) >= 3 * n)
        .await;
    // A last write read back after all the others: any repair of the first ones would have
    // been sent by then.
    let last = record(AsyncState::Queued, 0);
    s.put(last).await.expect("barrier");
    until("the barrier read back", || stats.read.load(Ordering::Relaxed) > 3 * n).await;
    assert_eq!(stats.written.load(Ordering::Relaxed), 3 * n + 1);
    assert_eq!(stats.republished.load(Ordering::Relaxed), 0, "nothing published twice");
    let on_topic = topic_len(&config.brokers, &topic, 3).await;
    assert_eq!(on_topic, 3 * n as i64 + 1, "records on the topic = state changes");
    bounded("closing the store", s.close()).await.expect("closed");
    drop(cluster);
}

/// A batch of records: each kept and published once (records already newer are skipped),
/// one result per record, and another store reads them all from the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_records_is_published_at_once_and_read_by_another_store() {
    let (cluster, config, topic) = cluster(3);
    let s = store(&config, &topic).await;
    let batch: Vec<AsyncActivation> = (0..40).map(|_| record(AsyncState::Queued, 0)).collect();
    // One of them is already further on: its `queued` record is neither kept nor sent.
    let mut ahead = batch[7].clone();
    ahead.state = AsyncState::Running;
    ahead.attempts = 1;
    s.put(ahead).await.expect("running");
    let results = bounded("the batch", s.put_batch(batch.clone())).await;
    assert_eq!(results.len(), batch.len());
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(s.stats().written.load(Ordering::Relaxed), 40, "39 queued + 1 running");
    assert_eq!(s.get_now(&batch[7].call_id).expect("kept").state, AsyncState::Running);
    let other = store(&config, &topic).await;
    for r in &batch {
        let kept = other.get_now(&r.call_id).expect("read by the other store");
        let want =
            if r.call_id == batch[7].call_id { AsyncState::Running } else { AsyncState::Queued };
        assert_eq!(kept.state, want);
    }
    assert_eq!(topic_len(&config.brokers, &topic, 3).await, 40, "one message per record sent");
    bounded("closing", s.close()).await.expect("closed");
    bounded("closing", other.close()).await.expect("closed");
    drop(cluster);
}

/// Messages on `topic` (all partitions), from the watermarks.
async fn topic_len(brokers: &str, topic: &str, partitions: i32) -> i64 {
    use rdkafka::consumer::BaseConsumer;
    let reader: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("reader");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        (0..partitions)
            .map(|p| {
                let (low, high) =
                    reader.fetch_watermarks(&topic, p, Duration::from_secs(10)).expect("marks");
                high - low
            })
            .sum()
    })
    .await
    .expect("reading watermarks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_older_states_never_overwrite_newer_ones() {
    let (cluster, config, topic) = cluster(1);
    let a = store(&config, &topic).await;
    let b = store(&config, &topic).await;

    // The final record, with its callback outcome.
    let mut done = record(AsyncState::Succeeded, 1);
    done.status = Some(200);
    done.callback =
        Some(CallbackOutcome { delivered: true, attempts: 1, status: Some(200), error: None });
    let id = done.call_id.clone();
    a.put(done.clone()).await.unwrap();
    until("b to see the final record", || {
        b.get_now(&id).is_some_and(|r| r.state == AsyncState::Succeeded)
    })
    .await;

    // Older states of the same call land on the topic afterwards (as a gateway's late
    // `queued` or a slow worker's `running` would), with later clocks even, then a marker.
    let raw: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &config.brokers).create().unwrap();
    let mut running = record(AsyncState::Running, 1);
    running.call_id = id.clone();
    running.updated_at = done.updated_at + 1000;
    let mut queued = record(AsyncState::Queued, 0);
    queued.call_id = id.clone();
    queued.updated_at = done.updated_at + 2000;
    let mut final_no_cb = done.clone();
    final_no_cb.callback = None;
    let marker = record(AsyncState::Queued, 0);
    for r in [&running, &queued, &final_no_cb, &marker] {
        let payload = serde_json::to_vec(r).unwrap();
        raw.send(
            FutureRecord::to(&topic).key(r.call_id.as_str()).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    // One partition: once the marker is read, so are the older records before it.
    until("a and b to read the marker", || {
        a.get_now(&marker.call_id).is_some() && b.get_now(&marker.call_id).is_some()
    })
    .await;
    for s in [&a, &b] {
        let r = s.get_now(&id).unwrap();
        assert_eq!(r.state, AsyncState::Succeeded);
        assert!(r.callback.is_some(), "the callback outcome is kept");
        assert!(s.stats().older_ignored.load(Ordering::Relaxed) >= 3);
    }

    // A late local write of an older state (the gateway's `queued` after the worker's
    // final record) is neither kept nor published.
    let written = a.stats().written.load(Ordering::Relaxed);
    a.put(queued.clone()).await.unwrap();
    assert_eq!(a.get_now(&id).unwrap().state, AsyncState::Succeeded);
    assert_eq!(a.stats().written.load(Ordering::Relaxed), written);

    // Each store published the newest record again after each older one it read, so the
    // topic's last record of the call (what compaction keeps) is the final one.
    until("the stores to republish the newest record", || {
        a.stats().republished.load(Ordering::Relaxed) >= 3
            && b.stats().republished.load(Ordering::Relaxed) >= 3
    })
    .await;
    let last = last_record_on_topic(&config.brokers, &topic, &id).await;
    assert_eq!(last.state, AsyncState::Succeeded);
    assert!(last.callback.is_some());

    // A store started now agrees.
    let c = store(&config, &topic).await;
    assert_eq!(c.get_now(&id).unwrap().state, AsyncState::Succeeded);

    drop(raw);
    for s in [a, b, c] {
        bounded("closing a store", s.close()).await.expect("closed");
    }
    drop(cluster);
}

/// Reads partition 0 of `topic` up to its current end; the last record keyed `id`.
async fn last_record_on_topic(brokers: &str, topic: &str, id: &InvocationId) -> AsyncActivation {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "topic-inspector")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let c = std::sync::Arc::new(c);
    let (topic2, c2) = (topic.to_string(), c.clone());
    let (_, high) = tokio::task::spawn_blocking(move || {
        c2.fetch_watermarks(&topic2, 0, Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut last = None;
    bounded("reading the topic", async {
        loop {
            let m = c.recv().await.unwrap();
            if m.key() == Some(id.as_str().as_bytes()) {
                last =
                    Some(serde_json::from_slice::<AsyncActivation>(m.payload().unwrap()).unwrap());
            }
            if m.offset() + 1 >= high {
                break;
            }
        }
    })
    .await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        drop(c);
        let _ = tx.send(());
    });
    bounded("closing the inspector", rx).await.unwrap();
    last.expect("a record of the call")
}

/// Waits (bounded) until `reader` has read `records`, then closes both stores.
async fn read_both_and_close(
    writer: KafkaActivationStore,
    reader: KafkaActivationStore,
    records: [AsyncActivation; 2],
) {
    until("the reader to see both records", || {
        records.iter().all(|r| reader.get_now(&r.call_id).is_some())
    })
    .await;
    for s in [writer, reader] {
        bounded("closing a store", s.close()).await.expect("closed");
    }
}

/// Makes the cluster answer the next produce request with a sequence error (fatal for an
/// idempotent producer with `enable.gapless.guarantee`), then writes a record through it.
async fn put_through_a_fatal_error(
    cluster: &Cluster,
    writer: &KafkaActivationStore,
) -> AsyncActivation {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let after = record(AsyncState::Queued, 0);
    bounded("writing through a fatal error", writer.put(after.clone()))
        .await
        .expect("the record went through with a new producer");
    after
}

/// A store whose producer librdkafka declares fatally failed (the broker answers a sequence
/// error to a gapless idempotent producer, as a broker that restarted empty does) replaces
/// it: the record goes through, and another store reads it, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatally_failed_store_producer_is_replaced_and_the_record_goes_through() {
    let (cluster, config, topic) = cluster(1);
    let config = config.property("enable.gapless.guarantee", "true");
    let writer = store(&config, &topic).await;
    let reader = store(&config, &topic).await;
    let before = record(AsyncState::Queued, 0);
    writer.put(before.clone()).await.expect("a first record");
    let after = put_through_a_fatal_error(&cluster, &writer).await;
    read_both_and_close(writer, reader, [before, after]).await;
    drop(cluster);
}

/// A store built on a queue publisher's producer (`KafkaActivationStore::sharing`) writes
/// its records with that one client: a fatal error of the producer is repaired once for
/// both (one rebuild), and calls and records both go through after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_sharing_the_publishers_producer_recovers_with_it() {
    use faas_core::queue::QueuePublisher;
    use faas_queue::kafka::KafkaPublisher;
    let (cluster, config, topic) = cluster(1);
    cluster.create_topic(&config.topic, 1, 1).expect("calls topic");
    let config = config.property("enable.gapless.guarantee", "true");
    let calls = KafkaPublisher::new(&config).expect("publisher");
    let writer = KafkaActivationStore::sharing(&calls, &config, &topic).expect("store");
    writer.wait_caught_up(common::BOUND).await.expect("caught up");
    let reader = store(&config, &topic).await;
    let before = record(AsyncState::Queued, 0);
    writer.put(before.clone()).await.expect("a first record");
    calls.publish(example_item()).await.expect("a first call");
    assert_eq!(calls.rebuilds(), 0);
    let after = put_through_a_fatal_error(&cluster, &writer).await;
    assert_eq!(calls.rebuilds(), 1, "the store's producer is the publisher's");
    bounded("publishing after the store's repair", calls.publish(example_item()))
        .await
        .expect("the call went through on the repaired producer");
    assert_eq!(calls.rebuilds(), 1, "repaired once for both");
    read_both_and_close(writer, reader, [before, after]).await;
    drop(cluster);
}

//! A Kafka topic firing an OpenWhisk trigger (`faas_queue::kafka_feed`), on librdkafka's
//! mock cluster: batched messages reach the rule's action in OpenWhisk's messaging shape,
//! offsets are committed once the trigger fired, and a batch not acknowledged before a
//! crash is delivered again to the group's next member, none lost.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bounded;
use faas_core::event::{Event, EventSource};
use faas_core::state::{MemoryStateStore, StateStore};
use faas_core::whisk::record::ACTIVATIONS_TABLE;
use faas_core::whisk::{
    feeds, ActionPut, ActivationLog, ActivationQuery, EntityPath, EntityStore, Exec, KeyValue,
    Retention, RulePut, TriggerPut, Whisk,
};
use faas_core::{handler_fn, Backend, Context, Delivery, Error, MemoryInvoker, Request};
use faas_queue::kafka::KafkaConfig;
use faas_queue::kafka_feed::{KafkaFeed, KafkaFeedConfig};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Map, Value};

type Cluster = MockCluster<'static, DefaultProducerContext>;

fn feed_config(cluster: &Cluster, topic: &str, group: &str, max: usize) -> KafkaFeedConfig {
    let mut kafka = KafkaConfig::new(cluster.bootstrap_servers())
        .property("session.timeout.ms", "2500")
        .property("heartbeat.interval.ms", "250")
        .property("topic.metadata.refresh.interval.ms", "500");
    kafka.topic = topic.into();
    kafka.group_id = group.into();
    kafka.close_timeout = Duration::from_secs(20);
    let mut c = KafkaFeedConfig::new(kafka, "guest", "orders-in");
    c.max_messages = max;
    c.json_values = true;
    c
}

/// Sends `values` to `topic`, message `i` keyed `k{i}` in partition `i % partitions`.
async fn produce(cluster: &Cluster, topic: &str, partitions: i32, values: &[(usize, Value)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .expect("producer");
    for (i, v) in values {
        let key = format!("k{i}");
        let payload = v.to_string();
        let record =
            FutureRecord::to(topic).key(&key).payload(&payload).partition(*i as i32 % partitions);
        bounded("producing", producer.send(record, Duration::from_secs(10)))
            .await
            .expect("produced");
    }
}

/// The `(partition, offset)` of each message of an event.
fn offsets(event: &Event) -> Vec<(i64, i64)> {
    event.params["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["partition"].as_i64().unwrap(), m["offset"].as_i64().unwrap()))
        .collect()
}

/// A handler keeping the parameters of every call in `kept`.
fn collector(kept: Arc<Mutex<Vec<Map<String, Value>>>>) -> impl faas_core::Function {
    handler_fn(move |req: Request, _: Context| {
        let kept = kept.clone();
        async move {
            let body = req.into_body().collect_bytes().await?;
            let params = serde_json::from_slice::<Map<String, Value>>(&body);
            kept.lock().unwrap().push(params.map_err(|e| Error::application(e.to_string()))?);
            Ok::<_, Error>("{}")
        }
    })
}

async fn next(feed: &KafkaFeed) -> Delivery<Event> {
    bounded("the next event", feed.next_event()).await.expect("no error").expect("an event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_fire_the_trigger_in_batches_and_are_committed_after_firing() {
    let cluster: Cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("orders", 2, 1).expect("topic");

    // An action that keeps what it is given, behind a trigger with a default parameter.
    let seen: Arc<Mutex<Vec<Map<String, Value>>>> = Arc::default();
    let memory = MemoryInvoker::new();
    memory.register("feed/collect", collector(seen.clone()));
    let backend: Arc<dyn Backend> = Arc::new(memory);
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
    let log = ActivationLog::open(store.clone(), Retention::default()).unwrap();
    let whisk = Whisk::new(
        EntityStore::new(store.clone()),
        log,
        backend.clone(),
        backend,
        Default::default(),
    );
    let path = |n: &str| EntityPath::new("guest", None, n);
    let exec =
        Exec { kind: "blackbox".into(), image: Some("feed/collect".into()), ..Default::default() };
    whisk
        .put_action(&path("collect"), ActionPut { exec: Some(exec), ..Default::default() }, false)
        .await
        .unwrap();
    let defaults = vec![KeyValue { key: "source".into(), value: json!("kafka") }];
    let trigger = TriggerPut { parameters: Some(defaults), ..Default::default() };
    whisk.put_trigger(&path("orders-in"), trigger, false).await.unwrap();
    let rule = RulePut {
        trigger: Some("orders-in".into()),
        action: Some("collect".into()),
        ..Default::default()
    };
    whisk.put_rule(&path("on-order"), rule, false).await.unwrap();

    let values: Vec<(usize, Value)> = (0..30).map(|i| (i, json!({ "n": i }))).collect();
    produce(&cluster, "orders", 2, &values).await;
    let feed = KafkaFeed::new(feed_config(&cluster, "orders", "orders-in", 8)).unwrap();
    let driving = tokio::spawn(feeds::drive(whisk.clone(), feed.clone()));

    let messages = |seen: &[Map<String, Value>]| -> usize {
        seen.iter().map(|p| p["messages"].as_array().map_or(0, Vec::len)).sum()
    };
    bounded("30 messages through the action", async {
        while messages(&seen.lock().unwrap()) < 30 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let calls = seen.lock().unwrap().clone();
    assert_eq!(messages(&calls), 30, "each message once");
    let mut got = BTreeSet::new();
    for params in &calls {
        assert_eq!(params["source"], "kafka", "the trigger's default parameter");
        let batch = params["messages"].as_array().unwrap();
        assert!(!batch.is_empty() && batch.len() <= 8, "a batch of {}", batch.len());
        for m in batch {
            let n = m["value"]["n"].as_u64().expect("a JSON value") as usize;
            assert_eq!(m["topic"], "orders");
            assert_eq!(m["key"], format!("k{n}"));
            assert_eq!(m["partition"].as_i64().unwrap(), n as i64 % 2);
            assert!(m["offset"].is_i64());
            got.insert(n);
        }
    }
    assert_eq!(got, (0..30).collect::<BTreeSet<_>>());
    // One trigger activation per batch, written to the store before its offsets were
    // committed.
    let fired = whisk.log().list(&ActivationQuery {
        name: Some("orders-in".into()),
        limit: 200,
        ..Default::default()
    });
    assert_eq!(fired.len(), calls.len());
    let kept: BTreeSet<Vec<u8>> =
        store.scan(ACTIVATIONS_TABLE).unwrap().into_iter().map(|(k, _)| k).collect();
    for a in &fired {
        assert!(kept.contains(a.activation_id.as_str().as_bytes()), "trigger record on disk");
    }

    // Closing ends the drive.
    bounded("closing the feed", feed.close()).await.unwrap();
    bounded("the drive ends", driving).await.unwrap();

    // Everything was committed: the group's next member gets only what comes next.
    produce(&cluster, "orders", 2, &[(30, json!({ "n": 30 }))]).await;
    let again = KafkaFeed::new(feed_config(&cluster, "orders", "orders-in", 8)).unwrap();
    let d = next(&again).await;
    let batch = d.item().params["messages"].as_array().unwrap().clone();
    assert_eq!(batch.len(), 1, "{batch:?}");
    assert_eq!(batch[0]["value"], json!({ "n": 30 }));
    d.ack().await.unwrap();
    bounded("closing the second feed", again.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_not_acknowledged_before_a_crash_is_delivered_again() {
    let cluster: Cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 1, 1).expect("topic");
    let values: Vec<(usize, Value)> = (0..5).map(|i| (i, json!(i))).collect();
    produce(&cluster, "events", 1, &values).await;

    let first = KafkaFeed::new(feed_config(&cluster, "events", "crashing", 3)).unwrap();
    let d = next(&first).await;
    assert_eq!(offsets(d.item()), [(0, 0), (0, 1), (0, 2)]);
    assert_eq!(d.item().trigger, "orders-in");
    assert_eq!(d.item().namespace, "guest");
    d.ack().await.expect("committed");

    // A rejected batch comes again from the same feed, counted.
    let d = next(&first).await;
    assert_eq!(offsets(d.item()), [(0, 3), (0, 4)]);
    assert_eq!(d.redeliveries, 0);
    d.nack().await.unwrap();
    let d = next(&first).await;
    assert_eq!(offsets(d.item()), [(0, 3), (0, 4)]);
    assert_eq!(d.redeliveries, 1);
    // The process dies before firing: nothing settles it, the member goes.
    #[allow(clippy::mem_forget)]
    std::mem::forget(d);
    bounded("closing the crashed feed", first.close()).await.unwrap();

    // The next member of the group starts after the last acknowledged batch: the
    // unacknowledged one again, the acknowledged one not.
    let second = KafkaFeed::new(feed_config(&cluster, "events", "crashing", 3)).unwrap();
    let d = next(&second).await;
    assert_eq!(offsets(d.item()), [(0, 3), (0, 4)]);
    let values: Vec<Value> = d.item().params["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].clone())
        .collect();
    assert_eq!(values, [json!(3), json!(4)]);
    d.ack().await.unwrap();
    bounded("closing the second feed", second.close()).await.unwrap();
}

#[tokio::test]
async fn a_bad_configuration_is_refused_naming_the_field() {
    let cluster: Cluster = MockCluster::new(1).expect("mock cluster");
    let mut c = feed_config(&cluster, "t", "g", 1);
    c.max_messages = 0;
    let e = KafkaFeed::new(c).unwrap_err();
    assert!(e.to_string().contains("max_messages"), "{e}");
}

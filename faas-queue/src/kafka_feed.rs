//! A Kafka topic as an OpenWhisk feed (feature `kafka`): [`KafkaFeed`] is an
//! [`EventSource`] whose events fire one trigger with a batch of the topic's messages, as
//! OpenWhisk's messaging feed (`/whisk.system/messaging/messageHubFeed`) does:
//!
//! ```json
//! {"messages": [{"topic": "orders", "partition": 0, "offset": 17, "key": "k", "value": "v"}]}
//! ```
//!
//! `value` is the message's UTF-8 text, parsed as JSON with
//! [`KafkaFeedConfig::json_values`] (OpenWhisk's `isJSONData`; text that is not JSON stays
//! text), or base64 with [`KafkaFeedConfig::binary_values`] (`isBinaryValue`); `key`
//! likewise (`isBinaryKey`), `null` when the message has none.
//!
//! Delivery is at least once, and nothing is lost in a crash: the feed is a member of a
//! consumer group whose offsets are committed (synchronously) only when an event is
//! acknowledged, which [`faas_core::whisk::feeds::drive`] does once the trigger fired and
//! its activation was written. A batch rejected (or dropped unsettled) is delivered again
//! by the same feed; a batch still unsettled when the process dies is delivered again by
//! the group's next member, from the last committed offset. An acknowledgement commits a
//! partition only up to its oldest message still out, and only while the partition is
//! still this member's (after a rebalance the new owner delivers it again): a message may
//! fire twice, never none.
//!
//! ```no_run
//! # async fn run(whisk: faas_core::whisk::Whisk) -> faas_core::Result<()> {
//! use faas_queue::kafka::KafkaConfig;
//! use faas_queue::kafka_feed::{KafkaFeed, KafkaFeedConfig};
//! let mut kafka = KafkaConfig::new("127.0.0.1:9092");
//! kafka.topic = "orders".into();
//! kafka.group_id = "guest-order-placed".into();
//! let feed = KafkaFeed::new(KafkaFeedConfig::new(kafka, "guest", "order-placed"))?;
//! let driving = tokio::spawn(faas_core::whisk::feeds::drive(whisk, feed.clone()));
//! // ... later: stop firing, then leave the group (bounded).
//! feed.close().await?;
//! let _ = driving.await;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use faas_core::event::{Acknowledge, Delivery, Event, EventSource};
use faas_core::invocation::InvocationId;
use faas_core::queue::base64_encode;
use faas_core::util::lock;
use faas_core::{Error, Result};
use futures::future::BoxFuture;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Map, Value};

use crate::kafka::{group_member, leave_group, leave_group_detached, Client, KafkaConfig, Tracker};
use crate::kafka_log_check::{pause_assigned, resume_assigned, LogCheck, Reader, Restarted};

/// What a [`KafkaFeed`] reads, which trigger it fires, and how it batches.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaFeedConfig {
    /// The brokers, the topic (`kafka.topic`) and the consumer group (`kafka.group_id`:
    /// one per trigger, so each trigger sees every message), plus librdkafka properties.
    pub kafka: KafkaConfig,
    /// The trigger's namespace.
    pub namespace: String,
    /// The trigger's name.
    pub trigger: String,
    /// The most messages in one event. Default 100.
    pub max_messages: usize,
    /// The most bytes (keys and values) in one event; a larger message goes alone.
    /// Default 900 KiB, under OpenWhisk's 1 MB payload limit.
    pub max_bytes: usize,
    /// How long a batch waits for more messages after its first. Default 50 ms.
    pub linger: Duration,
    /// Values parsed as JSON (OpenWhisk's `isJSONData`).
    pub json_values: bool,
    /// Values as base64 (`isBinaryValue`).
    pub binary_values: bool,
    /// Keys as base64 (`isBinaryKey`).
    pub binary_keys: bool,
}

impl KafkaFeedConfig {
    /// Fires `namespace/trigger` from `kafka.topic`, with the defaults above.
    pub fn new(kafka: KafkaConfig, namespace: &str, trigger: &str) -> Self {
        KafkaFeedConfig {
            kafka,
            namespace: namespace.to_string(),
            trigger: trigger.to_string(),
            max_messages: 100,
            max_bytes: 900 * 1024,
            linger: Duration::from_millis(50),
            json_values: false,
            binary_values: false,
            binary_keys: false,
        }
    }

    /// The message as the action sees it.
    fn message(&self, m: &BorrowedMessage<'_>) -> Value {
        let key = match m.key() {
            None => Value::Null,
            Some(k) if self.binary_keys => base64_encode(k).into(),
            Some(k) => String::from_utf8_lossy(k).into_owned().into(),
        };
        let value = match m.payload() {
            None => Value::Null,
            Some(v) if self.binary_values => base64_encode(v).into(),
            Some(v) => {
                let text = String::from_utf8_lossy(v);
                match self.json_values.then(|| serde_json::from_str::<Value>(&text).ok()) {
                    Some(Some(parsed)) => parsed,
                    _ => text.into_owned().into(),
                }
            }
        };
        json!({
            "topic": m.topic(),
            "partition": m.partition(),
            "offset": m.offset(),
            "key": key,
            "value": value,
        })
    }
}

/// One event and the offsets it carries.
#[derive(Debug, Clone)]
struct Batch {
    event: Event,
    /// `(partition, offset, epoch)` of each message (the epoch of its partition's
    /// assignment, so an acknowledgement after a rebalance commits nothing).
    offsets: Vec<(i32, i64, u64)>,
    redeliveries: u32,
}

struct Shared {
    consumer: Mutex<Option<Arc<Client>>>,
    tracker: Arc<Mutex<Tracker>>,
    /// The last message read per partition, checked after the brokers went away.
    check: Arc<LogCheck>,
    config: KafkaFeedConfig,
    /// Batches rejected or dropped unsettled, delivered again first.
    again: Mutex<VecDeque<Batch>>,
    /// Set by [`KafkaFeed::close`]: wakes a waiting [`EventSource::next_event`].
    closed: tokio::sync::watch::Sender<bool>,
}

/// A Kafka topic firing a trigger with batches of its messages; see the
/// [module docs](self). Clones share the consumer.
#[derive(Clone)]
pub struct KafkaFeed {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.shared.config;
        f.debug_struct("KafkaFeed")
            .field("topic", &c.kafka.topic)
            .field("trigger", &format!("{}/{}", c.namespace, c.trigger))
            .finish()
    }
}

impl KafkaFeed {
    /// Joins `config.kafka.group_id` and subscribes to `config.kafka.topic`. Fails with
    /// [`Error::InvalidSpec`] naming the field on a bad configuration.
    pub fn new(config: KafkaFeedConfig) -> Result<Self> {
        if config.max_messages == 0 {
            return Err(Error::invalid("max_messages", "a batch holds at least one message"));
        }
        if config.trigger.is_empty() || config.namespace.is_empty() {
            return Err(Error::invalid("trigger", "the feed needs a trigger and its namespace"));
        }
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let check = LogCheck::new(&config.kafka.topic);
        let consumer =
            group_member(&config.kafka, &config.kafka.topic, &tracker, false, Some(check.clone()))?;
        let kafka = config.kafka.clone();
        let shared = Arc::new(Shared {
            consumer: Mutex::new(Some(Arc::new(consumer))),
            tracker,
            check: check.clone(),
            config,
            again: Mutex::new(VecDeque::new()),
            closed: tokio::sync::watch::Sender::new(false),
        });
        check.spawn(&kafka, Box::new(FeedReader(Arc::downgrade(&shared))));
        Ok(KafkaFeed { shared })
    }

    /// Stops delivering (a waiting [`EventSource::next_event`] answers `None`) and leaves
    /// the consumer group, waiting at most `kafka.close_timeout`. Offsets of batches not
    /// acknowledged stay uncommitted: the group's next member delivers them again.
    pub async fn close(&self) -> Result<()> {
        self.shared.closed.send_replace(true);
        let Some(client) = lock(&self.shared.consumer).take() else { return Ok(()) };
        leave_group(client, self.shared.config.kafka.close_timeout).await
    }

    fn client(&self) -> Option<Arc<Client>> {
        lock(&self.shared.consumer).clone()
    }

    fn delivery(&self, batch: Batch) -> Delivery<Event> {
        let redeliveries = batch.redeliveries;
        let event = batch.event.clone();
        let ack = FeedAck { shared: Arc::downgrade(&self.shared), batch: Some(batch) };
        Delivery::new(event, redeliveries, Box::new(ack))
    }

    /// Waits for a message (or the close); then takes what else comes within the linger,
    /// up to the batch's bounds.
    async fn batch(&self, client: &Client) -> Result<Option<Batch>> {
        let config = &self.shared.config;
        let mut closed = self.shared.closed.subscribe();
        let mut messages = Vec::new();
        let mut offsets = Vec::new();
        let mut bytes = 0usize;
        let mut deadline = None;
        while messages.len() < config.max_messages {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, client.recv()).await.ok(),
                    None => Some(client.recv().await),
                }
            };
            let received = tokio::select! {
                r = next => r,
                _ = closed.wait_for(|c| *c) => return Ok(None),
            };
            let msg = match received {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e)) if messages.is_empty() => {
                    return Err(Error::unavailable(format!("kafka: {e}")))
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka feed: receiving; the batch goes as it is");
                    break;
                }
            };
            let size = msg.payload_len() + msg.key().map_or(0, <[u8]>::len);
            self.shared.check.read(msg.partition(), msg.offset(), msg.timestamp().to_millis());
            let epoch = lock(&self.shared.tracker).received(msg.partition(), msg.offset());
            offsets.push((msg.partition(), msg.offset(), epoch));
            messages.push(config.message(&msg));
            bytes += size;
            if bytes >= config.max_bytes {
                break;
            }
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + config.linger);
        }
        let mut params = Map::new();
        params.insert("messages".into(), Value::Array(messages));
        let event = Event {
            id: InvocationId::new().to_string(),
            trigger: config.trigger.clone(),
            namespace: config.namespace.clone(),
            params,
            payload: None,
        };
        Ok(Some(Batch { event, offsets, redeliveries: 0 }))
    }
}

/// The feed as its log check sees it: paused while the brokers are away; a partition whose
/// log started again is read from its beginning, acknowledgements of the old log's messages
/// commit nothing any more, and the new log's start is committed (the old position,
/// committed to the new log, would make the group's next member skip what lies below it).
struct FeedReader(Weak<Shared>);

impl FeedReader {
    fn client(&self) -> Option<(Arc<Shared>, Arc<Client>)> {
        let shared = self.0.upgrade()?;
        let client = lock(&shared.consumer).clone()?;
        Some((shared, client))
    }
}

impl Reader for FeedReader {
    fn pause(&self) -> bool {
        let Some((shared, client)) = self.client() else { return false };
        if let Err(e) = pause_assigned(&client, &shared.config.kafka.topic) {
            tracing::debug!(error = %e, "kafka feed: consumer not paused");
        }
        true
    }

    fn resume(&self, restarted: &[Restarted]) -> std::result::Result<(), String> {
        let Some((shared, client)) = self.client() else { return Ok(()) };
        let topic = &shared.config.kafka.topic;
        let mut start = TopicPartitionList::new();
        resume_assigned(&client, topic, restarted, |r| {
            lock(&shared.tracker).forget(r.partition);
            if let Err(e) = start.add_partition_offset(topic, r.partition, Offset::Offset(r.start))
            {
                tracing::warn!(partition = r.partition, error = %e, "kafka feed: the new log's start not committed");
            }
        })?;
        if start.count() > 0 {
            if let Err(e) = client.commit(&start, CommitMode::Async) {
                tracing::warn!(error = %e, "kafka feed: the new logs' start not committed");
            }
        }
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.consumer).take() {
            // Never block the dropping thread (see `crate::kafka`'s docs on closing).
            leave_group_detached(c);
        }
    }
}

#[async_trait]
impl EventSource for KafkaFeed {
    async fn next_event(&self) -> Result<Option<Delivery<Event>>> {
        if let Some(batch) = lock(&self.shared.again).pop_front() {
            return Ok(Some(self.delivery(batch)));
        }
        let Some(client) = self.client() else { return Ok(None) };
        let batch = self.batch(&client).await?;
        Ok(batch.map(|b| self.delivery(b)))
    }
}

/// Settles one batch: an acknowledgement commits its offsets (as far as no earlier batch
/// is still out), a rejection or a drop hands it back for delivery again.
struct FeedAck {
    shared: Weak<Shared>,
    /// `Some` until settled.
    batch: Option<Batch>,
}

impl FeedAck {
    fn give_back(&mut self) {
        let (Some(shared), Some(mut batch)) = (self.shared.upgrade(), self.batch.take()) else {
            return;
        };
        batch.redeliveries = batch.redeliveries.saturating_add(1);
        lock(&shared.again).push_back(batch);
    }
}

impl Acknowledge for FeedAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let (Some(shared), Some(batch)) = (self.shared.upgrade(), self.batch.take()) else {
            return Box::pin(std::future::ready(Ok(())));
        };
        // The offset to commit per partition: past the lowest message still out.
        let mut commits = BTreeMap::new();
        {
            let mut tracker = lock(&shared.tracker);
            for &(partition, offset, epoch) in &batch.offsets {
                if let Some(to) = tracker.done(partition, offset, epoch) {
                    commits.insert(partition, to);
                }
            }
        }
        let client = lock(&shared.consumer).clone();
        let topic = shared.config.kafka.topic.clone();
        Box::pin(async move {
            let Some(client) = client.filter(|_| !commits.is_empty()) else { return Ok(()) };
            let mut tpl = TopicPartitionList::new();
            for (partition, to) in commits {
                tpl.add_partition_offset(&topic, partition, Offset::Offset(to))
                    .map_err(|e| Error::internal(format!("kafka: {e}")))?;
            }
            // A synchronous commit waits for the broker: run it off the async threads.
            let committed =
                tokio::task::spawn_blocking(move || client.commit(&tpl, CommitMode::Sync))
                    .await
                    .map_err(|e| Error::internal(format!("kafka feed commit: {e}")))?;
            committed.map_err(|e| {
                // Not lost: a later batch's commit covers it, or the group delivers it again.
                Error::unavailable(format!("kafka: committing the feed's offsets: {e}"))
            })
        })
    }

    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.give_back();
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Drop for FeedAck {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::MockKafka;

    fn offsets(event: &Event) -> Vec<i64> {
        let messages = event.params["messages"].as_array().cloned().unwrap_or_default();
        messages.iter().filter_map(|m| m["offset"].as_i64()).collect()
    }

    async fn next_batch(feed: &KafkaFeed) -> Delivery<Event> {
        let next = async {
            loop {
                if let Ok(Some(d)) = feed.next_event().await {
                    return d;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), next).await.expect("a batch within 30 s")
    }

    /// After the brokers went away, a partition whose log holds another message at the
    /// offset read (a broker back without its data, played by noting another timestamp:
    /// the mock cluster keeps its logs) fires its messages again from the beginning.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_whose_log_started_again_fires_again_from_its_beginning() {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("orders", 1).expect("topic");
        let mut config = KafkaConfig::new(kafka.bootstrap_servers());
        config.topic = "orders".into();
        config.group_id = "feed-restart".into();
        let mut feed_config = KafkaFeedConfig::new(config, "guest", "orders-in");
        feed_config.max_messages = 2;
        for v in ["a", "b"] {
            kafka.produce("orders", 0, None, v).await.expect("produced");
        }
        let feed = KafkaFeed::new(feed_config).expect("feed");
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let d = next_batch(&feed).await;
            seen.extend(offsets(d.item()));
            d.ack().await.expect("acknowledged");
        }
        assert_eq!(seen, [0, 1]);
        feed.shared.check.read(0, 1, Some(1));
        feed.shared.check.brokers_lost();
        let mut again = Vec::new();
        while again.len() < 2 {
            let d = next_batch(&feed).await;
            again.extend(offsets(d.item()));
            d.ack().await.expect("acknowledged");
        }
        assert_eq!(again, [0, 1], "the partition fired again from its beginning");
        feed.close().await.expect("closed");
    }
}

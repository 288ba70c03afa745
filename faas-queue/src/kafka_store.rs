//! [`KafkaActivationStore`] (feature `kafka`): async activation records shared between
//! processes through a Kafka topic, so that a gateway can answer
//! `GET /system/activations/{call-id}` for calls a worker in another process ran.
//!
//! - **Writers** (the worker, the gateway's [`TrackedPublisher`](crate::TrackedPublisher))
//!   publish every state change of a record to the activations topic, keyed by call id,
//!   as JSON ([`AsyncActivation`]). The topic is meant to be *compacted*
//!   (`cleanup.policy=compact`): only the latest record per call id needs to be kept.
//! - **Readers** consume every partition of that topic from the beginning (no consumer
//!   group: every store instance reads everything) into a bounded in-memory map, and answer
//!   [`ActivationStore::get`] from it. A store's own writes are applied to its map at once,
//!   so a lookup right after the gateway's 202 finds at least `queued`.
//!
//! Records only move forward: `queued` -> `running` -> a final state (`succeeded`,
//! `failed`, `dead-lettered`), then the final state with its callback outcome. Records
//! written by different processes may reach the topic in any order, so a record replaces
//! the one kept only if it is at least as new ([`supersedes`]); an older state arriving
//! late is ignored. A writer never publishes a record older than what it already knows,
//! and when a reader sees an older record land *after* a newer one (which compaction would
//! keep as the latest), it publishes the newer record again, so the topic's last record per
//! call id is the newest one.
//!
//! The map keeps at most `capacity` records (default 100 000); past it the oldest are
//! evicted, finished ones first. Partitions added to the topic after a store started are not
//! read by it.
//!
//! After the brokers went away, the reader checks that each partition's log still holds the
//! last record it read, and reads a partition whose log started again (a broker back
//! without its data) from its beginning.
//!
//! Closing: the reader is not a group member, so dropping it never waits for a group to be
//! left; it is still dropped on a detached thread (and [`KafkaActivationStore::close`] waits
//! for it, bounded), so no caller ever blocks on librdkafka.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use faas_core::queue::{ActivationStore, AsyncActivation, AsyncState};
use faas_core::util::lock;
use faas_core::{Error, InvocationId, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::kafka::{config_error, KafkaConfig, KafkaPublisher};
use crate::kafka_log_check::{
    pause_assigned, resume_assigned, CheckedContext, LogCheck, Restarted,
};

/// The suffix of the default activations topic: records of the queue topic `faas-async`
/// go to `faas-async-activations`.
pub const ACTIVATIONS_TOPIC_SUFFIX: &str = "-activations";

/// The default activations topic of a queue topic: `<queue topic>-activations`
/// (`faas-async-activations` for the default queue topic). Gateways and workers of one
/// queue agree on it without configuration.
pub fn default_activations_topic(queue_topic: &str) -> String {
    format!("{queue_topic}{ACTIVATIONS_TOPIC_SUFFIX}")
}

/// The default number of records a store keeps in memory.
pub const DEFAULT_CAPACITY: usize = 100_000;

fn rank(state: AsyncState) -> u8 {
    match state {
        AsyncState::Queued => 0,
        AsyncState::Running => 1,
        AsyncState::Succeeded | AsyncState::Failed | AsyncState::DeadLettered => 2,
    }
}

/// How far along a record is: state (queued < running < final), then attempts, then
/// whether the callback outcome is in, then the write time.
fn version(r: &AsyncActivation) -> (u8, u32, bool, u64) {
    (rank(r.state), r.attempts, r.callback.is_some(), r.updated_at)
}

/// Whether `new` may replace `old` (records of one call id): it is at least as far along.
/// States only move forward (`queued` -> `running` -> final); within one state more
/// attempts, then a callback outcome, then a later `updatedAt` win. Equal records replace
/// each other (a record read back is idempotent).
pub fn supersedes(new: &AsyncActivation, old: &AsyncActivation) -> bool {
    version(new) >= version(old)
}

struct Entry {
    record: AsyncActivation,
    /// The last record read from the topic for this call id was older than `record`
    /// (compaction would keep that older one): publish `record` again.
    stale_on_topic: bool,
    /// This store's own publications of this call id not read back yet: a record read
    /// meanwhile precedes them on the topic, so an older one is not stale there.
    unread_own: u32,
}

struct Records {
    map: HashMap<InvocationId, Entry>,
    /// Call ids in insertion order, for eviction.
    order: VecDeque<InvocationId>,
    capacity: usize,
}

enum Merge {
    /// Kept (new, or replacing an older or equal record).
    Kept,
    /// Ignored: the record kept is newer.
    Older,
}

impl Records {
    fn new(capacity: usize) -> Self {
        Records { map: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    fn merge(&mut self, record: AsyncActivation, from_topic: bool) -> Merge {
        match self.map.get_mut(&record.call_id) {
            Some(e) if supersedes(&record, &e.record) => {
                e.record = record;
                e.stale_on_topic = false;
                Merge::Kept
            }
            Some(e) => {
                if from_topic {
                    e.stale_on_topic = true;
                }
                Merge::Older
            }
            None => {
                if self.map.len() >= self.capacity {
                    self.evict();
                }
                self.order.push_back(record.call_id.clone());
                let entry = Entry { record, stale_on_topic: false, unread_own: 0 };
                self.map.insert(entry.record.call_id.clone(), entry);
                Merge::Kept
            }
        }
    }

    /// Counts one more (`true`) or one less of this store's own publications of `call_id`
    /// on their way through the topic.
    fn own_in_flight(&mut self, call_id: &InvocationId, more: bool) {
        if let Some(e) = self.map.get_mut(call_id) {
            e.unread_own = if more { e.unread_own + 1 } else { e.unread_own.saturating_sub(1) };
        }
    }

    fn remove(&mut self, call_id: &InvocationId) {
        // Its id stays in `order` until eviction skips it.
        self.map.remove(call_id);
    }

    /// Removes one record: the oldest finished one among the oldest few, else the oldest.
    fn evict(&mut self) {
        while self.order.front().is_some_and(|id| !self.map.contains_key(id)) {
            self.order.pop_front();
        }
        let pos = self
            .order
            .iter()
            .take(64)
            .position(|id| self.map.get(id).is_some_and(|e| e.record.state.is_terminal()))
            .unwrap_or(0);
        if let Some(id) = self.order.remove(pos) {
            self.map.remove(&id);
        }
    }

    /// Takes the records whose topic copy is stale (clearing the marks).
    fn take_stale(&mut self) -> Vec<AsyncActivation> {
        self.map
            .values_mut()
            .filter(|e| e.stale_on_topic)
            .map(|e| {
                e.stale_on_topic = false;
                e.record.clone()
            })
            .collect()
    }
}

/// Counters of one store.
#[derive(Debug, Default)]
pub struct KafkaStoreStats {
    /// Records read from the topic.
    pub read: AtomicU64,
    /// Records read from the topic that were older than the one kept (ignored).
    pub older_ignored: AtomicU64,
    /// Records published by [`ActivationStore::put`].
    pub written: AtomicU64,
    /// Records published again because an older one landed after them.
    pub republished: AtomicU64,
    /// Messages on the topic that are not a record (skipped).
    pub malformed: AtomicU64,
}

type Reader = StreamConsumer<CheckedContext>;

/// Drops the reader on a detached thread (librdkafka may block while closing), then
/// signals `done`.
struct DetachOnDrop {
    consumer: Option<Arc<Reader>>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        let (consumer, done) = (self.consumer.take(), self.done.take());
        let _ =
            std::thread::Builder::new().name("faas-kafka-store-close".into()).spawn(move || {
                drop(consumer);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            });
    }
}

struct Shared {
    records: Arc<Mutex<Records>>,
    /// The reader's log check (the last record read per partition).
    #[cfg_attr(not(test), allow(dead_code))]
    check: Arc<LogCheck>,
    producer: KafkaPublisher,
    topic: String,
    ready: watch::Receiver<bool>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    reader_closed: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    stats: Arc<KafkaStoreStats>,
    close_timeout: Duration,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.reader).take() {
            h.abort();
        }
    }
}

/// Activation records on a Kafka topic, read into a bounded in-memory map; see the
/// [module docs](self). Cheap to clone; clones share the map, the producer and the reader.
#[derive(Clone)]
pub struct KafkaActivationStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaActivationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaActivationStore")
            .field("topic", &self.shared.topic)
            .field("len", &self.len())
            .field("caught_up", &self.is_caught_up())
            .finish()
    }
}

impl KafkaActivationStore {
    /// A store on `topic` (see [`default_activations_topic`]) of the cluster in `config`
    /// (brokers, client id, `properties`, `publish_timeout`, `close_timeout`), keeping
    /// [`DEFAULT_CAPACITY`] records. Must be called within a tokio runtime: the reader runs
    /// on it. Fails with [`Error::InvalidSpec`] (field `kafka`) on an invalid
    /// configuration; connecting happens in the background.
    pub fn new(config: &KafkaConfig, topic: &str) -> Result<Self> {
        Self::with_capacity(config, topic, DEFAULT_CAPACITY)
    }

    /// [`KafkaActivationStore::new`] keeping at most `capacity` records (at least 1).
    pub fn with_capacity(config: &KafkaConfig, topic: &str, capacity: usize) -> Result<Self> {
        Self::build(config, topic, capacity, None)
    }

    /// [`KafkaActivationStore::new`] publishing its records with the producer of `publisher`
    /// ([`KafkaPublisher::sharing_with`]): a gateway that publishes calls and their `queued`
    /// records together sends both in one request, and runs one producer instead of two.
    pub fn sharing(publisher: &KafkaPublisher, config: &KafkaConfig, topic: &str) -> Result<Self> {
        Self::build(config, topic, DEFAULT_CAPACITY, Some(publisher))
    }

    fn build(
        config: &KafkaConfig,
        topic: &str,
        capacity: usize,
        publisher: Option<&KafkaPublisher>,
    ) -> Result<Self> {
        if topic.is_empty() {
            return Err(Error::invalid("activations-topic", "must not be empty"));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::internal("the Kafka activation store must be created within a tokio runtime")
        })?;
        // Replaced after a fatal error (as after a broker restarted empty), as the queue's.
        let producer = match publisher {
            Some(p) => p.sharing_with(topic),
            None => KafkaPublisher::to_topic(config, topic)?,
        };

        let mut c = config.base();
        config.apply_properties(&mut c);
        // Not a group member (partitions are assigned, never subscribed): every store reads
        // the whole topic and commits nothing. librdkafka wants a group id all the same.
        c.set("group.id", format!("{}-activations-reader", config.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        let check = LogCheck::new(topic);
        let consumer: Arc<Reader> = Arc::new(
            c.create_with_context(CheckedContext {
                check: check.clone(),
                client: "activations reader",
            })
            .map_err(|e| config_error("consumer", e))?,
        );
        check.spawn(
            config,
            Box::new(StoreReader { client: Arc::downgrade(&consumer), topic: topic.to_string() }),
        );

        let records = Arc::new(Mutex::new(Records::new(capacity)));
        let stats = Arc::new(KafkaStoreStats::default());
        let (ready_tx, ready_rx) = watch::channel(false);
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let reader = ReadLoop {
            consumer: DetachOnDrop { consumer: Some(consumer), done: Some(closed_tx) },
            check: check.clone(),
            topic: topic.to_string(),
            records: records.clone(),
            producer: producer.clone(),
            ready: ready_tx,
            stats: stats.clone(),
        };
        let handle = runtime.spawn(reader.run());
        Ok(KafkaActivationStore {
            shared: Arc::new(Shared {
                records,
                check,
                producer,
                topic: topic.to_string(),
                ready: ready_rx,
                reader: Mutex::new(Some(handle)),
                reader_closed: Mutex::new(Some(closed_rx)),
                stats,
                close_timeout: config.close_timeout,
            }),
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The store's counters.
    pub fn stats(&self) -> &Arc<KafkaStoreStats> {
        &self.shared.stats
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        lock(&self.shared.records).map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads one record without awaiting.
    pub fn get_now(&self, call_id: &InvocationId) -> Option<AsyncActivation> {
        lock(&self.shared.records).map.get(call_id).map(|e| e.record.clone())
    }

    /// Whether the reader has read the topic up to where it ended when the store started
    /// (records written before then are all known).
    pub fn is_caught_up(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Waits (at most `timeout`) until [`KafkaActivationStore::is_caught_up`]; gives
    /// [`Error::Unavailable`] if it is not by then (the store keeps reading).
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.shared.ready.clone();
        let waited =
            tokio::time::timeout(timeout, async { rx.wait_for(|r| *r).await.is_ok() }).await;
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::unavailable("kafka: the activation store reader stopped")),
            Err(_) => Err(Error::unavailable(format!(
                "kafka: the activation store has not read topic {} within {} (is Kafka up, \
                 and does the topic exist? create it with cleanup.policy=compact)",
                self.shared.topic,
                faas_core::util::format_duration(timeout)
            ))),
        }
    }

    /// Stops reading and releases the reader and the producer (pending writes are flushed),
    /// waiting at most the configured `close_timeout`. Lookups keep answering from the map;
    /// writes after closing are still published. Close stores before the cluster goes away.
    pub async fn close(&self) -> Result<()> {
        let handle = lock(&self.shared.reader).take();
        let closed = lock(&self.shared.reader_closed).take();
        let timeout = self.shared.close_timeout;
        let work = async {
            if let Some(h) = handle {
                h.abort();
                let _ = h.await;
            }
            if let Some(rx) = closed {
                let _ = rx.await;
            }
            let producer = self.shared.producer.clone();
            let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| {
            Error::unavailable(format!(
                "kafka: the activation store did not close within {}",
                faas_core::util::format_duration(timeout)
            ))
        })
    }

    async fn publish(&self, record: &AsyncActivation) -> Result<()> {
        send(&self.shared.producer, record).await?;
        self.shared.stats.written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn send(producer: &KafkaPublisher, record: &AsyncActivation) -> Result<()> {
    let payload = serde_json::to_vec(record)
        .map_err(|e| Error::internal(format!("encoding an activation record: {e}")))?;
    producer.send(record.call_id.as_str(), &payload, None).await
}

#[async_trait]
impl ActivationStore for KafkaActivationStore {
    /// Applies `record` to the map at once (if it [`supersedes`] the one kept; a `queued`
    /// record thus never replaces a later state), then publishes it to the topic and waits
    /// for the acknowledgement. A record older than the one kept is neither kept nor
    /// published. Fails with [`Error::Unavailable`] when Kafka does not acknowledge it
    /// within the publish timeout.
    async fn put(&self, record: AsyncActivation) -> Result<()> {
        let merged = {
            let mut g = lock(&self.shared.records);
            let merged = g.merge(record.clone(), false);
            if let Merge::Kept = merged {
                g.own_in_flight(&record.call_id, true);
            }
            merged
        };
        match merged {
            Merge::Older => Ok(()),
            Merge::Kept => {
                let sent = self.publish(&record).await;
                if sent.is_err() {
                    lock(&self.shared.records).own_in_flight(&record.call_id, false);
                }
                sent
            }
        }
    }

    /// Each record as by [`ActivationStore::put`], all merged under one lock and published
    /// at once (one acknowledgement's wait for the batch, not one per record).
    async fn put_batch(&self, records: Vec<AsyncActivation>) -> Vec<Result<()>> {
        let kept: Vec<bool> = {
            let mut g = lock(&self.shared.records);
            records
                .iter()
                .map(|r| {
                    let kept = matches!(g.merge(r.clone(), false), Merge::Kept);
                    if kept {
                        g.own_in_flight(&r.call_id, true);
                    }
                    kept
                })
                .collect()
        };
        let sends = records.iter().zip(&kept).map(|(r, kept)| async move {
            if !*kept {
                return Ok(());
            }
            let sent = self.publish(r).await;
            if sent.is_err() {
                lock(&self.shared.records).own_in_flight(&r.call_id, false);
            }
            sent
        });
        futures::future::join_all(sends).await
    }

    async fn get(&self, call_id: &InvocationId) -> Result<Option<AsyncActivation>> {
        Ok(self.get_now(call_id))
    }
}

/// The store's reader as its log check sees it: paused while the brokers are away, and a
/// partition whose log started again read from its beginning (records are merged
/// idempotently).
struct StoreReader {
    client: std::sync::Weak<Reader>,
    topic: String,
}

impl crate::kafka_log_check::Reader for StoreReader {
    fn pause(&self) -> bool {
        let Some(client) = self.client.upgrade() else { return false };
        if let Err(e) = pause_assigned(&client, &self.topic) {
            tracing::debug!(error = %e, "activation store: reader not paused");
        }
        true
    }

    fn resume(&self, restarted: &[Restarted]) -> std::result::Result<(), String> {
        let Some(client) = self.client.upgrade() else { return Ok(()) };
        resume_assigned(&client, &self.topic, restarted, |_| {})
    }
}

/// The background reader of one store.
struct ReadLoop {
    consumer: DetachOnDrop,
    /// The last record read per partition, checked after the brokers went away.
    check: Arc<LogCheck>,
    topic: String,
    records: Arc<Mutex<Records>>,
    producer: KafkaPublisher,
    ready: watch::Sender<bool>,
    stats: Arc<KafkaStoreStats>,
}

const RETRY: Duration = Duration::from_millis(250);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

impl ReadLoop {
    fn client(&self) -> Option<Arc<Reader>> {
        self.consumer.consumer.clone()
    }

    /// The partitions of the topic and their high watermarks (0 for an empty partition),
    /// retried until known.
    async fn partitions(&self) -> Vec<(i32, i64)> {
        let mut warned = false;
        loop {
            let Some(client) = self.client() else { return Vec::new() };
            let topic = self.topic.clone();
            let found = tokio::task::spawn_blocking(move || -> std::result::Result<_, String> {
                let md = client
                    .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                    .map_err(|e| e.to_string())?;
                let t = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .ok_or_else(|| format!("topic {topic} not in the metadata"))?;
                if let Some(e) = t.error() {
                    return Err(format!("topic {topic}: {e:?}"));
                }
                if t.partitions().is_empty() {
                    return Err(format!("topic {topic} has no partitions"));
                }
                let mut out = Vec::with_capacity(t.partitions().len());
                for p in t.partitions() {
                    let (low, high) = client
                        .fetch_watermarks(&topic, p.id(), METADATA_TIMEOUT)
                        .map_err(|e| format!("watermarks of {topic}/{}: {e}", p.id()))?;
                    // Nothing to read when every record is gone (retention).
                    out.push((p.id(), if high > low { high } else { 0 }));
                }
                Ok(out)
            })
            .await;
            match found {
                Ok(Ok(parts)) => return parts,
                Ok(Err(e)) => {
                    if !warned {
                        tracing::warn!(topic = %self.topic, error = %e, "activation records topic not readable yet; retrying");
                        warned = true;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "activation store metadata task failed"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    async fn run(self) {
        let parts = self.partitions().await;
        let Some(client) = self.client() else { return };
        let mut tpl = TopicPartitionList::new();
        for (p, _) in &parts {
            if let Err(e) = tpl.add_partition_offset(&self.topic, *p, Offset::Beginning) {
                tracing::warn!(error = %e, "activation store: cannot assign a partition");
            }
        }
        if let Err(e) = client.assign(&tpl) {
            tracing::warn!(topic = %self.topic, error = %e, "activation store: cannot assign the topic");
            return;
        }
        // Partitions still to be read up to their high watermark of the start.
        let mut behind: HashMap<i32, i64> = parts.into_iter().filter(|(_, h)| *h > 0).collect();
        let mut stale_pending: HashSet<InvocationId> = HashSet::new();
        if behind.is_empty() {
            let _ = self.ready.send(true);
        }
        loop {
            let msg = match client.recv().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "activation store read failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let (partition, offset) = (msg.partition(), msg.offset());
            self.check.read(partition, offset, msg.timestamp().to_millis());
            let repair = match msg.payload() {
                None => {
                    // A tombstone: the record was deleted.
                    if let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) {
                        lock(&self.records).remove(&InvocationId::from_string(key));
                    }
                    None
                }
                Some(payload) => match serde_json::from_slice::<AsyncActivation>(payload) {
                    Ok(record) => {
                        self.stats.read.fetch_add(1, Ordering::Relaxed);
                        let id = record.call_id.clone();
                        let mut g = lock(&self.records);
                        let own_unread = g.map.get(&id).map_or(0, |e| e.unread_own);
                        match g.merge(record, true) {
                            Merge::Kept => {
                                // Most likely this store's own write read back.
                                g.own_in_flight(&id, false);
                                None
                            }
                            Merge::Older if own_unread > 0 => {
                                // This store's newer write follows on the topic: not stale.
                                self.stats.older_ignored.fetch_add(1, Ordering::Relaxed);
                                if let Some(e) = g.map.get_mut(&id) {
                                    e.stale_on_topic = false;
                                }
                                None
                            }
                            Merge::Older => {
                                self.stats.older_ignored.fetch_add(1, Ordering::Relaxed);
                                if behind.is_empty() {
                                    g.map.get_mut(&id).map(|e| {
                                        e.stale_on_topic = false;
                                        e.record.clone()
                                    })
                                } else {
                                    stale_pending.insert(id);
                                    None
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = %self.topic, partition, offset, error = %e, "not an activation record; skipped");
                        None
                    }
                },
            };
            drop(msg);
            if let Some(r) = repair {
                self.republish(vec![r]);
            }
            if let Some(high) = behind.get(&partition) {
                if offset + 1 >= *high {
                    behind.remove(&partition);
                    if behind.is_empty() {
                        // Caught up: repair what is still stale on the topic.
                        let stale = if stale_pending.is_empty() {
                            Vec::new()
                        } else {
                            stale_pending.clear();
                            lock(&self.records).take_stale()
                        };
                        self.republish(stale);
                        let _ = self.ready.send(true);
                    }
                }
            }
        }
    }

    /// Publishes `records` again (in the background), so that the topic's last record per
    /// call id is the newest one.
    fn republish(&self, records: Vec<AsyncActivation>) {
        if records.is_empty() {
            return;
        }
        let (producer, stats) = (self.producer.clone(), self.stats.clone());
        tokio::spawn(async move {
            for r in records {
                match send(&producer, &r).await {
                    Ok(()) => {
                        stats.republished.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(call_id = %r.call_id.as_str(), error = %e, "republishing an activation record failed")
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::example_item;

    fn rec(state: AsyncState, attempts: u32, updated_at: u64) -> AsyncActivation {
        let mut r = AsyncActivation::queued(&example_item());
        r.call_id = InvocationId::from_string("c1");
        r.state = state;
        r.attempts = attempts;
        r.updated_at = updated_at;
        r
    }

    /// A store's reader whose partition's log holds another record at the offset read
    /// after the brokers went away (a broker restarted without its data, played by noting
    /// another timestamp: the mock cluster keeps its logs) reads that partition again from
    /// its beginning.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_whose_log_started_again_is_read_again() {
        let kafka = crate::kafka::MockKafka::new(1).expect("mock cluster");
        let config = KafkaConfig::new(kafka.bootstrap_servers());
        kafka.create_topic("records", 1).expect("topic");
        let store = KafkaActivationStore::new(&config, "records").expect("store");
        store.wait_caught_up(Duration::from_secs(30)).await.expect("caught up");
        for (i, state) in [AsyncState::Queued, AsyncState::Running].into_iter().enumerate() {
            store.put(rec(state, 0, i as u64)).await.expect("put");
        }
        let stats = store.stats().clone();
        let read = |n: u64| {
            let stats = stats.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while stats.read.load(Ordering::Relaxed) < n {
                    assert!(std::time::Instant::now() < deadline, "{n} records not read in 30 s");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        read(2).await;
        store.shared.check.read(0, 1, Some(1));
        store.shared.check.brokers_lost();
        read(4).await;
        assert_eq!(store.stats().read.load(Ordering::Relaxed), 4, "the log read once more");
        store.close().await.expect("closed");
    }

    #[test]
    fn states_only_move_forward() {
        let queued = rec(AsyncState::Queued, 0, 10);
        let running = rec(AsyncState::Running, 1, 5);
        let retry = rec(AsyncState::Running, 2, 6);
        let done = rec(AsyncState::Succeeded, 2, 7);
        let mut with_callback = done.clone();
        with_callback.callback = Some(faas_core::queue::CallbackOutcome {
            delivered: true,
            attempts: 1,
            status: Some(200),
            error: None,
        });
        // A later clock does not let an earlier state win.
        assert!(supersedes(&running, &queued));
        assert!(!supersedes(&queued, &running));
        assert!(supersedes(&retry, &running));
        assert!(!supersedes(&running, &retry));
        assert!(supersedes(&done, &retry));
        assert!(!supersedes(&retry, &done));
        assert!(supersedes(&with_callback, &done));
        assert!(!supersedes(&done, &with_callback));
        assert!(supersedes(&done, &done), "equal records replace each other");
        let failed_later = rec(AsyncState::Failed, 2, 8);
        assert!(supersedes(&failed_later, &done), "within a state the later write wins");
    }

    #[test]
    fn merge_marks_stale_topic_copies_and_evicts_finished_first() {
        let mut m = Records::new(2);
        assert!(matches!(m.merge(rec(AsyncState::Running, 1, 5), false), Merge::Kept));
        assert!(matches!(m.merge(rec(AsyncState::Queued, 0, 9), true), Merge::Older));
        let stale = m.take_stale();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].state, AsyncState::Running);
        assert!(m.take_stale().is_empty(), "marks are cleared");

        let mut b = rec(AsyncState::Succeeded, 1, 1);
        b.call_id = InvocationId::from_string("b");
        m.merge(b, true);
        let mut c = rec(AsyncState::Queued, 0, 1);
        c.call_id = InvocationId::from_string("c");
        m.merge(c, false);
        assert_eq!(m.map.len(), 2);
        assert!(m.map.contains_key(&InvocationId::from_string("c1")), "the running one stays");
        assert!(!m.map.contains_key(&InvocationId::from_string("b")), "the finished one went");
    }
}

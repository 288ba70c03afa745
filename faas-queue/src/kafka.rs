//! The Kafka queue (feature `kafka`): rdkafka with a bundled librdkafka.
//!
//! - [`KafkaPublisher`]: an idempotent producer (`enable.idempotence=true`, so `acks=all`
//!   and no duplicates from producer retries). Each invocation is one JSON message keyed by
//!   [`QueuedInvocation::key`]: its call id, so that even one function's calls spread over
//!   every partition and every worker, or, for calls that ask for an order with
//!   `X-Queue-Key`, `namespace/function/value`, so that those land in one partition and are
//!   delivered in publish order. A full local producer queue answers [`Error::Overloaded`].
//! - [`KafkaConsumer`]: a member of a consumer group (several workers in one group share
//!   the partitions and take over each other's on rebalance). Offsets are committed only for
//!   invocations that were acknowledged, that is finished (succeeded, failed for good, or
//!   dead-lettered): the consumer tracks the offsets in flight per partition and stores the
//!   lowest unfinished one for the (periodic and on-close) commit. A worker that dies
//!   mid-invocation thus leaves the message to be delivered again to whoever gets the
//!   partition.
//!   Each offset is tracked as its message is taken off librdkafka's queue, in one step
//!   under a lock that concurrent callers of [`QueueConsumer::next_batch`] share (rebalance
//!   events come off the same queue), so the commit point never passes a message taken
//!   but not yet tracked.
//! - [`KafkaDeadLetters`]: dead letters as JSON on their own topic. Messages that are not a
//!   valid [`QueuedInvocation`] go there too, raw, with a `faas-error` header, so that they
//!   never block a partition.
//!
//! A nacked delivery is published again at the end of the topic (with a
//! `faas-redeliveries` header) before its offset counts as done. A delivery dropped
//! unsettled is nacked the same way when [`KafkaConfig::nack_on_drop`] is set (the
//! default); otherwise it stays unfinished and is delivered again after the next rebalance
//! or restart, as after a crash.
//!
//! Group membership: cooperative-sticky assignment (a rebalance moves only the partitions
//! that change hands) and a session timeout of 6 s, so the partitions of a worker that died
//! without leaving go to the others within about 6 s; both can be changed with
//! [`KafkaConfig::property`] (`partition.assignment.strategy`, `session.timeout.ms`,
//! `heartbeat.interval.ms`).
//!
//! A broker that comes back without its data (its logs start again at offset 0) would let
//! the consumer skip, from its old position, what the new logs get below it: after the
//! brokers went away, the consumer checks that each partition's log still holds the last
//! message it read, and reads the partitions whose log started again from their beginning
//! (`kafka_log_check`).
//!
//! librdkafka's own log lines and error events go through `tracing` (target `librdkafka`).
//!
//! Closing: dropping a subscribed librdkafka consumer blocks until it has left its group,
//! which never happens if the cluster is gone. [`KafkaConsumer::close`] (or the worker's
//! shutdown) therefore leaves the group on a blocking thread with a time limit, and a
//! `KafkaConsumer` dropped unclosed hands its client to a detached thread, so no caller
//! ever blocks on it. Close consumers before the cluster goes away.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use faas_core::event::{Acknowledge, Delivery};
use faas_core::queue::{
    DeadLetter, DeadLetterSink, QueueConsumer, QueueDepth, QueuePublisher, QueuedInvocation,
};
use faas_core::util::lock;
use faas_core::{Error, Result};
use futures::future::BoxFuture;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka_log_check::{
    brokers_lost, pause_assigned, resume_assigned, LogCheck, Reader, Restarted,
};

/// The default of [`KafkaConfig::linger`], 1 ms (librdkafka's default is 5 ms): every 202
/// waits for its call's acknowledgement, so the linger is part of each async call's latency,
/// while calls arriving together still share batches.
pub const LINGER: Duration = Duration::from_millis(1);

/// The linger `faas-queue-worker` uses, librdkafka's default of 5 ms: nobody waits on its
/// records' acknowledgements (the function's slot is free when the attempt ends), and five
/// times fewer produce requests cost the worker about 30 % less CPU per call (BENCHMARKS.md,
/// 2026-12-06 21:12).
pub const WORKER_LINGER: Duration = Duration::from_millis(5);

/// The header counting redeliveries of a nacked message.
pub const REDELIVERIES_HEADER: &str = "faas-redeliveries";
/// The header carrying the parse error of a malformed message sent to the dead letters.
pub const ERROR_HEADER: &str = "faas-error";

/// Where and how to reach Kafka.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    /// The topic of queued invocations.
    pub topic: String,
    /// The dead-letter topic.
    pub dead_letter_topic: String,
    /// The consumer group of the workers.
    pub group_id: String,
    /// `client.id`.
    pub client_id: String,
    /// How long the producer keeps trying to deliver one message
    /// (`message.timeout.ms`); past it, `publish` fails with [`Error::Unavailable`].
    pub publish_timeout: Duration,
    /// How often acknowledged offsets are committed (`auto.commit.interval.ms`); they are
    /// also committed when a consumer closes or loses partitions.
    pub commit_interval: Duration,
    /// Nack (publish again) a delivery dropped unsettled. Off, a dropped delivery waits for
    /// the next rebalance or restart, as a crash would.
    pub nack_on_drop: bool,
    /// How long [`KafkaConsumer::close`] waits for the consumer to leave its group.
    pub close_timeout: Duration,
    /// How long a publication may wait for its acknowledgement while a broker is reachable
    /// before the producer is taken for stuck, replaced and the message sent again with the
    /// new one (only a producer that has delivered a message before or is older than
    /// [`KafkaConfig::first_delivery_within`], a new one may still be connecting to a slow
    /// broker; and only when no message at all was acknowledged within that time, a
    /// backlog draining behind a slow broker is progress). A broker that
    /// restarted without its state answers an idempotent producer `UNKNOWN_PRODUCER_ID`,
    /// which librdkafka may retry until the message timeout, message after message; a new
    /// producer registers again and goes through. While no broker is reachable,
    /// publications wait for the message timeout.
    pub stuck_after: Duration,
    /// How long a producer that has delivered nothing yet is given to connect and register
    /// before [`KafkaConfig::stuck_after`] applies to it as to one that has: a producer
    /// built before the broker lost its state, which never delivered before that (a gateway
    /// that took no call), is replaced then like one that had.
    pub first_delivery_within: Duration,
    /// How long the producer waits for a batch to fill (`linger.ms`; default [`LINGER`]).
    pub linger: Duration,
    /// Further librdkafka properties, applied last (to producers and consumers alike),
    /// e.g. `("session.timeout.ms", "6000")` or security settings.
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Defaults: topic `faas-async`, dead letters `faas-async-dead-letters`, group
    /// `faas-queue-worker`.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic: "faas-async".into(),
            dead_letter_topic: "faas-async-dead-letters".into(),
            group_id: "faas-queue-worker".into(),
            client_id: "faas-rs".into(),
            publish_timeout: Duration::from_secs(30),
            commit_interval: Duration::from_millis(500),
            nack_on_drop: true,
            close_timeout: Duration::from_secs(10),
            stuck_after: Duration::from_secs(5),
            first_delivery_within: Duration::from_secs(30),
            linger: LINGER,
            properties: Vec::new(),
        }
    }

    /// Sets one librdkafka property.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    pub(crate) fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("client.id", &self.client_id);
        c
    }

    pub(crate) fn apply_properties(&self, c: &mut ClientConfig) {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
    }

    fn producer(&self, reach: &Arc<Reachability>) -> Result<TracedProducer> {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("linger.ms", (self.linger.as_secs_f64() * 1000.0).to_string())
            .set("message.timeout.ms", self.publish_timeout.as_millis().max(1).to_string())
            // The broker states of `Reachability` (one small JSON document a second).
            .set("statistics.interval.ms", STATS_INTERVAL.as_millis().to_string());
        self.apply_properties(&mut c);
        c.create_with_context(ProducerContext { reach: reach.clone() })
            .map_err(|e| config_error("producer", e))
    }
}

/// The partitions [`ensure_topics`] gives the calls' and the records' topics by default.
pub const DEFAULT_PARTITIONS: i32 = 8;

/// What [`ensure_topics`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicsReport {
    /// The topics it created.
    pub created: Vec<String>,
    /// The topics that were there already.
    pub existing: Vec<String>,
}

/// The admin client's context: logs through `tracing`.
struct AdminContext;

impl ClientContext for AdminContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_to_tracing("topic admin", level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        error_to_tracing("topic admin", &error, reason);
    }
}

/// Creates the queue's topics that do not exist yet: `cfg.topic` (the calls) and
/// `records_topic` (the activation records, compacted: `cleanup.policy=compact`) with
/// `partitions` partitions each, and `cfg.dead_letter_topic` with one. Topics that exist are
/// left as they are (partitions and settings included); each new topic gets the brokers'
/// default replication factor (`default.replication.factor`).
///
/// Fails with [`Error::Unavailable`] naming each topic that could not be created and why
/// (no broker answered within `timeout`, the principal may not create topics, a broker that
/// does not implement topic creation...); the topics may still exist or be created by
/// other means, so a caller can go on after saying so.
pub async fn ensure_topics(
    cfg: &KafkaConfig,
    records_topic: Option<&str>,
    partitions: i32,
    timeout: Duration,
) -> Result<TopicsReport> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let mut c = cfg.base();
    cfg.apply_properties(&mut c);
    let admin: AdminClient<AdminContext> =
        c.create_with_context(AdminContext).map_err(|e| config_error("topic admin client", e))?;
    let admin = Arc::new(admin);
    // The topics there already, from the cluster's metadata (a blocking call): asking to
    // create only the missing ones keeps brokers that cannot create topics out of it when
    // there is nothing to create.
    let existing: BTreeSet<String> = {
        let admin = admin.clone();
        let listed = tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(None, timeout).map(|m| {
                m.topics().iter().map(|t| t.name().to_string()).collect::<BTreeSet<String>>()
            })
        })
        .await;
        match listed {
            Ok(Ok(names)) => names,
            Ok(Err(e)) => return Err(Error::unavailable(format!("listing the Kafka topics: {e}"))),
            Err(e) => return Err(Error::internal(format!("listing the Kafka topics: {e}"))),
        }
    };
    let partitions = partitions.max(1);
    let mut wanted = vec![(cfg.topic.as_str(), partitions, false)];
    if let Some(r) = records_topic {
        wanted.push((r, partitions, true));
    }
    wanted.push((cfg.dead_letter_topic.as_str(), 1, false));
    let mut report = TopicsReport::default();
    let mut topics = Vec::new();
    for (name, n, compact) in wanted {
        if existing.contains(name) {
            report.existing.push(name.to_string());
            continue;
        }
        let t = NewTopic::new(name, n, TopicReplication::Fixed(-1));
        topics.push(if compact { t.set("cleanup.policy", "compact") } else { t });
    }
    if topics.is_empty() {
        return Ok(report);
    }
    let options =
        AdminOptions::new().request_timeout(Some(timeout)).operation_timeout(Some(timeout));
    let results = match tokio::time::timeout(
        timeout + Duration::from_secs(1),
        admin.create_topics(&topics, &options),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(Error::unavailable(format!("creating the Kafka topics: {e}"))),
        Err(_) => {
            return Err(Error::unavailable(format!(
                "creating the Kafka topics: no answer within {}",
                faas_core::util::format_duration(timeout)
            )))
        }
    };
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(t) => report.created.push(t),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => report.existing.push(t),
            Err((t, code)) => failed.push(format!("{t}: {code}")),
        }
    }
    if failed.is_empty() {
        Ok(report)
    } else {
        Err(Error::unavailable(format!("cannot create Kafka topics: {}", failed.join("; "))))
    }
}

/// How long [`TopicKeeper`] waits between two checks of the topics.
const TOPIC_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How many times one [`TopicKeeper`] check tries (a broker that just came back may not
/// answer yet), [`TOPIC_CHECK_INTERVAL`] apart.
const TOPIC_CHECK_TRIES: u32 = 6;

/// Creates a queue's topics again when they go missing: a cluster that lost its data (a
/// broker restarted empty) has none of them, and nothing can be published or read until
/// they exist. Checks with [`ensure_topics`] when a broker is reachable again after all were
/// down, and when a publication fails for an unknown topic; one check at a time, at most
/// one every [`TOPIC_CHECK_INTERVAL`], each trying up to [`TOPIC_CHECK_TRIES`] times.
pub(crate) struct TopicKeeper {
    config: KafkaConfig,
    records_topic: Option<String>,
    partitions: i32,
    runtime: tokio::runtime::Handle,
    /// A check is running.
    running: std::sync::atomic::AtomicBool,
    /// When the last check started.
    last: Mutex<Option<std::time::Instant>>,
    /// Checks started (for tests).
    checks: AtomicU64,
    /// Topics created by the checks.
    created: AtomicU64,
}

impl std::fmt::Debug for TopicKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicKeeper")
            .field("topic", &self.config.topic)
            .field("records_topic", &self.records_topic)
            .finish()
    }
}

impl TopicKeeper {
    /// Starts a check on the runtime unless one is running or one started within
    /// [`TOPIC_CHECK_INTERVAL`]. Called from librdkafka's threads too: never blocks.
    fn check(self: &Arc<Self>, why: &'static str) {
        {
            let mut last = lock(&self.last);
            if last.is_some_and(|t| t.elapsed() < TOPIC_CHECK_INTERVAL)
                || self.running.swap(true, Ordering::AcqRel)
            {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        self.checks.fetch_add(1, Ordering::Relaxed);
        let keeper = self.clone();
        self.runtime.spawn(async move {
            for attempt in 1..=TOPIC_CHECK_TRIES {
                let r = ensure_topics(
                    &keeper.config,
                    keeper.records_topic.as_deref(),
                    keeper.partitions,
                    TOPIC_CHECK_INTERVAL,
                )
                .await;
                match r {
                    Ok(r) => {
                        if !r.created.is_empty() {
                            keeper.created.fetch_add(r.created.len() as u64, Ordering::Relaxed);
                            tracing::warn!(
                                topics = ?r.created, partitions = keeper.partitions, why,
                                "the Kafka topics were missing; created them again"
                            );
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, why, "checking the Kafka topics");
                        if attempt < TOPIC_CHECK_TRIES {
                            tokio::time::sleep(TOPIC_CHECK_INTERVAL).await;
                        }
                    }
                }
            }
            keeper.running.store(false, Ordering::Release);
        });
    }
}

/// Whether a publication failed because its topic or partition does not exist.
fn unknown_topic(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
        )
    )
}

/// How long a reachability probe waits for a broker's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a producer reports its brokers' states (`statistics.interval.ms`).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a producer can reach any broker, for [`QueuePublisher::health`]: set when
/// librdkafka reports every broker down (its `ALL_BROKERS_DOWN` error), cleared when its
/// statistics show a broker up, a delivery succeeds or a metadata probe is answered.
/// Publications go on meanwhile (librdkafka reconnects and delivers within the message
/// timeout); only the health reports it.
#[derive(Debug, Default)]
pub(crate) struct Reachability {
    down: Mutex<Option<(std::time::Instant, String)>>,
    /// A metadata probe is running (at most one).
    probing: std::sync::atomic::AtomicBool,
    /// Checks the topics when a broker is reachable again ([`KafkaPublisher::keep_topics`]).
    keeper: std::sync::OnceLock<Arc<TopicKeeper>>,
}

impl Reachability {
    fn set_down(&self, reason: &str) {
        let mut down = lock(&self.down);
        if down.is_none() {
            tracing::warn!(target: "librdkafka", "no Kafka broker reachable: {reason}");
            *down = Some((std::time::Instant::now(), reason.to_string()));
        }
    }

    fn set_up(&self) {
        if lock(&self.down).take().is_some() {
            tracing::info!(target: "librdkafka", "a Kafka broker is reachable again");
            if let Some(k) = self.keeper.get() {
                k.check("a broker is reachable again");
            }
        }
    }

    /// Whether no broker was reachable.
    fn is_down(&self) -> bool {
        lock(&self.down).is_some()
    }

    /// The health while no broker is reachable.
    fn check(&self) -> Result<()> {
        match &*lock(&self.down) {
            None => Ok(()),
            Some((since, reason)) => Err(Error::unavailable(format!(
                "kafka: no broker reachable for {:.1} s ({reason})",
                since.elapsed().as_secs_f64()
            ))),
        }
    }
}

/// The brokers' states in librdkafka's statistics (the fields read here only).
#[derive(serde::Deserialize)]
struct Stats {
    #[serde(default)]
    brokers: HashMap<String, BrokerStats>,
}

#[derive(serde::Deserialize)]
struct BrokerStats {
    state: String,
    /// -1 for a bootstrap address not yet known by its id.
    nodeid: i32,
}

/// The producers' context: logs through `tracing`, and the brokers' reachability.
pub(crate) struct ProducerContext {
    reach: Arc<Reachability>,
}

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_to_tracing("producer", level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.reach.set_down(reason);
        }
        error_to_tracing("producer", &error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<Stats>(statistics) else { return };
        // Brokers known by id (the cluster's): one of them up is enough to produce.
        if stats.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP") {
            self.reach.set_up();
        }
    }
}

/// librdkafka's log lines as `tracing` events (target `librdkafka`), so they reach the
/// gateway's log like every other line; `client` says which of a process's Kafka clients
/// wrote the line (librdkafka's lines do not).
pub(crate) fn log_to_tracing(client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", client, facility, "{message}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", client, facility, "{message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", client, facility, "{message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", client, facility, "{message}")
        }
    }
}

/// librdkafka's error events as `tracing` events, as [`log_to_tracing`] does its lines.
pub(crate) fn error_to_tracing(client: &str, error: &KafkaError, reason: &str) {
    tracing::error!(target: "librdkafka", client, %error, "{reason}");
}

/// A publisher's producer, how many times it was replaced before, and when it was built.
struct Current {
    producer: TracedProducer,
    generation: u64,
    built: std::time::Instant,
}

/// The producer type of the Kafka queue and store.
pub(crate) type TracedProducer = FutureProducer<ProducerContext>;

pub(crate) fn config_error(what: &str, e: KafkaError) -> Error {
    Error::invalid("kafka", format!("cannot create the Kafka {what}: {e}"))
}

pub(crate) fn produce_error(e: &KafkaError) -> Error {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => Error::Overloaded {
            message: "the Kafka producer queue is full".into(),
            retry_after: Some(Duration::from_secs(1)),
        },
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            Error::invalid("body", format!("the message is too large for Kafka: {e}"))
        }
        _ => Error::unavailable(format!("kafka: {e}")),
    }
}

fn encode(item: &QueuedInvocation) -> Result<Vec<u8>> {
    serde_json::to_vec(item)
        .map_err(|e| Error::internal(format!("encoding a queued invocation: {e}")))
}

/// Publishes queued invocations to a Kafka topic with an idempotent producer.
///
/// A producer that librdkafka declares fatally failed (an idempotent producer whose
/// sequence the broker lost, as after a broker restarted empty) can send nothing again:
/// the publisher then builds a new one from the same configuration and sends again, so the
/// queue recovers without a restart. [`QueuePublisher::health`] reports a fatal producer or
/// a broker that has refused the last publication.
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: Arc<PublisherInner>,
    topic: Arc<str>,
}

/// The producer of one or more publishers ([`KafkaPublisher::sharing_with`]) and its
/// replacement state.
struct PublisherInner {
    producer: Mutex<Current>,
    config: KafkaConfig,
    rebuilds: AtomicU64,
    /// The generation of the last producer that had a message acknowledged, plus one (0:
    /// none yet). Only a producer that has delivered before is taken for stuck: a new one
    /// may still be connecting and registering with a slow broker.
    delivered: AtomicU64,
    /// When the last acknowledgement came, in ms after `born`: a producer acknowledging
    /// messages is making progress, even while one waits behind a backlog past
    /// [`KafkaConfig::stuck_after`].
    last_ack_ms: AtomicU64,
    born: std::time::Instant,
    /// Why the last publication failed, until one succeeds.
    failing: Mutex<Option<String>>,
    /// Whether any broker is reachable (shared by every producer this publisher builds).
    reach: Arc<Reachability>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher").field("topic", &self.topic).finish()
    }
}

impl KafkaPublisher {
    /// A publisher to `config.topic`. Fails with [`Error::InvalidSpec`] (field `kafka`)
    /// on an invalid configuration; connecting happens in the background.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Self::to_topic(config, &config.topic)
    }

    /// A publisher to `topic` (the queue's, its dead letters' or the activation records').
    pub(crate) fn to_topic(config: &KafkaConfig, topic: &str) -> Result<Self> {
        let reach = Arc::new(Reachability::default());
        Ok(KafkaPublisher {
            inner: Arc::new(PublisherInner {
                producer: Mutex::new(Current {
                    producer: config.producer(&reach)?,
                    generation: 0,
                    built: std::time::Instant::now(),
                }),
                config: config.clone(),
                rebuilds: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                last_ack_ms: AtomicU64::new(0),
                born: std::time::Instant::now(),
                failing: Mutex::new(None),
                reach,
            }),
            topic: topic.into(),
        })
    }

    /// A publisher to `topic` on this one's producer: one librdkafka client (its threads
    /// and broker connections) for both, so records of both topics produced in the same
    /// linger go to a broker in one request. The producer's replacement after a fatal error
    /// or a stuck send, its health and its counters are shared too.
    pub fn sharing_with(&self, topic: &str) -> KafkaPublisher {
        KafkaPublisher { inner: self.inner.clone(), topic: topic.into() }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How many times the producer was replaced (after a fatal error, or stuck).
    pub fn rebuilds(&self) -> u64 {
        self.inner.rebuilds.load(Ordering::Relaxed)
    }

    /// Keeps the queue's topics (those [`ensure_topics`] creates with `records_topic` and
    /// `partitions`) in existence: when a broker is reachable again after every broker was
    /// down, and when a publication fails for an unknown topic, the topics are checked and
    /// the missing ones created again, on the current tokio runtime, so that a cluster that
    /// came back without its data takes calls again without a restart. Shared by every
    /// publisher of this producer ([`KafkaPublisher::sharing_with`]); a second call changes
    /// nothing. Fails outside a tokio runtime.
    pub fn keep_topics(&self, records_topic: Option<&str>, partitions: i32) -> Result<()> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::internal(format!("keeping the Kafka topics needs a tokio runtime: {e}"))
        })?;
        let _ = self.inner.reach.keeper.set(Arc::new(TopicKeeper {
            config: self.inner.config.clone(),
            records_topic: records_topic.map(str::to_string),
            partitions: partitions.max(1),
            runtime,
            running: Default::default(),
            last: Mutex::new(None),
            checks: AtomicU64::new(0),
            created: AtomicU64::new(0),
        }));
        Ok(())
    }

    /// How many topic checks [`KafkaPublisher::keep_topics`] started, and how many topics
    /// they created.
    pub fn topic_checks(&self) -> (u64, u64) {
        self.inner.reach.keeper.get().map_or((0, 0), |k| {
            (k.checks.load(Ordering::Relaxed), k.created.load(Ordering::Relaxed))
        })
    }

    /// A publication's error; a missing topic starts a check of the topics.
    fn failed(&self, e: &KafkaError) -> Error {
        if unknown_topic(e) {
            if let Some(k) = self.inner.reach.keeper.get() {
                k.check("a publication found its topic missing");
            }
        }
        produce_error(e)
    }

    /// The current producer.
    fn producer(&self) -> TracedProducer {
        lock(&self.inner.producer).producer.clone()
    }

    /// The current producer, its generation and when it was built.
    fn current(&self) -> (TracedProducer, u64, std::time::Instant) {
        let c = lock(&self.inner.producer);
        (c.producer.clone(), c.generation, c.built)
    }

    /// After a failed send with the producer of `generation`: replaces that producer if
    /// librdkafka declared it fatally failed or the send found it `stuck` (checked after a
    /// failed send only, so a healthy publication pays nothing for it). Returns whether
    /// the producer now in use is another one (replaced here or by a concurrent send),
    /// so that the failed message is worth sending again. The old producer's messages
    /// are purged (their sends fail at once and go again with the new one) and it is
    /// dropped on a thread of its own (dropping a producer waits for its threads).
    fn renew(&self, generation: u64, stuck: bool) -> bool {
        let mut c = lock(&self.inner.producer);
        if c.generation != generation {
            return true;
        }
        let why = match c.producer.client().fatal_error() {
            Some((code, reason)) => format!("failed fatally ({code}: {reason})"),
            None if stuck => format!(
                "had no acknowledgement within {:?} while a broker was reachable",
                self.inner.config.stuck_after
            ),
            None => return false,
        };
        match self.inner.config.producer(&self.inner.reach) {
            Ok(fresh) => {
                tracing::warn!(topic = %self.topic, "the Kafka producer {why}; replaced it with a new one");
                let old = std::mem::replace(&mut c.producer, fresh);
                c.generation += 1;
                c.built = std::time::Instant::now();
                drop(c);
                self.inner.rebuilds.fetch_add(1, Ordering::Relaxed);
                old.purge(PurgeConfig::default().queue().inflight());
                let _ =
                    std::thread::Builder::new().name("kafka-drop".into()).spawn(move || drop(old));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "the Kafka producer {why} and cannot be rebuilt");
                false
            }
        }
    }

    /// Waits for a message's acknowledgement from the producer of `generation`, built at
    /// `built`. Past [`KafkaConfig::stuck_after`] with a broker reachable, a producer that
    /// has delivered before (or is older than [`KafkaConfig::first_delivery_within`]) and
    /// no acknowledgement of any message within the last `stuck_after`, gives up with
    /// `stuck` set (the caller replaces the producer); while no broker is reachable, while
    /// a young producer has delivered nothing yet (its first connection to a slow broker),
    /// or while other messages are acknowledged (a backlog draining), waits on, at most for
    /// librdkafka's message timeout.
    async fn deliver(
        &self,
        mut fut: DeliveryFuture,
        generation: u64,
        built: std::time::Instant,
    ) -> (Result<()>, bool) {
        let stuck_after = self.inner.config.stuck_after;
        loop {
            match tokio::time::timeout(stuck_after, &mut fut).await {
                Ok(Ok(Ok(_))) => {
                    self.inner.delivered.fetch_max(generation + 1, Ordering::Relaxed);
                    let now =
                        u64::try_from(self.inner.born.elapsed().as_millis()).unwrap_or(u64::MAX);
                    self.inner.last_ack_ms.fetch_max(now, Ordering::Relaxed);
                    return (Ok(()), false);
                }
                Ok(Ok(Err((e, _)))) => return (Err(self.failed(&e)), false),
                Ok(Err(_)) => {
                    return (Err(Error::unavailable("kafka: the producer went away")), false)
                }
                Err(_) if self.inner.reach.is_down() => continue,
                Err(_)
                    if self.inner.delivered.load(Ordering::Relaxed) != generation + 1
                        && built.elapsed() < self.inner.config.first_delivery_within =>
                {
                    continue
                }
                Err(_) if self.acknowledged_within(stuck_after) => continue,
                Err(_) => {
                    return (
                        Err(Error::unavailable(format!(
                            "kafka: no acknowledgement within {:?}",
                            self.inner.config.stuck_after
                        ))),
                        true,
                    )
                }
            }
        }
    }

    /// Whether any message was acknowledged within the last `d`.
    fn acknowledged_within(&self, d: Duration) -> bool {
        let last = Duration::from_millis(self.inner.last_ack_ms.load(Ordering::Relaxed));
        self.inner.born.elapsed().saturating_sub(last) < d
    }

    /// Asks a broker for the topic's metadata on a thread of its own (one probe at a time),
    /// which connects again if librdkafka has no connection: an answer means a broker is
    /// reachable. Brokers that close idle connections make librdkafka report every broker
    /// down while nothing is wrong; the probe clears that within one round trip.
    fn probe(&self) {
        let reach = self.inner.reach.clone();
        if reach.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let producer = self.producer();
        let topic = self.topic.clone();
        let spawned = std::thread::Builder::new().name("kafka-probe".into()).spawn({
            let reach = reach.clone();
            move || {
                if producer.client().fetch_metadata(Some(&topic), PROBE_TIMEOUT).is_ok() {
                    reach.set_up();
                }
                reach.probing.store(false, Ordering::Release);
            }
        });
        if spawned.is_err() {
            reach.probing.store(false, Ordering::Release);
        }
    }

    /// Notes the outcome of a publication for [`QueuePublisher::health`].
    fn outcome(&self, r: &Result<()>) {
        let mut failing = lock(&self.inner.failing);
        match r {
            Ok(()) => {
                *failing = None;
                self.inner.reach.set_up();
            }
            Err(Error::Unavailable { reason }) => *failing = Some(reason.clone()),
            Err(_) => {}
        }
    }

    async fn send_once(
        &self,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> (Result<()>, u64, bool) {
        let (producer, generation, built) = self.current();
        let mut record = FutureRecord::to(&self.topic).key(key).payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let (r, stuck) = match producer.send_result(record) {
            Err((e, _)) => (Err(self.failed(&e)), false),
            Ok(fut) => self.deliver(fut, generation, built).await,
        };
        (r, generation, stuck)
    }

    /// Waits (blocking, at most `timeout`) until every message handed to the producer was
    /// delivered or failed.
    pub(crate) fn flush(&self, timeout: Duration) {
        let _ = self.producer().flush(timeout);
    }

    /// Publishes one message and waits for the broker's acknowledgement; a producer that
    /// failed fatally or got stuck under it is replaced and the message sent again with
    /// the new one.
    pub(crate) async fn send(
        &self,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<()> {
        let (mut r, generation, stuck) = self.send_once(key, payload, headers.clone()).await;
        if r.is_err() && self.renew(generation, stuck) {
            // Not acknowledged by the old producer (its messages were purged): send it
            // again with the new one.
            r = self.send_once(key, payload, headers).await.0;
        }
        self.outcome(&r);
        r
    }
}

#[async_trait]
impl QueuePublisher for KafkaPublisher {
    async fn publish(&self, item: QueuedInvocation) -> Result<()> {
        let payload = encode(&item)?;
        self.send(&item.key(), &payload, None).await
    }

    async fn publish_batch(&self, items: Vec<QueuedInvocation>) -> Vec<Result<()>> {
        // Enqueue everything first, then wait for the acknowledgements together.
        let (producer, generation, built) = self.current();
        let mut pending = Vec::with_capacity(items.len());
        for item in &items {
            let sent = encode(item).and_then(|payload| {
                let key = item.key();
                let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
                producer.send_result(record).map_err(|(e, _)| self.failed(&e))
            });
            pending.push(sent);
        }
        let mut out = Vec::with_capacity(pending.len());
        let mut stuck = false;
        for p in pending {
            out.push(match p {
                Ok(fut) => {
                    let (r, s) = self.deliver(fut, generation, built).await;
                    stuck |= s;
                    r
                }
                Err(e) => Err(e),
            });
        }
        drop(producer);
        if out.iter().any(Result::is_err) && self.renew(generation, stuck) {
            // The producer failed fatally or got stuck under this batch: send what did not
            // get through again, one by one, with a new one.
            for (item, r) in items.iter().zip(out.iter_mut()) {
                if r.is_err() {
                    *r = match encode(item) {
                        Ok(payload) => self.send(&item.key(), &payload, None).await,
                        Err(e) => Err(e),
                    };
                }
            }
        }
        if let Some(last) = out.last() {
            self.outcome(last);
        }
        out
    }

    /// The consumer group's lag on the topic (per partition, the high watermark less the
    /// group's committed offset, or less the low watermark where the group committed
    /// nothing) as what waits, and the messages the dead-letter topic holds. Kafka counts
    /// offsets, not functions: no per-function figures, and nothing in flight (the
    /// consumers may run in other processes).
    async fn depth(&self) -> Result<QueueDepth> {
        let config = self.inner.config.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || kafka_depth(&config, &topic))
            .await
            .map_err(|e| Error::internal(format!("kafka: the depth query panicked: {e}")))?
    }

    fn health(&self) -> Result<()> {
        let p = lock(&self.inner.producer);
        if let Some((code, reason)) = p.producer.client().fatal_error() {
            return Err(Error::unavailable(format!(
                "kafka: the producer failed fatally ({code}: {reason}); the next call replaces it"
            )));
        }
        drop(p);
        if self.inner.reach.is_down() {
            self.probe();
            self.inner.reach.check()?;
        }
        match &*lock(&self.inner.failing) {
            Some(reason) => Err(Error::unavailable(format!(
                "the last publication to {} failed: {reason}",
                self.topic
            ))),
            None => Ok(()),
        }
    }
}

/// How long one metadata, watermark or offset request of [`kafka_depth`] may take.
const DEPTH_TIMEOUT: Duration = Duration::from_secs(5);

/// [`KafkaPublisher::depth`]'s figures, on a blocking thread: a consumer of the workers'
/// group that subscribes to nothing (it only reads the group's committed offsets).
fn kafka_depth(config: &KafkaConfig, topic: &str) -> Result<QueueDepth> {
    let mut c = config.base();
    c.set("group.id", &config.group_id).set("enable.auto.commit", "false");
    config.apply_properties(&mut c);
    let consumer: BaseConsumer = c.create().map_err(|e| config_error("consumer", e))?;
    let unavailable = |what: &str, e: KafkaError| Error::unavailable(format!("kafka: {what}: {e}"));
    let partitions = |t: &str| -> Result<Vec<i32>> {
        let md = consumer
            .fetch_metadata(Some(t), DEPTH_TIMEOUT)
            .map_err(|e| unavailable(&format!("reading the metadata of {t}"), e))?;
        Ok(md
            .topics()
            .iter()
            .filter(|m| m.name() == t && m.error().is_none())
            .flat_map(|m| m.partitions().iter().map(|p| p.id()))
            .collect())
    };
    let mut depth = QueueDepth::default();
    let queue_partitions = partitions(topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in &queue_partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = if queue_partitions.is_empty() {
        TopicPartitionList::new()
    } else {
        consumer
            .committed_offsets(tpl, DEPTH_TIMEOUT)
            .map_err(|e| unavailable("reading the workers' committed offsets", e))?
    };
    for p in &queue_partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, DEPTH_TIMEOUT)
            .map_err(|e| unavailable(&format!("reading the offsets of {topic}/{p}"), e))?;
        let from = match committed.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        depth.waiting += u64::try_from(high - from).unwrap_or(0);
    }
    for p in partitions(&config.dead_letter_topic)? {
        let (low, high) = consumer
            .fetch_watermarks(&config.dead_letter_topic, p, DEPTH_TIMEOUT)
            .map_err(|e| unavailable("reading the offsets of the dead letters", e))?;
        depth.dead_letters += u64::try_from(high - low).unwrap_or(0);
    }
    Ok(depth)
}

/// Dead letters as JSON messages ([`DeadLetter`]) on `config.dead_letter_topic`, keyed by
/// `namespace/function`.
#[derive(Clone, Debug)]
pub struct KafkaDeadLetters {
    publisher: KafkaPublisher,
}

impl KafkaDeadLetters {
    /// Dead letters to `config.dead_letter_topic`.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Ok(KafkaDeadLetters {
            publisher: KafkaPublisher::to_topic(config, &config.dead_letter_topic)?,
        })
    }

    /// Dead letters to `config.dead_letter_topic` with the producer of `publisher`
    /// ([`KafkaPublisher::sharing_with`]).
    pub fn sharing(publisher: &KafkaPublisher, config: &KafkaConfig) -> Self {
        KafkaDeadLetters { publisher: publisher.sharing_with(&config.dead_letter_topic) }
    }
}

#[async_trait]
impl DeadLetterSink for KafkaDeadLetters {
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        let payload = serde_json::to_vec(&letter)
            .map_err(|e| Error::internal(format!("encoding a dead letter: {e}")))?;
        self.publisher.send(&letter.item.key(), &payload, None).await
    }
}

// ---------------------------------------------------------------------------------------
// Consumer.

/// Offsets in flight per partition, and what may be committed.
#[derive(Default)]
pub(crate) struct Tracker {
    partitions: HashMap<i32, Track>,
    /// Bumped per partition on every rebalance, so acknowledgements of deliveries from an
    /// earlier assignment store nothing.
    epochs: HashMap<i32, u64>,
}

#[derive(Default)]
struct Track {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset received.
    next: i64,
    /// The last offset stored for commit.
    stored: i64,
    epoch: u64,
}

impl Tracker {
    pub(crate) fn received(&mut self, partition: i32, offset: i64) -> u64 {
        // Below what was stored for commit: the partition's log started again (a broker
        // that lost its state, the fetch position reset to its start). Tracking starts over
        // from here, and acknowledgements of deliveries from before store nothing.
        if self.partitions.get(&partition).is_some_and(|t| offset < t.stored) {
            self.reset(std::iter::once(partition));
        }
        let epoch = *self.epochs.get(&partition).unwrap_or(&0);
        let t = self.partitions.entry(partition).or_insert_with(|| Track {
            next: offset,
            stored: offset,
            epoch,
            ..Track::default()
        });
        t.in_flight.insert(offset);
        t.next = t.next.max(offset + 1);
        epoch
    }

    /// Marks `offset` done; returns the offset to store for commit if it advanced.
    pub(crate) fn done(&mut self, partition: i32, offset: i64, epoch: u64) -> Option<i64> {
        let t = self.partitions.get_mut(&partition)?;
        if t.epoch != epoch || !t.in_flight.remove(&offset) {
            return None;
        }
        let commit = t.in_flight.first().copied().unwrap_or(t.next);
        if commit > t.stored {
            t.stored = commit;
            Some(commit)
        } else {
            None
        }
    }

    /// Drops what was tracked of `partition` (its log is read again from elsewhere):
    /// acknowledgements of its earlier deliveries store nothing.
    pub(crate) fn forget(&mut self, partition: i32) {
        self.reset(std::iter::once(partition));
    }

    fn reset(&mut self, partitions: impl Iterator<Item = i32>) {
        for p in partitions {
            self.partitions.remove(&p);
            *self.epochs.entry(p).or_default() += 1;
        }
    }
}

/// Resets the offset tracking of partitions that change hands, and notes the brokers
/// going away for the log check (when the member has one).
pub(crate) struct TrackingContext {
    pub(crate) tracker: Arc<Mutex<Tracker>>,
    pub(crate) topic: String,
    pub(crate) check: Option<Arc<LogCheck>>,
    /// The client's role in log lines: "consumer of TOPIC".
    pub(crate) client: String,
}

impl ClientContext for TrackingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_to_tracing(&self.client, level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(check) = self.check.as_ref().filter(|_| brokers_lost(&error)) {
            check.brokers_lost();
        }
        error_to_tracing(&self.client, &error, reason);
    }
}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let tpl = match rebalance {
            Rebalance::Assign(tpl) | Rebalance::Revoke(tpl) => *tpl,
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "kafka rebalance error");
                return;
            }
        };
        let parts: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        tracing::debug!(
            ?parts,
            kind = matches!(rebalance, Rebalance::Assign(_)),
            "kafka rebalance"
        );
        lock(&self.tracker).reset(parts.into_iter());
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (Rebalance::Assign(assigned), Some(check)) = (rebalance, &self.check) else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for e in assigned.elements().iter().filter(|e| e.topic() == self.topic) {
            tpl.add_partition(&self.topic, e.partition());
        }
        if tpl.count() == 0 {
            return;
        }
        check.settle_assigned(|paused| {
            let settled = if paused { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
            if let Err(e) = settled {
                tracing::warn!(topic = %self.topic, paused, error = %e, "kafka: the partitions assigned not settled");
            }
        });
    }
}

pub(crate) type Client = StreamConsumer<TrackingContext>;

/// A member of `config.group_id` subscribed to `topic`, its offsets tracked in `tracker`
/// and stored only when acknowledged: committed every `config.commit_interval` (and on
/// leaving) with `auto_commit`, else only by explicit commits. With `check`, the brokers
/// going away are noted there.
pub(crate) fn group_member(
    config: &KafkaConfig,
    topic: &str,
    tracker: &Arc<Mutex<Tracker>>,
    auto_commit: bool,
    check: Option<Arc<LogCheck>>,
) -> Result<Client> {
    let ctx = TrackingContext {
        tracker: tracker.clone(),
        topic: topic.to_string(),
        check,
        client: format!("consumer of {topic}"),
    };
    let mut c = config.base();
    c.set("group.id", &config.group_id)
        .set("enable.auto.commit", auto_commit.to_string())
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", config.commit_interval.as_millis().max(1).to_string())
        .set("auto.offset.reset", "earliest")
        // Incremental rebalancing: a member joining or leaving moves only the partitions
        // that change hands, the others keep being consumed.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // A member that dies without leaving is noticed after 6 s (the broker's default
        // minimum; librdkafka's default is 45 s), and its partitions go to the others.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "2000");
    config.apply_properties(&mut c);
    let consumer: Client = c.create_with_context(ctx).map_err(|e| config_error("consumer", e))?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| Error::unavailable(format!("kafka: subscribing to {topic}: {e}")))?;
    Ok(consumer)
}

struct Shared {
    consumer: Mutex<Option<Arc<Client>>>,
    tracker: Arc<Mutex<Tracker>>,
    /// Republishes nacked items; also sends malformed messages to the dead letters.
    republish: KafkaPublisher,
    dead_letters: KafkaPublisher,
    topic: String,
    nack_on_drop: bool,
    close_timeout: Duration,
    /// Held from taking a message (or a rebalance event, which librdkafka hands out from
    /// the same queue) until its offset is tracked. The worker's lanes receive
    /// concurrently; without it, a lane could take offset n, another take n + 1, track and
    /// acknowledge it, and store n + 2 for commit before n was tracked at all, so that n,
    /// still running, would be lost if this worker stopped.
    receiving: tokio::sync::Mutex<()>,
    /// The last message read per partition, checked after the brokers went away.
    check: Arc<LogCheck>,
    #[cfg(test)]
    hooks: tests::Hooks,
}

/// A member of a Kafka consumer group delivering queued invocations; see the
/// [module docs](self) for the commit and close rules.
pub struct KafkaConsumer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer").field("topic", &self.shared.topic).finish()
    }
}

impl KafkaConsumer {
    /// Joins `config.group_id` and subscribes to `config.topic`.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Self::build(config, None)
    }

    /// [`KafkaConsumer::new`], republishing nacked items and sending malformed messages to
    /// the dead letters with the producer of `publisher` ([`KafkaPublisher::sharing_with`])
    /// instead of two producers of its own.
    pub fn sharing(publisher: &KafkaPublisher, config: &KafkaConfig) -> Result<Self> {
        Self::build(config, Some(publisher))
    }

    fn build(config: &KafkaConfig, publisher: Option<&KafkaPublisher>) -> Result<Self> {
        let (republish, dead_letters) = match publisher {
            Some(p) => (p.sharing_with(&config.topic), p.sharing_with(&config.dead_letter_topic)),
            None => (
                KafkaPublisher::new(config)?,
                KafkaPublisher::to_topic(config, &config.dead_letter_topic)?,
            ),
        };
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let check = LogCheck::new(&config.topic);
        let consumer = group_member(config, &config.topic, &tracker, true, Some(check.clone()))?;
        let shared = Arc::new(Shared {
            consumer: Mutex::new(Some(Arc::new(consumer))),
            tracker,
            republish,
            dead_letters,
            topic: config.topic.clone(),
            nack_on_drop: config.nack_on_drop,
            close_timeout: config.close_timeout,
            receiving: tokio::sync::Mutex::new(()),
            check: check.clone(),
            #[cfg(test)]
            hooks: tests::Hooks::default(),
        });
        check.spawn(config, Box::new(QueueReader(Arc::downgrade(&shared))));
        Ok(KafkaConsumer { shared })
    }

    /// The partitions of the topic currently assigned to this consumer (empty before it
    /// joined its group, or after [`QueueConsumer::close`]). Assignments change while the
    /// consumer is being polled ([`QueueConsumer::next`]).
    pub fn assignment(&self) -> Vec<i32> {
        let Some(client) = self.client() else { return Vec::new() };
        match client.assignment() {
            Ok(tpl) => tpl
                .elements()
                .iter()
                .filter(|e| e.topic() == self.shared.topic)
                .map(|e| e.partition())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn client(&self) -> Option<Arc<Client>> {
        lock(&self.shared.consumer).clone()
    }
}

/// The consumer as its log check sees it: paused while the brokers are away; a partition
/// whose log started again is read from its beginning, deliveries of the old log store
/// nothing any more, and the new log's start is stored for the commit (the old position,
/// committed to the new log, would make the next assignment skip what lies below it).
struct QueueReader(Weak<Shared>);

impl QueueReader {
    fn client(&self) -> Option<(Arc<Shared>, Arc<Client>)> {
        let shared = self.0.upgrade()?;
        let client = lock(&shared.consumer).clone()?;
        Some((shared, client))
    }
}

impl Reader for QueueReader {
    fn pause(&self) -> bool {
        let Some((shared, client)) = self.client() else { return false };
        if let Err(e) = pause_assigned(&client, &shared.topic) {
            tracing::debug!(error = %e, "kafka: consumer not paused");
        }
        true
    }

    fn resume(&self, restarted: &[Restarted]) -> std::result::Result<(), String> {
        let Some((shared, client)) = self.client() else { return Ok(()) };
        let mut start = TopicPartitionList::new();
        resume_assigned(&client, &shared.topic, restarted, |r| {
            lock(&shared.tracker).forget(r.partition);
            if let Err(e) =
                start.add_partition_offset(&shared.topic, r.partition, Offset::Offset(r.start))
            {
                tracing::warn!(partition = r.partition, error = %e, "kafka: the new log's start not stored");
            }
        })?;
        if start.count() > 0 {
            if let Err(e) = client.store_offsets(&start) {
                tracing::warn!(error = %e, "kafka: the new logs' start not stored for the commit");
            }
        }
        Ok(())
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.shared.consumer).take() {
            // Never block the dropping thread (see the module docs).
            leave_group_detached(c);
        }
    }
}

/// A message taken off the consumer's queue, its offset tracked.
enum Taken {
    /// A queued invocation.
    Item(Delivery<QueuedInvocation>),
    /// Not a queued invocation: its payload and parse error, for the dead letters.
    Malformed(KafkaAck, Vec<u8>, String),
}

impl KafkaConsumer {
    /// Takes up to `max` messages: waits for the first, then takes what librdkafka already
    /// has without waiting. Holds [`Shared::receiving`] throughout, so each message's
    /// offset is tracked before anyone else takes a message (or a rebalance event) off the
    /// queue.
    async fn receive(&self, client: &Arc<Client>, max: usize) -> Result<Vec<Taken>> {
        use futures::FutureExt as _;
        let _receiving = self.shared.receiving.lock().await;
        let mut taken = Vec::new();
        while taken.len() < max.max(1) {
            let received = if taken.is_empty() {
                client.recv().await
            } else {
                match client.recv().now_or_never() {
                    Some(r) => r,
                    None => break,
                }
            };
            let msg = match received {
                Ok(msg) => msg,
                Err(e) if taken.is_empty() => {
                    return Err(Error::unavailable(format!("kafka: {e}")))
                }
                // The messages taken so far go; the error is only told.
                Err(e) => {
                    tracing::warn!(error = %e, "kafka: receiving");
                    break;
                }
            };
            let redeliveries = msg
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == REDELIVERIES_HEADER))
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u32>().ok())
                .unwrap_or(0);
            let (partition, offset) = (msg.partition(), msg.offset());
            self.shared.check.read(partition, offset, msg.timestamp().to_millis());
            let payload = msg.payload().map(<[u8]>::to_vec).unwrap_or_default();
            drop(msg);
            #[cfg(test)]
            self.shared.hooks.after_recv(offset).await;
            let epoch = lock(&self.shared.tracker).received(partition, offset);
            let ack = KafkaAck {
                shared: Arc::downgrade(&self.shared),
                client: Arc::downgrade(client),
                partition,
                offset,
                epoch,
                item: None,
                redeliveries,
                settled: false,
            };
            taken.push(match serde_json::from_slice::<QueuedInvocation>(&payload) {
                // The item comes back through the acknowledger if it is to be republished.
                Ok(item) => Taken::Item(Delivery::new(item, redeliveries, Box::new(ack))),
                Err(e) => Taken::Malformed(ack, payload, e.to_string()),
            });
        }
        Ok(taken)
    }

    /// Parks a message that is not a queued invocation in the dead letters so it never
    /// blocks its partition, then counts it as done.
    async fn dead_letter_malformed(&self, ack: KafkaAck, payload: Vec<u8>, error: String) {
        let (partition, offset) = (ack.partition, ack.offset);
        tracing::warn!(partition, offset, %error, "malformed message sent to the dead letters");
        let headers = OwnedHeaders::new().insert(Header {
            key: ERROR_HEADER,
            value: Some(&format!("not a queued invocation: {error}")),
        });
        let key = format!("malformed/{partition}/{offset}");
        match self.shared.dead_letters.send(&key, &payload, Some(headers)).await {
            Ok(()) => {
                let _ = Box::new(ack).ack().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not dead-letter a malformed message");
                // Left unsettled: retried after a restart or rebalance.
                ack.abandon();
            }
        }
    }
}

#[async_trait]
impl QueueConsumer for KafkaConsumer {
    async fn next(&self) -> Result<Option<Delivery<QueuedInvocation>>> {
        Ok(self.next_batch(1).await?.pop())
    }

    /// Waits for one delivery, then adds what librdkafka has already fetched, up to `max`
    /// (empty only once the consumer is closed).
    async fn next_batch(&self, max: usize) -> Result<Vec<Delivery<QueuedInvocation>>> {
        loop {
            let Some(client) = self.client() else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for taken in self.receive(&client, max).await? {
                match taken {
                    Taken::Item(d) => out.push(d),
                    Taken::Malformed(ack, payload, error) => {
                        self.dead_letter_malformed(ack, payload, error).await
                    }
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    async fn close(&self) -> Result<()> {
        let Some(client) = lock(&self.shared.consumer).take() else { return Ok(()) };
        leave_group(client, self.shared.close_timeout).await
    }
}

/// Drops the last copy of a subscribed consumer (which leaves its group, committing what
/// auto-commit has stored) on a thread of its own, waiting at most `timeout`: the leave
/// blocks, and never finishes if the cluster is gone.
pub(crate) async fn leave_group<C: Send + Sync + 'static>(
    client: Arc<C>,
    timeout: Duration,
) -> Result<()> {
    // A `recv` still running elsewhere holds the client too; if its copy were the last,
    // the blocking leave would run where that one is dropped. Give such copies a moment to
    // go (bounded), so the leave below is the real one.
    let waited = tokio::time::Instant::now();
    while Arc::strong_count(&client) > 1 && waited.elapsed() < timeout.min(Duration::from_secs(1)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("faas-kafka-close".into())
        .spawn(move || {
            drop(client);
            let _ = tx.send(());
        })
        .map_err(|e| Error::internal(format!("spawning the Kafka close thread: {e}")))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::unavailable(format!(
            "kafka: the consumer did not leave its group within {}",
            faas_core::util::format_duration(timeout)
        ))),
    }
}

/// Hands a consumer dropped unclosed to a detached thread, so that the dropping thread
/// never blocks on its leaving the group.
pub(crate) fn leave_group_detached<C: Send + Sync + 'static>(client: Arc<C>) {
    let _ = std::thread::Builder::new().name("faas-kafka-close".into()).spawn(move || drop(client));
}

/// Settles one Kafka delivery.
struct KafkaAck {
    shared: Weak<Shared>,
    client: Weak<Client>,
    partition: i32,
    offset: i64,
    epoch: u64,
    /// The item, once handed back by its delivery (to republish it).
    item: Option<QueuedInvocation>,
    redeliveries: u32,
    settled: bool,
}

impl KafkaAck {
    /// Goes without settling and without the nack of `Drop` (which would republish the
    /// message): its offset stays uncommitted, so it comes back after a restart or a
    /// rebalance.
    fn abandon(mut self) {
        self.settled = true;
    }

    fn mark_done(&mut self) -> Result<()> {
        self.settled = true;
        let Some(shared) = self.shared.upgrade() else { return Ok(()) };
        let Some(commit) = lock(&shared.tracker).done(self.partition, self.offset, self.epoch)
        else {
            return Ok(());
        };
        let Some(client) = self.client.upgrade() else { return Ok(()) };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&shared.topic, self.partition, Offset::Offset(commit))
            .map_err(|e| Error::internal(format!("kafka: {e}")))?;
        match client.store_offsets(&tpl) {
            Ok(()) => Ok(()),
            // The partition went to another consumer meanwhile: it will deliver the item
            // again (at least once).
            Err(e) => {
                tracing::debug!(error = %e, partition = self.partition, "offset not stored");
                Ok(())
            }
        }
    }

    fn nack_future(mut self) -> BoxFuture<'static, Result<()>> {
        self.settled = true;
        Box::pin(async move {
            let (Some(shared), Some(item)) = (self.shared.upgrade(), self.item.take()) else {
                return Ok(());
            };
            let payload = encode(&item)?;
            let n = self.redeliveries.saturating_add(1).to_string();
            let headers =
                OwnedHeaders::new().insert(Header { key: REDELIVERIES_HEADER, value: Some(&n) });
            shared.republish.send(&item.key(), &payload, Some(headers)).await?;
            drop(shared);
            self.mark_done()
        })
    }
}

impl Acknowledge for KafkaAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let r = self.mark_done();
        Box::pin(std::future::ready(r))
    }

    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        (*self).nack_future()
    }

    fn takes_item_back(&self) -> bool {
        true
    }

    fn nack_with(
        mut self: Box<Self>,
        item: Box<dyn std::any::Any + Send>,
    ) -> BoxFuture<'static, Result<()>> {
        self.item = item.downcast::<QueuedInvocation>().ok().map(|i| *i);
        (*self).nack_future()
    }

    fn dropped(mut self: Box<Self>, item: Box<dyn std::any::Any + Send>) {
        // Dropping it republishes the item (when `nack_on_drop`), from a task.
        self.item = item.downcast::<QueuedInvocation>().ok().map(|i| *i);
    }
}

impl Drop for KafkaAck {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let nack = self.shared.upgrade().is_some_and(|s| s.nack_on_drop);
        if let (true, Ok(rt)) = (nack, tokio::runtime::Handle::try_current()) {
            let ack = KafkaAck {
                shared: self.shared.clone(),
                client: self.client.clone(),
                partition: self.partition,
                offset: self.offset,
                epoch: self.epoch,
                item: self.item.take(),
                redeliveries: self.redeliveries,
                settled: false,
            };
            self.settled = true;
            rt.spawn(async move {
                if let Err(e) = ack.nack_future().await {
                    tracing::warn!(error = %e, "nacking a dropped Kafka delivery failed");
                }
            });
        }
    }
}

/// An in-process Kafka cluster (librdkafka's mock cluster: the real Kafka protocol on a
/// loopback port), for tests, benchmarks and demos without a broker.
///
/// Not `Send`: keep it on the thread that made it, and close every consumer of it before
/// dropping it (see the module docs).
pub struct MockKafka {
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl std::fmt::Debug for MockKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockKafka").field("bootstrap", &self.bootstrap_servers()).finish()
    }
}

impl MockKafka {
    /// Starts a cluster of `brokers` brokers (at least 1) listening on 127.0.0.1.
    pub fn new(brokers: i32) -> Result<Self> {
        let cluster = rdkafka::mocking::MockCluster::new(brokers.max(1))
            .map_err(|e| Error::internal(format!("starting the mock Kafka cluster: {e}")))?;
        Ok(MockKafka { cluster })
    }

    /// The `bootstrap.servers` to give [`KafkaConfig::new`].
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        self.cluster
            .create_topic(topic, partitions.max(1), 1)
            .map_err(|e| Error::internal(format!("creating topic {topic}: {e}")))
    }

    /// Produces one message (`key`, UTF-8 `value`) to partition `partition` of `topic`;
    /// answers its offset.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&str>,
        value: &str,
    ) -> Result<i64> {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .create()
            .map_err(|e| Error::internal(format!("a producer for the mock cluster: {e}")))?;
        let mut record = FutureRecord::<str, str>::to(topic).partition(partition).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        let sent = producer.send(record, Duration::from_secs(10)).await;
        sent.map(|d| d.offset).map_err(|(e, _)| Error::unavailable(format!("producing: {e}")))
    }

    /// Takes broker `id` (1 to the cluster's size) down, as a stopped broker: its
    /// connections are closed and new ones refused until [`MockKafka::broker_up`].
    pub fn broker_down(&self, id: i32) -> Result<()> {
        self.cluster
            .broker_down(id)
            .map_err(|e| Error::internal(format!("taking broker {id} down: {e}")))
    }

    /// Brings broker `id` back after [`MockKafka::broker_down`].
    pub fn broker_up(&self, id: i32) -> Result<()> {
        self.cluster
            .broker_up(id)
            .map_err(|e| Error::internal(format!("bringing broker {id} up: {e}")))
    }

    /// Refuses the next `n` produce requests as a broker that denies writing to the topic
    /// does (`TOPIC_AUTHORIZATION_FAILED`, not retried): a broker the gateway cannot publish
    /// to, for tests of the queue's health.
    pub fn refuse_produce(&self, n: usize) {
        let errors =
            vec![rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; n];
        self.cluster.request_errors(rdkafka::types::RDKafkaApiKey::Produce, &errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type AfterRecv = Arc<dyn Fn(i64) -> BoxFuture<'static, ()> + Send + Sync>;

    /// Test hooks inside the consumer.
    #[derive(Default)]
    pub(super) struct Hooks {
        /// Runs after a message was taken off the queue, before its offset is tracked.
        after_recv: Mutex<Option<AfterRecv>>,
    }

    impl Hooks {
        pub(super) async fn after_recv(&self, offset: i64) {
            let hook = lock(&self.after_recv).clone();
            if let Some(hook) = hook {
                hook(offset).await;
            }
        }
    }

    /// A mock cluster with the queue topic (one partition) and the dead-letter topic, its
    /// config and a publisher to it.
    fn one_partition_queue() -> (MockKafka, KafkaConfig, KafkaPublisher) {
        let kafka = MockKafka::new(1).expect("mock cluster");
        let config = KafkaConfig::new(kafka.bootstrap_servers());
        kafka.create_topic(&config.topic, 1).expect("topic");
        kafka.create_topic(&config.dead_letter_topic, 1).expect("topic");
        let publisher = KafkaPublisher::new(&config).expect("publisher");
        (kafka, config, publisher)
    }

    /// Two lanes receive from one consumer: the first takes offset 0 and is held before it
    /// tracks it; the second must not get offset 1 (and acknowledge it, storing 2 for
    /// commit) before offset 0 is tracked, else 0, still unfinished, would be committed
    /// past. The second lane is given a second to go wrong before the first is let go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acknowledgement_never_stores_past_a_message_received_but_not_tracked() {
        let (_kafka, config, publisher) = one_partition_queue();
        for body in ["first", "second"] {
            publisher.publish(item(body)).await.expect("published");
        }
        let consumer = Arc::new(KafkaConsumer::new(&config).expect("consumer"));
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
        let held_tx = Mutex::new(Some(held_tx));
        let release = Arc::new(tokio::sync::Notify::new());
        let events: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let (release, events) = (release.clone(), events.clone());
            *lock(&consumer.shared.hooks.after_recv) = Some(Arc::new(move |offset| {
                let (release, events) = (release.clone(), events.clone());
                let held = if offset == 0 { lock(&held_tx).take() } else { None };
                Box::pin(async move {
                    if let Some(held) = held {
                        let released = release.notified();
                        let _ = held.send(());
                        released.await;
                        lock(&events).push("offset 0 tracked".to_string());
                    }
                })
            }));
        }
        let first = tokio::spawn({
            let c = consumer.clone();
            async move { c.next().await }
        });
        tokio::time::timeout(Duration::from_secs(30), held_rx)
            .await
            .expect("the first lane took offset 0")
            .expect("hook");
        let mut second = tokio::spawn({
            let (c, events) = (consumer.clone(), events.clone());
            async move {
                let d = c.next().await.expect("next").expect("a delivery");
                lock(&events).push(format!("acknowledged {:?}", d.item().body));
                d.ack().await.expect("ack");
            }
        });
        // The second lane's chance to overtake the first.
        let overtaken = tokio::time::timeout(Duration::from_secs(1), &mut second).await.is_ok();
        release.notify_one();
        let first = first.await.expect("first lane").expect("next").expect("a delivery");
        assert_eq!(first.item().body, bytes::Bytes::from("first"));
        if !overtaken {
            tokio::time::timeout(Duration::from_secs(30), second)
                .await
                .expect("the second lane got offset 1")
                .expect("second lane");
        }
        let stored = lock(&consumer.shared.tracker).partitions.get(&0).map(|t| t.stored);
        assert_eq!(stored, Some(0), "nothing past the unfinished offset 0 is stored");
        assert_eq!(
            *lock(&events),
            ["offset 0 tracked", "acknowledged b\"second\""],
            "offset 1 was taken and acknowledged before offset 0 was tracked"
        );
        first.ack().await.expect("ack");
        let stored = lock(&consumer.shared.tracker).partitions.get(&0).map(|t| t.stored);
        assert_eq!(stored, Some(2), "both done: the commit point moves past them");
        consumer.close().await.expect("closed");
    }

    fn item(body: &'static str) -> QueuedInvocation {
        QueuedInvocation {
            call_id: faas_core::InvocationId::new(),
            function: "f".into(),
            namespace: "openfaas-fn".into(),
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: Vec::new(),
            body: bytes::Bytes::from(body),
            callback_url: None,
            attempt: 0,
            queued_at: 0,
        }
    }

    /// Takes `n` deliveries (bounded), acknowledges them, answers their bodies. Errors
    /// (a broker away) are taken again, as the worker does.
    async fn take_and_ack(consumer: &KafkaConsumer, n: usize) -> Vec<bytes::Bytes> {
        let mut bodies = Vec::new();
        while bodies.len() < n {
            let next = async {
                loop {
                    if let Ok(d) = consumer.next().await {
                        return d;
                    }
                }
            };
            let d = tokio::time::timeout(Duration::from_secs(30), next)
                .await
                .unwrap_or_else(|_| panic!("delivery {} of {n} within 30 s", bodies.len() + 1))
                .expect("a delivery");
            bodies.push(d.item().body.clone());
            d.ack().await.expect("ack");
        }
        bodies
    }

    fn stored(consumer: &KafkaConsumer) -> Option<i64> {
        lock(&consumer.shared.tracker).partitions.get(&0).map(|t| t.stored)
    }

    /// The log check's whole path on a consumer: after the brokers went away, a partition
    /// whose log holds another message at the offset read (a broker that restarted without
    /// its data, played by noting another timestamp for that offset: the mock cluster keeps
    /// its logs) is read again from its beginning, and its new start is what is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_whose_log_started_again_is_read_again_from_its_beginning() {
        let (_kafka, config, publisher) = one_partition_queue();
        for body in ["a", "b", "c"] {
            publisher.publish(item(body)).await.expect("published");
        }
        let consumer = KafkaConsumer::new(&config).expect("consumer");
        assert_eq!(take_and_ack(&consumer, 3).await, ["a", "b", "c"]);
        assert_eq!(stored(&consumer), Some(3));
        consumer.shared.check.read(0, 2, Some(1));
        consumer.shared.check.brokers_lost();
        assert_eq!(take_and_ack(&consumer, 3).await, ["a", "b", "c"], "read again from 0");
        assert_eq!(stored(&consumer), Some(3));
        publisher.publish(item("d")).await.expect("published");
        assert_eq!(take_and_ack(&consumer, 1).await, ["d"]);
        consumer.close().await.expect("closed");
    }

    /// A broker that cannot create topics (the mock cluster implements no CreateTopics):
    /// `ensure_topics` gives up within its time; topics that exist need no broker help.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topics_a_broker_cannot_create_are_named() {
        let kafka = MockKafka::new(1).expect("mock cluster");
        let config = KafkaConfig::new(kafka.bootstrap_servers());
        let started = std::time::Instant::now();
        let e = ensure_topics(&config, Some("faas-async-activations"), 8, Duration::from_secs(1))
            .await
            .expect_err("the mock cluster created topics");
        let m = e.to_string();
        assert!(
            matches!(e, Error::Unavailable { .. }) && m.contains("creating the Kafka topics"),
            "{m}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        // Topics that exist are left alone, and nothing is asked of the broker.
        for (t, n) in
            [("faas-async", 3), ("faas-async-activations", 3), ("faas-async-dead-letters", 1)]
        {
            kafka.create_topic(t, n).expect("topic");
        }
        let report =
            ensure_topics(&config, Some("faas-async-activations"), 8, Duration::from_secs(1))
                .await
                .expect("existing topics");
        assert!(report.created.is_empty(), "{report:?}");
        assert_eq!(
            report.existing,
            ["faas-async", "faas-async-activations", "faas-async-dead-letters"]
        );
    }

    /// A broker that goes away and comes back with its data (the mock cluster's broker
    /// down, then up): the check finds the log read and nothing is delivered again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_back_with_its_data_changes_nothing() {
        let (kafka, config, publisher) = one_partition_queue();
        for body in ["a", "b"] {
            publisher.publish(item(body)).await.expect("published");
        }
        let consumer = Arc::new(KafkaConsumer::new(&config).expect("consumer"));
        assert_eq!(take_and_ack(&consumer, 2).await, ["a", "b"]);
        // A lane waits for the next delivery while the broker is away, as a worker's does.
        let next = tokio::spawn({
            let c = consumer.clone();
            async move { take_and_ack(&c, 1).await }
        });
        kafka.cluster.broker_down(1).expect("broker down");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while consumer.shared.check.pending_for_tests().is_none() {
            assert!(std::time::Instant::now() < deadline, "the brokers' loss not noted in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        kafka.cluster.broker_up(1).expect("broker up");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while consumer.shared.check.pending_for_tests().is_some() {
            assert!(std::time::Instant::now() < deadline, "the log not checked in 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        publisher.publish(item("c")).await.expect("published");
        let got = tokio::time::timeout(Duration::from_secs(30), next).await.expect("bounded");
        assert_eq!(got.expect("lane"), ["c"], "the next message, not the log again");
        assert_eq!(stored(&consumer), Some(3));
        consumer.close().await.expect("closed");
    }

    /// librdkafka keeps a partition's pause across a revoke and a new assignment: paused by
    /// the log check when the brokers went away, revoked (the session expired) before the
    /// check resumed the reader, and assigned again after it (tansu, a 36 s outage), it was
    /// never fetched again. A partition assigned while the check does not hold the reader
    /// paused is fetched; one assigned while it does waits for the check.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_assigned_again_after_the_check_is_fetched() {
        let (_kafka, config, publisher) = one_partition_queue();
        publisher.publish(item("a")).await.expect("published");
        let consumer = Arc::new(KafkaConsumer::new(&config).expect("consumer"));
        assert_eq!(take_and_ack(&consumer, 1).await, ["a"]);
        let client = lock(&consumer.shared.consumer).clone().expect("client");
        let next = tokio::spawn({
            let c = consumer.clone();
            async move { take_and_ack(&c, 1).await }
        });
        // Paused as the check pauses it, then revoked and assigned again with the check
        // not (or no longer) holding the reader paused.
        pause_assigned(&client, &config.topic).expect("paused");
        client.unsubscribe();
        client.subscribe(&[config.topic.as_str()]).expect("subscribed again");
        publisher.publish(item("b")).await.expect("published");
        let got = tokio::time::timeout(Duration::from_secs(30), next).await;
        assert_eq!(got.expect("fetched within 30 s").expect("lane"), ["b"]);
        // While the check holds the reader paused, a partition assigned again waits.
        let next = tokio::spawn({
            let c = consumer.clone();
            async move { take_and_ack(&c, 1).await }
        });
        {
            let mut paused = lock(&consumer.shared.check.paused);
            pause_assigned(&client, &config.topic).expect("paused");
            *paused = true;
        }
        client.unsubscribe();
        client.subscribe(&[config.topic.as_str()]).expect("subscribed again");
        publisher.publish(item("c")).await.expect("published");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while client.assignment().expect("assignment").count() == 0 {
            assert!(std::time::Instant::now() < deadline, "not assigned again in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let early = tokio::time::timeout(Duration::from_secs(2), async {
            while !next.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(early.is_err(), "fetched while the check held the reader paused");
        {
            let mut paused = lock(&consumer.shared.check.paused);
            resume_assigned(&client, &config.topic, &[], |_| {}).expect("resumed");
            *paused = false;
        }
        let got = tokio::time::timeout(Duration::from_secs(30), next).await;
        assert_eq!(got.expect("fetched within 30 s").expect("lane"), ["c"]);
        consumer.close().await.expect("closed");
    }

    /// A publication failing for a missing topic (locally known or the broker's answer)
    /// starts a topic check; other failures do not.
    #[test]
    fn missing_topics_are_told_from_other_failures() {
        use RDKafkaErrorCode as C;
        for code in [C::UnknownTopicOrPartition, C::UnknownTopic, C::UnknownPartition] {
            assert!(unknown_topic(&KafkaError::MessageProduction(code)), "{code:?}");
        }
        for code in
            [C::QueueFull, C::MessageTimedOut, C::TopicAuthorizationFailed, C::AllBrokersDown]
        {
            assert!(!unknown_topic(&KafkaError::MessageProduction(code)), "{code:?}");
        }
    }

    #[test]
    fn commit_point_is_lowest_unfinished() {
        let mut t = Tracker::default();
        let e = t.received(0, 10);
        t.received(0, 11);
        t.received(0, 12);
        assert_eq!(t.done(0, 11, e), None, "10 is still running");
        assert_eq!(t.done(0, 10, e), Some(12));
        assert_eq!(t.done(0, 12, e), Some(13));
        assert_eq!(t.done(0, 12, e), None, "twice");
        // After a rebalance, acknowledgements from the old assignment store nothing.
        t.received(0, 13);
        t.reset([0].into_iter());
        assert_eq!(t.done(0, 13, e), None);
        let e2 = t.received(0, 13);
        assert_eq!(t.done(0, 13, e2), Some(14));
    }

    /// A partition whose log started again (a broker restarted empty: the fetch position
    /// goes back to 0) is tracked from its new start: its offsets are stored for commit at
    /// once, not only after they pass the old ones; acknowledgements from before store
    /// nothing.
    #[test]
    fn a_partition_that_starts_again_is_tracked_from_its_new_start() {
        let mut t = Tracker::default();
        let old = t.received(0, 500);
        t.received(0, 501);
        assert_eq!(t.done(0, 500, old), Some(501), "501 still runs");
        let new = t.received(0, 0);
        assert_ne!(new, old);
        assert_eq!(t.done(0, 501, old), None, "from before the restart");
        assert_eq!(t.done(0, 0, new), Some(1));
        let e = t.received(0, 1);
        assert_eq!(t.done(0, 1, e), Some(2));
        // Other partitions are not touched.
        let p1 = t.received(1, 40);
        assert_eq!(t.done(1, 40, p1), Some(41));
    }
}

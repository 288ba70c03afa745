//! Whether a partition's log is still the one a reader read, after the brokers went away.
//!
//! A broker that restarts without its data (memory storage, a lost volume) starts every
//! partition again at offset 0, while its readers keep their fetch position from the old
//! log. Kafka answers a fetch past the end of a log with `OFFSET_OUT_OF_RANGE`, and
//! librdkafka then starts again from `auto.offset.reset`; a broker that does not (tansu
//! waits for the offset to be written) lets the reader skip every message the new log gets
//! below that position: accepted calls that never run, activation records never read. And a
//! broker that accepts offset commits from members it no longer knows takes the old
//! position as the new group's.
//!
//! So each reader notes the offset and timestamp of the last message it read per partition
//! ([`LogCheck::read`]). When librdkafka says the brokers are gone ([`LogCheck::brokers_lost`],
//! from the client context's error callback), those are kept aside and the reader's
//! partitions are paused ([`Reader::pause`]). Once a broker answers again, a thread of the
//! check reads each partition's watermarks and the message at that offset: a log that ends
//! at or before it, or holds another message there (another timestamp), started again. The
//! reader then refreshes the topic's metadata, reads those partitions again from their
//! beginning (at least once, never a message skipped) and fetches again
//! ([`Reader::resume`]). A log that is still the one read (a broker restarted with its
//! data) is fetched on from where the reader was.
//!
//! The pause matters on its own: a topic created again after such a restart has another
//! topic id, and a fetch naming the old one before the metadata is refreshed gets, from
//! tansu 0.6, an unknown-topic answer with a zero topic id and leader information, on which
//! librdkafka 2.12.1 crashes the process (a null topic name in its leader discovery).
//! Paused partitions are not fetched, and the metadata is refreshed before they are again.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use faas_core::util::lock;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::KafkaConfig;

/// How long the check's thread waits for news (and then looks whether its reader is gone).
const TICK: Duration = Duration::from_secs(1);
/// How long one check waits for the watermarks and the message of each partition.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reader stays paused while its check cannot be done; then it fetches again
/// unchecked (a broker that never answers the check must not stop it for good).
const MAX_PAUSE: Duration = Duration::from_secs(120);

/// A message read: its offset and timestamp (milliseconds, when the message has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Read {
    pub(crate) offset: i64,
    pub(crate) timestamp: Option<i64>,
}

/// A partition whose log started again, and where the new log starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Restarted {
    pub(crate) partition: i32,
    pub(crate) start: i64,
}

/// What the check does to its reader (on the check's thread).
pub(crate) trait Reader: Send + Sync {
    /// Stops fetching the partitions assigned (the brokers went away): a fetch before the
    /// reader knows the topic as the brokers now do can name a topic id they no longer
    /// have. Answers `false` once the reader is gone.
    fn pause(&self) -> bool;
    /// Reads `restarted` again from their beginning, refreshes the topic's metadata, and
    /// fetches every partition assigned again.
    fn resume(&self, restarted: &[Restarted]) -> Result<(), String>;
}

#[derive(Default)]
struct State {
    /// The last message read per partition.
    last: HashMap<i32, Read>,
    /// `last` when the brokers went away, until it has been checked.
    pending: Option<HashMap<i32, Read>>,
    /// The brokers went away again while a check was pending: check once more.
    lost_again: bool,
}

/// The last message a reader read per partition, and the check after the brokers went
/// away; see the [module docs](self).
pub(crate) struct LogCheck {
    topic: String,
    state: Mutex<State>,
    wake: Condvar,
    /// Whether the check keeps its reader paused; held while the check pauses or resumes
    /// the reader and while a group rebalance settles the partitions it assigns
    /// ([`LogCheck::settle_assigned`]), so that the two never cross.
    pub(crate) paused: Mutex<bool>,
}

impl LogCheck {
    pub(crate) fn new(topic: &str) -> Arc<Self> {
        Arc::new(LogCheck {
            topic: topic.to_string(),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            paused: Mutex::new(false),
        })
    }

    /// Settles partitions a group rebalance has just assigned to the reader: `pause(true)`
    /// while the check keeps the reader paused (its resume takes them along), else
    /// `pause(false)`, which resumes them. librdkafka keeps a partition's pause across a
    /// revoke and a new assignment: a partition paused when the brokers went away, revoked
    /// (the session timed out) before the check resumed the reader, and assigned again
    /// after it, would otherwise never be fetched again.
    pub(crate) fn settle_assigned(&self, pause: impl FnOnce(bool)) {
        let paused = lock(&self.paused);
        pause(*paused);
    }

    /// Notes a message read from `partition`.
    pub(crate) fn read(&self, partition: i32, offset: i64, timestamp: Option<i64>) {
        lock(&self.state).last.insert(partition, Read { offset, timestamp });
    }

    /// The brokers went away: the reader is paused at once, and what it read until now is
    /// checked once a broker answers again. A check already waiting keeps its older view
    /// (messages read since then may come from a new log).
    pub(crate) fn brokers_lost(&self) {
        let mut s = lock(&self.state);
        if s.pending.is_none() {
            s.pending = Some(s.last.clone());
            self.wake.notify_all();
        } else {
            s.lost_again = true;
        }
    }

    #[cfg(test)]
    pub(crate) fn pending_for_tests(&self) -> Option<HashMap<i32, Read>> {
        lock(&self.state).pending.clone()
    }

    /// Waits (at most a tick) for a pending check.
    fn wait_pending(&self) -> Option<HashMap<i32, Read>> {
        let s = lock(&self.state);
        let (s, _) = self
            .wake
            .wait_timeout_while(s, TICK, |s| s.pending.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.pending.clone()
    }

    /// The pending check is done: `restarted` are read again from their start, the rest
    /// is the log read. Another loss meanwhile leaves the check pending.
    fn checked(&self, restarted: &[Restarted]) {
        let mut s = lock(&self.state);
        for r in restarted {
            s.last.remove(&r.partition);
            if let Some(p) = s.pending.as_mut() {
                p.remove(&r.partition);
            }
        }
        if std::mem::take(&mut s.lost_again) {
            return;
        }
        s.pending = None;
    }

    /// Starts the check's thread: it ends once the check is dropped (with its reader's
    /// client), or the reader is gone.
    pub(crate) fn spawn(self: &Arc<Self>, config: &KafkaConfig, reader: Box<dyn Reader>) {
        let weak = Arc::downgrade(self);
        let config = config.clone();
        let spawned = std::thread::Builder::new()
            .name("faas-kafka-log-check".into())
            .spawn(move || run(weak, config, reader));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "kafka: cannot start the log check; a broker that restarts without its data may leave messages unread");
        }
    }
}

fn run(weak: Weak<LogCheck>, config: KafkaConfig, reader: Box<dyn Reader>) {
    // One client per check, kept while a check fails (the brokers still away).
    let mut client: Option<BaseConsumer<CheckContext>> = None;
    let mut paused_at: Option<Instant> = None;
    loop {
        let Some(check) = weak.upgrade() else { return };
        let topic = check.topic.clone();
        let pending = check.wait_pending();
        // The reader may go meanwhile: the check holds no strong reference while it works.
        drop(check);
        let Some(pending) = pending else {
            client = None;
            continue;
        };
        if paused_at.is_none() {
            let Some(check) = weak.upgrade() else { return };
            let mut paused = lock(&check.paused);
            if !reader.pause() {
                return;
            }
            *paused = true;
            paused_at = Some(Instant::now());
        }
        let checked = if pending.is_empty() {
            Ok(Vec::new())
        } else {
            match client.as_ref() {
                Some(c) => verify(c, &topic, &pending),
                None => match check_client(&config) {
                    Ok(c) => verify(client.insert(c), &topic, &pending),
                    Err(e) => Err(format!("cannot create the log check's client: {e}")),
                },
            }
        };
        let restarted = match checked {
            Ok(r) => r,
            Err(e) if paused_at.is_some_and(|t| t.elapsed() < MAX_PAUSE) => {
                tracing::debug!(topic = %topic, error = %e, "kafka: log check not done yet");
                // The check stays pending, so the next wait returns at once: a tick between
                // tries (a client that cannot be created fails without waiting).
                std::thread::sleep(TICK);
                continue;
            }
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "kafka: the log check could not be done; fetching again unchecked");
                Vec::new()
            }
        };
        for r in &restarted {
            tracing::warn!(
                topic = %topic,
                partition = r.partition,
                start = r.start,
                "kafka: the partition's log is not the one read before the brokers went away (a broker restarted without its data); reading it again from its beginning"
            );
        }
        let Some(check) = weak.upgrade() else { return };
        let mut paused = lock(&check.paused);
        match reader.resume(&restarted) {
            Ok(()) => {
                *paused = false;
                drop(paused);
                check.checked(&restarted);
                paused_at = None;
                client = None;
            }
            Err(e) => {
                tracing::debug!(topic = %topic, error = %e, "kafka: reader not resumed yet");
                std::thread::sleep(TICK);
            }
        }
    }
}

/// Pauses every partition of `topic` assigned to `client`.
pub(crate) fn pause_assigned<C: ConsumerContext>(
    client: &StreamConsumer<C>,
    topic: &str,
) -> Result<(), String> {
    let tpl = assigned(client, topic)?;
    if tpl.count() > 0 {
        client.pause(&tpl).map_err(|e| format!("pausing {topic}: {e}"))?;
    }
    Ok(())
}

/// Refreshes `client`'s metadata of `topic` (so that its fetches name the topic as the
/// brokers now know it), seeks `restarted` to their beginning (calling `each` for each one
/// seeked), then resumes every partition of `topic` assigned to it.
pub(crate) fn resume_assigned<C: ConsumerContext>(
    client: &StreamConsumer<C>,
    topic: &str,
    restarted: &[Restarted],
    mut each: impl FnMut(&Restarted),
) -> Result<(), String> {
    let md = client
        .fetch_metadata(Some(topic), CHECK_TIMEOUT)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    // Not before the brokers know the topic again: fetches by the id it had before (a
    // broker back without its data) can be answered in ways librdkafka crashes on (a
    // leader change for topic id zero, as tansu answers).
    if !md
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    {
        return Err(format!("{topic} does not exist (yet)"));
    }
    let tpl = assigned(client, topic)?;
    for r in restarted {
        if tpl.find_partition(topic, r.partition).is_none() {
            continue;
        }
        match client.seek(topic, r.partition, Offset::Beginning, CHECK_TIMEOUT) {
            Ok(()) => each(r),
            Err(e) => {
                tracing::warn!(topic, partition = r.partition, error = %e, "kafka: cannot read the partition again from its beginning")
            }
        }
    }
    if tpl.count() > 0 {
        client.resume(&tpl).map_err(|e| format!("resuming {topic}: {e}"))?;
    }
    Ok(())
}

fn assigned<C: ConsumerContext>(
    client: &StreamConsumer<C>,
    topic: &str,
) -> Result<TopicPartitionList, String> {
    let all = client.assignment().map_err(|e| format!("assignment: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for e in all.elements().iter().filter(|e| e.topic() == topic) {
        tpl.add_partition(topic, e.partition());
    }
    Ok(tpl)
}

fn check_client(config: &KafkaConfig) -> Result<BaseConsumer<CheckContext>, String> {
    let mut c = config.base();
    config.apply_properties(&mut c);
    // Not a group member: it only reads watermarks and one message per partition.
    c.set("group.id", format!("{}-log-check", config.client_id))
        .set("client.id", format!("{}-log-check", config.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest");
    c.create_with_context(CheckContext).map_err(|e| e.to_string())
}

/// The check client's context: librdkafka's lines through `tracing`; its error events at
/// debug level only, as they repeat late what the reader's own client reported when it
/// happened (the check's client hands out the errors of a whole outage when it next polls).
struct CheckContext;

impl rdkafka::client::ClientContext for CheckContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        crate::kafka::log_to_tracing("log check", level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", client = "log check", %error, "{reason}");
    }
}

impl ConsumerContext for CheckContext {}

/// The partitions of `reads` whose log on `topic` is not the one read: it ends at or
/// before the message read, or holds another message there. A message the log no longer
/// has at its start (retention) cannot be compared and counts as the same log. Fails when a
/// broker does not answer within the check's time.
pub(crate) fn verify<C: rdkafka::consumer::ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
    reads: &HashMap<i32, Read>,
) -> Result<Vec<Restarted>, String> {
    let mut restarted = Vec::new();
    let mut wanted: HashMap<i32, (Read, i64)> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for (&partition, &read) in reads {
        let (low, high) = client
            .fetch_watermarks(topic, partition, CHECK_TIMEOUT)
            .map_err(|e| format!("watermarks of {topic}/{partition}: {e}"))?;
        if high <= read.offset {
            restarted.push(Restarted { partition, start: low.max(0) });
        } else if read.offset >= low && read.timestamp.is_some() {
            tpl.add_partition_offset(topic, partition, Offset::Offset(read.offset))
                .map_err(|e| e.to_string())?;
            wanted.insert(partition, (read, low.max(0)));
        }
    }
    if !wanted.is_empty() {
        client.assign(&tpl).map_err(|e| format!("assigning {topic}: {e}"))?;
        let deadline = Instant::now() + CHECK_TIMEOUT;
        while !wanted.is_empty() && Instant::now() < deadline {
            let Some(polled) = client.poll(Duration::from_millis(100)) else { continue };
            let m = match polled {
                Ok(m) => m,
                // The client's own connection errors, queued while the brokers were away
                // and handed out only now that it polls: not an answer about the log.
                Err(e) if connection_error(&e) => continue,
                Err(e) => return Err(format!("reading {topic}: {e}")),
            };
            if m.topic() != topic {
                continue;
            }
            if let Some((read, start)) = wanted.remove(&m.partition()) {
                let now = Read { offset: m.offset(), timestamp: m.timestamp().to_millis() };
                if now != read {
                    restarted.push(Restarted { partition: m.partition(), start });
                }
            }
        }
        let _ = client.unassign();
        if !wanted.is_empty() {
            return Err(format!("{} partition(s) of {topic} not read back in time", wanted.len()));
        }
    }
    restarted.sort_by_key(|r| r.partition);
    Ok(restarted)
}

/// Whether a client error is about its connections to the brokers rather than a
/// partition: a client that was not polled while the brokers were away hands out one such
/// error per failed connection when it next polls (hundreds after a long outage).
fn connection_error(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(Code::AllBrokersDown | Code::BrokerTransportFailure | Code::Resolve)
    )
}

/// Whether a client error says the brokers went away: all of them (one broker of several
/// that restarts gets its logs back from the others, and a broker of the list that stays
/// unreachable must not pause the reader again and again).
pub(crate) fn brokers_lost(error: &rdkafka::error::KafkaError) -> bool {
    error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)
}

/// A plain (unsubscribed) reader's context: librdkafka's logs and errors through
/// `tracing`, and the brokers going away noted for the log check.
pub(crate) struct CheckedContext {
    pub(crate) check: Arc<LogCheck>,
    /// The reader's role in log lines.
    pub(crate) client: &'static str,
}

impl rdkafka::client::ClientContext for CheckedContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        crate::kafka::log_to_tracing(self.client, level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if brokers_lost(&error) {
            self.check.brokers_lost();
        }
        crate::kafka::error_to_tracing(self.client, &error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for CheckedContext {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::MockKafka;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    /// A reader is resumed only once the brokers know its topic again: fetches by the id a
    /// topic had before a broker lost its data can be answered in ways librdkafka crashes
    /// on (tansu's leader change for topic id zero).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_is_not_resumed_while_its_topic_is_missing() {
        let kafka = MockKafka::new(1).expect("mock cluster");
        let client: Arc<StreamConsumer> = Arc::new(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", kafka.bootstrap_servers())
                .set("group.id", "reader")
                .create()
                .expect("consumer"),
        );
        let resume = |client: Arc<StreamConsumer>| {
            tokio::task::spawn_blocking(move || resume_assigned(&client, "t", &[], |_| {}))
        };
        let e = resume(client.clone()).await.expect("joined").expect_err("resumed");
        assert!(e.contains("t does not exist"), "{e}");
        kafka.create_topic("t", 1).expect("topic");
        resume(client).await.expect("joined").expect("resumed once the topic exists");
    }

    /// The check on a real Kafka protocol peer (the mock cluster): a log that still holds
    /// the message read is the same; one that holds another message at that offset, or ends
    /// at or before it, started again; a message without a timestamp is compared by the
    /// watermarks only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_is_the_one_read_only_when_it_holds_the_message_read() {
        let kafka = MockKafka::new(1).expect("mock cluster");
        let config = KafkaConfig::new(kafka.bootstrap_servers());
        kafka.create_topic("t", 2).expect("topic");
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap_servers())
            .create()
            .expect("producer");
        for (partition, ts) in [(0, 1_000), (0, 2_000), (0, 3_000), (1, 4_000)] {
            producer
                .send(
                    FutureRecord::<str, str>::to("t")
                        .partition(partition)
                        .payload("x")
                        .timestamp(ts),
                    Duration::from_secs(10),
                )
                .await
                .expect("produced");
        }
        let client = check_client(&config).expect("client");
        let check = |reads: &[(i32, i64, Option<i64>)]| {
            let reads = reads
                .iter()
                .map(|&(p, offset, timestamp)| (p, Read { offset, timestamp }))
                .collect::<HashMap<_, _>>();
            verify(&client, "t", &reads).expect("checked")
        };
        assert_eq!(check(&[(0, 2, Some(3_000)), (1, 0, Some(4_000))]), vec![], "the same logs");
        assert_eq!(
            check(&[(0, 2, Some(2_500)), (1, 0, Some(4_000))]),
            vec![Restarted { partition: 0, start: 0 }],
            "another message at offset 2"
        );
        assert_eq!(
            check(&[(0, 1, Some(2_000)), (1, 1, Some(4_000))]),
            vec![Restarted { partition: 1, start: 0 }],
            "partition 1's log ends before the offset read"
        );
        assert_eq!(check(&[(0, 0, None)]), vec![], "nothing to compare but the watermarks");
        assert_eq!(
            check(&[(0, 7, None)]),
            vec![Restarted { partition: 0, start: 0 }],
            "the watermarks alone"
        );
    }

    /// The check's client is not polled while the brokers are away, and then holds one
    /// connection error per failed attempt; those must not fail the checks once a broker
    /// answers again (a check failing on each of them kept a reader paused for minutes).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_errors_queued_during_an_outage_do_not_fail_the_check() {
        let kafka = MockKafka::new(1).expect("mock cluster");
        let config = KafkaConfig::new(kafka.bootstrap_servers())
            .property("reconnect.backoff.ms", "10")
            .property("reconnect.backoff.max.ms", "100");
        kafka.create_topic("t", 1).expect("topic");
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap_servers())
            .create()
            .expect("producer");
        let record = FutureRecord::<str, str>::to("t").partition(0).payload("x").timestamp(1_000);
        producer.send(record, Duration::from_secs(10)).await.expect("produced");
        let reads = HashMap::from([(0, Read { offset: 0, timestamp: Some(1_000) })]);
        let client = check_client(&config).expect("client");
        assert_eq!(verify(&client, "t", &reads), Ok(vec![]), "checked before the outage");

        // The outage: a check fails (the watermarks are not answered) while the client
        // tries to connect again and again, queueing its errors.
        kafka.broker_down(1).expect("broker down");
        assert!(verify(&client, "t", &reads).is_err(), "checked with the broker down");
        kafka.broker_up(1).expect("broker up");

        // The broker is back: a check passes within a few tries (the client reconnects).
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            let outcome = verify(&client, "t", &reads);
            let passed = outcome.is_ok();
            outcomes.push(outcome);
            if passed {
                break;
            }
        }
        assert_eq!(outcomes.last(), Some(&Ok(vec![])), "checks after the outage: {outcomes:?}");
    }
}

//! The async queue of a gateway, as `faas up --queue` names it: `durable` (`faas up`'s
//! default: the bounded in-process queue and worker, with every accepted call and its
//! record kept in a [`StateStore`] in the state directory, see [`AsyncQueue::durable`]),
//! `memory` (the same in memory only: the gateway library's default) or
//! `kafka://HOST:PORT[,HOST:PORT...][/TOPIC]` (feature
//! `kafka`): `/async-function` publishes to TOPIC (default `faas-async`), activation
//! records go through the Kafka activation store on `TOPIC-activations` (so records of
//! calls run by a `faas-queue-worker` in another process are found too), and an in-process
//! worker consumes TOPIC unless [`QueueOptions::run_worker`] is off.
//!
//! ```
//! use faas_http::queue::QueueUrl;
//! let url: QueueUrl = "kafka://10.0.0.1:9092,10.0.0.2:9092/orders".parse().unwrap();
//! assert_eq!(
//!     url,
//!     QueueUrl::Kafka { brokers: vec!["10.0.0.1:9092".into(), "10.0.0.2:9092".into()], topic: "orders".into() }
//! );
//! assert_eq!("memory".parse::<QueueUrl>().unwrap(), QueueUrl::Memory);
//! assert_eq!("durable".parse::<QueueUrl>().unwrap(), QueueUrl::Durable);
//! ```

use std::sync::Arc;

use faas_core::queue::{ActivationStore, QueuePublisher};
use faas_core::state::StateStore;
use faas_core::{Error, Invoke, Result};

use crate::{GatewayBuilder, GatewayConfig};

/// The Kafka topic of queued invocations when the URL names none.
pub const DEFAULT_TOPIC: &str = "faas-async";

/// Where a gateway queues async invocations.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueUrl {
    /// `memory`: a bounded in-process queue with an in-process worker.
    Memory,
    /// `durable`: the same queue and worker, every accepted call and its activation record
    /// kept in the gateway's [`StateStore`] (see [`AsyncQueue::durable`]).
    Durable,
    /// `kafka://HOST:PORT[,HOST:PORT...][/TOPIC]`.
    Kafka {
        /// The bootstrap brokers, `HOST:PORT` each.
        brokers: Vec<String>,
        /// The topic of queued invocations.
        topic: String,
    },
}

impl std::fmt::Display for QueueUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueUrl::Memory => f.write_str("memory"),
            QueueUrl::Durable => f.write_str("durable"),
            QueueUrl::Kafka { brokers, topic } => {
                write!(f, "kafka://{}/{topic}", brokers.join(","))
            }
        }
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::invalid("queue", message)
}

const FORMS: &str = "expected `durable`, `memory` or `kafka://HOST:PORT[,HOST:PORT...][/TOPIC]`";

/// A Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A Kafka broker address: `HOST:PORT` (an IPv6 host in brackets), the port not 0.
pub fn valid_broker(b: &str) -> bool {
    let Some((host, port)) = b.rsplit_once(':') else { return false };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    !host.is_empty()
        && host.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':'))
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}

impl std::str::FromStr for QueueUrl {
    type Err = Error;

    /// Parses `durable`, `memory` or `kafka://HOST:PORT[,HOST:PORT...][/TOPIC]`; anything else is
    /// [`Error::InvalidSpec`] (field `queue`) saying what is wrong.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("memory") || s.eq_ignore_ascii_case("memory://") {
            return Ok(QueueUrl::Memory);
        }
        if s.eq_ignore_ascii_case("durable") {
            return Ok(QueueUrl::Durable);
        }
        let Some(rest) = s.strip_prefix("kafka://") else {
            return Err(bad(format!("{s:?}: {FORMS}")));
        };
        let (hosts, topic) = match rest.split_once('/') {
            Some((h, t)) => (h, t),
            None => (rest, ""),
        };
        let brokers: Vec<String> =
            hosts.split(',').map(str::trim).filter(|b| !b.is_empty()).map(String::from).collect();
        if brokers.is_empty() {
            return Err(bad(format!("{s:?} names no broker: {FORMS}")));
        }
        if let Some(b) = brokers.iter().find(|b| !valid_broker(b)) {
            return Err(bad(format!("broker {b:?} is not HOST:PORT: {FORMS}")));
        }
        let topic = if topic.is_empty() { DEFAULT_TOPIC } else { topic };
        if !valid_topic(topic) {
            return Err(bad(format!(
                "topic {topic:?} is not a Kafka topic name (1 to 249 letters, digits, '.', '_', '-')"
            )));
        }
        Ok(QueueUrl::Kafka { brokers, topic: topic.to_string() })
    }
}

/// The error for a Kafka queue in a build without the `kafka` feature.
pub fn kafka_not_compiled() -> Error {
    Error::NotSupported {
        operation: "the Kafka queue (--queue kafka://...): this faas was built without the \
                    `kafka` feature; rebuild it with `cargo build -p faas --features kafka` \
                    (or `cargo run -p faas --features kafka -- up ...`)"
            .into(),
    }
}

impl QueueUrl {
    /// Checks that this build can use the queue: a Kafka URL needs the `kafka` feature
    /// (`compiled` is whether it is in; [`QueueUrl::check`] passes this build's).
    pub fn check_with(&self, compiled: bool) -> Result<()> {
        match self {
            QueueUrl::Kafka { .. } if !compiled => Err(kafka_not_compiled()),
            _ => Ok(()),
        }
    }

    /// [`QueueUrl::check_with`] for this build.
    pub fn check(&self) -> Result<()> {
        self.check_with(cfg!(feature = "kafka"))
    }
}

/// How [`AsyncQueue::start`] sets a queue up.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    /// The topic of activation records; default `TOPIC-activations`, which is also what
    /// `faas-queue-worker` uses by default.
    pub activations_topic: Option<String>,
    /// Run a worker in this process consuming the queue (default). Off, an external
    /// `faas-queue-worker` consumes it.
    pub run_worker: bool,
    /// Further librdkafka properties (security settings and such).
    pub kafka_properties: Vec<(String, String)>,
    /// Create the Kafka topics that do not exist yet before starting (default): the calls'
    /// and the records' (compacted) with [`faas_queue::kafka::DEFAULT_PARTITIONS`]
    /// partitions, the dead letters' with one (see `faas_queue::kafka::ensure_topics`). A
    /// failure (no right to create topics, say) is logged and the queue starts anyway. The
    /// topics are checked and created again when a broker is reachable after all were down
    /// or a publication finds its topic missing (a cluster back without its data; see
    /// `faas_queue::kafka::KafkaPublisher::keep_topics`).
    pub create_topics: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            activations_topic: None,
            run_worker: true,
            kafka_properties: Vec::new(),
            create_topics: true,
        }
    }
}

/// A queue set up for a gateway: give it to the gateway with [`AsyncQueue::apply`], and
/// [`AsyncQueue::shutdown`] it once the gateway stopped.
pub struct AsyncQueue {
    publisher: Arc<dyn QueuePublisher>,
    activations: Arc<dyn ActivationStore>,
    worker: Option<faas_queue::WorkerHandle>,
    #[cfg(feature = "kafka")]
    kafka_store: Option<faas_queue::kafka_store::KafkaActivationStore>,
    description: String,
}

impl std::fmt::Debug for AsyncQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncQueue").field("description", &self.description).finish()
    }
}

impl AsyncQueue {
    /// Sets up the queue of `url`, its worker invoking through `invoker` (the gateway's
    /// stack: [`GatewayBuilder::stack`]), with `config`. For
    /// [`QueueUrl::Memory`] it answers `None`: the gateway's built-in default is that queue.
    /// [`QueueUrl::Durable`] needs the gateway's state store: use [`AsyncQueue::durable`]
    /// (here it is [`Error::InvalidSpec`]).
    /// A Kafka URL in a build without the `kafka` feature is [`kafka_not_compiled`].
    /// Must be called within a tokio runtime.
    pub async fn start(
        url: &QueueUrl,
        options: &QueueOptions,
        invoker: Arc<dyn Invoke>,
        config: &GatewayConfig,
    ) -> Result<Option<AsyncQueue>> {
        url.check()?;
        match url {
            QueueUrl::Memory => Ok(None),
            QueueUrl::Durable => {
                Err(bad("the durable queue needs a state store: use AsyncQueue::durable"))
            }
            #[cfg(feature = "kafka")]
            QueueUrl::Kafka { brokers, topic } => {
                start_kafka(brokers, topic, options, invoker, config).await.map(Some)
            }
            #[cfg(not(feature = "kafka"))]
            QueueUrl::Kafka { .. } => {
                let _ = (options, invoker, config);
                Err(kafka_not_compiled())
            }
        }
    }

    /// The durable queue over `store`: the bounded in-process queue (`config.async_queue`)
    /// and worker invoking through `invoker` (the gateway's stack: [`GatewayBuilder::stack`]),
    /// each accepted call written to `store` (with
    /// its `queued` record, in one commit shared with concurrent calls) before it is
    /// answered 202, and removed once the worker acknowledges it; the worker's records go
    /// to `store` too. Calls accepted before a restart and not acknowledged run again.
    /// Must be called within a tokio runtime.
    pub fn durable(
        store: Arc<dyn StateStore>,
        invoker: Arc<dyn Invoke>,
        config: &GatewayConfig,
    ) -> Result<AsyncQueue> {
        let queue = faas_queue::StoredQueue::open(
            store.clone(),
            config.async_queue,
            faas_queue::stored::DEFAULT_RECORDS,
        )?;
        let activations: Arc<dyn ActivationStore> = Arc::new(queue.activations());
        let worker = faas_queue::Worker::new(
            invoker,
            Arc::new(queue.consumer()),
            activations.clone(),
            worker_config(config),
        )
        .with_dead_letters(Arc::new(queue.queue().dead_letters()))
        .spawn();
        let description = format!(
            "durable queue in {} ({} calls carried over), worker in process",
            store.describe(),
            queue.restored()
        );
        Ok(AsyncQueue {
            publisher: Arc::new(queue.publisher()),
            activations,
            worker: Some(worker),
            #[cfg(feature = "kafka")]
            kafka_store: None,
            description,
        })
    }

    /// The gateway's `/async-function` publishes here (writing the `queued` record) and
    /// `GET /system/activations/{id}` reads from the activation store.
    pub fn apply(&self, builder: GatewayBuilder) -> GatewayBuilder {
        builder.queue(self.publisher.clone()).activations(self.activations.clone())
    }

    /// The publisher (it writes the `queued` record of each accepted call).
    pub fn publisher(&self) -> Arc<dyn QueuePublisher> {
        self.publisher.clone()
    }

    /// The activation store.
    pub fn activations(&self) -> Arc<dyn ActivationStore> {
        self.activations.clone()
    }

    /// Whether a worker runs in this process.
    pub fn runs_worker(&self) -> bool {
        self.worker.is_some()
    }

    /// The in-process worker's counters (`None` without a worker in this process).
    pub fn worker_stats(&self) -> Option<Arc<faas_queue::WorkerStats>> {
        self.worker.as_ref().map(|w| w.stats().clone())
    }

    /// One line saying what this is, for start-up messages.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Stops the in-process worker (in-flight invocations finish; the consumer leaves its
    /// group) and closes the activation store.
    pub async fn shutdown(self) -> Result<()> {
        let mut result = Ok(());
        if let Some(w) = self.worker {
            result = w.shutdown().await;
        }
        #[cfg(feature = "kafka")]
        if let Some(s) = self.kafka_store {
            let closed = s.close().await;
            result = result.and(closed);
        }
        result
    }
}

/// The in-process worker's settings for a gateway with `config`.
fn worker_config(config: &GatewayConfig) -> faas_queue::WorkerConfig {
    faas_queue::WorkerConfig {
        max_payload_bytes: config.max_body_bytes,
        max_response_bytes: config.max_async_result_bytes,
        ..Default::default()
    }
}

#[cfg(feature = "kafka")]
async fn start_kafka(
    brokers: &[String],
    topic: &str,
    options: &QueueOptions,
    invoker: Arc<dyn Invoke>,
    config: &GatewayConfig,
) -> Result<AsyncQueue> {
    use faas_queue::kafka::{KafkaConfig, KafkaConsumer, KafkaDeadLetters, KafkaPublisher};
    use faas_queue::kafka_store::{default_activations_topic, KafkaActivationStore};

    let mut kafka = KafkaConfig::new(brokers.join(","));
    kafka.topic = topic.to_string();
    kafka.properties = options.kafka_properties.clone();
    let records_topic =
        options.activations_topic.clone().unwrap_or_else(|| default_activations_topic(topic));
    if options.create_topics {
        let wait = std::time::Duration::from_secs(10);
        let partitions = faas_queue::kafka::DEFAULT_PARTITIONS;
        match faas_queue::kafka::ensure_topics(&kafka, Some(&records_topic), partitions, wait).await
        {
            Ok(r) if !r.created.is_empty() => {
                tracing::info!(topics = ?r.created, partitions, "created the Kafka topics");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the Kafka topics were not created; going on"),
        }
    }
    // One producer for the calls, their records, the worker's republished calls and the dead
    // letters (see `KafkaPublisher::sharing_with`): one librdkafka client, not four.
    let calls = KafkaPublisher::new(&kafka)?;
    if options.create_topics {
        // A cluster back without its data gets the topics again (see `keep_topics`).
        calls.keep_topics(Some(&records_topic), faas_queue::kafka::DEFAULT_PARTITIONS)?;
    }
    let store = KafkaActivationStore::sharing(&calls, &kafka, &records_topic)?;
    // Known records let the worker skip a redelivered call that already finished; a
    // cluster that is down is worth saying at start-up (the store keeps trying).
    if let Err(e) = store.wait_caught_up(std::time::Duration::from_secs(10)).await {
        tracing::warn!(error = %e, "activation records not read yet");
    }
    let activations: Arc<dyn ActivationStore> = Arc::new(store.clone());
    // The call and its `queued` record are produced at once (one acknowledgement's wait
    // before the 202, not two); the store keeps records moving forward whatever their order.
    let publisher: Arc<dyn QueuePublisher> = Arc::new(faas_queue::TrackedPublisher::overlapped(
        Arc::new(calls.clone()),
        activations.clone(),
    ));
    let worker = if options.run_worker {
        Some(
            faas_queue::Worker::new(
                invoker,
                Arc::new(KafkaConsumer::sharing(&calls, &kafka)?),
                activations.clone(),
                worker_config(config),
            )
            .with_dead_letters(Arc::new(KafkaDeadLetters::sharing(&calls, &kafka)))
            .spawn(),
        )
    } else {
        None
    };
    let description = format!(
        "kafka topic {topic} on {}, records on {records_topic}, {}",
        kafka.brokers,
        if worker.is_some() {
            format!("worker in process (group {})", kafka.group_id)
        } else {
            "no worker in process (run faas-queue-worker)".to_string()
        }
    );
    Ok(AsyncQueue { publisher, activations, worker, kafka_store: Some(store), description })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        assert_eq!("memory".parse::<QueueUrl>().unwrap(), QueueUrl::Memory);
        assert_eq!("durable".parse::<QueueUrl>().unwrap(), QueueUrl::Durable);
        assert_eq!(QueueUrl::Durable.to_string(), "durable");
        assert_eq!(
            "kafka://127.0.0.1:9092".parse::<QueueUrl>().unwrap(),
            QueueUrl::Kafka { brokers: vec!["127.0.0.1:9092".into()], topic: DEFAULT_TOPIC.into() }
        );
        assert_eq!(
            "kafka://a:1,b.example:2/my.topic_1".parse::<QueueUrl>().unwrap(),
            QueueUrl::Kafka {
                brokers: vec!["a:1".into(), "b.example:2".into()],
                topic: "my.topic_1".into()
            }
        );
        let u = "kafka://[::1]:9092/t".parse::<QueueUrl>().unwrap();
        assert_eq!(u.to_string(), "kafka://[::1]:9092/t");
        for bad in [
            "",
            "nats://x:4222",
            "kafka://",
            "kafka:///t",
            "kafka://host/t",
            "kafka://host:0/t",
            "kafka://host:99999/t",
            "kafka://h:1/bad topic",
            "kafka://h:1/a/b",
        ] {
            let e = bad.parse::<QueueUrl>().unwrap_err();
            assert!(
                matches!(&e, Error::InvalidSpec { field, .. } if field == "queue"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn kafka_without_the_feature_is_a_clear_error() {
        let url: QueueUrl = "kafka://127.0.0.1:9092/t".parse().unwrap();
        let e = url.check_with(false).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("`kafka` feature") && msg.contains("--features kafka"), "{msg}");
        assert!(url.check_with(true).is_ok());
        assert!(QueueUrl::Memory.check_with(false).is_ok());
        assert_eq!(url.check().is_ok(), cfg!(feature = "kafka"));
    }
}

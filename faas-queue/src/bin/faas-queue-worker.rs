//! `faas-queue-worker`: the queue worker as its own process. It consumes a Kafka topic in a
//! consumer group (start several for more throughput: they share the partitions) and
//! invokes each queued invocation through a gateway's `/function/NAME` route.
//!
//! ```text
//! faas-queue-worker --brokers 127.0.0.1:9092 --gateway http://127.0.0.1:8080 \
//!     [--topic faas-async] [--dead-letter-topic faas-async-dead-letters] \
//!     [--group faas-queue-worker] [--max-attempts 5] [--retry-statuses 408,429,500,502,503,504] \
//!     [--backoff 100ms] [--max-backoff 30s] [--function-concurrency 16] \
//!     [--max-in-flight 256] [--invoke-timeout 60s] [--max-payload-bytes 1048576] \
//!     [--activations kafka|memory] [--activations-topic faas-async-activations] \
//!     [--kafka-property KEY=VALUE]...
//! ```
//!
//! Activation records (what `GET /system/activations/{call-id}` shows) go to the Kafka
//! topic `--activations-topic` (default: the queue topic followed by `-activations`), where
//! a gateway started with `faas up --queue kafka://...` reads them; `--activations memory`
//! keeps them in this process only. Create that topic compacted (`cleanup.policy=compact`).
//!
//! Every option can also be given as an environment variable: `--max-attempts` is
//! `FAAS_QUEUE_MAX_ATTEMPTS`, `--brokers` is `FAAS_QUEUE_BROKERS`, and so on. SIGINT or
//! SIGTERM stops it gracefully (in-flight invocations finish, the group is left).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use faas_core::queue::ActivationStore;
use faas_core::util::{format_duration, parse_duration};
use faas_core::{Error, Result};
use faas_queue::gateway::GatewayInvoker;
use faas_queue::kafka::{KafkaConfig, KafkaConsumer, KafkaDeadLetters};
use faas_queue::kafka_store::{default_activations_topic, KafkaActivationStore};
use faas_queue::{MemoryActivationStore, Worker, WorkerConfig};

const FLAGS: &[&str] = &[
    "brokers",
    "gateway",
    "topic",
    "dead-letter-topic",
    "group",
    "max-attempts",
    "retry-statuses",
    "backoff",
    "max-backoff",
    "function-concurrency",
    "max-in-flight",
    "invoke-timeout",
    "max-payload-bytes",
    "activations",
    "activations-topic",
];

struct Options {
    values: HashMap<String, String>,
    properties: Vec<(String, String)>,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options> {
        let mut values = HashMap::new();
        let mut properties = Vec::new();
        for flag in FLAGS {
            let env = format!("FAAS_QUEUE_{}", flag.to_uppercase().replace('-', "_"));
            if let Ok(v) = std::env::var(&env) {
                values.insert(flag.to_string(), v);
            }
        }
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                println!("{}", usage());
                std::process::exit(0);
            }
            let Some(name) = arg.strip_prefix("--") else {
                return Err(Error::invalid("arguments", format!("unexpected argument {arg:?}")));
            };
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (name.to_string(), None),
            };
            let value = match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(Error::invalid(name, "needs a value")),
            };
            if name == "kafka-property" {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| Error::invalid("kafka-property", "must be KEY=VALUE"))?;
                properties.push((k.to_string(), v.to_string()));
            } else if FLAGS.contains(&name.as_str()) {
                values.insert(name, value);
            } else {
                return Err(Error::invalid(name, "unknown option (see --help)"));
            }
        }
        Ok(Options { values, properties })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn required(&self, name: &str) -> Result<&str> {
        self.get(name).ok_or_else(|| Error::invalid(name, "is required"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => {
                v.parse().map_err(|_| Error::invalid(name, format!("{v:?} is not a number")))
            }
        }
    }

    fn duration(&self, name: &str, default: Duration) -> Result<Duration> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => parse_duration(v).map_err(|e| Error::invalid(name, e)),
        }
    }
}

fn usage() -> String {
    let mut s = String::from(
        "faas-queue-worker: invokes queued async invocations from Kafka through a gateway\n\n\
         Usage: faas-queue-worker --brokers HOST:PORT --gateway http://HOST:PORT [OPTIONS]\n\nOptions:\n",
    );
    for f in FLAGS {
        s.push_str(&format!(
            "  --{f} <VALUE>   (env FAAS_QUEUE_{})\n",
            f.to_uppercase().replace('-', "_")
        ));
    }
    s.push_str("  --kafka-property KEY=VALUE   any librdkafka property (repeatable)\n");
    s.push_str(
        "\nActivation records: --activations kafka (default) publishes them to\n\
         --activations-topic (default: the queue topic + \"-activations\", a compacted topic)\n\
         where gateways (faas up --queue kafka://...) read them; --activations memory keeps\n\
         them in this process only.\n",
    );
    s
}

/// Where the worker keeps activation records.
enum Records {
    /// On a Kafka topic, shared with gateways.
    Kafka(String),
    /// In this process only.
    Memory,
}

fn records(o: &Options, kafka: &KafkaConfig) -> Result<Records> {
    match o.get("activations").unwrap_or("kafka") {
        "kafka" => Ok(Records::Kafka(
            o.get("activations-topic")
                .map(str::to_string)
                .unwrap_or_else(|| default_activations_topic(&kafka.topic)),
        )),
        "memory" => Ok(Records::Memory),
        other => Err(Error::invalid(
            "activations",
            format!("{other:?} is not a store (kafka or memory)"),
        )),
    }
}

fn config(o: &Options) -> Result<(KafkaConfig, WorkerConfig, String, Duration)> {
    let mut kafka = KafkaConfig::new(o.required("brokers")?);
    if let Some(t) = o.get("topic") {
        kafka.topic = t.to_string();
    }
    if let Some(t) = o.get("dead-letter-topic") {
        kafka.dead_letter_topic = t.to_string();
    }
    if let Some(g) = o.get("group") {
        kafka.group_id = g.to_string();
    }
    kafka.properties = o.properties.clone();
    let d = WorkerConfig::default();
    let mut w = WorkerConfig {
        max_attempts: o.number("max-attempts", d.max_attempts)?,
        function_concurrency: o.number("function-concurrency", d.function_concurrency)?,
        max_in_flight: o.number("max-in-flight", d.max_in_flight)?,
        max_payload_bytes: o.number("max-payload-bytes", d.max_payload_bytes)?,
        ..d
    };
    if w.max_attempts == 0 {
        return Err(Error::invalid("max-attempts", "must be at least 1"));
    }
    if let Some(list) = o.get("retry-statuses") {
        w.retry_statuses = list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<u16>()
                    .map_err(|_| Error::invalid("retry-statuses", format!("{s:?} is not a status")))
            })
            .collect::<Result<_>>()?;
    }
    w.backoff.initial = o.duration("backoff", w.backoff.initial)?;
    w.backoff.max = o.duration("max-backoff", w.backoff.max)?;
    let invoke_timeout = o.duration("invoke-timeout", Duration::from_secs(60))?;
    let gateway = o.required("gateway")?.to_string();
    Ok((kafka, w, gateway, invoke_timeout))
}

async fn run() -> Result<()> {
    let o = Options::parse(std::env::args().skip(1))?;
    let (kafka, worker_config, gateway, invoke_timeout) = config(&o)?;
    let invoker = Arc::new(GatewayInvoker::new(&gateway, invoke_timeout)?);
    let consumer = Arc::new(KafkaConsumer::new(&kafka)?);
    let dead_letters = Arc::new(KafkaDeadLetters::new(&kafka)?);
    let (store, kafka_store): (Arc<dyn ActivationStore>, _) = match records(&o, &kafka)? {
        Records::Kafka(topic) => {
            let s = KafkaActivationStore::new(&kafka, &topic)?;
            // Known records let a redelivered, already finished call be skipped.
            if let Err(e) = s.wait_caught_up(Duration::from_secs(30)).await {
                eprintln!("faas-queue-worker: {e} (going on; it keeps reading)");
            }
            (Arc::new(s.clone()), Some(s))
        }
        Records::Memory => (Arc::new(MemoryActivationStore::default()), None),
    };
    eprintln!(
        "faas-queue-worker: topic {} group {} on {}, invoking through {gateway} (max attempts {}, timeout {}), activation records {}",
        kafka.topic,
        kafka.group_id,
        kafka.brokers,
        worker_config.max_attempts,
        format_duration(invoke_timeout),
        kafka_store.as_ref().map_or("in memory".to_string(), |s| format!("on topic {}", s.topic())),
    );
    let worker =
        Worker::new(invoker, consumer, store, worker_config).with_dead_letters(dead_letters);
    let stats = worker.stats();
    let result = worker.run_until(shutdown_signal()).await;
    if let Some(s) = kafka_store {
        if let Err(e) = s.close().await {
            eprintln!("faas-queue-worker: {e}");
        }
    }
    result?;
    eprintln!(
        "faas-queue-worker: stopped after {} succeeded, {} failed, {} dead-lettered",
        stats.succeeded.load(std::sync::atomic::Ordering::Relaxed),
        stats.failed.load(std::sync::atomic::Ordering::Relaxed),
        stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed),
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faas-queue-worker: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run()) {
        eprintln!("faas-queue-worker: {e}");
        std::process::exit(2);
    }
}

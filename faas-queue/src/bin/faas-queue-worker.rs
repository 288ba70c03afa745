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
//!     [--linger 5ms] [--listen 127.0.0.1:8081] [--kafka-property KEY=VALUE]...
//! ```
//!
//! With `--listen`, `GET /healthz` answers 200 while a broker can be reached (503 naming
//! why not: every broker down, a producer failed fatally, a refused publication), for a
//! readiness probe or an alert (not for a liveness probe: restarting workers does not bring
//! Kafka back, and the worker recovers on its own when it is), and `GET /metrics` the
//! worker's counters in Prometheus's text format (`faas_queue_worker_*_total`,
//! `faas_queue_worker_healthy`).
//!
//! Activation records (what `GET /system/activations/{call-id}` shows) go to the Kafka
//! topic `--activations-topic` (default: the queue topic followed by `-activations`), where
//! a gateway started with `faas up --queue kafka://...` reads them; `--activations memory`
//! keeps them in this process only. Create that topic compacted (`cleanup.policy=compact`).
//!
//! Every option can also be given as an environment variable: `--max-attempts` is
//! `FAAS_QUEUE_MAX_ATTEMPTS`, `--brokers` is `FAAS_QUEUE_BROKERS`, and so on. SIGINT or
//! SIGTERM stops it gracefully (in-flight invocations finish, the group is left).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The binary's allocator: mimalloc, as the `faas` binary's (see the feature `bin`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, ValueEnum};
use faas_core::queue::ActivationStore;
use faas_core::util::{format_duration, parse_duration};
use faas_core::Result;
use faas_queue::gateway::GatewayInvoker;
use faas_queue::kafka::{KafkaConfig, KafkaConsumer, KafkaDeadLetters, KafkaPublisher};
use faas_queue::kafka_store::{default_activations_topic, KafkaActivationStore};
use faas_queue::{MemoryActivationStore, Worker, WorkerConfig};

/// The command line; every option but `--kafka-property` can also be given as the
/// environment variable `FAAS_QUEUE_` + its name in upper case with `_` for `-` (the command
/// line wins). Unset options keep the defaults of [`KafkaConfig::new`] and
/// [`WorkerConfig::default`], which the help text repeats.
#[derive(Parser, Debug)]
#[command(
    name = "faas-queue-worker",
    about = "faas-queue-worker: invokes queued async invocations from Kafka through a gateway",
    after_help = "Activation records: --activations kafka (default) publishes them to\n\
                  --activations-topic (default: the queue topic + \"-activations\", a compacted topic)\n\
                  where gateways (faas up --queue kafka://...) read them; --activations memory keeps\n\
                  them in this process only."
)]
struct Args {
    /// Kafka bootstrap servers (HOST:PORT, comma-separated).
    #[arg(long, env = "FAAS_QUEUE_BROKERS", value_name = "HOST:PORT")]
    brokers: String,
    /// The gateway whose /function/NAME route invokes the functions.
    #[arg(long, env = "FAAS_QUEUE_GATEWAY", value_name = "http://HOST:PORT")]
    gateway: String,
    /// The topic of queued invocations [default: faas-async].
    #[arg(long, env = "FAAS_QUEUE_TOPIC")]
    topic: Option<String>,
    /// The dead-letter topic [default: faas-async-dead-letters].
    #[arg(long, env = "FAAS_QUEUE_DEAD_LETTER_TOPIC")]
    dead_letter_topic: Option<String>,
    /// The consumer group the workers share [default: faas-queue-worker].
    #[arg(long, env = "FAAS_QUEUE_GROUP")]
    group: Option<String>,
    /// Attempts per invocation, at least 1 [default: 5].
    #[arg(long, env = "FAAS_QUEUE_MAX_ATTEMPTS", value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: Option<u32>,
    /// HTTP statuses that are retried, comma-separated [default: 408,429,500,502,503,504].
    #[arg(long, env = "FAAS_QUEUE_RETRY_STATUSES", value_name = "STATUS,...", value_parser = parse_statuses)]
    retry_statuses: Option<Statuses>,
    /// First retry delay, doubled on each retry [default: 100ms].
    #[arg(long, env = "FAAS_QUEUE_BACKOFF", value_name = "DURATION", value_parser = parse_duration)]
    backoff: Option<Duration>,
    /// Longest retry delay [default: 30s].
    #[arg(long, env = "FAAS_QUEUE_MAX_BACKOFF", value_name = "DURATION", value_parser = parse_duration)]
    max_backoff: Option<Duration>,
    /// Invocations of one function running at once [default: 16].
    #[arg(long, env = "FAAS_QUEUE_FUNCTION_CONCURRENCY", value_name = "N")]
    function_concurrency: Option<usize>,
    /// Deliveries held at once, all functions together [default: 256].
    #[arg(long, env = "FAAS_QUEUE_MAX_IN_FLIGHT", value_name = "N")]
    max_in_flight: Option<usize>,
    /// Timeout of one invocation through the gateway [default: 60s].
    #[arg(long, env = "FAAS_QUEUE_INVOKE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    invoke_timeout: Option<Duration>,
    /// Largest queued request body accepted, in bytes [default: 1048576].
    #[arg(long, env = "FAAS_QUEUE_MAX_PAYLOAD_BYTES", value_name = "BYTES")]
    max_payload_bytes: Option<usize>,
    /// Where activation records go [default: kafka].
    #[arg(long, env = "FAAS_QUEUE_ACTIVATIONS", value_enum)]
    activations: Option<Activations>,
    /// The topic of activation records [default: the queue topic + "-activations"].
    #[arg(long, env = "FAAS_QUEUE_ACTIVATIONS_TOPIC")]
    activations_topic: Option<String>,
    /// How long the producer of activation records waits for a batch to fill (linger.ms)
    /// [default: 5ms, at most 1s].
    #[arg(long, env = "FAAS_QUEUE_LINGER", value_name = "DURATION", value_parser = parse_linger)]
    linger: Option<Duration>,
    /// Serve GET /healthz (200, or 503 naming why the brokers cannot be reached) and GET
    /// /metrics (the worker's counters, Prometheus text) on this address, e.g.
    /// 127.0.0.1:8081 [default: none].
    #[arg(long, env = "FAAS_QUEUE_LISTEN", value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// Any librdkafka property (repeatable).
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    kafka_properties: Vec<(String, String)>,
    /// Do not create missing topics (by default the queue's and the records' topics are
    /// created with 8 partitions, the records' compacted, and the dead letters' with 1, at
    /// start and again when a cluster comes back without them; existing topics are left as
    /// they are).
    #[arg(long, env = "FAAS_QUEUE_NO_CREATE_TOPICS")]
    no_create_topics: bool,
}

/// `--linger`: a duration of at most a second (the records wait that long for company).
fn parse_linger(s: &str) -> std::result::Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > Duration::from_secs(1) {
        return Err(format!("{s:?} is longer than the 1s a record may wait for a batch"));
    }
    Ok(d)
}

/// The list of `--retry-statuses`, one value to clap.
#[derive(Debug, Clone)]
struct Statuses(Vec<u16>);

fn parse_statuses(list: &str) -> std::result::Result<Statuses, String> {
    list.split(',')
        .map(|s| s.trim().parse::<u16>().map_err(|_| format!("{s:?} is not a status")))
        .collect::<std::result::Result<_, _>>()
        .map(Statuses)
}

fn parse_property(kv: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = kv.split_once('=').ok_or("must be KEY=VALUE")?;
    Ok((k.to_string(), v.to_string()))
}

/// Where the worker keeps activation records (`--activations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Activations {
    /// On a Kafka topic, shared with gateways.
    Kafka,
    /// In this process only.
    Memory,
}

/// Where the worker keeps activation records, resolved.
enum Records {
    /// On a Kafka topic, shared with gateways.
    Kafka(String),
    /// In this process only.
    Memory,
}

fn records(a: &Args, kafka: &KafkaConfig) -> Records {
    match a.activations.unwrap_or(Activations::Kafka) {
        Activations::Kafka => Records::Kafka(
            a.activations_topic.clone().unwrap_or_else(|| default_activations_topic(&kafka.topic)),
        ),
        Activations::Memory => Records::Memory,
    }
}

fn config(a: &Args) -> (KafkaConfig, WorkerConfig, Duration) {
    let mut kafka = KafkaConfig::new(&a.brokers);
    if let Some(t) = &a.topic {
        kafka.topic.clone_from(t);
    }
    if let Some(t) = &a.dead_letter_topic {
        kafka.dead_letter_topic.clone_from(t);
    }
    if let Some(g) = &a.group {
        kafka.group_id.clone_from(g);
    }
    kafka.linger = a.linger.unwrap_or(faas_queue::kafka::WORKER_LINGER);
    kafka.properties = a.kafka_properties.clone();
    let d = WorkerConfig::default();
    let mut w = WorkerConfig {
        max_attempts: a.max_attempts.unwrap_or(d.max_attempts),
        function_concurrency: a.function_concurrency.unwrap_or(d.function_concurrency),
        max_in_flight: a.max_in_flight.unwrap_or(d.max_in_flight),
        max_payload_bytes: a.max_payload_bytes.unwrap_or(d.max_payload_bytes),
        ..d
    };
    if let Some(Statuses(list)) = &a.retry_statuses {
        w.retry_statuses.clone_from(list);
    }
    w.backoff.initial = a.backoff.unwrap_or(w.backoff.initial);
    w.backoff.max = a.max_backoff.unwrap_or(w.backoff.max);
    let invoke_timeout = a.invoke_timeout.unwrap_or(Duration::from_secs(60));
    (kafka, w, invoke_timeout)
}

async fn run(args: Args) -> Result<()> {
    let (kafka, worker_config, invoke_timeout) = config(&args);
    // The records' topic, when the records go to Kafka: created and kept with the queue's.
    let records_topic = match records(&args, &kafka) {
        Records::Kafka(topic) => Some(topic),
        Records::Memory => None,
    };
    let partitions = faas_queue::kafka::DEFAULT_PARTITIONS;
    if !args.no_create_topics {
        let wait = Duration::from_secs(10);
        let records = records_topic.as_deref();
        match faas_queue::kafka::ensure_topics(&kafka, records, partitions, wait).await {
            Ok(r) if !r.created.is_empty() => eprintln!(
                "faas-queue-worker: created the topics {} ({partitions} partitions; dead letters 1)",
                r.created.join(", ")
            ),
            Ok(_) => {}
            Err(e) => eprintln!("faas-queue-worker: {e} (going on)"),
        }
    }
    let gateway = &args.gateway;
    let invoker = Arc::new(GatewayInvoker::new(gateway, invoke_timeout)?);
    // One producer for the republished calls, the dead letters and the records.
    let producer = KafkaPublisher::new(&kafka)?;
    if !args.no_create_topics {
        // A cluster back without its data gets the topics again (see `keep_topics`).
        producer.keep_topics(records_topic.as_deref(), partitions)?;
    }
    let consumer = Arc::new(KafkaConsumer::sharing(&producer, &kafka)?);
    let dead_letters = Arc::new(KafkaDeadLetters::sharing(&producer, &kafka));
    let (store, kafka_store): (Arc<dyn ActivationStore>, _) = match records(&args, &kafka) {
        Records::Kafka(topic) => {
            let s = KafkaActivationStore::sharing(&producer, &kafka, &topic)?;
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
    let status = match args.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                faas_core::Error::invalid("listen", format!("cannot listen on {addr}: {e}"))
            })?;
            let bound = listener.local_addr().unwrap_or(addr);
            eprintln!("faas-queue-worker: /healthz and /metrics on http://{bound}");
            Some(tokio::spawn(status::serve(listener, producer.clone(), stats.clone())))
        }
        None => None,
    };
    let result = worker.run_until(shutdown_signal()).await;
    if let Some(task) = status {
        task.abort();
    }
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

/// The `--listen` endpoint: `/healthz` and `/metrics`.
mod status {
    use std::convert::Infallible;
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use faas_core::queue::QueuePublisher;
    use faas_queue::kafka::KafkaPublisher;
    use faas_queue::WorkerStats;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio::sync::Semaphore;

    /// Connections served at once; more wait to be accepted.
    const MAX_CONNECTIONS: usize = 64;
    /// How long a client may take to send a request's head.
    const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long one connection may stay (one request each: probes and scrapes need no
    /// keep-alive), so a client that sends nothing cannot hold a slot.
    const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

    /// Serves `listener` until aborted.
    pub(crate) async fn serve(
        listener: tokio::net::TcpListener,
        producer: KafkaPublisher,
        stats: Arc<WorkerStats>,
    ) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "status endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (producer, stats) = (producer.clone(), stats.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let answer = answer(&req, &producer, &stats);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                drop(permit);
            });
        }
    }

    fn answer(
        req: &Request<Incoming>,
        producer: &KafkaPublisher,
        stats: &WorkerStats,
    ) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/healthz") => match producer.health() {
                Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
                Err(e) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{e}\n")),
            },
            (&Method::GET | &Method::HEAD, "/metrics") => {
                let healthy = producer.health().is_ok();
                (StatusCode::OK, "text/plain; version=0.0.4", metrics(stats, healthy))
            }
            (_, "/healthz" | "/metrics") => {
                (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".to_string())
            }
            (_, path) => {
                (StatusCode::NOT_FOUND, "text/plain", format!("no {path}: /healthz, /metrics\n"))
            }
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        resp
    }

    /// The counters in Prometheus's text format, written out here: ten lines do not need a
    /// metrics registry.
    pub(crate) fn metrics(stats: &WorkerStats, healthy: bool) -> String {
        let counters = [
            ("received", "Deliveries received", &stats.received),
            ("succeeded", "Invocations finished succeeded", &stats.succeeded),
            ("failed", "Invocations finished failed", &stats.failed),
            ("dead_lettered", "Invocations dead-lettered", &stats.dead_lettered),
            ("retries", "Attempts after the first", &stats.retries),
            ("duplicates", "Deliveries of finished calls skipped", &stats.duplicates),
            ("callbacks_delivered", "Callbacks delivered", &stats.callbacks_delivered),
            ("callbacks_failed", "Callbacks given up", &stats.callbacks_failed),
            ("nacked", "Deliveries given back unfinished", &stats.nacked),
        ];
        let mut out = String::new();
        for (name, help, v) in counters {
            let _ = write!(
                out,
                "# HELP faas_queue_worker_{name}_total {help}.\n\
                 # TYPE faas_queue_worker_{name}_total counter\n\
                 faas_queue_worker_{name}_total {}\n",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = write!(
            out,
            "# HELP faas_queue_worker_healthy 1 while a broker can be reached.\n\
             # TYPE faas_queue_worker_healthy gauge\n\
             faas_queue_worker_healthy {}\n",
            u8::from(healthy)
        );
        out
    }
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
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a pipe gets plain lines.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faas-queue-worker: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("faas-queue-worker: {e}");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The options every earlier release accepted, each also read from `FAAS_QUEUE_*`.
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
        "linger",
        "listen",
        "no-create-topics",
    ];

    #[test]
    fn every_option_keeps_its_flag_and_environment_variable() {
        Args::command().debug_assert();
        let cmd = Args::command();
        let options: Vec<(String, Option<String>)> = cmd
            .get_arguments()
            .filter_map(|a| {
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
                Some((a.get_long()?.to_string(), env))
            })
            .filter(|(long, _)| long != "help")
            .collect();
        for flag in FLAGS {
            let env = format!("FAAS_QUEUE_{}", flag.to_uppercase().replace('-', "_"));
            assert!(options.contains(&(flag.to_string(), Some(env))), "{flag}: {options:?}");
        }
        assert!(options.contains(&("kafka-property".to_string(), None)), "{options:?}");
        assert_eq!(options.len(), FLAGS.len() + 1, "{options:?}");
    }

    #[test]
    fn values_parse_into_the_configs() {
        let a = Args::try_parse_from([
            "faas-queue-worker",
            "--brokers",
            "b:9092",
            "--gateway=http://g:8080",
            "--topic",
            "jobs",
            "--retry-statuses",
            "500, 503",
            "--backoff",
            "250ms",
            "--max-backoff=1m",
            "--max-attempts",
            "3",
            "--max-payload-bytes",
            "10",
            "--invoke-timeout",
            "5s",
            "--kafka-property",
            "a=b=c",
            "--kafka-property",
            "x=",
            "--activations",
            "memory",
        ])
        .unwrap();
        assert_eq!(a.gateway, "http://g:8080");
        let (kafka, w, timeout) = config(&a);
        assert_eq!((kafka.brokers.as_str(), kafka.topic.as_str()), ("b:9092", "jobs"));
        assert_eq!(
            kafka.properties,
            vec![("a".to_string(), "b=c".to_string()), ("x".to_string(), String::new())]
        );
        assert_eq!(w.retry_statuses, vec![500, 503]);
        assert_eq!(w.backoff.initial, Duration::from_millis(250));
        assert_eq!(w.backoff.max, Duration::from_secs(60));
        assert_eq!((w.max_attempts, w.max_payload_bytes), (3, 10));
        assert_eq!(timeout, Duration::from_secs(5));
        assert_eq!(kafka.linger, faas_queue::kafka::WORKER_LINGER, "the worker's default");
        assert!(matches!(records(&a, &kafka), Records::Memory));
        let a = Args { activations: Some(Activations::Kafka), activations_topic: None, ..a };
        assert!(matches!(records(&a, &kafka), Records::Kafka(t) if t == "jobs-activations"));
        assert_eq!(a.listen, None);
        assert!(!a.no_create_topics, "topics are created by default");
        let a =
            Args::try_parse_from(["w", "--brokers", "b", "--gateway", "g", "--no-create-topics"]);
        assert!(a.unwrap().no_create_topics);
        let a = Args::try_parse_from(["w", "--brokers", "b", "--gateway", "g", "--linger", "0ms"]);
        assert_eq!(config(&a.unwrap()).0.linger, Duration::ZERO);
        let a =
            Args::try_parse_from(["w", "--brokers", "b", "--gateway", "g", "--listen", "[::1]:81"]);
        assert_eq!(a.unwrap().listen, Some("[::1]:81".parse().unwrap()));
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let stats = faas_queue::WorkerStats::default();
        stats.succeeded.store(3, std::sync::atomic::Ordering::Relaxed);
        let text = status::metrics(&stats, false);
        assert!(text.contains("# TYPE faas_queue_worker_succeeded_total counter\n"), "{text}");
        assert!(text.contains("\nfaas_queue_worker_succeeded_total 3\n"), "{text}");
        assert!(text.contains("\nfaas_queue_worker_nacked_total 0\n"), "{text}");
        assert!(text.ends_with("\nfaas_queue_worker_healthy 0\n"), "{text}");
        // Every sample line is a name and a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.split_once(' ').expect(line);
            assert!(
                name.starts_with("faas_queue_worker_") && value.parse::<u64>().is_ok(),
                "{line}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let base = ["faas-queue-worker", "--brokers", "b:9092", "--gateway", "http://g"];
        for bad in [
            &["--max-attempts", "0"][..],
            &["--max-in-flight", "-1"],
            &["--kafka-property", "novalue"],
            &["--retry-statuses", "500,abc"],
            &["--backoff", "soon"],
            &["--linger", "later"],
            &["--linger", "2s"],
            &["--listen", "8081"],
            &["--activations", "disk"],
            &["--bogus", "1"],
            &["stray"],
            &["--topic"],
        ] {
            let args = base.iter().chain(bad);
            assert!(Args::try_parse_from(args).is_err(), "{bad:?}");
        }
        if std::env::var_os("FAAS_QUEUE_BROKERS").is_none() {
            assert!(Args::try_parse_from(["faas-queue-worker", "--gateway", "http://g"]).is_err());
        }
    }
}

//! The gateway benchmark's subject: the full default gateway (tracing span, body limit,
//! routing, metrics, call-id headers) invoking an in-memory function `ok` that answers `ok`,
//! synchronously at `/function/ok` and asynchronously at `/async-function/ok`.
//!
//! `bench-gateway-memory [ADDR] [STATS_FILE]` (default `127.0.0.1:18082`). Served with
//! `faas_http::serve_with` and `ServeConfig::threads` set to the number of CPUs, from a
//! single-threaded runtime: one runtime per CPU. The async path is the gateway's default
//! (an in-memory queue of 100 000 items, an in-process worker on the main runtime, the
//! default activation store of 100 000 records), built here so that its counters can be
//! read: with `STATS_FILE`, a line `<unix ms> <finished> <received>` is appended to it
//! every 20 ms. With `FAAS_BENCH_AUTH=1` basic auth is on (as `faas up` has it by default:
//! `/system/*` protected, `/function/*` open). With `FAAS_BENCH_QUEUE_DIR=DIR` the async
//! path is `faas up`'s default instead: the durable queue (`faas_queue::StoredQueue`) in
//! an append-only log in DIR (`faas_queue::log_store`, as `faas up` has it), every accepted
//! call on disk before its 202 (group commit); `FAAS_BENCH_QUEUE_STORE=redb` puts it in a
//! redb file instead (`faas_queue::redb_store`, where it was before it had its own log).
//! With `FAAS_BENCH_QUEUE_KAFKA=kafka://HOST:PORT[/TOPIC]` it is `faas up --queue` with that
//! URL (`faas_http::queue::AsyncQueue::start`: the Kafka publisher, the Kafka activation
//! store and an in-process worker in group `faas-queue-worker`; missing topics created).
//! `FAAS_BENCH_QUEUE_KAFKA=mock` does the same on librdkafka's mock cluster, started in
//! this process with the topics (8, 8 and 1 partitions).
//! See `benches/wrk/gateway.sh`, `benches/wrk/async.sh` and `benches/kafka/tansu-async.sh`.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faas_core::prelude::*;
use faas_core::queue::{ActivationStore, QueueConsumer, QueuePublisher};
use faas_core::Backend;
use faas_http::{Gateway, GatewayConfig};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18082".into());
    let stats_file = args.next();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    rt.block_on(async move {
        // `FAAS_BENCH_FUNCTIONS=N`: N more functions `f0` .. `f{N-1}` (the same handler),
        // for `benches/wrk/many.sh`; the node's replica cap raised to hold them all (an
        // in-memory replica is a handler, not a process).
        let many: usize =
            std::env::var("FAAS_BENCH_FUNCTIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
        let backend = if many == 0 {
            faas_benches::memory_ok("ok").await.map_err(|e| std::io::Error::other(e.to_string()))?
        } else {
            let cap = u32::try_from(many + 1).unwrap_or(u32::MAX);
            let limits = faas_core::ReplicaLimits::detect().with_per_node(cap);
            let backend = faas_core::MemoryInvoker::builder().replica_limits(limits).build();
            backend.register(
                "ok",
                faas_core::handler_fn(|_r: faas_core::Request, _c: faas_core::Context| async {
                    Ok::<_, faas_core::Error>("ok")
                }),
            );
            for name in std::iter::once("ok".to_string()).chain((0..many).map(|i| format!("f{i}")))
            {
                backend
                    .deploy(faas_core::FunctionSpec::new(name, "ok"))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            backend
        };
        let invoker: Arc<dyn Backend> = Arc::new(backend);
        let mut config = GatewayConfig::default();
        if std::env::var("FAAS_BENCH_AUTH").is_ok_and(|v| v == "1") {
            config.auth = Some(faas_http::BasicAuth::new("admin", "bench-password"));
        }
        // What `GatewayBuilder::build` makes by default (or `faas up`, durable), with the
        // worker's counters kept.
        let (publisher, consumer, store): (
            Arc<dyn QueuePublisher>,
            Arc<dyn QueueConsumer>,
            Arc<dyn ActivationStore>,
        ) = match std::env::var_os("FAAS_BENCH_QUEUE_DIR") {
            Some(dir) => {
                let dir: &std::path::Path = dir.as_ref();
                let state: Arc<dyn faas_core::state::StateStore> =
                    match std::env::var("FAAS_BENCH_QUEUE_STORE").as_deref() {
                        // The queue in the redb file, as before it had its own log: the
                        // baseline of `benches/wrk/async.sh`'s durable rows.
                        Ok("redb") => Arc::new(
                            faas_queue::redb_store::RedbStore::open_dir(dir)
                                .map_err(|e| std::io::Error::other(e.to_string()))?,
                        ),
                        _ => Arc::new(
                            faas_queue::log_store::LogStore::open(dir)
                                .map_err(|e| std::io::Error::other(e.to_string()))?,
                        ),
                    };
                let queue = faas_queue::StoredQueue::open(
                    state,
                    config.async_queue,
                    faas_queue::stored::DEFAULT_RECORDS,
                )
                .map_err(|e| std::io::Error::other(e.to_string()))?;
                eprintln!("durable queue in {}", dir.to_string_lossy());
                (
                    Arc::new(queue.publisher()),
                    Arc::new(queue.consumer()),
                    Arc::new(queue.activations()),
                )
            }
            None => {
                let queue = faas_queue::MemoryQueue::new(100_000);
                let store = Arc::new(faas_queue::MemoryActivationStore::default());
                let publisher =
                    faas_queue::TrackedPublisher::new(Arc::new(queue.publisher()), store.clone());
                (Arc::new(publisher), Arc::new(queue.consumer()), store)
            }
        };
        // Kept on this thread (it is not `Send`) for as long as the gateway serves.
        let mut _mock = None;
        if let Some(url) = std::env::var_os("FAAS_BENCH_QUEUE_KAFKA") {
            let io = |e: faas_core::Error| std::io::Error::other(e.to_string());
            let mut url = url.to_string_lossy().into_owned();
            if url == "mock" {
                let mock = faas_queue::kafka::MockKafka::new(1).map_err(io)?;
                for (topic, partitions) in [
                    ("faas-async", 8),
                    ("faas-async-activations", 8),
                    ("faas-async-dead-letters", 1),
                ] {
                    mock.create_topic(topic, partitions).map_err(io)?;
                }
                url = format!("kafka://{}", mock.bootstrap_servers());
                _mock = Some(mock);
            }
            // `faas up --queue kafka://...`: its queue, store and in-process worker.
            let url: faas_http::queue::QueueUrl = url.parse().map_err(io)?;
            let queue = faas_http::queue::AsyncQueue::start(
                &url,
                &faas_http::queue::QueueOptions::default(),
                invoker.clone(),
                &config,
            )
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .ok_or_else(|| std::io::Error::other("FAAS_BENCH_QUEUE_KAFKA is not a Kafka URL"))?;
            eprintln!("queue: {}", queue.description());
            if let (Some(path), Some(stats)) = (&stats_file, queue.worker_stats()) {
                write_stats(path, stats)?;
            }
            let gateway = queue.apply(Gateway::builder(invoker).config(config)).build();
            let served = serve(&addr, gateway, cpus).await;
            drop(queue);
            return served;
        }
        let worker = faas_queue::Worker::new(
            invoker.clone(),
            consumer,
            store.clone(),
            faas_queue::WorkerConfig {
                max_payload_bytes: config.max_body_bytes,
                max_response_bytes: config.max_async_result_bytes,
                ..Default::default()
            },
        )
        .with_dead_letters(Arc::new(faas_queue::MemoryDeadLetters::default()))
        .spawn();
        if let Some(path) = &stats_file {
            write_stats(path, worker.stats().clone())?;
        }
        let gateway =
            Gateway::builder(invoker).config(config).queue(publisher).activations(store).build();
        let served = serve(&addr, gateway, cpus).await;
        drop(worker);
        served
    })
}

/// Appends a line `<unix ms> <finished> <received>` of the worker's counters to `path`
/// every 20 ms, from a thread of its own.
fn write_stats(path: &str, stats: Arc<faas_queue::WorkerStats>) -> std::io::Result<()> {
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    std::thread::spawn(move || loop {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let line =
            format!("{ms} {} {}\n", stats.finished(), stats.received.load(Ordering::Relaxed));
        if out.write_all(line.as_bytes()).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    Ok(())
}

/// Serves `gateway` on `addr` with one runtime per CPU, until the process is stopped.
async fn serve(addr: &str, gateway: Gateway, cpus: usize) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("gateway on memory listening on http://{addr}/function/ok and /async-function/ok");
    let config = faas_http::ServeConfig::default().threads(cpus);
    faas_http::serve_with(listener, gateway.service(), std::future::pending(), config).await
}

//! faas-queue: publish throughput and end-to-end async invocations per second, for the
//! in-memory queue and Kafka (librdkafka's mock cluster on loopback), against the sync
//! path (the same in-memory function invoked directly through `Invoke::invoke`).
//!
//! Run: `cargo bench -p faas-benches --bench queue -- --warm-up-time 1 --measurement-time 3`.
//! Figures: `BENCHMARKS.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use faas_core::prelude::*;
use faas_core::queue::{QueuePublisher, QueuedInvocation};
use faas_core::{handler_fn, Context, Error, FunctionSpec, Invocation, MemoryInvoker, Request};
use faas_queue::kafka::{KafkaConfig, KafkaConsumer, KafkaPublisher, MockKafka};
use faas_queue::{MemoryActivationStore, MemoryQueue, TrackedPublisher, Worker, WorkerConfig};
use futures::StreamExt;

/// Items per measured batch.
const BATCH: usize = 10_000;
/// Concurrency of the sync baseline (the worker's default `max_in_flight`).
const SYNC_CONCURRENCY: usize = 256;

fn item(i: usize) -> QueuedInvocation {
    faas_benches::queued("hello", i)
}

fn items(n: usize) -> Vec<QueuedInvocation> {
    (0..n).map(item).collect()
}

fn invoker(rt: &tokio::runtime::Runtime) -> Arc<MemoryInvoker> {
    let memory = MemoryInvoker::builder().queue_limit(1 << 20).build();
    memory.register(
        "hello",
        handler_fn(|_req: Request, _ctx: Context| async move { Ok::<_, Error>("hello") }),
    );
    rt.block_on(memory.deploy(FunctionSpec::new("hello", "hello"))).unwrap();
    Arc::new(memory)
}

fn worker_config() -> WorkerConfig {
    WorkerConfig { function_concurrency: 256, max_in_flight: 256, ..WorkerConfig::default() }
}

fn bench(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // --- publish throughput -------------------------------------------------------------
    let mut g = c.benchmark_group("queue_publish");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("memory_publish", |b| {
        b.iter_batched(
            || (MemoryQueue::new(BATCH), items(BATCH)),
            |(q, items)| {
                let p = q.publisher();
                rt.block_on(async {
                    for it in items {
                        p.publish(it).await.unwrap();
                    }
                });
                q
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("memory_publish_tracked", |b| {
        b.iter_batched(
            || (MemoryQueue::new(BATCH), items(BATCH)),
            |(q, items)| {
                let store = Arc::new(MemoryActivationStore::new(BATCH));
                let p = TrackedPublisher::new(Arc::new(q.publisher()), store.clone());
                rt.block_on(async {
                    for it in items {
                        p.publish(it).await.unwrap();
                    }
                });
                (q, store)
            },
            BatchSize::PerIteration,
        )
    });

    let kafka = MockKafka::new(1).unwrap();
    let config = KafkaConfig::new(kafka.bootstrap_servers());
    kafka.create_topic(&config.topic, 4).unwrap();
    kafka.create_topic(&config.dead_letter_topic, 1).unwrap();
    let publisher = rt.block_on(async { KafkaPublisher::new(&config).unwrap() });
    g.bench_function("kafka_mock_publish_batch", |b| {
        b.iter_batched(
            || items(BATCH),
            |items| {
                rt.block_on(async {
                    let r = publisher.publish_batch(items).await;
                    assert!(r.iter().all(Result::is_ok));
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("kafka_mock_publish_one_by_one_x256", |b| {
        b.iter_batched(
            || items(BATCH),
            |items| {
                rt.block_on(async {
                    futures::stream::iter(items)
                        .map(|it| publisher.publish(it))
                        .buffer_unordered(256)
                        .for_each(|r| async move { r.unwrap() })
                        .await;
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // --- end to end: sync path vs async through each queue ------------------------------
    let memory = invoker(&rt);
    let mut g = c.benchmark_group("queue_e2e");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("sync_invoke_x256", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let memory = memory.clone();
                total += rt.block_on(async move {
                    let t = Instant::now();
                    futures::stream::iter(0..BATCH)
                        .map(|i| {
                            let m = memory.clone();
                            async move {
                                let r = m.invoke(Invocation::post("hello", format!("p {i}"))).await;
                                r.unwrap().into_body().collect_bytes().await.unwrap();
                            }
                        })
                        .buffer_unordered(SYNC_CONCURRENCY)
                        .for_each(|()| async {})
                        .await;
                    t.elapsed()
                });
            }
            total
        })
    });

    // In-memory queue + in-process worker.
    {
        let q = MemoryQueue::new(1 << 20);
        // The gateway's default store (100 000 records, oldest evicted): a store big enough
        // for every iteration's records grew across iterations and slowed later samples.
        let store = Arc::new(MemoryActivationStore::default());
        let p = TrackedPublisher::new(Arc::new(q.publisher()), store.clone());
        let worker = rt.block_on(async {
            Worker::new(memory.clone(), Arc::new(q.consumer()), store.clone(), worker_config())
                .spawn()
        });
        let stats = worker.stats().clone();
        let mut published = 0u64;
        g.bench_function("async_memory_queue", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = items(BATCH);
                    published += BATCH as u64;
                    let target = published;
                    total += rt.block_on(async {
                        let t = Instant::now();
                        let r = p.publish_batch(batch).await;
                        debug_assert!(r.iter().all(Result::is_ok));
                        stats.wait_finished(target).await;
                        t.elapsed()
                    });
                }
                total
            })
        });
        rt.block_on(worker.shutdown()).unwrap();
    }

    // Kafka (mock cluster) + worker in the consumer group.
    {
        let store = Arc::new(MemoryActivationStore::default());
        let mut config = config.clone();
        config.topic = "faas-async-e2e".into();
        kafka.create_topic(&config.topic, 4).unwrap();
        let publisher = rt.block_on(async { KafkaPublisher::new(&config).unwrap() });
        let p = TrackedPublisher::new(Arc::new(publisher), store.clone());
        let consumer = rt.block_on(async { Arc::new(KafkaConsumer::new(&config).unwrap()) });
        let worker = rt.block_on(async {
            Worker::new(memory.clone(), consumer, store.clone(), worker_config()).spawn()
        });
        let stats = worker.stats().clone();
        // Wait for the group join (the mock's initial rebalance delay is 3 s).
        rt.block_on(async {
            p.publish(item(0)).await.unwrap();
            tokio::time::timeout(Duration::from_secs(60), stats.wait_finished(1)).await.unwrap();
        });
        let mut published = 1u64;
        g.bench_function("async_kafka_mock", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = items(BATCH);
                    published += BATCH as u64;
                    let target = published;
                    total += rt.block_on(async {
                        let t = Instant::now();
                        let r = p.publish_batch(batch).await;
                        assert!(r.iter().all(Result::is_ok));
                        tokio::time::timeout(Duration::from_secs(120), stats.wait_finished(target))
                            .await
                            .expect("kafka e2e batch finished");
                        t.elapsed()
                    });
                }
                total
            })
        });
        // Leave the group while the cluster is up.
        rt.block_on(worker.shutdown()).unwrap();
    }
    g.finish();
    drop(kafka);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);

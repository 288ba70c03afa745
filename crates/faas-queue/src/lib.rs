//! # faas-queue
//!
//! Asynchronous invocation for faas-rs (OpenFaaS `/async-function`, OpenWhisk non-blocking
//! invokes), with retries, dead letters and a record of what happened to every call.
//!
//! - [`memory::MemoryQueue`]: a bounded in-memory queue with backpressure (a full queue
//!   answers [`faas_core::Error::Overloaded`]); the default for tests and embedded gateways.
//! - `kafka` (feature `kafka`, on by default): the same contract over Kafka with an
//!   idempotent producer, a consumer group, and offsets committed only once an invocation
//!   has finished.
//! - [`worker::Worker`]: invokes what a queue delivers through any
//!   [`Invoker`](faas_core::Invoker), with per-function concurrency, retries with
//!   exponential backoff and jitter (honouring `Retry-After`), dead letters, callbacks, and
//!   an [`AsyncActivation`] record per call id in an [`ActivationStore`].
//! - [`store::MemoryActivationStore`]: those records in memory.
//! - `kafka_store::KafkaActivationStore` (feature `kafka`): those records on a compacted
//!   Kafka topic, so a gateway answers for calls a worker in another process ran.
//! - [`TrackedPublisher`]: a publisher that also writes the `queued` record, which is what a
//!   gateway's `/async-function` should publish through.
//!
//! The contracts (`QueuePublisher`, `QueueConsumer`, `ActivationStore`, `DeadLetterSink`,
//! `QueuedInvocation`, `AsyncActivation`) live in [`faas_core::queue`].
//!
//! ## Wiring a gateway
//!
//! ```
//! use std::sync::Arc;
//! use faas_core::queue::{ActivationStore, QueuePublisher};
//! use faas_queue::memory::{MemoryDeadLetters, MemoryQueue};
//! use faas_queue::store::MemoryActivationStore;
//! use faas_queue::worker::{Worker, WorkerConfig};
//! use faas_queue::TrackedPublisher;
//!
//! # async fn wire(invoker: Arc<dyn faas_core::Invoker>) {
//! let queue = MemoryQueue::new(100_000);
//! let store = Arc::new(MemoryActivationStore::default());
//! // The gateway publishes through this (202 + X-Call-Id, or 429 when the queue is full)
//! // and answers `GET` of a call id from `store`.
//! let publisher: Arc<dyn QueuePublisher> =
//!     Arc::new(TrackedPublisher::new(Arc::new(queue.publisher()), store.clone()));
//! // The worker runs in-process (or as its own binary on Kafka).
//! let worker = Worker::new(invoker, Arc::new(queue.consumer()), store.clone(), WorkerConfig::default())
//!     .with_dead_letters(Arc::new(MemoryDeadLetters::default()))
//!     .spawn();
//! # let _ = (publisher, worker);
//! # }
//! ```

pub mod callback;
pub mod gateway;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
pub mod kafka_store;
pub mod memory;
pub mod store;
pub mod worker;

use std::sync::Arc;

use async_trait::async_trait;
use faas_core::queue::{ActivationStore, AsyncActivation, QueuePublisher, QueuedInvocation};
use faas_core::Result;

pub use faas_core::queue::{
    AsyncState, CallbackOutcome, DeadLetter, DeadLetterSink, QueueConsumer,
};
pub use memory::{MemoryConsumer, MemoryDeadLetters, MemoryPublisher, MemoryQueue};
pub use store::MemoryActivationStore;
pub use worker::{Backoff, CallbackPolicy, Worker, WorkerConfig, WorkerHandle, WorkerStats};

/// A publisher that records each accepted item as `queued` in an [`ActivationStore`], so
/// that its call id can be looked up at once. An item the queue refuses (full, closed)
/// gets no record.
#[derive(Clone)]
pub struct TrackedPublisher {
    inner: Arc<dyn QueuePublisher>,
    store: Arc<dyn ActivationStore>,
}

impl std::fmt::Debug for TrackedPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrackedPublisher")
    }
}

impl TrackedPublisher {
    /// Publishes to `inner`, recording in `store`.
    pub fn new(inner: Arc<dyn QueuePublisher>, store: Arc<dyn ActivationStore>) -> Self {
        TrackedPublisher { inner, store }
    }
}

#[async_trait]
impl QueuePublisher for TrackedPublisher {
    async fn publish(&self, item: QueuedInvocation) -> Result<()> {
        let record = AsyncActivation::queued(&item);
        self.inner.publish(item).await?;
        // A worker may have written `running` already; a `queued` put never overwrites.
        self.store.put(record).await
    }

    /// Publishes the batch, then writes the `queued` records of the accepted items in one
    /// [`ActivationStore::put_batch`].
    async fn publish_batch(&self, items: Vec<QueuedInvocation>) -> Vec<Result<()>> {
        let mut records: Vec<_> = items.iter().map(AsyncActivation::queued).collect();
        let mut out = self.inner.publish_batch(items).await;
        // Usually all were accepted: then the records go as they are.
        let mut accepted = out.iter().map(Result::is_ok);
        records.retain(|_| accepted.next().unwrap_or(false));
        let accepted = records;
        let mut written = self.store.put_batch(accepted).await.into_iter();
        for r in out.iter_mut().filter(|r| r.is_ok()) {
            // A store that answers fewer results than records wrote none of the rest.
            *r = written
                .next()
                .unwrap_or_else(|| Err(faas_core::Error::internal("activation store: no result")));
        }
        out
    }
}

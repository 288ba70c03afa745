//! # faas-queue
//!
//! Asynchronous invocation for faas-rs (OpenFaaS `/async-function`, OpenWhisk non-blocking
//! invokes), with retries, dead letters and a record of what happened to every call.
//!
//! - [`memory::MemoryQueue`]: a bounded in-memory queue with backpressure (a full queue
//!   answers [`faas_core::Error::Overloaded`]); the default for tests and embedded gateways.
//! - `kafka` (feature `kafka`): the same contract over Kafka with an
//!   idempotent producer, a consumer group, and offsets committed only once an invocation
//!   has finished.
//! - [`worker::Worker`]: invokes what a queue delivers through any
//!   [`Invoke`](faas_core::Invoke) (all it needs of a backend), with per-function concurrency, retries with
//!   exponential backoff and jitter (honouring `Retry-After`), dead letters, callbacks, and
//!   an [`AsyncActivation`](faas_core::queue::AsyncActivation) record per call id in an
//!   [`ActivationStore`].
//! - [`store::MemoryActivationStore`]: those records in memory.
//! - `kafka_store::KafkaActivationStore` (feature `kafka`): those records on a compacted
//!   Kafka topic, so a gateway answers for calls a worker in another process ran.
//! - `kafka_feed::KafkaFeed` (feature `kafka`): a Kafka topic as an OpenWhisk feed, an
//!   [`EventSource`](faas_core::EventSource) firing a trigger with batches of messages,
//!   offsets committed once the trigger fired.
//! - [`stored::StoredQueue`]: the in-memory queue and records kept in a
//!   [`faas_core::state::StateStore`] as well, so that accepted calls survive a restart;
//!   over `log_store::LogStore` (feature `durable`), an append-only log with group
//!   commit, it is the default queue of `faas up`, whose other state (functions, secrets)
//!   is in `redb_store::RedbStore`, an embedded database file.
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
//! # async fn wire(invoker: Arc<dyn faas_core::Invoke>) {
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
pub mod codec;
pub mod gateway;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
pub mod kafka_feed;
#[cfg(feature = "kafka")]
mod kafka_log_check;
#[cfg(feature = "kafka")]
pub mod kafka_store;
#[cfg(feature = "durable")]
pub mod log_store;
pub mod memory;
#[cfg(feature = "durable")]
pub mod redb_store;
pub mod store;
pub mod stored;
pub mod worker;
#[cfg(feature = "durable")]
mod writer_thread;

use std::sync::Arc;

use async_trait::async_trait;
use faas_core::activation::epoch_millis;
use faas_core::queue::{ActivationStore, QueuePublisher, QueuedInvocation};
use faas_core::{InvocationId, Result};

pub use faas_core::queue::{
    AsyncState, CallbackOutcome, DeadLetter, DeadLetterSink, QueueConsumer,
};
pub use memory::{MemoryConsumer, MemoryDeadLetters, MemoryPublisher, MemoryQueue, QueueLimits};
pub use store::MemoryActivationStore;
pub use stored::{StoredActivations, StoredPublisher, StoredQueue};
pub use worker::{Backoff, CallbackPolicy, Worker, WorkerConfig, WorkerHandle, WorkerStats};

/// A publisher that records each item as `queued` in an [`ActivationStore`] before it
/// publishes it, so that its call id can be looked up at once (the worker finds it too).
/// An item the queue refuses (full, closed) is recorded as `failed` with the refusal as its
/// error; an item whose record cannot be written is not published (the store's error is
/// the answer).
///
/// [`TrackedPublisher::overlapped`] writes the record and publishes the item at the same
/// time instead, for a queue and a store that each wait for a remote acknowledgement
/// (Kafka): the caller then waits for one round trip, not two.
#[derive(Clone)]
pub struct TrackedPublisher {
    inner: Arc<dyn QueuePublisher>,
    store: Arc<dyn ActivationStore>,
    overlap: bool,
}

impl std::fmt::Debug for TrackedPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrackedPublisher")
    }
}

impl TrackedPublisher {
    /// Publishes to `inner`, recording in `store`.
    pub fn new(inner: Arc<dyn QueuePublisher>, store: Arc<dyn ActivationStore>) -> Self {
        TrackedPublisher { inner, store, overlap: false }
    }

    /// Publishes to `inner`, recording in `store` at the same time: each item's `queued`
    /// record is written while the item is published, and the answer is the publish's.
    /// An item published whose record could not be written is accepted all the same (the
    /// worker writes its record when it runs it; the failure is logged); an item the queue
    /// refuses has its record turned `failed`, as with [`TrackedPublisher::new`]. Records
    /// only move forward in the stores this is meant for ([`ActivationStore::put`] never
    /// writes `queued` over a later state), so a worker that gets to the call first is not
    /// undone by the late `queued` record.
    pub fn overlapped(inner: Arc<dyn QueuePublisher>, store: Arc<dyn ActivationStore>) -> Self {
        TrackedPublisher { inner, store, overlap: true }
    }

    /// [`QueuePublisher::publish_batch`] with the records written at the same time.
    async fn publish_overlapped(&self, items: Vec<QueuedInvocation>) -> Vec<Result<()>> {
        let records: Vec<_> = items.iter().map(faas_core::queue::AsyncActivation::queued).collect();
        let ids: Vec<InvocationId> = items.iter().map(|i| i.call_id.clone()).collect();
        let (written, published) =
            tokio::join!(self.store.put_batch(records), self.inner.publish_batch(items));
        for (id, w) in ids.iter().zip(&written) {
            if let Err(e) = w {
                tracing::warn!(call_id = %id.as_str(), error = %e,
                    "the queued record was not written (the worker writes the call's record)");
            }
        }
        let refusals =
            ids.iter().zip(&published).filter_map(|(id, r)| Some((id, r.as_ref().err()?)));
        self.refused(refusals.collect()).await;
        published
    }

    /// Turns the `queued` records of refused items into `failed` ones. The store's writes
    /// run on tasks of their own, and the refusal waits for them at most
    /// [`REFUSAL_RECORD_WAIT`]: a queue that refuses because it cannot reach its brokers
    /// usually has a store that cannot either, and waiting for that write too would hold
    /// the caller's answer as long again (the store applies the record locally first).
    async fn refused(&self, refusals: Vec<(&InvocationId, &faas_core::Error)>) {
        let mut writes = Vec::new();
        for (call_id, error) in refusals {
            let Ok(Some(mut record)) = self.store.get(call_id).await else { continue };
            if record.state != AsyncState::Queued {
                continue;
            }
            record.state = AsyncState::Failed;
            record.error = Some(format!("refused by the queue: {error}"));
            record.status = Some(error.http_status().as_u16());
            record.updated_at = epoch_millis(std::time::SystemTime::now());
            let store = self.store.clone();
            writes.push(tokio::spawn(async move {
                let id = record.call_id.clone();
                if let Err(e) = store.put(record).await {
                    tracing::warn!(call_id = %id.as_str(), error = %e, "activation store write failed");
                }
            }));
        }
        if !writes.is_empty() {
            let _ =
                tokio::time::timeout(REFUSAL_RECORD_WAIT, futures::future::join_all(writes)).await;
        }
    }
}

/// How long a refusal waits for the `failed` records of the refused items to be written.
pub const REFUSAL_RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[async_trait]
impl QueuePublisher for TrackedPublisher {
    async fn publish(&self, item: QueuedInvocation) -> Result<()> {
        if self.overlap {
            let mut out = self.publish_overlapped(vec![item]).await;
            return out
                .pop()
                .unwrap_or_else(|| Err(faas_core::Error::internal("queue publisher: no result")));
        }
        let written = self.store.put_queued(std::slice::from_ref(&item)).await;
        if let Some(Err(e)) = written.into_iter().next() {
            return Err(e);
        }
        let call_id = item.call_id.clone();
        let published = self.inner.publish(item).await;
        if let Err(e) = &published {
            self.refused(vec![(&call_id, e)]).await;
        }
        published
    }

    /// Writes the `queued` records of the batch with [`ActivationStore::put_queued`], then
    /// publishes the items recorded: in chunks of [`TRACKED_CHUNK`] items, so that no
    /// temporary is large (large allocations are slow paths for most allocators).
    fn health(&self) -> Result<()> {
        self.inner.health()
    }

    async fn depth(&self) -> Result<faas_core::queue::QueueDepth> {
        self.inner.depth().await
    }

    async fn publish_batch(&self, mut items: Vec<QueuedInvocation>) -> Vec<Result<()>> {
        if self.overlap {
            return self.publish_overlapped(items).await;
        }
        if items.len() <= TRACKED_CHUNK {
            return self.publish_chunk(items).await;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut rest = items.drain(..);
        loop {
            let chunk: Vec<_> = rest.by_ref().take(TRACKED_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            out.extend(self.publish_chunk(chunk).await);
        }
        out
    }
}

/// Items a [`TrackedPublisher`] records and publishes at once.
pub const TRACKED_CHUNK: usize = 256;

impl TrackedPublisher {
    /// [`QueuePublisher::publish_batch`] of one chunk.
    async fn publish_chunk(&self, mut items: Vec<QueuedInvocation>) -> Vec<Result<()>> {
        let written = self.store.put_queued(&items).await;
        let all_written = written.len() == items.len() && written.iter().all(Result::is_ok);
        let ids: Vec<InvocationId> = items.iter().map(|i| i.call_id.clone()).collect();
        if all_written {
            // The usual case: every item goes, in one batch.
            let out = self.inner.publish_batch(items).await;
            let refusals = ids.iter().zip(&out).filter_map(|(id, r)| Some((id, r.as_ref().err()?)));
            self.refused(refusals.collect()).await;
            return out;
        }
        // Only the recorded items are published; the others answer the store's error.
        let mut out: Vec<Result<()>> = Vec::with_capacity(items.len());
        let mut written = written.into_iter();
        let mut keep = Vec::with_capacity(items.len());
        for _ in 0..items.len() {
            let w = written
                .next()
                .unwrap_or_else(|| Err(faas_core::Error::internal("activation store: no result")));
            keep.push(w.is_ok());
            out.push(w);
        }
        let mut k = keep.iter();
        items.retain(|_| k.next().copied().unwrap_or(false));
        let mut published = self.inner.publish_batch(items).await.into_iter();
        for (i, r) in out.iter_mut().enumerate() {
            if keep[i] {
                *r = published.next().unwrap_or_else(|| {
                    Err(faas_core::Error::internal("queue publisher: no result"))
                });
            }
        }
        let refusals = (0..out.len())
            .filter(|&i| keep[i])
            .filter_map(|i| Some((&ids[i], out[i].as_ref().err()?)))
            .collect();
        self.refused(refusals).await;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faas_core::queue::AsyncActivation;
    use faas_core::Error;

    /// A queue that refuses everything, as one whose brokers are gone.
    struct Refusing;

    #[async_trait]
    impl QueuePublisher for Refusing {
        async fn publish(&self, _item: QueuedInvocation) -> Result<()> {
            Err(Error::unavailable("no broker reachable"))
        }
    }

    /// A store that keeps records in memory but never finishes writing a `failed` one, as a
    /// store on the same unreachable brokers.
    #[derive(Default)]
    struct Stalling(MemoryActivationStore);

    #[async_trait]
    impl ActivationStore for Stalling {
        async fn put(&self, record: AsyncActivation) -> Result<()> {
            let failed = record.state == AsyncState::Failed;
            self.0.put(record).await?;
            if failed {
                std::future::pending::<()>().await;
            }
            Ok(())
        }

        async fn get(&self, call_id: &InvocationId) -> Result<Option<AsyncActivation>> {
            self.0.get(call_id).await
        }
    }

    /// A refusal answers after the queue's own answer and at most [`REFUSAL_RECORD_WAIT`]
    /// more, whatever the store's write of the `failed` record does, in both modes; the
    /// record is `failed` in the store at once.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_does_not_wait_for_a_stalled_record_write() {
        for overlapped in [false, true] {
            let store = Arc::new(Stalling::default());
            let p = if overlapped {
                TrackedPublisher::overlapped(Arc::new(Refusing), store.clone())
            } else {
                TrackedPublisher::new(Arc::new(Refusing), store.clone())
            };
            let items: Vec<_> = (0..3).map(|_| memory::example_item()).collect();
            let started = tokio::time::Instant::now();
            let out = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                p.publish_batch(items.clone()),
            )
            .await
            .unwrap_or_else(|_| panic!("overlapped {overlapped}: no answer within 60 s"));
            assert!(out.iter().all(|r| matches!(r, Err(Error::Unavailable { .. }))), "{out:?}");
            let waited = started.elapsed();
            assert!(waited <= REFUSAL_RECORD_WAIT, "overlapped {overlapped}: {waited:?}");
            for item in &items {
                let rec = store.0.get_now(&item.call_id).expect("a record");
                assert_eq!(rec.state, AsyncState::Failed, "overlapped {overlapped}");
            }
        }
    }
}

//! The durable async queue: the bounded in-memory queue ([`MemoryQueue`]) and activation
//! records ([`MemoryActivationStore`]) kept in a [`StateStore`] as well, so that accepted
//! calls and their records survive a restart (or `kill -9`) of the gateway.
//!
//! - **Publish**: an item is counted against the queue's bounds (items, bytes, a function's
//!   share) first, then the item and its `queued` record are committed to the store, and
//!   only then is it waiting for a worker and answered `Ok` (the gateway's 202). Over an
//!   embedded store (`log_store::LogStore`, feature `durable`, as `faas up` has it) that
//!   commit is on disk, and concurrent publishes share one commit (group commit). An item the queue refuses gets
//!   a `failed` record in the same commit.
//! - **Deliver**: from memory, as the in-memory queue does (at least once).
//! - **Acknowledge**: removes the item from the store with the next commit
//!   ([`StateStore::apply`]). The worker's record of the outcome is written the same way
//!   and before it, so an acknowledgement on disk always has its record on disk. A crash
//!   before the acknowledgement reaches the disk delivers the item again after the
//!   restart; the worker skips it if its record says it is settled.
//! - **Restart**: [`StoredQueue::open`] loads the unacknowledged items, in publish order,
//!   and the records.
//!
//! Over a [`faas_core::state::MemoryStateStore`] the same code runs in tests, a restart
//! being a second [`StoredQueue::open`] over the same store.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use faas_core::activation::epoch_millis;
use faas_core::queue::{
    ActivationStore, AsyncActivation, AsyncState, ImmediateActivationStore, Progress, QueueDepth,
    QueuePublisher, QueuedInvocation, RecordUpdate,
};
use faas_core::state::{StateOp, StateStore};
use faas_core::{Error, InvocationId, Result};

use crate::memory::{Journal, MemoryConsumer, MemoryQueue, QueueLimits};
use crate::store::MemoryActivationStore;

/// The table of unacknowledged items: key the publish sequence number (8 bytes, big
/// endian, so that key order is publish order), value the item as [`crate::codec`] encodes it.
pub const QUEUE_TABLE: &str = "async-queue";
/// The table of activation records: key the call's `queued_at` (8 bytes, big endian) then
/// its call id, so that records are written near each other (at the end of the table) as
/// calls come in, rather than all over it as random call ids would; value the record as
/// [`crate::codec`] encodes it. An item waiting in [`QUEUE_TABLE`] needs no record here: at start it gets its
/// `queued` record from the item.
pub const ACTIVATIONS_TABLE: &str = "async-activations";

/// The key of `call_id`'s record, queued at `queued_at`, in [`ACTIVATIONS_TABLE`].
fn record_key(queued_at: u64, call_id: &InvocationId) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + call_id.as_str().len());
    key.extend_from_slice(&queued_at.to_be_bytes());
    key.extend_from_slice(call_id.as_str().as_bytes());
    key
}

/// Moves the queue's tables ([`QUEUE_TABLE`], [`ACTIVATIONS_TABLE`]) from `from` to `to`:
/// written to `to` first, then removed from `from`, so a crash in between leaves them in
/// both and the next move writes the same entries again. Returns the entries moved.
pub async fn move_tables(from: &dyn StateStore, to: &dyn StateStore) -> Result<usize> {
    let mut moved = 0;
    for table in [QUEUE_TABLE, ACTIVATIONS_TABLE] {
        let entries = from.scan(table)?;
        if entries.is_empty() {
            continue;
        }
        moved += entries.len();
        let deletes = entries.iter().map(|(k, _)| StateOp::delete(table, k.clone())).collect();
        to.commit(entries.into_iter().map(|(k, v)| StateOp::put(table, k, v)).collect()).await?;
        from.commit(deletes).await?;
    }
    Ok(moved)
}

/// The activation records a [`StoredQueue`] keeps by default (as
/// [`MemoryActivationStore::default`]).
pub const DEFAULT_RECORDS: usize = 100_000;

/// A durable queue with its activation records, over a [`StateStore`].
#[derive(Clone)]
pub struct StoredQueue {
    queue: MemoryQueue,
    activations: StoredActivations,
    store: Arc<dyn StateStore>,
    seq: Arc<AtomicU64>,
    restored: usize,
}

impl std::fmt::Debug for StoredQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredQueue")
            .field("store", &self.store.describe())
            .field("queue", &self.queue)
            .finish()
    }
}

/// Removes acknowledged items from the store.
struct StoreJournal(Arc<dyn StateStore>);

impl Journal for StoreJournal {
    fn acknowledged(&self, seq: u64) {
        self.0.apply(vec![StateOp::delete(QUEUE_TABLE, seq.to_be_bytes())]);
    }
}

impl StoredQueue {
    /// Opens the queue kept in `store`, within `limits`, keeping at most `records`
    /// activation records: the items not acknowledged before (a restart) wait again, in
    /// publish order, whatever the bounds. An item or record that cannot be decoded is
    /// logged and dropped from the store.
    pub fn open(store: Arc<dyn StateStore>, limits: QueueLimits, records: usize) -> Result<Self> {
        let activations = StoredActivations::open(store.clone(), records)?;
        let journal: Arc<dyn Journal> = Arc::new(StoreJournal(store.clone()));
        let queue = MemoryQueue::with_journal(limits, Some(journal));
        let mut next = 1u64;
        let mut restored = 0;
        let mut waiting = Vec::new();
        for (key, value) in store.scan(QUEUE_TABLE)? {
            let seq = <[u8; 8]>::try_from(key.as_slice()).map(u64::from_be_bytes);
            let item = crate::codec::decode_item(&value);
            match (seq, item) {
                (Ok(seq), Ok(item)) => {
                    next = next.max(seq.saturating_add(1));
                    waiting.push(item.clone());
                    queue.restore(item, seq);
                    restored += 1;
                }
                (seq, item) => {
                    tracing::warn!(
                        key_ok = seq.is_ok(),
                        error = ?item.err(),
                        "dropping an unreadable queued item"
                    );
                    store.apply(vec![StateOp::delete(QUEUE_TABLE, key)]);
                }
            }
        }
        // Records kept of them (`running`...) stay; the others are `queued`.
        activations.mem.put_queued_now(&waiting);
        Ok(StoredQueue { queue, activations, store, seq: Arc::new(AtomicU64::new(next)), restored })
    }

    /// Items that were waiting (not acknowledged) when the queue was opened.
    pub fn restored(&self) -> usize {
        self.restored
    }

    /// The publisher: writes each item and its `queued` record (no
    /// [`crate::TrackedPublisher`] needed).
    pub fn publisher(&self) -> StoredPublisher {
        StoredPublisher { queue: self.clone() }
    }

    /// A consumer.
    pub fn consumer(&self) -> MemoryConsumer {
        self.queue.consumer()
    }

    /// The activation records.
    pub fn activations(&self) -> StoredActivations {
        self.activations.clone()
    }

    /// The queue in memory (counts, bounds).
    pub fn queue(&self) -> &MemoryQueue {
        &self.queue
    }

    /// Refuses new items; what is waiting stays in the store for the next start.
    pub fn close(&self) {
        self.queue.close();
    }
}

/// Publishes to a [`StoredQueue`] (see the module's documentation).
#[derive(Clone, Debug)]
pub struct StoredPublisher {
    queue: StoredQueue,
}

#[async_trait]
impl QueuePublisher for StoredPublisher {
    async fn depth(&self) -> Result<QueueDepth> {
        Ok(self.queue.queue.depth())
    }

    async fn publish(&self, item: QueuedInvocation) -> Result<()> {
        let mut r = self.publish_batch(vec![item]).await;
        r.pop().unwrap_or_else(|| Err(Error::internal("queue publisher: no result")))
    }

    async fn publish_batch(&self, items: Vec<QueuedInvocation>) -> Vec<Result<()>> {
        let q = &self.queue;
        let mut results = Vec::with_capacity(items.len());
        let mut accepted = Vec::with_capacity(items.len());
        let mut room = Vec::with_capacity(items.len());
        let mut ops = Vec::with_capacity(2 * items.len());
        let mut refused = Vec::new();
        // Ids seen in this batch: a batch of one (an HTTP call) needs no set.
        let many = items.len() > 1;
        let mut ids = HashSet::new();
        for item in items {
            // A record under this id already (or earlier in this batch): storing the call
            // would overwrite it, and a settled one would make the worker skip this call
            // after a restart. The gateway gives a reused `X-Call-Id` a new id first; this
            // catches two calls racing with the same new one. No record is written: the
            // existing one stays as it is.
            if q.activations.mem.progress_now(&item.call_id).is_some()
                || (many && !ids.insert(item.call_id.clone()))
            {
                results.push(Err(Error::AlreadyExists {
                    kind: "call with this X-Call-Id",
                    name: item.call_id.as_str().to_string(),
                }));
                continue;
            }
            let reserved = q.queue.reserve(&item).and_then(|size| {
                let value = crate::codec::encode_item(&item).inspect_err(|_| {
                    q.queue.unreserve(&item, size);
                })?;
                Ok((size, value))
            });
            match reserved {
                Ok((size, value)) => {
                    let seq = q.seq.fetch_add(1, Ordering::Relaxed);
                    ops.push(StateOp::put(QUEUE_TABLE, seq.to_be_bytes(), value));
                    room.push((size, seq));
                    accepted.push(item);
                    results.push(Ok(()));
                }
                Err(e) => {
                    q.activations.refused(&item, &format!("refused by the queue: {e}"), &e);
                    refused.push(item.call_id);
                    results.push(Err(e));
                }
            }
        }
        q.activations.mem.put_queued_now(&accepted);
        q.activations.count_new(accepted.len());
        // The accepted items need no record written (see `ACTIVATIONS_TABLE`); the refused
        // ones get their `failed` record.
        ops.extend(refused.iter().filter_map(|id| q.activations.record_op(id)));
        match q.store.commit(ops).await {
            Ok(()) => {
                let items = accepted.into_iter().zip(room).map(|(i, (s, n))| (i, s, n)).collect();
                q.queue.push_reserved(items);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the async queue could not write to its store");
                for (item, (size, _)) in accepted.iter().zip(room) {
                    q.queue.unreserve(item, size);
                    q.activations.refused(item, &format!("not written to the store: {e}"), &e);
                }
                for r in &mut results {
                    if r.is_ok() {
                        *r = Err(e.clone());
                    }
                }
            }
        }
        results
    }
}

/// Activation records in memory ([`MemoryActivationStore`], which answers every read)
/// and in a [`StateStore`] (which keeps them across restarts, and gives them back to
/// memory at start). The store holds what memory holds: records evicted from memory are
/// removed from it now and then, so it stays within about the same bound.
#[derive(Clone)]
pub struct StoredActivations {
    mem: MemoryActivationStore,
    store: Arc<dyn StateStore>,
    capacity: usize,
    /// Records added since the last pruning of the store.
    added: Arc<AtomicUsize>,
    pruning: Arc<AtomicBool>,
}

impl std::fmt::Debug for StoredActivations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredActivations").field("store", &self.store.describe()).finish()
    }
}

impl StoredActivations {
    /// The records kept in `store`, at most `capacity` of them (the newest are loaded).
    pub fn open(store: Arc<dyn StateStore>, capacity: usize) -> Result<Self> {
        let mem = MemoryActivationStore::tracking_evictions(capacity);
        let mut records = Vec::new();
        let mut keys = Vec::new();
        for (key, value) in store.scan(ACTIVATIONS_TABLE)? {
            match crate::codec::decode_record(&value) {
                Ok(r) => {
                    keys.push((key, r.call_id.clone()));
                    records.push(r);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dropping an unreadable activation record");
                    store.apply(vec![StateOp::delete(ACTIVATIONS_TABLE, key)]);
                }
            }
        }
        // Oldest first, so that eviction keeps the newest.
        records.sort_by_key(|r| r.updated_at);
        mem.put_batch_now(records);
        // Records memory did not keep (over the capacity, or left by a process that
        // stopped before it pruned them) leave the store now; from here on the store
        // follows memory's evictions.
        drop(mem.take_evicted());
        let gone: Vec<StateOp> = keys
            .into_iter()
            .filter(|(_, id)| mem.progress_now(id).is_none())
            .map(|(key, _)| StateOp::delete(ACTIVATIONS_TABLE, key))
            .collect();
        if !gone.is_empty() {
            store.apply(gone);
        }
        let s = StoredActivations {
            mem,
            store,
            capacity: capacity.max(1),
            added: Arc::new(AtomicUsize::new(0)),
            pruning: Arc::new(AtomicBool::new(false)),
        };
        Ok(s)
    }

    /// The write that makes the store's record of `call_id` what memory holds.
    fn record_op(&self, call_id: &InvocationId) -> Option<StateOp> {
        let (queued_at, encoded) = self.mem.encode_now(call_id)?;
        match encoded {
            Ok(value) => {
                Some(StateOp::put(ACTIVATIONS_TABLE, record_key(queued_at, call_id), value))
            }
            Err(e) => {
                tracing::warn!(error = %e, "activation record not stored");
                None
            }
        }
    }

    fn ops<'a>(&self, ids: impl IntoIterator<Item = &'a InvocationId>) -> Vec<StateOp> {
        let mut seen = HashSet::new();
        ids.into_iter().filter(|id| seen.insert(*id)).filter_map(|id| self.record_op(id)).collect()
    }

    /// Records `item` as `failed` with `message` (unless a worker got to it first).
    fn refused(&self, item: &QueuedInvocation, message: &str, e: &Error) {
        let current = self.mem.progress_now(&item.call_id);
        if current.is_some_and(|p| p.state != AsyncState::Queued) {
            return;
        }
        let mut record = AsyncActivation::queued(item);
        record.state = AsyncState::Failed;
        record.error = Some(message.to_string());
        record.status = Some(e.http_status().as_u16());
        record.updated_at = epoch_millis(std::time::SystemTime::now());
        self.mem.put_now(record);
    }

    /// `n` records were added: past a quarter of the capacity since the last time, the
    /// records evicted from memory are removed from the store (off the caller's thread).
    fn count_new(&self, n: usize) {
        if n == 0 || self.added.fetch_add(n, Ordering::Relaxed) + n < self.capacity / 4 + 1 {
            return;
        }
        if self.pruning.swap(true, Ordering::AcqRel) {
            return;
        }
        self.added.store(0, Ordering::Relaxed);
        let this = self.clone();
        // The records memory evicted since the last time, not every key of the store:
        // scanning (and copying) every key under the store's lock cost about a tenth of
        // the gateway's CPU under load (BENCHMARKS.md).
        let prune = move || {
            let gone: Vec<StateOp> = this
                .mem
                .take_evicted()
                .into_iter()
                // A call recorded again since its record was evicted keeps it.
                .filter(|(_, id)| this.mem.progress_now(id).is_none())
                .map(|(queued_at, id)| {
                    StateOp::delete(ACTIVATIONS_TABLE, record_key(queued_at, &id))
                })
                .collect();
            if !gone.is_empty() {
                this.store.apply(gone);
            }
            this.pruning.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(prune)),
            Err(_) => prune(),
        }
    }

    async fn commit(&self, ops: Vec<StateOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.store.commit(ops).await
    }

    /// The records kept in memory (those read without the store).
    pub fn memory(&self) -> &MemoryActivationStore {
        &self.mem
    }
}

#[async_trait]
impl ActivationStore for StoredActivations {
    async fn put(&self, record: AsyncActivation) -> Result<()> {
        let id = record.call_id.clone();
        let new = self.mem.progress_now(&id).is_none();
        self.mem.put_now(record);
        self.count_new(usize::from(new));
        self.commit(self.ops([&id])).await
    }

    async fn get(&self, call_id: &InvocationId) -> Result<Option<AsyncActivation>> {
        Ok(self.mem.get_now(call_id))
    }

    async fn put_batch(&self, records: Vec<AsyncActivation>) -> Vec<Result<()>> {
        let n = records.len();
        let ids: Vec<InvocationId> = records.iter().map(|r| r.call_id.clone()).collect();
        self.mem.put_batch_now(records);
        self.count_new(n);
        let r = self.commit(self.ops(&ids)).await;
        (0..n).map(|_| r.clone()).collect()
    }

    async fn progress(&self, call_id: &InvocationId) -> Result<Option<Progress>> {
        Ok(self.mem.progress_now(call_id))
    }

    async fn put_update(&self, item: &QueuedInvocation, update: RecordUpdate) -> Result<()> {
        self.mem.put_update_now(item, update);
        self.commit(self.ops([&item.call_id])).await
    }

    async fn put_queued(&self, items: &[QueuedInvocation]) -> Vec<Result<()>> {
        self.mem.put_queued_now(items);
        self.count_new(items.len());
        let r = self.commit(self.ops(items.iter().map(|i| &i.call_id))).await;
        items.iter().map(|_| r.clone()).collect()
    }

    fn immediate(&self) -> Option<&dyn ImmediateActivationStore> {
        Some(self)
    }
}

/// The worker's writes of outcomes go to the store with its next commit (before the
/// acknowledgement that follows them); reads are answered from memory.
impl ImmediateActivationStore for StoredActivations {
    fn progress_now(&self, call_id: &InvocationId) -> Option<Progress> {
        self.mem.progress_now(call_id)
    }

    fn put_update_now(&self, item: &QueuedInvocation, update: RecordUpdate) {
        self.mem.put_update_now(item, update);
        if let Some(op) = self.record_op(&item.call_id) {
            self.store.apply(vec![op]);
        }
    }
}

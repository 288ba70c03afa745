//! The in-memory [`ActivationStore`]: async activation records by call id.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use faas_core::queue::{ActivationStore, AsyncActivation, AsyncState};
use faas_core::{InvocationId, Result};

struct Inner {
    records: HashMap<InvocationId, AsyncActivation>,
    /// Call ids in insertion order, for eviction.
    order: VecDeque<InvocationId>,
}

/// Activation records in memory, bounded: past `capacity` records the oldest are evicted
/// (finished ones first if the oldest is still pending, so a live invocation keeps its
/// record). Cheap to clone; clones share the records.
#[derive(Clone)]
pub struct MemoryActivationStore {
    inner: Arc<Mutex<Inner>>,
    capacity: usize,
}

impl std::fmt::Debug for MemoryActivationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryActivationStore")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl Default for MemoryActivationStore {
    fn default() -> Self {
        MemoryActivationStore::new(100_000)
    }
}

impl MemoryActivationStore {
    /// A store keeping at most `capacity` records (at least 1).
    pub fn new(capacity: usize) -> Self {
        MemoryActivationStore {
            inner: Arc::new(Mutex::new(Inner { records: HashMap::new(), order: VecDeque::new() })),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every operation leaves the maps consistent before it could panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies of all records (in no particular order).
    pub fn records(&self) -> Vec<AsyncActivation> {
        self.lock().records.values().cloned().collect()
    }

    /// How many records are in `state`.
    pub fn count(&self, state: AsyncState) -> usize {
        self.lock().records.values().filter(|r| r.state == state).count()
    }

    /// Reads one record without awaiting.
    pub fn get_now(&self, call_id: &InvocationId) -> Option<AsyncActivation> {
        self.lock().records.get(call_id).cloned()
    }

    /// Writes one record without awaiting (same rules as [`ActivationStore::put`]).
    pub fn put_now(&self, record: AsyncActivation) {
        let mut g = self.lock();
        let inner = &mut *g;
        match inner.records.get_mut(&record.call_id) {
            Some(_) if record.state == AsyncState::Queued => {}
            Some(existing) => *existing = record,
            None => {
                if inner.records.len() >= self.capacity {
                    evict(inner);
                }
                inner.order.push_back(record.call_id.clone());
                inner.records.insert(record.call_id.clone(), record);
            }
        }
    }
}

/// Removes one record: the oldest finished one among the oldest few, else the oldest.
fn evict(inner: &mut Inner) {
    // Ids whose record is gone already are skipped.
    while inner.order.front().is_some_and(|id| !inner.records.contains_key(id)) {
        inner.order.pop_front();
    }
    let pos = inner
        .order
        .iter()
        .take(64)
        .position(|id| inner.records.get(id).is_some_and(|r| r.state.is_terminal()))
        .unwrap_or(0);
    if let Some(id) = inner.order.remove(pos) {
        inner.records.remove(&id);
    }
}

#[async_trait]
impl ActivationStore for MemoryActivationStore {
    async fn put(&self, record: AsyncActivation) -> Result<()> {
        self.put_now(record);
        Ok(())
    }

    async fn get(&self, call_id: &InvocationId) -> Result<Option<AsyncActivation>> {
        Ok(self.get_now(call_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::example_item;

    #[tokio::test]
    async fn queued_never_overwrites_and_capacity_evicts_finished_first() {
        let store = MemoryActivationStore::new(2);
        let a = example_item();
        let mut rec = AsyncActivation::queued(&a);
        store.put(rec.clone()).await.unwrap();
        rec.state = AsyncState::Running;
        store.put(rec.clone()).await.unwrap();
        // A late `queued` write (the gateway after the worker) does not regress the state.
        store.put(AsyncActivation::queued(&a)).await.unwrap();
        assert_eq!(store.get(&a.call_id).await.unwrap().unwrap().state, AsyncState::Running);

        let b = example_item();
        let mut done = AsyncActivation::queued(&b);
        done.state = AsyncState::Succeeded;
        store.put(done).await.unwrap();
        let c = example_item();
        store.put(AsyncActivation::queued(&c)).await.unwrap();
        assert_eq!(store.len(), 2);
        // `a` is older but still running: the finished `b` went.
        assert!(store.get(&a.call_id).await.unwrap().is_some());
        assert!(store.get(&b.call_id).await.unwrap().is_none());
        assert!(store.get(&c.call_id).await.unwrap().is_some());
    }
}

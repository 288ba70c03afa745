//! The in-memory [`ActivationStore`]: async activation records by call id.
//!
//! The records are split over independently locked shards (by a hash of the call id), so a
//! gateway publishing, a worker recording and readers looking up do not queue behind one
//! store-wide lock; a batch write ([`ActivationStore::put_batch`]) takes each shard's lock
//! once.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use faas_core::activation::{epoch_millis, Activation};
use faas_core::queue::{
    ActivationStore, AsyncActivation, AsyncState, CallbackOutcome, FinalAttempt,
    ImmediateActivationStore, Progress, QueuedInvocation, RecordUpdate,
};
use faas_core::{InvocationId, Result};

/// Records per shard below which a store is not split: small stores keep one shard, so
/// their eviction order is exact.
const RECORDS_PER_SHARD: usize = 4096;
/// The most shards a store is split into.
const MAX_SHARDS: usize = 64;
/// How far past the oldest record eviction looks for a finished one.
const EVICTION_WINDOW: usize = 64;

/// A call id with its hash, computed once (with the store's random key) and used both to
/// pick the shard and inside the shard's map.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    hash: u64,
    id: InvocationId,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Passes a [`Key`]'s precomputed hash through.
#[derive(Default)]
struct PassHasher(u64);

impl Hasher for PassHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (by `Key`); fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Function and namespace names a shard shares between its records (at most this many;
/// past it, records keep names of their own).
const MAX_NAMES: usize = 1024;

/// One record as kept, compact: the call id is the map's key, the function and namespace
/// names are shared, and a finished call's activation is kept as the [`FinalAttempt`] it
/// is made of, built when the record is read.
struct Stored {
    function: Arc<str>,
    namespace: Arc<str>,
    state: AsyncState,
    attempts: u32,
    queued_at: u64,
    updated_at: u64,
    status: Option<u16>,
    error: Option<String>,
    callback_url: Option<String>,
    callback: Option<CallbackOutcome>,
    /// The activation of a record written whole ([`ActivationStore::put`]).
    activation: Option<Box<Activation>>,
    /// The last attempt, for a record written by [`ActivationStore::put_update`].
    outcome: Option<FinalAttempt>,
}

/// The names a shard shares (see [`MAX_NAMES`]).
#[derive(Default)]
struct Names(HashSet<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        if self.0.len() < MAX_NAMES {
            self.0.insert(n.clone());
        }
        n
    }
}

impl Stored {
    /// The record [`AsyncActivation::queued`] makes of `item`, written at `now`.
    fn queued(item: &QueuedInvocation, names: &mut Names, now: u64) -> Self {
        Stored {
            function: names.get(&item.function),
            namespace: names.get(&item.namespace),
            state: AsyncState::Queued,
            attempts: item.attempt,
            queued_at: item.queued_at,
            updated_at: now,
            status: None,
            error: None,
            callback_url: item.callback_url.clone(),
            callback: None,
            activation: None,
            outcome: None,
        }
    }

    fn from_record(r: AsyncActivation, names: &mut Names) -> Self {
        Stored {
            function: names.get(&r.function),
            namespace: names.get(&r.namespace),
            state: r.state,
            attempts: r.attempts,
            queued_at: r.queued_at,
            updated_at: r.updated_at,
            status: r.status,
            error: r.error,
            callback_url: r.callback_url,
            callback: r.callback,
            activation: r.activation,
            outcome: None,
        }
    }

    /// The record as readers see it.
    fn read(&self, call_id: &InvocationId) -> AsyncActivation {
        let activation = match (&self.activation, &self.outcome) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(o)) => {
                Some(Box::new(o.activation(call_id, &self.function, &self.namespace)))
            }
            (None, None) => None,
        };
        AsyncActivation {
            call_id: call_id.clone(),
            function: self.function.to_string(),
            namespace: self.namespace.to_string(),
            state: self.state,
            attempts: self.attempts,
            queued_at: self.queued_at,
            updated_at: self.updated_at,
            status: self.status,
            error: self.error.clone(),
            callback_url: self.callback_url.clone(),
            callback: self.callback.clone(),
            activation,
        }
    }

    fn progress(&self) -> Progress {
        Progress {
            state: self.state,
            attempts: self.attempts,
            queued_at: self.queued_at,
            settled: AsyncState::settled(
                self.state,
                self.callback_url.is_some(),
                self.callback.is_some(),
            ),
            has_callback: self.callback_url.is_some(),
        }
    }

    /// The record [`RecordUpdate::apply_to`] makes of `existing` (`None`: of none), the
    /// outcome kept compact. An existing record that is `item`'s (same function, namespace
    /// and callback URL) is updated in place and `None` answered; one that is not is
    /// replaced in place, keeping its `queued_at`; with none, the new record is answered.
    fn updated(
        existing: Option<&mut Stored>,
        item: &QueuedInvocation,
        update: RecordUpdate,
        names: &mut Names,
    ) -> Option<Stored> {
        let apply = |s: &mut Stored| {
            s.state = update.state;
            s.attempts = update.attempts;
            s.updated_at = update.updated_at;
            s.status = update.status;
            s.error = update.error;
            s.callback = None;
            s.activation = None;
            s.outcome = update.outcome;
        };
        match existing {
            Some(s) => {
                if *s.function != *item.function
                    || *s.namespace != *item.namespace
                    || s.callback_url != item.callback_url
                {
                    // Not the item's record: replaced (its `queued_at` kept).
                    let queued_at = s.queued_at;
                    *s = Stored { queued_at, ..Stored::queued(item, names, 0) };
                }
                apply(s);
                None
            }
            None => {
                let mut s = Stored::queued(item, names, 0);
                apply(&mut s);
                Some(s)
            }
        }
    }
}

#[derive(Default)]
struct Shard {
    /// Boxed: in a full store each new record takes the memory of the one just evicted,
    /// still in cache, and the table stays small.
    records: HashMap<Key, Box<Stored>, BuildHasherDefault<PassHasher>>,
    /// Call ids in insertion order, for eviction.
    order: VecDeque<Key>,
    names: Names,
    /// The records evicted (their `queued_at` and call id), kept only for a store that
    /// asked for them ([`MemoryActivationStore::tracking_evictions`]) until it takes them.
    evicted: Option<Vec<(u64, InvocationId)>>,
}

impl Shard {
    fn with_capacity(n: usize) -> Self {
        Shard {
            records: HashMap::with_capacity_and_hasher(n, Default::default()),
            order: VecDeque::with_capacity(n),
            names: Names::default(),
            evicted: None,
        }
    }

    /// Writes one record by the rules of [`ActivationStore::put`], keeping at most
    /// `capacity` records.
    fn put(&mut self, key: Key, record: AsyncActivation, capacity: usize) {
        match self.records.get_mut(&key) {
            Some(_) if record.state == AsyncState::Queued => {}
            Some(existing) => **existing = Stored::from_record(record, &mut self.names),
            None => {
                let stored = Stored::from_record(record, &mut self.names);
                self.insert(key, stored, capacity)
            }
        }
    }

    /// Writes the `queued` record of `item` (if the call has none), written at `now`.
    fn put_queued(&mut self, key: Key, item: &QueuedInvocation, now: u64, capacity: usize) {
        if !self.records.contains_key(&key) {
            let stored = Stored::queued(item, &mut self.names, now);
            self.insert(key, stored, capacity);
        }
    }

    /// Adds a record of a call id it does not hold, keeping at most `capacity` records.
    fn insert(&mut self, key: Key, stored: Stored, capacity: usize) {
        if self.records.len() >= capacity {
            self.evict();
        }
        self.order.push_back(key.clone());
        self.records.insert(key, Box::new(stored));
    }

    /// Removes one record: the oldest finished one among the oldest few, else the oldest.
    fn evict(&mut self) {
        // Ids whose record is gone already are skipped.
        while self.order.front().is_some_and(|k| !self.records.contains_key(k)) {
            self.order.pop_front();
        }
        let pos = self
            .order
            .iter()
            .take(EVICTION_WINDOW)
            .position(|k| self.records.get(k).is_some_and(|r| r.state.is_terminal()))
            .unwrap_or(0);
        if let Some(k) = self.order.remove(pos) {
            if let Some(gone) = self.records.remove(&k) {
                if let Some(evicted) = &mut self.evicted {
                    evicted.push((gone.queued_at, k.id));
                }
            }
        }
    }
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a shard (randomly keyed, so chosen call ids cannot pile into one shard).
    hasher: RandomState,
    /// Records kept per shard at most.
    shard_capacity: usize,
}

/// Activation records in memory, bounded: past `capacity` records the oldest are evicted
/// (finished ones first if the oldest is still pending, so a live invocation keeps its
/// record). A large store is split into shards that evict on their own, so "oldest" is
/// then the oldest of the shard the new record falls in (records spread evenly over the
/// shards, so it is close to the oldest overall); the store never holds more than
/// `capacity` records. Cheap to clone; clones share the records.
#[derive(Clone)]
pub struct MemoryActivationStore {
    inner: Arc<Inner>,
    capacity: usize,
}

impl std::fmt::Debug for MemoryActivationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryActivationStore")
            .field("capacity", &self.capacity)
            .field("shards", &self.inner.shards.len())
            .field("len", &self.len())
            .finish()
    }
}

impl Default for MemoryActivationStore {
    fn default() -> Self {
        MemoryActivationStore::new(100_000)
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Every operation leaves the maps consistent before it could panic.
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryActivationStore {
    /// A store keeping at most `capacity` records (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // A power of two, so that every shard holds `capacity / shards` at most and the
        // total stays within `capacity`.
        let shards = (capacity / RECORDS_PER_SHARD).clamp(1, MAX_SHARDS);
        let shards = if shards.is_power_of_two() { shards } else { shards.next_power_of_two() / 2 };
        MemoryActivationStore {
            inner: Arc::new(Inner {
                // Sized for a full shard at once (a bounded store fills up): the tables
                // never grow, 32 bytes a record.
                shards: (0..shards)
                    .map(|_| Mutex::new(Shard::with_capacity(capacity / shards)))
                    .collect(),
                hasher: RandomState::new(),
                shard_capacity: capacity / shards,
            }),
            capacity,
        }
    }

    /// [`MemoryActivationStore::new`], keeping the ids of the records it evicts until
    /// [`MemoryActivationStore::take_evicted`] takes them (the durable queue removes them
    /// from its store; it takes them at least once per quarter of the capacity of new
    /// records, which bounds what is kept).
    pub(crate) fn tracking_evictions(capacity: usize) -> Self {
        let store = MemoryActivationStore::new(capacity);
        for shard in store.inner.shards.iter() {
            lock(shard).evicted = Some(Vec::new());
        }
        store
    }

    /// The `queued_at` and call id of every record evicted since the last call (none
    /// unless made by [`MemoryActivationStore::tracking_evictions`]).
    pub(crate) fn take_evicted(&self) -> Vec<(u64, InvocationId)> {
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            if let Some(evicted) = &mut lock(shard).evicted {
                out.append(evicted);
            }
        }
        out
    }

    fn key(&self, call_id: &InvocationId) -> Key {
        Key { hash: self.inner.hasher.hash_one(call_id.as_str()), id: call_id.clone() }
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        lock(&self.inner.shards[self.shard_index(key)])
    }

    fn shard_index(&self, key: &Key) -> usize {
        // The high bits: the shard's map uses the low ones (and the top seven).
        (key.hash >> 32) as usize & (self.inner.shards.len() - 1)
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).records.len()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies of all records (in no particular order).
    pub fn records(&self) -> Vec<AsyncActivation> {
        let mut out = Vec::new();
        for s in self.inner.shards.iter() {
            out.extend(lock(s).records.iter().map(|(k, r)| r.read(&k.id)));
        }
        out
    }

    /// How many records are in `state`.
    pub fn count(&self, state: AsyncState) -> usize {
        let count =
            |s: &Mutex<Shard>| lock(s).records.values().filter(|r| r.state == state).count();
        self.inner.shards.iter().map(count).sum()
    }

    /// Reads one record without awaiting.
    pub fn get_now(&self, call_id: &InvocationId) -> Option<AsyncActivation> {
        let key = self.key(call_id);
        self.shard(&key).records.get(&key).map(|r| r.read(call_id))
    }

    /// The record of `call_id` as the durable queue keeps it in its store
    /// ([`crate::codec`]), and the call's `queued_at`; `None` without a record. Encoded
    /// from the compact form kept here: no activation is built for it.
    pub(crate) fn encode_now(
        &self,
        call_id: &InvocationId,
    ) -> Option<(u64, faas_core::Result<Vec<u8>>)> {
        let key = self.key(call_id);
        let shard = self.shard(&key);
        let r = shard.records.get(&key)?;
        let encoded = if r.activation.is_none() && r.callback.is_none() {
            let parts = crate::codec::RecordParts {
                function: &r.function,
                namespace: &r.namespace,
                state: r.state,
                attempts: r.attempts,
                queued_at: r.queued_at,
                updated_at: r.updated_at,
                status: r.status,
                error: r.error.as_deref(),
                callback_url: r.callback_url.as_deref(),
                outcome: r.outcome.as_ref(),
            };
            crate::codec::encode_record(call_id, &parts)
        } else {
            crate::codec::encode_record_json(&r.read(call_id))
        };
        Some((r.queued_at, encoded))
    }

    /// [`ActivationStore::progress`] without awaiting: no copy of the record.
    pub fn progress_now(&self, call_id: &InvocationId) -> Option<Progress> {
        let key = self.key(call_id);
        self.shard(&key).records.get(&key).map(|r| r.progress())
    }

    /// [`ActivationStore::put_update`] without awaiting: the record of `item`'s call is
    /// updated in place (only a missing or foreign record is built anew).
    pub fn put_update_now(&self, item: &QueuedInvocation, update: RecordUpdate) {
        let capacity = self.inner.shard_capacity;
        let key = self.key(&item.call_id);
        let mut guard = self.shard(&key);
        let shard = &mut *guard;
        let existing = shard.records.get_mut(&key).map(|b| &mut **b);
        if let Some(new) = Stored::updated(existing, item, update, &mut shard.names) {
            shard.insert(key, new, capacity);
        }
    }

    /// [`ActivationStore::put_queued`] without awaiting: the `queued` records of `items`
    /// made straight from them, taking each shard's lock once per batch.
    pub fn put_queued_now(&self, items: &[QueuedInvocation]) {
        let now = epoch_millis(std::time::SystemTime::now());
        let capacity = self.inner.shard_capacity;
        self.write_grouped(items.iter().map(|i| (&i.call_id, i)), |shard, key, item| {
            shard.put_queued(key, item, now, capacity)
        });
    }

    /// Writes one record without awaiting (same rules as [`ActivationStore::put`]).
    pub fn put_now(&self, record: AsyncActivation) {
        let capacity = self.inner.shard_capacity;
        let key = self.key(&record.call_id);
        self.shard(&key).put(key, record, capacity);
    }

    /// Writes several records without awaiting (same rules as
    /// [`ActivationStore::put_batch`]), taking each shard's lock once.
    pub fn put_batch_now(&self, records: Vec<AsyncActivation>) {
        let capacity = self.inner.shard_capacity;
        let keyed = records.into_iter().map(|r| (r.call_id.clone(), r));
        self.write_grouped(keyed, |shard, key, r| shard.put(key, r, capacity));
    }

    /// Calls `write` for every `(call id, value)` with its shard locked: grouped by shard
    /// (each shard's values in order) and each lock taken once, for batches large enough
    /// to be worth it.
    fn write_grouped<I, T>(
        &self,
        values: impl ExactSizeIterator<Item = (I, T)>,
        write: impl Fn(&mut Shard, Key, T),
    ) where
        I: std::borrow::Borrow<InvocationId>,
    {
        let n = self.inner.shards.len();
        if n == 1 || values.len() < 2 * n {
            for (id, v) in values {
                let key = self.key(id.borrow());
                write(&mut self.shard(&key), key, v);
            }
            return;
        }
        let mut groups: Vec<Vec<(Key, T)>> = (0..n).map(|_| Vec::new()).collect();
        let per = values.len() / n * 2;
        for (id, v) in values {
            let key = self.key(id.borrow());
            let g = &mut groups[self.shard_index(&key)];
            if g.capacity() == 0 {
                g.reserve(per);
            }
            g.push((key, v));
        }
        for (shard, group) in self.inner.shards.iter().zip(groups) {
            if group.is_empty() {
                continue;
            }
            let mut s = lock(shard);
            for (key, v) in group {
                write(&mut s, key, v);
            }
        }
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

    async fn put_batch(&self, records: Vec<AsyncActivation>) -> Vec<Result<()>> {
        let n = records.len();
        self.put_batch_now(records);
        (0..n).map(|_| Ok(())).collect()
    }

    async fn progress(&self, call_id: &InvocationId) -> Result<Option<Progress>> {
        Ok(self.progress_now(call_id))
    }

    async fn put_update(&self, item: &QueuedInvocation, update: RecordUpdate) -> Result<()> {
        self.put_update_now(item, update);
        Ok(())
    }

    async fn put_queued(&self, items: &[QueuedInvocation]) -> Vec<Result<()>> {
        self.put_queued_now(items);
        items.iter().map(|_| Ok(())).collect()
    }

    fn immediate(&self) -> Option<&dyn ImmediateActivationStore> {
        Some(self)
    }
}

impl ImmediateActivationStore for MemoryActivationStore {
    fn progress_now(&self, call_id: &InvocationId) -> Option<Progress> {
        MemoryActivationStore::progress_now(self, call_id)
    }

    fn put_update_now(&self, item: &QueuedInvocation, update: RecordUpdate) {
        MemoryActivationStore::put_update_now(self, item, update)
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

    /// Only `put` and `get`: the trait's provided `progress` and `put_update`.
    struct Plain(MemoryActivationStore);

    #[async_trait]
    impl ActivationStore for Plain {
        async fn put(&self, record: AsyncActivation) -> Result<()> {
            self.0.put(record).await
        }
        async fn get(&self, call_id: &InvocationId) -> Result<Option<AsyncActivation>> {
            self.0.get(call_id).await
        }
    }

    /// `progress` and `put_update` answer and write the same in the in-memory store (in
    /// place) as the trait's provided methods (get, then put).
    #[tokio::test]
    async fn progress_and_put_update_match_the_provided_methods() {
        let memory = MemoryActivationStore::new(100);
        let plain = Plain(MemoryActivationStore::new(100));
        let stores: [&dyn ActivationStore; 2] = [&memory, &plain];
        let update = |state, attempts| RecordUpdate {
            state,
            attempts,
            status: Some(200),
            error: None,
            // Kept compact by the in-memory store, built at once by the provided method:
            // the same activation either way.
            outcome: Some(FinalAttempt {
                status: 200,
                error: None,
                body: Some(bytes::Bytes::from_static(b"done")),
                start: 70,
                end: 75,
                meta: None,
                attempts,
            }),
            updated_at: 77,
        };
        // The call ids differ between the two stores' runs.
        let rename = |r: &mut AsyncActivation, id: &str| {
            r.call_id = InvocationId::from_string(id);
            if let Some(a) = &mut r.activation {
                a.activation_id = r.call_id.clone();
            }
        };
        let mut results = Vec::new();
        for store in stores {
            let mut item = example_item();
            item.queued_at = 5;
            assert_eq!(store.progress(&item.call_id).await.unwrap(), None);
            store.put(AsyncActivation::queued(&item)).await.unwrap();
            let p = store.progress(&item.call_id).await.unwrap().unwrap();
            assert_eq!((p.state, p.attempts, p.queued_at), (AsyncState::Queued, 0, 5));
            assert!(!p.settled && !p.has_callback);
            // Onto the item's own record.
            store.put_update(&item, update(AsyncState::Succeeded, 1)).await.unwrap();
            let mut rec = store.get(&item.call_id).await.unwrap().unwrap();
            rename(&mut rec, "x");
            let p = store.progress(&item.call_id).await.unwrap().unwrap();
            assert!(p.settled && p.state == AsyncState::Succeeded && p.attempts == 1);
            // No record: one is made of the item.
            let fresh = example_item();
            store.put_update(&fresh, update(AsyncState::Failed, 2)).await.unwrap();
            let mut made = store.get(&fresh.call_id).await.unwrap().unwrap();
            rename(&mut made, "y");
            // A record that is not the item's (another function): rebuilt, `queued_at` kept.
            let mut other = example_item();
            other.function = "other".into();
            other.queued_at = 9;
            store.put(AsyncActivation::queued(&other)).await.unwrap();
            let mut item2 = other.clone();
            item2.function = "echo".into();
            item2.queued_at = 10;
            store.put_update(&item2, update(AsyncState::Running, 1)).await.unwrap();
            let mut rebuilt = store.get(&other.call_id).await.unwrap().unwrap();
            assert_eq!((rebuilt.function.as_str(), rebuilt.queued_at), ("echo", 9));
            rename(&mut rebuilt, "z");
            results.push((rec, made, rebuilt));
        }
        assert_eq!(results[0], results[1]);
        assert_eq!(results[0].0.state, AsyncState::Succeeded);
        assert_eq!(results[0].0.updated_at, 77);
        let activation =
            results[0].0.activation.as_ref().expect("the finished record's activation");
        assert_eq!(activation.response.result["body"], "done");
        assert_eq!((activation.start, activation.duration), (70, 5));
        assert_eq!(activation.annotation("attempts"), Some(&serde_json::json!(1)));
        assert_eq!(results[0].1.state, AsyncState::Failed);
    }

    /// A sharded store: batches and single writes follow the same rules, the bound holds
    /// overall, and pending records outlive finished ones.
    #[tokio::test]
    async fn sharded_batches_and_bound() {
        let capacity = 16 * RECORDS_PER_SHARD;
        let store = MemoryActivationStore::new(capacity);
        assert_eq!(store.inner.shards.len(), 16);
        let items: Vec<_> = (0..200).map(|_| example_item()).collect();
        let queued: Vec<_> = items.iter().map(AsyncActivation::queued).collect();
        assert!(store.put_batch(queued.clone()).await.iter().all(Result::is_ok));
        assert_eq!(store.len(), 200);
        assert_eq!(store.count(AsyncState::Queued), 200);
        // `running` replaces, a later batch of `queued` does not regress it.
        let mut running = queued[7].clone();
        running.state = AsyncState::Running;
        store.put(running).await.unwrap();
        store.put_batch(queued.clone()).await;
        assert_eq!(store.get_now(&items[7].call_id).unwrap().state, AsyncState::Running);
        // In one batch, a later record of a call id wins over an earlier one.
        let mut done = queued[8].clone();
        done.state = AsyncState::Succeeded;
        let mut failed = done.clone();
        failed.state = AsyncState::Failed;
        store.put_batch(vec![done; 40].into_iter().chain([failed]).collect()).await;
        assert_eq!(store.get_now(&items[8].call_id).unwrap().state, AsyncState::Failed);

        // Over the capacity: never more than `capacity`, and the running record stays.
        let more: Vec<_> =
            (0..capacity + 5000).map(|_| AsyncActivation::queued(&example_item())).collect();
        let mut finished = more;
        for r in &mut finished {
            r.state = AsyncState::Succeeded;
        }
        store.put_batch(finished).await;
        assert!(store.len() <= capacity, "{} > {capacity}", store.len());
        assert!(store.len() > capacity - 16, "shards fill up to their share");
        assert_eq!(store.get_now(&items[7].call_id).unwrap().state, AsyncState::Running);
    }
}

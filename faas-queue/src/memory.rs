//! The in-memory queue: bounded, with backpressure, at-least-once delivery with explicit
//! acknowledgement. The default for tests and the embedded gateway.
//!
//! ```
//! # tokio_test_block_on(async {
//! use faas_core::queue::{QueueConsumer, QueuePublisher};
//! use faas_queue::memory::MemoryQueue;
//!
//! let queue = MemoryQueue::new(1024);
//! let (publisher, consumer) = (queue.publisher(), queue.consumer());
//! # let item = faas_queue::memory::example_item();
//! publisher.publish(item).await?;
//! let delivery = consumer.next().await?.expect("an item");
//! // ... run it ...
//! delivery.ack().await?;
//! # Ok::<(), faas_core::Error>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use faas_core::event::{Acknowledge, Delivery};
use faas_core::queue::{
    DeadLetter, DeadLetterSink, QueueConsumer, QueueDepth, QueuePublisher, QueuedInvocation,
};
use faas_core::util::FastBuildHasher;
use faas_core::{Error, Result};
use futures::future::BoxFuture;
use tokio::sync::Notify;

/// The bounds of a [`MemoryQueue`]: waiting items, and bytes held, in all and per function.
///
/// Items count the items waiting (not delivered). Bytes count every item accepted and not
/// yet acknowledged (waiting or being processed): its body, headers, path, query, names and
/// callback URL, plus a fixed overhead ([`item_bytes`]). A function's share bounds the items
/// and bytes of one function in the same way, so a flood of calls to one function cannot
/// fill the queue and starve the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Items waiting (not delivered) in all.
    pub items: usize,
    /// Bytes held in all.
    pub bytes: usize,
    /// Items of one function waiting.
    pub function_items: usize,
    /// Bytes one function holds.
    pub function_bytes: usize,
}

impl QueueLimits {
    /// The default byte bound: 256 MiB.
    pub const DEFAULT_BYTES: usize = 256 << 20;
    /// The default item bound: 100 000.
    pub const DEFAULT_ITEMS: usize = 100_000;
    /// The default share of one function, in percent of each bound: 25.
    pub const DEFAULT_FUNCTION_PERCENT: u8 = 25;

    /// At most `items` waiting items and `bytes` bytes (each at least 1), one function
    /// allowed all of it; see [`QueueLimits::function_percent`].
    pub fn new(items: usize, bytes: usize) -> Self {
        let (items, bytes) = (items.max(1), bytes.max(1));
        QueueLimits { items, bytes, function_items: items, function_bytes: bytes }
    }

    /// The same bounds with one function allowed `percent` % of the items and of the bytes
    /// (1 to 100; at least one item and one byte).
    pub fn function_percent(mut self, percent: u8) -> Self {
        let share = |n: usize| (n as u128 * u128::from(percent.clamp(1, 100)) / 100) as usize;
        self.function_items = share(self.items).max(1);
        self.function_bytes = share(self.bytes).max(1);
        self
    }
}

impl Default for QueueLimits {
    /// 100 000 items, 256 MiB, a function at most a quarter of each.
    fn default() -> Self {
        QueueLimits::new(Self::DEFAULT_ITEMS, Self::DEFAULT_BYTES)
            .function_percent(Self::DEFAULT_FUNCTION_PERCENT)
    }
}

/// What an item counts against [`QueueLimits::bytes`]: its variable-size fields plus the
/// size of the item itself.
pub fn item_bytes(item: &QueuedInvocation) -> usize {
    std::mem::size_of::<QueuedInvocation>()
        + item.body.len()
        + item.function.len()
        + item.namespace.len()
        + item.method.len()
        + item.path.len()
        + item.query.len()
        + item.callback_url.as_ref().map_or(0, String::len)
        + item
            .headers
            .iter()
            .map(|(k, v)| std::mem::size_of::<(String, String)>() + k.len() + v.len())
            .sum::<usize>()
}

struct Entry {
    item: QueuedInvocation,
    redeliveries: u32,
    /// [`item_bytes`] of the item, counted until it is acknowledged.
    size: usize,
    /// Where a journal keeps the item (see [`Journal`]); 0 without one.
    seq: u64,
}

/// Told of every item acknowledged, so that a queue kept elsewhere too (on disk) forgets it
/// there: the durable queue (`crate::stored`) is this queue over a journal.
pub(crate) trait Journal: Send + Sync + 'static {
    /// The item kept as `seq` was acknowledged.
    fn acknowledged(&self, seq: u64);
}

/// One function's waiting items and the bytes of its unacknowledged ones.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    waiting: usize,
    bytes: usize,
}

/// The waiting items and what every accepted, unacknowledged item holds.
struct Waiting {
    entries: VecDeque<Entry>,
    /// Items admitted but not yet waiting (see [`Waiting::reserve`]).
    reserved: usize,
    bytes: usize,
    /// What each function holds; a function holding nothing has no entry.
    functions: Shares,
}

/// What each function holds, by namespace then name: looked up with the item's own strings
/// (no key built per lookup; a function's first item allocates its entry).
#[derive(Default)]
struct Shares(HashMap<String, HashMap<String, Held, FastBuildHasher>, FastBuildHasher>);

impl Shares {
    fn get(&self, namespace: &str, function: &str) -> Held {
        self.0.get(namespace).and_then(|f| f.get(function)).copied().unwrap_or_default()
    }

    fn get_mut(&mut self, namespace: &str, function: &str) -> Option<&mut Held> {
        self.0.get_mut(namespace).and_then(|f| f.get_mut(function))
    }

    fn entry(&mut self, namespace: &str, function: &str) -> &mut Held {
        if !self.0.contains_key(namespace) {
            self.0.insert(namespace.to_string(), HashMap::default());
        }
        let functions = self.0.get_mut(namespace).expect("inserted above");
        if !functions.contains_key(function) {
            functions.insert(function.to_string(), Held::default());
        }
        functions.get_mut(function).expect("inserted above")
    }

    /// Drops the entry of a function that holds nothing any more.
    fn remove_if_empty(&mut self, namespace: &str, function: &str) {
        let Some(functions) = self.0.get_mut(namespace) else { return };
        if functions.get(function).is_some_and(|h| h.waiting == 0 && h.bytes == 0) {
            functions.remove(function);
            if functions.is_empty() {
                self.0.remove(namespace);
            }
        }
    }
}

impl Waiting {
    /// Admits `item` within `limits`: [`Error::Overloaded`] when the queue or the function's
    /// share is full, [`Error::PayloadTooLarge`] when the item alone is over the function's
    /// byte share.
    fn admit(&mut self, limits: &QueueLimits, item: QueuedInvocation) -> Result<()> {
        let size = self.reserve(limits, &item)?;
        self.push_reserved(Entry { item, redeliveries: 0, size, seq: 0 });
        Ok(())
    }

    /// Counts `item` against `limits` (as [`Waiting::admit`] does) without making it
    /// waiting yet: [`Waiting::push_reserved`] does, or [`Waiting::unreserve`] gives the
    /// room back. Answers the item's size.
    fn reserve(&mut self, limits: &QueueLimits, item: &QueuedInvocation) -> Result<usize> {
        let size = item_bytes(item);
        if size > limits.function_bytes {
            return Err(Error::PayloadTooLarge { limit: limits.function_bytes as u64 });
        }
        let full = |message: String| Error::Overloaded {
            message,
            retry_after: Some(std::time::Duration::from_secs(1)),
        };
        if self.entries.len() + self.reserved >= limits.items {
            return Err(full(format!("the async queue is full ({} items)", limits.items)));
        }
        if self.bytes + size > limits.bytes {
            return Err(full(format!("the async queue is full ({} bytes)", limits.bytes)));
        }
        let held = self.functions.get(&item.namespace, &item.function);
        if held.waiting >= limits.function_items || held.bytes + size > limits.function_bytes {
            return Err(full(format!(
                "{}.{} has {} items waiting and holds {} bytes of the async queue, its share \
                 is {} items and {} bytes",
                item.function,
                item.namespace,
                held.waiting,
                held.bytes,
                limits.function_items,
                limits.function_bytes
            )));
        }
        self.bytes += size;
        let h = self.functions.entry(&item.namespace, &item.function);
        h.waiting += 1;
        h.bytes += size;
        self.reserved += 1;
        Ok(size)
    }

    /// Makes a reserved item waiting, last in line.
    fn push_reserved(&mut self, entry: Entry) {
        self.reserved = self.reserved.saturating_sub(1);
        self.entries.push_back(entry);
    }

    /// Gives back the room of a reserved item that will not be pushed.
    fn unreserve(&mut self, item: &QueuedInvocation, size: usize) {
        self.reserved = self.reserved.saturating_sub(1);
        if let Some(h) = self.functions.get_mut(&item.namespace, &item.function) {
            h.waiting = h.waiting.saturating_sub(1);
        }
        self.release(&item.namespace, &item.function, size);
    }

    /// Takes the first waiting item (it keeps its bytes until acknowledged).
    fn pop(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        if let Some(h) = self.functions.get_mut(&entry.item.namespace, &entry.item.function) {
            h.waiting = h.waiting.saturating_sub(1);
        }
        Some(entry)
    }

    /// Puts a delivered item back first in line.
    fn push_front(&mut self, entry: Entry) {
        self.functions.entry(&entry.item.namespace, &entry.item.function).waiting += 1;
        self.entries.push_front(entry);
    }

    /// Forgets an acknowledged item of `namespace`/`function` that held `size` bytes.
    fn release(&mut self, namespace: &str, function: &str, size: usize) {
        self.bytes = self.bytes.saturating_sub(size);
        if let Some(h) = self.functions.get_mut(namespace, function) {
            h.bytes = h.bytes.saturating_sub(size);
            self.functions.remove_if_empty(namespace, function);
        }
    }
}

struct Inner {
    queue: Mutex<Waiting>,
    limits: QueueLimits,
    closed: AtomicBool,
    in_flight: AtomicUsize,
    /// Wakes consumers waiting for an item.
    available: Notify,
    journal: Option<Arc<dyn Journal>>,
    /// Dead letters per function, counted by the sinks of [`MemoryQueue::dead_letters`].
    dead: DeadCounts,
}

/// Dead letters counted per (namespace, function) since start.
type DeadCounts = Arc<Mutex<HashMap<(String, String), u64>>>;

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // A panic while holding the lock cannot leave the state inconsistent (every
        // operation on it completes its bookkeeping before it can panic), so a poisoned lock
        // is still usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts an unacknowledged item back at the front, ignoring the bounds (an accepted item
    /// is never dropped; it still counts what it held).
    fn requeue(&self, mut entry: Entry) {
        entry.redeliveries = entry.redeliveries.saturating_add(1);
        self.lock().push_front(entry);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.available.notify_one();
    }

    /// An item of `key` holding `size` bytes is settled for good.
    fn settled(&self, key: &(String, String), size: usize) {
        self.lock().release(&key.0, &key.1, size);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A bounded in-memory queue. Cheap to clone (all clones share the queue).
///
/// - [`MemoryQueue::publisher`] publishes; a full queue, or a function over its share
///   ([`QueueLimits`]), answers [`Error::Overloaded`].
/// - [`MemoryQueue::consumer`] consumes; any number of consumers share the items.
/// - A delivery that is nacked, or dropped unsettled (its worker stopped), goes back to the
///   front of the queue, so it is the next one delivered.
/// - Delivery order is publish order (one FIFO for all functions).
/// - [`MemoryQueue::close`] refuses new items; consumers drain what is left, then get
///   `None`.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQueue")
            .field("limits", &self.inner.limits)
            .field("len", &self.len())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl MemoryQueue {
    /// A queue holding at most `capacity` waiting items (at least 1) and
    /// [`QueueLimits::DEFAULT_BYTES`], any function allowed all of it. Items being processed
    /// (delivered, not yet acknowledged) do not count against the items, but do against the
    /// bytes.
    pub fn new(capacity: usize) -> Self {
        Self::with_limits(QueueLimits::new(capacity, QueueLimits::DEFAULT_BYTES))
    }

    /// A queue within `limits`.
    pub fn with_limits(limits: QueueLimits) -> Self {
        Self::with_journal(limits, None)
    }

    /// A queue within `limits` that tells `journal` of every acknowledgement.
    pub(crate) fn with_journal(limits: QueueLimits, journal: Option<Arc<dyn Journal>>) -> Self {
        MemoryQueue {
            inner: Arc::new(Inner {
                queue: Mutex::new(Waiting {
                    entries: VecDeque::with_capacity(limits.items.clamp(1, 4096)),
                    reserved: 0,
                    bytes: 0,
                    functions: Shares::default(),
                }),
                limits,
                closed: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                available: Notify::new(),
                journal,
                dead: DeadCounts::default(),
            }),
        }
    }

    /// Counts `item` against the bounds without making it waiting yet (see
    /// [`MemoryPublisher::try_publish`] for the errors); answers its size, for
    /// [`MemoryQueue::push_reserved`] or [`MemoryQueue::unreserve`].
    pub(crate) fn reserve(&self, item: &QueuedInvocation) -> Result<usize> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::unavailable("the queue is closed"));
        }
        self.inner.lock().reserve(&self.inner.limits, item)
    }

    /// Makes reserved items waiting, in order: `(item, size, seq)` each.
    pub(crate) fn push_reserved(&self, items: Vec<(QueuedInvocation, usize, u64)>) {
        let n = items.len();
        {
            let mut q = self.inner.lock();
            for (item, size, seq) in items {
                q.push_reserved(Entry { item, redeliveries: 0, size, seq });
            }
        }
        for _ in 0..n {
            self.inner.available.notify_one();
        }
    }

    /// Gives back the room of a reserved item.
    pub(crate) fn unreserve(&self, item: &QueuedInvocation, size: usize) {
        self.inner.lock().unreserve(item, size);
    }

    /// Puts back an item accepted before a restart, whatever the bounds (it was accepted
    /// within them, and is never dropped); it counts against them as any other.
    pub(crate) fn restore(&self, item: QueuedInvocation, seq: u64) {
        let size = item_bytes(&item);
        let mut q = self.inner.lock();
        q.bytes += size;
        let h = q.functions.entry(&item.namespace, &item.function);
        h.waiting += 1;
        h.bytes += size;
        q.entries.push_back(Entry { item, redeliveries: 1, size, seq });
    }

    /// A publisher for this queue.
    pub fn publisher(&self) -> MemoryPublisher {
        MemoryPublisher { inner: self.inner.clone() }
    }

    /// A consumer of this queue.
    pub fn consumer(&self) -> MemoryConsumer {
        MemoryConsumer { inner: self.inner.clone() }
    }

    /// A dead-letter sink (as [`MemoryDeadLetters::default`]) whose letters this queue
    /// counts in its [`QueuePublisher::depth`]: give it to the worker consuming the queue.
    pub fn dead_letters(&self) -> MemoryDeadLetters {
        MemoryDeadLetters { counts: self.inner.dead.clone(), ..MemoryDeadLetters::default() }
    }

    /// What waits, what is in flight and what was dead-lettered (see
    /// [`MemoryQueue::dead_letters`]), in all and per function.
    pub fn depth(&self) -> QueueDepth {
        let mut depth = QueueDepth {
            in_flight: Some(self.in_flight() as u64),
            per_function: true,
            ..QueueDepth::default()
        };
        {
            let q = self.inner.lock();
            depth.waiting = q.entries.len() as u64;
            let held =
                q.functions.0.iter().flat_map(|(ns, f)| f.iter().map(move |(n, h)| (ns, n, h)));
            for (ns, name, held) in held {
                if held.waiting > 0 {
                    depth.function_mut(name, ns).waiting = held.waiting as u64;
                }
            }
        }
        for ((ns, name), n) in lock_counts(&self.inner.dead).iter() {
            depth.dead_letters += n;
            depth.function_mut(name, ns).dead_letters = *n;
        }
        depth
    }

    /// Items waiting (not delivered).
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Bytes held by accepted items not yet acknowledged ([`item_bytes`]).
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Whether no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items delivered and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// The capacity in waiting items.
    pub fn capacity(&self) -> usize {
        self.inner.limits.items
    }

    /// The bounds.
    pub fn limits(&self) -> QueueLimits {
        self.inner.limits
    }

    /// Refuses new items ([`Error::Unavailable`]); consumers get the waiting items, then
    /// `None`.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.available.notify_waiters();
    }
}

/// Publishes to a [`MemoryQueue`].
#[derive(Clone)]
pub struct MemoryPublisher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryPublisher")
    }
}

impl MemoryPublisher {
    /// Publishes without awaiting (the in-memory queue never waits): [`Error::Overloaded`]
    /// when full or the function is over its share, [`Error::PayloadTooLarge`] when the item
    /// alone is over a function's byte share, [`Error::Unavailable`] when closed.
    pub fn try_publish(&self, item: QueuedInvocation) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::unavailable("the queue is closed"));
        }
        self.inner.lock().admit(&self.inner.limits, item)?;
        self.inner.available.notify_one();
        Ok(())
    }
}

fn lock_counts(c: &DeadCounts) -> MutexGuard<'_, HashMap<(String, String), u64>> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl QueuePublisher for MemoryPublisher {
    async fn publish(&self, item: QueuedInvocation) -> Result<()> {
        self.try_publish(item)
    }

    async fn publish_batch(&self, items: Vec<QueuedInvocation>) -> Vec<Result<()>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return items.iter().map(|_| Err(Error::unavailable("the queue is closed"))).collect();
        }
        // One lock for the whole batch; items past the bounds are refused one by one.
        let mut results = Vec::with_capacity(items.len());
        let mut pushed = 0usize;
        {
            let mut q = self.inner.lock();
            for item in items {
                let r = q.admit(&self.inner.limits, item);
                pushed += usize::from(r.is_ok());
                results.push(r);
            }
        }
        for _ in 0..pushed {
            self.inner.available.notify_one();
        }
        results
    }

    async fn depth(&self) -> Result<QueueDepth> {
        Ok(MemoryQueue { inner: self.inner.clone() }.depth())
    }
}

/// Consumes from a [`MemoryQueue`].
#[derive(Clone)]
pub struct MemoryConsumer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryConsumer")
    }
}

impl MemoryConsumer {
    /// The next item if one is waiting, without waiting; `None` if the queue is empty.
    pub fn try_next(&self) -> Option<Delivery<QueuedInvocation>> {
        let entry = self.inner.lock().pop()?;
        Some(self.deliver(entry))
    }

    /// Takes up to `max` waiting items at once (under one lock) into `out`, without
    /// waiting; how many were taken.
    pub fn try_next_batch(&self, max: usize, out: &mut Vec<Delivery<QueuedInvocation>>) -> usize {
        let mut q = self.inner.lock();
        let n = max.min(q.entries.len());
        if n > 0 {
            self.inner.in_flight.fetch_add(n, Ordering::AcqRel);
            out.reserve(n);
            out.extend(std::iter::from_fn(|| q.pop()).take(n).map(|e| self.delivery(e)));
        }
        n
    }

    fn deliver(&self, entry: Entry) -> Delivery<QueuedInvocation> {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        self.delivery(entry)
    }

    /// A delivery of `entry`, already counted in flight. The queue keeps no copy: the item
    /// comes back through the acknowledger if it is rejected or dropped unsettled.
    fn delivery(&self, entry: Entry) -> Delivery<QueuedInvocation> {
        let key = (entry.item.namespace.clone(), entry.item.function.clone());
        Delivery::new(
            entry.item,
            entry.redeliveries,
            Box::new(MemoryAck {
                inner: self.inner.clone(),
                redeliveries: entry.redeliveries,
                key,
                size: entry.size,
                seq: entry.seq,
                settled: false,
            }),
        )
    }
}

#[async_trait]
impl QueueConsumer for MemoryConsumer {
    async fn next(&self) -> Result<Option<Delivery<QueuedInvocation>>> {
        Ok(self.next_batch(1).await?.pop())
    }

    async fn next_batch(&self, max: usize) -> Result<Vec<Delivery<QueuedInvocation>>> {
        let max = max.max(1);
        let mut out = Vec::new();
        // Fast path: items are waiting, no need to register for a wake-up.
        if self.try_next_batch(max, &mut out) > 0 {
            return Ok(out);
        }
        loop {
            let notified = self.inner.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_next_batch(max, &mut out) > 0 {
                if !self.inner.lock().entries.is_empty() {
                    // This consumer may have taken a wake-up meant for another one: pass it
                    // on, as items are left.
                    self.inner.available.notify_one();
                }
                return Ok(out);
            }
            if self.inner.closed.load(Ordering::Acquire) {
                // Items still in flight may come back (nack, drop); only a queue that is
                // closed, empty and has nothing in flight is finished.
                if self.inner.in_flight.load(Ordering::Acquire) == 0 {
                    return Ok(out);
                }
            }
            notified.await;
        }
    }
}

/// Settles one in-memory delivery. The queue holds no copy of a delivered item: a
/// rejected one, or one whose delivery is dropped unsettled, is handed back and put at the
/// front of the queue.
struct MemoryAck {
    inner: Arc<Inner>,
    redeliveries: u32,
    /// The item's function and size, released from the bounds when it is settled for good.
    key: (String, String),
    size: usize,
    /// Where the journal keeps the item.
    seq: u64,
    settled: bool,
}

impl MemoryAck {
    /// Puts a handed-back item at the front of the queue.
    fn requeue(&mut self, item: Box<dyn Any + Send>) {
        self.settled = true;
        match item.downcast::<QueuedInvocation>() {
            Ok(item) => self.inner.requeue(Entry {
                item: *item,
                redeliveries: self.redeliveries,
                size: self.size,
                seq: self.seq,
            }),
            Err(_) => {
                // Only a `Delivery<QueuedInvocation>` holds this acknowledger.
                tracing::error!("an in-memory delivery was handed back something else");
                self.inner.settled(&self.key, self.size);
            }
        }
    }
}

impl Acknowledge for MemoryAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.settled = true;
        self.inner.settled(&self.key, self.size);
        if let Some(journal) = &self.inner.journal {
            journal.acknowledged(self.seq);
        }
        if self.inner.closed.load(Ordering::Acquire) {
            // A consumer waiting for the last in-flight item to settle may finish now.
            self.inner.available.notify_waiters();
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        // Without the item (a `Delivery` always hands it back through `nack_with`).
        self.settled = true;
        tracing::error!("an in-memory delivery was rejected without its item");
        self.inner.settled(&self.key, self.size);
        Box::pin(std::future::ready(Err(Error::internal(
            "an in-memory delivery was rejected without its item",
        ))))
    }

    fn takes_item_back(&self) -> bool {
        true
    }

    fn nack_with(mut self: Box<Self>, item: Box<dyn Any + Send>) -> BoxFuture<'static, Result<()>> {
        self.requeue(item);
        Box::pin(std::future::ready(Ok(())))
    }

    fn dropped(mut self: Box<Self>, item: Box<dyn Any + Send>) {
        self.requeue(item);
    }
}

impl Drop for MemoryAck {
    fn drop(&mut self) {
        if !self.settled {
            // Unreachable through `Delivery`, which settles or hands the item back.
            tracing::error!("an in-memory delivery was dropped without its item");
            self.inner.settled(&self.key, self.size);
        }
    }
}

/// Dead letters kept in memory (bounded: past `capacity` the oldest are dropped, with a
/// warning), and counted per function since start (those of
/// [`MemoryQueue::dead_letters`] in the queue's [`QueuePublisher::depth`]). The activation
/// store keeps each call's final state regardless.
#[derive(Clone, Debug)]
pub struct MemoryDeadLetters {
    letters: Arc<Mutex<VecDeque<DeadLetter>>>,
    capacity: usize,
    counts: DeadCounts,
}

impl MemoryDeadLetters {
    /// Keeps at most `capacity` letters (at least 1).
    pub fn new(capacity: usize) -> Self {
        MemoryDeadLetters {
            letters: Arc::new(Mutex::new(VecDeque::new())),
            capacity: capacity.max(1),
            counts: DeadCounts::default(),
        }
    }

    /// A copy of the letters, oldest first.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// How many letters are kept.
    pub fn len(&self) -> usize {
        self.letters.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryDeadLetters {
    fn default() -> Self {
        MemoryDeadLetters::new(10_000)
    }
}

#[async_trait]
impl DeadLetterSink for MemoryDeadLetters {
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        *lock_counts(&self.counts)
            .entry((letter.item.namespace.clone(), letter.item.function.clone()))
            .or_default() += 1;
        let mut l = self.letters.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() >= self.capacity {
            tracing::warn!(capacity = self.capacity, "dead letters full: dropping the oldest");
            l.pop_front();
        }
        l.push_back(letter);
        Ok(())
    }
}

/// A small queued invocation of function `echo` (for examples and tests).
#[doc(hidden)]
pub fn example_item() -> QueuedInvocation {
    QueuedInvocation {
        call_id: faas_core::InvocationId::new(),
        function: "echo".into(),
        namespace: faas_core::spec::DEFAULT_NAMESPACE.into(),
        method: "POST".into(),
        path: String::new(),
        query: String::new(),
        headers: Vec::new(),
        body: bytes::Bytes::from_static(b"hello"),
        callback_url: None,
        attempt: 0,
        queued_at: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-function accounting costs nothing once a function holds nothing: with many
    /// distinct functions (and namespaces) through the queue, acknowledged, unreserved or
    /// taken back, no entry is left.
    #[tokio::test]
    async fn a_function_holding_nothing_keeps_no_entry() {
        let q = MemoryQueue::new(1000);
        let (p, c) = (q.publisher(), q.consumer());
        let item = |ns: &str, f: &str| QueuedInvocation {
            namespace: ns.into(),
            function: f.into(),
            ..example_item()
        };
        for i in 0..100 {
            p.publish(item(&format!("ns{}", i % 3), &format!("f{i}"))).await.unwrap();
        }
        assert_eq!(q.inner.lock().functions.0.len(), 3);
        let held = q.inner.lock().functions.get("ns1", "f1");
        assert_eq!(held.waiting, 1);
        // One taken back (dropped unsettled), then every delivery acknowledged.
        drop(c.try_next());
        while let Some(d) = c.try_next() {
            d.ack().await.unwrap();
        }
        // A reserved item given back.
        let extra = item("ns9", "reserved");
        let size = q.reserve(&extra).unwrap();
        q.unreserve(&extra, size);
        let left = q.inner.lock().functions.0.len();
        assert_eq!(left, 0, "namespaces left with entries");
        assert_eq!(q.bytes(), 0);
    }
}

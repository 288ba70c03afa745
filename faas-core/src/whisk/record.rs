//! Activation records for every invocation: [`ActivationLayer`] in a gateway's invocation
//! stack notes each one (sync or async, from any route) in an [`ActivationLog`], a bounded
//! record of OpenWhisk-shaped [`Activation`]s kept in memory and, when given a
//! [`StateStore`], written to it in batches off the request path.
//!
//! The layer's own work per call is small: two clock reads, a few clones and a push onto a
//! pending list under a lock. The records are built, indexed, evicted and written later
//! (by [`ActivationLog::flush`], which a background task runs, and before every read).

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::{FxHashMap, FxHashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tower::{Layer, Service};

use super::entity::Limits;
use crate::activation::{epoch_millis, Activation, ActivationResponse, DEFAULT_VERSION};
use crate::error::{Error, Result, StatusCode};
use crate::function::Response;
use crate::invocation::{FunctionRef, Invocation, InvocationId, InvocationMeta};
use crate::state::{StateOp, StateStore};

/// The table of activation records (key: the activation id, value: the record's JSON).
pub const ACTIVATIONS_TABLE: &str = "whisk_activations";

/// OpenWhisk's largest `limit` of an activation listing.
pub const MAX_LIST_LIMIT: usize = 200;

/// What the OpenWhisk API tells the record layer about an invocation it makes (an
/// extension of the invocation's request): the action's names, kind, limits and what
/// caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct WhiskCall {
    /// The activation's namespace (the caller's OpenWhisk namespace).
    pub namespace: String,
    /// The action's name.
    pub name: String,
    /// `namespace[/package]/name`.
    pub path: String,
    /// The action's kind.
    pub kind: String,
    /// The action's version.
    pub version: String,
    /// The action's limits.
    pub limits: Limits,
    /// The activation that caused this one (a sequence's).
    pub cause: Option<InvocationId>,
    /// `sequence` for a sequence's components.
    pub caused_by: Option<&'static str>,
}

impl WhiskCall {
    /// Writes what this call says of the action into its activation record: namespace,
    /// subject, name, version, cause, and the `path`, `kind`, `limits` and `causedBy`
    /// annotations.
    pub fn describe(&self, a: &mut Activation) {
        self.clone().describe_owned(a);
    }

    /// As [`WhiskCall::describe`], moving the call's names into the record (for a call
    /// described once).
    pub fn describe_owned(self, a: &mut Activation) {
        // These, `waitTime` or `topmost`, and room for `start` and `initTime`.
        a.annotations.reserve(7);
        a.subject = self.namespace.clone();
        a.namespace = self.namespace;
        a.name = self.name;
        a.version = self.version;
        a.cause = self.cause;
        a.annotate("path", self.path.into());
        a.annotate("kind", self.kind.into());
        a.annotate("limits", serde_json::to_value(self.limits).unwrap_or(Value::Null));
        if let Some(by) = self.caused_by {
            a.annotate("causedBy", by.into());
        }
    }
}

/// An API call's [`WhiskCall`] and where the API leaves its result for its record (one
/// extension of the invocation's request): the record built later from the layer's note
/// takes the result from here, so it reaches the record without the record being built
/// and indexed on the call's path.
#[derive(Debug)]
pub(crate) struct ResultSlot {
    call: Arc<WhiskCall>,
    state: Mutex<Slot>,
}

#[derive(Debug, Default)]
enum Slot {
    /// The record layer has not noted the call (yet, or ever: refused above it).
    #[default]
    Unseen,
    /// Noted, its record not built yet.
    Noted,
    /// Noted, with the result (and the end) the API read.
    Filled(ActivationResponse, SystemTime),
    /// Its record was built.
    Built,
}

/// What became of a result given to [`ResultSlot::fill`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    /// The record, when built, has it.
    Pending,
    /// The record was built already: the caller updates it in the log.
    Built,
    /// The layer never noted the call: the caller records it.
    Unseen,
}

impl ResultSlot {
    /// The slot of a call described by `call`.
    pub(crate) fn new(call: Arc<WhiskCall>) -> Self {
        ResultSlot { call, state: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The layer noted the call.
    fn noted(&self) {
        let mut s = self.lock();
        if matches!(*s, Slot::Unseen) {
            *s = Slot::Noted;
        }
    }

    /// The record is being built: the result, if the API gave it already.
    fn take(&self) -> Option<(ActivationResponse, SystemTime)> {
        match std::mem::replace(&mut *self.lock(), Slot::Built) {
            Slot::Filled(r, end) => Some((r, end)),
            _ => None,
        }
    }

    /// Gives the call's result (read by the API at `end`) to its record.
    pub(crate) fn fill(&self, response: ActivationResponse, end: SystemTime) -> Filled {
        let mut s = self.lock();
        match *s {
            Slot::Unseen => Filled::Unseen,
            Slot::Built => Filled::Built,
            Slot::Noted | Slot::Filled(..) => {
                *s = Slot::Filled(response, end);
                Filled::Pending
            }
        }
    }
}

/// How many records the log keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The most records kept (the oldest go first). Default 100 000.
    pub max_records: usize,
    /// Records older than this (by their end) go. Default 7 days.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_records: 100_000, max_age: Duration::from_secs(7 * 24 * 3600) }
    }
}

/// A finished invocation as the layer saw it, turned into a record later.
struct Raw {
    id: InvocationId,
    function: FunctionRef,
    start: SystemTime,
    end: SystemTime,
    outcome: std::result::Result<u16, Error>,
    meta: Option<InvocationMeta>,
    whisk: Option<Arc<WhiskCall>>,
    slot: Option<Arc<ResultSlot>>,
}

/// A record waiting to be indexed: a call the layer noted, or one built by the API (a
/// sequence's, shared with its caller: copied only if the caller still holds it when it
/// is indexed). The note is kept inline: it is the one pushed for every call, and a box
/// would cost each an allocation.
#[allow(clippy::large_enum_variant)]
enum Pending {
    Raw(Raw),
    Built(Arc<Activation>),
}

impl Pending {
    fn into_activation(self) -> Activation {
        match self {
            Pending::Raw(r) => r.into_activation(),
            Pending::Built(a) => Arc::unwrap_or_clone(a),
        }
    }
}

impl Raw {
    fn into_activation(self) -> Activation {
        let given = self.slot.as_ref().and_then(|s| s.take());
        let response = match &self.outcome {
            Ok(status) if *status < 400 => {
                ActivationResponse::success(json!({ "statusCode": status }))
            }
            Ok(status) => ActivationResponse {
                status: StatusCode::ApplicationError.as_str().into(),
                status_code: StatusCode::ApplicationError,
                success: false,
                result: json!({ "statusCode": status }),
            },
            Err(e) => ActivationResponse::error(e),
        };
        let mut a = Activation::new(self.id, &self.function, self.start, self.end, response);
        match &self.whisk {
            Some(w) => w.describe(&mut a),
            None => {
                let path = format!("{}/{}", self.function.namespace, self.function.name);
                a.annotate("path", path.into());
                a.annotate("kind", "blackbox".into());
            }
        }
        if let Some(meta) = &self.meta {
            a.annotate_meta(meta);
        } else {
            a.annotate("waitTime", 0.into());
        }
        if let Some((response, end)) = given {
            a.response = response;
            a.end = epoch_millis(end).max(a.start);
            a.duration = a.end - a.start;
        }
        a
    }
}

/// The records, indexed: by arrival, by id, and by name and namespace (so a filtered
/// listing walks only the records it could select, newest first, however many are kept).
#[derive(Default)]
struct Index {
    /// By arrival order.
    by_seq: BTreeMap<u64, Activation>,
    by_id: FxHashMap<InvocationId, u64>,
    /// Arrival numbers by the record's `name`.
    by_name: FxHashMap<String, BTreeSet<u64>>,
    /// Arrival numbers by the record's `namespace`.
    by_namespace: FxHashMap<String, BTreeSet<u64>>,
    next_seq: u64,
    /// Records to write at the next flush.
    dirty: FxHashSet<InvocationId>,
    /// Records to delete at the next flush.
    evicted: Vec<InvocationId>,
}

/// Adds `seq` to `key`'s set.
fn note_key(map: &mut FxHashMap<String, BTreeSet<u64>>, key: &str, seq: u64) {
    match map.get_mut(key) {
        Some(set) => {
            set.insert(seq);
        }
        None => {
            map.insert(key.to_string(), BTreeSet::from([seq]));
        }
    }
}

/// Removes `seq` from `key`'s set (and the set once empty).
fn forget_key(map: &mut FxHashMap<String, BTreeSet<u64>>, key: &str, seq: u64) {
    if let Some(set) = map.get_mut(key) {
        set.remove(&seq);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl Index {
    /// Removes the record numbered `seq` from every index but `by_id`.
    fn unlink(&mut self, seq: u64) -> Option<Activation> {
        let a = self.by_seq.remove(&seq)?;
        forget_key(&mut self.by_name, &a.name, seq);
        forget_key(&mut self.by_namespace, &a.namespace, seq);
        Some(a)
    }

    fn insert(&mut self, a: Activation, retention: &Retention) {
        let id = a.activation_id.clone();
        if let Some(old) = self.by_id.remove(&id) {
            self.unlink(old);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        note_key(&mut self.by_name, &a.name, seq);
        note_key(&mut self.by_namespace, &a.namespace, seq);
        self.by_seq.insert(seq, a);
        self.by_id.insert(id.clone(), seq);
        self.dirty.insert(id);
        while self.by_seq.len() > retention.max_records {
            self.evict_first();
        }
    }

    fn evict_first(&mut self) {
        let Some(seq) = self.by_seq.first_key_value().map(|(s, _)| *s) else { return };
        if let Some(a) = self.unlink(seq) {
            self.by_id.remove(&a.activation_id);
            self.dirty.remove(&a.activation_id);
            self.evicted.push(a.activation_id);
        }
    }

    fn expire(&mut self, retention: &Retention, now: SystemTime) {
        let oldest = epoch_millis(now).saturating_sub(retention.max_age.as_millis() as u64);
        while self.by_seq.first_key_value().is_some_and(|(_, a)| a.end < oldest) {
            self.evict_first();
        }
    }
}

struct Shared {
    pending: Mutex<Vec<Pending>>,
    index: Mutex<Index>,
    retention: Retention,
    store: Option<Arc<dyn StateStore>>,
}

/// Which records [`ActivationLog::list`] answers (OpenWhisk's query of
/// `GET .../activations`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivationQuery {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only activations of this action (`name` or `package/name`).
    pub name: Option<String>,
    /// Skip this many matches (newest first).
    pub skip: usize,
    /// At most this many (capped at [`MAX_LIST_LIMIT`]; 0 means 30).
    pub limit: usize,
    /// Only those started at or after this time (epoch ms).
    pub since: Option<u64>,
    /// Only those started at or before this time (epoch ms).
    pub upto: Option<u64>,
}

impl ActivationQuery {
    fn matches(&self, a: &Activation) -> bool {
        self.namespace.as_deref().is_none_or(|ns| a.namespace == ns)
            && self.name.as_deref().is_none_or(|n| {
                a.name == n
                    || a.annotation("path")
                        .and_then(Value::as_str)
                        .is_some_and(|p| p.ends_with(n) && p[..p.len() - n.len()].ends_with('/'))
            })
            && self.since.is_none_or(|s| a.start >= s)
            && self.upto.is_none_or(|u| a.start <= u)
    }
}

/// A bounded log of activation records, cheap to clone (clones share it).
#[derive(Clone)]
pub struct ActivationLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ActivationLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivationLog").field("retention", &self.shared.retention).finish()
    }
}

impl Default for ActivationLog {
    fn default() -> Self {
        ActivationLog::in_memory(Retention::default())
    }
}

/// How many pending records make the layer index them itself (so that the pending list
/// stays bounded even when no flush runs).
const PENDING_BOUND: usize = 4096;

impl ActivationLog {
    /// A log kept in memory only.
    pub fn in_memory(retention: Retention) -> Self {
        ActivationLog {
            shared: Arc::new(Shared {
                pending: Mutex::default(),
                index: Mutex::default(),
                retention,
                store: None,
            }),
        }
    }

    /// A log written to `store` (table [`ACTIVATIONS_TABLE`]), loaded with the records it
    /// holds (the newest, within `retention`; an unreadable record is skipped with a
    /// warning).
    pub fn open(store: Arc<dyn StateStore>, retention: Retention) -> Result<Self> {
        let mut records: Vec<Activation> = Vec::new();
        for (key, value) in store.scan(ACTIVATIONS_TABLE)? {
            match serde_json::from_slice::<Activation>(&value) {
                Ok(a) => records.push(a),
                Err(e) => tracing::warn!(
                    key = %String::from_utf8_lossy(&key),
                    "skipping an unreadable activation record: {e}"
                ),
            }
        }
        records.sort_by(|a, b| (a.end, &a.activation_id).cmp(&(b.end, &b.activation_id)));
        let mut index = Index::default();
        for a in records {
            index.insert(a, &retention);
        }
        // What was loaded is on disk already; what was evicted is deleted at the first flush.
        index.dirty.clear();
        Ok(ActivationLog {
            shared: Arc::new(Shared {
                pending: Mutex::default(),
                index: Mutex::new(index),
                retention,
                store: Some(store),
            }),
        })
    }

    /// Runs [`ActivationLog::flush`] every `every` for as long as the log lives (needs a
    /// tokio runtime; without one, reads and writes flush as they go).
    pub fn spawn_flusher(&self, every: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let weak = Arc::downgrade(&self.shared);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let log = ActivationLog { shared };
                if let Err(e) = log.flush().await {
                    tracing::warn!("writing activation records: {e}");
                }
            }
        });
    }

    fn note(&self, raw: Pending) {
        let full = {
            let Ok(mut pending) = self.shared.pending.lock() else { return };
            pending.push(raw);
            pending.len() >= PENDING_BOUND
        };
        if full {
            self.index_pending();
        }
    }

    /// Moves the pending records into the index.
    fn index_pending(&self) {
        let raws = match self.shared.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return,
        };
        if raws.is_empty() {
            return;
        }
        let built: Vec<Activation> = raws.into_iter().map(Pending::into_activation).collect();
        if let Ok(mut index) = self.shared.index.lock() {
            for a in built {
                index.insert(a, &self.shared.retention);
            }
        }
    }

    /// Adds a record made elsewhere (a sequence's) as the layer's notes are added: indexed
    /// by the next flush or read, not on the caller's path. The record is shared with
    /// whoever else holds it (the caller answering it), and copied only if they still do
    /// when it is indexed.
    pub fn note_built(&self, activation: Arc<Activation>) {
        self.note(Pending::Built(activation));
    }

    /// Adds (or replaces) a record made elsewhere (a sequence's, a trigger's).
    pub fn insert(&self, activation: Activation) {
        self.index_pending();
        if let Ok(mut index) = self.shared.index.lock() {
            index.insert(activation, &self.shared.retention);
        }
    }

    /// Changes the record of `id` with `f` (the API sets an action's result once it has read
    /// it); `false` if there is no such record.
    pub fn update(&self, id: &InvocationId, f: impl FnOnce(&mut Activation)) -> bool {
        self.index_pending();
        let Ok(mut index) = self.shared.index.lock() else { return false };
        let Some(seq) = index.by_id.get(id).copied() else { return false };
        let index = &mut *index;
        let Some(a) = index.by_seq.get_mut(&seq) else { return false };
        let (name, namespace) = (a.name.clone(), a.namespace.clone());
        f(a);
        // Re-indexed only if the change renamed it.
        if a.name != name {
            forget_key(&mut index.by_name, &name, seq);
            note_key(&mut index.by_name, &a.name, seq);
        }
        if a.namespace != namespace {
            forget_key(&mut index.by_namespace, &namespace, seq);
            note_key(&mut index.by_namespace, &a.namespace, seq);
        }
        index.dirty.insert(id.clone());
        true
    }

    /// The record of `id`.
    pub fn get(&self, id: &InvocationId) -> Option<Activation> {
        self.index_pending();
        let index = self.shared.index.lock().ok()?;
        index.by_id.get(id).and_then(|seq| index.by_seq.get(seq)).cloned()
    }

    /// The records `query` selects, newest first.
    pub fn list(&self, query: &ActivationQuery) -> Vec<Activation> {
        self.index_pending();
        let limit = match query.limit {
            0 => 30,
            n => n.min(MAX_LIST_LIMIT),
        };
        let Ok(index) = self.shared.index.lock() else { return Vec::new() };
        // The smaller of the sets the filters name: the records of that name (the last
        // segment of `package/name`, which is the record's `name`) or of that namespace.
        let empty = BTreeSet::new();
        let by_name = query.name.as_deref().map(|n| {
            let key = n.rsplit('/').next().unwrap_or(n);
            index.by_name.get(key).unwrap_or(&empty)
        });
        let by_ns =
            query.namespace.as_deref().map(|ns| index.by_namespace.get(ns).unwrap_or(&empty));
        let candidates = match (by_name, by_ns) {
            (Some(a), Some(b)) => Some(if a.len() <= b.len() { a } else { b }),
            (a, b) => a.or(b),
        };
        let select = |a: &&Activation| query.matches(a);
        match candidates {
            Some(seqs) => seqs
                .iter()
                .rev()
                .filter_map(|seq| index.by_seq.get(seq))
                .filter(select)
                .skip(query.skip)
                .take(limit)
                .cloned()
                .collect(),
            None => index
                .by_seq
                .values()
                .rev()
                .filter(select)
                .skip(query.skip)
                .take(limit)
                .cloned()
                .collect(),
        }
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.index_pending();
        self.shared.index.lock().map(|i| i.by_seq.len()).unwrap_or(0)
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Indexes what is pending, drops what retention says goes, and writes the changes
    /// to the store (if any) in one batch.
    pub async fn flush(&self) -> Result<()> {
        self.index_pending();
        let ops = {
            let Ok(mut index) = self.shared.index.lock() else {
                return Err(Error::internal("the activation log's lock is poisoned"));
            };
            index.expire(&self.shared.retention, SystemTime::now());
            if self.shared.store.is_none() {
                index.dirty.clear();
                index.evicted.clear();
                return Ok(());
            }
            let mut ops = Vec::with_capacity(index.dirty.len() + index.evicted.len());
            for id in std::mem::take(&mut index.evicted) {
                ops.push(StateOp::delete(ACTIVATIONS_TABLE, id.as_str().as_bytes()));
            }
            for id in std::mem::take(&mut index.dirty) {
                let Some(a) = index.by_id.get(&id).and_then(|s| index.by_seq.get(s)) else {
                    continue;
                };
                match serde_json::to_vec(a) {
                    Ok(v) => ops.push(StateOp::put(ACTIVATIONS_TABLE, id.as_str().as_bytes(), v)),
                    Err(e) => tracing::warn!("encoding activation {id}: {e}"),
                }
            }
            ops
        };
        match (&self.shared.store, ops.is_empty()) {
            (Some(store), false) => store.commit(ops).await,
            _ => Ok(()),
        }
    }
}

/// Notes the invocations that go through it in an [`ActivationLog`]: those the OpenWhisk
/// API, its triggers and sequences make (they carry a [`WhiskCall`]), and, with
/// [`ActivationLayer::every_invocation`], every other one too (OpenFaaS routes, the async
/// queue's calls).
#[derive(Clone, Debug)]
pub struct ActivationLayer {
    log: ActivationLog,
    all: bool,
}

impl ActivationLayer {
    /// Records the OpenWhisk calls into `log`.
    pub fn new(log: ActivationLog) -> Self {
        ActivationLayer { log, all: false }
    }

    /// Whether every invocation is recorded, not only the OpenWhisk calls. Each record
    /// costs the invocation path some work (measured in BENCHMARKS.md), so a gateway that
    /// serves OpenFaaS routes at high rates leaves it off.
    pub fn every_invocation(mut self, all: bool) -> Self {
        self.all = all;
        self
    }
}

impl<S> Layer<S> for ActivationLayer {
    type Service = Record<S>;
    fn layer(&self, inner: S) -> Record<S> {
        Record { inner, log: self.log.clone(), all: self.all }
    }
}

/// The service of [`ActivationLayer`].
#[derive(Clone, Debug)]
pub struct Record<S> {
    inner: S,
    log: ActivationLog,
    all: bool,
}

impl<S> Service<Invocation> for Record<S>
where
    S: Service<Invocation, Response = Response, Error = Error>,
{
    type Response = Response;
    type Error = Error;
    type Future = RecordFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Invocation) -> Self::Future {
        let slot = req.request.extensions().get::<Arc<ResultSlot>>().cloned();
        let whisk = match &slot {
            Some(s) => Some(s.call.clone()),
            None => req.request.extensions().get::<Arc<WhiskCall>>().cloned(),
        };
        if whisk.is_none() && !self.all {
            return RecordFuture { inner: self.inner.call(req), noted: None };
        }
        let noted = Noted {
            id: req.id.clone(),
            function: req.function.clone(),
            whisk,
            slot,
            start: SystemTime::now(),
            log: self.log.clone(),
        };
        RecordFuture { inner: self.inner.call(req), noted: Some(noted) }
    }
}

/// What [`Record`] keeps of a call until it finishes.
struct Noted {
    id: InvocationId,
    function: FunctionRef,
    whisk: Option<Arc<WhiskCall>>,
    slot: Option<Arc<ResultSlot>>,
    start: SystemTime,
    log: ActivationLog,
}

pin_project_lite::pin_project! {
    /// The future of [`Record`].
    pub struct RecordFuture<F> {
        #[pin]
        inner: F,
        noted: Option<Noted>,
    }
}

impl<F> Future for RecordFuture<F>
where
    F: Future<Output = Result<Response>>,
{
    type Output = Result<Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let r = match this.inner.poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => return Poll::Pending,
        };
        if let Some(n) = this.noted.take() {
            let (outcome, meta) = match &r {
                Ok(resp) => {
                    (Ok(resp.status().as_u16()), resp.extensions().get::<InvocationMeta>().cloned())
                }
                Err(e) => (Err(e.clone()), None),
            };
            let raw = Raw {
                id: n.id,
                function: n.function,
                start: n.start,
                end: SystemTime::now(),
                outcome,
                meta,
                whisk: n.whisk,
                slot: n.slot,
            };
            if let Some(s) = &raw.slot {
                s.noted();
            }
            n.log.note(Pending::Raw(raw));
        }
        Poll::Ready(r)
    }
}

/// The summary an activation listing without `docs` shows of a record.
pub fn summary(a: &Activation) -> Value {
    json!({
        "activationId": a.activation_id,
        "namespace": a.namespace,
        "name": a.name,
        "version": if a.version.is_empty() { DEFAULT_VERSION } else { a.version.as_str() },
        "publish": a.publish,
        "annotations": a.annotations,
        "start": a.start,
        "end": a.end,
        "duration": a.duration,
        "statusCode": a.response.status_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoker::InvokeService;
    use crate::memory::MemoryInvoker;
    use crate::state::MemoryStateStore;
    use crate::{handler_fn, Context, Request};
    use tower::{ServiceBuilder, ServiceExt};

    fn backend() -> Arc<MemoryInvoker> {
        let m = MemoryInvoker::new();
        m.register(
            "echo",
            handler_fn(|req: Request, _: Context| async move { Ok::<_, Error>(req.into_body()) }),
        );
        m.register(
            "fail",
            handler_fn(|_: Request, _: Context| async move {
                Err::<bytes::Bytes, _>(Error::application("no"))
            }),
        );
        Arc::new(m)
    }

    #[tokio::test]
    async fn every_invocation_through_the_layer_is_recorded() {
        use crate::invoker::Deploy;
        let m = backend();
        m.deploy(crate::FunctionSpec::new("echo", "echo")).await.unwrap();
        m.deploy(crate::FunctionSpec::new("fail", "fail")).await.unwrap();
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
        let log = ActivationLog::open(store.clone(), Retention::default()).unwrap();
        let stack = ServiceBuilder::new()
            .layer(ActivationLayer::new(log.clone()).every_invocation(true))
            .service(InvokeService::new(m.clone()));
        let ok = Invocation::post("echo", "hi");
        let ok_id = ok.id.clone();
        stack.clone().oneshot(ok).await.unwrap();
        let bad = Invocation::post("fail", "x");
        let bad_id = bad.id.clone();
        assert!(stack.clone().oneshot(bad).await.is_err());

        let a = log.get(&ok_id).unwrap();
        assert_eq!(a.name, "echo");
        assert_eq!(a.namespace, "openfaas-fn");
        assert!(a.response.success);
        assert_eq!(a.annotation("path").unwrap(), "openfaas-fn/echo");
        assert!(a.wait_time().is_some());
        let b = log.get(&bad_id).unwrap();
        assert_eq!(b.response.status_code, StatusCode::ApplicationError);
        let listed = log.list(&ActivationQuery { name: Some("echo".into()), ..Default::default() });
        assert_eq!(listed.len(), 1);

        // Written in one batch, and there again after a "restart".
        log.flush().await.unwrap();
        assert_eq!(store.scan(ACTIVATIONS_TABLE).unwrap().len(), 2);
        let again = ActivationLog::open(store.clone(), Retention::default()).unwrap();
        assert_eq!(again.get(&ok_id).unwrap(), a);
        // Newest first (by end; records that ended in the same millisecond in any order).
        let all = again.list(&ActivationQuery::default());
        assert_eq!(all.len(), 2);
        assert!(all[0].end >= all[1].end);
    }

    #[tokio::test]
    async fn retention_bounds_the_log_and_the_store() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
        let retention = Retention { max_records: 3, ..Default::default() };
        let log = ActivationLog::open(store.clone(), retention).unwrap();
        let f = FunctionRef::default_ns("f");
        let now = SystemTime::now();
        for i in 0..5 {
            let id = InvocationId::from_string(format!("id{i}"));
            log.insert(Activation::new(id, &f, now, now, ActivationResponse::success(json!({}))));
        }
        log.flush().await.unwrap();
        assert_eq!(log.len(), 3);
        assert!(log.get(&InvocationId::from_string("id0")).is_none());
        let keys: Vec<String> = store
            .scan(ACTIVATIONS_TABLE)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect();
        assert_eq!(keys, ["id2", "id3", "id4"]);
        // Paging: newest first, skip and limit.
        let page = log.list(&ActivationQuery { skip: 1, limit: 1, ..Default::default() });
        assert_eq!(page[0].activation_id.as_str(), "id3");
        // Age: everything older than the limit goes at the next flush.
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let aged = ActivationLog::in_memory(Retention {
            max_records: 10,
            max_age: Duration::from_secs(60),
        });
        aged.insert(Activation::new(
            InvocationId::new(),
            &f,
            old,
            old,
            ActivationResponse::success(json!({})),
        ));
        aged.flush().await.unwrap();
        assert!(aged.is_empty());
    }

    #[tokio::test]
    async fn listings_by_name_and_namespace_follow_evictions_and_updates() {
        let log = ActivationLog::in_memory(Retention { max_records: 6, ..Default::default() });
        let now = SystemTime::now();
        let add = |id: &str, name: &str, ns: &str| {
            let f = FunctionRef::new(name, ns);
            let id = InvocationId::from_string(id);
            log.insert(Activation::new(id, &f, now, now, ActivationResponse::success(json!({}))));
        };
        // Eight records, six kept: a0 and b1 go.
        for i in 0..8 {
            let (name, ns) = if i % 2 == 0 { ("a", "x") } else { ("b", "y") };
            add(&format!("{name}{i}"), name, ns);
        }
        let ids = |q: ActivationQuery| -> Vec<String> {
            log.list(&q).into_iter().map(|a| a.activation_id.to_string()).collect()
        };
        let by_name = |n: &str| ActivationQuery { name: Some(n.into()), ..Default::default() };
        assert_eq!(ids(by_name("a")), ["a6", "a4", "a2"]);
        assert_eq!(ids(by_name("x/a")), Vec::<String>::new(), "a path's last segment is a name");
        assert_eq!(ids(by_name("nothing")), Vec::<String>::new());
        let in_y = ActivationQuery { namespace: Some("y".into()), skip: 1, ..Default::default() };
        assert_eq!(ids(in_y), ["b5", "b3"]);
        let both = ActivationQuery {
            namespace: Some("x".into()),
            name: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(ids(both), Vec::<String>::new());
        // A record renamed by an update is found under its new name only.
        assert!(log.update(&InvocationId::from_string("a4"), |a| a.name = "c".into()));
        assert_eq!(ids(by_name("a")), ["a6", "a2"]);
        assert_eq!(ids(by_name("c")), ["a4"]);
        // Replacing a record moves it to the newest place, once.
        add("a2", "a", "x");
        assert_eq!(ids(by_name("a")), ["a2", "a6"]);
        assert_eq!(log.len(), 6);
    }
}

//! The writer thread both embedded stores ([`crate::redb_store::RedbStore`],
//! [`crate::log_store::LogStore`]) write through. Callers queue batches in order; a commit
//! wakes the writer and waits for its answer, an apply only queues (it rides with the next
//! commit, or is written [`APPLY_DELAY`] later): a worker acknowledging thousands of calls a
//! second costs the writer no wake-up each. Closing ends the thread once it has written
//! what was queued.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use faas_core::state::StateOp;
use faas_core::{Error, Result};

/// The longest an applied batch waits for a commit to ride with before it is written alone.
pub(crate) const APPLY_DELAY: Duration = Duration::from_millis(5);

/// Batches queued past this many wake the writer even without a commit (bounded memory).
const MAX_QUEUED: usize = 4096;

/// One batch for the writer: a commit carries where its answer goes, an apply nothing.
pub(crate) struct Write {
    pub ops: Vec<StateOp>,
    pub done: Option<Answer>,
}

/// Where a commit's answer goes: the task waiting for it.
pub(crate) struct Answer {
    tx: oneshot::Sender<Result<()>>,
}

/// Answers commits (each wakes its waiting task).
pub(crate) fn answer_all(answers: impl IntoIterator<Item = (Answer, Result<()>)>) {
    for (answer, result) in answers {
        let _ = answer.tx.send(result);
    }
}

#[derive(Default)]
struct Queue {
    writes: Vec<Write>,
    /// Batches queued into `writes` (consecutive applies share one [`Write`]).
    batches: usize,
    /// Commits among `writes`.
    commits: usize,
    /// When the oldest write in `writes` was queued.
    since: Option<Instant>,
    /// The writer is waiting on the condition variable (only then does queueing wake it).
    writer_waiting: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What [`Rounds::next`] gives the writer.
pub(crate) enum Round {
    /// Batches to write, in the order they were queued.
    Writes(Vec<Write>),
    /// Nothing came within the time asked for.
    Idle,
    /// Closed, and everything queued was handed out.
    Closed,
}

/// The writer's side: the rounds of batches to write.
pub(crate) struct Rounds {
    shared: std::sync::Arc<Shared>,
}

impl Rounds {
    /// Waits for a round: every batch queued, once one of them is a commit, the oldest
    /// apply has waited [`APPLY_DELAY`], too many are queued, or the queue is closed.
    /// [`Round::Idle`] once `idle` passed with nothing queued (`None`: wait as long as it
    /// takes).
    pub fn next(&self, idle: Option<Duration>) -> Round {
        let start = Instant::now();
        let mut q = self.shared.lock();
        loop {
            let due = q.commits > 0
                || q.closed
                || q.batches >= MAX_QUEUED
                || q.since.is_some_and(|s| s.elapsed() >= APPLY_DELAY);
            if due && !q.writes.is_empty() {
                q.commits = 0;
                q.batches = 0;
                q.since = None;
                return Round::Writes(std::mem::take(&mut q.writes));
            }
            if q.closed {
                return Round::Closed;
            }
            let wait = match (q.since, idle) {
                (Some(s), _) => Some(APPLY_DELAY.saturating_sub(s.elapsed())),
                (None, Some(idle)) => match idle.checked_sub(start.elapsed()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Round::Idle,
                },
                (None, None) => None,
            };
            q.writer_waiting = true;
            q = match wait {
                Some(wait) => {
                    self.shared.wake.wait_timeout(q, wait).unwrap_or_else(|p| p.into_inner()).0
                }
                None => self.shared.wake.wait(q).unwrap_or_else(|p| p.into_inner()),
            };
            q.writer_waiting = false;
        }
    }
}

/// The callers' side of a store's writer thread, and the thread.
pub(crate) struct WriterThread {
    shared: std::sync::Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WriterThread {
    /// Starts the thread `name` running `run` over the rounds queued for it.
    pub fn spawn(name: &str, run: impl FnOnce(Rounds) + Send + 'static) -> std::io::Result<Self> {
        let shared = std::sync::Arc::new(Shared::default());
        let rounds = Rounds { shared: shared.clone() };
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || run(rounds))?;
        Ok(WriterThread { shared, thread: Mutex::new(Some(thread)) })
    }

    /// Queues `write`; `false` once closed.
    fn queue(&self, write: Write) -> bool {
        let commit = write.done.is_some();
        let mut q = self.shared.lock();
        if q.closed {
            return false;
        }
        // An apply right after another apply joins its batch: one frame (or transaction)
        // for the worker's records and acknowledgements of many calls, instead of one
        // each. Both were waiting for the same write; together they are still written
        // whole or not at all, in order.
        match q.writes.last_mut() {
            Some(last) if !commit && last.done.is_none() => {
                let mut ops = write.ops;
                last.ops.append(&mut ops);
            }
            _ => q.writes.push(write),
        }
        q.batches += 1;
        if commit {
            q.commits += 1;
        }
        let first = q.since.is_none();
        if first {
            q.since = Some(Instant::now());
        }
        // A commit is waited for; an apply only needs the writer to know when its delay
        // ends (the first one queued) or that the queue is full. A writer that is not
        // waiting looks at the queue before it waits again: no wake-up needed.
        let wake = q.writer_waiting && (commit || first || q.batches >= MAX_QUEUED);
        drop(q);
        if wake {
            self.shared.wake.notify_one();
        }
        true
    }

    /// Queues `ops` and waits for the writer's answer; `closed()` once the store is closed.
    pub async fn commit(&self, ops: Vec<StateOp>, closed: impl Fn() -> Error) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let answer = Answer { tx };
        if !self.queue(Write { ops, done: Some(answer) }) {
            return Err(closed());
        }
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Queues `ops` without waiting; `false` once the store is closed.
    pub fn apply(&self, ops: Vec<StateOp>) -> bool {
        self.queue(Write { ops, done: None })
    }

    /// Closes the queue and waits for the thread to write what was queued and end; `false`
    /// if it panicked.
    pub async fn close(&self) -> bool {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        match thread {
            Some(thread) => {
                matches!(tokio::task::spawn_blocking(move || thread.join()).await, Ok(Ok(())))
            }
            None => true,
        }
    }
}

impl Drop for WriterThread {
    /// A store dropped without `close` still ends its thread (after writing what was
    /// queued), without waiting for it.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

//! The writer thread both embedded stores ([`crate::redb_store::RedbStore`],
//! [`crate::log_store::LogStore`]) write through. Callers queue batches in order; a commit
//! wakes the writer and waits for its answer, an apply only queues (it rides with the next
//! commit, or is written [`APPLY_DELAY`] later): a worker acknowledging thousands of calls a
//! second costs the writer no wake-up each. Closing ends the thread once it has written
//! what was queued.
//!
//! Answers go back with one wake-up per runtime per round, not one per commit: a commit made
//! on a current-thread runtime (the gateway runs one per CPU) is answered through that
//! runtime's [`Mailbox`], whose one task hands the answers to the waiting tasks on their own
//! thread. Elsewhere each commit's answer wakes its task directly.

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{oneshot, Notify};

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

/// Where a commit's answer goes: the task waiting for it, through the mailbox of the
/// runtime it committed from when it has one.
pub(crate) struct Answer {
    tx: oneshot::Sender<Result<()>>,
    mailbox: Option<Arc<Mailbox>>,
}

type Delivery = (oneshot::Sender<Result<()>>, Result<()>);

/// Answers commits: those through a mailbox are queued there, and each mailbox touched is
/// woken once; the others wake their tasks directly.
pub(crate) fn answer_all(answers: impl IntoIterator<Item = (Answer, Result<()>)>) {
    let mut touched: Vec<Arc<Mailbox>> = Vec::new();
    for (answer, result) in answers {
        let undelivered = match answer.mailbox {
            Some(mailbox) => match mailbox.push((answer.tx, result)) {
                Ok(()) => {
                    if !touched.iter().any(|m| Arc::ptr_eq(m, &mailbox)) {
                        touched.push(mailbox);
                    }
                    None
                }
                Err(delivery) => Some(delivery),
            },
            None => Some((answer.tx, result)),
        };
        if let Some((tx, result)) = undelivered {
            let _ = tx.send(result);
        }
    }
    for mailbox in touched {
        mailbox.wake.notify_one();
    }
}

/// The answers waiting for one current-thread runtime's delivery task.
pub(crate) struct Mailbox {
    runtime: tokio::runtime::Id,
    /// `None` once the delivery task is gone (its runtime shut down): answers then go
    /// straight to their tasks.
    pending: Mutex<Option<Vec<Delivery>>>,
    wake: Notify,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Option<Vec<Delivery>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `delivery` for the task; gives it back if the task is gone.
    fn push(&self, delivery: Delivery) -> std::result::Result<(), Delivery> {
        match &mut *self.lock() {
            Some(pending) => {
                pending.push(delivery);
                Ok(())
            }
            None => Err(delivery),
        }
    }

    fn open(&self) -> bool {
        self.lock().is_some()
    }

    /// The mailbox of the current-thread runtime this thread is in (started with its
    /// delivery task on first use); `None` outside one.
    fn current() -> Option<Arc<Mailbox>> {
        thread_local! {
            static MAILBOX: RefCell<Option<Arc<Mailbox>>> = const { RefCell::new(None) };
        }
        let handle = Handle::try_current().ok()?;
        if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
            return None;
        }
        let runtime = handle.id();
        MAILBOX.with(|cell| {
            let mut cell = cell.try_borrow_mut().ok()?;
            if let Some(mailbox) = cell.as_ref().filter(|m| m.runtime == runtime && m.open()) {
                return Some(mailbox.clone());
            }
            let mailbox = Arc::new(Mailbox {
                runtime,
                pending: Mutex::new(Some(Vec::new())),
                wake: Notify::new(),
            });
            let closing = Closing(mailbox.clone());
            handle.spawn(async move {
                let mailbox = closing.0.clone();
                loop {
                    mailbox.wake.notified().await;
                    let answers = mailbox.lock().as_mut().map(std::mem::take).unwrap_or_default();
                    for (tx, result) in answers {
                        let _ = tx.send(result);
                    }
                }
            });
            *cell = Some(mailbox.clone());
            Some(mailbox)
        })
    }
}

/// Held by a mailbox's delivery task: when the task is dropped (its runtime shuts down),
/// the mailbox closes and what it still held is delivered directly.
struct Closing(Arc<Mailbox>);

impl Drop for Closing {
    fn drop(&mut self) {
        let left = self.0.lock().take().unwrap_or_default();
        for (tx, result) in left {
            let _ = tx.send(result);
        }
    }
}

#[derive(Default)]
struct Queue {
    writes: Vec<Write>,
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
                || q.writes.len() >= MAX_QUEUED
                || q.since.is_some_and(|s| s.elapsed() >= APPLY_DELAY);
            if due && !q.writes.is_empty() {
                q.commits = 0;
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
        q.writes.push(write);
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
        let wake = q.writer_waiting && (commit || first || q.writes.len() >= MAX_QUEUED);
        drop(q);
        if wake {
            self.shared.wake.notify_one();
        }
        true
    }

    /// Queues `ops` and waits for the writer's answer; `closed()` once the store is closed.
    pub async fn commit(&self, ops: Vec<StateOp>, closed: impl Fn() -> Error) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let answer = Answer { tx, mailbox: Mailbox::current() };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that answers every commit of a round with `Ok` at once.
    fn answering_writer() -> WriterThread {
        WriterThread::spawn("test-writer", |rounds| {
            while let Round::Writes(round) = rounds.next(None) {
                answer_all(round.into_iter().filter_map(|w| w.done).map(|a| (a, Ok(()))));
            }
        })
        .unwrap()
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn commits_on_current_thread_runtimes_are_answered_through_their_mailbox() {
        let writer = Arc::new(answering_writer());
        let closed = || Error::internal("closed");
        // Two runtimes entered in turn on this thread: each answer reaches its own runtime,
        // many commits of one round with one mailbox.
        for _ in 0..2 {
            for rt in [current_thread(), current_thread()] {
                let w = writer.clone();
                rt.block_on(async move {
                    let commits = (0..64).map(|_| {
                        let w = w.clone();
                        tokio::spawn(async move { w.commit(Vec::new(), closed).await })
                    });
                    for c in commits.collect::<Vec<_>>() {
                        c.await.unwrap().unwrap();
                    }
                    let mailbox = Mailbox::current().expect("a current-thread runtime's mailbox");
                    assert_eq!(mailbox.runtime, Handle::current().id());
                });
            }
        }
        // A multi-thread runtime has none: answers go straight to the tasks.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        rt.block_on(async {
            assert!(Mailbox::current().is_none());
            writer.commit(Vec::new(), closed).await.unwrap();
        });
    }

    #[test]
    fn a_mailbox_whose_runtime_is_gone_delivers_directly() {
        let rt = current_thread();
        let mailbox = rt.block_on(async { Mailbox::current().unwrap() });
        drop(rt);
        assert!(!mailbox.open(), "the delivery task closed it when dropped");
        let (tx, rx) = oneshot::channel();
        answer_all([(Answer { tx, mailbox: Some(mailbox) }, Ok(()))]);
        assert!(matches!(rx.blocking_recv(), Ok(Ok(()))));
        // What was pending when the task was dropped is delivered too.
        let rt = current_thread();
        let mailbox = rt.block_on(async { Mailbox::current().unwrap() });
        let (tx, rx) = oneshot::channel();
        assert!(mailbox.push((tx, Ok(()))).is_ok());
        drop(rt);
        assert!(matches!(rx.blocking_recv(), Ok(Ok(()))));
    }
}

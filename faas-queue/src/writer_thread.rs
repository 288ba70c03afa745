//! The writer thread both embedded stores ([`crate::redb_store::RedbStore`],
//! [`crate::log_store::LogStore`]) write through: callers hand it batches over a channel
//! and, for a commit, wait for its answer; closing the channel ends the thread once it has
//! written what it was sent.

use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

use faas_core::state::StateOp;
use faas_core::{Error, Result};

/// One batch for the writer: a commit carries the sender of its answer, an apply none.
pub(crate) struct Write {
    pub ops: Vec<StateOp>,
    pub done: Option<tokio::sync::oneshot::Sender<Result<()>>>,
}

/// The channel to a store's writer thread, and the thread.
pub(crate) struct WriterThread {
    writes: Mutex<Option<mpsc::Sender<Write>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WriterThread {
    /// Starts the thread `name` running `run` over the batches sent to it.
    pub fn spawn(
        name: &str,
        run: impl FnOnce(mpsc::Receiver<Write>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Write>();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || run(rx))?;
        Ok(WriterThread { writes: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
    }

    fn send(&self, write: Write) -> std::result::Result<(), Write> {
        let writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        match writes.as_ref() {
            Some(tx) => tx.send(write).map_err(|e| e.0),
            None => Err(write),
        }
    }

    /// Sends `ops` and waits for the writer's answer; `closed()` once the store is closed.
    pub async fn commit(&self, ops: Vec<StateOp>, closed: impl Fn() -> Error) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.send(Write { ops, done: Some(tx) }).is_err() {
            return Err(closed());
        }
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Sends `ops` without waiting; `false` once the store is closed.
    pub fn apply(&self, ops: Vec<StateOp>) -> bool {
        self.send(Write { ops, done: None }).is_ok()
    }

    /// Closes the channel and waits for the thread to write what it was sent and end;
    /// `false` if it panicked.
    pub async fn close(&self) -> bool {
        drop(self.writes.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        match thread {
            Some(thread) => {
                matches!(tokio::task::spawn_blocking(move || thread.join()).await, Ok(Ok(())))
            }
            None => true,
        }
    }
}

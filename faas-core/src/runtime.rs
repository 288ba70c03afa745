//! Threads that each run a single-threaded tokio runtime, for servers that spread their
//! connections over the CPUs (one runtime per thread, no work stealing between them): the
//! gateway's [`serve_with`](https://docs.rs/faas-http) with `threads`, and the watchdog.
//!
//! ```
//! # fn main() -> std::io::Result<()> {
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let threads = faas_core::runtime::RuntimeThreads::start(2, "worker")?;
//!     let (tx, rx) = tokio::sync::oneshot::channel();
//!     threads.handle(0).spawn(async move { tx.send(std::thread::current().name().map(String::from)) });
//!     assert_eq!(rx.await.unwrap().as_deref(), Some("worker-1"));
//!     threads.stop().await;
//!     Ok(())
//! })
//! # }
//! ```

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A set of threads, each running its own single-threaded runtime until [`stop`] is called.
/// Tasks are given to a thread with [`RuntimeThreads::handle`].
///
/// [`stop`]: RuntimeThreads::stop
#[derive(Debug)]
pub struct RuntimeThreads {
    threads: Vec<RuntimeThread>,
}

#[derive(Debug)]
struct RuntimeThread {
    handle: Handle,
    stop: oneshot::Sender<()>,
    stopped: oneshot::Receiver<()>,
}

impl RuntimeThreads {
    /// Starts `n` threads named `{name}-1` .. `{name}-{n}` (none when `n` is 0), each with a
    /// single-threaded runtime with time and I/O enabled.
    pub fn start(n: usize, name: &str) -> io::Result<RuntimeThreads> {
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = rt.handle().clone();
            let (stop, stop_rx) = oneshot::channel::<()>();
            let (stopped_tx, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("{name}-{}", i + 1)).spawn(move || {
                // Spawned tasks run while this thread is inside `block_on`.
                let _ = rt.block_on(stop_rx);
                drop(rt);
                let _ = stopped_tx.send(());
            })?;
            threads.push(RuntimeThread { handle, stop, stopped });
        }
        Ok(RuntimeThreads { threads })
    }

    /// How many threads there are.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// The runtime of thread `i` (modulo the number of threads), to spawn tasks on.
    ///
    /// # Panics
    /// When there are no threads.
    pub fn handle(&self, i: usize) -> &Handle {
        &self.threads[i % self.threads.len()].handle
    }

    /// Stops every thread, dropping the tasks still on it, and waits until they are gone.
    pub async fn stop(self) {
        for t in self.threads {
            let _ = t.stop.send(());
            let _ = t.stopped.await;
        }
    }
}

/// A small number for the calling thread, given out round-robin the first time a thread
/// asks (0, 1, 2, ...) and the same for the thread's life: an index into per-thread shards
/// of a counter or store, so that threads don't write to the same cache lines.
pub fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

/// How many shards a per-thread sharded structure should have: the number of CPUs, at
/// most 16.
pub fn shard_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16)
}

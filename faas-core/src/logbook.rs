//! A function's recent log lines, kept in memory: what a backend that collects its
//! instances' output itself (the in-memory and process backends) answers
//! [`Logs::logs`](crate::invoker::Logs::logs) from.
//!
//! A [`LogBook`] keeps the last lines of one function, bounded both in lines and in bytes,
//! numbers them (so an invocation's own lines can be picked out by the numbers taken before
//! and after it), and hands each new line to the readers following the function. The
//! follow channel exists only while someone follows: a broadcast channel allocates all of
//! its slots when made (1,024 lines, about 140 KiB), so an idle function costs none of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::invocation::FunctionRef;
use crate::invocation::LogSink;
use crate::invoker::{LogEntry, LogStream, LogsRequest};
use crate::util::lock;

/// The backends' default bound on the bytes of a function's kept lines: 8 MiB.
pub const DEFAULT_LOG_BYTES_LIMIT: usize = 8 << 20;

/// How many lines a follower may fall behind before it misses some.
pub const FOLLOW_BACKLOG: usize = 1024;

/// One function's kept log lines and its followers (see the [module docs](self)).
pub struct LogBook {
    function: Arc<FunctionRef>,
    limit: usize,
    bytes_limit: usize,
    /// The number the next line gets (written with `kept` locked).
    next_seq: AtomicU64,
    kept: Mutex<Kept>,
    followers: Mutex<Followers>,
}

/// The kept lines, oldest first, with their numbers, and the bytes they count.
#[derive(Default)]
struct Kept {
    lines: VecDeque<(u64, LogEntry)>,
    bytes: usize,
}

/// The channel that readers following a function receive new lines on.
enum Followers {
    /// Nobody follows.
    None,
    /// Someone follows (or did, until the next line finds no receiver).
    Open(broadcast::Sender<LogEntry>),
    /// The function is removed: followers' streams end, and none start.
    Closed,
}

/// What a kept line counts against the book's byte bound.
fn entry_bytes(e: &LogEntry) -> usize {
    std::mem::size_of::<(u64, LogEntry)>()
        + e.name.len()
        + e.namespace.len()
        + e.instance.len()
        + e.text.len()
}

impl std::fmt::Debug for LogBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogBook")
            .field("function", &self.function)
            .field("limit", &self.limit)
            .field("bytes_limit", &self.bytes_limit)
            .field("next_seq", &self.seq())
            .finish_non_exhaustive()
    }
}

impl LogBook {
    /// An empty book for `function` keeping at most `limit` lines and `bytes_limit` bytes
    /// of them (each line counts its text, its names and a fixed overhead); the oldest lines
    /// go first. A bound of 0 keeps nothing, though followers still get every line.
    pub fn new(function: Arc<FunctionRef>, limit: usize, bytes_limit: usize) -> Self {
        LogBook {
            function,
            limit,
            bytes_limit,
            next_seq: AtomicU64::new(0),
            kept: Mutex::new(Kept::default()),
            followers: Mutex::new(Followers::None),
        }
    }

    /// The function whose lines these are.
    pub fn function(&self) -> &Arc<FunctionRef> {
        &self.function
    }

    /// A sink writing `instance`'s lines here (a trailing newline is dropped).
    pub fn sink(self: &Arc<Self>, instance: Arc<str>) -> LogSink {
        let book = self.clone();
        LogSink::new(move |line| {
            book.push(&instance, line.trim_end_matches(['\n', '\r']).to_string());
        })
    }

    /// The number the next line will get: the lines pushed between two readings are those
    /// numbered from the first up to (not including) the second.
    pub fn seq(&self) -> u64 {
        self.next_seq.load(Ordering::Acquire)
    }

    /// Keeps `text` as a line of `instance`, stamped now, and sends it to the followers.
    pub fn push(&self, instance: &str, text: String) {
        self.push_with(instance, text, |_| ())
    }

    /// [`LogBook::push`], calling `f` with the line as kept before the book lets go of its
    /// lock (so `f` must be quick: it is for copying what a caller writes elsewhere, as a
    /// log file, after the call).
    ///
    /// Lines are stamped and numbered with the lines locked, so lines written at once from
    /// several writers (an instance's stdout and stderr) are kept, numbered and sent to
    /// followers in time order.
    pub fn push_with<R>(&self, instance: &str, text: String, f: impl FnOnce(&LogEntry) -> R) -> R {
        let mut kept = lock(&self.kept);
        let entry = LogEntry {
            name: self.function.name.clone(),
            namespace: self.function.namespace.clone(),
            instance: instance.to_string(),
            timestamp: SystemTime::now(),
            text,
        };
        let out = f(&entry);
        let seq = self.next_seq.load(Ordering::Relaxed);
        self.next_seq.store(seq + 1, Ordering::Release);
        // Sent with the lines locked, as `read` subscribes: a new follower gets each line
        // once, from what is kept or from the channel. Copied only when someone follows.
        let mut followers = lock(&self.followers);
        if let Followers::Open(tx) = &*followers {
            if tx.send(entry.clone()).is_err() {
                // Every follower is gone: free the channel's slots.
                *followers = Followers::None;
            }
        }
        drop(followers);
        kept.bytes += entry_bytes(&entry);
        kept.lines.push_back((seq, entry));
        while kept.lines.len() > self.limit || kept.bytes > self.bytes_limit {
            match kept.lines.pop_front() {
                Some((_, old)) => kept.bytes -= entry_bytes(&old),
                None => break,
            }
        }
        out
    }

    /// The texts of `instance`'s kept lines numbered `from` up to (not including) `to`
    /// (see [`LogBook::seq`]).
    pub fn lines(&self, instance: &str, from: u64, to: u64) -> Vec<String> {
        if from >= to {
            return Vec::new();
        }
        lock(&self.kept)
            .lines
            .iter()
            .filter(|(s, e)| *s >= from && *s < to && e.instance == instance)
            .map(|(_, e)| e.text.clone())
            .collect()
    }

    /// The answer to `request` (its function is not checked): the kept lines it selects
    /// and, if it follows, each new line that passes its filters until the book is closed.
    pub fn read(&self, request: &LogsRequest) -> LogStream {
        let kept = lock(&self.kept);
        let selected = request.select(kept.lines.iter().map(|(_, e)| e));
        // Subscribed with the lines locked, so no line falls between those selected and
        // those received.
        let follow = if request.follow { self.follow() } else { None };
        drop(kept);
        request.stream(selected, follow)
    }

    fn follow(&self) -> Option<broadcast::Receiver<LogEntry>> {
        let mut followers = lock(&self.followers);
        match &*followers {
            Followers::Closed => None,
            Followers::Open(tx) => Some(tx.subscribe()),
            Followers::None => {
                let (tx, rx) = broadcast::channel(FOLLOW_BACKLOG);
                *followers = Followers::Open(tx);
                Some(rx)
            }
        }
    }

    /// Ends the followers' streams and refuses new followers (the function is removed);
    /// lines are still kept.
    pub fn close(&self) {
        *lock(&self.followers) = Followers::Closed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    impl LogBook {
        /// The texts of all kept lines, oldest first.
        fn texts(&self) -> Vec<String> {
            lock(&self.kept).lines.iter().map(|(_, e)| e.text.clone()).collect()
        }

        /// Whether anyone follows (a channel is open).
        fn followed(&self) -> bool {
            matches!(*lock(&self.followers), Followers::Open(_))
        }
    }

    fn book(limit: usize, bytes_limit: usize) -> Arc<LogBook> {
        Arc::new(LogBook::new(Arc::new(FunctionRef::default_ns("f")), limit, bytes_limit))
    }

    fn texts(entries: &[LogEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.text.as_str()).collect()
    }

    #[test]
    fn bounded_in_lines_and_ranged_by_number() {
        let book = book(3, usize::MAX);
        let sink = book.sink("i1".into());
        let other = book.sink("i2".into());
        sink.log("a\n");
        let from = book.seq();
        other.log("b");
        sink.log("c\r\n");
        let to = book.seq();
        sink.log("d");
        sink.log("e");
        assert_eq!(book.texts(), ["c", "d", "e"]);
        assert_eq!(book.lines("i1", from, to), ["c"]);
        assert!(book.lines("i2", from, to).is_empty(), "b was dropped by the bound");
        assert!(book.lines("i1", to, from).is_empty());
    }

    #[test]
    fn bounded_in_bytes() {
        let one = entry_bytes(&LogEntry {
            name: "f".into(),
            namespace: crate::spec::DEFAULT_NAMESPACE.into(),
            instance: "i".into(),
            timestamp: SystemTime::UNIX_EPOCH,
            text: "x".repeat(100),
        });
        let book = book(1000, 3 * one);
        for i in 0..10 {
            book.push("i", format!("{i}{}", "x".repeat(99)));
        }
        let kept = book.texts();
        assert_eq!(kept.len(), 3, "three lines of {one} bytes fit");
        assert!(kept[0].starts_with('7') && kept[2].starts_with('9'));
        // A line larger than the whole bound is not kept, and empties the book.
        book.push("i", "y".repeat(4 * one));
        assert!(book.texts().is_empty());
    }

    #[tokio::test]
    async fn a_follow_channel_exists_only_while_someone_follows() {
        let book = book(100, 1 << 20);
        let follow = LogsRequest { follow: true, ..Default::default() };
        book.push("f-1", "kept".into());
        assert!(!book.followed());
        let mut a = book.follow().expect("a live function can be followed");
        let mut b = book.follow().expect("by more than one reader");
        book.push("f-1", "seen".into());
        assert_eq!(a.try_recv().map(|e| e.text).as_deref(), Ok("seen"));
        assert_eq!(b.try_recv().map(|e| e.text).as_deref(), Ok("seen"));
        drop(a);
        book.push("f-1", "one left".into());
        assert!(book.followed());
        assert_eq!(b.try_recv().map(|e| e.text).as_deref(), Ok("one left"));
        drop(b);
        // The first line with nobody to receive it frees the channel.
        book.push("f-1", "unfollowed".into());
        assert!(!book.followed());
        assert_eq!(book.texts(), ["kept", "seen", "one left", "unfollowed"]);
        // Following again works; closing ends the stream and refuses new followers.
        let stream = book.read(&follow);
        assert!(book.followed());
        book.close();
        let read: Vec<LogEntry> = stream.map(|e| e.expect("an entry")).collect().await;
        assert_eq!(texts(&read), ["kept", "seen", "one left", "unfollowed"]);
        assert!(book.follow().is_none());
        book.push("f-1", "after removal".into());
        assert!(!book.followed());
    }

    #[tokio::test]
    async fn a_reader_gets_what_is_kept_then_what_comes() {
        let book = book(100, 1 << 20);
        book.push("a", "old".into());
        book.push("b", "other".into());
        let request =
            LogsRequest { follow: true, instance: Some("a".into()), ..Default::default() };
        let mut stream = book.read(&request);
        book.push("b", "skipped".into());
        book.push("a", "new".into());
        let mut next = async || stream.next().await.and_then(Result::ok).map(|e| e.text);
        assert_eq!(next().await.as_deref(), Some("old"));
        assert_eq!(next().await.as_deref(), Some("new"));
        book.close();
        assert_eq!(next().await, None, "closing ends the stream");
    }

    #[test]
    fn lines_pushed_at_once_are_kept_and_numbered_in_time_order() {
        let book = book(100_000, usize::MAX);
        std::thread::scope(|s| {
            for instance in ["stdout", "stderr"] {
                let book = &book;
                s.spawn(move || {
                    for i in 0..20_000 {
                        book.push(instance, i.to_string());
                    }
                });
            }
        });
        let kept = lock(&book.kept);
        assert_eq!(kept.lines.len(), 40_000);
        for (i, w) in kept.lines.iter().collect::<Vec<_>>().windows(2).enumerate() {
            assert!(w[0].1.timestamp <= w[1].1.timestamp, "line {i} is newer than the next");
            assert_eq!(w[0].0 + 1, w[1].0, "numbers run in the order kept");
        }
    }
}

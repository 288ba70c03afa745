//! Logs from the containers' log streams, one stream per instance, merged with the lines
//! retained from replicas that were removed.
//!
//! A replica's `docker logs` go with its container. So before the backend removes a replica
//! (scale down, scale to zero, update, crash replacement) it copies the replica's last lines
//! into its function's [`RetainedLogs`], a ring bounded in lines and bytes
//! ([`LogRetention`]), which `logs` merges (by timestamp) with the live containers' lines.
//! The ring lives as long as the function: removing the function drops it (as it does with a
//! backend restart, the ring being in memory only).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{KillContainerOptions, LogsOptions};
use faas_core::spec::rfc3339;
use faas_core::util::lock;
use faas_core::{Error, LogEntry, LogStream, LogsRequest, Result};
use futures::{StreamExt, TryStreamExt};

use crate::engine::{map_err, status_of};
use crate::inner::Inner;
use crate::state::FunctionState;

/// Default of [`LogRetention::lines`]: lines kept per function from its removed replicas.
pub const DEFAULT_RETAINED_LOG_LINES: usize = 10_000;

/// Default of [`LogRetention::bytes`]: bytes kept per function from its removed replicas
/// (8 MiB).
pub const DEFAULT_RETAINED_LOG_BYTES: usize = 8 << 20;

/// How long copying one replica's lines may take before its removal goes ahead without them.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of its removed replicas' logs a function keeps (see
/// [`DockerInvokerBuilder::log_retention`](crate::DockerInvokerBuilder::log_retention)).
///
/// Both bounds hold per function at all times; the oldest lines (by timestamp) go first. A
/// line's size counts its text, its function, namespace, instance and container id, and a
/// fixed per-line overhead ([`LogRetention::LINE_OVERHEAD`]), so `bytes` bounds the memory
/// the retained lines take. A bound of 0 disables retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRetention {
    /// At most this many lines per function.
    pub lines: usize,
    /// At most this many bytes per function.
    pub bytes: usize,
}

impl LogRetention {
    /// The bytes each retained line counts on top of its strings (the entry's fixed size).
    pub const LINE_OVERHEAD: usize = std::mem::size_of::<Retained>();

    /// Whether anything is kept at all.
    pub fn enabled(&self) -> bool {
        self.lines > 0 && self.bytes > 0
    }
}

impl Default for LogRetention {
    fn default() -> Self {
        LogRetention { lines: DEFAULT_RETAINED_LOG_LINES, bytes: DEFAULT_RETAINED_LOG_BYTES }
    }
}

/// One retained line and the container it came from (so `instance=<id prefix>` still
/// selects it).
#[derive(Debug, Clone)]
pub(crate) struct Retained {
    container: String,
    entry: LogEntry,
}

impl Retained {
    fn size(&self) -> usize {
        LogRetention::LINE_OVERHEAD
            + self.container.len()
            + self.entry.name.len()
            + self.entry.namespace.len()
            + self.entry.instance.len()
            + self.entry.text.len()
    }
}

/// The lines of a function's removed replicas, sorted by timestamp, within a
/// [`LogRetention`].
#[derive(Debug)]
pub(crate) struct RetainedLogs {
    bound: LogRetention,
    lines: VecDeque<Retained>,
    bytes: usize,
}

impl RetainedLogs {
    pub fn new(bound: LogRetention) -> Self {
        RetainedLogs { bound, lines: VecDeque::new(), bytes: 0 }
    }

    fn trim(&mut self) {
        while !self.lines.is_empty()
            && (self.lines.len() > self.bound.lines || self.bytes > self.bound.bytes)
        {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.size();
            }
        }
    }

    /// Appends a line newer than every line held (one container's lines arrive in order).
    fn push_newest(&mut self, r: Retained) {
        self.bytes += r.size();
        self.lines.push_back(r);
        self.trim();
    }

    /// Takes in another ring's lines, keeping the whole sorted by timestamp.
    fn absorb(&mut self, other: RetainedLogs) {
        if other.lines.is_empty() {
            return;
        }
        let sorted = self
            .lines
            .back()
            .zip(other.lines.front())
            .is_none_or(|(a, b)| a.entry.timestamp <= b.entry.timestamp);
        self.bytes += other.bytes;
        self.lines.extend(other.lines);
        if !sorted {
            // Stable: lines of one instance with equal timestamps keep their order.
            self.lines.make_contiguous().sort_by_key(|r| r.entry.timestamp);
        }
        self.trim();
    }

    /// The retained lines `keep` selects, oldest first.
    fn select(&self, keep: impl Fn(&Retained) -> bool) -> Vec<LogEntry> {
        self.lines.iter().filter(|r| keep(r)).map(|r| r.entry.clone()).collect()
    }

    /// How many lines are held (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lines.len()
    }
}

/// Splits one chunk of `docker logs --timestamps` output into entries.
pub(crate) fn entries(
    function: &str,
    namespace: &str,
    instance: &str,
    chunk: &[u8],
) -> Vec<LogEntry> {
    String::from_utf8_lossy(chunk)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (ts, text) = match line.split_once(' ') {
                Some((ts, text)) => match rfc3339::parse(ts) {
                    Ok(t) => (t, text),
                    Err(_) => (SystemTime::now(), line),
                },
                None => (SystemTime::now(), line),
            };
            LogEntry {
                name: function.to_string(),
                namespace: namespace.to_string(),
                instance: instance.to_string(),
                timestamp: ts,
                text: text.to_string(),
            }
        })
        .collect()
}

/// Whether the `instance` filter selects an instance by name or container id prefix.
fn selects(filter: Option<&str>, name: &str, container: &str) -> bool {
    filter.is_none_or(|i| i == name || container.starts_with(i))
}

impl Inner {
    /// Copies the last lines of a replica's container (at most the retention bound) into
    /// its function's retained logs. Call it before removing the container; a container
    /// already gone, a removed function or an engine error leave the ring as it is.
    pub(crate) async fn retain_logs(&self, f: &FunctionState, id: &str, instance: &str) {
        let bound = self.settings.log_retention;
        if !bound.enabled() || f.removed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let opts = LogsOptions {
            follow: false,
            stdout: true,
            stderr: true,
            timestamps: true,
            tail: bound.lines.to_string(),
            ..Default::default()
        };
        let (name, ns) = (&f.fref.name, &f.fref.namespace);
        // Bounded while reading too: a chatty replica's tail cannot balloon memory.
        let mut got = RetainedLogs::new(bound);
        let read = async {
            let mut s = self.docker.logs(id, Some(opts));
            while let Some(chunk) = s.next().await {
                match chunk {
                    Ok(c) => {
                        for entry in entries(name, ns, instance, &c.into_bytes()) {
                            got.push_newest(Retained { container: id.to_string(), entry });
                        }
                    }
                    Err(e) if status_of(&e) == Some(404) => break,
                    Err(e) => {
                        tracing::warn!(instance, error = %e, "reading a removed replica's logs");
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(CAPTURE_TIMEOUT, read).await.is_err() {
            tracing::warn!(instance, "reading a removed replica's logs timed out");
        }
        lock(&f.retained).absorb(got);
    }

    /// Removes a replica's container keeping its log lines: kills it (so it writes nothing
    /// after the copy; a paused one writes nothing anyway), copies its lines into the
    /// function's retained logs, then removes it.
    pub(crate) async fn retire_container(
        &self,
        f: &FunctionState,
        id: &str,
        instance: &str,
    ) -> Result<()> {
        if self.settings.log_retention.enabled() {
            let kill = KillContainerOptions { signal: "KILL".to_string() };
            // Fails for a paused, stopped or missing container: nothing more to wait for.
            let _ = self.docker.kill_container(id, Some(kill)).await;
            self.retain_logs(f, id, instance).await;
        }
        self.remove_container(id).await
    }

    pub(crate) async fn logs(self: &Arc<Self>, req: LogsRequest) -> Result<LogStream> {
        let fref = req
            .function
            .clone()
            .ok_or_else(|| Error::invalid("name", "a function name is required"))?;
        let f = self.function(&fref)?;
        let filter = req.instance.clone();
        let replicas: Vec<_> = f
            .snapshot()
            .into_iter()
            .filter(|r| selects(filter.as_deref(), &r.name, &r.id))
            .collect();
        let since_secs = req
            .since
            .and_then(|s| s.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs().min(i32::MAX as u64) as i32)
            .unwrap_or(0);
        let opts = LogsOptions {
            follow: req.follow,
            stdout: true,
            stderr: true,
            since: since_secs,
            until: 0,
            timestamps: true,
            tail: req.tail.map(|n| n.to_string()).unwrap_or_else(|| "all".to_string()),
        };
        let since = req.since;
        let keep = move |e: &LogEntry| since.is_none_or(|s| e.timestamp >= s);
        // The retained lines the request selects, of the instances `skip` does not name.
        let retained = {
            let (f, filter) = (Arc::clone(&f), filter.clone());
            move |skip: &BTreeSet<String>, only: Option<&str>| -> Vec<LogEntry> {
                let mut v = lock(&f.retained).select(|r| {
                    selects(filter.as_deref(), &r.entry.instance, &r.container)
                        && only.is_none_or(|o| r.entry.instance == o)
                        && !skip.contains(&r.entry.instance)
                        && keep(&r.entry)
                });
                if let Some(n) = req.tail {
                    v.drain(..v.len().saturating_sub(n));
                }
                v
            }
        };
        // One stream per live replica; a container removed meanwhile (404, or 409 while the
        // engine removes it) ends its stream with `Ok(None)`: its lines were retained before
        // the removal began.
        let streams: Vec<(String, futures::stream::BoxStream<'static, Result<Option<LogEntry>>>)> =
            replicas
                .iter()
                .map(|r| {
                    let (name, ns, inst) =
                        (fref.name.clone(), fref.namespace.clone(), r.name.clone());
                    let s = self
                        .docker
                        .logs(&r.id, Some(opts.clone()))
                        .map(|item| match item {
                            Ok(chunk) => Ok(Some(chunk)),
                            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(None),
                            Err(e) => Err(map_err("container logs", e)),
                        })
                        .map_ok(move |chunk| {
                            let v = match chunk {
                                Some(c) => entries(&name, &ns, &inst, &c.into_bytes())
                                    .into_iter()
                                    .map(Some)
                                    .collect(),
                                None => vec![None],
                            };
                            futures::stream::iter(v.into_iter().map(Ok))
                        })
                        .try_flatten()
                        .boxed();
                    (r.name.clone(), s)
                })
                .collect();
        if req.follow {
            // Retained lines of instances not followed first; then start every instance's
            // request (streams are lazy), forwarding into one channel; the tasks end when the
            // caller drops the stream.
            let followed: BTreeSet<String> = streams.iter().map(|(n, _)| n.clone()).collect();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<LogEntry>>(1024);
            let head = retained(&followed, None);
            let retained = Arc::new(retained);
            for (name, mut s) in streams {
                let tx = tx.clone();
                let retained = Arc::clone(&retained);
                tokio::spawn(async move {
                    let mut sent_any = false;
                    while let Some(item) = s.next().await {
                        let item = match item {
                            Ok(Some(e)) if !keep(&e) => continue,
                            Ok(Some(e)) => Ok(e),
                            Ok(None) if sent_any => return,
                            Ok(None) => {
                                // Removed before we connected: its retained lines instead.
                                for e in retained(&BTreeSet::new(), Some(&name)) {
                                    if tx.send(Ok(e)).await.is_err() {
                                        return;
                                    }
                                }
                                return;
                            }
                            Err(e) => Err(e),
                        };
                        sent_any = true;
                        if tx.send(item).await.is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let tail = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            return Ok(futures::stream::iter(head.into_iter().map(Ok)).chain(tail).boxed());
        }
        let mut all = Vec::new();
        // Instances whose container answered: their retained copy (if any) is not needed.
        let mut read_live = BTreeSet::new();
        for (name, s) in streams {
            let v: Vec<Option<LogEntry>> = s.try_collect().await?;
            if v.iter().all(Option::is_some) {
                read_live.insert(name);
            }
            all.extend(v.into_iter().flatten());
        }
        // Read after the live containers: a replica removed meanwhile had its lines retained
        // before its container went.
        all.extend(retained(&read_live, None));
        all.retain(|e| keep(e));
        all.sort_by_key(|e| e.timestamp);
        if let Some(n) = req.tail {
            let skip = all.len().saturating_sub(n);
            all.drain(..skip);
        }
        Ok(futures::stream::iter(all.into_iter().map(Ok)).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(instance: &str, secs: u64, text: &str) -> Retained {
        Retained {
            container: format!("{instance}-id"),
            entry: LogEntry {
                name: "f".into(),
                namespace: "ns".into(),
                instance: instance.into(),
                timestamp: UNIX_EPOCH + Duration::from_secs(secs),
                text: text.into(),
            },
        }
    }

    fn ring(bound: LogRetention, lines: Vec<Retained>) -> RetainedLogs {
        let mut r = RetainedLogs::new(bound);
        for l in lines {
            r.push_newest(l);
        }
        r
    }

    fn texts(r: &RetainedLogs) -> Vec<String> {
        r.select(|_| true).into_iter().map(|e| e.text).collect()
    }

    #[test]
    fn the_line_bound_drops_the_oldest() {
        let bound = LogRetention { lines: 3, bytes: usize::MAX };
        let r = ring(bound, (0..5).map(|i| line("a", i, &format!("l{i}"))).collect());
        assert_eq!(texts(&r), ["l2", "l3", "l4"]);
    }

    #[test]
    fn the_byte_bound_holds_and_counts_the_overhead() {
        let one = line("a", 0, "0123456789").size();
        assert!(one > 10 + LogRetention::LINE_OVERHEAD);
        let bound = LogRetention { lines: 1000, bytes: one * 4 };
        let mut r = ring(bound, (0..10).map(|i| line("a", i, "0123456789")).collect());
        assert_eq!(r.len(), 4);
        assert!(r.bytes <= bound.bytes);
        // A line larger than the whole bound is not kept.
        r.push_newest(line("a", 20, &"x".repeat(one * 4)));
        assert_eq!(r.len(), 0);
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn absorbing_keeps_timestamp_order_and_the_bound() {
        let bound = LogRetention { lines: 4, bytes: usize::MAX };
        let mut r = ring(bound, vec![line("a", 1, "a1"), line("a", 5, "a5")]);
        r.absorb(ring(bound, vec![line("b", 2, "b2"), line("b", 3, "b3"), line("b", 6, "b6")]));
        assert_eq!(texts(&r), ["b2", "b3", "a5", "b6"]);
        r.absorb(ring(bound, vec![line("c", 7, "c7")]));
        assert_eq!(texts(&r), ["b3", "a5", "b6", "c7"]);
    }

    #[test]
    fn instance_filter_takes_names_and_container_prefixes() {
        assert!(selects(None, "n", "abc"));
        assert!(selects(Some("n"), "n", "abc"));
        assert!(selects(Some("ab"), "n", "abc"));
        assert!(!selects(Some("x"), "n", "abc"));
    }
}

//! [`LogStore`]: a [`StateStore`] kept as an append-only log of write batches, for state
//! that is written once and soon deleted: the durable async queue's items and activation
//! records.
//!
//! Why not the redb file ([`crate::redb_store::RedbStore`]) that keeps functions and
//! secrets: a queue item is written, read back once and deleted within milliseconds, and a
//! B-tree pays for every one of those writes with page copies, allocations and more
//! `fsync`ed bytes (measured: about 27 µs of the writer's time per async call, which
//! capped the durable queue at about 20 % of the sync path; BENCHMARKS.md). Here a write
//! batch is one frame appended to a file: a few bytes of framing and a copy.
//!
//! # Layout
//!
//! A directory of segment files `0000000000000001.log`, `...2.log`, written in turn. Each
//! holds frames `[payload length: u32 LE][CRC-32 of the payload: u32 LE][payload]`; a
//! payload is the ops of one [`StateStore::commit`] or [`StateStore::apply`]: `1 table key
//! value` for a put, `2 table key` for a delete (table as a 1-byte length and the name, key
//! and value as a 4-byte length and the bytes). A frame is applied whole or not at all.
//!
//! In memory: per table, key order, where the key's current value lies in which segment
//! (values are read from the files when asked for; the queue asks only at start).
//!
//! # Group commit
//!
//! One writer thread takes every batch waiting and appends them with one `write`; when at
//! least one of them is a [`StateStore::commit`], it makes the file durable with one
//! `fdatasync` and answers the round's commits. Commits queued while it writes and syncs
//! wake nobody (no futex, no context switch per commit): they are the next round, so
//! rounds grow with the time a sync takes. (A syncer thread of its own, appending the next
//! round while a sync ran, was tried: the writer was woken for nearly every commit, two
//! `futex` calls and one `write` per call in `strace`, while the data it wrote still waited
//! for the next `fdatasync`.)
//! [`StateStore::apply`] batches do not wake the writer: they are written with the next
//! commit, or a few milliseconds later, and made durable by the next commit or at the
//! latest [`APPLY_SYNC`] later.
//!
//! # Space
//!
//! The segment being written is kept zero-filled ahead of its end, [`PREALLOC_BYTES`] at a
//! time, and frames are written over those zeros: the file's size and blocks then do not
//! change with each append, so the `fdatasync` of a commit flushes the data alone and not
//! a journal commit of the file's new size as well (measured here: 140-160 µs for a 4 KiB
//! write and `fdatasync` over written zeros against 200 µs appending; BENCHMARKS.md). A
//! segment is cut back to its frames when it is closed and when the store closes.
//!
//! A segment is closed at [`SEGMENT_BYTES`]. When the files hold more than twice the live
//! data plus one segment, the oldest closed segment is compacted: its live entries are
//! appended to the current segment, made durable, and the old file is removed. Compacting
//! strictly oldest first is what makes dropping deletes safe: a delete in the oldest
//! segment can only hide a put in that same segment.
//!
//! # Recovery
//!
//! At open the segments are read in order. Zeros written ahead read as frames of no ops
//! (eight zero bytes are a frame with an empty payload and its checksum); the last segment
//! is cut back after its last frame that holds ops. A frame cut short or failing its
//! checksum at the end of the last segment is a write the crash interrupted (never
//! acknowledged): the file is cut back to the last whole frame. The same in an earlier segment is damage: the rest
//! of that segment is skipped with an error in the log.
//!
//! A directory is used by one store at a time: an exclusive lock on a `LOCK` file in it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use faas_core::state::{StateOp, StateStore};
use faas_core::util::FastBuildHasher;
use faas_core::{Error, Result};

use crate::writer_thread::{answer_all, Round, Rounds, Write, WriterThread};

/// A segment is closed, and the next one started, once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// The segment being written is zero-filled this far ahead of its last frame (at most up to
/// its closing size), so that appends overwrite written blocks instead of growing the file.
pub const PREALLOC_BYTES: u64 = 1 << 20;

/// [`StateStore::apply`] writes reach the disk at the latest this long after they were
/// written, when no commit came meanwhile.
pub const APPLY_SYNC: Duration = Duration::from_millis(200);

/// Frames larger than this are damage, not data (a queue item is bounded far below it).
const MAX_FRAME: u32 = 1 << 30;

const FRAME_HEADER: u64 = 8;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// Where a key's current value lies.
#[derive(Clone, Copy, Debug)]
struct Loc {
    segment: u64,
    /// The value's first byte in the segment file.
    offset: u64,
    len: u32,
    /// The bytes of the whole op in the log (what compaction would copy).
    op_bytes: u32,
}

struct Segment {
    file: Arc<File>,
    bytes: u64,
    /// Bytes of puts that are still the current value of their key.
    live: u64,
}

#[derive(Default)]
struct Index {
    /// By table name (a handful, looked up for every op: a fast hasher).
    tables: HashMap<String, BTreeMap<Vec<u8>, Loc>, FastBuildHasher>,
    segments: BTreeMap<u64, Segment>,
}

impl Index {
    fn live(&self) -> u64 {
        self.segments.values().map(|s| s.live).sum()
    }

    fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    /// `loc` stops being live (overwritten or deleted).
    fn forget(&mut self, loc: Loc) {
        if let Some(s) = self.segments.get_mut(&loc.segment) {
            s.live = s.live.saturating_sub(u64::from(loc.op_bytes));
        }
    }

    /// `key` (taken: the writer hands over the key it wrote, no copy) now lies at `loc`.
    fn put(&mut self, table: &str, key: Vec<u8>, loc: Loc) {
        if let Some(s) = self.segments.get_mut(&loc.segment) {
            s.live += u64::from(loc.op_bytes);
        }
        let old = match self.tables.get_mut(table) {
            Some(t) => t.insert(key, loc),
            None => {
                self.tables.entry(table.to_string()).or_default().insert(key, loc);
                None
            }
        };
        if let Some(old) = old {
            self.forget(old);
        }
    }

    fn delete(&mut self, table: &str, key: &[u8]) {
        if let Some(old) = self.tables.get_mut(table).and_then(|t| t.remove(key)) {
            self.forget(old);
        }
    }
}

/// One op decoded from a frame, with where its value lies in the frame's payload.
enum Decoded<'a> {
    Put { table: &'a str, key: &'a [u8], value_at: usize, value_len: u32, op_bytes: u32 },
    Delete { table: &'a str, key: &'a [u8] },
}

/// Decodes a frame's payload; `None` if it is not one this module wrote.
fn decode(payload: &[u8]) -> Option<Vec<Decoded<'_>>> {
    let mut ops = Vec::new();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = payload.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(s)
    };
    let len32 = |s: &[u8]| -> Option<u32> { Some(u32::from_le_bytes(s.try_into().ok()?)) };
    while at < payload.len() {
        let start = at;
        let kind = *take(&mut at, 1)?.first()?;
        let tlen = usize::from(*take(&mut at, 1)?.first()?);
        let table = std::str::from_utf8(take(&mut at, tlen)?).ok()?;
        let klen = len32(take(&mut at, 4)?)? as usize;
        let key = take(&mut at, klen)?;
        match kind {
            OP_PUT => {
                let vlen = len32(take(&mut at, 4)?)?;
                let value_at = at;
                take(&mut at, vlen as usize)?;
                let op_bytes = u32::try_from(at - start).ok()?;
                ops.push(Decoded::Put { table, key, value_at, value_len: vlen, op_bytes });
            }
            OP_DELETE => ops.push(Decoded::Delete { table, key }),
            _ => return None,
        }
    }
    Some(ops)
}

/// Appends `op` to `buf`, returning where its value starts in `buf` (puts) and the op's
/// length in bytes. A table name over 255 bytes or a key or value over 4 GiB is refused.
fn encode_op(buf: &mut Vec<u8>, op: &StateOp) -> std::result::Result<(usize, u32), String> {
    let start = buf.len();
    let (kind, table, key, value) = match op {
        StateOp::Put { table, key, value } => (OP_PUT, *table, key, Some(value)),
        StateOp::Delete { table, key } => (OP_DELETE, *table, key, None),
    };
    let tlen = u8::try_from(table.len()).map_err(|_| format!("table name {table:?} too long"))?;
    let klen = u32::try_from(key.len()).map_err(|_| "key too long".to_string())?;
    buf.push(kind);
    buf.push(tlen);
    buf.extend_from_slice(table.as_bytes());
    buf.extend_from_slice(&klen.to_le_bytes());
    buf.extend_from_slice(key);
    let mut value_at = 0;
    if let Some(value) = value {
        let vlen = u32::try_from(value.len()).map_err(|_| "value too long".to_string())?;
        buf.extend_from_slice(&vlen.to_le_bytes());
        value_at = buf.len();
        buf.extend_from_slice(value);
    }
    let op_bytes = u32::try_from(buf.len() - start).map_err(|_| "op too long".to_string())?;
    Ok((value_at, op_bytes))
}

/// Appends a frame of `ops` to `buf`, and to `puts` where each put's value starts in `buf`
/// and the put's length in bytes (as [`encode_op`] gives them); on error both are as they
/// were.
fn encode_frame(
    buf: &mut Vec<u8>,
    ops: &[StateOp],
    puts: &mut Vec<(usize, u32)>,
) -> std::result::Result<(), String> {
    let (start, placed) = (buf.len(), puts.len());
    let undo = |buf: &mut Vec<u8>, puts: &mut Vec<(usize, u32)>| {
        buf.truncate(start);
        puts.truncate(placed);
    };
    buf.extend_from_slice(&[0; FRAME_HEADER as usize]);
    for op in ops {
        match encode_op(buf, op) {
            Ok(put) if matches!(op, StateOp::Put { .. }) => puts.push(put),
            Ok(_) => {}
            Err(e) => {
                undo(buf, puts);
                return Err(e);
            }
        }
    }
    let payload = &buf[start + FRAME_HEADER as usize..];
    let Some(len) = u32::try_from(payload.len()).ok().filter(|l| *l <= MAX_FRAME) else {
        undo(buf, puts);
        return Err("write batch over 1 GiB".into());
    };
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.log"))
}

/// Opens (or creates) a file of the log, mode 0600 (a file opened up by hand is set back).
fn open_segment(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A [`StateStore`] as an append-only log in a directory (see the module's documentation).
/// Cheap to clone.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    writer: WriterThread,
    syncs: Arc<AtomicU64>,
    /// Held for the store's life: the directory's lock.
    _lock: File,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("dir", &self.inner.dir).finish()
    }
}

fn store_err(dir: &Path, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("state log {}: {e}", dir.display()))
}

fn lock_index(index: &Mutex<Index>) -> std::sync::MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogStore {
    /// Opens (or creates) the log in `dir` (mode 0700; segment files 0600: they hold call
    /// payloads), reading what it holds. A directory already open in another store, in
    /// this process or another, is refused, naming it.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`LogStore::open`] with segments closed at `segment_bytes` (at least 4 KiB) instead
    /// of [`SEGMENT_BYTES`]: smaller segments are compacted sooner, in smaller steps.
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| store_err(dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let lock = open_segment(&dir.join("LOCK")).map_err(|e| store_err(dir, e))?;
        match fs4::FileExt::try_lock(&lock) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(store_err(
                    dir,
                    "already in use by another process (another `faas up` on this state \
                     directory?)",
                ))
            }
            Err(fs4::TryLockError::Error(e)) => {
                return Err(store_err(dir, format!("cannot lock: {e}")))
            }
        }
        let mut index = Index::default();
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| store_err(dir, e))?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                let hex = name.to_str()?.strip_suffix(".log")?;
                (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok()).flatten()
            })
            .collect();
        ids.sort_unstable();
        for (i, id) in ids.iter().enumerate() {
            let path = segment_path(dir, *id);
            let file = Arc::new(open_segment(&path).map_err(|e| store_err(dir, e))?);
            // In the map first, so that its puts count as its live bytes.
            index.segments.insert(*id, Segment { file: file.clone(), bytes: 0, live: 0 });
            let bytes = recover_segment(&mut index, *id, &file, &path, i + 1 == ids.len())
                .map_err(|e| store_err(dir, e))?;
            if let Some(s) = index.segments.get_mut(id) {
                s.bytes = bytes;
            }
        }
        if index.segments.is_empty() {
            let file = open_segment(&segment_path(dir, 1)).map_err(|e| store_err(dir, e))?;
            sync_dir(dir).map_err(|e| store_err(dir, e))?;
            index.segments.insert(1, Segment { file: Arc::new(file), bytes: 0, live: 0 });
        }
        // Recovery cut the last segment back to its frames.
        let allocated = index.segments.values().next_back().map_or(0, |s| s.bytes);
        let index = Arc::new(Mutex::new(index));
        let syncs = Arc::new(AtomicU64::new(0));
        let mut w = Writer {
            dir: dir.to_path_buf(),
            index: index.clone(),
            syncs: syncs.clone(),
            segment_bytes: segment_bytes.max(4096),
            allocated,
            buf: Vec::new(),
            failed: None,
        };
        let writer = WriterThread::spawn("faas-log-writer", move |rounds| w.run(rounds))
            .map_err(|e| store_err(dir, format!("cannot start the writer thread: {e}")))?;
        Ok(LogStore {
            inner: Arc::new(Inner { dir: dir.to_path_buf(), index, writer, syncs, _lock: lock }),
        })
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// `fdatasync`s done so far (each makes every batch before it durable).
    pub fn syncs(&self) -> u64 {
        self.inner.syncs.load(Ordering::Relaxed)
    }

    /// The segment files now in the directory.
    pub fn segments(&self) -> usize {
        lock_index(&self.inner.index).segments.len()
    }

    /// Bytes in the segment files, and of them the bytes of live entries (current values).
    pub fn usage(&self) -> (u64, u64) {
        let index = lock_index(&self.inner.index);
        (index.bytes(), index.live())
    }

    fn read(&self, file: &File, loc: Loc) -> Result<Vec<u8>> {
        let mut value = vec![0; loc.len as usize];
        file.read_exact_at(&mut value, loc.offset).map_err(|e| store_err(&self.inner.dir, e))?;
        Ok(value)
    }
}

/// Reads segment `id` into `index`; returns where its last frame holding ops ends. The
/// last segment (`last`) is cut back there: a torn frame, with a warning, and the zeros
/// written ahead (frames of no ops); an earlier segment's damage is logged and the rest of
/// it skipped.
fn recover_segment(
    index: &mut Index,
    id: u64,
    file: &File,
    path: &Path,
    last: bool,
) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut at = 0u64;
    // The end of the last frame that holds ops: what follows it is zeros or damage.
    let mut data_end = 0u64;
    let mut payload = Vec::new();
    let damaged = loop {
        if at == len {
            break None;
        }
        let mut header = [0u8; FRAME_HEADER as usize];
        if reader.read_exact(&mut header).is_err() {
            break Some("a frame header cut short");
        }
        let n = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if n > MAX_FRAME || at + FRAME_HEADER + u64::from(n) > len {
            break Some("a frame cut short");
        }
        payload.resize(n as usize, 0);
        if reader.read_exact(&mut payload).is_err() {
            break Some("a frame cut short");
        }
        if crc32fast::hash(&payload) != crc {
            break Some("a frame failing its checksum");
        }
        let Some(ops) = decode(&payload) else {
            break Some("a frame that does not decode");
        };
        let base = at + FRAME_HEADER;
        for op in ops {
            match op {
                Decoded::Put { table, key, value_at, value_len, op_bytes } => {
                    let loc = Loc {
                        segment: id,
                        offset: base + value_at as u64,
                        len: value_len,
                        op_bytes,
                    };
                    index.put(table, key.to_vec(), loc);
                }
                Decoded::Delete { table, key } => index.delete(table, key),
            }
        }
        at = base + u64::from(n);
        if n > 0 {
            data_end = at;
        }
    };
    if let Some(what) = damaged {
        if last {
            tracing::warn!(
                segment = %path.display(),
                offset = data_end,
                "the state log ends in {what} (a write cut by a crash, never acknowledged): cut off"
            );
            file.set_len(data_end)?;
            file.sync_all()?;
        } else {
            tracing::error!(
                segment = %path.display(),
                offset = at,
                "the state log has {what} before its end: the rest of this segment is skipped"
            );
        }
    } else if last && data_end < len {
        // Zeros written ahead and never used: the writer starts from the last frame.
        file.set_len(data_end)?;
    }
    Ok(data_end)
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    syncs: Arc<AtomicU64>,
    segment_bytes: u64,
    /// The current segment's size on disk: its frames, then zeros written ahead.
    allocated: u64,
    buf: Vec<u8>,
    /// After a failed write or sync nothing more is written: what is on disk is what the
    /// last good sync left.
    failed: Option<String>,
}

impl Writer {
    fn run(&mut self, rounds: Rounds) {
        let mut unsynced_since: Option<Instant> = None;
        loop {
            let idle = unsynced_since.map(|since| APPLY_SYNC.saturating_sub(since.elapsed()));
            let round = match rounds.next(idle) {
                Round::Writes(round) => round,
                Round::Idle => {
                    let _ = self.sync();
                    unsynced_since = None;
                    continue;
                }
                Round::Closed => break,
            };
            let must_sync = round.iter().any(|w| w.done.is_some())
                || unsynced_since.is_some_and(|s| s.elapsed() >= APPLY_SYNC);
            let mut round = round;
            let results = self.append(&mut round);
            let mut answers = Vec::new();
            for (w, r) in round.into_iter().zip(results) {
                match w.done {
                    Some(done) => answers.push((done, r)),
                    None => {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "a state log write was lost");
                        }
                    }
                }
            }
            if must_sync {
                // Synced here, on this thread: the commits queued meanwhile wake nobody
                // and are the next round, written with one `write` and made durable
                // with one `fdatasync`.
                let synced = self.sync();
                answer_all(answers.into_iter().map(|(a, r)| (a, r.and_then(|()| synced.clone()))));
                unsynced_since = None;
            } else if unsynced_since.is_none() {
                unsynced_since = Some(Instant::now());
            }
            if self.failed().is_none() {
                if let Err(e) = self.roll_and_compact() {
                    self.fail(format!("compaction: {e}"));
                }
            }
        }
        let _ = self.sync();
        if self.failed().is_none() {
            // Cut the zeros written ahead: a closed store's files end with their frames.
            let (_, file, bytes) = self.active();
            if file.set_len(bytes).and_then(|()| file.sync_all()).is_ok() {
                self.allocated = bytes;
            }
        }
    }

    fn failed(&self) -> Option<String> {
        self.failed.clone()
    }

    fn fail(&mut self, why: String) -> Error {
        tracing::error!(dir = %self.dir.display(), error = %why, "the state log stops taking writes");
        self.failed = Some(why.clone());
        store_err(&self.dir, why)
    }

    fn active(&self) -> (u64, Arc<File>, u64) {
        let index = lock_index(&self.index);
        let (id, s) = index.segments.iter().next_back().expect("the log always has a segment");
        (*id, s.file.clone(), s.bytes)
    }

    /// Appends one frame per write; the index learns them once they are in the file.
    fn append(&mut self, round: &mut [Write]) -> Vec<Result<()>> {
        if let Some(why) = self.failed() {
            return round.iter().map(|_| Err(store_err(&self.dir, &why))).collect();
        }
        self.buf.clear();
        let mut puts = Vec::new();
        let mut written = Vec::with_capacity(round.len());
        let mut results = Vec::with_capacity(round.len());
        for w in round.iter() {
            if w.ops.is_empty() {
                // Nothing to write (and no frame has an empty payload but the zeros
                // written ahead).
                written.push(true);
                results.push(Ok(()));
                continue;
            }
            match encode_frame(&mut self.buf, &w.ops, &mut puts) {
                Ok(()) => {
                    written.push(true);
                    results.push(Ok(()));
                }
                Err(e) => {
                    written.push(false);
                    results.push(Err(Error::invalid("state", e)));
                }
            }
        }
        if self.buf.is_empty() {
            return results;
        }
        let (id, file, base) = self.active();
        let end = base + self.buf.len() as u64;
        let wrote = self.preallocate(&file, end).and_then(|()| file.write_all_at(&self.buf, base));
        if let Err(e) = wrote {
            // Cut back what part of the round reached the file, so the log still ends
            // with a whole frame.
            let cut = file.set_len(base);
            self.allocated = base;
            let e = match cut {
                Ok(()) => store_err(&self.dir, e),
                Err(c) => self.fail(format!("write failed ({e}) and could not be cut back ({c})")),
            };
            return round.iter().map(|_| Err(e.clone())).collect();
        }
        let mut index = lock_index(&self.index);
        if let Some(s) = index.segments.get_mut(&id) {
            s.bytes = end;
        }
        // The puts' places, in the order they were encoded.
        let mut places = puts.into_iter();
        for (w, _) in round.iter_mut().zip(written).filter(|(_, ok)| *ok) {
            for op in &mut w.ops {
                match op {
                    StateOp::Put { table, key, value } => {
                        let Some((value_at, op_bytes)) = places.next() else { continue };
                        let loc = Loc {
                            segment: id,
                            offset: base + value_at as u64,
                            len: value.len() as u32,
                            op_bytes,
                        };
                        index.put(table, std::mem::take(key), loc);
                    }
                    StateOp::Delete { table, key } => index.delete(table, key),
                }
            }
        }
        results
    }

    /// Makes the current segment at least `end` bytes of written blocks: zeros up to the
    /// next multiple of [`PREALLOC_BYTES`] (no further than the segment's closing size),
    /// made durable by the next `fdatasync` with the frames over them.
    fn preallocate(&mut self, file: &File, end: u64) -> std::io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let target = end.next_multiple_of(PREALLOC_BYTES).min(self.segment_bytes).max(end);
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64);
            file.write_all_at(&ZEROS[..n as usize], at)?;
            at += n;
        }
        self.allocated = target;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if let Some(why) = self.failed() {
            return Err(store_err(&self.dir, why));
        }
        let (_, file, _) = self.active();
        match file.sync_data() {
            Ok(()) => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            // After a failed fsync the kernel may have dropped the dirty pages: nothing
            // written since the last good sync can be trusted to be on disk.
            Err(e) => Err(self.fail(format!("fdatasync failed: {e}"))),
        }
    }

    /// Starts a new segment when the current one is full, then compacts the oldest closed
    /// segments while the files hold more than twice the live data plus one segment.
    fn roll_and_compact(&mut self) -> std::io::Result<()> {
        let (id, _, bytes) = self.active();
        if bytes < self.segment_bytes {
            return Ok(());
        }
        self.sync().map_err(std::io::Error::other)?;
        // The closed segment ends with its frames (the zeros written ahead would only take
        // space); a crash before this reaches the disk leaves zeros, read as empty frames.
        let (_, closed, _) = self.active();
        closed.set_len(bytes)?;
        self.allocated = bytes;
        let next = id + 1;
        let file = open_segment(&segment_path(&self.dir, next))?;
        sync_dir(&self.dir)?;
        lock_index(&self.index)
            .segments
            .insert(next, Segment { file: Arc::new(file), bytes: 0, live: 0 });
        self.allocated = 0;
        loop {
            let oldest = {
                let index = lock_index(&self.index);
                if index.segments.len() < 2
                    || index.bytes() <= 2 * index.live() + self.segment_bytes
                {
                    return Ok(());
                }
                match index.segments.iter().next() {
                    Some((id, s)) => (*id, s.file.clone()),
                    None => return Ok(()),
                }
            };
            self.compact(oldest.0, &oldest.1)?;
        }
    }

    /// Copies the live entries of segment `id` to the current one, makes them durable,
    /// then removes the segment.
    fn compact(&mut self, id: u64, file: &File) -> std::io::Result<()> {
        let live: Vec<(String, Vec<u8>, Loc)> = {
            let index = lock_index(&self.index);
            index
                .tables
                .iter()
                .flat_map(|(t, keys)| {
                    keys.iter()
                        .filter(|(_, l)| l.segment == id)
                        .map(move |(k, l)| (t.clone(), k.clone(), *l))
                })
                .collect()
        };
        // Copied in frames of about a megabyte: each is one atomic batch.
        let mut batch: Vec<StateOp> = Vec::new();
        let mut size = 0usize;
        for (table, key, loc) in live {
            let mut value = vec![0; loc.len as usize];
            file.read_exact_at(&mut value, loc.offset)?;
            let name = intern(&table);
            size += key.len() + value.len();
            batch.push(StateOp::put(name, key, value));
            if size >= 1 << 20 {
                self.copy(std::mem::take(&mut batch), id)?;
                size = 0;
            }
        }
        if !batch.is_empty() {
            self.copy(batch, id)?;
        }
        self.sync().map_err(std::io::Error::other)?;
        std::fs::remove_file(segment_path(&self.dir, id))?;
        sync_dir(&self.dir)?;
        lock_index(&self.index).segments.remove(&id);
        tracing::debug!(dir = %self.dir.display(), segment = id, "state log segment compacted");
        Ok(())
    }

    /// Appends `ops` (live entries of segment `from`) unless a newer write replaced them
    /// meanwhile: only this thread writes, so nothing did.
    fn copy(&mut self, ops: Vec<StateOp>, from: u64) -> std::io::Result<()> {
        let mut round = [Write { ops, done: None }];
        match self.append(&mut round).pop() {
            Some(Err(e)) => Err(std::io::Error::other(format!("copying segment {from}: {e}"))),
            _ => Ok(()),
        }
    }
}

/// A `&'static str` for a table name read back from the log. Table names are a handful of
/// constants of the writers, so the set interned stays that handful.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.push(n);
    n
}

#[async_trait]
impl StateStore for LogStore {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let found =
            {
                let index = lock_index(&self.inner.index);
                index.tables.get(table).and_then(|t| t.get(key)).and_then(|loc| {
                    index.segments.get(&loc.segment).map(|s| (s.file.clone(), *loc))
                })
            };
        match found {
            Some((file, loc)) => self.read(&file, loc).map(Some),
            None => Ok(None),
        }
    }

    fn scan(&self, table: &'static str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let found: Vec<(Vec<u8>, Arc<File>, Loc)> = {
            let index = lock_index(&self.inner.index);
            let Some(t) = index.tables.get(table) else { return Ok(Vec::new()) };
            t.iter()
                .filter_map(|(k, loc)| {
                    index.segments.get(&loc.segment).map(|s| (k.clone(), s.file.clone(), *loc))
                })
                .collect()
        };
        found.into_iter().map(|(k, file, loc)| Ok((k, self.read(&file, loc)?))).collect()
    }

    fn scan_keys(&self, table: &'static str) -> Result<Vec<Vec<u8>>> {
        let index = lock_index(&self.inner.index);
        Ok(index.tables.get(table).map(|t| t.keys().cloned().collect()).unwrap_or_default())
    }

    async fn commit(&self, ops: Vec<StateOp>) -> Result<()> {
        self.inner.writer.commit(ops, || store_err(&self.inner.dir, "closed")).await
    }

    fn apply(&self, ops: Vec<StateOp>) {
        if !self.inner.writer.apply(ops) {
            tracing::debug!(dir = %self.inner.dir.display(), "state log closed: a write dropped");
        }
    }

    async fn close(&self) -> Result<()> {
        // The writer appends what was sent, syncs, then ends.
        if !self.inner.writer.close().await {
            return Err(store_err(&self.inner.dir, "the writer thread failed"));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.inner.dir.display().to_string()
    }
}

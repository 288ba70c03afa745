//! The embedded [`StateStore`]: one [redb](https://www.redb.org) database file in the
//! gateway's state directory, written with group commit.
//!
//! Why redb: the state is small tables (queued items, activation records, functions,
//! secrets) written in small, frequent batches and read by key, and a queue deletes every
//! item it writes. redb is a pure-Rust, ACID, copy-on-write B-tree in one file with a
//! stable file format, crash safety without a recovery log to replay, and an exclusive
//! file lock (two gateways on one state directory are refused). An LSM store (fjall) is
//! built for write-heavy data far larger than memory; its deletes are tombstones to
//! compact away, and it is several files and background threads: more than a queue of
//! bounded size needs. SQLite would bring C code and a build step. redb 2.6 is the line
//! that builds with this workspace's minimum Rust (1.86); later lines need 1.89.
//!
//! **Group commit**: every write goes to one writer thread. It takes all the batches that
//! are waiting, applies them in one write transaction, commits it durably (one `fsync`),
//! then answers each [`StateStore::commit`]; while it writes, new batches queue up and go
//! into the next transaction. So many concurrent publishes cost one `fsync`, not one each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::writer_thread::{answer_all, Round, Rounds, Write, WriterThread};
use async_trait::async_trait;
use faas_core::state::{StateOp, StateStore};
use faas_core::{Error, Result};
use redb::{Database, Durability, ReadableTable, TableDefinition, TableError};

/// The database file's name in the state directory.
pub const FILE_NAME: &str = "state.redb";

/// The most batches written in one transaction (the rest go into the next).
const MAX_BATCHES_PER_COMMIT: usize = 4096;

type Table<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

/// A [`StateStore`] in a redb file (see the module's documentation). Cheap to clone.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    writer: WriterThread,
    /// Transactions committed.
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.inner.path).finish()
    }
}

fn store_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("state store {}: {e}", path.display()))
}

impl RedbStore {
    /// Opens (or creates) [`FILE_NAME`] in `dir`, creating the directory (mode 0700) if
    /// needed; the file is mode 0600 (it holds secrets and call payloads). A store already
    /// open in another process is refused, naming the file.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| store_err(dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        Self::open(&dir.join(FILE_NAME))
    }

    /// Opens (or creates) the database file `path` (mode 0600).
    pub fn open(path: &Path) -> Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            options.mode(0o600);
            // A file made by hand with a wider mode is set back.
            if path.exists() {
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
            }
        }
        let file = options.open(path).map_err(|e| store_err(path, e))?;
        let db = Database::builder().create_file(file).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => store_err(
                path,
                "already in use by another process (another `faas up` on this state directory?)",
            ),
            e => store_err(path, e),
        })?;
        let db = Arc::new(db);
        let writer_db = db.clone();
        let writer_path = path.to_path_buf();
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        let writer = WriterThread::spawn("faas-state-writer", move |rounds| {
            write_loop(&writer_db, &writer_path, rounds, &counted)
        })
        .map_err(|e| store_err(path, format!("cannot start the writer thread: {e}")))?;
        Ok(RedbStore { inner: Arc::new(Inner { db, path: path.to_path_buf(), writer, commits }) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Transactions committed so far (each one `fsync`, however many batches it held).
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    fn closed(&self) -> Error {
        store_err(&self.inner.path, "closed")
    }

    fn read<T>(
        &self,
        table: &'static str,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> redb::Result<T>,
    ) -> Result<Option<T>> {
        let path = &self.inner.path;
        let txn = self.inner.db.begin_read().map_err(|e| store_err(path, e))?;
        match txn.open_table(Table::new(table)) {
            Ok(t) => f(&t).map(Some).map_err(|e| store_err(path, e)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(store_err(path, e)),
        }
    }
}

/// The writer thread: one transaction and one durable commit for all batches waiting.
fn write_loop(db: &Database, path: &Path, rounds: Rounds, commits: &AtomicU64) {
    while let Round::Writes(mut waiting) = rounds.next(None) {
        while !waiting.is_empty() {
            let rest = waiting.split_off(waiting.len().min(MAX_BATCHES_PER_COMMIT));
            let batch = std::mem::replace(&mut waiting, rest);
            let result = write_batch(db, &batch).map_err(|e| store_err(path, e));
            commits.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = &result {
                tracing::error!(error = %e, batches = batch.len(), "state store write failed");
            }
            answer_all(batch.into_iter().filter_map(|w| w.done).map(|a| (a, result.clone())));
        }
    }
}

#[allow(clippy::result_large_err)] // redb's own error, made once per commit at most
fn write_batch(db: &Database, batch: &[Write]) -> std::result::Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    {
        // Each table opened once; within a table the writes keep their order.
        let mut by_table: BTreeMap<&'static str, Vec<&StateOp>> = BTreeMap::new();
        for op in batch.iter().flat_map(|w| &w.ops) {
            let table = match op {
                StateOp::Put { table, .. } | StateOp::Delete { table, .. } => *table,
            };
            by_table.entry(table).or_default().push(op);
        }
        for (name, ops) in by_table {
            let mut table = txn.open_table(Table::new(name))?;
            for op in ops {
                match op {
                    StateOp::Put { key, value, .. } => {
                        table.insert(key.as_slice(), value.as_slice())?;
                    }
                    StateOp::Delete { key, .. } => {
                        table.remove(key.as_slice())?;
                    }
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[async_trait]
impl StateStore for RedbStore {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.read(table, |t| Ok(t.get(key)?.map(|v| v.value().to_vec())))?.flatten())
    }

    fn scan(&self, table: &'static str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let entries = self.read(table, |t| {
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })?;
        Ok(entries.unwrap_or_default())
    }

    async fn commit(&self, ops: Vec<StateOp>) -> Result<()> {
        self.inner.writer.commit(ops, || self.closed()).await
    }

    fn apply(&self, ops: Vec<StateOp>) {
        if !self.inner.writer.apply(ops) {
            tracing::debug!(path = %self.inner.path.display(), "state store closed: a write dropped");
        }
    }

    async fn close(&self) -> Result<()> {
        // The writer finishes what was sent, then ends.
        if !self.inner.writer.close().await {
            return Err(store_err(&self.inner.path, "the writer thread failed"));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.inner.path.display().to_string()
    }
}

//! The state a gateway keeps across restarts, as one small contract: named tables of byte
//! keys and values, read at once and written in atomic batches.
//!
//! Everything that must survive a restart of `faas up` goes through one [`StateStore`]:
//! the durable async queue and its activation records (`faas_queue::stored`), and the
//! functions and secrets deployed through the API ([`crate::persisted::Persisted`]). Two
//! implementations:
//!
//! - [`MemoryStateStore`]: in memory, for tests (a "restart" reopens over the same store);
//! - `faas_queue::redb_store::RedbStore` (feature `durable` of `faas-queue`): an embedded
//!   database file in the state directory, with group commit: concurrent
//!   [`StateStore::commit`]s are written in one transaction and one `fsync`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use faas_core::state::{MemoryStateStore, StateOp, StateStore};
//! let store = MemoryStateStore::default();
//! store.commit(vec![StateOp::put("functions", b"openfaas-fn/echo", b"{}")]).await?;
//! assert_eq!(store.get("functions", b"openfaas-fn/echo")?, Some(b"{}".to_vec()));
//! assert_eq!(store.scan("functions")?.len(), 1);
//! # Ok::<(), faas_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::Result;

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOp {
    /// Sets `key` in `table` to `value`.
    Put {
        /// The table.
        table: &'static str,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes `key` from `table` (nothing if it is not there).
    Delete {
        /// The table.
        table: &'static str,
        /// The key.
        key: Vec<u8>,
    },
}

impl StateOp {
    /// A [`StateOp::Put`].
    pub fn put(table: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        StateOp::Put { table, key: key.into(), value: value.into() }
    }

    /// A [`StateOp::Delete`].
    pub fn delete(table: &'static str, key: impl Into<Vec<u8>>) -> Self {
        StateOp::Delete { table, key: key.into() }
    }
}

/// Tables of byte keys and values that outlive the process (as far as the implementation
/// does). Reads answer at once; writes are batches applied atomically and in the order they
/// were given, whether by [`StateStore::commit`] or [`StateStore::apply`].
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The value of `key` in `table`, if any (a table never written is empty).
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Every entry of `table`, in key order (byte-wise). Meant for loading state at start:
    /// the tables written through this contract are bounded by their writers.
    fn scan(&self, table: &'static str) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Every key of `table`, in key order: [`StateStore::scan`] without the values, for a
    /// store that can list keys without reading values.
    fn scan_keys(&self, table: &'static str) -> Result<Vec<Vec<u8>>> {
        Ok(self.scan(table)?.into_iter().map(|(k, _)| k).collect())
    }

    /// Applies `ops` atomically; `Ok` once they are as durable as the store is (on disk,
    /// for an embedded store). Concurrent commits may share one write.
    async fn commit(&self, ops: Vec<StateOp>) -> Result<()>;

    /// Applies `ops` with the next commit, without waiting for it: for writes whose loss
    /// in a crash only repeats work (acknowledgements, progress records). A failure is
    /// logged.
    fn apply(&self, ops: Vec<StateOp>);

    /// Writes out everything applied so far and stops taking writes (later ones fail).
    /// The default does nothing.
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// Where the state is kept, for start-up messages.
    fn describe(&self) -> String;
}

/// One table of a [`MemoryStateStore`].
type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// A [`StateStore`] in memory: for tests, and for a gateway that keeps nothing across
/// restarts. Writes are atomic under one lock.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    tables: Mutex<BTreeMap<&'static str, Table>>,
}

impl MemoryStateStore {
    fn write(&self, ops: Vec<StateOp>) {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        for op in ops {
            match op {
                StateOp::Put { table, key, value } => {
                    tables.entry(table).or_default().insert(key, value);
                }
                StateOp::Delete { table, key } => {
                    if let Some(t) = tables.get_mut(table) {
                        t.remove(&key);
                    }
                }
            }
        }
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        Ok(tables.get(table).and_then(|t| t.get(key)).cloned())
    }

    fn scan(&self, table: &'static str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        Ok(tables
            .get(table)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    async fn commit(&self, ops: Vec<StateOp>) -> Result<()> {
        self.write(ops);
        Ok(())
    }

    fn apply(&self, ops: Vec<StateOp>) {
        self.write(ops);
    }

    fn describe(&self) -> String {
        "in memory".into()
    }
}

#[async_trait]
impl<T: StateStore + ?Sized> StateStore for std::sync::Arc<T> {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        (**self).get(table, key)
    }
    fn scan(&self, table: &'static str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        (**self).scan(table)
    }
    fn scan_keys(&self, table: &'static str) -> Result<Vec<Vec<u8>>> {
        (**self).scan_keys(table)
    }
    async fn commit(&self, ops: Vec<StateOp>) -> Result<()> {
        (**self).commit(ops).await
    }
    fn apply(&self, ops: Vec<StateOp>) {
        (**self).apply(ops)
    }
    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

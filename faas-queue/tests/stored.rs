//! The durable queue ([`StoredQueue`]) against the shared queue suite, over the in-memory
//! state store, plus restarts: over the in-memory state store (a second `open` of the same
//! store) and over the embedded stores (the redb file and the append-only log, closed and
//! opened again), with group commit.

mod common;

use std::sync::Arc;

use common::*;
use faas_core::queue::{ActivationStore, AsyncState, QueueConsumer, QueuePublisher};
use faas_core::state::{MemoryStateStore, StateStore};
use faas_core::Error;
use faas_queue::memory::QueueLimits;
use faas_queue::stored::{StoredQueue, QUEUE_TABLE};

fn open(store: &Arc<dyn StateStore>) -> StoredQueue {
    StoredQueue::open(store.clone(), QueueLimits::default(), 10_000).unwrap()
}

fn harness() -> InProcess {
    let q = open(&(Arc::new(MemoryStateStore::default()) as Arc<dyn StateStore>));
    InProcess {
        publisher: Arc::new(q.publisher()),
        consumer: Box::new(move || Arc::new(q.consumer())),
    }
}

queue_suite!(harness());

/// A restart (a second `open` of the same store) finds every item not acknowledged, in
/// publish order, whether it was waiting or delivered and never settled, and the records.
#[tokio::test]
async fn restart_redelivers_the_unacknowledged_in_order() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
    let q = open(&store);
    let items: Vec<_> = (0..5).map(|i| item("echo", format!("job-{i}"))).collect();
    for r in q.publisher().publish_batch(items.clone()).await {
        r.unwrap();
    }
    let c = q.consumer();
    let first = c.next().await.unwrap().unwrap();
    first.ack().await.unwrap();
    // Delivered, never settled: the process "dies" with it (held past the restart, so
    // that it is not handed back to the old queue first).
    let _unsettled = c.next().await.unwrap().unwrap();
    drop(q);

    let again = open(&store);
    assert_eq!(again.restored(), 4);
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let d = again.consumer().next().await.unwrap().unwrap();
        bodies.push(String::from_utf8(d.item().body.to_vec()).unwrap());
        assert!(d.redeliveries >= 1, "a restored item counts as a redelivery");
        d.ack().await.unwrap();
    }
    assert_eq!(bodies, ["job-1", "job-2", "job-3", "job-4"]);
    // The unacknowledged items have their `queued` record again (made from the item).
    let records = again.activations();
    for it in &items[1..] {
        let rec = records.get(&it.call_id).await.unwrap().expect("the record is back");
        assert_eq!(rec.state, AsyncState::Queued);
    }
    assert!(store.scan(QUEUE_TABLE).unwrap().is_empty(), "acknowledged items are gone");
    // Published after the restart: numbered after the restored ones.
    again.publisher().publish(item("echo", "late")).await.unwrap();
    drop(again);
    let third = open(&store);
    let d = third.consumer().next().await.unwrap().unwrap();
    assert_eq!(&d.item().body[..], b"late");
}

/// A call published under an id that already has a record is refused with a 409 naming
/// `X-Call-Id`, and the existing record and item stay as they were (the gateway gives a
/// reused caller id a new one first; this holds when two calls race with the same).
#[tokio::test]
async fn a_call_id_with_a_record_is_refused_and_the_record_kept() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
    let q = open(&store);
    let first = item("echo", "first");
    q.publisher().publish(first.clone()).await.unwrap();
    let mut again = item("echo", "second");
    again.call_id = first.call_id.clone();
    let e = q.publisher().publish(again.clone()).await.unwrap_err();
    assert_eq!(e.http_status(), 409);
    assert!(e.to_string().contains("X-Call-Id"), "{e}");
    // Twice in one batch: the first is taken, the second refused.
    let a = item("echo", "a");
    let mut b = item("echo", "b");
    b.call_id = a.call_id.clone();
    let r = q.publisher().publish_batch(vec![a.clone(), b]).await;
    assert!(r[0].is_ok() && matches!(r[1], Err(Error::AlreadyExists { .. })), "{r:?}");
    assert_eq!(store.scan(QUEUE_TABLE).unwrap().len(), 2, "only the first of each id queued");
    let rec = q.activations().get(&first.call_id).await.unwrap().unwrap();
    assert_eq!(rec.state, AsyncState::Queued);
    let d = q.consumer().next().await.unwrap().unwrap();
    assert_eq!(&d.item().body[..], b"first");
}

/// The byte bound and a function's share hold as in memory; a refused item gets a
/// `failed` record and is not kept.
#[tokio::test]
async fn stored_bounds_hold_and_refusals_are_recorded() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
    let limits = QueueLimits::new(100, 64 * 1024).function_percent(50);
    let q = StoredQueue::open(store.clone(), limits, 100).unwrap();
    let p = q.publisher();
    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..10 {
        let it = item("hog", vec![0u8; 8 * 1024]);
        match p.publish(it.clone()).await {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert!(matches!(e, Error::Overloaded { .. }), "{e}");
                refused = Some(it);
                break;
            }
        }
    }
    assert!((3..=4).contains(&accepted), "{accepted} of 8 KiB within a 32 KiB share");
    let refused = refused.expect("the share ran out");
    let rec = q.activations().get(&refused.call_id).await.unwrap().unwrap();
    assert_eq!(rec.state, AsyncState::Failed);
    assert_eq!(rec.status, Some(429));
    assert_eq!(store.scan(QUEUE_TABLE).unwrap().len(), accepted);
    // Another function still gets in.
    p.publish(item("other", vec![0u8; 8 * 1024])).await.unwrap();
}

#[cfg(feature = "durable")]
mod durable {
    use super::*;
    use faas_queue::log_store::LogStore;
    use faas_queue::redb_store::RedbStore;
    use faas_queue::stored::ACTIVATIONS_TABLE;
    use faas_queue::worker::{Worker, WorkerConfig};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "faas-stored-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos().into())
    }

    /// The two embedded stores, opened in a directory.
    #[derive(Clone, Copy)]
    enum Kind {
        Redb,
        Log,
    }

    /// A store of `kind` in `dir`, the file holding its data, and its count of durable
    /// writes (commits or `fdatasync`s).
    struct Opened {
        store: Arc<dyn StateStore>,
        file: std::path::PathBuf,
        writes: Box<dyn Fn() -> u64 + Send + Sync>,
    }

    fn open_kind(kind: Kind, dir: &std::path::Path) -> faas_core::Result<Opened> {
        Ok(match kind {
            Kind::Redb => {
                let redb = RedbStore::open_dir(dir)?;
                let counted = redb.clone();
                Opened {
                    file: redb.path().to_path_buf(),
                    store: Arc::new(redb),
                    writes: Box::new(move || counted.commits()),
                }
            }
            Kind::Log => {
                let log = LogStore::open(dir)?;
                let counted = log.clone();
                Opened {
                    file: dir.join("0000000000000001.log"),
                    store: Arc::new(log),
                    writes: Box::new(move || counted.syncs()),
                }
            }
        })
    }

    /// Concurrent publishes share durable writes (group commit); everything is there after
    /// the store is closed and opened again; the data file is 0600, its directory 0700,
    /// and a second opener is refused.
    async fn group_commits_and_survives_reopening(kind: Kind) {
        let dir = temp_dir("reopen");
        let opened = open_kind(kind, &dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&opened.file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let e = open_kind(kind, &dir).err().unwrap().to_string();
        assert!(e.contains("already in use"), "{e}");
        let store = opened.store.clone();
        let q = open(&store);
        let n = 400;
        let items: Vec<_> = (0..n).map(|i| item("echo", format!("job-{i}"))).collect();
        let publisher = Arc::new(q.publisher());
        let before = (opened.writes)();
        let tasks: Vec<_> = items
            .iter()
            .cloned()
            .map(|it| {
                let p = publisher.clone();
                tokio::spawn(async move { p.publish(it).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let writes = (opened.writes)() - before;
        println!("{n} concurrent publishes in {writes} durable writes");
        assert!(writes < n as u64, "{writes} durable writes for {n} publishes: no group commit");
        // Half are run and acknowledged.
        let c = q.consumer();
        for _ in 0..n / 2 {
            c.next().await.unwrap().unwrap().ack().await.unwrap();
        }
        drop((q, publisher, c));
        store.close().await.unwrap();
        assert!(store.commit(vec![]).await.is_err(), "a closed store takes no writes");
        drop(store);
        drop(opened);

        let store = open_kind(kind, &dir).unwrap().store;
        let q = open(&store);
        assert_eq!(q.restored(), n / 2);
        // Items only: their `queued` records are made from them at start (no worker ran,
        // so there is no other record).
        assert!(store.scan(ACTIVATIONS_TABLE).unwrap().is_empty());
        assert_eq!(q.activations().memory().count(AsyncState::Queued), n / 2);
        store.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_group_commits_and_survives_reopening() {
        group_commits_and_survives_reopening(Kind::Redb).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_group_commits_and_survives_reopening() {
        group_commits_and_survives_reopening(Kind::Log).await;
    }

    /// A worker runs what was accepted; after a graceful stop and a reopen nothing is left
    /// to run, and the records say succeeded.
    async fn worker_outcomes_are_kept(kind: Kind) {
        let dir = temp_dir("worker");
        let store = open_kind(kind, &dir).unwrap().store;
        let q = open(&store);
        let rig = Rig::new();
        let records = Arc::new(q.activations());
        let worker = Worker::new(
            rig.invoker.clone(),
            Arc::new(q.consumer()),
            records,
            WorkerConfig::default(),
        )
        .spawn();
        let items: Vec<_> = (0..200).map(|i| item("echo", format!("job-{i}"))).collect();
        for r in q.publisher().publish_batch(items.clone()).await {
            r.unwrap();
        }
        bounded("the worker to finish", worker.stats().wait_finished(200)).await;
        worker.shutdown().await.unwrap();
        let mut before = Vec::new();
        for it in &items {
            before.push(q.activations().get(&it.call_id).await.unwrap().unwrap());
        }
        drop(q);
        store.close().await.unwrap();
        drop(store);

        let store = open_kind(kind, &dir).unwrap().store;
        let q = open(&store);
        assert_eq!(q.restored(), 0, "every acknowledged item is gone");
        for (it, was) in items.iter().zip(&before) {
            let rec = q.activations().get(&it.call_id).await.unwrap().unwrap();
            assert_eq!(rec.state, AsyncState::Succeeded, "{rec:?}");
            assert!(rec.activation.is_some());
            // Read back from the store as it was in memory, activation and all.
            assert_eq!(&rec, was);
        }
        store.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_worker_outcomes_are_kept() {
        worker_outcomes_are_kept(Kind::Redb).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_worker_outcomes_are_kept() {
        worker_outcomes_are_kept(Kind::Log).await;
    }

    /// A crash in the middle of writing the worker's records and acknowledgements (one
    /// frame for many calls): the torn frame is dropped whole at the restart, so those
    /// calls are delivered again, and the calls before it stay done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_frame_of_records_and_acknowledgements_redelivers_its_calls() {
        use std::io::Write as _;
        let dir = temp_dir("torn-acks");
        let log = LogStore::open(&dir).unwrap();
        let store: Arc<dyn StateStore> = Arc::new(log.clone());
        let q = open(&store);
        let items: Vec<_> = (0..20).map(|i| item("echo", format!("job-{i}"))).collect();
        for r in q.publisher().publish_batch(items.clone()).await {
            r.unwrap();
        }
        let c = q.consumer();
        let records = q.activations();
        let settle = |n: usize| {
            let mut acks = Vec::new();
            for _ in 0..n {
                let d = c.try_next().unwrap();
                faas_core::queue::ImmediateActivationStore::put_update_now(
                    &records,
                    d.item(),
                    faas_core::queue::RecordUpdate {
                        state: AsyncState::Succeeded,
                        attempts: 1,
                        status: Some(200),
                        error: None,
                        outcome: None,
                        updated_at: 1,
                    },
                );
                acks.push(d);
            }
            acks
        };
        // Ten settled and on disk (the empty commit syncs what was applied before it).
        for d in settle(10) {
            d.ack().await.unwrap();
        }
        store.commit(vec![]).await.unwrap();
        let seg = dir.join("0000000000000001.log");
        // The frames' bytes (the file is zero-filled further ahead while it is written).
        let good = log.usage().0;
        // Ten more: their records and acknowledgements written (one frame) ...
        for d in settle(10) {
            d.ack().await.unwrap();
        }
        store.commit(vec![]).await.unwrap();
        drop((q, c, records));
        store.close().await.unwrap();
        drop((store, log));
        // ... and torn: the crash left half of that last frame.
        let bytes = std::fs::read(&seg).unwrap();
        assert!(bytes.len() as u64 > good + 16, "the second round was written");
        let torn = good as usize + (bytes.len() - good as usize) / 2;
        let mut f = std::fs::File::create(&seg).unwrap();
        f.write_all(&bytes[..torn]).unwrap();
        drop(f);

        let store = open_kind(Kind::Log, &dir).unwrap().store;
        let q = open(&store);
        assert_eq!(q.restored(), 10, "the torn frame's ten calls wait again");
        let c = q.consumer();
        let waiting: Vec<_> = (0..10).map(|_| c.try_next().unwrap()).collect();
        let waiting: Vec<_> = waiting.iter().map(|d| d.item().clone()).collect();
        assert_eq!(waiting, items[10..]);
        for it in &items[..10] {
            let rec = q.activations().get(&it.call_id).await.unwrap().unwrap();
            assert_eq!(rec.state, AsyncState::Succeeded);
        }
        drop((q, c));
        store.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Items and records kept in the redb file (where the queue was before it had its own
    /// log) move to the log: the queue over the log restores them, the file keeps none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_in_the_redb_file_moves_to_the_log() {
        let dir = temp_dir("move");
        let redb = open_kind(Kind::Redb, &dir).unwrap().store;
        let q = open(&redb);
        let items: Vec<_> = (0..5).map(|i| item("echo", format!("job-{i}"))).collect();
        for r in q.publisher().publish_batch(items.clone()).await {
            r.unwrap();
        }
        // One ran and has its record.
        let c = q.consumer();
        let first = c.next().await.unwrap().unwrap();
        q.activations().put_queued(&[first.item().clone()]).await;
        first.ack().await.unwrap();
        drop((q, c));
        // The acknowledgement's delete was applied without waiting: written by now.
        redb.commit(vec![]).await.unwrap();

        let log = open_kind(Kind::Log, &dir.join("queue")).unwrap().store;
        let moved = faas_queue::stored::move_tables(redb.as_ref(), log.as_ref()).await.unwrap();
        assert!(moved >= 5, "{moved} entries moved");
        assert!(redb.scan(QUEUE_TABLE).unwrap().is_empty());
        assert!(redb.scan(ACTIVATIONS_TABLE).unwrap().is_empty());
        let q = open(&log);
        assert_eq!(q.restored(), 4);
        assert!(q.activations().get(&items[0].call_id).await.unwrap().is_some());
        // Moving again moves nothing.
        assert_eq!(faas_queue::stored::move_tables(redb.as_ref(), log.as_ref()).await.unwrap(), 0);
        log.close().await.unwrap();
        redb.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Items and records as earlier versions wrote them (JSON) are read: the items wait again,
/// in publish order, and the records are there.
#[tokio::test]
async fn items_and_records_written_as_json_are_read() {
    use faas_core::queue::AsyncActivation;
    use faas_core::state::StateOp;
    use faas_queue::stored::ACTIVATIONS_TABLE;
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
    let items: Vec<_> = (0..3).map(|i| item("echo", format!("job-{i}"))).collect();
    let mut ops: Vec<StateOp> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let seq = (i as u64 + 1).to_be_bytes();
            StateOp::put(QUEUE_TABLE, seq, serde_json::to_vec(it).unwrap())
        })
        .collect();
    let done = item("echo", "done");
    let mut record = AsyncActivation::queued(&done);
    record.state = AsyncState::Succeeded;
    let mut key = done.queued_at.to_be_bytes().to_vec();
    key.extend_from_slice(done.call_id.as_str().as_bytes());
    ops.push(StateOp::put(ACTIVATIONS_TABLE, key, serde_json::to_vec(&record).unwrap()));
    store.commit(ops).await.unwrap();

    let q = open(&store);
    assert_eq!(q.restored(), 3);
    let c = q.consumer();
    for it in &items {
        let d = c.next().await.unwrap().unwrap();
        assert_eq!(d.item(), it);
        d.ack().await.unwrap();
    }
    let got = q.activations().get(&done.call_id).await.unwrap().unwrap();
    assert_eq!(got, record);
}

/// The store keeps what memory keeps: records evicted from memory leave the store (after
/// a quarter of the capacity of new records), and at open the records over the capacity
/// or left by a process that stopped before pruning them leave it too.
#[test]
fn the_store_follows_the_records_memory_keeps() {
    use faas_core::queue::AsyncActivation;
    use faas_core::state::StateOp;
    use faas_queue::stored::{StoredActivations, ACTIVATIONS_TABLE};
    use std::collections::BTreeSet;
    // No runtime: the pruning runs inline, so each step is finished when it returns (the
    // in-memory store answers at once: its futures are ready at the first poll).
    fn now<T>(f: impl std::future::Future<Output = T>) -> T {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the in-memory store did not answer at once"),
        }
    }
    now(async {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
        let records = StoredActivations::open(store.clone(), 100).unwrap();
        let stored_ids = |store: &Arc<dyn StateStore>| -> BTreeSet<String> {
            store
                .scan_keys(ACTIVATIONS_TABLE)
                .unwrap()
                .iter()
                .map(|k| String::from_utf8(k[8..].to_vec()).unwrap())
                .collect()
        };
        let memory_ids = |records: &StoredActivations| -> BTreeSet<String> {
            records.memory().records().iter().map(|r| r.call_id.as_str().to_string()).collect()
        };
        let finished = |i: usize| {
            let mut r = AsyncActivation::queued(&item("echo", format!("job-{i}")));
            r.state = AsyncState::Succeeded;
            r
        };
        for batch in 0..8 {
            let batch: Vec<_> = (batch * 50..batch * 50 + 50).map(finished).collect();
            assert!(records.put_batch(batch).await.iter().all(Result::is_ok));
        }
        assert_eq!(records.memory().len(), 100);
        assert_eq!(stored_ids(&store), memory_ids(&records), "the store holds what memory holds");

        // A record memory no longer holds, left in the store (a process stopped before
        // pruning it): gone at the next open, with those over a smaller capacity.
        let mut stray = finished(1000);
        stray.updated_at = 1; // the oldest: the first to go
        let mut key = stray.queued_at.to_be_bytes().to_vec();
        key.extend_from_slice(stray.call_id.as_str().as_bytes());
        store
            .commit(vec![StateOp::put(ACTIVATIONS_TABLE, key, serde_json::to_vec(&stray).unwrap())])
            .await
            .unwrap();
        drop(records);
        let records = StoredActivations::open(store.clone(), 60).unwrap();
        assert_eq!(records.memory().len(), 60);
        assert_eq!(stored_ids(&store), memory_ids(&records));
    });
}

/// A store that takes no writes (a full or failing disk).
struct Refusing(MemoryStateStore);

#[async_trait::async_trait]
impl StateStore for Refusing {
    fn get(&self, table: &'static str, key: &[u8]) -> faas_core::Result<Option<Vec<u8>>> {
        self.0.get(table, key)
    }
    fn scan(&self, table: &'static str) -> faas_core::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.scan(table)
    }
    async fn commit(&self, _ops: Vec<faas_core::state::StateOp>) -> faas_core::Result<()> {
        Err(Error::unavailable("no space left on device"))
    }
    fn apply(&self, _ops: Vec<faas_core::state::StateOp>) {}
    fn describe(&self) -> String {
        "refusing".into()
    }
}

/// A call that cannot be written is not accepted (the store's error, 503), gives its room
/// back, and is recorded `failed`; nothing is delivered.
#[tokio::test]
async fn an_unwritable_store_refuses_the_call_and_keeps_no_room() {
    let store: Arc<dyn StateStore> = Arc::new(Refusing(MemoryStateStore::default()));
    let q = open(&store);
    let it = item("echo", "x");
    let e = q.publisher().publish(it.clone()).await.unwrap_err();
    assert_eq!(e.http_status(), 503, "{e}");
    assert_eq!((q.queue().len(), q.queue().bytes()), (0, 0));
    let rec = q.activations().get(&it.call_id).await.unwrap().unwrap();
    assert_eq!(rec.state, AsyncState::Failed);
    assert!(rec.error.unwrap().contains("no space left"));
    assert!(q.consumer().try_next().is_none(), "nothing is delivered");
}

//! The append-only state log ([`LogStore`]) on its own: what is written is read back after
//! a reopen, a write cut by a crash is dropped whole, compaction keeps the live data and
//! bounds the files, and `apply` writes reach the disk without a commit.
#![cfg(feature = "durable")]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use faas_core::state::{StateOp, StateStore};
use faas_queue::log_store::{LogStore, APPLY_SYNC, PREALLOC_BYTES};

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("faas-log-{name}-{}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

fn dir_bytes(dir: &Path) -> u64 {
    segment_files(dir).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum()
}

async fn reopen(store: LogStore, dir: &Path) -> LogStore {
    store.close().await.unwrap();
    drop(store);
    LogStore::open(dir).unwrap()
}

#[tokio::test]
async fn puts_deletes_and_batches_survive_reopening() {
    let dir = temp_dir("roundtrip");
    let store = LogStore::open(&dir).unwrap();
    store
        .commit(vec![
            StateOp::put("a", b"k2", b"two"),
            StateOp::put("a", b"k1", b"one"),
            StateOp::put("b", b"k1", b"other table"),
            StateOp::put("a", b"gone", b"x"),
        ])
        .await
        .unwrap();
    store
        .commit(vec![StateOp::delete("a", b"gone"), StateOp::put("a", b"k2", b"TWO")])
        .await
        .unwrap();
    store.apply(vec![StateOp::put("a", b"k3", b"applied")]);
    // Reads see what was written, in key order.
    assert_eq!(store.get("a", b"k2").unwrap().as_deref(), Some(&b"TWO"[..]));
    let store = reopen(store, &dir).await;
    let a = store.scan("a").unwrap();
    assert_eq!(
        a,
        vec![
            (b"k1".to_vec(), b"one".to_vec()),
            (b"k2".to_vec(), b"TWO".to_vec()),
            (b"k3".to_vec(), b"applied".to_vec()),
        ]
    );
    assert_eq!(store.scan_keys("a").unwrap(), vec![b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec()]);
    assert_eq!(store.get("b", b"k1").unwrap().as_deref(), Some(&b"other table"[..]));
    assert_eq!(store.get("a", b"gone").unwrap(), None);
    assert!(store.scan("never").unwrap().is_empty());
    // A table name the format cannot hold is refused, naming the table; the store goes on.
    let long: &'static str = Box::leak("t".repeat(300).into_boxed_str());
    let e = store.commit(vec![StateOp::put(long, b"k", b"v")]).await.unwrap_err();
    assert!(e.to_string().contains("too long"), "{e}");
    store.commit(vec![StateOp::put("a", b"k4", b"after")]).await.unwrap();
    let store = reopen(store, &dir).await;
    assert_eq!(store.scan("a").unwrap().len(), 4);
    store.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tail of the last segment as a crash leaves it: part of a frame. It is cut off at
/// open, the frames before it are kept, and writes after the cut are read back.
#[tokio::test]
async fn a_torn_tail_is_cut_and_the_frames_before_it_kept() {
    let dir = temp_dir("torn");
    let store = LogStore::open(&dir).unwrap();
    store.commit(vec![StateOp::put("t", b"a", b"first")]).await.unwrap();
    store.commit(vec![StateOp::put("t", b"b", b"second")]).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let seg = segment_files(&dir).pop().unwrap();
    let whole = std::fs::metadata(&seg).unwrap().len();
    // A header promising 100 bytes of payload, and 10 of them.
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&100u32.to_le_bytes()).unwrap();
    f.write_all(&0u32.to_le_bytes()).unwrap();
    f.write_all(&[7u8; 10]).unwrap();
    drop(f);

    let store = LogStore::open(&dir).unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole, "the torn frame is cut off");
    assert_eq!(store.scan("t").unwrap().len(), 2);
    store.commit(vec![StateOp::put("t", b"c", b"third")]).await.unwrap();
    let store = reopen(store, &dir).await;
    assert_eq!(store.get("t", b"c").unwrap().as_deref(), Some(&b"third"[..]));
    assert_eq!(store.scan("t").unwrap().len(), 3);
    store.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A last frame whose bytes do not match its checksum (a write the disk did not finish) is
/// dropped whole: none of its ops is applied, not even those whose bytes are intact.
#[tokio::test]
async fn a_last_frame_failing_its_checksum_is_dropped_whole() {
    let dir = temp_dir("crc");
    let store = LogStore::open(&dir).unwrap();
    store.commit(vec![StateOp::put("t", b"a", b"kept")]).await.unwrap();
    let before = {
        store.close().await.unwrap();
        dir_bytes(&dir)
    };
    drop(store);
    let store = LogStore::open(&dir).unwrap();
    store
        .commit(vec![StateOp::put("t", b"b", b"intact"), StateOp::put("t", b"c", b"damaged")])
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    let seg = segment_files(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let store = LogStore::open(&dir).unwrap();
    assert_eq!(store.get("t", b"a").unwrap().as_deref(), Some(&b"kept"[..]));
    assert_eq!(store.get("t", b"b").unwrap(), None, "a damaged frame is applied not at all");
    assert_eq!(store.get("t", b"c").unwrap(), None);
    assert_eq!(dir_bytes(&dir), before);
    store.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A queue's pattern (put, then delete soon after) over many small segments: old segments
/// are compacted away, the files stay within twice the live data plus a few segments, and
/// after a reopen the live keys have their last values and the deleted ones are gone.
#[tokio::test]
async fn compaction_keeps_the_live_data_and_bounds_the_files() {
    let dir = temp_dir("compact");
    let segment = 16 * 1024;
    let store = LogStore::open_with(&dir, segment).unwrap();
    let value = vec![b'v'; 200];
    let mut peak = 0;
    for round in 0u32..500 {
        let keys: Vec<u32> = (round * 10..round * 10 + 10).collect();
        let puts = keys.iter().map(|k| StateOp::put("queue", k.to_be_bytes(), value.clone()));
        store.commit(puts.collect()).await.unwrap();
        // One key in ten stays (with its last value); the others are deleted.
        store.apply(vec![StateOp::put(
            "kept",
            keys[0].to_be_bytes(),
            format!("value {}", keys[0]),
        )]);
        store.apply(keys.iter().map(|k| StateOp::delete("queue", k.to_be_bytes())).collect());
        peak = peak.max(dir_bytes(&dir));
    }
    store.commit(vec![]).await.unwrap();
    let (bytes, live) = store.usage();
    assert!(live > 0);
    assert!(
        bytes <= 2 * live + 3 * segment,
        "{bytes} bytes in the files for {live} live bytes: compaction did not keep up"
    );
    // 5,000 puts of 200 bytes went through (over 1 MB); the files never held all of them.
    assert!(peak < 1_000_000, "the files grew to {peak} bytes");
    assert!(store.segments() < 64, "{} segments", store.segments());
    assert!(!dir.join("0000000000000001.log").exists(), "the first segment was compacted away");
    let store = reopen(store, &dir).await;
    assert!(store.scan("queue").unwrap().is_empty());
    let kept = store.scan("kept").unwrap();
    assert_eq!(kept.len(), 500);
    for (k, v) in kept {
        let i = u32::from_be_bytes(k.try_into().unwrap());
        assert_eq!(v, format!("value {i}").into_bytes());
    }
    store.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes given to `apply` reach the disk (an `fdatasync`) without any commit after them.
#[tokio::test]
async fn applied_writes_are_synced_without_a_commit() {
    let dir = temp_dir("apply");
    let store = LogStore::open(&dir).unwrap();
    store.commit(vec![StateOp::put("t", b"a", b"1")]).await.unwrap();
    let before = store.syncs();
    store.apply(vec![StateOp::put("t", b"b", b"2")]);
    let deadline = std::time::Instant::now() + APPLY_SYNC * 50;
    while store.syncs() == before {
        assert!(std::time::Instant::now() < deadline, "the applied write was never synced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The segment being written is zero-filled ahead of its frames (so that a commit's
/// `fdatasync` does not also journal a new file size). A crash leaves those zeros: they are
/// no data, the open cuts them, and what comes after is read back.
#[tokio::test]
async fn zeros_written_ahead_are_not_data_and_are_cut_at_open() {
    let dir = temp_dir("ahead");
    let store = LogStore::open(&dir).unwrap();
    for i in 0u32..100 {
        store.commit(vec![StateOp::put("t", i.to_be_bytes(), vec![b'v'; 100])]).await.unwrap();
    }
    let seg = segment_files(&dir).pop().unwrap();
    // What a `kill -9` now leaves on disk: every commit synced, then zeros.
    let crashed = std::fs::read(&seg).unwrap();
    assert_eq!(crashed.len() as u64, PREALLOC_BYTES, "the segment is written ahead");
    store.close().await.unwrap();
    drop(store);
    let frames = std::fs::metadata(&seg).unwrap().len();
    assert!(frames > 100 * 100 && frames < PREALLOC_BYTES, "a closed store is cut back: {frames}");
    assert!(crashed[frames as usize..].iter().all(|b| *b == 0));
    std::fs::write(&seg, &crashed).unwrap();

    let store = LogStore::open(&dir).unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), frames, "the zeros are cut at open");
    assert_eq!(store.scan("t").unwrap().len(), 100);
    store.commit(vec![StateOp::put("t", b"after", b"x")]).await.unwrap();
    let store = reopen(store, &dir).await;
    assert_eq!(store.scan("t").unwrap().len(), 101);
    assert_eq!(store.get("t", b"after").unwrap().as_deref(), Some(&b"x"[..]));
    store.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// One put as a frame, written by hand from the format (`1 table key value`).
fn frame(table: &str, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut payload = vec![1, table.len() as u8];
    payload.extend_from_slice(table.as_bytes());
    payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
    payload.extend_from_slice(key);
    payload.extend_from_slice(&(value.len() as u32).to_le_bytes());
    payload.extend_from_slice(value);
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    f.extend_from_slice(&payload);
    f
}

/// Eight zero bytes are also a frame with no ops (an empty commit as earlier builds wrote
/// it): one between frames does not end the log. And a crash that lost a frame's first page
/// but wrote a later one leaves zeros, then stray bytes: the log is cut after its last
/// frame and goes on from there.
#[tokio::test]
async fn an_empty_frame_is_read_past_and_stray_bytes_after_zeros_are_cut() {
    let dir = temp_dir("empty-frame");
    std::fs::create_dir_all(&dir).unwrap();
    let seg = dir.join("0000000000000001.log");
    let mut bytes = frame("t", b"a", b"before");
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(&frame("t", b"b", b"after an empty frame"));
    let frames = bytes.len() as u64;
    bytes.extend_from_slice(&[0; 5000]);
    bytes.extend_from_slice(&[0x5a; 3000]);
    bytes.extend_from_slice(&[0; 1000]);
    std::fs::write(&seg, &bytes).unwrap();

    let store = LogStore::open(&dir).unwrap();
    assert_eq!(store.get("t", b"a").unwrap().as_deref(), Some(&b"before"[..]));
    assert_eq!(store.get("t", b"b").unwrap().as_deref(), Some(&b"after an empty frame"[..]));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), frames, "cut after the last frame");
    store.commit(vec![StateOp::put("t", b"c", b"new")]).await.unwrap();
    let store = reopen(store, &dir).await;
    assert_eq!(store.scan("t").unwrap().len(), 3);
    assert_eq!(store.get("t", b"c").unwrap().as_deref(), Some(&b"new"[..]));
    store.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

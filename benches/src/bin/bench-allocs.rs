//! Counts heap allocations per request on the gateway's warm path, in process: the default
//! `Gateway` service called for `GET /function/hello` on an in-memory function, the
//! in-memory invoke alone, and one asynchronous invocation end to end (published through a
//! `TrackedPublisher` onto the in-memory queue, run by a `Worker`, recorded in the
//! in-memory activation store, the store full so that every record evicts an old one).
//! Prints allocations and bytes per request.
//!
//! `cargo run --release -p faas-benches --bin bench-allocs`. Figures: `BENCHMARKS.md`.

// A counting global allocator has to implement the `unsafe` `GlobalAlloc` trait; it only
// forwards to the system allocator and adds to two counters.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use faas_core::prelude::*;
use faas_core::queue::{QueuePublisher, QueuedInvocation};
use faas_core::{Backend, Body, FunctionRef, Invocation};
use faas_http::{Gateway, GatewayConfig};
use faas_queue::{MemoryActivationStore, MemoryQueue, TrackedPublisher, Worker, WorkerConfig};
use tower::{Service, ServiceExt};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(n as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn item(i: usize) -> QueuedInvocation {
    faas_benches::queued("hello", i)
}

fn counted() -> (u64, u64) {
    (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed))
}

fn main() -> std::io::Result<()> {
    const N: u64 = 10_000;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let memory = faas_benches::memory_ok("hello")
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let gateway = Gateway::builder(Arc::new(memory.clone()) as Arc<dyn Backend>)
            .config(GatewayConfig::default())
            .build();
        let mut service = gateway.service();
        let request = || {
            http::Request::get("/function/hello")
                .header("host", "127.0.0.1:8080")
                .body(Body::empty())
                .map_err(std::io::Error::other)
        };
        // Warm up (the routing cache, the activation ring).
        for _ in 0..2_000 {
            drop(service.ready().await.map_err(std::io::Error::other)?.call(request()?).await);
        }
        // Requests are built first, so that only the gateway's allocations are counted.
        let requests = (0..N).map(|_| request()).collect::<Result<Vec<_>, _>>()?;
        let (a0, b0) = counted();
        for req in requests {
            drop(service.ready().await.map_err(std::io::Error::other)?.call(req).await);
        }
        let (a1, b1) = counted();
        let invocations: Vec<Invocation> = (0..N)
            .map(|_| Invocation {
                id: Default::default(),
                function: FunctionRef::default_ns("hello"),
                request: http::Request::new(Body::empty()),
            })
            .collect();
        let (a2, b2) = counted();
        for inv in invocations {
            drop(memory.invoke(inv).await);
        }
        let (a3, b3) = counted();
        let per = |a: u64, b: u64| (a as f64 / N as f64, b as f64 / N as f64);
        let (ga, gb) = per(a1 - a0, b1 - b0);
        let (ma, mb) = per(a3 - a2, b3 - b2);
        println!("gateway GET /function/hello: {ga:.2} allocations, {gb:.0} bytes per request");
        println!("MemoryInvoker::invoke alone:  {ma:.2} allocations, {mb:.0} bytes per request");

        // Asynchronous: publish, then wait for the worker to finish them all.
        let queue = MemoryQueue::new(N as usize * 4);
        let store = Arc::new(MemoryActivationStore::new(N as usize));
        let publisher = TrackedPublisher::new(Arc::new(queue.publisher()), store.clone());
        let worker = Worker::new(
            Arc::new(memory.clone()),
            Arc::new(queue.consumer()),
            store.clone(),
            WorkerConfig::default(),
        )
        .spawn();
        let stats = worker.stats().clone();
        let batch = || (0..N).map(|i| item(i as usize)).collect::<Vec<_>>();
        // Warm up, and fill the store so that the measured records evict old ones.
        for round in 1..=2 {
            let r = publisher.publish_batch(batch()).await;
            assert!(r.iter().all(Result::is_ok));
            stats.wait_finished(round * N).await;
        }
        let items = batch();
        let (a4, b4) = counted();
        let r = publisher.publish_batch(items).await;
        stats.wait_finished(3 * N).await;
        let (a5, b5) = counted();
        assert!(r.iter().all(Result::is_ok));
        let (qa, qb) = per(a5 - a4, b5 - b4);
        println!("async invocation end to end:  {qa:.2} allocations, {qb:.0} bytes per invocation");
        worker.shutdown().await.map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(())
    })
}

//! The `faas-queue-worker` binary as its own process, on librdkafka's mock cluster: it runs
//! a queued call through a gateway over HTTP and publishes the activation records to the
//! activations topic, where a store in another process (this test) reads them; and a worker
//! process killed with SIGKILL (a real consumer crash) loses no accepted call.
#![cfg(all(feature = "kafka", feature = "bin"))]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{bounded, item};
use faas_core::queue::{AsyncState, QueuePublisher};
use faas_queue::kafka::{KafkaConfig, KafkaPublisher};
use faas_queue::kafka_store::KafkaActivationStore;
use rdkafka::mocking::MockCluster;

/// A stand-in gateway on 127.0.0.1: `/function/NAME.NAMESPACE/...` answers the request body
/// upper-cased.
async fn fake_gateway() -> (String, tokio::task::JoinHandle<()>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    use http_body_util::BodyExt;
                    let ok = req.uri().path().starts_with("/function/shout.openfaas-fn");
                    let body =
                        req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    let mut resp = http::Response::new(http_body_util::Full::new(Bytes::from(
                        body.to_ascii_uppercase(),
                    )));
                    if !ok {
                        *resp.status_mut() = http::StatusCode::NOT_FOUND;
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, task)
}

struct Worker(std::process::Child);

impl Worker {
    /// Waits (bounded) for the process to exit, and gives its status.
    async fn exited(&mut self, what: &str) -> std::process::ExitStatus {
        bounded(what, async {
            loop {
                if let Ok(Some(s)) = self.0.try_wait() {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill").arg("-KILL").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// A one-broker mock cluster with `topic` and its records' topic (2 partitions each) and
/// the dead letters, and the command of a worker of `topic` invoking through `gateway`.
fn cluster_and_worker(
    topic: &str,
    gateway: &str,
) -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, KafkaConfig, Command) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let config = KafkaConfig::new(cluster.bootstrap_servers());
    cluster.create_topic(topic, 2, 1).unwrap();
    cluster.create_topic(&format!("{topic}-activations"), 2, 1).unwrap();
    cluster.create_topic(&config.dead_letter_topic, 1, 1).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faas-queue-worker"));
    cmd.args(["--brokers", &config.brokers, "--gateway", gateway, "--topic", topic])
        .args(["--kafka-property", "session.timeout.ms=6000"])
        .env_remove("FAAS_QUEUE_ACTIVATIONS")
        .env_remove("FAAS_QUEUE_ACTIVATIONS_TOPIC")
        .env_remove("FAAS_QUEUE_LISTEN")
        .stdout(Stdio::null());
    (cluster, config, cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_binary_publishes_activation_records() {
    let (gateway, gateway_task) = fake_gateway().await;
    let (cluster, config, mut cmd) = cluster_and_worker("jobs", &gateway);
    let child = cmd.stderr(Stdio::inherit()).spawn().expect("start faas-queue-worker");
    let pid = child.id();
    let mut worker = Worker(child);

    let publisher =
        KafkaPublisher::new(&KafkaConfig { topic: "jobs".into(), ..config.clone() }).unwrap();
    let call = item("shout", "from another process");
    publisher.publish(call.clone()).await.unwrap();

    // The records topic defaults to the queue topic + "-activations".
    let store = KafkaActivationStore::new(&config, "jobs-activations").unwrap();
    let rec = bounded("the worker's final record on the topic", async {
        loop {
            if let Some(r) = store.get_now(&call.call_id).filter(|r| r.state.is_terminal()) {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(rec.state, AsyncState::Succeeded, "{rec:?}");
    let activation = rec.activation.expect("the activation");
    assert_eq!(activation.response.result["body"], "FROM ANOTHER PROCESS");

    // SIGTERM: it stops gracefully (leaves its group, closes its store) while the cluster
    // is up.
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let status = worker.exited("the worker to exit").await;
    assert!(status.success(), "{status:?}");
    bounded("closing the store", store.close()).await.unwrap();
    gateway_task.abort();
    drop(cluster);
}

/// `--help` exits 0 and shows each option with its `FAAS_QUEUE_*` variable (the unit tests
/// of the binary pin the option names themselves).
#[test]
fn the_worker_binary_lists_its_options_and_variables() {
    let out = Command::new(env!("CARGO_BIN_EXE_faas-queue-worker")).arg("--help").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    let options: Vec<&str> = help
        .lines()
        .filter_map(|l| l.strip_prefix("      --")?.split(' ').next())
        .filter(|o| !["help", "kafka-property"].contains(o))
        .collect();
    assert_eq!(options.len(), 18, "{help}");
    for o in options {
        let env = format!("[env: FAAS_QUEUE_{}=", o.to_uppercase().replace('-', "_"));
        assert!(help.contains(&env), "{env} in {help}");
    }
    assert!(help.contains("--kafka-property <KEY=VALUE>"), "{help}");
    assert!(help.contains("--activations memory keeps"), "{help}");
}

/// An option given as a variable is read (and checked) like the flag.
#[test]
fn the_worker_binary_reads_its_environment_variables() {
    let out = Command::new(env!("CARGO_BIN_EXE_faas-queue-worker"))
        .args(["--brokers", "127.0.0.1:1", "--gateway", "http://127.0.0.1:1"])
        .env("FAAS_QUEUE_MAX_ATTEMPTS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-attempts"), "{err}");
}

/// librdkafka's lines reach the worker's log through `tracing`, each naming which of the
/// process's Kafka clients wrote it: with no broker listening, both the producer and the
/// consumer of the queue topic report the brokers down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_lines_name_the_client_that_wrote_them() {
    use std::io::BufRead;
    // A port nothing listens on: connections are refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_faas-queue-worker"))
        .args(["--brokers", &closed.to_string(), "--gateway", "http://127.0.0.1:1"])
        .args(["--topic", "jobs", "--activations", "memory", "--no-create-topics"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start faas-queue-worker");
    let mut worker = Worker(child);
    let stderr = worker.0.stderr.take().expect("the worker's stderr");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let wanted = ["client=\"producer\"", "client=\"consumer of jobs\""];
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while !wanted
            .iter()
            .all(|w| seen.iter().any(|l: &String| l.contains("librdkafka") && l.contains(w)))
        {
            match rx.recv().await {
                Some(line) => seen.push(line),
                None => return false,
            }
        }
        true
    })
    .await;
    assert_eq!(found, Ok(true), "both clients' lines within 60 s; the worker wrote: {seen:#?}");
    assert!(
        seen.iter().any(|l| l.contains("client=\"producer\"") && l.contains("brokers are down")),
        "{seen:#?}"
    );
    drop(worker);
}

/// What the crash test's gateway has seen: the bodies of the calls it answered, how many it
/// is holding unanswered, and whether it still holds calls past `quota`.
#[derive(Default)]
struct Ledger {
    answered: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    held: std::sync::atomic::AtomicU64,
    release: std::sync::atomic::AtomicBool,
}

/// A gateway that answers the first `quota` calls and holds every later one unanswered until
/// `release` is set (then it answers all).
async fn holding_gateway(
    quota: usize,
    ledger: std::sync::Arc<Ledger>,
) -> (String, tokio::task::JoinHandle<()>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let ledger = ledger.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await.map(|c| c.to_bytes());
                        let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
                        let over_quota = ledger.answered.lock().unwrap().len() >= quota;
                        if over_quota && !ledger.release.load(Ordering::SeqCst) {
                            ledger.held.fetch_add(1, Ordering::SeqCst);
                            std::future::pending::<()>().await;
                        }
                        *ledger.answered.lock().unwrap().entry(body).or_default() += 1;
                        let resp = http::Response::new(http_body_util::Full::new(Bytes::new()));
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, task)
}

/// A real consumer crash: worker A, a `faas-queue-worker` process in group `crash`, is killed
/// with SIGKILL while holding unanswered calls. It leaves no group and commits nothing on the
/// way out; the group coordinator notices only when A's session times out (2.5 s), and only
/// then can worker B, a second process in the same group, take A's partitions from their last
/// committed offsets. Every accepted call is answered (duplicates allowed, losses not), and
/// B answers calls A had taken but never finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    const N: usize = 200;

    let cluster = MockCluster::new(1).expect("mock cluster");
    let config = KafkaConfig::new(cluster.bootstrap_servers());
    cluster.create_topic("crash-jobs", 4, 1).unwrap();
    cluster.create_topic(&config.dead_letter_topic, 1, 1).unwrap();
    let ledger = Arc::new(Ledger::default());
    let (gateway, gateway_task) = holding_gateway(N / 4, ledger.clone()).await;
    let spawn_worker = || {
        let child = Command::new(env!("CARGO_BIN_EXE_faas-queue-worker"))
            .args(["--brokers", &config.brokers, "--gateway", &gateway])
            .args(["--topic", "crash-jobs", "--group", "crash", "--activations", "memory"])
            .args(["--kafka-property", "session.timeout.ms=2500"])
            .args(["--kafka-property", "heartbeat.interval.ms=250"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start faas-queue-worker");
        Worker(child)
    };

    let mut a = spawn_worker();
    let publisher =
        KafkaPublisher::new(&KafkaConfig { topic: "crash-jobs".into(), ..config.clone() }).unwrap();
    let items: Vec<_> = (0..N).map(|i| item(&format!("f{}", i % 8), format!("job-{i}"))).collect();
    for it in &items {
        publisher.publish(it.clone()).await.unwrap();
    }
    bounded("worker A to hold calls past its quota", async {
        while ledger.held.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let answered_by_a = ledger.answered.lock().unwrap().clone();
    assert!(answered_by_a.len() < N, "A answered everything before the crash");

    // The crash: SIGKILL, so no destructor, no LeaveGroup, no final commit.
    let _ = Command::new("kill").arg("-KILL").arg(a.0.id().to_string()).status();
    let status = a.exited("worker A to die").await;
    assert_eq!(status.signal(), Some(9), "A was killed, not stopped: {status:?}");

    ledger.release.store(true, Ordering::SeqCst);
    let b = spawn_worker();
    bounded("worker B to answer every accepted call", async {
        loop {
            if common::not_completed(&items, &ledger.answered.lock().unwrap()) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let answered = ledger.answered.lock().unwrap().clone();
    let taken_over = answered.keys().filter(|k| !answered_by_a.contains_key(*k)).count();
    assert_eq!(taken_over, N - answered_by_a.len(), "B answered what A left");
    drop(b);
    gateway_task.abort();
    drop(cluster);
}

/// One worker killed: worker A, a `faas-queue-worker` process, is killed with SIGKILL;
/// worker B, in this process, handles a call published to one of A's partitions less than
/// 10 s after the kill (measured from the kill to B's handling it).
///
/// Both run with a 3 s session timeout rather than the default 6 s: a broker completes the
/// rebalance after a member's session expired as soon as the remaining members have
/// rejoined (B within a heartbeat), about 6-8 s after a kill with the defaults, but
/// librdkafka's mock cluster always waits the session timeout less 1 s for them, so the
/// same takeover takes about twice the session timeout there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_partitions_go_to_the_others_within_10s() {
    use faas_queue::kafka::KafkaConsumer;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::os::unix::process::ExitStatusExt;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    const PARTITIONS: i32 = 4;

    let cluster = MockCluster::new(1).expect("mock cluster");
    let config = KafkaConfig {
        topic: "takeover-jobs".into(),
        group_id: "takeover".into(),
        ..KafkaConfig::new(cluster.bootstrap_servers())
    }
    .property("session.timeout.ms", "3000")
    .property("heartbeat.interval.ms", "1000");
    cluster.create_topic(&config.topic, PARTITIONS, 1).unwrap();
    cluster.create_topic(&config.dead_letter_topic, 1, 1).unwrap();
    let (gateway, gateway_task) = fake_gateway().await;
    let mut a = Worker(
        Command::new(env!("CARGO_BIN_EXE_faas-queue-worker"))
            .args(["--brokers", &config.brokers, "--gateway", &gateway])
            .args(["--topic", &config.topic, "--group", &config.group_id])
            .args(["--activations", "memory"])
            .args(["--kafka-property", "session.timeout.ms=3000"])
            .args(["--kafka-property", "heartbeat.interval.ms=1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start faas-queue-worker"),
    );

    // Worker B: which calls it handled, and when.
    let handled: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let invoker = common::TestInvoker::new();
    {
        let handled = handled.clone();
        invoker.register("shout", move |req| {
            let handled = handled.clone();
            async move {
                let body = req.into_body().collect_bytes().await?;
                handled
                    .lock()
                    .unwrap()
                    .push((String::from_utf8_lossy(&body).into_owned(), Instant::now()));
                Ok(common::response(200, "ok"))
            }
        });
    }
    let consumer_b = Arc::new(KafkaConsumer::new(&config).expect("consumer"));
    let store = Arc::new(faas_queue::MemoryActivationStore::default());
    let worker_b =
        faas_queue::Worker::new(invoker, consumer_b.clone(), store, common::fast_config()).spawn();
    let owned_by_a = bounded("A and B to share the partitions", async {
        loop {
            let b = consumer_b.assignment();
            if !b.is_empty() && b.len() < PARTITIONS as usize {
                break (0..PARTITIONS).filter(|p| !b.contains(p)).collect::<Vec<_>>();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // The crash: SIGKILL, so no LeaveGroup; then one call on each of A's partitions.
    let _ = Command::new("kill").arg("-KILL").arg(a.0.id().to_string()).status();
    let killed = Instant::now();
    let status = a.exited("worker A to die").await;
    assert_eq!(status.signal(), Some(9), "A was killed, not stopped: {status:?}");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()
        .expect("producer");
    for p in &owned_by_a {
        let payload = serde_json::to_vec(&item("shout", format!("partition-{p}"))).unwrap();
        producer
            .send(
                FutureRecord::<(), _>::to(&config.topic).partition(*p).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("published");
    }
    let first = bounded("B to handle a call on one of A's partitions", async {
        loop {
            if let Some(at) = handled.lock().unwrap().first().map(|(_, at)| *at) {
                break at;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let took = first.duration_since(killed);
    eprintln!(
        "takeover: A owned {owned_by_a:?}; B handled a call on one of them {took:?} after the kill"
    );
    assert!(took < Duration::from_secs(10), "A's partitions went to B after {took:?}");
    bounded("every call on A's partitions to be handled", async {
        while handled.lock().unwrap().len() < owned_by_a.len() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    bounded("worker B to shut down", worker_b.shutdown()).await.unwrap();
    bounded("B to leave its group", faas_core::queue::QueueConsumer::close(&*consumer_b))
        .await
        .expect("closed");
    drop(producer);
    gateway_task.abort();
    drop(cluster);
}

/// `GET path` on `addr`, one request per connection: the status and the body.
async fn get(addr: &str, path: &str) -> (u16, String) {
    let (addr, path) = (addr.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the worker");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
        let req = format!("GET {path} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).expect("send the request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read the answer");
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    })
    .await
    .expect("the request's thread")
}

/// Polls `GET path` (bounded) until `want` says yes; gives that answer.
async fn poll(addr: &str, path: &str, what: &str, want: impl Fn(u16, &str) -> bool) -> String {
    bounded(what, async {
        loop {
            let (status, body) = get(addr, path).await;
            if want(status, &body) {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// `--listen`: `/healthz` follows the brokers (503 naming why while every broker is down, 200
/// again once one is back), `/metrics` counts the calls the worker finished, and other
/// paths and methods get clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_binary_serves_its_health_and_metrics() {
    let (gateway, gateway_task) = fake_gateway().await;
    let (cluster, config, mut cmd) = cluster_and_worker("probed", &gateway);
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start faas-queue-worker");
    let stderr = child.stderr.take().expect("its stderr");
    let pid = child.id();
    let mut worker = Worker(child);
    // Its log goes on to the test's, and names the address it serves on.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("/healthz and /metrics on http://").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
            eprintln!("{line}");
        }
    });
    let addr = bounded("the worker's status address in its log", async {
        loop {
            if let Ok(a) = rx.try_recv() {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(poll(&addr, "/healthz", "healthy", |s, _| s == 200).await, "ok\n");

    let publisher =
        KafkaPublisher::new(&KafkaConfig { topic: "probed".into(), ..config.clone() }).unwrap();
    publisher.publish(item("shout", "counted")).await.unwrap();
    let metrics = poll(&addr, "/metrics", "one call counted", |s, b| {
        s == 200 && b.contains("\nfaas_queue_worker_succeeded_total 1\n")
    })
    .await;
    assert!(metrics.contains("\nfaas_queue_worker_received_total 1\n"), "{metrics}");
    assert!(metrics.contains("\nfaas_queue_worker_healthy 1\n"), "{metrics}");
    assert_eq!(get(&addr, "/nowhere").await.0, 404);

    // Every broker down: 503 with the reason, and the gauge at 0.
    cluster.broker_down(1).expect("broker down");
    let why = poll(&addr, "/healthz", "unhealthy while the broker is down", |s, _| s == 503).await;
    assert!(why.contains("no broker reachable"), "{why}");
    assert!(get(&addr, "/metrics").await.1.contains("\nfaas_queue_worker_healthy 0\n"));
    cluster.broker_up(1).expect("broker up");
    poll(&addr, "/healthz", "healthy again once the broker is back", |s, _| s == 200).await;

    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let status = worker.exited("the worker to exit").await;
    assert!(status.success(), "{status:?}");
    gateway_task.abort();
    drop(cluster);
}

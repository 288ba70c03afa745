//! The `faas-queue-worker` binary as its own process, on librdkafka's mock cluster: it runs
//! a queued call through a gateway over HTTP and publishes the activation records to the
//! activations topic, where a store in another process (this test) reads them.
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

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill").arg("-KILL").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_binary_publishes_activation_records() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let config = KafkaConfig::new(cluster.bootstrap_servers());
    cluster.create_topic("jobs", 2, 1).unwrap();
    cluster.create_topic("jobs-activations", 2, 1).unwrap();
    cluster.create_topic(&config.dead_letter_topic, 1, 1).unwrap();
    let (gateway, gateway_task) = fake_gateway().await;

    let child = Command::new(env!("CARGO_BIN_EXE_faas-queue-worker"))
        .args(["--brokers", &config.brokers, "--gateway", &gateway, "--topic", "jobs"])
        .args(["--kafka-property", "session.timeout.ms=6000"])
        .env_remove("FAAS_QUEUE_ACTIVATIONS")
        .env_remove("FAAS_QUEUE_ACTIVATIONS_TOPIC")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start faas-queue-worker");
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
    let status = bounded("the worker to exit", async {
        loop {
            if let Ok(Some(s)) = worker.0.try_wait() {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
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
    assert_eq!(options.len(), 15, "{help}");
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

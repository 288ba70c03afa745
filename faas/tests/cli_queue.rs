//! `faas up --queue`: the flags in `--help`, malformed queue URLs refused before anything
//! starts, the clear error of a build without the `kafka` feature, and (with the feature)
//! `faas up --queue kafka://...` end to end against librdkafka's mock cluster.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn stack() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/stack.yml")
}

/// Runs `faas ARGS` to completion, killing it if it takes longer than a bound.
fn faas(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(args)
        .env_remove("FAAS_QUEUE")
        .env_remove("FAAS_QUEUE_ACTIVATIONS_TOPIC")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run faas");
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("faas output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(id.to_string()).status();
            panic!("faas {args:?} did not finish within 60 s");
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn up_help_documents_the_queue_flags() {
    let out = faas(&["up", "--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for s in [
        "--queue <URL>",
        "kafka://HOST:PORT",
        "--features kafka",
        "--no-worker",
        "--activations-topic",
        "FAAS_QUEUE",
        "[default: durable]",
        "memory",
    ] {
        assert!(help.contains(s), "`faas up --help` lacks {s:?}:\n{help}");
    }
}

#[test]
fn malformed_queue_urls_are_refused_naming_the_flag() {
    let stack = stack();
    let stack = stack.to_str().unwrap();
    for bad in
        ["nats://127.0.0.1:4222", "kafka://", "kafka://127.0.0.1/jobs", "kafka://h:1/bad topic"]
    {
        let out = faas(&["up", "-f", stack, "--listen", "127.0.0.1:0", "--queue", bad]);
        assert!(!out.status.success(), "{bad:?} was accepted");
        let e = stderr(&out);
        assert!(e.contains("--queue"), "{bad:?}: {e}");
        assert!(!e.contains("deploying"), "{bad:?}: refused before anything starts: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}

/// Without the feature, a Kafka queue fails at once with a message naming the feature.
#[cfg(not(feature = "kafka"))]
#[test]
fn kafka_queue_without_the_feature_names_the_feature() {
    let stack = stack();
    let out = faas(&[
        "up",
        "-f",
        stack.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--queue",
        "kafka://127.0.0.1:9092/jobs",
    ]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("`kafka` feature") && e.contains("--features kafka"), "{e}");
    assert!(!e.contains("deploying") && !e.contains("panicked"), "{e}");
}

/// `faas up --queue kafka://BROKER/jobs`: `/async-function` goes through the topic, the
/// in-process worker runs the call, and the activation record (through the Kafka store)
/// shows the result.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faas_up_with_a_kafka_queue_runs_async_calls() {
    use bytes::Bytes;
    use faas_http::client::GatewayClient;
    use http::Method;

    let kafka = faas_queue::kafka::MockKafka::new(1).expect("mock cluster");
    for (topic, partitions) in
        [("jobs", 2), ("jobs-activations", 2), ("faas-async-dead-letters", 1)]
    {
        kafka.create_topic(topic, partitions).unwrap();
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = format!("http://127.0.0.1:{port}");
    let state = std::env::temp_dir().join(format!("faas-cli-queue-test-{}", std::process::id()));
    let queue = format!("kafka://{}/jobs", kafka.bootstrap_servers());
    let _ = std::fs::remove_dir_all(&state);
    let child = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(["up", "-f"])
        .arg(stack())
        .args([
            "--filter",
            "uppercase",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--queue",
            &queue,
        ])
        .arg("--state-dir")
        .arg(&state)
        .env_remove("basic_auth")
        .env_remove("FAAS_QUEUE_ACTIVATIONS_TOPIC")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start faas up");
    let up = Up(child);

    // Auth is on: log in with the password `faas up` generates into its state directory.
    let client = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(creds) = faas_http::BasicAuth::from_dir(&state) {
                break GatewayClient::new(&gw)
                    .unwrap()
                    .with_timeout(Duration::from_secs(30))
                    .with_auth(Some(creds));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("faas up writes its password");
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(list) = client.list(None).await {
                if list.len() == 1 && list[0].available_replicas > 0 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("faas up serves uppercase");

    let r = client
        .invoke("uppercase", Method::POST, &[], Bytes::from_static(b"through kafka"), true)
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.headers["x-call-id"].to_str().unwrap().to_string();
    let path = format!("/system/activations/{id}");
    let v: serde_json::Value = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let r = client.send(Method::GET, &path, &[], Bytes::new()).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            if v["state"] == "succeeded" {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the call succeeds");
    assert_eq!(v["activation"]["response"]["result"]["body"], "THROUGH KAFKA");

    // The record is on the topic: a store reading it from another process would find it.
    let config = faas_queue::kafka::KafkaConfig::new(kafka.bootstrap_servers());
    let reader =
        faas_queue::kafka_store::KafkaActivationStore::new(&config, "jobs-activations").unwrap();
    reader.wait_caught_up(Duration::from_secs(30)).await.unwrap();
    let rec =
        reader.get_now(&faas_core::InvocationId::from_string(id.as_str())).expect("on the topic");
    assert_eq!(rec.state, faas_core::queue::AsyncState::Succeeded);
    tokio::time::timeout(Duration::from_secs(30), reader.close()).await.unwrap().unwrap();

    // Stop `faas up` (its worker leaves the group) while the cluster is still up.
    drop(up);
    let _ = std::fs::remove_dir_all(&state);
    drop(kafka);
}

#[cfg(feature = "kafka")]
struct Up(std::process::Child);

#[cfg(feature = "kafka")]
impl Drop for Up {
    fn drop(&mut self) {
        // SIGINT first (what Ctrl-C sends), so `up` stops its worker and removes its
        // functions; then kill.
        let _ = Command::new("kill").arg("-INT").arg(self.0.id().to_string()).status();
        for _ in 0..400 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

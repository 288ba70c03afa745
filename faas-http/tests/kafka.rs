//! Async invocation across processes over Kafka (librdkafka's mock cluster: the real Kafka
//! protocol on 127.0.0.1): a gateway publishes `/async-function` calls to a topic and reads
//! activation records from the Kafka activation store; a worker with its own store instance
//! (as a separate `faas-queue-worker` process would have) runs the calls through the
//! gateway's `/function` route; the gateway then answers `GET /system/activations/{id}`
//! with the worker's record.
#![cfg(feature = "kafka")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, memory_invoker};
use faas_core::conformance::{Behaviour, MemoryWorkload};
use faas_core::queue::{ActivationStore, QueuePublisher};
use faas_core::{Backend, FunctionSpec};
use faas_http::client::GatewayClient;
use faas_http::Gateway;
use faas_queue::gateway::GatewayInvoker;
use faas_queue::kafka::{KafkaConfig, KafkaConsumer, KafkaDeadLetters, KafkaPublisher, MockKafka};
use faas_queue::kafka_store::{default_activations_topic, KafkaActivationStore};
use faas_queue::{TrackedPublisher, Worker, WorkerConfig};
use http::Method;

const BOUND: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_for_calls_a_separate_worker_ran() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    let mut config = KafkaConfig::new(kafka.bootstrap_servers());
    config.close_timeout = Duration::from_secs(20);
    config.commit_interval = Duration::from_millis(100);
    let records_topic = default_activations_topic(&config.topic);
    kafka.create_topic(&config.topic, 2).unwrap();
    kafka.create_topic(&records_topic, 2).unwrap();
    kafka.create_topic(&config.dead_letter_topic, 1).unwrap();

    // The gateway: publishes to Kafka, records through its own Kafka store instance, and
    // runs no worker.
    let gateway_store = KafkaActivationStore::new(&config, &records_topic).unwrap();
    let publisher: Arc<dyn QueuePublisher> = Arc::new(TrackedPublisher::new(
        Arc::new(KafkaPublisher::new(&config).unwrap()),
        Arc::new(gateway_store.clone()),
    ));
    let invoker = memory_invoker();
    let gateway = Gateway::builder(invoker.clone() as Arc<dyn Backend>)
        .queue(publisher)
        .activations(Arc::new(gateway_store.clone()) as Arc<dyn ActivationStore>)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = stop_rx.await;
    }));
    let client = GatewayClient::new(&base).unwrap().with_timeout(Duration::from_secs(30));
    let spec = FunctionSpec::new("later", MemoryWorkload::image(Behaviour::Echo));
    let r = client
        .send(Method::POST, "/system/functions", &[], serde_json::to_vec(&spec).unwrap().into())
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());

    // The worker, as a separate process would run it: its own consumer and store instance,
    // invoking through the gateway over HTTP.
    let worker_store = KafkaActivationStore::new(&config, &records_topic).unwrap();
    let worker = Worker::new(
        Arc::new(GatewayInvoker::new(&base, Duration::from_secs(30)).unwrap()),
        Arc::new(KafkaConsumer::new(&config).unwrap()),
        Arc::new(worker_store.clone()),
        WorkerConfig::default(),
    )
    .with_dead_letters(Arc::new(KafkaDeadLetters::new(&config).unwrap()))
    .spawn();

    let mut ids = Vec::new();
    for i in 0..5 {
        let r = client
            .send(
                Method::POST,
                "/async-function/later/sub?x=1",
                &[],
                format!("hello kafka {i}").into(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
        let id = r.headers["x-call-id"].to_str().unwrap().to_string();
        // Right after the 202 the gateway knows the call (its own write, seen at once).
        let r =
            client.send(Method::GET, &format!("/system/activations/{id}"), &[], "".into()).await;
        let r = r.unwrap();
        assert_eq!(r.status, 200, "a published call id is known at once: {}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            ["queued", "running", "succeeded"].contains(&v["state"].as_str().unwrap_or("")),
            "{v}"
        );
        ids.push(id);
    }

    for (i, id) in ids.iter().enumerate() {
        let c = &client;
        let v: serde_json::Value = bounded(
            "the worker's record to reach the gateway",
            eventually(60, || async move {
                let r = c
                    .send(Method::GET, &format!("/system/activations/{id}"), &[], "".into())
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                (v["state"] == "succeeded").then_some(v)
            }),
        )
        .await;
        assert_eq!(v["callId"], id.as_str());
        assert_eq!(v["function"], "later");
        assert_eq!(v["status"], 200);
        assert_eq!(v["attempts"], 1);
        assert_eq!(v["activation"]["activationId"], id.as_str());
        assert_eq!(v["activation"]["response"]["success"], true);
        assert_eq!(v["activation"]["response"]["result"]["body"], format!("hello kafka {i}"));
    }
    // The records reached the gateway through the topic: the gateway ran nothing itself.
    assert!(gateway_store.stats().read.load(std::sync::atomic::Ordering::Relaxed) >= 10);
    assert_eq!(worker.stats().succeeded.load(std::sync::atomic::Ordering::Relaxed), 5);

    bounded("worker shutdown", worker.shutdown()).await.unwrap();
    for s in [gateway_store, worker_store] {
        bounded("closing a store", s.close()).await.unwrap();
    }
    let _ = stop_tx.send(());
    let _ = bounded("gateway shutdown", server).await;
    drop(kafka);
}

/// A broker that refuses the gateway's publications turns `/healthz` to 503 naming it and
/// `gateway_queue_healthy` to 0, until a call goes through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_queue_that_cannot_publish() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    let config = KafkaConfig::new(kafka.bootstrap_servers());
    kafka.create_topic(&config.topic, 1).unwrap();
    let publisher: Arc<dyn QueuePublisher> = Arc::new(TrackedPublisher::new(
        Arc::new(KafkaPublisher::new(&config).unwrap()),
        Arc::new(faas_queue::MemoryActivationStore::new(1000)),
    ));
    let invoker = memory_invoker();
    let gateway = Gateway::builder(invoker.clone() as Arc<dyn Backend>).queue(publisher).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(faas_http::serve(listener, gateway.service(), async move {
        let _ = stop_rx.await;
    }));
    let client = GatewayClient::new(&base).unwrap().with_timeout(Duration::from_secs(30));
    let spec = FunctionSpec::new("later", MemoryWorkload::image(Behaviour::Echo));
    let body = serde_json::to_vec(&spec).unwrap().into();
    let r = client.send(Method::POST, "/system/functions", &[], body).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let get = |path: &'static str| {
        let c = &client;
        async move { c.send(Method::GET, path, &[], "".into()).await.unwrap() }
    };
    let healthy_gauge = |text: &str, v: &str| {
        assert!(
            text.lines().any(|l| l == format!("gateway_queue_healthy {v}")),
            "gateway_queue_healthy {v} in\n{text}"
        )
    };
    assert_eq!(get("/healthz").await.status, 200);

    kafka.refuse_produce(5);
    let r = client.send(Method::POST, "/async-function/later", &[], "x".into()).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let h = get("/healthz").await;
    assert_eq!(h.status, 503, "{}", h.text());
    assert!(h.text().contains("async queue") && h.text().contains("faas-async"), "{}", h.text());
    healthy_gauge(&get("/metrics").await.text(), "0");

    // Once the broker takes calls again, the next call goes through and health is back.
    let c = &client;
    bounded(
        "an async call accepted again",
        eventually(60, || async move {
            let r = c.send(Method::POST, "/async-function/later", &[], "y".into()).await.unwrap();
            (r.status == 202).then_some(())
        }),
    )
    .await;
    assert_eq!(get("/healthz").await.status, 200);
    healthy_gauge(&get("/metrics").await.text(), "1");
    let _ = stop_tx.send(());
    let _ = bounded("gateway shutdown", server).await;
    drop(kafka);
}

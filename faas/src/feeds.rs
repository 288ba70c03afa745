//! The feed actions `faas up` adds to the gateway's built-in ones: OpenWhisk's Kafka feed
//! `/whisk.system/messaging/kafkaFeed` (with the `kafka` feature: a
//! `faas_queue::kafka_feed::KafkaFeed` per trigger; without it, a clear error naming the
//! feature). Wired here, in the binary, so that the gateway library stays free of rdkafka.
//!
//! `wsk trigger create T --feed /whisk.system/messaging/kafkaFeed -p brokers HOST:PORT -p
//! topic TOPIC` (parameters as OpenWhisk's `kafkaFeed`: `brokers`, a list or a
//! comma-separated string; `topic`; `isJSONData`, `isBinaryKey`, `isBinaryValue`): the
//! trigger fires with batches `{"messages": [{"topic","partition","offset","key","value"}]}`,
//! its consumer group `faas-feed:NAMESPACE/TRIGGER` committing only what fired.

use std::sync::Arc;

use faas_core::whisk::feeds::{FeedProvider, RunningFeed};
use faas_core::whisk::{EntityPath, Whisk};
use faas_core::{Error, Result};
use serde_json::{json, Map, Value};

/// The package of the Kafka feed action.
pub const PACKAGE: &str = "messaging";
/// The Kafka feed action.
pub const ACTION: &str = "kafkaFeed";

/// The Kafka feed action of this build, its consumers given `properties` (librdkafka
/// properties, as `faas up --kafka-property`).
pub fn kafka_feed(properties: Vec<(String, String)>) -> Arc<dyn FeedProvider> {
    Arc::new(KafkaFeedAction { properties })
}

/// The error of the Kafka feed in a build without the `kafka` feature.
#[cfg_attr(feature = "kafka", allow(dead_code))]
fn not_compiled() -> Error {
    Error::NotSupported {
        operation: format!(
            "the Kafka feed (/whisk.system/{PACKAGE}/{ACTION}): this faas was built without the \
             `kafka` feature; rebuild it with `cargo build -p faas --features kafka`"
        ),
    }
}

/// `/whisk.system/messaging/kafkaFeed`.
struct KafkaFeedAction {
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    properties: Vec<(String, String)>,
}

/// A boolean parameter (`true`/`false`, or their text as the CLI may send it).
fn flag(params: &Map<String, Value>, name: &str, old: Option<&Value>) -> Result<bool> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(old.and_then(|o| o[name].as_bool()).unwrap_or(false)),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(other) => Err(Error::invalid(name, format!("expected true or false, got {other}"))),
    }
}

/// The brokers as `bootstrap.servers`: a list of `HOST:PORT` or one comma-separated string.
fn brokers(v: &Value) -> Result<String> {
    let list: Vec<String> = match v {
        Value::String(s) => s.split(',').map(|b| b.trim().to_string()).collect(),
        Value::Array(a) => a
            .iter()
            .map(|b| b.as_str().map(|s| s.trim().to_string()))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::invalid("brokers", "a list of HOST:PORT strings"))?,
        _ => return Err(Error::invalid("brokers", "a list of HOST:PORT, or one string of them")),
    };
    if list.is_empty() || list.iter().any(|b| !faas_http::queue::valid_broker(b)) {
        return Err(Error::invalid(
            "brokers",
            format!("expected HOST:PORT[,HOST:PORT...], got {v}"),
        ));
    }
    Ok(list.join(","))
}

impl FeedProvider for KafkaFeedAction {
    fn configure(
        &self,
        _trigger: &EntityPath,
        params: &Map<String, Value>,
        old: Option<&Value>,
    ) -> Result<Value> {
        if !cfg!(feature = "kafka") {
            return Err(not_compiled());
        }
        let given = |name: &str| params.get(name).or_else(|| old.map(|o| &o[name]));
        let brokers = match given("brokers") {
            Some(v) if !v.is_null() => brokers(v)?,
            _ => return Err(Error::invalid("brokers", "the Kafka feed needs brokers")),
        };
        let topic = match given("topic") {
            Some(Value::String(t)) if faas_http::queue::valid_topic(t) => t.clone(),
            Some(Value::String(t)) => {
                return Err(Error::invalid(
                    "topic",
                    format!("{t:?} is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"),
                ))
            }
            _ => return Err(Error::invalid("topic", "the Kafka feed needs a topic")),
        };
        Ok(json!({
            "brokers": brokers,
            "topic": topic,
            "isJSONData": flag(params, "isJSONData", old)?,
            "isBinaryKey": flag(params, "isBinaryKey", old)?,
            "isBinaryValue": flag(params, "isBinaryValue", old)?,
        }))
    }

    #[cfg(feature = "kafka")]
    fn start(&self, whisk: &Whisk, trigger: &EntityPath, config: &Value) -> Result<RunningFeed> {
        use faas_queue::kafka::KafkaConfig;
        use faas_queue::kafka_feed::{KafkaFeed, KafkaFeedConfig};
        let text = |name: &str| {
            config[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::invalid(name, "missing from the feed's configuration"))
        };
        let mut kafka = KafkaConfig::new(text("brokers")?);
        kafka.topic = text("topic")?;
        // One group per trigger: each trigger sees every message, and a trigger's feed
        // created again goes on from what its group committed.
        kafka.group_id = format!("faas-feed:{}/{}", trigger.namespace, trigger.name);
        kafka.properties = self.properties.clone();
        let mut feed = KafkaFeedConfig::new(kafka, &trigger.namespace, &trigger.name);
        feed.json_values = config["isJSONData"].as_bool().unwrap_or(false);
        feed.binary_keys = config["isBinaryKey"].as_bool().unwrap_or(false);
        feed.binary_values = config["isBinaryValue"].as_bool().unwrap_or(false);
        let feed = KafkaFeed::new(feed)?;
        let closing = feed.clone();
        Ok(RunningFeed::new(faas_core::whisk::feeds::drive(whisk.clone(), feed)).on_close(
            async move {
                if let Err(e) = closing.close().await {
                    tracing::warn!("closing a Kafka feed: {e}");
                }
            },
        ))
    }

    #[cfg(not(feature = "kafka"))]
    fn start(&self, _: &Whisk, _: &EntityPath, _: &Value) -> Result<RunningFeed> {
        Err(not_compiled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn configure_checks_and_names_each_parameter() {
        let feed = KafkaFeedAction { properties: Vec::new() };
        let t = EntityPath::new("guest", None, "t");
        let c = |v: Value, old: Option<&Value>| feed.configure(&t, &params(v), old);
        let field = |r: Result<Value>| match r {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        if !cfg!(feature = "kafka") {
            let e = c(json!({"brokers": "h:1", "topic": "t"}), None).unwrap_err().to_string();
            assert!(e.contains("`kafka` feature") && e.contains("--features kafka"), "{e}");
            return;
        }
        assert_eq!(field(c(json!({"topic": "t"}), None)), "brokers");
        assert_eq!(field(c(json!({"brokers": "nope", "topic": "t"}), None)), "brokers");
        assert_eq!(field(c(json!({"brokers": [1], "topic": "t"}), None)), "brokers");
        assert_eq!(field(c(json!({"brokers": "h:1"}), None)), "topic");
        assert_eq!(field(c(json!({"brokers": "h:1", "topic": "a b"}), None)), "topic");
        let bad = json!({"brokers": "h:1", "topic": "t", "isJSONData": 3});
        assert_eq!(field(c(bad, None)), "isJSONData");
        let ok = c(json!({"brokers": ["h:1", "k:2"], "topic": "t", "isJSONData": "true"}), None)
            .unwrap();
        assert_eq!(
            ok,
            json!({"brokers": "h:1,k:2", "topic": "t", "isJSONData": true,
                   "isBinaryKey": false, "isBinaryValue": false})
        );
        // An update keeps what it does not give.
        let updated = c(json!({"topic": "u"}), Some(&ok)).unwrap();
        assert_eq!(updated["brokers"], "h:1,k:2");
        assert_eq!(updated["topic"], "u");
        assert_eq!(updated["isJSONData"], true);
    }
}

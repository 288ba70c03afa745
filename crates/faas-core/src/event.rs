//! Events that trigger functions: [`EventSource`], and OpenWhisk's triggers and rules.

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::invocation::FunctionRef;

/// Settles one delivered item: acknowledge (done) or reject (deliver again later).
pub trait Acknowledge: Send + 'static {
    /// The item is done (succeeded, failed for good, or dead-lettered): never deliver it again.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    /// The item was not processed: make it available for delivery again.
    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}

/// An item delivered with at-least-once semantics: settle it with [`Delivery::ack`] or
/// [`Delivery::nack`]. Dropping it unsettled counts as a nack for sources that can tell.
pub struct Delivery<T> {
    /// The item.
    pub item: T,
    /// How many times it has been delivered before (0 on the first delivery).
    pub redeliveries: u32,
    acker: Box<dyn Acknowledge>,
}

impl<T> Delivery<T> {
    /// Wraps an item with the handle that settles it.
    pub fn new(item: T, redeliveries: u32, acker: Box<dyn Acknowledge>) -> Self {
        Delivery { item, redeliveries, acker }
    }

    /// Marks the item done.
    pub async fn ack(self) -> Result<()> {
        self.acker.ack().await
    }

    /// Gives the item back for redelivery.
    pub async fn nack(self) -> Result<()> {
        self.acker.nack().await
    }

    /// Splits into the item and its settle handle.
    pub fn into_parts(self) -> (T, Box<dyn Acknowledge>) {
        (self.item, self.acker)
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("item", &self.item)
            .field("redeliveries", &self.redeliveries)
            .finish()
    }
}

/// An event: which trigger it fires, and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id of the event.
    pub id: String,
    /// The trigger it fires.
    pub trigger: String,
    /// Namespace of the trigger.
    pub namespace: String,
    /// Parameters (a JSON object), merged over the trigger's defaults.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Raw payload, for sources that carry bytes rather than JSON.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub payload: Option<Bytes>,
}

mod opt_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_bytes(b),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        Ok(Option::<Vec<u8>>::deserialize(d)?.map(Bytes::from))
    }
}

/// A source of events (a Kafka topic, a timer, a webhook...). Each event is delivered at
/// least once and settled through its [`Delivery`].
#[async_trait]
pub trait EventSource: Send + Sync + 'static {
    /// The next event; `Ok(None)` when the source is closed.
    async fn next_event(&self) -> Result<Option<Delivery<Event>>>;
}

/// A named event channel with default parameters (OpenWhisk trigger).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Default parameters.
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

/// Binds one trigger to one function (OpenWhisk rule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Name.
    pub name: String,
    /// The trigger's name (same namespace as the rule).
    pub trigger: String,
    /// The function to invoke.
    pub action: FunctionRef,
    /// Disabled rules do not fire.
    pub enabled: bool,
}

/// The invocations an event causes: for every enabled rule on the event's trigger, the rule's
/// action with the event's parameters merged over the trigger's defaults.
pub fn fire<'a>(
    trigger: &Trigger,
    rules: impl IntoIterator<Item = &'a Rule>,
    event: &Event,
) -> Vec<(FunctionRef, serde_json::Map<String, serde_json::Value>)> {
    let mut params = trigger.parameters.clone();
    for (k, v) in &event.params {
        params.insert(k.clone(), v.clone());
    }
    rules
        .into_iter()
        .filter(|r| r.enabled && r.trigger == trigger.name)
        .map(|r| (r.action.clone(), params.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_merge_params() {
        let t = Trigger {
            name: "new-user".into(),
            namespace: "guest".into(),
            parameters: json!({"greeting": "hello", "lang": "en"}).as_object().unwrap().clone(),
        };
        let rule = |name: &str, action: &str, enabled| Rule {
            name: name.into(),
            trigger: "new-user".into(),
            action: FunctionRef::new(action, "guest"),
            enabled,
        };
        let rules =
            [rule("r1", "welcome", true), rule("r2", "audit", true), rule("r3", "off", false)];
        let ev = Event {
            id: "e1".into(),
            trigger: "new-user".into(),
            namespace: "guest".into(),
            params: json!({"lang": "de", "user": "ann"}).as_object().unwrap().clone(),
            payload: None,
        };
        let out = fire(&t, &rules, &ev);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.name, "welcome");
        assert_eq!(out[0].1["lang"], "de");
        assert_eq!(out[0].1["greeting"], "hello");
        assert_eq!(out[1].1["user"], "ann");
    }
}

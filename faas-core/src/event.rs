//! Events that trigger functions: [`EventSource`] and at-least-once [`Delivery`]. OpenWhisk's
//! triggers and rules are in [`crate::whisk`].

use std::any::Any;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Settles one delivered item: acknowledge (done) or reject (deliver again later).
///
/// A source that keeps no copy of the items it delivered (the in-memory queue hands its
/// only copy out) asks for the item back on a reject, or when its delivery is dropped
/// unsettled: [`Acknowledge::takes_item_back`], [`Acknowledge::nack_with`] and
/// [`Acknowledge::dropped`]. [`Delivery`] does that handing back.
pub trait Acknowledge: Send + 'static {
    /// The item is done (succeeded, failed for good, or dead-lettered): never deliver it again.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    /// The item was not processed: make it available for delivery again.
    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    /// Whether this source wants the item handed back when it is rejected or dropped
    /// unsettled (through [`Acknowledge::nack_with`] and [`Acknowledge::dropped`]). The
    /// default is `false`: the source has its own copy.
    fn takes_item_back(&self) -> bool {
        false
    }
    /// [`Acknowledge::nack`], handed the item back (the `T` of the `Delivery<T>`, boxed).
    /// Called instead of `nack` when [`Acknowledge::takes_item_back`]; the default drops the
    /// item and nacks.
    fn nack_with(self: Box<Self>, item: Box<dyn Any + Send>) -> BoxFuture<'static, Result<()>> {
        drop(item);
        self.nack()
    }
    /// The delivery was dropped unsettled (its worker stopped), and the item is handed back
    /// (when [`Acknowledge::takes_item_back`]): the source should deliver it again. It must
    /// not block. The default drops both (a source with its own copy redelivers from its
    /// own `Drop`).
    fn dropped(self: Box<Self>, item: Box<dyn Any + Send>) {
        drop(item);
    }
}

/// An item delivered with at-least-once semantics: settle it with [`Delivery::ack`] or
/// [`Delivery::nack`]. Dropping it unsettled counts as a nack for sources that can tell
/// (the item is handed back to sources that keep no copy of it).
pub struct Delivery<T: Send + 'static> {
    /// `Some` until the delivery is settled or dropped.
    item: Option<T>,
    /// How many times it has been delivered before (0 on the first delivery).
    pub redeliveries: u32,
    /// `Some` until the delivery is settled or dropped.
    acker: Option<Box<dyn Acknowledge>>,
}

impl<T: Send + 'static> Delivery<T> {
    /// Wraps an item with the handle that settles it.
    pub fn new(item: T, redeliveries: u32, acker: Box<dyn Acknowledge>) -> Self {
        Delivery { item: Some(item), redeliveries, acker: Some(acker) }
    }

    /// The item.
    pub fn item(&self) -> &T {
        self.item.as_ref().expect("a delivery holds its item until it is settled")
    }

    /// The item, to change it (a change is what a source taking items back gets back).
    pub fn item_mut(&mut self) -> &mut T {
        self.item.as_mut().expect("a delivery holds its item until it is settled")
    }

    /// Marks the item done.
    pub fn ack(mut self) -> BoxFuture<'static, Result<()>> {
        drop(self.item.take());
        match self.acker.take() {
            Some(acker) => acker.ack(),
            None => Box::pin(std::future::ready(Ok(()))),
        }
    }

    /// Gives the item back for redelivery.
    pub fn nack(mut self) -> BoxFuture<'static, Result<()>> {
        let item = self.item.take();
        match (self.acker.take(), item) {
            (Some(acker), Some(item)) if acker.takes_item_back() => acker.nack_with(Box::new(item)),
            (Some(acker), _) => acker.nack(),
            (None, _) => Box::pin(std::future::ready(Ok(()))),
        }
    }
}

impl<T: Send + 'static> Drop for Delivery<T> {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            match self.item.take() {
                Some(item) if acker.takes_item_back() => acker.dropped(Box::new(item)),
                _ => drop(acker),
            }
        }
    }
}

impl<T: Send + std::fmt::Debug + 'static> std::fmt::Debug for Delivery<T> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records how it was settled, and what it was handed back.
    struct Taker {
        log: Arc<Mutex<Vec<String>>>,
        takes: bool,
    }

    impl Taker {
        fn push(&self, what: String) {
            self.log.lock().unwrap().push(what);
        }
        fn item(item: Box<dyn Any + Send>) -> String {
            item.downcast::<String>().map_or_else(|_| "not a String".into(), |s| *s)
        }
    }

    impl Acknowledge for Taker {
        fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
            self.push("ack".into());
            Box::pin(async { Ok(()) })
        }
        fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
            self.push("nack".into());
            Box::pin(async { Ok(()) })
        }
        fn takes_item_back(&self) -> bool {
            self.takes
        }
        fn nack_with(self: Box<Self>, item: Box<dyn Any + Send>) -> BoxFuture<'static, Result<()>> {
            self.push(format!("nack_with {}", Taker::item(item)));
            Box::pin(async { Ok(()) })
        }
        fn dropped(self: Box<Self>, item: Box<dyn Any + Send>) {
            self.push(format!("dropped {}", Taker::item(item)));
        }
    }

    #[tokio::test]
    async fn deliveries_hand_their_item_back_to_sources_that_take_it() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let delivery = |item: &str, takes| {
            Delivery::new(item.to_string(), 0, Box::new(Taker { log: log.clone(), takes }))
        };
        {
            delivery("a", true).ack().await.unwrap();
            // A changed item is what comes back.
            let mut d = delivery("b", true);
            d.item_mut().push('!');
            assert_eq!(d.item(), "b!");
            d.nack().await.unwrap();
            drop(delivery("c", true));
            // A source with its own copy gets plain nacks, and its own `Drop` on a drop.
            delivery("d", false).nack().await.unwrap();
            drop(delivery("e", false));
        }
        assert_eq!(*log.lock().unwrap(), ["ack", "nack_with b!", "dropped c", "nack"]);
    }
}

//! Feeds: event sources attached to triggers through OpenWhisk's feed actions and their
//! lifecycle events (`CREATE`, `READ`, `UPDATE`, `DELETE`, `PAUSE`, `UNPAUSE`). The built-in
//! feeds are the alarms of `/whisk.system/alarms` (`alarm`, `once`): an
//! [`AlarmSource`] per trigger, driven by [`drive`], kept in the [`crate::state::StateStore`] (table
//! [`FEEDS_TABLE`]) so that they start again after a restart ([`Whisk::restore_feeds`]).
//!
//! Any [`EventSource`] can fire triggers the same way: hand it to [`drive`] with the
//! [`Whisk`] it fires through.
//!
//! ```
//! # use faas_core::whisk::{feeds::drive, Whisk};
//! # use faas_core::whisk::alarm::{AlarmSource, AlarmSpec, Clock};
//! # fn start(whisk: Whisk, params: serde_json::Map<String, serde_json::Value>) -> faas_core::Result<()> {
//! // Fire trigger `guest/tick` at every cron time of `params` (`cron`, `trigger_payload`...).
//! let spec = AlarmSpec::from_params("guest", "tick", false, &params)?;
//! tokio::spawn(drive(whisk, AlarmSource::new(spec, Clock::system())));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::alarm::{AlarmSource, AlarmSpec, Clock};
use super::engine::Whisk;
use super::entity::{EntityPath, Trigger};
use crate::error::{Error, Result};
use crate::event::EventSource;
use crate::state::StateOp;
use crate::util::Backoff;

/// The table of feeds (key: the trigger's `namespace/name`, value a [`FeedRecord`]).
pub const FEEDS_TABLE: &str = "whisk_feeds";

/// The namespace of the built-in feed actions.
pub const SYSTEM_NAMESPACE: &str = "whisk.system";

/// A feed attached to a trigger, as kept in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedRecord {
    /// The feed action (`/whisk.system/alarms/alarm`).
    pub feed: String,
    /// The alarm.
    pub spec: AlarmSpec,
    /// Whether it is paused.
    #[serde(default)]
    pub paused: bool,
}

/// The running feeds, by trigger key.
#[derive(Debug, Clone, Default)]
pub struct Feeds {
    running: Arc<Mutex<HashMap<String, tokio::task::AbortHandle>>>,
}

impl Feeds {
    fn stop(&self, key: &str) {
        if let Some(h) = self.running.lock().ok().and_then(|mut m| m.remove(key)) {
            h.abort();
        }
    }

    fn start(&self, whisk: &Whisk, key: &str, spec: AlarmSpec) {
        self.stop(key);
        let task = tokio::spawn(drive(whisk.clone(), AlarmSource::new(spec, Clock::system())));
        if let Ok(mut m) = self.running.lock() {
            m.insert(key.to_string(), task.abort_handle());
        }
    }

    /// How many feeds run.
    pub fn running(&self) -> usize {
        self.running.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Fires a trigger for every event `source` delivers, until it ends (or its trigger is
/// deleted): an event is acknowledged once the trigger fired and its activation record was
/// written (when the log has a store), and given back to the source
/// when firing failed (tried again after a growing pause), so that none is lost.
pub async fn drive(whisk: Whisk, source: impl EventSource) {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let mut failures = 0u32;
    loop {
        let delivery = match source.next_event().await {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                failures += 1;
                tracing::warn!("event source failed: {e}");
                tokio::time::sleep(backoff.delay(failures)).await;
                continue;
            }
        };
        let event = delivery.item();
        let path = EntityPath::new(&event.namespace, None, &event.trigger);
        let fired = match whisk.fire(&event.namespace, &path, event.params.clone()).await {
            // The trigger's activation is written before the event is acknowledged (a
            // source that commits on acknowledgement, as Kafka's, then loses nothing).
            Ok(_) => whisk.log().flush().await,
            Err(e) => Err(e),
        };
        match fired {
            Ok(()) => {
                failures = 0;
                if let Err(e) = delivery.ack().await {
                    tracing::warn!("acknowledging an event of {path}: {e}");
                }
            }
            Err(Error::NotFound { .. }) => {
                tracing::warn!("trigger {path} is gone: its feed stops");
                let _ = delivery.ack().await;
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!("firing {path} failed (will retry): {e}");
                let _ = delivery.nack().await;
                tokio::time::sleep(backoff.delay(failures)).await;
            }
        }
    }
}

impl Whisk {
    /// Runs a lifecycle event of a built-in feed action (`alarm` or `once` of
    /// `/whisk.system/alarms`) for a caller in namespace `caller`: `params` are the feed
    /// action's (`lifecycleEvent`, `triggerName`, and the alarm's). Answers the action's
    /// result (`READ`: the feed's configuration).
    pub async fn feed(
        &self,
        caller: &str,
        action: &str,
        params: Map<String, Value>,
    ) -> Result<Value> {
        let once = match action {
            "alarm" => false,
            "once" => true,
            other => {
                return Err(Error::NotFound {
                    kind: "action",
                    name: format!("/{SYSTEM_NAMESPACE}/alarms/{other}"),
                })
            }
        };
        let event = params
            .get("lifecycleEvent")
            .and_then(Value::as_str)
            .unwrap_or("CREATE")
            .to_ascii_uppercase();
        let trigger = params
            .get("triggerName")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("triggerName", "the feed needs the trigger's name"))?;
        let path = EntityPath::parse("triggerName", trigger, caller)?;
        if path.namespace != caller {
            return Err(Error::invalid(
                "triggerName",
                format!("the trigger must be in namespace {caller}"),
            ));
        }
        let key = path.key();
        let feed = format!("/{SYSTEM_NAMESPACE}/alarms/{action}");
        let kept = || -> Result<Option<FeedRecord>> {
            match self.entities().state().get(FEEDS_TABLE, key.as_bytes())? {
                Some(v) => Ok(serde_json::from_slice(&v).ok()),
                None => Ok(None),
            }
        };
        let save = |record: &FeedRecord| -> Result<StateOp> {
            let v = serde_json::to_vec(record)
                .map_err(|e| Error::internal(format!("encoding a feed: {e}")))?;
            Ok(StateOp::put(FEEDS_TABLE, key.clone().into_bytes(), v))
        };
        match event.as_str() {
            "CREATE" | "UPDATE" => {
                self.entities().require::<Trigger>(&path)?;
                let mut spec = AlarmSpec::from_params(&path.namespace, &path.name, once, &params)?;
                if event == "UPDATE" {
                    // An update keeps what it does not give.
                    if let Some(old) = kept()? {
                        let o = old.spec;
                        spec.cron = spec.cron.or(o.cron);
                        spec.start_date = spec.start_date.or(o.start_date);
                        spec.stop_date = spec.stop_date.or(o.stop_date);
                        spec.max_triggers = spec.max_triggers.or(o.max_triggers);
                        if !params.contains_key("trigger_payload") {
                            spec.trigger_payload = o.trigger_payload;
                        }
                    }
                }
                let record = FeedRecord { feed, spec: spec.clone(), paused: false };
                self.entities().state().commit(vec![save(&record)?]).await?;
                self.feeds().start(self, &key, spec);
                Ok(json!({}))
            }
            "READ" => {
                let record =
                    kept()?.ok_or_else(|| Error::NotFound { kind: "feed", name: path.fqn() })?;
                let mut config = serde_json::to_value(&record.spec).unwrap_or(Value::Null);
                config["status"] = json!(if record.paused { "inactive" } else { "active" });
                Ok(
                    json!({ "config": config, "status": if record.paused { "inactive" } else { "active" } }),
                )
            }
            "DELETE" => {
                self.feeds().stop(&key);
                self.entities()
                    .state()
                    .commit(vec![StateOp::delete(FEEDS_TABLE, key.clone().into_bytes())])
                    .await?;
                Ok(json!({}))
            }
            "PAUSE" | "UNPAUSE" => {
                let mut record =
                    kept()?.ok_or_else(|| Error::NotFound { kind: "feed", name: path.fqn() })?;
                record.paused = event == "PAUSE";
                self.entities().state().commit(vec![save(&record)?]).await?;
                if record.paused {
                    self.feeds().stop(&key);
                } else {
                    self.feeds().start(self, &key, record.spec);
                }
                Ok(json!({}))
            }
            other => Err(Error::invalid(
                "lifecycleEvent",
                format!("{other:?} is not one of CREATE, READ, UPDATE, DELETE, PAUSE, UNPAUSE"),
            )),
        }
    }

    /// Starts the feeds kept in the store (not the paused ones); answers how many. An
    /// unreadable record is skipped with a warning.
    pub fn restore_feeds(&self) -> Result<usize> {
        let mut n = 0;
        for (k, v) in self.entities().state().scan(FEEDS_TABLE)? {
            let key = String::from_utf8_lossy(&k).into_owned();
            match serde_json::from_slice::<FeedRecord>(&v) {
                Ok(r) if !r.paused => {
                    self.feeds().start(self, &key, r.spec);
                    n += 1;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(key, "skipping an unreadable feed: {e}"),
            }
        }
        Ok(n)
    }

    /// Stops the feed of a trigger being deleted and forgets it.
    pub(crate) async fn drop_feed(&self, path: &EntityPath) -> Result<()> {
        let key = path.key();
        self.feeds().stop(&key);
        if self.entities().state().get(FEEDS_TABLE, key.as_bytes())?.is_some() {
            self.entities()
                .state()
                .commit(vec![StateOp::delete(FEEDS_TABLE, key.into_bytes())])
                .await?;
        }
        Ok(())
    }
}

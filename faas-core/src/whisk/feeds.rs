//! Feeds: event sources attached to triggers through OpenWhisk's feed actions and their
//! lifecycle events (`CREATE`, `READ`, `UPDATE`, `DELETE`, `PAUSE`, `UNPAUSE`). A feed
//! action of `/whisk.system` is a [`FeedProvider`] registered in the [`Feeds`] of a
//! [`Whisk`] under `package/action`; built in are the alarms of `/whisk.system/alarms`
//! (`alarm`, `once`: an [`AlarmSource`] per trigger). The `faas` binary built with its
//! `kafka` feature adds `/whisk.system/messaging/kafkaFeed`. Each running feed is driven
//! by [`drive`] and kept in the [`crate::state::StateStore`] (table [`FEEDS_TABLE`]) so
//! that it starts again after a restart ([`Whisk::restore_feeds`]).
//!
//! Any [`EventSource`] can fire triggers the same way: hand it to [`drive`] with the
//! [`Whisk`] it fires through, or make it a feed action of its own with a
//! [`FeedProvider`]:
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
//!
//! ```
//! # use faas_core::whisk::feeds::{drive, FeedProvider, RunningFeed};
//! # use faas_core::whisk::alarm::{AlarmSource, AlarmSpec, Clock};
//! # use faas_core::whisk::{EntityPath, Whisk};
//! # use serde_json::{Map, Value};
//! /// `/whisk.system/clock/every` with `-p seconds N`: fires every N seconds.
//! struct Every;
//!
//! impl FeedProvider for Every {
//!     fn configure(
//!         &self,
//!         _trigger: &EntityPath,
//!         params: &Map<String, Value>,
//!         _old: Option<&Value>,
//!     ) -> faas_core::Result<Value> {
//!         let n = params.get("seconds").and_then(Value::as_u64).filter(|n| (1..60).contains(n));
//!         let n = n.ok_or_else(|| faas_core::Error::invalid("seconds", "give 1 to 59"))?;
//!         Ok(serde_json::json!({ "seconds": n }))
//!     }
//!
//!     fn start(&self, whisk: &Whisk, t: &EntityPath, config: &Value) -> faas_core::Result<RunningFeed> {
//!         let cron = format!("*/{} * * * * *", config["seconds"]);
//!         let mut params = Map::new();
//!         params.insert("cron".into(), cron.into());
//!         let spec = AlarmSpec::from_params(&t.namespace, &t.name, false, &params)?;
//!         Ok(RunningFeed::new(drive(whisk.clone(), AlarmSource::new(spec, Clock::system()))))
//!     }
//! }
//!
//! # fn register(whisk: &Whisk) {
//! whisk.feeds().register("clock", "every", std::sync::Arc::new(Every));
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
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
    /// The feed's configuration, as its [`FeedProvider::configure`] answered it (for an
    /// alarm, its [`AlarmSpec`]).
    #[serde(alias = "spec")]
    pub config: Value,
    /// Whether it is paused.
    #[serde(default)]
    pub paused: bool,
}

/// A feed action of `/whisk.system` (`package/action`): it turns the action's parameters
/// into a configuration that is kept, and starts an event source from it. Registered with
/// [`Feeds::register`].
pub trait FeedProvider: Send + Sync + 'static {
    /// Checks the feed action's parameters (`lifecycleEvent`, `triggerName`, `authKey` and
    /// the feed's own) for `trigger` and answers the configuration to keep; errors name
    /// the parameter. On `UPDATE`, `old` is the configuration kept so far (an update keeps
    /// what it does not give).
    fn configure(
        &self,
        trigger: &EntityPath,
        params: &Map<String, Value>,
        old: Option<&Value>,
    ) -> Result<Value>;

    /// Starts firing `trigger` as `config` (from [`FeedProvider::configure`], possibly
    /// before a restart) says: answers the feed to run.
    fn start(&self, whisk: &Whisk, trigger: &EntityPath, config: &Value) -> Result<RunningFeed>;
}

/// A feed started by a [`FeedProvider`]: the future that fires its trigger (usually
/// [`drive`] over an [`EventSource`]), run on a task of its own until the feed is
/// stopped, and what to do once that task is stopped (leave a consumer group, close a
/// connection).
pub struct RunningFeed {
    run: BoxFuture<'static, ()>,
    close: Option<BoxFuture<'static, ()>>,
}

impl std::fmt::Debug for RunningFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningFeed").field("closes", &self.close.is_some()).finish()
    }
}

impl RunningFeed {
    /// A feed that runs `run`, stopped by aborting it.
    pub fn new(run: impl Future<Output = ()> + Send + 'static) -> Self {
        RunningFeed { run: Box::pin(run), close: None }
    }

    /// Runs `close` (awaited by the stop) once the feed's task has been stopped.
    pub fn on_close(mut self, close: impl Future<Output = ()> + Send + 'static) -> Self {
        self.close = Some(Box::pin(close));
        self
    }
}

struct Running {
    task: tokio::task::JoinHandle<()>,
    close: Option<BoxFuture<'static, ()>>,
}

impl Running {
    /// Stops the task, then closes the feed.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        if let Some(close) = self.close {
            close.await;
        }
    }
}

/// The most feeds one gateway runs at once ([`Feeds`]).
pub const MAX_RUNNING_FEEDS: usize = 1024;

/// The feed actions this gateway offers (by `package/action`) and the feeds running (by
/// trigger key). Cheap to clone (clones share them).
#[derive(Clone)]
pub struct Feeds {
    running: Arc<Mutex<HashMap<String, Running>>>,
    providers: Arc<RwLock<HashMap<String, Arc<dyn FeedProvider>>>>,
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> =
            self.providers.read().map(|p| p.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        f.debug_struct("Feeds").field("actions", &names).field("running", &self.running()).finish()
    }
}

impl Default for Feeds {
    /// The built-in feed actions: `/whisk.system/alarms/alarm` and `once`.
    fn default() -> Self {
        let feeds = Feeds { running: Arc::default(), providers: Arc::default() };
        feeds.register("alarms", "alarm", Arc::new(Alarms { once: false }));
        feeds.register("alarms", "once", Arc::new(Alarms { once: true }));
        feeds
    }
}

impl Feeds {
    /// Offers `provider` as the feed action `/whisk.system/{package}/{action}` (replacing
    /// one of that name).
    pub fn register(&self, package: &str, action: &str, provider: Arc<dyn FeedProvider>) {
        if let Ok(mut p) = self.providers.write() {
            p.insert(format!("{package}/{action}"), provider);
        }
    }

    /// Whether `/whisk.system/{package}/{action}` is a feed action offered here.
    pub fn offers(&self, package: &str, action: &str) -> bool {
        self.provider(&format!("{package}/{action}")).is_some()
    }

    fn provider(&self, name: &str) -> Option<Arc<dyn FeedProvider>> {
        self.providers.read().ok()?.get(name).cloned()
    }

    /// Stops the feed of trigger `key` (if one runs) and waits until it is closed.
    async fn stop(&self, key: &str) {
        let running = self.running.lock().ok().and_then(|mut m| m.remove(key));
        if let Some(r) = running {
            r.stop().await;
        }
    }

    /// Runs `feed` for trigger `key`; answers the feed it replaces (to be stopped).
    fn launch(&self, key: &str, feed: RunningFeed) -> Option<Running> {
        let running = Running { task: tokio::spawn(feed.run), close: feed.close };
        self.running.lock().ok().and_then(|mut m| m.insert(key.to_string(), running))
    }

    /// Whether one more feed may start for trigger `key` (one replacing its own always
    /// may): at most [`MAX_RUNNING_FEEDS`] run, since each holds a consumer or a timer (a
    /// Kafka feed, a client with its own threads). 429 naming the limit otherwise.
    fn check_room(&self, key: &str) -> Result<()> {
        let m = self.running.lock().map_err(|_| Error::internal("feeds lock poisoned"))?;
        if m.len() >= MAX_RUNNING_FEEDS && !m.contains_key(key) {
            return Err(Error::overloaded(format!(
                "too many feeds: {MAX_RUNNING_FEEDS} run already (the limit); delete a feed trigger first"
            )));
        }
        Ok(())
    }

    /// How many feeds run.
    pub fn running(&self) -> usize {
        self.running.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// The alarms of `/whisk.system/alarms` (`alarm`: `cron`; `once`: `date`).
struct Alarms {
    once: bool,
}

impl FeedProvider for Alarms {
    fn configure(
        &self,
        trigger: &EntityPath,
        params: &Map<String, Value>,
        old: Option<&Value>,
    ) -> Result<Value> {
        let mut spec =
            AlarmSpec::from_params(&trigger.namespace, &trigger.name, self.once, params)?;
        if let Some(o) = old.and_then(|o| serde_json::from_value::<AlarmSpec>(o.clone()).ok()) {
            spec.cron = spec.cron.or(o.cron);
            spec.start_date = spec.start_date.or(o.start_date);
            spec.stop_date = spec.stop_date.or(o.stop_date);
            spec.max_triggers = spec.max_triggers.or(o.max_triggers);
            if !params.contains_key("trigger_payload") {
                spec.trigger_payload = o.trigger_payload;
            }
        }
        serde_json::to_value(&spec).map_err(|e| Error::internal(format!("encoding an alarm: {e}")))
    }

    fn start(&self, whisk: &Whisk, _trigger: &EntityPath, config: &Value) -> Result<RunningFeed> {
        let spec: AlarmSpec = serde_json::from_value(config.clone())
            .map_err(|e| Error::invalid("config", format!("not an alarm: {e}")))?;
        Ok(RunningFeed::new(drive(whisk.clone(), AlarmSource::new(spec, Clock::system()))))
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
    /// Runs a lifecycle event of the feed action `/whisk.system/{package}/{action}` (one
    /// of [`Feeds`]: `alarms/alarm`, `alarms/once`, and those registered) for a caller in
    /// namespace `caller`: `params` are the feed action's (`lifecycleEvent`,
    /// `triggerName`, and the feed's own). Answers the action's result (`READ`: the
    /// feed's configuration and status).
    pub async fn feed(
        &self,
        caller: &str,
        package: &str,
        action: &str,
        params: Map<String, Value>,
    ) -> Result<Value> {
        let feed = format!("/{SYSTEM_NAMESPACE}/{package}/{action}");
        let provider = self
            .feeds()
            .provider(&format!("{package}/{action}"))
            .ok_or_else(|| Error::NotFound { kind: "action", name: feed.clone() })?;
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
                let old = if event == "UPDATE" { kept()?.map(|r| r.config) } else { None };
                let config = provider.configure(&path, &params, old.as_ref())?;
                self.feeds().check_room(&key)?;
                // Started before it is kept: a feed that cannot start is refused, not kept.
                let running = provider.start(self, &path, &config)?;
                let record = FeedRecord { feed, config, paused: false };
                let saved = match save(&record) {
                    Ok(op) => self.entities().state().commit(vec![op]).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = saved {
                    if let Some(close) = running.close {
                        close.await;
                    }
                    return Err(e);
                }
                if let Some(old) = self.feeds().launch(&key, running) {
                    old.stop().await;
                }
                Ok(json!({}))
            }
            "READ" => {
                let record =
                    kept()?.ok_or_else(|| Error::NotFound { kind: "feed", name: path.fqn() })?;
                let status = if record.paused { "inactive" } else { "active" };
                let mut config = record.config;
                if let Value::Object(m) = &mut config {
                    m.insert("status".into(), json!(status));
                }
                Ok(json!({ "config": config, "status": status }))
            }
            "DELETE" => {
                self.feeds().stop(&key).await;
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
                    self.feeds().stop(&key).await;
                } else {
                    let running = provider.start(self, &path, &record.config)?;
                    if let Some(old) = self.feeds().launch(&key, running) {
                        old.stop().await;
                    }
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
    /// unreadable record, or one of a feed action not offered (or that cannot start), is
    /// skipped with a warning.
    pub fn restore_feeds(&self) -> Result<usize> {
        let mut n = 0;
        for (k, v) in self.entities().state().scan(FEEDS_TABLE)? {
            let key = String::from_utf8_lossy(&k).into_owned();
            let record = match serde_json::from_slice::<FeedRecord>(&v) {
                Ok(r) if r.paused => continue,
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(key, "skipping an unreadable feed: {e}");
                    continue;
                }
            };
            let name = record.feed.trim_start_matches(&format!("/{SYSTEM_NAMESPACE}/")).to_string();
            let Some(provider) = self.feeds().provider(&name) else {
                tracing::warn!(
                    key,
                    feed = record.feed,
                    "skipping a feed this build does not offer"
                );
                continue;
            };
            let path = match key.split_once('/') {
                Some((ns, name)) => EntityPath::new(ns, None, name),
                None => continue,
            };
            match provider.start(self, &path, &record.config) {
                Ok(running) => {
                    if let Some(old) = self.feeds().launch(&key, running) {
                        tokio::spawn(old.stop());
                    }
                    n += 1;
                }
                Err(e) => tracing::warn!(key, feed = record.feed, "the feed cannot start: {e}"),
            }
        }
        Ok(n)
    }

    /// Stops the feed of a trigger being deleted and forgets it.
    pub(crate) async fn drop_feed(&self, path: &EntityPath) -> Result<()> {
        let key = path.key();
        self.feeds().stop(&key).await;
        if self.entities().state().get(FEEDS_TABLE, key.as_bytes())?.is_some() {
            self.entities()
                .state()
                .commit(vec![StateOp::delete(FEEDS_TABLE, key.into_bytes())])
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryInvoker;
    use crate::state::{MemoryStateStore, StateStore};
    use crate::whisk::{ActivationLog, EntityStore, TriggerPut};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A feed whose runs never end, counting its starts and closes.
    #[derive(Default)]
    struct Counting {
        starts: AtomicUsize,
        closes: Arc<AtomicUsize>,
    }

    impl FeedProvider for Counting {
        fn configure(
            &self,
            _: &EntityPath,
            params: &Map<String, Value>,
            old: Option<&Value>,
        ) -> Result<Value> {
            match params.get("n").or_else(|| old.map(|o| &o["n"])) {
                Some(Value::Number(n)) => Ok(json!({ "n": n })),
                _ => Err(Error::invalid("n", "give a number")),
            }
        }

        fn start(&self, _: &Whisk, _: &EntityPath, _: &Value) -> Result<RunningFeed> {
            self.starts.fetch_add(1, Ordering::SeqCst);
            let closes = self.closes.clone();
            Ok(RunningFeed::new(futures::future::pending()).on_close(async move {
                closes.fetch_add(1, Ordering::SeqCst);
            }))
        }
    }

    fn whisk(store: Arc<dyn StateStore>, feed: &Arc<Counting>) -> Whisk {
        let m = Arc::new(MemoryInvoker::new());
        let w = Whisk::new(
            EntityStore::new(store),
            ActivationLog::default(),
            m.clone(),
            m,
            Default::default(),
        );
        w.feeds().register("test", "count", feed.clone());
        w
    }

    fn event(e: &str, extra: Value) -> Map<String, Value> {
        let mut p = json!({"lifecycleEvent": e, "triggerName": "/guest/t"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            p[k] = v.clone();
        }
        p.as_object().cloned().unwrap_or_default()
    }

    #[tokio::test]
    async fn feeds_past_the_limit_are_refused_with_429() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
        let feed = Arc::new(Counting::default());
        let w = whisk(store, &feed);
        let t = EntityPath::new("guest", None, "t");
        w.put_trigger(&t, TriggerPut::default(), false).await.unwrap();
        for i in 0..MAX_RUNNING_FEEDS {
            let idle = RunningFeed { run: Box::pin(std::future::pending()), close: None };
            assert!(w.feeds().launch(&format!("other/{i}"), idle).is_none());
        }
        let e = w.feed("guest", "test", "count", event("CREATE", json!({"n": 1}))).await;
        match e {
            Err(e @ Error::Overloaded { .. }) => {
                assert_eq!(e.http_status(), http::StatusCode::TOO_MANY_REQUESTS);
                assert!(e.to_string().contains("too many feeds"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(feed.starts.load(Ordering::SeqCst), 0, "nothing was started");
        // Room again once one stops.
        w.feeds().stop("other/0").await;
        w.feed("guest", "test", "count", event("CREATE", json!({"n": 1}))).await.unwrap();
        assert_eq!(w.feeds().running(), MAX_RUNNING_FEEDS);
    }

    #[tokio::test]
    async fn registered_feed_actions_follow_the_lifecycle_and_restarts() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
        let feed = Arc::new(Counting::default());
        let w = whisk(store.clone(), &feed);
        let t = EntityPath::new("guest", None, "t");
        w.put_trigger(&t, TriggerPut::default(), false).await.unwrap();
        assert!(w.feeds().offers("test", "count") && w.feeds().offers("alarms", "alarm"));
        assert!(!w.feeds().offers("test", "other"));
        let e = w.feed("guest", "test", "other", event("CREATE", json!({}))).await.unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        let e = w.feed("guest", "test", "count", event("CREATE", json!({}))).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidSpec { field, .. } if field == "n"), "{e}");
        assert_eq!(w.feeds().running(), 0, "refused: nothing runs");

        w.feed("guest", "test", "count", event("CREATE", json!({"n": 1}))).await.unwrap();
        assert_eq!(w.feeds().running(), 1);
        // An update keeps what it does not give, and replaces the running feed.
        w.feed("guest", "test", "count", event("UPDATE", json!({}))).await.unwrap();
        assert_eq!(feed.closes.load(Ordering::SeqCst), 1, "the replaced feed was closed");
        let read = w.feed("guest", "test", "count", event("READ", json!({}))).await.unwrap();
        assert_eq!(read, json!({"config": {"n": 1, "status": "active"}, "status": "active"}));
        w.feed("guest", "test", "count", event("PAUSE", json!({}))).await.unwrap();
        assert_eq!((w.feeds().running(), feed.closes.load(Ordering::SeqCst)), (0, 2));
        w.feed("guest", "test", "count", event("UNPAUSE", json!({}))).await.unwrap();
        assert_eq!(w.feeds().running(), 1);

        // Kept: a gateway over the same store starts it again; one without the feed
        // action skips it.
        let again = Arc::new(Counting::default());
        assert_eq!(whisk(store.clone(), &again).restore_feeds().unwrap(), 1);
        assert_eq!(again.starts.load(Ordering::SeqCst), 1);
        let m = Arc::new(MemoryInvoker::new());
        let bare = Whisk::new(
            EntityStore::new(store.clone()),
            ActivationLog::default(),
            m.clone(),
            m,
            Default::default(),
        );
        assert_eq!(bare.restore_feeds().unwrap(), 0);

        // Deleting the trigger stops the feed (closed) and forgets it.
        w.delete_trigger(&t).await.unwrap();
        assert_eq!((w.feeds().running(), feed.closes.load(Ordering::SeqCst)), (0, 3));
        assert!(store.get(FEEDS_TABLE, b"guest/t").unwrap().is_none());
    }

    #[test]
    fn alarm_records_kept_before_providers_are_read() {
        // A record written when alarms were the only feed (`spec`) reads as a config.
        let old = json!({"feed": "/whisk.system/alarms/alarm",
                         "spec": {"namespace": "guest", "trigger": "t", "cron": "* * * * *"}});
        let r: FeedRecord = serde_json::from_value(old).unwrap();
        assert_eq!(r.config["cron"], "* * * * *");
        assert!(!r.paused);
    }
}

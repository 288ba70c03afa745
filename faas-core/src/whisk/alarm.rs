//! Alarms, as OpenWhisk's `/whisk.system/alarms` feed defines them: `cron` (5 fields, or 6
//! with seconds first), `trigger_payload`, `startDate`, `stopDate`, `maxTriggers`; `once`
//! with a `date`. [`AlarmSource`] is an [`EventSource`] that delivers one [`Event`] at each
//! time, at least once: a delivery that is rejected (or dropped unsettled) is delivered
//! again before the next time.
//!
//! Time is tokio's ([`Clock`]): on paused tokio time a test sees every firing at exactly
//! its cron time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::event::{Acknowledge, Delivery, Event, EventSource};
use crate::invocation::InvocationId;

/// Wall-clock milliseconds read from tokio's clock: the wall time when it was made, plus
/// the tokio time elapsed since (so paused time moves it).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall0: u64,
    t0: tokio::time::Instant,
}

impl Clock {
    /// A clock that reads `wall_millis` now.
    pub fn starting_at(wall_millis: u64) -> Self {
        Clock { wall0: wall_millis, t0: tokio::time::Instant::now() }
    }

    /// A clock that reads the system's wall time now.
    pub fn system() -> Self {
        Clock::starting_at(super::entity::now_millis())
    }

    /// Milliseconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        self.wall0 + self.t0.elapsed().as_millis() as u64
    }

    /// Sleeps until the clock reads `at`.
    pub async fn sleep_until(&self, at: u64) {
        let d = Duration::from_millis(at.saturating_sub(self.wall0));
        tokio::time::sleep_until(self.t0 + d).await
    }
}

/// A date parameter: epoch milliseconds, or an RFC 3339 date (`2026-01-31T23:59:00Z`).
fn date(field: &str, v: &Value) -> Result<u64> {
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| {
            Error::invalid(field, "a date is a positive number of epoch milliseconds")
        }),
        Value::String(s) => s
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_millisecond().max(0) as u64)
            .map_err(|e| Error::invalid(field, format!("{s:?} is not a date: {e}"))),
        _ => Err(Error::invalid(field, "a date is epoch milliseconds or an RFC 3339 string")),
    }
}

/// What an alarm fires, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmSpec {
    /// The trigger fired: namespace.
    pub namespace: String,
    /// The trigger fired: name.
    pub trigger: String,
    /// The cron expression (`alarm`), 5 fields or 6 with seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The one time it fires (`once`), epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<u64>,
    /// The parameters of each firing.
    #[serde(default)]
    pub trigger_payload: Map<String, Value>,
    /// Not before this time (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date: Option<u64>,
    /// Not after this time (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_date: Option<u64>,
    /// At most this many firings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_triggers: Option<u64>,
}

impl AlarmSpec {
    /// The spec of the feed action `alarm` (`once` when `once`) for trigger
    /// `namespace/trigger`, from its parameters; errors name the parameter.
    pub fn from_params(
        namespace: &str,
        trigger: &str,
        once: bool,
        p: &Map<String, Value>,
    ) -> Result<Self> {
        let opt_date = |k: &str| p.get(k).filter(|v| !v.is_null()).map(|v| date(k, v)).transpose();
        let trigger_payload = match p.get("trigger_payload") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            // OpenWhisk accepts a JSON string too.
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(m)) => m,
                _ => return Err(Error::invalid("trigger_payload", "must be a JSON object")),
            },
            Some(_) => return Err(Error::invalid("trigger_payload", "must be a JSON object")),
        };
        let spec =
            AlarmSpec {
                namespace: namespace.to_string(),
                trigger: trigger.to_string(),
                cron: if once {
                    None
                } else {
                    p.get("cron").and_then(Value::as_str).map(str::to_string)
                },
                date: if once { opt_date("date")? } else { None },
                trigger_payload,
                start_date: opt_date("startDate")?,
                stop_date: opt_date("stopDate")?,
                max_triggers: match p.get("maxTriggers") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                        Error::invalid("maxTriggers", "must be a positive integer")
                    })?),
                },
            };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the cron expression (or date) and the dates' order.
    pub fn validate(&self) -> Result<()> {
        match (&self.cron, self.date) {
            (Some(c), _) => {
                parse_cron(c)?;
            }
            (None, Some(_)) => {}
            (None, None) => {
                return Err(Error::invalid(
                    "cron",
                    "an alarm needs a cron expression (or a date for once)",
                ))
            }
        }
        if let (Some(a), Some(b)) = (self.start_date, self.stop_date) {
            if b <= a {
                return Err(Error::invalid("stopDate", "must be after startDate"));
            }
        }
        Ok(())
    }

    /// The first time this alarm fires strictly after `after` (epoch ms), if any is left.
    pub fn next_after(&self, after: u64) -> Result<Option<u64>> {
        let after = match self.start_date {
            Some(s) if s > after => s.saturating_sub(1),
            _ => after,
        };
        let next = match (&self.cron, self.date) {
            (Some(c), _) => {
                let cron = parse_cron(c)?;
                let ts = jiff::Timestamp::from_millisecond(after as i64)
                    .map_err(|e| Error::internal(format!("time out of range: {e}")))?;
                let from = ts.to_zoned(jiff::tz::TimeZone::UTC);
                match cron.find_next_occurrence(&from, false) {
                    Ok(z) => Some(z.timestamp().as_millisecond().max(0) as u64),
                    Err(_) => None,
                }
            }
            (None, Some(d)) => (d > after).then_some(d),
            (None, None) => None,
        };
        Ok(next.filter(|n| self.stop_date.is_none_or(|s| *n <= s)))
    }
}

fn parse_cron(c: &str) -> Result<croner::Cron> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(c)
        .map_err(|e| Error::invalid("cron", format!("{c:?}: {e}")))
}

/// The state an alarm's deliveries share.
#[derive(Debug, Default)]
struct State {
    /// The last time fired (epoch ms).
    last: u64,
    /// How many times it fired.
    fired: u64,
    /// Rejected events, delivered again first (with their redelivery count).
    again: VecDeque<(Event, u32)>,
}

/// An alarm as an [`EventSource`].
#[derive(Debug, Clone)]
pub struct AlarmSource {
    spec: Arc<AlarmSpec>,
    clock: Clock,
    state: Arc<Mutex<State>>,
}

impl AlarmSource {
    /// The alarm of `spec`, on `clock`, firing from now on.
    pub fn new(spec: AlarmSpec, clock: Clock) -> Self {
        let state = State { last: clock.now(), ..Default::default() };
        AlarmSource { spec: Arc::new(spec), clock, state: Arc::new(Mutex::new(state)) }
    }

    /// Its spec.
    pub fn spec(&self) -> &AlarmSpec {
        &self.spec
    }

    fn delivery(&self, event: Event, redeliveries: u32) -> Delivery<Event> {
        Delivery::new(
            event,
            redeliveries,
            Box::new(AlarmAck { state: self.state.clone(), redeliveries }),
        )
    }
}

/// Settles one alarm event: a rejected or dropped one is queued to go again.
struct AlarmAck {
    state: Arc<Mutex<State>>,
    redeliveries: u32,
}

impl Acknowledge for AlarmAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn takes_item_back(&self) -> bool {
        true
    }
    fn nack_with(
        self: Box<Self>,
        item: Box<dyn std::any::Any + Send>,
    ) -> BoxFuture<'static, Result<()>> {
        self.dropped(item);
        Box::pin(std::future::ready(Ok(())))
    }
    fn dropped(self: Box<Self>, item: Box<dyn std::any::Any + Send>) {
        if let Ok(event) = item.downcast::<Event>() {
            if let Ok(mut s) = self.state.lock() {
                s.again.push_back((*event, self.redeliveries + 1));
            }
        }
    }
}

#[async_trait]
impl EventSource for AlarmSource {
    async fn next_event(&self) -> Result<Option<Delivery<Event>>> {
        let (last, fired) = {
            let mut s = self.state.lock().map_err(|_| Error::internal("alarm state poisoned"))?;
            if let Some((event, n)) = s.again.pop_front() {
                drop(s);
                return Ok(Some(self.delivery(event, n)));
            }
            (s.last, s.fired)
        };
        if self.spec.max_triggers.is_some_and(|m| fired >= m) {
            return Ok(None);
        }
        let Some(at) = self.spec.next_after(last)? else { return Ok(None) };
        self.clock.sleep_until(at).await;
        {
            let mut s = self.state.lock().map_err(|_| Error::internal("alarm state poisoned"))?;
            s.last = at;
            s.fired += 1;
        }
        let event = Event {
            id: InvocationId::new().to_string(),
            trigger: self.spec.trigger.clone(),
            namespace: self.spec.namespace.clone(),
            params: self.spec.trigger_payload.clone(),
            payload: None,
        };
        Ok(Some(self.delivery(event, 0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2026-01-01T00:00:00Z.
    const T0: u64 = 1_767_225_600_000;
    const MIN: u64 = 60_000;

    fn spec(p: Value) -> AlarmSpec {
        AlarmSpec::from_params("guest", "tick", false, p.as_object().unwrap()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn fires_exactly_at_its_cron_times_on_paused_time() {
        let clock = Clock::starting_at(T0 + 30_000);
        let alarm = AlarmSource::new(
            spec(json!({"cron": "*/5 * * * *", "trigger_payload": {"k": 1}})),
            clock,
        );
        let mut at = Vec::new();
        for _ in 0..3 {
            let d = alarm.next_event().await.unwrap().unwrap();
            at.push(clock.now());
            assert_eq!(d.item().params["k"], 1);
            assert_eq!(d.item().trigger, "tick");
            d.ack().await.unwrap();
        }
        assert_eq!(at, [T0 + 5 * MIN, T0 + 10 * MIN, T0 + 15 * MIN]);
    }

    #[tokio::test(start_paused = true)]
    async fn rejected_events_are_delivered_again_and_bounds_hold() {
        let clock = Clock::starting_at(T0);
        let alarm = AlarmSource::new(
            spec(
                json!({"cron": "* * * * *", "startDate": T0 + 10 * MIN, "stopDate": "2026-01-01T00:12:00Z"}),
            ),
            clock,
        );
        let first = alarm.next_event().await.unwrap().unwrap();
        assert_eq!(clock.now(), T0 + 10 * MIN, "not before startDate");
        let id = first.item().id.clone();
        first.nack().await.unwrap();
        let again = alarm.next_event().await.unwrap().unwrap();
        assert_eq!((again.item().id.as_str(), again.redeliveries), (id.as_str(), 1));
        assert_eq!(clock.now(), T0 + 10 * MIN, "redelivered at once");
        drop(again);
        let third = alarm.next_event().await.unwrap().unwrap();
        assert_eq!((third.item().id.as_str(), third.redeliveries), (id.as_str(), 2));
        third.ack().await.unwrap();
        alarm.next_event().await.unwrap().unwrap().ack().await.unwrap();
        alarm.next_event().await.unwrap().unwrap().ack().await.unwrap();
        assert_eq!(clock.now(), T0 + 12 * MIN);
        assert!(alarm.next_event().await.unwrap().is_none(), "nothing after stopDate");

        let limited =
            AlarmSource::new(spec(json!({"cron": "*/10 * * * * *", "maxTriggers": 2})), clock);
        let t = clock.now();
        limited.next_event().await.unwrap().unwrap().ack().await.unwrap();
        limited.next_event().await.unwrap().unwrap().ack().await.unwrap();
        assert_eq!(clock.now(), t + 20_000, "six fields: seconds first");
        assert!(limited.next_event().await.unwrap().is_none());

        let once = AlarmSource::new(
            AlarmSpec::from_params(
                "guest",
                "tick",
                true,
                json!({"date": clock.now() + 5000}).as_object().unwrap(),
            )
            .unwrap(),
            clock,
        );
        let t = clock.now();
        once.next_event().await.unwrap().unwrap().ack().await.unwrap();
        assert_eq!(clock.now(), t + 5000);
        assert!(once.next_event().await.unwrap().is_none());
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let e =
            AlarmSpec::from_params("g", "t", false, json!({"cron": "nope"}).as_object().unwrap())
                .unwrap_err();
        assert!(e.to_string().contains("cron"), "{e}");
        let e =
            AlarmSpec::from_params("g", "t", false, json!({}).as_object().unwrap()).unwrap_err();
        assert!(e.to_string().contains("cron"), "{e}");
        let e = AlarmSpec::from_params(
            "g",
            "t",
            false,
            json!({"cron": "* * * * *", "startDate": "yesterday"}).as_object().unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("startDate"), "{e}");
    }
}

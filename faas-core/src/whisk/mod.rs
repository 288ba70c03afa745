//! OpenWhisk's programming model on the gateway's request path: the entities
//! ([`entity`]: actions, packages, triggers, rules, sequences), how their parameters merge
//! ([`params`]), where they are kept ([`store`]: tables of the one
//! [`crate::state::StateStore`]), the activation record of every invocation
//! ([`record`]: a layer of the invocation stack and a bounded log), and the operations
//! of the REST API ([`engine::Whisk`]: create, invoke, sequences, trigger firing).
//!
//! Triggers fire from the API, and from event sources ([`feeds`]: the feed actions of
//! `/whisk.system`, each a [`feeds::FeedProvider`] — the alarms of [`alarm`] built in,
//! others registered, as the `faas` binary's Kafka feed — or any [`crate::EventSource`]).
//!
//! The REST routes themselves (`/api/v1/...`) are in `faas-http`.

pub mod alarm;
pub mod engine;
pub mod entity;
pub mod feeds;
pub mod params;
pub mod record;
pub mod store;

pub use engine::{ActionPut, Invoked, PackagePut, RulePut, TriggerPut, Whisk, WhiskConfig};
pub use entity::{Action, EntityPath, Exec, KeyValue, Limits, Package, Rule, RuleStatus, Trigger};
pub use record::{ActivationLayer, ActivationLog, ActivationQuery, Retention, WhiskCall};
pub use store::EntityStore;

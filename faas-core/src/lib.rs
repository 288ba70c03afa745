//! # faas-core
//!
//! The contracts of faas-rs, a Function-as-a-Service toolkit you embed in your own Rust
//! program:
//!
//! - [`Function`]: a handler, any tower `Service` from an HTTP request to an HTTP response
//!   ([`handler_fn`] turns an async fn into one).
//! - [`Invoke`]: invoking a function, the one capability every backend has (a tower service
//!   through [`InvokeService`]); [`Deploy`], [`Secrets`] and [`Logs`]: the capabilities a
//!   backend adds as it can; [`Backend`]: all four, as a gateway holds them
//!   (`Arc<dyn Backend>`). Backends: in memory, local processes, Docker, Kubernetes.
//! - [`Scheduler`]: pure placement and routing decisions.
//! - [`EventSource`] and the queue traits: events and async invocations delivered at least
//!   once.
//!
//! Plus the shared types ([`FunctionSpec`], [`FunctionStatus`], [`Invocation`],
//! [`Activation`]), one [`Error`] with OpenWhisk's 0-3 taxonomy, the in-memory backend,
//! tower layers, the conformance suite (feature `conformance`), the one HTTP client to
//! function instances ([`instance`], the client behind feature `instance-client`), and the
//! bounded log keeping of backends that collect their instances' output ([`logbook`]).

pub mod activation;
pub mod activator;
pub mod autoscale;
pub mod body;
pub mod error;
pub mod event;
pub mod function;
pub mod instance;
pub mod invocation;
pub mod invoker;
pub mod layers;
pub mod logbook;
pub mod memory;
pub mod metrics;
pub mod persisted;
pub mod queue;
pub mod runtime;
pub mod runtimes;
pub mod scheduler;
pub mod sim;
pub mod spec;
pub mod state;
pub mod util;
pub mod whisk;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use activation::{Activation, ActivationResponse};
pub use autoscale::{
    AutoscaleConfig, Autoscaled, Kpa, KpaConfig, Observation, RateRule, RateRuleConfig,
};
pub use body::{Body, BoxError, CallerFault};
pub use error::{DeveloperErrorKind, Error, Result, StatusCode};
pub use event::{Delivery, Event, EventSource};
pub use function::{boxed, handler_fn, BoxFunction, Function, IntoResponse, Request, Response};
pub use invocation::{
    Context, FunctionRef, Invocation, InvocationId, InvocationMeta, LogSink, StartKind,
};
pub use invoker::{
    Backend, BoxInvokeService, Deploy, Invoke, InvokeExt, InvokeFuture, InvokeService, LogEntry,
    LogStream, Logs, LogsExt, LogsRequest, ProviderInfo, Secret, SecretInfo, Secrets,
    ServiceInvoke,
};
pub use memory::MemoryInvoker;
pub use queue::{QueueConsumer, QueuePublisher, QueuedInvocation};
pub use scheduler::{
    check_placement, scheduler_for, Constraint, InstanceView, LeastLoaded, Node, PlacementRequest,
    Scheduler, Schedulers, Strategy, SCHEDULER_LABEL,
};
pub use spec::{
    FunctionFailure, FunctionSpec, FunctionStatus, PullProgress, ReplicaLimits, Resources,
    ScalingMetric, ScalingPolicy, Usage,
};
pub use whisk::{Rule, Trigger};

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The contracts' traits, for `use faas_core::prelude::*;`: their methods are then callable on
/// any backend, `Arc<dyn Backend>` included.
pub mod prelude {
    pub use crate::invoker::{Backend, Deploy, Invoke, InvokeExt, Logs, LogsExt, Secrets};
}

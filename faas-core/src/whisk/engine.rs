//! [`Whisk`]: the OpenWhisk API's operations over the entity store, the gateway's
//! invocation stack ([`Invoke`]) and the backend ([`Deploy`]): creating actions (a
//! blackbox or code action is a function deployed through `Deploy`), invoking them,
//! running sequences and firing triggers. Every action invocation goes through the same
//! `Invoke` as `/function/NAME`, so the [`super::record::ActivationLayer`] in that stack
//! records it; sequences and trigger firings add records of their own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustc_hash::FxHashMap;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::entity::{
    bump_version, check_name, now_millis, to_map, Action, Binding, EntityPath, Exec, KeyValue,
    KeyValues, Limits, Package, PathName, Rule, RuleStatus, Trigger,
};
use super::params::Bound;
use super::record::{ActivationLog, Filled, ResultSlot, WhiskCall};
use super::store::EntityStore;
use crate::activation::{Activation, ActivationResponse};
use crate::error::{DeveloperErrorKind, Error, Result, StatusCode};
use crate::invocation::{FunctionRef, Invocation, InvocationId};
use crate::invoker::{Deploy, Invoke};
use crate::spec::{FunctionSpec, Resources};

/// Settings of the OpenWhisk API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhiskConfig {
    /// How long a blocking invocation waits before answering 202 with the activation id
    /// (OpenWhisk: 60 s).
    pub blocking_wait: Duration,
    /// The largest parameters and result, in bytes (OpenWhisk: 1 MB).
    pub max_payload: usize,
}

impl Default for WhiskConfig {
    fn default() -> Self {
        WhiskConfig { blocking_wait: Duration::from_secs(60), max_payload: 1024 * 1024 }
    }
}

/// The body of `PUT .../actions/NAME` (every field optional: an update keeps what it
/// does not give).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ActionPut {
    /// What it runs.
    pub exec: Option<Exec>,
    /// Default parameters.
    pub parameters: Option<KeyValues>,
    /// Annotations.
    pub annotations: Option<KeyValues>,
    /// Limits (missing ones take the defaults).
    pub limits: Option<Limits>,
    /// Shared.
    pub publish: Option<bool>,
}

/// The body of `PUT .../packages/NAME`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PackagePut {
    /// The package to bind (`{"namespace","name"}`).
    #[serde(default, with = "opt_binding")]
    pub binding: Option<Option<Binding>>,
    /// Default parameters.
    pub parameters: Option<KeyValues>,
    /// Annotations.
    pub annotations: Option<KeyValues>,
    /// Shared.
    pub publish: Option<bool>,
}

mod opt_binding {
    use super::Binding;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<Binding>>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::Null => Ok(Some(None)),
            serde_json::Value::Object(m) if m.is_empty() => Ok(Some(None)),
            other => {
                Binding::deserialize(other).map(|b| Some(Some(b))).map_err(serde::de::Error::custom)
            }
        }
    }
}

/// The body of `PUT .../triggers/NAME`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TriggerPut {
    /// Default parameters.
    pub parameters: Option<KeyValues>,
    /// Annotations.
    pub annotations: Option<KeyValues>,
    /// Shared.
    pub publish: Option<bool>,
}

/// The body of `PUT .../rules/NAME`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RulePut {
    /// The trigger's fully qualified name.
    pub trigger: Option<String>,
    /// The action's fully qualified name.
    pub action: Option<String>,
    /// `active` (default) or `inactive`.
    pub status: Option<RuleStatus>,
    /// Annotations.
    pub annotations: Option<KeyValues>,
    /// Shared.
    pub publish: Option<bool>,
}

/// What an invocation answers: the finished record, or the id of one still running
/// (non-blocking, or blocking past the wait).
#[derive(Debug, Clone, PartialEq)]
pub enum Invoked {
    /// It finished (the record, shared with the log's copy until that is indexed).
    Done(Arc<Activation>),
    /// Still running (or not waited for).
    Accepted(InvocationId),
}

/// An action found for an invocation: where it really is (through a binding), and the
/// parameters it is bound to.
#[derive(Debug, Clone)]
struct Resolved {
    /// The name it was invoked by.
    invoked: EntityPath,
    action: Arc<Action>,
    bound: Bound,
    /// The function it runs as (its real path's).
    function: FunctionRef,
    /// Its real path's key (`namespace[/package]/name`).
    real_key: String,
}

impl Resolved {
    fn new(invoked: EntityPath, action: Arc<Action>, bound: Bound) -> Self {
        let real = Whisk::real_path(&action);
        Resolved { invoked, function: function_of(&real), real_key: real.key(), action, bound }
    }
}

/// A sequence's components as resolved at one generation of the entity store (so that
/// a sequence run resolves none of them while no entity changed).
struct Plan {
    /// Each component, or why it cannot run (its name as given, and the error).
    components: Vec<std::result::Result<Arc<Resolved>, (String, Error)>>,
}

/// The most entries a [`Derived`] keeps; past it they are all dropped (and made again by
/// the calls that follow).
const MAX_DERIVED: usize = 10_000;

/// What was derived from the entities (a resolution, a sequence's plan), by key, each
/// with the entity store's generation it was made at: still true while that is the
/// generation.
struct Derived<T>(Mutex<FxHashMap<String, (u64, Arc<T>)>>);

impl<T> Default for Derived<T> {
    fn default() -> Self {
        Derived(Mutex::default())
    }
}

impl<T> Derived<T> {
    /// `key`'s entry made at `entities`' generation, or `make`'s (kept only if nothing was
    /// written while it was made, nor is being written).
    fn get_or_make<E>(
        &self,
        entities: &EntityStore,
        key: &str,
        make: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<Arc<T>, E> {
        let generation = entities.generation();
        if let Some((g, v)) = self.0.lock().ok().and_then(|m| m.get(key).cloned()) {
            if g == generation {
                return Ok(v);
            }
        }
        let v = Arc::new(make()?);
        if generation != u64::MAX && entities.generation() == generation {
            if let Ok(mut m) = self.0.lock() {
                if m.len() >= MAX_DERIVED {
                    m.clear();
                }
                m.insert(key.to_string(), (generation, v.clone()));
            }
        }
        Ok(v)
    }
}

/// A future run in place by its caller that, dropped before it finished (the caller
/// stopped waiting, or went away), goes on on a task of its own: an activation, once
/// started, always ends in its record.
struct RunOn<T: Send + 'static>(Option<BoxFuture<'static, T>>);

impl<T: Send + 'static> RunOn<T> {
    fn new(f: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        RunOn(Some(Box::pin(f)))
    }
}

impl<T: Send + 'static> std::future::Future for RunOn<T> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        let Some(f) = self.0.as_mut() else { return std::task::Poll::Pending };
        let out = std::task::ready!(f.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for RunOn<T> {
    fn drop(&mut self) {
        if let (Some(f), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(f);
        }
    }
}

pin_project_lite::pin_project! {
    /// `inner` bounded by `limit`, counted from the first time it waits: a call that
    /// answers at once (an in-process handler) arms no timer. Answers `None` past the
    /// limit.
    struct Bounded<F> {
        #[pin]
        inner: F,
        limit: Duration,
        #[pin]
        timer: Option<tokio::time::Sleep>,
    }
}

impl<F> Bounded<F> {
    fn new(inner: F, limit: Duration) -> Self {
        Bounded { inner, limit, timer: None }
    }
}

impl<F: std::future::Future> std::future::Future for Bounded<F> {
    type Output = Option<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut this = self.project();
        if let std::task::Poll::Ready(out) = this.inner.poll(cx) {
            return std::task::Poll::Ready(Some(out));
        }
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep(*this.limit)));
        }
        match this.timer.as_pin_mut() {
            Some(timer) => timer.poll(cx).map(|()| None),
            None => std::task::Poll::Pending,
        }
    }
}

/// The OpenWhisk API's operations. Cheap to clone.
#[derive(Clone)]
pub struct Whisk {
    entities: EntityStore,
    log: ActivationLog,
    invoke: Arc<dyn Invoke>,
    deploy: Arc<dyn Deploy>,
    config: WhiskConfig,
    feeds: super::feeds::Feeds,
    /// Sequences' plans, by the sequence's real key.
    plans: Arc<Derived<Plan>>,
    /// Actions resolved for invocations, by the path invoked.
    resolved: Arc<Derived<Resolved>>,
}

impl std::fmt::Debug for Whisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisk")
            .field("entities", &self.entities)
            .field("config", &self.config)
            .finish()
    }
}

/// The function an action (not a sequence) runs as: in the action's namespace, named
/// after the action (`package--name` in a package). A name that is not a DNS-1123 label
/// is lower-cased, its other characters made `-`, and a hash of the original appended.
pub fn function_of(path: &EntityPath) -> FunctionRef {
    let name = match &path.package {
        Some(p) => format!("{p}--{}", path.name),
        None => path.name.clone(),
    };
    FunctionRef::new(label(&name), label(&path.namespace))
}

fn label(s: &str) -> String {
    if crate::util::validate_dns1123_label(s).is_ok() {
        return s.to_string();
    }
    // FNV-1a: a stable short hash that keeps distinct names apart once sanitised.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut clean: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    clean.truncate(44);
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "x" } else { clean };
    format!("{clean}-{:08x}", h as u32)
}

/// Annotation keys of the function spec of an action: what the action was, for a reader of
/// the function (the runtime itself is configured through the spec's `envVars`, see
/// [`crate::runtimes`]).
pub mod spec_keys {
    /// The action's fully qualified name.
    pub const ACTION: &str = "com.openwhisk.action";
    /// `exec.kind`.
    pub const KIND: &str = "com.openwhisk.exec.kind";
    /// `exec.main`.
    pub const MAIN: &str = "com.openwhisk.exec.main";
    /// `exec.binary` (`true` when the code is a base64 zip).
    pub const BINARY: &str = "com.openwhisk.exec.binary";
}

impl Whisk {
    /// The API over `entities` and `log`, invoking through `invoke` (the gateway's stack)
    /// and deploying actions' functions through `deploy`.
    pub fn new(
        entities: EntityStore,
        log: ActivationLog,
        invoke: Arc<dyn Invoke>,
        deploy: Arc<dyn Deploy>,
        config: WhiskConfig,
    ) -> Self {
        Whisk {
            entities,
            log,
            invoke,
            deploy,
            config,
            feeds: Default::default(),
            plans: Arc::default(),
            resolved: Arc::default(),
        }
    }

    /// The feeds running.
    pub fn feeds(&self) -> &super::feeds::Feeds {
        &self.feeds
    }

    /// The entity store.
    pub fn entities(&self) -> &EntityStore {
        &self.entities
    }

    /// The activation log.
    pub fn log(&self) -> &ActivationLog {
        &self.log
    }

    /// The settings.
    pub fn config(&self) -> &WhiskConfig {
        &self.config
    }

    fn check_path(path: &EntityPath) -> Result<()> {
        check_name("namespace", &path.namespace)?;
        if let Some(p) = &path.package {
            check_name("package", p)?;
        }
        check_name("name", &path.name)
    }

    // ------------------------------------------------------------------------------
    // Actions

    /// Creates (or with `overwrite` replaces) an action; a blackbox or code action's
    /// function is deployed (an existing function of that name is taken over as it is on
    /// create, updated on overwrite). 409 if it exists without `overwrite`.
    pub async fn put_action(
        &self,
        path: &EntityPath,
        put: ActionPut,
        overwrite: bool,
    ) -> Result<Action> {
        Self::check_path(path)?;
        if let Some(p) = &path.package {
            let pkg: Package = self.entities.require(&EntityPath::new(&path.namespace, None, p))?;
            if pkg.binding.is_some() {
                return Err(Error::invalid(
                    "package",
                    "actions cannot be created in a package binding",
                ));
            }
        }
        let existing: Option<Action> = self.entities.get(path)?;
        if existing.is_some() && !overwrite {
            return Err(Error::AlreadyExists { kind: "action", name: path.fqn() });
        }
        let exec = match (put.exec, &existing) {
            (Some(e), _) => e,
            (None, Some(a)) => a.exec.clone(),
            (None, None) => return Err(Error::invalid("exec", "exec undefined")),
        };
        exec.validate()?;
        let limits = put.limits.or(existing.as_ref().map(|a| a.limits)).unwrap_or_default();
        limits.validate()?;
        let action = Action {
            namespace: path.path(),
            name: path.name.clone(),
            version: existing.as_ref().map_or_else(|| "0.0.1".into(), |a| bump_version(&a.version)),
            publish: put.publish.or(existing.as_ref().map(|a| a.publish)).unwrap_or(false),
            parameters: put
                .parameters
                .or(existing.as_ref().map(|a| a.parameters.clone()))
                .unwrap_or_default(),
            annotations: put
                .annotations
                .or(existing.as_ref().map(|a| a.annotations.clone()))
                .unwrap_or_default(),
            exec,
            limits,
            updated: now_millis(),
        };
        let size = serde_json::to_vec(&action).map_or(0, |v| v.len());
        if size > self.config.max_payload {
            return Err(Error::PayloadTooLarge { limit: self.config.max_payload as u64 });
        }
        if action.exec.is_sequence() {
            for (i, c) in action.exec.components.iter().flatten().enumerate() {
                let cp = EntityPath::parse(&format!("exec.components[{i}]"), c, &path.namespace)?;
                if cp == *path {
                    return Err(Error::invalid(
                        "exec.components",
                        "a sequence cannot contain itself",
                    ));
                }
                self.resolve(&cp).map_err(|_| {
                    Error::invalid(
                        format!("exec.components[{i}]"),
                        format!("Sequence component does not exist: {c}"),
                    )
                })?;
            }
        } else {
            let spec = self.spec_of(path, &action);
            match self.deploy.deploy(spec.clone()).await {
                Ok(()) => {}
                Err(Error::AlreadyExists { .. }) if existing.is_some() => {
                    self.deploy.update(spec).await?
                }
                Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.entities.put(path, &action).await?;
        Ok(action)
    }

    fn spec_of(&self, path: &EntityPath, action: &Action) -> FunctionSpec {
        let f = function_of(path);
        let exec = &action.exec;
        let image = match exec.kind.as_str() {
            "blackbox" => exec.image.clone().unwrap_or_default(),
            // A code kind runs in its kind's runtime (checked at PUT): the manifest's image
            // on container backends, its interpreter on the process backend.
            kind => crate::runtimes::lookup(kind).and_then(|k| k.image).unwrap_or("").to_string(),
        };
        // `nodejs:default` runs as the manifest's `nodejs:20` (and shares its stem cells).
        let kind = crate::runtimes::lookup(&exec.kind).map_or(exec.kind.as_str(), |k| k.kind);
        let mut spec = FunctionSpec::new(f.name, image).namespace(f.namespace);
        spec.annotations.insert(spec_keys::ACTION.into(), path.fqn());
        if exec.kind != "blackbox" {
            spec.annotations.insert(spec_keys::KIND.into(), exec.kind.clone());
            spec.env_vars.insert("mode".into(), crate::runtimes::OPENWHISK_MODE.into());
            spec.env_vars.insert(crate::runtimes::KIND_VAR.into(), kind.to_string());
            if let Some(m) = &exec.main {
                spec.annotations.insert(spec_keys::MAIN.into(), m.clone());
                spec.env_vars.insert("ow_main".into(), m.clone());
            }
            if let Some(c) = &exec.code {
                spec.env_vars.insert("ow_code".into(), c.clone());
            }
            spec.annotations.insert(spec_keys::BINARY.into(), exec.binary.to_string());
            spec.env_vars.insert("ow_binary".into(), exec.binary.to_string());
        }
        // Our extension: a blackbox action annotated `fprocess` runs that command under the
        // watchdog (the process backend needs one; images may carry their own).
        if let Some(Value::String(p)) = super::entity::lookup(&action.annotations, "fprocess") {
            spec.env_process = Some(p.clone());
        }
        spec.timeout = Some(Duration::from_millis(action.limits.timeout));
        spec.limits =
            Some(Resources { memory: Some(format!("{}Mi", action.limits.memory)), cpu: None });
        spec
    }

    /// Removes an action (and its function); answers what was removed.
    pub async fn delete_action(&self, path: &EntityPath) -> Result<Action> {
        let action: Action = self.entities.require(path)?;
        if !action.exec.is_sequence() {
            match self.deploy.remove(&function_of(path)).await {
                Ok(()) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.entities.delete::<Action>(path).await?;
        Ok(action)
    }

    /// The action invoked as `path` (through a package binding if `path`'s package is
    /// one), with the parameters it is bound to.
    fn resolve(&self, path: &EntityPath) -> Result<Resolved> {
        let Some(pkg_name) = &path.package else {
            let action = self.require_action(path)?;
            let bound = Bound::new(&[&action.parameters], &action.annotations);
            return Ok(Resolved::new(path.clone(), action, bound));
        };
        let pkg_path = EntityPath::new(&path.namespace, None, pkg_name);
        let pkg: Package = self.entities.require(&pkg_path)?;
        match &pkg.binding {
            None => {
                let action = self.require_action(path)?;
                let bound = Bound::new(&[&pkg.parameters, &action.parameters], &action.annotations);
                Ok(Resolved::new(path.clone(), action, bound))
            }
            Some(b) => {
                let base_path = EntityPath::new(&b.namespace, None, &b.name);
                let base: Package = self.entities.require(&base_path)?;
                let real = EntityPath::new(&b.namespace, Some(&b.name), &path.name);
                let action = self.require_action(&real)?;
                let bound = Bound::new(
                    &[&base.parameters, &pkg.parameters, &action.parameters],
                    &action.annotations,
                );
                Ok(Resolved::new(path.clone(), action, bound))
            }
        }
    }

    /// The action at `path`, shared with the entity store's decoded copy.
    fn require_action(&self, path: &EntityPath) -> Result<Arc<Action>> {
        self.entities
            .get_shared::<Action>(path)?
            .ok_or_else(|| Error::NotFound { kind: "action", name: path.fqn() })
    }

    /// The real path of a resolved action (its own namespace and package).
    fn real_path(action: &Action) -> EntityPath {
        match action.namespace.split_once('/') {
            Some((ns, pkg)) => EntityPath::new(ns, Some(pkg), &action.name),
            None => EntityPath::new(&action.namespace, None, &action.name),
        }
    }

    // ------------------------------------------------------------------------------
    // Invoking

    /// Invokes the action at `path` for a caller in namespace `caller` with `params`
    /// (merged over its bound ones; a `final` action refuses bound ones with 400). With
    /// `blocking`, waits up to [`WhiskConfig::blocking_wait`] for the record; otherwise,
    /// or past the wait, answers the activation id while it runs on.
    pub async fn invoke(
        &self,
        caller: &str,
        path: &EntityPath,
        params: Map<String, Value>,
        blocking: bool,
    ) -> Result<Invoked> {
        let resolved =
            self.resolved.get_or_make(&self.entities, &path.key(), || self.resolve(path))?;
        let params = resolved.bound.merge(&[&params], true)?;
        let id = InvocationId::new();
        let this = self.clone();
        let caller = caller.to_string();
        let run_id = id.clone();
        let run =
            RunOn::new(async move { this.run(&caller, resolved, params, run_id, None, 0).await });
        if !blocking {
            drop(run);
            return Ok(Invoked::Accepted(id));
        }
        // Run in place while the caller waits; past the wait (or if the caller goes away),
        // it runs on, on a task of its own.
        match Bounded::new(run, self.config.blocking_wait).await {
            Some(a) => Ok(Invoked::Done(a)),
            None => Ok(Invoked::Accepted(id)),
        }
    }

    /// Runs a resolved action (or sequence) under activation id `id`; always ends in a
    /// record (in the log, and returned).
    fn run<'a>(
        &'a self,
        caller: &'a str,
        resolved: Arc<Resolved>,
        params: Map<String, Value>,
        id: InvocationId,
        cause: Option<(InvocationId, &'static str)>,
        depth: usize,
    ) -> BoxFuture<'a, Arc<Activation>> {
        Box::pin(async move {
            if resolved.action.exec.is_sequence() {
                return self.run_sequence(caller, resolved, params, id, cause, depth).await;
            }
            let start = SystemTime::now();
            let call = Arc::new(self.call_of(caller, &resolved, &cause));
            let (response, end) = self.run_action(&resolved, call, params, &id, start).await;
            Arc::new(
                self.log.get(&id).unwrap_or_else(|| {
                    Activation::new(id, &resolved.function, start, end, response)
                }),
            )
        })
    }

    /// Runs a resolved action (or sequence) under activation id `id` without answering
    /// its record (a rule's action: its record is in the log).
    async fn run_detached(
        &self,
        caller: &str,
        resolved: Arc<Resolved>,
        params: Map<String, Value>,
        id: InvocationId,
        cause: Option<(InvocationId, &'static str)>,
    ) {
        if resolved.action.exec.is_sequence() {
            self.run_sequence(caller, resolved, params, id, cause, 0).await;
        } else {
            let call = Arc::new(self.call_of(caller, &resolved, &cause));
            self.run_action(&resolved, call, params, &id, SystemTime::now()).await;
        }
    }

    fn call_of(
        &self,
        caller: &str,
        r: &Resolved,
        cause: &Option<(InvocationId, &'static str)>,
    ) -> WhiskCall {
        WhiskCall {
            namespace: caller.to_string(),
            name: r.invoked.name.clone(),
            path: r.real_key.clone(),
            kind: r.action.exec.kind.clone(),
            version: r.action.version.clone(),
            limits: r.action.limits,
            cause: cause.as_ref().map(|c| c.0.clone()),
            caused_by: cause.as_ref().map(|c| c.1),
        }
    }

    /// Runs an action under activation id `id`, described by `call`, from `start` (read
    /// by the caller: a sequence's previous component's end), and records it (the stack's
    /// record layer notes the call, and its result reaches that record through a
    /// [`ResultSlot`]); answers the response and when it ended.
    async fn run_action(
        &self,
        r: &Resolved,
        call: Arc<WhiskCall>,
        params: Map<String, Value>,
        id: &InvocationId,
        start: SystemTime,
    ) -> (ActivationResponse, SystemTime) {
        let body = serde_json::to_vec(&params).unwrap_or_else(|_| b"{}".to_vec());
        let slot = Arc::new(ResultSlot::new(call.clone()));
        let outcome = if body.len() > self.config.max_payload {
            Err(Error::PayloadTooLarge { limit: self.config.max_payload as u64 })
        } else {
            let mut req = http::Request::new(crate::Body::from(body));
            *req.method_mut() = http::Method::POST;
            req.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            req.extensions_mut().insert(slot.clone());
            let inv = Invocation { id: id.clone(), function: r.function.clone(), request: req };
            let limit = Duration::from_millis(r.action.limits.timeout);
            match Bounded::new(self.invoke.invoke(inv), limit).await {
                Some(Ok(resp)) => self.read_result(resp).await,
                Some(Err(e)) => Err(e),
                None => Err(Error::timeout("action", limit)),
            }
        };
        let response = match outcome {
            Ok(response) => response,
            Err(e) => ActivationResponse::error(&e),
        };
        let end = SystemTime::now();
        let finish = |a: &mut Activation| {
            a.response = response.clone();
            a.end = crate::activation::epoch_millis(end).max(a.start);
            a.duration = a.end - a.start;
        };
        let recorded = match slot.fill(response.clone(), end) {
            Filled::Pending => true,
            Filled::Built => self.log.update(id, finish),
            Filled::Unseen => false,
        };
        if !recorded {
            // Refused before it reached the stack's record layer (too large, or timed out
            // before the stack answered): recorded here.
            let mut a = Activation::new(id.clone(), &r.function, start, end, response.clone());
            call.describe(&mut a);
            a.annotate("waitTime", 0.into());
            self.log.insert(a);
        }
        (response, end)
    }

    /// The components of the sequence `r` resolved, made again only when an entity changed.
    fn plan(&self, r: &Resolved) -> Arc<Plan> {
        let made = self.plans.get_or_make(&self.entities, &r.real_key, || {
            let real = Self::real_path(&r.action);
            let mut components: Vec<std::result::Result<Arc<Resolved>, (String, Error)>> =
                Vec::new();
            let given = r.action.exec.components.as_deref().unwrap_or_default();
            for (i, c) in given.iter().enumerate() {
                // A component named again shares the first one's resolution.
                if let Some(first) = given[..i].iter().position(|earlier| earlier == c) {
                    components.push(components[first].clone());
                    continue;
                }
                let resolved = EntityPath::parse("exec.components", c, &real.namespace)
                    .and_then(|p| self.resolve(&p))
                    .map(Arc::new)
                    .map_err(|e| (c.clone(), e));
                components.push(resolved);
            }
            Ok::<_, std::convert::Infallible>(Plan { components })
        });
        match made {
            Ok(plan) => plan,
            Err(never) => match never {},
        }
    }

    /// An action's answer as its activation's response: a JSON object is the result; an
    /// error status with an `error` field is an application error; anything else that
    /// is not an object is a developer error, as in OpenWhisk.
    async fn read_result(&self, resp: crate::function::Response) -> Result<ActivationResponse> {
        let status = resp.status();
        let body = resp.into_body().collect_limited(self.config.max_payload).await?;
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        match (status.is_success(), parsed) {
            (true, Some(Value::Object(m))) if m.contains_key("error") => Ok(ActivationResponse {
                status: StatusCode::ApplicationError.as_str().into(),
                status_code: StatusCode::ApplicationError,
                success: false,
                result: Value::Object(m),
            }),
            (true, Some(v @ Value::Object(_))) => Ok(ActivationResponse::success(v)),
            (true, _) => Err(Error::developer(
                DeveloperErrorKind::Protocol,
                "The action did not return a dictionary.",
            )),
            (false, Some(Value::Object(m))) if m.contains_key("error") => Ok(ActivationResponse {
                status: StatusCode::ApplicationError.as_str().into(),
                status_code: StatusCode::ApplicationError,
                success: false,
                result: Value::Object(m),
            }),
            (false, _) => {
                let text = String::from_utf8_lossy(&body).trim().to_string();
                Ok(ActivationResponse {
                    status: StatusCode::ApplicationError.as_str().into(),
                    status_code: StatusCode::ApplicationError,
                    success: false,
                    result: json!({ "error": text, "statusCode": status.as_u16() }),
                })
            }
        }
    }

    async fn run_sequence(
        &self,
        caller: &str,
        r: Arc<Resolved>,
        params: Map<String, Value>,
        id: InvocationId,
        cause: Option<(InvocationId, &'static str)>,
        depth: usize,
    ) -> Arc<Activation> {
        let start = SystemTime::now();
        // The last component's end: the next one's start, and at last the sequence's end.
        let mut at = start;
        // What flows into the next component: the last response's result (an object, else
        // nothing), starting with the sequence's parameters.
        let mut response = ActivationResponse::success(Value::Object(params));
        if depth >= super::entity::MAX_SEQUENCE_LENGTH {
            response = ActivationResponse::error(&Error::invalid(
                "exec.components",
                "sequence nesting is too deep",
            ));
        }
        let plan = self.plan(&r);
        let mut logs = Vec::with_capacity(plan.components.len());
        let child_cause = Some((id.clone(), "sequence"));
        // The record layer's description of each component's call: the same for every
        // call of a component in this run (one per distinct component, by its plan entry).
        let mut calls: Vec<(usize, Arc<WhiskCall>)> = Vec::new();
        for c in plan.components.iter().take(if depth >= super::entity::MAX_SEQUENCE_LENGTH {
            0
        } else {
            usize::MAX
        }) {
            let component = match c {
                Ok(c) => c,
                Err((c, e)) => {
                    response = ActivationResponse::error(&Error::developer(
                        DeveloperErrorKind::Init,
                        format!("Sequence component does not exist: {c} ({e})"),
                    ));
                    break;
                }
            };
            // A component gets its own bound parameters under what flows in (taken: the
            // component's response replaces it).
            let input = match std::mem::take(&mut response.result) {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            let merged = component.bound.merge_owned(input);
            let child_id = InvocationId::new();
            // A plain action hands on only its response (its record is in the log).
            let child = if component.action.exec.is_sequence() {
                let nested = self.run(
                    caller,
                    component.clone(),
                    merged,
                    child_id.clone(),
                    child_cause.clone(),
                    depth + 1,
                );
                let record = nested.await;
                at = SystemTime::now();
                record.response.clone()
            } else {
                let key = Arc::as_ptr(component) as usize;
                let call = match calls.iter().find(|(k, _)| *k == key) {
                    Some((_, call)) => call.clone(),
                    None => {
                        let call = Arc::new(self.call_of(caller, component, &child_cause));
                        calls.push((key, call.clone()));
                        call
                    }
                };
                let (response, end) = self.run_action(component, call, merged, &child_id, at).await;
                at = end;
                response
            };
            logs.push(child_id.to_string());
            let failed = !child.success;
            response = child;
            if failed {
                break;
            }
        }
        let call = self.call_of(caller, &r, &cause);
        let topmost = call.caused_by.is_none();
        let mut a = Activation::new(id, &r.function, start, at, response);
        call.describe_owned(&mut a);
        a.logs = logs;
        if topmost {
            a.annotate("topmost", true.into());
        }
        let a = Arc::new(a);
        self.log.note_built(a.clone());
        a
    }

    // ------------------------------------------------------------------------------
    // Packages

    /// Creates (or with `overwrite` replaces) a package or a binding (whose package must
    /// exist and not be a binding itself).
    pub async fn put_package(
        &self,
        path: &EntityPath,
        put: PackagePut,
        overwrite: bool,
    ) -> Result<Package> {
        Self::check_path(path)?;
        let existing: Option<Package> = self.entities.get(path)?;
        if existing.is_some() && !overwrite {
            return Err(Error::AlreadyExists { kind: "package", name: path.fqn() });
        }
        let binding = match put.binding {
            Some(b) => b,
            None => existing.as_ref().and_then(|p| p.binding.clone()),
        };
        if let Some(b) = &binding {
            let target: Package = self
                .entities
                .get(&EntityPath::new(&b.namespace, None, &b.name))?
                .ok_or_else(|| {
                    Error::invalid(
                        "binding",
                        format!(
                            "binding references a package that does not exist: /{}/{}",
                            b.namespace, b.name
                        ),
                    )
                })?;
            if target.binding.is_some() {
                return Err(Error::invalid("binding", "cannot bind to another package binding"));
            }
        }
        let package = Package {
            namespace: path.namespace.clone(),
            name: path.name.clone(),
            version: existing.as_ref().map_or_else(|| "0.0.1".into(), |p| bump_version(&p.version)),
            publish: put.publish.or(existing.as_ref().map(|p| p.publish)).unwrap_or(false),
            binding,
            parameters: put
                .parameters
                .or(existing.as_ref().map(|p| p.parameters.clone()))
                .unwrap_or_default(),
            annotations: put
                .annotations
                .or(existing.as_ref().map(|p| p.annotations.clone()))
                .unwrap_or_default(),
            updated: now_millis(),
        };
        self.entities.put(path, &package).await?;
        Ok(package)
    }

    /// Removes a package; refused (409, as OpenWhisk) while it still has actions.
    pub async fn delete_package(&self, path: &EntityPath) -> Result<Package> {
        let package: Package = self.entities.require(path)?;
        let actions: Vec<Action> = self.entities.list(&format!("{}/", path.key()))?;
        if !actions.is_empty() {
            return Err(Error::AlreadyExists {
                kind: "package",
                name: format!(
                    "{} still has {} actions; delete them first",
                    path.fqn(),
                    actions.len()
                ),
            });
        }
        self.entities.delete::<Package>(path).await?;
        Ok(package)
    }

    // ------------------------------------------------------------------------------
    // Triggers and rules

    /// Creates (or with `overwrite` replaces) a trigger.
    pub async fn put_trigger(
        &self,
        path: &EntityPath,
        put: TriggerPut,
        overwrite: bool,
    ) -> Result<Trigger> {
        Self::check_path(path)?;
        let existing: Option<Trigger> = self.entities.get(path)?;
        if existing.is_some() && !overwrite {
            return Err(Error::AlreadyExists { kind: "trigger", name: path.fqn() });
        }
        let trigger = Trigger {
            namespace: path.namespace.clone(),
            name: path.name.clone(),
            version: existing.as_ref().map_or_else(|| "0.0.1".into(), |t| bump_version(&t.version)),
            publish: put.publish.or(existing.as_ref().map(|t| t.publish)).unwrap_or(false),
            parameters: put
                .parameters
                .or(existing.as_ref().map(|t| t.parameters.clone()))
                .unwrap_or_default(),
            annotations: put
                .annotations
                .or(existing.as_ref().map(|t| t.annotations.clone()))
                .unwrap_or_default(),
            limits: Map::new(),
            updated: now_millis(),
        };
        self.entities.put(path, &trigger).await?;
        Ok(trigger)
    }

    /// Removes a trigger.
    pub async fn delete_trigger(&self, path: &EntityPath) -> Result<Trigger> {
        let trigger: Trigger = self.entities.require(path)?;
        self.drop_feed(path).await?;
        self.entities.delete::<Trigger>(path).await?;
        Ok(trigger)
    }

    /// Creates (or with `overwrite` replaces) a rule; its trigger and action must exist.
    pub async fn put_rule(&self, path: &EntityPath, put: RulePut, overwrite: bool) -> Result<Rule> {
        Self::check_path(path)?;
        let existing: Option<Rule> = self.entities.get(path)?;
        if existing.is_some() && !overwrite {
            return Err(Error::AlreadyExists { kind: "rule", name: path.fqn() });
        }
        let pick = |given: Option<String>,
                    old: Option<&PathName>,
                    field: &str|
         -> Result<EntityPath> {
            match (given, old) {
                (Some(s), _) => EntityPath::parse(field, &s, &path.namespace),
                (None, Some(p)) => {
                    EntityPath::parse(field, &format!("/{}/{}", p.path, p.name), &path.namespace)
                }
                (None, None) => Err(Error::invalid(field, format!("the rule needs a {field}"))),
            }
        };
        let trigger = pick(put.trigger, existing.as_ref().map(|r| &r.trigger), "trigger")?;
        let action = pick(put.action, existing.as_ref().map(|r| &r.action), "action")?;
        self.entities.require::<Trigger>(&trigger)?;
        self.resolve(&action)?;
        let rule = Rule {
            namespace: path.namespace.clone(),
            name: path.name.clone(),
            version: existing.as_ref().map_or_else(|| "0.0.1".into(), |r| bump_version(&r.version)),
            publish: put.publish.or(existing.as_ref().map(|r| r.publish)).unwrap_or(false),
            trigger: PathName { path: trigger.path(), name: trigger.name.clone() },
            action: PathName { path: action.path(), name: action.name.clone() },
            status: put
                .status
                .or(existing.as_ref().map(|r| r.status))
                .unwrap_or(RuleStatus::Active),
            annotations: put
                .annotations
                .or(existing.as_ref().map(|r| r.annotations.clone()))
                .unwrap_or_default(),
            updated: now_millis(),
        };
        self.entities.put(path, &rule).await?;
        Ok(rule)
    }

    /// Enables or disables a rule.
    pub async fn set_rule_status(&self, path: &EntityPath, status: RuleStatus) -> Result<Rule> {
        let mut rule: Rule = self.entities.require(path)?;
        rule.status = status;
        rule.updated = now_millis();
        self.entities.put(path, &rule).await?;
        Ok(rule)
    }

    /// Removes a rule.
    pub async fn delete_rule(&self, path: &EntityPath) -> Result<Rule> {
        let rule: Rule = self.entities.require(path)?;
        self.entities.delete::<Rule>(path).await?;
        Ok(rule)
    }

    /// Fires the trigger at `path` with `params` (merged over its defaults): every active
    /// rule's action runs (its own bound parameters under the trigger's and the event's).
    /// Answers the trigger's activation id, or `None` when no rule is active (OpenWhisk's
    /// 204). The trigger's record lists each rule fired and its action's activation id;
    /// the actions run on after this returns.
    pub async fn fire(
        &self,
        caller: &str,
        path: &EntityPath,
        params: Map<String, Value>,
    ) -> Result<Option<InvocationId>> {
        let trigger: Trigger = self.entities.require(path)?;
        let rules: Vec<Rule> = self.entities.list(&format!("{}/", path.namespace))?;
        let trigger_path = path.path();
        let active: Vec<Rule> = rules
            .into_iter()
            .filter(|r| {
                r.status == RuleStatus::Active
                    && r.trigger.path == trigger_path
                    && r.trigger.name == path.name
            })
            .collect();
        if active.is_empty() {
            return Ok(None);
        }
        let start = SystemTime::now();
        let id = InvocationId::new();
        let defaults = to_map(&trigger.parameters);
        let mut payload = defaults.clone();
        payload.extend(params.clone());
        let mut logs = Vec::with_capacity(active.len());
        for rule in &active {
            let action_path = EntityPath::parse(
                "action",
                &format!("/{}/{}", rule.action.path, rule.action.name),
                &path.namespace,
            );
            let entry = |status: StatusCode,
                         success: bool,
                         action_id: Option<&InvocationId>,
                         error: Option<String>| {
                let mut m = Map::new();
                m.insert("statusCode".into(), json!(status.as_u8()));
                m.insert("success".into(), json!(success));
                if let Some(a) = action_id {
                    m.insert("activationId".into(), json!(a));
                }
                m.insert("rule".into(), json!(format!("{}/{}", rule.namespace, rule.name)));
                m.insert(
                    "action".into(),
                    json!(format!("{}/{}", rule.action.path, rule.action.name)),
                );
                if let Some(e) = error {
                    m.insert("error".into(), json!(e));
                }
                Value::Object(m).to_string()
            };
            let resolved = action_path.and_then(|p| self.resolve(&p));
            match resolved.and_then(|r| r.bound.merge(&[&defaults, &params], false).map(|m| (r, m)))
            {
                Ok((resolved, merged)) => {
                    let action_id = InvocationId::new();
                    logs.push(entry(StatusCode::Success, true, Some(&action_id), None));
                    let this = self.clone();
                    let caller = caller.to_string();
                    let cause = id.clone();
                    tokio::spawn(async move {
                        let cause = Some((cause, "trigger"));
                        let resolved = Arc::new(resolved);
                        this.run_detached(&caller, resolved, merged, action_id, cause).await;
                    });
                }
                Err(e) => logs.push(entry(e.status_code(), false, None, Some(e.to_string()))),
            }
        }
        let mut a = Activation::new(
            id.clone(),
            &FunctionRef::new(path.name.clone(), path.namespace.clone()),
            start,
            SystemTime::now(),
            ActivationResponse::success(Value::Object(payload)),
        );
        a.namespace = caller.to_string();
        a.subject = caller.to_string();
        a.version = trigger.version.clone();
        a.logs = logs;
        a.annotate("path", path.key().into());
        a.annotate("kind", "trigger".into());
        self.log.insert(a);
        Ok(Some(id))
    }

    /// A parameters object from a request body: empty for no body, else a JSON object
    /// (400 naming `parameters` otherwise).
    pub fn params_of(body: &[u8]) -> Result<Map<String, Value>> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(Error::invalid("parameters", "the request content must be a JSON object")),
            Err(e) => {
                Err(Error::invalid("parameters", format!("the request content was malformed: {e}")))
            }
        }
    }
}

/// Parameters as an OpenWhisk `[{"key","value"}]` array.
pub fn key_values(m: &Map<String, Value>) -> KeyValues {
    m.iter().map(|(k, v)| KeyValue { key: k.clone(), value: v.clone() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryInvoker;
    use crate::state::MemoryStateStore;
    use crate::{handler_fn, Context, Request};

    fn blackbox(image: &str, timeout_ms: u64) -> ActionPut {
        ActionPut {
            exec: Some(Exec {
                kind: "blackbox".into(),
                image: Some(image.into()),
                ..Default::default()
            }),
            limits: Some(Limits { timeout: timeout_ms, ..Default::default() }),
            ..Default::default()
        }
    }

    /// A memory backend with `noop` (answers `{}`) and `slow` (never answers in time), a
    /// function `guest/slow` deployed without a timeout of the backend's (so only the
    /// API's own bounds its calls), and the API over it.
    async fn fixture(config: WhiskConfig) -> Whisk {
        let memory = Arc::new(MemoryInvoker::new());
        memory
            .register("noop", handler_fn(|_: Request, _: Context| async { Ok::<_, Error>("{}") }));
        memory.register(
            "slow",
            handler_fn(|_: Request, _: Context| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Error>("{}")
            }),
        );
        // Taken over as it is by the action's creation.
        memory.deploy(FunctionSpec::new("slow", "slow").namespace("guest")).await.unwrap();
        let entities = EntityStore::new(Arc::new(MemoryStateStore::default()));
        Whisk::new(entities, ActivationLog::default(), memory.clone(), memory, config)
    }

    fn path(name: &str) -> EntityPath {
        EntityPath::new("guest", None, name)
    }

    /// Past the blocking wait the caller gets the id; the run goes on on its own and ends
    /// in its record (here: the action's own timeout).
    #[tokio::test(start_paused = true)]
    async fn past_the_blocking_wait_the_run_goes_on_to_its_record() {
        let config = WhiskConfig { blocking_wait: Duration::from_secs(1), ..Default::default() };
        let whisk = fixture(config).await;
        whisk.put_action(&path("slow"), blackbox("slow", 5_000), false).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let Invoked::Accepted(id) =
            whisk.invoke("guest", &path("slow"), Map::new(), true).await.unwrap()
        else {
            panic!("a call that never answers finished");
        };
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(2), "{waited:?}");
        let record = loop {
            match whisk.log().get(&id) {
                Some(a) if a.response.result.get("error").is_some() => break a,
                _ => {}
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no record of {id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(record.response.status_code, StatusCode::DeveloperError, "{record:?}");
        assert!(record.response.result["error"].as_str().unwrap().contains("action timeout of"));
        assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    /// A component past its own timeout stops its sequence with OpenWhisk's developer
    /// error, enforced by the API itself: the component's function was deployed without
    /// a timeout, so the backend would wait for it for ever.
    #[tokio::test(start_paused = true)]
    async fn a_component_past_its_timeout_stops_the_sequence() {
        let whisk = fixture(WhiskConfig::default()).await;
        whisk.put_action(&path("noop"), blackbox("noop", 60_000), false).await.unwrap();
        whisk.put_action(&path("slow"), blackbox("slow", 1_000), false).await.unwrap();
        let seq = Exec {
            kind: "sequence".into(),
            components: Some(vec![
                "/guest/noop".into(),
                "/guest/slow".into(),
                "/guest/noop".into(),
            ]),
            ..Default::default()
        };
        let put = ActionPut { exec: Some(seq), ..Default::default() };
        whisk.put_action(&path("seq"), put, false).await.unwrap();

        let t0 = tokio::time::Instant::now();
        let Invoked::Done(a) = whisk.invoke("guest", &path("seq"), Map::new(), true).await.unwrap()
        else {
            panic!("the sequence did not finish within the blocking wait");
        };
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(2), "{waited:?}");
        assert_eq!(a.response.status_code, StatusCode::DeveloperError, "{a:?}");
        let error = a.response.result["error"].as_str().unwrap_or_default();
        assert!(error.contains("action timeout of"), "{error}");
        assert_eq!(a.logs.len(), 2, "the chain stops at the slow component: {a:?}");
        assert_eq!(a.annotation("topmost"), Some(&Value::Bool(true)));

        let slow = whisk.log().get(&InvocationId::from_string(a.logs[1].clone())).unwrap();
        assert_eq!(slow.name, "slow");
        assert_eq!(slow.response.status_code, StatusCode::DeveloperError, "{slow:?}");
        assert_eq!(slow.response.result, a.response.result);
        assert_eq!(slow.cause.as_ref(), Some(&a.activation_id));
        assert_eq!(slow.annotation("causedBy"), Some(&Value::String("sequence".into())));
        let first = whisk.log().get(&InvocationId::from_string(a.logs[0].clone())).unwrap();
        assert!(first.response.success, "{first:?}");
        assert!(first.end <= slow.start, "components run one after the other");
        // The sequence's own record is in the log as answered.
        assert_eq!(whisk.log().get(&a.activation_id).as_ref(), Some(&*a));
    }
}

//! The Docker Swarm backend: each function a swarm service, placed, replicated and updated by
//! the engine.
//!
//! ```no_run
//! # async fn demo() -> faas_core::Result<()> {
//! use faas_backend_docker::swarm::SwarmInvoker;
//! use faas_core::prelude::*;
//! use faas_core::FunctionSpec;
//!
//! let swarm = SwarmInvoker::builder().build().await?; // the engine must be a swarm manager
//! let mut spec = FunctionSpec::new("echo", "faas-rs/fixture:latest");
//! spec.constraints = vec!["node.labels.type == rpi".to_string()];
//! swarm.deploy(spec).await?; // pending until a node has the label type=rpi
//! # Ok(()) }
//! ```
//!
//! ## How it maps
//!
//! - **A function is a service** named `faas-rs_<namespace>_<name>` (at most 63 characters),
//!   labelled `com.faas-rs.swarm=function`, `com.faas-rs.function`, `com.faas-rs.namespace`
//!   and `com.faas-rs.spec` (the spec as JSON, so a restarted backend adopts its functions)
//!   and the function's own labels. Its containers carry OpenFaaS's `faas_function` label.
//! - **Placement is the engine's**: the spec's `constraints`, in either syntax
//!   (`node.labels.type == rpi` or `type=rpi`; `arch`/`node.platform.arch`,
//!   `hostname`/`node.hostname` are mapped to the engine's own keys), become the service's
//!   placement constraints, and its `platforms` (else the image's `Os`/`Architecture` when the
//!   image is in the manager's engine) its placement platforms. A task no node can take stays
//!   pending with the engine's reason ("no suitable node (scheduling constraints not
//!   satisfied on 1 node)"), which [`SwarmInvoker::placement`], [`Deploy::wait_ready`] and
//!   invocations report (an invocation fails at once with [`Error::Unavailable`], a 503,
//!   naming it). Adding the label to a node (`docker node update --label-add`) lets the
//!   engine place it, and it serves. A function labelled [`PLACEMENT_LABEL`]` = scheduler`
//!   that names no node is placed by the backend's [`faas_core::Scheduler::place`] instead:
//!   over [`SwarmInvoker::nodes`] (labels, architecture, CPU and memory free after the
//!   reservations of the tasks already there), for its requests on an architecture its image
//!   supports, and the service is constrained to the node picked (`node.id == ...`); a
//!   function no node can take is then refused at deploy naming the constraint, the platforms
//!   or the requests.
//! - **Replicas, restarts and rolling updates** are the engine's: `scale` sets the service's
//!   replicas; `update` replaces the task template, started first and then the old task
//!   stopped, one task at a time.
//! - **Routing**: the watchdog's port 8080 is published in host mode on an ephemeral port per
//!   task, and the engine reports it in the task's status. A task on the manager's own node is
//!   called at `127.0.0.1:<port>`, one on another node at that node's address. The routing
//!   mesh (ingress) would balance over tasks itself, hiding which task serves a call; with a
//!   port per task the ready tasks are reconciled into the shared instance runtime
//!   ([`faas_core::instance::InstanceSet`]), which routes with the backend's
//!   [`faas_core::Scheduler`], counts invocations in flight per task (so `max_concurrency`
//!   holds) and queues callers while none can serve; calls go through the shared
//!   [`faas_core::instance::InstanceClient`]. Host-mode ports are bound on every interface of
//!   the node (swarm has no host IP option); block them at the node's firewall if the node is
//!   reachable from outside.
//! - **Readiness**: a task is ready when the engine reports it running, with its port, and its
//!   watchdog answers `GET /_/health`. A refresh loop (every
//!   [`SwarmInvokerBuilder::refresh_interval`], at once after a deploy, scale or a failed
//!   call) lists the services and tasks: one call each for all functions. The invoke path
//!   makes no engine call.
//! - **Secrets** are swarm secrets (`faas-rs_<namespace>_<name>_<version>`, labelled with the
//!   namespace and name), mounted at `/var/openfaas/secrets/<name>`. Swarm secrets cannot
//!   change, so an update creates a new version, moves the functions using it to the new one
//!   (a rolling update) and removes the old.
//! - **Logs** are the tasks' logs (`/tasks/{id}/logs`), tasks that have stopped included
//!   while the engine keeps them (its task history), merged by timestamp; the instance is the
//!   task's container name (`<service>.<slot>.<task id>`). A followed stream follows the tasks
//!   that exist when it starts.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, Limit, Platform, ResourceObject, SecretSpec, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecSecrets, TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, ListNodesOptions, ListSecretsOptions,
    ListServicesOptions, ListTasksOptions, LogsOptions, UpdateServiceOptions,
};
use bollard::Docker;
use faas_core::instance::{
    AcquireLimits, CallTimeout, InstanceClient, InstanceLease, InstanceSet, Shortage, Target,
};
use faas_core::prelude::*;
use faas_core::scheduler::Schedulers;
use faas_core::util::lock;
use faas_core::{
    Constraint, Error, FunctionRef, FunctionSpec, FunctionStatus, InstanceView, Invocation,
    InvocationMeta, LeastLoaded, LogEntry, LogStream, LogsRequest, ProviderInfo, ReplicaLimits,
    Response, Result, Scheduler, Secret, SecretInfo, StartKind,
};
use futures::StreamExt;

use crate::engine::{self, label, map_err, status_of};
use crate::inner::{DEFAULT_TIMEOUT, SECRETS_MOUNT, WATCHDOG_PORT};

/// The label marking what this backend manages: `function` on services, `secret` on secrets.
const SWARM_LABEL: &str = "com.faas-rs.swarm";
/// The label naming a secret (on swarm secrets).
const SECRET_LABEL: &str = "com.faas-rs.secret";
/// The label on containers naming the function's namespace (`faas_function` names it).
const CONTAINER_NAMESPACE_LABEL: &str = "com.faas-rs.swarm-namespace";
/// The label choosing who places a function's tasks: `engine` (the default: the swarm's own
/// scheduler, given the constraints, platforms and reservations) or `scheduler` (the
/// backend's [`Scheduler::place`] picks a node, by architecture and free resources, and the
/// service is constrained to it).
pub const PLACEMENT_LABEL: &str = "com.faas-rs.placement";
/// Longest service name swarm accepts.
const MAX_SERVICE_NAME: usize = 63;
/// Longest secret name swarm accepts.
const MAX_SECRET_NAME: usize = 64;

/// Builds a [`SwarmInvoker`]; see [`SwarmInvoker::builder`].
pub struct SwarmInvokerBuilder {
    socket: Option<String>,
    scheduler: Option<Arc<dyn Scheduler>>,
    start_timeout: Duration,
    refresh_interval: Duration,
    namespaces: Option<BTreeSet<String>>,
    limits: Option<ReplicaLimits>,
}

impl std::fmt::Debug for SwarmInvokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmInvokerBuilder")
            .field("socket", &self.socket)
            .field("start_timeout", &self.start_timeout)
            .field("refresh_interval", &self.refresh_interval)
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl Default for SwarmInvokerBuilder {
    fn default() -> Self {
        SwarmInvokerBuilder {
            socket: None,
            scheduler: None,
            start_timeout: Duration::from_secs(60),
            refresh_interval: Duration::from_millis(250),
            namespaces: None,
            limits: None,
        }
    }
}

impl SwarmInvokerBuilder {
    /// The manager's unix socket (default: `DOCKER_HOST` or `/var/run/docker.sock`).
    pub fn socket(mut self, path: impl Into<String>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// The scheduler routing invocations over ready tasks (default
    /// [`faas_core::LeastLoaded`]) of functions without the label
    /// [`faas_core::scheduler::SCHEDULER_LABEL`].
    pub fn scheduler(mut self, scheduler: Arc<dyn Scheduler>) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// How long an invocation waits for a task to become ready (a scale from zero, a
    /// rolling update). Default 60 s.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How often services and tasks are listed when nothing asks sooner. Default 250 ms.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Restricts this backend to these namespaces (default: any).
    pub fn namespaces<I, S>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.namespaces = Some(namespaces.into_iter().map(Into::into).collect());
        self
    }

    /// Caps on replicas per function (scaling labels or a scale request over it are refused
    /// naming the field and the cap). Default: [`ReplicaLimits::for_machine`] of the CPUs and
    /// memory of the swarm's nodes together, as the engine reports them when the backend is
    /// built.
    pub fn replica_limits(mut self, limits: ReplicaLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Connects to the engine, which must be a swarm manager ([`Error::Unavailable`] saying
    /// so otherwise), adopts the functions found there and starts the refresh loop.
    pub async fn build(self) -> Result<SwarmInvoker> {
        for ns in self.namespaces.iter().flatten() {
            faas_core::util::validate_dns1123_label(ns)
                .map_err(|r| Error::invalid("namespaces", r))?;
        }
        let docker = engine::connect(self.socket.as_deref()).await?;
        let info = docker.info().await.map_err(|e| map_err("info", e))?;
        let swarm = info.swarm.unwrap_or_default();
        let active = swarm.local_node_state == Some(bollard::models::LocalNodeState::ACTIVE);
        if !active || swarm.control_available != Some(true) {
            return Err(Error::unavailable(format!(
                "the docker engine is not a swarm manager (node state {}); run `docker swarm \
                 init` or point the backend at a manager",
                swarm.local_node_state.map(|s| s.to_string()).unwrap_or_default()
            )));
        }
        let limits = match self.limits {
            Some(l) => l,
            None => swarm_limits(&docker).await?,
        };
        let inner = Arc::new(SwarmInner {
            limits,
            docker,
            schedulers: Schedulers::new(
                self.scheduler.unwrap_or_else(|| Arc::new(LeastLoaded::new())),
            ),
            client: InstanceClient::new(),
            start_timeout: self.start_timeout,
            refresh_interval: self.refresh_interval,
            namespaces: self.namespaces,
            local_node: swarm.node_id.unwrap_or_default(),
            node_addrs: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            kick: Arc::new(tokio::sync::Notify::new()),
            closed: AtomicBool::new(false),
        });
        inner.adopt().await?;
        inner.refresh().await;
        let weak = Arc::downgrade(&inner);
        let interval = inner.refresh_interval;
        let kick = Arc::clone(&inner.kick);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { break };
                if inner.closed.load(Ordering::SeqCst) {
                    break;
                }
                let kicked = kick.notified();
                tokio::pin!(kicked);
                kicked.as_mut().enable();
                inner.refresh().await;
                drop(inner);
                let _ = tokio::time::timeout(interval, kicked).await;
            }
        });
        Ok(SwarmInvoker { inner })
    }
}

/// Where a function stands with the engine's scheduler ([`SwarmInvoker::placement`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placement {
    /// This many tasks are ready to serve.
    Ready(usize),
    /// No task is ready; tasks are being placed or started.
    Starting,
    /// A task cannot be placed or started, with the engine's reason (`no suitable node
    /// (scheduling constraints not satisfied on 1 node)`, `No such image: ...`).
    Pending(String),
    /// The engine rejected the function's tasks again and again (an image no node can pull),
    /// with its last reason: retries stopped (the service is at zero replicas) until an
    /// update or a scale.
    Failed(String),
}

/// The Docker Swarm backend. Cheap to clone; see the [module docs](self).
#[derive(Clone)]
pub struct SwarmInvoker {
    inner: Arc<SwarmInner>,
}

impl std::fmt::Debug for SwarmInvoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmInvoker").field("node", &self.inner.local_node).finish_non_exhaustive()
    }
}

struct SwarmInner {
    docker: Docker,
    /// Caps on replicas per function.
    limits: ReplicaLimits,
    schedulers: Schedulers,
    client: InstanceClient,
    start_timeout: Duration,
    refresh_interval: Duration,
    namespaces: Option<BTreeSet<String>>,
    /// The manager's own node id: its tasks are called on 127.0.0.1.
    local_node: String,
    /// Other nodes' addresses, by node id.
    node_addrs: Mutex<HashMap<String, String>>,
    functions: Mutex<HashMap<FunctionRef, Arc<SwarmFunction>>>,
    /// Asks the refresh loop to run now.
    kick: Arc<tokio::sync::Notify>,
    closed: AtomicBool,
}

/// A deployed spec with what is derived from it.
struct Deployed {
    spec: FunctionSpec,
    scheduler: Arc<dyn Scheduler>,
    min: u32,
    /// The task template's `ForceUpdate`, raised by every update: tasks of this spec carry it.
    generation: u64,
}

struct SwarmFunction {
    fref: FunctionRef,
    service_id: String,
    service_name: String,
    deployed: Mutex<Arc<Deployed>>,
    desired: AtomicU32,
    /// The ready tasks, routed, counted in flight and waited for by the shared instance
    /// runtime.
    tasks: Arc<InstanceSet<Arc<TaskInstance>>>,
    view: Mutex<View>,
    /// Woken after every refresh of the function's view.
    changed: tokio::sync::Notify,
    invocations: AtomicU64,
    created_at: SystemTime,
}

/// The tasks as the last refresh saw them.
#[derive(Default)]
struct View {
    /// Why a task cannot be placed or started, when none is ready.
    pending: Option<String>,
    /// Why the function failed: its tasks were rejected [`MAX_REJECTED`] times (an image no
    /// node can pull). The service is then scaled to zero, so the engine stops retrying,
    /// until an update or a scale.
    failed: Option<String>,
}

/// How many tasks of one spec the engine may reject before the function is failed.
const MAX_REJECTED: usize = 3;

/// A running task that answered its health check: the handle the instance set keeps.
struct TaskInstance {
    id: String,
    /// `<service>.<slot>.<task id>`, the container's name: the instance id.
    name: String,
    node: String,
    container: String,
    base: String,
}

/// The default caps of the swarm's ready nodes together.
async fn swarm_limits(docker: &Docker) -> Result<ReplicaLimits> {
    let nodes =
        docker.list_nodes(None::<ListNodesOptions>).await.map_err(|e| map_err("node list", e))?;
    let (cpus, memory) = nodes
        .iter()
        .map(crate::placement::swarm_node)
        .filter(|n| n.healthy)
        .fold((0u64, 0u64), |(c, m), n| {
            (c + n.capacity.cpu_millis / 1000, m.saturating_add(n.capacity.memory_bytes))
        });
    Ok(ReplicaLimits::for_machine(cpus.max(1), memory))
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `faas-rs_<namespace>_<name>`: names and namespaces are DNS labels, so `_` separates them
/// unambiguously.
fn service_name(f: &FunctionRef) -> String {
    format!("faas-rs_{}_{}", f.namespace, f.name)
}

fn filters(pairs: &[(&str, String)]) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in pairs {
        m.entry((*k).to_string()).or_default().push(v.clone());
    }
    m
}

/// A constraint in the engine's syntax: the keys faas-rs reads as built-in (`arch`, `os`,
/// `hostname`, `node.id`, `node.role` and their Kubernetes spellings) map to the engine's
/// `node.platform.*`, `node.hostname`, `node.id`, `node.role`; any other key is a node label.
pub fn swarm_constraint(c: &Constraint) -> String {
    let (key, value, op) = match c {
        Constraint::Eq { key, value } => (key.as_str(), value.as_str(), "=="),
        Constraint::Ne { key, value } => (key.as_str(), value.as_str(), "!="),
    };
    let key = match key {
        "arch" | "kubernetes.io/arch" | "beta.kubernetes.io/arch" => "node.platform.arch",
        "os" | "kubernetes.io/os" | "beta.kubernetes.io/os" => "node.platform.os",
        "hostname" | "kubernetes.io/hostname" | "node.hostname" => "node.hostname",
        "node.id" | "node.role" => key,
        other => return format!("node.labels.{other} {op} {value}"),
    };
    // The engine compares architectures as its nodes report them (`x86_64`, `aarch64`).
    let value = match (key, faas_core::scheduler::normalize_arch(value)) {
        ("node.platform.arch", "amd64") => "x86_64",
        ("node.platform.arch", "arm64") => "aarch64",
        ("node.platform.arch", "arm/v7") => "armv7l",
        _ => value,
    };
    format!("{key} {op} {value}")
}

/// A platform string (`linux/arm64`, `arm/v7`) as the engine's placement platform.
fn swarm_platform(p: &str) -> Platform {
    let (os, arch) = match p.split_once('/') {
        Some((os, arch)) if os == "linux" || os == "windows" => (os, arch),
        _ => ("linux", p),
    };
    let arch = faas_core::scheduler::normalize_arch(arch);
    // Swarm compares with the node's `uname -m` spelling too.
    let arch = match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "arm/v7" => "armv7l",
        "arm/v6" => "armv6l",
        other => other,
    };
    Platform { os: Some(os.to_string()), architecture: Some(arch.to_string()) }
}

impl SwarmInner {
    fn in_scope(&self, ns: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|s| s.contains(ns))
    }

    fn check_namespace(&self, ns: &str) -> Result<()> {
        if self.in_scope(ns) {
            Ok(())
        } else {
            Err(Error::NotFound { kind: "namespace", name: ns.to_string() })
        }
    }

    fn function(&self, f: &FunctionRef) -> Result<Arc<SwarmFunction>> {
        lock(&self.functions)
            .get(f)
            .cloned()
            .ok_or_else(|| Error::function_not_found(f.to_string()))
    }

    /// Adopts the services labelled as functions of the namespaces in scope.
    async fn adopt(&self) -> Result<()> {
        let opts = ListServicesOptions {
            filters: Some(filters(&[("label", format!("{SWARM_LABEL}=function"))])),
            status: None,
        };
        let services =
            self.docker.list_services(Some(opts)).await.map_err(|e| map_err("service list", e))?;
        for s in services {
            let (Some(id), Some(spec)) = (s.id.clone(), s.spec.clone()) else { continue };
            let labels = spec.labels.clone().unwrap_or_default();
            let Some(fspec) =
                labels.get(label::SPEC).and_then(|j| serde_json::from_str::<FunctionSpec>(j).ok())
            else {
                continue;
            };
            let fref = fspec.function_ref();
            if !self.in_scope(&fref.namespace) {
                continue;
            }
            let Ok(scheduler) = self.schedulers.for_spec(&fspec) else { continue };
            let min = fspec.scaling_policy().map(|p| p.min).unwrap_or(1);
            let created = labels
                .get(label::CREATED)
                .and_then(|c| c.parse::<u64>().ok())
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
                .unwrap_or_else(SystemTime::now);
            let generation = spec.task_template.as_ref().and_then(|t| t.force_update).unwrap_or(0);
            let replicas = spec
                .mode
                .as_ref()
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas)
                .unwrap_or(0);
            let f = SwarmFunction::new(
                fref.clone(),
                id,
                spec.name.clone().unwrap_or_else(|| service_name(&fref)),
                Deployed { spec: fspec, scheduler, min, generation },
                replicas.clamp(0, i64::from(u32::MAX)) as u32,
                created,
            );
            lock(&self.functions).insert(fref, Arc::new(f));
        }
        Ok(())
    }

    /// Lists services and tasks once for all functions and updates every function's view:
    /// replicas, ready tasks (running, with a port, answering the health check), and the
    /// engine's reason when a task cannot be placed or started.
    async fn refresh(&self) {
        let fs: Vec<Arc<SwarmFunction>> = lock(&self.functions).values().cloned().collect();
        if fs.is_empty() {
            return;
        }
        let opts = ListServicesOptions {
            filters: Some(filters(&[("label", format!("{SWARM_LABEL}=function"))])),
            status: None,
        };
        let Ok(services) = self.docker.list_services(Some(opts)).await else { return };
        let replicas: HashMap<String, i64> = services
            .iter()
            .filter_map(|s| {
                let r = s.spec.as_ref()?.mode.as_ref()?.replicated.as_ref()?.replicas?;
                Some((s.id.clone()?, r))
            })
            .collect();
        let ids: Vec<(&str, String)> =
            fs.iter().map(|f| ("service", f.service_id.clone())).collect();
        let opts = ListTasksOptions { filters: Some(filters(&ids)) };
        let Ok(tasks) = self.docker.list_tasks(Some(opts)).await else { return };
        let mut by_service: HashMap<&str, Vec<&bollard::models::Task>> = HashMap::new();
        for t in &tasks {
            if let Some(s) = t.service_id.as_deref() {
                by_service.entry(s).or_default().push(t);
            }
        }
        for f in fs {
            if let Some(r) = replicas.get(&f.service_id) {
                f.desired.store((*r).clamp(0, i64::from(u32::MAX)) as u32, Ordering::SeqCst);
            }
            let tasks = by_service.remove(f.service_id.as_str()).unwrap_or_default();
            self.update_view(&f, &tasks).await;
        }
    }

    async fn update_view(&self, f: &Arc<SwarmFunction>, tasks: &[&bollard::models::Task]) {
        let wanted = |t: &bollard::models::Task| {
            matches!(t.desired_state, Some(TaskState::RUNNING) | Some(TaskState::READY))
        };
        let known: HashMap<String, Arc<TaskInstance>> =
            f.tasks.handles().into_iter().map(|(_, t)| (t.id.clone(), t)).collect();
        let mut ready = Vec::new();
        let mut probes = Vec::new();
        let mut pending = None;
        let generation = f.deployed().generation;
        let rejected: Vec<&str> = tasks
            .iter()
            .filter(|t| {
                t.spec.as_ref().and_then(|s| s.force_update).unwrap_or(0) == generation
                    && t.status.as_ref().and_then(|s| s.state) == Some(TaskState::REJECTED)
            })
            .filter_map(|t| t.status.as_ref()?.err.as_deref())
            .collect();
        for t in tasks.iter().copied().filter(|t| wanted(t)) {
            let Some(id) = t.id.clone() else { continue };
            let status = t.status.as_ref();
            let state = status.and_then(|s| s.state);
            if state == Some(TaskState::RUNNING) {
                if let Some(k) = known.get(&id) {
                    ready.push(Arc::clone(k));
                    continue;
                }
                let Some(port) = status
                    .and_then(|s| s.port_status.as_ref())
                    .and_then(|p| p.ports.as_ref())
                    .and_then(|ps| {
                        ps.iter().find(|p| {
                            p.target_port.map(|t| t.to_string() + "/tcp")
                                == Some(WATCHDOG_PORT.to_string())
                        })
                    })
                    .and_then(|p| p.published_port)
                else {
                    continue;
                };
                let Some(host) = self.node_address(t.node_id.as_deref().unwrap_or("")).await else {
                    continue;
                };
                let slot = t.slot.map(|s| s.to_string()).unwrap_or_else(|| {
                    t.node_id.clone().unwrap_or_default() // global services name tasks by node
                });
                probes.push(TaskInstance {
                    name: format!("{}.{slot}.{id}", f.service_name),
                    id,
                    node: t.node_id.clone().unwrap_or_default(),
                    container: status
                        .and_then(|s| s.container_status.as_ref())
                        .and_then(|c| c.container_id.clone())
                        .unwrap_or_default(),
                    base: format!("http://{host}:{port}"),
                });
            } else if let Some(err) = status.and_then(|s| s.err.clone()).filter(|e| !e.is_empty()) {
                // Pending with a reason (no suitable node), or rejected at start (no image).
                if matches!(
                    state,
                    Some(TaskState::PENDING)
                        | Some(TaskState::NEW)
                        | Some(TaskState::ALLOCATED)
                        | Some(TaskState::ASSIGNED)
                        | Some(TaskState::REJECTED)
                        | Some(TaskState::PREPARING)
                ) {
                    pending = Some(err);
                }
            }
        }
        let checked = futures::future::join_all(probes.into_iter().map(|t| async move {
            let ok = self.client.healthy(&t.base, Duration::from_millis(500)).await;
            ok.then_some(t)
        }))
        .await;
        ready.extend(checked.into_iter().flatten().map(Arc::new));
        let fail = (ready.is_empty() && rejected.len() >= MAX_REJECTED)
            .then(|| rejected.last().map(|r| r.to_string()))
            .flatten();
        let max_concurrency = f.deployed().spec.max_concurrency;
        f.tasks.reconcile(ready.into_iter().map(|t| {
            let view = InstanceView {
                id: t.name.clone(),
                node: Some(t.node.clone()),
                in_flight: 0,
                max_concurrency,
                ready: true,
            };
            (view, t)
        }));
        let newly_failed = {
            let mut v = lock(&f.view);
            v.pending = pending;
            let newly = fail.is_some() && v.failed.is_none();
            if fail.is_some() {
                v.failed = fail.clone();
            }
            newly
        };
        if newly_failed {
            let reason = fail.unwrap_or_default();
            tracing::warn!(function = %f.fref, %reason, "tasks rejected {MAX_REJECTED} times: failed, scaled to zero");
            // Stop the engine's retries; an update or a scale starts again.
            if let Err(e) = self.set_replicas(f, 0).await {
                tracing::warn!(function = %f.fref, error = %e, "scaling a failed function to zero");
            }
        }
        // Invocations waiting for a task learn at once that none can be placed or started.
        if let Some(e) = Self::stuck(f) {
            f.tasks.start_failed(e);
        }
        f.changed.notify_waiters();
    }

    /// The address a task on `node` is called at: 127.0.0.1 on the manager's own node, else
    /// the node's address as the engine reports it.
    async fn node_address(&self, node: &str) -> Option<String> {
        if node == self.local_node {
            return Some("127.0.0.1".to_string());
        }
        if let Some(a) = lock(&self.node_addrs).get(node) {
            return Some(a.clone());
        }
        let nodes = self.docker.list_nodes(None::<ListNodesOptions>).await.ok()?;
        let mut addrs = lock(&self.node_addrs);
        for n in nodes {
            if let (Some(id), Some(addr)) = (n.id, n.status.and_then(|s| s.addr)) {
                addrs.insert(id, addr);
            }
        }
        addrs.get(node).cloned()
    }

    /// The swarm secrets holding `name` in `namespace` (its versions), newest last.
    async fn secret_versions(&self, namespace: &str, name: &str) -> Result<Vec<(String, String)>> {
        let opts = ListSecretsOptions {
            filters: Some(filters(&[
                ("label", format!("{SWARM_LABEL}=secret")),
                ("label", format!("{}={namespace}", label::NAMESPACE)),
                ("label", format!("{SECRET_LABEL}={name}")),
            ])),
        };
        let mut found =
            self.docker.list_secrets(Some(opts)).await.map_err(|e| map_err("secret list", e))?;
        found.sort_by_key(|s| s.version.as_ref().and_then(|v| v.index).unwrap_or(0));
        Ok(found.into_iter().filter_map(|s| Some((s.id?, s.spec?.name?))).collect())
    }

    fn check_secret(&self, namespace: &str, name: &str) -> Result<()> {
        faas_core::util::validate_dns1123_label(namespace)
            .map_err(|r| Error::invalid("namespace", r))?;
        self.check_namespace(namespace)?;
        faas_core::spec::validate_secret_name(name).map_err(|r| Error::invalid("name", r))?;
        if secret_name(namespace, name).len() > MAX_SECRET_NAME {
            return Err(Error::invalid(
                "name",
                format!("namespace and name together are too long for a swarm secret ({name:?})"),
            ));
        }
        Ok(())
    }

    async fn create_secret_version(&self, s: &Secret) -> Result<()> {
        let labels = HashMap::from([
            (SWARM_LABEL.to_string(), "secret".to_string()),
            (label::NAMESPACE.to_string(), s.namespace.clone()),
            (SECRET_LABEL.to_string(), s.name.clone()),
        ]);
        let spec = SecretSpec {
            name: Some(secret_name(&s.namespace, &s.name)),
            labels: Some(labels),
            data: Some(base64::engine::general_purpose::STANDARD.encode(&s.value)),
            ..Default::default()
        };
        self.docker.create_secret(spec).await.map_err(|e| map_err("secret create", e))?;
        Ok(())
    }

    /// The service spec of a validated function spec with `replicas`.
    async fn service_spec(
        &self,
        spec: &FunctionSpec,
        replicas: u32,
        created: SystemTime,
        generation: u64,
        scheduler: &Arc<dyn Scheduler>,
    ) -> Result<ServiceSpec> {
        let fref = spec.function_ref();
        let name = service_name(&fref);
        if name.len() > MAX_SERVICE_NAME {
            return Err(Error::invalid(
                "service",
                format!(
                    "namespace and name together are too long for a swarm service name ({name:?} \
                     is over {MAX_SERVICE_NAME} characters)"
                ),
            ));
        }
        let ns = &fref.namespace;
        let mut secrets = Vec::new();
        for (i, s) in spec.secrets.iter().enumerate() {
            let Some((id, sname)) = self.secret_versions(ns, s).await?.pop() else {
                return Err(Error::invalid(
                    format!("secrets[{i}]"),
                    format!("secret {s:?} does not exist in namespace {ns:?}"),
                ));
            };
            secrets.push(TaskSpecContainerSpecSecrets {
                file: Some(TaskSpecContainerSpecFile {
                    name: Some(format!("{SECRETS_MOUNT}/{s}")),
                    uid: Some("0".into()),
                    gid: Some("0".into()),
                    mode: Some(0o444),
                }),
                secret_id: Some(id),
                secret_name: Some(sname),
            });
        }
        let mut constraints: Vec<String> =
            spec.parsed_constraints()?.iter().map(swarm_constraint).collect();
        // Declared, else the image's own where the manager has it, else its registry's
        // (which also refuses, naming the image, one no registry serves).
        let platforms = match crate::placement::platforms_of(&self.docker, spec).await? {
            p if !p.is_empty() => p,
            _ if crate::placement::image_platforms(&self.docker, &spec.image).await?.is_some() => {
                Vec::new()
            }
            _ => crate::placement::registry_platforms(&self.docker, &spec.image).await?,
        };
        if let Some(node) = self.pick_node(spec, scheduler.as_ref(), &platforms).await? {
            constraints.push(format!("node.id == {node}"));
        }
        let mut env = spec.env_vars.clone();
        if let Some(p) = &spec.env_process {
            env.insert("fprocess".to_string(), p.clone());
        }
        if let Some(t) = spec.timeout {
            // The watchdog's timeouts a little after ours, as on the Docker backend.
            let w = faas_core::util::format_duration(t + Duration::from_secs(1));
            for key in ["exec_timeout", "write_timeout", "read_timeout"] {
                env.entry(key.to_string()).or_insert_with(|| w.clone());
            }
        }
        let limits = spec.limits.clone().unwrap_or_default();
        let requests = spec.requests.clone().unwrap_or_default();
        let json = serde_json::to_string(spec)
            .map_err(|e| Error::internal(format!("serialising the spec: {e}")))?;
        let mut labels: HashMap<String, String> =
            spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.insert(SWARM_LABEL.into(), "function".into());
        labels.insert(label::FUNCTION.into(), fref.name.clone());
        labels.insert(label::NAMESPACE.into(), ns.clone());
        labels.insert(label::SPEC.into(), json);
        labels.insert(label::CREATED.into(), epoch_ms(created).to_string());
        let container_labels = HashMap::from([
            (label::OPENFAAS_FUNCTION.to_string(), fref.name.clone()),
            (CONTAINER_NAMESPACE_LABEL.to_string(), ns.clone()),
        ]);
        let ms = |d: Duration| d.as_nanos().min(i64::MAX as u128) as i64;
        Ok(ServiceSpec {
            name: Some(name),
            labels: Some(labels),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(spec.image.clone()),
                    labels: Some(container_labels),
                    env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    read_only: Some(spec.read_only_root_filesystem),
                    secrets: Some(secrets),
                    stop_grace_period: Some(ms(Duration::from_secs(5))),
                    ..Default::default()
                }),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: limits.cpu_millis().map(|m| m.saturating_mul(1_000_000) as i64),
                        memory_bytes: limits.memory_bytes().map(|b| b as i64),
                        ..Default::default()
                    }),
                    reservations: Some(ResourceObject {
                        nano_cpus: requests
                            .cpu_millis()
                            .map(|m| m.saturating_mul(1_000_000) as i64),
                        memory_bytes: requests.memory_bytes().map(|b| b as i64),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                    delay: Some(ms(Duration::from_millis(500))),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: Some(constraints),
                    platforms: Some(platforms.iter().map(|p| swarm_platform(p)).collect()),
                    ..Default::default()
                }),
                // Tells this spec's tasks from an older one's (and replaces every task).
                force_update: Some(generation),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(i64::from(replicas)) }),
                ..Default::default()
            }),
            update_config: Some(ServiceSpecUpdateConfig {
                parallelism: Some(1),
                order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
                failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE),
                monitor: Some(ms(Duration::from_millis(500))),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                ports: Some(vec![EndpointPortConfig {
                    protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                    target_port: Some(8080),
                    publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Replaces the service's spec (`change` applied to the current one), retrying when
    /// another writer updated it in between.
    async fn update_service(
        &self,
        f: &SwarmFunction,
        change: impl Fn(&mut ServiceSpec),
    ) -> Result<()> {
        let mut tries = 0;
        loop {
            tries += 1;
            let svc = self
                .docker
                .inspect_service(&f.service_id, None)
                .await
                .map_err(|e| map_err("service inspect", e))?;
            let version = svc.version.and_then(|v| v.index).unwrap_or(0);
            let mut spec = svc.spec.unwrap_or_default();
            change(&mut spec);
            let opts = UpdateServiceOptions {
                version: version.min(i32::MAX as u64) as i32,
                ..Default::default()
            };
            match self.docker.update_service(&f.service_id, spec, opts, None).await {
                Ok(_) => break,
                // "update out of sequence": someone else updated it first.
                Err(e) if tries < 5 && status_of(&e).is_some_and(|s| s >= 500) => continue,
                Err(e) => return Err(map_err("service update", e)),
            }
        }
        self.kick.notify_one();
        Ok(())
    }

    async fn set_replicas(&self, f: &SwarmFunction, n: u32) -> Result<()> {
        f.desired.store(n, Ordering::SeqCst);
        self.update_service(f, |spec| {
            spec.mode = Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(i64::from(n)) }),
                ..Default::default()
            });
        })
        .await
    }

    /// Why the function has no task and will not get one by waiting: failed, or pending
    /// with the engine's reason.
    fn stuck(f: &SwarmFunction) -> Option<Error> {
        if f.tasks.ready() > 0 {
            return None;
        }
        let v = lock(&f.view);
        let reason = v.failed.clone().or_else(|| v.pending.clone())?;
        Some(Error::unavailable(format!("function {} has no task running: {reason}", f.fref)))
    }

    /// Waits (in the shared instance runtime's line) for a ready task with capacity, scaling
    /// from zero when there is none; fails at once, and as soon as the refresh loop hears it
    /// from the engine ([`InstanceSet::start_failed`]), when no task can be placed or started.
    async fn acquire(
        self: &Arc<Self>,
        f: &Arc<SwarmFunction>,
        arrived: Instant,
        budget: Option<Duration>,
    ) -> Result<InstanceLease<Arc<TaskInstance>>> {
        if let Some(e) = Self::stuck(f) {
            return Err(e);
        }
        let deployed = f.deployed();
        let limits = AcquireLimits {
            start_timeout: self.start_timeout,
            busy_timeout: budget.unwrap_or(self.start_timeout),
            ..AcquireLimits::default()
        };
        let scale_from_zero = |_: Shortage| {
            let to = deployed.min.max(1);
            if f.desired.compare_exchange(0, to, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                let (inner, f2) = (Arc::clone(self), Arc::clone(f));
                tokio::spawn(async move {
                    if let Err(e) = inner.set_replicas(&f2, to).await {
                        tracing::warn!(function = %f2.fref, error = %e, "scale from zero");
                    }
                });
            }
            self.kick.notify_one();
        };
        f.tasks.acquire(&*deployed.scheduler, &limits, arrived.into(), scale_from_zero).await
    }

    /// Whether a task's container has exited (after a failed call): its container's state
    /// where the container is local, else the task's.
    async fn task_exited(&self, t: &TaskInstance) -> bool {
        let exited = match self
            .docker
            .inspect_container(&t.container, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => !c.state.and_then(|s| s.running).unwrap_or(false),
            Err(_) => match self.docker.inspect_task(&t.id).await {
                Ok(task) => task.status.and_then(|s| s.state) != Some(TaskState::RUNNING),
                Err(_) => true,
            },
        };
        if exited {
            self.kick.notify_one();
        }
        exited
    }

    async fn invoke(self: &Arc<Self>, inv: Invocation) -> Result<Response> {
        let t0 = Instant::now();
        let f = self.function(&inv.function)?;
        f.invocations.fetch_add(1, Ordering::Relaxed);
        let budget = faas_core::invocation::WaitBudget::of(&inv.request);
        let mut lease = self.acquire(&f, t0, budget).await?;
        let task = Arc::clone(lease.handle());
        let waited = lease.cold();
        let wait_time = t0.elapsed();
        let timeout = f.deployed().spec.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let target = Target {
            base: &task.base,
            function: &f.fref,
            instance: &task.name,
            timeout: Some(CallTimeout { name: "exec", after: timeout, grace: Duration::ZERO }),
        };
        let mut resp = match self.client.forward(inv, &target, ()).await {
            Ok(r) => r,
            Err(e) => {
                let exited = e.is_transport() && self.task_exited(&task).await;
                if exited {
                    // It leaves the set when the lease drops.
                    lease.crashed();
                }
                drop(lease);
                return Err(e.into_error(exited));
            }
        };
        // The function has answered: its routing slot is free.
        drop(lease);
        resp.extensions_mut().insert(InvocationMeta {
            instance: task.name.clone(),
            start: if waited { StartKind::Cold } else { StartKind::Warm },
            wait_time,
            init_time: waited.then_some(wait_time),
        });
        Ok(resp)
    }

    /// Waits (bounded) until no container of the service is left.
    async fn wait_gone(&self, service_id: &str) -> Result<()> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters(&[(
                "label",
                format!("com.docker.swarm.service.id={service_id}"),
            )])),
            ..Default::default()
        };
        let gone = faas_core::invoker::poll_with_backoff(self.start_timeout, || async {
            let left = self
                .docker
                .list_containers(Some(opts.clone()))
                .await
                .map_err(|e| map_err("container list", e))?;
            Ok(left.is_empty())
        })
        .await?;
        if gone {
            Ok(())
        } else {
            Err(Error::unavailable(format!(
                "the containers of service {service_id} were not removed within {}",
                faas_core::util::format_duration(self.start_timeout)
            )))
        }
    }
}

/// A new version's swarm name of a secret: `faas-rs_<namespace>_<name>_<random>`.
fn secret_name(namespace: &str, name: &str) -> String {
    let id = faas_core::InvocationId::new();
    let v = &id.as_str()[..10];
    format!("faas-rs_{namespace}_{name}_{v}")
}

impl SwarmFunction {
    fn new(
        fref: FunctionRef,
        service_id: String,
        service_name: String,
        deployed: Deployed,
        desired: u32,
        created_at: SystemTime,
    ) -> Self {
        SwarmFunction {
            tasks: Arc::new(InstanceSet::new(fref.clone())),
            fref,
            service_id,
            service_name,
            deployed: Mutex::new(Arc::new(deployed)),
            desired: AtomicU32::new(desired),
            view: Mutex::new(View::default()),
            changed: tokio::sync::Notify::new(),
            invocations: AtomicU64::new(0),
            created_at,
        }
    }

    fn deployed(&self) -> Arc<Deployed> {
        Arc::clone(&lock(&self.deployed))
    }

    fn placement(&self) -> Placement {
        let ready = self.tasks.ready();
        let v = lock(&self.view);
        match (&v.failed, &v.pending, ready) {
            (_, _, n) if n > 0 => Placement::Ready(n),
            (Some(reason), _, _) => Placement::Failed(reason.clone()),
            (None, Some(reason), _) => Placement::Pending(reason.clone()),
            (None, None, _) => Placement::Starting,
        }
    }
}

impl SwarmInvoker {
    /// A builder with the defaults: the local engine, least-loaded routing, 60 s start
    /// timeout, a refresh every 250 ms.
    pub fn builder() -> SwarmInvokerBuilder {
        SwarmInvokerBuilder::default()
    }

    /// Where the function stands: ready tasks, starting, or pending with the engine's
    /// reason.
    pub fn placement(&self, function: &FunctionRef) -> Result<Placement> {
        Ok(self.inner.function(function)?.placement())
    }

    /// The caps on replicas this backend enforces.
    pub fn replica_limits(&self) -> ReplicaLimits {
        self.inner.limits
    }

    /// The name of the function's swarm service.
    pub fn service_name(&self, function: &FunctionRef) -> Result<String> {
        Ok(self.inner.function(function)?.service_name.clone())
    }

    /// The swarm's nodes as placement sees them: labels (`Spec.Labels`, plus `node.hostname`
    /// and `node.role`), architecture, the CPUs and memory their engines report, whether they
    /// are ready and active, and as allocated what the tasks meant to run on them (of every
    /// service, ours or not) reserve: their CPU and memory reservations and one slot each.
    pub async fn nodes(&self) -> Result<Vec<faas_core::Node>> {
        self.inner.nodes().await
    }

    /// Refreshes the view of every function now (after a change made outside the backend,
    /// such as a node label added).
    pub async fn refresh(&self) {
        self.inner.refresh().await;
    }
}

impl SwarmInner {
    /// See [`SwarmInvoker::nodes`].
    async fn nodes(&self) -> Result<Vec<faas_core::Node>> {
        let docker = &self.docker;
        let nodes = docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(|e| map_err("node list", e))?;
        let opts = ListTasksOptions {
            filters: Some(filters(&[("desired-state", "running".to_string())])),
        };
        let tasks = docker.list_tasks(Some(opts)).await.map_err(|e| map_err("task list", e))?;
        let mut nodes: Vec<faas_core::Node> =
            nodes.iter().map(crate::placement::swarm_node).collect();
        for t in &tasks {
            let Some(node) = nodes.iter_mut().find(|n| Some(&n.id) == t.node_id.as_ref()) else {
                continue;
            };
            let r = t.spec.as_ref().and_then(|s| s.resources.as_ref()?.reservations.as_ref());
            let nanos = r.and_then(|r| r.nano_cpus).unwrap_or(0).max(0) as u64;
            let memory = r.and_then(|r| r.memory_bytes).unwrap_or(0).max(0) as u64;
            node.allocate(&faas_core::scheduler::Capacity::new(nanos / 1_000_000, memory, 1));
        }
        Ok(nodes)
    }

    /// The node the function's scheduler picks for it when the function asks for the
    /// backend's placement ([`PLACEMENT_LABEL`]` = scheduler`) and names no node itself:
    /// [`Scheduler::place`] over the swarm's nodes (their labels, architectures, and free
    /// CPU and memory after the reservations of the tasks on them) for one instance of its
    /// requests on an architecture its image supports. `None` when the engine places it.
    /// No node eligible: [`Error::InvalidSpec`] naming the constraint, the platforms or the
    /// requests; eligible nodes all full: [`Error::Unavailable`].
    async fn pick_node(
        &self,
        spec: &FunctionSpec,
        scheduler: &dyn Scheduler,
        platforms: &[String],
    ) -> Result<Option<String>> {
        match spec.labels.get(PLACEMENT_LABEL).map(String::as_str) {
            None | Some("engine") => return Ok(None),
            Some("scheduler") => {}
            Some(other) => {
                return Err(Error::invalid(
                    format!("labels.{PLACEMENT_LABEL}"),
                    format!("{other:?} is not a placement; use `engine` or `scheduler`"),
                ))
            }
        }
        let constraints = spec.parsed_constraints()?;
        if constraints.iter().any(|c| {
            matches!(c, Constraint::Eq { key, .. } if matches!(key.as_str(),
                "node.id" | "node.hostname" | "hostname" | "kubernetes.io/hostname"))
        }) {
            return Ok(None);
        }
        let nodes = self.nodes().await?;
        let fref = spec.function_ref();
        let req =
            faas_core::PlacementRequest::new(&fref, faas_core::scheduler::Capacity::for_spec(spec))
                .with_constraints(&constraints)
                .with_platforms(platforms);
        match scheduler.place(&req, &nodes) {
            Ok(i) if nodes.get(i).is_some_and(|n| req.admits(n)) => Ok(Some(nodes[i].id.clone())),
            _ => Err(req.unplaceable(&nodes)),
        }
    }
}

impl SwarmInvoker {
    /// Stops the refresh loop. Services keep running; a new backend adopts them.
    pub fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.kick.notify_one();
    }

    fn status_of(&self, f: &SwarmFunction) -> FunctionStatus {
        let mut st = FunctionStatus::from_spec(&f.deployed().spec);
        st.invocation_count = f.invocations.load(Ordering::Relaxed);
        st.replicas = u64::from(f.desired.load(Ordering::SeqCst));
        st.available_replicas = f.tasks.ready() as u64;
        st.created_at = Some(f.created_at);
        st
    }
}

#[async_trait]
impl Invoke for SwarmInvoker {
    async fn invoke(&self, invocation: Invocation) -> Result<Response> {
        self.inner.invoke(invocation).await
    }
}

#[async_trait]
impl Deploy for SwarmInvoker {
    async fn deploy(&self, spec: FunctionSpec) -> Result<()> {
        spec.validate()?;
        let inner = &self.inner;
        let fref = spec.function_ref();
        inner.check_namespace(&fref.namespace)?;
        let scheduler = inner.schedulers.for_spec(&spec)?;
        let min = spec.scaling_policy_within(&inner.limits)?.min;
        if lock(&inner.functions).contains_key(&fref) {
            return Err(Error::AlreadyExists { kind: "function", name: fref.to_string() });
        }
        let created = SystemTime::now();
        let svc = inner.service_spec(&spec, min, created, 0, &scheduler).await?;
        let name = service_name(&fref);
        let id = match inner.docker.create_service(svc, None).await {
            Ok(r) => r.id.unwrap_or_default(),
            Err(e) if status_of(&e) == Some(409) => {
                return Err(Error::AlreadyExists { kind: "function", name: fref.to_string() })
            }
            Err(e) => return Err(map_err("service create", e)),
        };
        let f = Arc::new(SwarmFunction::new(
            fref.clone(),
            id,
            name,
            Deployed { spec, scheduler, min, generation: 0 },
            min,
            created,
        ));
        lock(&inner.functions).insert(fref, f);
        inner.kick.notify_one();
        Ok(())
    }

    async fn update(&self, spec: FunctionSpec) -> Result<()> {
        spec.validate()?;
        let inner = &self.inner;
        let fref = spec.function_ref();
        inner.check_namespace(&fref.namespace)?;
        let f = inner.function(&fref)?;
        let scheduler = inner.schedulers.for_spec(&spec)?;
        let min = spec.scaling_policy_within(&inner.limits)?.min;
        // A failed function (scaled to zero by the backend) starts again at its minimum.
        let failed = lock(&f.view).failed.is_some();
        let replicas = if failed { min } else { f.desired.load(Ordering::SeqCst) };
        let generation = f.deployed().generation + 1;
        let new = inner.service_spec(&spec, replicas, f.created_at, generation, &scheduler).await?;
        inner
            .update_service(&f, |current| {
                // Keep the replicas the engine has now (a scale may have happened meanwhile).
                let mode = current.mode.clone();
                *current = new.clone();
                if mode.is_some() && !failed {
                    current.mode = mode;
                }
            })
            .await?;
        if failed {
            f.desired.store(min, Ordering::SeqCst);
        }
        *lock(&f.deployed) = Arc::new(Deployed { spec, scheduler, min, generation });
        lock(&f.view).failed = None;
        Ok(())
    }

    async fn remove(&self, function: &FunctionRef) -> Result<()> {
        let inner = &self.inner;
        let f = lock(&inner.functions)
            .remove(function)
            .ok_or_else(|| Error::function_not_found(function.to_string()))?;
        f.tasks.close();
        f.changed.notify_waiters();
        match inner.docker.delete_service(&f.service_id).await {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(map_err("service remove", e)),
        }
        inner.wait_gone(&f.service_id).await
    }

    async fn list(&self, namespace: &str) -> Result<Vec<FunctionStatus>> {
        self.inner.check_namespace(namespace)?;
        let fs: Vec<Arc<SwarmFunction>> = lock(&self.inner.functions)
            .values()
            .filter(|f| f.fref.namespace == namespace)
            .cloned()
            .collect();
        let mut out: Vec<FunctionStatus> = fs.iter().map(|f| self.status_of(f)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn status(&self, function: &FunctionRef) -> Result<FunctionStatus> {
        let f = self.inner.function(function)?;
        Ok(self.status_of(&f))
    }

    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<()> {
        self.inner.limits.check_scale(replicas)?;
        let f = self.inner.function(function)?;
        lock(&f.view).failed = None;
        self.inner.set_replicas(&f, replicas).await
    }

    async fn namespaces(&self) -> Result<Vec<String>> {
        let set: BTreeSet<String> = match &self.inner.namespaces {
            Some(s) => s.clone(),
            None => std::iter::once(faas_core::spec::DEFAULT_NAMESPACE.to_string())
                .chain(lock(&self.inner.functions).keys().map(|f| f.namespace.clone()))
                .collect(),
        };
        Ok(set.into_iter().collect())
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: "faas-rs-swarm".to_string(),
            orchestration: "swarm".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Answered from the refresh loop's view (no engine call); a function the engine cannot
    /// place or start fails at once with [`Error::Unavailable`] naming the engine's reason.
    async fn wait_ready(&self, function: &FunctionRef, timeout: Duration) -> Result<bool> {
        let f = self.inner.function(function)?;
        if timeout > Duration::ZERO {
            self.inner.kick.notify_one();
        }
        faas_core::invoker::wait_notified(&f.changed, timeout, || match f.placement() {
            Placement::Ready(_) => Ok(true),
            Placement::Pending(reason) | Placement::Failed(reason) => Err(Error::unavailable(
                format!("function {} has no task running: {reason}", f.fref),
            )),
            Placement::Starting => Ok(false),
        })
        .await
    }
}

#[async_trait]
impl Secrets for SwarmInvoker {
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        self.inner.check_namespace(namespace)?;
        let opts = ListSecretsOptions {
            filters: Some(filters(&[
                ("label", format!("{SWARM_LABEL}=secret")),
                ("label", format!("{}={namespace}", label::NAMESPACE)),
            ])),
        };
        let found = self
            .inner
            .docker
            .list_secrets(Some(opts))
            .await
            .map_err(|e| map_err("secret list", e))?;
        let names: BTreeSet<String> =
            found.into_iter().filter_map(|s| s.spec?.labels?.get(SECRET_LABEL).cloned()).collect();
        Ok(names
            .into_iter()
            .map(|name| SecretInfo { name, namespace: namespace.to_string() })
            .collect())
    }

    async fn create_secret(&self, secret: Secret) -> Result<()> {
        let inner = &self.inner;
        inner.check_secret(&secret.namespace, &secret.name)?;
        if !inner.secret_versions(&secret.namespace, &secret.name).await?.is_empty() {
            return Err(Error::AlreadyExists { kind: "secret", name: secret.name.clone() });
        }
        inner.create_secret_version(&secret).await
    }

    /// Creates a new version, moves the functions using the secret to it (a rolling update
    /// of each), then removes the old versions.
    async fn update_secret(&self, secret: Secret) -> Result<()> {
        let inner = &self.inner;
        inner.check_secret(&secret.namespace, &secret.name)?;
        let old = inner.secret_versions(&secret.namespace, &secret.name).await?;
        if old.is_empty() {
            return Err(Error::NotFound { kind: "secret", name: secret.name.clone() });
        }
        inner.create_secret_version(&secret).await?;
        let users: Vec<Arc<SwarmFunction>> = lock(&inner.functions)
            .values()
            .filter(|f| {
                f.fref.namespace == secret.namespace
                    && f.deployed().spec.secrets.contains(&secret.name)
            })
            .cloned()
            .collect();
        for f in users {
            self.update(f.deployed().spec.clone()).await?;
        }
        for (id, _) in old {
            if let Err(e) = inner.docker.delete_secret(&id).await {
                tracing::warn!(secret = %secret.name, error = %e, "removing an old version");
            }
        }
        Ok(())
    }

    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()> {
        let inner = &self.inner;
        inner.check_secret(namespace, name)?;
        let versions = inner.secret_versions(namespace, name).await?;
        if versions.is_empty() {
            return Err(Error::NotFound { kind: "secret", name: name.to_string() });
        }
        for (id, _) in versions {
            match inner.docker.delete_secret(&id).await {
                Ok(()) => {}
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) if status_of(&e) == Some(400) => {
                    return Err(Error::invalid("name", format!("secret {name:?}: {e}")))
                }
                Err(e) => return Err(map_err("secret remove", e)),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Logs for SwarmInvoker {
    async fn logs(&self, request: LogsRequest) -> Result<LogStream> {
        let inner = &self.inner;
        let fref = request
            .function
            .clone()
            .ok_or_else(|| Error::invalid("name", "logs need a function name"))?;
        let f = inner.function(&fref)?;
        let opts =
            ListTasksOptions { filters: Some(filters(&[("service", f.service_id.clone())])) };
        let tasks =
            inner.docker.list_tasks(Some(opts)).await.map_err(|e| map_err("task list", e))?;
        let mut streams = Vec::new();
        for t in tasks {
            let Some(id) = t.id.clone() else { continue };
            let slot =
                t.slot.map(|s| s.to_string()).unwrap_or_else(|| t.node_id.unwrap_or_default());
            let instance = format!("{}.{slot}.{id}", f.service_name);
            if request.instance.as_deref().is_some_and(|i| i != instance && !id.starts_with(i)) {
                continue;
            }
            let opts = LogsOptions {
                follow: request.follow,
                stdout: true,
                stderr: true,
                timestamps: true,
                since: request
                    .since
                    .and_then(|s| s.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs().min(i32::MAX as u64) as i32)
                    .unwrap_or(0),
                tail: request.tail.map(|t| t.to_string()).unwrap_or_else(|| "all".to_string()),
                ..Default::default()
            };
            let (name, ns) = (fref.name.clone(), fref.namespace.clone());
            let s = inner.docker.task_logs(&id, Some(opts)).flat_map(move |chunk| {
                let entries = match chunk {
                    Ok(c) => crate::logs::entries(&name, &ns, &instance, &c.into_bytes()),
                    // A task whose container is gone has no logs left: skip it.
                    Err(_) => Vec::new(),
                };
                futures::stream::iter(entries)
            });
            streams.push(s.boxed());
        }
        // Every entry passes the `since` filter exactly (the engine's is in whole seconds).
        let keep = LogsRequest { instance: None, ..request.clone() };
        if request.follow {
            let merged = futures::stream::select_all(streams)
                .filter(move |e| futures::future::ready(keep.wants(e)))
                .map(Ok);
            return Ok(merged.boxed());
        }
        let mut all: Vec<LogEntry> = futures::stream::select_all(streams).collect().await;
        all.sort_by_key(|e| e.timestamp);
        Ok(keep.stream(keep.select(all.iter()), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> String {
        swarm_constraint(&Constraint::parse(s).unwrap())
    }

    #[test]
    fn constraints_map_to_the_engine_s_keys_and_spellings() {
        assert_eq!(c("node.labels.type == rpi"), "node.labels.type == rpi");
        assert_eq!(c("type=rpi"), "node.labels.type == rpi");
        assert_eq!(c("node.labels.type != rpi"), "node.labels.type != rpi");
        assert_eq!(c("arch=arm64"), "node.platform.arch == aarch64");
        assert_eq!(c("kubernetes.io/arch=amd64"), "node.platform.arch == x86_64");
        assert_eq!(c("node.platform.arch == x86_64"), "node.platform.arch == x86_64");
        assert_eq!(c("node.platform.os == linux"), "node.platform.os == linux");
        assert_eq!(c("kubernetes.io/hostname=pi-1"), "node.hostname == pi-1");
        assert_eq!(c("node.role == manager"), "node.role == manager");
    }

    #[test]
    fn platforms_map_to_the_engine_s_spelling() {
        let p = swarm_platform("linux/arm64");
        assert_eq!((p.os.as_deref(), p.architecture.as_deref()), (Some("linux"), Some("aarch64")));
        let p = swarm_platform("arm/v7");
        assert_eq!((p.os.as_deref(), p.architecture.as_deref()), (Some("linux"), Some("armv7l")));
    }
}

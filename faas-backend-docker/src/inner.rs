//! The backend's engine room: containers, readiness, pools, reconciliation, adoption.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::{
    ContainerCreateBody, ContainerSummary, HostConfig, Mount, MountType, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, RenameContainerOptions,
};
use bollard::Docker;
use faas_core::instance::{CallTimeout, InstanceClient, InstanceDrain, Target};
use faas_core::scheduler::Schedulers;
use faas_core::util::lock;
use faas_core::{
    DeveloperErrorKind, Error, FunctionRef, FunctionSpec, Invocation, InvocationId, ReplicaLimits,
    Result, Scheduler, StartKind,
};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::{self, label, map_err, status_of};
use crate::logs::LogRetention;
use crate::state::{FunctionState, Pool, Pooled, Replica, RunState, SpecInfo, Template};

/// The port the watchdog listens on inside every function container.
pub(crate) const WATCHDOG_PORT: &str = "8080/tcp";
/// Where secrets appear inside containers.
pub(crate) const SECRETS_MOUNT: &str = "/var/openfaas/secrets";
/// The per-invocation timeout when the spec sets none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub pause_after: Option<Duration>,
    pub start_timeout: Duration,
    pub health_interval: Duration,
    pub secrets_dir: PathBuf,
    pub namespaces: Option<BTreeSet<String>>,
    pub owner: String,
    /// How much of its removed replicas' logs each function keeps.
    pub log_retention: LogRetention,
    /// Caps on replicas per function and on the Docker host.
    pub limits: ReplicaLimits,
    /// How many containers one reconcile or update starts at once.
    pub start_concurrency: usize,
    /// The value of [`label::INSTANCE`] on this backend's containers.
    pub instance: String,
    /// The engine host's CPUs, if it said (a CPU limit over them is refused).
    pub host_cpus: Option<u64>,
    /// The waits between attempts to start a function whose starts keep failing.
    pub start_backoff: faas_core::util::Backoff,
}

/// The smallest memory limit the Docker engine accepts (its error: "Minimum memory limit
/// allowed is 6MB").
pub(crate) const MIN_MEMORY_BYTES: u64 = 6 << 20;
/// The smallest CPU limit the Docker engine accepts (0.01 CPU), in nano CPUs.
pub(crate) const MIN_NANO_CPUS: u64 = 10_000_000;

pub(crate) struct Inner {
    pub docker: Docker,
    /// The builder's scheduler as the default, and the strategies functions choose with the
    /// label `com.faas-rs.scheduler`.
    pub schedulers: Schedulers,
    pub settings: Settings,
    /// Forwards invocations and probes health.
    pub client: InstanceClient,
    pub functions: Mutex<HashMap<FunctionRef, Arc<FunctionState>>>,
    pub pools: Mutex<HashMap<Template, Pool>>,
    pub closed: AtomicBool,
    /// Whether the last engine call of the maintenance loop failed (to log transitions once).
    pub engine_down: AtomicBool,
    /// One permit per replica, [`ReplicaLimits::per_node`] in all; each replica holds its
    /// own ([`Replica::hold_slot`]).
    pub node_slots: Arc<Semaphore>,
    /// The image pulls of deploys and updates under way, per function.
    pub pulls: Mutex<HashMap<FunctionRef, (faas_core::FunctionSpec, crate::pull::SharedTracker)>>,
}

fn random_suffix() -> String {
    InvocationId::new().as_str()[..10].to_string()
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `faas-rs-def.<instance>.<namespace>.<name>`: the definition container of a function
/// (the instance in it, so that gateways sharing an engine can each have a function of
/// that name).
pub(crate) fn definition_name(instance: &str, f: &FunctionRef) -> String {
    format!("faas-rs-def.{instance}.{}.{}", f.namespace, f.name)
}

/// `faas-rs.<namespace>.<name>.<suffix>`: a replica.
pub(crate) fn replica_name(f: &FunctionRef, suffix: &str) -> String {
    format!("faas-rs.{}.{}.{}", f.namespace, f.name, suffix)
}

/// Parses a container name (with or without its leading `/`) into (namespace, name,
/// suffix).
pub(crate) fn parse_name(name: &str) -> Option<(String, String, Option<String>)> {
    let n = name.strip_prefix('/').unwrap_or(name);
    let rest = n.strip_prefix("faas-rs.")?;
    let mut parts = rest.split('.');
    let ns = parts.next()?.to_string();
    let fname = parts.next()?.to_string();
    let suffix = parts.next().map(str::to_string);
    if parts.next().is_some() || ns.is_empty() || fname.is_empty() {
        return None;
    }
    Some((ns, fname, suffix))
}

/// Whether `spec` runs in the watchdog's `lambda` mode.
fn is_lambda(spec: &FunctionSpec) -> bool {
    spec.env_vars.get("mode").is_some_and(|m| m.trim().eq_ignore_ascii_case("lambda"))
}

/// Whether the watchdog enforces `spec`'s timeout itself (an OpenWhisk action, a Lambda
/// function): the backend's own timer is then a backstop, a little later.
pub(crate) fn watchdog_times_out(spec: &FunctionSpec) -> bool {
    faas_core::runtimes::is_action(spec) || is_lambda(spec)
}

impl Inner {
    pub fn in_scope(&self, ns: &str) -> bool {
        self.settings.namespaces.as_ref().is_none_or(|s| s.contains(ns))
    }

    pub fn check_namespace(&self, ns: &str) -> Result<()> {
        if self.in_scope(ns) {
            Ok(())
        } else {
            Err(Error::NotFound { kind: "namespace", name: ns.to_string() })
        }
    }

    /// A list filter for this backend's containers: managed, with its instance id.
    pub fn own_containers(&self) -> HashMap<String, Vec<String>> {
        engine::label_filter(&[
            format!("{}=true", label::MANAGED),
            format!("{}={}", label::INSTANCE, self.settings.instance),
        ])
    }

    /// Every container of this backend, stopped ones included.
    async fn list_own(&self) -> std::result::Result<Vec<ContainerSummary>, bollard::errors::Error> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(self.own_containers()),
            ..Default::default()
        };
        self.docker.list_containers(Some(opts)).await
    }

    /// Refuses, naming the field, a container configuration the engine would refuse: a
    /// memory limit under its minimum, a CPU limit under 0.01 or over the host's CPUs.
    pub fn check_engine_limits(&self, tpl: &Template) -> Result<()> {
        if let Some(m) = tpl.memory.filter(|m| *m < MIN_MEMORY_BYTES) {
            return Err(Error::invalid(
                "limits.memory",
                format!(
                    "{m} bytes is under the Docker engine's minimum memory limit of 6 MiB \
                     ({MIN_MEMORY_BYTES} bytes)"
                ),
            ));
        }
        if let Some(c) = tpl.nano_cpus.filter(|c| *c > 0) {
            let cpus = c as f64 / 1e9;
            if c < MIN_NANO_CPUS {
                return Err(Error::invalid(
                    "limits.cpu",
                    format!("{cpus} CPU is under the Docker engine's minimum of 0.01"),
                ));
            }
            if let Some(host) =
                self.settings.host_cpus.filter(|h| c > h.saturating_mul(1_000_000_000))
            {
                return Err(Error::invalid(
                    "limits.cpu",
                    format!("{cpus} CPUs is over the {host} CPUs of the Docker host"),
                ));
            }
        }
        Ok(())
    }

    pub fn function(&self, f: &FunctionRef) -> Result<Arc<FunctionState>> {
        lock(&self.functions)
            .get(f)
            .cloned()
            .ok_or_else(|| Error::function_not_found(f.to_string()))
    }

    pub fn secret_path(&self, ns: &str, name: &str) -> PathBuf {
        self.settings.secrets_dir.join(ns).join(name)
    }

    /// The scheduler a spec selects with the label `com.faas-rs.scheduler` (else the
    /// backend's); a bad value is an `InvalidSpec` naming the label.
    pub fn scheduler_for(&self, spec: &FunctionSpec) -> Result<Arc<dyn Scheduler>> {
        self.schedulers.for_spec(spec)
    }

    /// Derives the container template and hash of a validated spec routed by `scheduler`.
    pub fn spec_info(&self, spec: FunctionSpec, scheduler: Arc<dyn Scheduler>) -> Result<SpecInfo> {
        // An OpenWhisk action without an image runs its kind's (`faas_core::runtimes`).
        let spec = faas_core::runtimes::apply_image(spec)?;
        let ns = spec.namespace_or_default().to_string();
        let mut binds = Vec::new();
        for (i, s) in spec.secrets.iter().enumerate() {
            let p = self.secret_path(&ns, s);
            if !p.is_file() {
                return Err(Error::invalid(
                    format!("secrets[{i}]"),
                    format!("secret {s:?} does not exist in namespace {ns:?}"),
                ));
            }
            binds.push(format!("{}:{SECRETS_MOUNT}/{s}", p.display()));
        }
        let limits = spec.limits.clone().unwrap_or_default();
        let mut env = spec.env_vars.clone();
        // A Lambda function's runtime reads its name from the environment (the watchdog's
        // `lambda` mode would otherwise call it `function`); a container started for it runs
        // this function only, so the name is part of its configuration.
        if is_lambda(&spec) {
            env.entry("AWS_LAMBDA_FUNCTION_NAME".into()).or_insert_with(|| spec.name.clone());
            // As many execution environments as invocations the container may take at once.
            if let Some(n) = spec.max_concurrency {
                let n = (n as usize).clamp(1, faas_watchdog::lambda::MAX_ENVIRONMENTS);
                env.entry("lambda_concurrency".into()).or_insert_with(|| n.to_string());
            }
        }
        if let Some(t) = spec.timeout {
            // One timeout for every layer: ours fires at `t`; the watchdog's a little later
            // (it would otherwise cut at its default of 10 s), unless the spec sets its own.
            let w = faas_core::util::format_duration(t + Duration::from_secs(1));
            for key in ["exec_timeout", "write_timeout", "read_timeout"] {
                env.entry(key.to_string()).or_insert_with(|| w.clone());
            }
            // An OpenWhisk action's or a Lambda function's time limit is the watchdog's
            // exec_timeout, exactly (it answers with its own message, and stops the runtime
            // so that the next invocation gets a fresh one); the backend's own timer waits a
            // little longer for it.
            if watchdog_times_out(&spec) && !spec.env_vars.contains_key("exec_timeout") {
                env.insert("exec_timeout".into(), faas_core::util::format_duration(t));
            }
        }
        let template = Template {
            image: spec.image.clone(),
            env_process: spec.env_process.clone(),
            env,
            binds,
            memory: limits.memory_bytes(),
            nano_cpus: limits.cpu_millis().map(|m| m.saturating_mul(1_000_000)),
            read_only: spec.read_only_root_filesystem,
        };
        let json = serde_json::to_vec(&spec)
            .map_err(|e| Error::internal(format!("serialising the spec: {e}")))?;
        let hash = engine::fnv_hex(&[&json]);
        let min_replicas = spec.scaling_policy()?.min;
        Ok(SpecInfo { spec, hash, template, min_replicas, scheduler })
    }

    /// Pulls the image of `spec` when the engine lacks it; `InvalidSpec(image)` with the
    /// registry's error when the pull fails. While it pulls, the function's status reports
    /// the pull ([`Inner::pulling`]).
    pub async fn check_image(&self, spec: &faas_core::FunctionSpec) -> Result<()> {
        let fref = spec.function_ref();
        let tracker: crate::pull::SharedTracker =
            Arc::new(Mutex::new(crate::pull::PullTracker::new(&spec.image)));
        lock(&self.pulls).insert(fref.clone(), (spec.clone(), tracker.clone()));
        // Forgotten however the deploy ends (a caller gone mid-pull drops this future).
        struct Forget<'a>(&'a Inner, FunctionRef);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                lock(&self.0.pulls).remove(&self.1);
            }
        }
        let _forget = Forget(self, fref);
        crate::pull::ensure_image(&self.docker, &spec.image, &tracker).await.map(|_| ())
    }

    /// The pull under way for a deploy or update of `fref`: the spec being deployed and
    /// how far the pull has got.
    pub fn pulling(
        &self,
        fref: &FunctionRef,
    ) -> Option<(faas_core::FunctionSpec, faas_core::PullProgress)> {
        let pulls = lock(&self.pulls);
        let (spec, tracker) = pulls.get(fref)?;
        let progress = tracker.lock().unwrap_or_else(|p| p.into_inner()).progress();
        Some((spec.clone(), progress))
    }

    fn container_body(
        &self,
        tpl: &Template,
        labels: HashMap<String, String>,
        publish: bool,
    ) -> ContainerCreateBody {
        let mounts: Vec<Mount> = tpl
            .binds
            .iter()
            .filter_map(|b| b.split_once(':'))
            .map(|(src, dst)| Mount {
                target: Some(dst.to_string()),
                source: Some(src.to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            })
            .collect();
        let mut ports = HashMap::new();
        if publish {
            ports.insert(
                WATCHDOG_PORT.to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".to_string()),
                    host_port: Some(String::new()),
                }]),
            );
        }
        let env = tpl.env_list();
        ContainerCreateBody {
            image: Some(tpl.image.clone()),
            env: if env.is_empty() { None } else { Some(env) },
            labels: Some(labels),
            exposed_ports: if publish { Some(vec![WATCHDOG_PORT.to_string()]) } else { None },
            host_config: Some(HostConfig {
                port_bindings: if publish { Some(ports) } else { None },
                mounts: if mounts.is_empty() { None } else { Some(mounts) },
                memory: tpl.memory.map(|m| m as i64),
                nano_cpus: tpl.nano_cpus.map(|c| c as i64),
                readonly_rootfs: Some(tpl.read_only),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn base_labels(&self, role: &str) -> HashMap<String, String> {
        let mut l = HashMap::new();
        l.insert(label::MANAGED.to_string(), "true".to_string());
        l.insert(label::INSTANCE.to_string(), self.settings.instance.clone());
        l.insert(label::ROLE.to_string(), role.to_string());
        l
    }

    fn function_labels(&self, info: &SpecInfo, role: &str) -> HashMap<String, String> {
        let mut l: HashMap<String, String> =
            info.spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        l.extend(self.base_labels(role));
        l.insert(label::FUNCTION.to_string(), info.spec.name.clone());
        l.insert(label::NAMESPACE.to_string(), info.spec.namespace_or_default().to_string());
        l.insert(label::SPEC_HASH.to_string(), info.hash.clone());
        l.insert(label::OPENFAAS_FUNCTION.to_string(), info.spec.name.clone());
        l
    }

    /// Force-removes a container (and its anonymous volumes); a missing one is fine.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let opts = RemoveContainerOptions { force: true, v: true, link: false };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(404)) => Ok(()),
            // 409: removal already in progress (a drain or a replacement racing with us):
            // wait until it is really gone, so "removed" means removed.
            Err(e) if matches!(status_of(&e), Some(409)) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    match self.docker.inspect_container(id, None::<InspectContainerOptions>).await {
                        Err(e) if status_of(&e) == Some(404) => return Ok(()),
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                Err(Error::unavailable(format!("container {id} was still being removed after 30s")))
            }
            Err(e) => Err(map_err("container remove", e)),
        }
    }

    /// Creates the definition container that records a function's spec in its labels (never
    /// started), so a restarted backend finds functions even at zero replicas.
    pub async fn create_definition(&self, info: &SpecInfo, created: SystemTime) -> Result<String> {
        let fref = info.spec.function_ref();
        let mut labels = self.function_labels(info, engine::ROLE_DEFINITION);
        labels.remove(label::OPENFAAS_FUNCTION);
        let json = serde_json::to_string(&info.spec)
            .map_err(|e| Error::internal(format!("serialising the spec: {e}")))?;
        labels.insert(label::SPEC.to_string(), json);
        labels.insert(label::CREATED.to_string(), epoch_ms(created).to_string());
        let body = ContainerCreateBody {
            image: Some(info.spec.image.clone()),
            labels: Some(labels),
            network_disabled: Some(true),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(definition_name(&self.settings.instance, &fref)),
            platform: String::new(),
        };
        match self.docker.create_container(Some(opts), body).await {
            Ok(r) => Ok(r.id),
            Err(e) if status_of(&e) == Some(409) => {
                Err(Error::AlreadyExists { kind: "function", name: fref.to_string() })
            }
            Err(e) if status_of(&e) == Some(404) => Err(Error::invalid(
                "image",
                format!("image {:?} is not present in the docker engine", info.spec.image),
            )),
            Err(e) => Err(map_err("container create", e)),
        }
    }

    /// Creates and starts a container from `tpl`, waits until its watchdog answers its health
    /// endpoint, and returns (id, port, time taken). Removes the container on failure.
    pub async fn create_instance(
        &self,
        tpl: &Template,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(String, u16, Duration)> {
        let t0 = Instant::now();
        let deadline = t0 + self.settings.start_timeout;
        let body = self.container_body(tpl, labels, true);
        let opts = CreateContainerOptions { name: Some(name.to_string()), platform: String::new() };
        let id = match self.docker.create_container(Some(opts), body).await {
            Ok(r) => r.id,
            Err(e) if status_of(&e) == Some(404) => {
                return Err(Error::invalid(
                    "image",
                    format!("image {:?} is not present in the docker engine", tpl.image),
                ))
            }
            Err(e) if status_of(&e) == Some(400) => {
                return Err(Error::invalid("spec", format!("docker rejected the container: {e}")))
            }
            Err(e) => return Err(map_err("container create", e)),
        };
        match self.start_and_wait(&id, name, deadline).await {
            Ok(port) => Ok((id, port, t0.elapsed())),
            Err(e) => {
                let _ = self.remove_container(&id).await;
                Err(e)
            }
        }
    }

    async fn start_and_wait(&self, id: &str, name: &str, deadline: Instant) -> Result<u16> {
        if let Err(e) = self.docker.start_container(id, None).await {
            return Err(if engine::is_unreachable(&e) {
                map_err("container start", e)
            } else {
                Error::developer(
                    DeveloperErrorKind::Init,
                    format!("instance {name} failed to start: {e}"),
                )
            });
        }
        let port = self.published_port(id).await?;
        self.wait_ready(id, name, port, deadline).await?;
        Ok(port)
    }

    async fn published_port(&self, id: &str) -> Result<u16> {
        let info = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| map_err("container inspect", e))?;
        info.network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(WATCHDOG_PORT).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port?.parse::<u16>().ok()))
            .ok_or_else(|| Error::internal(format!("container {id} has no published port")))
    }

    /// Whether the watchdog at `port` answers `GET /_/health` with 200.
    pub async fn probe(&self, port: u16) -> bool {
        self.client.healthy(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2)).await
    }

    /// Polls the health endpoint until 200 (a TCP connect to the published port proves
    /// nothing: the proxy accepts before the process listens). Checks now and then that the
    /// container still runs, so a crashing function fails fast with its last log lines.
    async fn wait_ready(&self, id: &str, name: &str, port: u16, deadline: Instant) -> Result<()> {
        // When the container was last inspected (a Mutex: the future must be Send).
        let last_check = std::sync::Mutex::new(Instant::now());
        let ready = faas_core::invoker::poll_with_backoff(
            deadline.saturating_duration_since(Instant::now()),
            || async {
                if self.probe(port).await {
                    return Ok(true);
                }
                {
                    let mut last = faas_core::util::lock(&last_check);
                    if last.elapsed() < Duration::from_millis(300) {
                        return Ok(false);
                    }
                    *last = Instant::now();
                }
                let st = self
                    .docker
                    .inspect_container(id, None::<InspectContainerOptions>)
                    .await
                    .map_err(|e| map_err("container inspect", e))?
                    .state;
                if st.as_ref().and_then(|s| s.running).unwrap_or(false) {
                    return Ok(false);
                }
                let code = st.and_then(|s| s.exit_code).unwrap_or(-1);
                let tail = self.log_tail(id, 20).await;
                Err(Error::developer(
                    DeveloperErrorKind::Init,
                    format!(
                        "instance {name} exited with code {code} before becoming ready: {tail}"
                    ),
                ))
            },
        )
        .await?;
        if ready {
            return Ok(());
        }
        let tail = self.log_tail(id, 20).await;
        Err(Error::developer(
            DeveloperErrorKind::Init,
            format!(
                "instance {name} did not answer its health check within {}: {tail}",
                faas_core::util::format_duration(self.settings.start_timeout)
            ),
        ))
    }

    async fn log_tail(&self, id: &str, n: usize) -> String {
        let opts =
            LogsOptions { stdout: true, stderr: true, tail: n.to_string(), ..Default::default() };
        let mut out = String::new();
        let mut s = self.docker.logs(id, Some(opts));
        while let Some(Ok(chunk)) = s.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        out.trim().to_string()
    }

    /// Takes a prewarmed container matching the function's template, if one is ready.
    pub fn take_prewarm(
        self: &Arc<Self>,
        f: &FunctionState,
        info: &SpecInfo,
    ) -> Option<Arc<Replica>> {
        let t0 = Instant::now();
        let pooled = {
            let mut pools = lock(&self.pools);
            pools.get_mut(&info.template)?.ready.pop()?
        };
        let r = self.taken(f, info, pooled, t0.elapsed());
        self.refill_pool(info.template.clone());
        Some(r)
    }

    /// The replica a container taken from a pool became, started `init_time` ago. Its
    /// container is renamed after it, which records its new owner for adoption after a
    /// restart: in the background, off the start path.
    fn taken(
        self: &Arc<Self>,
        f: &FunctionState,
        info: &SpecInfo,
        pooled: Pooled,
        init_time: Duration,
    ) -> Arc<Replica> {
        let name = replica_name(&f.fref, &pooled.suffix);
        let r = Arc::new(Replica::new(
            pooled.id.clone(),
            name.clone(),
            pooled.port,
            StartKind::Prewarmed,
            init_time,
            info.hash.clone(),
            false,
        ));
        let (inner, id) = (Arc::clone(self), pooled.id);
        tokio::spawn(async move {
            if let Err(e) =
                inner.docker.rename_container(&id, RenameContainerOptions { name }).await
            {
                tracing::warn!(container = %id, error = %e, "renaming a taken prewarm container failed");
            }
        });
        r
    }

    /// Takes a stem cell for an OpenWhisk action ([`SpecInfo::stem_template`]), if one is
    /// ready, and specialises it (`/init` with the action). The pool is refilled in the
    /// background. A stem cell that cannot be specialised is removed, and `None` lets the
    /// caller start a container cold.
    async fn take_stem(
        self: &Arc<Self>,
        f: &FunctionState,
        info: &SpecInfo,
    ) -> Option<Arc<Replica>> {
        let tpl = info.stem_template()?;
        let t0 = Instant::now();
        let pooled = lock(&self.pools).get_mut(&tpl)?.ready.pop()?;
        self.refill_pool(tpl);
        let name = replica_name(&f.fref, &pooled.suffix);
        if let Err(e) = self.specialise(&f.fref, &name, pooled.port, &info.spec).await {
            tracing::warn!(function = %f.fref, container = %pooled.id, error = %e, "specialising a stem cell failed; starting cold");
            if let Err(e) = self.remove_container(&pooled.id).await {
                tracing::warn!(container = %pooled.id, error = %e, "removing container failed");
            }
            return None;
        }
        Some(self.taken(f, info, pooled, t0.elapsed()))
    }

    /// Makes the stem cell at `port` an instance of the action `spec`
    /// ([`faas_watchdog::openwhisk::SPECIALISE_PATH`]). An init failure of the action's own
    /// is no failure here: the instance answers every activation with it, as OpenWhisk's do.
    async fn specialise(
        &self,
        fref: &FunctionRef,
        name: &str,
        port: u16,
        spec: &FunctionSpec,
    ) -> Result<()> {
        let s = faas_watchdog::openwhisk::specialisation(spec, &[])?;
        let body = serde_json::to_vec(&s)
            .map_err(|e| Error::internal(format!("serialising the specialisation: {e}")))?;
        let mut req = http::Request::new(faas_core::Body::from(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = http::Uri::from_static(faas_watchdog::openwhisk::SPECIALISE_PATH);
        req.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        let base = format!("http://127.0.0.1:{port}");
        let target = Target {
            base: &base,
            function: fref,
            instance: name,
            timeout: Some(CallTimeout {
                name: "init",
                after: spec.timeout.unwrap_or(DEFAULT_TIMEOUT),
                grace: Duration::from_secs(5),
            }),
        };
        match self.client.forward(Invocation::new(fref.clone(), req), &target, ()).await {
            Ok(resp) if resp.status() == http::StatusCode::OK => Ok(()),
            Ok(resp) => Err(Error::internal(format!(
                "the stem cell {name} answered its specialisation with {}",
                resp.status()
            ))),
            Err(e) => match e.into_error(false) {
                Error::Developer {
                    kind: DeveloperErrorKind::Init | DeveloperErrorKind::Timeout,
                    ..
                } => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Starts prewarm containers until the pool of `tpl` reaches its target.
    pub fn refill_pool(self: &Arc<Self>, tpl: Template) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let need = {
            let mut pools = lock(&self.pools);
            let Some(pool) = pools.get_mut(&tpl) else { return };
            let need = pool.target.saturating_sub(pool.ready.len() + pool.starting);
            pool.starting += need;
            need
        };
        for _ in 0..need {
            let inner = Arc::clone(self);
            let tpl = tpl.clone();
            tokio::spawn(async move {
                let suffix = random_suffix();
                let name = format!("faas-rs-prewarm.{}.{suffix}", inner.settings.owner);
                let mut labels = inner.base_labels(engine::ROLE_PREWARM);
                labels.insert(label::OWNER.to_string(), inner.settings.owner.clone());
                labels.insert(label::SPEC_HASH.to_string(), tpl.hash());
                let res = inner.create_instance(&tpl, &name, labels).await;
                let id = match res {
                    Ok((id, port, _)) => {
                        let mut pools = lock(&inner.pools);
                        match pools.get_mut(&tpl) {
                            Some(pool) if !inner.closed.load(Ordering::SeqCst) => {
                                pool.starting = pool.starting.saturating_sub(1);
                                pool.ready.push(Pooled { id, port, suffix });
                                return;
                            }
                            _ => id,
                        }
                    }
                    Err(e) => {
                        if !inner.closed.load(Ordering::SeqCst) {
                            tracing::warn!(image = %tpl.image, error = %e, "prewarm failed");
                        }
                        inner.refill_done(&tpl);
                        return;
                    }
                };
                // Shut down meanwhile: the container is removed before this refill stops
                // counting as starting, so `shutdown` waits for the removal too.
                if let Err(e) = inner.remove_container(&id).await {
                    tracing::warn!(container = %id, error = %e, "removing container failed");
                }
                inner.refill_done(&tpl);
            });
        }
    }

    /// One pool refill of `tpl` ended without adding a container.
    fn refill_done(&self, tpl: &Template) {
        if let Some(pool) = lock(&self.pools).get_mut(tpl) {
            pool.starting = pool.starting.saturating_sub(1);
        }
    }

    /// Creates one replica: from the prewarm pool when possible, else (an OpenWhisk action)
    /// from a stem cell of its kind, else a new container.
    pub async fn start_replica(
        self: &Arc<Self>,
        f: &FunctionState,
        info: &SpecInfo,
    ) -> Result<Arc<Replica>> {
        if let Some(r) = self.take_prewarm(f, info) {
            return Ok(r);
        }
        if let Some(r) = self.take_stem(f, info).await {
            return Ok(r);
        }
        let suffix = random_suffix();
        let name = replica_name(&f.fref, &suffix);
        let labels = self.function_labels(info, engine::ROLE_REPLICA);
        let (id, port, init) = self.create_instance(&info.template, &name, labels).await?;
        Ok(Arc::new(Replica::new(id, name, port, StartKind::Cold, init, info.hash.clone(), false)))
    }

    /// Up to `n` places under the node's replica cap (fewer when the node is near it).
    pub fn node_slots(&self, n: usize) -> Vec<OwnedSemaphorePermit> {
        (0..n).map_while(|_| self.node_slots.clone().try_acquire_owned().ok()).collect()
    }

    /// Starts one replica per slot, `start_concurrency` at a time; each started replica
    /// holds its slot.
    pub async fn start_replicas(
        self: &Arc<Self>,
        f: &FunctionState,
        info: &SpecInfo,
        slots: Vec<OwnedSemaphorePermit>,
    ) -> Vec<Result<Arc<Replica>>> {
        futures::stream::iter(slots)
            .map(|slot| async move {
                let r = self.start_replica(f, info).await?;
                r.hold_slot(slot);
                Ok(r)
            })
            .buffer_unordered(self.settings.start_concurrency.max(1))
            .collect()
            .await
    }

    pub fn spawn_reconcile(self: &Arc<Self>, f: Arc<FunctionState>) {
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = inner.reconcile(&f).await {
                tracing::warn!(function = %f.fref, error = %e, "reconcile failed");
            }
        });
    }

    /// Brings the number of live replicas to the desired count.
    pub async fn reconcile(self: &Arc<Self>, f: &Arc<FunctionState>) -> Result<()> {
        let _g = f.reconcile_lock.lock().await;
        if f.removed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let desired = f.desired.load(Ordering::SeqCst) as usize;
        let live = f.live();
        if live.len() < desired {
            // As many as the node cap leaves room for; the maintenance loop starts the rest
            // as slots free up.
            let slots = self.node_slots(desired - live.len());
            let n = slots.len();
            if n < desired - live.len() {
                // Debug: the maintenance loop retries every health interval.
                tracing::debug!(
                    function = %f.fref,
                    cap = self.settings.limits.per_node(),
                    "the node is at its replica cap; waiting for free slots"
                );
            }
            let info = f.spec();
            f.starting.fetch_add(n as u32, Ordering::SeqCst);
            let results = self.start_replicas(f, &info, slots).await;
            f.starting.fetch_sub(n as u32, Ordering::SeqCst);
            let mut first_err = None;
            for r in results {
                match r {
                    Ok(r) => {
                        if !f.push(Arc::clone(&r)) {
                            let _ = self.remove_container(&r.id).await;
                        }
                    }
                    Err(e) => {
                        f.record_start_error(&e);
                        first_err.get_or_insert(e);
                    }
                }
            }
            match &first_err {
                // An unreachable engine is not the function's failure: the maintenance
                // loop notices the engine and retries as it comes back.
                Some(Error::Unavailable { .. }) => {}
                Some(e) => {
                    let failed = f.fail_start(e.clone(), &self.settings.start_backoff);
                    tracing::warn!(
                        function = %f.fref,
                        error = %e,
                        attempts = failed.attempts,
                        retry_in = %faas_core::util::format_duration(failed.retry_in),
                        "starting a replica failed"
                    );
                }
                None if n > 0 => f.clear_failure(),
                None => {}
            }
            f.changed.notify_waiters();
            if let Some(e) = first_err {
                return Err(e);
            }
        } else if live.len() > desired {
            // The instance set's choice: idle ones first, the newest of them.
            let victims: Vec<_> = (0..live.len() - desired)
                .map_while(|_| {
                    let (_, v) = f.instances.victim()?;
                    let drain = f.retire(&v);
                    Some((v, drain))
                })
                .collect();
            self.spawn_drain(Arc::clone(f), victims);
        }
        Ok(())
    }

    /// Waits (in the background) for retired replicas' in-flight invocations and streaming
    /// answers to finish ([`FunctionState::retire`]), then removes them.
    pub fn spawn_drain(
        self: &Arc<Self>,
        f: Arc<FunctionState>,
        victims: Vec<(Arc<Replica>, Option<InstanceDrain>)>,
    ) {
        let inner = Arc::clone(self);
        let bound = f.spec().spec.timeout.unwrap_or(DEFAULT_TIMEOUT) + Duration::from_secs(5);
        tokio::spawn(async move {
            futures::future::join_all(victims.into_iter().map(|(v, drain)| {
                let inner = Arc::clone(&inner);
                let f = Arc::clone(&f);
                async move {
                    let t0 = Instant::now();
                    if let Some(d) = drain {
                        let _ = tokio::time::timeout(bound, d.wait()).await;
                    }
                    // Answers still streaming from it.
                    let left = bound.saturating_sub(t0.elapsed());
                    let _ =
                        faas_core::invoker::wait_notified(&v.went_idle, left, || Ok(v.idle()))
                            .await;
                    f.kill(&v);
                    if let Err(e) = inner.retire_container(&f, &v.id, &v.name).await {
                        tracing::warn!(container = %v.name, error = %e, "removing a drained replica failed");
                    }
                    f.forget(&v);
                }
            }))
            .await;
        });
    }

    /// A replica whose container is gone or stopped: forget it, remove what is left (keeping
    /// its log lines, which tell why it died), and start a replacement.
    pub fn replica_died(self: &Arc<Self>, f: &Arc<FunctionState>, r: &Arc<Replica>) {
        if !f.kill(r) {
            return;
        }
        tracing::warn!(function = %f.fref, instance = %r.name, "replica died; replacing it");
        // Its lines are retained before it leaves the replica list, so `logs` always finds
        // them in one place or the other.
        let (inner, fs, r2) = (Arc::clone(self), Arc::clone(f), Arc::clone(r));
        tokio::spawn(async move {
            if let Err(e) = inner.retire_container(&fs, &r2.id, &r2.name).await {
                tracing::warn!(container = %r2.id, error = %e, "removing container failed");
            }
            fs.forget(&r2);
        });
        if !f.removed.load(Ordering::SeqCst) {
            self.spawn_reconcile(Arc::clone(f));
        }
    }

    /// Inspects a replica after a failed request: dead (and replaced) or still running.
    pub async fn check_replica(self: &Arc<Self>, f: &Arc<FunctionState>, r: &Arc<Replica>) -> bool {
        let running =
            match self.docker.inspect_container(&r.id, None::<InspectContainerOptions>).await {
                Ok(i) => i.state.and_then(|s| s.running).unwrap_or(false),
                Err(e) if status_of(&e) == Some(404) => false,
                Err(_) => return false,
            };
        if !running {
            self.replica_died(f, r);
        }
        !running
    }

    /// Unpauses a paused replica; true if it was paused. Must run after the invocation was
    /// counted as using the replica (the pauser checks the count under the same lock).
    pub async fn ensure_running(&self, r: &Replica) -> Result<bool> {
        let mut st = r.state.lock().await;
        if *st == RunState::Paused {
            self.docker
                .unpause_container(&r.id)
                .await
                .map_err(|e| map_err("container unpause", e))?;
            *st = RunState::Running;
            r.paused.store(false, Ordering::SeqCst);
            return Ok(true);
        }
        Ok(false)
    }

    /// Pauses a replica idle for longer than the grace period.
    async fn maybe_pause(&self, r: &Replica, grace: Duration) {
        let Ok(mut st) = r.state.try_lock() else { return };
        if *st != RunState::Running || !r.live() || !r.idle() || r.idle_for() < grace {
            return;
        }
        match self.docker.pause_container(&r.id).await {
            Ok(()) => {
                *st = RunState::Paused;
                r.paused.store(true, Ordering::SeqCst);
            }
            Err(e) => tracing::debug!(instance = %r.name, error = %e, "pause failed"),
        }
    }

    /// One pass of the maintenance loop: detect dead replicas, pause idle ones, restore
    /// replica counts, refill prewarm pools.
    pub async fn tick(self: &Arc<Self>) {
        let listed = match self.list_own().await {
            Ok(l) => {
                if self.engine_down.swap(false, Ordering::SeqCst) {
                    tracing::info!("docker engine reachable again");
                }
                l
            }
            Err(e) => {
                if !self.engine_down.swap(true, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "docker engine unreachable");
                }
                return;
            }
        };
        let states: HashMap<String, String> = listed
            .into_iter()
            .filter_map(|c| Some((c.id?, c.state.map(|s| s.to_string()).unwrap_or_default())))
            .collect();
        let alive =
            |id: &str| matches!(states.get(id).map(String::as_str), Some("running" | "paused"));
        let functions: Vec<Arc<FunctionState>> = lock(&self.functions).values().cloned().collect();
        for f in &functions {
            for r in f.snapshot() {
                if r.dead.load(Ordering::SeqCst) || r.draining.load(Ordering::SeqCst) {
                    continue;
                }
                if !alive(&r.id) {
                    self.replica_died(f, &r);
                    continue;
                }
                if let Some(grace) = self.settings.pause_after {
                    self.maybe_pause(&r, grace).await;
                }
            }
            let live = f.live().len() as u32 + f.starting.load(Ordering::SeqCst);
            // A function whose starts keep failing is tried again only when its backoff
            // says so, not at every pass.
            if live < f.desired.load(Ordering::SeqCst)
                && f.start_due()
                && f.reconcile_lock.try_lock().is_ok()
            {
                self.spawn_reconcile(Arc::clone(f));
            }
        }
        let templates: Vec<Template> = {
            let mut pools = lock(&self.pools);
            // Only what the listing saw stopped is dropped: a container missing from it was
            // started after it (dropping that one would leave it running, forgotten).
            for pool in pools.values_mut() {
                pool.ready.retain(|p| !states.contains_key(&p.id) || alive(&p.id));
            }
            pools.keys().cloned().collect()
        };
        for t in templates {
            self.refill_pool(t);
        }
    }

    /// Rebuilds the view from the labels of this instance's containers: functions from their
    /// definition containers, replicas from running containers named after them. Removes
    /// its stopped replicas, orphans and this owner's stale prewarm containers; containers
    /// of other instances are not even listed.
    pub async fn adopt(self: &Arc<Self>) -> Result<()> {
        let listed = self.list_own().await.map_err(|e| map_err("container list", e))?;
        let mut adopted: HashMap<FunctionRef, Arc<FunctionState>> = HashMap::new();
        for c in &listed {
            let labels = c.labels.clone().unwrap_or_default();
            if labels.get(label::ROLE).map(String::as_str) != Some(engine::ROLE_DEFINITION) {
                continue;
            }
            let (Some(id), Some(json)) = (c.id.clone(), labels.get(label::SPEC)) else { continue };
            let Ok(spec) = serde_json::from_str::<FunctionSpec>(json) else { continue };
            let fref = spec.function_ref();
            if !self.in_scope(&fref.namespace) {
                continue;
            }
            // A label written before it was checked falls back to the default scheduler
            // rather than orphaning the function.
            let scheduler = self.scheduler_for(&spec).unwrap_or_else(|e| {
                tracing::warn!(function = %fref, error = %e, "using the default scheduler");
                self.schedulers.default_scheduler().clone()
            });
            let info = match self.spec_info(spec, scheduler) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(function = %fref, error = %e, "cannot adopt function");
                    continue;
                }
            };
            let created = labels
                .get(label::CREATED)
                .and_then(|v| v.parse::<u64>().ok())
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
                .unwrap_or_else(SystemTime::now);
            let f = FunctionState::new(fref.clone(), info, 0, created, self.settings.log_retention);
            *lock(&f.definition_id) = id;
            adopted.insert(fref, Arc::new(f));
        }
        let mut stale = Vec::new();
        // Stopped replicas of adopted functions: their lines are retained before removal.
        let mut stale_replicas = Vec::new();
        for c in &listed {
            let Some(id) = c.id.clone() else { continue };
            let labels = c.labels.clone().unwrap_or_default();
            let role = labels.get(label::ROLE).map(String::as_str).unwrap_or("");
            let name = c.names.as_ref().and_then(|n| n.first()).cloned().unwrap_or_default();
            let state = c.state.map(|s| s.to_string()).unwrap_or_default();
            if role == engine::ROLE_PREWARM
                && labels.get(label::OWNER) == Some(&self.settings.owner)
                && name.trim_start_matches('/').starts_with("faas-rs-prewarm.")
            {
                stale.push(id);
                continue;
            }
            let Some((ns, fname, Some(_))) = parse_name(&name) else { continue };
            if !self.in_scope(&ns) {
                continue;
            }
            let fref = FunctionRef::new(fname, ns);
            let port = c.ports.as_ref().and_then(|ps| {
                ps.iter().find(|p| p.private_port == 8080).and_then(|p| p.public_port)
            });
            match (adopted.get(&fref), state.as_str(), port) {
                (Some(f), "running" | "paused", Some(port)) => {
                    let hash = labels.get(label::SPEC_HASH).cloned().unwrap_or_default();
                    let name = name.trim_start_matches('/').to_string();
                    let r = Replica::new(
                        id,
                        name,
                        port,
                        StartKind::Warm,
                        Duration::ZERO,
                        hash,
                        state == "paused",
                    );
                    // Running already: counted under the node cap while there is room.
                    if let Ok(slot) = self.node_slots.clone().try_acquire_owned() {
                        r.hold_slot(slot);
                    }
                    // Not yet listed, so not being removed.
                    let _ = f.push(Arc::new(r));
                }
                (Some(f), _, _) => stale_replicas.push((
                    Arc::clone(f),
                    id,
                    name.trim_start_matches('/').to_string(),
                )),
                _ => stale.push(id),
            }
        }
        for f in adopted.values() {
            let n = f.live().len() as u32;
            f.desired.store(n.max(f.spec().min_replicas), Ordering::SeqCst);
        }
        futures::future::join_all(stale.iter().map(|id| self.remove_container(id))).await;
        futures::future::join_all(
            stale_replicas.iter().map(|(f, id, name)| self.retire_container(f, id, name)),
        )
        .await;
        lock(&self.functions).extend(adopted);
        Ok(())
    }

    /// Removes every container of this instance named after function `f` (replicas, taken
    /// prewarm containers, the definition), whatever this backend's view says.
    pub async fn remove_all_named(&self, f: &FunctionRef) -> Result<()> {
        let listed = self.list_own().await.map_err(|e| map_err("container list", e))?;
        let definition = format!("/{}", definition_name(&self.settings.instance, f));
        let ids: Vec<String> = listed
            .into_iter()
            .filter(|c| {
                c.names.iter().flatten().any(|n| {
                    *n == definition
                        || parse_name(n)
                            .is_some_and(|(ns, name, _)| ns == f.namespace && name == f.name)
                })
            })
            .filter_map(|c| c.id)
            .collect();
        for r in futures::future::join_all(ids.iter().map(|id| self.remove_container(id))).await {
            r?;
        }
        Ok(())
    }

    /// Forgets and removes every prewarm container of this backend.
    pub async fn drain_pools(&self) {
        let ids: Vec<String> =
            lock(&self.pools).values_mut().flat_map(|p| p.ready.drain(..).map(|x| x.id)).collect();
        futures::future::join_all(ids.iter().map(|id| self.remove_container(id))).await;
    }
}

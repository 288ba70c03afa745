//! The verbs a `wsk` user expects (`faas action|trigger|rule|activation|package ...`): thin
//! clients of the gateway's OpenWhisk REST API (`/api/v1`), printing its JSON answers.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::{Args, Subcommand};
use faas_core::{Error, Result};
use faas_http::client::GatewayClient;
use http::Method;
use serde_json::{json, Map, Value};

/// Where the OpenWhisk API is and which key to send.
#[derive(Args, Clone, Debug)]
pub struct WhiskOpts {
    /// The gateway (env WHISK_APIHOST, else OPENFAAS_URL).
    #[arg(long = "apihost", env = "WHISK_APIHOST", default_value = crate::DEFAULT_GATEWAY, global = true)]
    apihost: String,
    /// The key `uuid:key` (env WHISK_AUTH). Default: for a gateway on this machine, the key
    /// `faas up` keeps in its default state directory.
    #[arg(long, env = "WHISK_AUTH", hide_env_values = true, global = true)]
    auth: Option<String>,
    /// The key's file (`whisk-auth` in `faas up`'s --state-dir).
    #[arg(long, value_name = "FILE", conflicts_with = "auth", global = true)]
    auth_file: Option<PathBuf>,
}

/// A `-p KEY VALUE` pair: the value as JSON when it parses, else as a string (as `wsk`).
fn kv_pairs(raw: &[String], field: &str) -> Result<Map<String, Value>> {
    if raw.len() % 2 != 0 {
        return Err(Error::invalid(field, "give a key and a value: -p KEY VALUE"));
    }
    Ok(raw
        .chunks(2)
        .map(|c| {
            let v = serde_json::from_str(&c[1]).unwrap_or_else(|_| Value::String(c[1].clone()));
            (c[0].clone(), v)
        })
        .collect())
}

fn key_values(m: &Map<String, Value>) -> Value {
    Value::Array(m.iter().map(|(k, v)| json!({"key": k, "value": v})).collect())
}

/// An entity named on the command line.
#[derive(Args, Debug)]
pub struct Named {
    /// Its name.
    name: String,
}

/// `faas action ...`.
#[derive(Subcommand, Debug)]
pub enum ActionCmd {
    /// Create an action (`--overwrite` to replace): a blackbox image, a sequence, or a
    /// command the process backend runs (`--fprocess`).
    Create(ActionSpec),
    /// Replace an action (what is not given is kept).
    Update(ActionSpec),
    /// Invoke an action with parameters.
    Invoke {
        /// The action (`name` or `package/name`).
        name: String,
        /// A parameter: -p KEY VALUE (repeatable; VALUE is JSON or text).
        #[arg(short = 'p', long = "param", num_args = 2, value_names = ["KEY", "VALUE"])]
        params: Vec<String>,
        /// Wait for the result (up to the API's limit).
        #[arg(short = 'b', long)]
        blocking: bool,
        /// Print only the result (implies --blocking).
        #[arg(short = 'r', long)]
        result: bool,
    },
    /// Show an action.
    Get(Named),
    /// Delete an action.
    Delete(Named),
    /// List the actions.
    List,
}

/// What `faas action create|update` sends.
#[derive(Args, Debug)]
pub struct ActionSpec {
    /// The action (`name` or `package/name`).
    name: String,
    /// The action's code, as `wsk` takes it: a source file (`.py`, `.js`) or a `.zip`
    /// (sent base64; needs --kind).
    #[arg(conflicts_with_all = ["image", "sequence", "fprocess"])]
    file: Option<PathBuf>,
    /// The runtime kind of the code (`python:3`, `nodejs:20`); default from the file's
    /// extension.
    #[arg(long, requires = "file")]
    kind: Option<String>,
    /// The code's entry point (default `main`).
    #[arg(long, requires = "file")]
    main: Option<String>,
    /// The image of a blackbox action.
    #[arg(long, conflicts_with = "sequence")]
    image: Option<String>,
    /// The command the process backend runs for it (an `fprocess` annotation).
    #[arg(long)]
    fprocess: Option<String>,
    /// The actions of a sequence, comma separated.
    #[arg(long, value_delimiter = ',')]
    sequence: Vec<String>,
    /// A default parameter: -p KEY VALUE (repeatable).
    #[arg(short = 'p', long = "param", num_args = 2, value_names = ["KEY", "VALUE"])]
    params: Vec<String>,
    /// An annotation: -a KEY VALUE (repeatable).
    #[arg(short = 'a', long = "annotation", num_args = 2, value_names = ["KEY", "VALUE"])]
    annotations: Vec<String>,
    /// The timeout in milliseconds.
    #[arg(short = 't', long)]
    timeout: Option<u64>,
    /// The memory in MB.
    #[arg(short = 'm', long)]
    memory: Option<u64>,
}

/// `faas trigger ...`.
#[derive(Subcommand, Debug)]
pub enum TriggerCmd {
    /// Create a trigger, optionally fed by a feed (`--feed /whisk.system/alarms/alarm
    /// -p cron '*/5 * * * *'`).
    Create {
        /// The trigger.
        name: String,
        /// A default parameter (or, with --feed, a feed parameter): -p KEY VALUE.
        #[arg(short = 'p', long = "param", num_args = 2, value_names = ["KEY", "VALUE"])]
        params: Vec<String>,
        /// The feed action.
        #[arg(long)]
        feed: Option<String>,
    },
    /// Fire a trigger with parameters.
    Fire {
        /// The trigger.
        name: String,
        /// A parameter: -p KEY VALUE (repeatable).
        #[arg(short = 'p', long = "param", num_args = 2, value_names = ["KEY", "VALUE"])]
        params: Vec<String>,
    },
    /// Show a trigger.
    Get(Named),
    /// Delete a trigger (and its feed).
    Delete(Named),
    /// List the triggers.
    List,
}

/// `faas rule ...`.
#[derive(Subcommand, Debug)]
pub enum RuleCmd {
    /// Create a rule: when TRIGGER fires, ACTION runs.
    Create {
        /// The rule.
        name: String,
        /// The trigger.
        trigger: String,
        /// The action.
        action: String,
    },
    /// Enable a rule.
    Enable(Named),
    /// Disable a rule.
    Disable(Named),
    /// Show a rule.
    Get(Named),
    /// Delete a rule.
    Delete(Named),
    /// List the rules.
    List,
}

/// `faas activation ...`.
#[derive(Subcommand, Debug)]
pub enum ActivationCmd {
    /// List activations, newest first.
    List {
        /// Only those of this action or trigger.
        name: Option<String>,
        /// At most this many (up to 200).
        #[arg(short = 'l', long, default_value_t = 30)]
        limit: usize,
        /// Skip this many.
        #[arg(short = 's', long, default_value_t = 0)]
        skip: usize,
        /// Whole records rather than summaries.
        #[arg(long)]
        full: bool,
    },
    /// Show an activation.
    Get {
        /// The activation id.
        id: String,
    },
    /// Show an activation's logs.
    Logs {
        /// The activation id.
        id: String,
    },
    /// Show an activation's result.
    Result {
        /// The activation id.
        id: String,
    },
}

/// `faas package ...`.
#[derive(Subcommand, Debug)]
pub enum PackageCmd {
    /// Create a package with default parameters.
    Create {
        /// The package.
        name: String,
        /// A default parameter: -p KEY VALUE (repeatable).
        #[arg(short = 'p', long = "param", num_args = 2, value_names = ["KEY", "VALUE"])]
        params: Vec<String>,
    },
    /// Bind a package to another, with parameters over the package's.
    Bind {
        /// The package bound (`/namespace/package`, or a package of your namespace).
        package: String,
        /// The binding's name.
        name: String,
        /// A parameter: -p KEY VALUE (repeatable).
        #[arg(short = 'p', long = "param", num_args = 2, value_names = ["KEY", "VALUE"])]
        params: Vec<String>,
    },
    /// Show a package and its actions.
    Get(Named),
    /// Delete a package.
    Delete(Named),
    /// List the packages.
    List,
}

/// The OpenWhisk verbs.
#[derive(Debug)]
pub enum WhiskCmd {
    /// `action`.
    Action(ActionCmd),
    /// `trigger`.
    Trigger(TriggerCmd),
    /// `rule`.
    Rule(RuleCmd),
    /// `activation`.
    Activation(ActivationCmd),
    /// `package`.
    Package(PackageCmd),
}

struct Api {
    client: GatewayClient,
    auth: String,
}

impl Api {
    fn new(opts: &WhiskOpts) -> Result<Api> {
        let key = match (&opts.auth, &opts.auth_file) {
            (Some(k), _) => k.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| Error::invalid("auth-file", format!("{}: {e}", f.display())))?,
            (None, None) => {
                let local = crate::credentials::is_local(&opts.apihost);
                let file = crate::credentials::default_state_dir()
                    .map(|d| d.join(faas_http::whisk::WHISK_AUTH_FILE))
                    .filter(|f| local && f.exists());
                match file {
                    Some(f) => std::fs::read_to_string(&f)
                        .map_err(|e| Error::invalid("auth", format!("{}: {e}", f.display())))?,
                    None => String::new(),
                }
            }
        };
        let key = key.trim();
        let auth = if key.is_empty() {
            String::new()
        } else {
            format!("Basic {}", faas_core::queue::base64_encode(key.as_bytes()))
        };
        Ok(Api { client: GatewayClient::new(&opts.apihost)?, auth })
    }

    /// Sends `method` to `/api/v1/namespaces/_/{path}`; answers the JSON, or the API's
    /// error as an error.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if !self.auth.is_empty() {
            headers.push(("authorization".to_string(), self.auth.clone()));
        }
        let body = body.map(|b| serde_json::to_vec(&b).unwrap_or_default()).unwrap_or_default();
        let r = self
            .client
            .send(method, &format!("/api/v1/namespaces/_/{path}"), &headers, Bytes::from(body))
            .await?;
        let status = r.status.as_u16();
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if status >= 400 && !(status == 502 && v.get("activationId").is_some()) {
            let msg =
                v.get("error").and_then(Value::as_str).map_or_else(|| r.text(), str::to_string);
            return Err(match status {
                404 => Error::NotFound { kind: "entity", name: format!("{path}: {msg}") },
                409 => Error::AlreadyExists { kind: "entity", name: format!("{path}: {msg}") },
                400 | 413 => Error::invalid("request", msg),
                401 | 403 => Error::invalid("auth", msg),
                _ => Error::internal(format!("{status}: {msg}")),
            });
        }
        Ok((status, v))
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Encodes each segment of an entity name for a URL path (`pkg/name` keeps its slash).
fn name_path(name: &str) -> String {
    name.trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Runs an OpenWhisk verb; the exit status is 1 when an invoked action failed.
pub async fn run(opts: &WhiskOpts, cmd: WhiskCmd) -> Result<bool> {
    let api = Api::new(opts)?;
    let get = |c: &str, n: &str| format!("{c}/{}", name_path(n));
    match cmd {
        WhiskCmd::Action(a) => match a {
            ActionCmd::Create(spec) => print(&put_action(&api, spec, false).await?),
            ActionCmd::Update(spec) => print(&put_action(&api, spec, true).await?),
            ActionCmd::Invoke { name, params, blocking, result } => {
                let params = kv_pairs(&params, "param")?;
                let blocking = blocking || result;
                let q = match (blocking, result) {
                    (true, true) => "?blocking=true&result=true",
                    (true, false) => "?blocking=true",
                    _ => "",
                };
                let (status, v) = api
                    .call(
                        Method::POST,
                        &format!("{}{q}", get("actions", &name)),
                        Some(Value::Object(params)),
                    )
                    .await?;
                print(&v);
                return Ok(status < 400);
            }
            ActionCmd::Get(Named { name }) => {
                print(&api.call(Method::GET, &get("actions", &name), None).await?.1)
            }
            ActionCmd::Delete(Named { name }) => {
                print(&api.call(Method::DELETE, &get("actions", &name), None).await?.1)
            }
            ActionCmd::List => print(&api.call(Method::GET, "actions?limit=200", None).await?.1),
        },
        WhiskCmd::Trigger(t) => match t {
            TriggerCmd::Create { name, params, feed } => {
                let params = kv_pairs(&params, "param")?;
                let (body, feed_params) = match &feed {
                    Some(f) => {
                        (json!({"annotations": [{"key": "feed", "value": f}]}), Some(params))
                    }
                    None => (json!({"parameters": key_values(&params)}), None),
                };
                let (_, created) =
                    api.call(Method::PUT, &get("triggers", &name), Some(body)).await?;
                if let (Some(feed), Some(mut p)) = (feed, feed_params) {
                    let ns = created["namespace"].as_str().unwrap_or("_").to_string();
                    p.insert("lifecycleEvent".into(), "CREATE".into());
                    p.insert("triggerName".into(), format!("/{ns}/{name}").into());
                    let (feed_ns, feed_action) =
                        feed.trim_start_matches('/').split_once('/').ok_or_else(|| {
                            Error::invalid("feed", "a feed is /namespace/package/action")
                        })?;
                    let path =
                        format!("/api/v1/namespaces/{feed_ns}/actions/{feed_action}?blocking=true");
                    let mut headers =
                        vec![("content-type".to_string(), "application/json".to_string())];
                    if !api.auth.is_empty() {
                        headers.push(("authorization".to_string(), api.auth.clone()));
                    }
                    let r = api
                        .client
                        .send(
                            Method::POST,
                            &path,
                            &headers,
                            Bytes::from(serde_json::to_vec(&p).unwrap_or_default()),
                        )
                        .await?;
                    if !r.status.is_success() {
                        // The trigger without its feed is of no use: take it back.
                        let _ = api.call(Method::DELETE, &get("triggers", &name), None).await;
                        return Err(Error::invalid("feed", format!("{}: {}", r.status, r.text())));
                    }
                }
                print(&created);
            }
            TriggerCmd::Fire { name, params } => {
                let params = kv_pairs(&params, "param")?;
                let (status, v) = api
                    .call(Method::POST, &get("triggers", &name), Some(Value::Object(params)))
                    .await?;
                if status == 204 {
                    println!("no active rule: nothing fired");
                } else {
                    print(&v);
                }
            }
            TriggerCmd::Get(Named { name }) => {
                print(&api.call(Method::GET, &get("triggers", &name), None).await?.1)
            }
            TriggerCmd::Delete(Named { name }) => {
                print(&api.call(Method::DELETE, &get("triggers", &name), None).await?.1)
            }
            TriggerCmd::List => print(&api.call(Method::GET, "triggers?limit=200", None).await?.1),
        },
        WhiskCmd::Rule(r) => match r {
            RuleCmd::Create { name, trigger, action } => {
                let body = json!({"trigger": trigger, "action": action});
                print(&api.call(Method::PUT, &get("rules", &name), Some(body)).await?.1)
            }
            RuleCmd::Enable(Named { name }) => print(
                &api.call(Method::POST, &get("rules", &name), Some(json!({"status": "active"})))
                    .await?
                    .1,
            ),
            RuleCmd::Disable(Named { name }) => print(
                &api.call(Method::POST, &get("rules", &name), Some(json!({"status": "inactive"})))
                    .await?
                    .1,
            ),
            RuleCmd::Get(Named { name }) => {
                print(&api.call(Method::GET, &get("rules", &name), None).await?.1)
            }
            RuleCmd::Delete(Named { name }) => {
                print(&api.call(Method::DELETE, &get("rules", &name), None).await?.1)
            }
            RuleCmd::List => print(&api.call(Method::GET, "rules?limit=200", None).await?.1),
        },
        WhiskCmd::Activation(a) => match a {
            ActivationCmd::List { name, limit, skip, full } => {
                let mut q = format!("activations?limit={limit}&skip={skip}&docs={full}");
                if let Some(n) = name {
                    q.push_str(&format!(
                        "&name={}",
                        percent_encoding::utf8_percent_encode(
                            &n,
                            percent_encoding::NON_ALPHANUMERIC
                        )
                    ));
                }
                print(&api.call(Method::GET, &q, None).await?.1)
            }
            ActivationCmd::Get { id } => {
                print(&api.call(Method::GET, &get("activations", &id), None).await?.1)
            }
            ActivationCmd::Logs { id } => print(
                &api.call(Method::GET, &format!("{}/logs", get("activations", &id)), None).await?.1,
            ),
            ActivationCmd::Result { id } => print(
                &api.call(Method::GET, &format!("{}/result", get("activations", &id)), None)
                    .await?
                    .1,
            ),
        },
        WhiskCmd::Package(p) => match p {
            PackageCmd::Create { name, params } => {
                let body = json!({"parameters": key_values(&kv_pairs(&params, "param")?)});
                print(&api.call(Method::PUT, &get("packages", &name), Some(body)).await?.1)
            }
            PackageCmd::Bind { package, name, params } => {
                let (ns, pkg) = match package.trim_start_matches('/').split_once('/') {
                    Some((ns, pkg)) => (ns.to_string(), pkg.to_string()),
                    None => {
                        let (_, ns) =
                            api.call(Method::GET, &get("packages", &package), None).await?;
                        (ns["namespace"].as_str().unwrap_or("_").to_string(), package.clone())
                    }
                };
                let body = json!({"binding": {"namespace": ns, "name": pkg}, "parameters": key_values(&kv_pairs(&params, "param")?)});
                print(&api.call(Method::PUT, &get("packages", &name), Some(body)).await?.1)
            }
            PackageCmd::Get(Named { name }) => {
                print(&api.call(Method::GET, &get("packages", &name), None).await?.1)
            }
            PackageCmd::Delete(Named { name }) => {
                print(&api.call(Method::DELETE, &get("packages", &name), None).await?.1)
            }
            PackageCmd::List => print(&api.call(Method::GET, "packages?limit=200", None).await?.1),
        },
    }
    Ok(true)
}

/// The `exec` of a code action from `file`: its text, or a `.zip` in base64; the kind from
/// `kind` or the file's extension (`.py` → `python:default`, `.js` → `nodejs:default`, as
/// `wsk` infers it).
fn code_exec(file: &Path, kind: Option<&str>, main: Option<&str>) -> Result<Value> {
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let kind = match (kind, ext.as_str()) {
        (Some(k), _) => k.to_string(),
        (None, "py") => "python:default".into(),
        (None, "js") => "nodejs:default".into(),
        (None, _) => {
            return Err(Error::invalid("kind", "give --kind for a file that is not .py or .js"))
        }
    };
    let bytes = std::fs::read(file)
        .map_err(|e| Error::invalid("file", format!("cannot read {}: {e}", file.display())))?;
    let binary = ext == "zip";
    let code = if binary {
        faas_core::queue::base64_encode(&bytes)
    } else {
        String::from_utf8(bytes)
            .map_err(|_| Error::invalid("file", format!("{} is not UTF-8 text", file.display())))?
    };
    let mut exec = json!({"kind": kind, "code": code, "binary": binary});
    if let Some(m) = main {
        exec["main"] = m.into();
    }
    Ok(exec)
}

async fn put_action(api: &Api, spec: ActionSpec, overwrite: bool) -> Result<Value> {
    let mut body = Map::new();
    if !spec.sequence.is_empty() {
        body.insert("exec".into(), json!({"kind": "sequence", "components": spec.sequence.iter().map(|c| if c.starts_with('/') { c.clone() } else { format!("/_/{c}") }).collect::<Vec<_>>()}));
    } else if let Some(image) = &spec.image {
        body.insert("exec".into(), json!({"kind": "blackbox", "image": image}));
    } else if let Some(file) = &spec.file {
        body.insert("exec".into(), code_exec(file, spec.kind.as_deref(), spec.main.as_deref())?);
    } else if spec.fprocess.is_some() {
        body.insert("exec".into(), json!({"kind": "blackbox", "image": format!("faas-rs/{}", spec.name.replace('/', "-"))}));
    } else if !overwrite {
        return Err(Error::invalid("image", "give a code file, --image, --fprocess or --sequence"));
    }
    let params = kv_pairs(&spec.params, "param")?;
    if !params.is_empty() {
        body.insert("parameters".into(), key_values(&params));
    }
    let mut annotations = kv_pairs(&spec.annotations, "annotation")?;
    if let Some(p) = spec.fprocess {
        annotations.insert("fprocess".into(), p.into());
    }
    if !annotations.is_empty() {
        body.insert("annotations".into(), key_values(&annotations));
    }
    let mut limits = Map::new();
    if let Some(t) = spec.timeout {
        limits.insert("timeout".into(), t.into());
    }
    if let Some(m) = spec.memory {
        limits.insert("memory".into(), m.into());
    }
    if !limits.is_empty() {
        body.insert("limits".into(), Value::Object(limits));
    }
    let q = if overwrite { "?overwrite=true" } else { "" };
    Ok(api
        .call(
            Method::PUT,
            &format!("actions/{}{q}", name_path(&spec.name)),
            Some(Value::Object(body)),
        )
        .await?
        .1)
}

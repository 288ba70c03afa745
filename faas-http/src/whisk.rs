//! The OpenWhisk REST API under `/api/v1`, as the `wsk` CLI and the `openwhisk` npm client
//! call it: `GET /api/v1` (the API's description), `GET /api/v1/namespaces`, and under
//! `/api/v1/namespaces/{ns}/` (`_` for the caller's own) `actions`, `packages`,
//! `triggers`, `rules` and `activations`. The operations are [`faas_core::whisk::Whisk`]'s;
//! this module parses requests, checks OpenWhisk credentials (`uuid:key` as basic auth,
//! each key owning one namespace) and writes OpenWhisk's answers and error JSON
//! (`{"error", "code"}`).

use std::path::{Path, PathBuf};

use faas_core::whisk::entity::{Action, Package, Rule, Trigger};
use faas_core::whisk::record::{summary, MAX_LIST_LIMIT};
use faas_core::whisk::{
    ActionPut, ActivationQuery, EntityPath, Invoked, PackagePut, RulePut, RuleStatus, TriggerPut,
    Whisk,
};
use faas_core::{Error, InvocationId, Request, Response, Result};
use http::{header, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};

use crate::auth::BasicAuth;
use crate::response;
use crate::util::{parse_query, query_get};

/// The namespace callers get when the API has no keys configured.
pub const DEFAULT_WHISK_NAMESPACE: &str = "guest";

/// The file in a state directory holding the OpenWhisk key `uuid:key` (as OpenWhisk's
/// `guest.auth`).
pub const WHISK_AUTH_FILE: &str = "whisk-auth";

/// One OpenWhisk key: `uuid:key` sent as basic auth, and the namespace it owns.
#[derive(Debug)]
pub struct WhiskKey {
    auth: BasicAuth,
    namespace: String,
}

impl WhiskKey {
    /// `uuid:key` owning `namespace`.
    pub fn new(
        uuid: impl Into<String>,
        key: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Self {
        WhiskKey { auth: BasicAuth::new(uuid, key), namespace: namespace.into() }
    }

    /// Parses `uuid:key`.
    pub fn parse(s: &str, namespace: &str) -> Result<Self> {
        match s.trim().split_once(':') {
            Some((u, k)) if !u.is_empty() && !k.is_empty() => Ok(WhiskKey::new(u, k, namespace)),
            _ => Err(Error::invalid("whisk auth", "an OpenWhisk key is written uuid:key")),
        }
    }

    /// `uuid:key`, as `wsk property set --auth` takes it.
    pub fn as_auth(&self) -> String {
        format!("{}:{}", self.auth.user(), self.auth.password())
    }

    /// The namespace it owns.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The key kept in `dir` ([`WHISK_AUTH_FILE`], created with mode 0600 holding a random
    /// UUID and a 64-character key when missing), owning [`DEFAULT_WHISK_NAMESPACE`].
    /// Answers the key and the file's path.
    pub fn load_or_create(dir: &Path) -> Result<(WhiskKey, PathBuf)> {
        use rand::distr::{Alphanumeric, SampleString};
        let file = dir.join(WHISK_AUTH_FILE);
        let io = |what: &str, e: std::io::Error| {
            Error::invalid("state-dir", format!("{what} {}: {e}", file.display()))
        };
        if !file.exists() {
            std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
            let id = InvocationId::new();
            let s = id.as_str();
            let uuid =
                format!("{}-{}-{}-{}-{}", &s[..8], &s[8..12], &s[12..16], &s[16..20], &s[20..]);
            let key = Alphanumeric.sample_string(&mut rand::rng(), 64);
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            match opts.open(&file) {
                Ok(mut f) => {
                    use std::io::Write;
                    writeln!(f, "{uuid}:{key}").map_err(|e| io("writing", e))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("creating", e)),
            }
        }
        let text = std::fs::read_to_string(&file).map_err(|e| io("reading", e))?;
        Ok((WhiskKey::parse(&text, DEFAULT_WHISK_NAMESPACE)?, file))
    }
}

/// The OpenWhisk API of a gateway: the operations and the keys allowed to call them
/// (none: every caller is in [`DEFAULT_WHISK_NAMESPACE`]).
#[derive(Debug, Clone)]
pub struct WhiskApi {
    whisk: Whisk,
    keys: std::sync::Arc<Vec<WhiskKey>>,
}

/// An OpenWhisk error answer: `{"error": message, "code": transaction id}`.
fn whisk_error(status: StatusCode, message: impl Into<String>) -> Response {
    let code = InvocationId::new();
    response::json(status, &json!({ "error": message.into(), "code": code.as_str() }))
}

/// [`Error`] as OpenWhisk answers it.
fn error_response(e: &Error) -> Response {
    let status = e.http_status();
    let message = match e {
        Error::NotFound { .. } => "The requested resource does not exist.".to_string(),
        Error::AlreadyExists { kind, name } if name.contains("delete them first") => {
            format!("{kind} {name}")
        }
        Error::AlreadyExists { .. } => "resource already exists".to_string(),
        Error::PayloadTooLarge { limit } => {
            format!("The request content was malformed:\nrequest entity too large (limit {limit} bytes).")
        }
        Error::InvalidSpec { field, reason } if reason.starts_with("Request defines") => {
            let _ = field;
            reason.clone()
        }
        other => other.to_string(),
    };
    whisk_error(status, message)
}

/// The collections under a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    Actions,
    Packages,
    Triggers,
    Rules,
    Activations,
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

impl WhiskApi {
    /// The API over `whisk`, for callers holding one of `keys`.
    pub fn new(whisk: Whisk, keys: Vec<WhiskKey>) -> Self {
        WhiskApi { whisk, keys: std::sync::Arc::new(keys) }
    }

    /// The operations.
    pub fn whisk(&self) -> &Whisk {
        &self.whisk
    }

    /// The caller's namespace, or `None` when its credentials are missing or wrong.
    fn caller(&self, req: &Request) -> Option<String> {
        if self.keys.is_empty() {
            return Some(DEFAULT_WHISK_NAMESPACE.to_string());
        }
        let value = req.headers().get(header::AUTHORIZATION)?;
        self.keys
            .iter()
            .find(|k| k.auth.check_header(value.as_bytes()))
            .map(|k| k.namespace.clone())
    }

    /// Answers a request whose path starts with `/api/v1`.
    pub async fn handle(&self, req: Request) -> Response {
        let path = req.uri().path().to_string();
        let rest = path.trim_start_matches("/api/v1").trim_matches('/');
        if rest.is_empty() {
            return match *req.method() {
                Method::GET => response::json(StatusCode::OK, &info()),
                _ => response::method_not_allowed("GET"),
            };
        }
        let Some(caller) = self.caller(&req) else {
            let mut r =
                whisk_error(StatusCode::UNAUTHORIZED, "The supplied authentication is invalid");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"whisk rest service\""),
            );
            return r;
        };
        let segments: Vec<String> = rest.split('/').map(decode).collect();
        let result = self.route(req, &caller, &segments).await;
        result.unwrap_or_else(|e| error_response(&e))
    }

    /// The namespace the portal acts in: the first key's, or [`DEFAULT_WHISK_NAMESPACE`]
    /// when the API has no keys.
    pub fn portal_namespace(&self) -> &str {
        self.keys.first().map_or(DEFAULT_WHISK_NAMESPACE, |k| k.namespace.as_str())
    }

    /// Answers the portal's `/system/whisk/REST` as `/api/v1/REST`, acting in
    /// [`WhiskApi::portal_namespace`]. The caller is the gateway's admin: the route is
    /// under `/system/`, so the basic-auth and cross-site layers have already checked it,
    /// and the browser never holds an OpenWhisk key.
    pub async fn handle_portal(&self, req: Request) -> Response {
        let path = req.uri().path().to_string();
        let rest = path.trim_start_matches(PORTAL_PREFIX).trim_matches('/');
        let segments: Vec<String> = rest.split('/').map(decode).collect();
        let caller = self.portal_namespace().to_string();
        let result = self.route(req, &caller, &segments).await;
        result.unwrap_or_else(|e| error_response(&e))
    }

    async fn route(&self, req: Request, caller: &str, seg: &[String]) -> Result<Response> {
        let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
        match seg.as_slice() {
            ["namespaces"] => Ok(response::json(StatusCode::OK, &[caller])),
            ["namespaces", faas_core::whisk::feeds::SYSTEM_NAMESPACE, "actions", package, feed]
                if req.method() == Method::POST && self.whisk.feeds().offers(package, feed) =>
            {
                self.feed(req, caller, package, feed).await
            }
            ["namespaces", ns, collection, rest @ ..] => {
                let ns = if *ns == "_" { caller } else { ns };
                if ns != caller {
                    return Ok(whisk_error(
                        StatusCode::FORBIDDEN,
                        format!("The supplied authentication is not authorized to access '{ns}'."),
                    ));
                }
                let collection = match *collection {
                    "actions" => Collection::Actions,
                    "packages" => Collection::Packages,
                    "triggers" => Collection::Triggers,
                    "rules" => Collection::Rules,
                    "activations" => Collection::Activations,
                    _ => {
                        return Ok(whisk_error(
                            StatusCode::NOT_FOUND,
                            "The requested resource does not exist.",
                        ))
                    }
                };
                self.collection(req, caller, collection, rest).await
            }
            _ => Ok(whisk_error(StatusCode::NOT_FOUND, "The requested resource does not exist.")),
        }
    }

    /// A feed action of `/whisk.system` (`alarms/alarm`, `alarms/once`, and those
    /// registered, as `messaging/kafkaFeed`), invoked by the clients' `feeds.create` and
    /// the CLI's `trigger create --feed`: answered as a blocking invocation (the record,
    /// 200), and recorded.
    async fn feed(
        &self,
        req: Request,
        caller: &str,
        package: &str,
        feed: &str,
    ) -> Result<Response> {
        let start = std::time::SystemTime::now();
        let params = Whisk::params_of(&self.body(req).await?)?;
        let result = self.whisk.feed(caller, package, feed, params).await?;
        let mut a = faas_core::Activation::new(
            InvocationId::new(),
            &faas_core::FunctionRef::new(feed, caller),
            start,
            std::time::SystemTime::now(),
            faas_core::ActivationResponse::success(result),
        );
        a.annotate(
            "path",
            format!("{}/{package}/{feed}", faas_core::whisk::feeds::SYSTEM_NAMESPACE).into(),
        );
        a.annotate("kind", "nodejs:default".into());
        self.whisk.log().insert(a.clone());
        Ok(response::json(StatusCode::OK, &a))
    }

    async fn body(&self, req: Request) -> Result<bytes::Bytes> {
        let limit = self.whisk.config().max_payload;
        req.into_body().collect_limited(limit).await
    }

    async fn collection(
        &self,
        req: Request,
        ns: &str,
        c: Collection,
        rest: &[&str],
    ) -> Result<Response> {
        let query = parse_query(req.uri().query());
        let flag = |k: &str| query_get(&query, k).is_some_and(|v| v == "true");
        let method = req.method().clone();
        if c == Collection::Activations {
            return self.activations(ns, rest, &query);
        }
        if rest.is_empty() {
            if method != Method::GET {
                return Ok(response::method_not_allowed("GET"));
            }
            return self.list(ns, c, &query);
        }
        let path = match (c, rest) {
            (Collection::Actions, [name]) => EntityPath::new(ns, None, name),
            (Collection::Actions, [pkg, name]) => EntityPath::new(ns, Some(pkg), name),
            (_, [name]) => EntityPath::new(ns, None, name),
            _ => {
                return Ok(whisk_error(
                    StatusCode::NOT_FOUND,
                    "The requested resource does not exist.",
                ))
            }
        };
        let w = &self.whisk;
        let ok = |v: &dyn erased::Json| response::json(StatusCode::OK, &v.value());
        match (c, method) {
            (Collection::Actions, Method::GET) => {
                let mut a: Action = w.entities().require(&path)?;
                if query_get(&query, "code") == Some("false") {
                    a.exec.code = None;
                }
                Ok(ok(&a))
            }
            (Collection::Actions, Method::PUT) => {
                let put: ActionPut = parse(&self.body(req).await?)?;
                Ok(ok(&w.put_action(&path, put, flag("overwrite")).await?))
            }
            (Collection::Actions, Method::DELETE) => Ok(ok(&w.delete_action(&path).await?)),
            (Collection::Actions, Method::POST) => {
                let params = Whisk::params_of(&self.body(req).await?)?;
                match w.invoke(ns, &path, params, flag("blocking")).await? {
                    Invoked::Accepted(id) => {
                        Ok(response::json(StatusCode::ACCEPTED, &json!({ "activationId": id })))
                    }
                    Invoked::Done(a) => {
                        let status = match a.response.status_code {
                            faas_core::StatusCode::Success => StatusCode::OK,
                            faas_core::StatusCode::InternalError => {
                                StatusCode::INTERNAL_SERVER_ERROR
                            }
                            _ => StatusCode::BAD_GATEWAY,
                        };
                        if flag("result") {
                            Ok(response::json(status, &a.response.result))
                        } else {
                            Ok(response::json(status, &a))
                        }
                    }
                }
            }
            (Collection::Packages, Method::GET) => {
                let p: Package = w.entities().require(&path)?;
                let mut v = serde_json::to_value(&p).unwrap_or(Value::Null);
                if p.binding.is_none() {
                    let actions: Vec<Action> = w.entities().list(&format!("{}/", path.key()))?;
                    let listed: Vec<Value> = actions
                        .iter()
                        .map(|a| json!({"name": a.name, "version": a.version, "annotations": a.annotations}))
                        .collect();
                    v["actions"] = Value::Array(listed);
                }
                Ok(response::json(StatusCode::OK, &v))
            }
            (Collection::Packages, Method::PUT) => {
                let put: PackagePut = parse(&self.body(req).await?)?;
                Ok(ok(&w.put_package(&path, put, flag("overwrite")).await?))
            }
            (Collection::Packages, Method::DELETE) => Ok(ok(&w.delete_package(&path).await?)),
            (Collection::Triggers, Method::GET) => {
                Ok(ok(&w.entities().require::<Trigger>(&path)?))
            }
            (Collection::Triggers, Method::PUT) => {
                let put: TriggerPut = parse(&self.body(req).await?)?;
                Ok(ok(&w.put_trigger(&path, put, flag("overwrite")).await?))
            }
            (Collection::Triggers, Method::DELETE) => Ok(ok(&w.delete_trigger(&path).await?)),
            (Collection::Triggers, Method::POST) => {
                let params = Whisk::params_of(&self.body(req).await?)?;
                match w.fire(ns, &path, params).await? {
                    Some(id) => {
                        Ok(response::json(StatusCode::ACCEPTED, &json!({ "activationId": id })))
                    }
                    None => Ok(response::empty(StatusCode::NO_CONTENT)),
                }
            }
            (Collection::Rules, Method::GET) => Ok(ok(&w.entities().require::<Rule>(&path)?)),
            (Collection::Rules, Method::PUT) => {
                let put: RulePut = parse(&self.body(req).await?)?;
                Ok(ok(&w.put_rule(&path, put, flag("overwrite")).await?))
            }
            (Collection::Rules, Method::DELETE) => Ok(ok(&w.delete_rule(&path).await?)),
            (Collection::Rules, Method::POST) => {
                #[derive(serde::Deserialize)]
                struct Status {
                    status: RuleStatus,
                }
                let s: Status = parse(&self.body(req).await?)?;
                Ok(ok(&w.set_rule_status(&path, s.status).await?))
            }
            _ => Ok(whisk_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "The requested method is not allowed.",
            )),
        }
    }

    fn list(&self, ns: &str, c: Collection, query: &[(String, String)]) -> Result<Response> {
        let (skip, limit) = paging(query)?;
        let prefix = format!("{ns}/");
        let e = self.whisk.entities();
        let values: Vec<Value> = match c {
            Collection::Actions => e
                .list::<Action>(&prefix)?
                .into_iter()
                .map(|mut a| {
                    a.exec.code = None;
                    serde_json::to_value(a).unwrap_or(Value::Null)
                })
                .collect(),
            Collection::Packages => to_values(e.list::<Package>(&prefix)?),
            Collection::Triggers => to_values(e.list::<Trigger>(&prefix)?),
            Collection::Rules => to_values(e.list::<Rule>(&prefix)?),
            Collection::Activations => Vec::new(),
        };
        if query_get(query, "count") == Some("true") {
            let key = match c {
                Collection::Actions => "actions",
                Collection::Packages => "packages",
                Collection::Triggers => "triggers",
                _ => "rules",
            };
            return Ok(response::json(StatusCode::OK, &json!({ key: values.len() })));
        }
        let page: Vec<Value> = values.into_iter().skip(skip).take(limit).collect();
        Ok(response::json(StatusCode::OK, &page))
    }

    fn activations(&self, ns: &str, rest: &[&str], query: &[(String, String)]) -> Result<Response> {
        let log = self.whisk.log();
        let find = |id: &str| {
            log.get(&InvocationId::from_string(id))
                .filter(|a| a.namespace == ns)
                .ok_or_else(|| Error::NotFound { kind: "activation", name: id.to_string() })
        };
        match rest {
            [] => {
                let (skip, limit) = paging(query)?;
                let millis = |k: &str| -> Result<Option<u64>> {
                    query_get(query, k)
                        .map(|v| {
                            v.parse::<u64>().map_err(|_| {
                                Error::invalid(
                                    k,
                                    format!("{v:?} is not a time in epoch milliseconds"),
                                )
                            })
                        })
                        .transpose()
                };
                let q = ActivationQuery {
                    namespace: Some(ns.to_string()),
                    name: query_get(query, "name").filter(|n| !n.is_empty()).map(str::to_string),
                    skip,
                    limit,
                    since: millis("since")?,
                    upto: millis("upto")?,
                };
                let found = log.list(&q);
                if query_get(query, "count") == Some("true") {
                    return Ok(response::json(
                        StatusCode::OK,
                        &json!({ "activations": found.len() }),
                    ));
                }
                if query_get(query, "docs") == Some("true") {
                    Ok(response::json(StatusCode::OK, &found))
                } else {
                    let s: Vec<Value> = found.iter().map(summary).collect();
                    Ok(response::json(StatusCode::OK, &s))
                }
            }
            [id] => Ok(response::json(StatusCode::OK, &find(id)?)),
            [id, "logs"] => Ok(response::json(StatusCode::OK, &json!({ "logs": find(id)?.logs }))),
            [id, "result"] => {
                let a = find(id)?;
                Ok(response::json(StatusCode::OK, &a.response))
            }
            _ => Ok(whisk_error(StatusCode::NOT_FOUND, "The requested resource does not exist.")),
        }
    }
}

/// `skip` and `limit` of a listing (`limit` 0 or absent: 30; above 200: 400 as OpenWhisk).
fn paging(query: &[(String, String)]) -> Result<(usize, usize)> {
    let num = |k: &str| -> Result<Option<usize>> {
        query_get(query, k)
            .map(|v| {
                v.parse::<usize>().map_err(|_| Error::invalid(k, format!("{v:?} is not a number")))
            })
            .transpose()
    };
    let skip = num("skip")?.unwrap_or(0);
    let limit = match num("limit")? {
        None | Some(0) => 30,
        Some(n) if n > MAX_LIST_LIMIT => {
            return Err(Error::invalid(
                "limit",
                format!("The value '{n}' is not in the range of 0 to {MAX_LIST_LIMIT}."),
            ))
        }
        Some(n) => n,
    };
    Ok((skip, limit))
}

fn to_values<T: serde::Serialize>(items: Vec<T>) -> Vec<Value> {
    items.into_iter().map(|i| serde_json::to_value(i).unwrap_or(Value::Null)).collect()
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    let text = if body.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { body };
    let mut de = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "request".to_string() } else { path };
        Error::invalid(field, e.into_inner().to_string())
    })
}

/// `GET /api/v1`: the API's description, in OpenWhisk's shape.
fn info() -> Value {
    json!({
        "description": "faas-rs OpenWhisk-compatible API",
        "api_paths": ["/api/v1"],
        "build": env!("CARGO_PKG_VERSION"),
        "buildno": env!("CARGO_PKG_VERSION"),
        "support": { "github": "https://example.invalid/faas-rs/issues" },
        "limits": {
            "actions_per_minute": 600,
            "triggers_per_minute": 600,
            "concurrent_actions": 100,
            "sequence_length": faas_core::whisk::entity::MAX_SEQUENCE_LENGTH,
            "min_action_duration": 100,
            "max_action_duration": 300_000,
            "min_action_memory": 134_217_728u64,
            "max_action_memory": 536_870_912u64,
            "min_action_logs": 0,
            "max_action_logs": 10_485_760u64,
            "max_action_payload": 1_048_576u64,
        },
        "runtimes": {
            "blackbox": [{ "kind": "blackbox", "default": true }],
            "sequence": [{ "kind": "sequence", "default": true }],
        },
    })
}

/// Serialisation of the several entity types through one closure.
mod erased {
    /// Anything serialisable, as a JSON value.
    pub trait Json {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}

/// Where the portal reaches the OpenWhisk API as the gateway's admin (see
/// [`WhiskApi::handle_portal`]): `/system/whisk/namespaces/_/triggers` is
/// `/api/v1/namespaces/_/triggers`.
pub const PORTAL_PREFIX: &str = "/system/whisk";

/// Whether a request path is the OpenWhisk API's.
pub fn is_whisk_path(path: &str) -> bool {
    path == "/api/v1" || path.starts_with("/api/v1/")
}

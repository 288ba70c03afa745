//! Functions and secrets deployed through the API, kept across restarts in a
//! [`StateStore`]: [`Persisted`] wraps a backend that forgets them when it stops (the
//! process and in-memory backends; Docker and Kubernetes keep them in the engine), writes
//! each deploy, update, removal and secret change to the store, and
//! [`Persisted::restore`] deploys them again at start. The replica count a `scale` request
//! sets is kept too (for any function, API-deployed or not) and set again by
//! [`Persisted::restore_replicas`]; the autoscaler's own changes are not (it works below
//! the wrapper and decides again after a restart).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::invocation::{FunctionRef, Invocation};
use crate::invoker::{
    Backend, Deploy, Invoke, InvokeFuture, LogStream, Logs, LogsRequest, ProviderInfo, Secret,
    SecretInfo, Secrets,
};
use crate::spec::{FunctionSpec, FunctionStatus};
use crate::state::{StateOp, StateStore};

/// The table of function specs (key `NAMESPACE/NAME`, value the spec as OpenFaaS JSON).
pub const FUNCTIONS_TABLE: &str = "functions";
/// The table of secrets (key `NAMESPACE/NAME`, value the secret's bytes).
pub const SECRETS_TABLE: &str = "secrets";
/// The table of replica counts set by `scale` (key `NAMESPACE/NAME`, value the count in
/// decimal).
pub const REPLICAS_TABLE: &str = "replicas";

fn key(namespace: &str, name: &str) -> Vec<u8> {
    format!("{namespace}/{name}").into_bytes()
}

/// A backend whose API-deployed functions and secrets are kept in a [`StateStore`].
/// Everything else is forwarded as it is.
pub struct Persisted {
    inner: Arc<dyn Backend>,
    store: Arc<dyn StateStore>,
}

impl std::fmt::Debug for Persisted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persisted").field("store", &self.store.describe()).finish()
    }
}

/// What [`Persisted::restore`] brought back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Functions deployed again.
    pub functions: usize,
    /// Secrets created again.
    pub secrets: usize,
    /// Functions scaled again to the replica count a `scale` request had set.
    pub replicas: usize,
    /// What could not be restored, one line each (also logged).
    pub failures: Vec<String>,
}

impl Persisted {
    /// Keeps `inner`'s API-deployed functions and secrets in `store`.
    pub fn new(inner: Arc<dyn Backend>, store: Arc<dyn StateStore>) -> Self {
        Persisted { inner, store }
    }

    /// Deploys the kept secrets, then the kept functions, into the backend (updating any it
    /// has already). A record that cannot be restored is reported and logged; the others
    /// still are.
    pub async fn restore(&self) -> Result<Restored> {
        let mut out = Restored::default();
        for (k, value) in self.store.scan(SECRETS_TABLE)? {
            let k = String::from_utf8_lossy(&k).into_owned();
            let Some((namespace, name)) = k.split_once('/') else { continue };
            let secret = Secret {
                name: name.to_string(),
                namespace: namespace.to_string(),
                value: value.into(),
            };
            let r = match self.inner.create_secret(secret.clone()).await {
                Err(Error::AlreadyExists { .. }) => self.inner.update_secret(secret).await,
                r => r,
            };
            match r {
                Ok(()) => out.secrets += 1,
                Err(e) => out.failures.push(format!("secret {k}: {e}")),
            }
        }
        for (k, value) in self.store.scan(FUNCTIONS_TABLE)? {
            let k = String::from_utf8_lossy(&k).into_owned();
            let spec: FunctionSpec = match serde_json::from_slice(&value) {
                Ok(s) => s,
                Err(e) => {
                    out.failures.push(format!("function {k}: unreadable record: {e}"));
                    continue;
                }
            };
            let r = match self.inner.deploy(spec.clone()).await {
                Err(Error::AlreadyExists { .. }) => self.inner.update(spec).await,
                r => r,
            };
            match r {
                Ok(()) => out.functions += 1,
                Err(e) => out.failures.push(format!("function {k}: {e}")),
            }
        }
        let replicas = self.restore_replicas().await?;
        out.replicas = replicas.replicas;
        out.failures.extend(replicas.failures);
        for f in &out.failures {
            tracing::warn!("not restored: {f}");
        }
        Ok(out)
    }

    /// Scales each function the backend has to the replica count a `scale` request set
    /// last, as kept in the store. Functions it does not have (yet) are left for a later
    /// call: [`Persisted::restore`] calls it for the functions it deployed, and a caller
    /// that deploys more of its own (`faas up`'s stack file) calls it again afterwards.
    pub async fn restore_replicas(&self) -> Result<Restored> {
        let mut out = Restored::default();
        for (k, value) in self.store.scan(REPLICAS_TABLE)? {
            let k = String::from_utf8_lossy(&k).into_owned();
            let Some((namespace, name)) = k.split_once('/') else { continue };
            let Some(n) = std::str::from_utf8(&value).ok().and_then(|v| v.parse::<u32>().ok())
            else {
                out.failures.push(format!("replicas of {k}: unreadable record"));
                continue;
            };
            let f = FunctionRef::new(name, namespace);
            match self.inner.status(&f).await {
                Ok(st) if st.replicas == u64::from(n) => continue,
                Ok(_) => {}
                Err(Error::NotFound { .. }) => continue,
                Err(e) => {
                    out.failures.push(format!("replicas of {k}: {e}"));
                    continue;
                }
            }
            match self.inner.scale(&f, n).await {
                Ok(()) => out.replicas += 1,
                Err(e) => out.failures.push(format!("replicas of {k}: {e}")),
            }
        }
        Ok(out)
    }

    async fn save_spec(&self, spec: &FunctionSpec) -> Result<()> {
        let value = serde_json::to_vec(spec)
            .map_err(|e| Error::internal(format!("encoding the function spec: {e}")))?;
        let f = spec.function_ref();
        let op = StateOp::put(FUNCTIONS_TABLE, key(&f.namespace, &f.name), value);
        self.store.commit(vec![op]).await
    }

    async fn save_secret(&self, secret: &Secret) -> Result<()> {
        let op = StateOp::put(
            SECRETS_TABLE,
            key(&secret.namespace, &secret.name),
            secret.value.to_vec(),
        );
        self.store.commit(vec![op]).await
    }
}

#[async_trait]
impl Invoke for Persisted {
    // Written out, so the backend's boxed future is handed on as it is.
    fn invoke<'life0, 'async_trait>(
        &'life0 self,
        invocation: Invocation,
    ) -> InvokeFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.invoke(invocation)
    }
}

#[async_trait]
impl Deploy for Persisted {
    async fn deploy(&self, spec: FunctionSpec) -> Result<()> {
        self.inner.deploy(spec.clone()).await?;
        self.save_spec(&spec).await
    }
    async fn update(&self, spec: FunctionSpec) -> Result<()> {
        self.inner.update(spec.clone()).await?;
        self.save_spec(&spec).await
    }
    async fn remove(&self, function: &FunctionRef) -> Result<()> {
        let removed = self.inner.remove(function).await;
        if removed.is_ok() || matches!(removed, Err(Error::NotFound { .. })) {
            let k = key(&function.namespace, &function.name);
            let ops = vec![
                StateOp::delete(FUNCTIONS_TABLE, k.clone()),
                StateOp::delete(REPLICAS_TABLE, k),
            ];
            self.store.commit(ops).await?;
        }
        removed
    }
    async fn list(&self, namespace: &str) -> Result<Vec<FunctionStatus>> {
        self.inner.list(namespace).await
    }
    async fn status(&self, function: &FunctionRef) -> Result<FunctionStatus> {
        self.inner.status(function).await
    }
    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<()> {
        self.inner.scale(function, replicas).await?;
        let k = key(&function.namespace, &function.name);
        self.store.commit(vec![StateOp::put(REPLICAS_TABLE, k, replicas.to_string())]).await
    }
    async fn namespaces(&self) -> Result<Vec<String>> {
        self.inner.namespaces().await
    }
    fn info(&self) -> ProviderInfo {
        self.inner.info()
    }
    async fn wait_ready(&self, function: &FunctionRef, timeout: Duration) -> Result<bool> {
        self.inner.wait_ready(function, timeout).await
    }
}

#[async_trait]
impl Secrets for Persisted {
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<SecretInfo>> {
        self.inner.list_secrets(namespace).await
    }
    async fn create_secret(&self, secret: Secret) -> Result<()> {
        self.inner.create_secret(secret.clone()).await?;
        self.save_secret(&secret).await
    }
    async fn update_secret(&self, secret: Secret) -> Result<()> {
        self.inner.update_secret(secret.clone()).await?;
        self.save_secret(&secret).await
    }
    async fn remove_secret(&self, namespace: &str, name: &str) -> Result<()> {
        let removed = self.inner.remove_secret(namespace, name).await;
        if removed.is_ok() || matches!(removed, Err(Error::NotFound { .. })) {
            self.store.commit(vec![StateOp::delete(SECRETS_TABLE, key(namespace, name))]).await?;
        }
        removed
    }
}

#[async_trait]
impl Logs for Persisted {
    async fn logs(&self, request: LogsRequest) -> Result<LogStream> {
        self.inner.logs(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryInvoker;
    use crate::state::MemoryStateStore;
    use crate::{handler_fn, Context, Request};

    fn backend() -> Arc<dyn Backend> {
        let invoker = MemoryInvoker::new();
        invoker.register(
            "echo",
            handler_fn(
                |req: Request, _ctx: Context| async move { Ok::<_, Error>(req.into_body()) },
            ),
        );
        Arc::new(invoker)
    }

    /// A function and a secret deployed through the wrapper are there again in a new
    /// backend restored from the same store; removed ones are not.
    #[tokio::test]
    async fn functions_and_secrets_survive_a_new_backend() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
        let first = Persisted::new(backend(), store.clone());
        let spec = FunctionSpec::new("kept", "echo");
        let namespace = spec.function_ref().namespace;
        first.deploy(spec.clone()).await.unwrap();
        first.deploy(FunctionSpec::new("gone", "echo")).await.unwrap();
        first.remove(&FunctionSpec::new("gone", "echo").function_ref()).await.unwrap();
        let secret = Secret {
            name: "token".into(),
            namespace: namespace.clone(),
            value: bytes::Bytes::from_static(b"s3cret"),
        };
        first.create_secret(secret.clone()).await.unwrap();
        first
            .update_secret(Secret { value: bytes::Bytes::from_static(b"v2"), ..secret.clone() })
            .await
            .unwrap();
        // A refused deploy is not kept.
        assert!(first.deploy(spec.clone()).await.is_err());
        assert_eq!(store.scan(FUNCTIONS_TABLE).unwrap().len(), 1);

        let second = Persisted::new(backend(), store.clone());
        let restored = second.restore().await.unwrap();
        assert_eq!(restored, Restored { functions: 1, secrets: 1, replicas: 0, failures: vec![] });
        let names: Vec<String> =
            second.list(&namespace).await.unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["kept"]);
        let secrets = second.list_secrets(&namespace).await.unwrap();
        assert_eq!(secrets.len(), 1);
        assert_eq!(store.get(SECRETS_TABLE, b"openfaas-fn/token").unwrap().unwrap(), b"v2");
        second.remove_secret(&namespace, "token").await.unwrap();
        assert!(store.scan(SECRETS_TABLE).unwrap().is_empty());
    }

    /// Replica counts set by `scale` come back after a restart: for an API-deployed
    /// function with `restore`, for one deployed beside the wrapper (a stack file's) with
    /// `restore_replicas` once it is deployed again; a removal forgets them.
    #[tokio::test]
    async fn scaled_replica_counts_survive_a_new_backend() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::default());
        let inner = backend();
        let first = Persisted::new(inner.clone(), store.clone());
        let api = FunctionSpec::new("api", "echo");
        let stack = FunctionSpec::new("stack", "echo");
        first.deploy(api.clone()).await.unwrap();
        inner.deploy(stack.clone()).await.unwrap();
        first.scale(&api.function_ref(), 3).await.unwrap();
        first.scale(&stack.function_ref(), 2).await.unwrap();
        // A refused scale is not kept.
        assert!(first.scale(&FunctionRef::new("ghost", "openfaas-fn"), 4).await.is_err());
        assert_eq!(store.scan(REPLICAS_TABLE).unwrap().len(), 2);

        let inner2 = backend();
        let second = Persisted::new(inner2.clone(), store.clone());
        let restored = second.restore().await.unwrap();
        assert_eq!((restored.functions, restored.replicas), (1, 1), "{restored:?}");
        assert_eq!(second.status(&api.function_ref()).await.unwrap().replicas, 3);
        inner2.deploy(stack.clone()).await.unwrap();
        let again = second.restore_replicas().await.unwrap();
        assert_eq!((again.replicas, again.failures.len()), (1, 0), "{again:?}");
        assert_eq!(second.status(&stack.function_ref()).await.unwrap().replicas, 2);

        second.remove(&api.function_ref()).await.unwrap();
        second.remove(&stack.function_ref()).await.unwrap();
        assert!(store.scan(REPLICAS_TABLE).unwrap().is_empty());
    }
}

//! Where entities are kept: one [`StateStore`] table per kind, key
//! `namespace/[package/]name`, value the entity's JSON. Every write is committed before
//! the API answers, so an entity the API accepted survives a restart.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::entity::{Action, EntityPath, Package, Rule, Trigger};
use crate::error::{Error, Result};
use crate::state::{StateOp, StateStore};

/// A kind of entity and its table.
pub trait Entity: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The table.
    const TABLE: &'static str;
    /// What errors call it (`action`, `trigger`...).
    const KIND: &'static str;
}

impl Entity for Action {
    const TABLE: &'static str = "whisk_actions";
    const KIND: &'static str = "action";
}
impl Entity for Package {
    const TABLE: &'static str = "whisk_packages";
    const KIND: &'static str = "package";
}
impl Entity for Trigger {
    const TABLE: &'static str = "whisk_triggers";
    const KIND: &'static str = "trigger";
}
impl Entity for Rule {
    const TABLE: &'static str = "whisk_rules";
    const KIND: &'static str = "rule";
}

/// Entities over a [`StateStore`].
#[derive(Clone)]
pub struct EntityStore {
    store: Arc<dyn StateStore>,
}

impl std::fmt::Debug for EntityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityStore").field("store", &self.store.describe()).finish()
    }
}

impl EntityStore {
    /// Entities kept in `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        EntityStore { store }
    }

    /// The store underneath (for the tables kept beside the entities: feeds).
    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// The entity at `path`.
    pub fn get<E: Entity>(&self, path: &EntityPath) -> Result<Option<E>> {
        match self.store.get(E::TABLE, path.key().as_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| {
                Error::internal(format!("the stored {} {path} is unreadable: {e}", E::KIND))
            }),
        }
    }

    /// The entity at `path`, or OpenWhisk's 404.
    pub fn require<E: Entity>(&self, path: &EntityPath) -> Result<E> {
        self.get(path)?.ok_or_else(|| Error::NotFound { kind: E::KIND, name: path.fqn() })
    }

    /// Writes `entity` at `path`, durably.
    pub async fn put<E: Entity>(&self, path: &EntityPath, entity: &E) -> Result<()> {
        let v = serde_json::to_vec(entity)
            .map_err(|e| Error::internal(format!("encoding the {} {path}: {e}", E::KIND)))?;
        self.store.commit(vec![StateOp::put(E::TABLE, path.key().into_bytes(), v)]).await
    }

    /// Removes the entity at `path`.
    pub async fn delete<E: Entity>(&self, path: &EntityPath) -> Result<()> {
        self.store.commit(vec![StateOp::delete(E::TABLE, path.key().into_bytes())]).await
    }

    /// The entities whose key starts with `prefix` (`ns/` for a namespace's, `ns/pkg/` for
    /// a package's actions), in key order.
    pub fn list<E: Entity>(&self, prefix: &str) -> Result<Vec<E>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(E::TABLE)? {
            if !k.starts_with(prefix.as_bytes()) {
                continue;
            }
            match serde_json::from_slice(&v) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!(
                    key = %String::from_utf8_lossy(&k),
                    "skipping an unreadable {}: {e}",
                    E::KIND
                ),
            }
        }
        Ok(out)
    }
}

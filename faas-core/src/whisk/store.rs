//! Where entities are kept: one [`StateStore`] table per kind, key
//! `namespace/[package/]name`, value the entity's JSON. Every write is committed before
//! the API answers, so an entity the API accepted survives a restart.
//!
//! Entities read are kept decoded (every invocation reads its action, and a sequence each
//! component's), until a write through this store changes them: the store's tables are
//! written only through it.

use std::any::Any;
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

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

/// Decoded entities by table and key (`None`: known to be absent), and a count of the
/// writes, so that a read that raced a write does not keep what it read.
#[derive(Default)]
struct Decoded {
    entities: FxHashMap<(&'static str, String), Option<Arc<dyn Any + Send + Sync>>>,
    writes: u64,
}

/// Entities over a [`StateStore`]. Clones share the store and the decoded entities.
#[derive(Clone)]
pub struct EntityStore {
    store: Arc<dyn StateStore>,
    decoded: Arc<Mutex<Decoded>>,
}

/// The most entities kept decoded; past it the whole cache is dropped (and refilled by
/// the reads that follow).
const MAX_DECODED: usize = 10_000;

impl std::fmt::Debug for EntityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityStore").field("store", &self.store.describe()).finish()
    }
}

impl EntityStore {
    /// Entities kept in `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        EntityStore { store, decoded: Arc::default() }
    }

    fn forget(&self, table: &'static str, key: &str) {
        if let Ok(mut d) = self.decoded.lock() {
            d.entities.remove(&(table, key.to_string()));
            d.writes += 1;
        }
    }

    /// A number that changes with every write through this store (before and after the
    /// write is committed): what was derived from entities read at one generation is still
    /// true while the generation is the same.
    pub fn generation(&self) -> u64 {
        self.decoded.lock().map_or(u64::MAX, |d| d.writes)
    }

    /// The store underneath (for the tables kept beside the entities: feeds).
    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// The entity at `path`.
    pub fn get<E: Entity>(&self, path: &EntityPath) -> Result<Option<E>> {
        Ok(self.get_shared::<E>(path)?.map(|e| (*e).clone()))
    }

    /// The entity at `path`, shared with the store's decoded copy.
    pub fn get_shared<E: Entity>(&self, path: &EntityPath) -> Result<Option<Arc<E>>> {
        let key = path.key();
        let (cached, writes) = match self.decoded.lock() {
            Ok(d) => (d.entities.get(&(E::TABLE, key.clone())).cloned(), d.writes),
            Err(_) => (None, u64::MAX),
        };
        if let Some(entry) = cached {
            return Ok(entry.and_then(|e| e.downcast::<E>().ok()));
        }
        let entity: Option<Arc<E>> = match self.store.get(E::TABLE, key.as_bytes())? {
            None => None,
            Some(v) => Some(Arc::new(serde_json::from_slice(&v).map_err(|e| {
                Error::internal(format!("the stored {} {path} is unreadable: {e}", E::KIND))
            })?)),
        };
        if let Ok(mut d) = self.decoded.lock() {
            if d.writes == writes {
                if d.entities.len() >= MAX_DECODED {
                    d.entities.clear();
                }
                let any = entity.clone().map(|e| e as Arc<dyn Any + Send + Sync>);
                d.entities.insert((E::TABLE, key), any);
            }
        }
        Ok(entity)
    }

    /// The entity at `path`, or OpenWhisk's 404.
    pub fn require<E: Entity>(&self, path: &EntityPath) -> Result<E> {
        self.get(path)?.ok_or_else(|| Error::NotFound { kind: E::KIND, name: path.fqn() })
    }

    /// Writes `entity` at `path`, durably.
    pub async fn put<E: Entity>(&self, path: &EntityPath, entity: &E) -> Result<()> {
        let v = serde_json::to_vec(entity)
            .map_err(|e| Error::internal(format!("encoding the {} {path}: {e}", E::KIND)))?;
        let key = path.key();
        self.forget(E::TABLE, &key);
        let r = self.store.commit(vec![StateOp::put(E::TABLE, key.clone().into_bytes(), v)]).await;
        // Again after the write: a read while it ran may have cached the old entity.
        self.forget(E::TABLE, &key);
        r
    }

    /// Removes the entity at `path`.
    pub async fn delete<E: Entity>(&self, path: &EntityPath) -> Result<()> {
        let key = path.key();
        self.forget(E::TABLE, &key);
        let r = self.store.commit(vec![StateOp::delete(E::TABLE, key.clone().into_bytes())]).await;
        self.forget(E::TABLE, &key);
        r
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStateStore;

    fn trigger(version: &str) -> Trigger {
        Trigger {
            namespace: "guest".into(),
            name: "t".into(),
            version: version.into(),
            publish: false,
            parameters: Vec::new(),
            annotations: Vec::new(),
            limits: Default::default(),
            updated: 0,
        }
    }

    #[tokio::test]
    async fn reads_see_every_write_through_any_clone() {
        let store = EntityStore::new(Arc::new(MemoryStateStore::default()));
        let other = store.clone();
        let path = EntityPath::new("guest", None, "t");
        assert!(store.get::<Trigger>(&path).unwrap().is_none(), "absent, and cached so");
        other.put(&path, &trigger("0.0.1")).await.unwrap();
        assert_eq!(store.require::<Trigger>(&path).unwrap().version, "0.0.1");
        other.put(&path, &trigger("0.0.2")).await.unwrap();
        assert_eq!(store.require::<Trigger>(&path).unwrap().version, "0.0.2");
        // Decoded copies are shared, and typed by table: a rule of that name is not there.
        let a = store.get_shared::<Trigger>(&path).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &store.get_shared::<Trigger>(&path).unwrap().unwrap()));
        assert!(store.get::<Rule>(&path).unwrap().is_none());
        other.delete::<Trigger>(&path).await.unwrap();
        assert!(store.get::<Trigger>(&path).unwrap().is_none());
    }
}

//! # faas-backend-k8s
//!
//! The Kubernetes backend of faas-rs: [`KubernetesInvoker`] implements
//! [`faas_core::Backend`] over the Kubernetes API with [`kube`], the way OpenFaaS's
//! faas-netes does. A function is a Deployment plus a Service labelled
//! `faas_function=<name>` in the function namespace (default `openfaas-fn`); secrets are
//! Kubernetes Secrets mounted at `/var/openfaas/secrets/<name>`; replicas go through the
//! Deployment's `scale` subresource; invocations go over HTTP to the Service (or to ready pod
//! endpoints chosen by a [`faas_core::Scheduler`]), scaling from zero first when needed.
//!
//! [`manifests`] holds the pure mapping from specs to objects, and [`render_manifests`]
//! prints them for `kubectl apply` (what `faas generate -f stack.yml` prints).
//!
//! See the crate README for what has and has not been run against a live cluster.

mod error;
pub mod invoker;
pub mod manifests;

pub use invoker::{connect, KubernetesInvoker, KubernetesInvokerBuilder};
pub use manifests::{render_manifests, ManifestFormat, ManifestOptions};

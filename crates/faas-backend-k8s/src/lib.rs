//! faas-backend-k8s: not built yet (see its issue).

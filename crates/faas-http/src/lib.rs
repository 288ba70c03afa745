//! faas-http: not built yet (see its issue).

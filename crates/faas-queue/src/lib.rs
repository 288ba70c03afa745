//! faas-queue: not built yet (see its issue).

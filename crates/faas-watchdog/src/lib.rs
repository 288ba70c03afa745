//! faas-watchdog: not built yet (see its issue).

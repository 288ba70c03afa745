//! faas-backend-docker: not built yet (see its issue).

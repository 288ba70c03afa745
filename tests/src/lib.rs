//! faas-tests.

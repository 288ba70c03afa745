//! faas-examples.

//! faas-benches: shared helpers for the benchmarks.

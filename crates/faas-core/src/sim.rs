//! Deterministic simulation of invocation traces over a cluster. (Being built: see issue 7.)

//! The in-memory backend: Rust handlers deployed in-process. (Being built: see issue 2.)

//! Autoscaling decisions (KPA model). (Being built: see issue 7.)

//! Tower layers for invokers and functions. (Being built: see issue 2.)

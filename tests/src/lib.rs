//! The testbed: real parts, really started.

pub mod kubeapi;

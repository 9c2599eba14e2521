//! The subcommands besides `run`, each a one-off tool an operator runs on a node:
//!
//! - [`doctor`]: what will and will not work on this node, and why.
//! - [`status`]: a running agent's targets, with the reason of those that are down.
//! - [`capture`]: what the probe sees of one pod's port, printed as it comes.

pub mod capture;
pub mod doctor;
pub mod status;

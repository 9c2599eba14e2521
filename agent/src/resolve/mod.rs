//! Resolve: from a pod to its network namespace, and running code inside that namespace on a
//! dedicated thread (`setns` affects only the calling thread).

pub mod cgroup;
pub mod netns;

use crate::discover::NetnsRef;
use netns::{Netns, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("no running process found for containers {0:?}")]
    NoProcess(Vec<String>),
}

/// Opens the network namespace a pod's reference points to.
pub fn resolve(reference: &NetnsRef) -> Result<Netns, ResolveError> {
    match reference {
        NetnsRef::Path(path) => Ok(Netns::open(path)?),
        NetnsRef::Pid(pid) => Ok(Netns::of_pid(*pid)?),
        NetnsRef::Containers(ids) => Err(ResolveError::NoProcess(ids.clone())),
    }
}

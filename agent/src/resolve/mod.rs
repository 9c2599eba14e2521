//! Resolve: from a pod to its network namespace, and running code inside that namespace on a
//! dedicated thread (`setns` affects only the calling thread).

pub mod cgroup;
pub mod netns;

use crate::discover::NetnsRef;
use cgroup::ProcIndex;
use netns::{Netns, NetnsError};

/// Identity of a network namespace as the kernel reports it (`SO_NETNS_COOKIE`,
/// `bpf_get_netns_cookie`): unique for the namespace's lifetime, never reused.
pub type NetnsCookie = u64;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("no running process found for containers {0:?}")]
    NoProcess(Vec<String>),
}

/// Opens the network namespace a pod's reference points to. `procs` is an index of
/// `/proc/*/cgroup`, scanned once per discovery change for all pods that name containers.
pub fn resolve(reference: &NetnsRef, procs: Option<&ProcIndex>) -> Result<Netns, ResolveError> {
    match reference {
        NetnsRef::Path(path) => Ok(Netns::open(path)?),
        NetnsRef::Pid(pid) => Ok(Netns::of_pid(*pid)?),
        NetnsRef::Containers(ids) => {
            let pid = procs
                .and_then(|p| p.pid_of_any(ids))
                .ok_or_else(|| ResolveError::NoProcess(ids.clone()))?;
            Ok(Netns::of_pid(pid)?)
        }
    }
}

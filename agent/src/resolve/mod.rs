//! Resolve: from a pod to its network namespace, and running code inside that namespace on a
//! dedicated thread (`setns` affects only the calling thread).

pub mod cgroup;
pub mod netns;

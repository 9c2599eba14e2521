//! Kubelet-style cgroups, so a process looks like a container to `/proc/PID/cgroup` readers.
//!
//! cgroup v2 (mounted at /sys/fs/cgroup/unified here, systemd driver):
//! `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/cri-containerd-<id>.scope`.
//! cgroup v1 (cgroupfs driver) in the `pids` and `cpu` hierarchies: `kubepods/<qos>/pod<uid>/<id>`.
//! The v1 `memory` hierarchy is left alone: the machine's own supervisor uses it.

use std::path::{Path, PathBuf};

use crate::{io_err, unique_suffix, Result};

pub const V2_ROOT: &str = "/sys/fs/cgroup/unified";
pub const V1_ROOTS: &[&str] = &["/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu"];

/// A fresh pod UID (UUID layout), unique per process and call.
pub fn new_pod_uid() -> String {
    let (pid, n) = unique_suffix();
    format!("10ad0000-{:04x}-4000-8000-{:012x}", n & 0xffff, pid)
}

/// A fresh 64-hex container ID, unique per process and call.
pub fn new_container_id() -> String {
    let (pid, n) = unique_suffix();
    format!("{:032x}{:016x}{:016x}", 0x10ad_u128, pid, n)
}

/// The kubelet's cgroup v2 path (systemd driver) of a container, relative to the v2 root.
pub fn v2_path(qos: &str, pod_uid: &str, container_id: &str) -> PathBuf {
    let uid = pod_uid.replace('-', "_");
    PathBuf::from("kubepods.slice")
        .join(format!("kubepods-{qos}.slice"))
        .join(format!("kubepods-{qos}-pod{uid}.slice"))
        .join(format!("cri-containerd-{container_id}.scope"))
}

/// The kubelet's cgroup v1 path (cgroupfs driver) of a container, relative to a hierarchy root.
pub fn v1_path(qos: &str, pod_uid: &str, container_id: &str) -> PathBuf {
    PathBuf::from("kubepods")
        .join(qos)
        .join(format!("pod{pod_uid}"))
        .join(container_id)
}

/// A process placed into kubelet-style cgroups. On drop, processes still inside are moved back to
/// the hierarchy roots and the directories this guard created are removed, deepest first.
#[derive(Debug)]
pub struct KubeCgroups {
    pub pod_uid: String,
    pub container_id: String,
    created: Vec<PathBuf>,
    leaves: Vec<(PathBuf, PathBuf)>,
}

impl KubeCgroups {
    /// Puts `pid` into the container's cgroup in v2 and in the v1 `pids` and `cpu` hierarchies
    /// (those that are mounted).
    pub fn place(pid: u32, qos: &str, pod_uid: &str, container_id: &str) -> Result<KubeCgroups> {
        let mut guard = KubeCgroups {
            pod_uid: pod_uid.to_string(),
            container_id: container_id.to_string(),
            created: Vec::new(),
            leaves: Vec::new(),
        };
        let mut targets = Vec::new();
        if Path::new(V2_ROOT).join("cgroup.procs").exists() {
            targets.push((PathBuf::from(V2_ROOT), v2_path(qos, pod_uid, container_id)));
        }
        for root in V1_ROOTS {
            if Path::new(root).join("cgroup.procs").exists() {
                targets.push((PathBuf::from(root), v1_path(qos, pod_uid, container_id)));
            }
        }
        for (root, rel) in targets {
            let mut dir = root.clone();
            for part in rel.components() {
                dir.push(part);
                if !dir.exists() {
                    std::fs::create_dir(&dir)
                        .map_err(io_err(format!("creating cgroup {}", dir.display())))?;
                    guard.created.push(dir.clone());
                }
            }
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(io_err(format!(
                "moving pid {pid} into cgroup {}",
                dir.display()
            )))?;
            guard.leaves.push((root, dir));
        }
        Ok(guard)
    }

    /// The leaf directories the process was placed in.
    pub fn leaves(&self) -> impl Iterator<Item = &Path> {
        self.leaves.iter().map(|(_, leaf)| leaf.as_path())
    }
}

impl Drop for KubeCgroups {
    fn drop(&mut self) {
        for (root, leaf) in &self.leaves {
            let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        // Created parents come before their children in `created`: remove in reverse.
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The lines of `/proc/PID/cgroup`.
pub fn proc_cgroup(pid: u32) -> Result<String> {
    let path = format!("/proc/{pid}/cgroup");
    std::fs::read_to_string(&path).map_err(io_err(format!("reading {path}")))
}

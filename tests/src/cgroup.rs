//! Kubelet-style cgroups, so a process looks like a container to `/proc/PID/cgroup` readers.
//!
//! cgroup v2 (mounted at /sys/fs/cgroup/unified here, systemd driver):
//! `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/cri-containerd-<id>.scope`.
//! cgroup v1 (cgroupfs driver) in the `pids` and `cpu` hierarchies: `kubepods/<qos>/pod<uid>/<id>`.
//! The v1 `memory` hierarchy is the machine supervisor's: only [`MemoryCgroup`] touches it, with a
//! child below this process's own memory cgroup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{io_err, unique_suffix, wait_for, Result};

pub const V1_ROOTS: &[&str] = &["/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu"];

/// The cgroup v2 root: /sys/fs/cgroup on pure v2 hosts, .../unified on hybrid ones (this one).
pub fn v2_root() -> PathBuf {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/unified")
    }
}

/// How the kubelet places a container's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2, systemd driver: `kubepods.slice/.../cri-containerd-<id>.scope`.
    V2Systemd,
    /// cgroup v1, cgroupfs driver: `kubepods/<qos>/pod<uid>/<id>` (pids and cpu hierarchies).
    V1Cgroupfs,
}

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
    /// (those that are mounted), at the hierarchies' roots as the kubelet does.
    pub fn place(pid: u32, qos: &str, pod_uid: &str, container_id: &str) -> Result<KubeCgroups> {
        let layouts = [Layout::V2Systemd, Layout::V1Cgroupfs];
        Self::place_in(pid, &layouts, None, qos, pod_uid, container_id)
    }

    /// [`Self::place`] in the given layouts (hierarchies that are not mounted are left out),
    /// under a directory `top` of its own in each hierarchy when given, so that tests running
    /// in parallel never share (and so never leave behind) a directory.
    pub fn place_in(
        pid: u32,
        layouts: &[Layout],
        top: Option<&str>,
        qos: &str,
        pod_uid: &str,
        container_id: &str,
    ) -> Result<KubeCgroups> {
        let mut guard = KubeCgroups {
            pod_uid: pod_uid.to_string(),
            container_id: container_id.to_string(),
            created: Vec::new(),
            leaves: Vec::new(),
        };
        let mut targets = Vec::new();
        for layout in layouts {
            let (roots, rel, top) = match layout {
                Layout::V2Systemd => (
                    vec![v2_root()],
                    v2_path(qos, pod_uid, container_id),
                    top.map(|t| format!("{t}.slice")),
                ),
                Layout::V1Cgroupfs => (
                    V1_ROOTS.iter().map(PathBuf::from).collect(),
                    v1_path(qos, pod_uid, container_id),
                    top.map(str::to_string),
                ),
            };
            for root in roots
                .into_iter()
                .filter(|r| r.join("cgroup.procs").exists())
            {
                let rel = match &top {
                    Some(top) => Path::new(top).join(&rel),
                    None => rel.clone(),
                };
                targets.push((root, rel));
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
            // A just-reaped task can keep a cgroup busy for a moment.
            let _ = wait_for(
                &format!("removing cgroup {}", dir.display()),
                Duration::from_secs(2),
                || match std::fs::remove_dir(dir) {
                    Ok(()) => Ok(Some(())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(())),
                    Err(e) => Err(e.to_string()),
                },
            );
        }
    }
}

/// The lines of `/proc/PID/cgroup`.
pub fn proc_cgroup(pid: u32) -> Result<String> {
    let path = format!("/proc/{pid}/cgroup");
    std::fs::read_to_string(&path).map_err(io_err(format!("reading {path}")))
}

/// This process's memory cgroup (v1), below which memory-limited cgroups and containers live.
pub fn own_memory_cgroup() -> Result<String> {
    let own = proc_cgroup(std::process::id())?;
    own.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })
        .ok_or_else(|| crate::Error::Invalid {
            what: "/proc/self/cgroup".into(),
            detail: "no memory hierarchy".into(),
        })
}

/// A v1 memory cgroup with a limit, made below this process's own memory cgroup (never at the
/// hierarchy's root) and removed on drop, once the processes in it have exited.
#[derive(Debug)]
pub struct MemoryCgroup {
    pub dir: PathBuf,
}

impl MemoryCgroup {
    pub fn new(limit_bytes: u64) -> Result<MemoryCgroup> {
        let (pid, n) = unique_suffix();
        let own = own_memory_cgroup()?;
        let dir = PathBuf::from("/sys/fs/cgroup/memory")
            .join(own.trim_start_matches('/'))
            .join(format!("loupe-test-{pid}-{n}"));
        std::fs::create_dir(&dir).map_err(io_err(format!("creating cgroup {}", dir.display())))?;
        let cgroup = MemoryCgroup { dir };
        cgroup.write("memory.limit_in_bytes", &limit_bytes.to_string())?;
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).map_err(io_err(format!("writing {}", path.display())))
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))
    }

    /// The `cgroup.procs` file: a process that writes `0` (or its pid) there moves into it.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Processes the OOM killer killed in it (`oom_kill` of `memory.oom_control`, Linux 4.13+).
    pub fn oom_kills(&self) -> Result<u64> {
        let control = self.read("memory.oom_control")?;
        control
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| crate::Error::Invalid {
                what: format!("{}/memory.oom_control", self.dir.display()),
                detail: format!("no oom_kill count in {control:?}"),
            })
    }

    /// The most memory its processes held at once, in bytes.
    pub fn max_usage(&self) -> Result<u64> {
        let v = self.read("memory.max_usage_in_bytes")?;
        v.trim().parse().map_err(|_| crate::Error::Invalid {
            what: format!("{}/memory.max_usage_in_bytes", self.dir.display()),
            detail: format!("not a number: {v:?}"),
        })
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let dir = self.dir.clone();
        let _ = wait_for(
            &format!("removing cgroup {}", dir.display()),
            Duration::from_secs(10),
            || match std::fs::remove_dir(&dir) {
                Ok(()) => Ok(Some(())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(())),
                Err(e) => Err(e.to_string()),
            },
        );
    }
}

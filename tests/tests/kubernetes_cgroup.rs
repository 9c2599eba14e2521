//! Container ID -> PID on the real kernel: a process placed in kubelet-style cgroups (cgroup v2
//! systemd layout, cgroup v1 cgroupfs layout) is found by `ProcIndex` through the real `/proc`.
//! Needs root and writable cgroup hierarchies; skipped otherwise (a failure when `CI=true`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};

use loupe_agent::resolve::cgroup::ProcIndex;
use loupe_testkit::root;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Cgroup directories created by a test, removed deepest first on drop (after the process left).
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    /// Creates `root/rel` one level at a time, remembering each directory it made.
    fn create(root: &Path, rel: &str) -> std::io::Result<(Cgroups, PathBuf)> {
        let mut made = Cgroups(Vec::new());
        let mut dir = root.to_path_buf();
        for part in rel.split('/') {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)?;
                made.0.push(dir.clone());
            }
        }
        Ok((made, dir))
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("cannot remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn unique_id() -> (String, String) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let id = format!("{pid:08x}{n:08x}{}", "ab".repeat(24));
    let uid = format!("{pid:08x}-{n:04x}-4000-8000-00000000cafe");
    (id, uid)
}

fn place_and_resolve(test: &str, root: &Path, rel: &str, id: &str) {
    let sleeper = Sleeper(
        Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = sleeper.0.id();
    let (cgroups, leaf) = match Cgroups::create(root, rel) {
        Ok(made) => made,
        Err(e) => {
            root::skip(test, &format!("cannot create cgroup {root:?}/{rel}: {e}"));
            return;
        }
    };
    std::fs::write(leaf.join("cgroup.procs"), pid.to_string()).expect("move into cgroup");
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read cgroup");
    assert!(
        own.contains(id),
        "/proc/{pid}/cgroup does not show the container: {own}"
    );

    let index = ProcIndex::scan(Path::new("/proc")).expect("scan /proc");
    assert_eq!(index.pid_of(&format!("containerd://{id}")), Some(pid));
    assert!(index.scanned > 1);

    drop(sleeper);
    drop(cgroups);
    let index = ProcIndex::scan(Path::new("/proc")).expect("scan /proc");
    assert_eq!(
        index.pid_of(id),
        None,
        "the exited process is no longer found"
    );
}

/// The hierarchy at `path`, when `test` can create cgroups there.
fn writable_hierarchy(test: &str, path: &str) -> Option<PathBuf> {
    let hierarchy = PathBuf::from(path);
    if !hierarchy.join("cgroup.procs").exists() {
        root::skip(test, &format!("needs a cgroup hierarchy at {path}"));
        return None;
    }
    root::require(test, "cgroups").then_some(hierarchy)
}

#[test]
fn resolves_a_process_in_a_cgroup_v2_systemd_layout() {
    // Hybrid hosts mount v2 at .../unified; pure v2 hosts at /sys/fs/cgroup itself.
    let root = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/unified"
    };
    let test = "resolves_a_process_in_a_cgroup_v2_systemd_layout";
    let Some(root) = writable_hierarchy(test, root) else {
        return;
    };
    let (id, uid) = unique_id();
    let uid_ = uid.replace('-', "_");
    let rel = format!(
        "loupe-test-{}.slice/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope",
        std::process::id()
    );
    place_and_resolve(test, &root, &rel, &id);
}

#[test]
fn resolves_a_process_in_a_cgroup_v1_cgroupfs_layout() {
    // The pids controller, never memory: the machine's own supervisor uses that hierarchy.
    let test = "resolves_a_process_in_a_cgroup_v1_cgroupfs_layout";
    let Some(root) = writable_hierarchy(test, "/sys/fs/cgroup/pids") else {
        return;
    };
    let (id, uid) = unique_id();
    let rel = format!(
        "loupe-test-{}/kubepods/burstable/pod{uid}/{id}",
        std::process::id()
    );
    place_and_resolve(test, &root, &rel, &id);
}

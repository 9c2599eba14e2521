//! Discovery through the API plus resolution through the real /proc: "containers" are processes
//! in their own network namespaces and kubelet-style cgroups, described by Pod objects whose
//! container IDs match. loupe's Kubernetes discovery finds this node's pods, and `ProcIndex`
//! leads from each published container ID to a PID whose network namespace is the pod's.
//! Needs root, `ip` and a writable cgroup v2 hierarchy; skipped otherwise (a failure when `CI=true`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loupe_agent::discover::kubernetes::{self, BackoffPolicy, KubeConfig};
use loupe_agent::discover::{NetnsRef, Pod};
use loupe_agent::resolve::cgroup::ProcIndex;
use loupe_testkit::root;
use loupe_tests::kubeapi::{running_pod, KubeApi};
use serde_json::json;
use tokio::sync::watch;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "lp{tag}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn add(name: &str) -> Netns {
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        Netns(name.to_string())
    }

    fn inode(&self) -> u64 {
        std::fs::metadata(format!("/var/run/netns/{}", self.0))
            .expect("netns file")
            .ino()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A process in a pod: `sleep` inside the namespace and a kubelet-style cgroup; killed and its
/// cgroups removed on drop.
struct Container {
    child: Child,
    cgroups: Vec<PathBuf>,
}

impl Container {
    fn start(root: &Path, netns: &Netns, pod_uid: &str, id: &str) -> Container {
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.0, "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        let uid_ = pod_uid.replace('-', "_");
        let rel = format!(
            "loupe-test-{}.slice/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope",
            std::process::id()
        );
        let mut container = Container {
            child,
            cgroups: Vec::new(),
        };
        let mut dir = root.to_path_buf();
        for part in rel.split('/') {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).expect("mkdir cgroup");
                container.cgroups.push(dir.clone());
            }
        }
        // `ip netns exec` execs sleep in place, so the child's PID is the sleeper's; wait until
        // it has entered the namespace.
        let pid = container.child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| m.ino())
            .ok()
            != Some(netns.inode())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} never entered {}",
                netns.0
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::write(dir.join("cgroup.procs"), container.child.id().to_string())
            .expect("move into cgroup");
        container
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in self.cgroups.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The test's own top cgroup (`loupe-test-PID.slice`), removed bottom-up after every container.
struct CgroupTree(PathBuf);

impl CgroupTree {
    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::remove(&entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        Self::remove(&self.0);
    }
}

/// The cgroup v2 root, when `test` can run: root, `ip` and a cgroup v2 hierarchy.
fn available(test: &str) -> Option<PathBuf> {
    if !root::require(test, "network namespaces, cgroups") {
        return None;
    }
    if !Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        root::skip(test, "iproute2 `ip` is not installed");
        return None;
    }
    let root = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/unified")
    };
    if !root.join("cgroup.procs").exists() {
        root::skip(test, "needs a cgroup v2 hierarchy");
        return None;
    }
    Some(root)
}

fn netns_inode_of(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("ns/net")
        .ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_pods_resolve_to_their_network_namespaces() {
    let Some(root) = available("discovered_pods_resolve_to_their_network_namespaces") else {
        return;
    };
    // Declared before the containers: dropped after them, once the cgroups are empty.
    let _tree = CgroupTree(root.join(format!("loupe-test-{}.slice", std::process::id())));
    let api = KubeApi::start().await.expect("start api");
    let node = unique("node");

    // Two pods on this node (one with two containers), one on another node.
    let mut pods = Vec::new();
    for (i, containers) in [1usize, 2, 1].into_iter().enumerate() {
        let netns = Netns::add(&unique("ns"));
        let uid = format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), i);
        let ids: Vec<String> = (0..containers)
            .map(|c| {
                format!(
                    "{:08x}{:08x}{c:048x}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed)
                )
            })
            .collect();
        let procs: Vec<Container> = ids
            .iter()
            .map(|id| Container::start(&root, &netns, &uid, id))
            .collect();
        let on = if i == 2 { "other-node" } else { node.as_str() };
        let names: Vec<String> = (0..containers).map(|c| format!("c{c}")).collect();
        let status: Vec<(String, String)> = names
            .iter()
            .zip(&ids)
            .map(|(n, id)| (n.clone(), format!("containerd://{id}")))
            .collect();
        let refs: Vec<(&str, &str)> = status
            .iter()
            .map(|(n, id)| (n.as_str(), id.as_str()))
            .collect();
        let mut pod = running_pod("shop", &format!("pod{i}"), on, &refs, json!({}));
        pod["metadata"]["uid"] = json!(uid);
        api.create_pod(pod).expect("create pod");
        pods.push((netns, procs));
    }

    let dir = std::env::temp_dir().join(unique("kcfg"));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = api.write_kubeconfig(&dir).expect("kubeconfig");
    let (tx, mut rx) = watch::channel(Vec::<Pod>::new());
    let task = tokio::spawn(kubernetes::run_with(
        KubeConfig {
            node_name: node.clone(),
            kubeconfig: Some(kubeconfig),
            sidecar_stats: false,
            target_labels: Default::default(),
        },
        BackoffPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        tx,
    ));
    let published = tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|p| p.len() == 2))
        .await
        .map(|r| r.map(|p| p.clone()));
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
    let published = published
        .expect("two pods in time")
        .expect("discovery alive");

    let index = ProcIndex::scan(Path::new("/proc")).expect("scan /proc");
    for (i, pod) in published.iter().enumerate() {
        assert_eq!(
            pod.name,
            format!("pod{i}"),
            "pods of other nodes are ignored"
        );
        let NetnsRef::Containers(ids) = &pod.netns else {
            panic!("{} has no container IDs", pod.name);
        };
        let (netns, procs) = &pods[i];
        assert_eq!(ids.len(), procs.len());
        for id in ids {
            let pid = index.pid_of(id).expect("container resolves to a pid");
            assert!(
                procs.iter().any(|c| c.child.id() == pid),
                "{id} resolved to an unrelated pid {pid}"
            );
            assert_eq!(
                netns_inode_of(pid),
                netns.inode(),
                "{}: the resolved pid is in the pod's network namespace",
                pod.name
            );
        }
    }
}

//! Discover: which pods exist on this node, where their network namespaces are, and which metrics
//! endpoints each one has. Every source publishes whole snapshots of its pods on a
//! `tokio::sync::watch` channel; the rest of the agent reconciles against the latest snapshot.

pub mod annotations;
pub mod kubernetes;
pub mod pods_file;
pub mod target_labels;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// A pod as loupe needs it: its identity, how to reach its network namespace, its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// Kubernetes UID when known; tells a re-created pod of the same name apart.
    pub uid: String,
    pub netns: NetnsRef,
    pub endpoints: Vec<Endpoint>,
    /// The pod's own scrape limits, over the agent's defaults.
    pub limits: Limits,
    /// The pod's IP, when known: its endpoints' `instance` is `IP:port`.
    pub ip: Option<IpAddr>,
    /// The `job` of its endpoints ([`target_labels`]).
    pub job: String,
    /// Its labels copied onto its series (`--pod-labels`): sanitised names, sorted.
    pub labels: Vec<(String, String)>,
}

/// Endpoints one pod can have scraped, whichever source declared them (a pod with several
/// containers and a sidecar rarely needs more than four); the rest are reported, not scraped, so
/// one pod cannot take every fetch slot and watched port of the node.
pub const MAX_ENDPOINTS_PER_POD: usize = 16;

/// A pod's scrape limits, with Prometheus' names and meaning (0: none); `None` keeps the
/// agent's default (`--sample-limit`, ...). Set by `loupe.dev/sample-limit`, ... annotations or
/// a pods file's `limits:`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub sample_limit: Option<usize>,
    pub label_limit: Option<usize>,
    pub label_name_length_limit: Option<usize>,
    pub label_value_length_limit: Option<usize>,
    /// Bytes of the body after decompression.
    pub body_size_limit: Option<usize>,
}

impl Pod {
    pub fn key(&self) -> PodKey {
        PodKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// `namespace/name` of a pod: the key of everything per pod in the agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One endpoint of one pod: the key of a target everywhere after discovery.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub pod: PodKey,
    pub port: u16,
    pub path: String,
}

/// The identity labels every sample of a target gets: who it is, and the target labels a
/// direct scrape would have given it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub endpoint: String,
    pub job: String,
    /// `podIP:port`; empty when the pod's IP is not known (the series then carry the node
    /// target's `instance`).
    pub instance: String,
    /// The pod's copied labels: sanitised names, sorted.
    pub pod_labels: Vec<(String, String)>,
}

impl Identity {
    /// Pod `pod` of namespace `ns`, endpoint `8080`, no container: the tests' stock target.
    #[cfg(test)]
    pub(crate) fn of_test_pod(pod: &str) -> Self {
        Self {
            namespace: "ns".into(),
            pod: pod.into(),
            endpoint: "8080".into(),
            ..Default::default()
        }
    }

    /// The labels as the merge takes them.
    pub fn labels(&self) -> crate::decode::IdentityLabels<'_> {
        crate::decode::IdentityLabels {
            namespace: &self.namespace,
            pod: &self.pod,
            container: &self.container,
            endpoint: &self.endpoint,
            job: &self.job,
            instance: &self.instance,
            pod_labels: &self.pod_labels,
        }
    }
}

/// How to find a pod's network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsRef {
    /// A bind-mounted namespace file, e.g. `/var/run/netns/cart`.
    Path(PathBuf),
    /// A process inside the pod: the namespace is `/proc/PID/ns/net`.
    Pid(u32),
    /// Container IDs (without the `containerd://` prefix) to look up in `/proc/*/cgroup`.
    Containers(Vec<String>),
}

/// `containerd://abc` -> `abc`, also for `cri-o://` and `docker://`: the container ID as the
/// kubelet reports it, without its runtime's scheme.
pub fn strip_runtime_prefix(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

/// One metrics endpoint of a pod: an HTTP path on a loopback port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub port: u16,
    /// Request path, `/metrics` unless configured.
    pub path: String,
    /// The container that declares the port, when known.
    pub container: Option<String>,
    /// The port's name; the `endpoint` label is this or else the port number.
    pub name: Option<String>,
}

impl Pod {
    /// The key and identity labels of the target each endpoint is.
    pub fn targets(&self) -> impl Iterator<Item = (TargetKey, Identity)> + '_ {
        self.endpoints.iter().map(|endpoint| {
            let key = TargetKey {
                pod: self.key(),
                port: endpoint.port,
                path: endpoint.path.clone(),
            };
            let identity = Identity {
                namespace: self.namespace.clone(),
                pod: self.name.clone(),
                container: endpoint.container.clone().unwrap_or_default(),
                endpoint: endpoint.label(),
                job: self.job.clone(),
                // As Prometheus' `kubernetes_sd` gives it (`[v6]:port` for IPv6).
                instance: self
                    .ip
                    .map(|ip| SocketAddr::new(ip, endpoint.port).to_string())
                    .unwrap_or_default(),
                pod_labels: self.labels.clone(),
            };
            (key, identity)
        })
    }
}

/// An endpoint whose `job` and `instance` an earlier endpoint has (two paths on one port, or
/// pods given one IP): it is served without an `instance` of its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Clash {
    pub key: TargetKey,
    /// The endpoint that keeps them.
    pub first: TargetKey,
    pub job: String,
    pub instance: String,
}

impl fmt::Display for Clash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pod {} port {} path {} has job {:?} and instance {:?}, as pod {} port {} path {} does; it is served without an instance of its own (the node target's)",
            self.key.pod, self.key.port, self.key.path, self.job, self.instance,
            self.first.pod, self.first.port, self.first.path
        )
    }
}

/// Leaves the later of the targets with one `job` and `instance` without `instance` (the
/// earlier, in the order given, keeps it), so that no two endpoints pass for one scrape target.
pub fn unclash<'a>(
    targets: impl IntoIterator<Item = (&'a TargetKey, &'a mut Identity)>,
) -> Vec<Clash> {
    let mut first: std::collections::HashMap<(String, String), &TargetKey> =
        std::collections::HashMap::new();
    let mut clashes = Vec::new();
    for (key, identity) in targets {
        if identity.instance.is_empty() {
            continue;
        }
        let job_instance = (identity.job.clone(), identity.instance.clone());
        match first.get(&job_instance) {
            Some(&earlier) => {
                clashes.push(Clash {
                    key: key.clone(),
                    first: earlier.clone(),
                    job: identity.job.clone(),
                    instance: std::mem::take(&mut identity.instance),
                });
            }
            None => {
                first.insert(job_instance, key);
            }
        }
    }
    clashes
}

impl Endpoint {
    /// The value of the `endpoint` label.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => self.port.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ports: &[(u16, &str)]) -> Pod {
        Pod {
            namespace: "ns".into(),
            name: name.into(),
            uid: String::new(),
            netns: NetnsRef::Pid(1),
            endpoints: ports
                .iter()
                .map(|&(port, path)| Endpoint {
                    port,
                    path: path.into(),
                    container: None,
                    name: None,
                })
                .collect(),
            limits: Limits::default(),
            ip: ip.parse().ok(),
            job: "web".into(),
            labels: Vec::new(),
        }
    }

    #[test]
    fn the_later_of_two_endpoints_with_one_job_and_instance_loses_its_instance() {
        let pods = [
            pod(
                "a",
                "10.0.0.1",
                &[(8080, "/metrics"), (8080, "/other"), (9090, "/metrics")],
            ),
            pod("b", "10.0.0.1", &[(9090, "/metrics")]),
            pod("c", "", &[(8080, "/metrics")]),
        ];
        let mut targets: Vec<(TargetKey, Identity)> = pods.iter().flat_map(Pod::targets).collect();
        let clashes = unclash(targets.iter_mut().map(|(k, i)| (&*k, i)));
        let instances: Vec<&str> = targets.iter().map(|(_, i)| i.instance.as_str()).collect();
        assert_eq!(instances, ["10.0.0.1:8080", "", "10.0.0.1:9090", "", ""]);
        assert_eq!(clashes.len(), 2);
        assert_eq!(clashes[0].key.path, "/other");
        assert_eq!(clashes[1].key.pod.name, "b");
        assert_eq!(clashes[1].first.pod.name, "a");
        assert!(
            clashes[1].to_string().contains("pod ns/b port 9090"),
            "{}",
            clashes[1]
        );
    }
}

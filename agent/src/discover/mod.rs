//! Discover: which pods exist on this node, where their network namespaces are, and which metrics
//! endpoints each one has. Every source publishes whole snapshots of its pods on a
//! `tokio::sync::watch` channel; the rest of the agent reconciles against the latest snapshot.

pub mod annotations;
pub mod kubernetes;
pub mod pods_file;

use std::fmt;
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

/// The identity labels every sample of a target gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub endpoint: String,
}

impl Identity {
    /// Pod `pod` of namespace `ns`, endpoint `8080`, no container: the tests' stock target.
    #[cfg(test)]
    pub(crate) fn of_test_pod(pod: &str) -> Self {
        Self {
            namespace: "ns".into(),
            pod: pod.into(),
            container: String::new(),
            endpoint: "8080".into(),
        }
    }

    /// The labels as the merge takes them.
    pub fn labels(&self) -> crate::decode::IdentityLabels<'_> {
        crate::decode::IdentityLabels {
            namespace: &self.namespace,
            pod: &self.pod,
            container: &self.container,
            endpoint: &self.endpoint,
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
            };
            (key, identity)
        })
    }
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

//! Kubernetes discovery: watch the pods of this node (field selector `spec.nodeName`) and publish
//! the loupe view of them as whole snapshots.
//!
//! - A pod is published once it is `Running` and at least one of its containers has started with
//!   a container ID; its [`NetnsRef::Containers`] lists the IDs of every running container
//!   (any of them leads to the pod's network namespace), so a restarted container, which gets a new
//!   ID, is re-resolved on the next snapshot.
//! - `hostNetwork` pods are skipped: their loopback is the node's own, shared by every host
//!   process, so what loupe would observe there is not the pod's, and an agent that scrapes the
//!   host's loopback on behalf of one pod could attribute another program's metrics to it.
//!   Such pods are reachable by Prometheus directly (no mesh in the host namespace) anyway.
//! - Pods without any endpoint are published too: eBPF observation may still find theirs.
//! - The watcher (kube-runtime) relists after `410 Gone` and after every reconnect; errors are
//!   retried with capped exponential backoff, and the last published snapshot stays in force while
//!   the API server is away.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod as KubePod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config};
use tokio::sync::watch;

use super::annotations::{self, AnnotationError};
use super::strip_runtime_prefix;
use super::target_labels::{self, PodMeta};
use super::{NetnsRef, Pod, PodKey};

crate::telemetry::counter!(
    pub DISCOVERY_ERRORS,
    "loupe_discovery_errors_total",
    "Malformed or unsupported metrics annotations found on pods (each distinct error once per pod).",
);
crate::telemetry::counter!(
    pub WATCH_ERRORS,
    "loupe_kubernetes_watch_errors_total",
    "Failed list or watch calls to the Kubernetes API server (retried with backoff).",
);
crate::telemetry::counter!(
    pub PODS_DROPPED,
    "loupe_kubernetes_pods_dropped_total",
    "Pods not tracked because this node already had the maximum number of pods loupe tracks.",
);

// Events: each writes its log line and counts it.

fn watch_failed(node: &str, kept: usize, err: &dyn std::fmt::Display) {
    WATCH_ERRORS.inc();
    log::warn!(
        "kubernetes: watching pods of node {node} failed, keeping the last {kept} pods and retrying: {err}"
    );
}

fn annotation_rejected(err: &AnnotationError) {
    DISCOVERY_ERRORS.inc();
    log::warn!("kubernetes: {err}; the pod's other endpoints are still scraped");
}

fn pod_dropped(key: &PodKey) {
    PODS_DROPPED.inc();
    log::warn!("kubernetes: not tracking pod {key}: already tracking {MAX_PODS} pods");
}

/// Far above the kubelet's `maxPods` (110 by default, rarely above 250).
pub const MAX_PODS: usize = 2048;

/// What `loupe run --kubernetes` needs.
#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// Only pods with `spec.nodeName` equal to this are watched.
    pub node_name: String,
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, then the in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    /// Also scrape the mesh sidecar's own stats (Envoy's `:15090/stats/prometheus`).
    pub sidecar_stats: bool,
    /// How pods get their `job` and copied labels.
    pub target_labels: target_labels::Rules,
}

/// Capped exponential backoff between failed API calls.
#[derive(Clone, Copy, Debug)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    /// 0.5 s doubling to 10 s: a returning API server is noticed within ~10 s, while a node's
    /// agent retries at most every 10 s (about 6 calls a minute per node while it is away).
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (KUBECONFIG, ~/.kube/config, in-cluster): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("node name is empty: set --node-name or NODE_NAME")]
    NoNodeName,
}

/// Watches this node's pods and publishes every change on `pods`; returns when every receiver is
/// gone. API outages are retried forever and never end it.
pub async fn run(config: KubeConfig, pods: watch::Sender<Vec<Pod>>) -> Result<(), KubeError> {
    run_with(config, BackoffPolicy::default(), pods).await
}

/// [`run`] with a chosen backoff (tests use a short one).
pub async fn run_with(
    config: KubeConfig,
    backoff: BackoffPolicy,
    pods: watch::Sender<Vec<Pod>>,
) -> Result<(), KubeError> {
    if config.node_name.is_empty() {
        return Err(KubeError::NoNodeName);
    }
    let client = client(config.kubeconfig.as_deref()).await?;
    let api: Api<KubePod> = Api::all(client);
    let selector = format!("spec.nodeName={}", config.node_name);
    let stream = watcher::watcher(api, watcher::Config::default().fields(&selector))
        .backoff(CappedBackoff::new(backoff));
    let mut stream = std::pin::pin!(stream);
    let mut state = State::new(config.sidecar_stats, config.target_labels.clone());
    let mut synced = false;
    log::info!(
        "kubernetes: watching pods on node {} (field selector {selector})",
        config.node_name
    );
    loop {
        tokio::select! {
            _ = pods.closed() => return Ok(()),
            event = stream.next() => match event {
                Some(Ok(event)) => {
                    if state.apply(event) {
                        let snapshot = state.snapshot();
                        // The first result is always sent, even an empty node's: it is what
                        // makes the agent ready.
                        let first = !std::mem::replace(&mut synced, true);
                        pods.send_if_modified(|current| {
                            if *current == snapshot && !first {
                                false
                            } else {
                                *current = snapshot;
                                true
                            }
                        });
                    }
                }
                Some(Err(err)) => {
                    watch_failed(&config.node_name, state.pods.len(), &err);
                }
                // The watcher never ends on its own; treat an end like the receivers leaving.
                None => return Ok(()),
            }
        }
    }
}

/// A client of the API server `kubeconfig` names, else of `KUBECONFIG`, `~/.kube/config` or the
/// in-cluster configuration (also what `--authz kubernetes` asks).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, KubeError> {
    let kube_config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            })?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(kube_config)?)
}

/// The pods as the watcher last told them, and what was last reported about each.
struct State {
    sidecar_stats: bool,
    rules: target_labels::Rules,
    pods: BTreeMap<PodKey, Pod>,
    /// Filled between `Init` and `InitDone` (a relist), then swapped in whole.
    relist: Option<BTreeMap<PodKey, Pod>>,
    /// Annotation errors last logged per pod, so a status update does not log them again.
    reported: BTreeMap<PodKey, Vec<AnnotationError>>,
}

impl State {
    fn new(sidecar_stats: bool, rules: target_labels::Rules) -> Self {
        Self {
            sidecar_stats,
            rules,
            pods: BTreeMap::new(),
            relist: None,
            reported: BTreeMap::new(),
        }
    }

    /// Applies one watcher event; true when the published set may have changed.
    fn apply(&mut self, event: Event<KubePod>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(kube_pod) => {
                let key = key_of(&kube_pod);
                let pod = self.convert(&kube_pod);
                if let (Some(relist), Some(pod)) = (self.relist.as_mut(), pod) {
                    insert_bounded(relist, key, pod);
                }
                false
            }
            Event::InitDone => {
                if let Some(relist) = self.relist.take() {
                    self.pods = relist;
                    let pods = &self.pods;
                    self.reported.retain(|key, _| pods.contains_key(key));
                }
                true
            }
            Event::Apply(kube_pod) => {
                let key = key_of(&kube_pod);
                match self.convert(&kube_pod) {
                    Some(pod) => insert_bounded(&mut self.pods, key, pod),
                    None => {
                        self.pods.remove(&key);
                    }
                }
                true
            }
            Event::Delete(kube_pod) => {
                let key = key_of(&kube_pod);
                self.reported.remove(&key);
                self.pods.remove(&key).is_some()
            }
        }
    }

    fn snapshot(&self) -> Vec<Pod> {
        self.pods.values().cloned().collect()
    }

    /// The loupe view of a pod, or `None` while it is not (or no longer) observable.
    fn convert(&mut self, kube_pod: &KubePod) -> Option<Pod> {
        let key = key_of(kube_pod);
        let spec = kube_pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = kube_pod.status.as_ref()?;
        if status.phase.as_deref() != Some("Running") {
            return None;
        }
        let ids = running_container_ids(
            status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten()),
        );
        if ids.is_empty() {
            return None;
        }
        let (endpoints, mut errors) = annotations::endpoints(kube_pod, self.sidecar_stats);
        let (limits, limit_errors) = annotations::limits(kube_pod);
        errors.extend(limit_errors);
        let (job, labels) = self.target_labels(&key, kube_pod, &mut errors);
        self.report(&key, errors);
        Some(Pod {
            namespace: key.namespace,
            name: key.name,
            uid: kube_pod.metadata.uid.clone().unwrap_or_default(),
            netns: NetnsRef::Containers(ids),
            endpoints,
            limits,
            ip: status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()),
            job,
            labels,
        })
    }

    /// The pod's `job` and copied labels; a value that cannot be used is an error on the pod
    /// (logged once per change, as annotation errors are).
    fn target_labels(
        &self,
        key: &PodKey,
        kube_pod: &KubePod,
        errors: &mut Vec<AnnotationError>,
    ) -> (String, Vec<(String, String)>) {
        let empty = BTreeMap::new();
        let meta = &kube_pod.metadata;
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| (o.kind.as_str(), o.name.as_str()));
        let labels = meta.labels.as_ref().unwrap_or(&empty);
        let (job, invalid) = self.rules.job.job(PodMeta {
            name: &key.name,
            labels,
            annotations: meta.annotations.as_ref().unwrap_or(&empty),
            owner,
        });
        errors.extend(invalid.into_iter().map(|i| AnnotationError {
            pod: key.to_string(),
            annotation: i.source,
            reason: format!("{}; the job is {job:?} (the next rule's)", i.reason),
        }));
        let (copied, skipped) = self.rules.pod_labels.copy(labels);
        errors.extend(skipped.into_iter().map(|reason| AnnotationError {
            pod: key.to_string(),
            annotation: "--pod-labels".into(),
            reason,
        }));
        (job, copied)
    }

    fn report(&mut self, key: &PodKey, errors: Vec<AnnotationError>) {
        if self
            .reported
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or_default()
            == errors.as_slice()
        {
            return;
        }
        for err in &errors {
            annotation_rejected(err);
        }
        if errors.is_empty() {
            self.reported.remove(key);
        } else {
            self.reported.insert(key.clone(), errors);
        }
    }
}

fn insert_bounded(pods: &mut BTreeMap<PodKey, Pod>, key: PodKey, pod: Pod) {
    if pods.len() >= MAX_PODS && !pods.contains_key(&key) {
        pod_dropped(&key);
        return;
    }
    pods.insert(key, pod);
}

fn key_of(pod: &KubePod) -> PodKey {
    PodKey {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
    }
}

/// IDs (runtime prefix stripped) of the containers that are running and started.
fn running_container_ids<'a>(statuses: impl Iterator<Item = &'a ContainerStatus>) -> Vec<String> {
    statuses
        .filter(|s| s.started != Some(false))
        .filter(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()))
        .filter_map(|s| s.container_id.as_deref())
        .map(strip_runtime_prefix)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect()
}

/// Exponential backoff with a cap and up to 25% jitter, reset by the first good event.
struct CappedBackoff {
    policy: BackoffPolicy,
    next: Duration,
}

impl CappedBackoff {
    fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            next: policy.initial,
        }
    }
}

impl Iterator for CappedBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        // Jitter spreads the retries of many nodes' agents after an API server restart.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let jitter = base.mul_f64(f64::from(nanos % 1000) / 4000.0);
        Some(base + jitter)
    }
}

impl Backoff for CappedBackoff {
    fn reset(&mut self) {
        self.next = self.policy.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn kube_pod(name: &str, phase: &str, statuses: serde_json::Value) -> KubePod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name, "uid": format!("uid-{name}"),
                         "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "a"}]},
            "status": {"phase": phase, "containerStatuses": statuses},
        }))
        .expect("pod")
    }

    fn running(id: &str) -> serde_json::Value {
        json!([{"name": "app", "image": "a", "imageID": "", "ready": true, "restartCount": 0,
                "started": true, "containerID": id, "state": {"running": {}}}])
    }

    #[test]
    fn running_pod_is_published_with_stripped_ids() {
        let mut state = State::new(false, target_labels::Rules::default());
        assert!(state.apply(Event::Apply(kube_pod(
            "a",
            "Running",
            running(&format!("containerd://{ID}"))
        ))));
        let pods = state.snapshot();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].netns, NetnsRef::Containers(vec![ID.to_string()]));
        assert_eq!(pods[0].uid, "uid-a");
        assert_eq!(pods[0].endpoints.len(), 1);
        assert_eq!(pods[0].endpoints[0].port, 8080);
    }

    #[test]
    fn pending_waiting_and_host_network_pods_are_not_published() {
        let mut state = State::new(false, target_labels::Rules::default());
        state.apply(Event::Apply(kube_pod("pending", "Pending", json!([]))));
        let waiting = json!([{"name": "app", "image": "a", "imageID": "", "ready": false,
            "restartCount": 0, "started": false, "containerID": "cri-o://x",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]);
        state.apply(Event::Apply(kube_pod("waiting", "Running", waiting)));
        let mut host = kube_pod("host", "Running", running(&format!("docker://{ID}")));
        if let Some(spec) = host.spec.as_mut() {
            spec.host_network = Some(true);
        }
        state.apply(Event::Apply(host));
        assert!(state.snapshot().is_empty());
    }

    #[test]
    fn pod_that_stops_running_or_is_deleted_disappears() {
        let mut state = State::new(false, target_labels::Rules::default());
        state.apply(Event::Apply(kube_pod("a", "Running", running(ID))));
        state.apply(Event::Apply(kube_pod("a", "Succeeded", json!([]))));
        assert!(state.snapshot().is_empty());
        state.apply(Event::Apply(kube_pod("b", "Running", running(ID))));
        assert!(state.apply(Event::Delete(kube_pod("b", "Running", running(ID)))));
        assert!(state.snapshot().is_empty());
    }

    #[test]
    fn relist_replaces_the_whole_set() {
        let mut state = State::new(false, target_labels::Rules::default());
        state.apply(Event::Apply(kube_pod("old", "Running", running(ID))));
        assert!(!state.apply(Event::Init));
        assert!(!state.apply(Event::InitApply(kube_pod("new", "Running", running(ID)))));
        // Until InitDone the old set stays in force.
        assert_eq!(state.snapshot()[0].name, "old");
        assert!(state.apply(Event::InitDone));
        let names: Vec<_> = state.snapshot().into_iter().map(|p| p.name).collect();
        assert_eq!(names, vec!["new"]);
    }

    #[test]
    fn annotation_errors_are_counted_once_per_change() {
        let mut state = State::new(false, target_labels::Rules::default());
        let mut bad = kube_pod("bad", "Running", running(ID));
        bad.metadata.annotations = Some(
            [
                ("prometheus.io/scrape".to_string(), "true".to_string()),
                ("prometheus.io/port".to_string(), "http!".to_string()),
            ]
            .into(),
        );
        let before = DISCOVERY_ERRORS.get();
        state.apply(Event::Apply(bad.clone()));
        state.apply(Event::Apply(bad));
        // The only test here with a malformed annotation: one error, reported once.
        assert_eq!(DISCOVERY_ERRORS.get(), before + 1);
        assert_eq!(
            state
                .reported
                .get(&PodKey {
                    namespace: "shop".into(),
                    name: "bad".into()
                })
                .map(Vec::len),
            Some(1)
        );
        assert_eq!(state.snapshot()[0].endpoints, Vec::new());
    }

    #[test]
    fn job_instance_and_pod_labels_come_from_the_pod() {
        let rules = target_labels::Rules {
            pod_labels: target_labels::PodLabels::parse("app.kubernetes.io/*").0,
            ..Default::default()
        };
        let mut state = State::new(false, rules);
        let mut pod = kube_pod("web-7d9f-x2x", "Running", running(ID));
        pod.metadata.labels = Some(
            [
                ("pod-template-hash", "7d9f"),
                ("app.kubernetes.io/part-of", "shop"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        );
        pod.metadata.owner_references = Some(vec![serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f",
            "uid": "u", "controller": true
        }))
        .expect("owner")]);
        if let Some(status) = pod.status.as_mut() {
            status.pod_ip = Some("10.1.2.3".into());
        }
        state.apply(Event::Apply(pod.clone()));
        let (_, identity) = state.snapshot()[0].targets().next().expect("a target");
        assert_eq!(identity.job, "web");
        assert_eq!(identity.instance, "10.1.2.3:8080");
        assert_eq!(
            identity.pod_labels,
            vec![("app_kubernetes_io_part_of".to_string(), "shop".to_string())]
        );
        // An unusable loupe.dev/job is an error on the pod; the next rule gives the job.
        if let Some(a) = pod.metadata.annotations.as_mut() {
            a.insert(target_labels::LOUPE_JOB.into(), String::new());
        }
        let before = DISCOVERY_ERRORS.get();
        state.apply(Event::Apply(pod));
        assert!(DISCOVERY_ERRORS.get() > before);
        assert_eq!(state.snapshot()[0].job, "web");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = CappedBackoff::new(BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
        });
        let steps: Vec<Duration> = (0..5).filter_map(|_| b.next()).collect();
        let bases = [100u64, 200, 400, 400, 400];
        for (step, base) in steps.iter().zip(bases) {
            assert!(*step >= Duration::from_millis(base), "{step:?} < {base}");
            assert!(
                *step <= Duration::from_millis(base * 5 / 4),
                "{step:?} > 1.25 * {base}"
            );
        }
        b.reset();
        assert!(b.next().is_some_and(|d| d < Duration::from_millis(130)));
    }
}

//! The node: applies each discovery snapshot. Resolves every pod's network namespace, attaches
//! the probe there, watches the endpoints' ports, and makes the store's targets match, so a
//! deleted pod's series vanish with the next scrape. A pod that cannot be resolved keeps its
//! targets, reported down with the reason; it never affects another pod.
//!
//! Without a probe (fetch-only mode: `--capture off`, or `auto` on a node where it cannot load)
//! nothing is attached or watched; pods are resolved and their targets stored all the same, so
//! every scrape fetches.

use crate::capture::probe::{OwnFlows, Probe, ProbeConfig};
use crate::cli::CaptureMode;
use crate::discover::target_labels::label_error;
use crate::discover::{Clash, NetnsRef, Pod, PodKey};
use crate::fetch::{OwnPort, OwnPorts};
use crate::ingest::{Origin, Outcome, TargetError};
use crate::resolve::{self, cgroup::ProcIndex, netns::Netns, NetnsCookie};
use crate::store::{Resolved, Store};
use crate::telemetry::with_causes;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

crate::telemetry::counter!(
    pub RESOLVE_ERRORS,
    "loupe_resolve_errors_total",
    "Times a pod's network namespace could not be found or entered.",
);
crate::telemetry::counter!(
    pub ATTACH_ERRORS,
    "loupe_attach_errors_total",
    "Times the probe could not be attached in a pod's namespace or a port not watched.",
);
crate::telemetry::counter!(
    pub DETACH_NOTICES_DROPPED,
    "loupe_detach_notices_dropped_total",
    "Detached namespaces the capture loop was not told about (queue full); their flows idle out instead.",
);

// Events: each writes its log line and counts it.

/// A pod's namespace could not be resolved or attached (counted each time; logged when the
/// reason changed).
fn pod_unresolved(pod: &PodKey, reason: &TargetError, changed: bool) {
    match reason {
        TargetError::Attach { .. } => ATTACH_ERRORS.inc(),
        _ => RESOLVE_ERRORS.inc(),
    }
    if changed {
        log::warn!("pod {pod}: {reason}");
    }
}

fn pod_resolved_again(pod: &PodKey) {
    log::info!("pod {pod}: namespace resolved");
}

fn proc_index_failed(error: &dyn std::fmt::Display) {
    RESOLVE_ERRORS.inc();
    log::error!("cannot index processes by container: {error}");
}

fn watch_failed(port: u16, cookie: NetnsCookie, error: &dyn std::fmt::Display) {
    ATTACH_ERRORS.inc();
    log::warn!("watching port {port} in namespace {cookie}: {error}; only fetching there");
}

fn detach_notice_dropped() {
    DETACH_NOTICES_DROPPED.inc();
}

/// Bound of the queue telling the capture loop which namespaces were detached.
pub const DETACH_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[error("cannot load the eBPF probe, which --capture on requires (--capture auto serves fetched bodies only instead): {cause}")]
pub struct CaptureRequired {
    pub cause: String,
}

/// Loads the probe as `--capture` asks; `None` is fetch-only mode.
pub fn load_probe(
    mode: CaptureMode,
    config: &ProbeConfig,
) -> Result<Option<Probe>, CaptureRequired> {
    if mode == CaptureMode::Off {
        log::info!("fetch-only mode (--capture off): serving fetched bodies only");
        return Ok(None);
    }
    match Probe::load(config) {
        Ok(probe) => Ok(Some(probe)),
        Err(e) if mode == CaptureMode::Auto => {
            let cause = with_causes(&e);
            log::warn!(
                "fetch-only mode: cannot load the eBPF probe: {}; serving fetched bodies only (every scrape asks each app; --capture on makes this fatal)",
                crate::telemetry::one_line(&cause)
            );
            log::debug!("the eBPF probe's load error in full: {cause}");
            Ok(None)
        }
        Err(e) => Err(CaptureRequired {
            cause: with_causes(&e),
        }),
    }
}

/// A namespace's watched ports, each with the paths whose GETs the probe copies.
type Watched = BTreeMap<u16, BTreeSet<String>>;

/// What is attached where, so the next snapshot changes only the difference.
pub struct Node {
    /// None in fetch-only mode.
    probe: Option<Probe>,
    store: Store,
    /// Tells the capture loop to forget the flows of a detached namespace.
    detached: tokio::sync::mpsc::Sender<NetnsCookie>,
    /// Attached namespaces with the ports watched in each.
    attached: HashMap<NetnsCookie, Watched>,
    /// Last error per pod, to log changes only.
    errors: HashMap<PodKey, String>,
    /// Endpoints served without their instance (another has their job and instance), to log
    /// new ones only.
    clashes: HashSet<Clash>,
    /// Container ID -> PID index of `/proc`, kept between applies: rescanning a node with
    /// 10,000 processes costs about 0.1 s, so it is redone only when some container is missing
    /// from it or its process is gone (a new pod, a restarted container).
    procs: Option<ProcIndex>,
}

impl Node {
    pub fn new(
        probe: Option<Probe>,
        store: Store,
        detached: tokio::sync::mpsc::Sender<NetnsCookie>,
    ) -> Self {
        Self {
            probe,
            store,
            detached,
            attached: HashMap::new(),
            errors: HashMap::new(),
            clashes: HashSet::new(),
            procs: None,
        }
    }

    /// Brings loupe's copies of the kernel's ring-buffer drop counters up to date.
    pub fn count_ring_drops(&self) {
        if let Some(probe) = &self.probe {
            probe.dropped();
        }
    }

    /// Brings attachments and targets in line with `pods`.
    pub fn apply(&mut self, pods: &[Pod]) {
        let mut targets = Vec::new();
        let mut wanted: HashMap<NetnsCookie, Watched> = HashMap::new();
        let mut failures = Vec::new();
        let mut errors = HashMap::new();
        self.refresh_procs(pods);
        let procs = self.procs.take();
        for pod in pods {
            let resolved = self.resolve_and_attach(pod, procs.as_ref());
            if let Err(reason) = &resolved {
                let reason_text = reason.to_string();
                let changed = self.errors.get(&pod.key()) != Some(&reason_text);
                pod_unresolved(&pod.key(), reason, changed);
                errors.insert(pod.key(), reason_text);
            } else if self.errors.contains_key(&pod.key()) {
                pod_resolved_again(&pod.key());
            }
            for (key, identity) in pod.targets() {
                if let Ok((_, cookie)) = &resolved {
                    wanted
                        .entry(*cookie)
                        .or_default()
                        .entry(key.port)
                        .or_default()
                        .insert(key.path.clone());
                } else if let Err(reason) = &resolved {
                    failures.push((key.clone(), reason.clone()));
                }
                targets.push((key, identity, pod.limits, resolved.clone()));
            }
        }
        self.errors = errors;
        self.procs = procs;
        let clashes: HashSet<Clash> = crate::discover::unclash(
            targets
                .iter_mut()
                .map(|(key, identity, ..)| (&*key, identity)),
        )
        .into_iter()
        .collect();
        for clash in clashes.difference(&self.clashes) {
            label_error(clash);
        }
        self.clashes = clashes;
        self.sync_probe(wanted);
        self.store.set_targets(targets);
        for (key, reason) in failures {
            self.store.record(
                &key,
                Outcome {
                    at: Instant::now(),
                    origin: Origin::Unresolved,
                    duration: Default::default(),
                    result: Err(reason),
                },
            );
        }
    }

    /// Rescans `/proc` when some pod known by container IDs only cannot be resolved with the
    /// index at hand.
    fn refresh_procs(&mut self, pods: &[Pod]) {
        let stale = pods.iter().any(|pod| match &pod.netns {
            NetnsRef::Containers(ids) => !self.procs.as_ref().is_some_and(|procs| {
                procs
                    .pid_of_any(ids)
                    .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
            }),
            _ => false,
        });
        if !stale {
            return;
        }
        match ProcIndex::scan(Path::new("/proc")) {
            Ok(index) => self.procs = Some(index),
            Err(e) => proc_index_failed(&e),
        }
    }

    fn resolve_and_attach(&mut self, pod: &Pod, procs: Option<&ProcIndex>) -> Resolved {
        let netns = resolve::resolve(&pod.netns, procs).map_err(TargetError::from)?;
        let cookie = self.attach(&netns)?;
        Ok((Arc::new(netns), cookie))
    }

    /// The namespace's cookie, after attaching the probe there (fetch-only: just the cookie).
    fn attach(&mut self, netns: &Netns) -> Result<NetnsCookie, TargetError> {
        let Some(probe) = &mut self.probe else {
            return netns
                .cookie()
                .map_err(|e| TargetError::from(resolve::ResolveError::from(e)));
        };
        probe.attach(netns).map_err(|e| TargetError::Attach {
            path: netns.path().to_path_buf(),
            source: Arc::new(e),
        })
    }

    /// Watches wanted ports (with their paths), unwatches the rest, detaches namespaces no pod
    /// uses any more.
    fn sync_probe(&mut self, wanted: HashMap<NetnsCookie, Watched>) {
        let Some(probe) = &mut self.probe else {
            return;
        };
        for (cookie, ports) in &wanted {
            let watched = self.attached.entry(*cookie).or_default();
            for (port, paths) in ports {
                if watched.get(port) == Some(paths) {
                    continue;
                }
                let paths: Vec<&String> = paths.iter().collect();
                match probe.watch_port(*cookie, *port, &paths) {
                    Ok(()) => {
                        watched.insert(*port, paths.into_iter().cloned().collect());
                    }
                    Err(e) => watch_failed(*port, *cookie, &e),
                }
            }
            let unwanted: Vec<u16> = watched
                .keys()
                .filter(|port| !ports.contains_key(port))
                .copied()
                .collect();
            for port in unwanted {
                probe.unwatch_port(*cookie, port);
                watched.remove(&port);
            }
        }
        let gone: Vec<NetnsCookie> = self
            .attached
            .keys()
            .filter(|c| !wanted.contains_key(c))
            .copied()
            .collect();
        for cookie in gone {
            if let Some(ports) = self.attached.remove(&cookie) {
                for port in ports.into_keys() {
                    probe.unwatch_port(cookie, port);
                }
            }
            probe.detach(cookie);
            if self.detached.try_send(cookie).is_err() {
                detach_notice_dropped();
            }
        }
    }
}

/// The fetch path registers its client ports in the probe's own-flow table.
impl OwnPorts for OwnFlows {
    fn register(&self, cookie: NetnsCookie, client_port: u16) -> Option<OwnPort> {
        OwnFlows::register(self, cookie, client_port)
            .ok()
            .map(|guard| Box::new(guard) as OwnPort)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_off_loads_nothing() {
        let probe = load_probe(CaptureMode::Off, &ProbeConfig::default()).unwrap();
        assert!(probe.is_none());
    }
}

/// The part of loupe's memory its kept bodies may hold: the rest is for what it holds besides
/// (the ring buffer, flows being reassembled, scrape answers, the runtime).
const BUDGET_SHARE: f64 = 0.5;

/// The budget for kept bodies: [`BUDGET_SHARE`] of `explicit`, else of loupe's own cgroup's
/// memory limit; 0 (no budget) without either.
pub fn memory_budget(explicit: Option<usize>) -> usize {
    let limit = explicit.or_else(own_memory_limit).unwrap_or(0);
    (limit as f64 * BUDGET_SHARE) as usize
}

/// The memory limit of the cgroup this process is in: cgroup v2 `memory.max`, else v1
/// `memory.limit_in_bytes`; `None` when unlimited or not found.
fn own_memory_limit() -> Option<usize> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    memory_limit_of(&cgroups, |path| std::fs::read_to_string(path).ok())
}

/// [`own_memory_limit`] from `/proc/self/cgroup`'s text, reading files with `read`.
fn memory_limit_of(cgroups: &str, read: impl Fn(&str) -> Option<String>) -> Option<usize> {
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let text = if controllers.is_empty() {
            read(&format!("/sys/fs/cgroup{path}/memory.max"))
        } else if controllers.split(',').any(|c| c == "memory") {
            read(&format!(
                "/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
            ))
        } else {
            continue;
        };
        // "max" (v2), or v1's huge "unlimited" number: no limit.
        match text.and_then(|t| t.trim().parse::<u64>().ok()) {
            Some(bytes) if bytes < (1 << 60) => return usize::try_from(bytes).ok(),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod memory_limit_tests {
    use super::*;

    #[test]
    fn the_limit_comes_from_v2_or_v1_and_unlimited_is_none() {
        let files = |path: &str| match path {
            "/sys/fs/cgroup/kubepods/pod1/memory.max" => Some("268435456\n".to_string()),
            "/sys/fs/cgroup/kubepods/pod2/memory.max" => Some("max\n".to_string()),
            "/sys/fs/cgroup/memory/a/memory.limit_in_bytes" => Some("9223372036854771712".into()),
            "/sys/fs/cgroup/memory/b/memory.limit_in_bytes" => Some("1048576".into()),
            _ => None,
        };
        assert_eq!(
            memory_limit_of("0::/kubepods/pod1\n", files),
            Some(256 << 20)
        );
        assert_eq!(memory_limit_of("0::/kubepods/pod2\n", files), None);
        assert_eq!(memory_limit_of("4:memory:/a\n0::/\n", files), None);
        assert_eq!(
            memory_limit_of("5:cpu:/x\n4:memory:/b\n0::/\n", files),
            Some(1 << 20)
        );
        assert_eq!(memory_budget(Some(1000)), 500);
        assert_eq!(memory_budget(Some(0)), 0);
    }
}

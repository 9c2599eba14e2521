//! The pods file: discovery without Kubernetes, reloaded when it changes.
//!
//! ```yaml
//! pods:
//!   - namespace: shop
//!     name: cart-7d9f
//!     netns: /var/run/netns/cart     # or  pid: 1234
//!     endpoints:
//!       - port: 8080
//!         path: /metrics             # default /metrics
//!         container: app             # optional
//!         name: http-metrics         # optional; the endpoint label, default the port number
//!     ip: 10.0.3.7                   # optional; the endpoints' instance is IP:port
//!     job: cart                      # optional; as the loupe.dev/job annotation
//!     labels:                        # optional; the pod's labels (the job rule, --pod-labels)
//!       app.kubernetes.io/name: cart
//! ```
//!
//! Without `ip:` the endpoints have no `instance` of their own (the series carry the node
//! target's). `job:` is the pod's `loupe.dev/job`: the `--job-from` rule applies to `job:` and
//! `labels:` as to a Kubernetes pod's annotation and labels.
//!
//! A file with any error is rejected whole, with the line and field named, and the agent keeps the
//! pods of the last good version: a typo must not make every pod's series vanish.

use super::target_labels::{check_job, label_error, PodMeta, Rules, LOUPE_JOB};
use super::{Endpoint, NetnsRef, Pod, MAX_ENDPOINTS_PER_POD};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

crate::telemetry::counter!(
    pub RELOADS,
    "loupe_pods_file_reloads_total",
    "Times the pods file was read and accepted.",
);
crate::telemetry::counter!(
    pub ERRORS,
    "loupe_pods_file_errors_total",
    "Times the pods file was rejected (the previous pods were kept).",
);

crate::telemetry::counter!(
    pub ENDPOINTS_OVER_CAP,
    "loupe_pods_file_endpoints_over_cap_total",
    "Endpoints of the pods file left unscraped: their pod listed more than 16.",
);

// Events: each writes its log line and counts it.

fn endpoints_capped(path: &Path, at: &str, declared: usize) {
    ENDPOINTS_OVER_CAP.add((declared - MAX_ENDPOINTS_PER_POD) as u64);
    log::warn!(
        "pods file {}: {at}: {declared} endpoints listed; only the first {MAX_ENDPOINTS_PER_POD} are scraped",
        path.display()
    );
}

fn read_failed(error: PodsFileError) {
    ERRORS.inc();
    log::error!("{error}; keeping the previous pods");
}

fn rejected(error: &PodsFileError) {
    ERRORS.inc();
    log::error!("{error}; keeping the previous pods");
}

fn reloaded(path: &Path, pods: usize) {
    RELOADS.inc();
    log::info!("pods file {}: {pods} pods", path.display());
}

/// How often the file is checked for changes. Polling, rather than inotify, also sees the
/// symlink swaps a Kubernetes ConfigMap volume makes.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PodsFileError {
    #[error("cannot read pods file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pods file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    pods: Vec<PodEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodEntry {
    namespace: String,
    name: String,
    #[serde(default)]
    uid: String,
    netns: Option<PathBuf>,
    pid: Option<u32>,
    #[serde(default)]
    endpoints: Vec<EndpointEntry>,
    /// Scrape limits over the agent's defaults (`sample_limit: 1000`, ...).
    #[serde(default)]
    limits: super::Limits,
    ip: Option<std::net::IpAddr>,
    job: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    port: u16,
    path: Option<String>,
    container: Option<String>,
    name: Option<String>,
}

/// Parses and validates a pods file's text. Errors name the line and the field.
pub fn parse(path: &Path, text: &str, rules: &Rules) -> Result<Vec<Pod>, PodsFileError> {
    let invalid = |message: String| PodsFileError::Invalid {
        path: path.to_owned(),
        message,
    };
    // serde_yaml's messages carry the field path (`pods[1].endpoints[0].port`) and the line.
    let doc: FileDoc = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let mut seen = HashSet::new();
    let mut pods = Vec::with_capacity(doc.pods.len());
    for (i, entry) in doc.pods.into_iter().enumerate() {
        let at = format!("pods[{i}]");
        let line = line_of_entry(text, i);
        let at = match line {
            Some(line) => format!("{at} (line {line})"),
            None => at,
        };
        for (field, value) in [("namespace", &entry.namespace), ("name", &entry.name)] {
            if !is_dns_label(value) {
                return Err(invalid(format!(
                    "{at}.{field}: '{value}' is not a valid Kubernetes name (lowercase letters, digits and '-', at most 253 characters)"
                )));
            }
        }
        let netns = match (entry.netns, entry.pid) {
            (Some(path), None) => NetnsRef::Path(path),
            (None, Some(pid)) if pid > 0 => NetnsRef::Pid(pid),
            (None, Some(_)) => {
                return Err(invalid(format!("{at}.pid: must be a positive process id")))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(format!("{at}: give either netns or pid, not both")))
            }
            (None, None) => {
                return Err(invalid(format!(
                    "{at}: missing netns (a namespace file) or pid (a process in the pod)"
                )))
            }
        };
        if !seen.insert((entry.namespace.clone(), entry.name.clone())) {
            return Err(invalid(format!(
                "{at}: pod {}/{} is listed twice",
                entry.namespace, entry.name
            )));
        }
        let mut endpoints = Vec::with_capacity(entry.endpoints.len());
        let mut seen_endpoints = HashSet::new();
        for (j, e) in entry.endpoints.into_iter().enumerate() {
            let at = format!("{at}.endpoints[{j}]");
            if e.port == 0 {
                return Err(invalid(format!("{at}.port: must be between 1 and 65535")));
            }
            let path = e.path.unwrap_or_else(|| "/metrics".to_owned());
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(format!(
                    "{at}.path: '{path}' must start with '/' and contain no spaces"
                )));
            }
            if let Some(name) = &e.name {
                if name.is_empty() {
                    return Err(invalid(format!("{at}.name: must not be empty")));
                }
            }
            if !seen_endpoints.insert((e.port, path.clone())) {
                return Err(invalid(format!(
                    "{at}: port {} path {path} is listed twice",
                    e.port
                )));
            }
            endpoints.push(Endpoint {
                port: e.port,
                path,
                container: e.container.filter(|c| !c.is_empty()),
                name: e.name,
            });
        }
        if endpoints.len() > MAX_ENDPOINTS_PER_POD {
            endpoints_capped(path, &at, endpoints.len());
            endpoints.truncate(MAX_ENDPOINTS_PER_POD);
        }
        let mut annotations = BTreeMap::new();
        if let Some(job) = entry.job {
            check_job(&job).map_err(|reason| invalid(format!("{at}.job: {reason}")))?;
            annotations.insert(LOUPE_JOB.to_string(), job);
        }
        let meta = PodMeta {
            name: &entry.name,
            labels: &entry.labels,
            annotations: &annotations,
            owner: None,
        };
        let (job, invalid_jobs) = rules.job.job(meta);
        let (labels, skipped) = rules.pod_labels.copy(&entry.labels);
        let pod = format!("{}/{}", entry.namespace, entry.name);
        for i in invalid_jobs {
            label_error(&format_args!(
                "pods file {}: pod {pod}: {}: {}; the job is {job:?}",
                path.display(),
                i.source,
                i.reason
            ));
        }
        for reason in skipped {
            label_error(&format_args!(
                "pods file {}: pod {pod}: {reason}",
                path.display()
            ));
        }
        pods.push(Pod {
            namespace: entry.namespace,
            name: entry.name,
            uid: entry.uid,
            netns,
            endpoints,
            limits: entry.limits,
            ip: entry.ip,
            job,
            labels,
        });
    }
    Ok(pods)
}

/// The 1-based line where the `i`-th item of `pods:` starts, for error messages.
fn line_of_entry(text: &str, i: usize) -> Option<usize> {
    let indent = text.lines().find_map(|l| {
        let t = l.trim_start();
        t.starts_with("- ").then(|| l.len() - t.len())
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            l.len() > indent && l[indent..].starts_with("- ") && l[..indent].trim().is_empty()
        })
        .nth(i)
        .map(|(n, _)| n + 1)
}

/// RFC 1123 subdomain, as Kubernetes requires of namespace and pod names.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// Reads and parses the file once.
pub fn load(path: &Path, rules: &Rules) -> Result<Vec<Pod>, PodsFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PodsFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text, rules)
}

/// Publishes the file's pods, and again each time its content changes. A rejected version is
/// logged and counted and the previous pods stay published. Runs until the receivers are gone.
pub async fn watch(path: PathBuf, rules: Rules, pods: watch::Sender<Vec<Pod>>) {
    let mut last_text: Option<String> = None;
    let mut interval = tokio::time::interval(POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if pods.is_closed() {
            return;
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(source) => {
                if last_text.is_some() || pods.borrow().is_empty() {
                    read_failed(PodsFileError::Read {
                        path: path.clone(),
                        source,
                    });
                }
                // Report a missing file once per disappearance, not every second.
                last_text = Some(String::new());
                continue;
            }
        };
        if last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        match parse(&path, &text, &rules) {
            Ok(new) => {
                reloaded(&path, new.len());
                pods.send_replace(new);
            }
            Err(e) => rejected(&e),
        }
        last_text = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<Pod>, PodsFileError> {
        parse(Path::new("pods.yaml"), text, &Rules::default())
    }

    #[test]
    fn parses_the_documented_example() {
        let pods = p("pods:\n  - namespace: shop\n    name: cart-7d9f\n    netns: /var/run/netns/cart\n    endpoints:\n      - port: 8080\n        path: /metrics\n        container: app\n        name: http-metrics\n      - port: 9090\n  - namespace: shop\n    name: web\n    pid: 1234\n").unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0].netns, NetnsRef::Path("/var/run/netns/cart".into()));
        assert_eq!(pods[0].endpoints[0].label(), "http-metrics");
        assert_eq!(pods[0].endpoints[0].container.as_deref(), Some("app"));
        assert_eq!(pods[0].endpoints[1].label(), "9090");
        assert_eq!(pods[0].endpoints[1].path, "/metrics");
        assert_eq!(pods[1].netns, NetnsRef::Pid(1234));
        assert!(pods[1].endpoints.is_empty());
    }

    #[test]
    fn ip_job_and_labels_give_the_target_labels() {
        let text = "pods:\n  - namespace: shop\n    name: cart-7d9f\n    pid: 1\n    ip: 10.0.3.7\n    labels:\n      app.kubernetes.io/name: cart\n      team: pay\n    endpoints:\n      - port: 8080\n  - namespace: shop\n    name: web\n    pid: 2\n    ip: fd00::7\n    job: storefront\n    endpoints:\n      - port: 9090\n";
        let rules = Rules {
            pod_labels: super::super::target_labels::PodLabels::parse("team").0,
            ..Rules::default()
        };
        let pods = parse(Path::new("pods.yaml"), text, &rules).unwrap();
        let (_, cart) = pods[0].targets().next().unwrap();
        assert_eq!(cart.job, "cart");
        assert_eq!(cart.instance, "10.0.3.7:8080");
        assert_eq!(
            cart.pod_labels,
            vec![("team".to_string(), "pay".to_string())]
        );
        let (_, web) = pods[1].targets().next().unwrap();
        assert_eq!(web.job, "storefront");
        assert_eq!(web.instance, "[fd00::7]:9090");
        assert!(web.pod_labels.is_empty());
        // No ip: no instance; an invalid job is refused with its place.
        let pods = p(
            "pods:\n  - namespace: a\n    name: b\n    pid: 1\n    endpoints:\n      - port: 1\n",
        )
        .unwrap();
        let (_, b) = pods[0].targets().next().unwrap();
        assert_eq!((b.job.as_str(), b.instance.as_str()), ("b", ""));
        let e = p("pods:\n  - namespace: a\n    name: b\n    pid: 1\n    job: \"\"\n").unwrap_err();
        // Two labels that sanitise to one name: the first is copied, the other logged and
        // counted.
        let rules = Rules {
            pod_labels: super::super::target_labels::PodLabels::parse("a*").0,
            ..Rules::default()
        };
        let before = super::super::target_labels::TARGET_LABEL_ERRORS.get();
        let text = "pods:\n  - namespace: a\n    name: b\n    pid: 1\n    labels:\n      a.b: x\n      a_b: y\n";
        let pods = parse(Path::new("pods.yaml"), text, &rules).unwrap();
        assert_eq!(pods[0].labels, vec![("a_b".to_string(), "x".to_string())]);
        assert!(super::super::target_labels::TARGET_LABEL_ERRORS.get() > before);
        assert!(
            e.to_string().contains("pods[0] (line 2).job: an empty job"),
            "{e}"
        );
    }

    #[test]
    fn a_pods_limits_are_read_and_unknown_ones_refused() {
        let pods = p("pods:\n  - namespace: shop\n    name: cart\n    pid: 1\n    limits:\n      sample_limit: 100\n      label_limit: 30\n").unwrap();
        assert_eq!(pods[0].limits.sample_limit, Some(100));
        assert_eq!(pods[0].limits.label_limit, Some(30));
        assert_eq!(pods[0].limits.body_size_limit, None);
        let msg = p("pods:\n  - namespace: shop\n    name: cart\n    pid: 1\n    limits:\n      samples: 100\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("samples"), "{msg}");
    }

    #[test]
    fn a_bad_port_names_field_and_line() {
        let err = p("pods:\n  - namespace: shop\n    name: cart\n    pid: 1\n    endpoints:\n      - port: eighty\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pods[0].endpoints[0].port"), "{msg}");
        assert!(msg.contains("line 6"), "{msg}");
    }

    #[test]
    fn an_unknown_field_is_rejected() {
        let msg = p("pods:\n  - namespace: shop\n    name: cart\n    pid: 1\n    prot: 8080\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("prot"), "{msg}");
        assert!(msg.contains("line 5"), "{msg}");
    }

    #[test]
    fn semantic_errors_name_the_entry_and_its_line() {
        let msg = p("pods:\n  - namespace: shop\n    name: a\n    pid: 1\n  - namespace: shop\n    name: b\n    netns: /x\n    pid: 2\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("pods[1] (line 5)"), "{msg}");
        assert!(msg.contains("not both"), "{msg}");

        let msg = p("pods:\n  - namespace: Shop\n    name: a\n    pid: 1\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("pods[0] (line 2).namespace"), "{msg}");

        let msg = p("pods:\n  - namespace: shop\n    name: a\n    pid: 1\n    endpoints:\n      - port: 1\n        path: metrics\n").unwrap_err().to_string();
        assert!(msg.contains("endpoints[0].path"), "{msg}");

        let msg = p("pods:\n  - namespace: shop\n    name: a\n    pid: 1\n  - namespace: shop\n    name: a\n    pid: 2\n").unwrap_err().to_string();
        assert!(msg.contains("listed twice"), "{msg}");

        let msg = p("pods:\n  - namespace: shop\n    name: a\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing netns"), "{msg}");
    }

    #[test]
    fn endpoints_past_the_per_pod_cap_are_reported_not_scraped() {
        let mut text = String::from(
            "pods:\n  - namespace: shop\n    name: wide\n    pid: 1\n    endpoints:\n",
        );
        for port in 1..=10_000 {
            text.push_str(&format!("      - port: {port}\n"));
        }
        let before = ENDPOINTS_OVER_CAP.get();
        let pods = p(&text).unwrap();
        assert_eq!(pods[0].endpoints.len(), MAX_ENDPOINTS_PER_POD);
        assert_eq!(pods[0].endpoints[0].port, 1);
        assert!(ENDPOINTS_OVER_CAP.get() >= before + 10_000 - MAX_ENDPOINTS_PER_POD as u64);
    }

    #[test]
    fn empty_file_means_no_pods() {
        assert!(p("pods: []\n").unwrap().is_empty());
        assert!(p("{}\n").unwrap().is_empty());
    }

    #[tokio::test]
    async fn watch_keeps_previous_pods_when_the_file_breaks() {
        let dir = std::env::temp_dir().join(format!("loupe-podsfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pods.yaml");
        std::fs::write(&file, "pods:\n  - namespace: a\n    name: b\n    pid: 1\n").unwrap();
        let (tx, mut rx) = watch::channel(Vec::new());
        let task = tokio::spawn(watch(file.clone(), Rules::default(), tx));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().len(), 1);
        let errors_before = ERRORS.get();
        std::fs::write(&file, "pods:\n  - namespace: a\n    nme: b\n").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ERRORS.get() == errors_before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "broken file was not noticed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(rx.borrow().len(), 1, "previous pods must be kept");
        std::fs::write(&file, "pods:\n  - namespace: a\n    name: b\n    pid: 1\n  - namespace: a\n    name: c\n    pid: 2\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow().len(), 2);
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

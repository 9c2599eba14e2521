//! A pod's metrics endpoints, from every convention users already have. Pure: no I/O, no logging;
//! the caller logs and counts the [`AnnotationError`]s.
//!
//! Sources, in order of precedence (an endpoint found twice, same port and path, is kept once):
//!
//! 1. `loupe.dev/scrape: "false"` opts the pod out: no endpoints at all.
//! 2. `loupe.dev/endpoints`: when present it is authoritative and the conventions below are not
//!    consulted (the user said exactly what to scrape). Format: comma-separated entries
//!    `[container:]port[/path]`, `port` a number or the name of a container port, `path` default
//!    `/metrics`. Example: `app:8080/metrics, exporter:http-metrics, 9100/probe/metrics`.
//!    Malformed entries are reported and skipped; the others are used.
//! 3. Istio's `prometheus.istio.io/scrape-targets`: comma-separated `port:path` (path optional).
//!    When present it replaces the single `prometheus.io/port|path` target, as in Istio.
//! 4. `prometheus.io/scrape: "true"` with `prometheus.io/port` (or the pod's only declared port)
//!    and `prometheus.io/path`. Where Istio rewrote these to its merge port (15020,
//!    `/stats/prometheus`), the originals come from the sidecar's `ISTIO_PROMETHEUS_ANNOTATIONS`
//!    env (`{"scrape":"true","port":"8383","path":"/manage/prometheus"}`), so loupe scrapes the app
//!    rather than Istio's concatenation. A merge-port target without that env carries no app
//!    metrics and is skipped. The same holds for Consul's merge port 20200 on Consul pods.
//!    `prometheus.io/scheme: https` is refused: loupe reads the app's plaintext reply on loopback
//!    (observed or fetched over plain HTTP), and a TLS reply can be neither parsed nor fetched.
//! 5. Consul's `consul.hashicorp.com/service-metrics-port|path` (path default `/metrics`).
//! 6. Container ports named `metrics` or ending in `-metrics` (TCP only).
//! 7. With `sidecar_stats`, the mesh sidecar's own stats: Envoy's `:15090/stats/prometheus` on an
//!    `istio-proxy` container, Linkerd's `:4191/metrics` on `linkerd-proxy`.
//!
//! At most [`MAX_ENDPOINTS_PER_POD`] endpoints per pod, the first in the order above; the rest are
//! reported as an error on the pod, so one pod annotated with thousands of endpoints cannot take
//! every fetch slot and watched port of the node.
//!
//! Every endpoint names the container that declares its port (regular containers and native
//! sidecars, i.e. init containers with `restartPolicy: Always`), or none when no container does.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use k8s_openapi::api::core::v1::{Container, Pod as KubePod};
use serde::Deserialize;

use super::{Endpoint, Limits, MAX_ENDPOINTS_PER_POD};

pub const LOUPE_SCRAPE: &str = "loupe.dev/scrape";
pub const LOUPE_ENDPOINTS: &str = "loupe.dev/endpoints";
pub const PROM_SCRAPE: &str = "prometheus.io/scrape";
pub const PROM_PORT: &str = "prometheus.io/port";
pub const PROM_PATH: &str = "prometheus.io/path";
pub const PROM_SCHEME: &str = "prometheus.io/scheme";
pub const ISTIO_SCRAPE_TARGETS: &str = "prometheus.istio.io/scrape-targets";
pub const ISTIO_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
pub const CONSUL_METRICS_PORT: &str = "consul.hashicorp.com/service-metrics-port";
pub const CONSUL_METRICS_PATH: &str = "consul.hashicorp.com/service-metrics-path";

const DEFAULT_PATH: &str = "/metrics";
const ISTIO_PROXY: &str = "istio-proxy";
const ISTIO_MERGE_PORT: u16 = 15020;
const ISTIO_MERGE_PATH: &str = "/stats/prometheus";
const ENVOY_STATS_PORT: u16 = 15090;
const CONSUL_MERGE_PORT: u16 = 20200;
const CONSUL_CONTAINERS: &[&str] = &["consul-dataplane", "envoy-sidecar"];
const LINKERD_PROXY: &str = "linkerd-proxy";
/// Containers meshes inject beside the app: never the owner of an app's metrics port.
const MESH_SIDECARS: &[&str] = &[
    ISTIO_PROXY,
    LINKERD_PROXY,
    "linkerd-init",
    "istio-init",
    "istio-validation",
    "consul-dataplane",
    "envoy-sidecar",
    "consul-connect-inject-init",
];
const LINKERD_ADMIN_PORT: u16 = 4191;

/// A malformed or unsupported annotation; the pod's other endpoints still work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationError {
    /// `namespace/name`
    pub pod: String,
    /// The annotation (or env variable) at fault.
    pub annotation: String,
    pub reason: String,
}

impl fmt::Display for AnnotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pod {}: annotation {}: {}",
            self.pod, self.annotation, self.reason
        )
    }
}

impl std::error::Error for AnnotationError {}

/// The original `prometheus.io/*` values Istio keeps in its sidecar's env when it rewrites them.
#[derive(Deserialize)]
struct IstioOriginal {
    #[serde(default)]
    scrape: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    path: String,
}

/// Every metrics endpoint of `pod`, de-duplicated by port and path, with what was wrong.
pub fn endpoints(pod: &KubePod, sidecar_stats: bool) -> (Vec<Endpoint>, Vec<AnnotationError>) {
    let mut found = Found {
        pod_name: format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
        containers: containers(pod),
        endpoints: Vec::new(),
        seen: HashSet::new(),
        errors: Vec::new(),
    };
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let get = |key: &str| annotations.get(key).map(|v| v.trim());

    match get(LOUPE_SCRAPE) {
        Some("false") => return (Vec::new(), Vec::new()),
        Some("true") | None => {}
        Some(other) => found.error(
            LOUPE_SCRAPE,
            format!("expected \"true\" or \"false\", got {other:?}; the pod is scraped"),
        ),
    }

    if let Some(list) = get(LOUPE_ENDPOINTS) {
        found.loupe_endpoints(list);
    } else {
        if let Some(list) = get(ISTIO_SCRAPE_TARGETS) {
            found.istio_scrape_targets(list);
        } else {
            found.prometheus_io(&get);
        }
        if let Some(port) = get(CONSUL_METRICS_PORT) {
            let path = get(CONSUL_METRICS_PATH).unwrap_or(DEFAULT_PATH);
            found.add_annotated(CONSUL_METRICS_PORT, port, CONSUL_METRICS_PATH, path);
        }
        found.named_ports();
    }
    if sidecar_stats {
        found.sidecar_stats();
    }
    let declared = found.endpoints.len();
    if declared > MAX_ENDPOINTS_PER_POD {
        found.endpoints.truncate(MAX_ENDPOINTS_PER_POD);
        found.error(
            "metrics endpoints",
            format!(
                "{declared} endpoints declared; only the first {MAX_ENDPOINTS_PER_POD} are scraped"
            ),
        );
    }
    (found.endpoints, found.errors)
}

/// The pod's scrape limits from `loupe.dev/sample-limit`, `loupe.dev/label-limit`,
/// `loupe.dev/label-name-length-limit`, `loupe.dev/label-value-length-limit` and
/// `loupe.dev/body-size-limit` (a whole number; 0: none). A malformed one is reported and the
/// agent's default applies.
pub fn limits(pod: &KubePod) -> (Limits, Vec<AnnotationError>) {
    let mut limits = Limits::default();
    let mut errors = Vec::new();
    let Some(annotations) = pod.metadata.annotations.as_ref() else {
        return (limits, errors);
    };
    let fields: [(&str, &mut Option<usize>); 5] = [
        ("loupe.dev/sample-limit", &mut limits.sample_limit),
        ("loupe.dev/label-limit", &mut limits.label_limit),
        (
            "loupe.dev/label-name-length-limit",
            &mut limits.label_name_length_limit,
        ),
        (
            "loupe.dev/label-value-length-limit",
            &mut limits.label_value_length_limit,
        ),
        ("loupe.dev/body-size-limit", &mut limits.body_size_limit),
    ];
    for (annotation, field) in fields {
        let Some(value) = annotations.get(annotation) else {
            continue;
        };
        match value.trim().parse::<usize>() {
            Ok(n) => *field = Some(n),
            Err(_) => errors.push(AnnotationError {
                pod: format!(
                    "{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.name.as_deref().unwrap_or_default()
                ),
                annotation: annotation.into(),
                reason: format!("{value:?} is not a whole number; the agent's default applies"),
            }),
        }
    }
    (limits, errors)
}

/// Regular containers and native sidecars (init containers that keep running).
fn containers(pod: &KubePod) -> Vec<Container> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let mut all = spec.containers.clone();
    for init in spec.init_containers.iter().flatten() {
        if init.restart_policy.as_deref() == Some("Always") {
            all.push(init.clone());
        }
    }
    all
}

fn is_tcp(protocol: Option<&str>) -> bool {
    matches!(protocol, None | Some("TCP"))
}

fn is_metrics_port_name(name: &str) -> bool {
    name == "metrics" || name.ends_with("-metrics")
}

struct Found {
    pod_name: String,
    containers: Vec<Container>,
    endpoints: Vec<Endpoint>,
    seen: HashSet<(u16, String)>,
    errors: Vec<AnnotationError>,
}

impl Found {
    fn error(&mut self, annotation: &str, reason: String) {
        self.errors.push(AnnotationError {
            pod: self.pod_name.clone(),
            annotation: annotation.to_string(),
            reason,
        });
    }

    fn push(&mut self, endpoint: Endpoint) {
        if self.seen.insert((endpoint.port, endpoint.path.clone())) {
            self.endpoints.push(endpoint);
        }
    }

    fn has_container(&self, name: &str) -> bool {
        self.containers.iter().any(|c| c.name == name)
    }

    /// The container declaring TCP `port`, and the port's name.
    fn declaring(&self, port: u16) -> (Option<String>, Option<String>) {
        for c in &self.containers {
            for p in c.ports.iter().flatten() {
                if p.container_port == i32::from(port) && is_tcp(p.protocol.as_deref()) {
                    return (Some(c.name.clone()), p.name.clone());
                }
            }
        }
        (None, None)
    }

    /// A port given as a number or as the name of a container port (in `container` if given).
    fn port(&self, text: &str, container: Option<&str>) -> Result<u16, String> {
        if text.is_empty() {
            return Err("empty port".to_string());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!("port {text} is out of range 1-65535")),
            };
        }
        for c in &self.containers {
            if container.is_some_and(|want| want != c.name) {
                continue;
            }
            for p in c.ports.iter().flatten() {
                if p.name.as_deref() == Some(text) {
                    return u16::try_from(p.container_port).map_err(|_| {
                        format!("port {text} has invalid number {}", p.container_port)
                    });
                }
            }
        }
        Err(format!("no container declares a port named {text:?}"))
    }

    fn endpoint(&self, port: u16, path: &str, container: Option<&str>) -> Endpoint {
        let (declaring, name) = self.declaring(port);
        Endpoint {
            port,
            path: path.to_string(),
            container: container
                .map(str::to_string)
                .or(declaring)
                .or_else(|| self.only_app_container()),
            name,
        }
    }

    /// The owner of a port no container declares: the one container that is not a known mesh
    /// sidecar, if there is exactly one (an app beside `istio-proxy`, say); else none.
    fn only_app_container(&self) -> Option<String> {
        let mut apps = self
            .containers
            .iter()
            .filter(|c| !MESH_SIDECARS.contains(&c.name.as_str()));
        match (apps.next(), apps.next()) {
            (Some(only), None) => Some(only.name.clone()),
            _ => None,
        }
    }

    fn add_annotated(&mut self, port_key: &str, port: &str, path_key: &str, path: &str) {
        if !path.starts_with('/') {
            self.error(path_key, format!("path {path:?} does not start with '/'"));
            return;
        }
        match self.port(port, None) {
            Ok(port) => {
                let endpoint = self.endpoint(port, path, None);
                self.push(endpoint);
            }
            Err(reason) => self.error(port_key, reason),
        }
    }

    fn loupe_endpoints(&mut self, list: &str) {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (container, rest) = match entry.split_once(':') {
                Some((c, rest)) => (Some(c.trim()), rest.trim()),
                None => (None, entry),
            };
            let (port, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, DEFAULT_PATH),
            };
            if let Some(c) = container {
                if !self.has_container(c) {
                    self.error(
                        LOUPE_ENDPOINTS,
                        format!("entry {entry:?}: the pod has no container named {c:?}"),
                    );
                    continue;
                }
            }
            match self.port(port.trim(), container) {
                Ok(port) => {
                    let endpoint = self.endpoint(port, path, container);
                    self.push(endpoint);
                }
                Err(reason) => self.error(LOUPE_ENDPOINTS, format!("entry {entry:?}: {reason}")),
            }
        }
    }

    fn istio_scrape_targets(&mut self, list: &str) {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (port, path) = match entry.split_once(':') {
                Some((port, path)) => (port.trim(), path.trim()),
                None => (entry, DEFAULT_PATH),
            };
            if !path.starts_with('/') {
                self.error(
                    ISTIO_SCRAPE_TARGETS,
                    format!("entry {entry:?}: path {path:?} does not start with '/'"),
                );
                continue;
            }
            match self.port(port, None) {
                Ok(port) => {
                    let endpoint = self.endpoint(port, path, None);
                    self.push(endpoint);
                }
                Err(reason) => {
                    self.error(ISTIO_SCRAPE_TARGETS, format!("entry {entry:?}: {reason}"))
                }
            }
        }
    }

    fn prometheus_io<'a>(&mut self, get: &impl Fn(&str) -> Option<&'a str>) {
        let istio_env = self.istio_original();
        let (scrape, port, path, source) = match &istio_env {
            Some(Ok(orig)) => (
                if orig.scrape.is_empty() {
                    "true"
                } else {
                    orig.scrape.trim()
                },
                Some(orig.port.trim()).filter(|p| !p.is_empty()),
                Some(orig.path.trim()).filter(|p| !p.is_empty()),
                ISTIO_ENV,
            ),
            Some(Err(reason)) => {
                let reason = reason.clone();
                self.error(ISTIO_ENV, reason);
                return;
            }
            None => (
                get(PROM_SCRAPE).unwrap_or("false"),
                get(PROM_PORT),
                get(PROM_PATH),
                PROM_SCRAPE,
            ),
        };
        match scrape {
            "true" => {}
            "false" => return,
            other => {
                self.error(
                    source,
                    format!("scrape: expected \"true\" or \"false\", got {other:?}"),
                );
                return;
            }
        }
        match get(PROM_SCHEME) {
            None | Some("http") => {}
            Some("https") if istio_env.is_none() => {
                self.error(
                    PROM_SCHEME,
                    "scheme https is not supported: loupe reads the app's plaintext reply on \
                     loopback"
                        .to_string(),
                );
                return;
            }
            Some("https") => {}
            Some(other) => {
                self.error(PROM_SCHEME, format!("unknown scheme {other:?}"));
                return;
            }
        }
        let path = path.unwrap_or(DEFAULT_PATH);
        let port_key = if istio_env.is_some() {
            ISTIO_ENV
        } else {
            PROM_PORT
        };
        let path_key = if istio_env.is_some() {
            ISTIO_ENV
        } else {
            PROM_PATH
        };
        let port = match port {
            Some(port) => port.to_string(),
            None => match self.only_declared_port() {
                Some(port) => port.to_string(),
                None => {
                    self.error(
                        port_key,
                        "missing, and the pod does not declare exactly one TCP port".to_string(),
                    );
                    return;
                }
            },
        };
        if istio_env.is_none() && self.is_mesh_merge_target(&port, path) {
            return;
        }
        self.add_annotated(port_key, &port, path_key, path);
    }

    /// Istio's (or Consul's) merged endpoint, which carries no app metrics of its own.
    fn is_mesh_merge_target(&self, port: &str, path: &str) -> bool {
        let istio = self.has_container(ISTIO_PROXY)
            && port == ISTIO_MERGE_PORT.to_string()
            && path == ISTIO_MERGE_PATH;
        let consul = CONSUL_CONTAINERS.iter().any(|c| self.has_container(c))
            && port == CONSUL_MERGE_PORT.to_string();
        istio || consul
    }

    fn istio_original(&self) -> Option<Result<IstioOriginal, String>> {
        let proxy = self.containers.iter().find(|c| c.name == ISTIO_PROXY)?;
        let value = proxy
            .env
            .iter()
            .flatten()
            .find(|e| e.name == ISTIO_ENV)?
            .value
            .as_deref()?;
        if value.trim().is_empty() {
            return None;
        }
        Some(
            serde_json::from_str::<IstioOriginal>(value)
                .map_err(|e| format!("env of container {ISTIO_PROXY}: invalid JSON: {e}")),
        )
    }

    fn only_declared_port(&self) -> Option<u16> {
        let mut ports = self
            .containers
            .iter()
            .filter(|c| c.name != ISTIO_PROXY && c.name != LINKERD_PROXY)
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| is_tcp(p.protocol.as_deref()));
        let only = ports.next()?;
        if ports.next().is_some() {
            return None;
        }
        u16::try_from(only.container_port).ok()
    }

    fn named_ports(&mut self) {
        let mut named = Vec::new();
        for c in &self.containers {
            for p in c.ports.iter().flatten() {
                let Some(name) = &p.name else { continue };
                if !is_metrics_port_name(name) || !is_tcp(p.protocol.as_deref()) {
                    continue;
                }
                if let Ok(port) = u16::try_from(p.container_port) {
                    named.push(Endpoint {
                        port,
                        path: DEFAULT_PATH.to_string(),
                        container: Some(c.name.clone()),
                        name: Some(name.clone()),
                    });
                }
            }
        }
        for endpoint in named {
            self.push(endpoint);
        }
    }

    fn sidecar_stats(&mut self) {
        for (container, port, path) in [
            (ISTIO_PROXY, ENVOY_STATS_PORT, ISTIO_MERGE_PATH),
            (LINKERD_PROXY, LINKERD_ADMIN_PORT, DEFAULT_PATH),
        ] {
            if self.has_container(container) {
                let mut endpoint = self.endpoint(port, path, Some(container));
                if endpoint.name.is_none() {
                    endpoint.name = Some(format!("{container}-stats"));
                }
                self.push(endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests;

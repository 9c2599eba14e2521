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
//! Every endpoint names the container that declares its port (regular containers and native
//! sidecars, i.e. init containers with `restartPolicy: Always`), or none when no container does.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use k8s_openapi::api::core::v1::{Container, Pod as KubePod};
use serde::Deserialize;

use super::Endpoint;

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
    (found.endpoints, found.errors)
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
            container: container.map(str::to_string).or(declaring),
            name,
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
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: serde_json::Value, containers: serde_json::Value) -> KubePod {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"namespace": "shop", "name": "cart-1", "annotations": annotations},
            "spec": {"containers": containers},
        }))
        .expect("valid pod")
    }

    fn app(ports: serde_json::Value) -> serde_json::Value {
        json!({"name": "app", "image": "app", "ports": ports})
    }

    fn ep(port: u16, path: &str, container: Option<&str>, name: Option<&str>) -> Endpoint {
        Endpoint {
            port,
            path: path.to_string(),
            container: container.map(str::to_string),
            name: name.map(str::to_string),
        }
    }

    fn istio_proxy(env: Option<&str>) -> serde_json::Value {
        let mut c = json!({"name": "istio-proxy", "image": "proxyv2",
            "ports": [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}]});
        if let Some(value) = env {
            c["env"] = json!([{"name": "ISTIO_META_X", "value": "y"},
                              {"name": "ISTIO_PROMETHEUS_ANNOTATIONS", "value": value}]);
        }
        c
    }

    #[test]
    fn prometheus_io_annotations() {
        let p = pod(
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                   "prometheus.io/path": "/custom"}),
            json!([app(json!([{"name": "http", "containerPort": 8080}]))]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert_eq!(eps, vec![ep(8080, "/custom", Some("app"), Some("http"))]);
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn prometheus_io_default_path_and_undeclared_port() {
        let p = pod(
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": "9000",
                   "prometheus.io/scheme": "http"}),
            json!([app(json!([{"containerPort": 8080}]))]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert_eq!(eps, vec![ep(9000, "/metrics", None, None)]);
        assert!(errs.is_empty());
    }

    #[test]
    fn prometheus_io_without_port_uses_the_only_declared_port() {
        let p = pod(
            json!({"prometheus.io/scrape": "true"}),
            json!([app(json!([{"containerPort": 7070}]))]),
        );
        assert_eq!(
            endpoints(&p, false).0,
            vec![ep(7070, "/metrics", Some("app"), None)]
        );
        let p = pod(
            json!({"prometheus.io/scrape": "true"}),
            json!([app(
                json!([{"containerPort": 7070}, {"containerPort": 7071}])
            )]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert!(eps.is_empty());
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].annotation, PROM_PORT);
    }

    #[test]
    fn prometheus_io_scrape_false_or_absent_ignores_port() {
        for ann in [
            json!({"prometheus.io/scrape": "false", "prometheus.io/port": "8080"}),
            json!({"prometheus.io/port": "8080"}),
        ] {
            let (eps, errs) = endpoints(&pod(ann, json!([app(json!([]))])), false);
            assert!(eps.is_empty());
            assert!(errs.is_empty());
        }
    }

    #[test]
    fn prometheus_io_named_port() {
        let p = pod(
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": "web"}),
            json!([app(json!([{"name": "web", "containerPort": 8081}]))]),
        );
        assert_eq!(
            endpoints(&p, false).0,
            vec![ep(8081, "/metrics", Some("app"), Some("web"))]
        );
    }

    #[test]
    fn https_scheme_is_reported_and_other_endpoints_survive() {
        let p = pod(
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": "8443",
                   "prometheus.io/scheme": "https"}),
            json!([app(json!([{"name": "metrics", "containerPort": 9090}]))]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert_eq!(
            eps,
            vec![ep(9090, "/metrics", Some("app"), Some("metrics"))]
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].annotation, PROM_SCHEME);
        assert!(errs[0].to_string().contains("shop/cart-1"), "{}", errs[0]);
        assert!(errs[0].to_string().contains("https"));
    }

    #[test]
    fn malformed_prometheus_io_values() {
        let cases = [
            (
                json!({"prometheus.io/scrape": "yes", "prometheus.io/port": "80"}),
                PROM_SCRAPE,
            ),
            (
                json!({"prometheus.io/scrape": "true", "prometheus.io/port": "80x"}),
                PROM_PORT,
            ),
            (
                json!({"prometheus.io/scrape": "true", "prometheus.io/port": "70000"}),
                PROM_PORT,
            ),
            (
                json!({"prometheus.io/scrape": "true", "prometheus.io/port": "0"}),
                PROM_PORT,
            ),
            (
                json!({"prometheus.io/scrape": "true", "prometheus.io/port": "80",
                    "prometheus.io/path": "metrics"}),
                PROM_PATH,
            ),
            (
                json!({"prometheus.io/scrape": "true", "prometheus.io/port": "80",
                    "prometheus.io/scheme": "gopher"}),
                PROM_SCHEME,
            ),
        ];
        for (ann, key) in cases {
            let p = pod(
                ann.clone(),
                json!([app(json!([{"name": "metrics", "containerPort": 9090}]))]),
            );
            let (eps, errs) = endpoints(&p, false);
            assert_eq!(errs.len(), 1, "{ann}: {errs:?}");
            assert_eq!(errs[0].annotation, key, "{ann}");
            assert_eq!(errs[0].pod, "shop/cart-1");
            // The named port still works.
            assert_eq!(
                eps,
                vec![ep(9090, "/metrics", Some("app"), Some("metrics"))],
                "{ann}"
            );
        }
    }

    #[test]
    fn istio_rewritten_annotations_use_the_originals_from_the_sidecar_env() {
        let p = pod(
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                   "prometheus.io/path": "/stats/prometheus"}),
            json!([
                app(json!([{"name": "http-mgmt", "containerPort": 8383}])),
                istio_proxy(Some(
                    r#"{"scrape":"true","path":"/manage/prometheus","port":"8383"}"#
                )),
            ]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert_eq!(
            eps,
            vec![ep(
                8383,
                "/manage/prometheus",
                Some("app"),
                Some("http-mgmt")
            )]
        );
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn istio_native_sidecar_env_is_found_too() {
        let p: KubePod = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "cart-1",
                         "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                                         "prometheus.io/path": "/stats/prometheus"}},
            "spec": {
                "initContainers": [{"restartPolicy": "Always", "name": "istio-proxy", "image": "p",
                    "env": [{"name": "ISTIO_PROMETHEUS_ANNOTATIONS",
                             "value": "{\"scrape\":\"true\",\"port\":\"8080\"}"}]}],
                "containers": [app(json!([{"containerPort": 8080}]))]
            }
        }))
        .expect("pod");
        assert_eq!(
            endpoints(&p, false).0,
            vec![ep(8080, "/metrics", Some("app"), None)]
        );
    }

    #[test]
    fn istio_merge_port_without_originals_is_not_an_app_endpoint() {
        let p = pod(
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                   "prometheus.io/path": "/stats/prometheus"}),
            json!([app(json!([])), istio_proxy(None)]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert!(eps.is_empty(), "{eps:?}");
        assert!(errs.is_empty());
    }

    #[test]
    fn istio_malformed_env_is_reported() {
        let p = pod(
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                   "prometheus.io/path": "/stats/prometheus"}),
            json!([
                app(json!([{"name": "metrics", "containerPort": 9090}])),
                istio_proxy(Some("{port:"))
            ]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].annotation, ISTIO_ENV);
        assert!(errs[0].reason.contains("JSON"));
        assert_eq!(
            eps,
            vec![ep(9090, "/metrics", Some("app"), Some("metrics"))]
        );
    }

    #[test]
    fn istio_scrape_targets() {
        let p = pod(
            json!({"prometheus.istio.io/scrape-targets": "8080:/metrics, 9100:/custom,9200,bad:/x,9300:nope",
                   "prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                   "prometheus.io/path": "/stats/prometheus"}),
            json!([app(json!([{"containerPort": 8080}])),
                   {"name": "exporter", "image": "e", "ports": [{"containerPort": 9100, "name": "exp"}]},
                   istio_proxy(Some(r#"{"scrape":"true","port":"8080"}"#))]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert_eq!(
            eps,
            vec![
                ep(8080, "/metrics", Some("app"), None),
                ep(9100, "/custom", Some("exporter"), Some("exp")),
                ep(9200, "/metrics", None, None),
            ]
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().all(|e| e.annotation == ISTIO_SCRAPE_TARGETS));
    }

    #[test]
    fn consul_service_metrics() {
        let p = pod(
            json!({"consul.hashicorp.com/service-metrics-port": "8080",
                   "consul.hashicorp.com/service-metrics-path": "/prom",
                   "prometheus.io/scrape": "true", "prometheus.io/port": "20200",
                   "prometheus.io/path": "/metrics"}),
            json!([app(json!([{"containerPort": 8080}])),
                   {"name": "consul-dataplane", "image": "c"}]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert_eq!(eps, vec![ep(8080, "/prom", Some("app"), None)]);
        assert!(errs.is_empty());
        let p = pod(
            json!({"consul.hashicorp.com/service-metrics-port": "eighty"}),
            json!([app(json!([]))]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert!(eps.is_empty());
        assert_eq!(errs[0].annotation, CONSUL_METRICS_PORT);
    }

    #[test]
    fn consul_default_path() {
        let p = pod(
            json!({"consul.hashicorp.com/service-metrics-port": "8080"}),
            json!([app(json!([]))]),
        );
        assert_eq!(
            endpoints(&p, false).0,
            vec![ep(8080, "/metrics", None, None)]
        );
    }

    #[test]
    fn loupe_endpoints_annotation_is_authoritative() {
        let p = pod(
            json!({"loupe.dev/endpoints": "app:8080/metrics, exporter:exp-port,9100/probe/x",
                   "prometheus.io/scrape": "true", "prometheus.io/port": "7000"}),
            json!([app(json!([{"containerPort": 8080, "name": "http"},
                              {"containerPort": 9999, "name": "metrics"}])),
                   {"name": "exporter", "image": "e", "ports": [{"containerPort": 9102, "name": "exp-port"}]}]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert_eq!(
            eps,
            vec![
                ep(8080, "/metrics", Some("app"), Some("http")),
                ep(9102, "/metrics", Some("exporter"), Some("exp-port")),
                ep(9100, "/probe/x", None, None),
            ]
        );
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn loupe_endpoints_malformed_entries_are_skipped() {
        let p = pod(
            json!({"loupe.dev/endpoints": "ghost:8080, app:nosuch, 99999, app:8081/m, :80"}),
            json!([app(json!([]))]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert_eq!(eps, vec![ep(8081, "/m", Some("app"), None)]);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.iter().all(|e| e.annotation == LOUPE_ENDPOINTS));
        assert!(errs[0].reason.contains("ghost"));
    }

    #[test]
    fn loupe_scrape_false_opts_out() {
        let p = pod(
            json!({"loupe.dev/scrape": "false", "prometheus.io/scrape": "true",
                   "prometheus.io/port": "8080"}),
            json!([
                app(json!([{"name": "metrics", "containerPort": 9090}])),
                istio_proxy(None)
            ]),
        );
        assert_eq!(endpoints(&p, true), (Vec::new(), Vec::new()));
        let p = pod(
            json!({"loupe.dev/scrape": "nope"}),
            json!([app(json!([{"name": "metrics", "containerPort": 9090}]))]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert_eq!(eps.len(), 1);
        assert_eq!(errs[0].annotation, LOUPE_SCRAPE);
    }

    #[test]
    fn named_metrics_ports() {
        let p = pod(
            json!({}),
            json!([app(json!([{"name": "metrics", "containerPort": 9090},
                              {"name": "http-metrics", "containerPort": 9091},
                              {"name": "udp-metrics", "containerPort": 9092, "protocol": "UDP"},
                              {"name": "metricsx", "containerPort": 9093},
                              {"name": "http", "containerPort": 8080}]))]),
        );
        let (eps, errs) = endpoints(&p, false);
        assert_eq!(
            eps,
            vec![
                ep(9090, "/metrics", Some("app"), Some("metrics")),
                ep(9091, "/metrics", Some("app"), Some("http-metrics")),
            ]
        );
        assert!(errs.is_empty());
    }

    #[test]
    fn duplicates_are_kept_once() {
        let p = pod(
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                   "consul.hashicorp.com/service-metrics-port": "9090"}),
            json!([app(json!([{"name": "metrics", "containerPort": 9090}]))]),
        );
        assert_eq!(
            endpoints(&p, false).0,
            vec![ep(9090, "/metrics", Some("app"), Some("metrics"))]
        );
    }

    #[test]
    fn sidecar_stats_behind_the_flag() {
        let p = pod(json!({}), json!([app(json!([])), istio_proxy(None)]));
        assert!(endpoints(&p, false).0.is_empty());
        assert_eq!(
            endpoints(&p, true).0,
            vec![ep(
                15090,
                "/stats/prometheus",
                Some("istio-proxy"),
                Some("http-envoy-prom")
            )]
        );
        let p = pod(
            json!({}),
            json!([app(json!([])), {"name": "linkerd-proxy", "image": "l"}]),
        );
        assert_eq!(
            endpoints(&p, true).0,
            vec![ep(
                4191,
                "/metrics",
                Some("linkerd-proxy"),
                Some("linkerd-proxy-stats")
            )]
        );
    }

    #[test]
    fn pod_without_spec_or_annotations_has_no_endpoints() {
        let p: KubePod = serde_json::from_value(json!({"metadata": {"name": "x"}})).expect("pod");
        assert_eq!(endpoints(&p, true), (Vec::new(), Vec::new()));
    }
}

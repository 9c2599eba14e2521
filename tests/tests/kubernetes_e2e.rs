//! loupe on Kubernetes, end to end: the real `loupe run --kubernetes` binary against the
//! in-process API server, with "containers" that are real processes in per-pod network namespaces
//! and kubelet-style cgroups (v2 systemd and v1 cgroupfs layouts), described by Pod objects whose
//! container IDs match. loupe must find them through the API, resolve them through `/proc`, attach
//! in their namespaces and serve their metrics; pods of another node, opted-out pods and deleted
//! pods must not appear; an API outage must not interrupt serving.
//!
//! Needs root, iproute2, a cgroup v2 hierarchy and the v1 `pids` hierarchy (skipped otherwise, a
//! failure when `CI=true`), and `cargo build` (the loupe and test binaries).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loupe_testkit::root;
use loupe_tests::cgroup::{new_container_id, new_pod_uid, v2_root, KubeCgroups, Layout, V1_ROOTS};
use loupe_tests::expo::{self, Exposition};
use loupe_tests::kubeapi::{running_pod, KubeApi};
use loupe_tests::loupe::Loupe;
use loupe_tests::pod::Pod;
use loupe_tests::{app_body, attached, unique_suffix, wait_for, Proc, TempDir, TESTBED_NEEDS};
use serde_json::{json, Value};

const NODE: &str = "n1";
const OTHER_NODE: &str = "n2";
/// Prometheus-style scrape headers (text format preferred, as with `scrape_protocols`
/// starting with PrometheusText0.0.4).
const ACCEPT: &str =
    "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1";
const SCRAPE_TIMEOUT: &str = "3";
const SERVE_WAIT: Duration = Duration::from_secs(45);

/// Root plus the cgroup hierarchies the layouts need; skips (or panics under `CI=true`) without.
fn available(test: &str) -> bool {
    if !root::require(test, TESTBED_NEEDS) {
        return false;
    }
    let missing: Vec<PathBuf> = [v2_root(), PathBuf::from(V1_ROOTS[0])]
        .into_iter()
        .filter(|root| !root.join("cgroup.procs").exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    root::skip(test, &format!("needs cgroup hierarchies at {missing:?}"))
}

/// Puts a container's process into kubelet-style cgroups under a top directory of its own (so
/// parallel tests never share a directory), and checks that `/proc/PID/cgroup` shows it.
fn place(pid: u32, layout: Layout, pod_uid: &str, container_id: &str) -> KubeCgroups {
    let (p, n) = unique_suffix();
    let qos = match layout {
        Layout::V2Systemd => "burstable",
        Layout::V1Cgroupfs => "besteffort",
    };
    let top = format!("loupe-e2e-{p}-{n}");
    let guard = KubeCgroups::place_in(pid, &[layout], Some(&top), qos, pod_uid, container_id)
        .unwrap_or_else(|e| panic!("placing {pid} in cgroups: {e}"));
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert!(
        own.contains(container_id),
        "/proc/{pid}/cgroup does not show container {container_id}: {own}"
    );
    guard
}

/// One container to run: a metrics-app on `port` whose samples carry `src="<container>"`.
#[derive(Clone, Debug)]
struct AppSpec {
    container: &'static str,
    port: u16,
    series: usize,
    /// The name of the declared container port, if any.
    port_name: Option<&'static str>,
    env: Option<Value>,
}

fn app(container: &'static str, port: u16, series: usize) -> AppSpec {
    AppSpec {
        container,
        port,
        series,
        port_name: None,
        env: None,
    }
}

impl AppSpec {
    fn named(mut self, name: &'static str) -> AppSpec {
        self.port_name = Some(name);
        self
    }

    fn env(mut self, env: Value) -> AppSpec {
        self.env = Some(env);
        self
    }
}

/// A running container: its process and cgroups. Fields drop in order: process, then cgroups.
struct Container {
    spec: AppSpec,
    id: String,
    _app: Proc,
    _cgroups: KubeCgroups,
}

/// A "real" pod: containers in a network namespace. Containers drop before the namespace.
struct KubePod {
    namespace: String,
    name: String,
    uid: String,
    containers: Vec<Container>,
    netns: Pod,
}

impl KubePod {
    fn start(namespace: &str, name: &str, layout: Layout, apps: &[AppSpec]) -> KubePod {
        let netns = Pod::new().expect("pod network namespace");
        let uid = new_pod_uid();
        let containers = apps
            .iter()
            .map(|spec| {
                let series = spec.series.to_string();
                let label = format!("src={}", spec.container);
                let proc = netns
                    .spawn_app(spec.port, &["--series", &series, "--extra-label", &label])
                    .expect("metrics-app");
                let id = new_container_id();
                let cgroups = place(proc.pid(), layout, &uid, &id);
                Container {
                    spec: spec.clone(),
                    id,
                    _app: proc,
                    _cgroups: cgroups,
                }
            })
            .collect();
        KubePod {
            namespace: namespace.into(),
            name: name.into(),
            uid,
            containers,
            netns,
        }
    }

    /// The Pod object the kubelet would report: running on `node`, every container started with
    /// `containerd://<id>`, its port declared.
    fn json(&self, node: &str, annotations: Value) -> Value {
        let ids: Vec<(&str, String)> = self
            .containers
            .iter()
            .map(|c| (c.spec.container, format!("containerd://{}", c.id)))
            .collect();
        let refs: Vec<(&str, &str)> = ids.iter().map(|(c, id)| (*c, id.as_str())).collect();
        let mut pod = running_pod(&self.namespace, &self.name, node, &refs, annotations);
        pod["metadata"]["uid"] = json!(self.uid);
        for (i, c) in self.containers.iter().enumerate() {
            let mut port = json!({"containerPort": c.spec.port, "protocol": "TCP"});
            if let Some(name) = c.spec.port_name {
                port["name"] = json!(name);
            }
            pod["spec"]["containers"][i]["ports"] = json!([port]);
            if let Some(env) = &c.spec.env {
                pod["spec"]["containers"][i]["env"] = env.clone();
            }
        }
        pod
    }

    fn attachments(&self) -> Vec<String> {
        attached::in_pod(&self.netns, "lo").expect("listing attachments")
    }
}

/// The API server on its own runtime (the test bodies block), with a kubeconfig for loupe.
/// Fields drop in order: server, kubeconfig directory, runtime.
struct Cluster {
    api: KubeApi,
    kubeconfig: PathBuf,
    _dir: TempDir,
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    fn start() -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let api = rt.block_on(KubeApi::start()).expect("API server");
        let dir = TempDir::new("loupe-e2e-kube").expect("temp dir");
        let kubeconfig = api.write_kubeconfig(dir.path()).expect("kubeconfig");
        Cluster {
            api,
            kubeconfig,
            _dir: dir,
            rt,
        }
    }

    fn loupe(&self) -> Loupe {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        Loupe::start_with_args(&[
            "--kubernetes",
            "--node-name",
            NODE,
            "--kubeconfig",
            &kubeconfig,
            "--fetch-timeout",
            "3",
        ])
        .expect("start loupe --kubernetes")
    }

    fn create(&self, pod: &KubePod, node: &str, annotations: Value) {
        self.api
            .create_pod(pod.json(node, annotations))
            .expect("create pod");
    }

    fn delete(&self, pod: &KubePod) {
        self.api
            .delete_pod(&pod.namespace, &pod.name)
            .expect("delete pod");
    }
}

fn prometheus_annotations(port: &str) -> Value {
    json!({"prometheus.io/scrape": "true", "prometheus.io/port": port})
}

/// Samples of the app (not loupe's own) with these labels.
fn app_samples<'a>(exp: &'a Exposition, with: &[(&str, &str)]) -> Vec<&'a expo::Sample> {
    exp.samples
        .iter()
        .filter(|s| s.name.starts_with("app_"))
        .filter(|s| with.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .collect()
}

/// Every pod named in any sample.
fn pods_in(exp: &Exposition) -> BTreeSet<String> {
    exp.samples
        .iter()
        .filter_map(|s| s.label("pod"))
        .map(str::to_string)
        .collect()
}

/// What one endpoint must look like in loupe's output.
struct Expect<'a> {
    namespace: &'a str,
    pod: &'a str,
    container: &'a str,
    endpoint: &'a str,
    series: usize,
}

impl Expect<'_> {
    fn labels(&self) -> [(&str, &str); 4] {
        [
            ("namespace", self.namespace),
            ("pod", self.pod),
            ("container", self.container),
            ("endpoint", self.endpoint),
        ]
    }

    /// Up, with exactly the app's series, each from the right container's app.
    fn holds(&self, exp: &Exposition) -> bool {
        let samples = app_samples(exp, &self.labels());
        exp.value("loupe_target_up", &self.labels()) == Some(1.0)
            && samples.len() == self.series
            && samples
                .iter()
                .all(|s| s.label("src") == Some(self.container))
    }
}

/// The count of app series `app_body` renders for `series`, checked once.
fn body_series(series: usize) -> usize {
    let body = String::from_utf8(app_body::text(series, None)).expect("utf-8");
    expo::parse_strict(&body).expect("app body").samples.len()
}

/// Prometheus-style scrape of loupe.
fn scrape(loupe: &Loupe) -> Result<(String, Exposition), String> {
    scrape_addr(&loupe.listen)
}

#[test]
fn realistic_containers_on_this_node_are_discovered_resolved_and_served() {
    if !available("realistic_containers_on_this_node_are_discovered_resolved_and_served") {
        return;
    }
    let cluster = Cluster::start();
    let cart = KubePod::start(
        "shop",
        "cart-7d9f",
        Layout::V2Systemd,
        &[app("cart", 8080, 12).named("http")],
    );
    let front = KubePod::start(
        "web",
        "front-5c2a",
        Layout::V2Systemd,
        &[app("front", 9090, 7)],
    );
    let stock = KubePod::start(
        "shop",
        "stock-0",
        Layout::V1Cgroupfs,
        &[app("stock", 8080, 9)],
    );
    let elsewhere = KubePod::start(
        "shop",
        "elsewhere-1",
        Layout::V2Systemd,
        &[app("app", 8080, 5)],
    );
    cluster.create(&cart, NODE, prometheus_annotations("8080"));
    cluster.create(&front, NODE, prometheus_annotations("9090"));
    cluster.create(&stock, NODE, prometheus_annotations("8080"));
    cluster.create(&elsewhere, OTHER_NODE, prometheus_annotations("8080"));

    let loupe = cluster.loupe();
    let expected = [
        Expect {
            namespace: "shop",
            pod: "cart-7d9f",
            container: "cart",
            endpoint: "http",
            series: body_series(12),
        },
        Expect {
            namespace: "web",
            pod: "front-5c2a",
            container: "front",
            endpoint: "9090",
            series: body_series(7),
        },
        Expect {
            namespace: "shop",
            pod: "stock-0",
            container: "stock",
            endpoint: "8080",
            series: body_series(9),
        },
    ];
    let (text, exp) = loupe
        .metrics_until(
            "every pod of n1 served with its identity",
            SERVE_WAIT,
            |exp| expected.iter().all(|e| e.holds(exp)),
        )
        .unwrap();
    expo::check_all(&text).expect("promtool and the strict checker accept loupe's output");
    let app_total: usize = expected.iter().map(|e| e.series).sum();
    assert_eq!(
        app_samples(&exp, &[]).len(),
        app_total,
        "only the n1 pods' app series are served"
    );
    assert_eq!(
        pods_in(&exp),
        expected.iter().map(|e| e.pod.to_string()).collect(),
        "pods named in the output"
    );
    // The pod of the other node is ignored entirely: not served, nothing attached in it.
    for _ in 0..3 {
        let (_, exp) = scrape(&loupe).unwrap();
        assert!(!pods_in(&exp).contains("elsewhere-1"));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        elsewhere.attachments().is_empty(),
        "attached in the other node's pod: {:?}",
        elsewhere.attachments()
    );
    for pod in [&cart, &front, &stock] {
        assert!(
            !pod.attachments().is_empty(),
            "loupe's probe is attached in {}",
            pod.name
        );
    }
}

#[test]
fn every_annotation_convention_end_to_end() {
    if !available("every_annotation_convention_end_to_end") {
        return;
    }
    let cluster = Cluster::start();
    let ns = "conv";
    // (pod, containers, annotations)
    let istio_env = json!([{"name": "ISTIO_PROMETHEUS_ANNOTATIONS",
        "value": r#"{"scrape":"true","port":"8383","path":"/metrics"}"#}]);
    let table: Vec<(&str, Vec<AppSpec>, Value)> = vec![
        (
            "multi",
            vec![app("app", 8080, 6).named("http"), app("exporter", 9100, 4)],
            json!({"loupe.dev/endpoints": "app:http, exporter:9100/metrics"}),
        ),
        (
            "named",
            vec![app("app", 8081, 5).named("metrics")],
            json!({}),
        ),
        (
            "consul",
            vec![app("app", 9102, 3)],
            json!({"consul.hashicorp.com/service-metrics-port": "9102",
                   "consul.hashicorp.com/service-metrics-path": "/metrics"}),
        ),
        (
            // Istio rewrote prometheus.io/* to its merge port; the sidecar's env has the app's.
            // The "sidecar" answers on 15020 too, so scraping it would show up as its series.
            "istio",
            vec![
                app("app", 8383, 8),
                app("istio-proxy", 15020, 2).env(istio_env),
            ],
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                   "prometheus.io/path": "/stats/prometheus"}),
        ),
        (
            "optout",
            vec![app("app", 8080, 5)],
            json!({"loupe.dev/scrape": "false", "prometheus.io/scrape": "true",
                   "prometheus.io/port": "8080"}),
        ),
    ];
    let pods: Vec<(KubePod, Value)> = table
        .into_iter()
        .map(|(name, apps, annotations)| {
            (
                KubePod::start(ns, name, Layout::V2Systemd, &apps),
                annotations,
            )
        })
        .collect();
    for (pod, annotations) in &pods {
        cluster.create(pod, NODE, annotations.clone());
    }
    let loupe = cluster.loupe();
    let e = |pod, container, endpoint, series| Expect {
        namespace: ns,
        pod,
        container,
        endpoint,
        series: body_series(series),
    };
    let expected = [
        e("multi", "app", "http", 6),
        e("multi", "exporter", "9100", 4),
        e("named", "app", "metrics", 5),
        e("consul", "app", "9102", 3),
        e("istio", "app", "8383", 8),
    ];
    let (_, exp) = loupe
        .metrics_until("every convention's endpoint", SERVE_WAIT, |exp| {
            expected.iter().all(|e| e.holds(exp))
        })
        .unwrap();
    // Exactly the expected targets: nothing on Istio's merge port, nothing of the opted-out pod.
    let targets: BTreeSet<(String, String)> = exp
        .find("loupe_target_up", &[])
        .map(|s| {
            (
                s.label("pod").unwrap_or("").to_string(),
                s.label("endpoint").unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = expected
        .iter()
        .map(|e| (e.pod.to_string(), e.endpoint.to_string()))
        .collect();
    assert_eq!(targets, want, "targets served");
    // Each endpoint's job (the pod's `app` label) and instance (`podIP:port`), on its health
    // series and its samples alike.
    for up in exp.find("loupe_target_up", &[]) {
        let pod = up.label("pod").unwrap_or("");
        let instance = up.label("instance").unwrap_or("");
        assert_eq!(up.label("job"), Some(pod), "{up:?}");
        assert!(instance.starts_with("198.18.0.2:"), "{up:?}");
        let endpoint = up.label("endpoint").unwrap_or("");
        let with = [
            ("pod", pod),
            ("endpoint", endpoint),
            ("job", pod),
            ("instance", instance),
        ];
        assert!(!app_samples(&exp, &with).is_empty(), "{up:?}");
    }
    assert!(app_samples(&exp, &[("src", "istio-proxy")]).is_empty());
    assert!(
        !pods_in(&exp).contains("optout"),
        "the opted-out pod is served"
    );
    let errors_before = exp
        .value("loupe_discovery_errors_total", &[])
        .expect("loupe_discovery_errors_total is exported");
    assert_eq!(errors_before, 0.0, "no annotation so far is malformed");

    // A malformed port next to a valid named `metrics` port: the valid endpoint still works.
    let malformed = KubePod::start(
        ns,
        "malformed",
        Layout::V2Systemd,
        &[app("app", 8082, 4).named("metrics")],
    );
    cluster.create(&malformed, NODE, prometheus_annotations("eighty"));
    let good = e("malformed", "app", "metrics", 4);
    let (text, exp) = loupe
        .metrics_until("the malformed pod's valid endpoint", SERVE_WAIT, |exp| {
            good.holds(exp)
        })
        .unwrap();
    expo::check_all(&text).expect("promtool and the strict checker accept loupe's output");
    assert_eq!(
        exp.value("loupe_discovery_errors_total", &[]),
        Some(errors_before + 1.0),
        "the malformed annotation is counted once"
    );
    let line = loupe
        .wait_log_line(&["conv/malformed", "eighty"], Duration::from_secs(10))
        .unwrap();
    assert!(line.contains("prometheus.io/port"), "{line}");
    drop(pods);
}

/// One scrape during churn.
struct Scraped {
    start: Instant,
    result: Result<BTreeSet<String>, String>,
}

/// Raises its flag when dropped, so a helper thread ends even when the test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// File descriptors of `pid` that are BPF links (TCX attachments hold one each).
fn bpf_links(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|t| t.to_string_lossy().contains("bpf_link"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn churn_of_fifty_pods_while_scraping() {
    if !available("churn_of_fifty_pods_while_scraping") {
        return;
    }
    const CHURN: usize = 50;
    const LIFETIME: Duration = Duration::from_secs(5);
    const EVERY: Duration = Duration::from_millis(1100);
    const SERIES: usize = 10;
    let cluster = Cluster::start();
    // An empty node first: loupe must become ready with no pods at all.
    let mut loupe = cluster.loupe();
    let pid = loupe.pid().expect("loupe runs");
    let links_before = bpf_links(pid);

    let keepers: Vec<KubePod> = (0..2)
        .map(|i| {
            let pod = KubePod::start(
                "churn",
                &format!("keeper-{i}"),
                if i == 0 {
                    Layout::V2Systemd
                } else {
                    Layout::V1Cgroupfs
                },
                &[app("app", 8080, SERIES)],
            );
            cluster.create(&pod, NODE, prometheus_annotations("8080"));
            pod
        })
        .collect();
    loupe
        .metrics_until("the keepers", SERVE_WAIT, |exp| {
            (0..2).all(|i| {
                app_samples(exp, &[("pod", &format!("keeper-{i}"))]).len() == body_series(SERIES)
            })
        })
        .unwrap();

    // Prometheus-style scraper, every 0.5 s, until told to stop (also when this test panics).
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let listen = loupe.listen.clone();
    let scraper = {
        let stop = stop.0.clone();
        std::thread::spawn(move || {
            let mut scrapes = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let result = scrape_addr(&listen).and_then(|(text, exp)| {
                    // promtool on every 4th scrape: a process per scrape would load the cores.
                    if n.is_multiple_of(4) {
                        expo::promtool_check(&text).map_err(|e| e.to_string())?;
                    }
                    Ok(pods_in(&exp))
                });
                n += 1;
                scrapes.push(Scraped { start, result });
                if let Some(rest) = Duration::from_millis(500).checked_sub(start.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            scrapes
        })
    };

    // Create one pod every ~1.1 s, delete each ~5 s later; check a deleted pod's namespace for
    // leftover attachments before removing it.
    let began = Instant::now();
    let mut alive: Vec<(KubePod, Instant)> = Vec::new();
    let mut deleted: Vec<(KubePod, Instant)> = Vec::new();
    let mut deletions: BTreeMap<String, Instant> = BTreeMap::new();
    let mut creations: BTreeMap<String, Instant> = BTreeMap::new();
    let mut leftovers = Vec::new();
    let mut created = 0usize;
    while created < CHURN || !alive.is_empty() || !deleted.is_empty() {
        let now = Instant::now();
        if created < CHURN && now >= began + EVERY * created as u32 {
            let pod = KubePod::start(
                "churn",
                &format!("churn-{created:02}"),
                if created % 3 == 2 {
                    Layout::V1Cgroupfs
                } else {
                    Layout::V2Systemd
                },
                &[app("app", 8080, SERIES)],
            );
            cluster.create(&pod, NODE, prometheus_annotations("8080"));
            creations.insert(pod.name.clone(), Instant::now());
            alive.push((pod, Instant::now()));
            created += 1;
        }
        while alive
            .first()
            .is_some_and(|(_, at)| at.elapsed() >= LIFETIME)
        {
            let (pod, _) = alive.remove(0);
            cluster.delete(&pod);
            let at = Instant::now();
            deletions.insert(pod.name.clone(), at);
            deleted.push((pod, at));
        }
        while deleted
            .first()
            .is_some_and(|(_, at)| at.elapsed() >= Duration::from_secs(3))
        {
            let (pod, at) = deleted.remove(0);
            let left = wait_for(
                &format!("nothing attached in deleted pod {}", pod.name),
                Duration::from_secs(5),
                || Ok(pod.attachments().is_empty().then_some(())),
            );
            if left.is_err() {
                leftovers.push(format!(
                    "{} ({:?} after deletion): {:?}",
                    pod.name,
                    at.elapsed(),
                    pod.attachments()
                ));
            }
            drop(pod);
        }
        assert!(loupe.is_running(), "loupe died during churn");
        std::thread::sleep(Duration::from_millis(50));
    }
    // One more second of scrapes after the last deletion was checked.
    std::thread::sleep(Duration::from_secs(1));
    stop.0.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("scraper thread");
    let churn_took = began.elapsed();

    assert!(loupe.is_running(), "loupe died during churn");
    assert!(
        scrapes.len() as f64 >= churn_took.as_secs_f64(),
        "only {} scrapes in {churn_took:?}",
        scrapes.len()
    );
    let failed: Vec<String> = scrapes
        .iter()
        .filter_map(|s| s.result.as_ref().err())
        .cloned()
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} scrapes failed: {:?}",
        failed.len(),
        scrapes.len(),
        failed.iter().take(3).collect::<Vec<_>>()
    );
    let shown: Vec<&BTreeSet<String>> = scrapes
        .iter()
        .filter_map(|s| s.result.as_ref().ok())
        .collect();
    // No scrape starting 2 s or more after a deletion shows the deleted pod.
    let mut stale = Vec::new();
    for (name, at) in &deletions {
        for s in &scrapes {
            if s.start >= *at + Duration::from_secs(2)
                && s.result.as_ref().is_ok_and(|pods| pods.contains(name))
            {
                stale.push(format!("{name} at +{:?}", s.start - *at));
            }
        }
    }
    assert!(stale.is_empty(), "deleted pods still served: {stale:?}");
    // Every churned pod was served while it lived (the test saw something to delete).
    let never: Vec<&String> = deletions
        .keys()
        .filter(|name| !shown.iter().any(|pods| pods.contains(*name)))
        .collect();
    assert_eq!(deletions.len(), CHURN);
    assert!(never.is_empty(), "never served: {never:?}");
    assert!(
        leftovers.is_empty(),
        "attachments left behind: {leftovers:?}"
    );
    // For the record: how soon pods showed up and went away, as scrapes saw it.
    let mut appear = Vec::new();
    let mut vanish = Vec::new();
    for (name, at) in &deletions {
        let ok = || {
            scrapes
                .iter()
                .filter_map(|s| Some((s.start, s.result.as_ref().ok()?)))
        };
        if let (Some(created), Some((first, _))) = (
            creations.get(name),
            ok().find(|(_, pods)| pods.contains(name)),
        ) {
            appear.push(first.saturating_duration_since(*created));
        }
        if let Some((last, _)) = ok().rfind(|(_, pods)| pods.contains(name)) {
            vanish.push(last.saturating_duration_since(*at));
        }
    }
    eprintln!(
        "churn: {} scrapes in {churn_took:?}; first scrape showing a pod after its creation: max {:?}; \
         last scrape showing it after its deletion: max {:?}",
        scrapes.len(),
        appear.iter().max(),
        vanish.iter().max()
    );

    // The survivors: served, one attachment each, and loupe holds exactly that many links.
    let (text, exp) = scrape(&loupe).unwrap();
    expo::promtool_check(&text).unwrap();
    assert_eq!(
        pods_in(&exp),
        ["keeper-0", "keeper-1"].map(String::from).into(),
        "only the keepers remain"
    );
    let mut tcx = false;
    for pod in &keepers {
        let found = pod.attachments();
        assert_eq!(found.len(), 1, "attachments in {}: {found:?}", pod.name);
        tcx |= found[0].starts_with("tcx/");
    }
    if tcx {
        assert_eq!(
            bpf_links(pid) - links_before,
            keepers.len(),
            "BPF links held by loupe beyond its start"
        );
    } else {
        eprintln!("churn: netlink attachments (no TCX): loupe's BPF links not counted");
    }
    let status = loupe.stop(libc::SIGTERM).unwrap();
    assert!(status.success(), "loupe exited with {status}");
}

/// A Prometheus-style scrape (Accept and scrape-timeout headers): 200 and strictly valid, or why
/// not.
fn scrape_addr(listen: &str) -> Result<(String, Exposition), String> {
    let r = loupe_tests::http::get(
        listen,
        "/metrics",
        &[
            ("Accept", ACCEPT),
            ("X-Prometheus-Scrape-Timeout-Seconds", SCRAPE_TIMEOUT),
        ],
        Duration::from_secs(10),
    )
    .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!(
            "status {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    let text = r.text().map_err(|e| e.to_string())?;
    let exp = expo::parse_strict(&text).map_err(|e| e.to_string())?;
    Ok((text, exp))
}

#[test]
fn api_server_away_for_thirty_seconds() {
    if !available("api_server_away_for_thirty_seconds") {
        return;
    }
    const SERIES: usize = 6;
    let mut cluster = Cluster::start();
    let pods: Vec<KubePod> = ["a", "b"]
        .iter()
        .map(|name| {
            let pod = KubePod::start(
                "outage",
                name,
                Layout::V2Systemd,
                &[app("app", 8080, SERIES)],
            );
            cluster.create(&pod, NODE, prometheus_annotations("8080"));
            pod
        })
        .collect();
    let loupe = cluster.loupe();
    let served = |exp: &Exposition, pod: &str| {
        app_samples(exp, &[("namespace", "outage"), ("pod", pod)]).len() == body_series(SERIES)
    };
    loupe
        .metrics_until("both pods", SERVE_WAIT, |exp| {
            served(exp, "a") && served(exp, "b")
        })
        .unwrap();

    let newcomer = KubePod::start(
        "outage",
        "c",
        Layout::V1Cgroupfs,
        &[app("app", 8080, SERIES)],
    );
    cluster.rt.block_on(cluster.api.stop());
    let down = Instant::now();
    let mut changed = false;
    let mut scrapes = 0;
    while down.elapsed() < Duration::from_secs(30) {
        let (_, exp) =
            scrape(&loupe).unwrap_or_else(|e| panic!("scrape while the API is away: {e}"));
        assert!(
            served(&exp, "a") && served(&exp, "b"),
            "both pods served {:?} into the outage; pods shown: {:?}",
            down.elapsed(),
            pods_in(&exp)
        );
        assert!(!pods_in(&exp).contains("c"), "a pod loupe cannot have seen");
        scrapes += 1;
        if !changed && down.elapsed() >= Duration::from_secs(10) {
            // Changes loupe can only learn about once the server is back.
            cluster.create(&newcomer, NODE, prometheus_annotations("8080"));
            cluster.delete(&pods[1]);
            changed = true;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    assert!(
        changed && scrapes >= 8,
        "{scrapes} scrapes during the outage"
    );
    let log = loupe.log();
    assert!(
        log.contains("failed, keeping the last"),
        "loupe noticed the API server was away"
    );

    cluster
        .rt
        .block_on(cluster.api.restart())
        .expect("restart the API server");
    let back = Instant::now();
    loupe
        .metrics_until(
            "the new pod served and the deleted one gone after the restart",
            Duration::from_secs(17),
            |exp| served(exp, "a") && served(exp, "c") && !pods_in(exp).contains("b"),
        )
        .unwrap();
    eprintln!(
        "caught up {:?} after the API server came back",
        back.elapsed()
    );
    let (text, _) = scrape(&loupe).unwrap();
    expo::check_all(&text).unwrap();
    drop(newcomer);
    drop(pods);
}

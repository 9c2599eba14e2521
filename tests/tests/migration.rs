//! Moving from per-pod scraping to loupe: the same apps scraped by one real Prometheus directly
//! (static targets carrying the `__meta_kubernetes_*` labels Kubernetes discovery would give,
//! relabelled as the `kubernetes-pods` convention does, job from `app.kubernetes.io/name`) and
//! by a second real Prometheus through loupe (`honor_labels: true`, deploy/prometheus's
//! per-pod-up.yaml as its rule file). Queries typical of dashboards and alerts must return the
//! same series with the same values from both: rates and totals by job and instance, a
//! histogram quantile by job, the `up`-based alert expression, a join on a pod label, and an
//! app's own `job` and pod-label-named labels kept as `exported_*`.
//!
//! The apps serve fixed bodies (`metrics-app --body-file`), so both servers store the same
//! values whenever they scrape; each query is polled until both sides answer with the expected
//! number of series, then the answers must be equal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use loupe_testkit::root;
use loupe_tests::loupe::Loupe;
use loupe_tests::pod::Pod;
use loupe_tests::prometheus::{Prometheus, VectorSample, GLOBAL};
use loupe_tests::{workspace_root, Proc, TempDir, TESTBED_NEEDS};

const PORT: u16 = 8080;

/// One app pod: its name, the labels its Deployment gave it, and the counts its body says.
struct App {
    name: &'static str,
    job: &'static str,
    team: &'static str,
    /// `None`: the app answers 500 (down).
    requests: Option<(u32, u32)>,
}

const APPS: [App; 4] = [
    App {
        name: "checkout-7c9d8-a",
        job: "checkout",
        team: "pay",
        requests: Some((120, 3)),
    },
    App {
        name: "checkout-7c9d8-b",
        job: "checkout",
        team: "pay",
        requests: Some((80, 7)),
    },
    App {
        name: "cart-5f6b-a",
        job: "cart",
        team: "shop",
        requests: Some((45, 0)),
    },
    App {
        name: "payments-0",
        job: "payments",
        team: "pay",
        requests: None,
    },
];

/// The app's body: a counter, a histogram, and an info gauge with labels of its own named
/// `job` and `team` (a pod label copied onto the series).
fn body(ok: u32, failed: u32) -> String {
    let total = ok + failed;
    let (b1, b2, b3) = (total / 4, total / 2, total * 9 / 10);
    format!(
        "# HELP http_requests_total Requests served.\n# TYPE http_requests_total counter\n\
         http_requests_total{{method=\"GET\",code=\"200\"}} {ok}\n\
         http_requests_total{{method=\"POST\",code=\"500\"}} {failed}\n\
         # HELP request_duration_seconds Request latency.\n# TYPE request_duration_seconds histogram\n\
         request_duration_seconds_bucket{{le=\"0.1\"}} {b1}\n\
         request_duration_seconds_bucket{{le=\"0.5\"}} {b2}\n\
         request_duration_seconds_bucket{{le=\"1\"}} {b3}\n\
         request_duration_seconds_bucket{{le=\"+Inf\"}} {total}\n\
         request_duration_seconds_sum {}\n\
         request_duration_seconds_count {total}\n\
         # HELP build_info Build.\n# TYPE build_info gauge\n\
         build_info{{version=\"1.4.2\",job=\"legacy\",team=\"app-team\"}} 1\n",
        f64::from(total) * 0.3
    )
}

/// The direct scrape's configuration: one static target per pod, with the labels Kubernetes
/// discovery (role pod) gives it, and the `kubernetes-pods` relabelling plus job, container and
/// endpoint as a PodMonitor sets them.
fn direct_config(pods: &[(&App, &Pod)]) -> String {
    let mut c =
        format!("{GLOBAL}scrape_configs:\n  - job_name: kubernetes-pods\n    static_configs:\n");
    for (app, pod) in pods {
        let _ = write!(
            c,
            "      - targets: [\"{ip}:{PORT}\"]\n        labels:\n\
             \x20         __meta_kubernetes_namespace: shop\n\
             \x20         __meta_kubernetes_pod_name: {name}\n\
             \x20         __meta_kubernetes_pod_ip: {ip}\n\
             \x20         __meta_kubernetes_pod_container_name: app\n\
             \x20         __meta_kubernetes_pod_container_port_name: http-metrics\n\
             \x20         __meta_kubernetes_pod_label_app_kubernetes_io_name: {job}\n\
             \x20         __meta_kubernetes_pod_label_team: {team}\n\
             \x20         __meta_kubernetes_pod_label_pod_template_hash: 7c9d8\n",
            ip = pod.pod_ip,
            name = app.name,
            job = app.job,
            team = app.team,
        );
    }
    c.push_str(
        "    relabel_configs:\n\
         \x20     - action: labelmap\n\
         \x20       regex: __meta_kubernetes_pod_label_(app_kubernetes_io_.+|team)\n\
         \x20     - source_labels: [__meta_kubernetes_namespace]\n\
         \x20       target_label: namespace\n\
         \x20     - source_labels: [__meta_kubernetes_pod_name]\n\
         \x20       target_label: pod\n\
         \x20     - source_labels: [__meta_kubernetes_pod_container_name]\n\
         \x20       target_label: container\n\
         \x20     - source_labels: [__meta_kubernetes_pod_container_port_name]\n\
         \x20       target_label: endpoint\n\
         \x20     - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name]\n\
         \x20       target_label: job\n",
    );
    c
}

/// loupe's pods file: the same pods, with their IPs and labels (what Kubernetes would say).
fn pods_file(pods: &[(&App, &Pod)]) -> String {
    let mut y = String::from("pods:\n");
    for (app, pod) in pods {
        let _ = write!(
            y,
            "  - namespace: shop\n    name: {name}\n    netns: {netns}\n    ip: {ip}\n\
             \x20   labels:\n      app.kubernetes.io/name: {job}\n      team: {team}\n      pod-template-hash: 7c9d8\n\
             \x20   endpoints:\n      - port: {PORT}\n        container: app\n        name: http-metrics\n",
            name = app.name,
            netns = pod.netns_path().display(),
            ip = pod.pod_ip,
            job = app.job,
            team = app.team,
        );
    }
    y
}

/// A query's answer as comparable text: each series' labels (the name left out when `nameless`)
/// and value, sorted.
fn canonical(samples: &[VectorSample], nameless: bool) -> Vec<String> {
    let mut out: Vec<String> = samples
        .iter()
        .map(|s| {
            let labels: BTreeMap<&str, &str> = s
                .labels
                .iter()
                .filter(|(k, _)| !(nameless && k.as_str() == "__name__"))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            format!("{labels:?} {}", s.value)
        })
        .collect();
    out.sort();
    out
}

/// A dashboard's or alert's query, as written for direct scraping and as it reads behind loupe.
struct Check {
    direct: &'static str,
    through: &'static str,
    /// Series the answer has.
    series: usize,
    /// Compare without `__name__` (an expression over `up` against one over `loupe_target_up`).
    nameless: bool,
}

const CHECKS: [Check; 9] = [
    // Every series, labels and all: the app's `job` and `team` labels as exported_*.
    Check {
        direct: "{namespace=\"shop\",__name__=~\"http_requests_total|build_info\"}",
        through: "{namespace=\"shop\",__name__=~\"http_requests_total|build_info\"}",
        series: 9,
        nameless: false,
    },
    Check {
        direct: "sum by (job, instance) (rate(http_requests_total[30s]))",
        through: "sum by (job, instance) (rate(http_requests_total[30s]))",
        series: 3,
        nameless: false,
    },
    Check {
        direct: "sum by (job, instance) (http_requests_total{code=\"500\"})",
        through: "sum by (job, instance) (http_requests_total{code=\"500\"})",
        series: 3,
        nameless: false,
    },
    Check {
        direct: "histogram_quantile(0.9, sum by (job, le) (request_duration_seconds_bucket))",
        through: "histogram_quantile(0.9, sum by (job, le) (request_duration_seconds_bucket))",
        series: 2,
        nameless: false,
    },
    // The alert, unchanged, through per-pod-up.yaml's recording of `up`.
    Check {
        direct: "up{job=\"payments\"} == 0",
        through: "up{job=\"payments\"} == 0",
        series: 1,
        nameless: false,
    },
    // The alert written on loupe's series.
    Check {
        direct: "up{job=\"payments\"} == 0",
        through: "loupe_target_up{job=\"payments\"} == 0",
        series: 1,
        nameless: true,
    },
    Check {
        direct: "count by (job) (up{namespace=\"shop\"})",
        through: "count by (job) (up{namespace=\"shop\"})",
        series: 3,
        nameless: false,
    },
    // A join on a pod label: requests per team over the team's up endpoints.
    Check {
        direct: "sum by (team) (http_requests_total) / on (team) count by (team) (up{namespace=\"shop\"} == 1)",
        through: "sum by (team) (http_requests_total) / on (team) count by (team) (up{namespace=\"shop\"} == 1)",
        series: 2,
        nameless: false,
    },
    Check {
        direct: "sum by (job, instance, pod, team) (http_requests_total) * on (job, instance) group_left (version) build_info",
        through: "sum by (job, instance, pod, team) (http_requests_total) * on (job, instance) group_left (version) build_info",
        series: 3,
        nameless: false,
    },
];

#[test]
fn dashboards_and_alerts_read_the_same_through_loupe() {
    if !root::require(
        "dashboards_and_alerts_read_the_same_through_loupe",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let start = Instant::now();
    let bodies = TempDir::new("loupe-migration").unwrap();
    let mut pods: Vec<Pod> = Vec::new();
    let mut procs: Vec<Proc> = Vec::new();
    for app in &APPS {
        let pod = Pod::new().unwrap();
        // On every address: Prometheus scrapes the pod's, loupe the pod's loopback.
        let listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT));
        let proc = match app.requests {
            Some((ok, failed)) => {
                let file = bodies.path().join(format!("{}.txt", app.name));
                std::fs::write(&file, body(ok, failed)).unwrap();
                let file = file.to_string_lossy().into_owned();
                pod.spawn_app_at(listen, &["--body-file", &file])
            }
            None => pod.spawn_app_at(listen, &["--mode", "status500"]),
        };
        procs.push(proc.unwrap());
        pods.push(pod);
    }
    let paired: Vec<(&App, &Pod)> = APPS.iter().zip(&pods).collect();

    let loupe = Loupe::start(
        &[],
        &[
            "--capture",
            "off",
            "--pod-labels",
            "app.kubernetes.io/*,team",
        ],
    )
    .unwrap();
    loupe.write_pods(&pods_file(&paired)).unwrap();
    let direct = Prometheus::start_config(&direct_config(&paired), &[]).unwrap();
    let rules = workspace_root().join("deploy/prometheus/per-pod-up.yaml");
    let through = Prometheus::start_config(
        &format!(
            "{GLOBAL}rule_files:\n  - {}\nscrape_configs:\n  - job_name: loupe\n    honor_labels: true\n    static_configs:\n      - targets: [\"{}\"]\n",
            rules.display(),
            loupe.listen
        ),
        &[],
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(45);
    for check in &CHECKS {
        let answers = loop {
            let d = direct.query(check.direct).unwrap_or_default();
            let t = through.query(check.through).unwrap_or_default();
            let (d, t) = (canonical(&d, check.nameless), canonical(&t, check.nameless));
            if (d.len() == check.series && d == t) || Instant::now() > deadline {
                break (d, t);
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert_eq!(
            answers.0.len(),
            check.series,
            "direct {}: {:#?}\n  loupe's log: {}",
            check.direct,
            answers.0,
            loupe.log()
        );
        assert_eq!(
            answers.0, answers.1,
            "direct {} vs through loupe {}",
            check.direct, check.through
        );
    }
    // The answers are the pods' own, not both sides equally wrong.
    let by_instance = direct
        .query("sum by (job, instance) (http_requests_total{code=\"500\"})")
        .unwrap();
    for (app, pod) in &paired {
        if let Some((_, failed)) = app.requests {
            let instance = format!("{}:{PORT}", pod.pod_ip);
            assert!(
                by_instance
                    .iter()
                    .any(|s| s.labels.get("job").map(String::as_str) == Some(app.job)
                        && s.labels.get("instance") == Some(&instance)
                        && s.value == f64::from(failed)),
                "{} {instance}: {by_instance:?}",
                app.job
            );
        }
    }
    let info = through.query("build_info").unwrap();
    assert!(
        info.iter().all(
            |s| s.labels.get("exported_job").map(String::as_str) == Some("legacy")
                && s.labels.get("exported_team").map(String::as_str) == Some("app-team")
        ),
        "{info:?}"
    );
    eprintln!(
        "migration: {} queries the same directly and through loupe ({:.1?})",
        CHECKS.len(),
        start.elapsed()
    );
    drop(procs);
}

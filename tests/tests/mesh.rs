//! The mesh situation, for real: pods behind a strict-mTLS Envoy, loupe collecting from inside
//! their network namespaces, a real Prometheus storing what loupe serves. Also: two containers in
//! one pod, and an app's own `pod` label kept as `exported_pod`.

use std::time::Duration;

use loupe_testkit::root;
use loupe_tests::attached;
use loupe_tests::envoy::{scrape_from_host, ClientAuth};
use loupe_tests::expo::{self, Exposition};
use loupe_tests::loupe::{EndpointSpec, Loupe, NetnsRef, PodSpec};
use loupe_tests::pod::Pod;
use loupe_tests::prometheus::Prometheus;
use loupe_tests::testbed::{app_series, Mesh, IDENTITY, SIDECAR_PORT};
use loupe_tests::TESTBED_NEEDS;

const SERIES: usize = 200;
const SCRAPE_WAIT: Duration = Duration::from_secs(60);

fn has_pod(exp: &Exposition, pod: &str, n: usize) -> bool {
    exp.samples
        .iter()
        .filter(|s| s.name.starts_with("app_") && s.label("pod") == Some(pod))
        .count()
        == n
}

#[test]
fn three_meshed_pods_are_merged_by_loupe_and_stored_by_prometheus() {
    if !root::require(
        "three_meshed_pods_are_merged_by_loupe_and_stored_by_prometheus",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let series = SERIES.to_string();
    let mesh = Mesh::new(3, &["--series", &series]).unwrap();

    // The mesh refuses everyone without the mesh's client certificate.
    for mp in &mesh.pods {
        let scrape = |auth| scrape_from_host(&mp.pod, &mesh.certs, SIDECAR_PORT, "/metrics", auth);
        assert!(
            scrape(ClientAuth::Plaintext).is_err(),
            "{}: plaintext got through",
            mp.spec.name
        );
        assert!(
            scrape(ClientAuth::NoCert).is_err(),
            "{}: no client cert got through",
            mp.spec.name
        );
        assert!(
            scrape(ClientAuth::ForeignCert).is_err(),
            "{}: foreign cert got through",
            mp.spec.name
        );
        let body = scrape(ClientAuth::MeshCert).unwrap();
        assert_eq!(expo::parse_strict(&body).unwrap().samples.len(), SERIES);
    }

    let loupe = Loupe::start(&mesh.specs(), &[]).unwrap();
    assert_eq!(loupe.get("/healthz", &[]).unwrap().status, 200);
    let (text, exp) = loupe
        .metrics_until(
            "every pod's series in loupe's /metrics",
            SCRAPE_WAIT,
            |exp| {
                mesh.pods
                    .iter()
                    .all(|mp| has_pod(exp, &mp.spec.name, SERIES))
            },
        )
        .unwrap();
    expo::promtool_check(&text).unwrap();

    let want = app_series(SERIES, None).unwrap();
    for mp in &mesh.pods {
        let who = [
            ("namespace", "shop"),
            ("pod", mp.spec.name.as_str()),
            ("container", "app"),
            ("endpoint", "http-metrics"),
        ];
        let mut got = exp.series_where(&who, &IDENTITY);
        got.retain(|k, _| k.starts_with("app_"));
        let diff = expo::diff(&want, &got);
        assert!(diff.is_empty(), "pod {}: {diff:?}", mp.spec.name);
        assert_eq!(
            exp.value("loupe_target_up", &who),
            Some(1.0),
            "{}",
            mp.spec.name
        );
        assert_eq!(
            exp.value("loupe_target_samples", &who),
            Some(SERIES as f64),
            "{}",
            mp.spec.name
        );
        let sources: Vec<_> = exp
            .find("loupe_target_info", &who)
            .filter(|s| s.value == 1.0)
            .filter_map(|s| s.label("source"))
            .collect();
        assert!(
            sources == ["observed"] || sources == ["fetched"],
            "{}: loupe_target_info sources {sources:?}",
            mp.spec.name
        );
        // While loupe runs, its classifier sits on the pod's loopback.
        let progs = attached::in_pod(&mp.pod, "lo").unwrap();
        assert!(
            !progs.is_empty(),
            "{}: nothing attached on lo while loupe runs",
            mp.spec.name
        );
    }

    // A real Prometheus scraping loupe stores every pod's series under its identity.
    let prom = Prometheus::start("loupe", &[&loupe.listen]).unwrap();
    let per_pod = prom
        .query_until(
            "count by (namespace, pod, container, endpoint) (app_queue_bytes{namespace=\"shop\"})",
            3,
            Duration::from_secs(60),
        )
        .unwrap();
    let want_queue = want
        .keys()
        .filter(|k| k.starts_with("app_queue_bytes{"))
        .count() as f64;
    let mut pods: Vec<_> = per_pod
        .iter()
        .map(|s| {
            assert_eq!(s.labels["container"], "app");
            assert_eq!(s.labels["endpoint"], "http-metrics");
            assert_eq!(s.value, want_queue, "{:?}", s.labels);
            s.labels["pod"].clone()
        })
        .collect();
    pods.sort();
    assert_eq!(pods, ["cart-0", "cart-1", "cart-2"]);
    let targets = prom.targets().unwrap();
    assert!(targets.iter().all(|t| t.1 == "up"), "{targets:?}");
    let up = prom
        .query_until(
            "loupe_target_up{namespace=\"shop\"} == 1",
            3,
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(up.len(), 3);
}

#[test]
fn two_containers_in_one_pod_are_told_apart_by_container() {
    if !root::require(
        "two_containers_in_one_pod_are_told_apart_by_container",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let pod = Pod::new().unwrap();
    // Both expose the same metric names: only `container` (and `endpoint`) tell them apart.
    let _web = pod.spawn_app(8080, &["--series", "120"]).unwrap();
    let _worker = pod.spawn_app(9090, &["--series", "80"]).unwrap();
    let spec = PodSpec {
        namespace: "shop".into(),
        name: "checkout-1".into(),
        netns: NetnsRef::Path(pod.netns_path()),
        endpoints: vec![
            EndpointSpec::port(8080).container("web"),
            EndpointSpec::port(9090)
                .container("worker")
                .path("/metrics"),
        ],
    };
    let loupe = Loupe::start(&[spec], &[]).unwrap();
    let count = |exp: &Exposition, c: &str| {
        exp.samples
            .iter()
            .filter(|s| s.name.starts_with("app_") && s.label("container") == Some(c))
            .count()
    };
    let (text, exp) = loupe
        .metrics_until("both containers' series", SCRAPE_WAIT, |exp| {
            count(exp, "web") == 120 && count(exp, "worker") == 80
        })
        .unwrap();
    expo::promtool_check(&text).unwrap();
    for (container, port, n) in [("web", "8080", 120), ("worker", "9090", 80)] {
        let who = [
            ("namespace", "shop"),
            ("pod", "checkout-1"),
            ("container", container),
            ("endpoint", port),
        ];
        let mut got = exp.series_where(&who, &IDENTITY);
        got.retain(|k, _| k.starts_with("app_"));
        let diff = expo::diff(&app_series(n, None).unwrap(), &got);
        assert!(diff.is_empty(), "{container}: {diff:?}");
        assert_eq!(exp.value("loupe_target_up", &who), Some(1.0), "{container}");
    }
}

#[test]
fn an_apps_pod_label_comes_out_as_exported_pod() {
    if !root::require("an_apps_pod_label_comes_out_as_exported_pod", TESTBED_NEEDS) {
        return;
    }
    let pod = Pod::new().unwrap();
    let _app = pod
        .spawn_app(8080, &["--series", "60", "--extra-label", "pod=x"])
        .unwrap();
    let spec = PodSpec {
        namespace: "shop".into(),
        name: "cart-7d9f".into(),
        netns: NetnsRef::Path(pod.netns_path()),
        endpoints: vec![EndpointSpec::port(8080).container("app")],
    };
    let loupe = Loupe::start(&[spec], &[]).unwrap();
    let (text, exp) = loupe
        .metrics_until("the app's series", SCRAPE_WAIT, |exp| {
            exp.samples
                .iter()
                .filter(|s| s.name.starts_with("app_"))
                .count()
                == 60
        })
        .unwrap();
    expo::promtool_check(&text).unwrap();
    for s in exp.samples.iter().filter(|s| s.name.starts_with("app_")) {
        assert_eq!(s.label("pod"), Some("cart-7d9f"), "{s:?}");
        assert_eq!(s.label("exported_pod"), Some("x"), "{s:?}");
        assert_eq!(s.label("namespace"), Some("shop"), "{s:?}");
    }
    // Renaming pod -> exported_pod and adding the identity gives back exactly the app's series.
    let want = app_series(60, Some(("exported_pod", "x"))).unwrap();
    let mut got = exp.series_where(&[("pod", "cart-7d9f")], &IDENTITY);
    got.retain(|k, _| k.starts_with("app_"));
    let diff = expo::diff(&want, &got);
    assert!(diff.is_empty(), "{diff:?}");
}

#[test]
fn a_pod_given_by_pid_is_found() {
    if !root::require("a_pod_given_by_pid_is_found", TESTBED_NEEDS) {
        return;
    }
    let pod = Pod::new().unwrap();
    let app = pod.spawn_app(8080, &["--series", "30"]).unwrap();
    let spec = PodSpec {
        namespace: "default".into(),
        name: "by-pid".into(),
        netns: NetnsRef::Pid(app.pid()),
        endpoints: vec![EndpointSpec::port(8080)],
    };
    let loupe = Loupe::start(&[spec], &[]).unwrap();
    let (text, _) = loupe
        .metrics_until("the pod's series", SCRAPE_WAIT, |exp| {
            has_pod(exp, "by-pid", 30)
        })
        .unwrap();
    expo::promtool_check(&text).unwrap();
}

#[test]
fn chunked_gzip_and_openmetrics_replies_are_served_whole() {
    if !root::require(
        "chunked_gzip_and_openmetrics_replies_are_served_whole",
        TESTBED_NEEDS,
    ) {
        return;
    }
    use loupe_tests::client::ClientLoop;
    let mut keep = Vec::new();
    let mut specs = Vec::new();
    let mut clients = Vec::new();
    for mode in ["chunked", "gzip", "openmetrics"] {
        let pod = Pod::new().unwrap();
        let app = pod
            .spawn_app(8080, &["--series", "150", "--mode", mode])
            .unwrap();
        // Another scraper in the pod, so the observed path sees these encodings too.
        let curl_opts = if mode == "gzip" { "--compressed" } else { "" };
        clients.push(
            ClientLoop::start(&pod, "http://127.0.0.1:8080/metrics", "0.5", curl_opts).unwrap(),
        );
        specs.push(PodSpec {
            namespace: "formats".into(),
            name: mode.into(),
            netns: NetnsRef::Path(pod.netns_path()),
            endpoints: vec![EndpointSpec::port(8080).container("app")],
        });
        keep.push((app, pod));
    }
    let loupe = Loupe::start(&specs, &[]).unwrap();
    let (text, exp) = loupe
        .metrics_until("every format's series", SCRAPE_WAIT, |exp| {
            ["chunked", "gzip", "openmetrics"]
                .iter()
                .all(|p| has_pod(exp, p, 150))
        })
        .unwrap();
    expo::promtool_check(&text).unwrap();
    let want = app_series(150, None).unwrap();
    for mode in ["chunked", "gzip", "openmetrics"] {
        let mut got = exp.series_where(&[("namespace", "formats"), ("pod", mode)], &IDENTITY);
        got.retain(|k, _| k.starts_with("app_"));
        let diff = expo::diff(&want, &got);
        assert!(diff.is_empty(), "{mode}: {diff:?}");
    }
    drop(clients);
}

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
    // No container declares 9000: the pod's only container owns it.
    assert_eq!(eps, vec![ep(9000, "/metrics", Some("app"), None)]);
    assert!(errs.is_empty());
}

#[test]
fn an_undeclared_port_belongs_to_the_only_container_that_is_not_a_mesh_sidecar() {
    let annotations = json!({"prometheus.io/scrape": "true", "prometheus.io/port": "9000"});
    let beside_istio = pod(
        annotations.clone(),
        json!([app(json!([])), istio_proxy(None)]),
    );
    assert_eq!(
        endpoints(&beside_istio, false).0,
        vec![ep(9000, "/metrics", Some("app"), None)]
    );
    // Two app containers: the owner is not obvious, so none is named.
    let two = pod(
        annotations,
        json!([app(json!([])), {"name": "worker", "image": "worker"}]),
    );
    assert_eq!(
        endpoints(&two, false).0,
        vec![ep(9000, "/metrics", None, None)]
    );
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
        vec![ep(8080, "/metrics", Some("app"), None)]
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

#[test]
fn endpoints_beyond_the_per_pod_cap_are_reported_not_scraped() {
    let list: Vec<String> = (0..40).map(|i| (9000 + i).to_string()).collect();
    let p = pod(
        json!({"loupe.dev/endpoints": list.join(",")}),
        json!([app(json!([]))]),
    );
    let (found, errors) = endpoints(&p, false);
    assert_eq!(found.len(), MAX_ENDPOINTS_PER_POD);
    assert_eq!(found[0].port, 9000, "the first ones are kept");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].reason.contains("40 endpoints") && errors[0].to_string().contains("shop/cart-1"),
        "{}",
        errors[0]
    );
}

#[test]
fn limits_come_from_annotations_and_a_malformed_one_is_named() {
    let p = pod(
        json!({"loupe.dev/sample-limit": "5000", "loupe.dev/label-value-length-limit": " 0 ",
               "loupe.dev/body-size-limit": "lots"}),
        json!([app(json!([]))]),
    );
    let (limits, errors) = super::limits(&p);
    assert_eq!(limits.sample_limit, Some(5000));
    assert_eq!(limits.label_value_length_limit, Some(0));
    assert_eq!(limits.label_limit, None);
    assert_eq!(limits.body_size_limit, None, "the default applies");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].annotation, "loupe.dev/body-size-limit");
    assert!(
        errors[0].to_string().contains("shop/cart-1"),
        "{}",
        errors[0]
    );
}

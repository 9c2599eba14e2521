//! Native histograms (protobuf exposition) end to end: the official Rust client's app
//! (`native-app`, its metrics in `native_body`) scraped by a real Prometheus with native
//! histograms on, directly and through loupe. Also what the app itself serves in each format,
//! decoded with the client's own prost types.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use loupe_testkit::{root, strict, Format};
use loupe_tests::http::{self, Response};
use loupe_tests::loupe::{EndpointSpec, Loupe, NetnsRef, PodSpec};
use loupe_tests::native_body::{
    self as nb, OPENMETRICS_TYPE, PROTOBUF_TYPE, RPC, RPC_SCHEMA, SIZE, SIZE_BUCKETS, SIZE_SCHEMA,
    TEXT_TYPE,
};
use loupe_tests::pod::Pod;
use loupe_tests::prometheus::{Prometheus, VectorSample};
use loupe_tests::{crate_bin, free_port, wait_for, Proc, TESTBED_NEEDS};
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{
    Histogram, Metric, MetricFamily, MetricType,
};

const PORT: u16 = 8080;
/// Prometheus 2.40+: ask for protobuf first, store native histograms.
const NATIVE_FEATURE: &str = "--enable-feature=native-histograms";
/// What Prometheus 3 sends with native histograms on (shared/notes/prometheus3.md).
const PROTOBUF_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
/// Prometheus 3's default (no native histograms).
const DEFAULT_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// `native-app` on the host's loopback (nothing else needed), once it answers.
fn host_app(extra: &[&str]) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let child = Command::new(crate_bin("native-app").unwrap())
        .args(["--listen", &addr])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut proc = Proc {
        what: "native-app".into(),
        child,
    };
    wait_for("native-app to answer", Duration::from_secs(20), || {
        if !proc.running() {
            return Err("exited".into());
        }
        Ok(http::get(&addr, "/requests", &[], Duration::from_secs(2))
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ()))
    })
    .unwrap();
    (proc, addr)
}

fn get_metrics(addr: &str, accept: &str) -> Response {
    let r = http::get(
        addr,
        "/metrics",
        &[("Accept", accept)],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    r
}

fn family<'a>(families: &'a [MetricFamily], name: &str) -> &'a MetricFamily {
    families.iter().find(|f| f.name == name).unwrap_or_else(|| {
        let names: Vec<_> = families.iter().map(|f| f.name.as_str()).collect();
        panic!("no family {name} in {names:?}")
    })
}

fn label<'a>(m: &'a Metric, name: &str) -> Option<&'a str> {
    m.label
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value.as_str())
}

fn spans(h: &Histogram) -> Vec<(i32, u32)> {
    h.positive_span
        .iter()
        .map(|s| (s.offset, s.length))
        .collect()
}

/// A native histogram's fields against the observations it was fed, at `schema`.
fn assert_native(h: &Histogram, schema: i8, obs: &[f64], what: &str) {
    assert_eq!(h.sample_count, obs.len() as u64, "{what}: count");
    assert_eq!(h.sample_sum, nb::sum(obs), "{what}: sum");
    assert_eq!(h.schema, i32::from(schema), "{what}: schema");
    assert_eq!(
        h.zero_threshold,
        2f64.powi(-128),
        "{what}: zero threshold (the client's default)"
    );
    assert_eq!(h.zero_count, nb::zero_count(obs), "{what}: zero count");
    assert!(
        h.negative_span.is_empty() && h.negative_delta.is_empty(),
        "{what}: negative buckets"
    );
    assert!(!h.positive_span.is_empty(), "{what}: no positive span");
    assert_eq!(
        h.positive_delta.len(),
        h.positive_span
            .iter()
            .map(|s| s.length as usize)
            .sum::<usize>(),
        "{what}: one delta per bucket of the spans"
    );
    assert_eq!(
        nb::expand(&spans(h), &h.positive_delta),
        nb::positive_buckets(schema, obs),
        "{what}: positive buckets (index, count) from spans {:?} and deltas {:?}",
        spans(h),
        h.positive_delta
    );
    assert!(h.positive_count.is_empty(), "{what}: float buckets");
}

#[test]
fn the_app_serves_native_histograms_in_protobuf_and_classic_ones_in_text() {
    let (_app, addr) = host_app(&[]);

    for accept in [
        PROTOBUF_ACCEPT,
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
    ] {
        let r = get_metrics(&addr, accept);
        assert_eq!(r.header("content-type"), Some(PROTOBUF_TYPE));
        let families = nb::decode(&r.body).unwrap();
        let names: Vec<_> = families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "rpc_duration_seconds",
                "response_size_bytes",
                "requests_total",
                "temperature_celsius"
            ]
        );

        // Native only: no classic bucket, every native field.
        let rpc = family(&families, "rpc_duration_seconds");
        assert_eq!(rpc.r#type(), MetricType::Histogram);
        assert_eq!(rpc.unit, "seconds");
        assert_eq!(rpc.metric.len(), RPC.len());
        for (method, obs) in RPC {
            let m = rpc
                .metric
                .iter()
                .find(|m| label(m, "method") == Some(method))
                .unwrap_or_else(|| panic!("no method={method}"));
            assert_eq!(m.label.len(), 1);
            let h = m.histogram.as_ref().unwrap();
            assert!(h.bucket.is_empty(), "{method}: classic buckets {:?}", h.bucket);
            assert!(
                h.start_timestamp.is_some(),
                "{method}: no start timestamp"
            );
            assert_native(h, RPC_SCHEMA, obs, &format!("rpc_duration_seconds {method}"));
        }

        // Classic and native buckets in one message.
        let size = family(&families, "response_size_bytes");
        assert_eq!(size.r#type(), MetricType::Histogram);
        let h = size.metric[0].histogram.as_ref().unwrap();
        assert_native(h, SIZE_SCHEMA, SIZE, "response_size_bytes");
        let classic: Vec<(f64, u64)> = h
            .bucket
            .iter()
            .map(|b| (b.upper_bound, b.cumulative_count))
            .collect();
        let mut want: Vec<(f64, u64)> = SIZE_BUCKETS
            .iter()
            .map(|le| (*le, SIZE.iter().filter(|v| *v <= le).count() as u64))
            .collect();
        want.push((f64::INFINITY, SIZE.len() as u64));
        assert_eq!(classic, want);

        let requests = family(&families, "requests_total");
        assert_eq!(requests.r#type(), MetricType::Counter);
        let c = requests.metric[0].counter.as_ref().unwrap();
        assert_eq!(c.value, nb::REQUESTS as f64);
        let e = c.exemplar.as_ref().unwrap();
        assert_eq!(
            (e.label[0].name.as_str(), e.label[0].value.as_str()),
            nb::EXEMPLAR_LABEL
        );
        assert_eq!(e.value, nb::EXEMPLAR_VALUE as f64);
        assert_eq!(
            e.timestamp.as_ref().map(|t| t.seconds),
            Some(nb::EXEMPLAR_UNIX_SECONDS as i64)
        );

        let temperature = family(&families, "temperature_celsius");
        assert_eq!(temperature.r#type(), MetricType::Gauge);
        assert_eq!(
            temperature.metric[0].gauge.as_ref().map(|g| g.value),
            Some(nb::TEMPERATURE)
        );
    }

    // The same request gets the same bytes.
    let a = get_metrics(&addr, PROTOBUF_ACCEPT).body;
    assert_eq!(a, get_metrics(&addr, PROTOBUF_ACCEPT).body);

    // Text formats: the native-only histogram as its +Inf bucket, sum and count.
    for (accept, content_type, format) in [
        (DEFAULT_ACCEPT, OPENMETRICS_TYPE, Format::OpenMetrics),
        ("text/plain;version=0.0.4", TEXT_TYPE, Format::Text),
        ("*/*", TEXT_TYPE, Format::Text),
    ] {
        let r = get_metrics(&addr, accept);
        assert_eq!(r.header("content-type"), Some(content_type), "{accept}");
        let text = r.text().unwrap();
        let exp =
            strict::check(&text, format).unwrap_or_else(|e| panic!("{accept}: {e:?}\n{text}"));
        for (method, obs) in RPC {
            let with = [("method", method)];
            let count = obs.len() as f64;
            assert_eq!(exp.value("rpc_duration_seconds_count", &with), Some(count));
            assert_eq!(
                exp.value("rpc_duration_seconds_sum", &with),
                Some(nb::sum(obs))
            );
            let inf = [("method", method), ("le", "+Inf")];
            assert_eq!(exp.value("rpc_duration_seconds_bucket", &inf), Some(count));
            assert_eq!(exp.find("rpc_duration_seconds_bucket", &with).count(), 1);
        }
        assert_eq!(
            exp.find("response_size_bytes_bucket", &[]).count(),
            SIZE_BUCKETS.len() + 1
        );
        assert_eq!(exp.value("requests_total", &[]), Some(nb::REQUESTS as f64));
        assert_eq!(
            text.contains(nb::EXEMPLAR_LABEL.1),
            format == Format::OpenMetrics,
            "the exemplar is in OpenMetrics only:\n{text}"
        );
    }
    let requests = http::get(&addr, "/requests", &[], Duration::from_secs(5))
        .unwrap()
        .text()
        .unwrap();
    for line in [
        "native_app_requests_total{format=\"protobuf\"} 4\n",
        "native_app_requests_total{format=\"openmetrics\"} 1\n",
        "native_app_requests_total{format=\"text\"} 2\n",
    ] {
        assert!(requests.contains(line), "{line} not in:\n{requests}");
    }
}

#[test]
fn with_utf8_the_app_serves_a_utf8_name_in_protobuf_and_escapes_it_in_text() {
    let (_app, addr) = host_app(&["--utf8"]);
    let families = nb::decode(&get_metrics(&addr, PROTOBUF_ACCEPT).body).unwrap();
    let depth = family(&families, nb::UTF8_NAME);
    assert_eq!(depth.r#type(), MetricType::Gauge);
    assert_eq!(
        label(&depth.metric[0], nb::UTF8_LABEL.0),
        Some(nb::UTF8_LABEL.1)
    );
    assert_eq!(
        depth.metric[0].gauge.as_ref().map(|g| g.value),
        Some(nb::UTF8_VALUE as f64)
    );
    for (accept, format) in [
        ("text/plain", Format::Text),
        ("application/openmetrics-text", Format::OpenMetrics),
    ] {
        let text = get_metrics(&addr, accept).text().unwrap();
        let exp = strict::check(&text, format).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(
            exp.value(
                &nb::underscores(nb::UTF8_NAME),
                &[(&nb::underscores(nb::UTF8_LABEL.0), nb::UTF8_LABEL.1)]
            ),
            Some(nb::UTF8_VALUE as f64),
            "{text}"
        );
    }
}

/// What a PromQL function of a histogram gives for its observations.
type Expected = fn(&[f64]) -> f64;

/// Which Prometheus, and the labels that say which series is the app's.
struct Scraper<'a> {
    name: &'a str,
    prom: &'a Prometheus,
    /// PromQL label matchers, e.g. `{namespace="shop"}`.
    selector: &'a str,
    /// Labels every answer must carry.
    identity: &'a [(&'a str, &'a str)],
}

impl Scraper<'_> {
    fn query(
        &self,
        promql: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<VectorSample>, String> {
        let got = self
            .prom
            .query_until(promql, n, timeout)
            .map_err(|e| format!("{}: {e}", self.name))?;
        if got.len() != n {
            return Err(format!("{}: {promql}: {got:?}", self.name));
        }
        for s in &got {
            for (k, v) in self.identity {
                if s.labels.get(*k).map(String::as_str) != Some(*v) {
                    return Err(format!("{}: {promql}: {k} not {v:?}: {s:?}", self.name));
                }
            }
        }
        Ok(got)
    }

    /// `histogram_count` and `histogram_sum` of both histograms, per method, as the app's
    /// observations say; the first query waits up to `timeout` for a scrape to land.
    fn check(&self, timeout: Duration) -> Result<(), String> {
        let sel = self.selector;
        let funcs: [(&str, Expected); 2] = [
            ("histogram_count", |obs| obs.len() as f64),
            ("histogram_sum", nb::sum),
        ];
        let mut wait = timeout;
        for (func, want) in funcs {
            let q = format!("{func}(rpc_duration_seconds{sel})");
            let got = self.query(&q, RPC.len(), wait)?;
            wait = Duration::from_secs(5);
            for (method, obs) in RPC {
                let value = got
                    .iter()
                    .find(|s| s.labels.get("method").map(String::as_str) == Some(method))
                    .map(|s| s.value)
                    .ok_or_else(|| format!("{}: {q}: no method={method}: {got:?}", self.name))?;
                if value != want(obs) {
                    return Err(format!(
                        "{}: {q} method={method}: {value}, want {}",
                        self.name,
                        want(obs)
                    ));
                }
            }
            let q = format!("{func}(response_size_bytes{sel})");
            let got = self.query(&q, 1, wait)?;
            if got[0].value != want(SIZE) {
                return Err(format!(
                    "{}: {q}: {}, want {}",
                    self.name,
                    got[0].value,
                    want(SIZE)
                ));
            }
        }
        Ok(())
    }
}

/// What the Prometheus scraping loupe has instead, for the failure message.
fn loupe_diagnostics(prom: &Prometheus, loupe: &Loupe, pod: &Pod) -> String {
    let mut out = String::new();
    let classic = prom
        .query("rpc_duration_seconds_count")
        .map(|v| {
            v.iter()
                .map(|s| {
                    let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
                    format!("pod={} method={}: {}", l("pod"), l("method"), s.value)
                })
                .collect::<Vec<_>>()
        })
        .map_err(|e| e.to_string());
    out.push_str(&format!(
        "\n  classic rpc_duration_seconds_count there: {classic:?}"
    ));
    let native = prom
        .query("rpc_duration_seconds")
        .map(|v| v.len())
        .map_err(|e| e.to_string());
    out.push_str(&format!(
        "\n  rpc_duration_seconds series (any kind): {native:?}"
    ));
    out.push_str(&format!("\n  targets: {:?}", prom.targets()));
    match loupe.get("/metrics", &[("Accept", PROTOBUF_ACCEPT)]) {
        Ok(r) => out.push_str(&format!(
            "\n  loupe's answer to the protobuf Accept: status {}, Content-Type {:?}, {} bytes",
            r.status,
            r.header("content-type"),
            r.body.len()
        )),
        Err(e) => out.push_str(&format!("\n  loupe /metrics: {e}")),
    }
    let served = pod
        .curl(&["-sf", &format!("http://127.0.0.1:{PORT}/requests")])
        .map(|t| {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join(", ")
        });
    out.push_str(&format!("\n  the app's answers by format: {served:?}"));
    out
}

#[test]
fn native_histograms_reach_prometheus_directly_and_through_loupe() {
    if !root::require(
        "native_histograms_reach_prometheus_directly_and_through_loupe",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let start = std::time::Instant::now();
    let pod = Pod::new().unwrap();
    // On every address: Prometheus scrapes it on the pod's, loupe on the pod's loopback.
    let _app = pod
        .spawn_native_app(SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)), &[])
        .unwrap();
    let spec = PodSpec {
        namespace: "shop".into(),
        name: "native".into(),
        netns: NetnsRef::Path(pod.netns_path()),
        endpoints: vec![EndpointSpec::port(PORT).container("app")],
    };
    // A second pod whose protobuf body has a UTF-8 metric and label name (which Prometheus
    // 2.42 would refuse): loupe serves it escaped, and the node's scrape stays good.
    let utf8_pod = Pod::new().unwrap();
    let _utf8_app = utf8_pod
        .spawn_native_app(SocketAddr::from((Ipv4Addr::LOCALHOST, PORT)), &["--utf8"])
        .unwrap();
    let utf8_spec = PodSpec {
        namespace: "shop".into(),
        name: "utf8".into(),
        netns: NetnsRef::Path(utf8_pod.netns_path()),
        endpoints: vec![EndpointSpec::port(PORT).container("app")],
    };
    let loupe = Loupe::start(&[spec, utf8_spec], &[]).unwrap();
    let target = format!("{}:{PORT}", pod.pod_ip);
    let direct = Prometheus::start_with_flags("native", &[&target], "", &[NATIVE_FEATURE]).unwrap();
    let through = Prometheus::start_with_flags(
        "loupe",
        &[&loupe.listen],
        "honor_labels: true",
        &[NATIVE_FEATURE],
    )
    .unwrap();

    // Directly: what the client observed, as native histograms.
    let direct_identity = [("job", "native"), ("instance", target.as_str())];
    let result = Scraper {
        name: "Prometheus scraping the app",
        prom: &direct,
        selector: "",
        identity: &direct_identity,
    }
    .check(Duration::from_secs(60));
    if let Err(e) = result {
        panic!(
            "{e}\n  targets: {:?}\n  log: {}",
            direct.targets(),
            std::fs::read_to_string(direct.dir().join("prometheus.log")).unwrap_or_default()
        );
    }
    // Stored as native histograms: no classic series beside them.
    let classic = direct.query("rpc_duration_seconds_count").unwrap();
    assert!(classic.is_empty(), "classic series stored: {classic:?}");
    let served = pod
        .curl(&["-sf", &format!("http://127.0.0.1:{PORT}/requests")])
        .unwrap();
    assert!(
        !served.contains("native_app_requests_total{format=\"protobuf\"} 0\n"),
        "{served}"
    );
    eprintln!(
        "native: direct ({:.1?} after start): histogram_count and histogram_sum per method as observed",
        start.elapsed()
    );

    // Through loupe: the same, under the pod's identity.
    // The pods file gives no labels and no IP: job is the pod's name, instance loupe's.
    let loupe_identity = [
        ("job", "native"),
        ("namespace", "shop"),
        ("pod", "native"),
        ("container", "app"),
        ("endpoint", "8080"),
    ];
    let result = Scraper {
        name: "Prometheus scraping loupe",
        prom: &through,
        selector: "{namespace=\"shop\",pod=\"native\"}",
        identity: &loupe_identity,
    }
    .check(Duration::from_secs(30));
    match result {
        Ok(()) => eprintln!(
            "native: through loupe ({:.1?} after start): the same per pod and method",
            start.elapsed()
        ),
        Err(e) => panic!(
            "{e} ({:.1?} after start){}",
            start.elapsed(),
            loupe_diagnostics(&through, &loupe, &pod)
        ),
    }
    // Both Prometheus servers stored the same counts per method.
    let per_method = |p: &Prometheus, q: &str| -> BTreeMap<String, f64> {
        p.query(q)
            .unwrap()
            .into_iter()
            .map(|s| (s.labels["method"].clone(), s.value))
            .collect()
    };
    assert_eq!(
        per_method(&direct, "histogram_count(rpc_duration_seconds)"),
        per_method(
            &through,
            "histogram_count(rpc_duration_seconds{namespace=\"shop\",pod=\"native\"})"
        )
    );
    let utf8 = through
        .query_until(
            "native_queue_depth{pod=\"utf8\",queue_name=\"inbox\"}",
            1,
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(utf8.len(), 1, "{utf8:?}");
    assert_eq!(
        per_method(
            &through,
            "histogram_count(rpc_duration_seconds{namespace=\"shop\",pod=\"utf8\"})"
        ),
        per_method(&direct, "histogram_count(rpc_duration_seconds)"),
    );

    // loupe's protobuf answer, read with the client's own generated types: the app's families,
    // each metric with the identity labels first and everything else as the app sent it.
    let app = nb::decode(&get_metrics(&target, PROTOBUF_ACCEPT).body).unwrap();
    let answer = loupe
        .get("/metrics", &[("Accept", PROTOBUF_ACCEPT)])
        .unwrap();
    // expfmt names the escaping; Prometheus 3's protobuf range names none: underscores.
    assert_eq!(
        answer.header("content-type"),
        Some(&*format!("{PROTOBUF_TYPE}; escaping=underscores"))
    );
    let served = nb::decode(&answer.body).unwrap();
    let identity = [
        ("namespace", "shop"),
        ("pod", "native"),
        ("container", "app"),
        ("endpoint", "8080"),
        ("job", "native"),
    ];
    for want in &app {
        let got = served
            .iter()
            .find(|f| f.name == want.name)
            .unwrap_or_else(|| panic!("{} not served", want.name));
        assert_eq!(
            (&got.help, got.r#type, &got.unit),
            (&want.help, want.r#type, &want.unit)
        );
        let of_pod = got
            .metric
            .iter()
            .filter(|m| label(m, "pod") == Some("native"))
            .count();
        assert_eq!(of_pod, want.metric.len(), "{}", want.name);
        for m in &want.metric {
            let mut labeled = m.clone();
            labeled.label = identity
                .iter()
                .map(|(n, v)| prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::LabelPair {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .chain(m.label.iter().cloned())
                .collect();
            assert!(
                got.metric.contains(&labeled),
                "{}: {labeled:?} not in {:?}",
                want.name,
                got.metric
            );
        }
    }
    // The text and OpenMetrics answers: promtool reads the text one; both are strictly valid,
    // with the native-only histogram left out and said so.
    let text = loupe
        .get("/metrics", &[("Accept", "text/plain;version=0.0.4")])
        .unwrap();
    if let Err(e) = loupe_testkit::promtool::check_metrics(&text.body) {
        panic!("promtool: {e}");
    }
    let om = loupe
        .get("/metrics", &[("Accept", DEFAULT_ACCEPT)])
        .unwrap();
    assert_eq!(
        om.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8")
    );
    let om_text = String::from_utf8(om.body.clone()).unwrap();
    assert!(
        om_text.contains("response_size_bytes_bucket{namespace=\"shop\""),
        "{om_text}"
    );
    assert!(!om_text.contains("rpc_duration_seconds"), "{om_text}");
    let targets = loupe.get("/targets", &[]).unwrap();
    let targets = String::from_utf8_lossy(&targets.body);
    assert!(
        targets.contains("\"native_only_histograms\":2"),
        "{targets}"
    );
}

/// A client inside the pod asks the app for protobuf over loopback: loupe observes the reply
/// (it sends no request of its own meanwhile), decodes it, and serves its native histograms.
#[test]
fn observed_protobuf_replies_keep_their_native_histograms() {
    if !root::require(
        "observed_protobuf_replies_keep_their_native_histograms",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let pod = Pod::new().unwrap();
    let _app = pod
        .spawn_native_app(SocketAddr::from((Ipv4Addr::LOCALHOST, PORT)), &[])
        .unwrap();
    let accept = format!("-H 'Accept: {PROTOBUF_ACCEPT}'");
    let url = format!("http://127.0.0.1:{PORT}/metrics");
    let client = loupe_tests::client::ClientLoop::start(&pod, &url, "0.2", &accept).unwrap();
    client.wait_count(1, Duration::from_secs(30)).unwrap();
    let spec = PodSpec {
        namespace: "shop".into(),
        name: "observed".into(),
        netns: NetnsRef::Path(pod.netns_path()),
        endpoints: vec![EndpointSpec::port(PORT).container("app")],
    };
    let loupe = Loupe::start(&[spec], &[]).unwrap();
    loupe
        .metrics_until("an observed reply", Duration::from_secs(60), |exp| {
            exp.value(
                "loupe_target_info",
                &[("pod", "observed"), ("source", "observed")],
            ) == Some(1.0)
        })
        .unwrap();
    let answer = loupe
        .get("/metrics", &[("Accept", PROTOBUF_ACCEPT)])
        .unwrap();
    let served = nb::decode(&answer.body).unwrap();
    let rpc = family(&served, "rpc_duration_seconds");
    assert_eq!(rpc.metric.len(), RPC.len());
    for m in &rpc.metric {
        assert_eq!(label(m, "pod"), Some("observed"));
        let method = label(m, "method").unwrap();
        let obs = nb::rpc(method).unwrap();
        assert_native(
            m.histogram.as_ref().unwrap(),
            RPC_SCHEMA,
            obs,
            &format!("observed {method}"),
        );
    }
    let targets = loupe.get("/targets", &[]).unwrap();
    let targets = String::from_utf8_lossy(&targets.body);
    assert!(
        targets.contains("\"native_only_histograms\":2"),
        "{targets}"
    );
    client.stop().unwrap();
}

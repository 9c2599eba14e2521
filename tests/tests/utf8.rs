//! UTF-8 names end to end: a test app serves text with quoted UTF-8 names (the syntax of text
//! 1.0.0 and OpenMetrics), loupe answers each `Accept` in the format and escaping scheme it
//! asks for (Prometheus 3's two defaults, Prometheus 2's, explicit schemes, none), its
//! `Content-Type` naming both, and a real Prometheus 2.42 (which cannot parse quoted names)
//! scrapes loupe and stores the `underscores` names.

use std::io::Write as _;
use std::time::Duration;

use loupe_testkit::root;
use loupe_tests::loupe::{pod_with_app, Loupe};
use loupe_tests::prometheus::Prometheus;
use loupe_tests::{wait_for, TempDir, TESTBED_NEEDS};

const PORT: u16 = 8080;

/// The app's body: quoted metric and label names, in HELP and TYPE lines too.
const BODY: &str = "# HELP \"http.server.duration\" Time spent, in seconds.\n\
# TYPE \"http.server.duration\" histogram\n\
{\"http.server.duration_bucket\",\"http.method\"=\"GET\",le=\"0.5\"} 1\n\
{\"http.server.duration_bucket\",\"http.method\"=\"GET\",le=\"+Inf\"} 3\n\
{\"http.server.duration_sum\",\"http.method\"=\"GET\"} 2.5\n\
{\"http.server.duration_count\",\"http.method\"=\"GET\"} 3\n\
# HELP queue_depth Items waiting.\n\
# TYPE queue_depth gauge\n\
queue_depth{\"queue.name\"=\"inbox\"} 4\n";

const P3_DEFAULT: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
const P3_PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
const P2_DEFAULT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

const OM: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const PROTOBUF: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// The identity loupe adds, after a quoted metric name's comma or a legacy name's brace (a pods-file
/// pod without `ip:` or `job:` has the job of its name and no `instance`).
const ID: &str = "namespace=\"shop\",pod=\"utf8\",container=\"app\",endpoint=\"8080\",job=\"utf8\"";

#[test]
fn each_accept_gets_its_format_and_escaping_and_prometheus_2_stores_underscores() {
    if !root::require(
        "each_accept_gets_its_format_and_escaping_and_prometheus_2_stores_underscores",
        TESTBED_NEEDS,
    ) {
        return;
    }
    let dir = TempDir::new("loupe-utf8").unwrap();
    let path = dir.path().join("body.txt");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(BODY.as_bytes()))
        .unwrap();
    let path = path.to_string_lossy().into_owned();
    let (_pod, _app, spec) = pod_with_app("utf8", PORT, &["--body-file", &path]).unwrap();
    let loupe = Loupe::start(&[spec], &[]).unwrap();

    // (Accept, Content-Type, lines the answer must have); protobuf is checked apart.
    let cases: [(Option<&str>, String, Vec<String>); 7] = [
        (
            Some(P3_DEFAULT),
            format!("{OM}; escaping=allow-utf-8"),
            vec![
                "# TYPE \"http.server.duration\" histogram".into(),
                format!("{{\"http.server.duration_count\",{ID},\"http.method\"=\"GET\"}} 3"),
                format!("queue_depth{{{ID},\"queue.name\"=\"inbox\"}} 4"),
                "# EOF".into(),
            ],
        ),
        (
            Some(P2_DEFAULT),
            format!("{OM}; escaping=underscores"),
            vec![
                "# TYPE http_server_duration histogram".into(),
                format!("http_server_duration_count{{{ID},http_method=\"GET\"}} 3"),
                format!("queue_depth{{{ID},queue_name=\"inbox\"}} 4"),
            ],
        ),
        (
            Some("text/plain;version=1.0.0;escaping=allow-utf-8"),
            "text/plain; version=1.0.0; charset=utf-8; escaping=allow-utf-8".into(),
            vec![
                "# HELP \"http.server.duration\" Time spent, in seconds.".into(),
                format!("{{\"http.server.duration_bucket\",{ID},\"http.method\"=\"GET\",le=\"+Inf\"}} 3"),
            ],
        ),
        (
            Some("text/plain;version=0.0.4;escaping=dots"),
            format!("{TEXT}; escaping=dots"),
            vec![format!(
                "http_dot_server_dot_duration_sum{{{ID},http_dot_method=\"GET\"}} 2.5"
            )],
        ),
        (
            Some("application/openmetrics-text;version=1.0.0;escaping=values"),
            format!("{OM}; escaping=values"),
            vec![format!(
                "U__http_2e_server_2e_duration_sum{{{ID},U__http_2e_method=\"GET\"}} 2.5"
            )],
        ),
        (
            Some("text/plain;version=0.0.4;escaping=underscores"),
            format!("{TEXT}; escaping=underscores"),
            vec![format!("http_server_duration_sum{{{ID},http_method=\"GET\"}} 2.5")],
        ),
        (
            None,
            format!("{TEXT}; escaping=underscores"),
            vec![format!("queue_depth{{{ID},queue_name=\"inbox\"}} 4")],
        ),
    ];
    for (accept, content_type, lines) in &cases {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("Accept", *a)).collect();
        // The first answers may come before loupe has the app's body.
        let r = wait_for(
            "loupe to serve the app's body",
            Duration::from_secs(30),
            || {
                let r = loupe.get("/metrics", &headers).map_err(|e| e.to_string())?;
                Ok(
                    (r.status == 200 && String::from_utf8_lossy(&r.body).contains("inbox"))
                        .then_some(r),
                )
            },
        )
        .unwrap();
        assert_eq!(
            r.header("content-type"),
            Some(content_type.as_str()),
            "{accept:?}"
        );
        let text = String::from_utf8(r.body.clone()).unwrap();
        for line in lines {
            assert!(
                text.lines().any(|l| l == line),
                "{accept:?}: no line {line:?} in\n{text}"
            );
        }
    }

    // Prometheus 3 with native histograms: protobuf, whose range names no scheme.
    let r = loupe.get("/metrics", &[("Accept", P3_PROTOBUF)]).unwrap();
    assert_eq!(
        r.header("content-type"),
        Some(&*format!("{PROTOBUF}; escaping=underscores"))
    );
    let families = loupe_agent::decode::proto::decode(&r.body).unwrap();
    let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
    assert!(names.contains(&"http_server_duration"), "{names:?}");
    // Asked with allow-utf-8, protobuf carries the names as they are.
    let r = loupe
        .get(
            "/metrics",
            &[(
                "Accept",
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;escaping=allow-utf-8",
            )],
        )
        .unwrap();
    assert_eq!(
        r.header("content-type"),
        Some(&*format!("{PROTOBUF}; escaping=allow-utf-8"))
    );
    let families = loupe_agent::decode::proto::decode(&r.body).unwrap();
    let queue = families.iter().find(|f| f.name == "queue_depth").unwrap();
    let labels: Vec<&str> = queue.metric[0]
        .label
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert!(labels.contains(&"queue.name"), "{labels:?}");
    assert!(families.iter().any(|f| f.name == "http.server.duration"));

    // Prometheus 2.42 (OpenMetrics, no scheme asked): stores the underscores names.
    let prom = Prometheus::start("loupe", &[&loupe.listen]).unwrap();
    let count = prom
        .query_until(
            "http_server_duration_count{namespace=\"shop\",pod=\"utf8\",http_method=\"GET\"}",
            1,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}\n  targets: {:?}", prom.targets()));
    assert_eq!(count[0].value, 3.0);
    let queue = prom
        .query("queue_depth{pod=\"utf8\",queue_name=\"inbox\"}")
        .unwrap();
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0].value, 4.0);
}

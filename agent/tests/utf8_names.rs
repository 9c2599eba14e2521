//! Outputs of bodies with quoted (UTF-8) names, read by parsers loupe does not share code
//! with: Prometheus 2.42's `promtool check metrics` on the legacy schemes' text outputs
//! (`underscores`, `dots`, `values`), and Python prometheus-client's parsers (which read quoted
//! names) on every scheme's text and OpenMetrics outputs, `allow-utf-8` included, whose names
//! must come out as the apps wrote them. Skips with a reason when a tool is missing, and fails
//! then when `CI=true`.

use loupe_agent::decode::{merge, Escaping, Format, IdentityLabels, Source};
use loupe_testkit::promtool::{check_metrics, PROMTOOL};
use loupe_testkit::{pyparse, root};

/// Bodies that pass promtool's lints once escaped (HELP everywhere, `_total` counters).
const TEXT_BODY: &str = "# HELP \"http.server.duration\" Time \"spent\", in seconds.\n\
# TYPE \"http.server.duration\" histogram\n\
{\"http.server.duration_bucket\",\"http.method\"=\"GET\",le=\"0.5\"} 1\n\
{\"http.server.duration_bucket\",\"http.method\"=\"GET\",le=\"+Inf\"} 3\n\
{\"http.server.duration_sum\",\"http.method\"=\"GET\"} 2.5\n\
{\"http.server.duration_count\",\"http.method\"=\"GET\"} 3\n\
# HELP \"花火.total\" Fireworks.\n\
# TYPE \"花火.total\" counter\n\
{\"花火.total\",\"error.message\"=\"Not Found\"} 7\n\
# HELP plain_level A level.\n\
# TYPE plain_level gauge\n\
plain_level{\"label with space\"=\"x\",path=\"/\"} 1\n";

const OM_BODY: &str = "# TYPE \"requests.count\" counter\n\
# HELP \"requests.count\" Requests.\n\
{\"requests.count_total\",\"http.route\"=\"/a\"} 4 # {\"trace.id\"=\"abc\"} 1.0\n\
{\"requests.count_created\",\"http.route\"=\"/a\"} 1700000000.0\n\
# TYPE \"quote\\\"mark\" gauge\n\
# HELP \"quote\\\"mark\" A quote.\n\
{\"quote\\\"mark\"} 1\n\
# EOF\n";

fn id(pod: &str) -> Option<IdentityLabels<'_>> {
    Some(IdentityLabels {
        namespace: "shop",
        pod,
        container: "app",
        endpoint: "metrics",
        ..Default::default()
    })
}

fn merged(escaping: Escaping, out: Format) -> Vec<u8> {
    let sources = [
        Source::new(id("a"), TEXT_BODY.as_bytes(), Format::Text).with_escaping(escaping),
        Source::new(id("b"), OM_BODY.as_bytes(), Format::OpenMetrics).with_escaping(escaping),
    ];
    let (chunks, stats) = merge(&sources, out);
    assert!(
        stats.rejected.is_empty(),
        "{escaping:?}: {:?}",
        stats.rejected
    );
    assert_eq!(stats.family_conflicts, 0);
    chunks.concat()
}

#[test]
fn promtool_accepts_the_legacy_schemes() {
    if !std::path::Path::new(PROMTOOL).exists()
        && !root::skip(
            "promtool_accepts_the_legacy_schemes",
            &format!("{PROMTOOL} is missing (install the Debian package prometheus)"),
        )
    {
        return;
    }
    for (escaping, name) in [
        (Escaping::Underscores, "http_server_duration_bucket{"),
        (Escaping::Dots, "http_dot_server_dot_duration_bucket{"),
        (Escaping::Values, "U__http_2e_server_2e_duration_bucket{"),
    ] {
        let out = merged(escaping, Format::Text);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(name), "{escaping:?}:\n{text}");
        if let Err(e) = check_metrics(&out) {
            panic!("{escaping:?}: {e}\n{text}");
        }
    }
}

#[test]
fn python_prometheus_client_reads_every_scheme() {
    if !pyparse::available()
        && !root::skip(
            "python_prometheus_client_reads_every_scheme",
            "the Python module prometheus_client is missing (run scripts/setup.sh)",
        )
    {
        return;
    }
    for escaping in Escaping::ALL {
        // The names each scheme writes: the histogram, its label, the OpenMetrics counter's
        // label, the text counter.
        let (duration, method, route, fireworks) = match escaping {
            Escaping::AllowUtf8 => (
                "http.server.duration",
                "http.method",
                "http.route",
                "花火.total",
            ),
            Escaping::Underscores => (
                "http_server_duration",
                "http_method",
                "http_route",
                "___total",
            ),
            Escaping::Dots => (
                "http_dot_server_dot_duration",
                "http_dot_method",
                "http_dot_route",
                "_____dot_total",
            ),
            Escaping::Values => (
                "U__http_2e_server_2e_duration",
                "U__http_2e_method",
                "U__http_2e_route",
                "U___82b1__706b__2e_total",
            ),
        };
        for out in [Format::Text, Format::OpenMetrics] {
            let body = merged(escaping, out);
            let read = pyparse::parse(&body, out == Format::OpenMetrics).unwrap_or_else(|e| {
                panic!(
                    "{escaping:?} {out:?}: {e}\n{}",
                    String::from_utf8_lossy(&body)
                )
            });
            for want in [
                format!("family \"{duration}\" histogram"),
                format!("  \"{duration}_count\" {{{}}}", {
                    // The parser's listing sorts labels by name.
                    let mut labels = [
                        ("container", "app"),
                        ("endpoint", "metrics"),
                        (method, "GET"),
                        ("namespace", "shop"),
                        ("pod", "a"),
                    ];
                    labels.sort();
                    let labels: Vec<String> = labels
                        .iter()
                        .map(|(n, v)| format!("\"{n}\"=\"{v}\""))
                        .collect();
                    labels.join(",")
                }),
                format!("\"{route}\"=\"/a\""),
                format!("\"{fireworks}"),
            ] {
                assert!(
                    read.contains(&want),
                    "{escaping:?} {out:?}: no {want:?} in\n{read}"
                );
            }
        }
    }
}

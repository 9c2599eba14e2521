//! Merge outputs checked by Prometheus' own parser and linter: `promtool check metrics`
//! (Debian package `prometheus`). Skips with a reason when promtool is missing, and fails then
//! when `CI=true`.

use loupe_agent::decode::{merge, validate, Format, IdentityLabels, Source};
use loupe_testkit::bodies::{body, Spec};
use loupe_testkit::root;

use loupe_testkit::promtool::{check_metrics, PROMTOOL};

fn promtool_available(test: &str) -> bool {
    std::path::Path::new(PROMTOOL).exists()
        || root::skip(
            test,
            &format!("{PROMTOOL} is missing (install the Debian package prometheus)"),
        )
}

fn ids(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("team-{}", i % 3), format!("app-{i}-7c9f8d-x2k{i}")))
        .collect()
}

#[test]
fn promtool_accepts_merged_pods() {
    if !promtool_available("promtool_accepts_merged_pods") {
        return;
    }
    let pods = ids(6);
    // Mixed formats in, text out (promtool reads text 0.0.4).
    let bodies: Vec<(String, Format)> = (0..pods.len())
        .map(|i| {
            let om = i % 2 == 1;
            let format = if om {
                loupe_testkit::Format::OpenMetrics
            } else {
                loupe_testkit::Format::Text
            };
            (
                body(&Spec::pod(i, 200, format)),
                if om {
                    Format::OpenMetrics
                } else {
                    Format::Text
                },
            )
        })
        .collect();
    let sources: Vec<Source<'_>> = bodies
        .iter()
        .zip(&pods)
        .map(|((b, f), (ns, pod))| {
            Source::new(
                Some(IdentityLabels {
                    namespace: ns,
                    pod,
                    container: "app",
                    endpoint: ":8080/metrics",
                    ..Default::default()
                }),
                b.as_bytes(),
                *f,
            )
        })
        .collect();
    let (chunks, st) = merge(&sources, Format::Text);
    let buf = chunks.concat();
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    assert_eq!(st.family_conflicts, 0);
    let s = validate(&buf, Format::Text).unwrap();
    assert!(s.samples > 1000);
    if let Err(out) = check_metrics(&buf) {
        panic!("{out}");
    }
}

#[test]
fn promtool_accepts_tricky_merges() {
    if !promtool_available("promtool_accepts_tricky_merges") {
        return;
    }
    // Identity-named app labels, nasty label values, HELP escapes, a TYPE conflict, duplicates,
    // an OpenMetrics counter with _created and exemplars, info and stateset.
    let a = "# HELP jobs_total Jobs \\\\ done.\\nSecond line.\n# TYPE jobs_total counter\n\
             jobs_total{pod=\"inner\",exported_pod=\"x\",q=\"a,b=c}#\\\"\"} 3 1700000000000\n\
             jobs_total{pod=\"inner\",exported_pod=\"x\",q=\"a,b=c}#\\\"\"} 4\n\
             # TYPE temp gauge\ntemp{room=\"\u{e9}t\u{e9}\"} -1.5e3\n";
    let b = "# TYPE jobs counter\n# HELP jobs Jobs \\\\ done.\\nSecond line.\n\
             jobs_total{q=\"1\"} 1 # {trace_id=\"abc\"} 1 1700000000.5\njobs_created{q=\"1\"} 1.7e9\n\
             # TYPE temp counter\ntemp_total 1\n\
             # TYPE build info\nbuild_info{version=\"1.2.3\"} 1\n\
             # TYPE feature stateset\nfeature{feature=\"a\"} 1\nfeature{feature=\"b\"} 0\n\
             # TYPE lat histogram\nlat_bucket{le=\"1\"} 1\nlat_bucket{le=\"+Inf\"} 2\nlat_count 2\nlat_sum 1.5\nlat_created 1.7e9\n# EOF\n";
    let sources = [
        Source::new(
            Some(IdentityLabels {
                namespace: "ns",
                pod: "p1",
                container: "c",
                endpoint: "m",
                ..Default::default()
            }),
            a.as_bytes(),
            Format::Text,
        ),
        Source::new(
            Some(IdentityLabels {
                namespace: "ns",
                pod: "p2",
                container: "c",
                endpoint: "m",
                ..Default::default()
            }),
            b.as_bytes(),
            Format::OpenMetrics,
        ),
        Source::new(
            None,
            b"# HELP loupe_x_total X.\n# TYPE loupe_x_total counter\nloupe_x_total 1\n",
            Format::Text,
        ),
    ];
    let (chunks, st) = merge(&sources, Format::Text);
    let buf = chunks.concat();
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    assert_eq!(st.duplicate_series, 1);
    let out = String::from_utf8_lossy(&buf).into_owned();
    assert!(out.contains("exported_exported_pod=\"inner\""), "{out}");
    // Exit 0, or 3 for lint findings only (e.g. "counter metrics should have _total suffix"
    // is not expected here, but HELP-less families are lint findings); never a parse error.
    if let Err(text) = check_metrics(&buf) {
        assert!(
            text.contains("exited with Some(3)") && !text.contains("error while linting"),
            "{text}\n{out}"
        );
        assert!(!text.contains("parsing error"), "{text}\n{out}");
    }
}

#[test]
fn show_a_small_merge() {
    // Prints a small merged target in both formats (cargo test -p loupe-agent --test promtool
    // -- --nocapture show_a_small_merge) and checks it is valid.
    let a = body(&Spec::pod(1, 12, loupe_testkit::Format::Text));
    let b = body(&Spec::pod(2, 12, loupe_testkit::Format::OpenMetrics));
    let sources = [
        Source::new(
            Some(IdentityLabels {
                namespace: "shop",
                pod: "cart-1",
                container: "app",
                endpoint: ":8080/metrics",
                ..Default::default()
            }),
            a.as_bytes(),
            Format::Text,
        ),
        Source::new(
            Some(IdentityLabels {
                namespace: "shop",
                pod: "cart-2",
                container: "app",
                endpoint: ":8080/metrics",
                ..Default::default()
            }),
            b.as_bytes(),
            Format::OpenMetrics,
        ),
    ];
    for out in [Format::Text, Format::OpenMetrics] {
        let buf = merge(&sources, out).0.concat();
        assert!(validate(&buf, out).is_ok());
        println!("{}", String::from_utf8_lossy(&buf));
    }
}

/// Bodies that came as protobuf (the testkit's pods, turned into protobuf by a merge without
/// identity) and as text, merged into text and OpenMetrics: promtool accepts the text, and
/// every sample of the text-only merge is there, no more, no less.
#[test]
fn promtool_accepts_merges_of_protobuf_bodies() {
    if !promtool_available("promtool_accepts_merges_of_protobuf_bodies") {
        return;
    }
    let pods = ids(4);
    let texts: Vec<String> = (0..pods.len())
        .map(|i| body(&Spec::pod(i, 200, loupe_testkit::Format::Text)))
        .collect();
    let protobufs: Vec<Vec<u8>> = texts
        .iter()
        .map(|t| {
            let (chunks, st) = merge(
                &[Source::new(None, t.as_bytes(), Format::Text)],
                Format::Protobuf,
            );
            assert!(st.rejected.is_empty(), "{:?}", st.rejected);
            chunks.concat()
        })
        .collect();
    let identity = |i: usize| {
        Some(IdentityLabels {
            namespace: &pods[i].0,
            pod: &pods[i].1,
            container: "app",
            endpoint: ":8080/metrics",
            ..Default::default()
        })
    };
    let from_text: Vec<Source<'_>> = (0..pods.len())
        .map(|i| Source::new(identity(i), texts[i].as_bytes(), Format::Text))
        .collect();
    // Every other pod's body came as protobuf.
    let mixed: Vec<Source<'_>> = (0..pods.len())
        .map(|i| match i % 2 {
            0 => Source::new(identity(i), &protobufs[i], Format::Protobuf),
            _ => from_text[i],
        })
        .collect();
    for out in [Format::Text, Format::OpenMetrics] {
        let (want, _) = merge(&from_text, out);
        let (got, st) = merge(&mixed, out);
        assert!(st.rejected.is_empty(), "{:?}", st.rejected);
        let (want, got) = (want.concat(), got.concat());
        assert_eq!(
            validate(&got, out).unwrap(),
            validate(&want, out).unwrap(),
            "{out:?}"
        );
        if out == Format::Text {
            if let Err(e) = check_metrics(&got) {
                panic!("{e}");
            }
            // The same samples, value for value (prometheus-parse reads these bodies: their
            // label values hold no `,`, `=` or `}`).
            let samples = |b: &[u8]| {
                let lines = std::str::from_utf8(b)
                    .unwrap()
                    .lines()
                    .map(|l| Ok(l.to_string()));
                let mut s: Vec<String> = prometheus_parse::Scrape::parse(lines)
                    .unwrap()
                    .samples
                    .into_iter()
                    .map(|s| {
                        let mut labels: Vec<String> =
                            s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        labels.sort();
                        format!("{} {} {:?}", s.metric, labels.join(","), s.value)
                    })
                    .collect();
                s.sort();
                s
            };
            assert_eq!(samples(&got), samples(&want));
        }
    }
}

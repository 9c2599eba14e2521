//! The engine's unit tests: every case runs through every way a source can come (a body to
//! parse, a prepared body, a stored rendering, a rendering for another format) and both sinks,
//! which must all give the same bytes and stats.

use super::super::{prepare, validate, Escaping, Prepared};
use super::*;

fn id(pod: &str) -> Option<IdentityLabels<'_>> {
    Some(IdentityLabels {
        namespace: "ns",
        pod,
        container: "c",
        endpoint: "metrics",
        ..Default::default()
    })
}

fn other(out: Format) -> Format {
    match out {
        Format::Text => Format::OpenMetrics,
        Format::OpenMetrics | Format::Protobuf => Format::Text,
    }
}

/// [`merge`]'s chunks joined.
fn merged(sources: &[Source<'_>], out: Format) -> (Vec<u8>, MergeStats) {
    let (chunks, stats) = merge(sources, out);
    (chunks.concat(), stats)
}

/// Merges `sources` every way: as given, prepared, with stored renderings (and ones for the
/// other format, which must be made again). All must agree; the output must be valid.
fn run(sources: &[Source<'_>], out: Format) -> (String, MergeStats) {
    let (buf, st) = merged(sources, out);
    let preps: Vec<Option<Prepared>> = sources
        .iter()
        .map(|s| prepare(s.body, s.format).ok())
        .collect();
    let prepared: Vec<Source<'_>> = sources
        .iter()
        .zip(&preps)
        .map(|(s, p)| match p {
            Some(p) => Source::prepared(s.identity, s.body, p),
            None => *s,
        })
        .collect();
    for target in [out, other(out)] {
        let rendered: Vec<Rendered> = prepared.iter().map(|s| s.render(target)).collect();
        let with: Vec<Source<'_>> = prepared
            .iter()
            .zip(&rendered)
            .map(|(s, r)| s.with_rendered(Some(r)))
            .collect();
        let (y, sy) = merged(&with, out);
        assert_eq!(st, sy, "stats differ with renderings for {target:?}");
        assert_eq!(String::from_utf8_lossy(&buf), String::from_utf8_lossy(&y));
        // gzip: every block a stored member, decompressed to the same bytes.
        #[cfg(feature = "agent")]
        {
            let members: Vec<GzipBlocks> =
                rendered.iter().map(|r| GzipBlocks::with(r, 6, 1)).collect();
            let refs: Vec<&GzipBlocks> = members.iter().collect();
            let (z, sz) = merge_gzip(&with, &refs, out, 1);
            assert_eq!(st, sz, "stats differ with gzip for {target:?}");
            let mut unzipped = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::MultiGzDecoder::new(&z.concat()[..]),
                &mut unzipped,
            )
            .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&buf),
                String::from_utf8_lossy(&unzipped)
            );
        }
    }
    let s = String::from_utf8(buf).unwrap();
    validate(s.as_bytes(), out).unwrap_or_else(|e| panic!("invalid output {e}:\n{s}"));
    (s, st)
}

fn text<'a>(pod: &'a str, body: &'a str) -> Source<'a> {
    Source::new(id(pod), body.as_bytes(), Format::Text)
}

fn om<'a>(pod: &'a str, body: &'a str) -> Source<'a> {
    Source::new(id(pod), body.as_bytes(), Format::OpenMetrics)
}

#[test]
fn families_are_grouped_and_sorted_with_identity() {
    let a = "# HELP b_total B.\n# TYPE b_total counter\nb_total{x=\"1\"} 1\n# TYPE a gauge\na 1\n";
    let b = "# HELP b_total B.\n# TYPE b_total counter\nb_total{x=\"1\"} 2\n";
    let (s, st) = run(&[text("p1", a), text("p2", b)], Format::Text);
    assert_eq!(
        s,
        "# TYPE a gauge\n\
         a{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\"} 1\n\
         # HELP b_total B.\n# TYPE b_total counter\n\
         b_total{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\",x=\"1\"} 1\n\
         b_total{namespace=\"ns\",pod=\"p2\",container=\"c\",endpoint=\"metrics\",x=\"1\"} 2\n"
    );
    assert_eq!(st, MergeStats::default());
}

#[test]
fn identity_conflicts_are_exported() {
    let a = "a{pod=\"app\",exported_pod=\"e\",namespace=\"\",z=\"1\"} 1\n";
    let (s, _) = run(&[text("p1", a)], Format::Text);
    assert_eq!(
        s,
        "# TYPE a untyped\n\
         a{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\",exported_pod=\"e\",z=\"1\",exported_exported_pod=\"app\"} 1\n"
    );
    // An empty app label does not block the exported_ name.
    let (s, _) = run(
        &[text("p1", "a{pod=\"app\",exported_pod=\"\"} 1\n")],
        Format::Text,
    );
    assert_eq!(
        s,
        "# TYPE a untyped\n\
         a{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\",exported_pod=\"app\"} 1\n"
    );
    // Empty identity values omit the label and leave the app's alone.
    let identity = Some(IdentityLabels {
        namespace: "ns",
        pod: "",
        container: "",
        endpoint: "",
        ..Default::default()
    });
    let src = Source::new(identity, b"a{pod=\"app\"} 1\n", Format::Text);
    let (s, _) = run(&[src], Format::Text);
    assert_eq!(s, "# TYPE a untyped\na{namespace=\"ns\",pod=\"app\"} 1\n");
}

#[test]
fn type_conflict_most_sources_win_a_tie_the_earliest() {
    let a = "# TYPE m gauge\nm 1\n";
    let b = "# TYPE m counter\nm 2\n";
    let (s, st) = run(&[text("p1", a), text("p2", b)], Format::Text);
    assert!(s.contains("# TYPE m gauge\n") && !s.contains(" 2\n"), "{s}");
    assert_eq!(st.family_conflicts, 1);
    // A pod whose namespace sorts first cannot take the family from two others.
    let (s, st) = run(
        &[
            text("aaa", a),
            text("p2", b),
            text("p3", "# TYPE m counter\nm 3\n"),
        ],
        Format::Text,
    );
    assert!(
        s.contains("# TYPE m counter\n") && s.contains(" 2\n") && s.contains(" 3\n"),
        "{s}"
    );
    assert!(!s.contains(" 1\n"), "{s}");
    assert_eq!(st.family_conflicts, 1);
    // HELP conflicts keep samples.
    let a = "# HELP m one\nm 1\n";
    let b = "# HELP m two\nm 2\n";
    let (s, st) = run(&[text("p1", a), text("p2", b)], Format::Text);
    assert!(s.contains("# HELP m one\n") && s.contains(" 2\n"), "{s}");
    assert_eq!(st.family_conflicts, 1);
}

#[test]
fn an_apps_job_instance_and_loupe_families_cannot_pass_for_loupes() {
    let body = "# TYPE loupe_target_up gauge\nloupe_target_up 1\n# TYPE m gauge\nm{job=\"x\",instance=\"y\",exported_job=\"z\"} 1\n";
    let (s, _) = run(&[text("p1", body)], Format::Text);
    assert!(!s.contains("loupe_target_up"), "{s}");
    for label in [
        "exported_job=\"z\"",
        "exported_exported_job=\"x\"",
        "exported_instance=\"y\"",
    ] {
        assert!(s.contains(label), "{label}: {s}");
    }
    assert!(!s.contains(",job=") && !s.contains("{job="), "{s}");
    // loupe's own series (no identity) keep theirs.
    let own = Source::new(
        None,
        b"# TYPE loupe_x gauge\nloupe_x{job=\"j\"} 1\n",
        Format::Text,
    );
    let (s, _) = run(&[own], Format::Text);
    assert_eq!(s, "# TYPE loupe_x gauge\nloupe_x{job=\"j\"} 1\n");
}

#[test]
fn target_and_pod_labels_come_first_and_an_apps_are_exported() {
    let pod_labels = [
        ("app_kubernetes_io_name".to_string(), "web".to_string()),
        ("team".to_string(), "pay".to_string()),
    ];
    let labels = IdentityLabels {
        namespace: "ns",
        pod: "p1",
        endpoint: "metrics",
        job: "web",
        instance: "10.0.0.1:8080",
        pod_labels: &pod_labels,
        ..Default::default()
    };
    let identity = Some(labels);
    // `team` is an app label on one line, inside a value on another, absent on the third.
    let body = "# TYPE m counter\nm_total{team=\"app\",job=\"j\",exported_team=\"e\"} 1\n\
                m_total{x=\"team=\"} 2\nm_total 3\n";
    for format in [Format::Text, Format::OpenMetrics] {
        let src = Source::new(identity, body.as_bytes(), Format::Text);
        let (s, st) = run(&[src], format);
        let ident = "namespace=\"ns\",pod=\"p1\",endpoint=\"metrics\",job=\"web\",instance=\"10.0.0.1:8080\",app_kubernetes_io_name=\"web\",team=\"pay\"";
        for line in [
            format!("m_total{{{ident},exported_team=\"e\",exported_job=\"j\",exported_exported_team=\"app\"}} 1"),
            format!("m_total{{{ident},x=\"team=\"}} 2"),
            format!("m_total{{{ident}}} 3"),
        ] {
            assert!(s.contains(&line), "{format:?}: {line} not in\n{s}");
        }
        assert_eq!(st, MergeStats::default());
    }
    // Two pods whose app labels equal the other's pod labels: their series stay apart.
    let other_labels = [("team".to_string(), "app".to_string())];
    let other = Some(IdentityLabels {
        pod_labels: &other_labels,
        ..labels
    });
    let (s, st) = run(
        &[
            Source::new(identity, b"m{team=\"app\"} 1\n", Format::Text),
            Source::new(other, b"m 2\n", Format::Text),
        ],
        Format::Text,
    );
    assert!(s.contains("team=\"pay\",exported_team=\"app\"} 1\n"), "{s}");
    assert!(s.contains("team=\"app\"} 2\n"), "{s}");
    assert_eq!(st.duplicate_series, 0);
}

#[test]
fn clashing_sample_names_drop_the_later_family() {
    let a = "# TYPE a_created gauge\na_created 1\n# EOF\n";
    let b = "# TYPE a counter\na_total 1\na_created 2\n# EOF\n";
    let (s, st) = run(&[om("p1", a), om("p2", b)], Format::OpenMetrics);
    assert!(
        s.contains("# TYPE a_created gauge") && !s.contains("a_total"),
        "{s}"
    );
    assert_eq!(st.family_conflicts, 1);
    // Unless more sources have the other family: one pod cannot drop everyone's counter.
    let (s, st) = run(
        &[om("aaa", a), om("p2", b), om("p3", b)],
        Format::OpenMetrics,
    );
    assert!(
        s.contains("# TYPE a counter") && !s.contains("# TYPE a_created gauge"),
        "{s}"
    );
    assert_eq!(st.family_conflicts, 1);
}

#[test]
fn duplicates_are_written_once() {
    let a = "m{a=\"1\",b=\"2\"} 1\nm{b=\"2\",a=\"1\"} 2\nm{a=\"1\"} 3\n";
    let (s, st) = run(&[text("p1", a)], Format::Text);
    assert_eq!(st.duplicate_series, 1);
    assert!(
        s.contains("} 1\n") && !s.contains("} 2\n") && s.contains("} 3\n"),
        "{s}"
    );
    // The same body from the same identity twice: all duplicates.
    let (_, st) = run(&[text("p1", a), text("p1", a)], Format::Text);
    assert_eq!(st.duplicate_series, 4);
    // An app label renamed to exported_pod meets an existing exported_pod.
    let b = "m{pod=\"x\"} 1\nm{exported_pod=\"x\"} 2\n";
    let (_, st) = run(&[text("p1", b)], Format::Text);
    assert_eq!(st.duplicate_series, 1);
}

#[test]
fn shared_identity_keeps_histograms_whole() {
    let a = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n# EOF\n";
    let b = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"+Inf\"} 1\n# EOF\n";
    let (s, st) = run(&[om("p1", a), om("p1", b)], Format::OpenMetrics);
    assert_eq!(st.duplicate_series, 3);
    assert!(!s.contains("le=\"2\""), "{s}");
}

#[test]
fn om_to_text_conversion() {
    let a =
        "# TYPE c counter\n# HELP c Say \\\"hi\\\".\nc_total 1 1.5 # {t=\"x\"} 1\nc_created 10\n\
             # TYPE i info\ni_info{v=\"1\"} 1\n\
             # TYPE g gaugehistogram\ng_bucket{le=\"+Inf\"} 2\ng_gcount 2\ng_gsum 3\n\
             # TYPE s_seconds gauge\n# UNIT s_seconds seconds\ns_seconds 1\n# EOF\n";
    let src = Source::new(None, a.as_bytes(), Format::OpenMetrics);
    let (s, _) = run(&[src], Format::Text);
    assert_eq!(
        s,
        "# HELP c_created Say \"hi\".\n# TYPE c_created gauge\nc_created 10\n\
         # HELP c_total Say \"hi\".\n# TYPE c_total counter\nc_total 1 1500\n\
         # TYPE g histogram\ng_bucket{le=\"+Inf\"} 2\n\
         # TYPE g_gcount gauge\ng_gcount 2\n# TYPE g_gsum gauge\ng_gsum 3\n\
         # TYPE i_info gauge\ni_info{v=\"1\"} 1\n\
         # TYPE s_seconds gauge\ns_seconds 1\n"
    );
}

#[test]
fn text_to_om_conversion() {
    let a =
        "# HELP r_total Requests \"all\".\n# TYPE r_total counter\nr_total{code=\"200\"} 3 1500\n\
             # TYPE bad counter\nbad 1\n\
             # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n\
             x   7   -5\n";
    let src = Source::new(None, a.as_bytes(), Format::Text);
    let (s, _) = run(&[src], Format::OpenMetrics);
    assert_eq!(
        s,
        "# TYPE bad unknown\nbad 1\n\
         # TYPE h_bucket unknown\nh_bucket{le=\"1\"} 1\n\
         # TYPE h_count unknown\nh_count 1\n# TYPE h_sum unknown\nh_sum 1\n\
         # TYPE r counter\n# HELP r Requests \\\"all\\\".\nr_total{code=\"200\"} 3 1.500\n\
         # TYPE x unknown\nx 7 -0.005\n# EOF\n"
    );
}

#[test]
fn text_created_gauges_fold_into_om_counters() {
    let a = "# HELP c_total C.\n# TYPE c_total counter\nc_total{x=\"1\"} 1\n\
             # HELP c_created C.\n# TYPE c_created gauge\nc_created{x=\"1\"} 1.7e9\n\
             # TYPE g_created gauge\ng_created 5\n";
    let src = Source::new(None, a.as_bytes(), Format::Text);
    let (s, st) = run(&[src], Format::OpenMetrics);
    assert_eq!(
        s,
        "# TYPE c counter\n# HELP c C.\nc_total{x=\"1\"} 1\nc_created{x=\"1\"} 1.7e9\n\
         # TYPE g_created gauge\ng_created 5\n# EOF\n"
    );
    assert_eq!(st.family_conflicts, 0);
}

#[test]
fn fuzz_regressions() {
    // Text allows le="+INF"; OpenMetrics only "+Inf": the family must not keep its type.
    let src = Source::new(
        None,
        b"# TYPE a histogram\na_bucket{le=\"+INF\"} 0\n",
        Format::Text,
    );
    let (s, _) = run(&[src], Format::OpenMetrics);
    assert!(s.contains("# TYPE a_bucket unknown"), "{s}");
    // The same series first as an untyped family, then inside a histogram: the histogram
    // keeps all its buckets (the untyped family clashes with it and is dropped).
    let body = "foo_bucket{le=\"+Inf\"} 1\n# TYPE foo histogram\nfoo_bucket{le=\"1\"} 1\nfoo_bucket{le=\"+Inf\"} 1\n";
    for out in [Format::Text, Format::OpenMetrics] {
        let src = Source::new(None, body.as_bytes(), Format::Text);
        let (s, st) = run(&[src], out);
        assert_eq!(st.family_conflicts, 1);
        assert!(s.contains("foo_bucket{le=\"+Inf\"} 1\n"), "{s}");
    }
}

#[test]
fn two_families_of_one_body_in_one_output_family_are_deduplicated() {
    // Untyped `h_bucket` and a histogram `h` without `+Inf`: both OpenMetrics `unknown`
    // `h_bucket`, with the same series; it must be written once.
    let body = "h_bucket{le=\"1\"} 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\n";
    for identity in [None, id("p1")] {
        let src = Source::new(identity, body.as_bytes(), Format::Text);
        let (s, st) = run(&[src], Format::OpenMetrics);
        assert_eq!(st.duplicate_series, 1, "{s}");
        assert!(s.contains("} 1\n") && !s.contains("} 2\n"), "{s}");
    }
}

#[test]
fn rejected_sources_contribute_nothing() {
    let (s, st) = run(
        &[text("p1", "a 1\n"), text("p2", "b{ 1\n"), om("p3", "c 1\n")],
        Format::Text,
    );
    assert_eq!(
        s,
        "# TYPE a untyped\na{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\"} 1\n"
    );
    let idx: Vec<_> = st.rejected.iter().map(|r| r.0).collect();
    assert_eq!(idx, [1, 2]);
}

#[test]
fn odd_escapes_are_normalised() {
    let a = "a{x=\"b\\\\a\\z\"} 1\n# EOF\n";
    let (s, _) = run(&[om("p", a)], Format::Text);
    assert!(s.contains("x=\"b\\\\a\\\\z\""), "{s}");
}

#[test]
fn a_mismatched_index_is_parsed_again_or_rejected() {
    let a = "# HELP a_total A.\n# TYPE a_total counter\na_total{ q = \"1\" } 2 5\n";
    let p = prepare(a.as_bytes(), Format::Text).unwrap();
    // An index that does not fit its body: the body is parsed again.
    let wrong = Source::prepared(None, b"# TYPE z gauge\nz 1\n", &p);
    assert_eq!(merged(&[wrong], Format::Text).0, b"# TYPE z gauge\nz 1\n");
    // ... and rejected if it fails, also where the store's rendering says so.
    let good = prepare(b"a 1\n", Format::Text).unwrap();
    let body = b"b{ 1\n";
    let r = render_source(body, &good, None, Format::Text);
    assert!(r.rejected.is_some());
    let src = Source::prepared(None, body, &good).with_rendered(Some(&r));
    assert_eq!(merged(&[src], Format::Text).1.rejected.len(), 1);
    // Another body of the same length is a caller's bug; it must still not panic.
    for fill in [b' ', b'{', b'"', b'\n', 0xff] {
        let other = vec![fill; a.len()];
        let bad = Source::prepared(id("p2"), &other, &p);
        for out in [Format::Text, Format::OpenMetrics] {
            merged(&[bad], out);
            let r = bad.render(out);
            merged(&[bad.with_rendered(Some(&r))], out);
        }
    }
}

const A: &str = "# HELP r_total R.\n# TYPE r_total counter\nr_total{code=\"200\"} 1\n# TYPE g gauge\ng{pod=\"x\"} 2\n";
const B: &str = "# TYPE r counter\n# HELP r R.\nr_total{code=\"200\"} 3 1.5\nr_created{code=\"200\"} 1.7e9\n# TYPE g gauge\ng{pod=\"y\"} 4\n# EOF\n";

#[test]
fn pods_merge_from_their_blocks() {
    for out in [Format::Text, Format::OpenMetrics] {
        let srcs = [
            text("p1", A),
            om("p2", B),
            Source::new(None, b"# TYPE loupe_up gauge\nloupe_up 1\n", Format::Text),
        ];
        let (text, st) = run(&srcs, out);
        assert_eq!(st.family_conflicts, 0);
        assert!(text.contains("exported_pod=\"y\""), "{text}");
    }
}

#[test]
fn chunks_slice_the_stored_blocks() {
    let mut body = String::from("# TYPE big gauge\n");
    for i in 0..100 {
        body.push_str(&format!("big{{i=\"{i}\"}} {i}\n"));
    }
    for out in [Format::Text, Format::OpenMetrics] {
        let srcs = [text("p1", &body), text("p2", &body)];
        let (whole, _) = run(&srcs, out);
        let preps: Vec<Prepared> = srcs
            .iter()
            .map(|s| prepare(s.body, s.format).unwrap())
            .collect();
        let prepared: Vec<Source<'_>> = srcs
            .iter()
            .zip(&preps)
            .map(|(s, p)| Source::prepared(s.identity, s.body, p))
            .collect();
        let rendered: Vec<Rendered> = prepared.iter().map(|s| s.render(out)).collect();
        let with: Vec<Source<'_>> = prepared
            .iter()
            .zip(&rendered)
            .map(|(s, r)| s.with_rendered(Some(r)))
            .collect();
        let (chunks, _) = merge(&with, out);
        assert_eq!(chunks.concat(), whole.as_bytes());
        // Header, p1's block, p2's block (and `# EOF`): the blocks are the stored bytes.
        for (chunk, r) in chunks[1..3].iter().zip(&rendered) {
            assert_eq!(chunk.as_ptr(), r.lines.as_ptr());
            assert_eq!(chunk.len(), r.lines.len());
        }
        assert_eq!(chunks.len(), 3 + usize::from(out == Format::OpenMetrics));
    }
}

#[test]
fn shared_identities_are_deduplicated_by_series() {
    // Two paths of one pod (same identity) with the same body: every series twice.
    for out in [Format::Text, Format::OpenMetrics] {
        let (s, st) = run(&[text("p1", A), text("p1", A)], out);
        assert_eq!(st.duplicate_series, 2, "{s}");
    }
    // Only the families both have are compared; the others are still copied whole.
    let (s, st) = run(
        &[
            text("p1", "a{x=\"1\"} 1\nb 1\n"),
            text("p1", "a{x=\"1\"} 2\na{x=\"2\"} 3\n"),
        ],
        Format::Text,
    );
    assert_eq!(st.duplicate_series, 1);
    assert!(
        s.contains("x=\"1\"} 1\n") && !s.contains("} 2\n") && s.contains("} 3\n"),
        "{s}"
    );
    // The agent's own series naming a pod, beside that pod's own with identity-named
    // labels: the same series may come from both.
    let srcs = [
        text("p1", "m{pod=\"q\"} 1\n"),
        Source::new(
            None,
            b"m{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\",exported_pod=\"q\"} 1\n",
            Format::Text,
        ),
    ];
    let (_, st) = run(&srcs, Format::Text);
    assert_eq!(st.duplicate_series, 1);
}

#[test]
fn renderings_are_bounded() {
    let body = b"a 1\nb 2\n";
    let p = prepare(body, Format::Text).unwrap();
    let src = Source::prepared(id("p1"), body, &p);
    assert!(render_within(&src, Format::Text, 1 << 20).is_some());
    let before = super::super::RENDERED_OVERSIZE.get();
    assert!(render_within(&src, Format::Text, 100).is_none());
    assert!(super::super::RENDERED_OVERSIZE.get() > before);
}

/// A text body with quoted (UTF-8) names, and a plain one whose names collide with them
/// after `underscores`.
const UTF8_BODY: &str = "# HELP \"http.server.duration\" Time \"spent\".\n\
# TYPE \"http.server.duration\" histogram\n\
{\"http.server.duration_bucket\",\"http.method\"=\"GET\",le=\"1\"} 1\n\
{\"http.server.duration_bucket\",\"http.method\"=\"GET\",le=\"+Inf\"} 2\n\
{\"http.server.duration_sum\",\"http.method\"=\"GET\"} 3\n\
{\"http.server.duration_count\",\"http.method\"=\"GET\"} 2\n\
# TYPE up_total counter\n\
up_total{\"a.b\"=\"x\",\"pod\"=\"p\"} 1\n\
{\"quote\\\"d\"} 1\n";
const COLLIDING_BODY: &str =
    "# TYPE up_total counter\nup_total{a_b=\"x\",pod=\"p\"} 1\nquote_d 2\n";

/// Merges bodies with `escaping` every way: as they are, prepared with [`prepare_escaped`]
/// (the rewrite as the body), and with their renderings; all must agree.
fn run_escaped(bodies: &[(&str, &str)], out: Format, escaping: Escaping) -> (String, MergeStats) {
    let raw: Vec<Source<'_>> = bodies
        .iter()
        .map(|(pod, b)| Source::new(id(pod), b.as_bytes(), Format::Text).with_escaping(escaping))
        .collect();
    let (buf, st) = merged(&raw, out);
    let preps: Vec<(Option<Vec<u8>>, Prepared)> = bodies
        .iter()
        .map(|(_, b)| super::super::prepare_escaped(b.as_bytes(), Format::Text, escaping).unwrap())
        .collect();
    let prepared: Vec<Source<'_>> = bodies
        .iter()
        .zip(&preps)
        .map(|((pod, b), (rewritten, p))| {
            let body = rewritten.as_deref().unwrap_or(b.as_bytes());
            Source::prepared(id(pod), body, p).with_escaping(escaping)
        })
        .collect();
    let (y, sy) = merged(&prepared, out);
    assert_eq!(
        (String::from_utf8_lossy(&buf), &st),
        (String::from_utf8_lossy(&y), &sy)
    );
    let rendered: Vec<Rendered> = prepared.iter().map(|s| s.render(out)).collect();
    let with: Vec<Source<'_>> = prepared
        .iter()
        .zip(&rendered)
        .map(|(s, r)| s.with_rendered(Some(r)))
        .collect();
    let (z, sz) = merged(&with, out);
    assert_eq!(
        (String::from_utf8_lossy(&buf), &st),
        (String::from_utf8_lossy(&z), &sz)
    );
    // A rendering for another scheme does not fit, and is made again.
    for other in Escaping::ALL.into_iter().filter(|o| *o != escaping) {
        let others: Vec<Rendered> = raw
            .iter()
            .map(|s| s.with_escaping(other).render(out))
            .collect();
        let with: Vec<Source<'_>> = raw
            .iter()
            .zip(&others)
            .map(|(s, r)| s.with_rendered(Some(r)))
            .collect();
        assert_eq!(
            merged(&with, out).0,
            buf,
            "{other:?} rendering used for {escaping:?}"
        );
    }
    (String::from_utf8(buf).unwrap(), st)
}

#[test]
fn utf8_names_in_every_scheme() {
    let bodies = [("p", UTF8_BODY), ("q", COLLIDING_BODY)];
    assert_eq!(
        run_escaped(&bodies, Format::Text, Escaping::AllowUtf8).0,
        r#"# HELP "http.server.duration" Time "spent".
# TYPE "http.server.duration" histogram
{"http.server.duration_bucket",namespace="ns",pod="p",container="c",endpoint="metrics","http.method"="GET",le="1"} 1
{"http.server.duration_bucket",namespace="ns",pod="p",container="c",endpoint="metrics","http.method"="GET",le="+Inf"} 2
{"http.server.duration_sum",namespace="ns",pod="p",container="c",endpoint="metrics","http.method"="GET"} 3
{"http.server.duration_count",namespace="ns",pod="p",container="c",endpoint="metrics","http.method"="GET"} 2
# TYPE "quote\"d" untyped
{"quote\"d",namespace="ns",pod="p",container="c",endpoint="metrics"} 1
# TYPE quote_d untyped
quote_d{namespace="ns",pod="q",container="c",endpoint="metrics"} 2
# TYPE up_total counter
up_total{namespace="ns",pod="p",container="c",endpoint="metrics","a.b"="x",exported_pod="p"} 1
up_total{namespace="ns",pod="q",container="c",endpoint="metrics",a_b="x",exported_pod="p"} 1
"#
    );
    assert_eq!(
        run_escaped(&bodies, Format::OpenMetrics, Escaping::AllowUtf8).0,
        r#"# TYPE "http.server.duration" histogram
# HELP "http.server.duration" Time \"spent\".
{"http.server.duration_bucket",namespace="ns",pod="p",container="c",endpoint="metrics","http.method"="GET",le="1"} 1
{"http.server.duration_bucket",namespace="ns",pod="p",container="c",endpoint="metrics","http.method"="GET",le="+Inf"} 2
{"http.server.duration_sum",namespace="ns",pod="p",container="c",endpoint="metrics","http.method"="GET"} 3
{"http.server.duration_count",namespace="ns",pod="p",container="c",endpoint="metrics","http.method"="GET"} 2
# TYPE "quote\"d" unknown
{"quote\"d",namespace="ns",pod="p",container="c",endpoint="metrics"} 1
# TYPE quote_d unknown
quote_d{namespace="ns",pod="q",container="c",endpoint="metrics"} 2
# TYPE up counter
up_total{namespace="ns",pod="p",container="c",endpoint="metrics","a.b"="x",exported_pod="p"} 1
up_total{namespace="ns",pod="q",container="c",endpoint="metrics",a_b="x",exported_pod="p"} 1
# EOF
"#
    );
    assert_eq!(
        run_escaped(&bodies, Format::Text, Escaping::Underscores).0,
        r#"# HELP http_server_duration Time "spent".
# TYPE http_server_duration histogram
http_server_duration_bucket{namespace="ns",pod="p",container="c",endpoint="metrics",http_method="GET",le="1"} 1
http_server_duration_bucket{namespace="ns",pod="p",container="c",endpoint="metrics",http_method="GET",le="+Inf"} 2
http_server_duration_sum{namespace="ns",pod="p",container="c",endpoint="metrics",http_method="GET"} 3
http_server_duration_count{namespace="ns",pod="p",container="c",endpoint="metrics",http_method="GET"} 2
# TYPE quote_d untyped
quote_d{namespace="ns",pod="p",container="c",endpoint="metrics"} 1
quote_d{namespace="ns",pod="q",container="c",endpoint="metrics"} 2
# TYPE up_total counter
up_total{namespace="ns",pod="p",container="c",endpoint="metrics",a_b="x",exported_pod="p"} 1
up_total{namespace="ns",pod="q",container="c",endpoint="metrics",a_b="x",exported_pod="p"} 1
"#
    );
    assert_eq!(
        run_escaped(&bodies, Format::Text, Escaping::Dots).0,
        r#"# HELP http_dot_server_dot_duration Time "spent".
# TYPE http_dot_server_dot_duration histogram
http_dot_server_dot_duration_bucket{namespace="ns",pod="p",container="c",endpoint="metrics",http_dot_method="GET",le="1"} 1
http_dot_server_dot_duration_bucket{namespace="ns",pod="p",container="c",endpoint="metrics",http_dot_method="GET",le="+Inf"} 2
http_dot_server_dot_duration_sum{namespace="ns",pod="p",container="c",endpoint="metrics",http_dot_method="GET"} 3
http_dot_server_dot_duration_count{namespace="ns",pod="p",container="c",endpoint="metrics",http_dot_method="GET"} 2
# TYPE quote__d untyped
quote__d{namespace="ns",pod="p",container="c",endpoint="metrics"} 1
# TYPE quote_d untyped
quote_d{namespace="ns",pod="q",container="c",endpoint="metrics"} 2
# TYPE up_total counter
up_total{namespace="ns",pod="p",container="c",endpoint="metrics",a_dot_b="x",exported_pod="p"} 1
up_total{namespace="ns",pod="q",container="c",endpoint="metrics",a_b="x",exported_pod="p"} 1
"#
    );
    assert_eq!(
        run_escaped(&bodies, Format::Text, Escaping::Values).0,
        r#"# HELP U__http_2e_server_2e_duration Time "spent".
# TYPE U__http_2e_server_2e_duration histogram
U__http_2e_server_2e_duration_bucket{namespace="ns",pod="p",container="c",endpoint="metrics",U__http_2e_method="GET",le="1"} 1
U__http_2e_server_2e_duration_bucket{namespace="ns",pod="p",container="c",endpoint="metrics",U__http_2e_method="GET",le="+Inf"} 2
U__http_2e_server_2e_duration_sum{namespace="ns",pod="p",container="c",endpoint="metrics",U__http_2e_method="GET"} 3
U__http_2e_server_2e_duration_count{namespace="ns",pod="p",container="c",endpoint="metrics",U__http_2e_method="GET"} 2
# TYPE U__quote_22_d untyped
U__quote_22_d{namespace="ns",pod="p",container="c",endpoint="metrics"} 1
# TYPE quote_d untyped
quote_d{namespace="ns",pod="q",container="c",endpoint="metrics"} 2
# TYPE up_total counter
up_total{namespace="ns",pod="p",container="c",endpoint="metrics",U__a_2e_b="x",exported_pod="p"} 1
up_total{namespace="ns",pod="q",container="c",endpoint="metrics",a_b="x",exported_pod="p"} 1
"#
    );
    for out in [Format::Text, Format::OpenMetrics] {
        for e in Escaping::ALL {
            let (text, st) = run_escaped(&bodies, out, e);
            assert!(st.rejected.is_empty() && st.family_conflicts == 0, "{st:?}");
            // Valid, read with the same scheme (allow-utf-8 keeps `quote"d` and `quote_d` apart).
            let (_, p) = super::super::prepare_escaped(text.as_bytes(), out, e).unwrap();
            assert_eq!(p.summary().samples, 8, "{text}");
        }
    }
}

#[test]
fn quoted_series_met_across_sources_are_written_once() {
    // Two sources with one identity: their series may meet, and are compared line by line.
    let a = "{\"a.b\",\"x.y\"=\"1\"} 1\nm{\"c.d\"=\"1\"} 1\n";
    let b = "{\"a.b\",\"x.y\"=\"1\"} 2\n{\"a.b\",\"x.y\"=\"2\"} 3\nm{\"c.d\"=\"1\"} 2\nm{\"c.d\"=\"2\"} 2\n";
    let sources = [
        Source::new(id("p"), a.as_bytes(), Format::Text).with_escaping(Escaping::AllowUtf8),
        Source::new(id("p"), b.as_bytes(), Format::Text).with_escaping(Escaping::AllowUtf8),
    ];
    let (out, st) = merged(&sources, Format::Text);
    assert_eq!(st.duplicate_series, 2, "{}", String::from_utf8_lossy(&out));
    let id = "namespace=\"ns\",pod=\"p\",container=\"c\",endpoint=\"metrics\"";
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "# TYPE \"a.b\" untyped\n{{\"a.b\",{id},\"x.y\"=\"1\"}} 1\n{{\"a.b\",{id},\"x.y\"=\"2\"}} 3\n\
             # TYPE m untyped\nm{{{id},\"c.d\"=\"1\"}} 1\nm{{{id},\"c.d\"=\"2\"}} 2\n"
        )
    );
}

//! The merge engine however its sources come: bodies it parses itself, prepared bodies, and
//! bodies rendered at ingest (one block per family; given, missing, or made for the other
//! format) must all give the same bytes and stats, into one buffer and as the chunk list a
//! scrape sends, for random sources in both formats, both output formats, TYPE/HELP/UNIT
//! conflicts, clashing sample names, text `_created` gauges folded into OpenMetrics counters,
//! identity-named app labels, shared and partial identities. Where the input and output
//! formats are the same, the output is compared with an independent oracle of the merging
//! rules (`support/oracle.rs`). Bodies with quoted (UTF-8) names agree every way in every
//! escaping scheme too, names that one scheme makes equal included.

#[path = "support/exposition.rs"]
mod exposition;
#[path = "support/oracle.rs"]
mod oracle;

use exposition::{fmt, Fam, Shape};
use loupe_agent::decode::{
    merge, prepare, prepare_escaped, validate, Escaping, Format, IdentityLabels, MergeStats,
    Prepared, Rendered, Source,
};
use loupe_testkit::bodies::Kind;
use loupe_testkit::strict;
use proptest::prelude::*;

/// Names chosen to clash: OpenMetrics counter `errors` owns `errors_total` and `errors_created`;
/// a text counter `errors_total` with a gauge `errors_created` folds into one OpenMetrics counter.
const NAMES: [&str; 8] = [
    "http_requests",
    // Reserved: an app's family is left out.
    "loupe_up",
    "errors",
    "errors_created",
    "latency_seconds",
    "job:temp:avg",
    "errors_total",
    "h_bucket",
];
const LABELS: [&str; 8] = [
    "pod",
    "namespace",
    "exported_pod",
    "instance",
    "container",
    "path",
    "code",
    "a",
];
const NASTY: &str = "[a-z0-9 ,=}{#\"\\\\\n\u{e9}]{0,6}";

/// Every kind and metadata; families, label sets and names may repeat or clash.
const SHAPE: Shape = Shape {
    names: &NAMES,
    labels: &LABELS,
    kinds: 0..8,
    helps: 0..4,
    units: true,
    series: 1..4,
    labels_per_series: 0..3,
    valid: false,
};

fn fam() -> impl Strategy<Value = Fam> {
    exposition::fam(
        &SHAPE,
        prop_oneof![Just(String::new()), NASTY.prop_map(|s| s)],
    )
}

fn write(fams: &[Fam], om: bool) -> String {
    exposition::write(&SHAPE, fams, om)
}

struct Body {
    id: Option<IdentityLabels<'static>>,
    body: Vec<u8>,
    prepared: Prepared,
}

/// Merges `bodies` into `out` every way: the bodies as they are (parsed by the merge),
/// prepared, and prepared with renderings picked by `how` per source: given (0), missing (1) or
/// made for the other format (2); into a buffer and as chunks. All must agree. Returns the
/// output and its stats.
fn every_way(bodies: &[Body], out: Format, how: &[u8]) -> (String, MergeStats) {
    let (x, sx) = every_way_bytes(bodies, out, how);
    let text = String::from_utf8(x).unwrap();
    check_with_oracle(bodies, out, &text, &sx);
    (text, sx)
}

/// [`every_way`] for any output format, protobuf included: the output's bytes.
fn every_way_bytes(bodies: &[Body], out: Format, how: &[u8]) -> (Vec<u8>, MergeStats) {
    let raw: Vec<Source<'_>> = bodies
        .iter()
        .map(|b| Source::new(b.id, &b.body, b.prepared.format()))
        .collect();
    let psrcs: Vec<Source<'_>> = bodies
        .iter()
        .map(|b| Source::prepared(b.id, &b.body, &b.prepared))
        .collect();
    let other = match out {
        Format::Text => Format::OpenMetrics,
        Format::OpenMetrics | Format::Protobuf => Format::Text,
    };
    let rendered: Vec<Rendered> = psrcs
        .iter()
        .zip(how.iter().cycle())
        .map(|(s, h)| s.render(if *h == 2 { other } else { out }))
        .collect();
    let rsrcs: Vec<Source<'_>> = psrcs
        .iter()
        .zip(&rendered)
        .zip(how.iter().cycle())
        .map(|((s, r), h)| s.with_rendered((*h != 1).then_some(r)))
        .collect();
    let merged = |sources: &[Source<'_>]| {
        let (chunks, stats) = merge(sources, out);
        (chunks.concat(), stats)
    };
    let ((w, sw), (x, sx), (y, sy)) = (merged(&raw), merged(&psrcs), merged(&rsrcs));
    assert_eq!(sw, sx, "stats differ (bodies, prepared)");
    assert_eq!(sx, sy, "stats differ (prepared, rendered)");
    assert_eq!(
        String::from_utf8_lossy(&w),
        String::from_utf8_lossy(&x),
        "outputs differ (bodies, prepared)"
    );
    assert_eq!(
        String::from_utf8_lossy(&x),
        String::from_utf8_lossy(&y),
        "outputs differ (prepared, rendered)"
    );
    (x, sx)
}

/// Where every source is in the output's format, the output and stats are the oracle's.
/// Returns whether the oracle applied.
fn check_with_oracle(bodies: &[Body], out: Format, text: &str, stats: &MergeStats) -> bool {
    if bodies.iter().any(|b| b.prepared.format() != out) {
        return false;
    }
    let om = out == Format::OpenMetrics;
    let sources: Vec<(Option<IdentityLabels<'_>>, &str)> = bodies
        .iter()
        .map(|b| (b.id, std::str::from_utf8(&b.body).unwrap()))
        .collect();
    let Some((expected, conflicts, duplicates)) = oracle::merge(&sources, om) else {
        return false;
    };
    let mut got = oracle::families(text, om).expect("the output has every family once");
    for f in &mut got {
        for s in &mut f.samples {
            s.1.sort();
        }
    }
    let inputs: Vec<&str> = sources.iter().map(|s| s.1).collect();
    assert_eq!(
        got, expected,
        "the oracle disagrees on:\n{inputs:#?}\n{text}"
    );
    assert_eq!(
        (stats.family_conflicts, stats.duplicate_series),
        (conflicts, duplicates),
        "the oracle counts otherwise on:\n{inputs:#?}\n{text}"
    );
    true
}

fn bodies(srcs: &[(usize, Vec<Fam>, bool)]) -> Vec<Body> {
    srcs.iter()
        .filter_map(|(id, fams, om)| {
            let body = write(fams, *om).into_bytes();
            let prepared = prepare(&body, fmt(*om)).ok()?;
            Some(Body {
                id: exposition::IDS[*id],
                body,
                prepared,
            })
        })
        .collect()
}

/// UTF-8 names, some equal after `underscores` (`a.b`, `a_b`, `a b`), one with escapes.
const UTF8_NAMES: [&str; 6] = ["a.b", "a_b", "a b", "花火", "q\"uo\\te", "up"];
const UTF8_LABELS: [&str; 5] = ["pod", "x.y", "x_y", "é", "le"];

/// One family of a body with quoted names: name, type (0 gauge, 1 counter, 2 untyped), and
/// its series (label pairs and a value).
type Utf8Fam = (usize, usize, Vec<(Vec<(usize, String)>, u8)>);

fn utf8_fam() -> impl Strategy<Value = Utf8Fam> {
    (
        0..UTF8_NAMES.len(),
        0..3usize,
        prop::collection::vec(
            (
                prop::collection::vec((0..UTF8_LABELS.len(), NASTY.prop_map(|s| s)), 0..3),
                any::<u8>(),
            ),
            1..3,
        ),
    )
}

fn quote(name: &str) -> String {
    format!(
        "\"{}\"",
        name.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// A text or OpenMetrics body with every name quoted (legacy ones too, as text 1.0.0 allows).
fn utf8_body(fams: &[Utf8Fam], om: bool) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for (name, kind, series) in fams {
        // One group per name (OpenMetrics' rule; text would regroup).
        if seen.contains(name) {
            continue;
        }
        seen.push(*name);
        let n = UTF8_NAMES[*name];
        let (ty, sample) = match (kind, om) {
            (1, true) => ("counter", format!("{n}_total")),
            (1, false) => ("counter", n.to_string()),
            (2, true) => ("unknown", n.to_string()),
            (2, false) => ("untyped", n.to_string()),
            _ => ("gauge", n.to_string()),
        };
        out += &format!("# TYPE {} {ty}\n", quote(n));
        for (labels, v) in series {
            out += &format!("{{{}", quote(&sample));
            let mut names = Vec::new();
            for (l, value) in labels {
                if names.contains(l) {
                    continue;
                }
                names.push(*l);
                let value = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                out += &format!(",{}=\"{value}\"", quote(UTF8_LABELS[*l]));
            }
            out += &format!("}} {v}\n");
        }
    }
    if om {
        out += "# EOF\n";
    }
    out
}

/// Merges bodies with quoted names in `escaping` every way: as they are, prepared (the
/// rewrite as the body), with renderings given, missing, or made for another scheme. All must
/// agree, and the output must read back in that scheme. Returns the output.
fn utf8_every_way(bodies: &[(usize, String, Format)], out: Format, escaping: Escaping) -> Vec<u8> {
    let raw: Vec<Source<'_>> = bodies
        .iter()
        .map(|(id, b, f)| {
            Source::new(exposition::IDS[*id], b.as_bytes(), *f).with_escaping(escaping)
        })
        .collect();
    let (x, sx) = merge(&raw, out);
    let preps: Vec<Option<(Option<Vec<u8>>, Prepared)>> = bodies
        .iter()
        .map(|(_, b, f)| prepare_escaped(b.as_bytes(), *f, escaping).ok())
        .collect();
    let prepared: Vec<Source<'_>> = raw
        .iter()
        .zip(&preps)
        .map(|(s, p)| match p {
            Some((rewritten, p)) => {
                Source::prepared(s.identity, rewritten.as_deref().unwrap_or(s.body), p)
                    .with_escaping(escaping)
            }
            None => *s,
        })
        .collect();
    let (y, sy) = merge(&prepared, out);
    assert_eq!((x.concat(), &sx), (y.concat(), &sy), "raw vs prepared");
    for other in Escaping::ALL {
        let rendered: Vec<Rendered> = raw
            .iter()
            .map(|s| s.with_escaping(other).render(out))
            .collect();
        let with: Vec<Source<'_>> = raw
            .iter()
            .zip(&rendered)
            .map(|(s, r)| s.with_rendered(Some(r)))
            .collect();
        let (z, sz) = merge(&with, out);
        assert_eq!(
            (x.concat(), &sx),
            (z.concat(), &sz),
            "rendered for {other:?}"
        );
    }
    let x = x.concat();
    if out != Format::Protobuf {
        if let Err(e) = prepare_escaped(&x, out, escaping) {
            panic!(
                "{escaping:?} {out:?} output does not read back: {e}\n{}",
                String::from_utf8_lossy(&x)
            );
        }
    }
    x
}

proptest! {
    // Each case merges in 4 schemes x 3 formats x 6 ways.
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn utf8_names_merge_every_way_in_every_scheme(
        srcs in prop::collection::vec((0..exposition::IDS.len(), prop::collection::vec(utf8_fam(), 1..4), any::<bool>()), 1..4),
    ) {
        let bodies: Vec<(usize, String, Format)> = srcs
            .iter()
            .map(|(id, fams, om)| (*id, utf8_body(fams, *om), fmt(*om)))
            .collect();
        for escaping in Escaping::ALL {
            for out in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
                utf8_every_way(&bodies, out, escaping);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn every_way_of_merging_agrees(
        srcs in prop::collection::vec((0..exposition::IDS.len(), prop::collection::vec(fam(), 1..5), any::<bool>()), 1..6),
        how in prop::collection::vec(0u8..3, 1..4),
    ) {
        let bodies = bodies(&srcs);
        for out in [Format::Text, Format::OpenMetrics] {
            let (text, _) = every_way(&bodies, out, &how);
            prop_assert!(validate(text.as_bytes(), out).is_ok(), "{}", text);
        }
    }

    /// The protobuf output agrees every way too, and the strict protobuf reader accepts it
    /// (one family per name, no series twice), with the text output's series count.
    #[test]
    fn protobuf_merges_agree_and_decode(
        srcs in prop::collection::vec((0..exposition::IDS.len(), prop::collection::vec(fam(), 1..5), any::<bool>()), 1..6),
        how in prop::collection::vec(0u8..3, 1..4),
    ) {
        let bodies = bodies(&srcs);
        let (out, stats) = every_way_bytes(&bodies, Format::Protobuf, &how);
        let families = loupe_agent::decode::proto::decode(&out);
        prop_assert!(families.is_ok(), "{:?}", families.err());
        let (_, text_stats) = every_way(&bodies, Format::Text, &how);
        prop_assert_eq!(stats.rejected.len(), text_stats.rejected.len());
    }

    /// Sources in the output's format, with repeated, partial and missing identities: the
    /// output and stats are the oracle's.
    #[test]
    fn same_format_merges_match_the_oracle(
        srcs in prop::collection::vec((0..exposition::IDS.len(), prop::collection::vec(fam(), 1..5)), 1..6),
        om in any::<bool>(),
    ) {
        let srcs: Vec<(usize, Vec<Fam>, bool)> = srcs.into_iter().map(|(i, f)| (i, f, om)).collect();
        let bodies = bodies(&srcs);
        let out = fmt(om);
        let (text, stats) = every_way(&bodies, out, &[0, 1]);
        let applied = check_with_oracle(&bodies, out, &text, &stats);
        // Bodies with a family twice are the only ones the oracle leaves out.
        prop_assume!(applied);
    }

    /// Distinct, complete identities (a node's pods): the output passes the strict checker.
    #[test]
    fn distinct_pods_merge_strictly(
        srcs in prop::collection::vec((prop::collection::vec(fam(), 1..5), any::<bool>()), 1..4),
    ) {
        let srcs: Vec<(usize, Vec<Fam>, bool)> = srcs
            .into_iter()
            .enumerate()
            .map(|(i, (f, om))| ([1, 2, 4][i], f, om))
            .collect();
        let bodies = bodies(&srcs);
        for out in [Format::Text, Format::OpenMetrics] {
            let (text, _) = every_way(&bodies, out, &[0]);
            if let Err(e) = strict::check(&text, kit(out)) {
                prop_assert!(false, "strict check: {:?}\n{}", e, text);
            }
        }
    }
}

#[test]
fn generated_bodies_are_mostly_valid() {
    // The generator must not produce only bodies that fail (they would test nothing).
    let f = |name, kind| Fam {
        name,
        kind,
        help: 1,
        unit: true,
        ts: None,
        series: vec![(vec![(0, "x".into())], 1)],
    };
    for kind in Kind::ALL {
        for om in [false, true] {
            let body = write(&[f(3, kind)], om);
            assert!(validate(body.as_bytes(), fmt(om)).is_ok(), "{body}");
        }
    }
}

/// The cases in `rendered_props.proptest-regressions`, whose seeds replay other cases once the
/// generator changes.
#[test]
fn past_failures_stay_fixed() {
    let f = |name, kind| Fam {
        name,
        kind,
        help: 0,
        unit: false,
        ts: None,
        series: vec![(vec![], 0)],
    };
    // A histogram and a counter of one name in two pods.
    let pods = bodies(&[
        (1, vec![f(2, Kind::Histogram)], false),
        (2, vec![f(2, Kind::Counter)], false),
    ]);
    assert_eq!(pods.len(), 2);
    for out in [Format::Text, Format::OpenMetrics] {
        let (text, _) = every_way(&pods, out, &[0]);
        strict::check(&text, kit(out)).unwrap();
    }
    // The agent's own counter against a pod's gauge of the same name.
    let own_and_pod = bodies(&[
        (0, vec![f(1, Kind::Counter)], false),
        (1, vec![f(1, Kind::Gauge)], false),
    ]);
    assert_eq!(own_and_pod.len(), 2);
    for out in [Format::Text, Format::OpenMetrics] {
        let (text, _) = every_way(&own_and_pod, out, &[0]);
        validate(text.as_bytes(), out).unwrap();
    }
}

/// The checker's name for `format`.
fn kit(format: Format) -> loupe_testkit::Format {
    loupe_testkit::Format::from_om(format == Format::OpenMetrics)
}

fn body(id: usize, text: &str, om: bool) -> Body {
    let body = text.as_bytes().to_vec();
    let prepared = prepare(&body, fmt(om)).unwrap();
    Body {
        id: exposition::IDS[id],
        body,
        prepared,
    }
}

#[test]
fn every_way_agrees_on_chosen_cases() {
    let cases: Vec<Vec<Body>> = vec![
        // TYPE conflict; HELP conflict; HELP equal across formats.
        vec![
            body(1, "# HELP m one\n# TYPE m gauge\nm 1\n# HELP r_total Say \"hi\".\n# TYPE r_total counter\nr_total 1\n", false),
            body(2, "# TYPE m counter\nm_total 2\n# HELP r Say \\\"hi\\\".\n# TYPE r counter\nr_total 2\n# EOF\n", true),
            body(4, "# HELP m two\n# TYPE m gauge\nm 3\n", false),
        ],
        // Clashing names: OpenMetrics counter `a` against a gauge `a_created` of another pod.
        vec![
            body(1, "# TYPE a_created gauge\na_created 1\n# EOF\n", true),
            body(2, "# TYPE a counter\na_total 1\na_created 2\n# EOF\n", true),
        ],
        // Text `_created` gauges folded into OpenMetrics counters; a histogram's cannot be.
        vec![
            body(1, "# HELP c_total C.\n# TYPE c_total counter\nc_total{x=\"1\"} 1\n# HELP c_created C.\n# TYPE c_created gauge\nc_created{x=\"1\"} 1.7e9\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n# TYPE h_created gauge\nh_created 5\n", false),
            body(2, "# TYPE c counter\nc_total{x=\"1\"} 1\nc_created{x=\"1\"} 5\n# EOF\n", true),
        ],
        // Identity-named app labels (renamed to exported_*) and duplicates they make.
        vec![
            body(1, "m{pod=\"x\"} 1\nm{exported_pod=\"x\"} 2\nm{pod=\"\"} 3\nm 4\n", false),
            body(2, "m{pod=\"x\"} 1\n", false),
        ],
        // Same identity twice (two paths on one port): series compared across the sources.
        vec![
            body(1, "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n# EOF\n", true),
            body(1, "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n# EOF\n", true),
        ],
        // The agent's own series (no identity) beside a pod whose app labels name its pod.
        vec![
            body(1, "up{container=\"c\"} 1\n", false),
            body(0, "up{namespace=\"shop\",pod=\"cart-1\",container=\"app\",endpoint=\"metrics\"} 1\n", false),
            body(3, "up{pod=\"cart-1\"} 1\n", false),
        ],
        // One text body gives two entries of one OpenMetrics family (an untyped `h_bucket`
        // and a histogram `h` without `+Inf`, both `unknown` `h_bucket`), with their own HELPs.
        vec![
            body(1, "# HELP h_bucket X.\nh_bucket{le=\"1\"} 1\n# HELP h Y.\n# TYPE h histogram\nh_bucket{le=\"2\"} 1\n", false),
            body(2, "# HELP h_bucket Z.\nh_bucket{le=\"1\"} 1\n", false),
        ],
        // Duplicates within one body, OpenMetrics repeated samples with timestamps.
        vec![
            body(1, "m{a=\"1\",b=\"2\"} 1\nm{b=\"2\",a=\"1\"} 2\nm{a=\"1\"} 3\n", false),
            body(2, "# TYPE g gauge\ng 1 1\ng 2 2\n# EOF\n", true),
        ],
    ];
    for (i, bodies) in cases.iter().enumerate() {
        for out in [Format::Text, Format::OpenMetrics] {
            for how in [[0u8], [1], [2]] {
                let (text, _) = every_way(bodies, out, &how);
                validate(text.as_bytes(), out)
                    .unwrap_or_else(|e| panic!("case {i}: invalid output {e}\n{text}"));
            }
        }
    }
}

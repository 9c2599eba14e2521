//! Property tests of the codec on generated bodies with nasty label values (`,` `=` `}` `#` `"`
//! `\` newlines, UTF-8) and identity-named app labels:
//! - render(parse(x)) keeps every sample (a single source merged without identity);
//! - any merge of several sources (both formats in, both formats out, repeated and missing
//!   identities, type conflicts) passes the project's strict checker and loupe's own validator;
//! - prometheus-parse, on inputs inside its grammar, sees the same samples before and after.

#[path = "support/exposition.rs"]
mod exposition;

use exposition::{fmt, Fam, Shape};
use loupe_agent::decode::{merge, validate, Format, Source};
use loupe_testkit::strict;
use proptest::prelude::*;

const NAMES: [&str; 6] = [
    "http_requests",
    "queue_depth",
    "latency_seconds",
    "job:temp:avg",
    "errors",
    // Reserved: an app's is left out.
    "loupe_up",
];
const LABELS: [&str; 10] = [
    "pod",
    "namespace",
    "exported_pod",
    // Target labels: an app's are renamed.
    "job",
    "exported_job",
    "container",
    "endpoint",
    "path",
    "code",
    "a",
];

/// Valid bodies (every source must be accepted) of the kinds both formats share.
const SHAPE: Shape = Shape {
    names: &NAMES,
    labels: &LABELS,
    kinds: 0..5,
    helps: 0..2,
    units: false,
    series: 1..5,
    labels_per_series: 0..4,
    valid: true,
};

fn fam(values: &'static str) -> impl Strategy<Value = Fam> {
    exposition::fam(&SHAPE, values)
}

fn write(fams: &[Fam], format: Format) -> String {
    exposition::write(&SHAPE, fams, format == Format::OpenMetrics)
}

const NASTY: &str = "[a-z0-9 ,=}{#\"\\\\\n\u{e9}\u{2603}]{0,8}";
const PLAIN: &str = "[a-z0-9]{0,8}";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn render_parse_keeps_every_sample(fams in prop::collection::vec(fam(NASTY), 1..6), om in any::<bool>()) {
        let f = fmt(om);
        let body = write(&fams, f);
        prop_assert!(validate(body.as_bytes(), f).is_ok(), "generated body invalid: {:?}\n{}", validate(body.as_bytes(), f), body);
        let (chunks, st) = merge(&[Source::new(None, body.as_bytes(), f)], f);
        let out = String::from_utf8(chunks.concat()).unwrap();
        prop_assert!(st.rejected.is_empty());
        prop_assert_eq!(st.duplicate_series, 0);
        let a = strict::check(&body, kit(om));
        prop_assert!(a.is_ok(), "generated body fails the strict check: {:?}\n{}", a.as_ref().err(), body);
        let b = strict::check(&out, kit(om));
        prop_assert!(b.is_ok(), "output fails the strict check: {:?}\n{}", b.as_ref().err(), out);
        let (mut a, mut b) = (a.unwrap().written(), b.unwrap().written());
        a.sort();
        b.sort();
        prop_assert_eq!(a, b, "in:\n{}\nout:\n{}", body, out);
    }

    #[test]
    fn merge_output_passes_strict_checks(
        srcs in prop::collection::vec((0..exposition::IDS.len(), prop::collection::vec(fam(NASTY), 1..5), any::<bool>()), 1..6),
        out_om in any::<bool>(),
    ) {
        let bodies: Vec<(usize, String, Format)> = srcs
            .iter()
            .map(|(id, fams, om)| (*id, write(fams, fmt(*om)), fmt(*om)))
            .collect();
        let sources: Vec<Source<'_>> = bodies
            .iter()
            .map(|(id, b, f)| Source::new(exposition::IDS[*id], b.as_bytes(), *f))
            .collect();
        let out = fmt(out_om);
        let (chunks, st) = merge(&sources, out);
        let text = String::from_utf8(chunks.concat()).unwrap();
        prop_assert!(st.rejected.is_empty(), "{:?}", st.rejected);
        if let Err(e) = strict::check(&text, kit(out_om)) {
            prop_assert!(false, "strict check: {:?}\n{}", e, text);
        }
        let v = validate(text.as_bytes(), out);
        prop_assert!(v.is_ok(), "{:?}\n{}", v, text);
        if st.family_conflicts == 0 && st.reserved_families == 0 {
            let inputs: usize = bodies.iter().map(|(_, b, f)| validate(b.as_bytes(), *f).unwrap().samples).sum();
            prop_assert_eq!(v.unwrap().samples as u64 + st.duplicate_series, inputs as u64);
        }
    }

    #[test]
    fn prometheus_parse_sees_the_same_samples(fams in prop::collection::vec(fam(PLAIN), 1..6)) {
        // Inside prometheus-parse's grammar: text, \w+ names, plain label values.
        let fams: Vec<Fam> = fams.into_iter().filter(|f| !NAMES[f.name].contains(':')).collect();
        let body = write(&fams, Format::Text);
        let ours = validate(body.as_bytes(), Format::Text).unwrap();
        let theirs_lines = body
            .lines()
            .filter(|l| matches!(prometheus_parse::LineInfo::parse(l), prometheus_parse::LineInfo::Sample { .. }))
            .count();
        prop_assert_eq!(ours.samples, theirs_lines);
        let before = oracle(&body);
        for via in [Format::Text, Format::OpenMetrics] {
            let mid = merge(&[Source::new(None, body.as_bytes(), Format::Text)], via).0.concat();
            let back = merge(&[Source::new(None, &mid, via)], Format::Text).0.concat();
            let after = oracle(std::str::from_utf8(&back).unwrap());
            prop_assert_eq!(&before, &after, "via {:?}\n{}\n{}", via, body, String::from_utf8_lossy(&back));
        }
    }
}

fn oracle(body: &str) -> Vec<String> {
    // A fixed time for samples without a timestamp (epoch, taken from a parsed sample so that
    // chrono need not be a dependency), so the two sides compare equal.
    let epoch = prometheus_parse::Scrape::parse(std::iter::once(Ok("x 1 0".to_string())))
        .unwrap()
        .samples[0]
        .timestamp;
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse_at(lines, epoch).unwrap();
    let mut v: Vec<String> = scrape
        .samples
        .iter()
        .map(|s| {
            let mut labels: Vec<_> = s.labels.iter().collect();
            labels.sort();
            format!("{} {:?} {:?} {:?}", s.metric, labels, s.value, s.timestamp)
        })
        .collect();
    v.sort();
    v
}

/// The checker's name for the format (`om`: OpenMetrics).
fn kit(om: bool) -> loupe_testkit::Format {
    loupe_testkit::Format::from_om(om)
}

use super::*;
use crate::strict;
use crate::Format::{OpenMetrics, Text};

fn samples(spec: &Spec) -> Vec<strict::Sample> {
    let body = body(spec);
    match strict::check(&body, spec.format) {
        Ok(exp) => exp.samples,
        Err(e) => panic!("{spec:?}: {e:?}\n{body}"),
    }
}

#[test]
fn has_exactly_the_series_asked_and_passes_the_strict_checker() {
    for n in [0, 1, 5, 10, 69, 70, 100, 1000, 1234] {
        for format in [Text, OpenMetrics] {
            assert_eq!(samples(&Spec::app(n).format(format)).len(), n, "app {n}");
            assert_eq!(samples(&Spec::pod(3, n, format)).len(), n, "pod {n}");
        }
    }
    let mut spec = Spec::pod(0, 2000, Text);
    spec.families = 9;
    spec.summary_pct = 25;
    spec.labels = 1..=4;
    let s = samples(&spec);
    assert_eq!(s.len(), 2000);
    assert!(s.iter().any(|s| s.label("quantile").is_some()));
}

#[test]
fn the_parameters_shape_the_body() {
    let mut spec = Spec::pod(1, 1000, Text);
    spec.families = 7;
    spec.summary_pct = 10;
    let exp = strict::check(&body(&spec), Text).unwrap();
    assert_eq!(exp.families.len(), 7, "{:?}", exp.families.keys());
    let kinds = |k: &str| {
        exp.families
            .values()
            .filter(|f| f.kind.as_deref() == Some(k))
            .map(|f| f.samples)
            .sum::<usize>()
    };
    // Whole groups: 14 series per histogram of 11 buckets, 5 per summary.
    assert_eq!(kinds("histogram"), 200 / 14 * 14);
    assert_eq!(kinds("summary"), 100 / 5 * 5);
    for s in &exp.samples {
        let le = usize::from(s.label("le").is_some() || s.label("quantile").is_some());
        assert!((3..=6).contains(&(s.labels.len() - le)), "{s:?}");
    }
    let longer = Spec {
        id_len: 60,
        ..spec.clone()
    };
    assert!(body(&longer).len() > body(&spec).len() + 1000 * 30);
}

#[test]
fn is_deterministic_and_differs_by_seed() {
    assert_eq!(
        body(&Spec::pod(4, 300, Text)),
        body(&Spec::pod(4, 300, Text))
    );
    assert_ne!(
        body(&Spec::pod(4, 300, Text)),
        body(&Spec::pod(5, 300, Text))
    );
}

#[test]
fn both_formats_hold_the_same_samples() {
    let text = samples(&Spec::app(500));
    let om = samples(&Spec::app(500).format(OpenMetrics));
    assert_eq!(text, om);
    let om = body(&Spec::app(100).format(OpenMetrics));
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE app_http_requests counter\n"));
}

#[test]
fn the_app_body_has_the_families_the_tests_query_and_the_extra_label_first() {
    let spec = Spec::app(500).extra_label(Some(("pod".into(), "x\"y".into())));
    let s = samples(&spec);
    assert!(s
        .iter()
        .all(|s| s.labels[0] == ("pod".into(), "x\"y".into())));
    assert!(s.iter().all(|s| s.name.starts_with("app_")));
    assert!(s.iter().any(|s| s.name == "app_queue_bytes"));
    assert!(s.iter().all(|s| (3..=7).contains(&s.labels.len())));
}

#[test]
fn kinds_name_their_type_per_format() {
    assert_eq!(Kind::Untyped.type_name(Text), "untyped");
    assert_eq!(Kind::Untyped.type_name(OpenMetrics), "unknown");
    assert_eq!(Kind::CounterWithCreated.type_name(Text), "counter");
    assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
}

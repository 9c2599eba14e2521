//! The strict reader: one test per rejection (offset and family asserted), what it must accept,
//! a realistic round trip, bodies encoded by prometheus-client's independently generated types,
//! and property tests over arbitrary valid families, their truncations, and damaged bodies
//! (read against prost's decoding of the same bytes).

use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use prost::Message;

use super::super::schema::{
    Bucket, BucketSpan, Counter, Exemplar, Gauge, Histogram, LabelPair, Metric, MetricFamily,
    MetricType, Quantile, Summary, Timestamp, Untyped,
};
use super::*;

// ---- Builders ------------------------------------------------------------------------------

fn lp(name: &str, value: &str) -> LabelPair {
    LabelPair {
        name: name.into(),
        value: value.into(),
    }
}

fn labels(l: &[(&str, &str)]) -> Vec<LabelPair> {
    l.iter().map(|(n, v)| lp(n, v)).collect()
}

fn fam(name: &str, kind: MetricType, metric: Vec<Metric>) -> MetricFamily {
    MetricFamily {
        name: name.into(),
        help: format!("{name} help."),
        r#type: kind as i32,
        metric,
        unit: String::new(),
    }
}

fn counter(l: &[(&str, &str)], value: f64) -> Metric {
    Metric {
        label: labels(l),
        counter: Some(Counter {
            value,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn gauge(l: &[(&str, &str)], value: f64) -> Metric {
    Metric {
        label: labels(l),
        gauge: Some(Gauge { value }),
        ..Default::default()
    }
}

fn untyped(l: &[(&str, &str)], value: f64) -> Metric {
    Metric {
        label: labels(l),
        untyped: Some(Untyped { value }),
        ..Default::default()
    }
}

fn summary(l: &[(&str, &str)], quantiles: &[f64]) -> Metric {
    Metric {
        label: labels(l),
        summary: Some(Summary {
            sample_count: 10,
            sample_sum: 2.5,
            quantile: quantiles
                .iter()
                .map(|&q| Quantile {
                    quantile: q,
                    value: q * 3.0,
                })
                .collect(),
            start_timestamp: None,
        }),
        ..Default::default()
    }
}

fn hist(l: &[(&str, &str)], h: Histogram) -> Metric {
    Metric {
        label: labels(l),
        histogram: Some(h),
        ..Default::default()
    }
}

/// A classic histogram with `buckets` (upper bound, cumulative count) and count `count`.
fn classic(buckets: &[(f64, u64)], count: u64) -> Histogram {
    Histogram {
        sample_count: count,
        sample_sum: 12.5,
        bucket: buckets
            .iter()
            .map(|&(upper_bound, cumulative_count)| Bucket {
                cumulative_count,
                upper_bound,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Deltas of integer bucket counts, as native histograms carry them.
fn deltas(counts: &[u64]) -> Vec<i64> {
    let mut previous = 0i64;
    counts
        .iter()
        .map(|&c| {
            let d = c as i64 - previous;
            previous = c as i64;
            d
        })
        .collect()
}

/// An integer native histogram (schema 3): one span per side starting at index -2 (negative)
/// and 1 (positive), the zero bucket `zero`, the count to match.
fn native(zero: u64, negative: &[u64], positive: &[u64]) -> Histogram {
    let span = |offset, n: &[u64]| {
        if n.is_empty() {
            vec![]
        } else {
            vec![BucketSpan {
                offset,
                length: n.len() as u32,
            }]
        }
    };
    Histogram {
        sample_count: zero + negative.iter().sum::<u64>() + positive.iter().sum::<u64>(),
        sample_sum: 42.0,
        schema: 3,
        zero_threshold: 1e-128,
        zero_count: zero,
        negative_span: span(-2, negative),
        negative_delta: deltas(negative),
        positive_span: span(1, positive),
        positive_delta: deltas(positive),
        ..Default::default()
    }
}

/// The float version of [`native`].
fn native_float(zero: f64, negative: &[f64], positive: &[f64]) -> Histogram {
    let span = |offset, n: &[f64]| {
        if n.is_empty() {
            vec![]
        } else {
            vec![BucketSpan {
                offset,
                length: n.len() as u32,
            }]
        }
    };
    Histogram {
        sample_count_float: zero + negative.iter().sum::<f64>() + positive.iter().sum::<f64>(),
        sample_sum: 42.0,
        schema: 0,
        zero_threshold: 0.001,
        zero_count_float: zero,
        negative_span: span(-2, negative),
        negative_count: negative.to_vec(),
        positive_span: span(1, positive),
        positive_count: positive.to_vec(),
        ..Default::default()
    }
}

/// A native histogram without observations: one no-op span.
fn empty_native() -> Histogram {
    Histogram {
        positive_span: vec![BucketSpan {
            offset: 0,
            length: 0,
        }],
        ..Default::default()
    }
}

fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

fn exemplar(l: &[(&str, &str)]) -> Exemplar {
    Exemplar {
        label: labels(l),
        value: 0.25,
        timestamp: ts(1_700_000_000, 5),
    }
}

fn body(fams: &[MetricFamily]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fams {
        f.encode_length_delimited(&mut out).unwrap();
    }
    out
}

/// Where family `i`'s length prefix starts in `body(fams)`.
fn prefix_at(fams: &[MetricFamily], i: usize) -> usize {
    fams[..i]
        .iter()
        .map(|f| prost::length_delimiter_len(f.encoded_len()) + f.encoded_len())
        .sum()
}

/// Where family `i`'s message starts in `body(fams)`.
fn family_at(fams: &[MetricFamily], i: usize) -> usize {
    prefix_at(fams, i) + prost::length_delimiter_len(fams[i].encoded_len())
}

/// Where metric `j` of family `i` (its field's key) starts in `body(fams)`: prost writes the
/// fields in number order, so after name, help and type.
fn metric_at(fams: &[MetricFamily], i: usize, j: usize) -> usize {
    let f = &fams[i];
    let mut head = f.clone();
    head.metric.clear();
    head.unit.clear();
    family_at(fams, i)
        + head.encoded_len()
        + f.metric[..j]
            .iter()
            .map(|m| 1 + prost::length_delimiter_len(m.encoded_len()) + m.encoded_len())
            .sum::<usize>()
}

/// Asserts that `body` is rejected at `at`, naming `family` (or none) and saying `words`.
#[track_caller]
fn rejected(body: &[u8], at: usize, family: Option<&str>, words: &str) -> ParseError {
    let e = match decode(body) {
        Ok(f) => panic!("accepted: {f:?}"),
        Err(e) => e,
    };
    assert_eq!(e.byte, Some(at), "{e}");
    assert_eq!((e.line, e.column), (0, 0), "{e}");
    match family {
        Some(f) => assert!(e.reason.starts_with(&format!("family {f:?}: ")), "{e}"),
        None => assert!(!e.reason.starts_with("family \""), "{e}"),
    }
    assert!(e.reason.contains(words), "{e} (expected {words:?})");
    e
}

/// Asserts that one family with `metrics` of type `kind` is rejected at its metric `j`.
#[track_caller]
fn rejected_metric(kind: MetricType, metrics: Vec<Metric>, j: usize, words: &str) {
    let fams = [
        fam("ok_total", MetricType::Counter, vec![counter(&[], 1.0)]),
        { fam("m", kind, metrics) },
    ];
    let at = metric_at(&fams, 1, j);
    rejected(&body(&fams), at, Some("m"), &format!("metric {}: ", j + 1));
    rejected(&body(&fams), at, Some("m"), words);
}

#[track_caller]
fn accepted(fams: &[MetricFamily]) {
    let b = body(fams);
    match decode(&b) {
        // Compared as bytes, which keeps NaNs equal.
        Ok(got) => assert_eq!(body(&got), b),
        Err(e) => panic!("rejected: {e}"),
    }
}

/// Replaces the bytes `from` (once in `b`) with `to`, of the same length.
fn patch(b: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = b
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in body");
    b[at..at + to.len()].copy_from_slice(to);
}

// ---- Framing -------------------------------------------------------------------------------

#[test]
fn an_empty_body_is_no_families() {
    assert_eq!(decode(b""), Ok(vec![]));
}

#[test]
fn a_body_of_4_gib_is_refused() {
    let e = check_size(u32::MAX as usize).unwrap_err();
    assert_eq!(e.byte, Some(0));
    assert!(e.reason.contains("4 GiB"), "{e}");
    assert!(check_size(u32::MAX as usize - 1).is_ok());
}

#[test]
fn a_truncated_length_prefix_is_refused() {
    let fams = [fam("a_total", MetricType::Counter, vec![counter(&[], 1.0)])];
    let mut b = body(&fams);
    let at = b.len();
    b.extend_from_slice(&[0x80, 0x80]);
    rejected(&b, at, None, "length prefix: truncated varint");
}

#[test]
fn a_length_prefix_longer_than_10_bytes_is_refused() {
    let fams = [fam("a_total", MetricType::Counter, vec![counter(&[], 1.0)])];
    let mut b = body(&fams);
    let at = b.len();
    b.extend_from_slice(&[0x80; 10]);
    b.extend_from_slice(&[0x00; 4]);
    rejected(&b, at, None, "length prefix: varint longer than 10 bytes");
}

#[test]
fn a_length_prefix_past_64_bits_is_refused() {
    let mut b = vec![0xff; 9];
    b.push(0x02);
    b.extend_from_slice(&[0; 8]);
    rejected(&b, 0, None, "past 64 bits");
}

#[test]
fn a_length_past_the_end_is_refused_before_allocating_and_names_the_family() {
    let fams = [
        fam("a_total", MetricType::Counter, vec![counter(&[], 1.0)]),
        fam("cut", MetricType::Gauge, vec![gauge(&[("x", "1")], 1.0)]),
    ];
    let b = body(&fams);
    rejected(
        &b[..b.len() - 1],
        prefix_at(&fams, 1),
        Some("cut"),
        "past the end",
    );
    // The largest length there is: refused, not allocated.
    let mut huge = body(&fams[..1]);
    let at = huge.len();
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    huge.extend_from_slice(&[0x0a, 0x01, b'z']);
    let e = rejected(
        &huge,
        at,
        Some("z"),
        "past the end of the body (3 bytes left)",
    );
    assert!(e.reason.contains(&u64::MAX.to_string()), "{e}");
}

// ---- wire errors ------------------------------------------------------------------------

#[test]
fn a_wrong_wire_type_is_refused_at_its_field() {
    // name "w", then field 3 (type) as a length-delimited field.
    let msg = [0x0a, 0x01, b'w', 0x1a, 0x00];
    let mut b = vec![msg.len() as u8];
    b.extend_from_slice(&msg);
    rejected(
        &b,
        4,
        Some("w"),
        "MetricFamily.type: wire type length-delimited, expected varint",
    );
}

#[test]
fn a_truncated_field_inside_a_metric_is_refused_at_the_metric() {
    let fams = [fam("t", MetricType::Gauge, vec![gauge(&[], 1.0)])];
    let at = metric_at(&fams, 0, 0);
    let mut b = body(&fams);
    // The metric: a label field that claims 5 bytes and has 1; the outer lengths agree.
    let metric = [0x22, 0x03, 0x0a, 0x05, b'a'];
    let cut = at - prefix_at(&fams, 0) - 1;
    let mut msg = b[1..=cut].to_vec();
    msg.extend_from_slice(&metric);
    b = vec![msg.len() as u8];
    b.extend_from_slice(&msg);
    rejected(
        &b,
        at,
        Some("t"),
        "metric 1: field 1: length past the end of the message",
    );
}

#[test]
fn invalid_utf8_in_a_label_value_is_refused_at_the_metric() {
    let fams = [fam(
        "u",
        MetricType::Gauge,
        vec![gauge(&[("a", "1")], 1.0), gauge(&[("a", "@@@@")], 2.0)],
    )];
    let mut b = body(&fams);
    patch(&mut b, b"@@@@", &[0xff, 0xfe, 0xc0, 0x80]);
    rejected(
        &b,
        metric_at(&fams, 0, 1),
        Some("u"),
        "metric 2: Metric.label: LabelPair.value: string not UTF-8",
    );
}

#[test]
fn a_family_that_does_not_decode_is_named_from_field_1() {
    // HELP (invalid UTF-8) before the name: HELP is refused, the name is read alone.
    let msg = [0x12, 0x01, 0xff, 0x0a, 0x02, b'h', b'n'];
    let mut b = vec![msg.len() as u8];
    b.extend_from_slice(&msg);
    rejected(&b, 1, Some("hn"), "not UTF-8");
    // An invalid name cannot be read: no family named.
    let fams = [fam("@@@@", MetricType::Gauge, vec![gauge(&[], 1.0)])];
    let mut b = body(&fams);
    patch(&mut b, b"@@@@", &[0xff, 0xfe, 0xc0, 0x80]);
    rejected(&b, family_at(&fams, 0), None, "not UTF-8");
}

#[test]
fn a_malformed_key_is_refused() {
    // name "k", then field 0.
    let msg = [0x0a, 0x01, b'k', 0x02, 0x00];
    let mut b = vec![msg.len() as u8];
    b.extend_from_slice(&msg);
    rejected(&b, 4, Some("k"), "field number 0");
    // An unmatched group end.
    let msg = [0x0a, 0x01, b'k', 0x7c];
    let mut b = vec![msg.len() as u8];
    b.extend_from_slice(&msg);
    rejected(&b, 4, Some("k"), "group end without its start");
}

// ---- Families ------------------------------------------------------------------------------

#[test]
fn a_family_without_name_is_refused() {
    let fams = [
        fam("a_total", MetricType::Counter, vec![counter(&[], 1.0)]),
        fam("", MetricType::Gauge, vec![gauge(&[], 1.0)]),
    ];
    rejected(
        &body(&fams),
        family_at(&fams, 1),
        None,
        "family without name",
    );
}

#[test]
fn a_repeated_family_name_is_refused() {
    let fams = [
        fam("r", MetricType::Gauge, vec![gauge(&[("a", "1")], 1.0)]),
        fam("other", MetricType::Gauge, vec![gauge(&[], 1.0)]),
        fam("r", MetricType::Gauge, vec![gauge(&[("a", "2")], 1.0)]),
    ];
    rejected(
        &body(&fams),
        family_at(&fams, 2),
        Some("r"),
        "second family with this name",
    );
}

#[test]
fn a_type_outside_the_enum_is_refused() {
    let mut f = fam("t", MetricType::Gauge, vec![gauge(&[], 1.0)]);
    f.r#type = 6;
    let fams = [f];
    rejected(
        &body(&fams),
        family_at(&fams, 0),
        Some("t"),
        "type 6 is not",
    );
    let mut f = fams[0].clone();
    f.r#type = -1;
    let fams = [f];
    rejected(
        &body(&fams),
        family_at(&fams, 0),
        Some("t"),
        "type -1 is not",
    );
}

// ---- Metrics -------------------------------------------------------------------------------

#[test]
fn a_metric_without_its_types_value_is_refused() {
    for (kind, field) in [
        (MetricType::Counter, "counter"),
        (MetricType::Gauge, "gauge"),
        (MetricType::Summary, "summary"),
        (MetricType::Untyped, "untyped"),
        (MetricType::Histogram, "histogram"),
        (MetricType::GaugeHistogram, "histogram"),
    ] {
        let ok = match kind {
            MetricType::Counter => counter(&[("a", "1")], 1.0),
            MetricType::Gauge => gauge(&[("a", "1")], 1.0),
            MetricType::Summary => summary(&[("a", "1")], &[0.5]),
            MetricType::Untyped => untyped(&[("a", "1")], 1.0),
            _ => hist(&[("a", "1")], classic(&[(1.0, 1)], 1)),
        };
        let bare = Metric {
            label: labels(&[("a", "2")]),
            ..Default::default()
        };
        rejected_metric(
            kind,
            vec![ok, bare],
            1,
            &format!("without the {field} field"),
        );
    }
}

#[test]
fn a_metric_with_another_types_value_is_refused() {
    let mut m = counter(&[], 1.0);
    m.gauge = Some(Gauge { value: 1.0 });
    rejected_metric(MetricType::Counter, vec![m], 0, "with the gauge field set");
    let mut m = hist(&[], classic(&[], 0));
    m.summary = Some(Summary::default());
    rejected_metric(
        MetricType::GaugeHistogram,
        vec![m],
        0,
        "with the summary field set",
    );
    let mut m = gauge(&[], 1.0);
    m.untyped = Some(Untyped { value: 1.0 });
    rejected_metric(MetricType::Gauge, vec![m], 0, "with the untyped field set");
    let mut m = untyped(&[], 1.0);
    m.histogram = Some(Histogram::default());
    rejected_metric(
        MetricType::Untyped,
        vec![m],
        0,
        "with the histogram field set",
    );
    let mut m = summary(&[], &[]);
    m.counter = Some(Counter::default());
    rejected_metric(
        MetricType::Summary,
        vec![m],
        0,
        "with the counter field set",
    );
}

#[test]
fn an_empty_label_name_is_refused() {
    let ms = vec![
        gauge(&[("a", "1")], 1.0),
        gauge(&[("a", "2"), ("", "x")], 1.0),
    ];
    rejected_metric(MetricType::Gauge, ms, 1, "empty label name");
}

#[test]
fn a_label_named_name_is_refused() {
    let ms = vec![gauge(&[("__name__", "m")], 1.0)];
    rejected_metric(MetricType::Gauge, ms, 0, "label named __name__");
}

#[test]
fn a_label_twice_in_a_metric_is_refused() {
    let ms = vec![gauge(&[("a", "1"), ("b", "2"), ("a", "3")], 1.0)];
    rejected_metric(MetricType::Gauge, ms, 0, "label \"a\" twice");
    // Past the pairwise bound too.
    let names: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
    let mut l: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    l.push(("l7", "w"));
    rejected_metric(
        MetricType::Gauge,
        vec![gauge(&l, 1.0)],
        0,
        "label \"l7\" twice",
    );
    l.pop();
    accepted(&[fam("many", MetricType::Gauge, vec![gauge(&l, 1.0)])]);
}

#[test]
fn a_duplicate_series_is_refused_label_order_and_empty_values_ignored() {
    let ms = vec![
        gauge(&[("a", "1"), ("b", "2")], 1.0),
        gauge(&[("a", "1")], 1.0),
        gauge(&[("b", "2"), ("c", ""), ("a", "1")], 2.0),
    ];
    let e = rejected_metric_err(MetricType::Gauge, ms, 2, "duplicate series");
    assert!(e.reason.contains("as metric 1"), "{e}");
    let ms = vec![gauge(&[], 1.0), gauge(&[("x", "")], 2.0)];
    rejected_metric(MetricType::Gauge, ms, 1, "duplicate series");
    // The same labels in two families are two series.
    accepted(&[
        fam("d1", MetricType::Gauge, vec![gauge(&[("a", "1")], 1.0)]),
        fam("d2", MetricType::Gauge, vec![gauge(&[("a", "1")], 1.0)]),
    ]);
}

fn rejected_metric_err(
    kind: MetricType,
    metrics: Vec<Metric>,
    j: usize,
    words: &str,
) -> ParseError {
    let fams = [fam("m", kind, metrics)];
    rejected(&body(&fams), metric_at(&fams, 0, j), Some("m"), words)
}

#[test]
fn a_negative_counter_is_refused_a_nan_one_accepted() {
    let ms = vec![counter(&[("a", "1")], 0.0), counter(&[("a", "2")], -0.5)];
    rejected_metric(MetricType::Counter, ms, 1, "negative counter value -0.5");
    let b = body(&[fam(
        "nan_total",
        MetricType::Counter,
        vec![counter(&[], f64::NAN)],
    )]);
    let got = decode(&b).unwrap();
    assert!(got[0].metric[0].counter.as_ref().unwrap().value.is_nan());
}

// ---- Classic histograms and summaries ------------------------------------------------------

#[test]
fn classic_bucket_bounds_must_increase() {
    let h = classic(&[(1.0, 1), (1.0, 2)], 2);
    rejected_metric(
        MetricType::Histogram,
        vec![hist(&[], h)],
        0,
        "bucket 2: upper bound 1 not above",
    );
    let h = classic(&[(f64::NAN, 1)], 2);
    rejected_metric(
        MetricType::Histogram,
        vec![hist(&[], h)],
        0,
        "bucket 1: upper bound NaN",
    );
}

#[test]
fn classic_cumulative_counts_must_not_decrease() {
    let h = classic(&[(1.0, 3), (2.0, 2)], 3);
    rejected_metric(
        MetricType::Histogram,
        vec![hist(&[], h)],
        0,
        "bucket 2: cumulative count 2 below",
    );
    // Float counts override integer ones when > 0.
    let mut h = classic(&[(1.0, 0), (2.0, 5)], 6);
    h.bucket[0].cumulative_count_float = 5.5;
    rejected_metric(
        MetricType::Histogram,
        vec![hist(&[], h)],
        0,
        "bucket 2: cumulative count 5 below the one before (5.5)",
    );
}

#[test]
fn classic_bucket_counts_must_not_pass_the_count() {
    let h = classic(&[(1.0, 1), (f64::INFINITY, 4)], 3);
    rejected_metric(
        MetricType::GaugeHistogram,
        vec![hist(&[], h)],
        0,
        "bucket 2: cumulative count 4 above the histogram's count 3",
    );
    let mut h = classic(&[(1.0, 1)], 0);
    h.sample_count_float = 0.5;
    rejected_metric(
        MetricType::Histogram,
        vec![hist(&[], h)],
        0,
        "above the histogram's count 0.5",
    );
}

#[test]
fn summary_quantiles_must_be_in_0_1_and_increase() {
    rejected_metric(
        MetricType::Summary,
        vec![summary(&[], &[0.5, 1.5])],
        0,
        "quantile 1.5 outside [0, 1]",
    );
    rejected_metric(
        MetricType::Summary,
        vec![summary(&[], &[-0.1])],
        0,
        "quantile -0.1 outside",
    );
    rejected_metric(
        MetricType::Summary,
        vec![summary(&[], &[f64::NAN])],
        0,
        "quantile NaN outside",
    );
    rejected_metric(
        MetricType::Summary,
        vec![summary(&[], &[0.5, 0.5])],
        0,
        "quantile 0.5 not above",
    );
    accepted(&[fam(
        "s",
        MetricType::Summary,
        vec![summary(&[], &[0.0, 0.5, 1.0])],
    )]);
}

// ---- Native histograms ---------------------------------------------------------------------

#[track_caller]
fn rejected_native(h: Histogram, words: &str) {
    let ok = hist(&[("a", "1")], native(1, &[2], &[3, 4]));
    rejected_metric(
        MetricType::Histogram,
        vec![ok, hist(&[("a", "2")], h)],
        1,
        words,
    );
}

#[test]
fn native_schema_must_be_in_minus_4_to_8() {
    for schema in [9, -5, i32::MIN] {
        let mut h = native(0, &[], &[1]);
        h.schema = schema;
        rejected_native(h, &format!("schema {schema} outside -4..=8"));
    }
    for schema in [-4, 8] {
        let mut h = native(0, &[], &[1]);
        h.schema = schema;
        accepted(&[fam("h", MetricType::Histogram, vec![hist(&[], h)])]);
    }
}

#[test]
fn native_zero_threshold_must_not_be_negative_or_nan() {
    let mut h = native(0, &[], &[1]);
    h.zero_threshold = -1.0;
    rejected_native(h, "zero threshold -1 negative or NaN");
    // NaN alone makes a histogram native.
    let mut h = classic(&[(1.0, 1)], 1);
    h.zero_threshold = f64::NAN;
    rejected_native(h, "zero threshold NaN");
}

#[test]
fn native_spans_after_the_first_must_not_go_back() {
    let mut h = native(0, &[], &[1, 2]);
    h.positive_span = vec![
        BucketSpan {
            offset: -3,
            length: 1,
        },
        BucketSpan {
            offset: -1,
            length: 1,
        },
    ];
    rejected_native(h.clone(), "positive span 2 with negative offset -1");
    h.positive_span[1].offset = 0;
    accepted(&[fam("h", MetricType::Histogram, vec![hist(&[], h)])]);
}

#[test]
fn native_spans_must_match_the_buckets() {
    let mut h = native(0, &[1, 2], &[1]);
    h.negative_span[0].length = 3;
    rejected_native(h, "negative spans need 3 buckets, have 2");
    let mut h = native_float(0.0, &[], &[1.0, 2.0]);
    h.positive_span.push(BucketSpan {
        offset: 2,
        length: 1,
    });
    rejected_native(h, "positive spans need 3 buckets, have 2");
    // Buckets without spans.
    let mut h = native(0, &[], &[1]);
    h.positive_span.clear();
    rejected_native(h, "positive spans need 0 buckets, have 1");
}

#[test]
fn native_deltas_and_counts_not_on_one_side() {
    let mut h = native(0, &[], &[1]);
    h.positive_count = vec![1.0];
    rejected_native(h, "positive buckets with both deltas and counts");
}

#[test]
fn native_integer_buckets_never_negative() {
    let mut h = native(0, &[], &[3, 1]);
    h.positive_delta = vec![3, -4];
    h.sample_count = 0;
    h.sample_sum = f64::NAN;
    rejected_native(h, "positive bucket 2 with count -1");
    let mut h = native(0, &[], &[3, 1]);
    h.positive_delta = vec![i64::MAX, i64::MAX];
    rejected_native(h, "observations in buckets");
}

#[test]
fn native_float_counts_never_negative_or_nan() {
    let mut h = native_float(0.0, &[1.0], &[2.0]);
    h.negative_count = vec![-1.0];
    rejected_native(h, "negative bucket 1 with count -1");
    let mut h = native_float(1.0, &[1.0], &[2.0]);
    h.positive_count = vec![f64::NAN];
    rejected_native(h, "positive bucket 1 with count NaN");
    let mut h = native_float(1.0, &[1.0], &[2.0]);
    h.zero_count_float = -2.0;
    rejected_native(h, "zero bucket with count -2");
}

#[test]
fn native_integer_count_must_match_the_buckets() {
    let mut h = native(2, &[3], &[4]);
    h.sample_count += 1;
    rejected_native(h, "9 observations in buckets, but the count is 10");
    let mut h = native(2, &[3], &[4]);
    h.sample_count -= 1;
    rejected_native(h.clone(), "but the count is 8");
    // With a NaN sum the count may be larger (Prometheus' rule), never smaller.
    h.sample_sum = f64::NAN;
    rejected_native(
        h.clone(),
        "9 observations in buckets, more than the count 8",
    );
    h.sample_count += 2;
    let got = decode(&body(&[fam(
        "h",
        MetricType::Histogram,
        vec![hist(&[], h)],
    )]))
    .unwrap();
    assert_eq!(
        got[0].metric[0].histogram.as_ref().unwrap().sample_count,
        10
    );
}

#[test]
fn native_float_count_must_match_the_buckets_up_to_rounding() {
    let mut h = native_float(0.5, &[1.25], &[2.0]);
    h.sample_count_float = 4.0;
    rejected_native(
        h.clone(),
        "3.75 observations in buckets, but the count is 4",
    );
    h.sample_sum = f64::NAN;
    accepted(&[fam("h", MetricType::Histogram, vec![hist(&[], h.clone())])]);
    h.sample_count_float = 3.5;
    rejected_native(h, "more than the count 3.5");
    // 0.1 + 0.2 is not 0.3 in floats.
    let mut h = native_float(0.0, &[0.1], &[0.2]);
    h.sample_count_float = 0.3;
    accepted(&[fam("h", MetricType::Histogram, vec![hist(&[], h)])]);
    // A NaN count (float for its counts) holds no buckets, whatever the sum.
    let mut h = native_float(0.5, &[1.0], &[2.0]);
    h.sample_count_float = f64::NAN;
    h.sample_sum = f64::NAN;
    rejected_native(h, "3.5 observations in buckets, more than the count NaN");
}

#[test]
fn native_histograms_do_not_mix_integer_and_float_buckets() {
    let mut h = native(0, &[1], &[]);
    h.positive_span = vec![BucketSpan {
        offset: 0,
        length: 1,
    }];
    h.positive_count = vec![1.0];
    rejected_native(h, "mixes integer and float buckets");
    let mut h = native(1, &[], &[1]);
    h.zero_count_float = 1.0;
    rejected_native(h, "mixes integer and float buckets");
}

// ---- Exemplars -----------------------------------------------------------------------------

#[test]
fn exemplars_have_at_most_128_characters_of_labels() {
    let long = "é".repeat(127);
    let mut m = counter(&[("a", "1")], 1.0);
    if let Some(c) = m.counter.as_mut() {
        c.exemplar = Some(exemplar(&[("t", &long)]));
    }
    accepted(&[fam("e_total", MetricType::Counter, vec![m.clone()])]);
    if let Some(c) = m.counter.as_mut() {
        c.exemplar = Some(exemplar(&[("tr", &long)]));
    }
    rejected_metric(
        MetricType::Counter,
        vec![m],
        0,
        "exemplar labels of 129 characters",
    );
    // On classic buckets and native histograms too.
    let mut h = classic(&[(1.0, 1)], 1);
    h.bucket[0].exemplar = Some(exemplar(&[("trace_id", &"x".repeat(121))]));
    rejected_metric(
        MetricType::Histogram,
        vec![hist(&[], h)],
        0,
        "exemplar labels of 129",
    );
    let mut h = native(0, &[], &[1]);
    h.exemplars = vec![
        exemplar(&[("a", "b")]),
        exemplar(&[("a", &"x".repeat(128))]),
    ];
    rejected_native(h, "exemplar labels of 129");
}

#[test]
fn exemplar_label_names_are_not_empty() {
    let mut m = counter(&[], 1.0);
    if let Some(c) = m.counter.as_mut() {
        c.exemplar = Some(exemplar(&[("", "1")]));
    }
    rejected_metric(
        MetricType::Counter,
        vec![m],
        0,
        "exemplar with an empty label name",
    );
}

// ---- Accepted ------------------------------------------------------------------------------

/// A body as client_golang writes it, with what Prometheus 3 allows on top (UTF-8 names, units,
/// timestamps, created timestamps, exemplars, native and float histograms, unknown types' data).
fn realistic() -> Vec<MetricFamily> {
    let mut requests = fam(
        "http_requests_total",
        MetricType::Counter,
        vec![
            counter(&[("code", "200"), ("method", "GET")], 1027.0),
            counter(&[("code", "500"), ("method", "GET")], 3.0),
            counter(&[("code", "200"), ("method", "POST"), ("path", "")], 12.0),
        ],
    );
    if let Some(c) = requests.metric[0].counter.as_mut() {
        c.exemplar = Some(exemplar(&[("trace_id", "4bf92f3577b34da6")]));
        c.start_timestamp = ts(1_699_999_000, 0);
    }
    let mut latency = fam(
        "http_request_duration_seconds",
        MetricType::Histogram,
        vec![
            hist(
                &[("handler", "/api")],
                classic(&[(0.1, 5), (0.5, 9), (1.0, 10), (f64::INFINITY, 11)], 11),
            ),
            hist(&[("handler", "/native")], native(3, &[1, 0, 2], &[4, 4, 1])),
            hist(&[("handler", "/empty")], empty_native()),
        ],
    );
    latency.unit = "seconds".into();
    if let Some(h) = latency.metric[0].histogram.as_mut() {
        h.start_timestamp = ts(1_699_999_000, 500);
        h.bucket[1].exemplar = Some(exemplar(&[("trace_id", "a")]));
    }
    if let Some(h) = latency.metric[1].histogram.as_mut() {
        h.exemplars = vec![exemplar(&[("trace_id", "b")])];
        // Classic buckets beside the native ones, as client_golang may write both.
        h.bucket = classic(&[(1.0, 4), (f64::INFINITY, 15)], 15).bucket;
    }
    let mut temperature = fam(
        "room.temperature °C",
        MetricType::Gauge,
        vec![gauge(&[("zone", "nord"), ("sensor.name 🌡", "t1")], -3.5)],
    );
    temperature.metric[0].timestamp_ms = 1_700_000_000_123;
    vec![
        fam("go_goroutines", MetricType::Gauge, vec![gauge(&[], 42.0)]),
        requests,
        latency,
        fam(
            "rpc_duration_seconds",
            MetricType::Summary,
            vec![summary(&[("service", "a")], &[0.5, 0.9, 0.99])],
        ),
        fam(
            "legacy",
            MetricType::Untyped,
            vec![untyped(&[("x", "y")], 7.0)],
        ),
        fam(
            "queue_fill",
            MetricType::GaugeHistogram,
            vec![hist(&[], native_float(0.5, &[0.25], &[1.5, 2.75]))],
        ),
        temperature,
        fam("no_metrics", MetricType::Gauge, vec![]),
    ]
}

#[test]
fn a_realistic_body_round_trips() {
    let fams = realistic();
    let b = body(&fams);
    assert_eq!(decode(&b).unwrap(), fams);
}

#[test]
fn unknown_fields_and_groups_are_skipped() {
    let fams = [fam("u", MetricType::Gauge, vec![gauge(&[("a", "1")], 1.0)])];
    let b = body(&fams);
    let mut msg = b[1..].to_vec();
    // Field 9 varint, field 10 fixed32, field 11 a group holding a field 1 and a nested group.
    msg.extend_from_slice(&[0x48, 0x96, 0x01, 0x55, 1, 2, 3, 4]);
    msg.extend_from_slice(&[0x5b, 0x08, 0x01, 0x13, 0x14, 0x5c]);
    // A metric with an unknown field 20 (length-delimited), after the unknown group.
    let mut metric = gauge(&[("a", "2")], 2.0).encode_to_vec();
    metric.extend_from_slice(&[0xa2, 0x01, 0x02, b'h', b'i']);
    msg.push(0x22);
    msg.push(metric.len() as u8);
    msg.extend_from_slice(&metric);
    let mut b = vec![msg.len() as u8];
    b.extend_from_slice(&msg);
    let got = decode(&b).unwrap();
    assert_eq!(got[0].metric.len(), 2);
    assert_eq!(got[0].metric[1].label, labels(&[("a", "2")]));
}

#[test]
fn name_and_type_after_the_metrics_still_apply() {
    // Metrics first, then type and name: the metrics are checked against the type.
    let m = gauge(&[("a", "1")], 1.0).encode_to_vec();
    let mut msg = vec![0x22, m.len() as u8];
    msg.extend_from_slice(&m);
    msg.extend_from_slice(&[0x18, 0x01, 0x0a, 0x01, b'g']);
    let mut b = vec![msg.len() as u8];
    b.extend_from_slice(&msg);
    assert_eq!(decode(&b).unwrap()[0].name, "g");
    // The same metric in a counter family: refused at the metric.
    let type_at = msg.len() - 4;
    msg[type_at] = 0x00;
    b = vec![msg.len() as u8];
    b.extend_from_slice(&msg);
    rejected(
        &b,
        1,
        Some("g"),
        "metric 1: counter metric without the counter field",
    );
}

// ---- prometheus-client's generated types ---------------------------------------------------

mod pc {
    pub use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::*;
}

/// Sets a `google.protobuf.Timestamp` of prometheus-client's types (prost-types', which this
/// crate does not name).
macro_rules! set_ts {
    ($field:expr, $s:expr, $n:expr) => {{
        $field = Some(Default::default());
        if let Some(t) = $field.as_mut() {
            t.seconds = $s;
            t.nanos = $n;
        }
    }};
}

fn pc_labels(l: &[(&str, &str)]) -> Vec<pc::LabelPair> {
    l.iter()
        .map(|(n, v)| pc::LabelPair {
            name: (*n).into(),
            value: (*v).into(),
        })
        .collect()
}

fn pc_exemplar(label: &str, value: f64, s: i64) -> pc::Exemplar {
    let mut e = pc::Exemplar {
        label: pc_labels(&[("trace_id", label), ("span", "s")]),
        value,
        timestamp: None,
    };
    set_ts!(e.timestamp, s, 77);
    e
}

/// A metric of prometheus-client's types with every field of every message set, each to a
/// value of its own (signs that tell zigzag from plain varints), so that a field read under
/// another number or type shows.
fn pc_full_metric() -> pc::Metric {
    let mut counter = pc::Counter {
        value: 1.5,
        exemplar: Some(pc_exemplar("c", 2.5, 101)),
        start_timestamp: None,
    };
    set_ts!(counter.start_timestamp, 102, 103);
    let mut summary = pc::Summary {
        sample_count: 104,
        sample_sum: 105.5,
        quantile: vec![
            pc::Quantile {
                quantile: 0.5,
                value: 106.5,
            },
            pc::Quantile {
                quantile: 0.9,
                value: 107.5,
            },
        ],
        start_timestamp: None,
    };
    set_ts!(summary.start_timestamp, 108, 109);
    let mut histogram = pc::Histogram {
        sample_count: 110,
        sample_count_float: 111.5,
        sample_sum: 112.5,
        bucket: vec![
            pc::Bucket {
                cumulative_count: 113,
                cumulative_count_float: 114.5,
                upper_bound: 115.5,
                exemplar: Some(pc_exemplar("b", 116.5, 117)),
            },
            pc::Bucket {
                cumulative_count: 118,
                cumulative_count_float: 119.5,
                upper_bound: f64::INFINITY,
                exemplar: None,
            },
        ],
        start_timestamp: None,
        schema: -3,
        zero_threshold: 120.5,
        zero_count: 121,
        zero_count_float: 122.5,
        negative_span: vec![
            pc::BucketSpan {
                offset: -123,
                length: 124,
            },
            pc::BucketSpan {
                offset: 125,
                length: 126,
            },
        ],
        negative_delta: vec![127, -128, 129],
        negative_count: vec![130.5, 131.5],
        positive_span: vec![pc::BucketSpan {
            offset: -132,
            length: 133,
        }],
        positive_delta: vec![-134, 135],
        positive_count: vec![136.5],
        exemplars: vec![pc_exemplar("n", 137.5, 138), pc_exemplar("m", 139.5, 140)],
    };
    set_ts!(histogram.start_timestamp, -141, 142);
    pc::Metric {
        label: pc_labels(&[("a", "1"), ("é", "ü")]),
        gauge: Some(pc::Gauge { value: -143.5 }),
        counter: Some(counter),
        summary: Some(summary),
        untyped: Some(pc::Untyped { value: 144.5 }),
        histogram: Some(histogram),
        timestamp_ms: -145,
    }
}

fn from_pc_labels(l: &[pc::LabelPair]) -> Vec<LabelPair> {
    l.iter()
        .map(|l| LabelPair {
            name: l.name.clone(),
            value: l.value.clone(),
        })
        .collect()
}

/// Copies one of prometheus-client's timestamps into ours, field by field.
macro_rules! from_pc_ts {
    ($t:expr) => {
        $t.as_ref().map(|t| Timestamp {
            seconds: t.seconds,
            nanos: t.nanos,
        })
    };
}

fn from_pc_exemplar(e: &pc::Exemplar) -> Exemplar {
    Exemplar {
        label: from_pc_labels(&e.label),
        value: e.value,
        timestamp: from_pc_ts!(e.timestamp),
    }
}

fn from_pc_spans(s: &[pc::BucketSpan]) -> Vec<BucketSpan> {
    s.iter()
        .map(|s| BucketSpan {
            offset: s.offset,
            length: s.length,
        })
        .collect()
}

/// prometheus-client's family as ours, every field copied by name: what our decoding of its
/// bytes must give.
fn from_pc(f: &pc::MetricFamily) -> MetricFamily {
    MetricFamily {
        name: f.name.clone(),
        help: f.help.clone(),
        r#type: f.r#type,
        unit: f.unit.clone(),
        metric: f
            .metric
            .iter()
            .map(|m| Metric {
                label: from_pc_labels(&m.label),
                gauge: m.gauge.as_ref().map(|g| Gauge { value: g.value }),
                counter: m.counter.as_ref().map(|c| Counter {
                    value: c.value,
                    exemplar: c.exemplar.as_ref().map(from_pc_exemplar),
                    start_timestamp: from_pc_ts!(c.start_timestamp),
                }),
                summary: m.summary.as_ref().map(|s| Summary {
                    sample_count: s.sample_count,
                    sample_sum: s.sample_sum,
                    quantile: s
                        .quantile
                        .iter()
                        .map(|q| Quantile {
                            quantile: q.quantile,
                            value: q.value,
                        })
                        .collect(),
                    start_timestamp: from_pc_ts!(s.start_timestamp),
                }),
                untyped: m.untyped.as_ref().map(|u| Untyped { value: u.value }),
                histogram: m.histogram.as_ref().map(|h| Histogram {
                    sample_count: h.sample_count,
                    sample_count_float: h.sample_count_float,
                    sample_sum: h.sample_sum,
                    bucket: h
                        .bucket
                        .iter()
                        .map(|b| Bucket {
                            cumulative_count: b.cumulative_count,
                            cumulative_count_float: b.cumulative_count_float,
                            upper_bound: b.upper_bound,
                            exemplar: b.exemplar.as_ref().map(from_pc_exemplar),
                        })
                        .collect(),
                    start_timestamp: from_pc_ts!(h.start_timestamp),
                    schema: h.schema,
                    zero_threshold: h.zero_threshold,
                    zero_count: h.zero_count,
                    zero_count_float: h.zero_count_float,
                    negative_span: from_pc_spans(&h.negative_span),
                    negative_delta: h.negative_delta.clone(),
                    negative_count: h.negative_count.clone(),
                    positive_span: from_pc_spans(&h.positive_span),
                    positive_delta: h.positive_delta.clone(),
                    positive_count: h.positive_count.clone(),
                    exemplars: h.exemplars.iter().map(from_pc_exemplar).collect(),
                }),
                timestamp_ms: m.timestamp_ms,
            })
            .collect(),
    }
}

fn pc_body(fams: &[pc::MetricFamily]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fams {
        f.encode_length_delimited(&mut out).unwrap();
    }
    out
}

#[test]
fn every_field_reads_as_prometheus_clients_generated_types_write_it() {
    let theirs = pc::MetricFamily {
        name: "every_field".into(),
        help: "All of them.".into(),
        r#type: pc::MetricType::GaugeHistogram as i32,
        metric: vec![pc_full_metric(), pc_full_metric()],
        unit: "bytes".into(),
    };
    let bytes = pc_body(std::slice::from_ref(&theirs));
    // Not a valid body (every value field at once): each metric read without the checks.
    let (_, start) = wire::varint(&bytes, 0).unwrap();
    let family = &bytes[start..];
    let mut m = super::super::view::Metric::default();
    let mut read = 0;
    for f in wire::fields(family) {
        let f = f.unwrap();
        if f.number == METRIC_FIELD {
            m.read(f.bytes().unwrap()).unwrap();
            assert_eq!(m.to_schema(), from_pc(&theirs).metric[read]);
            read += 1;
        }
    }
    assert_eq!(read, 2);
    // And with prost, the schema alone.
    let ours = MetricFamily::decode_length_delimited(&bytes[..]).unwrap();
    assert_eq!(ours, from_pc(&theirs));
    let mut again = Vec::new();
    ours.encode_length_delimited(&mut again).unwrap();
    assert_eq!(again, bytes);
    // The enum's values too.
    for (t, o) in [
        (pc::MetricType::Counter, MetricType::Counter),
        (pc::MetricType::Gauge, MetricType::Gauge),
        (pc::MetricType::Summary, MetricType::Summary),
        (pc::MetricType::Untyped, MetricType::Untyped),
        (pc::MetricType::Histogram, MetricType::Histogram),
        (pc::MetricType::GaugeHistogram, MetricType::GaugeHistogram),
    ] {
        assert_eq!(t as i32, o as i32);
    }
}

#[test]
fn a_prometheus_client_body_decodes_field_by_field_and_re_encodes_to_its_bytes() {
    let full = pc_full_metric();
    let with = |f: &dyn Fn(&mut pc::Metric)| {
        let mut m = pc::Metric {
            label: full.label.clone(),
            timestamp_ms: full.timestamp_ms,
            ..Default::default()
        };
        f(&mut m);
        m
    };
    let family = |name: &str, t: pc::MetricType, metric: Vec<pc::Metric>| pc::MetricFamily {
        name: name.into(),
        help: format!("{name} help"),
        r#type: t as i32,
        metric,
        unit: "seconds".into(),
    };
    // Each value field with all its fields, in a family of its type, with valid values.
    let counter = with(&|m| m.counter = full.counter.clone());
    let gauge = with(&|m| m.gauge = full.gauge);
    let summary = with(&|m| m.summary = full.summary.clone());
    let untyped = with(&|m| m.untyped = full.untyped);
    // An integer native histogram with classic buckets, exemplars and every integer field.
    let int_hist = with(&|m| {
        let mut h = full.histogram.clone().unwrap_or_default();
        h.sample_count_float = 0.0;
        h.zero_count_float = 0.0;
        h.negative_count.clear();
        h.positive_count.clear();
        h.zero_threshold = 0.001;
        h.negative_span = vec![
            pc::BucketSpan {
                offset: -5,
                length: 1,
            },
            pc::BucketSpan {
                offset: 2,
                length: 2,
            },
        ];
        h.negative_delta = vec![4, -2, 5];
        h.positive_span = vec![pc::BucketSpan {
            offset: 3,
            length: 2,
        }];
        h.positive_delta = vec![6, -1];
        // 121 + (4 + 2 + 7) + (6 + 5)
        h.sample_count = 145;
        h.bucket[0].cumulative_count = 100;
        h.bucket[0].cumulative_count_float = 0.0;
        h.bucket[1].cumulative_count = 145;
        h.bucket[1].cumulative_count_float = 0.0;
        m.histogram = Some(h);
    });
    // A float native histogram with every float field.
    let float_hist = with(&|m| {
        let mut h = full.histogram.clone().unwrap_or_default();
        h.sample_count = 0;
        h.zero_count = 0;
        h.negative_delta.clear();
        h.positive_delta.clear();
        h.schema = 8;
        h.negative_span = vec![pc::BucketSpan {
            offset: -1,
            length: 2,
        }];
        h.negative_count = vec![1.5, 2.5];
        h.positive_span = vec![
            pc::BucketSpan {
                offset: 0,
                length: 0,
            },
            pc::BucketSpan {
                offset: 4,
                length: 1,
            },
        ];
        h.positive_count = vec![3.25];
        h.sample_count_float = 122.5 + 4.0 + 3.25;
        h.bucket[0].cumulative_count_float = 50.5;
        h.bucket[1].cumulative_count_float = h.sample_count_float;
        m.histogram = Some(h);
    });
    let theirs = vec![
        family("c_total", pc::MetricType::Counter, vec![counter]),
        family("g", pc::MetricType::Gauge, vec![gauge]),
        family("s", pc::MetricType::Summary, vec![summary]),
        family("u", pc::MetricType::Untyped, vec![untyped]),
        family("h", pc::MetricType::Histogram, vec![int_hist]),
        family("gh", pc::MetricType::GaugeHistogram, vec![float_hist]),
    ];
    let bytes = pc_body(&theirs);
    let ours = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(*o, from_pc(t));
    }
    assert_eq!(body(&ours), bytes);
}

#[test]
fn a_body_of_prometheus_clients_registry_decodes() {
    use prometheus_client::encoding::prometheus_protobuf::encode_to_vec;
    use prometheus_client::metrics::counter::Counter as PcCounter;
    use prometheus_client::metrics::gauge::Gauge as PcGauge;
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram as PcHistogram};
    use prometheus_client::registry::Registry;

    let mut registry = Registry::default();
    let c: PcCounter = PcCounter::default();
    let g: PcGauge = PcGauge::default();
    let h = PcHistogram::new(exponential_buckets(0.01, 2.0, 8));
    registry.register("requests", "Requests.", c.clone());
    registry.register("inflight", "In flight.", g.clone());
    registry.register("latency", "Latency.", h.clone());
    c.inc_by(7);
    g.set(-3);
    for v in [0.005, 0.02, 0.3, 9.0] {
        h.observe(v);
    }
    let bytes = encode_to_vec(&registry).unwrap();
    let got = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.len(), 3);
    assert_eq!(body(&got), bytes);
}

// ---- Properties ----------------------------------------------------------------------------

/// Label names: Prometheus' charset or any UTF-8 (never empty, never `__name__`, never the
/// `series` label each metric gets to keep its set unique).
fn label_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
        1 => "[a-zé😀. -]{1,5}",
    ]
    .prop_filter("reserved", |n| n != "__name__" && n != "series")
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9/_]{1,10}", "\\PC{0,6}"]
}

fn arb_labels() -> impl Strategy<Value = Vec<LabelPair>> {
    btree_map(label_name(), label_value(), 0..5).prop_map(|m| {
        m.into_iter()
            .map(|(name, value)| LabelPair { name, value })
            .collect()
    })
}

fn arb_ts() -> impl Strategy<Value = Option<Timestamp>> {
    proptest::option::of(
        (any::<i64>(), 0i32..1_000_000_000).prop_map(|(s, n)| Timestamp {
            seconds: s,
            nanos: n,
        }),
    )
}

fn arb_exemplar() -> impl Strategy<Value = Exemplar> {
    (
        btree_map("[a-z_]{1,8}", "[a-z0-9]{0,20}", 0..4),
        any::<f64>(),
        arb_ts(),
    )
        .prop_map(|(l, value, timestamp)| Exemplar {
            label: l
                .into_iter()
                .map(|(name, value)| LabelPair { name, value })
                .collect(),
            value,
            timestamp,
        })
}

/// One side of a native histogram: spans and their buckets' counts.
fn arb_side() -> impl Strategy<Value = (Vec<BucketSpan>, Vec<u64>)> {
    vec((0i32..4, 0u32..4), 0..3).prop_flat_map(|shape| {
        let n: u32 = shape.iter().map(|s| s.1).sum();
        (Just(shape), -6i32..6, vec(0u64..1000, n as usize)).prop_map(|(shape, first, counts)| {
            let spans = shape
                .iter()
                .enumerate()
                .map(|(i, &(offset, length))| BucketSpan {
                    offset: if i == 0 { first } else { offset },
                    length,
                })
                .collect();
            (spans, counts)
        })
    })
}

/// A valid histogram: classic buckets or not, a native part (integer or float) or not.
fn arb_histogram() -> impl Strategy<Value = Histogram> {
    (
        proptest::option::of((btree_set(-50i32..50, 0..6), any::<bool>(), vec(0u64..50, 7))),
        0u8..4,
        (
            -4i32..=8,
            prop_oneof![Just(0.0), Just(1e-128), Just(0.25)],
            0u64..100,
        ),
        (arb_side(), arb_side()),
        (any::<bool>(), 0u64..5, vec(arb_exemplar(), 0..2), arb_ts()),
    )
        .prop_map(
            |(classic, native_kind, zero, (neg, pos), (nan_sum, extra, exemplars, created))| {
                let (schema, zero_threshold, zero_count) = zero;
                let mut h = Histogram {
                    sample_sum: if nan_sum { f64::NAN } else { 3.5 },
                    start_timestamp: created,
                    ..Default::default()
                };
                let mut total: u64 = 0;
                match native_kind {
                    // Integer native.
                    1 => {
                        total = zero_count + neg.1.iter().sum::<u64>() + pos.1.iter().sum::<u64>();
                        h.schema = schema;
                        h.zero_threshold = zero_threshold;
                        h.zero_count = zero_count;
                        h.negative_span = neg.0;
                        h.negative_delta = deltas(&neg.1);
                        h.positive_span = pos.0;
                        h.positive_delta = deltas(&pos.1);
                        if h.negative_span.is_empty() && h.positive_span.is_empty() {
                            h.positive_span.push(BucketSpan {
                                offset: 0,
                                length: 0,
                            });
                        }
                        h.exemplars = exemplars;
                    }
                    // Float native (quarters: sums are exact).
                    2 => {
                        let q = |c: &u64| *c as f64 / 4.0;
                        let zero = zero_count as f64 / 4.0;
                        h.schema = schema;
                        h.zero_threshold = zero_threshold;
                        h.zero_count_float = zero;
                        h.negative_span = neg.0;
                        h.negative_count = neg.1.iter().map(q).collect();
                        h.positive_span = pos.0;
                        h.positive_count = pos.1.iter().map(q).collect();
                        h.sample_count_float = zero
                            + h.negative_count.iter().sum::<f64>()
                            + h.positive_count.iter().sum::<f64>();
                        if h.sample_count_float == 0.0
                            && h.negative_count.is_empty()
                            && h.positive_count.is_empty()
                        {
                            // Nothing makes it float: an empty integer one.
                            h.positive_span = vec![BucketSpan {
                                offset: 0,
                                length: 0,
                            }];
                            h.negative_span.clear();
                        }
                        h.exemplars = exemplars;
                    }
                    // Empty native.
                    3 => h.positive_span.push(BucketSpan {
                        offset: 0,
                        length: 0,
                    }),
                    _ => {}
                }
                if nan_sum {
                    total += extra;
                }
                if h.sample_count_float > 0.0 && nan_sum {
                    h.sample_count_float += extra as f64;
                }
                h.sample_count = if h.sample_count_float > 0.0 { 0 } else { total };
                if let Some((bounds, inf, increments)) = classic {
                    let count = if h.sample_count_float > 0.0 {
                        h.sample_count_float as u64
                    } else if native_kind == 0 {
                        let c: u64 = increments.iter().sum();
                        h.sample_count = c;
                        c
                    } else {
                        total
                    };
                    let mut cumulative = 0;
                    let mut bounds: Vec<f64> =
                        bounds.into_iter().map(|b| f64::from(b) / 4.0).collect();
                    if inf {
                        bounds.push(f64::INFINITY);
                    }
                    for (b, inc) in bounds.iter().zip(&increments) {
                        cumulative = (cumulative + inc).min(count);
                        h.bucket.push(Bucket {
                            cumulative_count: cumulative,
                            upper_bound: *b,
                            ..Default::default()
                        });
                    }
                }
                h
            },
        )
}

fn arb_value(kind: MetricType) -> BoxedStrategy<Metric> {
    let finite = -1e12f64..1e12;
    match kind {
        MetricType::Counter => (0f64..1e15, proptest::option::of(arb_exemplar()), arb_ts())
            .prop_map(|(value, exemplar, start_timestamp)| Metric {
                counter: Some(Counter {
                    value,
                    exemplar,
                    start_timestamp,
                }),
                ..Default::default()
            })
            .boxed(),
        MetricType::Gauge => prop_oneof![finite.clone(), Just(f64::NAN), Just(f64::NEG_INFINITY)]
            .prop_map(|value| Metric {
                gauge: Some(Gauge { value }),
                ..Default::default()
            })
            .boxed(),
        MetricType::Untyped => finite
            .prop_map(|value| Metric {
                untyped: Some(Untyped { value }),
                ..Default::default()
            })
            .boxed(),
        MetricType::Summary => (
            btree_set(0u32..=1000, 0..5),
            any::<u64>(),
            any::<f64>(),
            arb_ts(),
        )
            .prop_map(|(qs, sample_count, sample_sum, start_timestamp)| Metric {
                summary: Some(Summary {
                    sample_count,
                    sample_sum,
                    quantile: qs
                        .into_iter()
                        .map(|q| Quantile {
                            quantile: f64::from(q) / 1000.0,
                            value: f64::from(q),
                        })
                        .collect(),
                    start_timestamp,
                }),
                ..Default::default()
            })
            .boxed(),
        MetricType::Histogram | MetricType::GaugeHistogram => arb_histogram()
            .prop_map(|h| Metric {
                histogram: Some(h),
                ..Default::default()
            })
            .boxed(),
    }
}

const KINDS: [MetricType; 6] = [
    MetricType::Counter,
    MetricType::Gauge,
    MetricType::Summary,
    MetricType::Untyped,
    MetricType::Histogram,
    MetricType::GaugeHistogram,
];

/// A valid family named `<name>_<index>` (unique in its body).
fn arb_family(index: usize) -> impl Strategy<Value = MetricFamily> {
    (
        0..KINDS.len(),
        prop_oneof!["[a-z_:][a-z0-9_:]{0,10}", "[a-zé😀. ]{1,5}"],
        "\\PC{0,12}",
        prop_oneof![Just(String::new()), "[a-z]{1,6}"],
    )
        .prop_flat_map(move |(k, name, help, unit)| {
            let kind = KINDS[k];
            (
                Just(kind),
                Just(format!("{name}_{index}")),
                Just(help),
                Just(unit),
                vec((arb_labels(), arb_value(kind), any::<i64>()), 0..5),
            )
        })
        .prop_map(|(kind, name, help, unit, metrics)| MetricFamily {
            name,
            help,
            r#type: kind as i32,
            unit,
            metric: metrics
                .into_iter()
                .enumerate()
                .map(|(i, (mut label, mut m, timestamp_ms))| {
                    // A unique label keeps the sets apart; order is free.
                    label.insert(i % (label.len() + 1), lp("series", &i.to_string()));
                    m.label = label;
                    m.timestamp_ms = if i % 2 == 0 { 0 } else { timestamp_ms };
                    m
                })
                .collect(),
        })
}

fn arb_families() -> impl Strategy<Value = Vec<MetricFamily>> {
    (0usize..6).prop_flat_map(|n| (0..n).map(arb_family).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any body of valid families decodes to exactly those families (compared as bytes, which
    /// keeps NaNs equal).
    #[test]
    fn valid_families_decode_to_themselves(fams in arb_families()) {
        let b = body(&fams);
        let got = decode(&b).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(got.len(), fams.len());
        prop_assert_eq!(body(&got), b);
    }

    /// A valid body cut anywhere is its first families when cut between messages, and an error
    /// otherwise; never a panic.
    #[test]
    fn a_truncated_body_is_a_shorter_body_or_an_error(fams in arb_families()) {
        let b = body(&fams);
        let mut boundaries = vec![0];
        for i in 0..fams.len() {
            boundaries.push(prefix_at(&fams, i + 1));
        }
        for cut in 0..b.len() {
            match (decode(&b[..cut]), boundaries.iter().position(|&x| x == cut)) {
                (Ok(got), Some(n)) => prop_assert_eq!(body(&got), body(&fams[..n])),
                (Err(e), None) => prop_assert!(e.byte.is_some_and(|at| at < cut), "{}", e),
                (got, n) => prop_assert!(false, "cut at {}: {:?} at boundary {:?}", cut, got, n),
            }
        }
    }

    /// A valid body with bytes changed, cut or inserted: whatever the reader accepts, prost
    /// decodes to the same families (the reader is prost's decoding, held to more rules).
    #[test]
    fn a_damaged_body_reads_as_prost_decodes_it_or_is_refused(
        fams in arb_families(),
        edits in vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..6),
    ) {
        let mut b = body(&fams);
        for (at, kind, byte) in edits {
            if b.is_empty() {
                break;
            }
            let at = at.index(b.len());
            match kind {
                0 => b[at] = byte,
                1 => b.truncate(at),
                _ => b.insert(at, byte),
            }
        }
        if let Ok(got) = decode(&b) {
            prop_assert_eq!(body(&got), body(&prost_decode(&b)));
        }
    }
}

/// The body as prost decodes it, framing aside; panics where prost refuses it.
fn prost_decode(mut b: &[u8]) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    while !b.is_empty() {
        out.push(
            MetricFamily::decode_length_delimited(&mut b)
                .expect("prost decodes what the reader accepts"),
        );
    }
    out
}

//! A parsed text body as protobuf families: how a text or OpenMetrics body reaches protobuf
//! scrapers. Each family becomes the family Prometheus would store its series under when it
//! reads them from a protobuf body (client_golang's own mapping):
//! - an OpenMetrics counter `a` becomes counter `a_total`, its `_created` the created timestamp
//!   and its exemplar the counter's; a text counter keeps its name;
//! - a histogram's `_bucket`, `_sum`, `_count` (and `_created`) become one histogram per label
//!   set (without `le`), with its exemplars on the buckets; a gauge histogram's `_gsum` and
//!   `_gcount` its sum and count; a summary's quantiles, sum and count one summary;
//! - info `i` becomes gauge `i_info`, stateset a gauge, unknown (text: untyped) untyped;
//! - timestamps become milliseconds; HELP and label values are unescaped;
//! - a text family that breaks OpenMetrics' rules (buckets out of order or not cumulative, a
//!   negative counter, ...) becomes untyped families, one per sample name, its samples as they
//!   are (`le` and `quantile` plain labels): the series Prometheus stores from the text body,
//!   in families a protobuf reader accepts (the text-to-OpenMetrics conversion does the same).
//!
//! Samples the parser marked as repeats of a series are left out (the first is kept).

use std::collections::HashMap;

use super::super::lex::{self, lex_labels, to_f64, BlockInfo, Label};
use super::super::parse::{Family, MType, Parsed, SampleRef, Suffix, DUP, HAS_LABELS};
use super::super::Format;
use super::schema::{
    Bucket, Counter, Exemplar, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
    Quantile, Summary, Timestamp, Untyped,
};

/// The families of a parsed body, in body order.
pub fn from_text(parsed: &Parsed<'_>) -> Vec<MetricFamily> {
    let mut labels = Vec::new();
    let mut out = Vec::new();
    for f in parsed.families.iter().filter(|f| f.samples.1 > f.samples.0) {
        if f.om_ok {
            out.push(family(parsed, f, &mut labels));
        } else {
            untyped(parsed, f, &mut labels, &mut out);
        }
    }
    out
}

/// A family whose samples cannot make its type: one untyped family per sample name.
fn untyped(
    parsed: &Parsed<'_>,
    f: &Family<'_>,
    labels: &mut Vec<Label>,
    out: &mut Vec<MetricFamily>,
) {
    let first = out.len();
    let (lo, hi) = f.samples;
    for sm in &parsed.samples[lo as usize..hi as usize] {
        if sm.flags & DUP != 0 {
            continue;
        }
        let name = &parsed.body[sm.start as usize..sm.name_end as usize];
        let at = match out[first..].iter().position(|m| m.name.as_bytes() == name) {
            Some(i) => first + i,
            None => {
                out.push(MetricFamily {
                    name: String::from_utf8_lossy(name).into_owned(),
                    r#type: MetricType::Untyped as i32,
                    ..MetricFamily::default()
                });
                out.len() - 1
            }
        };
        let s = sample_with(parsed, sm, labels, None, false);
        out[at].metric.push(Metric {
            label: s.labels,
            untyped: Some(Untyped { value: s.value }),
            timestamp_ms: s.timestamp_ms,
            ..Metric::default()
        });
    }
}

/// One sample line read: its labels (unescaped, `le` and `quantile` apart), value, timestamp
/// (ms) and exemplar.
struct Sample {
    labels: Vec<LabelPair>,
    /// Every label as written (empty values too, bound apart), sorted: which metric of its
    /// family the sample belongs to. Two metrics that differ only in empty labels stay two
    /// here; the rendering keeps the first of such a series.
    key: Vec<(String, String)>,
    bound: Option<f64>,
    value: f64,
    timestamp_ms: i64,
    exemplar: Option<Exemplar>,
}

fn family(parsed: &Parsed<'_>, f: &Family<'_>, labels: &mut Vec<Label>) -> MetricFamily {
    let om = parsed.format == Format::OpenMetrics;
    let name = String::from_utf8_lossy(f.name).into_owned();
    let (name, mtype) = match f.mtype {
        MType::Counter if om => (format!("{name}_total"), MetricType::Counter),
        MType::Counter => (name, MetricType::Counter),
        MType::Gauge | MType::StateSet => (name, MetricType::Gauge),
        MType::Info => (format!("{name}_info"), MetricType::Gauge),
        MType::Histogram => (name, MetricType::Histogram),
        MType::GaugeHistogram => (name, MetricType::GaugeHistogram),
        MType::Summary => (name, MetricType::Summary),
        MType::Unknown => (name, MetricType::Untyped),
    };
    let help = f.help.map_or(String::new(), |h| {
        let mut raw = Vec::new();
        lex::unescape(h, &mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    });
    let unit = f
        .unit
        .map_or(String::new(), |u| String::from_utf8_lossy(u).into_owned());
    let mut metrics: Vec<Metric> = Vec::new();
    // Label set (sorted, without `le`/`quantile`) -> index in `metrics`.
    let mut by_labels: HashMap<Vec<(String, String)>, usize> = HashMap::new();
    // Only these types make one metric of several samples; the others' samples are metrics
    // each (repeats of a series were marked by the parser).
    let grouped = matches!(
        mtype,
        MetricType::Histogram | MetricType::GaugeHistogram | MetricType::Summary
    ) || (om && mtype == MetricType::Counter);
    let (lo, hi) = f.samples;
    for sm in &parsed.samples[lo as usize..hi as usize] {
        if sm.flags & DUP != 0 {
            continue;
        }
        let mut s = sample(parsed, sm, labels, grouped);
        if !grouped {
            metrics.push(Metric {
                label: std::mem::take(&mut s.labels),
                timestamp_ms: s.timestamp_ms,
                ..Metric::default()
            });
            let last = metrics.len() - 1;
            add(&mut metrics[last], mtype, sm.suffix, s);
            continue;
        }
        let key = std::mem::take(&mut s.key);
        let i = *by_labels.entry(key).or_insert_with(|| {
            metrics.push(Metric {
                label: s.labels.clone(),
                timestamp_ms: s.timestamp_ms,
                ..Metric::default()
            });
            metrics.len() - 1
        });
        add(&mut metrics[i], mtype, sm.suffix, s);
    }
    MetricFamily {
        name,
        help,
        r#type: mtype as i32,
        metric: metrics,
        unit,
    }
}

/// Puts one sample into its metric.
fn add(m: &mut Metric, mtype: MetricType, suffix: Suffix, s: Sample) {
    let created = || Some(seconds_to_timestamp(s.value));
    match mtype {
        MetricType::Counter => {
            let c = m.counter.get_or_insert_with(Counter::default);
            match suffix {
                Suffix::Created => c.start_timestamp = created(),
                _ => {
                    c.value = s.value;
                    c.exemplar = s.exemplar;
                }
            }
        }
        MetricType::Gauge => m.gauge = Some(Gauge { value: s.value }),
        MetricType::Untyped => m.untyped = Some(Untyped { value: s.value }),
        MetricType::Summary => {
            let q = m.summary.get_or_insert_with(Summary::default);
            match suffix {
                Suffix::Sum => q.sample_sum = s.value,
                Suffix::Count => q.sample_count = s.value as u64,
                Suffix::Created => q.start_timestamp = created(),
                _ => q.quantile.push(Quantile {
                    quantile: s.bound.unwrap_or(f64::NAN),
                    value: s.value,
                }),
            }
        }
        MetricType::Histogram | MetricType::GaugeHistogram => {
            let h = m.histogram.get_or_insert_with(Histogram::default);
            let int = s.value >= 0.0 && s.value.fract() == 0.0 && s.value < u64::MAX as f64;
            match suffix {
                Suffix::Sum | Suffix::GSum => h.sample_sum = s.value,
                Suffix::Count | Suffix::GCount if int => h.sample_count = s.value as u64,
                Suffix::Count | Suffix::GCount => h.sample_count_float = s.value,
                Suffix::Created => h.start_timestamp = created(),
                _ => h.bucket.push(Bucket {
                    cumulative_count: if int { s.value as u64 } else { 0 },
                    cumulative_count_float: if int { 0.0 } else { s.value },
                    upper_bound: s.bound.unwrap_or(f64::INFINITY),
                    exemplar: s.exemplar,
                }),
            }
        }
    }
}

/// A sample line read; `keyed`: with the key of its metric.
fn sample(parsed: &Parsed<'_>, sm: &SampleRef, labels: &mut Vec<Label>, keyed: bool) -> Sample {
    let bound_label = match sm.suffix {
        Suffix::Bucket => Some(&b"le"[..]),
        Suffix::Bare if parsed.families[sm.family as usize].mtype == MType::Summary => {
            Some(&b"quantile"[..])
        }
        _ => None,
    };
    sample_with(parsed, sm, labels, bound_label, keyed)
}

/// A sample line read, the label named `bound_label` taken apart as its bound.
fn sample_with(
    parsed: &Parsed<'_>,
    sm: &SampleRef,
    labels: &mut Vec<Label>,
    bound_label: Option<&[u8]>,
    keyed: bool,
) -> Sample {
    let b = parsed.body;
    let om = parsed.format == Format::OpenMetrics;
    let end = sm.end as usize;
    labels.clear();
    if sm.flags & HAS_LABELS != 0 {
        let mut i = sm.name_end as usize;
        while i < end && lex::is_blank(b[i]) {
            i += 1;
        }
        // The parser accepted this block, so lexing it again cannot fail.
        let _ = lex_labels(&b[..end], i, om, labels, &mut BlockInfo::default());
    }
    let mut out = Sample {
        labels: Vec::with_capacity(labels.len()),
        key: Vec::with_capacity(if keyed { labels.len() } else { 0 }),
        bound: None,
        value: 0.0,
        timestamp_ms: 0,
        exemplar: None,
    };
    for l in labels.iter() {
        let value = unescaped(l.value(b));
        if Some(l.name(b)) == bound_label {
            out.bound = Some(to_f64(value.as_bytes()));
            continue;
        }
        let name = String::from_utf8_lossy(l.name(b)).into_owned();
        if keyed {
            out.key.push((name.clone(), value.clone()));
        }
        if !value.is_empty() {
            out.labels.push(LabelPair { name, value });
        }
    }
    out.key.sort_unstable();
    let mut tokens = b[sm.labels_end as usize..end]
        .split(|&c| lex::is_blank(c))
        .filter(|t| !t.is_empty());
    out.value = tokens.next().map_or(0.0, to_f64);
    match tokens.next() {
        Some(b"#") => out.exemplar = exemplar(b, sm, om),
        Some(ts) if om => {
            out.timestamp_ms = (to_f64(ts) * 1000.0).round() as i64;
            if tokens.next() == Some(b"#") {
                out.exemplar = exemplar(b, sm, om);
            }
        }
        Some(ts) => {
            out.timestamp_ms = std::str::from_utf8(ts)
                .ok()
                .and_then(|t| t.trim_start_matches('+').parse().ok())
                .unwrap_or(0)
        }
        None => {}
    }
    out
}

/// The exemplar of an OpenMetrics line: `# {labels} value [timestamp]` after the value.
fn exemplar(b: &[u8], sm: &SampleRef, om: bool) -> Option<Exemplar> {
    let end = sm.end as usize;
    let hash = sm.labels_end as usize + memchr::memchr(b'#', &b[sm.labels_end as usize..end])?;
    let open = hash + memchr::memchr(b'{', &b[hash..end])?;
    let mut labels = Vec::new();
    let after = lex_labels(&b[..end], open, om, &mut labels, &mut BlockInfo::default()).ok()?;
    let mut tokens = b[after..end]
        .split(|&c| lex::is_blank(c))
        .filter(|t| !t.is_empty());
    let value = tokens.next().map_or(0.0, to_f64);
    let timestamp = tokens.next().map(|t| seconds_to_timestamp(to_f64(t)));
    Some(Exemplar {
        label: labels
            .iter()
            .map(|l| LabelPair {
                name: String::from_utf8_lossy(l.name(b)).into_owned(),
                value: unescaped(l.value(b)),
            })
            .collect(),
        value,
        timestamp,
    })
}

fn unescaped(raw: &[u8]) -> String {
    if !raw.contains(&b'\\') {
        return String::from_utf8_lossy(raw).into_owned();
    }
    let mut v = Vec::with_capacity(raw.len());
    lex::unescape(raw, &mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// Seconds (OpenMetrics' timestamps) as a protobuf timestamp, to the nanosecond a float holds.
fn seconds_to_timestamp(s: f64) -> Timestamp {
    let whole = s.floor();
    Timestamp {
        seconds: whole as i64,
        nanos: ((s - whole) * 1e9).round().min(999_999_999.0) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::parse::parse;

    #[test]
    fn openmetrics_families_keep_exemplars_and_created() {
        let body = b"# TYPE a counter\n# HELP a Say \\\"hi\\\"\na_total{x=\"1\"} 3 # {t=\"q\"} 1 5.5\na_created{x=\"1\"} 10.25\n\
                     # TYPE h histogram\nh_bucket{le=\"0.5\"} 1 # {t=\"b\"} 0.25\nh_bucket{le=\"+Inf\"} 2\nh_count 2\nh_sum 1\n\
                     # TYPE i info\ni_info{v=\"1\"} 1\n# TYPE g gauge\ng 1 100.5\n# EOF\n";
        let parsed = parse(body, Format::OpenMetrics).unwrap();
        let f = from_text(&parsed);
        let names: Vec<&str> = f.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a_total", "h", "i_info", "g"]);
        assert_eq!(f[0].help, "Say \"hi\"");
        let c = f[0].metric[0].counter.as_ref().unwrap();
        assert_eq!(c.value, 3.0);
        assert_eq!(
            c.start_timestamp,
            Some(Timestamp {
                seconds: 10,
                nanos: 250_000_000
            })
        );
        let e = c.exemplar.as_ref().unwrap();
        assert_eq!((e.label[0].value.as_str(), e.value), ("q", 1.0));
        assert_eq!(e.timestamp.unwrap().seconds, 5);
        let h = f[1].metric[0].histogram.as_ref().unwrap();
        assert_eq!(h.bucket.len(), 2);
        assert_eq!(h.bucket[0].upper_bound, 0.5);
        assert!(h.bucket[0].exemplar.is_some());
        assert_eq!((h.sample_count, h.sample_sum), (2, 1.0));
        assert!(f[1].metric[0].label.is_empty());
        assert_eq!(f[2].r#type, MetricType::Gauge as i32);
        assert_eq!(f[3].metric[0].timestamp_ms, 100_500);
    }

    #[test]
    fn text_summaries_group_by_labels_without_quantile() {
        let body = b"# TYPE s summary\ns{m=\"a\",quantile=\"0.5\"} 1\ns_sum{m=\"a\"} 3\ns_count{m=\"a\"} 4\ns{m=\"b\",quantile=\"0.5\"} 2\ns_sum{m=\"b\"} 2\ns_count{m=\"b\"} 1\nu{l=\"x\\\\y\"} 7 -5\n";
        let parsed = parse(body, Format::Text).unwrap();
        let f = from_text(&parsed);
        assert_eq!(f[0].metric.len(), 2);
        let a = f[0].metric[0].summary.as_ref().unwrap();
        assert_eq!(
            (a.quantile[0].quantile, a.sample_sum, a.sample_count),
            (0.5, 3.0, 4)
        );
        assert_eq!(f[1].metric[0].label[0].value, "x\\y");
        assert_eq!(f[1].metric[0].timestamp_ms, -5);
        assert_eq!(f[1].r#type, MetricType::Untyped as i32);
    }

    #[test]
    fn text_families_openmetrics_rejects_become_untyped_per_sample_name() {
        let body = b"# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_bucket{le=\"0.5\"} 1\nh_count 2\nh_sum 1\n";
        let parsed = parse(body, Format::Text).unwrap();
        let f = from_text(&parsed);
        let names: Vec<(&str, usize)> = f
            .iter()
            .map(|f| (f.name.as_str(), f.metric.len()))
            .collect();
        assert_eq!(names, [("h_bucket", 2), ("h_count", 1), ("h_sum", 1)]);
        assert_eq!(
            f[0].metric[0].label[0],
            LabelPair {
                name: "le".into(),
                value: "+Inf".into()
            }
        );
        assert!(crate::decode::proto::decode(&{
            use prost::Message;
            let mut b = Vec::new();
            for x in &f {
                x.encode_length_delimited(&mut b).unwrap();
            }
            b
        })
        .is_ok());
    }
}

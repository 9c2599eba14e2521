//! Families as an OpenMetrics body: how a protobuf body reaches text and OpenMetrics scrapers.
//! The body is then parsed, checked and rendered by the text engine like any other, so every
//! merging rule holds for it unchanged.
//!
//! What OpenMetrics cannot carry is left out or renamed, and said here once:
//! - a native histogram without classic buckets cannot be written in a text format: it is left
//!   out and counted ([`OpenMetricsBody::native_only`]); a histogram with both keeps its classic
//!   buckets (what Prometheus stores from it when it does not ask for protobuf);
//! - a classic histogram's missing `+Inf` bucket is added from its count, as Prometheus does;
//! - created timestamps become `_created` samples, exemplars stay on counters and buckets;
//! - a family OpenMetrics would reject (a counter not named `*_total`, a negative or NaN sum,
//!   ...) is written as `unknown` families, one per sample name, so the series keep their names
//!   and values (the text engine does the same with such text families);
//! - a metric or label name outside `[a-zA-Z_:][a-zA-Z0-9_:]*` is written in the scheme the
//!   body is made for (`super::super::Escaping`; `underscores` for a scraper that named none);
//!   of two labels of a metric that become one name, the first is kept.

use std::fmt::Write as _;

use super::super::escaping::{Marker, Names};
use super::super::lex::{write_escaped, Escaped};
use super::super::{is_legacy, is_legacy_label, Escaping};
use super::read::is_native;
use super::schema::{MetricType, Timestamp};
use super::view::{Exemplar, Family, Histogram, Metric};

/// An OpenMetrics body made from protobuf families.
#[derive(Debug, Default)]
pub struct OpenMetricsBody {
    pub body: Vec<u8>,
    /// Native histograms (metrics) without classic buckets, left out.
    pub native_only: usize,
    /// Some name is outside the legacy set: the body differs with the escaping scheme.
    pub utf8_names: bool,
    /// The marker of its names outside the legacy set (`allow-utf-8`).
    pub(crate) marker: Option<Marker>,
}

/// Every name of `families`: metric, label and exemplar label names.
fn names_of<'a>(families: &[Family<'a>]) -> Vec<&'a [u8]> {
    let mut names = Vec::new();
    let mut m = Metric::default();
    for f in families {
        names.push(f.name.as_bytes());
        f.each_metric(&mut m, |m| {
            names.extend(m.label.iter().map(|l| l.name.as_bytes()));
            for e in exemplars(m) {
                names.extend(e.label.iter().map(|l| l.name.as_bytes()));
            }
        });
    }
    names
}

/// Writes `families` (as [`super::read`] checked them) as one OpenMetrics body, names in
/// `escaping` (for `allow-utf-8` marked, [`OpenMetricsBody::marker`]).
pub fn to_openmetrics(families: &[Family<'_>], escaping: Escaping) -> OpenMetricsBody {
    let utf8_names = families.iter().any(has_utf8_names);
    let names = match (escaping, utf8_names) {
        (Escaping::AllowUtf8, true) => Names::new(escaping, names_of(families)),
        // Legacy names only: every scheme writes them as they are.
        (Escaping::AllowUtf8, false) => Names::Escaped(Escaping::Underscores),
        (e, _) => Names::Escaped(e),
    };
    let mut w = Writer {
        names,
        out: OpenMetricsBody {
            utf8_names,
            marker: names.marker(),
            ..OpenMetricsBody::default()
        },
        lines: String::new(),
    };
    for f in families {
        w.family(f);
    }
    w.out.body.extend_from_slice(b"# EOF\n");
    w.out
}

/// Whether a family has a metric or label name outside the legacy set.
pub(crate) fn has_utf8_names(f: &Family<'_>) -> bool {
    if !is_legacy(f.name) {
        return true;
    }
    let mut any = false;
    f.each_metric(&mut Metric::default(), |m| {
        any = any
            || m.label.iter().any(|l| !is_legacy_label(l.name))
            || exemplars(m).any(|e| e.label.iter().any(|l| !is_legacy_label(l.name)));
    });
    any
}

/// A metric's exemplars: its counter's and its histogram's.
fn exemplars<'m, 'a>(m: &'m Metric<'a>) -> impl Iterator<Item = &'m Exemplar<'a>> {
    let counter = m.counter.as_ref().and_then(|c| c.exemplar.as_ref());
    let histogram = m.histogram.iter().flat_map(|h| {
        h.bucket
            .iter()
            .filter_map(|b| b.exemplar.as_ref())
            .chain(h.exemplars.iter())
    });
    counter.into_iter().chain(histogram)
}

/// Whether a histogram carries native buckets (the reader's rule, Prometheus') and no classic
/// ones.
fn is_native_only(h: &Histogram<'_>) -> bool {
    h.bucket.is_empty() && is_native(h)
}

/// Whether a metric is a native histogram without classic buckets (left out).
fn native_only(m: &Metric<'_>) -> bool {
    m.histogram.as_ref().is_some_and(is_native_only)
}

struct Writer {
    out: OpenMetricsBody,
    names: Names,
    /// A family's lines, written after its header once its metrics are known.
    lines: String,
}

/// What one sample line is: its name suffix, the extra label (`le`, `quantile`), the value.
struct Line<'m, 'a> {
    suffix: &'static str,
    extra: Option<(&'static str, f64)>,
    value: Value,
    exemplar: Option<&'m Exemplar<'a>>,
}

#[derive(Clone, Copy)]
enum Value {
    Float(f64),
    Int(u64),
    Time(Timestamp),
}

impl Writer {
    /// One pass over the family's metrics (one held at a time) writes its lines as its type
    /// while checking that the type fits; a family that does not fit is written again as
    /// `unknown` families.
    fn family(&mut self, f: &Family<'_>) {
        let name = self.names.metric_name(f.name).into_owned();
        let mtype = f.metric_type();
        let (om_name, om_type) = match mtype {
            MetricType::Counter => match name.strip_suffix("_total") {
                Some(stem) => (stem.to_string(), "counter"),
                None => (name.clone(), ""),
            },
            MetricType::Gauge => (name.clone(), "gauge"),
            MetricType::Untyped => (name.clone(), "unknown"),
            MetricType::Summary => (name.clone(), "summary"),
            MetricType::Histogram => (name.clone(), "histogram"),
            MetricType::GaugeHistogram => (name.clone(), "gaugehistogram"),
        };
        let mut fits = !om_type.is_empty();
        let (mut kept, mut native) = (0, 0);
        let mut m = Metric::default();
        for raw in &f.metrics {
            m.load(raw);
            if native_only(&m) {
                native += 1;
                continue;
            }
            kept += 1;
            fits = fits
                && match mtype {
                    MetricType::Counter => counter_ok(&m),
                    MetricType::Summary => summary_ok(&m),
                    MetricType::Histogram => histogram_ok(&m, false),
                    MetricType::GaugeHistogram => histogram_ok(&m, true),
                    MetricType::Gauge | MetricType::Untyped => true,
                };
            if fits {
                lines(mtype, &m, |line| self.line(&om_name, &m, &line));
            }
        }
        self.out.native_only += native;
        if kept == 0 || !fits {
            self.lines.clear();
            if kept > 0 {
                self.unknown(f, &name);
            }
            return;
        }
        let b = &mut self.out.body;
        b.extend_from_slice(format!("# TYPE {om_name} {om_type}\n").as_bytes());
        let unit = self.names.metric_name(f.unit);
        if !unit.is_empty()
            && om_name.len() > unit.len() + 1
            && om_name.ends_with(&format!("_{unit}"))
        {
            b.extend_from_slice(format!("# UNIT {om_name} {unit}\n").as_bytes());
        }
        if !f.help.is_empty() {
            b.extend_from_slice(format!("# HELP {om_name} ").as_bytes());
            write_escaped(f.help.as_bytes(), Escaped::Raw, Escaped::OmHelp, b);
            b.push(b'\n');
        }
        self.flush();
    }

    /// A family OpenMetrics would reject as its type: `unknown` families, one per sample name.
    fn unknown(&mut self, f: &Family<'_>, name: &str) {
        let mtype = f.metric_type();
        // A counter's value is its family's name itself (`lines` writes it as `_total` of an
        // OpenMetrics stem).
        let own = |suffix: &'static str| match (mtype, suffix) {
            (MetricType::Counter, "_total") => "",
            (_, s) => s,
        };
        let mut m = Metric::default();
        let mut suffixes: Vec<&'static str> = Vec::new();
        f.each_metric(&mut m, |m| {
            if !native_only(m) {
                lines(mtype, m, |l| {
                    if !suffixes.contains(&own(l.suffix)) {
                        suffixes.push(own(l.suffix));
                    }
                });
            }
        });
        for suffix in suffixes {
            let family = format!("{name}{suffix}");
            self.out
                .body
                .extend_from_slice(format!("# TYPE {family} unknown\n").as_bytes());
            for raw in &f.metrics {
                m.load(raw);
                if native_only(&m) {
                    continue;
                }
                lines(mtype, &m, |l| {
                    if own(l.suffix) == suffix {
                        let plain = Line {
                            suffix: "",
                            exemplar: None,
                            ..l
                        };
                        self.line(&family, &m, &plain);
                    }
                });
            }
            self.flush();
        }
    }

    fn line(&mut self, name: &str, m: &Metric<'_>, line: &Line<'_, '_>) {
        let (s, namer, utf8) = (&mut self.lines, self.names, self.out.utf8_names);
        s.push_str(name);
        s.push_str(line.suffix);
        let mut first = true;
        let mut label = |s: &mut String, n: &str, v: &str| {
            s.push(if first { '{' } else { ',' });
            first = false;
            s.push_str(n);
            s.push_str("=\"");
            escape_value(v, s);
            s.push('"');
        };
        // Of two labels that escape to one name, the first is kept (legacy names, which no
        // scheme changes, are all different: the reader refused a name twice).
        let mut names: Vec<String> = Vec::new();
        for l in m.label.iter().filter(|l| !l.value.is_empty()) {
            if !utf8 {
                label(s, l.name, l.value);
                continue;
            }
            let name = namer.label_name(l.name).into_owned();
            if !names.contains(&name) {
                label(s, &name, l.value);
                names.push(name);
            }
        }
        if let Some((n, v)) = line.extra {
            label(s, n, &number(v));
        }
        if !first {
            s.push('}');
        }
        s.push(' ');
        match line.value {
            Value::Float(v) => push_number(s, v),
            Value::Int(v) => {
                let _ = write!(s, "{v}");
            }
            Value::Time(t) => s.push_str(&seconds(t)),
        }
        if m.timestamp_ms != 0 {
            s.push(' ');
            s.push_str(&millis_as_seconds(m.timestamp_ms));
        }
        if let Some(e) = line.exemplar {
            s.push_str(" # {");
            for (i, l) in e.label.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&namer.label_name(l.name));
                s.push_str("=\"");
                escape_value(l.value, s);
                s.push('"');
            }
            s.push_str("} ");
            push_number(s, e.value);
            if let Some(t) = e.timestamp {
                s.push(' ');
                s.push_str(&seconds(t));
            }
        }
        s.push('\n');
    }

    fn flush(&mut self) {
        self.out.body.extend_from_slice(self.lines.as_bytes());
        self.lines.clear();
    }
}

/// A metric's sample lines in OpenMetrics order.
fn lines<'m, 'a>(mtype: MetricType, m: &'m Metric<'a>, mut out: impl FnMut(Line<'m, 'a>)) {
    let float = |value| Line {
        suffix: "",
        extra: None,
        value: Value::Float(value),
        exemplar: None,
    };
    let created = |t: Option<Timestamp>| {
        t.map(|t| Line {
            suffix: "_created",
            extra: None,
            value: Value::Time(t),
            exemplar: None,
        })
    };
    match mtype {
        MetricType::Counter => {
            let c = m.counter.unwrap_or_default();
            out(Line {
                suffix: "_total",
                exemplar: m.counter.as_ref().and_then(|c| c.exemplar.as_ref()),
                ..float(c.value)
            });
            if let Some(l) = created(c.start_timestamp) {
                out(l);
            }
        }
        MetricType::Gauge => out(float(m.gauge.unwrap_or_default().value)),
        MetricType::Untyped => out(float(m.untyped.unwrap_or_default().value)),
        MetricType::Summary => {
            let Some(s) = m.summary.as_ref() else {
                return;
            };
            for q in &s.quantile {
                out(Line {
                    extra: Some(("quantile", q.quantile)),
                    ..float(q.value)
                });
            }
            out(Line {
                suffix: "_sum",
                ..float(s.sample_sum)
            });
            out(Line {
                suffix: "_count",
                value: Value::Int(s.sample_count),
                ..float(0.0)
            });
            if let Some(l) = created(s.start_timestamp) {
                out(l);
            }
        }
        MetricType::Histogram | MetricType::GaugeHistogram => {
            let Some(h) = m.histogram.as_ref() else {
                return;
            };
            let gauge = mtype == MetricType::GaugeHistogram;
            for b in &h.bucket {
                out(Line {
                    suffix: "_bucket",
                    extra: Some(("le", b.upper_bound)),
                    value: count(b.cumulative_count, b.cumulative_count_float),
                    exemplar: b.exemplar.as_ref(),
                });
            }
            let total = count(h.sample_count, h.sample_count_float);
            if h.bucket
                .last()
                .is_none_or(|b| b.upper_bound != f64::INFINITY)
            {
                out(Line {
                    suffix: "_bucket",
                    extra: Some(("le", f64::INFINITY)),
                    value: total,
                    exemplar: None,
                });
            }
            out(Line {
                suffix: if gauge { "_gcount" } else { "_count" },
                value: total,
                ..float(0.0)
            });
            out(Line {
                suffix: if gauge { "_gsum" } else { "_sum" },
                ..float(h.sample_sum)
            });
            if !gauge {
                if let Some(l) = created(h.start_timestamp) {
                    out(l);
                }
            }
        }
    }
}

fn count(int: u64, float: f64) -> Value {
    if float > 0.0 {
        Value::Float(float)
    } else {
        Value::Int(int)
    }
}

fn counter_ok(m: &Metric<'_>) -> bool {
    m.counter.as_ref().is_some_and(|c| c.value >= 0.0)
}

fn summary_ok(m: &Metric<'_>) -> bool {
    m.summary.as_ref().is_some_and(|s| {
        s.sample_sum >= 0.0
            && s.quantile
                .iter()
                .all(|q| q.value >= 0.0 || q.value.is_nan())
    })
}

/// OpenMetrics' histogram rules (the text engine's `histogram.rs`): counts and sums neither
/// NaN nor negative, no sum beside negative buckets; a gauge histogram's negative sum only
/// beside negative buckets.
fn histogram_ok(m: &Metric<'_>, gauge: bool) -> bool {
    let Some(h) = m.histogram.as_ref() else {
        return false;
    };
    let negative_bucket = h.bucket.iter().any(|b| b.upper_bound < 0.0);
    let counts_ok = h.sample_count_float >= 0.0
        && h.bucket
            .iter()
            .all(|b| b.cumulative_count_float >= 0.0 && !b.upper_bound.is_nan());
    let sum = h.sample_sum;
    let sum_ok = if gauge {
        !sum.is_nan() && (sum >= 0.0 || negative_bucket)
    } else {
        sum >= 0.0 && !negative_bucket
    };
    counts_ok && sum_ok
}

fn escape_value(v: &str, s: &mut String) {
    if !v.contains(['\\', '"', '\n']) {
        s.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
}

/// [`number`], written at the end of `s`.
fn push_number(s: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(s, "{v:?}");
    } else {
        s.push_str(&number(v));
    }
}

/// A float as OpenMetrics writes it: the shortest text that reads back as the same value.
pub(crate) fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v:?}")
    }
}

/// A timestamp in seconds, exactly (nanoseconds as decimals).
fn seconds(t: Timestamp) -> String {
    let total = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    let sign = if total < 0 { "-" } else { "" };
    let total = total.unsigned_abs();
    let (s, ns) = (total / 1_000_000_000, total % 1_000_000_000);
    if ns == 0 {
        format!("{sign}{s}")
    } else {
        format!("{sign}{s}.{}", format!("{ns:09}").trim_end_matches('0'))
    }
}

fn millis_as_seconds(ms: i64) -> String {
    seconds(Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::super::schema::*;
    use super::{millis_as_seconds, number, seconds, OpenMetricsBody};
    use crate::decode::Escaping;
    use prost::Message;

    /// [`super::to_openmetrics`] of `families` as read from their encoding.
    fn to_openmetrics(families: &[MetricFamily], escaping: Escaping) -> OpenMetricsBody {
        let mut body = Vec::new();
        for f in families {
            f.encode_length_delimited(&mut body).unwrap();
        }
        super::to_openmetrics(&super::super::read(&body).unwrap(), escaping)
    }
    use crate::decode::{validate, Format};

    fn label(n: &str, v: &str) -> LabelPair {
        LabelPair {
            name: n.into(),
            value: v.into(),
        }
    }

    fn family(name: &str, t: MetricType, metric: Vec<Metric>) -> MetricFamily {
        MetricFamily {
            name: name.into(),
            help: String::new(),
            r#type: t as i32,
            metric,
            unit: String::new(),
        }
    }

    fn native(count: u64) -> Histogram {
        Histogram {
            sample_count: count,
            sample_sum: 1.5,
            schema: 3,
            zero_threshold: 1e-128,
            zero_count: 1,
            positive_span: vec![BucketSpan {
                offset: 0,
                length: 1,
            }],
            positive_delta: vec![count as i64 - 1],
            ..Default::default()
        }
    }

    #[test]
    fn every_type_becomes_valid_openmetrics() {
        let ts = Some(Timestamp {
            seconds: 1700000000,
            nanos: 500_000_000,
        });
        let exemplar = Exemplar {
            label: vec![label("trace_id", "abc")],
            value: 0.5,
            timestamp: ts,
        };
        let families = vec![
            MetricFamily {
                help: "Requests \"served\"\n\\".into(),
                unit: "seconds".into(),
                ..family(
                    "rpc_seconds_total",
                    MetricType::Counter,
                    vec![Metric {
                        label: vec![label("method", "GET"), label("empty", "")],
                        counter: Some(Counter {
                            value: 3.0,
                            exemplar: Some(exemplar.clone()),
                            start_timestamp: ts,
                        }),
                        ..Default::default()
                    }],
                )
            },
            family(
                "temp",
                MetricType::Gauge,
                vec![Metric {
                    gauge: Some(Gauge { value: -1.25 }),
                    timestamp_ms: 1700000000123,
                    ..Default::default()
                }],
            ),
            family(
                "lat",
                MetricType::Histogram,
                vec![
                    Metric {
                        histogram: Some(Histogram {
                            sample_count: 3,
                            sample_sum: 2.0,
                            bucket: vec![Bucket {
                                cumulative_count: 2,
                                upper_bound: 1.0,
                                exemplar: Some(exemplar),
                                ..Default::default()
                            }],
                            start_timestamp: ts,
                            ..native(3)
                        }),
                        ..Default::default()
                    },
                    Metric {
                        label: vec![label("only", "native")],
                        histogram: Some(native(4)),
                        ..Default::default()
                    },
                ],
            ),
            family(
                "q",
                MetricType::Summary,
                vec![Metric {
                    summary: Some(Summary {
                        sample_count: 2,
                        sample_sum: 3.0,
                        quantile: vec![Quantile {
                            quantile: 0.5,
                            value: 1.0,
                        }],
                        start_timestamp: None,
                    }),
                    ..Default::default()
                }],
            ),
            family(
                "odd",
                MetricType::Counter,
                vec![Metric {
                    counter: Some(Counter {
                        value: 1.0,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
            ),
            family(
                "native_only",
                MetricType::Histogram,
                vec![Metric {
                    histogram: Some(native(2)),
                    ..Default::default()
                }],
            ),
            family(
                "http.server.duration",
                MetricType::Untyped,
                vec![Metric {
                    label: vec![label("http.method", "GET")],
                    untyped: Some(Untyped { value: f64::NAN }),
                    ..Default::default()
                }],
            ),
        ];
        let om = to_openmetrics(&families, Escaping::Underscores);
        let text = String::from_utf8(om.body.clone()).unwrap();
        assert_eq!(
            text,
            "# TYPE rpc_seconds counter\n\
             # UNIT rpc_seconds seconds\n\
             # HELP rpc_seconds Requests \\\"served\\\"\\n\\\\\n\
             rpc_seconds_total{method=\"GET\"} 3.0 # {trace_id=\"abc\"} 0.5 1700000000.5\n\
             rpc_seconds_created{method=\"GET\"} 1700000000.5\n\
             # TYPE temp gauge\n\
             temp -1.25 1700000000.123\n\
             # TYPE lat histogram\n\
             lat_bucket{le=\"1.0\"} 2 # {trace_id=\"abc\"} 0.5 1700000000.5\n\
             lat_bucket{le=\"+Inf\"} 3\n\
             lat_count 3\n\
             lat_sum 2.0\n\
             lat_created 1700000000.5\n\
             # TYPE q summary\n\
             q{quantile=\"0.5\"} 1.0\n\
             q_sum 3.0\n\
             q_count 2\n\
             # TYPE odd unknown\n\
             odd 1.0\n\
             # TYPE http_server_duration unknown\n\
             http_server_duration{http_method=\"GET\"} NaN\n\
             # EOF\n"
        );
        assert_eq!(om.native_only, 2);
        validate(&om.body, Format::OpenMetrics).unwrap();
    }

    #[test]
    fn families_openmetrics_rejects_become_unknown_per_sample_name() {
        let families = vec![family(
            "h",
            MetricType::Histogram,
            vec![Metric {
                histogram: Some(Histogram {
                    sample_count: 1,
                    sample_sum: -2.0,
                    bucket: vec![Bucket {
                        cumulative_count: 1,
                        upper_bound: 0.0,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }],
        )];
        let om = to_openmetrics(&families, Escaping::Underscores);
        let text = String::from_utf8(om.body.clone()).unwrap();
        assert!(
            text.contains("# TYPE h_bucket unknown\nh_bucket{le=\"0.0\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE h_sum unknown\nh_sum -2.0\n"),
            "{text}"
        );
        validate(&om.body, Format::OpenMetrics).unwrap();
    }

    #[test]
    fn timestamps_are_exact() {
        assert_eq!(millis_as_seconds(-1500), "-1.5");
        assert_eq!(millis_as_seconds(5), "0.005");
        assert_eq!(
            seconds(Timestamp {
                seconds: 1,
                nanos: 1
            }),
            "1.000000001"
        );
        assert_eq!(number(1e21), "1e21");
        assert_eq!(number(0.1), "0.1");
    }
}

//! `cargo bench -p loupe-agent --bench proto`: decoding one pod's protobuf body against checking
//! the same series as text 0.0.4. Goal: protobuf decoding at least as fast per series as the text
//! parser.
//!
//! The body is what client_golang serves: 1,000 series (as Prometheus counts them from the text
//! body) over counters and gauges with 2 to 4 labels, classic histograms (11 buckets) and a few
//! native histograms (written in text as client_golang does for a native-only histogram: `+Inf`
//! bucket, `_sum`, `_count`). Throughput is per series for every benchmark, so the numbers compare.
//!
//! - `text_validate`: `decode::validate(body, Format::Text)`, the text parser's check.
//! - `protobuf_read`: `decode::proto::read`, the strict reader (in place, then the checks): what
//!   the agent does with a body.
//! - `protobuf_decode_owned`: `decode::proto::decode`, the same into prost's owned messages (for
//!   tests and tools).
//! - `prost_only`: the same stream decoded with prost alone, no checks (a `String` allocation per
//!   label name and value): what the reader replaced.
//! - `prost_only_bytes_input`: the same from a `bytes::Bytes` buffer; prost still copies every
//!   `string` field into a `String`.
//! - `prost_bytes_strings`: a copy of the schema whose `string` fields are `bytes::Bytes` (prost's
//!   `bytes = "bytes"`, the same wire type), decoded from `Bytes`: every name and value a
//!   refcounted slice of the body, no copy; their UTF-8 checked afterwards as prost would. What
//!   changing `schema.rs` that way would have saved.
//!
//! `proto_1000_series_rendering`: the same body rendered for the node target (identity labels),
//! text and protobuf bodies each for text and protobuf scrapers: the rest of a body's ingest.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use bytes::{Buf, Bytes};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loupe_agent::decode::proto::schema::{
    Bucket, BucketSpan, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use loupe_agent::decode::proto::{decode, read};
use loupe_agent::decode::{validate, Format, IdentityLabels, Source};
use prost::Message;

/// Upper bounds of the classic histograms (client_golang's `DefBuckets`, and 10 s).
const BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const CODES: [&str; 5] = ["200", "201", "404", "500", "503"];

fn lp(name: &str, value: &str) -> LabelPair {
    LabelPair {
        name: name.into(),
        value: value.into(),
    }
}

/// A deterministic value for series `i` of family `f`.
fn value(f: usize, i: usize) -> f64 {
    ((f * 7919 + i * 104_729) % 1_000_003) as f64 / 8.0
}

/// The label sets of series `i`: 2 to 4 labels, as an HTTP server's metrics have.
fn labels(i: usize, n: usize) -> Vec<LabelPair> {
    let mut l = vec![
        lp("handler", &format!("/api/v1/resource_{i:03}")),
        lp("method", METHODS[i % 4]),
        lp("code", CODES[(i / 4) % 5]),
        lp("instance_zone", "eu-west-1b"),
    ];
    l.truncate(n);
    l
}

/// The body's families: 400 counter series, 150 gauges, 30 classic histograms (14 series each)
/// and 10 native histograms (3 series each in text): 1,000 series.
fn families() -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let family = |name: &str, kind: MetricType, metric: Vec<Metric>| MetricFamily {
        name: name.into(),
        help: format!("Help text of {name}, about as long as client_golang's."),
        r#type: kind as i32,
        metric,
        unit: String::new(),
    };
    for f in 0..4 {
        let metric = (0..100)
            .map(|i| Metric {
                label: labels(i, 3 + f % 2),
                counter: Some(Counter {
                    value: value(f, i),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        out.push(family(
            &format!("http_server_requests_{f}_total"),
            MetricType::Counter,
            metric,
        ));
    }
    for f in 0..3 {
        let metric = (0..50)
            .map(|i| Metric {
                label: labels(i * 3, 2 + f % 3),
                gauge: Some(Gauge {
                    value: value(f + 10, i) - 1000.0,
                }),
                ..Default::default()
            })
            .collect();
        out.push(family(
            &format!("process_resource_{f}_bytes"),
            MetricType::Gauge,
            metric,
        ));
    }
    for f in 0..2 {
        let metric = (0..15)
            .map(|i| {
                let mut cumulative = 0;
                let bucket: Vec<Bucket> = BOUNDS
                    .iter()
                    .chain(&[f64::INFINITY])
                    .enumerate()
                    .map(|(b, &upper_bound)| {
                        cumulative += (i * 31 + b * 17) as u64 % 50;
                        Bucket {
                            cumulative_count: cumulative,
                            upper_bound,
                            ..Default::default()
                        }
                    })
                    .collect();
                Metric {
                    label: labels(i * 7, 3),
                    histogram: Some(Histogram {
                        sample_count: cumulative,
                        sample_sum: value(f + 20, i),
                        bucket,
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect();
        out.push(family(
            &format!("http_server_request_duration_{f}_seconds"),
            MetricType::Histogram,
            metric,
        ));
    }
    let metric = (0..10)
        .map(|i| {
            let positive: Vec<i64> = (0..12).map(|b| ((i + b) % 5) as i64 - 2).collect();
            let deltas: Vec<i64> = std::iter::once(10).chain(positive).collect();
            let mut total = 0u64;
            let mut c = 0i64;
            for d in &deltas {
                c += d;
                total += c as u64;
            }
            Metric {
                label: labels(i * 11, 2),
                histogram: Some(Histogram {
                    sample_count: total + 3,
                    sample_sum: value(30, i),
                    schema: 3,
                    zero_threshold: 2.938735877055719e-39,
                    zero_count: 3,
                    positive_span: vec![
                        BucketSpan {
                            offset: -4,
                            length: 8,
                        },
                        BucketSpan {
                            offset: 2,
                            length: 5,
                        },
                    ],
                    positive_delta: deltas,
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    out.push(family(
        "rpc_latency_native_seconds",
        MetricType::Histogram,
        metric,
    ));
    out
}

/// The families as client_golang writes text 0.0.4.
fn text(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    let labels = |out: &mut String, l: &[LabelPair], le: Option<&str>| {
        let mut first = true;
        out.push('{');
        for p in l {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{}=\"{}\"", p.name, p.value);
        }
        if let Some(le) = le {
            if !first {
                out.push(',');
            }
            let _ = write!(out, "le=\"{le}\"");
        }
        out.push('}');
    };
    for f in families {
        let kind = match f.r#type {
            0 => "counter",
            1 => "gauge",
            _ => "histogram",
        };
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {kind}",
            f.name, f.help, f.name
        );
        for m in &f.metric {
            if let Some(c) = &m.counter {
                out.push_str(&f.name);
                labels(&mut out, &m.label, None);
                let _ = writeln!(out, " {}", c.value);
            }
            if let Some(g) = &m.gauge {
                out.push_str(&f.name);
                labels(&mut out, &m.label, None);
                let _ = writeln!(out, " {}", g.value);
            }
            if let Some(h) = &m.histogram {
                let mut buckets: Vec<(String, u64)> = h
                    .bucket
                    .iter()
                    .filter(|b| b.upper_bound.is_finite())
                    .map(|b| (b.upper_bound.to_string(), b.cumulative_count))
                    .collect();
                buckets.push(("+Inf".into(), h.sample_count));
                for (le, count) in buckets {
                    let _ = write!(out, "{}_bucket", f.name);
                    labels(&mut out, &m.label, Some(&le));
                    let _ = writeln!(out, " {count}");
                }
                let _ = write!(out, "{}_sum", f.name);
                labels(&mut out, &m.label, None);
                let _ = writeln!(out, " {}", h.sample_sum);
                let _ = write!(out, "{}_count", f.name);
                labels(&mut out, &m.label, None);
                let _ = writeln!(out, " {}", h.sample_count);
            }
        }
    }
    out
}

/// The schema with `bytes::Bytes` for every `string` field (the same wire format).
mod bytes_schema {
    use bytes::Bytes;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(bytes = "bytes", tag = "1")]
        pub name: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        pub value: Bytes,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Value {
        #[prost(double, tag = "1")]
        pub value: f64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Counter {
        #[prost(double, tag = "1")]
        pub value: f64,
        #[prost(message, optional, tag = "2")]
        pub exemplar: Option<Exemplar>,
        #[prost(message, optional, tag = "3")]
        pub start_timestamp: Option<Timestamp>,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Quantile {
        #[prost(double, tag = "1")]
        pub quantile: f64,
        #[prost(double, tag = "2")]
        pub value: f64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Summary {
        #[prost(uint64, tag = "1")]
        pub sample_count: u64,
        #[prost(double, tag = "2")]
        pub sample_sum: f64,
        #[prost(message, repeated, tag = "3")]
        pub quantile: Vec<Quantile>,
        #[prost(message, optional, tag = "4")]
        pub start_timestamp: Option<Timestamp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Histogram {
        #[prost(uint64, tag = "1")]
        pub sample_count: u64,
        #[prost(double, tag = "4")]
        pub sample_count_float: f64,
        #[prost(double, tag = "2")]
        pub sample_sum: f64,
        #[prost(message, repeated, tag = "3")]
        pub bucket: Vec<Bucket>,
        #[prost(message, optional, tag = "15")]
        pub start_timestamp: Option<Timestamp>,
        #[prost(sint32, tag = "5")]
        pub schema: i32,
        #[prost(double, tag = "6")]
        pub zero_threshold: f64,
        #[prost(uint64, tag = "7")]
        pub zero_count: u64,
        #[prost(double, tag = "8")]
        pub zero_count_float: f64,
        #[prost(message, repeated, tag = "9")]
        pub negative_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, tag = "10")]
        pub negative_delta: Vec<i64>,
        #[prost(double, repeated, tag = "11")]
        pub negative_count: Vec<f64>,
        #[prost(message, repeated, tag = "12")]
        pub positive_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, tag = "13")]
        pub positive_delta: Vec<i64>,
        #[prost(double, repeated, tag = "14")]
        pub positive_count: Vec<f64>,
        #[prost(message, repeated, tag = "16")]
        pub exemplars: Vec<Exemplar>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Bucket {
        #[prost(uint64, tag = "1")]
        pub cumulative_count: u64,
        #[prost(double, tag = "4")]
        pub cumulative_count_float: f64,
        #[prost(double, tag = "2")]
        pub upper_bound: f64,
        #[prost(message, optional, tag = "3")]
        pub exemplar: Option<Exemplar>,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct BucketSpan {
        #[prost(sint32, tag = "1")]
        pub offset: i32,
        #[prost(uint32, tag = "2")]
        pub length: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Exemplar {
        #[prost(message, repeated, tag = "1")]
        pub label: Vec<LabelPair>,
        #[prost(double, tag = "2")]
        pub value: f64,
        #[prost(message, optional, tag = "3")]
        pub timestamp: Option<Timestamp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(message, repeated, tag = "1")]
        pub label: Vec<LabelPair>,
        #[prost(message, optional, tag = "2")]
        pub gauge: Option<Value>,
        #[prost(message, optional, tag = "3")]
        pub counter: Option<Counter>,
        #[prost(message, optional, tag = "4")]
        pub summary: Option<Summary>,
        #[prost(message, optional, tag = "5")]
        pub untyped: Option<Value>,
        #[prost(message, optional, tag = "7")]
        pub histogram: Option<Histogram>,
        #[prost(int64, tag = "6")]
        pub timestamp_ms: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricFamily {
        #[prost(bytes = "bytes", tag = "1")]
        pub name: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        pub help: Bytes,
        #[prost(int32, tag = "3")]
        pub r#type: i32,
        #[prost(message, repeated, tag = "4")]
        pub metric: Vec<Metric>,
        #[prost(bytes = "bytes", tag = "5")]
        pub unit: Bytes,
    }

    /// Whether the family's names and values (exemplars aside: none here) are UTF-8, as prost
    /// checks `string` fields.
    pub fn utf8(f: &MetricFamily) -> bool {
        let ok = |b: &Bytes| std::str::from_utf8(b).is_ok();
        ok(&f.name)
            && ok(&f.help)
            && ok(&f.unit)
            && f.metric
                .iter()
                .all(|m| m.label.iter().all(|l| ok(&l.name) && ok(&l.value)))
    }
}

fn bench(c: &mut Criterion) {
    let families = families();
    let mut body = Vec::new();
    for f in &families {
        f.encode_length_delimited(&mut body).expect("a Vec grows");
    }
    let text = text(&families);
    let series = validate(text.as_bytes(), Format::Text)
        .expect("the text body is valid")
        .samples;
    assert_eq!(series, 1000);
    assert!(decode(&body).expect("the protobuf body is valid") == families);
    let metrics: usize = families.iter().map(|f| f.metric.len()).sum();
    eprintln!(
        "body: {series} series ({metrics} protobuf metrics); protobuf {} bytes, text {} bytes; \
         size_of::<Metric>() = {} bytes",
        body.len(),
        text.len(),
        std::mem::size_of::<Metric>()
    );

    let mut g = c.benchmark_group("proto_1000_series");
    g.sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(series as u64));
    g.bench_function("text_validate", |b| {
        b.iter(|| black_box(validate(black_box(text.as_bytes()), Format::Text)))
    });
    g.bench_function("protobuf_read", |b| {
        b.iter(|| black_box(read(black_box(&body))))
    });
    g.bench_function("protobuf_decode_owned", |b| {
        b.iter(|| black_box(decode(black_box(&body))))
    });
    g.bench_function("prost_only", |b| {
        b.iter(|| {
            let mut buf = black_box(&body[..]);
            let mut out = Vec::new();
            while !buf.is_empty() {
                match MetricFamily::decode_length_delimited(&mut buf) {
                    Ok(f) => out.push(f),
                    Err(_) => break,
                }
            }
            black_box(out)
        })
    });
    let shared = Bytes::from(body.clone());
    g.bench_function("prost_only_bytes_input", |b| {
        b.iter(|| {
            let mut buf = black_box(&shared).clone();
            let mut out = Vec::new();
            while buf.has_remaining() {
                match MetricFamily::decode_length_delimited(&mut buf) {
                    Ok(f) => out.push(f),
                    Err(_) => break,
                }
            }
            black_box(out)
        })
    });
    g.bench_function("prost_bytes_strings", |b| {
        b.iter(|| {
            let mut buf = black_box(&shared).clone();
            let mut out = Vec::new();
            while buf.has_remaining() {
                match bytes_schema::MetricFamily::decode_length_delimited(&mut buf) {
                    Ok(f) if bytes_schema::utf8(&f) => out.push(f),
                    _ => break,
                }
            }
            black_box(out)
        })
    });
    g.finish();

    // What a body costs at ingest past its check: its rendering for the node target, with
    // identity labels, in the format scrapers ask (a protobuf body for text is first written
    // as OpenMetrics and parsed by the text engine).
    let identity = Some(IdentityLabels {
        namespace: "shop",
        pod: "checkout-7d4b9c-x2x9q",
        container: "app",
        endpoint: ":8080/metrics",
        ..Default::default()
    });
    let mut g = c.benchmark_group("proto_1000_series_rendering");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(series as u64));
    for (name, input, from, out) in [
        ("text_for_text", text.as_bytes(), Format::Text, Format::Text),
        (
            "text_for_protobuf",
            text.as_bytes(),
            Format::Text,
            Format::Protobuf,
        ),
        (
            "protobuf_for_text",
            &body[..],
            Format::Protobuf,
            Format::Text,
        ),
        (
            "protobuf_for_protobuf",
            &body[..],
            Format::Protobuf,
            Format::Protobuf,
        ),
    ] {
        let source = Source::new(identity, input, from);
        g.bench_function(name, |b| b.iter(|| black_box(source.render(out))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

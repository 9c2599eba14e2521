//! The native-histogram test app's metrics (`native-app`), made with the official Rust client
//! `prometheus-client` from fixed observations, so that the tests know exactly what it serves:
//! the observation lists, the counts, sums and native buckets they give, the registries the app
//! encodes, and a decoder for its protobuf bodies. Shared by `native-app` and the tests, as
//! `app_body` is for `metrics-app`.
//!
//! What the app serves, by format (`Accept`):
//! - protobuf (`application/vnd.google.protobuf`): `rpc_duration_seconds` native-only (schema
//!   [`RPC_SCHEMA`], zeros in the zero bucket), `response_size_bytes` with classic buckets and
//!   native ones in the same message (schema [`SIZE_SCHEMA`]), `requests_total` with an
//!   exemplar, `temperature_celsius`; with `--utf8` also [`UTF8_NAME`] and its label as they are.
//! - text 0.0.4: the same families; the crate writes a native-only histogram as its `+Inf`
//!   bucket, `_sum` and `_count`, the other histogram with its classic buckets; no exemplar; with
//!   `--utf8` the UTF-8 names escaped with underscores (the crate cannot quote names; that is
//!   what client_golang does for a scraper that does not accept `escaping=allow-utf-8`).
//! - OpenMetrics 1.0: the crate refuses to encode a native-only histogram in OpenMetrics, so
//!   there `rpc_duration_seconds` is a classic histogram without finite buckets fed the same
//!   observations: the same lines as in text 0.0.4. The counter carries its exemplar.
//!
//! Every body is the same on every request of one process; the protobuf histograms carry their
//! creation time as `start_timestamp`, and the order of the two `method` series is the crate's
//! (a hash map's), so bodies differ between processes, not their values.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
use prometheus_client::metrics::exemplar::CounterWithExemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, NativeHistogramConfig};
use prometheus_client::registry::{Registry, Unit};

pub use crate::app_body::{OPENMETRICS_TYPE, TEXT_TYPE};

/// The protobuf exposition's `Content-Type`, as client_golang writes it.
pub const PROTOBUF_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Schema of `rpc_duration_seconds` (growth factor 2^(2^-3), about 1.09).
pub const RPC_SCHEMA: i8 = 3;
/// `rpc_duration_seconds` observations per `method` label value. Dyadic values (exact sums), two
/// zeros for the zero bucket in each, powers of two on bucket boundaries and values between.
pub const RPC: [(&str, &[f64]); 2] = [
    (
        "GET",
        &[
            0.0, 0.0, 0.0078125, 0.015625, 0.015625, 0.0625, 0.25, 1.5, 3.0,
        ],
    ),
    ("POST", &[0.0, 0.0, 0.125, 0.375, 0.375, 0.75, 2.5, 6.0]),
];

/// Schema of `response_size_bytes`' native buckets (growth factor 2).
pub const SIZE_SCHEMA: i8 = 0;
/// `response_size_bytes`' classic bucket bounds (`+Inf` is implicit).
pub const SIZE_BUCKETS: [f64; 4] = [64.0, 256.0, 1024.0, 4096.0];
/// `response_size_bytes` observations (one series, no labels).
pub const SIZE: &[f64] = &[0.0, 48.0, 100.0, 200.0, 300.0, 1000.0, 5000.0];

/// `requests_total`: 40 requests, then 2 more recorded with an exemplar.
pub const REQUESTS: u64 = 42;
/// The exemplar of `requests_total`: its label, its value (the last increment) and timestamp.
pub const EXEMPLAR_LABEL: (&str, &str) = ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
pub const EXEMPLAR_VALUE: u64 = 2;
/// 2026-01-01T00:00:00Z.
pub const EXEMPLAR_UNIX_SECONDS: u64 = 1_767_225_600;

/// `temperature_celsius`.
pub const TEMPERATURE: f64 = 21.5;

/// With `--utf8`: a gauge whose name and label name are valid only as UTF-8 names.
pub const UTF8_NAME: &str = "native.queue.depth";
pub const UTF8_LABEL: (&str, &str) = ("queue.name", "inbox");
pub const UTF8_VALUE: i64 = 7;

/// The format a registry is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Text,
    OpenMetrics,
}

/// The app's command line: `--listen ADDR:PORT [--utf8]`.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: String,
    pub utf8: bool,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            listen: "127.0.0.1:8080".into(),
            utf8: false,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--listen" => o.listen = it.next().cloned().ok_or("--listen needs a value")?,
                "--utf8" => o.utf8 = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(o)
    }
}

/// The sum of `obs` as the client adds them (in order).
pub fn sum(obs: &[f64]) -> f64 {
    obs.iter().fold(0.0, |acc, v| acc + v)
}

/// The observations of `rpc_duration_seconds{method}`.
pub fn rpc(method: &str) -> Option<&'static [f64]> {
    RPC.iter().find(|(m, _)| *m == method).map(|(_, obs)| *obs)
}

/// The zeros among `obs` (what lands in the zero bucket: the threshold is 2^-128).
pub fn zero_count(obs: &[f64]) -> u64 {
    obs.iter().filter(|v| **v == 0.0).count() as u64
}

/// The native bucket index of `v > 0` at `schema`, computed independently of the client: the
/// smallest `i` with `v <= 2^(i / 2^schema)` (upper bounds are inclusive).
pub fn bucket_index(schema: i8, v: f64) -> i32 {
    let scale = 2f64.powi(i32::from(schema));
    let mut i = (v.log2() * scale).ceil() as i32;
    // Guard the float estimate on both sides.
    while v <= 2f64.powf(f64::from(i - 1) / scale) {
        i -= 1;
    }
    while v > 2f64.powf(f64::from(i) / scale) {
        i += 1;
    }
    i
}

/// The positive native buckets `obs` fill at `schema`: (index, count), by index.
pub fn positive_buckets(schema: i8, obs: &[f64]) -> Vec<(i32, u64)> {
    let mut m = std::collections::BTreeMap::new();
    for v in obs.iter().filter(|v| **v > 0.0) {
        *m.entry(bucket_index(schema, *v)).or_insert(0u64) += 1;
    }
    m.into_iter().collect()
}

/// Spans and deltas (as in the protobuf message) back to (index, count).
pub fn expand(spans: &[(i32, u32)], deltas: &[i64]) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    let mut index = 0i32;
    let mut count = 0i64;
    let mut deltas = deltas.iter();
    for (n, (offset, length)) in spans.iter().enumerate() {
        index = if n == 0 { *offset } else { index + offset };
        for k in 0..*length {
            count += deltas.next().copied().unwrap_or(0);
            if count != 0 {
                out.push((index + k as i32, count as u64));
            }
        }
        index += *length as i32;
    }
    out
}

/// A name with every character outside `[a-zA-Z0-9_:]` replaced by `_` (Prometheus'
/// `underscores` escaping).
pub fn underscores(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

type Labels = Vec<(String, String)>;

/// The app's metrics for `encoding`, observed once.
pub fn registry(encoding: Encoding, utf8: bool) -> Registry {
    let mut registry = Registry::default();

    // Native-only where the format carries it (the text 0.0.4 encoder writes it as `+Inf`, sum
    // and count); in OpenMetrics a classic histogram without finite buckets gives those lines.
    let rpc: Family<Labels, Histogram, fn() -> Histogram> = match encoding {
        Encoding::Protobuf | Encoding::Text => Family::new_with_constructor(|| {
            Histogram::new_native(NativeHistogramConfig::with_schema(RPC_SCHEMA))
        }),
        Encoding::OpenMetrics => Family::new_with_constructor(|| Histogram::new([])),
    };
    for (method, obs) in RPC {
        let h = rpc.get_or_create(&vec![("method".to_string(), method.to_string())]);
        for v in obs {
            h.observe(*v);
        }
    }
    registry.register_with_unit(
        "rpc_duration",
        "RPC latency, native buckets only",
        Unit::Seconds,
        rpc,
    );

    // Classic and native buckets in one histogram: protobuf carries both in one message, the
    // text encoders write the classic buckets.
    let size = Histogram::new_classic_and_native(
        SIZE_BUCKETS,
        NativeHistogramConfig::with_schema(SIZE_SCHEMA),
    );
    for v in SIZE {
        size.observe(*v);
    }
    registry.register_with_unit(
        "response_size",
        "Response sizes, classic and native buckets",
        Unit::Bytes,
        size,
    );

    let requests = CounterWithExemplar::<Labels>::default();
    requests.inc_by(REQUESTS - EXEMPLAR_VALUE, None, None);
    requests.inc_by(
        EXEMPLAR_VALUE,
        Some(vec![(
            EXEMPLAR_LABEL.0.to_string(),
            EXEMPLAR_LABEL.1.to_string(),
        )]),
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(EXEMPLAR_UNIX_SECONDS)),
    );
    registry.register("requests", "Requests served", requests);

    let temperature = Gauge::<f64, AtomicU64>::default();
    temperature.set(TEMPERATURE);
    registry.register_with_unit(
        "temperature",
        "Room temperature",
        Unit::Celsius,
        temperature,
    );

    if utf8 {
        let (name, label) = match encoding {
            Encoding::Protobuf => (UTF8_NAME.to_string(), UTF8_LABEL.0.to_string()),
            Encoding::Text | Encoding::OpenMetrics => {
                (underscores(UTF8_NAME), underscores(UTF8_LABEL.0))
            }
        };
        let depth: Family<Labels, Gauge> = Family::default();
        depth
            .get_or_create(&vec![(label, UTF8_LABEL.1.to_string())])
            .set(UTF8_VALUE);
        registry.register(name, "Queue depth, a UTF-8 name", depth);
    }
    registry
}

/// Splits a delimited protobuf body (varint length, `MetricFamily`, ...) into its families.
pub fn decode(body: &[u8]) -> Result<Vec<MetricFamily>, prost::DecodeError> {
    use prost::Message as _;
    let mut rest = body;
    let mut out = Vec::new();
    while !rest.is_empty() {
        out.push(MetricFamily::decode_length_delimited(&mut rest)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::{prometheus_protobuf, prometheus_text, text};

    #[test]
    fn bucket_index_matches_the_standard_boundaries() {
        assert_eq!(bucket_index(0, 1.0), 0);
        assert_eq!(bucket_index(0, 1.5), 1);
        assert_eq!(bucket_index(0, 2.0), 1);
        assert_eq!(bucket_index(3, 2.0), 8);
        assert_eq!(bucket_index(3, 0.0078125), -56);
        assert_eq!(bucket_index(3, 1.5), 5); // 2^(4/8) = 1.414 < 1.5 <= 2^(5/8) = 1.542
    }

    #[test]
    fn expand_inverts_spans_and_deltas() {
        assert_eq!(
            expand(&[(-10, 6), (6, 1)], &[1, -1, 0, 7, -7, 7, 1]),
            vec![(-10, 1), (-7, 7), (-5, 7), (2, 8)]
        );
    }

    #[test]
    fn the_registries_encode_in_their_formats() {
        for utf8 in [false, true] {
            let pb =
                prometheus_protobuf::encode_to_vec(&registry(Encoding::Protobuf, utf8)).unwrap();
            let families = decode(&pb).unwrap();
            assert_eq!(families.len(), 4 + usize::from(utf8));
            let mut t = String::new();
            prometheus_text::encode(&mut t, &registry(Encoding::Text, utf8)).unwrap();
            crate::expo::check_all(&t).unwrap();
            let mut om = String::new();
            text::encode(&mut om, &registry(Encoding::OpenMetrics, utf8)).unwrap();
            loupe_testkit::strict::check(&om, loupe_testkit::Format::OpenMetrics).unwrap();
        }
    }
}

//! Decoding a delimited protobuf body (`MetricFamily` messages, each after its varint length) and
//! checking it as strictly as the text formats: a body that breaks a rule is rejected whole, with
//! the byte offset of the offending message and the family's name.
//!
//! The messages are read in place (`wire.rs`, `view.rs`): a family is its header fields and its
//! metrics' bytes; each metric is read into one reused [`Metric`] and checked as soon as it is
//! read, so an error names the metric's offset and reading stops at the first invalid metric.
//! What a body's reading keeps is a slice per metric (16 bytes, against 488 for prost's owned
//! `Metric`); [`read_within`] bounds it all the same.
//!
//! The rules, as Prometheus applies them to this format:
//! - framing: length prefixes of at most 10 bytes that fit in 64 bits, inside the body; an empty
//!   body is zero families; a body of 4 GiB or more is refused, as by the text parser;
//! - messages: what protobuf's decoding refuses (a truncated or oversized varint, a length past
//!   the end, a known field of the wrong wire type, a string that is not UTF-8), refused;
//! - families: a non-empty name (any UTF-8), never repeated in the body, a type of the enum;
//! - metrics: the value field of the family's type and no other; label names non-empty, not
//!   `__name__`, once per metric; label sets (order ignored, empty values as absent) unique in the
//!   family; counters not negative (NaN allowed); exemplars of at most 128 characters of label
//!   names and values, names non-empty;
//! - classic histograms: bounds strictly increasing, cumulative counts never decreasing nor above
//!   the histogram's count; summaries: quantiles in [0, 1], strictly increasing;
//! - native histograms: Prometheus' `Validate` (schema, zero threshold, spans against buckets,
//!   bucket counts never negative, the count against the buckets), and one kind of count
//!   (integer deltas or float counts) per histogram. A float histogram's count is held to its
//!   buckets too, up to rounding (Prometheus does not compare them for floats).

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

use super::schema::{MetricFamily, MetricType, Summary};
use super::view::{Exemplar, Family, Histogram, LabelPair, Metric};
use super::wire::{self, fields};
use crate::decode::lex::pair_hash;
use crate::decode::parse::IdHasher;
use crate::decode::ParseError;

/// Bodies this large are refused, as the text parser refuses them (the codec's offsets are 32-bit).
const MAX_BODY: usize = u32::MAX as usize;
/// `MetricFamily.metric`'s field number.
const METRIC_FIELD: u32 = 4;
/// `MetricFamily.name`'s field number.
const NAME_FIELD: u32 = 1;
/// OpenMetrics' bound on an exemplar's label names and values together, in characters.
const EXEMPLAR_CHARS: usize = 128;
/// Labels per metric up to which duplicate names are looked for pairwise (no allocation).
const PAIRWISE_LABELS: usize = 32;
/// What reading a body keeps per metric.
const READ_METRIC_BYTES: usize = std::mem::size_of::<&[u8]>();

/// A rejection's reason, mostly static.
type Reason = Cow<'static, str>;

/// Decodes and checks a whole body into prost's owned messages: for tests and tools that look
/// at a body; the agent reads bodies in place ([`read`]).
pub fn decode(body: &[u8]) -> Result<Vec<MetricFamily>, ParseError> {
    Ok(read(body)?.iter().map(Family::to_schema).collect())
}

/// Reads and checks a whole body: its families in body order, or the first rule it breaks.
pub fn read(body: &[u8]) -> Result<Vec<Family<'_>>, ParseError> {
    read_within(body, usize::MAX)
}

/// [`read`], refusing a body whose reading would keep more than `max_read` bytes of memory
/// (16 bytes per metric, about 80 per family): a metric may take 2 bytes on the wire and a
/// family 4, so a small hostile body could otherwise take 8 to 20 times its size.
pub fn read_within(body: &[u8], max_read: usize) -> Result<Vec<Family<'_>>, ParseError> {
    check_size(body.len())?;
    let mut reader = Reader {
        room: max_read,
        names: HashSet::new(),
        series: HashMap::default(),
        metric: Metric::default(),
        other: Metric::default(),
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let (len, start) = wire::varint(body, pos)
            .map_err(|r| ParseError::at_byte(pos, None, &format!("length prefix: {r}")))?;
        let left = body.len() - start;
        // Before any allocation: the length must be inside the body.
        let len = match usize::try_from(len) {
            Ok(len) if len <= left => len,
            _ => {
                let name = peek_name(&body[start..]);
                return Err(ParseError::at_byte(
                    pos,
                    name,
                    &format!("message length {len} past the end of the body ({left} bytes left)"),
                ));
            }
        };
        let end = start + len;
        reader.take(std::mem::size_of::<Family<'_>>(), start, None)?;
        out.push(reader.family(&body[start..end], start)?);
        pos = end;
    }
    Ok(out)
}

/// Refuses a body of 4 GiB or more.
fn check_size(len: usize) -> Result<(), ParseError> {
    if len >= MAX_BODY {
        return Err(ParseError::at_byte(0, None, "body larger than 4 GiB"));
    }
    Ok(())
}

/// The name in a family message's bytes (the last field 1 before anything malformed), for a
/// message that does not decode or is cut short.
fn peek_name(m: &[u8]) -> Option<&str> {
    let mut name = None;
    for f in fields(m) {
        let Ok(f) = f else { break };
        if f.number == NAME_FIELD {
            if let Ok(n) = f.string() {
                name = Some(n);
            }
        }
    }
    name
}

/// What the checks remember across families and metrics.
struct Reader<'a> {
    /// Bytes the reading may still keep ([`read_within`]).
    room: usize,
    /// Family names seen so far.
    names: HashSet<&'a str>,
    /// The current family's label sets: hash (order-independent) → first metric with it.
    series: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    /// The metric being checked, and another one it is compared with.
    metric: Metric<'a>,
    other: Metric<'a>,
}

impl<'a> Reader<'a> {
    /// Takes `bytes` of the room, or refuses the body at `at`.
    fn take(&mut self, bytes: usize, at: usize, family: Option<&str>) -> Result<(), ParseError> {
        self.room = self.room.checked_sub(bytes).ok_or_else(|| {
            ParseError::at_byte(
                at,
                family,
                "the read body passes the memory it may take (about 8 times its size, within the memory budget)",
            )
        })?;
        Ok(())
    }

    /// Reads and checks the family message `m`, which starts at body offset `base`.
    fn family(&mut self, m: &'a [u8], base: usize) -> Result<Family<'a>, ParseError> {
        let mut fam = Family::default();
        // The header fields first, so that name and type are final (the last occurrence wins)
        // before any metric is checked.
        let mut metrics = 0;
        let mut walk = fields(m);
        while let Some(f) = walk.next() {
            let f = f.map_err(|e| {
                ParseError::at_byte(
                    base + walk.offset(),
                    peek_name(m),
                    &format!("MetricFamily: {e}"),
                )
            })?;
            let at = |e: wire::WireError, field: &str| {
                ParseError::at_byte(
                    base + f.at,
                    peek_name(m),
                    &format!("MetricFamily.{field}: {e}"),
                )
            };
            match f.number {
                NAME_FIELD => fam.name = f.string().map_err(|e| at(e, "name"))?,
                2 => fam.help = f.string().map_err(|e| at(e, "help"))?,
                3 => fam.r#type = f.int32().map_err(|e| at(e, "type"))?,
                METRIC_FIELD => {
                    f.bytes().map_err(|e| at(e, "metric"))?;
                    metrics += 1;
                }
                5 => fam.unit = f.string().map_err(|e| at(e, "unit"))?,
                _ => {}
            }
        }
        let kind = self.header(&fam, base)?;
        // Then the metrics in order, each checked once read.
        self.take(metrics * READ_METRIC_BYTES, base, Some(fam.name))?;
        fam.metrics.reserve_exact(metrics);
        self.series.clear();
        for f in fields(m).map_while(Result::ok) {
            if f.number != METRIC_FIELD {
                continue;
            }
            let Ok(raw) = f.bytes() else { continue };
            let index = fam.metrics.len();
            let error = |r: &dyn std::fmt::Display| {
                ParseError::at_byte(
                    base + f.at,
                    Some(fam.name),
                    &format!("metric {}: {r}", index + 1),
                )
            };
            self.metric.read(raw).map_err(|e| error(&e))?;
            self.check(kind, &fam.metrics).map_err(|r| error(&r))?;
            fam.metrics.push(raw);
        }
        Ok(fam)
    }

    /// The family's own rules: a name, not seen before, and a known type.
    fn header(&mut self, fam: &Family<'a>, base: usize) -> Result<MetricType, ParseError> {
        if fam.name.is_empty() {
            return Err(ParseError::at_byte(base, None, "family without name"));
        }
        let Ok(kind) = MetricType::try_from(fam.r#type) else {
            return Err(ParseError::at_byte(
                base,
                Some(fam.name),
                &format!("type {} is not a metric type", fam.r#type),
            ));
        };
        if !self.names.insert(fam.name) {
            return Err(ParseError::at_byte(
                base,
                Some(fam.name),
                "second family with this name",
            ));
        }
        Ok(kind)
    }

    /// Checks the metric just read against the family's type and the metrics before it
    /// (`before`, the family's metrics so far).
    fn check(&mut self, kind: MetricType, before: &[&'a [u8]]) -> Result<(), Reason> {
        let m = &self.metric;
        value_fields(kind, m)?;
        let hash = label_set(&m.label)?;
        match self.series.entry(hash) {
            Entry::Vacant(v) => {
                v.insert(before.len() as u32);
            }
            // A label set behind a hash collision with another set is not checked further,
            // as in the text parser; the merge's deduplication still applies to it.
            Entry::Occupied(o) => {
                self.other.load(before[*o.get() as usize]);
                if same_label_set(&self.other.label, &m.label) {
                    return Err(Cow::Owned(format!(
                        "duplicate series (the same labels as metric {})",
                        o.get() + 1
                    )));
                }
            }
        }
        if let Some(c) = &m.counter {
            if c.value < 0.0 {
                return Err(Cow::Owned(format!("negative counter value {}", c.value)));
            }
            if let Some(e) = &c.exemplar {
                exemplar(e)?;
            }
        }
        if let Some(s) = &m.summary {
            summary(s)?;
        }
        if let Some(h) = &m.histogram {
            histogram(h)?;
        }
        Ok(())
    }
}

/// The family's type's value field is present, and no other.
fn value_fields(kind: MetricType, m: &Metric) -> Result<(), Reason> {
    let present = [
        ("counter", m.counter.is_some()),
        ("gauge", m.gauge.is_some()),
        ("summary", m.summary.is_some()),
        ("untyped", m.untyped.is_some()),
        ("histogram", m.histogram.is_some()),
    ];
    let (type_name, field) = match kind {
        MetricType::Counter => ("counter", "counter"),
        MetricType::Gauge => ("gauge", "gauge"),
        MetricType::Summary => ("summary", "summary"),
        MetricType::Untyped => ("untyped", "untyped"),
        MetricType::Histogram => ("histogram", "histogram"),
        MetricType::GaugeHistogram => ("gauge histogram", "histogram"),
    };
    for (name, set) in present {
        if name == field && !set {
            return Err(Cow::Owned(format!(
                "{type_name} metric without the {field} field"
            )));
        }
        if name != field && set {
            return Err(Cow::Owned(format!(
                "{type_name} metric with the {name} field set"
            )));
        }
    }
    Ok(())
}

/// Checks a metric's label names; returns its label set's hash (order-independent, empty values
/// left out).
fn label_set(labels: &[LabelPair]) -> Result<u64, Reason> {
    let mut hash = 0u64;
    for (i, l) in labels.iter().enumerate() {
        if l.name.is_empty() {
            return Err(Cow::Borrowed("empty label name"));
        }
        if l.name == "__name__" {
            return Err(Cow::Borrowed("label named __name__"));
        }
        if labels.len() <= PAIRWISE_LABELS && labels[..i].iter().any(|o| o.name == l.name) {
            return Err(Cow::Owned(format!("label {:?} twice", l.name)));
        }
        if !l.value.is_empty() {
            hash = hash.wrapping_add(pair_hash(l.name.as_bytes(), l.value.as_bytes()));
        }
    }
    if labels.len() > PAIRWISE_LABELS {
        let mut names: Vec<&str> = labels.iter().map(|l| l.name).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Cow::Owned(format!("label {:?} twice", w[0])));
        }
    }
    Ok(hash)
}

/// Whether two metrics' labels are one label set (order ignored, empty values as absent). Only
/// called when their hashes are equal.
fn same_label_set(a: &[LabelPair], b: &[LabelPair]) -> bool {
    sorted_set(a) == sorted_set(b)
}

/// A label set's non-empty labels, sorted (rare paths only: it allocates).
fn sorted_set<'a>(labels: &[LabelPair<'a>]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = labels
        .iter()
        .filter(|l| !l.value.is_empty())
        .map(|l| (l.name, l.value))
        .collect();
    v.sort_unstable();
    v
}

/// OpenMetrics' exemplar rules: label names non-empty, at most 128 characters of names and
/// values.
fn exemplar(e: &Exemplar) -> Result<(), Reason> {
    let mut chars = 0;
    for l in e.label.iter() {
        if l.name.is_empty() {
            return Err(Cow::Borrowed("exemplar with an empty label name"));
        }
        chars += l.name.chars().count() + l.value.chars().count();
    }
    if chars > EXEMPLAR_CHARS {
        return Err(Cow::Owned(format!(
            "exemplar labels of {chars} characters (at most {EXEMPLAR_CHARS})"
        )));
    }
    Ok(())
}

/// Quantiles in [0, 1], strictly increasing.
fn summary(s: &Summary) -> Result<(), Reason> {
    let mut previous = None;
    for q in &s.quantile {
        if !(0.0..=1.0).contains(&q.quantile) {
            return Err(Cow::Owned(format!(
                "quantile {} outside [0, 1]",
                q.quantile
            )));
        }
        if previous.is_some_and(|p| q.quantile <= p) {
            return Err(Cow::Owned(format!(
                "quantile {} not above the one before",
                q.quantile
            )));
        }
        previous = Some(q.quantile);
    }
    Ok(())
}

/// A count, integer or float (a float one overrides the integer one when it is > 0).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Count {
    Int(u64),
    Float(f64),
}

impl Count {
    fn of(int: u64, float: f64) -> Count {
        if float > 0.0 {
            Count::Float(float)
        } else {
            Count::Int(int)
        }
    }

    /// `self < other`, exactly when both are integers.
    fn below(self, other: Count) -> bool {
        match (self, other) {
            (Count::Int(a), Count::Int(b)) => a < b,
            (a, b) => a.to_f64() < b.to_f64(),
        }
    }

    fn to_f64(self) -> f64 {
        match self {
            Count::Int(n) => n as f64,
            Count::Float(x) => x,
        }
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Count::Int(n) => write!(f, "{n}"),
            Count::Float(x) => write!(f, "{x}"),
        }
    }
}

/// A histogram's classic buckets, exemplars and native part.
fn histogram(h: &Histogram) -> Result<(), Reason> {
    let count = Count::of(h.sample_count, h.sample_count_float);
    let mut previous: Option<(f64, Count)> = None;
    for (i, b) in h.bucket.iter().enumerate() {
        let n = i + 1;
        let c = Count::of(b.cumulative_count, b.cumulative_count_float);
        if b.upper_bound.is_nan() {
            return Err(Cow::Owned(format!("bucket {n}: upper bound NaN")));
        }
        if let Some((bound, before)) = previous {
            if b.upper_bound <= bound {
                return Err(Cow::Owned(format!(
                    "bucket {n}: upper bound {} not above the one before ({bound})",
                    b.upper_bound
                )));
            }
            if c.below(before) {
                return Err(Cow::Owned(format!(
                    "bucket {n}: cumulative count {c} below the one before ({before})"
                )));
            }
        }
        if count.below(c) {
            return Err(Cow::Owned(format!(
                "bucket {n}: cumulative count {c} above the histogram's count {count}"
            )));
        }
        if let Some(e) = &b.exemplar {
            exemplar(e)?;
        }
        previous = Some((b.upper_bound, c));
    }
    for e in &h.exemplars {
        exemplar(e)?;
    }
    if is_native(h) {
        native(h)?;
    }
    Ok(())
}

/// Whether a histogram has a native part: any span, a zero bucket (a zero threshold other
/// than 0, NaN included, or a zero count), or native bucket counts. An empty native histogram
/// has a no-op span (offset 0, length 0).
pub(super) fn is_native(h: &Histogram) -> bool {
    !h.negative_span.is_empty()
        || !h.positive_span.is_empty()
        || h.zero_threshold != 0.0
        || h.zero_count > 0
        || h.zero_count_float > 0.0
        || !h.negative_delta.is_empty()
        || !h.positive_delta.is_empty()
        || !h.negative_count.is_empty()
        || !h.positive_count.is_empty()
}

/// Relative difference tolerated between a float histogram's count and its buckets' sum: the
/// rounding of summing many float counts (Prometheus does not compare them at all for floats).
const FLOAT_SLACK: f64 = 1e-9;

/// `x >= 0`, false for NaN.
fn at_least_zero(x: f64) -> bool {
    x >= 0.0
}

/// Prometheus' `Validate` of a native histogram, and one kind of counts throughout.
fn native(h: &Histogram) -> Result<(), Reason> {
    if !(-4..=8).contains(&h.schema) {
        return Err(Cow::Owned(format!(
            "native histogram schema {} outside -4..=8",
            h.schema
        )));
    }
    if !at_least_zero(h.zero_threshold) {
        return Err(Cow::Owned(format!(
            "zero threshold {} negative or NaN",
            h.zero_threshold
        )));
    }
    let sides = [
        (
            "negative",
            &h.negative_span,
            &h.negative_delta,
            &h.negative_count,
        ),
        (
            "positive",
            &h.positive_span,
            &h.positive_delta,
            &h.positive_count,
        ),
    ];
    for (side, _, deltas, counts) in sides {
        if !deltas.is_empty() && !counts.is_empty() {
            return Err(Cow::Owned(format!(
                "{side} buckets with both deltas and counts"
            )));
        }
    }
    let float = h.sample_count_float > 0.0
        || h.zero_count_float > 0.0
        || !h.negative_count.is_empty()
        || !h.positive_count.is_empty();
    if float && (!h.negative_delta.is_empty() || !h.positive_delta.is_empty()) {
        return Err(Cow::Borrowed("mixes integer and float buckets"));
    }
    for (side, spans, deltas, counts) in sides {
        let mut needed = 0u64;
        for (i, s) in spans.iter().enumerate() {
            if i > 0 && s.offset < 0 {
                return Err(Cow::Owned(format!(
                    "{side} span {} with negative offset {}",
                    i + 1,
                    s.offset
                )));
            }
            needed += u64::from(s.length);
        }
        let have = if float { counts.len() } else { deltas.len() };
        if needed != have as u64 {
            return Err(Cow::Owned(format!(
                "{side} spans need {needed} buckets, have {have}"
            )));
        }
    }
    if float {
        float_counts(h)
    } else {
        integer_counts(h)
    }
}

/// An integer histogram's buckets: never negative, and together with the zero bucket equal to
/// the count (at most the count when the sum is NaN).
fn integer_counts(h: &Histogram) -> Result<(), Reason> {
    let mut total = u128::from(h.zero_count);
    for (side, deltas) in [
        ("negative", &h.negative_delta),
        ("positive", &h.positive_delta),
    ] {
        let mut running = 0i128;
        for (i, d) in deltas.iter().enumerate() {
            running += i128::from(*d);
            if running < 0 {
                return Err(Cow::Owned(format!(
                    "{side} bucket {} with count {running}",
                    i + 1
                )));
            }
            total += running as u128;
        }
    }
    let count = u128::from(h.sample_count);
    if h.sample_sum.is_nan() {
        if total > count {
            return Err(Cow::Owned(format!(
                "{total} observations in buckets, more than the count {count}"
            )));
        }
    } else if total != count {
        return Err(Cow::Owned(format!(
            "{total} observations in buckets, but the count is {count}"
        )));
    }
    Ok(())
}

/// A float histogram's counts: never negative nor NaN, and together with the zero bucket equal
/// to the count (at most the count when the sum is NaN), up to rounding.
fn float_counts(h: &Histogram) -> Result<(), Reason> {
    if !at_least_zero(h.zero_count_float) {
        return Err(Cow::Owned(format!(
            "zero bucket with count {}",
            h.zero_count_float
        )));
    }
    let mut total = h.zero_count_float;
    for (side, counts) in [
        ("negative", &h.negative_count),
        ("positive", &h.positive_count),
    ] {
        for (i, c) in counts.iter().enumerate() {
            if !at_least_zero(*c) {
                return Err(Cow::Owned(format!(
                    "{side} bucket {} with count {c}",
                    i + 1
                )));
            }
            total += c;
        }
    }
    let count = h.sample_count_float;
    let close = total.is_finite()
        && count.is_finite()
        && (total - count).abs() <= FLOAT_SLACK * total.abs().max(count.abs());
    // A NaN count is within nothing.
    let within = total <= count || close;
    if h.sample_sum.is_nan() {
        if !within {
            return Err(Cow::Owned(format!(
                "{total} observations in buckets, more than the count {count}"
            )));
        }
    } else if total != count && !close {
        return Err(Cow::Owned(format!(
            "{total} observations in buckets, but the count is {count}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

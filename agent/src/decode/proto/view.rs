//! The exposition's messages as views of the body: names and values are `&str` slices of it,
//! and a family keeps its metrics as the bytes of each. A metric is read into a [`Metric`] kept
//! by the caller and reused from metric to metric (its vectors keep their capacity), so reading
//! a body allocates per family, not per metric or label, as the text parser.
//!
//! Semantics are protobuf's (proto3, as Prometheus decodes): unknown fields skipped, an unset
//! scalar reads as zero, a scalar given twice keeps the last, a repeated scalar packed or not,
//! a singular message given twice is merged into the first. One exception, said in the error:
//! an exemplar given twice in one message (which protobuf would merge) is refused; no client
//! writes it.
//!
//! `to_schema` turns a view into prost's owned messages, for tests and for renderings that
//! rebuild metrics.

use super::schema::{self, BucketSpan, Gauge, MetricType, Quantile, Summary, Timestamp, Untyped};
use super::wire::{fields, Field, Value, WireError};

/// `r`, its error placed inside field `path`.
fn within<T>(r: Result<T, WireError>, path: &str) -> Result<T, WireError> {
    r.map_err(|e| e.within(path))
}

/// A family: its header fields (the last of each) and its metrics' bytes, in order, each one
/// that [`Metric::read`] accepted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Family<'a> {
    pub name: &'a str,
    pub help: &'a str,
    pub r#type: i32,
    pub unit: &'a str,
    pub metrics: Vec<&'a [u8]>,
}

impl<'a> Family<'a> {
    /// The family's type (untyped for a number outside the enum, which `decode` refuses).
    pub fn metric_type(&self) -> MetricType {
        MetricType::try_from(self.r#type).unwrap_or(MetricType::Untyped)
    }

    /// Each metric in turn, read into `m`.
    pub fn each_metric(&self, m: &mut Metric<'a>, mut f: impl FnMut(&Metric<'a>)) {
        for raw in &self.metrics {
            m.load(raw);
            f(m);
        }
    }

    pub fn to_schema(&self) -> schema::MetricFamily {
        let mut metric = Vec::with_capacity(self.metrics.len());
        self.each_metric(&mut Metric::default(), |m| metric.push(m.to_schema()));
        schema::MetricFamily {
            name: self.name.into(),
            help: self.help.into(),
            r#type: self.r#type,
            metric,
            unit: self.unit.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelPair<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

impl<'a> LabelPair<'a> {
    fn read(b: &'a [u8]) -> Result<LabelPair<'a>, WireError> {
        // How every client writes a label: name, then value, each shorter than 128 bytes.
        if let [0x0a, n @ 0..=0x7f, rest @ ..] = b {
            let n = usize::from(*n);
            if let Some([0x12, m @ 0..=0x7f, value @ ..]) = rest.get(n..) {
                if usize::from(*m) == value.len() {
                    if let Ok(s) = std::str::from_utf8(b) {
                        let (name, value) = (s.get(2..2 + n), s.get(4 + n..));
                        if let (Some(name), Some(value)) = (name, value) {
                            return Ok(LabelPair { name, value });
                        }
                    }
                }
            }
        }
        // One UTF-8 check for the whole message instead of one per string (a fifth of the
        // reading's time): where it passes, a string that starts and ends on its character
        // boundaries is a slice of it; anything else is checked alone.
        let whole = std::str::from_utf8(b).ok();
        let string = |f: &Field<'a>, path: &str| {
            let slice = match (whole, f.value) {
                // The string is the field's last bytes.
                (Some(w), Value::Bytes(s)) => w.get(f.end - s.len()..f.end),
                _ => None,
            };
            slice.map_or_else(|| within(f.string(), path), Ok)
        };
        let mut l = LabelPair::default();
        for f in fields(b) {
            let f = f?;
            match f.number {
                1 => l.name = string(&f, "LabelPair.name")?,
                2 => l.value = string(&f, "LabelPair.value")?,
                _ => {}
            }
        }
        Ok(l)
    }

    pub fn to_schema(self) -> schema::LabelPair {
        schema::LabelPair {
            name: self.name.into(),
            value: self.value.into(),
        }
    }
}

/// An exemplar's labels, read from its message when iterated (exemplars are few).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Labels<'a> {
    exemplar: &'a [u8],
}

impl<'a> Labels<'a> {
    pub fn iter(&self) -> impl Iterator<Item = LabelPair<'a>> + 'a {
        fields(self.exemplar)
            .map_while(Result::ok)
            .filter(|f| f.number == 1)
            .filter_map(|f| LabelPair::read(f.bytes().ok()?).ok())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Exemplar<'a> {
    pub label: Labels<'a>,
    pub value: f64,
    pub timestamp: Option<Timestamp>,
}

impl<'a> Exemplar<'a> {
    /// Reads an exemplar into `slot`, refusing a second one.
    fn read(slot: &mut Option<Exemplar<'a>>, f: &Field<'a>) -> Result<(), WireError> {
        if slot.is_some() {
            return Err(WireError::new(
                "exemplar given twice in one message (protobuf would merge them; not supported)",
            ));
        }
        let b = f.bytes()?;
        let mut e = Exemplar {
            label: Labels { exemplar: b },
            ..Exemplar::default()
        };
        for f in fields(b) {
            let f = f?;
            match f.number {
                1 => drop(within(
                    f.bytes().and_then(LabelPair::read),
                    "Exemplar.label",
                )?),
                2 => e.value = within(f.double(), "Exemplar.value")?,
                3 => within(timestamp(&mut e.timestamp, &f), "Exemplar.timestamp")?,
                _ => {}
            }
        }
        *slot = Some(e);
        Ok(())
    }

    pub fn to_schema(&self) -> schema::Exemplar {
        schema::Exemplar {
            label: self.label.iter().map(LabelPair::to_schema).collect(),
            value: self.value,
            timestamp: self.timestamp,
        }
    }
}

/// Merges a `Timestamp` message into `slot`.
fn timestamp(slot: &mut Option<Timestamp>, f: &Field<'_>) -> Result<(), WireError> {
    let t = slot.get_or_insert_with(Timestamp::default);
    for f in fields(f.bytes()?) {
        let f = f?;
        match f.number {
            1 => t.seconds = within(f.int64(), "Timestamp.seconds")?,
            2 => t.nanos = within(f.int32(), "Timestamp.nanos")?,
            _ => {}
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counter<'a> {
    pub value: f64,
    pub exemplar: Option<Exemplar<'a>>,
    pub start_timestamp: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bucket<'a> {
    pub cumulative_count: u64,
    pub cumulative_count_float: f64,
    pub upper_bound: f64,
    pub exemplar: Option<Exemplar<'a>>,
}

impl<'a> Bucket<'a> {
    fn read(b: &'a [u8]) -> Result<Bucket<'a>, WireError> {
        let mut k = Bucket::default();
        for f in fields(b) {
            let f = f?;
            match f.number {
                1 => k.cumulative_count = within(f.varint(), "Bucket.cumulative_count")?,
                4 => {
                    k.cumulative_count_float = within(f.double(), "Bucket.cumulative_count_float")?
                }
                2 => k.upper_bound = within(f.double(), "Bucket.upper_bound")?,
                3 => within(Exemplar::read(&mut k.exemplar, &f), "Bucket.exemplar")?,
                _ => {}
            }
        }
        Ok(k)
    }
}

/// Mirrors `schema::Histogram`, with borrowed exemplars.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram<'a> {
    pub sample_count: u64,
    pub sample_count_float: f64,
    pub sample_sum: f64,
    pub bucket: Vec<Bucket<'a>>,
    pub start_timestamp: Option<Timestamp>,
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: u64,
    pub zero_count_float: f64,
    pub negative_span: Vec<BucketSpan>,
    pub negative_delta: Vec<i64>,
    pub negative_count: Vec<f64>,
    pub positive_span: Vec<BucketSpan>,
    pub positive_delta: Vec<i64>,
    pub positive_count: Vec<f64>,
    pub exemplars: Vec<Exemplar<'a>>,
}

impl<'a> Histogram<'a> {
    /// Empty, its vectors' capacity kept.
    fn clear(&mut self) {
        let mut vecs = std::mem::take(self);
        vecs.bucket.clear();
        vecs.negative_span.clear();
        vecs.negative_delta.clear();
        vecs.negative_count.clear();
        vecs.positive_span.clear();
        vecs.positive_delta.clear();
        vecs.positive_count.clear();
        vecs.exemplars.clear();
        *self = Histogram {
            bucket: vecs.bucket,
            negative_span: vecs.negative_span,
            negative_delta: vecs.negative_delta,
            negative_count: vecs.negative_count,
            positive_span: vecs.positive_span,
            positive_delta: vecs.positive_delta,
            positive_count: vecs.positive_count,
            exemplars: vecs.exemplars,
            ..Histogram::default()
        };
    }

    /// Merges a `Histogram` message into `self`.
    fn merge(&mut self, b: &'a [u8]) -> Result<(), WireError> {
        for f in fields(b) {
            let f = f?;
            match f.number {
                1 => self.sample_count = within(f.varint(), "Histogram.sample_count")?,
                4 => self.sample_count_float = within(f.double(), "Histogram.sample_count_float")?,
                2 => self.sample_sum = within(f.double(), "Histogram.sample_sum")?,
                3 => self.bucket.push(within(
                    f.bytes().and_then(Bucket::read),
                    "Histogram.bucket",
                )?),
                15 => within(
                    timestamp(&mut self.start_timestamp, &f),
                    "Histogram.start_timestamp",
                )?,
                5 => self.schema = within(f.sint32(), "Histogram.schema")?,
                6 => self.zero_threshold = within(f.double(), "Histogram.zero_threshold")?,
                7 => self.zero_count = within(f.varint(), "Histogram.zero_count")?,
                8 => self.zero_count_float = within(f.double(), "Histogram.zero_count_float")?,
                9 => self
                    .negative_span
                    .push(within(span(&f), "Histogram.negative_span")?),
                10 => within(
                    f.sint64s(&mut self.negative_delta),
                    "Histogram.negative_delta",
                )?,
                11 => within(
                    f.doubles(&mut self.negative_count),
                    "Histogram.negative_count",
                )?,
                12 => self
                    .positive_span
                    .push(within(span(&f), "Histogram.positive_span")?),
                13 => within(
                    f.sint64s(&mut self.positive_delta),
                    "Histogram.positive_delta",
                )?,
                14 => within(
                    f.doubles(&mut self.positive_count),
                    "Histogram.positive_count",
                )?,
                16 => {
                    let mut e = None;
                    within(Exemplar::read(&mut e, &f), "Histogram.exemplars")?;
                    self.exemplars.extend(e);
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn to_schema(&self) -> schema::Histogram {
        schema::Histogram {
            sample_count: self.sample_count,
            sample_count_float: self.sample_count_float,
            sample_sum: self.sample_sum,
            bucket: self
                .bucket
                .iter()
                .map(|b| schema::Bucket {
                    cumulative_count: b.cumulative_count,
                    cumulative_count_float: b.cumulative_count_float,
                    upper_bound: b.upper_bound,
                    exemplar: b.exemplar.as_ref().map(Exemplar::to_schema),
                })
                .collect(),
            start_timestamp: self.start_timestamp,
            schema: self.schema,
            zero_threshold: self.zero_threshold,
            zero_count: self.zero_count,
            zero_count_float: self.zero_count_float,
            negative_span: self.negative_span.clone(),
            negative_delta: self.negative_delta.clone(),
            negative_count: self.negative_count.clone(),
            positive_span: self.positive_span.clone(),
            positive_delta: self.positive_delta.clone(),
            positive_count: self.positive_count.clone(),
            exemplars: self.exemplars.iter().map(Exemplar::to_schema).collect(),
        }
    }
}

fn span(f: &Field<'_>) -> Result<BucketSpan, WireError> {
    let mut s = BucketSpan::default();
    for f in fields(f.bytes()?) {
        let f = f?;
        match f.number {
            1 => s.offset = within(f.sint32(), "BucketSpan.offset")?,
            2 => s.length = within(f.uint32(), "BucketSpan.length")?,
            _ => {}
        }
    }
    Ok(s)
}

/// A metric read from its bytes; kept by the caller and reused, so that reading the next one
/// allocates nothing once the vectors have grown.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metric<'a> {
    pub label: Vec<LabelPair<'a>>,
    pub gauge: Option<Gauge>,
    pub counter: Option<Counter<'a>>,
    pub summary: Option<Summary>,
    pub untyped: Option<Untyped>,
    pub histogram: Option<Histogram<'a>>,
    pub timestamp_ms: i64,
    /// The vectors of the last summary and histogram read, for the next ones.
    spare_summary: Summary,
    spare_histogram: Histogram<'a>,
}

impl<'a> Metric<'a> {
    /// Reads the `Metric` message `b` into `self`, replacing what it held.
    pub fn read(&mut self, b: &'a [u8]) -> Result<(), WireError> {
        self.label.clear();
        self.gauge = None;
        self.counter = None;
        self.untyped = None;
        self.timestamp_ms = 0;
        if let Some(s) = self.summary.take() {
            self.spare_summary = s;
        }
        if let Some(h) = self.histogram.take() {
            self.spare_histogram = h;
        }
        for f in fields(b) {
            let f = f?;
            match f.number {
                1 => self
                    .label
                    .push(within(f.bytes().and_then(LabelPair::read), "Metric.label")?),
                2 => within(
                    only_double(
                        &mut self.gauge.get_or_insert_with(Gauge::default).value,
                        &f,
                        "Gauge.value",
                    ),
                    "Metric.gauge",
                )?,
                3 => within(self.counter(&f), "Metric.counter")?,
                4 => within(self.summary(&f), "Metric.summary")?,
                5 => within(
                    only_double(
                        &mut self.untyped.get_or_insert_with(Untyped::default).value,
                        &f,
                        "Untyped.value",
                    ),
                    "Metric.untyped",
                )?,
                7 => {
                    let spare = &mut self.spare_histogram;
                    let h = self.histogram.get_or_insert_with(|| {
                        let mut h = std::mem::take(spare);
                        h.clear();
                        h
                    });
                    within(f.bytes().and_then(|b| h.merge(b)), "Metric.histogram")?;
                }
                6 => self.timestamp_ms = within(f.int64(), "Metric.timestamp_ms")?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads a metric that [`Metric::read`] accepted before (every metric of a [`Family`]).
    pub fn load(&mut self, b: &'a [u8]) {
        let read = self.read(b);
        debug_assert!(read.is_ok(), "a family's metric was checked: {read:?}");
    }

    fn counter(&mut self, f: &Field<'a>) -> Result<(), WireError> {
        let c = self.counter.get_or_insert_with(Counter::default);
        if let Some(v) = only_value(f) {
            c.value = v;
            return Ok(());
        }
        for f in fields(f.bytes()?) {
            let f = f?;
            match f.number {
                1 => c.value = within(f.double(), "Counter.value")?,
                2 => within(Exemplar::read(&mut c.exemplar, &f), "Counter.exemplar")?,
                3 => within(
                    timestamp(&mut c.start_timestamp, &f),
                    "Counter.start_timestamp",
                )?,
                _ => {}
            }
        }
        Ok(())
    }

    fn summary(&mut self, f: &Field<'a>) -> Result<(), WireError> {
        let spare = &mut self.spare_summary;
        let s = self.summary.get_or_insert_with(|| {
            let mut quantile = std::mem::take(&mut spare.quantile);
            quantile.clear();
            Summary {
                quantile,
                ..Summary::default()
            }
        });
        for f in fields(f.bytes()?) {
            let f = f?;
            match f.number {
                1 => s.sample_count = within(f.varint(), "Summary.sample_count")?,
                2 => s.sample_sum = within(f.double(), "Summary.sample_sum")?,
                3 => s.quantile.push(within(quantile(&f), "Summary.quantile")?),
                4 => within(
                    timestamp(&mut s.start_timestamp, &f),
                    "Summary.start_timestamp",
                )?,
                _ => {}
            }
        }
        Ok(())
    }

    pub fn to_schema(&self) -> schema::Metric {
        schema::Metric {
            label: self.label.iter().map(|l| l.to_schema()).collect(),
            gauge: self.gauge,
            counter: self.counter.map(|c| schema::Counter {
                value: c.value,
                exemplar: c.exemplar.as_ref().map(Exemplar::to_schema),
                start_timestamp: c.start_timestamp,
            }),
            summary: self.summary.clone(),
            untyped: self.untyped,
            histogram: self.histogram.as_ref().map(Histogram::to_schema),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// Merges a message whose only field is its double `value` (`Gauge`, `Untyped`) into `value`.
fn only_double(value: &mut f64, f: &Field<'_>, path: &str) -> Result<(), WireError> {
    if let Some(v) = only_value(f) {
        *value = v;
        return Ok(());
    }
    for f in fields(f.bytes()?) {
        let f = f?;
        if f.number == 1 {
            *value = within(f.double(), path)?;
        }
    }
    Ok(())
}

/// The value of a message that is its field 1, a double, alone (most gauges, counters and
/// untyped values).
fn only_value(f: &Field<'_>) -> Option<f64> {
    match f.value {
        Value::Bytes([0x09, word @ ..]) => word.first_chunk::<8>().filter(|_| word.len() == 8),
        _ => None,
    }
    .map(|w| f64::from_le_bytes(*w))
}

fn quantile(f: &Field<'_>) -> Result<Quantile, WireError> {
    let mut q = Quantile::default();
    for f in fields(f.bytes()?) {
        let f = f?;
        match f.number {
            1 => q.quantile = within(f.double(), "Quantile.quantile")?,
            2 => q.value = within(f.double(), "Quantile.value")?,
            _ => {}
        }
    }
    Ok(q)
}

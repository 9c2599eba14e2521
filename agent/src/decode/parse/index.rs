//! The index a parse leaves: per family its name, type, HELP and UNIT, per sample the offsets of
//! its name, label block and line end and a hash of its series. Everything points into the
//! body; nothing is copied. The merge reads these types and nothing else of the parser.

use std::borrow::Cow;

use super::lex;
use crate::decode::Format;

/// A metric family's type. Text 0.0.4's `untyped` is [`MType::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum MType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl MType {
    /// How many types there are.
    pub(crate) const COUNT: usize = 8;

    /// The type an OpenMetrics TYPE line names.
    pub(super) fn from_om(s: &[u8]) -> Option<MType> {
        Some(match s {
            b"counter" => MType::Counter,
            b"gauge" => MType::Gauge,
            b"histogram" => MType::Histogram,
            b"gaugehistogram" => MType::GaugeHistogram,
            b"summary" => MType::Summary,
            b"info" => MType::Info,
            b"stateset" => MType::StateSet,
            b"unknown" => MType::Unknown,
            _ => return None,
        })
    }

    /// The type a text 0.0.4 TYPE line names.
    pub(super) fn from_text(s: &[u8]) -> Option<MType> {
        Some(match s {
            b"counter" => MType::Counter,
            b"gauge" => MType::Gauge,
            b"histogram" => MType::Histogram,
            b"summary" => MType::Summary,
            b"untyped" => MType::Unknown,
            _ => return None,
        })
    }

    pub(crate) fn name(self, format: Format) -> &'static str {
        match self {
            MType::Counter => "counter",
            MType::Gauge => "gauge",
            MType::Histogram => "histogram",
            MType::GaugeHistogram => "gaugehistogram",
            MType::Summary => "summary",
            MType::Info => "info",
            MType::StateSet => "stateset",
            MType::Unknown => match format {
                Format::Text | Format::Protobuf => "untyped",
                Format::OpenMetrics => "unknown",
            },
        }
    }

    /// The sample-name suffixes a family of this type owns in `format`.
    pub(crate) fn suffixes(self, format: Format) -> &'static [Suffix] {
        use Suffix::*;
        match (format, self) {
            (Format::OpenMetrics, MType::Counter) => &[Total, Created],
            (Format::OpenMetrics, MType::Histogram) => &[Bucket, Sum, Count, Created],
            (Format::OpenMetrics, MType::GaugeHistogram) => &[Bucket, GSum, GCount],
            (Format::OpenMetrics, MType::Summary) => &[Bare, Sum, Count, Created],
            (Format::OpenMetrics, MType::Info) => &[Info],
            // The series Prometheus stores from a protobuf family are the text format's.
            (Format::Text | Format::Protobuf, MType::Histogram | MType::GaugeHistogram) => {
                &[Bucket, Sum, Count]
            }
            (Format::Text | Format::Protobuf, MType::Summary) => &[Bare, Sum, Count],
            _ => &[Bare],
        }
    }
}

/// Which of its family's sample names a sample has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Suffix {
    Bare = 0,
    Total,
    Created,
    Bucket,
    Sum,
    Count,
    GSum,
    GCount,
    Info,
}

impl Suffix {
    pub(crate) fn text(self) -> &'static [u8] {
        match self {
            Suffix::Bare => b"",
            Suffix::Total => b"_total",
            Suffix::Created => b"_created",
            Suffix::Bucket => b"_bucket",
            Suffix::Sum => b"_sum",
            Suffix::Count => b"_count",
            Suffix::GSum => b"_gsum",
            Suffix::GCount => b"_gcount",
            Suffix::Info => b"_info",
        }
    }

    pub(crate) fn bit(self) -> u16 {
        1 << (self as u8)
    }

    /// The suffix among `allowed` that makes `family` into `sample`, if any.
    #[inline]
    pub(super) fn of(family: &[u8], sample: &[u8], allowed: &[Suffix]) -> Option<Suffix> {
        if sample.len() < family.len() || !lex::bytes_eq(&sample[..family.len()], family) {
            return None;
        }
        let rest = &sample[family.len()..];
        allowed
            .iter()
            .copied()
            .find(|s| lex::bytes_eq(s.text(), rest))
    }
}

/// One metric family of a parsed body.
#[derive(Clone, Debug)]
pub(crate) struct Family<'a> {
    pub name: &'a [u8],
    pub mtype: MType,
    /// Raw (escaped) HELP text.
    pub help: Option<&'a [u8]>,
    pub unit: Option<&'a [u8]>,
    /// Range into [`Parsed::samples`].
    pub samples: (u32, u32),
    /// Bit set of the [`Suffix`]es its samples use.
    pub suffixes: u16,
    /// Text families: whether the family also satisfies OpenMetrics' rules, so that it may keep
    /// its type when rendered as OpenMetrics. Always true for OpenMetrics bodies.
    pub om_ok: bool,
    /// Some sample has a label named like an identity label.
    pub ident_labels: bool,
    /// The validator's state while parsing: a sample line was seen, a TYPE line was seen.
    pub(super) has_samples: bool,
    pub(super) has_type: bool,
}

impl<'a> Family<'a> {
    /// A family as its first line opens it: untyped until a TYPE line says otherwise.
    pub(super) fn new(name: &'a [u8]) -> Family<'a> {
        Family {
            name,
            mtype: MType::Unknown,
            help: None,
            unit: None,
            samples: (0, 0),
            suffixes: 0,
            om_ok: true,
            ident_labels: false,
            has_samples: false,
            has_type: false,
        }
    }
}

/// Sample flags.
pub(crate) const HAS_LABELS: u8 = 1;
/// A label is named like an identity label (`namespace`, `pod`, `container`, `endpoint`).
pub(crate) const IDENT_LABEL: u8 = 2;
/// The line can't be copied as it is: blanks or a trailing comma only text allows, or an
/// unknown escape that must be re-escaped.
pub(crate) const SLOW: u8 = 4;

/// The same series appeared earlier in the body (a duplicate, or a later sample of a series
/// with timestamps); the merge writes the first only.
pub(crate) const DUP: u8 = 8;

/// A hasher for keys that already are hashes.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One sample line: offsets into the body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SampleRef {
    pub start: u32,
    pub name_end: u32,
    /// Index after the label block's `}`; `name_end` when there is none.
    pub labels_end: u32,
    /// Line end (the `\n`, excluded).
    pub end: u32,
    pub family: u32,
    /// Name hash plus the order-independent hash of the label set (escapes as written).
    pub hash: u64,
    pub suffix: Suffix,
    pub flags: u8,
}

/// A checked body and its index.
pub(crate) struct Parsed<'a> {
    pub body: &'a [u8],
    pub format: Format,
    pub families: Vec<Family<'a>>,
    /// Borrowed when the index was prepared earlier ([`crate::decode::Prepared`]).
    pub samples: Cow<'a, [SampleRef]>,
}

/// A family with its slices as offsets into the body, so that it can be kept beside the body.
#[derive(Clone, Debug)]
pub(crate) struct FamilyAt {
    name: (u32, u32),
    help: Option<(u32, u32)>,
    unit: Option<(u32, u32)>,
    mtype: MType,
    samples: (u32, u32),
    suffixes: u16,
    om_ok: bool,
    ident_labels: bool,
}

fn offsets(body: &[u8], s: &[u8]) -> (u32, u32) {
    let start = (s.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    (start as u32, (start + s.len()) as u32)
}

fn slice(body: &[u8], (a, b): (u32, u32)) -> &[u8] {
    body.get(a as usize..b as usize).unwrap_or_default()
}

impl FamilyAt {
    pub(crate) fn from_family(body: &[u8], f: &Family<'_>) -> FamilyAt {
        FamilyAt {
            name: offsets(body, f.name),
            help: f.help.map(|h| offsets(body, h)),
            unit: f.unit.map(|u| offsets(body, u)),
            mtype: f.mtype,
            samples: f.samples,
            suffixes: f.suffixes,
            om_ok: f.om_ok,
            ident_labels: f.ident_labels,
        }
    }

    pub(crate) fn family<'a>(&self, body: &'a [u8]) -> Family<'a> {
        Family {
            name: slice(body, self.name),
            mtype: self.mtype,
            help: self.help.map(|h| slice(body, h)),
            unit: self.unit.map(|u| slice(body, u)),
            samples: self.samples,
            suffixes: self.suffixes,
            om_ok: self.om_ok,
            ident_labels: self.ident_labels,
            has_samples: self.samples.1 > self.samples.0,
            has_type: true,
        }
    }
}

//! The parser: one pass over a body's bytes that checks every line against its format and records
//! an index into the body (families, and per sample the offsets of its name, label block and line
//! end). Nothing is copied; the only allocations are per body and per family, never per sample.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use super::lex::{
    self, bound_value, is_int, is_number, is_realnumber, lex_labels, name_hash, pair_hash, to_f64,
    BlockInfo, Label,
};
use super::{Format, ParseError};

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
    fn from_om(s: &[u8]) -> Option<MType> {
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

    fn from_text(s: &[u8]) -> Option<MType> {
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
                Format::Text => "untyped",
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
            (Format::Text, MType::Histogram) => &[Bucket, Sum, Count],
            (Format::Text, MType::Summary) => &[Bare, Sum, Count],
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
}

#[inline]
fn match_suffix(family: &[u8], sample: &[u8], allowed: &[Suffix]) -> Option<Suffix> {
    if sample.len() < family.len() || !lex::bytes_eq(&sample[..family.len()], family) {
        return None;
    }
    let rest = &sample[family.len()..];
    allowed
        .iter()
        .copied()
        .find(|s| lex::bytes_eq(s.text(), rest))
}

/// Whether a label name is one of the identity labels.
#[inline]
fn is_identity_name(n: &[u8]) -> bool {
    match (n.len(), n.first()) {
        (9, Some(b'n')) => n == b"namespace",
        (3, Some(b'p')) => n == b"pod",
        (9, Some(b'c')) => n == b"container",
        (8, Some(b'e')) => n == b"endpoint",
        _ => false,
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
    has_samples: bool,
    has_type: bool,
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

type SeriesMap = HashMap<u64, u32, std::hash::BuildHasherDefault<IdHasher>>;

/// Whether two sample lines of one body are the same series: same name, same labels in any
/// order, values compared unescaped. Only called when their hashes are equal.
pub(crate) fn same_series(b: &[u8], strict: bool, x: &SampleRef, y: &SampleRef) -> bool {
    let name = |s: &SampleRef| &b[s.start as usize..s.name_end as usize];
    if name(x) != name(y) {
        return false;
    }
    series_labels(b, strict, x) == series_labels(b, strict, y)
}

/// The sorted, unescaped labels of a sample line (rare paths only: it allocates).
pub(crate) fn series_labels(b: &[u8], strict: bool, s: &SampleRef) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if s.flags & HAS_LABELS == 0 {
        return out;
    }
    let mut i = s.name_end as usize;
    while i < s.end as usize && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    let mut labels = Vec::new();
    let mut info = BlockInfo::default();
    if lex_labels(&b[..s.end as usize], i, strict, &mut labels, &mut info).is_err() {
        return out;
    }
    for l in &labels {
        let mut v = Vec::new();
        lex::unescape(l.value(b), &mut v);
        out.push((l.name(b).to_vec(), v));
    }
    out.sort();
    out
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
    /// Borrowed when the index was prepared earlier ([`super::Prepared`]).
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

/// Parses and checks a whole body.
pub(crate) fn parse(body: &[u8], format: Format) -> Result<Parsed<'_>, ParseError> {
    let mut p = Parser::new(body, format);
    match p.run() {
        Ok(()) => Ok(p.finish()),
        Err((pos, reason)) => Err(ParseError::at(body, pos, reason)),
    }
}

type Res<T> = Result<T, (usize, &'static str)>;

/// Histogram/summary state of one metric (label set without `le`/`quantile`).
struct Group {
    key: u64,
    last_le: f64,
    last_bucket: f64,
    inf: Option<f64>,
    count: Option<f64>,
    sum: Option<f64>,
    neg_bucket: bool,
}

impl Group {
    fn new(key: u64) -> Group {
        Group {
            key,
            last_le: f64::NEG_INFINITY,
            last_bucket: 0.0,
            inf: None,
            count: None,
            sum: None,
            neg_bucket: false,
        }
    }
}

struct Parser<'a> {
    b: &'a [u8],
    format: Format,
    strict: bool,
    families: Vec<Family<'a>>,
    samples: Vec<SampleRef>,
    current: Option<u32>,
    /// OpenMetrics: every family name and owned sample name seen so far, with its family.
    claimed: HashMap<Vec<u8>, u32>,
    /// Text: families by name.
    by_name: HashMap<&'a [u8], u32>,
    noncontiguous: bool,
    labels: Vec<Label>,
    ex_labels: Vec<Label>,
    group: Option<Group>,
    groups_done: HashSet<u64>,
    prev_series: Option<(u64, Option<(usize, usize)>)>,
    /// Series seen so far in the body: hash → first sample.
    seen: SeriesMap,
    eof: bool,
}

impl<'a> Parser<'a> {
    fn new(b: &'a [u8], format: Format) -> Parser<'a> {
        Parser {
            b,
            format,
            strict: format == Format::OpenMetrics,
            families: Vec::new(),
            samples: Vec::with_capacity(b.len() / 64),
            current: None,
            claimed: HashMap::new(),
            by_name: HashMap::new(),
            noncontiguous: false,
            labels: Vec::with_capacity(16),
            ex_labels: Vec::new(),
            group: None,
            groups_done: HashSet::new(),
            prev_series: None,
            seen: SeriesMap::with_capacity_and_hasher(b.len() / 96, Default::default()),
            eof: false,
        }
    }

    fn finish(mut self) -> Parsed<'a> {
        if self.noncontiguous {
            self.samples.sort_by_key(|s| s.family);
        }
        let mut i = 0;
        while i < self.samples.len() {
            let f = self.samples[i].family;
            let mut j = i + 1;
            while j < self.samples.len() && self.samples[j].family == f {
                j += 1;
            }
            if let Some(fam) = self.families.get_mut(f as usize) {
                fam.samples = (i as u32, j as u32);
            }
            i = j;
        }
        Parsed {
            body: self.b,
            format: self.format,
            families: self.families,
            samples: Cow::Owned(self.samples),
        }
    }

    fn run(&mut self) -> Res<()> {
        let b = self.b;
        if b.len() >= u32::MAX as usize {
            return Err((0, "body larger than 4 GiB"));
        }
        if let Err(e) = std::str::from_utf8(b) {
            return Err((e.valid_up_to(), "invalid UTF-8"));
        }
        let mut ls = 0;
        while ls < b.len() {
            let le = memchr::memchr(b'\n', &b[ls..]).map_or(b.len(), |p| ls + p);
            if self.eof {
                return Err((ls, "text after # EOF"));
            }
            if self.strict {
                self.om_line(ls, le)?;
                if le == b.len() && !self.eof {
                    return Err((le, "line does not end with a newline"));
                }
            } else {
                self.text_line(ls, le)?;
            }
            ls = le + 1;
        }
        if self.strict && !self.eof {
            return Err((b.len(), "missing # EOF"));
        }
        self.close_family()
    }

    // ---- OpenMetrics lines ---------------------------------------------------------------

    fn om_line(&mut self, ls: usize, le: usize) -> Res<()> {
        let b = self.b;
        let line = &b[ls..le];
        if line.is_empty() {
            return Err((ls, "blank line"));
        }
        if line[0] != b'#' {
            return self.sample(ls, le);
        }
        if line == b"# EOF" {
            self.eof = true;
            return Ok(());
        }
        let (kind, rest) = if let Some(r) = line.strip_prefix(b"# HELP ") {
            (0, r)
        } else if let Some(r) = line.strip_prefix(b"# TYPE ") {
            (1, r)
        } else if let Some(r) = line.strip_prefix(b"# UNIT ") {
            (2, r)
        } else {
            return Err((
                ls,
                "comment lines other than HELP, TYPE, UNIT and EOF are not allowed",
            ));
        };
        let ns = ls + 7;
        let ne = ns + lex::scan_name(rest, 0);
        if ne == ns {
            return Err((ns, "invalid metric name in metadata"));
        }
        if b.get(ne) != Some(&b' ') || ne >= le {
            return Err((ne, "expected a space after the metric name"));
        }
        let name = &b[ns..ne];
        let arg = &b[ne + 1..le];
        let f = self.om_meta_family(name, ls)?;
        let fam = &mut self.families[f as usize];
        match kind {
            0 => {
                if fam.help.is_some() {
                    return Err((ls, "second HELP line for this family"));
                }
                fam.help = Some(arg);
            }
            1 => {
                if fam.has_type {
                    return Err((ls, "second TYPE line for this family"));
                }
                let t = MType::from_om(arg).ok_or((ne + 1, "unknown metric type"))?;
                if fam.unit.is_some_and(|u| !u.is_empty())
                    && matches!(t, MType::Info | MType::StateSet)
                {
                    return Err((ne + 1, "info and stateset families cannot have a unit"));
                }
                fam.has_type = true;
                fam.mtype = t;
                self.claim_type(f, ls)?;
            }
            _ => {
                if fam.unit.is_some() {
                    return Err((ls, "second UNIT line for this family"));
                }
                if !arg.is_empty() {
                    if !arg.iter().all(|&c| lex::is_name_char(c)) {
                        return Err((ne + 1, "invalid unit"));
                    }
                    let ok = name.len() > arg.len() + 1
                        && name.ends_with(arg)
                        && name[name.len() - arg.len() - 1] == b'_';
                    if !ok {
                        return Err((ne + 1, "metric name does not end with _<unit>"));
                    }
                    if matches!(fam.mtype, MType::Info | MType::StateSet) {
                        return Err((ne + 1, "info and stateset families cannot have a unit"));
                    }
                }
                fam.unit = Some(arg);
            }
        }
        Ok(())
    }

    /// The family a metadata line is about: the current one if the name matches (and it has no
    /// samples yet), else a new one.
    fn om_meta_family(&mut self, name: &'a [u8], ls: usize) -> Res<u32> {
        if let Some(c) = self.current {
            let fam = &self.families[c as usize];
            if fam.name == name {
                if fam.has_samples {
                    return Err((ls, "metadata line after the family's samples"));
                }
                return Ok(c);
            }
        }
        self.new_family(name, ls)
    }

    fn new_family(&mut self, name: &'a [u8], pos: usize) -> Res<u32> {
        self.close_family()?;
        let f = self.families.len() as u32;
        if self.strict {
            if self.claimed.contains_key(name) {
                return Err((
                    pos,
                    "metric family appears twice or clashes with another family",
                ));
            }
            self.claimed.insert(name.to_vec(), f);
        } else {
            self.by_name.insert(name, f);
        }
        self.families.push(Family {
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
        });
        self.current = Some(f);
        Ok(f)
    }

    fn claim_type(&mut self, f: u32, pos: usize) -> Res<()> {
        let fam = &self.families[f as usize];
        for s in fam.mtype.suffixes(Format::OpenMetrics) {
            let mut n = fam.name.to_vec();
            n.extend_from_slice(s.text());
            match self.claimed.get(&n) {
                Some(&o) if o != f => {
                    return Err((pos, "metric family clashes with another family's samples"))
                }
                Some(_) => {}
                None => {
                    self.claimed.insert(n, f);
                }
            }
        }
        Ok(())
    }

    // ---- text lines ----------------------------------------------------------------------

    fn text_line(&mut self, ls: usize, le: usize) -> Res<()> {
        let b = self.b;
        let mut i = ls;
        while i < le && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i == le {
            return Ok(());
        }
        if b[i] != b'#' {
            return self.sample(ls, le);
        }
        i += 1;
        while i < le && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let kw_end = (i..le)
            .find(|&k| b[k] == b' ' || b[k] == b'\t')
            .unwrap_or(le);
        let kind = match &b[i..kw_end] {
            b"HELP" => 0,
            b"TYPE" => 1,
            _ => return Ok(()), // a comment
        };
        i = kw_end;
        while i < le && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let ne = lex::scan_name(&b[..le], i);
        if ne == i || (ne < le && b[ne] != b' ' && b[ne] != b'\t') {
            return Err((ne, "invalid metric name in metadata"));
        }
        let name = &b[i..ne];
        let mut a = ne;
        while a < le && (b[a] == b' ' || b[a] == b'\t') {
            a += 1;
        }
        let f = match self.by_name.get(name) {
            Some(&f) => f,
            None => self.new_family(name, ls)?,
        };
        if Some(f) != self.current {
            self.close_family()?;
            self.current = Some(f);
        }
        let fam = &mut self.families[f as usize];
        if fam.has_samples {
            return Err((ls, "HELP or TYPE line after the family's samples"));
        }
        if kind == 0 {
            if fam.help.is_some() {
                return Err((ls, "second HELP line for this family"));
            }
            let help = &b[a..le];
            let mut k = 0;
            while k < help.len() {
                if help[k] == b'\\' {
                    if !matches!(help.get(k + 1), Some(b'\\') | Some(b'n')) {
                        return Err((a + k, "invalid escape sequence in HELP"));
                    }
                    k += 1;
                }
                k += 1;
            }
            fam.help = Some(help);
        } else {
            if fam.has_type {
                return Err((ls, "second TYPE line for this family"));
            }
            let mut te = le;
            while te > a && (b[te - 1] == b' ' || b[te - 1] == b'\t') {
                te -= 1;
            }
            fam.mtype = MType::from_text(&b[a..te]).ok_or((a, "unknown metric type"))?;
            fam.has_type = true;
        }
        Ok(())
    }

    /// The text family of a sample name: the current one, one declared with that exact name, or
    /// a histogram/summary whose sample it is; else a new untyped family.
    fn text_family(&mut self, name: &'a [u8], pos: usize) -> Res<(u32, Suffix)> {
        if let Some(c) = self.current {
            let fam = &self.families[c as usize];
            if let Some(s) = match_suffix(fam.name, name, fam.mtype.suffixes(Format::Text)) {
                return Ok((c, s));
            }
        }
        let found = match self.by_name.get(name) {
            Some(&f) => Some(f),
            None => [&b"_bucket"[..], b"_sum", b"_count"]
                .iter()
                .find_map(|suf| {
                    let base = name.strip_suffix(*suf)?;
                    let &f = self.by_name.get(base)?;
                    let t = self.families[f as usize].mtype;
                    let owns = t == MType::Histogram || (t == MType::Summary && *suf != b"_bucket");
                    owns.then_some(f)
                }),
        };
        let f = match found {
            Some(f) => f,
            None => self.new_family(name, pos)?,
        };
        let fam = &self.families[f as usize];
        let s = match_suffix(fam.name, name, fam.mtype.suffixes(Format::Text))
            .ok_or((pos, "sample name not allowed for its family's type"))?;
        if Some(f) != self.current {
            self.close_family()?;
            self.current = Some(f);
            if self.families[f as usize].has_samples {
                self.noncontiguous = true;
                self.families[f as usize].om_ok = false;
            }
        }
        Ok((f, s))
    }

    // ---- samples -------------------------------------------------------------------------

    fn sample(&mut self, ls: usize, le: usize) -> Res<()> {
        let b = self.b;
        let strict = self.strict;
        let blank = |c: u8| c == b' ' || c == b'\t';
        let mut flags = 0u8;
        let mut i = ls;
        if !strict {
            while blank(b[i]) {
                i += 1;
                flags |= SLOW;
            }
        }
        let start = i;
        // Most lines start with the current family's (already checked) name: compare it by
        // words and scan only what follows, instead of classifying every byte.
        let known = self.current.map(|c| self.families[c as usize].name);
        let name_end = match known {
            Some(n) if le - i >= n.len() && lex::bytes_eq(&b[i..i + n.len()], n) => {
                let mut j = i + n.len();
                while j < le && lex::is_name_char(b[j]) {
                    j += 1;
                }
                j
            }
            _ => lex::scan_name(&b[..le], i),
        };
        if name_end == i {
            return Err((i, "invalid metric name"));
        }
        let name = &b[start..name_end];
        let (f, suffix) = if strict {
            let cur = self.current.and_then(|c| {
                let fam = &self.families[c as usize];
                match_suffix(fam.name, name, fam.mtype.suffixes(Format::OpenMetrics))
                    .map(|s| (c, s))
            });
            match cur {
                Some(x) => x,
                None => (self.new_family(name, start)?, Suffix::Bare),
            }
        } else {
            self.text_family(name, start)?
        };

        // Label block (text allows blanks before it).
        i = name_end;
        if !strict {
            let mut j = i;
            while j < le && blank(b[j]) {
                j += 1;
            }
            if j > i && j < le && b[j] == b'{' {
                flags |= SLOW;
                i = j;
            }
        }
        let mut labels_end = name_end;
        let mut info = BlockInfo::default();
        let mut labels = std::mem::take(&mut self.labels);
        labels.clear();
        if i < le && b[i] == b'{' {
            i = lex_labels(&b[..le], i, strict, &mut labels, &mut info)?;
            labels_end = i;
            if info.noncanonical || info.odd_escape {
                flags |= SLOW;
            }
        }
        let fam_name = self.families[f as usize].name;
        let mtype = self.families[f as usize].mtype;
        let special: &[u8] = match mtype {
            MType::Histogram | MType::GaugeHistogram => b"le",
            MType::Summary => b"quantile",
            _ => b"",
        };
        let mut group_key = 0u64;
        let mut special_value: Option<&[u8]> = None;
        let mut stateset_label = false;
        for l in &labels {
            let n = l.name(b);
            let v = l.value(b);
            let h = pair_hash(n, v);
            if !special.is_empty() && lex::bytes_eq(n, special) {
                special_value = Some(v);
            } else {
                group_key = group_key.wrapping_add(h);
            }
            if is_identity_name(n) {
                flags |= IDENT_LABEL;
            }
            if mtype == MType::StateSet && lex::bytes_eq(n, fam_name) {
                stateset_label = true;
            }
        }
        if !labels.is_empty() {
            flags |= HAS_LABELS;
        }
        let hash = name_hash(name)
            .wrapping_add(group_key)
            .wrapping_add(special_value.map_or(0, |v| pair_hash(special, v)));
        self.labels = labels;

        // Value, timestamp, exemplar.
        if i >= le || !blank(b[i]) || (strict && b[i] != b' ') {
            return Err((i, "expected a space before the value"));
        }
        i += 1;
        if !strict {
            if i < le && blank(b[i]) {
                flags |= SLOW;
            }
            while i < le && blank(b[i]) {
                i += 1;
            }
        }
        let vs = i;
        while i < le && b[i] != b' ' && (strict || b[i] != b'\t') {
            i += 1;
        }
        let value = &b[vs..i];
        if !is_number(value) {
            return Err((vs, "invalid value"));
        }
        let mut ts: Option<(usize, usize)> = None;
        let mut exemplar = false;
        if strict {
            if i < le && b.get(i + 1) != Some(&b'#') {
                let s = i + 1;
                let mut e = s;
                while e < le && b[e] != b' ' {
                    e += 1;
                }
                if !is_realnumber(&b[s..e]) {
                    return Err((s, "invalid timestamp"));
                }
                ts = Some((s, e));
                i = e;
            }
            if i < le {
                self.exemplar(i, le)?;
                exemplar = true;
            }
        } else {
            let mut j = i;
            while j < le && blank(b[j]) {
                j += 1;
            }
            if j < le {
                if j > i + 1 || b[i] != b' ' {
                    flags |= SLOW;
                }
                let s = j;
                while j < le && !blank(b[j]) {
                    j += 1;
                }
                if !is_int(&b[s..j]) {
                    return Err((s, "invalid timestamp (text format: integer milliseconds)"));
                }
                ts = Some((s, j));
                while j < le && blank(b[j]) {
                    j += 1;
                }
                if j < le {
                    return Err((j, "unexpected text after the timestamp"));
                }
            }
            let mut e = le;
            while e > start && blank(b[e - 1]) {
                e -= 1;
            }
            if e != le {
                flags |= SLOW;
            }
        }

        // Family-level rules.
        let sem = self.check_sample(
            f,
            suffix,
            value,
            special_value,
            stateset_label,
            exemplar,
            group_key,
        );
        if let Err(reason) = sem {
            if strict {
                return Err((start, reason));
            }
            self.families[f as usize].om_ok = false;
        }
        if strict {
            if let Some((ph, pts)) = self.prev_series {
                if ph == hash {
                    match (pts, ts) {
                        (Some(p), Some(c)) => {
                            if to_f64(&b[c.0..c.1]) < to_f64(&b[p.0..p.1]) {
                                return Err((c.0, "timestamps of a series go backwards"));
                            }
                        }
                        (None, None) => {}
                        _ => {
                            return Err((
                                start,
                                "samples of a series mix lines with and without timestamps",
                            ))
                        }
                    }
                }
            }
            self.prev_series = Some((hash, ts));
        }
        let fam = &mut self.families[f as usize];
        fam.has_samples = true;
        fam.suffixes |= suffix.bit();
        fam.ident_labels |= flags & IDENT_LABEL != 0;
        let mut sample = SampleRef {
            start: start as u32,
            name_end: name_end as u32,
            labels_end: labels_end as u32,
            end: le as u32,
            family: f,
            hash,
            suffix,
            flags,
        };
        let idx = self.samples.len() as u32;
        match self.seen.entry(hash) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(idx);
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                let first = &self.samples[*o.get() as usize];
                // A text body may repeat a series under two families (one is dropped by the
                // merge as a clash); only a repeat within the family is a duplicate.
                if first.family == f && same_series(b, strict, first, &sample) {
                    sample.flags |= DUP;
                }
            }
        }
        self.samples.push(sample);
        Ok(())
    }

    /// Checks the exemplar that starts at `b[i]` (` # {...} value [ts]`), up to `le`.
    fn exemplar(&mut self, i: usize, le: usize) -> Res<()> {
        let b = self.b;
        if b.get(i..i + 4) != Some(b" # {") || i + 4 > le {
            return Err((i, "invalid exemplar: expected ' # {'"));
        }
        let mut info = BlockInfo::default();
        let mut ex = std::mem::take(&mut self.ex_labels);
        let r = lex_labels(&b[..le], i + 3, true, &mut ex, &mut info);
        let chars: usize = ex
            .iter()
            .map(|l| {
                let count = |s: &[u8]| s.iter().filter(|&&c| c & 0xC0 != 0x80).count();
                count(l.name(b)) + count(l.value(b))
            })
            .sum();
        self.ex_labels = ex;
        let mut j = r?;
        if chars > 128 {
            return Err((i + 3, "exemplar labels longer than 128 characters"));
        }
        if b.get(j) != Some(&b' ') || j >= le {
            return Err((j, "expected a space before the exemplar value"));
        }
        j += 1;
        let s = j;
        while j < le && b[j] != b' ' {
            j += 1;
        }
        if !is_number(&b[s..j]) {
            return Err((s, "invalid exemplar value"));
        }
        if j < le {
            let s = j + 1;
            if !is_realnumber(&b[s..le]) {
                return Err((s, "invalid exemplar timestamp"));
            }
        }
        Ok(())
    }

    /// OpenMetrics' per-sample rules (values, required labels, exemplar placement, histogram and
    /// summary metrics). For text bodies a failure only clears the family's `om_ok`.
    #[allow(clippy::too_many_arguments)]
    fn check_sample(
        &mut self,
        f: u32,
        suffix: Suffix,
        value: &[u8],
        special: Option<&[u8]>,
        stateset_label: bool,
        exemplar: bool,
        group_key: u64,
    ) -> Result<(), &'static str> {
        let fam = &self.families[f as usize];
        let mtype = fam.mtype;
        let v = || to_f64(value);
        let counter_like = |x: f64| !x.is_nan() && x >= 0.0;
        let exemplar_ok = matches!(
            (mtype, suffix),
            (MType::Counter, Suffix::Total)
                | (MType::Histogram, Suffix::Bucket)
                | (MType::GaugeHistogram, Suffix::Bucket)
        );
        if exemplar && !exemplar_ok {
            return Err("exemplars are only allowed on counter totals and histogram buckets");
        }
        match mtype {
            MType::Counter => {
                if !self.strict && (fam.name.len() <= 6 || !fam.name.ends_with(b"_total")) {
                    return Err("counter name without _total");
                }
                if suffix == Suffix::Total && !counter_like(v()) {
                    return Err("counter value is NaN or negative");
                }
            }
            MType::StateSet => {
                if !stateset_label {
                    return Err("stateset sample without a label named after its family");
                }
                let x = v();
                if x != 0.0 && x != 1.0 {
                    return Err("stateset value is not 0 or 1");
                }
            }
            MType::Info => {
                if v() != 1.0 {
                    return Err("info value is not 1");
                }
            }
            MType::Histogram | MType::GaugeHistogram | MType::Summary => {
                self.group_sample(mtype, suffix, v(), special, group_key)?;
            }
            MType::Gauge | MType::Unknown => {}
        }
        Ok(())
    }

    fn group_sample(
        &mut self,
        mtype: MType,
        suffix: Suffix,
        x: f64,
        special: Option<&[u8]>,
        key: u64,
    ) -> Result<(), &'static str> {
        if self.group.as_ref().is_none_or(|g| g.key != key) {
            self.end_group(mtype)?;
            if !self.groups_done.insert(key) {
                return Err("samples of one histogram or summary are not contiguous");
            }
            self.group = Some(Group::new(key));
        }
        let g = self.group.as_mut().ok_or("internal: no group")?;
        match (mtype, suffix) {
            (MType::Summary, Suffix::Bare) => {
                let q = special
                    .and_then(|q| bound_value(q, true))
                    .ok_or("summary quantile sample without a valid quantile label")?;
                if !(0.0..=1.0).contains(&q) {
                    return Err("quantile outside [0, 1]");
                }
                if x < 0.0 {
                    return Err("quantile value is negative");
                }
            }
            (_, Suffix::Bucket) => {
                let le = special
                    .and_then(|q| bound_value(q, true))
                    .ok_or("histogram bucket without a valid le label")?;
                if le.is_nan() || le <= g.last_le {
                    return Err("histogram buckets are not in increasing le order");
                }
                if x.is_nan() || x < 0.0 {
                    return Err("bucket value is NaN or negative");
                }
                if x < g.last_bucket {
                    return Err("histogram bucket counts decrease");
                }
                if le < 0.0 {
                    g.neg_bucket = true;
                }
                if le == f64::INFINITY {
                    g.inf = Some(x);
                }
                g.last_le = le;
                g.last_bucket = x;
            }
            (_, Suffix::Count) | (_, Suffix::GCount) => {
                if x.is_nan() || x < 0.0 {
                    return Err("count is NaN or negative");
                }
                g.count = Some(x);
            }
            (MType::GaugeHistogram, Suffix::GSum) => {
                if x.is_nan() {
                    return Err("gsum is NaN");
                }
                g.sum = Some(x);
            }
            (_, Suffix::Sum) => {
                if x.is_nan() || x < 0.0 {
                    return Err("sum is NaN or negative");
                }
                g.sum = Some(x);
            }
            _ => {}
        }
        Ok(())
    }

    fn end_group(&mut self, mtype: MType) -> Result<(), &'static str> {
        let Some(g) = self.group.take() else {
            return Ok(());
        };
        if !matches!(mtype, MType::Histogram | MType::GaugeHistogram) {
            return Ok(());
        }
        let inf = g.inf.ok_or("histogram without a +Inf bucket")?;
        match (g.count, g.sum) {
            (Some(c), Some(_)) if c != inf => Err("histogram count differs from its +Inf bucket"),
            (Some(_), None) | (None, Some(_)) => {
                Err("histogram has only one of count and sum (both or neither)")
            }
            (Some(_), Some(_)) if mtype == MType::Histogram && g.neg_bucket => {
                Err("histogram with negative buckets cannot have a sum")
            }
            (Some(_), Some(s)) if s < 0.0 && !g.neg_bucket => {
                Err("negative gsum without negative buckets")
            }
            _ => Ok(()),
        }
    }

    /// Ends the current family: its last histogram must be complete.
    fn close_family(&mut self) -> Res<()> {
        let Some(c) = self.current else {
            return Ok(());
        };
        let mtype = self.families[c as usize].mtype;
        let r = self.end_group(mtype);
        self.groups_done.clear();
        self.prev_series = None;
        if let Err(reason) = r {
            if self.strict {
                let pos = self.samples.last().map_or(0, |s| s.start as usize);
                return Err((pos, reason));
            }
            self.families[c as usize].om_ok = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn om(s: &str) -> Result<Parsed<'_>, ParseError> {
        parse(s.as_bytes(), Format::OpenMetrics)
    }
    fn text(s: &str) -> Result<Parsed<'_>, ParseError> {
        parse(s.as_bytes(), Format::Text)
    }

    #[test]
    fn om_families_and_samples() {
        let p = om("# TYPE a counter\n# HELP a h\na_total{x=\"1\"} 1\na_created{x=\"1\"} 2\n\
                    # TYPE b histogram\nb_bucket{le=\"1\"} 0\nb_bucket{le=\"+Inf\"} 2\nb_count 2\nb_sum 3\n# EOF\n")
        .unwrap();
        assert_eq!(p.families.len(), 2);
        assert_eq!(p.families[0].mtype, MType::Counter);
        assert_eq!(p.families[0].samples, (0, 2));
        assert_eq!(p.families[1].samples, (2, 6));
        assert_eq!(p.samples[1].suffix, Suffix::Created);
        assert_eq!(p.samples[0].flags & HAS_LABELS, HAS_LABELS);
    }

    #[test]
    fn om_error_positions() {
        let e = om("a 1\nb{x=1} 2\n# EOF\n").err().unwrap();
        assert_eq!((e.line, e.column), (2, 5));
        let e = om("a 1\n").err().unwrap();
        assert!(e.reason.contains("EOF"), "{e}");
        let e = om("# TYPE a counter\na_total -1\n# EOF\n").err().unwrap();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn text_is_lenient_where_expfmt_is() {
        let p =
            text("# some comment\n\n  a{ x = \"1\" , } 1  123 \n# TYPE b counter\nb 2\n").unwrap();
        assert_eq!(p.samples.len(), 2);
        assert_eq!(p.samples[0].flags & SLOW, SLOW);
        // A counter without _total is fine in text but can't keep its type in OpenMetrics.
        assert!(!p.families[1].om_ok);
        assert!(text("a 1 1.5\n").is_err());
        assert!(text("a{x=\"\\z\"} 1\n").is_err());
        assert!(text("# TYPE a counter\n# TYPE a counter\n").is_err());
        assert!(text("a 1\n# TYPE a counter\n").is_err());
    }

    #[test]
    fn text_noncontiguous_families_are_regrouped() {
        let p = text("# TYPE a gauge\na{x=\"1\"} 1\nb 1\na{x=\"2\"} 2\n").unwrap();
        assert_eq!(p.families[0].samples, (0, 2));
        assert_eq!(p.families[1].samples, (2, 3));
    }

    #[test]
    fn text_histogram_suffixes() {
        let p = text(
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        )
        .unwrap();
        assert_eq!(p.families.len(), 1);
        assert!(p.families[0].om_ok);
        let s = Suffix::Bucket.bit() | Suffix::Sum.bit() | Suffix::Count.bit();
        assert_eq!(p.families[0].suffixes, s);
    }

    #[test]
    fn identity_like_labels_are_flagged() {
        let p = om("a{pod=\"x\"} 1\nb{podx=\"x\"} 1\n# EOF\n").unwrap();
        assert_eq!(p.samples[0].flags & IDENT_LABEL, IDENT_LABEL);
        assert_eq!(p.samples[1].flags & IDENT_LABEL, 0);
    }
}

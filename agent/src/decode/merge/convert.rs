//! Rule 6 (formats): the output families a source family maps to, and the conversion of a
//! sample line's value, timestamp and exemplar, and of HELP texts, between the formats.

use std::cmp::Ordering;
use std::collections::HashSet;

use super::super::lex::{self, to_f64, Escaped};
use super::super::parse::{Family, MType, Suffix};
use super::super::Format;
use super::lines::ParsedSource;

/// All suffixes of a source family.
const ALL: u16 = u16::MAX;

/// One source family's contribution to one output family: which of its samples go there, under
/// which name and type.
pub(super) struct Contribution<'a> {
    /// Output name: `base[..base.len() - strip]` followed by `add`.
    pub(super) base: &'a [u8],
    pub(super) strip: usize,
    pub(super) add: &'static [u8],
    pub(super) mtype: MType,
    /// Index of the source family.
    pub(super) fam: u32,
    /// Source-family sample suffixes that go to this output family.
    pub(super) filter: u16,
    /// Whether this entry carries its family's UNIT.
    pub(super) unit: bool,
    /// A text gauge `x_created` folded into OpenMetrics counter `x`: its HELP is not the family's.
    pub(super) created_part: bool,
    /// Not of the type being written.
    pub(super) dropped: bool,
}

impl Contribution<'_> {
    pub(super) fn stem(&self) -> &[u8] {
        &self.base[..self.base.len() - self.strip]
    }
    pub(super) fn name_cmp(&self, o: &Contribution<'_>) -> Ordering {
        if self.add.is_empty() && o.add.is_empty() {
            return self.stem().cmp(o.stem());
        }
        let a = self.stem().iter().chain(self.add);
        let b = o.stem().iter().chain(o.add);
        a.cmp(b)
    }
    pub(super) fn name_vec(&self) -> Vec<u8> {
        let mut v = self.stem().to_vec();
        v.extend_from_slice(self.add);
        v
    }
}

/// The output families a source family maps to (module docs, rule 6).
fn push_contributions<'a>(
    entries: &mut Vec<Contribution<'a>>,
    fam_idx: u32,
    fam: &Family<'a>,
    from: Format,
    to: Format,
) {
    let mut push = |strip: usize, add: &'static [u8], mtype: MType, filter: u16, unit: bool| {
        if fam.suffixes & filter != 0 {
            entries.push(Contribution {
                base: fam.name,
                strip,
                add,
                mtype,
                fam: fam_idx,
                filter,
                unit,
                created_part: false,
                dropped: false,
            });
        }
    };
    let created = Suffix::Created.bit();
    match (from, to) {
        // Protobuf renderings are made from families (`proto/render.rs`), not from here.
        (Format::Protobuf, _) | (_, Format::Protobuf) => push(0, b"", fam.mtype, ALL, true),
        (Format::Text, Format::Text) | (Format::OpenMetrics, Format::OpenMetrics) => {
            push(0, b"", fam.mtype, ALL, true)
        }
        (Format::OpenMetrics, Format::Text) => match fam.mtype {
            MType::Counter => {
                push(0, b"_total", MType::Counter, Suffix::Total.bit(), false);
                push(0, b"_created", MType::Gauge, created, false);
            }
            MType::Histogram | MType::Summary => {
                push(0, b"", fam.mtype, ALL & !created, false);
                push(0, b"_created", MType::Gauge, created, false);
            }
            MType::GaugeHistogram => {
                push(0, b"", MType::Histogram, Suffix::Bucket.bit(), false);
                push(0, b"_gcount", MType::Gauge, Suffix::GCount.bit(), false);
                push(0, b"_gsum", MType::Gauge, Suffix::GSum.bit(), false);
            }
            MType::Info => push(0, b"_info", MType::Gauge, ALL, false),
            MType::StateSet | MType::Gauge => push(0, b"", MType::Gauge, ALL, false),
            MType::Unknown => push(0, b"", MType::Unknown, ALL, false),
        },
        (Format::Text, Format::OpenMetrics) => match (fam.mtype, fam.om_ok) {
            (MType::Counter, true) => push(6, b"", MType::Counter, ALL, false),
            (MType::Histogram | MType::Summary | MType::Gauge, true) => {
                push(0, b"", fam.mtype, ALL, false)
            }
            (MType::Histogram, false) => {
                push(0, b"_bucket", MType::Unknown, Suffix::Bucket.bit(), false);
                push(0, b"_count", MType::Unknown, Suffix::Count.bit(), false);
                push(0, b"_sum", MType::Unknown, Suffix::Sum.bit(), false);
            }
            (MType::Summary, false) => {
                push(0, b"", MType::Unknown, Suffix::Bare.bit(), false);
                push(0, b"_count", MType::Unknown, Suffix::Count.bit(), false);
                push(0, b"_sum", MType::Unknown, Suffix::Sum.bit(), false);
            }
            _ => push(0, b"", MType::Unknown, ALL, false),
        },
    }
}

/// The output families of one source (module docs, rule 6), in the source's family order.
pub(super) fn source_contributions<'a>(
    entries: &mut Vec<Contribution<'a>>,
    s: &ParsedSource<'a>,
    out: Format,
) {
    let text_to_om = s.parsed.format == Format::Text && out == Format::OpenMetrics;
    let counters: HashSet<&[u8]> = if text_to_om {
        s.parsed
            .families
            .iter()
            .filter(|f| f.mtype == MType::Counter && f.om_ok && f.suffixes != 0)
            .map(|f| &f.name[..f.name.len() - 6])
            .collect()
    } else {
        Default::default()
    };
    for (fi, fam) in s.parsed.families.iter().enumerate() {
        // A text gauge `x_created` beside counter `x_total` is that counter's `_created`
        // in OpenMetrics (as client libraries write text).
        let created_of = fam.name.strip_suffix(b"_created");
        if let Some(stem) = created_of.filter(|s| {
            text_to_om
                && matches!(fam.mtype, MType::Gauge | MType::Unknown)
                && fam.suffixes != 0
                && counters.contains(s)
        }) {
            entries.push(Contribution {
                base: fam.name,
                strip: fam.name.len() - stem.len(),
                add: b"",
                mtype: MType::Counter,
                fam: fi as u32,
                filter: ALL,
                unit: false,
                created_part: true,
                dropped: false,
            });
            continue;
        }
        push_contributions(entries, fi as u32, fam, s.parsed.format, out);
    }
}

/// Whether two HELP texts, each raw in the format it was read from, say the same.
pub(super) fn help_eq(
    a: &[u8],
    fa: Format,
    b: &[u8],
    fb: Format,
    sa: &mut Vec<u8>,
    sb: &mut Vec<u8>,
) -> bool {
    if fa == fb {
        return a == b;
    }
    sa.clear();
    sb.clear();
    lex::write_escaped(a, help_kind(fa), Escaped::OmHelp, sa);
    lex::write_escaped(b, help_kind(fb), Escaped::OmHelp, sb);
    sa == sb
}

/// How HELP is escaped in a format.
pub(super) fn help_kind(f: Format) -> Escaped {
    match f {
        Format::Text => Escaped::TextHelp,
        Format::OpenMetrics => Escaped::OmHelp,
        Format::Protobuf => Escaped::Raw,
    }
}

/// Writes a sample line's value, timestamp and exemplar (from `b[i..end]`, starting at the
/// blank after the name or label block) in format `to`.
pub(super) fn rest(
    b: &[u8],
    mut i: usize,
    end: usize,
    from: Format,
    to: Format,
    buf: &mut Vec<u8>,
) {
    let blank = |c: u8| c == b' ' || c == b'\t';
    let token = |i: &mut usize| -> (usize, usize) {
        while *i < end && blank(b[*i]) {
            *i += 1;
        }
        let s = *i;
        while *i < end && !blank(b[*i]) {
            *i += 1;
        }
        (s, *i)
    };
    let v = token(&mut i);
    buf.push(b' ');
    buf.extend_from_slice(&b[v.0..v.1]);
    let mut t = token(&mut i);
    if from == Format::OpenMetrics && &b[t.0..t.1] == b"#" {
        // Exemplar; only OpenMetrics carries it.
        if to == Format::OpenMetrics {
            buf.push(b' ');
            buf.extend_from_slice(&b[t.0..end]);
        }
        return;
    }
    if t.0 == t.1 {
        return;
    }
    let ts = &b[t.0..t.1];
    match (from, to) {
        (Format::Text, Format::OpenMetrics) => {
            buf.push(b' ');
            millis_to_seconds(ts, buf);
        }
        (Format::OpenMetrics, Format::Text) => {
            let ms = (to_f64(ts) * 1000.0).round();
            if ms.is_finite() {
                buf.push(b' ');
                buf.extend_from_slice((ms as i64).to_string().as_bytes());
            }
        }
        _ => {
            buf.push(b' ');
            buf.extend_from_slice(ts);
        }
    }
    if from == Format::OpenMetrics {
        t = token(&mut i);
        if t.0 < t.1 && to == Format::OpenMetrics {
            buf.push(b' ');
            buf.extend_from_slice(&b[t.0..end]);
        }
    }
}

/// `1234567` (ms) → `1234.567` (s), exactly, by moving the decimal point.
pub(super) fn millis_to_seconds(ms: &[u8], buf: &mut Vec<u8>) {
    let (sign, digits) = match ms.first() {
        Some(b'-') => (&b"-"[..], &ms[1..]),
        Some(b'+') => (&b""[..], &ms[1..]),
        _ => (&b""[..], ms),
    };
    buf.extend_from_slice(sign);
    if digits.len() > 3 {
        buf.extend_from_slice(&digits[..digits.len() - 3]);
        buf.push(b'.');
        buf.extend_from_slice(&digits[digits.len() - 3..]);
    } else {
        buf.extend_from_slice(b"0.");
        for _ in digits.len()..3 {
            buf.push(b'0');
        }
        buf.extend_from_slice(digits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis() {
        for (i, o) in [
            ("1234567", "1234.567"),
            ("5", "0.005"),
            ("-42", "-0.042"),
            ("1000", "1.000"),
        ] {
            let mut b = Vec::new();
            millis_to_seconds(i.as_bytes(), &mut b);
            assert_eq!(b, o.as_bytes());
        }
    }
}

//! Prometheus 3's name escaping schemes (prometheus/common `model.EscapeName` as
//! `model.EscapeMetricFamily` applies it): how a metric or label name outside the legacy
//! character set is written for a scraper that asked for a scheme with `escaping=` in its
//! `Accept` (`underscores` when it named none). A legacy name is written as it is by every
//! scheme, `dots` included (`EscapeMetricFamily` escapes only names that need it): so a body
//! whose names are all legacy renders the same for every scheme, and only bodies with UTF-8
//! names are rendered once per scheme.
//!
//! Label names are held to the legacy label set (`[a-zA-Z_][a-zA-Z0-9_]*`, no `:`), which
//! Prometheus 2's parsers require, where Go's `EscapeMetricFamily` lets `a:b` through.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::lex::{is_label_char, is_label_start, is_name_char, is_name_start};

/// How names outside the legacy character set are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Escaping {
    /// `allow-utf-8`: names as they are.
    AllowUtf8,
    /// `underscores`: every character outside the legacy set (and a leading digit) as `_`.
    #[default]
    Underscores,
    /// `dots`: `.` as `_dot_`, `_` as `__`, other characters outside the set as `__`.
    Dots,
    /// `values`: `U__`, then `_` as `__` and other characters outside the set as
    /// `_<hex code point>_`.
    Values,
}

impl Escaping {
    /// Every scheme.
    pub const ALL: [Escaping; 4] = [
        Escaping::AllowUtf8,
        Escaping::Underscores,
        Escaping::Dots,
        Escaping::Values,
    ];

    /// The value of `escaping=` that names it.
    pub fn name(self) -> &'static str {
        match self {
            Escaping::AllowUtf8 => "allow-utf-8",
            Escaping::Underscores => "underscores",
            Escaping::Dots => "dots",
            Escaping::Values => "values",
        }
    }

    /// The scheme an `escaping=` value names; `None` for an unknown one (which expfmt ignores).
    pub fn from_name(s: &str) -> Option<Escaping> {
        Escaping::ALL.into_iter().find(|e| e.name() == s)
    }

    /// A metric name written in this scheme.
    pub fn metric_name(self, name: &str) -> Cow<'_, str> {
        self.escape(name, is_name_start, is_name_char)
    }

    /// A label name written in this scheme.
    pub fn label_name(self, name: &str) -> Cow<'_, str> {
        self.escape(name, is_label_start, is_label_char)
    }

    fn escape(self, name: &str, start: fn(u8) -> bool, rest: fn(u8) -> bool) -> Cow<'_, str> {
        if self == Escaping::AllowUtf8 || is_legacy_in(name, start, rest) {
            return Cow::Borrowed(name);
        }
        let valid = |i: usize, c: char| c.is_ascii() && if i == 0 { start } else { rest }(c as u8);
        let mut out = String::with_capacity(name.len() + 8);
        if self == Escaping::Values {
            out.push_str("U__");
        }
        for (i, c) in name.char_indices() {
            match self {
                Escaping::Underscores if valid(i, c) => out.push(c),
                Escaping::Underscores => out.push('_'),
                Escaping::Dots | Escaping::Values if c == '_' => out.push_str("__"),
                Escaping::Dots if c == '.' => out.push_str("_dot_"),
                Escaping::Dots | Escaping::Values if valid(i, c) => out.push(c),
                Escaping::Dots => out.push_str("__"),
                Escaping::Values | Escaping::AllowUtf8 => {
                    let _ = write!(out, "_{:x}_", u32::from(c));
                }
            }
        }
        Cow::Owned(out)
    }
}

/// How the text engine carries names outside the legacy set for an `allow-utf-8` answer: its
/// lexer reads legacy names only, so such a name is written as a legacy name in which every
/// other character is the marker, its code point in hex and `Z` (`a.b` is `aGqz2eZb`), and
/// turned back into the name when the rendering is made (`merge/render.rs`). The marker is an
/// uppercase letter in `G..=Z` (not a hex digit) and two lowercase letters that occur nowhere in
/// the body, so reading left to right finds exactly the markers written (no marker overlaps
/// itself); no `_` is written, so the suffixes the parser finds (`_total`, `_bucket`) are the
/// name's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Marker([u8; 3]);

const LETTERS: usize = 26;

/// Ends a marked character's hex code.
const END: u8 = b'Z';

fn letter_index(c: u8) -> Option<usize> {
    c.is_ascii_lowercase().then(|| usize::from(c - b'a'))
}

fn letter(i: usize) -> u8 {
    b'a' + i as u8
}

impl Marker {
    /// A marker that occurs in none of `texts`; `None` if every one does (no real body).
    pub(crate) fn free_in<'a>(texts: impl IntoIterator<Item = &'a [u8]>) -> Option<Marker> {
        let firsts = usize::from(b'Z' - b'G') + 1;
        let mut seen = vec![0u64; (firsts * LETTERS * LETTERS).div_ceil(64)];
        for t in texts {
            for w in t.windows(3) {
                if !(b'G'..=b'Z').contains(&w[0]) {
                    continue;
                }
                if let (Some(b), Some(c)) = (letter_index(w[1]), letter_index(w[2])) {
                    let k = (usize::from(w[0] - b'G') * LETTERS + b) * LETTERS + c;
                    seen[k / 64] |= 1 << (k % 64);
                }
            }
        }
        let k = (0..firsts * LETTERS * LETTERS).find(|k| seen[k / 64] & (1 << (k % 64)) == 0)?;
        Some(Marker([
            b'G' + (k / (LETTERS * LETTERS)) as u8,
            letter(k / LETTERS % LETTERS),
            letter(k % LETTERS),
        ]))
    }

    pub(crate) fn bytes(self) -> [u8; 3] {
        self.0
    }

    /// A metric name as a legacy name.
    pub(crate) fn metric_name(self, name: &str) -> Cow<'_, str> {
        self.encode(name, is_name_start, is_name_char)
    }

    /// A label name as a legacy label name.
    pub(crate) fn label_name(self, name: &str) -> Cow<'_, str> {
        self.encode(name, is_label_start, is_label_char)
    }

    fn encode(self, name: &str, start: fn(u8) -> bool, rest: fn(u8) -> bool) -> Cow<'_, str> {
        if is_legacy_in(name, start, rest) {
            return Cow::Borrowed(name);
        }
        let mut out = String::with_capacity(name.len() + 8);
        for (i, c) in name.char_indices() {
            if c.is_ascii() && if i == 0 { start } else { rest }(c as u8) {
                out.push(c);
            } else {
                out.extend(self.0.iter().map(|&b| char::from(b)));
                let _ = write!(out, "{:x}", u32::from(c));
                out.push(char::from(END));
            }
        }
        Cow::Owned(out)
    }

    /// A name [`Marker::metric_name`] or [`Marker::label_name`] wrote, as it was.
    pub(crate) fn decode(self, name: &[u8]) -> Cow<'_, [u8]> {
        let Some(first) = memchr::memmem::find(name, &self.0) else {
            return Cow::Borrowed(name);
        };
        let mut out = name[..first].to_vec();
        let mut i = first;
        while i < name.len() {
            if name[i..].starts_with(&self.0) {
                let hex = i + 3;
                let end = name[hex..]
                    .iter()
                    .position(|&c| c == END)
                    .map_or(name.len(), |p| hex + p);
                let c = std::str::from_utf8(&name[hex..end])
                    .ok()
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32)
                    .unwrap_or(char::REPLACEMENT_CHARACTER);
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i = end + 1;
            } else {
                out.push(name[i]);
                i += 1;
            }
        }
        Cow::Owned(out)
    }
}

/// How the text engine's bodies write a name outside the legacy set: in a legacy scheme, or,
/// for `allow-utf-8`, marked to be turned back when rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Names {
    Escaped(Escaping),
    Marked(Marker),
}

impl Names {
    /// For `escaping`, in a body whose names and other text are `texts` (where the marker
    /// must not occur). `allow-utf-8` without a free marker (no real body) is `underscores`.
    pub(crate) fn new<'a>(escaping: Escaping, texts: impl IntoIterator<Item = &'a [u8]>) -> Names {
        match escaping {
            Escaping::AllowUtf8 => {
                Marker::free_in(texts).map_or(Names::Escaped(Escaping::Underscores), Names::Marked)
            }
            e => Names::Escaped(e),
        }
    }

    pub(crate) fn metric_name(self, name: &str) -> Cow<'_, str> {
        match self {
            Names::Escaped(e) => e.metric_name(name),
            Names::Marked(m) => m.metric_name(name),
        }
    }

    pub(crate) fn label_name(self, name: &str) -> Cow<'_, str> {
        match self {
            Names::Escaped(e) => e.label_name(name),
            Names::Marked(m) => m.label_name(name),
        }
    }

    pub(crate) fn marker(self) -> Option<Marker> {
        match self {
            Names::Marked(m) => Some(m),
            Names::Escaped(_) => None,
        }
    }
}

/// Whether a metric name is a legacy Prometheus name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub(crate) fn is_legacy(name: &str) -> bool {
    is_legacy_in(name, is_name_start, is_name_char)
}

/// Whether a label name is a legacy Prometheus name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub(crate) fn is_legacy_label(name: &str) -> bool {
    is_legacy_in(name, is_label_start, is_label_char)
}

fn is_legacy_in(name: &str, start: fn(u8) -> bool, rest: fn(u8) -> bool) -> bool {
    let b = name.as_bytes();
    b.first().is_none_or(|&c| start(c)) && b.iter().skip(1).all(|&c| rest(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_as_prometheus_common_escapes() {
        // model.EscapeName's test cases (prometheus/common model/metric_test.go).
        let cases = [
            // name, underscores, dots, values
            (
                "no:escaping_required",
                "no:escaping_required",
                "no:escaping_required",
                "no:escaping_required",
            ),
            (
                "mysystem.prod.west.cpu.load",
                "mysystem_prod_west_cpu_load",
                "mysystem_dot_prod_dot_west_dot_cpu_dot_load",
                "U__mysystem_2e_prod_2e_west_2e_cpu_2e_load",
            ),
            (
                "mysystem.prod.west.cpu.load_total",
                "mysystem_prod_west_cpu_load_total",
                "mysystem_dot_prod_dot_west_dot_cpu_dot_load__total",
                "U__mysystem_2e_prod_2e_west_2e_cpu_2e_load__total",
            ),
            (
                "http.status:sum",
                "http_status:sum",
                "http_dot_status:sum",
                "U__http_2e_status:sum",
            ),
            (
                "label with 😱",
                "label_with__",
                "label__with____",
                "U__label_20_with_20__1f631_",
            ),
            ("花火", "__", "____", "U___82b1__706b_"),
            (
                "label with \u{100}",
                "label_with__",
                "label__with____",
                "U__label_20_with_20__100_",
            ),
            (
                "1digitstart",
                "_digitstart",
                "__digitstart",
                "U___31_digitstart",
            ),
        ];
        for (name, u, d, v) in cases {
            assert_eq!(Escaping::Underscores.metric_name(name), u, "{name}");
            assert_eq!(Escaping::Dots.metric_name(name), d, "{name}");
            assert_eq!(Escaping::Values.metric_name(name), v, "{name}");
            assert_eq!(Escaping::AllowUtf8.metric_name(name), name);
        }
    }

    #[test]
    fn legacy_names_are_never_escaped() {
        // Dots too: EscapeMetricFamily only escapes names that need it.
        for e in Escaping::ALL {
            assert_eq!(e.metric_name("a_b:c"), "a_b:c");
            assert_eq!(e.label_name("a_b"), "a_b");
            assert!(matches!(e.metric_name("a_b"), Cow::Borrowed(_)));
        }
        // Label names have no ':'.
        assert_eq!(Escaping::Underscores.label_name("a:b"), "a_b");
        assert_eq!(Escaping::Values.label_name("a:b"), "U__a_3a_b");
        assert_eq!(Escaping::Dots.label_name("a.b:c"), "a_dot_b__c");
    }

    #[test]
    fn marked_names_come_back() {
        let body = "aGaa Gab GacZ GaD";
        let m = Marker::free_in([body.as_bytes()]).expect("a free marker");
        assert_eq!(m, Marker(*b"Gad"));
        for name in [
            "a.b_total",
            "花火",
            "1x",
            "label with 😱",
            "plain_name",
            "a:b",
        ] {
            let metric = m.metric_name(name);
            assert!(is_legacy(&metric), "{metric}");
            assert_eq!(m.decode(metric.as_bytes()), name.as_bytes());
            let label = m.label_name(name);
            assert!(is_legacy_label(&label), "{label}");
            assert_eq!(m.decode(label.as_bytes()), name.as_bytes());
        }
        assert_eq!(m.metric_name("a.b_total"), "aGad2eZb_total");
        // No `_` is written: `.total` gives the parser no `_total` suffix.
        assert!(!m.metric_name("花火.total").contains('_'));
    }

    #[test]
    fn names_round_trip() {
        for e in Escaping::ALL {
            assert_eq!(Escaping::from_name(e.name()), Some(e));
        }
        assert_eq!(Escaping::from_name("bogus"), None);
        assert!(is_legacy("a:b") && !is_legacy_label("a:b") && !is_legacy("1a"));
    }
}

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

    /// The scheme names are written in where the output has legacy names only: the text
    /// engine's bodies (a protobuf body's OpenMetrics, a text body with quoted names
    /// rewritten) cannot carry others; `allow-utf-8` answers write them as `underscores`.
    pub fn legacy(self) -> Escaping {
        match self {
            Escaping::AllowUtf8 => Escaping::Underscores,
            e => e,
        }
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
    fn names_round_trip() {
        for e in Escaping::ALL {
            assert_eq!(Escaping::from_name(e.name()), Some(e));
        }
        assert_eq!(Escaping::from_name("bogus"), None);
        assert!(is_legacy("a:b") && !is_legacy_label("a:b") && !is_legacy("1a"));
    }
}

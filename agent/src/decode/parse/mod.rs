//! The parser, in layers as Prometheus' `textparse` is: one pass over a body's bytes that reads
//! each line with its format's grammar and checks it against the body's families, recording an
//! index into the body (families, and per sample the offsets of its name, label block and line
//! end). Nothing is copied; the only allocations are per body and per family, never per sample.
//!
//! - [`lex`] (and [`escape`]): bytes → names, blanks, numbers, label blocks, escapes, hashes.
//! - [`text`], [`openmetrics`]: the grammar of one format's lines ([`line::Grammar`]), which turns
//!   a line into its kind and tokens ([`line::Line`]), and knows nothing of families.
//! - [`validate`] (with [`histogram`] and [`series`]): the family validator, which places each
//!   line in its family and holds the body to the rules about families, metrics and series.
//! - [`index`]: what a parse leaves, the types the merge reads.
//!
//! This file is the driver that ties them: [`parse`] splits the body into lines and hands each
//! from its grammar to the validator.

pub(super) mod escape;
mod histogram;
mod index;
pub(super) mod lex;
mod line;
mod openmetrics;
pub(super) mod quoted;
mod series;
mod text;
mod validate;

pub(crate) use index::{
    Family, FamilyAt, IdHasher, MType, Parsed, SampleRef, Suffix, DUP, HAS_LABELS, IDENT_LABEL,
    SLOW,
};

use super::escaping::Marker;
use super::{Escaping, Format, ParseError};
use line::{Grammar, Line, Scratch};
use openmetrics::OpenMetrics;
use text::Text;
use validate::Validator;

/// A reason to reject a body, and the byte offset it points at.
type Rejection = (usize, &'static str);

/// Parses and checks a whole body.
pub(crate) fn parse(body: &[u8], format: Format) -> Result<Parsed<'_>, ParseError> {
    let parsed = match format {
        Format::Text => run::<Text>(body),
        Format::OpenMetrics => run::<OpenMetrics>(body),
        // Read by `decode::proto`, and parsed here as the OpenMetrics body it becomes.
        Format::Protobuf => Err((0, "a protobuf body is not parsed as text")),
    };
    parsed.map_err(|(pos, reason)| ParseError::at(body, pos, reason))
}

/// Runs `f` (a parse) on `body`, or, when that fails and the body has quoted (UTF-8) names, on
/// the body with legacy names `escaping` makes of it ([`quoted`]; with the marker of its names
/// for `allow-utf-8`), which is returned beside the result (what `f` made points into it).
/// Errors are placed in `body`; of the parser's and the rewrite's, the earlier.
pub(crate) fn with_quoted<T>(
    body: &[u8],
    format: Format,
    escaping: Escaping,
    f: impl Fn(&[u8], Option<Marker>) -> Result<T, ParseError>,
) -> Result<(T, Option<quoted::Rewritten>), ParseError> {
    let e = match f(body, None) {
        Ok(t) => return Ok((t, None)),
        Err(e) => e,
    };
    match quoted::rewrite(body, format, escaping) {
        Ok(None) => Err(e),
        Ok(Some(r)) => match f(&r.body, r.marker) {
            Ok(t) => Ok((t, Some(r))),
            Err(e) => Err(r.original_error(body, e)),
        },
        Err(q) if (q.line, q.column) <= (e.line, e.column) => Err(q),
        Err(_) => Err(e),
    }
}

fn run<G: Grammar>(b: &[u8]) -> Result<Parsed<'_>, Rejection> {
    if b.len() >= u32::MAX as usize {
        return Err((0, "body larger than 4 GiB"));
    }
    if let Err(e) = std::str::from_utf8(b) {
        return Err((e.valid_up_to(), "invalid UTF-8"));
    }
    let om = G::FORMAT == Format::OpenMetrics;
    let mut validator = Validator::new(b, G::FORMAT);
    let mut scratch = Scratch::new();
    let mut eof = false;
    let mut start = 0;
    while start < b.len() {
        let end = memchr::memchr(b'\n', &b[start..]).map_or(b.len(), |p| start + p);
        if eof {
            return Err((start, "text after # EOF"));
        }
        match G::line(b, start, end, validator.current_name())? {
            Line::Skip => {}
            Line::Eof => eof = true,
            Line::Metadata(m) => validator.metadata(m)?,
            Line::Sample(name) => {
                let (family, suffix) =
                    validator.sample_family(&b[name.start..name.end], name.start)?;
                let line = G::sample(b, name, end, &mut scratch)?;
                validator.sample(family, suffix, &line, &scratch.labels)?;
            }
        }
        if om && end == b.len() && !eof {
            return Err((end, "line does not end with a newline"));
        }
        start = end + 1;
    }
    if om && !eof {
        return Err((b.len(), "missing # EOF"));
    }
    validator.finish()
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
    fn family_errors_come_before_the_rest_of_the_line() {
        // The histogram `h` is incomplete when `b` opens; `b`'s label block is bad too.
        let e = om("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nb{x=1} 1\n# EOF\n")
            .err()
            .unwrap();
        assert_eq!(
            (e.line, e.reason.as_str()),
            (2, "histogram without a +Inf bucket")
        );
        let e = om("# TYPE a counter\n# TYPE a bogus\n# EOF\n")
            .err()
            .unwrap();
        assert_eq!(e.reason, "second TYPE line for this family");
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

    #[test]
    fn repeated_series_are_marked() {
        let p = text("a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\na{x=\"1\"} 3\n").unwrap();
        let dup: Vec<_> = p.samples.iter().map(|s| s.flags & DUP != 0).collect();
        assert_eq!(dup, [false, true, false]);
    }
}

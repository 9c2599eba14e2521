//! Quoted (UTF-8) names in text and OpenMetrics bodies, the syntax of text 1.0.0 and
//! OpenMetrics that Prometheus 3 reads in any text body: `{"http.server.duration",
//! "http.method"="GET"} 1`, a quoted label name after an unquoted metric name
//! (`m{"a.b"="x"} 1`), a quoted name in HELP, TYPE and UNIT lines (`# TYPE "a.b" counter`);
//! inside the quotes `\\`, `\"` and `\n` are the only escapes.
//!
//! The lexer reads legacy names only, so that bodies without quoted names (nearly all) stay on
//! its fast path, untouched. A body it rejects is looked at here: if it has quoted names it is
//! rewritten as the body with legacy names an escaping scheme makes of it
//! ([`super::super::Escaping`]; for `allow-utf-8` marked names, [`Marker`], which the rendering
//! turns back), which the parser then reads and checks like any other (a protobuf body reaches
//! the text engine the same way, `proto::to_openmetrics`). Only those bodies pay for a copy. A
//! sample name that is its family's name and a suffix (`"a.b_total"` of `"a.b"`) is escaped as
//! the family name and the suffix, as client libraries write it. What the rewrite reads it holds to the grammar (an unterminated or
//! empty name, an unknown escape, a name that is not UTF-8, a quoted metric name beside an
//! unquoted one, a quoted name outside braces): the rest of the line is copied and left to the
//! parser, whose errors point back into the original body ([`Rewritten::original_error`]).
//! Two names that one scheme makes equal are then the same name, as across bodies: two
//! families (a later one's HELP, TYPE and UNIT lines are left out: the first wins), two labels
//! of a line (the first is kept). A name given twice as it is stays the parser's error.

use super::lex::{is_blank, scan_label_name, scan_name, skip_blanks};
use crate::decode::escaping::{Marker, Names};
use crate::decode::{Escaping, Format, ParseError};

/// A body with its quoted names rewritten as legacy names.
#[derive(Debug)]
pub(crate) struct Rewritten {
    pub body: Vec<u8>,
    /// (offset in `body`, offset in the original) at every rewritten name's start and end.
    anchors: Vec<(usize, usize)>,
    /// For `allow-utf-8`: the marker its names are written with.
    pub marker: Option<Marker>,
}

impl Rewritten {
    /// An error the parser found in the rewritten body, placed in the original body.
    pub(crate) fn original_error(&self, original: &[u8], e: ParseError) -> ParseError {
        let line_start = if e.line <= 1 {
            0
        } else {
            memchr::memchr_iter(b'\n', &self.body)
                .nth(e.line - 2)
                .map_or(self.body.len(), |p| p + 1)
        };
        let at = line_start + e.column.saturating_sub(1);
        let i = self.anchors.partition_point(|&(o, _)| o <= at);
        let mapped = match i.checked_sub(1).map(|k| self.anchors[k]) {
            Some((o, q)) => q + (at - o),
            None => at,
        };
        ParseError::at(original, mapped, &e.reason)
    }
}

/// `body` with its quoted names rewritten in `escaping` (for `allow-utf-8`, marked:
/// [`Marker`]), or `None` when it has no quoted name. A protobuf body has none.
pub(crate) fn rewrite(
    body: &[u8],
    format: Format,
    escaping: Escaping,
) -> Result<Option<Rewritten>, ParseError> {
    if format == Format::Protobuf {
        return Ok(None);
    }
    let mut w = Writer {
        b: body,
        strict: format == Format::OpenMetrics,
        names: Names::new(escaping, [body]),
        out: Vec::new(),
        anchors: Vec::new(),
        copied: 0,
        any: false,
        declared: Default::default(),
        family: None,
    };
    let mut start = 0;
    while start < body.len() {
        let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |p| start + p);
        w.line(start, end)
            .map_err(|(pos, reason)| ParseError::at(body, pos, &reason))?;
        start = end + 1;
    }
    if !w.any {
        return Ok(None);
    }
    w.out.extend_from_slice(&body[w.copied..]);
    Ok(Some(Rewritten {
        body: w.out,
        anchors: w.anchors,
        marker: w.names.marker(),
    }))
}

type Error = (usize, String);

struct Writer<'a> {
    b: &'a [u8],
    strict: bool,
    names: Names,
    out: Vec<u8>,
    anchors: Vec<(usize, usize)>,
    /// The original is copied to `out` up to here.
    copied: usize,
    /// A quoted name was found.
    any: bool,
    /// Escaped family names of the metadata lines read, and the names they were.
    declared: std::collections::HashMap<String, String>,
    /// The name of the latest HELP, TYPE or UNIT line: its samples' names are escaped as the
    /// family name and their suffix (`_bucket`, `_total`, ...), as client libraries write them.
    family: Option<String>,
}

/// The sample-name suffixes of any family type.
const SUFFIXES: [&str; 9] = [
    "", "_total", "_created", "_bucket", "_sum", "_count", "_gsum", "_gcount", "_info",
];

fn error(pos: usize, reason: &str) -> Error {
    (pos, reason.to_string())
}

impl Writer<'_> {
    /// Writes `text` in place of the original's `from..to`.
    fn replace(&mut self, from: usize, to: usize, text: &[u8]) {
        self.out.extend_from_slice(&self.b[self.copied..from]);
        self.anchors.push((self.out.len(), from));
        self.out.extend_from_slice(text);
        self.anchors.push((self.out.len(), to));
        self.copied = to;
        self.any = true;
    }

    /// Leaves the original's `from..to` out. What was written from `from` on (a rewritten
    /// label name, and what was copied before it) is taken back first.
    fn drop_range(&mut self, from: usize, to: usize) {
        while let Some(&(o, q)) = self.anchors.last() {
            if q < from || self.copied <= from {
                break;
            }
            self.anchors.pop();
            self.out.truncate(o);
            self.copied = q;
        }
        if self.copied > from {
            // Copied as it was since `from`.
            let back = self.copied - from;
            self.out.truncate(self.out.len() - back);
            self.copied = from;
        }
        self.replace(from, to, b"");
    }

    fn blanks(&self, i: usize, end: usize) -> usize {
        if self.strict {
            i
        } else {
            skip_blanks(self.b, i, end)
        }
    }

    fn line(&mut self, start: usize, end: usize) -> Result<(), Error> {
        let b = self.b;
        let i = skip_blanks(b, start, end);
        match b.get(i) {
            _ if i == end => Ok(()),
            Some(b'#') => self.metadata(start, i + 1, end),
            Some(b'{') => {
                // The metric name quoted, first in the braces.
                let j = self.blanks(i + 1, end);
                if b.get(j) != Some(&b'"') || j >= end {
                    return Err(error(
                        j,
                        "expected a metric name before '{' or quoted inside it",
                    ));
                }
                let (name, after) = self.quoted(j, end, "metric name")?;
                let escaped = self.sample_name(&name);
                let k = self.blanks(after, end);
                match b.get(k) {
                    Some(b'}') if k < end => {
                        self.replace(i, k + 1, escaped.as_bytes());
                        self.rest(k + 1, end)
                    }
                    Some(b',') if k < end => {
                        let next = self.blanks(k + 1, end);
                        if b.get(next) == Some(&b'}') && next < end {
                            if self.strict {
                                return Err(error(next, "trailing comma in label set"));
                            }
                            self.replace(i, next + 1, escaped.as_bytes());
                            return self.rest(next + 1, end);
                        }
                        let mut text = escaped.into_bytes();
                        text.push(b'{');
                        self.replace(i, k + 1, &text);
                        let after = self.labels(k + 1, end)?;
                        self.rest(after, end)
                    }
                    _ => Err(error(k, "expected ',' or '}' after the quoted metric name")),
                }
            }
            Some(b'"') => Err(error(i, "a quoted metric name must be inside braces")),
            _ => {
                let ne = scan_name(&b[..end], i);
                if ne == i {
                    return Ok(());
                }
                let k = self.blanks(ne, end);
                if k < end && b[k] == b'{' {
                    let after = self.labels(k + 1, end)?;
                    return self.rest(after, end);
                }
                Ok(())
            }
        }
    }

    /// After a sample's label block: an OpenMetrics exemplar's labels may be quoted too.
    fn rest(&mut self, i: usize, end: usize) -> Result<(), Error> {
        if !self.strict {
            return Ok(());
        }
        let at = memchr::memmem::find(&self.b[i..end], b" # {").map(|p| i + p + 4);
        match at {
            Some(j) => self.labels(j, end).map(|_| ()),
            None => Ok(()),
        }
    }

    /// The labels after a `{` (at `i - 1`): quoted label names are rewritten. Returns where
    /// the reading stopped (after the block, or where the parser will find an error).
    /// Of two labels that become one name, the first is kept (the later is left out).
    fn labels(&mut self, mut i: usize, end: usize) -> Result<usize, Error> {
        let b = self.b;
        // (written name, name as it was) of the labels read.
        let mut seen: Vec<(String, String)> = Vec::new();
        // Where the comma before the current label is.
        let mut comma: Option<usize> = None;
        loop {
            i = self.blanks(i, end);
            if i >= end || b[i] == b'}' {
                return Ok(i);
            }
            let label_start = i;
            let (name_end, out_name, original) = if b[i] == b'"' {
                let (name, after) = self.quoted(i, end, "label name")?;
                let k = self.blanks(after, end);
                if k < end && (b[k] == b',' || b[k] == b'}') {
                    return Err(error(
                        i,
                        "a quoted metric name inside braces after an unquoted metric name or a label",
                    ));
                }
                let escaped = self.names.label_name(&name).into_owned();
                self.replace(i, after, escaped.as_bytes());
                (after, escaped, name)
            } else {
                let ne = scan_label_name(&b[..end], i);
                if ne == i {
                    return Ok(i);
                }
                let name = String::from_utf8_lossy(&b[i..ne]).into_owned();
                (ne, name.clone(), name)
            };
            let eq = self.blanks(name_end, end);
            if eq >= end || b[eq] != b'=' {
                return Ok(eq);
            }
            let open = self.blanks(eq + 1, end);
            if open >= end || b[open] != b'"' {
                return Ok(open);
            }
            let Some(close) = value_end(b, open + 1, end) else {
                return Ok(open);
            };
            let k = self.blanks(close + 1, end);
            // A name written like an earlier, other one's: left out, with the comma before it
            // (there is one: it is not the first). The same name twice is the parser's error.
            if seen.iter().any(|(o, n)| *o == out_name && *n != original) {
                self.drop_range(comma.unwrap_or(label_start), close + 1);
            } else {
                seen.push((out_name, original));
            }
            if k < end && b[k] == b',' {
                comma = Some(k);
                i = k + 1;
            } else {
                return Ok(k);
            }
        }
    }

    /// A comment line whose text starts at `i`: the name of HELP, TYPE and (OpenMetrics) UNIT
    /// may be quoted.
    fn metadata(&mut self, start: usize, i: usize, end: usize) -> Result<(), Error> {
        let b = self.b;
        let keyword = skip_blanks(b, i, end);
        let keyword_end = (keyword..end).find(|&k| is_blank(b[k])).unwrap_or(end);
        match &b[keyword..keyword_end] {
            b"HELP" | b"TYPE" => {}
            b"UNIT" if self.strict => {}
            _ => return Ok(()),
        }
        let n = skip_blanks(b, keyword_end, end);
        let (name, escaped) = if n < end && b[n] == b'"' {
            let (name, after) = self.quoted(n, end, "metric name")?;
            let escaped = self.names.metric_name(&name).into_owned();
            self.replace(n, after, escaped.as_bytes());
            (name, escaped)
        } else {
            let name_end = scan_name(&b[..end], n);
            let name = String::from_utf8_lossy(&b[n..name_end]).into_owned();
            (name.clone(), name)
        };
        // Another family's name escaped the same: one family, whose first metadata wins.
        match self.declared.get(&escaped) {
            Some(first) if *first != name => {
                let line_end = (end + 1).min(b.len());
                self.drop_range(start, line_end);
            }
            Some(_) => {}
            None => {
                self.declared.insert(escaped, name.clone());
            }
        }
        self.family = Some(name);
        Ok(())
    }

    /// A quoted sample name, escaped: the family's name escaped and the suffix as it is when
    /// it is one of the latest family's sample names, else the whole name.
    fn sample_name(&self, name: &str) -> String {
        if let Some(family) = &self.family {
            if let Some(suffix) = name.strip_prefix(family.as_str()) {
                if SUFFIXES.contains(&suffix) {
                    return self.names.metric_name(family).into_owned() + suffix;
                }
            }
        }
        self.names.metric_name(name).into_owned()
    }

    /// The quoted name whose `"` is at `i`, unescaped, and the index after its closing quote.
    fn quoted(&self, i: usize, end: usize, what: &str) -> Result<(String, usize), Error> {
        let b = self.b;
        let mut name = Vec::new();
        let mut k = i + 1;
        loop {
            let next = memchr::memchr2(b'"', b'\\', &b[k..end]).map_or(end, |p| k + p);
            name.extend_from_slice(&b[k..next]);
            match b.get(next) {
                Some(b'"') if next < end => {
                    k = next + 1;
                    break;
                }
                Some(b'\\') if next + 1 < end => {
                    name.push(match b[next + 1] {
                        b'\\' => b'\\',
                        b'"' => b'"',
                        b'n' => b'\n',
                        _ => {
                            return Err(error(
                                next,
                                &format!("invalid escape sequence in a quoted {what}"),
                            ))
                        }
                    });
                    k = next + 2;
                }
                _ => return Err(error(i, &format!("unterminated quoted {what}"))),
            }
        }
        if name.is_empty() {
            return Err(error(i, &format!("empty quoted {what}")));
        }
        match String::from_utf8(name) {
            Ok(name) => Ok((name, k)),
            Err(e) => Err((
                i + 1 + e.utf8_error().valid_up_to(),
                format!(
                    "{what} {:?} is not valid UTF-8",
                    String::from_utf8_lossy(e.as_bytes())
                ),
            )),
        }
    }
}

/// The index of the `"` that ends the label value starting at `i`, if it ends on the line.
fn value_end(b: &[u8], mut i: usize, end: usize) -> Option<usize> {
    loop {
        i += memchr::memchr2(b'"', b'\\', &b[i..end])?;
        if b[i] == b'"' {
            return Some(i);
        }
        i += 2;
        if i >= end {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(s: &str, format: Format, e: Escaping) -> Result<Option<String>, ParseError> {
        rewrite(s.as_bytes(), format, e)
            .map(|r| r.map(|r| String::from_utf8(r.body).expect("UTF-8")))
    }

    fn ok(s: &str, format: Format) -> String {
        rw(s, format, Escaping::Underscores)
            .expect("rewritten")
            .expect("has quoted names")
    }

    fn err(s: &str, format: Format) -> (usize, usize, String) {
        let e = rw(s, format, Escaping::Underscores).expect_err("rejected");
        (e.line, e.column, e.reason)
    }

    #[test]
    fn quoted_names_become_legacy_names() {
        let om = "# TYPE \"a.b\" counter\n# HELP \"a.b\" h\n# UNIT \"a.b\" s\n\
                  {\"a.b_total\",\"c.d\"=\"x\",e=\"y\"} 1 # {\"t.i\"=\"1\"} 1\n\
                  {\"a.b_created\"} 2\nm{\"x\\\"y\"=\"{\\\"}\"} 1\n# EOF\n";
        assert_eq!(
            ok(om, Format::OpenMetrics),
            "# TYPE a_b counter\n# HELP a_b h\n# UNIT a_b s\n\
             a_b_total{c_d=\"x\",e=\"y\"} 1 # {t_i=\"1\"} 1\n\
             a_b_created 2\nm{x_y=\"{\\\"}\"} 1\n# EOF\n"
        );
        // Text allows blanks and a trailing comma; UNIT is a comment there.
        let text = "# UNIT \"a.b\" s\n  { \"a.b\" , \"c\" = \"1\" , } 1\n{\"x\",} 2\n";
        assert_eq!(
            ok(text, Format::Text),
            "# UNIT \"a.b\" s\n  a_b{ c = \"1\" , } 1\nx 2\n"
        );
        assert_eq!(
            rw(
                "a{b=\"1\"} 1\n# TYPE b gauge\n",
                Format::Text,
                Escaping::Dots
            ),
            Ok(None)
        );
        // A label twice (no quoted name) is left to the parser, which rejects it.
        let twice = "a{a=\"1\",a=\"1\"} 1\n# EOF\n";
        assert_eq!(
            rw(twice, Format::OpenMetrics, Escaping::Underscores),
            Ok(None)
        );
        let kept = ok("{\"a.b\",x=\"1\",x=\"2\"} 1\n", Format::Text);
        assert!(kept.contains("x=\"1\",x=\"2\""), "{kept}");
    }

    #[test]
    fn names_that_escape_alike_make_one_family_and_one_label() {
        let body = "# TYPE \"a.b\" gauge\n{\"a.b\",\"x.y\"=\"1\",x_y=\"2\",z=\"3\"} 1\n\
                    # TYPE a_b gauge\na_b{\"x.y\"=\"1\",z=\"3\",\"x y\"=\"2\"} 2\n";
        assert_eq!(
            ok(body, Format::Text),
            "# TYPE a_b gauge\na_b{x_y=\"1\",z=\"3\"} 1\na_b{x_y=\"1\",z=\"3\"} 2\n"
        );
        // The body then parses, its second series a duplicate of the first.
        let r = rewrite(body.as_bytes(), Format::Text, Escaping::Underscores)
            .unwrap()
            .unwrap();
        let p = super::super::parse(&r.body, Format::Text).expect("valid");
        assert_eq!(p.families.len(), 1);
        // allow-utf-8 keeps them apart.
        let marked = rw(body, Format::Text, Escaping::AllowUtf8)
            .unwrap()
            .unwrap();
        assert!(marked.contains("# TYPE a_b gauge\n"), "{marked}");
    }

    #[test]
    fn every_scheme() {
        let s = "{\"a.b_c\",\"d.e\"=\"1\"} 1\n";
        let got = |e| rw(s, Format::Text, e).expect("ok").expect("some");
        assert_eq!(got(Escaping::Underscores), "a_b_c{d_e=\"1\"} 1\n");
        assert_eq!(got(Escaping::AllowUtf8), "aGaa2eZb_c{dGaa2eZe=\"1\"} 1\n");
        assert_eq!(got(Escaping::Dots), "a_dot_b__c{d_dot_e=\"1\"} 1\n");
        assert_eq!(got(Escaping::Values), "U__a_2e_b__c{U__d_2e_e=\"1\"} 1\n");
    }

    #[test]
    fn each_rejection_names_line_and_column() {
        let cases: &[(&str, (usize, usize, &str))] = &[
            ("{\"a.b} 1\n", (1, 2, "unterminated quoted metric name")),
            (
                "{\"a\\z\"} 1\n",
                (1, 4, "invalid escape sequence in a quoted metric name"),
            ),
            ("{\"\"} 1\n", (1, 2, "empty quoted metric name")),
            ("a{\"\"=\"1\"} 1\n", (1, 3, "empty quoted label name")),
            (
                "a 1\nb{\"c.d\"} 1\n",
                (
                    2,
                    3,
                    "a quoted metric name inside braces after an unquoted metric name or a label",
                ),
            ),
            (
                "{x=\"1\",\"c.d\"} 1\n",
                (
                    1,
                    2,
                    "expected a metric name before '{' or quoted inside it",
                ),
            ),
            (
                "\"a.b\" 1\n",
                (1, 1, "a quoted metric name must be inside braces"),
            ),
            (
                "{\"a.b\" x=\"1\"} 1\n",
                (1, 8, "expected ',' or '}' after the quoted metric name"),
            ),
        ];
        for (body, (line, column, reason)) in cases {
            assert_eq!(
                err(body, Format::Text),
                (*line, *column, reason.to_string()),
                "{body:?}"
            );
        }
        assert_eq!(
            err("{\"a\",} 1\n# EOF\n", Format::OpenMetrics).2,
            "trailing comma in label set"
        );
        let bad = b"{\"a\xffb\"} 1\n";
        let e = rewrite(bad, Format::Text, Escaping::Underscores).expect_err("not UTF-8");
        assert_eq!((e.line, e.column), (1, 4));
        assert!(e.reason.contains("is not valid UTF-8"), "{e}");
    }

    #[test]
    fn parser_errors_point_into_the_original() {
        let body = b"{\"a.very.long.name\",x=\"1\"} 1 x\n";
        let r = rewrite(body, Format::Text, Escaping::Values)
            .expect("ok")
            .expect("some");
        let e = super::super::parse(&r.body, Format::Text)
            .err()
            .expect("bad timestamp");
        let e = r.original_error(body, e);
        assert_eq!((e.line, e.column), (1, 30));
    }
}

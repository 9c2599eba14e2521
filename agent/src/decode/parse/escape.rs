//! Escapes: reading and writing the escaped strings of label values and HELP texts, whose
//! escape sets differ between the formats. Strings stay escaped in the index; these functions
//! decode them for comparisons on rare paths and re-escape them for output.

/// Where an escaped string comes from; decides which escapes exist and which bytes need one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Escaped {
    /// Label values (both formats): `\\`, `\"`, `\n`.
    LabelValue,
    /// Text 0.0.4 HELP: `\\`, `\n`; a raw `"` is plain.
    TextHelp,
    /// OpenMetrics HELP: `\\`, `\"`, `\n`.
    OmHelp,
    /// Not escaped at all: protobuf's strings.
    Raw,
}

/// Decodes an escaped string into `out` (for comparisons on the rare paths). Unknown escapes
/// are kept literally, as OpenMetrics parsers do.
pub(crate) fn unescape(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && i + 1 < raw.len() {
            match raw[i + 1] {
                b'\\' => out.push(b'\\'),
                b'"' => out.push(b'"'),
                b'n' => out.push(b'\n'),
                c => {
                    out.push(b'\\');
                    out.push(c);
                }
            }
            i += 2;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
}

/// A name outside the legacy set as text 1.0.0 and OpenMetrics write it: in quotes, `\\`,
/// `\"` and newlines escaped as in label values.
pub(crate) fn write_quoted(name: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    write_escaped(name, Escaped::Raw, Escaped::LabelValue, out);
    out.push(b'"');
}

/// Where the first escape that text 0.0.4 HELP lacks (any but `\\` and `\n`) starts in `raw`.
pub(crate) fn bad_text_help_escape(raw: &[u8]) -> Option<usize> {
    let mut k = 0;
    while k < raw.len() {
        if raw[k] == b'\\' {
            if !matches!(raw.get(k + 1), Some(b'\\') | Some(b'n')) {
                return Some(k);
            }
            k += 1;
        }
        k += 1;
    }
    None
}

/// Writes a raw escaped string of kind `from` as kind `to`, re-escaping where the two differ.
/// The common case (no backslash, no quote) is one copy.
pub(crate) fn write_escaped(raw: &[u8], from: Escaped, to: Escaped, out: &mut Vec<u8>) {
    if from == to && from == Escaped::Raw {
        out.extend_from_slice(raw);
        return;
    }
    if to == Escaped::Raw {
        return unescape(raw, out);
    }
    if from == Escaped::Raw {
        for &c in raw {
            match c {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'"' => push_quote(to, out),
                c => out.push(c),
            }
        }
        return;
    }
    if !raw.iter().any(|&c| c == b'\\' || c == b'"') {
        out.extend_from_slice(raw);
        return;
    }
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c == b'\\' && i + 1 < raw.len() {
            let d = raw[i + 1];
            let known = match from {
                Escaped::TextHelp => d == b'\\' || d == b'n',
                _ => d == b'\\' || d == b'n' || d == b'"',
            };
            if known {
                if d == b'"' {
                    push_quote(to, out);
                } else {
                    out.push(b'\\');
                    out.push(d);
                }
                i += 2;
                continue;
            }
            // A literal backslash followed by whatever comes next.
            out.extend_from_slice(b"\\\\");
            i += 1;
            continue;
        }
        if c == b'\\' {
            out.extend_from_slice(b"\\\\");
        } else if c == b'"' {
            push_quote(to, out);
        } else {
            out.push(c);
        }
        i += 1;
    }
}

fn push_quote(to: Escaped, out: &mut Vec<u8>) {
    if to == Escaped::TextHelp {
        out.push(b'"');
    } else {
        out.extend_from_slice(b"\\\"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_convert() {
        let mut o = Vec::new();
        write_escaped(br#"a\"b\z"#, Escaped::OmHelp, Escaped::TextHelp, &mut o);
        assert_eq!(o, br#"a"b\\z"#);
        o.clear();
        write_escaped(br#"say "hi"\n"#, Escaped::TextHelp, Escaped::OmHelp, &mut o);
        assert_eq!(o, br#"say \"hi\"\n"#);
        o.clear();
        write_escaped(
            br#"x\z\\"#,
            Escaped::LabelValue,
            Escaped::LabelValue,
            &mut o,
        );
        assert_eq!(o, br#"x\\z\\"#);
    }

    #[test]
    fn raw_strings_are_escaped_and_unescaped() {
        let mut o = Vec::new();
        write_escaped(b"a\\b\n\"c\"", Escaped::Raw, Escaped::OmHelp, &mut o);
        assert_eq!(o, br#"a\\b\n\"c\""#);
        o.clear();
        write_escaped(b"a\\b\n\"c\"", Escaped::Raw, Escaped::TextHelp, &mut o);
        assert_eq!(o, br#"a\\b\n"c""#);
        o.clear();
        write_escaped(br#"a\\b\n\"c\z"#, Escaped::OmHelp, Escaped::Raw, &mut o);
        assert_eq!(o, b"a\\b\n\"c\\z");
    }

    #[test]
    fn text_help_escapes() {
        assert_eq!(bad_text_help_escape(br#"a\\b\n"#), None);
        assert_eq!(bad_text_help_escape(br#"ab\"c"#), Some(2));
        assert_eq!(bad_text_help_escape(br#"ab\"#), Some(2));
    }
}

//! The grammar of Prometheus text 0.0.4 lines, as Prometheus' Go parser (expfmt) reads them:
//! blanks (spaces, tabs) between tokens and around the line, a trailing comma in label sets,
//! comments and blank lines ignored, `# HELP` with the escapes `\\` and `\n` only, timestamps in
//! integer milliseconds. Hexadecimal floats (which Go would accept) are rejected.

use super::escape::bad_text_help_escape;
use super::index::MType;
use super::lex::{
    is_blank, is_int, is_number, label_block, scan_name, scan_name_from, skip_blanks,
};
use super::line::{Grammar, Line, Metadata, MetadataKind, SampleLine, SampleName, Scratch};
use super::Rejection;
use crate::decode::Format;

pub(super) struct Text;

impl Grammar for Text {
    const FORMAT: Format = Format::Text;

    #[inline]
    fn line<'a>(
        b: &'a [u8],
        start: usize,
        end: usize,
        known_name: Option<&[u8]>,
    ) -> Result<Line<'a>, Rejection> {
        let i = skip_blanks(b, start, end);
        if i == end {
            return Ok(Line::Skip);
        }
        if b[i] == b'#' {
            return metadata(b, start, i + 1, end);
        }
        let name_end = scan_name_from(b, i, end, known_name);
        if name_end == i {
            return Err((i, "invalid metric name"));
        }
        Ok(Line::Sample(SampleName {
            start: i,
            end: name_end,
            indented: i > start,
        }))
    }

    #[inline]
    fn sample(
        b: &[u8],
        name: SampleName,
        end: usize,
        scratch: &mut Scratch,
    ) -> Result<SampleLine, Rejection> {
        let mut slow = name.indented;
        // Blanks may come before the label block.
        let mut i = name.end;
        let brace = skip_blanks(b, i, end);
        if brace > i && brace < end && b[brace] == b'{' {
            slow = true;
            i = brace;
        }
        let (labels_end, odd_block) = label_block(b, i, end, false, &mut scratch.labels)?;
        slow |= odd_block;
        i = labels_end;
        if i >= end || !is_blank(b[i]) {
            return Err((i, "expected a space before the value"));
        }
        i += 1;
        if i < end && is_blank(b[i]) {
            slow = true;
        }
        let value_start = skip_blanks(b, i, end);
        let value_end = token_end(b, value_start, end);
        if !is_number(&b[value_start..value_end]) {
            return Err((value_start, "invalid value"));
        }
        let (timestamp, odd_timestamp) = timestamp(b, value_end, end)?;
        slow |= odd_timestamp;
        if end > name.start && is_blank(b[end - 1]) {
            slow = true;
        }
        Ok(SampleLine {
            start: name.start,
            end,
            name_end: name.end,
            labels_end,
            value: (value_start, value_end),
            timestamp,
            exemplar: false,
            slow,
        })
    }
}

/// The end of the token that starts at `i`: the next blank, or `end`.
#[inline]
fn token_end(b: &[u8], mut i: usize, end: usize) -> usize {
    while i < end && !is_blank(b[i]) {
        i += 1;
    }
    i
}

/// The optional timestamp after the value, which ends at `i`, and whether it is set off by
/// something other than one space. Only blanks may follow it.
#[inline]
fn timestamp(b: &[u8], i: usize, end: usize) -> Result<(Option<(usize, usize)>, bool), Rejection> {
    let start = skip_blanks(b, i, end);
    if start == end {
        return Ok((None, false));
    }
    let odd = start > i + 1 || b[i] != b' ';
    let token = token_end(b, start, end);
    if !is_int(&b[start..token]) {
        return Err((
            start,
            "invalid timestamp (text format: integer milliseconds)",
        ));
    }
    let rest = skip_blanks(b, token, end);
    if rest < end {
        return Err((rest, "unexpected text after the timestamp"));
    }
    Ok((Some((start, token)), odd))
}

/// A comment line whose text starts at `i` (after the `#`): HELP, TYPE, or a comment.
fn metadata(b: &[u8], line_start: usize, i: usize, end: usize) -> Result<Line<'_>, Rejection> {
    let keyword = skip_blanks(b, i, end);
    let keyword_end = (keyword..end).find(|&k| is_blank(b[k])).unwrap_or(end);
    let is_help = match &b[keyword..keyword_end] {
        b"HELP" => true,
        b"TYPE" => false,
        _ => return Ok(Line::Skip),
    };
    let name_start = skip_blanks(b, keyword_end, end);
    let name_end = scan_name(&b[..end], name_start);
    if name_end == name_start || (name_end < end && !is_blank(b[name_end])) {
        return Err((name_end, "invalid metric name in metadata"));
    }
    let at = skip_blanks(b, name_end, end);
    let kind = if is_help {
        let text = &b[at..end];
        MetadataKind::Help {
            text,
            bad_escape: bad_text_help_escape(text).map(|k| at + k),
        }
    } else {
        let mut word_end = end;
        while word_end > at && is_blank(b[word_end - 1]) {
            word_end -= 1;
        }
        MetadataKind::Type {
            mtype: MType::from_text(&b[at..word_end]),
            at,
        }
    };
    Ok(Line::Metadata(Metadata {
        line_start,
        name: &b[name_start..name_end],
        kind,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Result<Line<'_>, Rejection> {
        Text::line(s.as_bytes(), 0, s.len(), None)
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        for s in ["", "  \t", "# a comment", "#HELPER x", "  #"] {
            assert!(matches!(line(s), Ok(Line::Skip)), "{s:?}");
        }
        assert!(line("  # TYPE").is_err());
    }

    #[test]
    fn metadata_keeps_its_verdicts_for_the_validator() {
        let Ok(Line::Metadata(m)) = line("#\tTYPE  a_b  untyped \t") else {
            panic!("not a TYPE line");
        };
        assert_eq!(m.name, b"a_b");
        assert!(matches!(
            m.kind,
            MetadataKind::Type {
                mtype: Some(MType::Unknown),
                ..
            }
        ));
        let Ok(Line::Metadata(m)) = line("# HELP a x\\y") else {
            panic!("not a HELP line");
        };
        assert!(matches!(
            m.kind,
            MetadataKind::Help {
                bad_escape: Some(10),
                ..
            }
        ));
        assert_eq!(
            line("# HELP 1a x").err(),
            Some((7, "invalid metric name in metadata"))
        );
    }

    #[test]
    fn sample_tokens_and_slow_spellings() {
        let s = b"  a { x = \"1\" , }\t1  123 \n";
        let end = s.len() - 1;
        let Ok(Line::Sample(name)) = Text::line(s, 0, end, None) else {
            panic!("not a sample line");
        };
        let mut scratch = Scratch::new();
        let tokens = Text::sample(s, name, end, &mut scratch).unwrap();
        assert_eq!((tokens.start, tokens.name_end), (2, 3));
        assert_eq!(&s[tokens.value.0..tokens.value.1], b"1");
        assert_eq!(tokens.timestamp, Some((21, 24)));
        assert!(tokens.slow);
        assert_eq!(scratch.labels.len(), 1);
        let plain = b"a{x=\"1\"} 1 123";
        let Ok(Line::Sample(name)) = Text::line(plain, 0, plain.len(), None) else {
            panic!("not a sample line");
        };
        assert!(
            !Text::sample(plain, name, plain.len(), &mut scratch)
                .unwrap()
                .slow
        );
        let bad = b"a 1 1.5";
        let Ok(Line::Sample(name)) = Text::line(bad, 0, bad.len(), None) else {
            panic!("not a sample line");
        };
        let e = Text::sample(bad, name, bad.len(), &mut scratch).err();
        assert_eq!(e.map(|e| e.0), Some(4));
    }
}

//! The grammar of OpenMetrics 1.0.0 lines: no blank lines, comments only as `# HELP`, `# TYPE`,
//! `# UNIT` and `# EOF`, one space between tokens, label sets without blanks or trailing comma,
//! timestamps as real numbers of seconds, and exemplars (` # {labels} value [timestamp]`, at
//! most 128 characters of labels). Unknown escapes in label values and HELP (`\z`) are accepted
//! and mean a literal backslash, as in the reference parsers.

use super::index::MType;
use super::lex::{
    is_name_char, is_number, is_realnumber, label_block, lex_labels, scan_name, scan_name_from,
    BlockInfo, Label,
};
use super::line::{Grammar, Line, Metadata, MetadataKind, SampleLine, SampleName, Scratch};
use super::Rejection;
use crate::decode::Format;

pub(super) struct OpenMetrics;

impl Grammar for OpenMetrics {
    const FORMAT: Format = Format::OpenMetrics;

    #[inline]
    fn line<'a>(
        b: &'a [u8],
        start: usize,
        end: usize,
        known_name: Option<&[u8]>,
    ) -> Result<Line<'a>, Rejection> {
        let line = &b[start..end];
        if line.is_empty() {
            return Err((start, "blank line"));
        }
        if line[0] == b'#' {
            return metadata(b, start, end);
        }
        let name_end = scan_name_from(b, start, end, known_name);
        if name_end == start {
            return Err((start, "invalid metric name"));
        }
        Ok(Line::Sample(SampleName {
            start,
            end: name_end,
            indented: false,
        }))
    }

    #[inline]
    fn sample(
        b: &[u8],
        name: SampleName,
        end: usize,
        scratch: &mut Scratch,
    ) -> Result<SampleLine, Rejection> {
        let (labels_end, slow) = label_block(b, name.end, end, true, &mut scratch.labels)?;
        let mut i = labels_end;
        if i >= end || b[i] != b' ' {
            return Err((i, "expected a space before the value"));
        }
        i += 1;
        let value_start = i;
        let value_end = token_end(b, value_start, end);
        if !is_number(&b[value_start..value_end]) {
            return Err((value_start, "invalid value"));
        }
        i = value_end;
        let mut timestamp = None;
        if i < end && b.get(i + 1) != Some(&b'#') {
            let start = i + 1;
            let token = token_end(b, start, end);
            if !is_realnumber(&b[start..token]) {
                return Err((start, "invalid timestamp"));
            }
            timestamp = Some((start, token));
            i = token;
        }
        let exemplar = i < end;
        if exemplar {
            check_exemplar(b, i, end, &mut scratch.exemplar_labels)?;
        }
        Ok(SampleLine {
            start: name.start,
            end,
            name_end: name.end,
            labels_end,
            value: (value_start, value_end),
            timestamp,
            exemplar,
            slow,
        })
    }
}

/// The end of the token that starts at `i`: the next space, or `end`.
#[inline]
fn token_end(b: &[u8], mut i: usize, end: usize) -> usize {
    while i < end && b[i] != b' ' {
        i += 1;
    }
    i
}

/// A line that starts with `#`: `# EOF`, or HELP, TYPE or UNIT with a metric name and an
/// argument after one space each.
fn metadata(b: &[u8], start: usize, end: usize) -> Result<Line<'_>, Rejection> {
    let line = &b[start..end];
    if line == b"# EOF" {
        return Ok(Line::Eof);
    }
    let keyword = match line.get(..7) {
        Some(k @ (b"# HELP " | b"# TYPE " | b"# UNIT ")) => &k[2..6],
        _ => {
            return Err((
                start,
                "comment lines other than HELP, TYPE, UNIT and EOF are not allowed",
            ))
        }
    };
    let name_start = start + 7;
    let name_end = scan_name(&b[..end], name_start);
    if name_end == name_start {
        return Err((name_start, "invalid metric name in metadata"));
    }
    if b.get(name_end) != Some(&b' ') || name_end >= end {
        return Err((name_end, "expected a space after the metric name"));
    }
    let at = name_end + 1;
    let arg = &b[at..end];
    let kind = match keyword {
        b"HELP" => MetadataKind::Help {
            text: arg,
            bad_escape: None,
        },
        b"TYPE" => MetadataKind::Type {
            mtype: MType::from_om(arg),
            at,
        },
        _ => MetadataKind::Unit {
            unit: arg,
            at,
            valid: arg.iter().all(|&c| is_name_char(c)),
        },
    };
    Ok(Line::Metadata(Metadata {
        line_start: start,
        name: &b[name_start..name_end],
        kind,
    }))
}

/// Checks the exemplar that starts at `b[i]` (` # {...} value [timestamp]`), up to `end`.
fn check_exemplar(
    b: &[u8],
    i: usize,
    end: usize,
    labels: &mut Vec<Label>,
) -> Result<(), Rejection> {
    if b.get(i..i + 4) != Some(b" # {") || i + 4 > end {
        return Err((i, "invalid exemplar: expected ' # {'"));
    }
    let mut info = BlockInfo::default();
    let lexed = lex_labels(&b[..end], i + 3, true, labels, &mut info);
    let characters = |s: &[u8]| s.iter().filter(|&&c| c & 0xC0 != 0x80).count();
    let length: usize = labels
        .iter()
        .map(|l| characters(l.name(b)) + characters(l.value(b)))
        .sum();
    let mut j = lexed?;
    if length > 128 {
        return Err((i + 3, "exemplar labels longer than 128 characters"));
    }
    if b.get(j) != Some(&b' ') || j >= end {
        return Err((j, "expected a space before the exemplar value"));
    }
    j += 1;
    let value_start = j;
    j = token_end(b, j, end);
    if !is_number(&b[value_start..j]) {
        return Err((value_start, "invalid exemplar value"));
    }
    if j < end && !is_realnumber(&b[j + 1..end]) {
        return Err((j + 1, "invalid exemplar timestamp"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Result<Line<'_>, Rejection> {
        OpenMetrics::line(s.as_bytes(), 0, s.len(), None)
    }

    fn sample(s: &str) -> Result<SampleLine, Rejection> {
        let Line::Sample(name) = line(s)? else {
            panic!("not a sample line: {s:?}");
        };
        OpenMetrics::sample(s.as_bytes(), name, s.len(), &mut Scratch::new())
    }

    #[test]
    fn metadata_lines() {
        assert!(matches!(line("# EOF"), Ok(Line::Eof)));
        assert_eq!(line("").err(), Some((0, "blank line")));
        assert!(line("# a comment").is_err());
        let Ok(Line::Metadata(m)) = line("# UNIT a_seconds sec-onds") else {
            panic!("not a UNIT line");
        };
        assert!(matches!(
            m.kind,
            MetadataKind::Unit {
                valid: false,
                at: 17,
                ..
            }
        ));
        assert_eq!(
            line("# TYPE a").err(),
            Some((8, "expected a space after the metric name"))
        );
    }

    #[test]
    fn sample_tokens() {
        let s = sample("a_total{x=\"1\"} 1 2.5 # {t=\"x\"} 1 2").unwrap();
        assert_eq!((s.name_end, s.labels_end, s.value), (7, 14, (15, 16)));
        assert_eq!(s.timestamp, Some((17, 20)));
        assert!(s.exemplar && !s.slow);
        assert!(sample("a{x=\"\\z\"} 1").unwrap().slow);
        assert_eq!(sample("a  1").err(), Some((2, "invalid value")));
        assert_eq!(sample("a 1 # x").err().map(|e| e.0), Some(3));
        let long = format!("a 1 # {{l=\"{}\"}} 1", "x".repeat(128));
        assert!(sample(&long).is_err());
    }
}

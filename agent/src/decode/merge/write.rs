//! The writer: emits a [`Plan`] into a sink, a buffer or a chunk list. Headers are written
//! from the plan; each source's block is copied (or, for a chunk list, sliced) as it is, except
//! in the families whose series must be compared across sources, whose lines are written one by
//! one without the duplicates (rule 5).

use std::ops::Range;

use bytes::Bytes;

use super::super::lex::{self, lex_labels, name_hash, pair_hash, BlockInfo, Label};
use super::super::parse::MType;
use super::super::Format;
use super::convert::help_kind;
use super::dedup::first_of_each_series;
use super::plan::{FamilyPlan, Plan};
use super::render::Rendered;

/// Where the writer writes: the headers it makes, and the sources' blocks.
pub(super) trait Sink {
    fn reserve(&mut self, text: usize, blocks: usize);
    /// The buffer the writer appends headers (and lines it picks one by one) to.
    fn text(&mut self) -> &mut Vec<u8>;
    fn block(&mut self, lines: &Bytes, range: Range<usize>);
}

/// Blocks below this size are copied into the owned text rather than sliced: a chunk each would
/// cost more (refcount, an iovec, a frame) than the copy.
const SMALL_BLOCK: usize = 256;

/// The chunk list: every piece of owned text is a range of one buffer, frozen at the end.
#[derive(Default)]
pub(super) struct Chunks {
    text: Vec<u8>,
    pieces: Vec<Piece>,
    /// Start of the owned text not yet in `pieces`.
    open: usize,
}

enum Piece {
    Text(Range<usize>),
    Block(Bytes),
}

impl Chunks {
    fn close_text(&mut self) {
        if self.text.len() > self.open {
            self.pieces.push(Piece::Text(self.open..self.text.len()));
            self.open = self.text.len();
        }
    }

    pub(super) fn finish(mut self) -> Vec<Bytes> {
        self.close_text();
        let text = Bytes::from(self.text);
        self.pieces
            .into_iter()
            .map(|p| match p {
                Piece::Text(r) => text.slice(r),
                Piece::Block(b) => b,
            })
            .collect()
    }
}

impl Sink for Chunks {
    fn reserve(&mut self, text: usize, _blocks: usize) {
        self.text.reserve(text);
    }

    fn text(&mut self) -> &mut Vec<u8> {
        &mut self.text
    }

    fn block(&mut self, lines: &Bytes, range: Range<usize>) {
        if range.len() < SMALL_BLOCK {
            self.text.extend_from_slice(&lines[range]);
            return;
        }
        self.close_text();
        self.pieces.push(Piece::Block(lines.slice(range)));
    }
}

/// Writes the plan's families (and `# EOF` in OpenMetrics); returns the duplicates left out.
pub(super) fn write<S: Sink>(plan: &Plan<'_>, rs: &[&Rendered], out: Format, sink: &mut S) -> u64 {
    if out == Format::Protobuf {
        return super::protobuf::write(plan, rs, sink);
    }
    // Exactly enough (HELP may grow by its escapes): a regrown buffer costs more than the merge.
    sink.reserve(plan.header_bytes, plan.block_bytes);
    let mut duplicates = 0u64;
    let mut compare = SeriesComparison::default();
    for family in plan.families.iter().filter(|f| !f.dropped) {
        write_header(
            &[family.name],
            family.mtype,
            family.help,
            family.unit,
            out,
            sink.text(),
        );
        if family.compare_series {
            duplicates += compare.write(plan, family, rs, out, sink.text());
            continue;
        }
        for m in &plan.members[family.members.0 as usize..family.members.1 as usize] {
            let Some(b) = m.block else {
                continue;
            };
            let r = rs[m.source as usize];
            let block = &r.blocks[b as usize];
            sink.block(&r.lines, block.lines.0 as usize..block.lines.1 as usize);
            duplicates += block.dups;
        }
    }
    if out == Format::OpenMetrics {
        sink.text().extend_from_slice(b"# EOF\n");
    }
    duplicates
}

/// The lines of a family whose series may meet across sources, compared by series: the
/// scratch buffers, kept between families.
#[derive(Default)]
struct SeriesComparison<'r> {
    /// Every candidate line: its bytes (with the `\n`).
    lines: Vec<&'r [u8]>,
    keys: Vec<(u64, u32)>,
    dup: Vec<bool>,
    labels: Vec<Label>,
}

impl<'r> SeriesComparison<'r> {
    fn write(
        &mut self,
        plan: &Plan<'_>,
        family: &FamilyPlan<'_>,
        rs: &[&'r Rendered],
        out: Format,
        buf: &mut Vec<u8>,
    ) -> u64 {
        let strict = out == Format::OpenMetrics;
        self.lines.clear();
        self.keys.clear();
        let mut duplicates = 0u64;
        for m in &plan.members[family.members.0 as usize..family.members.1 as usize] {
            let Some(b) = m.block else {
                continue;
            };
            let r = rs[m.source as usize];
            let block = &r.blocks[b as usize];
            let bytes = &r.lines[block.lines.0 as usize..block.lines.1 as usize];
            duplicates += block.dups;
            if m.duplicate_whole {
                duplicates += bytes.iter().filter(|&&c| c == b'\n').count() as u64;
                continue;
            }
            for line in bytes.split_inclusive(|&c| c == b'\n') {
                let hash = series_hash(line, strict, &mut self.labels);
                self.keys.push((hash, self.lines.len() as u32));
                self.lines.push(line);
            }
        }
        let lines = &self.lines;
        let labels = &mut self.labels;
        duplicates += first_of_each_series(&mut self.keys, &mut self.dup, |x, y| {
            series(lines[x as usize], strict, labels) == series(lines[y as usize], strict, labels)
        });
        for (line, _) in self.lines.iter().zip(&self.dup).filter(|(_, &d)| !d) {
            buf.extend_from_slice(line);
        }
        duplicates
    }
}

/// The sample name of an output line and where its label block starts (if it has one).
fn name_of(line: &[u8]) -> (&[u8], Option<usize>) {
    let end = line
        .iter()
        .position(|&c| c == b'{' || c == b' ')
        .unwrap_or(line.len());
    (&line[..end], (line.get(end) == Some(&b'{')).then_some(end))
}

/// A label's name and raw value, slices of an output line.
type Pair<'a> = (&'a [u8], &'a [u8]);

/// The sample name and labels (name, raw value) of an output line that has quoted names (an
/// `allow-utf-8` answer: `{"a.b",x="1"} 1`, `m{"c.d"="1"} 1`); names as written between
/// their quotes, which output lines spell one way.
fn quoted_series(line: &[u8]) -> (&[u8], Vec<Pair<'_>>) {
    let (mut name, block) = name_of(line);
    let mut labels = Vec::new();
    let Some(mut i) = block.map(|b| b + 1) else {
        return (name, labels);
    };
    while i < line.len() && line[i] != b'}' {
        let (token, after) = if line[i] == b'"' {
            let close = string_end(line, i + 1);
            (&line[i + 1..close], close + 1)
        } else {
            let end = lex::scan_label_name(line, i);
            (&line[i..end], end)
        };
        i = after;
        if line.get(i) == Some(&b'=') {
            let close = string_end(line, i + 2);
            labels.push((token, &line[i + 2..close]));
            i = close + 1;
        } else {
            name = token;
        }
        if line.get(i) == Some(&b',') {
            i += 1;
        }
    }
    (name, labels)
}

/// The index of the `"` that ends the escaped string starting at `i`.
fn string_end(line: &[u8], mut i: usize) -> usize {
    while i < line.len() && line[i] != b'"' {
        i += if line[i] == b'\\' { 2 } else { 1 };
    }
    i.min(line.len())
}

/// Lexes an output line's label block at `i` into `labels`: `false` when the line has quoted
/// names (it starts with `{`, or the legacy lexer fails on a quoted label name), which
/// [`quoted_series`] reads. Legacy lines cost what they did.
fn legacy_labels(line: &[u8], i: Option<usize>, strict: bool, labels: &mut Vec<Label>) -> bool {
    labels.clear();
    if line.first() == Some(&b'{') {
        return false;
    }
    let Some(i) = i else {
        return true;
    };
    let mut info = BlockInfo::default();
    // An output line is valid in its format: lexing fails only on quoted names.
    lex_labels(line, i, strict, labels, &mut info).is_ok()
}

/// The series hash of an output line, as the parser hashes a sample (name plus the
/// order-independent sum of its label pairs, values as written).
fn series_hash(line: &[u8], strict: bool, labels: &mut Vec<Label>) -> u64 {
    let (name, block) = name_of(line);
    if !legacy_labels(line, block, strict, labels) {
        let (name, pairs) = quoted_series(line);
        return pairs
            .iter()
            .fold(name_hash(name), |h, (n, v)| h.wrapping_add(pair_hash(n, v)));
    }
    labels.iter().fold(name_hash(name), |h, l| {
        h.wrapping_add(pair_hash(l.name(line), l.value(line)))
    })
}

/// A sample name and its labels (name, unescaped value), sorted.
type Series = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// The series of an output line for exact comparison: its name and sorted, unescaped labels,
/// empty ones left out (Prometheus treats an empty label as absent).
fn series(line: &[u8], strict: bool, labels: &mut Vec<Label>) -> Series {
    let (name, block) = name_of(line);
    let mut key = Vec::new();
    if !legacy_labels(line, block, strict, labels) {
        let (name, pairs) = quoted_series(line);
        for (n, raw) in pairs {
            let mut v = Vec::new();
            lex::unescape(raw, &mut v);
            if !v.is_empty() {
                key.push((n.to_vec(), v));
            }
        }
        key.sort();
        return (name.to_vec(), key);
    }
    for l in labels.iter() {
        let mut v = Vec::new();
        lex::unescape(l.value(line), &mut v);
        if !v.is_empty() {
            key.push((l.name(line).to_vec(), v));
        }
    }
    key.sort();
    (name.to_vec(), key)
}

/// A family's header lines in format `out`: HELP before TYPE in text, TYPE, UNIT, HELP in
/// OpenMetrics (UNIT only there). `name` is written as the concatenation of its pieces; `help`
/// is raw, in the format it was read from.
pub(crate) fn write_header(
    name: &[&[u8]],
    mtype: MType,
    help: Option<(&[u8], Format)>,
    unit: Option<&[u8]>,
    out: Format,
    buf: &mut Vec<u8>,
) {
    // A name outside the legacy set (an `allow-utf-8` answer's) is quoted.
    let legacy = name
        .first()
        .is_none_or(|p| p.first().is_none_or(|&c| lex::is_name_start(c)))
        && name.iter().all(|p| p.iter().all(|&c| lex::is_name_char(c)));
    let line = |buf: &mut Vec<u8>, keyword: &[u8]| {
        buf.extend_from_slice(keyword);
        if legacy {
            for piece in name {
                buf.extend_from_slice(piece);
            }
        } else {
            lex::write_quoted(&name.concat(), buf);
        }
        buf.push(b' ');
    };
    let write_help = |buf: &mut Vec<u8>| {
        if let Some((h, from)) = help {
            line(buf, b"# HELP ");
            lex::write_escaped(h, help_kind(from), help_kind(out), buf);
            buf.push(b'\n');
        }
    };
    if out == Format::Text {
        write_help(buf);
    }
    line(buf, b"# TYPE ");
    buf.extend_from_slice(mtype.name(out).as_bytes());
    buf.push(b'\n');
    if out == Format::OpenMetrics {
        if let Some(u) = unit {
            line(buf, b"# UNIT ");
            buf.extend_from_slice(u);
            buf.push(b'\n');
        }
        write_help(buf);
    }
}

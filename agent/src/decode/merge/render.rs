//! Rendering a source: its body, once per output format, into one block of output lines per
//! output family and type, identity labels spliced in (rule 2), duplicates within the source
//! left out (rule 5), each block with the TYPE, HELP and UNIT its source families bring. The
//! store renders every body when it arrives ([`render_source`]); the merge renders a source
//! that comes without a fitting rendering. Everything that can be decided per source is decided
//! here; what depends on other sources is decided by the merge's plan (`plan.rs`).

use std::borrow::Cow;
use std::cmp::Ordering;

use bytes::Bytes;

use super::super::escaping::Marker;
use super::super::lex::{self, name_hash, write_quoted};
use super::super::parse::{parse, with_quoted, MType, Parsed, DUP};
use super::super::{
    Escaping, Format, IdentityLabels, ParseError, Prepared, RENDERED_OVERSIZE, RESERVED_FAMILIES,
    RESERVED_PREFIX,
};
use super::convert::{source_contributions, Contribution};
use super::lines::{LineWriter, ParsedSource};
use super::Source;

/// Identity labels in output order (the fixed ones, empty included, then the pod's labels).
type Labels = Vec<(String, String)>;

/// A body rendered for one output format with one identity ([`render_source`]): its output
/// families sorted by name, each with its samples as one block of output lines per type. About
/// 1.6x the body's size for typical bodies (the identity labels are repeated on every line).
#[derive(Clone, Debug)]
pub struct Rendered {
    out: Format,
    pub(super) from: Format,
    /// The format its HELP texts are escaped as (`from`, or protobuf's unescaped strings).
    pub(super) help_from: Format,
    identity: Option<Labels>,
    /// Hash of the identity's labels (no identity hashes as all labels empty).
    pub(super) identity_hash: u64,
    body_len: usize,
    pub(super) rejected: Option<ParseError>,
    /// The scheme names outside the legacy set were written in; `None` when the body had none
    /// (then it is the rendering for every scheme).
    pub(super) escaping: Option<Escaping>,
    /// App families named `loupe_*` left out.
    pub(super) reserved: u64,
    /// Sorted by name.
    pub(super) families: Vec<RenderedFamily>,
    pub(super) blocks: Vec<TypedBlock>,
    pub(super) metas: Vec<FamilyMeta>,
    /// Family names, HELP and UNIT texts.
    text: Vec<u8>,
    /// The blocks' output lines. Refcounted, so that a merge's chunk list slices it without
    /// copying.
    pub(super) lines: Bytes,
}

/// One output family of the source.
#[derive(Clone, Debug)]
pub(super) struct RenderedFamily {
    pub(super) name: (u32, u32),
    pub(super) hash: u64,
    /// Range into `blocks`.
    pub(super) blocks: (u32, u32),
}

/// The samples of the source families of one output family that have one type; a merge keeps
/// the block of the type that wins (rule 3). The first block's type is the family's in this
/// source.
#[derive(Clone, Debug)]
pub(super) struct TypedBlock {
    pub(super) mtype: MType,
    /// Range into `metas`, one per source family, in the source's order.
    pub(super) metas: (u32, u32),
    /// Range into `lines`: the samples' output lines.
    pub(super) lines: (u32, u32),
    /// Duplicates left out of the block.
    pub(super) dups: u64,
    /// Some app label is named like an identity label, or two source families meet here: the
    /// block's duplicates were found by comparing series (`LineWriter::cross`), and series of
    /// other sources whose identities could coincide may be the same.
    pub(super) cross: bool,
    /// Not `cross`, but two samples have equal series hashes: where the family's series are
    /// compared across sources, more of its samples may turn out duplicates.
    pub(super) maybe_more_dups: bool,
}

/// The metadata one source family brings: HELP (raw, in the source's format) and UNIT.
#[derive(Clone, Debug)]
pub(super) struct FamilyMeta {
    pub(super) help: Option<(u32, u32)>,
    pub(super) unit: Option<(u32, u32)>,
}

impl Rendered {
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.lines.len()
            + self.text.capacity()
            + self.families.capacity() * std::mem::size_of::<RenderedFamily>()
            + self.blocks.capacity() * std::mem::size_of::<TypedBlock>()
            + self.metas.capacity() * std::mem::size_of::<FamilyMeta>()
    }

    /// The output format it was rendered for.
    pub fn format(&self) -> Format {
        self.out
    }

    /// Whether it was rendered from a body of this length and format, with this identity, for
    /// format `out` and the source's escaping scheme.
    pub fn fits(&self, source: &Source<'_>, out: Format) -> bool {
        self.out == out
            && self.body_len == source.body.len()
            && self.escaping.is_none_or(|e| e == source.escaping)
            && self.from == source.format()
            && match (&self.identity, source.identity) {
                (None, None) => true,
                (Some(l), Some(i)) => {
                    let mut given = i.labels();
                    l.iter()
                        .all(|(n, v)| given.next() == Some((n.as_str(), v.as_str())))
                        && given.next().is_none()
                }
                _ => false,
            }
    }

    pub(super) fn slice(&self, (a, b): (u32, u32)) -> &[u8] {
        &self.text[a as usize..b as usize]
    }

    /// The fixed identity labels' values (`IDENTITY_NAMES` order); empty where not set. The
    /// plan compares sources by these alone: the pod's copied labels are the same for all of
    /// one pod's endpoints, and those of other pods differ in `pod` already.
    pub(super) fn labels(&self) -> [&str; 6] {
        let mut fixed = [""; 6];
        for (slot, (_, v)) in fixed.iter_mut().zip(self.identity.iter().flatten()) {
            *slot = v;
        }
        fixed
    }

    /// Every fixed identity label set.
    pub(super) fn full_identity(&self) -> bool {
        self.identity.is_some() && self.labels().iter().all(|v| !v.is_empty())
    }

    /// A source that failed: it contributes nothing, and the merge reports why.
    pub(super) fn rejected(
        body_len: usize,
        from: Format,
        identity: Option<IdentityLabels<'_>>,
        out: Format,
        e: ParseError,
    ) -> Self {
        let mut r = Rendered::empty(body_len, from, identity, out);
        r.rejected = Some(e);
        r
    }

    /// Marks a rendering made from another body (a protobuf body's OpenMetrics) as the
    /// rendering of the body it came from, for [`Rendered::fits`].
    pub(super) fn came_from(&mut self, body_len: usize, from: Format) {
        self.body_len = body_len;
        self.from = from;
    }

    /// Turns names written with `marker` (an `allow-utf-8` rendering of names outside the
    /// legacy set) back into the names they were: family names (sorted again), and in the
    /// lines, quoted where they are not legacy names (`{"a.b",x="1"} 1`, `m{"c.d"="1"} 1`),
    /// exemplar labels too. Protobuf renderings have their names turned back before they are
    /// encoded.
    pub(super) fn unmark(&mut self, marker: Marker) {
        if self.out == Format::Protobuf {
            return;
        }
        let mut lines = Vec::with_capacity(self.lines.len() + self.lines.len() / 8);
        let mut labels = Vec::new();
        for block in &mut self.blocks {
            let start = lines.len();
            let src = &self.lines[block.lines.0 as usize..block.lines.1 as usize];
            for line in src.split_inclusive(|&c| c == b'\n') {
                unmark_line(line, marker, &mut labels, &mut lines);
            }
            block.lines = range(start, lines.len());
        }
        self.lines = Bytes::from(lines);
        let mut families = std::mem::take(&mut self.families);
        for f in &mut families {
            if let Cow::Owned(name) = marker.decode(self.slice(f.name)) {
                f.name = push_text(&mut self.text, &name);
                f.hash = name_hash(&name);
            }
        }
        families.sort_by(|a, b| self.slice(a.name).cmp(self.slice(b.name)));
        self.families = families;
    }

    pub(super) fn push_text(&mut self, s: &[u8]) -> (u32, u32) {
        push_text(&mut self.text, s)
    }

    /// Gives back spare capacity (a rendering that is kept).
    pub(super) fn compact(&mut self) {
        self.text.shrink_to_fit();
        self.metas.shrink_to_fit();
    }

    pub(super) fn empty(
        body_len: usize,
        from: Format,
        identity: Option<IdentityLabels<'_>>,
        out: Format,
    ) -> Self {
        let identity: Option<Labels> = identity.map(|i| {
            i.labels()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        });
        let mut r = Rendered {
            out,
            from,
            help_from: from,
            identity,
            identity_hash: 0,
            body_len,
            rejected: None,
            escaping: None,
            reserved: 0,
            families: Vec::new(),
            blocks: Vec::new(),
            metas: Vec::new(),
            text: Vec::new(),
            lines: Bytes::new(),
        };
        // No identity hashes as all labels empty.
        r.identity_hash = r
            .labels()
            .iter()
            .fold(0u64, |h, v| lex::fmix(h ^ name_hash(v.as_bytes())));
        r
    }
}

fn range(start: usize, end: usize) -> (u32, u32) {
    (start as u32, end as u32)
}

/// One output line with its marked names turned back (see [`Rendered::unmark`]).
fn unmark_line(line: &[u8], marker: Marker, labels: &mut Vec<lex::Label>, out: &mut Vec<u8>) {
    if memchr::memmem::find(line, &marker.bytes()).is_none() {
        out.extend_from_slice(line);
        return;
    }
    let name_end = line
        .iter()
        .position(|&c| c == b'{' || c == b' ')
        .unwrap_or(line.len());
    let name = marker.decode(&line[..name_end]);
    let quoted = !is_legacy_bytes(&name, lex::is_name_start, lex::is_name_char);
    let mut rest = name_end;
    let mut pairs = Vec::new();
    if line.get(name_end) == Some(&b'{') {
        let mut info = lex::BlockInfo::default();
        // An output line is valid in its format (strict: its spelling is canonical).
        if let Ok(after) = lex::lex_labels(line, name_end, true, labels, &mut info) {
            pairs = labels
                .iter()
                .map(|l| (l.name(line), l.value(line)))
                .collect();
            rest = after;
        }
    }
    if quoted {
        out.push(b'{');
        write_quoted(&name, out);
        for (n, v) in &pairs {
            out.push(b',');
            write_label(marker, n, v, out);
        }
        out.push(b'}');
    } else {
        out.extend_from_slice(&name);
        if !pairs.is_empty() {
            write_labels(marker, &pairs, out);
        }
    }
    // An OpenMetrics exemplar's labels.
    let tail = &line[rest..];
    match memchr::memmem::find(tail, b" # {") {
        Some(p) => {
            let open = rest + p + 3;
            out.extend_from_slice(&line[rest..open]);
            let mut info = lex::BlockInfo::default();
            match lex::lex_labels(line, open, true, labels, &mut info) {
                Ok(after) => {
                    let pairs: Vec<_> = labels
                        .iter()
                        .map(|l| (l.name(line), l.value(line)))
                        .collect();
                    write_labels(marker, &pairs, out);
                    out.extend_from_slice(&line[after..]);
                }
                Err(_) => out.extend_from_slice(&line[open..]),
            }
        }
        None => out.extend_from_slice(tail),
    }
}

fn write_labels(marker: Marker, pairs: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (n, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_label(marker, n, v, out);
    }
    out.push(b'}');
}

/// `name="value"`, the name turned back and quoted if it is no legacy label name, the value
/// (escaped) as it is.
fn write_label(marker: Marker, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let name = marker.decode(name);
    if is_legacy_bytes(&name, lex::is_label_start, lex::is_label_char) {
        out.extend_from_slice(&name);
    } else {
        write_quoted(&name, out);
    }
    out.extend_from_slice(b"=\"");
    out.extend_from_slice(value);
    out.push(b'"');
}

fn is_legacy_bytes(name: &[u8], start: fn(u8) -> bool, rest: fn(u8) -> bool) -> bool {
    name.first().is_some_and(|&c| start(c)) && name[1..].iter().all(|&c| rest(c))
}

fn push_text(text: &mut Vec<u8>, s: &[u8]) -> (u32, u32) {
    let a = text.len();
    text.extend_from_slice(s);
    range(a, text.len())
}

/// Renders a prepared body with its identity for output format `out`. A `prepared` that does not
/// fit the body (another length) is made again; a body that then fails is kept as rejected.
pub fn render_source(
    body: &[u8],
    prepared: &Prepared,
    identity: Option<IdentityLabels<'_>>,
    out: Format,
) -> Rendered {
    let escaping = prepared.escaped.unwrap_or_default();
    render_prepared(body, prepared, identity, out, true, escaping)
}

/// [`render_source`]; `compact` gives back the spare capacity (for a rendering that is kept).
pub(super) fn render_prepared(
    body: &[u8],
    prepared: &Prepared,
    identity: Option<IdentityLabels<'_>>,
    out: Format,
    compact: bool,
    escaping: Escaping,
) -> Rendered {
    if prepared.len != body.len() {
        return render_body(body, prepared.format, identity, out, compact, escaping);
    }
    let mut r = render_parsed(prepared.parsed(body), identity, out, compact);
    r.escaping = prepared.escaped;
    if let Some(m) = prepared.marker {
        r.unmark(m);
    }
    r
}

/// Parses and renders a body (quoted names rewritten in `escaping`); a body that fails is kept
/// as rejected.
pub(super) fn render_body(
    body: &[u8],
    format: Format,
    identity: Option<IdentityLabels<'_>>,
    out: Format,
    compact: bool,
    escaping: Escaping,
) -> Rendered {
    let render = |b: &[u8], _| parse(b, format).map(|p| render_parsed(p, identity, out, compact));
    match with_quoted(body, format, escaping, render) {
        Ok((r, None)) => r,
        Ok((mut r, Some(rewritten))) => {
            r.came_from(body.len(), format);
            r.escaping = Some(escaping);
            if let Some(m) = rewritten.marker {
                r.unmark(m);
            }
            r
        }
        Err(e) => {
            // Whether it fails may depend on the scheme (names that escape alike).
            let mut r = Rendered::rejected(body.len(), format, identity, out, e);
            r.escaping = Some(escaping);
            r
        }
    }
}

fn render_parsed(
    parsed: Parsed<'_>,
    identity: Option<IdentityLabels<'_>>,
    out: Format,
    compact: bool,
) -> Rendered {
    let mut r = Rendered::empty(parsed.body.len(), parsed.format, identity, out);
    let src = ParsedSource::new(parsed, identity);
    let mut parts: Vec<Contribution<'_>> = Vec::new();
    source_contributions(&mut parts, &src, out);
    if identity.is_some() {
        // `loupe_*` is loupe's own (decode's docs): an app's is left out, the app stays up.
        let before = parts.len();
        parts.retain(|c| !c.stem().starts_with(RESERVED_PREFIX));
        r.reserved = (before - parts.len()) as u64;
        RESERVED_FAMILIES.add(r.reserved);
    }
    parts.sort_by(|a, b| a.name_cmp(b));
    let mut lines: Vec<u8> = Vec::with_capacity(
        src.parsed.body.len() + src.parsed.samples.len() * (src.prefix.len() + 2) + 64,
    );
    let mut writer = LineWriter::new(out);
    let mut scratch = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let mut j = i + 1;
        while j < parts.len() && parts[j].name_cmp(&parts[i]) == Ordering::Equal {
            j += 1;
        }
        let name = push_text(&mut r.text, &parts[i].name_vec());
        let blocks_start = r.blocks.len();
        r.render_family(
            &src,
            &mut parts[i..j],
            &mut writer,
            &mut lines,
            &mut scratch,
        );
        r.families.push(RenderedFamily {
            name,
            hash: name_hash(r.slice(name)),
            blocks: range(blocks_start, r.blocks.len()),
        });
        i = j;
    }
    if compact {
        lines.shrink_to_fit();
        r.text.shrink_to_fit();
        r.metas.shrink_to_fit();
    }
    r.lines = Bytes::from(lines);
    r
}

impl Rendered {
    /// One block per type among the contributions to one output family, in the order the
    /// types first appear.
    fn render_family(
        &mut self,
        src: &ParsedSource<'_>,
        parts: &mut [Contribution<'_>],
        writer: &mut LineWriter,
        lines: &mut Vec<u8>,
        hashes: &mut Vec<u64>,
    ) {
        let mut types: Vec<MType> = Vec::new();
        for c in parts.iter() {
            if !types.contains(&c.mtype) {
                types.push(c.mtype);
            }
        }
        for t in types {
            for c in parts.iter_mut() {
                c.dropped = c.mtype != t;
            }
            let metas_start = self.metas.len();
            for c in parts.iter().filter(|c| !c.dropped) {
                let fam = &src.parsed.families[c.fam as usize];
                let help = fam
                    .help
                    .filter(|_| !c.created_part)
                    .map(|h| push_text(&mut self.text, h));
                let unit = fam
                    .unit
                    .filter(|u| c.unit && !u.is_empty())
                    .map(|u| push_text(&mut self.text, u));
                self.metas.push(FamilyMeta { help, unit });
            }
            let cross = LineWriter::cross(src, parts);
            let maybe_more_dups = !cross && equal_hashes(src, parts, hashes);
            let dups_before = writer.duplicates;
            let start = lines.len();
            writer.samples(src, parts, lines);
            self.blocks.push(TypedBlock {
                mtype: t,
                metas: range(metas_start, self.metas.len()),
                lines: range(start, lines.len()),
                dups: writer.duplicates - dups_before,
                cross,
                maybe_more_dups,
            });
        }
    }
}

/// [`Source::render`], unless the rendering would take more than `limit` bytes (estimated
/// before rendering from a prepared body and the identity labels on every sample line, and
/// checked after), in which case nothing is kept, `loupe_rendered_oversize_total` counts it and
/// `None` is returned; the merge then renders that body at every scrape instead of keeping it.
pub fn render_within(source: &Source<'_>, out: Format, limit: usize) -> Option<Rendered> {
    let rendered = match source.prepared {
        Some(prepared) if out != Format::Protobuf => {
            estimate_within(source.body, prepared, source.identity, limit)?;
            source.render(out)
        }
        _ => source.render(out),
    };
    if rendered.heap_bytes() > limit {
        RENDERED_OVERSIZE.inc();
        return None;
    }
    Some(rendered)
}

fn estimate_within(
    body: &[u8],
    prepared: &Prepared,
    identity: Option<IdentityLabels<'_>>,
    limit: usize,
) -> Option<()> {
    let prefix: usize = identity
        .map(|i| {
            i.labels()
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| n.len() + 2 * v.len() + 4)
                .sum()
        })
        .unwrap_or(0);
    // Format conversion adds at most a few bytes per line (`_total`, a decimal point).
    let estimate = body.len() + prepared.samples.len() * (prefix + 8) + 64;
    if estimate > limit {
        RENDERED_OVERSIZE.inc();
        return None;
    }
    // Timestamps converted to milliseconds and renamed labels can still pass the estimate:
    // the caller checks the rendering too.
    Some(())
}

/// Whether two written (not duplicate) samples of the contributions have the same series hash.
fn equal_hashes(src: &ParsedSource<'_>, parts: &[Contribution<'_>], hashes: &mut Vec<u64>) -> bool {
    hashes.clear();
    for c in parts.iter().filter(|c| !c.dropped) {
        let (lo, hi) = src.parsed.families[c.fam as usize].samples;
        hashes.extend(
            src.parsed.samples[lo as usize..hi as usize]
                .iter()
                .filter(|s| c.filter & s.suffix.bit() != 0 && s.flags & DUP == 0)
                .map(|s| s.hash),
        );
    }
    hashes.sort_unstable();
    hashes.windows(2).any(|w| w[0] == w[1])
}

//! Rendering at ingest: a body is rendered once per output format, when it arrives, into one
//! byte block per output family with the source's identity labels already spliced in, so that a
//! scrape only decides the merging rules per family and copies whole blocks
//! ([`merge_rendered`]). The output is byte for byte that of [`merge_prepared`] (the property
//! tests hold them equal); where a rule needs more than per-family decisions (module docs, rule 5
//! across sources), [`merge_rendered`] hands the whole scrape to [`merge_prepared`].
//!
//! What can be decided at ingest, per source: the output families its families map to (rule 6),
//! each one's samples rendered with the identity (rule 2), and the duplicates within the source
//! (rule 5). What a scrape decides, per family: the TYPE, HELP and UNIT (rules 3 and 4: the
//! first source wins, later sources of another type contribute nothing), sample-name clashes
//! between families (rule 3), and duplicates across sources (rule 5), which cannot happen when
//! the sources' identities differ in a non-empty label: a scrape falls back to
//! [`merge_prepared`] when two sources have the same identity, or when a family whose app labels
//! are named like identity labels is shared by sources whose identities could coincide.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::ops::Range;

use bytes::Bytes;

use super::lex::{self, name_hash};
use super::merge::{help_eq, merge_prepared, source_entries, write_header, Entry, Renderer, Src};
use super::parse::{parse, IdHasher, MType, Parsed, Suffix, DUP};
use super::{
    Format, Identity, MergeStats, ParseError, Prepared, PreparedSource, DUPLICATE_SERIES,
    FAMILY_CONFLICTS, RENDERED_FALLBACKS, RENDERED_OVERSIZE,
};

/// Identity label values in output order (`namespace`, `pod`, `container`, `endpoint`).
type Labels = [String; 4];

/// A body rendered for one output format with one identity ([`render_source`]): its output
/// families sorted by name, each with its samples as one block of output lines. About 1.6x the
/// body's size for typical bodies (the identity labels are repeated on every line).
#[derive(Clone, Debug)]
pub struct Rendered {
    out: Format,
    from: Format,
    identity: Option<Labels>,
    /// Hash of the identity's labels (no identity hashes as all labels empty).
    identity_hash: u64,
    body_len: usize,
    rejected: Option<ParseError>,
    /// Sorted by name.
    fams: Vec<RFam>,
    parts: Vec<RPart>,
    metas: Vec<RMeta>,
    /// Family names, HELP and UNIT texts.
    text: Vec<u8>,
    /// Refcounted, so that a scrape's chunk list ([`merge_rendered_chunks`]) slices it without
    /// copying.
    blocks: Bytes,
}

/// One output family of the source.
#[derive(Clone, Debug)]
struct RFam {
    name: (u32, u32),
    hash: u64,
    /// Range into `parts`.
    parts: (u32, u32),
}

/// The entries (source families) of one output family that have one type: the first part's
/// type is the family's in this source; a merge keeps the part of the type that wins.
#[derive(Clone, Debug)]
struct RPart {
    mtype: MType,
    /// Range into `metas`, one per entry, in the source's order.
    metas: (u32, u32),
    /// Range into `blocks`: the samples' output lines.
    block: (u32, u32),
    /// Duplicates left out of the block.
    dups: u64,
    /// Some app label is named like an identity label: the merge compares this family's series
    /// across sources (see `Renderer::cross`); the block was rendered that way.
    cross: bool,
    /// Not `cross`, but two samples have equal series hashes: should another source make the
    /// family cross, the merge might find more duplicates than the block left out.
    maybe_more_dups: bool,
}

/// The metadata one entry brings: HELP (raw, in the source's format) and UNIT.
#[derive(Clone, Debug)]
struct RMeta {
    help: Option<(u32, u32)>,
    unit: Option<(u32, u32)>,
}

impl Rendered {
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.blocks.len()
            + self.text.capacity()
            + self.fams.capacity() * std::mem::size_of::<RFam>()
            + self.parts.capacity() * std::mem::size_of::<RPart>()
            + self.metas.capacity() * std::mem::size_of::<RMeta>()
    }

    /// The output format it was rendered for.
    pub fn format(&self) -> Format {
        self.out
    }

    /// Whether it was rendered from a body of this length and format, with this identity, for
    /// format `out`.
    pub fn fits(&self, source: &PreparedSource<'_>, out: Format) -> bool {
        self.out == out
            && self.body_len == source.body.len()
            && self.from == source.prepared.format
            && match (&self.identity, source.identity) {
                (None, None) => true,
                (Some(l), Some(i)) => l.iter().zip(i.labels()).all(|(a, (_, b))| a.as_str() == b),
                _ => false,
            }
    }

    fn slice(&self, (a, b): (u32, u32)) -> &[u8] {
        &self.text[a as usize..b as usize]
    }

    fn labels(&self) -> [&str; 4] {
        match &self.identity {
            Some(l) => [&l[0], &l[1], &l[2], &l[3]],
            None => [""; 4],
        }
    }

    fn full_identity(&self) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|l| l.iter().all(|v| !v.is_empty()))
    }
}

fn range(start: usize, end: usize) -> (u32, u32) {
    (start as u32, end as u32)
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
    identity: Option<Identity<'_>>,
    out: Format,
) -> Rendered {
    let mut r = Rendered {
        out,
        from: prepared.format,
        identity: identity.map(|i| i.labels().map(|(_, v)| v.to_string())),
        identity_hash: 0,
        body_len: body.len(),
        rejected: None,
        fams: Vec::new(),
        parts: Vec::new(),
        metas: Vec::new(),
        text: Vec::new(),
        blocks: Bytes::new(),
    };
    r.identity_hash = r
        .labels()
        .iter()
        .fold(0u64, |h, v| lex::fmix(h ^ name_hash(v.as_bytes())));
    let parsed = if prepared.len == body.len() {
        Parsed {
            body,
            format: prepared.format,
            families: prepared.families.iter().map(|f| f.family(body)).collect(),
            samples: Cow::Borrowed(&prepared.samples),
        }
    } else {
        match parse(body, prepared.format) {
            Ok(p) => p,
            Err(e) => {
                r.rejected = Some(e);
                return r;
            }
        }
    };
    let src = Src::new(parsed, identity);
    let mut entries: Vec<Entry<'_>> = Vec::new();
    source_entries(&mut entries, 0, &src, out);
    entries.sort_by(|a, b| a.name_cmp(b));
    let srcs = std::slice::from_ref(&src);
    let mut blocks: Vec<u8> =
        Vec::with_capacity(body.len() + src.parsed.samples.len() * (src.prefix.len() + 2) + 64);
    let mut renderer = Renderer::new(out);
    let mut hashes = Vec::new();
    let mut types: Vec<MType> = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut j = i + 1;
        while j < entries.len() && entries[j].name_cmp(&entries[i]) == Ordering::Equal {
            j += 1;
        }
        let name = push_text(&mut r.text, &entries[i].name_vec());
        let parts_start = r.parts.len();
        types.clear();
        for e in &entries[i..j] {
            if !types.contains(&e.mtype) {
                types.push(e.mtype);
            }
        }
        for &t in &types {
            let group = &mut entries[i..j];
            for e in group.iter_mut() {
                e.dropped = e.mtype != t;
            }
            let metas_start = r.metas.len();
            for e in group.iter().filter(|e| !e.dropped) {
                let fam = &src.parsed.families[e.fam as usize];
                let help = fam
                    .help
                    .filter(|_| !e.created_part)
                    .map(|h| push_text(&mut r.text, h));
                let unit = fam
                    .unit
                    .filter(|u| e.unit && !u.is_empty())
                    .map(|u| push_text(&mut r.text, u));
                r.metas.push(RMeta { help, unit });
            }
            let cross = Renderer::cross(srcs, group);
            let maybe_more_dups = !cross && equal_hashes(&src, group, &mut hashes);
            let dups0 = renderer.duplicates;
            let block_start = blocks.len();
            renderer.samples(srcs, group, &mut blocks);
            r.parts.push(RPart {
                mtype: t,
                metas: range(metas_start, r.metas.len()),
                block: range(block_start, blocks.len()),
                dups: renderer.duplicates - dups0,
                cross,
                maybe_more_dups,
            });
        }
        let name_bytes = &r.text[name.0 as usize..name.1 as usize];
        r.fams.push(RFam {
            name,
            hash: name_hash(name_bytes),
            parts: range(parts_start, r.parts.len()),
        });
        i = j;
    }
    blocks.shrink_to_fit();
    r.blocks = Bytes::from(blocks);
    r.text.shrink_to_fit();
    r.metas.shrink_to_fit();
    r
}

/// [`render_source`], unless the rendering would take more than `limit` bytes (estimated
/// before rendering from the body and the identity labels on every sample line, and checked
/// after), in which case nothing is rendered, `loupe_rendered_oversize_total` counts it and `None` is
/// returned; [`merge_rendered`] then renders that body at every scrape instead of keeping it.
pub fn render_within(
    body: &[u8],
    prepared: &Prepared,
    identity: Option<Identity<'_>>,
    out: Format,
    limit: usize,
) -> Option<Rendered> {
    let prefix: usize = identity
        .map(|i| {
            i.labels()
                .iter()
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
    // Timestamps converted to milliseconds and renamed labels can still pass the estimate.
    let rendered = render_source(body, prepared, identity, out);
    if rendered.heap_bytes() > limit {
        RENDERED_OVERSIZE.inc();
        return None;
    }
    Some(rendered)
}

/// Whether two written (not duplicate) samples of the entries have the same series hash.
fn equal_hashes(src: &Src<'_>, entries: &[Entry<'_>], hashes: &mut Vec<u64>) -> bool {
    hashes.clear();
    for e in entries.iter().filter(|e| !e.dropped) {
        let (lo, hi) = src.parsed.families[e.fam as usize].samples;
        hashes.extend(
            src.parsed.samples[lo as usize..hi as usize]
                .iter()
                .filter(|s| e.filter & s.suffix.bit() != 0 && s.flags & DUP == 0)
                .map(|s| s.hash),
        );
    }
    hashes.sort_unstable();
    hashes.windows(2).any(|w| w[0] == w[1])
}

/// One source for [`merge_rendered`]: what [`merge_prepared`] takes, and its rendering for the
/// output format if there is one. A rendering that does not fit the source
/// ([`Rendered::fits`]) or is missing is made during the merge.
#[derive(Clone, Copy, Debug)]
pub struct RenderedSource<'a> {
    pub identity: Option<Identity<'a>>,
    pub body: &'a [u8],
    pub prepared: &'a Prepared,
    pub rendered: Option<&'a Rendered>,
}

impl<'a> RenderedSource<'a> {
    fn prepared(&self) -> PreparedSource<'a> {
        PreparedSource::new(self.identity, self.body, self.prepared)
    }
}

/// A family name with its hash computed at ingest.
struct Key<'a> {
    hash: u64,
    name: &'a [u8],
}

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash);
    }
}

impl PartialEq for Key<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.hash == o.hash && self.name == o.name
    }
}

impl Eq for Key<'_> {}

/// What a scrape decided for one output family.
struct Plan<'a> {
    name: &'a [u8],
    mtype: MType,
    help: Option<(&'a [u8], Format)>,
    unit: Option<&'a [u8]>,
    /// Index (among the sources that were not rejected) of the family's first source.
    first_src: u32,
    /// Entries kept after TYPE conflicts.
    kept: u64,
    /// Range into the members.
    members: (u32, u32),
    dropped: bool,
}

/// [`merge_prepared`], from sources rendered at ingest ([`render_source`]): the same output,
/// byte for byte, and the same stats. Per output family it only decides the rules at the family
/// level and copies each source's block.
pub fn merge_rendered(
    sources: &[RenderedSource<'_>],
    out: Format,
    buf: &mut Vec<u8>,
) -> MergeStats {
    match try_merge_rendered(sources, out, buf) {
        Some(stats) => stats,
        None => fall_back(sources, out, buf),
    }
}

fn fall_back(sources: &[RenderedSource<'_>], out: Format, buf: &mut Vec<u8>) -> MergeStats {
    RENDERED_FALLBACKS.inc();
    let prepared: Vec<PreparedSource<'_>> = sources.iter().map(RenderedSource::prepared).collect();
    merge_prepared(&prepared, out, buf)
}

/// [`merge_rendered`] as a list of chunks whose concatenation is its output, byte for byte:
/// the headers (and `# EOF`) in one owned buffer, sliced; every source's block a refcounted
/// slice of its rendering, not copied. A scrape sends the chunks as they are, so it holds no
/// output-sized buffer. Where the merge falls back to [`merge_prepared`], its output is the
/// one chunk.
pub fn merge_rendered_chunks(
    sources: &[RenderedSource<'_>],
    out: Format,
) -> (Vec<Bytes>, MergeStats) {
    let mut chunks = Chunks::default();
    match try_merge_rendered_into(sources, out, &mut chunks) {
        Some(stats) => (chunks.finish(), stats),
        None => {
            let mut buf = Vec::new();
            let stats = fall_back(sources, out, &mut buf);
            (vec![Bytes::from(buf)], stats)
        }
    }
}

/// Where the merge walk writes: the headers it makes, and the sources' blocks.
trait Sink {
    fn reserve(&mut self, text: usize, blocks: usize);
    /// The buffer the merge appends headers to.
    fn text(&mut self) -> &mut Vec<u8>;
    fn block(&mut self, blocks: &Bytes, range: Range<usize>);
}

/// Copies everything into one buffer.
impl Sink for Vec<u8> {
    fn reserve(&mut self, text: usize, blocks: usize) {
        Vec::reserve(self, text + blocks);
    }

    fn text(&mut self) -> &mut Vec<u8> {
        self
    }

    fn block(&mut self, blocks: &Bytes, range: Range<usize>) {
        self.extend_from_slice(&blocks[range]);
    }
}

/// Blocks below this size are copied into the owned text rather than sliced: a chunk each would
/// cost more (refcount, an iovec, a frame) than the copy.
const SMALL_BLOCK: usize = 256;

/// The chunk list: every piece of owned text is a range of one buffer, frozen at the end.
#[derive(Default)]
struct Chunks {
    text: Vec<u8>,
    /// Owned text `text[start..end]` from `start`, the end being the next piece's start.
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

    fn finish(mut self) -> Vec<Bytes> {
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

    fn block(&mut self, blocks: &Bytes, range: Range<usize>) {
        if range.len() < SMALL_BLOCK {
            self.text.extend_from_slice(&blocks[range]);
            return;
        }
        self.close_text();
        self.pieces.push(Piece::Block(blocks.slice(range)));
    }
}

/// [`merge_rendered`] without its fallback: `None` (and nothing written) where the rules need
/// [`merge_prepared`]. For tests that must know which path ran.
#[doc(hidden)]
pub fn try_merge_rendered(
    sources: &[RenderedSource<'_>],
    out: Format,
    buf: &mut Vec<u8>,
) -> Option<MergeStats> {
    try_merge_rendered_into(sources, out, buf)
}

/// The one merge walk, into a buffer or a chunk list.
fn try_merge_rendered_into<S: Sink>(
    sources: &[RenderedSource<'_>],
    out: Format,
    sink: &mut S,
) -> Option<MergeStats> {
    let fresh: Vec<Option<Rendered>> = sources
        .iter()
        .map(|s| match s.rendered {
            Some(r) if r.fits(&s.prepared(), out) => None,
            _ => Some(s.prepared().render(out)),
        })
        .collect();
    let mut stats = MergeStats::default();
    let mut rs: Vec<&Rendered> = Vec::with_capacity(sources.len());
    for (i, (s, f)) in sources.iter().zip(&fresh).enumerate() {
        let Some(r) = f.as_ref().or(s.rendered) else {
            continue;
        };
        match &r.rejected {
            Some(e) => stats.rejected.push((i, e.clone())),
            None => rs.push(r),
        }
    }

    // Two sources with one identity: their series may collide anywhere (rule 5). (Two
    // identities with one hash fall back too, which is slower but as exact.)
    let mut identities: HashSet<u64, BuildHasherDefault<IdHasher>> =
        HashSet::with_capacity_and_hasher(rs.len(), Default::default());
    if !rs.iter().all(|r| identities.insert(r.identity_hash)) {
        return None;
    }

    // Output families: the union of the sources' names; members in source order.
    let mut ids: HashMap<Key<'_>, u32, BuildHasherDefault<IdHasher>> = HashMap::default();
    let mut names: Vec<&[u8]> = Vec::new();
    let mut first_src: Vec<u32> = Vec::new();
    let mut tagged: Vec<(u32, u32, u32)> = Vec::new(); // (family, source, source family)
    for (si, r) in rs.iter().enumerate() {
        for (fi, f) in r.fams.iter().enumerate() {
            let key = Key {
                hash: f.hash,
                name: r.slice(f.name),
            };
            let next = names.len() as u32;
            let g = *ids.entry(key).or_insert(next);
            if g == next {
                names.push(r.slice(f.name));
                first_src.push(si as u32);
            }
            tagged.push((g, si as u32, fi as u32));
        }
    }
    drop(ids);
    // Counting sort by family, keeping source order.
    let mut starts = vec![0u32; names.len() + 1];
    for &(g, _, _) in &tagged {
        starts[g as usize + 1] += 1;
    }
    for g in 0..names.len() {
        starts[g + 1] += starts[g];
    }
    let mut fill = starts.clone();
    let mut members: Vec<(u32, u32)> = vec![(0, 0); tagged.len()];
    for &(g, si, fi) in &tagged {
        members[fill[g as usize] as usize] = (si, fi);
        fill[g as usize] += 1;
    }
    drop(tagged);
    let mut order: Vec<u32> = (0..names.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| names[a as usize].cmp(names[b as usize]));

    // Rules 3 and 4 per family: the first source's type wins; the first HELP and UNIT.
    let mut conflicts = 0u64;
    let mut kept_part: Vec<u32> = vec![u32::MAX; members.len()];
    let mut plans: Vec<Plan<'_>> = Vec::with_capacity(order.len());
    let (mut scratch, mut scratch2) = (Vec::new(), Vec::new());
    let mut bytes = 0usize;
    for &g in &order {
        let (a, z) = (starts[g as usize], starts[g as usize + 1]);
        let (s0, f0) = members[a as usize];
        let r0 = rs[s0 as usize];
        let mtype = r0.parts[r0.fams[f0 as usize].parts.0 as usize].mtype;
        let mut help: Option<(u32, &[u8], Format)> = None;
        let mut unit: Option<&[u8]> = None;
        let mut kept = 0u64;
        let (mut cross, mut maybe_more) = (false, false);
        for m in a..z {
            let (si, fi) = members[m as usize];
            let r = rs[si as usize];
            let f = &r.fams[fi as usize];
            for p in f.parts.0..f.parts.1 {
                let part = &r.parts[p as usize];
                let n = u64::from(part.metas.1 - part.metas.0);
                if part.mtype != mtype {
                    conflicts += n;
                    continue;
                }
                kept_part[m as usize] = p;
                kept += n;
                cross |= part.cross;
                maybe_more |= part.maybe_more_dups;
                bytes += (part.block.1 - part.block.0) as usize;
                for meta in &r.metas[part.metas.0 as usize..part.metas.1 as usize] {
                    let mut conflict = false;
                    if let Some(h) = meta.help.map(|h| r.slice(h)) {
                        match help {
                            None => help = Some((si, h, r.from)),
                            Some((hs, h0, fmt0)) => {
                                if hs != si
                                    && !help_eq(h0, fmt0, h, r.from, &mut scratch, &mut scratch2)
                                {
                                    conflict = true;
                                }
                            }
                        }
                    }
                    if let Some(u) = meta.unit.map(|u| r.slice(u)) {
                        match unit {
                            None => unit = Some(u),
                            Some(u0) if u0 != u => conflict = true,
                            _ => {}
                        }
                    }
                    conflicts += u64::from(conflict);
                }
            }
        }
        // Rule 5 across sources: only a family compared across sources (cross) can hold the
        // same series twice; series of sources whose identities differ in a label both set
        // never meet. Otherwise the whole merge is done the slow way.
        if cross {
            if maybe_more {
                return None;
            }
            let kept_srcs: Vec<&Rendered> = (a..z)
                .filter(|&m| kept_part[m as usize] != u32::MAX)
                .map(|m| rs[members[m as usize].0 as usize])
                .collect();
            if kept_srcs.len() > 1 && !kept_srcs.iter().all(|r| r.full_identity()) {
                for (x, rx) in kept_srcs.iter().enumerate() {
                    for ry in &kept_srcs[x + 1..] {
                        if compatible(rx, ry) {
                            return None;
                        }
                    }
                }
            }
        }
        plans.push(Plan {
            name: names[g as usize],
            mtype,
            help: help.map(|(_, h, f)| (h, f)),
            unit,
            first_src: first_src[g as usize],
            kept,
            members: (a, z),
            dropped: false,
        });
    }

    // Sample-name clashes between families (rule 3): first source first, then by name.
    let mut by_src: Vec<usize> = (0..plans.len()).collect();
    by_src.sort_by_key(|&p| plans[p].first_src);
    let mut claimed: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut owned: Vec<Vec<u8>> = Vec::new();
    for &p in &by_src {
        owned.clear();
        owned.push(plans[p].name.to_vec());
        for s in plans[p].mtype.suffixes(out) {
            if *s != Suffix::Bare {
                let mut n = plans[p].name.to_vec();
                n.extend_from_slice(s.text());
                owned.push(n);
            }
        }
        if owned
            .iter()
            .any(|n| claimed.get(n).is_some_and(|&o| o != p))
        {
            plans[p].dropped = true;
            conflicts += plans[p].kept;
            continue;
        }
        for n in owned.drain(..) {
            claimed.insert(n, p);
        }
    }
    drop(claimed);
    stats.family_conflicts = conflicts;

    // Write.
    // Exactly enough (HELP may grow by its escapes): a regrown buffer costs more than the merge.
    let headers: usize = plans
        .iter()
        .map(|p| {
            3 * p.name.len()
                + 2 * p.help.map_or(0, |h| h.0.len())
                + p.unit.map_or(0, <[u8]>::len)
                + 48
        })
        .sum();
    sink.reserve(headers + 8, bytes);
    let mut duplicates = 0u64;
    for plan in plans.iter().filter(|p| !p.dropped) {
        write_header(
            &[plan.name],
            plan.mtype,
            plan.help,
            plan.unit,
            out,
            sink.text(),
        );
        for m in plan.members.0..plan.members.1 {
            let p = kept_part[m as usize];
            if p == u32::MAX {
                continue;
            }
            let r = rs[members[m as usize].0 as usize];
            let part = &r.parts[p as usize];
            sink.block(&r.blocks, part.block.0 as usize..part.block.1 as usize);
            duplicates += part.dups;
        }
    }
    if out == Format::OpenMetrics {
        sink.text().extend_from_slice(b"# EOF\n");
    }
    stats.duplicate_series = duplicates;
    FAMILY_CONFLICTS.add(stats.family_conflicts);
    DUPLICATE_SERIES.add(stats.duplicate_series);
    Some(stats)
}

/// Whether the series of two sources could be the same: no identity label is set, differently,
/// in both.
fn compatible(a: &Rendered, b: &Rendered) -> bool {
    a.labels()
        .iter()
        .zip(b.labels())
        .all(|(x, y)| x.is_empty() || y.is_empty() || *x == y)
}

#[cfg(test)]
mod tests {
    use super::super::prepare;
    use super::*;

    fn id(pod: &str) -> Option<Identity<'_>> {
        Some(Identity {
            namespace: "ns",
            pod,
            container: "c",
            endpoint: "metrics",
        })
    }

    const A: &str = "# HELP r_total R.\n# TYPE r_total counter\nr_total{code=\"200\"} 1\n# TYPE g gauge\ng{pod=\"x\"} 2\n";
    const B: &str = "# TYPE r counter\n# HELP r R.\nr_total{code=\"200\"} 3 1.5\nr_created{code=\"200\"} 1.7e9\n# TYPE g gauge\ng{pod=\"y\"} 4\n# EOF\n";

    fn prepare_all(srcs: &[(Option<Identity<'_>>, &str, Format)]) -> Vec<Prepared> {
        srcs.iter()
            .map(|(_, b, f)| prepare(b.as_bytes(), *f).unwrap())
            .collect()
    }

    fn sources<'a>(
        srcs: &[(Option<Identity<'a>>, &'a str, Format)],
        preps: &'a [Prepared],
    ) -> Vec<PreparedSource<'a>> {
        srcs.iter()
            .zip(preps)
            .map(|((i, b, _), p)| PreparedSource::new(*i, b.as_bytes(), p))
            .collect()
    }

    /// Both merges of (identity, body, format) sources; the rendered ones made by `rendering`.
    fn both(
        srcs: &[(Option<Identity<'_>>, &str, Format)],
        out: Format,
        rendering: impl Fn(usize, &PreparedSource<'_>) -> Option<Rendered>,
    ) -> (Vec<u8>, MergeStats, Option<MergeStats>) {
        let preps = prepare_all(srcs);
        let psrcs = sources(srcs, &preps);
        let rendered: Vec<Option<Rendered>> = psrcs
            .iter()
            .enumerate()
            .map(|(i, s)| rendering(i, s))
            .collect();
        let rsrcs: Vec<RenderedSource<'_>> = psrcs
            .iter()
            .zip(&rendered)
            .map(|(s, r)| s.with_rendered(r.as_ref()))
            .collect();
        let (mut x, mut y, mut z) = (Vec::new(), Vec::new(), Vec::new());
        let sx = merge_prepared(&psrcs, out, &mut x);
        let sy = merge_rendered(&rsrcs, out, &mut y);
        assert_eq!(sx, sy);
        assert_eq!(String::from_utf8_lossy(&x), String::from_utf8_lossy(&y));
        let sz = try_merge_rendered(&rsrcs, out, &mut z);
        if sz.is_some() {
            assert_eq!(x, z);
        }
        let (chunks, sc) = merge_rendered_chunks(&rsrcs, out);
        assert_eq!(sc, sx);
        assert_eq!(chunks.concat(), x);
        (x, sx, sz)
    }

    #[test]
    fn pods_merge_from_their_blocks() {
        for out in [Format::Text, Format::OpenMetrics] {
            let srcs = [
                (id("p1"), A, Format::Text),
                (id("p2"), B, Format::OpenMetrics),
                (None, "# TYPE loupe_up gauge\nloupe_up 1\n", Format::Text),
            ];
            let (text, st, fast) = both(&srcs, out, |_, s| Some(s.render(out)));
            assert!(fast.is_some(), "fell back");
            assert_eq!(st.family_conflicts, 0);
            let text = String::from_utf8(text).unwrap();
            assert!(text.contains("exported_pod=\"y\""), "{text}");
        }
    }

    #[test]
    fn chunks_slice_the_stored_blocks() {
        let mut body = String::from("# TYPE big gauge\n");
        for i in 0..100 {
            body.push_str(&format!("big{{i=\"{i}\"}} {i}\n"));
        }
        for out in [Format::Text, Format::OpenMetrics] {
            let srcs = [
                (id("p1"), body.as_str(), Format::Text),
                (id("p2"), body.as_str(), Format::Text),
            ];
            both(&srcs, out, |_, _| None);
            let preps = prepare_all(&srcs);
            let psrcs = sources(&srcs, &preps);
            let rendered: Vec<Rendered> = psrcs.iter().map(|s| s.render(out)).collect();
            let rsrcs: Vec<RenderedSource<'_>> = psrcs
                .iter()
                .zip(&rendered)
                .map(|(s, r)| s.with_rendered(Some(r)))
                .collect();
            let (chunks, _) = merge_rendered_chunks(&rsrcs, out);
            let mut y = Vec::new();
            merge_rendered(&rsrcs, out, &mut y);
            assert_eq!(chunks.concat(), y);
            // Header, p1's block, p2's block (and `# EOF`): the blocks are the stored bytes.
            for (chunk, r) in chunks[1..3].iter().zip(&rendered) {
                assert_eq!(chunk.as_ptr(), r.blocks.as_ptr());
                assert_eq!(chunk.len(), r.blocks.len());
            }
            assert_eq!(chunks.len(), 3 + usize::from(out == Format::OpenMetrics));
        }
    }

    #[test]
    fn fallbacks_are_one_chunk() {
        let srcs = [(id("p1"), A, Format::Text), (id("p1"), A, Format::Text)];
        let preps = prepare_all(&srcs);
        let rsrcs: Vec<RenderedSource<'_>> = sources(&srcs, &preps)
            .into_iter()
            .map(|s| s.with_rendered(None))
            .collect();
        let (chunks, st) = merge_rendered_chunks(&rsrcs, Format::Text);
        assert_eq!(chunks.len(), 1);
        assert_eq!(st.duplicate_series, 2);
        let mut y = Vec::new();
        merge_rendered(&rsrcs, Format::Text, &mut y);
        assert_eq!(chunks[0], y);
    }

    #[test]
    fn renderings_that_do_not_fit_are_made_again() {
        let srcs = [(id("p1"), A, Format::Text), (id("p2"), A, Format::Text)];
        for out in [Format::Text, Format::OpenMetrics] {
            let other = match out {
                Format::Text => Format::OpenMetrics,
                Format::OpenMetrics => Format::Text,
            };
            // Another format, another identity, none at all.
            let (_, _, fast) = both(&srcs, out, |i, s| match i {
                0 => Some(s.render(other)),
                _ => Some(render_source(s.body, s.prepared, id("p9"), out)),
            });
            assert!(fast.is_some());
            let (_, _, fast) = both(&srcs, out, |_, _| None);
            assert!(fast.is_some());
        }
    }

    #[test]
    fn shared_identities_fall_back() {
        let srcs = [(id("p1"), A, Format::Text), (id("p1"), A, Format::Text)];
        for out in [Format::Text, Format::OpenMetrics] {
            let (_, st, fast) = both(&srcs, out, |_, s| Some(s.render(out)));
            assert!(fast.is_none());
            assert_eq!(st.duplicate_series, 2);
        }
        // The agent's own series naming a pod, beside that pod's own with identity-named
        // labels: the same series may come from both.
        let srcs = [
            (id("p1"), "m{pod=\"q\"} 1\n", Format::Text),
            (
                None,
                "m{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\",exported_pod=\"q\"} 1\n",
                Format::Text,
            ),
        ];
        let (_, st, fast) = both(&srcs, Format::Text, |_, s| Some(s.render(Format::Text)));
        assert!(fast.is_none());
        assert_eq!(st.duplicate_series, 1);
    }

    #[test]
    fn a_mismatched_index_is_parsed_again_or_rejected() {
        let good = prepare(b"a 1\n", Format::Text).unwrap();
        let body = b"b{ 1\n";
        let r = render_source(body, &good, None, Format::Text);
        assert!(r.rejected.is_some());
        let src = PreparedSource::new(None, body, &good).with_rendered(Some(&r));
        let st = merge_rendered(&[src], Format::Text, &mut Vec::new());
        assert_eq!(st.rejected.len(), 1);
    }

    #[test]
    fn renderings_are_bounded() {
        let body = b"a 1\nb 2\n";
        let p = prepare(body, Format::Text).unwrap();
        assert!(render_within(body, &p, id("p1"), Format::Text, 1 << 20).is_some());
        let before = RENDERED_OVERSIZE.get();
        assert!(render_within(body, &p, id("p1"), Format::Text, 100).is_none());
        assert!(RENDERED_OVERSIZE.get() > before);
    }
}

//! The merge: regroups the families of all sources (see the module docs for the rules) and
//! renders them, copying each sample line's bytes from its body with the identity labels spliced
//! in. Only lines that need it (identity-named app labels, text-only spellings, format
//! conversion of timestamps and exemplars) take the slower path that re-lexes the line.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;

use super::lex::{self, lex_labels, name_hash, pair_hash, to_f64, BlockInfo, Escaped, Label};
use super::parse::{
    parse, Family, MType, Parsed, SampleRef, Suffix, DUP, HAS_LABELS, IDENT_LABEL, SLOW,
};
use super::{
    Format, Identity, MergeStats, PreparedSource, Source, DUPLICATE_SERIES, FAMILY_CONFLICTS,
};

const ALL: u16 = u16::MAX;

/// A source that parsed, with its identity labels pre-rendered.
pub(super) struct Src<'a> {
    pub(super) parsed: Parsed<'a>,
    /// `namespace="..",pod=".."` (non-empty identity labels, escaped), spliced into every sample.
    pub(super) prefix: Vec<u8>,
    /// Non-empty identity labels: name and escaped value.
    pub(super) ident: Vec<(&'static str, Vec<u8>)>,
    ident_hash: u64,
    /// Another source has the same identity, so their series may collide.
    shared: bool,
    /// `prefix` followed by `,`, and `{prefix}` (empty without identity).
    prefix_comma: Vec<u8>,
    prefix_braced: Vec<u8>,
}

impl<'a> Src<'a> {
    pub(super) fn new(parsed: Parsed<'a>, identity: Option<Identity<'_>>) -> Src<'a> {
        let mut prefix = Vec::new();
        let mut ident = Vec::new();
        let mut ident_hash = 0u64;
        for (name, value) in identity.map(|i| i.labels()).unwrap_or_default() {
            if value.is_empty() {
                continue;
            }
            let mut v = Vec::with_capacity(value.len());
            escape_label_value(value.as_bytes(), &mut v);
            if !prefix.is_empty() {
                prefix.push(b',');
            }
            prefix.extend_from_slice(name.as_bytes());
            prefix.extend_from_slice(b"=\"");
            prefix.extend_from_slice(&v);
            prefix.push(b'"');
            ident_hash = ident_hash.wrapping_add(pair_hash(name.as_bytes(), &v));
            ident.push((name, v));
        }
        Src {
            parsed,
            ident,
            ident_hash,
            shared: false,
            prefix_comma: [&prefix[..], b","].concat(),
            prefix_braced: if prefix.is_empty() {
                Vec::new()
            } else {
                [&b"{"[..], &prefix, b"}"].concat()
            },
            prefix,
        }
    }
}

/// `name="value"` pairs, comma-separated, values escaped; pairs with empty values are left out
/// (Prometheus treats an empty label as absent).
pub fn write_label_set(pairs: &[(&str, &str)], out: &mut Vec<u8>) {
    for (i, (name, value)) in pairs.iter().filter(|(_, v)| !v.is_empty()).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_label_value(value.as_bytes(), out);
        out.push(b'"');
    }
}

fn escape_label_value(v: &[u8], out: &mut Vec<u8>) {
    for &c in v {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            c => out.push(c),
        }
    }
}

/// One output family contributed by one source family.
pub(super) struct Entry<'a> {
    /// Output name: `base[..base.len() - strip]` followed by `add`.
    pub(super) base: &'a [u8],
    pub(super) strip: usize,
    pub(super) add: &'static [u8],
    pub(super) mtype: MType,
    pub(super) src: u32,
    pub(super) fam: u32,
    /// Source-family sample suffixes that go to this output family.
    pub(super) filter: u16,
    /// Whether this entry carries its family's UNIT.
    pub(super) unit: bool,
    /// A text gauge `x_created` folded into OpenMetrics counter `x`: its HELP is not the family's.
    pub(super) created_part: bool,
    pub(super) dropped: bool,
}

impl Entry<'_> {
    fn stem(&self) -> &[u8] {
        &self.base[..self.base.len() - self.strip]
    }
    pub(super) fn name_cmp(&self, o: &Entry<'_>) -> Ordering {
        if self.add.is_empty() && o.add.is_empty() {
            return self.stem().cmp(o.stem());
        }
        let a = self.stem().iter().chain(self.add);
        let b = o.stem().iter().chain(o.add);
        a.cmp(b)
    }
    pub(super) fn name_vec(&self) -> Vec<u8> {
        let mut v = self.stem().to_vec();
        v.extend_from_slice(self.add);
        v
    }
}

/// The output families a source family maps to (module docs, rule 6).
fn push_entries<'a>(
    entries: &mut Vec<Entry<'a>>,
    src: u32,
    fam_idx: u32,
    fam: &Family<'a>,
    from: Format,
    to: Format,
) {
    let mut push = |strip: usize, add: &'static [u8], mtype: MType, filter: u16, unit: bool| {
        if fam.suffixes & filter != 0 {
            entries.push(Entry {
                base: fam.name,
                strip,
                add,
                mtype,
                src,
                fam: fam_idx,
                filter,
                unit,
                created_part: false,
                dropped: false,
            });
        }
    };
    let created = Suffix::Created.bit();
    match (from, to) {
        (Format::Text, Format::Text) | (Format::OpenMetrics, Format::OpenMetrics) => {
            push(0, b"", fam.mtype, ALL, true)
        }
        (Format::OpenMetrics, Format::Text) => match fam.mtype {
            MType::Counter => {
                push(0, b"_total", MType::Counter, Suffix::Total.bit(), false);
                push(0, b"_created", MType::Gauge, created, false);
            }
            MType::Histogram | MType::Summary => {
                push(0, b"", fam.mtype, ALL & !created, false);
                push(0, b"_created", MType::Gauge, created, false);
            }
            MType::GaugeHistogram => {
                push(0, b"", MType::Histogram, Suffix::Bucket.bit(), false);
                push(0, b"_gcount", MType::Gauge, Suffix::GCount.bit(), false);
                push(0, b"_gsum", MType::Gauge, Suffix::GSum.bit(), false);
            }
            MType::Info => push(0, b"_info", MType::Gauge, ALL, false),
            MType::StateSet | MType::Gauge => push(0, b"", MType::Gauge, ALL, false),
            MType::Unknown => push(0, b"", MType::Unknown, ALL, false),
        },
        (Format::Text, Format::OpenMetrics) => match (fam.mtype, fam.om_ok) {
            (MType::Counter, true) => push(6, b"", MType::Counter, ALL, false),
            (MType::Histogram | MType::Summary | MType::Gauge, true) => {
                push(0, b"", fam.mtype, ALL, false)
            }
            (MType::Histogram, false) => {
                push(0, b"_bucket", MType::Unknown, Suffix::Bucket.bit(), false);
                push(0, b"_count", MType::Unknown, Suffix::Count.bit(), false);
                push(0, b"_sum", MType::Unknown, Suffix::Sum.bit(), false);
            }
            (MType::Summary, false) => {
                push(0, b"", MType::Unknown, Suffix::Bare.bit(), false);
                push(0, b"_count", MType::Unknown, Suffix::Count.bit(), false);
                push(0, b"_sum", MType::Unknown, Suffix::Sum.bit(), false);
            }
            _ => push(0, b"", MType::Unknown, ALL, false),
        },
    }
}

/// The output families of one source (module docs, rule 6), in the source's family order.
pub(super) fn source_entries<'a>(entries: &mut Vec<Entry<'a>>, si: u32, s: &Src<'a>, out: Format) {
    let text_to_om = s.parsed.format == Format::Text && out == Format::OpenMetrics;
    let counters: std::collections::HashSet<&[u8]> = if text_to_om {
        s.parsed
            .families
            .iter()
            .filter(|f| f.mtype == MType::Counter && f.om_ok && f.suffixes != 0)
            .map(|f| &f.name[..f.name.len() - 6])
            .collect()
    } else {
        Default::default()
    };
    for (fi, fam) in s.parsed.families.iter().enumerate() {
        // A text gauge `x_created` beside counter `x_total` is that counter's `_created`
        // in OpenMetrics (as client libraries write text).
        let created_of = fam.name.strip_suffix(b"_created");
        if let Some(stem) = created_of.filter(|s| {
            text_to_om
                && matches!(fam.mtype, MType::Gauge | MType::Unknown)
                && fam.suffixes != 0
                && counters.contains(s)
        }) {
            entries.push(Entry {
                base: fam.name,
                strip: fam.name.len() - stem.len(),
                add: b"",
                mtype: MType::Counter,
                src: si,
                fam: fi as u32,
                filter: ALL,
                unit: false,
                created_part: true,
                dropped: false,
            });
            continue;
        }
        push_entries(entries, si, fi as u32, fam, s.parsed.format, out);
    }
}

fn parse_or_reject<'a>(
    i: usize,
    body: &'a [u8],
    format: Format,
    identity: Option<Identity<'_>>,
    srcs: &mut Vec<Src<'a>>,
    stats: &mut MergeStats,
) {
    match parse(body, format) {
        Ok(p) => srcs.push(Src::new(p, identity)),
        Err(e) => {
            if let Some(id) = identity {
                log::debug!(
                    "metrics of pod {}/{} endpoint {:?} rejected: {e}",
                    id.namespace,
                    id.pod,
                    id.endpoint
                );
            } else {
                log::debug!("agent metrics rejected: {e}");
            }
            stats.rejected.push((i, e));
        }
    }
}

/// Merges `sources` into `buf` in format `out`; see the module docs for the rules.
pub fn merge(sources: &[Source<'_>], out: Format, buf: &mut Vec<u8>) -> MergeStats {
    let mut stats = MergeStats::default();
    let mut srcs: Vec<Src<'_>> = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        parse_or_reject(i, s.body, s.format, s.identity, &mut srcs, &mut stats);
    }
    merge_parsed(srcs, out, buf, stats)
}

/// [`merge`] for bodies checked earlier with [`super::prepare`]: no parsing, only regrouping
/// and rendering. A source whose index does not fit its body (another length) is parsed again.
pub fn merge_prepared(
    sources: &[PreparedSource<'_>],
    out: Format,
    buf: &mut Vec<u8>,
) -> MergeStats {
    let mut stats = MergeStats::default();
    let mut srcs: Vec<Src<'_>> = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        let p = s.prepared;
        if p.len != s.body.len() {
            parse_or_reject(i, s.body, p.format, s.identity, &mut srcs, &mut stats);
            continue;
        }
        let parsed = Parsed {
            body: s.body,
            format: p.format,
            families: p.families.iter().map(|f| f.family(s.body)).collect(),
            samples: Cow::Borrowed(&p.samples),
        };
        srcs.push(Src::new(parsed, s.identity));
    }
    merge_parsed(srcs, out, buf, stats)
}

fn merge_parsed(
    mut srcs: Vec<Src<'_>>,
    out: Format,
    buf: &mut Vec<u8>,
    mut stats: MergeStats,
) -> MergeStats {
    let mut by_prefix: HashMap<&[u8], usize> = HashMap::new();
    let mut shared = vec![false; srcs.len()];
    for (i, s) in srcs.iter().enumerate() {
        if let Some(&j) = by_prefix.get(s.prefix.as_slice()) {
            shared[i] = true;
            shared[j] = true;
        } else {
            by_prefix.insert(&s.prefix, i);
        }
    }
    drop(by_prefix);
    for (s, sh) in srcs.iter_mut().zip(shared) {
        s.shared = sh;
    }

    // Output families, sorted by name; equal names keep source order (stable sort).
    let mut entries: Vec<Entry<'_>> = Vec::new();
    for (si, s) in srcs.iter().enumerate() {
        source_entries(&mut entries, si as u32, s, out);
    }
    entries.sort_by(|a, b| a.name_cmp(b));

    // Groups of equal names; TYPE/HELP/UNIT conflicts inside each (rules 3 and 4).
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut j = i + 1;
        while j < entries.len() && entries[j].name_cmp(&entries[i]) == Ordering::Equal {
            j += 1;
        }
        groups.push((i, j));
        i = j;
    }
    let mut conflicts = 0u64;
    let mut scratch = Vec::new();
    let mut scratch2 = Vec::new();
    for &(a, z) in &groups {
        let mtype = entries[a].mtype;
        let mut help: Option<(usize, &[u8], Format)> = None;
        let mut unit: Option<&[u8]> = None;
        for e in &mut entries[a..z] {
            if e.mtype != mtype {
                e.dropped = true;
                conflicts += 1;
                continue;
            }
            let p = &srcs[e.src as usize].parsed;
            let fam = &p.families[e.fam as usize];
            let mut conflict = false;
            if let Some(h) = fam.help.filter(|_| !e.created_part) {
                match help {
                    None => help = Some((e.src as usize, h, p.format)),
                    Some((hs, h0, f0)) => {
                        if hs != e.src as usize
                            && !help_eq(h0, f0, h, p.format, &mut scratch, &mut scratch2)
                        {
                            conflict = true;
                        }
                    }
                }
            }
            if e.unit {
                if let Some(u) = fam.unit.filter(|u| !u.is_empty()) {
                    match unit {
                        None => unit = Some(u),
                        Some(u0) if u0 != u => conflict = true,
                        _ => {}
                    }
                }
            }
            conflicts += u64::from(conflict);
        }
    }

    // Sample-name clashes between families (rule 3): first source first, then by name.
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| entries[groups[g].0].src);
    let mut claimed: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut group_dropped = vec![false; groups.len()];
    for &g in &order {
        let (a, z) = groups[g];
        let base = entries[a].name_vec();
        let mut names = vec![base.clone()];
        for s in entries[a].mtype.suffixes(out) {
            if *s != Suffix::Bare {
                let mut n = base.clone();
                n.extend_from_slice(s.text());
                names.push(n);
            }
        }
        if names
            .iter()
            .any(|n| claimed.get(n).is_some_and(|&o| o != g))
        {
            group_dropped[g] = true;
            conflicts += entries[a..z].iter().filter(|e| !e.dropped).count() as u64;
            continue;
        }
        for n in names {
            claimed.insert(n, g);
        }
    }
    drop(claimed);
    stats.family_conflicts = conflicts;

    // Render.
    let estimate: usize = srcs
        .iter()
        .map(|s| s.parsed.body.len() + s.parsed.samples.len() * (s.prefix.len() + 2))
        .sum();
    buf.reserve(estimate + 64);
    let mut r = Renderer::new(out);
    for (g, &(a, z)) in groups.iter().enumerate() {
        if group_dropped[g] {
            continue;
        }
        r.family(&srcs, &entries[a..z], buf);
    }
    if out == Format::OpenMetrics {
        buf.extend_from_slice(b"# EOF\n");
    }
    stats.duplicate_series = r.duplicates;
    FAMILY_CONFLICTS.add(stats.family_conflicts);
    DUPLICATE_SERIES.add(stats.duplicate_series);
    stats
}

pub(super) fn help_eq(
    a: &[u8],
    fa: Format,
    b: &[u8],
    fb: Format,
    sa: &mut Vec<u8>,
    sb: &mut Vec<u8>,
) -> bool {
    if fa == fb {
        return a == b;
    }
    sa.clear();
    sb.clear();
    lex::write_escaped(a, help_kind(fa), Escaped::OmHelp, sa);
    lex::write_escaped(b, help_kind(fb), Escaped::OmHelp, sb);
    sa == sb
}

pub(super) fn help_kind(f: Format) -> Escaped {
    match f {
        Format::Text => Escaped::TextHelp,
        Format::OpenMetrics => Escaped::OmHelp,
    }
}

/// A family's header lines in format `out`: HELP before TYPE in text, TYPE, UNIT, HELP in
/// OpenMetrics (UNIT only there). `name` is written as the concatenation of its pieces; `help`
/// is raw, in the format it was read from.
pub(super) fn write_header(
    name: &[&[u8]],
    mtype: MType,
    help: Option<(&[u8], Format)>,
    unit: Option<&[u8]>,
    out: Format,
    buf: &mut Vec<u8>,
) {
    let line = |buf: &mut Vec<u8>, keyword: &[u8]| {
        buf.extend_from_slice(keyword);
        for piece in name {
            buf.extend_from_slice(piece);
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

pub(super) struct Renderer {
    out: Format,
    /// Samples of the current family in output order: (entry index, sample index).
    items: Vec<(u32, u32)>,
    /// (series hash, item index), sorted to find duplicates.
    keys: Vec<(u64, u32)>,
    dup: Vec<bool>,
    labels: Vec<Label>,
    labels2: Vec<Label>,
    pub(super) duplicates: u64,
}

impl Renderer {
    pub(super) fn new(out: Format) -> Renderer {
        Renderer {
            out,
            items: Vec::new(),
            keys: Vec::new(),
            dup: Vec::new(),
            labels: Vec::new(),
            labels2: Vec::new(),
            duplicates: 0,
        }
    }

    fn family(&mut self, srcs: &[Src<'_>], entries: &[Entry<'_>], buf: &mut Vec<u8>) {
        let Some(first) = entries.iter().find(|e| !e.dropped) else {
            return;
        };
        let out = self.out;
        // Metadata.
        let help = entries
            .iter()
            .filter(|e| !e.dropped && !e.created_part)
            .find_map(|e| {
                let p = &srcs[e.src as usize].parsed;
                p.families[e.fam as usize].help.map(|h| (h, p.format))
            });
        let unit = entries
            .iter()
            .filter(|e| !e.dropped && e.unit)
            .find_map(|e| {
                let p = &srcs[e.src as usize].parsed;
                p.families[e.fam as usize].unit.filter(|u| !u.is_empty())
            });
        let name: [&[u8]; 2] = [first.stem(), first.add];
        write_header(&name, first.mtype, help, unit, out, buf);

        self.samples(srcs, entries, buf);
    }

    /// Whether the series of a family's samples may collide across its entries, so that
    /// duplicates must be found by comparing series rather than from the parser's marks (which
    /// only cover one source family): the sources share an identity, app labels get renamed,
    /// or two families of one source meet in this output family (a text untyped `h_bucket`
    /// and a histogram `h` that both become OpenMetrics `unknown` `h_bucket`).
    pub(super) fn cross(srcs: &[Src<'_>], entries: &[Entry<'_>]) -> bool {
        let mut previous: Option<u32> = None;
        entries.iter().filter(|e| !e.dropped).any(|e| {
            let s = &srcs[e.src as usize];
            let same_source = previous == Some(e.src);
            previous = Some(e.src);
            same_source
                || s.shared
                || (!s.ident.is_empty() && s.parsed.families[e.fam as usize].ident_labels)
        })
    }

    /// Writes the samples of one output family's (not dropped) entries, without duplicates.
    pub(super) fn samples(&mut self, srcs: &[Src<'_>], entries: &[Entry<'_>], buf: &mut Vec<u8>) {
        let Some(first) = entries.iter().find(|e| !e.dropped) else {
            return;
        };
        // Duplicates inside a body were marked by the parser; series of two sources can only
        // collide when the sources share an identity or app labels were renamed.
        let cross = Self::cross(srcs, entries);
        if !cross {
            for e in entries.iter().filter(|e| !e.dropped) {
                let s = &srcs[e.src as usize];
                let (lo, hi) = s.parsed.families[e.fam as usize].samples;
                for sample in &s.parsed.samples[lo as usize..hi as usize] {
                    if e.filter & sample.suffix.bit() == 0 {
                        continue;
                    }
                    if sample.flags & DUP != 0 {
                        self.duplicates += 1;
                        continue;
                    }
                    self.sample(s, sample, buf);
                }
            }
            return;
        }
        // Otherwise duplicates are found by sorting series hashes.
        self.items.clear();
        self.keys.clear();
        // OpenMetrics wants each histogram or summary whole and in one piece, which keeping
        // the first of each series could break when two sources share an identity: there the
        // later source's samples of the family all count as duplicates.
        let grouped = self.out == Format::OpenMetrics
            && matches!(
                first.mtype,
                MType::Histogram | MType::GaugeHistogram | MType::Summary
            );
        for (ei, e) in entries.iter().enumerate() {
            if e.dropped {
                continue;
            }
            let s = &srcs[e.src as usize];
            let (lo, hi) = s.parsed.families[e.fam as usize].samples;
            if grouped
                && s.shared
                && entries[..ei].iter().any(|p| {
                    !p.dropped && p.src != e.src && srcs[p.src as usize].prefix == s.prefix
                })
            {
                self.duplicates += s.parsed.samples[lo as usize..hi as usize]
                    .iter()
                    .filter(|x| e.filter & x.suffix.bit() != 0)
                    .count() as u64;
                continue;
            }
            for si in lo..hi {
                let sample = &s.parsed.samples[si as usize];
                if e.filter & sample.suffix.bit() == 0 {
                    continue;
                }
                if sample.flags & DUP != 0 {
                    self.duplicates += 1;
                    continue;
                }
                let h = if sample.flags & IDENT_LABEL != 0 && !s.ident.is_empty() {
                    self.final_hash(s, sample)
                } else {
                    sample.hash.wrapping_add(s.ident_hash)
                };
                self.keys.push((h, self.items.len() as u32));
                self.items.push((ei as u32, si));
            }
        }
        self.dup.clear();
        self.dup.resize(self.items.len(), false);
        self.keys.sort_unstable();
        let mut k = 0;
        while k + 1 < self.keys.len() {
            if self.keys[k].0 != self.keys[k + 1].0 {
                k += 1;
                continue;
            }
            let mut z = k + 1;
            while z < self.keys.len() && self.keys[z].0 == self.keys[k].0 {
                z += 1;
            }
            // Equal hashes: compare exactly; keep the first of each series in output order.
            for x in k..z {
                let ix = self.keys[x].1 as usize;
                if self.dup[ix] {
                    continue;
                }
                for y in x + 1..z {
                    let iy = self.keys[y].1 as usize;
                    if self.dup[iy] {
                        continue;
                    }
                    let (a, b) = (self.items[ix], self.items[iy]);
                    if self.same_series(srcs, entries, a, b) {
                        let later = if ix < iy { iy } else { ix };
                        self.dup[later] = true;
                        self.duplicates += 1;
                    }
                }
            }
            k = z;
        }
        for n in 0..self.items.len() {
            if self.dup[n] {
                continue;
            }
            let (ei, si) = self.items[n];
            let s = &srcs[entries[ei as usize].src as usize];
            let sample = s.parsed.samples[si as usize];
            self.sample(s, &sample, buf);
        }
    }

    #[inline]
    pub(super) fn sample(&mut self, s: &Src<'_>, sm: &SampleRef, buf: &mut Vec<u8>) {
        let b = s.parsed.body;
        if sm.flags & (SLOW | IDENT_LABEL) == 0 && s.parsed.format == self.out {
            // The common case: at most three copies, the identity spliced into the label block.
            let (start, ne, end) = (sm.start as usize, sm.name_end as usize, sm.end as usize);
            let line_end = if b.get(end) == Some(&b'\n') {
                end + 1
            } else {
                end
            };
            if sm.flags & HAS_LABELS == 0 {
                buf.extend_from_slice(&b[start..ne]);
                buf.extend_from_slice(&s.prefix_braced);
                buf.extend_from_slice(&b[sm.labels_end as usize..line_end]);
            } else if s.prefix.is_empty() {
                buf.extend_from_slice(&b[start..line_end]);
            } else {
                buf.extend_from_slice(&b[start..=ne]);
                buf.extend_from_slice(&s.prefix_comma);
                buf.extend_from_slice(&b[ne + 1..line_end]);
            }
            if line_end == end {
                buf.push(b'\n');
            }
            return;
        }
        let needs_labels = sm.flags & (SLOW | IDENT_LABEL) != 0;
        if needs_labels {
            self.sample_slow(s, sm, buf);
        } else {
            buf.extend_from_slice(&b[sm.start as usize..sm.name_end as usize]);
            let has_labels = sm.flags & HAS_LABELS != 0;
            if has_labels || !s.prefix.is_empty() {
                buf.push(b'{');
                buf.extend_from_slice(&s.prefix);
                if has_labels {
                    if !s.prefix.is_empty() {
                        buf.push(b',');
                    }
                    buf.extend_from_slice(&b[sm.name_end as usize + 1..sm.labels_end as usize - 1]);
                }
                buf.push(b'}');
            }
        }
        if s.parsed.format == self.out && sm.flags & SLOW == 0 {
            buf.extend_from_slice(&b[sm.labels_end as usize..sm.end as usize]);
        } else {
            rest(
                b,
                sm.labels_end as usize,
                sm.end as usize,
                s.parsed.format,
                self.out,
                buf,
            );
        }
        buf.push(b'\n');
    }

    /// Re-lexes the sample's labels into `self.labels` (absolute ranges into the body).
    fn relex(&mut self, b: &[u8], sm: &SampleRef, strict: bool) {
        self.labels.clear();
        if sm.flags & HAS_LABELS == 0 {
            return;
        }
        let mut i = sm.name_end as usize;
        while i < sm.end as usize && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let mut info = BlockInfo::default();
        // The parser accepted this block, so lexing it again cannot fail.
        let _ = lex_labels(
            &b[..sm.end as usize],
            i,
            strict,
            &mut self.labels,
            &mut info,
        );
    }

    /// The app labels after identity conflicts (rule 2): (name prefix count, label), where the
    /// name is `exported_` repeated that many times before the label's own name.
    fn final_labels(&mut self, s: &Src<'_>, sm: &SampleRef, out: &mut Vec<(usize, Label)>) {
        let b = s.parsed.body;
        self.relex(b, sm, s.parsed.format == Format::OpenMetrics);
        out.clear();
        let is_ident = |n: &[u8]| s.ident.iter().any(|(k, _)| k.as_bytes() == n);
        let mut conflicting: Vec<Label> = Vec::new();
        for l in &self.labels {
            let n = l.name(b);
            if is_ident(n) {
                if !l.value(b).is_empty() {
                    conflicting.push(*l);
                }
                continue;
            }
            out.push((0, *l));
        }
        if conflicting.is_empty() {
            return;
        }
        // Empty values are absent labels (Prometheus): they neither block an `exported_` name
        // nor may stay beside the label that takes it.
        out.retain(|(_, l)| !l.value(b).is_empty());
        conflicting.sort_by_key(|l| l.name.1 - l.name.0);
        let taken = |out: &Vec<(usize, Label)>, k: usize, name: &[u8]| -> bool {
            // Is `exported_` * k + name already a label?
            let mut full = b"exported_".repeat(k);
            full.extend_from_slice(name);
            s.ident.iter().any(|(n, _)| n.as_bytes() == full.as_slice())
                || out.iter().any(|(pk, l)| {
                    let ln = l.name(b);
                    let plen = 9 * pk;
                    ln.len() + plen == full.len()
                        && full[..plen] == b"exported_".repeat(*pk)[..]
                        && &full[plen..] == ln
                })
        };
        for l in conflicting {
            let mut k = 1;
            while taken(out, k, l.name(b)) {
                k += 1;
            }
            out.push((k, l));
        }
    }

    fn final_hash(&mut self, s: &Src<'_>, sm: &SampleRef) -> u64 {
        let b = s.parsed.body;
        let mut fl = Vec::new();
        self.final_labels(s, sm, &mut fl);
        let mut h =
            name_hash(&b[sm.start as usize..sm.name_end as usize]).wrapping_add(s.ident_hash);
        let mut name = Vec::new();
        for (k, l) in &fl {
            name.clear();
            for _ in 0..*k {
                name.extend_from_slice(b"exported_");
            }
            name.extend_from_slice(l.name(b));
            h = h.wrapping_add(pair_hash(&name, l.value(b)));
        }
        h
    }

    fn sample_slow(&mut self, s: &Src<'_>, sm: &SampleRef, buf: &mut Vec<u8>) {
        let b = s.parsed.body;
        let mut fl = Vec::new();
        self.final_labels(s, sm, &mut fl);
        buf.extend_from_slice(&b[sm.start as usize..sm.name_end as usize]);
        if fl.is_empty() && s.prefix.is_empty() {
            return;
        }
        buf.push(b'{');
        buf.extend_from_slice(&s.prefix);
        let mut first = s.prefix.is_empty();
        for (k, l) in &fl {
            if !first {
                buf.push(b',');
            }
            first = false;
            for _ in 0..*k {
                buf.extend_from_slice(b"exported_");
            }
            buf.extend_from_slice(l.name(b));
            buf.extend_from_slice(b"=\"");
            lex::write_escaped(l.value(b), Escaped::LabelValue, Escaped::LabelValue, buf);
            buf.push(b'"');
        }
        buf.push(b'}');
    }

    /// A decoded, sorted view of a sample's final series, for exact comparison.
    fn series_key(&mut self, s: &Src<'_>, sm: &SampleRef) -> Vec<(Vec<u8>, Vec<u8>)> {
        let b = s.parsed.body;
        let mut fl = Vec::new();
        self.final_labels(s, sm, &mut fl);
        let mut key: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(fl.len() + 5);
        key.push((
            b"__name__".to_vec(),
            b[sm.start as usize..sm.name_end as usize].to_vec(),
        ));
        for (n, v) in &s.ident {
            let mut d = Vec::new();
            lex::unescape(v, &mut d);
            key.push((n.as_bytes().to_vec(), d));
        }
        for (k, l) in &fl {
            let mut n = b"exported_".repeat(*k);
            n.extend_from_slice(l.name(b));
            let mut d = Vec::new();
            lex::unescape(l.value(b), &mut d);
            if !d.is_empty() {
                key.push((n, d));
            }
        }
        key.sort();
        key
    }

    fn same_series(
        &mut self,
        srcs: &[Src<'_>],
        entries: &[Entry<'_>],
        a: (u32, u32),
        b: (u32, u32),
    ) -> bool {
        let sa = &srcs[entries[a.0 as usize].src as usize];
        let sb = &srcs[entries[b.0 as usize].src as usize];
        let ma = sa.parsed.samples[a.1 as usize];
        let mb = sb.parsed.samples[b.1 as usize];
        let ka = self.series_key(sa, &ma);
        std::mem::swap(&mut self.labels, &mut self.labels2);
        let kb = self.series_key(sb, &mb);
        std::mem::swap(&mut self.labels, &mut self.labels2);
        ka == kb
    }
}

/// Writes a sample line's value, timestamp and exemplar (from `b[i..end]`, starting at the
/// blank after the name or label block) in format `to`.
fn rest(b: &[u8], mut i: usize, end: usize, from: Format, to: Format, buf: &mut Vec<u8>) {
    let blank = |c: u8| c == b' ' || c == b'\t';
    let token = |i: &mut usize| -> (usize, usize) {
        while *i < end && blank(b[*i]) {
            *i += 1;
        }
        let s = *i;
        while *i < end && !blank(b[*i]) {
            *i += 1;
        }
        (s, *i)
    };
    let v = token(&mut i);
    buf.push(b' ');
    buf.extend_from_slice(&b[v.0..v.1]);
    let mut t = token(&mut i);
    if from == Format::OpenMetrics && &b[t.0..t.1] == b"#" {
        // Exemplar; only OpenMetrics carries it.
        if to == Format::OpenMetrics {
            buf.push(b' ');
            buf.extend_from_slice(&b[t.0..end]);
        }
        return;
    }
    if t.0 == t.1 {
        return;
    }
    let ts = &b[t.0..t.1];
    match (from, to) {
        (Format::Text, Format::OpenMetrics) => {
            buf.push(b' ');
            millis_to_seconds(ts, buf);
        }
        (Format::OpenMetrics, Format::Text) => {
            let ms = (to_f64(ts) * 1000.0).round();
            if ms.is_finite() {
                buf.push(b' ');
                buf.extend_from_slice((ms as i64).to_string().as_bytes());
            }
        }
        _ => {
            buf.push(b' ');
            buf.extend_from_slice(ts);
        }
    }
    if from == Format::OpenMetrics {
        t = token(&mut i);
        if t.0 < t.1 && to == Format::OpenMetrics {
            buf.push(b' ');
            buf.extend_from_slice(&b[t.0..end]);
        }
    }
}

/// `1234567` (ms) → `1234.567` (s), exactly, by moving the decimal point.
fn millis_to_seconds(ms: &[u8], buf: &mut Vec<u8>) {
    let (sign, digits) = match ms.first() {
        Some(b'-') => (&b"-"[..], &ms[1..]),
        Some(b'+') => (&b""[..], &ms[1..]),
        _ => (&b""[..], ms),
    };
    buf.extend_from_slice(sign);
    if digits.len() > 3 {
        buf.extend_from_slice(&digits[..digits.len() - 3]);
        buf.push(b'.');
        buf.extend_from_slice(&digits[digits.len() - 3..]);
    } else {
        buf.extend_from_slice(b"0.");
        for _ in digits.len()..3 {
            buf.push(b'0');
        }
        buf.extend_from_slice(digits);
    }
}

#[cfg(test)]
mod tests {
    use super::super::validate;
    use super::*;

    fn id<'a>(pod: &'a str) -> Option<Identity<'a>> {
        Some(Identity {
            namespace: "ns",
            pod,
            container: "c",
            endpoint: "metrics",
        })
    }

    fn run(sources: &[Source<'_>], out: Format) -> (String, MergeStats) {
        let mut buf = Vec::new();
        let st = merge(sources, out, &mut buf);
        let s = String::from_utf8(buf).unwrap();
        validate(s.as_bytes(), out).unwrap_or_else(|e| panic!("invalid output {e}:\n{s}"));
        (s, st)
    }

    fn text<'a>(pod: &'a str, body: &'a str) -> Source<'a> {
        Source {
            identity: id(pod),
            body: body.as_bytes(),
            format: Format::Text,
        }
    }
    fn om<'a>(pod: &'a str, body: &'a str) -> Source<'a> {
        Source {
            identity: id(pod),
            body: body.as_bytes(),
            format: Format::OpenMetrics,
        }
    }

    #[test]
    fn families_are_grouped_and_sorted_with_identity() {
        let a =
            "# HELP b_total B.\n# TYPE b_total counter\nb_total{x=\"1\"} 1\n# TYPE a gauge\na 1\n";
        let b = "# HELP b_total B.\n# TYPE b_total counter\nb_total{x=\"1\"} 2\n";
        let (s, st) = run(&[text("p1", a), text("p2", b)], Format::Text);
        assert_eq!(
            s,
            "# TYPE a gauge\n\
             a{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\"} 1\n\
             # HELP b_total B.\n# TYPE b_total counter\n\
             b_total{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\",x=\"1\"} 1\n\
             b_total{namespace=\"ns\",pod=\"p2\",container=\"c\",endpoint=\"metrics\",x=\"1\"} 2\n"
        );
        assert_eq!(st, MergeStats::default());
    }

    #[test]
    fn identity_conflicts_are_exported() {
        let a = "a{pod=\"app\",exported_pod=\"e\",namespace=\"\",z=\"1\"} 1\n";
        let (s, _) = run(&[text("p1", a)], Format::Text);
        assert_eq!(
            s,
            "# TYPE a untyped\n\
             a{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\",exported_pod=\"e\",z=\"1\",exported_exported_pod=\"app\"} 1\n"
        );
        // An empty app label does not block the exported_ name.
        let (s, _) = run(
            &[text("p1", "a{pod=\"app\",exported_pod=\"\"} 1\n")],
            Format::Text,
        );
        assert_eq!(
            s,
            "# TYPE a untyped\n\
             a{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\",exported_pod=\"app\"} 1\n"
        );
        // Empty identity values omit the label and leave the app's alone.
        let src = Source {
            identity: Some(Identity {
                namespace: "ns",
                pod: "",
                container: "",
                endpoint: "",
            }),
            body: b"a{pod=\"app\"} 1\n",
            format: Format::Text,
        };
        let (s, _) = run(&[src], Format::Text);
        assert_eq!(s, "# TYPE a untyped\na{namespace=\"ns\",pod=\"app\"} 1\n");
    }

    #[test]
    fn type_conflict_first_source_wins() {
        let a = "# TYPE m gauge\nm 1\n";
        let b = "# TYPE m counter\nm 2\n";
        let (s, st) = run(&[text("p1", a), text("p2", b)], Format::Text);
        assert!(s.contains("# TYPE m gauge\n") && !s.contains(" 2\n"), "{s}");
        assert_eq!(st.family_conflicts, 1);
        // HELP conflicts keep samples.
        let a = "# HELP m one\nm 1\n";
        let b = "# HELP m two\nm 2\n";
        let (s, st) = run(&[text("p1", a), text("p2", b)], Format::Text);
        assert!(s.contains("# HELP m one\n") && s.contains(" 2\n"), "{s}");
        assert_eq!(st.family_conflicts, 1);
    }

    #[test]
    fn clashing_sample_names_drop_the_later_family() {
        let a = "# TYPE a_created gauge\na_created 1\n# EOF\n";
        let b = "# TYPE a counter\na_total 1\na_created 2\n# EOF\n";
        let (s, st) = run(&[om("p1", a), om("p2", b)], Format::OpenMetrics);
        assert!(
            s.contains("# TYPE a_created gauge") && !s.contains("a_total"),
            "{s}"
        );
        assert_eq!(st.family_conflicts, 1);
    }

    #[test]
    fn duplicates_are_written_once() {
        let a = "m{a=\"1\",b=\"2\"} 1\nm{b=\"2\",a=\"1\"} 2\nm{a=\"1\"} 3\n";
        let (s, st) = run(&[text("p1", a)], Format::Text);
        assert_eq!(st.duplicate_series, 1);
        assert!(
            s.contains("} 1\n") && !s.contains("} 2\n") && s.contains("} 3\n"),
            "{s}"
        );
        // The same body from the same identity twice: all duplicates.
        let (_, st) = run(&[text("p1", a), text("p1", a)], Format::Text);
        assert_eq!(st.duplicate_series, 4);
        // An app label renamed to exported_pod meets an existing exported_pod.
        let b = "m{pod=\"x\"} 1\nm{exported_pod=\"x\"} 2\n";
        let (_, st) = run(&[text("p1", b)], Format::Text);
        assert_eq!(st.duplicate_series, 1);
    }

    #[test]
    fn shared_identity_keeps_histograms_whole() {
        let a = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n# EOF\n";
        let b = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"+Inf\"} 1\n# EOF\n";
        let (s, st) = run(&[om("p1", a), om("p1", b)], Format::OpenMetrics);
        assert_eq!(st.duplicate_series, 3);
        assert!(!s.contains("le=\"2\""), "{s}");
    }

    #[test]
    fn om_to_text_conversion() {
        let a = "# TYPE c counter\n# HELP c Say \\\"hi\\\".\nc_total 1 1.5 # {t=\"x\"} 1\nc_created 10\n\
                 # TYPE i info\ni_info{v=\"1\"} 1\n\
                 # TYPE g gaugehistogram\ng_bucket{le=\"+Inf\"} 2\ng_gcount 2\ng_gsum 3\n\
                 # TYPE s_seconds gauge\n# UNIT s_seconds seconds\ns_seconds 1\n# EOF\n";
        let src = Source {
            identity: None,
            body: a.as_bytes(),
            format: Format::OpenMetrics,
        };
        let (s, _) = run(&[src], Format::Text);
        assert_eq!(
            s,
            "# HELP c_created Say \"hi\".\n# TYPE c_created gauge\nc_created 10\n\
             # HELP c_total Say \"hi\".\n# TYPE c_total counter\nc_total 1 1500\n\
             # TYPE g histogram\ng_bucket{le=\"+Inf\"} 2\n\
             # TYPE g_gcount gauge\ng_gcount 2\n# TYPE g_gsum gauge\ng_gsum 3\n\
             # TYPE i_info gauge\ni_info{v=\"1\"} 1\n\
             # TYPE s_seconds gauge\ns_seconds 1\n"
        );
    }

    #[test]
    fn text_to_om_conversion() {
        let a = "# HELP r_total Requests \"all\".\n# TYPE r_total counter\nr_total{code=\"200\"} 3 1500\n\
                 # TYPE bad counter\nbad 1\n\
                 # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n\
                 x   7   -5\n";
        let src = Source {
            identity: None,
            body: a.as_bytes(),
            format: Format::Text,
        };
        let (s, _) = run(&[src], Format::OpenMetrics);
        assert_eq!(
            s,
            "# TYPE bad unknown\nbad 1\n\
             # TYPE h_bucket unknown\nh_bucket{le=\"1\"} 1\n\
             # TYPE h_count unknown\nh_count 1\n# TYPE h_sum unknown\nh_sum 1\n\
             # TYPE r counter\n# HELP r Requests \\\"all\\\".\nr_total{code=\"200\"} 3 1.500\n\
             # TYPE x unknown\nx 7 -0.005\n# EOF\n"
        );
    }

    #[test]
    fn text_created_gauges_fold_into_om_counters() {
        let a = "# HELP c_total C.\n# TYPE c_total counter\nc_total{x=\"1\"} 1\n\
                 # HELP c_created C.\n# TYPE c_created gauge\nc_created{x=\"1\"} 1.7e9\n\
                 # TYPE g_created gauge\ng_created 5\n";
        let src = Source {
            identity: None,
            body: a.as_bytes(),
            format: Format::Text,
        };
        let (s, st) = run(&[src], Format::OpenMetrics);
        assert_eq!(
            s,
            "# TYPE c counter\n# HELP c C.\nc_total{x=\"1\"} 1\nc_created{x=\"1\"} 1.7e9\n\
             # TYPE g_created gauge\ng_created 5\n# EOF\n"
        );
        assert_eq!(st.family_conflicts, 0);
    }

    #[test]
    fn fuzz_regressions() {
        // Text allows le="+INF"; OpenMetrics only "+Inf": the family must not keep its type.
        let src = Source {
            identity: None,
            body: b"# TYPE a histogram\na_bucket{le=\"+INF\"} 0\n",
            format: Format::Text,
        };
        let (s, _) = run(&[src], Format::OpenMetrics);
        assert!(s.contains("# TYPE a_bucket unknown"), "{s}");
        // The same series first as an untyped family, then inside a histogram: the histogram
        // keeps all its buckets (the untyped family clashes with it and is dropped).
        let body = "foo_bucket{le=\"+Inf\"} 1\n# TYPE foo histogram\nfoo_bucket{le=\"1\"} 1\nfoo_bucket{le=\"+Inf\"} 1\n";
        for out in [Format::Text, Format::OpenMetrics] {
            let src = Source {
                identity: None,
                body: body.as_bytes(),
                format: Format::Text,
            };
            let (s, st) = run(&[src], out);
            assert_eq!(st.family_conflicts, 1);
            assert!(s.contains("foo_bucket{le=\"+Inf\"} 1\n"), "{s}");
        }
    }

    #[test]
    fn two_families_of_one_body_in_one_output_family_are_deduplicated() {
        // Untyped `h_bucket` and a histogram `h` without `+Inf`: both OpenMetrics `unknown`
        // `h_bucket`, with the same series; it must be written once.
        let body = "h_bucket{le=\"1\"} 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\n";
        for identity in [None, id("p1")] {
            let src = Source {
                identity,
                body: body.as_bytes(),
                format: Format::Text,
            };
            let (s, st) = run(&[src], Format::OpenMetrics);
            assert_eq!(st.duplicate_series, 1, "{s}");
            assert!(s.contains("} 1\n") && !s.contains("} 2\n"), "{s}");
        }
    }

    #[test]
    fn rejected_sources_contribute_nothing() {
        let (s, st) = run(
            &[text("p1", "a 1\n"), text("p2", "b{ 1\n"), om("p3", "c 1\n")],
            Format::Text,
        );
        assert_eq!(s, "# TYPE a untyped\na{namespace=\"ns\",pod=\"p1\",container=\"c\",endpoint=\"metrics\"} 1\n");
        let idx: Vec<_> = st.rejected.iter().map(|r| r.0).collect();
        assert_eq!(idx, [1, 2]);
    }

    #[test]
    fn odd_escapes_are_normalised() {
        let a = "a{x=\"b\\\\a\\z\"} 1\n# EOF\n";
        let (s, _) = run(&[om("p", a)], Format::Text);
        assert!(s.contains("x=\"b\\\\a\\\\z\""), "{s}");
    }

    #[test]
    fn prepared_merge_equals_merge() {
        let a = "# TYPE a counter\na_total{pod=\"x\"} 1 # {t=\"1\"} 1\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n# EOF\n";
        let b = "# HELP a_total A.\n# TYPE a_total counter\na_total{ q = \"1\" } 2 5\n";
        let srcs = [om("p1", a), text("p2", b)];
        let preps: Vec<_> = srcs
            .iter()
            .map(|s| super::super::prepare(s.body, s.format).unwrap())
            .collect();
        let psrcs: Vec<_> = srcs
            .iter()
            .zip(&preps)
            .map(|(s, p)| PreparedSource::new(s.identity, s.body, p))
            .collect();
        for out in [Format::Text, Format::OpenMetrics] {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            assert_eq!(
                merge(&srcs, out, &mut x),
                merge_prepared(&psrcs, out, &mut y)
            );
            assert_eq!(x, y);
        }
        // An index that does not fit its body: the body is parsed again.
        let wrong = PreparedSource::new(None, b"# TYPE z gauge\nz 1\n", &preps[1]);
        let mut z = Vec::new();
        merge_prepared(&[wrong], Format::Text, &mut z);
        assert_eq!(z, b"# TYPE z gauge\nz 1\n");
        // Another body of the same length is a caller's bug; it must still not panic.
        for fill in [b' ', b'{', b'"', b'\n', 0xff] {
            let other = vec![fill; b.len()];
            let bad = PreparedSource::new(srcs[1].identity, &other, &preps[1]);
            for out in [Format::Text, Format::OpenMetrics] {
                merge_prepared(&[bad], out, &mut Vec::new());
            }
        }
    }

    #[test]
    fn millis() {
        for (i, o) in [
            ("1234567", "1234.567"),
            ("5", "0.005"),
            ("-42", "-0.042"),
            ("1000", "1.000"),
        ] {
            let mut b = Vec::new();
            millis_to_seconds(i.as_bytes(), &mut b);
            assert_eq!(b, o.as_bytes());
        }
    }
}

//! The plan: rules 3, 4 and 5 across sources, decided in one place from the sources' rendered
//! family summaries (names, types, HELP, UNIT; no sample is looked at). For every output
//! family, in output order: its TYPE, HELP and UNIT, which source contributes which block, the
//! families dropped for a clash of sample names, and whether its series must be compared across
//! sources (the writer's slow path) or the blocks can be copied as they are.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::super::parse::{IdHasher, MType, Suffix};
use super::super::Format;
use super::convert::help_eq;
use super::render::Rendered;

/// What the merge writes, and what it dropped.
pub(super) struct Plan<'a> {
    /// Sorted by name.
    pub(super) families: Vec<FamilyPlan<'a>>,
    /// Every family's sources, in source order; `FamilyPlan::members` ranges over it.
    pub(super) members: Vec<Member>,
    /// Sources whose family was dropped or whose HELP or UNIT disagreed (rules 3 and 4).
    pub(super) conflicts: u64,
    /// Bytes of the blocks to be written, and an upper bound of the headers'.
    pub(super) block_bytes: usize,
    pub(super) header_bytes: usize,
}

/// What was decided for one output family.
pub(super) struct FamilyPlan<'a> {
    pub(super) name: &'a [u8],
    pub(super) mtype: MType,
    /// Raw, in the format it was read from.
    pub(super) help: Option<(&'a [u8], Format)>,
    pub(super) unit: Option<&'a [u8]>,
    /// Range into `Plan::members`.
    pub(super) members: (u32, u32),
    /// Its sample names clash with a family kept before it (rule 3): not written.
    pub(super) dropped: bool,
    /// Its series may meet across sources (rule 5): the writer compares them instead of copying
    /// the blocks.
    pub(super) compare_series: bool,
    /// Index (among the renderings) of the family's first source.
    first_source: u32,
    /// Source families kept after TYPE conflicts (what a clash drops).
    kept: u64,
    /// Sources kept after TYPE conflicts: a clash keeps the family more sources have.
    sources: u32,
}

/// One source's part of an output family.
#[derive(Clone, Copy)]
pub(super) struct Member {
    /// Index into the renderings.
    pub(super) source: u32,
    /// The block of the family's type (index into the rendering's blocks), if the source has
    /// one (rule 3).
    pub(super) block: Option<u32>,
    /// OpenMetrics wants each histogram or summary whole and in one piece, which keeping the
    /// first of each series could break when two sources share an identity: a later source's
    /// block then counts as duplicates whole (rule 5).
    pub(super) duplicate_whole: bool,
}

/// A family name with its hash computed at ingest.
struct NameKey<'a> {
    hash: u64,
    name: &'a [u8],
}

impl Hash for NameKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash);
    }
}

impl PartialEq for NameKey<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.hash == o.hash && self.name == o.name
    }
}

impl Eq for NameKey<'_> {}

/// Plans the merge of `rs` (renderings for format `out`, in source order).
pub(super) fn plan<'a>(rs: &[&'a Rendered], out: Format) -> Plan<'a> {
    let shared = shared_identities(rs);
    let (names, first_source, starts, members) = union_of_families(rs);
    let mut order: Vec<u32> = (0..names.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| names[a as usize].cmp(names[b as usize]));
    let mut plan = Plan {
        families: Vec::with_capacity(order.len()),
        members,
        conflicts: 0,
        block_bytes: 0,
        header_bytes: 8,
    };
    let (mut scratch, mut scratch2) = (Vec::new(), Vec::new());
    for &g in &order {
        let range = (starts[g as usize], starts[g as usize + 1]);
        let mut family = plan.family(rs, range, &mut scratch, &mut scratch2);
        family.name = names[g as usize];
        family.first_source = first_source[g as usize];
        family.compare_series = compare_series(rs, &shared, &plan.members, &family);
        if family.compare_series {
            mark_whole_duplicates(rs, &mut plan.members, &family, out);
        }
        plan.header_bytes += 3 * family.name.len()
            + 2 * family.help.map_or(0, |h| h.0.len())
            + family.unit.map_or(0, <[u8]>::len)
            + 48;
        plan.families.push(family);
    }
    plan.conflicts += drop_clashes(&mut plan.families, out);
    plan
}

/// Per source: whether another source has the same identity (their series may be the same).
fn shared_identities(rs: &[&Rendered]) -> Vec<bool> {
    let mut shared = vec![false; rs.len()];
    let mut first: HashMap<u64, usize, BuildHasherDefault<IdHasher>> =
        HashMap::with_capacity_and_hasher(rs.len(), Default::default());
    let mut collided = false;
    for (i, r) in rs.iter().enumerate() {
        match first.get(&r.identity_hash) {
            Some(&j) if r.labels() == rs[j].labels() => {
                shared[i] = true;
                shared[j] = true;
            }
            Some(_) => collided = true,
            None => {
                first.insert(r.identity_hash, i);
            }
        }
    }
    if collided {
        // Two identities with one hash: compare them all (rare, and only slower).
        for i in 0..rs.len() {
            for j in i + 1..rs.len() {
                if rs[i].labels() == rs[j].labels() {
                    shared[i] = true;
                    shared[j] = true;
                }
            }
        }
    }
    shared
}

type Union<'a> = (Vec<&'a [u8]>, Vec<u32>, Vec<u32>, Vec<Member>);

/// The output families: the union of the sources' names (in order of first appearance), each
/// one's first source, and its members in source order (`members[starts[g]..starts[g + 1]]`).
fn union_of_families<'a>(rs: &[&'a Rendered]) -> Union<'a> {
    let mut ids: HashMap<NameKey<'_>, u32, BuildHasherDefault<IdHasher>> = HashMap::default();
    let mut names: Vec<&[u8]> = Vec::new();
    let mut first_source: Vec<u32> = Vec::new();
    let mut tagged: Vec<(u32, u32, u32)> = Vec::new(); // (family, source, source's family)
    for (si, r) in rs.iter().enumerate() {
        for (fi, f) in r.families.iter().enumerate() {
            let name = r.slice(f.name);
            let next = names.len() as u32;
            let g = *ids.entry(NameKey { hash: f.hash, name }).or_insert(next);
            if g == next {
                names.push(name);
                first_source.push(si as u32);
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
    let none = Member {
        source: 0,
        block: None,
        duplicate_whole: false,
    };
    let mut members = vec![none; tagged.len()];
    for &(g, si, fi) in &tagged {
        // Until the plan picks the block of the family's type, `block` holds the source's
        // family index.
        members[fill[g as usize] as usize] = Member {
            source: si,
            block: Some(fi),
            duplicate_whole: false,
        };
        fill[g as usize] += 1;
    }
    (names, first_source, starts, members)
}

impl<'a> Plan<'a> {
    /// Rules 3 and 4 for one family: the type most sources declare wins (a tie: the earliest
    /// source's among the tied), sources of another type contribute nothing; the first HELP and
    /// UNIT win.
    fn family(
        &mut self,
        rs: &[&'a Rendered],
        (a, z): (u32, u32),
        scratch: &mut Vec<u8>,
        scratch2: &mut Vec<u8>,
    ) -> FamilyPlan<'a> {
        let mtype = self.winning_type(rs, (a, z));
        let mut help: Option<(u32, &[u8], Format)> = None;
        let mut unit: Option<&[u8]> = None;
        let mut kept = 0u64;
        for m in &mut self.members[a as usize..z as usize] {
            let r = rs[m.source as usize];
            let f = &r.families[m.block.unwrap_or(0) as usize];
            m.block = None;
            for b in f.blocks.0..f.blocks.1 {
                let block = &r.blocks[b as usize];
                let n = u64::from(block.metas.1 - block.metas.0);
                if block.mtype != mtype {
                    self.conflicts += n;
                    continue;
                }
                m.block = Some(b);
                kept += n;
                self.block_bytes += (block.lines.1 - block.lines.0) as usize;
                for meta in &r.metas[block.metas.0 as usize..block.metas.1 as usize] {
                    let mut conflict = false;
                    if let Some(h) = meta.help.map(|h| r.slice(h)) {
                        match help {
                            None => help = Some((m.source, h, r.help_from)),
                            Some((hs, h0, fmt0)) => {
                                conflict |= hs != m.source
                                    && !help_eq(h0, fmt0, h, r.help_from, scratch, scratch2);
                            }
                        }
                    }
                    if let Some(u) = meta.unit.map(|u| r.slice(u)) {
                        match unit {
                            None => unit = Some(u),
                            Some(u0) => conflict |= u0 != u,
                        }
                    }
                    self.conflicts += u64::from(conflict);
                }
            }
        }
        let sources = self.members[a as usize..z as usize]
            .iter()
            .filter(|m| m.block.is_some())
            .count() as u32;
        FamilyPlan {
            name: &[],
            mtype,
            help: help.map(|(_, h, f)| (h, f)),
            unit,
            members: (a, z),
            dropped: false,
            compare_series: false,
            first_source: 0,
            kept,
            sources,
        }
    }
}

impl Plan<'_> {
    /// Rule 3's vote: each member's first block's type; the most votes win, a tie goes to the
    /// type that appeared first.
    fn winning_type(&self, rs: &[&Rendered], (a, z): (u32, u32)) -> MType {
        // (type, votes) in order of first appearance; at most one entry per type, and this runs
        // for every family of every scrape: no allocation.
        let mut votes = [(MType::Unknown, 0u32); MType::COUNT];
        let mut kinds = 0;
        for m in &self.members[a as usize..z as usize] {
            let r = rs[m.source as usize];
            let f = &r.families[m.block.unwrap_or(0) as usize];
            let t = r.blocks[f.blocks.0 as usize].mtype;
            match votes[..kinds].iter_mut().find(|(v, _)| *v == t) {
                Some((_, n)) => *n += 1,
                None => {
                    votes[kinds] = (t, 1);
                    kinds += 1;
                }
            }
        }
        let mut best = votes[0];
        for &(t, n) in &votes[1..kinds] {
            if n > best.1 {
                best = (t, n);
            }
        }
        best.0
    }
}

/// Rule 5 across sources: whether a family's series must be compared across its sources. Series
/// of sources whose identities differ in a label both set never meet, unless app labels named
/// like identity labels are renamed (a `cross` block) into another source's identity; a source
/// whose identity another source shares has its series compared in every family.
fn compare_series(
    rs: &[&Rendered],
    shared: &[bool],
    members: &[Member],
    family: &FamilyPlan<'_>,
) -> bool {
    let kept = || {
        members[family.members.0 as usize..family.members.1 as usize]
            .iter()
            .filter_map(|m| {
                let r = rs[m.source as usize];
                let b = m.block?;
                Some((r, &r.blocks[b as usize], shared[m.source as usize]))
            })
    };
    let (mut cross, mut maybe_more, mut all_full, mut n) = (false, false, true, 0);
    for (r, block, shared) in kept() {
        if shared {
            return true;
        }
        cross |= block.cross;
        maybe_more |= block.maybe_more_dups;
        all_full &= r.full_identity();
        n += 1;
    }
    if !cross {
        return false;
    }
    if maybe_more {
        return true;
    }
    if n < 2 || all_full {
        return false;
    }
    let kept: Vec<&Rendered> = kept().map(|k| k.0).collect();
    kept.iter()
        .enumerate()
        .any(|(x, a)| kept[x + 1..].iter().any(|b| compatible(a, b)))
}

/// Whether the series of two sources could be the same: no identity label is set, differently,
/// in both.
fn compatible(a: &Rendered, b: &Rendered) -> bool {
    a.labels()
        .iter()
        .zip(b.labels())
        .all(|(x, y)| x.is_empty() || y.is_empty() || *x == y)
}

/// In OpenMetrics, a histogram's or summary's block from a source with the identity of an
/// earlier source of the family counts as duplicates whole (see `Member::duplicate_whole`).
fn mark_whole_duplicates(
    rs: &[&Rendered],
    members: &mut [Member],
    family: &FamilyPlan<'_>,
    out: Format,
) {
    let grouped = out == Format::OpenMetrics
        && matches!(
            family.mtype,
            MType::Histogram | MType::GaugeHistogram | MType::Summary
        );
    if !grouped {
        return;
    }
    let (a, z) = (family.members.0 as usize, family.members.1 as usize);
    let mut seen: HashSet<[&str; 6]> = HashSet::new();
    for m in &mut members[a..z] {
        if m.block.is_none() {
            continue;
        }
        let labels = rs[m.source as usize].labels();
        m.duplicate_whole = !seen.insert(labels);
    }
}

/// Sample-name clashes between families (rule 3): of two families that own a sample name, the
/// one whose first source comes first (then the smaller name) is kept; the other is dropped and
/// each of its kept source families counts as a conflict. Returns that count.
fn drop_clashes(families: &mut [FamilyPlan<'_>], out: Format) -> u64 {
    // The family more sources have first, then the one whose first source comes first (then,
    // the sort being stable, the smaller name).
    let mut by_source: Vec<usize> = (0..families.len()).collect();
    by_source.sort_by_key(|&p| {
        (
            std::cmp::Reverse(families[p].sources),
            families[p].first_source,
        )
    });
    let mut claimed: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut owned: Vec<Vec<u8>> = Vec::new();
    let mut conflicts = 0;
    for &p in &by_source {
        owned.clear();
        owned.push(families[p].name.to_vec());
        for s in families[p].mtype.suffixes(out) {
            if *s != Suffix::Bare {
                let mut n = families[p].name.to_vec();
                n.extend_from_slice(s.text());
                owned.push(n);
            }
        }
        if owned
            .iter()
            .any(|n| claimed.get(n).is_some_and(|&o| o != p))
        {
            families[p].dropped = true;
            conflicts += families[p].kept;
            continue;
        }
        for n in owned.drain(..) {
            claimed.insert(n, p);
        }
    }
    conflicts
}

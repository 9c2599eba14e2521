//! Sample lines: one source's samples of one output family written in the output format, the
//! identity labels spliced in (rule 2), app labels named like identity labels renamed
//! `exported_*`, and the duplicates within the source left out (rule 5). Only lines that need it
//! (identity-named app labels, text-only spellings, format conversion of timestamps and
//! exemplars) take the slower path that re-lexes the line.

use super::super::lex::{self, lex_labels, name_hash, pair_hash, BlockInfo, Escaped, Label};
use super::super::parse::{Parsed, SampleRef, DUP, HAS_LABELS, IDENT_LABEL, SLOW};
use super::super::{Format, IdentityLabels, IDENTITY_NAMES};
use super::convert::{rest, Contribution};
use super::dedup::first_of_each_series;

/// The labels Prometheus gives a target: an app's own are kept as `exported_*` (what
/// `honor_labels: false` would do), so that they never override the scrape's.
pub(crate) const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// A body that parsed, with its identity labels pre-rendered.
pub(super) struct ParsedSource<'a> {
    pub(super) parsed: Parsed<'a>,
    /// `namespace="..",pod=".."` (non-empty identity labels, escaped), spliced into every sample.
    pub(super) prefix: Vec<u8>,
    /// Non-empty identity labels: name and escaped value.
    pub(super) ident: Vec<(String, Vec<u8>)>,
    /// An app's body (it has an identity): its `job` and `instance` are renamed (rule 2).
    pub(super) app: bool,
    ident_hash: u64,
    /// `prefix` followed by `,`, and `{prefix}` (empty without identity).
    prefix_comma: Vec<u8>,
    prefix_braced: Vec<u8>,
}

impl<'a> ParsedSource<'a> {
    /// The identity prefix is encoded here, once per source, never per sample.
    pub(super) fn new(mut parsed: Parsed<'a>, identity: Option<IdentityLabels<'_>>) -> Self {
        let mut prefix = Vec::new();
        let mut ident = Vec::new();
        let mut ident_hash = 0u64;
        for (name, value) in identity.iter().flat_map(IdentityLabels::labels) {
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
            ident.push((name.to_string(), v));
        }
        mark_pod_label_names(&mut parsed, &ident);
        ParsedSource {
            parsed,
            app: identity.is_some(),
            ident,
            ident_hash,
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

/// Marks the samples that may have an app label named like one of the pod's copied labels as
/// [`IDENT_LABEL`] (the parser, which knows no identity, marks the fixed names only), so that
/// they take the path that renames it (rule 2). A label block holding the name anywhere is
/// marked: a false match (inside a value) only costs that line the slower path. The index is
/// copied only when some sample is marked.
fn mark_pod_label_names(parsed: &mut Parsed<'_>, ident: &[(String, Vec<u8>)]) {
    let finders: Vec<memchr::memmem::Finder<'_>> = ident
        .iter()
        .filter(|(n, _)| !IDENTITY_NAMES.contains(&n.as_str()))
        .map(|(n, _)| memchr::memmem::Finder::new(n.as_bytes()))
        .collect();
    if finders.is_empty() {
        return;
    }
    let b = parsed.body;
    for i in 0..parsed.samples.len() {
        let sm = &parsed.samples[i];
        if sm.flags & HAS_LABELS == 0 || sm.flags & IDENT_LABEL != 0 {
            continue;
        }
        let block = &b[sm.name_end as usize..sm.labels_end as usize];
        if finders.iter().any(|f| f.find(block).is_some()) {
            let family = sm.family as usize;
            parsed.samples.to_mut()[i].flags |= IDENT_LABEL;
            if let Some(f) = parsed.families.get_mut(family) {
                f.ident_labels = true;
            }
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

/// Writes sample lines in one output format; keeps its scratch buffers between families.
pub(super) struct LineWriter {
    out: Format,
    /// Samples of the current family in output order: sample indices.
    items: Vec<u32>,
    /// (series hash, item index), sorted to find duplicates.
    keys: Vec<(u64, u32)>,
    dup: Vec<bool>,
    labels: Vec<Label>,
    labels2: Vec<Label>,
    /// Samples left out as duplicates so far.
    pub(super) duplicates: u64,
}

impl LineWriter {
    pub(super) fn new(out: Format) -> LineWriter {
        LineWriter {
            out,
            items: Vec::new(),
            keys: Vec::new(),
            dup: Vec::new(),
            labels: Vec::new(),
            labels2: Vec::new(),
            duplicates: 0,
        }
    }

    /// Whether the series of an output family's samples may collide beyond the parser's marks
    /// (which only cover one source family), so that duplicates must be found by comparing
    /// series: app labels get renamed, or two families of the source meet in this output
    /// family (a text untyped `h_bucket` and a histogram `h` that both become OpenMetrics
    /// `unknown` `h_bucket`).
    pub(super) fn cross(s: &ParsedSource<'_>, parts: &[Contribution<'_>]) -> bool {
        let mut kept = parts.iter().filter(|c| !c.dropped);
        let first = kept.next();
        let second = kept.next();
        second.is_some()
            || first.is_some_and(|c| {
                !s.ident.is_empty() && s.parsed.families[c.fam as usize].ident_labels
            })
    }

    /// Writes the samples of one output family's (not dropped) contributions, without
    /// duplicates.
    pub(super) fn samples(
        &mut self,
        s: &ParsedSource<'_>,
        parts: &[Contribution<'_>],
        buf: &mut Vec<u8>,
    ) {
        // Duplicates inside a source family were marked by the parser; beyond them series can
        // only collide when app labels were renamed or source families meet.
        if !Self::cross(s, parts) {
            for c in parts.iter().filter(|c| !c.dropped) {
                let (lo, hi) = s.parsed.families[c.fam as usize].samples;
                for sample in &s.parsed.samples[lo as usize..hi as usize] {
                    if c.filter & sample.suffix.bit() == 0 {
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
        for c in parts.iter().filter(|c| !c.dropped) {
            let (lo, hi) = s.parsed.families[c.fam as usize].samples;
            for si in lo..hi {
                let sample = &s.parsed.samples[si as usize];
                if c.filter & sample.suffix.bit() == 0 {
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
                self.items.push(si);
            }
        }
        let mut keys = std::mem::take(&mut self.keys);
        let mut dup = std::mem::take(&mut self.dup);
        let items = std::mem::take(&mut self.items);
        self.duplicates += first_of_each_series(&mut keys, &mut dup, |x, y| {
            self.same_series(s, items[x as usize], items[y as usize])
        });
        for (&si, _) in items.iter().zip(&dup).filter(|(_, &d)| !d) {
            let sample = s.parsed.samples[si as usize];
            self.sample(s, &sample, buf);
        }
        (self.keys, self.dup, self.items) = (keys, dup, items);
    }

    #[inline]
    pub(super) fn sample(&mut self, s: &ParsedSource<'_>, sm: &SampleRef, buf: &mut Vec<u8>) {
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
    fn final_labels(
        &mut self,
        s: &ParsedSource<'_>,
        sm: &SampleRef,
        out: &mut Vec<(usize, Label)>,
    ) {
        let b = s.parsed.body;
        self.relex(b, sm, s.parsed.format == Format::OpenMetrics);
        out.clear();
        let is_ident = |n: &[u8]| {
            s.ident.iter().any(|(k, _)| k.as_bytes() == n)
                || (s.app && TARGET_LABELS.iter().any(|t| t.as_bytes() == n))
        };
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

    fn final_hash(&mut self, s: &ParsedSource<'_>, sm: &SampleRef) -> u64 {
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

    fn sample_slow(&mut self, s: &ParsedSource<'_>, sm: &SampleRef, buf: &mut Vec<u8>) {
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
    fn series_key(&mut self, s: &ParsedSource<'_>, sm: &SampleRef) -> Vec<(Vec<u8>, Vec<u8>)> {
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

    fn same_series(&mut self, s: &ParsedSource<'_>, a: u32, b: u32) -> bool {
        let ma = s.parsed.samples[a as usize];
        let mb = s.parsed.samples[b as usize];
        let ka = self.series_key(s, &ma);
        std::mem::swap(&mut self.labels, &mut self.labels2);
        let kb = self.series_key(s, &mb);
        std::mem::swap(&mut self.labels, &mut self.labels2);
        ka == kb
    }
}

//! Series: what identifies a sample line (its name and label set, label order ignored), the
//! hashes the index keeps of it, repeats of a series within a body, and (OpenMetrics) the order
//! of one series' timestamps.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use super::index::{IdHasher, MType, SampleRef, DUP, HAS_LABELS, IDENT_LABEL};
use super::lex::{self, lex_labels, name_hash, pair_hash, to_f64, BlockInfo, Label};
use super::Rejection;

/// What a sample line's name and labels say about its series.
pub(super) struct SeriesKey<'a> {
    /// Name hash plus the order-independent hash of the label set (escapes as written).
    pub hash: u64,
    /// Hash of the labels but `le` and `quantile`: one histogram's or summary's metric.
    pub metric: u64,
    /// The raw `le` (histograms) or `quantile` (summaries) value.
    pub bound: Option<&'a [u8]>,
    /// [`HAS_LABELS`] and [`IDENT_LABEL`].
    pub flags: u8,
    /// A label is named after the family (what a stateset sample needs).
    pub names_family: bool,
}

impl<'a> SeriesKey<'a> {
    /// The key of sample `name` with `labels`, of a family `family` of type `mtype`.
    #[inline]
    pub(super) fn new(
        b: &'a [u8],
        name: &[u8],
        labels: &[Label],
        mtype: MType,
        family: &[u8],
    ) -> SeriesKey<'a> {
        let bound_name: &[u8] = match mtype {
            MType::Histogram | MType::GaugeHistogram => b"le",
            MType::Summary => b"quantile",
            _ => b"",
        };
        let mut key = SeriesKey {
            hash: 0,
            metric: 0,
            bound: None,
            flags: if labels.is_empty() { 0 } else { HAS_LABELS },
            names_family: false,
        };
        let mut bound_hash = 0;
        for l in labels {
            let n = l.name(b);
            let v = l.value(b);
            let h = pair_hash(n, v);
            if !bound_name.is_empty() && lex::bytes_eq(n, bound_name) {
                key.bound = Some(v);
                bound_hash = h;
            } else {
                key.metric = key.metric.wrapping_add(h);
            }
            if is_identity_name(n) {
                key.flags |= IDENT_LABEL;
            }
            if mtype == MType::StateSet && lex::bytes_eq(n, family) {
                key.names_family = true;
            }
        }
        key.hash = name_hash(name)
            .wrapping_add(key.metric)
            .wrapping_add(bound_hash);
        key
    }
}

/// Whether a label name is one of the identity labels.
#[inline]
fn is_identity_name(n: &[u8]) -> bool {
    match (n.len(), n.first()) {
        (9, Some(b'n')) => n == b"namespace",
        (3, Some(b'p')) => n == b"pod",
        (9, Some(b'c')) => n == b"container",
        (8, Some(b'e')) => n == b"endpoint",
        // Prometheus' target labels: an app's are renamed too (rule 2).
        (3, Some(b'j')) => n == b"job",
        (8, Some(b'i')) => n == b"instance",
        _ => false,
    }
}

type SeriesMap = HashMap<u64, u32, std::hash::BuildHasherDefault<IdHasher>>;

/// The series of a body seen so far.
pub(super) struct Series {
    /// Hash → the series' first sample.
    first: SeriesMap,
    /// The previous sample of the current family: its hash and timestamp.
    previous: Option<(u64, Option<(usize, usize)>)>,
}

impl Series {
    pub(super) fn with_capacity(n: usize) -> Series {
        Series {
            first: SeriesMap::with_capacity_and_hasher(n, Default::default()),
            previous: None,
        }
    }

    /// OpenMetrics: the samples of one series come in a row (the caller checks that); their
    /// timestamps, all present or all absent, never go backwards.
    pub(super) fn check_timestamp(
        &mut self,
        b: &[u8],
        hash: u64,
        timestamp: Option<(usize, usize)>,
        start: usize,
    ) -> Result<(), Rejection> {
        if let Some((previous_hash, previous)) = self.previous {
            if previous_hash == hash {
                match (previous, timestamp) {
                    (Some(p), Some(c)) => {
                        if to_f64(&b[c.0..c.1]) < to_f64(&b[p.0..p.1]) {
                            return Err((c.0, "timestamps of a series go backwards"));
                        }
                    }
                    (None, None) => {}
                    _ => {
                        return Err((
                            start,
                            "samples of a series mix lines with and without timestamps",
                        ))
                    }
                }
            }
        }
        self.previous = Some((hash, timestamp));
        Ok(())
    }

    pub(super) fn end_family(&mut self) {
        self.previous = None;
    }

    /// Marks `sample`, about to be added to `samples`, as a [`DUP`] if its series came earlier in
    /// the same family.
    #[inline]
    pub(super) fn mark_repeat(
        &mut self,
        b: &[u8],
        strict: bool,
        samples: &[SampleRef],
        sample: &mut SampleRef,
    ) {
        match self.first.entry(sample.hash) {
            Entry::Vacant(v) => {
                v.insert(samples.len() as u32);
            }
            Entry::Occupied(o) => {
                let first = &samples[*o.get() as usize];
                // A text body may repeat a series under two families (one is dropped by the
                // merge as a clash); only a repeat within the family is a duplicate.
                if first.family == sample.family && same_series(b, strict, first, sample) {
                    sample.flags |= DUP;
                }
            }
        }
    }
}

/// Whether two sample lines of one body are the same series: same name, same labels in any
/// order, values compared unescaped. Only called when their hashes are equal.
fn same_series(b: &[u8], strict: bool, x: &SampleRef, y: &SampleRef) -> bool {
    let name = |s: &SampleRef| &b[s.start as usize..s.name_end as usize];
    if name(x) != name(y) {
        return false;
    }
    series_labels(b, strict, x) == series_labels(b, strict, y)
}

/// The sorted, unescaped labels of a sample line (rare paths only: it allocates).
fn series_labels(b: &[u8], strict: bool, s: &SampleRef) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if s.flags & HAS_LABELS == 0 {
        return out;
    }
    let i = lex::skip_blanks(b, s.name_end as usize, s.end as usize);
    let mut labels = Vec::new();
    let mut info = BlockInfo::default();
    if lex_labels(&b[..s.end as usize], i, strict, &mut labels, &mut info).is_err() {
        return out;
    }
    for l in &labels {
        let mut v = Vec::new();
        super::escape::unescape(l.value(b), &mut v);
        out.push((l.name(b).to_vec(), v));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_ignores_label_order_and_keeps_the_bound_apart() {
        let b = br#"h_bucket{a="1",le="2"} h_bucket{le="3",a="1"}"#;
        let mut labels = Vec::new();
        let mut info = BlockInfo::default();
        lex_labels(b, 8, true, &mut labels, &mut info).unwrap();
        let x = SeriesKey::new(b, b"h_bucket", &labels, MType::Histogram, b"h");
        lex_labels(b, 31, true, &mut labels, &mut info).unwrap();
        let y = SeriesKey::new(b, b"h_bucket", &labels, MType::Histogram, b"h");
        assert_eq!(x.metric, y.metric);
        assert_ne!(x.hash, y.hash);
        assert_eq!((x.bound, y.bound), (Some(&b"2"[..]), Some(&b"3"[..])));
        assert_eq!(x.flags, HAS_LABELS);
    }

    #[test]
    fn timestamps_of_a_series_never_go_backwards() {
        let b = b"2 1";
        let mut s = Series::with_capacity(0);
        s.check_timestamp(b, 1, Some((0, 1)), 0).unwrap();
        assert!(s.check_timestamp(b, 1, Some((2, 3)), 0).is_err());
        assert!(s.check_timestamp(b, 1, None, 0).is_err());
        s.end_family();
        s.check_timestamp(b, 1, None, 0).unwrap();
    }
}

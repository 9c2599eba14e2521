//! The family validator: places each line a grammar read in its family and holds the body to
//! the rules about families. Metadata before a family's samples and once per family; families
//! not interleaved (OpenMetrics) or regrouped when they are (text); sample names owned by their
//! family's type (`a_total` by counter `a`, `h_bucket` by histogram `h`) and, in OpenMetrics,
//! clashing with no other family's; values of counters, infos and statesets; exemplars only on
//! counter totals and buckets; histogram and summary rules ([`super::histogram`]); series
//! ([`super::series`]). A text body is held to OpenMetrics' family rules too, where failing only
//! marks the family (`om_ok`) for the merge.

use std::borrow::Cow;
use std::collections::HashMap;

use super::histogram::HistogramRules;
use super::index::{Family, MType, Parsed, SampleRef, Suffix, IDENT_LABEL, SLOW};
use super::lex::{to_f64, Label};
use super::line::{Metadata, MetadataKind, SampleLine};
use super::series::{Series, SeriesKey};
use super::Rejection;
use crate::decode::Format;

pub(super) struct Validator<'a> {
    b: &'a [u8],
    format: Format,
    strict: bool,
    families: Vec<Family<'a>>,
    samples: Vec<SampleRef>,
    /// The family of the last line.
    current: Option<u32>,
    /// OpenMetrics: every family name and owned sample name seen so far, with its family.
    claimed: HashMap<Vec<u8>, u32>,
    /// Text: families by name.
    by_name: HashMap<&'a [u8], u32>,
    /// Text: a family's samples came in more than one run, so the samples must be regrouped.
    noncontiguous: bool,
    histograms: HistogramRules,
    series: Series,
}

impl<'a> Validator<'a> {
    pub(super) fn new(b: &'a [u8], format: Format) -> Validator<'a> {
        Validator {
            b,
            format,
            strict: format == Format::OpenMetrics,
            families: Vec::new(),
            samples: Vec::with_capacity(b.len() / 64),
            current: None,
            claimed: HashMap::new(),
            by_name: HashMap::new(),
            noncontiguous: false,
            histograms: HistogramRules::default(),
            series: Series::with_capacity(b.len() / 96),
        }
    }

    /// The current family's name, which most sample lines start with.
    #[inline]
    pub(super) fn current_name(&self) -> Option<&'a [u8]> {
        self.current.map(|c| self.families[c as usize].name)
    }

    /// Checks a HELP, TYPE or UNIT line and records it in its family.
    pub(super) fn metadata(&mut self, m: Metadata<'a>) -> Result<(), Rejection> {
        let line = m.line_start;
        let f = if self.strict {
            self.om_metadata_family(m.name, line)?
        } else {
            self.text_metadata_family(m.name, line)?
        };
        let family = &mut self.families[f as usize];
        match m.kind {
            MetadataKind::Help { text, bad_escape } => {
                if family.help.is_some() {
                    return Err((line, "second HELP line for this family"));
                }
                if let Some(at) = bad_escape {
                    return Err((at, "invalid escape sequence in HELP"));
                }
                family.help = Some(text);
            }
            MetadataKind::Type { mtype, at } => {
                if family.has_type {
                    return Err((line, "second TYPE line for this family"));
                }
                let t = mtype.ok_or((at, "unknown metric type"))?;
                if family.unit.is_some_and(|u| !u.is_empty())
                    && matches!(t, MType::Info | MType::StateSet)
                {
                    return Err((at, "info and stateset families cannot have a unit"));
                }
                family.has_type = true;
                family.mtype = t;
                if self.strict {
                    self.claim_sample_names(f, line)?;
                }
            }
            MetadataKind::Unit { unit, at, valid } => {
                if family.unit.is_some() {
                    return Err((line, "second UNIT line for this family"));
                }
                if !unit.is_empty() {
                    if !valid {
                        return Err((at, "invalid unit"));
                    }
                    let name = family.name;
                    let suffixed = name.len() > unit.len() + 1
                        && name.ends_with(unit)
                        && name[name.len() - unit.len() - 1] == b'_';
                    if !suffixed {
                        return Err((at, "metric name does not end with _<unit>"));
                    }
                    if matches!(family.mtype, MType::Info | MType::StateSet) {
                        return Err((at, "info and stateset families cannot have a unit"));
                    }
                }
                family.unit = Some(unit);
            }
        }
        Ok(())
    }

    /// OpenMetrics: the family a metadata line is about: the current one if the name matches
    /// (and it has no samples yet), else a new one.
    fn om_metadata_family(&mut self, name: &'a [u8], line: usize) -> Result<u32, Rejection> {
        if let Some(c) = self.current {
            let family = &self.families[c as usize];
            if family.name == name {
                if family.has_samples {
                    return Err((line, "metadata line after the family's samples"));
                }
                return Ok(c);
            }
        }
        self.new_family(name, line)
    }

    /// Text: the family a metadata line is about, which becomes the current one; it must have
    /// no samples yet.
    fn text_metadata_family(&mut self, name: &'a [u8], line: usize) -> Result<u32, Rejection> {
        let f = match self.by_name.get(name) {
            Some(&f) => f,
            None => self.new_family(name, line)?,
        };
        if Some(f) != self.current {
            self.close_family()?;
            self.current = Some(f);
        }
        if self.families[f as usize].has_samples {
            return Err((line, "HELP or TYPE line after the family's samples"));
        }
        Ok(f)
    }

    /// Ends the current family and opens family `name` as the current one.
    fn new_family(&mut self, name: &'a [u8], pos: usize) -> Result<u32, Rejection> {
        self.close_family()?;
        let f = self.families.len() as u32;
        if self.strict {
            if self.claimed.contains_key(name) {
                return Err((
                    pos,
                    "metric family appears twice or clashes with another family",
                ));
            }
            self.claimed.insert(name.to_vec(), f);
        } else {
            self.by_name.insert(name, f);
        }
        self.families.push(Family::new(name));
        self.current = Some(f);
        Ok(f)
    }

    /// OpenMetrics: family `f` now owns the sample names of its type; no other family may.
    fn claim_sample_names(&mut self, f: u32, pos: usize) -> Result<(), Rejection> {
        let family = &self.families[f as usize];
        for s in family.mtype.suffixes(Format::OpenMetrics) {
            let mut n = family.name.to_vec();
            n.extend_from_slice(s.text());
            match self.claimed.get(&n) {
                Some(&o) if o != f => {
                    return Err((pos, "metric family clashes with another family's samples"))
                }
                Some(_) => {}
                None => {
                    self.claimed.insert(n, f);
                }
            }
        }
        Ok(())
    }

    /// The family of sample name `name` (at `pos`), which becomes the current one, and the
    /// suffix the name has in it.
    #[inline]
    pub(super) fn sample_family(
        &mut self,
        name: &'a [u8],
        pos: usize,
    ) -> Result<(u32, Suffix), Rejection> {
        if let Some(c) = self.current {
            let family = &self.families[c as usize];
            let suffix = Suffix::of(family.name, name, family.mtype.suffixes(self.format));
            if let Some(s) = suffix {
                return Ok((c, s));
            }
        }
        if self.strict {
            return Ok((self.new_family(name, pos)?, Suffix::Bare));
        }
        self.text_sample_family(name, pos)
    }

    /// Text: a family declared with that exact name or a histogram/summary whose sample it is,
    /// else a new untyped family.
    fn text_sample_family(
        &mut self,
        name: &'a [u8],
        pos: usize,
    ) -> Result<(u32, Suffix), Rejection> {
        let found = match self.by_name.get(name) {
            Some(&f) => Some(f),
            None => [&b"_bucket"[..], b"_sum", b"_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(*suffix)?;
                    let &f = self.by_name.get(base)?;
                    let t = self.families[f as usize].mtype;
                    let owns =
                        t == MType::Histogram || (t == MType::Summary && *suffix != b"_bucket");
                    owns.then_some(f)
                }),
        };
        let f = match found {
            Some(f) => f,
            None => self.new_family(name, pos)?,
        };
        let family = &self.families[f as usize];
        let s = Suffix::of(family.name, name, family.mtype.suffixes(Format::Text))
            .ok_or((pos, "sample name not allowed for its family's type"))?;
        if Some(f) != self.current {
            self.close_family()?;
            self.current = Some(f);
            if self.families[f as usize].has_samples {
                self.noncontiguous = true;
                self.families[f as usize].om_ok = false;
            }
        }
        Ok((f, s))
    }

    /// Checks a sample line of family `f` and adds it to the index.
    #[inline]
    pub(super) fn sample(
        &mut self,
        f: u32,
        suffix: Suffix,
        line: &SampleLine,
        labels: &[Label],
    ) -> Result<(), Rejection> {
        let b = self.b;
        let family = &self.families[f as usize];
        let name = &b[line.start..line.name_end];
        let key = SeriesKey::new(b, name, labels, family.mtype, family.name);
        let value = &b[line.value.0..line.value.1];
        if let Err(reason) = self.check_values(f, suffix, value, line.exemplar, &key) {
            if self.strict {
                return Err((line.start, reason));
            }
            self.families[f as usize].om_ok = false;
        }
        if self.strict {
            self.series
                .check_timestamp(b, key.hash, line.timestamp, line.start)?;
        }
        let family = &mut self.families[f as usize];
        family.has_samples = true;
        family.suffixes |= suffix.bit();
        family.ident_labels |= key.flags & IDENT_LABEL != 0;
        let mut sample = SampleRef {
            start: line.start as u32,
            name_end: line.name_end as u32,
            labels_end: line.labels_end as u32,
            end: line.end as u32,
            family: f,
            hash: key.hash,
            suffix,
            flags: key.flags | if line.slow { SLOW } else { 0 },
        };
        self.series
            .mark_repeat(b, self.strict, &self.samples, &mut sample);
        self.samples.push(sample);
        Ok(())
    }

    /// OpenMetrics' per-sample rules (values, required labels, exemplar placement, histogram and
    /// summary metrics). For text bodies a failure only clears the family's `om_ok`.
    fn check_values(
        &mut self,
        f: u32,
        suffix: Suffix,
        value: &[u8],
        exemplar: bool,
        key: &SeriesKey<'_>,
    ) -> Result<(), &'static str> {
        let family = &self.families[f as usize];
        let mtype = family.mtype;
        let v = || to_f64(value);
        let counter_like = |x: f64| !x.is_nan() && x >= 0.0;
        let exemplar_ok = matches!(
            (mtype, suffix),
            (MType::Counter, Suffix::Total)
                | (MType::Histogram, Suffix::Bucket)
                | (MType::GaugeHistogram, Suffix::Bucket)
        );
        if exemplar && !exemplar_ok {
            return Err("exemplars are only allowed on counter totals and histogram buckets");
        }
        match mtype {
            MType::Counter => {
                let name = family.name;
                if !self.strict && (name.len() <= 6 || !name.ends_with(b"_total")) {
                    return Err("counter name without _total");
                }
                if suffix == Suffix::Total && !counter_like(v()) {
                    return Err("counter value is NaN or negative");
                }
            }
            MType::StateSet => {
                if !key.names_family {
                    return Err("stateset sample without a label named after its family");
                }
                let x = v();
                if x != 0.0 && x != 1.0 {
                    return Err("stateset value is not 0 or 1");
                }
            }
            MType::Info => {
                if v() != 1.0 {
                    return Err("info value is not 1");
                }
            }
            MType::Histogram | MType::GaugeHistogram | MType::Summary => {
                self.histograms
                    .sample(mtype, suffix, v(), key.bound, key.metric)?;
            }
            MType::Gauge | MType::Unknown => {}
        }
        Ok(())
    }

    /// Ends the current family: its last histogram must be complete.
    fn close_family(&mut self) -> Result<(), Rejection> {
        let Some(c) = self.current else {
            return Ok(());
        };
        let mtype = self.families[c as usize].mtype;
        let r = self.histograms.end_family(mtype);
        self.series.end_family();
        if let Err(reason) = r {
            if self.strict {
                let pos = self.samples.last().map_or(0, |s| s.start as usize);
                return Err((pos, reason));
            }
            self.families[c as usize].om_ok = false;
        }
        Ok(())
    }

    /// Ends the body: closes the last family and groups each family's samples together.
    pub(super) fn finish(mut self) -> Result<Parsed<'a>, Rejection> {
        self.close_family()?;
        if self.noncontiguous {
            self.samples.sort_by_key(|s| s.family);
        }
        let mut i = 0;
        while i < self.samples.len() {
            let f = self.samples[i].family;
            let mut j = i + 1;
            while j < self.samples.len() && self.samples[j].family == f {
                j += 1;
            }
            if let Some(family) = self.families.get_mut(f as usize) {
                family.samples = (i as u32, j as u32);
            }
            i = j;
        }
        Ok(Parsed {
            body: self.b,
            format: self.format,
            families: self.families,
            samples: Cow::Owned(self.samples),
        })
    }
}

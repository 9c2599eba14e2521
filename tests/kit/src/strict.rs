//! The strict exposition checker, for text 0.0.4 and OpenMetrics 1.0, written independently of
//! the agent's codec so that it can judge its output. Stricter than promtool and Prometheus,
//! which accept a split family and duplicated series. It rejects:
//! - a body not ending with a newline; in OpenMetrics one not ending with `# EOF`, or with
//!   `# EOF` elsewhere; an empty line;
//! - a comment other than `# HELP`, `# TYPE` and (OpenMetrics) `# UNIT`; a second HELP, TYPE or
//!   UNIT; metadata after the family's samples; an unknown type for the format;
//! - a family in two groups (split group); a sample name owned by two families (`h_sum` of
//!   histogram `h` declared as its own family; OpenMetrics counter `c` owns `c_total` and
//!   `c_created`);
//! - bad metric or label names, unquoted or unterminated label values, bad escapes, a label twice
//!   in a set, blanks inside the braces, a trailing comma (OpenMetrics), bad values, timestamps or
//!   exemplars (exemplars only in OpenMetrics), trailing fields;
//! - a histogram bucket without `le`; the same series twice (labels in any order).
//!
//! Every problem is reported with its line number. [`Exposition`] is what a checked body holds.

mod line;

use std::collections::{BTreeMap, HashMap, HashSet};

pub use line::{labels, parse_sample, same_value, series_key, Labels, Sample};

use crate::Format;

/// Metadata of one family as declared, and its sample count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Family {
    pub help: Option<String>,
    pub kind: Option<String>,
    pub unit: Option<String>,
    pub samples: usize,
}

/// A checked exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// Series identity -> value.
    pub fn series(&self) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .map(|s| (s.series_key(), s.value))
            .collect()
    }

    /// Series -> value of the samples carrying every label pair in `with`, with the labels named
    /// in `strip` removed (to compare a pod's part of loupe's output with the app's own body).
    pub fn series_where(&self, with: &[(&str, &str)], strip: &[&str]) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|s| with.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .map(|s| {
                let mut labels: Labels = s
                    .labels
                    .iter()
                    .filter(|(k, _)| !strip.contains(&k.as_str()))
                    .cloned()
                    .collect();
                labels.sort();
                (series_key(&s.name, &labels), s.value)
            })
            .collect()
    }

    /// Samples whose name is `name` and whose labels include every pair of `with`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }

    /// The value of the only sample matching, if exactly one does.
    pub fn value(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        let mut it = self.find(name, with);
        let first = it.next()?;
        it.next().is_none().then_some(first.value)
    }

    /// Every sample as (name, sorted labels, value and what follows as written): what two
    /// renderings of the same samples must agree on, timestamps and exemplars included.
    pub fn written(&self) -> Vec<(String, Labels, String)> {
        self.samples
            .iter()
            .map(|s| {
                let mut labels = s.labels.clone();
                labels.sort();
                (s.name.clone(), labels, s.rest.clone())
            })
            .collect()
    }
}

/// Checks `body` strictly as `format`; the parsed exposition, or every problem found (each with
/// its line number).
pub fn check(body: &str, format: Format) -> Result<Exposition, Vec<String>> {
    let mut c = Checker::new(format);
    let mut lines: Vec<&str> = body.split('\n').collect();
    // The element after the last newline: empty for a complete body.
    let tail = lines.pop().unwrap_or("");
    if !tail.is_empty() {
        c.errors
            .push("the last line does not end with a newline".into());
        lines.push(tail);
    }
    if format.is_om() {
        if lines.last() == Some(&"# EOF") {
            lines.pop();
        } else {
            c.errors
                .push("the OpenMetrics body does not end with # EOF".into());
        }
    }
    for (i, text) in lines.iter().enumerate() {
        c.line(i + 1, text);
    }
    if c.errors.is_empty() {
        Ok(c.exp)
    } else {
        Err(c.errors)
    }
}

/// The first differences between two series maps, for assertion messages (empty when equal).
pub fn diff(want: &BTreeMap<String, f64>, got: &BTreeMap<String, f64>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push(format!("missing {k}")),
            Some(g) if !same_value(*g, *v) => out.push(format!("{k}: want {v}, got {g}")),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        out.push(format!("unexpected {k}"));
    }
    out.truncate(10);
    out
}

const TEXT_TYPES: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];
const OM_TYPES: &[&str] = &[
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "summary",
    "info",
    "stateset",
    "unknown",
];

/// The sample names a family of type `kind` owns.
pub fn owned(name: &str, kind: &str, om: bool) -> Vec<String> {
    let suffixes: &[&str] = match (om, kind) {
        (true, "counter") => &["_total", "_created"],
        (true, "histogram") => &["_bucket", "_sum", "_count", "_created"],
        (true, "gaugehistogram") => &["_bucket", "_gsum", "_gcount"],
        (true, "summary") => &["", "_sum", "_count", "_created"],
        (true, "info") => &["_info"],
        (false, "histogram") => &["_bucket", "_sum", "_count"],
        (false, "summary") => &["", "_sum", "_count"],
        _ => &[""],
    };
    suffixes.iter().map(|s| format!("{name}{s}")).collect()
}

/// The current family's group.
struct Group {
    name: String,
    kind: Option<String>,
    has_samples: bool,
    meta_seen: HashSet<&'static str>,
}

struct Checker {
    om: bool,
    errors: Vec<String>,
    exp: Exposition,
    current: Option<Group>,
    /// Families whose group has ended: seeing them again means the family is split.
    closed: HashSet<String>,
    /// Sample name -> the family owning it.
    owner: HashMap<String, String>,
    /// Series identity -> the line it was first seen on.
    series: HashMap<String, usize>,
}

impl Checker {
    fn new(format: Format) -> Checker {
        Checker {
            om: format.is_om(),
            errors: Vec::new(),
            exp: Exposition::default(),
            current: None,
            closed: HashSet::new(),
            owner: HashMap::new(),
            series: HashMap::new(),
        }
    }

    fn line(&mut self, n: usize, text: &str) {
        let result = if text.is_empty() {
            Err("empty line".to_string())
        } else if text.starts_with('#') {
            self.metadata(text)
        } else {
            self.sample(n, text)
        };
        if let Err(e) = result {
            self.errors.push(format!("line {n}: {e}: {text:?}"));
        }
    }

    fn metadata(&mut self, text: &str) -> Result<(), String> {
        if text == "# EOF" {
            return Err(if self.om {
                "# EOF before the end".into()
            } else {
                "# EOF in a text body".into()
            });
        }
        let mut it = text.splitn(4, ' ');
        let (hash, keyword) = (it.next(), it.next().unwrap_or(""));
        let keyword: &'static str = match keyword {
            "HELP" => "HELP",
            "TYPE" => "TYPE",
            "UNIT" if self.om => "UNIT",
            _ => return Err("unexpected comment".into()),
        };
        if hash != Some("#") {
            return Err("unexpected comment".into());
        }
        let name = it.next().ok_or(format!("{keyword} without a name"))?;
        let arg = it.next().unwrap_or("");
        if !line::valid_metric_name(name) {
            return Err(format!("bad metric name {name:?} in {keyword}"));
        }
        if self.current.as_ref().map(|g| g.name.as_str()) != Some(name) {
            self.start(name, None)?;
        }
        let group = self.current.as_mut().ok_or("no family")?;
        if group.has_samples {
            return Err(format!("{keyword} for {name} after its samples"));
        }
        if !group.meta_seen.insert(keyword) {
            return Err(format!("second {keyword} for {name}"));
        }
        let fam = self.exp.families.entry(name.to_string()).or_default();
        match keyword {
            "HELP" => fam.help = Some(arg.to_string()),
            "UNIT" => fam.unit = Some(arg.to_string()),
            _ => {
                fam.kind = Some(arg.to_string());
                group.kind = Some(arg.to_string());
                let valid = if self.om { OM_TYPES } else { TEXT_TYPES };
                if !valid.contains(&arg) {
                    return Err(format!("unknown type {arg:?} for {name}"));
                }
                self.own(name, arg)?;
            }
        }
        Ok(())
    }

    /// Registers the sample names `family` owns as a `kind`; a name already owned by another
    /// family is a clash.
    fn own(&mut self, family: &str, kind: &str) -> Result<(), String> {
        let names = owned(family, kind, self.om);
        for n in names.into_iter().chain([family.to_string()]) {
            if let Some(o) = self.owner.get(&n) {
                if o != family {
                    return Err(format!("sample name {n} of {family} is owned by {o}"));
                }
            }
            self.owner.insert(n, family.to_string());
        }
        Ok(())
    }

    /// Opens the group of `family`, closing the current one.
    fn start(&mut self, family: &str, kind: Option<&str>) -> Result<(), String> {
        if let Some(g) = self.current.take() {
            self.closed.insert(g.name);
        }
        self.current = Some(Group {
            name: family.to_string(),
            kind: kind.map(str::to_string),
            has_samples: false,
            meta_seen: HashSet::new(),
        });
        if self.closed.contains(family) {
            return Err(format!(
                "family {family} appears again after other families (split group)"
            ));
        }
        let default = if self.om { "unknown" } else { "untyped" };
        self.own(family, kind.unwrap_or(default))
    }

    fn sample(&mut self, n: usize, text: &str) -> Result<(), String> {
        let sample = parse_sample(text, Format::from_om(self.om))?;
        let om = self.om;
        let belongs = self.current.as_ref().is_some_and(|g| {
            let kind = g.kind.as_deref().unwrap_or("unknown");
            owned(&g.name, kind, om).contains(&sample.name)
        });
        if !belongs {
            self.start(&sample.name, None)?;
        }
        let group = self.current.as_mut().ok_or("no family")?;
        group.has_samples = true;
        let histogram = matches!(group.kind.as_deref(), Some("histogram" | "gaugehistogram"));
        self.exp
            .families
            .entry(group.name.clone())
            .or_default()
            .samples += 1;
        let key = sample.series_key();
        let bucket_without_le =
            histogram && sample.name.ends_with("_bucket") && sample.label("le").is_none();
        let first = self.series.insert(key.clone(), n);
        self.exp.samples.push(sample);
        if bucket_without_le {
            return Err("histogram bucket without le".into());
        }
        match first {
            Some(first) => Err(format!("duplicated series {key} (first at line {first})")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;

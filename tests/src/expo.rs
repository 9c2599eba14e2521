//! An oracle for Prometheus text format 0.0.4, independent of the agent's codec: a strict
//! well-formedness checker (stricter than promtool and Prometheus, which accept a split family
//! and duplicated series), a parser into series -> value maps, and a `promtool check metrics` call.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};

use crate::{io_err, Error, Result};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp: Option<i64>,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name{a="1",b="2"}` with labels sorted: the identity of the series.
    pub fn series_key(&self) -> String {
        let mut labels = self.labels.clone();
        labels.sort();
        series_key(&self.name, &labels)
    }
}

/// Canonical series identity for already sorted labels.
pub fn series_key(name: &str, sorted_labels: &[(String, String)]) -> String {
    let body: Vec<String> = sorted_labels
        .iter()
        .map(|(k, v)| format!("{k}={}", escape(v)))
        .collect();
    format!("{name}{{{}}}", body.join(","))
}

fn escape(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Metadata of one family as declared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Family {
    pub help: Option<String>,
    pub kind: Option<String>,
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
                let mut labels: Vec<(String, String)> = s
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
}

const HIST_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];
const SUMMARY_SUFFIXES: &[&str] = &["_sum", "_count"];

/// Parses and checks `text` strictly. Every problem found is reported with its line number.
pub fn check_strict(text: &str) -> std::result::Result<Exposition, Vec<String>> {
    let mut errors = Vec::new();
    let mut exp = Exposition::default();
    if !text.is_empty() && !text.ends_with('\n') {
        errors.push("the last line does not end with a newline".to_string());
    }
    // Families whose group has ended: seeing them again means the family is split.
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen_series: HashMap<String, usize> = HashMap::new();
    let mut kinds: HashMap<String, String> = HashMap::new();

    let mut enter =
        |family: &str, lineno: usize, current: &mut Option<String>, errors: &mut Vec<String>| {
            if current.as_deref() == Some(family) {
                return;
            }
            if let Some(prev) = current.take() {
                closed.insert(prev);
            }
            if closed.contains(family) {
                errors.push(format!(
                "line {lineno}: family {family} appears again after other families (split group)"
            ));
            }
            *current = Some(family.to_string());
        };

    for (i, line) in text.split('\n').enumerate() {
        let lineno = i + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start_matches(' ');
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a plain comment
            }
            let name = parts.next().unwrap_or("");
            let arg = parts.next().unwrap_or("");
            if !valid_metric_name(name) {
                errors.push(format!(
                    "line {lineno}: bad metric name {name:?} in {keyword}"
                ));
                continue;
            }
            enter(name, lineno, &mut current, &mut errors);
            let fam = exp.families.entry(name.to_string()).or_default();
            if keyword == "HELP" {
                if fam.help.is_some() {
                    errors.push(format!("line {lineno}: second HELP for {name}"));
                }
                fam.help = Some(arg.to_string());
            } else {
                if fam.kind.is_some() {
                    errors.push(format!("line {lineno}: second TYPE for {name}"));
                }
                if fam.samples > 0 {
                    errors.push(format!("line {lineno}: TYPE for {name} after its samples"));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                    errors.push(format!("line {lineno}: unknown type {arg:?} for {name}"));
                }
                fam.kind = Some(arg.to_string());
                kinds.insert(name.to_string(), arg.to_string());
            }
            continue;
        }
        let sample = match parse_sample(line) {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("line {lineno}: {e}: {line:?}"));
                continue;
            }
        };
        let family = family_of(&sample.name, &kinds);
        enter(&family, lineno, &mut current, &mut errors);
        exp.families.entry(family.clone()).or_default().samples += 1;
        if kinds.get(&family).map(String::as_str) == Some("histogram")
            && sample.name.ends_with("_bucket")
            && sample.label("le").is_none()
        {
            errors.push(format!("line {lineno}: histogram bucket without le"));
        }
        let key = sample.series_key();
        if let Some(first) = seen_series.insert(key.clone(), lineno) {
            errors.push(format!(
                "line {lineno}: duplicated series {key} (first at line {first})"
            ));
        }
        exp.samples.push(sample);
    }
    if errors.is_empty() {
        Ok(exp)
    } else {
        Err(errors)
    }
}

/// Like [`check_strict`], as a testbed error with the first problems listed.
pub fn parse_strict(text: &str) -> Result<Exposition> {
    check_strict(text).map_err(|errs| Error::Invalid {
        what: format!("exposition of {} bytes", text.len()),
        detail: format!(
            "{} problem(s): {}",
            errs.len(),
            errs.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
        ),
    })
}

fn family_of(name: &str, kinds: &HashMap<String, String>) -> String {
    if kinds.contains_key(name) {
        return name.to_string();
    }
    for (suffixes, kind) in [(HIST_SUFFIXES, "histogram"), (SUMMARY_SUFFIXES, "summary")] {
        for suffix in suffixes {
            if let Some(base) = name.strip_suffix(suffix) {
                if kinds.get(base).map(String::as_str) == Some(kind) {
                    return base.to_string();
                }
            }
        }
    }
    name.to_string()
}

fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses one sample line: `name{l="v",...} value [timestamp]`.
pub fn parse_sample(line: &str) -> std::result::Result<Sample, String> {
    let name_end = line.find(['{', ' ', '\t']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut s = after;
        loop {
            s = s.trim_start_matches([' ', '\t']);
            if let Some(r) = s.strip_prefix('}') {
                s = r;
                break;
            }
            let eq = s.find('=').ok_or("label without =")?;
            let lname = s[..eq].trim();
            if !valid_label_name(lname) {
                return Err(format!("bad label name {lname:?}"));
            }
            s = s[eq + 1..].trim_start_matches([' ', '\t']);
            s = s.strip_prefix('"').ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = s.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in label value")),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.iter().any(|(k, _): &(String, String)| k == lname) {
                return Err(format!("label {lname} twice"));
            }
            labels.push((lname.to_string(), value));
            s = s[end + 1..].trim_start_matches([' ', '\t']);
            if let Some(r) = s.strip_prefix(',') {
                s = r;
            } else if !s.starts_with('}') {
                return Err("expected , or } after label value".into());
            }
        }
        rest = s;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("no blank before the value".into());
    }
    let mut fields = rest.split_whitespace();
    let raw = fields.next().ok_or("no value")?;
    let value = parse_value(raw).ok_or_else(|| format!("bad value {raw:?}"))?;
    let timestamp = match fields.next() {
        None => None,
        Some(t) => Some(t.parse().map_err(|_| format!("bad timestamp {t:?}"))?),
    };
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp,
    })
}

fn parse_value(raw: &str) -> Option<f64> {
    match raw {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => raw.parse().ok(),
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

/// Whether two sample values are the same (NaN equals NaN).
pub fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

/// Runs `promtool check metrics` on `text`; its complaints (parse errors and lint problems) are
/// an error.
pub fn promtool_check(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(
            "starting promtool check metrics (run scripts/setup.sh)",
        ))?;
    let mut stdin = child.stdin.take().ok_or_else(|| Error::Invalid {
        what: "promtool".into(),
        detail: "no stdin".into(),
    })?;
    let input = text.as_bytes().to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(io_err("waiting for promtool"))?;
    let _ = writer.join();
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        what: "promtool check metrics".into(),
        code: out.status.code(),
        stderr: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .chars()
        .take(4000)
        .collect(),
    })
}

/// Both oracles at once: promtool and the strict checker. Returns the parsed exposition.
pub fn check_all(text: &str) -> Result<Exposition> {
    promtool_check(text)?;
    parse_strict(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 1\na_total{x=\"2\"} 2\n\
# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 1\nh_sum 3\nh_count 1\n\
g{a=\"q\\\"\\\\\\n\",b=\"\"} NaN 123\n";

    #[test]
    fn accepts_well_formed() {
        let exp = check_strict(GOOD).unwrap();
        assert_eq!(exp.samples.len(), 7);
        assert_eq!(exp.families["h"].samples, 4);
        assert_eq!(exp.samples[6].label("a"), Some("q\"\\\n"));
        assert_eq!(exp.samples[6].timestamp, Some(123));
        assert_eq!(exp.value("a_total", &[("x", "2")]), Some(2.0));
    }

    #[test]
    fn rejects_what_promtool_misses() {
        let split = "# TYPE a gauge\na 1\nb 1\na{x=\"1\"} 2\n";
        assert!(check_strict(split).unwrap_err()[0].contains("split group"));
        let dup = "a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\n";
        assert!(check_strict(dup).unwrap_err()[0].contains("duplicated series"));
        let two_type = "# TYPE a gauge\n# TYPE a gauge\na 1\n";
        assert!(check_strict(two_type).unwrap_err()[0].contains("second TYPE"));
        let late_type = "a 1\n# TYPE a gauge\n";
        assert!(!check_strict(late_type).unwrap_err().is_empty());
        for bad in [
            "a{x=1} 1\n",
            "a{x=\"1\" 1\n",
            "a{x=\"1\",x=\"2\"} 1\n",
            "a{1x=\"1\"} 1\n",
            "a one\n",
            "a 1",
            "9a 1\n",
            "a{x=\"\\q\"} 1\n",
        ] {
            assert!(check_strict(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn series_keys_ignore_label_order() {
        let a = parse_sample("m{b=\"2\",a=\"1\"} 1").unwrap();
        let b = parse_sample("m{a=\"1\",b=\"2\",} 1").unwrap();
        assert_eq!(a.series_key(), b.series_key());
    }
}

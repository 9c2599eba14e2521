//! One sample line: `name{l="v",...} value [timestamp] [# {l="v"} value [timestamp]]`, the
//! exemplar only in OpenMetrics.

use crate::Format;

/// Decoded labels, in line order.
pub type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
    /// Milliseconds in text, seconds in OpenMetrics, as written.
    pub timestamp: Option<f64>,
    /// The value and what follows it, as written.
    pub rest: String,
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
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect();
    format!("{name}{{{}}}", body.join(","))
}

fn quote(v: &str) -> String {
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

pub(super) fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses one sample line of `format`.
pub fn parse_sample(line: &str, format: Format) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, after) = labels(&line[name_end..], format)?;
    let rest = after.strip_prefix(' ').ok_or("no space before the value")?;
    let (sample_part, exemplar) = match rest.split_once(" # ") {
        Some((s, e)) if format.is_om() => (s, Some(e)),
        Some(_) => return Err("an exemplar in a text body".into()),
        None => (rest, None),
    };
    let (value, timestamp) = value_and_timestamp(sample_part, format)?;
    if let Some(e) = exemplar {
        exemplar_ok(e)?;
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp,
        rest: rest.to_string(),
    })
}

/// `value [timestamp]`, single spaces, nothing after.
fn value_and_timestamp(s: &str, format: Format) -> Result<(f64, Option<f64>), String> {
    let mut fields = s.split(' ');
    let raw = fields.next().unwrap_or("");
    let value = parse_value(raw).ok_or_else(|| format!("bad value {raw:?}"))?;
    let timestamp = match fields.next() {
        None => None,
        Some(t) if format.is_om() => Some(
            t.parse::<f64>()
                .ok()
                .filter(|t| t.is_finite())
                .ok_or(format!("bad timestamp {t:?}"))?,
        ),
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("bad timestamp {t:?}"))? as f64,
        ),
    };
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok((value, timestamp))
}

/// An OpenMetrics exemplar after ` # `: `{labels} value [timestamp]`.
fn exemplar_ok(e: &str) -> Result<(), String> {
    if !e.starts_with('{') {
        return Err("exemplar without labels".into());
    }
    let (_, after) = labels(e, Format::OpenMetrics).map_err(|x| format!("exemplar: {x}"))?;
    let rest = after
        .strip_prefix(' ')
        .ok_or("exemplar: no space before the value")?;
    value_and_timestamp(rest, Format::OpenMetrics).map_err(|x| format!("exemplar: {x}"))?;
    Ok(())
}

/// Parses `{a="x",b="y"}` at the start of `s` (nothing if `s` does not start with `{`); returns
/// the decoded labels and the rest. No blanks inside; a trailing comma only in text.
pub fn labels(s: &str, format: Format) -> Result<(Labels, &str), String> {
    let mut out: Labels = Vec::new();
    let Some(mut s) = s.strip_prefix('{') else {
        return Ok((out, s));
    };
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            if !out.is_empty() && format.is_om() {
                return Err("trailing comma in the labels".into());
            }
            return Ok((out, rest));
        }
        let eq = s.find('=').ok_or("label without =")?;
        let name = &s[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let quoted = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let (value, after) = label_value(quoted)?;
        if out.iter().any(|(k, _)| k == name) {
            return Err(format!("label {name} twice"));
        }
        out.push((name.to_string(), value));
        if let Some(rest) = after.strip_prefix('}') {
            return Ok((out, rest));
        }
        s = after
            .strip_prefix(',')
            .ok_or("expected , or } after a label value")?;
    }
}

/// The value up to its closing quote, unescaped (`\\`, `\"`, `\n` only), and what follows it.
fn label_value(s: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    loop {
        match chars.next() {
            None | Some((_, '\n')) => return Err("unterminated label value".into()),
            Some((i, '"')) => return Ok((value, &s[i + 1..])),
            Some((_, '\\')) => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                other => {
                    return Err(format!(
                        "bad escape {:?} in a label value",
                        other.map(|c| c.1)
                    ))
                }
            },
            Some((_, c)) => value.push(c),
        }
    }
}

fn parse_value(raw: &str) -> Option<f64> {
    match raw {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ if raw
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            None
        }
        _ => raw.parse().ok(),
    }
}

/// Whether two sample values are the same (NaN equals NaN).
pub fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

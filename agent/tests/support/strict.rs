//! A strict checker for merged output, written independently of the decode module: every family
//! once (one HELP, one TYPE, one UNIT, before its samples), all of a family's samples in one group,
//! no sample name owned by two families, no series twice, no label name twice, `# EOF` last in
//! OpenMetrics.

use std::collections::{HashMap, HashSet};

/// Decoded labels, in line order.
pub type Labels = Vec<(String, String)>;
/// Name, sorted labels, rest of the line.
pub type Sample = (String, Labels, String);

pub fn owned(name: &str, typ: &str, om: bool) -> Vec<String> {
    let suffixes: &[&str] = match (om, typ) {
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

/// Parses `{a="x",b="y"}` at the start of `s`; returns decoded labels and the rest.
pub fn labels(s: &str) -> Result<(Labels, &str), String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    if chars.next() != Some((0, '{')) {
        return Ok((out, s));
    }
    loop {
        let mut name = String::new();
        loop {
            match chars.next() {
                Some((_, '=')) => break,
                Some((i, '}')) if name.is_empty() && out.is_empty() => {
                    return Ok((out, &s[i + 1..]))
                }
                Some((_, c)) if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                other => return Err(format!("bad label name char {other:?} in {s}")),
            }
        }
        if chars.next().map(|x| x.1) != Some('"') {
            return Err(format!("label value not quoted in {s}"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some((_, '"')) => break,
                Some((_, '\\')) => match chars.next().map(|x| x.1) {
                    Some('n') => value.push('\n'),
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    other => return Err(format!("bad escape {other:?} in {s}")),
                },
                Some((_, '\n')) | None => return Err(format!("unterminated value in {s}")),
                Some((_, c)) => value.push(c),
            }
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("label {name} twice in {s}"));
        }
        out.push((name, value));
        match chars.next() {
            Some((_, ',')) => {}
            Some((i, '}')) => return Ok((out, &s[i + 1..])),
            other => return Err(format!("expected , or }} got {other:?} in {s}")),
        }
    }
}

fn start(
    name: &str,
    typ: &str,
    om: bool,
    current: &mut Option<(String, String)>,
    finished: &mut HashSet<String>,
    owner: &mut HashMap<String, String>,
) -> Result<(), String> {
    if let Some((f, _)) = current.take() {
        finished.insert(f);
    }
    if finished.contains(name) {
        return Err(format!("family {name} appears twice"));
    }
    for n in owned(name, typ, om).into_iter().chain([name.to_string()]) {
        if let Some(o) = owner.get(&n) {
            if o != name {
                return Err(format!("sample name {n} of {name} is owned by {o}"));
            }
        }
        owner.insert(n, name.to_string());
    }
    *current = Some((name.to_string(), typ.to_string()));
    Ok(())
}

pub fn check(body: &str, om: bool) -> Result<(), String> {
    let mut lines: Vec<&str> = body.split('\n').collect();
    if lines.pop() != Some("") {
        return Err("body does not end with a newline".into());
    }
    if om && lines.pop() != Some("# EOF") {
        return Err("OpenMetrics body does not end with # EOF".into());
    }
    let mut finished: HashSet<String> = HashSet::new();
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut current: Option<(String, String)> = None; // (family, type)
    let mut has_samples = false;
    let mut meta_seen: HashSet<&str> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    for (n, line) in lines.iter().enumerate() {
        let ctx = |e: String| format!("line {}: {e}: {line}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            let kind = it.next().unwrap_or("");
            let name = it
                .next()
                .ok_or_else(|| ctx("metadata without name".into()))?;
            let arg = it.next().unwrap_or("");
            if !["HELP", "TYPE", "UNIT"].contains(&kind) || (kind == "UNIT" && !om) {
                return Err(ctx("unexpected comment".into()));
            }
            if current.as_ref().map(|c| c.0.as_str()) != Some(name) {
                start(name, "unknown", om, &mut current, &mut finished, &mut owner).map_err(ctx)?;
                has_samples = false;
                meta_seen.clear();
            } else if has_samples {
                return Err(ctx("metadata after samples".into()));
            }
            if !meta_seen.insert(kind) {
                return Err(ctx(format!("second {kind}")));
            }
            if kind == "TYPE" {
                let valid: &[&str] = if om {
                    &[
                        "counter",
                        "gauge",
                        "histogram",
                        "gaugehistogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                    ]
                } else {
                    &["counter", "gauge", "histogram", "summary", "untyped"]
                };
                if !valid.contains(&arg) {
                    return Err(ctx("bad type".into()));
                }
                // Re-register with the real type.
                if let Some(c) = current.as_mut() {
                    c.1 = arg.to_string();
                }
                for o in owned(name, arg, om) {
                    if let Some(prev) = owner.get(&o) {
                        if prev != name {
                            return Err(ctx(format!("{o} is owned by {prev}")));
                        }
                    }
                    owner.insert(o, name.to_string());
                }
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| ctx("no value".into()))?;
        let name = &line[..name_end];
        let (ls, rest) = labels(&line[name_end..]).map_err(ctx)?;
        if !rest.starts_with(' ') {
            return Err(ctx("no space before value".into()));
        }
        let belongs = current
            .as_ref()
            .is_some_and(|(f, t)| owned(f, t, om).iter().any(|o| o == name));
        if !belongs {
            let typ = if om { "unknown" } else { "untyped" };
            start(name, typ, om, &mut current, &mut finished, &mut owner).map_err(ctx)?;
            meta_seen.clear();
        }
        has_samples = true;
        let mut sorted = ls.clone();
        sorted.sort();
        let key = format!("{name}{sorted:?}");
        if !series.insert(key) {
            return Err(ctx("duplicate series".into()));
        }
    }
    Ok(())
}

/// The samples of a body (text or OpenMetrics, as written by loupe): name, sorted decoded labels
/// and the rest of the line (value, timestamp, exemplar).
pub fn samples(body: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some(name_end) = line.find(['{', ' ']) else {
            continue;
        };
        let Ok((mut ls, rest)) = labels(&line[name_end..]) else {
            continue;
        };
        ls.sort();
        out.push((line[..name_end].to_string(), ls, rest.trim().to_string()));
    }
    out
}

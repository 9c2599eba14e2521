//! An oracle of the merging rules (decode module docs, rules 1 to 5), written independently of
//! the decode module, for merges whose sources are in the output's format (rule 6 is then the
//! identity): it reads the bodies line by line (with the strict checker's label parser), applies
//! the rules to decoded samples and returns the families the merge must write, and what it must
//! count. Bodies must be ones the merge accepts.

use std::collections::{HashMap, HashSet};

use loupe_agent::decode::IdentityLabels;

use loupe_testkit::strict::{labels, owned, Labels};

/// A family as written: name, TYPE, HELP (raw), UNIT, and its samples: name, labels (decoded,
/// sorted) and the rest of the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    pub name: String,
    pub typ: String,
    pub help: Option<String>,
    pub unit: Option<String>,
    pub samples: Vec<(String, Labels, String)>,
}

/// Reads a body the merge accepted (or wrote) into its families, samples in body order and
/// labels in line order. `None` if a family appears twice (the oracle does not model that).
pub fn families(body: &str, om: bool) -> Option<Vec<Family>> {
    let mut out: Vec<Family> = Vec::new();
    let mut names = HashSet::new();
    let untyped = if om { "unknown" } else { "untyped" };
    for line in body.lines() {
        if line == "# EOF" {
            break;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            let (kind, name) = (it.next()?, it.next()?);
            let arg = it.next().unwrap_or("").to_string();
            if out.last().map(|f| f.name.as_str()) != Some(name) || !out.last()?.samples.is_empty()
            {
                if !names.insert(name.to_string()) {
                    return None;
                }
                out.push(Family {
                    name: name.to_string(),
                    typ: untyped.to_string(),
                    help: None,
                    unit: None,
                    samples: Vec::new(),
                });
            }
            let f = out.last_mut()?;
            match kind {
                "TYPE" => f.typ = arg,
                "HELP" => f.help = Some(arg),
                "UNIT" => f.unit = Some(arg).filter(|u| !u.is_empty()),
                _ => return None,
            }
            continue;
        }
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let (ls, rest) = labels(&line[name_end..], loupe_testkit::Format::from_om(om)).ok()?;
        let belongs = out
            .last()
            .is_some_and(|f| owned(&f.name, &f.typ, om).iter().any(|o| o == name));
        if !belongs {
            if !names.insert(name.to_string()) {
                return None;
            }
            out.push(Family {
                name: name.to_string(),
                typ: untyped.to_string(),
                help: None,
                unit: None,
                samples: Vec::new(),
            });
        }
        let rest = rest.split_whitespace().collect::<Vec<_>>().join(" ");
        out.last_mut()?.samples.push((name.to_string(), ls, rest));
    }
    out.retain(|f| !f.samples.is_empty());
    Some(out)
}

/// Rule 2: the identity labels first, then the app's, those named like a set identity label
/// renamed `exported_*` (empty ones then dropped, as absent).
fn identify(id: &Option<IdentityLabels<'_>>, app: &Labels) -> Labels {
    let ident: Vec<(String, String)> = id
        .iter()
        .flat_map(IdentityLabels::labels)
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    // An app's target labels are renamed whether or not the identity sets them.
    let is_ident = |n: &str| {
        ident.iter().any(|(k, _)| k == n) || (id.is_some() && ["job", "instance"].contains(&n))
    };
    let mut kept: Labels = app.iter().filter(|(n, _)| !is_ident(n)).cloned().collect();
    let clashing: Labels = app
        .iter()
        .filter(|(n, v)| is_ident(n) && !v.is_empty())
        .cloned()
        .collect();
    if !clashing.is_empty() {
        kept.retain(|(_, v)| !v.is_empty());
    }
    for (n, v) in clashing {
        let mut name = format!("exported_{n}");
        while ident.iter().chain(&kept).any(|(k, _)| *k == name) {
            name = format!("exported_{name}");
        }
        kept.push((name, v));
    }
    ident.into_iter().chain(kept).collect()
}

/// The merge of same-format bodies (identity, body) by the rules: the families to write, in
/// order, and (family conflicts, duplicate series). `None` where the oracle does not apply.
pub fn merge(
    sources: &[(Option<IdentityLabels<'_>>, &str)],
    om: bool,
) -> Option<(Vec<Family>, u64, u64)> {
    // (source, family) by output name, in source order.
    let mut by_name: HashMap<String, Vec<(usize, Family)>> = HashMap::new();
    let mut first_source: HashMap<String, usize> = HashMap::new();
    for (si, (id, body)) in sources.iter().enumerate() {
        for f in families(body, om)? {
            // `loupe_*` is loupe's own: an app's family is left out.
            if id.is_some() && f.name.starts_with("loupe_") {
                continue;
            }
            first_source.entry(f.name.clone()).or_insert(si);
            by_name.entry(f.name.clone()).or_default().push((si, f));
        }
    }
    let mut conflicts = 0u64;
    let mut planned: Vec<(Family, Vec<(usize, Family)>)> = Vec::new();
    for (name, members) in by_name {
        // Rule 3: the type most sources declare wins, a tie to the earliest source's among the
        // tied; rule 4: the first HELP and UNIT.
        let mut votes: Vec<(String, usize)> = Vec::new();
        let mut voted = HashSet::new();
        for (si, f) in &members {
            if !voted.insert(*si) {
                continue;
            }
            match votes.iter_mut().find(|(t, _)| *t == f.typ) {
                Some((_, n)) => *n += 1,
                None => votes.push((f.typ.clone(), 1)),
            }
        }
        let top = votes.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let typ = votes
            .iter()
            .find(|(_, n)| *n == top)
            .map(|(t, _)| t.clone())
            .unwrap_or_default();
        let mut out = Family {
            name,
            typ: typ.clone(),
            help: None,
            unit: None,
            samples: Vec::new(),
        };
        let mut help_from = usize::MAX;
        let mut kept = Vec::new();
        for (si, f) in members {
            if f.typ != typ {
                conflicts += 1;
                continue;
            }
            let mut conflict = false;
            if let Some(h) = &f.help {
                match &out.help {
                    None => (out.help, help_from) = (Some(h.clone()), si),
                    Some(h0) => conflict |= help_from != si && h0 != h,
                }
            }
            if let Some(u) = &f.unit {
                match &out.unit {
                    None => out.unit = Some(u.clone()),
                    Some(u0) => conflict |= u0 != u,
                }
            }
            conflicts += u64::from(conflict);
            kept.push((si, f));
        }
        planned.push((out, kept));
    }
    // Rule 3, clashes: by sources kept (more first), first source, then name; the later
    // family's sample names taken.
    planned.sort_by(|a, b| {
        (
            std::cmp::Reverse(a.1.len()),
            first_source[&a.0.name],
            &a.0.name,
        )
            .cmp(&(
                std::cmp::Reverse(b.1.len()),
                first_source[&b.0.name],
                &b.0.name,
            ))
    });
    let mut claimed: HashMap<String, String> = HashMap::new();
    let mut written = Vec::new();
    for (f, kept) in planned {
        let names: Vec<String> = owned(&f.name, &f.typ, om)
            .into_iter()
            .chain([f.name.clone()])
            .collect();
        if names
            .iter()
            .any(|n| claimed.get(n).is_some_and(|o| *o != f.name))
        {
            conflicts += kept.len() as u64;
            continue;
        }
        for n in names {
            claimed.insert(n, f.name.clone());
        }
        written.push((f, kept));
    }
    written.sort_by(|a, b| a.0.name.as_bytes().cmp(b.0.name.as_bytes()));
    let mut duplicates = 0u64;
    let mut families = Vec::new();
    for (mut f, kept) in written {
        duplicates += samples(&mut f, kept, sources, om);
        families.push(f);
    }
    Some((families, conflicts, duplicates))
}

/// Rule 5: the first of each series (name and label set as written, identity included); in
/// OpenMetrics a histogram or summary of a source with an earlier source's identity is
/// dropped whole. Returns the duplicates.
fn labels_of<'a>(i: &Option<IdentityLabels<'a>>) -> [&'a str; 4] {
    i.map_or([""; 4], |i| [i.namespace, i.pod, i.container, i.endpoint])
}

fn samples(
    f: &mut Family,
    kept: Vec<(usize, Family)>,
    sources: &[(Option<IdentityLabels<'_>>, &str)],
    om: bool,
) -> u64 {
    let grouped = om && ["histogram", "gaugehistogram", "summary"].contains(&f.typ.as_str());
    let mut identities: Vec<Option<IdentityLabels<'_>>> = Vec::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for (si, member) in kept {
        let id = sources[si].0;
        if grouped && identities.iter().any(|i| labels_of(i) == labels_of(&id)) {
            duplicates += member.samples.len() as u64;
            continue;
        }
        identities.push(id);
        for (name, app, rest) in member.samples {
            let mut ls = identify(&id, &app);
            ls.sort();
            if seen.insert((name.clone(), ls.clone())) {
                f.samples.push((name, ls, rest));
            } else {
                duplicates += 1;
            }
        }
    }
    duplicates
}

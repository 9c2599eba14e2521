//! Target labels: the `job` and pod labels a direct scrape of a pod would have given its series,
//! so that dashboards and alerts written for per-pod scraping keep matching behind loupe (the
//! node target is scraped with `honor_labels: true`, so these labels win over the node's).
//! `instance` is the endpoint's `podIP:port` ([`super::Pod::targets`]). Pure: the sources log
//! and count what goes wrong.
//!
//! # `job`, by default
//! The first of: the pod's `loupe.dev/job` annotation; its `app.kubernetes.io/name` label; its
//! `app` label; its controlling owner (a ReplicaSet owner of a pod with a `pod-template-hash`
//! label gives the ReplicaSet's name without the `-<hash>` suffix, i.e. the Deployment's; any
//! other owner its own name); else the pod's name. `--job-from` replaces it with one label or
//! annotation (the default rule when the pod has none) or a fixed value.
//!
//! # Pod labels
//! `--pod-labels` is a list of patterns (`*` matches any run of characters) over the pods'
//! Kubernetes label keys; each matching label is copied onto the pod's series with its name
//! sanitised as Prometheus' Kubernetes discovery and `labelmap` give it
//! (`__meta_kubernetes_pod_label_<sanitised>` mapped to `<sanitised>`): every character but
//! `[a-zA-Z0-9_]` becomes `_`. A name starting with a digit (not a valid label name) gets a
//! leading `_`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::decode::IDENTITY_NAMES;

/// The annotation that names a pod's job.
pub const LOUPE_JOB: &str = "loupe.dev/job";
const NAME_LABEL: &str = "app.kubernetes.io/name";
const APP_LABEL: &str = "app";
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Longest `job` loupe gives: far beyond any workload's name (Kubernetes names are at most 253
/// characters), short enough for dashboards' legends.
pub const MAX_JOB_LEN: usize = 256;

crate::telemetry::counter!(
    pub TARGET_LABEL_ERRORS,
    "loupe_target_label_errors_total",
    "Target labels loupe could not give as asked: a --pod-labels pattern that matches nothing or everything, two endpoints with one job and instance, a pods file's label that clashes with another after sanitising; each logged (with the pod's name), the endpoint served with the default labels.",
);

/// Logs and counts one target-label problem.
pub fn label_error(what: &dyn fmt::Display) {
    TARGET_LABEL_ERRORS.inc();
    log::warn!("target labels: {what}");
}

/// How the `job` of a pod's endpoints is chosen (`--job-from`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum JobRule {
    /// The rule in the module's docs.
    #[default]
    Default,
    /// The value of this annotation, else the default rule.
    Annotation(String),
    /// The value of this label, else the default rule.
    Label(String),
    /// This value for every pod.
    Value(String),
}

impl FromStr for JobRule {
    type Err = String;

    /// `default`, `annotation:KEY`, `label:KEY` or `value:JOB`.
    fn from_str(s: &str) -> Result<Self, String> {
        let rule = match s.split_once(':') {
            None if s == "default" => return Ok(JobRule::Default),
            Some(("annotation", key)) if !key.is_empty() => JobRule::Annotation(key.into()),
            Some(("label", key)) if !key.is_empty() => JobRule::Label(key.into()),
            Some(("value", job)) => {
                check_job(job)?;
                JobRule::Value(job.into())
            }
            _ => {
                return Err(format!(
                    "{s:?}: expected default, annotation:KEY, label:KEY or value:JOB"
                ))
            }
        };
        Ok(rule)
    }
}

/// Whether `job` can be a `job` label: not empty, at most [`MAX_JOB_LEN`] bytes, no control
/// characters (which no dashboard shows and no query can name without escapes).
pub fn check_job(job: &str) -> Result<(), String> {
    if job.is_empty() {
        return Err("an empty job".into());
    }
    if job.len() > MAX_JOB_LEN {
        return Err(format!(
            "a job of {} bytes (at most {MAX_JOB_LEN})",
            job.len()
        ));
    }
    if job.chars().any(char::is_control) {
        return Err(format!("job {job:?} has control characters"));
    }
    Ok(())
}

/// What the rules read of a pod.
#[derive(Clone, Copy, Debug)]
pub struct PodMeta<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    /// The controlling owner: its kind and name.
    pub owner: Option<(&'a str, &'a str)>,
}

/// A value the rules read that cannot be a `job`: where it came from and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidJob {
    /// The annotation (`loupe.dev/job`), or `label KEY`.
    pub source: String,
    pub reason: String,
}

impl JobRule {
    /// The pod's job, and the values skipped for being invalid (the next in the rule is used).
    pub fn job(&self, pod: PodMeta<'_>) -> (String, Vec<InvalidJob>) {
        let mut invalid = Vec::new();
        // An empty label is an absent one (Kubernetes allows them); an empty annotation was
        // set to say something, and is reported.
        let mut take = |annotation: bool, key: &str| -> Option<String> {
            let value = if annotation {
                pod.annotations.get(key)?
            } else {
                pod.labels.get(key).filter(|v| !v.is_empty())?
            };
            match check_job(value) {
                Ok(()) => Some(value.clone()),
                Err(reason) => {
                    invalid.push(InvalidJob {
                        source: if annotation {
                            key.to_string()
                        } else {
                            format!("label {key}")
                        },
                        reason,
                    });
                    None
                }
            }
        };
        let chosen = match self {
            JobRule::Default => None,
            JobRule::Value(job) => Some(job.clone()),
            JobRule::Annotation(key) => take(true, key),
            JobRule::Label(key) => take(false, key),
        };
        let job = chosen
            .or_else(|| take(true, LOUPE_JOB))
            .or_else(|| take(false, NAME_LABEL))
            .or_else(|| take(false, APP_LABEL))
            .or_else(|| owner_job(pod))
            .unwrap_or_else(|| pod.name.to_string());
        (job, invalid)
    }
}

/// The job an owner gives: a Deployment's ReplicaSet is `<deployment>-<pod-template-hash>`.
fn owner_job(pod: PodMeta<'_>) -> Option<String> {
    let (kind, name) = pod.owner?;
    if name.is_empty() {
        return None;
    }
    let hash = pod.labels.get(POD_TEMPLATE_HASH).filter(|h| !h.is_empty());
    let deployment = match hash {
        Some(hash) if kind == "ReplicaSet" => name
            .strip_suffix(hash.as_str())
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty()),
        _ => None,
    };
    Some(deployment.unwrap_or(name).to_string())
}

/// `--pod-labels`: which pod labels are copied onto the pod's series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodLabels {
    patterns: Vec<String>,
}

/// Characters a Kubernetes label key may have (`[prefix/]name`); a pattern with others matches
/// no label.
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '*')
}

impl PodLabels {
    /// The allowlist from `--pod-labels` (comma-separated), and the patterns left out: one
    /// that matches everything (it would copy `pod-template-hash` and every other churning
    /// label), or nothing (empty, or with characters no label key has).
    pub fn parse(list: &str) -> (PodLabels, Vec<String>) {
        let mut patterns = Vec::new();
        let mut refused = Vec::new();
        if list.trim().is_empty() {
            return (PodLabels { patterns }, refused);
        }
        for p in list.split(',').map(str::trim) {
            if p.is_empty() || !p.chars().all(is_key_char) {
                refused.push(format!(
                    "--pod-labels pattern {p:?} matches no Kubernetes label key; left out"
                ));
            } else if p.chars().all(|c| c == '*') {
                refused.push(format!(
                    "--pod-labels pattern {p:?} matches every label (pod-template-hash too, a new series set at every rollout); left out, list the labels wanted"
                ));
            } else if !patterns.iter().any(|q| q == p) {
                patterns.push(p.to_string());
            }
        }
        (PodLabels { patterns }, refused)
    }

    /// The pod's labels to copy: sanitised names, sorted, empty values left out, with the
    /// labels left out for their names (a name of loupe's own labels, or one another label
    /// already took after sanitising: the first key in byte order keeps it).
    pub fn copy(&self, labels: &BTreeMap<String, String>) -> (Vec<(String, String)>, Vec<String>) {
        let mut copied: Vec<(String, String)> = Vec::new();
        let mut skipped = Vec::new();
        if self.patterns.is_empty() {
            return (copied, skipped);
        }
        for (key, value) in labels {
            if value.is_empty() || !self.patterns.iter().any(|p| glob(p, key)) {
                continue;
            }
            let name = sanitise(key);
            if IDENTITY_NAMES.contains(&name.as_str()) || name.starts_with("__") {
                skipped.push(format!(
                    "label {key} would be named {name}, one of loupe's own labels; not copied"
                ));
            } else if copied.iter().any(|(n, _)| *n == name) {
                skipped.push(format!(
                    "label {key} would be named {name}, as another label already copied; not copied"
                ));
            } else {
                copied.push((name, value.clone()));
            }
        }
        copied.sort();
        (copied, skipped)
    }
}

/// A label key as a label name, as Prometheus' Kubernetes discovery and `labelmap` make it.
pub fn sanitise(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it was tried at, to backtrack to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What the sources need to give pods their target labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub job: JobRule,
    pub pod_labels: PodLabels,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn job(
        rule: &JobRule,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        owner: Option<(&str, &str)>,
    ) -> (String, Vec<InvalidJob>) {
        let (labels, annotations) = (map(labels), map(annotations));
        rule.job(PodMeta {
            name: "web-7d9f-x2x",
            labels: &labels,
            annotations: &annotations,
            owner,
        })
    }

    #[test]
    fn default_rule_in_order() {
        let d = JobRule::Default;
        let rs = Some(("ReplicaSet", "web-7d9f"));
        let hash = ("pod-template-hash", "7d9f");
        assert_eq!(
            job(
                &d,
                &[("app", "a"), ("app.kubernetes.io/name", "n")],
                &[(LOUPE_JOB, "j")],
                rs
            )
            .0,
            "j"
        );
        assert_eq!(
            job(
                &d,
                &[("app", "a"), ("app.kubernetes.io/name", "n")],
                &[],
                rs
            )
            .0,
            "n"
        );
        assert_eq!(job(&d, &[("app", "a"), hash], &[], rs).0, "a");
        assert_eq!(job(&d, &[hash], &[], rs).0, "web");
        // A ReplicaSet not made by a Deployment, a StatefulSet: the owner's own name.
        assert_eq!(job(&d, &[], &[], rs).0, "web-7d9f");
        assert_eq!(job(&d, &[], &[], Some(("StatefulSet", "db"))).0, "db");
        assert_eq!(job(&d, &[], &[], None).0, "web-7d9f-x2x");
    }

    #[test]
    fn an_invalid_value_is_reported_and_the_next_rule_used() {
        let long = "x".repeat(MAX_JOB_LEN + 1);
        for bad in ["", "a\nb", long.as_str()] {
            let (j, invalid) = job(
                &JobRule::Default,
                &[("app", "a")],
                &[(LOUPE_JOB, bad)],
                None,
            );
            assert_eq!(j, "a");
            assert_eq!(invalid.len(), 1, "{bad:?}");
            assert_eq!(invalid[0].source, LOUPE_JOB);
        }
    }

    #[test]
    fn chosen_rules() {
        let team: JobRule = "label:team".parse().unwrap();
        assert_eq!(
            job(&team, &[("team", "pay"), ("app", "a")], &[], None).0,
            "pay"
        );
        assert_eq!(job(&team, &[("app", "a")], &[], None).0, "a");
        let ann: JobRule = "annotation:example.com/job".parse().unwrap();
        assert_eq!(job(&ann, &[], &[("example.com/job", "e")], None).0, "e");
        let fixed: JobRule = "value:apps".parse().unwrap();
        assert_eq!(
            job(&fixed, &[("app", "a")], &[(LOUPE_JOB, "j")], None).0,
            "apps"
        );
        assert_eq!("default".parse::<JobRule>(), Ok(JobRule::Default));
        for bad in ["", "label:", "labels:x", "value:", "team"] {
            assert!(bad.parse::<JobRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_labels_are_copied_by_pattern_and_sanitised() {
        let (allow, refused) = PodLabels::parse("app.kubernetes.io/*, team");
        assert!(refused.is_empty());
        let labels = map(&[
            ("app.kubernetes.io/name", "web"),
            ("app.kubernetes.io/part-of", "shop"),
            ("team", "pay"),
            ("tier", "front"),
            ("app.kubernetes.io/empty", ""),
        ]);
        let (copied, skipped) = allow.copy(&labels);
        assert_eq!(
            copied,
            vec![
                ("app_kubernetes_io_name".into(), "web".into()),
                ("app_kubernetes_io_part_of".into(), "shop".into()),
                ("team".into(), "pay".into()),
            ]
        );
        assert!(skipped.is_empty());
    }

    #[test]
    fn clashing_and_reserved_names_are_skipped() {
        let (allow, _) = PodLabels::parse("a*,job,3d");
        let (copied, skipped) = allow.copy(&map(&[
            ("a.b", "1"),
            ("a_b", "2"),
            ("job", "x"),
            ("3d", "y"),
        ]));
        assert_eq!(
            copied,
            vec![("_3d".into(), "y".into()), ("a_b".into(), "1".into())]
        );
        assert_eq!(skipped.len(), 2, "{skipped:?}");
    }

    #[test]
    fn patterns_matching_nothing_or_everything_are_left_out() {
        let (allow, refused) = PodLabels::parse("*,team,,has space,**");
        assert_eq!(allow, PodLabels::parse("team").0);
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert_eq!(PodLabels::parse(" "), (PodLabels::default(), Vec::new()));
    }

    #[test]
    fn glob_matches() {
        assert!(glob("app.kubernetes.io/*", "app.kubernetes.io/name"));
        assert!(!glob("app.kubernetes.io/*", "app"));
        assert!(glob("*team*", "my-team-x"));
        assert!(glob("a*b*c", "aXbYbc"));
        assert!(!glob("a*b", "ac"));
        assert!(glob("team", "team") && !glob("team", "teams"));
    }
}

//! Prometheus' per-target label limits (`label_limit`, `label_name_length_limit`,
//! `label_value_length_limit`) over a prepared body: one pass over its samples, each label set
//! lexed again (linear in the line), stopping at the first series past a limit. Zero disables a
//! limit; with all three zero the body is not looked at.

use super::parse::{lex, SampleRef, HAS_LABELS};
use super::{Format, Prepared};

/// Zero: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabelLimits {
    /// Labels of a series as Prometheus stores it: its name, the app's labels and `extra` more
    /// (the labels the target adds).
    pub labels: usize,
    pub extra: usize,
    /// Bytes of a label name.
    pub name_length: usize,
    /// Bytes of a label value, as written (escapes included).
    pub value_length: usize,
}

/// The first series past a limit: the metric's name and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelExcess {
    Labels { metric: String, found: usize },
    NameLength { metric: String, found: usize },
    ValueLength { metric: String, found: usize },
}

pub fn check_labels(
    body: &[u8],
    prepared: &Prepared,
    limits: LabelLimits,
) -> Result<(), LabelExcess> {
    if limits.labels == 0 && limits.name_length == 0 && limits.value_length == 0 {
        return Ok(());
    }
    let strict = prepared.format == Format::OpenMetrics;
    let mut labels = Vec::new();
    for sm in &prepared.samples {
        let metric =
            || String::from_utf8_lossy(&body[sm.start as usize..sm.name_end as usize]).into_owned();
        relex(body, sm, strict, &mut labels);
        let found = 1 + labels.len() + limits.extra;
        if limits.labels > 0 && found > limits.labels {
            return Err(LabelExcess::Labels {
                metric: metric(),
                found,
            });
        }
        for l in &labels {
            let name = l.name(body).len();
            if limits.name_length > 0 && name > limits.name_length {
                return Err(LabelExcess::NameLength {
                    metric: metric(),
                    found: name,
                });
            }
            let value = l.value(body).len();
            if limits.value_length > 0 && value > limits.value_length {
                return Err(LabelExcess::ValueLength {
                    metric: metric(),
                    found: value,
                });
            }
        }
    }
    Ok(())
}

/// The sample's labels (absolute ranges into the body).
fn relex(b: &[u8], sm: &SampleRef, strict: bool, out: &mut Vec<lex::Label>) {
    out.clear();
    if sm.flags & HAS_LABELS == 0 {
        return;
    }
    let mut i = sm.name_end as usize;
    while i < sm.end as usize && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    let mut info = lex::BlockInfo::default();
    // The parser accepted this body, so lexing it again cannot fail.
    let _ = lex::lex_labels(&b[..sm.end as usize], i, strict, out, &mut info);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::prepare;

    fn check(body: &str, limits: LabelLimits) -> Result<(), LabelExcess> {
        let p = prepare(body.as_bytes(), Format::Text).unwrap();
        check_labels(body.as_bytes(), &p, limits)
    }

    #[test]
    fn each_limit_names_the_first_series_past_it() {
        let body = "a 1\nb{x=\"1\",y=\"2\"} 1\nc{long_name=\"v\"} 1\nd{z=\"123456\"} 1\n";
        assert_eq!(check(body, LabelLimits::default()), Ok(()));
        let labels = LabelLimits {
            labels: 3,
            extra: 1,
            ..Default::default()
        };
        assert_eq!(
            check(body, labels),
            Err(LabelExcess::Labels {
                metric: "b".into(),
                found: 4
            })
        );
        let names = LabelLimits {
            name_length: 4,
            ..Default::default()
        };
        assert_eq!(
            check(body, names),
            Err(LabelExcess::NameLength {
                metric: "c".into(),
                found: 9
            })
        );
        let values = LabelLimits {
            value_length: 5,
            ..Default::default()
        };
        assert_eq!(
            check(body, values),
            Err(LabelExcess::ValueLength {
                metric: "d".into(),
                found: 6
            })
        );
        let roomy = LabelLimits {
            labels: 4,
            extra: 1,
            name_length: 9,
            value_length: 6,
        };
        assert_eq!(check(body, roomy), Ok(()));
    }
}

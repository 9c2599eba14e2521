//! The rules of histogram, gaugehistogram and summary families, per metric (the samples of one
//! label set, `le` and `quantile` aside): its samples together, buckets in increasing `le` order
//! with cumulative counts and a `+Inf` bucket equal to `_count`, `_sum` and `_count` together,
//! no `_sum` beside negative buckets, quantiles within [0, 1], counts and sums not NaN or
//! negative. Text bodies are held to them too, to know whether a family may keep its type in
//! OpenMetrics.

use std::collections::HashSet;

use super::index::{MType, Suffix};
use super::lex::bound_value;

/// What one metric's samples have shown so far. Of a repeated `_count` or `_sum` the first
/// counts, as the merge keeps the first of duplicate series (rule 5): checking a later one would
/// accept a body whose merged output breaks the rules (found by fuzzing).
struct Metric {
    key: u64,
    last_le: f64,
    last_bucket: f64,
    inf: Option<f64>,
    count: Option<f64>,
    sum: Option<f64>,
    negative_bucket: bool,
}

impl Metric {
    fn new(key: u64) -> Metric {
        Metric {
            key,
            last_le: f64::NEG_INFINITY,
            last_bucket: 0.0,
            inf: None,
            count: None,
            sum: None,
            negative_bucket: false,
        }
    }
}

/// The checks of the current family's metrics.
#[derive(Default)]
pub(super) struct HistogramRules {
    current: Option<Metric>,
    /// Metrics of the current family already ended: one seen again is not contiguous.
    ended: HashSet<u64>,
}

impl HistogramRules {
    /// Checks one sample of metric `key`, of value `x`; `bound` is its raw `le` or `quantile`.
    pub(super) fn sample(
        &mut self,
        mtype: MType,
        suffix: Suffix,
        x: f64,
        bound: Option<&[u8]>,
        key: u64,
    ) -> Result<(), &'static str> {
        if self.current.as_ref().is_none_or(|m| m.key != key) {
            self.end_metric(mtype)?;
            if !self.ended.insert(key) {
                return Err("samples of one histogram or summary are not contiguous");
            }
            self.current = Some(Metric::new(key));
        }
        let m = self.current.as_mut().ok_or("internal: no group")?;
        match (mtype, suffix) {
            (MType::Summary, Suffix::Bare) => quantile(x, bound),
            (_, Suffix::Bucket) => bucket(m, x, bound),
            (_, Suffix::Count) | (_, Suffix::GCount) => {
                if x.is_nan() || x < 0.0 {
                    return Err("count is NaN or negative");
                }
                m.count.get_or_insert(x);
                Ok(())
            }
            (MType::GaugeHistogram, Suffix::GSum) => {
                if x.is_nan() {
                    return Err("gsum is NaN");
                }
                m.sum.get_or_insert(x);
                Ok(())
            }
            (_, Suffix::Sum) => {
                if x.is_nan() || x < 0.0 {
                    return Err("sum is NaN or negative");
                }
                m.sum.get_or_insert(x);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Ends the family (of type `mtype`): its last metric must be complete.
    pub(super) fn end_family(&mut self, mtype: MType) -> Result<(), &'static str> {
        let r = self.end_metric(mtype);
        self.ended.clear();
        r
    }

    fn end_metric(&mut self, mtype: MType) -> Result<(), &'static str> {
        let Some(m) = self.current.take() else {
            return Ok(());
        };
        if !matches!(mtype, MType::Histogram | MType::GaugeHistogram) {
            return Ok(());
        }
        let inf = m.inf.ok_or("histogram without a +Inf bucket")?;
        match (m.count, m.sum) {
            (Some(c), Some(_)) if c != inf => Err("histogram count differs from its +Inf bucket"),
            (Some(_), None) | (None, Some(_)) => {
                Err("histogram has only one of count and sum (both or neither)")
            }
            (Some(_), Some(_)) if mtype == MType::Histogram && m.negative_bucket => {
                Err("histogram with negative buckets cannot have a sum")
            }
            (Some(_), Some(s)) if s < 0.0 && !m.negative_bucket => {
                Err("negative gsum without negative buckets")
            }
            _ => Ok(()),
        }
    }
}

fn quantile(x: f64, bound: Option<&[u8]>) -> Result<(), &'static str> {
    let q = bound
        .and_then(|q| bound_value(q, true))
        .ok_or("summary quantile sample without a valid quantile label")?;
    if !(0.0..=1.0).contains(&q) {
        return Err("quantile outside [0, 1]");
    }
    if x < 0.0 {
        return Err("quantile value is negative");
    }
    Ok(())
}

fn bucket(m: &mut Metric, x: f64, bound: Option<&[u8]>) -> Result<(), &'static str> {
    let le = bound
        .and_then(|q| bound_value(q, true))
        .ok_or("histogram bucket without a valid le label")?;
    if le.is_nan() || le <= m.last_le {
        return Err("histogram buckets are not in increasing le order");
    }
    if x.is_nan() || x < 0.0 {
        return Err("bucket value is NaN or negative");
    }
    if x < m.last_bucket {
        return Err("histogram bucket counts decrease");
    }
    if le < 0.0 {
        m.negative_bucket = true;
    }
    if le == f64::INFINITY {
        m.inf = Some(x);
    }
    m.last_le = le;
    m.last_bucket = x;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_needs_its_inf_bucket_and_matching_count() {
        let mut h = HistogramRules::default();
        let t = MType::Histogram;
        h.sample(t, Suffix::Bucket, 1.0, Some(b"1"), 7).unwrap();
        assert_eq!(h.end_family(t), Err("histogram without a +Inf bucket"));
        h.sample(t, Suffix::Bucket, 2.0, Some(b"+Inf"), 7).unwrap();
        h.sample(t, Suffix::Count, 3.0, None, 7).unwrap();
        h.sample(t, Suffix::Sum, 3.0, None, 7).unwrap();
        assert_eq!(
            h.end_family(t),
            Err("histogram count differs from its +Inf bucket")
        );
    }

    #[test]
    fn a_repeated_count_is_checked_as_the_merge_keeps_it_the_first() {
        let mut h = HistogramRules::default();
        let t = MType::Histogram;
        h.sample(t, Suffix::Bucket, 1.0, Some(b"+Inf"), 7).unwrap();
        h.sample(t, Suffix::Count, 3.0, None, 7).unwrap();
        h.sample(t, Suffix::Sum, 2.0, None, 7).unwrap();
        h.sample(t, Suffix::Count, 1.0, None, 7).unwrap();
        h.sample(t, Suffix::Sum, 2.0, None, 7).unwrap();
        assert_eq!(
            h.end_family(t),
            Err("histogram count differs from its +Inf bucket")
        );
    }

    #[test]
    fn metrics_must_be_contiguous_and_buckets_ordered() {
        let mut h = HistogramRules::default();
        let t = MType::Summary;
        h.sample(t, Suffix::Bare, 1.0, Some(b"0.5"), 1).unwrap();
        h.sample(t, Suffix::Bare, 1.0, Some(b"0.5"), 2).unwrap();
        assert!(h.sample(t, Suffix::Sum, 1.0, None, 1).is_err());
        assert!(h.sample(t, Suffix::Bare, 1.0, Some(b"2"), 3).is_err());
        let mut h = HistogramRules::default();
        let t = MType::Histogram;
        h.sample(t, Suffix::Bucket, 1.0, Some(b"2"), 1).unwrap();
        assert!(h.sample(t, Suffix::Bucket, 1.0, Some(b"1"), 1).is_err());
    }
}

//! The property tests' bodies, drawn by proptest strategies. Each test picks a [`Shape`]: its
//! names and labels (chosen to clash, or not), the kinds and metadata drawn, and whether every
//! body must be valid.
//!
//! Why not `loupe_testkit::bodies`, the generator the benchmarks and the test app use: that one
//! lays out fixed, realistic, always valid bodies from a few parameters; these are random draws
//! that shrink, of every kind both formats know (info, gaugehistogram, `_created`), with HELP
//! before or after TYPE, UNITs, timestamps, nasty label values, and (for the invalid shapes)
//! repeated families and clashing names. They share its vocabulary: [`Kind`] and [`escape`].

use std::collections::HashSet;
use std::ops::Range;

use loupe_agent::decode::{Format, IdentityLabels};
use loupe_testkit::bodies::{escape, Kind};
use proptest::prelude::*;

/// The identities sources are drawn with: none, pods with and without instance, one with escapes
/// and empty labels.
pub const IDS: [Option<IdentityLabels<'static>>; 5] = [
    None,
    Some(IdentityLabels {
        namespace: "shop",
        pod: "cart-1",
        container: "app",
        endpoint: "metrics",
        job: "cart",
        instance: "10.0.0.1:8080",
        pod_labels: &[],
    }),
    Some(IdentityLabels {
        namespace: "shop",
        pod: "cart-2",
        container: "app",
        endpoint: "metrics",
        job: "cart",
        instance: "",
        pod_labels: &[],
    }),
    Some(IdentityLabels {
        namespace: "we\"ird\\ns",
        pod: "",
        container: "",
        endpoint: ":9090/metrics",
        job: "",
        instance: "",
        pod_labels: &[],
    }),
    Some(IdentityLabels {
        namespace: "shop",
        pod: "cart-3",
        container: "app",
        endpoint: "metrics",
        job: "cart",
        instance: "10.0.0.3:8080",
        pod_labels: &[],
    }),
];

/// What the generated bodies may hold.
pub struct Shape {
    pub names: &'static [&'static str],
    pub labels: &'static [&'static str],
    /// Kinds drawn, as indexes into [`Kind::ALL`].
    pub kinds: Range<u8>,
    /// HELP variants drawn ([`Fam::help`]).
    pub helps: Range<u8>,
    /// Whether `_seconds` families may have a UNIT (OpenMetrics).
    pub units: bool,
    pub series: Range<usize>,
    pub labels_per_series: Range<usize>,
    /// Valid bodies only: each family once, each label set once (labels sorted). Otherwise
    /// families and label sets may repeat, for the merge to reject or drop.
    pub valid: bool,
}

#[derive(Debug, Clone)]
pub struct Fam {
    /// Index into the shape's names.
    pub name: usize,
    pub kind: Kind,
    /// 0 none, 1 plain (before TYPE), 2 with escapes, 3 with quotes.
    pub help: u8,
    pub unit: bool,
    pub ts: Option<u32>,
    /// Label sets (index into the shape's labels, value) and sample values.
    pub series: Vec<(Vec<(usize, String)>, u32)>,
}

/// Families of `shape`, with label values drawn from `values`.
pub fn fam(shape: &Shape, values: impl Strategy<Value = String>) -> impl Strategy<Value = Fam> {
    let unit = if shape.units {
        any::<bool>().boxed()
    } else {
        Just(false).boxed()
    };
    (
        0..shape.names.len(),
        shape.kinds.clone().prop_map(|k| Kind::ALL[usize::from(k)]),
        shape.helps.clone(),
        unit,
        proptest::option::of(1u32..2_000_000_000),
        prop::collection::vec(
            (
                prop::collection::vec(
                    (0..shape.labels.len(), values),
                    shape.labels_per_series.clone(),
                ),
                0u32..1000,
            ),
            shape.series.clone(),
        ),
    )
        .prop_map(|(name, kind, help, unit, ts, series)| Fam {
            name,
            kind,
            help,
            unit,
            ts,
            series,
        })
}

pub fn fmt(om: bool) -> Format {
    if om {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// Writes families as a body, OpenMetrics if `om`, else text. A label named twice in a set
/// keeps its first value; an invalid shape's bodies may fail (repeated families, clashing
/// names) and are left out by the caller.
pub fn write(shape: &Shape, fams: &[Fam], om: bool) -> String {
    let mut out = String::new();
    let mut written = HashSet::new();
    for f in fams {
        if shape.valid && !written.insert(f.name) {
            continue;
        }
        let n = shape.names[f.name];
        let mut seen = HashSet::new();
        let series: Vec<(String, u32)> = f
            .series
            .iter()
            .filter_map(|(ls, v)| {
                let mut names = HashSet::new();
                let mut parts: Vec<&(usize, String)> =
                    ls.iter().filter(|(l, _)| names.insert(*l)).collect();
                if shape.valid {
                    parts.sort();
                }
                let s = parts
                    .iter()
                    .map(|(l, v)| format!("{}=\"{}\"", shape.labels[*l], escape(v)))
                    .collect::<Vec<_>>()
                    .join(",");
                (!shape.valid || seen.insert(s.clone())).then_some((s, *v))
            })
            .collect();
        let lbl = |s: &str, extra: &str| match (s.is_empty(), extra.is_empty()) {
            (true, true) => String::new(),
            (true, false) => format!("{{{extra}}}"),
            (false, true) => format!("{{{s}}}"),
            (false, false) => format!("{{{s},{extra}}}"),
        };
        let ts = |i: usize| match f.ts {
            Some(t) if om => format!(" {}", t as usize + i),
            Some(t) => format!(" {}", (t as usize + i) * 1000),
            None => String::new(),
        };
        let help = |fname: &str| match (f.help, om) {
            (0, _) => String::new(),
            (1, _) => format!("# HELP {fname} Help for {n}.\n"),
            (2, _) => format!("# HELP {fname} Help B \\\\ \\n.\n"),
            (_, true) => format!("# HELP {fname} Say \\\"hi\\\".\n"),
            (_, false) => format!("# HELP {fname} Say \"hi\".\n"),
        };
        // TYPE with HELP before or after it, and UNIT if `unit`.
        let meta = |fname: &str, t: &str, unit: bool| {
            let unit = if unit && om && f.unit && fname.ends_with("_seconds") {
                format!("# UNIT {fname} seconds\n")
            } else {
                String::new()
            };
            match f.help {
                1 => format!("{}# TYPE {fname} {t}\n{unit}", help(fname)),
                _ => format!("# TYPE {fname} {t}\n{}{unit}", help(fname)),
            }
        };
        let format = loupe_testkit::Format::from_om(om);
        match f.kind {
            Kind::Counter | Kind::CounterWithCreated => {
                let fname = if om {
                    n.to_string()
                } else {
                    format!("{n}_total")
                };
                out += &meta(&fname, f.kind.type_name(format), true);
                for (i, (s, v)) in series.iter().enumerate() {
                    out += &format!("{n}_total{} {v}{}\n", lbl(s, ""), ts(i));
                    if om && f.kind == Kind::CounterWithCreated {
                        out += &format!("{n}_created{} 1700000000.5{}\n", lbl(s, ""), ts(i));
                    }
                }
                if !om && f.kind == Kind::CounterWithCreated {
                    out += &format!(
                        "{}# TYPE {n}_created gauge\n",
                        help(&format!("{n}_created"))
                    );
                    for (i, (s, _)) in series.iter().enumerate() {
                        out += &format!("{n}_created{} 1700000000.5{}\n", lbl(s, ""), ts(i));
                    }
                }
            }
            Kind::Info if om => {
                out += &meta(n, f.kind.type_name(format), false);
                for (i, (s, _)) in series.iter().enumerate() {
                    out += &format!("{n}_info{} 1{}\n", lbl(s, ""), ts(i));
                }
            }
            Kind::Gauge | Kind::Untyped | Kind::Info => {
                // A text body has no info: its info families are gauges.
                let t = match f.kind {
                    Kind::Untyped => Kind::Untyped.type_name(format),
                    _ => Kind::Gauge.type_name(format),
                };
                out += &meta(n, t, true);
                for (i, (s, v)) in series.iter().enumerate() {
                    out += &format!("{n}{} {v}{}\n", lbl(s, ""), ts(i));
                }
            }
            Kind::Histogram | Kind::GaugeHistogram => {
                // A text body has no gaugehistogram: its gaugehistograms are histograms.
                let gauge = om && f.kind == Kind::GaugeHistogram;
                let t = if gauge {
                    Kind::GaugeHistogram
                } else {
                    Kind::Histogram
                }
                .type_name(format);
                out += &meta(n, t, true);
                let (sum, count) = if gauge {
                    ("_gsum", "_gcount")
                } else {
                    ("_sum", "_count")
                };
                for (i, (s, v)) in series.iter().enumerate() {
                    let half = v / 2;
                    out += &format!("{n}_bucket{} {half}{}\n", lbl(s, "le=\"0.5\""), ts(i));
                    out += &format!("{n}_bucket{} {v}{}\n", lbl(s, "le=\"+Inf\""), ts(i));
                    // Both orders of sum and count.
                    let sum = format!("{n}{sum}{} {v}.5{}\n", lbl(s, ""), ts(i));
                    let count = format!("{n}{count}{} {v}{}\n", lbl(s, ""), ts(i));
                    if i % 2 == 0 {
                        out += &(count + &sum);
                    } else {
                        out += &(sum + &count);
                    }
                }
            }
            Kind::Summary => {
                out += &meta(n, f.kind.type_name(format), true);
                for (i, (s, v)) in series.iter().enumerate() {
                    out += &format!("{n}{} {v}{}\n", lbl(s, "quantile=\"0.9\""), ts(i));
                    out += &format!("{n}_sum{} {v}{}\n", lbl(s, ""), ts(i));
                    out += &format!("{n}_count{} {v}{}\n", lbl(s, ""), ts(i));
                }
            }
        }
    }
    if om {
        out += "# EOF\n";
    }
    out
}

//! The exposition body generator: deterministic, lint-clean (promtool accepts its text bodies)
//! bodies of exactly [`Spec::series`] samples over counters, gauges, histograms and summaries,
//! with label values that look like real ones (routes, codes, zones, shards). The parameters say
//! how many families, how the series are shared between kinds, how many labels and how long the
//! identifying label values are, the format and the seed. [`Spec::pod`] is a node's pod as the
//! benchmarks and the promtool test see it, [`Spec::app`] what the test app serves.
//!
//! The agent's property tests draw their bodies with proptest strategies instead (random kinds,
//! metadata orders, nasty label values, timestamps, shapes meant to clash); they share this
//! module's vocabulary ([`Kind`], [`escape`]) but not its fixed layout.

use std::fmt::Write as _;
use std::ops::RangeInclusive;

use crate::Format;

/// The kinds of family a body can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    /// `untyped` in text, `unknown` in OpenMetrics.
    Untyped,
    Info,
    GaugeHistogram,
    /// A counter with `_created` samples (a separate gauge family in text).
    CounterWithCreated,
}

impl Kind {
    /// Every kind, in a fixed order (the property tests draw an index into it).
    pub const ALL: [Kind; 8] = [
        Kind::Counter,
        Kind::Gauge,
        Kind::Histogram,
        Kind::Summary,
        Kind::Untyped,
        Kind::Info,
        Kind::GaugeHistogram,
        Kind::CounterWithCreated,
    ];

    /// The word after `# TYPE name`.
    pub fn type_name(self, format: Format) -> &'static str {
        match (self, format) {
            (Kind::Counter | Kind::CounterWithCreated, _) => "counter",
            (Kind::Gauge, _) => "gauge",
            (Kind::Histogram, _) => "histogram",
            (Kind::Summary, _) => "summary",
            (Kind::Untyped, Format::Text) => "untyped",
            (Kind::Untyped, Format::OpenMetrics) => "unknown",
            (Kind::Info, _) => "info",
            (Kind::GaugeHistogram, _) => "gaugehistogram",
        }
    }
}

/// A label value escaped for both formats (`\\`, `\"`, `\n`).
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Sample lines in the body, exactly.
    pub series: usize,
    /// Families, the histogram and the summary family included. A kind whose share is too small
    /// for one group of series is left out.
    pub families: usize,
    /// Percent of the series in the histogram family (whole groups of `buckets` + 3 series).
    pub histogram_pct: usize,
    /// Percent of the series in the summary family (whole groups of 5 series).
    pub summary_pct: usize,
    /// Finite buckets per histogram (1 to 11), before `+Inf`.
    pub buckets: usize,
    /// Labels per series, the identifying one included; `le`, `quantile` and the extra label
    /// come on top.
    pub labels: RangeInclusive<usize>,
    /// Length of the identifying label value (a route or queue name ending in the series number).
    pub id_len: usize,
    pub format: Format,
    /// Seeds the label values and sample values drawn.
    pub seed: u64,
    /// Prefix of every family name.
    pub prefix: String,
    /// A label put first on every series.
    pub extra_label: Option<(String, String)>,
}

impl Spec {
    /// Pod number `pod` of a node: four counter and gauge families and a histogram of 11 buckets
    /// holding a fifth of the series, 3 to 6 labels, values drawn from the pod's own seed.
    pub fn pod(pod: usize, series: usize, format: Format) -> Spec {
        Spec {
            series,
            families: 5,
            histogram_pct: 20,
            summary_pct: 0,
            buckets: 11,
            labels: 3..=6,
            id_len: 18,
            format,
            seed: 0x9e37_79b9_7f4a_7c15 ^ (pod as u64 + 1).wrapping_mul(0x2545_f491),
            prefix: String::new(),
            extra_label: None,
        }
    }

    /// The test app's text body (`metrics-app --series N`): `app_` families, among them
    /// `app_queue_bytes` and a histogram of 4 buckets holding a tenth of the series.
    pub fn app(series: usize) -> Spec {
        Spec {
            series,
            families: 4,
            histogram_pct: 10,
            summary_pct: 0,
            buckets: 4,
            labels: 3..=6,
            id_len: 35,
            format: Format::Text,
            seed: 1,
            prefix: "app_".into(),
            extra_label: None,
        }
    }

    pub fn format(mut self, format: Format) -> Spec {
        self.format = format;
        self
    }

    pub fn extra_label(mut self, label: Option<(String, String)>) -> Spec {
        self.extra_label = label;
        self
    }
}

/// Namespace and name of pod `pod` of a node, shaped like a Deployment's pods.
pub fn pod_name(pod: usize) -> (String, String) {
    (
        format!("team-{}", pod % 7),
        format!("checkout-{pod}-5d8f7c9b4-x{pod:04}"),
    )
}

/// The body `spec` describes.
pub fn body(spec: &Spec) -> String {
    let mut r = Rng(spec.seed | 1);
    let mut out = String::with_capacity(spec.series * (spec.id_len + 100) + 256);
    let mut names = Names::default();
    for (index, (kind, groups)) in layout(spec).into_iter().enumerate() {
        let fam = Fam {
            spec,
            kind,
            name: names.next(kind, &spec.prefix),
            id: ID_LABELS[index % ID_LABELS.len()],
            labels: labels_of(spec, index),
        };
        fam.write(groups, &mut r, &mut out);
    }
    if spec.format.is_om() {
        out.push_str("# EOF\n");
    }
    out
}

const QUANTILES: [&str; 3] = ["0.5", "0.9", "0.99"];
const BUCKETS: [&str; 11] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
];

/// Families in body order with their number of groups (one series each for counters and gauges):
/// the counters and gauges, with the histogram and the summary after the first half of them.
fn layout(spec: &Spec) -> Vec<(Kind, usize)> {
    let hist_group = spec.buckets.clamp(1, BUCKETS.len()) + 3;
    let summary_group = QUANTILES.len() + 2;
    let hist = spec.series * spec.histogram_pct / 100 / hist_group;
    let summary = spec.series * spec.summary_pct / 100 / summary_group;
    let plain_series = spec.series - hist * hist_group - summary * summary_group;
    let others = usize::from(hist > 0) + usize::from(summary > 0);
    let plain = spec.families.saturating_sub(others).max(1);
    let mut out: Vec<(Kind, usize)> = (0..plain)
        .map(|j| {
            let kind = if j % 3 == 0 {
                Kind::Counter
            } else {
                Kind::Gauge
            };
            let n = plain_series / plain + usize::from(j < plain_series % plain);
            (kind, n)
        })
        .collect();
    let middle = plain.div_ceil(2);
    if summary > 0 {
        out.insert(middle, (Kind::Summary, summary));
    }
    if hist > 0 {
        out.insert(middle, (Kind::Histogram, hist));
    }
    out.retain(|(_, n)| *n > 0);
    out
}

/// Labels of family `index` besides the identifying one.
fn labels_of(spec: &Spec, index: usize) -> usize {
    let (lo, hi) = (*spec.labels.start(), *spec.labels.end());
    let total = lo + index % (hi.saturating_sub(lo) + 1);
    total.saturating_sub(1).min(VOCAB.len())
}

/// Identifying label of a family: name and the value's stem, which the series number completes.
const ID_LABELS: [(&str, &str); 5] = [
    ("handler", "/api/v1/catalog/resources/"),
    ("queue", "ingest-queue-"),
    ("route", "/api/v1/orders/"),
    ("pool", "heap-pool-"),
    ("peer", "svc-backend-"),
];
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const CODES: [&str; 5] = ["200", "201", "404", "500", "503"];
const ZONES: [&str; 3] = ["europe-west1-a", "europe-west1-b", "us-east2-c"];
const TIERS: [&str; 3] = ["gold", "silver", "bronze"];
/// The other labels, in the order a family takes them.
const VOCAB: [&str; 6] = ["method", "code", "zone", "tier", "shard", "tenant"];

fn vocab_value(label: &str, r: &mut Rng) -> String {
    match label {
        "method" => r.pick(&METHODS).into(),
        "code" => r.pick(&CODES).into(),
        "zone" => r.pick(&ZONES).into(),
        "tier" => r.pick(&TIERS).into(),
        "shard" => format!("storage-shard-{:03}", r.next() % 128),
        _ => format!("tenant-org-{:04}", r.next() % 1000),
    }
}

/// Family names per kind: stem, unit or `_total` suffix, HELP.
const COUNTERS: [(&str, &str, &str); 3] = [
    (
        "http_requests",
        "_total",
        "HTTP requests handled, by handler and outcome.",
    ),
    ("rpc_client_calls", "_total", "Outgoing RPCs."),
    ("jobs_processed", "_total", "Jobs done."),
];
const GAUGES: [(&str, &str, &str); 4] = [
    ("inflight_requests", "", "Requests being served right now."),
    ("queue", "_bytes", "Bytes waiting in each queue."),
    ("memory_used", "_bytes", "Used memory by pool."),
    ("worker_queue_depth", "", "Jobs waiting, per queue."),
];
const HISTOGRAMS: [(&str, &str, &str); 2] = [
    ("request_duration", "_seconds", "Time to answer a request."),
    ("response_size", "_bytes", "Size of the replies."),
];
const SUMMARIES: [(&str, &str, &str); 2] = [
    ("rpc_latency", "_seconds", "Time an RPC took."),
    ("gc_pause", "_seconds", "Garbage collection pauses."),
];

/// Hands out family names: the n-th family of a kind takes the kind's n-th name, numbered once
/// the names run out.
#[derive(Default)]
struct Names {
    used: [usize; 4],
}

/// A family's name: the sample name's stem (with `_total` for counters) and HELP.
struct Name {
    /// Text family name (counters end in `_total`).
    full: String,
    /// OpenMetrics family name (without `_total`).
    om: String,
    help: &'static str,
}

impl Names {
    fn next(&mut self, kind: Kind, prefix: &str) -> Name {
        let (slot, list): (usize, &[(&str, &str, &str)]) = match kind {
            Kind::Counter | Kind::CounterWithCreated => (0, &COUNTERS),
            Kind::Histogram | Kind::GaugeHistogram => (2, &HISTOGRAMS),
            Kind::Summary => (3, &SUMMARIES),
            _ => (1, &GAUGES),
        };
        let n = self.used[slot];
        self.used[slot] += 1;
        let (stem, suffix, help) = list[n % list.len()];
        let round = n / list.len();
        let stem = if round == 0 {
            format!("{prefix}{stem}")
        } else {
            format!("{prefix}{stem}_{round}")
        };
        let om = if suffix == "_total" {
            stem.clone()
        } else {
            format!("{stem}{suffix}")
        };
        Name {
            full: format!("{stem}{suffix}"),
            om,
            help,
        }
    }
}

struct Fam<'a> {
    spec: &'a Spec,
    kind: Kind,
    name: Name,
    id: (&'static str, &'static str),
    labels: usize,
}

impl Fam<'_> {
    fn write(&self, groups: usize, r: &mut Rng, out: &mut String) {
        let family = if self.spec.format.is_om() {
            &self.name.om
        } else {
            &self.name.full
        };
        let _ = writeln!(out, "# HELP {family} {}", self.name.help);
        let _ = writeln!(
            out,
            "# TYPE {family} {}",
            self.kind.type_name(self.spec.format)
        );
        let name = &self.name.full;
        for g in 0..groups {
            let labels = self.label_set(g, r);
            match self.kind {
                Kind::Histogram => histogram(name, &labels, self.spec.buckets, r, out),
                Kind::Summary => summary(name, &labels, r, out),
                Kind::Counter => {
                    let _ = writeln!(out, "{name}{{{labels}}} {}", r.next() % 1_000_000);
                }
                _ => {
                    let (a, b) = (r.next() % 100_000, r.next() % 100);
                    let _ = writeln!(out, "{name}{{{labels}}} {a}.{b}");
                }
            }
        }
    }

    /// `extra,id,vocab...` for group `g`, without braces.
    fn label_set(&self, g: usize, r: &mut Rng) -> String {
        let mut s = String::new();
        if let Some((k, v)) = &self.spec.extra_label {
            let _ = write!(s, "{k}=\"{}\",", escape(v));
        }
        let (id, stem) = self.id;
        let width = self.spec.id_len.saturating_sub(stem.len());
        let _ = write!(s, "{id}=\"{stem}{g:0width$}\"");
        for label in &VOCAB[..self.labels] {
            let _ = write!(s, ",{label}=\"{}\"", vocab_value(label, r));
        }
        s
    }
}

fn histogram(name: &str, labels: &str, buckets: usize, r: &mut Rng, out: &mut String) {
    let stem = name;
    let mut cumulative = 0;
    for le in &BUCKETS[..buckets.clamp(1, BUCKETS.len())] {
        cumulative += r.next() % 100;
        let _ = writeln!(out, "{stem}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    cumulative += r.next() % 10;
    let _ = writeln!(out, "{stem}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
    let ms = r.next() % 1000;
    let _ = writeln!(out, "{stem}_sum{{{labels}}} {}.{ms:03}", cumulative / 7);
    let _ = writeln!(out, "{stem}_count{{{labels}}} {cumulative}");
}

fn summary(name: &str, labels: &str, r: &mut Rng, out: &mut String) {
    let mut v = 0;
    for q in QUANTILES {
        v += r.next() % 300;
        let _ = writeln!(out, "{name}{{{labels},quantile=\"{q}\"}} 0.{v:03}");
    }
    let count = r.next() % 100_000;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}.{:03}", count / 9, v);
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// xorshift64: deterministic and cheap, enough for plausible values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests;

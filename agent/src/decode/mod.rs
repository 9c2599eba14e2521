//! Decode: the exposition codec. Exact, streaming parsing of Prometheus text 0.0.4 (and 1.0.0's
//! quoted names) and OpenMetrics 1.0, the protobuf exposition (`proto/`, the one with native histograms),
//! validation, and the merge of many pods' bodies into one node target. No I/O.
//!
//! # Parsing
//! [`validate`], [`prepare`] and [`merge`] run one parser (`parse/`) over a body's bytes, in layers as
//! Prometheus' `textparse` is: a lexer over bytes (`lex.rs`, `escape.rs`: names, label blocks,
//! numbers, escapes, hashes), a grammar per format (`text.rs`, `openmetrics.rs`) that turns each
//! line into its kind and tokens, and a family validator (`validate.rs`, with `histogram.rs`
//! and `series.rs`) that checks each line against the body's families. The result is an index
//! of offsets into the body (`index.rs`; per family: name, type, HELP, UNIT; per sample: where
//! its name, label block and line end are, and a hash of its series), never a copy of it. No
//! allocation happens per sample.
//!
//! - **OpenMetrics 1.0.0** is held to the specification and to every case of the OpenMetrics
//!   conformance suite (`agent/tests/openmetrics-conformance`): `# EOF` last, no blank lines,
//!   metadata before samples and once per family, families never interleaved or repeated,
//!   sample names that clash with another family's (`a_created` vs counter `a`) rejected,
//!   histogram/summary rules (`+Inf` bucket, ascending `le`, cumulative counts, `_count` equal to
//!   the `+Inf` bucket, `_sum`/`_count` together, no `_sum` with negative buckets), counter,
//!   info and stateset values, exemplars only on counter totals and buckets (≤128 characters of
//!   labels), timestamps in seconds that never go backwards within a series. Unknown escapes in
//!   label values and HELP (`\z`) are accepted and mean a literal backslash, as in the reference
//!   parsers; they are re-escaped (`\\z`) on output.
//! - **Text 0.0.4** is held to that format's rules as Prometheus' Go parser (expfmt) applies
//!   them: blanks between tokens and a trailing comma in label sets are allowed, comments are
//!   ignored, timestamps are integer milliseconds, escapes other than `\\`, `\"`, `\n` (label
//!   values) and `\\`, `\n` (HELP) are errors, HELP/TYPE come before a family's samples and once.
//!   Hexadecimal floats (which Go would accept) are rejected.
//!
//! - **Quoted (UTF-8) names** (text 1.0.0 and OpenMetrics: `{"a.b","c.d"="x"} 1`,
//!   `# TYPE "a.b" gauge`) are read in both text formats, as Prometheus 3 reads them: see below.
//!
//! Limits: a body must be smaller than 4 GiB (offsets are 32-bit) and a line may carry at most
//! 1024 labels. A body that fails is rejected whole: [`ParseError`] names the line, the column (bytes, from
//! 1) and the reason, and the body contributes nothing to the merge.
//!
//! # Merging rules
//! [`merge`] writes one body from many [`Source`]s by these rules:
//!
//! 1. **One family, one group.** Every family appears once, with one TYPE, at most one HELP and
//!    (OpenMetrics) at most one UNIT, followed by all its samples. Histogram and summary samples
//!    (`_bucket`, `_sum`, `_count`, `_created`, `_gsum`, `_gcount`) stay with their family.
//!    Families are sorted by output name (byte order); within a family, samples keep source order
//!    and, within a source, body order.
//! 2. **Identity.** The source's non-empty identity labels ([`IdentityLabels`]) `namespace`,
//!    `pod`, `container`, `endpoint`, `job`, `instance`, then the pod's copied labels (sorted)
//!    are added to every sample (first, in that order; encoded once per source). An app label
//!    with one of those names and a non-empty value is renamed `exported_<name>`; if that name
//!    is taken too, the prefix is added again (`exported_exported_<name>`), as Prometheus does
//!    with `honor_labels: false`. An app's `job` and `instance` labels, which Prometheus sets for
//!    the target and `honor_labels: true` would let the app override, are renamed the same way
//!    (`exported_job`, `exported_instance`) even where the identity has none of its own (a pod
//!    without a known IP has no `instance`: the node target's stands). The parser marks lines
//!    with the fixed names; lines whose label block holds a copied label's name are found by a
//!    substring search when the source is rendered. An app label with an empty value counts as absent. A
//!    source without identity (the agent's own series) is added as it is. Family names starting
//!    `loupe_` are loupe's own: an app's are left out (the app's other families stay), counted in
//!    `loupe_reserved_families_dropped_total`.
//! 3. **TYPE conflicts: the most sources win.** The type most sources declare for a family wins,
//!    each source voting once (with its first block's type); a tie goes to the type of the
//!    earliest source among the tied. So one pod cannot take a family from the others by
//!    declaring another type first. A source whose family has another type contributes none of
//!    that family's samples, and each such source counts once in
//!    `loupe_family_conflicts_total`. Sample names clash across families too (counter `a` owns
//!    `a_total` and `a_created`; histogram `h` owns `h_bucket`, ...): of two clashing output
//!    families the one more sources have is kept (a tie: the one whose first source comes
//!    first, then the smaller name), and the other is dropped whole and counted the same way.
//! 4. **HELP and UNIT conflicts: the first one wins.** The first source with a HELP (UNIT)
//!    provides it; a later source with a different one still contributes its samples and counts
//!    once in `loupe_family_conflicts_total`.
//! 5. **Duplicates.** A series (name and label set, identity labels included, label order
//!    ignored) that would appear twice is written once, the first occurrence, and every other
//!    occurrence counts in `loupe_duplicate_series_total`. This includes OpenMetrics' repeated
//!    samples of one series with increasing timestamps: the earliest is kept. Two sources with
//!    the same identity should not happen; if they do, in OpenMetrics output the later one's
//!    histograms and summaries are dropped whole (as duplicates), since OpenMetrics does not
//!    allow a histogram in pieces.
//! 6. **Formats.** The output is text 0.0.4 (1.0.0 when asked, the same lines), OpenMetrics
//!    1.0.0 or protobuf ([`Answer::negotiate`]), names in the scrape's escaping scheme,
//!    whatever the sources' formats, keeping the series names Prometheus would store:
//!    - OpenMetrics → text: counter `a` becomes counter `a_total` plus gauge `a_created`;
//!      histogram/summary `_created` samples become gauge `<name>_created`; gaugehistogram `g`
//!      becomes histogram `g` (buckets) plus gauges `g_gcount`, `g_gsum`; info `i` becomes gauge
//!      `i_info`; stateset becomes gauge; unknown becomes untyped; UNIT and exemplars are
//!      dropped; timestamps go from seconds to milliseconds (rounded).
//!    - text → OpenMetrics: counter `x_total` becomes counter `x`, and a gauge `x_created` of
//!      the same body (as client libraries write it) becomes that counter's `_created` samples;
//!      untyped becomes unknown; timestamps go from milliseconds to seconds (exact decimal). A
//!      histogram's or summary's `_created` gauge cannot be folded back (OpenMetrics wants it
//!      inside each histogram's group) and clashes with the histogram: it is dropped (rule 3). A text family that breaks an
//!      OpenMetrics rule (a counter not named `*_total` or with a negative value, a histogram
//!      without `+Inf` bucket, ...) is written as `unknown` families, one per sample name, so
//!      that the output stays valid and the series keep their names.
//!    - `# EOF` ends every OpenMetrics output. Whether to gzip is the HTTP layer's choice; how
//!      is the engine's (below).
//!    - **Protobuf** (`merge/protobuf.rs`): every family is one length-prefixed `MetricFamily`
//!      whose metrics are the sources' own, identity labels first (rule 2), native
//!      histograms, exemplars and created timestamps as the app sent them (a protobuf body's
//!      metrics are read in place, `proto/view.rs`, and their fields other than labels copied
//!      from it as they came). Text bodies become
//!      the families Prometheus would store their series under (`proto/from_text.rs`: an
//!      OpenMetrics counter `a` is counter `a_total` with its `_created` as created timestamp,
//!      histogram and summary samples one metric per label set, info `i` gauge `i_info`). A
//!      protobuf body served as text or OpenMetrics is first written as the OpenMetrics body
//!      its families make (`proto/to_text.rs`), so the rules above apply to it unchanged: a
//!      native histogram with classic buckets is served with them, one without is left out
//!      (text formats cannot carry it) and counted.
//!
//! The output is always a valid body in the chosen format, whatever the inputs.
//!
//! # UTF-8 names and escaping schemes
//! A name outside the legacy set (`[a-zA-Z_:][a-zA-Z0-9_:]*`, labels without `:`) reaches a
//! scraper in the scheme its `Accept` asks for ([`Answer::negotiate`], as expfmt:
//! `underscores` when it names none), in every output format: [`Escaping`] (`escaping.rs`),
//! which writes legacy names as they are in every scheme, as prometheus/common's
//! `EscapeMetricFamily` does. The text engine reads and writes legacy names only, on its fast
//! path; names outside the set go through it as legacy names:
//! - a text body with quoted names fails the lexer and is rewritten (`parse/quoted.rs`, with the
//!   grammar's strictness and errors placed in the original) as the body with legacy names the
//!   scheme makes, then parsed like any body; a protobuf body's families are written so by
//!   `proto::to_openmetrics`, protobuf output escapes its families' names;
//! - for `allow-utf-8` the names are *marked* (`escaping::Marker`: an injective legacy spelling
//!   with a marker absent from the body), and the rendering turns them back, quoted where they
//!   are not legacy (`{"a.b",namespace="x",...} 1`); the header lines quote them, the writer
//!   compares such lines' series;
//! - names that a scheme makes equal are one name: one family (the first metadata wins, the
//!   merging rules apply), one label per line (the first kept).
//!
//! A rendering records the scheme it was made for when its body has such names ([`Rendered`]'s
//! `fits`); a body with legacy names only renders once per format for every scheme.
//!
//! # Preparing and rendering bodies: one merge engine
//! A body is checked when it arrives ([`validate`], or [`prepare`], which also keeps the index
//! beside the body), and rendered once per output format ([`render_source`], bounded by the
//! caller with [`render_within`]): one block of output lines per output family and type, the
//! identity labels spliced in (rule 2), the conversion done (rule 6), the duplicates within the
//! body left out (rule 5), each block with the TYPE/HELP/UNIT its source families bring. A
//! rendering costs about 1.6x to 1.9x its body in memory (BENCHMARKS.md).
//!
//! Every merge is the same engine (`merge/`), whatever the output and however the sources come:
//! a [`Source`] is an identity and a body, with its index if it was prepared and its rendering
//! if one was made; what is missing (or does not fit: [`Rendered::fits`]) is made by the merge,
//! so a body merged without preparation is parsed, rendered and merged like any other.
//! 1. **Plan** (`merge/plan.rs`): from the renderings' family summaries alone (names, types,
//!    HELP, UNIT, no sample), decide for every output family, in name order, its TYPE, HELP and
//!    UNIT, which source contributes which block (rules 3 and 4), which families are dropped
//!    for clashing sample names (rule 3), and whether its series may meet across sources
//!    (rule 5): only when two sources share an identity, or when a block whose app labels are
//!    named like identity labels (renamed `exported_*`, into what another source's identity
//!    may be) meets a source whose identity does not differ from it in a label both set (the
//!    agent's own series, identities with empty labels). Sources whose identities differ in a
//!    label both set never write the same series.
//! 2. **Write** (`merge/write.rs`): the headers from the plan, and each source's block as it
//!    is; in a family whose series may meet, the blocks' lines one by one, the first of each
//!    series kept (the same rule 5 code as within a body, `merge/dedup.rs`). The output is a
//!    chunk list: the headers in one owned buffer and each block a refcounted slice of the
//!    stored rendering (`bytes::Bytes`). `/metrics` sends that list without joining it, so a
//!    scrape holds no output-sized buffer; there is no one-buffer variant (it held fresh
//!    renderings and their copy at once: 2x the output).
//! 3. **gzip** ([`merge_gzip`], `merge/gzip.rs`): the same plan and writer into another sink,
//!    whose chunks make one gzip member: its deflate stream is a run of raw deflate segments
//!    compressed apart, each ended by a sync flush and started afresh (as pigz does), the CRC-32
//!    combined from theirs. A rendering's blocks of at least [`MIN_MEMBER_BLOCK`] bytes are
//!    compressed once, one segment each at [`MEMBER_LEVEL`], and kept beside it ([`GzipBlocks`],
//!    made by the store for the formats scrapers ask with gzip); each picked block that has one
//!    is sent as that segment. The rest (headers, smaller blocks, lines picked one by one,
//!    sources rendered by the merge) is compressed at the scrape at [`SCRAPE_LEVEL`], one
//!    segment per run of such pieces. Not several gzip members (RFC 1952 2.2 allows them, Go and
//!    Python read them): curl, browsers and reqwest stop after the first. Why these sizes and
//!    levels, and what the answer weighs against one gzip stream of the same bytes:
//!    BENCHMARKS.md.
//!
//! # Why not `prometheus-parse`
//! The crate `prometheus-parse` (which was asked for) matches lines with regular expressions,
//! splits label sets on `,` and `=`, and skips lines it cannot read. It therefore corrupts label
//! values containing `,`, `=`, `}` or `#` (all legal inside quotes), silently drops what it does
//! not understand instead of rejecting the body, knows neither OpenMetrics' `# EOF`, `UNIT`,
//! `info`, `stateset`, `gaugehistogram` nor exemplars, and builds an owned object per sample.
//! loupe relies on it nowhere: this module has its own lexer over bytes. `prometheus-parse` is
//! kept as a dev-dependency only, as a differential oracle in the tests on inputs inside its
//! grammar (label values without those characters), and as the baseline of the benchmark.

mod escaping;
mod limits;
mod merge;
mod negotiate;
mod parse;
pub mod proto;

/// The parser's byte-level layer, which the merge shares: lexing, escapes, hashes.
mod lex {
    pub(super) use super::parse::escape::{unescape, write_escaped, write_quoted, Escaped};
    pub(super) use super::parse::lex::*;
}

pub use escaping::Escaping;
pub(crate) use escaping::{is_legacy, is_legacy_label};
pub use limits::{check_labels, LabelExcess, LabelLimits};

// A family's header lines, for expose's own series (the store/expose restructuring).
#[allow(unused_imports)]
pub(crate) use merge::write_header;
pub use merge::{merge, render_source, render_within, write_label_set, Rendered, Source};
#[cfg(feature = "agent")]
pub use merge::{merge_gzip, GzipBlocks, MEMBER_LEVEL, MIN_MEMBER_BLOCK, SCRAPE_LEVEL};

crate::telemetry::counter!(
    pub FAMILY_CONFLICTS,
    "loupe_family_conflicts_total",
    "Sources whose family disagreed with an earlier source's TYPE, HELP or UNIT, or whose family clashed with another family's sample names; see the decode module's merging rules.",
);
crate::telemetry::counter!(
    pub RESERVED_FAMILIES,
    "loupe_reserved_families_dropped_total",
    "App families named loupe_* left out (the prefix is loupe's own); counted once per rendering of the body.",
);
/// Family names only loupe's own series may use.
pub const RESERVED_PREFIX: &[u8] = b"loupe_";
crate::telemetry::counter!(
    pub DUPLICATE_SERIES,
    "loupe_duplicate_series_total",
    "Samples dropped from the merged target because their series was already written.",
);
crate::telemetry::counter!(
    pub RENDERED_OVERSIZE,
    "loupe_rendered_oversize_total",
    "Bodies not rendered at ingest because their rendering would pass the store's bound (a multiple of the body's size); they are rendered at every scrape instead.",
);

/// The `Accept` loupe asks apps with: the one Prometheus 3 sends with native histograms on
/// (protobuf first), so apps answer loupe as they would answer Prometheus and native histograms
/// come along, with `escaping=allow-utf-8` on every range (protobuf's too, which Prometheus
/// leaves without: expfmt takes the scheme of the ranges up to the one it answers): apps send
/// their names as they are, and loupe escapes them as each scraper asks ([`Escaping`]).
pub const ASK_APPS: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
    /// The delimited protobuf exposition (`io.prometheus.client.MetricFamily`), the only one
    /// with native histograms.
    Protobuf,
}

impl Format {
    /// The format of an app's response body, from its `Content-Type` (as Prometheus picks its
    /// parser): `application/openmetrics-text` is OpenMetrics, anything else is text.
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        negotiate::from_content_type(content_type)
    }

    /// The format to answer a scraper with, from its `Accept` header ([`Answer::negotiate`]).
    pub fn negotiate(accept: Option<&str>) -> Format {
        negotiate::negotiate(accept).format
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Protobuf => proto::CONTENT_TYPE,
        }
    }
}

/// What a scraper is answered with, from its `Accept` header: a format and the escaping scheme
/// for names outside the legacy set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Answer {
    pub format: Format,
    pub escaping: Escaping,
    /// `text/plain; version=1.0.0` was asked for: text 0.0.4's lines (names outside the legacy
    /// set quoted, as client libraries write them in 0.0.4 too) under 1.0.0's Content-Type.
    pub text_1: bool,
}

impl Answer {
    /// As Prometheus' client libraries negotiate (`expfmt.NegotiateAccept`): highest q first,
    /// text 0.0.4 when nothing else matches (no `Accept`, `*/*`); `text/plain;version=1.0.0` is
    /// its own answer. The escaping scheme is the last `escaping=` read up to the winning
    /// range, `underscores` without one.
    pub fn negotiate(accept: Option<&str>) -> Answer {
        negotiate::negotiate(accept)
    }

    /// The `Content-Type`, with `escaping=` as expfmt writes it (appended to every format).
    pub fn content_type(&self) -> String {
        let format = match (self.format, self.text_1) {
            (Format::Text, true) => "text/plain; version=1.0.0; charset=utf-8",
            (f, _) => f.content_type(),
        };
        format!("{format}; escaping={}", self.escaping.name())
    }
}

/// Why a body was rejected, and where: a line and column in a text body, a byte offset in a
/// protobuf body (whose reason names the family).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", match byte { Some(b) => format!("byte {b}: "), None => format!("line {line}, column {column}: ") })]
pub struct ParseError {
    /// From 1; 0 in a protobuf body.
    pub line: usize,
    /// Byte column, from 1; 0 in a protobuf body.
    pub column: usize,
    /// Offset from the body's start, in a protobuf body.
    pub byte: Option<usize>,
    pub reason: String,
}

impl ParseError {
    /// A protobuf body's error at byte `offset`, in family `family` when it is known.
    pub(crate) fn at_byte(offset: usize, family: Option<&str>, reason: &str) -> ParseError {
        ParseError {
            line: 0,
            column: 0,
            byte: Some(offset),
            reason: match family {
                Some(f) => format!("family {f:?}: {reason}"),
                None => reason.to_string(),
            },
        }
    }

    fn at(body: &[u8], pos: usize, reason: &str) -> ParseError {
        let pos = pos.min(body.len());
        let line_start = body[..pos]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1);
        let line = body[..pos].iter().filter(|&&c| c == b'\n').count() + 1;
        ParseError {
            line,
            column: pos - line_start + 1,
            byte: None,
            reason: reason.to_string(),
        }
    }
}

/// What a valid body holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub samples: usize,
    pub families: usize,
}

/// Checks a whole body. A protobuf body's `samples` are its metrics (a histogram is one). A
/// text body may have quoted (UTF-8) names.
pub fn validate(body: &[u8], format: Format) -> Result<Summary, ParseError> {
    if format == Format::Protobuf {
        let families = proto::read(body)?;
        return Ok(Summary {
            samples: families.iter().map(|f| f.metrics.len()).sum(),
            families: families.len(),
        });
    }
    let (summary, _) = parse::with_quoted(body, format, Escaping::Underscores, |b, _| {
        parse::parse(b, format).map(|p| Summary {
            samples: p.samples.len(),
            families: p.families.len(),
        })
    })?;
    Ok(summary)
}

/// A body's checked index, kept beside the body (e.g. in the store, from the time the body
/// arrived) so that a merge ([`Source::prepared`]) need not parse it again. It holds offsets
/// into the body (about 32 bytes per sample), never a copy of it, and is only valid with the very
/// body it was prepared from.
#[derive(Clone, Debug)]
pub struct Prepared {
    format: Format,
    len: usize,
    families: Vec<parse::FamilyAt>,
    samples: Vec<parse::SampleRef>,
    /// The body is a text body's quoted names rewritten in this scheme ([`prepare_escaped`]).
    escaped: Option<Escaping>,
    /// The marker of those names, for `allow-utf-8`.
    marker: Option<escaping::Marker>,
}

impl Prepared {
    pub fn summary(&self) -> Summary {
        Summary {
            samples: self.samples.len(),
            families: self.families.len(),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The scheme the body's quoted names were rewritten in; `None` when it had none.
    pub fn escaped(&self) -> Option<Escaping> {
        self.escaped
    }

    /// The index as the parser left it, over `body` (which must be the body it was made from).
    pub(crate) fn parsed<'a>(&'a self, body: &'a [u8]) -> parse::Parsed<'a> {
        parse::Parsed {
            body,
            format: self.format,
            families: self.families.iter().map(|f| f.family(body)).collect(),
            samples: std::borrow::Cow::Borrowed(&self.samples),
        }
    }

    /// Heap bytes held by the index.
    pub fn index_bytes(&self) -> usize {
        self.samples.capacity() * std::mem::size_of::<parse::SampleRef>()
            + self.families.capacity() * std::mem::size_of::<parse::FamilyAt>()
    }
}

/// Checks a whole body, like [`validate`], and keeps its index for a merge
/// ([`Source::prepared`]).
pub fn prepare(body: &[u8], format: Format) -> Result<Prepared, ParseError> {
    let p = parse::parse(body, format)?;
    let families = p
        .families
        .iter()
        .map(|f| parse::FamilyAt::from_family(body, f))
        .collect();
    let mut samples = p.samples.into_owned();
    samples.shrink_to_fit();
    Ok(Prepared {
        format,
        len: body.len(),
        families,
        samples,
        escaped: None,
        marker: None,
    })
}

/// [`prepare`] for a body that may have quoted (UTF-8) names: such a body is rewritten with
/// the legacy names `escaping` makes (for `allow-utf-8`, marked, and turned back when
/// rendered), and the rewrite is returned with the index, which points into it. `None` when the
/// body had no quoted name (the index points into `body`, and is the same for every scheme).
pub fn prepare_escaped(
    body: &[u8],
    format: Format,
    escaping: Escaping,
) -> Result<(Option<Vec<u8>>, Prepared), ParseError> {
    let (mut prepared, rewritten) =
        parse::with_quoted(body, format, escaping, |b, _| prepare(b, format))?;
    let Some(rewritten) = rewritten else {
        return Ok((None, prepared));
    };
    prepared.escaped = Some(escaping);
    prepared.marker = rewritten.marker;
    Ok((Some(rewritten.body), prepared))
}

/// Who a body belongs to: the labels a direct scrape of the pod's endpoint would have given its
/// series (rule 2). An empty value omits that label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityLabels<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    pub endpoint: &'a str,
    /// The endpoint's `job` and `instance` (`podIP:port`), as Prometheus' target labels.
    pub job: &'a str,
    pub instance: &'a str,
    /// The pod's labels copied by `--pod-labels`: sanitised names, sorted, none named like a
    /// label above.
    pub pod_labels: &'a [(String, String)],
}

/// The fixed identity labels, in output order; the pod's copied labels follow them.
pub const IDENTITY_NAMES: [&str; 6] = [
    "namespace",
    "pod",
    "container",
    "endpoint",
    "job",
    "instance",
];

impl<'a> IdentityLabels<'a> {
    /// The fixed labels' values, in [`IDENTITY_NAMES`] order, empty ones included.
    pub(crate) fn fixed(&self) -> [&'a str; 6] {
        [
            self.namespace,
            self.pod,
            self.container,
            self.endpoint,
            self.job,
            self.instance,
        ]
    }

    /// Every label in output order, empty ones included.
    pub fn labels(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        IDENTITY_NAMES.into_iter().zip(self.fixed()).chain(
            self.pod_labels
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
        )
    }
}

/// What a merge dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    pub family_conflicts: u64,
    /// App families named `loupe_*`, left out (rule 2).
    pub reserved_families: u64,
    pub duplicate_series: u64,
    /// Sources rejected whole, by index into the `sources` given to [`merge`].
    pub rejected: Vec<(usize, ParseError)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_display_names_line_and_column() {
        let e = validate(b"a 1\nb{x=1} 2\n", Format::Text).unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.column, 5);
        assert!(e.to_string().starts_with("line 2, column 5: "), "{e}");
    }

    #[test]
    fn validate_counts() {
        let s = validate(
            b"# TYPE a counter\na_total 1\na_created 2\n# TYPE b gauge\nb 1\n# EOF\n",
            Format::OpenMetrics,
        )
        .unwrap();
        assert_eq!(
            s,
            Summary {
                samples: 3,
                families: 2
            }
        );
    }
}

//! Ingest: the step between capture/fetch and the store. A reply (observed or fetched) becomes a
//! checked, rendered [`Snapshot`], or the [`TargetError`] that says why the target is down.
//! No I/O, no store: the caller (`collect`, the stage after) records what comes out.
//!
//! A new limit on bodies (say, on samples) goes here: check it in [`check`] and give it its
//! [`TargetError::Limit`] reason; the store, `/targets` and the log then carry it as they are.

use crate::capture::probe::ProbeError;
use crate::decode::{self, Escaping, Format, ParseError, Rendered};
use crate::discover::Identity;
use crate::fetch::{FetchError, Fetched};
use crate::memory::{Budget, Reservation, HELD_FACTOR};
use crate::resolve::ResolveError;
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Why a target is down: the reason `/targets`, `loupe status` and the log give.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TargetError {
    /// The pod's network namespace could not be found.
    #[error("{0}")]
    Resolve(Arc<ResolveError>),
    /// The namespace was found but the probe could not be attached there.
    #[error("attaching the probe in {}: {source}", path.display())]
    Attach {
        path: PathBuf,
        source: Arc<ProbeError>,
    },
    /// Asking the app failed before a status came back (connection, timeout, HTTP error).
    #[error("{0}")]
    Fetch(Arc<FetchError>),
    /// The app answered with a status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body is not a valid exposition.
    #[error("unparsable body: {0}")]
    Parse(ParseError),
    /// The body passed one of loupe's bounds.
    #[error("{0}")]
    Limit(Limit),
}

/// A bound a body passed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Limit {
    #[error("body larger than {limit} bytes")]
    Body { limit: usize },
    #[error("the body exceeds {limit} bytes once decoded")]
    Decoded { limit: usize },
    #[error("body_size_limit exceeded: {found} bytes, above {limit}")]
    BodySize { limit: usize, found: usize },
    #[error("sample_limit exceeded: {found} samples, above {limit}")]
    Samples { limit: usize, found: usize },
    #[error("label_limit exceeded: a series of {metric} has {found} labels, above {limit}")]
    Labels {
        limit: usize,
        metric: String,
        found: usize,
    },
    #[error("label_name_length_limit exceeded: a label name of {metric} has {found} bytes, above {limit}")]
    LabelNameLength {
        limit: usize,
        metric: String,
        found: usize,
    },
    #[error("label_value_length_limit exceeded: a label value of {metric} has {found} bytes, above {limit}")]
    LabelValueLength {
        limit: usize,
        metric: String,
        found: usize,
    },
    #[error(transparent)]
    Memory(#[from] crate::memory::Exceeded),
}

/// Where a body is admitted: the node's budget, and what the target's current body holds (freed
/// when the new one replaces it).
#[derive(Clone, Copy, Debug)]
pub struct Intake<'a> {
    pub budget: &'a Budget,
    pub freeing: usize,
}

crate::telemetry::counter!(
    pub LIMITS_EXCEEDED,
    "loupe_target_limit_exceeded_total",
    "Bodies refused for passing a scrape limit (sample_limit, label_limit, ...); the endpoint is down with the limit named.",
);

crate::telemetry::counter!(
    pub NATIVE_ONLY_OMITTED,
    "loupe_native_histograms_omitted_total",
    "Native histograms without classic buckets in protobuf bodies that arrived: served to protobuf scrapers, left out for text and OpenMetrics ones (those formats cannot carry them). Per target: `loupe status`.",
);

/// The scrape limits in force for one endpoint, as Prometheus names and means them (0: none):
/// the agent's defaults (`--sample-limit`, ...), with the pod's own over them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub sample_limit: usize,
    /// Labels of a series as Prometheus stores it: its name, the app's labels, loupe's identity
    /// labels, and the `job` and `instance` the scrape adds.
    pub label_limit: usize,
    pub label_name_length_limit: usize,
    /// Bytes as written (escapes included).
    pub label_value_length_limit: usize,
    /// Bytes of the body after decompression.
    pub body_size_limit: usize,
}

impl Limits {
    /// These defaults with `pod`'s own limits over them.
    pub fn for_pod(&self, pod: &crate::discover::Limits) -> Limits {
        Limits {
            sample_limit: pod.sample_limit.unwrap_or(self.sample_limit),
            label_limit: pod.label_limit.unwrap_or(self.label_limit),
            label_name_length_limit: pod
                .label_name_length_limit
                .unwrap_or(self.label_name_length_limit),
            label_value_length_limit: pod
                .label_value_length_limit
                .unwrap_or(self.label_value_length_limit),
            body_size_limit: pod.body_size_limit.unwrap_or(self.body_size_limit),
        }
    }

    /// The body within every limit, or the first it passes.
    fn check(
        &self,
        body: &[u8],
        prepared: &decode::Prepared,
        identity: Option<&Identity>,
    ) -> Result<(), Limit> {
        let samples = prepared.summary().samples;
        if self.sample_limit > 0 && samples > self.sample_limit {
            return Err(Limit::Samples {
                limit: self.sample_limit,
                found: samples,
            });
        }
        // The identity labels, and the node target's `job` and `instance` where the identity
        // has none of its own.
        let extra = identity.map_or(2, |i| {
            i.labels().labels().filter(|(_, v)| !v.is_empty()).count()
                + usize::from(i.job.is_empty())
                + usize::from(i.instance.is_empty())
        });
        let label_limits = decode::LabelLimits {
            labels: self.label_limit,
            extra,
            name_length: self.label_name_length_limit,
            value_length: self.label_value_length_limit,
        };
        decode::check_labels(body, prepared, label_limits).map_err(|excess| match excess {
            decode::LabelExcess::Labels { metric, found } => Limit::Labels {
                limit: self.label_limit,
                metric,
                found,
            },
            decode::LabelExcess::NameLength { metric, found } => Limit::LabelNameLength {
                limit: self.label_name_length_limit,
                metric,
                found,
            },
            decode::LabelExcess::ValueLength { metric, found } => Limit::LabelValueLength {
                limit: self.label_value_length_limit,
                metric,
                found,
            },
        })
    }
}

impl From<ResolveError> for TargetError {
    fn from(e: ResolveError) -> Self {
        TargetError::Resolve(Arc::new(e))
    }
}

impl From<FetchError> for TargetError {
    fn from(e: FetchError) -> Self {
        use crate::content::ContentError;
        match e {
            FetchError::Status(status) => TargetError::Status(status),
            FetchError::TooLarge { limit } => TargetError::Limit(Limit::Body { limit }),
            FetchError::Content(ContentError::TooLarge { limit }) => {
                TargetError::Limit(Limit::Decoded { limit })
            }
            e => TargetError::Fetch(Arc::new(e)),
        }
    }
}

/// Where a result came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Observed on the pod's loopback, answering some other client.
    Observed,
    /// Asked for by loupe itself.
    Fetched,
    /// No reply at all: the target's namespace could not be resolved or attached.
    Unresolved,
}

impl Origin {
    /// The `source` of `/targets` and of `loupe_target_info`: where a reply came from, `None`
    /// when there was no reply.
    pub fn source(self) -> Option<&'static str> {
        match self {
            Origin::Observed => Some("observed"),
            Origin::Fetched => Some("fetched"),
            Origin::Unresolved => None,
        }
    }
}

/// The latest result of a target, good or not.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub at: Instant,
    pub origin: Origin,
    /// How long the request took (fetched), or zero when only the reply was observed.
    pub duration: Duration,
    pub result: Result<Arc<Snapshot>, TargetError>,
}

/// The formats (and encoding) scrapers ask for, so that bodies are rendered for them when they
/// arrive, and compressed (gzip segments) when scrapers ask for gzip (the others at the first
/// scrape that asks). Owned by the server, which marks each scrape's format and encoding
/// ([`Wanted::mark`]); ingest reads it. Today: those of the latest scrape.
#[derive(Clone, Debug, Default)]
pub struct Wanted(Arc<AtomicU8>);

/// [`Wanted`]'s bit for gzip, beside the format's number.
const WANTED_GZIP: u8 = 4;

impl Wanted {
    /// Records the format a scraper asked for, and whether it asked for gzip.
    pub fn mark(&self, format: Format, gzip: bool) {
        let v = match format {
            Format::Text => 0,
            Format::OpenMetrics => 1,
            Format::Protobuf => 2,
        };
        let v = if gzip { v | WANTED_GZIP } else { v };
        self.0.store(v, Ordering::Relaxed);
    }

    /// The format to render eagerly.
    pub fn format(&self) -> Format {
        match self.0.load(Ordering::Relaxed) & !WANTED_GZIP {
            0 => Format::Text,
            1 => Format::OpenMetrics,
            _ => Format::Protobuf,
        }
    }

    /// Whether to compress that rendering's blocks as gzip segments eagerly.
    pub fn gzip(&self) -> bool {
        self.0.load(Ordering::Relaxed) & WANTED_GZIP != 0
    }
}

crate::telemetry::counter!(
    pub GZIP_BLOCKS_REFUSED,
    "loupe_gzip_blocks_refused_total",
    "Renderings whose compressed blocks (gzip segments) did not fit the memory budget: their blocks are compressed at every gzip scrape instead.",
);

/// A rendering's compressed blocks (gzip segments) and what they hold of the budget.
#[derive(Debug)]
struct Members {
    members: decode::GzipBlocks,
    held: Reservation,
}

/// A validated body with its merge index, made once when the body arrives, and its renderings
/// for the merged target (`decode::render_source`: every sample line with the target's identity
/// labels, grouped by family), so that a scrape only decides the merging rules per family and
/// sends slices of these blocks (`decode::merge`), copying none of them.
///
/// Memory: the index is about 32 bytes per sample; a rendering about 1.6x to 1.9x the body (the
/// identity labels repeat on every line), bounded at [`RENDERED_LIMIT_FACTOR`] times the body
/// (plus 64 KiB): a body whose rendering would be larger is rendered at every scrape instead,
/// and counted in `loupe_rendered_oversize_total`. The format scrapers ask for ([`Wanted`]) is
/// rendered when the body arrives, the other one at the first scrape that asks for it; both go
/// with the snapshot when the next body replaces it.
///
/// A protobuf body is kept as it came (for protobuf scrapers, native histograms and all) and as
/// the OpenMetrics body its families make (`decode::proto::to_openmetrics`), which is `body`:
/// limits, `loupe status` and the text renderings read that one.
///
/// Names outside the legacy set (a text body's quoted names, a protobuf body's UTF-8 names) are
/// written in `body` and the renderings with the `underscores` escaping, what scrapers get
/// unless they ask for another scheme; a text body with quoted names is kept as it came too
/// (`original`). For `allow-utf-8` (Prometheus 3's default) such a body has its own renderings,
/// made from the body as it came at the first scrape that asks, each holding its share of the
/// budget (not kept when it does not fit); a scrape asking for `dots` or `values` gets it
/// rendered by the merge ([`Snapshot::source`]). A body whose names are all legacy, which no
/// scheme changes, has one rendering per format for every scheme.
///
/// gzip: for a format scrapers ask with gzip, the rendering's blocks of at least
/// `decode::MIN_MEMBER_BLOCK` bytes are also kept compressed, one raw deflate segment each
/// (`decode::GzipBlocks`, about 0.06x the rendering), so that a gzip scrape sends them as they
/// are inside its one gzip member (`decode::merge_gzip`). They are made when the body arrives if the latest scrape asked
/// for gzip ([`Wanted::gzip`]), else at the first gzip scrape in that format; they hold their own
/// share of the budget, and when that does not fit they are not kept (the scrape compresses
/// those blocks) and counted in `loupe_gzip_blocks_refused_total`.
#[derive(Debug)]
pub struct Snapshot {
    /// The body in a text format (a protobuf body's families as OpenMetrics).
    pub body: Bytes,
    pub prepared: decode::Prepared,
    /// The body as it came, when it was protobuf.
    pub protobuf: Option<Bytes>,
    /// The body as it came, when it was text with quoted names (`body` is their rewrite).
    original: Option<Bytes>,
    /// Some name is outside the legacy set: the escaping scheme changes the output.
    utf8_names: bool,
    /// Native histograms without classic buckets: in `protobuf`, not in `body`, so not served
    /// to text and OpenMetrics scrapers.
    pub native_only: usize,
    /// The identity the renderings are made with.
    identity: Option<Identity>,
    text: OnceLock<Option<Rendered>>,
    open_metrics: OnceLock<Option<Rendered>>,
    protobuf_rendered: OnceLock<Option<Rendered>>,
    text_gzip: OnceLock<Option<Members>>,
    open_metrics_gzip: OnceLock<Option<Members>>,
    protobuf_gzip: OnceLock<Option<Members>>,
    /// With UTF-8 names: the `allow-utf-8` renderings, per format, and what they hold.
    allow_utf8: [OnceLock<Option<(Rendered, Reservation)>>; 3],
    held: Reservation,
}

/// Reading a protobuf body may keep this many times its size while it runs (a slice per
/// metric and a header per family: a client library's body takes well under once its size); a
/// body that would keep more (2-byte metrics, a run of empty families) is refused.
pub const PROTOBUF_READ_FACTOR: usize = 8;

/// A rendering may take this many times its body's size (plus 64 KiB).
pub const RENDERED_LIMIT_FACTOR: usize = 4;

impl Snapshot {
    /// What the snapshot holds of the memory budget.
    pub fn held_bytes(&self) -> usize {
        let members = [
            &self.text_gzip,
            &self.open_metrics_gzip,
            &self.protobuf_gzip,
        ]
        .iter()
        .filter_map(|cell| cell.get()?.as_ref())
        .map(|m| m.held.bytes())
        .sum::<usize>();
        let allow_utf8 = self
            .allow_utf8
            .iter()
            .filter_map(|cell| cell.get()?.as_ref())
            .map(|(_, held)| held.bytes())
            .sum::<usize>();
        self.held.bytes() + members + allow_utf8
    }

    /// Samples as Prometheus counts them: a native histogram is one.
    pub fn samples(&self) -> usize {
        self.prepared.summary().samples + self.native_only
    }

    /// The body as a merge source for output `format` and names in `escaping`, with
    /// `identity`: the protobuf body for protobuf scrapers when it came so, else the text body
    /// with its index; for a scheme the stored body was not written in, the body as it came.
    pub fn source<'a>(
        &'a self,
        identity: Option<decode::IdentityLabels<'a>>,
        format: Format,
        escaping: Escaping,
    ) -> decode::Source<'a> {
        let stored = !self.escapes_otherwise(escaping);
        let source = match (&self.protobuf, &self.original, format) {
            (Some(p), _, Format::Protobuf) => decode::Source::new(identity, p, Format::Protobuf),
            (Some(p), _, _) if !stored => decode::Source::new(identity, p, Format::Protobuf),
            (None, Some(o), _) if !stored => {
                decode::Source::new(identity, o, self.prepared.format())
            }
            _ => decode::Source::prepared(identity, &self.body, &self.prepared),
        };
        source.with_escaping(escaping)
    }

    /// Whether names in `escaping` differ from the stored body's (written `underscores`).
    fn escapes_otherwise(&self, escaping: Escaping) -> bool {
        self.utf8_names && escaping != Escaping::Underscores
    }

    /// The rendering for `format` with `identity`, made now if it was not yet. `None` when the
    /// snapshot was made for another identity (the target's changed, or one observed reply
    /// answered several targets), the rendering would pass the bound, or its names are not
    /// `escaping`'s: the merge then renders the body itself.
    pub fn rendered(
        &self,
        identity: &Identity,
        format: Format,
        escaping: Escaping,
    ) -> Option<&Rendered> {
        if self.identity.as_ref() != Some(identity) {
            return None;
        }
        match (self.escapes_otherwise(escaping), escaping) {
            (false, _) => self.render(format),
            (true, Escaping::AllowUtf8) => self.render_allow_utf8(identity, format),
            (true, _) => None,
        }
    }

    fn render_allow_utf8(&self, identity: &Identity, format: Format) -> Option<&Rendered> {
        let cell = &self.allow_utf8[match format {
            Format::Text => 0,
            Format::OpenMetrics => 1,
            Format::Protobuf => 2,
        }];
        cell.get_or_init(|| {
            let source = self.source(Some(identity.labels()), format, Escaping::AllowUtf8);
            let bound = self.body.len() * RENDERED_LIMIT_FACTOR + 64 * 1024;
            let r = decode::render_within(&source, format, bound)?;
            let held = self.held.beside("allow-utf-8 rendering", r.heap_bytes())?;
            Some((r, held))
        })
        .as_ref()
        .map(|(r, _)| r)
    }

    fn render(&self, format: Format) -> Option<&Rendered> {
        let identity = self.identity.as_ref()?;
        let cell = match format {
            Format::Text => &self.text,
            Format::OpenMetrics => &self.open_metrics,
            Format::Protobuf => &self.protobuf_rendered,
        };
        cell.get_or_init(|| {
            decode::render_within(
                &self.source(Some(identity.labels()), format, Escaping::Underscores),
                format,
                self.body.len() * RENDERED_LIMIT_FACTOR + 64 * 1024,
            )
        })
        .as_ref()
    }

    /// The compressed blocks (gzip segments) of the rendering for `format` with `identity`, made now if they were
    /// not yet. `None` where [`Snapshot::rendered`] is, or when they do not fit the budget.
    pub fn gzip_members(
        &self,
        identity: &Identity,
        format: Format,
        escaping: Escaping,
    ) -> Option<&decode::GzipBlocks> {
        if self.identity.as_ref() != Some(identity) || self.escapes_otherwise(escaping) {
            return None;
        }
        self.compress(format)
    }

    fn compress(&self, format: Format) -> Option<&decode::GzipBlocks> {
        let cell = match format {
            Format::Text => &self.text_gzip,
            Format::OpenMetrics => &self.open_metrics_gzip,
            Format::Protobuf => &self.protobuf_gzip,
        };
        cell.get_or_init(|| {
            let members = decode::GzipBlocks::new(self.render(format)?);
            match self.held.beside("compressed blocks", members.heap_bytes()) {
                Some(held) => Some(Members { members, held }),
                None => {
                    GZIP_BLOCKS_REFUSED.inc();
                    None
                }
            }
        })
        .as_ref()
        .map(|m| &m.members)
    }
}

/// Checks a 200 response's body and renders it with `identity` (the target's) for the format
/// `wanted` names. Observed and fetched bodies both come through here.
pub fn check(
    body: Bytes,
    content_type: Option<&str>,
    identity: Option<&Identity>,
    limits: &Limits,
    intake: Intake<'_>,
    wanted: &Wanted,
) -> Result<Snapshot, TargetError> {
    let exceeded = |limit: Limit| {
        LIMITS_EXCEEDED.inc();
        TargetError::Limit(limit)
    };
    if limits.body_size_limit > 0 && body.len() > limits.body_size_limit {
        return Err(exceeded(Limit::BodySize {
            limit: limits.body_size_limit,
            found: body.len(),
        }));
    }
    let held = body.len().saturating_mul(HELD_FACTOR);
    let mut held = intake
        .budget
        .reserve("this body", held, intake.freeing)
        // Counted by the budget (not a scrape limit), as when a fetch is refused.
        .map_err(|e| TargetError::Limit(e.into()))?;
    let format = Format::from_content_type(content_type);
    let (body, protobuf, native_only, mut utf8_names) = match format {
        Format::Protobuf => {
            // Read in place, a metric still keeps a slice: the reading reserves what it may
            // take (8x the body, at most the largest body's share) while it runs.
            let room = body
                .len()
                .saturating_mul(PROTOBUF_READ_FACTOR)
                .min(intake.budget.largest_body());
            let _decoding = intake
                .budget
                .reserve("reading this protobuf body", room, intake.freeing)
                .map_err(|e| TargetError::Limit(e.into()))?;
            let families = decode::proto::read_within(&body, room).map_err(TargetError::Parse)?;
            let om = decode::proto::to_openmetrics(&families, Escaping::Underscores);
            NATIVE_ONLY_OMITTED.add(om.native_only as u64);
            (
                Bytes::from(om.body),
                Some(body),
                om.native_only,
                om.utf8_names,
            )
        }
        _ => (body, None, 0, false),
    };
    // The OpenMetrics body made from protobuf is held too.
    if protobuf.is_some() {
        held.grow("this body", body.len().saturating_mul(HELD_FACTOR))
            .map_err(|e| TargetError::Limit(e.into()))?;
    }
    let text_format = match format {
        Format::Protobuf => Format::OpenMetrics,
        f => f,
    };
    let prepared =
        decode::prepare_escaped(&body, text_format, Escaping::Underscores).map_err(|e| {
            match &protobuf {
                // The families broke a rule of the text engine's (two families whose sample names
                // clash): the body is rejected, and the reason says it was protobuf.
                Some(_) => TargetError::Parse(decode::ParseError {
                    reason: format!("protobuf body read as OpenMetrics: {e}"),
                    ..e
                }),
                None => TargetError::Parse(e),
            }
        })?;
    // A text body with quoted names: `body` becomes its rewrite, the original is kept.
    let (body, original, prepared) = match prepared {
        (Some(rewritten), prepared) => {
            held.grow("this body", rewritten.len().saturating_mul(HELD_FACTOR))
                .map_err(|e| TargetError::Limit(e.into()))?;
            utf8_names = true;
            (Bytes::from(rewritten), Some(body), prepared)
        }
        (None, prepared) => (body, None, prepared),
    };
    limits.check(&body, &prepared, identity).map_err(exceeded)?;
    if limits.sample_limit > 0 && prepared.summary().samples + native_only > limits.sample_limit {
        return Err(exceeded(Limit::Samples {
            limit: limits.sample_limit,
            found: prepared.summary().samples + native_only,
        }));
    }
    let snapshot = Snapshot {
        body,
        prepared,
        protobuf,
        original,
        utf8_names,
        native_only,
        identity: identity.cloned(),
        text: OnceLock::new(),
        open_metrics: OnceLock::new(),
        protobuf_rendered: OnceLock::new(),
        text_gzip: OnceLock::new(),
        open_metrics_gzip: OnceLock::new(),
        protobuf_gzip: OnceLock::new(),
        allow_utf8: Default::default(),
        held,
    };
    snapshot.render(wanted.format());
    if wanted.gzip() {
        snapshot.compress(wanted.format());
    }
    Ok(snapshot)
}

/// An observed reply: its body checked when the status is 200, else the status is the reason.
pub fn observed(
    status: u16,
    body: Bytes,
    content_type: Option<&str>,
    identity: Option<&Identity>,
    limits: &Limits,
    intake: Intake<'_>,
    wanted: &Wanted,
) -> Result<Arc<Snapshot>, TargetError> {
    if status != 200 {
        return Err(TargetError::Status(status));
    }
    check(body, content_type, identity, limits, intake, wanted).map(Arc::new)
}

/// A fetch's result, its body checked. What the fetch reserved while reading counts as freed
/// when the body is kept: the body moves from one reservation to the other.
pub fn fetched(
    result: Result<Fetched, FetchError>,
    identity: Option<&Identity>,
    limits: &Limits,
    intake: Intake<'_>,
    wanted: &Wanted,
) -> Result<Arc<Snapshot>, TargetError> {
    let Fetched {
        content_type,
        body,
        reading,
        ..
    } = result?;
    let intake = Intake {
        freeing: intake.freeing + reading.bytes(),
        ..intake
    };
    let checked = check(
        body,
        content_type.as_deref(),
        identity,
        limits,
        intake,
        wanted,
    );
    drop(reading);
    checked.map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(pod: &str) -> Identity {
        Identity::of_test_pod(pod)
    }

    /// No budget.
    fn free() -> Intake<'static> {
        static NONE: std::sync::LazyLock<Budget> = std::sync::LazyLock::new(Budget::default);
        Intake {
            budget: &NONE,
            freeing: 0,
        }
    }

    #[test]
    fn a_body_that_does_not_fit_the_budget_is_refused_and_a_dropped_one_frees_its_share() {
        let wanted = Wanted::default();
        let body = Bytes::from("a 1\n".repeat(250));
        let budget = Budget::new(body.len() * HELD_FACTOR * 2);
        let intake = Intake {
            budget: &budget,
            freeing: 0,
        };
        let one = check(
            body.clone(),
            None,
            None,
            &Limits::default(),
            intake,
            &wanted,
        )
        .unwrap();
        let two = check(
            body.clone(),
            None,
            None,
            &Limits::default(),
            intake,
            &wanted,
        )
        .unwrap();
        assert_eq!(budget.held(), 2 * one.held_bytes());
        let err = check(
            body.clone(),
            None,
            None,
            &Limits::default(),
            intake,
            &wanted,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("memory budget: this body would hold"),
            "{err}"
        );
        // Replacing one of them: what it frees counts.
        let replacing = Intake {
            budget: &budget,
            freeing: two.held_bytes(),
        };
        let three = check(
            body.clone(),
            None,
            None,
            &Limits::default(),
            replacing,
            &wanted,
        )
        .unwrap();
        drop(two);
        assert_eq!(budget.held(), one.held_bytes() + three.held_bytes());
        drop((one, three));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn snapshots_render_for_their_identity_only() {
        let wanted = Wanted::default();
        let body = Bytes::from_static(b"# TYPE a gauge\na{x=\"1\"} 1\n");
        let snap = check(
            body.clone(),
            None,
            Some(&identity("a")),
            &Limits::default(),
            free(),
            &wanted,
        )
        .unwrap();
        let a = identity("a");
        for format in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
            let r = snap
                .rendered(&a, format, Escaping::Underscores)
                .expect("rendered");
            assert_eq!(r.format(), format);
            assert!(r.heap_bytes() > 0);
            // The merge takes it as it is.
            assert!(
                r.fits(
                    &snap.source(Some(a.labels()), format, Escaping::Underscores),
                    format
                ),
                "{format:?}"
            );
        }
        assert!(snap
            .rendered(&identity("b"), Format::Text, Escaping::Underscores)
            .is_none());
        let anonymous = check(body, None, None, &Limits::default(), free(), &wanted).unwrap();
        assert!(anonymous
            .rendered(&identity("a"), Format::Text, Escaping::Underscores)
            .is_none());
        // A rendering past the bound is not kept: short lines, a long identity.
        let mut long = identity("a");
        long.pod = "p".repeat(70_000);
        let tiny = check(
            Bytes::from_static(b"a 1\n"),
            None,
            Some(&long),
            &Limits::default(),
            free(),
            &wanted,
        )
        .unwrap();
        assert!(tiny
            .rendered(&long, Format::Text, Escaping::Underscores)
            .is_none());
    }

    /// A protobuf body: a counter, and a native-only histogram.
    fn protobuf_body() -> Bytes {
        use decode::proto::schema::*;
        use prost::Message;
        let families = [
            MetricFamily {
                name: "c_total".into(),
                metric: vec![Metric {
                    counter: Some(Counter {
                        value: 2.0,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            MetricFamily {
                name: "rpc_seconds".into(),
                r#type: MetricType::Histogram as i32,
                metric: vec![Metric {
                    histogram: Some(Histogram {
                        sample_count: 1,
                        sample_sum: 0.5,
                        schema: 0,
                        positive_span: vec![BucketSpan {
                            offset: 0,
                            length: 1,
                        }],
                        positive_delta: vec![1],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ];
        let mut b = Vec::new();
        for f in &families {
            f.encode_length_delimited(&mut b).unwrap();
        }
        Bytes::from(b)
    }

    #[test]
    fn protobuf_bodies_keep_native_histograms_for_protobuf_scrapers_only() {
        let wanted = Wanted::default();
        wanted.mark(Format::Protobuf, false);
        let before = NATIVE_ONLY_OMITTED.get();
        let snap = check(
            protobuf_body(),
            Some(decode::proto::CONTENT_TYPE),
            Some(&identity("a")),
            &Limits::default(),
            free(),
            &wanted,
        )
        .unwrap();
        assert!(NATIVE_ONLY_OMITTED.get() > before);
        assert_eq!((snap.native_only, snap.samples()), (1, 2));
        assert!(snap.protobuf_rendered.get().is_some());
        let text = String::from_utf8(snap.body.to_vec()).unwrap();
        assert_eq!(text, "# TYPE c counter\nc_total 2.0\n# EOF\n");
        let a = identity("a");
        for format in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
            let r = snap
                .rendered(&a, format, Escaping::Underscores)
                .expect("rendered");
            let src = snap.source(Some(a.labels()), format, Escaping::Underscores);
            assert!(r.fits(&src, format), "{format:?}");
        }
        // The sample limit counts a native histogram as one sample, as Prometheus does.
        let limits = Limits {
            sample_limit: 1,
            ..Limits::default()
        };
        let err = check(
            protobuf_body(),
            Some(decode::proto::CONTENT_TYPE),
            Some(&identity("a")),
            &limits,
            free(),
            &wanted,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "sample_limit exceeded: 2 samples, above 1");
        // A broken protobuf body is rejected with the byte it broke at.
        let mut cut = protobuf_body().to_vec();
        cut.truncate(cut.len() - 3);
        let err = check(
            Bytes::from(cut),
            Some(decode::proto::CONTENT_TYPE),
            Some(&identity("a")),
            &Limits::default(),
            free(),
            &wanted,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("unparsable body: byte "),
            "{err}"
        );
    }

    #[test]
    fn a_protobuf_body_is_read_within_its_share_of_the_budget() {
        // A family of 1,000 metrics of 2 bytes each: reading keeps 16 bytes per metric.
        let mut family = vec![0x0a, 0x01, b'g', 0x18, 0x01];
        for _ in 0..1000 {
            family.extend_from_slice(&[0x22, 0x00]);
        }
        let mut body = Vec::new();
        prost::encoding::encode_varint(family.len() as u64, &mut body);
        body.extend_from_slice(&family);
        let body = Bytes::from(body);
        // Room for the body as kept and for reading 4 times its size (the largest body's
        // share of the budget), which those metrics pass.
        let budget = Budget::new(body.len() * HELD_FACTOR * 4);
        let intake = Intake {
            budget: &budget,
            freeing: 0,
        };
        let err = check(
            body.clone(),
            Some(decode::proto::CONTENT_TYPE),
            Some(&identity("a")),
            &Limits::default(),
            intake,
            &Wanted::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("passes the memory it may take"),
            "{err}"
        );
        assert_eq!(budget.held(), 0, "the refused body holds nothing");
        // The reader itself stops at the room it is given, naming the family.
        let e = decode::proto::read_within(&body, 8 * body.len()).unwrap_err();
        assert!(e.reason.contains("passes the memory it may take"), "{e}");
        assert!(e.reason.starts_with("family \"g\""), "{e}");
        // The test's client-library body reads within its room.
        let body = protobuf_body();
        assert!(decode::proto::read_within(&body, 8 * body.len()).is_ok());
    }

    #[test]
    fn the_wanted_format_is_rendered_on_arrival() {
        let wanted = Wanted::default();
        wanted.mark(Format::OpenMetrics, false);
        let body = Bytes::from_static(b"a 1\n");
        let snap = check(
            body,
            None,
            Some(&identity("a")),
            &Limits::default(),
            free(),
            &wanted,
        )
        .unwrap();
        assert!(snap.open_metrics.get().is_some());
        assert!(snap.text.get().is_none());
    }

    #[test]
    fn utf8_names_are_rendered_per_scheme_and_legacy_bodies_once() {
        let wanted = Wanted::default();
        let a = identity("a");
        let snap = |body: &'static [u8]| {
            check(
                Bytes::from_static(body),
                None,
                Some(&a),
                &Limits::default(),
                free(),
                &wanted,
            )
            .unwrap()
        };
        let utf8 = snap(b"{\"a.b\",\"c.d\"=\"1\"} 1\n");
        // The stored body is the underscores rewrite; the original is kept.
        assert_eq!(&utf8.body[..], b"a_b{c_d=\"1\"} 1\n");
        let text = |e: Escaping| {
            let r = utf8.rendered(&a, Format::Text, e);
            let source = utf8
                .source(Some(a.labels()), Format::Text, e)
                .with_rendered(r);
            let (chunks, _) = decode::merge(&[source], Format::Text);
            (r.is_some(), String::from_utf8(chunks.concat()).unwrap())
        };
        let id = "namespace=\"ns\",pod=\"a\",endpoint=\"8080\"";
        assert_eq!(
            text(Escaping::Underscores),
            (
                true,
                format!("# TYPE a_b untyped\na_b{{{id},c_d=\"1\"}} 1\n")
            )
        );
        assert_eq!(
            text(Escaping::AllowUtf8),
            (
                true,
                format!("# TYPE \"a.b\" untyped\n{{\"a.b\",{id},\"c.d\"=\"1\"}} 1\n")
            )
        );
        // Dots and values: rendered by the merge from the body as it came.
        assert_eq!(
            text(Escaping::Dots),
            (
                false,
                format!("# TYPE a_dot_b untyped\na_dot_b{{{id},c_dot_d=\"1\"}} 1\n")
            )
        );
        assert!(utf8.rendered(&a, Format::Text, Escaping::Values).is_none());
        // Legacy names: one rendering serves every scheme.
        let legacy = snap(b"a_b 1\n");
        let first = legacy
            .rendered(&a, Format::Text, Escaping::Underscores)
            .unwrap() as *const _;
        for e in Escaping::ALL {
            let r = legacy.rendered(&a, Format::Text, e).unwrap();
            assert_eq!(r as *const _, first, "{e:?}");
        }
        assert!(legacy.allow_utf8.iter().all(|c| c.get().is_none()));
        // A quoted name that is not UTF-8 rejects the body, naming it and where.
        let bad = check(
            Bytes::from_static(b"a 1\n{\"b\xffc\"} 1\n"),
            None,
            Some(&a),
            &Limits::default(),
            free(),
            &wanted,
        );
        match bad {
            Err(TargetError::Parse(e)) => {
                assert_eq!((e.line, e.column), (2, 4));
                assert!(
                    e.reason.contains("\"b\u{FFFD}c\" is not valid UTF-8"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gzip_members_are_made_for_gzip_scrapers_and_held_in_the_budget() {
        let mut text = String::from("# TYPE big gauge\n");
        for i in 0..500 {
            text.push_str(&format!("big{{path=\"/api/{i}\"}} {i}\n"));
        }
        let body = Bytes::from(text);
        let a = identity("a");
        let budget = Budget::new(body.len() * HELD_FACTOR * 4);
        let intake = Intake {
            budget: &budget,
            freeing: 0,
        };
        let wanted = Wanted::default();
        wanted.mark(Format::OpenMetrics, true);
        assert!(wanted.gzip() && wanted.format() == Format::OpenMetrics);
        let snap = check(
            body.clone(),
            None,
            Some(&a),
            &Limits::default(),
            intake,
            &wanted,
        )
        .unwrap();
        let made = snap.open_metrics_gzip.get().expect("made on arrival");
        let members = made.as_ref().expect("within the budget");
        assert_eq!(members.members.blocks(), 1);
        assert!(snap.text_gzip.get().is_none());
        assert_eq!(
            snap.held_bytes(),
            body.len() * HELD_FACTOR + members.members.heap_bytes()
        );
        assert_eq!(budget.held(), snap.held_bytes());
        // Another format's at the first scrape that asks; another identity's never.
        assert!(snap
            .gzip_members(&a, Format::Text, Escaping::Underscores)
            .is_some());
        assert!(snap
            .gzip_members(&identity("b"), Format::Text, Escaping::Underscores)
            .is_none());
        drop(snap);
        assert_eq!(budget.held(), 0);
        // Plain scrapers: no members on arrival.
        wanted.mark(Format::Text, false);
        let plain = check(
            body.clone(),
            None,
            Some(&a),
            &Limits::default(),
            intake,
            &wanted,
        )
        .unwrap();
        assert!(plain.text_gzip.get().is_none());
        drop(plain);
        // Members that do not fit are not kept, and the body stays.
        let tight = Budget::new(body.len() * HELD_FACTOR);
        wanted.mark(Format::Text, true);
        let before = GZIP_BLOCKS_REFUSED.get();
        let snap = check(
            body,
            None,
            Some(&a),
            &Limits::default(),
            Intake {
                budget: &tight,
                freeing: 0,
            },
            &wanted,
        )
        .unwrap();
        assert!(snap
            .gzip_members(&a, Format::Text, Escaping::Underscores)
            .is_none());
        assert!(GZIP_BLOCKS_REFUSED.get() > before);
        assert_eq!(tight.held(), snap.held_bytes());
    }

    #[test]
    fn each_limit_downs_the_body_and_names_itself() {
        let wanted = Wanted::default();
        let body = Bytes::from_static(b"a 1\nb{x=\"1\"} 2\nc{long_label=\"abcdef\"} 3\n");
        let id = identity("a");
        let down = |limits: Limits| {
            check(body.clone(), None, Some(&id), &limits, free(), &wanted)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(down(Limits::default()), None);
        let cases = [
            (
                Limits {
                    sample_limit: 2,
                    ..Limits::default()
                },
                "sample_limit exceeded: 3 samples, above 2",
            ),
            (
                Limits {
                    body_size_limit: 10,
                    ..Limits::default()
                },
                "body_size_limit exceeded: 40 bytes, above 10",
            ),
            // name + namespace, pod, endpoint + job, instance + x = 7
            (
                Limits {
                    label_limit: 6,
                    ..Limits::default()
                },
                "label_limit exceeded: a series of b has 7 labels, above 6",
            ),
            (
                Limits {
                    label_name_length_limit: 5,
                    ..Limits::default()
                },
                "label_name_length_limit exceeded: a label name of c has 10 bytes, above 5",
            ),
            (
                Limits {
                    label_value_length_limit: 5,
                    ..Limits::default()
                },
                "label_value_length_limit exceeded: a label value of c has 6 bytes, above 5",
            ),
        ];
        for (limits, reason) in cases {
            assert_eq!(down(limits).as_deref(), Some(reason));
        }
        // A pod's own limit over the default; 0 lifts it.
        let defaults = Limits {
            sample_limit: 2,
            ..Limits::default()
        };
        let pod = crate::discover::Limits {
            sample_limit: Some(0),
            ..Default::default()
        };
        assert_eq!(down(defaults.for_pod(&pod)), None);
        assert_eq!(defaults.for_pod(&Default::default()), defaults);
    }

    #[test]
    fn reasons_read_as_before() {
        let wanted = Wanted::default();
        let err = observed(
            500,
            Bytes::new(),
            None,
            None,
            &Limits::default(),
            free(),
            &wanted,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "HTTP status 500");
        let err = observed(
            200,
            Bytes::from_static(b"{\n"),
            None,
            None,
            &Limits::default(),
            free(),
            &wanted,
        )
        .unwrap_err();
        assert!(matches!(err, TargetError::Parse(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("unparsable body: line 1, column 1: "),
            "{err}"
        );
        let err = TargetError::from(FetchError::TooLarge { limit: 1000 });
        assert!(
            matches!(err, TargetError::Limit(Limit::Body { .. })),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "body larger than 1000 bytes");
        let err = TargetError::from(FetchError::Status(404));
        assert!(matches!(err, TargetError::Status(404)), "{err:?}");
        assert_eq!(Origin::Unresolved.source(), None);
        assert_eq!(Origin::Fetched.source(), Some("fetched"));
    }
}

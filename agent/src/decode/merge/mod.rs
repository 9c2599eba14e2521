//! The merge engine, one for every output: each source is rendered (or comes rendered from the
//! store, [`render_source`]), a plan decides the merging rules across sources from the
//! renderings' family summaries (`plan.rs`), and one writer emits the plan into a buffer or a
//! chunk list (`write.rs`). See the decode module's docs for the rules.
//!
//! - `convert.rs`: rule 6, the output families of a source family and line conversion.
//! - `lines.rs`: rule 2 and rule 5 within a source, one source's sample lines.
//! - `render.rs`: a source rendered into one block per output family and type.
//! - `dedup.rs`: rule 5, the first of each series kept.
//! - `plan.rs`: rules 3, 4 and 5 across sources.
//! - `write.rs`: headers and blocks into a sink.

mod convert;
mod dedup;
#[cfg(feature = "agent")]
mod gzip;
mod lines;
mod plan;
mod protobuf;
mod render;
mod write;

use bytes::Bytes;

use super::{
    Escaping, Format, IdentityLabels, MergeStats, Prepared, DUPLICATE_SERIES, FAMILY_CONFLICTS,
};

#[cfg(feature = "agent")]
pub use gzip::{GzipBlocks, MEMBER_LEVEL, MIN_MEMBER_BLOCK, SCRAPE_LEVEL};
pub use lines::write_label_set;
pub use render::{render_source, render_within, Rendered};
pub(crate) use write::write_header;

/// One body to merge: who it belongs to (`identity: None` marks the agent's own series, added
/// as they are), the body, its checked index if it was prepared when it arrived
/// ([`super::prepare`]), and its rendering for the output format if the store made one
/// ([`render_source`]). What is missing is made by the merge: a body without index is parsed
/// (and rejected whole if it fails), a source without a fitting rendering
/// ([`Rendered::fits`]) is rendered.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub identity: Option<IdentityLabels<'a>>,
    pub body: &'a [u8],
    /// The body's format (the index's, where there is one).
    pub format: Format,
    pub prepared: Option<&'a Prepared>,
    pub rendered: Option<&'a Rendered>,
    /// The scheme its names outside the legacy set are written in ([`Source::with_escaping`]).
    pub escaping: Escaping,
}

impl<'a> Source<'a> {
    /// A body the merge parses itself.
    pub fn new(identity: Option<IdentityLabels<'a>>, body: &'a [u8], format: Format) -> Self {
        Source {
            identity,
            body,
            format,
            prepared: None,
            rendered: None,
            escaping: Escaping::default(),
        }
    }

    /// A body checked earlier, with its index. An index that does not fit the body (another
    /// length) is made again.
    pub fn prepared(
        identity: Option<IdentityLabels<'a>>,
        body: &'a [u8],
        prepared: &'a Prepared,
    ) -> Self {
        Source {
            identity,
            body,
            format: prepared.format,
            prepared: Some(prepared),
            rendered: None,
            escaping: Escaping::default(),
        }
    }

    /// This source with its rendering, if there is one.
    pub fn with_rendered(self, rendered: Option<&'a Rendered>) -> Self {
        Source { rendered, ..self }
    }

    /// This source with its names outside the legacy set written in `escaping` (the scrape's;
    /// `underscores` unless set).
    pub fn with_escaping(self, escaping: Escaping) -> Self {
        Source { escaping, ..self }
    }

    /// The body's format.
    pub fn format(&self) -> Format {
        self.prepared.map_or(self.format, |p| p.format)
    }

    /// [`render_source`] of this source, as the store does at ingest; a body without index is
    /// parsed (and kept as rejected if it fails).
    pub fn render(&self, out: Format) -> Rendered {
        self.render_as(out, true)
    }

    fn render_as(&self, out: Format, compact: bool) -> Rendered {
        let (body, identity, esc) = (self.body, self.identity, self.escaping);
        match (self.format(), out, self.prepared) {
            (Format::Protobuf, _, _) => {
                protobuf::render_protobuf_body(body, identity, out, compact, esc)
            }
            (from, Format::Protobuf, p) => {
                protobuf::render_text_body(body, from, p, identity, compact, esc)
            }
            (_, _, Some(p)) => render::render_prepared(body, p, identity, out, compact, esc),
            (from, _, None) => render::render_body(body, from, identity, out, compact, esc),
        }
    }
}

/// Merges `sources` in format `out`: the output as a list of chunks whose concatenation is the
/// body. The headers (and `# EOF`) are slices of one owned buffer; every source's block is a
/// refcounted slice of its rendering, not copied, so that `/metrics` sends the list without
/// holding an output-sized buffer.
pub fn merge(sources: &[Source<'_>], out: Format) -> (Vec<Bytes>, MergeStats) {
    let mut chunks = write::Chunks::default();
    let stats = run(sources, out, &mut chunks);
    (chunks.finish(), stats)
}

/// [`merge`], gzipped: the output as a list of chunks whose concatenation is one gzip member
/// that decompresses to [`merge`]'s output. Every picked block that has a segment in `stored`
/// (compressed when the rendering the source comes with was kept) is sent as that segment;
/// everything else is compressed here at `level`, one segment per run of such pieces.
/// The same engine as [`merge`]: only the sink differs.
#[cfg(feature = "agent")]
pub fn merge_gzip(
    sources: &[Source<'_>],
    stored: &[&GzipBlocks],
    out: Format,
    level: u32,
) -> (Vec<Bytes>, MergeStats) {
    let mut chunks = gzip::GzChunks::new(stored, level);
    let stats = run(sources, out, &mut chunks);
    (chunks.finish(), stats)
}

/// The engine: renderings, plan, writer.
fn run<S: write::Sink>(sources: &[Source<'_>], out: Format, sink: &mut S) -> MergeStats {
    // Renderings made here are dropped after the merge: not worth compacting.
    let fresh: Vec<Option<Rendered>> = sources
        .iter()
        .map(|s| match s.rendered {
            Some(r) if r.fits(s, out) => None,
            _ => Some(s.render_as(out, false)),
        })
        .collect();
    let mut stats = MergeStats::default();
    let mut rs: Vec<&Rendered> = Vec::with_capacity(sources.len());
    for (i, (s, f)) in sources.iter().zip(&fresh).enumerate() {
        let Some(r) = f.as_ref().or(s.rendered) else {
            continue;
        };
        match &r.rejected {
            Some(e) => {
                match s.identity {
                    Some(id) => log::debug!(
                        "metrics of pod {}/{} endpoint {:?} rejected: {e}",
                        id.namespace,
                        id.pod,
                        id.endpoint
                    ),
                    None => log::debug!("agent metrics rejected: {e}"),
                }
                stats.rejected.push((i, e.clone()));
            }
            None => {
                stats.reserved_families += r.reserved;
                rs.push(r)
            }
        }
    }
    let plan = plan::plan(&rs, out);
    stats.family_conflicts = plan.conflicts;
    stats.duplicate_series = write::write(&plan, &rs, out, sink);
    FAMILY_CONFLICTS.add(stats.family_conflicts);
    DUPLICATE_SERIES.add(stats.duplicate_series);
    stats
}

#[cfg(test)]
mod tests;

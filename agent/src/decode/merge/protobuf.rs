//! The protobuf output: a source rendered from its families (a protobuf body's own, read in
//! place, or a text body's made by `proto::from_text`) into one block of encoded `Metric`s per
//! family (a protobuf body's metrics keep their fields besides labels byte for byte), and the
//! plan written as length-prefixed `MetricFamily` messages whose metrics are those blocks,
//! sliced, not copied. The rules are the text output's (module docs): identity labels first on
//! every metric, app labels named like them renamed `exported_*`, one family per name with the
//! type most sources declare, the first HELP and UNIT, duplicates left out.
//!
//! A protobuf body rendered for a text format goes through the OpenMetrics body its families
//! make (`proto::to_openmetrics`), so that output is the text engine's.
//!
//! Names outside the legacy charset (`[a-zA-Z_:][a-zA-Z0-9_:]*`, which protobuf bodies may
//! carry) are written in the scrape's escaping scheme (the source's, [`Escaping`]) in every
//! output, protobuf included, as a text body's quoted names are: as they are for
//! `allow-utf-8`, else `underscores` unless the scraper asked for `dots` or `values`. A scraper
//! that validates legacy names (Prometheus 2) would otherwise fail the whole node's scrape for
//! one pod's name, and `underscores` is what client libraries answer an `Accept` that names no
//! escaping scheme (Prometheus asks protobuf without one).

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;

use bytes::Bytes;
use prost::Message;

use super::super::escaping::Marker;
use super::super::lex::{self, name_hash, Escaped};
use super::super::parse::{parse, with_quoted, MType, Parsed};
use super::super::proto::view::{self, Family};
use super::super::proto::{self, schema, wire};
use super::super::{
    is_legacy, is_legacy_label, Escaping, Format, IdentityLabels, Prepared, RESERVED_FAMILIES,
    RESERVED_PREFIX,
};
use super::convert::help_kind;
use super::dedup::first_of_each_series;
use super::lines::TARGET_LABELS;
use super::plan::Plan;
use super::render::{self, FamilyMeta, Rendered, RenderedFamily, TypedBlock};
use super::write::Sink;

/// A protobuf body rendered for `out`; a body that fails to decode is kept as rejected.
pub(super) fn render_protobuf_body(
    body: &[u8],
    identity: Option<IdentityLabels<'_>>,
    out: Format,
    compact: bool,
    escaping: Escaping,
) -> Rendered {
    let families = match proto::read(body) {
        Ok(f) => f,
        Err(e) => return Rendered::rejected(body.len(), Format::Protobuf, identity, out, e),
    };
    if out == Format::Protobuf {
        return render_families(
            body_families(&families, escaping),
            body.len(),
            Format::Protobuf,
            identity,
            compact,
        );
    }
    let om = proto::to_openmetrics(&families, escaping);
    let utf8 = om.utf8_names;
    let mut r = render::render_body(
        &om.body,
        Format::OpenMetrics,
        identity,
        out,
        compact,
        escaping,
    );
    r.came_from(body.len(), Format::Protobuf);
    r.escaping = utf8.then_some(escaping);
    if let Some(m) = om.marker {
        r.unmark(m);
    }
    r
}

/// A text body rendered for protobuf output, from its index when it has one.
pub(super) fn render_text_body(
    body: &[u8],
    format: Format,
    prepared: Option<&Prepared>,
    identity: Option<IdentityLabels<'_>>,
    compact: bool,
    escaping: Escaping,
) -> Rendered {
    // Names marked for `allow-utf-8` are turned back before they are encoded.
    let render = |parsed: Parsed<'_>, marker: Option<Marker>| {
        let mut families = proto::from_text(&parsed);
        if let Some(m) = marker {
            families.iter_mut().for_each(|f| unmark(f, m));
        }
        render_families(
            text_families(families, escaping),
            body.len(),
            format,
            identity,
            compact,
        )
    };
    match prepared.filter(|p| p.len == body.len()) {
        Some(p) => {
            let mut r = render(p.parsed(body), p.marker);
            r.escaping = p.escaped;
            r
        }
        None => match with_quoted(body, format, escaping, |b, m| {
            parse(b, format).map(|p| render(p, m))
        }) {
            Ok((r, None)) => r,
            Ok((mut r, Some(_))) => {
                r.escaping = Some(escaping);
                r
            }
            Err(e) => {
                let mut r = Rendered::rejected(body.len(), format, identity, Format::Protobuf, e);
                r.escaping = Some(escaping);
                r
            }
        },
    }
}

/// The block type of a protobuf family type.
fn mtype(t: i32) -> MType {
    match schema::MetricType::try_from(t) {
        Ok(schema::MetricType::Counter) => MType::Counter,
        Ok(schema::MetricType::Gauge) => MType::Gauge,
        Ok(schema::MetricType::Summary) => MType::Summary,
        Ok(schema::MetricType::Histogram) => MType::Histogram,
        Ok(schema::MetricType::GaugeHistogram) => MType::GaugeHistogram,
        Ok(schema::MetricType::Untyped) | Err(_) => MType::Unknown,
    }
}

/// The protobuf type of a block type.
fn metric_type(t: MType) -> schema::MetricType {
    match t {
        MType::Counter => schema::MetricType::Counter,
        MType::Gauge | MType::Info | MType::StateSet => schema::MetricType::Gauge,
        MType::Summary => schema::MetricType::Summary,
        MType::Histogram => schema::MetricType::Histogram,
        MType::GaugeHistogram => schema::MetricType::GaugeHistogram,
        MType::Unknown => schema::MetricType::Untyped,
    }
}

/// A family as the rendering takes it: from a protobuf body read in place (names, values and
/// each metric's other fields borrowed from the body, which is copied from as it is), or moved
/// out of prost's messages (a text body's families, names escaped or restored).
pub(super) struct RenderFamily<'a> {
    name: Cow<'a, str>,
    help: Cow<'a, str>,
    unit: Cow<'a, str>,
    r#type: i32,
    metrics: Vec<Final<'a>>,
}

impl<'a> RenderFamily<'a> {
    fn from_view(f: &Family<'a>) -> Self {
        let mut m = view::Metric::default();
        let metrics = f
            .metrics
            .iter()
            .map(|raw| {
                m.load(raw);
                Final {
                    labels: m
                        .label
                        .iter()
                        .map(|l| (Cow::Borrowed(l.name), Cow::Borrowed(l.value)))
                        .collect(),
                    rest: Rest::Raw(raw),
                }
            })
            .collect();
        RenderFamily {
            name: Cow::Borrowed(f.name),
            help: Cow::Borrowed(f.help),
            unit: Cow::Borrowed(f.unit),
            r#type: f.r#type,
            metrics,
        }
    }
}

impl From<schema::MetricFamily> for RenderFamily<'static> {
    fn from(f: schema::MetricFamily) -> Self {
        let metrics = f
            .metric
            .into_iter()
            .map(|mut m| Final {
                labels: std::mem::take(&mut m.label)
                    .into_iter()
                    .map(|l| (Cow::Owned(l.name), Cow::Owned(l.value)))
                    .collect(),
                rest: Rest::Owned(Box::new(m)),
            })
            .collect();
        RenderFamily {
            name: Cow::Owned(f.name),
            help: Cow::Owned(f.help),
            unit: Cow::Owned(f.unit),
            r#type: f.r#type,
            metrics,
        }
    }
}

/// Families of a protobuf body, as they are; those with a name outside the legacy set all in
/// `escaping` (of two labels of a metric that become one name, the first is kept). Also the
/// scheme, when names were escaped.
fn body_families<'a>(
    families: &[Family<'a>],
    escaping: Escaping,
) -> (Vec<RenderFamily<'a>>, Option<Escaping>) {
    if families.iter().any(proto::has_utf8_names) {
        let owned = families.iter().map(|f| escaped(f.to_schema(), escaping));
        return (owned.map(RenderFamily::from).collect(), Some(escaping));
    }
    (families.iter().map(RenderFamily::from_view).collect(), None)
}

/// [`body_families`] of families made from a text body.
fn text_families(
    families: Vec<schema::MetricFamily>,
    escaping: Escaping,
) -> (Vec<RenderFamily<'static>>, Option<Escaping>) {
    let utf8 = families.iter().any(has_utf8_names);
    let families = families.into_iter().map(|f| match utf8 {
        true => escaped(f, escaping),
        false => f,
    });
    (
        families.map(RenderFamily::from).collect(),
        utf8.then_some(escaping),
    )
}

/// Families rendered with an identity: per family name one block per type, each the encoded
/// `Metric`s (field 4 of `MetricFamily`, tag and length included) with their final labels. The
/// families are taken apart, not copied: each metric's own labels move into its final label
/// set, the identity's are encoded once and written before them, and a metric read in place
/// has its other fields copied from the body as they came.
pub(super) fn render_families(
    (mut families, escaping): (Vec<RenderFamily<'_>>, Option<Escaping>),
    body_len: usize,
    from: Format,
    identity: Option<IdentityLabels<'_>>,
    compact: bool,
) -> Rendered {
    let mut r = Rendered::empty(body_len, from, identity, Format::Protobuf);
    r.help_from = Format::Protobuf;
    r.escaping = escaping;
    let ident: Vec<(&str, &str)> = identity
        .iter()
        .flat_map(IdentityLabels::labels)
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let mut ident_fields = Vec::new();
    for (name, value) in &ident {
        encode_label(name, value, &mut ident_fields);
    }
    families.retain(|f| {
        let reserved = identity.is_some() && f.name.as_bytes().starts_with(RESERVED_PREFIX);
        r.reserved += u64::from(reserved);
        !reserved
    });
    RESERVED_FAMILIES.add(r.reserved);
    families.sort_by(|a, b| a.name.cmp(&b.name));
    let mut lines = Vec::with_capacity(body_len + 64);
    let mut metrics: Vec<Final<'_>> = Vec::new();
    let (mut keys, mut dup) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < families.len() {
        let mut j = i + 1;
        while j < families.len() && families[j].name == families[i].name {
            j += 1;
        }
        let name = r.push_text(families[i].name.as_bytes());
        let blocks_start = r.blocks.len();
        let mut types: Vec<i32> = families[i..j].iter().map(|f| f.r#type).collect();
        types.dedup();
        for t in types {
            let metas_start = r.metas.len();
            metrics.clear();
            let mut cross = false;
            for f in families[i..j].iter_mut().filter(|f| f.r#type == t) {
                let help = (!f.help.is_empty()).then(|| r.push_text(f.help.as_bytes()));
                let unit = (!f.unit.is_empty()).then(|| r.push_text(f.unit.as_bytes()));
                r.metas.push(FamilyMeta { help, unit });
                for m in std::mem::take(&mut f.metrics) {
                    let (labels, renamed) = final_labels(&ident, identity.is_some(), m.labels);
                    cross |= renamed;
                    metrics.push(Final {
                        labels,
                        rest: m.rest,
                    });
                }
            }
            // Rule 5 within the source: the first of each series (label sets compared
            // without order, identity labels aside: they are the same on every metric).
            keys.clear();
            keys.extend(
                metrics
                    .iter()
                    .enumerate()
                    .map(|(k, m)| (m.hash(), k as u32)),
            );
            let dups = first_of_each_series(&mut keys, &mut dup, |a, b| {
                metrics[a as usize].sorted() == metrics[b as usize].sorted()
            });
            let start = lines.len();
            for (m, _) in metrics.iter().zip(&dup).filter(|(_, &d)| !d) {
                m.encode(&ident_fields, &mut lines);
            }
            r.blocks.push(TypedBlock {
                mtype: mtype(t),
                metas: (metas_start as u32, r.metas.len() as u32),
                lines: (start as u32, lines.len() as u32),
                dups,
                cross,
                maybe_more_dups: false,
            });
        }
        r.families.push(RenderedFamily {
            name,
            hash: name_hash(r.slice(name)),
            blocks: (blocks_start as u32, r.blocks.len() as u32),
        });
        i = j;
    }
    if compact {
        lines.shrink_to_fit();
        r.compact();
    }
    r.lines = Bytes::from(lines);
    r
}

/// A label as the rendering holds it.
type Label<'a> = (Cow<'a, str>, Cow<'a, str>);

/// A metric's fields besides its labels.
enum Rest<'a> {
    /// A metric read in place: its bytes, whose fields other than labels are copied.
    Raw(&'a [u8]),
    /// prost's metric, its labels taken out.
    Owned(Box<schema::Metric>),
}

/// A metric with its final app labels (the identity's apart) and its other fields.
struct Final<'a> {
    labels: Vec<Label<'a>>,
    rest: Rest<'a>,
}

/// `Metric.label`'s field number.
const LABEL_FIELD: u32 = 1;

impl Final<'_> {
    /// The order-independent hash of the label set, empty values left out.
    fn hash(&self) -> u64 {
        self.labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .fold(0u64, |h, (n, v)| {
                h.wrapping_add(lex::pair_hash(n.as_bytes(), v.as_bytes()))
            })
    }

    fn sorted(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = self
            .labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| (n.as_ref(), v.as_ref()))
            .collect();
        v.sort_unstable();
        v
    }

    /// The fields of a metric read in place, labels aside.
    fn raw_fields<'r>(raw: &'r [u8]) -> impl Iterator<Item = &'r [u8]> + 'r {
        wire::fields(raw)
            .map_while(Result::ok)
            .filter(|f| f.number != LABEL_FIELD)
            .map(move |f| &raw[f.at..f.end])
    }

    /// Field 4 of `MetricFamily`: the identity's labels, the app's, then the metric's fields.
    fn encode(&self, ident_fields: &[u8], out: &mut Vec<u8>) {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let labels: usize = self.labels.iter().map(|(n, v)| label_len(n, v)).sum();
        let rest = match &self.rest {
            Rest::Raw(raw) => Self::raw_fields(raw).map(<[u8]>::len).sum(),
            // `metric.label` is empty: its other fields.
            Rest::Owned(m) => m.encoded_len(),
        };
        encode_key(4, WireType::LengthDelimited, out);
        encode_varint((ident_fields.len() + labels + rest) as u64, out);
        out.extend_from_slice(ident_fields);
        for (n, v) in &self.labels {
            encode_label(n, v, out);
        }
        match &self.rest {
            Rest::Raw(raw) => Self::raw_fields(raw).for_each(|f| out.extend_from_slice(f)),
            Rest::Owned(m) => m.encode_raw(out),
        }
    }
}

/// The encoded length of field 1 of `Metric` holding the label `name="value"`.
fn label_len(name: &str, value: &str) -> usize {
    let pair = label_pair_len(name, value);
    1 + prost::encoding::encoded_len_varint(pair as u64) + pair
}

/// The length of a `LabelPair` message (empty strings are not written, as in proto3).
fn label_pair_len(name: &str, value: &str) -> usize {
    let string = |s: &str| match s.len() {
        0 => 0,
        n => 1 + prost::encoding::encoded_len_varint(n as u64) + n,
    };
    string(name) + string(value)
}

/// Writes field 1 of `Metric` holding the label `name="value"`.
fn encode_label(name: &str, value: &str, out: &mut Vec<u8>) {
    use prost::encoding::{encode_key, encode_varint, WireType};
    encode_key(LABEL_FIELD, WireType::LengthDelimited, out);
    encode_varint(label_pair_len(name, value) as u64, out);
    for (field, s) in [(1, name), (2, value)] {
        if !s.is_empty() {
            encode_key(field, WireType::LengthDelimited, out);
            encode_varint(s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// A family with its names in `escaping`; of two labels of a metric that become one name, the
/// first is kept.
fn escaped(mut f: schema::MetricFamily, escaping: Escaping) -> schema::MetricFamily {
    rename(
        &mut f,
        |n| escaping.metric_name(n).into_owned(),
        |n| escaping.label_name(n).into_owned(),
    );
    f
}

/// Whether a family has a metric or label name outside the legacy set.
fn has_utf8_names(f: &schema::MetricFamily) -> bool {
    let labels = |l: &[schema::LabelPair]| l.iter().any(|l| !is_legacy_label(&l.name));
    !is_legacy(&f.name)
        || f.metric.iter().any(|m| {
            labels(&m.label)
                || m.counter
                    .iter()
                    .filter_map(|c| c.exemplar.as_ref())
                    .chain(m.histogram.iter().flat_map(|h| {
                        h.bucket
                            .iter()
                            .filter_map(|b| b.exemplar.as_ref())
                            .chain(&h.exemplars)
                    }))
                    .any(|e| labels(&e.label))
        })
}

/// A family made from a text body whose names `marker` wrote, with its names as they were.
fn unmark(f: &mut schema::MetricFamily, marker: Marker) {
    let back = |n: &str| String::from_utf8_lossy(&marker.decode(n.as_bytes())).into_owned();
    rename(f, back, back);
}

/// Renames a family's metric name and every label name (exemplars' too); of two labels of a
/// metric that become one name, the first is kept.
fn rename(
    f: &mut schema::MetricFamily,
    metric: impl Fn(&str) -> String,
    label: impl Fn(&str) -> String,
) {
    let labels = |labels: &mut Vec<schema::LabelPair>| {
        let mut seen = HashSet::new();
        labels.retain_mut(|l| {
            l.name = label(&l.name);
            seen.insert(l.name.clone())
        });
    };
    f.name = metric(&f.name);
    for m in &mut f.metric {
        labels(&mut m.label);
        if let Some(e) = m.counter.as_mut().and_then(|c| c.exemplar.as_mut()) {
            labels(&mut e.label);
        }
        if let Some(h) = m.histogram.as_mut() {
            for b in &mut h.bucket {
                if let Some(e) = b.exemplar.as_mut() {
                    labels(&mut e.label);
                }
            }
            for e in &mut h.exemplars {
                labels(&mut e.label);
            }
        }
    }
}

/// A metric's app labels as written after the identity's: empty ones left out, those named
/// like an identity label (or, for an app, `job` and `instance`) renamed `exported_*` until
/// the name is free (rule 2). Also whether one was renamed.
fn final_labels<'a>(
    ident: &[(&str, &str)],
    app: bool,
    mut labels: Vec<Label<'a>>,
) -> (Vec<Label<'a>>, bool) {
    labels.retain(|(_, v)| !v.is_empty());
    let is_ident =
        |n: &str| ident.iter().any(|(k, _)| *k == n) || (app && TARGET_LABELS.contains(&n));
    if !labels.iter().any(|(n, _)| is_ident(n)) {
        return (labels, false);
    }
    let (mut conflicting, mut out): (Vec<_>, Vec<_>) =
        labels.into_iter().partition(|(n, _)| is_ident(n));
    let renamed = !conflicting.is_empty();
    conflicting.sort_by_key(|(n, _)| n.len());
    for (n, v) in conflicting {
        let mut name = format!("exported_{n}");
        while ident.iter().any(|(k, _)| *k == name) || out.iter().any(|(o, _)| *o == name) {
            name.insert_str(0, "exported_");
        }
        out.push((Cow::Owned(name), v));
    }
    (out, renamed)
}

/// Writes the plan's families as length-prefixed `MetricFamily` messages; returns the
/// duplicates left out.
pub(super) fn write<S: Sink>(plan: &Plan<'_>, rs: &[&Rendered], sink: &mut S) -> u64 {
    sink.reserve(plan.header_bytes, plan.block_bytes);
    let mut duplicates = 0u64;
    let mut pieces: Vec<(&Bytes, Range<usize>)> = Vec::new();
    let mut header = Vec::new();
    for family in plan.families.iter().filter(|f| !f.dropped) {
        pieces.clear();
        for m in &plan.members[family.members.0 as usize..family.members.1 as usize] {
            let Some(b) = m.block else {
                continue;
            };
            let r = rs[m.source as usize];
            let block = &r.blocks[b as usize];
            duplicates += block.dups;
            pieces.push((&r.lines, block.lines.0 as usize..block.lines.1 as usize));
        }
        if family.compare_series {
            duplicates += first_metric_of_each_series(&mut pieces);
        }
        header.clear();
        let name = String::from_utf8_lossy(family.name);
        prost::encoding::string::encode(1, &name.into_owned(), &mut header);
        if let Some((h, from)) = family.help {
            let mut raw = Vec::new();
            lex::write_escaped(h, help_kind(from), Escaped::Raw, &mut raw);
            prost::encoding::bytes::encode(2, &raw, &mut header);
        }
        let t = metric_type(family.mtype) as i32;
        if t != 0 {
            prost::encoding::int32::encode(3, &t, &mut header);
        }
        if let Some(u) = family.unit {
            prost::encoding::bytes::encode(5, &u.to_vec(), &mut header);
        }
        let len = header.len() + pieces.iter().map(|(_, r)| r.len()).sum::<usize>();
        let text = sink.text();
        prost::encoding::encode_varint(len as u64, text);
        text.extend_from_slice(&header);
        for (lines, range) in &pieces {
            sink.block(lines, range.clone());
        }
    }
    duplicates
}

/// Rule 5 across sources: the pieces (blocks of encoded metrics) cut down to the first metric
/// of each series. Returns the metrics left out.
fn first_metric_of_each_series(pieces: &mut Vec<(&Bytes, Range<usize>)>) -> u64 {
    let mut metrics: Vec<(&Bytes, Range<usize>)> = Vec::new();
    for (lines, range) in pieces.iter() {
        let mut at = range.start;
        while at < range.end {
            let mut rest = &lines[at..range.end];
            // Blocks are written by `render_families`: a tag byte, a length, a message.
            let _tag = rest.first().copied();
            rest = &rest[1..];
            let before = rest.len();
            let len = prost::encoding::decode_varint(&mut rest).unwrap_or(0) as usize;
            let end = at + 1 + (before - rest.len()) + len;
            metrics.push((lines, at..end.min(range.end)));
            at = end;
        }
    }
    let keys: Vec<Vec<(String, String)>> = metrics
        .iter()
        .map(|(lines, r)| series_of(&lines[r.clone()]))
        .collect();
    let mut hashed: Vec<(u64, u32)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let h = k.iter().fold(0u64, |h, (n, v)| {
                h.wrapping_add(lex::pair_hash(n.as_bytes(), v.as_bytes()))
            });
            (h, i as u32)
        })
        .collect();
    let mut dup = Vec::new();
    let dropped = first_of_each_series(&mut hashed, &mut dup, |a, b| {
        keys[a as usize] == keys[b as usize]
    });
    *pieces = metrics
        .into_iter()
        .zip(dup)
        .filter(|(_, d)| !d)
        .map(|(p, _)| p)
        .collect();
    dropped
}

/// The sorted labels of one encoded `Metric` field (tag, length, message).
fn series_of(mut field: &[u8]) -> Vec<(String, String)> {
    field = field.get(1..).unwrap_or_default();
    let m = schema::Metric::decode_length_delimited(field).unwrap_or_default();
    let mut key: Vec<(String, String)> = m
        .label
        .into_iter()
        .filter(|l| !l.value.is_empty())
        .map(|l| (l.name, l.value))
        .collect();
    key.sort_unstable();
    key
}

#[cfg(test)]
mod tests {
    use super::super::super::proto::schema::*;
    use super::super::{merge, Source};
    use super::*;

    fn encode(families: &[MetricFamily]) -> Vec<u8> {
        let mut b = Vec::new();
        for f in families {
            f.encode_length_delimited(&mut b).unwrap();
        }
        b
    }

    fn decode(b: &[u8]) -> Vec<MetricFamily> {
        proto::decode(b).unwrap()
    }

    fn label(n: &str, v: &str) -> LabelPair {
        LabelPair {
            name: n.into(),
            value: v.into(),
        }
    }

    fn id(pod: &str) -> Option<IdentityLabels<'_>> {
        Some(IdentityLabels {
            namespace: "ns",
            pod,
            container: "c",
            endpoint: "metrics",
            ..Default::default()
        })
    }

    fn native_family(name: &str, labels: Vec<LabelPair>) -> MetricFamily {
        MetricFamily {
            name: name.into(),
            help: "Latency \\ of \"rpc\"\n".into(),
            r#type: MetricType::Histogram as i32,
            unit: String::new(),
            metric: vec![Metric {
                label: labels,
                histogram: Some(Histogram {
                    sample_count: 3,
                    sample_sum: 1.5,
                    schema: 3,
                    zero_threshold: 1e-128,
                    zero_count: 1,
                    positive_span: vec![BucketSpan {
                        offset: 2,
                        length: 2,
                    }],
                    positive_delta: vec![1, 0],
                    start_timestamp: Some(Timestamp {
                        seconds: 17,
                        nanos: 5,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn native_histograms_go_through_with_identity_labels() {
        let a = encode(&[native_family(
            "rpc",
            vec![
                label("method", "GET"),
                label("pod", "app-said"),
                label("job", "j"),
            ],
        )]);
        let b = encode(&[
            native_family("rpc", vec![label("method", "GET")]),
            MetricFamily {
                name: "up_total".into(),
                r#type: MetricType::Counter as i32,
                metric: vec![Metric {
                    counter: Some(Counter {
                        value: 1.0,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ]);
        let sources = [
            Source::new(id("a"), &a, Format::Protobuf),
            Source::new(id("b"), &b, Format::Protobuf),
        ];
        let (chunks, stats) = merge(&sources, Format::Protobuf);
        assert!(stats.rejected.is_empty(), "{stats:?}");
        let out = decode(&chunks.concat());
        assert_eq!(out.len(), 2);
        let rpc = &out[0];
        assert_eq!(rpc.name, "rpc");
        assert_eq!(rpc.help, "Latency \\ of \"rpc\"\n");
        assert_eq!(rpc.r#type, MetricType::Histogram as i32);
        assert_eq!(rpc.metric.len(), 2);
        let names: Vec<Vec<(&str, &str)>> = rpc
            .metric
            .iter()
            .map(|m| m.label.iter().map(|l| (&*l.name, &*l.value)).collect())
            .collect();
        assert_eq!(
            names[0],
            [
                ("namespace", "ns"),
                ("pod", "a"),
                ("container", "c"),
                ("endpoint", "metrics"),
                ("method", "GET"),
                ("exported_pod", "app-said"),
                ("exported_job", "j"),
            ]
        );
        assert_eq!(names[1][1], ("pod", "b"));
        let want = native_family("rpc", vec![]).metric[0].histogram.clone();
        assert_eq!(rpc.metric[0].histogram, want);
        assert_eq!(rpc.metric[1].histogram, want);
        assert_eq!(out[1].name, "up_total");
        // The same sources in text: the native-only histogram is left out.
        let (text, _) = merge(&sources, Format::Text);
        let text = String::from_utf8(text.concat()).unwrap();
        assert!(!text.contains("rpc"), "{text}");
        assert!(
            text.contains("up_total{namespace=\"ns\",pod=\"b\""),
            "{text}"
        );
    }

    #[test]
    fn target_and_pod_labels_come_first_and_an_apps_are_exported() {
        let pod_labels = [("team".to_string(), "pay".to_string())];
        let identity = Some(IdentityLabels {
            namespace: "ns",
            pod: "a",
            job: "web",
            instance: "10.0.0.1:8080",
            pod_labels: &pod_labels,
            ..Default::default()
        });
        let body = encode(&[native_family(
            "rpc",
            vec![
                label("team", "app-team"),
                label("instance", "i"),
                label("method", "GET"),
            ],
        )]);
        let (chunks, _) = merge(
            &[Source::new(identity, &body, Format::Protobuf)],
            Format::Protobuf,
        );
        let out = decode(&chunks.concat());
        let labels: Vec<(&str, &str)> = out[0].metric[0]
            .label
            .iter()
            .map(|l| (&*l.name, &*l.value))
            .collect();
        assert_eq!(
            labels,
            [
                ("namespace", "ns"),
                ("pod", "a"),
                ("job", "web"),
                ("instance", "10.0.0.1:8080"),
                ("team", "pay"),
                ("method", "GET"),
                ("exported_team", "app-team"),
                ("exported_instance", "i"),
            ]
        );
    }

    #[test]
    fn text_bodies_become_the_same_families() {
        let text = "# HELP c_total Requests.\n# TYPE c_total counter\nc_total{m=\"x\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n\
                    # TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 4\ns_count 2\n\
                    g 1.5 1000\n";
        let (chunks, stats) = merge(
            &[Source::new(id("a"), text.as_bytes(), Format::Text)],
            Format::Protobuf,
        );
        assert!(stats.rejected.is_empty(), "{stats:?}");
        let out = decode(&chunks.concat());
        let names: Vec<(&str, i32)> = out.iter().map(|f| (&*f.name, f.r#type)).collect();
        assert_eq!(
            names,
            [
                ("c_total", MetricType::Counter as i32),
                ("g", MetricType::Untyped as i32),
                ("h", MetricType::Histogram as i32),
                ("s", MetricType::Summary as i32),
            ]
        );
        assert_eq!(out[0].help, "Requests.");
        assert_eq!(out[0].metric[0].counter.as_ref().unwrap().value, 3.0);
        assert_eq!(out[1].metric[0].timestamp_ms, 1000);
        let h = out[2].metric[0].histogram.as_ref().unwrap();
        assert_eq!((h.sample_count, h.sample_sum, h.bucket.len()), (2, 3.0, 2));
        assert_eq!(out[3].metric[0].summary.as_ref().unwrap().quantile.len(), 1);
        assert_eq!(out[0].metric[0].label[1], label("pod", "a"));
    }

    #[test]
    fn utf8_names_are_escaped_with_underscores() {
        let body = encode(&[MetricFamily {
            name: "http.server.duration".into(),
            r#type: MetricType::Gauge as i32,
            metric: vec![Metric {
                label: vec![label("http.method", "GET"), label("http_method", "x")],
                gauge: Some(Gauge { value: 1.0 }),
                ..Default::default()
            }],
            ..Default::default()
        }]);
        let (chunks, stats) = merge(
            &[Source::new(id("a"), &body, Format::Protobuf)],
            Format::Protobuf,
        );
        assert!(stats.rejected.is_empty());
        let out = decode(&chunks.concat());
        assert_eq!(out[0].name, "http_server_duration");
        let labels: Vec<(&str, &str)> = out[0].metric[0]
            .label
            .iter()
            .map(|l| (&*l.name, &*l.value))
            .collect();
        assert_eq!(labels[4..], [("http_method", "GET")]);
        let (text, _) = merge(
            &[Source::new(id("a"), &body, Format::Protobuf)],
            Format::Text,
        );
        let text = String::from_utf8(text.concat()).unwrap();
        assert!(
            text.contains("http_server_duration{namespace=\"ns\""),
            "{text}"
        );
    }

    #[test]
    fn utf8_names_in_each_scheme_and_output() {
        let body = encode(&[MetricFamily {
            name: "http.server.duration".into(),
            r#type: MetricType::Gauge as i32,
            metric: vec![Metric {
                label: vec![label("http.method", "GET")],
                gauge: Some(Gauge { value: 1.0 }),
                ..Default::default()
            }],
            ..Default::default()
        }]);
        let text_body = "# TYPE \"http.server.duration\" gauge\n{\"http.server.duration\",\"http.method\"=\"GET\"} 1\n";
        for e in Escaping::ALL {
            let (name, label) = match e {
                Escaping::AllowUtf8 => ("http.server.duration", "http.method"),
                Escaping::Underscores => ("http_server_duration", "http_method"),
                Escaping::Dots => ("http_dot_server_dot_duration", "http_dot_method"),
                Escaping::Values => ("U__http_2e_server_2e_duration", "U__http_2e_method"),
            };
            // Protobuf and text bodies alike, into protobuf.
            for source in [
                Source::new(id("a"), &body, Format::Protobuf),
                Source::new(id("a"), text_body.as_bytes(), Format::Text),
            ] {
                let source = source.with_escaping(e);
                let (chunks, stats) = merge(&[source], Format::Protobuf);
                assert!(stats.rejected.is_empty(), "{e:?}: {:?}", stats.rejected);
                let out = decode(&chunks.concat());
                assert_eq!(out[0].name, name, "{e:?}");
                assert_eq!(out[0].metric[0].label[4].name, label, "{e:?}");
                // A stored rendering for the scheme is the same; one for another is not used.
                let r = source.render(Format::Protobuf);
                let (again, _) = merge(&[source.with_rendered(Some(&r))], Format::Protobuf);
                assert_eq!(again.concat(), chunks.concat());
            }
            // A protobuf body into the text formats.
            let (text, _) = merge(
                &[Source::new(id("a"), &body, Format::Protobuf).with_escaping(e)],
                Format::Text,
            );
            let text = String::from_utf8(text.concat()).unwrap();
            let want = match e {
                Escaping::AllowUtf8 => "# TYPE \"http.server.duration\" gauge\n{\"http.server.duration\",namespace=\"ns\",pod=\"a\",container=\"c\",endpoint=\"metrics\",\"http.method\"=\"GET\"} 1.0\n".to_string(),
                _ => format!("# TYPE {name} gauge\n{name}{{namespace=\"ns\",pod=\"a\",container=\"c\",endpoint=\"metrics\",{label}=\"GET\"}} 1.0\n"),
            };
            assert_eq!(text, want, "{e:?}");
        }
    }

    #[test]
    fn series_met_across_sources_are_written_once() {
        let body = encode(&[native_family("rpc", vec![label("method", "GET")])]);
        // Two sources with one identity: the second's metric is a duplicate.
        let sources = [
            Source::new(id("a"), &body, Format::Protobuf),
            Source::new(id("a"), &body, Format::Protobuf),
        ];
        let (chunks, stats) = merge(&sources, Format::Protobuf);
        assert_eq!(stats.duplicate_series, 1);
        assert_eq!(decode(&chunks.concat())[0].metric.len(), 1);
    }

    #[test]
    fn a_broken_body_is_rejected_and_the_others_stay() {
        let counter = MetricFamily {
            name: "c_total".into(),
            metric: vec![Metric {
                counter: Some(Counter::default()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let good = encode(&[native_family("rpc", vec![]), counter]);
        let sources = [
            Source::new(id("a"), b"\x05\x0a", Format::Protobuf),
            Source::new(id("b"), &good, Format::Protobuf),
        ];
        for out in [Format::Protobuf, Format::Text, Format::OpenMetrics] {
            let (chunks, stats) = merge(&sources, out);
            assert_eq!(stats.rejected.len(), 1, "{out:?}");
            assert_eq!(stats.rejected[0].0, 0);
            assert!(!chunks.concat().is_empty());
        }
    }
}

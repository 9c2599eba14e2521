//! The protobuf exposition (`application/vnd.google.protobuf;
//! proto=io.prometheus.client.MetricFamily; encoding=delimited`): a stream of varint-length-
//! prefixed `MetricFamily` messages, the one format that carries native histograms.
//!
//! - `schema.rs`: the messages (client_model's `metrics.proto`, beside it).
//! - `wire.rs`, `view.rs`: the wire format and the messages, read in place (views of the body).
//! - `read.rs`: a body read and checked as strictly as the text formats, or rejected whole
//!   with the family and byte offset.
//! - `to_text.rs`: families as an OpenMetrics body, which the text engine then parses, checks
//!   and renders like any other: how a protobuf body reaches text and OpenMetrics scrapers.
//! - `from_text.rs`: a parsed text body as families: how a text body reaches protobuf scrapers.
//!
//! The protobuf output is the merge engine's (`merge/protobuf.rs`): one block of encoded
//! metrics per family, planned and written like text blocks. prost encodes, and its decoding is
//! what the tests and the fuzz target hold the reader to.

mod from_text;
mod read;
pub mod schema;
mod to_text;
pub mod view;
pub(crate) mod wire;

pub(crate) use from_text::from_text;
pub use read::{decode, read, read_within};
pub(crate) use to_text::has_utf8_names;
pub use to_text::{to_openmetrics, OpenMetricsBody};
pub use wire::WireError;

/// The media type of the delimited protobuf exposition.
pub const MEDIA_TYPE: &str = "application/vnd.google.protobuf";
/// The parameters naming the message and the framing.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

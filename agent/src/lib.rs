//! loupe's node agent. A pod's bytes travel one way, one module per stage:
//!
//! ```text
//! discover -> node -> resolve -> capture | fetch -> ingest -> store -> expose
//!                                 \____ collect ____/
//! ```
//!
//! - [`discover`]: which pods and endpoints exist (pods file, Kubernetes); the targets they make.
//! - [`node`]: applies each discovery snapshot: resolves, attaches the probe, sets the targets.
//! - [`resolve`]: a pod's network namespace (and its identity, the cookie), running code inside it.
//! - [`capture`]: the eBPF programs that observe loopback replies, flow reassembly, HTTP parsing.
//! - [`fetch`]: asking the app itself, from inside its namespace, when nothing fresh was observed.
//! - [`collect`]: takes capture's replies, and fetches stale targets when a scrape asks, through
//!   ingest into the store; one fetch per target at a time.
//! - [`ingest`]: a reply becomes a checked, rendered snapshot or a typed [`ingest::TargetError`];
//!   a new limit on bodies goes here.
//! - [`store`]: the latest result per (pod, endpoint) target; nothing else.
//! - [`expose`]: the HTTP server that renders the merged node target and `/targets`.
//!
//! Helpers every stage may use: [`decode`], the exposition codec (parse, validate, merge,
//! render; no I/O; a new output format goes there and in the `Accept` negotiation,
//! [`decode::Format::negotiate`]); [`content`], HTTP content decoding for capture and fetch;
//! [`memory`], the node's memory budget that fetch and ingest reserve from;
//! [`telemetry`], the registry every module declares its counters and gauges in
//! ([`telemetry::counter!`]); [`cli`], the flags. [`cmd`] holds the `doctor`, `status` and
//! `capture` subcommands.
//!
//! Imports follow one order, with no way back: discover, resolve, capture and fetch, ingest,
//! store, collect, node, expose, cmd. Types flow downhill: resolve takes `NetnsRef` from
//! discover, the store holds what ingest makes. The two drivers come after what they drive:
//! `collect` moves replies from capture and fetch through ingest into the store, and `node`
//! (second in the data's path, as it applies discovery) sets up the probe and the store's targets.

#[cfg(feature = "agent")]
pub mod capture;
#[cfg(feature = "agent")]
pub mod cli;
#[cfg(feature = "agent")]
pub mod cmd;
#[cfg(feature = "agent")]
pub mod collect;
#[cfg(feature = "agent")]
pub mod content;
pub mod decode;
#[cfg(feature = "agent")]
pub mod discover;
#[cfg(feature = "agent")]
pub mod expose;
#[cfg(feature = "agent")]
pub mod fetch;
#[cfg(feature = "agent")]
pub mod ingest;

pub mod memory;
#[cfg(feature = "agent")]
pub mod node;
#[cfg(feature = "agent")]
pub mod resolve;
#[cfg(feature = "agent")]
pub mod store;
pub mod telemetry;

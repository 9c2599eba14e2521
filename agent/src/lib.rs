//! loupe's node agent. A pod's bytes travel one way, one module per stage:
//!
//! ```text
//! discover -> node -> resolve -> capture | fetch -> collect -> ingest -> store -> expose
//! ```
//!
//! - [`discover`]: which pods and endpoints exist (pods file, Kubernetes); the targets they make.
//! - [`node`]: applies each discovery snapshot: resolves, attaches the probe, sets the targets.
//! - [`resolve`]: a pod's network namespace (and its identity, the cookie), running code inside it.
//! - [`capture`]: the eBPF programs that observe loopback replies, flow reassembly, HTTP parsing.
//! - [`fetch`]: asking the app itself, from inside its namespace, when nothing fresh was observed.
//! - [`content`]: HTTP content decoding (gzip, deflate), shared by capture and fetch.
//! - [`collect`]: hands observed replies and scrape-time fetches to ingest, and the result to the
//!   store; serialises fetches per target.
//! - [`ingest`]: a reply becomes a checked, rendered snapshot or a typed [`ingest::TargetError`];
//!   a new limit on bodies goes here.
//! - [`decode`]: the exposition codec (parse, validate, merge, render); no I/O. A new output
//!   format goes here and in the `Accept` negotiation ([`decode::Format::negotiate`]).
//! - [`store`]: the latest result per (pod, endpoint) target; nothing else.
//! - [`expose`]: the HTTP server that renders the merged node target and `/targets`.
//!
//! Types flow the same way: a module uses the types of the stages before it, never after.
//! [`telemetry`] is the registry every module declares its counters and gauges in
//! ([`telemetry::counter!`]); [`cmd`] holds the `doctor`, `status` and `capture` subcommands.

pub mod capture;
pub mod cli;
pub mod cmd;
pub mod collect;
pub mod content;
pub mod decode;
pub mod discover;
pub mod expose;
pub mod fetch;
pub mod ingest;
pub mod node;
pub mod resolve;
pub mod store;
pub mod telemetry;

//! loupe's node agent. The modules follow the data flow, one stage each:
//!
//! ```text
//! discover -> resolve -> capture / fetch -> decode -> store -> expose
//! ```
//!
//! - [`discover`]: which pods and endpoints exist (pods file, Kubernetes).
//! - [`resolve`]: a pod's network namespace, and running code inside it.
//! - [`capture`]: the eBPF programs that observe loopback replies, flow reassembly, HTTP parsing.
//! - [`fetch`]: asking the app itself, from inside its namespace, when nothing fresh was observed.
//! - [`decode`]: the exposition codec (parse, validate, merge, render); no I/O.
//! - [`store`]: the latest snapshot per (pod, endpoint).
//! - [`expose`]: the HTTP server that renders the merged node target.
//!
//! [`telemetry`] holds the counter and gauge types each stage uses to declare what it reports in
//! one place. [`doctor`] and [`status`] are the `loupe doctor` and `loupe status` subcommands.

pub mod capture;
pub mod cli;
pub mod decode;
pub mod discover;
pub mod doctor;
pub mod expose;
pub mod fetch;
pub mod node;
pub mod resolve;
pub mod status;
pub mod store;
pub mod telemetry;

//! The agent's own counters and gauges, and the one registry they join.
//!
//! A module declares each counter with [`counter!`] (each gauge with [`gauge!`]): the macro makes
//! the static and enters it in [`COUNTERS`] ([`GAUGES`]), a link-time list (`linkme`), so `expose`
//! renders every declared one under the `loupe_` prefix and none can be left out of a hand-kept
//! list. Each module keeps its counters together with the log lines of the same events (Vector's
//! internal events are the model): an `events` section whose functions write the line and count.
//! Errors in log lines and target reasons are written with their causes ([`with_causes`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[doc(hidden)]
pub use linkme;

/// Every counter declared with [`counter!`], in no particular order.
#[linkme::distributed_slice]
pub static COUNTERS: [&'static Counter];

/// Every gauge declared with [`gauge!`], in no particular order.
#[linkme::distributed_slice]
pub static GAUGES: [&'static Gauge];

/// Declares a counter and registers it in [`COUNTERS`]:
/// `counter!(pub NAME, "loupe_..._total", "Help text.");`
#[macro_export]
macro_rules! counter {
    ($(#[$meta:meta])* $vis:vis $ident:ident, $name:literal, $help:literal $(,)?) => {
        $(#[$meta])*
        $vis static $ident: $crate::telemetry::Counter =
            $crate::telemetry::Counter::new($name, $help);
        const _: () = {
            #[$crate::telemetry::linkme::distributed_slice($crate::telemetry::COUNTERS)]
            #[linkme(crate = $crate::telemetry::linkme)]
            static REGISTERED: &$crate::telemetry::Counter = &$ident;
        };
    };
}

/// Declares a gauge and registers it in [`GAUGES`]:
/// `gauge!(pub NAME, "loupe_...", "Help text.");`
#[macro_export]
macro_rules! gauge {
    ($(#[$meta:meta])* $vis:vis $ident:ident, $name:literal, $help:literal $(,)?) => {
        $(#[$meta])*
        $vis static $ident: $crate::telemetry::Gauge =
            $crate::telemetry::Gauge::new($name, $help);
        const _: () = {
            #[$crate::telemetry::linkme::distributed_slice($crate::telemetry::GAUGES)]
            #[linkme(crate = $crate::telemetry::linkme)]
            static REGISTERED: &$crate::telemetry::Gauge = &$ident;
        };
    };
}

pub use crate::{counter, gauge};

/// Every registered counter and gauge in text format 0.0.4, sorted by name so that scrapes are
/// stable (link order is not).
pub fn render_registered(out: &mut String) {
    let mut counters: Vec<&Counter> = COUNTERS.iter().copied().collect();
    counters.sort_by_key(|c| c.name);
    render_counters(&counters, out);
    let mut gauges: Vec<&Gauge> = GAUGES.iter().copied().collect();
    gauges.sort_by_key(|g| g.name);
    render_gauges(&gauges, out);
}

/// A monotonically increasing agent-wide counter with its Prometheus name and help text.
pub struct Counter {
    pub name: &'static str,
    pub help: &'static str,
    value: AtomicU64,
}

impl Counter {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// An agent-wide value that goes up and down (a state, such as whether capture is on).
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    value: AtomicU64,
}

impl Gauge {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn set(&self, v: u64) {
        self.value.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Renders counters in text format 0.0.4 (`# HELP`, `# TYPE counter`, one sample each).
pub fn render_counters(counters: &[&Counter], out: &mut String) {
    for c in counters {
        render(c.name, c.help, "counter", c.get(), out);
    }
}

/// Renders gauges in text format 0.0.4 (`# HELP`, `# TYPE gauge`, one sample each).
pub fn render_gauges(gauges: &[&Gauge], out: &mut String) {
    for g in gauges {
        render(g.name, g.help, "gauge", g.get(), out);
    }
}

fn render(name: &str, help: &str, kind: &str, value: u64, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The error's message followed by those of its sources that it does not already contain (the
/// kernel's errno is often only in a source).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Lines of a multi-line cause kept from its end: a verifier log states its reason there, before
/// its statistics.
const CAUSE_TAIL_LINES: usize = 5;

/// A cause fit for one log line: a multi-line one (a verifier log, which can be thousands of
/// lines) keeps its first line and its last `CAUSE_TAIL_LINES`.
pub fn one_line(cause: &str) -> String {
    let lines: Vec<&str> = cause
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [first, rest @ ..] if rest.len() > CAUSE_TAIL_LINES => {
            let tail = &rest[rest.len() - CAUSE_TAIL_LINES..];
            format!("{first} | ... | {}", tail.join(" | "))
        }
        _ => lines.join(" | "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_log_becomes_one_line_with_its_reason() {
        let log = "load failed. Verifier output: 0: (b7) r0 = 0\n\n1: (85) call 122\n2: x\n3: y\n\
                   program of this type cannot use helper bpf_get_netns_cookie#122\n\
                   verification time 30 usec\nstack depth 0\nprocessed 12 insns\n";
        assert_eq!(
            one_line(log),
            "load failed. Verifier output: 0: (b7) r0 = 0 | ... | 3: y | \
             program of this type cannot use helper bpf_get_netns_cookie#122 | \
             verification time 30 usec | stack depth 0 | processed 12 insns"
        );
        assert_eq!(one_line("a: b\nc"), "a: b | c");
        assert_eq!(one_line("single"), "single");
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("loading: {0}")]
        Repeats(#[source] Inner),
        #[error("loading")]
        Hides(#[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("map `M`")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn causes_are_appended_once() {
        let denied = || Inner(std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            with_causes(&Outer::Repeats(denied())),
            "loading: map `M`: Operation not permitted (os error 1)"
        );
        assert_eq!(
            with_causes(&Outer::Hides(denied())),
            "loading: map `M`: Operation not permitted (os error 1)"
        );
    }

    /// Every counter and gauge the agent served when main.rs still listed them by hand (among
    /// them those that deploy/prometheus/alerts.yaml and the end-to-end tests use): each must be
    /// registered, once, and nothing else. A new one is added here too.
    #[test]
    fn every_counter_and_gauge_is_registered_once() {
        let mut names: Vec<&str> = COUNTERS.iter().map(|c| c.name).collect();
        names.extend(GAUGES.iter().map(|g| g.name));
        names.sort_unstable();
        let expected = [
            "loupe_attach_errors_total",
            "loupe_authz_access_reviews_total",
            "loupe_authz_decisions_not_remembered_total",
            "loupe_authz_review_failures_total",
            "loupe_authz_token_reviews_total",
            "loupe_capture_active",
            "loupe_capture_attach_failures_total",
            "loupe_capture_events_total",
            "loupe_capture_malformed_records_total",
            "loupe_capture_own_flows_rejected_total",
            "loupe_capture_payload_bytes_total",
            "loupe_capture_skipped_bytes_total",
            "loupe_capture_skipped_packets_total",
            "loupe_capture_stale_filters_removed_total",
            "loupe_detach_notices_dropped_total",
            "loupe_discovery_errors_total",
            "loupe_duplicate_series_total",
            "loupe_family_conflicts_total",
            "loupe_fetch_errors_total",
            "loupe_flow_bytes_dropped_total",
            "loupe_flow_bytes_unsynced_total",
            "loupe_flow_gaps_total",
            "loupe_flows_evicted_total",
            "loupe_flows_expired_total",
            "loupe_gzip_blocks_refused_total",
            "loupe_http_refused_connections_total",
            "loupe_http_refused_forbidden_total",
            "loupe_http_refused_unauthenticated_total",
            "loupe_http_refused_unavailable_total",
            "loupe_kubernetes_pods_dropped_total",
            "loupe_kubernetes_watch_errors_total",
            "loupe_memory_budget_bytes",
            "loupe_memory_budget_refusals_total",
            "loupe_memory_held_bytes",
            "loupe_merge_rejected_bodies_total",
            "loupe_native_histograms_omitted_total",
            "loupe_pods_file_endpoints_over_cap_total",
            "loupe_pods_file_errors_total",
            "loupe_pods_file_reloads_total",
            "loupe_rendered_oversize_total",
            "loupe_requests_malformed_total",
            "loupe_reserved_families_dropped_total",
            "loupe_resolve_errors_total",
            "loupe_responses_discarded_gap_total",
            "loupe_responses_discarded_malformed_total",
            "loupe_responses_discarded_too_large_total",
            "loupe_responses_discarded_truncated_total",
            "loupe_responses_discarded_unmatched_total",
            "loupe_responses_fetched_total",
            "loupe_responses_observed_total",
            "loupe_ringbuf_dropped_bytes_total",
            "loupe_ringbuf_dropped_events_total",
            "loupe_ringbuf_over_share_bytes_total",
            "loupe_ringbuf_over_share_packets_total",
            "loupe_scrapes_sharing_a_merge_total",
            "loupe_scrapes_total",
            "loupe_target_label_errors_total",
            "loupe_target_limit_exceeded_total",
            "loupe_tls_handshake_failures_total",
            "loupe_web_config_reload_failures_total",
            "loupe_web_config_reloads_total",
        ];
        for name in expected {
            assert!(names.contains(&name), "{name} is not registered: {names:?}");
        }
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(unique, names, "a name is registered twice");
        assert_eq!(names, expected, "registered but not expected");
    }

    #[test]
    fn registered_series_render_sorted() {
        let mut out = String::new();
        render_registered(&mut out);
        let names: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(names.len(), COUNTERS.len() + GAUGES.len());
        let counters = &names[..COUNTERS.len()];
        assert!(counters.windows(2).all(|w| w[0] < w[1]), "{counters:?}");
    }

    #[test]
    fn renders_help_type_and_value() {
        static C: Counter = Counter::new("loupe_test_total", "A test counter.");
        C.add(3);
        let mut out = String::new();
        render_counters(&[&C], &mut out);
        assert_eq!(
            out,
            "# HELP loupe_test_total A test counter.\n# TYPE loupe_test_total counter\nloupe_test_total 3\n"
        );
    }

    #[test]
    fn gauges_render_their_latest_value() {
        static G: Gauge = Gauge::new("loupe_test_active", "A test gauge.");
        G.set(1);
        G.set(0);
        let mut out = String::new();
        render_gauges(&[&G], &mut out);
        assert_eq!(
            out,
            "# HELP loupe_test_active A test gauge.\n# TYPE loupe_test_active gauge\nloupe_test_active 0\n"
        );
    }
}

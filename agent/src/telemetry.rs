//! The agent's own counters and gauges. Each stage declares every counter it emits in one place
//! (a `pub static COUNTERS: &[&Counter]` list in its module, and `GAUGES: &[&Gauge]` likewise), so
//! an operator can find them all, and `expose` renders every list under the `loupe_` prefix.
//! Errors in log lines and target reasons are written with their causes ([`with_causes`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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

#[cfg(test)]
mod tests {
    use super::*;

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

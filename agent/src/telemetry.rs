//! The agent's own counters. Each stage declares every counter it emits in one place (a
//! `pub static COUNTERS: &[&Counter]` list in its module), so an operator can find them all, and
//! `expose` renders every list under the `loupe_` prefix.

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

/// Renders counters in text format 0.0.4 (`# HELP`, `# TYPE counter`, one sample each).
pub fn render_counters(counters: &[&Counter], out: &mut String) {
    for c in counters {
        let _ = writeln!(out, "# HELP {} {}", c.name, c.help);
        let _ = writeln!(out, "# TYPE {} counter", c.name);
        let _ = writeln!(out, "{} {}", c.name, c.get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

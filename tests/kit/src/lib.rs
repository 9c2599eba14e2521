//! Support shared by loupe's tests and benchmarks, independent of the agent's code so that it can
//! judge it:
//! - [`root`]: the one gate for tests that need root (or any other missing capability);
//! - [`strict`]: the strict exposition checker (text 0.0.4 and OpenMetrics 1.0);
//! - [`bodies`]: the exposition body generator, with parameters;
//! - [`promtool`]: Prometheus' own check of a body;
//! - [`pyparse`]: Python prometheus-client's parsers, which read quoted UTF-8 names.

pub mod bodies;
pub mod promtool;
pub mod pyparse;
pub mod root;
pub mod strict;

/// Exposition format of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics if `om`, else text: the flag the property tests draw.
    pub fn from_om(om: bool) -> Format {
        if om {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn is_om(self) -> bool {
        self == Format::OpenMetrics
    }
}

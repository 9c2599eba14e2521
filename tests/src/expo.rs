//! Oracles for the expositions the end-to-end tests read: `loupe_testkit::strict`, the strict
//! checker shared with the agent's tests (stricter than promtool and Prometheus, which accept a
//! split family and duplicated series), and a `promtool check metrics` call.

pub use loupe_testkit::strict::{diff, Exposition, Sample};
use loupe_testkit::{strict, Format};

use crate::{Error, Result};

/// Checks a text (0.0.4) body strictly; every problem found, with its line number.
pub fn check_strict(text: &str) -> std::result::Result<Exposition, Vec<String>> {
    strict::check(text, Format::Text)
}

/// Like [`check_strict`], as a testbed error with the first problems listed.
pub fn parse_strict(text: &str) -> Result<Exposition> {
    check_strict(text).map_err(|errs| Error::Invalid {
        what: format!("exposition of {} bytes", text.len()),
        detail: format!(
            "{} problem(s): {}",
            errs.len(),
            errs.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
        ),
    })
}

/// Runs `promtool check metrics` on `text`; its complaints (parse errors and lint problems) are
/// an error.
pub fn promtool_check(text: &str) -> Result<()> {
    loupe_testkit::promtool::check_metrics(text.as_bytes()).map_err(|detail| Error::Invalid {
        what: "promtool check metrics".into(),
        detail: detail.chars().take(4000).collect(),
    })
}

/// Both oracles at once: promtool and the strict checker. Returns the parsed exposition.
pub fn check_all(text: &str) -> Result<Exposition> {
    promtool_check(text)?;
    parse_strict(text)
}

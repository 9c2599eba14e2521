//! Decode: the exposition codec. Exact, streaming parsing of Prometheus text 0.0.4 and
//! OpenMetrics 1.0, validation, and the merge of many pods' bodies into one node target. No I/O.
//!
//! TEMPORARY STAND-IN with the codec's interface, replaced by the real codec (issue 3).

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        match content_type {
            Some(ct) if ct.contains("openmetrics") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }
    pub fn negotiate(accept: Option<&str>) -> Format {
        Self::from_content_type(accept)
    }
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.reason
        )
    }
}

pub struct Summary {
    pub samples: usize,
    pub families: usize,
}

pub fn validate(body: &[u8], _format: Format) -> Result<Summary, ParseError> {
    let text = std::str::from_utf8(body).map_err(|e| ParseError {
        line: 1,
        column: e.valid_up_to() + 1,
        reason: "invalid UTF-8".into(),
    })?;
    let mut samples = 0;
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.contains(' ') {
            return Err(ParseError {
                line: i + 1,
                column: 1,
                reason: "expected a value".into(),
            });
        }
        samples += 1;
    }
    Ok(Summary {
        samples,
        families: 0,
    })
}

pub struct Identity<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    pub endpoint: &'a str,
}

pub struct Source<'a> {
    pub identity: Option<Identity<'a>>,
    pub body: &'a [u8],
    pub format: Format,
}

#[derive(Default)]
pub struct MergeStats {
    pub family_conflicts: u64,
    pub duplicate_series: u64,
    pub rejected: Vec<(usize, ParseError)>,
}

pub fn merge(sources: &[Source<'_>], _out: Format, buf: &mut Vec<u8>) -> MergeStats {
    for s in sources {
        buf.extend_from_slice(s.body);
    }
    MergeStats::default()
}

use crate::telemetry::Counter;
pub static COUNTERS: &[&Counter] = &[];

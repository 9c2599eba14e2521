//! The test app's exposition: `loupe_testkit::bodies` with `Spec::app`, deterministic and
//! lint-clean (promtool accepts it), N series over counters, gauges and a histogram with 3 to 6
//! labels each. Shared by `metrics-app` and the tests, which can compute what the app serves
//! without asking it. Also the app's command line.

use std::io::Write as _;

use loupe_testkit::bodies::{body, Spec};
use loupe_testkit::Format;

pub const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Garbage,
    Status500,
    InvalidUtf8,
    Cut,
    Hang,
    OpenMetrics,
    Gzip,
    Chunked,
    /// `--series` lines of one gauge with a distinct label each (3 million in 51 MB).
    ManySeries,
    /// `--series` samples, each with a 64 KiB label value.
    LongLabels,
    /// Always gzip (whatever was accepted): a few MB that expand to ~1.5 GB of valid exposition.
    GzipBomb,
    /// The normal body's head and Content-Length at once, then one byte a second.
    Drip,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "normal" => Mode::Normal,
            "garbage" => Mode::Garbage,
            "status500" => Mode::Status500,
            "invalid-utf8" => Mode::InvalidUtf8,
            "cut" => Mode::Cut,
            "hang" => Mode::Hang,
            "openmetrics" => Mode::OpenMetrics,
            "gzip" => Mode::Gzip,
            "chunked" => Mode::Chunked,
            "many-series" => Mode::ManySeries,
            "long-labels" => Mode::LongLabels,
            "gzip-bomb" => Mode::GzipBomb,
            "drip" => Mode::Drip,
            other => return Err(format!("unknown --mode {other:?}")),
        })
    }
}

/// The app's command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: String,
    pub series: usize,
    pub mode: Mode,
    pub extra_label: Option<(String, String)>,
    /// Served instead of the generated body (modes normal, gzip, chunked, cut, drip).
    pub body_file: Option<std::path::PathBuf>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            listen: "127.0.0.1:8080".into(),
            series: 100,
            mode: Mode::Normal,
            extra_label: None,
            body_file: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--listen" => o.listen = value()?,
                "--series" => {
                    let v = value()?;
                    o.series = v.parse().map_err(|_| format!("bad --series {v:?}"))?;
                }
                "--mode" => o.mode = value()?.parse()?,
                "--extra-label" => {
                    let v = value()?;
                    let (k, val) = v
                        .split_once('=')
                        .ok_or(format!("--extra-label wants NAME=VALUE, got {v:?}"))?;
                    o.extra_label = Some((k.to_string(), val.to_string()));
                }
                "--body-file" => o.body_file = Some(value()?.into()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(o)
    }
}

/// The text-format (0.0.4) body with `series` series, each with `extra` as its first label.
pub fn text(series: usize, extra: Option<&(String, String)>) -> Vec<u8> {
    body(&Spec::app(series).extra_label(extra.cloned())).into_bytes()
}

/// The same samples in OpenMetrics 1.0.
pub fn openmetrics(series: usize, extra: Option<&(String, String)>) -> Vec<u8> {
    let spec = Spec::app(series)
        .extra_label(extra.cloned())
        .format(Format::OpenMetrics);
    body(&spec).into_bytes()
}

/// One gauge with `series` distinct label values, in lines as short as they come (3 million in
/// 51 MB).
pub fn many_series(series: usize) -> Vec<u8> {
    let mut out = b"# TYPE m gauge\n".to_vec();
    for i in 0..series {
        let _ = writeln!(out, "m{{i=\"{i}\"}} 1");
    }
    out
}

/// `series` samples of one gauge, each with a 64 KiB label value.
pub fn long_labels(series: usize) -> Vec<u8> {
    let value = "v".repeat(64 << 10);
    let mut out = b"# TYPE app_long gauge\n".to_vec();
    for i in 0..series {
        let _ = writeln!(out, "app_long{{i=\"{i}\",v=\"{value}\"}} 1");
    }
    out
}

/// A gzip stream of many members (RFC 1952 2.2; what loupe and Go read as one body) that expands
/// to about 1.5 GB: one gauge, then 1 MiB blocks of comment lines, each block one member.
pub fn gzip_bomb() -> Vec<u8> {
    let comment = format!("# {}\n", "x".repeat(1021));
    let block = comment.repeat(1024);
    let member = gzip(block.as_bytes());
    let mut out = gzip(b"# TYPE app_bomb gauge\napp_bomb 1\n");
    for _ in 0..1500 {
        out.extend_from_slice(&member);
    }
    out
}

/// gzip of `body`.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_exactly_n_series_and_passes_both_oracles() {
        for n in [1, 10, 100, 1234] {
            let body = String::from_utf8(text(n, None)).unwrap();
            let exp = crate::expo::parse_strict(&body).unwrap();
            assert_eq!(exp.samples.len(), n, "series for n={n}");
        }
        let body = String::from_utf8(text(500, Some(&("pod".into(), "x".into())))).unwrap();
        let exp = crate::expo::check_all(&body).unwrap();
        assert!(exp.samples.iter().all(|s| s.label("pod") == Some("x")));
        assert!(exp
            .samples
            .iter()
            .all(|s| (3..=7).contains(&s.labels.len())));
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let om = String::from_utf8(openmetrics(100, None)).unwrap();
        assert!(om.ends_with("# EOF\n"));
        assert!(om.contains("# TYPE app_http_requests counter\n"));
    }
}

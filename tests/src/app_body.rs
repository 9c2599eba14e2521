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
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            listen: "127.0.0.1:8080".into(),
            series: 100,
            mode: Mode::Normal,
            extra_label: None,
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

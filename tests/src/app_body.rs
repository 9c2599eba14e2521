//! The test app's exposition: deterministic, lint-clean (promtool accepts it), N series over
//! counters, gauges and a histogram with 3 to 6 labels each. Shared by `metrics-app` and the tests,
//! which can compute what the app serves without asking it.

use std::fmt::Write as _;
use std::io::Write as _;

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

const BUCKETS: &[&str] = &["0.005", "0.05", "0.5", "5", "+Inf"];
/// Series per histogram label combination: the buckets, `_sum` and `_count`.
const HIST_SERIES: usize = 7;

struct Plan {
    hist: usize,
    counters: usize,
    inflight: usize,
    queue: usize,
}

fn plan(series: usize) -> Plan {
    let hist = series / 70;
    let rest = series - hist * HIST_SERIES;
    let counters = rest / 2;
    let inflight = rest / 4;
    Plan {
        hist,
        counters,
        inflight,
        queue: rest - counters - inflight,
    }
}

fn prefix(extra: Option<&(String, String)>) -> String {
    extra
        .map(|(k, v)| format!("{k}=\"{v}\","))
        .unwrap_or_default()
}

/// Renders the families; `om` selects OpenMetrics naming (counter families without `_total`, and
/// a final `# EOF`).
fn render(series: usize, extra: Option<&(String, String)>, om: bool) -> Vec<u8> {
    let p = plan(series);
    let x = prefix(extra);
    let mut s = String::with_capacity(series * 140 + 1024);
    let methods = ["GET", "POST", "PUT", "DELETE"];
    let codes = ["200", "201", "404", "500", "503"];
    let zones = ["europe-west1-a", "europe-west1-b", "us-east2-c"];

    let counter = if om {
        "app_http_requests"
    } else {
        "app_http_requests_total"
    };
    if p.counters > 0 {
        let _ = writeln!(
            s,
            "# HELP {counter} HTTP requests handled, by handler and outcome."
        );
        let _ = writeln!(s, "# TYPE {counter} counter");
    }
    for i in 0..p.counters {
        let _ = writeln!(
            s,
            "app_http_requests_total{{{x}method=\"{}\",handler=\"/api/v1/catalog/resources/{i:06}\",code=\"{}\",zone=\"{}\"}} {}",
            methods[i % 4],
            codes[i % 5],
            zones[i % 3],
            (i as u64).wrapping_mul(7919) % 1_000_003
        );
    }
    if p.inflight > 0 {
        let _ = writeln!(
            s,
            "# HELP app_inflight_requests Requests being served right now."
        );
        let _ = writeln!(s, "# TYPE app_inflight_requests gauge");
    }
    for i in 0..p.inflight {
        let _ = writeln!(
            s,
            "app_inflight_requests{{{x}handler=\"/api/v1/catalog/resources/{i:06}\",worker=\"http-worker-{}\",shard=\"storage-shard-{:03}\"}} {}",
            i % 16,
            i % 128,
            i % 97
        );
    }
    if p.hist > 0 {
        let _ = writeln!(
            s,
            "# HELP app_request_duration_seconds Time to answer a request."
        );
        let _ = writeln!(s, "# TYPE app_request_duration_seconds histogram");
    }
    for i in 0..p.hist {
        let labels = format!(
            "{x}handler=\"/api/v1/catalog/items/{i:05}\",method=\"{}\",region=\"{}\",tier=\"{}\"",
            methods[i % 4],
            zones[i % 3],
            ["gold", "silver", "bronze"][i % 3]
        );
        let mut cumulative = 0u64;
        for (b, le) in BUCKETS.iter().enumerate() {
            cumulative += ((i + b) % 11) as u64;
            let _ = writeln!(
                s,
                "app_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            s,
            "app_request_duration_seconds_sum{{{labels}}} {}.25",
            cumulative * 3
        );
        let _ = writeln!(
            s,
            "app_request_duration_seconds_count{{{labels}}} {cumulative}"
        );
    }
    if p.queue > 0 {
        let _ = writeln!(s, "# HELP app_queue_bytes Bytes waiting in each queue.");
        let _ = writeln!(s, "# TYPE app_queue_bytes gauge");
    }
    for i in 0..p.queue {
        let _ = writeln!(
            s,
            "app_queue_bytes{{{x}queue=\"ingest-queue-{i:06}\",tenant=\"tenant-org-{:04}\",region=\"{}\",tier=\"{}\",shard=\"storage-shard-{:03}\",class=\"c{}\"}} {}.5",
            i % 1000,
            zones[i % 3],
            ["gold", "silver", "bronze"][i % 3],
            i % 128,
            i % 7,
            (i as u64).wrapping_mul(104_729) % 10_000_019
        );
    }
    if om {
        s.push_str("# EOF\n");
    }
    s.into_bytes()
}

/// The text-format (0.0.4) body with `series` series.
pub fn text(series: usize, extra: Option<&(String, String)>) -> Vec<u8> {
    render(series, extra, false)
}

/// The same samples in OpenMetrics 1.0.
pub fn openmetrics(series: usize, extra: Option<&(String, String)>) -> Vec<u8> {
    render(series, extra, true)
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

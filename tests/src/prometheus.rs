//! The real Prometheus (Debian's /usr/bin/prometheus) scraping given targets every second, with
//! its own storage directory, queried through its HTTP API.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::http::{self, urlencode};
use crate::{free_port, io_err, wait_for, Error, Proc, Result, TempDir};

/// One element of an instant-vector result.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorSample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The `global:` section of the tests' Prometheus: scrapes and rule evaluations every second.
pub const GLOBAL: &str =
    "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n";

/// A running Prometheus; dropping it stops it and removes its storage.
#[derive(Debug)]
pub struct Prometheus {
    pub listen: String,
    proc: Proc,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` ("host:port", path /metrics) in job `job`.
    pub fn start(job: &str, targets: &[&str]) -> Result<Prometheus> {
        Self::start_with(job, targets, "")
    }

    /// [`Prometheus::start`] with more settings of the scrape job (YAML lines at the job's
    /// level, e.g. `scheme: https`).
    pub fn start_with(job: &str, targets: &[&str], job_settings: &str) -> Result<Prometheus> {
        Self::start_with_flags(job, targets, job_settings, &[])
    }

    /// [`Prometheus::start_with`] with more command-line flags, e.g.
    /// `--enable-feature=native-histograms` (2.40+: asks for protobuf first and stores native
    /// histograms).
    pub fn start_with_flags(
        job: &str,
        targets: &[&str],
        job_settings: &str,
        flags: &[&str],
    ) -> Result<Prometheus> {
        let quoted: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let mut settings = String::new();
        for line in job_settings.lines() {
            settings.push_str("    ");
            settings.push_str(line);
            settings.push('\n');
        }
        let config = format!(
            "{GLOBAL}scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n{settings}",
            quoted.join(", ")
        );
        Self::start_config(&config, flags)
    }

    /// Starts Prometheus with this whole configuration file (begin it with [`GLOBAL`] for
    /// scrapes and rule evaluations every second).
    pub fn start_config(config: &str, flags: &[&str]) -> Result<Prometheus> {
        let dir = TempDir::new("loupe-prometheus")?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).map_err(io_err(format!("writing {}", cfg.display())))?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .map_err(io_err("creating the prometheus log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io_err("starting prometheus (run scripts/setup.sh)"))?;
        let mut proc = Proc {
            what: format!("prometheus on {listen}"),
            child,
        };
        let log_path = dir.path().join("prometheus.log");
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            if !proc.running() {
                return Err(format!(
                    "exited: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            match http::get(&listen, "/-/ready", &[], Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => Ok(Some(())),
                Ok(r) => Err(format!("status {}", r.status)),
                Err(e) => Err(e.to_string()),
            }
        })?;
        Ok(Prometheus { listen, proc, dir })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn api(&self, path_and_query: &str) -> Result<Value> {
        let r = http::get(&self.listen, path_and_query, &[], Duration::from_secs(10))?;
        let what = format!("prometheus {path_and_query}");
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| Error::Invalid {
            what: what.clone(),
            detail: format!("status {}, not JSON: {e}", r.status),
        })?;
        if v["status"] != "success" {
            return Err(Error::Invalid {
                what,
                detail: v.to_string(),
            });
        }
        Ok(v["data"].clone())
    }

    /// `/api/v1/targets`: (scrape URL, health, last error) of each active target.
    pub fn targets(&self) -> Result<Vec<(String, String, String)>> {
        let data = self.api("/api/v1/targets")?;
        let list = data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(list
            .iter()
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap_or("").to_string();
                (s("scrapeUrl"), s("health"), s("lastError"))
            })
            .collect())
    }

    /// Instant query.
    pub fn query(&self, promql: &str) -> Result<Vec<VectorSample>> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(promql)))?;
        let result = data["result"].as_array().cloned().unwrap_or_default();
        Ok(result
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                VectorSample { labels, value }
            })
            .collect())
    }

    /// Polls `promql` until it returns at least `min` samples (the first scrape lands after a
    /// few seconds).
    pub fn query_until(
        &self,
        promql: &str,
        min: usize,
        timeout: Duration,
    ) -> Result<Vec<VectorSample>> {
        wait_for(
            &format!("prometheus query {promql} to return {min}+ samples"),
            timeout,
            || {
                let v = self.query(promql).map_err(|e| e.to_string())?;
                if v.len() >= min {
                    Ok(Some(v))
                } else {
                    Err(format!("{} samples", v.len()))
                }
            },
        )
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

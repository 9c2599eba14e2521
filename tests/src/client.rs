//! Another scraper inside a pod (a Prometheus-like client on the pod's loopback): a `curl` loop that
//! counts the replies it got, and stops cleanly between two requests when asked, so its count and
//! the app's request counter can be compared exactly.

use std::path::PathBuf;
use std::time::Duration;

use crate::pod::Pod;
use crate::{io_err, unique_suffix, wait_for, Proc, Result, TempDir};

#[derive(Debug)]
pub struct ClientLoop {
    proc: Proc,
    dir: TempDir,
}

impl ClientLoop {
    /// Starts `curl -sf URL` every `pause_s` seconds (a shell `sleep` argument, e.g. "0.2") inside `pod`.
    pub fn start(pod: &Pod, url: &str, pause_s: &str, extra_curl: &str) -> Result<ClientLoop> {
        let (pid, n) = unique_suffix();
        let dir = TempDir::new(&format!("loupe-client-{pid}-{n}"))?;
        let d = dir.path().display();
        let script = format!(
            "while [ ! -e {d}/stop ]; do \
               if curl -sf {extra_curl} -o /dev/null --max-time 20 '{url}'; then echo ok >> {d}/count; \
               else echo fail >> {d}/failed; fi; \
               sleep {pause_s}; \
             done"
        );
        let proc = pod.spawn(&format!("client-{n}"), "sh", &["-c", &script])?;
        Ok(ClientLoop { proc, dir })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replies received so far.
    pub fn count(&self) -> u64 {
        std::fs::read_to_string(self.file("count"))
            .map(|s| s.lines().count() as u64)
            .unwrap_or(0)
    }

    /// Failed requests so far.
    pub fn failures(&self) -> u64 {
        std::fs::read_to_string(self.file("failed"))
            .map(|s| s.lines().count() as u64)
            .unwrap_or(0)
    }

    /// Waits until the client got at least `n` replies.
    pub fn wait_count(&self, n: u64, timeout: Duration) -> Result<u64> {
        wait_for(
            &format!("the in-pod client to get {n} replies"),
            timeout,
            || {
                let c = self.count();
                Ok((c >= n).then_some(c))
            },
        )
    }

    /// Stops after the current request and returns how many replies it got in total.
    pub fn stop(mut self) -> Result<u64> {
        std::fs::write(self.file("stop"), b"").map_err(io_err("writing the client's stop file"))?;
        self.proc.wait_exit(Duration::from_secs(30))?;
        Ok(self.count())
    }
}

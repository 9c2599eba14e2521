//! Prometheus' own parser and linter on a body: `promtool check metrics` (Debian package
//! `prometheus`, installed by `scripts/setup.sh`).

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Where `scripts/setup.sh` installs it.
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// What `promtool check metrics` said of a body: `Err` carries its exit code and output when it
/// complained (a parse error or a lint problem), or why it could not run.
pub fn check_metrics(body: &[u8]) -> Result<(), String> {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {PROMTOOL} check metrics (run scripts/setup.sh): {e}"))?;
    let mut stdin = child.stdin.take().ok_or("promtool has no stdin")?;
    // Written from a thread: promtool may answer before it has read everything.
    let input = body.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for promtool: {e}"))?;
    let _ = writer.join();
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "promtool check metrics exited with {:?}:\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

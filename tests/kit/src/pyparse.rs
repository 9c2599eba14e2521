//! An independent parser for bodies with quoted UTF-8 names: the Python `prometheus-client`
//! library's (version 0.26, installed by `scripts/setup.sh`), whose text and OpenMetrics parsers
//! read `{"a.b","c.d"="x"} 1`. Prometheus 2.42's promtool cannot.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// The Python module it needs.
pub const MODULE: &str = "prometheus_client";

const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
body = sys.stdin.buffer.read().decode("utf-8")
parse = om if sys.argv[1] == "om" else text
for f in parse(body):
    print("family", json.dumps(f.name, ensure_ascii=False), f.type)
    for s in f.samples:
        labels = ",".join(json.dumps(k, ensure_ascii=False) + "=" + json.dumps(v, ensure_ascii=False) for k, v in sorted(s.labels.items()))
        print(" ", json.dumps(s.name, ensure_ascii=False), "{" + labels + "}", repr(s.value))
"#;

/// Whether the module can be imported.
pub fn available() -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {MODULE}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The families and samples the parser reads from `body` (OpenMetrics if `openmetrics`, else
/// text), one line each: `family "name" type`, then `  "sample" {"label"="value",...} value`
/// with labels sorted; `Err` with its complaint when it rejects the body.
pub fn parse(body: &[u8], openmetrics: bool) -> Result<String, String> {
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, if openmetrics { "om" } else { "text" }])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting python3: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("python3 has no stdin")?;
    let input = body.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for python3: {e}"))?;
    let _ = writer.join();
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(format!(
        "prometheus_client rejected the body ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    ))
}

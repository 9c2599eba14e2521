//! `loupe status`: asks a running agent for its targets (`/targets`) and prints one line per
//! target, with the reason of those that are down, which is otherwise only in the agent's log.
//! In a cluster: `kubectl exec -n loupe ds/loupe -- loupe status` (the agent's node only).

use crate::expose::{TargetStatus, Targets};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header;
use hyper_util::rt::TokioIo;
use std::process::ExitCode;
use std::time::Duration;

/// `/targets` of a node with many pods stays far below this.
const MAX_ANSWER_BYTES: usize = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{url}: not an address (expected http://HOST:PORT or HOST:PORT)")]
    Url { url: String },
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("{authority}: {reason}")]
    Http { authority: String, reason: String },
    #[error("{authority}/targets answered HTTP status {status} (is it a loupe agent?)")]
    Status { authority: String, status: u16 },
    #[error("{authority}/targets: not loupe's answer: {source}")]
    Json {
        authority: String,
        source: serde_json::Error,
    },
    #[error("{authority}: no answer within {TIMEOUT:?}")]
    Timeout { authority: String },
}

/// Prints the table, or the error; exit status 1 when the agent could not be asked.
pub async fn run(url: &str) -> ExitCode {
    match targets(url).await {
        Ok(answer) => {
            println!(
                "capture: {}",
                if answer.capture_active {
                    "observing with eBPF, fetching what was not observed"
                } else {
                    "fetch-only (the eBPF probe is not loaded; the agent's log says why)"
                }
            );
            print!("{}", table(&answer.targets));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loupe status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The agent's `/targets`.
pub async fn targets(url: &str) -> Result<Targets, StatusError> {
    let authority = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_string();
    if authority.is_empty() || authority.contains('/') || url.starts_with("https://") {
        return Err(StatusError::Url { url: url.into() });
    }
    let timeout = StatusError::Timeout {
        authority: authority.clone(),
    };
    tokio::time::timeout(TIMEOUT, ask(&authority))
        .await
        .unwrap_or(Err(timeout))
}

async fn ask(authority: &str) -> Result<Targets, StatusError> {
    let http = |e: &dyn std::error::Error| StatusError::Http {
        authority: authority.into(),
        reason: crate::telemetry::with_causes(e),
    };
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|source| StatusError::Connect {
            authority: authority.into(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get("/targets")
        .header(header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let response = sender.send_request(request).await.map_err(|e| http(&e))?;
    let status = response.status().as_u16();
    if status != 200 {
        conn.abort();
        return Err(StatusError::Status {
            authority: authority.into(),
            status,
        });
    }
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| http(&*e))?
        .to_bytes();
    conn.abort();
    let answer: Targets = serde_json::from_slice(&body).map_err(|source| StatusError::Json {
        authority: authority.into(),
        source,
    })?;
    Ok(answer)
}

/// One aligned line per target, down ones first (the reason last, whole).
pub fn table(targets: &[TargetStatus]) -> String {
    let mut rows: Vec<&TargetStatus> = targets.iter().collect();
    rows.sort_by_key(|t| (t.health == "up", t.namespace.as_str(), t.pod.as_str()));
    let header = [
        "NAMESPACE",
        "POD",
        "CONTAINER",
        "ENDPOINT",
        "HEALTH",
        "SOURCE",
        "AGE",
        "SAMPLES",
        "ERROR",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|t| {
            [
                t.namespace.clone(),
                t.pod.clone(),
                t.container.clone(),
                format!("{} (:{}{})", t.endpoint, t.port, t.path),
                t.health.clone(),
                t.source.clone().unwrap_or_else(|| "-".into()),
                t.age_seconds
                    .map_or_else(|| "-".into(), |a| format!("{a:.1}s")),
                t.samples.map_or_else(|| "-".into(), |n| n.to_string()),
                t.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |row: &[&str]| {
        let last = row.len() - 1;
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                let pad = widths[i] + 2 - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&header);
    for row in &cells {
        line(&row.each_ref().map(String::as_str));
    }
    if targets.is_empty() {
        out.push_str("(no targets: no pods with endpoints on this node yet)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pod: &str, health: &str, error: Option<&str>) -> TargetStatus {
        TargetStatus {
            namespace: "shop".into(),
            pod: pod.into(),
            container: "app".into(),
            endpoint: "http-metrics".into(),
            port: 8080,
            path: "/metrics".into(),
            health: health.into(),
            source: Some("fetched".into()),
            age_seconds: Some(1.25),
            samples: error.is_none().then_some(50),
            body_bytes: error.is_none().then_some(4000),
            error: error.map(Into::into),
        }
    }

    #[test]
    fn down_targets_come_first_with_their_reason() {
        let t = table(&[
            target("cart-0", "up", None),
            target("cart-1", "down", Some("HTTP status 500")),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("NAMESPACE  POD"), "{t}");
        assert!(lines[1].contains("cart-1"), "{t}");
        assert!(lines[1].ends_with("HTTP status 500"), "{t}");
        assert!(
            lines[2].contains("cart-0") && lines[2].contains(" up "),
            "{t}"
        );
        assert!(lines[2].contains("http-metrics (:8080/metrics)"), "{t}");
        // Columns line up: every row has HEALTH at the same offset.
        let at = lines[0].find("HEALTH").unwrap();
        assert_eq!(&lines[1][at..at + 4], "down");
        assert_eq!(&lines[2][at..at + 2], "up");
    }

    #[test]
    fn no_targets_says_so() {
        assert!(table(&[]).contains("no targets"));
    }

    #[tokio::test]
    async fn addresses_that_are_not_an_agent_are_named() {
        let e = targets("https://node:9897").await.unwrap_err();
        assert!(matches!(e, StatusError::Url { .. }), "{e}");
        let e = targets("http://node:9897/metrics").await.unwrap_err();
        assert!(matches!(e, StatusError::Url { .. }), "{e}");
        // A port nothing listens on: the error names it.
        let idle = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = idle.local_addr().unwrap();
        drop(idle);
        let e = targets(&format!("http://{addr}")).await.unwrap_err();
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}

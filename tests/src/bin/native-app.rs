//! The native-histogram test app: the metrics of `native_body` made with the official Rust
//! client (`prometheus-client`), observed once at start, served on `/metrics` in the format the
//! request's `Accept` asks for: protobuf (delimited `MetricFamily` messages, the only format with
//! native histograms) if it names `application/vnd.google.protobuf`, else OpenMetrics 1.0 if it
//! names `application/openmetrics-text`, else text 0.0.4. `/requests` counts the `/metrics`
//! answers per format.
//!
//! `native-app --listen ADDR:PORT [--utf8]`
//! ADDR: e.g. `127.0.0.1`, `0.0.0.0` (reachable on the pod's address too), or `[::]`.
//! `--utf8`: also a gauge with a UTF-8 name and label name (escaped with underscores in the text
//! formats; see `native_body`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loupe_tests::native_body::{self, Encoding, OPENMETRICS_TYPE, PROTOBUF_TYPE, TEXT_TYPE};
use prometheus_client::encoding::{prometheus_protobuf, prometheus_text, text};

struct App {
    protobuf: Vec<u8>,
    text: Vec<u8>,
    openmetrics: Vec<u8>,
    /// `/metrics` answers in protobuf, OpenMetrics, text.
    served: [AtomicU64; 3],
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match native_body::Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("native-app: {e}");
            std::process::exit(2);
        }
    };
    let app = match encode_all(opts.utf8) {
        Ok(app) => Arc::new(app),
        Err(e) => {
            eprintln!("native-app: encoding the metrics: {e}");
            std::process::exit(1);
        }
    };
    let listener = match TcpListener::bind(&opts.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("native-app: binding {}: {e}", opts.listen);
            std::process::exit(1);
        }
    };
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let app = Arc::clone(&app);
        std::thread::spawn(move || {
            let _ = serve(&app, stream);
        });
    }
}

/// The three bodies, encoded once: every request gets the same bytes.
fn encode_all(utf8: bool) -> Result<App, String> {
    let protobuf =
        prometheus_protobuf::encode_to_vec(&native_body::registry(Encoding::Protobuf, utf8))
            .map_err(|e| format!("protobuf: {e}"))?;
    let mut text_body = String::new();
    prometheus_text::encode(&mut text_body, &native_body::registry(Encoding::Text, utf8))
        .map_err(|e| format!("text 0.0.4: {e}"))?;
    let mut openmetrics = String::new();
    text::encode(
        &mut openmetrics,
        &native_body::registry(Encoding::OpenMetrics, utf8),
    )
    .map_err(|e| format!("OpenMetrics: {e}"))?;
    Ok(App {
        protobuf,
        text: text_body.into_bytes(),
        openmetrics: openmetrics.into_bytes(),
        served: Default::default(),
    })
}

/// Serves requests on one connection (keep-alive) until the peer closes or asks to close.
fn serve(app: &App, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut accept = String::new();
        let mut close = request_line.trim_end().ends_with("HTTP/1.0");
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("accept:") {
                accept.push_str(v);
                accept.push(',');
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        if content_length > 0 {
            let mut sink = vec![0u8; content_length.min(1 << 20)];
            reader.read_exact(&mut sink)?;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        match path.split('?').next().unwrap_or("/") {
            "/metrics" => {
                let (i, content_type, body) = if accept.contains("application/vnd.google.protobuf")
                {
                    (0, PROTOBUF_TYPE, &app.protobuf)
                } else if accept.contains("application/openmetrics-text") {
                    (1, OPENMETRICS_TYPE, &app.openmetrics)
                } else {
                    (2, TEXT_TYPE, &app.text)
                };
                app.served[i].fetch_add(1, Ordering::Relaxed);
                respond(&mut out, "200 OK", content_type, body)?;
            }
            "/requests" => {
                let mut body = String::from(
                    "# HELP native_app_requests_total Requests the app answered on /metrics, by format.\n\
                     # TYPE native_app_requests_total counter\n",
                );
                for (format, n) in ["protobuf", "openmetrics", "text"].iter().zip(&app.served) {
                    body.push_str(&format!(
                        "native_app_requests_total{{format=\"{format}\"}} {}\n",
                        n.load(Ordering::Relaxed)
                    ));
                }
                respond(&mut out, "200 OK", TEXT_TYPE, body.as_bytes())?;
            }
            _ => respond(&mut out, "404 Not Found", "text/plain", b"not found\n")?,
        }
        if close {
            return Ok(());
        }
    }
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

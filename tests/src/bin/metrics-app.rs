//! The test app: serves a deterministic Prometheus exposition on `/metrics` (byte-identical on
//! every request) and its own request counter on `/requests`, or misbehaves in a chosen way.
//!
//! `metrics-app --listen ADDR:PORT [--series N] [--mode MODE] [--extra-label NAME=VALUE]`
//! ADDR: e.g. `127.0.0.1`, or `[::]` for both families (dual-stack with the default `bindv6only=0`).
//! `[--body-file PATH]` (served instead of the generated body)
//! MODE: normal | garbage | status500 | invalid-utf8 | cut | hang | openmetrics | gzip | chunked |
//! many-series | long-labels | gzip-bomb | drip (see `app_body::Mode`)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loupe_tests::app_body::{self, Mode};

/// Connections served at once; more are refused (closed) and counted.
const MAX_CONNECTIONS: usize = 256;

struct App {
    mode: Mode,
    text: Vec<u8>,
    gzipped: Vec<u8>,
    openmetrics: Vec<u8>,
    metrics_requests: AtomicU64,
    refused: AtomicU64,
    open: AtomicUsize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match app_body::Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("metrics-app: {e}");
            std::process::exit(2);
        }
    };
    let text = match (&opts.body_file, opts.mode) {
        (Some(path), _) => match std::fs::read(path) {
            Ok(body) => body,
            Err(e) => {
                eprintln!("metrics-app: reading {}: {e}", path.display());
                std::process::exit(2);
            }
        },
        (None, Mode::ManySeries) => app_body::many_series(opts.series),
        (None, Mode::LongLabels) => app_body::long_labels(opts.series),
        (None, _) => app_body::text(opts.series, opts.extra_label.as_ref()),
    };
    let gzipped = match opts.mode {
        Mode::Gzip => app_body::gzip(&text),
        Mode::GzipBomb => app_body::gzip_bomb(),
        _ => Vec::new(),
    };
    let openmetrics = if opts.mode == Mode::OpenMetrics {
        app_body::openmetrics(opts.series, opts.extra_label.as_ref())
    } else {
        Vec::new()
    };
    let listener = match TcpListener::bind(&opts.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("metrics-app: binding {}: {e}", opts.listen);
            std::process::exit(1);
        }
    };
    let app = Arc::new(App {
        mode: opts.mode,
        text,
        gzipped,
        openmetrics,
        metrics_requests: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        open: AtomicUsize::new(0),
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if app.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            app.refused.fetch_add(1, Ordering::Relaxed);
            continue; // dropping the stream closes it
        }
        app.open.fetch_add(1, Ordering::Relaxed);
        let app = Arc::clone(&app);
        std::thread::spawn(move || {
            let _ = serve(&app, stream);
            app.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
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
        let mut gzip_ok = false;
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
            if lower.starts_with("accept-encoding:") && lower.contains("gzip") {
                gzip_ok = true;
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
        let path = path.split('?').next().unwrap_or("/");
        match path {
            "/metrics" => {
                app.metrics_requests.fetch_add(1, Ordering::Relaxed);
                if !metrics(app, &mut out, gzip_ok)? {
                    return Ok(());
                }
            }
            "/requests" => {
                let body = format!(
                    "# HELP app_requests_total Requests the app answered on /metrics.\n\
                     # TYPE app_requests_total counter\n\
                     app_requests_total{{path=\"/metrics\"}} {}\n\
                     # HELP app_refused_connections_total Connections closed unanswered because too many were open.\n\
                     # TYPE app_refused_connections_total counter\n\
                     app_refused_connections_total {}\n",
                    app.metrics_requests.load(Ordering::Relaxed),
                    app.refused.load(Ordering::Relaxed)
                );
                respond(
                    &mut out,
                    "200 OK",
                    app_body::TEXT_TYPE,
                    &[],
                    body.as_bytes(),
                )?;
            }
            _ => respond(&mut out, "404 Not Found", "text/plain", &[], b"not found\n")?,
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
    extra: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// The gzipped body.
fn gzipped(out: &mut TcpStream, app: &App) -> std::io::Result<()> {
    respond(
        out,
        "200 OK",
        app_body::TEXT_TYPE,
        &[("Content-Encoding", "gzip")],
        &app.gzipped,
    )
}

/// A 200 response's head announcing a text body of `len` bytes.
fn text_head(out: &mut TcpStream, len: usize) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\n\r\n",
        app_body::TEXT_TYPE
    );
    out.write_all(head.as_bytes())
}

/// Answers `/metrics` in the app's mode; false when the connection must end.
fn metrics(app: &App, out: &mut TcpStream, gzip_ok: bool) -> std::io::Result<bool> {
    match app.mode {
        Mode::Normal | Mode::ManySeries | Mode::LongLabels => {
            respond(out, "200 OK", app_body::TEXT_TYPE, &[], &app.text)?
        }
        Mode::Drip => {
            text_head(out, app.text.len())?;
            for byte in &app.text {
                out.write_all(std::slice::from_ref(byte))?;
                out.flush()?;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Mode::Gzip if gzip_ok => gzipped(out, app)?,
        // The bomb is sent whatever was accepted.
        Mode::GzipBomb => gzipped(out, app)?,
        Mode::Gzip => respond(out, "200 OK", app_body::TEXT_TYPE, &[], &app.text)?,
        Mode::OpenMetrics => respond(
            out,
            "200 OK",
            app_body::OPENMETRICS_TYPE,
            &[],
            &app.openmetrics,
        )?,
        Mode::Chunked => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
                app_body::TEXT_TYPE
            );
            out.write_all(head.as_bytes())?;
            // Uneven chunk sizes, so chunk boundaries fall anywhere in lines.
            let sizes = [1usize, 7, 100, 4093, 16384];
            let mut rest = app.text.as_slice();
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                out.write_all(format!("{n:x}\r\n").as_bytes())?;
                out.write_all(&rest[..n])?;
                out.write_all(b"\r\n")?;
                rest = &rest[n..];
                i += 1;
            }
            out.write_all(b"0\r\n\r\n")?;
            out.flush()?;
        }
        Mode::Garbage => respond(
            out,
            "200 OK",
            app_body::TEXT_TYPE,
            &[],
            b"<html><body>{{{ this is not an exposition }}}</body></html>\n!!! 1 2 3\n",
        )?,
        Mode::Status500 => respond(
            out,
            "500 Internal Server Error",
            "text/plain",
            &[],
            b"upstream exploded\n",
        )?,
        Mode::InvalidUtf8 => {
            let mut body =
                b"# HELP app_bad_info Broken.\n# TYPE app_bad_info gauge\napp_bad_info{v=\""
                    .to_vec();
            body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
            body.extend_from_slice(b"\"} 1\n");
            respond(out, "200 OK", app_body::TEXT_TYPE, &[], &body)?;
        }
        Mode::Cut => {
            text_head(out, app.text.len())?;
            out.write_all(&app.text[..app.text.len() / 2])?;
            out.flush()?;
            let _ = out.shutdown(std::net::Shutdown::Both);
            return Ok(false);
        }
        Mode::Hang => {
            // Never answer; hold the connection until the peer gives up.
            let mut buf = [0u8; 1];
            let _ = out.set_read_timeout(Some(Duration::from_secs(3600)));
            let _ = out.read(&mut buf);
            return Ok(false);
        }
    }
    Ok(true)
}

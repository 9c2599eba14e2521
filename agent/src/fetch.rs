//! Fetch: the asking path. When nothing fresh was observed, the agent sends the request itself
//! from inside the pod's network namespace to the app's loopback port, and reads the reply from
//! its own socket.
//!
//! The socket is created on a thread inside the pod's namespace (it keeps that namespace for its
//! life) and then used from the runtime like any other. Its local port is registered with the
//! eBPF side before the request is sent, so the reply is not also captured as an observation.

use crate::capture::probe::OwnFlows;
use crate::capture::NetnsCookie;
use crate::resolve::netns::{Netns, NetnsError};
use crate::telemetry::Counter;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header;
use hyper_util::rt::TokioIo;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

pub static FETCHED: Counter = Counter::new(
    "loupe_responses_fetched_total",
    "Responses loupe asked apps for itself because nothing fresh was observed.",
);
pub static FETCH_ERRORS: Counter = Counter::new(
    "loupe_fetch_errors_total",
    "Fetches that failed (connection, timeout, HTTP status, size limit).",
);
pub static COUNTERS: &[&Counter] = &[&FETCHED, &FETCH_ERRORS];

/// The Accept header Prometheus sends, so apps answer loupe as they would answer Prometheus.
const ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot connect to 127.0.0.1:{port}: {source}")]
    Connect { port: u16, source: std::io::Error },
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the body: {0}")]
    Body(String),
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    #[error("gzip body: {0}")]
    Gzip(#[from] crate::capture::http::GunzipError),
}

/// A successful response.
#[derive(Debug)]
pub struct Fetched {
    pub content_type: Option<String>,
    pub body: Bytes,
    pub duration: Duration,
}

pub struct Request<'a> {
    pub netns: &'a Netns,
    pub cookie: NetnsCookie,
    pub port: u16,
    pub path: &'a str,
    pub timeout: Duration,
    pub max_body_bytes: usize,
}

/// Asks the app for its metrics from inside its namespace. Counts the outcome.
pub async fn fetch(req: Request<'_>, own: &OwnFlows) -> Result<Fetched, FetchError> {
    let started = Instant::now();
    let result = match tokio::time::timeout(req.timeout, fetch_inner(&req, own)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout(req.timeout)),
    };
    match &result {
        Ok(_) => FETCHED.inc(),
        Err(_) => FETCH_ERRORS.inc(),
    }
    result.map(|(content_type, body)| Fetched {
        content_type,
        body,
        duration: started.elapsed(),
    })
}

async fn fetch_inner(
    req: &Request<'_>,
    own: &OwnFlows,
) -> Result<(Option<String>, Bytes), FetchError> {
    let port = req.port;
    let connect_err = |source| FetchError::Connect { port, source };
    let socket = req
        .netns
        .run_async(|| {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
            Ok::<_, std::io::Error>(socket)
        })
        .await?
        .map_err(connect_err)?;
    let local_port = socket.local_addr().map_err(connect_err)?.port();
    let _registered = own.register(req.cookie, local_port);
    let stream = socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .map_err(connect_err)?;

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(req.path)
        .header(header::HOST, format!("127.0.0.1:{port}"))
        .header(header::ACCEPT, ACCEPT)
        .header(header::ACCEPT_ENCODING, "gzip")
        .header(
            header::USER_AGENT,
            concat!("loupe/", env!("CARGO_PKG_VERSION")),
        )
        .header(
            "X-Prometheus-Scrape-Timeout-Seconds",
            format!("{:.3}", req.timeout.as_secs_f64()),
        )
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let header_str = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header_str(header::CONTENT_TYPE);
    let gzipped =
        header_str(header::CONTENT_ENCODING).is_some_and(|e| e.eq_ignore_ascii_case("gzip"));
    if status != 200 {
        conn.abort();
        return Err(FetchError::Status(status));
    }
    let limit = req.max_body_bytes;
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge { limit }
            } else {
                FetchError::Body(e.to_string())
            }
        })?
        .to_bytes();
    conn.abort();
    let body = if gzipped {
        crate::capture::http::gunzip_bounded(&body, limit)?
    } else {
        body
    };
    Ok((content_type, body))
}

/// What the refresh of stale targets needs.
#[derive(Clone)]
pub struct Refresher {
    pub store: crate::store::Store,
    pub own: OwnFlows,
    pub freshness: Duration,
    pub fetch_timeout: Duration,
    pub max_body_bytes: usize,
    /// Bounds the fetches in flight (each briefly needs a thread to enter a namespace).
    pub slots: std::sync::Arc<tokio::sync::Semaphore>,
}

/// At most this many fetches run at once, node-wide.
pub const MAX_CONCURRENT_FETCHES: usize = 64;

impl Refresher {
    /// Fetches every target without a fresh result, in parallel, and waits until `deadline` at
    /// most. Fetches still running then go on and land for the next scrape. Concurrent callers
    /// share the fetches in flight: each target's fetch holds its lock, and a caller that got the
    /// lock after another finds the result fresh and does not ask again.
    pub async fn refresh_stale(&self, deadline: tokio::time::Instant) {
        let stale = self.store.stale(Instant::now(), self.freshness);
        let mut handles = Vec::with_capacity(stale.len());
        for (key, lock) in stale {
            let this = self.clone();
            handles.push(tokio::spawn(async move {
                let _guard = lock.lock().await;
                if this.store.is_fresh(&key, Instant::now(), this.freshness) {
                    return;
                }
                let Ok(_slot) = this.slots.acquire().await else {
                    return;
                };
                this.fetch_one(&key).await;
            }));
        }
        let _ = tokio::time::timeout_at(deadline, async {
            for handle in handles {
                let _ = handle.await;
            }
        })
        .await;
    }

    async fn fetch_one(&self, key: &crate::store::TargetKey) {
        use crate::store::{Origin, Outcome, Snapshot};
        let Some(resolved) = self.store.resolved(key) else {
            return; // the target went away meanwhile
        };
        let at = Instant::now();
        let result = match resolved {
            Err(reason) => Err(reason),
            Ok((netns, cookie)) => {
                let request = Request {
                    netns: &netns,
                    cookie,
                    port: key.port,
                    path: &key.path,
                    timeout: self.fetch_timeout,
                    max_body_bytes: self.max_body_bytes,
                };
                match fetch(request, &self.own).await {
                    Ok(f) => {
                        Snapshot::decode(f.body, f.content_type.as_deref()).map(std::sync::Arc::new)
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let outcome = Outcome {
            at,
            origin: Origin::Fetched,
            duration: at.elapsed(),
            result,
        };
        self.store.record(key, outcome);
    }
}

//! Fetch: the asking path. When nothing fresh was observed, the agent sends the request itself
//! from inside the pod's network namespace to the app's loopback port, and reads the reply from
//! its own socket.
//!
//! The socket is created on a thread inside the pod's namespace (it keeps that namespace for its
//! life) and then used from the runtime like any other. Its local port is registered with the
//! eBPF side before the request is sent, so the reply is not also captured as an observation.
//!
//! The body is read into memory reserved from the node's budget as it grows (and so is its
//! decoded form), so replies that would together pass it are refused, not an OOM kill.
//!
//! The app is asked on 127.0.0.1, and on `[::1]` when nothing listens there: an app that binds
//! `localhost` may get only the IPv6 loopback (Node.js 17 and later resolve it so).

use crate::content::{self, ContentError};
use crate::memory::{Budget, Exceeded, Reservation};
use crate::resolve::netns::{Netns, NetnsError};
use crate::resolve::NetnsCookie;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

crate::telemetry::counter!(
    pub FETCHED,
    "loupe_responses_fetched_total",
    "Responses loupe asked apps for itself because nothing fresh was observed.",
);
crate::telemetry::counter!(
    pub FETCH_ERRORS,
    "loupe_fetch_errors_total",
    "Fetches that failed (connection, timeout, HTTP status, size limit).",
);

// Events: a fetch's failure is logged by the store when the target's state changes, so here
// only the counts.

fn fetch_done<T>(result: &Result<T, FetchError>) {
    match result {
        Ok(_) => FETCHED.inc(),
        Err(_) => FETCH_ERRORS.inc(),
    }
}

/// What loupe asks apps for: the formats it reads (`decode::ASK_APPS`).
const ACCEPT: &str = crate::decode::ASK_APPS;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("nothing listens on 127.0.0.1:{port} or [::1]:{port} (connection refused)")]
    NotListening { port: u16 },
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
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Memory(#[from] Exceeded),
}

/// Where the fetch registers its client ports, so that the observer skips its own replies (the
/// probe's own-flow table; wired in by `node`). Registration is best effort: a port that could
/// not be registered only means the reply is observed as well (the same body twice).
pub trait OwnPorts: Send + Sync {
    /// Marks the flow from `client_port` in the namespace `cookie` as loupe's own until the
    /// returned guard is dropped; `None` when that was not possible.
    fn register(&self, cookie: NetnsCookie, client_port: u16) -> Option<OwnPort>;
}

/// Keeps a port registered as loupe's own while it lives.
pub type OwnPort = Box<dyn Send + Sync>;

/// A successful response.
#[derive(Debug)]
pub struct Fetched {
    pub content_type: Option<String>,
    pub body: Bytes,
    pub duration: Duration,
    /// What the body holds of the budget until ingest keeps it (or not).
    pub reading: Reservation,
}

pub struct Request<'a> {
    pub netns: &'a Netns,
    pub cookie: NetnsCookie,
    pub port: u16,
    pub path: &'a str,
    pub timeout: Duration,
    pub max_body_bytes: usize,
    pub budget: &'a Budget,
}

/// Asks the app for its metrics from inside its namespace. Counts the outcome.
pub async fn fetch(req: Request<'_>, own: Option<&dyn OwnPorts>) -> Result<Fetched, FetchError> {
    let started = Instant::now();
    let result = match tokio::time::timeout(req.timeout, fetch_inner(&req, own)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout(req.timeout)),
    };
    fetch_done(&result);
    result.map(|(content_type, body, reading)| Fetched {
        content_type,
        body,
        duration: started.elapsed(),
        reading,
    })
}

async fn fetch_inner(
    req: &Request<'_>,
    own: Option<&dyn OwnPorts>,
) -> Result<(Option<String>, Bytes, Reservation), FetchError> {
    let (stream, _registered) = connect(req, own).await?;
    let address = stream.peer_addr().map_err(|source| FetchError::Connect {
        address: SocketAddr::from((Ipv4Addr::LOCALHOST, req.port)),
        source,
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(req.path)
        .header(header::HOST, address.to_string())
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
    let encoding = header_str(header::CONTENT_ENCODING);
    if status != 200 {
        conn.abort();
        return Err(FetchError::Status(status));
    }
    let limit = req.max_body_bytes;
    let mut reading = req.budget.reserve(READING, 0, 0)?;
    let body = read_body(response.into_body(), limit, &mut reading).await?;
    conn.abort();
    let body = match encoding {
        // Decoding takes CPU time in proportion to the decoded size: on the blocking pool, never
        // on the workers that answer `/healthz`.
        Some(encoding) => {
            let decode = move || {
                let decoded =
                    content::decode_content(encoding.as_bytes(), &body, limit, Some(&mut reading));
                (decoded, reading)
            };
            let (decoded, kept) = match tokio::task::spawn_blocking(decode).await {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(FetchError::Body(e.to_string())),
            };
            reading = kept;
            decoded?
        }
        None => body,
    };
    Ok((content_type, body, reading))
}

/// What a fetch's reservation is for, in the budget's refusal.
const READING: &str = "reading this body";

/// The budget grows by at least this much at a time.
const RESERVE_STEP: usize = 1 << 20;

/// Reads the whole body, at most `limit` bytes, into memory reserved from the budget as it grows.
async fn read_body(
    mut body: hyper::body::Incoming,
    limit: usize,
    reading: &mut Reservation,
) -> Result<Bytes, FetchError> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        // hyper's message alone ("error reading a body from connection") hides the cause, e.g.
        // that the app closed the connection before the body was complete.
        let frame = frame.map_err(|e| FetchError::Body(crate::telemetry::with_causes(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let needed = buf.len() + data.len();
        if needed > limit {
            return Err(FetchError::TooLarge { limit });
        }
        if needed > buf.capacity() {
            // Ahead in steps, as far as the budget lets a body go.
            let most = limit.min(reading.bytes() + reading.body_room());
            let capacity = (2 * buf.capacity()).max(RESERVE_STEP).min(most).max(needed);
            reading.grow_body(READING, capacity.saturating_sub(reading.bytes()))?;
            buf.reserve_exact(capacity - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    Ok(Bytes::from(buf))
}

/// Connects to the app's port on 127.0.0.1, or on [::1] when that is refused (or the namespace
/// has no IPv4 loopback), with the socket's local port registered as the agent's own.
async fn connect(
    req: &Request<'_>,
    own: Option<&dyn OwnPorts>,
) -> Result<(tokio::net::TcpStream, Option<OwnPort>), FetchError> {
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let address = SocketAddr::new(ip, req.port);
        let connect_err = |source| FetchError::Connect { address, source };
        let socket = req
            .netns
            .run_async(move || {
                let socket = match ip {
                    IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                Ok::<_, std::io::Error>(socket)
            })
            .await?;
        let attempt = async {
            let socket = socket?;
            let local_port = socket.local_addr()?.port();
            // If the own-flows map is full the reply is also observed; that is counted by the
            // probe and harmless (the same body twice), so the fetch goes on.
            let registered = own.and_then(|own| own.register(req.cookie, local_port));
            Ok::<_, std::io::Error>((socket.connect(address).await?, registered))
        };
        match attempt.await {
            Ok(connected) => return Ok(connected),
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(connect_err(e)),
        }
    }
    Err(FetchError::NotListening { port: req.port })
}

/// Nothing listens on that address, or the namespace has no such address (or no IPv6).
fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
    ) || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
}

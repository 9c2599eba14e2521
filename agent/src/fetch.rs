//! Fetch: the asking path. When nothing fresh was observed, the agent sends the request itself
//! from inside the pod's network namespace to the app's loopback port, and reads the reply from
//! its own socket.
//!
//! The socket is created on a thread inside the pod's namespace (it keeps that namespace for its
//! life) and then used from the runtime like any other. Its local port is registered with the
//! eBPF side before the request is sent, so the reply is not also captured as an observation.
//!
//! The app is asked on 127.0.0.1, and on [::1] when nothing listens there: an app that binds
//! `localhost` may get only the IPv6 loopback (Node.js 17 and later resolve it so).

use crate::capture::probe::OwnFlowGuard;
use crate::capture::probe::OwnFlows;
use crate::capture::NetnsCookie;
use crate::resolve::netns::{Netns, NetnsError};
use crate::telemetry::Counter;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
    Content(#[from] crate::capture::http::ContentError),
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
pub async fn fetch(req: Request<'_>, own: Option<&OwnFlows>) -> Result<Fetched, FetchError> {
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
    own: Option<&OwnFlows>,
) -> Result<(Option<String>, Bytes), FetchError> {
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
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge { limit }
            } else {
                // hyper's message alone ("error reading a body from connection") hides the
                // cause, e.g. that the app closed the connection before the body was complete.
                FetchError::Body(crate::telemetry::with_causes(&*e))
            }
        })?
        .to_bytes();
    conn.abort();
    let body = match encoding {
        Some(encoding) => crate::capture::http::decode_content(encoding.as_bytes(), &body, limit)?,
        None => body,
    };
    Ok((content_type, body))
}

/// Connects to the app's port on 127.0.0.1, or on [::1] when that is refused (or the namespace
/// has no IPv4 loopback), with the socket's local port registered as the agent's own.
async fn connect(
    req: &Request<'_>,
    own: Option<&OwnFlows>,
) -> Result<(tokio::net::TcpStream, Option<OwnFlowGuard>), FetchError> {
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
            let registered = own.and_then(|own| own.register(req.cookie, local_port).ok());
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

/// What the refresh of stale targets needs.
#[derive(Clone)]
pub struct Refresher {
    pub store: crate::store::Store,
    /// The probe's own-flow registry; `None` when running without the probe.
    pub own: Option<OwnFlows>,
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
                match fetch(request, self.own.as_ref()).await {
                    Ok(f) => {
                        let identity = self.store.identity(key);
                        Snapshot::decode(f.body, f.content_type.as_deref(), identity.as_ref())
                            .map(std::sync::Arc::new)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::PodKey;
    use crate::resolve::netns::testing::scratch;
    use crate::store::{Identity, Origin, Store, TargetKey};
    use loupe_testkit::root;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A one-response-per-connection HTTP app inside `netns` on `address`, answering `reply`
    /// after `delay`.
    fn app(
        netns: &Netns,
        address: &'static str,
        reply: Vec<u8>,
        delay: Duration,
    ) -> (u16, Arc<AtomicUsize>) {
        let listener = netns
            .run(|| std::net::TcpListener::bind(address))
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf);
                    std::thread::sleep(delay);
                    let _ = conn.write_all(&reply);
                });
            }
        });
        (port, requests)
    }

    fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn setup(reply: Vec<u8>, delay: Duration) -> (Refresher, TargetKey, Arc<AtomicUsize>) {
        setup_on("127.0.0.1:0", reply, delay)
    }

    fn setup_on(
        address: &'static str,
        reply: Vec<u8>,
        delay: Duration,
    ) -> (Refresher, TargetKey, Arc<AtomicUsize>) {
        let netns = scratch();
        let (port, requests) = app(&netns, address, reply, delay);
        let cookie = netns.cookie().unwrap();
        let store = Store::default();
        let key = TargetKey {
            pod: PodKey {
                namespace: "ns".into(),
                name: "pod".into(),
            },
            port,
            path: "/metrics".into(),
        };
        let identity = Identity {
            namespace: "ns".into(),
            pod: "pod".into(),
            container: "app".into(),
            endpoint: "http".into(),
        };
        store.set_targets(vec![(key.clone(), identity, Ok((Arc::new(netns), cookie)))]);
        let refresher = Refresher {
            store,
            own: None,
            freshness: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(2),
            max_body_bytes: 1 << 20,
            slots: Arc::new(tokio::sync::Semaphore::new(4)),
        };
        (refresher, key, requests)
    }

    fn latest(refresher: &Refresher) -> crate::store::Outcome {
        refresher.store.view()[0].2.clone().expect("an outcome")
    }

    fn deadline(secs: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(secs)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scrapes_share_one_fetch() {
        if !root::require("concurrent_scrapes_share_one_fetch", "network namespaces") {
            return;
        }
        let reply = response(
            "200 OK",
            "Content-Type: text/plain; version=0.0.4\r\n",
            b"a 1\n",
        );
        let (refresher, _, requests) = setup(reply, Duration::from_millis(200));
        let scrapes: Vec<_> = (0..5)
            .map(|_| {
                let r = refresher.clone();
                tokio::spawn(async move { r.refresh_stale(deadline(5)).await })
            })
            .collect();
        for s in scrapes {
            s.await.unwrap();
        }
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "one fetch for five scrapes"
        );
        let outcome = latest(&refresher);
        assert_eq!(outcome.origin, Origin::Fetched);
        let snapshot = outcome.result.expect("good body");
        assert_eq!(&snapshot.body[..], b"a 1\n");
        // Fresh now: another scrape asks nothing.
        refresher.refresh_stale(deadline(5)).await;
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_app_on_the_ipv6_loopback_only_is_fetched_there() {
        if !root::require(
            "an_app_on_the_ipv6_loopback_only_is_fetched_there",
            "network namespaces",
        ) {
            return;
        }
        let reply = response("200 OK", "", b"a 1\n");
        let (refresher, _, requests) = setup_on("[::1]:0", reply, Duration::ZERO);
        refresher.refresh_stale(deadline(5)).await;
        let outcome = latest(&refresher);
        assert_eq!(&outcome.result.expect("good body").body[..], b"a 1\n");
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_listening_names_both_loopbacks() {
        if !root::require(
            "nothing_listening_names_both_loopbacks",
            "network namespaces",
        ) {
            return;
        }
        let (refresher, key, _) = setup(Vec::new(), Duration::ZERO);
        // Another port of the same namespace, where nothing listens.
        let (_, identity, _) = refresher.store.view().remove(0);
        let resolved = refresher.store.resolved(&key).unwrap();
        let port = if key.port == 1 { 2 } else { 1 };
        let key = TargetKey { port, ..key };
        refresher.store.set_targets(vec![(key, identity, resolved)]);
        refresher.refresh_stale(deadline(5)).await;
        let err = latest(&refresher).result.unwrap_err();
        assert_eq!(
            err,
            format!("nothing listens on 127.0.0.1:{port} or [::1]:{port} (connection refused)")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_status_is_a_failed_target() {
        if !root::require("an_error_status_is_a_failed_target", "network namespaces") {
            return;
        }
        let (refresher, _, _) = setup(
            response("500 Internal Server Error", "", b"oops"),
            Duration::ZERO,
        );
        refresher.refresh_stale(deadline(5)).await;
        assert_eq!(latest(&refresher).result.unwrap_err(), "HTTP status 500");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hanging_app_times_out() {
        if !root::require("a_hanging_app_times_out", "network namespaces") {
            return;
        }
        let (mut refresher, _, _) = setup(Vec::new(), Duration::from_secs(3600));
        refresher.fetch_timeout = Duration::from_millis(300);
        refresher.refresh_stale(deadline(5)).await;
        let err = latest(&refresher).result.unwrap_err();
        assert!(err.contains("no complete response"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gzip_bodies_are_decoded_and_oversized_ones_refused() {
        if !root::require(
            "gzip_bodies_are_decoded_and_oversized_ones_refused",
            "network namespaces",
        ) {
            return;
        }
        let mut body = b"# TYPE a gauge\n".to_vec();
        for i in 0..1000 {
            body.extend_from_slice(format!("a{{i=\"{i}\"}} 1\n").as_bytes());
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&body).unwrap();
        let reply = response(
            "200 OK",
            "Content-Encoding: gzip\r\n",
            &gz.finish().unwrap(),
        );
        let (mut refresher, _, _) = setup(reply, Duration::ZERO);
        refresher.refresh_stale(deadline(5)).await;
        assert_eq!(latest(&refresher).result.unwrap().body.len(), body.len());

        refresher.max_body_bytes = 1000;
        refresher.freshness = Duration::ZERO;
        refresher.refresh_stale(deadline(5)).await;
        let err = latest(&refresher).result.unwrap_err();
        assert!(err.contains("1000 bytes"), "{err}");
    }
}

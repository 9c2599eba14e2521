//! Expose: the HTTP server (hyper) that renders the merged node target.
//!
//! - `/metrics`: every target's latest good body, merged with its identity labels, plus the
//!   per-target health series (`loupe_target_*`) and the agent's counters and gauges. The bodies were
//!   rendered for the merge when they arrived (`ingest::Snapshot`); the scrape sends the merge as a
//!   list of chunks ([`decode::merge`]): headers, and slices of the stored blocks,
//!   not copied into an output buffer (one write frame each; hyper writes them vectored). With
//!   gzip the answer is one gzip member made of deflate segments, each a chunk: the stored
//!   segments of the blocks, compressed when the bodies were rendered, and segments made at the
//!   scrape for the rest (headers, small blocks, loupe's own series; [`decode::merge_gzip`]); a
//!   client that does not accept gzip gets the plain chunks. Targets without a fresh result are fetched first, in parallel, within the scrape's timeout
//!   (`X-Prometheus-Scrape-Timeout-Seconds`). Text 0.0.4 unless the Accept header asks for
//!   OpenMetrics; gzip when accepted.
//! - `/targets`: every target with its health, source, age, size and last error, as JSON (what
//!   `loupe status` prints): the reasons are otherwise only in the log.
//!   `/metrics?namespace=A&namespace=B` is a namespace view ([`View`]): those namespaces' pods
//!   and their `loupe_target_*` series only, without the agent-wide series.
//! - `/healthz`: the process serves. `/readyz`: the first discovery result has been applied.
//!   Neither needs credentials (kubelet probes); both are served over TLS when TLS is on.
//!
//! Who may read (`/metrics`, `/targets`): TLS and client certificates and basic-auth users from
//! the web configuration ([`web_config`], reloaded), and with `--authz kubernetes` a bearer token
//! the API server reviews for exactly the view asked ([`authz`]). Nothing of a pod is read, not
//! even fetched, before the request is allowed.
//!
//! Limits ([`ConnectionLimits`]): at most 256 connections at once (more wait in the listen
//! backlog, 4096 deep: [`listen`]), at most 32 of them from one client address (more are closed at once and counted, so
//! one pod holding connections open cannot keep the kubelet's probes or Prometheus waiting), and
//! a connection that sends no whole request head within 10 s, new or idle between
//! keep-alive requests, is closed. The scrape timeout a header asks for is clamped to 300 s.
//! Merging and compressing run on tokio's blocking threads, never on the workers that answer,
//! once for all the scrapes that ask the same view and format while it runs. A fetch a scrape
//! started goes on after the scrape gave up (bounded by `--fetch-timeout`), and lands for the
//! next one.

pub mod authz;
mod basic_auth;
pub mod tls;
pub mod view;
pub mod web_config;

pub use view::View;

use crate::collect::Refresher;
use crate::decode::{self, Answer, Escaping, Format, Source};
use crate::discover::{Identity, TargetKey};
use crate::ingest::Outcome;
use bytes::Bytes;
use futures::FutureExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

crate::telemetry::counter!(
    pub SCRAPES,
    "loupe_scrapes_total",
    "Scrapes of loupe's /metrics.",
);
crate::telemetry::counter!(
    pub REFUSED_UNAUTHENTICATED,
    "loupe_http_refused_unauthenticated_total",
    "Requests refused with 401: no, malformed or unknown credentials.",
);
crate::telemetry::counter!(
    pub REFUSED_FORBIDDEN,
    "loupe_http_refused_forbidden_total",
    "Requests refused with 403: the API server did not allow the reviewed user what it asked.",
);
crate::telemetry::counter!(
    pub REFUSED_UNAVAILABLE,
    "loupe_http_refused_unavailable_total",
    "Requests refused with 503: the API server could not review the token.",
);
crate::telemetry::counter!(
    pub TLS_HANDSHAKE_FAILURES,
    "loupe_tls_handshake_failures_total",
    "Connections closed because their TLS handshake failed or stalled (plain HTTP included).",
);
crate::telemetry::counter!(
    pub REFUSED_CONNECTIONS,
    "loupe_http_refused_connections_total",
    "Connections closed unserved: their client address already held its share of the slots.",
);
crate::telemetry::counter!(
    pub MERGES_SHARED,
    "loupe_scrapes_sharing_a_merge_total",
    "Scrapes answered by a merge another scrape of the same view and format had started.",
);
crate::telemetry::counter!(
    pub REJECTED_BODIES,
    "loupe_merge_rejected_bodies_total",
    "Stored bodies the merge rejected (they contributed nothing).",
);

// Events: each writes its log line and counts it.

fn body_rejected(key: &TargetKey, identity: &Identity, error: &dyn std::fmt::Display) {
    REJECTED_BODIES.inc();
    log::warn!(
        "pod {} endpoint {}: body rejected by the merge: {error}",
        key.pod,
        identity.endpoint
    );
}

fn connection_refused(peer: std::net::SocketAddr, share: usize) {
    REFUSED_CONNECTIONS.inc();
    log::debug!("connection from {peer} closed: that address already holds {share} connections");
}

fn own_series_rejected(error: &dyn std::fmt::Display) {
    REJECTED_BODIES.inc();
    log::error!("loupe's own series rejected by the merge: {error}");
}

/// Part of the scrape timeout kept for merging and sending the answer.
const RENDER_MARGIN: f64 = 0.2;
/// Longest scrape timeout a scraper's header can ask for: far above any Prometheus scrape, and a
/// bound on how long one scrape can hold the fetch slots.
const MAX_SCRAPE_TIMEOUT: Duration = Duration::from_secs(300);

/// The scrape's timeout from `X-Prometheus-Scrape-Timeout-Seconds`: `default` when the header is
/// missing, not a number or not positive; at most [`MAX_SCRAPE_TIMEOUT`] (a huge value, even one
/// no `Duration` holds, is clamped, never a panic).
fn scrape_timeout(header: Option<&str>, default: Duration) -> Duration {
    match header.and_then(|v| v.trim().parse::<f64>().ok()) {
        Some(secs) if secs > 0.0 => Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_SCRAPE_TIMEOUT)
            .min(MAX_SCRAPE_TIMEOUT),
        _ => default,
    }
}

pub struct Server {
    pub refresher: Refresher,
    pub ready: Arc<AtomicBool>,
    pub connections: ConnectionLimits,
    /// TLS, basic-auth users and response headers in force (the web configuration, reloaded).
    pub web: Arc<web_config::Current>,
    /// `--authz kubernetes`; `None` for `--authz none`.
    pub reviewer: Option<Arc<authz::Reviewer>>,
    /// The merges running, by what they answer ([`Server::shared_merge`]).
    pub merges: Merges,
}

/// One scrape's answer: its chunks.
type Merged = Option<Arc<Vec<Bytes>>>;
type MergeKey = (View, Format, Escaping, bool);
/// See [`Server::shared_merge`]; `Merges::default()` in a new server.
pub type Merges = std::sync::Mutex<
    std::collections::HashMap<
        MergeKey,
        futures::future::Shared<futures::future::BoxFuture<'static, Merged>>,
    >,
>;

/// What one client can hold of the server.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections served at once; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Connections served at once from one client address; further ones are closed unserved.
    pub max_per_client: usize,
    /// A connection that has not sent a whole request head within this time is closed, whether it
    /// is new or idle between keep-alive requests (Prometheus reconnects at its next scrape). A
    /// TLS handshake must finish within it too.
    pub header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_per_client: 32,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Connections open per client address; an entry exists only while its address has one open,
/// so the table is bounded by the connection cap.
struct ClientShares {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in its address's share, given back on drop.
struct ClientShare {
    shares: Arc<ClientShares>,
    ip: std::net::IpAddr,
}

impl ClientShares {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Default::default(),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for one more connection from `ip`; `None` when it holds its share.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<ClientShare> {
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientShare {
            shares: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut open = self.shares.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Go's answer to plain HTTP on a TLS port, which Prometheus users recognise.
const PLAIN_HTTP_TO_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The accept queue asked for; the kernel caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// The node target's listener, with an accept queue as long as the kernel allows rather than
/// tokio's 1024: a full queue drops new connections' SYNs, and a kubelet probe whose SYN is
/// dropped is retried only a second later, past the probe's default timeout. Clients past their
/// per-address share reconnecting in a loop (tests/tests/hostile.rs) fill 1024 whenever the
/// accept loop waits for CPU for a few hundred milliseconds.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Server {
    /// Serves until the listener fails or the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.connections.max_connections,
        ));
        let clients = Arc::new(ClientShares::new(self.connections.max_per_client));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    log::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(share) = clients.take(peer.ip()) else {
                connection_refused(peer, clients.max);
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _slot = (slot, share);
                // The configuration in force when the connection came.
                match this.web.get().tls.clone() {
                    None => this.serve_connection(stream, peer).await,
                    Some(tls) => {
                        let limit = this.connections.header_read_timeout;
                        match tokio::time::timeout(limit, handshake(stream, tls)).await {
                            Ok(Ok(stream)) => this.serve_connection(stream, peer).await,
                            Ok(Err(e)) => handshake_failed(peer, &e),
                            Err(_) => handshake_failed(peer, &"not finished in time"),
                        }
                    }
                }
            });
        }
    }

    async fn serve_connection<S>(self: Arc<Self>, stream: S, peer: std::net::SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.handle(req).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.connections.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            log::debug!("connection from {peer}: {e}");
        }
    }

    async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<ChunkBody> {
        let web = self.web.get();
        let mut response = self.route(&req, &web).await;
        for (name, value) in &web.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
    }

    async fn route(
        self: &Arc<Self>,
        req: &Request<Incoming>,
        web: &web_config::WebConfig,
    ) -> Response<ChunkBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        // Kubelet probes: no credentials, no data.
        match req.uri().path() {
            "/healthz" => return plain(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Relaxed) => {
                return plain(StatusCode::OK, "ready\n")
            }
            "/readyz" => return plain(StatusCode::SERVICE_UNAVAILABLE, "discovery not done yet\n"),
            "/metrics" | "/targets" => {}
            _ => return plain(StatusCode::NOT_FOUND, "try /metrics\n"),
        }
        let view = match req.uri().path() {
            "/metrics" => match View::of_query(req.uri().query()) {
                Ok(view) => view,
                Err(reason) => return refused(StatusCode::BAD_REQUEST, reason),
            },
            _ => View::Node,
        };
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !web.users.is_empty() && !web.users.check(authorization).await {
            REFUSED_UNAUTHENTICATED.inc();
            let mut answer = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            answer.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic"),
            );
            return answer;
        }
        if let Some(reviewer) = &self.reviewer {
            let asks = match (&view, req.uri().path()) {
                (View::Namespaces(names), _) => names
                    .iter()
                    .map(|n| authz::Access::NamespacePods(n.clone()))
                    .collect(),
                (View::Node, "/targets") => vec![authz::Access::Path("/targets")],
                (View::Node, _) => vec![authz::Access::Path("/metrics")],
            };
            if let Some(refusal) = authorize(reviewer, authorization, &asks).await {
                return refusal;
            }
        }
        match req.uri().path() {
            "/metrics" => self.metrics(req, view).await,
            _ => self.targets(),
        }
    }

    async fn metrics(self: &Arc<Self>, req: &Request<Incoming>, view: View) -> Response<ChunkBody> {
        SCRAPES.inc();
        let get = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let answer = Answer::negotiate(get("accept"));
        let gzip = get("accept-encoding").is_some_and(accepts_gzip);
        let timeout = scrape_timeout(
            get("x-prometheus-scrape-timeout-seconds"),
            self.refresher.settings.fetch_timeout,
        );
        let budget = timeout.mul_f64(1.0 - RENDER_MARGIN);
        let deadline = tokio::time::Instant::now() + budget;
        self.refresher
            .refresh_stale(deadline, |key| view.shows(&key.pod.namespace))
            .await;

        let Some(chunks) = self
            .shared_merge(view, answer.format, answer.escaping, gzip)
            .await
        else {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the node target failed\n",
            );
        };
        let mut builder = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, answer.content_type());
        if gzip {
            builder = builder.header(header::CONTENT_ENCODING, "gzip");
        }
        // The exact size hint gives the response its Content-Length.
        builder
            .body(ChunkBody::new(chunks.to_vec()))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response\n"))
    }

    /// The merged answer for `view` in `format` (gzipped or not). Merging (with renderings to
    /// make for bodies that have none) and compressing take milliseconds to a second of CPU and
    /// up to the answer's size in memory: off the async workers, which answer /healthz too, and
    /// once for all the scrapes asking the same while it runs (they get the same answer, a few
    /// milliseconds old at most). `None` if the merge panicked.
    async fn shared_merge(
        self: &Arc<Self>,
        view: View,
        format: Format,
        escaping: Escaping,
        gzip: bool,
    ) -> Merged {
        let key = (view, format, escaping, gzip);
        let merge = {
            let mut merges = self.merges.lock().unwrap_or_else(|e| e.into_inner());
            match merges.get(&key) {
                Some(running) => {
                    MERGES_SHARED.inc();
                    running.clone()
                }
                None => {
                    let this = Arc::clone(self);
                    let (view, format, escaping, gzip) = key.clone();
                    let merge = async move {
                        let made = tokio::task::spawn_blocking(move || {
                            this.render_answer(format, escaping, &view, gzip)
                        });
                        made.await.ok().map(Arc::new)
                    }
                    .boxed()
                    .shared();
                    merges.insert(key.clone(), merge.clone());
                    merge
                }
            }
        };
        let merged = merge.await;
        // Done: the next scrape merges anew.
        let mut merges = self.merges.lock().unwrap_or_else(|e| e.into_inner());
        if merges.get(&key).is_some_and(|m| m.peek().is_some()) {
            merges.remove(&key);
        }
        merged
    }

    fn targets(&self) -> Response<ChunkBody> {
        let statuses = target_statuses(&self.refresher.store.view(), Instant::now());
        let answer = Targets {
            capture_active: crate::capture::ACTIVE.get() == 1,
            targets: statuses,
        };
        match serde_json::to_vec(&answer) {
            Ok(json) => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(ChunkBody::new(vec![Bytes::from(json)]))
                .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response\n")),
            Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "targets\n"),
        }
    }

    /// [`Self::render_chunks`] of the node view, joined.
    pub fn render(&self, format: Format) -> Vec<u8> {
        self.render_chunks(format, &View::Node).concat()
    }

    /// Merges every good body `shown` with its health series (and, in the node view, the
    /// agent's counters), as chunks whose concatenation is the answer.
    pub fn render_chunks(&self, format: Format, shown: &View) -> Vec<Bytes> {
        self.render_answer(format, Escaping::default(), shown, false)
    }

    /// [`Self::render_chunks`], or with `gzip` its gzip stream: the same merge, whose chunks
    /// are one gzip member's pieces: the stored segments of the renderings' blocks (made now for
    /// renderings that have none yet) and those made at this scrape for the rest (`decode::merge_gzip`).
    pub fn render_answer(
        &self,
        format: Format,
        escaping: Escaping,
        shown: &View,
        gzip: bool,
    ) -> Vec<Bytes> {
        let now = Instant::now();
        let mut view = self.refresher.store.view();
        if let View::Namespaces(_) = shown {
            view.retain(|(_, identity, _)| shown.shows(&identity.namespace));
        }
        let own = self.own_series(&view, now, shown == &View::Node);
        // loupe's own series are well-formed by construction; a failure here is a bug, logged below.
        let own_prepared = decode::prepare(own.as_bytes(), Format::Text);
        // Bodies arriving next are rendered (and compressed) at ingest for this format.
        self.refresher.wanted.mark(format, gzip);
        let mut sources = Vec::with_capacity(view.len() + 1);
        let mut members = Vec::new();
        // The view entry of each source, to name a rejected body's pod.
        let mut owners = Vec::with_capacity(view.len());
        for (at, (_, identity, outcome)) in view.iter().enumerate() {
            if let Some(Outcome {
                result: Ok(snapshot),
                ..
            }) = outcome
            {
                owners.push(at);
                let source = snapshot.source(Some(identity.labels()), format, escaping);
                let rendered = snapshot.rendered(identity, format, escaping);
                sources.push(source.with_rendered(rendered));
                if let Some(m) = gzip
                    .then(|| snapshot.gzip_members(identity, format, escaping))
                    .flatten()
                {
                    members.push(m);
                }
            }
        }
        match &own_prepared {
            // Small, and new at every scrape: rendered by the merge.
            Ok(prepared) => sources.push(Source::prepared(None, own.as_bytes(), prepared)),
            Err(e) => log::error!("loupe's own series do not parse: {e}"),
        }
        let (chunks, stats) = if gzip {
            decode::merge_gzip(&sources, &members, format, decode::SCRAPE_LEVEL)
        } else {
            decode::merge(&sources, format)
        };
        for (index, error) in stats.rejected {
            match owners.get(index).and_then(|&at| view.get(at)) {
                Some((key, identity, _)) => body_rejected(key, identity, &error),
                None => own_series_rejected(&error),
            }
        }
        chunks
    }

    /// `loupe_target_*` per target, then the agent's counters and gauges, in text format 0.0.4.
    fn own_series(
        &self,
        view: &[(TargetKey, Identity, Option<Outcome>)],
        now: Instant,
        agent_wide: bool,
    ) -> String {
        let mut out = String::with_capacity(256 * view.len() + 4096);
        type Value = fn(&Outcome, Instant) -> Option<f64>;
        let gauges: [(&str, &str, Value); 5] = [
            (
                "loupe_target_up",
                "1 if the endpoint's latest response was good, else 0.",
                |o, _| Some(if o.result.is_ok() { 1.0 } else { 0.0 }),
            ),
            (
                "loupe_target_scrape_duration_seconds",
                "How long loupe's latest fetch took (0 for an observed reply).",
                |o, _| Some(o.duration.as_secs_f64()),
            ),
            (
                "loupe_target_samples",
                "Samples in the endpoint's latest good body.",
                |o, _| o.result.as_ref().ok().map(|s| s.samples() as f64),
            ),
            (
                "loupe_target_body_bytes",
                "Size of the endpoint's latest good body.",
                |o, _| o.result.as_ref().ok().map(|s| s.body.len() as f64),
            ),
            (
                "loupe_target_age_seconds",
                "Age of the endpoint's latest response.",
                |o, now| Some(now.saturating_duration_since(o.at).as_secs_f64()),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (_, identity, outcome) in view {
                let v = match outcome {
                    Some(o) => value(o, now),
                    // Never answered yet: down, and nothing else to say.
                    None if name == "loupe_target_up" => Some(0.0),
                    None => None,
                };
                if let Some(v) = v {
                    let _ = writeln!(out, "{name}{{{}}} {v}", label_text(identity, None));
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP loupe_target_info Where the endpoint's latest good body came from.\n# TYPE loupe_target_info gauge"
        );
        for (_, identity, outcome) in view {
            if let Some(o @ Outcome { result: Ok(_), .. }) = outcome {
                let _ = writeln!(
                    out,
                    "loupe_target_info{{{}}} 1",
                    label_text(identity, o.origin.source())
                );
            }
        }
        if agent_wide {
            crate::telemetry::render_registered(&mut out);
        }
        out
    }
}

/// The refusal `asks` earn for the request's `Authorization` header, or `None` if allowed.
async fn authorize(
    reviewer: &authz::Reviewer,
    authorization: Option<&[u8]>,
    asks: &[authz::Access],
) -> Option<Response<ChunkBody>> {
    let token = match authz::bearer(authorization) {
        Ok(token) => token,
        Err(reason) => return Some(unauthenticated(reason)),
    };
    match reviewer.decide(token, asks).await {
        Ok(authz::Verdict::Allowed) => None,
        Ok(authz::Verdict::Unauthenticated) => {
            Some(unauthenticated("the API server does not know this token"))
        }
        Ok(authz::Verdict::Denied(what)) => {
            REFUSED_FORBIDDEN.inc();
            log::debug!("refused: {what}");
            Some(refused(
                StatusCode::FORBIDDEN,
                format!("Forbidden: {what}\n"),
            ))
        }
        Err(e) => {
            REFUSED_UNAVAILABLE.inc();
            log::error!("authorization: {e}; refusing the request");
            Some(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "authorization unavailable: the API server could not review the token\n".into(),
            ))
        }
    }
}

fn unauthenticated(reason: &str) -> Response<ChunkBody> {
    REFUSED_UNAUTHENTICATED.inc();
    let mut answer = refused(
        StatusCode::UNAUTHORIZED,
        format!("Unauthorized: {reason}\n"),
    );
    answer.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    answer
}

fn refused(status: StatusCode, text: String) -> Response<ChunkBody> {
    let mut answer = plain(status, "");
    *answer.body_mut() = ChunkBody::new(vec![Bytes::from(text)]);
    answer
}

/// The TLS handshake; a client speaking plain HTTP gets Go's 400 answer rather than silence.
async fn handshake(
    stream: tokio::net::TcpStream,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt as _;
    let mut first = [0u8; 1];
    let mut stream = stream;
    // A TLS record starts with 0x16 (handshake); an HTTP request with a method's letter.
    if stream.peek(&mut first).await? == 1 && first[0].is_ascii_uppercase() {
        let _ = stream.write_all(PLAIN_HTTP_TO_TLS).await;
        let _ = stream.shutdown().await;
        return Err(std::io::Error::other("plain HTTP on the TLS port"));
    }
    tokio_rustls::TlsAcceptor::from(tls).accept(stream).await
}

fn handshake_failed(peer: std::net::SocketAddr, error: &dyn std::fmt::Display) {
    TLS_HANDSHAKE_FAILURES.inc();
    log::debug!("TLS handshake with {peer}: {error}");
}

/// `/targets`: what an operator asks when a pod is down.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Targets {
    /// Whether the eBPF probe observes (`loupe_capture_active`); false in fetch-only mode.
    pub capture_active: bool,
    pub targets: Vec<TargetStatus>,
}

/// One target as `/targets` reports it.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetStatus {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub endpoint: String,
    /// The endpoint's `job` and `instance` (empty: the node target's).
    #[serde(default)]
    pub job: String,
    #[serde(default)]
    pub instance: String,
    pub port: u16,
    pub path: String,
    /// `up` (latest response good), `down` (latest failed) or `unknown` (none yet).
    pub health: String,
    /// `observed` or `fetched`: where the latest response came from; none when there was no
    /// response (never asked yet, or the namespace could not be resolved).
    pub source: Option<String>,
    pub age_seconds: Option<f64>,
    /// Samples and bytes of the latest good body.
    pub samples: Option<usize>,
    pub body_bytes: Option<usize>,
    /// Native histograms without classic buckets in the latest good body: served to protobuf
    /// scrapers only (text formats cannot carry them).
    #[serde(default)]
    pub native_only_histograms: Option<usize>,
    pub error: Option<String>,
}

fn target_statuses(
    view: &[(TargetKey, Identity, Option<Outcome>)],
    now: Instant,
) -> Vec<TargetStatus> {
    view.iter()
        .map(|(key, identity, outcome)| {
            let good = outcome.as_ref().and_then(|o| o.result.as_ref().ok());
            TargetStatus {
                namespace: identity.namespace.clone(),
                pod: identity.pod.clone(),
                container: identity.container.clone(),
                endpoint: identity.endpoint.clone(),
                job: identity.job.clone(),
                instance: identity.instance.clone(),
                port: key.port,
                path: key.path.clone(),
                health: match outcome.as_ref().map(|o| o.result.is_ok()) {
                    Some(true) => "up",
                    Some(false) => "down",
                    None => "unknown",
                }
                .into(),
                source: outcome
                    .as_ref()
                    .and_then(|o| o.origin.source().map(Into::into)),
                age_seconds: outcome
                    .as_ref()
                    .map(|o| now.saturating_duration_since(o.at).as_secs_f64()),
                samples: good.map(|s| s.samples()),
                body_bytes: good.map(|s| s.protobuf.as_ref().unwrap_or(&s.body).len()),
                native_only_histograms: good.map(|s| s.native_only),
                error: outcome
                    .as_ref()
                    .and_then(|o| o.result.as_ref().err().map(ToString::to_string)),
            }
        })
        .collect()
}

/// The identity labels in exposition syntax (empty values omitted, as Prometheus treats them):
/// with `job` and `instance`, so that `up{job="checkout"}` becomes
/// `loupe_target_up{job="checkout"}`, and the pod's copied labels, as `up` has its target's.
fn label_text(identity: &Identity, source: Option<&str>) -> String {
    let mut out = Vec::new();
    let mut labels: Vec<(&str, &str)> = identity.labels().labels().collect();
    labels.push(("source", source.unwrap_or("")));
    decode::write_label_set(&labels, &mut out);
    // Escaping only adds ASCII to UTF-8 text.
    String::from_utf8_lossy(&out).into_owned()
}

fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|part| {
        let mut it = part.split(';');
        let coding = it.next().unwrap_or("").trim();
        let q_zero = it.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
    })
}

/// A response body sent as the chunks it is made of, one data frame each, none joined.
pub struct ChunkBody {
    chunks: std::vec::IntoIter<Bytes>,
    remaining: u64,
}

impl ChunkBody {
    pub fn new(chunks: Vec<Bytes>) -> Self {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        ChunkBody {
            chunks: chunks.into_iter(),
            remaining,
        }
    }
}

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        for chunk in self.chunks.by_ref() {
            if !chunk.is_empty() {
                self.remaining -= chunk.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<ChunkBody> {
    let mut response = Response::new(ChunkBody::new(vec![Bytes::from_static(text.as_bytes())]));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A server over an empty store on a loopback port.
    async fn start(connections: ConnectionLimits) -> std::net::SocketAddr {
        let server = server(connections);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server.serve(listener));
        addr
    }

    /// A server over an empty store.
    fn server(connections: ConnectionLimits) -> Arc<Server> {
        let refresher = Refresher::new(
            crate::store::Store::default(),
            crate::ingest::Wanted::default(),
            None,
            crate::collect::Settings {
                freshness: Duration::from_secs(60),
                fetch_timeout: Duration::from_secs(2),
                max_body_bytes: 1 << 20,
                limits: Default::default(),
                budget: Default::default(),
            },
            4,
        );
        Arc::new(Server {
            refresher,
            ready: Arc::new(AtomicBool::new(true)),
            connections,
            web: web_config::Current::plain(),
            reviewer: None,
            merges: Merges::default(),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapes_asking_the_same_while_a_merge_runs_share_it() {
        let server = server(ConnectionLimits::default());
        let before = MERGES_SHARED.get();
        let (a, b) = tokio::join!(
            server.shared_merge(View::Node, Format::Text, Escaping::default(), false),
            server.shared_merge(View::Node, Format::Text, Escaping::default(), false),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one merge for both");
        assert!(MERGES_SHARED.get() > before);
        // Done: nothing is kept, the next scrape merges anew (with newer data).
        assert!(server.merges.lock().unwrap().is_empty());
        let c = server
            .shared_merge(View::Node, Format::Text, Escaping::default(), false)
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        // Another view or format is another merge.
        let (d, e) = tokio::join!(
            server.shared_merge(View::Node, Format::Text, Escaping::default(), false),
            server.shared_merge(View::Node, Format::OpenMetrics, Escaping::default(), false),
        );
        assert!(!Arc::ptr_eq(&d.unwrap(), &e.unwrap()));
    }

    #[tokio::test]
    async fn a_protobuf_scraper_gets_protobuf() {
        let addr = start(ConnectionLimits::default()).await;
        let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,text/plain;version=0.0.4;q=0.2";
        let (head, body) = get_metrics(addr, &format!("Accept: {accept}\r\n")).await;
        assert!(
            head.contains(
                &format!("content-type: {}", decode::proto::CONTENT_TYPE).to_ascii_lowercase()
            ),
            "{head}"
        );
        let families = decode::proto::decode(&body).unwrap();
        assert!(
            families.iter().any(|f| f.name == "loupe_scrapes_total"),
            "{families:?}"
        );
    }

    /// `GET /metrics` with `headers` (each ending `\r\n`): the response head, lowercased, and
    /// the body (de-chunked).
    async fn get_metrics(addr: std::net::SocketAddr, headers: &str) -> (String, Vec<u8>) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: loupe\r\n{headers}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
        let mut rest = &answer[head_end + 4..];
        if !head.contains("transfer-encoding: chunked") {
            return (head, rest.to_vec());
        }
        let mut body = Vec::new();
        loop {
            let line = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap(), 16).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[line + 2..line + 2 + size]);
            rest = &rest[line + 2 + size + 2..];
        }
        (head, body)
    }

    /// A server over a store of `pods` good targets, each with a body large enough for a stored
    /// gzip member, on a loopback port.
    async fn start_with_pods(pods: usize) -> std::net::SocketAddr {
        use crate::discover::PodKey;
        let server = server(ConnectionLimits::default());
        let store = &server.refresher.store;
        let targets: Vec<(TargetKey, Identity)> = (0..pods)
            .map(|p| {
                let name = format!("pod-{p}");
                let key = TargetKey {
                    pod: PodKey {
                        namespace: "ns".into(),
                        name: name.clone(),
                    },
                    port: 8080,
                    path: "/metrics".into(),
                };
                (key, Identity::of_test_pod(&name))
            })
            .collect();
        store.set_targets(
            targets
                .iter()
                .map(|(k, i)| {
                    let none = crate::resolve::ResolveError::NoProcess(vec!["test".into()]);
                    (k.clone(), i.clone(), Default::default(), Err(none.into()))
                })
                .collect(),
        );
        for (p, (key, identity)) in targets.iter().enumerate() {
            let mut body = String::from(
                "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n",
            );
            for i in 0..100 {
                body.push_str(&format!(
                    "http_requests_total{{path=\"/api/{i}\",code=\"200\"}} {}\n",
                    i * p
                ));
            }
            body.push_str("# TYPE up_since gauge\nup_since 17\n");
            let snapshot = crate::ingest::check(
                Bytes::from(body),
                None,
                Some(identity),
                &Default::default(),
                crate::ingest::Intake {
                    budget: &Default::default(),
                    freeing: 0,
                },
                &server.refresher.wanted,
            )
            .unwrap();
            store.record(
                key,
                Outcome {
                    at: Instant::now(),
                    origin: crate::ingest::Origin::Observed,
                    duration: Duration::ZERO,
                    result: Ok(Arc::new(snapshot)),
                },
            );
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server.serve(listener));
        addr
    }

    /// The lines of an answer that are not loupe's own (its counters move between scrapes).
    fn pods_lines(answer: &[u8]) -> Vec<String> {
        String::from_utf8(answer.to_vec())
            .unwrap()
            .lines()
            .filter(|l| !l.contains("loupe_"))
            .map(str::to_string)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gzip_answers_decompress_to_the_plain_answer() {
        use std::io::Read as _;
        let addr = start_with_pods(3).await;
        for accept in ["", "Accept: application/openmetrics-text;version=1.0.0\r\n"] {
            // No Accept-Encoding, or one without gzip: plain bytes.
            for encoding in [
                "",
                "Accept-Encoding: identity\r\n",
                "Accept-Encoding: gzip;q=0\r\n",
            ] {
                let (head, plain) = get_metrics(addr, &format!("{accept}{encoding}")).await;
                assert!(!head.contains("content-encoding"), "{head}");
                let text = String::from_utf8(plain.clone()).unwrap();
                assert!(
                    text.contains("http_requests_total{namespace=\"ns\",pod=\"pod-2\""),
                    "{text}"
                );
            }
            let (_, plain) = get_metrics(addr, accept).await;
            // Twice: the first gzip scrape makes the stored members, the second finds them.
            for _ in 0..2 {
                let (head, zipped) =
                    get_metrics(addr, &format!("{accept}Accept-Encoding: gzip\r\n")).await;
                assert!(head.contains("content-encoding: gzip"), "{head}");
                let mut unzipped = Vec::new();
                flate2::read::MultiGzDecoder::new(&zipped[..])
                    .read_to_end(&mut unzipped)
                    .unwrap();
                assert_eq!(pods_lines(&unzipped), pods_lines(&plain));
                // One member: a decoder that stops after the first member (curl) reads it all.
                let mut first = Vec::new();
                flate2::bufread::GzDecoder::new(&zipped[..])
                    .read_to_end(&mut first)
                    .unwrap();
                assert_eq!(first, unzipped);
            }
        }
    }

    /// Sends `GET /healthz` on `stream` and reads the answer's first bytes.
    async fn healthz(stream: &mut tokio::net::TcpStream) -> String {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: loupe\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_request_head_is_closed() {
        let addr = start(ConnectionLimits {
            header_read_timeout: Duration::from_millis(200),
            ..ConnectionLimits::default()
        })
        .await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        silent.write_all(b"GET /metr").await.unwrap();
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
        // Closed by the server: end of stream (hyper may first answer 408).
        let answer = read.expect("still open after 10 s").unwrap_or(0);
        assert!(
            answer == 0 || String::from_utf8_lossy(&buf[..answer]).contains("408"),
            "{:?}",
            String::from_utf8_lossy(&buf[..answer])
        );
        // An idle keep-alive connection is closed the same way.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(healthz(&mut idle).await.starts_with("HTTP/1.1 200"));
        // The rest of the answer, then the end of the stream.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
            .await
            .expect("idle connection kept open")
            .ok();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let addr = start(ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(30),
            ..ConnectionLimits::default()
        })
        .await;
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(healthz(&mut first).await.starts_with("HTTP/1.1 200"));
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        second
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: loupe\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
        assert!(early.is_err(), "answered while the only slot was taken");
        drop(first);
        let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
            .await
            .expect("not answered after the slot was freed")
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }

    /// A connection to `addr` from `from` (any 127/8 address is this host's loopback).
    async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind((std::net::Ipv4Addr::from(from), 0).into())
            .unwrap();
        socket.connect(addr).await.unwrap()
    }

    #[tokio::test]
    async fn one_address_holds_at_most_its_share_of_the_connections() {
        let addr = start(ConnectionLimits {
            max_per_client: 2,
            header_read_timeout: Duration::from_secs(30),
            ..ConnectionLimits::default()
        })
        .await;
        let before = REFUSED_CONNECTIONS.get();
        // Two silent connections hold 127.0.0.2's share.
        let _held = (
            connect_from([127, 0, 0, 2], addr).await,
            connect_from([127, 0, 0, 2], addr).await,
        );
        let mut third = connect_from([127, 0, 0, 2], addr).await;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
            .await
            .expect("a connection past the share was kept open")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed unserved");
        assert!(REFUSED_CONNECTIONS.get() > before);
        // Another address is served at once.
        let mut other = connect_from([127, 0, 0, 3], addr).await;
        let answer = tokio::time::timeout(Duration::from_secs(5), healthz(&mut other))
            .await
            .expect("another client waited");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // A share given back (once the server saw the close) is free again.
        drop(_held);
        let served_again = async {
            loop {
                let mut again = connect_from([127, 0, 0, 2], addr).await;
                let sent = again
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: loupe\r\n\r\n")
                    .await;
                let n = again.read(&mut buf).await.unwrap_or(0);
                if sent.is_ok() && buf[..n].starts_with(b"HTTP/1.1 200") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), served_again)
            .await
            .expect("the share was not given back");
    }

    #[test]
    fn scrape_timeout_header_is_parsed_safely_and_clamped() {
        let default = Duration::from_secs(10);
        assert_eq!(scrape_timeout(None, default), default);
        assert_eq!(
            scrape_timeout(Some("2.5"), default),
            Duration::from_millis(2500)
        );
        for huge in ["1e30", "inf", "1e300", "400"] {
            assert_eq!(
                scrape_timeout(Some(huge), default),
                MAX_SCRAPE_TIMEOUT,
                "{huge}"
            );
        }
        for bad in ["", "abc", "0", "-1", "NaN", "-inf"] {
            assert_eq!(scrape_timeout(Some(bad), default), default, "{bad:?}");
        }
    }

    #[test]
    fn targets_report_reasons_and_no_source_without_a_reply() {
        use crate::discover::PodKey;
        use crate::ingest::{Origin, TargetError};
        use crate::resolve::ResolveError;
        let key = TargetKey {
            pod: PodKey {
                namespace: "shop".into(),
                name: "cart".into(),
            },
            port: 8080,
            path: "/metrics".into(),
        };
        let identity = Identity {
            namespace: "shop".into(),
            pod: "cart".into(),
            container: "app".into(),
            endpoint: "http".into(),
            ..Default::default()
        };
        let now = Instant::now();
        let outcome = |origin, error| Outcome {
            at: now,
            origin,
            duration: Duration::ZERO,
            result: Err(error),
        };
        let unresolved = TargetError::from(ResolveError::NoProcess(vec!["abc".into()]));
        let view = [
            (
                key.clone(),
                identity.clone(),
                Some(outcome(Origin::Unresolved, unresolved)),
            ),
            (
                key.clone(),
                identity.clone(),
                Some(outcome(Origin::Fetched, TargetError::Status(500))),
            ),
            (key, identity, None),
        ];
        let statuses = target_statuses(&view, now);
        assert_eq!(statuses[0].health, "down");
        assert_eq!(statuses[0].source, None);
        assert_eq!(
            statuses[0].error.as_deref(),
            Some("no running process found for containers [\"abc\"]")
        );
        assert_eq!(statuses[1].source.as_deref(), Some("fetched"));
        assert_eq!(statuses[1].error.as_deref(), Some("HTTP status 500"));
        assert_eq!(statuses[2].health, "unknown");
        assert_eq!(statuses[2].source, None);
    }

    #[tokio::test]
    async fn chunk_bodies_send_each_chunk_and_their_length() {
        use http_body_util::BodyExt;
        let chunks = vec![
            Bytes::from_static(b"# TYPE a gauge\n"),
            Bytes::new(),
            Bytes::from_static(b"a 1\n"),
        ];
        let mut body = ChunkBody::new(chunks.clone());
        assert_eq!(body.size_hint().exact(), Some(19));
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(frames, vec![chunks[0].clone(), chunks[2].clone()]);
        assert!(body.is_end_stream());
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, GZIP;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("identity"));
    }

    #[test]
    fn label_text_escapes_and_omits_empty() {
        let id = Identity {
            namespace: "ns".into(),
            pod: "a\"b\\c\nd".into(),
            container: String::new(),
            endpoint: "8080".into(),
            ..Default::default()
        };
        assert_eq!(
            label_text(&id, Some("observed")),
            r#"namespace="ns",pod="a\"b\\c\nd",endpoint="8080",source="observed""#
        );
        // The target labels a direct scrape's `up` would have, so alerts keep their matchers.
        let id = Identity {
            job: "checkout".into(),
            instance: "10.0.0.7:8080".into(),
            pod_labels: vec![("team".into(), "pay".into())],
            ..id
        };
        assert_eq!(
            label_text(&id, None),
            r#"namespace="ns",pod="a\"b\\c\nd",endpoint="8080",job="checkout",instance="10.0.0.7:8080",team="pay""#
        );
    }
}

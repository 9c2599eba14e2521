//! An in-process Kubernetes API server for Pods, speaking the real wire protocol over plain HTTP
//! on 127.0.0.1, so kube-rs's real client (or kubectl) talks to it unchanged.
//!
//! Served: `GET /api/v1/pods`, `/api/v1/namespaces/{ns}/pods` (list with `resourceVersion`,
//! `limit`/`continue` pages, `fieldSelector` on `spec.nodeName`, `metadata.name`,
//! `metadata.namespace`), `.../pods/{name}`, and `watch=true` streams of newline-delimited JSON
//! events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` with `allowWatchBookmarks`,
//! `timeoutSeconds`). A watch from a `resourceVersion` older than the bounded event history gets
//! an `ERROR` event carrying a `Status` with code 410 (reason `Expired`), as from a real API
//! server. A pod that starts or stops matching a watch's field selector is `ADDED` / `DELETED`
//! for that watch, as in the real API.
//!
//! Simplifications (documented, not hidden): list pages are cut from the current state rather
//! than a snapshot at the first page's version; label selectors are refused with 400; writes go
//! through Rust functions ([`KubeApi::create_pod`] etc.), not HTTP.
//!
//! The server can be stopped (listener and every open connection closed, so clients see the API
//! go away mid-watch) and restarted on the same port with its state intact.
//!
//! [`KubeApi::start_tls`] serves HTTPS instead, on a chosen address (a pod must reach it, as pods
//! reach `KUBERNETES_SERVICE_HOST`), with a certificate from the caller, and refuses with 401 every
//! request without the expected `Authorization: Bearer` token: what an agent configured the
//! in-cluster way (service account token and CA) talks to.
//!
//! It also answers `TokenReview` and `SubjectAccessReview` creations from a policy the test sets
//! ([`KubeApi::add_token`], [`KubeApi::allow_non_resource`], ...) and records them, for an agent
//! that delegates authentication and authorization of its own clients to the API server.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{broadcast, mpsc};
use tokio::task::{JoinHandle, JoinSet};

mod reviews;

pub use reviews::{Grantee, Subject};

/// Events kept for watches that resume from an older `resourceVersion`.
pub const DEFAULT_HISTORY: usize = 1000;
/// Events a live watch may fall behind before it is ended with 410 (the client relists).
const WATCH_QUEUE: usize = 1024;
/// Requests remembered for [`KubeApi::requests`].
const REQUEST_LOG: usize = 10_000;

type Body = BoxBody<Bytes, Infallible>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Added,
    Modified,
    Deleted,
}

/// One change to the store, as watches see it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: Kind,
    /// The object before the change (`None` when added).
    old: Option<Value>,
    /// The object after the change (for a deletion: its last state, with the deletion's rv).
    new: Value,
}

struct Store {
    rv: u64,
    pods: BTreeMap<(String, String), Value>,
    history: VecDeque<Change>,
    history_limit: usize,
    /// Changes with `rv <= compacted` are no longer in `history`.
    compacted: u64,
    bookmark_interval: Duration,
    requests: VecDeque<String>,
    requests_dropped: u64,
    unauthorized: u64,
    next_uid: u64,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Arc<Change>>,
    /// With TLS: the bearer token every request must carry.
    token: Option<String>,
    /// Tokens, grants and the reviews received; apart from `store` as it never meets a watch.
    reviews: Mutex<reviews::Reviews>,
}

/// The server, running or stopped; dropping it stops it.
pub struct KubeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// How [`KubeApi::start_tls`] serves: where, with which certificate, for which token.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// The address to listen on (port chosen free).
    pub ip: IpAddr,
    /// PEM certificate chain (server certificate first); its subjectAltName must name `ip`.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// Requests without `Authorization: Bearer <token>` get 401.
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("pod {0} already exists")]
    Exists(String),
    #[error("pod {0} not found")]
    NotFound(String),
    #[error("pod object has no metadata.namespace or metadata.name")]
    NoName,
    #[error("cannot write kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS setup with {path}: {detail}")]
    Tls { path: PathBuf, detail: String },
}

impl KubeApi {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> Result<KubeApi, KubeApiError> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), None, None).await
    }

    /// Starts serving HTTPS on a free port of `options.ip`, every request needing the token.
    pub async fn start_tls(options: TlsOptions) -> Result<KubeApi, KubeApiError> {
        let acceptor = tls_acceptor(&options.cert, &options.key)?;
        let addr = SocketAddr::new(options.ip, 0);
        Self::start_on(addr, Some(acceptor), Some(options.token)).await
    }

    async fn start_on(
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        token: Option<String>,
    ) -> Result<KubeApi, KubeApiError> {
        let (changes, _) = broadcast::channel(WATCH_QUEUE);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 1,
                pods: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: DEFAULT_HISTORY,
                compacted: 1,
                bookmark_interval: Duration::from_secs(1),
                requests: VecDeque::new(),
                requests_dropped: 0,
                unauthorized: 0,
                next_uid: 1,
            }),
            changes,
            token,
            reviews: Mutex::new(reviews::Reviews::default()),
        });
        let mut api = KubeApi {
            shared,
            addr,
            server: None,
            tls,
        };
        api.listen().await?;
        Ok(api)
    }

    async fn listen(&mut self) -> Result<(), KubeApiError> {
        let listen_err = |source| KubeApiError::Listen {
            addr: self.addr,
            source,
        };
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(listen_err)?;
        socket.set_reuseaddr(true).map_err(listen_err)?;
        socket.bind(self.addr).map_err(listen_err)?;
        let listener = socket.listen(128).map_err(listen_err)?;
        self.addr = listener.local_addr().map_err(listen_err)?;
        let tls = self.tls.clone();
        self.server = Some(tokio::spawn(serve(listener, self.shared.clone(), tls)));
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Requests refused for a missing or wrong bearer token (TLS mode).
    pub fn unauthorized(&self) -> u64 {
        self.store().unauthorized
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Closes the listener and every connection (watches end abruptly, as when the API server
    /// process dies). The state is kept.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listens again on the same port, with the state it had.
    pub async fn restart(&mut self) -> Result<(), KubeApiError> {
        self.stop().await;
        self.listen().await
    }

    /// Writes a kubeconfig pointing at this server and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf, KubeApiError> {
        let path = dir.join(format!("kubeconfig-{}", self.addr.port()));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: loupe-test\n  cluster:\n    server: {}\n\
             contexts:\n- name: loupe-test\n  context:\n    cluster: loupe-test\n    user: loupe-test\n\
             current-context: loupe-test\nusers:\n- name: loupe-test\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(&path, text).map_err(|source| KubeApiError::Kubeconfig {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.shared)
    }

    /// Events older than the last `limit` changes are forgotten (watches from before get 410).
    pub fn set_history_limit(&self, limit: usize) {
        let mut store = self.store();
        store.history_limit = limit;
        store.trim();
    }

    /// Forgets the whole event history: any watch resuming from before now gets 410.
    pub fn compact(&self) {
        let mut store = self.store();
        store.history.clear();
        store.compacted = store.rv;
    }

    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.store().bookmark_interval = interval;
    }

    /// The current `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        self.store().rv
    }

    /// Every request received (`METHOD path?query`), oldest first, up to a bound.
    pub fn requests(&self) -> Vec<String> {
        self.store().requests.iter().cloned().collect()
    }

    /// Adds a pod (a `v1/Pod` JSON object); sets `uid`, `resourceVersion`, `creationTimestamp`.
    pub fn create_pod(&self, pod: Value) -> Result<Value, KubeApiError> {
        let mut store = self.store();
        let key = key_of(&pod).ok_or(KubeApiError::NoName)?;
        if store.pods.contains_key(&key) {
            return Err(KubeApiError::Exists(format!("{}/{}", key.0, key.1)));
        }
        let mut pod = pod;
        if pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .is_none()
        {
            let uid = format!("00000000-0000-4000-8000-{:012x}", store.next_uid);
            store.next_uid += 1;
            pod["metadata"]["uid"] = json!(uid);
        }
        pod["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        let change = store.record(Kind::Added, None, pod);
        store.pods.insert(key, change.new.clone());
        let new = change.new.clone();
        drop(store);
        let _ = self.shared.changes.send(change);
        Ok(new)
    }

    /// Replaces a pod (same namespace and name), keeping its uid.
    pub fn update_pod(&self, pod: Value) -> Result<Value, KubeApiError> {
        let mut store = self.store();
        let key = key_of(&pod).ok_or(KubeApiError::NoName)?;
        let Some(old) = store.pods.get(&key).cloned() else {
            return Err(KubeApiError::NotFound(format!("{}/{}", key.0, key.1)));
        };
        let mut pod = pod;
        pod["metadata"]["uid"] = old["metadata"]["uid"].clone();
        pod["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        let change = store.record(Kind::Modified, Some(old), pod);
        store.pods.insert(key, change.new.clone());
        let new = change.new.clone();
        drop(store);
        let _ = self.shared.changes.send(change);
        Ok(new)
    }

    /// Changes a pod in place with `edit`.
    pub fn modify_pod(
        &self,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, KubeApiError> {
        let mut pod = self
            .get_pod(namespace, name)
            .ok_or_else(|| KubeApiError::NotFound(format!("{namespace}/{name}")))?;
        edit(&mut pod);
        self.update_pod(pod)
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) -> Result<(), KubeApiError> {
        let mut store = self.store();
        let key = (namespace.to_string(), name.to_string());
        let Some(old) = store.pods.remove(&key) else {
            return Err(KubeApiError::NotFound(format!("{namespace}/{name}")));
        };
        let change = store.record(Kind::Deleted, Some(old.clone()), old);
        drop(store);
        let _ = self.shared.changes.send(change);
        Ok(())
    }

    pub fn get_pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.store()
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Store> {
    shared
        .store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    fn record(&mut self, kind: Kind, old: Option<Value>, mut new: Value) -> Arc<Change> {
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            old,
            new,
        });
        self.history.push_back((*change).clone());
        self.trim();
        change
    }

    fn trim(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
    }

    fn log_request(&mut self, line: String) {
        if self.requests.len() >= REQUEST_LOG {
            self.requests.pop_front();
            self.requests_dropped += 1;
        }
        self.requests.push_back(line);
    }
}

fn key_of(pod: &Value) -> Option<(String, String)> {
    let ns = pod.pointer("/metadata/namespace")?.as_str()?;
    let name = pod.pointer("/metadata/name")?.as_str()?;
    Some((ns.to_string(), name.to_string()))
}

/// A TLS acceptor for the PEM certificate chain and key.
fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, KubeApiError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: &dyn std::fmt::Display| KubeApiError::Tls {
            path,
            detail: e.to_string(),
        }
    };
    let read = |path: &Path| std::fs::read(path).map_err(|e| tls_err(path)(&e));
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(cert)(&e))?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| tls_err(key)(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(cert)(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| tls_err(cert)(&e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves one HTTP/1.1 connection (plain or TLS) until the client or the server ends it.
async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(req, shared).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<tokio_rustls::TlsAcceptor>) {
    // Dropped (with every connection in it) when this task is aborted by `stop`.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors or similar: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let shared = shared.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    match tls {
                        // A failed handshake (a client not trusting the CA) just ends it.
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                serve_connection(stream, shared).await;
                            }
                        }
                        None => serve_connection(stream, shared).await,
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A parsed `fieldSelector`: every term must hold.
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in text.split(',').filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                ));
            };
            match field {
                "spec.nodeName" | "metadata.name" | "metadata.namespace" | "status.phase" => {}
                other => return Err(format!("field label not supported: {other}")),
            }
            terms.push((field.to_string(), equal, value.to_string()));
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, pod: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = pod.pointer(&pointer).and_then(Value::as_str).unwrap_or("");
            (actual == value) == *equal
        })
    }
}

struct Query {
    namespace: Option<String>,
    selector: FieldSelector,
    watch: bool,
    resource_version: Option<String>,
    bookmarks: bool,
    timeout: Option<Duration>,
    limit: Option<usize>,
    continue_token: Option<String>,
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    lock(&shared).log_request(format!("{} {path}?{query}", req.method()));
    if let Some(token) = &shared.token {
        let expected = format!("Bearer {token}");
        let given = req.headers().get(hyper::header::AUTHORIZATION);
        if given.and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            lock(&shared).unauthorized += 1;
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
    }
    if let Some(review) = reviews::route(&path) {
        return reviews::handle(review, req, &shared).await;
    }
    if req.method() != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only GET is served",
        );
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (namespace, name) = match segments.as_slice() {
        ["api", "v1", "pods"] => (None, None),
        ["api", "v1", "namespaces", ns, "pods"] => (Some(ns.to_string()), None),
        ["api", "v1", "namespaces", ns, "pods", name] => (Some(ns.to_string()), Some(*name)),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    };
    if let Some(name) = name {
        let key = (namespace.clone().unwrap_or_default(), name.to_string());
        return match lock(&shared).pods.get(&key) {
            Some(pod) => json_response(StatusCode::OK, pod),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("pods \"{name}\" not found"),
            ),
        };
    }
    let params: BTreeMap<String, String> = form_urlencoded(&query);
    if params.get("labelSelector").is_some_and(|s| !s.is_empty()) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "labelSelector is not supported by this test server",
        );
    }
    let selector =
        match FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str)) {
            Ok(selector) => selector,
            Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", &message),
        };
    let q = Query {
        namespace,
        selector,
        watch: matches!(params.get("watch").map(String::as_str), Some("true" | "1")),
        resource_version: params
            .get("resourceVersion")
            .filter(|v| !v.is_empty())
            .cloned(),
        bookmarks: params
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true"),
        timeout: params
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs),
        limit: params
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0),
        continue_token: params.get("continue").filter(|c| !c.is_empty()).cloned(),
    };
    if q.watch {
        watch(q, shared)
    } else {
        list(&q, &shared)
    }
}

fn form_urlencoded(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn in_scope(q: &Query, pod: &Value) -> bool {
    let ns_ok = match &q.namespace {
        Some(ns) => pod.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns.as_str()),
        None => true,
    };
    ns_ok && q.selector.matches(pod)
}

fn list(q: &Query, shared: &Shared) -> Response<Body> {
    let store = lock(shared);
    let rv = store.rv;
    let matching: Vec<&Value> = store.pods.values().filter(|p| in_scope(q, p)).collect();
    let offset = match &q.continue_token {
        Some(token) => match token.parse::<usize>() {
            Ok(offset) => offset,
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid continue token",
                )
            }
        },
        None => 0,
    };
    let end = q
        .limit
        .map_or(matching.len(), |l| (offset + l).min(matching.len()));
    let items: Vec<&Value> = matching.get(offset..end).unwrap_or_default().to_vec();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < matching.len() {
        metadata["continue"] = json!(end.to_string());
        metadata["remainingItemCount"] = json!(matching.len() - end);
    }
    let body = json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items});
    json_response(StatusCode::OK, &body)
}

fn watch(q: Query, shared: Arc<Shared>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    // Subscribe and read the backlog under one lock, so no change falls between them.
    let (mut live, backlog, start_rv, bookmark_interval) = {
        let store = lock(&shared);
        let live = shared.changes.subscribe();
        let backlog: Result<Vec<Value>, String> = match q.resource_version.as_deref() {
            // No version or "0": the current state as ADDED events, then changes.
            None | Some("0") => Ok(store
                .pods
                .values()
                .filter(|p| in_scope(&q, p))
                .map(|p| event("ADDED", p))
                .collect()),
            Some(text) => match text.parse::<u64>() {
                Err(_) => Err(format!("invalid resource version {text:?}")),
                Ok(from) if from < store.compacted => Err(format!(
                    "too old resource version: {from} ({})",
                    store.compacted + 1
                )),
                Ok(from) => Ok(store
                    .history
                    .iter()
                    .filter(|c| c.rv > from)
                    .filter_map(|c| change_event(&q, c))
                    .collect()),
            },
        };
        // Live changes are the ones after this version; the backlog covers those up to it.
        (live, backlog, store.rv, store.bookmark_interval)
    };
    let backlog = match backlog {
        Ok(events) => events,
        Err(message) if message.starts_with("invalid") => {
            return status(StatusCode::BAD_REQUEST, "BadRequest", &message)
        }
        Err(message) => {
            // The real API server answers 200 and sends the 410 as an ERROR event.
            let gone = json!({"type": "ERROR", "object": status_object(410, "Expired", &message)});
            let mut line = gone.to_string().into_bytes();
            line.push(b'\n');
            return stream_response(rx_once(Bytes::from(line)));
        }
    };
    tokio::spawn(async move {
        let deadline = q.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut last_rv = start_rv;
        for ev in backlog {
            if send_line(&tx, &ev).await.is_err() {
                return;
            }
        }
        let mut bookmarks = tokio::time::interval(bookmark_interval);
        bookmarks.tick().await;
        loop {
            let timeout = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tx.closed() => return,
                _ = timeout => return,
                _ = bookmarks.tick(), if q.bookmarks => {
                    let rv = lock(&shared).rv.max(last_rv);
                    let bookmark = json!({"type": "BOOKMARK", "object": {
                        "kind": "Pod", "apiVersion": "v1",
                        "metadata": {"resourceVersion": rv.to_string()}}});
                    if send_line(&tx, &bookmark).await.is_err() {
                        return;
                    }
                }
                change = live.recv() => match change {
                    Ok(change) => {
                        if change.rv <= last_rv {
                            continue;
                        }
                        last_rv = change.rv;
                        if let Some(ev) = change_event(&q, &change) {
                            if send_line(&tx, &ev).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = json!({"type": "ERROR", "object": status_object(
                            410, "Expired", "watch fell behind; relist")});
                        let _ = send_line(&tx, &gone).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    stream_response(rx)
}

fn rx_once(line: Bytes) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(line);
    rx
}

async fn send_line(tx: &mpsc::Sender<Bytes>, value: &Value) -> Result<(), ()> {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    tx.send(Bytes::from(line)).await.map_err(|_| ())
}

fn event(kind: &str, object: &Value) -> Value {
    json!({"type": kind, "object": object})
}

/// What a watch with this scope sees of a change: objects entering or leaving the selector are
/// added or deleted for it.
fn change_event(q: &Query, change: &Change) -> Option<Value> {
    let was = change.old.as_ref().is_some_and(|o| in_scope(q, o));
    let is = in_scope(q, &change.new);
    match change.kind {
        Kind::Added if is => Some(event("ADDED", &change.new)),
        Kind::Deleted if was || is => Some(event("DELETED", &change.new)),
        Kind::Modified => match (was, is) {
            (true, true) => Some(event("MODIFIED", &change.new)),
            (false, true) => Some(event("ADDED", &change.new)),
            (true, false) => Some(event("DELETED", &change.new)),
            (false, false) => None,
        },
        _ => None,
    }
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_object(code.as_u16(), reason, message))
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut response = Response::new(ChannelBody(rx).boxed());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A response body fed line by line from a channel; ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

/// A running pod's JSON as the kubelet reports it: each `(container, containerID)` running and
/// started, in `phase: Running`, on `node`.
pub fn running_pod(
    namespace: &str,
    name: &str,
    node: &str,
    containers: &[(&str, &str)],
    annotations: Value,
) -> Value {
    let specs: Vec<Value> = containers
        .iter()
        .map(|(c, _)| json!({"name": c, "image": format!("example.test/{c}:1")}))
        .collect();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(c, id)| {
            json!({"name": c, "image": format!("example.test/{c}:1"), "imageID": "",
                   "containerID": id, "ready": true, "started": true, "restartCount": 0,
                   "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "annotations": annotations,
                     "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": specs},
        "status": {"phase": "Running", "podIP": "198.18.0.2", "containerStatuses": statuses},
    })
}

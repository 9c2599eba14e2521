//! `cargo bench -p loupe-agent --bench scrape`: one whole scrape of a node target over real HTTP
//! on loopback, for the node of `--bench merge` (100 pods x 1,000 series). The client is what
//! Prometheus does: one kept-alive connection, `GET`, read the whole body.
//!
//! - `a_concatenate_and_send`: a server that joins the 100 stored bodies into one buffer and sends
//!   it, unlabelled (Istio's metrics merging, with the bodies already at hand).
//! - `a_bodies_as_they_are`: a server that sends the 100 stored bodies without joining them: the
//!   floor for serving these bytes at all.
//! - `loupe_*`: loupe's own `/metrics` (`expose::Server` over a `store::Store` holding the 100
//!   bodies as the agent stores them): the merged, labelled node target, text or OpenMetrics as
//!   negotiated, with and without gzip (gzip: the stored members of the renderings' blocks and
//!   members made at the scrape for the rest; the sizes against one gzip stream at level 6 are
//!   printed before the timings).
//! - `loupe_text_target_labels`: `loupe_text` with every pod's series carrying `job`, `instance`
//!   and two copied pod labels as well (issue 12), the labels a deployed agent adds.
//! - `loupe_text_tls*`: the same over TLS (`--tls-self-signed`, rustls, TLS 1.3): on a kept-alive
//!   connection as Prometheus scrapes, and with a new connection (handshake) for every scrape.
//!
//! `--bench merge` times the merge alone; this is what a scraper waits for, sending included.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use loupe_agent::collect::{Refresher, Settings, MAX_CONCURRENT_FETCHES};
use loupe_agent::discover::{Identity, PodKey, TargetKey};
use loupe_agent::expose::{tls, web_config, ChunkBody, Server};
use loupe_agent::ingest::{self, Origin, Outcome, TargetError, Wanted};
use loupe_agent::resolve::ResolveError;
use loupe_agent::store::Store;
use loupe_testkit::bodies::{body, pod_name, Spec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const PODS: usize = 100;
const SERIES: usize = 1000;

/// The node's bodies in the store, as the agent keeps them; fresh for the whole run, so that no
/// scrape fetches.
fn store(bodies: &[Bytes]) -> Store {
    store_with(bodies, false)
}

/// [`store`], the identities with `job`, `instance` and two copied pod labels when
/// `target_labels` (what a pod gets with `--pod-labels app.kubernetes.io/*,team`).
fn store_with(bodies: &[Bytes], target_labels: bool) -> Store {
    let store = Store::default();
    let targets: Vec<(TargetKey, Identity)> = (0..PODS)
        .map(|p| {
            let (namespace, name) = pod_name(p);
            let identity = Identity {
                namespace: namespace.clone(),
                pod: name.clone(),
                container: "app".into(),
                endpoint: "http-metrics".into(),
                ..Default::default()
            };
            let identity = if target_labels {
                Identity {
                    job: format!("checkout-{}", p % 10),
                    instance: format!("10.42.{}.{}:8080", p / 250, p % 250 + 2),
                    pod_labels: vec![
                        (
                            "app_kubernetes_io_name".into(),
                            format!("checkout-{}", p % 10),
                        ),
                        ("team".into(), "payments".into()),
                    ],
                    ..identity
                }
            } else {
                identity
            };
            let key = TargetKey {
                pod: PodKey { namespace, name },
                port: 8080,
                path: "/metrics".into(),
            };
            (key, identity)
        })
        .collect();
    store.set_targets(
        targets
            .iter()
            .map(|(k, i)| {
                let benchmark = ResolveError::NoProcess(vec!["benchmark".into()]);
                let none = Default::default();
                (
                    k.clone(),
                    i.clone(),
                    none,
                    Err(TargetError::from(benchmark)),
                )
            })
            .collect(),
    );
    for ((key, identity), body) in targets.iter().zip(bodies) {
        let snapshot = ingest::check(
            body.clone(),
            Some("text/plain; version=0.0.4"),
            Some(identity),
            &Default::default(),
            ingest::Intake {
                budget: &Default::default(),
                freeing: 0,
            },
            &Wanted::default(),
        )
        .expect("corpus is valid");
        store.record(
            key,
            Outcome {
                at: Instant::now(),
                origin: Origin::Observed,
                duration: Duration::ZERO,
                result: Ok(Arc::new(snapshot)),
            },
        );
    }
    store
}

fn loupe(store: Store) -> Arc<Server> {
    loupe_with(store, web_config::Current::plain())
}

/// The self-signed certificate (PEM) and a server serving TLS with it.
fn loupe_tls(store: Store) -> (Arc<Server>, Vec<u8>) {
    let (cert, key) = tls::self_signed(vec!["localhost".into()]).expect("certificate");
    let (web, _reloader) = web_config::Current::load(web_config::Sources {
        file: None,
        self_signed: Some((cert.clone(), key)),
        bearer_tokens: false,
    })
    .expect("TLS configuration");
    (loupe_with(store, web), cert)
}

fn loupe_with(store: Store, web: Arc<web_config::Current>) -> Arc<Server> {
    Arc::new(Server {
        refresher: Refresher::new(
            store,
            Wanted::default(),
            None,
            Settings {
                freshness: Duration::from_secs(24 * 3600),
                fetch_timeout: Duration::from_secs(10),
                max_body_bytes: 64 << 20,
                limits: Default::default(),
                budget: Default::default(),
            },
            MAX_CONCURRENT_FETCHES,
        ),
        ready: Arc::new(AtomicBool::new(true)),
        connections: loupe_agent::expose::ConnectionLimits::default(),
        web,
        reviewer: None,
        merges: Default::default(),
    })
}

/// A server answering every request with `respond()`.
async fn serve_plain(
    listener: TcpListener,
    respond: impl Fn() -> ChunkBody + Clone + Send + Sync + 'static,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let body = respond();
                async move { Ok::<_, Infallible>(Response::new(body)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// A client trusting `cert_pem` (the server's self-signed certificate) for `localhost`.
fn client_tls(cert_pem: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(cert.expect("PEM")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn connect_tls(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let stream = connector
        .connect(name, stream)
        .await
        .expect("TLS handshake");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// One scrape: the request, and every byte of the answer read. Returns the body's length.
async fn scrape(
    sender: &mut SendRequest<Empty<Bytes>>,
    accept: &str,
    accept_encoding: &str,
) -> usize {
    let req = Request::get("/metrics")
        .header("host", "node")
        .header("accept", accept)
        .header("accept-encoding", accept_encoding)
        .body(Empty::new())
        .expect("request");
    sender.ready().await.expect("connection");
    let mut body = sender
        .send_request(req)
        .await
        .expect("response")
        .into_body();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body").into_data() {
            len += data.len();
        }
    }
    len
}

/// One scrape's body, every byte.
async fn scrape_body(
    sender: &mut SendRequest<Empty<Bytes>>,
    accept: &str,
    accept_encoding: &str,
) -> Vec<u8> {
    let req = Request::get("/metrics")
        .header("host", "node")
        .header("accept", accept)
        .header("accept-encoding", accept_encoding)
        .body(Empty::new())
        .expect("request");
    sender.ready().await.expect("connection");
    let body = sender
        .send_request(req)
        .await
        .expect("response")
        .into_body();
    body.collect().await.expect("body").to_bytes().to_vec()
}

/// The gzip answer's size against one gzip stream (level 6, Go's default) of what it holds.
fn gzip_sizes(zipped: &[u8]) -> (usize, usize, usize) {
    use std::io::{Read as _, Write as _};
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(zipped)
        .read_to_end(&mut plain)
        .expect("gzip members");
    let mut one = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    one.write_all(&plain).expect("write");
    let one = one.finish().expect("finish").len();
    (zipped.len(), one, plain.len())
}

const TEXT: &str = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const OPEN_METRICS: &str = "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;q=0.5";
/// Prometheus with native histograms on.
const PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,text/plain;version=0.0.4;q=0.2";

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let bodies: Vec<Bytes> = (0..PODS)
        .map(|p| Bytes::from(body(&Spec::pod(p, SERIES, loupe_testkit::Format::Text))))
        .collect();
    let input: usize = bodies.iter().map(Bytes::len).sum();

    let (tls_server, cert) = loupe_tls(store(&bodies));
    let connector = client_tls(&cert);
    let tls_addr = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(tls_server.serve(listener));
        addr
    });
    let mut node_tls = rt.block_on(connect_tls(tls_addr, &connector));
    let (concat_addr, chunks_addr, loupe_addr, labelled_addr) = rt.block_on(async {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (a, b, l, t) = (
            bind().await.expect("bind"),
            bind().await.expect("bind"),
            bind().await.expect("bind"),
            bind().await.expect("bind"),
        );
        let addrs = (
            a.local_addr().expect("addr"),
            b.local_addr().expect("addr"),
            l.local_addr().expect("addr"),
            t.local_addr().expect("addr"),
        );
        let joined = bodies.clone();
        tokio::spawn(serve_plain(a, move || {
            let mut out = Vec::new();
            for body in &joined {
                out.extend_from_slice(body);
            }
            ChunkBody::new(vec![Bytes::from(out)])
        }));
        let as_they_are = bodies.clone();
        tokio::spawn(serve_plain(b, move || ChunkBody::new(as_they_are.clone())));
        tokio::spawn(loupe(store(&bodies)).serve(l));
        tokio::spawn(loupe(store_with(&bodies, true)).serve(t));
        addrs
    });
    let mut concat = rt.block_on(connect(concat_addr));
    let mut chunks = rt.block_on(connect(chunks_addr));
    let mut node = rt.block_on(connect(loupe_addr));

    // What each answer is, checked once before timing.
    let merged = rt.block_on(scrape(&mut node, TEXT, "identity"));
    assert_eq!(rt.block_on(scrape(&mut concat, TEXT, "identity")), input);
    assert_eq!(rt.block_on(scrape(&mut chunks, TEXT, "identity")), input);
    assert!(
        merged > input,
        "loupe's answer ({merged} bytes) lacks the pods' labelled series ({input} bytes in)"
    );
    // The same answer (loupe's own counters move between scrapes: a few bytes).
    let over_tls = rt.block_on(scrape(&mut node_tls, TEXT, "identity"));
    assert!(
        over_tls.abs_diff(merged) < 4096,
        "{over_tls} vs {merged} bytes"
    );
    let labelled = rt.block_on(scrape(
        &mut rt.block_on(connect(labelled_addr)),
        TEXT,
        "identity",
    ));
    assert!(
        labelled > merged,
        "with job, instance and pod labels ({labelled} bytes) vs without ({merged} bytes)"
    );
    let merged_om = rt.block_on(scrape(&mut node, OPEN_METRICS, "identity"));
    let merged_protobuf = rt.block_on(scrape(&mut node, PROTOBUF, "identity"));
    // The first gzip scrape in each format makes the stored members (ingest makes them for
    // bodies that arrive after a gzip scrape); then the answer is those members.
    let mut zipped = 0;
    for (name, accept) in [
        ("text", TEXT),
        ("OpenMetrics", OPEN_METRICS),
        ("protobuf", PROTOBUF),
    ] {
        rt.block_on(scrape(&mut node, accept, "gzip"));
        let answer = rt.block_on(scrape_body(&mut node, accept, "gzip"));
        let (members, one_stream, plain) = gzip_sizes(&answer);
        eprintln!(
            "gzip {name}: {members} bytes in members, one stream at level 6 {one_stream} \
             ({:.3}x), {plain} bytes plain",
            members as f64 / one_stream as f64
        );
        if name == "text" {
            zipped = members;
        }
    }
    assert!(zipped > 0 && zipped < merged / 4, "gzip: {zipped} bytes");
    eprintln!(
        "node: {PODS} pods, {input} bytes of bodies; loupe's answer: {merged} bytes (text), \
         {merged_om} (OpenMetrics), {merged_protobuf} (protobuf), {zipped} gzipped; text with \
         job, instance and two pod labels: {labelled} bytes"
    );

    let mut g = c.benchmark_group("scrape_100x1000");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(input as u64));
    g.bench_function("a_concatenate_and_send", |b| {
        b.iter(|| black_box(rt.block_on(scrape(&mut concat, TEXT, "identity"))))
    });
    g.bench_function("a_bodies_as_they_are", |b| {
        b.iter(|| black_box(rt.block_on(scrape(&mut chunks, TEXT, "identity"))))
    });
    // loupe closes a connection idle for 10 s (its header-read timeout), as happens between
    // benchmarks: each gets a connection of its own, as Prometheus reconnects.
    let plain = || rt.block_on(connect(loupe_addr));
    let tls = || rt.block_on(connect_tls(tls_addr, &connector));
    for (name, accept, encoding) in [
        ("loupe_text", TEXT, "identity"),
        ("loupe_openmetrics", OPEN_METRICS, "identity"),
        ("loupe_protobuf", PROTOBUF, "identity"),
        ("loupe_text_gzip", TEXT, "gzip"),
        ("loupe_openmetrics_gzip", OPEN_METRICS, "gzip"),
        ("loupe_protobuf_gzip", PROTOBUF, "gzip"),
    ] {
        let mut node = plain();
        g.bench_function(name, |b| {
            b.iter(|| black_box(rt.block_on(scrape(&mut node, accept, encoding))))
        });
    }
    let mut labelled_node = rt.block_on(connect(labelled_addr));
    g.bench_function("loupe_text_target_labels", |b| {
        b.iter(|| black_box(rt.block_on(scrape(&mut labelled_node, TEXT, "identity"))))
    });
    for (name, encoding) in [
        ("loupe_text_tls", "identity"),
        ("loupe_text_gzip_tls", "gzip"),
    ] {
        let mut node = tls();
        g.bench_function(name, |b| {
            b.iter(|| black_box(rt.block_on(scrape(&mut node, TEXT, encoding))))
        });
    }
    g.bench_function("loupe_text_tls_handshake", |b| {
        b.iter(|| {
            black_box(rt.block_on(async {
                let mut fresh = connect_tls(tls_addr, &connector).await;
                scrape(&mut fresh, TEXT, "identity").await
            }))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

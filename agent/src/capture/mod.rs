//! Capture: the observing path. eBPF programs on each watched pod's loopback copy the TCP payload
//! of watched ports into a ring buffer ([`probe`]); user space reassembles each flow by sequence
//! number ([`flow`]) and parses the HTTP/1.x exchanges in it ([`http`]).

pub mod flow;
pub mod http;
pub mod one_off;
pub mod probe;

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Instant;

/// Identity of a network namespace as the kernel reports it (`SO_NETNS_COOKIE`,
/// `bpf_get_netns_cookie`): unique for the namespace's lifetime, never reused.
pub type NetnsCookie = u64;

/// Which way a segment travels, relative to the watched (server) port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to the app: carries the request.
    Request,
    /// App to the client: carries the response.
    Response,
}

/// A TCP connection on a pod's loopback, client and server told apart by the watched port.
/// Addresses are IPv4 (`127.0.0.1`) or IPv6 (`::1`), never IPv4-mapped IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub netns: NetnsCookie,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// One captured TCP segment (or GSO super-segment) with payload, or a FIN/RST without.
#[derive(Clone, Debug)]
pub struct Segment {
    pub flow: FlowKey,
    pub direction: Direction,
    /// TCP sequence number of the first payload byte.
    pub seq: u32,
    /// TCP flags byte (FIN = 0x01, SYN = 0x02, RST = 0x04, ...).
    pub flags: u8,
    pub payload: Bytes,
}

/// A complete HTTP/1.x response observed on a flow, with the request it answers.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub flow: FlowKey,
    pub method: String,
    /// Request target as sent (path and query).
    pub path: String,
    pub status: u16,
    pub content_type: Option<String>,
    /// The body after removing chunked transfer coding and gzip content coding.
    pub body: Bytes,
    pub completed_at: Instant,
}

use crate::store::{Origin, Outcome, Snapshot, Store};
use crate::telemetry::Gauge;
use std::sync::Arc;
use std::time::Duration;

pub static ACTIVE: Gauge = Gauge::new(
    "loupe_capture_active",
    "1 while the eBPF probe is loaded and observing; 0 when only fetching (see loupe's log for why).",
);
pub static GAUGES: &[&Gauge] = &[&ACTIVE];

/// Bodies above this size are validated on the blocking pool, so the capture loop keeps draining
/// the ring buffer meanwhile.
const INLINE_DECODE_BYTES: usize = 256 << 10;

/// Namespaces the probe was detached from, so their flows are forgotten at once rather than
/// when they idle out.
pub type Detached = tokio::sync::mpsc::Receiver<NetnsCookie>;

/// The observing loop: segments -> flows -> exchanges -> store. Runs until the stream ends.
/// It runs on its own thread ([`spawn_observer`]): reassembly and gzip decoding of large bodies
/// then never hold up scrapes.
pub async fn observe(
    mut segments: probe::SegmentStream,
    mut detached: Detached,
    store: Store,
    limits: flow::FlowLimits,
) {
    let mut table = flow::FlowTable::new(limits);
    let mut exchanges = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            segment = segments.next() => {
                let segment = match segment {
                    Ok(segment) => segment,
                    Err(e) => {
                        log::error!("reading captured segments stopped: {e}; only fetching from now on");
                        ACTIVE.set(0);
                        return;
                    }
                };
                table.push(segment, Instant::now(), &mut exchanges);
                for exchange in exchanges.drain(..) {
                    record_observed(&store, exchange);
                }
            }
            Some(cookie) = detached.recv() => table.remove_netns(cookie),
            _ = tick.tick() => table.expire(Instant::now()),
        }
    }
}

/// Starts the observing loop on a dedicated thread with its own single-threaded runtime. The
/// probe's segment stream is created inside that runtime, so its ring-buffer fd is registered
/// with the reactor that polls it.
pub fn spawn_observer(
    probe: &mut probe::Probe,
    detached: Detached,
    store: Store,
    limits: flow::FlowLimits,
) -> Result<std::thread::JoinHandle<()>, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let segments = {
        let _entered = runtime.enter();
        probe.segments()?
    };
    let thread = std::thread::Builder::new()
        .name("loupe-capture".into())
        .spawn(move || runtime.block_on(observe(segments, detached, store, limits)))?;
    ACTIVE.set(1);
    Ok(thread)
}

/// Stores an observed reply for every target it answers (usually one).
fn record_observed(store: &Store, exchange: Exchange) {
    if exchange.method != "GET" {
        return;
    }
    let port = exchange.flow.server.port();
    let keys = store.match_observed(exchange.flow.netns, port, &exchange.path);
    if keys.is_empty() {
        return;
    }
    let store = store.clone();
    let large = exchange.body.len() > INLINE_DECODE_BYTES;
    let work = move || {
        let result = if exchange.status == 200 {
            // Rendered with the first target's identity; another target answered by the same
            // reply (rare) has its rendering made at scrape time.
            let identity = keys.first().and_then(|k| store.identity(k));
            Snapshot::decode(
                exchange.body,
                exchange.content_type.as_deref(),
                identity.as_ref(),
            )
            .map(Arc::new)
        } else {
            Err(format!("HTTP status {}", exchange.status))
        };
        for key in &keys {
            store.record(
                key,
                Outcome {
                    at: exchange.completed_at,
                    origin: Origin::Observed,
                    duration: Duration::ZERO,
                    result: result.clone(),
                },
            );
        }
    };
    if large {
        tokio::task::spawn_blocking(work);
    } else {
        work();
    }
}

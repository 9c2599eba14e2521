//! Capture: the observing path. eBPF programs on each watched pod's loopback copy the TCP payload
//! of watched ports into a ring buffer ([`probe`]); user space reassembles each flow by sequence
//! number ([`flow`]) and parses the HTTP/1.x exchanges in it ([`http`]).

pub mod flow;
pub mod http;
pub mod probe;

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Instant;

pub use crate::resolve::NetnsCookie;

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
    /// The probe skipped this direction's payload right before this segment (an exchange that
    /// was not a watched GET): the sequence number jumps here with nothing lost, at a message
    /// boundary (or at a FIN or RST).
    pub resumed: bool,
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

use std::time::Duration;

crate::telemetry::gauge!(
    pub ACTIVE,
    "loupe_capture_active",
    "1 while the eBPF probe is loaded and observing; 0 when only fetching (see loupe's log for why).",
);

/// Namespaces the probe was detached from, so their flows are forgotten at once rather than
/// when they idle out.
pub type Detached = tokio::sync::mpsc::Receiver<NetnsCookie>;

/// The observing loop: segments -> flows -> exchanges, each handed to `sink` (the agent's is
/// `collect::Observer`, which ingests it into the store). Runs until the stream ends. It runs on
/// its own thread ([`spawn_observer`]): reassembly and gzip decoding of large bodies then never
/// hold up scrapes.
pub async fn observe(
    mut segments: probe::SegmentStream,
    mut detached: Detached,
    mut sink: impl FnMut(Exchange),
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
                exchanges.drain(..).for_each(&mut sink);
            }
            Some(cookie) = detached.recv() => table.remove_netns(cookie),
            _ = tick.tick() => table.expire(Instant::now()),
        }
    }
}

/// Starts the observing loop on a dedicated thread with its own single-threaded runtime (which
/// `sink` runs in). The probe's segment stream is created inside that runtime, so its ring-buffer
/// fd is registered with the reactor that polls it.
pub fn spawn_observer(
    probe: &mut probe::Probe,
    detached: Detached,
    sink: impl FnMut(Exchange) + Send + 'static,
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
        .spawn(move || runtime.block_on(observe(segments, detached, sink, limits)))?;
    ACTIVE.set(1);
    Ok(thread)
}

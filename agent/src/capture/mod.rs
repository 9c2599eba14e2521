//! Capture: the observing path. eBPF programs on each watched pod's loopback copy the TCP payload
//! of watched ports into a ring buffer ([`probe`]); user space reassembles each flow by sequence
//! number ([`flow`]) and parses the HTTP/1.x exchanges in it ([`http`]).

pub mod flow;
pub mod http;
pub mod probe;

use bytes::Bytes;
use std::net::SocketAddrV4;
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub netns: NetnsCookie,
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
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

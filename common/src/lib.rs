//! Plain types shared by the eBPF programs and the agent. `no_std`, `repr(C)`, no pointers.
//!
//! Every ring-buffer record the capture program emits is a [`SegmentHeader`] followed by
//! `payload_len` bytes of TCP payload (then unspecified padding up to the record's size class).
#![no_std]

/// Name of the TC classifier loaded once for all namespaces (netns cookie helper, `bpf_loop`;
/// about Linux 6.14+). Also the netlink filter name used to find stale filters.
pub const PROGRAM_NAME: &str = "loupe_lo_egress";
/// Name of the TC classifier attached once per namespace as a netlink filter whose classid
/// carries the namespace's slot ([`NETNS_SLOTS_MAP`]); payload copied as one record per packet,
/// without loops (Linux 5.8+: ring buffers are the newest need).
pub const PER_NAMESPACE_PROGRAM_NAME: &str = "loupe_lo_ns";
/// Like [`PER_NAMESPACE_PROGRAM_NAME`], payload copied in [`CHUNK_BYTES`] records with
/// `bpf_loop` (Linux 5.17+), so packets above 64 KiB (BIG TCP, 5.19+) are copied too.
pub const PER_NAMESPACE_LOOP_PROGRAM_NAME: &str = "loupe_lo_nsloop";
/// Every program name loupe attaches (at most 15 bytes: the kernel's name limit).
pub const PROGRAM_NAMES: [&str; 3] = [
    PROGRAM_NAME,
    PER_NAMESPACE_LOOP_PROGRAM_NAME,
    PER_NAMESPACE_PROGRAM_NAME,
];
/// Hash map `u32 -> u64` of the per-namespace programs: a filter's slot (the minor half of its
/// netlink classid, which the kernel hands the program as `__sk_buff::tc_classid`) to the
/// namespace identity its records carry in [`SegmentHeader::netns_cookie`] and its map keys use.
/// Slot 0 is never used: traffic of a filter without a slot is ignored.
pub const NETNS_SLOTS_MAP: &str = "NETNS_SLOTS";
/// Entries of [`NETNS_SLOTS_MAP`]: namespaces attached at once with the per-namespace method.
pub const MAX_NETNS_SLOTS: u32 = 4096;
/// Ring buffer of [`SegmentHeader`] records.
pub const SEGMENTS_MAP: &str = "SEGMENTS";
/// Hash map `PortKey -> WatchedPort`: server ports whose metrics exchanges are copied, per
/// namespace, with the paths a request must ask for to be copied.
pub const WATCHED_PORTS_MAP: &str = "WATCHED_PORTS";
/// LRU hash map `FlowVerdictKey -> FlowVerdict`: whether each flow's current exchange is copied.
pub const FLOW_VERDICTS_MAP: &str = "FLOW_VERDICTS";
/// Entries of [`FLOW_VERDICTS_MAP`]: flows that have sent a watched GET, least recently used
/// forgotten first (a forgotten flow is copied again from its next watched GET).
pub const MAX_FLOW_VERDICTS: u32 = 16384;
/// Hash map `PortKey -> u8`: client ports of the agent's own requests, never copied.
pub const OWN_FLOWS_MAP: &str = "OWN_FLOWS";
/// Per-CPU array with one [`DropCounters`] at index 0.
pub const DROPS_MAP: &str = "DROPS";

/// Array `u32 -> u32` over all 65,536 port numbers: how many namespaces watch each. The program
/// reads it first, straight from the packet's headers, so traffic between ports nobody watches
/// is let go after two array reads, before any helper call or copy.
pub const WATCHED_PORT_NUMBERS_MAP: &str = "WATCHED_PORT_NUMBERS";
/// Entries of [`WATCHED_PORTS_MAP`] (namespaces times ports).
pub const MAX_WATCHED_PORTS: u32 = 4096;
/// Entries of [`OWN_FLOWS_MAP`] (the agent's concurrent requests).
pub const MAX_OWN_FLOWS: u32 = 4096;
/// Ring size compiled into the object; the agent overrides it at load time.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// Largest payload one record carries. A bigger (GSO) packet becomes several records.
pub const CHUNK_BYTES: usize = 4096;
/// Largest payload of one record of [`PER_NAMESPACE_PROGRAM_NAME`] (the `payload_len` field's
/// limit; such a record has room for one byte more, its size class being a power of two).
pub const MAX_RECORD_PAYLOAD: usize = u16::MAX as usize;
/// Largest packet payload [`PER_NAMESPACE_PROGRAM_NAME`] copies, as at most two records: two
/// full segments of loopback's 64 KiB MTU (TCP's smallest GSO packet there). A longer packet
/// (BIG TCP, 5.19+, where `bpf_loop` is there and the chunked programs run) is counted as dropped.
pub const MAX_FLAT_PAYLOAD: usize = 2 * MAX_RECORD_PAYLOAD;
/// Most records one packet becomes; payload beyond `MAX_CHUNKS * CHUNK_BYTES` is counted as dropped.
pub const MAX_CHUNKS: usize = 64;

/// `SegmentHeader::direction` of client-to-server segments (destination port is watched).
pub const DIRECTION_REQUEST: u8 = 0;
/// `SegmentHeader::direction` of server-to-client segments (source port is watched).
pub const DIRECTION_RESPONSE: u8 = 1;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Head of every ring-buffer record. 64 bytes; integers in host byte order, addresses in
/// network byte order.
///
/// Addresses are IPv6 for both families: an IPv4 packet's addresses arrive IPv4-mapped
/// (`::ffff:a.b.c.d`, see [`ipv4_mapped`]), so user space reads every address the same way
/// (`Ipv6Addr::from(saddr).to_canonical()`) and needs no family field. A real IPv6 packet never
/// carries a mapped address: the kernel sends traffic to `::ffff:a.b.c.d` as IPv4.
///
/// With the `bpf_loop` programs a packet with payload becomes one record per [`CHUNK_BYTES`] of
/// payload, chunk `i` with `seq = packet seq + i * CHUNK_BYTES` (wrapping); with
/// [`PER_NAMESPACE_PROGRAM_NAME`] it becomes one record of up to [`MAX_RECORD_PAYLOAD`] bytes,
/// and a second (chunk 1, seq after the first) for the rest of a longer packet.
/// Only exchanges whose request starts with a GET of a watched path are copied (see
/// [`FlowVerdict`]); FIN and RST packets without payload of such a flow become one record with
/// `payload_len == 0`. Bare SYNs are not sent: a flow's first record is its first watched GET.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The namespace's identity: `bpf_get_netns_cookie(skb)` (equals `SO_NETNS_COOKIE` of a
    /// socket there) for [`PROGRAM_NAME`], the identity [`NETNS_SLOTS_MAP`] gives the filter's
    /// slot for the per-namespace programs.
    pub netns_cookie: u64,
    /// Source address, IPv6 or IPv4-mapped, network byte order (`Ipv6Addr::from(saddr)`).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// Sequence number of this record's first payload byte (for SYN: the SYN's own seq).
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes following this header in the record (0..=CHUNK_BYTES, or up to
    /// [`MAX_RECORD_PAYLOAD`] from [`PER_NAMESPACE_PROGRAM_NAME`]).
    pub payload_len: u16,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub flags: u8,
    /// [`DIRECTION_REQUEST`] or [`DIRECTION_RESPONSE`].
    pub direction: u8,
    /// Payload of the whole packet this record was cut from.
    pub packet_payload_len: u32,
    /// Index of this record within its packet (0 for the first).
    pub chunk: u16,
    /// 1 when the program skipped payload of this direction before this record (an exchange
    /// that was not a watched GET): the sequence jumps here without anything being lost, and
    /// the record starts a message (or is a FIN or RST).
    pub resumed: u8,
    pub _reserved: u8,
}

/// The IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) of an IPv4 address given in network byte order.
#[inline(always)]
pub const fn ipv4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Size of [`SegmentHeader`], the offset of the payload in a record.
pub const SEGMENT_HEADER_LEN: usize = core::mem::size_of::<SegmentHeader>();

/// Key of [`WATCHED_PORTS_MAP`] and [`OWN_FLOWS_MAP`]. Padding is explicit so the kernel's
/// byte-wise key comparison sees zeros on both sides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub netns_cookie: u64,
    pub port: u16,
    pub _pad: [u8; 6],
}

impl PortKey {
    pub const fn new(netns_cookie: u64, port: u16) -> Self {
        Self {
            netns_cookie,
            port,
            _pad: [0; 6],
        }
    }
}

/// What the program did not put into the ring: records not emitted and payload bytes lost
/// (ring full, or a packet longer than `MAX_CHUNKS * CHUNK_BYTES`), and payload packets and
/// bytes on watched ports skipped on purpose (not part of an exchange whose request is a GET of
/// a watched path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    pub events: u64,
    pub bytes: u64,
    pub skipped_packets: u64,
    pub skipped_bytes: u64,
    /// Payload packets and bytes refused because their namespace was over its share of a ring
    /// more than half full ([`NETNS_SHARES_MAP`]).
    pub over_share_packets: u64,
    pub over_share_bytes: u64,
}

/// LRU hash map `u64 -> NetnsShare`: payload bytes each namespace put into the ring in the
/// current window. While the ring is more than half full, a namespace that put more than
/// [`RING_SHARE_DIVISOR`]th of the ring into it in the current window is refused, so a pod
/// flooding its loopback fills at most about half the ring and the others keep the rest.
pub const NETNS_SHARES_MAP: &str = "NETNS_SHARES";
/// A namespace's share of the ring per window, as a divisor of the ring's size.
pub const RING_SHARE_DIVISOR: u64 = 8;
/// Length of a share window: 2^30 ns (about 1.07 s).
pub const SHARE_WINDOW_SHIFT: u32 = 30;

/// Value of [`NETNS_SHARES_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsShare {
    /// `ktime >> SHARE_WINDOW_SHIFT` of the window `bytes` counts in.
    pub window: u64,
    pub bytes: u64,
}

/// Paths per watched port a request is compared against. A port with more paths is marked
/// [`WatchedPort::any_get`].
pub const MAX_PATHS_PER_PORT: usize = 4;
/// Bytes of a request compared with a [`WatchedPath`]: `GET `, then at most 60 bytes of path.
pub const NEEDLE_BYTES: usize = 64;
/// Bytes of a request's start the program reads to compare (the needle and the byte after it),
/// into a per-CPU scratch map: the classifier's 512-byte stack has no room for them.
pub const REQUEST_WINDOW: usize = 128;

/// One path a request must ask for, as the bytes its request line starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedPath {
    /// `GET ` and the path, zero-padded, as little-endian 8-byte words.
    pub needle: [u64; NEEDLE_BYTES / 8],
    /// Which bytes of each word count (0xff per byte of `needle`): the program compares every
    /// word the same way, without a branch per word, which old verifiers check quickly.
    pub mask: [u64; NEEDLE_BYTES / 8],
    /// Bytes of `needle` that count: 4 plus the path's length, at most [`NEEDLE_BYTES`].
    pub len: u8,
    /// 1 when the whole path fits: the request line's next byte must then end the path (a space
    /// or `?`). 0 for a longer path, compared by its first 60 bytes.
    pub whole: u8,
    pub _pad: [u8; 6],
}

impl WatchedPath {
    /// The needle for `path`.
    pub fn new(path: &[u8]) -> Self {
        let mut bytes = [0u8; NEEDLE_BYTES];
        let mut mask = [0u8; NEEDLE_BYTES];
        bytes[..4].copy_from_slice(b"GET ");
        let fits = path.len().min(NEEDLE_BYTES - 4);
        bytes[4..4 + fits].copy_from_slice(&path[..fits]);
        mask[..4 + fits].fill(0xff);
        let words = |bytes: &[u8; NEEDLE_BYTES]| {
            let mut words = [0u64; NEEDLE_BYTES / 8];
            for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                *word = u64::from_le_bytes(b);
            }
            words
        };
        Self {
            needle: words(&bytes),
            mask: words(&mask),
            len: (4 + fits) as u8,
            whole: u8::from(fits == path.len()),
            _pad: [0; 6],
        }
    }
}

/// Value of [`WATCHED_PORTS_MAP`]: the paths whose GETs are copied on that port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedPort {
    pub paths: [WatchedPath; MAX_PATHS_PER_PORT],
    /// Entries of `paths` in use.
    pub count: u8,
    /// 1: every GET on the port is copied (more paths than [`MAX_PATHS_PER_PORT`]).
    pub any_get: u8,
    pub _pad: [u8; 6],
}

impl WatchedPort {
    /// The port's value for these paths.
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut port = Self {
            paths: [WatchedPath::new(b""); MAX_PATHS_PER_PORT],
            count: 0,
            any_get: 0,
            _pad: [0; 6],
        };
        for path in paths {
            match port.paths.get_mut(usize::from(port.count)) {
                Some(slot) => {
                    *slot = WatchedPath::new(path);
                    port.count += 1;
                }
                None => port.any_get = 1,
            }
        }
        port
    }
}

/// Key of [`FLOW_VERDICTS_MAP`]: one flow, by its namespace, client address and both ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowVerdictKey {
    pub netns_cookie: u64,
    /// The client's address as in [`SegmentHeader::saddr`].
    pub client_addr: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub _pad: [u8; 4],
}

/// Value of [`FLOW_VERDICTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowVerdict {
    /// 1 while the flow's current exchange is copied: set by a request starting with a GET of a
    /// watched path, cleared by any other request start.
    pub copy: u8,
    /// Per direction ([`DIRECTION_REQUEST`], [`DIRECTION_RESPONSE`]): 1 when payload was skipped
    /// since that direction's last record; its next record is then [`SegmentHeader::resumed`].
    pub skipped: [u8; 2],
    pub _pad: u8,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C) structs of integers with explicit padding fields: every bit pattern is a
    // valid value and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::SegmentHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WatchedPort {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetnsShare {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowVerdictKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowVerdict {}
}

const _: () = assert!(SEGMENT_HEADER_LEN == 64);
const _: () = assert!(
    PROGRAM_NAME.len() <= 15
        && PER_NAMESPACE_PROGRAM_NAME.len() <= 15
        && PER_NAMESPACE_LOOP_PROGRAM_NAME.len() <= 15
);
const _: () = assert!(core::mem::size_of::<PortKey>() == 16);
const _: () = assert!(core::mem::size_of::<DropCounters>() == 48);
const _: () = assert!(core::mem::size_of::<WatchedPath>() == 2 * NEEDLE_BYTES + 8);
const _: () =
    assert!(core::mem::size_of::<WatchedPort>() == MAX_PATHS_PER_PORT * (2 * NEEDLE_BYTES + 8) + 8);
const _: () = assert!(core::mem::size_of::<FlowVerdictKey>() == 32);
const _: () = assert!(core::mem::size_of::<FlowVerdict>() == 4);
const _: () = assert!(REQUEST_WINDOW.is_power_of_two() && REQUEST_WINDOW > NEEDLE_BYTES + 8);

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(words: &[u64]) -> [u8; NEEDLE_BYTES] {
        let mut out = [0u8; NEEDLE_BYTES];
        for (chunk, word) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    #[test]
    fn a_path_becomes_get_and_the_path_with_a_mask_over_exactly_those_bytes() {
        let path = WatchedPath::new(b"/metrics");
        assert_eq!(&bytes(&path.needle)[..13], b"GET /metrics\0");
        assert_eq!(path.len, 12);
        assert_eq!(path.whole, 1);
        let mask = bytes(&path.mask);
        assert!(mask[..12].iter().all(|b| *b == 0xff) && mask[12..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_long_path_is_compared_by_its_first_60_bytes() {
        let long = [b'a'; 100];
        let path = WatchedPath::new(&long);
        assert_eq!(usize::from(path.len), NEEDLE_BYTES);
        assert_eq!(path.whole, 0);
        assert_eq!(&bytes(&path.needle)[4..], &long[..60]);
    }

    #[test]
    fn more_paths_than_fit_copy_every_get() {
        let paths: [&[u8]; 5] = [b"/a", b"/b", b"/c", b"/d", b"/e"];
        let port = WatchedPort::new(paths[..4].iter().copied());
        assert_eq!((port.count, port.any_get), (4, 0));
        let port = WatchedPort::new(paths.iter().copied());
        assert_eq!((port.count, port.any_get), (4, 1));
    }
}

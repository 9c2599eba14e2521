//! loupe's capture program: a TC classifier on a pod's `lo` egress. Every loopback packet passes
//! `lo` egress exactly once, so both directions of a flow are seen here. For TCP packets over
//! IPv4 or IPv6 whose source or destination port is watched in the packet's network namespace,
//! it copies the payload into the `SEGMENTS` ring buffer (record layout:
//! `loupe_common::SegmentHeader`), but only of exchanges whose request starts with a GET of one
//! of the port's watched paths: a request packet starting a request line sets the flow's verdict
//! (`FLOW_VERDICTS`), the response follows it, and everything else on the port (an app's API
//! requests and answers, with their tokens and personal data) is only counted as skipped.
//! It only observes: it always returns `TC_ACT_UNSPEC` (= `TCX_NEXT`), never changing traffic.
//!
//! Three entry points share all the code; the agent picks one per kernel by trying to load it.
//! Each is loaded once, whatever the number of namespaces:
//! - `loupe_lo_egress`: the namespace comes from `bpf_get_netns_cookie` (allowed in TC programs
//!   from about Linux 6.14/6.15; verified on 6.18), payload is copied with `bpf_loop` (5.17+).
//! - `loupe_lo_nsloop` and `loupe_lo_ns`: attached as one netlink filter per namespace, whose
//!   classid carries the namespace's slot; the kernel hands it to the program as
//!   `__sk_buff::tc_classid`, and `NETNS_SLOTS` maps it to the namespace's identity. Payload is
//!   copied with `bpf_loop` (5.17+), or, in `loupe_lo_ns`, in one or two records per packet
//!   without any loop, which every kernel with ring buffers (5.8+) verifies quickly (5.10's verifier took
//!   minutes over a bounded loop of 16 chunks).
#![no_std]
#![no_main]

use core::ffi::c_void;
use core::hint::black_box;
use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::{__sk_buff, BPF_RB_AVAIL_DATA, BPF_RB_RING_SIZE},
    helpers::{bpf_get_netns_cookie, bpf_ktime_get_ns, bpf_loop, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use aya_log_ebpf::warn;
use loupe_common::{
    ipv4_mapped, DropCounters, FlowVerdict, FlowVerdictKey, NetnsShare, PortKey, SegmentHeader,
    WatchedPath, WatchedPort, CHUNK_BYTES, DEFAULT_RING_BYTES, DIRECTION_REQUEST,
    DIRECTION_RESPONSE, MAX_CHUNKS, MAX_FLAT_PAYLOAD, MAX_FLOW_VERDICTS, MAX_NETNS_SLOTS,
    MAX_OWN_FLOWS, MAX_RECORD_PAYLOAD, MAX_WATCHED_PORTS, NEEDLE_BYTES, REQUEST_WINDOW,
    RING_SHARE_DIVISOR, SHARE_WINDOW_SHIFT, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
};

#[map]
static SEGMENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
static WATCHED_PORTS: HashMap<PortKey, WatchedPort> =
    HashMap::with_max_entries(MAX_WATCHED_PORTS, 0);

/// Scratch room per CPU for the start of a request being classified.
#[map]
static REQUEST_WINDOWS: PerCpuArray<[u64; REQUEST_WINDOW / 8]> =
    PerCpuArray::with_max_entries(1, 0);

#[map]
static NETNS_SHARES: LruHashMap<u64, NetnsShare> = LruHashMap::with_max_entries(MAX_NETNS_SLOTS, 0);

#[map]
static FLOW_VERDICTS: LruHashMap<FlowVerdictKey, FlowVerdict> =
    LruHashMap::with_max_entries(MAX_FLOW_VERDICTS, 0);

/// How many namespaces watch each port number (the fast path's test).
#[map]
static WATCHED_PORT_NUMBERS: Array<u32> = Array::with_max_entries(1 << 16, 0);

#[map]
static OWN_FLOWS: HashMap<PortKey, u8> = HashMap::with_max_entries(MAX_OWN_FLOWS, 0);

#[map]
static DROPS: PerCpuArray<DropCounters> = PerCpuArray::with_max_entries(1, 0);

/// A per-namespace filter's slot (its classid's minor half) to the namespace's identity.
#[map]
static NETNS_SLOTS: HashMap<u32, u64> = HashMap::with_max_entries(MAX_NETNS_SLOTS, 0);

/// Size class of the one-record program's largest records: room for [`MAX_RECORD_PAYLOAD`].
const LARGEST_RECORD: usize = MAX_RECORD_PAYLOAD + 1;

/// `TC_ACT_UNSPEC` for netlink filters, `TCX_NEXT` for TCX links: let the next program decide.
const PASS_ON: i32 = -1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPV6_HLEN: usize = 40;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_HOPOPTS: u8 = 0;

/// One ring-buffer record: header plus room for `N` payload bytes. The ring only accepts
/// constant-size reservations, so payload goes into one of a few size classes.
#[repr(C)]
struct Record<const N: usize> {
    header: SegmentHeader,
    data: [u8; N],
}

/// Every namespace, told apart by `bpf_get_netns_cookie`; needs it in TC programs and `bpf_loop`.
#[classifier]
pub fn loupe_lo_egress(ctx: TcContext) -> i32 {
    if may_be_watched(&ctx) {
        let _ = observe::<true, true>(&ctx);
    }
    PASS_ON
}

/// One netlink filter per namespace (slot in the classid), payload copied with `bpf_loop` (5.17+).
#[classifier]
pub fn loupe_lo_nsloop(ctx: TcContext) -> i32 {
    if may_be_watched(&ctx) {
        let _ = observe::<false, true>(&ctx);
    }
    PASS_ON
}

/// One netlink filter per namespace (slot in the classid), one or two records per packet; no
/// helper newer than 5.8.
#[classifier]
pub fn loupe_lo_ns(ctx: TcContext) -> i32 {
    if may_be_watched(&ctx) {
        let _ = observe::<false, false>(&ctx);
    }
    PASS_ON
}

/// The fast path, run on every packet before anything else: false when the packet is not TCP,
/// or is TCP between two port numbers no namespace watches. It reads the headers in place
/// (direct packet access at fixed offsets: IPv4 without options, IPv6 without extension
/// headers, which is all loopback TCP but BIG TCP's jumbograms), and true sends anything it
/// cannot read that way to the full parse.
#[inline(always)]
fn may_be_watched(ctx: &TcContext) -> bool {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_HLEN > end {
        return true;
    }
    // SAFETY: every read below is inside [start, end), checked right before it; the verifier
    // checks the same bounds.
    unsafe {
        let ethertype = u16::from_be_bytes(*((start + 12) as *const [u8; 2]));
        let ports_at = match ethertype {
            ETH_P_IP => {
                if start + ETH_HLEN + 20 + 4 > end {
                    return true;
                }
                let ip = (start + ETH_HLEN) as *const [u8; 20];
                if (*ip)[9] != IPPROTO_TCP {
                    return false;
                }
                if (*ip)[0] != 0x45 {
                    return true;
                }
                start + ETH_HLEN + 20
            }
            ETH_P_IPV6 => {
                if start + ETH_HLEN + IPV6_HLEN + 4 > end {
                    return true;
                }
                match *((start + ETH_HLEN + 6) as *const u8) {
                    IPPROTO_TCP => start + ETH_HLEN + IPV6_HLEN,
                    IPPROTO_HOPOPTS => return true,
                    _ => return false,
                }
            }
            _ => return false,
        };
        let ports = *(ports_at as *const [u8; 4]);
        port_number_watched(u16::from_be_bytes([ports[0], ports[1]]))
            || port_number_watched(u16::from_be_bytes([ports[2], ports[3]]))
    }
}

#[inline(always)]
fn port_number_watched(port: u16) -> bool {
    WATCHED_PORT_NUMBERS
        .get(u32::from(port))
        .is_some_and(|namespaces| *namespaces != 0)
}

/// Where the TCP header starts and how far the IP header says the packet goes.
struct L4 {
    /// Offset of the TCP header in the packet.
    offset: usize,
    /// Bytes after the IP header by its own length field; `None` when the field is 0 (a GSO
    /// packet above 64 KiB, BIG TCP): the skb length bounds the payload then.
    ip_payload: Option<usize>,
}

/// Parses an IPv4 or IPv6 header carrying TCP, writing its addresses into `header`; `None` for
/// anything else. The addresses go straight into the record header: the classifier and the
/// `bpf_loop` callback share the 512-byte stack, so no copy of them is made.
#[inline(always)]
fn parse_l3(ctx: &TcContext, header: &mut SegmentHeader) -> Result<Option<L4>, i64> {
    match u16::from_be(ctx.load::<u16>(12)?) {
        ETH_P_IP => parse_ipv4(ctx, header),
        ETH_P_IPV6 => parse_ipv6(ctx, header),
        _ => Ok(None),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, header: &mut SegmentHeader) -> Result<Option<L4>, i64> {
    let ip: [u8; 20] = ctx.load(ETH_HLEN)?;
    if ip[0] >> 4 != 4 || ip[9] != IPPROTO_TCP {
        return Ok(None);
    }
    // A non-first fragment carries no TCP header (does not happen on lo's 64 KiB MTU).
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return Ok(None);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return Ok(None);
    }
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    header.saddr = ipv4_mapped([ip[12], ip[13], ip[14], ip[15]]);
    header.daddr = ipv4_mapped([ip[16], ip[17], ip[18], ip[19]]);
    Ok(Some(L4 {
        offset: ETH_HLEN + ihl,
        ip_payload: (tot_len != 0).then(|| tot_len.saturating_sub(ihl)),
    }))
}

/// TCP directly after the fixed 40-byte header, or after one Hop-by-Hop options header: the
/// kernel (up to at least 6.18) inserts one with a Jumbo Payload option into every GSO packet
/// above 64 KiB (BIG TCP; payload length 0), and loopback's GSO makes such packets. Any other
/// extension header (or protocol) is skipped: loopback TCP carries none in practice.
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, header: &mut SegmentHeader) -> Result<Option<L4>, i64> {
    // Version, traffic class, flow label, payload length, next header, hop limit.
    let fixed: [u8; 8] = ctx.load(ETH_HLEN)?;
    if fixed[0] >> 4 != 6 {
        return Ok(None);
    }
    let mut offset = ETH_HLEN + IPV6_HLEN;
    let mut next_header = fixed[6];
    if next_header == IPPROTO_HOPOPTS {
        // Next header, then the header's length in 8-byte units beyond the first 8.
        let hop: [u8; 2] = ctx.load(offset)?;
        next_header = hop[0];
        offset += (usize::from(hop[1]) + 1) * 8;
    }
    if next_header != IPPROTO_TCP {
        return Ok(None);
    }
    load_into(ctx, ETH_HLEN + 8, &mut header.saddr)?;
    load_into(ctx, ETH_HLEN + 24, &mut header.daddr)?;
    // Counts extension headers too; 0 for a jumbogram (BIG TCP), bounded by the skb then.
    let payload_len = usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
    let extensions = offset - (ETH_HLEN + IPV6_HLEN);
    Ok(Some(L4 {
        offset,
        ip_payload: (payload_len != 0).then(|| payload_len.saturating_sub(extensions)),
    }))
}

/// Copies `size_of::<T>()` packet bytes at `offset` into `dst`, without a stack temporary.
#[inline(always)]
fn load_into<T: Copy>(ctx: &TcContext, offset: usize, dst: &mut T) -> Result<(), i64> {
    // SAFETY: `dst` is a valid, exclusively borrowed `T` of plain bytes (addresses), and the
    // helper writes exactly size_of::<T>() bytes into it or fails.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast::<c_void>(),
            offset as u32,
            (dst as *mut T).cast::<c_void>(),
            core::mem::size_of::<T>() as u32,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(ret)
    }
}

/// `SHARED`: the namespace from the netns cookie helper, otherwise from the filter's slot.
/// `LOOP_HELPER`: payload copied with `bpf_loop` in chunks, otherwise as one record.
#[inline(always)]
fn observe<const SHARED: bool, const LOOP_HELPER: bool>(ctx: &TcContext) -> Result<(), i64> {
    // Built in place: the record header lives once on the stack, inside the loop state.
    let mut state = ChunkLoop {
        skb: ctx.skb.skb,
        header: SegmentHeader::default(),
        data_seq: 0,
        payload_off: 0,
        payload_len: 0,
        chunks: 0,
        emitted: 0,
    };
    let Some(l4) = parse_l3(ctx, &mut state.header)? else {
        return Ok(());
    };
    let tcp: [u8; 20] = ctx.load(l4.offset)?;
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 {
        return Ok(());
    }
    let flags = tcp[13];

    let netns_cookie = if SHARED {
        // SAFETY: the helper only reads the skb the kernel passed to this program.
        unsafe { bpf_get_netns_cookie(ctx.skb.skb.cast::<c_void>()) }
    } else {
        // SAFETY: a plain read of the context the kernel passed; cls_bpf sets it to the filter's
        // classid before running the program (16 bits in the kernel's skb control block).
        let slot = unsafe { (*ctx.skb.skb).tc_classid } & 0xffff;
        // SAFETY: a plain u64 value, copied out right away.
        match unsafe { NETNS_SLOTS.get(&slot) } {
            Some(identity) => *identity,
            None => return Ok(()),
        }
    };
    let (direction, client_port, server_port, watched) =
        if let Some(watched) = watched_port(netns_cookie, dport) {
            (DIRECTION_REQUEST, sport, dport, watched)
        } else if let Some(watched) = watched_port(netns_cookie, sport) {
            (DIRECTION_RESPONSE, dport, sport, watched)
        } else {
            return Ok(());
        };
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { OWN_FLOWS.get(PortKey::new(netns_cookie, client_port)) }.is_some() {
        return Ok(());
    }

    let payload_off = l4.offset + doff;
    let mut payload_len = (ctx.len() as usize).saturating_sub(payload_off);
    if let Some(ip_payload) = l4.ip_payload {
        payload_len = payload_len.min(ip_payload.saturating_sub(doff));
    }
    // Bare ACKs and SYNs carry nothing a flow needs: its first record is its first watched GET.
    if payload_len == 0 && flags & (TCP_FIN | TCP_RST) == 0 {
        return Ok(());
    }

    let header = &mut state.header;
    header.netns_cookie = netns_cookie;
    header.sport = sport;
    header.dport = dport;
    header.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    header.ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    header.flags = flags;
    header.direction = direction;
    header.packet_payload_len = payload_len as u32;

    let key = FlowVerdictKey {
        netns_cookie,
        client_addr: if direction == DIRECTION_REQUEST {
            header.saddr
        } else {
            header.daddr
        },
        client_port,
        server_port,
        _pad: [0; 4],
    };
    if direction == DIRECTION_REQUEST && payload_len != 0 {
        decide(ctx, &key, payload_off, payload_len, watched);
    }
    let Some(verdict) = FLOW_VERDICTS.get_ptr_mut(&key) else {
        count_skipped(payload_len);
        return Ok(());
    };
    let side = usize::from(direction & 1);
    // SAFETY: the map value stays valid while the program runs; plain bytes.
    unsafe {
        if (*verdict).copy == 0 && payload_len != 0 {
            (*verdict).skipped[side] = 1;
            count_skipped(payload_len);
            return Ok(());
        }
        header.resumed = (*verdict).skipped[side];
        (*verdict).skipped[side] = 0;
    }
    if flags & TCP_RST != 0 {
        let _ = FLOW_VERDICTS.remove(&key);
    }

    if payload_len == 0 {
        match SEGMENTS.reserve::<SegmentHeader>(0) {
            Some(mut entry) => {
                entry.write(state.header);
                entry.submit(0);
            }
            None => count_drop(ctx, 1, 0),
        }
        return Ok(());
    }

    if !within_share(netns_cookie, payload_len as u64) {
        count_over_share(payload_len as u64);
        return Ok(());
    }

    // A SYN consumes one sequence number before its data (TCP Fast Open).
    state.data_seq = if flags & TCP_SYN != 0 {
        header.seq.wrapping_add(1)
    } else {
        header.seq
    };
    state.payload_off = payload_off as u32;
    state.payload_len = payload_len as u32;
    if !LOOP_HELPER {
        let (records, bytes) = emit_flat(&state, payload_len);
        if records != 0 {
            count_drop(ctx, records, bytes);
        }
        return Ok(());
    }
    let chunks = payload_len.div_ceil(CHUNK_BYTES);
    state.chunks = chunks as u32;
    // bpf_loop has the verifier check the body once instead of once per iteration.
    // SAFETY: the callback has the signature bpf_loop expects and only reads/writes `state`
    // through the pointer it is given, which lives on this stack frame during the call.
    unsafe {
        bpf_loop(
            chunks.min(MAX_CHUNKS) as u32,
            emit_chunk as *mut c_void,
            (&mut state as *mut ChunkLoop).cast::<c_void>(),
            0,
        );
    }
    let emitted = state.emitted as usize;
    if emitted < chunks {
        // The ring was full: the rest of this packet is lost and the flow has a gap here.
        let lost_bytes = payload_len.saturating_sub(emitted * CHUNK_BYTES);
        count_drop(ctx, (chunks - emitted) as u64, lost_bytes as u64);
    }
    Ok(())
}

/// What the chunk loop needs; lives on the classifier's stack while `bpf_loop` runs.
#[repr(C)]
struct ChunkLoop {
    skb: *mut __sk_buff,
    /// The packet's header; each chunk's record gets a copy with its own seq, length and flags.
    header: SegmentHeader,
    data_seq: u32,
    payload_off: u32,
    payload_len: u32,
    chunks: u32,
    /// Chunks emitted so far; the loop stops at the first that cannot be.
    emitted: u32,
}

/// The fields that differ between the records of one packet.
#[derive(Clone, Copy)]
struct ChunkFields {
    seq: u32,
    chunk: u16,
    payload_len: u16,
    flags: u8,
}

/// `bpf_loop` body: emits chunk `index` of the packet. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn emit_chunk(index: u64, state: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer to the ChunkLoop given to it.
    let state = unsafe { &mut *state.cast::<ChunkLoop>() };
    if next_chunk(index, state) {
        0
    } else {
        1
    }
}

/// Emits the payload without a loop: one record of up to [`MAX_RECORD_PAYLOAD`] bytes in the
/// smallest size class that holds it, and a second record for the rest of a packet of two full
/// segments (loopback's MTU is 64 KiB and TCP sends at least two segments per GSO packet, so
/// such packets reach about 128 KiB on every kernel). A few straight branches that old
/// verifiers check in one pass. Returns the records and payload bytes not emitted: the whole
/// packet when it is above [`MAX_FLAT_PAYLOAD`], else what a full ring or a failed copy lost
/// (the first record may be in the ring while the second is not: a gap follows it).
#[inline(always)]
fn emit_flat(state: &ChunkLoop, payload_len: usize) -> (u64, u64) {
    if payload_len > MAX_FLAT_PAYLOAD {
        return (1, payload_len as u64);
    }
    let first_len = payload_len.min(MAX_RECORD_PAYLOAD);
    let split = first_len < payload_len;
    let mut fields = ChunkFields {
        seq: state.data_seq,
        chunk: 0,
        payload_len: first_len as u16,
        flags: state.header.flags,
    };
    if split {
        fields.flags &= !(TCP_FIN | TCP_PSH | TCP_RST);
    }
    let (skb, header, src) = (state.skb, &state.header, u64::from(state.payload_off));
    let len = first_len as u64;
    let emitted = if first_len > 16384 {
        emit::<LARGEST_RECORD>(skb, header, fields, src, len)
    } else if first_len > CHUNK_BYTES {
        emit::<16384>(skb, header, fields, src, len)
    } else if first_len > 1024 {
        emit::<CHUNK_BYTES>(skb, header, fields, src, len)
    } else if first_len > 256 {
        emit::<1024>(skb, header, fields, src, len)
    } else {
        emit::<256>(skb, header, fields, src, len)
    };
    let records = if split { 2 } else { 1 };
    if !emitted {
        return (records, payload_len as u64);
    }
    if !split {
        return (0, 0);
    }
    let rest = ChunkFields {
        seq: state.data_seq.wrapping_add(first_len as u32),
        chunk: 1,
        payload_len: (payload_len - first_len) as u16,
        flags: state.header.flags & !TCP_SYN,
    };
    let rest_len = (payload_len - first_len) as u64;
    if emit::<LARGEST_RECORD>(skb, header, rest, src + first_len as u64, rest_len) {
        (0, 0)
    } else {
        (1, rest_len)
    }
}

/// Emits chunk `index` of the packet; false when the loop should stop (all emitted, ring full).
#[inline(always)]
fn next_chunk(index: u64, state: &mut ChunkLoop) -> bool {
    if index >= MAX_CHUNKS as u64 || index != u64::from(state.emitted) {
        return false;
    }
    let offset = index * CHUNK_BYTES as u64;
    let remaining = u64::from(state.payload_len).saturating_sub(offset);
    if remaining == 0 {
        return false;
    }
    let len = remaining.min(CHUNK_BYTES as u64);
    let chunks = u64::from(state.chunks);
    let mut fields = ChunkFields {
        seq: state.data_seq.wrapping_add(offset as u32),
        chunk: index as u16,
        payload_len: len as u16,
        flags: state.header.flags,
    };
    // Each record reads as its own segment: SYN on the first, FIN/PSH/RST on the last.
    if index != 0 {
        fields.flags &= !TCP_SYN;
    }
    if index + 1 != chunks {
        fields.flags &= !(TCP_FIN | TCP_PSH | TCP_RST);
    }
    let src = u64::from(state.payload_off) + offset;
    let emitted = if len > 1024 {
        emit::<CHUNK_BYTES>(state.skb, &state.header, fields, src, len)
    } else if len > 256 {
        emit::<1024>(state.skb, &state.header, fields, src, len)
    } else {
        emit::<256>(state.skb, &state.header, fields, src, len)
    };
    if !emitted {
        return false;
    }
    state.emitted += 1;
    true
}

#[inline(always)]
fn watched_port(netns_cookie: u64, port: u16) -> Option<*const WatchedPort> {
    WATCHED_PORTS.get_ptr(PortKey::new(netns_cookie, port))
}

/// How a request packet's payload starts.
enum Start {
    /// A request line asking for a watched path with GET: the exchange is copied.
    WatchedGet,
    /// Another request line: the exchange is skipped.
    Other,
    /// No request line (the rest of a request, or a body): the flow's verdict stands.
    Neither,
}

/// Sets the flow's verdict from a request packet's start. Only a watched GET creates a verdict:
/// a flow without one is not copied, so other traffic costs no map entry. The verdict follows
/// the latest request start: a client pipelining another request behind a watched GET (no
/// scraper does) cuts that GET's answer, which user space then counts as truncated.
#[inline(always)]
fn decide(
    ctx: &TcContext,
    key: &FlowVerdictKey,
    payload_off: usize,
    payload_len: usize,
    watched: *const WatchedPort,
) {
    let len = payload_len.min(REQUEST_WINDOW) as u64;
    let Some(window) = REQUEST_WINDOWS.get_ptr_mut(0) else {
        return;
    };
    if len == 0 {
        return;
    }
    // Bounded in [1, REQUEST_WINDOW] by a mask the verifier sees (as in `emit`).
    let size = (black_box(len - 1) & (REQUEST_WINDOW as u64 - 1)) + 1;
    // SAFETY: the helper writes at most `size <= REQUEST_WINDOW` bytes into this CPU's scratch
    // slot, which has exactly REQUEST_WINDOW bytes; nothing else uses it during the program.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast::<c_void>(),
            payload_off as u32,
            window.cast::<c_void>(),
            size as u32,
        )
    };
    if loaded != 0 {
        return;
    }
    // SAFETY: as above; bytes past `len` are an earlier packet's, and every reader below looks
    // only at bytes before `len`.
    let window = unsafe { &*window };
    // SAFETY: a map value, valid while the program runs; plain bytes.
    let watched = unsafe { &*watched };
    let copy = match request_start(&window, len as usize, watched) {
        Start::WatchedGet => 1,
        Start::Other => 0,
        Start::Neither => return,
    };
    match FLOW_VERDICTS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(verdict) => unsafe { (*verdict).copy = copy },
        None if copy == 1 => {
            let verdict = FlowVerdict {
                copy: 1,
                ..FlowVerdict::default()
            };
            let _ = FLOW_VERDICTS.insert(key, &verdict, 0);
        }
        None => {}
    }
}

/// Is the request line in `window` (its first `len` bytes are the packet's) a GET of a path
/// the port watches, another request, or no request line at all?
#[inline(always)]
fn request_start(window: &[u64; REQUEST_WINDOW / 8], len: usize, watched: &WatchedPort) -> Start {
    let first = u64::from_le(window[0]);
    if len < 4 || first & 0xffff_ffff != u64::from(u32::from_le_bytes(*b"GET ")) {
        return if is_method(first, len) {
            Start::Other
        } else {
            Start::Neither
        };
    }
    if watched.any_get != 0 {
        return Start::WatchedGet;
    }
    for (i, path) in watched.paths.iter().enumerate() {
        if i >= usize::from(watched.count) {
            break;
        }
        if path_matches(window, len, path) {
            return Start::WatchedGet;
        }
    }
    Start::Other
}

/// Three to seven capital letters and a space: how every HTTP method token starts a request.
#[inline(always)]
fn is_method(first: u64, len: usize) -> bool {
    for (i, byte) in first.to_le_bytes().into_iter().enumerate() {
        if byte == b' ' {
            return i >= 3 && len > i;
        }
        if !byte.is_ascii_uppercase() {
            return false;
        }
    }
    false
}

/// Does the request line start with the path's needle (and, for a whole path, end it there)?
/// Every word is compared the same way and the results or-ed, so the verifier walks one path.
#[inline(always)]
fn path_matches(window: &[u64; REQUEST_WINDOW / 8], len: usize, path: &WatchedPath) -> bool {
    let n = usize::from(path.len);
    let whole = path.whole != 0;
    if n > NEEDLE_BYTES || len < n + usize::from(whole) {
        return false;
    }
    let mut diff = 0u64;
    for w in 0..NEEDLE_BYTES / 8 {
        diff |= (u64::from_le(window[w]) & path.mask[w]) ^ path.needle[w];
    }
    if diff != 0 {
        return false;
    }
    if !whole {
        return true;
    }
    // The byte after the path, at a variable offset: allowed in a map value (the scratch slot),
    // unlike the stack on old kernels.
    let bytes = (window as *const [u64; REQUEST_WINDOW / 8]).cast::<u8>();
    // SAFETY: `n < len <= REQUEST_WINDOW`, and the mask keeps the offset inside the slot for
    // the verifier too.
    let end = unsafe { *bytes.add(n & (REQUEST_WINDOW - 1)) };
    end == b' ' || end == b'?'
}

/// Accounts `bytes` to the namespace's share of the current window; false (nothing accounted)
/// when the ring is more than half full and the namespace already put its share of the ring
/// into it in this window. A flooding pod so fills at most about half the ring; the pods that
/// stay under their share keep the rest.
#[inline(always)]
fn within_share(netns_cookie: u64, bytes: u64) -> bool {
    let size = SEGMENTS.query(u64::from(BPF_RB_RING_SIZE));
    let pending = SEGMENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    // SAFETY: the helper has no arguments and no side effects.
    let window = unsafe { bpf_ktime_get_ns() } >> SHARE_WINDOW_SHIFT;
    let Some(share) = NETNS_SHARES.get_ptr_mut(&netns_cookie) else {
        let _ = NETNS_SHARES.insert(&netns_cookie, &NetnsShare { window, bytes }, 0);
        return true;
    };
    // SAFETY: the map value stays valid while the program runs; plain integers. Updates from
    // two CPUs at once may lose one: the share is approximate.
    unsafe {
        if (*share).window != window {
            (*share).window = window;
            (*share).bytes = 0;
        }
        if pending > size / 2 && (*share).bytes + bytes > size / RING_SHARE_DIVISOR {
            return false;
        }
        (*share).bytes += bytes;
    }
    true
}

/// Counts a payload packet refused for being over its namespace's share.
#[inline(always)]
fn count_over_share(payload_len: u64) {
    let Some(counters) = DROPS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot, written only by this program on this CPU.
    unsafe {
        (*counters).over_share_packets += 1;
        (*counters).over_share_bytes += payload_len;
    }
}

/// Counts a payload packet left out on purpose (not part of a watched GET's exchange).
#[inline(always)]
fn count_skipped(payload_len: usize) {
    if payload_len == 0 {
        return;
    }
    let Some(counters) = DROPS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot, written only by this program on this CPU.
    unsafe {
        (*counters).skipped_packets += 1;
        (*counters).skipped_bytes += payload_len as u64;
    }
}

/// Copies `len` payload bytes at `src` into a new record of size class `N` (a power of two) whose header is
/// `header` with `fields` in place. False when the ring is full or the copy fails; nothing is
/// submitted then.
#[inline(always)]
fn emit<const N: usize>(
    skb: *mut __sk_buff,
    header: &SegmentHeader,
    fields: ChunkFields,
    src: u64,
    len: u64,
) -> bool {
    let Some(mut entry) = SEGMENTS.reserve::<Record<N>>(0) else {
        return false;
    };
    let record = entry.as_mut_ptr();
    if len == 0 || len > N as u64 {
        entry.discard(0);
        return false;
    }
    // The verifier needs the length provably in [1, N] right at the call. The compiler merges
    // the two tests above into one on `len - 1`, which the 5.10 verifier cannot carry back to
    // `len`; a mask it cannot see through (N is a power of two) bounds it whatever it knows.
    const { assert!(N.is_power_of_two()) };
    let len = (black_box(len - 1) & (N as u64 - 1)) + 1;
    // SAFETY: `record` points at a reserved ring-buffer slot of size_of::<Record<N>>() bytes;
    // the header is written field by field there (no stack copy), and the copy writes
    // `len <= N` bytes into its `data` array.
    let copied = unsafe {
        addr_of_mut!((*record).header).write(*header);
        addr_of_mut!((*record).header.seq).write(fields.seq);
        addr_of_mut!((*record).header.chunk).write(fields.chunk);
        addr_of_mut!((*record).header.payload_len).write(fields.payload_len);
        addr_of_mut!((*record).header.flags).write(fields.flags);
        bpf_skb_load_bytes(
            skb.cast::<c_void>(),
            src as u32,
            addr_of_mut!((*record).data).cast::<c_void>(),
            len as u32,
        )
    };
    if copied != 0 {
        entry.discard(0);
        return false;
    }
    entry.submit(0);
    true
}

/// Counts what could not be emitted; logs when this CPU's count passes a power of two, so a
/// full ring shows up in the agent's log without a line per packet.
#[inline(always)]
fn count_drop(ctx: &TcContext, events: u64, bytes: u64) {
    let Some(counters) = DROPS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot, written only by this program on this CPU.
    let total = unsafe {
        (*counters).events += events;
        (*counters).bytes += bytes;
        (*counters).events
    };
    if (total - events).leading_zeros() != total.leading_zeros() {
        warn!(
            ctx,
            "loupe: ring buffer full or packet too long: {} records dropped on this CPU", total
        );
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

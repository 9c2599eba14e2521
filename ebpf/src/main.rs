//! loupe's capture program: a TC classifier on a pod's `lo` egress. Every loopback packet passes
//! `lo` egress exactly once, so both directions of a flow are seen here. For IPv4 TCP packets
//! whose source or destination port is watched in the packet's network namespace, it copies the
//! payload into the `SEGMENTS` ring buffer (record layout: `loupe_common::SegmentHeader`).
//! It only observes: it always returns `TC_ACT_UNSPEC` (= `TCX_NEXT`), never changing traffic.
//!
//! Kernel needs: `bpf_get_netns_cookie` for TC programs (added early 2025, about Linux
//! 6.14/6.15; verified on 6.18), which lets one program tell all namespaces apart; `bpf_loop`
//! (5.17+); ring buffers (5.8+); TCX (6.6+, else netlink clsact).
#![no_std]
#![no_main]

use core::ffi::c_void;
use core::hint::black_box;
use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_get_netns_cookie, bpf_loop, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use aya_log_ebpf::warn;
use loupe_common::{
    DropCounters, PortKey, SegmentHeader, CHUNK_BYTES, DEFAULT_RING_BYTES, DIRECTION_REQUEST,
    DIRECTION_RESPONSE, MAX_CHUNKS, MAX_OWN_FLOWS, MAX_WATCHED_PORTS, TCP_FIN, TCP_PSH, TCP_RST,
    TCP_SYN,
};

#[map]
static SEGMENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
static WATCHED_PORTS: HashMap<PortKey, u8> = HashMap::with_max_entries(MAX_WATCHED_PORTS, 0);

#[map]
static OWN_FLOWS: HashMap<PortKey, u8> = HashMap::with_max_entries(MAX_OWN_FLOWS, 0);

#[map]
static DROPS: PerCpuArray<DropCounters> = PerCpuArray::with_max_entries(1, 0);

/// `TC_ACT_UNSPEC` for netlink filters, `TCX_NEXT` for TCX links: let the next program decide.
const PASS_ON: i32 = -1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;

/// One ring-buffer record: header plus room for `N` payload bytes. The ring only accepts
/// constant-size reservations, so payload goes into one of a few size classes.
#[repr(C)]
struct Record<const N: usize> {
    header: SegmentHeader,
    data: [u8; N],
}

#[classifier]
pub fn loupe_lo_egress(ctx: TcContext) -> i32 {
    let _ = observe(&ctx);
    PASS_ON
}

#[inline(always)]
fn observe(ctx: &TcContext) -> Result<(), i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    if ethertype != ETH_P_IP {
        return Ok(());
    }
    let ip: [u8; 20] = ctx.load(ETH_HLEN)?;
    if ip[0] >> 4 != 4 || ip[9] != IPPROTO_TCP {
        return Ok(());
    }
    // A non-first fragment carries no TCP header (does not happen on lo's 64 KiB MTU).
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return Ok(());
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return Ok(());
    }
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = ETH_HLEN + ihl;
    let tcp: [u8; 20] = ctx.load(l4)?;
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 {
        return Ok(());
    }
    let flags = tcp[13];

    // SAFETY: the helper only reads the skb the kernel passed to this program.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.skb.skb.cast::<c_void>()) };
    let (direction, client_port) = if is_watched(netns_cookie, dport) {
        (DIRECTION_REQUEST, sport)
    } else if is_watched(netns_cookie, sport) {
        (DIRECTION_RESPONSE, dport)
    } else {
        return Ok(());
    };
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { OWN_FLOWS.get(PortKey::new(netns_cookie, client_port)) }.is_some() {
        return Ok(());
    }

    let payload_off = l4 + doff;
    let mut payload_len = (ctx.len() as usize).saturating_sub(payload_off);
    // GSO packets above 64 KiB (BIG TCP) carry tot_len 0; otherwise trust the IP length.
    if tot_len != 0 {
        payload_len = payload_len.min(tot_len.saturating_sub(ihl + doff));
    }

    let header = SegmentHeader {
        netns_cookie,
        saddr: u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]),
        daddr: u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]),
        sport,
        dport,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        payload_len: 0,
        flags,
        direction,
        packet_payload_len: payload_len as u32,
        chunk: 0,
        _reserved: 0,
    };

    if payload_len == 0 {
        if flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
            match SEGMENTS.reserve::<SegmentHeader>(0) {
                Some(mut entry) => {
                    entry.write(header);
                    entry.submit(0);
                }
                None => count_drop(ctx, 1, 0),
            }
        }
        return Ok(());
    }

    // A SYN consumes one sequence number before its data (TCP Fast Open).
    let data_seq = if flags & TCP_SYN != 0 {
        header.seq.wrapping_add(1)
    } else {
        header.seq
    };
    let chunks = payload_len.div_ceil(CHUNK_BYTES);
    let mut state = ChunkLoop {
        skb: ctx.skb.skb,
        header,
        data_seq,
        payload_off: payload_off as u32,
        payload_len: payload_len as u32,
        chunks: chunks as u32,
        emitted: 0,
    };
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
    header: SegmentHeader,
    data_seq: u32,
    payload_off: u32,
    payload_len: u32,
    chunks: u32,
    /// Chunks emitted so far; the loop stops at the first that cannot be.
    emitted: u32,
}

/// `bpf_loop` body: emits chunk `index` of the packet. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn emit_chunk(index: u64, state: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer to the ChunkLoop given to it.
    let state = unsafe { &mut *state.cast::<ChunkLoop>() };
    if index >= MAX_CHUNKS as u64 || index != u64::from(state.emitted) {
        return 1;
    }
    let offset = index * CHUNK_BYTES as u64;
    let remaining = u64::from(state.payload_len).saturating_sub(offset);
    if remaining == 0 {
        return 1;
    }
    let len = remaining.min(CHUNK_BYTES as u64);
    let chunks = u64::from(state.chunks);
    let mut header = state.header;
    header.seq = state.data_seq.wrapping_add(offset as u32);
    header.chunk = index as u16;
    header.payload_len = len as u16;
    // Each record reads as its own segment: SYN on the first, FIN/PSH/RST on the last.
    if index != 0 {
        header.flags &= !TCP_SYN;
    }
    if index + 1 != chunks {
        header.flags &= !(TCP_FIN | TCP_PSH | TCP_RST);
    }
    let src = u64::from(state.payload_off) + offset;
    let emitted = if len > 1024 {
        emit::<CHUNK_BYTES>(state.skb, &header, src, len)
    } else if len > 256 {
        emit::<1024>(state.skb, &header, src, len)
    } else {
        emit::<256>(state.skb, &header, src, len)
    };
    if !emitted {
        return 1;
    }
    state.emitted += 1;
    0
}

#[inline(always)]
fn is_watched(netns_cookie: u64, port: u16) -> bool {
    // SAFETY: the value is only tested for presence, never read.
    unsafe { WATCHED_PORTS.get(PortKey::new(netns_cookie, port)) }.is_some()
}

/// Copies `len` payload bytes at `src` into a new record of size class `N`. False when the ring
/// is full or the copy fails; nothing is submitted then.
#[inline(always)]
fn emit<const N: usize>(skb: *mut __sk_buff, header: &SegmentHeader, src: u64, len: u64) -> bool {
    let Some(mut entry) = SEGMENTS.reserve::<Record<N>>(0) else {
        return false;
    };
    let record = entry.as_mut_ptr();
    // The verifier needs the length provably in [1, N] right at the call.
    let len = black_box(len);
    if len == 0 || len > N as u64 {
        entry.discard(0);
        return false;
    }
    // SAFETY: `record` points at a reserved ring-buffer slot of size_of::<Record<N>>() bytes;
    // the copy writes `len <= N` bytes into its `data` array.
    let copied = unsafe {
        addr_of_mut!((*record).header).write(*header);
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

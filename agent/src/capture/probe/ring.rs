//! Reading the capture ring buffer: records (layout: [`loupe_common::SegmentHeader`]) become
//! [`Segment`]s, in the order the program emitted them (one ring for all CPUs).

use std::net::{Ipv6Addr, SocketAddr};

use aya::maps::{MapData, RingBuf};
use bytes::Bytes;
use loupe_common::{SegmentHeader, DIRECTION_REQUEST, DIRECTION_RESPONSE, SEGMENT_HEADER_LEN};
use tokio::io::unix::AsyncFd;

use super::ProbeError;
use crate::capture::{Direction, FlowKey, Segment};

crate::telemetry::counter!(
    pub EVENTS,
    "loupe_capture_events_total",
    "Segment records read from the capture ring buffer (payload chunks and SYN/FIN/RST).",
);
crate::telemetry::counter!(
    pub PAYLOAD_BYTES,
    "loupe_capture_payload_bytes_total",
    "TCP payload bytes read from the capture ring buffer.",
);
crate::telemetry::counter!(
    pub MALFORMED_RECORDS,
    "loupe_capture_malformed_records_total",
    "Ring-buffer records too short or inconsistent to decode; skipped.",
);

/// Registers a ring-buffer reader with the tokio reactor for readability.
pub(super) fn register_readable<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: the ring buffers (segments, aya-log) own their map's file descriptor for their
    // whole life and always return that same descriptor; the AsyncFd owns them.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Captured segments, in the order the program emitted them (one ring for all CPUs).
pub struct SegmentStream {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl std::fmt::Debug for SegmentStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentStream").finish_non_exhaustive()
    }
}

impl SegmentStream {
    pub(super) fn new(ring: RingBuf<MapData>) -> Result<Self, ProbeError> {
        let ring = register_readable(ring).map_err(ProbeError::Poll)?;
        Ok(Self { ring })
    }

    /// Waits for the next segment.
    pub async fn next(&mut self) -> Result<Segment, ProbeError> {
        loop {
            if let Some(segment) = self.try_next() {
                return Ok(segment);
            }
            let mut guard = self.ring.readable_mut().await.map_err(ProbeError::Poll)?;
            if let Some(segment) = next_segment(guard.get_inner_mut()) {
                return Ok(segment);
            }
            guard.clear_ready();
        }
    }

    /// The next segment already in the ring, without waiting.
    pub fn try_next(&mut self) -> Option<Segment> {
        next_segment(self.ring.get_mut())
    }
}

fn next_segment(ring: &mut RingBuf<MapData>) -> Option<Segment> {
    loop {
        let item = ring.next()?;
        match decode_record(&item) {
            Some(segment) => {
                EVENTS.inc();
                PAYLOAD_BYTES.add(segment.payload.len() as u64);
                return Some(segment);
            }
            None => MALFORMED_RECORDS.inc(),
        }
    }
}

/// Decodes one ring-buffer record: a [`SegmentHeader`] then `payload_len` payload bytes.
pub fn decode_record(record: &[u8]) -> Option<Segment> {
    let head = record.get(..SEGMENT_HEADER_LEN)?;
    // SAFETY: `head` holds exactly size_of::<SegmentHeader>() bytes, and SegmentHeader is a
    // repr(C) struct of integers (aya::Pod) for which every bit pattern is valid.
    let header: SegmentHeader =
        unsafe { std::ptr::read_unaligned(head.as_ptr().cast::<SegmentHeader>()) };
    let len = usize::from(header.payload_len);
    let payload = record.get(SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + len)?;
    // IPv4 packets carry IPv4-mapped addresses; to_canonical gives them back as IPv4.
    let source = SocketAddr::new(Ipv6Addr::from(header.saddr).to_canonical(), header.sport);
    let destination = SocketAddr::new(Ipv6Addr::from(header.daddr).to_canonical(), header.dport);
    let (direction, client, server) = match header.direction {
        DIRECTION_REQUEST => (Direction::Request, source, destination),
        DIRECTION_RESPONSE => (Direction::Response, destination, source),
        _ => return None,
    };
    Some(Segment {
        flow: FlowKey {
            netns: header.netns_cookie,
            client,
            server,
        },
        direction,
        seq: header.seq,
        flags: header.flags,
        resumed: header.resumed != 0,
        payload: Bytes::copy_from_slice(payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(header: &SegmentHeader, payload: &[u8], pad: usize) -> Vec<u8> {
        // SAFETY: SegmentHeader is repr(C) plain integers without implicit padding.
        let head = unsafe {
            std::slice::from_raw_parts(
                (header as *const SegmentHeader).cast::<u8>(),
                SEGMENT_HEADER_LEN,
            )
        };
        let mut out = head.to_vec();
        out.extend_from_slice(payload);
        out.resize(out.len() + pad, 0xAA);
        out
    }

    fn header(direction: u8, payload_len: u16) -> SegmentHeader {
        SegmentHeader {
            netns_cookie: 77,
            saddr: loupe_common::ipv4_mapped([127, 0, 0, 1]),
            daddr: loupe_common::ipv4_mapped([127, 0, 0, 2]),
            sport: 40000,
            dport: 8080,
            seq: 1000,
            ack: 5,
            payload_len,
            flags: 0x18,
            direction,
            packet_payload_len: u32::from(payload_len),
            chunk: 0,
            resumed: 0,
            _reserved: 0,
        }
    }

    #[test]
    fn request_record_decodes_with_client_as_source() {
        let bytes = record(&header(DIRECTION_REQUEST, 3), b"GET", 253);
        let seg = decode_record(&bytes).expect("decodes");
        assert_eq!(seg.direction, Direction::Request);
        assert_eq!(seg.flow.netns, 77);
        assert_eq!(seg.flow.client, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(seg.flow.server, "127.0.0.2:8080".parse().unwrap());
        assert_eq!(seg.seq, 1000);
        assert_eq!(seg.flags, 0x18);
        assert_eq!(
            &seg.payload[..],
            b"GET",
            "size-class padding is not payload"
        );
    }

    #[test]
    fn response_record_swaps_client_and_server() {
        let bytes = record(&header(DIRECTION_RESPONSE, 2), b"OK", 0);
        let seg = decode_record(&bytes).expect("decodes");
        assert_eq!(seg.direction, Direction::Response);
        assert_eq!(seg.flow.client, "127.0.0.2:8080".parse().unwrap());
        assert_eq!(seg.flow.server, "127.0.0.1:40000".parse().unwrap());
    }

    #[test]
    fn ipv6_record_keeps_ipv6_addresses() {
        let mut header = header(DIRECTION_RESPONSE, 2);
        header.saddr = Ipv6Addr::LOCALHOST.octets();
        header.daddr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        let seg = decode_record(&record(&header, b"OK", 0)).expect("decodes");
        assert_eq!(seg.flow.server, "[::1]:40000".parse().unwrap());
        assert_eq!(seg.flow.client, "[fd00::2]:8080".parse().unwrap());
        assert!(seg.flow.client.is_ipv6() && seg.flow.server.is_ipv6());
    }

    #[test]
    fn inconsistent_records_are_rejected() {
        assert!(decode_record(&[0u8; 10]).is_none(), "shorter than a header");
        let truncated = record(&header(DIRECTION_REQUEST, 10), b"GET", 0);
        assert!(
            decode_record(&truncated).is_none(),
            "payload_len beyond the record"
        );
        let bad_direction = record(&header(7, 0), b"", 0);
        assert!(decode_record(&bad_direction).is_none());
    }

    #[test]
    fn one_record_packets_above_a_chunk_decode_whole() {
        let payload = vec![b'x'; 60_000];
        let whole = record(&header(DIRECTION_RESPONSE, 60_000), &payload, 4);
        let segment = decode_record(&whole).expect("decodes");
        assert_eq!(segment.payload.len(), 60_000);
    }
}

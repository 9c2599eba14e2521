//! One direction of a TCP stream put back in order by sequence number. Positions are kept as
//! 64-bit offsets from the synchronization point, so sequence-number wraparound at 2^32 needs no
//! special case: an incoming sequence number is placed by its signed 32-bit distance from the
//! next expected one.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(super) struct Reassembly {
    synced: Option<Synced>,
    /// A FIN was seen in this direction.
    pub fin_seen: bool,
}

struct Synced {
    /// Sequence number at offset 0.
    base: u32,
    /// Offset of the next byte to deliver: everything before it went to the parser.
    delivered: u64,
    /// Data beyond a hole, by offset, waiting for the hole to fill.
    held: BTreeMap<u64, Bytes>,
    held_bytes: usize,
    /// When the current hole opened.
    hole_since: Option<Instant>,
    /// Offset of the FIN (one past the last data byte), once seen.
    fin_at: Option<u64>,
}

pub(super) enum Accepted {
    /// New bytes that continue the stream (already trimmed of what was delivered before).
    InOrder(Bytes),
    /// Stored beyond a hole.
    Held,
    /// Nothing new (retransmit or overlap already delivered or held).
    Duplicate,
    /// So far ahead of the stream that the hole before it cannot be buffered: given back.
    TooFar(Bytes),
}

impl Reassembly {
    pub fn is_synced(&self) -> bool {
        self.synced.is_some()
    }

    /// Starts the stream at `seq`: the next byte delivered is the one with this number.
    pub fn sync_at(&mut self, seq: u32) {
        self.synced = Some(Synced {
            base: seq,
            delivered: 0,
            held: BTreeMap::new(),
            held_bytes: 0,
            hole_since: None,
            fin_at: None,
        });
    }

    /// Is the stream synchronized and nothing has been delivered past `seq` yet (a retransmitted
    /// SYN of the same connection)?
    pub fn is_at_start(&self, seq: u32) -> bool {
        self.synced
            .as_ref()
            .is_some_and(|s| s.base == seq && s.delivered == 0 && s.held.is_empty())
    }

    /// Drops synchronization; returns the held segments in stream order (sequence number,
    /// payload) so the caller can look for a new synchronization point among them.
    pub fn unsync(&mut self) -> Vec<(u32, Bytes)> {
        match self.synced.take() {
            Some(s) => s
                .held
                .into_iter()
                .map(|(off, data)| (s.base.wrapping_add(off as u32), data))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Places a segment. `max_ahead`: a segment starting further than this beyond the next
    /// expected byte is [`Accepted::TooFar`].
    pub fn accept(&mut self, seq: u32, payload: Bytes, now: Instant, max_ahead: u64) -> Accepted {
        let Some(s) = &mut self.synced else {
            return Accepted::Duplicate;
        };
        let start = s.offset_of(seq);
        let end = start + payload.len() as i64;
        let delivered = s.delivered as i64;
        if end <= delivered || payload.is_empty() {
            return Accepted::Duplicate;
        }
        if start <= delivered {
            let fresh = payload.slice((delivered - start) as usize..);
            s.delivered += fresh.len() as u64;
            return Accepted::InOrder(fresh);
        }
        let start = start as u64;
        if start - s.delivered > max_ahead {
            return Accepted::TooFar(payload);
        }
        let len = payload.len();
        match s.held.get(&start) {
            Some(existing) if existing.len() >= len => return Accepted::Duplicate,
            Some(existing) => s.held_bytes -= existing.len(),
            None => {}
        }
        s.held.insert(start, payload);
        s.held_bytes += len;
        s.hole_since.get_or_insert(now);
        Accepted::Held
    }

    /// The next held bytes that now continue the stream, if the hole before them has filled.
    pub fn pop_ready(&mut self) -> Option<Bytes> {
        let s = self.synced.as_mut()?;
        loop {
            let (&off, _) = s.held.first_key_value()?;
            if off > s.delivered {
                return None;
            }
            let (_, data) = s.held.pop_first()?;
            s.held_bytes -= data.len();
            if s.held.is_empty() {
                s.hole_since = None;
            }
            let end = off + data.len() as u64;
            if end <= s.delivered {
                continue;
            }
            let fresh = data.slice((s.delivered - off) as usize..);
            s.delivered = end;
            return Some(fresh);
        }
    }

    /// Records the FIN, which follows the byte before `seq_end`.
    pub fn set_fin(&mut self, seq_end: u32) {
        self.fin_seen = true;
        if let Some(s) = &mut self.synced {
            let off = s.offset_of(seq_end).max(0) as u64;
            s.fin_at = Some(off);
        }
    }

    /// Has everything up to the FIN been delivered?
    pub fn at_end(&self) -> bool {
        self.synced
            .as_ref()
            .is_some_and(|s| s.fin_at.is_some_and(|f| f <= s.delivered))
    }

    pub fn held_bytes(&self) -> usize {
        self.synced.as_ref().map_or(0, |s| s.held_bytes)
    }

    /// How long the current hole has been open, if there is one.
    pub fn hole_age(&self, now: Instant) -> Option<Duration> {
        self.synced
            .as_ref()
            .and_then(|s| s.hole_since)
            .map(|t| now.saturating_duration_since(t))
    }
}

impl Synced {
    /// Stream offset of `seq`, placed by its signed distance from the next expected byte.
    fn offset_of(&self, seq: u32) -> i64 {
        let next = self.base.wrapping_add(self.delivered as u32);
        self.delivered as i64 + i64::from(seq.wrapping_sub(next) as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_all(r: &mut Reassembly) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = r.pop_ready() {
            out.extend_from_slice(&b);
        }
        out
    }

    #[test]
    fn in_order_duplicate_overlap_and_hole() {
        let now = Instant::now();
        let mut r = Reassembly::default();
        r.sync_at(100);
        let Accepted::InOrder(b) = r.accept(100, Bytes::from_static(b"abcd"), now, 1 << 20) else {
            panic!("first segment must be in order");
        };
        assert_eq!(&b[..], b"abcd");
        assert!(matches!(
            r.accept(100, Bytes::from_static(b"abcd"), now, 1 << 20),
            Accepted::Duplicate
        ));
        // Overlap: "cdef" from seq 102 yields only "ef".
        let Accepted::InOrder(b) = r.accept(102, Bytes::from_static(b"cdef"), now, 1 << 20) else {
            panic!("overlap must deliver its new part");
        };
        assert_eq!(&b[..], b"ef");
        assert!(matches!(
            r.accept(108, Bytes::from_static(b"ij"), now, 1 << 20),
            Accepted::Held
        ));
        assert_eq!(r.hole_age(now), Some(Duration::ZERO));
        assert!(take_all(&mut r).is_empty());
        let Accepted::InOrder(b) = r.accept(106, Bytes::from_static(b"gh"), now, 1 << 20) else {
            panic!("filling the hole must deliver");
        };
        assert_eq!(&b[..], b"gh");
        assert_eq!(take_all(&mut r), b"ij");
        assert_eq!(r.hole_age(now), None);
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn wraps_at_two_to_the_32() {
        let now = Instant::now();
        let mut r = Reassembly::default();
        r.sync_at(u32::MAX - 2);
        assert!(matches!(
            r.accept(0, Bytes::from_static(b"defg"), now, 1 << 20),
            Accepted::Held
        ));
        let Accepted::InOrder(b) = r.accept(u32::MAX - 2, Bytes::from_static(b"abc"), now, 1 << 20)
        else {
            panic!("segment at the sync point must be in order");
        };
        assert_eq!(&b[..], b"abc");
        assert_eq!(take_all(&mut r), b"defg");
        r.set_fin(4);
        assert!(r.at_end());
    }

    #[test]
    fn too_far_ahead_is_refused() {
        let now = Instant::now();
        let mut r = Reassembly::default();
        r.sync_at(0);
        assert!(matches!(
            r.accept(5000, Bytes::from_static(b"x"), now, 4096),
            Accepted::TooFar(_)
        ));
        assert_eq!(r.held_bytes(), 0);
    }
}

//! Flow reassembly by TCP sequence number; bounded per flow and in total.
//!
//! Each flow (a TCP connection on a pod's loopback) has two directions, each put back in order by
//! sequence number (retransmits and overlaps trimmed, data beyond a hole held) and fed to an
//! incremental HTTP/1.x parser ([`super::http`]); requests queue what each response answers
//! (FIFO: HTTP/1.x answers in order, also when pipelined).
//!
//! **Synchronization.** A direction is synchronized from its SYN when the connection's start was
//! seen. Otherwise (loupe started mid-connection, keep-alive, or after a gap or malformed message)
//! it resynchronizes at a message boundary, recognised per segment:
//! - the request direction at a segment whose payload starts with a request line (known method,
//!   target, `HTTP/1.x`, line end within the segment);
//! - the response direction at a segment starting with `HTTP/1.x NNN`, but only while a request
//!   parsed after the last loss of sync is waiting. With a client that does not pipeline (every
//!   scraper), the first response start captured after a request was captured answers that
//!   request; responses to requests lost with the sync were sent (and captured) before it.
//!
//! **Gaps.** Data beyond a hole is held until the hole fills. The hole is declared lost for good
//! (a gap) when the first of these happens: a FIN arrives on that direction while it is open (a
//! FIN comes last), it has been open for `reorder_timeout`, a segment arrives further ahead than
//! the per-flow budget, or the flow's buffered bytes exceed that budget. (On loopback the probe
//! emits a flow's records in order, so a hole is nearly always a record lost to a full ring
//! buffer, which no retransmit will fill.) An RST ends the flow. A response
//! with any byte in a gap is discarded whole and counted, never published torn; after a gap the
//! pending requests are forgotten, data held beyond the hole is dropped, and the direction
//! resynchronizes as above at data captured afterwards.
//!
//! **Limits.** At most `max_flows` flows, `max_buffered_bytes_per_flow` (held data first becomes
//! a gap, then the body in progress is dropped) and `max_buffered_bytes_total`. Past the flow or
//! byte limit, the namespace holding the most flows (or bytes) loses its least recently active
//! (or largest) flow: a pod flooding its loopback evicts its own flows, not another pod's. Every drop
//! is counted below.
//!
//! Every complete response becomes an [`Exchange`], whatever its status or path; the caller
//! picks the ones it watches. The caller calls [`FlowTable::expire`] about once a second and
//! [`FlowTable::remove_netns`] when a pod's namespace goes away.
//!
//! Size: the table, its limits and every drop it counts (with the counters and log lines that
//! report them) read best together; reassembly of one direction lives in `reassembly`, the
//! tests in `flow/tests.rs`.

mod reassembly;

use super::http::{
    self, Discard, HttpLimits, Outcome, PendingRequest, RequestParser, ResponseParser,
};
use super::{Direction, Exchange, FlowKey, NetnsCookie, Segment};
use crate::memory::Budget;
use bytes::Bytes;
use reassembly::{Accepted, Reassembly};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

crate::telemetry::counter!(
    pub RESPONSES_OBSERVED,
    "loupe_responses_observed_total",
    "HTTP responses observed complete on watched loopback flows.",
);
crate::telemetry::counter!(
    pub RESPONSES_DISCARDED_GAP,
    "loupe_responses_discarded_gap_total",
    "Observed responses discarded because some of their bytes were never captured (ring-buffer loss, flow eviction).",
);
crate::telemetry::counter!(
    pub RESPONSES_DISCARDED_MALFORMED,
    "loupe_responses_discarded_malformed_total",
    "Observed responses discarded because they were not valid HTTP/1.x or their content coding failed.",
);
crate::telemetry::counter!(
    pub RESPONSES_DISCARDED_TOO_LARGE,
    "loupe_responses_discarded_too_large_total",
    "Observed responses discarded because their body, on the wire or decoded, exceeded the body limit.",
);
crate::telemetry::counter!(
    pub RESPONSES_DISCARDED_TRUNCATED,
    "loupe_responses_discarded_truncated_total",
    "Observed responses discarded because the connection closed, reset or went idle before they ended.",
);
crate::telemetry::counter!(
    pub RESPONSES_DISCARDED_UNMATCHED,
    "loupe_responses_discarded_unmatched_total",
    "Observed responses discarded because no request was known for them.",
);
crate::telemetry::counter!(
    pub REQUESTS_MALFORMED,
    "loupe_requests_malformed_total",
    "Observed request streams that were not valid HTTP/1.x (the flow resynchronizes).",
);
crate::telemetry::counter!(
    pub FLOW_GAPS,
    "loupe_flow_gaps_total",
    "Holes in a captured TCP stream that never filled.",
);
crate::telemetry::counter!(
    pub FLOWS_EVICTED,
    "loupe_flows_evicted_total",
    "Flows dropped to respect the flow-count or total-memory limit.",
);
crate::telemetry::counter!(
    pub FLOWS_EXPIRED,
    "loupe_flows_expired_total",
    "Flows forgotten after being idle.",
);
crate::telemetry::counter!(
    pub FLOW_BYTES_DROPPED,
    "loupe_flow_bytes_dropped_total",
    "Captured bytes dropped from flow buffers: evicted or expired flows, responses cut by a gap, bodies dropped under memory pressure.",
);
crate::telemetry::counter!(
    pub FLOW_BYTES_UNSYNCED,
    "loupe_flow_bytes_unsynced_total",
    "Captured bytes skipped while a flow direction waited for a message boundary to resynchronize.",
);

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;

#[derive(Clone, Copy, Debug)]
pub struct FlowLimits {
    pub max_flows: usize,
    pub max_buffered_bytes_per_flow: usize,
    pub max_buffered_bytes_total: usize,
    /// A flow without segments for this long is forgotten.
    pub idle_timeout: Duration,
    /// Largest response body kept, on the wire and once decoded.
    pub max_body_bytes: usize,
    /// Largest request or response head (and chunked trailer section).
    pub max_header_bytes: usize,
    /// Requests awaiting their response on one flow (pipelining depth); more is malformed. Their
    /// method and path count as buffered bytes, bounded by this times `max_header_bytes`.
    pub max_pending_requests: usize,
    /// A hole still open after this long is a gap.
    pub reorder_timeout: Duration,
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self {
            max_flows: 4096,
            max_buffered_bytes_per_flow: 64 << 20,
            max_buffered_bytes_total: 256 << 20,
            idle_timeout: Duration::from_secs(60),
            max_body_bytes: 48 << 20,
            max_header_bytes: 64 << 10,
            max_pending_requests: 64,
            reorder_timeout: Duration::from_secs(1),
        }
    }
}

impl FlowLimits {
    /// The defaults with bodies up to `max_body_bytes`, sized from the node's memory budget: the
    /// flows being reassembled hold at most a quarter of the budget together (on top of it: the
    /// budget is half the memory limit, so flows get an eighth of the limit), and one flow at
    /// most what one body may be and still be kept ([`Budget::largest_body`]). Without a
    /// budget, the defaults.
    pub fn within(budget: &Budget, max_body_bytes: usize) -> Self {
        let defaults = Self::default();
        let (total, one) = match budget.limit() {
            0 => (defaults.max_buffered_bytes_total, usize::MAX),
            limit => (limit / 4, budget.largest_body()),
        };
        Self {
            max_buffered_bytes_total: defaults.max_buffered_bytes_total.min(total),
            max_buffered_bytes_per_flow: defaults.max_buffered_bytes_per_flow.min(one),
            max_body_bytes: max_body_bytes.min(one),
            ..defaults
        }
    }

    fn http(&self) -> HttpLimits {
        HttpLimits {
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
            max_pending_requests: self.max_pending_requests,
        }
    }
}

/// What this table counted (the same events also go to the process-wide counters above).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub responses_observed: u64,
    pub responses_discarded_gap: u64,
    pub responses_discarded_malformed: u64,
    pub responses_discarded_too_large: u64,
    pub responses_discarded_truncated: u64,
    pub responses_discarded_unmatched: u64,
    pub requests_malformed: u64,
    pub gaps: u64,
    pub flows_evicted: u64,
    pub flows_expired: u64,
    pub bytes_dropped: u64,
    pub bytes_unsynced: u64,
}

#[derive(Clone, Copy)]
enum Stat {
    Observed,
    DiscardedGap,
    DiscardedMalformed,
    DiscardedTooLarge,
    DiscardedTruncated,
    DiscardedUnmatched,
    RequestMalformed,
    Gap,
    Evicted,
    Expired,
    BytesDropped,
    BytesUnsynced,
}

impl FlowStats {
    fn add(&mut self, stat: Stat, n: u64) {
        let (field, counter) = match stat {
            Stat::Observed => (&mut self.responses_observed, &RESPONSES_OBSERVED),
            Stat::DiscardedGap => (&mut self.responses_discarded_gap, &RESPONSES_DISCARDED_GAP),
            Stat::DiscardedMalformed => (
                &mut self.responses_discarded_malformed,
                &RESPONSES_DISCARDED_MALFORMED,
            ),
            Stat::DiscardedTooLarge => (
                &mut self.responses_discarded_too_large,
                &RESPONSES_DISCARDED_TOO_LARGE,
            ),
            Stat::DiscardedTruncated => (
                &mut self.responses_discarded_truncated,
                &RESPONSES_DISCARDED_TRUNCATED,
            ),
            Stat::DiscardedUnmatched => (
                &mut self.responses_discarded_unmatched,
                &RESPONSES_DISCARDED_UNMATCHED,
            ),
            Stat::RequestMalformed => (&mut self.requests_malformed, &REQUESTS_MALFORMED),
            Stat::Gap => (&mut self.gaps, &FLOW_GAPS),
            Stat::Evicted => (&mut self.flows_evicted, &FLOWS_EVICTED),
            Stat::Expired => (&mut self.flows_expired, &FLOWS_EXPIRED),
            Stat::BytesDropped => (&mut self.bytes_dropped, &FLOW_BYTES_DROPPED),
            Stat::BytesUnsynced => (&mut self.bytes_unsynced, &FLOW_BYTES_UNSYNCED),
        };
        *field += n;
        counter.add(n);
    }

    fn inc(&mut self, stat: Stat) {
        self.add(stat, 1);
    }
}

/// All watched flows of the node, turning captured segments into complete HTTP exchanges.
pub struct FlowTable {
    limits: FlowLimits,
    flows: HashMap<FlowKey, Flow>,
    buffered: usize,
    stats: FlowStats,
}

/// What an eviction makes room for.
#[derive(Clone, Copy)]
enum Room {
    Flows,
    Bytes,
}

/// Per-call context shared by a flow's handlers.
struct Ctx<'a> {
    limits: &'a FlowLimits,
    http: HttpLimits,
    stats: &'a mut FlowStats,
    out: &'a mut Vec<Exchange>,
    key: FlowKey,
    now: Instant,
}

impl FlowTable {
    pub fn new(limits: FlowLimits) -> Self {
        Self {
            limits,
            flows: HashMap::new(),
            buffered: 0,
            stats: FlowStats::default(),
        }
    }

    pub fn limits(&self) -> &FlowLimits {
        &self.limits
    }

    /// Flows currently tracked.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Bytes currently buffered across all flows (held out-of-order data, partial heads, bodies).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    pub fn stats(&self) -> &FlowStats {
        &self.stats
    }

    /// Takes one captured segment; appends every response it completes to `out`.
    pub fn push(&mut self, segment: Segment, now: Instant, out: &mut Vec<Exchange>) {
        let key = segment.flow;
        if !self.flows.contains_key(&key) {
            // A lone FIN/RST of a flow not tracked carries nothing to parse.
            if segment.payload.is_empty() && segment.flags & SYN == 0 {
                return;
            }
            if self.flows.len() >= self.limits.max_flows {
                self.evict(Room::Flows);
            }
            self.flows.insert(key, Flow::new(now));
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        let before = flow.buffered();
        let mut ctx = Ctx {
            limits: &self.limits,
            http: self.limits.http(),
            stats: &mut self.stats,
            out,
            key,
            now,
        };
        let closed = flow.push(segment, &mut ctx);
        flow.enforce_limit(&mut ctx);
        let after = flow.buffered();
        self.buffered = self.buffered + after - before;
        if closed {
            self.buffered -= after;
            self.stats.add(Stat::BytesDropped, after as u64);
            self.flows.remove(&key);
        }
        while self.buffered > self.limits.max_buffered_bytes_total && !self.flows.is_empty() {
            self.evict(Room::Bytes);
        }
    }

    /// Forgets idle flows and turns holes older than the reorder timeout into gaps. Call it
    /// regularly (about once a second) even when no segments arrive.
    pub fn expire(&mut self, now: Instant) {
        let idle_timeout = self.limits.idle_timeout;
        let expired: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.last_seen) >= idle_timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(flow) = self.flows.remove(&key) {
                self.stats.inc(Stat::Expired);
                self.drop_flow(&flow, Stat::DiscardedTruncated);
            }
        }
        let mut scratch = Vec::new();
        let http = self.limits.http();
        for (key, flow) in &mut self.flows {
            let before = flow.buffered();
            let mut ctx = Ctx {
                limits: &self.limits,
                http,
                stats: &mut self.stats,
                out: &mut scratch,
                key: *key,
                now,
            };
            flow.check_holes(&mut ctx);
            self.buffered = self.buffered + flow.buffered() - before;
        }
        // A gap only discards or resynchronizes; it never completes a response.
        debug_assert!(scratch.is_empty());
    }

    /// Forgets every flow of a network namespace that is gone.
    pub fn remove_netns(&mut self, cookie: NetnsCookie) {
        let mut released = 0;
        self.flows.retain(|key, flow| {
            let keep = key.netns != cookie;
            if !keep {
                released += flow.buffered();
            }
            keep
        });
        self.buffered -= released;
    }

    /// Evicts one flow to make room, from the namespace that holds the most: of flows (`Room::
    /// Flows`: its least recently active one) or of buffered bytes (`Room::Bytes`: its largest
    /// flow). A pod flooding its loopback so loses its own flows, not the other pods'.
    fn evict(&mut self, room: Room) {
        let mut per_netns: HashMap<NetnsCookie, (usize, usize)> = HashMap::new();
        for (key, flow) in &self.flows {
            let held = per_netns.entry(key.netns).or_default();
            held.0 += 1;
            held.1 += flow.buffered();
        }
        let heaviest = per_netns
            .into_iter()
            .max_by_key(|&(netns, (flows, bytes))| {
                let held = match room {
                    Room::Flows => flows,
                    Room::Bytes => bytes,
                };
                (held, std::cmp::Reverse(netns))
            })
            .map(|(netns, _)| netns);
        let candidates = self.flows.iter().filter(|(k, _)| Some(k.netns) == heaviest);
        let victim = match room {
            Room::Flows => candidates.min_by_key(|(_, f)| f.last_seen).map(|(k, _)| *k),
            Room::Bytes => candidates
                .max_by_key(|(_, f)| f.buffered())
                .map(|(k, _)| *k),
        };
        let Some(key) = victim else {
            return;
        };
        if let Some(flow) = self.flows.remove(&key) {
            log::debug!(
                "flow {}:{} -> {} (netns {}): evicted under flow limits",
                key.client.ip(),
                key.client.port(),
                key.server,
                key.netns
            );
            self.stats.inc(Stat::Evicted);
            self.drop_flow(&flow, Stat::DiscardedGap);
        }
    }

    /// Accounts for a flow removed before its end: its buffered bytes, and the response in
    /// progress as `lost`.
    fn drop_flow(&mut self, flow: &Flow, lost: Stat) {
        let bytes = flow.buffered();
        self.buffered -= bytes;
        self.stats.add(Stat::BytesDropped, bytes as u64);
        if flow.resp_parser.in_message() {
            self.stats.inc(lost);
        }
    }
}

#[cfg(test)]
impl FlowTable {
    /// Buffered bytes summed from every flow, to check the running total against.
    fn recount(&self) -> usize {
        self.flows.values().map(Flow::buffered).sum()
    }
}

impl Default for FlowTable {
    fn default() -> Self {
        Self::new(FlowLimits::default())
    }
}

struct Flow {
    last_seen: Instant,
    request: Reassembly,
    response: Reassembly,
    /// Requests whose response has not started yet, oldest first.
    pending: VecDeque<PendingRequest>,
    req_parser: RequestParser,
    resp_parser: ResponseParser,
    /// Upgraded (101, CONNECT): no longer HTTP/1.x, ignored until it ends.
    tunnel: bool,
}

impl Flow {
    fn new(now: Instant) -> Self {
        Self {
            last_seen: now,
            request: Reassembly::default(),
            response: Reassembly::default(),
            pending: VecDeque::new(),
            req_parser: RequestParser::default(),
            resp_parser: ResponseParser::default(),
            tunnel: false,
        }
    }

    fn buffered(&self) -> usize {
        self.request.held_bytes()
            + self.response.held_bytes()
            + self.req_parser.buffered()
            + self.resp_parser.buffered()
            + self
                .pending
                .iter()
                .map(|r| r.method.len() + r.path.len())
                .sum::<usize>()
    }

    fn reasm(&mut self, dir: Direction) -> &mut Reassembly {
        match dir {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }

    /// Handles one segment; returns whether the connection is over (RST, or FIN both ways).
    fn push(&mut self, seg: Segment, ctx: &mut Ctx<'_>) -> bool {
        self.last_seen = ctx.now;
        let dir = seg.direction;
        if seg.flags & RST != 0 {
            self.abort(ctx);
            return true;
        }
        if seg.resumed {
            self.resume(dir, ctx);
        }
        let seq = seg.seq;
        if seg.flags & SYN != 0 {
            // A bare SYN carries its own sequence number; with data (TCP Fast Open) `seq` is
            // already that of the first data byte, as for every segment with payload.
            let first = if seg.payload.is_empty() {
                seq.wrapping_add(1)
            } else {
                seq
            };
            match dir {
                Direction::Request => {
                    if !self.request.is_at_start(first) {
                        // A new connection on this 4-tuple (or the first sight of this one).
                        self.abort(ctx);
                        *self = Flow::new(ctx.now);
                        self.request.sync_at(first);
                    }
                }
                Direction::Response => {
                    if !self.response.is_synced() {
                        self.response.sync_at(first);
                    }
                }
            }
        }
        let len = seg.payload.len() as u32;
        if !self.tunnel && !seg.payload.is_empty() {
            self.on_payload(dir, seq, seg.payload, ctx);
        }
        if seg.flags & FIN != 0 {
            self.on_fin(dir, seq.wrapping_add(len), ctx);
        }
        self.check_holes(ctx);
        self.request.fin_seen && self.response.fin_seen
    }

    fn on_payload(&mut self, dir: Direction, seq: u32, payload: Bytes, ctx: &mut Ctx<'_>) {
        if !self.reasm(dir).is_synced() {
            let boundary = match dir {
                Direction::Request => http::is_request_start(&payload),
                Direction::Response => {
                    !self.pending.is_empty() && http::is_response_start(&payload)
                }
            };
            if !boundary {
                ctx.stats.add(Stat::BytesUnsynced, payload.len() as u64);
                return;
            }
            self.reasm(dir).sync_at(seq);
        }
        let max_ahead = ctx.limits.max_buffered_bytes_per_flow as u64;
        match self.reasm(dir).accept(seq, payload, ctx.now, max_ahead) {
            Accepted::InOrder(data) => {
                self.feed(dir, &data, ctx);
                while let Some(data) = self.reasm(dir).pop_ready() {
                    self.feed(dir, &data, ctx);
                }
            }
            Accepted::Held | Accepted::Duplicate => {}
            Accepted::TooFar(data) => {
                self.gap(dir, ctx);
                self.on_payload(dir, seq, data, ctx);
            }
        }
    }

    fn feed(&mut self, dir: Direction, data: &[u8], ctx: &mut Ctx<'_>) {
        match dir {
            Direction::Request => {
                if let Err(e) = self.req_parser.feed(data, &mut self.pending, &ctx.http) {
                    log_flow(ctx, &e);
                    ctx.stats.inc(Stat::RequestMalformed);
                    self.desync_request(ctx);
                }
            }
            Direction::Response => {
                let mut upgraded = false;
                let http = ctx.http;
                let result = self
                    .resp_parser
                    .feed(data, &mut self.pending, &http, &mut |o| {
                        upgraded |= matches!(o, Outcome::Upgraded);
                        publish(o, ctx);
                    });
                if let Err(e) = result {
                    log_flow(ctx, &e);
                    ctx.stats.inc(Stat::DiscardedMalformed);
                    self.desync_response(ctx);
                } else if upgraded {
                    self.become_tunnel();
                } else if self.resp_parser.is_stopped() {
                    self.desync_response(ctx);
                }
            }
        }
    }

    fn on_fin(&mut self, dir: Direction, seq_end: u32, ctx: &mut Ctx<'_>) {
        let reasm = self.reasm(dir);
        let synced = reasm.is_synced();
        reasm.set_fin(seq_end);
        if !synced || self.tunnel {
            return;
        }
        if !self.reasm(dir).at_end() {
            // Data before the FIN is missing: a FIN is sent last, so it is lost.
            self.gap(dir, ctx);
            return;
        }
        if dir == Direction::Response {
            let http = ctx.http;
            self.resp_parser.finish(&http, &mut |o| publish(o, ctx));
        }
    }

    /// Turns holes open longer than the reorder timeout into gaps.
    fn check_holes(&mut self, ctx: &mut Ctx<'_>) {
        for dir in [Direction::Request, Direction::Response] {
            if self
                .reasm(dir)
                .hole_age(ctx.now)
                .is_some_and(|age| age >= ctx.limits.reorder_timeout)
            {
                self.gap(dir, ctx);
            }
        }
    }

    /// Keeps the flow within its byte budget: held data becomes a gap first, then the body in
    /// progress is dropped (the response is then discarded as too large).
    fn enforce_limit(&mut self, ctx: &mut Ctx<'_>) {
        let limit = ctx.limits.max_buffered_bytes_per_flow;
        for dir in [Direction::Response, Direction::Request] {
            // Held bytes dropped by the gap are counted as unsynced.
            if self.buffered() > limit && self.reasm(dir).held_bytes() > 0 {
                self.gap(dir, ctx);
            }
        }
        if self.buffered() > limit {
            let released = self.resp_parser.drop_body();
            ctx.stats.add(Stat::BytesDropped, released as u64);
        }
    }

    /// Bytes of this direction were lost for good.
    fn gap(&mut self, dir: Direction, ctx: &mut Ctx<'_>) {
        ctx.stats.inc(Stat::Gap);
        log::debug!(
            "flow {}:{} -> {} (netns {}): gap in the {:?} stream",
            ctx.key.client.ip(),
            ctx.key.client.port(),
            ctx.key.server,
            ctx.key.netns,
            dir
        );
        match dir {
            Direction::Response => {
                if self.resp_parser.in_message() || !self.pending.is_empty() {
                    ctx.stats.inc(Stat::DiscardedGap);
                }
                ctx.stats
                    .add(Stat::BytesDropped, self.resp_parser.buffered() as u64);
                self.desync_response(ctx);
            }
            Direction::Request => {
                ctx.stats
                    .add(Stat::BytesDropped, self.req_parser.buffered() as u64);
                self.desync_request(ctx);
            }
        }
    }

    /// The response stream lost sync: forget the response in progress and the pending requests
    /// (which responses answer them is unknown now); resynchronize at a later response start.
    fn desync_response(&mut self, ctx: &mut Ctx<'_>) {
        self.resp_parser.reset();
        self.pending.clear();
        for (_, data) in self.response.unsync() {
            ctx.stats.add(Stat::BytesUnsynced, data.len() as u64);
        }
    }

    /// The request stream lost sync: requests may be missing, so responses after the one in
    /// progress cannot be matched; resynchronize at the next request line captured from now on.
    /// Held requests are dropped too: they were captured earlier, so their responses may already
    /// have passed, and queueing them now would match them to later responses.
    fn desync_request(&mut self, ctx: &mut Ctx<'_>) {
        self.req_parser.reset();
        self.pending.clear();
        self.resp_parser.stop_after_current();
        if self.resp_parser.is_stopped() {
            self.desync_response(ctx);
        }
        for (_, data) in self.request.unsync() {
            ctx.stats.add(Stat::BytesUnsynced, data.len() as u64);
        }
    }

    /// The probe skipped this direction's payload before the segment at hand: whole exchanges
    /// that were not watched GETs, not a loss. The direction restarts at that segment, a message
    /// boundary, with no gap counted and the pending requests kept (none of the skipped
    /// requests was queued).
    fn resume(&mut self, dir: Direction, ctx: &mut Ctx<'_>) {
        match dir {
            Direction::Request => {
                ctx.stats
                    .add(Stat::BytesDropped, self.req_parser.buffered() as u64);
                self.req_parser.reset();
            }
            Direction::Response => {
                if self.resp_parser.in_message() {
                    ctx.stats.inc(Stat::DiscardedTruncated);
                }
                ctx.stats
                    .add(Stat::BytesDropped, self.resp_parser.buffered() as u64);
                self.resp_parser.reset();
            }
        }
        for (_, data) in self.reasm(dir).unsync() {
            ctx.stats.add(Stat::BytesUnsynced, data.len() as u64);
        }
    }

    /// RST or a new connection on the same 4-tuple: the response in progress is cut off.
    fn abort(&mut self, ctx: &mut Ctx<'_>) {
        if self.resp_parser.in_message() {
            ctx.stats.inc(Stat::DiscardedTruncated);
        }
        ctx.stats.add(Stat::BytesDropped, self.buffered() as u64);
        self.resp_parser.reset();
        self.req_parser.reset();
        self.pending.clear();
        self.request.unsync();
        self.response.unsync();
    }

    fn become_tunnel(&mut self) {
        self.tunnel = true;
        self.pending.clear();
        self.req_parser.reset();
        self.request.unsync();
        self.response.unsync();
    }
}

fn publish(outcome: Outcome, ctx: &mut Ctx<'_>) {
    match outcome {
        Outcome::Complete(r) => {
            ctx.stats.inc(Stat::Observed);
            ctx.out.push(Exchange {
                flow: ctx.key,
                method: r.request.method,
                path: r.request.path,
                status: r.status,
                content_type: r.content_type,
                body: r.body,
                completed_at: ctx.now,
            });
        }
        Outcome::Discarded(Discard::TooLarge) => ctx.stats.inc(Stat::DiscardedTooLarge),
        Outcome::Discarded(Discard::Content(e)) => {
            log_flow(ctx, &e);
            match e {
                crate::content::ContentError::TooLarge { .. } => {
                    ctx.stats.inc(Stat::DiscardedTooLarge)
                }
                _ => ctx.stats.inc(Stat::DiscardedMalformed),
            }
        }
        Outcome::Discarded(Discard::Unmatched) => ctx.stats.inc(Stat::DiscardedUnmatched),
        Outcome::Discarded(Discard::Truncated) => ctx.stats.inc(Stat::DiscardedTruncated),
        Outcome::Upgraded => {}
    }
}

fn log_flow(ctx: &Ctx<'_>, e: &dyn std::fmt::Display) {
    log::debug!(
        "flow {}:{} -> {} (netns {}): observed message discarded: {e}",
        ctx.key.client.ip(),
        ctx.key.client.port(),
        ctx.key.server,
        ctx.key.netns
    );
}

#[cfg(test)]
mod tests;

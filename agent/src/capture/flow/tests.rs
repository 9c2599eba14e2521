//! Pure-logic tests of reassembly and HTTP parsing through the flow table.

use super::*;
use flate2::write::GzEncoder;
use proptest::prelude::*;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const ACK: u8 = 0x10;

fn key(netns: u64, client_port: u16) -> FlowKey {
    key_on(IpAddr::V4(Ipv4Addr::LOCALHOST), netns, client_port)
}

fn key_on(loopback: IpAddr, netns: u64, client_port: u16) -> FlowKey {
    FlowKey {
        netns,
        client: SocketAddr::new(loopback, client_port),
        server: SocketAddr::new(loopback, 8080),
    }
}

/// One TCP connection's two sequence spaces, producing segments as a capture would.
struct Conn {
    key: FlowKey,
    req_seq: u32,
    resp_seq: u32,
}

impl Conn {
    fn new(key: FlowKey, req_isn: u32, resp_isn: u32) -> Self {
        Self {
            key,
            req_seq: req_isn,
            resp_seq: resp_isn,
        }
    }

    fn seg(&self, direction: Direction, seq: u32, flags: u8, payload: &[u8]) -> Segment {
        Segment {
            flow: self.key,
            direction,
            seq,
            flags,
            resumed: false,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// SYN and SYN-ACK; data starts one past each ISN.
    fn handshake(&mut self) -> Vec<Segment> {
        let syn = self.seg(Direction::Request, self.req_seq, SYN, b"");
        let synack = self.seg(Direction::Response, self.resp_seq, SYN | ACK, b"");
        self.req_seq = self.req_seq.wrapping_add(1);
        self.resp_seq = self.resp_seq.wrapping_add(1);
        vec![syn, synack]
    }

    /// `data` in the given direction, cut into segments of at most `mss` bytes.
    fn send(&mut self, direction: Direction, data: &[u8], mss: usize) -> Vec<Segment> {
        let mut out = Vec::new();
        for piece in data.chunks(mss.max(1)) {
            let seq = match direction {
                Direction::Request => &mut self.req_seq,
                Direction::Response => &mut self.resp_seq,
            };
            let s = *seq;
            *seq = seq.wrapping_add(piece.len() as u32);
            out.push(self.seg(direction, s, ACK, piece));
        }
        out
    }

    /// `GET /metrics` and `response`, in segments of 1460 bytes.
    fn get_metrics(&mut self, response: &[u8]) -> Vec<Segment> {
        let mut out = self.send(Direction::Request, &get("/metrics"), 1460);
        out.extend(self.send(Direction::Response, response, 1460));
        out
    }

    fn fin(&mut self, direction: Direction) -> Segment {
        let seq = match direction {
            Direction::Request => &mut self.req_seq,
            Direction::Response => &mut self.resp_seq,
        };
        let s = *seq;
        *seq = seq.wrapping_add(1);
        self.seg(direction, s, FIN | ACK, b"")
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n").into_bytes()
}

fn response_cl(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn push_all(table: &mut FlowTable, segs: Vec<Segment>, now: Instant) -> Vec<Exchange> {
    let mut out = Vec::new();
    for s in segs {
        table.push(s, now, &mut out);
    }
    out
}

fn metrics_body(n: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for i in 0..n {
        b.extend_from_slice(format!("app_requests_total{{code=\"{i}\"}} {i}\n").as_bytes());
    }
    b
}

#[test]
fn content_length_exchange_from_handshake() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40000), 1000, 9000);
    let body = metrics_body(50);
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    segs.extend(c.send(Direction::Response, &response_cl(&body), 100));
    let out = push_all(&mut t, segs, now);
    assert_eq!(out.len(), 1);
    let x = &out[0];
    assert_eq!(x.flow, c.key);
    assert_eq!(
        (x.method.as_str(), x.path.as_str(), x.status),
        ("GET", "/metrics", 200)
    );
    assert_eq!(x.content_type.as_deref(), Some("text/plain; version=0.0.4"));
    assert_eq!(&x.body[..], &body[..]);
    assert_eq!(t.stats().responses_observed, 1);
    assert_eq!(
        t.buffered_bytes(),
        0,
        "nothing stays buffered between messages"
    );
}

#[test]
fn syn_with_data_carries_the_first_data_byte_number() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40020), 500, 600);
    // TCP Fast Open: the request rides on the SYN; as captured, `seq` is its first byte's.
    let req = get("/metrics");
    let syn = c.seg(Direction::Request, 501, SYN, &req);
    c.req_seq = 501 + req.len() as u32;
    let synack = c.seg(Direction::Response, 600, SYN | ACK, b"");
    c.resp_seq = 601;
    let mut segs = vec![syn, synack];
    segs.extend(c.send(Direction::Response, &response_cl(b"tfo"), 1460));
    let out = push_all(&mut t, segs, now);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].body[..], b"tfo");
}

#[test]
fn keep_alive_three_responses_content_length_chunked_gzip() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40001), 5, 7);
    let bodies = [metrics_body(3), metrics_body(40), metrics_body(400)];
    let mut segs = c.handshake();
    // 1: Content-Length.
    segs.extend(c.send(Direction::Request, &get("/metrics?a=1"), 1460));
    segs.extend(c.send(Direction::Response, &response_cl(&bodies[0]), 7));
    // 2: chunked with an extension and trailers.
    segs.extend(c.send(Direction::Request, &get("/other"), 1460));
    let mut r2 =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
            .to_vec();
    for piece in bodies[1].chunks(333) {
        r2.extend_from_slice(format!("{:x};ext=\"v\"\r\n", piece.len()).as_bytes());
        r2.extend_from_slice(piece);
        r2.extend_from_slice(b"\r\n");
    }
    r2.extend_from_slice(b"0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n");
    segs.extend(c.send(Direction::Response, &r2, 50));
    // 3: gzip, Content-Length of the encoded body.
    segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    let gz = gzip(&bodies[2]);
    let mut r3 = format!(
        "HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\nCONTENT-LENGTH: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    r3.extend_from_slice(&gz);
    segs.extend(c.send(Direction::Response, &r3, 1000));
    let out = push_all(&mut t, segs, now);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].path, "/metrics?a=1");
    assert_eq!(out[1].path, "/other");
    assert_eq!(out[2].path, "/metrics");
    for (x, body) in out.iter().zip(&bodies) {
        assert_eq!(&x.body[..], &body[..]);
    }
    assert_eq!(t.stats().responses_observed, 3);
}

#[test]
fn chunked_sizes_split_across_segments() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40002), 0, 0);
    let body = metrics_body(30);
    let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(17) {
        r.extend_from_slice(format!("{:X}\r\n", piece.len()).as_bytes());
        r.extend_from_slice(piece);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/metrics"), 3));
    // One byte per segment: every state boundary falls between segments.
    segs.extend(c.send(Direction::Response, &r, 1));
    let out = push_all(&mut t, segs, now);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].body[..], &body[..]);
}

#[test]
fn close_delimited_ends_at_fin() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40003), 100, 200);
    let body = metrics_body(20);
    let mut r = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    r.extend_from_slice(&body);
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    segs.extend(c.send(Direction::Response, &r, 64));
    let out = push_all(&mut t, segs, now);
    assert!(out.is_empty(), "no end without the FIN");
    let out = push_all(
        &mut t,
        vec![c.fin(Direction::Response), c.fin(Direction::Request)],
        now,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].body[..], &body[..]);
    assert_eq!(t.flow_count(), 0, "FIN both ways ends the flow");
}

#[test]
fn content_length_cut_by_fin_is_truncated() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40004), 1, 1);
    let mut r = response_cl(&metrics_body(10));
    r.truncate(r.len() - 5);
    let mut segs = c.handshake();
    segs.extend(c.get_metrics(&r));
    segs.push(c.fin(Direction::Response));
    let out = push_all(&mut t, segs, now);
    assert!(out.is_empty());
    assert_eq!(t.stats().responses_discarded_truncated, 1);
}

#[test]
fn head_204_304_and_interim_responses_have_no_body() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40005), 1, 1);
    let body = metrics_body(5);
    let mut segs = c.handshake();
    segs.extend(c.send(
        Direction::Request,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        1460,
    ));
    segs.extend(c.send(
        Direction::Response,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        1460,
    ));
    segs.extend(c.send(Direction::Request, &get("/a"), 1460));
    segs.extend(c.send(
        Direction::Response,
        b"HTTP/1.1 204 No Content\r\n\r\n",
        1460,
    ));
    segs.extend(c.send(Direction::Request, &get("/b"), 1460));
    segs.extend(c.send(
        Direction::Response,
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        1460,
    ));
    segs.extend(c.send(
        Direction::Request,
        b"POST /c HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        4,
    ));
    let mut r =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n".to_vec();
    r.extend_from_slice(&response_cl(&body));
    segs.extend(c.send(Direction::Response, &r, 9));
    let out = push_all(&mut t, segs, now);
    let got: Vec<(&str, &str, u16, usize)> = out
        .iter()
        .map(|x| (x.method.as_str(), x.path.as_str(), x.status, x.body.len()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("HEAD", "/metrics", 200, 0),
            ("GET", "/a", 204, 0),
            ("GET", "/b", 304, 0),
            ("POST", "/c", 200, body.len()),
        ]
    );
}

#[test]
fn pipelined_requests_match_fifo() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40006), 1, 1);
    let mut reqs = get("/one");
    reqs.extend(get("/two"));
    reqs.extend(get("/three"));
    let mut resps = Vec::new();
    for b in [b"1".as_slice(), b"22", b"333"] {
        resps.extend(response_cl(b));
    }
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &reqs, 1460));
    segs.extend(c.send(Direction::Response, &resps, 1460));
    let out = push_all(&mut t, segs, now);
    let got: Vec<(&str, &[u8])> = out.iter().map(|x| (x.path.as_str(), &x.body[..])).collect();
    assert_eq!(
        got,
        vec![
            ("/one", &b"1"[..]),
            ("/two", &b"22"[..]),
            ("/three", &b"333"[..])
        ]
    );
}

#[test]
fn mid_connection_start_resyncs_at_next_request() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    // No handshake: loupe starts while a keep-alive connection is mid-response.
    let mut c = Conn::new(key(1, 40007), 77_000, 88_000);
    let old = response_cl(&metrics_body(100));
    let mut segs = c.send(Direction::Response, &old[old.len() / 2..], 500);
    let body = metrics_body(60);
    segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    segs.extend(c.send(Direction::Response, &response_cl(&body), 700));
    let out = push_all(&mut t, segs, now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].path, "/metrics");
    assert_eq!(&out[0].body[..], &body[..]);
    assert!(t.stats().bytes_unsynced > 0, "the old tail was skipped");
    assert_eq!(t.stats().responses_discarded_malformed, 0);
}

#[test]
fn mid_connection_start_mid_request_waits_for_the_next_one() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40008), 1, 1);
    // The capture starts inside a request's head: that request and its response are skipped.
    let req = get("/first");
    let mut segs = c.send(Direction::Request, &req, 10);
    segs.remove(0);
    segs.extend(c.send(Direction::Response, &response_cl(b"first"), 1460));
    segs.extend(c.send(Direction::Request, &get("/second"), 1460));
    segs.extend(c.send(Direction::Response, &response_cl(b"second"), 1460));
    let out = push_all(&mut t, segs, now);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].path.as_str(), &out[0].body[..]),
        ("/second", &b"second"[..])
    );
}

#[test]
fn gap_discards_the_response_and_the_flow_resyncs() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40009), 1, 1);
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    let mut resp = c.send(Direction::Response, &response_cl(&metrics_body(200)), 512);
    resp.remove(resp.len() / 2);
    segs.extend(resp);
    let out = push_all(&mut t, segs, now);
    assert!(out.is_empty());
    assert!(t.buffered_bytes() > 0, "data beyond the hole is held");
    // The hole never fills: after the reorder timeout it is a gap.
    t.expire(now + Duration::from_secs(2));
    assert_eq!(t.stats().gaps, 1);
    assert_eq!(t.stats().responses_discarded_gap, 1);
    assert_eq!(t.buffered_bytes(), 0);
    // Keep-alive: the next exchange on the same connection is observed again.
    let later = now + Duration::from_secs(3);
    let body = metrics_body(10);
    let mut segs = c.send(Direction::Request, &get("/metrics"), 1460);
    segs.extend(c.send(Direction::Response, &response_cl(&body), 100));
    let out = push_all(&mut t, segs, later);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].body[..], &body[..]);
}

/// The probe copies only watched GETs: on a keep-alive flow the other exchanges are skipped,
/// and the next copied segment of each direction comes marked `resumed`. The jump in sequence
/// numbers is then no loss: no gap, nothing discarded, and the FIN after a skipped exchange
/// closes the flow.
#[test]
fn resumed_segments_jump_skipped_exchanges_without_a_gap() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40030), 100, 200);
    // No SYN: the probe sends a flow's records from its first watched GET on.
    c.req_seq = 101;
    c.resp_seq = 201;
    let first = metrics_body(5);
    let mut segs = c.get_metrics(&response_cl(&first));
    // An API exchange the probe skipped: only the sequence numbers move.
    c.req_seq += 300;
    c.resp_seq += 5000;
    let second = metrics_body(7);
    let mut resumed = c.get_metrics(&response_cl(&second));
    let first_response = resumed
        .iter()
        .position(|s| s.direction == Direction::Response)
        .unwrap();
    resumed[0].resumed = true;
    resumed[first_response].resumed = true;
    segs.extend(resumed);
    // Another skipped exchange, then both FINs, marked too.
    c.req_seq += 80;
    c.resp_seq += 90;
    let mut fin_request = c.fin(Direction::Request);
    let mut fin_response = c.fin(Direction::Response);
    fin_request.resumed = true;
    fin_response.resumed = true;
    segs.extend([fin_request, fin_response]);

    let out = push_all(&mut t, segs, now);
    assert_eq!(out.len(), 2);
    assert_eq!(&out[0].body[..], &first[..]);
    assert_eq!(&out[1].body[..], &second[..]);
    let stats = t.stats();
    assert_eq!(
        (
            stats.gaps,
            stats.responses_discarded_gap,
            stats.bytes_unsynced
        ),
        (0, 0, 0)
    );
    assert_eq!(t.flow_count(), 0);
    assert_eq!(t.buffered_bytes(), 0);

    // Without the mark the same jump is a gap: the probe's mark is what tells them apart.
    let mut t = FlowTable::default();
    let mut c = Conn::new(key(1, 40031), 100, 200);
    c.req_seq = 101;
    c.resp_seq = 201;
    let mut segs = c.get_metrics(&response_cl(&first));
    c.req_seq += 300;
    segs.push(c.fin(Direction::Request));
    push_all(&mut t, segs, now);
    assert_eq!(t.stats().gaps, 1);
}

#[test]
fn lost_tail_then_fin_is_a_gap() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40010), 1, 1);
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    let mut resp = c.send(Direction::Response, &response_cl(&metrics_body(50)), 256);
    resp.pop();
    segs.extend(resp);
    segs.push(c.fin(Direction::Response));
    let out = push_all(&mut t, segs, now);
    assert!(out.is_empty());
    assert_eq!(t.stats().gaps, 1);
    assert_eq!(t.stats().responses_discarded_gap, 1);
}

#[test]
fn lost_request_segment_unsyncs_the_response_stream() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40011), 1, 1);
    let mut segs = c.handshake();
    // Request 1 lost entirely. A client that does not pipeline sees its response first, then
    // sends request 2 (held behind the hole) and gets its response: neither response may be
    // matched to a request it does not answer.
    let lost = c.send(Direction::Request, &get("/lost"), 1460);
    drop(lost);
    segs.extend(c.send(Direction::Response, &response_cl(b"for /lost"), 1460));
    segs.extend(c.send(Direction::Request, &get("/second"), 1460));
    segs.extend(c.send(Direction::Response, &response_cl(b"for /second"), 1460));
    let out = push_all(&mut t, segs, now);
    assert!(out.is_empty());
    assert_eq!(t.stats().responses_discarded_unmatched, 2);
    t.expire(now + Duration::from_secs(2));
    assert_eq!(t.stats().gaps, 1);
    let later = now + Duration::from_secs(2);
    let mut segs = c.send(Direction::Request, &get("/third"), 1460);
    segs.extend(c.send(Direction::Response, &response_cl(b"for /third"), 1460));
    let out = push_all(&mut t, segs, later);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].path.as_str(), &out[0].body[..]),
        ("/third", &b"for /third"[..])
    );
}

#[test]
fn sequence_numbers_wrap_at_two_to_the_32() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40012), u32::MAX - 20, u32::MAX - 100);
    let body = metrics_body(40);
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/metrics"), 8));
    let mut resp = c.send(Direction::Response, &response_cl(&body), 37);
    resp.swap(1, 3);
    resp.swap(2, 5);
    segs.extend(resp);
    let out = push_all(&mut t, segs, now);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].body[..], &body[..]);
}

#[test]
fn malformed_response_is_counted_and_the_flow_resyncs() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40013), 1, 1);
    let mut segs = c.handshake();
    segs.extend(c.get_metrics(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nbody"));
    segs.extend(c.get_metrics(&response_cl(b"good")));
    let out = push_all(&mut t, segs, now);
    assert_eq!(t.stats().responses_discarded_malformed, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].body[..], b"good");
}

#[test]
fn garbage_instead_of_http_is_malformed() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40014), 1, 1);
    let mut segs = c.handshake();
    segs.extend(c.get_metrics(b"\x00\x01garbage\r\n\r\n"));
    let out = push_all(&mut t, segs, now);
    assert!(out.is_empty());
    assert_eq!(t.stats().responses_discarded_malformed, 1);
}

#[test]
fn bad_chunked_coding_and_bad_gzip_are_malformed() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40015), 1, 1);
    let mut segs = c.handshake();
    segs.extend(c.get_metrics(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"));
    segs.extend(c.get_metrics(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope",
    ));
    // Framing was fine, so the flow stays in sync for the next one.
    segs.extend(c.get_metrics(&response_cl(b"ok")));
    let out = push_all(&mut t, segs, now);
    assert_eq!(t.stats().responses_discarded_malformed, 2);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].body[..], b"ok");
}

#[test]
fn decompression_bomb_is_discarded_and_counted() {
    let limits = FlowLimits {
        max_body_bytes: 64 << 10,
        ..FlowLimits::default()
    };
    let mut t = FlowTable::new(limits);
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40016), 1, 1);
    let gz = gzip(&vec![b'a'; 10 << 20]);
    assert!(gz.len() < limits.max_body_bytes, "the encoded body fits");
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    r.extend_from_slice(&gz);
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    segs.extend(c.send(Direction::Response, &r, 4096));
    let out = push_all(&mut t, segs, now);
    assert!(out.is_empty());
    assert_eq!(t.stats().responses_discarded_too_large, 1);
}

#[test]
fn body_over_the_limit_is_discarded_and_the_flow_stays_in_sync() {
    let limits = FlowLimits {
        max_body_bytes: 1000,
        ..FlowLimits::default()
    };
    let mut t = FlowTable::new(limits);
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40017), 1, 1);
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'x'; 0x200]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/big"), 1460));
    segs.extend(c.send(Direction::Response, &response_cl(&[b'y'; 5000]), 1460));
    segs.extend(c.send(Direction::Request, &get("/bigchunked"), 1460));
    segs.extend(c.send(Direction::Response, &chunked, 1460));
    segs.extend(c.send(Direction::Request, &get("/small"), 1460));
    segs.extend(c.send(Direction::Response, &response_cl(b"fits"), 1460));
    let out = push_all(&mut t, segs, now);
    assert_eq!(t.stats().responses_discarded_too_large, 2);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].path, "/small");
}

#[test]
fn oversized_head_is_malformed() {
    let limits = FlowLimits {
        max_header_bytes: 256,
        ..FlowLimits::default()
    };
    let mut t = FlowTable::new(limits);
    let now = Instant::now();
    let mut c = Conn::new(key(1, 40018), 1, 1);
    let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..40 {
        r.extend_from_slice(format!("X-Header-{i}: some value\r\n").as_bytes());
    }
    r.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    segs.extend(c.send(Direction::Response, &r, 100));
    let out = push_all(&mut t, segs, now);
    assert!(out.is_empty());
    assert_eq!(t.stats().responses_discarded_malformed, 1);
    assert!(t.buffered_bytes() <= 256);
}

#[test]
fn flow_count_limit_evicts_the_least_recent() {
    let limits = FlowLimits {
        max_flows: 2,
        ..FlowLimits::default()
    };
    let mut t = FlowTable::new(limits);
    let now = Instant::now();
    let mut conns: Vec<Conn> = (0..3).map(|i| Conn::new(key(1, 41000 + i), 1, 1)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let segs = c.handshake();
        push_all(&mut t, segs, now + Duration::from_millis(i as u64));
    }
    assert_eq!(t.flow_count(), 2);
    assert_eq!(t.stats().flows_evicted, 1);
    // The evicted (oldest) flow no longer completes; the newest does.
    let later = now + Duration::from_millis(10);
    let mut segs = conns[0].send(Direction::Request, b"GE", 1460);
    segs.extend(conns[2].send(Direction::Request, &get("/metrics"), 1460));
    segs.extend(conns[2].send(Direction::Response, &response_cl(b"ok"), 1460));
    let out = push_all(&mut t, segs, later);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flow, conns[2].key);
}

#[test]
fn a_namespace_flooding_the_table_loses_its_own_flows_not_a_quiet_ones() {
    let limits = FlowLimits {
        max_flows: 3,
        max_buffered_bytes_total: 10_000,
        ..FlowLimits::default()
    };
    let mut t = FlowTable::new(limits);
    let now = Instant::now();
    // The quiet pod (namespace 1): one scrape in progress, least recently active of all.
    let mut quiet = Conn::new(key(1, 44000), 1, 1);
    let mut segs = quiet.handshake();
    segs.extend(quiet.send(Direction::Request, &get("/metrics"), 1460));
    let reply = response_cl(&[b'q'; 3000]);
    segs.extend(quiet.send(Direction::Response, &reply[..1000], 1000));
    push_all(&mut t, segs, now);
    // The flooder (namespace 2): new connections, then large replies in progress.
    for i in 0..6u16 {
        let mut c = Conn::new(key(2, 45000 + i), 1, 1);
        let mut segs = c.handshake();
        segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
        let big = response_cl(&[b'f'; 20_000]);
        segs.extend(c.send(Direction::Response, &big[..6000], 1000));
        push_all(&mut t, segs, now + Duration::from_millis(1 + u64::from(i)));
    }
    assert!(t.stats().flows_evicted >= 4, "{:?}", t.stats());
    assert!(t.buffered_bytes() <= 10_000);
    // The quiet pod's scrape completes.
    let rest = quiet.send(Direction::Response, &reply[1000..], 1000);
    let out = push_all(&mut t, rest, now + Duration::from_millis(10));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flow, quiet.key);
}

#[test]
fn total_memory_limit_evicts_and_counts_bytes() {
    let limits = FlowLimits {
        max_buffered_bytes_total: 10_000,
        ..FlowLimits::default()
    };
    let mut t = FlowTable::new(limits);
    let now = Instant::now();
    let mut a = Conn::new(key(1, 42000), 1, 1);
    let mut b = Conn::new(key(1, 42001), 1, 1);
    let mut segs = a.handshake();
    segs.extend(a.send(Direction::Request, &get("/metrics"), 1460));
    segs.extend(a.send(
        Direction::Response,
        &response_cl(&[b'a'; 20_000])[..8000],
        1000,
    ));
    push_all(&mut t, segs, now);
    assert!(t.buffered_bytes() >= 7000);
    let later = now + Duration::from_millis(1);
    let mut segs = b.handshake();
    segs.extend(b.send(Direction::Request, &get("/metrics"), 1460));
    segs.extend(b.send(
        Direction::Response,
        &response_cl(&[b'b'; 20_000])[..6000],
        1000,
    ));
    push_all(&mut t, segs, later);
    assert!(t.buffered_bytes() <= 10_000);
    assert_eq!(t.stats().flows_evicted, 1);
    assert_eq!(t.stats().responses_discarded_gap, 1);
    assert!(t.stats().bytes_dropped >= 7000);
    assert_eq!(t.flow_count(), 1);
}

#[test]
fn per_flow_limit_turns_held_data_into_a_gap() {
    let limits = FlowLimits {
        max_buffered_bytes_per_flow: 4096,
        ..FlowLimits::default()
    };
    let mut t = FlowTable::new(limits);
    let now = Instant::now();
    let mut c = Conn::new(key(1, 43000), 1, 1);
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    let mut resp = c.send(Direction::Response, &response_cl(&metrics_body(500)), 1000);
    resp.remove(1);
    segs.extend(resp);
    let out = push_all(&mut t, segs, now);
    assert!(out.is_empty());
    assert_eq!(t.stats().gaps, 1);
    assert_eq!(t.stats().responses_discarded_gap, 1);
    assert!(t.buffered_bytes() <= 4096);
}

#[test]
fn idle_flows_expire_and_count_truncated_responses() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 44000), 1, 1);
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    segs.extend(c.send(
        Direction::Response,
        &response_cl(&[b'z'; 3000])[..1000],
        1460,
    ));
    push_all(&mut t, segs, now);
    t.expire(now + Duration::from_secs(30));
    assert_eq!(t.flow_count(), 1);
    t.expire(now + Duration::from_secs(61));
    assert_eq!(t.flow_count(), 0);
    assert_eq!(t.buffered_bytes(), 0);
    assert_eq!(t.stats().flows_expired, 1);
    assert_eq!(t.stats().responses_discarded_truncated, 1);
}

#[test]
fn rst_drops_the_flow() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 44001), 1, 1);
    let mut segs = c.handshake();
    segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    segs.extend(c.send(
        Direction::Response,
        &response_cl(&[b'z'; 3000])[..1000],
        1460,
    ));
    let rst = c.seg(Direction::Response, c.resp_seq, RST, b"");
    segs.push(rst);
    let out = push_all(&mut t, segs, now);
    assert!(out.is_empty());
    assert_eq!(t.flow_count(), 0);
    assert_eq!(t.buffered_bytes(), 0);
    assert_eq!(t.stats().responses_discarded_truncated, 1);
}

#[test]
fn ipv4_and_ipv6_flows_with_the_same_ports_stay_apart() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut v4 = Conn::new(key(1, 47000), 1, 1);
    let mut v6 = Conn::new(key_on(IpAddr::V6(Ipv6Addr::LOCALHOST), 1, 47000), 1, 1);
    assert_ne!(v4.key, v6.key);
    let (body4, body6) = (metrics_body(30), metrics_body(70));
    let mut segs = Vec::new();
    for c in [&mut v4, &mut v6] {
        segs.extend(c.handshake());
        segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
    }
    // Interleaved responses with the same sequence numbers: only the key tells them apart.
    let r4 = v4.send(Direction::Response, &response_cl(&body4), 500);
    let r6 = v6.send(Direction::Response, &response_cl(&body6), 500);
    for i in 0..r4.len().max(r6.len()) {
        segs.extend(r4.get(i).cloned());
        segs.extend(r6.get(i).cloned());
    }
    let out = push_all(&mut t, segs, now);
    assert_eq!(out.len(), 2);
    let of = |key: FlowKey| {
        out.iter()
            .find(|x| x.flow == key)
            .unwrap_or_else(|| panic!("no exchange on {key:?}"))
    };
    assert_eq!(&of(v4.key).body[..], &body4[..]);
    assert_eq!(&of(v6.key).body[..], &body6[..]);
    assert_eq!(of(v6.key).flow.server, "[::1]:8080".parse().unwrap());
}

#[test]
fn remove_netns_forgets_its_flows_only() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut a = Conn::new(key(7, 45000), 1, 1);
    let mut b = Conn::new(key(8, 45000), 1, 1);
    for c in [&mut a, &mut b] {
        let mut segs = c.handshake();
        segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
        segs.extend(c.send(Direction::Response, &response_cl(&[b'q'; 500])[..100], 1460));
        push_all(&mut t, segs, now);
    }
    assert_eq!(t.flow_count(), 2);
    t.remove_netns(7);
    assert_eq!(t.flow_count(), 1);
    let out = push_all(
        &mut t,
        b.send(Direction::Response, &response_cl(&[b'q'; 500])[100..], 1460),
        now,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flow.netns, 8);
    assert_eq!(t.buffered_bytes(), 0);
}

#[test]
fn upgraded_connection_is_ignored() {
    let mut t = FlowTable::default();
    let now = Instant::now();
    let mut c = Conn::new(key(1, 46000), 1, 1);
    let mut segs = c.handshake();
    segs.extend(c.send(
        Direction::Request,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        1460,
    ));
    segs.extend(c.send(
        Direction::Response,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        1460,
    ));
    segs.extend(c.send(
        Direction::Response,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        1460,
    ));
    let out = push_all(&mut t, segs, now);
    assert!(out.is_empty());
    assert_eq!(t.stats().responses_discarded_malformed, 0);
    assert_eq!(t.buffered_bytes(), 0);
}

/// Delivery order for a response cut into `cuts`: each segment, some twice, plus overlapping
/// re-sends of arbitrary ranges, then shuffled.
fn delivery(
    data_len: usize,
    cuts: &[usize],
    dups: &[bool],
    overlaps: &[(usize, usize)],
    order: &[usize],
) -> Vec<(usize, usize)> {
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % data_len.max(1)).collect();
    bounds.push(0);
    bounds.push(data_len);
    bounds.sort_unstable();
    bounds.dedup();
    let mut pieces: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
    let originals = pieces.len();
    for i in 0..originals {
        if dups.get(i).copied().unwrap_or(false) {
            pieces.push(pieces[i]);
        }
    }
    for &(a, len) in overlaps {
        let start = a % data_len.max(1);
        let end = (start + 1 + len).min(data_len);
        pieces.push((start, end));
    }
    // A permutation driven by `order`: Fisher-Yates with the given draws.
    for i in (1..pieces.len()).rev() {
        let j = order.get(i).copied().unwrap_or(0) % (i + 1);
        pieces.swap(i, j);
    }
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn reassembles_exactly_despite_duplicates_overlaps_and_reordering(
        body in proptest::collection::vec(any::<u8>(), 0..20_000),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
        dups in proptest::collection::vec(any::<bool>(), 0..40),
        overlaps in proptest::collection::vec((any::<usize>(), 0usize..3000), 0..10),
        order in proptest::collection::vec(any::<usize>(), 0..100),
        resp_isn in any::<u32>(),
        chunked in any::<bool>(),
    ) {
        let mut t = FlowTable::default();
        let now = Instant::now();
        let mut c = Conn::new(key(1, 50000), 12345, resp_isn);
        let mut segs = c.handshake();
        segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
        let data = if chunked {
            let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for piece in body.chunks(4000) {
                r.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                r.extend_from_slice(piece);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        } else {
            response_cl(&body)
        };
        let base = c.resp_seq;
        for (a, b) in delivery(data.len(), &cuts, &dups, &overlaps, &order) {
            segs.push(c.seg(Direction::Response, base.wrapping_add(a as u32), ACK, &data[a..b]));
        }
        let out = push_all(&mut t, segs, now);
        prop_assert_eq!(out.len(), 1);
        prop_assert_eq!(&out[0].body[..], &body[..]);
        prop_assert_eq!(t.stats().gaps, 0);
        prop_assert_eq!(t.buffered_bytes(), 0);
    }

    #[test]
    fn one_lost_segment_never_yields_a_torn_body(
        body in proptest::collection::vec(any::<u8>(), 100..20_000),
        cuts in proptest::collection::vec(any::<usize>(), 2..40),
        dups in proptest::collection::vec(any::<bool>(), 0..40),
        order in proptest::collection::vec(any::<usize>(), 0..100),
        lost in any::<usize>(),
        resp_isn in any::<u32>(),
    ) {
        let mut t = FlowTable::default();
        let now = Instant::now();
        let mut c = Conn::new(key(1, 50001), 999, resp_isn);
        let mut segs = c.handshake();
        segs.extend(c.send(Direction::Request, &get("/metrics"), 1460));
        let data = response_cl(&body);
        let mut bounds: Vec<usize> = cuts.iter().map(|x| x % data.len()).collect();
        bounds.extend([0, data.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        let pieces: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
        prop_assume!(pieces.len() >= 3);
        let lost = 1 + lost % (pieces.len() - 2);
        let lost_range = pieces[lost];
        let base = c.resp_seq;
        for (a, b) in delivery(data.len(), &cuts, &dups, &[], &order) {
            if (a, b) == lost_range {
                continue;
            }
            segs.push(c.seg(Direction::Response, base.wrapping_add(a as u32), ACK, &data[a..b]));
        }
        c.resp_seq = base.wrapping_add(data.len() as u32);
        segs.push(c.fin(Direction::Response));
        let out = push_all(&mut t, segs, now);
        prop_assert!(out.is_empty(), "a response with a gap must not be published");
        prop_assert_eq!(t.stats().responses_discarded_gap, 1);
        prop_assert!(t.stats().gaps >= 1);
        prop_assert_eq!(t.stats().responses_observed, 0);
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Length,
    Chunked,
    Gzip,
}

fn encode(kind: Kind, body: &[u8]) -> Vec<u8> {
    match kind {
        Kind::Length => response_cl(body),
        Kind::Chunked => {
            let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for piece in body.chunks(1000) {
                r.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                r.extend_from_slice(piece);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        }
        Kind::Gzip => {
            let gz = gzip(body);
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                gz.len()
            )
            .into_bytes();
            r.extend_from_slice(&gz);
            r
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn keep_alive_exchanges_come_out_in_order(
        exchanges in proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..5000),
                prop_oneof![Just(Kind::Length), Just(Kind::Chunked), Just(Kind::Gzip)],
                1usize..2000,
            ),
            1..5,
        ),
        close_delimited_last in proptest::collection::vec(any::<u8>(), 0..3000),
        isns in (any::<u32>(), any::<u32>()),
    ) {
        let mut t = FlowTable::default();
        let now = Instant::now();
        let mut c = Conn::new(key(1, 50002), isns.0, isns.1);
        let mut segs = c.handshake();
        for (i, (body, kind, mss)) in exchanges.iter().enumerate() {
            segs.extend(c.send(Direction::Request, &get(&format!("/r{i}")), 1460));
            segs.extend(c.send(Direction::Response, &encode(*kind, body), *mss));
        }
        segs.extend(c.send(Direction::Request, &get("/last"), 1460));
        let mut last = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        last.extend_from_slice(&close_delimited_last);
        segs.extend(c.send(Direction::Response, &last, 777));
        segs.push(c.fin(Direction::Response));
        segs.push(c.fin(Direction::Request));
        let out = push_all(&mut t, segs, now);
        prop_assert_eq!(out.len(), exchanges.len() + 1);
        for (i, (x, (body, _, _))) in out.iter().zip(&exchanges).enumerate() {
            prop_assert_eq!(&x.path, &format!("/r{i}"));
            prop_assert_eq!(&x.body[..], &body[..]);
        }
        prop_assert_eq!(&out[exchanges.len()].body[..], &close_delimited_last[..]);
        prop_assert_eq!(t.flow_count(), 0);
        prop_assert_eq!(t.buffered_bytes(), 0);
    }

    /// Arbitrary segments (garbage, random flags and numbers, several flows) never panic and
    /// never break the byte accounting or the limits.
    #[test]
    fn arbitrary_segments_keep_accounting_and_limits(
        segs in proptest::collection::vec(
            (
                0u16..4,
                any::<bool>(),
                any::<u32>(),
                any::<u8>(),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..600),
                    Just(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
                    Just(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
                    Just(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel".to_vec()),
                ],
                0u64..3000,
            ),
            0..200,
        ),
    ) {
        let limits = FlowLimits {
            max_flows: 3,
            max_buffered_bytes_per_flow: 2000,
            max_buffered_bytes_total: 3000,
            max_body_bytes: 1000,
            max_header_bytes: 500,
            ..FlowLimits::default()
        };
        let mut t = FlowTable::new(limits);
        let start = Instant::now();
        let mut out = Vec::new();
        for (port, request, seq, flags, payload, millis) in segs {
            let seg = Segment {
                flow: key(1, 50100 + port),
                direction: if request { Direction::Request } else { Direction::Response },
                seq,
                flags,
                resumed: false,
                payload: Bytes::from(payload),
            };
            let now = start + Duration::from_millis(millis);
            t.push(seg, now, &mut out);
            prop_assert_eq!(t.buffered_bytes(), t.recount());
            prop_assert!(t.buffered_bytes() <= limits.max_buffered_bytes_total);
            prop_assert!(t.flow_count() <= limits.max_flows);
            if millis % 7 == 0 {
                t.expire(now);
                prop_assert_eq!(t.buffered_bytes(), t.recount());
            }
        }
        for x in &out {
            prop_assert!(x.body.len() <= limits.max_body_bytes);
        }
    }
}

#[test]
fn flows_hold_a_quarter_of_the_memory_budget_and_one_flow_at_most_one_keepable_body() {
    let limits = FlowLimits::within(&Budget::new(128 << 20), 64 << 20);
    assert_eq!(limits.max_buffered_bytes_total, 32 << 20);
    assert_eq!(limits.max_buffered_bytes_per_flow, 32 << 20);
    assert_eq!(limits.max_body_bytes, 32 << 20);
    // A roomy budget leaves the defaults; no budget too.
    let roomy = FlowLimits::within(&Budget::new(16 << 30), 64 << 20);
    assert_eq!(
        roomy.max_buffered_bytes_total,
        FlowLimits::default().max_buffered_bytes_total
    );
    assert_eq!(roomy.max_body_bytes, 64 << 20);
    let none = FlowLimits::within(&Budget::default(), 1 << 20);
    assert_eq!(
        none.max_buffered_bytes_total,
        FlowLimits::default().max_buffered_bytes_total
    );
    assert_eq!(none.max_body_bytes, 1 << 20);
}

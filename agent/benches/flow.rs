//! Throughput of flow reassembly plus HTTP parsing for a large observed metrics reply, the
//! shape of the 20 MB exposition case: one request, one response cut into 4 KiB records as the
//! eBPF probe emits them. The body is the test app's, at just over 20 MiB.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use loupe_agent::capture::flow::FlowTable;
use loupe_agent::capture::{Direction, FlowKey, Segment};
use loupe_testkit::bodies::{body, Spec};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

const RECORD: usize = 4096;
/// Series of the test app's body that make it just over 20 MiB.
const SERIES: usize = 163_200;

fn segments(chunked: bool) -> Vec<Segment> {
    let flow = FlowKey {
        netns: 1,
        client: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
        server: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
    };
    let body = body(&Spec::app(SERIES)).into_bytes();
    assert!(body.len() >= 20 << 20, "{} bytes", body.len());
    let mut resp = Vec::with_capacity(body.len() + 100_000);
    if chunked {
        resp.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for piece in body.chunks(8000) {
            resp.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            resp.extend_from_slice(piece);
            resp.extend_from_slice(b"\r\n");
        }
        resp.extend_from_slice(b"0\r\n\r\n");
    } else {
        resp.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
        );
        resp.extend_from_slice(&body);
    }
    let resp = Bytes::from(resp);
    let seg = |direction, seq: u32, flags, payload| Segment {
        flow,
        direction,
        seq,
        flags,
        resumed: false,
        payload,
    };
    let mut out = vec![
        seg(Direction::Request, 99, 0x02, Bytes::new()),
        seg(Direction::Response, 999, 0x12, Bytes::new()),
        seg(
            Direction::Request,
            100,
            0x18,
            Bytes::from_static(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ),
    ];
    for off in (0..resp.len()).step_by(RECORD) {
        let end = (off + RECORD).min(resp.len());
        out.push(seg(
            Direction::Response,
            1000u32.wrapping_add(off as u32),
            0x10,
            resp.slice(off..end),
        ));
    }
    out
}

fn reassemble_20mb(c: &mut Criterion) {
    let mut group = c.benchmark_group("flow");
    group.sample_size(10);
    for (name, chunked) in [("content_length_20mb", false), ("chunked_20mb", true)] {
        let segs = segments(chunked);
        let bytes: usize = segs.iter().map(|s| s.payload.len()).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(name, |b| {
            b.iter_batched(
                || segs.clone(),
                |segs| {
                    let mut table = FlowTable::default();
                    let mut out = Vec::new();
                    let now = Instant::now();
                    for s in segs {
                        table.push(s, now, &mut out);
                    }
                    assert_eq!(out.len(), 1);
                    out
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, reassemble_20mb);
criterion_main!(benches);

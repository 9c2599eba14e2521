//! The capture probe against the real kernel: network namespaces made with `ip netns`, the eBPF
//! program attached on their `lo`, real TCP traffic inside them. Needs root and a BPF-capable
//! kernel; skips otherwise (fails instead when `CI=true`).
//!
//! Most tests use the method the kernel offers (`LOUPE_PROBE_METHOD`, default auto); the
//! `per_namespace_*` tests force the per-namespace method that older kernels (5.10 to 6.13) get,
//! so it is tested on this kernel too. Running the whole file with
//! `LOUPE_PROBE_METHOD=per-namespace LOUPE_NETNS_IDENTITY=inode` runs every test the way a 5.10
//! kernel (no netns cookie helper, no `SO_NETNS_COOKIE`) does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aya::programs::{SchedClassifier, TcAttachType};
use loupe_agent::capture::flow::{FlowLimits, FlowTable};
use loupe_agent::capture::probe::{
    AttachMode, AttachedVia, MethodChoice, OwnFlows, Probe, ProbeConfig, ProbeMethod,
    SegmentStream, CAPTURE_PROGRAM_NAMES, METHOD_ENV, RINGBUF_DROPPED_EVENTS,
    STALE_FILTERS_REMOVED,
};
use loupe_agent::capture::{Direction, Segment};
use loupe_agent::resolve::netns::Netns;
use loupe_testkit::root;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TCP_FIN: u8 = 0x01;
const CHILD_NETNS_VAR: &str = "LOUPE_PROBE_TEST_CHILD_NETNS";
const CHILD_MODE_VAR: &str = "LOUPE_PROBE_TEST_CHILD_MODE";

/// True when the test can run; otherwise says why (and panics under `CI=true`).
fn can_run(test: &str) -> bool {
    if !root::require(test, "network namespaces, BPF") {
        false
    } else if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        root::skip(test, "needs a BPF-capable kernel with BTF")
    } else if Command::new("ip").arg("-V").output().is_err() {
        root::skip(test, "needs iproute2 (`ip`)")
    } else {
        true
    }
}

/// Keeps every log line, so a test can see the eBPF program's aya-log records arrive.
struct CapturingLogger {
    lines: std::sync::Mutex<Vec<String>>,
}

impl log::Log for CapturingLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.push(record.args().to_string());
    }
    fn flush(&self) {}
}

static LOGGER: CapturingLogger = CapturingLogger {
    lines: std::sync::Mutex::new(Vec::new()),
};

fn capture_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        log::set_logger(&LOGGER).expect("install test logger");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn logged(needle: &str) -> bool {
    let lines = LOGGER.lines.lock().unwrap_or_else(|p| p.into_inner());
    lines.iter().any(|line| line.contains(needle))
}

/// A named network namespace with `lo` up, deleted on drop (also when the test panics).
struct TestNetns {
    name: String,
    netns: Netns,
}

impl TestNetns {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "loupe-probe-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        // From here on the guard deletes the namespace even if a later step panics.
        let netns = Netns::open(&PathBuf::from(format!("/var/run/netns/{name}")));
        let guard_name = name.clone();
        let netns = match netns {
            Ok(netns) => netns,
            Err(e) => {
                let _ = Command::new("ip")
                    .args(["netns", "del", &guard_name])
                    .status();
                panic!("open netns {name}: {e}");
            }
        };
        let ns = Self { name, netns };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn listen(&self) -> TcpListener {
        self.listen_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    fn listen_on(&self, loopback: IpAddr) -> TcpListener {
        self.netns
            .run(|| TcpListener::bind(SocketAddr::new(loopback, 0)))
            .expect("enter netns")
            .expect("bind listener")
    }

    /// A fresh namespace with `::1` on `lo`, and a listener on `[::1]` there with its port.
    fn listening_on_ipv6() -> (TestNetns, TcpListener, u16) {
        let ns = TestNetns::new();
        ns.ensure_ipv6_loopback();
        let listener = ns.listen_on(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let port = listener.local_addr().expect("addr").port();
        (ns, listener, port)
    }

    /// Makes sure `lo` has `::1`: a fresh namespace has it once `lo` is up, unless IPv6 is
    /// disabled by sysctl there, which is then undone for this namespace only.
    fn ensure_ipv6_loopback(&self) {
        let has_v6 = || {
            let out = Command::new("ip")
                .args(["-n", &self.name, "-6", "addr", "show", "dev", "lo"])
                .output()
                .expect("run ip addr");
            String::from_utf8_lossy(&out.stdout).contains("::1/128")
        };
        if has_v6() {
            return;
        }
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=0",
                "net.ipv6.conf.lo.disable_ipv6=0",
            ],
        );
        assert!(
            has_v6(),
            "no ::1 on lo of {} after enabling IPv6",
            self.name
        );
    }

    /// Netlink filters on lo egress whose line names the loupe program.
    fn loupe_netlink_filters(&self) -> usize {
        self.tc_egress_filters()
            .lines()
            .filter(|line| CAPTURE_PROGRAM_NAMES.iter().any(|name| line.contains(name)))
            .count()
    }

    fn tc_egress_filters(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "tc", "filter", "show", "dev", "lo", "egress",
            ])
            .output()
            .expect("run tc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`Self::loupe_attachments`] once it equals `want`, or after 2 s. A TCX link is released when
    /// its last file reference closes: a process another test forks at that moment holds a copy
    /// of every descriptor until it execs, so the release can lag the close by a little.
    async fn attachments_settled(&self, want: usize) -> usize {
        let mut count = self.loupe_attachments();
        for _ in 0..20 {
            if count == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            count = self.loupe_attachments();
        }
        count
    }

    /// Loupe programs attached on this namespace's lo egress: TCX links and netlink filters.
    fn loupe_attachments(&self) -> usize {
        self.loupe_tcx_links() + self.loupe_netlink_filters()
    }

    fn loupe_tcx_links(&self) -> usize {
        let programs = self
            .netns
            .run(|| SchedClassifier::query_tcx("lo", TcAttachType::Egress))
            .expect("enter netns")
            .expect("query tcx");
        programs
            .1
            .iter()
            .filter(|p| {
                p.name_as_str()
                    .is_some_and(|name| CAPTURE_PROGRAM_NAMES.contains(&name))
            })
            .count()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// Loads with the method from `LOUPE_PROBE_METHOD` (default auto).
fn load(ring_bytes: u32, attach_mode: AttachMode) -> Probe {
    load_with(ring_bytes, attach_mode, MethodChoice::from_env())
}

fn load_with(ring_bytes: u32, attach_mode: AttachMode, method: MethodChoice) -> Probe {
    Probe::load(&ProbeConfig {
        ring_bytes,
        attach_mode,
        method,
    })
    .unwrap_or_else(|e| panic!("load probe: {e}"))
}

/// Serves `count` connections: reads one request head, answers `body` with Content-Length,
/// closes.
fn serve(listener: TcpListener, body: Vec<u8>, count: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..count {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).expect("read request");
                assert!(n > 0, "client closed before the request head ended");
                head.extend_from_slice(&buf[..n]);
            }
            conn.write_all(&response_for(&body))
                .expect("write response");
        }
    })
}

fn response_for(body: &[u8]) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    response
}

/// A body of `size` bytes that differs per `seed`, so a mix-up between namespaces shows.
fn patterned(size: usize, seed: u32) -> Vec<u8> {
    (0..size as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

const REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n";

/// A client socket made inside `ns`, bound to `loopback`, and its port.
fn client_socket(ns: &TestNetns, loopback: IpAddr) -> (tokio::net::TcpSocket, u16) {
    let socket = ns
        .netns
        .run(|| -> std::io::Result<tokio::net::TcpSocket> {
            let socket = match loopback {
                IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(loopback, 0))?;
            Ok(socket)
        })
        .expect("enter netns")
        .expect("client socket");
    let port = socket.local_addr().expect("local addr").port();
    (socket, port)
}

/// One request from inside `ns` to 127.0.0.1:`port`; see [`get_on`].
async fn get(ns: &TestNetns, port: u16, own: Option<&OwnFlows>) -> (u16, Vec<u8>) {
    get_on(ns, IpAddr::V4(Ipv4Addr::LOCALHOST), port, own).await
}

/// One request from inside `ns` to `port` on `loopback`; returns the client port and the whole
/// response. With `own`, the client port is registered as the agent's own before connecting.
async fn get_on(
    ns: &TestNetns,
    loopback: IpAddr,
    port: u16,
    own: Option<&OwnFlows>,
) -> (u16, Vec<u8>) {
    let (socket, client_port) = client_socket(ns, loopback);
    let cookie = ns.netns.cookie().expect("cookie");
    let _guard = own.map(|flows| {
        flows
            .register(cookie, client_port)
            .expect("register own flow")
    });
    let mut stream = socket
        .connect(SocketAddr::new(loopback, port))
        .await
        .expect("connect");
    stream.write_all(REQUEST).await.expect("send request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read response");
    (client_port, response)
}

/// No byte of the flow from `client_port` was copied. Its closing FIN and ACKs may be: the
/// registration ends when the socket is dropped, and loopback delivers the last packets from a
/// softirq that can run after that (seen once in CI), so only payload counts.
fn no_payload_from(segments: &[Segment], client_port: u16) -> bool {
    segments
        .iter()
        .all(|s| s.flow.client.port() != client_port || s.payload.is_empty())
}

/// Reads segments until both directions of the flow from `client_port` have shown a FIN.
async fn collect_flow(stream: &mut SegmentStream, client_port: u16) -> Vec<Segment> {
    let mut segments = Vec::new();
    let (mut fin_request, mut fin_response) = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(fin_request && fin_response) {
        let segment = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no FIN in both directions of client port {client_port} within 30 s; got {} segments",
                    segments.len()
                )
            })
            .expect("read ring");
        if segment.flow.client.port() == client_port && segment.flags & TCP_FIN != 0 {
            match segment.direction {
                Direction::Request => fin_request = true,
                Direction::Response => fin_response = true,
            }
        }
        segments.push(segment);
    }
    segments
}

/// The payload of one direction, put together by sequence number from its first byte (the
/// probe sends no bare SYN: a flow starts at its first watched GET, and its response). A segment
/// that repeats bytes already placed (a TCP retransmission under load) is trimmed; a gap or a
/// retransmission with different bytes panics, as does a direction without payload.
fn reassemble(segments: &[Segment], client_port: u16, direction: Direction) -> Vec<u8> {
    let mut mine: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.flow.client.port() == client_port && s.direction == direction)
        .collect();
    mine.retain(|s| !s.payload.is_empty());
    let any = mine
        .first()
        .unwrap_or_else(|| panic!("no payload for {direction:?}"))
        .seq;
    // Records of different CPUs interleave: the first byte is the lowest sequence number.
    let first = mine
        .iter()
        .map(|s| s.seq)
        .min_by_key(|seq| seq.wrapping_sub(any) as i32)
        .unwrap_or(any);
    let isn = first.wrapping_sub(1);
    mine.sort_by_key(|s| s.seq.wrapping_sub(isn));
    let mut out: Vec<u8> = Vec::new();
    for s in mine {
        let offset = s.seq.wrapping_sub(isn.wrapping_add(1)) as usize;
        assert!(
            offset <= out.len(),
            "{direction:?}: gap: segment at offset {offset} where {} was expected",
            out.len()
        );
        let overlap = (out.len() - offset).min(s.payload.len());
        assert_eq!(
            &out[offset..offset + overlap],
            &s.payload[..overlap],
            "{direction:?}: retransmitted bytes differ at offset {offset}"
        );
        out.extend_from_slice(&s.payload[overlap..]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_arrive_with_flow_identity_and_continuous_seq() {
    if !can_run("both_directions_arrive_with_flow_identity_and_continuous_seq") {
        return;
    }
    let ns = TestNetns::new();
    let listener = ns.listen();
    let port = listener.local_addr().expect("addr").port();
    let body = b"# TYPE up gauge\nup 1\n".to_vec();
    let server = serve(listener, body.clone(), 1);

    let mut probe = load(1 << 20, AttachMode::Auto);
    let cookie = probe.attach(&ns.netns).expect("attach");
    assert_eq!(cookie, ns.netns.cookie().expect("cookie"));
    assert_eq!(probe.attach(&ns.netns).expect("attach twice"), cookie);
    assert_eq!(probe.attached_via(cookie), Some(AttachedVia::Tcx));
    probe
        .watch_port(cookie, port, &["/metrics"])
        .expect("watch");
    let mut stream = probe.segments().expect("segments");

    let (client_port, response) = get(&ns, port, None).await;
    server.join().expect("server");
    assert_eq!(response, response_for(&body));
    let segments = collect_flow(&mut stream, client_port).await;

    for s in segments
        .iter()
        .filter(|s| s.flow.client.port() == client_port)
    {
        assert_eq!(s.flow.netns, cookie);
        assert_eq!(
            s.flow.client,
            SocketAddr::from((Ipv4Addr::LOCALHOST, client_port))
        );
        assert_eq!(s.flow.server, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    assert_eq!(
        reassemble(&segments, client_port, Direction::Request),
        REQUEST
    );
    assert_eq!(
        reassemble(&segments, client_port, Direction::Response),
        response_for(&body)
    );
    assert_eq!(probe.dropped(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatched_ports_and_own_flows_are_not_copied() {
    if !can_run("unwatched_ports_and_own_flows_are_not_copied") {
        return;
    }
    unwatched_and_own_flows(MethodChoice::from_env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_unwatched_ports_and_own_flows_are_not_copied() {
    if !can_run("per_namespace_unwatched_ports_and_own_flows_are_not_copied") {
        return;
    }
    unwatched_and_own_flows(MethodChoice::PerNamespace).await;
}

async fn unwatched_and_own_flows(method: MethodChoice) {
    let ns = TestNetns::new();
    let watched = ns.listen();
    let watched_port = watched.local_addr().expect("addr").port();
    let unwatched = ns.listen();
    let unwatched_port = unwatched.local_addr().expect("addr").port();
    let watched_server = serve(watched, b"watched\n".to_vec(), 2);
    let unwatched_server = serve(unwatched, b"unwatched\n".to_vec(), 1);

    let mut probe = load_with(1 << 20, AttachMode::Auto, method);
    let cookie = probe.attach(&ns.netns).expect("attach");
    probe
        .watch_port(cookie, watched_port, &["/metrics"])
        .expect("watch");
    let own = probe.own_flows();
    let mut stream = probe.segments().expect("segments");

    let (_, unwatched_reply) = get(&ns, unwatched_port, None).await;
    assert_eq!(unwatched_reply, response_for(b"unwatched\n"));
    let (own_port, own_reply) = get(&ns, watched_port, Some(&own)).await;
    assert_eq!(own_reply, response_for(b"watched\n"));
    // The ring is ordered: anything the first two flows produced would come before this one.
    let (marker_port, _) = get(&ns, watched_port, None).await;
    let segments = collect_flow(&mut stream, marker_port).await;
    watched_server.join().expect("server");
    unwatched_server.join().expect("server");

    assert!(segments
        .iter()
        .all(|s| s.flow.server.port() != unwatched_port));
    assert!(no_payload_from(&segments, own_port));
    assert!(segments.iter().any(|s| s.flow.client.port() == marker_port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_traffic_on_the_metrics_port_is_not_copied() {
    if !can_run("api_traffic_on_the_metrics_port_is_not_copied") {
        return;
    }
    api_traffic(MethodChoice::from_env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_api_traffic_on_the_metrics_port_is_not_copied() {
    if !can_run("per_namespace_api_traffic_on_the_metrics_port_is_not_copied") {
        return;
    }
    api_traffic(MethodChoice::PerNamespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_flat_api_traffic_on_the_metrics_port_is_not_copied() {
    if !can_run("per_namespace_flat_api_traffic_on_the_metrics_port_is_not_copied") {
        return;
    }
    api_traffic(MethodChoice::PerNamespaceFlat).await;
}

const METRICS: &[u8] = b"# TYPE up gauge\nup 1\n";

/// An app serving its API and `/metrics` on one port, over keep-alive connections: `GET`s of
/// `/metrics` (with or without a query) get [`METRICS`], anything else an answer holding
/// `SECRET`. Serves `count` connections, each until the client closes.
fn serve_api(listener: TcpListener, count: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..count {
            let (conn, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut conn = conn;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).expect("read request line") == 0 {
                    break;
                }
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).expect("read header");
                    if header == "\r\n" {
                        break;
                    }
                    if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:")
                    {
                        length = value.trim().parse().expect("content-length");
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).expect("read body");
                let target = line.split(' ').nth(1).unwrap_or_default();
                let metrics =
                    line.starts_with("GET ") && target.split('?').next() == Some("/metrics");
                let reply = if metrics {
                    METRICS.to_vec()
                } else {
                    format!("SECRET answer to {}", line.trim_end()).into_bytes()
                };
                let mut response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    reply.len()
                )
                .into_bytes();
                response.extend_from_slice(&reply);
                conn.write_all(&response).expect("write response");
            }
        }
    })
}

/// Sends `requests` one after another on one connection from inside `ns`, reading each
/// response (Content-Length framed) before the next; returns the client port and the responses.
async fn keep_alive(ns: &TestNetns, port: u16, requests: &[Vec<u8>]) -> (u16, Vec<Vec<u8>>) {
    let (socket, client_port) = client_socket(ns, IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut stream = socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .expect("connect");
    let mut responses = Vec::new();
    for request in requests {
        stream.write_all(request).await.expect("send request");
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.expect("read response");
            assert!(n > 0, "server closed early");
            response.extend_from_slice(&buf[..n]);
            let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("length"))
                .expect("content-length");
            if response.len() >= end + 4 + length {
                break;
            }
        }
        responses.push(response);
    }
    stream.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("read to end");
    (client_port, responses)
}

/// The case: an app's API requests and their answers on its metrics port never reach
/// user space; the watched GETs on the same connection do, whole, and reassemble without a gap.
async fn api_traffic(method: MethodChoice) {
    let ns = TestNetns::new();
    let listener = ns.listen();
    let port = listener.local_addr().expect("addr").port();
    let server = serve_api(listener, 1);

    let mut probe = load_with(1 << 20, AttachMode::Auto, method);
    let cookie = probe.attach(&ns.netns).expect("attach");
    probe
        .watch_port(cookie, port, &["/metrics"])
        .expect("watch");
    let mut stream = probe.segments().expect("segments");

    let request = |line: &str, body: &str| {
        let mut r = format!("{line} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
        if !body.is_empty() {
            r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(body.as_bytes());
        r
    };
    let requests = [
        request("POST /api/login", "password=SECRET-hunter2"),
        request("GET /metrics", ""),
        request("GET /metricsSECRET", ""),
        request("GET /metrics?SECRET=1", ""),
        request("PUT /api/SECRET", "SECRET body"),
    ];
    let (client_port, responses) = keep_alive(&ns, port, &requests).await;
    let segments = collect_flow(&mut stream, client_port).await;
    server.join().expect("server");
    assert!(responses[1].ends_with(METRICS) && responses[3].ends_with(METRICS));
    assert!(responses[0].windows(6).any(|w| w == b"SECRET"));

    let mine: Vec<Segment> = segments
        .into_iter()
        .filter(|s| s.flow.client.port() == client_port)
        .collect();
    let copied: Vec<u8> = mine.iter().flat_map(|s| s.payload.to_vec()).collect();
    // The watched GET's query holds the word too; nothing else may.
    let without_query = String::from_utf8_lossy(&copied).replace("/metrics?SECRET=1", "");
    assert!(
        !without_query.contains("SECRET"),
        "bytes of a skipped exchange were copied: {without_query:?}"
    );
    assert!(
        mine.iter()
            .any(|s| s.resumed && s.direction == Direction::Request),
        "the GET after a skipped exchange is marked resumed"
    );
    let skipped: usize = [0, 2, 4]
        .iter()
        .map(|&i| requests[i].len() + responses[i].len())
        .sum();
    assert_eq!(
        probe.skipped().1,
        skipped as u64,
        "every skipped byte counted"
    );
    assert_eq!(probe.dropped(), (0, 0));

    let mut table = FlowTable::new(FlowLimits::default());
    let mut exchanges = Vec::new();
    let now = std::time::Instant::now();
    for segment in mine {
        table.push(segment, now, &mut exchanges);
    }
    let paths: Vec<&str> = exchanges.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/metrics", "/metrics?SECRET=1"]);
    assert!(exchanges.iter().all(|e| e.body.as_ref() == METRICS));
    let stats = table.stats();
    assert_eq!((stats.gaps, stats.bytes_unsynced), (0, 0), "{stats:?}");
    assert_eq!(table.flow_count(), 0, "both FINs close the flow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_replies_arrive_with_v6_addresses_byte_identical() {
    if !can_run("ipv6_loopback_replies_arrive_with_v6_addresses_byte_identical") {
        return;
    }
    let (ns, listener, port) = TestNetns::listening_on_ipv6();
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let mut probe = load(4 << 20, AttachMode::Auto);
    let cookie = probe.attach(&ns.netns).expect("attach");
    probe
        .watch_port(cookie, port, &["/metrics"])
        .expect("watch");
    let mut stream = probe.segments().expect("segments");

    // A few KB (one record), then 200 KB: GSO packets of many chunks, some above 64 KiB, which
    // the kernel sends as jumbograms with a Hop-by-Hop header (payload length 0).
    for size in [3_000usize, 200_000] {
        let body: Vec<u8> = (0..size as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let listener = listener.try_clone().expect("clone listener");
        let server = serve(listener, body.clone(), 1);
        let (client_port, response) = get_on(&ns, v6, port, None).await;
        server.join().expect("server");
        let expected = response_for(&body);
        assert_eq!(response, expected, "{size}: the reply itself");
        let segments = collect_flow(&mut stream, client_port).await;
        let mine: Vec<&Segment> = segments
            .iter()
            .filter(|s| s.flow.client.port() == client_port)
            .collect();
        assert!(!mine.is_empty());
        for s in mine {
            assert_eq!(s.flow.netns, cookie);
            assert_eq!(s.flow.client, SocketAddr::new(v6, client_port), "{size}");
            assert_eq!(s.flow.server, SocketAddr::new(v6, port), "{size}");
        }
        assert_eq!(
            reassemble(&segments, client_port, Direction::Request),
            REQUEST,
            "{size}"
        );
        let captured = reassemble(&segments, client_port, Direction::Response);
        assert_eq!(captured.len(), expected.len(), "{size}");
        assert!(captured == expected, "{size}: captured response differs");
        assert!(segments.iter().all(|s| s.payload.len() <= 4096));
    }
    assert_eq!(probe.dropped(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_flows_over_ipv6_are_not_copied() {
    if !can_run("own_flows_over_ipv6_are_not_copied") {
        return;
    }
    own_flows_ipv6(MethodChoice::from_env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_own_flows_over_ipv6_are_not_copied() {
    if !can_run("per_namespace_own_flows_over_ipv6_are_not_copied") {
        return;
    }
    own_flows_ipv6(MethodChoice::PerNamespace).await;
}

async fn own_flows_ipv6(method: MethodChoice) {
    let (ns, listener, port) = TestNetns::listening_on_ipv6();
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let server = serve(listener, b"v6\n".to_vec(), 2);

    let mut probe = load_with(1 << 20, AttachMode::Auto, method);
    let cookie = probe.attach(&ns.netns).expect("attach");
    probe
        .watch_port(cookie, port, &["/metrics"])
        .expect("watch");
    let own = probe.own_flows();
    let mut stream = probe.segments().expect("segments");

    // The registry is keyed by (namespace, client port): the family plays no part.
    let (own_port, own_reply) = get_on(&ns, v6, port, Some(&own)).await;
    assert_eq!(own_reply, response_for(b"v6\n"));
    // The ring is ordered: anything the own flow produced would come before this one.
    let (marker_port, _) = get_on(&ns, v6, port, None).await;
    let segments = collect_flow(&mut stream, marker_port).await;
    server.join().expect("server");

    assert!(no_payload_from(&segments, own_port));
    assert!(segments
        .iter()
        .any(|s| s.flow.client == SocketAddr::new(v6, marker_port)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_megabyte_response_arrives_byte_identical() {
    if !can_run("five_megabyte_response_arrives_byte_identical") {
        return;
    }
    five_megabytes(MethodChoice::from_env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_five_megabyte_response_arrives_byte_identical() {
    if !can_run("per_namespace_five_megabyte_response_arrives_byte_identical") {
        return;
    }
    five_megabytes(MethodChoice::PerNamespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_flat_five_megabyte_response_arrives_byte_identical() {
    if !can_run("per_namespace_flat_five_megabyte_response_arrives_byte_identical") {
        return;
    }
    five_megabytes(MethodChoice::PerNamespaceFlat).await;
}

async fn five_megabytes(method: MethodChoice) {
    let ns = TestNetns::new();
    let listener = ns.listen();
    let port = listener.local_addr().expect("addr").port();
    let body: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let server = serve(listener, body.clone(), 1);

    let mut probe = load_with(16 << 20, AttachMode::Auto, method);
    let cookie = probe.attach(&ns.netns).expect("attach");
    probe
        .watch_port(cookie, port, &["/metrics"])
        .expect("watch");
    let mut stream = probe.segments().expect("segments");

    let (client_port, response) = get(&ns, port, None).await;
    server.join().expect("server");
    let expected = response_for(&body);
    assert_eq!(response.len(), expected.len());
    let segments = collect_flow(&mut stream, client_port).await;
    let captured = reassemble(&segments, client_port, Direction::Response);
    assert_eq!(captured.len(), expected.len());
    assert!(
        captured == expected,
        "captured response differs from the one sent"
    );
    // The one-record copy (kernels without bpf_loop) sends each packet whole.
    let largest = if method == MethodChoice::PerNamespaceFlat {
        65535
    } else {
        4096
    };
    assert!(
        segments.iter().all(|s| s.payload.len() <= largest),
        "records are at most {largest} bytes"
    );
    assert_eq!(probe.dropped(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ring_counts_drops() {
    if !can_run("a_full_ring_counts_drops") {
        return;
    }
    full_ring_drops(MethodChoice::from_env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_a_full_ring_counts_drops() {
    if !can_run("per_namespace_a_full_ring_counts_drops") {
        return;
    }
    full_ring_drops(MethodChoice::PerNamespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_flat_a_full_ring_counts_drops() {
    if !can_run("per_namespace_flat_a_full_ring_counts_drops") {
        return;
    }
    full_ring_drops(MethodChoice::PerNamespaceFlat).await;
}

async fn full_ring_drops(method: MethodChoice) {
    let ns = TestNetns::new();
    let listener = ns.listen();
    let port = listener.local_addr().expect("addr").port();
    let body = vec![b'x'; 200_000];
    let server = serve(listener, body.clone(), 1);

    capture_logs();
    // One page: a 4 KiB chunk record (4 KiB + header) never fits.
    let mut probe = load_with(4096, AttachMode::Auto, method);
    let cookie = probe.attach(&ns.netns).expect("attach");
    probe
        .watch_port(cookie, port, &["/metrics"])
        .expect("watch");
    let before = RINGBUF_DROPPED_EVENTS.get();

    let (_, response) = get(&ns, port, None).await;
    server.join().expect("server");
    assert_eq!(response, response_for(&body), "traffic is never changed");
    let (events, bytes) = probe.dropped();
    assert!(events > 0, "no dropped records counted");
    assert!(bytes >= 100_000, "only {bytes} dropped bytes counted");
    assert!(RINGBUF_DROPPED_EVENTS.get() >= before + events);
    // The program reports drops through aya-log, forwarded into the `log` crate.
    let mut forwarded = logged("records dropped on this CPU");
    for _ in 0..100 {
        if forwarded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        forwarded = logged("records dropped on this CPU");
    }
    assert!(
        forwarded,
        "the program's drop warning did not reach the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_flooding_its_loopback_leaves_room_for_the_others() {
    if !can_run("a_pod_flooding_its_loopback_leaves_room_for_the_others") {
        return;
    }
    flood_leaves_room(MethodChoice::from_env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_flat_a_pod_flooding_its_loopback_leaves_room_for_the_others() {
    if !can_run("per_namespace_flat_a_pod_flooding_its_loopback_leaves_room_for_the_others") {
        return;
    }
    flood_leaves_room(MethodChoice::PerNamespaceFlat).await;
}

/// One pod answers 40 scrapes of 16 KiB while nothing reads the ring (640 KiB into 256 KiB):
/// without shares it would fill the ring and the quiet pod's exchange would be lost. With them
/// the flooding pod is refused once the ring is half full, and the quiet pod's exchange arrives
/// whole.
async fn flood_leaves_room(method: MethodChoice) {
    let noisy = TestNetns::new();
    let quiet = TestNetns::new();
    let noisy_listener = noisy.listen();
    let noisy_port = noisy_listener.local_addr().expect("addr").port();
    let quiet_listener = quiet.listen();
    let quiet_port = quiet_listener.local_addr().expect("addr").port();
    let floods = 40;
    let noisy_server = serve(noisy_listener, patterned(16 << 10, 3), floods);
    let quiet_body = b"# TYPE quiet gauge\nquiet 1\n".to_vec();
    let quiet_server = serve(quiet_listener, quiet_body.clone(), 1);

    let mut probe = load_with(256 << 10, AttachMode::Auto, method);
    let noisy_cookie = probe.attach(&noisy.netns).expect("attach noisy");
    let quiet_cookie = probe.attach(&quiet.netns).expect("attach quiet");
    probe
        .watch_port(noisy_cookie, noisy_port, &["/metrics"])
        .expect("watch noisy");
    probe
        .watch_port(quiet_cookie, quiet_port, &["/metrics"])
        .expect("watch quiet");
    let mut stream = probe.segments().expect("segments");

    for _ in 0..floods {
        get(&noisy, noisy_port, None).await;
    }
    let (client_port, response) = get(&quiet, quiet_port, None).await;
    assert_eq!(response, response_for(&quiet_body));
    noisy_server.join().expect("noisy server");
    quiet_server.join().expect("quiet server");

    let (refused, refused_bytes) = probe.over_share();
    assert!(refused > 0, "the flooding pod was never refused");
    assert!(
        refused_bytes >= 256 << 10,
        "only {refused_bytes} bytes refused"
    );
    let segments = collect_flow(&mut stream, client_port).await;
    assert!(segments
        .iter()
        .filter(|s| s.flow.client.port() == client_port)
        .all(|s| s.flow.netns == quiet_cookie));
    assert_eq!(
        reassemble(&segments, client_port, Direction::Request),
        REQUEST
    );
    assert_eq!(
        reassemble(&segments, client_port, Direction::Response),
        response_for(&quiet_body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_and_drop_leave_no_program_attached() {
    if !can_run("detach_and_drop_leave_no_program_attached") {
        return;
    }
    detach_and_drop(MethodChoice::from_env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_detach_and_drop_leave_no_program_attached() {
    if !can_run("per_namespace_detach_and_drop_leave_no_program_attached") {
        return;
    }
    detach_and_drop(MethodChoice::PerNamespace).await;
}

async fn detach_and_drop(method: MethodChoice) {
    let ns = TestNetns::new();
    let mut probe = load_with(1 << 20, AttachMode::Auto, method);
    let cookie = probe.attach(&ns.netns).expect("attach");
    assert_eq!(ns.loupe_attachments(), 1);
    probe.detach(cookie);
    assert_eq!(
        ns.attachments_settled(0).await,
        0,
        "still attached after detach"
    );

    probe.attach(&ns.netns).expect("attach again");
    assert_eq!(ns.loupe_attachments(), 1);
    drop(probe);
    assert_eq!(
        ns.attachments_settled(0).await,
        0,
        "still attached after drop"
    );
}

/// Starts this test binary as a child that attaches in `ns` and waits to be killed.
fn spawn_attached_child(ns: &TestNetns, mode: &str, method: &str) -> std::process::Child {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "attached_child_process",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_NETNS_VAR, ns.netns.path())
        .env(CHILD_MODE_VAR, mode)
        .env(METHOD_ENV, method)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let attached = lines.any(|line| line.map(|l| l.contains("CHILD ATTACHED")).unwrap_or(false));
    if !attached {
        let _ = child.kill();
        let _ = child.wait();
        panic!("child did not attach");
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_leaves_no_tcx_program() {
    if !can_run("kill_9_leaves_no_tcx_program") {
        return;
    }
    let cookie_helper = aya::sys::is_helper_supported(
        aya::programs::ProgramType::SchedClassifier,
        aya::sys::BpfHelper::BPF_FUNC_get_netns_cookie,
    );
    if !matches!(cookie_helper, Ok(true))
        && !root::skip(
            "kill_9_leaves_no_tcx_program",
            "TCX links are the shared method's, which needs bpf_get_netns_cookie in TC programs (about Linux 6.14+)",
        )
    {
        return;
    }
    let ns = TestNetns::new();
    // TCX links are the shared method's (per-namespace filters need netlink for their classid).
    let mut child = spawn_attached_child(&ns, "tcx", "shared");
    assert_eq!(ns.loupe_attachments(), 1, "child's TCX link not seen");
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");
    // The kernel releases the link with the dead process's file descriptors.
    let mut remaining = ns.loupe_attachments();
    for _ in 0..50 {
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        remaining = ns.loupe_attachments();
    }
    assert_eq!(remaining, 0, "TCX program left attached after kill -9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netlink_filters_left_by_a_killed_agent_are_removed_on_attach() {
    if !can_run("netlink_filters_left_by_a_killed_agent_are_removed_on_attach") {
        return;
    }
    netlink_leftovers_removed(MethodChoice::from_env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_netlink_filters_left_by_a_killed_agent_are_removed_on_attach() {
    if !can_run("per_namespace_netlink_filters_left_by_a_killed_agent_are_removed_on_attach") {
        return;
    }
    netlink_leftovers_removed(MethodChoice::PerNamespace).await;
}

/// A child attaches with a netlink filter and is killed; the filter stays; the next probe
/// (with `method`) removes it on attach, captures, and leaves nothing when dropped.
async fn netlink_leftovers_removed(method: MethodChoice) {
    let ns = TestNetns::new();
    let child_method = match method {
        MethodChoice::PerNamespace => "per-namespace",
        MethodChoice::PerNamespaceFlat => "per-namespace-flat",
        MethodChoice::Shared => "shared",
        MethodChoice::Auto => "auto",
    };
    let mut child = spawn_attached_child(&ns, "netlink", child_method);
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");
    assert_eq!(
        ns.loupe_netlink_filters(),
        1,
        "the killed child's netlink filter should outlive it: {}",
        ns.tc_egress_filters()
    );

    let removed_before = STALE_FILTERS_REMOVED.get();
    let listener = ns.listen();
    let port = listener.local_addr().expect("addr").port();
    let server = serve(listener, b"netlink\n".to_vec(), 1);
    let mut probe = load_with(1 << 20, AttachMode::Netlink, method);
    let cookie = probe.attach(&ns.netns).expect("attach");
    assert_eq!(probe.attached_via(cookie), Some(AttachedVia::Netlink));
    assert!(STALE_FILTERS_REMOVED.get() > removed_before);
    assert_eq!(
        ns.loupe_netlink_filters(),
        1,
        "exactly our own filter: {}",
        ns.tc_egress_filters()
    );

    // The netlink attachment captures like the TCX one.
    probe
        .watch_port(cookie, port, &["/metrics"])
        .expect("watch");
    let mut stream = probe.segments().expect("segments");
    let (client_port, _) = get(&ns, port, None).await;
    server.join().expect("server");
    let segments = collect_flow(&mut stream, client_port).await;
    assert_eq!(
        reassemble(&segments, client_port, Direction::Response),
        response_for(b"netlink\n")
    );

    drop(probe);
    assert_eq!(
        ns.loupe_netlink_filters(),
        0,
        "filter left after drop: {}",
        ns.tc_egress_filters()
    );
}

#[path = "probe/per_namespace.rs"]
mod per_namespace;

/// Not a test of its own: the child process of the kill -9 tests (started with its env vars).
#[test]
#[ignore = "helper process for the kill -9 tests"]
fn attached_child_process() {
    let (Ok(path), Ok(mode)) = (
        std::env::var(CHILD_NETNS_VAR),
        std::env::var(CHILD_MODE_VAR),
    ) else {
        // Run with --include-ignored outside the kill -9 tests: nothing to do.
        eprintln!("helper only: started by the kill -9 tests with {CHILD_NETNS_VAR}");
        return;
    };
    let netns = Netns::open(&PathBuf::from(path)).expect("open netns");
    let mode = if mode == "netlink" {
        AttachMode::Netlink
    } else {
        AttachMode::Tcx
    };
    let mut probe = load(1 << 16, mode);
    probe.attach(&netns).expect("attach");
    println!("CHILD ATTACHED");
    std::io::stdout().flush().expect("flush");
    std::thread::sleep(Duration::from_secs(120));
    drop(probe);
}
